//! The per-call monitor: one task per accepted call, attached to the call's model event
//! connection through a [`Link`] (the Realtime sideband for SIP calls, the GPT-Live attach
//! socket, the media bridge's Realtime WebSocket for Twilio Media Streams calls) and acting on the
//! call through [`CallActions`].
//!
//! The monitor is the driver (the "shell") of the call's sans-IO state machine
//! ([`crate::calls::machine`]): it owns the link, the timer, the tool jobs, the store and the
//! HTTP clients, feeds the machine its inputs with the time and executes its outputs in order
//! (an output that needs an answer is answered before the next input). The call's behaviour
//! lives in the machine; the I/O of a few outputs (hand-off preparation, Twilio dial, after-call
//! work) lives in [`effects`].
//!
//! Together they greet the caller (`response.create` with the profile's greeting), stores both sides'
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

mod effects;
mod jobs;
mod task;

pub use task::{LinkResult, spawn, spawn_registered, spawn_with};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::calls::after_call::{self, AfterCallServices};
use crate::calls::budget::LimitsConfig;
use crate::calls::lease::Leases;
use crate::calls::link::{CallActions, Link, LinkEvent, ReconnectError};
use crate::calls::machine::{Input, Machine, Output, Phase, Reconnected, Setup};
use crate::calls::record::{CallRecord, CrmRecord};
use crate::calls::registry::{CallRegistry, Command};
use crate::config::{HubSpotConfig, MonitorConfig, Secret, SummaryMode};
use crate::openai::CallControl;
use crate::openai::live::LiveControl;
use crate::prompts::Profile;
use crate::store::Store;
use crate::telemetry::names;
use crate::tools;
use jobs::{Clock, ToolDone, micros};

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

/// How the monitor attaches (the machine's [`Attach`](crate::calls::machine::Attach)).
pub use crate::calls::machine::Attach;

struct Monitor {
    ctx: Arc<MonitorContext>,
    machine: Machine,
    clock: Clock,
    /// Cancelled on shutdown (a child of `ctx.shutdown`) or when the call's lease is lost:
    /// detach, leave the call live.
    detach: CancellationToken,
    commands: mpsc::Receiver<Command>,
    actions: Arc<dyn CallActions>,
    /// Running tool tasks; dropping the set aborts them.
    jobs: JoinSet<ToolDone>,
    /// Function call id and tool name of each tool task.
    job_ids: HashMap<tokio::task::Id, (String, String)>,
    /// The HubSpot contact/ticket task started on escalation, until its result is recorded.
    crm: Option<tokio::task::JoinHandle<CrmRecord>>,
    /// Inputs to feed before the next output runs (answers of the output just executed).
    inbox: Vec<Input>,
}

impl Monitor {
    fn new(
        ctx: Arc<MonitorContext>,
        record: CallRecord,
        profile: Arc<Profile>,
        attach: Attach,
        detach: CancellationToken,
        commands: mpsc::Receiver<Command>,
        actions: Arc<dyn CallActions>,
    ) -> Monitor {
        let ac = &ctx.after_call.config;
        let setup = Setup {
            handoff_line_timeout_ms: ctx.config.handoff_line_timeout_ms,
            refer_outcome_window_ms: ctx.config.refer_outcome_window_ms,
            filler_after_ms: ctx.tools.config.filler_after_ms,
            filler_line: ctx.tools.config.filler_line.clone(),
            model_summary: ac.summary == SummaryMode::Model
                && ac.summary_timeout_ms > 0
                && profile.after_call.summary,
            summary_timeout_ms: ac.summary_timeout_ms,
            crm: ctx.tools.hubspot.is_some() && ctx.hubspot.on_escalation,
            log_transcripts: ctx.log_transcripts,
            profile,
        };
        let machine = Machine::new(Arc::new(setup), record, &ctx.limits, attach);
        Monitor {
            ctx,
            machine,
            clock: Clock::new(),
            detach,
            commands,
            actions,
            jobs: JoinSet::new(),
            job_ids: HashMap::new(),
            crm: None,
            inbox: Vec::new(),
        }
    }

    fn into_record(self) -> CallRecord {
        self.machine.state().record.clone()
    }

    async fn run(mut self, link: impl std::future::Future<Output = LinkResult>) -> CallRecord {
        let mut link = match link.await {
            Ok(link) => Some(link),
            Err((error, gone)) => {
                self.feed(None, Input::AttachFailed { error, gone }).await;
                None
            }
        };
        if let Some(link) = link.as_mut() {
            let link = link.as_mut();
            self.feed(Some(link), Input::LinkOpened).await;
            while !self.ended() {
                let timer = match self.machine.next_deadline() {
                    Some((_, at)) => self.clock.instant(at),
                    None => Instant::now() + Duration::from_secs(86_400),
                };
                let input = tokio::select! {
                    () = self.detach.cancelled() => {
                        info!(
                            shutdown = self.ctx.shutdown.is_cancelled(),
                            "detaching from call (shutdown or lease lost); it stays live"
                        );
                        link.close().await;
                        self.feed(Some(link), Input::Detach).await;
                        return self.into_record();
                    }
                    event = link.recv() => match event {
                        LinkEvent::Text(text) => Input::ModelText(text),
                        LinkEvent::Closed { clean } => Input::LinkClosed { clean },
                    },
                    Some(cmd) = self.commands.recv() => Input::Operator(cmd),
                    Some(joined) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                        match self.tool_joined(joined) {
                            Some(input) => input,
                            None => continue,
                        }
                    }
                    () = tokio::time::sleep_until(timer) => Input::TimerFired,
                };
                self.feed(Some(link), input).await;
            }
            // GPT-Live's session.closed after our hang-up: its final usage.
            if let Some(text) = link.await_end().await {
                self.feed(Some(link), Input::ModelText(text)).await;
            }
        }
        self.jobs.abort_all();
        if self.crm.is_some() {
            let wait = Duration::from_millis(self.ctx.hubspot.escalation_wait_ms);
            if self.wait_crm(wait).await.is_none() {
                // The task goes on detached; its result is only logged (debug).
                self.crm = None;
                self.inbox.push(Input::CrmDone(CrmRecord {
                    error: Some("late: HubSpot work not finished when the call ended".into()),
                    ..CrmRecord::default()
                }));
            }
        }
        self.feed(None, Input::Finish).await;
        self.into_record()
    }

    /// True once the machine pushed `Ended` (or stopped).
    fn ended(&self) -> bool {
        !matches!(self.machine.state().phase, Phase::Live | Phase::Attaching)
    }

    /// Feeds one input (after any queued ones) and executes the outputs in order; the answers
    /// of an output are fed at once and their outputs run before the rest of the batch.
    async fn feed(&mut self, mut link: Option<&mut dyn Link>, input: Input) {
        self.inbox.push(input);
        let mut pending = std::collections::VecDeque::new();
        loop {
            if !self.inbox.is_empty() {
                let mut batch = Vec::new();
                for input in std::mem::take(&mut self.inbox) {
                    self.machine.handle(self.clock.now(), input, &mut batch);
                }
                for o in batch.into_iter().rev() {
                    pending.push_front(o);
                }
            }
            let Some(output) = pending.pop_front() else {
                break;
            };
            let link = link.as_mut().map(|l| &mut **l as &mut dyn Link);
            if let Some(answer) = self.execute(link, output).await {
                self.inbox.push(answer);
            }
        }
    }

    /// Executes one output; returns its answer, if it has one.
    async fn execute(&mut self, link: Option<&mut dyn Link>, output: Output) -> Option<Input> {
        match output {
            Output::Send(text) => {
                if let Some(link) = link {
                    if let Err(e) = link.send(text).await {
                        // The read side will notice the drop and reconnect.
                        warn!(error = %e, "sideband send failed");
                    }
                }
            }
            Output::Event(event) => {
                if let Err(e) = self.ctx.store.append_event(&event).await {
                    store_error("append_event", &e);
                }
            }
            Output::Transcript(line) => {
                if let Err(e) = self.ctx.store.append_transcript(&line).await {
                    store_error("append_transcript", &e);
                }
            }
            Output::SaveRecord => {
                if let Err(e) = self.ctx.store.update_call(self.machine.record()).await {
                    store_error("update_call", &e);
                }
            }
            Output::StartTool { fc_id, name, args } => self.spawn_tool(fc_id, &name, args),
            Output::SendDtmf(keys) => {
                let started = Instant::now();
                let result = match link {
                    Some(link) => link.send_dtmf(&keys).await,
                    None => Err(crate::calls::link::DtmfError::Unsupported),
                };
                let elapsed_us = micros(started.elapsed());
                return Some(Input::DtmfSent { result, elapsed_us });
            }
            Output::Refer(target) => {
                let r = self.actions.refer(&target).await;
                return Some(Input::ReferAnswered(r));
            }
            Output::TwilioDial {
                target,
                parent,
                token,
            } => {
                let r =
                    effects::twilio_dial(&self.ctx, &target, parent.as_deref(), token.as_deref())
                        .await;
                return Some(Input::DialAnswered(r));
            }
            Output::Hangup => return Some(Input::HangupAnswered(self.actions.hangup().await)),
            Output::RequestSummary => {
                let sent = match link {
                    Some(link) => link.send(after_call::summary_request()).await.is_ok(),
                    None => false,
                };
                return Some(Input::SummaryRequestSent(sent));
            }
            Output::Reconnect => {
                let r = match link {
                    Some(link) => link.reconnect().await,
                    None => Err(ReconnectError::CallGone),
                };
                return Some(Input::Reconnected(match r {
                    Ok(()) => Reconnected::Ok,
                    Err(ReconnectError::CallGone) => Reconnected::CallGone,
                    Err(e) => {
                        warn!(error = %e, "sideband reconnect failed");
                        Reconnected::GaveUp
                    }
                }));
            }
            Output::PrepareHandover { reason, crm, token } => {
                return Some(self.prepare_handover(&reason, crm, token).await);
            }
            Output::AfterCallWork => {
                self.after_call_work().await;
                return Some(Input::AfterCallDone);
            }
            Output::Ended { .. } | Output::Stopped => {}
        }
        None
    }
}

fn store_error(op: &'static str, e: &crate::store::StoreError) {
    warn!(op, error = %e, "store write failed; the call goes on");
    metrics::counter!(names::STORE_ERRORS, "op" => op).increment(1);
}
