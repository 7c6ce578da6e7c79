//! The per-call monitor: one task per accepted call, attached to the call's model event
//! connection through a [`Link`] (the Realtime sideband for SIP calls, the media bridge's Realtime
//! WebSocket for Twilio Media Streams calls) and acting on the call through [`CallActions`].
//!
//! It greets the caller (`response.create` with the profile's greeting), stores both sides'
//! transcripts, answers the built-in tools (`transfer_to_human`, `end_call`), watches for
//! escalation triggers and drives the [`Handoff`], enforces the maximum call duration, and
//! records every step in the call's event log. Source for the events:
//! `../shared/reference/openai.md` §6 and §9.7.
//!
//! Ending rules:
//! - a close frame from OpenAI is a normal end of call;
//! - a drop without a close frame is ambiguous (a caller hang-up looks the same as a network
//!   fault, §9.7), so the monitor reconnects with bounded exponential backoff: an upgrade
//!   answered 404 means the call is over (`caller_hangup`), a successful upgrade resumes
//!   monitoring (no second greeting);
//! - while a relayed REFER awaits its outcome, the sideband closing means the transfer worked;
//! - on shutdown the monitor detaches without touching the call, which stays live in the store so
//!   the next start reattaches.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::calls::link::{
    CallActions, Link, LinkEvent, OpenAiActions, ReconnectError, SidebandLink,
};
use crate::calls::record::{
    CallEvent, CallRecord, CallState, EscalationSummary, Speaker, TranscriptLine,
};
use crate::calls::registry::{CallRegistry, Command};
use crate::config::{MonitorConfig, Secret};
use crate::escalation::{Handoff, Outcome, Step, Trigger};
use crate::openai::CallControl;
use crate::openai::sideband::{ServerEvent, SidebandError, client};
use crate::prompts::{Profile, TOOL_END_CALL, TOOL_TRANSFER_TO_HUMAN};
use crate::store::Store;
use crate::telemetry::names;

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
}

/// How the monitor attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// Right after `/accept`: greet the caller.
    Fresh,
    /// After a controller restart: reattach silently.
    Resume,
}

/// Spawns the monitor of a SIP call `record` (already accepted) on `profile`: attaches to the
/// Realtime sideband and acts through OpenAI call control. Returns `None` when this call is
/// already monitored on this instance.
pub fn spawn(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
) -> Option<tokio::task::JoinHandle<CallRecord>> {
    let commands = ctx.registry.register(&record.call_id, &profile.name)?;
    Some(spawn_registered(ctx, record, profile, attach, commands))
}

/// Like [`spawn`] for a call already registered in the registry (`commands` from
/// [`CallRegistry::register`]), so registration can happen before the webhook is answered.
pub fn spawn_registered(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
    commands: mpsc::Receiver<Command>,
) -> tokio::task::JoinHandle<CallRecord> {
    let actions = Arc::new(OpenAiActions {
        call_control: ctx.call_control.clone(),
        call_id: record.call_id.clone(),
    });
    let c = ctx.clone();
    let call_id = record.call_id.clone();
    start(
        ctx,
        record,
        profile,
        attach,
        actions,
        commands,
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
    let commands = ctx.registry.register(&record.call_id, &profile.name)?;
    Some(start(ctx, record, profile, attach, actions, commands, link))
}

fn start(
    ctx: Arc<MonitorContext>,
    record: CallRecord,
    profile: Arc<Profile>,
    attach: Attach,
    actions: Arc<dyn CallActions>,
    commands: mpsc::Receiver<Command>,
    link: impl std::future::Future<Output = LinkResult> + Send + 'static,
) -> tokio::task::JoinHandle<CallRecord> {
    let span = info_span!("call", call_id = %record.call_id, profile = %profile.name);
    metrics::gauge!(names::ACTIVE_CALLS).increment(1.0);
    let monitor = Monitor {
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
    };
    tokio::spawn(
        async move {
            let call_id = monitor.record.call_id.clone();
            let registry = monitor.ctx.registry.clone();
            let record = monitor.run(link, attach).await;
            registry.remove(&call_id);
            metrics::gauge!(names::ACTIVE_CALLS).decrement(1.0);
            record
        }
        .instrument(span),
    )
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

struct Monitor {
    ctx: Arc<MonitorContext>,
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
                let reason = if gone { "call_gone" } else { "sideband_lost" };
                return self.finish(CallState::Ended, reason).await;
            }
        };
        let link = link.as_mut();
        self.event(
            "sideband_attached",
            json!({ "mode": format!("{attach:?}").to_lowercase() }),
        )
        .await;
        if attach == Attach::Fresh {
            if let Some(greeting) = self.profile.greeting.clone() {
                self.send(link, client::response_create(Some(&greeting)))
                    .await;
            }
        }
        let started = self.record.accepted_at.unwrap_or_else(Utc::now);
        let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
        let max_deadline = Instant::now() + self.profile.max_call_duration.saturating_sub(elapsed);

        loop {
            let timer = [Some(max_deadline), self.line_deadline, self.refer_deadline]
                .into_iter()
                .flatten()
                .min()
                .expect("max deadline is always set");
            let flow = tokio::select! {
                () = self.ctx.shutdown.cancelled() => {
                    info!("shutdown: detaching from call, it stays live for the next start");
                    link.close().await;
                    return self.record;
                }
                event = link.recv() => match event {
                    LinkEvent::Text(text) => self.on_text(link, &text).await,
                    LinkEvent::Closed { clean } => self.on_closed(link, clean).await,
                },
                Some(cmd) = self.commands.recv() => self.on_command(link, cmd).await,
                () = tokio::time::sleep_until(timer) => self.on_timer(link, max_deadline).await,
            };
            if let Flow::End(state, reason) = flow {
                return self.finish(state, reason).await;
            }
        }
    }

    /// The link ended. `clean` = a close frame was received.
    async fn on_closed(&mut self, link: &mut dyn Link, clean: bool) -> Flow {
        if let Some(h) = self.handoff.as_mut().filter(|h| h.is_awaiting_outcome()) {
            // Ambiguous drop: if the call is still reachable the REFER has not taken yet.
            if !clean && link.reconnect().await.is_ok() {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "ok").increment(1);
                return Flow::Continue;
            }
            let outcome = h.sideband_closed().expect("awaiting outcome");
            return self.conclude_handoff(outcome).await;
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
                self.transcript(Speaker::Caller, &transcript, item_id).await;
                let phrase = self
                    .profile
                    .escalation
                    .phrases
                    .find(&transcript)
                    .map(str::to_string);
                if let Some(phrase) = phrase.filter(|_| self.escalation_available()) {
                    return self.escalate(link, Trigger::CallerPhrase(phrase)).await;
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
                if let Some(u) = &response.usage {
                    let usage = &mut self.record.usage;
                    usage.responses += 1;
                    usage.input_tokens += u.input_tokens;
                    usage.output_tokens += u.output_tokens;
                    usage.total_tokens += u.total_tokens;
                }
                self.response_in_progress = None;
                let ours = self.line.as_ref().is_some_and(|l| {
                    l.response_id.as_deref() == Some(response.id.as_str()) && !l.audio_started
                });
                if ours {
                    return self.line_finished(link).await;
                }
                if self.hangup_when_quiet && self.line.is_none() {
                    return self.hangup(CallState::Ended, "end_call").await;
                }
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
                self.event("dtmf", json!({ "key": event })).await;
                let key = event.chars().next();
                if let Some(key) = key.filter(|k| Some(*k) == self.profile.escalation.dtmf_key)
                    && self.escalation_available()
                {
                    return self.escalate(link, Trigger::Dtmf(key)).await;
                }
            }
            ServerEvent::Error { error } => {
                let code = error.code.clone().unwrap_or_else(|| "unknown".into());
                warn!(code = %code, message = ?error.message, "sideband error event");
                metrics::counter!(names::SIDEBAND_ERRORS, "code" => code.clone()).increment(1);
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
        let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let reason = args
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.event("tool_call", json!({ "name": name, "call_id": fc_id }))
            .await;
        match name {
            TOOL_TRANSFER_TO_HUMAN if self.escalation_available() => {
                self.send(
                    link,
                    client::function_call_output(fc_id, &json!({ "status": "transferring" })),
                )
                .await;
                self.escalate(link, Trigger::Tool(reason)).await
            }
            TOOL_TRANSFER_TO_HUMAN => {
                let out = json!({ "error": "transfer is not available right now; keep helping the caller" });
                self.send(link, client::function_call_output(fc_id, &out))
                    .await;
                self.send(link, client::response_create(None)).await;
                Flow::Continue
            }
            TOOL_END_CALL => {
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
                    self.hangup(CallState::Ended, "end_call").await
                }
            }
            other => {
                let out = json!({ "error": format!("unknown tool {other}") });
                self.send(link, client::function_call_output(fc_id, &out))
                    .await;
                self.send(link, client::response_create(None)).await;
                Flow::Continue
            }
        }
    }

    async fn on_command(&mut self, link: &mut dyn Link, cmd: Command) -> Flow {
        match cmd {
            Command::Transfer(note) => {
                if self.escalation_available() {
                    self.escalate(link, Trigger::Operator(note)).await
                } else {
                    self.event("escalation_unavailable", json!({ "trigger": "operator" }))
                        .await;
                    Flow::Continue
                }
            }
            Command::Hangup(note) => {
                self.event("operator_hangup", json!({ "note": note })).await;
                self.hangup(CallState::Ended, "operator_hangup").await
            }
        }
    }

    async fn on_timer(&mut self, link: &mut dyn Link, max_deadline: Instant) -> Flow {
        let now = Instant::now();
        if now >= max_deadline {
            self.event(
                "max_duration_reached",
                json!({ "secs": self.profile.max_call_duration.as_secs() }),
            )
            .await;
            return self.hangup(CallState::Ended, "max_duration").await;
        }
        if self.line_deadline.is_some_and(|d| now >= d) {
            self.line_deadline = None;
            if self.line.is_some() {
                self.event("line_timeout", json!({})).await;
                return self.line_finished(link).await;
            }
            if self.hangup_when_quiet {
                return self.hangup(CallState::Ended, "end_call").await;
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
        e.enabled && e.target.is_some() && self.handoff.is_none()
    }

    fn handoff_line_timeout(&self) -> Duration {
        Duration::from_millis(self.ctx.config.handoff_line_timeout_ms)
    }

    async fn escalate(&mut self, link: &mut dyn Link, trigger: Trigger) -> Flow {
        let settings = &self.profile.escalation;
        let target = settings
            .target
            .clone()
            .expect("escalation_available checked the target");
        info!(trigger = trigger.kind(), "escalation triggered");
        metrics::counter!(names::ESCALATIONS, "trigger" => trigger.kind(), "outcome" => "triggered").increment(1);
        self.record.escalation = Some(EscalationSummary {
            trigger: trigger.kind().to_string(),
            detail: trigger.detail(),
            target: target.as_uri(),
            outcome: "pending".into(),
            at: Utc::now(),
        });
        self.record.state = CallState::Transferring;
        self.save().await;
        self.event(
            "escalation_triggered",
            json!({ "trigger": trigger.kind(), "detail": trigger.detail() }),
        )
        .await;
        let (handoff, step) = Handoff::start(
            trigger,
            target,
            settings.fallback_target.clone(),
            &settings.handoff_line,
            &settings.apology,
        );
        self.handoff = Some(handoff);
        self.run_step(link, step).await
    }

    /// Executes hand-off steps until one has to wait for the sideband or a timer.
    async fn run_step(&mut self, link: &mut dyn Link, mut step: Step) -> Flow {
        loop {
            match step {
                Step::Say(line) => {
                    if let Some(current) = self.response_in_progress.clone() {
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
                    // Through the call's actions: OpenAI /refer on SIP, a Twilio REST redirect on
                    // the media bridge.
                    let result = self.actions.refer(&target).await;
                    let h = self.handoff.as_mut().expect("refer only during a hand-off");
                    step = match result {
                        Ok(()) => {
                            self.event("refer_sent", json!({ "target": uri })).await;
                            self.handoff
                                .as_mut()
                                .expect("hand-off")
                                .refer_answered(true)
                        }
                        Err(e) => {
                            let s = h.refer_answered(false);
                            warn!(error = %e, "refer failed");
                            self.event(
                                "refer_failed",
                                json!({ "target": uri, "error": e.to_string() }),
                            )
                            .await;
                            s
                        }
                    };
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
                    return self.conclude_handoff(Outcome::Failed).await;
                }
                Step::Done(outcome) => return self.conclude_handoff(outcome).await,
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

    async fn conclude_handoff(&mut self, outcome: Outcome) -> Flow {
        let trigger = self
            .handoff
            .as_ref()
            .map(|h| h.trigger().kind())
            .unwrap_or("unknown");
        metrics::counter!(names::ESCALATIONS, "trigger" => trigger, "outcome" => outcome.label())
            .increment(1);
        if let Some(esc) = self.record.escalation.as_mut() {
            esc.outcome = outcome.label().to_string();
        }
        match outcome {
            Outcome::Transferred(target) => {
                info!(target = %target.as_uri(), "transfer confirmed: sideband closed after REFER");
                self.event("transferred", json!({ "target": target.as_uri() }))
                    .await;
                Flow::End(CallState::Transferred, "transferred")
            }
            Outcome::Failed => {
                warn!("transfer failed on every target; hanging up after the apology");
                self.event("transfer_failed", json!({})).await;
                self.hangup(CallState::TransferFailed, "transfer_failed")
                    .await
            }
        }
    }

    async fn hangup(&mut self, state: CallState, reason: &'static str) -> Flow {
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
        }
        self.save().await;
        self.event(
            "call_ended",
            json!({ "state": state.as_str(), "reason": reason }),
        )
        .await;
        metrics::counter!(names::CALLS_ENDED, "state" => state.as_str(), "reason" => reason)
            .increment(1);
        info!(state = %state, reason, "call ended");
        self.record
    }

    async fn send(&self, link: &mut dyn Link, text: String) {
        if let Err(e) = link.send(text).await {
            // The read side will notice the drop and reconnect; nothing is lost but this event.
            warn!(error = %e, "sideband send failed");
        }
    }

    async fn transcript(&mut self, speaker: Speaker, text: &str, item_id: String) {
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
    }

    async fn event(&self, kind: &str, detail: Value) {
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

fn store_error(op: &'static str, e: &crate::store::StoreError) {
    warn!(op, error = %e, "store write failed; the call goes on");
    metrics::counter!(names::STORE_ERRORS, "op" => op).increment(1);
}
