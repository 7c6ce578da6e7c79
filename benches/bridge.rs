//! Media bridge benchmarks.
//!
//! 1. **Per-message processing** (criterion): the CPU work of the bridge for one message, as
//!    `bridge::stream` does it, without sockets: a Twilio `media` text frame → peek parse →
//!    [`Inbound`] → `input_audio_buffer.append` text; a model `response.output_audio.delta`
//!    text → peek parse → [`Outbound`] → 160-byte Twilio `media` texts + mark bookkeeping and
//!    `mark` text. Both audio modes; deltas of 20 ms and 100 ms.
//! 2. **End to end over sockets**: the real controller, the OpenAI emulator (Realtime model
//!    sessions) and `CALLS` simulated Twilio phones on 127.0.0.1, each speaking the fixture
//!    every 7 s and hearing the agent's replies, for `SECS` seconds per mode. Reports the bridge
//!    time measured inside the bridge (a message read → the resulting message(s) flushed to the
//!    other socket) over all calls (p50, p99, p99.9, max, from the process-wide histograms of
//!    `bridge::stats`), and the worst per-call p99 from the call records.
//!
//! Run: `cargo bench --bench bridge` (env `CALLS`, default 20; `SECS`, default 10; set
//! `E2E=0` to skip part 2). Results are in `docs/performance.md` ("Media bridge").

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use criterion::Criterion;
use voxmachina::app;
use voxmachina::bridge::audio::{Inbound, MediaFrameWriter, Outbound};
use voxmachina::bridge::events::{ModelPeek, TwilioPeek};
use voxmachina::bridge::playback::Playback;
use voxmachina::bridge::stats::{Direction, process_histogram};
use voxmachina::calls::record::BridgeStats;
use voxmachina::config::{Config, Secret, Secrets};
use voxmachina::prompts::MediaAudio;
use voxmachina::twilio::media::ServerMessage;
use voxmachina_emulator::phone::{Phone, PhoneConfig, stream_of_twiml};
use voxmachina_emulator::sideband::agent_audio;
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/speech_8k.itu.ulaw"
);
const STREAM_SID: &str = "MZ0123456789abcdef0123456789abcdef";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Twilio `media` texts made from the fixture (150 frames of 20 ms).
fn twilio_frames(ulaw: &[u8]) -> Vec<String> {
    ulaw.chunks(160)
        .enumerate()
        .map(|(i, f)| {
            format!(
                r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{}"}},"streamSid":"{STREAM_SID}"}}"#,
                i + 2,
                i + 1,
                i * 20,
                STANDARD.encode(f)
            )
        })
        .collect()
}

/// `response.output_audio.delta` texts of `ms` each, in the mode's format (the emulator's test
/// signal, 3 s).
fn model_deltas(mode: MediaAudio, ms: usize) -> Vec<String> {
    let (format, per_ms) = match mode {
        MediaAudio::Pcmu => ("audio/pcmu", 8),
        MediaAudio::Pcm16 => ("audio/pcm", 48),
    };
    agent_audio(format, 3_000)
        .chunks(ms * per_ms)
        .map(|c| {
            format!(
                r#"{{"type":"response.output_audio.delta","event_id":"event_1","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{}"}}"#,
                STANDARD.encode(c)
            )
        })
        .collect()
}

fn bench_processing(c: &mut Criterion, ulaw: &[u8]) {
    let frames = twilio_frames(ulaw);
    let mut g = c.benchmark_group("bridge");
    for mode in [MediaAudio::Pcmu, MediaAudio::Pcm16] {
        let mut inbound = Inbound::new(mode);
        let mut out = String::new();
        let mut i = 0;
        g.bench_function(format!("inbound_{}", mode.as_str()), |b| {
            b.iter(|| {
                let text = &frames[i % frames.len()];
                i += 1;
                let peek = TwilioPeek::parse(black_box(text)).unwrap();
                let payload = &peek.media.as_ref().unwrap().payload;
                let n = inbound.append_event(payload, &mut out).unwrap();
                black_box((n, std::mem::take(&mut out)))
            })
        });
        for ms in [20, 100] {
            let deltas = model_deltas(mode, ms);
            let mut outbound = Outbound::new(mode);
            let writer = MediaFrameWriter::new(STREAM_SID);
            let mut playback = Playback::new();
            let mut i = 0;
            let t0 = Instant::now();
            g.bench_function(format!("outbound_{}_{ms}ms", mode.as_str()), |b| {
                b.iter(|| {
                    let text = &deltas[i % deltas.len()];
                    i += 1;
                    let peek = ModelPeek::parse(black_box(text)).unwrap();
                    outbound.push(peek.delta.as_deref().unwrap()).unwrap();
                    let mut texts = Vec::with_capacity(6);
                    while let Some(f) = outbound.next_frame() {
                        texts.push(writer.frame(f));
                    }
                    let (name, _) =
                        playback.on_audio_sent("resp_1", "item_1", 20 * texts.len() as u32, t0);
                    texts.push(ServerMessage::mark(STREAM_SID, name).to_json());
                    if i % 64 == 0 {
                        // Keep the mark queue short, as Twilio's echoes do.
                        playback.interrupt(t0);
                    }
                    black_box(texts)
                })
            });
        }
    }
    g.finish();
}

async fn e2e(mode: &str, calls: usize, secs: u64, speech: Arc<Vec<u8>>) {
    let api_key = "sk-bench";
    let emulator = Emulator::start(EmulatorConfig {
        api_key: api_key.into(),
    })
    .await
    .unwrap();
    for _ in 0..calls {
        let mut s = Script::new()
            .greeting("Hello, thanks for calling Example Corp.")
            .reply("Sure, I can help you with that right away.");
        for _ in 0..(secs / 7 + 2) {
            s = s.caller("Hello, thanks for calling. How can I help you today?");
        }
        emulator.push_model_script(s);
    }
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("default.toml"),
        format!(
            "default = true\ngreeting = \"Greet.\"\n[session]\naudio = \"{mode}\"\n[session.turn_detection]\ntype = \"server_vad\"\nsilence_duration_ms = 400\n"
        ),
    )
    .unwrap();
    std::fs::write(prompts.join("default.md"), "Bench line.\n").unwrap();
    let token = Secret::new("bench-auth-token");
    let account = "AC00000000000000000000000000000b0b";
    let public = "https://bench.invalid";
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.openai.base_url = emulator.rest_base_url();
    config.openai.sideband_url = emulator.sideband_url();
    config.prompts.dir = prompts;
    config.store.sqlite_path = dir.path().join("bench.db");
    config.twilio.account_sid = account.into();
    config.twilio.public_url = public.into();
    config.twilio.api_base_url = "http://127.0.0.1:9".into();
    config.logging.level = "warn".into();
    let secrets = Secrets {
        openai_api_key: Secret::new(api_key),
        webhook_secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        admin_token: None,
        twilio_auth_token: Some(token.clone()),
        twilio_webhook_shared_key: None,
        hubspot_token: None,
    };
    let server = app::start(config, secrets).await.unwrap();
    process_histogram(Direction::Inbound).reset();
    process_histogram(Direction::Outbound).reset();
    let http = reqwest::Client::new();
    let mut phones = Vec::new();
    let mut sids = Vec::new();
    for i in 0..calls {
        let sid = format!("CA{:032x}", 0xb0b0_0000_u64 + i as u64);
        let params: Vec<(String, String)> = [
            ("AccountSid", account),
            ("CallSid", sid.as_str()),
            ("From", "+14155550123"),
            ("To", "+18005550000"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let sig =
            voxmachina::twilio::signature::sign(&token, &format!("{public}/twilio/voice"), &params);
        let twiml = http
            .post(format!("{}/twilio/voice", server.base_url()))
            .header("X-Twilio-Signature", sig)
            .form(&params)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (url, parameters) = stream_of_twiml(&twiml).expect("connect TwiML");
        let phone = Phone::connect(PhoneConfig {
            url: format!("ws://{}/twilio/media", server.addr),
            signed_url: url,
            auth_token: token.clone(),
            account_sid: account.into(),
            call_sid: sid.clone(),
            parameters,
        })
        .await
        .unwrap();
        phones.push(phone);
        sids.push(sid);
    }
    let started = Instant::now();
    let mut next_turn = Duration::from_millis(2_000);
    while started.elapsed() < Duration::from_secs(secs) {
        if started.elapsed() >= next_turn {
            for p in &phones {
                p.say(&speech);
            }
            next_turn += Duration::from_secs(7);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in &phones {
        p.stop();
    }
    let store = server.state.store.clone();
    let mut stats: Vec<BridgeStats> = Vec::new();
    for sid in &sids {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = store
                .get_call(sid)
                .await
                .unwrap()
                .and_then(|r| r.media)
                .and_then(|m| m.stats)
            {
                stats.push(s);
                break;
            }
            assert!(Instant::now() < deadline, "call {sid} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let sum = |f: fn(&BridgeStats) -> u64| stats.iter().map(f).sum::<u64>();
    let worst = |f: fn(&BridgeStats) -> u64| stats.iter().map(f).max().unwrap_or(0);
    println!(
        "e2e {mode}: {calls} calls × {secs} s — frames in {}, appends {}, deltas {}, frames out {}, barge-ins {}, malformed {}",
        sum(|s| s.frames_in),
        sum(|s| s.appends),
        sum(|s| s.deltas),
        sum(|s| s.frames_out),
        sum(|s| s.barge_ins),
        sum(|s| s.malformed),
    );
    for (name, dir, per_call) in [
        (
            "inbound  (media → append)",
            Direction::Inbound,
            worst(|s| s.inbound_p99_us),
        ),
        (
            "outbound (delta → frames)",
            Direction::Outbound,
            worst(|s| s.outbound_p99_us),
        ),
    ] {
        let h = process_histogram(dir);
        println!(
            "  {name}: n {}  p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs  (worst per-call p99 {per_call} µs)",
            h.count(),
            h.quantile_us(0.5),
            h.quantile_us(0.99),
            h.quantile_us(0.999),
            h.quantile_us(1.0),
        );
    }
    server.shutdown(Duration::from_secs(2)).await;
}

fn main() {
    let ulaw =
        std::fs::read(FIXTURE).expect("the speech fixture tests/fixtures/speech_8k.itu.ulaw");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_processing(&mut c, &ulaw);
    c.final_summary();
    let bench_run = std::env::args().any(|a| a == "--bench");
    if bench_run && env_or("E2E", 1) == 1 {
        let calls = env_or("CALLS", 20) as usize;
        let secs = env_or("SECS", 10);
        let speech = Arc::new(ulaw);
        let rt = tokio::runtime::Runtime::new().unwrap();
        for mode in ["pcmu", "pcm16"] {
            rt.block_on(e2e(mode, calls, secs, speech.clone()));
        }
    }
}
