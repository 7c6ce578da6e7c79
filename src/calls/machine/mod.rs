//! The call as a pure, sans-IO state machine: the behaviour of one monitored call, with no
//! tokio, no sockets, no store and no clock of its own (the design of quinn-proto and str0m:
//! inputs in, outputs out, an explicit `now`). The driver ([`crate::calls::monitor`]) owns the
//! model link, the tool jobs, the store and the HTTP clients; it feeds [`Input`]s with the time
//! and executes the [`Output`]s in order. The simulator (`tests/simulation.rs`,
//! `benches/simulate.rs`) drives the same machine through millions of seeded histories.
//!
//! # Inputs ([`Input`])
//! - the link: `LinkOpened`, `AttachFailed`, `LinkClosed{clean}`, `Reconnected`;
//! - model events: `ModelText` (a raw frame; the message budget applies, then it is parsed) or
//!   `Model` ([`ModelEvent`], our enum of the Realtime and GPT-Live server events);
//! - `TimerFired`: the earliest deadline of [`Machine::next_deadline`] passed;
//! - answers to actions: `ToolFinished`, `DtmfSent`, `ReferAnswered`, `DialAnswered`,
//!   `HangupAnswered`, `SummaryRequestSent`, `HandoverPrepared`, `CrmDone`;
//! - `Operator` commands (transfer, hang-up), `Detach` (shutdown, lease lost);
//! - the end: `Finish`, `AfterCallDone`.
//!
//! # Outputs ([`Output`])
//! Client events to `Send`, `Event` rows, `Transcript` lines, `SaveRecord`, tool jobs
//! (`StartTool`), call actions (`Refer`, `TwilioDial`, `Hangup`, `SendDtmf`, `RequestSummary`,
//! `Reconnect`, `PrepareHandover`), and the end (`Ended`, `AfterCallWork`, `Stopped`). An action
//! that needs an answer is the last output of its batch and its answer is the next input.
//! Timers are not outputs: like quinn-proto's `poll_timeout`, [`Machine::next_deadline`] gives
//! the one deadline to sleep until (it changes only when an input was handled), so a stale
//! timer cannot fire for a state that no longer exists. Counters and histograms are recorded
//! through the `metrics` facade (in memory, no I/O).
//!
//! # States ([`Phase`], plus the sub-states in [`State`])
//! `Attaching` → `Live` → `Ending` → `Finishing` → `Done`, or `Detached` from any non-terminal
//! phase. While `Live`, the call may be: talking (tools running, filler due, a response owed),
//! escalating ([`crate::escalation::Handoff`]: handoff line, REFER, outcome window, fallback,
//! apology), saying goodbye (`hangup_when_quiet`), or closing (waiting for the model's summary).
//! The diagram is in `docs/architecture.md` ("The call state machine").
//!
//! # Adding a feature
//! A new capability (warm transfer, answering-machine detection, supervisor whisper, per-turn
//! latency) is a new [`Input`] variant (what the driver observes), a new [`Output`] variant
//! (what it must do) and, if it waits, a field or a [`Waiting`] variant in [`State`]; the
//! simulator's generator then learns to produce the input.
//!
//! Behaviour (moved unchanged from the monitor): greeting, transcript stitching and budgets,
//! built-in tools (`transfer_to_human`, `end_call`, `send_dtmf`), declared tools and filler
//! lines, escalation triggers (caller phrase, tool, DTMF key, operator) and the hand-off with its
//! outcome window and fallback, maximum duration, GPT-Live end rules (`session.closed`,
//! `transport.*`), summary requests, the end of the record. Sources for the events:
//! <https://developers.openai.com/api/docs/guides/realtime-server-controls>.

mod escalation;
mod input;
mod model;
mod output;
mod state;
mod tools;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::warn;

pub use input::{End, Input, MintedToken, ModelEvent, Reconnected};
pub use output::{Output, Timer};
pub use state::{Attach, Closing, Crm, PendingLine, Phase, RunningTool, State, Waiting};

use crate::calls::budget::{Budget, CallBudget, LimitsConfig};
use crate::calls::record::{CallEvent, CallState};
use crate::openai::sideband::client;
use crate::prompts::Profile;
use crate::telemetry::names;

/// Milliseconds on the driver's clock (Unix milliseconds in production; any origin in the
/// simulator). Monotonic within one driver.
pub type Millis = u64;

/// What a call's machine is configured with: the profile and the settings that shape its
/// behaviour. Not part of the serialised state (rebuilt from the profile and config on resume).
#[derive(Debug, Clone)]
pub struct Setup {
    /// The call's profile (greeting, escalation, tools, maximum duration).
    pub profile: Arc<Profile>,
    /// `[monitor] handoff_line_timeout_ms`.
    pub handoff_line_timeout_ms: u64,
    /// `[monitor] refer_outcome_window_ms`.
    pub refer_outcome_window_ms: u64,
    /// `[tools] filler_after_ms` (0 = no filler).
    pub filler_after_ms: u64,
    /// `[tools] filler_line`.
    pub filler_line: String,
    /// Ask the model for the summary before hanging up (`[after_call] summary = "model"`,
    /// `summary_timeout_ms > 0`, the profile's `after_call.summary`).
    pub model_summary: bool,
    /// `[after_call] summary_timeout_ms`.
    pub summary_timeout_ms: u64,
    /// HubSpot work on escalation (`[hubspot]` enabled, `on_escalation`, token set).
    pub crm: bool,
    /// Log transcript text (off by default).
    pub log_transcripts: bool,
}

/// Internal result of a step: go on, or the call ends.
pub(crate) enum Flow {
    Continue,
    End(CallState, String),
}

/// One call's state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Machine {
    setup: Arc<Setup>,
    state: State,
}

impl Machine {
    /// A machine for `record` (already accepted, or `accepting` for [`Attach::Reconcile`]).
    pub fn new(
        setup: Arc<Setup>,
        record: crate::calls::record::CallRecord,
        limits: &LimitsConfig,
        attach: Attach,
    ) -> Machine {
        let state = State::new(record, CallBudget::new(limits), attach);
        Machine { setup, state }
    }

    /// A machine resumed from a serialised [`State`] (see [`Machine::state`]).
    pub fn resume(setup: Arc<Setup>, state: State) -> Machine {
        Machine { setup, state }
    }

    /// The state (serialise it to resume elsewhere).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The call record.
    pub fn record(&self) -> &crate::calls::record::CallRecord {
        &self.state.record
    }

    /// The call record, for the driver's after-call work (`Output::AfterCallWork`).
    pub fn record_mut(&mut self) -> &mut crate::calls::record::CallRecord {
        &mut self.state.record
    }

    /// The setup.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// True once the machine stopped (ended and written, or detached).
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.phase, Phase::Done | Phase::Detached)
    }

    /// Takes one event row from the budget (the driver's own rows, e.g. after-call work):
    /// true when the row may be written.
    pub fn admit_event_row(&mut self) -> bool {
        self.state.budget.event_row(self.state.ending)
    }

    /// The earliest deadline and its timer, if any: the driver feeds [`Input::TimerFired`] once
    /// its clock reaches it.
    pub fn next_deadline(&self) -> Option<(Timer, Millis)> {
        let s = &self.state;
        if s.phase != Phase::Live || s.waiting.is_some() {
            return None;
        }
        [
            // While waiting for the summary the maximum duration has already been handled.
            s.closing
                .is_none()
                .then_some((Timer::MaxDuration, s.max_deadline)),
            s.line_deadline.map(|d| (Timer::Line, d)),
            s.refer_deadline.map(|d| (Timer::ReferOutcome, d)),
            s.filler_at.map(|d| (Timer::Filler, d)),
            s.closing.as_ref().map(|c| (Timer::Summary, c.deadline)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(_, d)| *d)
    }

    /// Handles one input at `now`, pushing what to do onto `out`.
    pub fn handle(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        let flow = match input {
            Input::Detach => {
                if !self.is_terminal() {
                    self.state.phase = Phase::Detached;
                    self.state.waiting = None;
                }
                return;
            }
            Input::Finish => return self.finish(now, out),
            Input::AfterCallDone => return self.after_call_done(now, out),
            Input::CrmDone(rec) => {
                if !self.is_terminal() {
                    self.record_crm(now, rec, out);
                }
                return;
            }
            Input::LinkOpened => self.link_opened(now, out),
            Input::AttachFailed { error, gone } => self.attach_failed(now, &error, gone, out),
            input if matches!(self.state.phase, Phase::Ending(..)) => {
                // Only GPT-Live's session.closed after our hang-up is still of interest.
                let event = match input {
                    Input::Model(e) => Some(e),
                    Input::ModelText(t) => ModelEvent::parse(&t).ok(),
                    _ => None,
                };
                if let Some(ModelEvent::SessionClosed { reason, usage }) = event {
                    self.session_closed_seen(now, &reason, &usage, out);
                }
                return;
            }
            _ if self.state.phase != Phase::Live => return,
            input => self.live(now, input, out),
        };
        let flow = match (flow, self.state.budget.take_exceeded()) {
            (Flow::Continue, Some(budget)) if self.state.phase == Phase::Live => {
                self.budget_exceeded(now, budget, out)
            }
            (flow, _) => flow,
        };
        if let Flow::End(state, reason) = flow {
            self.state.ending = true;
            self.state.waiting = None;
            self.state.link_open = false;
            self.state.phase = Phase::Ending(state, reason.clone());
            out.push(Output::Ended { state, reason });
        }
    }

    fn live(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) -> Flow {
        match input {
            Input::ModelText(text) => {
                // Past the message budget the event is dropped unread.
                if !self.state.budget.message(now) {
                    return Flow::Continue;
                }
                match ModelEvent::parse(&text) {
                    Ok(e) => self.on_model(now, e, out),
                    Err(e) => {
                        warn!(error = %e, "unparseable sideband event skipped");
                        Flow::Continue
                    }
                }
            }
            Input::Model(e) => {
                if !self.state.budget.message(now) {
                    return Flow::Continue;
                }
                self.on_model(now, e, out)
            }
            Input::LinkClosed { clean } => self.on_closed(now, clean, out),
            Input::Reconnected(r) => self.on_reconnected(now, r, out),
            Input::TimerFired => self.on_timer(now, out),
            Input::ToolFinished {
                fc_id,
                name,
                result,
                elapsed_us,
            } => {
                if !self.state.running.contains_key(&fc_id) {
                    // Not ours (already answered, or from before a resume): nothing to send.
                    return Flow::Continue;
                }
                self.finish_tool(now, &fc_id, &name, result, elapsed_us, out)
            }
            Input::DtmfSent { result, elapsed_us } => match self.state.waiting.take() {
                Some(Waiting::Dtmf { fc_id, name }) => {
                    let result = crate::tools::dtmf_result(result);
                    self.finish_tool(now, &fc_id, &name, result, elapsed_us, out)
                }
                other => self.unexpected(other, "DtmfSent"),
            },
            Input::ReferAnswered(r) => self.refer_answered(now, r, false, out),
            Input::DialAnswered(r) => self.refer_answered(now, r, true, out),
            Input::HangupAnswered(r) => match self.state.waiting.take() {
                Some(Waiting::Hangup(state, reason)) => {
                    match r {
                        Ok(()) => self.event(now, "hangup_sent", json!({ "reason": reason }), out),
                        Err(e) => {
                            warn!(error = %e, "hangup failed");
                            self.event(
                                now,
                                "hangup_failed",
                                json!({ "reason": reason, "error": e }),
                                out,
                            );
                        }
                    }
                    Flow::End(state, reason)
                }
                other => self.unexpected(other, "HangupAnswered"),
            },
            Input::SummaryRequestSent(sent) => self.summary_request_sent(now, sent, out),
            Input::HandoverPrepared(minted) => self.handover_prepared(now, minted, out),
            Input::Operator(cmd) => self.on_command(now, cmd, out),
            // Handled in `handle`.
            Input::LinkOpened
            | Input::AttachFailed { .. }
            | Input::Detach
            | Input::CrmDone(_)
            | Input::Finish
            | Input::AfterCallDone => Flow::Continue,
        }
    }

    /// An answer arrived that the machine did not ask for: a driver bug; ignored.
    fn unexpected(&mut self, waiting: Option<Waiting>, what: &str) -> Flow {
        warn!(
            input = what,
            ?waiting,
            "answer without a matching request ignored"
        );
        self.state.waiting = waiting;
        Flow::Continue
    }

    fn link_opened(&mut self, now: Millis, out: &mut Vec<Output>) -> Flow {
        if self.state.phase != Phase::Attaching {
            return Flow::Continue;
        }
        self.state.phase = Phase::Live;
        self.state.link_open = true;
        let attach = self.state.attach;
        if attach == Attach::Reconcile {
            tracing::info!("stuck accept reconciled: the call is live; monitoring it");
            metrics::counter!(names::ACCEPTS_RECONCILED, "outcome" => "attached").increment(1);
            self.state.record.state = CallState::Active;
            self.state.record.accepted_at.get_or_insert(ts(now));
            out.push(Output::SaveRecord);
            self.event(
                now,
                "accept_reconciled",
                json!({ "outcome": "attached" }),
                out,
            );
        }
        // Greet first: the caller is listening to silence until the greeting's audio starts,
        // and the event row can wait for its commit.
        if matches!(attach, Attach::Fresh | Attach::Reconcile) {
            if let Some(greeting) = self.setup.profile.greeting.as_deref() {
                self.send(client::response_create(Some(greeting)), out);
            }
        }
        self.event(
            now,
            "sideband_attached",
            json!({ "mode": format!("{attach:?}").to_lowercase() }),
            out,
        );
        let started = self
            .state
            .record
            .accepted_at
            .map_or(now, |t| u64::try_from(t.timestamp_millis()).unwrap_or(0));
        let elapsed = now.saturating_sub(started);
        let max =
            u64::try_from(self.setup.profile.max_call_duration.as_millis()).unwrap_or(u64::MAX);
        self.state.max_deadline = now.saturating_add(max.saturating_sub(elapsed));
        Flow::Continue
    }

    fn attach_failed(
        &mut self,
        now: Millis,
        error: &str,
        gone: bool,
        out: &mut Vec<Output>,
    ) -> Flow {
        if self.state.phase != Phase::Attaching {
            return Flow::Continue;
        }
        warn!(%error, "sideband attach failed");
        self.event(
            now,
            "sideband_attach_failed",
            json!({ "error": error }),
            out,
        );
        if self.state.attach == Attach::Reconcile {
            // A stuck accept: 404 = the caller is gone (never answered, or hung up).
            let outcome = if gone { "missed" } else { "unreachable" };
            metrics::counter!(names::ACCEPTS_RECONCILED, "outcome" => outcome).increment(1);
            return if gone {
                Flow::End(CallState::Missed, "accept_unconfirmed".into())
            } else {
                Flow::End(CallState::Ended, "sideband_lost".into())
            };
        }
        let reason = if gone { "call_gone" } else { "sideband_lost" };
        Flow::End(CallState::Ended, reason.into())
    }

    /// A per-call budget was exceeded (the input past it was dropped): record it and hang up at
    /// once, without the summary round trip (docs/security.md, "Per-call budgets").
    fn budget_exceeded(&mut self, now: Millis, budget: Budget, out: &mut Vec<Output>) -> Flow {
        let limit = budget.limit(self.state.budget.limits());
        warn!(
            budget = budget.as_str(),
            limit, "per-call budget exceeded; dropping the input and ending the call"
        );
        self.state.ending = true;
        self.event(
            now,
            "budget_exceeded",
            json!({ "budget": budget.as_str(), "limit": limit }),
            out,
        );
        self.hangup_now(CallState::Ended, budget.end_reason().into(), out)
    }

    /// The end of the record: state, end time, reason; a pending escalation is abandoned.
    fn finish(&mut self, now: Millis, out: &mut Vec<Output>) {
        let Phase::Ending(state, reason) = self.state.phase.clone() else {
            return;
        };
        let r = &mut self.state.record;
        r.state = state;
        r.ended_at = Some(ts(now));
        r.end_reason = Some(reason.clone());
        if let Some(esc) = r.escalation.as_mut().filter(|e| e.outcome == "pending") {
            esc.outcome = "abandoned".into();
            metrics::counter!(
                names::HANDOVERS,
                "action" => self.setup.profile.escalation.action.label(),
                "outcome" => "abandoned"
            )
            .increment(1);
        }
        self.state.running.clear();
        self.state.phase = Phase::Finishing(state, reason);
        out.push(Output::AfterCallWork);
    }

    fn after_call_done(&mut self, now: Millis, out: &mut Vec<Output>) {
        let Phase::Finishing(state, reason) = self.state.phase.clone() else {
            return;
        };
        // Event first: whoever sees the final record also sees the whole event log.
        self.event(
            now,
            "call_ended",
            json!({ "state": state.as_str(), "reason": reason }),
            out,
        );
        out.push(Output::SaveRecord);
        metrics::counter!(names::CALLS_ENDED, "state" => state.as_str(), "reason" => reason.clone())
            .increment(1);
        tracing::info!(state = %state, reason, "call ended");
        self.state.phase = Phase::Done;
        out.push(Output::Stopped);
    }

    /// Pushes a client event unless the link is closed.
    fn send(&mut self, text: String, out: &mut Vec<Output>) {
        if self.state.link_open {
            out.push(Output::Send(text));
        }
    }

    /// Appends an event to the call's log, within the event-row budget (rows written while
    /// the call ends may use the reserve).
    fn event(&mut self, now: Millis, kind: &str, detail: Value, out: &mut Vec<Output>) {
        self.event_at(now, kind, detail, out);
    }

    fn event_at(&mut self, at: Millis, kind: &str, detail: Value, out: &mut Vec<Output>) {
        if !self.state.budget.event_row(self.state.ending) {
            return;
        }
        out.push(Output::Event(CallEvent {
            call_id: self.state.record.call_id.clone(),
            at: ts(at),
            kind: kind.to_string(),
            detail,
        }));
    }
}

/// The driver's clock as a timestamp.
pub fn ts(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default()
}

pub(crate) use crate::calls::after_call::clip;
