//! `voxmachina-demo`: a whole phone call, offline. Starts the local OpenAI SIP emulators
//! (Realtime and GPT-Live) and the real controller on 127.0.0.1 (temporary SQLite file,
//! throwaway secrets), places a scripted call through a signed `realtime.call.incoming` webhook
//! (or `live.transport.incoming` with `--api live`), prints the live transcript (Realtime) and
//! the final call record, and succeeds only if the call ended `transferred`.
//!
//! `voxmachina-demo --connect` plays `scripts/connect_escalation.toml` on the `connect-support`
//! profile (`action = "connect_refer"`): the call mints an Amazon Connect handover token and is
//! REFERred to the Connect number; the demo then invokes the contact flow's Lambda handler
//! ([`voxmachina::escalation::connect::handle_json`]) with a `ContactFlowEvent` carrying the token as
//! keyed in, prints the contact attributes an agent would see, and shows that a second
//! redemption fails. It succeeds only if the call ended `transferred` and the handover redeemed.
//!
//! `voxmachina-demo --media` plays a call on the Twilio Media Streams path instead: an emulated
//! Twilio ([`voxmachina_emulator::phone`]) posts a signed voice webhook, opens the signed Media
//! Streams WebSocket from the TwiML, and streams the fixture speech
//! (`tests/fixtures/speech_8k.itu.ulaw`, or `--speech`) in real time; the bridge carries it
//! to the emulator's Realtime model session (`--audio pcmu|pcm16`), plays the agent's audio
//! back, and a second utterance barges in on the agent's reply. It prints the transcript, the
//! bridge's frame statistics and the record, and succeeds when the call ended `ended` with one
//! barge-in, no malformed frames and the confirmation number extracted.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use voxmachina::calls::record::CallState;
use voxmachina::config::{Config, Secret, Secrets};
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

/// Arguments of `voxmachina-demo`.
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
    /// Amazon Connect hand-over: play `scripts/connect_escalation.toml` (unless `--script` names
    /// another) and redeem the call's handover token with the Connect Lambda handler.
    #[arg(long, conflicts_with = "media")]
    pub connect: bool,
    /// Play the call over the Twilio Media Streams bridge instead of OpenAI SIP.
    #[arg(long)]
    pub media: bool,
    /// With --media: the Realtime session's audio mode, `pcmu` (passthrough) or `pcm16`
    /// (transcoded to 24 kHz PCM).
    #[arg(long, default_value = "pcmu", value_parser = ["pcmu", "pcm16"])]
    pub audio: String,
    /// With --media: the caller's speech, headerless μ-law 8 kHz (default: the repository's
    /// `tests/fixtures/speech_8k.itu.ulaw`; a synthetic signal when it is missing).
    #[arg(long)]
    pub speech: Option<PathBuf>,
}

/// The script `--connect` plays unless `--script` names another.
pub const CONNECT_SCRIPT: &str = "scripts/connect_escalation.toml";
/// The default `--script` (Realtime, without `--connect`).
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
    config.logging.format = voxmachina::config::LogFormat::Pretty;
    voxmachina::telemetry::init_logging(&config.logging);
    if args.media {
        return run_media(config, &args).await;
    }

    let live = args.api == "live";
    if live && args.connect {
        anyhow::bail!(
            "--connect plays the Realtime connect-support profile; it cannot be combined with --api live"
        );
    }
    let script_path = args.script.clone().unwrap_or_else(|| {
        PathBuf::from(if args.connect {
            CONNECT_SCRIPT
        } else if live {
            "scripts/live_question_then_human.toml"
        } else {
            DEFAULT_SCRIPT
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
    let live_emulator = voxmachina_emulator::live::LiveEmulator::start(&api_key, false).await?;
    config.openai.live_base_url = live_emulator.rest_base_url();
    config.openai.live_sideband_url = live_emulator.sideband_url();
    config.store.sqlite_path = dir.path().join("demo.db");
    config.monitor.refer_outcome_window_ms = config.monitor.refer_outcome_window_ms.min(2_000);
    let secrets = Secrets {
        openai_api_key: Secret::new(api_key),
        webhook_secret: Secret::new(webhook_secret.clone()),
        admin_token: None,
        twilio_auth_token: None,
        twilio_webhook_shared_key: None,
        hubspot_token: None,
    };
    let server = voxmachina::app::start(config, secrets).await?;
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
        let pending = live_emulator.new_call(
            script,
            voxmachina::webhook::event::LIVE_TRANSPORT_INCOMING,
            None,
        );
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
    store: &dyn voxmachina::store::Store,
    record: &voxmachina::calls::record::CallRecord,
) -> bool {
    use voxmachina::escalation::connect::{LambdaOptions, handle_json};
    let token = record
        .escalation
        .as_ref()
        .and_then(|e| e.handover.as_ref())
        .and_then(|h| h.token.clone());
    let Some(token) = token else {
        println!("\nno handover token was minted (is the profile's action connect_refer?)");
        return false;
    };
    // The event Connect sends when Store customer input collected the digits.
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

/// The fixture the media demo speaks by default (3 s of speech, μ-law 8 kHz).
pub const FIXTURE_SPEECH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/speech_8k.itu.ulaw"
);

/// What the fixture says (`tests/fixtures/README.md`).
const FIXTURE_WORDS: &str = "Hello, thanks for calling. How can I help you today?";

/// Copies the profile directory to `dest`, setting `[session] audio = mode` and an
/// `[[after_call.extract]]` rule for `confirmation_number` on the default profile.
fn media_prompts(src: &std::path::Path, dest: &std::path::Path, mode: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let is_default_profile = path.extension().is_some_and(|e| e == "toml")
            && text
                .parse::<toml::Table>()
                .ok()
                .is_some_and(|t| t.get("default").and_then(toml::Value::as_bool) == Some(true));
        if !is_default_profile {
            std::fs::write(dest.join(name), text)?;
            continue;
        }
        let mut table: toml::Table = text.parse()?;
        let session = table
            .entry("session")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(s) = session.as_table_mut() {
            s.insert("audio".into(), toml::Value::String(mode.into()));
        }
        let mut rule = toml::Table::new();
        rule.insert("name".into(), "confirmation_number".into());
        rule.insert("regex".into(), "confirmation number is ([A-Z0-9]+)".into());
        let after_call = table
            .entry("after_call")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(a) = after_call.as_table_mut() {
            a.insert(
                "extract".into(),
                toml::Value::Array(vec![toml::Value::Table(rule)]),
            );
        }
        std::fs::write(dest.join(name), toml::to_string(&table)?)?;
    }
    Ok(())
}

/// 3 s of a speech-like synthetic signal (200 Hz pulses through two formants, syllable
/// envelope), μ-law: used when the fixture is not available.
fn synthetic_speech() -> Vec<u8> {
    (0..24_000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            let syllable = (std::f64::consts::PI * 4.0 * t).sin().abs();
            let voice = (2.0 * std::f64::consts::PI * 700.0 * t).sin()
                + 0.6 * (2.0 * std::f64::consts::PI * 1200.0 * t).sin();
            let pulse = if (t * 200.0).fract() < 0.5 { 1.0 } else { 0.3 };
            voxmachina::media::g711::ulaw_encode((6000.0 * syllable * voice * pulse) as i16)
        })
        .collect()
}

async fn run_media(mut config: Config, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    use voxmachina_emulator::phone::{Phone, PhoneConfig, stream_of_twiml};

    let speech = match &args.speech {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => std::fs::read(FIXTURE_SPEECH).unwrap_or_else(|_| {
            println!("(fixture {FIXTURE_SPEECH} not found: using a synthetic voice)");
            synthetic_speech()
        }),
    };
    let api_key = format!("sk-demo-{}", hex(24));
    let emulator = Emulator::start(EmulatorConfig {
        api_key: api_key.clone(),
    })
    .await?;
    emulator.push_model_script(
        Script::new()
            .greeting("Hello, you have reached Example Corp. How can I help you today?")
            .reply("Booked! Your confirmation number is R7K2P9, a table for two at seven tonight. Is there anything else I can do for you today?")
            .reply("Of course, dogs are welcome on the terrace. Goodbye!")
            .caller(FIXTURE_WORDS)
            .caller("Sorry, one more thing: can I bring my dog?"),
    );
    let dir = tempfile::tempdir()?;
    let prompts = dir.path().join("prompts");
    media_prompts(&config.prompts.dir, &prompts, &args.audio)?;
    let auth_token = Secret::new(hex(32));
    let account_sid = format!("AC{}", hex(32));
    let public_url = "https://demo.voxmachina.invalid";
    config.server.listen = "127.0.0.1:0".parse()?;
    config.openai.base_url = emulator.rest_base_url();
    config.openai.sideband_url = emulator.sideband_url();
    config.store.sqlite_path = dir.path().join("demo.db");
    config.prompts.dir = prompts;
    config.twilio.account_sid = account_sid.clone();
    config.twilio.public_url = public_url.into();
    config.twilio.api_base_url = "http://127.0.0.1:9".into();
    config.twilio.from_number = "+18005550100".into();
    let secrets = Secrets {
        openai_api_key: Secret::new(api_key),
        webhook_secret: Secret::new(format!("whsec_{}", hex(32))),
        admin_token: None,
        twilio_auth_token: Some(auth_token.clone()),
        twilio_webhook_shared_key: None,
        hubspot_token: None,
    };
    let server = voxmachina::app::start(config, secrets).await?;
    println!(
        "controller on {}  ·  OpenAI emulator on {}  ·  audio {}",
        server.base_url(),
        emulator.rest_base_url(),
        args.audio
    );
    let mut feed = emulator.events();
    let printer = tokio::spawn(async move {
        while let Ok(event) = feed.recv().await {
            println!("  {event}");
        }
    });

    // Twilio asks our voice webhook what to do with the call.
    let call_sid = format!("CA{}", hex(32));
    let params: Vec<(String, String)> = [
        ("AccountSid", account_sid.as_str()),
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550123"),
        ("To", "+18005550000"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let signature = voxmachina::twilio::signature::sign(
        &auth_token,
        &format!("{public_url}/twilio/voice"),
        &params,
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/twilio/voice", server.base_url()))
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await?;
    let status = resp.status();
    let twiml = resp.text().await?;
    println!("POST /twilio/voice → HTTP {status}\n  {twiml}");
    let (stream_url, parameters) =
        stream_of_twiml(&twiml).context("the voice webhook did not answer <Connect><Stream>")?;
    let phone = Phone::connect(PhoneConfig {
        url: format!("ws://{}/twilio/media", server.addr),
        signed_url: stream_url,
        auth_token,
        account_sid,
        call_sid: call_sid.clone(),
        parameters,
    })
    .await?;
    println!("media stream open (signed upgrade accepted)");
    let wait = Duration::from_secs(args.timeout_secs);
    let session = emulator
        .wait_model_session(1, wait)
        .await
        .context("no Realtime session was opened")?;
    // Waits until the model has sent `n` audio items and the phone has received and played all
    // of their frames.
    let played_items = |n: usize| {
        let emulator = emulator.clone();
        let session = session.clone();
        let phone = &phone;
        async move {
            emulator
                .wait_for(&session, wait, |_| {
                    emulator
                        .media(&session)
                        .is_some_and(|m| m.agent_audio.len() >= n)
                })
                .await
                .context("the agent did not answer")?;
            let media = emulator.media(&session).unwrap_or_default();
            // μ-law bytes of the audio items (PCM16 24 kHz is 6 bytes per 8 kHz sample).
            let ulaw: usize = media
                .agent_audio
                .iter()
                .take(n)
                .map(|a| a.bytes.len() / if a.format == "audio/pcmu" { 1 } else { 6 })
                .sum();
            phone
                .wait_until(wait, |l| {
                    let cleared: usize = l.clears.iter().map(|c| c.discarded_bytes).sum();
                    l.frames.len() * 160 + 160 >= ulaw.saturating_sub(cleared)
                        && l.queued == 0
                        && l.marks_echoed.len() == l.marks_received.len()
                })
                .await
                .context("the agent's audio did not play out")?;
            anyhow::Ok(())
        }
    };
    played_items(1).await?;
    println!("  phone: greeting played; the caller speaks");
    phone.say(&speech);
    emulator
        .wait_for(&session, wait, |v| v.agent_lines.len() >= 2)
        .await
        .context("the caller's first turn was not answered")?;
    let before = phone.log().played.len();
    phone
        .wait_until(wait, |l| l.played.len() >= before + 12_000)
        .await
        .context("the reply did not play")?;
    println!("  phone: the caller talks over the agent's reply");
    phone.say(&speech);
    phone
        .wait_until(wait, |l| !l.clears.is_empty())
        .await
        .context("no barge-in")?;
    played_items(3).await?;
    println!("  phone: hanging up (stop)");
    phone.stop();

    let store = server.state.store.clone();
    let deadline = tokio::time::Instant::now() + wait;
    let record = loop {
        if let Some(r) = store.get_call(&call_sid).await?
            && r.state.is_final()
            && r.media.as_ref().is_some_and(|m| m.stats.is_some())
        {
            break r;
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
    let media = record.media.clone().unwrap_or_default();
    let stats = media.stats.clone().unwrap_or_default();
    let log = phone.log();
    println!("\nbridge frame statistics ({} mode):", media.audio);
    println!(
        "  in : {} Twilio frames, {} bytes μ-law ({:.2} s) → {} input_audio_buffer.append",
        stats.frames_in,
        stats.bytes_in,
        stats.bytes_in as f64 / 8000.0,
        stats.appends
    );
    println!(
        "  out: {} model deltas → {} Twilio frames, {} bytes ({:.2} s); {} marks sent, {} echoed",
        stats.deltas,
        stats.frames_out,
        stats.bytes_out,
        stats.bytes_out as f64 / 8000.0,
        stats.marks_sent,
        stats.marks_echoed
    );
    println!(
        "  barge-ins {} (truncates {}), dtmf {}, malformed {}, bad audio {}, odd PCM {}, dropped deltas {}",
        stats.barge_ins,
        stats.truncates,
        stats.dtmf,
        stats.malformed,
        stats.bad_audio,
        stats.odd_pcm,
        stats.dropped_deltas
    );
    println!(
        "  per-frame bridge time: inbound p50 {} µs / p99 {} µs; outbound p50 {} µs / p99 {} µs",
        stats.inbound_p50_us, stats.inbound_p99_us, stats.outbound_p50_us, stats.outbound_p99_us
    );
    println!(
        "  phone: {} frames received, {:.2} s played, {} clear(s), {} invalid frame(s)",
        log.frames.len(),
        log.played.len() as f64 / 8000.0,
        log.clears.len(),
        log.invalid.len()
    );
    println!("\ncall record:\n{}", serde_json::to_string_pretty(&record)?);
    server.shutdown(Duration::from_secs(1)).await;
    let ok = record.state == CallState::Ended
        && stats.frames_out > 0
        && stats.barge_ins == 1
        && stats.malformed == 0
        && log.invalid.is_empty()
        && record
            .after_call
            .extracted
            .get("confirmation_number")
            .map(String::as_str)
            == Some("R7K2P9");
    if ok {
        println!("\ndemo ok: the media call was bridged both ways and ended");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\ndemo FAILED: see the record and statistics above");
        Ok(ExitCode::FAILURE)
    }
}
