//! ×3 resampler: passband, stopband / image rejection, delay, streaming exactness, round trip.
//!
//! Stated tolerances (`src/media/resample.rs`): passband 0–3400 Hz within ±0.05 dB (design
//! ±0.026 dB), ≥ 65 dB attenuation at and above 4 kHz (design ≥ 67.3 dB), group delay ≤ 2 ms
//! (design 1.867–1.922 ms).

mod media_common;

use std::f64::consts::PI;

use media_common::{chunk_sizes, db, fit_sine, rms, sine, snr_db, speech_8k, telephone_band};
use voxmachina::media::resample::{DELAY_8K, DELAY_24K, DELAY_MICROS, Downsampler3, Upsampler3};

const AMP: f64 = 30_000.0;
/// Samples skipped at the start of an output before measuring (filter settling, > 144 taps).
const SETTLE_24K: usize = 300;
const SETTLE_8K: usize = 100;

fn up(x: &[i16]) -> Vec<i16> {
    let mut out = Vec::new();
    Upsampler3::new().process(x, &mut out);
    out
}

fn down(x: &[i16]) -> Vec<i16> {
    let mut out = Vec::new();
    Downsampler3::new().process(x, &mut out);
    out
}

fn passband_freqs() -> Vec<f64> {
    let mut f: Vec<f64> = (3..=34).map(|k| f64::from(k) * 100.0).collect(); // 300..3400 Hz
    f.extend([50.0, 3250.0, 3350.0, 3390.0]);
    f
}

#[test]
fn passband_is_flat_to_3400_hz() {
    let mut worst: f64 = 0.0;
    for f in passband_freqs() {
        let y = down(&sine(f, 24_000.0, 12_000, AMP));
        let (a, _, _) = fit_sine(&y, SETTLE_8K, f, 8_000.0);
        let g_down = db(a / AMP);
        let y = up(&sine(f, 8_000.0, 4_000, AMP));
        let (a, _, _) = fit_sine(&y, SETTLE_24K, f, 24_000.0);
        let g_up = db(a / AMP);
        assert!(
            g_down.abs() <= 0.05,
            "decimator gain at {f} Hz: {g_down:+.4} dB"
        );
        assert!(
            g_up.abs() <= 0.05,
            "interpolator gain at {f} Hz: {g_up:+.4} dB"
        );
        worst = worst.max(g_down.abs()).max(g_up.abs());
    }
    eprintln!("passband 50..3400 Hz: max |gain| {worst:.4} dB");
}

#[test]
fn decimator_rejects_4_to_12_khz_by_65_db() {
    // Reference: a 1 kHz passband tone of the same amplitude.
    let reference = rms(&down(&sine(1_000.0, 24_000.0, 12_000, AMP))[SETTLE_8K..]);
    let mut worst = f64::INFINITY;
    for k in 0..=79 {
        let f = 4_000.0 + 100.0 * f64::from(k); // 4.0 .. 11.9 kHz
        let y = down(&sine(f, 24_000.0, 12_000, AMP));
        // Everything left in the output is alias (plus rounding noise).
        let att = db(reference / rms(&y[SETTLE_8K..]));
        assert!(att >= 65.0, "tone at {f} Hz attenuated only {att:.1} dB");
        worst = worst.min(att);
    }
    eprintln!("decimator: tones 4.0..11.9 kHz attenuated >= {worst:.1} dB");
}

#[test]
fn interpolator_images_are_65_db_down() {
    // An 8 kHz tone f has images at 8k±f and 16k±f (all ≥ 4 kHz). After removing the fitted
    // tone at f, the residual is images plus rounding noise.
    let mut worst = f64::INFINITY;
    for k in 1..=39 {
        let f = 100.0 * f64::from(k); // 100..3900 Hz (the images of 3.9 kHz lie at 4.1 kHz)
        let x = sine(f, 8_000.0, 4_000, AMP);
        let y = up(&x);
        let (_, _, residual) = fit_sine(&y, SETTLE_24K, f, 24_000.0);
        let rejection = db((AMP / 2f64.sqrt()) / residual);
        assert!(
            rejection >= 65.0,
            "images of {f} Hz only {rejection:.1} dB down"
        );
        worst = worst.min(rejection);
    }
    eprintln!("interpolator: images >= {worst:.1} dB below the tone");
}

#[test]
fn nominal_delay_is_the_impulse_peak() {
    assert_eq!(DELAY_24K, 45);
    assert_eq!(DELAY_8K, 15);
    assert_eq!(DELAY_MICROS, 1_875);
    let mut x = vec![0i16; 100];
    x[10] = 30_000;
    let y = up(&x);
    let peak = (0..y.len()).max_by_key(|&i| y[i].unsigned_abs()).unwrap();
    assert_eq!(peak, 3 * 10 + DELAY_24K);
    let mut x = vec![0i16; 600];
    x[30] = 30_000;
    let y = down(&x);
    let peak = (0..y.len()).max_by_key(|&i| y[i].unsigned_abs()).unwrap();
    assert_eq!(peak, 10 + DELAY_8K);
}

/// Group delay −dφ/dω from the fitted phases of two tones 20 Hz apart, in ms.
fn group_delay_ms(f: f64, run: impl Fn(f64) -> (f64, f64)) -> f64 {
    let df = 20.0;
    let (p1, _) = run(f);
    let (p2, _) = run(f + df);
    let mut d = p1 - p2;
    while d > PI {
        d -= 2.0 * PI;
    }
    while d <= -PI {
        d += 2.0 * PI;
    }
    d / (2.0 * PI * df) * 1e3
}

#[test]
fn group_delay_is_under_2_ms_across_the_passband() {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for k in 3..=33 {
        let f = 100.0 * f64::from(k);
        let g_up = group_delay_ms(f, |f| {
            let (a, p, _) = fit_sine(&up(&sine(f, 8_000.0, 4_000, AMP)), SETTLE_24K, f, 24_000.0);
            (p, a)
        });
        let g_down = group_delay_ms(f, |f| {
            let (a, p, _) = fit_sine(
                &down(&sine(f, 24_000.0, 12_000, AMP)),
                SETTLE_8K,
                f,
                8_000.0,
            );
            (p, a)
        });
        for g in [g_up, g_down] {
            assert!((1.8..=2.0).contains(&g), "group delay at {f} Hz: {g:.3} ms");
            lo = lo.min(g);
            hi = hi.max(g);
        }
    }
    eprintln!("group delay 300..3300 Hz: {lo:.3}..{hi:.3} ms");
}

#[test]
fn chunked_processing_equals_one_shot() {
    let x8 = speech_8k();
    let whole_up = up(&x8);
    for seed in [1, 7, 42] {
        let mut u = Upsampler3::new();
        let mut out = Vec::new();
        let mut at = 0;
        for n in chunk_sizes(x8.len(), 400, seed) {
            u.process(&x8[at..at + n], &mut out);
            at += n;
        }
        assert!(out == whole_up, "upsampler, seed {seed}");
    }
    // 20 ms frames, the production case.
    let mut u = Upsampler3::new();
    let mut out = Vec::new();
    for frame in x8.chunks(160) {
        u.process(frame, &mut out);
    }
    assert!(out == whole_up);

    let whole_down = down(&whole_up);
    assert_eq!(whole_down.len(), x8.len());
    for seed in [3, 9, 1234] {
        let mut d = Downsampler3::new();
        let mut out = Vec::new();
        let mut at = 0;
        for n in chunk_sizes(whole_up.len(), 1000, seed) {
            d.process(&whole_up[at..at + n], &mut out);
            at += n;
        }
        assert!(out == whole_down, "decimator, seed {seed}");
    }
    // Empty and single-sample calls are fine.
    let mut d = Downsampler3::new();
    let mut out = Vec::new();
    d.process(&[], &mut out);
    for &s in &whole_up[..10] {
        d.process(&[s], &mut out);
    }
    assert_eq!(out[..], whole_down[..4]);
}

#[test]
fn round_trip_snr_on_the_speech_fixture() {
    let x8 = speech_8k();
    let round_trip = |x: &[i16]| {
        let (mut u, mut d) = (Upsampler3::new(), Downsampler3::new());
        let (mut y24, mut y8) = (Vec::new(), Vec::new());
        for frame in x.chunks(160) {
            y24.clear();
            u.process(frame, &mut y24);
            d.process(&y24, &mut y8);
        }
        y8
    };
    let full = snr_db(&x8, &round_trip(&x8), 2 * DELAY_8K);
    let band = telephone_band(&x8);
    let in_band = snr_db(&band, &round_trip(&band), 2 * DELAY_8K);
    eprintln!(
        "round trip 8k->24k->8k on speech_8k (delay {} samples): full band {full:.1} dB, \
         telephone band (<= 3.3 kHz) {in_band:.1} dB",
        2 * DELAY_8K
    );
    // The clip has -20.5 dB of its energy above 3.4 kHz; the spec's 3.4..4 kHz transition band
    // removes most of it, which bounds the full-band figure. In band, only ripple and rounding
    // remain.
    assert!(full >= 24.0, "full-band round-trip SNR {full:.1} dB");
    assert!(
        in_band >= 40.0,
        "telephone-band round-trip SNR {in_band:.1} dB"
    );
}

#[test]
fn full_scale_input_saturates_without_overflow() {
    // Full-scale square waves and alternating ±32768 (debug builds check overflow).
    let mut x: Vec<i16> = (0..2_000)
        .map(|i| if (i / 7) % 2 == 0 { i16::MAX } else { i16::MIN })
        .collect();
    x.extend((0..2_000).map(|i| if i % 2 == 0 { i16::MAX } else { i16::MIN }));
    let y = up(&x);
    assert_eq!(y.len(), 3 * x.len());
    assert!(y.contains(&i16::MAX) && y.contains(&i16::MIN));
    let z = down(&y);
    assert_eq!(z.len(), x.len());
}
