//! The machine's inputs: everything that can happen to a call, as plain data.
//!
//! Model server events are parsed into [`ModelEvent`] (our own enum, built from the Realtime and
//! GPT-Live server events of [`crate::openai::sideband::ServerEvent`]; source:
//! <https://developers.openai.com/api/docs/guides/realtime-server-controls>, openai-python
//! `types/realtime/*` and `types/live/server_event.py`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::calls::link::DtmfError;
use crate::calls::record::CallState;
use crate::calls::record::CrmRecord;
use crate::calls::registry::Command;
use crate::openai::sideband::{ResponseUsage, ServerEvent};
use crate::tools::ToolResult;

/// One server event from the model link, reduced to what the call acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelEvent {
    /// `conversation.item.input_audio_transcription.completed`: a caller line.
    CallerTranscript {
        /// Conversation item id (may be empty).
        item_id: String,
        /// The caller's words.
        text: String,
    },
    /// `response.output_audio_transcript.done`: an agent line.
    AgentTranscript {
        /// Conversation item id (may be empty).
        item_id: String,
        /// The agent's words.
        text: String,
    },
    /// `conversation.item.input_audio_transcription.failed`.
    TranscriptionFailed {
        /// Conversation item id.
        item_id: String,
        /// The error code, if any.
        code: Option<String>,
    },
    /// `response.function_call_arguments.done`: the model calls a tool.
    ToolCall {
        /// The function call id (`call_...`) to answer with `function_call_output`.
        call_id: String,
        /// Tool name, as the model sent it.
        name: String,
        /// Arguments as a JSON string, as the model sent them.
        arguments: String,
    },
    /// `response.created`.
    ResponseCreated {
        /// `resp_...`.
        id: String,
        /// `response.metadata.voxmachina` marks the summary request.
        summary: bool,
    },
    /// `response.done`.
    ResponseDone {
        /// `resp_...`.
        id: String,
        /// `response.metadata.voxmachina` marks the summary request.
        summary: bool,
        /// `response.usage` (tokens).
        usage: Option<ResponseUsage>,
        /// The raw `response` object (usage details, status, output text of the summary).
        response: Value,
    },
    /// `output_audio_buffer.started` (SIP/WebRTC only).
    AudioStarted {
        /// The response whose audio is playing.
        response_id: String,
    },
    /// `output_audio_buffer.stopped` (SIP/WebRTC only).
    AudioStopped {
        /// The response whose audio finished.
        response_id: String,
    },
    /// `input_audio_buffer.dtmf_event_received` (or Twilio `dtmf`): a key press.
    Dtmf {
        /// The key as sent (clipped to 8 characters by the machine).
        key: String,
    },
    /// `error`.
    Error {
        /// `error.type`.
        kind: Option<String>,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: Option<String>,
    },
    /// `session.created`.
    SessionCreated,
    /// GPT-Live `session.closed`: the authoritative end of a Live call, with its usage.
    SessionClosed {
        /// `close_requested`, `expired`, `content`, `remote_hangup`, `connection_lost`, ...
        reason: String,
        /// The usage object as sent.
        usage: Value,
    },
    /// GPT-Live outbound `transport.ringing`.
    Ringing,
    /// GPT-Live outbound `transport.answered`.
    Answered,
    /// GPT-Live outbound `transport.failed`.
    TransportFailed {
        /// `error.type`.
        kind: Option<String>,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: Option<String>,
    },
    /// Any other event type (ignored).
    Other,
}

impl ModelEvent {
    /// Parses one text frame of the model link.
    ///
    /// # Errors
    /// When the frame is not a JSON object with a string `type`, or a typed field is malformed.
    pub fn parse(text: &str) -> Result<ModelEvent, serde_json::Error> {
        Ok(match ServerEvent::parse(text)? {
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript,
            } => Self::CallerTranscript {
                item_id,
                text: transcript,
            },
            ServerEvent::OutputTranscriptDone {
                item_id,
                transcript,
                ..
            } => Self::AgentTranscript {
                item_id,
                text: transcript,
            },
            ServerEvent::InputTranscriptionFailed { item_id, error } => Self::TranscriptionFailed {
                item_id,
                code: error.code,
            },
            ServerEvent::FunctionCallArgumentsDone {
                call_id,
                name,
                arguments,
                ..
            } => Self::ToolCall {
                call_id,
                name,
                arguments,
            },
            ServerEvent::ResponseCreated { response } => {
                let raw: Value = serde_json::from_str(text).unwrap_or_default();
                Self::ResponseCreated {
                    id: response.id,
                    summary: is_summary(&raw),
                }
            }
            ServerEvent::ResponseDone { response } => {
                let mut raw: Value = serde_json::from_str(text).unwrap_or_default();
                Self::ResponseDone {
                    id: response.id,
                    summary: is_summary(&raw),
                    usage: response.usage,
                    response: raw.get_mut("response").map(Value::take).unwrap_or_default(),
                }
            }
            ServerEvent::OutputAudioStarted { response_id } => Self::AudioStarted { response_id },
            ServerEvent::OutputAudioStopped { response_id } => Self::AudioStopped { response_id },
            ServerEvent::DtmfReceived { event, .. } => Self::Dtmf { key: event },
            ServerEvent::Error { error } => Self::Error {
                kind: error.kind,
                code: error.code,
                message: error.message,
            },
            ServerEvent::SessionCreated { session } => {
                tracing::debug!(model = ?session.get("model"), "session.created");
                Self::SessionCreated
            }
            ServerEvent::SessionClosed { reason, usage } => Self::SessionClosed { reason, usage },
            ServerEvent::TransportRinging => Self::Ringing,
            ServerEvent::TransportAnswered => Self::Answered,
            ServerEvent::TransportFailed { error } => Self::TransportFailed {
                kind: error.kind,
                code: error.code,
                message: error.message,
            },
            ServerEvent::Other => Self::Other,
        })
    }
}

/// True when a `response.created`/`response.done` event belongs to the summary request.
fn is_summary(raw: &Value) -> bool {
    raw.pointer("/response/metadata/voxmachina")
        .and_then(Value::as_str)
        == Some(crate::calls::after_call::SUMMARY_METADATA)
}

/// How a reconnect attempt of the model link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reconnected {
    /// The link is up again.
    Ok,
    /// The upgrade was answered 404: the call is over.
    CallGone,
    /// Gave up after the configured attempts.
    GaveUp,
}

/// A HubSpot token minted for a `connect_refer`/`twilio_dial` hand-off (see
/// [`crate::escalation::connect`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedToken {
    /// The handover code.
    pub token: String,
    /// When it expires (Unix milliseconds).
    pub expires_at_ms: u64,
    /// The HubSpot contact id put in the token's payload, if any.
    pub hubspot_contact_id: Option<String>,
    /// The HubSpot ticket id put in the token's payload, if any.
    pub hubspot_ticket_id: Option<String>,
}

/// Everything that can happen to a call. The driver feeds one at a time with the current time
/// ([`super::Machine::handle`]). An input answering an action the machine asked for
/// ([`super::Output`] `Refer`, `TwilioDial`, `Hangup`, `RequestSummary`, `Reconnect`, `SendDtmf`,
/// `PrepareHandover`) must be fed before any other input.
#[derive(Debug, Clone)]
pub enum Input {
    /// The model link is up (first attach). Greets on a fresh call.
    LinkOpened,
    /// The model link could not be opened; `gone` = the call is known to be over (404).
    AttachFailed {
        /// The error text (for the event log).
        error: String,
        /// The upgrade was answered 404.
        gone: bool,
    },
    /// One text frame of the model link, unparsed (the message budget applies before parsing).
    ModelText(String),
    /// One parsed model event (the message budget applies).
    Model(ModelEvent),
    /// The link ended; `clean` = a close frame was received.
    LinkClosed {
        /// A close frame was received.
        clean: bool,
    },
    /// Answer to `Reconnect`.
    Reconnected(Reconnected),
    /// The deadline of [`super::Machine::next_deadline`] passed.
    TimerFired,
    /// A declared tool's job finished (or its task failed).
    ToolFinished {
        /// The function call id.
        fc_id: String,
        /// The tool name.
        name: String,
        /// What it returned.
        result: ToolResult,
        /// How long it ran, microseconds.
        elapsed_us: u64,
    },
    /// Answer to `SendDtmf`.
    DtmfSent {
        /// Keys sent, or why not.
        result: Result<usize, DtmfError>,
        /// How long the send took, microseconds.
        elapsed_us: u64,
    },
    /// Answer to `Refer`: `Ok` for a 200.
    ReferAnswered(Result<(), String>),
    /// Answer to `TwilioDial`: `Ok` when Twilio answered 200.
    DialAnswered(Result<(), String>),
    /// Answer to `Hangup`.
    HangupAnswered(Result<(), String>),
    /// Answer to `RequestSummary`: whether the request was sent.
    SummaryRequestSent(bool),
    /// Answer to `PrepareHandover` with a token request: the minted token or the store error.
    /// `None` when no token was asked for.
    HandoverPrepared(Option<Result<MintedToken, String>>),
    /// The escalation's HubSpot work finished (or was skipped, or is late at the end).
    CrmDone(CrmRecord),
    /// An operator command (`POST /v1/calls/{call_id}/transfer|hangup`).
    Operator(Command),
    /// Shutdown or lease lost: detach, leave the call live.
    Detach,
    /// After `Ended`: write the end of the record and ask for the after-call work.
    Finish,
    /// The after-call work is done: write `call_ended` and the final record.
    AfterCallDone,
}

/// The end of a call as decided by the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The record's final state.
    pub state: CallState,
    /// The end reason (`caller_hangup`, `transferred`, `max_duration`, ...).
    pub reason: String,
}
