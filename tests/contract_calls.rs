//! Contract recordings for the SDK-backed checks in `tests/contract/` (issue 14 item 1).
//!
//! Whole calls are driven through the real controller (served on 127.0.0.1 by
//! `voxmachina::app`, exactly as `voxmachina serve` does) against the local OpenAI emulators
//! (Realtime and GPT-Live), the fake Twilio REST API and a local tool server, for every profile
//! shipped in `prompts/` plus a few test-only profiles (a Live profile whose only tool is the
//! built-in `end_call`, one with a declared HTTP tool, a Live blocklist for the Live reject, a
//! Realtime `twilio_dial` hand-over). Every message the fakes receive is written under `target/contract/`:
//!
//! - `openai-realtime.jsonl`, `openai-live.jsonl`: every OpenAI REST body and every sideband,
//!   model-session (a Twilio Media Streams call with a barge-in) and Live attach client event (the emulators' contract recording,
//!   `voxmachina_emulator::record`);
//! - `twilio.jsonl`: every Twilio REST request (method, path, form fields in order);
//! - `twiml.jsonl`: every TwiML document the controller answered to a signed voice webhook;
//! - `dynamodb.json`: where the call items were written when `VOXMACHINA_TEST_DYNAMODB_ENDPOINT`
//!   names a local DynamoDB engine (moto; tables are left for the checker, which deletes them).
//!
//! `tests/contract/test_*.py` (run by `tools/check.d/50-contract.sh` after `cargo test`)
//! validate them with the official `openai`, `twilio` and `boto3` Python packages. This test
//! itself asserts that every scenario reached its expected outcome and that every message kind
//! the checker needs was recorded, so a silently empty recording cannot pass.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_twilio::{self, FakeTwilio};
use support::harness::{ADMIN_TOKEN, API_KEY, test_config, test_secrets, webhook_secret};
use support::tool_server::ToolServer;
use voxmachina::app::{self, Running};
use voxmachina::calls::record::{CallRecord, CallState};
use voxmachina::config::{LiveTrunkConfig, TwilioVoiceMode};
use voxmachina::store::{DynamoStore, Store};
use voxmachina::webhook::event::LIVE_TRANSPORT_INCOMING;
use voxmachina_emulator::live::{LiveEmulator, OutboundPlan};
use voxmachina_emulator::phone::{Phone, PhoneConfig, stream_of_twiml};
use voxmachina_emulator::{Emulator, EmulatorConfig, ReferFault, Script};

const WAIT: Duration = Duration::from_secs(30);
const SHOP_TOKEN: &str = "shopkart-test-token-77aa";
const FROM_NUMBER: &str = "+18005550000";
const PUBLIC_URL: &str = "https://voice.test";
const OPENAI_SIP_URI: &str = "sip:proj_test123@sip.api.openai.com;transport=tls";
const TRUNK_PASSWORD: &str = "trunk-secret-pw";
const REGION: &str = "us-east-1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    root().join("target/contract")
}

fn demo(name: &str) -> Script {
    Script::load(root().join("scripts").join(name)).expect("demo script loads")
}

/// Test-only profiles next to the shipped ones: `(stem, toml)`.
const EXTRA_PROFILES: &[(&str, &str)] = &[
    (
        "contract_dial",
        r#"name = "contract-dial"
greeting = "Greet the caller."
[match]
dialed = ["+18005550181"]
[escalation]
action = "twilio_dial"
target = "tel:+18885550123"
handoff_line = "Connecting you to billing now."
[escalation.connect]
queue = "billing"
token_ttl_secs = 300
[escalation.fallback]
target = "sip:queue@pbx.example.com"
"#,
    ),
    (
        "contract_live_plain",
        r#"name = "contract-live-plain"
api = "live"
greeting = "Greet the caller."
[match]
dialed = ["+18005550182"]
[escalation]
enabled = false
"#,
    ),
    (
        "contract_live_tools",
        r#"name = "contract-live-tools"
api = "live"
tools_base_url = "{base}"
tools_allow_private_hosts = ["127.0.0.1"]
[match]
dialed = ["+18005550184"]
[escalation]
enabled = false
[[tools]]
name = "lookup_order"
description = "Look up an order by its number."
[tools.parameters]
type = "object"
required = ["order_id"]
[tools.parameters.properties.order_id]
type = "string"
[tools.http]
method = "GET"
url = "{{base_url}}/orders/{{args.order_id}}"
"#,
    ),
    (
        "contract_live_blocked",
        r#"name = "contract-live-blocked"
api = "live"
[match]
dialed = ["+18005550183"]
[escalation]
enabled = false
[reject.blocklist]
numbers = ["+19005550199"]
status = 486
"#,
    ),
];

/// Copies the shipped profiles (aiming `tools_base_url` at `base`) and adds [`EXTRA_PROFILES`].
fn write_prompts(dest: &Path, base: &str) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(root().join("prompts")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_some_and(|e| e == "toml") {
            text = text
                .lines()
                .map(|l| {
                    if l.starts_with("tools_base_url = ") {
                        // The tool server runs on loopback: allowed by name, as an operator
                        // would allow an internal host.
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
    for (stem, toml) in EXTRA_PROFILES {
        std::fs::write(
            dest.join(format!("{stem}.toml")),
            toml.replace("\"{base}\"", &format!("\"{base}\"")),
        )
        .unwrap();
        std::fs::write(
            dest.join(format!("{stem}.md")),
            format!("You answer the {stem} line.\n"),
        )
        .unwrap();
    }
}

struct Env {
    realtime: Emulator,
    live: LiveEmulator,
    twilio: FakeTwilio,
    _tools: ToolServer,
    server: Running,
    /// A second controller on the same profiles with `[twilio] voice_mode = "stream"`.
    stream: Running,
    http: reqwest::Client,
    dynamo: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// The DynamoDB engine's endpoint when one is configured for this run (the checker needs the
/// engine to outlive this test, so no per-binary moto is started here).
fn dynamodb_endpoint() -> Option<String> {
    std::env::var(support::dynamodb::ENDPOINT_ENV)
        .ok()
        .filter(|v| !v.is_empty())
}

async fn start() -> Env {
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "openai-realtime.jsonl",
        "openai-live.jsonl",
        "twilio.jsonl",
        "twiml.jsonl",
        "dynamodb.json",
    ] {
        let _ = std::fs::remove_file(out.join(f));
    }
    let realtime = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    realtime
        .record_to(&out.join("openai-realtime.jsonl"))
        .unwrap();
    let live = LiveEmulator::start(API_KEY, true).await.unwrap();
    live.record_to(&out.join("openai-live.jsonl")).unwrap();
    let twilio = FakeTwilio::start().await;
    let tools = ToolServer::start().await;

    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    write_prompts(&prompts, &tools.base_url());
    let secrets_dir = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    std::fs::write(secrets_dir.join("shopkart_api_token"), SHOP_TOKEN).unwrap();
    std::fs::write(secrets_dir.join("trunk_pw"), format!("{TRUNK_PASSWORD}\n")).unwrap();

    let mut config = test_config(&realtime, dir.path(), &prompts);
    config.openai.live_base_url = live.rest_base_url();
    config.openai.live_sideband_url = live.sideband_url();
    config.openai.live_trunk = Some(LiveTrunkConfig {
        provider_url: "sips:sip.example.com:5061".into(),
        username: "vox".into(),
        password_secret: "trunk_pw".into(),
        caller_number: "+18005550100".into(),
    });
    config.tools.secrets_dir = secrets_dir;
    config.after_call.summary_timeout_ms = 1_000;
    config.after_call.sms_opt_out_file = dir.path().join("sms_opt_out.txt");
    config.monitor.refer_outcome_window_ms = 2_000;
    config.twilio.api_base_url = twilio.base_url.clone();
    config.twilio.account_sid = fake_twilio::ACCOUNT_SID.into();
    config.twilio.from_number = FROM_NUMBER.into();
    config.twilio.public_url = PUBLIC_URL.into();
    config.twilio.voice_mode = TwilioVoiceMode::Sip;
    config.twilio.openai_sip_uri = OPENAI_SIP_URI.into();
    let mut secrets = test_secrets();
    secrets.twilio_auth_token = Some(twilio.auth_token());

    // DynamoDB when an engine is configured: the checker reads every item back with boto3.
    let mut dynamo = None;
    let store: Arc<dyn Store> = match dynamodb_endpoint() {
        Some(endpoint) => {
            let prefix = support::dynamodb::unique_prefix();
            let store = DynamoStore::new(DynamoStore::local_client(&endpoint, REGION), &prefix);
            store
                .create_tables(Duration::from_secs(60))
                .await
                .expect("create tables");
            dynamo = Some((endpoint, prefix));
            Arc::new(store)
        }
        None => voxmachina::store::open(&config).await.unwrap(),
    };
    let server = app::start_with_store(config.clone(), secrets.clone(), store)
        .await
        .expect("controller starts");

    let mut stream_config = config;
    stream_config.twilio.voice_mode = TwilioVoiceMode::Stream;
    stream_config.store.sqlite_path = dir.path().join("stream.db");
    let stream = app::start(stream_config, secrets)
        .await
        .expect("stream-mode controller starts");

    Env {
        realtime,
        live,
        twilio,
        _tools: tools,
        server,
        stream,
        http: reqwest::Client::new(),
        dynamo,
        _dir: dir,
    }
}

impl Env {
    fn webhook_url(&self) -> String {
        format!("{}/openai/webhook", self.server.base_url())
    }

    async fn wait_record(&self, id: &str, pred: impl Fn(&CallRecord) -> bool) -> CallRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.server.state.store.get_call(id).await.unwrap();
            if let Some(r) = r.clone().filter(|r| pred(r)) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "record of {id} never matched: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_final(&self, id: &str) -> CallRecord {
        self.wait_record(id, |r| r.state.is_final()).await
    }

    /// A Realtime SIP call through a signed `realtime.call.incoming`; its final record.
    async fn realtime_call(&self, script: Script) -> (String, CallRecord) {
        let placed = self
            .realtime
            .place_call(&self.webhook_url(), &webhook_secret(), script)
            .await
            .unwrap();
        assert_eq!(placed.status, 200);
        let r = self.wait_final(&placed.call_id).await;
        (placed.call_id, r)
    }

    /// A GPT-Live SIP call through a signed `live.transport.incoming`; its final record.
    async fn live_call(&self, script: Script) -> (String, CallRecord) {
        let pending = self.live.new_call(script, LIVE_TRANSPORT_INCOMING, None);
        let status = self
            .live
            .deliver(&self.webhook_url(), &webhook_secret(), None, &pending.body)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let r = self.wait_final(&pending.session_id).await;
        (pending.session_id, r)
    }

    async fn admin(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.server.base_url()))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Posts a signed Twilio voice webhook to `server` for a new inbound call; returns the
    /// status, the body and the CallSid.
    async fn voice_webhook(&self, server: &Running, from: &str, to: &str) -> (u16, String, String) {
        let sid = self.twilio.add_inbound_call(from, to);
        let params = self.twilio.voice_params(&sid, from, to);
        let resp = self
            .twilio
            .post_webhook_signed_as(
                &format!("{}/twilio/voice", server.base_url()),
                &format!("{PUBLIC_URL}/twilio/voice"),
                &params,
            )
            .await;
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap(), sid)
    }
}

/// One second of a loud two-tone signal in μ-law (the emulator's energy VAD hears it as
/// speech).
fn tone_ulaw() -> Vec<u8> {
    (0..8_000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            let x = (2.0 * std::f64::consts::PI * 700.0 * t).sin()
                + 0.6 * (2.0 * std::f64::consts::PI * 1200.0 * t).sin();
            voxmachina::media::g711::ulaw_encode((9000.0 * x) as i16)
        })
        .collect()
}

fn append_line(path: &Path, v: &Value) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{v}").unwrap();
}

fn recorded(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn paths_ending(lines: &[Value], channel: &str, suffix: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["channel"] == channel && l["path"].as_str().unwrap().ends_with(suffix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_calls_record_every_message_for_the_sdk_contract_checks() {
    let env = start().await;
    let out = out_dir();

    // --- Realtime SIP, every shipped Realtime profile -------------------------------------
    // default: question, then a REFER to a human.
    let (_, r) = env.realtime_call(demo("question_then_human.toml")).await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("default", CallState::Transferred)
    );
    // hinglish-support: HTTP tools, built-in tools, end_call (our /hangup), SMS follow-up.
    let (_, r) = env.realtime_call(demo("hinglish_order_status.toml")).await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("hinglish-support", CallState::Ended)
    );
    // connect-support: call history, then the Amazon Connect hand-over (REFER), SMS.
    let (_, r) = env.realtime_call(demo("connect_escalation.toml")).await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("connect-support", CallState::Transferred)
    );
    // restaurant-concierge (selected by a SIP header): end_call after the booking.
    let (_, r) = env.realtime_call(demo("restaurant_booking.toml")).await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("restaurant-concierge", CallState::Ended)
    );
    // support: a blocklisted caller is rejected (Realtime /reject).
    let (_, r) = env
        .realtime_call(
            Script::new()
                .from("<sip:+19005550199@pstn.example.com>;tag=b1")
                .to("<sip:+18005550100@sip.api.openai.com>"),
        )
        .await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("support", CallState::Rejected)
    );
    // support, a caller who is not blocked: answered and transferred inside its opening hours,
    // rejected (480) outside them; either way its messages are recorded.
    let (_, r) = env
        .realtime_call(
            Script::new()
                .from("<sip:+14155550123@pstn.example.com>;tag=s2")
                .to("<sip:+18005550100@sip.api.openai.com>")
                .refer_faults([ReferFault::Transfer])
                .caller("My build server is down.")
                .caller("Can I speak to a real person please?"),
        )
        .await;
    assert_eq!(r.profile, "support");
    assert!(
        matches!(r.state, CallState::Transferred | CallState::Rejected),
        "{r:#?}"
    );
    // contract-dial: twilio_dial hand-over redirects the parent Twilio call (call update).
    let parent = env.twilio.add_inbound_call("+14155550123", "+18005550181");
    let script = Script::new()
        .from("<sip:+14155550123@pstn.twilio.com>;tag=t1")
        .to("<sip:+18005550181@sip.api.openai.com>")
        .header("X-Twilio-CallSid", &parent)
        // The binding our `<Dial><Sip>` URI carries next to the CallSid (only a bound CallSid
        // is trusted as the parent call).
        .header(
            voxmachina::escalation::twilio_dial::CALL_SID_BINDING_HEADER,
            voxmachina::twilio::signature::call_sid_binding(&env.twilio.auth_token(), &parent)
                .expect("a non-empty auth token binds"),
        )
        .auto_reply(false)
        .greeting_wait_ms(300)
        .tool("transfer_to_human", json!({"reason": "billing dispute"}))
        .wait_ms(1_500)
        .hangup();
    let (_, r) = env.realtime_call(script).await;
    assert_eq!(r.profile, "contract-dial", "{r:#?}");
    assert!(
        env.twilio
            .call(&parent)
            .is_some_and(|c| !c.updates.is_empty()),
        "the parent call was redirected: {r:#?}"
    );
    // Admin hang-up of a live Realtime call: our /hangup.
    let placed = env
        .realtime
        .place_call(
            &env.webhook_url(),
            &webhook_secret(),
            demo("question_then_human.toml").turn_gap_ms(50),
        )
        .await
        .unwrap();
    env.wait_record(&placed.call_id, |r| r.state == CallState::Active)
        .await;
    let (status, _) = env
        .admin(&format!("/v1/calls/{}/hangup", placed.call_id), json!({}))
        .await;
    assert!(status == 202 || status == 409, "admin hangup: {status}");
    env.wait_final(&placed.call_id).await;

    // --- GPT-Live ---------------------------------------------------------------------------
    // live-frontdesk (shipped): accept with tools (Responses delegation), REFER.
    let (_, r) = env.live_call(demo("live_question_then_human.toml")).await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("live-frontdesk", CallState::Transferred)
    );
    // contract-live-plain: no declared tools, no escalation; the model ends the call.
    let (_, r) = env
        .live_call(
            Script::new()
                .from("<sip:+14155550123@pstn.example.com>;tag=l2")
                .to("<sip:+18005550182@sip.api.openai.com>")
                .caller("That's all, thanks. Bye!")
                .tool("end_call", json!({"reason": "caller said goodbye"}))
                .wait_ms(2_000),
        )
        .await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("contract-live-plain", CallState::Ended)
    );
    // contract-live-tools: a declared HTTP tool on Live (function_call_output, then
    // response.create), then end_call.
    let (_, r) = env
        .live_call(
            Script::new()
                .from("<sip:+14155550123@pstn.example.com>;tag=l4")
                .to("<sip:+18005550184@sip.api.openai.com>")
                .caller("Where is my order SK-10423?")
                .tool("lookup_order", json!({"order_id": "SK-10423"}))
                .wait_ms(500)
                .tool("end_call", json!({"reason": "answered"}))
                .wait_ms(2_000),
        )
        .await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("contract-live-tools", CallState::Ended)
    );
    // contract-live-blocked: Live /reject.
    let (_, r) = env
        .live_call(
            Script::new()
                .from("<sip:+19005550199@pstn.example.com>;tag=l3")
                .to("<sip:+18005550183@sip.api.openai.com>"),
        )
        .await;
    assert_eq!(
        (r.profile.as_str(), r.state),
        ("contract-live-blocked", CallState::Rejected)
    );
    // Live outbound: POST /live/sessions, then the callee hangs up.
    env.live.plan_outbound(
        Script::new().caller("Hello?").wait_ms(200).hangup(),
        OutboundPlan::Answer,
    );
    let (status, body) = env
        .admin(
            "/v1/calls",
            json!({"api": "live", "to": "+14155550166", "profile": "live-frontdesk"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["call"]["call_id"].as_str().unwrap().to_string();
    env.wait_final(&id).await;

    // --- Twilio -----------------------------------------------------------------------------
    // Outbound Twilio call (Calls create with inline TwiML and status callbacks).
    let (status, body) = env
        .admin(
            "/v1/calls/outbound",
            json!({"to": "+14155550177", "profile": "restaurant-concierge"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // TwiML answers, both voice modes; a blocklisted caller.
    let twiml_path = out.join("twiml.jsonl");
    for (case, server, from, to) in [
        ("sip_dial", &env.server, "+14155550123", "+18005550181"),
        (
            "stream_connect",
            &env.stream,
            "+14155550123",
            "+18005550177",
        ),
        // support has opening hours: `<Say>` + `<Hangup/>` when closed, else `<Connect>`.
        (
            "stream_support",
            &env.stream,
            "+14155550123",
            "+18005550100",
        ),
        (
            "stream_blocked",
            &env.stream,
            "+19005550199",
            "+18005550100",
        ),
    ] {
        let (status, twiml, _) = env.voice_webhook(server, from, to).await;
        assert_eq!(status, 200, "{case}: {twiml}");
        append_line(&twiml_path, &json!({"case": case, "twiml": twiml}));
    }
    // A Media Streams call on the stream-mode controller: the bridge's Realtime model session
    // (`session.update`, `input_audio_buffer.append`, the greeting, a barge-in truncate).
    env.realtime.push_model_script(
        Script::new()
            .greeting("Hello, you have reached Example Corp billing support. How can I help you today with your account or your last invoice?")
            .audio_chunk_ms(100),
    );
    let (status, twiml, sid) = env
        .voice_webhook(&env.stream, "+14155550123", "+18005550177")
        .await;
    assert_eq!(status, 200, "{twiml}");
    let (stream_url, parameters) = stream_of_twiml(&twiml).expect("<Connect><Stream>");
    let phone = Phone::connect(PhoneConfig {
        url: format!("ws://{}/twilio/media", env.stream.addr),
        signed_url: stream_url,
        auth_token: env.twilio.auth_token(),
        account_sid: fake_twilio::ACCOUNT_SID.into(),
        call_sid: sid.clone(),
        parameters,
    })
    .await
    .expect("media stream connects");
    phone
        .wait_until(WAIT, |l| l.frames.len() >= 5)
        .await
        .expect("the greeting plays");
    phone.say(&tone_ulaw());
    phone
        .wait_until(WAIT, |l| !l.clears.is_empty())
        .await
        .expect("barge-in clears the playback");
    phone.stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = env.stream.state.store.get_call(&sid).await.unwrap();
        if r.as_ref().is_some_and(|r| r.state.is_final()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "media call never ended: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let twilio_path = out.join("twilio.jsonl");
    let reqs = env.twilio.requests();
    for req in &reqs {
        append_line(
            &twilio_path,
            &json!({
                "method": req.method,
                "path": req.path,
                "content_type": req.header("content-type"),
                "form": req.form,
            }),
        );
    }

    // --- DynamoDB ---------------------------------------------------------------------------
    if let Some((endpoint, prefix)) = &env.dynamo {
        let calls = env
            .server
            .state
            .store
            .list_calls(&voxmachina::store::CallQuery::default())
            .await
            .unwrap();
        let n = calls.len();
        assert!(n >= 8, "{n} call records in DynamoDB");
        std::fs::write(
            out.join("dynamodb.json"),
            json!({"endpoint": endpoint, "region": REGION, "prefix": prefix, "calls": n})
                .to_string(),
        )
        .unwrap();
    }

    // --- What the checker needs is there ----------------------------------------------------
    let rt = recorded(&out.join("openai-realtime.jsonl"));
    let lv = recorded(&out.join("openai-live.jsonl"));
    for suffix in ["/accept", "/reject", "/refer", "/hangup"] {
        assert!(paths_ending(&rt, "rest", suffix) > 0, "realtime {suffix}");
        assert!(paths_ending(&lv, "rest", suffix) > 0, "live {suffix}");
    }
    assert_eq!(paths_ending(&lv, "rest", "/live/sessions"), 1);
    assert!(rt.iter().any(|l| l["channel"] == "sideband"));
    for kind in [
        "session.update",
        "input_audio_buffer.append",
        "conversation.item.truncate",
    ] {
        assert!(
            rt.iter()
                .any(|l| l["channel"] == "model_session" && l["body"]["type"] == kind),
            "model session {kind}"
        );
    }
    for kind in [
        "session.instructions.append",
        "response.item.create",
        "response.create",
    ] {
        assert!(
            lv.iter()
                .any(|l| l["channel"] == "attach" && l["body"]["type"] == kind),
            "attach {kind}"
        );
    }
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert!(
        paths.iter().any(|p| p.ends_with("/Calls.json")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.contains("/Calls/CA")),
        "a call update: {paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.ends_with("/Messages.json")),
        "an SMS: {paths:?}"
    );
}
