//! Caller-phrase trigger: does a caller transcript line ask for a human?
//!
//! Matching works on words, not characters:
//! - text is lower-cased (Unicode) and split into words at anything that is not a letter, digit
//!   or apostrophe, so phrases match whole words only ("agent" does not match "agentic" or
//!   "reagent") and multi-word phrases match across any run of spaces and punctuation
//!   ("real-person", "real   person", "real, person");
//! - apostrophes (`'`, `’`, `‘`, `ʼ`, `` ` ``) are removed inside words, so "don’t", "don't" and
//!   "dont" are the same word;
//! - a match is ignored when a negation word ("no", "not", "never", "without", "don't",
//!   "doesn't", "didn't"; "do not" and "no need" are covered by "not" and "no") is among the 4
//!   words before the phrase in the same clause. Clauses end at `.` `,` `;` `!` `?` and at the
//!   word "but".
//!
//! So "I don't need a human" does not fire, "No, I don't want an agent, but can I talk to a
//! person?" fires on "a person", and "Can I speak to a human please" fires on "human".

use std::collections::HashMap;

/// Default caller phrases, used when a profile sets `default_phrases = true`.
///
/// Deliberately explicit requests; plain "person" or "someone" alone would fire on ordinary
/// sentences. "human" and "agent" can still fire on "are you a human?"; profiles that find that
/// too eager can set `default_phrases = false` and list their own.
pub const DEFAULT_PHRASES: &[&str] = &[
    "human",
    "real person",
    "live person",
    "actual person",
    "a person",
    "agent",
    "representative",
    "operator",
    "speak to someone",
    "talk to someone",
    "speak with someone",
    "talk with someone",
    "someone real",
    "somebody real",
];

/// Words that negate a phrase when they appear within [`NEGATION_WINDOW`] words before it in
/// the same clause (already apostrophe-free and lower-case).
const NEGATIONS: &[&str] = &[
    "no", "not", "never", "without", "dont", "doesnt", "didnt", "nope",
];

/// How many words before a phrase are checked for a negation.
const NEGATION_WINDOW: usize = 4;

/// Characters that end a clause (besides the word "but").
fn is_clause_break(c: char) -> bool {
    matches!(c, '.' | ',' | ';' | '!' | '?')
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{2018}' | '\u{02BC}' | '`')
}

/// One word of normalised text: byte range in the normalised buffer and its clause number.
#[derive(Debug, Clone, Copy)]
struct Word {
    start: usize,
    end: usize,
    clause: usize,
}

/// Lower-cases `text`, drops apostrophes, and splits it into words with clause numbers.
/// The words' text lives in `buf`.
fn tokenize(text: &str, buf: &mut String, words: &mut Vec<Word>) {
    buf.clear();
    words.clear();
    let mut clause = 0;
    let mut start: Option<usize> = None;
    let finish = |buf: &mut String, words: &mut Vec<Word>, start: usize, clause: &mut usize| {
        if &buf[start..] == "but" {
            buf.truncate(start);
            *clause += 1;
        } else {
            words.push(Word {
                start,
                end: buf.len(),
                clause: *clause,
            });
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            if start.is_none() {
                start = Some(buf.len());
            }
            buf.extend(c.to_lowercase());
        } else if is_apostrophe(c) {
            // inside a word: dropped; outside: a quote mark, ignored
        } else {
            if let Some(s) = start.take() {
                finish(buf, words, s, &mut clause);
            }
            if is_clause_break(c) {
                clause += 1;
            }
        }
    }
    if let Some(s) = start.take() {
        finish(buf, words, s, &mut clause);
    }
}

/// Finds configured caller phrases in transcript text; see the module docs for the rules.
/// Built once per profile; [`PhraseMatcher::find`] is cheap enough for every transcript line.
#[derive(Debug, Clone, Default)]
pub struct PhraseMatcher {
    /// The phrases as configured (returned by `find`).
    phrases: Vec<String>,
    /// Each phrase's normalised words, parallel to `phrases`.
    words: Vec<Vec<String>>,
    /// First normalised word -> indices into `phrases`, longest phrase first.
    by_first: HashMap<String, Vec<usize>>,
}

impl PhraseMatcher {
    /// Compiles `phrases`. Phrases without any word (empty, punctuation only) are ignored;
    /// duplicates after normalisation are kept once (the first spelling).
    pub fn new<S: AsRef<str>>(phrases: &[S]) -> Self {
        let mut m = PhraseMatcher::default();
        let (mut buf, mut toks) = (String::new(), Vec::new());
        for phrase in phrases {
            let phrase = phrase.as_ref();
            tokenize(phrase, &mut buf, &mut toks);
            let words: Vec<String> = toks
                .iter()
                .map(|w| buf[w.start..w.end].to_owned())
                .collect();
            if words.is_empty() || m.words.contains(&words) {
                continue;
            }
            let idx = m.phrases.len();
            m.by_first.entry(words[0].clone()).or_default().push(idx);
            m.phrases.push(phrase.trim().to_owned());
            m.words.push(words);
        }
        for list in m.by_first.values_mut() {
            let words = &m.words;
            list.sort_by_key(|&i| std::cmp::Reverse(words[i].len()));
        }
        m
    }

    /// The configured phrases that are active (after dropping empty and duplicate ones).
    pub fn phrases(&self) -> &[String] {
        &self.phrases
    }

    /// True when no phrase is configured: `find` always returns `None`.
    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The first phrase (in text order; the longest one when several start at the same word)
    /// that occurs in `text` without a negation before it, as configured. `None` when nothing
    /// matches.
    pub fn find(&self, text: &str) -> Option<&str> {
        if self.phrases.is_empty() {
            return None;
        }
        let (mut buf, mut words) = (String::with_capacity(text.len()), Vec::new());
        tokenize(text, &mut buf, &mut words);
        let word = |w: &Word| &buf[w.start..w.end];
        for (i, w) in words.iter().enumerate() {
            let Some(candidates) = self.by_first.get(word(w)) else {
                continue;
            };
            for &p in candidates {
                let pw = &self.words[p];
                let Some(span) = words.get(i..i + pw.len()) else {
                    continue;
                };
                if !span.iter().zip(pw).all(|(w, p)| word(w) == p) {
                    continue;
                }
                let negated = words[i.saturating_sub(NEGATION_WINDOW)..i]
                    .iter()
                    .filter(|b| b.clause == w.clause)
                    .any(|b| NEGATIONS.contains(&word(b)));
                if !negated {
                    return Some(&self.phrases[p]);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PhraseMatcher {
        PhraseMatcher::new(DEFAULT_PHRASES)
    }

    #[test]
    fn plain_requests_fire() {
        let m = defaults();
        assert_eq!(m.find("Can I speak to a human please"), Some("human"));
        assert_eq!(m.find("I want an AGENT."), Some("agent"));
        assert_eq!(m.find("Get me a representative!"), Some("representative"));
        assert_eq!(m.find("can i talk to someone"), Some("talk to someone"));
        assert_eq!(m.find("Operator"), Some("operator"));
    }

    #[test]
    fn whole_words_only() {
        let m = defaults();
        assert_eq!(m.find("That sounds agentic to me"), None);
        assert_eq!(m.find("the reagent arrived"), None);
        assert_eq!(m.find("humanity is great"), None);
        assert_eq!(m.find("the operators manual"), None);
        assert_eq!(
            m.find("my agent's number"),
            None,
            "possessive is a different word"
        );
    }

    #[test]
    fn multi_word_phrases_span_punctuation_and_whitespace() {
        let m = PhraseMatcher::new(&["real person", "speak to someone"]);
        assert_eq!(m.find("I need a real-person"), Some("real person"));
        assert_eq!(m.find("a REAL   person\tplease"), Some("real person"));
        assert_eq!(
            m.find("let me speak... to someone"),
            Some("speak to someone")
        );
        assert_eq!(m.find("a real nice person"), None);
        assert_eq!(m.find("speak to"), None, "partial phrase at the end");
    }

    #[test]
    fn negations_within_four_words_block_the_match() {
        let m = defaults();
        assert_eq!(m.find("I don't need a human"), None);
        assert_eq!(m.find("I don’t need a human"), None, "curly apostrophe");
        assert_eq!(m.find("I dont need a human"), None);
        assert_eq!(m.find("I do not want an agent"), None);
        assert_eq!(m.find("no need for an operator"), None);
        assert_eq!(m.find("never a representative"), None);
        assert_eq!(m.find("I can do it without an agent"), None);
        // the window is exactly 4 words
        assert_eq!(m.find("never see I want agent"), None, "4 words before");
        assert_eq!(
            m.find("never you see I want agent"),
            Some("agent"),
            "5 words before"
        );
    }

    #[test]
    fn clauses_limit_negation() {
        let m = defaults();
        assert_eq!(
            m.find("No, I don't want an agent, but can I talk to a person?"),
            Some("a person")
        );
        assert_eq!(m.find("Not now. Human please"), Some("human"));
        assert_eq!(m.find("I don't know but operator"), Some("operator"));
        assert_eq!(m.find("not sure; an agent"), Some("agent"));
        assert_eq!(m.find("I'd rather not, no human"), None);
    }

    #[test]
    fn later_unnegated_occurrence_still_fires() {
        let m = PhraseMatcher::new(&["agent"]);
        assert_eq!(m.find("not an agent now, an agent later"), Some("agent"));
    }

    #[test]
    fn longest_phrase_at_the_same_position_wins_and_original_spelling_returned() {
        let m = PhraseMatcher::new(&["real", "Real Person", "  real person  "]);
        assert_eq!(
            m.phrases(),
            &["real".to_string(), "Real Person".to_string()]
        );
        assert_eq!(m.find("a real person"), Some("Real Person"));
        assert_eq!(m.find("is this real"), Some("real"));
    }

    #[test]
    fn empty_matcher_and_empty_phrases() {
        let m = PhraseMatcher::new::<&str>(&[]);
        assert!(m.is_empty());
        assert_eq!(m.find("human"), None);
        let m = PhraseMatcher::new(&["", "  ", "!!"]);
        assert!(m.is_empty());
        assert_eq!(m.find(""), None);
    }

    #[test]
    fn unicode_text_and_phrases() {
        let m = PhraseMatcher::new(&["Mitarbeiter", "opérateur"]);
        assert_eq!(m.find("Bitte einen MITARBEITER!"), Some("Mitarbeiter"));
        assert_eq!(m.find("un OPÉRATEUR, s'il vous plaît"), Some("opérateur"));
        assert_eq!(defaults().find("日本語 human"), Some("human"));
    }
}
