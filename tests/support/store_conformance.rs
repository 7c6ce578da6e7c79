//! Backend-independent conformance cases for [`voxmachina::store::Store`].
//!
//! Each case is `pub async fn case(store: Arc<dyn Store>)` and panics on failure. Cases use ids
//! unique to the process run and time windows unique to the case, so they can share one store
//! (even one running them concurrently). Two conventions make that work:
//! - ordinary cases place their records at or after 2030-01-01, each in its own one-day window
//!   ([`window`]), and only assert on their own records;
//! - [`purge_removes_expired_webhooks_and_old_final_calls`] is the only case that writes data
//!   before 2020, and it assumes no one else does (it asserts exact purge counts).
//!
//! A backend's test file expands [`store_conformance_tests!`] with an async constructor
//! returning `(Arc<dyn Store>, guard)`; the guard (a temp dir, a table name, `()`) is kept alive
//! for the test. The macro emits one `#[tokio::test]` per case plus `all_cases_share_one_store`.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use voxmachina::calls::record::{
    AfterCall, Api, BridgeStats, CallEvent, CallRecord, CallState, CallSummary, CostEstimate,
    CrmRecord, EscalationSummary, HandoverRecord, MediaInfo, SmsFollowUp, Speaker, TokenDetail,
    TranscriptLine, Usage,
};
use voxmachina::store::tokens::{is_stream_token, is_token};
use voxmachina::store::{
    CallQuery, CreateOutcome, HandoverPayload, Lease, MAX_PAGE, Page, PurgeStats, Store,
    StoreError, StreamGrant, TakeoverCandidate,
};

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh store from `$fresh`
/// (an `async fn() -> (Arc<dyn Store>, G)`), and `all_cases_share_one_store`, which runs every
/// case concurrently on a single store.
///
/// `store_conformance_tests!(optional $fresh)` takes an `async fn() -> Option<(Arc<dyn Store>,
/// G)>` instead, for backends that need an external engine: a test whose constructor returns
/// `None` returns at once (the constructor reports why).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:path) => {
        $crate::store_conformance_tests!(@list required $fresh);
    };
    (optional $fresh:path) => {
        $crate::store_conformance_tests!(@list optional $fresh);
    };
    (@list $mode:ident $fresh:path) => {
        $crate::store_conformance_tests!(@cases $mode $fresh;
            webhook_claim_first_then_duplicate,
            webhook_claim_after_expiry,
            sms_window_once_per_number,
            webhook_release_allows_reclaim,
            webhook_claim_concurrent_exactly_one,
            create_call_created_then_exists,
            create_call_concurrent_exactly_one,
            transition_call_matching,
            transition_call_not_matching,
            transition_call_unknown,
            transition_call_concurrent_exactly_one,
            update_call_round_trips_every_field,
            update_call_unknown_is_no_such_call,
            get_call_unknown_is_none,
            list_calls_newest_first_before_and_limit,
            list_calls_state_filter,
            list_calls_limit_capped_at_1000,
            live_calls_oldest_first,
            transcript_order_and_replay_dedupe,
            transcript_unknown_call_is_empty,
            events_order_and_detail_round_trip,
            transcript_and_events_pages,
            purge_removes_expired_webhooks_and_old_final_calls,
            ping_answers,
            token_mint_peek_redeem_once,
            token_mint_concurrent_unique,
            token_redeem_concurrent_exactly_one,
            token_expiry_is_checked_on_every_read,
            token_invalid_inputs,
            token_latest_for_caller,
            stream_token_mint_redeem_once,
            stream_token_redeem_concurrent_exactly_one,
            stream_token_expiry_and_invalid_inputs,
            lease_competing_owners_one_wins,
            lease_concurrent_acquire_exactly_one,
            lease_expiry_allows_takeover,
            lease_renew_only_by_live_owner,
            lease_renew_many_answers_each,
            lease_release_only_by_owner,
            lease_invalid_ttl,
            takeover_candidates_are_the_free_live_calls,
        );
    };
    (@fresh required $fresh:path) => {
        Some($fresh().await)
    };
    (@fresh optional $fresh:path) => {
        $fresh().await
    };
    (@cases $mode:ident $fresh:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some((store, _guard)) = $crate::store_conformance_tests!(@fresh $mode $fresh)
                else {
                    return;
                };
                $crate::support::store_conformance::$case(store).await;
            }
        )+

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn all_cases_share_one_store() {
            let Some((store, _guard)) = $crate::store_conformance_tests!(@fresh $mode $fresh)
            else {
                return;
            };
            let mut tasks = tokio::task::JoinSet::new();
            $(
                tasks.spawn($crate::support::store_conformance::$case(store.clone()));
            )+
            while let Some(done) = tasks.join_next().await {
                done.expect("a conformance case failed on the shared store");
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A random tag for this process, so ids do not collide with leftovers of earlier runs.
fn run_tag() -> u32 {
    static TAG: OnceLock<u32> = OnceLock::new();
    *TAG.get_or_init(rand::random)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// An id unique to this run: `{prefix}-{run}-{n}`.
pub fn uniq(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:08x}-{n}", run_tag())
}

/// The start of a one-day window no other case in this run uses, at or after 2030-01-01 (at a
/// run-dependent offset, so runs against a persistent store do not overlap either).
pub fn window() -> DateTime<Utc> {
    static WINDOWS: AtomicU64 = AtomicU64::new(0);
    let day = i64::from(run_tag() % 2_000) * 256 + WINDOWS.fetch_add(1, Ordering::Relaxed) as i64;
    at_ms(1_893_456_000_000 + day * 86_400_000) // 2030-01-01T00:00:00Z + day days
}

/// A timestamp at millisecond precision (what every backend round-trips exactly).
pub fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("timestamp in range")
}

fn secs(s: i64) -> Duration {
    Duration::seconds(s)
}

/// A minimal record in `state`, created at `created_at`.
pub fn record(call_id: &str, state: CallState, created_at: DateTime<Utc>) -> CallRecord {
    let mut r = CallRecord::new(call_id, Api::Realtime, uniq("wh"), created_at);
    r.state = state;
    r.profile = "default".to_string();
    r
}

async fn create(store: &Arc<dyn Store>, r: &CallRecord) {
    let outcome = store.create_call(r).await.expect("create_call");
    assert_eq!(outcome, CreateOutcome::Created, "create {}", r.call_id);
}

fn ids(records: &[CallRecord]) -> Vec<String> {
    records.iter().map(|r| r.call_id.clone()).collect()
}

/// The ids in `records` that belong to `mine`, in the order returned.
fn mine(records: &[CallRecord], mine: &[&str]) -> Vec<String> {
    records
        .iter()
        .filter(|r| mine.contains(&r.call_id.as_str()))
        .map(|r| r.call_id.clone())
        .collect()
}

fn line(
    call_id: &str,
    speaker: Speaker,
    text: &str,
    at: DateTime<Utc>,
    item: Option<&str>,
) -> TranscriptLine {
    TranscriptLine {
        call_id: call_id.to_string(),
        speaker,
        text: text.to_string(),
        at,
        item_id: item.map(str::to_string),
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook dedupe

/// The first claim wins; a redelivery before expiry (up to 1 ms before it) is a duplicate.
pub async fn webhook_claim_first_then_duplicate(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("wh-first");
    let expires = t + secs(300);
    assert!(
        store.claim_webhook(&id, t, expires).await.unwrap(),
        "first claim"
    );
    assert!(
        !store.claim_webhook(&id, t, expires).await.unwrap(),
        "same instant"
    );
    assert!(
        !store
            .claim_webhook(&id, t + secs(60), t + secs(360))
            .await
            .unwrap(),
        "redelivery a minute later"
    );
    assert!(
        !store
            .claim_webhook(
                &id,
                expires - Duration::milliseconds(1),
                expires + secs(300)
            )
            .await
            .unwrap(),
        "1 ms before expiry"
    );
    // The duplicate attempts did not extend the entry: it still expires at `expires`.
    assert!(
        store
            .claim_webhook(&id, expires, expires + secs(300))
            .await
            .unwrap()
    );
    // Other ids are independent.
    let other = uniq("wh-first-other");
    assert!(store.claim_webhook(&other, t, expires).await.unwrap());
}

/// An entry whose `expires_at <= now` is claimable again, and the new claim sets a new expiry.
pub async fn webhook_claim_after_expiry(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("wh-expiry");
    assert!(store.claim_webhook(&id, t, t + secs(10)).await.unwrap());
    assert!(
        store
            .claim_webhook(&id, t + secs(10), t + secs(20))
            .await
            .unwrap(),
        "claim at exactly expires_at"
    );
    assert!(
        !store
            .claim_webhook(&id, t + secs(15), t + secs(25))
            .await
            .unwrap(),
        "re-claimed entry is live until its new expiry"
    );
    assert!(
        store
            .claim_webhook(&id, t + secs(3600), t + secs(3700))
            .await
            .unwrap(),
        "long after expiry"
    );
}

/// Releasing a claimed id lets the redelivery claim it again; releasing an unknown id is fine.
pub async fn webhook_release_allows_reclaim(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("wh-release");
    assert!(store.claim_webhook(&id, t, t + secs(300)).await.unwrap());
    store.release_webhook(&id).await.unwrap();
    assert!(
        store
            .claim_webhook(&id, t + secs(1), t + secs(300))
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_webhook(&id, t + secs(2), t + secs(300))
            .await
            .unwrap()
    );
    store
        .release_webhook(&uniq("wh-never-claimed"))
        .await
        .unwrap();
}

/// 50 concurrent claims of one id: exactly one wins.
pub async fn webhook_claim_concurrent_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("wh-race");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (store, id) = (store.clone(), id.clone());
        tasks.spawn(async move { store.claim_webhook(&id, t, t + secs(300)).await.unwrap() });
    }
    let mut wins = 0;
    while let Some(won) = tasks.join_next().await {
        wins += usize::from(won.unwrap());
    }
    assert_eq!(wins, 1, "exactly one concurrent claim wins");
}

/// SMS follow-up windows: one claim per number per window, independent of other numbers and
/// of webhook ids, claimable again once the window is over; concurrent claims: exactly one.
pub async fn sms_window_once_per_number(store: Arc<dyn Store>) {
    let t = window();
    // Unique per run (the DynamoDB engine outlives one run); the store takes the number as is.
    let number = uniq("+15550100");
    let until = t + secs(3600);
    assert!(store.claim_sms_window(&number, t, until).await.unwrap());
    assert!(
        !store
            .claim_sms_window(&number, t + secs(60), t + secs(3660))
            .await
            .unwrap(),
        "a second follow-up within the window"
    );
    assert!(
        store.claim_webhook(&number, t, until).await.unwrap(),
        "webhook ids are another namespace"
    );
    let other = format!("{number}9");
    assert!(store.claim_sms_window(&other, t, until).await.unwrap());
    assert!(
        store
            .claim_sms_window(&number, until, until + secs(3600))
            .await
            .unwrap(),
        "the window is over"
    );
    let raced = format!("{number}8");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (store, raced) = (store.clone(), raced.clone());
        tasks.spawn(async move { store.claim_sms_window(&raced, t, until).await.unwrap() });
    }
    let mut wins = 0;
    while let Some(won) = tasks.join_next().await {
        wins += usize::from(won.unwrap());
    }
    assert_eq!(wins, 1, "exactly one concurrent claim wins");
}

// ---------------------------------------------------------------------------------------------
// Call records

/// `create_call` inserts once; a second create of the id returns the stored record untouched.
pub async fn create_call_created_then_exists(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-create");
    let mut first = record(&id, CallState::Accepting, t);
    first.caller = Some("+14155550123".to_string());
    // Written by create_call too (the SIP webhook knows it before anything else).
    first.twilio_call_sid = Some("CAffffffffffffffffffffffffffffffff".to_string());
    create(&store, &first).await;

    let mut second = record(&id, CallState::Rejected, t + secs(5));
    second.profile = "other".to_string();
    match store.create_call(&second).await.unwrap() {
        CreateOutcome::Exists(stored) => assert_eq!(*stored, first),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(store.get_call(&id).await.unwrap(), Some(first));
}

/// 20 concurrent creates of one id: exactly one `Created`, and every `Exists` carries the
/// winner's record.
pub async fn create_call_concurrent_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        let mut r = record(&id, CallState::Accepting, t);
        r.profile = format!("profile-{i}");
        tasks.spawn(async move { (r.clone(), store.create_call(&r).await.unwrap()) });
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (attempt, outcome) = done.unwrap();
        match outcome {
            CreateOutcome::Created => winners.push(attempt),
            CreateOutcome::Exists(stored) => seen.push(*stored),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one Created");
    assert_eq!(seen.len(), 19);
    assert!(
        seen.iter().all(|r| *r == winners[0]),
        "Exists returns the winner's record"
    );
    assert_eq!(
        store.get_call(&id).await.unwrap().as_ref(),
        Some(&winners[0])
    );
}

/// A transition whose `from` matches moves the state and touches nothing else.
pub async fn transition_call_matching(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-cas");
    let mut r = record(&id, CallState::Accepting, t);
    r.dialed = Some("+14155550100".to_string());
    create(&store, &r).await;

    assert!(
        store
            .transition_call(
                &id,
                &[CallState::AcceptFailed, CallState::Accepting],
                CallState::Active
            )
            .await
            .unwrap()
    );
    r.state = CallState::Active;
    assert_eq!(store.get_call(&id).await.unwrap(), Some(r.clone()));

    assert!(
        store
            .transition_call(&id, &[CallState::Active], CallState::Ended)
            .await
            .unwrap()
    );
    r.state = CallState::Ended;
    assert_eq!(store.get_call(&id).await.unwrap(), Some(r));
}

/// A transition whose `from` does not match (or is empty) changes nothing and returns false.
pub async fn transition_call_not_matching(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-cas-miss");
    let r = record(&id, CallState::Accepting, t);
    create(&store, &r).await;

    assert!(
        !store
            .transition_call(
                &id,
                &[CallState::Active, CallState::Transferring],
                CallState::Ended
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_call(&id, &[], CallState::Ended)
            .await
            .unwrap()
    );
    assert_eq!(store.get_call(&id).await.unwrap(), Some(r));
}

/// A transition of an unknown call returns false and creates nothing.
pub async fn transition_call_unknown(store: Arc<dyn Store>) {
    let id = uniq("call-cas-unknown");
    assert!(
        !store
            .transition_call(&id, &[CallState::Accepting], CallState::Active)
            .await
            .unwrap()
    );
    assert_eq!(store.get_call(&id).await.unwrap(), None);
}

/// 20 concurrent `Active -> Transferring` transitions: exactly one succeeds.
pub async fn transition_call_concurrent_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-cas-race");
    create(&store, &record(&id, CallState::Active, t)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (store, id) = (store.clone(), id.clone());
        tasks.spawn(async move {
            store
                .transition_call(&id, &[CallState::Active], CallState::Transferring)
                .await
                .unwrap()
        });
    }
    let mut wins = 0;
    while let Some(won) = tasks.join_next().await {
        wins += usize::from(won.unwrap());
    }
    assert_eq!(wins, 1);
    assert_eq!(
        store.get_call(&id).await.unwrap().unwrap().state,
        CallState::Transferring
    );
}

/// `update_call` replaces every field, including `Some` -> `None`, and reads back exactly.
pub async fn update_call_round_trips_every_field(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("call-update");
    let original = record(&id, CallState::Accepting, t);
    create(&store, &original).await;

    let full = CallRecord {
        call_id: id.clone(),
        api: Api::TwilioMedia,
        state: CallState::TransferFailed,
        profile: "after-hours ☎ \"quoted\"".to_string(),
        caller: Some("+14155550123".to_string()),
        dialed: Some("+442071838750".to_string()),
        sip_call_id: Some("a84b4c76e66710@pc33.example.com".to_string()),
        webhook_id: "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".to_string(),
        created_at: t + Duration::milliseconds(1),
        accepted_at: Some(t + Duration::milliseconds(1_234)),
        ended_at: Some(t + secs(95) + Duration::milliseconds(7)),
        end_reason: Some("transfer_failed".to_string()),
        escalation: Some(EscalationSummary {
            trigger: "tool".to_string(),
            detail: "caller asked for billing; 'quotes' and\nnewlines".to_string(),
            target: "sip:billing@pbx.example.com;transport=tls".to_string(),
            outcome: "transfer_failed".to_string(),
            at: t + secs(80) + Duration::milliseconds(999),
            action: "connect_refer".to_string(),
            handover: Some(HandoverRecord {
                token: Some("0012345678".to_string()),
                expires_at: Some(t + secs(680) + Duration::milliseconds(1)),
                error: None,
            }),
            crm: Some(CrmRecord {
                contact_id: Some("5101".to_string()),
                ticket_id: None,
                error: Some("HubSpot answered 400 (VALIDATION_ERROR): bad stage".to_string()),
            }),
        }),
        usage: Usage {
            responses: 12,
            input_tokens: 4_000_000_001,
            output_tokens: 9_007_199_254_740_993, // above 2^53: must not go through an f64
            total_tokens: u64::MAX,
        },
        after_call: AfterCall {
            tokens: TokenDetail {
                audio_input: 1_000,
                text_input: 20,
                cached_text_input: 5,
                audio_output: u64::MAX,
                ..TokenDetail::default()
            },
            tools: [(
                "lookup_order".to_string(),
                [("ok".to_string(), 2u64), ("timeout".to_string(), 1u64)].into(),
            )]
            .into(),
            summary: Some(CallSummary {
                intent: "order status ☎ \"SK-1\"".to_string(),
                outcome: "answered\nthen transferred".to_string(),
                key_facts: vec!["order SK-1 shipped".to_string()],
                source: "model".to_string(),
            }),
            extracted: [("confirmation_number".to_string(), "R7K2P9".to_string())].into(),
            cost: Some(CostEstimate {
                model: "gpt-realtime".to_string(),
                currency: "USD".to_string(),
                amount_micros: 123_456,
            }),
            sms: Some(SmsFollowUp {
                status: "sent".to_string(),
                reason: None,
                sid: Some("SM123".to_string()),
                at: t + secs(96),
            }),
        },
        media: Some(MediaInfo {
            direction: "outbound".to_string(),
            audio: "pcm16".to_string(),
            stream_sid: Some("MZ00000000000000000000000000000001".to_string()),
            twilio_status: Some("in-progress".to_string()),
            stats: Some(BridgeStats {
                frames_in: 150,
                bytes_out: u64::MAX,
                inbound_p99_us: 412,
                ..BridgeStats::default()
            }),
        }),
        twilio_call_sid: Some("CA0123456789abcdef0123456789abcdef".to_string()),
    };
    store.update_call(&full).await.unwrap();
    assert_eq!(store.get_call(&id).await.unwrap(), Some(full.clone()));

    // Back to all-None options, another api/state: nothing of `full` may linger.
    let mut bare = original.clone();
    bare.state = CallState::Ended;
    bare.profile = String::new();
    store.update_call(&bare).await.unwrap();
    assert_eq!(store.get_call(&id).await.unwrap(), Some(bare.clone()));

    // The updated state is what the filters see.
    let ended = store
        .list_calls(&CallQuery {
            state: Some(CallState::Ended),
            before: Some(t + secs(86_400)),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(ids(&ended).contains(&id));
}

/// Updating a call that does not exist is `NoSuchCall(call_id)` and creates nothing.
pub async fn update_call_unknown_is_no_such_call(store: Arc<dyn Store>) {
    let id = uniq("call-update-unknown");
    let r = record(&id, CallState::Active, window());
    match store.update_call(&r).await {
        Err(StoreError::NoSuchCall(got)) => assert_eq!(got, id),
        other => panic!("expected NoSuchCall, got {other:?}"),
    }
    assert_eq!(store.get_call(&id).await.unwrap(), None);
}

/// `get_call` of an unknown id is `None`.
pub async fn get_call_unknown_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.get_call(&uniq("call-nobody")).await.unwrap(), None);
}

/// Newest `created_at` first, `before` is strict, `limit` truncates (and pages).
pub async fn list_calls_newest_first_before_and_limit(store: Arc<dyn Store>) {
    let t = window();
    // Created out of order, in various states.
    let spec = [
        (2, CallState::Ended),
        (0, CallState::Accepting),
        (4, CallState::Active),
        (1, CallState::Rejected),
        (3, CallState::Transferred),
    ];
    let mut made = Vec::new();
    for (minute, state) in spec {
        let id = uniq(&format!("list-{minute}"));
        let r = record(&id, state, t + secs(60 * minute));
        create(&store, &r).await;
        made.push((minute, r));
    }
    made.sort_by_key(|(m, _)| std::cmp::Reverse(*m));
    let newest_first: Vec<String> = made.iter().map(|(_, r)| r.call_id.clone()).collect();
    let end = t + secs(3600);

    let all = store
        .list_calls(&CallQuery {
            state: None,
            before: Some(end),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(all.len() >= 5);
    assert_eq!(
        ids(&all[..5]),
        newest_first,
        "newest first, own window on top"
    );
    assert_eq!(all[0], made[0].1, "records come back whole");
    for pair in all.windows(2) {
        assert!(
            pair[0].created_at >= pair[1].created_at,
            "sorted newest first"
        );
    }

    let top2 = store
        .list_calls(&CallQuery {
            state: None,
            before: Some(end),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(ids(&top2), newest_first[..2]);

    // Paging: `before` = the oldest of the page, strictly excluded.
    let next = store
        .list_calls(&CallQuery {
            state: None,
            before: Some(top2[1].created_at),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(ids(&next), newest_first[2..4]);

    let none = store
        .list_calls(&CallQuery {
            state: None,
            before: Some(end),
            limit: 0,
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "limit 0 returns nothing");

    // Without `before` (other data may come first): sorted, and a shorter limit is a prefix.
    let unbounded = store
        .list_calls(&CallQuery {
            state: None,
            before: None,
            limit: 50,
        })
        .await
        .unwrap();
    assert!(!unbounded.is_empty() && unbounded.len() <= 50);
    for pair in unbounded.windows(2) {
        assert!(
            pair[0].created_at >= pair[1].created_at,
            "sorted newest first"
        );
    }
    let head = store
        .list_calls(&CallQuery {
            state: None,
            before: None,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(head.len(), 1);
    assert!(head[0].created_at >= unbounded[0].created_at);
}

/// `state` keeps only records in that state (still newest first).
pub async fn list_calls_state_filter(store: Arc<dyn Store>) {
    let t = window();
    let a = uniq("state-a");
    let b = uniq("state-b");
    let c = uniq("state-c");
    create(&store, &record(&a, CallState::Active, t)).await;
    create(&store, &record(&b, CallState::Ended, t + secs(1))).await;
    create(&store, &record(&c, CallState::Active, t + secs(2))).await;
    let end = t + secs(3600);

    let active = store
        .list_calls(&CallQuery {
            state: Some(CallState::Active),
            before: Some(end),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(active.iter().all(|r| r.state == CallState::Active));
    assert_eq!(ids(&active[..2]), vec![c.clone(), a.clone()]);

    let ended = store
        .list_calls(&CallQuery {
            state: Some(CallState::Ended),
            before: Some(end),
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(ids(&ended), vec![b.clone()]);

    let older = store
        .list_calls(&CallQuery {
            state: Some(CallState::Active),
            before: Some(t + secs(2)),
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(older.first().map(|r| r.call_id.clone()), Some(a.clone()));
    assert!(!ids(&older).contains(&c));

    let missed = store
        .list_calls(&CallQuery {
            state: Some(CallState::Missed),
            before: Some(end),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(mine(&missed, &[&a, &b, &c]).is_empty());
}

/// A `limit` above 1000 returns at most 1000 records.
pub async fn list_calls_limit_capped_at_1000(store: Arc<dyn Store>) {
    let t = window();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1001 {
        let store = store.clone();
        let r = record(
            &uniq("cap"),
            CallState::Ended,
            t + Duration::milliseconds(i),
        );
        tasks.spawn(async move { store.create_call(&r).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), CreateOutcome::Created);
    }
    let got = store
        .list_calls(&CallQuery {
            state: None,
            before: Some(t + secs(3600)),
            limit: usize::MAX,
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1000);
    // Newest first: the newest of ours is on top, the oldest of ours fell off.
    assert_eq!(got[0].created_at, t + Duration::milliseconds(1000));
    assert_eq!(got[999].created_at, t + Duration::milliseconds(1));
}

/// `live_calls` returns exactly the live states (active, transferring), oldest first.
pub async fn live_calls_oldest_first(store: Arc<dyn Store>) {
    let t = window();
    let states = [
        CallState::Transferring,
        CallState::Accepting,
        CallState::AcceptFailed,
        CallState::Active,
        CallState::Missed,
        CallState::Rejected,
        CallState::Transferred,
        CallState::TransferFailed,
        CallState::Ended,
        CallState::Active,
    ];
    let mut made = Vec::new();
    for (i, state) in states.iter().enumerate() {
        // Ids sort opposite to creation, so ordering must come from created_at.
        let id = uniq(&format!("live-{}", 9 - i));
        let r = record(&id, *state, t + secs(i as i64));
        create(&store, &r).await;
        made.push(r);
    }
    let live = store.live_calls().await.unwrap();
    assert!(live.iter().all(|r| r.state.is_live()), "only live states");
    let own: Vec<&str> = made.iter().map(|r| r.call_id.as_str()).collect();
    let expected: Vec<String> = made
        .iter()
        .filter(|r| r.state.is_live())
        .map(|r| r.call_id.clone())
        .collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(mine(&live, &own), expected, "oldest first");
    let first = live.iter().find(|r| r.call_id == expected[0]).unwrap();
    assert_eq!(*first, made[0], "records come back whole");
    for pair in live.windows(2) {
        assert!(
            pair[0].created_at <= pair[1].created_at,
            "sorted oldest first"
        );
    }

    // A call that ends drops out.
    assert!(
        store
            .transition_call(&expected[1], &[CallState::Active], CallState::Ended)
            .await
            .unwrap()
    );
    let live = store.live_calls().await.unwrap();
    assert_eq!(
        mine(&live, &own),
        vec![expected[0].clone(), expected[2].clone()]
    );
}

// ---------------------------------------------------------------------------------------------
// Transcripts and events

/// Lines come back in append order; a replay of `(call_id, speaker, item_id)` is ignored; lines
/// without `item_id` are never deduplicated; other calls are not affected.
pub async fn transcript_order_and_replay_dedupe(store: Arc<dyn Store>) {
    let t = window();
    let call = uniq("tx");
    let other = uniq("tx-other");
    create(&store, &record(&call, CallState::Active, t)).await;

    let l1 = line(
        &call,
        Speaker::Agent,
        "Hello, how can I help?",
        t + secs(1),
        Some("item_1"),
    );
    // Same item id, other speaker: a different line.
    let l2 = line(
        &call,
        Speaker::Caller,
        "I need my invoice.",
        t + secs(3),
        Some("item_1"),
    );
    // Earlier `at` than the previous line: order is append order, not `at`.
    let l3 = line(&call, Speaker::Caller, "uh", t + secs(2), None);
    let l4 = line(&call, Speaker::Caller, "uh", t + secs(2), None);
    let l5 = line(
        &call,
        Speaker::Agent,
        "Sure — one moment. ✓",
        t + secs(5),
        Some("item_2"),
    );
    for l in [&l1, &l2, &l3, &l4] {
        store.append_transcript(l).await.unwrap();
    }
    // Replays after a reconnect, even with different text or time.
    store
        .append_transcript(&line(
            &call,
            Speaker::Agent,
            "Hello, how can I help",
            t + secs(9),
            Some("item_1"),
        ))
        .await
        .unwrap();
    store.append_transcript(&l2).await.unwrap();
    store.append_transcript(&l5).await.unwrap();
    store.append_transcript(&l5).await.unwrap();
    // The same item id on another call is kept there.
    let o1 = line(
        &other,
        Speaker::Agent,
        "Other call",
        t + secs(1),
        Some("item_1"),
    );
    store.append_transcript(&o1).await.unwrap();

    assert_eq!(
        store.transcript(&call).await.unwrap(),
        vec![l1, l2, l3, l4, l5]
    );
    assert_eq!(store.transcript(&other).await.unwrap(), vec![o1]);
}

/// The transcript of a call with no lines is empty.
pub async fn transcript_unknown_call_is_empty(store: Arc<dyn Store>) {
    assert!(
        store
            .transcript(&uniq("tx-nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.events(&uniq("ev-nobody")).await.unwrap().is_empty());
}

/// Events come back in append order (not `at` order) with their JSON detail intact.
pub async fn events_order_and_detail_round_trip(store: Arc<dyn Store>) {
    let t = window();
    let call = uniq("ev");
    let other = uniq("ev-other");
    create(&store, &record(&call, CallState::Active, t)).await;
    let event = |call_id: &str, ms: i64, kind: &str, detail: serde_json::Value| CallEvent {
        call_id: call_id.to_string(),
        at: t + Duration::milliseconds(ms),
        kind: kind.to_string(),
        detail,
    };
    let evs = vec![
        event(
            &call,
            10,
            "webhook_received",
            json!({"webhook_id": "msg_1", "attempt": 1}),
        ),
        event(&call, 5, "accepted", json!(null)),
        event(
            &call,
            5,
            "escalation_triggered",
            json!({
                "trigger": "caller_phrase",
                "phrase": "talk to a \"human\" ☎",
                "scores": [0.5, -1.25, 3],
                "nested": {"ok": true, "none": null, "big": 9_007_199_254_740_993_u64},
            }),
        ),
        event(&call, 20, "refer_sent", json!("tel:+14155550100")),
        event(&call, 21, "error", json!([1, "two", {"three": 3}])),
    ];
    for e in &evs {
        store.append_event(e).await.unwrap();
    }
    let o = event(&other, 1, "accepted", json!({}));
    store.append_event(&o).await.unwrap();

    assert_eq!(store.events(&call).await.unwrap(), evs);
    assert_eq!(store.events(&other).await.unwrap(), vec![o]);
}

/// Paged reads: pages of `limit` in append order, the cursor (`next`) continues exactly where
/// the last page stopped, the last page has no cursor, other calls never leak in, replayed
/// lines are not counted, `limit` is clamped to `1..=MAX_PAGE`, and a position past the end
/// reads as empty.
pub async fn transcript_and_events_pages(store: Arc<dyn Store>) {
    let t = window();
    let call = uniq("page");
    let other = uniq("page-other");
    create(&store, &record(&call, CallState::Active, t)).await;
    let mut lines = Vec::new();
    let mut events = Vec::new();
    for i in 0..7 {
        let l = line(
            &call,
            Speaker::Caller,
            &format!("line {i}"),
            t + secs(i),
            Some(&format!("item_{i}")),
        );
        store.append_transcript(&l).await.unwrap();
        // A replay between the lines takes no slot in the pages.
        store.append_transcript(&l).await.unwrap();
        store
            .append_transcript(&line(&other, Speaker::Agent, "x", t, None))
            .await
            .unwrap();
        lines.push(l);
        let e = CallEvent {
            call_id: call.clone(),
            at: t + secs(i),
            kind: format!("kind_{i}"),
            detail: json!({ "i": i }),
        };
        store.append_event(&e).await.unwrap();
        store
            .append_event(&CallEvent::new(&other, "other", json!(null)))
            .await
            .unwrap();
        events.push(e);
    }
    async fn all<T, F, Fut>(read: F, limit: usize) -> (Vec<T>, Vec<usize>)
    where
        F: Fn(Option<u64>, usize) -> Fut,
        Fut: std::future::Future<Output = Result<Page<T>, StoreError>>,
    {
        let (mut items, mut sizes, mut after) = (Vec::new(), Vec::new(), None);
        loop {
            let page = read(after, limit).await.unwrap();
            sizes.push(page.items.len());
            items.extend(page.items);
            match page.next {
                Some(next) => {
                    assert!(after.is_none_or(|a| next > a), "the cursor moves forward");
                    after = Some(next);
                }
                None => return (items, sizes),
            }
            assert!(sizes.len() <= 10, "paging terminates");
        }
    }
    let tx = |after, limit| {
        let store = store.clone();
        let call = call.clone();
        async move { store.transcript_page(&call, after, limit).await }
    };
    let ev = |after, limit| {
        let store = store.clone();
        let call = call.clone();
        async move { store.events_page(&call, after, limit).await }
    };
    let (got, sizes) = all(tx, 3).await;
    assert_eq!(got, lines);
    assert_eq!(sizes, [3, 3, 1]);
    let (got, sizes) = all(ev, 3).await;
    assert_eq!(got, events);
    assert_eq!(sizes, [3, 3, 1]);
    // Exactly one full page: no cursor (nothing follows), or a cursor to an empty page.
    let (got, _) = all(tx, 7).await;
    assert_eq!(got, lines);
    let first = store.transcript_page(&call, None, 7).await.unwrap();
    assert_eq!(first.items, lines);
    assert_eq!(first.next, None, "the row after the page is read to know");
    // limit 0 reads one; a huge limit is capped.
    let one = store.events_page(&call, None, 0).await.unwrap();
    assert_eq!(one.items, events[..1]);
    assert!(one.next.is_some());
    let capped = store.events_page(&call, None, usize::MAX).await.unwrap();
    assert_eq!((capped.items.len(), capped.next), (7, None));
    const { assert!(MAX_PAGE >= 7) };
    // Past the end, and an unknown call.
    let end = store
        .transcript_page(&call, Some(u64::MAX), 5)
        .await
        .unwrap();
    assert_eq!((end.items.len(), end.next), (0, None));
    let none = store
        .events_page(&uniq("page-nobody"), None, 5)
        .await
        .unwrap();
    assert_eq!((none.items.len(), none.next), (0, None));
}

// ---------------------------------------------------------------------------------------------
// Retention

/// `purge` drops webhook entries expired at `now` and final calls created before
/// `calls_before` with their lines and events; it keeps live and unfinished calls, recent final
/// calls, and unexpired webhook entries.
pub async fn purge_removes_expired_webhooks_and_old_final_calls(store: Arc<dyn Store>) {
    // This case alone lives before 2020 (see the module docs).
    let t = at_ms(978_307_200_000); // 2001-01-01T00:00:00Z
    let now = t + secs(30 * 86_400);
    let cutoff = t + secs(10 * 86_400);

    let expired = uniq("purge-wh-expired");
    let boundary = uniq("purge-wh-boundary");
    let fresh = uniq("purge-wh-fresh");
    assert!(
        store
            .claim_webhook(&expired, t, t + secs(300))
            .await
            .unwrap()
    );
    assert!(store.claim_webhook(&boundary, t, now).await.unwrap());
    assert!(
        store
            .claim_webhook(&fresh, t, now + Duration::milliseconds(1))
            .await
            .unwrap()
    );

    let mut old_final = Vec::new();
    for (i, state) in [
        CallState::Missed,
        CallState::Rejected,
        CallState::Transferred,
        CallState::TransferFailed,
        CallState::Ended,
    ]
    .into_iter()
    .enumerate()
    {
        let r = record(&uniq("purge-old-final"), state, t + secs(i as i64));
        create(&store, &r).await;
        old_final.push(r);
    }
    let mut kept = Vec::new();
    for (i, state) in [
        CallState::Active,
        CallState::Transferring,
        CallState::Accepting,
        CallState::AcceptFailed,
    ]
    .into_iter()
    .enumerate()
    {
        let r = record(&uniq("purge-old-unfinished"), state, t + secs(i as i64));
        create(&store, &r).await;
        kept.push(r);
    }
    // Final, but created exactly at / after the cutoff.
    for created in [cutoff, cutoff + secs(1)] {
        let r = record(&uniq("purge-recent-final"), CallState::Ended, created);
        create(&store, &r).await;
        kept.push(r);
    }
    for r in old_final.iter().chain(&kept) {
        store
            .append_transcript(&line(
                &r.call_id,
                Speaker::Agent,
                "hi",
                r.created_at,
                Some("i1"),
            ))
            .await
            .unwrap();
        store
            .append_transcript(&line(
                &r.call_id,
                Speaker::Caller,
                "bye",
                r.created_at,
                None,
            ))
            .await
            .unwrap();
        store
            .append_event(&CallEvent {
                call_id: r.call_id.clone(),
                at: r.created_at,
                kind: "accepted".to_string(),
                detail: json!({"n": 1}),
            })
            .await
            .unwrap();
    }

    let stats = store.purge(now, cutoff).await.unwrap();
    assert_eq!(
        stats,
        PurgeStats {
            webhooks: 2,
            calls: 5
        }
    );

    for r in &old_final {
        assert_eq!(
            store.get_call(&r.call_id).await.unwrap(),
            None,
            "{} purged",
            r.call_id
        );
        assert!(store.transcript(&r.call_id).await.unwrap().is_empty());
        assert!(store.events(&r.call_id).await.unwrap().is_empty());
    }
    for r in &kept {
        assert_eq!(
            store.get_call(&r.call_id).await.unwrap().as_ref(),
            Some(r),
            "{} kept",
            r.call_id
        );
        assert_eq!(store.transcript(&r.call_id).await.unwrap().len(), 2);
        assert_eq!(store.events(&r.call_id).await.unwrap().len(), 1);
    }
    // Purged webhook entries are gone (claimable even at a `now` before their old expiry);
    // the unexpired one still dedupes.
    assert!(
        store
            .claim_webhook(&expired, t, t + secs(300))
            .await
            .unwrap()
    );
    assert!(store.claim_webhook(&boundary, t, now).await.unwrap());
    assert!(
        !store
            .claim_webhook(&fresh, now, now + secs(300))
            .await
            .unwrap()
    );

    // Nothing left to do: a second purge with the same bounds removes only what we re-claimed
    // and has since expired.
    let again = store.purge(now, cutoff).await.unwrap();
    assert_eq!(
        again,
        PurgeStats {
            webhooks: 2,
            calls: 0
        }
    );
    let live: HashSet<String> = store
        .live_calls()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    for r in kept.iter().filter(|r| r.state.is_live()) {
        assert!(
            live.contains(&r.call_id),
            "{} still live after purge",
            r.call_id
        );
    }
}

/// `ping` answers on a healthy store.
pub async fn ping_answers(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Handover tokens

/// A payload with every field set; `caller` as given.
pub fn handover(call_id: &str, caller: Option<&str>, created_at: DateTime<Utc>) -> HandoverPayload {
    HandoverPayload {
        call_id: call_id.to_string(),
        caller_number: caller.map(str::to_string),
        hubspot_contact_id: Some("5101".to_string()),
        hubspot_ticket_id: Some("90017".to_string()),
        summary: "Caller wants the March invoice resent; \"urgent\" ☎\nsecond line".to_string(),
        intent: Some("billing_question".to_string()),
        priority: Some("high".to_string()),
        escalation_reason: "caller_phrase: talk to a person".to_string(),
        route_to_queue: Some("billing".to_string()),
        // Nanoseconds: the payload comes back exactly as given.
        created_at: created_at + Duration::nanoseconds(123_456_789),
    }
}

/// A Media Streams grant for `call_sid` (`None`: an outbound call not placed yet).
pub fn stream_grant(call_sid: Option<&str>, created_at: DateTime<Utc>) -> StreamGrant {
    StreamGrant {
        call_sid: call_sid.map(str::to_string),
        account_sid: "AC0123456789abcdef0123456789abcdef".to_string(),
        profile: "support \"line\" ☎".to_string(),
        direction: if call_sid.is_some() {
            "inbound"
        } else {
            "outbound"
        }
        .to_string(),
        dialed: call_sid.is_none().then(|| "+14155550123".to_string()),
        // Nanoseconds: the grant comes back exactly as given.
        created_at: created_at + Duration::nanoseconds(987_654_321),
    }
}

fn minutes(m: i64) -> Duration {
    Duration::minutes(m)
}

/// A token is 10 digits; peeking does not consume it; the first redemption returns the payload
/// as stored and the second returns `None`. Options left `None` stay `None`.
pub async fn token_mint_peek_redeem_once(store: Arc<dyn Store>) {
    let t = window();
    let full = handover(&uniq("rtc-tok"), Some("+14155550123"), t);
    let token = store.mint_token(&full, minutes(10), t).await.unwrap();
    assert!(is_token(&token), "{token:?}");
    assert_eq!(
        store.peek_token(&token, t).await.unwrap(),
        Some(full.clone())
    );
    assert_eq!(
        store.peek_token(&token, t + secs(1)).await.unwrap(),
        Some(full.clone()),
        "peek does not consume"
    );
    assert_eq!(
        store.redeem_token(&token, t + secs(2)).await.unwrap(),
        Some(full)
    );
    assert_eq!(store.redeem_token(&token, t + secs(3)).await.unwrap(), None);
    assert_eq!(store.peek_token(&token, t + secs(3)).await.unwrap(), None);

    let bare = HandoverPayload {
        call_id: uniq("rtc-tok-bare"),
        caller_number: None,
        hubspot_contact_id: None,
        hubspot_ticket_id: None,
        summary: String::new(),
        intent: None,
        priority: None,
        escalation_reason: "dtmf".to_string(),
        route_to_queue: None,
        created_at: t,
    };
    let token = store.mint_token(&bare, minutes(10), t).await.unwrap();
    assert_eq!(store.redeem_token(&token, t).await.unwrap(), Some(bare));
}

/// 200 concurrent mints give 200 distinct tokens, each holding its own payload.
pub async fn token_mint_concurrent_unique(store: Arc<dyn Store>) {
    let t = window();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        let payload = handover(&uniq(&format!("rtc-mint-{i}")), None, t);
        tasks.spawn(async move {
            let token = store.mint_token(&payload, minutes(10), t).await.unwrap();
            (token, payload)
        });
    }
    let mut minted = Vec::new();
    while let Some(done) = tasks.join_next().await {
        minted.push(done.unwrap());
    }
    let distinct: HashSet<&str> = minted.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(distinct.len(), 200, "200 distinct tokens");
    for (token, payload) in &minted {
        assert!(is_token(token), "{token:?}");
        assert_eq!(
            store.peek_token(token, t + secs(1)).await.unwrap().as_ref(),
            Some(payload),
            "token {token} holds its own payload"
        );
    }
}

/// 20 concurrent redemptions of one token: exactly one gets the payload.
pub async fn token_redeem_concurrent_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let payload = handover(&uniq("rtc-redeem-race"), Some("+14155550199"), t);
    let token = store.mint_token(&payload, minutes(10), t).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, token) = (store.clone(), token.clone());
        tasks.spawn(async move {
            store
                .redeem_token(&token, t + Duration::milliseconds(i))
                .await
                .unwrap()
        });
    }
    let mut got = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Some(p) = done.unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got, vec![payload], "exactly one redemption succeeds");
    assert_eq!(store.peek_token(&token, t).await.unwrap(), None);
}

/// A token is live while `now < minted + ttl`. At and after expiry it is refused, although the
/// entry is still stored (no backend deletes it on time): the expiry check alone makes it
/// invalid, as a redemption with an earlier clock proves.
pub async fn token_expiry_is_checked_on_every_read(store: Arc<dyn Store>) {
    let t = window();
    let payload = handover(&uniq("rtc-expiry"), None, t);
    let token = store.mint_token(&payload, minutes(10), t).await.unwrap();
    let expires = t + minutes(10);
    let just_before = expires - Duration::milliseconds(1);
    assert_eq!(
        store
            .peek_token(&token, just_before)
            .await
            .unwrap()
            .as_ref(),
        Some(&payload),
        "live 1 ms before expiry"
    );
    assert_eq!(store.peek_token(&token, expires).await.unwrap(), None);
    assert_eq!(
        store.redeem_token(&token, expires).await.unwrap(),
        None,
        "expired exactly at expires_at"
    );
    assert_eq!(
        store
            .redeem_token(&token, expires + minutes(60))
            .await
            .unwrap(),
        None
    );
    // The refused redemptions did not delete it: with a clock before the expiry it is there.
    assert_eq!(
        store
            .peek_token(&token, t + secs(1))
            .await
            .unwrap()
            .as_ref(),
        Some(&payload),
        "expired entry still stored"
    );
    assert_eq!(
        store.redeem_token(&token, just_before).await.unwrap(),
        Some(payload)
    );
    assert_eq!(store.redeem_token(&token, t).await.unwrap(), None);

    // A one-second token.
    let short = handover(&uniq("rtc-expiry-short"), None, t);
    let token = store.mint_token(&short, secs(1), t).await.unwrap();
    assert_eq!(store.redeem_token(&token, t + secs(1)).await.unwrap(), None);
    assert_eq!(
        store
            .redeem_token(&token, t + Duration::milliseconds(999))
            .await
            .unwrap(),
        Some(short)
    );
}

/// Malformed and unknown tokens are `None` (never an error); a TTL that is not positive is
/// refused with `Invalid`.
pub async fn token_invalid_inputs(store: Arc<dyn Store>) {
    let t = window();
    for bad in [
        "",
        "Timeout",
        "12345",
        "123456789",
        "12345678901",
        "12345abcde",
        " 123456789",
    ] {
        assert_eq!(store.redeem_token(bad, t).await.unwrap(), None, "{bad:?}");
        assert_eq!(store.peek_token(bad, t).await.unwrap(), None, "{bad:?}");
    }
    // A well-formed token nobody minted (minting it first and redeeming it makes sure).
    let payload = handover(&uniq("rtc-unknown"), None, t);
    let token = store.mint_token(&payload, minutes(10), t).await.unwrap();
    assert!(store.redeem_token(&token, t).await.unwrap().is_some());
    assert_eq!(store.redeem_token(&token, t).await.unwrap(), None);
    assert_eq!(store.peek_token(&token, t).await.unwrap(), None);

    for ttl in [Duration::zero(), secs(-5)] {
        match store.mint_token(&payload, ttl, t).await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("ttl"), "{msg}"),
            other => panic!("ttl {ttl}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(
        store.latest_handover_for_caller("", t).await.unwrap(),
        None,
        "empty caller number"
    );
}

/// `latest_handover_for_caller` returns the most recently minted live token of that number,
/// skipping expired and redeemed ones and tokens of other or no callers, without consuming it.
pub async fn token_latest_for_caller(store: Arc<dyn Store>) {
    let t = window();
    let caller = uniq("+1415555");
    let other = uniq("+1415666");
    assert_eq!(
        store.latest_handover_for_caller(&caller, t).await.unwrap(),
        None
    );

    let pa = handover(&uniq("rtc-latest-a"), Some(&caller), t);
    let a = store.mint_token(&pa, minutes(10), t).await.unwrap();
    let pb = handover(&uniq("rtc-latest-b"), Some(&caller), t + secs(10));
    let b = store
        .mint_token(&pb, minutes(10), t + secs(10))
        .await
        .unwrap();
    let pc = handover(&uniq("rtc-latest-c"), Some(&other), t + secs(20));
    let c = store
        .mint_token(&pc, minutes(10), t + secs(20))
        .await
        .unwrap();
    let pd = handover(&uniq("rtc-latest-d"), None, t + secs(30));
    store
        .mint_token(&pd, minutes(10), t + secs(30))
        .await
        .unwrap();

    assert_eq!(
        store
            .latest_handover_for_caller(&caller, t + secs(40))
            .await
            .unwrap(),
        Some((b.clone(), pb.clone())),
        "newest of the caller's tokens"
    );
    assert_eq!(
        store
            .latest_handover_for_caller(&other, t + secs(40))
            .await
            .unwrap(),
        Some((c, pc))
    );
    // Not consumed by the lookup.
    assert_eq!(
        store.peek_token(&b, t + secs(41)).await.unwrap().as_ref(),
        Some(&pb)
    );

    // A newer token that expires soon wins only while it is live.
    let pe = handover(&uniq("rtc-latest-e"), Some(&caller), t + secs(50));
    let e = store.mint_token(&pe, secs(1), t + secs(50)).await.unwrap();
    assert_eq!(
        store
            .latest_handover_for_caller(&caller, t + secs(50) + Duration::milliseconds(500))
            .await
            .unwrap(),
        Some((e, pe))
    );
    assert_eq!(
        store
            .latest_handover_for_caller(&caller, t + secs(52))
            .await
            .unwrap(),
        Some((b.clone(), pb.clone())),
        "expired newer token skipped"
    );

    // Redeemed tokens drop out; then the older one is the latest until it expires too.
    assert_eq!(
        store.redeem_token(&b, t + secs(60)).await.unwrap(),
        Some(pb)
    );
    assert_eq!(
        store
            .latest_handover_for_caller(&caller, t + secs(61))
            .await
            .unwrap(),
        Some((a.clone(), pa))
    );
    assert_eq!(
        store
            .latest_handover_for_caller(&caller, t + minutes(10))
            .await
            .unwrap(),
        None,
        "a expired at t + 10 min"
    );
}

// ---------------------------------------------------------------------------------------------
// Call leases

/// The stored lease of `call_id`, from [`Store::leases`].
async fn lease_of(store: &Arc<dyn Store>, call_id: &str) -> Option<Lease> {
    store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.call_id == call_id)
}

/// A free lease goes to the first owner; a second owner is refused while it is live; the
/// holder re-acquiring extends it. `leases` lists it with owner and expiry.
pub async fn lease_competing_owners_one_wins(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease");
    assert_eq!(lease_of(&store, &id).await, None);
    assert!(store.acquire_lease(&id, "a", secs(15), t).await.unwrap());
    assert!(!store.acquire_lease(&id, "b", secs(15), t).await.unwrap());
    assert!(
        !store
            .acquire_lease(&id, "b", secs(15), t + secs(15) - Duration::milliseconds(1))
            .await
            .unwrap(),
        "1 ms before expiry the lease is still a's"
    );
    assert_eq!(
        lease_of(&store, &id).await,
        Some(Lease {
            call_id: id.clone(),
            owner: "a".into(),
            expires_at: t + secs(15),
        })
    );
    // Same owner: extended.
    assert!(
        store
            .acquire_lease(&id, "a", secs(15), t + secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        lease_of(&store, &id).await.unwrap().expires_at,
        t + secs(20)
    );
}

/// Of many owners acquiring one free lease at once, exactly one wins, and it is the stored owner.
pub async fn lease_concurrent_acquire_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease-race");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, id) = (store.clone(), id.clone());
        tasks.spawn(async move {
            let owner = format!("owner-{i}");
            let won = store.acquire_lease(&id, &owner, secs(15), t).await.unwrap();
            (owner, won)
        });
    }
    let mut winners = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (owner, won) = done.unwrap();
        if won {
            winners.push(owner);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(lease_of(&store, &id).await.unwrap().owner, winners[0]);
}

/// At its expiry instant a lease is free: another owner takes it over, and the previous owner
/// can then neither renew nor take it back.
pub async fn lease_expiry_allows_takeover(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease-exp");
    assert!(store.acquire_lease(&id, "a", secs(15), t).await.unwrap());
    let expiry = t + secs(15);
    assert!(
        store
            .acquire_lease(&id, "b", secs(15), expiry)
            .await
            .unwrap()
    );
    assert_eq!(lease_of(&store, &id).await.unwrap().owner, "b");
    assert!(!store.renew_lease(&id, "a", secs(15), expiry).await.unwrap());
    assert!(
        !store
            .acquire_lease(&id, "a", secs(15), expiry + secs(1))
            .await
            .unwrap()
    );
    assert_eq!(
        lease_of(&store, &id).await.unwrap(),
        Lease {
            call_id: id.clone(),
            owner: "b".into(),
            expires_at: expiry + secs(15),
        }
    );
}

/// Renewal extends the owner's live lease; it fails for another owner, after expiry, and for
/// a call with no lease (renewal never creates one).
pub async fn lease_renew_only_by_live_owner(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease-renew");
    assert!(!store.renew_lease(&id, "a", secs(15), t).await.unwrap());
    assert_eq!(lease_of(&store, &id).await, None, "renew created a lease");
    assert!(store.acquire_lease(&id, "a", secs(15), t).await.unwrap());
    assert!(!store.renew_lease(&id, "b", secs(15), t).await.unwrap());
    assert_eq!(lease_of(&store, &id).await.unwrap().owner, "a");
    assert!(
        store
            .renew_lease(&id, "a", secs(15), t + secs(10))
            .await
            .unwrap()
    );
    assert_eq!(
        lease_of(&store, &id).await.unwrap().expires_at,
        t + secs(25)
    );
    // Expired (nobody took it): the owner's renewal is refused too.
    assert!(
        !store
            .renew_lease(&id, "a", secs(15), t + secs(25))
            .await
            .unwrap()
    );
    assert_eq!(
        lease_of(&store, &id).await.unwrap().expires_at,
        t + secs(25)
    );
}

/// `renew_leases` answers each lease as `renew_lease` would, in order: the owner's live
/// leases are extended; another owner's, an expired one and a missing one are refused and
/// left as they were.
pub async fn lease_renew_many_answers_each(store: Arc<dyn Store>) {
    let t = window();
    let (mine, other, expired, missing) = (
        uniq("rtc-many-a"),
        uniq("rtc-many-b"),
        uniq("rtc-many-c"),
        uniq("rtc-many-d"),
    );
    assert!(store.acquire_lease(&mine, "a", secs(15), t).await.unwrap());
    assert!(store.acquire_lease(&other, "b", secs(15), t).await.unwrap());
    assert!(
        store
            .acquire_lease(&expired, "a", secs(5), t)
            .await
            .unwrap()
    );
    let ids = vec![
        mine.clone(),
        other.clone(),
        expired.clone(),
        missing.clone(),
    ];
    let answers: Vec<bool> = store
        .renew_leases(&ids, "a", secs(15), t + secs(10))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers, [true, false, false, false]);
    assert_eq!(
        lease_of(&store, &mine).await.unwrap().expires_at,
        t + secs(25)
    );
    assert_eq!(lease_of(&store, &other).await.unwrap().owner, "b");
    assert_eq!(
        lease_of(&store, &expired).await.unwrap().expires_at,
        t + secs(5)
    );
    assert_eq!(lease_of(&store, &missing).await, None);
    assert!(store.renew_leases(&[], "a", secs(15), t).await.is_empty());
}

/// Release removes only the caller's own lease (expired or not); afterwards anyone acquires.
pub async fn lease_release_only_by_owner(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease-rel");
    assert!(!store.release_lease(&id, "a").await.unwrap());
    assert!(store.acquire_lease(&id, "a", secs(15), t).await.unwrap());
    assert!(!store.release_lease(&id, "b").await.unwrap());
    assert_eq!(lease_of(&store, &id).await.unwrap().owner, "a");
    assert!(store.release_lease(&id, "a").await.unwrap());
    assert_eq!(lease_of(&store, &id).await, None);
    assert!(!store.release_lease(&id, "a").await.unwrap());
    assert!(store.acquire_lease(&id, "b", secs(15), t).await.unwrap());
    assert!(!store.renew_lease(&id, "a", secs(15), t).await.unwrap());
}

/// A lease TTL that is not positive is refused as invalid, and nothing is stored.
pub async fn lease_invalid_ttl(store: Arc<dyn Store>) {
    let t = window();
    let id = uniq("rtc-lease-ttl");
    for ttl in [Duration::zero(), secs(-5)] {
        for result in [
            store.acquire_lease(&id, "a", ttl, t).await,
            store.renew_lease(&id, "a", ttl, t).await,
        ] {
            match result {
                Err(StoreError::Invalid(msg)) => assert!(msg.contains("ttl"), "{msg}"),
                other => panic!("ttl {ttl}: expected Invalid, got {other:?}"),
            }
        }
    }
    assert_eq!(lease_of(&store, &id).await, None);
}

/// `takeover_candidates` returns exactly the live calls free to take, oldest first, each with
/// its lease: an expired lease, no lease for at least the TTL since `accepted_at` (else
/// `created_at`), and the reclaiming owner's own live lease only when reclaiming. A live lease
/// of another owner, a recent call without lease (by `created_at` or by `accepted_at`) and an
/// ended call are left out.
pub async fn takeover_candidates_are_the_free_live_calls(store: Arc<dyn Store>) {
    let t = window();
    let ttl = secs(15);
    let now = t + secs(110);
    let id = |name: &str| uniq(&format!("take-{name}"));
    let (held, expired, bare_old, bare_new, ended, mine, accepted_late) = (
        id("held"),
        id("expired"),
        id("bare-old"),
        id("bare-new"),
        id("ended"),
        id("mine"),
        id("accepted-late"),
    );
    let calls = [
        (&held, CallState::Active, t + secs(1), None),
        (&expired, CallState::Active, t + secs(2), None),
        (&bare_old, CallState::Transferring, t + secs(3), None),
        (&bare_new, CallState::Active, t + secs(100), None),
        (&ended, CallState::Ended, t + secs(4), None),
        (&mine, CallState::Active, t + secs(5), None),
        (
            &accepted_late,
            CallState::Active,
            t + secs(6),
            Some(t + secs(100)),
        ),
    ];
    for (call_id, state, created, accepted) in calls {
        let mut r = record(call_id, state, created);
        r.accepted_at = accepted;
        create(&store, &r).await;
    }
    let lease = |call_id: &String, owner: &'static str, at: DateTime<Utc>| {
        let store = store.clone();
        let call_id = call_id.clone();
        async move {
            assert!(store.acquire_lease(&call_id, owner, ttl, at).await.unwrap());
        }
    };
    lease(&held, "b", t + secs(100)).await; // until t+115: live at now
    lease(&expired, "b", t + secs(50)).await; // until t+65: expired
    lease(&ended, "b", t + secs(50)).await;
    lease(&mine, "me", t + secs(100)).await;

    let own: Vec<&str> = [
        &held,
        &expired,
        &bare_old,
        &bare_new,
        &ended,
        &mine,
        &accepted_late,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    let mine_only = |all: Vec<TakeoverCandidate>| -> Vec<(String, Option<String>)> {
        all.into_iter()
            .filter(|c| own.contains(&c.call_id.as_str()))
            .map(|c| (c.call_id, c.lease.map(|l| l.owner)))
            .collect()
    };

    let scan = store.takeover_candidates(now, ttl, None).await.unwrap();
    assert_eq!(
        mine_only(scan),
        [
            (expired.clone(), Some("b".to_string())),
            (bare_old.clone(), None)
        ],
        "expired lease and long-unleased call, oldest first"
    );

    let reclaim = store
        .takeover_candidates(now, ttl, Some("me"))
        .await
        .unwrap();
    assert_eq!(
        mine_only(reclaim),
        [
            (expired.clone(), Some("b".to_string())),
            (bare_old.clone(), None),
            (mine.clone(), Some("me".to_string())),
        ],
        "reclaiming adds the owner's own live lease"
    );

    let found = store.takeover_candidates(now, ttl, None).await.unwrap();
    let expired_lease = found.into_iter().find(|c| c.call_id == expired).unwrap();
    assert_eq!(
        expired_lease.lease,
        Some(Lease {
            call_id: expired.clone(),
            owner: "b".into(),
            expires_at: t + secs(65),
        })
    );
}

/// A stream token is `vst_` + 32 hex digits, redeems once with its grant as stored (both the
/// inbound and the outbound shape), and is invisible to the handover-token reads: neither kind
/// of token is accepted by the other kind's methods.
pub async fn stream_token_mint_redeem_once(store: Arc<dyn Store>) {
    let t = window();
    let inbound = stream_grant(Some(&uniq("CA-stream")), t);
    let token = store
        .mint_stream_token(&inbound, minutes(5), t)
        .await
        .unwrap();
    assert!(is_stream_token(&token), "{token:?}");
    assert!(!is_token(&token));
    assert_eq!(store.peek_token(&token, t).await.unwrap(), None);
    assert_eq!(store.redeem_token(&token, t).await.unwrap(), None);
    assert_eq!(
        store
            .redeem_stream_token(&token, t + secs(1))
            .await
            .unwrap(),
        Some(inbound),
        "the handover reads above did not consume it"
    );
    assert_eq!(
        store
            .redeem_stream_token(&token, t + secs(2))
            .await
            .unwrap(),
        None,
        "single use"
    );

    let outbound = stream_grant(None, t);
    let token = store
        .mint_stream_token(&outbound, minutes(5), t)
        .await
        .unwrap();
    assert_eq!(
        store.redeem_stream_token(&token, t).await.unwrap(),
        Some(outbound)
    );

    // A live handover token is not a stream token, and stays redeemable as what it is.
    let payload = handover(&uniq("rtc-not-stream"), Some("+14155550123"), t);
    let handover_token = store.mint_token(&payload, minutes(5), t).await.unwrap();
    assert_eq!(
        store.redeem_stream_token(&handover_token, t).await.unwrap(),
        None
    );
    assert_eq!(
        store.redeem_token(&handover_token, t).await.unwrap(),
        Some(payload)
    );
}

/// 20 concurrent redemptions of one stream token: exactly one gets the grant.
pub async fn stream_token_redeem_concurrent_exactly_one(store: Arc<dyn Store>) {
    let t = window();
    let grant = stream_grant(Some(&uniq("CA-stream-race")), t);
    let token = store
        .mint_stream_token(&grant, minutes(5), t)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (store, token) = (store.clone(), token.clone());
        tasks.spawn(async move {
            store
                .redeem_stream_token(&token, t + Duration::milliseconds(i))
                .await
                .unwrap()
        });
    }
    let mut got = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Some(g) = done.unwrap() {
            got.push(g);
        }
    }
    assert_eq!(got, vec![grant], "exactly one redemption succeeds");
}

/// A stream token is live while `now < minted + ttl` (a refused late redemption does not
/// delete it); malformed and unknown tokens are `None`; a TTL that is not positive is refused.
pub async fn stream_token_expiry_and_invalid_inputs(store: Arc<dyn Store>) {
    let t = window();
    let grant = stream_grant(Some(&uniq("CA-stream-expiry")), t);
    let token = store
        .mint_stream_token(&grant, minutes(5), t)
        .await
        .unwrap();
    let expires = t + minutes(5);
    assert_eq!(
        store.redeem_stream_token(&token, expires).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .redeem_stream_token(&token, expires + minutes(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .redeem_stream_token(&token, expires - Duration::milliseconds(1))
            .await
            .unwrap(),
        Some(grant.clone()),
        "live 1 ms before expiry, and still stored after the refused late redemptions"
    );
    for bad in [
        "",
        "vst_",
        "vst_0123456789abcdef",
        "vst_0123456789ABCDEF0123456789ABCDEF",
        "0123456789",
        "' OR 1=1 --",
    ] {
        assert_eq!(
            store.redeem_stream_token(bad, t).await.unwrap(),
            None,
            "{bad:?}"
        );
    }
    // Well-formed, never minted.
    assert_eq!(
        store
            .redeem_stream_token("vst_00000000000000000000000000000000", t)
            .await
            .unwrap(),
        None
    );
    for ttl in [Duration::zero(), secs(-5)] {
        match store.mint_stream_token(&grant, ttl, t).await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("ttl"), "{msg}"),
            other => panic!("ttl {ttl}: expected Invalid, got {other:?}"),
        }
    }
}
