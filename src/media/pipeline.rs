//! Per-call frame transcoders between Twilio Media Streams (base64 μ-law, 8 kHz) and OpenAI
//! Realtime audio (base64 PCM16LE 24 kHz, or base64 μ-law for `audio/pcmu` sessions).
//!
//! Each transcoder owns reusable buffers. After the first few frames (once buffers have grown
//! to the largest payload seen) a call performs no heap allocation; `tests/media_alloc.rs`
//! checks this. Each holds per-stream filter state and buffers: keep one of each per call.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::g711::{ULAW_SILENCE, decode_into, encode_into};
use super::resample::{Downsampler3, Upsampler3};
use super::{FRAME_SAMPLES_8K, MediaError};

/// Standard alphabet; encodes with `=` padding, decodes with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Largest accepted Twilio inbound payload: 1 s of μ-law (8000 bytes = 10 668 base64 chars),
/// 50× a normal 20 ms frame.
pub const MAX_INBOUND_ULAW_BYTES: usize = 8_000;
/// Largest accepted OpenAI `audio/pcm` delta: 10 s of PCM16 at 24 kHz (480 000 bytes).
pub const MAX_OUTBOUND_PCM_BYTES: usize = 480_000;
/// Largest accepted OpenAI `audio/pcmu` delta: 10 s of μ-law at 8 kHz (80 000 bytes).
pub const MAX_OUTBOUND_ULAW_BYTES: usize = 80_000;

/// Base64 length (padded) that decodes to at most `bytes` bytes.
const fn max_b64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// Decode `b64` into `buf` (cleared first), rejecting payloads over `max_bytes` before decoding.
fn decode_b64(b64: &str, max_bytes: usize, buf: &mut Vec<u8>) -> Result<(), MediaError> {
    let max = max_b64_len(max_bytes);
    if b64.len() > max {
        return Err(MediaError::Oversize {
            len: b64.len(),
            max,
        });
    }
    buf.clear();
    B64.decode_vec(b64, buf)?;
    Ok(())
}

/// Twilio → OpenAI: base64 μ-law 8 kHz frame → base64 PCM16LE 24 kHz.
///
/// Steps: base64 decode → G.711 μ-law decode → ×3 interpolation ([`Upsampler3`], 1.875 ms delay)
/// → PCM16 little-endian → base64 encode. A 20 ms Twilio frame (160 bytes, 216 chars) gives 480
/// samples = 960 bytes = 1280 base64 chars, ready for `input_audio_buffer.append`. Any payload
/// length up to [`MAX_INBOUND_ULAW_BYTES`] is accepted (Twilio does not promise 20 ms chunks).
#[derive(Debug, Clone, Default)]
pub struct InboundTranscoder {
    up: Upsampler3,
    ulaw: Vec<u8>,
    pcm8: Vec<i16>,
    pcm24: Vec<i16>,
    bytes: Vec<u8>,
    out: String,
}

impl InboundTranscoder {
    /// A transcoder with silent filter history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Transcode one Twilio `media.payload`. Returns the base64 PCM16LE 24 kHz payload, which
    /// borrows an internal buffer until the next call.
    ///
    /// # Errors
    /// [`MediaError::Oversize`] or [`MediaError::Base64`]. The filter state is then untouched.
    pub fn frame(&mut self, payload_b64: &str) -> Result<&str, MediaError> {
        decode_b64(payload_b64, MAX_INBOUND_ULAW_BYTES, &mut self.ulaw)?;
        self.pcm8.clear();
        decode_into(&self.ulaw, &mut self.pcm8);
        self.pcm24.clear();
        self.up.process(&self.pcm8, &mut self.pcm24);
        pcm16le_bytes(&self.pcm24, &mut self.bytes);
        self.out.clear();
        B64.encode_string(&self.bytes, &mut self.out);
        Ok(&self.out)
    }

    /// Forget the filter history (new stream on the same object).
    pub fn reset(&mut self) {
        self.up.reset();
    }
}

/// Write `pcm` as little-endian bytes into `bytes` (cleared first).
fn pcm16le_bytes(pcm: &[i16], bytes: &mut Vec<u8>) {
    bytes.clear();
    bytes.resize(2 * pcm.len(), 0);
    for (dst, s) in bytes.chunks_exact_mut(2).zip(pcm) {
        dst.copy_from_slice(&s.to_le_bytes());
    }
}

/// Re-frames a μ-law byte stream into 20 ms Twilio frames (160 bytes, 216 base64 chars).
///
/// Use it directly for OpenAI `audio/pcmu` sessions: output deltas are already μ-law 8 kHz but
/// arrive in arbitrary sizes. [`OutboundTranscoder`] also uses it after transcoding. Bytes
/// that do not fill a frame are kept for the next push; [`Self::flush`] pads the last partial
/// frame with μ-law silence (0xFF).
#[derive(Debug, Clone, Default)]
pub struct UlawFramer {
    /// Unframed μ-law bytes are `pending[start..]`.
    pending: Vec<u8>,
    start: usize,
    scratch: Vec<u8>,
    frame_b64: String,
}

impl UlawFramer {
    /// An empty framer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a base64 μ-law delta (OpenAI `audio/pcmu` `response.output_audio.delta`).
    ///
    /// # Errors
    /// [`MediaError::Oversize`] (over [`MAX_OUTBOUND_ULAW_BYTES`]) or [`MediaError::Base64`].
    /// Nothing is appended then.
    pub fn push(&mut self, delta_b64: &str) -> Result<(), MediaError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let res = decode_b64(delta_b64, MAX_OUTBOUND_ULAW_BYTES, &mut scratch);
        if res.is_ok() {
            self.push_ulaw(&scratch);
        }
        self.scratch = scratch;
        res
    }

    /// Append raw μ-law bytes.
    pub fn push_ulaw(&mut self, ulaw: &[u8]) {
        self.compact();
        self.pending.extend_from_slice(ulaw);
    }

    /// Append PCM16 8 kHz samples, μ-law encoded.
    pub fn push_pcm8(&mut self, pcm: &[i16]) {
        self.compact();
        encode_into(pcm, &mut self.pending);
    }

    /// Move unframed bytes to the front so the buffer never grows past one push plus a frame.
    fn compact(&mut self) {
        if self.start > 0 {
            self.pending.copy_within(self.start.., 0);
            self.pending.truncate(self.pending.len() - self.start);
            self.start = 0;
        }
    }

    /// Next complete 20 ms frame as base64 (216 chars), or `None` when fewer than 160 bytes are
    /// buffered. The returned string borrows an internal buffer until the next call.
    pub fn next_frame(&mut self) -> Option<&str> {
        if self.buffered() < FRAME_SAMPLES_8K {
            return None;
        }
        let frame = &self.pending[self.start..self.start + FRAME_SAMPLES_8K];
        self.frame_b64.clear();
        B64.encode_string(frame, &mut self.frame_b64);
        self.start += FRAME_SAMPLES_8K;
        if self.start == self.pending.len() {
            self.pending.clear();
            self.start = 0;
        }
        Some(&self.frame_b64)
    }

    /// μ-law bytes buffered and not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.pending.len() - self.start
    }

    /// Pad a trailing partial frame with μ-law silence (0xFF) up to 160 bytes, so that
    /// [`Self::next_frame`] returns it. Call at the end of a response. Adds at most 19.875 ms of
    /// silence; does nothing when the buffer holds whole frames only.
    pub fn flush(&mut self) {
        let rem = self.buffered() % FRAME_SAMPLES_8K;
        if rem != 0 {
            self.compact();
            let padded = self.pending.len() + FRAME_SAMPLES_8K - rem;
            self.pending.resize(padded, ULAW_SILENCE);
        }
    }

    /// Drop everything buffered (e.g. after sending Twilio a `clear` on barge-in).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.start = 0;
    }
}

/// OpenAI → Twilio: base64 PCM16LE 24 kHz deltas → base64 μ-law 8 kHz 20 ms frames.
///
/// Steps: base64 decode → PCM16LE (an odd trailing byte is carried to the next delta) → ÷3
/// decimation ([`Downsampler3`], anti-aliasing ≥ 67 dB from 4 kHz, 1.875 ms delay; 0–2 samples
/// of phase carried) → G.711 μ-law encode → [`UlawFramer`] (160-byte frames, remainder carried).
/// Drain frames with [`Self::next_frame`] after each [`Self::push`]. At the end of a response,
/// call [`Self::flush`]; on barge-in, call [`Self::reset`].
#[derive(Debug, Clone, Default)]
pub struct OutboundTranscoder {
    down: Downsampler3,
    framer: UlawFramer,
    /// Low byte of a sample whose high byte has not arrived yet.
    odd: Option<u8>,
    bytes: Vec<u8>,
    pcm24: Vec<i16>,
    pcm8: Vec<i16>,
}

impl OutboundTranscoder {
    /// A transcoder with silent filter history and nothing buffered.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one base64 PCM16LE 24 kHz delta (`response.output_audio.delta`). Deltas may split
    /// a sample: an odd trailing byte is kept for the next call.
    ///
    /// # Errors
    /// [`MediaError::Oversize`] (over [`MAX_OUTBOUND_PCM_BYTES`]) or [`MediaError::Base64`].
    /// Nothing is consumed then; buffered audio and filter state are unchanged.
    pub fn push(&mut self, delta_b64: &str) -> Result<(), MediaError> {
        decode_b64(delta_b64, MAX_OUTBOUND_PCM_BYTES, &mut self.bytes)?;
        let carried = self.odd.take();
        let (head, body) = match carried {
            Some(lo) if !self.bytes.is_empty() => (
                Some(i16::from_le_bytes([lo, self.bytes[0]])),
                &self.bytes[1..],
            ),
            other => {
                self.odd = other; // empty delta: keep carrying
                (None, &self.bytes[..])
            }
        };
        let pairs = body.chunks_exact(2);
        if let [last] = pairs.remainder() {
            self.odd = Some(*last);
        }
        self.pcm24.clear();
        self.pcm24.extend(head);
        self.pcm24
            .extend(pairs.map(|b| i16::from_le_bytes([b[0], b[1]])));
        self.pcm8.clear();
        self.down.process(&self.pcm24, &mut self.pcm8);
        self.framer.push_pcm8(&self.pcm8);
        Ok(())
    }

    /// Next complete 20 ms μ-law frame as base64 (160 bytes = 216 chars), or `None`. The string
    /// borrows an internal buffer until the next call.
    pub fn next_frame(&mut self) -> Option<&str> {
        self.framer.next_frame()
    }

    /// μ-law bytes (8 kHz samples) buffered and not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// End of a response. Pushes the filter tail (the last 1.875 ms of audio plus its decaying
    /// post-ringing), pads the last partial frame with μ-law silence to 160 bytes, and resets the
    /// filter, which is then exactly as if silence followed. Drain the remaining frames with
    /// [`Self::next_frame`] afterwards.
    ///
    /// # Errors
    /// [`MediaError::OddPcmLength`] when the stream ended in the middle of a sample; that byte is
    /// dropped, and everything else is flushed as usual.
    pub fn flush(&mut self) -> Result<(), MediaError> {
        self.pcm8.clear();
        self.down.flush(&mut self.pcm8);
        self.framer.push_pcm8(&self.pcm8);
        self.framer.flush();
        match self.odd.take() {
            Some(_) => Err(MediaError::OddPcmLength { stray_bytes: 1 }),
            None => Ok(()),
        }
    }

    /// Drop buffered frames, the carried byte and the filter history (barge-in / Twilio `clear`).
    pub fn reset(&mut self) {
        self.down.reset();
        self.framer.clear();
        self.odd = None;
    }
}
