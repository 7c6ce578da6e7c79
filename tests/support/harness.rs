//! Starts the real controller on 127.0.0.1:0 against the local OpenAI SIP emulator, with a real
//! SQLite file in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use voxmachina::app::{self, Running};
use voxmachina::calls::record::{CallEvent, CallRecord, TranscriptLine};
use voxmachina::config::{Config, Secret, Secrets};
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, Script};

/// Test API key the emulator expects.
pub const API_KEY: &str = "sk-test-voxmachina";
/// Admin token configured on the controller.
pub const ADMIN_TOKEN: &str = "admin-test-token";

/// The webhook signing secret used by tests.
pub fn webhook_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"voxmachina-test-webhook-secret-32b")
    )
}

/// Directory with the test prompt profiles.
pub fn fixture_prompts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts")
}

/// Copies the fixture profiles to `dest` and adds `closed.toml`: a line whose only opening window
/// is twelve hours away from now (UTC), so every call to +18005550122 meets closed hours.
pub fn copy_prompts_with_closed_line(dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(fixture_prompts()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
    }
    use chrono::{Datelike, Timelike};
    let opens = chrono::Utc::now() + chrono::Duration::hours(12);
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [opens.weekday().num_days_from_monday() as usize];
    let hour = opens.hour().min(22);
    std::fs::write(
        dest.join("closed.toml"),
        format!(
            "# Open one hour, twelve hours from now: closed during the test.\n[match]\ndialed = [\"+18005550122\"]\n[escalation]\nenabled = false\n[reject.hours]\ntimezone = \"UTC\"\nopen = [\"{day} {hour:02}:00-{:02}:00\"]\nstatus = 480\n",
            hour + 1
        ),
    )
    .unwrap();
    std::fs::write(dest.join("closed.md"), "You answer the closed test line.\n").unwrap();
}

/// A controller plus its emulator.
pub struct Harness {
    pub emulator: Emulator,
    pub server: Running,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// Test configuration pointing at `emulator`, with short timers.
pub fn test_config(emulator: &Emulator, dir: &Path, prompts: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.openai.base_url = emulator.rest_base_url();
    config.openai.sideband_url = emulator.sideband_url();
    config.openai.accept_retry_budget_ms = 1_500;
    config.openai.request_timeout_ms = 1_000;
    config.prompts.dir = prompts.to_path_buf();
    config.store.sqlite_path = dir.join("voxmachina.db");
    config.monitor.reconnect_initial_delay_ms = 20;
    config.monitor.reconnect_max_delay_ms = 100;
    config.monitor.reconnect_max_attempts = 3;
    config.monitor.refer_outcome_window_ms = 600;
    config.monitor.handoff_line_timeout_ms = 1_500;
    config
}

/// Test secrets.
pub fn test_secrets() -> Secrets {
    Secrets {
        openai_api_key: Secret::new(API_KEY),
        webhook_secret: Secret::new(webhook_secret()),
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        twilio_auth_token: None,
        twilio_webhook_shared_key: None,
        hubspot_token: None,
    }
}

impl Harness {
    /// Emulator + controller on the fixture profiles.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], letting the test adjust the config first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let emulator = Emulator::start(EmulatorConfig {
            api_key: API_KEY.to_string(),
        })
        .await
        .expect("emulator starts");
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts");
        copy_prompts_with_closed_line(&prompts);
        let mut config = test_config(&emulator, dir.path(), &prompts);
        adjust(&mut config);
        let server = app::start(config, test_secrets())
            .await
            .expect("controller starts");
        Harness {
            emulator,
            server,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// `http://127.0.0.1:PORT/openai/webhook`.
    pub fn webhook_url(&self) -> String {
        format!("{}/openai/webhook", self.server.base_url())
    }

    /// The store behind the controller.
    pub fn store(&self) -> Arc<dyn voxmachina::store::Store> {
        self.server.state.store.clone()
    }

    /// Waits until the stored record of `call_id` satisfies `pred`, or panics after `timeout`.
    pub async fn wait_record(
        &self,
        call_id: &str,
        timeout: Duration,
        pred: impl Fn(&CallRecord) -> bool,
    ) -> CallRecord {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.store().get_call(call_id).await.unwrap() {
                if pred(&r) {
                    return r;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "record of {call_id} never matched; last: {r:#?}\nevents: {:#?}",
                        self.events(call_id).await
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("no record for {call_id}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Places a call playing `script` through a signed webhook (which must be answered 200),
    /// waits up to 15 s for it to end, and returns its `call_id`, the emulator's view and the
    /// stored record.
    pub async fn call_to_end(&self, script: Script) -> (String, CallView, CallRecord) {
        let placed = self
            .emulator
            .place_call(&self.webhook_url(), &webhook_secret(), script)
            .await
            .unwrap();
        assert_eq!(placed.status, 200);
        let record = self
            .wait_record(&placed.call_id, Duration::from_secs(15), |r| {
                r.state.is_final()
            })
            .await;
        let view = self.emulator.call(&placed.call_id).unwrap();
        (placed.call_id, view, record)
    }

    /// Waits until the call reaches a final state.
    pub async fn wait_final(&self, call_id: &str) -> CallRecord {
        self.wait_record(call_id, Duration::from_secs(10), |r| r.state.is_final())
            .await
    }

    /// The stored transcript.
    pub async fn transcript(&self, call_id: &str) -> Vec<TranscriptLine> {
        self.store().transcript(call_id).await.unwrap()
    }

    /// The stored event kinds, in order.
    pub async fn events(&self, call_id: &str) -> Vec<CallEvent> {
        self.store().events(call_id).await.unwrap()
    }

    /// Event kinds only.
    pub async fn event_kinds(&self, call_id: &str) -> Vec<String> {
        self.events(call_id)
            .await
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// `/accept` requests for `call_id` that the emulator answered 200.
    pub fn successful_accepts(&self, call_id: &str) -> usize {
        let path = format!("/v1/realtime/calls/{call_id}/accept");
        self.emulator
            .requests()
            .iter()
            .filter(|r| r.path == path && r.status == 200)
            .count()
    }

    /// Admin API request builder with the token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.server.base_url(), path))
            .bearer_auth(ADMIN_TOKEN)
    }
}
