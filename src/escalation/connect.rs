//! Amazon Connect hand-over: the handover token's payload, and the Lambda that a Connect contact
//! flow invokes to redeem it.
//!
//! Sources: Amazon Connect "Invoke AWS Lambda function" (Lambda event and response,
//! <https://docs.aws.amazon.com/connect/latest/adminguide/connect-lambda-functions.html>), "Set
//! contact attributes" (attribute limits,
//! <https://docs.aws.amazon.com/connect/latest/adminguide/set-contact-attributes.html>); DynamoDB
//! conditional `DeleteItem` with `ReturnValues=ALL_OLD` for one-time redemption
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DeleteItem.html>).
//!
//! **Controller side** (`[escalation] action = "connect_refer"`, driven by the call monitor):
//! the payload ([`handover_payload`]) carries the call id, the caller number, the HubSpot ids, a
//! summary of the conversation so far ([`conversation_summary`]), intent, priority, the
//! escalation reason and the target queue. It is stored under a one-time token
//! ([`crate::store::Store::mint_token`]) and the caller is REFERred to the Connect number.
//!
//! **Contact-flow side** ([`handle`], wrapped by the `connect-lambda` binary): the event's
//! `Details.Parameters.token` (the digits the caller keyed in, `$.StoredCustomerInput`) is
//! redeemed when it is a well-formed token; otherwise, or when it does not redeem, the most recent
//! live handover for the caller's number (`Details.ContactData.CustomerEndpoint.Address`) is
//! looked up and redeemed ([`crate::store::Store::latest_handover_for_caller`]). The answer is the
//! flat string map of [`ATTRIBUTE_KEYS`] with `success` = `true`, or `success` = `false` and a
//! `reason` ([`FailReason`]).
//!
//! Limits honoured: the whole lookup runs under a budget below Connect's 8 s block
//! limit ([`LambdaOptions::budget`], 6 s by default) and answers `success=false`,
//! `reason=timeout` when it passes; the response stays under 32 KB and, with the contact's
//! existing attributes, under the 32,768-byte attribute total, by truncating `summary`; values a
//! flow routes on (`success`, `reason`, `matched_by`, `intent`, `priority`, `route_to_queue`)
//! contain only ASCII letters, digits, `-` and `_`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::calls::record::{CallRecord, CrmRecord, Speaker, TranscriptLine};
use crate::escalation::ConnectHandover;
use crate::store::tokens::is_token;
use crate::store::{HandoverPayload, Store, StoreError};

/// Keys of a successful Lambda response, in the order documented for the contact flow.
pub const ATTRIBUTE_KEYS: [&str; 11] = [
    "success",
    "matched_by",
    "conversation_id",
    "caller_phone",
    "hubspot_contact_id",
    "hubspot_ticket_id",
    "summary",
    "intent",
    "priority",
    "escalation_reason",
    "route_to_queue",
];

/// All contact attributes together may total at most this many UTF-8 bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 32_768;

/// Bytes kept free under [`MAX_ATTRIBUTE_BYTES`] for attributes the flow sets after the Lambda.
pub const ATTRIBUTE_HEADROOM: usize = 1_024;

/// Default cap on the `summary` value, bytes.
pub const DEFAULT_SUMMARY_MAX_BYTES: usize = 2_000;

/// Default budget for one invocation (Connect allows at most 8 s).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(6);

/// The Connect "Invoke AWS Lambda function" event. Only the fields the hand-over reads
/// are typed; anything may be absent or `null`, and `Name` is not checked (real events say
/// `ContactFlowEvent`, the `aws_lambda_events` fixture says `ContactFlowExecution`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactFlowEvent {
    /// `Details`.
    #[serde(default, deserialize_with = "null_default")]
    pub details: ContactFlowDetails,
    /// `Name`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `Details` of a [`ContactFlowEvent`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactFlowDetails {
    /// `ContactData`.
    #[serde(default, deserialize_with = "null_default")]
    pub contact_data: ContactData,
    /// `Parameters`: the block's function input parameters (`token` = `$.StoredCustomerInput`).
    #[serde(default, deserialize_with = "null_default")]
    pub parameters: HashMap<String, Value>,
}

/// `Details.ContactData` of a [`ContactFlowEvent`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContactData {
    /// `ContactId`.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// `Attributes`: user-defined contact attributes set so far.
    #[serde(default, deserialize_with = "null_default")]
    pub attributes: HashMap<String, Value>,
    /// `CustomerEndpoint` (may be `null`): the caller's number as Connect sees it.
    #[serde(default)]
    pub customer_endpoint: Option<Endpoint>,
}

/// `CustomerEndpoint` / `SystemEndpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// `Address`, e.g. `+14155550123`.
    #[serde(default)]
    pub address: Option<String>,
    /// `Type`, e.g. `TELEPHONE_NUMBER`.
    #[serde(default, rename = "Type")]
    pub kind: Option<String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Why a redemption answered `success=false` (the `reason` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Neither a well-formed token nor a caller number was given (e.g. `Timeout` from Store
    /// customer input and no `CustomerEndpoint`).
    NoInput,
    /// A token was given but is unknown or already used, and the caller number found nothing.
    InvalidToken,
    /// A token was given, exists, but has expired (known only while the expired entry is still
    /// stored), and the caller number found nothing.
    ExpiredToken,
    /// No token was given and no live handover exists for the caller number.
    NotFound,
    /// The store failed.
    StoreError,
    /// The budget passed before the store answered.
    Timeout,
    /// The event was not a JSON object of the documented shape.
    BadEvent,
}

impl FailReason {
    /// `no_input`, `invalid_token`, `expired_token`, `not_found`, `store_error`, `timeout`,
    /// `bad_event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoInput => "no_input",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::NotFound => "not_found",
            Self::StoreError => "store_error",
            Self::Timeout => "timeout",
            Self::BadEvent => "bad_event",
        }
    }
}

/// How a handover was found: `token` or `caller_number`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The digits the caller keyed in.
    Token,
    /// The most recent live handover for the caller's number.
    CallerNumber,
}

impl MatchedBy {
    /// `token` or `caller_number`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::CallerNumber => "caller_number",
        }
    }
}

/// Result of [`redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// Redeemed (the token is gone from the store).
    Found(MatchedBy, Box<HandoverPayload>),
    /// Nothing redeemed.
    Failed(FailReason),
}

/// Tuning of [`handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LambdaOptions {
    /// The lookup must finish within this (default [`DEFAULT_BUDGET`]; Connect's limit is 8 s).
    pub budget: Duration,
    /// Cap on `summary`, bytes (default [`DEFAULT_SUMMARY_MAX_BYTES`]); it may be cut further to
    /// keep the attribute total under [`MAX_ATTRIBUTE_BYTES`].
    pub summary_max_bytes: usize,
}

impl Default for LambdaOptions {
    fn default() -> Self {
        Self {
            budget: DEFAULT_BUDGET,
            summary_max_bytes: DEFAULT_SUMMARY_MAX_BYTES,
        }
    }
}

/// The token in a `token` parameter: surrounding whitespace, inner spaces and `-`, and a
/// trailing `#` (the terminator, if a flow passes it on) are dropped. `None` when what is left
/// is not a token (e.g. Connect's `Timeout`).
pub fn normalize_token(raw: &str) -> Option<String> {
    let t: String = raw
        .trim()
        .trim_end_matches('#')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect();
    is_token(&t).then_some(t)
}

/// The event's token parameter, normalised ([`normalize_token`]).
pub fn event_token(event: &ContactFlowEvent) -> Option<String> {
    match event.details.parameters.get("token")? {
        Value::String(s) => normalize_token(s),
        Value::Number(n) => normalize_token(&n.to_string()),
        _ => None,
    }
}

/// The caller's number from `CustomerEndpoint` when it is a telephone number in E.164.
pub fn event_caller(event: &ContactFlowEvent) -> Option<String> {
    let ep = event.details.contact_data.customer_endpoint.as_ref()?;
    if ep.kind.as_deref().is_some_and(|k| k != "TELEPHONE_NUMBER") {
        return None;
    }
    crate::sip::E164::parse(ep.address.as_deref()?.trim())
        .ok()
        .map(|n| n.as_str().to_string())
}

/// Redeems the handover the event points at: its token first, then the caller number's most
/// recent live handover (the token of which is redeemed in turn, so it cannot be used twice).
/// Store failures are [`Redemption::Failed`] with [`FailReason::StoreError`].
pub async fn redeem(store: &dyn Store, event: &ContactFlowEvent, now: DateTime<Utc>) -> Redemption {
    let token = event_token(event);
    let caller = event_caller(event);
    if token.is_none() && caller.is_none() {
        return Redemption::Failed(FailReason::NoInput);
    }
    let mut token_failure = None;
    if let Some(token) = &token {
        match store.redeem_token(token, now).await {
            Ok(Some(p)) => return Redemption::Found(MatchedBy::Token, Box::new(p)),
            Ok(None) => {
                // Expired entries are still stored until DynamoDB TTL or the purge removes them:
                // a peek at a clock one day back tells "expired" from "unknown or used".
                let earlier = now - chrono::Duration::days(1);
                token_failure = Some(match store.peek_token(token, earlier).await {
                    Ok(Some(_)) => FailReason::ExpiredToken,
                    _ => FailReason::InvalidToken,
                });
            }
            Err(e) => return store_failed(&e),
        }
    }
    if let Some(caller) = &caller {
        // A concurrent redemption may win between the lookup and the redeem: look again.
        for _ in 0..2 {
            match store.latest_handover_for_caller(caller, now).await {
                Ok(Some((token, _))) => match store.redeem_token(&token, now).await {
                    Ok(Some(p)) => return Redemption::Found(MatchedBy::CallerNumber, Box::new(p)),
                    Ok(None) => continue,
                    Err(e) => return store_failed(&e),
                },
                Ok(None) => break,
                Err(e) => return store_failed(&e),
            }
        }
    }
    Redemption::Failed(token_failure.unwrap_or(FailReason::NotFound))
}

fn store_failed(e: &StoreError) -> Redemption {
    tracing::warn!(error = %e, "handover redemption: store failed");
    Redemption::Failed(FailReason::StoreError)
}

/// The Lambda handler: [`redeem`] under `opts.budget`, answered as the flat string map the
/// contact flow reads ([`attributes`]). Counts `voxmachina_handover_tokens_total` with `event` =
/// `redeemed`, `expired` or `redeem_failed`.
pub async fn handle(
    store: &dyn Store,
    event: &ContactFlowEvent,
    now: DateTime<Utc>,
    opts: &LambdaOptions,
) -> BTreeMap<String, String> {
    let redemption = match tokio::time::timeout(opts.budget, redeem(store, event, now)).await {
        Ok(r) => r,
        Err(_) => Redemption::Failed(FailReason::Timeout),
    };
    let label = match &redemption {
        Redemption::Found(..) => "redeemed",
        Redemption::Failed(FailReason::ExpiredToken) => "expired",
        Redemption::Failed(_) => "redeem_failed",
    };
    metrics::counter!(crate::telemetry::names::HANDOVER_TOKENS, "event" => label).increment(1);
    match &redemption {
        Redemption::Found(by, p) => tracing::info!(
            call_id = %p.call_id,
            matched_by = by.as_str(),
            contact_id = event.details.contact_data.contact_id.as_deref().unwrap_or(""),
            "handover redeemed"
        ),
        Redemption::Failed(r) => tracing::info!(
            reason = r.as_str(),
            contact_id = event
                .details
                .contact_data
                .contact_id
                .as_deref()
                .unwrap_or(""),
            "handover not redeemed"
        ),
    }
    attributes(&redemption, event, opts)
}

/// The payload of a `connect_refer` hand-off of `record`: `summary` from
/// [`conversation_summary`], `reason` = the trigger and its detail, the HubSpot ids from `crm`
/// (when the CRM work finished in time), intent, priority and queue from the profile.
pub fn handover_payload(
    record: &CallRecord,
    settings: &ConnectHandover,
    summary: String,
    reason: String,
    crm: Option<&CrmRecord>,
    now: DateTime<Utc>,
) -> HandoverPayload {
    HandoverPayload {
        call_id: record.call_id.clone(),
        caller_number: record.caller.clone(),
        hubspot_contact_id: crm.and_then(|c| c.contact_id.clone()),
        hubspot_ticket_id: crm.and_then(|c| c.ticket_id.clone()),
        summary,
        intent: settings.intent.clone(),
        priority: settings.priority.clone(),
        escalation_reason: reason,
        route_to_queue: settings.queue.clone(),
        created_at: now,
    }
}

/// [`handle`] for a raw event: an event that does not parse as a [`ContactFlowEvent`] answers
/// `success=false`, `reason=bad_event` (a flat map, so the flow takes its Success branch and can
/// check `success`, rather than the Error branch of a failed invocation).
pub async fn handle_json(
    store: &dyn Store,
    event: &Value,
    now: DateTime<Utc>,
    opts: &LambdaOptions,
) -> BTreeMap<String, String> {
    match ContactFlowEvent::deserialize(event) {
        Ok(ev) => handle(store, &ev, now, opts).await,
        Err(e) => {
            tracing::warn!(error = %e, "Connect event not understood");
            metrics::counter!(crate::telemetry::names::HANDOVER_TOKENS, "event" => "redeem_failed")
                .increment(1);
            attributes(
                &Redemption::Failed(FailReason::BadEvent),
                &ContactFlowEvent::default(),
                opts,
            )
        }
    }
}

impl LambdaOptions {
    /// From `VOXMACHINA_CONNECT_BUDGET_MS` (1..=7500) and
    /// `VOXMACHINA_CONNECT_SUMMARY_MAX_BYTES` (at least 16) in `env`; unset keeps the default.
    ///
    /// # Errors
    /// A message naming the variable when a value is out of range or not a number.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut opts = Self::default();
        for (k, v) in env {
            let n = || {
                v.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("{k} = {v:?}: {e}"))
            };
            match k.as_str() {
                "VOXMACHINA_CONNECT_BUDGET_MS" => match n()? {
                    ms @ 1..=7_500 => opts.budget = Duration::from_millis(ms),
                    ms => return Err(format!("{k} = {ms}: must be 1..=7500 (Connect allows 8 s)")),
                },
                "VOXMACHINA_CONNECT_SUMMARY_MAX_BYTES" => match n()? {
                    b if b >= 16 => opts.summary_max_bytes = b as usize,
                    b => return Err(format!("{k} = {b}: must be at least 16")),
                },
                _ => {}
            }
        }
        Ok(opts)
    }
}

/// The store the Lambda redeems from: DynamoDB tables of `[store.dynamodb]` (without the
/// controller's start-up table check, so the function needs only `GetItem`, `DeleteItem` and
/// `Query` on the tokens table and its index), or the SQLite file for local runs.
///
/// # Errors
/// [`StoreError`] as [`crate::store::open`].
pub async fn open_store(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if config.store.backend == "dynamodb" {
        let store = crate::store::DynamoStore::connect(&config.store.dynamodb).await?;
        Ok(std::sync::Arc::new(store))
    } else {
        crate::store::open(config).await
    }
}

/// The flat response map for `redemption`. Success: every key of
/// [`ATTRIBUTE_KEYS`], absent values as `""`. Failure: `success=false` and `reason`.
/// `summary` is cut (at a character boundary, ending in `…`) to `opts.summary_max_bytes` and to
/// what the event's existing attributes leave of [`MAX_ATTRIBUTE_BYTES`] minus
/// [`ATTRIBUTE_HEADROOM`].
pub fn attributes(
    redemption: &Redemption,
    event: &ContactFlowEvent,
    opts: &LambdaOptions,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let p = match redemption {
        Redemption::Failed(reason) => {
            out.insert("success".into(), "false".into());
            out.insert("reason".into(), reason.as_str().into());
            return out;
        }
        Redemption::Found(by, p) => {
            out.insert("success".into(), "true".into());
            out.insert("matched_by".into(), by.as_str().into());
            p
        }
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    out.insert("conversation_id".into(), p.call_id.clone());
    out.insert("caller_phone".into(), opt(&p.caller_number));
    out.insert("hubspot_contact_id".into(), opt(&p.hubspot_contact_id));
    out.insert("hubspot_ticket_id".into(), opt(&p.hubspot_ticket_id));
    out.insert(
        "intent".into(),
        routing_value(p.intent.as_deref().unwrap_or("")),
    );
    out.insert(
        "priority".into(),
        routing_value(p.priority.as_deref().unwrap_or("")),
    );
    out.insert(
        "route_to_queue".into(),
        routing_value(p.route_to_queue.as_deref().unwrap_or("")),
    );
    out.insert(
        "escalation_reason".into(),
        truncate_bytes(&p.escalation_reason, 500),
    );
    let existing: usize = event
        .details
        .contact_data
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or_else(|| v.to_string().len(), str::len))
        .sum();
    let used: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + "summary".len();
    let room = MAX_ATTRIBUTE_BYTES
        .saturating_sub(ATTRIBUTE_HEADROOM)
        .saturating_sub(existing)
        .saturating_sub(used);
    out.insert(
        "summary".into(),
        truncate_bytes(&p.summary, opts.summary_max_bytes.min(room)),
    );
    out
}

/// `s` with every character outside ASCII letters, digits, `-` and `_` replaced by `_`, at most
/// 64 bytes: safe to route on in a contact flow.
pub fn routing_value(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// At most `max` UTF-8 bytes of `s`, cut at a character boundary; a cut string ends in `…`
/// (counted in `max`). `max` below 4 gives `""` for any string that does not fit.
pub fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const ELLIPSIS: &str = "…";
    if max < ELLIPSIS.len() {
        return String::new();
    }
    let mut end = max - ELLIPSIS.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end])
}

/// A summary of the conversation so far, for the human agent: the caller's request (their first
/// line of three or more words), the escalation reason, then the most recent lines (`Caller:` /
/// `Agent:`), oldest first, as many as fit in `max_chars` characters.
pub fn conversation_summary(
    transcript: &[TranscriptLine],
    reason: &str,
    max_chars: usize,
) -> String {
    let caller_lines: Vec<&str> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| l.text.trim())
        .filter(|t| !t.is_empty())
        .collect();
    let request = caller_lines
        .iter()
        .find(|t| t.split_whitespace().count() >= 3)
        .or(caller_lines.first());
    let mut head = match request {
        Some(r) => format!("Caller request: {}", clip_chars(r, 300)),
        None => "Caller request: nothing transcribed.".to_string(),
    };
    if !reason.trim().is_empty() {
        head.push_str(&format!(" Escalated: {}.", clip_chars(reason.trim(), 200)));
    }
    let mut recent: Vec<String> = Vec::new();
    let mut used = head.chars().count();
    for line in transcript.iter().rev() {
        let text = line.text.trim();
        if text.is_empty() {
            continue;
        }
        let who = match line.speaker {
            Speaker::Caller => "Caller",
            Speaker::Agent => "Agent",
        };
        let entry = format!("{who}: {}", clip_chars(text, 300));
        let cost = entry.chars().count() + 1;
        if used + cost > max_chars {
            break;
        }
        used += cost;
        recent.push(entry);
    }
    recent.reverse();
    let mut out = head;
    for r in recent {
        out.push('\n');
        out.push_str(&r);
    }
    clip_chars(&out, max_chars)
}

fn clip_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// `1234567890` → `1 2 3 4 5, 6 7 8 9 0`: digits the agent can read out one by one, in two
/// groups.
pub fn speakable_code(token: &str) -> String {
    let digits: Vec<String> = token.chars().map(|c| c.to_string()).collect();
    let mid = digits.len() / 2;
    if digits.len() < 6 {
        return digits.join(" ");
    }
    format!("{}, {}", digits[..mid].join(" "), digits[mid..].join(" "))
}

/// The session message that tells the model the handover code, so it can read it out when the
/// caller asks (`conversation.item.create` with a system message, OpenAPI `RealtimeClientEvent*`).
pub fn code_instruction(token: &str) -> String {
    format!(
        "Handover reference code for the contact centre: {} . If the caller asks for a code, or \
         the contact centre asks them for one, read it out digit by digit. Never change it.",
        speakable_code(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_normalised() {
        assert_eq!(
            normalize_token(" 0123456789# ").as_deref(),
            Some("0123456789")
        );
        assert_eq!(
            normalize_token("01234-56789").as_deref(),
            Some("0123456789")
        );
        assert_eq!(normalize_token("Timeout"), None);
        assert_eq!(normalize_token("123"), None);
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate_bytes("abc", 3), "abc");
        assert_eq!(truncate_bytes("abcdef", 5), "ab…");
        // 'é' is 2 bytes: "é" * 3 = 6 bytes; cut to 5 → room 2 for text → "é…".
        assert_eq!(truncate_bytes("ééé", 5), "é…");
        assert_eq!(truncate_bytes("abcdef", 2), "");
    }

    #[test]
    fn routing_values_are_flow_safe() {
        assert_eq!(routing_value("billing queue+1"), "billing_queue_1");
        assert_eq!(routing_value(" high "), "high");
    }

    #[test]
    fn speakable_code_groups_digits() {
        assert_eq!(speakable_code("0123456789"), "0 1 2 3 4, 5 6 7 8 9");
    }
}
