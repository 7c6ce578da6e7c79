//! SIGHUP reloads prompt profiles in the real binary without dropping calls; an invalid set is
//! refused and the previous profiles stay in force.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::harness::{API_KEY, copy_prompts_with_closed_line, webhook_secret};
use voxmachina::calls::record::CallState;
use voxmachina::store::{SqliteStore, Store};
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn call_to(dialed: &str) -> Script {
    Script::from_toml_str(&format!(
        "[call]\nfrom = \"<sip:+14155550123@c.example>;tag=1\"\nto = \"<sip:{dialed}@sip.api.openai.com>\"\n"
    ))
    .unwrap()
}

async fn profile_count(http: &reqwest::Client, base: &str) -> Option<u64> {
    let v: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["profiles"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_profiles_and_keeps_running_calls() {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.into(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    copy_prompts_with_closed_line(&prompts);
    let db = dir.path().join("v.db");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .arg("serve")
        .env("VOXMACHINA_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("VOXMACHINA_OPENAI__BASE_URL", emulator.rest_base_url())
        .env("VOXMACHINA_OPENAI__SIDEBAND_URL", emulator.sideband_url())
        .env("VOXMACHINA_PROMPTS__DIR", &prompts)
        .env("VOXMACHINA_STORE__SQLITE_PATH", &db)
        .env("OPENAI_API_KEY", API_KEY)
        .env("OPENAI_WEBHOOK_SECRET", webhook_secret())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut count = None;
    for _ in 0..200 {
        count = profile_count(&http, &base).await;
        if count.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(count, Some(6));
    let url = format!("{base}/openai/webhook");
    let pid = child.id().unwrap().to_string();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
    };

    // A long call on the default profile, up across both reloads.
    let long = emulator
        .place_call(&url, &webhook_secret(), call_to("+18005550100"))
        .await
        .unwrap();
    // Before the reload, +18005550177 goes to the default profile.
    let before = emulator
        .place_call(&url, &webhook_secret(), call_to("+18005550177"))
        .await
        .unwrap();

    std::fs::write(
        prompts.join("sales.toml"),
        "[match]\ndialed = [\"+18005550177\"]\n[session]\nvoice = \"sage\"\n",
    )
    .unwrap();
    std::fs::write(prompts.join("sales.md"), "You sell things.\n").unwrap();
    assert!(hup().success());
    let mut reloaded = false;
    for _ in 0..200 {
        if profile_count(&http, &base).await == Some(7) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "profile count never became 7");
    let after = emulator
        .place_call(&url, &webhook_secret(), call_to("+18005550177"))
        .await
        .unwrap();

    // An invalid edit is refused: the 7 profiles stay, sales still answers.
    std::fs::write(
        prompts.join("sales.toml"),
        "[match]\ndialed = [\"not-a-number\"]\n",
    )
    .unwrap();
    assert!(hup().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(profile_count(&http, &base).await, Some(7));
    let still = emulator
        .place_call(&url, &webhook_secret(), call_to("+18005550177"))
        .await
        .unwrap();

    let voice = |id: &str| {
        emulator.call(id).unwrap().accept_body.unwrap()["audio"]["output"]["voice"].clone()
    };
    assert_eq!(voice(&before.call_id), "marin");
    assert_eq!(voice(&after.call_id), "sage");
    assert_eq!(voice(&still.call_id), "sage");

    // The call that started before the reloads is still monitored and never dropped.
    let view = emulator.call(&long.call_id).unwrap();
    assert_eq!(view.sideband_connections, 1);
    child.kill().await.unwrap();
    let store = SqliteStore::open(&db).unwrap();
    let r = store.get_call(&long.call_id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.profile.as_str()),
        (CallState::Active, "default")
    );
    let r = store.get_call(&after.call_id).await.unwrap().unwrap();
    assert_eq!(r.profile, "sales");
}
