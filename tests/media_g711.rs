//! G.711 μ-law against the ITU-T G.191 reference vectors in `tests/fixtures/`.

mod media_common;

use media_common::{read_fixture, snr_db, speech_8k};
use voxmachina::media::g711::{
    decode_into, encode_into, ulaw_decode, ulaw_decode_computed, ulaw_encode, ulaw_encode_computed,
};

#[test]
fn every_int16_matches_the_itu_table() {
    let table = read_fixture("itu_g711_ulaw_all_int16.bin");
    assert_eq!(table.len(), 65_536);
    let mut mismatches = 0;
    for (i, &want) in table.iter().enumerate() {
        let x = (i as i32 - 32_768) as i16;
        if ulaw_encode(x) != want || ulaw_encode_computed(x) != want {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0, "mismatches against ITU G.191 ulaw_compress");
}

#[test]
fn speech_clip_encodes_to_the_itu_bytes() {
    let pcm = speech_8k();
    let mut ours = Vec::new();
    encode_into(&pcm, &mut ours);
    let itu = read_fixture("speech_8k.itu.ulaw");
    assert_eq!(ours.len(), 24_000);
    assert!(
        ours == itu,
        "speech_8k encoding differs from speech_8k.itu.ulaw"
    );
}

/// Position of a code on the μ-law quantiser scale (0 = most negative); both zeros share one
/// position, so the sign-of-zero pair 0x7F/0xFF is zero steps apart.
fn level_index(code: u8) -> i32 {
    let magnitude = 0x7F - i32::from(code & 0x7F); // 0..=127, 0 = zero level
    if code & 0x80 != 0 {
        127 + magnitude
    } else {
        127 - magnitude
    }
}

#[test]
fn sox_output_is_within_one_code_step() {
    // SoX rounds to 14 bits where ITU truncates (tests/fixtures/README.md): it differs from ITU
    // on 1898 of the clip's 24000 bytes, each by at most one quantiser step or only in the sign
    // of zero.
    let pcm = speech_8k();
    let sox = read_fixture("speech_8k.sox.ulaw");
    let mut ours = Vec::new();
    encode_into(&pcm, &mut ours);
    let (mut differ, mut sign_of_zero, mut max_steps) = (0, 0, 0);
    for (&a, &b) in ours.iter().zip(&sox) {
        if a != b {
            differ += 1;
            if ulaw_decode(a) == 0 && ulaw_decode(b) == 0 {
                sign_of_zero += 1;
            }
            max_steps = max_steps.max((level_index(a) - level_index(b)).abs());
        }
    }
    eprintln!(
        "sox vs ITU on speech: {differ} bytes differ ({sign_of_zero} sign-of-zero), max {max_steps} step"
    );
    assert_eq!(differ, 1898);
    assert!(max_steps <= 1);
}

#[test]
fn all_codes_decode_to_the_documented_values() {
    assert_eq!(ulaw_decode(0x00), -32_124);
    assert_eq!(ulaw_decode(0x80), 32_124);
    assert_eq!(ulaw_decode(0x7F), 0);
    assert_eq!(ulaw_decode(0xFF), 0);
    for c in 0..=255u8 {
        let v = ulaw_decode(c);
        assert_eq!(v, ulaw_decode_computed(c));
        // Idempotent: a decoded value re-encodes to a code that decodes to the same value.
        assert_eq!(ulaw_decode(ulaw_encode(v)), v, "code {c:#04x}");
        // Sign-symmetric: flipping bit 7 negates the value.
        assert_eq!(ulaw_decode(c ^ 0x80), -v, "code {c:#04x}");
    }
    // Monotonic: 0x80..=0xFF decreases from +32124 to 0; the 255 distinct levels are ordered.
    let pos: Vec<i16> = (0x80..=0xFFu8).map(ulaw_decode).collect();
    assert!(pos.windows(2).all(|w| w[0] > w[1]));
    // Segment end points from G.711 Table 2a: step 8 in segment 0, 256 in segment 7 (x4 scale).
    assert_eq!(ulaw_decode(0xFE) - ulaw_decode(0xFF), 8);
    assert_eq!(ulaw_decode(0x80) - ulaw_decode(0x81), 1024);
}

#[test]
fn speech_round_trip_snr_matches_the_reference() {
    let pcm = speech_8k();
    let mut codes = Vec::new();
    encode_into(&pcm, &mut codes);
    let mut back = Vec::new();
    decode_into(&codes, &mut back);
    let snr = snr_db(&pcm, &back, 0);
    eprintln!("speech PCM -> ITU mu-law -> PCM SNR: {snr:.2} dB");
    assert!(
        (snr - 37.5).abs() < 0.1,
        "reference says 37.5 dB, got {snr:.2}"
    );
}
