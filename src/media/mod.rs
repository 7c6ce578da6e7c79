//! The μ-law/PCM16 transcoding core for the Twilio Media Streams path.
//!
//! | side | format | 20 ms frame |
//! |---|---|---|
//! | Twilio Media Streams (`media.payload`, both directions) | base64 of headerless G.711 μ-law, 8 kHz mono | 160 bytes = 216 base64 chars |
//! | OpenAI Realtime `audio/pcm` (`input_audio_buffer.append`, `response.output_audio.delta`) | base64 of PCM16 little-endian, 24 kHz mono | 480 samples = 960 bytes = 1280 base64 chars |
//! | OpenAI Realtime `audio/pcmu` | base64 of μ-law, 8 kHz mono (no transcoding, only re-framing) | 160 bytes |
//!
//! - [`g711`]: ITU-T G.711 μ-law encode/decode, bit-exact with ITU-T G.191 `ulaw_compress` /
//!   `ulaw_expand`.
//! - [`resample`]: streaming ×3 polyphase FIR, 8 kHz ↔ 24 kHz. Passband 0–3.4 kHz within
//!   ±0.026 dB, ≥ 67 dB stopband from 4 kHz, 1.875 ms delay.
//! - [`pipeline`]: per-call, allocation-free (in steady state) frame transcoders:
//!   [`InboundTranscoder`] (Twilio → OpenAI pcm16), [`OutboundTranscoder`] (OpenAI pcm16 →
//!   Twilio), and [`UlawFramer`] (OpenAI pcmu → Twilio 160-byte frames).
//!
//! Errors ([`MediaError`]) are per frame: callers count them and skip the frame. A failed call
//! leaves the transcoder's state as it was before the call.

pub mod g711;
pub mod pipeline;
pub mod resample;

pub use pipeline::{InboundTranscoder, OutboundTranscoder, UlawFramer};

/// Twilio Media Streams sample rate (Hz): μ-law, mono.
pub const TWILIO_SAMPLE_RATE: u32 = 8_000;
/// OpenAI Realtime `audio/pcm` sample rate (Hz): PCM16 little-endian, mono.
pub const OPENAI_PCM_SAMPLE_RATE: u32 = 24_000;
/// Frame duration used for pacing towards Twilio (ms).
pub const FRAME_MS: u32 = 20;
/// Samples (= μ-law bytes) in a 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES_8K: usize = 160;
/// Samples in a 20 ms frame at 24 kHz.
pub const FRAME_SAMPLES_24K: usize = 480;
/// Base64 characters of a 160-byte μ-law frame (with padding).
pub const FRAME_ULAW_B64_LEN: usize = 216;

/// Why a media payload was rejected. The frame is dropped; the transcoder state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The payload is not valid standard-alphabet base64 (padding is optional).
    #[error("media payload is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// A PCM16 stream ended in the middle of a sample: `stray_bytes` (always 1) byte was dropped.
    #[error("PCM16 stream ended with {stray_bytes} stray byte (half a sample); it was dropped")]
    OddPcmLength {
        /// Bytes dropped (1).
        stray_bytes: usize,
    },
    /// The base64 payload is longer than the transcoder accepts in one call.
    #[error("media payload of {len} base64 characters exceeds the limit of {max}")]
    Oversize {
        /// Length of the rejected payload (base64 characters).
        len: usize,
        /// Largest accepted length (base64 characters).
        max: usize,
    },
}
