//! Several instances: two real `voxmachina serve` processes on one DynamoDB (moto) and one
//! OpenAI emulator.
//!
//! - Duplicate deliveries of the same webhook (same `webhook-id`, and a second `webhook-id` for
//!   the same `call_id`) spread over both instances: every call is accepted exactly once, and
//!   monitored by exactly one instance (one sideband connection).
//! - `kill -9` of the instance monitoring a call: once its lease expires the other instance
//!   takes the lease over, reattaches the sideband (the emulator sees a second connection), and
//!   the call finishes normally (`transferred`) with the whole transcript stored.
//!
//! Skipped (with a printed reason) when no DynamoDB engine is available, like the other
//! DynamoDB tests (`tests/support/dynamodb.rs`).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::dynamodb::{REGION, endpoint, fresh_dynamo};
use support::harness::{API_KEY, fixture_prompts, webhook_secret};
use support::serve::{Controller, wait_view};
use voxmachina::calls::record::{CallState, Speaker};
use voxmachina::store::{DynamoStore, Store};
use voxmachina_emulator::{EmuCallStatus, Emulator, EmulatorConfig, Script};

/// A caller who asks one thing and hangs up.
const ASK_AND_HANG_UP: &str = r#"
[[turn]]
caller = "Hi, what are your opening hours?"
[[turn]]
hangup = true
"#;

/// A caller who asks something, pauses (the owner dies here), asks more, then asks for a
/// person.
const PAUSE_THEN_HUMAN: &str = r#"
[call]
from = '"Ada Lovelace" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl'
to = "<sip:+18005550100@sip.api.openai.com>"
[agent]
replies = ["We are open nine to five.", "Yes, there is parking behind the building."]
[[turn]]
caller = "Hi, what are your opening hours?"
[[turn]]
wait_ms = 4000
[[turn]]
caller = "And do you have parking?"
[[turn]]
caller = "Can I talk to a person please?"
"#;

fn script(toml: &str) -> Script {
    Script::from_toml_str(toml).expect("test script parses")
}

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .expect("emulator starts")
}

/// The shared config of both instances: DynamoDB tables `prefix` at `endpoint`, and the lease
/// timing given.
fn write_config(
    dir: &Path,
    emulator: &Emulator,
    endpoint: &str,
    prefix: &str,
    lease: (u64, u64, u64),
) -> PathBuf {
    let path = dir.join("voxmachina.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 2
[openai]
base_url = "{rest}"
sideband_url = "{sideband}"
request_timeout_ms = 2000
accept_retry_budget_ms = 3000
[prompts]
dir = "{prompts}"
[store]
backend = "dynamodb"
[store.dynamodb]
table_prefix = "{prefix}"
region = "{REGION}"
endpoint_url = "{endpoint}"
[cluster]
lease_ttl_ms = {ttl}
lease_renew_interval_ms = {renew}
takeover_scan_interval_ms = {scan}
[monitor]
reconnect_initial_delay_ms = 20
reconnect_max_delay_ms = 100
reconnect_max_attempts = 3
refer_outcome_window_ms = 1500
handoff_line_timeout_ms = 1500
[retention]
days = 0
[logging]
format = "json"
level = "info,voxmachina=debug"
"#,
            rest = emulator.rest_base_url(),
            sideband = emulator.sideband_url(),
            prompts = fixture_prompts().display(),
            ttl = lease.0,
            renew = lease.1,
            scan = lease.2,
        ),
    )
    .unwrap();
    path
}

/// One `voxmachina serve` child with instance id `id`.
/// Starts instance `id` of `voxmachina serve` on the shared config: AWS credentials for the
/// local engine, `[cluster] instance_id = id`.
fn node(config: &Path, id: &str) -> Controller {
    Controller::start(
        config,
        id,
        &[
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("VOXMACHINA_CLUSTER__INSTANCE_ID", id),
        ],
    )
}

/// Polls the store until the record of `call_id` satisfies `pred`; panics after `timeout`.
async fn wait_record(
    store: &DynamoStore,
    call_id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(CallState) -> bool,
) -> voxmachina::calls::record::CallRecord {
    let deadline = Instant::now() + timeout;
    loop {
        let rec = store.get_call(call_id).await.unwrap();
        if let Some(rec) = rec.filter(|r| pred(r.state)) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "record of {call_id}: {what} not reached within {timeout:?}: {:#?}",
            store.get_call(call_id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_over_two_instances_accept_each_call_once() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let prefix = store.tables().calls.trim_end_matches("_calls").to_string();
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emu, &endpoint, &prefix, (15_000, 5_000, 5_000));
    let a = node(&config, "vm-a");
    let b = node(&config, "vm-b");
    let secret = webhook_secret();

    let mut call_ids = Vec::new();
    for i in 0..3 {
        let pending = emu.new_call(script(ASK_AND_HANG_UP));
        let ts = chrono::Utc::now().timestamp();
        let wh = format!("wh_dup_{i}_{}", pending.call_id);
        let other = format!("wh_other_{i}_{}", pending.call_id);
        // The same delivery twice to each instance, plus a delivery with another webhook-id
        // for the same call_id, all at once.
        let deliveries = [
            (a.webhook_url(), wh.clone()),
            (b.webhook_url(), wh.clone()),
            (a.webhook_url(), wh.clone()),
            (b.webhook_url(), wh.clone()),
            (
                if i % 2 == 0 {
                    b.webhook_url()
                } else {
                    a.webhook_url()
                },
                other,
            ),
        ];
        let statuses = futures_util::future::join_all(
            deliveries
                .iter()
                .map(|(url, id)| emu.deliver(url, &secret, id, ts, &pending.body)),
        )
        .await;
        for s in statuses {
            assert_eq!(s.unwrap(), 200, "every delivery is answered 200");
        }
        call_ids.push(pending.call_id);
    }

    for call_id in &call_ids {
        let view = wait_view(&emu, call_id, Duration::from_secs(20), "hang-up", |v| {
            v.status == EmuCallStatus::CallerHungUp
        })
        .await;
        assert_eq!(view.accept_count, 1, "{call_id}: accepted once: {view:#?}");
        assert_eq!(
            view.sideband_connections, 1,
            "{call_id}: one monitor: {view:#?}"
        );
        let rec = wait_record(&store, call_id, Duration::from_secs(20), "final", |s| {
            s.is_final()
        })
        .await;
        assert_eq!(rec.state, CallState::Ended, "{rec:#?}");
        let events = store.events(call_id).await.unwrap();
        let accepted = events.iter().filter(|e| e.kind == "accepted").count();
        assert_eq!(accepted, 1, "{events:#?}");
        // Exactly one instance ran the monitor.
        let monitors: Vec<&str> = [("vm-a", &a), ("vm-b", &b)]
            .into_iter()
            .filter(|(_, n)| {
                n.call_lines(call_id)
                    .iter()
                    .any(|l| l.contains("sideband_attached") || l.contains("call ended"))
            })
            .map(|(id, _)| id)
            .collect();
        assert_eq!(monitors.len(), 1, "{call_id} monitored by {monitors:?}");
    }
    // Ended calls released their leases.
    let leases = store.leases().await.unwrap();
    assert!(
        leases.iter().all(|l| !call_ids.contains(&l.call_id)),
        "{leases:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_owner_lets_the_other_instance_take_over() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let prefix = store.tables().calls.trim_end_matches("_calls").to_string();
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    // Short leases: the survivor takes over about 1.5 s after the kill.
    let config = write_config(dir.path(), &emu, &endpoint, &prefix, (1_500, 300, 200));
    let mut a = node(&config, "vm-a");
    let b = node(&config, "vm-b");

    let placed = emu
        .place_call(
            &a.webhook_url(),
            &webhook_secret(),
            script(PAUSE_THEN_HUMAN),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let call_id = placed.call_id.clone();
    // a owns the call; the first caller line is stored, the caller is in the pause.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = store.transcript(&call_id).await.unwrap();
        if lines.iter().any(|l| l.speaker == Speaker::Caller) {
            break;
        }
        assert!(Instant::now() < deadline, "first caller line never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leases = store.leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| l.call_id == call_id)
        .expect("leased");
    assert_eq!(lease.owner, "vm-a");
    let before = emu.call(&call_id).unwrap();
    assert_eq!(before.sideband_connections, 1);
    assert_eq!(before.caller_lines.len(), 1, "killed during the pause");
    a.kill9();

    // b takes the lease over and reattaches the sideband.
    wait_view(&emu, &call_id, Duration::from_secs(20), "takeover", |v| {
        v.sideband_connections == 2
    })
    .await;
    let view = wait_view(&emu, &call_id, Duration::from_secs(20), "transfer", |v| {
        matches!(v.status, EmuCallStatus::Transferred { .. })
    })
    .await;
    assert_eq!(view.accept_count, 1, "{view:#?}");
    let rec = wait_record(&store, &call_id, Duration::from_secs(20), "final", |s| {
        s.is_final()
    })
    .await;
    assert_eq!(rec.state, CallState::Transferred, "{rec:#?}");
    // The whole conversation is in the one record: lines from before and after the kill.
    let transcript = store.transcript(&call_id).await.unwrap();
    let caller: Vec<&str> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        caller,
        [
            "Hi, what are your opening hours?",
            "And do you have parking?",
            "Can I talk to a person please?"
        ],
        "{transcript:#?}"
    );
    let events = store.events(&call_id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "sideband_attached").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        b.call_lines(&call_id)
            .iter()
            .any(|l| l.contains("reattaching call") && l.contains("vm-a")),
        "b logs the takeover from vm-a:\n{}",
        b.log_text()
    );
    // b released the lease when the call ended.
    let leases = store.leases().await.unwrap();
    assert!(leases.iter().all(|l| l.call_id != call_id), "{leases:#?}");
}
