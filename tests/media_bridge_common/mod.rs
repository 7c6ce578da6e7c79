//! Shared setup of the Twilio Media Streams tests: the real controller on 127.0.0.1:0 with
//! `[twilio]` configured against [`FakeTwilio`] (REST) and the OpenAI emulator (Realtime model
//! sessions), two media profiles, the fixture speech, and signal comparison helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use voxmachina::app;
use voxmachina::config::{Config, Secret};
use voxmachina::media::g711::ulaw_decode;
use voxmachina_emulator::phone::{Phone, PhoneConfig, stream_of_twiml};
use voxmachina_emulator::{Emulator, EmulatorConfig};

use crate::support::fake_twilio::{ACCOUNT_SID, FakeTwilio};
use crate::support::harness::{
    API_KEY, Harness, copy_prompts_with_closed_line, test_config, test_secrets,
};

/// The public base URL the controller is configured with (Twilio signs URLs under it).
pub const PUBLIC_URL: &str = "https://voice.test";
/// The stream URL in our TwiML.
pub const STREAM_URL: &str = "wss://voice.test/twilio/media";
/// Our Twilio number (outbound caller ID).
pub const FROM_NUMBER: &str = "+18005550100";
/// Dialed number of the `media_pcmu` profile.
pub const PCMU_LINE: &str = "+18005550201";
/// Dialed number of the `media_pcm16` profile.
pub const PCM16_LINE: &str = "+18005550202";
/// The caller.
pub const CALLER: &str = "+14155550123";

/// Profile text for a media line in `mode` dialed at `line`.
fn media_profile(mode: &str, line: &str) -> String {
    format!(
        r#"# Media bridge test line ({mode}).
priority = 30
greeting = "Greet the caller."
max_call_duration_secs = 60
[match]
dialed = ["{line}"]
[session]
audio = "{mode}"
[session.turn_detection]
type = "server_vad"
silence_duration_ms = 400
[escalation]
target = "tel:+14155550100"
dtmf_key = "0"
handoff_line = "Let me connect you with a colleague now."
[[after_call.extract]]
name = "confirmation_number"
regex = 'confirmation number is ([A-Z0-9]{{6}})'
"#
    )
}

/// Writes the fixture profiles (plus `closed`) and the two media profiles into `dir`.
pub fn write_prompts(dir: &Path) {
    copy_prompts_with_closed_line(dir);
    for (mode, line) in [("pcmu", PCMU_LINE), ("pcm16", PCM16_LINE)] {
        std::fs::write(
            dir.join(format!("media_{mode}.toml")),
            media_profile(mode, line),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("media_{mode}.md")),
            "You answer the media bridge test line.\n",
        )
        .unwrap();
    }
}

/// The controller, the emulator and the fake Twilio.
pub struct MediaHarness {
    pub h: Harness,
    pub twilio: FakeTwilio,
}

/// Starts everything; `adjust` may change the config (the `[twilio]` section is already set).
pub async fn start(adjust: impl FnOnce(&mut Config)) -> MediaHarness {
    start_with_secrets(adjust, |_| {}).await
}

/// Like [`start`]; `adjust_secrets` may change the secrets (the Twilio Auth Token is set).
pub async fn start_with_secrets(
    adjust: impl FnOnce(&mut Config),
    adjust_secrets: impl FnOnce(&mut voxmachina::config::Secrets),
) -> MediaHarness {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let twilio = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    write_prompts(&prompts);
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.twilio.account_sid = ACCOUNT_SID.to_string();
    config.twilio.public_url = PUBLIC_URL.to_string();
    config.twilio.api_base_url = twilio.base_url.clone();
    config.twilio.from_number = FROM_NUMBER.to_string();
    config.twilio.request_timeout_ms = 2_000;
    config.monitor.handoff_line_timeout_ms = 8_000;
    config.monitor.refer_outcome_window_ms = 3_000;
    adjust(&mut config);
    let mut secrets = test_secrets();
    secrets.twilio_auth_token = Some(twilio.auth_token());
    adjust_secrets(&mut secrets);
    let server = app::start(config, secrets).await.unwrap();
    MediaHarness {
        h: Harness {
            emulator,
            server,
            dir,
            http: reqwest::Client::new(),
        },
        twilio,
    }
}

impl MediaHarness {
    /// The voice webhook as we listen (`http://127.0.0.1:PORT/twilio/voice`).
    pub fn local(&self, path: &str) -> String {
        format!("{}{path}", self.h.server.base_url())
    }

    /// The media WebSocket as we listen.
    pub fn media_ws(&self) -> String {
        format!("ws://{}/twilio/media", self.h.server.addr)
    }

    /// A signed inbound voice webhook (signed over the public URL, as Twilio does behind our
    /// proxy); the status and the body.
    pub async fn voice_webhook(&self, call_sid: &str, from: &str, to: &str) -> (u16, String) {
        let params = self.twilio.voice_params(call_sid, from, to);
        let resp = self
            .twilio
            .post_webhook_signed_as(
                &self.local("/twilio/voice"),
                &format!("{PUBLIC_URL}/twilio/voice"),
                &params,
            )
            .await;
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A signed status callback.
    pub async fn status_callback(&self, params: &[(&str, &str)]) -> u16 {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.twilio
            .post_webhook_signed_as(
                &self.local("/twilio/status"),
                &format!("{PUBLIC_URL}/twilio/status"),
                &params,
            )
            .await
            .status()
            .as_u16()
    }

    /// Connects a phone for `call_sid` to the stream of `twiml` (its URL must be ours).
    pub async fn phone(&self, call_sid: &str, twiml: &str) -> Phone {
        let (url, parameters) = stream_of_twiml(twiml).expect("TwiML with a <Stream>");
        assert_eq!(url, STREAM_URL);
        Phone::connect(PhoneConfig {
            url: self.media_ws(),
            signed_url: url,
            auth_token: self.twilio.auth_token(),
            account_sid: ACCOUNT_SID.to_string(),
            call_sid: call_sid.to_string(),
            parameters,
        })
        .await
        .expect("signed upgrade accepted")
    }

    /// Waits for the `n`-th model session.
    pub async fn session(&self, n: usize) -> String {
        self.h
            .emulator
            .wait_model_session(n, Duration::from_secs(10))
            .await
            .expect("the bridge opened a Realtime session")
    }
}

/// `tests/fixtures/speech_8k.itu.ulaw`: 3 s of speech, μ-law 8 kHz.
pub fn fixture_speech() -> Vec<u8> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/speech_8k.itu.ulaw"
    ));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// μ-law bytes to PCM.
pub fn decode(ulaw: &[u8]) -> Vec<f64> {
    ulaw.iter().map(|&b| f64::from(ulaw_decode(b))).collect()
}

/// PCM16LE bytes to samples.
pub fn pcm16(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
        .collect()
}

/// Normalised correlation of `a` and `b` over their common length.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let ea: f64 = a.iter().map(|x| x * x).sum();
    let eb: f64 = b.iter().map(|x| x * x).sum();
    if ea == 0.0 || eb == 0.0 {
        return 0.0;
    }
    dot / (ea.sqrt() * eb.sqrt())
}

/// Best correlation of `got[lag..]` against `reference` for `lag` in `lags`, and that lag.
pub fn best_lag(reference: &[f64], got: &[f64], lags: std::ops::Range<usize>) -> (f64, usize) {
    lags.filter(|&l| l < got.len())
        .map(|l| (correlation(reference, &got[l..]), l))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

/// Every 3rd sample of 24 kHz `x` starting at `phase`: 8 kHz.
pub fn decimate3(x: &[f64], phase: usize) -> Vec<f64> {
    x.iter().skip(phase).step_by(3).copied().collect()
}

/// Index of the first sample with magnitude above `level`.
pub fn onset(x: &[f64], level: f64) -> Option<usize> {
    x.iter().position(|v| v.abs() > level)
}

/// A `CA…` sid for tests.
pub fn call_sid(n: u32) -> String {
    format!("CA{:032x}", 0xbeef_0000_u64 + u64::from(n))
}

/// The secret of the fake account.
pub fn auth_token(twilio: &FakeTwilio) -> Secret {
    twilio.auth_token()
}
