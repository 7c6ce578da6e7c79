//! The command line (`clap`): `serve`, `check`, `trigger`, `call`, `tool test`,
//! `dynamodb`, `token`.

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
    /// Validate the configuration (file, environment overrides, E.164 numbers, URLs) and every
    /// prompt profile; print each error with its key, or file and line.
    Check {
        /// Also print every effective configuration key with its value and the layer that set
        /// it (default, file, env), and each secret as set/unset with where it was found.
        #[arg(long)]
        explain: bool,
    },
    /// Sign and send a `realtime.call.incoming` webhook to a URL, like OpenAI would.
    Trigger(TriggerArgs),
    /// Agent tools declared in the prompt profiles.
    Tool(ToolArgs),
    /// Manage the DynamoDB tables named by `[store.dynamodb]`.
    #[command(subcommand)]
    Dynamodb(DynamodbCommand),
    /// Inspect or redeem a handover token in the configured store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Place an outbound call through a running controller (Twilio Media Streams path, or
    /// GPT-Live SIP with `--api live`), wait for it to end and print its transcript and record.
    Call(CallArgs),
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

/// Arguments of `voxmachina tool`.
#[derive(Debug, Args)]
pub struct ToolArgs {
    /// What to do with the tool.
    #[command(subcommand)]
    pub command: ToolCommand,
}

/// `voxmachina tool` subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolCommand {
    /// Run one tool of a profile against its real endpoint (with the configured secrets) and
    /// print the function_call_output the model would see. Exit 0 when the tool answered ok, 1
    /// for an error output, 2 when the profile or tool does not exist or cannot run here.
    Test {
        /// Profile name, e.g. hinglish-support.
        profile: String,
        /// Tool name, e.g. lookup_order.
        tool: String,
        /// The arguments as a JSON object, checked against the tool's schema.
        #[arg(default_value = "{}")]
        arguments: String,
        /// Caller number for {{call.caller}} and the built-ins (E.164).
        #[arg(long)]
        caller: Option<String>,
        /// Dialed number for {{call.dialed}} (E.164).
        #[arg(long)]
        dialed: Option<String>,
    },
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
    /// Which path places the call: `twilio` (Twilio REST + Media Streams bridge,
    /// `POST /v1/calls/outbound`) or `live` (GPT-Live SIP through `[openai.live_trunk]`,
    /// `POST /v1/calls`; `--profile` must name an `api = "live"` profile). A GPT-Live create is
    /// sent once and never retried.
    #[arg(long, default_value = "twilio", value_parser = ["twilio", "live"])]
    pub api: String,
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
    let result = runtime.block_on(run(cli));
    // Tasks still running (connections of slow clients, blocking store work) get two seconds,
    // not forever: `serve` already drained within its grace.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
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
        Command::Check { explain } => check(cli.config, explain),
        Command::Trigger(args) => trigger(args).await,
        Command::Tool(ToolArgs {
            command:
                ToolCommand::Test {
                    profile,
                    tool,
                    arguments,
                    caller,
                    dialed,
                },
        }) => tool_test(cli.config, &profile, &tool, &arguments, caller, dialed).await,
        Command::Dynamodb(cmd) => dynamodb(cli.config, cmd).await,
        Command::Token(cmd) => token(cli.config, cmd).await,
        Command::Call(args) => call(cli.config, args).await,
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
    let store = crate::store::open(&config).await?;
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
        .filter(|t| !t.trim().is_empty())
        .context("VOXMACHINA_ADMIN_TOKEN must be set, not empty (the controller's admin token)")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (url, body) = if args.api == "live" {
        let profile = args
            .profile
            .as_deref()
            .context("--profile is required with --api live (a profile with api = \"live\")")?;
        (
            format!("{base}/v1/calls"),
            serde_json::json!({ "api": "live", "to": args.to, "profile": profile }),
        )
    } else {
        (
            format!("{base}/v1/calls/outbound"),
            serde_json::json!({ "to": args.to, "profile": args.profile }),
        )
    };
    let resp = http
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url} (not retried)"))?;
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
    let extracted = &full["call"]["after_call"]["extracted"];
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

fn check(config_path: Option<PathBuf>, explain: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            println!("{e}");
            println!("1 error(s)");
            return Ok(ExitCode::FAILURE);
        }
    };
    if explain {
        print_explain(&config, config_path.as_deref())?;
    }
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
                if !p.tools.is_empty() {
                    let names: Vec<&str> = p.tools.iter().map(|t| t.name.as_str()).collect();
                    println!("    tools: {}", names.join(", "));
                }
            }
            for w in tool_warnings(&config, &set) {
                println!("warning: {w}");
            }
            if let Err(e) = crate::prompts::check_named_secrets(&config, &set) {
                println!("error: {e}");
                return Ok(ExitCode::FAILURE);
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

/// `check --explain`: one line per effective key, `key = value  [layer]`, then the secrets.
fn print_explain(config: &Config, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    use crate::config::explain;
    println!("effective configuration (key = value  [layer]; layers: default < file < env):");
    for row in explain::config(config, path, std::env::vars())? {
        println!("  {} = {}  [{}]", row.key, row.value, row.layer);
    }
    println!("secrets (values never shown; layers: env < credential):");
    for s in explain::secrets()? {
        match s.layer {
            Some(layer) => println!("  {} / {}: set  [{layer}]", s.env, s.file),
            None => println!("  {} / {}: unset", s.env, s.file),
        }
    }
    Ok(())
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

/// Problems that do not stop the server but make a tool fail at call time: unset secrets,
/// `create_ticket` without HubSpot, `send_dtmf` on a profile that is not `api = "live"`.
pub fn tool_warnings(config: &Config, set: &crate::prompts::ProfileSet) -> Vec<String> {
    use crate::tools::Builtin;
    let lookup = crate::tools::secret_lookup(&config.tools.secrets_dir);
    let mut out = Vec::new();
    for p in set.iter() {
        for t in p.tools.iter() {
            for name in t.secret_names() {
                if lookup(name).is_none() {
                    out.push(format!(
                        "{}: tool {}: secret {name} is not set (a file {name} in [tools] secrets_dir or $CREDENTIALS_DIRECTORY, or VOXMACHINA_SECRET_{}); the tool answers not_configured until it is",
                        p.source.display(),
                        t.name,
                        name.to_ascii_uppercase().replace(['-', '.'], "_")
                    ));
                }
            }
            match t.builtin() {
                Some(Builtin::CreateTicket) if !config.hubspot.enabled => out.push(format!(
                    "{}: tool create_ticket: [hubspot] is not enabled; the tool answers not_configured",
                    p.source.display()
                )),
                Some(Builtin::SendDtmf) if p.api != crate::calls::record::Api::Live => {
                    out.push(format!(
                        "{}: tool send_dtmf only works on GPT-Live calls (api = \"live\"); on this profile's Realtime SIP and Twilio media calls the model gets an unsupported error",
                        p.source.display()
                    ))
                }
                _ => {}
            }
        }
    }
    out
}

async fn tool_test(
    config_path: Option<PathBuf>,
    profile: &str,
    tool: &str,
    arguments: &str,
    caller: Option<String>,
    dialed: Option<String>,
) -> anyhow::Result<ExitCode> {
    use crate::tools::{CallInfo, Outcome, Services};
    let config = Config::load(config_path.as_deref())?;
    let set = match crate::prompts::ProfileSet::load(&config.prompts.dir) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(p) = set.get(profile) else {
        let names: Vec<&str> = set.iter().map(|p| p.name.as_str()).collect();
        eprintln!("no profile {profile:?} (profiles: {})", names.join(", "));
        return Ok(ExitCode::from(2));
    };
    let Some(def) = p.tools.get(tool) else {
        let names: Vec<&str> = p.tools.iter().map(|t| t.name.as_str()).collect();
        eprintln!(
            "profile {profile} declares no tool {tool:?} (tools: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        return Ok(ExitCode::from(2));
    };
    if def.builtin().is_some_and(|b| b.acts_on_call()) {
        eprintln!("{tool} acts on a live call (transfer or hang-up) and cannot be tested here");
        return Ok(ExitCode::from(2));
    }
    let args = match def.check_arguments(arguments) {
        Ok(a) => a,
        Err(problems) => {
            let r = crate::tools::ToolResult::invalid_arguments(tool, problems);
            println!("{}", serde_json::to_string_pretty(&r.output)?);
            eprintln!("outcome: invalid_arguments (nothing was sent)");
            return Ok(ExitCode::FAILURE);
        }
    };
    let hubspot_token = Secrets::from_env()
        .ok()
        .and_then(|s| s.hubspot_token)
        .or_else(|| {
            std::env::var("HUBSPOT_TOKEN")
                .ok()
                .filter(|v| !v.is_empty())
                .map(crate::config::Secret::new)
        });
    let hubspot = crate::hubspot::HubSpot::from_config(&config.hubspot, hubspot_token)?;
    let mut services = Services::new(config.tools.clone())
        .map_err(|e| anyhow::anyhow!(e))?
        .with_hubspot(hubspot);
    if def.builtin() == Some(crate::tools::Builtin::LookupCallHistory) {
        services = services.with_store(crate::store::open(&config).await?);
    }
    let call = CallInfo {
        call_id: "rtc_tool_test".into(),
        caller,
        dialed,
    };
    let started = std::time::Instant::now();
    let result =
        crate::tools::execute(def, &args, &call, p.tools_base_url.as_deref(), &services).await;
    println!("{}", serde_json::to_string_pretty(&result.output)?);
    let mut line = format!(
        "outcome: {} · {:.1} ms",
        result.outcome.as_str(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(s) = result.status {
        line.push_str(&format!(" · HTTP {s}"));
    }
    if let Some(n) = &result.note {
        line.push_str(&format!(" · {n}"));
    }
    eprintln!("{line}");
    Ok(if result.outcome == Outcome::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
