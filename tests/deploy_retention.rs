//! `[retention]`: the purge task runs at start (and hourly), removes finished calls older than
//! `retention.days` with their transcripts and events, keeps younger ones, drops expired
//! webhook-id dedupe entries, and does nothing with `days = 0`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use support::harness::{API_KEY, copy_prompts_with_closed_line, test_config, test_secrets};
use voxmachina::app;
use voxmachina::calls::record::{Api, CallEvent, CallRecord, CallState, Speaker, TranscriptLine};
use voxmachina::store::{SqliteStore, Store};
use voxmachina_emulator::{Emulator, EmulatorConfig};

/// A finished call created `days_ago` days ago, with one transcript line and one event.
async fn finished_call(store: &SqliteStore, call_id: &str, days_ago: i64) {
    let created = Utc::now() - chrono::Duration::days(days_ago);
    let mut record = CallRecord::new(call_id, Api::Realtime, format!("wh_{call_id}"), created);
    store.create_call(&record).await.unwrap();
    record.state = CallState::Ended;
    record.accepted_at = Some(created);
    record.ended_at = Some(created + chrono::Duration::minutes(3));
    record.end_reason = Some("call_ended".into());
    store.update_call(&record).await.unwrap();
    store
        .append_transcript(&TranscriptLine {
            call_id: call_id.into(),
            speaker: Speaker::Caller,
            text: "hello".into(),
            at: created,
            item_id: Some("item_1".into()),
        })
        .await
        .unwrap();
    store
        .append_event(&CallEvent::new(call_id, "call_ended", json!({})))
        .await
        .unwrap();
}

async fn seeded_store(dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(&dir.join("voxmachina.db")).unwrap());
    finished_call(&store, "rtc_old", 40).await;
    finished_call(&store, "rtc_recent", 5).await;
    let now = Utc::now();
    // A dedupe entry that expired an hour ago, and one still valid.
    assert!(
        store
            .claim_webhook(
                "wh_expired",
                now - chrono::Duration::hours(73),
                now - chrono::Duration::hours(1)
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_webhook("wh_valid", now, now + chrono::Duration::hours(72))
            .await
            .unwrap()
    );
    store
}

async fn start(dir: &std::path::Path, store: Arc<SqliteStore>, days: u64) -> app::Running {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.into(),
    })
    .await
    .unwrap();
    let prompts = dir.join("prompts");
    copy_prompts_with_closed_line(&prompts);
    let mut config = test_config(&emulator, dir, &prompts);
    config.retention.days = days;
    app::start_with_store(config, test_secrets(), store)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_at_start_removes_old_finished_calls_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(dir.path()).await;
    let running = start(dir.path(), store.clone(), 30).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.get_call("rtc_old").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the start-up purge never removed the 40-day-old call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.transcript("rtc_old").await.unwrap().is_empty());
    assert!(store.events("rtc_old").await.unwrap().is_empty());
    let recent = store.get_call("rtc_recent").await.unwrap();
    assert!(recent.is_some(), "a 5-day-old call is kept");
    assert_eq!(store.transcript("rtc_recent").await.unwrap().len(), 1);
    // The expired dedupe entry was dropped (claimable again); the valid one was kept.
    let now = Utc::now();
    let later = now + chrono::Duration::hours(72);
    assert!(store.claim_webhook("wh_expired", now, later).await.unwrap());
    assert!(!store.claim_webhook("wh_valid", now, later).await.unwrap());

    // A second pass has nothing left to do.
    let stats = app::purge_once(&running.state).await.unwrap();
    assert_eq!((stats.calls, stats.webhooks), (0, 0));
    running.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_days_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(dir.path()).await;
    let running = start(dir.path(), store.clone(), 0).await;
    assert!(app::purge_once(&running.state).await.is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.get_call("rtc_old").await.unwrap().is_some());
    assert!(store.get_call("rtc_recent").await.unwrap().is_some());
    running.shutdown(Duration::from_secs(1)).await;
}
