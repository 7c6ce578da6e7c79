//! Handover tokens: one-time numeric codes that carry a call's context to a human agent's
//! system (read back by an Amazon Connect "Store customer input" block,
//! <https://docs.aws.amazon.com/connect/latest/adminguide/store-customer-input.html>).
//!
//! When the AI agent escalates, the controller mints a token for a [`HandoverPayload`]
//! ([`super::Store::mint_token`]) and sends it as DTMF digits to the contact centre, whose flow
//! redeems it exactly once ([`super::Store::redeem_token`]). Tokens expire after a short TTL
//! (10 minutes by default, [`DEFAULT_TOKEN_TTL_SECS`]).
//!
//! Rules every store follows:
//! - a token is [`TOKEN_DIGITS`] decimal digits drawn from a CSPRNG ([`generate_token`]);
//! - it is made unique by a conditional insert that only succeeds when no *live* token has that
//!   value (an expired one may be overwritten), retried with a fresh value on collision, at most
//!   [`MINT_ATTEMPTS`] times;
//! - redemption is an atomic conditional delete that also requires `expires_at > now`, so a
//!   token redeems at most once and never after its expiry, whether or not the backend has
//!   removed the expired entry yet (DynamoDB TTL deletion lags by up to ~48 h);
//! - the clock is a parameter (`now`), never read inside the store.
//!
//! # Media Streams tokens
//!
//! The same facility (same table, same conditional insert and conditional delete) holds
//! single-use **stream tokens**: the voice webhook and the outbound call placement mint one per
//! answered call ([`super::Store::mint_stream_token`]) for a [`StreamGrant`], put it in the
//! `<Connect><Stream>` TwiML as a `<Parameter>`, and the Media Streams bridge redeems it from
//! the `start` message's `customParameters` ([`super::Store::redeem_stream_token`]; Twilio
//! documents that custom parameters come back there:
//! <https://www.twilio.com/docs/voice/twiml/stream#custom-parameters>). A stream token has its
//! own shape ([`is_stream_token`]: `vst_` + 32 lowercase hex digits, 128 random bits), disjoint
//! from the 10-digit handover tokens, so neither kind can be peeked at or redeemed as the other.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Number of decimal digits in a handover token.
pub const TOKEN_DIGITS: usize = 10;

/// The default token lifetime, seconds (10 minutes).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 600;

/// How many candidate tokens a mint tries before giving up with
/// [`super::StoreError::Backend`]. With 10^10 values and at most thousands of live tokens, a
/// single collision is already improbable (~10^-7); eight in a row means something is wrong.
pub const MINT_ATTEMPTS: usize = 8;

/// The context handed to a human agent with a token. Stored as given and returned unchanged by
/// [`super::Store::redeem_token`], [`super::Store::peek_token`] and
/// [`super::Store::latest_handover_for_caller`] (timestamps included, to the nanosecond).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverPayload {
    /// OpenAI's call id of the escalated call (`rtc_...`).
    pub call_id: String,
    /// Caller number in E.164 (`+14155550123`), when known. Used by
    /// [`super::Store::latest_handover_for_caller`].
    pub caller_number: Option<String>,
    /// HubSpot contact id of the caller, when looked up or created.
    pub hubspot_contact_id: Option<String>,
    /// HubSpot ticket id opened for the escalation, when created.
    pub hubspot_ticket_id: Option<String>,
    /// Short summary of the conversation so far, for the human agent.
    pub summary: String,
    /// What the caller wants, e.g. `billing_question`, when classified.
    pub intent: Option<String>,
    /// Priority label, e.g. `high`, when set.
    pub priority: Option<String>,
    /// Why the call was escalated (the trigger and its detail).
    pub escalation_reason: String,
    /// Queue the contact centre should route the caller to, when the profile names one.
    pub route_to_queue: Option<String>,
    /// When the payload was assembled.
    pub created_at: DateTime<Utc>,
}

/// The prefix of a Media Streams token ([`generate_stream_token`]).
pub const STREAM_TOKEN_PREFIX: &str = "vst_";

/// Hex digits after [`STREAM_TOKEN_PREFIX`] (128 random bits).
pub const STREAM_TOKEN_HEX: usize = 32;

/// What a Media Streams token grants: one stream, for one call we answered, with the profile we
/// chose. Stored as given and returned unchanged by [`super::Store::redeem_stream_token`]
/// (timestamps to the nanosecond).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGrant {
    /// Twilio `CallSid` (`CA…`) of the call our voice webhook answered. `None` for an outbound
    /// call: its TwiML (with the token) is sent before Twilio assigns the `CallSid`; the bridge
    /// then binds the stream through the call record instead (direction `outbound`, same
    /// profile and dialed number, created after the grant).
    pub call_sid: Option<String>,
    /// Twilio `AccountSid` (`AC…`) the call belongs to.
    pub account_sid: String,
    /// The prompt profile chosen for the call (never taken from the stream).
    pub profile: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The dialed number (E.164) when known: the callee of an outbound call.
    pub dialed: Option<String>,
    /// When the grant was made.
    pub created_at: DateTime<Utc>,
}

/// A fresh stream token: [`STREAM_TOKEN_PREFIX`] and [`STREAM_TOKEN_HEX`] lowercase hex
/// digits (128 bits from the thread-local CSPRNG, as [`generate_token`]).
pub fn generate_stream_token() -> String {
    let n: u128 = rand::rng().random();
    format!("{STREAM_TOKEN_PREFIX}{n:032x}")
}

/// True when `token` has the shape of a stream token: [`STREAM_TOKEN_PREFIX`] followed by
/// exactly [`STREAM_TOKEN_HEX`] lowercase hex digits. Stores answer `None` for anything else
/// without asking the backend.
pub fn is_stream_token(token: &str) -> bool {
    token.strip_prefix(STREAM_TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == STREAM_TOKEN_HEX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// An endless stream of [`generate_stream_token`] values.
pub fn random_stream_candidates() -> impl Iterator<Item = String> {
    std::iter::repeat_with(generate_stream_token)
}

/// A fresh token: [`TOKEN_DIGITS`] decimal digits, uniformly distributed over `0..10^10`,
/// zero-padded, from the thread-local CSPRNG (`rand::rng()`: ChaCha12 seeded from the OS).
pub fn generate_token() -> String {
    let n: u64 = rand::rng().random_range(0..10_000_000_000u64);
    format!("{n:010}")
}

/// True when `token` has the shape of a handover token (exactly [`TOKEN_DIGITS`] ASCII
/// digits). Stores answer `None` for anything else without asking the backend, so input such
/// as Amazon Connect's `Timeout` is simply an invalid token.
pub fn is_token(token: &str) -> bool {
    token.len() == TOKEN_DIGITS && token.bytes().all(|b| b.is_ascii_digit())
}

/// An endless stream of [`generate_token`] values, the candidates a mint tries in turn.
pub fn random_candidates() -> impl Iterator<Item = String> {
    std::iter::repeat_with(generate_token)
}

/// The expiry of a token minted at `now` with lifetime `ttl`.
///
/// # Errors
/// [`super::StoreError::Invalid`] when `ttl` is zero or negative, or `now + ttl` is out of
/// range.
pub fn expiry(
    now: DateTime<Utc>,
    ttl: chrono::Duration,
) -> Result<DateTime<Utc>, super::StoreError> {
    if ttl <= chrono::Duration::zero() {
        return Err(super::StoreError::Invalid(format!(
            "token ttl must be positive, got {ttl}"
        )));
    }
    now.checked_add_signed(ttl).ok_or_else(|| {
        super::StoreError::Invalid(format!("token expiry {now} + {ttl} out of range"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_ten_digits_and_vary() {
        let tokens: std::collections::HashSet<String> =
            (0..1000).map(|_| generate_token()).collect();
        assert!(tokens.iter().all(|t| is_token(t)), "{tokens:?}");
        // 1000 draws from 10^10 values: a repeat is a ~5e-5 event, many would mean a broken RNG.
        assert!(tokens.len() >= 999);
        // Leading zeros are kept: some of 1000 uniform draws start with '0' (p(miss) ~ 1.7e-46).
        assert!(tokens.iter().any(|t| t.starts_with('0')));
    }

    #[test]
    fn stream_tokens_have_their_own_shape() {
        let tokens: std::collections::HashSet<String> =
            (0..1000).map(|_| generate_stream_token()).collect();
        assert_eq!(tokens.len(), 1000);
        for t in &tokens {
            assert!(is_stream_token(t), "{t}");
            assert!(!is_token(t), "{t}");
        }
        assert!(!is_stream_token(&generate_token()));
        for bad in [
            "",
            "vst_",
            "vst_0123456789abcdef0123456789abcde",
            "vst_0123456789abcdef0123456789abcdef0",
            "vst_0123456789ABCDEF0123456789abcdef",
            "vsx_0123456789abcdef0123456789abcdef",
            " vst_0123456789abcdef0123456789abcde",
        ] {
            assert!(!is_stream_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn token_shape() {
        assert!(is_token("0123456789"));
        for bad in [
            "",
            "123456789",
            "01234567890",
            "012345678a",
            "Timeout",
            "+123456789",
            "١٢٣٤٥٦٧٨٩٠",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
