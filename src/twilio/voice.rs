//! The parameters Twilio sends to a voice webhook (the number's Voice URL or a call's `Url`).
//!
//! Sources: <https://www.twilio.com/docs/voice/twiml> and
//! <https://www.twilio.com/docs/voice/api/sip-twiml>. Always sent: `CallSid`, `AccountSid`, `From`,
//! `To`, `ApiVersion`, `CallToken`, `CallStatus`, `Direction`. Conditional: `ForwardedFrom`,
//! `CallerName`, `ParentCallSid`. SIP-domain calls add `SipDomain`, `SipDomainSid`, `SipCallId`,
//! `SipSourceIp`, and each incoming `X-` header as `SipHeader_<name>`.
//!
//! Validate the request first ([`super::signature::validate`]) over **all** parameters; this type
//! keeps every parameter in [`VoiceWebhook::params`] too.

use std::collections::BTreeMap;

/// A required parameter is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("voice webhook parameter {0} is missing")]
pub struct MissingParam(pub &'static str);

/// A parsed voice webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceWebhook {
    /// `CallSid` (`CA…`).
    pub call_sid: String,
    /// `AccountSid` (`AC…`).
    pub account_sid: String,
    /// `From`: the caller; may be `anonymous` or `unknown` when withheld.
    pub from: String,
    /// `To`: the dialed number or URI.
    pub to: String,
    /// `CallStatus`: `queued`, `initiated`, `ringing`, `in-progress`, `completed`, `busy`,
    /// `failed`, `no-answer`, `canceled` (empty if absent).
    pub call_status: String,
    /// `Direction`: `inbound`, `outbound-api`, `outbound-dial` (empty if absent).
    pub direction: String,
    /// `ForwardedFrom`, if the carrier provided it.
    pub forwarded_from: Option<String>,
    /// `CallerName`, if CNAM lookup is enabled.
    pub caller_name: Option<String>,
    /// `ParentCallSid`, only on child legs.
    pub parent_call_sid: Option<String>,
    /// `SipHeader_<name>` parameters, keyed by `<name>` (e.g. `X-AcctNumber`).
    pub sip_headers: BTreeMap<String, String>,
    /// Every parameter as received, in order.
    pub params: Vec<(String, String)>,
}

impl VoiceWebhook {
    /// Reads the parameters (from [`super::signature::parse_form`] or a GET query).
    ///
    /// # Errors
    /// [`MissingParam`] when `CallSid`, `AccountSid`, `From` or `To` is absent.
    pub fn from_params(params: &[(String, String)]) -> Result<Self, MissingParam> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let need = |name: &'static str| get(name).ok_or(MissingParam(name));
        let sip_headers = params
            .iter()
            .filter_map(|(n, v)| {
                n.strip_prefix("SipHeader_")
                    .map(|h| (h.to_string(), v.clone()))
            })
            .collect();
        Ok(Self {
            call_sid: need("CallSid")?,
            account_sid: need("AccountSid")?,
            from: need("From")?,
            to: need("To")?,
            call_status: get("CallStatus").unwrap_or_default(),
            direction: get("Direction").unwrap_or_default(),
            forwarded_from: get("ForwardedFrom"),
            caller_name: get("CallerName"),
            parent_call_sid: get("ParentCallSid"),
            sip_headers,
            params: params.to_vec(),
        })
    }
}
