//! Helpers shared by the `media_*` integration tests (and `benches/transcode.rs`): fixtures,
//! tone generation, sine fitting and SNR. Not every user needs every helper.
#![allow(dead_code)]

use std::f64::consts::PI;
use std::path::PathBuf;

/// `tests/fixtures/` (see its README for provenance, licence and md5 sums).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

pub fn read_fixture(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `speech_8k.wav`: 3 s of speech, 8 kHz mono PCM16LE, 44-byte RIFF header, 24 000 samples.
pub fn speech_8k() -> Vec<i16> {
    let wav = read_fixture("speech_8k.wav");
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(&wav[36..40], b"data");
    let pcm: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pcm.len(), 24_000);
    pcm
}

/// `amp · sin(2π f n / rate)` rounded to i16.
pub fn sine(freq: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * PI * freq * i as f64 / rate).sin()).round() as i16)
        .collect()
}

/// Least-squares fit of `a·sin(ωt) + b·cos(ωt)` to `y[start..]`, where sample `i` is at time
/// `i / rate`. Returns (amplitude, phase φ such that y ≈ amp·sin(ωt + φ), residual RMS).
pub fn fit_sine(y: &[i16], start: usize, freq: f64, rate: f64) -> (f64, f64, f64) {
    let w = 2.0 * PI * freq / rate;
    let (mut ss, mut cc, mut sc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in y.iter().enumerate().skip(start) {
        let (s, c) = (w * i as f64).sin_cos();
        let v = f64::from(v);
        ss += s * s;
        cc += c * c;
        sc += s * c;
        ys += v * s;
        yc += v * c;
    }
    let det = ss * cc - sc * sc;
    let a = (ys * cc - yc * sc) / det;
    let b = (yc * ss - ys * sc) / det;
    let mut res = 0.0;
    for (i, &v) in y.iter().enumerate().skip(start) {
        let (s, c) = (w * i as f64).sin_cos();
        let e = f64::from(v) - a * s - b * c;
        res += e * e;
    }
    let n = (y.len() - start) as f64;
    ((a * a + b * b).sqrt(), b.atan2(a), (res / n).sqrt())
}

pub fn rms(y: &[i16]) -> f64 {
    (y.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / y.len() as f64).sqrt()
}

pub fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// SNR (dB) of `test` against `reference`, with `test` delayed by `delay` samples:
/// compares `reference[i]` with `test[i + delay]` over the overlap.
pub fn snr_db(reference: &[i16], test: &[i16], delay: usize) -> f64 {
    let n = reference.len().min(test.len() - delay);
    let (mut sig, mut err) = (0.0, 0.0);
    for i in 0..n {
        let r = f64::from(reference[i]);
        sig += r * r;
        err += (r - f64::from(test[i + delay])).powi(2);
    }
    10.0 * (sig / err).log10()
}

/// The fixture speech limited to the telephone band: a zero-phase, 1601-tap Blackman windowed-
/// sinc low-pass at 3300 Hz (8 kHz rate; transition ≈ ±30 Hz, stopband < -70 dB), applied in
/// f64 and rounded to i16. Used to separate what the resampler does in band from the energy the
/// clip has between 3.4 and 4 kHz, which the spec requires the filter to remove.
pub fn telephone_band(x: &[i16]) -> Vec<i16> {
    const N: usize = 1601;
    let fc = 3300.0 / 8000.0;
    let m = (N - 1) as f64;
    let taps: Vec<f64> = (0..N)
        .map(|k| {
            let t = k as f64 - m / 2.0;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                (2.0 * PI * fc * t).sin() / (PI * t)
            };
            let w = 0.42 - 0.5 * (2.0 * PI * k as f64 / m).cos()
                + 0.08 * (4.0 * PI * k as f64 / m).cos();
            sinc * w
        })
        .collect();
    let half = (N - 1) / 2;
    (0..x.len())
        .map(|i| {
            let mut acc = 0.0;
            for (k, &t) in taps.iter().enumerate() {
                let j = i as isize + half as isize - k as isize;
                if j >= 0 && (j as usize) < x.len() {
                    acc += t * f64::from(x[j as usize]);
                }
            }
            acc.round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Deterministic chunk sizes (xorshift) in `1..=max`, covering `total` exactly.
pub fn chunk_sizes(total: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut left = total;
    let mut out = Vec::new();
    while left > 0 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (1 + (s % max as u64) as usize).min(left);
        out.push(n);
        left -= n;
    }
    out
}
