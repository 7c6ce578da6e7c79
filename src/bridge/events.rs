//! Message shapes on both sockets of the bridge: borrowed "peek" views parsed per message
//! (nothing is copied for audio payloads), and the text frames the bridge writes or
//! synthesises.
//!
//! Twilio shapes: Twilio's Media Streams WebSocket messages (full types in
//! [`crate::twilio::media`]). Realtime shapes: OpenAPI `RealtimeServerEvent*` (server events) and
//! `RealtimeClientEvent*` (client events).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::prompts::Profile;

/// The fields of a Twilio message the bridge reads on every frame.
#[derive(Debug, Deserialize)]
pub struct TwilioPeek<'a> {
    /// `connected`, `start`, `media`, `dtmf`, `mark`, `stop`.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// Top-level `streamSid` (absent on `connected`).
    #[serde(default, borrow, rename = "streamSid")]
    pub stream_sid: Option<Cow<'a, str>>,
    /// `media` of a `media` message.
    #[serde(default, borrow)]
    pub media: Option<MediaPeek<'a>>,
    /// `mark` of a `mark` message.
    #[serde(default, borrow)]
    pub mark: Option<NamePeek<'a>>,
    /// `dtmf` of a `dtmf` message.
    #[serde(default, borrow)]
    pub dtmf: Option<DtmfPeek<'a>>,
}

/// `media.media`.
#[derive(Debug, Deserialize)]
pub struct MediaPeek<'a> {
    /// `inbound` (the only track of a `<Connect><Stream>`).
    #[serde(default, borrow)]
    pub track: Option<Cow<'a, str>>,
    /// Base64 μ-law.
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

/// `mark.mark`.
#[derive(Debug, Deserialize)]
pub struct NamePeek<'a> {
    /// The label we sent.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `dtmf.dtmf`.
#[derive(Debug, Deserialize)]
pub struct DtmfPeek<'a> {
    /// The key.
    #[serde(borrow)]
    pub digit: Cow<'a, str>,
}

impl<'a> TwilioPeek<'a> {
    /// Parses one text frame.
    ///
    /// # Errors
    /// When it is not a JSON object with a string `event` (or a known field has a wrong type).
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The fields of a Realtime server event the bridge reads on every event.
#[derive(Debug, Deserialize)]
pub struct ModelPeek<'a> {
    /// The event type.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// `delta` (base64 audio on `response.output_audio.delta`).
    #[serde(default, borrow)]
    pub delta: Option<Cow<'a, str>>,
    /// `response_id` of response-scoped events.
    #[serde(default, borrow)]
    pub response_id: Option<Cow<'a, str>>,
    /// `item_id`.
    #[serde(default, borrow)]
    pub item_id: Option<Cow<'a, str>>,
    /// `response` of `response.created` / `response.done`.
    #[serde(default)]
    pub response: Option<ResponsePeek>,
}

/// `response.id` of `response.created` / `response.done`.
#[derive(Debug, Deserialize)]
pub struct ResponsePeek {
    /// `resp_…`.
    #[serde(default)]
    pub id: String,
}

impl<'a> ModelPeek<'a> {
    /// Parses one text frame.
    ///
    /// # Errors
    /// When it is not a JSON object with a string `type`.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Realtime server event types the bridge acts on.
pub mod kinds {
    /// Agent audio (base64 in the session's output format).
    pub const AUDIO_DELTA: &str = "response.output_audio.delta";
    /// The audio of a content part is complete.
    pub const AUDIO_DONE: &str = "response.output_audio.done";
    /// A response finished (any status).
    pub const RESPONSE_DONE: &str = "response.done";
    /// Server VAD heard the caller start speaking: barge-in.
    pub const SPEECH_STARTED: &str = "input_audio_buffer.speech_started";
}

/// The `session.update` sent right after connecting (OpenAPI `RealtimeClientEvent*`): the profile's
/// session ([`Profile::realtime_session`]: `type`, instructions, transcription on, turn detection,
/// voice, tools) without `model` (fixed by the URL's `?model=`), with `audio.input.format` and
/// `audio.output.format` of the profile's `[session] audio` mode.
pub fn session_update(profile: &Profile) -> String {
    let mut session = profile.realtime_session();
    if let Some(obj) = session.as_object_mut() {
        obj.remove("model");
    }
    let format = profile.session.audio.realtime_format();
    session["audio"]["input"]["format"] = format.clone();
    session["audio"]["output"]["format"] = format;
    json!({ "type": "session.update", "session": session }).to_string()
}

/// `conversation.item.truncate` (OpenAPI `RealtimeClientEvent*`): the model forgets the agent audio
/// of `item_id` after `audio_end_ms`.
pub fn truncate(item_id: &str, audio_end_ms: u32) -> String {
    json!({
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    })
    .to_string()
}

/// Synthesised for the monitor: the SIP-only `input_audio_buffer.dtmf_event_received`
/// (OpenAPI `RealtimeServerEvent*`) for a Twilio `dtmf` message.
pub fn dtmf_received(digit: &str, unix_secs: i64) -> String {
    json!({
        "type": "input_audio_buffer.dtmf_event_received",
        "event": digit,
        "received_at": unix_secs,
    })
    .to_string()
}

/// Synthesised for the monitor: `output_audio_buffer.started` (OpenAPI `RealtimeServerEvent*`,
/// "WebRTC/SIP only"): the first frame of `response_id` went to Twilio.
pub fn audio_started(response_id: &str) -> String {
    json!({ "type": "output_audio_buffer.started", "response_id": response_id }).to_string()
}

/// Synthesised for the monitor: `output_audio_buffer.stopped`: Twilio played the last frame of
/// `response_id`, or its audio was cleared by a barge-in.
pub fn audio_stopped(response_id: &str) -> String {
    json!({ "type": "output_audio_buffer.stopped", "response_id": response_id }).to_string()
}

/// `response.id` of a `response.done` text (parsed fully; rare).
pub fn response_done_id(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.pointer("/response/id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_borrow_payloads() {
        let text = r#"{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"no+JhoaJjpzS"},"streamSid":"MZ1"}"#;
        let p = TwilioPeek::parse(text).unwrap();
        assert_eq!(p.event, "media");
        assert_eq!(p.stream_sid.as_deref(), Some("MZ1"));
        let media = p.media.unwrap();
        assert!(matches!(media.payload, Cow::Borrowed("no+JhoaJjpzS")));
        let m = ModelPeek::parse(
            r#"{"type":"response.output_audio.delta","event_id":"e","response_id":"r1","item_id":"i1","output_index":0,"content_index":0,"delta":"AAAA"}"#,
        )
        .unwrap();
        assert_eq!(
            (m.kind.as_ref(), m.delta.as_deref(), m.item_id.as_deref()),
            (kinds::AUDIO_DELTA, Some("AAAA"), Some("i1"))
        );
        // Escaped text still parses (owned).
        let m = ModelPeek::parse(
            r#"{"type":"response.output_audio_transcript.delta","delta":"say \"hi\""}"#,
        )
        .unwrap();
        assert_eq!(m.delta.as_deref(), Some("say \"hi\""));
        assert!(TwilioPeek::parse("[1,2]").is_err());
        assert!(ModelPeek::parse(r#"{"no":"type"}"#).is_err());
        assert_eq!(
            response_done_id(r#"{"type":"response.done","response":{"id":"resp_1"}}"#).as_deref(),
            Some("resp_1")
        );
    }
}
