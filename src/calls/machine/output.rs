//! The machine's outputs: what the driver must do, in order.

use serde_json::Value;

use crate::calls::record::{CallEvent, CallState, TranscriptLine};
use crate::sip::TransferTarget;

/// One thing the driver must do. Outputs are executed in the order they were pushed; an output
/// marked *answered* is the last of its batch and its answer ([`super::Input`]) is fed back
/// before any other input.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this client event (a JSON text frame) on the model link. Never pushed while the
    /// link is closed.
    Send(String),
    /// Append this row to the call's event log.
    Event(CallEvent),
    /// Append this transcript line.
    Transcript(TranscriptLine),
    /// Write the call record ([`super::Machine::record`]) to the store.
    SaveRecord,
    /// Start the declared tool `name` (the profile's `[[tools]]`) with validated `args`;
    /// answered later by `Input::ToolFinished` (the only output answered asynchronously).
    StartTool {
        /// The function call id.
        fc_id: String,
        /// The tool's name.
        name: String,
        /// The validated arguments.
        args: Value,
    },
    /// *Answered* by `Input::DtmfSent`: send these DTMF keys on the link
    /// ([`crate::calls::link::Link::send_dtmf`]).
    SendDtmf(String),
    /// *Answered* by `Input::ReferAnswered`: SIP REFER through the call's actions.
    Refer(TransferTarget),
    /// *Answered* by `Input::DialAnswered`: redirect the parent Twilio call to `<Dial>` the
    /// target with the handover token as `sendDigits`.
    TwilioDial {
        /// The number to dial.
        target: TransferTarget,
        /// The parent Twilio call (`CallSid`), if known.
        parent: Option<String>,
        /// The handover token (`None` when minting failed).
        token: Option<String>,
    },
    /// *Answered* by `Input::HangupAnswered`: hang the call up.
    Hangup,
    /// *Answered* by `Input::SummaryRequestSent`: send the out-of-band summary request
    /// ([`crate::calls::after_call::summary_request`]).
    RequestSummary,
    /// *Answered* by `Input::Reconnected`: reconnect the dropped link.
    Reconnect,
    /// *Answered* by `Input::HandoverPrepared` (after any `Input::CrmDone`): read the transcript
    /// for the hand-off summary, start the HubSpot work when `crm`, and when `token` wait for it
    /// (bounded) and mint the handover token.
    PrepareHandover {
        /// `trigger` or `trigger: detail`.
        reason: String,
        /// Start the HubSpot contact/ticket work.
        crm: bool,
        /// Mint a handover token (`connect_refer`/`twilio_dial`).
        token: bool,
    },
    /// The call is over (exactly once): stop the tool jobs, wait for the link's end
    /// (`Link::await_end`), then feed `Input::Finish`.
    Ended {
        /// Final state.
        state: CallState,
        /// End reason.
        reason: String,
    },
    /// Do the after-call work on the record (extraction, summary, cost, SMS), then feed
    /// `Input::AfterCallDone`.
    AfterCallWork,
    /// The machine is done: nothing more will be output.
    Stopped,
}

/// The machine's timers (each one deadline in the state, milliseconds on the driver's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `max_call_duration` from the call's acceptance.
    MaxDuration,
    /// The line we asked the agent to say (handoff line, apology, goodbye) took too long.
    Line,
    /// The REFER outcome window.
    ReferOutcome,
    /// The filler line is due while tools run.
    Filler,
    /// The model's summary did not come in time.
    Summary,
}
