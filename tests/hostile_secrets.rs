//! Issue 13 items 4 and 6, as an attacker or a careless deploy would meet them, through the real
//! `voxmachina` binary or a served instance on 127.0.0.1:
//! - empty, whitespace-only and `whsec_`-only secrets (environment or `$CREDENTIALS_DIRECTORY`)
//!   stop the start with an error naming the secret;
//! - at `RUST_LOG=trace`, a signed webhook, the sideband attach, a tool call with a secret
//!   header and an admin API request leave no key or token in the log;
//! - under umask 000 the SQLite files and the opt-out list are 0600 in 0700 directories;
//! - a tool answer echoing its secret base64-, hex- or URL-encoded reaches the model redacted;
//! - the SMS follow-up never carries the caller's words or links, and goes out once per window;
//!   `voxmachina check` refuses a template with transcript fields and no opt-in.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use support::fake_twilio::FakeTwilio;
use support::harness::{ADMIN_TOKEN, API_KEY, Harness, test_config, test_secrets, webhook_secret};
use support::serve::{Controller, wait_view};
use support::tool_server::{Answer, ToolServer};
use voxmachina::app;
use voxmachina::config::SummaryMode;
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

/// The tool secret; no form of it may reach the log or the model.
const TOOL_SECRET: &str = "tok-live-7Qx9+/Zr~k2 hostile";
const CALLER: &str = "+14155550123";

/// A profile with one HTTP tool sending `{{secret:orders_token}}`, and a fixed-text SMS.
fn tool_profile(base: &str) -> String {
    format!(
        r#"
default = true
greeting = "Greet the caller."
tools_base_url = "{base}"
tools_allow_private_hosts = ["127.0.0.1"]

[[tools]]
name = "lookup_order"
description = "Look up an order."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}
[tools.http]
url = "{{{{base_url}}}}/orders/{{{{args.order_id}}}}"
headers = {{ Authorization = "Bearer {{{{secret:orders_token}}}}" }}

[after_call.sms]
template = "Acme: thanks for calling. Reply STOP to opt out."
"#
    )
}

/// A config file for the binary.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("voxmachina.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[logging]\nformat = \"json\"\n[prompts]\ndir = \"{}\"\n[store]\nsqlite_path = \"{}\"\n{extra}",
            dir.join("prompts").display(),
            dir.join("state/db/voxmachina.db").display()
        ),
    )
    .unwrap();
    path
}

fn write_prompts(dir: &Path, base: &str) {
    let prompts = dir.join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("default.toml"), tool_profile(base)).unwrap();
    std::fs::write(prompts.join("default.md"), "You answer the test line.\n").unwrap();
}

/// Runs `voxmachina serve` with the test secrets changed by `env` (`None` removes a variable)
/// and `$CREDENTIALS_DIRECTORY` holding `files`; returns (exited, success, stdout + stderr).
fn serve_once(config: &Path, env: &[(&str, Option<&str>)], files: &[(&str, &str)]) -> String {
    let creds = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(creds.path().join(name), content).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("VOXMACHINA_ADMIN_TOKEN")
        .env_remove("TWILIO_AUTH_TOKEN")
        .env_remove("HUBSPOT_TOKEN")
        .env_remove("VOXMACHINA_SECRET_ORDERS_TOKEN")
        .env("OPENAI_API_KEY", API_KEY)
        .env("OPENAI_WEBHOOK_SECRET", webhook_secret())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("VOXMACHINA_") && k.contains("__") {
            cmd.env_remove(k);
        }
    }
    if files.is_empty() {
        cmd.env_remove("CREDENTIALS_DIRECTORY");
    } else {
        cmd.env("CREDENTIALS_DIRECTORY", creds.path());
    }
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve started instead of refusing {env:?} {files:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{env:?} {files:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn empty_secrets_stop_the_start_and_name_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    write_prompts(dir.path(), "http://127.0.0.1:9");
    let config = write_config(dir.path(), "");
    let env_cases: &[(&str, &str, &str)] = &[
        ("OPENAI_WEBHOOK_SECRET", "whsec_", "OPENAI_WEBHOOK_SECRET"),
        ("OPENAI_WEBHOOK_SECRET", " \t ", "OPENAI_WEBHOOK_SECRET"),
        ("OPENAI_API_KEY", "", "OPENAI_API_KEY"),
        ("VOXMACHINA_ADMIN_TOKEN", "", "VOXMACHINA_ADMIN_TOKEN"),
        ("VOXMACHINA_ADMIN_TOKEN", "   ", "VOXMACHINA_ADMIN_TOKEN"),
        ("TWILIO_AUTH_TOKEN", "\t", "TWILIO_AUTH_TOKEN"),
        ("HUBSPOT_TOKEN", "", "HUBSPOT_TOKEN"),
        ("VOXMACHINA_SECRET_ORDERS_TOKEN", "  ", "orders_token"),
    ];
    for (var, value, name) in env_cases {
        let out = serve_once(&config, &[(var, Some(value))], &[]);
        assert!(
            out.contains(name) && out.contains("empty or only whitespace"),
            "{var}={value:?}: {out}"
        );
        assert!(!out.contains("\"listening\""), "{out}");
    }
    let file_cases: &[(&str, &str, &str)] = &[
        ("admin_token", "\n", "VOXMACHINA_ADMIN_TOKEN"),
        ("openai_webhook_secret", "whsec_\n", "OPENAI_WEBHOOK_SECRET"),
        ("openai_api_key", "   \n", "OPENAI_API_KEY"),
        ("twilio_auth_token", "", "TWILIO_AUTH_TOKEN"),
        ("orders_token", " \r\n", "orders_token"),
    ];
    for (file, content, name) in file_cases {
        let out = serve_once(&config, &[], &[(file, content)]);
        assert!(
            out.contains(name) && out.contains("empty or only whitespace"),
            "credential {file}={content:?}: {out}"
        );
        if *file != "openai_webhook_secret" {
            assert!(out.contains(file), "the file is named: {out}");
        }
    }
}

#[test]
fn check_refuses_sms_templates_relaying_the_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("default.toml"),
        "default = true\n[after_call.sms]\ntemplate = \"We noted: {{summary.intent}}\"\n",
    )
    .unwrap();
    std::fs::write(prompts.join("default.md"), "x\n").unwrap();
    let config = write_config(dir.path(), "");
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_voxmachina"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .env_remove("VOXMACHINA_SECRET_ORDERS_TOKEN")
            .output()
            .unwrap()
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("is taken from what was said"), "{text}");
    assert!(text.contains("allow_transcript_fields"), "{text}");
    std::fs::write(
        prompts.join("default.toml"),
        "default = true\n[after_call.sms]\ntemplate = \"We noted: {{summary.intent}}\"\nallow_transcript_fields = true\n",
    )
    .unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Every form of `secret` an attacker could find useful in a log: itself, base64 and hex.
fn forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_string(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        secret
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ]
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secret_files_are_private_and_tool_echoes_are_redacted() {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let tools = ToolServer::start().await;
    // The endpoint echoes the credential back in every encoding (and the header itself).
    let pct: String =
        percent_encoding::utf8_percent_encode(TOOL_SECRET, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let echoes = json!({
        "order": "SK-1234",
        "b64": STANDARD.encode(TOOL_SECRET),
        "b64url": URL_SAFE_NO_PAD.encode(TOOL_SECRET),
        "hex": TOOL_SECRET.bytes().map(|b| format!("{b:02x}")).collect::<String>(),
        "HEX": TOOL_SECRET.bytes().map(|b| format!("{b:02X}")).collect::<String>(),
        "url": pct,
        "basic": format!("Basic {}", STANDARD.encode(format!("svc:{TOOL_SECRET}"))),
        "raw": TOOL_SECRET,
    });
    tools.route("/v1/orders/SK-1234", Answer::json(echoes.clone()));
    let dir = tempfile::tempdir().unwrap();
    write_prompts(dir.path(), &tools.base_url());
    let opt_out = dir.path().join("private/optout/list.txt");
    let config = write_config(
        dir.path(),
        &format!(
            "[openai]\nbase_url = \"{}\"\nsideband_url = \"{}\"\n[after_call]\nsummary = \"transcript\"\nsms_opt_out_file = \"{}\"\n",
            emulator.rest_base_url(),
            emulator.sideband_url(),
            opt_out.display()
        ),
    );
    // umask 000 for the child: the modes must not depend on it.
    let old = unsafe { libc::umask(0) };
    let controller = Controller::start(
        &config,
        "trace",
        &[
            ("RUST_LOG", "trace"),
            ("VOXMACHINA_SECRET_ORDERS_TOKEN", TOOL_SECRET),
        ],
    );
    unsafe { libc::umask(old) };

    let script = Script::new()
        .from(format!("<sip:{CALLER}@pstn.example.com>;tag=t1"))
        .auto_reply(false)
        .greeting_wait_ms(300)
        .turn_gap_ms(20)
        .tool_timeout_ms(3_000)
        .tool("lookup_order", json!({"order_id": "SK-1234"}))
        .caller("Thanks. And please don't text me.")
        .wait_ms(100)
        .hangup();
    let placed = emulator
        .place_call(&controller.webhook_url(), &webhook_secret(), script)
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let view = wait_view(
        &emulator,
        &placed.call_id,
        Duration::from_secs(20),
        "the tool output",
        |v| !v.function_outputs.is_empty() && v.script_done,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        if let Some(r) = controller.admin_call(&placed.call_id).await {
            if r["call"]["after_call"]["sms"].is_object() {
                break r;
            }
        }
        assert!(Instant::now() < deadline, "the call never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["call"]["after_call"]["sms"]["status"], "opted_out");

    // What reached the model: every encoded copy of the secret is gone.
    let output = &view.function_outputs[0].1;
    let basic = STANDARD.encode(format!("svc:{TOOL_SECRET}"));
    for (k, v) in echoes.as_object().unwrap() {
        if k == "order" {
            continue;
        }
        let v = v.as_str().unwrap();
        // Of a `Basic` credential only the characters next to the user name may remain.
        let probe = if k == "basic" {
            &basic[8..basic.len() - 8]
        } else {
            v
        };
        assert!(!output.contains(probe), "{k} reached the model: {output}");
    }
    assert!(
        output.contains("SK-1234") && output.contains("***"),
        "{output}"
    );

    // The log at trace level: our own debug/trace lines are there, no secret in any form.
    let logs = controller.log_text();
    assert!(
        logs.contains("\"level\":\"TRACE\"") || logs.contains("\"level\":\"DEBUG\""),
        "RUST_LOG=trace is honoured for our own targets"
    );
    let whsec = webhook_secret();
    let whsec_key = whsec.trim_start_matches("whsec_").to_string();
    for secret in [API_KEY, ADMIN_TOKEN, TOOL_SECRET, &whsec, &whsec_key] {
        for form in forms(secret) {
            assert!(
                !logs.contains(&form),
                "a form of a secret ({form}) is in the trace log"
            );
        }
    }
    assert!(
        !logs.contains("Bearer "),
        "no Authorization header in the log"
    );

    // Files: 0600 in 0700 directories, under umask 000.
    let db = dir.path().join("state/db/voxmachina.db");
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&dir.path().join("state/db")), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(std::fs::read_to_string(&opt_out).unwrap().trim(), CALLER);
    assert_eq!(mode(&opt_out), 0o600);
    assert_eq!(mode(opt_out.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("private")), 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_never_relays_the_callers_words_and_goes_out_once_per_window() {
    let twilio = FakeTwilio::start().await;
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("default.toml"),
        "default = true\ngreeting = \"Hi.\"\n[after_call.sms]\ntemplate = \"Acme: you asked about {{summary.intent}} Reply STOP to opt out.\"\nallow_transcript_fields = true\n",
    )
    .unwrap();
    std::fs::write(prompts.join("default.md"), "You answer the test line.\n").unwrap();
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.after_call.summary = SummaryMode::Transcript;
    config.after_call.sms_opt_out_file = dir.path().join("opt_out.txt");
    config.after_call.sms_window_secs = 3_600;
    config.twilio.api_base_url = twilio.base_url.clone();
    config.twilio.account_sid = support::fake_twilio::ACCOUNT_SID.into();
    config.twilio.from_number = "+18005550000".into();
    let mut secrets = test_secrets();
    secrets.twilio_auth_token = Some(twilio.auth_token());
    let server = app::start(config, secrets).await.unwrap();
    let h = Harness {
        emulator,
        server,
        dir,
        http: reqwest::Client::new(),
    };
    let phish = "Hello, my bank said to visit https://evil.example/login?acct=1 or secure-paypa1.com/verify and call +1 (415) 555-0199 to fix my order.";
    let script = |from: &str| {
        Script::new()
            .from(format!("<sip:{from}@pstn.example.com>;tag=t1"))
            .greeting_wait_ms(200)
            .caller(phish)
            .wait_ms(100)
            .hangup()
    };
    let (_, _, r) = h.call_to_end(script(CALLER)).await;
    let r = h
        .wait_record(&r.call_id, Duration::from_secs(10), |r| {
            r.after_call.sms.is_some()
        })
        .await;
    assert_eq!(r.after_call.sms.as_ref().unwrap().status, "sent", "{r:#?}");
    let messages = twilio.messages();
    assert_eq!(messages.len(), 1);
    let body = &messages[0].body;
    assert_eq!(messages[0].to, CALLER);
    for relayed in [
        "https://",
        "evil.example",
        "paypa1.com",
        "555-0199",
        "(415)",
        phish,
    ] {
        assert!(!body.contains(relayed), "{relayed} was texted: {body}");
    }
    assert!(body.starts_with("Acme: you asked about Hello, my bank said to visit [removed]"));

    // A second call from the same number within the window: no second SMS.
    let (_, _, r2) = h.call_to_end(script(CALLER)).await;
    let r2 = h
        .wait_record(&r2.call_id, Duration::from_secs(10), |r| {
            r.after_call.sms.is_some()
        })
        .await;
    let sms2 = r2.after_call.sms.clone().unwrap();
    assert_eq!(
        (sms2.status.as_str(), sms2.reason.as_deref()),
        ("skipped", Some("sent_within_window"))
    );
    assert_eq!(twilio.messages().len(), 1);
    // Another number has its own window.
    let (_, _, r3) = h.call_to_end(script("+14155550177")).await;
    h.wait_record(&r3.call_id, Duration::from_secs(10), |r| {
        r.after_call
            .sms
            .as_ref()
            .is_some_and(|s| s.status == "sent")
    })
    .await;
    assert_eq!(twilio.messages().len(), 2);
}
