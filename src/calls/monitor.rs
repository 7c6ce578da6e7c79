//! The per-call monitor: one task per accepted call, attached to the call's model event
//! connection through a [`Link`] (the Realtime sideband for SIP calls, the media bridge's Realtime
//! WebSocket for Twilio Media Streams calls) and acting on the call through [`CallActions`].
//!
//! It greets the caller (`response.create` with the profile's greeting), stores both sides'
//! transcripts, answers the built-in tools (`transfer_to_human`, `end_call`), runs the profile's
//! declared tools ([`crate::tools`]), watches for escalation triggers and drives the [`Handoff`],
//! enforces the maximum call duration, does the after-call work ([`crate::calls::after_call`]) and
//! records every step in the call's event log. Source for the events:
//! <https://developers.openai.com/api/docs/guides/realtime-server-controls> (Realtime server
//! events, OpenAPI `RealtimeServerEvent*`); the sideband can close without a close frame when the
//! caller hangs up (OpenAI developer forum thread 1378863).
//!
//! Tools:
//! - arguments are checked against the tool's JSON Schema first; invalid ones get an
//!   `invalid_arguments` error object (with the problems) back, and a new response;
//! - a valid call runs on its own task (a [`JoinSet`] polled in the event loop's `select!`), so
//!   the loop keeps reading events; its output goes back as `function_call_output` as soon as it
//!   is ready, and `response.create` follows once no tool of the batch runs and no response is
//!   in progress (otherwise right after the current `response.done`);
//! - when a batch runs past `[tools] filler_after_ms`, the filler line is said
//!   ([`client::say_exactly`]) if no response is in progress, else after the current one
//!   (OpenAI developer forum reports: audio cannot be injected into the SIP stream).
//!
//! Ending rules:
//! - a close frame from OpenAI is a normal end of call;
//! - a drop without a close frame is ambiguous (a caller hang-up looks the same as a network
//!   fault), so the monitor reconnects with bounded exponential backoff: an upgrade
//!   answered 404 means the call is over (`caller_hangup`), a successful upgrade resumes
//!   monitoring (no second greeting);
//! - while a relayed REFER awaits its outcome, the sideband closing means the transfer worked;
//! - GPT-Live calls (`api = live`, [`crate::openai::live::LiveLink`]): `session.closed` is the
//!   authoritative end (its reason maps to the end reason, its usage is summed into the record);
//!   after the monitor hangs up it waits briefly for `session.closed` ([`Link::await_end`]);
//!   outbound calls ([`Attach::Outbound`]) greet on `transport.answered` and end on
//!   `transport.failed`;
//! - on shutdown the monitor detaches without touching the call, which stays live in the store so
//!   the next start reattaches;
//! - the monitor holds the call's lease ([`crate::calls::lease`]) while it runs: it takes it
//!   first (a call leased by another instance is not monitored here), renews it, detaches
//!   without touching the call when the store refuses a renewal (another instance took over),
//!   releases it when the call ends and hands it back when it detaches on shutdown;
//! - the task owns a drop guard with the call's registry entry (and per-profile capacity count)
//!   and its lease hold: a task that panics or is aborted (the end of shutdown) still stops the
//!   renewals, hands the lease back and removes the entry;
//! - per-call budgets (`[limits]`, [`crate::calls::budget`]) bound what the caller and the model
//!   can make grow; past one the input is dropped and the call is hung up with
//!   `budget_exceeded:<budget>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::calls::after_call::{self, AfterCallServices, SUMMARY_METADATA};
use crate::calls::budget::{Budget, CallBudget, LimitsConfig};
use crate::calls::lease::{self, HeldLease, Leases};
use crate::calls::link::{
    CallActions, Link, LinkEvent, OpenAiActions, ReconnectError, SidebandLink,
};
use crate::calls::record::{
    Api, CallEvent, CallRecord, CallState, CostEstimate, EscalationSummary, Speaker, TranscriptLine,
};
use crate::calls::record::{CrmRecord, HandoverRecord};
use crate::calls::registry::{CallRegistry, Command, Registration};
use crate::config::{HubSpotConfig, MonitorConfig, Secret, SummaryMode};
use crate::escalation::twilio_dial::{self, DialError};
use crate::escalation::{Action, Handoff, Outcome, Step, Trigger, connect};
use crate::openai::CallControl;
use crate::openai::live::{LiveActions, LiveControl, LiveLink};
use crate::openai::sideband::{ServerEvent, SidebandError, client};
use crate::prompts::{Profile, TOOL_END_CALL, TOOL_TRANSFER_TO_HUMAN};
use crate::sip::TransferTarget;
use crate::store::Store;
use crate::telemetry::names;
use crate::tools::{self, CallInfo, ToolDef, ToolResult};

/// Everything a monitor needs, shared by all monitors.
#[derive(Clone)]
pub struct MonitorContext {
    /// Where records, transcripts and events go.
    pub store: Arc<dyn Store>,
    /// REST call control (refer, hangup).
    pub call_control: CallControl,
    /// Sideband base URL (`wss://api.openai.com/v1/realtime`).
    pub sideband_url: String,
    /// Bearer key for the sideband.
    pub api_key: Secret,
    /// Timing and reconnect settings.
    pub config: MonitorConfig,
    /// Log transcript text (off by default).
    pub log_transcripts: bool,
    /// Running monitors on this instance.
    pub registry: CallRegistry,
    /// Cancelled on shutdown: monitors detach and leave calls live.
    pub shutdown: CancellationToken,
    /// What the profiles' `[[tools]]` run with (HTTP client, secrets, HubSpot, store).
    pub tools: Arc<tools::Services>,
    /// Summary, cost estimate and SMS follow-up settings and clients.
    pub after_call: Arc<AfterCallServices>,
    /// This instance's call leases (one monitor per call across instances).
    pub leases: Arc<Leases>,
    /// `[hubspot]`: CRM work on escalation (the client is `tools.hubspot`).
    pub hubspot: HubSpotConfig,
    /// The Twilio REST client of the account, when Twilio is configured: `twilio_dial`
    /// hand-offs redirect the parent call with it.
    pub twilio: Option<crate::twilio::rest::TwilioRest>,
    /// GPT-Live call control and attach sideband (calls whose record says `api = live`).
    pub live: LiveControl,
    /// `[limits]`: the per-call budgets ([`crate::calls::budget`]).
    pub limits: LimitsConfig,
}

/// How the monitor attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Right after `/accept`: greet the caller.
    Fresh,
    /// After a controller restart: reattach silently.
    Resume,
    /// An outbound GPT-Live call just created: greet once `transport.answered` arrives.
    Outbound,
    /// A record left in `accepting` past the accept budget (its decision task died): attach to
    /// find out. A live call is greeted and monitored (the record becomes `active`); a call the
    /// sideband answers 404 for is recorded `missed` (`crate::app`, stuck accepts).
    Reconcile,
}

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
/// [`CallRegistry::register`]), so registration can happen before the webhook is answered. The
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
            async move {
                LiveLink::connect(&c.live, &call_id, &c.config)
                    .await
                    .map(|l| Box::new(l) as Box<dyn Link>)
                    .map_err(|e| {
                        let gone = matches!(e, SidebandError::CallNotFound);
                        (e.to_string(), gone)
                    })
            },
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
            SidebandLink::connect(&c.sideband_url, &call_id, &c.api_key, &c.config)
                .await
                .map(|l| Box::new(l) as Box<dyn Link>)
                .map_err(|e| {
                    let gone = matches!(e, SidebandError::CallNotFound);
                    (e.to_string(), gone)
                })
        },
    )
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
    let monitor = Monitor {
        detach: detach.clone(),
        budget: CallBudget::new(&ctx.limits),
        ending: false,
        ctx,
        record,
        profile,
        commands,
        actions,
        handoff: None,
        line: None,
        line_deadline: None,
        refer_deadline: None,
        hangup_when_quiet: false,
        response_in_progress: None,
        jobs: JoinSet::new(),
        job_ids: HashMap::new(),
        running: HashMap::new(),
        filler_at: None,
        filler_pending: false,
        filler_line: None,
        want_response: false,
        closing: None,
        summary_response: None,
        crm: None,
        pending_dial: None,
        greet_on_answer: attach == Attach::Outbound,
    };
    let task = tokio::spawn(
        async move {
            // Owned by the task: dropped however the task ends (return, panic, abort).
            let mut guard = guard;
            let call_id = monitor.record.call_id.clone();
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
                    return monitor.record;
                }
                Err(e) => {
                    warn!(error = %e, "cannot take the call lease; monitoring without it");
                    metrics::counter!(names::STORE_ERRORS, "op" => "acquire_lease").increment(1);
                }
            }
            guard.lease = Some(leases.hold(&call_id, detach.clone()));
            let record = monitor.run(link, attach).await;
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

/// A line we asked the agent to say, tracked until its response finishes.
#[derive(Debug, Default)]
struct PendingLine {
    /// The response that was in progress when we asked (not ours).
    ignore_id: Option<String>,
    /// Our response, once `response.created` names it.
    response_id: Option<String>,
    /// `output_audio_buffer.started` seen for it: wait for `stopped`, not `response.done`.
    audio_started: bool,
}

enum Flow {
    Continue,
    End(CallState, &'static str),
}

/// A tool the model called that is running on its own task.
#[derive(Debug)]
struct RunningTool {
    name: String,
    /// When the model called it, and the validated arguments: the `tool_call` event is written
    /// after the output is sent, so no store write sits in the tool's round trip.
    called_at: chrono::DateTime<Utc>,
    arguments: Value,
}

/// What a tool task hands back to the monitor.
struct ToolDone {
    fc_id: String,
    name: String,
    result: ToolResult,
    elapsed: Duration,
}

/// The controller decided to hang up and waits for the model's summary first.
#[derive(Debug, Clone, Copy)]
struct Closing {
    state: CallState,
    reason: &'static str,
    deadline: Instant,
}

struct Monitor {
    ctx: Arc<MonitorContext>,
    /// The call's counts against `[limits]`.
    budget: CallBudget,
    /// The call is ending: event rows may use the reserve, nothing new starts.
    ending: bool,
    /// Cancelled on shutdown (a child of `ctx.shutdown`) or when the call's lease is lost:
    /// detach, leave the call live.
    detach: CancellationToken,
    record: CallRecord,
    profile: Arc<Profile>,
    commands: mpsc::Receiver<Command>,
    actions: Arc<dyn CallActions>,
    handoff: Option<Handoff>,
    line: Option<PendingLine>,
    line_deadline: Option<Instant>,
    refer_deadline: Option<Instant>,
    hangup_when_quiet: bool,
    response_in_progress: Option<String>,
    /// Running tool tasks; dropping the set aborts them.
    jobs: JoinSet<ToolDone>,
    /// Function call id of each tool task.
    job_ids: HashMap<tokio::task::Id, String>,
    /// Running tools by function call id.
    running: HashMap<String, RunningTool>,
    /// When the filler line is due for the current batch of running tools.
    filler_at: Option<Instant>,
    /// The filler came due while a response was in progress: say it at the next
    /// `response.done` if tools still run.
    filler_pending: bool,
    /// The filler line of the current batch.
    filler_line: Option<String>,
    /// A `response.create` is owed once tools finish and no response is in progress.
    want_response: bool,
    /// Waiting for the model's summary before hanging up.
    closing: Option<Closing>,
    /// The response id of the summary request.
    summary_response: Option<String>,
    /// The HubSpot contact/ticket task started on escalation, until its result is recorded.
    crm: Option<tokio::task::JoinHandle<CrmRecord>>,
    /// A `twilio_dial` hand-off: its first target is reached by redirecting the parent Twilio
    /// call (with the handover token as `sendDigits`, `None` when minting failed) instead of a
    /// REFER. Taken by that first step.
    pending_dial: Option<Option<String>>,
    /// An outbound call: say the greeting when the callee answers.
    greet_on_answer: bool,
}

impl Monitor {
    async fn run(
        mut self,
        link: impl std::future::Future<Output = LinkResult>,
        attach: Attach,
    ) -> CallRecord {
        let mut link = match link.await {
            Ok(link) => link,
            Err((error, gone)) => {
                warn!(%error, "sideband attach failed");
                self.event("sideband_attach_failed", json!({ "error": error }))
                    .await;
                if attach == Attach::Reconcile {
                    // A stuck accept: 404 = the caller is gone (never answered, or hung up).
                    let outcome = if gone { "missed" } else { "unreachable" };
                    metrics::counter!(names::ACCEPTS_RECONCILED, "outcome" => outcome).increment(1);
                    let state = if gone {
                        CallState::Missed
                    } else {
                        CallState::Ended
                    };
                    let reason = if gone {
                        "accept_unconfirmed"
                    } else {
                        "sideband_lost"
                    };
                    return Box::pin(self.finish(state, reason)).await;
                }
                let reason = if gone { "call_gone" } else { "sideband_lost" };
                // Boxed (here and below): it runs once, so its state need not be reserved in
                // every call's task.
                return Box::pin(self.finish(CallState::Ended, reason)).await;
            }
        };
        let link = link.as_mut();
        if attach == Attach::Reconcile {
            info!("stuck accept reconciled: the call is live; monitoring it");
            metrics::counter!(names::ACCEPTS_RECONCILED, "outcome" => "attached").increment(1);
            self.record.state = CallState::Active;
            self.record.accepted_at.get_or_insert_with(Utc::now);
            self.save().await;
            self.event("accept_reconciled", json!({ "outcome": "attached" }))
                .await;
        }
        // Greet first: the caller is listening to silence until the greeting's audio starts,
        // and the event row can wait for its commit.
        if matches!(attach, Attach::Fresh | Attach::Reconcile) {
            if let Some(greeting) = self.profile.greeting.clone() {
                self.send(link, client::response_create(Some(&greeting)))
                    .await;
            }
        }
        self.event(
            "sideband_attached",
            json!({ "mode": format!("{attach:?}").to_lowercase() }),
        )
        .await;
        let started = self.record.accepted_at.unwrap_or_else(Utc::now);
        let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
        let max_deadline = Instant::now() + self.profile.max_call_duration.saturating_sub(elapsed);

        loop {
            let timer = [
                // While waiting for the summary the maximum duration has already been handled.
                Some(max_deadline).filter(|_| self.closing.is_none()),
                self.line_deadline,
                self.refer_deadline,
                self.filler_at,
                self.closing.map(|c| c.deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(max_deadline);
            let flow = tokio::select! {
                () = self.detach.cancelled() => {
                    info!(
                        shutdown = self.ctx.shutdown.is_cancelled(),
                        "detaching from call (shutdown or lease lost); it stays live"
                    );
                    link.close().await;
                    return self.record;
                }
                event = link.recv() => match event {
                    // Past the message budget the event is dropped unread.
                    LinkEvent::Text(text) if !self.budget.message(Instant::now()) => {
                        drop(text);
                        Flow::Continue
                    }
                    LinkEvent::Text(text) => self.on_text(link, &text).await,
                    LinkEvent::Closed { clean } => self.on_closed(link, clean).await,
                },
                Some(cmd) = self.commands.recv() => self.on_command(link, cmd).await,
                Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    self.on_job(link, joined).await
                }
                () = tokio::time::sleep_until(timer) => self.on_timer(link, max_deadline).await,
            };
            let flow = match (flow, self.budget.take_exceeded()) {
                (Flow::Continue, Some(budget)) => self.budget_exceeded(budget).await,
                (flow, _) => flow,
            };
            if let Flow::End(state, reason) = flow {
                self.ending = true;
                if let Some(text) = link.await_end().await {
                    // GPT-Live's session.closed after our hang-up: its final usage.
                    if let Ok(ServerEvent::SessionClosed { reason, usage }) =
                        ServerEvent::parse(&text)
                    {
                        self.session_closed_seen(&reason, &usage).await;
                    }
                }
                return Box::pin(self.finish(state, reason)).await;
            }
        }
    }

    /// A per-call budget was exceeded (the input past it was dropped): record it and hang up at
    /// once, without the summary round trip (docs/security.md, "Per-call budgets").
    async fn budget_exceeded(&mut self, budget: Budget) -> Flow {
        let limit = budget.limit(self.budget.limits());
        warn!(
            budget = budget.as_str(),
            limit, "per-call budget exceeded; dropping the input and ending the call"
        );
        self.ending = true;
        self.event(
            "budget_exceeded",
            json!({ "budget": budget.as_str(), "limit": limit }),
        )
        .await;
        self.hangup_now(CallState::Ended, budget.end_reason()).await
    }

    /// Records GPT-Live's `session.closed`: its usage (summed into the record) and reason.
    async fn session_closed_seen(&mut self, reason: &str, usage: &Value) {
        let u = &mut self.record.usage;
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        u.input_tokens += n("input_tokens");
        u.output_tokens += n("output_tokens");
        u.total_tokens += n("total_tokens");
        self.event(
            "session_closed",
            json!({ "reason": reason, "usage": usage }),
        )
        .await;
    }

    /// GPT-Live `session.closed`: the authoritative end of the call (openai-python
    /// `types/live/server_event.py`).
    async fn on_session_closed(
        &mut self,
        link: &mut dyn Link,
        reason: &str,
        usage: &Value,
    ) -> Flow {
        info!(reason, "session closed");
        self.session_closed_seen(reason, usage).await;
        if let Some(c) = self.closing {
            return Flow::End(c.state, c.reason);
        }
        if let Some(h) = self.handoff.as_mut().filter(|h| h.is_awaiting_outcome()) {
            let outcome = h.sideband_closed().expect("awaiting outcome");
            return self.conclude_handoff(link, outcome).await;
        }
        let reason = match reason {
            "remote_hangup" => "caller_hangup",
            "close_requested" => "call_ended",
            "expired" => "session_expired",
            "content" => "content_filter",
            "connection_lost" => "connection_lost",
            _ => "session_closed",
        };
        Flow::End(CallState::Ended, reason)
    }

    /// The link ended. `clean` = a close frame was received.
    async fn on_closed(&mut self, link: &mut dyn Link, clean: bool) -> Flow {
        if let Some(c) = self.closing {
            // The call went away while we waited for the summary.
            self.event("summary_lost", json!({ "clean": clean })).await;
            if clean {
                return Flow::End(c.state, c.reason);
            }
            return self.hangup_now(c.state, c.reason).await;
        }
        if let Some(h) = self.handoff.as_mut().filter(|h| h.is_awaiting_outcome()) {
            // Ambiguous drop: if the call is still reachable the REFER has not taken yet.
            if !clean && link.reconnect().await.is_ok() {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "ok").increment(1);
                return Flow::Continue;
            }
            let outcome = h.sideband_closed().expect("awaiting outcome");
            return self.conclude_handoff(link, outcome).await;
        }
        if clean {
            return Flow::End(CallState::Ended, "call_ended");
        }
        self.event("sideband_dropped", json!({})).await;
        match link.reconnect().await {
            Ok(()) => {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "ok").increment(1);
                self.event("sideband_reattached", json!({})).await;
                Flow::Continue
            }
            Err(ReconnectError::CallGone) => {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "call_gone").increment(1);
                Flow::End(CallState::Ended, "caller_hangup")
            }
            Err(e) => {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "gave_up").increment(1);
                warn!(error = %e, "sideband lost; giving up on this call");
                Flow::End(CallState::Ended, "sideband_lost")
            }
        }
    }

    async fn on_text(&mut self, link: &mut dyn Link, text: &str) -> Flow {
        let event = match ServerEvent::parse(text) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "unparseable sideband event skipped");
                return Flow::Continue;
            }
        };
        match event {
            ServerEvent::InputTranscriptionCompleted {
                item_id,
                transcript,
            } => {
                if !self.transcript(Speaker::Caller, &transcript, item_id).await {
                    return Flow::Continue;
                }
                let phrase = self
                    .profile
                    .escalation
                    .phrases
                    .find(&transcript)
                    .map(str::to_string);
                if let Some(phrase) = phrase.filter(|_| self.escalation_available()) {
                    return self
                        .escalate(link, Trigger::CallerPhrase(phrase), None)
                        .await;
                }
            }
            ServerEvent::OutputTranscriptDone {
                item_id,
                transcript,
                ..
            } => {
                self.transcript(Speaker::Agent, &transcript, item_id).await;
            }
            ServerEvent::FunctionCallArgumentsDone {
                call_id,
                name,
                arguments,
                ..
            } => {
                return self.on_tool_call(link, &call_id, &name, &arguments).await;
            }
            ServerEvent::ResponseCreated { response } => {
                if self.closing.is_some() && self.summary_response.is_none() {
                    let raw: Value = serde_json::from_str(text).unwrap_or_default();
                    if is_summary(&raw) {
                        self.summary_response = Some(response.id);
                        return Flow::Continue;
                    }
                }
                if let Some(line) = self.line.as_mut() {
                    if line.response_id.is_none()
                        && line.ignore_id.as_deref() != Some(response.id.as_str())
                    {
                        line.response_id = Some(response.id.clone());
                    }
                }
                self.response_in_progress = Some(response.id);
            }
            ServerEvent::ResponseDone { response } => {
                let raw: Value = serde_json::from_str(text).unwrap_or_default();
                if let Some(u) = &response.usage {
                    let usage = &mut self.record.usage;
                    usage.responses += 1;
                    usage.input_tokens += u.input_tokens;
                    usage.output_tokens += u.output_tokens;
                    usage.total_tokens += u.total_tokens;
                    after_call::add_usage(
                        &mut self.record.after_call.tokens,
                        &raw["response"]["usage"],
                    );
                }
                if self.closing.is_some()
                    && (self.summary_response.as_deref() == Some(response.id.as_str())
                        || is_summary(&raw))
                {
                    return self.on_summary(&raw).await;
                }
                self.response_in_progress = None;
                let ours = self.line.as_ref().is_some_and(|l| {
                    l.response_id.as_deref() == Some(response.id.as_str()) && !l.audio_started
                });
                if ours {
                    return self.line_finished(link).await;
                }
                if self.hangup_when_quiet && self.line.is_none() && self.closing.is_none() {
                    return self.hangup(link, CallState::Ended, "end_call").await;
                }
                self.after_response(link).await;
            }
            ServerEvent::OutputAudioStarted { response_id } => {
                if let Some(line) = self
                    .line
                    .as_mut()
                    .filter(|l| l.response_id.as_deref() == Some(response_id.as_str()))
                {
                    line.audio_started = true;
                }
            }
            ServerEvent::OutputAudioStopped { response_id } => {
                let ours = self.line.as_ref().is_some_and(|l| {
                    l.audio_started && l.response_id.as_deref() == Some(response_id.as_str())
                });
                if ours {
                    return self.line_finished(link).await;
                }
            }
            ServerEvent::DtmfReceived { event, .. } => {
                if !self.budget.dtmf() {
                    return Flow::Continue;
                }
                let event = clip(&event, 8);
                self.event("dtmf", json!({ "key": event })).await;
                let key = event.chars().next();
                if let Some(key) = key.filter(|k| Some(*k) == self.profile.escalation.dtmf_key)
                    && self.escalation_available()
                {
                    return self.escalate(link, Trigger::Dtmf(key), None).await;
                }
            }
            ServerEvent::Error { error } => {
                let code = error.code.clone().unwrap_or_else(|| "unknown".into());
                warn!(code = %code, message = ?error.message, "sideband error event");
                metrics::counter!(names::SIDEBAND_ERRORS, "code" => code.clone()).increment(1);
                if self.response_in_progress.as_deref() == Some(REQUESTED) {
                    // Most likely our response.create was refused: nothing is in progress.
                    self.response_in_progress = None;
                }
                self.event(
                    "openai_error",
                    json!({ "type": error.kind, "code": code, "message": error.message }),
                )
                .await;
            }
            ServerEvent::InputTranscriptionFailed { item_id, error } => {
                self.event(
                    "transcription_failed",
                    json!({ "item_id": item_id, "code": error.code }),
                )
                .await;
            }
            ServerEvent::SessionCreated { session } => {
                debug!(model = ?session.get("model"), "session.created");
            }
            ServerEvent::SessionClosed { reason, usage } => {
                return self.on_session_closed(link, &reason, &usage).await;
            }
            ServerEvent::TransportRinging => self.event("ringing", json!({})).await,
            ServerEvent::TransportAnswered => {
                info!("outbound call answered");
                self.event("answered", json!({})).await;
                if std::mem::take(&mut self.greet_on_answer) {
                    if let Some(greeting) = self.profile.greeting.clone() {
                        self.send(link, client::response_create(Some(&greeting)))
                            .await;
                    }
                }
            }
            ServerEvent::TransportFailed { error } => {
                warn!(code = ?error.code, "outbound call failed");
                self.event(
                    "transport_failed",
                    json!({ "type": error.kind, "code": error.code, "message": error.message }),
                )
                .await;
                return Flow::End(CallState::Ended, "transport_failed");
            }
            ServerEvent::Other => {}
        }
        Flow::Continue
    }

    async fn on_tool_call(
        &mut self,
        link: &mut dyn Link,
        fc_id: &str,
        name: &str,
        arguments: &str,
    ) -> Flow {
        // Past the tool-call budget the call is dropped unanswered (the call is ending).
        if !self.budget.tool_call() {
            return Flow::Continue;
        }
        if self.closing.is_some() {
            let out =
                json!({ "error": { "code": "call_ending", "message": "The call is ending." } });
            self.send(link, client::function_call_output(fc_id, &out))
                .await;
            self.event("tool_call", json!({ "name": name, "call_id": fc_id }))
                .await;
            return Flow::Continue;
        }
        match name {
            TOOL_TRANSFER_TO_HUMAN | TOOL_END_CALL => {
                return self.on_call_tool(link, fc_id, name, arguments).await;
            }
            _ => {}
        }
        let Some(def) = self.profile.tools.get(name).cloned() else {
            self.event("tool_call", json!({ "name": name, "call_id": fc_id }))
                .await;
            return self
                .finish_tool(
                    link,
                    fc_id,
                    name,
                    ToolResult::unknown_tool(name),
                    Duration::ZERO,
                )
                .await;
        };
        match def.check_arguments(arguments) {
            Ok(_) if !self.budget.tool_job(self.running.len()) => Flow::Continue,
            Ok(args) if def.builtin() == Some(tools::Builtin::SendDtmf) => {
                self.on_send_dtmf(link, fc_id, name, &args).await
            }
            Ok(args) => {
                self.spawn_tool(def, fc_id, args);
                Flow::Continue
            }
            Err(problems) => {
                self.event(
                    "tool_call",
                    json!({ "name": name, "call_id": fc_id, "arguments": clip(arguments, 500) }),
                )
                .await;
                let result = ToolResult::invalid_arguments(name, problems);
                self.finish_tool(link, fc_id, name, result, Duration::ZERO)
                    .await
            }
        }
    }

    /// `send_dtmf`: the keys go out on the link itself ([`Link::send_dtmf`]; only GPT-Live can),
    /// and the model gets `tools::dtmf_result`. The `tool_call` event carries no
    /// arguments and the result only the number of keys: the keys may be a PIN.
    async fn on_send_dtmf(
        &mut self,
        link: &mut dyn Link,
        fc_id: &str,
        name: &str,
        args: &Value,
    ) -> Flow {
        self.event("tool_call", json!({ "name": name, "call_id": fc_id }))
            .await;
        let started = Instant::now();
        let keys = args["digits"].as_str().unwrap_or_default();
        let sent = match crate::calls::link::dtmf_keys(keys) {
            Ok(keys) => link.send_dtmf(&keys).await,
            Err(e) => Err(e),
        };
        let result = tools::dtmf_result(sent);
        self.finish_tool(link, fc_id, name, result, started.elapsed())
            .await
    }

    /// `transfer_to_human` and `end_call`: they act on the call itself.
    async fn on_call_tool(
        &mut self,
        link: &mut dyn Link,
        fc_id: &str,
        name: &str,
        arguments: &str,
    ) -> Flow {
        let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let reason = args
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.event("tool_call", json!({ "name": name, "call_id": fc_id }))
            .await;
        self.count_tool(name, "ok", Duration::ZERO);
        match name {
            TOOL_TRANSFER_TO_HUMAN if self.escalation_available() => {
                // The output ({"status":"transferring"}, plus the handover code of a
                // connect_refer hand-off) is sent by `escalate`.
                self.escalate(link, Trigger::Tool(reason), Some(fc_id))
                    .await
            }
            TOOL_TRANSFER_TO_HUMAN => {
                let out = json!({ "error": "transfer is not available right now; keep helping the caller" });
                self.send(link, client::function_call_output(fc_id, &out))
                    .await;
                self.request_response(link).await;
                Flow::Continue
            }
            _ => {
                self.send(
                    link,
                    client::function_call_output(fc_id, &json!({ "ok": true })),
                )
                .await;
                self.event("end_call_requested", json!({ "reason": reason }))
                    .await;
                if self.response_in_progress.is_some() {
                    // Let the goodbye finish playing, but not forever.
                    self.hangup_when_quiet = true;
                    self.line_deadline = Some(Instant::now() + self.handoff_line_timeout());
                    Flow::Continue
                } else {
                    self.hangup(link, CallState::Ended, "end_call").await
                }
            }
        }
    }

    /// Runs a declared tool on its own task; its result comes back through `jobs`.
    fn spawn_tool(&mut self, def: Arc<ToolDef>, fc_id: &str, args: Value) {
        if self.running.is_empty() {
            let after = self.ctx.tools.config.filler_after_ms;
            self.filler_at = (after > 0).then(|| Instant::now() + Duration::from_millis(after));
            self.filler_pending = false;
            self.filler_line = Some(
                def.filler
                    .clone()
                    .or_else(|| self.profile.filler_line.clone())
                    .unwrap_or_else(|| self.ctx.tools.config.filler_line.clone()),
            );
        }
        self.running.insert(
            fc_id.to_string(),
            RunningTool {
                name: def.name.clone(),
                called_at: Utc::now(),
                arguments: args.clone(),
            },
        );
        let services = self.ctx.tools.clone();
        let call = CallInfo {
            call_id: self.record.call_id.clone(),
            caller: self.record.caller.clone(),
            dialed: self.record.dialed.clone(),
        };
        let base_url = self.profile.tools_base_url.clone();
        let fc = fc_id.to_string();
        let handle = self.jobs.spawn(
            async move {
                let started = std::time::Instant::now();
                let result =
                    tools::execute(&def, &args, &call, base_url.as_deref(), &services).await;
                ToolDone {
                    fc_id: fc,
                    name: def.name.clone(),
                    result,
                    elapsed: started.elapsed(),
                }
            }
            .in_current_span(),
        );
        self.job_ids.insert(handle.id(), fc_id.to_string());
    }

    async fn on_job(
        &mut self,
        link: &mut dyn Link,
        joined: Result<(tokio::task::Id, ToolDone), tokio::task::JoinError>,
    ) -> Flow {
        match joined {
            Ok((id, done)) => {
                self.job_ids.remove(&id);
                self.finish_tool(link, &done.fc_id, &done.name, done.result, done.elapsed)
                    .await
            }
            Err(e) => {
                warn!(error = %e, "tool task failed");
                let Some(fc_id) = self.job_ids.remove(&e.id()) else {
                    return Flow::Continue;
                };
                let name = self
                    .running
                    .get(&fc_id)
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                let result = ToolResult::error(
                    tools::Outcome::Failed,
                    "tool_failed",
                    "The tool failed. Apologise and help the caller another way.",
                    Some(e.to_string()),
                );
                self.finish_tool(link, &fc_id, &name, result, Duration::ZERO)
                    .await
            }
        }
    }

    /// Hands a tool's result to the model (output first, so the round trip is short), then
    /// records it, and asks for the next response once no tool runs.
    async fn finish_tool(
        &mut self,
        link: &mut dyn Link,
        fc_id: &str,
        name: &str,
        result: ToolResult,
        elapsed: Duration,
    ) -> Flow {
        let running = self.running.remove(fc_id);
        self.send(link, client::function_call_output(fc_id, &result.output))
            .await;
        if let Some(r) = running {
            let call = CallEvent {
                call_id: self.record.call_id.clone(),
                at: r.called_at,
                kind: "tool_call".into(),
                detail: json!({ "name": name, "call_id": fc_id, "arguments": r.arguments }),
            };
            if self.budget.event_row(self.ending) {
                if let Err(e) = self.ctx.store.append_event(&call).await {
                    store_error("append_event", &e);
                }
            }
        }
        let outcome = result.outcome.as_str();
        self.count_tool(name, outcome, elapsed);
        let ms = elapsed.as_secs_f64() * 1000.0;
        if result.outcome == tools::Outcome::Ok {
            info!(tool = name, outcome, duration_ms = ms, status = ?result.status, "tool finished");
        } else {
            warn!(tool = name, outcome, duration_ms = ms, status = ?result.status, note = ?result.note, "tool failed");
        }
        self.event(
            "tool_result",
            json!({
                "name": name,
                "call_id": fc_id,
                "outcome": outcome,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "status": result.status,
                "note": result.note,
                "output": clip(&result.output.to_string(), 1000),
            }),
        )
        .await;
        if self.running.is_empty() {
            self.filler_at = None;
            self.filler_pending = false;
            self.request_response(link).await;
        }
        Flow::Continue
    }

    /// Metrics and the per-call tool counts.
    fn count_tool(&mut self, name: &str, outcome: &'static str, elapsed: Duration) {
        let known = matches!(name, TOOL_TRANSFER_TO_HUMAN | TOOL_END_CALL)
            || self.profile.tools.get(name).is_some();
        let label = if known {
            name.to_string()
        } else {
            "unknown".to_string()
        };
        metrics::counter!(names::TOOL_CALLS, "tool" => label.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::TOOL_DURATION, "tool" => label).record(elapsed.as_secs_f64());
        // A name the profile lacks comes from the model: bounded in the record.
        let key = if known {
            name.to_string()
        } else {
            clip(name, 64)
        };
        *self
            .record
            .after_call
            .tools
            .entry(key)
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Sends `response.create` now if nothing stands in the way, else remembers to send it
    /// after the current response (never during a hand-off, a goodbye or the summary).
    async fn request_response(&mut self, link: &mut dyn Link) {
        if self.handoff.is_some() || self.closing.is_some() || self.hangup_when_quiet {
            self.want_response = false;
            return;
        }
        if self.running.is_empty() && self.response_in_progress.is_none() && self.line.is_none() {
            self.want_response = false;
            self.response_in_progress = Some(REQUESTED.into());
            self.send(link, client::response_create(None)).await;
        } else {
            self.want_response = true;
        }
    }

    /// After a `response.done`: a filler line that came due, then an owed `response.create`.
    async fn after_response(&mut self, link: &mut dyn Link) {
        if self.filler_pending && !self.running.is_empty() {
            self.speak_filler(link).await;
        }
        if self.want_response {
            self.request_response(link).await;
        }
    }

    /// Says the filler line while tools run, if no response is in progress; otherwise keeps it
    /// pending for the next `response.done`.
    async fn speak_filler(&mut self, link: &mut dyn Link) {
        if self.running.is_empty()
            || self.handoff.is_some()
            || self.closing.is_some()
            || self.hangup_when_quiet
        {
            self.filler_pending = false;
            return;
        }
        if self.response_in_progress.is_some() || self.line.is_some() {
            self.filler_pending = true;
            return;
        }
        self.filler_pending = false;
        let line = self
            .filler_line
            .clone()
            .unwrap_or_else(|| self.ctx.tools.config.filler_line.clone());
        self.response_in_progress = Some(REQUESTED.into());
        self.send(link, client::say_exactly(&line)).await;
        let mut tools: Vec<&str> = self.running.values().map(|r| r.name.as_str()).collect();
        tools.sort_unstable();
        self.event("tool_filler", json!({ "tools": tools, "line": line }))
            .await;
    }

    /// The summary response finished (or failed): keep it if it is the expected JSON, then hang
    /// up.
    async fn on_summary(&mut self, raw: &Value) -> Flow {
        let c = self.closing.expect("summary only while closing");
        let text = response_text(&raw["response"]);
        match after_call::parse_model_summary(&text) {
            Some(summary) => {
                self.record.after_call.summary = Some(summary);
                self.event("summary_received", json!({ "source": "model" }))
                    .await;
            }
            None => {
                warn!(
                    chars = text.len(),
                    "model summary unusable; the transcript summary is used"
                );
                self.event(
                    "summary_invalid",
                    json!({ "status": raw["response"]["status"], "chars": text.len() }),
                )
                .await;
            }
        }
        self.hangup_now(c.state, c.reason).await
    }

    async fn on_command(&mut self, link: &mut dyn Link, cmd: Command) -> Flow {
        match cmd {
            Command::Transfer(note) => {
                if self.escalation_available() {
                    self.escalate(link, Trigger::Operator(note), None).await
                } else {
                    self.event("escalation_unavailable", json!({ "trigger": "operator" }))
                        .await;
                    Flow::Continue
                }
            }
            Command::Hangup(note) => {
                // An operator wants the call gone now: no summary round trip.
                self.event("operator_hangup", json!({ "note": note })).await;
                self.hangup_now(CallState::Ended, "operator_hangup").await
            }
        }
    }

    async fn on_timer(&mut self, link: &mut dyn Link, max_deadline: Instant) -> Flow {
        let now = Instant::now();
        if let Some(c) = self.closing {
            if now >= c.deadline {
                self.event("summary_timeout", json!({})).await;
                return self.hangup_now(c.state, c.reason).await;
            }
        } else if now >= max_deadline {
            self.event(
                "max_duration_reached",
                json!({ "secs": self.profile.max_call_duration.as_secs() }),
            )
            .await;
            return self.hangup(link, CallState::Ended, "max_duration").await;
        }
        if self.filler_at.is_some_and(|d| now >= d) {
            self.filler_at = None;
            self.speak_filler(link).await;
        }
        if self.line_deadline.is_some_and(|d| now >= d) {
            self.line_deadline = None;
            if self.line.is_some() {
                self.event("line_timeout", json!({})).await;
                return self.line_finished(link).await;
            }
            if self.hangup_when_quiet && self.closing.is_none() {
                return self.hangup(link, CallState::Ended, "end_call").await;
            }
        }
        if self.refer_deadline.is_some_and(|d| now >= d) {
            self.refer_deadline = None;
            if let Some(h) = self.handoff.as_mut() {
                let target = h.current_target().map(|t| t.as_uri());
                let step = h.window_elapsed();
                self.event("transfer_not_confirmed", json!({ "target": target }))
                    .await;
                return self.run_step(link, step).await;
            }
        }
        Flow::Continue
    }

    fn escalation_available(&self) -> bool {
        let e = &self.profile.escalation;
        e.enabled && e.target.is_some() && self.handoff.is_none() && self.closing.is_none()
    }

    fn handoff_line_timeout(&self) -> Duration {
        Duration::from_millis(self.ctx.config.handoff_line_timeout_ms)
    }

    /// Starts the hand-off. `tool_call` is the `transfer_to_human` function call id, answered
    /// here once the hand-off is prepared. For `connect_refer`: waits (at most `[hubspot]
    /// escalation_wait_ms`) for the HubSpot ids, mints the handover token, tells the model the
    /// code (system message and tool output) and adds it to the handoff line when `read_code`.
    async fn escalate(
        &mut self,
        link: &mut dyn Link,
        trigger: Trigger,
        tool_call: Option<&str>,
    ) -> Flow {
        let profile = self.profile.clone();
        let settings = &profile.escalation;
        let target = settings
            .target
            .clone()
            .expect("escalation_available checked the target");
        info!(
            trigger = trigger.kind(),
            action = settings.action.label(),
            "escalation triggered"
        );
        metrics::counter!(names::ESCALATIONS, "trigger" => trigger.kind(), "outcome" => "triggered").increment(1);
        self.record.escalation = Some(EscalationSummary {
            trigger: trigger.kind().to_string(),
            detail: trigger.detail(),
            target: target.as_uri(),
            outcome: "pending".into(),
            at: Utc::now(),
            action: settings.action.label().to_string(),
            handover: None,
            crm: None,
        });
        self.record.state = CallState::Transferring;
        self.want_response = false;
        self.save().await;
        self.event(
            "escalation_triggered",
            json!({
                "trigger": trigger.kind(),
                "detail": trigger.detail(),
                "action": settings.action.label(),
            }),
        )
        .await;
        let reason = match trigger.detail() {
            d if d.trim().is_empty() => trigger.kind().to_string(),
            d => format!("{}: {}", trigger.kind(), d.trim()),
        };
        let crm_wanted = self.crm_client().is_some();
        let connect_settings = settings.action.handover();
        let summary = if crm_wanted || connect_settings.is_some() {
            let transcript = match self.ctx.store.transcript(&self.record.call_id).await {
                Ok(t) => t,
                Err(e) => {
                    store_error("transcript", &e);
                    Vec::new()
                }
            };
            connect::conversation_summary(&transcript, &reason, HANDOVER_SUMMARY_CHARS)
        } else {
            String::new()
        };
        self.start_crm(&summary, &reason).await;
        let mut output = json!({ "status": "transferring" });
        let mut line = settings.handoff_line.clone();
        if let Some(c) = connect_settings {
            let wait = Duration::from_millis(self.ctx.hubspot.escalation_wait_ms);
            let crm = self.wait_crm(wait).await;
            let now = Utc::now();
            let payload =
                connect::handover_payload(&self.record, c, summary, reason, crm.as_ref(), now);
            let ttl = chrono::Duration::from_std(c.token_ttl)
                .unwrap_or_else(|_| chrono::Duration::minutes(10));
            let handover = match self.ctx.store.mint_token(&payload, ttl, now).await {
                Ok(token) => {
                    metrics::counter!(names::HANDOVER_TOKENS, "event" => "minted").increment(1);
                    self.event(
                        "handover_token_minted",
                        json!({
                            "expires_at": now + ttl,
                            "hubspot_contact_id": payload.hubspot_contact_id,
                            "hubspot_ticket_id": payload.hubspot_ticket_id,
                        }),
                    )
                    .await;
                    output["handover_code"] = json!(token);
                    self.send(
                        link,
                        client::system_message(&connect::code_instruction(&token)),
                    )
                    .await;
                    if c.read_code {
                        line = format!(
                            "{line} If you are asked for a reference code, it is {}.",
                            connect::speakable_code(&token)
                        );
                    }
                    HandoverRecord {
                        token: Some(token),
                        expires_at: Some(now + ttl),
                        error: None,
                    }
                }
                Err(e) => {
                    // The caller still goes to the contact centre, without context.
                    metrics::counter!(names::HANDOVER_TOKENS, "event" => "mint_failed")
                        .increment(1);
                    store_error("mint_token", &e);
                    self.event("handover_token_failed", json!({ "error": e.to_string() }))
                        .await;
                    HandoverRecord {
                        error: Some(e.to_string()),
                        ..HandoverRecord::default()
                    }
                }
            };
            if matches!(settings.action, Action::TwilioDial(_)) {
                self.pending_dial = Some(handover.token.clone());
            }
            if let Some(esc) = self.record.escalation.as_mut() {
                esc.handover = Some(handover);
            }
            self.save().await;
        }
        if let Some(fc_id) = tool_call {
            self.send(link, client::function_call_output(fc_id, &output))
                .await;
        }
        let (handoff, step) = Handoff::start(
            trigger,
            target,
            settings.fallback_target.clone(),
            &line,
            &settings.apology,
        );
        self.handoff = Some(handoff);
        self.run_step(link, step).await
    }

    /// The HubSpot client when `[hubspot] enabled`, `on_escalation` and a token are set.
    fn crm_client(&self) -> Option<crate::hubspot::HubSpot> {
        self.ctx
            .tools
            .hubspot
            .clone()
            .filter(|_| self.ctx.hubspot.on_escalation)
    }

    /// Starts the escalation's HubSpot work on its own task (find or create the contact by the
    /// caller's number, open a ticket with `summary`, association type 16): it never holds up
    /// the hand-off. Without a caller number it is skipped and recorded as such.
    async fn start_crm(&mut self, summary: &str, reason: &str) {
        let Some(hubspot) = self.crm_client() else {
            return;
        };
        let Some(caller) = self.record.caller.clone().filter(|c| !c.is_empty()) else {
            self.record_crm(CrmRecord {
                error: Some("skipped: no caller number".into()),
                ..CrmRecord::default()
            })
            .await;
            return;
        };
        let subject = format!("Escalated call from {caller}");
        let content = format!(
            "{summary}\n\n— escalated by the voice agent on call {} ({reason})",
            self.record.call_id
        );
        let cfg = self.ctx.hubspot.clone();
        self.crm = Some(tokio::spawn(
            async move {
                match hubspot
                    .ticket_for_caller(
                        &caller,
                        &subject,
                        &content,
                        cfg.ticket_pipeline.as_deref(),
                        cfg.ticket_stage.as_deref(),
                    )
                    .await
                {
                    Ok(t) => {
                        debug!(contact_id = %t.contact_id, ticket_id = %t.ticket_id, "escalation ticket opened");
                        CrmRecord {
                            contact_id: Some(t.contact_id),
                            ticket_id: Some(t.ticket_id),
                            error: None,
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "escalation ticket failed");
                        CrmRecord {
                            contact_id: e.contact_id,
                            ticket_id: None,
                            error: Some(e.error.to_string()),
                        }
                    }
                }
            }
            .instrument(tracing::Span::current()),
        ));
    }

    /// Waits at most `wait` for the CRM task and records its result. Returns the recorded
    /// result (also when it was recorded earlier), `None` while the task still runs or when
    /// there is none.
    async fn wait_crm(&mut self, wait: Duration) -> Option<CrmRecord> {
        if let Some(done) = self.record.escalation.as_ref().and_then(|e| e.crm.clone()) {
            return Some(done);
        }
        let handle = self.crm.as_mut()?;
        match tokio::time::timeout(wait, handle).await {
            Ok(joined) => {
                self.crm = None;
                let rec = joined.unwrap_or_else(|e| CrmRecord {
                    error: Some(format!("CRM task failed: {e}")),
                    ..CrmRecord::default()
                });
                self.record_crm(rec.clone()).await;
                Some(rec)
            }
            Err(_) => None,
        }
    }

    async fn record_crm(&mut self, rec: CrmRecord) {
        let outcome = match (&rec.error, &rec.ticket_id) {
            (None, Some(_)) => "ok",
            (Some(e), _) if e.starts_with("skipped") => "skipped",
            (Some(e), _) if e.starts_with("late") => "late",
            _ => "failed",
        };
        metrics::counter!(names::ESCALATION_CRM, "outcome" => outcome).increment(1);
        if let Some(e) = &rec.error {
            warn!(error = %e, "HubSpot work on escalation did not complete; the hand-off goes on");
        }
        self.event(
            "crm_ticket",
            json!({
                "outcome": outcome,
                "contact_id": rec.contact_id,
                "ticket_id": rec.ticket_id,
                "error": rec.error,
            }),
        )
        .await;
        if let Some(esc) = self.record.escalation.as_mut() {
            esc.crm = Some(rec);
        }
    }

    /// Executes hand-off steps until one has to wait for the sideband or a timer.
    async fn run_step(&mut self, link: &mut dyn Link, mut step: Step) -> Flow {
        loop {
            match step {
                Step::Say(line) => {
                    if let Some(current) = self
                        .response_in_progress
                        .clone()
                        .filter(|r| r.as_str() != REQUESTED)
                    {
                        self.send(link, client::response_cancel()).await;
                        self.line = Some(PendingLine {
                            ignore_id: Some(current),
                            ..PendingLine::default()
                        });
                    } else {
                        self.line = Some(PendingLine::default());
                    }
                    self.send(link, client::say_exactly(&line)).await;
                    self.line_deadline = Some(Instant::now() + self.handoff_line_timeout());
                    return Flow::Continue;
                }
                Step::Refer(target) => {
                    let uri = target.as_uri();
                    // A twilio_dial hand-off's first target: redirect the parent Twilio call.
                    // Otherwise through the call's actions: OpenAI /refer on SIP, a Twilio REST
                    // redirect on the media bridge.
                    let relayed = match self.pending_dial.take() {
                        Some(token) => self.twilio_dial(&target, token.as_deref()).await,
                        None => match self.actions.refer(&target).await {
                            Ok(()) => {
                                self.event("refer_sent", json!({ "target": uri })).await;
                                true
                            }
                            Err(e) => {
                                warn!(error = %e, "refer failed");
                                self.event(
                                    "refer_failed",
                                    json!({ "target": uri, "error": e.to_string() }),
                                )
                                .await;
                                false
                            }
                        },
                    };
                    step = self
                        .handoff
                        .as_mut()
                        .expect("refer only during a hand-off")
                        .refer_answered(relayed);
                    if let Some(esc) = self.record.escalation.as_mut() {
                        esc.target = uri;
                    }
                }
                Step::AwaitOutcome(_) => {
                    self.refer_deadline =
                        Some(Instant::now() + self.ctx.config.refer_outcome_window());
                    return Flow::Continue;
                }
                Step::Hangup => {
                    return self.conclude_handoff(link, Outcome::Failed).await;
                }
                Step::Done(outcome) => return self.conclude_handoff(link, outcome).await,
            }
        }
    }

    /// The first step of a `twilio_dial` hand-off: redirects the parent Twilio call (the
    /// record's `twilio_call_sid`, or the call itself on the Media Streams path) to `<Dial>`
    /// `target` with `sendDigits="wwww{token}#"`. True when Twilio answered 200: the AI leg ends,
    /// and the sideband closing confirms the transfer as after a REFER. False (recorded as
    /// `twilio_dial_failed`) sends the hand-off on to the fallback, as a failed REFER does.
    async fn twilio_dial(&mut self, target: &TransferTarget, token: Option<&str>) -> bool {
        let parent =
            self.record.twilio_call_sid.clone().or_else(|| {
                (self.record.api == Api::TwilioMedia).then(|| self.record.call_id.clone())
            });
        let result = match (&self.ctx.twilio, parent.as_deref(), target) {
            (_, None, _) => Err(DialError::NoParentCall),
            (None, Some(_), _) => Err(DialError::NotConfigured),
            (_, Some(_), TransferTarget::Sip(uri)) => Err(DialError::NotANumber(uri.clone())),
            (Some(rest), Some(sid), TransferTarget::Tel(number)) => {
                twilio_dial::redirect(rest, sid, number, token).await
            }
        };
        match result {
            Ok(()) => {
                info!(transfer_target = %target.as_uri(), "twilio_dial: parent call redirected");
                self.event(
                    "twilio_dial_sent",
                    json!({
                        "target": target.as_uri(),
                        "twilio_call_sid": parent,
                        "send_digits": token.is_some(),
                    }),
                )
                .await;
                true
            }
            Err(e) => {
                warn!(error = %e, "twilio_dial failed");
                self.event(
                    "twilio_dial_failed",
                    json!({
                        "target": target.as_uri(),
                        "twilio_call_sid": parent,
                        "error": e.to_string(),
                    }),
                )
                .await;
                false
            }
        }
    }

    async fn line_finished(&mut self, link: &mut dyn Link) -> Flow {
        self.line = None;
        self.line_deadline = None;
        match self.handoff.as_mut() {
            Some(h) => {
                let step = h.line_spoken();
                self.run_step(link, step).await
            }
            None => Flow::Continue,
        }
    }

    async fn conclude_handoff(&mut self, link: &mut dyn Link, outcome: Outcome) -> Flow {
        let trigger = self
            .handoff
            .as_ref()
            .map(|h| h.trigger().kind())
            .unwrap_or("unknown");
        metrics::counter!(names::ESCALATIONS, "trigger" => trigger, "outcome" => outcome.label())
            .increment(1);
        metrics::counter!(
            names::HANDOVERS,
            "action" => self.profile.escalation.action.label(),
            "outcome" => outcome.label()
        )
        .increment(1);
        if let Some(esc) = self.record.escalation.as_mut() {
            esc.outcome = outcome.label().to_string();
        }
        match outcome {
            Outcome::Transferred(target) => {
                info!(transfer_target = %target.as_uri(), "transfer confirmed: sideband closed after REFER");
                self.event("transferred", json!({ "target": target.as_uri() }))
                    .await;
                Flow::End(CallState::Transferred, "transferred")
            }
            Outcome::Failed => {
                warn!("transfer failed on every target; hanging up after the apology");
                self.event("transfer_failed", json!({})).await;
                self.hangup(link, CallState::TransferFailed, "transfer_failed")
                    .await
            }
        }
    }

    /// The controller ends the call. When a model summary is wanted it is requested first
    /// (an out-of-band text response) and the hang-up follows its answer or its timeout.
    async fn hangup(
        &mut self,
        link: &mut dyn Link,
        state: CallState,
        reason: &'static str,
    ) -> Flow {
        if self.closing.is_none() && self.model_summary_wanted() {
            self.hangup_when_quiet = false;
            self.line_deadline = None;
            self.want_response = false;
            self.filler_at = None;
            self.filler_pending = false;
            if link.send(after_call::summary_request()).await.is_ok() {
                let timeout = Duration::from_millis(self.ctx.after_call.config.summary_timeout_ms);
                self.closing = Some(Closing {
                    state,
                    reason,
                    deadline: Instant::now() + timeout,
                });
                self.event("summary_requested", json!({ "reason": reason }))
                    .await;
                return Flow::Continue;
            }
        }
        self.hangup_now(state, reason).await
    }

    fn model_summary_wanted(&self) -> bool {
        let cfg = &self.ctx.after_call.config;
        cfg.summary == SummaryMode::Model
            && cfg.summary_timeout_ms > 0
            && self.profile.after_call.summary
    }

    async fn hangup_now(&mut self, state: CallState, reason: &'static str) -> Flow {
        self.ending = true;
        match self.actions.hangup().await {
            Ok(()) => self.event("hangup_sent", json!({ "reason": reason })).await,
            Err(e) => {
                warn!(error = %e, "hangup failed");
                self.event(
                    "hangup_failed",
                    json!({ "reason": reason, "error": e.to_string() }),
                )
                .await;
            }
        }
        Flow::End(state, reason)
    }

    async fn finish(mut self, state: CallState, reason: &'static str) -> CallRecord {
        self.ending = true;
        self.jobs.abort_all();
        self.record.state = state;
        self.record.ended_at = Some(Utc::now());
        self.record.end_reason = Some(reason.to_string());
        if let Some(esc) = self
            .record
            .escalation
            .as_mut()
            .filter(|e| e.outcome == "pending")
        {
            esc.outcome = "abandoned".into();
            metrics::counter!(
                names::HANDOVERS,
                "action" => self.profile.escalation.action.label(),
                "outcome" => "abandoned"
            )
            .increment(1);
        }
        if self.crm.is_some() {
            let wait = Duration::from_millis(self.ctx.hubspot.escalation_wait_ms);
            if self.wait_crm(wait).await.is_none() {
                // The task goes on detached; its result is only logged (debug).
                self.crm = None;
                self.record_crm(CrmRecord {
                    error: Some("late: HubSpot work not finished when the call ended".into()),
                    ..CrmRecord::default()
                })
                .await;
            }
        }
        self.after_call_work().await;
        // Event first: whoever sees the final record also sees the whole event log.
        self.event(
            "call_ended",
            json!({ "state": state.as_str(), "reason": reason }),
        )
        .await;
        self.save().await;
        metrics::counter!(names::CALLS_ENDED, "state" => state.as_str(), "reason" => reason)
            .increment(1);
        info!(state = %state, reason, "call ended");
        self.record
    }

    /// Extraction, the summary (the model's, else the transcript one), the cost estimate and the
    /// SMS follow-up (see [`after_call`]).
    async fn after_call_work(&mut self) {
        let profile = self.profile.clone();
        let services = self.ctx.after_call.clone();
        let transcript = match self.ctx.store.transcript(&self.record.call_id).await {
            Ok(t) => t,
            Err(e) => {
                store_error("transcript", &e);
                Vec::new()
            }
        };
        if !profile.after_call.extract.is_empty() {
            self.record.after_call.extracted =
                after_call::extract(&profile.after_call.extract, &transcript);
            let names: Vec<&String> = self.record.after_call.extracted.keys().collect();
            if !names.is_empty() {
                self.event("values_extracted", json!({ "names": names }))
                    .await;
            }
        }
        if services.config.summary != SummaryMode::Off && profile.after_call.summary {
            if self.record.after_call.summary.is_none() {
                self.record.after_call.summary =
                    Some(after_call::transcript_summary(&self.record, &transcript));
            }
            let source = self
                .record
                .after_call
                .summary
                .as_ref()
                .map(|s| s.source.clone())
                .unwrap_or_default();
            metrics::counter!(names::CALL_SUMMARIES, "source" => source.clone()).increment(1);
            self.event("summary_stored", json!({ "source": source }))
                .await;
        }
        if let Some(price) = services.pricing.for_model(&profile.session.model) {
            let micros = after_call::estimate_cost_micros(&self.record.after_call.tokens, price);
            metrics::counter!(
                names::CALL_COST_MICROS,
                "model" => price.model.clone(),
                "currency" => services.pricing.currency.clone()
            )
            .increment(micros);
            self.record.after_call.cost = Some(CostEstimate {
                model: price.model.clone(),
                currency: services.pricing.currency.clone(),
                amount_micros: micros,
            });
        }
        if let Some(sms) = &profile.after_call.sms {
            let follow = after_call::sms_follow_up(sms, &self.record, &transcript, &services).await;
            metrics::counter!(names::SMS_FOLLOWUPS, "status" => follow.status.clone()).increment(1);
            info!(status = %follow.status, reason = ?follow.reason, "sms follow-up");
            self.event(
                "sms_follow_up",
                json!({ "status": follow.status, "reason": follow.reason, "sid": follow.sid }),
            )
            .await;
            self.record.after_call.sms = Some(follow);
        }
    }

    async fn send(&self, link: &mut dyn Link, text: String) {
        if let Err(e) = link.send(text).await {
            // The read side will notice the drop and reconnect; nothing is lost but this event.
            warn!(error = %e, "sideband send failed");
        }
    }

    /// Stores one transcript line (cut at `max_transcript_line_bytes`). False when the line was
    /// dropped by the transcript-line budget.
    async fn transcript(&mut self, speaker: Speaker, text: &str, item_id: String) -> bool {
        if !self.budget.transcript_line() {
            return false;
        }
        let text = self.budget.clip_line(text).into_owned();
        let text = text.as_str();
        let item_id = clip(&item_id, 128);
        if self.ctx.log_transcripts {
            info!(speaker = speaker.as_str(), text, "transcript");
        } else {
            debug!(
                speaker = speaker.as_str(),
                chars = text.len(),
                "transcript line stored"
            );
        }
        let line = TranscriptLine {
            call_id: self.record.call_id.clone(),
            speaker,
            text: text.to_string(),
            at: Utc::now(),
            item_id: (!item_id.is_empty()).then_some(item_id),
        };
        if let Err(e) = self.ctx.store.append_transcript(&line).await {
            store_error("append_transcript", &e);
        }
        true
    }

    /// Appends an event to the call's log, within the event-row budget (rows written while
    /// the call ends may use the reserve).
    async fn event(&mut self, kind: &str, detail: Value) {
        if !self.budget.event_row(self.ending) {
            return;
        }
        if let Err(e) = self
            .ctx
            .store
            .append_event(&CallEvent::new(&self.record.call_id, kind, detail))
            .await
        {
            store_error("append_event", &e);
        }
    }

    async fn save(&self) {
        if let Err(e) = self.ctx.store.update_call(&self.record).await {
            store_error("update_call", &e);
        }
    }
}

/// Longest conversation summary put in a handover token and an escalation ticket, characters.
const HANDOVER_SUMMARY_CHARS: usize = 1_500;

/// Placeholder for "a response was requested and its `response.created` has not arrived yet".
const REQUESTED: &str = "requested";

/// True when a `response.created`/`response.done` event belongs to the summary request.
fn is_summary(raw: &Value) -> bool {
    raw.pointer("/response/metadata/voxmachina")
        .and_then(Value::as_str)
        == Some(SUMMARY_METADATA)
}

/// The text of a `response` object: every `output[].content[].text` (or `transcript`).
fn response_text(response: &Value) -> String {
    let mut out = String::new();
    for item in response["output"].as_array().into_iter().flatten() {
        for part in item["content"].as_array().into_iter().flatten() {
            if let Some(t) = part
                .get("text")
                .or_else(|| part.get("transcript"))
                .and_then(Value::as_str)
            {
                out.push_str(t);
            }
        }
    }
    out
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

fn store_error(op: &'static str, e: &crate::store::StoreError) {
    warn!(op, error = %e, "store write failed; the call goes on");
    metrics::counter!(names::STORE_ERRORS, "op" => op).increment(1);
}
