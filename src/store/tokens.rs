//! Handover tokens: one-time numeric codes that carry a call's context to a human agent's
//! system (read back by an Amazon Connect "Store customer input" block,
//! <https://docs.aws.amazon.com/connect/latest/adminguide/store-customer-input.html>).
//!
//! When the AI agent escalates, the controller mints a token for a [`HandoverPayload`]
//! ([`super::Store::mint_token`]) and sends it as DTMF digits to the contact centre, whose flow
//! redeems it exactly once ([`super::Store::redeem_token`]). Tokens expire after a short TTL
//! (10 minutes by default, [`DEFAULT_TOKEN_TTL_SECS`]).
//!
//! Rules every store follows (§1.3, §3):
//! - a token is [`TOKEN_DIGITS`] decimal digits drawn from a CSPRNG ([`generate_token`]);
//! - it is made unique by a conditional insert that only succeeds when no *live* token has that
//!   value (an expired one may be overwritten), retried with a fresh value on collision, at most
//!   [`MINT_ATTEMPTS`] times;
//! - redemption is an atomic conditional delete that also requires `expires_at > now`, so a
//!   token redeems at most once and never after its expiry, whether or not the backend has
//!   removed the expired entry yet (DynamoDB TTL deletion lags by up to ~48 h);
//! - the clock is a parameter (`now`), never read inside the store.

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
