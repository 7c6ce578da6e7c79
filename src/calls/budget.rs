//! Per-call budgets: everything a caller or the model can make grow during one call is bounded
//! (`[limits]`, [`LimitsConfig`]), so one hostile call cannot grow the process or the store.
//!
//! | budget ([`Budget::as_str`]) | default | what counts |
//! |---|---|---|
//! | `messages_per_sec` | 500/s sustained, bursts of 2 000 | every event the monitor's [`crate::calls::link::Link`] delivers (sideband, GPT-Live attach, Twilio bridge) |
//! | `dtmf_events` | 200 | DTMF key events (`input_audio_buffer.dtmf_event_received`, Twilio `dtmf`) |
//! | `event_rows` | 2 000 | rows in the call's event log written by the monitor (the last [`EVENT_RESERVE`] are kept for the end of the call) |
//! | `transcript_lines` | 1 000 | transcript lines stored (caller and agent) |
//! | `tool_calls` | 100 | function calls by the model, built-in ones included |
//! | `pending_tool_jobs` | 8 | declared tools running at once |
//!
//! Each transcript line is also cut at `max_transcript_line_bytes` (default 4 096 bytes, at a
//! character boundary, `…` appended): the text is kept, the tail is dropped.
//!
//! Exceeding a budget degrades that call only: the input past the budget is dropped (not
//! processed, not stored) and counted in `voxmachina_budget_dropped_total{budget}`; the first
//! time, `voxmachina_budget_exceeded_total{budget}` is counted, a `budget_exceeded` event
//! (`{budget, limit}`) is written and the monitor hangs the call up at once (no summary round
//! trip) with end reason `budget_exceeded:<budget>` ([`Budget::end_reason`]). Input arriving
//! while the call ends is dropped and counted the same way.

use serde::{Deserialize, Serialize};

use crate::telemetry::names;

/// Event rows kept back from `max_event_rows` for the end of the call (the `budget_exceeded`,
/// hang-up, after-call and `call_ended` events, and the webhook handler's two rows).
pub const EVENT_RESERVE: u32 = 32;

/// `[limits]`: per-call budgets. Every key is documented in `config/voxmachina.toml` and
/// `docs/security.md` ("Per-call budgets").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained rate of model-link events per call, events per second.
    pub max_messages_per_sec: u32,
    /// Burst of model-link events above the sustained rate (token bucket size), events.
    pub max_message_burst: u32,
    /// DTMF key events per call.
    pub max_dtmf_events: u32,
    /// Event rows per call (the last [`EVENT_RESERVE`] are kept for the end of the call).
    pub max_event_rows: u32,
    /// Transcript lines per call (both speakers).
    pub max_transcript_lines: u32,
    /// Longest stored transcript line, bytes; longer lines are cut.
    pub max_transcript_line_bytes: usize,
    /// Function calls by the model per call.
    pub max_tool_calls: u32,
    /// Declared tools running at once per call.
    pub max_pending_tool_jobs: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_messages_per_sec: 500,
            max_message_burst: 2_000,
            max_dtmf_events: 200,
            max_event_rows: 2_000,
            max_transcript_lines: 1_000,
            max_transcript_line_bytes: 4_096,
            max_tool_calls: 100,
            max_pending_tool_jobs: 8,
        }
    }
}

impl LimitsConfig {
    /// Checks the values at start-up.
    ///
    /// # Errors
    /// A message naming the `limits.*` key and the range it must be in: every budget at least
    /// 1, `max_event_rows` more than [`EVENT_RESERVE`] + 32, `max_transcript_line_bytes` at least
    /// 64, and nothing above the hard caps (1 000 000 per call, 100 000 messages/s, 1 MiB per
    /// line, 1 000 pending tools).
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u64, u64, u64); 8] = [
            (
                "max_messages_per_sec",
                self.max_messages_per_sec.into(),
                1,
                100_000,
            ),
            (
                "max_message_burst",
                self.max_message_burst.into(),
                1,
                1_000_000,
            ),
            ("max_dtmf_events", self.max_dtmf_events.into(), 1, 1_000_000),
            (
                "max_event_rows",
                self.max_event_rows.into(),
                u64::from(EVENT_RESERVE) + 32,
                1_000_000,
            ),
            (
                "max_transcript_lines",
                self.max_transcript_lines.into(),
                1,
                1_000_000,
            ),
            (
                "max_transcript_line_bytes",
                self.max_transcript_line_bytes as u64,
                64,
                1 << 20,
            ),
            ("max_tool_calls", self.max_tool_calls.into(), 1, 1_000_000),
            (
                "max_pending_tool_jobs",
                self.max_pending_tool_jobs.into(),
                1,
                1_000,
            ),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "limits.{key} = {value}: must be between {min} and {max}"
                ));
            }
        }
        Ok(())
    }
}

/// One per-call budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Budget {
    /// `max_messages_per_sec` / `max_message_burst`.
    MessagesPerSec,
    /// `max_dtmf_events`.
    DtmfEvents,
    /// `max_event_rows`.
    EventRows,
    /// `max_transcript_lines`.
    TranscriptLines,
    /// `max_tool_calls`.
    ToolCalls,
    /// `max_pending_tool_jobs`.
    PendingToolJobs,
}

impl Budget {
    /// The `budget` label of the metrics and of the `budget_exceeded` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessagesPerSec => "messages_per_sec",
            Self::DtmfEvents => "dtmf_events",
            Self::EventRows => "event_rows",
            Self::TranscriptLines => "transcript_lines",
            Self::ToolCalls => "tool_calls",
            Self::PendingToolJobs => "pending_tool_jobs",
        }
    }

    /// The call's end reason when this budget ended it: `budget_exceeded:<budget>`.
    pub fn end_reason(self) -> &'static str {
        match self {
            Self::MessagesPerSec => "budget_exceeded:messages_per_sec",
            Self::DtmfEvents => "budget_exceeded:dtmf_events",
            Self::EventRows => "budget_exceeded:event_rows",
            Self::TranscriptLines => "budget_exceeded:transcript_lines",
            Self::ToolCalls => "budget_exceeded:tool_calls",
            Self::PendingToolJobs => "budget_exceeded:pending_tool_jobs",
        }
    }

    /// The configured limit of this budget in `limits`.
    pub fn limit(self, limits: &LimitsConfig) -> u64 {
        match self {
            Self::MessagesPerSec => limits.max_messages_per_sec.into(),
            Self::DtmfEvents => limits.max_dtmf_events.into(),
            Self::EventRows => limits.max_event_rows.into(),
            Self::TranscriptLines => limits.max_transcript_lines.into(),
            Self::ToolCalls => limits.max_tool_calls.into(),
            Self::PendingToolJobs => limits.max_pending_tool_jobs.into(),
        }
    }
}

/// The running counts of one call against its [`LimitsConfig`]. Owned by the call's monitor;
/// a few dozen bytes, whatever the caller does. Serialisable with the call's state machine
/// ([`crate::calls::machine`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallBudget {
    limits: LimitsConfig,
    /// Token bucket of the message rate: tokens left and when they were last refilled (the
    /// machine's clock, milliseconds; 0 = never).
    tokens: f64,
    refilled: u64,
    dtmf: u32,
    events: u32,
    lines: u32,
    tools: u32,
    /// The first budget exceeded, until the monitor takes it to end the call.
    exceeded: Option<Budget>,
    /// True once a budget was exceeded: everything after it is dropped input.
    tripped: bool,
    /// Inputs dropped so far.
    dropped: u64,
}

impl CallBudget {
    /// A fresh budget (full message bucket).
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            tokens: f64::from(limits.max_message_burst),
            refilled: 0,
            dtmf: 0,
            events: 0,
            lines: 0,
            tools: 0,
            exceeded: None,
            tripped: false,
            dropped: 0,
            limits: limits.clone(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// True once any budget was exceeded (the call is ending).
    pub fn tripped(&self) -> bool {
        self.tripped
    }

    /// Inputs dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes the budget that was just exceeded, once: the monitor then ends the call.
    pub fn take_exceeded(&mut self) -> Option<Budget> {
        self.exceeded.take()
    }

    /// Counts one dropped input of `budget`; the first exceeded budget is remembered.
    fn exceed(&mut self, budget: Budget) -> bool {
        self.dropped += 1;
        metrics::counter!(names::BUDGET_DROPPED, "budget" => budget.as_str()).increment(1);
        if !self.tripped {
            self.tripped = true;
            self.exceeded = Some(budget);
            metrics::counter!(names::BUDGET_EXCEEDED, "budget" => budget.as_str()).increment(1);
        }
        false
    }

    /// One event arrived on the model link at `now_ms` (the machine's clock, milliseconds):
    /// true when it may be processed. Once the call is ending every event is dropped (and
    /// counted as `messages_per_sec`).
    pub fn message(&mut self, now_ms: u64) -> bool {
        let rate = f64::from(self.limits.max_messages_per_sec);
        let burst = f64::from(self.limits.max_message_burst);
        let elapsed_ms = now_ms.saturating_sub(self.refilled);
        self.refilled = now_ms;
        self.tokens = (self.tokens + elapsed_ms as f64 / 1000.0 * rate).min(burst);
        if self.tripped || self.tokens < 1.0 {
            return self.exceed(Budget::MessagesPerSec);
        }
        self.tokens -= 1.0;
        true
    }

    /// One DTMF event: true when it may be processed and recorded.
    pub fn dtmf(&mut self) -> bool {
        self.count(Budget::DtmfEvents)
    }

    /// One transcript line: true when it may be stored.
    pub fn transcript_line(&mut self) -> bool {
        self.count(Budget::TranscriptLines)
    }

    /// One function call by the model: true when it may run.
    pub fn tool_call(&mut self) -> bool {
        self.count(Budget::ToolCalls)
    }

    /// A declared tool is about to start with `running` tools already running: true when it
    /// may.
    pub fn tool_job(&mut self, running: usize) -> bool {
        if self.tripped || running >= self.limits.max_pending_tool_jobs as usize {
            return self.exceed(Budget::PendingToolJobs);
        }
        true
    }

    /// One event row. `ending` rows (written while the call ends) may use the last
    /// [`EVENT_RESERVE`] rows; others stop before them. True when the row may be written.
    pub fn event_row(&mut self, ending: bool) -> bool {
        let cap = if ending {
            self.limits.max_event_rows
        } else {
            self.limits.max_event_rows.saturating_sub(EVENT_RESERVE)
        };
        if self.events >= cap {
            self.exceed(Budget::EventRows);
            return false;
        }
        self.events += 1;
        true
    }

    fn count(&mut self, budget: Budget) -> bool {
        if self.tripped {
            // The call is ending: dropped, also within this budget.
            self.dropped += 1;
            metrics::counter!(names::BUDGET_DROPPED, "budget" => budget.as_str()).increment(1);
            return false;
        }
        let (used, limit) = match budget {
            Budget::DtmfEvents => (&mut self.dtmf, self.limits.max_dtmf_events),
            Budget::TranscriptLines => (&mut self.lines, self.limits.max_transcript_lines),
            _ => (&mut self.tools, self.limits.max_tool_calls),
        };
        if *used >= limit {
            return self.exceed(budget);
        }
        *used += 1;
        true
    }

    /// `text` cut to at most `max_transcript_line_bytes` bytes at a character boundary, with
    /// `…` appended when cut.
    pub fn clip_line<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let max = self.limits.max_transcript_line_bytes;
        if text.len() <= max {
            return text.into();
        }
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end]).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LimitsConfig {
        LimitsConfig {
            max_messages_per_sec: 10,
            max_message_burst: 20,
            max_dtmf_events: 3,
            max_event_rows: EVENT_RESERVE + 40,
            max_transcript_lines: 2,
            max_transcript_line_bytes: 64,
            max_tool_calls: 2,
            max_pending_tool_jobs: 1,
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        LimitsConfig::default().validate().unwrap();
        small().validate().unwrap();
        let bad = LimitsConfig {
            max_dtmf_events: 0,
            ..LimitsConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("limits.max_dtmf_events")
        );
        let bad = LimitsConfig {
            max_event_rows: EVENT_RESERVE,
            ..LimitsConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("limits.max_event_rows")
        );
        let bad = LimitsConfig {
            max_transcript_line_bytes: 10,
            ..LimitsConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("max_transcript_line_bytes")
        );
    }

    #[test]
    fn counted_budgets_drop_past_the_limit_and_remember_the_first() {
        let mut b = CallBudget::new(&small());
        assert!(b.dtmf() && b.dtmf() && b.dtmf());
        assert!(!b.dtmf(), "the fourth key is dropped");
        assert_eq!(b.take_exceeded(), Some(Budget::DtmfEvents));
        assert_eq!(b.take_exceeded(), None, "taken once");
        assert!(b.tripped());
        // Once tripped, everything is dropped, also within other budgets.
        assert!(!b.transcript_line());
        assert!(!b.tool_call());
        assert_eq!(b.dropped(), 3);
    }

    #[test]
    fn message_bucket_allows_bursts_then_the_sustained_rate() {
        let mut b = CallBudget::new(&small());
        let t0: u64 = 1_000_000;
        for _ in 0..20 {
            assert!(b.message(t0));
        }
        assert!(!b.message(t0), "burst used up");
        assert_eq!(b.take_exceeded(), Some(Budget::MessagesPerSec));
        // A fresh budget refills at the sustained rate.
        let mut b = CallBudget::new(&small());
        for _ in 0..20 {
            assert!(b.message(t0));
        }
        assert!(b.message(t0 + 100), "one token back");
        assert!(!b.message(t0 + 100));
    }

    #[test]
    fn event_rows_keep_a_reserve_for_the_end() {
        let mut b = CallBudget::new(&small());
        for _ in 0..40 {
            assert!(b.event_row(false));
        }
        assert!(!b.event_row(false));
        assert_eq!(b.take_exceeded(), Some(Budget::EventRows));
        for _ in 0..EVENT_RESERVE {
            assert!(b.event_row(true));
        }
        assert!(!b.event_row(true), "the reserve is bounded too");
    }

    #[test]
    fn pending_jobs_and_line_clipping() {
        let mut b = CallBudget::new(&small());
        assert!(b.tool_job(0));
        assert!(!b.tool_job(1));
        assert_eq!(b.take_exceeded(), Some(Budget::PendingToolJobs));
        let long = "é".repeat(100);
        let clipped = b.clip_line(&long);
        assert!(clipped.len() <= 64 && clipped.ends_with('…'), "{clipped}");
        assert_eq!(b.clip_line("short"), "short");
    }

    /// `[limits]` comes from the file and `VOXMACHINA_LIMITS__*`; a bad value stops start-up
    /// with the key's name, and an unknown key is refused.
    #[test]
    fn limits_section_loads_and_is_validated_at_start() {
        use crate::config::Config;
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let cfg = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        let cfg = Config::load_with_env(None, env(&[("VOXMACHINA_LIMITS__MAX_DTMF_EVENTS", "7")]))
            .unwrap();
        assert_eq!(cfg.limits.max_dtmf_events, 7);
        let err = Config::load_with_env(None, env(&[("VOXMACHINA_LIMITS__MAX_TOOL_CALLS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_tool_calls"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_dtmf_event = 5\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_dtmf_event"), "{err}");
    }
}
