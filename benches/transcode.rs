//! Transcoding core benchmarks: the per-20 ms-frame paths in both directions, their parts, and
//! the resampler decision (our polyphase FIR vs rubato).
//!
//! Run: `cargo bench --bench transcode` (all), or add a filter such as `-- frame/`.
//! After the run it prints (from criterion's estimates) ns/frame for each direction and
//! "real-time calls per core" = 20 ms / (inbound + outbound ns per frame); before it, it prints
//! the measured filter quality of each rubato configuration next to ours.
//! Results and the decision are recorded in `docs/performance.md`.

#[path = "../tests/media_common/mod.rs"]
mod media_common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::Criterion;
use media_common::{db, fit_sine, read_fixture, rms, sine};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, Fft, FixedAsync, FixedSync, Resampler, SincInterpolationParameters,
    SincInterpolationType, WindowFunction,
};
use voxmachina::media::g711::{decode_into, encode_into, ulaw_encode_computed};
use voxmachina::media::resample::{Downsampler3, Upsampler3};
use voxmachina::media::{InboundTranscoder, OutboundTranscoder, UlawFramer};

/// Twilio frames (base64 μ-law, 160 bytes) and OpenAI deltas (base64 PCM16LE 24 kHz, 480
/// samples) made from the 3 s speech fixture: 150 of each.
struct Fixture {
    ulaw: Vec<u8>,
    pcm8: Vec<i16>,
    pcm24: Vec<i16>,
    twilio_b64: Vec<String>,
    openai_b64: Vec<String>,
}

fn fixture() -> Fixture {
    let ulaw = read_fixture("speech_8k.itu.ulaw");
    let mut pcm8 = Vec::new();
    decode_into(&ulaw, &mut pcm8);
    let mut pcm24 = Vec::new();
    Upsampler3::new().process(&pcm8, &mut pcm24);
    let twilio_b64 = ulaw.chunks(160).map(|f| STANDARD.encode(f)).collect();
    let openai_b64 = pcm24
        .chunks(480)
        .map(|c| STANDARD.encode(c.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()))
        .collect();
    Fixture {
        ulaw,
        pcm8,
        pcm24,
        twilio_b64,
        openai_b64,
    }
}

fn bench_frames(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("frame");
    let n = fx.twilio_b64.len();

    let mut t = InboundTranscoder::new();
    let mut i = 0;
    g.bench_function("inbound_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(t.frame(black_box(&fx.twilio_b64[i])).unwrap().len())
        })
    });

    let mut t = OutboundTranscoder::new();
    let mut i = 0;
    g.bench_function("outbound_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            t.push(black_box(&fx.openai_b64[i])).unwrap();
            let mut len = 0;
            while let Some(f) = t.next_frame() {
                len += f.len();
            }
            black_box(len)
        })
    });

    let mut f = UlawFramer::new();
    let mut i = 0;
    g.bench_function("pcmu_framer_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            f.push(black_box(&fx.twilio_b64[i])).unwrap();
            let mut len = 0;
            while let Some(fr) = f.next_frame() {
                len += fr.len();
            }
            black_box(len)
        })
    });
    g.finish();
}

fn bench_parts(c: &mut Criterion, fx: &Fixture) {
    let frame8 = &fx.pcm8[8000..8160];
    let frame_ulaw = &fx.ulaw[8000..8160];
    let frame24 = &fx.pcm24[24_000..24_480];

    let mut g = c.benchmark_group("g711");
    let mut out = Vec::with_capacity(160);
    g.bench_function("encode_160_table", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(frame8), &mut out);
            black_box(out[0])
        })
    });
    g.bench_function("encode_160_computed", |b| {
        b.iter(|| {
            out.clear();
            out.extend(black_box(frame8).iter().map(|&s| ulaw_encode_computed(s)));
            black_box(out[0])
        })
    });
    let mut pcm = Vec::with_capacity(160);
    g.bench_function("decode_160", |b| {
        b.iter(|| {
            pcm.clear();
            decode_into(black_box(frame_ulaw), &mut pcm);
            black_box(pcm[0])
        })
    });
    g.finish();

    let mut g = c.benchmark_group("base64");
    let b64_216 = STANDARD.encode(frame_ulaw);
    let bytes_960: Vec<u8> = frame24.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("decode_216_chars", |b| {
        b.iter(|| {
            buf.clear();
            STANDARD.decode_vec(black_box(&b64_216), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    let mut s = String::with_capacity(2048);
    g.bench_function("encode_960_bytes", |b| {
        b.iter(|| {
            s.clear();
            STANDARD.encode_string(black_box(&bytes_960), &mut s);
            black_box(s.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("resample");
    let mut up = Upsampler3::new();
    let mut out = Vec::with_capacity(480);
    g.bench_function("up_160_ours", |b| {
        b.iter(|| {
            out.clear();
            up.process(black_box(frame8), &mut out);
            black_box(out[0])
        })
    });
    let mut down = Downsampler3::new();
    g.bench_function("down_480_ours", |b| {
        b.iter(|| {
            out.clear();
            down.process(black_box(frame24), &mut out);
            black_box(out[0])
        })
    });
    for (name, mut r) in rubato_configs() {
        let input: &[i16] = if r.up { frame8 } else { frame24 };
        let id = format!(
            "{}_{}_rubato_{name}",
            if r.up { "up" } else { "down" },
            input.len()
        );
        g.bench_function(id, |b| {
            b.iter(|| {
                out.clear();
                r.process(black_box(input), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// A rubato resampler behind the same i16-in/i16-out, 20 ms-frame interface as ours
/// (conversion to and from f32 included, as our pipeline would need it).
struct RubatoMono {
    up: bool,
    r: Box<dyn Resampler<f32>>,
    inbuf: Vec<f32>,
    outbuf: Vec<f32>,
}

impl RubatoMono {
    fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        assert_eq!(input.len(), self.r.input_frames_next());
        self.inbuf.clear();
        self.inbuf
            .extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        let n_out = self.r.output_frames_next();
        self.outbuf.resize(n_out, 0.0);
        let a = InterleavedSlice::new(&self.inbuf[..], 1, input.len()).unwrap();
        let mut b = InterleavedSlice::new_mut(&mut self.outbuf[..], 1, n_out).unwrap();
        let (_, n) = self.r.process_into_buffer(&a, &mut b, None).unwrap();
        out.extend(
            self.outbuf[..n]
                .iter()
                .map(|&v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
        );
    }
}

/// rubato configurations compared with ours: the synchronous FFT resampler on 20 ms blocks
/// (its natural choice for a fixed ratio), and the asynchronous sinc resampler at two lengths.
fn rubato_configs() -> Vec<(&'static str, RubatoMono)> {
    let mk = |up: bool, r: Box<dyn Resampler<f32>>| RubatoMono {
        up,
        r,
        inbuf: Vec::with_capacity(480),
        outbuf: Vec::with_capacity(2048),
    };
    let sinc = |len: usize| {
        SincInterpolationParameters::new(len, WindowFunction::BlackmanHarris2)
            .oversampling_factor(192) // a multiple of 3: ratio-3 phases fall on table points
            .interpolation(SincInterpolationType::Linear)
    };
    let mut v: Vec<(&'static str, RubatoMono)> = vec![
        (
            "fft",
            mk(
                true,
                Box::new(Fft::<f32>::new(8000, 24000, 160, 1, FixedSync::Both).unwrap()),
            ),
        ),
        (
            "fft",
            mk(
                false,
                Box::new(Fft::<f32>::new(24000, 8000, 480, 1, FixedSync::Both).unwrap()),
            ),
        ),
    ];
    for (name, len) in [("sinc64", 64), ("sinc128", 128)] {
        let p = sinc(len);
        v.push((
            name,
            mk(
                true,
                Box::new(Async::<f32>::new_sinc(3.0, 1.0, &p, 160, 1, FixedAsync::Input).unwrap()),
            ),
        ));
        v.push((
            name,
            mk(
                false,
                Box::new(
                    Async::<f32>::new_sinc(1.0 / 3.0, 1.0, &p, 480, 1, FixedAsync::Input).unwrap(),
                ),
            ),
        ));
    }
    v
}

/// Whole-signal processing in 20 ms frames (input is padded to whole frames with zeros).
fn run_frames(p: &mut dyn FnMut(&[i16], &mut Vec<i16>), x: &[i16], frame: usize) -> Vec<i16> {
    let mut out = Vec::new();
    let mut padded = x.to_vec();
    padded.resize(x.len().div_ceil(frame) * frame, 0);
    for f in padded.chunks(frame) {
        p(f, &mut out);
    }
    out
}

/// Measured quality of one direction: (delay ms from the impulse peak, passband max |gain| dB
/// over 300–3400 Hz, worst stopband/image rejection dB at ≥ 4 kHz).
fn quality(
    up: bool,
    p: &mut dyn FnMut(&[i16], &mut Vec<i16>),
    reset: &mut dyn FnMut(),
) -> (f64, f64, f64) {
    let (rate_in, rate_out, frame) = if up {
        (8_000.0, 24_000.0, 160)
    } else {
        (24_000.0, 8_000.0, 480)
    };
    let n_in = if up { 8_000 } else { 24_000 };
    let settle = (rate_out * 0.03) as usize; // 30 ms
    let amp = 20_000.0;
    // Delay: impulse (at a sample that lands on the output grid) → output peak.
    reset();
    let mut x = vec![0i16; n_in / 4];
    let at = if up { 200 } else { 600 };
    x[at] = 30_000;
    let y = run_frames(p, &x, frame);
    let peak = (0..y.len()).max_by_key(|&i| y[i].unsigned_abs()).unwrap();
    let delay_ms = (peak as f64 / rate_out - at as f64 / rate_in) * 1e3;
    let mut pass: f64 = 0.0;
    for k in 3..=34 {
        let f = 100.0 * f64::from(k);
        reset();
        let y = run_frames(p, &sine(f, rate_in, n_in, amp), frame);
        let end = (n_in * rate_out as usize / rate_in as usize).min(y.len());
        let (a, _, _) = fit_sine(&y[..end], settle, f, rate_out);
        pass = pass.max(db(a / amp).abs());
    }
    let mut stop = f64::INFINITY;
    if up {
        for k in 1..=39 {
            let f = 100.0 * f64::from(k);
            reset();
            let y = run_frames(p, &sine(f, rate_in, n_in, amp), frame);
            let (_, _, res) = fit_sine(&y[..(3 * n_in).min(y.len())], settle, f, rate_out);
            stop = stop.min(db(amp / 2f64.sqrt() / res));
        }
    } else {
        for k in 0..=79 {
            let f = 4_000.0 + 100.0 * f64::from(k);
            reset();
            let y = run_frames(p, &sine(f, rate_in, n_in, amp), frame);
            stop = stop.min(db(amp
                / 2f64.sqrt()
                / rms(&y[settle..(n_in / 3).min(y.len())])));
        }
    }
    (delay_ms, pass, stop)
}

fn print_quality() {
    println!("\nresampler quality (measured with tones, 20 ms frames):");
    println!(
        "  {:<18} {:>9} {:>14} {:>22}",
        "resampler", "delay ms", "passband ±dB", "rejection >= 4 kHz dB"
    );
    let mut up = Upsampler3::new();
    let (d, p, s) = quality(true, &mut |x, o| up.process(x, o), &mut || {});
    println!("  {:<18} {d:>9.3} {p:>14.3} {s:>22.1}", "up ours");
    let mut down = Downsampler3::new();
    let (d, p, s) = quality(false, &mut |x, o| down.process(x, o), &mut || {});
    println!("  {:<18} {d:>9.3} {p:>14.3} {s:>22.1}", "down ours");
    for (name, mut r) in rubato_configs() {
        let dir = if r.up { "up" } else { "down" };
        let up_dir = r.up;
        let cell = std::cell::RefCell::new(&mut r);
        let (d, p, s) = quality(
            up_dir,
            &mut |x, o| cell.borrow_mut().process(x, o),
            &mut || cell.borrow_mut().r.reset(),
        );
        println!(
            "  {:<18} {d:>9.3} {p:>14.3} {s:>22.1}",
            format!("{dir} rubato {name}")
        );
    }
    // `ours` keeps state between quality runs; the settle window covers the filter memory.
    let _ = (&mut up, &mut down);
}

/// Mean ns of a finished criterion benchmark, from `target/criterion/<id>/new/estimates.json`.
fn mean_ns(id: &str) -> Option<f64> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let path = target.join("criterion").join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn print_summary() {
    let (Some(inb), Some(out)) = (
        mean_ns("frame/inbound_20ms"),
        mean_ns("frame/outbound_20ms"),
    ) else {
        return;
    };
    println!("\nper 20 ms frame: inbound {inb:.0} ns, outbound {out:.0} ns");
    println!(
        "real-time calls per core = 20 ms / (inbound + outbound) = {:.0}",
        20e6 / (inb + out)
    );
    if let Some(f) = mean_ns("frame/pcmu_framer_20ms") {
        println!("pcmu framer: {f:.0} ns per 20 ms frame");
    }
}

fn main() {
    let fx = fixture();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    if std::env::args().any(|a| a == "--bench") {
        print_quality();
    }
    bench_frames(&mut c, &fx);
    bench_parts(&mut c, &fx);
    c.final_summary();
    print_summary();
}
