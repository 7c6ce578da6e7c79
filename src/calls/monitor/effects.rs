//! The I/O of the machine's outputs that are more than one call: preparing a hand-off (the
//! transcript summary, the HubSpot work, the handover token), the Twilio dial of a
//! `twilio_dial` hand-off, and the after-call work.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tracing::{Instrument, debug, info};

use super::{Monitor, MonitorContext, store_error};
use crate::calls::after_call;
use crate::calls::machine::{Input, MintedToken};
use crate::calls::record::{CostEstimate, CrmRecord};
use crate::config::SummaryMode;
use crate::escalation::connect;
use crate::escalation::twilio_dial::{self, DialError};
use crate::sip::TransferTarget;
use crate::telemetry::names;

/// Longest conversation summary put in a handover token and an escalation ticket, characters.
const HANDOVER_SUMMARY_CHARS: usize = 1_500;

/// Redirects the parent Twilio call `parent` to `<Dial>` `target` with
/// `sendDigits="wwww{token}#"` ([`twilio_dial::redirect`]). `Ok` when Twilio answered 200.
pub(super) async fn twilio_dial(
    ctx: &MonitorContext,
    target: &TransferTarget,
    parent: Option<&str>,
    token: Option<&str>,
) -> Result<(), String> {
    let result = match (&ctx.twilio, parent, target) {
        (_, None, _) => Err(DialError::NoParentCall),
        (None, Some(_), _) => Err(DialError::NotConfigured),
        (_, Some(_), TransferTarget::Sip(uri)) => Err(DialError::NotANumber(uri.clone())),
        (Some(rest), Some(sid), TransferTarget::Tel(number)) => {
            twilio_dial::redirect(rest, sid, number, token).await
        }
    };
    result.map_err(|e| e.to_string())
}

impl Monitor {
    /// Writes one event row of the driver's own work, within the machine's event budget.
    async fn write_event(&mut self, kind: &str, detail: serde_json::Value) {
        if !self.machine.admit_event_row() {
            return;
        }
        let event =
            crate::calls::record::CallEvent::new(&self.machine.record().call_id, kind, detail);
        if let Err(e) = self.ctx.store.append_event(&event).await {
            store_error("append_event", &e);
        }
    }

    /// The call's stored transcript; empty (logged) when the store cannot read it.
    async fn stored_transcript(&self, call_id: &str) -> Vec<crate::calls::record::TranscriptLine> {
        self.ctx
            .store
            .transcript(call_id)
            .await
            .unwrap_or_else(|e| {
                store_error("transcript", &e);
                Vec::new()
            })
    }

    /// `PrepareHandover`: the conversation summary (from the stored transcript), the HubSpot
    /// work started (`crm`; its result fed as `CrmDone` when known), and with `token` the
    /// handover token minted after waiting at most `[hubspot] escalation_wait_ms` for HubSpot.
    pub(super) async fn prepare_handover(&mut self, reason: &str, crm: bool, token: bool) -> Input {
        let call_id = self.machine.record().call_id.clone();
        let transcript = self.stored_transcript(&call_id).await;
        let summary = connect::conversation_summary(&transcript, reason, HANDOVER_SUMMARY_CHARS);
        if crm {
            self.start_crm(&summary, reason).await;
        }
        let profile = self.machine.setup().profile.clone();
        let Some(c) = profile.escalation.action.handover().filter(|_| token) else {
            return Input::HandoverPrepared(None);
        };
        let wait = Duration::from_millis(self.ctx.hubspot.escalation_wait_ms);
        let crm_rec = self.wait_crm(wait).await;
        let now = Utc::now();
        let payload = connect::handover_payload(
            self.machine.record(),
            c,
            summary,
            reason.to_string(),
            crm_rec.as_ref(),
            now,
        );
        let ttl = chrono::Duration::from_std(c.token_ttl)
            .unwrap_or_else(|_| chrono::Duration::minutes(10));
        let minted = match self.ctx.store.mint_token(&payload, ttl, now).await {
            Ok(token) => Ok(MintedToken {
                token,
                expires_at_ms: u64::try_from((now + ttl).timestamp_millis()).unwrap_or(0),
                hubspot_contact_id: payload.hubspot_contact_id.clone(),
                hubspot_ticket_id: payload.hubspot_ticket_id.clone(),
            }),
            Err(e) => {
                store_error("mint_token", &e);
                Err(e.to_string())
            }
        };
        Input::HandoverPrepared(Some(minted))
    }

    /// Starts the escalation's HubSpot work on its own task (find or create the contact by the
    /// caller's number, open a ticket with `summary`, association type 16): it never holds up
    /// the hand-off. Without a caller number it is skipped and recorded as such.
    async fn start_crm(&mut self, summary: &str, reason: &str) {
        let Some(hubspot) = self.ctx.tools.hubspot.clone() else {
            return;
        };
        let record = self.machine.record();
        let Some(caller) = record.caller.clone().filter(|c| !c.is_empty()) else {
            let skipped = CrmRecord {
                error: Some("skipped: no caller number".into()),
                ..CrmRecord::default()
            };
            self.inbox.push(Input::CrmDone(skipped));
            return;
        };
        let subject = format!("Escalated call from {caller}");
        let content = format!(
            "{summary}\n\n— escalated by the voice agent on call {} ({reason})",
            record.call_id
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

    /// Waits at most `wait` for the CRM task and queues its result for the machine. Returns the
    /// recorded result (also when it was recorded earlier), `None` while the task still runs or
    /// when there is none.
    pub(super) async fn wait_crm(&mut self, wait: Duration) -> Option<CrmRecord> {
        let recorded = |m: &Self| {
            m.machine
                .record()
                .escalation
                .as_ref()
                .and_then(|e| e.crm.clone())
        };
        if let Some(done) = recorded(self) {
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
                self.inbox.push(Input::CrmDone(rec.clone()));
                Some(rec)
            }
            Err(_) => None,
        }
    }

    /// Extraction, the summary (the model's, else the transcript one), the cost estimate and the
    /// SMS follow-up (see [`after_call`]).
    pub(super) async fn after_call_work(&mut self) {
        let profile = self.machine.setup().profile.clone();
        let services = self.ctx.after_call.clone();
        let call_id = self.machine.record().call_id.clone();
        let transcript = self.stored_transcript(&call_id).await;
        if !profile.after_call.extract.is_empty() {
            let extracted = after_call::extract(&profile.after_call.extract, &transcript);
            let names: Vec<String> = extracted.keys().cloned().collect();
            self.machine.record_mut().after_call.extracted = extracted;
            if !names.is_empty() {
                self.write_event("values_extracted", json!({ "names": names }))
                    .await;
            }
        }
        if services.config.summary != SummaryMode::Off && profile.after_call.summary {
            let record = self.machine.record_mut();
            if record.after_call.summary.is_none() {
                record.after_call.summary =
                    Some(after_call::transcript_summary(record, &transcript));
            }
            let source = record
                .after_call
                .summary
                .as_ref()
                .map(|s| s.source.clone())
                .unwrap_or_default();
            metrics::counter!(names::CALL_SUMMARIES, "source" => source.clone()).increment(1);
            self.write_event("summary_stored", json!({ "source": source }))
                .await;
        }
        if let Some(price) = services.pricing.for_model(&profile.session.model) {
            let record = self.machine.record_mut();
            let micros = after_call::estimate_cost_micros(&record.after_call.tokens, price);
            metrics::counter!(
                names::CALL_COST_MICROS,
                "model" => price.model.clone(),
                "currency" => services.pricing.currency.clone()
            )
            .increment(micros);
            record.after_call.cost = Some(CostEstimate {
                model: price.model.clone(),
                currency: services.pricing.currency.clone(),
                amount_micros: micros,
            });
        }
        if let Some(sms) = &profile.after_call.sms {
            let follow =
                after_call::sms_follow_up(sms, self.machine.record(), &transcript, &services).await;
            metrics::counter!(names::SMS_FOLLOWUPS, "status" => follow.status.clone()).increment(1);
            info!(status = %follow.status, reason = ?follow.reason, "sms follow-up");
            self.write_event(
                "sms_follow_up",
                json!({ "status": follow.status, "reason": follow.reason, "sid": follow.sid }),
            )
            .await;
            self.machine.record_mut().after_call.sms = Some(follow);
        }
    }
}
