//! `voxmachina demo`: a whole phone call, offline. Starts the local OpenAI SIP emulator and the
//! real controller on 127.0.0.1 (temporary SQLite file, throwaway secrets), places a scripted
//! call through a signed `realtime.call.incoming` webhook, prints the live transcript and the
//! final call record, and succeeds only if the call ended `transferred`.
//!
//! `voxmachina demo --connect` plays `scripts/connect_escalation.toml` on the `connect-support`
//! profile (`action = "connect_refer"`): the call mints an Amazon Connect handover token and is
//! REFERred to the Connect number; the demo then invokes the contact flow's Lambda handler
//! ([`crate::escalation::connect::handle_json`]) with a `ContactFlowEvent` carrying the token as
//! keyed in, prints the contact attributes an agent would see, and shows that a second
//! redemption fails. It succeeds only if the call ended `transferred` and the handover redeemed.

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
    /// Caller script (TOML) for the emulator.
    #[arg(long, default_value = DEFAULT_SCRIPT)]
    pub script: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Amazon Connect hand-over: play `scripts/connect_escalation.toml` (unless `--script` names
    /// another) and redeem the call's handover token with the Connect Lambda handler.
    #[arg(long)]
    pub connect: bool,
}

/// The script `--connect` plays unless `--script` names another.
pub const CONNECT_SCRIPT: &str = "scripts/connect_escalation.toml";
/// The default `--script`.
const DEFAULT_SCRIPT: &str = "scripts/question_then_human.toml";

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

    let script_path = if args.connect && args.script == std::path::Path::new(DEFAULT_SCRIPT) {
        PathBuf::from(CONNECT_SCRIPT)
    } else {
        args.script.clone()
    };
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
    let placed = emulator
        .place_call(&webhook_url, &webhook_secret, script)
        .await?;
    println!(
        "webhook realtime.call.incoming {} → HTTP {}",
        placed.call_id, placed.status
    );

    let store = server.state.store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let record = loop {
        if let Some(r) = store.get_call(&placed.call_id).await? {
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
    let handover_ok = if args.connect {
        connect_epilogue(store.as_ref(), &record).await
    } else {
        true
    };
    server.shutdown(Duration::from_secs(1)).await;
    if args.connect && !handover_ok {
        println!("\ndemo FAILED: the Connect handover did not redeem");
        Ok(ExitCode::FAILURE)
    } else if record.state == CallState::Transferred {
        println!("\ndemo ok: the call ended transferred");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\ndemo FAILED: the call ended {}", record.state);
        Ok(ExitCode::FAILURE)
    }
}

/// Plays the Connect contact flow's Lambda for `record`'s handover: redeems the token as keyed
/// in, prints the attributes, then shows the token is single-use. True when the first
/// redemption succeeded for this call.
async fn connect_epilogue(
    store: &dyn crate::store::Store,
    record: &crate::calls::record::CallRecord,
) -> bool {
    use crate::escalation::connect::{LambdaOptions, handle_json};
    let token = record
        .escalation
        .as_ref()
        .and_then(|e| e.handover.as_ref())
        .and_then(|h| h.token.clone());
    let Some(token) = token else {
        println!("\nno handover token was minted (is the profile's action connect_refer?)");
        return false;
    };
    // The event Connect sends when Store customer input collected the digits (§2.2).
    let event = serde_json::json!({
        "Details": {
            "ContactData": {
                "Attributes": {},
                "Channel": "VOICE",
                "ContactId": "4a573372-1f28-4e26-b97b-000000000001",
                "CustomerEndpoint": { "Address": record.caller, "Type": "TELEPHONE_NUMBER" },
                "InitiationMethod": "INBOUND",
                "SystemEndpoint": { "Address": "+18885550123", "Type": "TELEPHONE_NUMBER" }
            },
            "Parameters": { "token": format!("{token}#") }
        },
        "Name": "ContactFlowEvent"
    });
    let opts = LambdaOptions::default();
    let now = chrono::Utc::now();
    println!(
        "\nAmazon Connect: the contact flow's Lambda redeems the code the caller keys in ({} digits)",
        token.len()
    );
    let first = handle_json(store, &event, now, &opts).await;
    println!("contact attributes the agent sees:");
    for (k, v) in &first {
        println!("  {k:<20} {}", v.replace('\n', " / "));
    }
    let second = handle_json(store, &event, now, &opts).await;
    println!(
        "second redemption of the same code: success={} reason={}",
        second.get("success").map_or("", String::as_str),
        second.get("reason").map_or("", String::as_str)
    );
    first.get("success").map(String::as_str) == Some("true")
        && first.get("conversation_id") == Some(&record.call_id)
        && second.get("success").map(String::as_str) == Some("false")
}

fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random_range(0..16), 16).expect("hex digit"))
        .collect()
}
