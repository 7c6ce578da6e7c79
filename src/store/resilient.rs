//! [`ResilientStore`]: the store as the controller uses it, so a failing backend (full disk,
//! DynamoDB unreachable) is visible and loses nothing it acknowledged.
//!
//! - **Held writes.** A call's record updates, events and transcript lines
//!   ([`Store::update_call`], [`Store::append_event`], [`Store::append_transcript`]) that fail
//!   with [`StoreError::Backend`] are kept in memory, in order, in a queue per call, and the
//!   write answers `Ok`: the caller (the monitor, a request handler) goes on. While a call has
//!   held writes, or while writes are failing, its new writes join the queue behind them, so the
//!   store receives them in the order they were made. Record updates replace the call's earlier
//!   held update (a record is written whole), so a call holds at most one record.
//! - **Retry.** One background task writes the queues back, oldest first, retrying with
//!   exponential backoff from [`RETRY_MIN_DELAY`] to [`RETRY_MAX_DELAY`] with jitter (the
//!   `backon` crate's `ExponentialBuilder`). While writes fail and nothing is held, it probes
//!   with a short-lived webhook-id claim (`voxmachina-store-probe-*`, expires after a minute)
//!   and its release, so recovery is seen without traffic.
//! - **Bound.** At most `[store] write_queue_per_call` lines and events per call and
//!   `[store] write_queue_total` in all are held. Beyond that a new line or event is dropped
//!   (the write answers [`StoreError::Backend`]), counted in
//!   `voxmachina_store_dropped_total{kind}`, and the call gets a `store_writes_dropped` event
//!   (written in the queue's order, where the loss happened) with the counts.
//! - **Health.** [`StoreHealth`] says whether writes are failing: set by any failed write
//!   (queued or not), cleared by a successful write once nothing is held. `GET /readyz` answers
//!   503 while it is set, and the webhook handler answers new calls 503 (OpenAI redelivers)
//!   rather than accept a call whose record cannot be written.
//! - **Reads** of a call with held writes ([`Store::get_call`], [`Store::transcript`],
//!   [`Store::events`]) include them, so the monitor's summary and hand-off see every line.
//! - A compare-and-set of a call with held writes ([`Store::transition_call`]) first writes its
//!   queue, so an old held record never lands after the new state.
//!
//! Held writes live in this process only: a restart during an outage loses them (they are
//! counted in `voxmachina_store_pending_writes` until then).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

use super::{
    CallQuery, CreateOutcome, HandoverPayload, Lease, Page, PurgeStats, Store, StoreError,
    StreamGrant, TakeoverCandidate,
};
use crate::calls::record::{CallEvent, CallRecord, CallState, TranscriptLine};
use crate::telemetry::names;

/// First retry delay of held writes.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest retry delay of held writes (so recovery is noticed within about a second).
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// The event kind written where held lines or events had to be dropped.
pub const DROPPED_EVENT: &str = "store_writes_dropped";

/// Bounds of the held writes (`[store] write_queue_per_call`, `write_queue_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// Lines and events held per call.
    pub per_call: usize,
    /// Lines and events held in all.
    pub total: usize,
}

impl Default for HoldLimits {
    fn default() -> Self {
        HoldLimits {
            per_call: 2_000,
            total: 200_000,
        }
    }
}

/// Whether store writes are failing, shared with `GET /readyz` and the webhook handler.
#[derive(Debug, Default)]
pub struct StoreHealth {
    failing: AtomicBool,
    /// Unix ms of the first failure of the current outage.
    since_ms: AtomicI64,
    pending: AtomicUsize,
    last_error: Mutex<String>,
}

impl StoreHealth {
    /// True unless writes are failing.
    pub fn writes_ok(&self) -> bool {
        !self.failing.load(Ordering::SeqCst)
    }

    /// Lines, events and records held in memory.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// `"ok"`, or `"failing since <RFC 3339>: <backend error>"`.
    pub fn describe(&self) -> String {
        if self.writes_ok() {
            return "ok".into();
        }
        let since = DateTime::<Utc>::from_timestamp_millis(self.since_ms.load(Ordering::SeqCst))
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        format!("failing since {since}: {error}")
    }

    fn failed(&self, e: &StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e.to_string();
        if !self.failing.swap(true, Ordering::SeqCst) {
            self.since_ms
                .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
            warn!(error = %e, "store writes are failing: held in memory and retried; not ready");
        }
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            info!("store writes succeed again; ready");
        }
    }
}

/// One held write.
#[derive(Debug, Clone)]
enum Held {
    Record(Box<CallRecord>),
    Event(CallEvent),
    Line(TranscriptLine),
    /// The [`DROPPED_EVENT`] marker: counts so far, written as an event.
    Dropped {
        lines: u64,
        events: u64,
    },
}

impl Held {
    fn counts(&self) -> bool {
        matches!(self, Held::Event(_) | Held::Line(_))
    }

    async fn write(
        &self,
        call_id: &str,
        store: &dyn Store,
        limits: HoldLimits,
    ) -> Result<(), StoreError> {
        match self {
            Held::Record(r) => store.update_call(r).await,
            Held::Event(e) => store.append_event(e).await,
            Held::Line(l) => store.append_transcript(l).await,
            Held::Dropped { lines, events } => {
                store
                    .append_event(&CallEvent::new(
                        call_id,
                        DROPPED_EVENT,
                        json!({
                            "dropped_lines": lines,
                            "dropped_events": events,
                            "per_call_bound": limits.per_call,
                            "total_bound": limits.total,
                        }),
                    ))
                    .await
            }
        }
    }
}

#[derive(Debug, Default)]
struct CallQueue {
    items: VecDeque<(u64, Held)>,
    /// Lines and events among `items`.
    counted: usize,
}

#[derive(Debug, Default)]
struct Queues {
    calls: HashMap<String, CallQueue>,
    /// Lines and events held in all.
    counted: usize,
    /// Everything held (with records and markers).
    items: usize,
    seq: u64,
}

struct Shared {
    inner: Arc<dyn Store>,
    limits: HoldLimits,
    queues: Mutex<Queues>,
    health: Arc<StoreHealth>,
    wake: Arc<tokio::sync::Notify>,
    /// One writer of held writes at a time (the retry task, or a flush before a CAS).
    draining: tokio::sync::Mutex<()>,
}

impl Shared {
    fn queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, q: &Queues) {
        self.health.pending.store(q.items, Ordering::SeqCst);
        metrics::gauge!(names::STORE_PENDING).set(q.items as f64);
    }

    /// Whether a write for `call_id` must join the held writes instead of going straight on.
    fn must_hold(&self, call_id: &str) -> bool {
        !self.health.writes_ok() || self.queues().calls.contains_key(call_id)
    }

    /// Holds `held` for `call_id`. `Err` when the bound dropped it.
    fn hold(&self, call_id: &str, held: Held) -> Result<(), StoreError> {
        let mut q = self.queues();
        q.seq += 1;
        let seq = q.seq;
        let over_total = q.counted >= self.limits.total;
        let per_call = self.limits.per_call;
        let entry = q.calls.entry(call_id.to_string()).or_default();
        let mut added = 0isize;
        let mut counted = 0isize;
        let result = if let Held::Record(_) = held {
            let before = entry.items.len();
            entry.items.retain(|(_, h)| !matches!(h, Held::Record(_)));
            added -= (before - entry.items.len()) as isize;
            entry.items.push_back((seq, held));
            added += 1;
            Ok(())
        } else if over_total || entry.counted >= per_call {
            let kind = if matches!(held, Held::Line(_)) {
                "transcript"
            } else {
                "event"
            };
            metrics::counter!(names::STORE_DROPPED, "kind" => kind).increment(1);
            let is_line = matches!(held, Held::Line(_));
            match entry.items.back_mut() {
                Some((_, Held::Dropped { lines, events })) => {
                    *if is_line { lines } else { events } += 1;
                }
                _ => {
                    entry.items.push_back((
                        seq,
                        Held::Dropped {
                            lines: u64::from(is_line),
                            events: u64::from(!is_line),
                        },
                    ));
                    added += 1;
                }
            }
            warn!(
                call_id,
                kind, "store write dropped: the held writes of this call are at their bound"
            );
            Err(StoreError::Backend(format!(
                "store writes are failing and this call's held writes are at their bound; {kind} dropped"
            )))
        } else {
            entry.counted += 1;
            counted += 1;
            entry.items.push_back((seq, held));
            added += 1;
            Ok(())
        };
        q.items = (q.items as isize + added).max(0) as usize;
        q.counted = (q.counted as isize + counted).max(0) as usize;
        self.publish(&q);
        drop(q);
        self.wake.notify_one();
        result
    }

    /// Writes the held writes of `call_id` (or of every call) in order until one fails.
    async fn drain(&self, only: Option<&str>) -> Result<usize, StoreError> {
        let _one = self.draining.lock().await;
        let ids: Vec<String> = match only {
            Some(id) => vec![id.to_string()],
            None => {
                let q = self.queues();
                let mut ids: Vec<(u64, String)> = q
                    .calls
                    .iter()
                    .filter_map(|(id, c)| c.items.front().map(|(s, _)| (*s, id.clone())))
                    .collect();
                ids.sort();
                ids.into_iter().map(|(_, id)| id).collect()
            }
        };
        let mut written = 0;
        for id in ids {
            loop {
                let front = {
                    let q = self.queues();
                    match q.calls.get(&id).and_then(|c| c.items.front()) {
                        Some((seq, h)) => (*seq, h.clone()),
                        None => break,
                    }
                };
                let outcome = front.1.write(&id, self.inner.as_ref(), self.limits).await;
                match outcome {
                    Err(e @ StoreError::Backend(_)) => {
                        self.health.failed(&e);
                        return Err(e);
                    }
                    Err(e) => {
                        // Never writable (e.g. the record of a call that was never created).
                        warn!(call_id = %id, error = %e, "held store write refused; dropped");
                        metrics::counter!(names::STORE_DROPPED, "kind" => "refused").increment(1);
                    }
                    Ok(()) => written += 1,
                }
                let mut q = self.queues();
                let mut removed = 0;
                let mut uncounted = 0;
                if let Some(c) = q.calls.get_mut(&id) {
                    if c.items.front().map(|(s, _)| *s) == Some(front.0) {
                        let (_, h) = c.items.pop_front().expect("front exists");
                        removed = 1;
                        if h.counts() {
                            c.counted -= 1;
                            uncounted = 1;
                        }
                    }
                    if c.items.is_empty() {
                        q.calls.remove(&id);
                    }
                }
                q.items -= removed;
                q.counted -= uncounted;
                self.publish(&q);
            }
        }
        if self.queues().items == 0 {
            self.health.recovered();
        }
        Ok(written)
    }

    /// A write that needs no call: a webhook-id claim that expires in a minute, then its release.
    async fn probe(&self) -> Result<(), StoreError> {
        let id = format!("voxmachina-store-probe-{:016x}", rand::random::<u64>());
        let now = Utc::now();
        self.inner
            .claim_webhook(&id, now, now + chrono::Duration::minutes(1))
            .await?;
        let _ = self.inner.release_webhook(&id).await;
        Ok(())
    }

    /// [`Shared::note`], passing `r` on.
    fn noted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        self.note(&r);
        r
    }

    /// Notes the outcome of a write that is never held.
    fn note<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Err(e @ StoreError::Backend(_)) => self.health.failed(e),
            Ok(_) if self.queues().items == 0 => self.health.recovered(),
            _ => {}
        }
    }
}

/// The retry task: drains held writes (or probes while writes fail), backing off on failure.
async fn retry_loop(shared: Weak<Shared>) {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut backoff = builder.build();
    loop {
        let Some(s) = shared.upgrade() else { return };
        let work = s.queues().items > 0;
        let outcome = if work {
            s.drain(None).await.map(|_| ())
        } else if !s.health.writes_ok() {
            let r = s.probe().await;
            if r.is_ok() {
                s.health.recovered();
            }
            r
        } else {
            // Idle: wait for held writes (re-checking that the store still exists).
            let wake = s.wake.clone();
            drop(s);
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        drop(s);
        match outcome {
            Ok(()) => backoff = builder.build(),
            Err(_) => {
                let delay = backoff.next().unwrap_or(RETRY_MAX_DELAY);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The store wrapper described in the module docs.
#[derive(Clone)]
pub struct ResilientStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ResilientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientStore")
            .field("limits", &self.shared.limits)
            .field("pending", &self.shared.health.pending())
            .finish_non_exhaustive()
    }
}

impl ResilientStore {
    /// Wraps `inner` and starts the retry task on the current tokio runtime (it ends when the
    /// last clone is dropped).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(inner: Arc<dyn Store>, limits: HoldLimits) -> ResilientStore {
        let shared = Arc::new(Shared {
            inner,
            limits: HoldLimits {
                per_call: limits.per_call.max(1),
                total: limits.total.max(1),
            },
            queues: Mutex::default(),
            health: Arc::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            draining: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(retry_loop(Arc::downgrade(&shared)));
        ResilientStore { shared }
    }

    /// The write health (for `GET /readyz` and the webhook handler).
    pub fn health(&self) -> Arc<StoreHealth> {
        self.shared.health.clone()
    }

    /// Tries to write every held write now (shutdown): the number written, or the error that
    /// stopped it.
    ///
    /// # Errors
    /// The backend error of the first write that failed.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        self.shared.drain(None).await
    }

    /// Runs `attempt` (the write on the backend) unless the call's writes must be held; holds
    /// `held()` (a copy, made only then) when it is not run or fails with a backend error.
    async fn write(
        &self,
        call_id: &str,
        attempt: impl std::future::Future<Output = Result<(), StoreError>> + Send,
        held: impl FnOnce() -> Held + Send,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        if s.must_hold(call_id) {
            return s.hold(call_id, held());
        }
        match attempt.await {
            Ok(()) => {
                if s.queues().items == 0 {
                    s.health.recovered();
                }
                Ok(())
            }
            Err(e @ StoreError::Backend(_)) => {
                warn!(call_id, error = %e, "store write failed; held in memory and retried");
                metrics::counter!(names::STORE_ERRORS, "op" => "held_write").increment(1);
                s.health.failed(&e);
                s.hold(call_id, held())
            }
            Err(e) => Err(e),
        }
    }

    /// The held writes of `call_id` matching `pick`, in order.
    fn held<T>(&self, call_id: &str, pick: impl Fn(&Held) -> Option<T>) -> Vec<T> {
        self.shared
            .queues()
            .calls
            .get(call_id)
            .map(|c| c.items.iter().filter_map(|(_, h)| pick(h)).collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Store for ResilientStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.inner.ping().await
    }

    async fn claim_webhook(
        &self,
        webhook_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.shared.noted(
            self.shared
                .inner
                .claim_webhook(webhook_id, now, expires_at)
                .await,
        )
    }

    async fn release_webhook(&self, webhook_id: &str) -> Result<(), StoreError> {
        self.shared
            .noted(self.shared.inner.release_webhook(webhook_id).await)
    }

    async fn claim_sms_window(
        &self,
        number: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.shared
            .noted(self.shared.inner.claim_sms_window(number, now, until).await)
    }

    async fn create_call(&self, record: &CallRecord) -> Result<CreateOutcome, StoreError> {
        self.shared
            .noted(self.shared.inner.create_call(record).await)
    }

    async fn transition_call(
        &self,
        call_id: &str,
        from: &[CallState],
        to: CallState,
    ) -> Result<bool, StoreError> {
        let held = self.shared.queues().calls.contains_key(call_id);
        if held {
            self.shared.drain(Some(call_id)).await?;
        }
        self.shared
            .noted(self.shared.inner.transition_call(call_id, from, to).await)
    }

    async fn update_call(&self, record: &CallRecord) -> Result<(), StoreError> {
        self.write(
            &record.call_id,
            self.shared.inner.update_call(record),
            || Held::Record(Box::new(record.clone())),
        )
        .await
    }

    async fn get_call(&self, call_id: &str) -> Result<Option<CallRecord>, StoreError> {
        let held = self.held(call_id, |h| match h {
            Held::Record(r) => Some((**r).clone()),
            _ => None,
        });
        match held.into_iter().last() {
            Some(r) => Ok(Some(r)),
            None => self.shared.inner.get_call(call_id).await,
        }
    }

    async fn list_calls(&self, query: &CallQuery) -> Result<Vec<CallRecord>, StoreError> {
        self.shared.inner.list_calls(query).await
    }

    async fn live_calls(&self) -> Result<Vec<CallRecord>, StoreError> {
        self.shared.inner.live_calls().await
    }

    async fn append_transcript(&self, line: &TranscriptLine) -> Result<(), StoreError> {
        self.write(
            &line.call_id,
            self.shared.inner.append_transcript(line),
            || Held::Line(line.clone()),
        )
        .await
    }

    async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptLine>, StoreError> {
        let mut lines = self.shared.inner.transcript(call_id).await?;
        lines.extend(self.held(call_id, |h| match h {
            Held::Line(l) => Some(l.clone()),
            _ => None,
        }));
        Ok(lines)
    }

    async fn append_event(&self, event: &CallEvent) -> Result<(), StoreError> {
        self.write(
            &event.call_id,
            self.shared.inner.append_event(event),
            || Held::Event(event.clone()),
        )
        .await
    }

    async fn events(&self, call_id: &str) -> Result<Vec<CallEvent>, StoreError> {
        let mut events = self.shared.inner.events(call_id).await?;
        events.extend(self.held(call_id, |h| match h {
            Held::Event(e) => Some(e.clone()),
            _ => None,
        }));
        Ok(events)
    }

    /// The stored page only: writes held during an outage have no store position yet and
    /// appear in pages once they are written ([`Store::transcript`] includes them at once).
    async fn transcript_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TranscriptLine>, StoreError> {
        self.shared
            .inner
            .transcript_page(call_id, after, limit)
            .await
    }

    /// The stored page only, as [`ResilientStore::transcript_page`].
    async fn events_page(
        &self,
        call_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<CallEvent>, StoreError> {
        self.shared.inner.events_page(call_id, after, limit).await
    }

    async fn purge(
        &self,
        now: DateTime<Utc>,
        calls_before: DateTime<Utc>,
    ) -> Result<PurgeStats, StoreError> {
        self.shared
            .noted(self.shared.inner.purge(now, calls_before).await)
    }

    async fn acquire_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.shared.noted(
            self.shared
                .inner
                .acquire_lease(call_id, owner, ttl, now)
                .await,
        )
    }

    async fn renew_lease(
        &self,
        call_id: &str,
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.shared.noted(
            self.shared
                .inner
                .renew_lease(call_id, owner, ttl, now)
                .await,
        )
    }

    async fn renew_leases(
        &self,
        call_ids: &[String],
        owner: &str,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Vec<Result<bool, StoreError>> {
        let answers = self
            .shared
            .inner
            .renew_leases(call_ids, owner, ttl, now)
            .await;
        if let Some(bad) = answers.iter().find(|r| r.is_err()) {
            self.shared.note(bad);
        }
        answers
    }

    async fn release_lease(&self, call_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.shared
            .noted(self.shared.inner.release_lease(call_id, owner).await)
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.shared.inner.leases().await
    }

    async fn takeover_candidates(
        &self,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
        reclaim_owner: Option<&str>,
    ) -> Result<Vec<TakeoverCandidate>, StoreError> {
        self.shared
            .inner
            .takeover_candidates(now, ttl, reclaim_owner)
            .await
    }

    async fn mint_token(
        &self,
        payload: &HandoverPayload,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        self.shared
            .noted(self.shared.inner.mint_token(payload, ttl, now).await)
    }

    async fn redeem_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError> {
        self.shared
            .noted(self.shared.inner.redeem_token(token, now).await)
    }

    async fn peek_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HandoverPayload>, StoreError> {
        self.shared.inner.peek_token(token, now).await
    }

    async fn latest_handover_for_caller(
        &self,
        caller_number: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, HandoverPayload)>, StoreError> {
        self.shared
            .inner
            .latest_handover_for_caller(caller_number, now)
            .await
    }

    async fn mint_stream_token(
        &self,
        grant: &StreamGrant,
        ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        self.shared
            .noted(self.shared.inner.mint_stream_token(grant, ttl, now).await)
    }

    async fn redeem_stream_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<StreamGrant>, StoreError> {
        self.shared
            .noted(self.shared.inner.redeem_stream_token(token, now).await)
    }
}
