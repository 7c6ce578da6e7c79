//! A local OpenAI SIP emulator: call-control REST and sideband WebSocket on 127.0.0.1, driven by
//! a scripted caller. Backs `voxmachina-demo` and the integration tests.
//!
//! It implements OpenAI's Realtime SIP contract
//! (<https://developers.openai.com/api/docs/guides/realtime-sip>,
//! <https://developers.openai.com/api/docs/guides/webhooks>,
//! <https://developers.openai.com/api/docs/guides/realtime-server-controls>) independently of our
//! controller:
//!
//! - **Webhooks**: [`Emulator::new_call`] builds a `realtime.call.incoming` event in the
//!   webhook's documented shape; [`Emulator::deliver`] signs it with Standard Webhooks `v1` and
//!   POSTs it with OpenAI's headers. Redirects are not followed (a 3xx is a failure).
//! - **Call control**: `POST {rest_base_url}/realtime/calls/{call_id}/accept|reject|refer|hangup`,
//!   bearer auth, `200` with an empty body on success, OpenAI error bodies
//!   `{"error":{"message","type","param","code"}}` otherwise. See the [`rest`] docs for each
//!   endpoint's rules, including the emulator-specific ones.
//! - **Sideband**: `GET {sideband_url}?call_id=...` upgrades to a WebSocket that speaks the
//!   GA Realtime events, with a canned "model" and the caller's scripted turns. See [`sideband`].
//! - **Realtime model sessions** (GA protocol): `GET {sideband_url}?model=...` (no
//!   `call_id`) upgrades to a standalone session carrying audio, as the Twilio media bridge
//!   uses it: `session.update`, `input_audio_buffer.append` (kept, and fed to an energy VAD that
//!   emits `speech_started`/`speech_stopped`/`committed`), caller transcripts and agent
//!   responses with `response.output_audio.delta` audio in the session's format, and
//!   `conversation.item.truncate`. Scripts come from [`Emulator::push_model_script`]; what was
//!   heard and said is in [`Emulator::media`]. See [`sideband`] ("Model sessions").
//! - **Known pitfalls**: accept without `type:"realtime"` answers 200 but the call fails and
//!   the sideband says `404 call_id_not_found`; `/refer` can succeed silently; the
//!   caller hanging up drops the socket without a close frame.
//!
//! Everything observable is kept for tests: [`Emulator::call`] snapshots a call
//! ([`CallView`]), [`Emulator::requests`] lists every REST request, [`Emulator::events`] is a live
//! feed of [`EmulatorEvent`]s, and [`Emulator::wait_for`] waits for a call to reach a state.
//!
//! GPT-Live is emulated by [`live::LiveEmulator`], a separate server with its own port.
//!
//! The servers stop when the last [`Emulator`] handle is dropped (or on [`Emulator::shutdown`]):
//! live sideband sockets are then dropped without a close frame.

mod emulator;
pub mod live;
pub mod phone;
pub mod record;
pub mod rest;
pub mod script;
pub mod sideband;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use script::{AgentSpec, CallSpec, Faults, ReferFault, Script, ScriptError, Turn};

use voxmachina::webhook::signature::{KeyError, Verifier};

/// The `user-agent` OpenAI sends webhook deliveries with (OpenAI's webhooks guide).
pub const WEBHOOK_USER_AGENT: &str = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)";

/// Configuration of an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The API key the controller must present as `Authorization: Bearer <api_key>` on every
    /// REST request and on the sideband upgrade.
    pub api_key: String,
}

/// Why [`Emulator::deliver`] or [`Emulator::place_call`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The webhook secret starts with `whsec_` but the rest is not base64.
    #[error("invalid webhook secret: {0}")]
    Secret(#[from] KeyError),
    /// The webhook POST did not complete (connection refused, timeout, ...). A non-2xx answer is
    /// not an error: it is returned as the status.
    #[error("delivering webhook: {0}")]
    Http(#[from] reqwest::Error),
}

/// A call registered by [`Emulator::new_call`], not yet delivered.
#[derive(Debug, Clone)]
pub struct PendingCall {
    /// `data.call_id`: `rtc_` followed by 32 lowercase hex digits.
    pub call_id: String,
    /// The exact JSON bytes of the `realtime.call.incoming` event (OpenAPI
    /// `WebhookRealtimeCallIncoming`).
    pub body: Bytes,
    /// The event's `id`: `evt_` followed by 32 hex digits.
    pub event_id: String,
}

/// The result of [`Emulator::place_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    /// The new call's id (`rtc_...`).
    pub call_id: String,
    /// The `webhook-id` header used: `wh_` followed by 32 hex digits. Reuse it to redeliver.
    pub webhook_id: String,
    /// The HTTP status the webhook endpoint answered with.
    pub status: u16,
}

/// Where a call stands, as the emulated OpenAI sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmuCallStatus {
    /// Ringing: the webhook was built, no decision yet.
    Pending,
    /// Accepted with a valid session (`type: "realtime"`); the sideband accepts connections.
    Accepted,
    /// Rejected with this SIP status code (603 when the body had none).
    Rejected {
        /// The SIP status sent to the caller.
        status_code: u16,
    },
    /// Accepted with a body whose `type` is not `"realtime"`: `/accept` said 200 but the session
    /// failed, and the sideband answers 404 (OpenAI developer forum reports).
    Failed,
    /// A `/refer` with the `transfer` fault succeeded: the caller left for `target`.
    Transferred {
        /// The `target_uri` of the successful refer.
        target: String,
    },
    /// The controller hung up with `/hangup`.
    HungUp,
    /// The caller hung up (a `hangup` turn).
    CallerHungUp,
    /// The caller was gone before the accept (a `404` accept fault).
    Missed,
}

impl EmuCallStatus {
    /// Whether the call is over (no further accept, refer, hangup or sideband possible).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Pending | Self::Accepted)
    }
}

/// A snapshot of one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallView {
    /// The call id (`rtc_...`).
    pub call_id: String,
    /// Where the call stands.
    pub status: EmuCallStatus,
    /// Number of `/accept` requests for this call that passed authentication, whatever their
    /// outcome (faults, 409 and 404 included).
    pub accept_count: u32,
    /// The body of the accept that succeeded; before one succeeds, the body of the latest
    /// attempt (`Value::Null` for an empty body, a JSON string for unparseable text).
    pub accept_body: Option<Value>,
    /// The body of the successful `/reject` (`Value::Null` when it had none).
    pub reject_body: Option<Value>,
    /// Every well-formed `target_uri` the controller asked to refer to on the live call, in
    /// order, including refers that failed or were ignored.
    pub refer_targets: Vec<String>,
    /// Number of `/hangup` requests for this call that passed authentication, any outcome.
    pub hangup_count: u32,
    /// Number of sideband WebSocket connections that were upgraded.
    pub sideband_connections: u32,
    /// Every text message the controller sent on the sideband, in order, across connections;
    /// parsed as JSON, or a JSON string holding the raw text when it was not JSON.
    pub client_events: Vec<Value>,
    /// `(call_id, output)` of every `conversation.item.create` with a `function_call_output`
    /// item, in order.
    pub function_outputs: Vec<(String, String)>,
    /// What the agent said (audio responses), in order.
    pub agent_lines: Vec<String>,
    /// What the caller said (caller turns), in order.
    pub caller_lines: Vec<String>,
    /// Every turn of the script has been played.
    pub script_done: bool,
    /// For each answered tool turn: the time from writing its
    /// `response.function_call_arguments.done` to reading the matching `function_call_output`,
    /// as the emulator measures it (the controller's tool round trip plus the tool's own time).
    pub tool_round_trips: Vec<ToolRoundTrip>,
    /// Texts of out-of-band text responses (`conversation: "none"`, text output), in order.
    pub out_of_band_texts: Vec<String>,
}

/// One tool turn's round trip (see [`CallView::tool_round_trips`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolRoundTrip {
    /// The function call id (`call_...`).
    pub tool_call_id: String,
    /// The function name.
    pub name: String,
    /// Microseconds from writing the arguments event to reading the output item.
    pub micros: u64,
}

/// One REST request the emulator answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// The path without query, e.g. `/v1/realtime/calls/rtc_.../accept`.
    pub path: String,
    /// Whether `Authorization: Bearer <api_key>` was present and correct.
    pub authorized: bool,
    /// The body as JSON; `Value::Null` when empty; a JSON string holding the raw text when it
    /// was not valid JSON.
    pub body: Value,
    /// The HTTP status returned.
    pub status: u16,
}

/// Who spoke a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The scripted caller.
    Caller,
    /// The emulated model.
    Agent,
}

/// Who ended a call by hanging up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    /// `/hangup` from the controller.
    Controller,
    /// A `hangup` turn in the script.
    Caller,
}

/// What a `/refer` request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReferOutcome {
    /// 200, and the call left for the target.
    Transferred,
    /// 200, and nothing happened (OpenAI developer forum reports).
    Ignored,
    /// An error status was returned.
    Failed {
        /// The HTTP status returned.
        status: u16,
    },
}

/// How a sideband connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SidebandClose {
    /// The server sent a close frame (1000) after `/hangup` or a transfer.
    CloseFrame,
    /// The server dropped the TCP connection without a close frame (drop or hangup turn, or
    /// the emulator shut down).
    Dropped,
    /// The controller closed the connection (close frame or EOF).
    ByClient,
    /// A transport error.
    Error,
}

/// A live notification, for the demo to print and for tests to follow. [`fmt::Display`] renders
/// one human-readable line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EmulatorEvent {
    /// [`Emulator::place_call`] delivered an incoming-call webhook.
    WebhookDelivered {
        /// The call.
        call_id: String,
        /// The `webhook-id` header.
        webhook_id: String,
        /// The status the endpoint answered with.
        status: u16,
    },
    /// `/accept` answered 200.
    Accepted {
        /// The call.
        call_id: String,
        /// `false` when the body's `type` was not `"realtime"` (the call then fails).
        valid: bool,
    },
    /// `/reject` answered 200.
    Rejected {
        /// The call.
        call_id: String,
        /// The SIP status sent to the caller.
        status_code: u16,
    },
    /// A sideband connection was upgraded.
    SidebandConnected {
        /// The call.
        call_id: String,
        /// 1 for the call's first connection, then 2, ...
        connection: u32,
    },
    /// A sideband connection ended.
    SidebandClosed {
        /// The call.
        call_id: String,
        /// The connection number.
        connection: u32,
        /// How it ended.
        how: SidebandClose,
    },
    /// Someone spoke.
    Transcript {
        /// The call.
        call_id: String,
        /// Who.
        speaker: Speaker,
        /// What.
        text: String,
    },
    /// The caller pressed a key.
    Dtmf {
        /// The call.
        call_id: String,
        /// The key.
        key: String,
    },
    /// The model called a function.
    ToolCall {
        /// The call.
        call_id: String,
        /// The function call's `call_id` (`call_...`).
        tool_call_id: String,
        /// The function name.
        name: String,
        /// The arguments JSON string.
        arguments: String,
    },
    /// The controller returned a function result.
    ToolOutput {
        /// The call.
        call_id: String,
        /// The function call's `call_id`.
        tool_call_id: String,
        /// The output string.
        output: String,
    },
    /// The controller asked for a transfer.
    Refer {
        /// The call.
        call_id: String,
        /// The `target_uri`.
        target: String,
        /// What the emulator did.
        outcome: ReferOutcome,
    },
    /// The call ended by hangup.
    Hangup {
        /// The call.
        call_id: String,
        /// Who hung up.
        by: HangupBy,
    },
    /// The script's last turn has been played.
    ScriptDone {
        /// The call.
        call_id: String,
    },
    /// A Realtime model session (no `call_id`) was opened; `call_id` is its `sess_...` id.
    ModelSessionOpened {
        /// The session id, used as the call id of [`Emulator::call`] and [`Emulator::media`].
        call_id: String,
        /// The `model` query parameter.
        model: String,
    },
    /// The model session's VAD heard the caller start (`true`) or stop (`false`) speaking.
    Speech {
        /// The session.
        call_id: String,
        /// Started or stopped.
        started: bool,
        /// `audio_start_ms` / `audio_end_ms` on the input buffer's time line.
        at_ms: u64,
    },
    /// The client truncated agent audio (`conversation.item.truncate`).
    Truncated {
        /// The session.
        call_id: String,
        /// The item.
        item_id: String,
        /// Audio kept, milliseconds.
        audio_end_ms: u64,
    },
}

impl fmt::Display for EmulatorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebhookDelivered {
                call_id,
                webhook_id,
                status,
            } => write!(
                f,
                "[{call_id}] webhook {webhook_id} delivered: HTTP {status}"
            ),
            Self::Accepted { call_id, valid } => {
                if *valid {
                    write!(f, "[{call_id}] call accepted")
                } else {
                    write!(
                        f,
                        "[{call_id}] accept answered 200 but the session is invalid: call failed"
                    )
                }
            }
            Self::Rejected {
                call_id,
                status_code,
            } => write!(f, "[{call_id}] call rejected with SIP {status_code}"),
            Self::SidebandConnected {
                call_id,
                connection,
            } => write!(f, "[{call_id}] sideband connection #{connection} opened"),
            Self::SidebandClosed {
                call_id,
                connection,
                how,
            } => write!(
                f,
                "[{call_id}] sideband connection #{connection} closed ({how:?})"
            ),
            Self::Transcript {
                call_id,
                speaker,
                text,
            } => {
                let who = match speaker {
                    Speaker::Caller => "caller",
                    Speaker::Agent => "agent",
                };
                write!(f, "[{call_id}] {who}: {text}")
            }
            Self::Dtmf { call_id, key } => write!(f, "[{call_id}] caller pressed {key}"),
            Self::ToolCall {
                call_id,
                name,
                arguments,
                ..
            } => write!(f, "[{call_id}] model calls {name}({arguments})"),
            Self::ToolOutput {
                call_id, output, ..
            } => write!(f, "[{call_id}] tool output: {output}"),
            Self::Refer {
                call_id,
                target,
                outcome,
            } => {
                let what = match outcome {
                    ReferOutcome::Transferred => "transferred".to_string(),
                    ReferOutcome::Ignored => "accepted but nothing happened".to_string(),
                    ReferOutcome::Failed { status } => format!("failed with HTTP {status}"),
                };
                write!(f, "[{call_id}] refer to {target}: {what}")
            }
            Self::Hangup { call_id, by } => match by {
                HangupBy::Controller => write!(f, "[{call_id}] controller hung up"),
                HangupBy::Caller => write!(f, "[{call_id}] caller hung up"),
            },
            Self::ScriptDone { call_id } => write!(f, "[{call_id}] caller script finished"),
            Self::ModelSessionOpened { call_id, model } => {
                write!(f, "[{call_id}] Realtime session opened (model {model})")
            }
            Self::Speech {
                call_id,
                started,
                at_ms,
            } => {
                let what = if *started { "started" } else { "stopped" };
                write!(f, "[{call_id}] caller speech {what} at {at_ms} ms")
            }
            Self::Truncated {
                call_id,
                item_id,
                audio_end_ms,
            } => write!(
                f,
                "[{call_id}] barge-in: agent item {item_id} truncated at {audio_end_ms} ms"
            ),
        }
    }
}

/// The local OpenAI emulator: one port serving the call-control REST API under `/v1` and the
/// Realtime sideband WebSocket at `/v1/realtime`. Cheap to clone; the servers stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Emulator {
    handle: Arc<Handle>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.handle.shared.addr)
            .finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// State shared by the handle, the REST handlers and the sideband connections.
pub(crate) struct Shared {
    pub(crate) api_key: String,
    pub(crate) addr: SocketAddr,
    pub(crate) cancel: CancellationToken,
    calls: Mutex<HashMap<String, CallState>>,
    requests: Mutex<Vec<RecordedRequest>>,
    version: watch::Sender<u64>,
    events: broadcast::Sender<EmulatorEvent>,
    http: reqwest::Client,
    /// Scripts for the next model sessions, in order.
    pub(crate) model_scripts: Mutex<VecDeque<Script>>,
    /// Ids of the model sessions opened so far, in order.
    pub(crate) model_sessions: Mutex<Vec<String>>,
    /// Contract recording of every request body and client event ([`record`]).
    pub(crate) recorder: record::Recorder,
}

/// A command to a live sideband connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Send a close frame (1000) and end.
    Close,
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// Everything the emulator knows about one call.
pub(crate) struct CallState {
    pub(crate) view: CallView,
    pub(crate) script: Script,
    pub(crate) session_id: String,
    pub(crate) conversation_id: String,
    /// The session object (`session.created` payload), set at a valid accept.
    pub(crate) session: Value,
    pub(crate) next_turn: usize,
    pub(crate) next_reply: usize,
    pub(crate) responses: u32,
    pub(crate) accept_faults_used: usize,
    pub(crate) refers: usize,
    pub(crate) last_item_id: Option<String>,
    pub(crate) accepted_at: Option<Instant>,
    pub(crate) conns: Vec<(u32, mpsc::UnboundedSender<Control>)>,
    pub(crate) driver: Option<u32>,
    /// When each tool turn's `response.function_call_arguments.done` was written, by tool call id.
    pub(crate) tool_sent_at: HashMap<String, (Instant, String)>,
    /// Audio of a model session (`None` for SIP calls).
    pub(crate) media: Option<MediaLog>,
}

/// What a Realtime model session heard and said (see [`Emulator::media`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MediaLog {
    /// The `model` query parameter of the upgrade.
    pub model: String,
    /// Every `input_audio_buffer.append` payload, decoded and concatenated, in the input format
    /// in force when it arrived (`audio/pcmu`: μ-law bytes; `audio/pcm`: PCM16LE 24 kHz).
    pub audio_in: Vec<u8>,
    /// `audio.input.format.type` of the session when the last append arrived.
    pub input_format: String,
    /// Number of `input_audio_buffer.append` events.
    pub appends: u64,
    /// Appends whose `audio` was missing or not valid base64 (answered with an `error` event).
    pub bad_appends: u64,
    /// The agent's audio items, in order.
    pub agent_audio: Vec<AgentAudio>,
    /// `conversation.item.truncate` requests, in order.
    pub truncates: Vec<Truncation>,
    /// Caller utterances the VAD found, `(audio_start_ms, audio_end_ms)`.
    pub utterances: Vec<(u64, u64)>,
}

/// One agent audio item of a model session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentAudio {
    /// The response.
    pub response_id: String,
    /// The item.
    pub item_id: String,
    /// `audio/pcmu` or `audio/pcm`.
    pub format: String,
    /// The audio sent in its deltas, concatenated (μ-law bytes, or PCM16LE 24 kHz).
    pub bytes: Vec<u8>,
    /// Its duration, milliseconds.
    pub duration_ms: u64,
}

/// One `conversation.item.truncate` of a model session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Truncation {
    /// The item named.
    pub item_id: String,
    /// `audio_end_ms` requested.
    pub audio_end_ms: u64,
    /// False when it was refused with an `error` (unknown item, or longer than the audio).
    pub accepted: bool,
}

impl CallState {
    /// Sends `ctrl` to every live sideband connection of the call.
    pub(crate) fn control_all(&self, ctrl: Control) {
        for (_, tx) in &self.conns {
            let _ = tx.send(ctrl);
        }
    }
}

impl Shared {
    pub(crate) fn calls(&self) -> MutexGuard<'_, HashMap<String, CallState>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every [`Emulator::wait_for`].
    pub(crate) fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn emit(&self, event: EmulatorEvent) {
        tracing::debug!(target: "voxmachina::emulator", "{event}");
        let _ = self.events.send(event);
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        self.recorder.record(
            record::Received {
                api: "realtime",
                channel: "rest",
                method: Some(&req.method),
                path: &req.path,
                status: Some(req.status),
            },
            &req.body,
        );
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req);
        self.bump();
    }
}

/// `prefix` followed by 32 random lowercase hex digits.
pub(crate) fn hex_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// Current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `realtime.call.incoming`, field order as in OpenAPI `WebhookRealtimeCallIncoming`.
#[derive(Serialize)]
struct IncomingEvent<'a> {
    object: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    created_at: i64,
    data: IncomingData<'a>,
}

#[derive(Serialize)]
struct IncomingData<'a> {
    call_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sip_media_security: Option<&'a str>,
    sip_headers: Vec<SipHeader<'a>>,
}

#[derive(Serialize)]
struct SipHeader<'a> {
    name: &'a str,
    value: &'a str,
}
