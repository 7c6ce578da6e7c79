//! Amazon Connect hand-over end to end: the `connect_refer` escalation action (token minted,
//! code given to the model, REFER to the Connect number, fallback), HubSpot on escalation
//! against the fake HubSpot (exact requests, 429, failures that never block the hand-off), and
//! the contact flow's Lambda handler on the documented `ContactFlowEvent` shape, against SQLite
//! and (when `VOXMACHINA_TEST_DYNAMODB_ENDPOINT` is set) DynamoDB.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::fake_hubspot::{self, FakeHubSpot};
use support::harness::{API_KEY, Harness, test_config, test_secrets};
use support::store_conformance::{at_ms, handover};
use voxmachina::app;
use voxmachina::calls::record::{CallRecord, CallState};
use voxmachina::config::{Config, Secret, Secrets};
use voxmachina::escalation::connect::{self, ATTRIBUTE_KEYS, LambdaOptions, MAX_ATTRIBUTE_BYTES};
use voxmachina::store::{HandoverPayload, SqliteStore, Store};
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, ReferFault, Script};

const CALLER: &str = "+14155550123";
const CONNECT_DID: &str = "tel:+18885550123";
const FALLBACK: &str = "sip:queue@pbx.example.com";
const PLAIN_LINE: &str = "+18005550155";

const CONNECT_PROFILE: &str = r#"
default = true
greeting = "Greet the caller."

[escalation]
action = "connect_refer"
target = "tel:+18885550123"
handoff_line = "Connecting you to billing now."

[escalation.connect]
queue = "billing"
intent = "billing"
priority = "high"
token_ttl_secs = 300

[escalation.fallback]
target = "sip:queue@pbx.example.com"
"#;

const PLAIN_PROFILE: &str = r#"
greeting = "Greet the caller."
[match]
dialed = ["+18005550155"]
[escalation]
target = "tel:+14155550100"
"#;

struct Setup {
    h: Harness,
}

async fn start_with(adjust: impl FnOnce(&mut Config), secrets: Secrets) -> Setup {
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    for (name, text) in [("connect", CONNECT_PROFILE), ("plain", PLAIN_PROFILE)] {
        std::fs::write(prompts.join(format!("{name}.toml")), text).unwrap();
        std::fs::write(
            prompts.join(format!("{name}.md")),
            "You are the test agent.\n",
        )
        .unwrap();
    }
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.after_call.summary_timeout_ms = 300;
    adjust(&mut config);
    let server = app::start(config, secrets)
        .await
        .expect("controller starts");
    Setup {
        h: Harness {
            emulator,
            server,
            dir,
            http: reqwest::Client::new(),
        },
    }
}

/// A controller whose HubSpot client points at `hubspot` (when given).
async fn start(hubspot: Option<&FakeHubSpot>) -> Setup {
    let mut secrets = test_secrets();
    let base = hubspot.map(|h| h.base_url.clone());
    if base.is_some() {
        secrets.hubspot_token = Some(Secret::new(fake_hubspot::TOKEN));
    }
    start_with(
        |c| {
            if let Some(base) = base {
                c.hubspot.enabled = true;
                c.hubspot.base_url = base;
                c.hubspot.escalation_wait_ms = 5_000;
            }
        },
        secrets,
    )
    .await
}

/// The caller explains, then the model calls `transfer_to_human`.
fn transfer_script(to: Option<&str>) -> Script {
    let mut s = Script::new()
        .from(format!(
            "\"Lin Okafor\" <sip:{CALLER}@pstn.example.com>;tag=t1"
        ))
        .auto_reply(false)
        .greeting_wait_ms(300)
        .turn_gap_ms(20)
        .tool_timeout_ms(3_000);
    if let Some(to) = to {
        s = s.to(format!("<sip:{to}@sip.api.openai.com>"));
    }
    // No escalation phrase: the tool call is the trigger.
    s.caller("I was charged twice for my order last week.")
        .wait_ms(100)
        .tool("transfer_to_human", json!({"reason": "billing dispute"}))
}

impl Setup {
    async fn call(&self, script: Script) -> (CallView, CallRecord) {
        let (_, view, record) = self.h.call_to_end(script).await;
        (view, record)
    }

    async fn metrics(&self) -> String {
        self.h
            .http
            .get(format!("{}/metrics", self.h.server.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The documented `ContactFlowEvent` with the given caller and `token` parameter.
fn flow_event(caller: Option<&str>, token: Option<&str>) -> Value {
    let mut params = serde_json::Map::new();
    if let Some(t) = token {
        params.insert("token".into(), json!(t));
    }
    json!({
        "Details": {
            "ContactData": {
                "Attributes": { "exampleAttributeKey1": "exampleAttributeValue1" },
                "Channel": "VOICE",
                "ContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
                "CustomerEndpoint": caller.map(|c| json!({ "Address": c, "Type": "TELEPHONE_NUMBER" })),
                "CustomerId": "someCustomerId",
                "Description": "someDescription",
                "InitialContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
                "InitiationMethod": "INBOUND",
                "InstanceARN": "arn:aws:connect:aws-region:1234567890:instance/c8c0e68d-2200-4265-82c0-XXXXXXXXXX",
                "LanguageCode": "en-US",
                "MediaStreams": { "Customer": { "Audio": { "StreamARN": "x", "StartTimestamp": "1571360125131", "StopTimestamp": "1571360126131", "StartFragmentNumber": "100" } } },
                "Name": "ContactFlowEvent",
                "PreviousContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
                "Queue": null,
                "References": { "key1": { "Type": "url", "Value": "urlvalue" } },
                "SystemEndpoint": { "Address": "+18885550123", "Type": "TELEPHONE_NUMBER" }
            },
            "Parameters": params
        },
        "Name": "ContactFlowEvent"
    })
}

async fn lambda(store: &dyn Store, event: &Value, now: DateTime<Utc>) -> BTreeMap<String, String> {
    connect::handle_json(store, event, now, &LambdaOptions::default()).await
}

// ---------------------------------------------------------------------------------------------
// The escalation action

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refer_mints_a_token_tells_the_model_and_refers_to_connect() {
    let hubspot = FakeHubSpot::start().await;
    let contact = hubspot.insert_contact(json!({ "phone": CALLER }));
    let s = start(Some(&hubspot)).await;
    let (view, record) = s.call(transfer_script(None)).await;

    assert_eq!(record.state, CallState::Transferred);
    assert_eq!(view.refer_targets, vec![CONNECT_DID.to_string()]);
    let esc = record.escalation.as_ref().expect("escalation");
    assert_eq!(esc.action, "connect_refer");
    assert_eq!(esc.outcome, "transferred");
    let handover = esc.handover.as_ref().expect("handover");
    let token = handover.token.clone().expect("token minted");
    assert!(voxmachina::store::tokens::is_token(&token), "{token}");
    assert!(handover.expires_at.unwrap() > esc.at + chrono::Duration::seconds(290));
    let crm = esc.crm.as_ref().expect("crm");
    assert_eq!(crm.contact_id.as_deref(), Some(contact.as_str()));
    assert!(crm.ticket_id.is_some() && crm.error.is_none(), "{crm:?}");

    // The model got the code in the tool output and as a system message, before the REFER.
    let outputs: Vec<Value> = view
        .function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).unwrap())
        .collect();
    assert_eq!(outputs[0]["status"], "transferring");
    assert_eq!(outputs[0]["handover_code"], token.as_str());
    let spoken = connect::speakable_code(&token);
    assert!(
        view.client_events
            .iter()
            .any(|e| e["type"] == "conversation.item.create"
                && e["item"]["role"] == "system"
                && e["item"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&spoken))),
        "{:#?}",
        view.client_events
    );
    // read_code (default): the handoff line ends with the code.
    assert!(
        view.client_events
            .iter()
            .any(|e| e["type"] == "response.create"
                && e["response"]["instructions"]
                    .as_str()
                    .is_some_and(|i| i.contains("Connecting you to billing now.")
                        && i.contains(&format!("reference code, it is {spoken}")))),
        "{:#?}",
        view.client_events
    );

    // Exactly one search, no contact created, one ticket associated with type 16.
    let reqs = hubspot.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/crm/v3/objects/contacts/search", "/crm/v3/objects/tickets"]
    );
    assert_eq!(
        reqs[0].json,
        json!({
            "filterGroups": [
                { "filters": [ { "propertyName": "phone", "operator": "EQ", "value": CALLER } ] },
                { "filters": [ { "propertyName": "mobilephone", "operator": "EQ", "value": CALLER } ] }
            ],
            "properties": ["firstname", "lastname", "email", "phone", "mobilephone"],
            "limit": 1
        })
    );
    assert_eq!(
        reqs[1].header("authorization"),
        Some(format!("Bearer {}", fake_hubspot::TOKEN).as_str())
    );
    let ticket = &reqs[1].json;
    assert_eq!(
        ticket["properties"]["subject"],
        format!("Escalated call from {CALLER}")
    );
    assert_eq!(ticket["properties"]["hs_pipeline"], "0");
    assert_eq!(ticket["properties"]["hs_pipeline_stage"], "1");
    let content = ticket["properties"]["content"].as_str().unwrap();
    assert!(
        content.contains("Caller request: I was charged twice")
            && content.contains("tool: billing dispute")
            && content.contains(&record.call_id),
        "{content}"
    );
    assert_eq!(
        ticket["associations"],
        json!([{ "to": { "id": contact }, "types": [ { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 16 } ] }])
    );

    // The token's payload, as the Lambda sees it: found by the caller's number.
    let store = s.h.store();
    let out = lambda(store.as_ref(), &flow_event(Some(CALLER), None), Utc::now()).await;
    assert_eq!(out["success"], "true", "{out:?}");
    assert_eq!(out["matched_by"], "caller_number");
    assert_eq!(out["conversation_id"], record.call_id);
    assert_eq!(out["caller_phone"], CALLER);
    assert_eq!(out["hubspot_contact_id"], contact);
    assert_eq!(out["hubspot_ticket_id"], crm.ticket_id.clone().unwrap());
    assert_eq!(out["intent"], "billing");
    assert_eq!(out["priority"], "high");
    assert_eq!(out["route_to_queue"], "billing");
    assert_eq!(out["escalation_reason"], "tool: billing dispute");
    assert!(out["summary"].starts_with("Caller request: I was charged twice"));
    // Redeemed: the code no longer works.
    let again = lambda(store.as_ref(), &flow_event(None, Some(&token)), Utc::now()).await;
    assert_eq!(again["success"], "false");
    assert_eq!(again["reason"], "invalid_token");

    let metrics = s.metrics().await;
    for needle in [
        r#"voxmachina_handover_tokens_total{event="minted"}"#,
        r#"voxmachina_handover_tokens_total{event="redeemed"}"#,
        r#"voxmachina_handover_tokens_total{event="redeem_failed"}"#,
        r#"voxmachina_handovers_total{action="connect_refer",outcome="transferred"}"#,
        r#"voxmachina_escalation_crm_total{outcome="ok"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refer_falls_back_when_the_connect_refer_fails() {
    let s = start(None).await;
    let script =
        transfer_script(None).refer_faults([ReferFault::Status(500), ReferFault::Transfer]);
    let (view, record) = s.call(script).await;
    assert_eq!(
        view.refer_targets,
        vec![CONNECT_DID.to_string(), FALLBACK.to_string()]
    );
    assert_eq!(record.state, CallState::Transferred);
    let esc = record.escalation.unwrap();
    assert_eq!(esc.target, FALLBACK);
    assert_eq!(esc.outcome, "transferred");
    assert!(esc.crm.is_none(), "HubSpot is not configured");
    // The token was minted before the first REFER; no HubSpot ids without HubSpot.
    let token = esc.handover.unwrap().token.unwrap();
    let payload =
        s.h.store()
            .peek_token(&token, Utc::now())
            .await
            .unwrap()
            .expect("live token");
    assert_eq!(payload.hubspot_contact_id, None);
    assert_eq!(payload.caller_number.as_deref(), Some(CALLER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_429_is_retried_and_a_failure_never_blocks_the_handover() {
    // A 10-second-window 429 with Retry-After: 0 is retried; the ticket is created.
    let hubspot = FakeHubSpot::start().await;
    hubspot.rate_limit_next(1, Some("0"), "TEN_SECONDLY_ROLLING");
    let s = start(Some(&hubspot)).await;
    let (_, record) = s.call(transfer_script(None)).await;
    let crm = record.escalation.as_ref().unwrap().crm.clone().unwrap();
    assert!(crm.ticket_id.is_some(), "{crm:?}");
    let paths: Vec<String> = hubspot.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/contacts",
            "/crm/v3/objects/tickets"
        ],
        "429 retried, then the contact created (none had this phone)"
    );
    assert_eq!(
        hubspot.contacts().values().next().unwrap()["phone"],
        CALLER,
        "the contact is created with the caller's number"
    );

    // A daily-limit 429 is not retried: the hand-off goes on and the failure is recorded.
    let hubspot = FakeHubSpot::start().await;
    hubspot.rate_limit_next(1, None, "DAILY");
    let s = start(Some(&hubspot)).await;
    let (view, record) = s.call(transfer_script(None)).await;
    assert_eq!(record.state, CallState::Transferred);
    assert_eq!(view.refer_targets, vec![CONNECT_DID.to_string()]);
    let esc = record.escalation.unwrap();
    let crm = esc.crm.unwrap();
    assert_eq!((crm.contact_id, crm.ticket_id), (None, None));
    assert!(
        crm.error.as_deref().unwrap().contains("rate limit DAILY"),
        "{:?}",
        crm.error
    );
    assert_eq!(hubspot.requests().len(), 1);
    let token = esc.handover.unwrap().token.expect("token minted anyway");
    let payload =
        s.h.store()
            .peek_token(&token, Utc::now())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(payload.hubspot_ticket_id, None);
    assert!(
        s.metrics()
            .await
            .contains(r#"voxmachina_escalation_crm_total{outcome="failed"}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_refer_opens_the_hubspot_ticket_beside_the_transfer() {
    let hubspot = FakeHubSpot::start().await;
    let contact = hubspot.insert_contact(json!({ "mobilephone": CALLER }));
    let s = start(Some(&hubspot)).await;
    let (view, record) = s.call(transfer_script(Some(PLAIN_LINE))).await;
    assert_eq!(record.profile, "plain");
    assert_eq!(view.refer_targets, vec!["tel:+14155550100".to_string()]);
    let esc = record.escalation.unwrap();
    assert_eq!(esc.action, "refer");
    assert!(esc.handover.is_none());
    let crm = esc.crm.expect("CRM result recorded by the end of the call");
    assert_eq!(crm.contact_id.as_deref(), Some(contact.as_str()));
    let tickets = hubspot.tickets();
    assert_eq!(tickets.len(), 1);
    assert_eq!(crm.ticket_id.as_deref(), Some(tickets[0].id.as_str()));
    assert_eq!(
        tickets[0].associations,
        vec![(contact, "HUBSPOT_DEFINED".to_string(), 16)]
    );
    // The model's tool output has no code on a plain REFER.
    assert!(!view.function_outputs[0].1.contains("handover_code"));
}

#[test]
fn profiles_validate_the_connect_action() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        std::fs::write(dir.path().join(format!("{name}.md")), "Hi.\n").unwrap();
    };
    write("default", "default = true\n");
    write(
        "sipconnect",
        "[match]\ndialed = [\"+18005550101\"]\n[escalation]\naction = \"connect_refer\"\ntarget = \"sip:a@b.example.com\"\n",
    );
    write(
        "stray",
        "[match]\ndialed = [\"+18005550102\"]\n[escalation]\ntarget = \"tel:+14155550100\"\n[escalation.connect]\nqueue = \"q\"\n",
    );
    write(
        "labels",
        "[match]\ndialed = [\"+18005550103\"]\n[escalation]\naction = \"connect_refer\"\ntarget = \"tel:+14155550100\"\n[escalation.connect]\nqueue = \"billing queue\"\ntoken_ttl_secs = 5\n",
    );
    write(
        "unknown",
        "[match]\ndialed = [\"+18005550104\"]\n[escalation]\naction = \"dial\"\ntarget = \"tel:+14155550100\"\n",
    );
    let err = voxmachina::prompts::ProfileSet::load(dir.path())
        .unwrap_err()
        .to_string();
    for needle in [
        "sipconnect.toml:4: escalation: action \"connect_refer\" needs a tel:+E164 target",
        "escalation.connect is only used with action = \"connect_refer\"",
        "labels.toml:7: escalation.connect.queue \"billing queue\"",
        "labels.toml:8: escalation.connect.token_ttl_secs 5 must be 30..=86400",
        "unknown.toml:4: escalation.action \"dial\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// The Lambda handler on each store

fn t0() -> DateTime<Utc> {
    at_ms(1_767_225_600_000) // 2026-01-01T00:00:00Z
}

fn full(call_id: &str, caller: &str, created_at: DateTime<Utc>) -> HandoverPayload {
    HandoverPayload {
        call_id: call_id.into(),
        caller_number: Some(caller.into()),
        hubspot_contact_id: Some("5101".into()),
        hubspot_ticket_id: Some("90017".into()),
        summary: "Caller request: resend the March invoice.".into(),
        intent: Some("billing question".into()),
        priority: Some("high".into()),
        escalation_reason: "caller_phrase: a person".into(),
        route_to_queue: Some("billing".into()),
        created_at,
    }
}

/// A caller number unique to this run (stores are shared across tests on DynamoDB).
fn number(n: u32) -> String {
    format!("+1415{:03}{:04}", std::process::id() % 1000, n)
}

async fn lambda_cases(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = t0();
    let ttl = chrono::Duration::minutes(10);

    // 1. The keyed-in token (with the # terminator), caller unknown to Connect: every key.
    let caller = number(1);
    let token = s
        .mint_token(&full("rtc_lambda_1", &caller, t), ttl, t)
        .await
        .unwrap();
    let out = lambda(s, &flow_event(None, Some(&format!("{token}#"))), t).await;
    let keys: Vec<&str> = out.keys().map(String::as_str).collect();
    let mut want = ATTRIBUTE_KEYS.to_vec();
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(out["success"], "true");
    assert_eq!(out["matched_by"], "token");
    assert_eq!(out["conversation_id"], "rtc_lambda_1");
    assert_eq!(out["caller_phone"], caller);
    assert_eq!(out["hubspot_contact_id"], "5101");
    assert_eq!(out["hubspot_ticket_id"], "90017");
    assert_eq!(
        out["intent"], "billing_question",
        "routing values are flow-safe"
    );
    assert_eq!(out["priority"], "high");
    assert_eq!(out["route_to_queue"], "billing");
    assert_eq!(out["escalation_reason"], "caller_phrase: a person");
    assert_eq!(out["summary"], "Caller request: resend the March invoice.");
    // Single use.
    let out = lambda(s, &flow_event(None, Some(&token)), t).await;
    assert_eq!(
        (out["success"].as_str(), out["reason"].as_str()),
        ("false", "invalid_token")
    );
    assert_eq!(out.len(), 2);

    // 2. By the caller's number: the most recent live handover, redeemed once.
    let caller = number(2);
    let older = s
        .mint_token(&full("rtc_lambda_old", &caller, t), ttl, t)
        .await
        .unwrap();
    let t2 = t + chrono::Duration::seconds(5);
    s.mint_token(&full("rtc_lambda_new", &caller, t2), ttl, t2)
        .await
        .unwrap();
    // Connect's "Timeout" (no digits) with the number: the number decides.
    let out = lambda(s, &flow_event(Some(&caller), Some("Timeout")), t2).await;
    assert_eq!(out["matched_by"], "caller_number");
    assert_eq!(out["conversation_id"], "rtc_lambda_new");
    let out = lambda(s, &flow_event(Some(&caller), None), t2).await;
    assert_eq!(out["conversation_id"], "rtc_lambda_old");
    let out = lambda(s, &flow_event(Some(&caller), None), t2).await;
    assert_eq!(
        (out["success"].as_str(), out["reason"].as_str()),
        ("false", "not_found")
    );
    assert_eq!(s.peek_token(&older, t2).await.unwrap(), None);

    // 3. A mistyped token falls back to the number.
    let caller = number(3);
    s.mint_token(&full("rtc_lambda_3", &caller, t), ttl, t)
        .await
        .unwrap();
    let out = lambda(s, &flow_event(Some(&caller), Some("0000000000")), t).await;
    assert_eq!(out["success"], "true");
    assert_eq!(out["matched_by"], "caller_number");

    // 4. Expired: refused at and after expiry, and told apart from an unknown token.
    let caller = number(4);
    let token = s
        .mint_token(&full("rtc_lambda_4", &caller, t), ttl, t)
        .await
        .unwrap();
    let out = lambda(s, &flow_event(Some(&caller), Some(&token)), t + ttl).await;
    assert_eq!(
        (out["success"].as_str(), out["reason"].as_str()),
        ("false", "expired_token")
    );

    // 5. Nothing usable; a payload without optional fields; a bad event.
    let out = lambda(s, &flow_event(None, Some("Timeout")), t).await;
    assert_eq!(out["reason"], "no_input");
    let mut endpoint_null = flow_event(None, None);
    endpoint_null["Details"]["ContactData"]["CustomerEndpoint"] = Value::Null;
    endpoint_null["Details"]["Parameters"] = Value::Null;
    assert_eq!(lambda(s, &endpoint_null, t).await["reason"], "no_input");
    let mut bare = handover("rtc_lambda_5", None, t);
    bare.hubspot_ticket_id = None;
    let token = s.mint_token(&bare, ttl, t).await.unwrap();
    let out = lambda(s, &flow_event(None, Some(&token)), t).await;
    assert_eq!(out["success"], "true");
    assert_eq!(out["caller_phone"], "");
    assert_eq!(out["hubspot_ticket_id"], "");
    assert_eq!(
        lambda(s, &json!(["not", "an", "event"]), t).await["reason"],
        "bad_event"
    );

    // 6. Size limits: a huge summary is cut so the contact's attributes stay under 32 KB.
    let mut big = full("rtc_lambda_6", &number(6), t);
    big.summary = "é".repeat(30_000);
    let token = s.mint_token(&big, ttl, t).await.unwrap();
    let mut event = flow_event(None, Some(&token));
    event["Details"]["ContactData"]["Attributes"]["notes"] = json!("x".repeat(20_000));
    let out = lambda(s, &event, t).await;
    assert_eq!(out["success"], "true");
    let summary = &out["summary"];
    assert!(
        summary.ends_with('…') && summary.len() <= 2_000,
        "{}",
        summary.len()
    );
    let response_bytes: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(response_bytes + 20_000 + "notes".len() < MAX_ATTRIBUTE_BYTES);
    assert!(serde_json::to_string(&out).unwrap().len() < 32 * 1024);
    // With little room left, the summary gets what is left.
    let token = s.mint_token(&big, ttl, t).await.unwrap();
    let mut event = flow_event(None, Some(&token));
    event["Details"]["ContactData"]["Attributes"]["notes"] = json!("x".repeat(31_000));
    let out = lambda(s, &event, t).await;
    let total: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + 31_005;
    assert!(total <= MAX_ATTRIBUTE_BYTES, "{total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("lambda.db")).unwrap();
    lambda_cases(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_on_dynamodb() {
    let Some((store, _tables)) = support::dynamodb::fresh_store().await else {
        eprintln!("skipped: {} is not set", support::dynamodb::ENDPOINT_ENV);
        return;
    };
    lambda_cases(store).await;
}

/// A DynamoDB endpoint that accepts connections and never answers: the budget answers
/// `timeout` rather than letting Connect's 8 s limit send the contact down the Error branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_answers_timeout_within_its_budget() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let store = voxmachina::store::DynamoStore::new(
        voxmachina::store::DynamoStore::local_client(&format!("http://{addr}"), "us-east-1"),
        "vmtimeout",
    );
    let opts = LambdaOptions {
        budget: Duration::from_millis(300),
        ..LambdaOptions::default()
    };
    let out = connect::handle_json(
        &store,
        &flow_event(Some(CALLER), Some("0123456789")),
        Utc::now(),
        &opts,
    )
    .await;
    assert_eq!(
        (out["success"].as_str(), out["reason"].as_str()),
        ("false", "timeout")
    );
    hold.abort();
}

#[test]
fn lambda_options_from_env() {
    let env = |pairs: &[(&str, &str)]| {
        LambdaOptions::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    assert_eq!(env(&[]).unwrap(), LambdaOptions::default());
    let o = env(&[
        ("VOXMACHINA_CONNECT_BUDGET_MS", "2500"),
        ("VOXMACHINA_CONNECT_SUMMARY_MAX_BYTES", "512"),
    ])
    .unwrap();
    assert_eq!(o.budget, Duration::from_millis(2500));
    assert_eq!(o.summary_max_bytes, 512);
    assert!(
        env(&[("VOXMACHINA_CONNECT_BUDGET_MS", "9000")])
            .unwrap_err()
            .contains("8 s")
    );
    assert!(env(&[("VOXMACHINA_CONNECT_SUMMARY_MAX_BYTES", "x")]).is_err());
}
