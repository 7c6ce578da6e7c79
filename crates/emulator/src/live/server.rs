//! The GPT-Live emulator's HTTP side (sessions, accept/reject/refer/hang-up, outbound
//! creates, the attach WebSocket) and the per-session driver that plays the caller's script.

use super::*;

pub(super) fn insert_session(
    shared: &Shared,
    id: &str,
    script: Script,
    plan: OutboundPlan,
    outbound: bool,
) {
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

pub(super) fn err(status: u16, kind: &str, code: Option<&str>, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } }),
        ),
    )
        .into_response()
}

/// The 401 answer for a missing or wrong bearer key; `None` when authorized.
pub(super) fn refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
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

pub(super) fn ok() -> Response {
    StatusCode::OK.into_response()
}

pub(super) fn decision_made() -> Response {
    err(
        409,
        "invalid_request_error",
        Some("decision_already_made"),
        "An accept or reject decision was already made for this session.",
    )
}

/// Records a REST request (body as JSON, `null` when empty, else the text) with the status of
/// the answer `resp`.
pub(super) fn record_rest(shared: &Shared, path: &str, body: &Bytes, resp: &Response) {
    if !shared.recorder.is_on() {
        return;
    }
    let value = crate::rest::body_value(body);
    shared.recorder.record(
        crate::record::Received {
            api: "live",
            channel: "rest",
            method: Some("POST"),
            path,
            status: Some(resp.status().as_u16()),
        },
        &value,
    );
}

pub(super) async fn recorded_action(
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

pub(super) async fn recorded_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = create(State(shared.clone()), headers, body.clone()).await;
    record_rest(&shared, "/v1/live/sessions", &body, &resp);
    resp
}

pub(super) async fn action(
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

pub(super) fn accept(shared: &Shared, id: &str, body: Value) -> Response {
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

pub(super) fn reject(shared: &Shared, id: &str, body: Value) -> Response {
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
pub(super) fn delegation_refused(session: &Value) -> Option<Response> {
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

pub(super) async fn refer(shared: &Arc<Shared>, id: &str, body: Value) -> Response {
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
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    if voxmachina::sip::E164::parse(dest).is_err() {
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

pub(super) async fn attach(
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
    voxmachina::bridge::ws_upgrade(ws).on_upgrade(move |socket| connection(shared, id, socket))
}

pub(super) async fn connection(shared: Arc<Shared>, id: String, socket: WebSocket) {
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
                crate::record::Received {
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
pub(super) fn quoted(content: &str) -> Option<String> {
    let start = content.find('"')? + 1;
    let len = content[start..].find('"')?;
    Some(content[start..start + len].to_string()).filter(|s| !s.is_empty())
}

pub(super) struct Driver {
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
pub(super) async fn drive(shared: Arc<Shared>, id: String, reqs: mpsc::UnboundedReceiver<Req>) {
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
