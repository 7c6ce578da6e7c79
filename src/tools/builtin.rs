//! Built-in tools: the controller itself is the executor.
//!
//! | name | what it does |
//! |---|---|
//! | `transfer_to_human` | escalates (the monitor runs the hand-off); offered whenever escalation is enabled |
//! | `end_call` | hangs up after the goodbye; always offered |
//! | `send_dtmf` | **unsupported on both paths**, so the model gets `{"error":{"code":"unsupported",...}}`. SIP: OpenAI documents no sideband event that injects DTMF into a SIP call (OpenAPI `RealtimeClientEvent*` lists every client event). Twilio media path: DTMF cannot be sent over the Media Streams socket; only a REST call update with `<Play digits>` can (Twilio's docs "DTMF", §5.1), and replacing the call's TwiML ends the `<Connect><Stream>` and with it the AI leg |
//! | `create_ticket` | HubSpot (when `[hubspot] enabled` and `HUBSPOT_TOKEN` is set): finds or creates the contact with the caller's number, creates a ticket associated with it |
//! | `lookup_call_history` | the caller's previous calls in our store (newest first): date, profile, outcome and summary. Reads the newest 1000 records with `list_calls` and filters them in memory — there is no by-caller index yet |

use serde_json::{Value, json};

use super::run::{CallInfo, Outcome, Services, ToolResult};
use crate::prompts::{TOOL_END_CALL, TOOL_TRANSFER_TO_HUMAN, builtin_tools};
use crate::store::CallQuery;

/// `send_dtmf`.
pub const TOOL_SEND_DTMF: &str = "send_dtmf";
/// `create_ticket`.
pub const TOOL_CREATE_TICKET: &str = "create_ticket";
/// `lookup_call_history`.
pub const TOOL_LOOKUP_CALL_HISTORY: &str = "lookup_call_history";

/// How many stored calls `lookup_call_history` scans (newest first).
pub const HISTORY_SCAN_LIMIT: usize = 1000;

/// A built-in tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// `transfer_to_human`.
    TransferToHuman,
    /// `end_call`.
    EndCall,
    /// `send_dtmf`.
    SendDtmf,
    /// `create_ticket`.
    CreateTicket,
    /// `lookup_call_history`.
    LookupCallHistory,
}

impl Builtin {
    /// Every built-in.
    pub const ALL: [Builtin; 5] = [
        Builtin::TransferToHuman,
        Builtin::EndCall,
        Builtin::SendDtmf,
        Builtin::CreateTicket,
        Builtin::LookupCallHistory,
    ];

    /// Its function name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::TransferToHuman => TOOL_TRANSFER_TO_HUMAN,
            Builtin::EndCall => TOOL_END_CALL,
            Builtin::SendDtmf => TOOL_SEND_DTMF,
            Builtin::CreateTicket => TOOL_CREATE_TICKET,
            Builtin::LookupCallHistory => TOOL_LOOKUP_CALL_HISTORY,
        }
    }

    /// The built-in named `name`.
    pub fn parse(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// True for the built-ins that act on the live call (run by the monitor, not by
    /// [`super::execute`]).
    pub fn acts_on_call(self) -> bool {
        matches!(self, Builtin::TransferToHuman | Builtin::EndCall)
    }

    /// The default description the model reads.
    pub fn description(self) -> &'static str {
        match self {
            Builtin::TransferToHuman | Builtin::EndCall => "",
            Builtin::SendDtmf => {
                "Send touch-tone digits on the call (for example to navigate another phone menu)."
            }
            Builtin::CreateTicket => {
                "Open a support ticket for the caller so a colleague follows up. Use it when the \
                 problem cannot be solved on this call. Tell the caller the ticket number."
            }
            Builtin::LookupCallHistory => {
                "Look up this caller's previous calls to us (date, topic, outcome). Use it when the \
                 caller refers to an earlier call."
            }
        }
    }

    /// The JSON Schema of the arguments.
    pub fn parameters(self) -> Value {
        match self {
            Builtin::TransferToHuman | Builtin::EndCall => builtin_tools(true)
                .into_iter()
                .find(|t| t["name"] == self.name())
                .map(|t| t["parameters"].clone())
                .expect("builtin_tools lists transfer_to_human and end_call"),
            Builtin::SendDtmf => json!({
                "type": "object",
                "properties": {
                    "digits": {
                        "type": "string",
                        "pattern": "^[0-9*#A-Da-d]{1,32}$",
                        "description": "The keys to press, e.g. \"1\" or \"4521#\"."
                    }
                },
                "required": ["digits"],
                "additionalProperties": false
            }),
            Builtin::CreateTicket => json!({
                "type": "object",
                "properties": {
                    "subject": {
                        "type": "string", "minLength": 3, "maxLength": 200,
                        "description": "One-line summary of the problem."
                    },
                    "description": {
                        "type": "string", "minLength": 3, "maxLength": 4000,
                        "description": "What the caller needs, with every detail a colleague needs to follow up (order numbers, dates, what was tried)."
                    }
                },
                "required": ["subject", "description"],
                "additionalProperties": false
            }),
            Builtin::LookupCallHistory => json!({
                "type": "object",
                "properties": {
                    "limit": {
                        "type": "integer", "minimum": 1, "maximum": 10,
                        "description": "How many previous calls to return, newest first (default 3)."
                    }
                },
                "additionalProperties": false
            }),
        }
    }
}

/// Runs a built-in that does not act on the call. `args` are already validated.
pub(crate) async fn run(
    builtin: Builtin,
    args: &Value,
    call: &CallInfo,
    services: &Services,
) -> ToolResult {
    match builtin {
        Builtin::TransferToHuman | Builtin::EndCall => ToolResult::error(
            Outcome::Unsupported,
            "unsupported",
            "this tool acts on the live call and only runs during a call",
            Some(format!("{} runs in the call monitor", builtin.name())),
        ),
        Builtin::SendDtmf => ToolResult::error(
            Outcome::Unsupported,
            "unsupported",
            "Sending key tones is not possible on this call. Do not try again; tell the caller \
             what to press themselves if they need to, or continue without it.",
            Some(
                "no sideband event injects DTMF into a SIP call; on Twilio only a TwiML update \
                 (<Play digits>) can, which would end the media stream"
                    .into(),
            ),
        ),
        Builtin::CreateTicket => create_ticket(args, call, services).await,
        Builtin::LookupCallHistory => lookup_call_history(args, call, services).await,
    }
}

async fn create_ticket(args: &Value, call: &CallInfo, services: &Services) -> ToolResult {
    let Some(hubspot) = &services.hubspot else {
        return ToolResult::error(
            Outcome::NotConfigured,
            "not_configured",
            "Tickets cannot be created right now. Tell the caller a colleague will follow up, or \
             offer to transfer them.",
            Some("HubSpot is not configured ([hubspot] enabled + HUBSPOT_TOKEN)".into()),
        );
    };
    let Some(caller) = call.caller.as_deref().filter(|c| !c.is_empty()) else {
        return ToolResult::error(
            Outcome::Failed,
            "no_caller_number",
            "The caller's number is unknown, so no ticket can be linked to them. Offer to transfer \
             them instead.",
            Some("no caller number on this call".into()),
        );
    };
    let subject = args["subject"].as_str().unwrap_or_default();
    let description = args["description"].as_str().unwrap_or_default();
    let content = format!(
        "{description}\n\n— opened by the voice agent on call {} from {caller}",
        call.call_id
    );
    let result = hubspot
        .ticket_for_caller(caller, subject, &content, None, None)
        .await;
    match result {
        Ok(t) => ToolResult::ok(json!({ "ticket_id": t.ticket_id, "status": "created" })),
        Err(crate::hubspot::CallerTicketError { error: e, .. }) => ToolResult::error(
            Outcome::Failed,
            "ticket_failed",
            "The ticket could not be created. Apologise and offer to transfer the caller.",
            Some(e.to_string()),
        )
        .with_status(e.status()),
    }
}

async fn lookup_call_history(args: &Value, call: &CallInfo, services: &Services) -> ToolResult {
    let Some(store) = &services.store else {
        return ToolResult::error(
            Outcome::NotConfigured,
            "not_configured",
            "Call history is not available.",
            Some("no store".into()),
        );
    };
    let Some(caller) = call.caller.as_deref().filter(|c| !c.is_empty()) else {
        return ToolResult::ok(json!({
            "calls": [],
            "note": "The caller's number is unknown, so there is no history."
        }));
    };
    let limit = args["limit"].as_u64().unwrap_or(3).clamp(1, 10) as usize;
    let query = CallQuery {
        limit: HISTORY_SCAN_LIMIT,
        ..CallQuery::default()
    };
    match store.list_calls(&query).await {
        Ok(calls) => {
            let found: Vec<Value> = calls
                .iter()
                .filter(|r| r.caller.as_deref() == Some(caller) && r.call_id != call.call_id)
                .take(limit)
                .map(|r| {
                    let mut v = json!({
                        "date": r.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "line": r.profile,
                        "state": r.state.as_str(),
                        "end_reason": r.end_reason,
                    });
                    if let Some(s) = &r.after_call.summary {
                        v["intent"] = json!(s.intent);
                        v["outcome"] = json!(s.outcome);
                    }
                    v
                })
                .collect();
            ToolResult::ok(json!({ "calls": found }))
        }
        Err(e) => ToolResult::error(
            Outcome::Failed,
            "history_failed",
            "The call history could not be read right now.",
            Some(e.to_string()),
        ),
    }
}
