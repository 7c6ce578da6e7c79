//! The profile's `[extract]` rules applied to a finished call's transcript.
//!
//! Each rule is `name = "regex"`. Every transcript line (caller and agent) is searched; the value
//! is the rule's first capture group, or the whole match when the regex has no group, of the
//! **last** match in the transcript (the last matching line, and the last match within it: a
//! correction or read-back comes after the first mention). Rules that match nothing are absent
//! from the result.

use std::collections::BTreeMap;

use crate::calls::record::TranscriptLine;

/// Applies `rules` to `transcript` (in call order).
pub fn extract(
    rules: &[(String, regex::Regex)],
    transcript: &[TranscriptLine],
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, re) in rules {
        let found = transcript.iter().rev().find_map(|line| {
            let caps = re.captures_iter(&line.text).last()?;
            caps.get(1)
                .or_else(|| caps.get(0))
                .map(|m| m.as_str().to_string())
        });
        if let Some(v) = found {
            out.insert(name.clone(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::record::Speaker;

    fn line(speaker: Speaker, text: &str) -> TranscriptLine {
        TranscriptLine {
            call_id: "CA1".into(),
            speaker,
            text: text.into(),
            at: chrono::Utc::now(),
            item_id: None,
        }
    }

    #[test]
    fn last_match_wins_and_groups_are_preferred() {
        let rules = vec![
            (
                "confirmation_number".to_string(),
                regex::Regex::new(r"confirmation number is ([A-Z0-9]{6})").unwrap(),
            ),
            ("email".to_string(), regex::Regex::new(r"\S+@\S+").unwrap()),
            ("missing".to_string(), regex::Regex::new(r"zzz").unwrap()),
        ];
        let t = vec![
            line(Speaker::Agent, "Your confirmation number is ABC123."),
            line(Speaker::Caller, "Sorry? Write to me at ada@example.com"),
            line(
                Speaker::Agent,
                "Correction: the confirmation number is R7K2P9.",
            ),
        ];
        let got = extract(&rules, &t);
        assert_eq!(got["confirmation_number"], "R7K2P9");
        assert_eq!(got["email"], "ada@example.com");
        assert!(!got.contains_key("missing"));
    }
}
