//! The shipped seed profiles (`prompts/`) run their demo scripts (`scripts/`) to the expected
//! outcome through the real controller, the OpenAI emulator, a local tool server (the shop API),
//! and fake Twilio (SMS follow-ups). The only change to the shipped profiles is
//! `tools_base_url`, pointed at the local tool server.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use support::fake_twilio::{self, FakeTwilio};
use support::harness::{API_KEY, Harness, test_config, test_secrets, webhook_secret};
use support::tool_server::ToolServer;
use voxmachina::app;
use voxmachina::calls::record::{Api, CallRecord, CallState, CallSummary, Speaker};
use voxmachina::config::ModelPrice;
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, Script};

const SHOP_TOKEN: &str = "shopkart-test-token-77aa";
const SMS_FROM: &str = "+18005550000";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo(name: &str) -> Script {
    Script::load(root().join("scripts").join(name)).expect("demo script loads")
}

/// Copies the shipped profiles, aiming `tools_base_url` at `base` (allowed as a loopback host).
fn copy_prompts(dest: &Path, base: &str) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(root().join("prompts")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_some_and(|e| e == "toml") {
            text = text
                .lines()
                .map(|l| {
                    if l.starts_with("tools_base_url = ") {
                        // The tool server runs on loopback, which tools may reach only when the
                        // profile allows it by name.
                        format!(
                            "tools_base_url = \"{base}\"\ntools_allow_private_hosts = [\"127.0.0.1\"]"
                        )
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        std::fs::write(dest.join(path.file_name().unwrap()), text).unwrap();
    }
}

struct Setup {
    h: Harness,
    tools: ToolServer,
    twilio: FakeTwilio,
}

async fn start() -> Setup {
    let tools = ToolServer::start().await;
    let twilio = FakeTwilio::start().await;
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    copy_prompts(&prompts, &tools.base_url());
    let secrets_dir = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    std::fs::write(secrets_dir.join("shopkart_api_token"), SHOP_TOKEN).unwrap();
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.tools.secrets_dir = secrets_dir;
    config.after_call.summary_timeout_ms = 1_000;
    config.after_call.sms_opt_out_file = dir.path().join("sms_opt_out.txt");
    config.twilio.api_base_url = twilio.base_url.clone();
    config.twilio.account_sid = fake_twilio::ACCOUNT_SID.into();
    config.twilio.from_number = SMS_FROM.into();
    config.pricing.models.push(ModelPrice {
        model: "gpt-realtime-2.1".into(),
        audio_input: 32.0,
        cached_audio_input: Some(0.4),
        text_input: 4.0,
        cached_text_input: Some(0.4),
        audio_output: 64.0,
        text_output: 16.0,
    });
    let mut secrets = test_secrets();
    secrets.twilio_auth_token = Some(twilio.auth_token());
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
        tools,
        twilio,
    }
}

impl Setup {
    async fn run(&self, script: Script) -> (String, CallView, CallRecord) {
        let placed = self
            .h
            .emulator
            .place_call(&self.h.webhook_url(), &webhook_secret(), script)
            .await
            .unwrap();
        assert_eq!(placed.status, 200);
        let record = self
            .h
            .wait_record(&placed.call_id, Duration::from_secs(20), |r| {
                r.state.is_final()
            })
            .await;
        (
            placed.call_id.clone(),
            self.h.emulator.call(&placed.call_id).unwrap(),
            record,
        )
    }
}

fn outputs(view: &CallView) -> Vec<Value> {
    view.function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).unwrap())
        .collect()
}

/// The cost the controller must estimate for usage without token details: every input token
/// at the audio input price, every output token at the audio output price (32 and 64 per 1M).
fn expected_cost_micros(r: &CallRecord) -> u64 {
    r.usage.input_tokens * 32 + r.usage.output_tokens * 64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receptionist_answers_then_transfers() {
    let s = start().await;
    let (call_id, view, r) = s.run(demo("question_then_human.toml")).await;
    assert_eq!(r.profile, "default");
    assert_eq!(r.state, CallState::Transferred, "{r:#?}");
    assert_eq!(view.refer_targets, ["tel:+14155550100"]);
    let summary = r.after_call.summary.clone().expect("summary");
    assert_eq!(
        summary.source, "transcript",
        "a transfer leaves no time to ask the model"
    );
    assert_eq!(summary.intent, "Hi, what are your opening hours?");
    assert!(summary.outcome.contains("tel:+14155550100"), "{summary:?}");
    let cost = r.after_call.cost.clone().expect("cost estimate");
    assert_eq!(cost.model, "gpt-realtime-2.1");
    assert_eq!(cost.amount_micros, expected_cost_micros(&r));
    assert!(cost.amount_micros > 0);
    assert!(r.after_call.sms.is_none(), "the receptionist sends no SMS");
    let api: Value =
        s.h.admin(reqwest::Method::GET, &format!("/v1/calls/{call_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(api["call"]["after_call"]["summary"]["source"], "transcript");
    assert!(
        api["call"]["after_call"]["cost"]["amount_micros"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinglish_support_looks_up_the_order_and_stock_then_ends_with_a_summary_and_sms() {
    let s = start().await;
    let (call_id, view, r) = s.run(demo("hinglish_order_status.toml")).await;
    assert_eq!(r.profile, "hinglish-support");
    assert_eq!(
        (r.state, r.end_reason.as_deref()),
        (CallState::Ended, Some("end_call")),
        "{r:#?}"
    );

    // The session offers the profile's tools, with their schemas.
    let body = view.accept_body.clone().unwrap();
    let tools = body["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "transfer_to_human",
            "end_call",
            "lookup_order",
            "check_availability",
            "create_ticket",
            "lookup_call_history"
        ]
    );
    assert!(
        tools[0]["description"]
            .as_str()
            .unwrap()
            .contains("Hindi or English")
    );
    assert_eq!(
        tools[2]["parameters"]["properties"]["order_id"]["pattern"],
        "^SK-[0-9]{4,8}$"
    );

    // Both HTTP tools reached the shop API with the secret, and answered ok.
    let order = s.tools.seen_at("/v1/orders/SK-10423");
    assert_eq!(order.len(), 1);
    assert_eq!(
        order[0].headers["authorization"],
        format!("Bearer {SHOP_TOKEN}")
    );
    assert_eq!(order[0].headers["x-caller"], "+919812345678");
    let stock = s.tools.seen_at("/v1/availability");
    assert_eq!(stock.len(), 1);
    assert_eq!(
        stock[0].param("product").as_deref(),
        Some("boAt Airdopes 141")
    );
    assert_eq!(stock[0].param("pincode").as_deref(), Some("560001"));
    let out = outputs(&view);
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!(out[0]["status"], "shipped");
    assert!(out[0].get("warehouse_notes").is_none());
    assert_eq!(
        out[1],
        json!({"product": "boAt Airdopes 141", "in_stock": true, "delivery_days": 2, "price_inr": 1399})
    );
    assert_eq!(out[2], json!({"ok": true}), "end_call");
    assert_eq!(r.after_call.tools["lookup_order"]["ok"], 1);
    assert_eq!(r.after_call.tools["check_availability"]["ok"], 1);

    // The Hinglish conversation is in the transcript.
    let transcript = s.h.transcript(&call_id).await;
    assert!(
        transcript
            .iter()
            .any(|l| l.speaker == Speaker::Agent && l.text.contains("ship ho chuka hai"))
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.speaker == Speaker::Caller
                && l.text.contains("mera order abhi tak nahi aaya"))
    );

    // The model summarised the call through the sideband before the hang-up.
    assert_eq!(view.out_of_band_texts.len(), 1);
    let summary = r.after_call.summary.clone().expect("summary");
    assert_eq!(summary.source, "model");
    assert!(summary.intent.contains("SK-10423"), "{summary:?}");
    assert_eq!(summary.key_facts.len(), 3);
    let summary_request = view
        .client_events
        .iter()
        .find(|e| e["response"]["conversation"] == "none")
        .expect("summary request");
    assert_eq!(
        summary_request["response"]["output_modalities"],
        json!(["text"])
    );
    let hangup_at = s.h.event_kinds(&call_id).await;
    let pos = |k: &str| hangup_at.iter().position(|x| x == k).unwrap();
    assert!(
        pos("summary_received") < pos("hangup_sent"),
        "{hangup_at:?}"
    );

    // The SMS follow-up went out through Twilio: the profile's fixed text, nothing the caller
    // said nor the summary made of it.
    let sms = r.after_call.sms.clone().expect("sms");
    assert_eq!(sms.status, "sent", "{sms:?}");
    let messages = s.twilio.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, "+919812345678");
    assert_eq!(messages[0].from, SMS_FROM);
    assert_eq!(
        messages[0].body,
        "ShopKart: call ke liye dhanyavaad! Order ki jaankari ShopKart app mein dekhein. Reply STOP to opt out."
    );
    assert!(!messages[0].body.contains(&summary.outcome));
    assert_eq!(sms.sid.as_deref(), Some(messages[0].sid.as_str()));
    assert_eq!(
        r.after_call.cost.as_ref().unwrap().amount_micros,
        expected_cost_micros(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinglish_caller_who_opts_out_gets_no_sms_now_or_later() {
    let s = start().await;
    let mut script = demo("hinglish_order_status.toml");
    let last = script.turns.pop().unwrap();
    script = script
        .caller("Aur haan, mujhe SMS mat bhejo please.")
        .turn(last);
    let (_, _, r) = s.run(script).await;
    let sms = r.after_call.sms.clone().unwrap();
    assert_eq!(sms.status, "opted_out", "{sms:?}");
    let list = std::fs::read_to_string(s.h.dir.path().join("sms_opt_out.txt")).unwrap();
    assert_eq!(list.trim(), "+919812345678");

    // The next call from the same number: on the list.
    let (_, _, r2) = s.run(demo("hinglish_order_status.toml")).await;
    let sms2 = r2.after_call.sms.clone().unwrap();
    assert_eq!(sms2.status, "opted_out");
    assert_eq!(sms2.reason.as_deref(), Some("on the opt-out list"));
    assert!(s.twilio.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restaurant_concierge_books_and_stores_the_confirmation_number() {
    let s = start().await;
    let (_, view, r) = s.run(demo("restaurant_booking.toml")).await;
    assert_eq!(r.profile, "restaurant-concierge");
    assert_eq!(
        (r.state, r.end_reason.as_deref()),
        (CallState::Ended, Some("end_call"))
    );
    assert_eq!(
        r.after_call
            .extracted
            .get("confirmation_number")
            .map(String::as_str),
        Some("R7K2P9")
    );
    let summary = r.after_call.summary.clone().unwrap();
    assert_eq!(summary.source, "model");
    assert!(summary.outcome.contains("R7K2P9"));
    assert!(view.refer_targets.is_empty());
    assert!(r.after_call.sms.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_model_summary_falls_back_to_the_transcript() {
    let s = start().await;
    let mut script = demo("restaurant_booking.toml");
    script.agent.summary = None; // the emulated model answers prose, not JSON
    let (call_id, _, r) = s.run(script).await;
    let summary = r.after_call.summary.clone().unwrap();
    assert_eq!(summary.source, "transcript");
    assert_eq!(
        summary.intent,
        "Trattoria Roma, good evening. Yes we do, what can I do for you?"
    );
    assert!(summary.outcome.contains("ended the call"), "{summary:?}");
    assert!(
        summary
            .key_facts
            .contains(&"confirmation_number: R7K2P9".to_string()),
        "{summary:?}"
    );
    let kinds = s.h.event_kinds(&call_id).await;
    assert!(kinds.iter().any(|k| k == "summary_invalid"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_support_checks_history_then_transfers_to_amazon_connect() {
    let s = start().await;
    let mut old = CallRecord::new(
        "rtc_earlier_billing",
        Api::Realtime,
        "wh_earlier",
        Utc::now() - chrono::Duration::days(3),
    );
    old.caller = Some("+14155550188".into());
    old.profile = "connect-support".into();
    old.state = CallState::Ended;
    old.after_call.summary = Some(CallSummary {
        intent: "Double charge on the card".into(),
        outcome: "Ticket 4711 opened".into(),
        key_facts: vec![],
        source: "model".into(),
    });
    s.h.store().create_call(&old).await.unwrap();

    let (_, view, r) = s.run(demo("connect_escalation.toml")).await;
    assert_eq!(r.profile, "connect-support");
    assert_eq!(r.state, CallState::Transferred, "{r:#?}");
    assert_eq!(view.refer_targets, ["tel:+18885550123"]);
    let esc = r.escalation.clone().unwrap();
    assert_eq!(esc.trigger, "caller_phrase");
    assert_eq!(esc.detail, "billing specialist");
    let out = outputs(&view);
    assert_eq!(out[0]["calls"][0]["intent"], "Double charge on the card");
    assert_eq!(r.after_call.tools["lookup_call_history"]["ok"], 1);
    let sms = r.after_call.sms.clone().unwrap();
    assert_eq!(sms.status, "sent");
    // The caller's own sentence is never texted back from our number (issue 13 item 6).
    let body = &s.twilio.messages()[0].body;
    assert!(
        !body.contains("I called earlier this week about a double charge"),
        "{body}"
    );
    assert!(
        body.starts_with("Example Corp billing: thanks for your call."),
        "{body}"
    );
}
