//! Caller and dialed number from the INVITE headers.

use serde::Serialize;

use super::headers::{SipHeader, header, headers_named};
use super::number::E164;
use super::uri::{NameAddr, parse_name_addr};

/// Who is calling whom, read from the INVITE headers of a `realtime.call.incoming` webhook.
///
/// These values come from the caller's network and are **never trusted for authorization** (OpenAPI
/// `WebhookRealtimeCallIncoming`): they select a prompt profile and label the call record, nothing
/// more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallParties {
    /// The calling number: the first P-Asserted-Identity entry (RFC 3325) that carries an
    /// E.164 number, else the From number.
    pub caller: Option<E164>,
    /// The From display name (unquoted), else the P-Asserted-Identity one.
    pub caller_display_name: Option<String>,
    /// The dialed number: the To number when To names one; otherwise the first Diversion
    /// entry's number (Twilio Elastic SIP Trunking puts the OpenAI project URI in To and the
    /// dialed number in Diversion, a third-party report, unverified).
    pub dialed: Option<E164>,
    /// The number of the first Diversion entry (RFC 5806; the most recent redirection).
    pub diverted_from: Option<E164>,
    /// The SIP `Call-ID` header (`i` compact form), trimmed; `None` when absent or empty.
    pub sip_call_id: Option<String>,
}

impl CallParties {
    /// Reads the parties from the webhook's `sip_headers`. Headers that are missing or do not
    /// parse simply give `None`; this never fails and never panics.
    pub fn from_headers(headers: &[SipHeader]) -> CallParties {
        let from = header(headers, "From").and_then(|v| parse_name_addr(v).ok());
        let pai: Vec<NameAddr> = headers_named(headers, "P-Asserted-Identity")
            .filter_map(|v| parse_name_addr(v).ok())
            .collect();
        let to = header(headers, "To").and_then(|v| parse_name_addr(v).ok());
        let diverted_from = headers_named(headers, "Diversion")
            .next()
            .and_then(|v| parse_name_addr(v).ok())
            .and_then(|na| na.uri.e164());

        let caller = pai
            .iter()
            .find_map(|na| na.uri.e164())
            .or_else(|| from.as_ref().and_then(|na| na.uri.e164()));
        let caller_display_name = from
            .as_ref()
            .and_then(|na| na.display_name.clone())
            .or_else(|| pai.iter().find_map(|na| na.display_name.clone()));
        let dialed = to
            .as_ref()
            .and_then(|na| na.uri.e164())
            .or_else(|| diverted_from.clone());
        let sip_call_id = header(headers, "Call-ID")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);

        CallParties {
            caller,
            caller_display_name,
            dialed,
            diverted_from,
            sip_call_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(pairs: &[(&str, &str)]) -> Vec<SipHeader> {
        pairs.iter().map(|(n, v)| SipHeader::new(*n, *v)).collect()
    }

    fn e(s: &str) -> Option<E164> {
        Some(E164::parse(s).unwrap())
    }

    #[test]
    fn openai_reference_example_headers() {
        // OpenAPI `WebhookRealtimeCallIncoming`, verbatim
        let h = hs(&[
            ("From", "sip:+142555512112@sip.example.com"),
            ("To", "sip:+18005551212@sip.example.com"),
            ("Call-ID", "03782086-4ce9-44bf-8b0d-4e303d2cc590"),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(
            p,
            CallParties {
                caller: e("+142555512112"),
                caller_display_name: None,
                dialed: e("+18005551212"),
                diverted_from: None,
                sip_call_id: Some("03782086-4ce9-44bf-8b0d-4e303d2cc590".into()),
            }
        );
    }

    #[test]
    fn pai_number_beats_from() {
        let h = hs(&[
            (
                "From",
                r#""Anonymous" <sip:anonymous@anonymous.invalid>;tag=hyh8"#,
            ),
            (
                "P-Asserted-Identity",
                r#""Alice" <sip:+14155550123@carrier.example;user=phone>"#,
            ),
            ("To", "<sip:+18005550100@sip.api.openai.com>"),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(p.caller, e("+14155550123"));
        assert_eq!(p.caller_display_name.as_deref(), Some("Anonymous"));

        // PAI with a sip: entry without a number, then a tel: entry
        let h = hs(&[
            ("From", "<sip:+15555550000@example.com>;tag=1"),
            (
                "P-Asserted-Identity",
                "<sip:alice@example.com>, <tel:+1-415-555-0123>",
            ),
        ]);
        assert_eq!(CallParties::from_headers(&h).caller, e("+14155550123"));

        // PAI present but numberless: fall back to From
        let h = hs(&[
            ("From", "Bob <sip:+15555550000@example.com>;tag=1"),
            ("P-Asserted-Identity", "<sip:bob@example.com>"),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(p.caller, e("+15555550000"));
        assert_eq!(p.caller_display_name.as_deref(), Some("Bob"));
    }

    #[test]
    fn twilio_project_uri_in_to_uses_diversion_for_dialed() {
        // a third-party report, unverified: To carries the project URI, Diversion the dialed number.
        let h = hs(&[
            (
                "From",
                r#""+14155550123" <sip:+14155550123@example.pstn.twilio.com>;tag=92"#,
            ),
            ("To", "<sip:proj_abc123@sip.api.openai.com;transport=tls>"),
            (
                "Diversion",
                "<sip:+18005550100@example.pstn.twilio.com>;reason=unconditional;counter=1",
            ),
            ("Call-ID", " c1@twilio "),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(p.caller, e("+14155550123"));
        assert_eq!(p.caller_display_name.as_deref(), Some("+14155550123"));
        assert_eq!(p.dialed, e("+18005550100"));
        assert_eq!(p.diverted_from, e("+18005550100"));
        assert_eq!(p.sip_call_id.as_deref(), Some("c1@twilio"));
    }

    #[test]
    fn to_number_wins_over_diversion_and_first_diversion_entry_counts() {
        let h = hs(&[
            ("t", "<sip:+18005550100@sip.api.openai.com>"),
            (
                "Diversion",
                "<sip:+18005550111@x.example>;reason=no-answer;counter=1, <sip:+18005550122@x.example>;reason=unconditional",
            ),
            ("Diversion", "<tel:+18005550133>"),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(p.dialed, e("+18005550100"));
        assert_eq!(p.diverted_from, e("+18005550111"));
    }

    #[test]
    fn vonage_style_numbers_without_plus() {
        let h = hs(&[
            ("f", "<sip:14155550123@sbc.vonage.example>;tag=a"),
            ("t", "<sip:442071838750@sip.api.openai.com>"),
            ("i", "v-1"),
        ]);
        let p = CallParties::from_headers(&h);
        assert_eq!(p.caller, e("+14155550123"));
        assert_eq!(p.dialed, e("+442071838750"));
        assert_eq!(p.sip_call_id.as_deref(), Some("v-1"));
    }

    #[test]
    fn garbage_headers_give_none() {
        let h = hs(&[
            ("From", "<<garbage"),
            ("P-Asserted-Identity", "\"unterminated"),
            ("To", "tel:5550123"),
            ("Diversion", ";;;"),
            ("Call-ID", "   "),
        ]);
        assert_eq!(CallParties::from_headers(&h), CallParties::default());
        assert_eq!(CallParties::from_headers(&[]), CallParties::default());
    }
}
