//! Model events, the link's life, timers and operator commands.

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{Flow, Machine, Millis, ModelEvent, Output, Reconnected, Waiting, clip, ts};
use crate::calls::after_call;
use crate::calls::record::{CallState, Speaker, TranscriptLine};
use crate::calls::registry::Command;
use crate::escalation::Trigger;
use crate::openai::sideband::client;
use crate::telemetry::names;

/// Placeholder for "a response was requested and its `response.created` has not arrived yet".
pub(super) const REQUESTED: &str = "requested";

impl Machine {
    pub(super) fn on_model(
        &mut self,
        now: Millis,
        event: ModelEvent,
        out: &mut Vec<Output>,
    ) -> Flow {
        match event {
            ModelEvent::CallerTranscript { item_id, text } => {
                if !self.transcript(now, Speaker::Caller, &text, &item_id, out) {
                    return Flow::Continue;
                }
                let phrase = self
                    .setup
                    .profile
                    .escalation
                    .phrases
                    .find(&text)
                    .map(str::to_string);
                if let Some(phrase) = phrase.filter(|_| self.escalation_available()) {
                    return self.escalate(now, Trigger::CallerPhrase(phrase), None, out);
                }
            }
            ModelEvent::AgentTranscript { item_id, text } => {
                self.transcript(now, Speaker::Agent, &text, &item_id, out);
            }
            ModelEvent::ToolCall {
                call_id,
                name,
                arguments,
            } => return self.on_tool_call(now, &call_id, &name, &arguments, out),
            ModelEvent::ResponseCreated { id, summary } => {
                let s = &mut self.state;
                if s.closing.is_some() && s.summary_response.is_none() && summary {
                    s.summary_response = Some(id);
                    return Flow::Continue;
                }
                if let Some(line) = s.line.as_mut() {
                    if line.response_id.is_none() && line.ignore_id.as_deref() != Some(id.as_str())
                    {
                        line.response_id = Some(id.clone());
                    }
                }
                s.response_in_progress = Some(id);
            }
            ModelEvent::ResponseDone {
                id,
                summary,
                usage,
                response,
            } => {
                if let Some(u) = &usage {
                    let usage = &mut self.state.record.usage;
                    usage.responses += 1;
                    usage.input_tokens += u.input_tokens;
                    usage.output_tokens += u.output_tokens;
                    usage.total_tokens += u.total_tokens;
                    after_call::add_usage(
                        &mut self.state.record.after_call.tokens,
                        &response["usage"],
                    );
                }
                let s = &self.state;
                if s.closing.is_some()
                    && (s.summary_response.as_deref() == Some(id.as_str()) || summary)
                {
                    return self.on_summary(now, &response, out);
                }
                self.state.response_in_progress = None;
                let ours = self.state.line.as_ref().is_some_and(|l| {
                    l.response_id.as_deref() == Some(id.as_str()) && !l.audio_started
                });
                if ours {
                    return self.line_finished(now, out);
                }
                let s = &self.state;
                if s.hangup_when_quiet && s.line.is_none() && s.closing.is_none() {
                    return self.hangup(now, CallState::Ended, "end_call".into(), out);
                }
                self.after_response(now, out);
            }
            ModelEvent::AudioStarted { response_id } => {
                if let Some(line) = self
                    .state
                    .line
                    .as_mut()
                    .filter(|l| l.response_id.as_deref() == Some(response_id.as_str()))
                {
                    line.audio_started = true;
                }
            }
            ModelEvent::AudioStopped { response_id } => {
                let ours = self.state.line.as_ref().is_some_and(|l| {
                    l.audio_started && l.response_id.as_deref() == Some(response_id.as_str())
                });
                if ours {
                    return self.line_finished(now, out);
                }
            }
            ModelEvent::Dtmf { key } => {
                if !self.state.budget.dtmf() {
                    return Flow::Continue;
                }
                let key = clip(&key, 8);
                let first = key.chars().next();
                self.event(now, "dtmf", json!({ "key": key }), out);
                if let Some(k) =
                    first.filter(|k| Some(*k) == self.setup.profile.escalation.dtmf_key)
                    && self.escalation_available()
                {
                    return self.escalate(now, Trigger::Dtmf(k), None, out);
                }
            }
            ModelEvent::Error {
                kind,
                code,
                message,
            } => {
                let code = code.unwrap_or_else(|| "unknown".into());
                warn!(code = %code, message = ?message, "sideband error event");
                metrics::counter!(names::SIDEBAND_ERRORS, "code" => code.clone()).increment(1);
                if self.state.response_in_progress.as_deref() == Some(REQUESTED) {
                    // Most likely our response.create was refused: nothing is in progress.
                    self.state.response_in_progress = None;
                }
                self.event(
                    now,
                    "openai_error",
                    json!({ "type": kind, "code": code, "message": message }),
                    out,
                );
            }
            ModelEvent::TranscriptionFailed { item_id, code } => {
                self.event(
                    now,
                    "transcription_failed",
                    json!({ "item_id": item_id, "code": code }),
                    out,
                );
            }
            ModelEvent::SessionCreated | ModelEvent::Other => {}
            ModelEvent::SessionClosed { reason, usage } => {
                return self.on_session_closed(now, &reason, &usage, out);
            }
            ModelEvent::Ringing => self.event(now, "ringing", json!({}), out),
            ModelEvent::Answered => {
                info!("outbound call answered");
                self.event(now, "answered", json!({}), out);
                if std::mem::take(&mut self.state.greet_on_answer) {
                    if let Some(greeting) = self.setup.profile.greeting.as_deref() {
                        self.send(client::response_create(Some(greeting)), out);
                    }
                }
            }
            ModelEvent::TransportFailed {
                kind,
                code,
                message,
            } => {
                warn!(code = ?code, "outbound call failed");
                self.event(
                    now,
                    "transport_failed",
                    json!({ "type": kind, "code": code, "message": message }),
                    out,
                );
                return Flow::End(CallState::Ended, "transport_failed".into());
            }
        }
        Flow::Continue
    }

    /// Records GPT-Live's `session.closed`: its usage (summed into the record) and reason.
    pub(super) fn session_closed_seen(
        &mut self,
        now: Millis,
        reason: &str,
        usage: &Value,
        out: &mut Vec<Output>,
    ) {
        let u = &mut self.state.record.usage;
        let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
        u.input_tokens += n("input_tokens");
        u.output_tokens += n("output_tokens");
        u.total_tokens += n("total_tokens");
        self.event(
            now,
            "session_closed",
            json!({ "reason": reason, "usage": usage }),
            out,
        );
    }

    /// GPT-Live `session.closed`: the authoritative end of the call (openai-python
    /// `types/live/server_event.py`).
    fn on_session_closed(
        &mut self,
        now: Millis,
        reason: &str,
        usage: &Value,
        out: &mut Vec<Output>,
    ) -> Flow {
        info!(reason, "session closed");
        self.session_closed_seen(now, reason, usage, out);
        if let Some(c) = &self.state.closing {
            return Flow::End(c.state, c.reason.clone());
        }
        if let Some(h) = self
            .state
            .handoff
            .as_mut()
            .filter(|h| h.is_awaiting_outcome())
        {
            let outcome = h.sideband_closed().expect("awaiting outcome");
            return self.conclude_handoff(now, outcome, out);
        }
        let reason = match reason {
            "remote_hangup" => "caller_hangup",
            "close_requested" => "call_ended",
            "expired" => "session_expired",
            "content" => "content_filter",
            "connection_lost" => "connection_lost",
            _ => "session_closed",
        };
        Flow::End(CallState::Ended, reason.into())
    }

    /// The link ended. `clean` = a close frame was received.
    pub(super) fn on_closed(&mut self, now: Millis, clean: bool, out: &mut Vec<Output>) -> Flow {
        self.state.link_open = false;
        if let Some(c) = self.state.closing.clone() {
            // The call went away while we waited for the summary.
            self.event(now, "summary_lost", json!({ "clean": clean }), out);
            if clean {
                return Flow::End(c.state, c.reason);
            }
            return self.hangup_now(c.state, c.reason, out);
        }
        if self
            .state
            .handoff
            .as_ref()
            .is_some_and(|h| h.is_awaiting_outcome())
        {
            // Ambiguous drop: if the call is still reachable the REFER has not taken yet.
            if !clean {
                self.state.waiting = Some(Waiting::Reconnect { handoff: true });
                out.push(Output::Reconnect);
                return Flow::Continue;
            }
            return self.handoff_link_closed(now, out);
        }
        if clean {
            return Flow::End(CallState::Ended, "call_ended".into());
        }
        self.event(now, "sideband_dropped", json!({}), out);
        self.state.waiting = Some(Waiting::Reconnect { handoff: false });
        out.push(Output::Reconnect);
        Flow::Continue
    }

    fn handoff_link_closed(&mut self, now: Millis, out: &mut Vec<Output>) -> Flow {
        let h = self.state.handoff.as_mut().expect("awaiting outcome");
        let outcome = h.sideband_closed().expect("awaiting outcome");
        self.conclude_handoff(now, outcome, out)
    }

    pub(super) fn on_reconnected(
        &mut self,
        now: Millis,
        r: Reconnected,
        out: &mut Vec<Output>,
    ) -> Flow {
        let handoff = match self.state.waiting.take() {
            Some(Waiting::Reconnect { handoff }) => handoff,
            other => return self.unexpected(other, "Reconnected"),
        };
        let label = match r {
            Reconnected::Ok => "ok",
            Reconnected::CallGone => "call_gone",
            Reconnected::GaveUp => "gave_up",
        };
        if r == Reconnected::Ok {
            self.state.link_open = true;
        }
        if handoff {
            if r == Reconnected::Ok {
                metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => "ok").increment(1);
                return Flow::Continue;
            }
            return self.handoff_link_closed(now, out);
        }
        metrics::counter!(names::SIDEBAND_RECONNECTS, "result" => label).increment(1);
        match r {
            Reconnected::Ok => {
                self.event(now, "sideband_reattached", json!({}), out);
                Flow::Continue
            }
            Reconnected::CallGone => Flow::End(CallState::Ended, "caller_hangup".into()),
            Reconnected::GaveUp => {
                warn!("sideband lost; giving up on this call");
                Flow::End(CallState::Ended, "sideband_lost".into())
            }
        }
    }

    pub(super) fn on_command(&mut self, now: Millis, cmd: Command, out: &mut Vec<Output>) -> Flow {
        match cmd {
            Command::Transfer(note) => {
                if self.escalation_available() {
                    self.escalate(now, Trigger::Operator(note), None, out)
                } else {
                    self.event(
                        now,
                        "escalation_unavailable",
                        json!({ "trigger": "operator" }),
                        out,
                    );
                    Flow::Continue
                }
            }
            Command::Hangup(note) => {
                // An operator wants the call gone now: no summary round trip.
                self.event(now, "operator_hangup", json!({ "note": note }), out);
                self.hangup_now(CallState::Ended, "operator_hangup".into(), out)
            }
        }
    }

    pub(super) fn on_timer(&mut self, now: Millis, out: &mut Vec<Output>) -> Flow {
        if let Some(c) = self.state.closing.clone() {
            if now >= c.deadline {
                self.event(now, "summary_timeout", json!({}), out);
                return self.hangup_now(c.state, c.reason, out);
            }
        } else if now >= self.state.max_deadline {
            let secs = self.setup.profile.max_call_duration.as_secs();
            self.event(now, "max_duration_reached", json!({ "secs": secs }), out);
            return self.hangup(now, CallState::Ended, "max_duration".into(), out);
        }
        if self.state.filler_at.is_some_and(|d| now >= d) {
            self.state.filler_at = None;
            self.speak_filler(now, out);
        }
        if self.state.line_deadline.is_some_and(|d| now >= d) {
            self.state.line_deadline = None;
            if self.state.line.is_some() {
                self.event(now, "line_timeout", json!({}), out);
                return self.line_finished(now, out);
            }
            if self.state.hangup_when_quiet && self.state.closing.is_none() {
                return self.hangup(now, CallState::Ended, "end_call".into(), out);
            }
        }
        if self.state.refer_deadline.is_some_and(|d| now >= d) {
            self.state.refer_deadline = None;
            if let Some(h) = self.state.handoff.as_mut() {
                let target = h.current_target().map(|t| t.as_uri());
                let step = h.window_elapsed();
                self.event(
                    now,
                    "transfer_not_confirmed",
                    json!({ "target": target }),
                    out,
                );
                return self.run_step(now, step, out);
            }
        }
        Flow::Continue
    }

    /// Stores one transcript line (cut at `max_transcript_line_bytes`). False when the line was
    /// dropped by the transcript-line budget.
    fn transcript(
        &mut self,
        now: Millis,
        speaker: Speaker,
        text: &str,
        item_id: &str,
        out: &mut Vec<Output>,
    ) -> bool {
        if !self.state.budget.transcript_line() {
            return false;
        }
        let text = self.state.budget.clip_line(text).into_owned();
        let item_id = clip(item_id, 128);
        if self.setup.log_transcripts {
            info!(speaker = speaker.as_str(), text, "transcript");
        } else {
            debug!(
                speaker = speaker.as_str(),
                chars = text.len(),
                "transcript line stored"
            );
        }
        out.push(Output::Transcript(TranscriptLine {
            call_id: self.state.record.call_id.clone(),
            speaker,
            text,
            at: ts(now),
            item_id: (!item_id.is_empty()).then_some(item_id),
        }));
        true
    }
}
