//! Escalation and the end of a call: triggers start a [`Handoff`]; its steps become outputs
//! (say a line, REFER or Twilio dial, wait for the outcome window, fallback, apology, hang up);
//! hang-ups go through the model's summary when one is wanted.

use serde_json::{Value, json};
use tracing::{info, warn};

use super::model::REQUESTED;
use super::{Closing, Crm, Flow, Machine, Millis, MintedToken, Output, PendingLine, Waiting, ts};
use crate::calls::after_call;
use crate::calls::record::{Api, CallState, CrmRecord, EscalationSummary, HandoverRecord};
use crate::escalation::{Action, Handoff, Outcome, Step, Trigger, connect};
use crate::openai::sideband::client;
use crate::telemetry::names;

impl Machine {
    /// An escalation may start: enabled with a target, none in progress, not closing.
    pub(super) fn escalation_available(&self) -> bool {
        let e = &self.setup.profile.escalation;
        let s = &self.state;
        e.enabled
            && e.target.is_some()
            && s.handoff.is_none()
            && s.closing.is_none()
            && s.waiting.is_none()
    }

    /// Starts the hand-off. `tool_call` is the `transfer_to_human` function call id, answered
    /// once the hand-off is prepared (with the handover code of a `connect_refer` hand-off).
    pub(super) fn escalate(
        &mut self,
        now: Millis,
        trigger: Trigger,
        tool_call: Option<String>,
        out: &mut Vec<Output>,
    ) -> Flow {
        let profile = self.setup.profile.clone();
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
        self.state.record.escalation = Some(EscalationSummary {
            trigger: trigger.kind().to_string(),
            detail: trigger.detail(),
            target: target.as_uri(),
            outcome: "pending".into(),
            at: ts(now),
            action: settings.action.label().to_string(),
            handover: None,
            crm: None,
        });
        self.state.record.state = CallState::Transferring;
        self.state.want_response = false;
        out.push(Output::SaveRecord);
        self.event(
            now,
            "escalation_triggered",
            json!({
                "trigger": trigger.kind(),
                "detail": trigger.detail(),
                "action": settings.action.label(),
            }),
            out,
        );
        let reason = match trigger.detail() {
            d if d.trim().is_empty() => trigger.kind().to_string(),
            d => format!("{}: {}", trigger.kind(), d.trim()),
        };
        let crm = self.setup.crm;
        let token = settings.action.handover().is_some();
        if crm {
            self.state.crm = Crm::Running;
        }
        if crm || token {
            self.state.waiting = Some(Waiting::Handover {
                trigger,
                tool_call,
                token,
            });
            out.push(Output::PrepareHandover { reason, crm, token });
            return Flow::Continue;
        }
        self.start_handoff(now, trigger, tool_call, None, out)
    }

    /// `HandoverPrepared`: record the token (or its failure), answer the tool call, start.
    pub(super) fn handover_prepared(
        &mut self,
        now: Millis,
        minted: Option<Result<MintedToken, String>>,
        out: &mut Vec<Output>,
    ) -> Flow {
        match self.state.waiting.take() {
            Some(Waiting::Handover {
                trigger,
                tool_call,
                token,
            }) => {
                let minted = if token {
                    Some(minted.unwrap_or_else(|| Err("no token minted".into())))
                } else {
                    None
                };
                self.start_handoff(now, trigger, tool_call, minted, out)
            }
            other => self.unexpected(other, "HandoverPrepared"),
        }
    }

    fn start_handoff(
        &mut self,
        now: Millis,
        trigger: Trigger,
        tool_call: Option<String>,
        minted: Option<Result<MintedToken, String>>,
        out: &mut Vec<Output>,
    ) -> Flow {
        let profile = self.setup.profile.clone();
        let settings = &profile.escalation;
        let mut output = json!({ "status": "transferring" });
        let mut line = settings.handoff_line.clone();
        if let (Some(c), Some(minted)) = (settings.action.handover(), minted) {
            let handover = match minted {
                Ok(t) => {
                    metrics::counter!(names::HANDOVER_TOKENS, "event" => "minted").increment(1);
                    self.event(
                        now,
                        "handover_token_minted",
                        json!({
                            "expires_at": ts(t.expires_at_ms),
                            "hubspot_contact_id": t.hubspot_contact_id,
                            "hubspot_ticket_id": t.hubspot_ticket_id,
                        }),
                        out,
                    );
                    output["handover_code"] = json!(t.token);
                    self.send(
                        client::system_message(&connect::code_instruction(&t.token)),
                        out,
                    );
                    if c.read_code {
                        line = format!(
                            "{line} If you are asked for a reference code, it is {}.",
                            connect::speakable_code(&t.token)
                        );
                    }
                    HandoverRecord {
                        token: Some(t.token),
                        expires_at: Some(ts(t.expires_at_ms)),
                        error: None,
                    }
                }
                Err(e) => {
                    // The caller still goes to the contact centre, without context.
                    metrics::counter!(names::HANDOVER_TOKENS, "event" => "mint_failed")
                        .increment(1);
                    self.event(now, "handover_token_failed", json!({ "error": e }), out);
                    HandoverRecord {
                        error: Some(e),
                        ..HandoverRecord::default()
                    }
                }
            };
            if matches!(settings.action, Action::TwilioDial(_)) {
                self.state.pending_dial = Some(handover.token.clone());
            }
            if let Some(esc) = self.state.record.escalation.as_mut() {
                esc.handover = Some(handover);
            }
            out.push(Output::SaveRecord);
        }
        if let Some(fc_id) = tool_call {
            self.send(client::function_call_output(&fc_id, &output), out);
        }
        let target = settings
            .target
            .clone()
            .expect("escalation_available checked the target");
        let (handoff, step) = Handoff::start(
            trigger,
            target,
            settings.fallback_target.clone(),
            &line,
            &settings.apology,
        );
        self.state.handoff = Some(handoff);
        self.run_step(now, step, out)
    }

    /// Records the escalation's HubSpot result (once).
    pub(super) fn record_crm(&mut self, now: Millis, rec: CrmRecord, out: &mut Vec<Output>) {
        if self.state.crm == Crm::Recorded {
            return;
        }
        self.state.crm = Crm::Recorded;
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
            now,
            "crm_ticket",
            json!({
                "outcome": outcome,
                "contact_id": rec.contact_id,
                "ticket_id": rec.ticket_id,
                "error": rec.error,
            }),
            out,
        );
        if let Some(esc) = self.state.record.escalation.as_mut() {
            esc.crm = Some(rec);
        }
    }

    /// Executes hand-off steps until one has to wait for an answer, the link or a timer.
    pub(super) fn run_step(&mut self, now: Millis, step: Step, out: &mut Vec<Output>) -> Flow {
        match step {
            Step::Say(line) => {
                let current = self
                    .state
                    .response_in_progress
                    .clone()
                    .filter(|r| r.as_str() != REQUESTED);
                if let Some(current) = current {
                    self.send(client::response_cancel(), out);
                    self.state.line = Some(PendingLine {
                        ignore_id: Some(current),
                        ..PendingLine::default()
                    });
                } else {
                    self.state.line = Some(PendingLine::default());
                }
                self.send(client::say_exactly(&line), out);
                self.state.line_deadline =
                    Some(now.saturating_add(self.setup.handoff_line_timeout_ms));
                Flow::Continue
            }
            Step::Refer(target) => {
                self.state.waiting = Some(Waiting::Refer(target.as_uri()));
                // A twilio_dial hand-off's first target: redirect the parent Twilio call.
                // Otherwise through the call's actions: OpenAI /refer on SIP, a Twilio REST
                // redirect on the media bridge.
                match self.state.pending_dial.take() {
                    Some(token) => {
                        let parent = self.dial_parent();
                        out.push(Output::TwilioDial {
                            target,
                            parent,
                            token,
                        });
                    }
                    None => out.push(Output::Refer(target)),
                }
                Flow::Continue
            }
            Step::AwaitOutcome(_) => {
                self.state.refer_deadline =
                    Some(now.saturating_add(self.setup.refer_outcome_window_ms));
                Flow::Continue
            }
            Step::Hangup => self.conclude_handoff(now, Outcome::Failed, out),
            Step::Done(outcome) => self.conclude_handoff(now, outcome, out),
        }
    }

    /// The parent Twilio call of a `twilio_dial` hand-off: the record's `twilio_call_sid`, or
    /// the call itself on the Media Streams path.
    fn dial_parent(&self) -> Option<String> {
        let r = &self.state.record;
        r.twilio_call_sid
            .clone()
            .or_else(|| (r.api == Api::TwilioMedia).then(|| r.call_id.clone()))
    }

    /// `ReferAnswered` / `DialAnswered`.
    pub(super) fn refer_answered(
        &mut self,
        now: Millis,
        result: Result<(), String>,
        dial: bool,
        out: &mut Vec<Output>,
    ) -> Flow {
        let uri = match self.state.waiting.take() {
            Some(Waiting::Refer(uri)) => uri,
            other => return self.unexpected(other, "ReferAnswered"),
        };
        let relayed = result.is_ok();
        match (dial, result) {
            (false, Ok(())) => self.event(now, "refer_sent", json!({ "target": uri }), out),
            (false, Err(e)) => {
                warn!(error = %e, "refer failed");
                self.event(
                    now,
                    "refer_failed",
                    json!({ "target": uri, "error": e }),
                    out,
                );
            }
            (true, r) => {
                let parent = self.dial_parent();
                match r {
                    Ok(()) => {
                        info!(transfer_target = %uri, "twilio_dial: parent call redirected");
                        let token = self
                            .state
                            .record
                            .escalation
                            .as_ref()
                            .and_then(|e| e.handover.as_ref())
                            .is_some_and(|h| h.token.is_some());
                        self.event(
                            now,
                            "twilio_dial_sent",
                            json!({ "target": uri, "twilio_call_sid": parent, "send_digits": token }),
                            out,
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "twilio_dial failed");
                        self.event(
                            now,
                            "twilio_dial_failed",
                            json!({ "target": uri, "twilio_call_sid": parent, "error": e }),
                            out,
                        );
                    }
                }
            }
        }
        let Some(h) = self.state.handoff.as_mut() else {
            return Flow::Continue;
        };
        let step = h.refer_answered(relayed);
        if let Some(esc) = self.state.record.escalation.as_mut() {
            esc.target = uri;
        }
        self.run_step(now, step, out)
    }

    pub(super) fn line_finished(&mut self, now: Millis, out: &mut Vec<Output>) -> Flow {
        self.state.line = None;
        self.state.line_deadline = None;
        match self.state.handoff.as_mut() {
            Some(h) => {
                let step = h.line_spoken();
                self.run_step(now, step, out)
            }
            None => Flow::Continue,
        }
    }

    pub(super) fn conclude_handoff(
        &mut self,
        now: Millis,
        outcome: Outcome,
        out: &mut Vec<Output>,
    ) -> Flow {
        let trigger = self
            .state
            .handoff
            .as_ref()
            .map_or("unknown", |h| h.trigger().kind());
        metrics::counter!(names::ESCALATIONS, "trigger" => trigger, "outcome" => outcome.label())
            .increment(1);
        metrics::counter!(
            names::HANDOVERS,
            "action" => self.setup.profile.escalation.action.label(),
            "outcome" => outcome.label()
        )
        .increment(1);
        if let Some(esc) = self.state.record.escalation.as_mut() {
            esc.outcome = outcome.label().to_string();
        }
        match outcome {
            Outcome::Transferred(target) => {
                info!(transfer_target = %target.as_uri(), "transfer confirmed: sideband closed after REFER");
                self.event(
                    now,
                    "transferred",
                    json!({ "target": target.as_uri() }),
                    out,
                );
                Flow::End(CallState::Transferred, "transferred".into())
            }
            Outcome::Failed => {
                warn!("transfer failed on every target; hanging up after the apology");
                self.event(now, "transfer_failed", json!({}), out);
                self.hangup(
                    now,
                    CallState::TransferFailed,
                    "transfer_failed".into(),
                    out,
                )
            }
        }
    }

    /// The controller ends the call. When a model summary is wanted it is requested first
    /// (an out-of-band text response) and the hang-up follows its answer or its timeout.
    pub(super) fn hangup(
        &mut self,
        _now: Millis,
        state: CallState,
        reason: String,
        out: &mut Vec<Output>,
    ) -> Flow {
        if self.state.closing.is_none() && self.setup.model_summary {
            let s = &mut self.state;
            s.hangup_when_quiet = false;
            s.line_deadline = None;
            s.want_response = false;
            s.filler_at = None;
            s.filler_pending = false;
            if s.link_open {
                s.waiting = Some(Waiting::Summary(state, reason));
                out.push(Output::RequestSummary);
                return Flow::Continue;
            }
        }
        self.hangup_now(state, reason, out)
    }

    /// `SummaryRequestSent`.
    pub(super) fn summary_request_sent(
        &mut self,
        now: Millis,
        sent: bool,
        out: &mut Vec<Output>,
    ) -> Flow {
        let (state, reason) = match self.state.waiting.take() {
            Some(Waiting::Summary(state, reason)) => (state, reason),
            other => return self.unexpected(other, "SummaryRequestSent"),
        };
        if !sent {
            return self.hangup_now(state, reason, out);
        }
        self.state.closing = Some(Closing {
            state,
            reason: reason.clone(),
            deadline: now.saturating_add(self.setup.summary_timeout_ms),
        });
        self.event(now, "summary_requested", json!({ "reason": reason }), out);
        Flow::Continue
    }

    pub(super) fn hangup_now(
        &mut self,
        state: CallState,
        reason: String,
        out: &mut Vec<Output>,
    ) -> Flow {
        self.state.ending = true;
        self.state.waiting = Some(Waiting::Hangup(state, reason));
        out.push(Output::Hangup);
        Flow::Continue
    }

    /// The summary response finished (or failed): keep it if it is the expected JSON, then hang
    /// up.
    pub(super) fn on_summary(
        &mut self,
        now: Millis,
        response: &Value,
        out: &mut Vec<Output>,
    ) -> Flow {
        let c = self
            .state
            .closing
            .clone()
            .expect("summary only while closing");
        let text = response_text(response);
        match after_call::parse_model_summary(&text) {
            Some(summary) => {
                self.state.record.after_call.summary = Some(summary);
                self.event(now, "summary_received", json!({ "source": "model" }), out);
            }
            None => {
                warn!(
                    chars = text.len(),
                    "model summary unusable; the transcript summary is used"
                );
                self.event(
                    now,
                    "summary_invalid",
                    json!({ "status": response["status"], "chars": text.len() }),
                    out,
                );
            }
        }
        self.hangup_now(c.state, c.reason, out)
    }
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
