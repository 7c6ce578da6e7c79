//! Tools: the built-in ones (`transfer_to_human`, `end_call`, `send_dtmf`), the profile's
//! declared tools (validated, run as jobs by the driver), filler lines and the response owed
//! once tools finish.

use serde_json::{Value, json};
use tracing::{info, warn};

use super::model::REQUESTED;
use super::{Flow, Machine, Millis, Output, RunningTool, Waiting, clip};
use crate::calls::record::CallState;
use crate::escalation::Trigger;
use crate::openai::sideband::client;
use crate::prompts::{TOOL_END_CALL, TOOL_TRANSFER_TO_HUMAN};
use crate::telemetry::names;
use crate::tools::{self, ToolResult};

impl Machine {
    pub(super) fn on_tool_call(
        &mut self,
        now: Millis,
        fc_id: &str,
        name: &str,
        arguments: &str,
        out: &mut Vec<Output>,
    ) -> Flow {
        // Past the tool-call budget the call is dropped unanswered (the call is ending).
        if !self.state.budget.tool_call() {
            return Flow::Continue;
        }
        if self.state.closing.is_some() {
            let out_json =
                json!({ "error": { "code": "call_ending", "message": "The call is ending." } });
            self.send(client::function_call_output(fc_id, &out_json), out);
            self.event(
                now,
                "tool_call",
                json!({ "name": name, "call_id": fc_id }),
                out,
            );
            return Flow::Continue;
        }
        if self.state.running.contains_key(fc_id) {
            // A duplicated `response.function_call_arguments.done` of a call still running:
            // one job, one output.
            warn!(
                call_id = fc_id,
                "duplicate function call ignored; it is already running"
            );
            return Flow::Continue;
        }
        if matches!(name, TOOL_TRANSFER_TO_HUMAN | TOOL_END_CALL) {
            return self.on_call_tool(now, fc_id, name, arguments, out);
        }
        let profile = self.setup.profile.clone();
        let Some(def) = profile.tools.get(name) else {
            self.event(
                now,
                "tool_call",
                json!({ "name": name, "call_id": fc_id }),
                out,
            );
            return self.finish_tool(now, fc_id, name, ToolResult::unknown_tool(name), 0, out);
        };
        match def.check_arguments(arguments) {
            Ok(_) if !self.state.budget.tool_job(self.state.running.len()) => Flow::Continue,
            Ok(args) if def.builtin() == Some(tools::Builtin::SendDtmf) => {
                // The keys go out on the link itself; the `tool_call` event carries no
                // arguments and the result only the number of keys: the keys may be a PIN.
                self.event(
                    now,
                    "tool_call",
                    json!({ "name": name, "call_id": fc_id }),
                    out,
                );
                let keys = args["digits"].as_str().unwrap_or_default();
                match crate::calls::link::dtmf_keys(keys) {
                    Ok(keys) => {
                        self.state.waiting = Some(Waiting::Dtmf {
                            fc_id: fc_id.to_string(),
                            name: name.to_string(),
                        });
                        out.push(Output::SendDtmf(keys));
                        Flow::Continue
                    }
                    Err(e) => {
                        let result = tools::dtmf_result(Err(e));
                        self.finish_tool(now, fc_id, name, result, 0, out)
                    }
                }
            }
            Ok(args) => {
                if self.state.running.is_empty() {
                    let after = self.setup.filler_after_ms;
                    self.state.filler_at = (after > 0).then(|| now.saturating_add(after));
                    self.state.filler_pending = false;
                    self.state.filler_line = Some(
                        def.filler
                            .clone()
                            .or_else(|| profile.filler_line.clone())
                            .unwrap_or_else(|| self.setup.filler_line.clone()),
                    );
                }
                self.state.running.insert(
                    fc_id.to_string(),
                    RunningTool {
                        name: def.name.clone(),
                        called_at_ms: now,
                        arguments: args.clone(),
                    },
                );
                out.push(Output::StartTool {
                    fc_id: fc_id.to_string(),
                    name: def.name.clone(),
                    args,
                });
                Flow::Continue
            }
            Err(problems) => {
                self.event(
                    now,
                    "tool_call",
                    json!({ "name": name, "call_id": fc_id, "arguments": clip(arguments, 500) }),
                    out,
                );
                let result = ToolResult::invalid_arguments(name, problems);
                self.finish_tool(now, fc_id, name, result, 0, out)
            }
        }
    }

    /// `transfer_to_human` and `end_call`: they act on the call itself.
    fn on_call_tool(
        &mut self,
        now: Millis,
        fc_id: &str,
        name: &str,
        arguments: &str,
        out: &mut Vec<Output>,
    ) -> Flow {
        let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let reason = args
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.event(
            now,
            "tool_call",
            json!({ "name": name, "call_id": fc_id }),
            out,
        );
        self.count_tool(name, "ok", 0);
        match name {
            TOOL_TRANSFER_TO_HUMAN if self.escalation_available() => {
                // The output ({"status":"transferring"}, plus the handover code of a
                // connect_refer hand-off) is sent once the hand-off is prepared.
                self.escalate(now, Trigger::Tool(reason), Some(fc_id.to_string()), out)
            }
            TOOL_TRANSFER_TO_HUMAN => {
                let o = json!({ "error": "transfer is not available right now; keep helping the caller" });
                self.send(client::function_call_output(fc_id, &o), out);
                self.request_response(out);
                Flow::Continue
            }
            _ => {
                self.send(
                    client::function_call_output(fc_id, &json!({ "ok": true })),
                    out,
                );
                self.event(now, "end_call_requested", json!({ "reason": reason }), out);
                if self.state.response_in_progress.is_some() {
                    // Let the goodbye finish playing, but not forever.
                    self.state.hangup_when_quiet = true;
                    self.state.line_deadline =
                        Some(now.saturating_add(self.setup.handoff_line_timeout_ms));
                    Flow::Continue
                } else {
                    self.hangup(now, CallState::Ended, "end_call".into(), out)
                }
            }
        }
    }

    /// Hands a tool's result to the model (output first, so the round trip is short), then
    /// records it, and asks for the next response once no tool runs.
    pub(super) fn finish_tool(
        &mut self,
        now: Millis,
        fc_id: &str,
        name: &str,
        result: ToolResult,
        elapsed_us: u64,
        out: &mut Vec<Output>,
    ) -> Flow {
        let running = self.state.running.remove(fc_id);
        self.send(client::function_call_output(fc_id, &result.output), out);
        if let Some(r) = running {
            self.event_at(
                r.called_at_ms,
                "tool_call",
                json!({ "name": name, "call_id": fc_id, "arguments": r.arguments }),
                out,
            );
        }
        let outcome = result.outcome.as_str();
        self.count_tool(name, outcome, elapsed_us);
        let ms = elapsed_us as f64 / 1000.0;
        if result.outcome == tools::Outcome::Ok {
            info!(tool = name, outcome, duration_ms = ms, status = ?result.status, "tool finished");
        } else {
            warn!(tool = name, outcome, duration_ms = ms, status = ?result.status, note = ?result.note, "tool failed");
        }
        self.event(
            now,
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
            out,
        );
        if self.state.running.is_empty() {
            self.state.filler_at = None;
            self.state.filler_pending = false;
            self.request_response(out);
        }
        Flow::Continue
    }

    /// Metrics and the per-call tool counts.
    fn count_tool(&mut self, name: &str, outcome: &'static str, elapsed_us: u64) {
        let known = matches!(name, TOOL_TRANSFER_TO_HUMAN | TOOL_END_CALL)
            || self.setup.profile.tools.get(name).is_some();
        let label = if known {
            name.to_string()
        } else {
            "unknown".to_string()
        };
        metrics::counter!(names::TOOL_CALLS, "tool" => label.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::TOOL_DURATION, "tool" => label).record(elapsed_us as f64 / 1e6);
        // A name the profile lacks comes from the model: bounded in the record.
        let key = if known {
            name.to_string()
        } else {
            clip(name, 64)
        };
        *self
            .state
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
    pub(super) fn request_response(&mut self, out: &mut Vec<Output>) {
        let s = &mut self.state;
        if s.handoff.is_some() || s.closing.is_some() || s.hangup_when_quiet {
            s.want_response = false;
            return;
        }
        if s.running.is_empty() && s.response_in_progress.is_none() && s.line.is_none() {
            s.want_response = false;
            s.response_in_progress = Some(REQUESTED.into());
            self.send(client::response_create(None), out);
        } else {
            s.want_response = true;
        }
    }

    /// After a `response.done`: a filler line that came due, then an owed `response.create`.
    pub(super) fn after_response(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.state.filler_pending && !self.state.running.is_empty() {
            self.speak_filler(now, out);
        }
        if self.state.want_response {
            self.request_response(out);
        }
    }

    /// Says the filler line while tools run, if no response is in progress; otherwise keeps it
    /// pending for the next `response.done`.
    pub(super) fn speak_filler(&mut self, now: Millis, out: &mut Vec<Output>) {
        let s = &mut self.state;
        if s.running.is_empty() || s.handoff.is_some() || s.closing.is_some() || s.hangup_when_quiet
        {
            s.filler_pending = false;
            return;
        }
        if s.response_in_progress.is_some() || s.line.is_some() {
            s.filler_pending = true;
            return;
        }
        s.filler_pending = false;
        let line = s
            .filler_line
            .clone()
            .unwrap_or_else(|| self.setup.filler_line.clone());
        s.response_in_progress = Some(REQUESTED.into());
        let mut tools: Vec<&str> = s.running.values().map(|r| r.name.as_str()).collect();
        tools.sort_unstable();
        let detail = json!({ "tools": tools, "line": line });
        self.send(client::say_exactly(&line), out);
        self.event(now, "tool_filler", detail, out);
    }
}
