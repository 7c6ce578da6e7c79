//! Call monitor leases: with several controller instances on one store, each live call has
//! exactly one monitor, run by the instance holding the call's lease.
//!
//! - The instance that accepts a call takes its lease when the monitor starts
//!   ([`crate::calls::monitor`]), and keeps it ([`Leases::hold`], a guard owned by the
//!   monitor's task, so renewals stop however the task ends): one keeper task per instance
//!   renews every held lease each `[cluster] lease_renew_interval_ms` with one
//!   [`Store::renew_leases`] per [`RENEW_BATCH`] leases, the batches spread over a quarter of
//!   the interval (SQLite: one transaction per batch, not one write per call).
//! - A renewal the store refuses (the lease expired or another instance took it) makes the
//!   monitor detach without touching the call: the other owner monitors it now. A store *error*
//!   does not: the monitor keeps the call (a failing dependency never drops a call) and retries
//!   at the next interval.
//! - When the call ends the hold is dropped first (no renewal of an ended call, and a refused
//!   renewal in flight for it is not reported as lost), then the lease is released (deleted). When the instance shuts down
//!   gracefully and detaches, the lease is handed back ([`Leases::hand_back`]): it stays stored
//!   under this owner but expires at once, so another instance takes the call over at its next
//!   scan, and this instance's next start (same id) takes it back at once.
//! - Every instance runs a takeover scan (`crate::calls::takeover`): a live call whose lease expired — or
//!   that has had none for longer than the lease TTL — is taken over with a conditional
//!   [`Store::acquire_lease`] (exactly one instance wins) and its sideband reattached.
//!
//! The guards are the store's conditional writes ([`Store::acquire_lease`], [`Store::renew_lease`],
//! [`Store::release_lease`]), so instances need no other coordination. Instance clocks must agree
//! to well within the lease TTL (expiry is compared with each instance's `now`). The Realtime docs
//! do not say whether two sideband sockets may attach to one call
//! (<https://developers.openai.com/api/docs/guides/realtime-server-controls>); leases give every
//! side effect a single owner either way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::store::{Store, StoreError};
use crate::telemetry::names;

/// Values of the `event` label of `voxmachina_leases_total`.
pub mod events {
    /// A lease taken for a call this instance just accepted, or reattached at start.
    pub const ACQUIRED: &str = "acquired";
    /// A lease taken over by the scan from an owner whose lease expired (or that had none).
    pub const TAKEN_OVER: &str = "taken_over";
    /// A renewal the store accepted.
    pub const RENEWED: &str = "renewed";
    /// A renewal the store refused: the monitor detached.
    pub const LOST: &str = "lost";
    /// A lease released when its call ended, or handed back when the instance shut down.
    pub const RELEASED: &str = "released";
}

/// Counts one lease event in `voxmachina_leases_total{event}`.
pub fn count(event: &'static str) {
    metrics::counter!(names::LEASES, "event" => event).increment(1);
}

/// The leases this instance keeps: `call_id` → (the [`HeldLease`]'s generation, the monitor's
/// detach token).
#[derive(Debug, Default)]
struct HeldSet {
    next: u64,
    leases: HashMap<String, (u64, CancellationToken)>,
}

type Held = Mutex<HeldSet>;

/// This instance's lease settings and the store they live in. Cheap to share (`Arc`).
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    owner: String,
    ttl: Duration,
    renew_every: Duration,
    held: Arc<Held>,
    keeper_started: Arc<AtomicBool>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("owner", &self.owner)
            .field("ttl", &self.ttl)
            .field("renew_every", &self.renew_every)
            .finish_non_exhaustive()
    }
}

impl Leases {
    /// Leases in `store` owned by `config.instance_id()`, lasting `lease_ttl_ms`, renewed every
    /// `lease_renew_interval_ms`.
    pub fn new(store: Arc<dyn Store>, config: &ClusterConfig) -> Self {
        Self {
            store,
            owner: config.instance_id(),
            ttl: config.lease_ttl(),
            renew_every: config.lease_renew_interval(),
            held: Arc::default(),
            keeper_started: Arc::default(),
        }
    }

    /// The owner name this instance writes into leases (`[cluster] instance_id`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease duration.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn chrono_ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX)
    }

    /// Takes (or extends) the lease of `call_id` for this instance: [`Store::acquire_lease`]
    /// at the current time. `Ok(false)` = another instance holds a live lease.
    ///
    /// # Errors
    /// The store's error (the caller decides whether to go on without the lease).
    pub async fn acquire(&self, call_id: &str) -> Result<bool, StoreError> {
        self.store
            .acquire_lease(call_id, &self.owner, self.chrono_ttl(), Utc::now())
            .await
    }

    /// Releases this instance's lease of `call_id` (a lease held by another owner is left
    /// alone). Failures are logged and counted; the lease then expires on its own.
    pub async fn release(&self, call_id: &str) {
        match self.store.release_lease(call_id, &self.owner).await {
            Ok(true) => count(events::RELEASED),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot release the call lease; it will expire");
                metrics::counter!(names::STORE_ERRORS, "op" => "release_lease").increment(1);
            }
        }
    }

    /// Hands the lease of `call_id` back on a graceful detach: renews it to expire 1 ms from
    /// now, so it stays stored under this owner (the next start of this instance takes it back
    /// at once) but any instance may take it over. Failures are logged and counted; the lease
    /// then expires on its own.
    pub async fn hand_back(&self, call_id: &str) {
        let soon = chrono::Duration::milliseconds(1);
        match self
            .store
            .renew_lease(call_id, &self.owner, soon, Utc::now())
            .await
        {
            Ok(true) => count(events::RELEASED),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot hand the call lease back; it will expire");
                metrics::counter!(names::STORE_ERRORS, "op" => "renew_lease").increment(1);
            }
        }
    }

    /// Keeps the lease of `call_id` until the store refuses a renewal (then cancels `detach`
    /// and returns) or `detach` is cancelled by the monitor ([`Leases::hold`] for as long as
    /// the future runs). Dropping the future stops keeping the lease.
    pub async fn keep(&self, call_id: &str, detach: CancellationToken) {
        let _held = self.hold(call_id, detach.clone());
        detach.cancelled().await;
    }

    /// Starts keeping the lease of `call_id` until the returned guard is dropped: the renewals
    /// are done by this instance's keeper task (started on first use): every renew interval one
    /// [`Store::renew_leases`] for all kept leases. A renewal the store refuses cancels
    /// `detach` (the lease was lost). Store errors are logged, counted in
    /// `voxmachina_store_errors_total{op="renew_lease"}` and retried at the next interval (the
    /// monitor keeps the call meanwhile).
    ///
    /// The guard is the monitor's: it drops when the call ends (before the lease is released),
    /// when the monitor detaches and when its task dies, so no lease of an ended call is
    /// renewed and no renewal answer about it is reported as a lost lease.
    pub fn hold(&self, call_id: &str, detach: CancellationToken) -> HeldLease {
        let generation = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.next += 1;
            let generation = held.next;
            held.leases
                .insert(call_id.to_string(), (generation, detach));
            generation
        };
        if !self.keeper_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(renew_loop(
                self.store.clone(),
                self.owner.clone(),
                self.chrono_ttl(),
                self.renew_every,
                Arc::downgrade(&self.held),
            ));
        }
        HeldLease {
            held: self.held.clone(),
            call_id: call_id.to_string(),
            generation,
        }
    }

    /// True while a [`HeldLease`] of `call_id` is alive on this instance.
    pub fn is_held(&self, call_id: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leases
            .contains_key(call_id)
    }
}

/// A lease kept by the keeper ([`Leases::hold`]); dropping it stops the renewals at once.
#[derive(Debug)]
pub struct HeldLease {
    held: Arc<Held>,
    call_id: String,
    generation: u64,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Only our own entry: a later holder of the same call keeps its lease.
        if held
            .leases
            .get(&self.call_id)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            held.leases.remove(&self.call_id);
        }
    }
}

/// Most leases renewed by one [`Store::renew_leases`] call of the keeper.
pub const RENEW_BATCH: usize = 256;

/// The keeper: every `every`, renews all leases in `held` with [`Store::renew_leases`], in
/// batches of [`RENEW_BATCH`] spread over the first quarter of the interval; cancels the detach
/// token of each lease the store refused. Ends when the [`Leases`] are gone.
async fn renew_loop(
    store: Arc<dyn Store>,
    owner: String,
    ttl: chrono::Duration,
    every: Duration,
    held: Weak<Held>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = held.upgrade() else { return };
        let kept: Vec<(String, u64, CancellationToken)> = set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leases
            .iter()
            .filter(|(_, (_, t))| !t.is_cancelled())
            .map(|(id, (g, t))| (id.clone(), *g, t.clone()))
            .collect();
        drop(set);
        if kept.is_empty() {
            continue;
        }
        // Batches of RENEW_BATCH spread over a quarter of the interval: renewing 10 000 leases
        // at once kept the store busy for 190 ms every interval, and webhooks waited behind it.
        let pause = (every / 4) / kept.len().div_ceil(RENEW_BATCH).max(1) as u32;
        for (i, batch) in kept.chunks(RENEW_BATCH).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            let Some(set) = held.upgrade() else { return };
            // Calls that ended since the snapshot are not renewed.
            let batch: Vec<&(String, u64, CancellationToken)> = {
                let set = set.lock().unwrap_or_else(|p| p.into_inner());
                batch
                    .iter()
                    .filter(|(id, g, _)| set.leases.get(id).is_some_and(|(h, _)| h == g))
                    .collect()
            };
            if batch.is_empty() {
                continue;
            }
            let ids: Vec<String> = batch.iter().map(|(id, _, _)| id.clone()).collect();
            let answers = store.renew_leases(&ids, &owner, ttl, Utc::now()).await;
            for ((call_id, generation, detach), answer) in batch.into_iter().zip(answers) {
                // A call that ended (or detached) while its renewal was in flight is not ours
                // to report on: its lease was released on purpose.
                let kept = set
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .leases
                    .get(call_id)
                    .is_some_and(|(g, _)| g == generation);
                if !kept {
                    continue;
                }
                match answer {
                    Ok(true) => count(events::RENEWED),
                    Ok(false) => {
                        count(events::LOST);
                        info!(
                            %call_id,
                            %owner,
                            "call lease lost (expired or taken over); detaching, the call goes on"
                        );
                        detach.cancel();
                    }
                    Err(e) => {
                        warn!(%call_id, error = %e, "cannot renew the call lease; keeping the call, retrying");
                        metrics::counter!(names::STORE_ERRORS, "op" => "renew_lease").increment(1);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// Leases owned by `id`, renewed every 20 ms (real time: the SQLite store runs on its own
    /// thread; nothing below asserts on durations).
    fn leases(store: &Arc<dyn Store>, id: &str) -> Leases {
        Leases::new(
            store.clone(),
            &ClusterConfig {
                instance_id: Some(id.into()),
                lease_ttl_ms: 15_000,
                lease_renew_interval_ms: 20,
                takeover_scan_interval_ms: 5_000,
            },
        )
    }

    fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("lease.db")).unwrap();
        (Arc::new(s), dir)
    }

    async fn expiry(store: &Arc<dyn Store>) -> chrono::DateTime<Utc> {
        store.leases().await.unwrap()[0].expires_at
    }

    /// The keeper renews while the lease is ours; once another instance holds the lease the
    /// next renewal is refused and the monitor's detach token is cancelled.
    #[tokio::test]
    async fn keeper_renews_then_detaches_when_the_lease_is_taken() {
        let (store, _dir) = store();
        let a = leases(&store, "a");
        assert!(a.acquire("rtc_k").await.unwrap());
        let first = expiry(&store).await;
        let detach = CancellationToken::new();
        let keeper = {
            let (a, detach) = (a.clone(), detach.clone());
            tokio::spawn(async move { a.keep("rtc_k", detach).await })
        };
        // A renewal moves the expiry forward.
        while expiry(&store).await <= first {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!detach.is_cancelled());
        // Another owner takes the lease (as after an expiry): the next renewal fails.
        store.release_lease("rtc_k", "a").await.unwrap();
        assert!(leases(&store, "b").acquire("rtc_k").await.unwrap());
        detach.cancelled().await;
        keeper.await.unwrap();
        // a's release leaves b's lease alone.
        a.release("rtc_k").await;
        assert_eq!(store.leases().await.unwrap()[0].owner, "b");
    }

    /// More leases than one batch: the keeper renews every one of them, batch after batch, and
    /// a refusal in a later batch detaches that call only.
    #[tokio::test]
    async fn keeper_renews_leases_of_several_batches() {
        let (store, _dir) = store();
        let a = leases(&store, "a");
        let n = RENEW_BATCH * 2 + 10;
        let ids: Vec<String> = (0..n).map(|i| format!("rtc_b{i}")).collect();
        for id in &ids {
            assert!(a.acquire(id).await.unwrap());
        }
        // The latest expiry of the acquisitions: a lease past it has been renewed.
        let first = store
            .leases()
            .await
            .unwrap()
            .iter()
            .map(|l| l.expires_at)
            .max()
            .unwrap();
        let mut detach = Vec::new();
        for id in &ids {
            let token = CancellationToken::new();
            detach.push(token.clone());
            let (a, id) = (a.clone(), id.clone());
            tokio::spawn(async move { a.keep(&id, token).await });
        }
        // The last lease, in the third batch, goes to another instance.
        let last = ids.last().unwrap();
        store.release_lease(last, "a").await.unwrap();
        assert!(leases(&store, "b").acquire(last).await.unwrap());
        detach.last().unwrap().cancelled().await;
        loop {
            let held = store.leases().await.unwrap();
            let renewed = held
                .iter()
                .filter(|l| l.owner == "a" && l.expires_at > first)
                .count();
            if renewed == n - 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(detach[..n - 1].iter().all(|t| !t.is_cancelled()));
        for t in &detach {
            t.cancel();
        }
    }

    /// A cancelled detach token (shutdown) stops the keeper; handing the lease back keeps it
    /// under its owner but lets anyone take it; release removes it.
    #[tokio::test]
    async fn keeper_stops_on_detach_and_hand_back_frees_the_lease() {
        let (store, _dir) = store();
        let a = leases(&store, "a");
        assert!(a.acquire("rtc_s").await.unwrap());
        let detach = CancellationToken::new();
        detach.cancel();
        a.keep("rtc_s", detach).await;
        assert!(!leases(&store, "b").acquire("rtc_s").await.unwrap());
        a.hand_back("rtc_s").await;
        let held = store.leases().await.unwrap();
        assert_eq!(held[0].owner, "a");
        // Expired by now: b takes it (a 1 ms lease is over once b's clock reads past it).
        while !leases(&store, "b").acquire("rtc_s").await.unwrap() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.release("rtc_s").await;
        assert_eq!(store.leases().await.unwrap()[0].owner, "b");
        leases(&store, "b").release("rtc_s").await;
        assert!(store.leases().await.unwrap().is_empty());
    }

    /// Renewals stop when the monitor's hold ends (the call ended): a lease row of this owner
    /// for that call is not renewed any more, and nothing is reported as lost.
    #[tokio::test]
    async fn no_renewal_after_the_hold_ends() {
        let (store, _dir) = store();
        let a = leases(&store, "a");
        assert!(a.acquire("rtc_e").await.unwrap());
        let first = expiry(&store).await;
        let held = a.hold("rtc_e", CancellationToken::new());
        assert!(a.is_held("rtc_e"));
        while expiry(&store).await <= first {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        assert!(!a.is_held("rtc_e"));
        // A renewal already in flight may land; give it time, then nothing moves any more.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let settled = expiry(&store).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            expiry(&store).await,
            settled,
            "renewed after the hold ended"
        );
        // A second hold of the same call is not undone by the first one's guard.
        let again = a.hold("rtc_e", CancellationToken::new());
        let stale = a.hold("rtc_e", CancellationToken::new());
        drop(again);
        assert!(a.is_held("rtc_e"), "the newest hold stays");
        drop(stale);
        assert!(!a.is_held("rtc_e"));
    }
}
