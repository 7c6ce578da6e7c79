//! Handover token latency: `mint_token` and `redeem_token`, p50/p99 over sequential operations,
//! the Connect Lambda handler (`escalation::connect::handle_json`, by token and by caller
//! number), plus a burst of concurrent mints, on SQLite (a real file, WAL) and on DynamoDB through the
//! local engine named by `VOXMACHINA_TEST_DYNAMODB_ENDPOINT` (skipped when unset).
//!
//! Run: `source tools/setup.d/10-dynamodb.sh` (starts moto; needs `cleanup_hooks=()` first
//! when not inside tools/test.sh), then `cargo bench --bench tokens`. Optional env:
//! `TOKENS_BENCH_N` (sequential operations per measurement, default 500).
//!
//! Latencies are wall-clock per call from the caller's side, including the `spawn_blocking`
//! hop (SQLite) or the HTTP round trip to the engine (DynamoDB). moto is a Python server:
//! its numbers measure the client path and moto, not AWS.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{Duration, Utc};
use serde_json::json;
use voxmachina::escalation::connect::{self, LambdaOptions};
use voxmachina::store::{DynamoStore, HandoverPayload, SqliteStore, Store};

fn payload(i: usize) -> HandoverPayload {
    HandoverPayload {
        call_id: format!("rtc_bench_{i}"),
        caller_number: Some(format!("+1415555{:04}", i % 10_000)),
        hubspot_contact_id: Some("5101".into()),
        hubspot_ticket_id: Some("90017".into()),
        summary: "Caller wants the March invoice resent and asked for a person.".into(),
        intent: Some("billing_question".into()),
        priority: Some("normal".into()),
        escalation_reason: "caller_phrase".into(),
        route_to_queue: Some("billing".into()),
        created_at: Utc::now(),
    }
}

fn percentile(sorted: &[StdDuration], p: f64) -> StdDuration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(label: &str, mut samples: Vec<StdDuration>) {
    samples.sort();
    let ms = |d: StdDuration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<38} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples")),
    );
}

async fn bench(name: &str, store: Arc<dyn Store>, n: usize) {
    let now = Utc::now();
    let ttl = Duration::minutes(10);
    // Warm-up: connections, prepared statements.
    for i in 0..20 {
        let t = store.mint_token(&payload(i), ttl, now).await.expect("mint");
        store.redeem_token(&t, now).await.expect("redeem");
    }
    let mut tokens = Vec::with_capacity(n);
    let mut mint = Vec::with_capacity(n);
    for i in 0..n {
        let p = payload(i);
        let start = Instant::now();
        let t = store.mint_token(&p, ttl, now).await.expect("mint");
        mint.push(start.elapsed());
        tokens.push(t);
    }
    let mut latest = Vec::with_capacity(200);
    for i in 0..n.min(200) {
        let caller = format!("+1415555{:04}", i % 10_000);
        let start = Instant::now();
        store
            .latest_handover_for_caller(&caller, now)
            .await
            .expect("latest")
            .expect("a live token for this caller");
        latest.push(start.elapsed());
    }
    let mut redeem = Vec::with_capacity(n);
    for t in &tokens {
        let start = Instant::now();
        let got = store.redeem_token(t, now).await.expect("redeem");
        redeem.push(start.elapsed());
        assert!(got.is_some(), "token {t} redeemed once");
    }
    report(&format!("{name} mint_token"), mint);
    report(&format!("{name} redeem_token"), redeem);
    report(&format!("{name} latest_for_caller(hit)"), latest);

    // The Connect Lambda handler (without the Lambda runtime): by keyed-in token, and by the
    // caller's number (lookup + redeem).
    let opts = LambdaOptions::default();
    let mut by_token = Vec::with_capacity(200);
    let mut by_number = Vec::with_capacity(200);
    for i in 0..n.min(200) {
        let mut p = payload(i);
        p.caller_number = Some(format!("+1415666{:04}", i % 10_000));
        let t = store.mint_token(&p, ttl, now).await.expect("mint");
        let event = json!({ "Details": { "ContactData": {}, "Parameters": { "token": t } } });
        let start = Instant::now();
        let out = connect::handle_json(store.as_ref(), &event, now, &opts).await;
        by_token.push(start.elapsed());
        assert_eq!(out["success"], "true");
        store.mint_token(&p, ttl, now).await.expect("mint");
        let event = json!({ "Details": { "ContactData": {
            "CustomerEndpoint": { "Address": p.caller_number, "Type": "TELEPHONE_NUMBER" } } } });
        let start = Instant::now();
        let out = connect::handle_json(store.as_ref(), &event, now, &opts).await;
        by_number.push(start.elapsed());
        assert_eq!(out["success"], "true", "{out:?}");
    }
    report(&format!("{name} lambda(token)"), by_token);
    report(&format!("{name} lambda(caller number)"), by_number);

    // A burst: 200 concurrent mints.
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move { store.mint_token(&payload(i), ttl, now).await.expect("mint") });
    }
    let mut distinct = std::collections::HashSet::new();
    while let Some(t) = tasks.join_next().await {
        distinct.insert(t.expect("task"));
    }
    let took = start.elapsed();
    assert_eq!(distinct.len(), 200);
    println!(
        "{:<38} 200 concurrent mints in {:.1} ms ({:.0}/s)",
        format!("{name} burst"),
        took.as_secs_f64() * 1000.0,
        200.0 / took.as_secs_f64()
    );
}

fn main() {
    let n: usize = std::env::var("TOKENS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = SqliteStore::open(&dir.path().join("tokens.db")).expect("open sqlite");
        bench("sqlite", Arc::new(sqlite), n).await;

        match std::env::var("VOXMACHINA_TEST_DYNAMODB_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => {
                let prefix = format!("vmbench{}", std::process::id());
                let store =
                    DynamoStore::new(DynamoStore::local_client(&endpoint, "us-east-1"), &prefix);
                store
                    .create_tables(StdDuration::from_secs(60))
                    .await
                    .expect("create tables");
                bench("dynamodb(moto)", Arc::new(store.clone()), n).await;
                store.delete_tables().await.expect("delete tables");
            }
            _ => println!(
                "dynamodb: skipped (VOXMACHINA_TEST_DYNAMODB_ENDPOINT is not set; source \
                 tools/setup.d/10-dynamodb.sh)"
            ),
        }
    });
}
