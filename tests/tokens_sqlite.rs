//! Handover tokens on the SQLite store beyond the conformance cases: collisions, the schema
//! migration that added them, purge, and the `token` commands with the default backend.

mod support;

use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use tempfile::TempDir;
use voxmachina::calls::record::CallState;
use voxmachina::store::sqlite::SCHEMA_VERSION;
use voxmachina::store::tokens::{MINT_ATTEMPTS, generate_token};
use voxmachina::store::{HandoverPayload, SqliteStore, Store, StoreError};

use support::store_conformance::{at_ms, handover, record};

fn t0() -> DateTime<Utc> {
    at_ms(1_767_225_600_000) // 2026-01-01T00:00:00Z
}

fn open() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tokens.db")).unwrap();
    (store, dir)
}

/// A collision moves on to the next candidate; an expired token's value may be reused; when
/// every candidate collides the mint fails after `MINT_ATTEMPTS` tries.
#[tokio::test]
async fn mint_retries_on_collision() {
    let (store, _dir) = open();
    let t = t0();
    let ttl = Duration::minutes(10);
    let (a, b) = ("0000000001".to_string(), "0000000002".to_string());
    let pa = handover("rtc_a", None, t);
    let pb = handover("rtc_b", None, t);
    assert_eq!(
        store
            .mint_token_from(&pa, ttl, t, [a.clone()])
            .await
            .unwrap(),
        a
    );
    assert_eq!(
        store
            .mint_token_from(&pb, ttl, t, [a.clone(), b.clone()])
            .await
            .unwrap(),
        b
    );
    assert_eq!(store.peek_token(&a, t).await.unwrap(), Some(pa));
    let err = store
        .mint_token_from(&pb, ttl, t, std::iter::repeat(a.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("after {MINT_ATTEMPTS} attempts")),
        "{err}"
    );
    assert!(matches!(
        store.mint_token_from(&pb, ttl, t, ["x".to_string()]).await,
        Err(StoreError::Invalid(_))
    ));
    // Reuse after expiry, with the new payload and expiry.
    let later = t + ttl;
    let pc = handover("rtc_c", Some("+14155550123"), later);
    assert_eq!(
        store
            .mint_token_from(&pc, ttl, later, [a.clone()])
            .await
            .unwrap(),
        a
    );
    assert_eq!(
        store
            .latest_handover_for_caller("+14155550123", later)
            .await
            .unwrap(),
        Some((a.clone(), pc.clone()))
    );
    assert_eq!(
        store
            .redeem_token(&a, later + ttl - Duration::milliseconds(1))
            .await
            .unwrap(),
        Some(pc)
    );
}

/// A version-2 file (before tokens) is migrated to version 3 on open, keeping its data.
#[tokio::test]
async fn opening_a_version_2_file_adds_the_token_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_call(&record("rtc_v1", CallState::Ended, t0()))
            .await
            .unwrap();
    }
    // Make it a version-2 file: what versions 3.. added gone, user_version 2.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE handover_tokens; ALTER TABLE calls DROP COLUMN media;
         ALTER TABLE calls DROP COLUMN twilio_call_sid; DROP TABLE call_leases;
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    assert!(store.get_call("rtc_v1").await.unwrap().is_some());
    let token = store
        .mint_token(&handover("rtc_v1", None, t0()), Duration::minutes(10), t0())
        .await
        .unwrap();
    assert!(store.peek_token(&token, t0()).await.unwrap().is_some());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

/// Purge drops expired tokens (they are not counted in `PurgeStats`) and keeps live ones.
#[tokio::test]
async fn purge_removes_expired_tokens() {
    let (store, _dir) = open();
    let t = t0();
    let expired = store
        .mint_token(&handover("rtc_old", None, t), Duration::minutes(1), t)
        .await
        .unwrap();
    let live = store
        .mint_token(&handover("rtc_new", None, t), Duration::minutes(30), t)
        .await
        .unwrap();
    let now = t + Duration::minutes(10);
    store.purge(now, at_ms(0)).await.unwrap();
    // Gone for good: not even a clock before its expiry finds it.
    assert_eq!(store.peek_token(&expired, t).await.unwrap(), None);
    assert!(store.peek_token(&live, now).await.unwrap().is_some());
}

/// A corrupt payload is reported as `Corrupt`, not as a missing token.
#[tokio::test]
async fn corrupt_token_payload_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path).unwrap();
    let token = store
        .mint_token(
            &handover("rtc_bad", Some("+1"), t0()),
            Duration::minutes(10),
            t0(),
        )
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE handover_tokens SET payload = '{nope'", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        store.peek_token(&token, t0()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.latest_handover_for_caller("+1", t0()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.redeem_token(&token, t0()).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// `voxmachina token show|redeem` on the default (SQLite) backend.
#[tokio::test]
async fn token_commands_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.db");
    let store = SqliteStore::open(&path).unwrap();
    let now = Utc::now();
    let payload = handover("rtc_cli", None, now);
    let token = store
        .mint_token(&payload, Duration::minutes(10), now)
        .await
        .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_voxmachina"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RUST_LOG")
            .env("VOXMACHINA_STORE__SQLITE_PATH", &path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["token", "show", &token]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: HandoverPayload = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, payload);
    let out = run(&["token", "redeem", &token]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<HandoverPayload>(&out.stdout).unwrap(),
        payload
    );
    for args in [
        ["token", "redeem", token.as_str()],
        ["token", "show", token.as_str()],
        ["token", "show", "Timeout"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unknown, already redeemed or expired"),
            "{args:?}"
        );
    }
    assert!(generate_token().len() == 10);
}
