//! The OpenAI webhook endpoint's input: Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`), the endpoint secret and the raw body, then the
//! event envelope and the incoming-call payloads, the SIP parties and the profile choice made
//! from them (what `POST /openai/webhook` does before it calls `/accept`).
//!
//! Input: `secret \0 webhook-id \0 webhook-timestamp \0 webhook-signature \0 body`; a header
//! field that is not UTF-8 stands for a missing header.
//!
//! Properties:
//! - nothing panics;
//! - a delivery verifies only if its `webhook-signature` carries the real signature of
//!   `id.timestamp.body`, its id is non-empty and its timestamp is within the tolerance;
//! - every refusal maps to 400 or 401 and its message never contains the expected signature;
//! - sign → verify round trips (also among junk entries), a one-bit change of the body or a
//!   timestamp past the tolerance is refused;
//! - an envelope that parses rebuilds (`realtime_call_incoming` / `live_incoming`) to the same
//!   payload.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use voxmachina::prompts::ProfileSet;
use voxmachina::sip::CallParties;
use voxmachina::webhook::event::{
    Envelope, LIVE_CALL_INCOMING, LIVE_TRANSPORT_INCOMING, LiveTransportIncoming,
    REALTIME_CALL_INCOMING, RealtimeCallIncoming, live_incoming, realtime_call_incoming,
};
use voxmachina::webhook::signature::{DeliveryHeaders, Verifier, VerifyError};
use voxmachina_fuzz::fields;

/// "Now" for every verification, Unix seconds (the seeds use timestamps around it).
const NOW: i64 = 1_750_000_000;
/// The OpenAI SDKs' tolerance, seconds.
const TOLERANCE: u64 = 300;

/// The shipped profiles (`prompts/`), to choose a profile from the fuzzed SIP headers.
fn profiles() -> &'static ProfileSet {
    static SET: OnceLock<ProfileSet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
        ProfileSet::load(&dir).expect("the shipped profiles load")
    })
}

fuzz_target!(|data: &[u8]| {
    let [secret, id, ts, sig, body] = fields::<5>(data);
    let secret = String::from_utf8_lossy(secret);
    let Ok(verifier) = Verifier::new(&secret, TOLERANCE) else {
        // Refused: a `whsec_` key that is not base64 or decodes to nothing, and (fail closed)
        // an empty or whitespace-only secret.
        assert!(
            secret.starts_with("whsec_") || secret.trim().is_empty(),
            "only a malformed whsec_ secret or a blank one can be refused"
        );
        return;
    };
    let headers = DeliveryHeaders {
        id: std::str::from_utf8(id).ok(),
        timestamp: std::str::from_utf8(ts).ok(),
        signature: std::str::from_utf8(sig).ok(),
    };
    let expected = match (headers.id, headers.timestamp) {
        (Some(id), Some(ts)) => Some(verifier.sign(id, ts, body)),
        _ => None,
    };
    match verifier.verify(headers, body, NOW) {
        Ok(v) => {
            assert_eq!(Some(v.webhook_id.as_str()), headers.id);
            assert!(!v.webhook_id.is_empty());
            assert_eq!(
                headers.timestamp.and_then(|t| t.parse().ok()),
                Some(v.timestamp)
            );
            assert!((NOW - v.timestamp).unsigned_abs() <= TOLERANCE);
            let expected = expected.expect("id and timestamp were present");
            let bare = expected.strip_prefix("v1,").expect("v1, prefix");
            let sig = headers.signature.expect("signature was present");
            assert!(
                sig.split_whitespace().any(|e| e == expected || e == bare),
                "verified without the real signature: {sig:?}"
            );
        }
        Err(e) => {
            assert_eq!(
                e.status(),
                match e {
                    VerifyError::MissingHeader(_) | VerifyError::InvalidTimestamp => 400,
                    _ => 401,
                }
            );
            if let Some(expected) = &expected {
                assert!(!e.to_string().contains(&expected[3..]));
            }
        }
    }

    // Round trip with the fuzzed id and body.
    let id = String::from_utf8_lossy(id);
    let id = if id.is_empty() { "msg_fuzz".into() } else { id };
    let now_text = NOW.to_string();
    let good = verifier.sign(&id, &now_text, body);
    let signed = |signature: &str, ts: &str, body: &[u8]| {
        let h = DeliveryHeaders {
            id: Some(&id),
            timestamp: Some(ts),
            signature: Some(signature),
        };
        verifier.verify(h, body, NOW)
    };
    assert!(signed(&good, &now_text, body).is_ok());
    let noisy = format!("v1,AAAA\t{good} v1a,{}", &good[3..]);
    assert!(signed(&noisy, &now_text, body).is_ok());
    if let Some(first) = body.first() {
        let mut tampered = body.to_vec();
        tampered[0] = first ^ 1;
        assert_eq!(
            signed(&good, &now_text, &tampered),
            Err(VerifyError::NoMatch)
        );
    }
    let stale = (NOW - 301).to_string();
    let stale_sig = verifier.sign(&id, &stale, body);
    assert_eq!(signed(&stale_sig, &stale, body), Err(VerifyError::TooOld));

    // The envelope and the incoming-call payloads.
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        return;
    };
    match env.kind.as_str() {
        REALTIME_CALL_INCOMING => {
            let Ok(d) = serde_json::from_value::<RealtimeCallIncoming>(env.data.clone()) else {
                return;
            };
            choose_profile(&d.sip_headers);
            let rebuilt = realtime_call_incoming(&env.id, env.created_at, &d);
            let back: Envelope = serde_json::from_value(rebuilt).expect("rebuilt envelope");
            assert_eq!(
                (back.kind.as_str(), back.id.as_str()),
                (REALTIME_CALL_INCOMING, env.id.as_str())
            );
            let again: RealtimeCallIncoming =
                serde_json::from_value(back.data).expect("rebuilt payload");
            assert_eq!(again, d);
        }
        LIVE_TRANSPORT_INCOMING | LIVE_CALL_INCOMING => {
            let Ok(d) = serde_json::from_value::<LiveTransportIncoming>(env.data.clone()) else {
                return;
            };
            choose_profile(&d.sip_headers);
            let rebuilt = live_incoming(&env.kind, &env.id, env.created_at, &d);
            let back: Envelope = serde_json::from_value(rebuilt).expect("rebuilt envelope");
            assert_eq!(back.kind, env.kind);
            let again: LiveTransportIncoming =
                serde_json::from_value(back.data).expect("rebuilt payload");
            assert_eq!(again, d);
        }
        _ => {}
    }
});

/// What the handler reads from the headers: parties, the Twilio parent call, the profile.
fn choose_profile(headers: &[voxmachina::sip::SipHeader]) {
    let parties = CallParties::from_headers(headers);
    // A parent CallSid is trusted only with our binding of it, which the input cannot forge
    // without the key.
    use voxmachina::escalation::twilio_dial::{
        CALL_SID_BINDING_HEADER, ParentCallSid, is_call_sid, parent_call_sid,
    };
    let key = voxmachina::config::Secret::new("fuzz twilio auth token");
    if let ParentCallSid::Bound(sid) = parent_call_sid(headers, Some(&key)) {
        assert!(is_call_sid(&sid));
        let want = voxmachina::twilio::signature::call_sid_binding(&key, &sid).expect("a key");
        assert!(
            headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(CALL_SID_BINDING_HEADER)
                    && h.value.trim() == want)
        );
    }
    let profile = profiles().select(&parties, headers);
    assert!(profiles().get(&profile.name).is_some());
}
