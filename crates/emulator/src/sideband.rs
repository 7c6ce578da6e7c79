//! The emulated Realtime sideband WebSocket (OpenAI's Realtime server-controls guide) and its
//! canned "model".
//!
//! **Connecting**: `GET /v1/realtime?call_id=...` with `Authorization: Bearer <api_key>` (401
//! otherwise); the call must be Accepted with a valid session, otherwise the answer is an HTTP
//! `404 call_id_not_found` before any upgrade. A `model` query parameter is ignored.
//! On upgrade the server sends `session.created` with the session built from the accept
//! body (defaults filled in, `type: "realtime"`, `object: "realtime.session"`, `id: "sess_..."`).
//!
//! **Server events** all carry an `event_id` (`event_<32 hex>`):
//!
//! - *Responses*: every client `response.create` is answered at once with `response.created`,
//!   two or three `response.output_audio_transcript.delta`, `response.output_audio_transcript.done`
//!   and `response.done` (`status: "completed"`, one assistant message in `output`, `usage`).
//!   With `output_modalities: ["text"]` (on the request or the session) the text events
//!   `response.output_text.delta|done` are sent instead and nothing is "spoken". The words: the
//!   first double-quoted passage (`"..."` or `“...”`) of `response.instructions` verbatim;
//!   otherwise, for the call's first response before any turn, the script's greeting;
//!   otherwise the next canned reply, then [`super::script::FALLBACK_REPLY`].
//!   Responses are emitted atomically, so `response.cancel` has nothing to cancel and is only
//!   recorded (emulator-specific).
//! - *Caller turn*: `input_audio_buffer.speech_started`, `.speech_stopped`, `.committed`, then
//!   `conversation.item.input_audio_transcription.completed` **only when the session has
//!   `audio.input.transcription` set** ("If `transcription` is not set, you get no caller
//!   transcripts"). Then, if the script's `auto_reply` is on and the session's
//!   `turn_detection` is not `null` and does not set `create_response: false`, an agent
//!   response, unless the call is no longer live (transferred, hung up).
//! - *DTMF turn*: `input_audio_buffer.dtmf_event_received {event, received_at}` per key.
//! - *Tool turn*: `response.created`, `response.function_call_arguments.done` (arguments as a
//!   JSON string), `response.output_item.done` (the `function_call` item) and `response.done`
//!   with the `function_call` in `output`. The script then waits up to `tool_timeout_ms` for a
//!   `conversation.item.create` carrying a `function_call_output` with the same `call_id`, then
//!   up to `tool_timeout_ms` again for the `response.create` that answers it, before the next
//!   turn.
//! - *Out-of-band text responses*: a `response.create` with `conversation: "none"` and
//!   `output_modalities: ["text"]` answers the script's `summary` (or
//!   [`super::script::NO_SUMMARY_TEXT`]) as `response.output_text.*`, with `conversation_id`
//!   `null`, and does not use up a canned reply (emulator-specific; the controller's call-summary
//!   request). The text is kept in [`CallView::out_of_band_texts`](super::CallView).
//! - *Tool round trips*: the time from writing a tool turn's arguments event to reading its
//!   `function_call_output` is kept in [`CallView::tool_round_trips`](super::CallView).
//! - `conversation.item.create` is acknowledged with `conversation.item.added` and
//!   `conversation.item.done`; `session.update` merges into the session and is answered with
//!   `session.updated`.
//!
//! **Client events**: every text frame is recorded in [`CallView::client_events`](super::CallView)
//! (non-JSON text as a JSON string). Unknown types and garbage are logged and ignored; binary
//! frames are ignored.
//!
//! **Script**: on the call's first connection the driver waits up to `greeting_wait_ms` for the
//! greeting `response.create`, then plays the turns with `turn_gap_ms` between them. A `drop`
//! turn drops the TCP connection without a close frame, and the next connection resumes at the
//! following turn (nothing already sent is replayed). A `hangup` turn does the same and ends the
//! call. After the last turn the call stays up until the controller hangs up or transfers it.
//!
//! **Model sessions** (`GET /v1/realtime?model=...`, no `call_id`; what the Twilio media bridge
//! opens): a new session `sess_...` with the next script of
//! [`super::Emulator::push_model_script`]. `session.created` carries the GA defaults for a
//! WebSocket session (`audio/pcm` 24 kHz both ways, server VAD with 500 ms silence) and the
//! model; `session.update` may switch either format to `audio/pcmu`.
//!
//! - `input_audio_buffer.append {audio}`: decoded in the session's input format and kept
//!   ([`super::MediaLog::audio_in`]; these events are not copied into `client_events`), then run
//!   through an energy VAD: 20 ms windows, RMS ≥ 500 (of 32 767) is speech. The first speech
//!   window sends `input_audio_buffer.speech_started {audio_start_ms, item_id}`; after
//!   `silence_duration_ms` of `turn_detection` (default 500) of non-speech it sends
//!   `speech_stopped {audio_end_ms}` and `committed`. Missing or invalid base64 answers an
//!   `error` (`invalid_value`).
//! - A `caller` turn waits (up to `listen_timeout_ms`) for such an utterance (or takes one that
//!   ended while no turn was waiting), then sends its transcription as the turn's text (when
//!   `audio.input.transcription` is set) and the agent's automatic answer as for SIP calls.
//!   Utterances no turn takes get no transcript and no answer. `dtmf` turns do nothing.
//! - Responses with audio carry `response.output_audio.delta` events (`audio_chunk_ms` of audio
//!   each, all sent at once: faster than real time, as the real API streams) and
//!   `response.output_audio.done` before the transcript events. The audio is a deterministic
//!   test signal in the session's output format: a 300 → 3000 Hz linear chirp repeating every
//!   second, amplitude 8000, 10 ms fades, lasting `200 + 250 × words` ms (at most 10 s)
//!   ([`agent_signal`]).
//! - `conversation.item.truncate {item_id, content_index, audio_end_ms}` of an agent audio item
//!   answers `conversation.item.truncated`; an unknown item or an `audio_end_ms` past the
//!   item's duration answers an `error` (`invalid_value`), like the real API.
//!
//! *Emulator-specific* (the Realtime docs say nothing about several sockets): a call may have
//! several connections at once. Each gets `session.created` and answers to its own client
//! events, and all get the close frame or the drop when the call ends; the newest connection
//! drives the script, older ones stop playing turns.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::script::{AgentSpec, FALLBACK_REPLY, NO_SUMMARY_TEXT, Turn};
use super::{
    AgentAudio, CallState, CallView, Control, EmuCallStatus, EmulatorEvent, HangupBy, MediaLog,
    Shared, SidebandClose, Speaker, Truncation, hex_id, unix_now,
};
use base64::Engine as _;

/// RMS (of full scale 32 767) at or above which a 20 ms window counts as speech.
mod turns;

pub const VAD_THRESHOLD: f64 = 500.0;

/// Registers a new Realtime model session for `model` and returns its id (`sess_...`).
pub(crate) fn open_model_session(shared: &Arc<Shared>, model: &str) -> String {
    let id = hex_id("sess_");
    let script = shared
        .model_scripts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
        .unwrap_or_default();
    let pcm = json!({ "type": "audio/pcm", "rate": 24000 });
    let body = json!({
        "model": model,
        "audio": { "input": { "format": pcm }, "output": { "format": pcm } },
    });
    let session = build_session(&id, body.as_object().expect("object literal"));
    let state = CallState {
        view: CallView {
            call_id: id.clone(),
            status: EmuCallStatus::Accepted,
            accept_count: 0,
            accept_body: None,
            reject_body: None,
            refer_targets: Vec::new(),
            hangup_count: 0,
            sideband_connections: 0,
            client_events: Vec::new(),
            function_outputs: Vec::new(),
            agent_lines: Vec::new(),
            caller_lines: Vec::new(),
            script_done: false,
            out_of_band_texts: Vec::new(),
            tool_round_trips: Vec::new(),
        },
        script,
        session_id: id.clone(),
        conversation_id: hex_id("conv_"),
        session,
        next_turn: 0,
        next_reply: 0,
        responses: 0,
        accept_faults_used: 0,
        refers: 0,
        last_item_id: None,
        accepted_at: Some(Instant::now().into_std()),
        conns: Vec::new(),
        driver: None,
        tool_sent_at: std::collections::HashMap::new(),
        media: Some(MediaLog {
            model: model.to_string(),
            input_format: "audio/pcm".into(),
            ..MediaLog::default()
        }),
    };
    shared.calls().insert(id.clone(), state);
    shared
        .model_sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(id.clone());
    shared.bump();
    shared.emit(EmulatorEvent::ModelSessionOpened {
        call_id: id.clone(),
        model: model.to_string(),
    });
    id
}

/// The agent's test signal at `t` seconds: a 300 → 3000 Hz linear chirp that restarts every
/// second (phase-continuous), amplitude 8000 (of 32 767).
pub fn agent_signal(t: f64) -> f64 {
    let n = t.floor();
    let tau = t - n;
    let phase = n * (300.0 + 1350.0) + 300.0 * tau + 1350.0 * tau * tau;
    8000.0 * (2.0 * std::f64::consts::PI * phase).sin()
}

/// `duration_ms` of [`agent_signal`] with 10 ms linear fades, in `format` (`audio/pcmu`: μ-law
/// 8 kHz bytes; otherwise PCM16LE 24 kHz bytes).
pub fn agent_audio(format: &str, duration_ms: u64) -> Vec<u8> {
    let rate: u64 = if format == "audio/pcmu" {
        8_000
    } else {
        24_000
    };
    let n = rate * duration_ms / 1000;
    let fade = rate / 100;
    let samples = (0..n).map(|i| {
        let gain = (i.min(n - 1 - i) as f64 / fade as f64).min(1.0);
        (agent_signal(i as f64 / rate as f64) * gain).round() as i16
    });
    if rate == 8_000 {
        samples.map(voxmachina::media::g711::ulaw_encode).collect()
    } else {
        samples.flat_map(i16::to_le_bytes).collect()
    }
}

/// Audio format type (`audio/pcmu`, `audio/pcm`, ...) of `audio.{dir}.format` in `session`.
fn format_of(session: &Value, dir: &str) -> String {
    session
        .pointer(&format!("/audio/{dir}/format/type"))
        .and_then(Value::as_str)
        .unwrap_or("audio/pcm")
        .to_string()
}

/// The model session's energy VAD (see the module docs).
#[derive(Debug, Default)]
struct Vad {
    sum_sq: f64,
    n: usize,
    pos_ms: u64,
    speaking: bool,
    start_ms: u64,
    voiced_end_ms: u64,
}

/// A VAD transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VadEvent {
    Started(u64),
    Stopped { start: u64, end: u64 },
}

impl Vad {
    fn feed(&mut self, samples: &[i16], rate: u32, silence_ms: u64) -> Vec<VadEvent> {
        let window = (rate / 50) as usize;
        let mut out = Vec::new();
        for &s in samples {
            self.sum_sq += f64::from(s) * f64::from(s);
            self.n += 1;
            if self.n < window {
                continue;
            }
            let rms = (self.sum_sq / self.n as f64).sqrt();
            let start = self.pos_ms;
            self.pos_ms += 20;
            self.sum_sq = 0.0;
            self.n = 0;
            if rms >= VAD_THRESHOLD {
                if !self.speaking {
                    self.speaking = true;
                    self.start_ms = start;
                    out.push(VadEvent::Started(start));
                }
                self.voiced_end_ms = self.pos_ms;
            } else if self.speaking && self.pos_ms - self.voiced_end_ms >= silence_ms {
                self.speaking = false;
                out.push(VadEvent::Stopped {
                    start: self.start_ms,
                    end: self.voiced_end_ms,
                });
            }
        }
        out
    }
}

/// Model-session state of a connection.
#[derive(Debug, Default)]
struct MediaConn {
    vad: Vad,
    /// The user item announced by `speech_started`.
    speech_item: Option<String>,
    /// An utterance that ended while no caller turn was waiting: `(item_id, end_ms)`.
    unheard: Option<String>,
}

/// Builds the `session.created` session object: defaults of a SIP Realtime session, overlaid with
/// the accept body (OpenAPI `RealtimeSessionCreateRequestGA`), with `type`, `object` and `id`
/// fixed.
pub(crate) fn build_session(session_id: &str, body: &Map<String, Value>) -> Value {
    let mut session = json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "audio": {
            "input": {
                "format": { "type": "audio/pcmu" },
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": true,
                    "interrupt_response": true,
                    "idle_timeout_ms": null
                }
            },
            "output": { "format": { "type": "audio/pcmu" }, "voice": "alloy", "speed": 1.0 }
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "include": null
    });
    merge_session(&mut session, body);
    session
}

/// Overlays `update` on `session`: top-level fields replace, `audio.input` and `audio.output`
/// merge field by field; `type`, `object` and `id` never change.
pub(crate) fn merge_session(session: &mut Value, update: &Map<String, Value>) {
    let Some(dst) = session.as_object_mut() else {
        return;
    };
    for (key, value) in update {
        match key.as_str() {
            "type" | "object" | "id" => {}
            "audio" => {
                let (Some(audio), Some(src)) = (
                    dst.get_mut("audio").and_then(Value::as_object_mut),
                    value.as_object(),
                ) else {
                    dst.insert(key.clone(), value.clone());
                    continue;
                };
                for (dir, cfg) in src {
                    match (
                        audio.get_mut(dir).and_then(Value::as_object_mut),
                        cfg.as_object(),
                    ) {
                        (Some(d), Some(c)) => {
                            for (k, v) in c {
                                d.insert(k.clone(), v.clone());
                            }
                        }
                        _ => {
                            audio.insert(dir.clone(), cfg.clone());
                        }
                    }
                }
            }
            _ => {
                dst.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Whether the session produces caller transcripts (`audio.input.transcription` set).
fn transcription_on(session: &Value) -> bool {
    session
        .pointer("/audio/input/transcription")
        .is_some_and(Value::is_object)
}

/// Whether the session's turn detection answers caller turns by itself.
fn create_response_on(session: &Value) -> bool {
    match session.pointer("/audio/input/turn_detection") {
        Some(Value::Null) => false,
        Some(td) => td
            .get("create_response")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        None => true,
    }
}

/// The first non-empty double-quoted passage (`"..."`, else `“...”`) of `text`.
pub(crate) fn quoted_passage(text: &str) -> Option<String> {
    for (open, close) in [('"', '"'), ('\u{201C}', '\u{201D}')] {
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            let after = &rest[start + open.len_utf8()..];
            let Some(end) = after.find(close) else {
                break;
            };
            let passage = after[..end].trim();
            if !passage.is_empty() {
                return Some(passage.to_string());
            }
            rest = &after[end + close.len_utf8()..];
        }
    }
    None
}

/// Splits `text` into up to three chunks at word starts; the chunks concatenate to `text`.
fn delta_chunks(text: &str) -> Vec<&str> {
    let starts: Vec<usize> = text
        .char_indices()
        .zip(text.chars().skip(1))
        .filter(|((_, prev), next)| prev.is_whitespace() && !next.is_whitespace())
        .map(|((i, prev), _)| i + prev.len_utf8())
        .collect();
    let n = starts.len();
    let mut cuts: Vec<usize> = [n / 3, 2 * n / 3]
        .iter()
        .filter(|&&k| n > 0 && k < n)
        .map(|&k| starts[k])
        .collect();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        if cut > from {
            chunks.push(&text[from..cut]);
            from = cut;
        }
    }
    chunks.push(&text[from..]);
    chunks.retain(|c| !c.is_empty());
    if chunks.is_empty() {
        chunks.push(text);
    }
    chunks
}

/// Why a connection's serve loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Send a close frame 1000 and finish the handshake.
    CloseFrame,
    /// Drop the TCP connection without a close frame.
    Dropped,
    /// The client closed (close frame or EOF).
    Client,
    /// A transport error.
    Error,
}

/// Where the driving connection is in the script.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for the greeting `response.create` until the instant.
    Greeting(Instant),
    /// Playing the next turn at the instant.
    Gap(Instant),
    /// Waiting for the `function_call_output` of `tool_call_id`.
    ToolOutput {
        tool_call_id: String,
        deadline: Instant,
    },
    /// Waiting for the `response.create` that follows a tool output.
    ToolResponse(Instant),
    /// Model sessions: a caller turn waiting for an utterance.
    Listen { text: String, deadline: Instant },
    /// Not driving (script done, or another connection drives).
    Idle,
}

impl Phase {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Greeting(t) | Self::Gap(t) | Self::ToolResponse(t) => Some(*t),
            Self::ToolOutput { deadline, .. } | Self::Listen { deadline, .. } => Some(*deadline),
            Self::Idle => None,
        }
    }
}

/// One sideband connection.
struct Conn {
    shared: Arc<Shared>,
    call_id: String,
    id: u32,
    agent: AgentSpec,
    phase: Phase,
    /// Model sessions only.
    media: Option<MediaConn>,
}

/// What the driver took from the script.
enum Taken {
    Turn(Turn, bool),
    NotDriver,
    Done(bool),
}

/// Serves one upgraded sideband connection until it ends.
pub(crate) async fn run(shared: Arc<Shared>, call_id: String, mut ws: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let registered = {
        let mut calls = shared.calls();
        match calls.get_mut(&call_id) {
            Some(call) if call.view.status == EmuCallStatus::Accepted => {
                call.view.sideband_connections += 1;
                let id = call.view.sideband_connections;
                call.conns.push((id, tx));
                call.driver = Some(id);
                let greeting = id == 1 && call.next_turn == 0 && call.responses == 0;
                Some((
                    id,
                    greeting,
                    call.script.agent.clone(),
                    call.session.clone(),
                    call.media.is_some(),
                ))
            }
            _ => None,
        }
    };
    // The call ended between the HTTP check and the upgrade: drop the socket.
    let Some((id, greeting, agent, session, media)) = registered else {
        return;
    };
    shared.bump();
    shared.emit(EmulatorEvent::SidebandConnected {
        call_id: call_id.clone(),
        connection: id,
    });
    let now = Instant::now();
    let phase = if greeting {
        Phase::Greeting(now + Duration::from_millis(agent.greeting_wait_ms))
    } else {
        Phase::Gap(now + Duration::from_millis(agent.turn_gap_ms))
    };
    let mut conn = Conn {
        shared: shared.clone(),
        call_id: call_id.clone(),
        id,
        agent,
        phase,
        media: media.then(MediaConn::default),
    };
    let end = conn.serve(&mut ws, &mut rx, session).await;
    let how = match end {
        End::CloseFrame => {
            close_handshake(&mut ws).await;
            SidebandClose::CloseFrame
        }
        End::Client => {
            // Let tungstenite flush its reply to the client's close frame.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(_)) = ws.recv().await {}
            })
            .await;
            SidebandClose::ByClient
        }
        End::Dropped => SidebandClose::Dropped,
        End::Error => SidebandClose::Error,
    };
    // Dropping the socket closes the TCP connection; no close frame unless sent above.
    drop(ws);
    {
        let mut calls = shared.calls();
        if let Some(call) = calls.get_mut(&call_id) {
            call.conns.retain(|(c, _)| *c != id);
            if call.driver == Some(id) {
                call.driver = None;
            }
        }
    }
    shared.bump();
    shared.emit(EmulatorEvent::SidebandClosed {
        call_id,
        connection: id,
        how,
    });
}

async fn close_handshake(ws: &mut WebSocket) {
    let frame = CloseFrame {
        code: 1000,
        reason: Utf8Bytes::from_static(""),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
}

impl Conn {
    fn gap(&self) -> Duration {
        Duration::from_millis(self.agent.turn_gap_ms)
    }

    fn tool_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.tool_timeout_ms)
    }

    async fn serve(
        &mut self,
        ws: &mut WebSocket,
        rx: &mut mpsc::UnboundedReceiver<Control>,
        session: Value,
    ) -> End {
        if let Err(end) = self
            .send(ws, json!({"type": "session.created", "session": session}))
            .await
        {
            return end;
        }
        let cancel = self.shared.cancel.clone();
        loop {
            let deadline = self.phase.deadline();
            let wake = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(End::Dropped),
                ctrl = rx.recv() => match ctrl {
                    Some(Control::Close) => Err(End::CloseFrame),
                    Some(Control::Drop) | None => Err(End::Dropped),
                },
                msg = ws.recv() => match msg {
                    None => Err(End::Client),
                    Some(Err(e)) => {
                        tracing::debug!(target: "voxmachina::emulator", call_id = %self.call_id, "sideband read error: {e}");
                        Err(End::Error)
                    }
                    Some(Ok(Message::Text(text))) => self.on_client_text(ws, text.as_str()).await,
                    Some(Ok(Message::Close(_))) => Err(End::Client),
                    Some(Ok(_)) => Ok(()),
                },
                _ = tokio::time::sleep_until(wake), if deadline.is_some() => self.on_deadline(ws).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends one server event, adding its `event_id`.
    async fn send(&self, ws: &mut WebSocket, mut event: Value) -> Result<(), End> {
        if let Some(map) = event.as_object_mut() {
            map.insert("event_id".to_string(), Value::String(hex_id("event_")));
        }
        ws.send(Message::text(event.to_string()))
            .await
            .map_err(|_| End::Error)
    }

    async fn on_client_text(&mut self, ws: &mut WebSocket, text: &str) -> Result<(), End> {
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        self.shared.recorder.record(
            super::record::Received {
                api: "realtime",
                channel: if self.media.is_some() {
                    "model_session"
                } else {
                    "sideband"
                },
                method: None,
                path: "/v1/realtime",
                status: None,
            },
            &value,
        );
        if self.media.is_some() && kind == "input_audio_buffer.append" {
            return self.on_append(ws, &value).await;
        }
        if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
            call.view.client_events.push(value.clone());
        }
        self.shared.bump();
        match kind {
            "conversation.item.truncate" if self.media.is_some() => {
                self.on_truncate(ws, &value).await?
            }
            "response.create" => {
                let request = value.get("response").cloned().unwrap_or(Value::Null);
                self.respond(ws, Some(&request)).await?;
                if matches!(self.phase, Phase::Greeting(_) | Phase::ToolResponse(_)) {
                    self.phase = Phase::Gap(Instant::now() + self.gap());
                }
            }
            "conversation.item.create" => self.on_item_create(ws, &value).await?,
            "session.update" => self.on_session_update(ws, &value).await?,
            // Responses are emitted atomically: there is never one in progress to cancel.
            "response.cancel" => {}
            other => {
                tracing::debug!(target: "voxmachina::emulator", call_id = %self.call_id, kind = other, "ignoring client event");
            }
        }
        Ok(())
    }

    async fn on_item_create(&mut self, ws: &mut WebSocket, value: &Value) -> Result<(), End> {
        let Some(item) = value.get("item").and_then(Value::as_object) else {
            tracing::debug!(target: "voxmachina::emulator", call_id = %self.call_id, "conversation.item.create without an item");
            return Ok(());
        };
        let mut item = item.clone();
        let item_id = item
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| hex_id("item_"));
        item.insert("id".into(), Value::String(item_id.clone()));
        item.insert("object".into(), json!("realtime.item"));
        item.insert("status".into(), json!("completed"));
        let previous = {
            let mut calls = self.shared.calls();
            calls
                .get_mut(&self.call_id)
                .and_then(|c| c.last_item_id.replace(item_id.clone()))
        };
        for kind in ["conversation.item.added", "conversation.item.done"] {
            self.send(
                ws,
                json!({"type": kind, "previous_item_id": previous, "item": item}),
            )
            .await?;
        }
        if item.get("type").and_then(Value::as_str) == Some("function_call_output") {
            let tool_call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            if let Some(call) = self.shared.calls().get_mut(&self.call_id) {
                if let Some((sent, name)) = call.tool_sent_at.remove(&tool_call_id) {
                    let micros = sent.elapsed().as_micros() as u64;
                    call.view.tool_round_trips.push(super::ToolRoundTrip {
                        tool_call_id: tool_call_id.clone(),
                        name,
                        micros,
                    });
                }
                call.view
                    .function_outputs
                    .push((tool_call_id.clone(), output.clone()));
            }
            self.shared.bump();
            self.shared.emit(EmulatorEvent::ToolOutput {
                call_id: self.call_id.clone(),
                tool_call_id: tool_call_id.clone(),
                output,
            });
            let awaited = matches!(&self.phase, Phase::ToolOutput { tool_call_id: waiting, .. } if *waiting == tool_call_id);
            if awaited {
                self.phase = Phase::ToolResponse(Instant::now() + self.tool_timeout());
            }
        }
        Ok(())
    }

    async fn on_session_update(&mut self, ws: &mut WebSocket, value: &Value) -> Result<(), End> {
        let Some(update) = value.get("session").and_then(Value::as_object) else {
            tracing::debug!(target: "voxmachina::emulator", call_id = %self.call_id, "session.update without a session");
            return Ok(());
        };
        let session = {
            let mut calls = self.shared.calls();
            let Some(call) = calls.get_mut(&self.call_id) else {
                return Ok(());
            };
            merge_session(&mut call.session, update);
            call.session.clone()
        };
        self.send(ws, json!({"type": "session.updated", "session": session}))
            .await
    }

    async fn on_deadline(&mut self, ws: &mut WebSocket) -> Result<(), End> {
        let now = Instant::now();
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Greeting(_) => self.phase = Phase::Gap(now),
            Phase::Gap(_) => self.next_turn(ws).await?,
            Phase::ToolOutput { tool_call_id, .. } => {
                tracing::warn!(target: "voxmachina::emulator", call_id = %self.call_id, %tool_call_id, "no function_call_output arrived; moving on");
                self.phase = Phase::Gap(now + self.gap());
            }
            Phase::ToolResponse(_) => {
                tracing::warn!(target: "voxmachina::emulator", call_id = %self.call_id, "no response.create after the tool output; moving on");
                self.phase = Phase::Gap(now + self.gap());
            }
            Phase::Listen { text, .. } => {
                tracing::warn!(target: "voxmachina::emulator", call_id = %self.call_id, %text, "no caller speech heard for this turn; moving on");
                self.phase = Phase::Gap(now + self.gap());
            }
            Phase::Idle => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_passages() {
        assert_eq!(
            quoted_passage(r#"Say exactly: "Let me put you through." Then stop."#).as_deref(),
            Some("Let me put you through.")
        );
        assert_eq!(
            quoted_passage("Say “One moment please.” now").as_deref(),
            Some("One moment please.")
        );
        assert_eq!(
            quoted_passage(r#"empty "" then "second""#).as_deref(),
            Some("second")
        );
        assert_eq!(quoted_passage("no quotes"), None);
        assert_eq!(quoted_passage(r#"unterminated "quote"#), None);
    }

    #[test]
    fn delta_chunks_reassemble() {
        for text in [
            "We're open nine to five, Monday to Friday.",
            "Hi",
            "",
            "  spaced   out  words ",
            "é à ü ö",
        ] {
            let chunks = delta_chunks(text);
            assert_eq!(chunks.concat(), text);
            assert!(chunks.len() <= 3);
        }
        assert_eq!(delta_chunks("a b c d e f").len(), 3);
    }

    #[test]
    fn session_merges_accept_body() {
        let body = json!({
            "type": "realtime",
            "model": "gpt-realtime-2.1",
            "instructions": "Be nice.",
            "audio": {
                "input": {"transcription": {"model": "gpt-4o-mini-transcribe"}},
                "output": {"voice": "marin"}
            },
            "id": "sess_evil"
        });
        let s = build_session("sess_1", body.as_object().unwrap());
        assert_eq!(s["id"], "sess_1");
        assert_eq!(s["object"], "realtime.session");
        assert_eq!(s["model"], "gpt-realtime-2.1");
        assert_eq!(s["audio"]["output"]["voice"], "marin");
        assert_eq!(s["audio"]["output"]["speed"], 1.0);
        assert!(transcription_on(&s));
        assert!(create_response_on(&s));
        let mut s2 = s.clone();
        merge_session(
            &mut s2,
            json!({"audio": {"input": {"turn_detection": null}}})
                .as_object()
                .unwrap(),
        );
        assert!(!create_response_on(&s2));
        assert!(!transcription_on(&build_session("x", &Map::new())));
    }
}
