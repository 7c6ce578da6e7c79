//! One bridged call: the Twilio Media Streams socket (already upgraded and signature-checked by
//! [`super::http`]) and the OpenAI Realtime socket, pumped by split tasks.
//!
//! Tasks per call:
//!
//! - **Twilio reader** (the stream's own task): `media` → [`Inbound`] → `input_audio_buffer.append`
//!   written straight to the model socket; `mark` → [`Playback`]; `dtmf` → the monitor; `stop` or
//!   a closed socket ends the bridge. It also awaits the monitor, whichever ends first.
//! - **Model reader**: `response.output_audio.delta` → [`Outbound`] → 160-byte Twilio frames and
//!   a mark written straight to the Twilio socket; `input_audio_buffer.speech_started` →
//!   barge-in; every other event → the monitor's [`MediaLink`].
//! - **Monitor**: [`crate::calls::monitor::spawn_with`] over [`MediaLink`] (its client events
//!   are written to the model socket by the monitor task) and [`TwilioActions`].
//!
//! Each socket's write half sits behind an async mutex, so the task that produced a message
//! writes it at once (no hand-off to a writer task, whose scheduling delay under load would add
//! to every frame). Frames and `clear` are computed and written while holding the Twilio
//! writer's lock, so a `clear` can never overtake, or be overtaken by, frames computed before it.
//! The bridge time of a message ([`FrameStats`]) runs from its read to the flush of its last
//! resulting message.
//!
//! Start-up: wait up to [`START_TIMEOUT`] for `start` (after `connected`); redeem the single-use
//! `stream_token` of its `customParameters` ([`crate::store::Store::redeem_stream_token`]); its
//! [`StreamGrant`] must name the `start`'s `accountSid` and (inbound) `callSid`; the call record
//! must be `accepting` (an outbound one: direction, callee and profile as granted) or absent
//! (then it is created from the grant); the profile is the record's, never a stream parameter.
//! Any failure is a [`Refusal`]: the socket is closed with code 1008 and the reason, counted
//! (`voxmachina_bridge_streams_total{outcome="refused",reason}`), logged, and recorded as a
//! `media_stream_refused` event on the call when we have its record; no Realtime session is
//! opened. Then connect `{openai.sideband_url}?model={profile model}` with the bearer key and
//! send [`events::session_update`]; mark the record `active`; spawn the monitor (greeting first,
//! as on the SIP path). If the model cannot be reached the record ends `model_unavailable` and
//! the Twilio socket is closed, which ends the call (no TwiML follows `<Connect>`).
//!
//! Pacing: every caller `media` frame goes through a [`Pacer`] before it is processed: frames
//! ahead of real time are not forwarded (`voxmachina_bridge_errors_total{kind="paced_drop"}`),
//! and a stream found abusive (sustained > 1.5× real time) is closed with code 1008, a
//! `media_abusive` event, `voxmachina_bridge_abusive_streams_total` and end reason
//! [`ABUSIVE_MEDIA`].
//!
//! End: Twilio `stop`/close → the link reports a clean close → the monitor finishes (`call_ended`,
//! or `transferred` when a transfer was awaiting its outcome). The monitor finishing first (hang-up,
//! `end_call`, max duration, model lost, shutdown) → both sockets are closed. Then the record gets
//! the frame statistics (extraction is the monitor's after-call work); a call the monitor left live (controller shutdown)
//! is ended `controller_shutdown`, since a media stream cannot be reattached.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{self, WebSocket};
use chrono::Utc;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self as tung};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::audio::{Inbound, MediaFrameWriter, Outbound, b64_decoded_len, frames_ms};
use super::events::{self, ModelPeek, TwilioPeek, kinds};
use super::link::{
    LinkSender, MAX_LINK_BACKLOG_BYTES, MediaLink, ModelWriter, Queued, TwilioActions,
    media_link_channel,
};
use super::pacer::{Pacer, PacerLimits, Verdict, ulaw_duration};
use super::params;
use super::playback::{Echo, Playback, ResponseEnd};
use super::stats::{Direction, FrameStats};
use super::{BridgeServices, metric_names};
use crate::calls::link::Link;
use crate::calls::monitor::{self, Attach};
use crate::calls::persist::{append, event, save};
use crate::calls::record::{Api, CallEvent, CallRecord, CallState, MediaInfo};
use crate::config::Secret;
use crate::media::MediaError;
use crate::openai::sideband::SidebandError;
use crate::prompts::Profile;
use crate::sip::{CallParties, E164};
use crate::store::StreamGrant;
use crate::telemetry::names;
use crate::twilio::media::{ServerMessage, TwilioMessage};

/// `barge_in` event rows one stream writes at most; later barge-ins are only counted in the
/// stream's `stream_ended` summary (`barge_ins`), so a caller who keeps talking over the agent
/// cannot grow the call's event log.
pub const MAX_BARGE_IN_ROWS: u32 = 100;

/// Whether one more row fits under `max`, counting every call (rows or not) in `taken`.
fn take_row(taken: &AtomicU32, max: u32) -> bool {
    taken.fetch_add(1, Ordering::SeqCst) < max
}

/// How long to wait for Twilio's `start` message after the upgrade.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the monitor to finish after the Twilio stream ended.
pub const MONITOR_GRACE: Duration = Duration::from_secs(30);

/// End reason (and `ended_by`) of a stream closed for sending audio faster than real time.
pub const ABUSIVE_MEDIA: &str = "abusive_media";

/// WebSocket close code of refused and abusive streams: 1008, policy violation (RFC 6455 §7.4.1).
pub const CLOSE_POLICY: u16 = 1008;

/// Why a stream was refused before any Realtime session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `start.customParameters` has no `stream_token`.
    NoToken,
    /// The token is unknown, already used, expired or forged.
    InvalidToken,
    /// The token was granted for another `callSid` or `accountSid` (or, for an outbound call,
    /// the record is not the call it was granted for).
    CallMismatch,
    /// The call is not waiting for a stream (its stream started already, or it ended).
    NotWaiting,
    /// A stream of this call is bridged on this instance already.
    AlreadyBridged,
    /// The store could not be asked: refused (fail closed).
    StoreUnavailable,
}

impl Refusal {
    /// The label of the reason (metric `reason`, event detail, close reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::InvalidToken => "invalid_token",
            Self::CallMismatch => "call_mismatch",
            Self::NotWaiting => "not_waiting",
            Self::AlreadyBridged => "already_bridged",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The model socket.
pub type ModelStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

type TwilioSink = SplitSink<WebSocket, ws::Message>;
type ModelSink = SplitSink<ModelStream, tung::Message>;

/// Opens the Realtime WebSocket `{base_url}?model={model}` with `Authorization: Bearer` (the same
/// base URL as the sideband, OpenAI's Realtime server-controls guide: without `call_id`, with
/// `model`).
///
/// # Errors
/// [`SidebandError::Unauthorized`] for 401/403, [`SidebandError::Transport`] otherwise
/// (see [`crate::openai::sideband::open`]: same socket settings as the sideband).
pub async fn connect_model(
    base_url: &str,
    model: &str,
    api_key: &Secret,
) -> Result<ModelStream, SidebandError> {
    match crate::openai::sideband::open(base_url, ("model", model), api_key).await {
        // No call to be gone: a 404 here is a wrong URL.
        Err(SidebandError::CallNotFound) => Err(SidebandError::Transport(
            "upgrade answered 404 Not Found".into(),
        )),
        other => other,
    }
}

/// Outbound audio state, behind one lock shared by the model reader (deltas), the Twilio reader
/// (mark echoes) and barge-ins.
struct OutState {
    playback: Playback,
    audio: Outbound,
    /// Items cut off by a barge-in: their remaining deltas are dropped.
    suppressed: HashSet<String>,
    /// `(response_id, item_id)` whose audio is in `audio` and not finished yet.
    current: Option<(String, String)>,
}

/// Per-call state shared by the bridge's tasks.
struct Bridge {
    call_id: String,
    stream_sid: String,
    stats: Arc<FrameStats>,
    frames: MediaFrameWriter,
    twilio: tokio::sync::Mutex<TwilioSink>,
    model: tokio::sync::Mutex<ModelSink>,
    link: LinkSender,
    /// `barge_in` event rows written so far (at most [`MAX_BARGE_IN_ROWS`]).
    barge_in_rows: AtomicU32,
    out: Mutex<OutState>,
    app: Arc<BridgeServices>,
}

/// Frames (and marks) computed under the outbound lock, to be written to Twilio.
struct Batch {
    texts: Vec<String>,
    frames: usize,
}

impl Bridge {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn to_monitor(&self, text: String) {
        if self.link.text(text) == Queued::Overflowed {
            warn!(
                limit_bytes = MAX_LINK_BACKLOG_BYTES,
                "the monitor stopped reading model events; closing the bridged session"
            );
            metrics::counter!(metric_names::STREAMS, "outcome" => "monitor_backlog").increment(1);
        }
    }

    /// Reports the end of the model connection to the monitor, once.
    fn close_link(&self, clean: bool) {
        self.link.close(clean);
    }

    fn mark(&self, batch: &mut Batch, name: &str) {
        batch
            .texts
            .push(ServerMessage::mark(self.stream_sid.clone(), name).to_json());
        FrameStats::bump(&self.stats.marks_sent);
    }

    /// Appends every complete frame of `st.audio` to `batch`; how many.
    fn drain_frames(&self, st: &mut OutState, batch: &mut Batch) -> usize {
        let mut n = 0;
        while let Some(f) = st.audio.next_frame() {
            batch.texts.push(self.frames.frame(f));
            n += 1;
        }
        batch.frames += n;
        n
    }

    /// After `n` frames of `(response_id, item_id)`: the mark, and `output_audio_buffer.started`
    /// for the response's first audio.
    fn frames_sent(
        &self,
        st: &mut OutState,
        batch: &mut Batch,
        response_id: &str,
        item_id: &str,
        n: usize,
    ) {
        if n == 0 {
            return;
        }
        let (mark, first) =
            st.playback
                .on_audio_sent(response_id, item_id, frames_ms(n), Instant::now());
        if first {
            self.to_monitor(events::audio_started(response_id));
        }
        self.mark(batch, &mark);
    }

    /// Flushes the partial frame of the current item and its frames' mark.
    fn finish_current(&self, st: &mut OutState, batch: &mut Batch) {
        let Some((response_id, item_id)) = st.current.take() else {
            return;
        };
        if let Err(MediaError::OddPcmLength { .. }) = st.audio.finish() {
            self.stats.odd_pcm();
        }
        let n = self.drain_frames(st, batch);
        self.frames_sent(st, batch, &response_id, &item_id, n);
    }

    /// Writes a batch to Twilio (the caller holds the writer lock) and counts it.
    async fn write(&self, sink: &mut TwilioSink, batch: Batch, received: Option<Instant>) {
        if batch.texts.is_empty() {
            return;
        }
        if write_all(sink, batch.texts).await {
            self.stats.frames_out(batch.frames);
            if let Some(at) = received.filter(|_| batch.frames > 0) {
                self.stats.latency(Direction::Outbound, at.elapsed());
            }
        }
    }

    async fn finish_response(&self, response_id: &str) {
        let mut sink = self.twilio.lock().await;
        let mut batch = Batch {
            texts: Vec::new(),
            frames: 0,
        };
        {
            let mut st = self.lock();
            if st
                .current
                .as_ref()
                .is_some_and(|(r, _)| r.as_str() == response_id)
            {
                self.finish_current(&mut st, &mut batch);
            }
            match st.playback.on_response_audio_done(response_id) {
                ResponseEnd::Mark(name) => self.mark(&mut batch, &name),
                ResponseEnd::AlreadyPlayed => {
                    self.to_monitor(events::audio_stopped(response_id));
                }
                ResponseEnd::NotPlaying => {}
            }
        }
        self.write(&mut sink, batch, None).await;
    }

    async fn on_delta(&self, peek: &ModelPeek<'_>, received: Instant) {
        FrameStats::bump(&self.stats.deltas);
        let (Some(delta), Some(item_id)) = (peek.delta.as_deref(), peek.item_id.as_deref()) else {
            self.stats.malformed();
            return;
        };
        let response_id = peek.response_id.as_deref().unwrap_or_default();
        let mut sink = self.twilio.lock().await;
        let mut batch = Batch {
            texts: Vec::with_capacity(8),
            frames: 0,
        };
        {
            let mut st = self.lock();
            if st.suppressed.contains(item_id) {
                self.stats.dropped_delta();
                return;
            }
            if st
                .current
                .as_ref()
                .is_some_and(|(_, i)| i.as_str() != item_id)
            {
                // A new item while the previous one was not finished: do not mix their samples.
                self.finish_current(&mut st, &mut batch);
            }
            if st.audio.push(delta).is_err() {
                self.stats.bad_audio();
            } else {
                if st.current.is_none() {
                    st.current = Some((response_id.to_string(), item_id.to_string()));
                }
                let n = self.drain_frames(&mut st, &mut batch);
                self.frames_sent(&mut st, &mut batch, response_id, item_id, n);
            }
        }
        self.write(&mut sink, batch, Some(received)).await;
    }

    /// Writes one client event to the model socket.
    async fn send_model(&self, text: String) -> Result<(), String> {
        self.model
            .lock()
            .await
            .send(tung::Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Barge-in: clear Twilio's buffer, truncate what was not heard, drop the rest of the cut
    /// items. Nothing happens when no agent audio is queued at Twilio.
    async fn interrupt(&self, cause: &'static str) {
        let mut sink = self.twilio.lock().await;
        let cut = {
            let mut st = self.lock();
            let Some(cut) = st.playback.interrupt(Instant::now()) else {
                return;
            };
            st.audio.reset();
            if let Some((_, item)) = st.current.take() {
                st.suppressed.insert(item);
            }
            for (item, _) in &cut.truncates {
                st.suppressed.insert(item.clone());
            }
            for r in &cut.stopped {
                self.to_monitor(events::audio_stopped(r));
            }
            cut
        };
        let clear = ServerMessage::clear(self.stream_sid.clone()).to_json();
        let _ = sink.send(ws::Message::Text(clear.into())).await;
        drop(sink);
        for (item, ms) in &cut.truncates {
            let _ = self.send_model(events::truncate(item, *ms)).await;
        }
        self.stats.barge_in(cut.truncates.len());
        let detail = json!({
            "cause": cause,
            "truncated": cut.truncates.iter().map(|(i, ms)| json!({"item_id": i, "audio_end_ms": ms})).collect::<Vec<_>>(),
        });
        info!(cause, "barge-in: agent audio cleared");
        // Every barge-in is counted in the stream's summary; only the first ones get a row.
        if take_row(&self.barge_in_rows, MAX_BARGE_IN_ROWS) {
            let app = self.app.clone();
            let event = CallEvent::new(&self.call_id, "barge_in", detail);
            tokio::spawn(async move { append(&app, event).await });
        }
    }

    /// One Realtime server event.
    async fn on_model_text(&self, text: &str, received: Instant) {
        let peek = match ModelPeek::parse(text) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed();
                return;
            }
        };
        match peek.kind.as_ref() {
            kinds::AUDIO_DELTA => {
                self.on_delta(&peek, received).await;
                return;
            }
            kinds::AUDIO_DONE => {
                if let Some(r) = peek.response_id.as_deref() {
                    self.finish_response(r).await;
                }
            }
            kinds::RESPONSE_DONE => {
                if let Some(r) = peek.response.as_ref().map(|r| r.id.as_str()) {
                    self.finish_response(r).await;
                }
            }
            kinds::SPEECH_STARTED => self.interrupt("speech_started").await,
            _ => {}
        }
        self.to_monitor(text.to_string());
    }

    fn on_mark(&self, name: &str) {
        let mut st = self.lock();
        if let Echo::Played {
            finished_response, ..
        } = st.playback.on_mark_echo(name, Instant::now())
        {
            FrameStats::bump(&self.stats.marks_echoed);
            if let Some(r) = finished_response {
                self.to_monitor(events::audio_stopped(&r));
            }
        }
    }
}

#[async_trait::async_trait]
impl ModelWriter for Bridge {
    async fn send(&self, text: String) -> Result<(), String> {
        self.send_model(text).await
    }

    async fn cut_playback(&self) {
        self.interrupt("response_cancel").await;
    }
}

/// What ended the Twilio reader loop.
enum TwilioEnd {
    /// `stop`, a close frame, EOF or a transport error.
    Stream(&'static str),
    /// The monitor finished first, with its record.
    Monitor(Option<Box<CallRecord>>),
}

/// Serves one Media Streams connection until the call's bridge ends.
pub async fn run(app: Arc<BridgeServices>, socket: WebSocket) {
    let (mut tw_sink, mut tw_stream) = socket.split();
    let Some(start) = wait_for_start(&mut tw_stream).await else {
        metrics::counter!(metric_names::STREAMS, "outcome" => "no_start").increment(1);
        warn!("media stream ended before a valid start message");
        close_twilio(&mut tw_sink).await;
        return;
    };
    let call_id = start.call_sid.clone();
    let span = info_span!("call", call_id = %call_id);
    async move {
        // Boxed: `prepare` holds the model WebSocket connect (~37 KB of future state), which
        // would otherwise stay reserved in this task for the whole stream.
        match Box::pin(prepare(&app, &start)).await {
            Ok(prepared) => bridge(app, start, prepared, tw_sink, tw_stream).await,
            Err(NotBridged::Refused(refusal, known_call)) => {
                refused(&app, &start, refusal, known_call).await;
                let reason = format!("stream refused: {}", refusal.as_str());
                close_twilio_with(&mut tw_sink, CLOSE_POLICY, reason).await;
            }
            Err(NotBridged::ModelUnavailable) => close_twilio(&mut tw_sink).await,
        }
    }
    .instrument(span)
    .await;
}

/// At most this many characters of a stream-supplied identifier go into an event.
const ECHO_CHARS: usize = 64;

/// Logs, counts and (when the call is ours) records a refused stream.
async fn refused(
    app: &BridgeServices,
    start: &StartInfo,
    refusal: Refusal,
    known_call: Option<String>,
) {
    warn!(
        reason = refusal.as_str(),
        stream_sid = %start.stream_sid.chars().take(ECHO_CHARS).collect::<String>(),
        "media stream refused; no Realtime session opened"
    );
    metrics::counter!(metric_names::STREAMS, "outcome" => "refused", "reason" => refusal.as_str())
        .increment(1);
    // The event goes on a call we have a record of, never on an id the stream made up (a
    // replayed upgrade must not create rows).
    let call_id = match known_call {
        Some(c) => Some(c),
        None if refusal == Refusal::StoreUnavailable => None,
        None => app
            .calls
            .store
            .get_call(&start.call_sid)
            .await
            .ok()
            .flatten()
            .map(|r| r.call_id),
    };
    if let Some(call_id) = call_id {
        let echo = |v: &str| v.chars().take(ECHO_CHARS).collect::<String>();
        event(
            app,
            &call_id,
            "media_stream_refused",
            json!({
                "reason": refusal.as_str(),
                "stream_sid": echo(&start.stream_sid),
                "call_sid": echo(&start.call_sid),
                "account_sid": echo(&start.account_sid),
            }),
        )
        .await;
    }
}

/// The parts of `start` the bridge uses.
struct StartInfo {
    call_sid: String,
    account_sid: String,
    stream_sid: String,
    params: std::collections::BTreeMap<String, String>,
    /// When `start` was read.
    at: Instant,
}

async fn wait_for_start(stream: &mut SplitStream<WebSocket>) -> Option<StartInfo> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .ok()??;
        match msg.ok()? {
            ws::Message::Text(t) => match TwilioMessage::parse(t.as_str()) {
                Ok(TwilioMessage::Start(s)) => {
                    return Some(StartInfo {
                        call_sid: s.start.call_sid,
                        account_sid: s.start.account_sid,
                        stream_sid: s.stream_sid,
                        params: s.start.custom_parameters,
                        at: Instant::now(),
                    });
                }
                Ok(TwilioMessage::Stop(_)) => return None,
                Ok(other) => debug!(event = other.event(), "before start: skipped"),
                Err(_) => debug!("before start: non-JSON frame skipped"),
            },
            ws::Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Everything decided before the bridge runs.
struct Prepared {
    record: CallRecord,
    profile: Arc<Profile>,
    model: ModelStream,
}

/// Why [`prepare`] did not bridge the stream.
enum NotBridged {
    /// Refused before any Realtime session; the call we hold a record of, when known.
    Refused(Refusal, Option<String>),
    /// The Realtime session could not be opened (already recorded on the call).
    ModelUnavailable,
}

/// Redeems the stream token and checks its grant against the `start` message.
async fn redeem(app: &BridgeServices, start: &StartInfo) -> Result<StreamGrant, NotBridged> {
    let refuse = |r| NotBridged::Refused(r, None);
    let token = start
        .params
        .get(params::STREAM_TOKEN)
        .ok_or(refuse(Refusal::NoToken))?;
    let grant = match app.calls.store.redeem_stream_token(token, Utc::now()).await {
        Ok(Some(grant)) => grant,
        Ok(None) => return Err(refuse(Refusal::InvalidToken)),
        Err(e) => {
            warn!(error = %e, "cannot redeem the stream token; refusing the stream");
            metrics::counter!(names::STORE_ERRORS, "op" => "redeem_stream_token").increment(1);
            return Err(refuse(Refusal::StoreUnavailable));
        }
    };
    let call_ok = grant
        .call_sid
        .as_deref()
        .is_none_or(|sid| sid == start.call_sid);
    if grant.account_sid != start.account_sid || !call_ok {
        return Err(NotBridged::Refused(Refusal::CallMismatch, grant.call_sid));
    }
    Ok(grant)
}

/// True when `record` is the call `grant` was made for: same profile and direction; an outbound
/// grant (no `CallSid` yet) also the same callee.
fn record_matches(record: &CallRecord, grant: &StreamGrant) -> bool {
    let direction = record.media.as_ref().map(|m| m.direction.as_str());
    record.profile == grant.profile
        && direction.is_none_or(|d| d == grant.direction)
        && (grant.call_sid.is_some() || record.dialed == grant.dialed)
}

/// Redeems the token, claims the record, takes the profile from it, connects the model.
async fn prepare(app: &Arc<BridgeServices>, start: &StartInfo) -> Result<Prepared, NotBridged> {
    if app.calls.registry().contains(&start.call_sid) {
        warn!("a stream for this call is already bridged here; refusing the second one");
        return Err(NotBridged::Refused(
            Refusal::AlreadyBridged,
            Some(start.call_sid.clone()),
        ));
    }
    let grant = redeem(app, start).await?;
    let known = || Some(start.call_sid.clone());
    let mut record = match app.calls.store.get_call(&start.call_sid).await {
        Ok(Some(r)) if r.state != CallState::Accepting => {
            warn!(state = %r.state, "media stream for a call that is not waiting for one; refused");
            return Err(NotBridged::Refused(Refusal::NotWaiting, known()));
        }
        Ok(Some(r)) if !record_matches(&r, &grant) => {
            warn!("the stream token was granted for another call; refused");
            return Err(NotBridged::Refused(Refusal::CallMismatch, known()));
        }
        Ok(Some(r)) => r,
        Ok(None) => {
            // Ours (the grant proves it) but not stored: the voice webhook's or the outbound
            // placement's write failed or has not landed yet.
            let mut r = CallRecord::new(
                &start.call_sid,
                Api::TwilioMedia,
                "twilio-stream",
                Utc::now(),
            );
            r.profile = grant.profile.clone();
            r.dialed = grant.dialed.clone();
            if let Err(e) = app.calls.store.create_call(&r).await {
                warn!(error = %e, "cannot store the call record; bridging anyway");
                metrics::counter!(names::STORE_ERRORS, "op" => "create_call").increment(1);
            }
            r
        }
        Err(e) => {
            warn!(error = %e, "cannot read the call record; refusing the stream");
            metrics::counter!(names::STORE_ERRORS, "op" => "get_call").increment(1);
            return Err(NotBridged::Refused(Refusal::StoreUnavailable, None));
        }
    };
    let profile = {
        let profiles = app.calls.profiles.load();
        match profiles.get(&record.profile) {
            Some(p) => p.clone(),
            None => {
                // Removed by a reload since the call was answered: choose again from the
                // record's own parties.
                warn!(profile = %record.profile, "the call's profile is gone; selecting again");
                let parties = CallParties {
                    caller: record.caller.as_deref().and_then(|n| E164::parse(n).ok()),
                    dialed: record.dialed.as_deref().and_then(|n| E164::parse(n).ok()),
                    ..CallParties::default()
                };
                profiles.select(&parties, &[]).clone()
            }
        }
    };
    let direction = grant.direction.as_str();
    record.api = Api::TwilioMedia;
    record.profile = profile.name.clone();
    let media = record.media.get_or_insert_with(MediaInfo::default);
    media.direction = direction.to_string();
    media.audio = profile.session.audio.as_str().to_string();
    media.stream_sid = Some(start.stream_sid.clone());

    let connected = connect_model(
        &app.calls.config.openai.sideband_url,
        &profile.session.model,
        &app.calls.monitors.api_key,
    )
    .await;
    let mut model = match connected {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "cannot open the Realtime session; ending the call");
            metrics::counter!(metric_names::STREAMS, "outcome" => "model_unavailable").increment(1);
            record.state = CallState::Ended;
            record.ended_at = Some(Utc::now());
            record.end_reason = Some("model_unavailable".into());
            save(app, &record).await;
            event(
                app,
                &record.call_id,
                "model_connect_failed",
                json!({ "error": e.to_string() }),
            )
            .await;
            metrics::counter!(names::CALLS_ENDED, "state" => "ended", "reason" => "model_unavailable").increment(1);
            return Err(NotBridged::ModelUnavailable);
        }
    };
    if let Err(e) = model
        .send(tung::Message::text(events::session_update(&profile)))
        .await
    {
        warn!(error = %e, "session.update could not be sent");
    }
    record.state = CallState::Active;
    record.accepted_at = Some(Utc::now());
    Ok(Prepared {
        record,
        profile,
        model,
    })
}

async fn bridge(
    app: Arc<BridgeServices>,
    start: StartInfo,
    prepared: Prepared,
    tw_sink: SplitSink<WebSocket, ws::Message>,
    mut tw_stream: SplitStream<WebSocket>,
) {
    let Prepared {
        record,
        profile,
        model,
    } = prepared;
    let mode = profile.session.audio;
    save(&app, &record).await;
    event(
        &app,
        &record.call_id,
        "stream_started",
        json!({
            "stream_sid": start.stream_sid,
            "audio": mode.as_str(),
            "direction": record.media.as_ref().map(|m| m.direction.clone()),
        }),
    )
    .await;
    info!(audio = mode.as_str(), profile = %profile.name, "media stream bridged");

    let stats = Arc::new(FrameStats::new());
    let (link_tx, link_rx) = media_link_channel(MAX_LINK_BACKLOG_BYTES);
    let (model_sink, model_stream) = model.split();
    let bridge = Arc::new(Bridge {
        call_id: record.call_id.clone(),
        stream_sid: start.stream_sid.clone(),
        stats: stats.clone(),
        frames: MediaFrameWriter::new(&start.stream_sid),
        twilio: tokio::sync::Mutex::new(tw_sink),
        model: tokio::sync::Mutex::new(model_sink),
        link: link_tx,
        barge_in_rows: AtomicU32::new(0),
        out: Mutex::new(OutState {
            playback: Playback::new(),
            audio: Outbound::new(mode),
            suppressed: HashSet::new(),
            current: None,
        }),
        app: app.clone(),
    });
    let model_reader =
        tokio::spawn(read_model(bridge.clone(), model_stream).instrument(tracing::Span::current()));
    let link = MediaLink::new(link_rx, bridge.clone());
    let actions = Arc::new(TwilioActions {
        rest: app
            .twilio
            .as_ref()
            .expect("the media route is only served with Twilio configured")
            .rest
            .clone(),
        call_sid: record.call_id.clone(),
    });
    let started = monitor::spawn_with(
        app.calls.monitors.clone(),
        record.clone(),
        profile.clone(),
        Attach::Fresh,
        actions,
        async move { Ok(Box::new(link) as Box<dyn Link>) },
    );
    let Some(mut monitor) = started else {
        warn!("the call is already monitored here; refusing this stream");
        metrics::counter!(metric_names::STREAMS, "outcome" => "duplicate").increment(1);
        model_reader.abort();
        close_model(&mut *bridge.model.lock().await).await;
        close_twilio(&mut *bridge.twilio.lock().await).await;
        return;
    };
    metrics::counter!(metric_names::STREAMS, "outcome" => "bridged").increment(1);

    let mut inbound = Inbound::new(mode);
    let mut buf = String::new();
    let mut pacer = Pacer::with_backlog(PacerLimits::default(), start.at, Instant::now());
    let end = loop {
        tokio::select! {
            result = &mut monitor => break TwilioEnd::Monitor(result.ok().map(Box::new)),
            msg = tw_stream.next() => match msg {
                Some(Ok(ws::Message::Text(t))) => {
                    let mut inbound = InboundState { audio: &mut inbound, buf: &mut buf, pacer: &mut pacer };
                    if let Some(why) = on_twilio_text(&bridge, t.as_str(), &mut inbound).await {
                        break TwilioEnd::Stream(why);
                    }
                }
                Some(Ok(ws::Message::Binary(_))) => bridge.stats.malformed(),
                Some(Ok(ws::Message::Close(_))) | None => break TwilioEnd::Stream("closed"),
                Some(Err(e)) => {
                    debug!(error = %e, "Twilio socket error");
                    break TwilioEnd::Stream("socket_error");
                }
                Some(Ok(_)) => {}
            },
        }
    };
    if matches!(end, TwilioEnd::Stream(ABUSIVE_MEDIA)) {
        abusive(&app, &bridge, &pacer, start.at).await;
    }
    let (ended_by, final_record) = match end {
        TwilioEnd::Stream(why) => {
            info!(why, "Twilio stream ended");
            bridge.close_link(true);
            let rec = match tokio::time::timeout(MONITOR_GRACE, &mut monitor).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    warn!(error = %e, "monitor task failed");
                    None
                }
                Err(_) => {
                    warn!("monitor did not finish after the stream ended");
                    monitor.abort();
                    None
                }
            };
            (why, rec)
        }
        TwilioEnd::Monitor(rec) => ("monitor", rec.map(|r| *r)),
    };
    // Close both sockets: a close of the Twilio socket ends the call (nothing follows <Connect>).
    model_reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        close_model(&mut *bridge.model.lock().await).await;
        close_twilio(&mut *bridge.twilio.lock().await).await;
    })
    .await;
    drop(tw_stream);

    let mut rec = match final_record {
        Some(r) => r,
        None => app
            .calls
            .store
            .get_call(&record.call_id)
            .await
            .ok()
            .flatten()
            .unwrap_or(record),
    };
    finalize(&app, &mut rec, &stats, ended_by).await;
}

/// A stream found abusive by the pacer: closed at once (1008, no more caller audio is read),
/// recorded (`media_abusive` event, `voxmachina_bridge_abusive_streams_total`); the record's
/// end reason becomes [`ABUSIVE_MEDIA`] in [`finalize`].
async fn abusive(app: &BridgeServices, bridge: &Bridge, pacer: &Pacer, started: Instant) {
    let elapsed = started.elapsed();
    warn!(
        forwarded_ms = pacer.forwarded().as_millis(),
        dropped_ms = pacer.dropped().as_millis(),
        elapsed_ms = elapsed.as_millis(),
        "caller audio faster than real time: closing the stream as abusive"
    );
    metrics::counter!(metric_names::ABUSIVE).increment(1);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        close_twilio_with(
            &mut *bridge.twilio.lock().await,
            CLOSE_POLICY,
            "caller audio faster than real time".into(),
        ),
    )
    .await;
    event(
        app,
        &bridge.call_id,
        "media_abusive",
        json!({
            "forwarded_ms": u64::try_from(pacer.forwarded().as_millis()).unwrap_or(u64::MAX),
            "dropped_ms": u64::try_from(pacer.dropped().as_millis()).unwrap_or(u64::MAX),
            "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }),
    )
    .await;
}

/// Stats and closing out a record the monitor left live (extraction and the other after-call
/// work are the monitor's, as on the SIP path).
async fn finalize(
    app: &BridgeServices,
    rec: &mut CallRecord,
    stats: &FrameStats,
    ended_by: &'static str,
) {
    if rec.state.is_live() || rec.state == CallState::Accepting {
        rec.state = CallState::Ended;
        rec.ended_at = Some(Utc::now());
        let reason = if app.calls.monitors.shutdown.is_cancelled() {
            "controller_shutdown"
        } else {
            "bridge_ended"
        };
        rec.end_reason = Some(reason.into());
        metrics::counter!(names::CALLS_ENDED, "state" => "ended", "reason" => reason).increment(1);
    }
    if ended_by == ABUSIVE_MEDIA {
        rec.end_reason = Some(ABUSIVE_MEDIA.into());
    }
    let summary = stats.summary();
    let media = rec.media.get_or_insert_with(MediaInfo::default);
    media.stats = Some(summary.clone());
    save(app, rec).await;
    event(
        app,
        &rec.call_id,
        "stream_ended",
        json!({
            "ended_by": ended_by,
            "frames_in": summary.frames_in,
            "frames_out": summary.frames_out,
            "barge_ins": summary.barge_ins,
            "malformed": summary.malformed,
            "bad_audio": summary.bad_audio,
        }),
    )
    .await;
    info!(
        frames_in = summary.frames_in,
        frames_out = summary.frames_out,
        barge_ins = summary.barge_ins,
        malformed = summary.malformed,
        inbound_p99_us = summary.inbound_p99_us,
        outbound_p99_us = summary.outbound_p99_us,
        "media stream closed"
    );
}

/// The caller-audio state of the Twilio reader.
struct InboundState<'a> {
    audio: &'a mut Inbound,
    buf: &'a mut String,
    pacer: &'a mut Pacer,
}

/// Handles one Twilio text frame; `Some(reason)` ends the stream.
async fn on_twilio_text(
    bridge: &Bridge,
    text: &str,
    inbound: &mut InboundState<'_>,
) -> Option<&'static str> {
    let received = Instant::now();
    let Ok(peek) = TwilioPeek::parse(text) else {
        bridge.stats.malformed();
        return None;
    };
    if peek
        .stream_sid
        .as_deref()
        .is_some_and(|s| s != bridge.stream_sid)
    {
        bridge.stats.malformed();
        return None;
    }
    match peek.event.as_ref() {
        "media" => {
            let Some(media) = peek.media else {
                bridge.stats.malformed();
                return None;
            };
            if media.track.as_deref().is_some_and(|t| t != "inbound") {
                return None;
            }
            let audio = ulaw_duration(b64_decoded_len(&media.payload));
            match inbound.pacer.on_frame(audio, received) {
                Verdict::Forward => {}
                Verdict::Drop => {
                    metrics::counter!(metric_names::ERRORS, "kind" => "paced_drop").increment(1);
                    return None;
                }
                Verdict::Abusive => return Some(ABUSIVE_MEDIA),
            }
            match inbound.audio.append_event(&media.payload, inbound.buf) {
                Ok(0) => {}
                Ok(n) => {
                    bridge.stats.frame_in(n);
                    let text = std::mem::take(inbound.buf);
                    if bridge.send_model(text).await.is_ok() {
                        FrameStats::bump(&bridge.stats.appends);
                        bridge.stats.latency(Direction::Inbound, received.elapsed());
                    }
                }
                Err(_) => bridge.stats.bad_audio(),
            }
        }
        "mark" => match peek.mark {
            Some(m) => bridge.on_mark(&m.name),
            None => bridge.stats.malformed(),
        },
        "dtmf" => match peek.dtmf {
            Some(d) => {
                FrameStats::bump(&bridge.stats.dtmf);
                bridge.to_monitor(events::dtmf_received(&d.digit, Utc::now().timestamp()));
            }
            None => bridge.stats.malformed(),
        },
        "stop" => return Some("stop"),
        "connected" | "start" => {}
        _ => bridge.stats.malformed(),
    }
    None
}

async fn read_model(bridge: Arc<Bridge>, mut stream: SplitStream<ModelStream>) {
    let clean = loop {
        match stream.next().await {
            Some(Ok(tung::Message::Text(t))) => {
                bridge.on_model_text(t.as_str(), Instant::now()).await
            }
            Some(Ok(tung::Message::Close(frame))) => {
                debug!(?frame, "model closed the session");
                break true;
            }
            Some(Ok(tung::Message::Binary(_))) => bridge.stats.malformed(),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(error = %e, "model socket dropped");
                break false;
            }
            None => break false,
        }
    };
    bridge.close_link(clean);
}

async fn close_twilio(sink: &mut TwilioSink) {
    close_twilio_with(sink, 1000, String::new()).await;
}

/// Sends a close frame with `code` and `reason` (at most 123 bytes, RFC 6455 §5.5) and closes.
async fn close_twilio_with(sink: &mut TwilioSink, code: u16, reason: String) {
    let frame = ws::CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = sink.send(ws::Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

async fn close_model(sink: &mut ModelSink) {
    let frame = tung::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(tung::Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

/// Writes `texts` to the Twilio socket with one flush; false when the socket is gone.
async fn write_all(sink: &mut TwilioSink, texts: Vec<String>) -> bool {
    let n = texts.len();
    for (i, t) in texts.into_iter().enumerate() {
        let msg = ws::Message::Text(t.into());
        let res = if i + 1 == n {
            sink.send(msg).await
        } else {
            sink.feed(msg).await
        };
        if res.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barge_in_rows_stop_at_the_cap_but_keep_counting() {
        let taken = AtomicU32::new(0);
        let rows = (0..MAX_BARGE_IN_ROWS + 50)
            .filter(|_| take_row(&taken, MAX_BARGE_IN_ROWS))
            .count();
        assert_eq!(rows, MAX_BARGE_IN_ROWS as usize);
        assert_eq!(taken.load(Ordering::SeqCst), MAX_BARGE_IN_ROWS + 50);
    }

    fn grant(call_sid: Option<&str>, direction: &str, dialed: Option<&str>) -> StreamGrant {
        StreamGrant {
            call_sid: call_sid.map(str::to_string),
            account_sid: "AC1".into(),
            profile: "support".into(),
            direction: direction.into(),
            dialed: dialed.map(str::to_string),
            created_at: Utc::now(),
        }
    }

    fn record(profile: &str, direction: &str, dialed: Option<&str>) -> CallRecord {
        let mut r = CallRecord::new("CA1", Api::TwilioMedia, "twilio-voice", Utc::now());
        r.profile = profile.into();
        r.dialed = dialed.map(str::to_string);
        r.media = Some(MediaInfo {
            direction: direction.into(),
            ..MediaInfo::default()
        });
        r
    }

    #[test]
    fn a_record_matches_only_the_call_it_was_granted_for() {
        let inbound = grant(Some("CA1"), "inbound", None);
        assert!(record_matches(
            &record("support", "inbound", Some("+18005550100")),
            &inbound
        ));
        assert!(!record_matches(&record("sales", "inbound", None), &inbound));
        assert!(!record_matches(
            &record("support", "outbound", None),
            &inbound
        ));
        // Outbound grants have no CallSid: the callee binds them.
        let outbound = grant(None, "outbound", Some("+14155550123"));
        assert!(record_matches(
            &record("support", "outbound", Some("+14155550123")),
            &outbound
        ));
        assert!(!record_matches(
            &record("support", "outbound", Some("+14155550199")),
            &outbound
        ));
        assert!(!record_matches(
            &record("support", "inbound", Some("+14155550123")),
            &outbound
        ));
    }

    #[test]
    fn refusal_labels() {
        for (r, label) in [
            (Refusal::NoToken, "no_token"),
            (Refusal::InvalidToken, "invalid_token"),
            (Refusal::CallMismatch, "call_mismatch"),
            (Refusal::NotWaiting, "not_waiting"),
            (Refusal::AlreadyBridged, "already_bridged"),
            (Refusal::StoreUnavailable, "store_unavailable"),
        ] {
            assert_eq!(r.as_str(), label);
            // A close reason must fit in a control frame (RFC 6455 §5.5: 123 bytes).
            assert!(format!("stream refused: {label}").len() <= 123);
        }
    }
}
