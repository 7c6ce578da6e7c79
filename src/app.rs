//! Wiring: builds the services once at start-up ([`start`]) and hands each part of the server
//! the narrow services it uses (the HTTP routes' [`HttpState`], the monitors'
//! [`MonitorContext`], the takeover scan's [`CallServices`]); runs the background tasks
//! (retention purge, takeover scan) and graceful shutdown. Nothing below this module imports
//! it: [`AppState`] is the handle the entry points (`cli`, `demo`, tests) keep on a running
//! server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::bridge::{BridgeServices, TwilioContext};
use crate::calls::after_call::AfterCallServices;
use crate::calls::lease::Leases;
use crate::calls::monitor::MonitorContext;
use crate::calls::record::{Api, CallState};
use crate::calls::registry::CallRegistry;
use crate::calls::services::CallServices;
use crate::calls::takeover::stuck_accept_after;
use crate::config::{Config, Secret, Secrets};
use crate::http::{AdminServices, HealthServices, HttpState};
use crate::hubspot::HubSpot;
use crate::openai::CallControl;
use crate::prompts::{LoadErrors, ProfileSet, Profiles, check_named_secrets};
use crate::store::{HoldLimits, ResilientStore, Store, StoreError};
use crate::telemetry;
use crate::tools;
use crate::webhook::handler::WebhookServices;
use crate::webhook::signature::{KeyError, Verifier};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The prompt profiles are invalid (each error has file and line).
    #[error("prompt profiles are invalid:\n{0}")]
    Profiles(#[from] LoadErrors),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The webhook secret is unusable.
    #[error(transparent)]
    WebhookSecret(#[from] KeyError),
    /// Binding the listener failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Building the HTTP client failed.
    #[error("http client: {0}")]
    Http(String),
    /// A secret is empty or only whitespace, or a secret file is unreadable (fail closed).
    #[error(transparent)]
    Secret(#[from] crate::config::ConfigError),
}

/// The services of a running server, as wired at start-up (what the entry points and tests
/// inspect and drive: reload, shutdown, the store, the registry).
pub struct AppState {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Webhook signature verifier (holds the key).
    pub verifier: Verifier,
    /// Persistence: the opened store behind a [`ResilientStore`], so failed writes of a call
    /// are held and retried.
    pub store: Arc<dyn Store>,
    /// The same [`ResilientStore`]: write health for `GET /readyz` and the webhook handler,
    /// and the held writes flushed at shutdown.
    pub held_writes: ResilientStore,
    /// Current prompt profiles; swapped whole on reload, running calls keep their profile.
    pub profiles: Profiles,
    /// OpenAI call control.
    pub call_control: CallControl,
    /// What monitors share (registry, store, sideband settings, shutdown token).
    pub monitors: Arc<MonitorContext>,
    /// Bearer token for the admin API; `None` disables it.
    pub admin_token: Option<Secret>,
    /// Prometheus render handle.
    pub metrics: PrometheusHandle,
    /// False once shutdown began: new webhooks get 503 so OpenAI retries them elsewhere/later.
    pub accepting: Arc<AtomicBool>,
    /// Twilio Media Streams path (`crate::bridge`): `None` unless `[twilio] account_sid` and
    /// `TWILIO_AUTH_TOKEN` are both set.
    pub twilio: Option<TwilioContext>,
}

impl AppState {
    /// The registry of calls monitored by this instance.
    pub fn registry(&self) -> &CallRegistry {
        &self.monitors.registry
    }

    /// The services of the calls domain (shared handles).
    pub fn calls(&self) -> CallServices {
        CallServices {
            config: self.config.clone(),
            store: self.store.clone(),
            profiles: self.profiles.clone(),
            monitors: self.monitors.clone(),
        }
    }

    /// The router state: each group of routes gets its own services.
    pub fn http_state(&self) -> HttpState {
        let calls = self.calls();
        HttpState {
            webhook: Arc::new(WebhookServices {
                calls: calls.clone(),
                verifier: self.verifier.clone(),
                held_writes: self.held_writes.clone(),
                call_control: self.call_control.clone(),
                accepting: self.accepting.clone(),
                twilio_auth_token: self.twilio.as_ref().map(|t| t.auth_token.clone()),
            }),
            bridge: Arc::new(BridgeServices {
                calls: calls.clone(),
                twilio: self.twilio.clone(),
                accepting: self.accepting.clone(),
            }),
            admin: Arc::new(AdminServices {
                admin_token: self.admin_token.clone(),
                calls: calls.clone(),
            }),
            health: Arc::new(HealthServices {
                calls,
                held_writes: self.held_writes.clone(),
                accepting: self.accepting.clone(),
                metrics: self.metrics.clone(),
            }),
        }
    }

    /// Reloads prompt profiles from disk. On error the current set stays in force.
    ///
    /// # Errors
    /// [`LoadErrors`] listing every problem with file and line.
    pub fn reload_profiles(&self) -> Result<usize, LoadErrors> {
        self.profiles.reload(&self.config.prompts.dir)
    }
}

/// A running server.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<AppState>,
    http_shutdown: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `http://{addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: stop taking webhooks (503), wait up to `grace` for monitored calls to
    /// end, detach the rest (they stay live in the store for the next start), stop HTTP.
    ///
    /// Bounded whatever calls and connections do: monitors that have not detached
    /// [`DETACH_WAIT`] after the grace are aborted (their drop guards hand the leases back and
    /// remove the registry entries), and HTTP connections still open [`HTTP_CLOSE_WAIT`] later
    /// (WebSockets, slow clients) are dropped. Returns within `grace` + 5 s.
    pub async fn shutdown(self, grace: Duration) {
        let state = self.state.clone();
        state.accepting.store(false, Ordering::SeqCst);
        let registry = state.registry().clone();
        wait_until_empty(&registry, grace).await;
        let detached = registry.len();
        if detached > 0 {
            info!(
                calls = detached,
                "detaching live calls; they will be reattached on the next start"
            );
        }
        state.monitors.shutdown.cancel();
        if !wait_until_empty(&registry, DETACH_WAIT).await {
            let aborted = registry.abort_all();
            warn!(
                monitors = aborted,
                "monitors did not detach in time; aborted (their leases are handed back)"
            );
            wait_until_empty(&registry, Duration::from_secs(1)).await;
        }
        let held = state.held_writes.health().pending();
        if held > 0 {
            match tokio::time::timeout(Duration::from_secs(3), state.held_writes.flush()).await {
                Ok(Ok(_)) => info!(writes = held, "held store writes written before exit"),
                _ => error!(
                    writes = state.held_writes.health().pending(),
                    "store writes still failing at exit: held call records, events and transcript lines are lost"
                ),
            }
        }
        self.http_shutdown.cancel();
        let mut join = self.join;
        match tokio::time::timeout(HTTP_CLOSE_WAIT, &mut join).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "server task failed"),
            Err(_) => {
                warn!("HTTP connections still open after the shutdown deadline; closing them");
                join.abort();
            }
        }
    }
}

/// After the drain grace, how long monitors get to detach before they are aborted.
pub const DETACH_WAIT: Duration = Duration::from_secs(2);

/// After the monitors are gone, how long open HTTP connections (WebSockets, slow clients) get
/// to finish before the server is dropped.
pub const HTTP_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Waits up to `limit` for `registry` to be empty; true when it is.
async fn wait_until_empty(registry: &CallRegistry, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !registry.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Builds the state, binds `config.server.listen`, serves, and reattaches calls the store says
/// are live.
///
/// # Errors
/// [`StartError`] when profiles, store, secret or the listener are unusable.
pub async fn start(config: Config, secrets: Secrets) -> Result<Running, StartError> {
    let store = crate::store::open(&config).await?;
    start_with_store(config, secrets, store).await
}

/// [`start`] with an already opened store.
///
/// # Errors
/// As [`start`].
pub async fn start_with_store(
    config: Config,
    secrets: Secrets,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let profiles = ProfileSet::load(&config.prompts.dir)?;
    secrets.check_not_blank()?;
    check_named_secrets(&config, &profiles)?;
    let config = Arc::new(config);
    let held_writes = ResilientStore::new(
        store,
        HoldLimits {
            per_call: config.store.write_queue_per_call,
            total: config.store.write_queue_total,
        },
    );
    let store: Arc<dyn Store> = Arc::new(held_writes.clone());
    let verifier = Verifier::new(
        secrets.webhook_secret.expose(),
        config.webhook.tolerance_secs,
    )?;
    let call_control = CallControl::new(
        &config.openai.base_url,
        secrets.openai_api_key.clone(),
        Duration::from_millis(config.openai.request_timeout_ms),
    )
    .map_err(|e| StartError::Http(e.to_string()))?;
    let tools = tool_services(&config, &secrets, store.clone())?;
    let after_call = Arc::new(
        AfterCallServices::from_config(&config, secrets.twilio_auth_token.clone())
            .with_store(store.clone()),
    );
    let twilio = crate::bridge::TwilioContext::from_config(
        &config.twilio,
        secrets.twilio_auth_token.as_ref(),
        secrets.twilio_webhook_shared_key.as_ref(),
    )
    .map_err(|e| StartError::Http(format!("twilio: {e}")))?;
    let monitors = Arc::new(MonitorContext {
        store: store.clone(),
        call_control: call_control.clone(),
        sideband_url: config.openai.sideband_url.clone(),
        api_key: secrets.openai_api_key.clone(),
        config: config.monitor.clone(),
        log_transcripts: config.logging.log_transcripts,
        registry: CallRegistry::default(),
        shutdown: CancellationToken::new(),
        tools,
        after_call,
        hubspot: config.hubspot.clone(),
        twilio: twilio.as_ref().map(|t| t.rest.clone()),
        limits: config.limits.clone(),
        leases: Arc::new(Leases::new(store.clone(), &config.cluster)),
        live: crate::openai::live::LiveControl::new(
            &config.openai.live_base_url,
            &config.openai.live_sideband_url,
            secrets.openai_api_key.clone(),
            Duration::from_millis(config.openai.request_timeout_ms),
        )
        .map_err(|e| StartError::Http(e.to_string()))?,
    });
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let state = Arc::new(AppState {
        verifier,
        store,
        held_writes,
        profiles: Profiles::new(profiles),
        call_control,
        monitors,
        admin_token: secrets.admin_token,
        metrics: telemetry::metrics_handle(),
        accepting: Arc::new(AtomicBool::new(true)),
        twilio,
        config,
    });
    let router = crate::http::router(state.http_state(), state.config.webhook.max_body_bytes);
    let http_shutdown = CancellationToken::new();
    let token = http_shutdown.clone();
    let limits = state.config.http.clone();
    let join = tokio::spawn(crate::http::server::serve(listener, router, limits, token));
    info!(%addr, instance_id = %state.monitors.leases.owner(), "listening");
    spawn_retention_purge(&state, http_shutdown.clone());
    reattach_live_calls(&state.calls()).await;
    spawn_takeover_scan(&state, state.monitors.shutdown.clone());
    Ok(Running {
        addr,
        state,
        http_shutdown,
        join,
    })
}

/// How often the retention purge runs after the first run at start.
pub const RETENTION_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs [`purge_once`] at start and every [`RETENTION_PURGE_INTERVAL`] until `stop` is
/// cancelled. Does nothing when `retention.days = 0`.
fn spawn_retention_purge(state: &Arc<AppState>, stop: CancellationToken) {
    if state.config.retention.period().is_none() {
        info!("retention purge off (retention.days = 0)");
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_PURGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => { purge_once(&state).await; }
            }
        }
    });
}

/// One retention pass: `Store::purge(now, now - retention.days)`, logging what was removed.
/// Returns `None` when retention is off or the store failed (counted in
/// `voxmachina_store_errors_total{op="purge"}`).
pub async fn purge_once(state: &AppState) -> Option<crate::store::PurgeStats> {
    let period = state.config.retention.period()?;
    let now = chrono::Utc::now();
    match state.store.purge(now, now - period).await {
        Ok(stats) => {
            info!(
                calls = stats.calls,
                webhooks = stats.webhooks,
                retention_days = state.config.retention.days,
                "retention purge"
            );
            Some(stats)
        }
        Err(e) => {
            warn!(error = %e, "retention purge failed; retrying in an hour");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "purge").increment(1);
            None
        }
    }
}

/// The [`tools::Services`] of the configuration: `[tools]` settings, the secret lookup, HubSpot
/// when `[hubspot] enabled` and `HUBSPOT_TOKEN` is set, and the store.
///
/// # Errors
/// [`StartError::Http`] when an HTTP client cannot be built.
pub fn tool_services(
    config: &Config,
    secrets: &Secrets,
    store: Arc<dyn Store>,
) -> Result<Arc<tools::Services>, StartError> {
    let hubspot = HubSpot::from_config(&config.hubspot, secrets.hubspot_token.clone())
        .map_err(|e| StartError::Http(e.to_string()))?;
    Ok(Arc::new(
        tools::Services::new(config.tools.clone())
            .map_err(StartError::Http)?
            .with_hubspot(hubspot)
            .with_store(store),
    ))
}

/// Most stuck accepts reconciled per scan.
const STUCK_ACCEPTS_PER_SCAN: usize = 100;

/// Reattaches, at start, the live calls this instance may monitor (its own leases included:
/// a lease left by this instance's previous process is taken back at once). Calls whose
/// lease another instance holds are left to it. Returns how many monitors were started.
pub async fn reattach_live_calls(calls: &CallServices) -> usize {
    let n = reattach_orphans(calls, true).await;
    if n > 0 {
        info!(calls = n, "reattached live calls");
    }
    n
}

/// One takeover scan: reattaches live calls whose lease expired, or that have had no lease
/// for longer than the lease TTL (counted from `accepted_at`, else `created_at`, so a call
/// being accepted right now is left to its instance). Each lease is taken with a
/// conditional write, so of several instances scanning at once exactly one reattaches a
/// call. Returns how many monitors were started.
pub async fn takeover_once(calls: &CallServices) -> usize {
    let n = reattach_orphans(calls, false).await;
    if n > 0 {
        info!(calls = n, "took over calls from another instance");
    }
    n
}

/// Live calls not monitored here whose lease is free to take (absent for longer than the
/// TTL, expired, or — when `own` — held by this instance id), leased and reattached.
async fn reattach_orphans(calls: &CallServices, own: bool) -> usize {
    let leases = &calls.monitors.leases;
    let me = leases.owner().to_string();
    let ttl = chrono::Duration::from_std(leases.ttl()).unwrap_or(chrono::Duration::MAX);
    let reclaim = own.then_some(me.as_str());
    let candidates = match calls
        .store
        .takeover_candidates(chrono::Utc::now(), ttl, reclaim)
        .await
    {
        Ok(candidates) => candidates,
        Err(e) => {
            warn!(error = %e, "cannot list live calls or leases; none reattached");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "takeover_scan").increment(1);
            return 0;
        }
    };
    let mut n = reconcile_stuck_accepts(calls).await;
    for candidate in candidates {
        if calls.registry().contains(&candidate.call_id) {
            continue;
        }
        let previous = candidate.lease.map(|l| l.owner);
        let span = tracing::info_span!("call", call_id = %candidate.call_id);
        if calls
            .reattach_one(&candidate.call_id, previous.as_deref(), own)
            .instrument(span)
            .await
        {
            n += 1;
        }
    }
    n
}

/// Records left in `accepting` for longer than [`stuck_accept_after`] (the decision task
/// died with its process, or panicked) and monitored nowhere: each is leased (exactly one
/// instance wins) and attached with [`Attach::Reconcile`]: a live call gets its monitor (and
/// greeting), a call whose sideband answers 404 is recorded `missed`. Twilio media records
/// are left to the bridge. Returns how many monitors were started.
async fn reconcile_stuck_accepts(calls: &CallServices) -> usize {
    let stuck_after = chrono::Duration::from_std(stuck_accept_after(&calls.config))
        .unwrap_or(chrono::Duration::MAX);
    // `..default()`: fields added to the query later (paging) keep their defaults here.
    #[allow(clippy::needless_update)]
    let query = crate::store::CallQuery {
        state: Some(CallState::Accepting),
        before: chrono::Utc::now().checked_sub_signed(stuck_after),
        limit: STUCK_ACCEPTS_PER_SCAN,
        ..crate::store::CallQuery::default()
    };
    let stuck = match calls.store.list_calls(&query).await {
        Ok(stuck) => stuck,
        Err(e) => {
            warn!(error = %e, "cannot list stuck accepts; none reconciled");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "list_calls").increment(1);
            return 0;
        }
    };
    let mut n = 0;
    for record in stuck {
        if record.api == Api::TwilioMedia || calls.registry().contains(&record.call_id) {
            continue;
        }
        let span = tracing::info_span!("call", call_id = %record.call_id);
        if calls.reconcile_one(&record.call_id).instrument(span).await {
            n += 1;
        }
    }
    n
}

/// How often [`takeover_once`] runs: `[cluster] takeover_scan_interval_ms`, first one interval
/// after start (the start itself ran [`reattach_live_calls`]), until `stop` is cancelled.
fn spawn_takeover_scan(state: &AppState, stop: CancellationToken) {
    let calls = state.calls();
    let every = state.config.cluster.takeover_scan_interval();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => { takeover_once(&calls).await; }
            }
        }
    });
}
