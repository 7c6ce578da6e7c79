//! FakeTwilio as Twilio's webhook and Media Streams client, against a small server in this test
//! that validates `X-Twilio-Signature` with `voxmachina::twilio::signature` over a configured
//! public URL (Twilio's webhook security docs), answers TwiML, and speaks the Media Streams
//! protocol.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use support::fake_twilio::FakeTwilio;
use voxmachina::config::Secret;
use voxmachina::twilio::media::{ServerMessage, TwilioMessage};
use voxmachina::twilio::signature;
use voxmachina::twilio::twiml::{self, Stream};
use voxmachina::twilio::voice::VoiceWebhook;

/// The public base URL Twilio is configured with; the server validates against it, not against
/// the `Host` it sees (127.0.0.1:port).
const PUBLIC: &str = "https://voice.example.com";
const PUBLIC_WSS: &str = "wss://voice.example.com";

#[derive(Clone)]
struct App {
    token: Secret,
    webhooks: Arc<Mutex<Vec<VoiceWebhook>>>,
    frames: Arc<Mutex<Vec<TwilioMessage>>>,
}

fn sig_header(headers: &HeaderMap) -> &str {
    headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn voice(
    State(app): State<App>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("{PUBLIC}{uri}");
    let params = signature::parse_form(&body);
    if !signature::validate(&app.token, &url, &params, sig_header(&headers)) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let hook = VoiceWebhook::from_params(&params).unwrap();
    let caller = hook.from.clone();
    app.webhooks.lock().unwrap().push(hook);
    let xml = twiml::Response::new()
        .connect_stream(
            Stream::new(format!("{PUBLIC_WSS}/media"))
                .unwrap()
                .parameter("caller", caller)
                .unwrap(),
        )
        .render();
    ([("content-type", "text/xml")], xml).into_response()
}

async fn json_hook(
    State(app): State<App>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let url = format!("{PUBLIC}{uri}");
    if signature::validate_body_sha256(&app.token, &url, &body, sig_header(&headers)) {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

/// Validates against the URL the request reached (`Host` header): only for checking the fake's
/// own JSON helper, which signs the URL it posts to.
async fn json_local(
    State(app): State<App>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let url = format!("http://{host}{uri}");
    if signature::validate_body_sha256(&app.token, &url, &body, sig_header(&headers)) {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

async fn media(State(app): State<App>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let url = format!("{PUBLIC_WSS}/media");
    if !signature::validate_websocket(&app.token, &url, sig_header(&headers)) {
        return StatusCode::FORBIDDEN.into_response();
    }
    ws.on_upgrade(move |socket| bridge(app, socket))
}

/// Echoes each media chunk back, then a mark named after its chunk; answers DTMF `*` with
/// `clear`; closes after `stop`.
async fn bridge(app: App, mut socket: WebSocket) {
    while let Some(Ok(frame)) = socket.recv().await {
        let Message::Text(text) = frame else { continue };
        let msg = TwilioMessage::parse(text.as_str()).unwrap();
        app.frames.lock().unwrap().push(msg.clone());
        let reply = match &msg {
            TwilioMessage::Media(m) => vec![
                ServerMessage::media(&m.stream_sid, &m.audio().unwrap()),
                ServerMessage::mark(&m.stream_sid, format!("chunk-{}", m.media.chunk)),
            ],
            TwilioMessage::Dtmf(d) if d.dtmf.digit == "*" => {
                vec![ServerMessage::clear(&d.stream_sid)]
            }
            TwilioMessage::Stop(_) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ => vec![],
        };
        for r in reply {
            socket.send(Message::text(r.to_json())).await.unwrap();
        }
    }
}

struct Server {
    local: String,
    app: App,
}

async fn server(fake: &FakeTwilio) -> Server {
    let app = App {
        token: fake.auth_token(),
        webhooks: Arc::default(),
        frames: Arc::default(),
    };
    let router = Router::new()
        .route("/voice", post(voice))
        .route("/json", post(json_hook))
        .route("/json-local", post(json_local))
        .route("/media", get(media))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Server {
        local: format!("127.0.0.1:{}", addr.port()),
        app,
    }
}

#[tokio::test]
async fn signed_voice_webhook_is_accepted_and_answered_with_a_stream() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    let mut params = fake.voice_params("CA0001", "+14155550123", "+18005550100");
    params.push(("SipHeader_X-Tenant".into(), "acme & co".into()));
    let resp = fake
        .post_webhook_signed_as(
            &format!("http://{}/voice?tenant=1", srv.local),
            &format!("{PUBLIC}/voice?tenant=1"),
            &params,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://voice.example.com/media\">\
         <Parameter name=\"caller\" value=\"+14155550123\"/></Stream></Connect></Response>"
    );
    let hooks = srv.app.webhooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h.call_sid, "CA0001");
    assert_eq!(h.account_sid, fake.account_sid());
    assert_eq!(
        (h.from.as_str(), h.to.as_str()),
        ("+14155550123", "+18005550100")
    );
    assert_eq!(
        (h.call_status.as_str(), h.direction.as_str()),
        ("ringing", "inbound")
    );
    assert_eq!(h.sip_headers["X-Tenant"], "acme & co");
}

#[tokio::test]
async fn webhook_signed_with_the_port_is_accepted() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    let params = fake.voice_params("CA0002", "+14155550123", "+18005550100");
    let resp = fake
        .post_webhook_signed_as(
            &format!("http://{}/voice", srv.local),
            &format!("{}:443/voice", PUBLIC),
            &params,
        )
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn forged_or_tampered_webhooks_are_refused() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    let url = format!("http://{}/voice", srv.local);
    let params = fake.voice_params("CA0003", "+14155550123", "+18005550100");
    // Signed over the local URL, which is not the configured public one.
    assert_eq!(fake.post_webhook(&url, &params).await.status(), 403);
    // Signed correctly, then a parameter changed.
    let sig = signature::sign(&fake.auth_token(), &format!("{PUBLIC}/voice"), &params);
    let mut tampered = params.clone();
    tampered[2].1 = "CA9999".into();
    assert_eq!(
        fake.post_webhook_with_signature(&url, &tampered, &sig)
            .await
            .status(),
        403
    );
    assert_eq!(
        fake.post_webhook_with_signature(&url, &params, &sig)
            .await
            .status(),
        200
    );
    assert_eq!(
        fake.post_webhook_with_signature(&url, &params, "")
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn json_webhook_with_body_sha256() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    // Signed over the public URL: build the request by hand with the same steps as the fake.
    let body = r#"{"property": "value", "boolean": true}"#;
    let hash = signature::body_sha256_hex(body.as_bytes());
    let public = format!("{PUBLIC}/json?x=1&bodySHA256={hash}");
    let sig = signature::sign(&fake.auth_token(), &public, &[]);
    let http = reqwest::Client::new();
    let send = |b: &'static str, s: String| {
        http.post(format!("http://{}/json?x=1&bodySHA256={hash}", srv.local))
            .header("X-Twilio-Signature", s)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    assert_eq!(send(body, sig.clone()).await.unwrap().status(), 200);
    assert_eq!(
        send(r#"{"property": "other", "boolean": true}"#, sig)
            .await
            .unwrap()
            .status(),
        403
    );
    // The fake's own helper signs over the URL it posts to: the local one, so it is refused here.
    let resp = fake
        .post_json_webhook(&format!("http://{}/json?x=1", srv.local), body)
        .await;
    assert_eq!(resp.status(), 403);
    let resp = fake
        .post_json_webhook(&format!("http://{}/json-local?x=1", srv.local), body)
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn media_stream_round_trip() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    let mut ws = fake
        .open_media_stream_signed_as(
            &format!("ws://{}/media", srv.local),
            &format!("{PUBLIC_WSS}/media"),
        )
        .await
        .unwrap();
    ws.send_connected().await;
    let sid = ws.send_start("CA0004", &[("caller", "+14155550123")]).await;
    let frame = [0x7fu8; 160];
    ws.send_media(&frame).await;
    ws.send_media(&frame[..80]).await;
    let t = Duration::from_secs(5);
    assert_eq!(
        ws.recv(t).await,
        Ok(Some(ServerMessage::media(&sid, &frame)))
    );
    assert_eq!(
        ws.recv(t).await,
        Ok(Some(ServerMessage::mark(&sid, "chunk-1")))
    );
    assert_eq!(
        ws.recv(t).await,
        Ok(Some(ServerMessage::media(&sid, &frame[..80])))
    );
    assert_eq!(
        ws.recv(t).await,
        Ok(Some(ServerMessage::mark(&sid, "chunk-2")))
    );
    ws.send_dtmf("*").await;
    assert_eq!(ws.recv(t).await, Ok(Some(ServerMessage::clear(&sid))));
    ws.send_mark("chunk-2").await;
    ws.send_stop().await;
    assert_eq!(ws.recv(t).await, Ok(None), "server closes after stop");

    let frames = srv.app.frames.lock().unwrap().clone();
    let events: Vec<&str> = frames.iter().map(TwilioMessage::event).collect();
    assert_eq!(
        events,
        [
            "connected",
            "start",
            "media",
            "media",
            "dtmf",
            "mark",
            "stop"
        ]
    );
    let TwilioMessage::Start(start) = &frames[1] else {
        panic!()
    };
    assert_eq!(start.sequence_number, "1");
    assert_eq!(start.start.call_sid, "CA0004");
    assert_eq!(start.start.account_sid, fake.account_sid());
    assert_eq!(start.start.custom_parameters["caller"], "+14155550123");
    let TwilioMessage::Media(second) = &frames[3] else {
        panic!()
    };
    assert_eq!(
        (
            second.sequence_number.as_str(),
            second.media.chunk.as_str(),
            second.media.timestamp.as_str()
        ),
        ("3", "2", "20"),
        "20 ms after the first 160-byte chunk"
    );
    let TwilioMessage::Stop(stop) = &frames[6] else {
        panic!()
    };
    assert_eq!(stop.stop.call_sid, "CA0004");
    assert_eq!(stop.stream_sid, sid);
}

#[tokio::test]
async fn media_stream_upgrade_needs_a_valid_signature() {
    let fake = FakeTwilio::start().await;
    let srv = server(&fake).await;
    let local = format!("ws://{}/media", srv.local);
    for sig in [None, Some("7PR3qMkpDyEJtMrVOY/LDyNq8J8=")] {
        let err = fake
            .open_media_stream_with_signature(&local, sig)
            .await
            .err()
            .expect("upgrade refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), 403)
            }
            other => panic!("{other:?}"),
        }
    }
    // Signed over the public URL with a trailing slash: accepted.
    let ws = fake
        .open_media_stream_signed_as(&local, &format!("{PUBLIC_WSS}/media/"))
        .await;
    assert!(ws.is_ok());
}
