//! Benchmark: the tool round trip the controller adds.
//!
//! The real controller (in process, `app::start`, SQLite store) runs one call against the OpenAI
//! emulator; the scripted model calls an HTTP tool `TOOL_CALLS` times in a row. For each call
//! the emulator measures the time from writing `response.function_call_arguments.done` to
//! reading the matching `function_call_output` ([`CallView::tool_round_trips`]); the local tool
//! server measures its own handler time. The controller's overhead is the difference: event
//! parsing, argument validation against the JSON Schema, spawning the tool task, rendering the
//! request (URL template, secret header), the HTTP client and the loopback connection both ways,
//! mapping the answer (pointer, fields, size limit), and writing the output to the sideband.
//! It is an upper bound: hyper's request parsing on the tool server side is counted as overhead.
//!
//! The script leaves `GAP_MS` (default 20 ms) between the end of one tool turn and the next
//! function call, as a real call does (the model speaks, the caller answers): each call then
//! starts with an idle monitor instead of queueing behind the previous turn's transcript and
//! event writes. `GAP_MS=0` measures back-to-back calls.
//!
//! Run: `cargo bench --bench tools` (`TOOL_CALLS=1000` by default; the first 20 are warm-up).

#[path = "../tests/support/tool_server.rs"]
#[allow(dead_code)]
mod tool_server;

use std::time::Duration;

use serde_json::json;
use voxmachina::app;
use voxmachina::config::{Config, Secret, Secrets, SummaryMode};
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

const API_KEY: &str = "sk-bench";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WARMUP: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name:<34} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let calls: usize = std::env::var("TOOL_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let gap_ms: u64 = std::env::var("GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tools = tool_server::ToolServer::start().await;
        let emulator = Emulator::start(EmulatorConfig {
            api_key: API_KEY.into(),
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts");
        std::fs::create_dir_all(&prompts).unwrap();
        std::fs::write(
            prompts.join("default.toml"),
            format!(
                r#"default = true
tools_base_url = "{}"
# The tool server runs on loopback: allowed explicitly (tools may not reach loopback by default).
tools_allow_private_hosts = ["127.0.0.1"]
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
fields = ["order_id", "status", "expected_delivery", "items"]
"#,
                tools.base_url()
            ),
        )
        .unwrap();
        std::fs::write(prompts.join("default.md"), "Bench agent.\n").unwrap();
        let secrets_dir = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets_dir).unwrap();
        std::fs::write(secrets_dir.join("orders_token"), "bench-token-0001").unwrap();

        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.openai.base_url = emulator.rest_base_url();
        config.openai.sideband_url = emulator.sideband_url();
        config.prompts.dir = prompts;
        config.store.sqlite_path = dir.path().join("bench.db");
        config.tools.secrets_dir = secrets_dir;
        config.tools.filler_after_ms = 0;
        config.after_call.summary = SummaryMode::Off;
        let secrets = Secrets {
            openai_api_key: Secret::new(API_KEY),
            webhook_secret: Secret::new(SECRET),
            admin_token: None,
            twilio_auth_token: None,
            twilio_webhook_shared_key: None,
            hubspot_token: None,
        };
        let server = app::start(config, secrets).await.unwrap();

        let mut script = Script::new()
            .auto_reply(false)
            .greeting_wait_ms(0)
            .turn_gap_ms(gap_ms)
            .tool_timeout_ms(5_000);
        for _ in 0..calls + WARMUP {
            script = script.tool("lookup_order", json!({"order_id": "SK-10423"}));
        }
        script = script.hangup();
        let started = std::time::Instant::now();
        let placed = emulator
            .place_call(
                &format!("{}/openai/webhook", server.base_url()),
                SECRET,
                script,
            )
            .await
            .unwrap();
        assert_eq!(placed.status, 200);
        let view = emulator
            .wait_for(&placed.call_id, Duration::from_secs(600), |v| v.script_done)
            .await
            .expect("script finished");
        let elapsed = started.elapsed();

        let trips = &view.tool_round_trips;
        let seen = tools.seen();
        assert_eq!(trips.len(), calls + WARMUP, "every tool call answered");
        assert_eq!(seen.len(), calls + WARMUP, "every tool call reached the server");
        let ok = view
            .function_outputs
            .iter()
            .filter(|(_, o)| o.contains("\"shipped\""))
            .count();
        assert_eq!(ok, calls + WARMUP, "every output is the mapped order");
        let rt: Vec<f64> = trips[WARMUP..]
            .iter()
            .map(|t| t.micros as f64 / 1000.0)
            .collect();
        let handler: Vec<f64> = seen[WARMUP..]
            .iter()
            .map(|s| s.handler_micros as f64 / 1000.0)
            .collect();
        let overhead: Vec<f64> = rt.iter().zip(&handler).map(|(r, h)| r - h).collect();
        println!(
            "{calls} tool calls (+{WARMUP} warm-up) in one call, {gap_ms} ms between turns, {:.1} s in all",
            elapsed.as_secs_f64()
        );
        report("round trip (emulator view)", rt.clone());
        report("tool server handler", handler);
        report("controller overhead", overhead);
        // Split of the overhead: the HTTP leg as the controller timed it (`tool_result`
        // events' `duration_ms`: request sent → answer mapped), and the rest (sideband read,
        // parse, validation, task spawn, output write, emulator wake-ups).
        let events = server
            .state
            .store
            .events(&placed.call_id)
            .await
            .expect("events");
        let http: Vec<f64> = events
            .iter()
            .filter(|e| e.kind == "tool_result")
            .skip(WARMUP)
            .filter_map(|e| e.detail["duration_ms"].as_f64())
            .collect();
        if http.len() == rt.len() {
            let rest: Vec<f64> = rt.iter().zip(&http).map(|(r, h)| r - h).collect();
            report("  of which HTTP leg", http);
            report("  of which the rest", rest);
        }
        server.shutdown(Duration::from_secs(2)).await;
    });
}
