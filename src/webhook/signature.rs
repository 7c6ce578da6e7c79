//! Standard Webhooks (symmetric `v1`) signature verification, as OpenAI uses it.
//!
//! Source: `standard-webhooks/standard-webhooks` `spec/standard-webhooks.md`, and the OpenAI SDKs'
//! `webhooks.unwrap` (`openai-python` `src/openai/lib/_webhooks.py`); see also
//! <https://developers.openai.com/api/docs/guides/webhooks>. Behaviour:
//!
//! - signed content is `"{webhook-id}.{webhook-timestamp}.{raw body}"` using the header strings
//!   exactly as received and the raw body bytes;
//! - signature is `base64(HMAC-SHA256(key, signed content))`, standard alphabet with padding;
//! - the key is `base64decode(secret without "whsec_")`; a secret without the prefix is used as
//!   raw UTF-8 bytes (the OpenAI SDKs' fallback);
//! - `webhook-signature` is a list of `v1,<sig>` entries separated by any whitespace; any one
//!   matching (compared in constant time) accepts. Entries without a `v1,` prefix are tried as-is,
//!   as openai-python does; `v1a,` (asymmetric) entries are ignored;
//! - `webhook-timestamp` is Unix seconds, strictly decimal digits here (no sign, no spaces), and
//!   must lie within `tolerance` of now in both directions, inclusive.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery failed verification. [`VerifyError::status`] maps each to the HTTP status the
/// webhook endpoint answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent or not valid UTF-8.
    #[error("missing or unreadable {0} header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a decimal number of seconds.
    #[error("invalid webhook timestamp format")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows (a replay or a very late retry).
    #[error("webhook timestamp is too old")]
    TooOld,
    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook timestamp is too new")]
    TooNew,
    /// No signature in the header matched.
    #[error("no webhook signature matched")]
    NoMatch,
}

impl VerifyError {
    /// 400 for a malformed request (missing header, garbled timestamp), 401 for an authentic-looking
    /// request that fails authentication (stale, future, wrong signature).
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingHeader(_) | Self::InvalidTimestamp => 400,
            Self::TooOld | Self::TooNew | Self::NoMatch => 401,
        }
    }

    /// A short stable label for logs and the `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::InvalidTimestamp => "bad_timestamp",
            Self::TooOld => "stale",
            Self::TooNew => "future",
            Self::NoMatch => "bad_signature",
        }
    }
}

/// The secret could not be turned into a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "webhook secret OPENAI_WEBHOOK_SECRET is empty, or starts with whsec_ and the rest is empty \
     or not valid base64"
)]
pub struct KeyError;

/// The headers of one delivery, as received.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
}

impl<'a> DeliveryHeaders<'a> {
    /// Reads the three headers from an HTTP header map (names are case-insensitive there).
    pub fn from_map(map: &'a axum::http::HeaderMap) -> Self {
        let get = |n: &str| map.get(n).and_then(|v| v.to_str().ok());
        Self {
            id: get("webhook-id"),
            timestamp: get("webhook-timestamp"),
            signature: get("webhook-signature"),
        }
    }
}

/// A delivery that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `webhook-id` header: the idempotency key, reused by retries.
    pub webhook_id: String,
    /// The `webhook-timestamp` of this delivery attempt, Unix seconds.
    pub timestamp: i64,
}

/// Verifies and creates Standard Webhooks `v1` signatures with one endpoint secret.
#[derive(Clone)]
pub struct Verifier {
    key: Vec<u8>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("key", &"***")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier from the endpoint's signing secret (`whsec_<base64>`, or any other string
    /// used as raw bytes) and a tolerance in seconds (OpenAI SDKs: 300).
    ///
    /// # Errors
    /// [`KeyError`] when the secret is empty or whitespace, or has the `whsec_` prefix and the
    /// rest is empty or not base64.
    pub fn new(secret: &str, tolerance_secs: u64) -> Result<Self, KeyError> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => B64.decode(b64).map_err(|_| KeyError)?,
            None => secret.as_bytes().to_vec(),
        };
        // Fail closed: an empty (or whitespace-only) key would make every signature forgeable.
        if key.is_empty() || secret.trim().is_empty() {
            return Err(KeyError);
        }
        Ok(Self {
            key,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value (`v1,<base64>`) for a delivery.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    /// Verifies one delivery against `now` (Unix seconds).
    ///
    /// Headers are checked in the SDKs' order (signature, timestamp, id); the timestamp window
    /// before the signature, so stale replays are refused without HMAC work.
    ///
    /// # Errors
    /// See [`VerifyError`]; nothing about the secret or the expected signature is in the error.
    pub fn verify(
        &self,
        headers: DeliveryHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let signature = headers
            .signature
            .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        let ts_text = headers
            .timestamp
            .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let id = headers.id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
        if id.is_empty() {
            return Err(VerifyError::MissingHeader("webhook-id"));
        }
        let timestamp = parse_timestamp(ts_text)?;
        if now.saturating_sub(timestamp) > self.tolerance_secs {
            return Err(VerifyError::TooOld);
        }
        if timestamp.saturating_sub(now) > self.tolerance_secs {
            return Err(VerifyError::TooNew);
        }
        let mac = self.mac(id, ts_text, body);
        let matched = signature
            .split_whitespace()
            .filter_map(|entry| match entry.split_once(',') {
                Some(("v1", sig)) => Some(sig),
                Some(_) => None,
                None => Some(entry),
            })
            .filter_map(|sig| B64.decode(sig).ok())
            .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());
        if matched {
            Ok(Verified {
                webhook_id: id.to_string(),
                timestamp,
            })
        } else {
            Err(VerifyError::NoMatch)
        }
    }
}

fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::InvalidTimestamp);
    }
    text.parse().map_err(|_| VerifyError::InvalidTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Standard Webhooks spec vector (libraries/python/tests/test_webhooks.py::test_sign_function).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: &str = "1614265330";
    const SW_BODY: &str = r#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> DeliveryHeaders<'a> {
        DeliveryHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn standard_webhooks_vector_signs_and_verifies() {
        let v = Verifier::new(SW_SECRET, 300).unwrap();
        assert_eq!(v.sign(SW_ID, SW_TS, SW_BODY.as_bytes()), SW_SIG);
        let ok = v
            .verify(
                headers(SW_ID, SW_TS, SW_SIG),
                SW_BODY.as_bytes(),
                1_614_265_330,
            )
            .unwrap();
        assert_eq!(ok.webhook_id, SW_ID);
        assert_eq!(ok.timestamp, 1_614_265_330);
    }

    #[test]
    fn standard_webhooks_tampered_signature_fails() {
        let v = Verifier::new(SW_SECRET, 300).unwrap();
        let tampered = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            v.verify(
                headers(SW_ID, SW_TS, tampered),
                SW_BODY.as_bytes(),
                1_614_265_330
            ),
            Err(VerifyError::NoMatch)
        );
    }

    // openai-python tests/lib/test_webhook_signature.py inputs.
    const OA_ID: &str = "evt_synthetic";
    const OA_NOW: i64 = 1_750_000_000;
    const OA_BODY: &str = r#"{"synthetic": "café"}"#;

    fn oa_secret() -> String {
        format!("whsec_{}", B64.encode("synthetic-webhook-secret"))
    }

    #[test]
    fn openai_python_multi_signature_header_with_tab_passes() {
        let v = Verifier::new(&oa_secret(), 300).unwrap();
        let ts = OA_NOW.to_string();
        let good = v.sign(OA_ID, &ts, OA_BODY.as_bytes());
        let sig = good.strip_prefix("v1,").unwrap();
        let header = format!("v1,invalid\t{sig} v1,also-invalid");
        assert!(
            v.verify(headers(OA_ID, &ts, &header), OA_BODY.as_bytes(), OA_NOW)
                .is_ok()
        );
    }

    #[test]
    fn utf8_body_bytes_are_signed_not_reencoded() {
        let v = Verifier::new(&oa_secret(), 300).unwrap();
        let ts = OA_NOW.to_string();
        let sig = v.sign(OA_ID, &ts, OA_BODY.as_bytes());
        let ascii_escaped = r#"{"synthetic": "caf\u00e9"}"#;
        assert_eq!(
            v.verify(headers(OA_ID, &ts, &sig), ascii_escaped.as_bytes(), OA_NOW),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tolerance_is_inclusive_both_ways() {
        let v = Verifier::new(&oa_secret(), 300).unwrap();
        for (offset, expect) in [
            (-300, None),
            (300, None),
            (-301, Some(VerifyError::TooOld)),
            (301, Some(VerifyError::TooNew)),
        ] {
            let ts = (OA_NOW + offset).to_string();
            let sig = v.sign(OA_ID, &ts, OA_BODY.as_bytes());
            let got = v
                .verify(headers(OA_ID, &ts, &sig), OA_BODY.as_bytes(), OA_NOW)
                .err();
            assert_eq!(got, expect, "offset {offset}");
        }
    }

    #[test]
    fn wrong_secret_fails_and_raw_secret_fallback_differs() {
        let signer = Verifier::new(&oa_secret(), 300).unwrap();
        let ts = OA_NOW.to_string();
        let sig = signer.sign(OA_ID, &ts, OA_BODY.as_bytes());
        // Same text without the prefix is used as raw bytes: a different key.
        let raw = Verifier::new(&B64.encode("synthetic-webhook-secret"), 300).unwrap();
        assert_eq!(
            raw.verify(headers(OA_ID, &ts, &sig), OA_BODY.as_bytes(), OA_NOW),
            Err(VerifyError::NoMatch)
        );
        // A raw secret verifies its own signatures (SDK fallback).
        let raw2 = Verifier::new("not-prefixed-secret", 300).unwrap();
        let sig2 = raw2.sign(OA_ID, &ts, OA_BODY.as_bytes());
        assert!(
            raw2.verify(headers(OA_ID, &ts, &sig2), OA_BODY.as_bytes(), OA_NOW)
                .is_ok()
        );
    }

    #[test]
    fn unprefixed_entry_is_tried_and_v1a_ignored() {
        let v = Verifier::new(SW_SECRET, 300).unwrap();
        let bare = SW_SIG.strip_prefix("v1,").unwrap();
        assert!(
            v.verify(
                headers(SW_ID, SW_TS, bare),
                SW_BODY.as_bytes(),
                1_614_265_330
            )
            .is_ok()
        );
        let v1a = format!("v1a,{bare}");
        assert_eq!(
            v.verify(
                headers(SW_ID, SW_TS, &v1a),
                SW_BODY.as_bytes(),
                1_614_265_330
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn malformed_headers_are_400() {
        let v = Verifier::new(SW_SECRET, 300).unwrap();
        let none = DeliveryHeaders {
            id: Some(SW_ID),
            timestamp: Some(SW_TS),
            signature: None,
        };
        let e = v
            .verify(none, SW_BODY.as_bytes(), 1_614_265_330)
            .unwrap_err();
        assert_eq!(
            (e.status(), e),
            (400, VerifyError::MissingHeader("webhook-signature"))
        );
        for ts in [
            "",
            "1.5",
            "+1614265330",
            " 1614265330",
            "abc",
            "99999999999999999999",
        ] {
            let e = v
                .verify(
                    headers(SW_ID, ts, SW_SIG),
                    SW_BODY.as_bytes(),
                    1_614_265_330,
                )
                .unwrap_err();
            assert_eq!(e, VerifyError::InvalidTimestamp, "{ts:?}");
            assert_eq!(e.status(), 400);
        }
        let e = v
            .verify(
                headers("", SW_TS, SW_SIG),
                SW_BODY.as_bytes(),
                1_614_265_330,
            )
            .unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn bad_prefixed_secret_is_refused() {
        assert_eq!(
            Verifier::new("whsec_!!!not base64", 300).unwrap_err(),
            KeyError
        );
        for empty in ["", "   ", "whsec_", "whsec_ "] {
            assert_eq!(
                Verifier::new(empty, 300).unwrap_err(),
                KeyError,
                "{empty:?} must not become an empty HMAC key"
            );
        }
    }
}
