//! Declarative tools end to end: the real controller on 127.0.0.1:0, the OpenAI emulator playing
//! the model's function calls, and a local HTTP tool server (`support::tool_server`) standing in
//! for the business API.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use support::fake_hubspot::{self, FakeHubSpot};
use support::harness::{API_KEY, Harness, test_config, test_secrets};
use support::tool_server::{Answer, ToolServer};
use voxmachina::app;
use voxmachina::calls::record::{Api, CallRecord, CallState, CallSummary};
use voxmachina::config::{Config, Secret, Secrets};
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, Script};

/// The secret the tool server expects; it must never show up in logs, events or records.
const SECRET: &str = "tok-live-4f9a8b7c6d5e4f3a2b1c0d9e";
const FILLER: &str = "One moment while I look that up.";
const CALLER: &str = "+14155550123";

/// The test profile: one default profile with every kind of tool, aimed at the tool server.
fn profile(base: &str) -> String {
    format!(
        r#"
default = true
greeting = "Greet the caller."
tools_base_url = "{base}"
# The tool server runs on loopback: allowed by name, as an operator would allow an internal host.
tools_allow_private_hosts = ["127.0.0.1"]
filler_line = "{FILLER}"

[escalation]
target = "tel:+14155550100"

[[tools]]
name = "lookup_order"
description = "Look up an order."
[tools.parameters]
type = "object"
required = ["order_id"]
additionalProperties = false
[tools.parameters.properties.order_id]
type = "string"
pattern = "^SK-[0-9]{{4,8}}$"
[tools.http]
url = "{{{{base_url}}}}/orders/{{{{args.order_id}}}}"
headers = {{ Authorization = "Bearer {{{{secret:orders_token}}}}" }}
[tools.http.response]
pointer = "/order"
fields = ["order_id", "status", "expected_delivery", "courier", "items"]

[[tools]]
name = "slow_lookup"
description = "A slow service."
timeout_ms = 600
http = {{ url = "{{{{base_url}}}}/slow" }}

[[tools]]
name = "flaky"
description = "A failing service."
http = {{ url = "{{{{base_url}}}}/flaky" }}

[[tools]]
name = "garbled"
description = "A service answering HTML."
http = {{ url = "{{{{base_url}}}}/garbled" }}

[[tools]]
name = "echo"
description = "Posts an order line."
parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }}, qty = {{ type = "integer" }}, note = {{ type = "string" }} }}, required = ["order_id", "qty"] }}
[tools.http]
method = "POST"
url = "{{{{base_url}}}}/echo/{{{{args.order_id}}}}"
headers = {{ X-Api-Key = "{{{{secret:orders_token}}}}" }}
body = {{ order = "{{{{args.order_id}}}}", qty = "{{{{args.qty}}}}", note = "{{{{args.note}}}}", caller = "{{{{call.caller}}}}", source = "voice" }}

[[tools]]
name = "unconfigured"
description = "Needs a secret nobody set."
http = {{ url = "{{{{base_url}}}}/orders/x", headers = {{ Authorization = "Bearer {{{{secret:missing_token}}}}" }} }}

[[tools]]
builtin = "send_dtmf"

[[tools]]
builtin = "create_ticket"

[[tools]]
builtin = "lookup_call_history"
"#
    )
}

struct Setup {
    h: Harness,
    tools: ToolServer,
}

async fn start_with(adjust: impl FnOnce(&mut Config), secrets: Secrets) -> Setup {
    logs();
    let tools = ToolServer::start().await;
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("default.toml"), profile(&tools.base_url())).unwrap();
    std::fs::write(prompts.join("default.md"), "You are the tool test agent.\n").unwrap();
    let secrets_dir = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    std::fs::write(secrets_dir.join("orders_token"), format!("{SECRET}\n")).unwrap();
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.tools.secrets_dir = secrets_dir;
    config.tools.filler_after_ms = 150;
    config.tools.default_timeout_ms = 1_500;
    config.after_call.summary_timeout_ms = 500;
    config.after_call.sms_opt_out_file = dir.path().join("opt_out.txt");
    adjust(&mut config);
    let server = app::start(config, secrets)
        .await
        .expect("controller starts");
    Setup {
        h: Harness {
            emulator,
            server,
            dir,
            http: reqwest::Client::new(),
        },
        tools,
    }
}

async fn start() -> Setup {
    start_with(|_| {}, test_secrets()).await
}

/// A caller script: greeting, the given tool turns, then the caller hangs up.
fn script(tools: &[(&str, Value)]) -> Script {
    let mut s = Script::new()
        .from(format!("<sip:{CALLER}@pstn.example.com>;tag=t1"))
        .auto_reply(false)
        .greeting_wait_ms(300)
        .turn_gap_ms(20)
        .tool_timeout_ms(3_000);
    for (name, args) in tools {
        s = s.tool(*name, args.clone());
    }
    s.wait_ms(100).hangup()
}

impl Setup {
    /// Places the call, waits for it to end, returns the emulator's view.
    async fn call(&self, script: Script) -> (String, CallView, CallRecord) {
        self.h.call_to_end(script).await
    }

    /// `GET /v1/calls/{id}` as text.
    async fn call_json(&self, call_id: &str) -> String {
        self.h
            .admin(reqwest::Method::GET, &format!("/v1/calls/{call_id}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The function outputs the model received, parsed, in order.
fn outputs(view: &CallView) -> Vec<Value> {
    view.function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).expect("output is JSON"))
        .collect()
}

/// Asserts that every function output is followed by a `response.create` (the model is asked to
/// go on), possibly after a filler line's response.create.
fn each_output_followed_by_response(view: &CallView) {
    let ev = &view.client_events;
    for (i, e) in ev.iter().enumerate() {
        if e["type"] == "conversation.item.create" && e["item"]["type"] == "function_call_output" {
            assert!(
                ev[i + 1..]
                    .iter()
                    .take_while(|x| x["type"] != "conversation.item.create")
                    .any(|x| x["type"] == "response.create"
                        && x["response"]["conversation"] != "none"),
                "no response.create after output #{i}: {ev:#?}"
            );
        }
    }
}

/// Everything the process logged (all targets, TRACE), captured once per test binary.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || W(b.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buf
    })
    .clone()
}

fn logged_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_maps_the_answer_and_sends_the_secret_only_to_the_server() {
    let s = start().await;
    let (call_id, view, record) = s
        .call(script(&[("lookup_order", json!({"order_id": "SK-10423"}))]))
        .await;

    // The request: path from the template, secret header from the secrets directory.
    let seen = s.tools.seen_at("/v1/orders/SK-10423");
    assert_eq!(seen.len(), 1, "{:#?}", s.tools.seen());
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[0].headers["accept"], "application/json");

    // The output: the pointer and the field list applied.
    let out = outputs(&view);
    assert_eq!(
        out,
        [json!({
            "order_id": "SK-10423",
            "status": "shipped",
            "expected_delivery": "2026-09-18",
            "courier": "BlueDart",
            "items": [{"sku": "BT-AD141", "name": "boAt Airdopes 141", "qty": 1}]
        })]
    );
    each_output_followed_by_response(&view);

    // Recorded on the call: events, per-tool counts.
    assert_eq!(record.after_call.tools["lookup_order"]["ok"], 1);
    let events = s.h.events(&call_id).await;
    let result = events
        .iter()
        .find(|e| e.kind == "tool_result")
        .expect("tool_result event");
    assert_eq!(result.detail["outcome"], "ok");
    assert_eq!(result.detail["status"], 200);
    assert!(result.detail["duration_ms"].as_f64().unwrap() >= 0.0);

    // The secret is nowhere but on the wire to the tool server.
    let api = s.call_json(&call_id).await;
    assert!(api.contains("tool_result"), "{api}");
    assert!(!api.contains(SECRET), "secret in the call record/events");
    let text = logged_text();
    assert!(text.contains("tool finished"), "log capture works");
    assert!(!text.contains(SECRET), "secret in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_invalid_arguments_go_back_to_the_model_and_nothing_is_sent() {
    let s = start().await;
    let (call_id, view, record) = s
        .call(script(&[
            ("lookup_order", json!({"order_id": "12"})),
            ("lookup_order", json!({})),
            (
                "lookup_order",
                json!({"order_id": "SK-10423", "extra": true}),
            ),
        ]))
        .await;
    assert!(s.tools.seen().is_empty(), "{:#?}", s.tools.seen());
    let out = outputs(&view);
    assert_eq!(out.len(), 3);
    for o in &out {
        assert_eq!(o["error"]["code"], "invalid_arguments", "{o}");
        assert!(
            o["error"]["message"]
                .as_str()
                .unwrap()
                .contains("lookup_order")
        );
    }
    let problems = |i: usize| out[i]["error"]["problems"].to_string();
    assert!(problems(0).contains("does not match"), "{}", problems(0));
    assert!(problems(1).contains("order_id"), "{}", problems(1));
    assert!(problems(2).contains("extra"), "{}", problems(2));
    each_output_followed_by_response(&view);
    assert_eq!(
        record.after_call.tools["lookup_order"]["invalid_arguments"],
        3
    );
    let calls: Vec<_> =
        s.h.events(&call_id)
            .await
            .into_iter()
            .filter(|e| e.kind == "tool_call")
            .collect();
    assert_eq!(calls.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tool_gets_a_filler_line_then_times_out() {
    let s = start().await;
    s.tools.route(
        "/v1/slow",
        Answer::json(json!({"late": true})).delayed(2_000),
    );
    let started = std::time::Instant::now();
    let (call_id, view, record) = s.call(script(&[("slow_lookup", json!({}))])).await;
    let out = outputs(&view);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["error"]["code"], "timeout", "{}", out[0]);
    assert_eq!(record.after_call.tools["slow_lookup"]["timeout"], 1);
    assert!(started.elapsed() < Duration::from_secs(10));

    // The filler was spoken while the tool ran: before the output, as a quoted line.
    assert!(
        view.agent_lines.iter().any(|l| l == FILLER),
        "{:?}",
        view.agent_lines
    );
    let ev = &view.client_events;
    let filler_at = ev
        .iter()
        .position(|e| {
            e["type"] == "response.create"
                && e["response"]["instructions"]
                    .as_str()
                    .is_some_and(|i| i.contains(FILLER))
        })
        .expect("filler response.create");
    let output_at = ev
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    assert!(filler_at < output_at, "filler after the output: {ev:#?}");
    assert_eq!(
        ev[filler_at]["response"]["tool_choice"], "none",
        "the filler calls no tool"
    );
    each_output_followed_by_response(&view);
    let kinds = s.h.event_kinds(&call_id).await;
    assert!(kinds.iter().any(|k| k == "tool_filler"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_tools_get_no_filler() {
    let s = start().await;
    let (_, view, _) = s
        .call(script(&[("lookup_order", json!({"order_id": "SK-10423"}))]))
        .await;
    assert!(!view.agent_lines.iter().any(|l| l == FILLER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_bad_answers_become_error_objects() {
    let s = start().await;
    s.tools
        .route("/v1/flaky", Answer::text(503, "upstream down"));
    s.tools
        .route("/v1/garbled", Answer::text(200, "<html>maintenance</html>"));
    let (_, view, record) = s
        .call(script(&[
            ("flaky", json!({})),
            ("garbled", json!({})),
            ("lookup_order", json!({"order_id": "SK-99999"})),
        ]))
        .await;
    let out = outputs(&view);
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(out[0]["error"]["code"], "upstream_error");
    assert_eq!(out[0]["error"]["status"], 503);
    assert_eq!(out[1]["error"]["code"], "bad_response");
    assert!(
        !out[1].to_string().contains("maintenance"),
        "raw HTML is not passed on"
    );
    assert_eq!(out[2]["error"]["code"], "not_found");
    assert_eq!(out[2]["error"]["status"], 404);
    assert_eq!(out[2]["error"]["detail"]["error"], "not found");
    each_output_followed_by_response(&view);
    let t = &record.after_call.tools;
    assert_eq!(t["flaky"]["http_error"], 1);
    assert_eq!(t["garbled"]["bad_response"], 1);
    assert_eq!(t["lookup_order"]["http_error"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_keeps_types_and_echoed_secrets_are_redacted() {
    let s = start().await;
    s.tools
        .route("/v1/echo/SK%2F1%3Fa%3Db", Answer::echo_headers());
    let (call_id, view, _) = s
        .call(script(&[(
            "echo",
            json!({"order_id": "SK/1?a=b", "qty": 2}),
        )]))
        .await;
    let seen = s.tools.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path, "/v1/echo/SK%2F1%3Fa%3Db",
        "argument percent-encoded"
    );
    assert_eq!(seen[0].headers["x-api-key"], SECRET);
    assert_eq!(
        seen[0].body,
        Some(json!({"order": "SK/1?a=b", "qty": 2, "caller": CALLER, "source": "voice"})),
        "whole-value placeholders keep the JSON type; a missing argument drops its key"
    );
    let out = outputs(&view);
    assert_eq!(out[0]["x-api-key"], "***", "{}", out[0]);
    assert!(!out[0].to_string().contains(SECRET));
    assert!(!s.call_json(&call_id).await.contains(SECRET));
    assert!(!logged_text().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_unknown_and_unconfigured_tools_answer_errors() {
    let s = start().await;
    let (_, view, record) = s
        .call(script(&[
            ("send_dtmf", json!({"digits": "1"})),
            ("made_up_tool", json!({})),
            ("unconfigured", json!({})),
            (
                "create_ticket",
                json!({"subject": "Broken", "description": "It broke."}),
            ),
        ]))
        .await;
    let out = outputs(&view);
    assert_eq!(out.len(), 4, "{out:#?}");
    assert_eq!(out[0]["error"]["code"], "unsupported");
    assert_eq!(out[1]["error"]["code"], "unknown_tool");
    assert_eq!(out[2]["error"]["code"], "not_configured");
    assert!(
        !out[2].to_string().contains("missing_token"),
        "the model is not told secret names"
    );
    assert_eq!(out[3]["error"]["code"], "not_configured");
    assert!(s.tools.seen().is_empty());
    each_output_followed_by_response(&view);
    assert_eq!(record.after_call.tools["made_up_tool"]["unknown_tool"], 1);

    let metrics =
        s.h.http
            .get(format!("{}/metrics", s.h.server.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for needle in [
        r#"voxmachina_tool_calls_total{tool="send_dtmf",outcome="unsupported"}"#,
        r#"voxmachina_tool_calls_total{tool="unknown",outcome="unknown_tool"}"#,
        r#"voxmachina_tool_calls_total{tool="unconfigured",outcome="not_configured"}"#,
        "voxmachina_tool_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ticket_finds_the_contact_and_opens_a_hubspot_ticket() {
    let hubspot = FakeHubSpot::start().await;
    let contact = hubspot.insert_contact(json!({"phone": CALLER}));
    let base = hubspot.base_url.clone();
    let mut secrets = test_secrets();
    secrets.hubspot_token = Some(Secret::new(fake_hubspot::TOKEN));
    let s = start_with(
        |c| {
            c.hubspot.enabled = true;
            c.hubspot.base_url = base;
        },
        secrets,
    )
    .await;
    let (call_id, view, _) = s
        .call(script(&[(
            "create_ticket",
            json!({"subject": "Damaged parcel", "description": "Box arrived crushed, order SK-10423."}),
        )]))
        .await;
    let out = outputs(&view);
    let tickets = hubspot.tickets();
    assert_eq!(tickets.len(), 1, "{out:#?}");
    assert_eq!(out[0]["status"], "created");
    assert_eq!(out[0]["ticket_id"], tickets[0].id);
    assert_eq!(tickets[0].properties["subject"], "Damaged parcel");
    let content = tickets[0].properties["content"].as_str().unwrap();
    assert!(
        content.contains("SK-10423") && content.contains(&call_id),
        "{content}"
    );
    assert_eq!(tickets[0].associations[0].0, contact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_call_history_returns_this_callers_previous_calls() {
    let s = start().await;
    let store = s.h.store();
    let mut old = CallRecord::new(
        "rtc_previous_1",
        Api::Realtime,
        "wh_prev",
        Utc::now() - chrono::Duration::days(2),
    );
    old.caller = Some(CALLER.into());
    old.profile = "default".into();
    old.state = CallState::Ended;
    old.end_reason = Some("end_call".into());
    old.after_call.summary = Some(CallSummary {
        intent: "Double charge on the March invoice".into(),
        outcome: "Ticket opened".into(),
        key_facts: vec![],
        source: "model".into(),
    });
    store.create_call(&old).await.unwrap();
    let mut other = CallRecord::new("rtc_other", Api::Realtime, "wh_other", Utc::now());
    other.caller = Some("+19995550000".into());
    store.create_call(&other).await.unwrap();

    let (_, view, _) = s.call(script(&[("lookup_call_history", json!({}))])).await;
    let out = outputs(&view);
    let calls = out[0]["calls"].as_array().expect("calls array");
    assert_eq!(calls.len(), 1, "{out:#?}");
    assert_eq!(calls[0]["intent"], "Double charge on the March invoice");
    assert_eq!(calls[0]["state"], "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_test_command_runs_one_tool_against_its_endpoint() {
    let tools = ToolServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("default.toml"), profile(&tools.base_url())).unwrap();
    std::fs::write(prompts.join("default.md"), "Agent.\n").unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("orders_token"), SECRET).unwrap();
    let paths = (dir.path().to_path_buf(), prompts.clone(), secrets.clone());
    let p = paths.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(
            &p,
            &[
                "tool",
                "test",
                "default",
                "lookup_order",
                r#"{"order_id":"SK-10423"}"#,
            ],
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["status"], "shipped");
    assert!(v.get("internal_margin_inr").is_none());
    assert_eq!(tools.seen().len(), 1);
    assert_eq!(
        tools.seen()[0].headers["authorization"],
        format!("Bearer {SECRET}")
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));

    let p = paths.clone();
    let bad = tokio::task::spawn_blocking(move || {
        run_cli(
            &p,
            &[
                "tool",
                "test",
                "default",
                "lookup_order",
                r#"{"order_id":"nope"}"#,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("invalid_arguments"));
    assert_eq!(tools.seen().len(), 1, "invalid arguments are not sent");

    let p = paths.clone();
    let missing = tokio::task::spawn_blocking(move || {
        run_cli(&p, &["tool", "test", "default", "end_call", "{}"])
    })
    .await
    .unwrap();
    assert_eq!(missing.status.code(), Some(2), "acts on a live call");
}

/// Runs the real binary in `dir` with the test prompts and secrets directories.
fn run_cli(
    (dir, prompts, secrets): &(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .args(args)
        .current_dir(dir)
        .env("VOXMACHINA_PROMPTS__DIR", prompts)
        .env("VOXMACHINA_TOOLS__SECRETS_DIR", secrets)
        .env("VOXMACHINA_STORE__SQLITE_PATH", dir.join("v.db"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Writes a v1 database (before the after_call column) and checks it opens, migrates and reads.
#[tokio::test]
async fn v1_database_migrates_to_the_after_call_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    v1_database(&path);
    let store = voxmachina::store::SqliteStore::open(&path).unwrap();
    use voxmachina::store::Store as _;
    let r = store.get_call("rtc_old").await.unwrap().expect("old row");
    assert_eq!(r.after_call, Default::default());
    let mut r2 = r.clone();
    r2.after_call
        .extracted
        .insert("confirmation_number".into(), "R7K2P9".into());
    store.update_call(&r2).await.unwrap();
    assert_eq!(store.get_call("rtc_old").await.unwrap(), Some(r2));
}

fn v1_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE calls (
            call_id TEXT PRIMARY KEY NOT NULL, api TEXT NOT NULL, state TEXT NOT NULL,
            profile TEXT NOT NULL, caller TEXT, dialed TEXT, sip_call_id TEXT,
            webhook_id TEXT NOT NULL, created_at INTEGER NOT NULL, accepted_at INTEGER,
            ended_at INTEGER, end_reason TEXT, escalation TEXT, usage TEXT NOT NULL);
         CREATE INDEX calls_by_created ON calls (created_at, call_id);
         CREATE INDEX calls_by_state_created ON calls (state, created_at, call_id);
         CREATE TABLE transcript_lines (id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL,
            speaker TEXT NOT NULL, text TEXT NOT NULL, at INTEGER NOT NULL, item_id TEXT);
         CREATE INDEX transcript_lines_by_call ON transcript_lines (call_id, id);
         CREATE UNIQUE INDEX transcript_lines_replay
            ON transcript_lines (call_id, speaker, item_id) WHERE item_id IS NOT NULL;
         CREATE TABLE call_events (id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL,
            at INTEGER NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
         CREATE INDEX call_events_by_call ON call_events (call_id, id);
         CREATE TABLE webhooks (webhook_id TEXT PRIMARY KEY NOT NULL, received_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL);
         CREATE INDEX webhooks_by_expiry ON webhooks (expires_at);
         INSERT INTO calls VALUES ('rtc_old', 'realtime', 'ended', 'default', '+14155550123', NULL,
            NULL, 'wh_1', 1700000000000, NULL, 1700000060000, 'end_call', NULL,
            '{\"responses\":1,\"input_tokens\":1,\"output_tokens\":2,\"total_tokens\":3}');
         PRAGMA user_version = 1;",
    )
    .unwrap();
}
