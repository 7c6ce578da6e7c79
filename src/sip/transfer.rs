//! Validated SIP REFER targets.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SipError;
use super::number::E164;
use super::uri::SipUri;

/// Where an escalation sends the caller: the `target_uri` of `POST /v1/realtime/calls/{id}/refer`,
/// which becomes the SIP `Refer-To` header (OpenAPI `RealtimeCallReferRequest`).
///
/// Use `tel:+E164` for PSTN numbers: Twilio treats `sip:+E164@host` as a SIP endpoint
/// (OpenAI developer forum reports). Serializes as [`TransferTarget::as_uri`]; deserializes through
/// [`TransferTarget::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransferTarget {
    /// A PSTN number, sent as `tel:+14155550123`.
    Tel(E164),
    /// A `sip:`/`sips:` URI, kept exactly as written (trimmed).
    Sip(String),
}

impl TransferTarget {
    /// Parses a target:
    /// - `tel:` with a global number (RFC 3966; visual separators allowed and removed) and no
    ///   parameters — local numbers and `;ext=`/`;phone-context=` are refused because they
    ///   would be dropped or mean nothing to the carrier;
    /// - `sip:`/`sips:` URIs that rsip parses and that have a host (no angle brackets).
    ///
    /// # Errors
    /// [`SipError::InvalidTransferTarget`] with the reason.
    pub fn parse(s: &str) -> Result<TransferTarget, SipError> {
        let input = s.trim();
        let err = |reason: String| SipError::InvalidTransferTarget {
            input: input.to_owned(),
            reason,
        };
        let scheme = input.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("tel") => match SipUri::parse(input) {
                Ok(SipUri::Tel {
                    number,
                    global: true,
                    params,
                }) => {
                    if !params.is_empty() {
                        return Err(err("tel: targets take no parameters".into()));
                    }
                    E164::parse(&number)
                        .map(TransferTarget::Tel)
                        .map_err(|e| err(e.to_string()))
                }
                Ok(_) => Err(err(
                    "local numbers are not allowed; use tel:+<country code><number>".into(),
                )),
                Err(e) => Err(err(e.to_string())),
            },
            Some("sip" | "sips") => match SipUri::parse(input) {
                Ok(SipUri::Sip { host, .. }) if !host.is_empty() => {
                    Ok(TransferTarget::Sip(input.to_owned()))
                }
                Ok(_) => Err(err("missing host".into())),
                Err(e) => Err(err(e.to_string())),
            },
            _ => Err(err(
                "expected tel:+E164 or a sip:/sips: URI (without angle brackets)".into(),
            )),
        }
    }

    /// The exact `Refer-To` / `target_uri` string: `tel:+14155550123`, or the SIP URI as
    /// written (not rsip's re-serialisation, which upper-cases `transport=`).
    pub fn as_uri(&self) -> String {
        match self {
            TransferTarget::Tel(n) => format!("tel:{n}"),
            TransferTarget::Sip(s) => s.clone(),
        }
    }
}

impl fmt::Display for TransferTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferTarget::Tel(n) => write!(f, "tel:{n}"),
            TransferTarget::Sip(s) => f.write_str(s),
        }
    }
}

impl std::str::FromStr for TransferTarget {
    type Err = SipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransferTarget::parse(s)
    }
}

impl Serialize for TransferTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_uri())
    }
}

impl<'de> Deserialize<'de> for TransferTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TransferTarget::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tel_targets_are_normalised() {
        let t = TransferTarget::parse(" tel:+1-415-555-0100 ").unwrap();
        assert_eq!(t, TransferTarget::Tel(E164::parse("+14155550100").unwrap()));
        assert_eq!(t.as_uri(), "tel:+14155550100");
        assert_eq!(
            TransferTarget::parse("TEL:+14155550100").unwrap().as_uri(),
            "tel:+14155550100"
        );
    }

    #[test]
    fn sip_targets_keep_the_original_text() {
        let raw = "sip:agent@connect.example.com;transport=tls";
        let t = TransferTarget::parse(raw).unwrap();
        assert_eq!(t, TransferTarget::Sip(raw.into()));
        assert_eq!(t.as_uri(), raw, "not rsip's transport=TLS");
        let t = TransferTarget::parse("  sips:queue@pbx.example.com:5061  ").unwrap();
        assert_eq!(t.as_uri(), "sips:queue@pbx.example.com:5061");
        assert_eq!(t.to_string(), t.as_uri());
    }

    #[test]
    fn bad_targets_are_rejected_with_a_reason() {
        let cases = [
            ("tel:5550123;phone-context=+1415", "local numbers"),
            ("tel:+14155550100;ext=12", "no parameters"),
            ("tel:+0123", "cannot start with 0"),
            ("tel:+1234567890123456", "more than 15 digits"),
            ("tel:xyz", "not allowed"),
            ("+14155550100", "expected tel:+E164"),
            ("<sip:agent@example.com>", "expected tel:+E164"),
            ("mailto:a@example.com", "expected tel:+E164"),
            ("https://example.com", "expected tel:+E164"),
            ("sip:", "nothing after the scheme"),
            ("sip:agent@", "missing host"),
            ("sip:agent@example.com;transport=carrier-pigeon", "rsip"),
            ("", "expected tel:+E164"),
        ];
        for (input, want) in cases {
            let err = TransferTarget::parse(input).unwrap_err();
            assert!(
                matches!(err, SipError::InvalidTransferTarget { .. }),
                "{input:?}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(want), "{input:?}: {msg}");
        }
    }

    #[test]
    fn serde_uses_the_uri_string() {
        let t = TransferTarget::parse("tel:+1 (415) 555-0100").unwrap_err();
        assert!(
            t.to_string().contains("not allowed"),
            "spaces are not RFC 3966: {t}"
        );
        let t: TransferTarget = serde_json::from_str("\"tel:+1-415-555-0100\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"tel:+14155550100\"");
        assert!(serde_json::from_str::<TransferTarget>("\"tel:12\"").is_err());
    }
}
