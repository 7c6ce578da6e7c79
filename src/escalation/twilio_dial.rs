//! `twilio_dial`: hand a caller who reached OpenAI through Twilio Programmable Voice to an
//! Amazon Connect contact flow, with the handover token keyed in as DTMF.
//!
//! Sources: Twilio's voice webhook (<https://www.twilio.com/docs/voice/twiml>), Call resource
//! update (<https://www.twilio.com/docs/voice/api/call-resource>), `<Dial>` and `<Number
//! sendDigits>` (<https://www.twilio.com/docs/voice/twiml/dial>,
//! <https://www.twilio.com/docs/voice/twiml/number>); Amazon Connect "Store customer input"
//! (<https://docs.aws.amazon.com/connect/latest/adminguide/store-customer-input.html>) for the
//! flow: mint, redirect with `sendDigits="wwww<token>#"`, Store customer input, Lambda; OpenAI's
//! `realtime.call.incoming` `sip_headers` (OpenAPI schema `WebhookRealtimeCallIncoming`).
//!
//! ```text
//! caller ─PSTN─ Twilio ──POST /twilio/voice──▶ [twilio] voice_mode = "sip"
//!                 │   ◀── <Dial><Sip>sip:proj_…@sip.api.openai.com;transport=tls?X-Twilio-CallSid=CA…</Sip></Dial>
//!                 └─ child SIP leg ──▶ OpenAI ──realtime.call.incoming (sip_headers: X-Twilio-CallSid)──▶ us
//! escalation: mint token ─▶ POST …/Calls/{parent CallSid}.json
//!             Twiml=<Response><Dial><Number sendDigits="wwww{token}#">+1ConnectDID</Number></Dial></Response>
//!             ─▶ Twilio drops the <Dial><Sip> leg (the sideband closes) and dials Connect
//! ```
//!
//! The parent `CallSid` travels as a SIP URI header of the `<Dial><Sip>` target
//! ([`dial_sip_twiml`]) together with our HMAC binding of it ([`CALL_SID_BINDING_HEADER`]), and
//! comes back in the webhook's `sip_headers` ([`parent_call_sid`]); only a bound one is kept on
//! the call record (`twilio_call_sid`): anyone can put an `X-Twilio-CallSid` on an INVITE. That
//! `<Dial><Sip>` sends URI headers as INVITE headers is Twilio's `<Sip>` noun documentation
//! (<https://www.twilio.com/docs/voice/twiml/sip>), **[unverified]** (see
//! [`crate::twilio::twiml::SipTarget`]); without the header a `twilio_dial` hand-off has no call
//! to redirect and falls back like a failed REFER.

use crate::config::Secret;
use crate::sip::{E164, SipHeader, header, headers_named};
use crate::twilio::rest::{CallUpdate, TwilioError, TwilioRest};
use crate::twilio::signature::verify_call_sid_binding;
use crate::twilio::twiml::{Dial, Number, Response, SipTarget, TwimlError};

/// The SIP header (a URI header of the `<Dial><Sip>` target) carrying the parent `CallSid`.
pub const CALL_SID_HEADER: &str = "X-Twilio-CallSid";

/// Pauses before the token in `sendDigits`: `w` = 0.5 s each, 2 s in all, so the digits land in
/// the contact flow's Store customer input block rather than during its greeting (TwiML
/// `<Number sendDigits>` plays the digits when the far end answers; tune against the flow:
/// unverified on real accounts).
pub const SEND_DIGITS_PAUSE: &str = "wwww";

/// Why a `twilio_dial` redirect did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The call record has no parent `CallSid` (the call did not come through `<Dial><Sip>` with
    /// the `X-Twilio-CallSid` header, or not through Twilio at all).
    #[error("no parent Twilio CallSid on this call")]
    NoParentCall,
    /// `[twilio] account_sid` or `TWILIO_AUTH_TOKEN` is not set.
    #[error("Twilio is not configured")]
    NotConfigured,
    /// The TwiML could not be built (a bad number or token).
    #[error("TwiML: {0}")]
    Twiml(#[from] TwimlError),
    /// The target is a SIP URI (the profile loader only allows `tel:` targets).
    #[error("twilio_dial needs a tel: target, got {0}")]
    NotANumber(String),
    /// Twilio refused the update or could not be reached.
    #[error("Twilio call update: {0}")]
    Twilio(#[from] TwilioError),
}

/// True for a Twilio call SID: `CA` followed by 32 hexadecimal digits (either case).
pub fn is_call_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("CA") && s.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

/// The SIP header (a URI header of the `<Dial><Sip>` target) carrying our binding of the parent
/// `CallSid` ([`crate::twilio::signature::call_sid_binding`]).
pub const CALL_SID_BINDING_HEADER: &str = "X-Voxmachina-CallSid-Mac";

/// Counter: SIP calls whose [`CALL_SID_HEADER`] was not bound by us and was ignored.
pub const UNBOUND_METRIC: &str = "voxmachina_sip_unbound_call_sid_total";

/// What a SIP call's INVITE says about its Twilio parent call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentCallSid {
    /// No [`CALL_SID_HEADER`].
    Absent,
    /// A well-formed `CallSid` with our matching [`CALL_SID_BINDING_HEADER`]: it came from a
    /// `<Dial><Sip>` we generated.
    Bound(String),
    /// Anything else: a missing, wrong or unverifiable binding, or a malformed value (kept,
    /// cut to 64 characters, for the log and the event only).
    Unbound(String),
}

/// The parent `CallSid` from a `realtime.call.incoming` webhook's `sip_headers`: the
/// [`CALL_SID_HEADER`] values and the first [`CALL_SID_BINDING_HEADER`] (names matched
/// case-insensitively, values trimmed). Header values are untrusted caller metadata (OpenAPI
/// `WebhookRealtimeCallIncoming`): a `CallSid` is [`ParentCallSid::Bound`] only when it is a well-formed SID
/// ([`is_call_sid`]) and the binding verifies for it under `auth_token` (the Twilio Auth Token);
/// every value is tried, since Twilio's INVITE may carry an `X-Twilio-CallSid` of its own
/// besides our URI header. Without a key (Twilio not configured, or an empty token) nothing is
/// bound (fail closed); [`ParentCallSid::Unbound`] reports the first value.
pub fn parent_call_sid(sip_headers: &[SipHeader], auth_token: Option<&Secret>) -> ParentCallSid {
    let mut claims = headers_named(sip_headers, CALL_SID_HEADER)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .peekable();
    let Some(first) = claims.peek().copied() else {
        return ParentCallSid::Absent;
    };
    let mac = auth_token.zip(header(sip_headers, CALL_SID_BINDING_HEADER));
    match claims.find(|sid| {
        is_call_sid(sid)
            && mac.is_some_and(|(key, mac)| verify_call_sid_binding(key, sid, mac.trim()))
    }) {
        Some(sid) => ParentCallSid::Bound(sid.to_string()),
        None => ParentCallSid::Unbound(first.chars().take(64).collect()),
    }
}

/// The voice webhook answer of `[twilio] voice_mode = "sip"`:
/// `<Response><Dial><Sip>{openai_sip_uri}?X-Twilio-CallSid={call_sid}&X-Voxmachina-CallSid-Mac={binding}</Sip></Dial></Response>`,
/// the URI headers percent-encoded and the document XML-escaped (TwiML `<Dial>`/`<Sip>`,
/// <https://www.twilio.com/docs/voice/twiml/sip>);
/// `binding` is [`crate::twilio::signature::call_sid_binding`] of `call_sid`.
///
/// # Errors
/// [`TwimlError::InvalidSipUri`] when `openai_sip_uri` is not a `sip:`/`sips:` URI without
/// headers.
pub fn dial_sip_twiml(
    openai_sip_uri: &str,
    call_sid: &str,
    binding: &str,
) -> Result<String, TwimlError> {
    let target = SipTarget::new(openai_sip_uri)?
        .header(CALL_SID_HEADER, call_sid)?
        .header(CALL_SID_BINDING_HEADER, binding)?;
    Ok(Response::new().dial(Dial::new(target)).render())
}

/// The hand-over TwiML:
/// `<Response><Dial><Number sendDigits="wwww{token}#">{number}</Number></Dial></Response>`
/// (Amazon Connect "Store customer input" step 3). Without a token (minting failed) the number is
/// dialed without digits: the contact flow then matches the caller by number.
///
/// # Errors
/// [`TwimlError`] for a number that is not E.164 or a token that is not DTMF digits.
pub fn handover_twiml(number: &E164, token: Option<&str>) -> Result<String, TwimlError> {
    let mut target = Number::new(number.as_str())?;
    if let Some(token) = token {
        target = target.send_digits(format!("{SEND_DIGITS_PAUSE}{token}#"))?;
    }
    Ok(Response::new().dial(Dial::new(target)).render())
}

/// Redirects the parent call `call_sid` to [`handover_twiml`] with a REST call update (`POST
/// /2010-04-01/Accounts/{AccountSid}/Calls/{call_sid}.json`, form field `Twiml`,
/// <https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource>). Twilio's 200 means the new TwiML runs: the `<Dial><Sip>` leg to OpenAI ends.
///
/// # Errors
/// [`DialError`]: the TwiML could not be built, or Twilio answered an error or was unreachable.
pub async fn redirect(
    rest: &TwilioRest,
    call_sid: &str,
    number: &E164,
    token: Option<&str>,
) -> Result<(), DialError> {
    let twiml = handover_twiml(number, token)?;
    rest.update_call(call_sid, &CallUpdate::Twiml(twiml))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sid_shape() {
        assert!(is_call_sid("CA0123456789abcdef0123456789ABCDEF"));
        assert!(!is_call_sid("CA0123456789abcdef0123456789abcde"));
        assert!(!is_call_sid("CA0123456789abcdef0123456789abcdeg"));
        assert!(!is_call_sid("PA0123456789abcdef0123456789abcdef"));
        assert!(!is_call_sid(""));
    }

    #[test]
    fn parent_call_sid_from_headers() {
        let key = Secret::new("auth-token");
        let sid = "CA0123456789abcdef0123456789abcdef";
        let mac = crate::twilio::signature::call_sid_binding(&key, sid).unwrap();
        let hs = vec![
            SipHeader::new("From", "sip:+14155550123@pstn.twilio.com"),
            SipHeader::new("x-twilio-callsid", format!(" {sid} ")),
            SipHeader::new("x-voxmachina-callsid-mac", format!(" {mac}")),
        ];
        assert_eq!(
            parent_call_sid(&hs, Some(&key)),
            ParentCallSid::Bound(sid.into())
        );
        // Fail closed: no key, an empty key, another key.
        for key in [None, Some(&Secret::new("")), Some(&Secret::new("other"))] {
            assert_eq!(
                parent_call_sid(&hs, key),
                ParentCallSid::Unbound(sid.into())
            );
        }
        // No binding, or a binding of another CallSid.
        let spoofed = vec![SipHeader::new(CALL_SID_HEADER, sid)];
        assert_eq!(
            parent_call_sid(&spoofed, Some(&key)),
            ParentCallSid::Unbound(sid.into())
        );
        let other = "CA0123456789abcdef0123456789abcdee";
        let moved = vec![
            SipHeader::new(CALL_SID_HEADER, other),
            SipHeader::new(CALL_SID_BINDING_HEADER, &mac),
        ];
        assert_eq!(
            parent_call_sid(&moved, Some(&key)),
            ParentCallSid::Unbound(other.into())
        );
        let bad = vec![SipHeader::new(CALL_SID_HEADER, "CA123; drop table")];
        assert_eq!(
            parent_call_sid(&bad, Some(&key)),
            ParentCallSid::Unbound("CA123; drop table".into())
        );
        assert_eq!(parent_call_sid(&[], Some(&key)), ParentCallSid::Absent);
        // Another X-Twilio-CallSid before ours (Twilio's own, or a caller's): ours is found.
        let mut two = vec![SipHeader::new(CALL_SID_HEADER, other)];
        two.extend(hs.clone());
        assert_eq!(
            parent_call_sid(&two, Some(&key)),
            ParentCallSid::Bound(sid.into())
        );
    }

    #[test]
    fn twiml_documents() {
        let sid = "CA0123456789abcdef0123456789abcdef";
        let mac = "0f".repeat(32);
        let xml =
            dial_sip_twiml("sip:proj_abc@sip.api.openai.com;transport=tls", sid, &mac).unwrap();
        assert!(
            xml.ends_with(&format!(
                "<Response><Dial><Sip>sip:proj_abc@sip.api.openai.com;transport=tls?X-Twilio-CallSid={sid}&amp;X-Voxmachina-CallSid-Mac={mac}</Sip></Dial></Response>"
            )),
            "{xml}"
        );
        assert!(dial_sip_twiml("https://x", sid, &mac).is_err());
        let n = E164::parse("+18005550100").unwrap();
        assert!(
            handover_twiml(&n, Some("0123456789"))
                .unwrap()
                .ends_with(r#"<Response><Dial><Number sendDigits="wwww0123456789#">+18005550100</Number></Dial></Response>"#)
        );
        assert!(
            handover_twiml(&n, None)
                .unwrap()
                .ends_with("<Dial><Number>+18005550100</Number></Dial></Response>")
        );
        assert!(handover_twiml(&n, Some("12x")).is_err());
    }
}
