//! A local GPT-Live (Live API) SIP emulator, on its own port, for `voxmachina demo --api live` and
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
use crate::webhook::event::{LIVE_CALL_INCOMING, LIVE_TRANSPORT_INCOMING};
use crate::webhook::signature::Verifier;

/// How far back a reattach replays events (OpenAI's voice-sip guide (`?api=live`)).
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

fn insert_session(shared: &Shared, id: &str, script: Script, plan: OutboundPlan, outbound: bool) {
    let (reqs_tx, reqs_rx) = mpsc::unbounded_channel();
    let session = Session {
        view: LiveView {
            session_id: id.to_string(),
            status: if outbound {
                LiveStatus::Live
            } else {
                LiveStatus::Pending
            },
            outbound,
            accept_count: 0,
            accept_body: None,
            reject_count: 0,
            create_body: None,
            refer_targets: Vec::new(),
            hangup_count: 0,
            attach_connections: 0,
            client_events: Vec::new(),
            dtmf_sent: Vec::new(),
            function_outputs: Vec::new(),
            agent_lines: Vec::new(),
            caller_lines: Vec::new(),
            replayed_events: 0,
            script_done: false,
            closed_reason: None,
        },
        script,
        plan,
        conn: None,
        history: VecDeque::new(),
        reqs_tx,
        reqs_rx: Some(reqs_rx),
        attached: watch::channel(0).0,
        done: CancellationToken::new(),
        decided: outbound,
        accept_faults_used: 0,
        refers: 0,
        clock_ms: 0,
        words_in: 0,
        words_out: 0,
    };
    shared.sessions().insert(id.to_string(), session);
    shared.bump();
}

fn err(status: u16, kind: &str, code: Option<&str>, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } }),
        ),
    )
        .into_response()
}

/// The 401 answer for a missing or wrong bearer key; `None` when authorized.
fn refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Some(err(
            401,
            "invalid_request_error",
            None,
            "You didn't provide an API key.",
        )),
        Some(k) if k == shared.api_key => None,
        Some(_) => Some(err(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        )),
    }
}

fn ok() -> Response {
    StatusCode::OK.into_response()
}

fn decision_made() -> Response {
    err(
        409,
        "invalid_request_error",
        Some("decision_already_made"),
        "An accept or reject decision was already made for this session.",
    )
}

/// Records a REST request (body as JSON, `null` when empty, else the text) with the status of
/// the answer `resp`.
fn record_rest(shared: &Shared, path: &str, body: &Bytes, resp: &Response) {
    if !shared.recorder.is_on() {
        return;
    }
    let value = super::rest::body_value(body);
    shared.recorder.record(
        super::record::Received {
            api: "live",
            channel: "rest",
            method: Some("POST"),
            path,
            status: Some(resp.status().as_u16()),
        },
        &value,
    );
}

async fn recorded_action(
    State(shared): State<Arc<Shared>>,
    Path((id, action_name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = action(
        State(shared.clone()),
        Path((id.clone(), action_name.clone())),
        headers,
        body.clone(),
    )
    .await;
    record_rest(
        &shared,
        &format!("/v1/live/sessions/{id}/{action_name}"),
        &body,
        &resp,
    );
    resp
}

async fn recorded_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = create(State(shared.clone()), headers, body.clone()).await;
    record_rest(&shared, "/v1/live/sessions", &body, &resp);
    resp
}

async fn action(
    State(shared): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refused(&shared, &headers) {
        return r;
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    if !shared.sessions().contains_key(&id) {
        return err(
            404,
            "invalid_request_error",
            Some("session_not_found"),
            "Session not found.",
        );
    }
    match action.as_str() {
        "accept" => accept(&shared, &id, body),
        "reject" => reject(&shared, &id, body),
        "refer" => refer(&shared, &id, body).await,
        "hangup" => {
            let live = shared
                .with(&id, |s| {
                    s.view.hangup_count += 1;
                    s.view.status == LiveStatus::Live
                })
                .unwrap_or(false);
            if !live {
                return err(
                    404,
                    "invalid_request_error",
                    Some("session_not_found"),
                    "Session is not live.",
                );
            }
            shared.close_session(&id, "close_requested", LiveStatus::HungUp);
            ok()
        }
        _ => err(
            404,
            "invalid_request_error",
            None,
            &format!("Invalid URL (POST /v1/live/sessions/{id}/{action})"),
        ),
    }
}

fn accept(shared: &Shared, id: &str, body: Value) -> Response {
    let fault = shared
        .with(id, |s| {
            s.view.accept_count += 1;
            s.view.accept_body = Some(body.clone());
            if s.decided {
                return Some(0);
            }
            let f = s
                .script
                .faults
                .accept_statuses
                .get(s.accept_faults_used)
                .copied();
            if f.is_some() {
                s.accept_faults_used += 1;
            }
            f.filter(|f| !(200..300).contains(f))
        })
        .flatten();
    match fault {
        Some(0) => return decision_made(),
        Some(status) => return err(status, "server_error", None, "Injected accept fault."),
        None => {}
    }
    let session = &body["session"];
    if session["type"] != "live" || !session["model"].is_string() {
        return err(
            400,
            "invalid_request_error",
            Some("missing_required_parameter"),
            "session.type must be \"live\" and session.model is required.",
        );
    }
    if let Some(r) = delegation_refused(session) {
        return r;
    }
    shared.with(id, |s| {
        s.decided = true;
        s.view.status = LiveStatus::Live;
    });
    ok()
}

fn reject(shared: &Shared, id: &str, body: Value) -> Response {
    let code = body["status_code"].as_u64();
    let decided = shared
        .with(id, |s| {
            s.view.reject_count += 1;
            s.decided
        })
        .unwrap_or(true);
    let Some(code) = code.filter(|c| (300..=699).contains(c)) else {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_status_code"),
            "status_code is required: an integer from 300 to 699.",
        );
    };
    if decided {
        return decision_made();
    }
    shared.with(id, |s| {
        s.decided = true;
        s.view.status = LiveStatus::Rejected {
            status_code: code as u16,
        };
        s.done.cancel();
    });
    ok()
}

/// `session.delegation` of type `responses` needs `responses.model` (the `openai` SDK's
/// `openai.types.live.ResponsesDelegationConfigParam` marks it required).
fn delegation_refused(session: &Value) -> Option<Response> {
    let d = &session["delegation"];
    if d["type"] == "responses" && !d["responses"]["model"].is_string() {
        return Some(err(
            400,
            "invalid_request_error",
            Some("missing_required_parameter"),
            "Missing required parameter: 'session.delegation.responses.model'.",
        ));
    }
    None
}

async fn refer(shared: &Arc<Shared>, id: &str, body: Value) -> Response {
    let target = body["target_uri"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    if target.is_empty() || !(target.starts_with("sip:") || target.starts_with("tel:")) {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_target_uri"),
            "target_uri must be a non-blank sip: or tel: URI.",
        );
    }
    let fault = shared.with(id, |s| {
        if s.view.status != LiveStatus::Live {
            return None;
        }
        s.view.refer_targets.push(target.clone());
        let faults = &s.script.faults.refer;
        let f = faults
            .get(s.refers)
            .or(faults.last())
            .cloned()
            .unwrap_or(ReferFault::Transfer);
        s.refers += 1;
        Some(f)
    });
    match fault.flatten() {
        None => err(
            404,
            "invalid_request_error",
            Some("session_not_found"),
            "Session is not live.",
        ),
        Some(ReferFault::Transfer) => {
            let shared = shared.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                shared.close_session(&id, "remote_hangup", LiveStatus::Transferred { target });
            });
            ok()
        }
        Some(ReferFault::Ignore) => ok(),
        Some(ReferFault::Status(s)) => err(s, "server_error", None, "Injected refer fault."),
    }
}

/// `POST /v1/live/sessions`: outbound calls (OpenAI's voice-sip guide (`?api=live`)).
async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(&shared, &headers) {
        return r;
    }
    *shared.creates.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    if !shared.outbound_enabled {
        return err(
            403,
            "invalid_request_error",
            Some("outbound_sip_not_enabled"),
            "Outbound SIP is not enabled for this organization.",
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return err(400, "invalid_request_error", None, "Body must be JSON.");
    };
    if let Some(r) = delegation_refused(&body["session"]) {
        return r;
    }
    let t = &body["transport"];
    let dest = t["destination"].as_str().unwrap_or_default();
    if crate::sip::E164::parse(dest).is_err() {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_destination"),
            "transport.destination must be E.164.",
        );
    }
    let provider = t["trunk"]["provider_url"].as_str().unwrap_or_default();
    let host = provider.strip_prefix("sips:").unwrap_or_default();
    if t["type"] != "sip" || host.is_empty() || host.contains('@') || host.contains('/') {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_provider_url"),
            "transport.trunk.provider_url must be sips:host[:port][;transport=tcp].",
        );
    }
    let auth = &t["trunk"]["auth"];
    if auth["type"] != "digest"
        || auth["username"].as_str().unwrap_or_default().is_empty()
        || auth["password"].as_str().unwrap_or_default().is_empty()
    {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_auth"),
            "transport.trunk.auth must be digest with a username and password.",
        );
    }
    let (script, plan) = shared
        .plans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
        .unwrap_or_else(|| (Script::default(), OutboundPlan::Answer));
    if let OutboundPlan::Status(s) = plan {
        return err(s, "server_error", None, "Injected create fault.");
    }
    let id = hex_id("live_");
    insert_session(&shared, &id, script, plan, true);
    shared.with(&id, |s| s.view.create_body = Some(body));
    (
        StatusCode::OK,
        axum::Json(json!({ "session": { "id": id }, "transport": { "type": "sip" } })),
    )
        .into_response()
}

async fn attach(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(r) = refused(&shared, &headers) {
        return r;
    }
    let live = shared
        .sessions()
        .get(&id)
        .is_some_and(|s| s.view.status == LiveStatus::Live);
    if !live {
        return err(
            404,
            "invalid_request_error",
            Some("session_not_found"),
            "Session not found.",
        );
    }
    crate::bridge::ws_upgrade(ws).on_upgrade(move |socket| connection(shared, id, socket))
}

async fn connection(shared: Arc<Shared>, id: String, socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Ctl>();
    let replay: Vec<String>;
    let (n, reqs_rx, reqs_tx) = {
        let mut sessions = shared.sessions();
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        s.view.attach_connections += 1;
        let n = s.view.attach_connections;
        let now = Instant::now();
        replay = if n > 1 {
            s.history
                .iter()
                .filter(|(t, _)| now.duration_since(*t) <= REPLAY_WINDOW)
                .map(|(_, e)| e.clone())
                .collect()
        } else {
            Vec::new()
        };
        s.view.replayed_events += replay.len() as u32;
        for e in &replay {
            let _ = tx.send(Ctl::Text(e.clone()));
        }
        if let Some(old) = s.conn.replace(tx) {
            let _ = old.send(Ctl::Drop);
        }
        s.attached.send_replace(n);
        (n, s.reqs_rx.take(), s.reqs_tx.clone())
    };
    shared.bump();
    if let Some(reqs) = reqs_rx {
        tokio::spawn(drive(shared.clone(), id.clone(), reqs));
    }
    let _ = n;
    let mine = {
        let sessions = shared.sessions();
        sessions.get(&id).and_then(|s| s.conn.clone())
    };
    let (mut sink, mut stream) = socket.split();
    let writer = async {
        while let Some(ctl) = rx.recv().await {
            match ctl {
                Ctl::Text(t) => {
                    if sink.send(Message::Text(t.into())).await.is_err() {
                        return;
                    }
                }
                Ctl::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
                Ctl::Drop => return,
            }
        }
    };
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str())
                .unwrap_or_else(|_| Value::String(text.to_string()));
            shared.with(&id, |s| s.view.client_events.push(v.clone()));
            shared.recorder.record(
                super::record::Received {
                    api: "live",
                    channel: "attach",
                    method: None,
                    path: "/v1/live/sessions/{id}/attach",
                    status: None,
                },
                &v,
            );
            let kind = v["type"].as_str().unwrap_or_default();
            match kind {
                "session.instructions.append" => {
                    shared.send(
                        &id,
                        json!({ "type": "session.instructions.appended", "client_event_id": v["event_id"] }),
                    );
                    let _ = reqs_tx.send(Req::Instructions(
                        v["content"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                "response.create" => {
                    let _ = reqs_tx.send(Req::Respond);
                }
                "transport.dtmf.send" => {
                    // `openai.types.live.connect_client_event.TransportDtmfSend`: one key of
                    // 0-9, A-D, * or #; every emulated session is a SIP call.
                    let key = v["event"].as_str().unwrap_or_default();
                    let valid = key.len() == 1
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_digit() || matches!(b, b'A'..=b'D' | b'*' | b'#'));
                    if valid {
                        shared.with(&id, |s| s.view.dtmf_sent.push(key.to_string()));
                        shared.send(
                            &id,
                            json!({ "type": "transport.dtmf.sent", "event": key, "client_event_id": v["event_id"] }),
                        );
                    } else {
                        shared.send(
                            &id,
                            json!({ "type": "error", "error": {
                                "type": "invalid_request_error",
                                "code": "invalid_value",
                                "message": "event must be one of 0-9, A-D, * or #.",
                                "param": "event",
                                "client_event_id": v["event_id"],
                            } }),
                        );
                    }
                }
                "response.item.create" if v["item"]["type"] == "function_call_output" => {
                    let call_id = v["item"]["call_id"].as_str().unwrap_or_default().to_string();
                    let output = v["item"]["output"].as_str().unwrap_or_default().to_string();
                    shared.with(&id, |s| {
                        s.view.function_outputs.push((call_id.clone(), output))
                    });
                    let _ = reqs_tx.send(Req::ToolOutput(call_id));
                }
                other => shared.send(
                    &id,
                    json!({ "type": "error", "error": {
                        "type": "invalid_request_error",
                        "code": "unknown_event",
                        "message": format!("Client event {other:?} is not allowed on an attach connection."),
                        "client_event_id": v["event_id"],
                    } }),
                ),
            }
        }
    };
    // Whichever side ends first ends the connection (a drop: no close frame).
    tokio::select! {
        () = writer => {}
        () = reader => {}
        () = shared.cancel.cancelled() => {}
    }
    // Detached: the script pauses until the next attach (events sent meanwhile go nowhere).
    shared.with(&id, |s| {
        if let (Some(cur), Some(mine)) = (&s.conn, &mine) {
            if cur.same_channel(mine) {
                s.conn = None;
            }
        }
    });
}

/// The line the controller asked for: the first `"..."` in `content`.
fn quoted(content: &str) -> Option<String> {
    let start = content.find('"')? + 1;
    let len = content[start..].find('"')?;
    Some(content[start..start + len].to_string()).filter(|s| !s.is_empty())
}

struct Driver {
    shared: Arc<Shared>,
    id: String,
    reqs: mpsc::UnboundedReceiver<Req>,
    greeted: bool,
    next_reply: usize,
}

impl Driver {
    fn script(&self) -> Script {
        self.shared
            .sessions()
            .get(&self.id)
            .map(|s| s.script.clone())
            .unwrap_or_default()
    }

    fn done(&self) -> CancellationToken {
        self.shared
            .sessions()
            .get(&self.id)
            .map(|s| s.done.clone())
            .unwrap_or_default()
    }

    /// Says `text` as two transcript deltas of `speaker` on the session clock.
    fn speak(&self, caller: bool, text: &str) {
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        let half = words.len().div_ceil(2).max(1);
        let chunks: Vec<String> = words.chunks(half).map(|c| c.concat()).collect();
        for chunk in chunks {
            let (start, end) = self
                .shared
                .with(&self.id, |s| {
                    let start = s.clock_ms;
                    s.clock_ms += 300;
                    let w = chunk.split_whitespace().count() as u64;
                    if caller {
                        s.words_in += w;
                    } else {
                        s.words_out += w;
                    }
                    (start, s.clock_ms)
                })
                .unwrap_or_default();
            let kind = if caller {
                "session.input_transcript.delta"
            } else {
                "session.output_transcript.delta"
            };
            self.shared.send(
                &self.id,
                json!({ "type": kind, "delta": chunk, "start_ms": start, "end_ms": end }),
            );
        }
        self.shared.with(&self.id, |s| {
            // Turns are separated by a pause on the session clock.
            s.clock_ms += 2_000;
            if caller {
                s.view.caller_lines.push(text.to_string());
            } else {
                s.view.agent_lines.push(text.to_string());
            }
        });
    }

    fn next_reply(&mut self, script: &Script) -> String {
        let r = script
            .agent
            .replies
            .get(self.next_reply)
            .cloned()
            .unwrap_or_else(|| FALLBACK_REPLY.to_string());
        self.next_reply += 1;
        r
    }

    fn on_req(&mut self, req: Req, script: &Script) {
        match req {
            Req::Instructions(content) => {
                let line = match quoted(&content) {
                    Some(l) => l,
                    None if !self.greeted => script.agent.greeting.clone(),
                    None => self.next_reply(script),
                };
                self.greeted = true;
                self.speak(false, &line);
            }
            Req::Respond => {
                let line = self.next_reply(script);
                self.speak(false, &line);
            }
            Req::ToolOutput(_) => {}
        }
    }

    /// Handles client requests for `ms` (or until the session ends).
    async fn idle(&mut self, ms: u64, script: &Script, done: &CancellationToken) -> bool {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            tokio::select! {
                () = done.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                r = self.reqs.recv() => match r {
                    Some(r) => self.on_req(r, script),
                    None => return false,
                },
            }
        }
    }

    async fn wait_attached(&self, at_least: u32, done: &CancellationToken) -> bool {
        let Some(mut rx) = self
            .shared
            .sessions()
            .get(&self.id)
            .map(|s| s.attached.subscribe())
        else {
            return false;
        };
        tokio::select! {
            r = rx.wait_for(|n| *n >= at_least) => r.is_ok(),
            () = done.cancelled() => false,
        }
    }
}

/// Plays the session's script on its attach connections.
async fn drive(shared: Arc<Shared>, id: String, reqs: mpsc::UnboundedReceiver<Req>) {
    let mut d = Driver {
        shared: shared.clone(),
        id: id.clone(),
        reqs,
        greeted: false,
        next_reply: 0,
    };
    let script = d.script();
    let done = d.done();
    let (outbound, plan) = shared
        .sessions()
        .get(&id)
        .map(|s| (s.view.outbound, s.plan.clone()))
        .unwrap_or((false, OutboundPlan::Answer));
    if outbound {
        shared.send(
            &id,
            json!({ "type": "transport.ringing", "session_id": id }),
        );
        if let OutboundPlan::Fail(code) = plan {
            shared.send(
                &id,
                json!({ "type": "transport.failed", "session_id": id, "error": {
                    "type": "call_error", "code": code, "message": format!("The call failed: {code}.")
                } }),
            );
            shared.close_session(&id, "close_requested", LiveStatus::Failed { code });
            return;
        }
        shared.send(
            &id,
            json!({ "type": "transport.answered", "session_id": id }),
        );
    }
    // The greeting request, if it comes.
    let greeting_wait = script.agent.greeting_wait_ms;
    tokio::select! {
        () = done.cancelled() => return,
        () = tokio::time::sleep(Duration::from_millis(greeting_wait)) => {}
        r = d.reqs.recv() => if let Some(r) = r { d.on_req(r, &script) },
    }
    for turn in &script.turns {
        if !d.idle(script.agent.turn_gap_ms, &script, &done).await {
            return;
        }
        let (connected, count) = shared
            .sessions()
            .get(&id)
            .map(|s| (s.conn.is_some(), s.view.attach_connections))
            .unwrap_or((false, 0));
        if !connected && !d.wait_attached(count + 1, &done).await {
            return;
        }
        match turn {
            Turn::Caller { text } => {
                d.speak(true, text);
                if script.agent.auto_reply {
                    let line = d.next_reply(&script);
                    d.speak(false, &line);
                }
            }
            Turn::Dtmf { key } => {
                for k in key.chars() {
                    shared.send(
                        &id,
                        json!({ "type": "transport.dtmf.received", "event": k.to_string() }),
                    );
                }
            }
            Turn::Tool { name, arguments } => {
                let call_id = hex_id("call_");
                shared.send(
                    &id,
                    json!({ "type": "response.event", "event": {
                        "type": "response.output_item.done",
                        "item": { "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments.to_string() }
                    } }),
                );
                let until = tokio::time::Instant::now()
                    + Duration::from_millis(script.agent.tool_timeout_ms);
                loop {
                    tokio::select! {
                        () = done.cancelled() => return,
                        () = tokio::time::sleep_until(until) => break,
                        r = d.reqs.recv() => match r {
                            Some(Req::ToolOutput(c)) if c == call_id => break,
                            Some(r) => d.on_req(r, &script),
                            None => return,
                        },
                    }
                }
            }
            Turn::Wait { ms } => {
                if !d.idle(*ms, &script, &done).await {
                    return;
                }
            }
            Turn::Drop => {
                let count = shared
                    .with(&id, |s| {
                        if let Some(tx) = s.conn.take() {
                            let _ = tx.send(Ctl::Drop);
                        }
                        s.view.attach_connections
                    })
                    .unwrap_or(0);
                if !d.wait_attached(count + 1, &done).await {
                    return;
                }
            }
            Turn::Hangup => {
                shared.close_session(&id, "remote_hangup", LiveStatus::RemoteHungUp);
                shared.with(&id, |s| s.view.script_done = true);
                return;
            }
        }
    }
    shared.with(&id, |s| s.view.script_done = true);
    while d.idle(60_000, &script, &done).await {}
}
