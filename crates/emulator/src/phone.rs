//! Twilio's side of a Media Streams call, for `voxmachina-demo --media` and the tests: a caller's
//! phone as Twilio presents it to our server
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
//!
//! [`Phone::connect`] opens the WebSocket with `X-Twilio-Signature` computed over the public
//! `wss://` URL of the TwiML and sends `connected` and `start` (with the `<Parameter>`s as
//! `customParameters`). Then, on a 20 ms clock:
//!
//! - **microphone**: one inbound `media` message per tick, 160 bytes of μ-law: queued speech
//!   ([`Phone::say`]) or silence (0xFF), with `chunk` and `timestamp` advancing as Twilio's do
//!   (Twilio streams silence too);
//! - **loudspeaker**: outbound `media` payloads are queued and played 160 bytes per tick; a
//!   `mark` is echoed when the audio queued before it has played (at the start of the tick after
//!   its last frame played, so within 20 ms; the same for a mark with nothing queued); `clear`
//!   empties the queue and echoes every pending mark at the next tick.
//!
//! Everything is logged ([`PhoneLog`]): each outbound frame with its arrival time, the bytes
//! played, marks, clears with the playback position, and every frame Twilio would flag as
//! invalid (binary, not JSON, an unknown event, a wrong `streamSid`: errors 31950/31951).
//! [`Phone::stop`] sends `stop` and closes, as Twilio does when the call ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use voxmachina::config::Secret;
use voxmachina::twilio::media::{
    Connected, Dtmf, DtmfDigit, Mark, MarkName, Media, MediaChunk, MediaFormat, ServerMessage,
    Start, StartInfo, Stop, StopInfo, TwilioMessage,
};
use voxmachina::twilio::signature;

/// μ-law bytes per 20 ms tick.
pub const FRAME: usize = 160;

/// How to reach the server and what to announce in `start`.
#[derive(Debug, Clone)]
pub struct PhoneConfig {
    /// Where to connect, e.g. `ws://127.0.0.1:8080/twilio/media`.
    pub url: String,
    /// The URL Twilio signs: the `<Stream url>` of the TwiML, e.g.
    /// `wss://voice.example.com/twilio/media`.
    pub signed_url: String,
    /// The account's Auth Token.
    pub auth_token: Secret,
    /// `AC…`.
    pub account_sid: String,
    /// `CA…`.
    pub call_sid: String,
    /// The `<Parameter>`s of the `<Stream>`.
    pub parameters: Vec<(String, String)>,
}

/// One outbound `media` message as received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedFrame {
    /// Milliseconds since the connection opened.
    pub at_ms: f64,
    /// The decoded μ-law bytes.
    pub bytes: Vec<u8>,
}

/// A `clear` as received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClearInfo {
    /// Milliseconds since the connection opened.
    pub at_ms: f64,
    /// μ-law bytes played in total before it (1 byte = 0.125 ms).
    pub played_bytes: usize,
    /// μ-law bytes it discarded.
    pub discarded_bytes: usize,
}

/// What the phone saw and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhoneLog {
    /// The `streamSid` announced in `start`.
    pub stream_sid: String,
    /// Outbound `media` messages, in arrival order.
    pub frames: Vec<ReceivedFrame>,
    /// μ-law bytes actually played, in order.
    pub played: Vec<u8>,
    /// Marks received, in order.
    pub marks_received: Vec<String>,
    /// Marks echoed, in order.
    pub marks_echoed: Vec<String>,
    /// `clear` messages.
    pub clears: Vec<ClearInfo>,
    /// Frames Twilio would flag (31950/31951), as text.
    pub invalid: Vec<String>,
    /// Inbound `media` messages sent.
    pub mic_frames: u64,
    /// μ-law bytes of queued speech still to send.
    pub speech_pending: usize,
    /// μ-law bytes queued for playback.
    pub queued: usize,
    /// The server closed the socket (or it dropped).
    pub closed: bool,
}

enum Cmd {
    Say(Vec<u8>),
    Dtmf(String),
    Raw(Message),
    Stop,
}

/// A connected phone. Dropping it drops the connection without `stop`.
pub struct Phone {
    cmd: mpsc::UnboundedSender<Cmd>,
    log: Arc<Mutex<PhoneLog>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Phone {
    /// Connects (signed upgrade), sends `connected` and `start`, and starts the 20 ms clock.
    ///
    /// # Errors
    /// The upgrade failed (e.g. HTTP 403 for a bad signature).
    pub async fn connect(cfg: PhoneConfig) -> Result<Phone, tokio_tungstenite::tungstenite::Error> {
        Self::connect_with(cfg, None).await
    }

    /// [`Phone::connect`] with a TLS connector for `wss://` URLs (e.g. one trusting a test
    /// certificate); `None` = the default (webpki roots).
    ///
    /// # Errors
    /// The upgrade failed (e.g. HTTP 403 for a bad signature, a TLS handshake failure).
    pub async fn connect_with(
        cfg: PhoneConfig,
        connector: Option<tokio_tungstenite::Connector>,
    ) -> Result<Phone, tokio_tungstenite::tungstenite::Error> {
        let mut req = cfg.url.as_str().into_client_request()?;
        let sig = signature::sign(&cfg.auth_token, &cfg.signed_url, &[]);
        req.headers_mut().insert(
            "x-twilio-signature",
            sig.parse().expect("base64 is a header value"),
        );
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector).await?;
        let stream_sid = format!("MZ{:032x}", rand::random::<u128>());
        let connected = TwilioMessage::Connected(Connected {
            protocol: "Call".into(),
            version: "1.0.0".into(),
        });
        let start = TwilioMessage::Start(Start {
            sequence_number: "1".into(),
            start: StartInfo {
                account_sid: cfg.account_sid.clone(),
                stream_sid: stream_sid.clone(),
                call_sid: cfg.call_sid.clone(),
                tracks: vec!["inbound".into()],
                media_format: MediaFormat {
                    encoding: "audio/x-mulaw".into(),
                    sample_rate: 8000,
                    channels: 1,
                },
                custom_parameters: cfg.parameters.iter().cloned().collect(),
            },
            stream_sid: stream_sid.clone(),
        });
        ws.send(Message::text(connected.to_json())).await?;
        ws.send(Message::text(start.to_json())).await?;
        let log = Arc::new(Mutex::new(PhoneLog {
            stream_sid: stream_sid.clone(),
            ..PhoneLog::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let (changed_tx, changed) = watch::channel(0u64);
        let runner = Runner {
            ws,
            cfg,
            stream_sid,
            log: log.clone(),
            changed: changed_tx,
            seq: 1,
            chunk: 0,
            mic: VecDeque::new(),
            speaker: VecDeque::new(),
            opened: Instant::now(),
        };
        let task = tokio::spawn(runner.run(rx));
        Ok(Phone {
            cmd: tx,
            log,
            changed,
            task,
        })
    }

    /// Queues `ulaw` (μ-law 8 kHz bytes) to be spoken into the microphone, 160 bytes per tick,
    /// after anything already queued.
    pub fn say(&self, ulaw: &[u8]) {
        let _ = self.cmd.send(Cmd::Say(ulaw.to_vec()));
    }

    /// Sends a `dtmf` message for `digit`.
    pub fn press(&self, digit: &str) {
        let _ = self.cmd.send(Cmd::Dtmf(digit.to_string()));
    }

    /// Sends an arbitrary text frame (to test malformed input).
    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.cmd.send(Cmd::Raw(Message::text(text.into())));
    }

    /// Sends a binary frame (Twilio never does; to test malformed input).
    pub fn send_binary(&self, bytes: Vec<u8>) {
        let _ = self.cmd.send(Cmd::Raw(Message::binary(bytes)));
    }

    /// Sends `stop` and closes the socket, as Twilio does when the call ends or is redirected.
    pub fn stop(&self) {
        let _ = self.cmd.send(Cmd::Stop);
    }

    /// A snapshot of the log.
    pub fn log(&self) -> PhoneLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `pred` holds for the log (re-checked on every change), or `None` after
    /// `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&PhoneLog) -> bool,
    ) -> Option<PhoneLog> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.clone();
        loop {
            rx.borrow_and_update();
            let log = self.log();
            if pred(&log) {
                return Some(log);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let log = self.log();
                    return pred(&log).then_some(log);
                }
                Err(_) => return None,
            }
        }
    }
}

enum Play {
    Audio(Vec<u8>, usize),
    Mark(String),
}

struct Runner {
    ws: Ws,
    cfg: PhoneConfig,
    stream_sid: String,
    log: Arc<Mutex<PhoneLog>>,
    changed: watch::Sender<u64>,
    seq: u64,
    chunk: u64,
    mic: VecDeque<u8>,
    speaker: VecDeque<Play>,
    opened: Instant,
}

impl Runner {
    fn log(&self) -> std::sync::MutexGuard<'_, PhoneLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    fn elapsed_ms(&self) -> f64 {
        self.opened.elapsed().as_secs_f64() * 1000.0
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.on_tick().await.is_err() {
                        break;
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Say(bytes)) => {
                        self.mic.extend(bytes);
                        let pending = self.mic.len();
                        self.log().speech_pending = pending;
                        self.bump();
                    }
                    Some(Cmd::Dtmf(digit)) => {
                        let msg = TwilioMessage::Dtmf(Dtmf {
                            stream_sid: self.stream_sid.clone(),
                            sequence_number: self.next_seq(),
                            dtmf: DtmfDigit { track: "inbound_track".into(), digit },
                        });
                        if self.ws.send(Message::text(msg.to_json())).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Raw(m)) => {
                        if self.ws.send(m).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Stop) | None => {
                        let msg = TwilioMessage::Stop(Stop {
                            sequence_number: self.next_seq(),
                            stop: StopInfo {
                                account_sid: self.cfg.account_sid.clone(),
                                call_sid: self.cfg.call_sid.clone(),
                            },
                            stream_sid: self.stream_sid.clone(),
                        });
                        let _ = self.ws.send(Message::text(msg.to_json())).await;
                        let _ = self.ws.close(None).await;
                        // Drain until the server's close completes.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Some(Ok(_)) = self.ws.next().await {}
                        })
                        .await;
                        break;
                    }
                },
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_server_text(t.as_str()),
                    Some(Ok(Message::Binary(b))) => {
                        self.log().invalid.push(format!("binary frame of {} bytes", b.len()));
                        self.bump();
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        self.log().closed = true;
        self.bump();
    }

    /// One 20 ms tick: a microphone frame out, a loudspeaker frame played.
    async fn on_tick(&mut self) -> Result<(), ()> {
        let take = self.mic.len().min(FRAME);
        let mut frame: Vec<u8> = self.mic.drain(..take).collect();
        frame.resize(FRAME, voxmachina::media::g711::ULAW_SILENCE);
        self.chunk += 1;
        let msg = TwilioMessage::Media(Media {
            sequence_number: self.next_seq(),
            media: MediaChunk {
                track: "inbound".into(),
                chunk: self.chunk.to_string(),
                timestamp: ((self.chunk - 1) * 20).to_string(),
                payload: base64::engine::general_purpose::STANDARD.encode(&frame),
            },
            stream_sid: self.stream_sid.clone(),
        });
        self.ws
            .send(Message::text(msg.to_json()))
            .await
            .map_err(|_| ())?;
        let mut played = Vec::with_capacity(FRAME);
        let mut echoes = Vec::new();
        // Marks at the head were reached by the previous tick's audio.
        self.pop_marks(&mut echoes);
        while played.len() < FRAME {
            match self.speaker.front_mut() {
                Some(Play::Audio(bytes, off)) => {
                    let n = (bytes.len() - *off).min(FRAME - played.len());
                    played.extend_from_slice(&bytes[*off..*off + n]);
                    *off += n;
                    if *off == bytes.len() {
                        self.speaker.pop_front();
                    }
                }
                Some(Play::Mark(_)) => break,
                None => break,
            }
        }
        // A mark reached by this tick's audio is echoed at the next tick, once the 20 ms have
        // actually played.
        self.send_echoes(&echoes).await?;
        let queued = self.queued();
        {
            let mut log = self.log();
            log.mic_frames += 1;
            log.speech_pending = self.mic.len();
            log.played.extend_from_slice(&played);
            log.queued = queued;
        }
        self.bump();
        Ok(())
    }

    fn queued(&self) -> usize {
        self.speaker
            .iter()
            .map(|p| match p {
                Play::Audio(b, off) => b.len() - off,
                Play::Mark(_) => 0,
            })
            .sum()
    }

    fn pop_marks(&mut self, echoes: &mut Vec<String>) {
        while let Some(Play::Mark(_)) = self.speaker.front() {
            if let Some(Play::Mark(name)) = self.speaker.pop_front() {
                echoes.push(name);
            }
        }
    }

    async fn send_echoes(&mut self, names: &[String]) -> Result<(), ()> {
        for name in names {
            let msg = TwilioMessage::Mark(Mark {
                sequence_number: self.next_seq(),
                stream_sid: self.stream_sid.clone(),
                mark: MarkName { name: name.clone() },
            });
            self.ws
                .send(Message::text(msg.to_json()))
                .await
                .map_err(|_| ())?;
            self.log().marks_echoed.push(name.clone());
        }
        Ok(())
    }

    fn on_server_text(&mut self, text: &str) {
        let at_ms = self.elapsed_ms();
        let parsed = ServerMessage::parse(text);
        let msg = match parsed {
            Ok(m) if m.stream_sid() == self.stream_sid => m,
            _ => {
                self.log().invalid.push(text.to_string());
                self.bump();
                return;
            }
        };
        match msg {
            ServerMessage::Media { media, .. } => {
                match base64::engine::general_purpose::STANDARD.decode(&media.payload) {
                    Ok(bytes) => {
                        self.speaker.push_back(Play::Audio(bytes.clone(), 0));
                        let queued = self.queued();
                        let mut log = self.log();
                        log.frames.push(ReceivedFrame { at_ms, bytes });
                        log.queued = queued;
                    }
                    Err(_) => self.log().invalid.push(text.to_string()),
                }
            }
            ServerMessage::Mark { mark, .. } => {
                self.log().marks_received.push(mark.name.clone());
                self.speaker.push_back(Play::Mark(mark.name));
            }
            ServerMessage::Clear { .. } => {
                let discarded = self.queued();
                let marks: Vec<String> = self
                    .speaker
                    .drain(..)
                    .filter_map(|p| match p {
                        Play::Mark(n) => Some(n),
                        Play::Audio(..) => None,
                    })
                    .collect();
                // Pending marks come back at once; keep them at the head so the next tick
                // echoes them before any new audio.
                for name in marks {
                    self.speaker.push_back(Play::Mark(name));
                }
                let played_bytes = self.log().played.len();
                self.log().clears.push(ClearInfo {
                    at_ms,
                    played_bytes,
                    discarded_bytes: discarded,
                });
            }
        }
        self.bump();
    }
}

/// The `<Stream url>` and `<Parameter>`s of a `<Connect><Stream>` TwiML document (XML entities
/// decoded), or `None` when it has no `<Stream>`.
pub fn stream_of_twiml(xml: &str) -> Option<(String, Vec<(String, String)>)> {
    let stream = &xml[xml.find("<Stream ")?..];
    let url = attr(stream, "url")?;
    let end = stream.find("</Stream>").unwrap_or(stream.len());
    let mut params = Vec::new();
    let mut rest = &stream[..end];
    while let Some(i) = rest.find("<Parameter ") {
        let tag_end = rest[i..].find("/>").map_or(rest.len(), |e| i + e);
        let tag = &rest[i..tag_end];
        if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
            params.push((n, v));
        }
        rest = &rest[tag_end..];
    }
    Some((url, params))
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#9;", "\t")
        .replace("&#10;", "\n")
        .replace("&#13;", "\r")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_stream_twiml() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://v.example/twilio/media" statusCallback="https://v.example/twilio/status"><Parameter name="profile" value="a&amp;b"/><Parameter name="to" value="+18005550100"/></Stream></Connect></Response>"#;
        let (url, params) = stream_of_twiml(xml).unwrap();
        assert_eq!(url, "wss://v.example/twilio/media");
        assert_eq!(
            params,
            vec![
                ("profile".to_string(), "a&b".to_string()),
                ("to".to_string(), "+18005550100".to_string())
            ]
        );
        assert!(stream_of_twiml("<Response><Hangup/></Response>").is_none());
    }
}
