//! What Twilio has played of the agent's audio, from the `mark` messages we send after each
//! chunk of frames and Twilio echoes back (Twilio's Media Streams WebSocket messages).
//!
//! Twilio buffers outbound media and plays it in order; a mark comes back when the audio queued
//! before it has finished playing, or at once after a `clear` (so echoes after a `clear` prove
//! nothing: they are ignored here). The bridge sends every chunk as soon as the model produces
//! it, so at any moment the audio of the oldest unechoed mark is playing.
//!
//! **Played position** of the playing item: the position of the last echoed mark plus the time
//! since that echo (the playing item started at the echo of the previous item's last mark, or at
//! its first send when nothing was queued), capped at the position of the next unechoed mark. The
//! error is therefore at most one chunk and never past audio not yet confirmed playing.

use std::collections::VecDeque;
use std::time::Instant;

/// A mark we sent and Twilio has not echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingMark {
    name: String,
    response_id: String,
    item_id: String,
    /// Audio of `item_id` sent up to this mark, milliseconds.
    end_ms: u32,
    /// The mark after the last frame of `response_id`.
    last_of_response: bool,
}

/// The item Twilio is playing and from when the estimate runs.
#[derive(Debug, Clone)]
struct Cursor {
    item_id: String,
    base_ms: u32,
    since: Instant,
}

/// What a barge-in cut off: see [`Playback::interrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// `(item_id, audio_end_ms)` for `conversation.item.truncate`: the playing item at its
    /// played position, then any item queued behind it at 0, in playback order.
    pub truncates: Vec<(String, u32)>,
    /// Responses whose audio had started and is now cut off (for `output_audio_buffer.stopped`).
    pub stopped: Vec<String>,
}

/// Result of [`Playback::on_mark_echo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// Not one of our pending marks (sent before a `clear`, or unknown): ignored.
    Stale,
    /// Playback reached the mark.
    Played {
        /// The item of the mark and its played position, milliseconds.
        item_id: String,
        /// Position reached.
        at_ms: u32,
        /// `Some(response_id)` when this was the last mark of the response: its audio has
        /// finished playing.
        finished_response: Option<String>,
    },
}

/// The per-call mark bookkeeping. Not thread-safe on its own; the bridge keeps it behind a
/// mutex with the outbound audio state.
#[derive(Debug, Default)]
pub struct Playback {
    next_mark: u64,
    pending: VecDeque<PendingMark>,
    cursor: Option<Cursor>,
    /// `(item_id, response_id, ms sent)` of the item being sent.
    sending: Option<(String, String, u32)>,
    /// Responses whose first frame went out and whose playback has not finished or been cut.
    started: Vec<String>,
}

impl Playback {
    /// Nothing sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `ms` milliseconds of `item_id` (of `response_id`) were just sent to Twilio
    /// and returns the name of the mark to send after them (`"m{n}"`), plus `true` when this
    /// was the response's first audio (time for `output_audio_buffer.started`).
    pub fn on_audio_sent(
        &mut self,
        response_id: &str,
        item_id: &str,
        ms: u32,
        now: Instant,
    ) -> (String, bool) {
        let sent_before = match &self.sending {
            Some((item, _, sent)) if item == item_id => *sent,
            _ => 0,
        };
        if self.pending.is_empty() {
            // Nothing queued at Twilio: this chunk starts playing now.
            self.cursor = Some(Cursor {
                item_id: item_id.to_string(),
                base_ms: sent_before,
                since: now,
            });
        }
        let end_ms = sent_before.saturating_add(ms);
        self.sending = Some((item_id.to_string(), response_id.to_string(), end_ms));
        let first = !self.started.iter().any(|r| r == response_id);
        if first {
            self.started.push(response_id.to_string());
        }
        let name = self.mark_name();
        self.pending.push_back(PendingMark {
            name: name.clone(),
            response_id: response_id.to_string(),
            item_id: item_id.to_string(),
            end_ms,
            last_of_response: false,
        });
        (name, first)
    }

    /// The response's audio is complete (`response.output_audio.done` or `response.done`; a
    /// second call for the same response is a no-op): see [`ResponseEnd`].
    pub fn on_response_audio_done(&mut self, response_id: &str) -> ResponseEnd {
        let end_queued = self
            .pending
            .iter()
            .any(|m| m.last_of_response && m.response_id == response_id);
        if end_queued || !self.started.iter().any(|r| r == response_id) {
            return ResponseEnd::NotPlaying;
        }
        let queued = self.pending.iter().any(|m| m.response_id == response_id);
        if !queued {
            self.started.retain(|r| r != response_id);
            return ResponseEnd::AlreadyPlayed;
        }
        let (item_id, end_ms) = self
            .pending
            .iter()
            .rev()
            .find(|m| m.response_id == response_id)
            .map(|m| (m.item_id.clone(), m.end_ms))
            .expect("queued");
        let name = self.mark_name();
        self.pending.push_back(PendingMark {
            name: name.clone(),
            response_id: response_id.to_string(),
            item_id,
            end_ms,
            last_of_response: true,
        });
        ResponseEnd::Mark(name)
    }

    /// Twilio echoed mark `name` at `now`.
    pub fn on_mark_echo(&mut self, name: &str, now: Instant) -> Echo {
        let Some(pos) = self.pending.iter().position(|m| m.name == name) else {
            return Echo::Stale;
        };
        // Marks are echoed in order; any earlier ones were played too.
        let mut finished = None;
        let mut mark = None;
        for _ in 0..=pos {
            let m = self.pending.pop_front().expect("position is in range");
            if m.last_of_response {
                self.started.retain(|r| *r != m.response_id);
                finished = Some(m.response_id.clone());
            }
            mark = Some(m);
        }
        let mark = mark.expect("at least one mark popped");
        self.cursor = Some(match self.pending.front() {
            Some(next) if next.item_id != mark.item_id => Cursor {
                item_id: next.item_id.clone(),
                base_ms: 0,
                since: now,
            },
            _ => Cursor {
                item_id: mark.item_id.clone(),
                base_ms: mark.end_ms,
                since: now,
            },
        });
        Echo::Played {
            item_id: mark.item_id,
            at_ms: mark.end_ms,
            finished_response: finished,
        }
    }

    /// True while agent audio is queued at Twilio (some mark not yet echoed).
    pub fn is_playing(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The playing item and its estimated played position at `now` (see the module docs), or
    /// `None` when nothing is queued.
    pub fn played(&self, now: Instant) -> Option<(String, u32)> {
        let front = self.pending.front()?;
        let estimate = match &self.cursor {
            Some(c) if c.item_id == front.item_id => {
                let elapsed = now.saturating_duration_since(c.since).as_millis();
                let elapsed = u32::try_from(elapsed).unwrap_or(u32::MAX);
                c.base_ms.saturating_add(elapsed).min(front.end_ms)
            }
            _ => 0,
        };
        Some((front.item_id.clone(), estimate))
    }

    /// Barge-in at `now`: everything queued at Twilio is dropped (the caller sends `clear`).
    /// Returns `None` when nothing was queued (no `clear` needed).
    pub fn interrupt(&mut self, now: Instant) -> Option<Interrupted> {
        let (playing, at_ms) = self.played(now)?;
        let mut truncates = vec![(playing.clone(), at_ms)];
        for m in &self.pending {
            if !truncates.iter().any(|(i, _)| *i == m.item_id) {
                truncates.push((m.item_id.clone(), 0));
            }
        }
        let stopped = std::mem::take(&mut self.started);
        self.pending.clear();
        self.cursor = None;
        self.sending = None;
        Some(Interrupted { truncates, stopped })
    }

    fn mark_name(&mut self) -> String {
        self.next_mark += 1;
        format!("m{}", self.next_mark)
    }
}

/// Result of [`Playback::on_response_audio_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEnd {
    /// Send this final mark; its echo ends the response's playback.
    Mark(String),
    /// All of the response's audio has played already: its playback is over now.
    AlreadyPlayed,
    /// The response sent no audio (or it was cut off).
    NotPlaying,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn played_position_follows_echoes_and_is_capped_by_the_next_mark() {
        let t0 = Instant::now();
        let mut p = Playback::new();
        let (m1, first) = p.on_audio_sent("r1", "i1", 100, t0);
        assert!(first);
        let (m2, first) = p.on_audio_sent("r1", "i1", 100, t0 + ms(1));
        assert!(!first);
        assert_eq!(p.played(t0 + ms(40)), Some(("i1".into(), 40)));
        assert_eq!(
            p.played(t0 + ms(500)).unwrap().1,
            100,
            "capped at the unechoed mark"
        );
        assert!(matches!(
            p.on_mark_echo(&m1, t0 + ms(105)),
            Echo::Played { at_ms: 100, .. }
        ));
        assert_eq!(p.played(t0 + ms(155)).unwrap().1, 150);
        assert_eq!(
            p.on_response_audio_done("r1"),
            ResponseEnd::Mark("m3".into())
        );
        assert_eq!(p.on_response_audio_done("r1"), ResponseEnd::NotPlaying);
        p.on_mark_echo(&m2, t0 + ms(205));
        assert!(p.is_playing(), "the end mark is pending");
        match p.on_mark_echo("m3", t0 + ms(206)) {
            Echo::Played {
                finished_response, ..
            } => assert_eq!(finished_response.as_deref(), Some("r1")),
            e => panic!("{e:?}"),
        }
        assert!(!p.is_playing());
        assert_eq!(p.on_mark_echo("m3", t0 + ms(300)), Echo::Stale);
    }

    #[test]
    fn interrupt_truncates_the_playing_item_and_zeroes_queued_ones() {
        let t0 = Instant::now();
        let mut p = Playback::new();
        let (m1, _) = p.on_audio_sent("r1", "i1", 200, t0);
        p.on_audio_sent("r1", "i1", 200, t0);
        p.on_audio_sent("r2", "i2", 200, t0);
        p.on_mark_echo(&m1, t0 + ms(200));
        let cut = p.interrupt(t0 + ms(260)).unwrap();
        assert_eq!(cut.truncates, vec![("i1".into(), 260), ("i2".into(), 0)]);
        assert_eq!(cut.stopped, vec!["r1".to_string(), "r2".to_string()]);
        assert!(!p.is_playing());
        assert!(
            p.interrupt(t0 + ms(300)).is_none(),
            "nothing queued any more"
        );
        assert_eq!(p.on_mark_echo("m2", t0 + ms(301)), Echo::Stale);
        assert_eq!(p.on_response_audio_done("r1"), ResponseEnd::NotPlaying);
    }

    #[test]
    fn second_item_starts_when_the_first_ends() {
        let t0 = Instant::now();
        let mut p = Playback::new();
        let (m1, _) = p.on_audio_sent("r1", "i1", 100, t0);
        let ResponseEnd::Mark(end1) = p.on_response_audio_done("r1") else {
            panic!()
        };
        p.on_audio_sent("r2", "i2", 300, t0 + ms(10));
        p.on_mark_echo(&m1, t0 + ms(100));
        p.on_mark_echo(&end1, t0 + ms(101));
        assert_eq!(p.played(t0 + ms(151)), Some(("i2".into(), 50)));
    }

    #[test]
    fn response_already_played_out() {
        let t0 = Instant::now();
        let mut p = Playback::new();
        let (m1, _) = p.on_audio_sent("r1", "i1", 100, t0);
        p.on_mark_echo(&m1, t0 + ms(100));
        assert_eq!(p.on_response_audio_done("r1"), ResponseEnd::AlreadyPlayed);
        assert_eq!(p.on_response_audio_done("r1"), ResponseEnd::NotPlaying);
        // Later audio of the same item continues its position.
        let (_, first) = p.on_audio_sent("r1", "i1", 100, t0 + ms(150));
        assert!(first, "a new start after playback finished");
        assert_eq!(p.played(t0 + ms(170)), Some(("i1".into(), 120)));
    }
}
