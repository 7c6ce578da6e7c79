//! Configuration that keeps its types, through the real binary: an environment override of an
//! E.164 key reaches Twilio with its `+`, a bad E.164 value is refused naming its key (whatever
//! layer set it), and `check --explain` prints every key's layer and secrets as set/unset.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN, FakeTwilio};
use support::harness::{ADMIN_TOKEN, fixture_prompts};
use support::serve::Controller;

/// `voxmachina` with no `VOXMACHINA_*` overrides or secrets inherited from the test's own
/// environment.
fn voxmachina() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("VOXMACHINA_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("VOXMACHINA_")
            || [
                "OPENAI_API_KEY",
                "OPENAI_WEBHOOK_SECRET",
                "TWILIO_AUTH_TOKEN",
                "HUBSPOT_TOKEN",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("voxmachina.toml");
    std::fs::write(
        &path,
        format!(
            "[prompts]\ndir = \"{}\"\n[store]\nsqlite_path = \"{}\"\n{body}",
            fixture_prompts().display(),
            dir.join("state/v.db").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_id_from_the_environment_reaches_twilio_with_its_plus() {
    let twilio = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[logging]\nformat = \"json\"\n\
             [twilio]\napi_base_url = \"{}\"\npublic_url = \"https://voice.example.com\"\n",
            twilio.base_url
        ),
    );
    let controller = tokio::task::spawn_blocking(move || {
        Controller::start(
            &config,
            "env-plus",
            &[
                ("VOXMACHINA_TWILIO__FROM_NUMBER", "+18005550111"),
                ("VOXMACHINA_TWILIO__ACCOUNT_SID", ACCOUNT_SID),
                ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ],
        )
    })
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/calls/outbound", controller.addr))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "to": "+14155550123" }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 201, "{body}\n{}", controller.log_text());
    let reqs = twilio.requests();
    let create = reqs
        .iter()
        .find(|r| r.path.ends_with("/Calls.json"))
        .expect("a call create reached Twilio");
    assert_eq!(create.field("From"), Some("+18005550111"));
    assert_eq!(create.field("To"), Some("+14155550123"));
}

#[test]
fn a_bad_e164_number_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    // From the environment: the `+` forgotten.
    let config = write_config(dir.path(), "");
    let out = voxmachina()
        .args(["--config".as_ref(), config.as_os_str(), "check".as_ref()])
        .env("VOXMACHINA_TWILIO__FROM_NUMBER", "18005550111")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("twilio.from_number = \"18005550111\"")
            && stdout.contains("'+' then 8 to 15 digits"),
        "{stdout}"
    );
    // From the file: a short number for the Live trunk's caller ID; `serve` refuses it too.
    let config = write_config(
        dir.path(),
        "[openai.live_trunk]\nprovider_url = \"sips:trunk.example.com\"\nusername = \"u\"\n\
         password_secret = \"trunk_pw\"\ncaller_number = \"+1555\"\n",
    );
    let out = voxmachina()
        .args(["--config".as_ref(), config.as_os_str(), "check".as_ref()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("openai.live_trunk.caller_number = \"+1555\""),
        "{stdout}"
    );
    let out = voxmachina()
        .args(["--config".as_ref(), config.as_os_str(), "serve".as_ref()])
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_WEBHOOK_SECRET", support::harness::webhook_secret())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("openai.live_trunk.caller_number"),
        "{stderr}"
    );
}

#[test]
fn check_explain_prints_each_layer_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[webhook]\ntolerance_secs = 60\n");
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("twilio_auth_token"), "tw-secret-from-file\n").unwrap();
    let out = voxmachina()
        .args([
            "--config".as_ref(),
            config.as_os_str(),
            "check".as_ref(),
            "--explain".as_ref(),
        ])
        .env("VOXMACHINA_TWILIO__FROM_NUMBER", "+18005550111")
        .env("VOXMACHINA_CLUSTER__INSTANCE_ID", "007")
        .env("VOXMACHINA_SERVER__SHUTDOWN_GRACE_SECS", "9")
        .env("OPENAI_API_KEY", "sk-env-secret-value")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no line for {key} in\n{stdout}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        line("twilio.from_number"),
        "twilio.from_number = \"+18005550111\"  [env VOXMACHINA_TWILIO__FROM_NUMBER]"
    );
    assert_eq!(
        line("cluster.instance_id"),
        "cluster.instance_id = \"007\"  [env VOXMACHINA_CLUSTER__INSTANCE_ID]"
    );
    assert_eq!(
        line("server.shutdown_grace_secs"),
        "server.shutdown_grace_secs = 9  [env VOXMACHINA_SERVER__SHUTDOWN_GRACE_SECS]"
    );
    assert_eq!(
        line("webhook.tolerance_secs"),
        format!("webhook.tolerance_secs = 60  [file {}]", config.display())
    );
    assert_eq!(
        line("webhook.dedupe_ttl_hours"),
        "webhook.dedupe_ttl_hours = 72  [default]"
    );
    assert_eq!(
        line("OPENAI_API_KEY"),
        "OPENAI_API_KEY / openai_api_key: set  [env OPENAI_API_KEY]"
    );
    assert_eq!(
        line("TWILIO_AUTH_TOKEN"),
        format!(
            "TWILIO_AUTH_TOKEN / twilio_auth_token: set  [credential {}]",
            creds.join("twilio_auth_token").display()
        )
    );
    assert_eq!(
        line("HUBSPOT_TOKEN"),
        "HUBSPOT_TOKEN / hubspot_token: unset"
    );
    assert!(
        !stdout.contains("sk-env-secret-value") && !stdout.contains("tw-secret-from-file"),
        "{stdout}"
    );
    assert!(stdout.contains("default [default]"), "profiles checked too");
}
