//! Micro-benchmarks of `SqliteStore` on a real file (WAL, `synchronous=NORMAL`): the per-call
//! hot paths (webhook claim, create, transcript append, get) and a page of `list_calls`.
//!
//! Run with `cargo bench --bench store`. Times include the `spawn_blocking` hop.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use voxmachina::calls::record::{Api, CallRecord, CallState, Speaker, TranscriptLine};
use voxmachina::store::{CallQuery, SqliteStore, Store};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_767_225_600_000).expect("in range")
}

fn bench_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("bench.db")).expect("open");
    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed);

    // Seed 10k calls so reads and pages hit a realistically sized table.
    rt.block_on(async {
        for i in 0..10_000 {
            let mut r = CallRecord::new(format!("rtc_seed_{i}"), Api::Realtime, "wh", t0());
            r.created_at = t0() + Duration::milliseconds(i);
            r.state = if i % 10 == 0 {
                CallState::Active
            } else {
                CallState::Ended
            };
            store.create_call(&r).await.expect("seed");
        }
    });

    let mut g = c.benchmark_group("sqlite_store");
    g.sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));

    g.bench_function("claim_webhook_new", |b| {
        b.to_async(&rt).iter(|| {
            let id = format!("msg_{}", next());
            let s = store.clone();
            async move {
                s.claim_webhook(&id, t0(), t0() + Duration::minutes(5))
                    .await
                    .unwrap()
            }
        })
    });
    g.bench_function("create_call", |b| {
        b.to_async(&rt).iter(|| {
            let r = CallRecord::new(format!("rtc_b_{}", next()), Api::Realtime, "wh", t0());
            let s = store.clone();
            async move { s.create_call(&r).await.unwrap() }
        })
    });
    g.bench_function("append_transcript", |b| {
        b.to_async(&rt).iter(|| {
            let line = TranscriptLine {
                call_id: "rtc_seed_1".to_string(),
                speaker: Speaker::Agent,
                text: "Thanks for calling, how can I help you today?".to_string(),
                at: t0(),
                item_id: Some(format!("item_{}", next())),
            };
            let s = store.clone();
            async move { s.append_transcript(&line).await.unwrap() }
        })
    });
    g.bench_function("get_call", |b| {
        b.to_async(&rt).iter(|| {
            let id = format!("rtc_seed_{}", next() % 10_000);
            let s = store.clone();
            async move { s.get_call(&id).await.unwrap().expect("seeded") }
        })
    });
    g.bench_function("get_call_x8_concurrent", |b| {
        b.to_async(&rt).iter(|| {
            let s = store.clone();
            let base = next();
            async move {
                let reads = (0..8).map(|i| {
                    let s = s.clone();
                    let id = format!("rtc_seed_{}", (base * 8 + i) % 10_000);
                    async move { s.get_call(&id).await.unwrap().expect("seeded") }
                });
                futures_util::future::join_all(reads).await
            }
        })
    });
    g.bench_function("list_calls_100", |b| {
        b.to_async(&rt).iter(|| {
            let s = store.clone();
            async move { s.list_calls(&CallQuery::default()).await.unwrap() }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
