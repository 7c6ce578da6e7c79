//! The `twilio_dial` escalation action end to end, against the fake Twilio (real HTTP on
//! 127.0.0.1) and the OpenAI emulator: `POST /twilio/voice` in `[twilio] voice_mode = "sip"`
//! answers `<Dial><Sip>` with the `X-Twilio-CallSid` URI header and our HMAC binding of it
//! (signature checked, 403 otherwise), the SIP webhook keeps that bound parent CallSid on the
//! record (the INVITE carries the TwiML's URI headers, as Twilio sends them), and the hand-off
//! redirects the parent call with `<Dial><Number sendDigits="wwww{token}#">` (exact REST
//! request), or falls back to a REFER when it cannot.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, sip_dial_headers};
use support::harness::{API_KEY, Harness, test_config, test_secrets, webhook_secret};
use voxmachina::app;
use voxmachina::calls::record::{CallRecord, CallState};
use voxmachina::config::{Secret, TwilioVoiceMode};
use voxmachina_emulator::{CallView, Emulator, EmulatorConfig, ReferFault, Script};

const CALLER: &str = "+14155550123";
const LINE: &str = "+18005550100";
const CONNECT_DID: &str = "+18885550123";
const FALLBACK: &str = "sip:queue@pbx.example.com";
const PUBLIC_URL: &str = "https://voice.test";
const OPENAI_SIP_URI: &str = "sip:proj_test123@sip.api.openai.com;transport=tls";

const DIAL_PROFILE: &str = r#"
default = true
greeting = "Greet the caller."

[escalation]
action = "twilio_dial"
target = "tel:+18885550123"
handoff_line = "Connecting you to billing now."

[escalation.connect]
queue = "billing"
token_ttl_secs = 300

[escalation.fallback]
target = "sip:queue@pbx.example.com"
"#;

struct Setup {
    h: Harness,
    twilio: FakeTwilio,
}

async fn start() -> Setup {
    let twilio = FakeTwilio::start().await;
    let emulator = Emulator::start(EmulatorConfig {
        api_key: API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(prompts.join("dial.toml"), DIAL_PROFILE).unwrap();
    std::fs::write(prompts.join("dial.md"), "You are the test agent.\n").unwrap();
    let mut config = test_config(&emulator, dir.path(), &prompts);
    config.after_call.summary_timeout_ms = 300;
    // The test ends the AI leg itself once the redirect arrived: no window race under load.
    config.monitor.refer_outcome_window_ms = 20_000;
    config.twilio.api_base_url = twilio.base_url.clone();
    config.twilio.account_sid = ACCOUNT_SID.to_string();
    config.twilio.public_url = PUBLIC_URL.to_string();
    config.twilio.voice_mode = TwilioVoiceMode::Sip;
    config.twilio.openai_sip_uri = OPENAI_SIP_URI.to_string();
    let mut secrets = test_secrets();
    secrets.twilio_auth_token = Some(Secret::new(AUTH_TOKEN));
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
        twilio,
    }
}

/// The caller explains, the model calls `transfer_to_human`, then the caller stays on the line.
/// `parent`: the SIP headers naming the Twilio parent call (see [`Setup::dial_headers`]).
fn transfer_script(parent: &[(String, String)]) -> Script {
    let mut s = Script::new()
        .from(format!("<sip:{CALLER}@pstn.twilio.com>;tag=t1"))
        .auto_reply(false)
        .greeting_wait_ms(300)
        .turn_gap_ms(20)
        .tool_timeout_ms(5_000);
    for (name, value) in parent {
        s = s.header(name, value);
    }
    // No escalation phrase: the tool call is the trigger.
    s.caller("I was charged twice for my order last week.")
        .wait_ms(100)
        .tool("transfer_to_human", json!({"reason": "billing dispute"}))
        .wait_ms(30_000)
}

impl Setup {
    async fn place(&self, script: Script) -> String {
        let placed = self
            .h
            .emulator
            .place_call(&self.h.webhook_url(), &webhook_secret(), script)
            .await
            .unwrap();
        assert_eq!(placed.status, 200);
        placed.call_id
    }

    async fn wait_final(&self, call_id: &str) -> (CallView, CallRecord) {
        let record = self
            .h
            .wait_record(call_id, Duration::from_secs(30), |r| r.state.is_final())
            .await;
        (self.h.emulator.call(call_id).unwrap(), record)
    }

    /// Waits until the fake Twilio saw an update of `sid`; returns its form fields.
    async fn wait_update(&self, sid: &str) -> Vec<(String, String)> {
        for _ in 0..600 {
            if let Some(u) = self
                .twilio
                .call(sid)
                .and_then(|c| c.updates.first().cloned())
            {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no update of {sid} at the fake Twilio");
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

    fn local(&self, path: &str) -> String {
        format!("{}{path}", self.h.server.base_url())
    }

    /// The headers Twilio puts on the INVITE to OpenAI for the parent call `sid`: the URI
    /// headers of the `<Dial><Sip>` our signed voice webhook answers.
    async fn dial_headers(&self, sid: &str) -> Vec<(String, String)> {
        let params = self.twilio.voice_params(sid, CALLER, LINE);
        let resp = self
            .twilio
            .post_webhook_signed_as(
                &self.local("/twilio/voice"),
                &format!("{PUBLIC_URL}/twilio/voice"),
                &params,
            )
            .await;
        assert_eq!(resp.status(), 200);
        sip_dial_headers(&resp.text().await.unwrap()).expect("<Dial><Sip> TwiML")
    }
}

/// HMAC-SHA256 of our `CallSid` binding, computed here independently of the code under test:
/// `hex(HMAC-SHA256(auth token, "voxmachina twilio CallSid binding v1\n" + CallSid))`.
fn expected_binding(sid: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(AUTH_TOKEN.as_bytes()).unwrap();
    mac.update(b"voxmachina twilio CallSid binding v1\n");
    mac.update(sid.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_mode_voice_webhook_dials_openai_with_the_call_sid() {
    let s = start().await;
    let sid = s.twilio.add_inbound_call(CALLER, LINE);
    let params = s.twilio.voice_params(&sid, CALLER, LINE);
    let resp = s
        .twilio
        .post_webhook_signed_as(
            &s.local("/twilio/voice"),
            &format!("{PUBLIC_URL}/twilio/voice"),
            &params,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let mac = expected_binding(&sid);
    assert_eq!(
        resp.text().await.unwrap(),
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Sip>{OPENAI_SIP_URI}?X-Twilio-CallSid={sid}&amp;X-Voxmachina-CallSid-Mac={mac}</Sip></Dial></Response>"#
        )
    );
    // No record for the parent: the SIP call's record (created by the OpenAI webhook) is it.
    assert_eq!(s.h.store().get_call(&sid).await.unwrap(), None);

    // The port quirk (twilio-python `RequestValidator`): a signature over the URL with :443 is accepted.
    let resp = s
        .twilio
        .post_webhook_signed_as(
            &s.local("/twilio/voice"),
            "https://voice.test:443/twilio/voice",
            &params,
        )
        .await;
    assert_eq!(resp.status(), 200);

    // Signed over another URL, or not signed: 403, nothing answered.
    let resp = s
        .twilio
        .post_webhook_signed_as(
            &s.local("/twilio/voice"),
            "https://elsewhere.test/twilio/voice",
            &params,
        )
        .await;
    assert_eq!(resp.status(), 403);
    let resp =
        s.h.http
            .post(s.local("/twilio/voice"))
            .form(&params)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 403);
    // A tampered parameter breaks the signature too.
    let mut tampered = params.clone();
    tampered.push(("SipHeader_X-Extra".into(), "1".into()));
    let sig = voxmachina::twilio::signature::sign(
        &Secret::new(AUTH_TOKEN),
        &format!("{PUBLIC_URL}/twilio/voice"),
        &params,
    );
    let resp = s
        .twilio
        .post_webhook_with_signature(&s.local("/twilio/voice"), &tampered, &sig)
        .await;
    assert_eq!(resp.status(), 403);
    assert!(
        s.twilio.requests().is_empty(),
        "no REST request for a webhook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dial_redirects_the_parent_call_with_the_token_as_digits() {
    let s = start().await;
    let sid = s.twilio.add_inbound_call(CALLER, LINE);
    let call_id = s.place(transfer_script(&s.dial_headers(&sid).await)).await;

    let update = s.wait_update(&sid).await;
    // Twilio dropped the <Dial><Sip> leg: OpenAI ends the session.
    assert!(s.h.emulator.end_from_far_side(&call_id));
    let (view, record) = s.wait_final(&call_id).await;

    assert_eq!(record.twilio_call_sid.as_deref(), Some(sid.as_str()));
    assert_eq!(record.state, CallState::Transferred, "{record:#?}");
    assert!(view.refer_targets.is_empty(), "no REFER: {view:?}");
    let esc = record.escalation.as_ref().expect("escalation");
    assert_eq!(esc.action, "twilio_dial");
    assert_eq!(esc.outcome, "transferred");
    assert_eq!(esc.target, format!("tel:{CONNECT_DID}"));
    let token = esc
        .handover
        .as_ref()
        .and_then(|h| h.token.clone())
        .expect("token minted");
    assert!(voxmachina::store::tokens::is_token(&token), "{token}");

    // The exact REST request: the parent call's update path, Basic auth as the account, one
    // form field `Twiml` with the token keyed in after four pauses.
    let reqs = s.twilio.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json")
    );
    assert_eq!(
        req.basic_auth(),
        Some((ACCOUNT_SID.to_string(), AUTH_TOKEN.to_string()))
    );
    assert_eq!(req.field_names(), ["Twiml"]);
    let expected = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number sendDigits="wwww{token}#">{CONNECT_DID}</Number></Dial></Response>"#
    );
    assert_eq!(req.field("Twiml"), Some(expected.as_str()));
    assert_eq!(update, vec![("Twiml".to_string(), expected)]);

    // The token's payload is there for the contact flow, under the caller's number.
    let payload =
        s.h.store()
            .peek_token(&token, chrono::Utc::now())
            .await
            .unwrap()
            .expect("live token");
    assert_eq!(payload.call_id, call_id);
    assert_eq!(payload.route_to_queue.as_deref(), Some("billing"));

    let events = s.h.store().events(&call_id).await.unwrap();
    let sent = events
        .iter()
        .find(|e| e.kind == "twilio_dial_sent")
        .expect("twilio_dial_sent event");
    assert_eq!(sent.detail["twilio_call_sid"], sid.as_str());
    assert_eq!(sent.detail["send_digits"], true);

    let metrics = s.metrics().await;
    for needle in [
        r#"voxmachina_handover_tokens_total{event="minted"}"#,
        r#"voxmachina_handovers_total{action="twilio_dial",outcome="transferred"}"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_dial_falls_back_to_refer_without_a_parent_call_or_on_a_twilio_error() {
    let s = start().await;

    // 1. No X-Twilio-CallSid on the INVITE: nothing to redirect, REFER to the fallback.
    let call_id = s
        .place(transfer_script(&[]).refer_faults([ReferFault::Transfer]))
        .await;
    let (view, record) = s.wait_final(&call_id).await;
    assert_eq!(record.twilio_call_sid, None);
    assert_eq!(view.refer_targets, vec![FALLBACK.to_string()]);
    assert_eq!(record.state, CallState::Transferred);
    let esc = record.escalation.unwrap();
    assert_eq!(
        (esc.target.as_str(), esc.outcome.as_str()),
        (FALLBACK, "transferred")
    );
    let events = s.h.store().events(&call_id).await.unwrap();
    let failed = events
        .iter()
        .find(|e| e.kind == "twilio_dial_failed")
        .expect("twilio_dial_failed event");
    assert_eq!(
        failed.detail["error"],
        "no parent Twilio CallSid on this call"
    );
    assert!(s.twilio.requests().is_empty());

    // 2. A malformed header value is ignored the same way.
    let call_id = s
        .place(
            transfer_script(&[("X-Twilio-CallSid".into(), "CA-not-a-sid".into())])
                .refer_faults([ReferFault::Transfer]),
        )
        .await;
    let (view, record) = s.wait_final(&call_id).await;
    assert_eq!(record.twilio_call_sid, None);
    assert_eq!(view.refer_targets, vec![FALLBACK.to_string()]);

    // 3. Twilio refuses the update: the fallback REFER takes the caller.
    let sid = s.twilio.add_inbound_call(CALLER, LINE);
    s.twilio.fail_next(500, 20500, "Internal Server Error");
    let call_id = s
        .place(transfer_script(&s.dial_headers(&sid).await).refer_faults([ReferFault::Transfer]))
        .await;
    let (view, record) = s.wait_final(&call_id).await;
    assert_eq!(record.twilio_call_sid.as_deref(), Some(sid.as_str()));
    assert_eq!(view.refer_targets, vec![FALLBACK.to_string()]);
    assert_eq!(record.state, CallState::Transferred);
    assert_eq!(s.twilio.requests().len(), 1, "one refused update");
    assert!(
        s.twilio.call(&sid).unwrap().updates.is_empty(),
        "the refused update changed nothing"
    );
    let events = s.h.store().events(&call_id).await.unwrap();
    let failed = events
        .iter()
        .find(|e| e.kind == "twilio_dial_failed")
        .expect("twilio_dial_failed event");
    assert!(
        failed.detail["error"].as_str().unwrap().contains("20500"),
        "{failed:?}"
    );

    let metrics = s.metrics().await;
    // The recorder is process-wide (other tests of this binary count too): at least these 3.
    let needle = r#"voxmachina_handovers_total{action="twilio_dial",outcome="transferred"} "#;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("missing {needle} in\n{metrics}"));
    assert!(count >= 3, "{count}");
}
