//! Stitching GPT-Live transcript deltas into lines per speaker.
//!
//! Live sends `session.input_transcript.delta` (caller) and `session.output_transcript.delta`
//! (agent) as `{type, event_id, delta, start_ms, end_ms}` with **no done event and no item id**;
//! the deltas are concatenated in arrival order (openai-python `types/live/server_event.py`). A
//! line ends when:
//!
//! - the other speaker's delta arrives (turn change);
//! - the same speaker resumes after a pause: `start_ms` at least [`LINE_GAP_MS`] after the
//!   previous delta's `end_ms`;
//! - the caller of [`Stitcher::flush`] decides so (no delta for a while, a tool call, the end of
//!   the session);
//! - the line has reached [`MAX_LINE_BYTES`]: a speaker who never pauses cannot grow one line
//!   (and the call's memory) without bound; the next delta starts a new line.
//!
//! Each line's id is the `event_id` of its first delta, so a line rebuilt from replayed events
//! gets the same id and the store's `(call_id, speaker, item_id)` uniqueness drops the copy.

use crate::calls::record::Speaker;

/// A pause between two deltas of one speaker, in session milliseconds, that starts a new line.
pub const LINE_GAP_MS: u64 = 1_500;

/// The longest stitched line, bytes: a delta arriving when the open line has this much text
/// starts a new line (whose id is that delta's `event_id`).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// A finished line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Who spoke.
    pub speaker: Speaker,
    /// The concatenated deltas, surrounding whitespace trimmed; never empty.
    pub text: String,
    /// The first delta's `event_id`.
    pub item_id: String,
}

#[derive(Debug)]
struct Partial {
    speaker: Speaker,
    text: String,
    item_id: String,
    end_ms: Option<u64>,
}

/// Accumulates deltas of the current speaker; see the module docs for when lines end.
#[derive(Debug, Default)]
pub struct Stitcher {
    current: Option<Partial>,
}

impl Stitcher {
    /// Adds one delta. Returns the previous line when this delta ends it.
    pub fn push(
        &mut self,
        speaker: Speaker,
        delta: &str,
        start_ms: Option<u64>,
        end_ms: Option<u64>,
        event_id: &str,
    ) -> Option<Line> {
        let continues = self.current.as_ref().is_some_and(|p| {
            p.speaker == speaker
                && p.text.len() < MAX_LINE_BYTES
                && match (p.end_ms, start_ms) {
                    (Some(end), Some(start)) => start < end.saturating_add(LINE_GAP_MS),
                    _ => true,
                }
        });
        let finished = if continues { None } else { self.flush() };
        let p = self.current.get_or_insert_with(|| Partial {
            speaker,
            text: String::new(),
            item_id: event_id.to_string(),
            end_ms: None,
        });
        p.text.push_str(delta);
        if end_ms.is_some() {
            p.end_ms = end_ms;
        }
        finished
    }

    /// Ends the current line, if any has text.
    pub fn flush(&mut self) -> Option<Line> {
        let p = self.current.take()?;
        let text = p.text.trim();
        (!text.is_empty()).then(|| Line {
            speaker: p.speaker,
            text: text.to_string(),
            item_id: p.item_id,
        })
    }

    /// True while a line is being accumulated.
    pub fn is_open(&self) -> bool {
        self.current.is_some()
    }

    /// The speaker of the line being accumulated.
    pub fn speaker(&self) -> Option<Speaker> {
        self.current.as_ref().map(|p| p.speaker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_on_turn_change_gap_and_flush() {
        let mut s = Stitcher::default();
        assert_eq!(
            s.push(Speaker::Caller, "Hi, ", Some(0), Some(300), "e1"),
            None
        );
        assert_eq!(
            s.push(
                Speaker::Caller,
                "opening hours?",
                Some(300),
                Some(900),
                "e2"
            ),
            None
        );
        let line = s
            .push(Speaker::Agent, "We open ", Some(1000), Some(1200), "e3")
            .unwrap();
        assert_eq!(
            line,
            Line {
                speaker: Speaker::Caller,
                text: "Hi, opening hours?".into(),
                item_id: "e1".into()
            }
        );
        assert_eq!(
            s.push(Speaker::Agent, "at nine.", Some(1200), Some(1500), "e4"),
            None
        );
        // Same speaker after a long pause: a new line.
        let line = s
            .push(
                Speaker::Agent,
                "Anything else?",
                Some(1500 + LINE_GAP_MS),
                None,
                "e5",
            )
            .unwrap();
        assert_eq!(line.text, "We open at nine.");
        assert_eq!(line.item_id, "e3");
        assert_eq!(s.speaker(), Some(Speaker::Agent));
        let last = s.flush().unwrap();
        assert_eq!(
            (last.text.as_str(), last.item_id.as_str()),
            ("Anything else?", "e5")
        );
        assert!(!s.is_open());
        assert_eq!(s.flush(), None);
    }

    #[test]
    fn whitespace_only_lines_are_dropped_and_missing_times_continue() {
        let mut s = Stitcher::default();
        s.push(Speaker::Caller, "  ", None, None, "e1");
        assert_eq!(s.push(Speaker::Agent, "Hello", None, None, "e2"), None);
        assert_eq!(s.push(Speaker::Agent, " there", None, None, "e3"), None);
        assert_eq!(s.flush().unwrap().text, "Hello there");
    }

    #[test]
    fn a_speaker_who_never_pauses_gets_bounded_lines() {
        let mut s = Stitcher::default();
        let delta = "word ".repeat(100);
        let mut lines = Vec::new();
        for i in 0..200u64 {
            if let Some(line) = s.push(
                Speaker::Caller,
                &delta,
                Some(i * 10),
                Some(i * 10 + 10),
                &format!("e{i}"),
            ) {
                lines.push(line);
            }
        }
        lines.extend(s.flush());
        assert!(lines.len() > 1, "cut into several lines");
        assert!(
            lines
                .iter()
                .all(|l| l.text.len() <= MAX_LINE_BYTES + delta.len())
        );
        let total: usize = lines.iter().map(|l| l.text.len()).sum();
        assert!(total >= 200 * delta.trim().len(), "no text lost");
    }
}
