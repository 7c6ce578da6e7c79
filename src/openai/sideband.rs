//! The Realtime sideband WebSocket: `{sideband_url}?call_id={call_id}` with the project's bearer
//! key, carrying Realtime JSON events for a SIP call whose audio flows over SIP.
//!
//! Sources: <https://developers.openai.com/api/docs/guides/realtime-server-controls> (events) and
//! OpenAI developer forum thread 1378863 (the socket can close without a close frame when the
//! caller hangs up). Only the events the controller acts on are typed; everything else parses as
//! [`ServerEvent::Other`].

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Secret;

/// An open sideband connection.
pub type SidebandStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connecting to the sideband failed.
#[derive(Debug, thiserror::Error)]
pub enum SidebandError {
    /// The upgrade was answered 404 (`call_id_not_found`): the call is over or never started.
    #[error("sideband: call not found")]
    CallNotFound,
    /// The upgrade was answered 401/403: wrong key or project.
    #[error("sideband: unauthorized ({0})")]
    Unauthorized(u16),
    /// Any other failure (DNS, TCP, TLS, other HTTP status).
    #[error("sideband: {0}")]
    Transport(String),
}

impl SidebandError {
    /// True when retrying cannot help (the call is gone, or we are not allowed).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::CallNotFound | Self::Unauthorized(_))
    }
}

/// Opens the sideband for `call_id`. Does not pass `model` (ignored for existing calls).
///
/// # Errors
/// [`SidebandError`] as classified from the upgrade response.
pub async fn connect(
    sideband_url: &str,
    call_id: &str,
    api_key: &Secret,
) -> Result<SidebandStream, SidebandError> {
    open(sideband_url, ("call_id", call_id), api_key).await
}

/// Opens a Realtime WebSocket at `base_url` with one query parameter (`call_id` for a SIP call's
/// sideband, `model` for a model session of the Twilio media bridge), `Authorization: Bearer`,
/// [`ws_config`] and `TCP_NODELAY`.
///
/// # Errors
/// [`SidebandError::CallNotFound`] for 404, [`SidebandError::Unauthorized`] for 401/403,
/// [`SidebandError::Transport`] otherwise (bad URL, other statuses, network errors).
pub(crate) async fn open(
    base_url: &str,
    (name, value): (&str, &str),
    api_key: &Secret,
) -> Result<SidebandStream, SidebandError> {
    let mut url =
        reqwest::Url::parse(base_url).map_err(|e| SidebandError::Transport(e.to_string()))?;
    url.query_pairs_mut().append_pair(name, value);
    connect_url(url.as_str(), api_key).await
}

/// Opens a sideband WebSocket at exactly `url` with `Authorization: Bearer <api_key>`,
/// [`ws_config`] and `TCP_NODELAY` (the Realtime forms above, or GPT-Live's
/// `/live/sessions/{id}/attach`).
///
/// # Errors
/// [`SidebandError`] as classified from the upgrade response.
pub async fn connect_url(url: &str, api_key: &Secret) -> Result<SidebandStream, SidebandError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| SidebandError::Transport(e.to_string()))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
        .map_err(|_| SidebandError::Transport("API key is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", auth);
    // TCP_NODELAY: client events are small frames often sent back to back
    // (function_call_output then response.create); with Nagle's algorithm the second would wait
    // for the first one's ACK (up to the peer's delayed-ACK timeout, ~40 ms).
    match tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true).await {
        Ok((stream, _)) => Ok(stream),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => match resp.status() {
            StatusCode::NOT_FOUND => Err(SidebandError::CallNotFound),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(SidebandError::Unauthorized(s.as_u16()))
            }
            s => Err(SidebandError::Transport(format!("upgrade answered {s}"))),
        },
        Err(e) => Err(SidebandError::Transport(e.to_string())),
    }
}

/// WebSocket settings for sideband connections: sideband traffic is small JSON events, so the
/// buffers start small (tungstenite's defaults allocate 128 KiB per direction per connection,
/// which dominates memory at thousands of calls) and grow only for large messages. Writes are
/// flushed eagerly; one message may be at most 4 MiB.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(4 << 20))
        .max_frame_size(Some(4 << 20))
}

/// `usage` of a `response.done`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ResponseUsage {
    /// Input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Total tokens.
    #[serde(default)]
    pub total_tokens: u64,
}

/// The `response` object of `response.created` / `response.done`, reduced to what we use.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ResponseInfo {
    /// `resp_...`.
    #[serde(default)]
    pub id: String,
    /// `completed`, `cancelled`, `failed`, `incomplete` (only on `response.done`).
    #[serde(default)]
    pub status: Option<String>,
    /// Token usage (only on `response.done`).
    #[serde(default)]
    pub usage: Option<ResponseUsage>,
}

/// The `error` object of an `error` event.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ApiError {
    /// e.g. `invalid_request_error`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// e.g. `invalid_event`.
    #[serde(default)]
    pub code: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
}

/// A server event from the sideband, typed where the controller acts on it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum ServerEvent {
    /// `session.created`: the session config actually applied.
    #[serde(rename = "session.created")]
    SessionCreated {
        /// The session object.
        #[serde(default)]
        session: Value,
    },
    /// `conversation.item.input_audio_transcription.completed`: a caller line.
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    InputTranscriptionCompleted {
        /// Conversation item id.
        #[serde(default)]
        item_id: String,
        /// The caller's words.
        #[serde(default)]
        transcript: String,
    },
    /// `conversation.item.input_audio_transcription.failed`.
    #[serde(rename = "conversation.item.input_audio_transcription.failed")]
    InputTranscriptionFailed {
        /// Conversation item id.
        #[serde(default)]
        item_id: String,
        /// Why.
        #[serde(default)]
        error: ApiError,
    },
    /// `response.output_audio_transcript.done`: an agent line.
    #[serde(rename = "response.output_audio_transcript.done")]
    OutputTranscriptDone {
        /// `resp_...`.
        #[serde(default)]
        response_id: String,
        /// Conversation item id.
        #[serde(default)]
        item_id: String,
        /// What the agent said.
        #[serde(default)]
        transcript: String,
    },
    /// `response.function_call_arguments.done`: the model calls a tool.
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        /// `resp_...`.
        #[serde(default)]
        response_id: String,
        /// The function call id to answer with `function_call_output`.
        call_id: String,
        /// Tool name.
        name: String,
        /// Arguments as a JSON **string**.
        #[serde(default)]
        arguments: String,
    },
    /// `response.created`.
    #[serde(rename = "response.created")]
    ResponseCreated {
        /// The response.
        #[serde(default)]
        response: ResponseInfo,
    },
    /// `response.done`, with usage.
    #[serde(rename = "response.done")]
    ResponseDone {
        /// The response.
        #[serde(default)]
        response: ResponseInfo,
    },
    /// `output_audio_buffer.started` (SIP/WebRTC only): audio began playing to the caller.
    #[serde(rename = "output_audio_buffer.started")]
    OutputAudioStarted {
        /// The response whose audio is playing.
        #[serde(default)]
        response_id: String,
    },
    /// `output_audio_buffer.stopped` (SIP/WebRTC only): playback of a response finished.
    #[serde(rename = "output_audio_buffer.stopped")]
    OutputAudioStopped {
        /// The response whose audio finished.
        #[serde(default)]
        response_id: String,
    },
    /// `input_audio_buffer.dtmf_event_received` (SIP only): a key press.
    #[serde(rename = "input_audio_buffer.dtmf_event_received")]
    DtmfReceived {
        /// The key: `0`-`9`, `*`, `#`, `A`-`D`.
        event: String,
        /// Unix seconds.
        #[serde(default)]
        received_at: Option<i64>,
    },
    /// `error`.
    #[serde(rename = "error")]
    Error {
        /// The error.
        #[serde(default)]
        error: ApiError,
    },
    /// GPT-Live `session.closed` (openai-python `types/live/server_event.py`): the authoritative
    /// end of a Live call, with its final usage. Never sent by Realtime.
    #[serde(rename = "session.closed")]
    SessionClosed {
        /// `close_requested`, `expired`, `content`, `remote_hangup`, `connection_lost`, or a
        /// newer value.
        #[serde(default)]
        reason: String,
        /// The session's usage object, as sent.
        #[serde(default)]
        usage: Value,
    },
    /// GPT-Live outbound `transport.ringing` (OpenAI's voice-sip guide (`?api=live`)): ringing or
    /// early media.
    #[serde(rename = "transport.ringing")]
    TransportRinging,
    /// GPT-Live outbound `transport.answered`: answered, media is up.
    #[serde(rename = "transport.answered")]
    TransportAnswered,
    /// GPT-Live outbound `transport.failed`, with `error.type` `call_error`.
    #[serde(rename = "transport.failed")]
    TransportFailed {
        /// Why the call failed.
        #[serde(default)]
        error: ApiError,
    },
    /// Any other event type.
    #[serde(other)]
    Other,
}

impl ServerEvent {
    /// Parses one text frame.
    ///
    /// # Errors
    /// When the frame is not a JSON object with a string `type` or a typed field is malformed.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Client events the controller sends, serialised to the text frame.
pub mod client {
    use super::*;

    /// `{"type":"response.create"}`, optionally with per-response `instructions`.
    pub fn response_create(instructions: Option<&str>) -> String {
        match instructions {
            None => json!({ "type": "response.create" }).to_string(),
            Some(i) => {
                json!({ "type": "response.create", "response": { "instructions": i } }).to_string()
            }
        }
    }

    /// A `response.create` that makes the agent say `line` verbatim and call no tool.
    pub fn say_exactly(line: &str) -> String {
        let instructions = format!(
            "Say exactly the following to the caller, word for word, and nothing else: \"{}\"",
            line.replace('"', "'")
        );
        json!({
            "type": "response.create",
            "response": { "instructions": instructions, "tool_choice": "none" }
        })
        .to_string()
    }

    /// `conversation.item.create` with a system message (`content:[{type:"input_text",text}]`,
    /// `openai.types.realtime.ConversationItemCreateEvent`): context for the model that is not a caller turn. Adds no response by itself.
    pub fn system_message(text: &str) -> String {
        json!({
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "system",
                "content": [ { "type": "input_text", "text": text } ]
            }
        })
        .to_string()
    }

    /// `{"type":"response.cancel"}`.
    pub fn response_cancel() -> String {
        json!({ "type": "response.cancel" }).to_string()
    }

    /// `conversation.item.create` with a `function_call_output` item; `output` is serialised to
    /// the JSON string the model reads.
    pub fn function_call_output(call_id: &str, output: &Value) -> String {
        json!({
            "type": "conversation.item.create",
            "item": { "type": "function_call_output", "call_id": call_id, "output": output.to_string() }
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_shapes() {
        let ev = ServerEvent::parse(
            r#"{"event_id":"e1","type":"conversation.item.input_audio_transcription.completed","item_id":"item_1","content_index":0,"transcript":"Hello","usage":{}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            ServerEvent::InputTranscriptionCompleted {
                item_id: "item_1".into(),
                transcript: "Hello".into()
            }
        );
        let ev = ServerEvent::parse(
            r#"{"type":"response.function_call_arguments.done","event_id":"e","response_id":"r","item_id":"i","output_index":0,"call_id":"call_1","name":"transfer_to_human","arguments":"{\"reason\":\"x\"}"}"#,
        )
        .unwrap();
        assert!(
            matches!(ev, ServerEvent::FunctionCallArgumentsDone { ref name, .. } if name == "transfer_to_human")
        );
        let ev = ServerEvent::parse(r#"{"type":"input_audio_buffer.dtmf_event_received","event":"9","received_at":1750000000}"#).unwrap();
        assert_eq!(
            ev,
            ServerEvent::DtmfReceived {
                event: "9".into(),
                received_at: Some(1_750_000_000)
            }
        );
        let ev = ServerEvent::parse(
            r#"{"type":"response.done","event_id":"e","response":{"object":"realtime.response","id":"resp_1","status":"completed","output":[],"usage":{"total_tokens":30,"input_tokens":10,"output_tokens":20}}}"#,
        )
        .unwrap();
        let ServerEvent::ResponseDone { response } = ev else {
            panic!()
        };
        assert_eq!(response.usage.unwrap().total_tokens, 30);
        assert_eq!(
            ServerEvent::parse(r#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap(),
            ServerEvent::Other
        );
        assert!(ServerEvent::parse("not json").is_err());
    }

    #[test]
    fn client_events_match_reference() {
        let v: Value = serde_json::from_str(&client::function_call_output(
            "call_001",
            &json!({"ok": true}),
        ))
        .unwrap();
        assert_eq!(v["type"], "conversation.item.create");
        assert_eq!(v["item"]["type"], "function_call_output");
        assert_eq!(v["item"]["output"], "{\"ok\":true}");
        let v: Value = serde_json::from_str(&client::say_exactly("Please \"hold\".")).unwrap();
        assert!(
            v["response"]["instructions"]
                .as_str()
                .unwrap()
                .contains("\"Please 'hold'.\"")
        );
    }
}
