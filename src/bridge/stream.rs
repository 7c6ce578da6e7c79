//! One bridged call: the Twilio Media Streams socket (already upgraded and signature-checked by
//! [`super::http`]) and the OpenAI Realtime socket, pumped by split tasks.
//!
//! Tasks per call:
//!
//! - **Twilio reader** (the stream's own task): `media` → [`Inbound`] → `input_audio_buffer.append`
//!   queued to the model writer; `mark` → [`Playback`]; `dtmf` → the monitor; `stop` or a closed
//!   socket ends the bridge. It also awaits the monitor, whichever ends first.
//! - **Model reader**: `response.output_audio.delta` → [`Outbound`] → 160-byte Twilio frames and
//!   a mark queued to the Twilio writer; `input_audio_buffer.speech_started` → barge-in; every
//!   other event → the monitor's [`MediaLink`].
//! - **Twilio writer** and **model writer**: own the socket sinks, write queued frames in batches
//!   (one flush per batch) and record the bridge time of stamped messages ([`FrameStats`]).
//! - **Monitor**: [`crate::calls::monitor::spawn_with`] over [`MediaLink`] and
//!   [`TwilioActions`].
//!
//! Frames to Twilio are queued while holding the outbound lock, so a `clear` can never overtake
//! (or be overtaken by) frames computed before it.
//!
//! Start-up: wait up to [`START_TIMEOUT`] for `start` (after `connected`); take the profile from
//! the `profile` parameter (else select it from `from`/`to` as the SIP path does); the call
//! record must be `accepting` or absent (then it is created); connect
//! `{openai.sideband_url}?model={profile model}` with the bearer key and send
//! [`events::session_update`]; mark the record `active`; spawn the monitor (greeting first, as on
//! the SIP path). If the model cannot be reached the record ends `model_unavailable` and the
//! Twilio socket is closed, which ends the call (no TwiML follows `<Connect>`).
//!
//! End: Twilio `stop`/close → the link reports a clean close → the monitor finishes (`call_ended`,
//! or `transferred` when a transfer was awaiting its outcome). The monitor finishing first (hang-up,
//! `end_call`, max duration, model lost, shutdown) → both sockets are closed. Then the record gets
//! the frame statistics and `[extract]` values; a call the monitor left live (controller shutdown)
//! is ended `controller_shutdown`, since a media stream cannot be reattached.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{self, WebSocket};
use chrono::Utc;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self as tung};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::audio::{Inbound, MediaFrameWriter, Outbound, frames_ms};
use super::events::{self, ModelPeek, TwilioPeek, kinds};
use super::link::{MediaLink, TwilioActions};
use super::metric_names;
use super::params;
use super::playback::{Echo, Playback, ResponseEnd};
use super::stats::{Direction, FrameStats};
use crate::app::AppState;
use crate::calls::link::{Link, LinkEvent};
use crate::calls::monitor::{self, Attach};
use crate::calls::record::{Api, CallEvent, CallRecord, CallState, MediaInfo};
use crate::config::Secret;
use crate::media::MediaError;
use crate::openai::sideband::SidebandError;
use crate::prompts::Profile;
use crate::sip::{CallParties, E164};
use crate::telemetry::names;
use crate::twilio::media::{ServerMessage, TwilioMessage};

/// How long to wait for Twilio's `start` message after the upgrade.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the monitor to finish after the Twilio stream ended.
pub const MONITOR_GRACE: Duration = Duration::from_secs(30);
/// Capacity of the queue to the model writer (appends wait when it is full: backpressure on the
/// Twilio socket rather than unbounded memory).
pub const MODEL_QUEUE: usize = 512;

/// The model socket.
pub type ModelStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A message for one of the writer tasks.
#[derive(Debug)]
pub struct Outgoing {
    kind: OutKind,
    stamp: Option<(Instant, Direction)>,
}

#[derive(Debug)]
enum OutKind {
    Text(String),
    Close,
}

impl Outgoing {
    /// A text frame.
    pub fn text(text: String) -> Self {
        Self {
            kind: OutKind::Text(text),
            stamp: None,
        }
    }

    /// A text frame whose bridge time (from `received`) is recorded once it is written.
    pub fn stamped(text: String, received: Instant, dir: Direction) -> Self {
        Self {
            kind: OutKind::Text(text),
            stamp: Some((received, dir)),
        }
    }

    /// A close frame (1000); the writer stops after it.
    pub fn close() -> Self {
        Self {
            kind: OutKind::Close,
            stamp: None,
        }
    }
}

/// Opens the Realtime WebSocket `{base_url}?model={model}` with `Authorization: Bearer` (the
/// same base URL as the sideband, openai.md §6: without `call_id`, with `model`).
///
/// # Errors
/// [`SidebandError::Unauthorized`] for 401/403, [`SidebandError::Transport`] otherwise.
pub async fn connect_model(
    base_url: &str,
    model: &str,
    api_key: &Secret,
) -> Result<ModelStream, SidebandError> {
    let mut url =
        reqwest::Url::parse(base_url).map_err(|e| SidebandError::Transport(e.to_string()))?;
    url.query_pairs_mut().append_pair("model", model);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| SidebandError::Transport(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
        .map_err(|_| SidebandError::Transport("API key is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", auth);
    match tokio_tungstenite::connect_async(request).await {
        Ok((stream, _)) => Ok(stream),
        Err(tung::Error::Http(resp)) => match resp.status() {
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(SidebandError::Unauthorized(s.as_u16()))
            }
            s => Err(SidebandError::Transport(format!("upgrade answered {s}"))),
        },
        Err(e) => Err(SidebandError::Transport(e.to_string())),
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
    to_twilio: mpsc::UnboundedSender<Outgoing>,
    to_model: mpsc::Sender<Outgoing>,
    link: mpsc::UnboundedSender<LinkEvent>,
    link_closed: AtomicBool,
    out: Mutex<OutState>,
    app: Arc<AppState>,
}

impl Bridge {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn to_monitor(&self, text: String) {
        let _ = self.link.send(LinkEvent::Text(text));
    }

    /// Reports the end of the model connection to the monitor, once.
    fn close_link(&self, clean: bool) {
        if !self.link_closed.swap(true, Ordering::SeqCst) {
            let _ = self.link.send(LinkEvent::Closed { clean });
        }
    }

    fn twilio(&self, out: Outgoing) {
        let _ = self.to_twilio.send(out);
    }

    fn send_mark(&self, name: &str) {
        self.twilio(Outgoing::text(
            ServerMessage::mark(self.stream_sid.clone(), name).to_json(),
        ));
        FrameStats::bump(&self.stats.marks_sent);
    }

    /// Queues every complete frame of `st.audio`; returns how many. The last one carries
    /// `stamp`.
    fn drain_frames(&self, st: &mut OutState, stamp: Option<Instant>) -> usize {
        let mut n = 0;
        let mut pending: Option<String> = None;
        while let Some(f) = st.audio.next_frame() {
            if let Some(prev) = pending.replace(self.frames.frame(f)) {
                self.twilio(Outgoing::text(prev));
            }
            n += 1;
        }
        if let Some(last) = pending {
            self.twilio(match stamp {
                Some(at) => Outgoing::stamped(last, at, Direction::Outbound),
                None => Outgoing::text(last),
            });
        }
        self.stats.frames_out(n);
        n
    }

    /// After `n` frames of `(response_id, item_id)` were queued: the mark, and
    /// `output_audio_buffer.started` for the response's first audio.
    fn frames_sent(&self, st: &mut OutState, response_id: &str, item_id: &str, n: usize) {
        if n == 0 {
            return;
        }
        let (mark, first) =
            st.playback
                .on_audio_sent(response_id, item_id, frames_ms(n), Instant::now());
        if first {
            self.to_monitor(events::audio_started(response_id));
        }
        self.send_mark(&mark);
    }

    /// Flushes the partial frame of the current item and closes its response's playback with a
    /// final mark.
    fn finish_current(&self, st: &mut OutState) {
        let Some((response_id, item_id)) = st.current.take() else {
            return;
        };
        if let Err(MediaError::OddPcmLength { .. }) = st.audio.finish() {
            self.stats.odd_pcm();
        }
        let n = self.drain_frames(st, None);
        self.frames_sent(st, &response_id, &item_id, n);
    }

    fn finish_response(&self, response_id: &str) {
        let mut st = self.lock();
        if st
            .current
            .as_ref()
            .is_some_and(|(r, _)| r.as_str() == response_id)
        {
            self.finish_current(&mut st);
        }
        match st.playback.on_response_audio_done(response_id) {
            ResponseEnd::Mark(name) => self.send_mark(&name),
            ResponseEnd::AlreadyPlayed => self.to_monitor(events::audio_stopped(response_id)),
            ResponseEnd::NotPlaying => {}
        }
    }

    fn on_delta(&self, peek: &ModelPeek<'_>, received: Instant) {
        FrameStats::bump(&self.stats.deltas);
        let (Some(delta), Some(item_id)) = (peek.delta.as_deref(), peek.item_id.as_deref()) else {
            self.stats.malformed();
            return;
        };
        let response_id = peek.response_id.as_deref().unwrap_or_default();
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
            self.finish_current(&mut st);
        }
        if st.audio.push(delta).is_err() {
            self.stats.bad_audio();
            return;
        }
        if st.current.is_none() {
            st.current = Some((response_id.to_string(), item_id.to_string()));
        }
        let n = self.drain_frames(&mut st, Some(received));
        self.frames_sent(&mut st, response_id, item_id, n);
    }

    /// Barge-in: clear Twilio's buffer, truncate what was not heard, drop the rest of the cut
    /// items. Nothing happens when no agent audio is queued at Twilio.
    fn interrupt(&self, cause: &'static str) {
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
        self.twilio(Outgoing::text(
            ServerMessage::clear(self.stream_sid.clone()).to_json(),
        ));
        for r in &cut.stopped {
            self.to_monitor(events::audio_stopped(r));
        }
        drop(st);
        for (item, ms) in &cut.truncates {
            let msg = Outgoing::text(events::truncate(item, *ms));
            if let Err(mpsc::error::TrySendError::Full(msg)) = self.to_model.try_send(msg) {
                let tx = self.to_model.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
        self.stats.barge_in(cut.truncates.len());
        let detail = json!({
            "cause": cause,
            "truncated": cut.truncates.iter().map(|(i, ms)| json!({"item_id": i, "audio_end_ms": ms})).collect::<Vec<_>>(),
        });
        info!(cause, "barge-in: agent audio cleared");
        let app = self.app.clone();
        let event = CallEvent::new(&self.call_id, "barge_in", detail);
        tokio::spawn(async move { append(&app, event).await });
    }

    /// One Realtime server event.
    fn on_model_text(&self, text: &str, received: Instant) {
        let peek = match ModelPeek::parse(text) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed();
                return;
            }
        };
        match peek.kind.as_ref() {
            kinds::AUDIO_DELTA => {
                self.on_delta(&peek, received);
                return;
            }
            kinds::AUDIO_DONE => {
                if let Some(r) = peek.response_id.as_deref() {
                    self.finish_response(r);
                }
            }
            kinds::RESPONSE_DONE => {
                if let Some(r) = peek.response.as_ref().map(|r| r.id.as_str()) {
                    self.finish_response(r);
                }
            }
            kinds::SPEECH_STARTED => self.interrupt("speech_started"),
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

/// What ended the Twilio reader loop.
enum TwilioEnd {
    /// `stop`, a close frame, EOF or a transport error.
    Stream(&'static str),
    /// The monitor finished first, with its record.
    Monitor(Option<Box<CallRecord>>),
}

/// Serves one Media Streams connection until the call's bridge ends.
pub async fn run(app: Arc<AppState>, socket: WebSocket) {
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
        let Some(prepared) = prepare(&app, &start).await else {
            metrics::counter!(metric_names::STREAMS, "outcome" => "refused").increment(1);
            close_twilio(&mut tw_sink).await;
            return;
        };
        bridge(app, start, prepared, tw_sink, tw_stream).await;
    }
    .instrument(span)
    .await;
}

/// The parts of `start` the bridge uses.
struct StartInfo {
    call_sid: String,
    stream_sid: String,
    params: std::collections::BTreeMap<String, String>,
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
                        stream_sid: s.stream_sid,
                        params: s.start.custom_parameters,
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

/// Chooses the profile, claims the record, connects the model. `None` = refuse the stream (the
/// reason is logged and, when there is a record, stored).
async fn prepare(app: &Arc<AppState>, start: &StartInfo) -> Option<Prepared> {
    let p = &start.params;
    let from = p.get(params::FROM).cloned().unwrap_or_default();
    let to = p.get(params::TO).cloned().unwrap_or_default();
    let direction = match p.get(params::DIRECTION).map(String::as_str) {
        Some("outbound") => "outbound",
        _ => "inbound",
    };
    let profile = {
        let profiles = app.profiles.load();
        match p.get(params::PROFILE).and_then(|n| profiles.get(n)) {
            Some(profile) => profile.clone(),
            None => {
                let parties = CallParties {
                    caller: E164::parse(&from).ok(),
                    dialed: E164::parse(&to).ok(),
                    ..CallParties::default()
                };
                profiles.select(&parties, &[]).clone()
            }
        }
    };
    if app.registry().contains(&start.call_sid) {
        warn!("a stream for this call is already bridged here; refusing the second one");
        return None;
    }
    let mut record = match app.store.get_call(&start.call_sid).await {
        Ok(Some(r)) if r.state == CallState::Accepting => r,
        Ok(Some(r)) => {
            warn!(state = %r.state, "media stream for a call that is not waiting for one; refused");
            return None;
        }
        Ok(None) => {
            let mut r = CallRecord::new(
                &start.call_sid,
                Api::TwilioMedia,
                "twilio-stream",
                Utc::now(),
            );
            r.profile = profile.name.clone();
            r.caller = E164::parse(&from).ok().map(|n| n.as_str().to_string());
            r.dialed = E164::parse(&to).ok().map(|n| n.as_str().to_string());
            if let Err(e) = app.store.create_call(&r).await {
                warn!(error = %e, "cannot store the call record; bridging anyway");
                metrics::counter!(names::STORE_ERRORS, "op" => "create_call").increment(1);
            }
            r
        }
        Err(e) => {
            warn!(error = %e, "cannot read the call record; bridging anyway");
            metrics::counter!(names::STORE_ERRORS, "op" => "get_call").increment(1);
            CallRecord::new(
                &start.call_sid,
                Api::TwilioMedia,
                "twilio-stream",
                Utc::now(),
            )
        }
    };
    record.api = Api::TwilioMedia;
    if record.profile.is_empty() {
        record.profile = profile.name.clone();
    }
    let media = record.media.get_or_insert_with(MediaInfo::default);
    media.direction = direction.to_string();
    media.audio = profile.session.audio.as_str().to_string();
    media.stream_sid = Some(start.stream_sid.clone());

    let connected = connect_model(
        &app.config.openai.sideband_url,
        &profile.session.model,
        &app.monitors.api_key,
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
            return None;
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
    Some(Prepared {
        record,
        profile,
        model,
    })
}

async fn bridge(
    app: Arc<AppState>,
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
    let (to_twilio, twilio_rx) = mpsc::unbounded_channel();
    let (to_model, model_rx) = mpsc::channel(MODEL_QUEUE);
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let bridge = Arc::new(Bridge {
        call_id: record.call_id.clone(),
        stream_sid: start.stream_sid.clone(),
        stats: stats.clone(),
        frames: MediaFrameWriter::new(&start.stream_sid),
        to_twilio,
        to_model: to_model.clone(),
        link: link_tx,
        link_closed: AtomicBool::new(false),
        out: Mutex::new(OutState {
            playback: Playback::new(),
            audio: Outbound::new(mode),
            suppressed: HashSet::new(),
            current: None,
        }),
        app: app.clone(),
    });
    let (model_sink, model_stream) = model.split();
    let twilio_writer = tokio::spawn(
        write_loop(tw_sink, Queue::Unbounded(twilio_rx), stats.clone())
            .instrument(tracing::Span::current()),
    );
    let model_writer = tokio::spawn(
        write_loop(model_sink, Queue::Bounded(model_rx), stats.clone())
            .instrument(tracing::Span::current()),
    );
    let model_reader =
        tokio::spawn(read_model(bridge.clone(), model_stream).instrument(tracing::Span::current()));
    let on_cancel = {
        let b = bridge.clone();
        Arc::new(move || b.interrupt("response_cancel")) as Arc<dyn Fn() + Send + Sync>
    };
    let link = MediaLink::new(link_rx, to_model.clone(), on_cancel);
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
        app.monitors.clone(),
        record.clone(),
        profile.clone(),
        Attach::Fresh,
        actions,
        async move { Ok(Box::new(link) as Box<dyn Link>) },
    );
    let Some(mut monitor) = started else {
        warn!("the call is already monitored here; refusing this stream");
        metrics::counter!(metric_names::STREAMS, "outcome" => "duplicate").increment(1);
        let _ = to_model.send(Outgoing::close()).await;
        bridge.twilio(Outgoing::close());
        model_reader.abort();
        return;
    };
    metrics::counter!(metric_names::STREAMS, "outcome" => "bridged").increment(1);

    let mut inbound = Inbound::new(mode);
    let mut buf = String::new();
    let end = loop {
        tokio::select! {
            result = &mut monitor => break TwilioEnd::Monitor(result.ok().map(Box::new)),
            msg = tw_stream.next() => match msg {
                Some(Ok(ws::Message::Text(t))) => {
                    if let Some(why) = on_twilio_text(&bridge, t.as_str(), &mut inbound, &mut buf).await {
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
    let _ = tokio::time::timeout(Duration::from_secs(1), to_model.send(Outgoing::close())).await;
    bridge.twilio(Outgoing::close());
    drop(to_model);
    let _ = tokio::time::timeout(Duration::from_secs(2), twilio_writer).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), model_writer).await;
    model_reader.abort();

    let mut rec = match final_record {
        Some(r) => r,
        None => app
            .store
            .get_call(&record.call_id)
            .await
            .ok()
            .flatten()
            .unwrap_or(record),
    };
    finalize(&app, &mut rec, &profile, &stats, ended_by).await;
}

/// Stats, extraction, and closing out a record the monitor left live.
async fn finalize(
    app: &AppState,
    rec: &mut CallRecord,
    profile: &Profile,
    stats: &FrameStats,
    ended_by: &'static str,
) {
    if rec.state.is_live() || rec.state == CallState::Accepting {
        rec.state = CallState::Ended;
        rec.ended_at = Some(Utc::now());
        let reason = if app.monitors.shutdown.is_cancelled() {
            "controller_shutdown"
        } else {
            "bridge_ended"
        };
        rec.end_reason = Some(reason.into());
        metrics::counter!(names::CALLS_ENDED, "state" => "ended", "reason" => reason).increment(1);
    }
    let summary = stats.summary();
    let extracted = if profile.extract.is_empty() {
        Default::default()
    } else {
        match app.store.transcript(&rec.call_id).await {
            Ok(lines) => super::extract::extract(&profile.extract, &lines),
            Err(e) => {
                warn!(error = %e, "cannot read the transcript for [extract]");
                Default::default()
            }
        }
    };
    let media = rec.media.get_or_insert_with(MediaInfo::default);
    media.stats = Some(summary.clone());
    media.extracted = extracted;
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

/// Handles one Twilio text frame; `Some(reason)` ends the stream.
async fn on_twilio_text(
    bridge: &Bridge,
    text: &str,
    inbound: &mut Inbound,
    buf: &mut String,
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
            match inbound.append_event(&media.payload, buf) {
                Ok(0) => {}
                Ok(n) => {
                    bridge.stats.frame_in(n);
                    let msg = Outgoing::stamped(std::mem::take(buf), received, Direction::Inbound);
                    if bridge.to_model.send(msg).await.is_ok() {
                        FrameStats::bump(&bridge.stats.appends);
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
            Some(Ok(tung::Message::Text(t))) => bridge.on_model_text(t.as_str(), Instant::now()),
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

/// The writer's queue: bounded (model: backpressure) or unbounded (Twilio: ordered under a lock).
enum Queue {
    Bounded(mpsc::Receiver<Outgoing>),
    Unbounded(mpsc::UnboundedReceiver<Outgoing>),
}

impl Queue {
    async fn recv(&mut self) -> Option<Outgoing> {
        match self {
            Self::Bounded(rx) => rx.recv().await,
            Self::Unbounded(rx) => rx.recv().await,
        }
    }

    fn try_recv(&mut self) -> Option<Outgoing> {
        match self {
            Self::Bounded(rx) => rx.try_recv().ok(),
            Self::Unbounded(rx) => rx.try_recv().ok(),
        }
    }
}

/// The two WebSocket message types the writers produce.
trait WsMessage: Sized {
    fn text(text: String) -> Self;
    fn close() -> Self;
}

impl WsMessage for ws::Message {
    fn text(text: String) -> Self {
        ws::Message::Text(text.into())
    }
    fn close() -> Self {
        ws::Message::Close(Some(ws::CloseFrame {
            code: 1000,
            reason: ws::Utf8Bytes::from_static(""),
        }))
    }
}

impl WsMessage for tung::Message {
    fn text(text: String) -> Self {
        tung::Message::text(text)
    }
    fn close() -> Self {
        tung::Message::Close(Some(tung::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
    }
}

/// Writes queued messages, feeding everything queued and flushing once per batch, then records
/// the bridge time of the batch's stamped messages.
async fn write_loop<S, M>(mut sink: S, mut queue: Queue, stats: Arc<FrameStats>)
where
    S: Sink<M> + Unpin,
    M: WsMessage,
{
    let mut stamps: Vec<(Instant, Direction)> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take().or_else(|| queue.try_recv()) {
            match out.kind {
                OutKind::Text(t) => {
                    if sink.feed(M::text(t)).await.is_err() {
                        return;
                    }
                    if let Some(s) = out.stamp {
                        stamps.push(s);
                    }
                }
                OutKind::Close => {
                    let _ = sink.send(M::close()).await;
                    let _ = sink.close().await;
                    return;
                }
            }
            if stamps.len() >= 256 {
                break;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        let now = Instant::now();
        for (at, dir) in stamps.drain(..) {
            stats.latency(dir, now.saturating_duration_since(at));
        }
    }
    let _ = sink.close().await;
}

async fn close_twilio(sink: &mut SplitSink<WebSocket, ws::Message>) {
    let _ = sink.send(<ws::Message as WsMessage>::close()).await;
    let _ = sink.close().await;
}

async fn save(app: &AppState, record: &CallRecord) {
    if let Err(e) = app.store.update_call(record).await {
        warn!(error = %e, "cannot store call record");
        metrics::counter!(names::STORE_ERRORS, "op" => "update_call").increment(1);
    }
}

async fn event(app: &AppState, call_id: &str, kind: &str, detail: serde_json::Value) {
    append(app, CallEvent::new(call_id, kind, detail)).await;
}

async fn append(app: &AppState, event: CallEvent) {
    if let Err(e) = app.store.append_event(&event).await {
        warn!(error = %e, "cannot store call event");
        metrics::counter!(names::STORE_ERRORS, "op" => "append_event").increment(1);
    }
}
