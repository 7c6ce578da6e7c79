//! [`SqliteStore`] against the store conformance suite (also behind the `ResilientStore` wrapper), plus SQLite-specific behaviour: file
//! layout, pragmas, schema version, reopening, corrupt rows and timestamp precision.

mod support;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use tempfile::TempDir;
use voxmachina::calls::record::{CallEvent, CallState, Speaker, TranscriptLine};
use voxmachina::store::sqlite::SCHEMA_VERSION;
use voxmachina::store::{CallQuery, CreateOutcome, SqliteStore, Store, StoreError};

use support::store_conformance::{at_ms, record};

/// A fresh store in its own temp dir (a real file); the dir lives as long as the guard.
async fn fresh_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("voxmachina.db")).expect("open store");
    (Arc::new(store), dir)
}

store_conformance_tests!(fresh_store);

/// The same suite through [`ResilientStore`] (what the controller actually uses): with a healthy
/// backend the wrapper must be invisible.
mod resilient {
    use super::*;
    use voxmachina::store::{HoldLimits, ResilientStore};

    async fn fresh_store() -> (Arc<dyn Store>, TempDir) {
        let (inner, dir) = super::fresh_store().await;
        (
            Arc::new(ResilientStore::new(inner, HoldLimits::default())),
            dir,
        )
    }

    store_conformance_tests!(fresh_store);
}

fn t0() -> DateTime<Utc> {
    at_ms(1_767_225_600_000) // 2026-01-01T00:00:00Z
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let t = t0();
    let mut rec = record("rtc_reopen", CallState::Active, t);
    rec.caller = Some("+14155550123".to_string());
    rec.accepted_at = Some(t + Duration::milliseconds(420));
    let line = TranscriptLine {
        call_id: rec.call_id.clone(),
        speaker: Speaker::Caller,
        text: "hello".to_string(),
        at: t + Duration::seconds(1),
        item_id: Some("item_a".to_string()),
    };
    let event = CallEvent {
        call_id: rec.call_id.clone(),
        at: t + Duration::seconds(2),
        kind: "accepted".to_string(),
        detail: json!({"profile": "default"}),
    };
    {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.create_call(&rec).await.unwrap(),
            CreateOutcome::Created
        );
        store.append_transcript(&line).await.unwrap();
        store.append_event(&event).await.unwrap();
        assert!(
            store
                .claim_webhook("msg_reopen", t, t + Duration::minutes(5))
                .await
                .unwrap()
        );
    } // every connection closed here

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get_call("rtc_reopen").await.unwrap(),
        Some(rec.clone())
    );
    assert_eq!(store.live_calls().await.unwrap(), vec![rec]);
    assert_eq!(
        store.transcript("rtc_reopen").await.unwrap(),
        vec![line.clone()]
    );
    assert_eq!(store.events("rtc_reopen").await.unwrap(), vec![event]);
    assert!(
        !store
            .claim_webhook("msg_reopen", t, t + Duration::minutes(5))
            .await
            .unwrap()
    );
    // The replay index survived too.
    store.append_transcript(&line).await.unwrap();
    assert_eq!(store.transcript("rtc_reopen").await.unwrap().len(), 1);
}

#[tokio::test]
async fn open_creates_parent_dirs_sets_wal_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("store.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    store.ping().await.unwrap();
    assert!(path.is_file());

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "call_events",
            "call_leases",
            "calls",
            "handover_tokens",
            "transcript_lines",
            "webhooks"
        ]
    );
    drop(conn);

    // Reopening an up-to-date file is a no-op migration.
    drop(store);
    SqliteStore::open(&path).unwrap().ping().await.unwrap();
}

#[tokio::test]
async fn open_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected Backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn open_fails_when_the_parent_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    assert!(matches!(
        SqliteStore::open(&blocker.join("store.db")),
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    for id in ["rtc_bad_state", "rtc_bad_usage", "rtc_bad_api"] {
        let rec = record(id, CallState::Active, t0());
        store.create_call(&rec).await.unwrap();
    }
    store
        .append_event(&CallEvent {
            call_id: "rtc_bad_state".to_string(),
            at: t0(),
            kind: "accepted".to_string(),
            detail: json!({}),
        })
        .await
        .unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE calls SET state = 'dancing' WHERE call_id = 'rtc_bad_state';
         UPDATE calls SET usage = '{not json' WHERE call_id = 'rtc_bad_usage';
         UPDATE calls SET api = 'carrier_pigeon' WHERE call_id = 'rtc_bad_api';
         UPDATE call_events SET detail = 'nope' WHERE call_id = 'rtc_bad_state';",
    )
    .unwrap();
    drop(conn);

    for id in ["rtc_bad_state", "rtc_bad_usage", "rtc_bad_api"] {
        match store.get_call(id).await {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("{id}: expected Corrupt, got {other:?}"),
        }
    }
    assert!(matches!(
        store.events("rtc_bad_state").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.list_calls(&CallQuery::default()).await,
        Err(StoreError::Corrupt(_))
    ));
    // A create that collides with a corrupt row reports it instead of inventing a record.
    let rec = record("rtc_bad_api", CallState::Accepting, t0());
    assert!(matches!(
        store.create_call(&rec).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn timestamps_keep_milliseconds_and_drop_sub_milliseconds() {
    let (store, _dir) = fresh_store().await;
    let exact = t0() + Duration::milliseconds(123);
    let fine = exact + Duration::nanoseconds(456_789);
    let mut rec = record("rtc_precision", CallState::Active, fine);
    rec.ended_at = Some(fine);
    store.create_call(&rec).await.unwrap();
    let got = store.get_call("rtc_precision").await.unwrap().unwrap();
    assert_eq!(got.created_at, exact);
    assert_eq!(got.ended_at, Some(exact));

    // Before the epoch too (floored to the millisecond below).
    let mut old = record("rtc_pre_epoch", CallState::Ended, at_ms(-1_500));
    old.accepted_at = Some(at_ms(-1_500) + Duration::microseconds(300));
    store.create_call(&old).await.unwrap();
    let got = store.get_call("rtc_pre_epoch").await.unwrap().unwrap();
    assert_eq!(got.created_at, at_ms(-1_500));
    assert_eq!(got.accepted_at, Some(at_ms(-1_500)));
}

/// On a fresh store the unbounded query variants (no `before`) can be checked exactly.
#[tokio::test]
async fn list_calls_without_before_on_a_fresh_store() {
    let (store, _dir) = fresh_store().await;
    let states = [
        CallState::Ended,
        CallState::Active,
        CallState::Ended,
        CallState::Missed,
    ];
    for (i, state) in states.into_iter().enumerate() {
        let rec = record(
            &format!("rtc_{i}"),
            state,
            t0() + Duration::seconds(i as i64),
        );
        store.create_call(&rec).await.unwrap();
    }
    let ids = |v: Vec<voxmachina::calls::record::CallRecord>| {
        v.into_iter().map(|r| r.call_id).collect::<Vec<_>>()
    };
    let all = store.list_calls(&CallQuery::default()).await.unwrap();
    assert_eq!(ids(all), ["rtc_3", "rtc_2", "rtc_1", "rtc_0"]);
    let ended = store
        .list_calls(&CallQuery {
            state: Some(CallState::Ended),
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(ended), ["rtc_2", "rtc_0"]);
    let top = store
        .list_calls(&CallQuery {
            limit: 3,
            ..CallQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(top), ["rtc_3", "rtc_2", "rtc_1"]);
}

/// Same `created_at`: ties break by `call_id`, descending for lists and ascending for live
/// calls, so paging and reattachment are deterministic.
#[tokio::test]
async fn equal_timestamps_order_by_call_id() {
    let (store, _dir) = fresh_store().await;
    for id in ["rtc_b", "rtc_c", "rtc_a"] {
        store
            .create_call(&record(id, CallState::Active, t0()))
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list_calls(&CallQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    assert_eq!(listed, ["rtc_c", "rtc_b", "rtc_a"]);
    let live: Vec<String> = store
        .live_calls()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    assert_eq!(live, ["rtc_a", "rtc_b", "rtc_c"]);
}

#[tokio::test]
async fn clones_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("shared.db")).unwrap();
    let clone = store.clone();
    clone
        .create_call(&record("rtc_clone", CallState::Active, t0()))
        .await
        .unwrap();
    assert!(store.get_call("rtc_clone").await.unwrap().is_some());
    assert!(format!("{store:?}").contains("shared.db"));
}

/// Reads on the reader connections see every write committed before them, while other writes
/// run concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_prior_writes_under_load() {
    let (store, _dir) = fresh_store().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("rtc_load_{i}");
            store
                .create_call(&record(&id, CallState::Active, t0()))
                .await
                .unwrap();
            assert!(
                store.get_call(&id).await.unwrap().is_some(),
                "{id} visible after create"
            );
            assert!(
                store
                    .transition_call(&id, &[CallState::Active], CallState::Ended)
                    .await
                    .unwrap()
            );
            assert_eq!(
                store.get_call(&id).await.unwrap().unwrap().state,
                CallState::Ended
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert!(store.live_calls().await.unwrap().is_empty());
}

/// A version-5 file (before call leases) migrates to 6: its live call is kept and can be
/// leased; purge drops expired leases of calls that are no longer live and keeps the others.
#[tokio::test]
async fn v5_file_migrates_to_leases_and_purge_drops_stale_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_call(&record("rtc_v4_live", CallState::Active, t0()))
            .await
            .unwrap();
        store
            .create_call(&record("rtc_v4_done", CallState::Ended, t0()))
            .await
            .unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE call_leases; PRAGMA user_version = 5;")
        .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    assert!(store.get_call("rtc_v4_live").await.unwrap().is_some());
    let ttl = Duration::seconds(15);
    for id in ["rtc_v4_live", "rtc_v4_done"] {
        assert!(store.acquire_lease(id, "vm-a", ttl, t0()).await.unwrap());
    }
    // Far later: both leases expired; only the one of the ended call goes.
    let later = t0() + Duration::days(1);
    store.purge(later, t0() - Duration::days(30)).await.unwrap();
    let left: Vec<String> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.call_id)
        .collect();
    assert_eq!(left, ["rtc_v4_live"]);
}
