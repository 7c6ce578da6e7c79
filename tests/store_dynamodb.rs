//! `DynamoStore` against a local engine (moto in `tools/test.sh`): the backend-independent
//! conformance suite (including the token cases), table setup, the stored item layout the
//! contact-centre side relies on, collisions and concurrency specific to DynamoDB, and the
//! `dynamodb create-tables` / `token` commands with `backend = "dynamodb"`.
//!
//! Without an engine these tests skip (or fail under `CI`): see `tests/support/dynamodb.rs`.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveStatus,
};
use chrono::{DateTime, Duration, Utc};
use voxmachina::calls::record::{CallState, Speaker, TranscriptLine};
use voxmachina::store::dynamodb::TTL_ATTRIBUTE;
use voxmachina::store::tokens::MINT_ATTEMPTS;
use voxmachina::store::{DynamoStore, Store, StoreError};

use support::dynamodb::{REGION, endpoint, fresh_dynamo, fresh_store, unique_prefix};
use support::store_conformance::{at_ms, handover, record, uniq};

store_conformance_tests!(optional fresh_store);

fn t0() -> DateTime<Utc> {
    at_ms(1_767_225_600_000) // 2026-01-01T00:00:00Z
}

/// A random well-formed token (tests choose candidates to force collisions).
fn some_token() -> String {
    voxmachina::store::tokens::generate_token()
}

#[tokio::test]
async fn create_tables_is_idempotent_and_enables_ttl() {
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    // fresh_dynamo created them; a second run finds them all.
    let again = store
        .create_tables(StdDuration::from_secs(30))
        .await
        .unwrap();
    let names: Vec<&str> = again.iter().map(|t| t.table.as_str()).collect();
    assert_eq!(names, store.tables().all());
    assert!(again.iter().all(|t| !t.created), "{again:?}");
    let with_ttl: Vec<&str> = again
        .iter()
        .filter(|t| t.ttl_attribute.as_deref() == Some(TTL_ATTRIBUTE))
        .map(|t| t.table.as_str())
        .collect();
    assert_eq!(
        with_ttl,
        [
            store.tables().webhooks.as_str(),
            store.tables().tokens.as_str(),
            store.tables().leases.as_str(),
        ]
    );
    for table in [
        &store.tables().webhooks,
        &store.tables().tokens,
        &store.tables().leases,
    ] {
        let ttl = store
            .client()
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .unwrap();
        let desc = ttl.time_to_live_description().unwrap();
        assert_eq!(desc.attribute_name(), Some(TTL_ATTRIBUTE), "{table}");
        assert!(
            matches!(
                desc.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            ),
            "{table}: {desc:?}"
        );
    }
    // Billing mode and indexes as documented.
    let calls = store
        .client()
        .describe_table()
        .table_name(&store.tables().calls)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let gsis: HashSet<&str> = calls
        .global_secondary_indexes()
        .iter()
        .filter_map(|g| g.index_name())
        .collect();
    assert_eq!(gsis, HashSet::from(["by_created", "by_state"]));
    assert_eq!(
        calls
            .billing_mode_summary()
            .and_then(|b| b.billing_mode().cloned()),
        Some(BillingMode::PayPerRequest)
    );
    store.check_tables().await.unwrap();
}

#[tokio::test]
async fn missing_tables_are_reported_with_a_hint() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let store = DynamoStore::new(
        DynamoStore::local_client(&endpoint, REGION),
        &unique_prefix(),
    );
    match store.check_tables().await {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains("create-tables"), "{msg}");
            assert!(msg.contains(&store.tables().calls), "{msg}");
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    assert!(matches!(store.ping().await, Err(StoreError::Backend(_))));
    assert!(matches!(
        store.get_call("rtc_x").await,
        Err(StoreError::Backend(_))
    ));
    // Deleting tables that do not exist is fine.
    store.delete_tables().await.unwrap();
}

#[tokio::test]
async fn an_existing_table_with_other_keys_is_refused() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let prefix = unique_prefix();
    let store = DynamoStore::new(DynamoStore::local_client(&endpoint, REGION), &prefix);
    store
        .client()
        .create_table()
        .table_name(&store.tables().calls)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = store
        .create_tables(StdDuration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("key schema") && err.to_string().contains("call_id:HASH"),
        "{err}"
    );
    assert!(store.check_tables().await.is_err());
    store.delete_tables().await.unwrap();
}

/// The token item is what a contact-centre Lambda reads: `pk` = token, the payload as flat
/// string attributes, `expires_at` in Unix seconds (TTL, rounded up) and `expires_ms`.
#[tokio::test]
async fn token_item_layout() {
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let t = t0() + Duration::milliseconds(250);
    let payload = handover("rtc_layout", Some("+14155550123"), t);
    let token = store
        .mint_token(&payload, Duration::minutes(10), t)
        .await
        .unwrap();
    let item = store
        .client()
        .get_item()
        .table_name(&store.tables().tokens)
        .key("pk", AttributeValue::S(token.clone()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let expires_ms = t.timestamp_millis() + 600_000;
    let expect = [
        ("pk", AttributeValue::S(token)),
        ("call_id", AttributeValue::S("rtc_layout".into())),
        ("caller_number", AttributeValue::S("+14155550123".into())),
        ("caller_key", AttributeValue::S("+14155550123".into())),
        ("hubspot_ticket_id", AttributeValue::S("90017".into())),
        ("route_to_queue", AttributeValue::S("billing".into())),
        (
            "minted_at",
            AttributeValue::N(t.timestamp_millis().to_string()),
        ),
        ("expires_ms", AttributeValue::N(expires_ms.to_string())),
        (
            TTL_ATTRIBUTE,
            AttributeValue::N((expires_ms / 1000 + 1).to_string()),
        ),
    ];
    for (name, value) in expect {
        assert_eq!(item.get(name), Some(&value), "{name}");
    }
    assert!(matches!(item.get("created_at"), Some(AttributeValue::S(_))));
}

/// A collision moves on to the next candidate; an expired token's value may be reused; when
/// every candidate collides the mint fails after `MINT_ATTEMPTS` tries.
#[tokio::test]
async fn mint_retries_on_collision() {
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let t = t0();
    let ttl = Duration::minutes(10);
    let (a, b) = (some_token(), some_token());
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
            .mint_token_from(&pb, ttl, t + Duration::seconds(1), [a.clone(), b.clone()])
            .await
            .unwrap(),
        b,
        "a is taken, b is next"
    );
    assert_eq!(
        store.peek_token(&a, t).await.unwrap(),
        Some(pa.clone()),
        "not overwritten"
    );

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
        store
            .mint_token_from(&pb, ttl, t, ["12ab".to_string()])
            .await,
        Err(StoreError::Invalid(_))
    ));

    // Once `a` has expired its value can be minted again, for a new payload.
    let later = t + ttl;
    let pc = handover("rtc_c", None, later);
    assert_eq!(
        store
            .mint_token_from(&pc, ttl, later, [a.clone()])
            .await
            .unwrap(),
        a
    );
    assert_eq!(store.redeem_token(&a, later).await.unwrap(), Some(pc));
}

/// Under concurrency nothing is duplicated or lost: 20 concurrent replays of one item store one
/// line, 20 concurrent distinct appends all land, and every stored line keeps its own
/// position. (Which replay is kept, the first, is checked sequentially by the conformance
/// case `transcript_order_and_replay_dedupe`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transcript_concurrent_appends_and_replays() {
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let call = uniq("rtc-tx-race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, call) = (store.clone(), call.clone());
        tasks.spawn(async move {
            let replay = TranscriptLine {
                call_id: call.clone(),
                speaker: Speaker::Agent,
                text: format!("hello {i}"),
                at: t0(),
                item_id: Some("item_same".into()),
            };
            store.append_transcript(&replay).await.unwrap();
            let distinct = TranscriptLine {
                item_id: Some(format!("item_{i}")),
                text: format!("line {i}"),
                speaker: Speaker::Caller,
                ..replay
            };
            store.append_transcript(&distinct).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let lines = store.transcript(&call).await.unwrap();
    assert_eq!(lines.len(), 21, "{lines:?}");
    let replays: Vec<_> = lines
        .iter()
        .filter(|l| l.item_id.as_deref() == Some("item_same"))
        .collect();
    assert_eq!(replays.len(), 1);
    let ids: HashSet<_> = lines.iter().map(|l| l.item_id.clone()).collect();
    assert_eq!(ids.len(), 21);
    // Each task appended its replay before its distinct line, and order is append order, so
    // the stored replay precedes the distinct line of the task that won it.
    let winner = replays[0].text.trim_start_matches("hello ").to_string();
    let pos = |item: &str| {
        lines
            .iter()
            .position(|l| l.item_id.as_deref() == Some(item))
            .unwrap()
    };
    assert!(pos("item_same") < pos(&format!("item_{winner}")));
}

/// Items with ids far apart in time and state: `list_calls` pages by the `created_key` GSI
/// across DynamoDB's page boundaries (a 1 MB page holds fewer than 1000 of these records).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_calls_pages_past_the_1mb_query_page() {
    let Some((store, _tables)) = fresh_dynamo().await else {
        return;
    };
    let store = Arc::new(store);
    // ~2 KB per record: 700 records exceed one 1 MB query page.
    let big = "x".repeat(2_000);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..700 {
        let store = store.clone();
        let mut r = record(
            &format!("rtc_page_{i:04}"),
            CallState::Ended,
            t0() + Duration::seconds(i),
        );
        r.profile = big.clone();
        tasks.spawn(async move { store.create_call(&r).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let all = store
        .list_calls(&voxmachina::store::CallQuery {
            state: Some(CallState::Ended),
            before: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 700);
    assert_eq!(all[0].call_id, "rtc_page_0699");
    assert_eq!(all[699].call_id, "rtc_page_0000");
}

fn voxmachina(endpoint: &str, prefix: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env("VOXMACHINA_STORE__BACKEND", "dynamodb")
        .env("VOXMACHINA_STORE__DYNAMODB__TABLE_PREFIX", prefix)
        .env("VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL", endpoint)
        .env("VOXMACHINA_STORE__DYNAMODB__REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// `dynamodb create-tables` creates, then finds, the tables; `token show` peeks and `token
/// redeem` consumes a token minted by the library; unknown tokens exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_create_tables_and_token_commands() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let prefix = unique_prefix();
    let run = |args: &[&str]| {
        let out = voxmachina(&endpoint, &prefix).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(&["dynamodb", "create-tables"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{prefix}_calls created")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{prefix}_tokens created, TTL on expires_at")),
        "{stdout}"
    );
    assert!(stdout.contains("6 table(s) ready"), "{stdout}");
    let (code, stdout, _) = run(&["dynamodb", "create-tables"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&format!("{prefix}_calls exists")),
        "{stdout}"
    );

    let store = DynamoStore::new(DynamoStore::local_client(&endpoint, REGION), &prefix);
    let now = Utc::now();
    let payload = handover("rtc_cli", Some("+14155550123"), now);
    let token = store
        .mint_token(&payload, Duration::minutes(10), now)
        .await
        .unwrap();

    let (code, stdout, stderr) = run(&["token", "show", &token]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let shown: voxmachina::store::HandoverPayload = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown, payload);
    let (code, stdout, _) = run(&["token", "redeem", &token]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<voxmachina::store::HandoverPayload>(&stdout).unwrap(),
        payload
    );
    let (code, stdout, stderr) = run(&["token", "redeem", &token]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.contains("unknown, already redeemed or expired"),
        "{stderr}"
    );
    let (code, _, _) = run(&["token", "show", &token]);
    assert_eq!(code, Some(1));
    store.delete_tables().await.unwrap();
}

/// With `backend = "dynamodb"` and no tables, opening the store fails with the create-tables hint.
#[test]
fn token_command_without_tables_fails_with_a_hint() {
    let Some(endpoint) = endpoint() else {
        return;
    };
    let out = voxmachina(&endpoint, &unique_prefix())
        .args(["token", "show", "0123456789"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("dynamodb create-tables"), "{stderr}");
}
