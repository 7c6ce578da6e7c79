//! The command line (`clap`): `serve`, `check`, `trigger`, `demo`, `call`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Secrets};

/// voxmachina: an AI voice agent controller for OpenAI SIP calls.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML). Keys can be overridden with VOXMACHINA_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "VOXMACHINA_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (webhook endpoint, monitors, admin API) until SIGTERM/SIGINT.
    Serve,
    /// Validate the configuration and every prompt profile; print each error with file and line.
    Check,
    /// Sign and send a `realtime.call.incoming` webhook to a URL, like OpenAI would.
    Trigger(TriggerArgs),
    /// Play a whole phone call offline against a local OpenAI SIP emulator.
    Demo(crate::demo::DemoArgs),
    /// Place an outbound call through a running controller (Twilio Media Streams path), wait
    /// for it to end and print its transcript and record.
    Call(CallArgs),
}

/// Arguments of `voxmachina call`. The controller must run with `[twilio]` configured and
/// `VOXMACHINA_ADMIN_TOKEN` set; this command needs the same token in its environment.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Number to call, E.164 (e.g. +14155550123).
    pub to: String,
    /// Prompt profile for the call (default: the default profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Base URL of the running controller (default: http://<[server] listen> of the config).
    #[arg(long)]
    pub server: Option<String>,
    /// Stop waiting after this many seconds (the call itself goes on).
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
}

/// Arguments of `voxmachina trigger`.
#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// Webhook URL, e.g. https://voice.example.com/openai/webhook.
    #[arg(long)]
    pub url: String,
    /// Caller number (From).
    #[arg(long, default_value = "+14155550123")]
    pub from: String,
    /// Dialed number (To).
    #[arg(long, default_value = "+18005550100")]
    pub to: String,
    /// Call id to put in the event (default: a random rtc_ id).
    #[arg(long)]
    pub call_id: Option<String>,
    /// Extra SIP header, "Name: value" (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
}

/// Entry point used by `main`: parses arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => serve(cli.config).await,
        Command::Check => check(cli.config),
        Command::Trigger(args) => trigger(args).await,
        Command::Demo(args) => crate::demo::run(cli.config, args).await,
        Command::Call(args) => call(cli.config, args).await,
    }
}

/// `voxmachina call`: `POST /v1/calls/outbound`, then `GET /v1/calls/{call_id}` every 500 ms
/// until the record is final. Exit code 0 when the call ended `ended` or `transferred` (it was
/// answered and bridged), 1 otherwise (`missed`: busy, no answer, failed, canceled).
async fn call(config_path: Option<PathBuf>, args: CallArgs) -> anyhow::Result<ExitCode> {
    let base = match args.server {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => {
            let config = Config::load(config_path.as_deref())?;
            format!("http://{}", config.server.listen)
        }
    };
    let token = std::env::var("VOXMACHINA_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("VOXMACHINA_ADMIN_TOKEN must be set (the controller's admin token)")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = http
        .post(format!("{base}/v1/calls/outbound"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "to": args.to, "profile": args.profile }))
        .send()
        .await
        .with_context(|| format!("POST {base}/v1/calls/outbound"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.as_u16() != 201 {
        let msg = body["error"].as_str().unwrap_or("no error message");
        anyhow::bail!("the controller refused the call: HTTP {status}: {msg}");
    }
    let call_id = body["call"]["call_id"]
        .as_str()
        .context("no call_id in the answer")?
        .to_string();
    println!(
        "calling {} ({call_id}, profile {})",
        args.to,
        body["call"]["profile"].as_str().unwrap_or("?")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_state = String::new();
    let full = loop {
        let resp = http
            .get(format!("{base}/v1/calls/{call_id}"))
            .bearer_auth(&token)
            .send()
            .await;
        if let Ok(resp) = resp
            && resp.status().is_success()
        {
            let full: serde_json::Value = resp.json().await.unwrap_or_default();
            let state = full["call"]["state"].as_str().unwrap_or("").to_string();
            if state != last_state {
                println!("  state: {state}");
                last_state = state.clone();
            }
            let final_state = crate::calls::record::CallState::parse(&state)
                .is_some_and(crate::calls::record::CallState::is_final);
            if final_state {
                break full;
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the call {call_id} did not end within {} s",
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("\ntranscript:");
    for line in full["transcript"].as_array().into_iter().flatten() {
        println!(
            "  {:>6}: {}",
            line["speaker"].as_str().unwrap_or("?"),
            line["text"].as_str().unwrap_or("")
        );
    }
    let extracted = &full["call"]["media"]["extracted"];
    if extracted.as_object().is_some_and(|m| !m.is_empty()) {
        println!("\nextracted:");
        for (k, v) in extracted.as_object().into_iter().flatten() {
            println!("  {k} = {}", v.as_str().unwrap_or_default());
        }
    }
    println!(
        "\ncall record:\n{}",
        serde_json::to_string_pretty(&full["call"])?
    );
    Ok(match last_state.as_str() {
        "ended" | "transferred" => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = Config::load(config_path.as_deref())?;
    crate::telemetry::init_logging(&config.logging);
    let secrets = Secrets::from_env()?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let running = crate::app::start(config, secrets).await?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match running.state.reload_profiles() {
                Ok(n) => tracing::info!(profiles = n, "prompt profiles reloaded"),
                Err(e) => tracing::error!(errors = %e, "reload refused; the previous profiles stay in force"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    running.shutdown(grace).await;
    Ok(ExitCode::SUCCESS)
}

fn check(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    match crate::prompts::ProfileSet::load(&config.prompts.dir) {
        Ok(set) => {
            println!(
                "config ok; {} prompt profile(s) in {}:",
                set.len(),
                config.prompts.dir.display()
            );
            for p in set.iter() {
                println!(
                    "  {}{} ({})",
                    p.name,
                    if p.is_default { " [default]" } else { "" },
                    p.source.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            println!("{} error(s)", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    use crate::sip::SipHeader;
    use crate::webhook::event::{RealtimeCallIncoming, realtime_call_incoming};
    let secret = std::env::var("OPENAI_WEBHOOK_SECRET")
        .context("OPENAI_WEBHOOK_SECRET must be set to sign the webhook")?;
    let verifier = crate::webhook::signature::Verifier::new(&secret, 300)?;
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rand::random_range(0..16), 16).expect("hex digit"))
            .collect()
    };
    let call_id = args.call_id.unwrap_or_else(|| format!("rtc_{}", hex(32)));
    let mut sip_headers = vec![
        SipHeader {
            name: "From".into(),
            value: format!("<sip:{}@trigger.invalid>;tag={}", args.from, hex(8)),
        },
        SipHeader {
            name: "To".into(),
            value: format!("<sip:{}@sip.api.openai.com>", args.to),
        },
        SipHeader {
            name: "Call-ID".into(),
            value: hex(32),
        },
    ];
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .context("--header must look like \"Name: value\"")?;
        sip_headers.push(SipHeader {
            name: name.trim().into(),
            value: value.trim().into(),
        });
    }
    let now = chrono::Utc::now().timestamp();
    let data = RealtimeCallIncoming {
        call_id: call_id.clone(),
        sip_headers,
        sip_media_security: Some("srtp".into()),
    };
    let body = serde_json::to_vec(&realtime_call_incoming(
        &format!("evt_{}", hex(32)),
        now,
        &data,
    ))?;
    let webhook_id = format!("wh_{}", hex(32));
    let ts = now.to_string();
    let resp = reqwest::Client::new()
        .post(&args.url)
        .header("content-type", "application/json")
        .header("webhook-id", &webhook_id)
        .header("webhook-timestamp", &ts)
        .header("webhook-signature", verifier.sign(&webhook_id, &ts, &body))
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {}", args.url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("call_id={call_id} webhook-id={webhook_id} -> {status} {text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
