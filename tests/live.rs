//! GPT-Live end to end: the real controller on 127.0.0.1:0 against the local GPT-Live emulator
//! (and the Realtime emulator for the dual-webhook cases), a real SQLite file.
//!
//! Covers both incoming-call webhook names, one decision owner per SIP call, each Live
//! call-control endpoint (accept, reject, refer, hangup, `decision_already_made`), transcript
//! stitching, `session.closed` reasons, reattach with replayed events, tool calls through the
//! shared tool layer, and outbound calls (success and each failure).

mod support;

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::harness::{ADMIN_TOKEN, API_KEY, test_config, test_secrets, webhook_secret};
use voxmachina::app::{self, Running};
use voxmachina::calls::record::{Api, CallRecord, CallState, Speaker};
use voxmachina::config::{Config, LiveTrunkConfig};
use voxmachina::prompts::ProfileSet;
use voxmachina::sip::SipHeader;
use voxmachina::webhook::event::{
    LIVE_CALL_INCOMING, LIVE_TRANSPORT_INCOMING, RealtimeCallIncoming, realtime_call_incoming,
};
use voxmachina_emulator::live::{LiveEmulator, LiveStatus, OutboundPlan};
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

const WAIT: Duration = Duration::from_secs(10);
const TRUNK_PASSWORD: &str = "trunk-secret-pw";

fn write_prompts(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        (
            "default",
            r#"default = true
greeting = "Greet the caller as the Example Corp test line."
[escalation]
target = "tel:+14155550100"
phrases = ["manager"]
"#,
        ),
        (
            "live",
            r#"api = "live"
greeting = "Greet the caller as the Example Corp live line."
[match]
dialed = ["+18005550111"]
[session]
voice = "cedar"
[escalation]
target = "sip:desk@pbx.example.com"
handoff_line = "Connecting you now."
phrases = ["manager"]
dtmf_key = "0"
"#,
        ),
        (
            "live_blocked",
            r#"api = "live"
[match]
dialed = ["+18005550113"]
[escalation]
enabled = false
[reject.blocklist]
numbers = ["+19005550199"]
status = 486
"#,
        ),
        (
            "live_out",
            r#"api = "live"
greeting = "Say hello and that you call about the appointment."
[match]
dialed = ["+18005550114"]
[escalation]
enabled = false
"#,
        ),
        (
            "live_ivr",
            r#"api = "live"
greeting = "Say hello."
[match]
dialed = ["+18005550115"]
[escalation]
enabled = false
[[tools]]
builtin = "send_dtmf"
"#,
        ),
    ];
    for (stem, toml) in files {
        std::fs::write(dir.join(format!("{stem}.toml")), toml).unwrap();
        std::fs::write(
            dir.join(format!("{stem}.md")),
            format!("You answer the {stem} line.\n"),
        )
        .unwrap();
    }
}

struct LiveHarness {
    config: Config,
    realtime: Emulator,
    live: LiveEmulator,
    server: Option<Running>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl LiveHarness {
    async fn start(outbound_enabled: bool) -> Self {
        Self::start_with(outbound_enabled, |_| {}).await
    }

    async fn start_with(outbound_enabled: bool, adjust: impl FnOnce(&mut Config)) -> Self {
        let realtime = Emulator::start(EmulatorConfig {
            api_key: API_KEY.to_string(),
        })
        .await
        .unwrap();
        let live = LiveEmulator::start(API_KEY, outbound_enabled)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prompts = dir.path().join("prompts");
        write_prompts(&prompts);
        let secrets_dir = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets_dir).unwrap();
        std::fs::write(secrets_dir.join("trunk_pw"), format!("{TRUNK_PASSWORD}\n")).unwrap();
        let mut config = test_config(&realtime, dir.path(), &prompts);
        config.openai.live_base_url = live.rest_base_url();
        config.openai.live_sideband_url = live.sideband_url();
        config.tools.secrets_dir = secrets_dir;
        config.openai.live_trunk = Some(LiveTrunkConfig {
            provider_url: "sips:sip.example.com:5061".into(),
            username: "vox".into(),
            password_secret: "trunk_pw".into(),
            caller_number: "+18005550100".into(),
        });
        adjust(&mut config);
        let server = app::start(config.clone(), test_secrets()).await.unwrap();
        Self {
            config,
            realtime,
            live,
            server: Some(server),
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn srv(&self) -> &Running {
        self.server.as_ref().expect("server running")
    }

    /// Graceful stop without grace (live calls are detached and stay live), then a new start
    /// on the same config and store, which reattaches them.
    async fn restart(&mut self) {
        self.server.take().unwrap().shutdown(Duration::ZERO).await;
        self.server = Some(
            app::start(self.config.clone(), test_secrets())
                .await
                .unwrap(),
        );
    }

    fn webhook_url(&self) -> String {
        format!("{}/openai/webhook", self.srv().base_url())
    }

    async fn record(&self, id: &str) -> Option<CallRecord> {
        self.srv().state.store.get_call(id).await.unwrap()
    }

    async fn wait_record(&self, id: &str, pred: impl Fn(&CallRecord) -> bool) -> CallRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self.record(id).await.filter(|r| pred(r)) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "record of {id} never matched: {:#?}\nevents: {:#?}",
                    self.record(id).await,
                    self.event_kinds(id).await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_final(&self, id: &str) -> CallRecord {
        self.wait_record(id, |r| r.state.is_final()).await
    }

    async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.srv()
            .state
            .store
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    async fn events(&self, id: &str) -> Vec<voxmachina::calls::record::CallEvent> {
        self.srv().state.store.events(id).await.unwrap()
    }

    async fn lines(&self, id: &str, speaker: Speaker) -> Vec<String> {
        self.srv()
            .state
            .store
            .transcript(id)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.speaker == speaker)
            .map(|l| l.text)
            .collect()
    }

    /// Registers a Live call with `script` and delivers its webhook (`kind`). Returns the
    /// session id and the SIP Call-ID.
    async fn place_live(&self, script: Script, kind: &str) -> (String, String, u16) {
        let pending = self.live.new_call(script, kind, None);
        let status = self
            .live
            .deliver(&self.webhook_url(), &webhook_secret(), None, &pending.body)
            .await
            .unwrap();
        (pending.session_id, pending.sip_call_id, status)
    }

    async fn place_outbound(&self, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/calls", self.srv().base_url()))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn script(toml: &str) -> Script {
    Script::from_toml_str(toml).unwrap()
}

const QUESTION_THEN_MANAGER: &str = r#"
[call]
from = '"Ada" <sip:+14155550123@pstn.example.com>;tag=1'
to = "<sip:+18005550111@sip.api.openai.com>"
[agent]
replies = ["We are open nine to five, Monday to Friday."]
[faults]
refer = ["transfer"]
[[turn]]
caller = "Hi, what are your opening hours today?"
[[turn]]
caller = "Thanks. Can I talk to a manager please?"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_transport_incoming_is_accepted_stitched_and_transferred() {
    let h = LiveHarness::start(false).await;
    let (id, sip_call_id, status) = h
        .place_live(script(QUESTION_THEN_MANAGER), LIVE_TRANSPORT_INCOMING)
        .await;
    assert_eq!(status, 200);
    let record = h.wait_final(&id).await;
    assert_eq!(record.state, CallState::Transferred, "{record:#?}");
    assert_eq!(record.api, Api::Live);
    assert_eq!(record.profile, "live");
    assert_eq!(record.sip_call_id.as_deref(), Some(sip_call_id.as_str()));
    assert_eq!(
        record.escalation.unwrap().target,
        "sip:desk@pbx.example.com"
    );

    let view = h.live.session(&id).unwrap();
    assert_eq!(view.accept_count, 1);
    let body = view.accept_body.unwrap();
    let session = &body["session"];
    assert_eq!(session["type"], "live");
    assert_eq!(session["model"], "gpt-live-1");
    assert_eq!(session["audio"]["output"]["voice"], "cedar");
    assert!(session["audio"].get("input").is_none(), "{body}");
    assert!(
        session["instructions"]
            .as_str()
            .unwrap()
            .contains("live line")
    );
    // Built-in tools go to the Responses delegation backend; the controller runs them.
    let tools = session["delegation"]["responses"]["tools"]
        .as_array()
        .unwrap();
    assert!(tools.iter().any(|t| t["name"] == "transfer_to_human"));
    assert_eq!(
        view.refer_targets,
        vec!["sip:desk@pbx.example.com".to_string()]
    );
    assert_eq!(
        view.status,
        LiveStatus::Transferred {
            target: "sip:desk@pbx.example.com".into()
        }
    );
    // Nothing went to the Realtime API.
    assert!(h.realtime.requests().is_empty());

    // Deltas (two per line) stitched into whole lines per speaker, in order.
    assert_eq!(
        h.lines(&id, Speaker::Caller).await,
        [
            "Hi, what are your opening hours today?",
            "Thanks. Can I talk to a manager please?"
        ]
    );
    let agent = h.lines(&id, Speaker::Agent).await;
    assert_eq!(
        agent[0],
        "Hello, thanks for calling. How can I help you today?"
    );
    assert_eq!(agent[1], "We are open nine to five, Monday to Friday.");
    assert!(
        agent.contains(&"Connecting you now.".to_string()),
        "{agent:?}"
    );
    // The greeting and the hand-off line went out as session.instructions.append.
    let appends: Vec<&Value> = view
        .client_events
        .iter()
        .filter(|e| e["type"] == "session.instructions.append")
        .collect();
    assert!(appends.len() >= 2, "{:#?}", view.client_events);
    assert!(
        appends
            .iter()
            .all(|e| e["delegation_id"].is_null() && e["event_id"].is_string())
    );
    // The controller never sends what the attach socket forbids.
    assert!(
        view.client_events
            .iter()
            .all(|e| e["type"] != "session.start"
                && e["type"] != "session.input_audio.append"
                && e["type"] != "response.cancel")
    );
    let kinds = h.event_kinds(&id).await;
    assert!(kinds.contains(&"session_closed".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_live_call_incoming_is_handled_the_same_and_usage_kept() {
    let h = LiveHarness::start(false).await;
    let s = script(
        r#"
[call]
to = "<sip:+18005550111@sip.api.openai.com>"
[[turn]]
caller = "Just checking, bye."
[[turn]]
hangup = true
"#,
    );
    let (id, _, status) = h.place_live(s, LIVE_CALL_INCOMING).await;
    assert_eq!(status, 200);
    let record = h.wait_final(&id).await;
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.api, Api::Live);
    // session.closed remote_hangup is the authoritative end.
    assert_eq!(record.end_reason.as_deref(), Some("caller_hangup"));
    assert!(record.usage.total_tokens > 0, "{:?}", record.usage);
    assert_eq!(h.live.session(&id).unwrap().accept_count, 1);
    assert_eq!(h.lines(&id, Speaker::Caller).await, ["Just checking, bye."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sip_call_two_webhooks_exactly_one_accept() {
    let h = LiveHarness::start(false).await;

    // 1. Profile on api = "live": the Realtime delivery is left alone.
    let pending = h.live.new_call(
        script(
            r#"
[call]
to = "<sip:+18005550111@sip.api.openai.com>"
[[turn]]
hangup = true
"#,
        ),
        LIVE_TRANSPORT_INCOMING,
        None,
    );
    let rtc_id = "rtc_0123456789abcdef0123456789abcdef";
    let rt_body = realtime_call_incoming(
        "evt_rt_1",
        1,
        &RealtimeCallIncoming {
            call_id: rtc_id.into(),
            sip_headers: vec![
                SipHeader::new("From", "<sip:+14155550123@pstn.example.com>;tag=1"),
                SipHeader::new("To", "<sip:+18005550111@sip.api.openai.com>"),
                SipHeader::new("Call-ID", &pending.sip_call_id),
            ],
            sip_media_security: Some("srtp".into()),
        },
    );
    let rt_bytes = serde_json::to_vec(&rt_body).unwrap();
    let now = chrono::Utc::now().timestamp();
    // Realtime first, then Live: the order does not matter.
    let s1 = h
        .realtime
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_rt_1",
            now,
            &rt_bytes,
        )
        .await
        .unwrap();
    let s2 = h
        .live
        .deliver(&h.webhook_url(), &webhook_secret(), None, &pending.body)
        .await
        .unwrap();
    assert_eq!((s1, s2), (200, 200));
    let ignored = h.wait_final(rtc_id).await;
    assert_eq!(ignored.state, CallState::Ignored);
    assert_eq!(ignored.api, Api::Realtime);
    assert_eq!(ignored.end_reason.as_deref(), Some("owned_by_live"));
    assert_eq!(
        ignored.sip_call_id.as_deref(),
        Some(pending.sip_call_id.as_str())
    );
    let owner = h.wait_final(&pending.session_id).await;
    assert_eq!(owner.api, Api::Live);
    assert_eq!(owner.sip_call_id, ignored.sip_call_id);
    assert_eq!(h.live.session(&pending.session_id).unwrap().accept_count, 1);
    // Never rejected, never accepted on the Realtime surface.
    assert!(
        h.realtime.requests().is_empty(),
        "{:?}",
        h.realtime.requests()
    );
    assert!(
        h.event_kinds(rtc_id)
            .await
            .contains(&"left_alone".to_string())
    );
    // A redelivery of the ignored webhook stays a no-op.
    let again = h
        .realtime
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_rt_1",
            now,
            &rt_bytes,
        )
        .await
        .unwrap();
    assert_eq!(again, 200);
    assert!(h.realtime.requests().is_empty());

    // 2. Profile on api = "realtime" (the default profile): the Live delivery is left alone.
    let rt = h.realtime.new_call(script(
        r#"
[call]
to = "<sip:+18005550000@sip.api.openai.com>"
[[turn]]
hangup = true
"#,
    ));
    let rt_event: Value = serde_json::from_slice(&rt.body).unwrap();
    let call_id_header = rt_event["data"]["sip_headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "Call-ID")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let live_pending = h.live.new_call(
        script("[call]\nto = \"<sip:+18005550000@sip.api.openai.com>\"\n"),
        LIVE_TRANSPORT_INCOMING,
        Some(&call_id_header),
    );
    let s_live = h
        .live
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            None,
            &live_pending.body,
        )
        .await
        .unwrap();
    let s_rt = h
        .realtime
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_rt_2",
            now,
            &rt.body,
        )
        .await
        .unwrap();
    assert_eq!((s_live, s_rt), (200, 200));
    let left = h.wait_final(&live_pending.session_id).await;
    assert_eq!(left.state, CallState::Ignored);
    assert_eq!(left.end_reason.as_deref(), Some("owned_by_realtime"));
    let view = h.live.session(&live_pending.session_id).unwrap();
    assert_eq!((view.accept_count, view.reject_count), (0, 0));
    let owner = h.wait_final(&rt.call_id).await;
    assert_eq!(owner.api, Api::Realtime);
    assert_eq!(owner.sip_call_id.as_deref(), Some(call_id_header.as_str()));
    assert_eq!(h.realtime.call(&rt.call_id).unwrap().accept_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_sends_the_profile_status_and_decision_already_made_is_left_alone() {
    let h = LiveHarness::start(false).await;
    let s = script(
        "[call]\nfrom = '<sip:+19005550199@pstn.example.com>;tag=1'\nto = \"<sip:+18005550113@sip.api.openai.com>\"\n",
    );
    let (id, _, status) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
    assert_eq!(status, 200);
    let record = h.wait_final(&id).await;
    assert_eq!(record.state, CallState::Rejected);
    let view = h.live.session(&id).unwrap();
    assert_eq!(view.status, LiveStatus::Rejected { status_code: 486 });
    assert_eq!(view.accept_count, 0);

    // Another surface decided first: our accept gets decision_already_made.
    let pending = h.live.new_call(
        script("[call]\nto = \"<sip:+18005550111@sip.api.openai.com>\"\n"),
        LIVE_TRANSPORT_INCOMING,
        None,
    );
    let pre = h
        .http
        .post(format!(
            "{}/live/sessions/{}/reject",
            h.live.rest_base_url(),
            pending.session_id
        ))
        .bearer_auth(API_KEY)
        .json(&json!({ "status_code": 603 }))
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 200);
    let status = h
        .live
        .deliver(&h.webhook_url(), &webhook_secret(), None, &pending.body)
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "decision_already_made is acknowledged, not retried"
    );
    let record = h.wait_final(&pending.session_id).await;
    assert_eq!(record.state, CallState::Ignored);
    assert_eq!(record.end_reason.as_deref(), Some("decision_already_made"));
    let view = h.live.session(&pending.session_id).unwrap();
    assert_eq!(
        view.accept_count, 1,
        "one accept, answered 409, not retried"
    );
    assert_eq!(view.status, LiveStatus::Rejected { status_code: 603 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_and_operator_hangup_use_live_endpoints() {
    let h = LiveHarness::start(false).await;
    // end_call arrives as a Responses-delegation function call and runs in the shared tool layer.
    let s = script(
        r#"
[call]
to = "<sip:+18005550111@sip.api.openai.com>"
[agent]
auto_reply = false
[[turn]]
tool = "end_call"
arguments = { reason = "caller is done" }
"#,
    );
    let (id, _, _) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
    let record = h.wait_final(&id).await;
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.end_reason.as_deref(), Some("end_call"));
    // The output went out on the attach socket before the /hangup request; the emulator reads
    // that socket on its own task, so under load it may see the hangup first: wait for both.
    let view = h
        .live
        .wait_for(&id, std::time::Duration::from_secs(10), |v| {
            !v.function_outputs.is_empty() && v.hangup_count == 1
        })
        .await
        .expect("the function output reached the emulator");
    assert_eq!(view.function_outputs.len(), 1);
    assert_eq!(view.function_outputs[0].1, r#"{"ok":true}"#);
    assert_eq!(view.hangup_count, 1);
    assert_eq!(view.status, LiveStatus::HungUp);
    let kinds = h.event_kinds(&id).await;
    for k in ["tool_call", "hangup_sent", "session_closed", "call_ended"] {
        assert!(kinds.contains(&k.to_string()), "{k} missing: {kinds:?}");
    }
    let closed = h
        .events(&id)
        .await
        .into_iter()
        .find(|e| e.kind == "session_closed")
        .unwrap();
    assert_eq!(closed.detail["reason"], "close_requested");

    // Operator hang-up through the admin API on a live call.
    let s = script(
        "[call]\nto = \"<sip:+18005550111@sip.api.openai.com>\"\n[[turn]]\nwait_ms = 20000\n",
    );
    let (id, _, _) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
    h.live
        .wait_for(&id, WAIT, |v| v.attach_connections == 1)
        .await
        .unwrap();
    h.wait_record(&id, |r| r.state == CallState::Active).await;
    let resp = h
        .http
        .request(
            Method::POST,
            format!("{}/v1/calls/{id}/hangup", h.srv().base_url()),
        )
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "note": "test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let record = h.wait_final(&id).await;
    assert_eq!(record.end_reason.as_deref(), Some("operator_hangup"));
    assert_eq!(h.live.session(&id).unwrap().hangup_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_closed_reasons_end_the_call() {
    let h = LiveHarness::start(false).await;
    for (reason, expected) in [
        ("remote_hangup", "caller_hangup"),
        ("expired", "session_expired"),
        ("content", "content_filter"),
        ("connection_lost", "connection_lost"),
        ("something_new", "session_closed"),
    ] {
        let s = script(
            "[call]\nto = \"<sip:+18005550111@sip.api.openai.com>\"\n[[turn]]\nwait_ms = 20000\n",
        );
        let (id, _, _) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
        h.live
            .wait_for(&id, WAIT, |v| v.attach_connections == 1)
            .await
            .unwrap();
        h.wait_record(&id, |r| r.state == CallState::Active).await;
        h.live.end_session(&id, reason);
        let record = h.wait_final(&id).await;
        assert_eq!(record.state, CallState::Ended, "{reason}");
        assert_eq!(record.end_reason.as_deref(), Some(expected), "{reason}");
        // The controller did not hang up: OpenAI ended it.
        assert_eq!(h.live.session(&id).unwrap().hangup_count, 0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_skips_replayed_events() {
    let h = LiveHarness::start(false).await;
    let s = script(
        r#"
[call]
to = "<sip:+18005550111@sip.api.openai.com>"
[agent]
replies = ["Sure, noted."]
[[turn]]
caller = "My account number is 42."
[[turn]]
dtmf = "5"
[[turn]]
drop = true
[[turn]]
caller = "That is all."
[[turn]]
hangup = true
"#,
    );
    let (id, _, _) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
    let record = h.wait_final(&id).await;
    assert_eq!(
        record.end_reason.as_deref(),
        Some("caller_hangup"),
        "{record:#?}"
    );
    let view = h.live.session(&id).unwrap();
    assert_eq!(view.attach_connections, 2);
    assert!(view.replayed_events > 0, "the reattach replayed events");
    // Each replayed event was acted on once: one DTMF event, each line once.
    let kinds = h.event_kinds(&id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "dtmf").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"sideband_reattached".to_string()),
        "{kinds:?}"
    );
    assert_eq!(
        h.lines(&id, Speaker::Caller).await,
        ["My account number is 42.", "That is all."]
    );
    let agent = h.lines(&id, Speaker::Agent).await;
    assert_eq!(
        agent.iter().filter(|l| *l == "Sure, noted.").count(),
        1,
        "{agent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reattaches_a_live_call_without_duplicate_lines() {
    let mut h = LiveHarness::start(false).await;
    let s = script(
        r#"
[call]
to = "<sip:+18005550111@sip.api.openai.com>"
[agent]
replies = ["Noted.", "Goodbye."]
[[turn]]
caller = "Before the restart."
[[turn]]
wait_ms = 300
[[turn]]
caller = "After the restart."
[[turn]]
hangup = true
"#,
    );
    let (id, _, _) = h.place_live(s, LIVE_TRANSPORT_INCOMING).await;
    h.live
        .wait_for(&id, WAIT, |v| !v.caller_lines.is_empty())
        .await
        .unwrap();
    h.restart().await;
    let record = h.wait_final(&id).await;
    assert_eq!(
        record.end_reason.as_deref(),
        Some("caller_hangup"),
        "{record:#?}"
    );
    assert!(h.live.session(&id).unwrap().attach_connections >= 2);
    assert_eq!(
        h.lines(&id, Speaker::Caller).await,
        ["Before the restart.", "After the restart."]
    );
    let agent = h.lines(&id, Speaker::Agent).await;
    assert_eq!(
        agent.iter().filter(|l| *l == "Noted.").count(),
        1,
        "{agent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_rings_answers_greets_and_ends() {
    let h = LiveHarness::start(true).await;
    h.live.plan_outbound(
        script("[agent]\nreplies = [\"Yes, Tuesday works.\"]\n[[turn]]\ncaller = \"Hello?\"\n[[turn]]\nhangup = true\n"),
        OutboundPlan::Answer,
    );
    let (status, body) = h
        .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_out" }))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["call"]["call_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("live_"));
    let record = h.wait_final(&id).await;
    assert_eq!(record.api, Api::Live);
    assert_eq!(record.dialed.as_deref(), Some("+14155550123"));
    assert_eq!(record.caller.as_deref(), Some("+18005550100"));
    assert_eq!(record.end_reason.as_deref(), Some("caller_hangup"));
    let kinds = h.event_kinds(&id).await;
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k}: {kinds:?}"))
    };
    assert!(pos("outbound_created") < pos("ringing"));
    assert!(pos("ringing") < pos("answered"));

    let view = h.live.session(&id).unwrap();
    let create = view.create_body.unwrap();
    assert_eq!(create["transport"]["type"], "sip");
    assert_eq!(create["transport"]["destination"], "+14155550123");
    assert_eq!(
        create["transport"]["trunk"]["provider_url"],
        "sips:sip.example.com:5061"
    );
    assert_eq!(create["transport"]["trunk"]["auth"]["type"], "digest");
    assert_eq!(
        create["transport"]["trunk"]["auth"]["password"],
        TRUNK_PASSWORD
    );
    assert_eq!(create["session"]["model"], "gpt-live-1");
    assert!(create["session"].get("type").is_none());
    // The greeting waited for transport.answered.
    assert_eq!(
        h.lines(&id, Speaker::Agent)
            .await
            .first()
            .map(String::as_str),
        Some("Hello, thanks for calling. How can I help you today?")
    );
    assert_eq!(h.lines(&id, Speaker::Caller).await, ["Hello?"]);
    assert_eq!(h.live.create_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_api_live_places_follows_and_prints_the_call() {
    let h = LiveHarness::start(true).await;
    h.live.plan_outbound(
        script("[[turn]]\ncaller = \"Hello, who is this?\"\n[[turn]]\nhangup = true\n"),
        OutboundPlan::Answer,
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .args([
            "call",
            "--api",
            "live",
            "+14155550123",
            "--profile",
            "live_out",
        ])
        .args(["--server", &h.srv().base_url(), "--timeout-secs", "20"])
        .env("VOXMACHINA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("caller: Hello, who is this?"), "{stdout}");
    assert!(stdout.contains("\"api\": \"live\""), "{stdout}");
    assert_eq!(h.live.create_requests(), 1);

    // Without --profile the Live path refuses before contacting anyone.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .args(["call", "--api", "live", "+14155550123"])
        .args(["--server", &h.srv().base_url()])
        .env("VOXMACHINA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--profile is required"));
    assert_eq!(h.live.create_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_failures_are_reported_and_never_retried() {
    let h = LiveHarness::start(true).await;

    // The callee is busy: transport.failed ends the call.
    h.live
        .plan_outbound(Script::default(), OutboundPlan::Fail("busy".into()));
    let (status, body) = h
        .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_out" }))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["call"]["call_id"].as_str().unwrap().to_string();
    let record = h.wait_final(&id).await;
    assert_eq!(record.end_reason.as_deref(), Some("transport_failed"));
    let failed = h
        .events(&id)
        .await
        .into_iter()
        .find(|e| e.kind == "transport_failed")
        .unwrap();
    assert_eq!(failed.detail["code"], "busy");
    assert_eq!(
        h.live.session(&id).unwrap().closed_reason.as_deref(),
        Some("close_requested")
    );

    // 502 and 504: outcome unknown, one request each, nothing retried or recorded.
    for s in [502, 504] {
        let before = h.live.create_requests();
        h.live
            .plan_outbound(Script::default(), OutboundPlan::Status(s));
        let (status, body) = h
            .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_out" }))
            .await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["outcome"], "unknown");
        assert_eq!(body["retried"], false);
        assert_eq!(
            h.live.create_requests(),
            before + 1,
            "{s} must not be retried"
        );
    }

    // Checked before sending: a destination that is not E.164, a profile not on Live, Realtime.
    let before = h.live.create_requests();
    for (body, want) in [
        (
            json!({ "api": "live", "to": "sip:bob@example.com", "profile": "live_out" }),
            400,
        ),
        (
            json!({ "api": "live", "to": "+14155550123", "profile": "default" }),
            400,
        ),
        (
            json!({ "api": "live", "to": "+14155550123", "profile": "nope" }),
            400,
        ),
        (
            json!({ "api": "realtime", "to": "+14155550123", "profile": "live_out" }),
            400,
        ),
    ] {
        let (status, answer) = h.place_outbound(body.clone()).await;
        assert_eq!(status, want, "{body} -> {answer}");
    }
    assert_eq!(h.live.create_requests(), before);
    assert_eq!(
        h.live.session_ids().len(),
        1,
        "only the busy call was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refused_when_not_enabled_or_not_configured() {
    let h = LiveHarness::start(false).await;
    let (status, body) = h
        .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_out" }))
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["openai_status"], 403);
    assert_eq!(body["code"], "outbound_sip_not_enabled");
    assert_eq!(h.live.create_requests(), 1);
    assert!(h.live.session_ids().is_empty());

    let h = LiveHarness::start_with(true, |c| c.openai.live_trunk = None).await;
    let (status, body) = h
        .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_out" }))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(h.live.create_requests(), 0);
}

#[test]
fn profile_api_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("a.md"), "x\n").unwrap();
    std::fs::write(p.join("a.toml"), "default = true\napi = \"gpt-live\"\n").unwrap();
    let err = ProfileSet::load(p).unwrap_err().to_string();
    assert!(err.contains("must be \"realtime\" or \"live\""), "{err}");
    std::fs::write(
        p.join("a.toml"),
        "default = true\napi = \"live\"\n[session]\nlanguage = \"en\"\n[session.turn_detection]\ntype = \"server_vad\"\n",
    )
    .unwrap();
    let err = ProfileSet::load(p).unwrap_err().to_string();
    assert!(
        err.contains("session.language is a Realtime setting"),
        "{err}"
    );
    assert!(
        err.contains("session.turn_detection is a Realtime setting"),
        "{err}"
    );
    std::fs::write(
        p.join("a.toml"),
        "default = true\napi = \"live\"\n[session]\nmodel = \"gpt-live-1-mini\"\n",
    )
    .unwrap();
    let set = ProfileSet::load(p).unwrap();
    let profile = set.get("a").unwrap();
    assert_eq!(profile.api, Api::Live);
    let body = profile.live_session();
    assert_eq!(body["model"], "gpt-live-1-mini");
    // end_call is always offered, so the tools go to the Responses delegation backend.
    assert_eq!(body["delegation"]["type"], "responses");
}

/// GPT-Live DTMF out: the `send_dtmf` tool becomes one `transport.dtmf.send` per key on the
/// attach sideband (the `openai` SDK's `TransportDtmfSend`), the emulator records the keys, and
/// the model gets `{"status":"sent","keys":N}` without the keys; keys outside 0-9 * # A-D never
/// leave the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_presses_keys_on_an_outbound_live_call() {
    let h = LiveHarness::start(true).await;
    h.live.plan_outbound(
        script(
            r#"
[agent]
auto_reply = false
[[turn]]
caller = "For billing press 1, then enter your account number and the pound key."
[[turn]]
tool = "send_dtmf"
arguments = { digits = "1" }
[[turn]]
tool = "send_dtmf"
arguments = { digits = "48a*#" }
[[turn]]
tool = "send_dtmf"
arguments = { digits = "12w3" }
[[turn]]
wait_ms = 300
[[turn]]
hangup = true
"#,
        ),
        OutboundPlan::Answer,
    );
    let (status, body) = h
        .place_outbound(json!({ "api": "live", "to": "+14155550123", "profile": "live_ivr" }))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["call"]["call_id"].as_str().unwrap().to_string();
    let record = h.wait_final(&id).await;
    let view = h
        .live
        .wait_for(&id, WAIT, |v| v.function_outputs.len() == 3)
        .await
        .expect("three tool outputs");
    assert_eq!(view.dtmf_sent, ["1", "4", "8", "A", "*", "#"]);
    let sends: Vec<&Value> = view
        .client_events
        .iter()
        .filter(|e| e["type"] == "transport.dtmf.send")
        .collect();
    assert_eq!(sends.len(), 6);
    for e in &sends {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["event", "event_id", "type"], "{e}");
    }
    let outputs: Vec<Value> = view
        .function_outputs
        .iter()
        .map(|(_, o)| serde_json::from_str(o).unwrap())
        .collect();
    assert_eq!(outputs[0], json!({ "status": "sent", "keys": 1 }));
    assert_eq!(outputs[1], json!({ "status": "sent", "keys": 5 }));
    assert_eq!(
        outputs[2]["error"]["code"], "invalid_arguments",
        "a pause key is refused by the schema: {}",
        outputs[2]
    );
    assert_eq!(record.after_call.tools["send_dtmf"]["ok"], 2);
    let events = h.events(&id).await;
    assert!(
        !events.iter().any(|e| e.detail.to_string().contains("48a")),
        "the keys are not stored: {events:#?}"
    );
}
