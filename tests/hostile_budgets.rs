//! Hostile callers and models against a served instance (the real controller on 127.0.0.1:0,
//! the OpenAI emulator scripting the caller and the model, a real SQLite file), issue 13 items 2,
//! 3 and 10:
//!
//! - per-call budgets (`[limits]`): a DTMF flood, a message flood, a transcript flood, an
//!   event-row flood, a tool-call flood and too many tools at once each drop the extra input,
//!   end that call with `budget_exceeded:<budget>`, keep the stored rows within the budget, and
//!   leave the other calls on the instance alone;
//! - a monitor stuck past the drain grace is aborted at shutdown and its registry entry,
//!   capacity count and lease are released (handed back) by its drop guard;
//! - a webhook client that disconnects mid-accept does not strand the call; a record stuck in
//!   `accepting` is reconciled (a live call gets its monitor, a 404 marks it `missed`); leases
//!   of ended calls are released;
//! - the `voxmachina serve` process exits on SIGTERM within the grace plus a few seconds with a
//!   slow-header client and a live call held open.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use support::harness::{API_KEY, Harness, fixture_prompts, webhook_secret};
use support::serve::{Controller, wait_view};
use tokio::io::AsyncWriteExt;
use voxmachina::calls::budget::LimitsConfig;
use voxmachina::calls::record::{Api, CallRecord, CallState, Speaker};
use voxmachina::config::Config;
use voxmachina_emulator::{EmuCallStatus, Emulator, EmulatorConfig, Script};

const LONG: Duration = Duration::from_secs(20);

async fn start(limits: impl FnOnce(&mut LimitsConfig)) -> Harness {
    Harness::start_with(|c| limits(&mut c.limits)).await
}

/// A caller who asks a question, then for a manager (an escalation phrase): a normal call that
/// ends `transferred`.
fn polite_caller() -> Script {
    Script::new()
        .reply("We are open nine to five.")
        .caller("Hi, what are your opening hours?")
        .wait_ms(300)
        .caller("Thanks. Can I speak to a manager please?")
}

/// Places `script` (answered 200) and returns the call id.
async fn place(h: &Harness, script: Script) -> String {
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), script)
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    placed.call_id
}

/// Waits for the call to end and checks it was ended by `budget`: end reason, the
/// `budget_exceeded` event, the hang-up sent to OpenAI, and the event rows within
/// `max_event_rows`.
async fn assert_budget_end(h: &Harness, call_id: &str, budget: &str) -> CallRecord {
    let record = h.wait_record(call_id, LONG, |r| r.state.is_final()).await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert_eq!(
        record.end_reason.as_deref(),
        Some(format!("budget_exceeded:{budget}").as_str())
    );
    let events = h.events(call_id).await;
    let exceeded: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "budget_exceeded")
        .collect();
    assert_eq!(exceeded.len(), 1, "one budget_exceeded event");
    assert_eq!(exceeded[0].detail["budget"], budget);
    assert!(
        events.iter().any(|e| e.kind == "hangup_sent"),
        "the call was hung up: {:?}",
        events.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    assert!(
        events.len() <= h.server.state.config.limits.max_event_rows as usize,
        "{} event rows",
        events.len()
    );
    let view = wait_view(&h.emulator, call_id, LONG, "hang-up", |v| {
        v.status == EmuCallStatus::HungUp
    })
    .await;
    assert!(view.status.is_terminal());
    record
}

/// The value of one Prometheus sample of the served `/metrics` (0 when absent).
async fn metric(h: &Harness, sample: &str) -> f64 {
    let text = h
        .http
        .get(format!("{}/metrics", h.server.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the store holds no lease (every call's lease released when it ended; the
/// release follows the final record by a store write).
async fn wait_no_leases(h: &Harness) {
    let deadline = Instant::now() + LONG;
    loop {
        let leases = h.store().leases().await.unwrap();
        if leases.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "leases left: {leases:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_counted(h: &Harness, budget: &str) {
    let exceeded = format!("voxmachina_budget_exceeded_total{{budget=\"{budget}\"}}");
    let dropped = format!("voxmachina_budget_dropped_total{{budget=\"{budget}\"}}");
    assert!(metric(h, &exceeded).await >= 1.0, "{exceeded}");
    assert!(metric(h, &dropped).await >= 1.0, "{dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_flood_ends_that_call_only() {
    let h = start(|l| l.max_dtmf_events = 20).await;
    let flood = place(&h, Script::new().dtmf("5".repeat(1_000))).await;
    let polite = place(&h, polite_caller()).await;
    assert_budget_end(&h, &flood, "dtmf_events").await;
    let dtmf = h
        .events(&flood)
        .await
        .into_iter()
        .filter(|e| e.kind == "dtmf")
        .count();
    assert_eq!(dtmf, 20, "the keys past the budget were dropped");
    assert_counted(&h, "dtmf_events").await;
    // The other call on the instance went its normal way.
    let other = h.wait_final(&polite).await;
    assert_eq!(other.state, CallState::Transferred, "{other:#?}");
    assert!(
        h.transcript(&polite)
            .await
            .iter()
            .any(|l| l.speaker == Speaker::Caller && l.text.contains("manager"))
    );
    // Both leases are gone with their calls.
    wait_no_leases(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_is_cut_at_the_rate_budget() {
    let h = start(|l| {
        l.max_messages_per_sec = 50;
        l.max_message_burst = 100;
        l.max_dtmf_events = 1_000_000;
    })
    .await;
    let flood = place(&h, Script::new().dtmf("7".repeat(3_000))).await;
    assert_budget_end(&h, &flood, "messages_per_sec").await;
    let dtmf = h
        .events(&flood)
        .await
        .into_iter()
        .filter(|e| e.kind == "dtmf")
        .count();
    assert!(
        (1..200).contains(&dtmf),
        "{dtmf} of 3000 keys were processed"
    );
    assert_counted(&h, "messages_per_sec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_flood_keeps_the_stored_lines_within_budget() {
    let h = start(|l| l.max_transcript_lines = 10).await;
    let mut script = Script::new().auto_reply(false).turn_gap_ms(0);
    for i in 0..60 {
        script = script.caller(format!("Line number {i} of a caller who never stops."));
    }
    let flood = place(&h, script).await;
    assert_budget_end(&h, &flood, "transcript_lines").await;
    let lines = h.transcript(&flood).await;
    assert_eq!(lines.len(), 10, "{lines:#?}");
    assert_counted(&h, "transcript_lines").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_row_budget_bounds_the_event_log() {
    let h = start(|l| {
        l.max_event_rows = 64;
        l.max_dtmf_events = 1_000_000;
    })
    .await;
    let flood = place(&h, Script::new().dtmf("3".repeat(500))).await;
    assert_budget_end(&h, &flood, "event_rows").await;
    let events = h.events(&flood).await;
    assert!(events.len() <= 64, "{}", events.len());
    // The end of the call is recorded within the reserve.
    assert_eq!(events.last().unwrap().kind, "call_ended");
    assert_counted(&h, "event_rows").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_flood_stops_at_the_tool_budget() {
    let h = start(|l| l.max_tool_calls = 5).await;
    let mut script = Script::new().turn_gap_ms(0).tool_timeout_ms(200);
    for _ in 0..30 {
        script = script.tool("made_up_tool", json!({}));
    }
    let flood = place(&h, script).await;
    let record = assert_budget_end(&h, &flood, "tool_calls").await;
    let calls = h
        .events(&flood)
        .await
        .into_iter()
        .filter(|e| e.kind == "tool_call")
        .count();
    assert_eq!(calls, 5, "the calls past the budget never ran");
    assert_eq!(record.after_call.tools["made_up_tool"]["unknown_tool"], 5);
    assert_counted(&h, "tool_calls").await;
}

/// A tool service that accepts connections and never answers: every call of the tool stays
/// pending until its timeout.
async fn silent_service() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (base, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pending_tools_end_the_call() {
    let (base, _service) = silent_service().await;
    let h = Harness::start_with(|c| {
        c.limits.max_pending_tool_jobs = 2;
        c.tools.filler_after_ms = 0;
        let dir = &c.prompts.dir;
        std::fs::write(
            dir.join("slow.toml"),
            format!(
                "tools_base_url = \"{base}\"\n\
                 tools_allow_private_hosts = [\"127.0.0.1\"]\n[match]\ndialed = [\"+18005550177\"]\n\
                 [escalation]\nenabled = false\n\
                 [[tools]]\nname = \"stuck_lookup\"\ndescription = \"Never answers.\"\n\
                 timeout_ms = 10000\nhttp = {{ url = \"{{{{base_url}}}}/stuck\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("slow.md"), "You answer the slow-tools line.\n").unwrap();
    })
    .await;
    let mut script = Script::new()
        .to("<sip:+18005550177@sip.api.openai.com>")
        .turn_gap_ms(0)
        .tool_timeout_ms(1);
    for _ in 0..6 {
        script = script.tool("stuck_lookup", json!({}));
    }
    let flood = place(&h, script).await;
    assert_budget_end(&h, &flood, "pending_tool_jobs").await;
    assert_counted(&h, "pending_tool_jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_stuck_past_the_drain_grace_is_aborted_and_releases_everything() {
    let h = Harness::start_with(|c| {
        // Reconnecting for minutes: the monitor cannot see the detach while it retries.
        c.monitor.reconnect_max_attempts = 10_000;
        c.monitor.reconnect_initial_delay_ms = 50;
        c.monitor.reconnect_max_delay_ms = 200;
    })
    .await;
    let call_id = place(&h, Script::new().caller("Hello?").wait_ms(60_000)).await;
    h.wait_record(&call_id, LONG, |r| r.state == CallState::Active)
        .await;
    wait_view(&h.emulator, &call_id, LONG, "sideband attached", |v| {
        v.sideband_connections >= 1
    })
    .await;
    let state = h.server.state.clone();
    assert_eq!(state.registry().count_for_profile("default"), 1);
    // OpenAI becomes unreachable: the sideband drops and every reconnect is refused.
    h.emulator.shutdown();
    let store = h.store();
    let owner = state.monitors.leases.owner().to_string();
    let grace = Duration::from_millis(300);
    let started = Instant::now();
    h.server.shutdown(grace).await;
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_secs(6),
        "shutdown took {took:?}"
    );
    assert!(state.registry().is_empty(), "registry entry released");
    assert_eq!(state.registry().count_for_profile("default"), 0);
    // The lease was handed back (expired at once, still under this owner) for a takeover.
    let leases = store.leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| l.call_id == call_id)
        .expect("lease kept");
    assert_eq!(lease.owner, owner);
    assert!(lease.expires_at <= Utc::now(), "{lease:?}");
    // The call itself is still live for whoever reattaches it.
    let record = store.get_call(&call_id).await.unwrap().unwrap();
    assert!(record.state.is_live(), "{record:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_client_that_disconnects_mid_accept_does_not_strand_the_call() {
    let h = Harness::start_with(|c| {
        c.openai.request_timeout_ms = 4_000;
        c.openai.accept_retry_budget_ms = 5_000;
    })
    .await;
    let pending = h.emulator.new_call(
        Script::new()
            .accept_delay_ms(1_500)
            .caller("Are you still there?")
            .hangup(),
    );
    let (url, secret) = (h.webhook_url(), webhook_secret());
    let now = Utc::now().timestamp();
    // The delivery client gives up (OpenAI's timeout, a proxy reset) while /accept is running.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        h.emulator
            .deliver(&url, &secret, "wh_gives_up", now, &pending.body),
    )
    .await;
    assert!(gave_up.is_err(), "the client disconnected mid-accept");
    // The decision went on: accepted once, monitored, the conversation stored.
    let record = h
        .wait_record(&pending.call_id, LONG, |r| r.state.is_final())
        .await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert!(
        h.transcript(&pending.call_id)
            .await
            .iter()
            .any(|l| l.text == "Are you still there?")
    );
    let kinds = h.event_kinds(&pending.call_id).await;
    assert!(kinds.iter().any(|k| k == "sideband_attached"), "{kinds:?}");
    // OpenAI's redelivery is a duplicate and nothing is accepted twice.
    let status = h
        .emulator
        .deliver(&url, &secret, "wh_gives_up", now, &pending.body)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(h.successful_accepts(&pending.call_id), 1);
    wait_no_leases(&h).await;
}

/// Accepts `call_id` at the emulator directly, as a decision that then died would have.
async fn accept_directly(h: &Harness, call_id: &str) {
    let accepted = reqwest::Client::new()
        .post(format!(
            "{}/realtime/calls/{call_id}/accept",
            h.emulator.rest_base_url()
        ))
        .bearer_auth(API_KEY)
        .json(&json!({
            "type": "realtime",
            "model": "gpt-realtime",
            "audio": { "input": { "transcription": { "model": "gpt-4o-transcribe" } } },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
}

/// Stores a record of `call_id` left in `accepting` 30 s ago.
async fn insert_stuck(h: &Harness, call_id: &str, webhook_id: &str) {
    let long_ago = Utc::now() - chrono::Duration::seconds(30);
    let mut stuck = CallRecord::new(call_id, Api::Realtime, webhook_id, long_ago);
    stuck.profile = "default".into();
    h.store().create_call(&stuck).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stuck_in_accepting_are_reconciled() {
    let h = Harness::start_with(|c| {
        c.cluster.lease_ttl_ms = 1_000;
        c.cluster.lease_renew_interval_ms = 300;
        c.cluster.takeover_scan_interval_ms = 200;
    })
    .await;
    // A call accepted at OpenAI by a decision that died before recording it or starting its
    // monitor (its process was killed mid-decision): accepted at the emulator directly.
    let live = h.emulator.new_call(
        Script::new()
            .greeting_wait_ms(2_000)
            .caller("Hello, anyone there?")
            .hangup(),
    );
    accept_directly(&h, &live.call_id).await;
    insert_stuck(&h, &live.call_id, "wh_dead_1").await;
    // And one whose caller is gone: the sideband answers 404.
    let gone_id = format!("rtc_{:032x}", rand::random::<u128>());
    insert_stuck(&h, &gone_id, "wh_dead_2").await;

    let missed = h.wait_record(&gone_id, LONG, |r| r.state.is_final()).await;
    assert_eq!(missed.state, CallState::Missed, "{missed:#?}");
    assert_eq!(missed.end_reason.as_deref(), Some("accept_unconfirmed"));

    let record = h
        .wait_record(&live.call_id, LONG, |r| r.state.is_final())
        .await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert!(record.accepted_at.is_some());
    let kinds = h.event_kinds(&live.call_id).await;
    assert!(kinds.iter().any(|k| k == "accept_reconciled"), "{kinds:?}");
    let transcript = h.transcript(&live.call_id).await;
    assert!(
        transcript.iter().any(|l| l.text == "Hello, anyone there?"),
        "{record:#?} {transcript:#?} {kinds:?}"
    );
    // The caller, silent so far, was greeted.
    let view = h.emulator.call(&live.call_id).unwrap();
    assert_eq!(view.client_events[0]["type"], "response.create");
    // Leases end with their calls: none is left to renew.
    wait_no_leases(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_of_a_stuck_accept_reconciles_it_at_once() {
    // No scan during the test: only the redelivery can reconcile the call.
    let h = Harness::start_with(|c| c.cluster.takeover_scan_interval_ms = 600_000).await;
    let live = h
        .emulator
        .new_call(Script::new().caller("Hello after the redelivery").hangup());
    accept_directly(&h, &live.call_id).await;
    insert_stuck(&h, &live.call_id, "wh_redelivered").await;
    let status = h
        .emulator
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_redelivered",
            Utc::now().timestamp(),
            &live.body,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let record = h
        .wait_record(&live.call_id, LONG, |r| r.state.is_final())
        .await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert!(
        h.event_kinds(&live.call_id)
            .await
            .iter()
            .any(|k| k == "accept_reconciled")
    );
    assert_eq!(
        h.successful_accepts(&live.call_id),
        1,
        "never accepted twice"
    );
    wait_no_leases(&h).await;
}

fn write_serve_config(dir: &Path, emulator: &Emulator, grace_secs: u64) -> std::path::PathBuf {
    let path = dir.join("voxmachina.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = {grace_secs}
[openai]
base_url = "{rest}"
sideband_url = "{sideband}"
request_timeout_ms = 1000
accept_retry_budget_ms = 1500
[prompts]
dir = "{prompts}"
[store]
sqlite_path = "{db}"
[logging]
format = "json"
level = "info"
"#,
            rest = emulator.rest_base_url(),
            sideband = emulator.sideband_url(),
            prompts = fixture_prompts().display(),
            db = dir.join("state/voxmachina.db").display(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_with_a_slow_client_and_a_live_call() {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grace = 2;
    let config = write_serve_config(dir.path(), &emulator, grace);
    // The config parses with the section defaults.
    assert_eq!(
        Config::load(Some(&config)).unwrap().limits,
        LimitsConfig::default()
    );
    let mut c = Controller::start(&config, "sigterm", &[]);
    // A live call held open for a minute.
    let placed = emulator
        .place_call(
            &c.webhook_url(),
            &webhook_secret(),
            Script::new().caller("Hello").wait_ms(60_000),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    wait_view(&emulator, &placed.call_id, LONG, "sideband attached", |v| {
        v.sideband_connections >= 1
    })
    .await;
    // A slow-header client: one header byte every 200 ms, never finishing the request.
    let mut slow = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    slow.write_all(b"POST /openai/webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.signal("TERM");
    let (status, took) =
        tokio::task::block_in_place(|| c.wait_exit(Duration::from_secs(grace + 10)));
    dribble.abort();
    assert!(status.success(), "{status}: {}", c.log_text());
    assert!(
        took < Duration::from_secs(grace + 6),
        "exit took {took:?}: {}",
        c.log_text()
    );
}
