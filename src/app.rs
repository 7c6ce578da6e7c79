//! Wiring: the shared [`AppState`], server start-up ([`start`]), profile reload, reattaching live
//! calls after a restart, taking over the calls of instances that died ([`takeover_once`]), and
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::calls::after_call::AfterCallServices;
use crate::calls::lease::{self, Leases};
use crate::calls::monitor::{self, Attach, MonitorContext};
use crate::calls::record::{Api, CallState};
use crate::calls::registry::CallRegistry;
use crate::config::{Config, Secret, Secrets};
use crate::hubspot::HubSpot;
use crate::openai::CallControl;
use crate::prompts::{LoadErrors, ProfileSet};
use crate::store::{DynamoStore, HoldLimits, ResilientStore, SqliteStore, Store, StoreError};
use crate::telemetry;
use crate::tools;
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

/// State shared by every request handler and monitor.
pub struct AppState {
    /// The configuration the server started with.
    pub config: Config,
    /// Webhook signature verifier (holds the key).
    pub verifier: Verifier,
    /// Persistence: the opened store behind a [`ResilientStore`], so failed writes of a call
    /// are held and retried.
    pub store: Arc<dyn Store>,
    /// The same [`ResilientStore`]: write health for `GET /readyz` and the webhook handler,
    /// and the held writes flushed at shutdown.
    pub held_writes: ResilientStore,
    /// Current prompt profiles; swapped whole on reload, running calls keep their profile.
    pub profiles: ArcSwap<ProfileSet>,
    /// OpenAI call control.
    pub call_control: CallControl,
    /// What monitors share (registry, store, sideband settings, shutdown token).
    pub monitors: Arc<MonitorContext>,
    /// Bearer token for the admin API; `None` disables it.
    pub admin_token: Option<Secret>,
    /// Prometheus render handle.
    pub metrics: PrometheusHandle,
    /// False once shutdown began: new webhooks get 503 so OpenAI retries them elsewhere/later.
    pub accepting: AtomicBool,
    /// Twilio Media Streams path (`crate::bridge`): `None` unless `[twilio] account_sid` and
    /// `TWILIO_AUTH_TOKEN` are both set.
    pub twilio: Option<crate::bridge::TwilioContext>,
}

impl AppState {
    /// The registry of calls monitored by this instance.
    pub fn registry(&self) -> &CallRegistry {
        &self.monitors.registry
    }

    /// Reloads prompt profiles from disk. On error the current set stays in force.
    ///
    /// # Errors
    /// [`LoadErrors`] listing every problem with file and line.
    pub fn reload_profiles(&self) -> Result<usize, LoadErrors> {
        let set = ProfileSet::load(&self.config.prompts.dir)?;
        let n = set.len();
        self.profiles.store(Arc::new(set));
        Ok(n)
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

/// Opens the store named by `config.store.backend`: the SQLite file, or the DynamoDB tables of
/// `[store.dynamodb]` (which must exist: `voxmachina dynamodb create-tables`).
///
/// # Errors
/// [`StoreError`] when the backend cannot be opened: the SQLite file is unusable, no AWS region
/// is configured, a DynamoDB table is missing or has other keys, or the backend name is unknown.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.store.backend.as_str() {
        "sqlite" => {
            let store = SqliteStore::open_limited(
                &config.store.sqlite_path,
                config.store.sqlite_max_size_mb,
            )
            .await?;
            Ok(Arc::new(store))
        }
        "dynamodb" => {
            let store = DynamoStore::connect(&config.store.dynamodb).await?;
            store.check_tables().await?;
            Ok(Arc::new(store))
        }
        other => Err(StoreError::Invalid(format!(
            "store.backend = {other:?}: supported backends are \"sqlite\" and \"dynamodb\""
        ))),
    }
}

/// Builds the state, binds `config.server.listen`, serves, and reattaches calls the store says
/// are live.
///
/// # Errors
/// [`StartError`] when profiles, store, secret or the listener are unusable.
pub async fn start(config: Config, secrets: Secrets) -> Result<Running, StartError> {
    let store = open_store(&config).await?;
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
        profiles: ArcSwap::from_pointee(profiles),
        call_control,
        monitors,
        admin_token: secrets.admin_token,
        metrics: telemetry::metrics_handle(),
        accepting: AtomicBool::new(true),
        twilio,
        config,
    });
    let router = crate::http::router(state.clone());
    let http_shutdown = CancellationToken::new();
    let token = http_shutdown.clone();
    let limits = state.config.http.clone();
    let join = tokio::spawn(crate::http::server::serve(listener, router, limits, token));
    info!(%addr, instance_id = %state.monitors.leases.owner(), "listening");
    spawn_retention_purge(&state, http_shutdown.clone());
    reattach_live_calls(&state).await;
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

/// Start-up check of the named secrets the configuration and profiles use: every
/// `{{secret:NAME}}` of a profile's tool headers and `[openai.live_trunk] password_secret`.
/// Secrets fail closed: one that is set but empty or only whitespace (a file or a
/// `VOXMACHINA_SECRET_<NAME>` variable), or whose file cannot be read, stops the start with an
/// error naming it. An unset one only makes its tool answer `not_configured` (`voxmachina check`
/// warns about it).
///
/// # Errors
/// [`crate::config::ConfigError::EmptySecret`] or
/// [`crate::config::ConfigError::CredentialFile`] naming the secret.
pub fn check_named_secrets(
    config: &Config,
    profiles: &ProfileSet,
) -> Result<(), crate::config::ConfigError> {
    let dir = Some(config.tools.secrets_dir.as_path());
    let tool_secrets = profiles
        .iter()
        .flat_map(|p| p.tools.iter())
        .flat_map(|t| t.secret_names());
    let trunk = config
        .openai
        .live_trunk
        .as_ref()
        .map(|t| t.password_secret.as_str());
    for name in tool_secrets.chain(trunk) {
        Secrets::named_in(dir, name)?;
    }
    Ok(())
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
    let hubspot = hubspot_client(config, secrets.hubspot_token.clone())?;
    Ok(Arc::new(
        tools::Services::new(config.tools.clone())
            .map_err(StartError::Http)?
            .with_hubspot(hubspot)
            .with_store(store),
    ))
}

/// The HubSpot client when `[hubspot] enabled` and a token is given.
///
/// # Errors
/// [`StartError::Http`] when the client cannot be built (bad base URL).
pub fn hubspot_client(
    config: &Config,
    token: Option<Secret>,
) -> Result<Option<HubSpot>, StartError> {
    match token {
        Some(token) if config.hubspot.enabled => HubSpot::new(
            &config.hubspot.base_url,
            token,
            Duration::from_millis(config.hubspot.request_timeout_ms),
        )
        .map(Some)
        .map_err(|e| StartError::Http(e.to_string())),
        None if config.hubspot.enabled => {
            warn!("[hubspot] enabled but HUBSPOT_TOKEN is not set; create_ticket is unavailable");
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Reattaches, at start, the live calls this instance may monitor ([`reattach_orphans`] with
/// its own leases included: a lease left by this instance's previous process is taken back at
/// once). Calls whose lease another instance holds are left to it. Returns how many monitors
/// were started.
pub async fn reattach_live_calls(state: &Arc<AppState>) -> usize {
    let n = reattach_orphans(state, true).await;
    if n > 0 {
        info!(calls = n, "reattached live calls");
    }
    n
}

/// One takeover scan: reattaches live calls whose lease expired, or that have had no lease for
/// longer than the lease TTL (counted from `accepted_at`, else `created_at`, so a call being
/// accepted right now is left to its instance). Each lease is taken with a conditional write,
/// so of several instances scanning at once exactly one reattaches a call. Returns how many
/// monitors were started.
pub async fn takeover_once(state: &Arc<AppState>) -> usize {
    let n = reattach_orphans(state, false).await;
    if n > 0 {
        info!(calls = n, "took over calls from another instance");
    }
    n
}

/// How often [`takeover_once`] runs: `[cluster] takeover_scan_interval_ms`, first one interval
/// after start (the start itself ran [`reattach_live_calls`]), until `stop` is cancelled.
fn spawn_takeover_scan(state: &Arc<AppState>, stop: CancellationToken) {
    let state = state.clone();
    let every = state.config.cluster.takeover_scan_interval();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => { takeover_once(&state).await; }
            }
        }
    });
}

/// Live calls not monitored here whose lease is free to take (absent for longer than the TTL,
/// expired, or — when `own` — held by this instance id), leased and reattached.
async fn reattach_orphans(state: &Arc<AppState>, own: bool) -> usize {
    let me = state.monitors.leases.owner().to_string();
    let ttl =
        chrono::Duration::from_std(state.monitors.leases.ttl()).unwrap_or(chrono::Duration::MAX);
    let reclaim = own.then_some(me.as_str());
    let candidates = match state
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
    let mut n = reconcile_stuck_accepts(state).await;
    for candidate in candidates {
        if state.registry().contains(&candidate.call_id) {
            continue;
        }
        let previous = candidate.lease.map(|l| l.owner);
        let span = tracing::info_span!("call", call_id = %candidate.call_id);
        if reattach_one(state, &candidate.call_id, previous.as_deref(), own)
            .instrument(span)
            .await
        {
            n += 1;
        }
    }
    n
}

/// How long a record may stay `accepting` before it is taken for stuck: the accept budget
/// (`[openai] accept_retry_budget_ms`) plus one request timeout plus the lease TTL (so a
/// decision whose record writes lag is not mistaken for a dead one).
pub fn stuck_accept_after(config: &Config) -> Duration {
    Duration::from_millis(
        config.openai.accept_retry_budget_ms
            + config.openai.request_timeout_ms
            + config.cluster.lease_ttl_ms,
    )
}

/// Most stuck accepts reconciled per scan.
const STUCK_ACCEPTS_PER_SCAN: usize = 100;

/// Records left in `accepting` for longer than [`stuck_accept_after`] (the decision task died
/// with its process, or panicked) and monitored nowhere: each is leased (exactly one instance
/// wins) and attached with [`Attach::Reconcile`]: a live call gets its monitor (and greeting),
/// a call whose sideband answers 404 is recorded `missed`. Twilio media records are left to
/// the bridge. Returns how many monitors were started.
async fn reconcile_stuck_accepts(state: &Arc<AppState>) -> usize {
    let stuck_after = chrono::Duration::from_std(stuck_accept_after(&state.config))
        .unwrap_or(chrono::Duration::MAX);
    // `..default()`: fields added to the query later (paging) keep their defaults here.
    #[allow(clippy::needless_update)]
    let query = crate::store::CallQuery {
        state: Some(CallState::Accepting),
        before: chrono::Utc::now().checked_sub_signed(stuck_after),
        limit: STUCK_ACCEPTS_PER_SCAN,
        ..crate::store::CallQuery::default()
    };
    let stuck = match state.store.list_calls(&query).await {
        Ok(stuck) => stuck,
        Err(e) => {
            warn!(error = %e, "cannot list stuck accepts; none reconciled");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "list_calls").increment(1);
            return 0;
        }
    };
    let mut n = 0;
    for record in stuck {
        if record.api == Api::TwilioMedia || state.registry().contains(&record.call_id) {
            continue;
        }
        let span = tracing::info_span!("call", call_id = %record.call_id);
        if reconcile_one(state, &record.call_id).instrument(span).await {
            n += 1;
        }
    }
    n
}

/// Leases `call_id`, re-reads it and, still `accepting`, spawns its monitor with
/// [`Attach::Reconcile`] (also run by the webhook handler on a redelivery of a stuck call).
/// Returns whether a monitor was started.
pub(crate) async fn reconcile_one(state: &Arc<AppState>, call_id: &str) -> bool {
    let leases = &state.monitors.leases;
    match leases.acquire(call_id).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            warn!(error = %e, "cannot take a call lease; not reconciling");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "acquire_lease").increment(1);
            return false;
        }
    }
    let record = match state.store.get_call(call_id).await {
        Ok(Some(record)) if record.state == CallState::Accepting => record,
        _ => {
            leases.release(call_id).await;
            return false;
        }
    };
    warn!("call stuck in accepting past the accept budget; attaching to find out");
    let profiles = state.profiles.load();
    let profile = profiles
        .get(&record.profile)
        .cloned()
        .unwrap_or_else(|| profiles.default_profile().clone());
    monitor::spawn(state.monitors.clone(), record, profile, Attach::Reconcile).is_some()
}

/// Takes the lease of `call_id` and spawns its monitor with [`Attach::Resume`], after
/// re-reading the record (strongly consistent) to make sure it is still live. A Twilio media
/// call cannot be reattached (its stream socket died with the process that bridged it): it is
/// closed out as `ended` / `bridge_lost_on_restart`. Returns whether a monitor was started.
async fn reattach_one(
    state: &Arc<AppState>,
    call_id: &str,
    previous_owner: Option<&str>,
    at_start: bool,
) -> bool {
    let leases = &state.monitors.leases;
    match leases.acquire(call_id).await {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            warn!(error = %e, "cannot take a call lease; not reattaching");
            metrics::counter!(telemetry::names::STORE_ERRORS, "op" => "acquire_lease").increment(1);
            return false;
        }
    }
    let mut record = match state.store.get_call(call_id).await {
        Ok(Some(record)) if record.state.is_live() => record,
        Ok(_) => {
            // Ended meanwhile (the live list is eventually consistent).
            leases.release(call_id).await;
            return false;
        }
        Err(e) => {
            warn!(error = %e, "cannot read a call to reattach");
            leases.release(call_id).await;
            return false;
        }
    };
    let taken_over = previous_owner.is_some_and(|p| p != leases.owner()) || !at_start;
    lease::count(if taken_over {
        lease::events::TAKEN_OVER
    } else {
        lease::events::ACQUIRED
    });
    info!(previous_owner = ?previous_owner, "reattaching call");
    if record.api == Api::TwilioMedia {
        record.state = CallState::Ended;
        record.ended_at = Some(chrono::Utc::now());
        record.end_reason = Some("bridge_lost_on_restart".into());
        if let Err(e) = state.store.update_call(&record).await {
            warn!(error = %e, "cannot close out a media call");
        }
        leases.release(call_id).await;
        return false;
    }
    let profiles = state.profiles.load();
    let profile = profiles
        .get(&record.profile)
        .cloned()
        .unwrap_or_else(|| profiles.default_profile().clone());
    monitor::spawn(state.monitors.clone(), record, profile, Attach::Resume).is_some()
}
