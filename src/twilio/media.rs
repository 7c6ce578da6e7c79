//! Media Streams WebSocket messages (bidirectional `<Connect><Stream>`), as JSON text frames.
//!
//! Source: <https://www.twilio.com/docs/voice/media-streams/websocket-messages> (Twilio → us:
//! `connected`, `start`, `media`, `dtmf`, `mark`, `stop`; us → Twilio: `media`, `mark`, `clear`).
//!
//! Field names are exactly Twilio's (camelCase: `streamSid`, `sequenceNumber`, `callSid`,
//! `customParameters`, `mediaFormat`, `sampleRate`). `sequenceNumber`, `media.chunk` and
//! `media.timestamp` are JSON strings on the wire; they are kept as [`String`] and also accepted
//! as JSON numbers. Unknown fields are ignored (Twilio may add some). A message whose `event` is
//! not one of the six known ones, or whose known `event` does not have the documented shape,
//! parses to [`TwilioMessage::Unknown`] with the raw JSON: an unexpected frame never fails the
//! stream. Only text that is not JSON at all is an error.
//!
//! Audio in both directions is base64 of headerless µ-law, 8 kHz, mono: 20 ms is
//! [`FRAME_BYTES`] = 160 bytes (216 base64 characters). Send text frames only: Twilio treats
//! binary frames as malformed (warning 31950).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Bytes of µ-law in 20 ms at 8 kHz.
pub const FRAME_BYTES: usize = 160;

/// The only encoding Twilio streams (`mediaFormat.encoding`).
pub const ENCODING_MULAW: &str = "audio/x-mulaw";

/// A message from Twilio to our server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TwilioMessage {
    /// First message, sent once.
    Connected(Connected),
    /// Sent once, right after `connected`: call and stream identifiers, custom parameters.
    Start(Start),
    /// A chunk of caller audio.
    Media(Media),
    /// A key the caller pressed (bidirectional streams only).
    Dtmf(Dtmf),
    /// Echo of a mark we sent: the audio queued before it has played, or a `clear` flushed it.
    Mark(Mark),
    /// The stream stopped or the call ended.
    Stop(Stop),
    /// Anything else (a new event type, or a known one with an unexpected shape), kept raw.
    #[serde(untagged)]
    Unknown(Value),
}

impl TwilioMessage {
    /// Parses one text frame.
    ///
    /// # Errors
    /// Only when `text` is not JSON; unknown or oddly shaped events give
    /// [`TwilioMessage::Unknown`].
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// `event` of the message (`"unknown"` when an unknown message has no string `event`).
    pub fn event(&self) -> &str {
        match self {
            Self::Connected(_) => "connected",
            Self::Start(_) => "start",
            Self::Media(_) => "media",
            Self::Dtmf(_) => "dtmf",
            Self::Mark(_) => "mark",
            Self::Stop(_) => "stop",
            Self::Unknown(v) => v.get("event").and_then(Value::as_str).unwrap_or("unknown"),
        }
    }

    /// The top-level `streamSid` (absent on `connected`).
    pub fn stream_sid(&self) -> Option<&str> {
        match self {
            Self::Connected(_) => None,
            Self::Start(m) => Some(&m.stream_sid),
            Self::Media(m) => Some(&m.stream_sid),
            Self::Dtmf(m) => Some(&m.stream_sid),
            Self::Mark(m) => Some(&m.stream_sid),
            Self::Stop(m) => Some(&m.stream_sid),
            Self::Unknown(v) => v.get("streamSid").and_then(Value::as_str),
        }
    }
}

/// `connected`: `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// `"Call"`.
    pub protocol: String,
    /// `"1.0.0"`.
    pub version: String,
}

/// `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    /// Message counter, a decimal string (`"1"`).
    #[serde(deserialize_with = "string_or_number")]
    pub sequence_number: String,
    /// Call and stream details.
    pub start: StartInfo,
    /// `MZ…`.
    pub stream_sid: String,
}

/// The `start` object of a `start` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    /// `AC…`.
    pub account_sid: String,
    /// `MZ…`.
    pub stream_sid: String,
    /// `CA…`.
    pub call_sid: String,
    /// `["inbound"]` for `<Connect>`; values `inbound` and `outbound`.
    #[serde(default)]
    pub tracks: Vec<String>,
    /// Always µ-law, 8000 Hz, 1 channel.
    pub media_format: MediaFormat,
    /// The `<Parameter>`s of the `<Stream>`, name → value (empty object when none).
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
}

/// `start.mediaFormat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    /// `audio/x-mulaw` ([`ENCODING_MULAW`]).
    pub encoding: String,
    /// Samples per second: 8000.
    pub sample_rate: u32,
    /// 1.
    pub channels: u32,
}

/// `media` from Twilio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Media {
    /// Message counter, a decimal string.
    #[serde(deserialize_with = "string_or_number")]
    pub sequence_number: String,
    /// The audio chunk.
    pub media: MediaChunk,
    /// `MZ…`.
    pub stream_sid: String,
}

impl Media {
    /// The decoded µ-law bytes of `media.payload`.
    ///
    /// # Errors
    /// When the payload is not standard padded base64.
    pub fn audio(&self) -> Result<Vec<u8>, base64::DecodeError> {
        B64.decode(&self.media.payload)
    }
}

/// `media.media` from Twilio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaChunk {
    /// `inbound` (or `outbound`).
    pub track: String,
    /// Chunk counter starting at `"1"`.
    #[serde(deserialize_with = "string_or_number")]
    pub chunk: String,
    /// Presentation time in milliseconds since the stream started, as a string.
    #[serde(deserialize_with = "string_or_number")]
    pub timestamp: String,
    /// Base64 of raw µ-law.
    pub payload: String,
}

impl MediaChunk {
    /// `timestamp` as milliseconds, if it is a decimal number.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.timestamp.parse().ok()
    }
}

/// `dtmf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dtmf {
    /// `MZ…`.
    pub stream_sid: String,
    /// Message counter.
    #[serde(deserialize_with = "string_or_number")]
    pub sequence_number: String,
    /// The key.
    pub dtmf: DtmfDigit,
}

/// `dtmf.dtmf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfDigit {
    /// Always `inbound_track`.
    pub track: String,
    /// `0`-`9`, `*`, `#` (as sent).
    pub digit: String,
}

/// `mark` echoed by Twilio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mark {
    /// Message counter.
    #[serde(deserialize_with = "string_or_number")]
    pub sequence_number: String,
    /// `MZ…`.
    pub stream_sid: String,
    /// The label we sent.
    pub mark: MarkName,
}

/// `{"name": "..."}` of a mark, both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkName {
    /// The label.
    pub name: String,
}

/// `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop {
    /// Message counter.
    #[serde(deserialize_with = "string_or_number")]
    pub sequence_number: String,
    /// Account and call.
    pub stop: StopInfo,
    /// `MZ…`.
    pub stream_sid: String,
}

/// `stop.stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopInfo {
    /// `AC…`.
    pub account_sid: String,
    /// `CA…`.
    pub call_sid: String,
}

/// A message from our server to Twilio; these three are the only ones allowed on a
/// bidirectional stream (anything else is error 31924).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Audio to play, buffered and played in order.
    Media {
        /// The stream's `MZ…`.
        #[serde(rename = "streamSid")]
        stream_sid: String,
        /// `{"payload": base64}`.
        media: OutboundMedia,
    },
    /// Ask Twilio to echo `name` when playback reaches this point.
    Mark {
        /// The stream's `MZ…`.
        #[serde(rename = "streamSid")]
        stream_sid: String,
        /// `{"name": label}`.
        mark: MarkName,
    },
    /// Empty the playback buffer; Twilio returns all pending marks.
    Clear {
        /// The stream's `MZ…`.
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
}

/// `media.media` we send: only `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMedia {
    /// Base64 of headerless µ-law at 8000 Hz.
    pub payload: String,
}

impl ServerMessage {
    /// `media` carrying `mulaw` (raw µ-law bytes, no WAV header) base64-encoded.
    pub fn media(stream_sid: impl Into<String>, mulaw: &[u8]) -> Self {
        Self::Media {
            stream_sid: stream_sid.into(),
            media: OutboundMedia {
                payload: B64.encode(mulaw),
            },
        }
    }

    /// `mark` with label `name`.
    pub fn mark(stream_sid: impl Into<String>, name: impl Into<String>) -> Self {
        Self::Mark {
            stream_sid: stream_sid.into(),
            mark: MarkName { name: name.into() },
        }
    }

    /// `clear`.
    pub fn clear(stream_sid: impl Into<String>) -> Self {
        Self::Clear {
            stream_sid: stream_sid.into(),
        }
    }

    /// The JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// Parses a frame we (or a test peer) sent.
    ///
    /// # Errors
    /// When `text` is not one of the three documented shapes.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The `streamSid`.
    pub fn stream_sid(&self) -> &str {
        match self {
            Self::Media { stream_sid, .. }
            | Self::Mark { stream_sid, .. }
            | Self::Clear { stream_sid } => stream_sid,
        }
    }
}

/// Accepts a JSON string, or a number rendered as its decimal string.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::S(s) => s,
        Lenient::N(n) => n.to_string(),
    })
}
