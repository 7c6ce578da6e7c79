//! `voxmachina demo`: a whole phone call, offline. Starts the local OpenAI SIP emulators
//! (Realtime and GPT-Live) and the real controller on 127.0.0.1 (temporary SQLite file,
//! throwaway secrets), places a scripted call through a signed `realtime.call.incoming` webhook
//! (or `live.transport.incoming` with `--api live`), prints the live transcript (Realtime) and
//! the final call record, and succeeds only if the call ended `transferred`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use crate::calls::record::CallState;
use crate::config::{Config, Secret, Secrets};
use crate::emulator::{Emulator, EmulatorConfig, Script};

/// Arguments of `voxmachina demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Caller script (TOML) for the emulator. Default `scripts/question_then_human.toml`, or
    /// `scripts/live_question_then_human.toml` with `--api live`.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Which API answers: `realtime` (`realtime.call.incoming`) or `live` (GPT-Live,
    /// `live.transport.incoming`, against the local GPT-Live emulator).
    #[arg(long, default_value = "realtime", value_parser = ["realtime", "live"])]
    pub api: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Runs the demo. Exit code 0 only when the call ended `transferred`.
///
/// # Errors
/// When the script, profiles, emulator or controller cannot be loaded or started.
pub async fn run(config_path: Option<PathBuf>, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(config_path.as_deref())?;
    if std::env::var_os("RUST_LOG").is_none() {
        config.logging.level = "warn".into();
    }
    config.logging.format = crate::config::LogFormat::Pretty;
    crate::telemetry::init_logging(&config.logging);

    let live = args.api == "live";
    let script_path = args.script.clone().unwrap_or_else(|| {
        PathBuf::from(if live {
            "scripts/live_question_then_human.toml"
        } else {
            "scripts/question_then_human.toml"
        })
    });
    let script =
        Script::load(&script_path).with_context(|| format!("loading {}", script_path.display()))?;
    let api_key = format!("sk-demo-{}", hex(24));
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let webhook_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );

    let emulator = Emulator::start(EmulatorConfig {
        api_key: api_key.clone(),
    })
    .await?;
    let dir = tempfile::tempdir()?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.openai.base_url = emulator.rest_base_url();
    config.openai.sideband_url = emulator.sideband_url();
    let live_emulator = crate::emulator::live::LiveEmulator::start(&api_key, false).await?;
    config.openai.live_base_url = live_emulator.rest_base_url();
    config.openai.live_sideband_url = live_emulator.sideband_url();
    config.store.sqlite_path = dir.path().join("demo.db");
    config.monitor.refer_outcome_window_ms = config.monitor.refer_outcome_window_ms.min(2_000);
    let secrets = Secrets {
        openai_api_key: Secret::new(api_key),
        webhook_secret: Secret::new(webhook_secret.clone()),
        admin_token: None,
        twilio_auth_token: None,
        hubspot_token: None,
    };
    let server = crate::app::start(config, secrets).await?;
    println!(
        "controller on {}  ·  OpenAI emulator on {}",
        server.base_url(),
        emulator.rest_base_url()
    );

    let mut feed = emulator.events();
    let printer = tokio::spawn(async move {
        while let Ok(event) = feed.recv().await {
            println!("  {event}");
        }
    });
    let webhook_url = format!("{}/openai/webhook", server.base_url());
    let call_id = if live {
        let pending =
            live_emulator.new_call(script, crate::webhook::event::LIVE_TRANSPORT_INCOMING, None);
        let status = live_emulator
            .deliver(&webhook_url, &webhook_secret, None, &pending.body)
            .await?;
        println!(
            "webhook live.transport.incoming {} → HTTP {status}",
            pending.session_id
        );
        pending.session_id
    } else {
        let placed = emulator
            .place_call(&webhook_url, &webhook_secret, script)
            .await?;
        println!(
            "webhook realtime.call.incoming {} → HTTP {}",
            placed.call_id, placed.status
        );
        placed.call_id
    };

    let store = server.state.store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let record = loop {
        if let Some(r) = store.get_call(&call_id).await? {
            if r.state.is_final() {
                break r;
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the call did not finish within {} s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.abort();

    println!("\ntranscript (from the store):");
    for line in store.transcript(&record.call_id).await? {
        println!("  {:>6}: {}", line.speaker.as_str(), line.text);
    }
    println!("\ncall record:\n{}", serde_json::to_string_pretty(&record)?);
    server.shutdown(Duration::from_secs(1)).await;
    if record.state == CallState::Transferred {
        println!("\ndemo ok: the call ended transferred");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\ndemo FAILED: the call ended {}", record.state);
        Ok(ExitCode::FAILURE)
    }
}

fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random_range(0..16), 16).expect("hex digit"))
        .collect()
}
