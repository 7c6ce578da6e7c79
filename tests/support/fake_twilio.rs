//! A local fake of Twilio, in both of Twilio's roles:
//!
//! 1. **The REST API** (<https://www.twilio.com/docs/voice/api/call-resource>), a real HTTP server
//!    on `127.0.0.1:0`: `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` (create, 201), `POST
//!    …/Calls/{CallSid}.json` (update, 200) and `POST …/Messages.json` (SMS, 201). Every request is
//!    recorded (method, path, headers, decoded form fields, raw body). Checks, in order: HTTP Basic
//!    auth as `AccountSid:AuthToken` or a registered API key (`401`, code 20003, otherwise); the
//!    route (`404`, code 20404); the next injected failure ([`FakeTwilio::fail_next`]); then the
//!    parameters (below). Errors carry Twilio's JSON `{"code","message","more_info","status"}`.
//! 2. **Twilio as a client of our server**: signed voice webhooks and signed Media Streams
//!    WebSocket connections via [`FakeTwilio::post_webhook`] and
//!    [`FakeTwilio::open_media_stream`].
//!
//! Parameter checks. From Twilio's Call resource docs and twilio-node `call.ts`: `To` must be
//! E.164, `sip:`/`sips:` or `client:` (21211, with the §4.3 message); `SendDigits` at most 32 of
//! `0-9A-D#*wW` (21206). From Twilio's public error dictionary as we know it, **[unverified]**:
//! 20003 (auth), 20404 (not found), 21201 (no `To`), 21213 (no `From`), 21205 (none, or more than
//! one, of `Url`, `Twiml`, `ApplicationSid`), 21220 (redirecting a call that has ended), 21218 (a
//! `Status` other than `completed`/`canceled`); for messages 21604 (no `To`), 21603 (no `From`),
//! 21602 (no `Body`), 21617 (`Body` over 1600 characters). The fake does not check `Twiml`'s
//! 4000-character limit (the client refuses it first) nor fetch `Url`s.
//!
//! Call state: a created call is `queued`; [`FakeTwilio::set_call_status`] moves it on. An update
//! with `Twiml`/`Url` records the new instructions; `Status=completed` ends the call,
//! `Status=canceled` cancels a `queued`/`ringing` call and leaves others unchanged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voxmachina::config::Secret;
use voxmachina::twilio::media::{
    Connected, Dtmf, DtmfDigit, Mark, MarkName, Media, MediaChunk, MediaFormat, ServerMessage,
    Start, StartInfo, Stop, StopInfo, TwilioMessage,
};
use voxmachina::twilio::signature;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `POST`, ….
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Headers, names lower-case, in received order.
    pub headers: Vec<(String, String)>,
    /// The body decoded as `application/x-www-form-urlencoded`, in order, repeats kept.
    pub form: Vec<(String, String)>,
    /// The raw body.
    pub body: String,
}

impl RecordedRequest {
    /// First header value named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// First form value named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every form value named `name`, in order.
    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The form field names in order.
    pub fn field_names(&self) -> Vec<&str> {
        self.form.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Decoded HTTP Basic credentials.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        basic_credentials(self.header("authorization")?)
    }
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// A call the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// `CA…`.
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`.
    pub from: String,
    /// Current status.
    pub status: String,
    /// Latest inline TwiML (create or update).
    pub twiml: Option<String>,
    /// Latest `Url`.
    pub url: Option<String>,
    /// Form fields of every update, in order.
    pub updates: Vec<Vec<(String, String)>>,
}

/// A message the fake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMessage {
    /// `SM…`.
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`.
    pub from: String,
    /// `Body`.
    pub body: String,
}

#[derive(Debug, Clone)]
struct Failure {
    status: u16,
    code: u32,
    message: String,
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    calls: BTreeMap<String, FakeCall>,
    messages: Vec<FakeMessage>,
    failures: VecDeque<Failure>,
    api_keys: Vec<(String, String)>,
    next_sid: u64,
}

struct Inner {
    account_sid: String,
    auth_token: String,
    state: Mutex<State>,
}

/// The fake. Dropping it stops the server.
pub struct FakeTwilio {
    /// `http://127.0.0.1:{port}`: pass as the REST client's base URL.
    pub base_url: String,
    inner: Arc<Inner>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Default test account.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
/// Default test auth token.
pub const AUTH_TOKEN: &str = "test-auth-token-0123456789abcdef";

impl FakeTwilio {
    /// Starts a fake for [`ACCOUNT_SID`] / [`AUTH_TOKEN`].
    pub async fn start() -> Self {
        Self::start_with(ACCOUNT_SID, AUTH_TOKEN).await
    }

    /// Starts a fake for one account.
    pub async fn start_with(account_sid: &str, auth_token: &str) -> Self {
        let inner = Arc::new(Inner {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            state: Mutex::new(State::default()),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}"),
            inner,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            task,
        }
    }

    /// The account SID.
    pub fn account_sid(&self) -> &str {
        &self.inner.account_sid
    }

    /// The auth token, as a [`Secret`].
    pub fn auth_token(&self) -> Secret {
        Secret::new(self.inner.auth_token.clone())
    }

    /// Also accept Basic auth as `key_sid:key_secret`.
    pub fn add_api_key(&self, key_sid: &str, key_secret: &str) {
        self.lock()
            .api_keys
            .push((key_sid.to_string(), key_secret.to_string()));
    }

    /// The next authenticated request to a known route fails with this status and Twilio error
    /// code (queued: several calls fail several requests in order).
    pub fn fail_next(&self, status: u16, code: u32, message: &str) {
        self.lock().failures.push_back(Failure {
            status,
            code,
            message: message.to_string(),
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The calls, by sid.
    pub fn calls(&self) -> BTreeMap<String, FakeCall> {
        self.lock().calls.clone()
    }

    /// One call.
    pub fn call(&self, sid: &str) -> Option<FakeCall> {
        self.lock().calls.get(sid).cloned()
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<FakeMessage> {
        self.lock().messages.clone()
    }

    /// Registers an inbound call `from` → `to` as Twilio has it while it runs our voice
    /// webhook's TwiML (`in-progress`), so it can be updated; returns its `CallSid`.
    pub fn add_inbound_call(&self, from: &str, to: &str) -> String {
        let mut state = self.lock();
        let sid = next_sid(&mut state, "CA");
        state.calls.insert(
            sid.clone(),
            FakeCall {
                sid: sid.clone(),
                to: to.to_string(),
                from: from.to_string(),
                status: "in-progress".into(),
                twiml: None,
                url: None,
                updates: Vec::new(),
            },
        );
        sid
    }

    /// Moves a call to `status` (`ringing`, `in-progress`, `completed`, …).
    pub fn set_call_status(&self, sid: &str, status: &str) {
        if let Some(call) = self.lock().calls.get_mut(sid) {
            call.status = status.to_string();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    // ---- Twilio as a client of our server -------------------------------------------------

    /// The parameters of an inbound voice webhook for a call `from` → `to`.
    pub fn voice_params(&self, call_sid: &str, from: &str, to: &str) -> Vec<(String, String)> {
        [
            ("AccountSid", self.account_sid()),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid),
            ("CallStatus", "ringing"),
            ("CallToken", "%7B%22parentCallInfoToken%22%3A%22eyJ%22%7D"),
            ("Called", to),
            ("CalledCountry", "US"),
            ("Caller", from),
            ("CallerCountry", "US"),
            ("Direction", "inbound"),
            ("From", from),
            ("FromCity", "SAN FRANCISCO"),
            ("FromCountry", "US"),
            ("FromState", "CA"),
            ("To", to),
            ("ToCountry", "US"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    /// POSTs `params` form-encoded to `url` with the `X-Twilio-Signature` Twilio would send.
    pub async fn post_webhook(&self, url: &str, params: &[(String, String)]) -> reqwest::Response {
        self.post_webhook_signed_as(url, url, params).await
    }

    /// As [`FakeTwilio::post_webhook`], but the signature is computed over `signed_url` (e.g. the
    /// URL with `:443`, to exercise the port quirk).
    pub async fn post_webhook_signed_as(
        &self,
        url: &str,
        signed_url: &str,
        params: &[(String, String)],
    ) -> reqwest::Response {
        let sig = signature::sign(&self.auth_token(), signed_url, params);
        self.post_webhook_with_signature(url, params, &sig).await
    }

    /// POSTs `params` to `url` with an arbitrary `X-Twilio-Signature` value.
    pub async fn post_webhook_with_signature(
        &self,
        url: &str,
        params: &[(String, String)],
        sig: &str,
    ) -> reqwest::Response {
        self.http
            .post(url)
            .header("X-Twilio-Signature", sig)
            .header("User-Agent", "TwilioProxy/1.1")
            .form(params)
            .send()
            .await
            .unwrap()
    }

    /// POSTs a JSON `body` the way Twilio signs JSON webhooks: `bodySHA256` added
    /// to the query, the URL signed with no params.
    pub async fn post_json_webhook(&self, url: &str, body: &str) -> reqwest::Response {
        let sep = if url.contains('?') { '&' } else { '?' };
        let signed = format!(
            "{url}{sep}bodySHA256={}",
            signature::body_sha256_hex(body.as_bytes())
        );
        let sig = signature::sign(&self.auth_token(), &signed, &[]);
        self.http
            .post(&signed)
            .header("X-Twilio-Signature", sig)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Opens a Media Streams WebSocket to `url` (`ws://` or `wss://`) with the upgrade signed
    /// over the URL as given, no params.
    pub async fn open_media_stream(
        &self,
        url: &str,
    ) -> Result<MediaStreamClient, tokio_tungstenite::tungstenite::Error> {
        let sig = signature::sign(&self.auth_token(), url, &[]);
        self.open_media_stream_with_signature(url, Some(&sig)).await
    }

    /// As [`FakeTwilio::open_media_stream`], but signed over `signed_url`: the public `wss://`
    /// URL of the TwiML when the test connects to a local `ws://` address.
    pub async fn open_media_stream_signed_as(
        &self,
        url: &str,
        signed_url: &str,
    ) -> Result<MediaStreamClient, tokio_tungstenite::tungstenite::Error> {
        let sig = signature::sign(&self.auth_token(), signed_url, &[]);
        self.open_media_stream_with_signature(url, Some(&sig)).await
    }

    /// Opens a Media Streams WebSocket with an arbitrary (or no) signature header.
    pub async fn open_media_stream_with_signature(
        &self,
        url: &str,
        sig: Option<&str>,
    ) -> Result<MediaStreamClient, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(sig) = sig {
            req.headers_mut()
                .insert("x-twilio-signature", sig.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(MediaStreamClient {
            ws,
            account_sid: self.account_sid().to_string(),
            call_sid: String::new(),
            stream_sid: String::new(),
            sequence: 0,
            chunk: 0,
            timestamp_ms: 0,
        })
    }
}

/// What Twilio puts on the INVITE of a `<Dial><Sip>` leg: the `(name, value)` URI headers of
/// the first `<Sip>` URI of `twiml` (after `?`, `&`-separated, values percent-decoded), as
/// Twilio documents for `<Dial><Sip>` (<https://www.twilio.com/docs/voice/api/receiving-sip>).
/// `None` when the document has no `<Sip>`.
pub fn sip_dial_headers(twiml: &str) -> Option<Vec<(String, String)>> {
    let start = twiml.find("<Sip>")? + "<Sip>".len();
    let end = start + twiml[start..].find("</Sip>")?;
    let uri = twiml[start..end].replace("&amp;", "&");
    let Some((_, query)) = uri.split_once('?') else {
        return Some(Vec::new());
    };
    Some(
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(n, v)| {
                let value = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                (n.to_string(), value.into_owned())
            })
            .collect(),
    )
}

fn next_sid(state: &mut State, prefix: &str) -> String {
    state.next_sid += 1;
    format!("{prefix}{:032x}", 0xfa4e_0000_u64 + state.next_sid)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Twilio's side of one Media Stream. Sequence numbers, chunk numbers and timestamps (20 ms per
/// 160 bytes of µ-law) advance as Twilio's do.
pub struct MediaStreamClient {
    ws: Ws,
    account_sid: String,
    call_sid: String,
    stream_sid: String,
    sequence: u64,
    chunk: u64,
    timestamp_ms: u64,
}

impl MediaStreamClient {
    /// The stream sid set by [`MediaStreamClient::send_start`].
    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    fn seq(&mut self) -> String {
        self.sequence += 1;
        self.sequence.to_string()
    }

    /// Sends any message as a text frame.
    pub async fn send(&mut self, msg: &TwilioMessage) {
        self.send_text(msg.to_json()).await;
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: String) {
        self.ws.send(WsMessage::text(text)).await.unwrap();
    }

    /// `connected`.
    pub async fn send_connected(&mut self) {
        self.send(&TwilioMessage::Connected(Connected {
            protocol: "Call".into(),
            version: "1.0.0".into(),
        }))
        .await;
    }

    /// `start` for `call_sid` with `<Parameter>`s; returns the new `MZ…` stream sid.
    pub async fn send_start(&mut self, call_sid: &str, params: &[(&str, &str)]) -> String {
        self.call_sid = call_sid.to_string();
        self.stream_sid = format!("MZ{:032x}", rand_u64());
        let sequence_number = self.seq();
        let msg = TwilioMessage::Start(Start {
            sequence_number,
            start: StartInfo {
                account_sid: self.account_sid.clone(),
                stream_sid: self.stream_sid.clone(),
                call_sid: call_sid.to_string(),
                tracks: vec!["inbound".into()],
                media_format: MediaFormat {
                    encoding: "audio/x-mulaw".into(),
                    sample_rate: 8000,
                    channels: 1,
                },
                custom_parameters: params
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            },
            stream_sid: self.stream_sid.clone(),
        });
        self.send(&msg).await;
        self.stream_sid.clone()
    }

    /// Announces `account_sid` in later `start`/`stop` messages (a stream claiming another
    /// account).
    pub fn set_account_sid(&mut self, account_sid: &str) {
        self.account_sid = account_sid.to_string();
    }

    /// `media` with `mulaw` (inbound track).
    pub async fn send_media(&mut self, mulaw: &[u8]) {
        self.try_send_media(mulaw).await.unwrap();
    }

    /// Sends caller silence (160-byte frames) so that the audio sent keeps up with `rate` ×
    /// the wall-clock time since the call (checked every 5 ms, catching up when late), while
    /// reading what the server sends, until the server closes the socket or `max` has passed.
    pub async fn pump_media(&mut self, rate: f64, max: Duration) -> Pumped {
        let frame = [0xFFu8; 160];
        let started = std::time::Instant::now();
        let mut frames = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let close = loop {
            tokio::select! {
                _ = tick.tick() => {
                    let elapsed = started.elapsed();
                    if elapsed > max {
                        break None;
                    }
                    let due = (elapsed.as_secs_f64() * rate / 0.020) as u64 + 1;
                    while frames < due {
                        if self.try_send_media(&frame).await.is_err() {
                            break;
                        }
                        frames += 1;
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(WsMessage::Close(frame))) => {
                        break Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                    }
                    None | Some(Err(_)) => break Some((1006, String::new())),
                    Some(Ok(_)) => {}
                },
            }
        };
        Pumped {
            sent: Duration::from_millis(frames * 20),
            elapsed: started.elapsed(),
            close,
        }
    }

    /// Reads until the server's close frame (skipping anything else) and returns its code and
    /// reason; `(1006, "")` when the socket dropped without one. Panics after `timeout`.
    pub async fn recv_close(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the server did not close the stream in time");
            match frame {
                Some(Ok(WsMessage::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(WsMessage::Close(None))) => return (1005, String::new()),
                None | Some(Err(_)) => return (1006, String::new()),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn try_send_media(
        &mut self,
        mulaw: &[u8],
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.chunk += 1;
        let sequence_number = self.seq();
        let msg = TwilioMessage::Media(Media {
            sequence_number,
            media: MediaChunk {
                track: "inbound".into(),
                chunk: self.chunk.to_string(),
                timestamp: self.timestamp_ms.to_string(),
                payload: base64::engine::general_purpose::STANDARD.encode(mulaw),
            },
            stream_sid: self.stream_sid.clone(),
        });
        self.timestamp_ms += mulaw.len() as u64 / 8;
        self.ws.send(WsMessage::text(msg.to_json())).await
    }

    /// `dtmf`.
    pub async fn send_dtmf(&mut self, digit: &str) {
        let sequence_number = self.seq();
        let msg = TwilioMessage::Dtmf(Dtmf {
            stream_sid: self.stream_sid.clone(),
            sequence_number,
            dtmf: DtmfDigit {
                track: "inbound_track".into(),
                digit: digit.into(),
            },
        });
        self.send(&msg).await;
    }

    /// `mark` echo.
    pub async fn send_mark(&mut self, name: &str) {
        let sequence_number = self.seq();
        let msg = TwilioMessage::Mark(Mark {
            sequence_number,
            stream_sid: self.stream_sid.clone(),
            mark: MarkName { name: name.into() },
        });
        self.send(&msg).await;
    }

    /// `stop`.
    pub async fn send_stop(&mut self) {
        let sequence_number = self.seq();
        let msg = TwilioMessage::Stop(Stop {
            sequence_number,
            stop: StopInfo {
                account_sid: self.account_sid.clone(),
                call_sid: self.call_sid.clone(),
            },
            stream_sid: self.stream_sid.clone(),
        });
        self.send(&msg).await;
    }

    /// The next message from the server within `timeout`: `Ok(Some(msg))` for a valid
    /// `media`/`mark`/`clear` text frame, `Ok(None)` on close, `Err(text)` for a frame Twilio
    /// would flag (binary, or text that is not one of the three messages). Panics on
    /// timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<ServerMessage>, String> {
        loop {
            let frame = tokio::time::timeout(timeout, self.ws.next())
                .await
                .expect("no frame from the server in time");
            match frame {
                None | Some(Ok(WsMessage::Close(_))) | Some(Err(_)) => return Ok(None),
                Some(Ok(WsMessage::Text(t))) => {
                    return ServerMessage::parse(t.as_str())
                        .map(Some)
                        .map_err(|_| t.to_string());
                }
                Some(Ok(WsMessage::Binary(b))) => return Err(format!("binary frame {b:?}")),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Closes the socket (Twilio ending the stream).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What [`MediaStreamClient::pump_media`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pumped {
    /// Caller audio sent (20 ms per frame).
    pub sent: Duration,
    /// Wall-clock time from the first frame to the end.
    pub elapsed: Duration,
    /// The server's close `(code, reason)`, when it closed the stream.
    pub close: Option<(u16, String)>,
}

fn rand_u64() -> u64 {
    rand::random()
}

// ---- REST side ------------------------------------------------------------------------------

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    axum::extract::State(inner): axum::extract::State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        form: signature::parse_form(&body),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut state = inner.state.lock().unwrap();
    state.requests.push(recorded.clone());

    // 1. Authentication.
    let authenticated = recorded.basic_auth().is_some_and(|(user, pass)| {
        (user == inner.account_sid && pass == inner.auth_token)
            || state.api_keys.iter().any(|(k, s)| *k == user && *s == pass)
    });
    if !authenticated {
        return twilio_error(401, 20003, "Authenticate");
    }

    // 2. Route: /2010-04-01/Accounts/{sid}/(Calls.json | Calls/{CallSid}.json | Messages.json)
    let not_found = || {
        twilio_error(
            404,
            20404,
            &format!("The requested resource {} was not found", uri.path()),
        )
    };
    let segments: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let route = match segments.as_slice() {
        ["2010-04-01", "Accounts", account, rest @ ..] if *account == inner.account_sid => {
            match rest {
                ["Calls.json"] => Route::CreateCall,
                ["Calls", call] => match call.strip_suffix(".json") {
                    Some(sid) => Route::UpdateCall(percent_decode(sid)),
                    None => return not_found(),
                },
                ["Messages.json"] => Route::SendMessage,
                _ => return not_found(),
            }
        }
        _ => return not_found(),
    };
    if method != Method::POST {
        return twilio_error(405, 20004, "Method not allowed");
    }

    // 3. Injected failures.
    if let Some(f) = state.failures.pop_front() {
        return twilio_error(f.status, f.code, &f.message);
    }

    // 4. The request itself.
    match route {
        Route::CreateCall => create_call(&inner, &mut state, &recorded),
        Route::UpdateCall(sid) => update_call(&inner, &mut state, &sid, &recorded),
        Route::SendMessage => send_message(&inner, &mut state, &recorded),
    }
}

enum Route {
    CreateCall,
    UpdateCall(String),
    SendMessage,
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn valid_to(to: &str) -> bool {
    let lower = to.to_ascii_lowercase();
    voxmachina::sip::E164::parse(to).is_ok()
        || lower.starts_with("sip:")
        || lower.starts_with("sips:")
        || lower.starts_with("client:")
}

/// Which of `Url`, `Twiml`, `ApplicationSid` are present.
fn instruction_count(req: &RecordedRequest) -> usize {
    ["Url", "Twiml", "ApplicationSid"]
        .iter()
        .filter(|n| req.field(n).is_some())
        .count()
}

const RFC2822_NOW: &str = "Tue, 31 Aug 2010 20:36:28 +0000";

fn call_json(account_sid: &str, call: &FakeCall) -> Value {
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Calls/{}", call.sid);
    json!({
        "account_sid": account_sid,
        "annotation": null,
        "answered_by": null,
        "api_version": "2010-04-01",
        "caller_name": null,
        "date_created": RFC2822_NOW,
        "date_updated": RFC2822_NOW,
        "direction": "outbound-api",
        "duration": null,
        "end_time": null,
        "forwarded_from": null,
        "from": call.from,
        "from_formatted": call.from,
        "group_sid": null,
        "parent_call_sid": null,
        "phone_number_sid": null,
        "price": null,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": null,
        "status": call.status,
        "subresource_uris": {
            "notifications": format!("{uri}/Notifications.json"),
            "recordings": format!("{uri}/Recordings.json"),
            "streams": format!("{uri}/Streams.json"),
        },
        "to": call.to,
        "to_formatted": call.to,
        "trunk_sid": null,
        "uri": format!("{uri}.json"),
    })
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn create_call(inner: &Inner, state: &mut State, req: &RecordedRequest) -> Response {
    let Some(to) = req.field("To").filter(|t| !t.is_empty()) else {
        return twilio_error(400, 21201, "No 'To' number is specified");
    };
    let Some(from) = req.field("From").filter(|f| !f.is_empty()) else {
        return twilio_error(400, 21213, "No 'From' number is specified");
    };
    if !valid_to(to) {
        return twilio_error(
            400,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if instruction_count(req) != 1 {
        return twilio_error(
            400,
            21205,
            "Exactly one of Url, Twiml or ApplicationSid is required",
        );
    }
    if let Some(d) = req.field("SendDigits") {
        let ok = !d.is_empty()
            && d.chars().count() <= 32
            && d.bytes()
                .all(|b| b.is_ascii_digit() || b"ABCD#*wW".contains(&b));
        if !ok {
            return twilio_error(400, 21206, &format!("SendDigits {d} is not valid"));
        }
    }
    let call = FakeCall {
        sid: next_sid(state, "CA"),
        to: to.to_string(),
        from: from.to_string(),
        status: "queued".into(),
        twiml: req.field("Twiml").map(str::to_string),
        url: req.field("Url").map(str::to_string),
        updates: Vec::new(),
    };
    let body = call_json(&inner.account_sid, &call);
    state.calls.insert(call.sid.clone(), call);
    json_response(StatusCode::CREATED, body)
}

fn update_call(inner: &Inner, state: &mut State, sid: &str, req: &RecordedRequest) -> Response {
    let Some(call) = state.calls.get_mut(sid) else {
        return twilio_error(
            404,
            20404,
            &format!(
                "The requested resource /2010-04-01/Accounts/{}/Calls/{sid}.json was not found",
                inner.account_sid
            ),
        );
    };
    let ended = matches!(
        call.status.as_str(),
        "completed" | "canceled" | "failed" | "busy" | "no-answer"
    );
    let redirect = req.field("Twiml").is_some() || req.field("Url").is_some();
    match req.field("Status") {
        Some("completed") if !redirect => {
            if !ended {
                call.status = "completed".into();
            }
        }
        Some("canceled") if !redirect => {
            if matches!(call.status.as_str(), "queued" | "ringing") {
                call.status = "canceled".into();
            }
        }
        Some(other) => {
            return twilio_error(400, 21218, &format!("Invalid Status {other:?}"));
        }
        None if redirect => {
            if req.field("Twiml").is_some() && req.field("Url").is_some() {
                return twilio_error(400, 21205, "Only one of Url or Twiml may be given");
            }
            if ended {
                return twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.");
            }
            call.twiml = req.field("Twiml").map(str::to_string);
            call.url = req.field("Url").map(str::to_string);
        }
        None => {
            return twilio_error(400, 21205, "Url, Twiml or Status is required");
        }
    }
    call.updates.push(req.form.clone());
    let body = call_json(&inner.account_sid, call);
    json_response(StatusCode::OK, body)
}

fn send_message(inner: &Inner, state: &mut State, req: &RecordedRequest) -> Response {
    let Some(to) = req.field("To").filter(|t| !t.is_empty()) else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    let Some(from) = req
        .field("From")
        .or(req.field("MessagingServiceSid"))
        .filter(|f| !f.is_empty())
    else {
        return twilio_error(400, 21603, "A 'From' phone number is required.");
    };
    let Some(body) = req.field("Body").filter(|b| !b.is_empty()) else {
        return twilio_error(400, 21602, "Message body is required.");
    };
    if body.chars().count() > 1600 {
        return twilio_error(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let sid = next_sid(state, "SM");
    state.messages.push(FakeMessage {
        sid: sid.clone(),
        to: to.to_string(),
        from: from.to_string(),
        body: body.to_string(),
    });
    json_response(
        StatusCode::CREATED,
        json!({
            "account_sid": inner.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": RFC2822_NOW,
            "date_sent": null,
            "date_updated": RFC2822_NOW,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "messaging_service_sid": null,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", inner.account_sid),
        }),
    )
}
