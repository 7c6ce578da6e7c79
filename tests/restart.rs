//! The real `voxmachina serve` binary as a child process, against an in-test OpenAI emulator and
//! a SQLite file in a temporary directory: restarts lose nothing.
//!
//! - `kill -9` in the middle of a call: the next start reattaches to the call's sideband within
//!   2 s, the rest of the conversation and the escalation land in the same record, the call ends
//!   `transferred`, `/accept` ran once and the caller was greeted once.
//! - SIGTERM in the middle of a call: webhooks get 503 while draining, the process exits 0 within
//!   `server.shutdown_grace_secs`, the call stays `active` (detached), the next start reattaches
//!   it and OpenAI's redelivery of the refused webhook is accepted.
//! - The systemd notify protocol (`Type=notify`, `WatchdogSec=`): READY=1 with a status line,
//!   WATCHDOG=1 at half of `$WATCHDOG_USEC`, RELOADING=1/READY=1 around SIGHUP, STOPPING=1.
//!
//! Every test also reads the child's JSON log lines: each line about a call carries its
//! `call_id`, and no secret, transcript text or full caller number is logged.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::harness::{ADMIN_TOKEN, API_KEY, fixture_prompts, webhook_secret};
use support::serve::{Controller, wait_view};
use voxmachina::calls::record::{CallState, Speaker};
use voxmachina::store::{SqliteStore, Store};
use voxmachina_emulator::script::DEFAULT_GREETING;
use voxmachina_emulator::{
    EmuCallStatus, Emulator, EmulatorConfig, EmulatorEvent, Script, SidebandClose,
};

const CALLER_NUMBER: &str = "+14155550123";

/// A caller who asks something, pauses (the controller dies here), asks more, then asks for a
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
wait_ms = 1500
[[turn]]
caller = "And do you have parking?"
[[turn]]
caller = "Can I talk to a person please?"
"#;

fn script(toml: &str) -> Script {
    Script::from_toml_str(toml).expect("test script parses")
}

/// A `wait_ms` longer than any drain in these tests, between the two caller lines.
fn long_pause_then_human(pause_ms: u64) -> Script {
    script(&PAUSE_THEN_HUMAN.replace("wait_ms = 1500", &format!("wait_ms = {pause_ms}")))
}

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .expect("emulator starts")
}

/// Writes the controller's config file (JSON logs, short timers) and returns its path.
fn write_config(dir: &Path, emulator: &Emulator, grace_secs: u64, prompts: &Path) -> PathBuf {
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
[monitor]
reconnect_initial_delay_ms = 20
reconnect_max_delay_ms = 100
reconnect_max_attempts = 3
refer_outcome_window_ms = 600
handoff_line_timeout_ms = 1500
[logging]
format = "json"
level = "info,voxmachina=debug"
"#,
            rest = emulator.rest_base_url(),
            sideband = emulator.sideband_url(),
            prompts = prompts.display(),
            db = db_path(dir).display(),
        ),
    )
    .unwrap();
    path
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("state/voxmachina.db")
}

fn caller_texts(detail: &Value) -> Vec<String> {
    detail["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["speaker"] == "caller")
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

/// Checks the JSON log lines of one controller run.
///
/// - every line is a JSON object (`logging.format = "json"`) without duplicate built-in keys;
/// - every line from the per-call modules (monitor, call control, escalation) carries
///   `span.call_id`, and every line naming a call's id in any field names it in the span too;
/// - at least `min_call_lines` lines carry `call_id` = `call_id`;
/// - no line contains the API key, the webhook secret, the admin token, the full caller number
///   or any caller line's text.
fn check_logs(lines: &[String], call_id: &str, min_call_lines: usize, said: &[&str]) {
    let mut with_id = 0;
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        // serde_json keeps the last of duplicate keys; a field named like a built-in key
        // (`target`, `message`, `level`, `span`) would shadow it in `jq` too.
        for key in ["\"target\":", "\"message\":", "\"level\":", "\"span\":"] {
            assert!(line.matches(key).count() <= 1, "duplicate {key} in {line}");
        }
        let target = v["target"].as_str().unwrap_or_default();
        let span_id = v.pointer("/span/call_id").and_then(Value::as_str);
        let per_call = [
            "voxmachina::calls",
            "voxmachina::escalation",
            "voxmachina::openai",
        ]
        .iter()
        .any(|t| target.starts_with(t));
        assert!(
            !per_call || span_id.is_some(),
            "per-call log line without span.call_id: {line}"
        );
        if line.contains("rtc_") {
            assert!(
                span_id.is_some(),
                "line names a call outside its span: {line}"
            );
        }
        if span_id == Some(call_id) {
            with_id += 1;
        }
        for secret in [API_KEY, &webhook_secret(), ADMIN_TOKEN, CALLER_NUMBER] {
            assert!(
                !line.contains(secret),
                "secret or caller number logged: {line}"
            );
        }
        for text in said {
            assert!(!line.contains(text), "transcript text logged: {line}");
        }
    }
    assert!(
        with_id >= min_call_lines,
        "only {with_id} log lines carry call_id {call_id}:\n{}",
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_call_then_restart_reattaches_and_loses_nothing() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emu, 5, &fixture_prompts());
    let mut first = Controller::start(&config, "first", &[]);

    let placed = emu
        .place_call(
            &first.webhook_url(),
            &webhook_secret(),
            script(PAUSE_THEN_HUMAN),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let call_id = placed.call_id.clone();
    // The first caller line is stored; the caller is now in the 1.5 s pause.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let detail = first.admin_call(&call_id).await;
        if detail.as_ref().is_some_and(|d| !caller_texts(d).is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "first caller line never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = emu.call(&call_id).unwrap();
    assert_eq!(
        before.caller_lines.len(),
        1,
        "killed during the pause: {before:#?}"
    );
    first.kill9();
    let first_logs = first.logs.lock().unwrap().clone();

    // Nothing ended the call: the store still says active.
    {
        let store = SqliteStore::open(&db_path(dir.path())).unwrap();
        let record = store.get_call(&call_id).await.unwrap().unwrap();
        assert_eq!(record.state, CallState::Active);
    }

    let restarted = Instant::now();
    let mut second = Controller::start(&config, "second", &[]);
    wait_view(&emu, &call_id, Duration::from_secs(2), "reattach", |v| {
        v.sideband_connections == 2
    })
    .await;
    let reattach = restarted.elapsed();
    assert!(
        reattach <= Duration::from_secs(2),
        "reattached after {reattach:?}"
    );

    let view = wait_view(&emu, &call_id, Duration::from_secs(10), "transfer", |v| {
        matches!(v.status, EmuCallStatus::Transferred { .. })
    })
    .await;
    // The controller records the outcome once the sideband closes after the REFER.
    let deadline = Instant::now() + Duration::from_secs(5);
    while second
        .admin_call(&call_id)
        .await
        .is_none_or(|d| d["call"]["state"] != "transferred")
    {
        assert!(Instant::now() < deadline, "record never became transferred");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.signal("TERM");
    let (status, _) = second.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");

    // One record, the whole conversation, one accept, one greeting.
    let store = SqliteStore::open(&db_path(dir.path())).unwrap();
    let calls = store.list_calls(&Default::default()).await.unwrap();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let record = &calls[0];
    assert_eq!(record.call_id, call_id);
    assert_eq!(record.state, CallState::Transferred, "{record:#?}");
    let esc = record.escalation.as_ref().expect("escalation recorded");
    assert_eq!(
        (esc.trigger.as_str(), esc.outcome.as_str()),
        ("caller_phrase", "transferred")
    );
    let transcript = store.transcript(&call_id).await.unwrap();
    let caller: Vec<_> = transcript
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
        ]
    );
    let agent: Vec<_> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Agent)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        agent.contains(&"Yes, there is parking behind the building."),
        "agent line after the restart stored: {agent:?}"
    );
    let events = store.events(&call_id).await.unwrap();
    let attaches: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "sideband_attached")
        .map(|e| e.detail["mode"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(attaches, ["fresh", "resume"]);
    for kind in [
        "escalation_triggered",
        "refer_sent",
        "transferred",
        "call_ended",
    ] {
        assert_eq!(
            events.iter().filter(|e| e.kind == kind).count(),
            1,
            "{kind} once in {:?}",
            events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
    }
    let accept_path = format!("/v1/realtime/calls/{call_id}/accept");
    let accepts = emu
        .requests()
        .iter()
        .filter(|r| r.path == accept_path)
        .count();
    assert_eq!(accepts, 1, "/accept called exactly once");
    assert_eq!(view.accept_count, 1);
    let greetings = view
        .client_events
        .iter()
        .filter(|e| e["type"] == "response.create")
        .filter(|e| {
            e.pointer("/response/instructions")
                .and_then(Value::as_str)
                .is_some_and(|i| i.starts_with("Greet the caller"))
        })
        .count();
    assert_eq!(greetings, 1, "greeted once, not again on reattach");
    assert_eq!(
        view.agent_lines
            .iter()
            .filter(|l| l.as_str() == DEFAULT_GREETING)
            .count(),
        1,
        "{:?}",
        view.agent_lines
    );
    assert_eq!(view.refer_targets, ["tel:+14155550100"]);

    let said = [
        "opening hours",
        "do you have parking",
        "talk to a person",
        "parking behind the building",
    ];
    check_logs(&first_logs, &call_id, 3, &said);
    let second_logs = second.logs.lock().unwrap().clone();
    check_logs(&second_logs, &call_id, 3, &said);
    assert!(
        second_logs
            .iter()
            .any(|l| l.contains("reattached live calls")),
        "the restart says it reattached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_503_detaches_and_the_next_start_reattaches() {
    const GRACE_SECS: u64 = 2;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emu, GRACE_SECS, &fixture_prompts());
    let mut first = Controller::start(&config, "first", &[]);
    let mut feed = emu.events();

    // The caller pauses far longer than the drain.
    let placed = emu
        .place_call(
            &first.webhook_url(),
            &webhook_secret(),
            long_pause_then_human(30_000),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let call_id = placed.call_id.clone();
    wait_view(
        &emu,
        &call_id,
        Duration::from_secs(5),
        "first caller line",
        |v| v.caller_lines.len() == 1 && v.agent_lines.len() == 2,
    )
    .await;

    let term_at = Instant::now();
    first.signal("TERM");
    first.wait_note(Duration::from_secs(2), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    // Draining: a new call's webhook is refused with 503 (OpenAI retries it later).
    let late = emu.new_call(script(
        "[[turn]]\ncaller = \"Can I talk to a person please?\"\n",
    ));
    let status = emu
        .deliver(
            &first.webhook_url(),
            &webhook_secret(),
            "wh_during_drain",
            chrono::Utc::now().timestamp(),
            &late.body,
        )
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(emu.call(&late.call_id).unwrap().accept_count, 0);

    let (status, _) = first.wait_exit(Duration::from_secs(GRACE_SECS + 5));
    let took = term_at.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(GRACE_SECS * 1000 - 200),
        "the live call was drained for the grace period, not dropped at once ({took:?})"
    );
    assert!(
        took <= Duration::from_millis(GRACE_SECS * 1000 + 1000),
        "exited {took:?} after SIGTERM, grace is {GRACE_SECS} s"
    );
    // The monitor closed its sideband cleanly; OpenAI's side of the call is untouched.
    let mut closed_by_client = false;
    while let Ok(ev) = feed.try_recv() {
        if let EmulatorEvent::SidebandClosed {
            call_id: c, how, ..
        } = ev
        {
            if c == call_id {
                closed_by_client = how == SidebandClose::ByClient;
            }
        }
    }
    assert!(closed_by_client, "detach closes the sideband from our side");
    let view = emu.call(&call_id).unwrap();
    assert_eq!(view.status, EmuCallStatus::Accepted);
    assert_eq!(view.hangup_count, 0);
    {
        let store = SqliteStore::open(&db_path(dir.path())).unwrap();
        let record = store.get_call(&call_id).await.unwrap().unwrap();
        assert_eq!(record.state, CallState::Active, "detached, still live");
        let kinds: Vec<_> = store
            .events(&call_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(!kinds.iter().any(|k| k == "call_ended"), "{kinds:?}");
        assert!(store.get_call(&late.call_id).await.unwrap().is_none());
    }
    let first_logs = first.logs.lock().unwrap().clone();

    // Restart: the call is reattached, the caller's remaining turns play on the new sideband.
    let restarted = Instant::now();
    let mut second = Controller::start(&config, "second", &[]);
    wait_view(&emu, &call_id, Duration::from_secs(2), "reattach", |v| {
        v.sideband_connections == 2
    })
    .await;
    assert!(restarted.elapsed() <= Duration::from_secs(2));
    // OpenAI redelivers the refused webhook (same webhook-id): now it is taken.
    let status = emu
        .deliver(
            &second.webhook_url(),
            &webhook_secret(),
            "wh_during_drain",
            chrono::Utc::now().timestamp(),
            &late.body,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    for id in [&call_id, &late.call_id] {
        wait_view(&emu, id, Duration::from_secs(10), "transfer", |v| {
            matches!(v.status, EmuCallStatus::Transferred { .. })
        })
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in [&call_id, &late.call_id] {
        while second
            .admin_call(id)
            .await
            .is_none_or(|d| d["call"]["state"] != "transferred")
        {
            assert!(Instant::now() < deadline, "{id} never became transferred");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let detail = second.admin_call(&call_id).await.unwrap();
    assert_eq!(
        caller_texts(&detail),
        [
            "Hi, what are your opening hours?",
            "And do you have parking?",
            "Can I talk to a person please?"
        ]
    );
    assert_eq!(emu.call(&call_id).unwrap().accept_count, 1);
    assert_eq!(emu.call(&late.call_id).unwrap().accept_count, 1);
    second.signal("TERM");
    let (status, took) = second.wait_exit(Duration::from_secs(GRACE_SECS + 5));
    assert!(status.success());
    assert!(
        took < Duration::from_secs(GRACE_SECS),
        "no live call left: no drain wait ({took:?})"
    );
    let said = ["opening hours", "do you have parking", "talk to a person"];
    check_logs(&first_logs, &call_id, 3, &said);
    check_logs(&second.logs.lock().unwrap(), &call_id, 3, &said);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_protocol_ready_watchdog_reload_stopping() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    support::harness::copy_prompts_with_closed_line(&prompts);
    let config = write_config(dir.path(), &emu, 1, &prompts);
    let profiles = std::fs::read_dir(&prompts)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    // WatchdogSec=0.6 s: pings expected every 0.3 s.
    let mut c = Controller::start(&config, "notify", &[("WATCHDOG_USEC", "600000")]);
    let ready = c.notes()[0].clone();
    assert!(
        ready.contains(&format!("{profiles} prompt profile(s); 0 live call(s)")),
        "{ready:?}"
    );
    std::thread::sleep(Duration::from_millis(1600));
    let pings: Vec<Instant> = c
        .notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1\n")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        (4..=8).contains(&pings.len()),
        "{} pings in 1.6 s at a 0.3 s period",
        pings.len()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < Duration::from_millis(600),
        "a gap of {widest:?} would trip a 0.6 s watchdog"
    );

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1 with the new profile count.
    std::fs::write(
        prompts.join("extra.toml"),
        "[match]\ndialed = [\"+18005550199\"]\n[escalation]\nenabled = false\n",
    )
    .unwrap();
    std::fs::write(prompts.join("extra.md"), "You answer the extra line.\n").unwrap();
    c.signal("HUP");
    let reloading = c.wait_note(Duration::from_secs(5), |m| m.contains("RELOADING=1"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let want = format!("{} prompt profile(s)", profiles + 1);
    c.wait_note(Duration::from_secs(5), |m| {
        m.contains("READY=1") && m.contains(&want)
    });
    let order: Vec<String> = c
        .notes()
        .into_iter()
        .filter(|m| !m.starts_with("WATCHDOG"))
        .collect();
    let r = order
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .unwrap();
    assert!(order[r + 1].contains("READY=1"), "{order:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    c.signal("TERM");
    let stopping = c.wait_note(Duration::from_secs(5), |m| m.contains("STOPPING=1"));
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    let (status, _) = c.wait_exit(Duration::from_secs(5));
    assert!(status.success());
    assert!(
        c.log_text().contains("systemd watchdog enabled"),
        "{}",
        c.log_text()
    );
}
