//! E.164 numbers and the lenient normaliser for SIP user parts.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SipError;

/// An E.164 number in its canonical written form: `+` then 1 to 15 digits, the first digit not
/// `0` (ITU-T E.164 §6: country code first, at most 15 digits). Example: `+14155550123`.
///
/// [`E164::parse`] is strict (no separators); use [`normalize_number`] for user parts of SIP URIs.
/// Serializes as the string; deserializes through [`E164::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// Longest E.164 number, digits without the `+` (ITU-T E.164 §6.1).
    pub const MAX_DIGITS: usize = 15;

    /// Fewest digits of a number we dial or call from (caller IDs, transfer targets, SMS
    /// senders). ITU-T E.164 §6 sets no useful lower bound; no dialable international number
    /// (country code plus national number) is shorter than 8 digits, so a configured number
    /// shorter than that is a typo or a short code that a carrier would refuse. Numbers we
    /// receive (caller, dialed) are not held to it.
    pub const MIN_DIALABLE_DIGITS: usize = 8;

    /// Parses the canonical form `+` 1..=15 ASCII digits, first digit not `0`.
    ///
    /// # Errors
    /// [`SipError::InvalidE164`] for anything else, including separators, spaces and a missing `+`.
    pub fn parse(s: &str) -> Result<E164, SipError> {
        let err = |reason: &str| SipError::InvalidE164 {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| err("must start with '+'"))?;
        if digits.is_empty() {
            return Err(err("no digits after '+'"));
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("only digits may follow '+'"));
        }
        if digits.len() > Self::MAX_DIGITS {
            return Err(err("more than 15 digits"));
        }
        if digits.starts_with('0') {
            return Err(err("country code cannot start with 0"));
        }
        Ok(E164(s.to_owned()))
    }

    /// The canonical string, e.g. `"+14155550123"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the leading `+`, e.g. `"14155550123"`.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for E164 {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for E164 {
    type Err = SipError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        E164::parse(s)
    }
}

impl Serialize for E164 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for E164 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        E164::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// RFC 3966 §3 visual separators, plus the space that people and some carriers add.
pub(crate) fn is_visual_separator(c: char) -> bool {
    matches!(c, '-' | '.' | '(' | ')' | ' ')
}

/// Lenient normaliser for the user part of a SIP URI (or any hand-written number).
///
/// - Removes RFC 3966 visual separators (`-`, `.`, `(`, `)`) and spaces.
/// - `+` followed by digits: [`E164::parse`] of the result.
/// - Digits only, 11 to 15 of them: `+` is prefixed. Carriers such as Vonage send
///   `14155550123` without the `+`; 10 digits and fewer are national or short numbers whose
///   country is unknown, so they give `None`.
/// - Anything else (letters, `anonymous`, `00` prefixes, too long): `None`.
///
/// Example: `"+1 (415) 555-0123"` → `+14155550123`; `"14155550123"` → `+14155550123`;
/// `"4155550123"` → `None`.
pub fn normalize_number(user_part: &str) -> Option<E164> {
    let cleaned: String = user_part
        .trim()
        .chars()
        .filter(|&c| !is_visual_separator(c))
        .collect();
    if cleaned.starts_with('+') {
        return E164::parse(&cleaned).ok();
    }
    if (11..=E164::MAX_DIGITS).contains(&cleaned.len())
        && cleaned.bytes().all(|b| b.is_ascii_digit())
    {
        return E164::parse(&format!("+{cleaned}")).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_canonical_numbers() {
        assert_eq!(
            E164::parse("+14155550123").unwrap().as_str(),
            "+14155550123"
        );
        assert_eq!(E164::parse("+1").unwrap().digits(), "1");
        assert!(
            E164::parse("+123456789012345").is_ok(),
            "15 digits is the maximum"
        );
    }

    #[test]
    fn parse_rejects_non_canonical_input() {
        for bad in [
            "",
            "+",
            "14155550123",
            "+1-415-555-0123",
            "+1 4155550123",
            "+01415555",
            "+1234567890123456",
            "+1415555012a",
            " +14155550123",
            "++14155550123",
        ] {
            let err = E164::parse(bad).unwrap_err();
            assert!(
                matches!(err, SipError::InvalidE164 { ref input, .. } if input == bad),
                "{bad:?} gave {err:?}"
            );
        }
        let msg = E164::parse("+0123").unwrap_err().to_string();
        assert!(msg.contains("cannot start with 0"), "{msg}");
    }

    #[test]
    fn serde_round_trip_is_the_plain_string() {
        let n = E164::parse("+442071838750").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"+442071838750\"");
        let back: E164 = serde_json::from_str("\"+442071838750\"").unwrap();
        assert_eq!(back, n);
        let bad = serde_json::from_str::<E164>("\"442071838750\"").unwrap_err();
        assert!(bad.to_string().contains("must start with '+'"), "{bad}");
    }

    #[test]
    fn normalize_strips_separators_and_prefixes_long_digit_strings() {
        let want = Some(E164::parse("+14155550123").unwrap());
        assert_eq!(normalize_number("+14155550123"), want);
        assert_eq!(normalize_number("+1-415-555-0123"), want);
        assert_eq!(normalize_number("+1 (415) 555.0123"), want);
        assert_eq!(
            normalize_number("14155550123"),
            want,
            "Vonage style, no '+'"
        );
        assert_eq!(normalize_number(" 1-415-555-0123 "), want);
    }

    #[test]
    fn normalize_rejects_short_local_and_non_numeric_users() {
        assert_eq!(
            normalize_number("4155550123"),
            None,
            "10 digits: country unknown"
        );
        assert_eq!(normalize_number("5550123"), None);
        assert_eq!(normalize_number("anonymous"), None);
        assert_eq!(normalize_number("proj_abc123"), None);
        assert_eq!(normalize_number(""), None);
        assert_eq!(normalize_number("+"), None);
        assert_eq!(
            normalize_number("0044207183875"),
            None,
            "00 prefix is not E.164"
        );
        assert_eq!(normalize_number("1234567890123456"), None, "16 digits");
        assert_eq!(normalize_number("*67"), None);
    }
}
