//! The Twilio HTTP surface of the media path: signed voice webhooks (accepted, refused,
//! behind a proxy), the signed Media Streams upgrade, reject rules as TwiML, status callbacks,
//! `POST /v1/calls/outbound` and its REST form on the fake Twilio, `[session] audio` and
//! `[[after_call.extract]]` on media calls, and `voxmachina call`.

mod media_bridge_common;
mod support;

use std::time::Duration;

use media_bridge_common::*;
use serde_json::Value;
use support::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN};
use support::harness::Harness;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use voxmachina::calls::record::{Api, CallState};
use voxmachina::prompts::{MediaAudio, ProfileSet};
use voxmachina::twilio::signature;
use voxmachina_emulator::Script;
use voxmachina_emulator::phone::stream_of_twiml;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_voice_webhook_gets_connect_stream_twiml_and_a_record() {
    let m = start(|_| {}).await;
    let sid = call_sid(10);
    let params = m.twilio.voice_params(&sid, CALLER, PCM16_LINE);
    let resp = m
        .twilio
        .post_webhook_signed_as(
            &m.local("/twilio/voice"),
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
    let twiml = resp.text().await.unwrap();
    // A fresh single-use stream token first (random: checked for shape, then put in the
    // expected document), then the informational parameters.
    let (_, params) = stream_of_twiml(&twiml).unwrap();
    let token = &params[0];
    assert_eq!(token.0, "stream_token");
    assert!(
        voxmachina::store::tokens::is_stream_token(&token.1),
        "{twiml}"
    );
    assert_eq!(
        twiml,
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{STREAM_URL}" statusCallback="{PUBLIC_URL}/twilio/status"><Parameter name="stream_token" value="{}"/><Parameter name="profile" value="media_pcm16"/><Parameter name="direction" value="inbound"/><Parameter name="from" value="{CALLER}"/><Parameter name="to" value="{PCM16_LINE}"/></Stream></Connect></Response>"#,
            token.1
        )
    );
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(rec.api, Api::TwilioMedia);
    assert_eq!(rec.state, CallState::Accepting);
    assert_eq!(rec.profile, "media_pcm16");
    assert_eq!(
        (rec.caller.as_deref(), rec.dialed.as_deref()),
        (Some(CALLER), Some(PCM16_LINE))
    );
    let media = rec.media.unwrap();
    assert_eq!(
        (media.direction.as_str(), media.audio.as_str()),
        ("inbound", "pcm16")
    );

    // An unmatched number gets the default profile (pcmu by default); the port quirk of
    // Twilio's signing (`:443`) is accepted (twilio-python `RequestValidator`).
    let sid2 = call_sid(11);
    let params = m.twilio.voice_params(&sid2, CALLER, "+18005559999");
    let resp = m
        .twilio
        .post_webhook_signed_as(
            &m.local("/twilio/voice"),
            "https://voice.test:443/twilio/voice",
            &params,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (_, p) = stream_of_twiml(&resp.text().await.unwrap()).unwrap();
    assert!(p.contains(&("profile".to_string(), "default".to_string())));
    let rec = m.h.store().get_call(&sid2).await.unwrap().unwrap();
    assert_eq!(rec.media.unwrap().audio, "pcmu");

    // A retried webhook is answered the same way, with a token of its own.
    let (status, again) = m.voice_webhook(&sid, CALLER, PCM16_LINE).await;
    assert_eq!(status, 200);
    assert!(again.contains(r#"value="media_pcm16""#));
    let (_, again_params) = stream_of_twiml(&again).unwrap();
    assert_eq!(again_params[0].0, "stream_token");
    assert_ne!(&again_params[0], token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_webhook_signature_is_refused_when_wrong() {
    let m = start(|_| {}).await;
    let sid = call_sid(12);
    let url = m.local("/twilio/voice");
    let params = m.twilio.voice_params(&sid, CALLER, PCMU_LINE);
    // Signed over the URL we listen on, not the public URL Twilio used.
    let r = m.twilio.post_webhook(&url, &params).await;
    assert_eq!(r.status(), 403);
    // Garbage and an empty signature.
    let r = m
        .twilio
        .post_webhook_with_signature(&url, &params, "bm90IGEgc2lnbmF0dXJl")
        .await;
    assert_eq!(r.status(), 403);
    let r = m
        .twilio
        .post_webhook_with_signature(&url, &params, "")
        .await;
    assert_eq!(r.status(), 403);
    // No header at all.
    let r = reqwest::Client::new()
        .post(&url)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A parameter changed after signing.
    let sig = signature::sign(
        &m.twilio.auth_token(),
        &format!("{PUBLIC_URL}/twilio/voice"),
        &params,
    );
    let mut tampered = params.clone();
    for (n, v) in &mut tampered {
        if n == "From" {
            *v = "+19005550199".into();
        }
    }
    let r = m
        .twilio
        .post_webhook_with_signature(&url, &tampered, &sig)
        .await;
    assert_eq!(r.status(), 403);
    // Another account's token.
    let other = voxmachina::config::Secret::new("another-token");
    let sig = signature::sign(&other, &format!("{PUBLIC_URL}/twilio/voice"), &params);
    let r = m
        .twilio
        .post_webhook_with_signature(&url, &params, &sig)
        .await;
    assert_eq!(r.status(), 403);
    assert!(
        m.h.store().get_call(&sid).await.unwrap().is_none(),
        "nothing stored for refused webhooks"
    );
    // Correctly signed but missing CallSid: 400.
    let partial: Vec<(String, String)> = params
        .iter()
        .filter(|(n, _)| n != "CallSid")
        .cloned()
        .collect();
    let r = m
        .twilio
        .post_webhook_signed_as(&url, &format!("{PUBLIC_URL}/twilio/voice"), &partial)
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upgrade_needs_the_signature_over_the_public_stream_url() {
    let m = start(|_| {}).await;
    let ws = m.media_ws();
    // Signed as Twilio signs it: the wss:// URL of the TwiML.
    let ok = m.twilio.open_media_stream_signed_as(&ws, STREAM_URL).await;
    assert!(ok.is_ok());
    // With the trailing-slash variant of Twilio's security page.
    let ok = m
        .twilio
        .open_media_stream_signed_as(&ws, &format!("{STREAM_URL}/"))
        .await;
    assert!(ok.is_ok());
    for bad in [
        m.twilio.open_media_stream(&ws).await.err(),
        m.twilio
            .open_media_stream_with_signature(&ws, None)
            .await
            .err(),
        m.twilio
            .open_media_stream_with_signature(&ws, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
            .await
            .err(),
    ] {
        match bad {
            Some(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403)
            }
            other => panic!("expected HTTP 403, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_without_public_url_the_forwarded_headers_are_used() {
    let m = start(|c| c.twilio.public_url = String::new()).await;
    let sid = call_sid(13);
    let params = m.twilio.voice_params(&sid, CALLER, PCMU_LINE);
    let sig = signature::sign(
        &m.twilio.auth_token(),
        "https://fwd.example/twilio/voice",
        &params,
    );
    let resp = reqwest::Client::new()
        .post(m.local("/twilio/voice"))
        .header("X-Twilio-Signature", sig)
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "fwd.example, inner.proxy")
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (url, _) = stream_of_twiml(&resp.text().await.unwrap()).unwrap();
    assert_eq!(url, "wss://fwd.example/twilio/media");
    // The upgrade is checked against the same forwarded host.
    let mut req = m.media_ws().into_client_request().unwrap();
    let sig = signature::sign(&m.twilio.auth_token(), &url, &[]);
    req.headers_mut()
        .insert("x-twilio-signature", sig.parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-host", "fwd.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Without the forwarded host the same signature does not match the Host we see.
    let mut req = m.media_ws().into_client_request().unwrap();
    let sig = signature::sign(&m.twilio.auth_token(), &url, &[]);
    req.headers_mut()
        .insert("x-twilio-signature", sig.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_rules_answer_twiml_and_store_rejected() {
    let m = start(|_| {}).await;
    // Blocklist: hang up without a word.
    let sid = call_sid(20);
    let (status, twiml) = m.voice_webhook(&sid, "+19005550199", "+18005550111").await;
    assert_eq!(status, 200);
    assert_eq!(
        twiml,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"#
    );
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.end_reason.as_deref()),
        (CallState::Rejected, Some("blocked_caller"))
    );
    // A retry of that webhook gets the same answer.
    let (_, again) = m.voice_webhook(&sid, "+19005550199", "+18005550111").await;
    assert_eq!(again, twiml);
    // Closed hours.
    let sid = call_sid(21);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, "+18005550122").await;
    assert!(
        twiml.contains("<Say>Sorry, we are closed right now.")
            && twiml.ends_with("<Hangup/></Response>"),
        "{twiml}"
    );
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(rec.end_reason.as_deref(), Some("closed_hours"));
    // Capacity: one live call on the `single` line, the second is turned away.
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let first = call_sid(22);
    let (_, twiml) = m.voice_webhook(&first, CALLER, "+18005550133").await;
    let phone = m.phone(&first, &twiml).await;
    m.session(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !m.h.server.state.registry().contains(&first) {
        assert!(tokio::time::Instant::now() < deadline, "first call bridged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = call_sid(23);
    let (_, twiml) = m
        .voice_webhook(&second, "+14155550124", "+18005550133")
        .await;
    assert!(
        twiml.contains("<Say>Sorry, all of our lines are busy"),
        "{twiml}"
    );
    let rec = m.h.store().get_call(&second).await.unwrap().unwrap();
    assert_eq!(rec.end_reason.as_deref(), Some("over_capacity"));
    phone.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_posts_the_expected_form_to_twilio() {
    let m = start(|_| {}).await;
    let resp =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": CALLER, "profile": "media_pcmu"}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let sid = body["call"]["call_id"].as_str().unwrap().to_string();
    assert_eq!(body["call"]["state"], "accepting");
    assert_eq!(body["call"]["api"], "twilio_media");
    assert_eq!(body["call"]["media"]["direction"], "outbound");
    assert_eq!(body["call"]["media"]["twilio_status"], "queued");
    assert_eq!(body["call"]["dialed"], CALLER);
    assert_eq!(body["call"]["caller"], FROM_NUMBER);

    let reqs = m.twilio.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    );
    assert_eq!(
        req.basic_auth(),
        Some((ACCOUNT_SID.to_string(), AUTH_TOKEN.to_string()))
    );
    assert_eq!(
        req.field_names(),
        vec![
            "To",
            "From",
            "Twiml",
            "StatusCallback",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent",
            "StatusCallbackEvent"
        ]
    );
    assert_eq!(req.field("To"), Some(CALLER));
    assert_eq!(req.field("From"), Some(FROM_NUMBER));
    assert_eq!(
        req.field("StatusCallback"),
        Some(format!("{PUBLIC_URL}/twilio/status").as_str())
    );
    assert_eq!(
        req.fields("StatusCallbackEvent"),
        vec!["initiated", "ringing", "answered", "completed"]
    );
    let twiml = req.field("Twiml").unwrap();
    assert!(twiml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://voice.test/twilio/media""#));
    let (url, params) = stream_of_twiml(twiml).unwrap();
    assert_eq!(url, STREAM_URL);
    assert_eq!(params[0].0, "stream_token");
    assert!(voxmachina::store::tokens::is_stream_token(&params[0].1));
    assert_eq!(
        params[1..],
        vec![
            ("profile".to_string(), "media_pcmu".to_string()),
            ("direction".to_string(), "outbound".to_string()),
            ("from".to_string(), FROM_NUMBER.to_string()),
            ("to".to_string(), CALLER.to_string()),
        ]
    );
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(rec.state, CallState::Accepting);

    // Refusals: nothing reaches Twilio.
    for (body, status) in [
        (serde_json::json!({"to": "4155550123"}), 400),
        (serde_json::json!({"to": CALLER, "profile": "nope"}), 400),
    ] {
        let r =
            m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
                .json(&body)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), status, "{body}");
    }
    let r =
        m.h.http
            .post(m.local("/v1/calls/outbound"))
            .json(&serde_json::json!({"to": CALLER}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401, "admin token required");
    assert_eq!(m.twilio.requests().len(), 1);
    // Twilio's own refusal is passed on as 502 with its message.
    m.twilio.fail_next(
        400,
        21211,
        "The 'To' number +14155550000 is not a valid phone number.",
    );
    let r =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": "+14155550000"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("21211"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_are_signed_recorded_and_end_unanswered_calls() {
    let m = start(|_| {}).await;
    let resp =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": CALLER}))
            .send()
            .await
            .unwrap();
    let sid = resp.json::<Value>().await.unwrap()["call"]["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    let base = [("AccountSid", ACCOUNT_SID), ("CallSid", sid.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, &str)> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(
        m.status_callback(&with(&[("CallStatus", "ringing"), ("SequenceNumber", "1")]))
            .await,
        200
    );
    assert_eq!(
        m.h.store().get_call(&sid).await.unwrap().unwrap().state,
        CallState::Accepting
    );
    // Unsigned callbacks are refused.
    let r = reqwest::Client::new()
        .post(m.local("/twilio/status"))
        .form(&[("CallSid", sid.as_str()), ("CallStatus", "no-answer")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        m.status_callback(&with(&[
            ("CallStatus", "no-answer"),
            ("CallDuration", "0"),
            ("SequenceNumber", "2")
        ]))
        .await,
        200
    );
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.end_reason.as_deref()),
        (CallState::Missed, Some("no_answer"))
    );
    assert_eq!(
        rec.media.unwrap().twilio_status.as_deref(),
        Some("no-answer")
    );
    // A stream status callback is an event too.
    assert_eq!(
        m.status_callback(&with(&[
            ("StreamSid", "MZ00000000000000000000000000000001"),
            ("StreamEvent", "stream-error"),
            ("StreamError", "handshake failed"),
        ]))
        .await,
        200
    );
    let events = m.h.events(&sid).await;
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "twilio_status")
        .map(|e| e.detail["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["ringing", "no-answer"]);
    let stream = events
        .iter()
        .find(|e| e.kind == "twilio_stream_status")
        .unwrap();
    assert_eq!(stream.detail["stream_event"], "stream-error");
    assert_eq!(stream.detail["error"], "handshake failed");
    // A stream for a call that ended before it started is refused.
    let twiml = m.twilio.call(&sid).unwrap().twiml.unwrap();
    let phone = m.phone(&sid, &twiml).await;
    phone
        .wait_until(Duration::from_secs(5), |l| l.closed)
        .await
        .expect("stream refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_routes_are_404_when_twilio_is_not_configured() {
    let h = Harness::start().await;
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::POST, "/twilio/voice"),
        (reqwest::Method::GET, "/twilio/media"),
        (reqwest::Method::POST, "/twilio/status"),
    ] {
        let r = http
            .request(method, format!("{}{path}", h.server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = h
        .admin(reqwest::Method::POST, "/v1/calls/outbound")
        .json(&serde_json::json!({"to": CALLER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn profiles_take_an_audio_mode_and_extract_rules() {
    let dir = tempfile::tempdir().unwrap();
    write_prompts(dir.path());
    let set = ProfileSet::load(dir.path()).unwrap();
    assert_eq!(
        set.get("media_pcm16").unwrap().session.audio,
        MediaAudio::Pcm16
    );
    assert_eq!(
        set.get("media_pcmu").unwrap().session.audio,
        MediaAudio::Pcmu
    );
    assert_eq!(set.get("default").unwrap().session.audio, MediaAudio::Pcmu);
    let rules = &set.get("media_pcmu").unwrap().after_call.extract;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].name, "confirmation_number");

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("a.md"), "x\n").unwrap();
    std::fs::write(
        bad.path().join("a.toml"),
        "default = true\n[[after_call.extract]]\nname = 'ok'\nregex = 'a(b)'\n[[after_call.extract]]\nname = 'broken'\nregex = '('\n",
    )
    .unwrap();
    let errs = ProfileSet::load(bad.path()).unwrap_err().to_string();
    assert!(
        errs.contains("a.toml:7: after_call.extract \"broken\": bad regex"),
        "{errs}"
    );
    std::fs::write(
        bad.path().join("a.toml"),
        "default = true\n[session]\naudio = \"opus\"\n",
    )
    .unwrap();
    let errs = ProfileSet::load(bad.path()).unwrap_err().to_string();
    assert!(
        errs.contains("a.toml:3:") && errs.contains("opus"),
        "{errs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_places_the_call_and_prints_the_record_when_it_ends() {
    let m = start(|_| {}).await;
    m.h.emulator.push_model_script(
        Script::new()
            .greeting("Hello, this is Example Corp calling.")
            .reply(REPLY_LINE)
            .caller("Hello, thanks for calling. How can I help you today?"),
    );
    let base = m.h.server.base_url();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .args(["call", CALLER, "--profile", "media_pcmu", "--server", &base])
        .env("VOXMACHINA_ADMIN_TOKEN", support::harness::ADMIN_TOKEN)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Twilio receives the create, the callee answers, the stream opens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let sid = loop {
        if let Some(sid) = m.twilio.calls().keys().next().cloned() {
            break sid;
        }
        assert!(tokio::time::Instant::now() < deadline, "no call placed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let twiml = m.twilio.call(&sid).unwrap().twiml.unwrap();
    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;
    phone.say(&fixture_speech());
    m.h.emulator
        .wait_for(&session, Duration::from_secs(20), |v| {
            v.agent_lines.len() == 2
        })
        .await
        .expect("the callee was answered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    phone.stop();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the CLI returned")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("calling {CALLER} ({sid}, profile media_pcmu)")),
        "{stdout}"
    );
    assert!(stdout.contains("  state: ended"), "{stdout}");
    assert!(stdout.contains(&format!("agent: {REPLY_LINE}")), "{stdout}");
    assert!(stdout.contains("confirmation_number = R7K2P9"), "{stdout}");
    assert!(stdout.contains("\"direction\": \"outbound\""), "{stdout}");
}

const REPLY_LINE: &str =
    "Thanks, your confirmation number is K4T7Q2. No wait: confirmation number is R7K2P9.";

/// Shared-key signing (`X-Twilio-Webhooks-Signature-Settings`, HMAC-SHA256): verified with the
/// configured `TWILIO_WEBHOOK_SHARED_KEY` on the voice webhook and the Media Streams upgrade;
/// the Auth Token's signature does not pass when the header names the shared key; an unknown
/// algorithm and a missing shared key fail closed (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_key_signed_webhooks_are_verified_with_hmac_sha256() {
    use voxmachina::config::Secret;
    use voxmachina::twilio::signature::{Algorithm, SETTINGS_HEADER, sign_with};
    const SHARED: &str = "shared-key-secret-0123456789abcdef";
    const SETTINGS: &str = "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256";
    let m = start_with_secrets(
        |_| {},
        |s| s.twilio_webhook_shared_key = Some(Secret::new(SHARED)),
    )
    .await;
    let url = m.local("/twilio/voice");
    let public = format!("{PUBLIC_URL}/twilio/voice");
    let post = |settings: Option<&'static str>, sig: String, params: Vec<(String, String)>| {
        let mut req = reqwest::Client::new()
            .post(&url)
            .header(signature::HEADER, sig)
            .form(&params);
        if let Some(s) = settings {
            req = req.header(SETTINGS_HEADER, s);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let params = m.twilio.voice_params(&call_sid(40), CALLER, PCMU_LINE);
    let shared = Secret::new(SHARED);
    let good = sign_with(Algorithm::HmacSha256, &shared, &public, &params);
    assert_eq!(good.len(), 44, "base64 of a 32-byte digest");
    assert_eq!(
        post(Some(SETTINGS), good.clone(), params.clone()).await,
        200
    );
    // The same signature without the header is checked as an Auth Token HMAC-SHA1: refused.
    assert_eq!(post(None, good.clone(), params.clone()).await, 403);
    // The Auth Token's classic signature does not pass once the header names the shared key.
    let classic = signature::sign(&m.twilio.auth_token(), &public, &params);
    assert_eq!(
        post(Some(SETTINGS), classic.clone(), params.clone()).await,
        403
    );
    assert_eq!(post(None, classic, params.clone()).await, 200);
    // Unknown algorithm: refused even with a signature that would match under SHA-256.
    assert_eq!(
        post(
            Some("key=k,algorithm=HMAC_SHA512"),
            good.clone(),
            params.clone()
        )
        .await,
        403
    );
    // Tampered parameter under the shared key.
    let mut tampered = params.clone();
    tampered.push(("Digits".into(), "1".into()));
    assert_eq!(post(Some(SETTINGS), good, tampered).await, 403);

    // The Media Streams upgrade takes the same header.
    let ws_sig = sign_with(Algorithm::HmacSha256, &shared, STREAM_URL, &[]);
    let mut req = m.media_ws().into_client_request().unwrap();
    req.headers_mut()
        .insert(signature::HEADER, ws_sig.parse().unwrap());
    req.headers_mut()
        .insert(SETTINGS_HEADER, SETTINGS.parse().unwrap());
    let refused_without_header = {
        let mut r = m.media_ws().into_client_request().unwrap();
        r.headers_mut()
            .insert(signature::HEADER, ws_sig.parse().unwrap());
        tokio_tungstenite::connect_async(r).await.is_err()
    };
    assert!(
        refused_without_header,
        "SHA-256 signature without the header"
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("shared-key signed upgrade accepted");
    drop(ws);

    // Without a configured shared key, the header is refused (fail closed).
    let m2 = start(|_| {}).await;
    let params = m2.twilio.voice_params(&call_sid(41), CALLER, PCMU_LINE);
    let sig = sign_with(Algorithm::HmacSha256, &shared, &public, &params);
    let status = reqwest::Client::new()
        .post(m2.local("/twilio/voice"))
        .header(signature::HEADER, sig)
        .header(SETTINGS_HEADER, SETTINGS)
        .form(&params)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}
