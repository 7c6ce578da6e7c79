//! The core call path end to end: the real controller on 127.0.0.1:0, the OpenAI SIP emulator
//! speaking OpenAI's documented REST and sideband shapes, a real SQLite file.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use support::harness::{Harness, webhook_secret};
use voxmachina::calls::record::{CallState, Speaker};
use voxmachina_emulator::{EmuCallStatus, Script};

fn script(toml: &str) -> Script {
    Script::from_toml_str(toml).expect("test script parses")
}

/// Caller asks a question, then asks for a person; the REFER takes.
const QUESTION_THEN_HUMAN: &str = r#"
[call]
from = '"Ada Lovelace" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl'
to = "<sip:+18005550100@sip.api.openai.com>"
[agent]
replies = ["We are open nine to five."]
[[turn]]
caller = "Hi, what are your opening hours?"
[[turn]]
caller = "Thanks. Can I speak to a real person please?"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_call_is_accepted_once_with_profile_transcribed_and_transferred() {
    let h = Harness::start().await;
    let placed = h
        .emulator
        .place_call(
            &h.webhook_url(),
            &webhook_secret(),
            script(QUESTION_THEN_HUMAN),
        )
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let record = h.wait_final(&placed.call_id).await;
    assert_eq!(record.state, CallState::Transferred, "{record:#?}");
    assert_eq!(record.profile, "default");
    assert_eq!(record.caller.as_deref(), Some("+14155550123"));
    assert_eq!(record.dialed.as_deref(), Some("+18005550100"));
    let esc = record.escalation.expect("escalation recorded");
    assert_eq!(
        (esc.trigger.as_str(), esc.outcome.as_str()),
        ("caller_phrase", "transferred")
    );
    assert_eq!(esc.target, "tel:+14155550100");

    let view = h.emulator.call(&placed.call_id).unwrap();
    assert_eq!(view.accept_count, 1);
    let body = view.accept_body.unwrap();
    assert_eq!(body["type"], "realtime");
    assert!(
        body["instructions"]
            .as_str()
            .unwrap()
            .contains("Example Corp test receptionist")
    );
    assert!(
        body["audio"]["input"]["transcription"]["model"].is_string(),
        "transcription on: {body}"
    );
    assert!(
        body["audio"].get("format").is_none() && body["audio"]["input"].get("format").is_none()
    );
    assert_eq!(view.refer_targets, vec!["tel:+14155550100".to_string()]);

    // Greeting, then the caller's two lines and the agent's answers, in order.
    let transcript = h.transcript(&placed.call_id).await;
    let caller: Vec<_> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        caller,
        [
            "Hi, what are your opening hours?",
            "Thanks. Can I speak to a real person please?"
        ]
    );
    let agent: Vec<_> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Agent)
        .map(|l| l.text.as_str())
        .collect();
    assert!(
        agent.contains(&"Let me connect you with a colleague now. Please hold."),
        "{agent:?}"
    );
    assert!(agent.contains(&"We are open nine to five."), "{agent:?}");
    let first_client_event = &view.client_events[0];
    assert_eq!(
        first_client_event["type"], "response.create",
        "greeting first"
    );

    let kinds = h.event_kinds(&placed.call_id).await;
    for k in [
        "webhook_received",
        "accepted",
        "sideband_attached",
        "escalation_triggered",
        "refer_sent",
        "transferred",
        "call_ended",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_never_accept() {
    let h = Harness::start().await;
    let url = h.webhook_url();
    let secret = webhook_secret();
    let now = chrono::Utc::now().timestamp();
    // Signed with the wrong key or at the wrong time.
    let wrong_key = "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==";
    for (name, signing_secret, ts) in [
        ("stale", secret.as_str(), now - 301),
        ("future", secret.as_str(), now + 301),
        ("wrong secret", wrong_key, now),
    ] {
        let pending = h.emulator.new_call(script(QUESTION_THEN_HUMAN));
        let status = h
            .emulator
            .deliver(&url, signing_secret, "wh_bad_case", ts, &pending.body)
            .await
            .unwrap();
        assert_eq!(status, 401, "{name}");
        assert_eq!(
            h.emulator.call(&pending.call_id).unwrap().accept_count,
            0,
            "{name}"
        );
    }
    // Tampered: a correct signature over the original body, one byte changed in transit.
    let pending = h.emulator.new_call(script(QUESTION_THEN_HUMAN));
    let mut tampered = pending.body.to_vec();
    let i = tampered.len() - 3;
    tampered[i] ^= 1;
    let status = deliver_signed_then_swap(&h, &url, &secret, &pending.body, &tampered, now).await;
    assert_eq!(status, 401, "tampered");
    assert_eq!(h.emulator.call(&pending.call_id).unwrap().accept_count, 0);
    // Unsigned: no webhook-* headers at all.
    let pending = h.emulator.new_call(script(QUESTION_THEN_HUMAN));
    let resp = h
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(pending.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Garbled timestamp.
    let resp = h
        .http
        .post(&url)
        .header("webhook-id", "wh_x")
        .header("webhook-timestamp", "yesterday")
        .header("webhook-signature", "v1,AAAA")
        .body(pending.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(h.emulator.call(&pending.call_id).unwrap().accept_count, 0);
    // Oversized body: refused before verification.
    let resp = h
        .http
        .post(&url)
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Nothing was ever recorded.
    let calls = h.store().list_calls(&Default::default()).await.unwrap();
    assert!(calls.is_empty(), "{calls:?}");
}

async fn deliver_signed_then_swap(
    h: &Harness,
    url: &str,
    secret: &str,
    signed: &[u8],
    sent: &[u8],
    ts: i64,
) -> u16 {
    let verifier = voxmachina::webhook::signature::Verifier::new(secret, 300).unwrap();
    let sig = verifier.sign("wh_tampered", &ts.to_string(), signed);
    h.http
        .post(url)
        .header("webhook-id", "wh_tampered")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(sent.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_concurrent_deliveries_accept_exactly_once() {
    let h = Harness::start().await;
    let url = h.webhook_url();
    let secret = webhook_secret();
    let pending = h.emulator.new_call(script(QUESTION_THEN_HUMAN));
    let now = chrono::Utc::now().timestamp();
    // Same webhook-id five times at once, then a retry with a new timestamp, then another id.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (e, url, secret, body) = (
            h.emulator.clone(),
            url.clone(),
            secret.clone(),
            pending.body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            e.deliver(&url, &secret, "wh_dup", now, &body)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        h.emulator
            .deliver(&url, &secret, "wh_dup", now + 5, &pending.body)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        h.emulator
            .deliver(&url, &secret, "wh_other_id", now, &pending.body)
            .await
            .unwrap(),
        200
    );
    h.wait_final(&pending.call_id).await;
    assert_eq!(
        h.emulator.call(&pending.call_id).unwrap().accept_count,
        1,
        "no second accept request at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_404_is_recorded_missed_and_acknowledged() {
    let h = Harness::start().await;
    let s = script(&format!(
        "{QUESTION_THEN_HUMAN}\n[faults]\naccept_statuses = [404]\n"
    ));
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let r = h.wait_final(&placed.call_id).await;
    assert_eq!(
        (r.state, r.end_reason.as_deref()),
        (CallState::Missed, Some("accept_404"))
    );
    assert_eq!(
        h.emulator
            .call(&placed.call_id)
            .unwrap()
            .sideband_connections,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_5xx_is_retried_within_budget() {
    let h = Harness::start().await;
    let s = script(&format!(
        "{QUESTION_THEN_HUMAN}\n[faults]\naccept_statuses = [503, 500]\n"
    ));
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    // Events are persisted in the background after the webhook is answered (6feb7f6).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let accepted = loop {
        if let Some(e) = h
            .events(&placed.call_id)
            .await
            .into_iter()
            .find(|e| e.kind == "accepted")
        {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no accepted event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(accepted.detail["attempts"], 3);
    assert_eq!(
        h.wait_final(&placed.call_id).await.state,
        CallState::Transferred
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failing_past_budget_answers_503_and_redelivery_accepts() {
    let h = Harness::start_with(|c| c.openai.accept_retry_budget_ms = 50).await;
    let s = script(&format!(
        "{QUESTION_THEN_HUMAN}\n[faults]\naccept_statuses = [503, 503, 503, 503, 503, 503]\n"
    ));
    let pending = h.emulator.new_call(s);
    let now = chrono::Utc::now().timestamp();
    let first = h
        .emulator
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_retry",
            now,
            &pending.body,
        )
        .await
        .unwrap();
    assert_eq!(first, 503);
    let r = h.store().get_call(&pending.call_id).await.unwrap().unwrap();
    assert_eq!(r.state, CallState::AcceptFailed);
    // OpenAI redelivers the same webhook-id until one attempt gets through.
    let mut status = 503;
    for _ in 0..10 {
        status = h
            .emulator
            .deliver(
                &h.webhook_url(),
                &webhook_secret(),
                "wh_retry",
                now,
                &pending.body,
            )
            .await
            .unwrap();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
    assert_eq!(h.successful_accepts(&pending.call_id), 1);
    assert_eq!(
        h.emulator.call(&pending.call_id).unwrap().accept_count,
        7,
        "six 503s, then one 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_rules_send_the_configured_sip_status() {
    let h = Harness::start().await;
    let url = h.webhook_url();
    let secret = webhook_secret();
    let call = |from: &str, to: &str| {
        script(&format!(
            "[call]\nfrom = \"<sip:{from}@carrier.example>;tag=1\"\nto = \"<sip:{to}@sip.api.openai.com>\"\n"
        ))
    };

    let blocked = h
        .emulator
        .place_call(&url, &secret, call("+19005550199", "+18005550111"))
        .await
        .unwrap();
    let by_prefix = h
        .emulator
        .place_call(&url, &secret, call("+16665550000", "+18005550111"))
        .await
        .unwrap();
    let allowed = h
        .emulator
        .place_call(&url, &secret, call("+14155550123", "+18005550111"))
        .await
        .unwrap();
    let closed = h
        .emulator
        .place_call(&url, &secret, call("+14155550123", "+18005550122"))
        .await
        .unwrap();
    for (placed, status, reason) in [
        (&blocked, 603, "blocked_caller"),
        (&by_prefix, 603, "blocked_caller"),
        (&closed, 480, "closed_hours"),
    ] {
        assert_eq!(placed.status, 200);
        let view = h.emulator.call(&placed.call_id).unwrap();
        assert!(
            matches!(view.status, EmuCallStatus::Rejected { status_code } if status_code == status),
            "{:?}",
            view.status
        );
        assert_eq!(view.accept_count, 0);
        let r = h.store().get_call(&placed.call_id).await.unwrap().unwrap();
        assert_eq!(
            (r.state, r.end_reason.as_deref()),
            (CallState::Rejected, Some(reason))
        );
    }
    assert_eq!(h.emulator.call(&allowed.call_id).unwrap().accept_count, 1);

    // Capacity 1: the first call stays up (no turns), the second is refused with 486.
    let first = h
        .emulator
        .place_call(&url, &secret, call("+14155550123", "+18005550133"))
        .await
        .unwrap();
    h.wait_record(&first.call_id, Duration::from_secs(5), |r| {
        r.state == CallState::Active
    })
    .await;
    let second = h
        .emulator
        .place_call(&url, &secret, call("+14155550124", "+18005550133"))
        .await
        .unwrap();
    let view = h.emulator.call(&second.call_id).unwrap();
    assert!(
        matches!(view.status, EmuCallStatus::Rejected { status_code: 486 }),
        "{:?}",
        view.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_is_chosen_by_sip_header() {
    let h = Harness::start().await;
    let s = script(
        r#"
[call]
from = "<sip:+14155550123@carrier.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
headers = [["X-Queue", "vip"]]
"#,
    );
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h
        .wait_record(&placed.call_id, Duration::from_secs(5), |r| {
            r.state == CallState::Active
        })
        .await;
    assert_eq!(r.profile, "vip");
    let body = h
        .emulator
        .call(&placed.call_id)
        .unwrap()
        .accept_body
        .unwrap();
    assert_eq!(body["audio"]["output"]["voice"], "cedar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negated_request_does_not_escalate() {
    let h = Harness::start().await;
    let s = script(
        r#"
[call]
from = "<sip:+14155550123@carrier.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
[[turn]]
caller = "No, I don't need a human, thanks."
[[turn]]
hangup = true
"#,
    );
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h.wait_final(&placed.call_id).await;
    assert_eq!(
        (r.state, r.end_reason.as_deref()),
        (CallState::Ended, Some("caller_hangup"))
    );
    assert!(r.escalation.is_none());
    assert!(
        h.emulator
            .call(&placed.call_id)
            .unwrap()
            .refer_targets
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_and_dtmf_triggers_escalate() {
    let h = Harness::start().await;
    let tool = script(
        r#"
[call]
from = "<sip:+14155550123@carrier.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
[[turn]]
tool = "transfer_to_human"
arguments = { reason = "billing dispute" }
"#,
    );
    let dtmf = script(
        r#"
[call]
from = "<sip:+14155550123@carrier.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
[[turn]]
dtmf = "5"
[[turn]]
dtmf = "0"
"#,
    );
    let t = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), tool)
        .await
        .unwrap();
    let d = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), dtmf)
        .await
        .unwrap();
    let rt = h.wait_final(&t.call_id).await;
    let rd = h.wait_final(&d.call_id).await;
    let et = rt.escalation.unwrap();
    assert_eq!(
        (rt.state, et.trigger.as_str(), et.detail.as_str()),
        (CallState::Transferred, "tool", "billing dispute")
    );
    let ed = rd.escalation.unwrap();
    assert_eq!(
        (rd.state, ed.trigger.as_str(), ed.detail.as_str()),
        (CallState::Transferred, "dtmf", "0")
    );
    // The tool call was answered with a function_call_output before the handoff line.
    let view = h.emulator.call(&t.call_id).unwrap();
    assert_eq!(view.function_outputs.len(), 1);
    let out: Value = serde_json::from_str(&view.function_outputs[0].1).unwrap();
    assert_eq!(out["status"], "transferring");
    // Both DTMF keys were recorded; only the profile's key escalated.
    let dtmf_events: Vec<_> = h
        .events(&d.call_id)
        .await
        .into_iter()
        .filter(|e| e.kind == "dtmf")
        .map(|e| e.detail["key"].clone())
        .collect();
    assert_eq!(dtmf_events, ["5", "0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_api_transfers_and_hangs_up() {
    let h = Harness::start().await;
    let quiet = || {
        script(
            "[call]\nfrom = \"<sip:+14155550123@c.example>;tag=1\"\nto = \"<sip:+18005550100@sip.api.openai.com>\"\n",
        )
    };
    let a = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), quiet())
        .await
        .unwrap();
    let b = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), quiet())
        .await
        .unwrap();
    for id in [&a.call_id, &b.call_id] {
        h.wait_record(id, Duration::from_secs(5), |r| r.state == CallState::Active)
            .await;
    }
    // No token → 401; unknown call → 404.
    let resp = h
        .http
        .post(format!(
            "{}/v1/calls/{}/transfer",
            h.server.base_url(),
            a.call_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = h
        .admin(Method::POST, "/v1/calls/rtc_nope/transfer")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = h
        .admin(Method::POST, &format!("/v1/calls/{}/transfer", a.call_id))
        .json(&serde_json::json!({"note": "supervisor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let resp = h
        .admin(Method::POST, &format!("/v1/calls/{}/hangup", b.call_id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ra = h.wait_final(&a.call_id).await;
    let rb = h.wait_final(&b.call_id).await;
    assert_eq!(
        (ra.state, ra.escalation.unwrap().trigger.as_str()),
        (CallState::Transferred, "operator")
    );
    assert_eq!(
        (rb.state, rb.end_reason.as_deref()),
        (CallState::Ended, Some("operator_hangup"))
    );
    assert!(matches!(
        h.emulator.call(&b.call_id).unwrap().status,
        EmuCallStatus::HungUp
    ));

    // The record and transcript are served; a call that is over can no longer be commanded.
    let got: Value = h
        .admin(Method::GET, &format!("/v1/calls/{}", a.call_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["call"]["state"], "transferred");
    assert!(got["events"].as_array().unwrap().len() >= 5);
    let resp = h
        .admin(Method::POST, &format!("/v1/calls/{}/hangup", a.call_id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let list: Value = h
        .admin(Method::GET, "/v1/calls?state=transferred")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["calls"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_refer_failure_falls_back_to_second_target() {
    let h = Harness::start().await;
    let s = script(&format!(
        "{QUESTION_THEN_HUMAN}\n[faults]\nrefer = [\"ignore\", \"transfer\"]\n"
    ));
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h.wait_final(&placed.call_id).await;
    assert_eq!(r.state, CallState::Transferred);
    assert_eq!(r.escalation.unwrap().target, "sip:queue@pbx.example.com");
    let view = h.emulator.call(&placed.call_id).unwrap();
    assert_eq!(
        view.refer_targets,
        ["tel:+14155550100", "sip:queue@pbx.example.com"]
    );
    assert!(
        h.event_kinds(&placed.call_id)
            .await
            .contains(&"transfer_not_confirmed".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_transfer_apologises_and_hangs_up() {
    let h = Harness::start().await;
    let s = script(&format!(
        "{QUESTION_THEN_HUMAN}\n[faults]\nrefer = [\"ignore\", 500]\n"
    ));
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h.wait_final(&placed.call_id).await;
    assert_eq!(
        (r.state, r.end_reason.as_deref()),
        (CallState::TransferFailed, Some("transfer_failed"))
    );
    assert_eq!(r.escalation.unwrap().outcome, "transfer_failed");
    let view = h.emulator.call(&placed.call_id).unwrap();
    assert!(
        view.agent_lines
            .iter()
            .any(|l| l == "I'm sorry, no one can take your call right now. Goodbye."),
        "{:?}",
        view.agent_lines
    );
    assert_eq!(view.hangup_count, 1);
    let kinds = h.event_kinds(&placed.call_id).await;
    assert!(kinds.contains(&"refer_failed".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abnormal_drop_reconnects_and_keeps_the_call() {
    let h = Harness::start().await;
    let s = script(
        r#"
[call]
from = "<sip:+14155550123@carrier.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
[[turn]]
caller = "First question before the drop."
[[turn]]
drop = true
[[turn]]
caller = "Second question after the drop."
[[turn]]
caller = "Let me talk to a manager."
"#,
    );
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h.wait_final(&placed.call_id).await;
    assert_eq!(r.state, CallState::Transferred);
    assert_eq!(
        h.emulator
            .call(&placed.call_id)
            .unwrap()
            .sideband_connections,
        2
    );
    let caller: Vec<_> = h
        .transcript(&placed.call_id)
        .await
        .into_iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| l.text)
        .collect();
    assert_eq!(
        caller,
        [
            "First question before the drop.",
            "Second question after the drop.",
            "Let me talk to a manager."
        ]
    );
    let greetings = h
        .emulator
        .call(&placed.call_id)
        .unwrap()
        .client_events
        .iter()
        .filter(|e| {
            e["type"] == "response.create"
                && e["response"]["instructions"]
                    .as_str()
                    .is_some_and(|i| i.contains("Greet"))
        })
        .count();
    assert_eq!(greetings, 1, "no second greeting after a reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_and_end_call_hang_up() {
    let h = Harness::start().await;
    let short = script(
        "[call]\nfrom = \"<sip:+14155550123@c.example>;tag=1\"\nto = \"<sip:+18005550144@sip.api.openai.com>\"\n",
    );
    let end = script(
        r#"
[call]
from = "<sip:+14155550123@c.example>;tag=1"
to = "<sip:+18005550100@sip.api.openai.com>"
[[turn]]
tool = "end_call"
arguments = { reason = "caller said goodbye" }
"#,
    );
    let a = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), short)
        .await
        .unwrap();
    let b = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), end)
        .await
        .unwrap();
    let ra = h.wait_final(&a.call_id).await;
    let rb = h.wait_final(&b.call_id).await;
    assert_eq!(
        (ra.state, ra.end_reason.as_deref()),
        (CallState::Ended, Some("max_duration"))
    );
    assert_eq!(
        (rb.state, rb.end_reason.as_deref()),
        (CallState::Ended, Some("end_call"))
    );
    assert_eq!(h.emulator.call(&a.call_id).unwrap().hangup_count, 1);
    assert_eq!(h.emulator.call(&b.call_id).unwrap().hangup_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_unknown_events() {
    let h = Harness::start().await;
    let base = h.server.base_url();
    assert_eq!(
        h.http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = h
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["profiles"], 6);
    // An authentic event of another type is acknowledged and ignored.
    let body = br#"{"object":"event","id":"evt_1","type":"response.completed","created_at":1,"data":{"id":"resp_1"}}"#;
    let status = h
        .emulator
        .deliver(
            &h.webhook_url(),
            &webhook_secret(),
            "wh_other",
            chrono::Utc::now().timestamp(),
            body,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metrics = h
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("voxmachina_webhooks_total"), "{metrics}");
    assert!(metrics.contains(r#"outcome="ignored""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_command_delivers_a_verifiable_webhook() {
    let h = Harness::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .args([
            "trigger",
            "--url",
            &h.webhook_url(),
            "--call-id",
            "rtc_triggered",
            "--to",
            "+18005550111",
            "--from",
            "+19005550199",
        ])
        .env("OPENAI_WEBHOOK_SECRET", webhook_secret())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Verified, parsed and routed to the blocklist profile; the emulator does not know the call,
    // so /reject answers 404 and the call is recorded as rejected all the same.
    let r = h
        .store()
        .get_call("rtc_triggered")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(
        (r.state, r.profile.as_str(), r.end_reason.as_deref()),
        (CallState::Rejected, "blocked", Some("blocked_caller"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_style_headers_route_by_diversion_and_tel_caller() {
    // Twilio Elastic SIP trunk: To carries the OpenAI project URI, the dialed number arrives in
    // Diversion; the caller is a tel: URI with a display name and visual separators.
    let h = Harness::start().await;
    let s = script(
        r#"
[call]
from = '"Grace Hopper" <tel:+1-415-555-0199>;tag=77ab'
to = "<sip:proj_abc123@sip.api.openai.com;transport=tls>"
headers = [["Diversion", "<sip:+18005550111@pstn.twilio.com>;reason=unconditional;counter=1"], ["P-Asserted-Identity", "<sip:+19005550199@pstn.twilio.com>"]]
"#,
    );
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), s)
        .await
        .unwrap();
    let r = h.wait_final(&placed.call_id).await;
    // Dialed +18005550111 (from Diversion) selects the blocklist profile; the asserted identity
    // (+19005550199) is on its blocklist, so the call is rejected with 603.
    assert_eq!(r.dialed.as_deref(), Some("+18005550111"));
    assert_eq!(r.caller.as_deref(), Some("+19005550199"));
    assert_eq!(
        (r.state, r.profile.as_str()),
        (CallState::Rejected, "blocked")
    );
    assert!(matches!(
        h.emulator.call(&placed.call_id).unwrap().status,
        EmuCallStatus::Rejected { status_code: 603 }
    ));
}
