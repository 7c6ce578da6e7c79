//! The command line (`clap`): `serve`, `check`, `trigger`, `demo`, `dynamodb`, `token`.

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
    /// Manage the DynamoDB tables named by `[store.dynamodb]`.
    #[command(subcommand)]
    Dynamodb(DynamodbCommand),
    /// Inspect or redeem a handover token in the configured store.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `voxmachina dynamodb ...`.
#[derive(Debug, Subcommand)]
pub enum DynamodbCommand {
    /// Create the tables (PAY_PER_REQUEST), wait until ACTIVE, enable TTL. Safe to re-run.
    CreateTables {
        /// Seconds to wait for the tables and indexes to become ACTIVE.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

/// `voxmachina token ...`. Both print the payload as JSON and exit 0, or exit 1 when the token
/// is unknown, already redeemed or expired.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Show a live token's payload without redeeming it.
    Show {
        /// The 10-digit token.
        token: String,
    },
    /// Redeem a token (single use: it is gone afterwards) and print its payload.
    Redeem {
        /// The 10-digit token.
        token: String,
    },
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
        Command::Dynamodb(cmd) => dynamodb(cli.config, cmd).await,
        Command::Token(cmd) => token(cli.config, cmd).await,
    }
}

async fn dynamodb(config_path: Option<PathBuf>, cmd: DynamodbCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    match cmd {
        DynamodbCommand::CreateTables { timeout_secs } => {
            let store = crate::store::DynamoStore::connect(&config.store.dynamodb).await?;
            let setups = store
                .create_tables(Duration::from_secs(timeout_secs))
                .await?;
            for t in &setups {
                println!(
                    "{} {}{}",
                    t.table,
                    if t.created { "created" } else { "exists" },
                    t.ttl_attribute
                        .as_deref()
                        .map(|a| format!(", TTL on {a}"))
                        .unwrap_or_default()
                );
            }
            println!("{} table(s) ready", setups.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn token(config_path: Option<PathBuf>, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path.as_deref())?;
    let store = crate::app::open_store(&config).await?;
    let now = chrono::Utc::now();
    let (found, token) = match &cmd {
        TokenCommand::Show { token } => (store.peek_token(token, now).await?, token),
        TokenCommand::Redeem { token } => (store.redeem_token(token, now).await?, token),
    };
    match found {
        Some(payload) => {
            println!("{}", serde_json::to_string_pretty(&payload)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("token {token:?}: unknown, already redeemed or expired");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn serve(config_path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let notifier = crate::systemd::Notifier::from_env();
    let config = Config::load(config_path.as_deref())?;
    crate::telemetry::init_logging(&config.logging);
    let secrets = Secrets::from_env()?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    // Signal handlers first, so a SIGTERM or SIGHUP right after READY=1 is never lost.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = crate::app::start(config, secrets).await?;
    let status = |running: &crate::app::Running| {
        format!(
            "listening on {}; {} prompt profile(s); {} live call(s)",
            running.addr,
            running.state.profiles.load().len(),
            running.state.registry().len()
        )
    };
    notifier.ready(&status(&running));
    let mut watchdog = notifier.watchdog_period().map(|period| {
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notifier.reloading();
                match running.state.reload_profiles() {
                    Ok(n) => tracing::info!(profiles = n, "prompt profiles reloaded"),
                    Err(e) => tracing::error!(errors = %e, "reload refused; the previous profiles stay in force"),
                }
                notifier.ready(&status(&running));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = watchdog_tick(&mut watchdog) => notifier.watchdog(),
        }
    }
    tracing::info!(grace_secs = grace.as_secs(), "shutting down");
    notifier.stopping(&format!(
        "draining: {} live call(s), up to {} s",
        running.state.registry().len(),
        grace.as_secs()
    ));
    // Keep feeding the watchdog while calls drain.
    let shutdown = running.shutdown(grace);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = watchdog_tick(&mut watchdog) => notifier.watchdog(),
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes at the next watchdog tick; never when the watchdog is off.
async fn watchdog_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
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
