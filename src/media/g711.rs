//! ITU-T G.711 μ-law (PCMU) codec, bit-exact with the ITU-T G.191 Software Tool Library.
//!
//! Format: one μ-law byte per sample, 8 kHz mono in telephony (G.711 itself is rate-agnostic).
//! Linear side: signed 16-bit PCM (`i16`, full scale ±32768). A Twilio Media Streams frame is
//! 20 ms = 160 samples = 160 μ-law bytes.
//!
//! Sources:
//! - ITU-T Rec. G.711 (11/88), "Pulse code modulation (PCM) of voice frequencies", Table 2a.
//! - ITU-T G.191 STL, `g711.c`: `ulaw_compress()` and `ulaw_expand()`. [`ulaw_encode_computed`]
//!   is a line-by-line port of `ulaw_compress()` and is checked against the ITU code of every
//!   `i16` in `tests/media_g711.rs` (0 mismatches out of 65 536).
//!
//! Encoders differ between tools (measured on all 65 536 inputs; `tests/fixtures/README.md`): SoX
//! rounds to 14 bits, ffmpeg picks the nearest decoded value, and audioop (Sun `g711.c`) shifts
//! negative thresholds by 4. Those differ from ITU by at most one code step (or only in the sign of
//! zero, 0x7F vs 0xFF). This module follows ITU exactly. All of these tools decode identically.

/// The μ-law code of a zero sample (positive zero). Use it as silence padding.
pub const ULAW_SILENCE: u8 = 0xFF;

/// Encode one 16-bit linear PCM sample to a μ-law code (ITU-T G.191 `ulaw_compress`).
///
/// This is the arithmetic form, usable in `const` contexts. It truncates the sample to 14 bits
/// (`x >> 2`, one's complement for negatives), adds the bias 33, clips to 0x1FFF, finds the
/// segment from the bit length, and inverts the 7 magnitude bits; bit 7 is set for `x >= 0`.
/// Examples: `0 → 0xFF`, `-1 → 0x7F`, `32767 → 0x80`, `-32768 → 0x00`.
#[must_use]
pub const fn ulaw_encode_computed(sample: i16) -> u8 {
    let x = sample as i32;
    // (~x) >> 2 for negatives: the G.191 one's-complement magnitude, 0..=8191.
    let mut absno = if x < 0 {
        ((!x) >> 2) + 33
    } else {
        (x >> 2) + 33
    };
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    // segno = 1 + bit length of (absno >> 6), i.e. 1..=8.
    let segno = 33 - ((absno >> 6) as u32).leading_zeros() as i32;
    let low_nibble = 0xF - ((absno >> segno) & 0xF);
    let out = (((8 - segno) << 4) | low_nibble) as u8;
    if x >= 0 { out | 0x80 } else { out }
}

/// Decode one μ-law code to 16-bit linear PCM (ITU-T G.191 `ulaw_expand`).
///
/// Arithmetic form of [`ulaw_decode`]. Outputs lie in `-32124..=32124`:
/// `0x00 → -32124`, `0x80 → 32124`, `0x7F → 0`, `0xFF → 0`.
#[must_use]
pub const fn ulaw_decode_computed(code: u8) -> i16 {
    let inv = !code as i32;
    let exponent = (inv >> 4) & 0x7;
    let mantissa = inv & 0xF;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    (if code < 0x80 { -magnitude } else { magnitude }) as i16
}

/// Encode table indexed by `(sample >> 2) + 8192`: the ITU encoder only looks at the top 14 bits
/// (for negatives `(~x) >> 2 == ~(x >> 2)`), so 16 384 entries cover every `i16` exactly.
static ENCODE_TABLE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        t[i] = ulaw_encode_computed(((i as i32 - 8192) << 2) as i16);
        i += 1;
    }
    t
};

static DECODE_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_computed(i as u8);
        i += 1;
    }
    t
};

/// Encode one 16-bit linear PCM sample to μ-law (ITU-T G.191 `ulaw_compress`, bit-exact).
///
/// Table-driven (16 KiB table of [`ulaw_encode_computed`] outputs); same result as
/// [`ulaw_encode_computed`] for every input. Chosen over the arithmetic form by
/// `benches/transcode.rs` (see `docs/performance.md`).
#[inline]
#[must_use]
pub fn ulaw_encode(sample: i16) -> u8 {
    ENCODE_TABLE[((sample >> 2) as i32 + 8192) as usize]
}

/// Decode one μ-law code to 16-bit linear PCM (ITU-T G.191 `ulaw_expand`), via a 256-entry table.
///
/// `0x00 → -32124`, `0x80 → +32124`, `0x7F → 0`, `0xFF → 0`.
#[inline]
#[must_use]
pub fn ulaw_decode(code: u8) -> i16 {
    DECODE_TABLE[code as usize]
}

/// Encode PCM16 samples to μ-law, **appending** one byte per sample to `out`.
///
/// For a 20 ms frame at 8 kHz: 160 samples in, 160 bytes appended. Does not allocate when `out`
/// has spare capacity.
pub fn encode_into(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| ulaw_encode(s)));
}

/// Decode μ-law bytes to PCM16, **appending** one sample per byte to `out`.
///
/// For a 20 ms frame at 8 kHz: 160 bytes in, 160 samples appended. Does not allocate when `out`
/// has spare capacity.
pub fn decode_into(ulaw: &[u8], out: &mut Vec<i16>) {
    out.extend(ulaw.iter().map(|&c| ulaw_decode(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_computed_for_every_input() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(x), ulaw_encode_computed(x), "x = {x}");
        }
    }

    #[test]
    fn documented_codes() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0xFF), 0);
    }

    #[test]
    fn slice_helpers_append() {
        let mut bytes = vec![0xAA];
        encode_into(&[0, -1, 1000], &mut bytes);
        assert_eq!(bytes[..3], [0xAA, 0xFF, 0x7F]);
        assert_eq!(bytes.len(), 4);
        let mut pcm = vec![7];
        decode_into(&bytes[1..], &mut pcm);
        assert_eq!(pcm[..3], [7, 0, 0]);
        assert_eq!(pcm.len(), 4);
    }
}
