//! A local GPT-Live (Live API) SIP emulator, on its own port, for `voxmachina-demo --api live` and
//! the tests. It implements the Live contract of
//! <https://developers.openai.com/api/docs/guides/voice-sip?api=live> independently of the
//! controller, driven by the same caller [`Script`]s as the Realtime emulator:
//!
//! - **Webhooks**: [`LiveEmulator::new_call`] builds `live.transport.incoming`
//!   (or the deprecated `live.call.incoming`, without `data.type`) with a `live_<32 hex>`
//!   session id; [`LiveEmulator::deliver`] signs and POSTs it like OpenAI.
//! - **Call control**: `POST /v1/live/sessions/{id}/accept|reject|refer|hangup`, bearer
//!   auth (401), unknown id 404 `session_not_found`, `200` with an empty body on success.
//!   - accept: body `{"session":{"type":"live","model":<string>,...}}` else 400, and a
//!     `responses` delegation needs `delegation.responses.model` (400 otherwise, as the SDK
//!     type requires it; also on create); the script's
//!     `accept_statuses` faults first (each used once, no decision made);
//!   - reject: `status_code` **required**, an integer 300–699, else 400;
//!   - a second decision (accept or reject after one succeeded) is 409
//!     `decision_already_made`;
//!   - refer: `target_uri` non-blank `sip:`/`tel:` else 400; then the script's refer fault:
//!     `transfer` (200, then `session.closed` `remote_hangup` and a close frame), `ignore`
//!     (200, nothing), or a status;
//!   - hangup: `session.closed` with `reason: "close_requested"` and the usage, then a close
//!     frame.
//! - **Outbound**: `POST /v1/live/sessions` with a SIP transport: 403
//!   `outbound_sip_not_enabled` unless enabled, 400 for a destination that is not E.164, a
//!   `provider_url` that is not `sips:host[:port]` (no userinfo), or auth that is not digest
//!   with a user name and password; then the next [`OutboundPlan`] ([`LiveEmulator::plan_outbound`]).
//!   Progress (`transport.ringing`, then `transport.answered` or `transport.failed`) starts on
//!   the first attach.
//! - **Attach sideband**: `GET /v1/live/sessions/{id}/attach` upgrades for
//!   an accepted or outbound session (404 otherwise). Server events: transcript deltas
//!   `{type, event_id, delta, start_ms, end_ms}` (each line in two deltas), `transport.dtmf.
//!   received`, tool calls as `response.event` wrapping `response.output_item.done` with a
//!   `function_call` item, acknowledgements `session.instructions.appended`, `error`, and
//!   `session.closed` `{reason, session, usage}`. Client events: `session.instructions.append`
//!   (the agent says the quoted line in `content`, else the greeting the first time, else the
//!   next reply), `response.create` (next reply), `response.item.create` with a
//!   `function_call_output`, `transport.dtmf.send` `{event, event_id?}` (one key of `0`-`9`,
//!   `A`-`D`, `*`, `#`: recorded in [`LiveView::dtmf_sent`] and confirmed with
//!   `transport.dtmf.sent` `{event, client_event_id}`, else an `error` `invalid_value`);
//!   `session.start`, `session.input_audio.append` and anything else get an `error` event.
//! - **Replay**: on a reattach, events sent in the preceding 3 s are sent again with
//!   their original `event_id`. A `drop` turn drops the connection without a close frame; the
//!   script resumes after the controller reattaches. Whenever no connection is attached (the
//!   controller detached for a restart) the script pauses before its next turn. A `hangup` turn sends `session.closed`
//!   `remote_hangup`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::script::{FALLBACK_REPLY, ReferFault, Script, Turn};
use super::{EmulatorError, hex_id, unix_now};
use voxmachina::webhook::event::{LIVE_CALL_INCOMING, LIVE_TRANSPORT_INCOMING};
use voxmachina::webhook::signature::Verifier;

/// How far back a reattach replays events (OpenAI's voice-sip guide (`?api=live`)).
mod server;
use server::*;

pub const REPLAY_WINDOW: Duration = Duration::from_secs(3);

/// What the next `POST /v1/live/sessions` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundPlan {
    /// 200; on attach `transport.ringing`, then `transport.answered`, then the script.
    Answer,
    /// 200; on attach `transport.ringing`, then `transport.failed` with this `error.code`
    /// (e.g. `busy`, `no_answer`), then `session.closed`.
    Fail(String),
    /// This HTTP status with an error body (e.g. 502 transport setup, 504 initialization
    /// timeout); nothing is created.
    Status(u16),
}

/// Where a Live session stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LiveStatus {
    /// Incoming, no decision yet.
    Pending,
    /// Accepted (inbound) or created (outbound).
    Live,
    /// Rejected with this SIP status.
    Rejected {
        /// The status code.
        status_code: u16,
    },
    /// A refer took: the caller left for `target`.
    Transferred {
        /// The `target_uri`.
        target: String,
    },
    /// `/hangup` from the controller.
    HungUp,
    /// The caller (or callee) hung up (a `hangup` turn).
    RemoteHungUp,
    /// An outbound call failed with this code.
    Failed {
        /// The `transport.failed` `error.code`.
        code: String,
    },
}

impl LiveStatus {
    /// True once nothing more can happen.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Pending | Self::Live)
    }
}

/// A snapshot of one Live session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveView {
    /// `live_...`.
    pub session_id: String,
    /// Where it stands.
    pub status: LiveStatus,
    /// True for a session created by `POST /v1/live/sessions`.
    pub outbound: bool,
    /// Authorized `/accept` requests, any outcome.
    pub accept_count: u32,
    /// The body of the last `/accept`.
    pub accept_body: Option<Value>,
    /// Authorized `/reject` requests, any outcome.
    pub reject_count: u32,
    /// The body of the create request (outbound), password included (tests check it).
    pub create_body: Option<Value>,
    /// Well-formed refer targets, in order.
    pub refer_targets: Vec<String>,
    /// Authorized `/hangup` requests.
    pub hangup_count: u32,
    /// Attach connections upgraded.
    pub attach_connections: u32,
    /// Every client text message on the attach sideband, parsed (or a JSON string).
    pub client_events: Vec<Value>,
    /// `(call_id, output)` of every `response.item.create` with a `function_call_output`.
    pub function_outputs: Vec<(String, String)>,
    /// The keys of every accepted `transport.dtmf.send`, in order (e.g. `["4", "#"]`).
    pub dtmf_sent: Vec<String>,
    /// What the agent said.
    pub agent_lines: Vec<String>,
    /// What the caller said.
    pub caller_lines: Vec<String>,
    /// Events re-sent on reattaches.
    pub replayed_events: u32,
    /// Every turn has been played.
    pub script_done: bool,
    /// The `reason` of the `session.closed` sent, once sent.
    pub closed_reason: Option<String>,
}

/// A webhook built by [`LiveEmulator::new_call`].
#[derive(Debug, Clone)]
pub struct LivePending {
    /// `live_<32 hex>`.
    pub session_id: String,
    /// The event bytes.
    pub body: Bytes,
    /// The SIP `Call-ID` header value in the event.
    pub sip_call_id: String,
}

enum Ctl {
    Text(String),
    Close,
    Drop,
}

enum Req {
    /// `session.instructions.append` content.
    Instructions(String),
    /// `response.create`.
    Respond,
    /// A `function_call_output` for this call id.
    ToolOutput(String),
}

struct Session {
    view: LiveView,
    script: Script,
    plan: OutboundPlan,
    conn: Option<mpsc::UnboundedSender<Ctl>>,
    history: VecDeque<(Instant, String)>,
    reqs_tx: mpsc::UnboundedSender<Req>,
    reqs_rx: Option<mpsc::UnboundedReceiver<Req>>,
    attached: watch::Sender<u32>,
    done: CancellationToken,
    decided: bool,
    accept_faults_used: usize,
    refers: usize,
    clock_ms: u64,
    words_in: u64,
    words_out: u64,
}

struct Shared {
    api_key: String,
    addr: SocketAddr,
    cancel: CancellationToken,
    outbound_enabled: bool,
    sessions: Mutex<HashMap<String, Session>>,
    plans: Mutex<VecDeque<(Script, OutboundPlan)>>,
    creates: Mutex<u32>,
    version: watch::Sender<u64>,
    http: reqwest::Client,
    recorder: super::record::Recorder,
}

impl Shared {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sends one server event (an `event_id` is added when missing), keeps it for replay.
    fn send(&self, id: &str, mut event: Value) {
        if event.get("event_id").is_none() {
            event["event_id"] = json!(hex_id("event_"));
        }
        let text = event.to_string();
        let mut sessions = self.sessions();
        let Some(s) = sessions.get_mut(id) else {
            return;
        };
        let now = Instant::now();
        while s
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > REPLAY_WINDOW)
        {
            s.history.pop_front();
        }
        s.history.push_back((now, text.clone()));
        if let Some(tx) = &s.conn {
            let _ = tx.send(Ctl::Text(text));
        }
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let r = self.sessions().get_mut(id).map(f);
        self.bump();
        r
    }

    /// `session.closed` then a close frame; the session becomes `status`.
    fn close_session(&self, id: &str, reason: &str, status: LiveStatus) {
        let usage = self.with(id, |s| {
            s.view.status = status;
            s.view.closed_reason = Some(reason.to_string());
            json!({
                "input_tokens": s.words_in,
                "output_tokens": s.words_out,
                "total_tokens": s.words_in + s.words_out,
            })
        });
        let Some(usage) = usage else { return };
        self.send(
            id,
            json!({ "type": "session.closed", "reason": reason, "session": { "id": id }, "usage": usage }),
        );
        self.with(id, |s| {
            s.done.cancel();
            if let Some(tx) = s.conn.take() {
                let _ = tx.send(Ctl::Close);
            }
        });
    }
}

/// The GPT-Live emulator. Cheap to clone; stops when the last clone is dropped.
#[derive(Clone)]
pub struct LiveEmulator {
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

struct Guard(CancellationToken);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for LiveEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveEmulator")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl LiveEmulator {
    /// Binds `127.0.0.1:0`. `api_key` is the bearer key the controller must present;
    /// `outbound_enabled` says whether the "organization" may place outbound calls.
    ///
    /// # Errors
    /// The bind error, or a failure to build the webhook HTTP client.
    pub async fn start(api_key: &str, outbound_enabled: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            api_key: api_key.to_string(),
            addr,
            cancel: CancellationToken::new(),
            outbound_enabled,
            sessions: Mutex::new(HashMap::new()),
            plans: Mutex::new(VecDeque::new()),
            creates: Mutex::new(0),
            version: watch::channel(0).0,
            http,
            recorder: super::record::Recorder::from_env(),
        });
        let app = Router::new()
            .route("/v1/live/sessions", post(recorded_create))
            .route("/v1/live/sessions/{id}/attach", get(attach))
            .route("/v1/live/sessions/{id}/{action}", post(recorded_action))
            .with_state(shared.clone());
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await });
            if let Err(e) = serve.await {
                tracing::warn!(target: "voxmachina::emulator", "live emulator stopped: {e}");
            }
        });
        let guard = Arc::new(Guard(shared.cancel.clone()));
        Ok(Self {
            shared,
            _guard: guard,
        })
    }

    /// Appends every REST request body and attach client event received from now on to
    /// `path`, one JSON line each (shape in [`super::record`]).
    ///
    /// # Errors
    /// When the file cannot be created or opened.
    pub fn record_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.shared.recorder.record_to(path)
    }

    /// `http://127.0.0.1:PORT/v1` (the controller's `openai.live_base_url`).
    pub fn rest_base_url(&self) -> String {
        format!("http://{}/v1", self.shared.addr)
    }

    /// `ws://127.0.0.1:PORT/v1` (the controller's `openai.live_sideband_url`).
    pub fn sideband_url(&self) -> String {
        format!("ws://{}/v1", self.shared.addr)
    }

    /// Registers an incoming session driven by `script` and builds its webhook: `kind` is
    /// [`LIVE_TRANSPORT_INCOMING`] or the deprecated [`LIVE_CALL_INCOMING`]. `sip_call_id`
    /// sets the `Call-ID` header (to pair it with a Realtime delivery of the same SIP call);
    /// `None` makes one up.
    pub fn new_call(&self, script: Script, kind: &str, sip_call_id: Option<&str>) -> LivePending {
        let session_id = hex_id("live_");
        let sip_call_id = sip_call_id
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:032x}@emulator", rand::random::<u128>()));
        let mut headers = vec![
            json!({ "name": "From", "value": script.call.from }),
            json!({ "name": "To", "value": script.call.to }),
            json!({ "name": "Call-ID", "value": sip_call_id }),
        ];
        headers.extend(
            script
                .call
                .headers
                .iter()
                .map(|(n, v)| json!({ "name": n, "value": v })),
        );
        let mut data = json!({ "session_id": session_id, "sip_headers": headers });
        if kind != LIVE_CALL_INCOMING {
            data["type"] = json!("sip");
        }
        if let Some(m) = &script.call.media_security {
            data["sip_media_security"] = json!(m);
        }
        let event = json!({
            "object": "event",
            "id": hex_id("evt_"),
            "type": if kind == LIVE_CALL_INCOMING { LIVE_CALL_INCOMING } else { LIVE_TRANSPORT_INCOMING },
            "created_at": unix_now(),
            "data": data,
        });
        self.insert(&session_id, script, OutboundPlan::Answer, false);
        LivePending {
            session_id,
            body: Bytes::from(event.to_string()),
            sip_call_id,
        }
    }

    fn insert(&self, id: &str, script: Script, plan: OutboundPlan, outbound: bool) {
        insert_session(&self.shared, id, script, plan, outbound);
    }

    /// Signs `body` (Standard Webhooks `v1`) and POSTs it to `url` with a fresh `webhook-id`,
    /// or `webhook_id` when given. Returns the HTTP status.
    ///
    /// # Errors
    /// [`EmulatorError`] for a bad secret or a failed request.
    pub async fn deliver(
        &self,
        url: &str,
        secret: &str,
        webhook_id: Option<&str>,
        body: &[u8],
    ) -> Result<u16, EmulatorError> {
        let verifier = Verifier::new(secret, 300)?;
        let id = webhook_id
            .map(str::to_string)
            .unwrap_or_else(|| hex_id("wh_"));
        let ts = unix_now().to_string();
        let resp = self
            .shared
            .http
            .post(url)
            .header("user-agent", super::WEBHOOK_USER_AGENT)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", verifier.sign(&id, &ts, body))
            .body(body.to_vec())
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// Queues what the next outbound create does and the script it then plays.
    pub fn plan_outbound(&self, script: Script, plan: OutboundPlan) {
        self.shared
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((script, plan));
    }

    /// Number of authorized `POST /v1/live/sessions` requests, whatever their outcome.
    pub fn create_requests(&self) -> u32 {
        *self
            .shared
            .creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a live session from the OpenAI side: `session.closed` with `reason` (e.g. `expired`,
    /// `content`, `connection_lost`, `remote_hangup`), then a close frame.
    pub fn end_session(&self, id: &str, reason: &str) {
        self.shared
            .close_session(id, reason, LiveStatus::RemoteHungUp);
    }

    /// Ids of every session, in no order.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared.sessions().keys().cloned().collect()
    }

    /// A snapshot of a session.
    pub fn session(&self, id: &str) -> Option<LiveView> {
        self.shared.sessions().get(id).map(|s| s.view.clone())
    }

    /// Waits until the session exists and `pred` holds, or `timeout`.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&LiveView) -> bool,
    ) -> Option<LiveView> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.version.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = self.session(id).filter(|v| pred(v)) {
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}
