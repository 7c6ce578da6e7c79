//! The GPT-Live attach sideband as the monitor's [`Link`], and Live call control as its
//! [`CallActions`].
//!
//! The monitor speaks the Realtime event vocabulary (OpenAI's Realtime server-controls guide);
//! [`LiveLink`] translates in both directions so the same monitor, tools, transcripts and
//! escalation serve Live calls (openai-python `types/live/server_event.py`; OpenAI's voice-sip
//! guide (`?api=live`)):
//!
//! | Live server event | what the monitor receives |
//! |---|---|
//! | `session.input_transcript.delta` | stitched ([`super::stitch`]) into `conversation.item.input_audio_transcription.completed` lines |
//! | `session.output_transcript.delta` | stitched into `response.output_audio_transcript.done` lines |
//! | `transport.dtmf.received` `{event}` | `input_audio_buffer.dtmf_event_received` `{event}` |
//! | `response.event` wrapping `response.output_item.done` with a `function_call` item | `response.function_call_arguments.done` `{call_id, name, arguments}` |
//! | `session.closed`, `transport.ringing/answered/failed`, `error`, anything else | unchanged (the monitor types the first four) |
//!
//! | monitor client event | sent to Live |
//! |---|---|
//! | `response.create` with `response.instructions` (greeting, a line to say) | `session.instructions.append` `{event_id, delegation_id: null, content}` |
//! | `response.create` without instructions (after tool outputs) | `response.create` |
//! | `conversation.item.create` with a `function_call_output` item | `response.item.create` with the same item |
//! | `response.cancel` | nothing (Live has no cancel; the pending response is reported done) |
//! | an out-of-band `response.create` (`conversation: "none"`, the model summary) | refused: [`Link::send`] errs, so the transcript summary is used |
//! | [`Link::send_dtmf`] (the `send_dtmf` tool) | one `transport.dtmf.send` `{event_id, event}` per key, in order |
//!
//! **DTMF out.** The `openai` SDK types `transport.dtmf.send` as a Live client event
//! (`openai.types.live.connect_client_event.TransportDtmfSend`: `{type, event, event_id?}`):
//! "Send one DTMF keypress to the SIP trunk through a Live sideband connection. This command is
//! supported only for SIP calls. [...] Send separate events for multiple keypresses." `event` is
//! one of `0`–`9`, `A`–`D`, `*`, `#`. Success is reported as `transport.dtmf.sent`
//! `{event, client_event_id}` and a failure as an `error` whose `error.client_event_id` is our
//! `event_id` (both reach the monitor unchanged and are logged). Neither the SDK nor the guides
//! document pacing (tone length, gap between keys) or a pause key, so the keys are sent back to
//! back, each as its own event, and the platform times the tones on the SIP leg; a menu that
//! needs a pause gets two tool calls.
//!
//! Live has no `response.created`/`response.done`. For each response the monitor asks
//! for, the link reports `response.created` at once and `response.done` when the agent's next
//! line is complete, or after [`RESPONSE_WAIT`] without one, so the monitor's turn bookkeeping
//! (tool follow-ups, fillers, hand-off lines) works unchanged.
//!
//! Ending: `session.closed` is authoritative. A close frame or drop **without** it is treated
//! as ambiguous ("an unexpected disconnect is not a substitute for `session.closed`"): the
//! monitor reattaches; a 404 on the attach means the session is gone. After a reattach the
//! server replays up to 3 s of events with their original `event_id`; those already seen are
//! skipped (the last [`SEEN_CAPACITY`] ids are remembered).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::control::LiveControl;
use super::stitch::{Line, Stitcher};
use crate::calls::link::{
    CallActions, DtmfError, Link, LinkEvent, ReconnectError, connect_with_backoff, dtmf_keys,
};
use crate::calls::record::Speaker;
use crate::config::MonitorConfig;
use crate::openai::sideband::{self, SidebandError, SidebandStream};
use crate::sip::TransferTarget;

/// How long a line may stay open without a new delta before it is ended.
pub const LINE_QUIET: Duration = Duration::from_millis(1_200);

/// How long a requested response stays "in progress" without the agent finishing a line.
pub const RESPONSE_WAIT: Duration = Duration::from_secs(10);

/// How long [`Link::await_end`] waits for `session.closed` after the controller hung up.
pub const END_WAIT: Duration = Duration::from_secs(5);

/// How many recent `event_id`s are remembered for replay dedupe.
pub const SEEN_CAPACITY: usize = 4_096;

/// The attach sideband of one Live session.
pub struct LiveLink {
    control: LiveControl,
    session_id: String,
    config: MonitorConfig,
    ws: Option<SidebandStream>,
    /// Translated events waiting to be returned by `recv`.
    out: VecDeque<String>,
    /// A close to report once `out` is empty: `clean` when `session.closed` was seen.
    pending_close: Option<bool>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    stitch: Stitcher,
    last_delta: Option<Instant>,
    closed_seen: bool,
    /// A response the monitor asked for: id and when it is reported done at the latest.
    open_response: Option<(String, Instant)>,
    next_id: u64,
    replays_skipped: u64,
}

impl LiveLink {
    /// Attaches (with the `[monitor]` retry policy) to `{live_sideband_url}/live/sessions/
    /// {session_id}/attach`.
    ///
    /// # Errors
    /// [`SidebandError`] of the last attempt; 404 (`CallNotFound`) means the session is gone.
    pub async fn connect(
        control: &LiveControl,
        session_id: &str,
        config: &MonitorConfig,
    ) -> Result<Self, SidebandError> {
        let mut link = Self {
            control: control.clone(),
            session_id: session_id.to_string(),
            config: config.clone(),
            ws: None,
            out: VecDeque::new(),
            pending_close: None,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            stitch: Stitcher::default(),
            last_delta: None,
            closed_seen: false,
            open_response: None,
            next_id: 0,
            replays_skipped: 0,
        };
        link.ws = Some(link.attach().await?);
        Ok(link)
    }

    async fn attach(&self) -> Result<SidebandStream, SidebandError> {
        let url = self.control.attach_url(&self.session_id);
        let key = self.control.api_key().clone();
        connect_with_backoff(&self.config, || sideband::connect_url(&url, &key)).await
    }

    /// Replayed events skipped so far (for tests and logs).
    pub fn replays_skipped(&self) -> u64 {
        self.replays_skipped
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    /// True when `event_id` was seen before (a replay); remembers it otherwise.
    fn is_replay(&mut self, event_id: &str) -> bool {
        if event_id.is_empty() {
            return false;
        }
        if !self.seen.insert(event_id.to_string()) {
            return true;
        }
        self.seen_order.push_back(event_id.to_string());
        if self.seen_order.len() > SEEN_CAPACITY {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        false
    }

    /// Queues a finished line for the monitor; an agent line completes the open response.
    fn emit_line(&mut self, line: Line) {
        match line.speaker {
            Speaker::Caller => self.out.push_back(
                json!({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": line.item_id,
                    "transcript": line.text,
                })
                .to_string(),
            ),
            Speaker::Agent => {
                let response_id = self
                    .open_response
                    .as_ref()
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default();
                self.out.push_back(
                    json!({
                        "type": "response.output_audio_transcript.done",
                        "response_id": response_id,
                        "item_id": line.item_id,
                        "transcript": line.text,
                    })
                    .to_string(),
                );
                self.complete_response("completed");
            }
        }
    }

    fn complete_response(&mut self, status: &str) {
        if let Some((id, _)) = self.open_response.take() {
            self.out.push_back(
                json!({ "type": "response.done", "response": { "id": id, "status": status } })
                    .to_string(),
            );
        }
    }

    fn flush_line(&mut self) {
        self.last_delta = None;
        if let Some(line) = self.stitch.flush() {
            self.emit_line(line);
        }
    }

    /// Translates one Live server frame into zero or more monitor events.
    fn on_frame(&mut self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            // Let the monitor log it as unparseable.
            self.out.push_back(text.to_string());
            return;
        };
        let event_id = v["event_id"].as_str().unwrap_or_default();
        if self.is_replay(event_id) {
            self.replays_skipped += 1;
            debug!(event_id, "replayed event skipped");
            return;
        }
        let kind = v["type"].as_str().unwrap_or_default();
        match kind {
            "session.input_transcript.delta" | "session.output_transcript.delta" => {
                let speaker = if kind == "session.input_transcript.delta" {
                    Speaker::Caller
                } else {
                    Speaker::Agent
                };
                let finished = self.stitch.push(
                    speaker,
                    v["delta"].as_str().unwrap_or_default(),
                    v["start_ms"].as_u64(),
                    v["end_ms"].as_u64(),
                    event_id,
                );
                if let Some(line) = finished {
                    self.emit_line(line);
                }
                self.last_delta = Some(Instant::now());
            }
            "transport.dtmf.received" => {
                self.out.push_back(
                    json!({ "type": "input_audio_buffer.dtmf_event_received", "event": v["event"] })
                        .to_string(),
                );
            }
            "response.event" => {
                let inner = &v["event"];
                let item = &inner["item"];
                if inner["type"] == "response.output_item.done" && item["type"] == "function_call" {
                    // The line before the tool call is complete: keep the transcript in order.
                    self.flush_line();
                    let arguments = match &item["arguments"] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    self.out.push_back(
                        json!({
                            "type": "response.function_call_arguments.done",
                            "call_id": item["call_id"],
                            "name": item["name"],
                            "arguments": arguments,
                        })
                        .to_string(),
                    );
                }
            }
            "session.closed" => {
                self.flush_line();
                self.complete_response("completed");
                self.closed_seen = true;
                self.out.push_back(text.to_string());
            }
            _ => self.out.push_back(text.to_string()),
        }
    }

    /// The connection ended: report the close after any pending events.
    fn on_disconnect(&mut self) {
        self.ws = None;
        self.flush_line();
        self.pending_close = Some(self.closed_seen);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let quiet = self
            .last_delta
            .filter(|_| self.stitch.is_open())
            .map(|t| t + LINE_QUIET);
        let response = self.open_response.as_ref().map(|(_, d)| *d);
        [quiet, response].into_iter().flatten().min()
    }

    /// Translates one monitor client event; `None` when nothing is to be sent.
    fn translate_out(&mut self, text: &str) -> Result<Option<Value>, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let kind = v["type"].as_str().unwrap_or_default();
        match kind {
            "response.create" => {
                let response = &v["response"];
                if response["conversation"] == "none" {
                    return Err("out-of-band responses are not supported by GPT-Live".into());
                }
                let event_id = self.fresh_id("vox");
                let live = match response["instructions"].as_str() {
                    Some(content) => json!({
                        "type": "session.instructions.append",
                        "event_id": event_id,
                        "delegation_id": null,
                        "content": content,
                    }),
                    None => json!({ "type": "response.create", "event_id": event_id }),
                };
                // A new request supersedes any open one.
                self.complete_response("cancelled");
                let id = self.fresh_id("live_resp");
                self.out.push_back(
                    json!({ "type": "response.created", "response": { "id": id } }).to_string(),
                );
                self.open_response = Some((id, Instant::now() + RESPONSE_WAIT));
                Ok(Some(live))
            }
            "response.cancel" => {
                self.complete_response("cancelled");
                Ok(None)
            }
            "conversation.item.create" if v["item"]["type"] == "function_call_output" => {
                Ok(Some(json!({
                    "type": "response.item.create",
                    "event_id": self.fresh_id("vox"),
                    "item": v["item"],
                })))
            }
            other => Err(format!("{other} has no GPT-Live equivalent")),
        }
    }
}

#[async_trait]
impl Link for LiveLink {
    async fn recv(&mut self) -> LinkEvent {
        loop {
            if let Some(text) = self.out.pop_front() {
                return LinkEvent::Text(text);
            }
            if let Some(clean) = self.pending_close.take() {
                return LinkEvent::Closed { clean };
            }
            let deadline = self.next_deadline();
            let Some(ws) = self.ws.as_mut() else {
                return LinkEvent::Closed {
                    clean: self.closed_seen,
                };
            };
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_frame(text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        debug!(?frame, closed_seen = self.closed_seen, "attach sideband closed");
                        self.on_disconnect();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        debug!(error = %e, "attach sideband dropped");
                        self.on_disconnect();
                    }
                    None => self.on_disconnect(),
                },
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let now = Instant::now();
                    if self.last_delta.is_some_and(|t| now >= t + LINE_QUIET) {
                        self.flush_line();
                    }
                    if self.open_response.as_ref().is_some_and(|(_, d)| now >= *d) {
                        self.complete_response("incomplete");
                    }
                }
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        let Some(live) = self.translate_out(&text)? else {
            return Ok(());
        };
        match self.ws.as_mut() {
            Some(ws) => ws
                .send(Message::text(live.to_string()))
                .await
                .map_err(|e| e.to_string()),
            None => Err("attach sideband is closed".into()),
        }
    }

    async fn reconnect(&mut self) -> Result<(), ReconnectError> {
        if self.closed_seen {
            return Err(ReconnectError::CallGone);
        }
        match self.attach().await {
            Ok(ws) => {
                self.ws = Some(ws);
                self.pending_close = None;
                Ok(())
            }
            Err(SidebandError::CallNotFound) => Err(ReconnectError::CallGone),
            Err(e) => Err(ReconnectError::GaveUp(e.to_string())),
        }
    }

    async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    async fn send_dtmf(&mut self, keys: &str) -> Result<usize, DtmfError> {
        let keys = dtmf_keys(keys)?;
        let mut sent = 0;
        for key in keys.chars() {
            let event = json!({
                "type": "transport.dtmf.send",
                "event_id": self.fresh_id("vox_dtmf"),
                "event": key.to_string(),
            });
            let Some(ws) = self.ws.as_mut() else {
                return Err(DtmfError::Send("attach sideband is closed".into()));
            };
            ws.send(Message::text(event.to_string()))
                .await
                .map_err(|e| DtmfError::Send(format!("after {sent} keys: {e}")))?;
            sent += 1;
        }
        Ok(sent)
    }

    async fn await_end(&mut self) -> Option<String> {
        if self.closed_seen {
            return None;
        }
        let ws = self.ws.as_mut()?;
        let deadline = Instant::now() + END_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                    if v["type"] == "session.closed" {
                        self.closed_seen = true;
                        return Some(text.to_string());
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) | Err(_) => return None,
            }
        }
    }
}

/// GPT-Live call control for one session as the monitor's [`CallActions`].
#[derive(Clone, Debug)]
pub struct LiveActions {
    /// The client.
    pub control: LiveControl,
    /// The `live_...` session id.
    pub session_id: String,
}

#[async_trait]
impl CallActions for LiveActions {
    async fn refer(&self, target: &TransferTarget) -> Result<(), String> {
        self.control
            .refer(&self.session_id, &target.as_uri())
            .await
            .map_err(|e| e.to_string())
    }

    async fn hangup(&self) -> Result<(), String> {
        self.control
            .hangup(&self.session_id)
            .await
            .map_err(|e| e.to_string())
    }
}
