//! Per-call audio processing of the bridge, one implementation per [`MediaAudio`] mode, and the
//! hand-built JSON text frames of the per-frame hot path.
//!
//! Twilio side: base64 of headerless μ-law, 8 kHz mono; 20 ms = 160 bytes = 216 base64 characters
//! (Twilio's Media Streams WebSocket messages). Model side: `audio/pcmu` (same bytes) or
//! `audio/pcm` (PCM16LE 24 kHz mono, 20 ms = 960 bytes = 1280 base64 characters) (OpenAPI
//! `RealtimeSessionCreateRequestGA`). Formats and filter delays of the transcoders are in
//! [`crate::media`].

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::media::pipeline::MAX_INBOUND_ULAW_BYTES;
use crate::media::{FRAME_MS, InboundTranscoder, MediaError, OutboundTranscoder, UlawFramer};
use crate::prompts::MediaAudio;

/// Standard alphabet, padding optional on decode (as [`crate::media`] accepts).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const APPEND_HEAD: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
const APPEND_TAIL: &str = r#""}"#;

/// Twilio → model: turns each Twilio `media.payload` into an `input_audio_buffer.append` event.
#[derive(Debug)]
pub enum Inbound {
    /// `pcmu`: the payload is validated (base64, at most 1 s of audio) and passed through.
    Pcmu {
        /// Decode buffer for validation.
        scratch: Vec<u8>,
    },
    /// `pcm16`: μ-law 8 kHz → PCM16LE 24 kHz.
    Pcm16(Box<InboundTranscoder>),
}

impl Inbound {
    /// A fresh per-call processor for `mode`.
    pub fn new(mode: MediaAudio) -> Self {
        match mode {
            MediaAudio::Pcmu => Self::Pcmu {
                scratch: Vec::with_capacity(MAX_INBOUND_ULAW_BYTES),
            },
            MediaAudio::Pcm16 => Self::Pcm16(Box::default()),
        }
    }

    /// Writes the `input_audio_buffer.append` text frame for `payload_b64` into `out` (cleared
    /// first) and returns the number of μ-law bytes (= 8 kHz samples) it carries. `Ok(0)` (and
    /// `out` empty) for an empty payload: nothing to send.
    ///
    /// # Errors
    /// [`MediaError::Base64`] or [`MediaError::Oversize`] (over
    /// [`MAX_INBOUND_ULAW_BYTES`] = 1 s); `out` is then empty and the filter state unchanged.
    pub fn append_event(
        &mut self,
        payload_b64: &str,
        out: &mut String,
    ) -> Result<usize, MediaError> {
        out.clear();
        let (audio, samples) = match self {
            Self::Pcmu { scratch } => {
                let max = MAX_INBOUND_ULAW_BYTES.div_ceil(3) * 4;
                if payload_b64.len() > max {
                    return Err(MediaError::Oversize {
                        len: payload_b64.len(),
                        max,
                    });
                }
                scratch.clear();
                B64.decode_vec(payload_b64, scratch)?;
                (payload_b64, scratch.len())
            }
            Self::Pcm16(t) => {
                let pcm = t.frame(payload_b64)?;
                // 3 PCM16 samples (6 bytes) per μ-law byte.
                (pcm, b64_decoded_len(pcm) / 6)
            }
        };
        if samples == 0 {
            return Ok(0);
        }
        out.reserve(APPEND_HEAD.len() + audio.len() + APPEND_TAIL.len());
        out.push_str(APPEND_HEAD);
        out.push_str(audio);
        out.push_str(APPEND_TAIL);
        Ok(samples)
    }
}

/// Decoded length of a padded or unpadded standard base64 string (without decoding it).
pub(crate) fn b64_decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() - pad) * 3 / 4
}

/// Model → Twilio: turns `response.output_audio.delta` payloads into 20 ms μ-law frames.
#[derive(Debug)]
pub enum Outbound {
    /// `pcmu`: deltas are μ-law already; only re-framed.
    Pcmu(UlawFramer),
    /// `pcm16`: PCM16LE 24 kHz → μ-law 8 kHz, then framed.
    Pcm16(Box<OutboundTranscoder>),
}

impl Outbound {
    /// A fresh per-call processor for `mode`.
    pub fn new(mode: MediaAudio) -> Self {
        match mode {
            MediaAudio::Pcmu => Self::Pcmu(UlawFramer::new()),
            MediaAudio::Pcm16 => Self::Pcm16(Box::default()),
        }
    }

    /// Appends one base64 delta in the session's output format.
    ///
    /// # Errors
    /// [`MediaError::Base64`] or [`MediaError::Oversize`] (10 s); nothing is consumed then.
    pub fn push(&mut self, delta_b64: &str) -> Result<(), MediaError> {
        match self {
            Self::Pcmu(f) => f.push(delta_b64),
            Self::Pcm16(t) => t.push(delta_b64),
        }
    }

    /// The next complete 20 ms frame as base64 (216 characters), or `None`.
    pub fn next_frame(&mut self) -> Option<&str> {
        match self {
            Self::Pcmu(f) => f.next_frame(),
            Self::Pcm16(t) => t.next_frame(),
        }
    }

    /// End of a response's audio: the buffered remainder (and, for `pcm16`, the filter tail) is
    /// padded with μ-law silence to a whole frame; drain it with [`Self::next_frame`].
    ///
    /// # Errors
    /// [`MediaError::OddPcmLength`] when the PCM16 stream ended mid-sample (the stray byte is
    /// dropped; everything else is flushed).
    pub fn finish(&mut self) -> Result<(), MediaError> {
        match self {
            Self::Pcmu(f) => {
                f.flush();
                Ok(())
            }
            Self::Pcm16(t) => t.flush(),
        }
    }

    /// Drops everything buffered and the filter history (barge-in).
    pub fn reset(&mut self) {
        match self {
            Self::Pcmu(f) => f.clear(),
            Self::Pcm16(t) => t.reset(),
        }
    }

    /// μ-law bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        match self {
            Self::Pcmu(f) => f.buffered(),
            Self::Pcm16(t) => t.buffered(),
        }
    }
}

/// Builds Twilio `media` text frames for one stream without going through `serde_json` per frame:
/// `{"event":"media","streamSid":<sid>,"media":{"payload":"<base64>"}}` (Twilio's Media Streams
/// WebSocket messages), identical to [`crate::twilio::media::ServerMessage::media`]'s JSON.
#[derive(Debug, Clone)]
pub struct MediaFrameWriter {
    head: String,
}

impl MediaFrameWriter {
    /// A writer for `stream_sid` (JSON-escaped once here).
    pub fn new(stream_sid: &str) -> Self {
        let sid = serde_json::to_string(stream_sid).expect("a string serializes");
        Self {
            head: format!(r#"{{"event":"media","streamSid":{sid},"media":{{"payload":""#),
        }
    }

    /// The text frame carrying `payload_b64` (base64 needs no JSON escaping).
    pub fn frame(&self, payload_b64: &str) -> String {
        let mut s = String::with_capacity(self.head.len() + payload_b64.len() + 3);
        s.push_str(&self.head);
        s.push_str(payload_b64);
        s.push_str(r#""}}"#);
        s
    }
}

/// Duration of `frames` 20 ms frames, milliseconds.
pub fn frames_ms(frames: usize) -> u32 {
    u32::try_from(frames)
        .unwrap_or(u32::MAX)
        .saturating_mul(FRAME_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::media::ServerMessage;
    use serde_json::Value;

    #[test]
    fn pcmu_append_passes_the_payload_through() {
        let mut inb = Inbound::new(MediaAudio::Pcmu);
        let payload = B64.encode([0x7fu8; 160]);
        let mut out = String::new();
        assert_eq!(inb.append_event(&payload, &mut out).unwrap(), 160);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.append");
        assert_eq!(v["audio"], payload.as_str());
        assert!(inb.append_event("!!notbase64", &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(inb.append_event("", &mut out).unwrap(), 0);
        let big = B64.encode(vec![0u8; MAX_INBOUND_ULAW_BYTES + 3]);
        assert!(matches!(
            inb.append_event(&big, &mut out),
            Err(MediaError::Oversize { .. })
        ));
    }

    #[test]
    fn pcm16_append_is_24khz_pcm() {
        let mut inb = Inbound::new(MediaAudio::Pcm16);
        let payload = B64.encode([0xffu8; 160]);
        let mut out = String::new();
        assert_eq!(inb.append_event(&payload, &mut out).unwrap(), 160);
        let v: Value = serde_json::from_str(&out).unwrap();
        let pcm = B64.decode(v["audio"].as_str().unwrap()).unwrap();
        assert_eq!(pcm.len(), 960, "480 samples of PCM16 for 20 ms");
    }

    #[test]
    fn outbound_frames_are_160_bytes_and_padded_at_the_end() {
        for mode in [MediaAudio::Pcmu, MediaAudio::Pcm16] {
            let mut out = Outbound::new(mode);
            // 50 ms of audio in the session format.
            let delta = match mode {
                MediaAudio::Pcmu => B64.encode(vec![0x55u8; 400]),
                MediaAudio::Pcm16 => B64.encode(vec![0x10u8; 2400]),
            };
            out.push(&delta).unwrap();
            let mut frames = Vec::new();
            while let Some(f) = out.next_frame() {
                frames.push(B64.decode(f).unwrap());
            }
            assert_eq!(frames.len(), 2, "{mode:?}");
            assert_eq!(out.buffered(), 80);
            out.finish().unwrap();
            while let Some(f) = out.next_frame() {
                frames.push(B64.decode(f).unwrap());
            }
            assert_eq!(frames.len(), 3);
            assert!(frames.iter().all(|f| f.len() == 160));
            match mode {
                MediaAudio::Pcmu => {
                    assert_eq!(frames[2][80..], [0xffu8; 80], "padded with μ-law silence")
                }
                // The filter tail rings for ~1.9 ms after the step, then silence.
                MediaAudio::Pcm16 => assert!(
                    frames[2][120..]
                        .iter()
                        .all(|&b| crate::media::g711::ulaw_decode(b).abs() < 16),
                    "{:?}",
                    &frames[2][80..]
                ),
            }
        }
    }

    #[test]
    fn media_frame_json_matches_server_message() {
        let w = MediaFrameWriter::new("MZ0123");
        let text = w.frame("AAAA");
        assert_eq!(
            ServerMessage::parse(&text).unwrap(),
            ServerMessage::media("MZ0123", &[0, 0, 0])
        );
        assert_eq!(text, ServerMessage::media("MZ0123", &[0, 0, 0]).to_json());
    }
}
