//! The monitor's task: spawned per call with its registry entry, takes and keeps the call's
//! lease, runs the driver ([`super::Monitor`]) and, however it ends, releases what it holds.

use std::sync::Arc;

use tracing::{Instrument, info_span, warn};

use super::{Attach, Monitor, MonitorContext};
use crate::calls::lease::{self, HeldLease, Leases};
use crate::calls::link::{CallActions, Link, OpenAiActions, SidebandLink};
use crate::calls::record::{Api, CallRecord};
use crate::calls::registry::Registration;
use crate::openai::live::{LiveActions, LiveLink};
use crate::openai::sideband::SidebandError;
use crate::prompts::Profile;
use crate::telemetry::names;

/// Spawns the monitor of a SIP call `record` (already accepted) on `profile`: attaches to the
/// Realtime sideband and acts through OpenAI call control, or for `api = live` records to the
/// GPT-Live attach sideband and Live call control. Returns `None` when this call is already
/// monitored on this instance.
pub fn spawn(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
) -> Option<tokio::task::JoinHandle<CallRecord>> {
    let registration = ctx.registry.register(&record.call_id, &profile.name)?;
    Some(spawn_registered(ctx, record, profile, attach, registration))
}

/// Like [`spawn`] for a call already registered in the registry (`registration` from
/// [`CallRegistry::register`](crate::calls::registry::CallRegistry::register)), so registration can happen before the webhook is answered. The
/// monitor task owns the registration: however the task ends, the entry is removed.
pub fn spawn_registered(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
    registration: Registration,
) -> tokio::task::JoinHandle<CallRecord> {
    let c = ctx.clone();
    let call_id = record.call_id.clone();
    if record.api == Api::Live {
        let actions = Arc::new(LiveActions {
            control: ctx.live.clone(),
            session_id: call_id.clone(),
        });
        return start(
            ctx,
            record,
            profile,
            attach,
            actions,
            registration,
            async move { link_result(LiveLink::connect(&c.live, &call_id, &c.config).await) },
        );
    }
    let actions = Arc::new(OpenAiActions {
        call_control: ctx.call_control.clone(),
        call_id: record.call_id.clone(),
    });
    start(
        ctx,
        record,
        profile,
        attach,
        actions,
        registration,
        async move {
            link_result(
                SidebandLink::connect(&c.sideband_url, &call_id, &c.api_key, &c.config).await,
            )
        },
    )
}

/// A connected link or the error text and whether the call is gone (404).
fn link_result<L: Link + 'static>(r: Result<L, SidebandError>) -> LinkResult {
    r.map(|l| Box::new(l) as Box<dyn Link>).map_err(|e| {
        let gone = matches!(e, SidebandError::CallNotFound);
        (e.to_string(), gone)
    })
}

/// Result of opening a monitor's [`Link`]: the link, or the error text and whether the call is
/// known to be gone.
pub type LinkResult = Result<Box<dyn Link>, (String, bool)>;

/// Spawns a monitor over any [`Link`] and [`CallActions`] (the SIP sideband, or the Twilio media
/// bridge). `link` is awaited inside the task; the monitor registers in the registry first so
/// the call has exactly one monitor. Returns `None` when the call is already monitored here.
pub fn spawn_with(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
    actions: Arc<dyn CallActions>,
    link: impl std::future::Future<Output = LinkResult> + Send + 'static,
) -> Option<tokio::task::JoinHandle<CallRecord>> {
    let registration = ctx.registry.register(&record.call_id, &profile.name)?;
    Some(start(
        ctx,
        record,
        profile,
        attach,
        actions,
        registration,
        link,
    ))
}

fn start(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
    actions: Arc<dyn CallActions>,
    mut registration: Registration,
    link: impl std::future::Future<Output = LinkResult> + Send + 'static,
) -> tokio::task::JoinHandle<CallRecord> {
    let span = info_span!("call", call_id = %record.call_id, profile = %profile.name);
    // The attach future (a WebSocket connect with its TLS handshake) is ~37 KB; boxed, its
    // memory is freed once the sideband is up instead of staying reserved in the task for the
    // whole call (the task's future is sized for its largest state).
    let link = Box::pin(link);
    metrics::gauge!(names::ACTIVE_CALLS).increment(1.0);
    let detach = ctx.shutdown.child_token();
    let commands = registration.take_commands();
    let call_id = record.call_id.clone();
    let registry = ctx.registry.clone();
    let generation = registration.generation();
    let guard = MonitorGuard {
        registration: Some(registration),
        leases: ctx.leases.clone(),
        call_id: call_id.clone(),
        lease: None,
        settled: false,
    };
    let monitor = Monitor::new(
        ctx,
        record,
        profile,
        attach,
        detach.clone(),
        commands,
        actions,
    );
    let task = tokio::spawn(
        async move {
            // Owned by the task: dropped however the task ends (return, panic, abort).
            let mut guard = guard;
            let call_id = monitor.machine.record().call_id.clone();
            let leases = monitor.ctx.leases.clone();
            let shutdown = monitor.ctx.shutdown.clone();
            // Taken again on reattach (idempotent for this owner): the lease must be ours.
            match leases.acquire(&call_id).await {
                Ok(true) => {
                    if attach == Attach::Fresh {
                        lease::count(lease::events::ACQUIRED);
                    }
                }
                Ok(false) => {
                    warn!("another instance holds this call's lease; not monitoring it here");
                    guard.settled = true;
                    return monitor.into_record();
                }
                Err(e) => {
                    warn!(error = %e, "cannot take the call lease; monitoring without it");
                    metrics::counter!(names::STORE_ERRORS, "op" => "acquire_lease").increment(1);
                }
            }
            guard.lease = Some(leases.hold(&call_id, detach.clone()));
            let record = monitor.run(link).await;
            // Renewals stop first: no renewal of a call that ended.
            guard.lease = None;
            if shutdown.is_cancelled() && record.state.is_live() {
                // Detached on shutdown: the call goes on, free for whoever reattaches first.
                leases.hand_back(&call_id).await;
            } else if !detach.is_cancelled() {
                leases.release(&call_id).await;
            }
            guard.settled = true;
            record
        }
        .instrument(span),
    );
    registry.set_task(&call_id, generation, task.abort_handle());
    task
}

/// What a monitor task holds for its call: the registry entry (with the per-profile capacity
/// count) and the kept lease. Dropped with the task however it ends: when the task did not
/// finish (aborted at the end of shutdown, panicked) the lease is handed back (it expires at
/// once, so the takeover scan of any instance reattaches the live call) and only then is the
/// registry entry removed.
struct MonitorGuard {
    registration: Option<Registration>,
    leases: Arc<Leases>,
    call_id: String,
    lease: Option<HeldLease>,
    /// The task finished its own clean-up (lease released or handed back).
    settled: bool,
}

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        metrics::gauge!(names::ACTIVE_CALLS).decrement(1.0);
        // Stop renewing at once.
        self.lease = None;
        if self.settled {
            return;
        }
        metrics::counter!(names::MONITORS_ABORTED).increment(1);
        warn!(
            call_id = %self.call_id,
            "monitor ended without finishing (aborted or panicked); releasing its registry \
             entry, capacity count and lease"
        );
        let registration = self.registration.take();
        let (leases, call_id) = (self.leases.clone(), self.call_id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                leases.hand_back(&call_id).await;
                drop(registration);
            });
        }
    }
}
