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
//! the frame statistics (extraction is the monitor's after-call work); a call the monitor left live (controller shutdown)
//! is ended `controller_shutdown`, since a media stream cannot be reattached.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{self, WebSocket};
use chrono::Utc;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self as tung};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::audio::{Inbound, MediaFrameWriter, Outbound, frames_ms};
use super::events::{self, ModelPeek, TwilioPeek, kinds};
use super::link::{MediaLink, ModelWriter, TwilioActions};
use super::metric_names;
use super::params;
use super::playback::{Echo, Playback, ResponseEnd};
use super::stats::{Direction, FrameStats};
use crate::app::AppState;
use crate::calls::link::{Link, LinkEvent};
use crate::calls::monitor::{self, Attach};
use crate::calls::persist::{append, event, save};
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
    link: mpsc::UnboundedSender<LinkEvent>,
    link_closed: AtomicBool,
    out: Mutex<OutState>,
    app: Arc<AppState>,
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
        let _ = self.link.send(LinkEvent::Text(text));
    }

    /// Reports the end of the model connection to the monitor, once.
    fn close_link(&self, clean: bool) {
        if !self.link_closed.swap(true, Ordering::SeqCst) {
            let _ = self.link.send(LinkEvent::Closed { clean });
        }
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
        let app = self.app.clone();
        let event = CallEvent::new(&self.call_id, "barge_in", detail);
        tokio::spawn(async move { append(&app, event).await });
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
        // Boxed: `prepare` holds the model WebSocket connect (~37 KB of future state), which
        // would otherwise stay reserved in this task for the whole stream.
        let Some(prepared) = Box::pin(prepare(&app, &start)).await else {
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
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let (model_sink, model_stream) = model.split();
    let bridge = Arc::new(Bridge {
        call_id: record.call_id.clone(),
        stream_sid: start.stream_sid.clone(),
        stats: stats.clone(),
        frames: MediaFrameWriter::new(&start.stream_sid),
        twilio: tokio::sync::Mutex::new(tw_sink),
        model: tokio::sync::Mutex::new(model_sink),
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
        model_reader.abort();
        close_model(&mut *bridge.model.lock().await).await;
        close_twilio(&mut *bridge.twilio.lock().await).await;
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
            .store
            .get_call(&record.call_id)
            .await
            .ok()
            .flatten()
            .unwrap_or(record),
    };
    finalize(&app, &mut rec, &stats, ended_by).await;
}

/// Stats and closing out a record the monitor left live (extraction and the other after-call
/// work are the monitor's, as on the SIP path).
async fn finalize(
    app: &AppState,
    rec: &mut CallRecord,
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
                    let text = std::mem::take(buf);
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

fn close_message() -> ws::Message {
    ws::Message::Close(Some(ws::CloseFrame {
        code: 1000,
        reason: ws::Utf8Bytes::from_static(""),
    }))
}

async fn close_twilio(sink: &mut TwilioSink) {
    let _ = sink.send(close_message()).await;
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
