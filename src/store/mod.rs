//! Persistence: call records, transcript lines, call events, webhook dedupe, handover tokens and
//! Media Streams stream tokens.
//!
//! [`Store`] is the one interface the rest of the controller uses. [`sqlite::SqliteStore`] is the
//! embedded implementation (one file, WAL); [`dynamodb::DynamoStore`] is the distributed one
//! (several controller instances sharing DynamoDB tables). The trait is shaped for both: every
//! write that guards against duplicates is a conditional insert or compare-and-set
//! ([`Store::claim_webhook`], [`Store::create_call`], [`Store::transition_call`],
//! [`Store::mint_token`], [`Store::redeem_token`], [`Store::mint_stream_token`],
//! [`Store::redeem_stream_token`], the call leases [`Store::acquire_lease`],
//! [`Store::renew_lease`], [`Store::release_lease`]), which maps to DynamoDB conditional writes,
//! and reads never rely on a background TTL sweep.

pub mod dynamodb;
mod open;
pub mod resilient;
pub mod sqlite;
pub mod tokens;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::calls::record::{CallEvent, CallRecord, CallState, TranscriptLine};

pub use dynamodb::DynamoStore;
pub use open::open;
pub use resilient::{HoldLimits, ResilientStore, StoreHealth};
pub use sqlite::SqliteStore;
pub use tokens::{HandoverPayload, StreamGrant};

/// Store failures. Callers degrade (log, count in `voxmachina_store_errors_total`) rather than
/// drop a call because of them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, SQL, network). The message carries the backend's error.
    #[error("store backend: {0}")]
    Backend(String),
    /// A stored value could not be decoded (corrupt row, unknown enum name).
    #[error("store data: {0}")]
    Corrupt(String),
    /// An update named a call that does not exist.
    #[error("no call {0}")]
    NoSuchCall(String),
    /// The caller passed an unusable argument (e.g. a token TTL that is not positive).
    #[error("invalid store request: {0}")]
    Invalid(String),
}

/// Result of [`Store::create_call`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The record was inserted: the caller owns the accept decision.
    Created,
    /// A record with this `call_id` already exists (returned as stored).
    Exists(Box<CallRecord>),
}

/// Filter for [`Store::list_calls`].
#[derive(Debug, Clone)]
pub struct CallQuery {
    /// Only calls in this state.
    pub state: Option<CallState>,
    /// Only calls created strictly before this instant (for paging, newest first).
    pub before: Option<DateTime<Utc>>,
    /// Most records returned (the store caps it at 1000).
    pub limit: usize,
}

impl Default for CallQuery {
    fn default() -> Self {
        Self {
            state: None,
            before: None,
            limit: 100,
        }
    }
}

/// What [`Store::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    /// Expired webhook-id dedupe entries removed.
    pub webhooks: u64,
    /// Final call records removed (with their transcript lines and events).
    pub calls: u64,
}

/// A call's monitor lease: which controller instance monitors the call, until when
/// (see [`crate::calls::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased call.
    pub call_id: String,
    /// The holder's instance id (`[cluster] instance_id`).
    pub owner: String,
    /// The lease is free for anyone to take at and after this instant (millisecond precision).
    pub expires_at: DateTime<Utc>,
}

/// A live call whose monitor an instance may take over ([`Store::takeover_candidates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeoverCandidate {
    /// The call.
    pub call_id: String,
    /// Its lease: expired, or held by the reclaiming owner; `None` when it has none.
    pub lease: Option<Lease>,
}

/// Whether a live call is free to take over at `now` (the rule of
/// [`Store::takeover_candidates`]): its lease is held by `reclaim_owner`, or has expired by
/// `now`; or it has none and `since` (its `accepted_at`, else `created_at`) is at least `ttl`
/// ago, so a call being accepted right now is left to its instance.
pub fn free_to_take(
    since: DateTime<Utc>,
    lease: Option<&Lease>,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    reclaim_owner: Option<&str>,
) -> bool {
    match lease {
        Some(l) if reclaim_owner == Some(l.owner.as_str()) => true,
        Some(l) => l.expires_at <= now,
        None => since
            .checked_add_signed(ttl)
            .is_some_and(|free_at| free_at <= now),
    }
}

/// The controller's persistence interface. All methods are safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the backend answers (used by `GET /readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Remembers `webhook_id` until `expires_at` if it is not already remembered (or its entry
    /// has expired by `now`). Returns `true` when this call claimed it, `false` for a duplicate
    /// delivery. Standard Webhooks: the `webhook-id` is the idempotency key.
    async fn claim_webhook(
        &self,
        webhook_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Forgets a claimed `webhook_id`, so a redelivery is processed again (used when we answer
    /// the delivery with a retryable error).
    async fn release_webhook(&self, webhook_id: &str) -> Result<(), StoreError>;

    /// Claims the SMS follow-up window of `number` (E.164) until `until`, unless a claim made
    /// earlier is still live at `now` (its `until` is later than `now`). Returns `true` when
    /// this call claimed it (the follow-up may be sent), `false` when one was already sent to
    /// that number within its window. Atomic across instances (the same conditional write as
    /// [`Store::claim_webhook`]); kept beside the webhook-id entries under
    /// [`sms_window_key`], so it lasts across restarts and is purged with them once expired.
    async fn claim_sms_window(
        &self,
        number: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Inserts `record` unless a record with its `call_id` exists.
    async fn create_call(&self, record: &CallRecord) -> Result<CreateOutcome, StoreError>;

    /// Sets the state of `call_id` to `to` only if its current state is one of `from`
    /// (compare-and-set). Returns `false` when the state did not match or the call is unknown.
    async fn transition_call(
        &self,
        call_id: &str,
        from: &[CallState],
        to: CallState,
    ) -> Result<bool, StoreError>;

    /// Replaces the stored record with `record` (matched by `call_id`).
    ///
    /// # Errors
    /// [`StoreError::NoSuchCall`] when no such record exists.
    async fn update_call(&self, record: &CallRecord) -> Result<(), StoreError>;

    /// The record for `call_id`, if any.
    async fn get_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError>;

    /// Records matching `query`, newest `created_at` first.
    async fn list_calls(&self, query: &CallQuery) -> Result<Vec<CallRecord>, StoreError>;

    /// Calls whose state is live ([`CallState::is_live`]), oldest first: what a restarted
    /// controller must reattach to.
    async fn live_calls(&self) -> Result<Vec<CallRecord>, StoreError>;

    /// Appends a transcript line. A line with the same `(call_id, speaker, item_id)` as a stored
    /// one (a replay after reconnect) is ignored; lines without `item_id` are always appended.
    async fn append_transcript(&self, line: &TranscriptLine) -> Result<(), StoreError>;

    /// The transcript of `call_id` in the order the lines were appended.
    async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptLine>, StoreError>;

    /// Appends a call event.
    async fn append_event(&self, event: &CallEvent) -> Result<(), StoreError>;

    /// The events of `call_id` in the order they were appended.
    async fn events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError>;

    /// At most `limit` (capped at [`MAX_PAGE`], at least 1) transcript lines of `call_id` in
    /// append order, starting after the position `after` (`None`: from the first line). Reads
    /// never more than one page plus one row from the backend.
    async fn transcript_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TranscriptLine>, StoreError>;

    /// Like [`Store::transcript_page`] for the events of `call_id`.
    async fn events_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<CallEvent>, StoreError>;

    /// Removes webhook entries expired at `now`, and final calls created before `calls_before`
    /// together with their transcripts and events (retention).
    async fn purge(
        &self,
        now: DateTime<Utc>,
        calls_before: DateTime<Utc>,
    ) -> Result<PurgeStats, StoreError>;

    // -----------------------------------------------------------------------------------------
    // Call leases (`crate::calls::lease`): exactly one instance monitors each live call.

    /// Takes the lease of `call_id` for `owner` until `now + ttl` when nobody holds it, its
    /// holder's lease has expired by `now` (`expires_at <= now`), or `owner` already holds it
    /// (then it is extended). Returns `false` when another owner holds a live lease. Of
    /// concurrent acquisitions by different owners, exactly one gets `true`.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `ttl` is not positive; [`StoreError::Backend`] when the
    /// backend fails.
    async fn acquire_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Extends the lease of `call_id` to `now + ttl` only if `owner` holds it and it has not
    /// expired by `now`. `false` means the lease was lost (expired, taken over or released):
    /// the caller must stop acting for the call. Never creates a lease.
    ///
    /// # Errors
    /// As [`Store::acquire_lease`].
    async fn renew_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// [`Store::renew_lease`] for many leases of `owner` at once (the per-instance keeper in
    /// [`crate::calls::lease`] renews every held lease each interval): one answer per entry of
    /// `call_ids`, in order. The keeper sends at most [`crate::calls::lease::RENEW_BATCH`] leases
    /// per call. The default runs the renewals 32 at a time; SQLite renews them in one
    /// transaction, so 10 000 held calls cost 40 writes per interval instead of 10 000, none long
    /// enough to hold up other writes.
    async fn renew_leases(
        &self,
        call_ids: &[String],
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Vec<Result<bool, StoreError>> {
        let mut answers = Vec::with_capacity(call_ids.len());
        for chunk in call_ids.chunks(32) {
            let mut renewals = Vec::with_capacity(chunk.len());
            for id in chunk {
                renewals.push(self.renew_lease(id, owner, ttl, now));
            }
            answers.extend(futures_util::future::join_all(renewals).await);
        }
        answers
    }

    /// Removes the lease of `call_id` if `owner` holds it (expired or not). Returns whether a
    /// lease was removed; another owner's lease is left alone.
    async fn release_lease(&self, call_id: &str, owner: &str) -> Result<bool, StoreError>;

    /// Every stored lease, live or expired, in no particular order (one item per monitored
    /// call, so the set is small). The default [`Store::takeover_candidates`] compares it with
    /// [`Store::live_calls`].
    async fn leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// The live calls free to take over at `now` ([`free_to_take`]: lease expired or held by
    /// `reclaim_owner`, or no lease for at least `ttl` since `accepted_at`, else `created_at`),
    /// oldest first, each with its lease. The takeover scan runs this every
    /// `[cluster] takeover_scan_interval_ms` (`crate::calls::takeover`).
    ///
    /// The default reads [`Store::live_calls`] and [`Store::leases`] and filters them; SQLite
    /// answers with one query that decodes no call record (10 000 live calls took 61 ms of
    /// CPU every scan the default way).
    ///
    /// # Errors
    /// [`StoreError`] when either read fails.
    async fn takeover_candidates(
        &self,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
        reclaim_owner: Option<&str>,
    ) -> Result<Vec<TakeoverCandidate>, StoreError> {
        let (live, leases) = futures_util::future::join(self.live_calls(), self.leases()).await;
        let mut leases: std::collections::HashMap<String, Lease> = leases?
            .into_iter()
            .map(|l| (l.call_id.clone(), l))
            .collect();
        Ok(live?
            .into_iter()
            .filter_map(|record| {
                let lease = leases.remove(&record.call_id);
                let since = record.accepted_at.unwrap_or(record.created_at);
                free_to_take(since, lease.as_ref(), now, ttl, reclaim_owner).then_some(
                    TakeoverCandidate {
                        call_id: record.call_id,
                        lease,
                    },
                )
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------------
    // Handover tokens (`tokens` module docs)

    /// Stores `payload` under a fresh one-time token valid until `now + ttl` and returns the
    /// token: [`tokens::TOKEN_DIGITS`] decimal digits from a CSPRNG, unique among live tokens
    /// (conditional insert, retried with a new value on collision; an expired entry may be
    /// overwritten).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `ttl` is not positive; [`StoreError::Backend`] when the
    /// backend fails or [`tokens::MINT_ATTEMPTS`] candidates all collided.
    async fn mint_token(
        &self,
        payload: &HandoverPayload,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError>;

    /// Redeems `token` once: atomically removes it and returns its payload when it exists and
    /// `expires_at > now`. `None` for an unknown, already redeemed or expired token, and for
    /// anything that is not [`tokens::TOKEN_DIGITS`] digits. Of concurrent redemptions of one
    /// token, exactly one gets `Some`.
    async fn redeem_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError>;

    /// The payload of `token` if it is live at `now`, without redeeming it (for
    /// `voxmachina token show`).
    async fn peek_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError>;

    /// The most recently minted token for `caller_number` (E.164, compared exactly) that is live
    /// at `now`, with its payload; not redeemed. Tokens minted without a caller number are never
    /// returned. Used to correlate a caller who reaches the contact centre without the digits.
    async fn latest_handover_for_caller(
        &self,
        caller_number: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, HandoverPayload)>, StoreError>;

    // -----------------------------------------------------------------------------------------
    // Media Streams tokens (`tokens` module docs): the same table and the same conditional
    // writes as handover tokens, a disjoint token shape.

    /// Stores `grant` under a fresh single-use stream token valid until `now + ttl` and returns
    /// the token ([`tokens::is_stream_token`]: `vst_` + 32 hex digits from a CSPRNG; unique
    /// among live tokens by the same conditional insert as [`Store::mint_token`]).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] when `ttl` is not positive; [`StoreError::Backend`] when the
    /// backend fails or [`tokens::MINT_ATTEMPTS`] candidates all collided.
    async fn mint_stream_token(
        &self,
        grant: &StreamGrant,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError>;

    /// Redeems a stream token once: atomically removes it and returns its grant when it exists
    /// and `expires_at > now`. `None` for an unknown, already redeemed or expired token, and
    /// for anything that is not [`tokens::is_stream_token`] (a handover token included). Of
    /// concurrent redemptions of one token, exactly one gets `Some`.
    async fn redeem_stream_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StreamGrant>, StoreError>;
}

/// Checks a lease TTL argument: positive, in milliseconds.
/// The dedupe key of the SMS follow-up window of `number` ([`Store::claim_sms_window`]): a
/// prefix no OpenAI `webhook-id` has (they are `wh_...`, and only signed deliveries are
/// claimed).
pub fn sms_window_key(number: &str) -> String {
    format!("sms-followup:{number}")
}

/// Largest page [`Store::transcript_page`] and [`Store::events_page`] return.
pub const MAX_PAGE: usize = 1000;

/// One page of a call's transcript lines or events, in append order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The position to pass as `after` for the next page; `None` when this page is the last.
    /// Opaque to callers: a backend-specific, increasing position (SQLite row id, DynamoDB
    /// `seq`), not an index.
    pub next: Option<u64>,
}

/// A page position as the signed integer the backends store (SQLite row id, DynamoDB `seq`);
/// `None` (before the first) is 0. Positions above `i64::MAX` cannot exist, so they read as
/// "after everything".
pub(crate) fn page_position(after: Option<u64>) -> i64 {
    after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX))
}

/// `limit` clamped to `1..=MAX_PAGE`.
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

/// The page of `rows` (each with its position, read with `limit + 1` as the backend limit):
/// `next` is the last kept position when the extra row shows more follow.
pub(crate) fn page_of<T>(mut rows: Vec<(u64, T)>, limit: usize, more: bool) -> Page<T> {
    let more = more || rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(pos, _)| *pos)
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next,
    }
}

pub(crate) fn lease_ttl_ms(ttl: chrono::Duration) -> Result<i64, StoreError> {
    let ms = ttl.num_milliseconds();
    if ms <= 0 {
        return Err(StoreError::Invalid(format!(
            "lease ttl must be positive, got {ms} ms"
        )));
    }
    Ok(ms)
}

/// Stored name of an [`Api`](crate::calls::record::Api), shared by every backend.
pub(crate) fn api_name(api: crate::calls::record::Api) -> &'static str {
    use crate::calls::record::Api;
    match api {
        Api::Realtime => "realtime",
        Api::Live => "live",
        Api::TwilioMedia => "twilio_media",
    }
}

/// Parses a stored [`Api`](crate::calls::record::Api) name.
pub(crate) fn parse_api(v: &str) -> Result<crate::calls::record::Api, StoreError> {
    use crate::calls::record::Api;
    match v {
        "realtime" => Ok(Api::Realtime),
        "live" => Ok(Api::Live),
        "twilio_media" => Ok(Api::TwilioMedia),
        other => Err(StoreError::Corrupt(format!("unknown api {other:?}"))),
    }
}

/// Parses a stored [`Speaker`](crate::calls::record::Speaker) name.
pub(crate) fn parse_speaker(v: &str) -> Result<crate::calls::record::Speaker, StoreError> {
    use crate::calls::record::Speaker;
    match v {
        "caller" => Ok(Speaker::Caller),
        "agent" => Ok(Speaker::Agent),
        other => Err(StoreError::Corrupt(format!("unknown speaker {other:?}"))),
    }
}
