//! The machine's state: plain data, serialisable (serde), a few hundred bytes plus the call
//! record and the running tools.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::budget::CallBudget;
use crate::calls::record::{CallRecord, CallState};
use crate::escalation::{Handoff, Trigger};

/// How the driver attached to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Attach {
    /// Right after `/accept`: greet the caller.
    Fresh,
    /// After a controller restart: reattach silently.
    Resume,
    /// An outbound GPT-Live call just created: greet once `transport.answered` arrives.
    Outbound,
    /// A record left in `accepting` past the accept budget (its decision task died): attach to
    /// find out. A live call is greeted and monitored (the record becomes `active`); a call the
    /// sideband answers 404 for is recorded `missed` (`crate::app`, stuck accepts).
    Reconcile,
}

/// Where the call is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for the link (`LinkOpened` / `AttachFailed`).
    Attaching,
    /// Monitoring the call.
    Live,
    /// Ended (`Output::Ended` was pushed); waiting for `Finish`.
    Ending(CallState, String),
    /// After-call work runs; waiting for `AfterCallDone`.
    Finishing(CallState, String),
    /// Terminal: the call ended and its record was written.
    Done,
    /// Terminal: detached on shutdown or lease loss, the call stays live.
    Detached,
}

/// The answer the machine waits for (see [`super::Input`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Waiting {
    /// `DtmfSent` for the `send_dtmf` call `fc_id` of tool `name`.
    Dtmf {
        /// Function call id.
        fc_id: String,
        /// Tool name.
        name: String,
    },
    /// `ReferAnswered` / `DialAnswered` for this target (its URI).
    Refer(String),
    /// `HangupAnswered`; then the call ends with this state and reason.
    Hangup(CallState, String),
    /// `SummaryRequestSent`; then closing with this state and reason.
    Summary(CallState, String),
    /// `Reconnected`; `handoff` = the drop came while a REFER awaited its outcome.
    Reconnect {
        /// A REFER awaited its outcome.
        handoff: bool,
    },
    /// `HandoverPrepared`, then the hand-off starts.
    Handover {
        /// What started the escalation.
        trigger: Trigger,
        /// The `transfer_to_human` function call to answer, if any.
        tool_call: Option<String>,
        /// A token was asked for.
        token: bool,
    },
}

/// A line we asked the agent to say, tracked until its response finishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLine {
    /// The response that was in progress when we asked (not ours).
    pub ignore_id: Option<String>,
    /// Our response, once `response.created` names it.
    pub response_id: Option<String>,
    /// `output_audio_buffer.started` seen for it: wait for `stopped`, not `response.done`.
    pub audio_started: bool,
}

/// A tool the model called that is running as a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningTool {
    /// Tool name.
    pub name: String,
    /// When the model called it (driver clock, ms): the `tool_call` event is written after the
    /// output is sent, so no store write sits in the tool's round trip.
    pub called_at_ms: u64,
    /// The validated arguments.
    pub arguments: Value,
}

/// The controller decided to hang up and waits for the model's summary first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    /// The state the call ends in.
    pub state: CallState,
    /// The end reason.
    pub reason: String,
    /// Give up on the summary at this time (ms).
    pub deadline: u64,
}

/// The escalation's HubSpot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Crm {
    /// Not started.
    #[default]
    None,
    /// Started; its result is not recorded yet.
    Running,
    /// Its result is recorded on the escalation.
    Recorded,
}

/// Everything the machine knows about one call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The call's record (written on `SaveRecord`).
    pub record: CallRecord,
    /// The call's counts against `[limits]`.
    pub budget: CallBudget,
    /// Where the call is in its life.
    pub phase: Phase,
    /// How the driver attached.
    pub attach: Attach,
    /// The answer awaited, if any.
    pub waiting: Option<Waiting>,
    /// The call is ending: event rows may use the reserve, nothing new starts.
    pub ending: bool,
    /// The model link is open (no `Send` while it is not).
    pub link_open: bool,
    /// The hand-off in progress.
    pub handoff: Option<Handoff>,
    /// The line we asked the agent to say.
    pub line: Option<PendingLine>,
    /// Timers (driver clock, ms).
    pub max_deadline: u64,
    /// See [`super::Timer::Line`].
    pub line_deadline: Option<u64>,
    /// See [`super::Timer::ReferOutcome`].
    pub refer_deadline: Option<u64>,
    /// See [`super::Timer::Filler`].
    pub filler_at: Option<u64>,
    /// `end_call` was called during a response: hang up once it finishes.
    pub hangup_when_quiet: bool,
    /// The response in progress (`requested` before `response.created` names it).
    pub response_in_progress: Option<String>,
    /// Running tools by function call id.
    pub running: BTreeMap<String, RunningTool>,
    /// The filler came due while a response was in progress.
    pub filler_pending: bool,
    /// The filler line of the current batch.
    pub filler_line: Option<String>,
    /// A `response.create` is owed once tools finish and no response is in progress.
    pub want_response: bool,
    /// Waiting for the model's summary before hanging up.
    pub closing: Option<Closing>,
    /// The response id of the summary request.
    pub summary_response: Option<String>,
    /// The escalation's HubSpot work.
    pub crm: Crm,
    /// A `twilio_dial` hand-off's first target: the token to send (`None` when minting failed).
    pub pending_dial: Option<Option<String>>,
    /// An outbound call: say the greeting when the callee answers.
    pub greet_on_answer: bool,
}

impl State {
    /// A fresh state for `record` attached as `attach`.
    pub fn new(record: CallRecord, budget: CallBudget, attach: Attach) -> State {
        State {
            record,
            budget,
            phase: Phase::Attaching,
            attach,
            waiting: None,
            ending: false,
            link_open: false,
            handoff: None,
            line: None,
            max_deadline: u64::MAX,
            line_deadline: None,
            refer_deadline: None,
            filler_at: None,
            hangup_when_quiet: false,
            response_in_progress: None,
            running: BTreeMap::new(),
            filler_pending: false,
            filler_line: None,
            want_response: false,
            closing: None,
            summary_response: None,
            crm: Crm::None,
            pending_dial: None,
            greet_on_answer: attach == Attach::Outbound,
        }
    }
}
