//! Tests of the OpenAI SIP emulator itself, over real sockets: reqwest for the REST API and the
//! webhook receiver, tokio-tungstenite for the sideband.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxmachina::webhook::signature::{DeliveryHeaders, Verifier};
use voxmachina_emulator::{
    EmuCallStatus, Emulator, EmulatorConfig, EmulatorEvent, ReferFault, Script, Speaker,
};

const KEY: &str = "sk-emulator-test";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        api_key: KEY.to_string(),
    })
    .await
    .expect("emulator starts")
}

/// A valid accept body with caller transcription on.
fn session() -> Value {
    json!({
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "instructions": "You are Alex, a friendly concierge.",
        "audio": {
            "input": {
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "server_vad", "create_response": true}
            },
            "output": {"voice": "marin"}
        },
        "tools": [{"type": "function", "name": "transfer_to_human", "parameters": {"type": "object"}}]
    })
}

/// POSTs to a call-control endpoint; returns status and body text.
async fn post(
    emu: &Emulator,
    call_id: &str,
    action: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, String) {
    let url = format!("{}/realtime/calls/{call_id}/{action}", emu.rest_base_url());
    let mut req = reqwest::Client::new().post(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request completes");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn accept(emu: &Emulator, call_id: &str) {
    let (status, body) = post(emu, call_id, "accept", Some(session()), Some(KEY)).await;
    assert_eq!((status, body.as_str()), (200, ""));
}

fn error_code(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).expect("error body is JSON");
    let e = &v["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(e.get(field).is_some(), "error body lacks {field}: {body}");
    }
    e["code"].clone()
}

async fn connect(emu: &Emulator, call_id: &str, key: Option<&str>) -> Result<Ws, WsError> {
    let mut req = format!("{}?call_id={call_id}", emu.sideband_url())
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

fn http_status(err: WsError) -> u16 {
    match err {
        WsError::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP error response, got {other:?}"),
    }
}

/// The next JSON server event; panics on close, error or timeout.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("server event within timeout")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert!(
                v["event_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("event_")),
                "event without event_id: {v}"
            );
            return v;
        }
    }
}

/// Events up to and including the first of type `kind`.
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next_event(ws).await;
        let done = v["type"] == kind;
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Reads until the connection ends; asserts it ended without a close frame.
async fn expect_dropped(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("connection ends")
        {
            Some(Ok(Message::Close(frame))) => panic!("unexpected close frame {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => return,
            Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Some(Err(e)) => panic!("unexpected error {e:?}"),
            None => panic!("stream ended without an error"),
        }
    }
}

/// Reads until a close frame; returns its code.
async fn expect_close_frame(ws: &mut Ws) -> CloseCode {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close frame within timeout")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A greeting-less script that starts its turns quickly.
fn quick() -> Script {
    Script::new().greeting_wait_ms(50).turn_gap_ms(20)
}

#[tokio::test]
async fn accept_refer_hangup_status_codes_and_bodies() {
    let emu = emulator().await;
    let call = emu.new_call(Script::new().refer_faults([ReferFault::Ignore]));
    let id = call.call_id.as_str();

    accept(&emu, id).await;
    let (s, b) = post(&emu, id, "accept", Some(session()), Some(KEY)).await;
    assert_eq!(s, 409);
    assert_eq!(error_code(&b), "call_already_accepted");

    let (s, b) = post(&emu, id, "refer", Some(json!({})), Some(KEY)).await;
    assert_eq!(s, 400);
    assert_eq!(error_code(&b), "missing_required_parameter");
    for bad in [
        json!({"target_uri": "  "}),
        json!({"target_uri": "http://x"}),
        json!({"target_uri": 5}),
    ] {
        let (s, b) = post(&emu, id, "refer", Some(bad), Some(KEY)).await;
        assert_eq!(s, 400);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["param"], "target_uri");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let (s, b) = post(
        &emu,
        id,
        "refer",
        Some(json!({"target_uri": "tel:+14155550123"})),
        Some(KEY),
    )
    .await;
    assert_eq!((s, b.as_str()), (200, ""));

    let (s, b) = post(&emu, id, "hangup", None, Some(KEY)).await;
    assert_eq!((s, b.as_str()), (200, ""));
    let (s, b) = post(&emu, id, "hangup", None, Some(KEY)).await;
    assert_eq!(s, 404);
    assert_eq!(error_code(&b), "call_id_not_found");
    let (s, _) = post(&emu, id, "accept", Some(session()), Some(KEY)).await;
    assert_eq!(s, 404);

    let view = emu.call(id).unwrap();
    assert_eq!(view.status, EmuCallStatus::HungUp);
    assert_eq!(view.accept_count, 3);
    assert_eq!(view.hangup_count, 2);
    assert_eq!(view.refer_targets, ["tel:+14155550123"]);
    assert_eq!(view.accept_body.unwrap()["model"], "gpt-realtime-2.1");

    let reqs = emu.requests();
    assert_eq!(reqs.len(), 10);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, format!("/v1/realtime/calls/{id}/accept"));
    assert!(reqs.iter().all(|r| r.authorized));
    assert_eq!(reqs[0].body, session());
    assert_eq!(reqs[6].body, json!({"target_uri": "tel:+14155550123"}));
    assert_eq!(reqs[7].body, Value::Null);
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 409, 400, 400, 400, 400, 200, 200, 404, 404]);
}

#[tokio::test]
async fn reject_default_and_explicit_codes() {
    let emu = emulator().await;
    let a = emu.new_call(Script::new()).call_id;
    let (s, b) = post(&emu, &a, "reject", None, Some(KEY)).await;
    assert_eq!((s, b.as_str()), (200, ""));
    assert_eq!(
        emu.call(&a).unwrap().status,
        EmuCallStatus::Rejected { status_code: 603 }
    );
    let (s, _) = post(&emu, &a, "accept", Some(session()), Some(KEY)).await;
    assert_eq!(s, 404, "accept after reject");

    let b_id = emu.new_call(Script::new()).call_id;
    let (s, _) = post(
        &emu,
        &b_id,
        "reject",
        Some(json!({"status_code": 42})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(
        &emu,
        &b_id,
        "reject",
        Some(json!({"status_code": 486})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 200);
    let view = emu.call(&b_id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Rejected { status_code: 486 });
    assert_eq!(view.reject_body, Some(json!({"status_code": 486})));

    let c = emu.new_call(Script::new()).call_id;
    accept(&emu, &c).await;
    let (s, b) = post(&emu, &c, "reject", None, Some(KEY)).await;
    assert_eq!(s, 409);
    assert_eq!(error_code(&b), "call_already_accepted");
}

#[tokio::test]
async fn auth_is_required_on_rest_and_sideband() {
    let emu = emulator().await;
    let id = emu.new_call(Script::new()).call_id;

    let (s, b) = post(&emu, &id, "accept", Some(session()), None).await;
    assert_eq!(s, 401);
    assert_eq!(error_code(&b), Value::Null);
    let (s, b) = post(&emu, &id, "accept", Some(session()), Some("sk-wrong")).await;
    assert_eq!(s, 401);
    assert_eq!(error_code(&b), "invalid_api_key");
    let view = emu.call(&id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Pending);
    assert_eq!(view.accept_count, 0);
    assert!(
        emu.requests()
            .iter()
            .all(|r| !r.authorized && r.status == 401)
    );

    accept(&emu, &id).await;
    assert_eq!(
        http_status(connect(&emu, &id, None).await.unwrap_err()),
        401
    );
    assert_eq!(
        http_status(connect(&emu, &id, Some("sk-wrong")).await.unwrap_err()),
        401
    );
    assert_eq!(emu.call(&id).unwrap().sideband_connections, 0);
}

#[tokio::test]
async fn unknown_calls_and_urls_are_404() {
    let emu = emulator().await;
    for action in ["accept", "reject", "refer", "hangup"] {
        let body = (action == "refer").then(|| json!({"target_uri": "tel:+1"}));
        let (s, b) = post(
            &emu,
            "rtc_nope",
            action,
            body.or(Some(json!({"type": "realtime"}))),
            Some(KEY),
        )
        .await;
        assert_eq!(s, 404, "{action}");
        assert_eq!(error_code(&b), "call_id_not_found");
    }
    let (s, b) = post(&emu, "rtc_nope", "transfer", None, Some(KEY)).await;
    assert_eq!(s, 404);
    assert!(
        b.contains("Invalid URL (POST /v1/realtime/calls/rtc_nope/transfer)"),
        "{b}"
    );

    let id = emu.new_call(Script::new()).call_id;
    let get = reqwest::Client::new()
        .get(format!(
            "{}/realtime/calls/{id}/accept",
            emu.rest_base_url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);

    assert_eq!(
        http_status(connect(&emu, "rtc_nope", Some(KEY)).await.unwrap_err()),
        404
    );
    // Before the accept the call has no session yet.
    let err = connect(&emu, &id, Some(KEY)).await.unwrap_err();
    match err {
        WsError::Http(resp) => {
            assert_eq!(resp.status(), 404);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "call_id_not_found");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn accept_without_realtime_type_fails_the_call() {
    let emu = emulator().await;
    let id = emu.new_call(Script::new()).call_id;
    let mut body = session();
    body.as_object_mut().unwrap().remove("type");
    let (s, b) = post(&emu, &id, "accept", Some(body.clone()), Some(KEY)).await;
    assert_eq!((s, b.as_str()), (200, ""));
    let view = emu.call(&id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Failed);
    assert_eq!(view.accept_body, Some(body));
    assert_eq!(
        http_status(connect(&emu, &id, Some(KEY)).await.unwrap_err()),
        404
    );
    let (s, _) = post(
        &emu,
        &id,
        "refer",
        Some(json!({"target_uri": "tel:+14155550123"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 404);

    // Not a JSON object: 400, the call stays pending.
    let other = emu.new_call(Script::new()).call_id;
    let (s, _) = post(&emu, &other, "accept", Some(json!(["realtime"])), Some(KEY)).await;
    assert_eq!(s, 400);
    let (s, _) = post(&emu, &other, "accept", None, Some(KEY)).await;
    assert_eq!(s, 400);
    assert_eq!(emu.call(&other).unwrap().status, EmuCallStatus::Pending);
}

#[tokio::test]
async fn accept_faults_503_then_200_and_404_missed() {
    let emu = emulator().await;
    let id = emu.new_call(Script::new().accept_statuses([503])).call_id;
    let (s, b) = post(&emu, &id, "accept", Some(session()), Some(KEY)).await;
    assert_eq!(s, 503);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(emu.call(&id).unwrap().status, EmuCallStatus::Pending);
    accept(&emu, &id).await;
    let view = emu.call(&id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Accepted);
    assert_eq!(view.accept_count, 2);

    let gone = emu.new_call(Script::new().accept_statuses([404])).call_id;
    for _ in 0..2 {
        let (s, b) = post(&emu, &gone, "accept", Some(session()), Some(KEY)).await;
        assert_eq!(s, 404);
        assert_eq!(error_code(&b), "call_id_not_found");
    }
    assert_eq!(emu.call(&gone).unwrap().status, EmuCallStatus::Missed);

    let slow = emu.new_call(Script::new().accept_delay_ms(150)).call_id;
    let started = std::time::Instant::now();
    accept(&emu, &slow).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn scripted_conversation_over_the_sideband() {
    let emu = emulator().await;
    let mut feed = emu.events();
    let script = Script::new()
        .turn_gap_ms(20)
        .reply("We're open nine to five, Monday to Friday.")
        .caller("Hi, what are your opening hours?")
        .dtmf("0")
        .tool("transfer_to_human", json!({"reason": "caller asked"}));
    let id = emu.new_call(script).call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();

    let created = next_event(&mut ws).await;
    assert_eq!(created["type"], "session.created");
    let s = &created["session"];
    assert_eq!(s["type"], "realtime");
    assert_eq!(s["object"], "realtime.session");
    assert!(s["id"].as_str().unwrap().starts_with("sess_"));
    assert_eq!(s["model"], "gpt-realtime-2.1");
    assert_eq!(s["instructions"], "You are Alex, a friendly concierge.");
    assert_eq!(s["audio"]["output"]["voice"], "marin");
    assert_eq!(s["tools"][0]["name"], "transfer_to_human");
    assert_eq!(s["output_modalities"], json!(["audio"]));

    // The greeting: a quoted line in the instructions is said verbatim.
    let greeting = json!({"type": "response.create", "response": {
        "instructions": "Greet the caller by saying exactly: \"Thanks for calling Example Corp, this is Alex.\""}});
    ws.send(Message::text(greeting.to_string())).await.unwrap();
    let resp = until(&mut ws, "response.done").await;
    let t = types(&resp);
    assert_eq!(t[0], "response.created");
    assert!(
        t.iter()
            .filter(|&&k| k == "response.output_audio_transcript.delta")
            .count()
            >= 2
    );
    let deltas: String = resp
        .iter()
        .filter(|e| e["type"] == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let done = resp
        .iter()
        .find(|e| e["type"] == "response.output_audio_transcript.done")
        .unwrap();
    assert_eq!(
        done["transcript"],
        "Thanks for calling Example Corp, this is Alex."
    );
    assert_eq!(deltas, done["transcript"].as_str().unwrap());
    for field in ["response_id", "item_id", "output_index", "content_index"] {
        assert!(done.get(field).is_some(), "{field}");
    }
    let rd = &resp.last().unwrap()["response"];
    assert_eq!(rd["object"], "realtime.response");
    assert_eq!(rd["status"], "completed");
    assert_eq!(rd["id"], done["response_id"]);
    assert!(rd["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        rd["output"][0]["content"][0]["transcript"],
        done["transcript"]
    );

    // The caller's turn, then the model's automatic answer.
    let caller = until(
        &mut ws,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    assert_eq!(
        types(&caller),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed"
        ]
    );
    let tr = caller.last().unwrap();
    assert_eq!(tr["transcript"], "Hi, what are your opening hours?");
    assert_eq!(tr["content_index"], 0);
    assert_eq!(tr["item_id"], caller[0]["item_id"]);
    let reply = until(&mut ws, "response.done").await;
    let reply_done = reply
        .iter()
        .find(|e| e["type"] == "response.output_audio_transcript.done")
        .unwrap();
    assert_eq!(
        reply_done["transcript"],
        "We're open nine to five, Monday to Friday."
    );

    let dtmf = next_event(&mut ws).await;
    assert_eq!(dtmf["type"], "input_audio_buffer.dtmf_event_received");
    assert_eq!(dtmf["event"], "0");
    assert!(dtmf["received_at"].as_i64().unwrap() > 1_700_000_000);

    // The tool call, then the wait for the controller's output.
    let tool = until(&mut ws, "response.done").await;
    assert_eq!(tool[0]["type"], "response.created");
    let args_done = tool
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .expect("arguments.done");
    assert_eq!(args_done["name"], "transfer_to_human");
    let tool_call_id = args_done["call_id"].as_str().unwrap().to_string();
    assert!(tool_call_id.starts_with("call_"));
    let args: Value = serde_json::from_str(args_done["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"reason": "caller asked"}));
    let out = &tool.last().unwrap()["response"]["output"][0];
    assert_eq!(out["type"], "function_call");
    assert_eq!(out["call_id"], tool_call_id.as_str());
    assert_eq!(out["name"], "transfer_to_human");
    assert_eq!(out["arguments"], args_done["arguments"]);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !emu.call(&id).unwrap().script_done,
        "waits for the tool output"
    );

    let output = json!({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": tool_call_id, "output": "{\"ok\":true}"}});
    ws.send(Message::text(output.to_string())).await.unwrap();
    ws.send(Message::text(
        json!({"type": "response.create"}).to_string(),
    ))
    .await
    .unwrap();
    let ack = until(&mut ws, "conversation.item.done").await;
    assert_eq!(
        types(&ack),
        ["conversation.item.added", "conversation.item.done"]
    );
    let after = until(&mut ws, "response.done").await;
    let after_done = after
        .iter()
        .find(|e| e["type"] == "response.output_audio_transcript.done")
        .unwrap();
    assert_eq!(
        after_done["transcript"],
        "Is there anything else I can help with?"
    );

    let view = emu
        .wait_for(&id, WAIT, |v| v.script_done)
        .await
        .expect("script finishes");
    assert_eq!(view.status, EmuCallStatus::Accepted, "the call stays up");
    assert_eq!(view.sideband_connections, 1);
    assert_eq!(view.caller_lines, ["Hi, what are your opening hours?"]);
    assert_eq!(
        view.agent_lines,
        [
            "Thanks for calling Example Corp, this is Alex.",
            "We're open nine to five, Monday to Friday.",
            "Is there anything else I can help with?"
        ]
    );
    assert_eq!(
        view.function_outputs,
        [(tool_call_id.clone(), "{\"ok\":true}".to_string())]
    );
    let kinds: Vec<&str> = view
        .client_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "response.create",
            "conversation.item.create",
            "response.create"
        ]
    );

    let mut transcripts = Vec::new();
    while let Ok(ev) = feed.try_recv() {
        if let EmulatorEvent::Transcript { speaker, text, .. } = ev {
            transcripts.push((speaker, text));
        }
    }
    assert_eq!(transcripts.len(), 4);
    assert_eq!(
        transcripts[1],
        (
            Speaker::Caller,
            "Hi, what are your opening hours?".to_string()
        )
    );
}

#[tokio::test]
async fn greeting_without_quote_uses_the_script_greeting_and_garbage_is_ignored() {
    let emu = emulator().await;
    let id = emu
        .new_call(Script::new().greeting("Good morning!").reply("Canned."))
        .call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    ws.send(Message::text("this is not json")).await.unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    ws.send(Message::text(json!({"type": "bogus.event"}).to_string()))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"type": "response.cancel"}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"type": "response.create"}).to_string(),
    ))
    .await
    .unwrap();
    let resp = until(&mut ws, "response.done").await;
    assert_eq!(
        resp[0]["type"], "response.created",
        "nothing answers the garbage"
    );
    let done = resp
        .iter()
        .find(|e| e["type"] == "response.output_audio_transcript.done")
        .unwrap();
    assert_eq!(done["transcript"], "Good morning!");

    ws.send(Message::text(
        json!({"type": "session.update", "session": {"type": "realtime", "instructions": "New."}})
            .to_string(),
    ))
    .await
    .unwrap();
    let updated = next_event(&mut ws).await;
    assert_eq!(updated["type"], "session.updated");
    assert_eq!(updated["session"]["instructions"], "New.");
    assert_eq!(updated["session"]["model"], "gpt-realtime-2.1");

    let view = emu.call(&id).unwrap();
    assert_eq!(view.client_events[0], json!("this is not json"));
    assert_eq!(view.client_events.len(), 5);
    assert_eq!(view.agent_lines, ["Good morning!"]);
}

#[tokio::test]
async fn session_without_transcription_or_auto_response_stays_quiet() {
    let emu = emulator().await;
    let id = emu.new_call(quick().caller("Hello?").dtmf("5")).call_id;
    let body = json!({"type": "realtime", "audio": {"input": {"turn_detection": null}}});
    let (s, _) = post(&emu, &id, "accept", Some(body), Some(KEY)).await;
    assert_eq!(s, 200);
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let seen = until(&mut ws, "input_audio_buffer.dtmf_event_received").await;
    assert_eq!(
        types(&seen),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "input_audio_buffer.dtmf_event_received"
        ]
    );
    let view = emu.wait_for(&id, WAIT, |v| v.script_done).await.unwrap();
    assert_eq!(view.caller_lines, ["Hello?"]);
    assert!(view.agent_lines.is_empty());
}

#[tokio::test]
async fn drop_then_reconnect_resumes_at_the_next_turn() {
    let emu = emulator().await;
    let id = emu
        .new_call(quick().caller("first").drop_connection().caller("second"))
        .call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let first = until(
        &mut ws,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    assert_eq!(first.last().unwrap()["transcript"], "first");
    until(&mut ws, "response.done").await;
    expect_dropped(&mut ws).await;
    let view = emu
        .wait_for(&id, WAIT, |v| v.sideband_connections == 1)
        .await
        .unwrap();
    assert_eq!(view.status, EmuCallStatus::Accepted, "the call stays live");

    let mut ws2 = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws2).await["type"], "session.created");
    let second = until(
        &mut ws2,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    assert_eq!(
        second[0]["type"], "input_audio_buffer.speech_started",
        "no replay"
    );
    assert_eq!(second.last().unwrap()["transcript"], "second");
    let view = emu.wait_for(&id, WAIT, |v| v.script_done).await.unwrap();
    assert_eq!(view.sideband_connections, 2);
    assert_eq!(view.caller_lines, ["first", "second"]);
}

#[tokio::test]
async fn caller_hangup_drops_without_close_frame_and_ends_the_call() {
    let emu = emulator().await;
    let id = emu.new_call(quick().caller("bye").hangup()).call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    expect_dropped(&mut ws).await;
    let view = emu
        .wait_for(&id, WAIT, |v| v.status == EmuCallStatus::CallerHungUp)
        .await
        .unwrap();
    assert!(view.script_done);
    assert_eq!(
        http_status(connect(&emu, &id, Some(KEY)).await.unwrap_err()),
        404
    );
    let (s, _) = post(&emu, &id, "hangup", None, Some(KEY)).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn controller_hangup_sends_a_close_frame() {
    let emu = emulator().await;
    let id = emu.new_call(Script::new()).call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let (s, b) = post(&emu, &id, "hangup", None, Some(KEY)).await;
    assert_eq!((s, b.as_str()), (200, ""));
    assert_eq!(expect_close_frame(&mut ws).await, CloseCode::Normal);
    assert_eq!(emu.call(&id).unwrap().status, EmuCallStatus::HungUp);
    assert_eq!(
        http_status(connect(&emu, &id, Some(KEY)).await.unwrap_err()),
        404
    );
}

#[tokio::test]
async fn refer_transfer_closes_the_sideband_with_a_close_frame() {
    let emu = emulator().await;
    let id = emu.new_call(Script::new()).call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let target = "sip:agent@example.com";
    let (s, b) = post(
        &emu,
        &id,
        "refer",
        Some(json!({"target_uri": target})),
        Some(KEY),
    )
    .await;
    assert_eq!((s, b.as_str()), (200, ""));
    let started = std::time::Instant::now();
    assert_eq!(expect_close_frame(&mut ws).await, CloseCode::Normal);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "closes after a short delay"
    );
    let view = emu.call(&id).unwrap();
    assert_eq!(
        view.status,
        EmuCallStatus::Transferred {
            target: target.to_string()
        }
    );
    assert_eq!(
        http_status(connect(&emu, &id, Some(KEY)).await.unwrap_err()),
        404
    );
    let (s, _) = post(
        &emu,
        &id,
        "refer",
        Some(json!({"target_uri": target})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn refer_ignore_does_nothing_and_status_faults_repeat() {
    let emu = emulator().await;
    let id = emu
        .new_call(Script::new().refer_faults([ReferFault::Ignore, ReferFault::Status(500)]))
        .call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let body = json!({"target_uri": "tel:+14155550123"});
    let (s, b) = post(&emu, &id, "refer", Some(body.clone()), Some(KEY)).await;
    assert_eq!((s, b.as_str()), (200, ""));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ws.next())
            .await
            .is_err(),
        "the sideband stays silent and open"
    );
    for _ in 0..2 {
        let (s, b) = post(&emu, &id, "refer", Some(body.clone()), Some(KEY)).await;
        assert_eq!(s, 500);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }
    let view = emu.call(&id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Accepted);
    assert_eq!(view.refer_targets.len(), 3);
    // Still live: a ping is answered.
    ws.send(Message::text(
        json!({"type": "response.create"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "response.created");
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn webhook_receiver(status: u16) -> (String, Receiver) {
    let rx = Receiver::default();
    let store = rx.clone();
    let app = axum::Router::new().route(
        "/openai/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                store.got.lock().unwrap().push((headers, body));
                let mut resp = axum::response::Response::new(axum::body::Body::empty());
                *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                if status == 307 {
                    resp.headers_mut()
                        .insert("location", "/elsewhere".parse().unwrap());
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/openai/webhook"), rx)
}

#[tokio::test]
async fn deliver_signs_like_openai_and_verifies() {
    let emu = emulator().await;
    let (url, rx) = webhook_receiver(204).await;
    let script = Script::new()
        .from("\"Ada\" <sip:+14155550123@pstn.twilio.com>;tag=1")
        .header(
            "Diversion",
            "<sip:+18005550100@example.com>;reason=unconditional",
        );
    let placed = emu.place_call(&url, SECRET, script).await.unwrap();
    assert_eq!(placed.status, 204);
    assert!(placed.webhook_id.starts_with("wh_") && placed.webhook_id.len() == 35);

    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(
        headers["user-agent"],
        "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["webhook-id"], placed.webhook_id.as_str());
    let now = chrono::Utc::now().timestamp();
    let verified = Verifier::new(SECRET, 300)
        .unwrap()
        .verify(DeliveryHeaders::from_map(headers), body, now)
        .expect("signature verifies over the exact body");
    assert_eq!(verified.webhook_id, placed.webhook_id);
    assert!((verified.timestamp - now).abs() <= 5);
    // A different secret does not verify.
    assert!(
        Verifier::new("whsec_c3ludGhldGljLXdlYmhvb2stc2VjcmV0", 300)
            .unwrap()
            .verify(DeliveryHeaders::from_map(headers), body, now)
            .is_err()
    );

    // The body has the `realtime.call.incoming` shape, fields in the documented order.
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.starts_with("{\"object\":\"event\",\"id\":\"evt_"),
        "{text}"
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "realtime.call.incoming");
    assert_eq!(v["id"].as_str().unwrap().len(), 4 + 32);
    assert!((v["created_at"].as_i64().unwrap() - now).abs() <= 5);
    let call_id = v["data"]["call_id"].as_str().unwrap();
    assert_eq!(call_id, placed.call_id);
    assert!(call_id.starts_with("rtc_") && call_id.len() == 36);
    assert!(call_id[4..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(v["data"]["sip_media_security"], "srtp");
    let names: Vec<&str> = v["data"]["sip_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["From", "To", "Call-ID", "Diversion"]);
    assert_eq!(
        v["data"]["sip_headers"][0]["value"],
        "\"Ada\" <sip:+14155550123@pstn.twilio.com>;tag=1"
    );
    assert_eq!(emu.call(call_id).unwrap().status, EmuCallStatus::Pending);

    // new_call + deliver: same bytes as returned, explicit id and timestamp; no media security.
    let pending = emu.new_call(Script::new().media_security(None));
    let v: Value = serde_json::from_slice(&pending.body).unwrap();
    assert!(v["data"].get("sip_media_security").is_none());
    assert_eq!(v["id"], pending.event_id.as_str());
    let status = emu
        .deliver(&url, SECRET, "wh_retry", 1_750_287_078, &pending.body)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let got = rx.got.lock().unwrap().clone();
    let (headers, body) = &got[1];
    assert_eq!(body, &pending.body);
    assert_eq!(headers["webhook-timestamp"], "1750287078");
    let expected =
        Verifier::new(SECRET, 300)
            .unwrap()
            .sign("wh_retry", "1750287078", &pending.body);
    assert_eq!(headers["webhook-signature"], expected.as_str());
}

#[tokio::test]
async fn deliver_reports_status_and_does_not_follow_redirects() {
    let emu = emulator().await;
    let (url, rx) = webhook_receiver(307).await;
    let pending = emu.new_call(Script::new());
    let status = emu
        .deliver(
            &url,
            SECRET,
            "wh_1",
            chrono::Utc::now().timestamp(),
            &pending.body,
        )
        .await
        .unwrap();
    assert_eq!(status, 307);
    assert_eq!(rx.got.lock().unwrap().len(), 1);
    assert!(
        emu.deliver("http://127.0.0.1:1/x", SECRET, "wh_2", 0, b"{}")
            .await
            .is_err()
    );
}

#[test]
fn example_scripts_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let script = Script::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!script.turns.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3);
    let demo = Script::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/question_then_human.toml"),
    )
    .unwrap();
    assert_eq!(demo.call.headers[0].0, "Diversion");
}

#[tokio::test]
async fn tool_turn_moves_on_when_no_output_arrives() {
    let emu = emulator().await;
    let id = emu
        .new_call(
            quick()
                .tool_timeout_ms(200)
                .tool("lookup_order", json!({"order": 42}))
                .caller("Hello?"),
        )
        .call_id;
    accept(&emu, &id).await;
    let mut ws = connect(&emu, &id, Some(KEY)).await.unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.created");
    let tool = until(&mut ws, "response.done").await;
    assert!(types(&tool).contains(&"response.function_call_arguments.done"));
    let started = std::time::Instant::now();
    let next = next_event(&mut ws).await;
    assert_eq!(next["type"], "input_audio_buffer.speech_started");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "waited for the output first"
    );
    let view = emu.wait_for(&id, WAIT, |v| v.script_done).await.unwrap();
    assert!(view.function_outputs.is_empty());
    assert_eq!(view.caller_lines, ["Hello?"]);
}
