//! The restaurant concierge seed profile (`prompts/restaurant_concierge.*`) on a real outbound
//! call: `POST /v1/calls/outbound` places it through the Twilio REST API (local fake), the callee
//! answers (the simulated Twilio phone on the Media Streams socket), the model session plays
//! `scripts/restaurant_booking.toml`, the agent ends the call with `end_call` and the
//! confirmation number the restaurant gave is extracted after the call.

mod media_bridge_common;
mod support;

use std::path::Path;
use std::time::Duration;

use media_bridge_common::*;
use serde_json::Value;
use voxmachina::calls::record::{CallState, Speaker};
use voxmachina_emulator::Script;

const RESTAURANT: &str = "+14155550177";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concierge_calls_out_books_and_extracts_the_confirmation_number() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = start(|config| {
        for file in ["restaurant_concierge.toml", "restaurant_concierge.md"] {
            std::fs::copy(
                root.join("prompts").join(file),
                config.prompts.dir.join(file),
            )
            .unwrap();
        }
    })
    .await;
    let script = std::fs::read_to_string(root.join("scripts/restaurant_booking.toml")).unwrap();
    m.h.emulator
        .push_model_script(Script::from_toml_str(&script).unwrap());

    let resp =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": RESTAURANT, "profile": "restaurant-concierge"}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let sid = body["call"]["call_id"].as_str().unwrap().to_string();
    assert_eq!(body["call"]["profile"], "restaurant-concierge");
    assert_eq!(body["call"]["dialed"], RESTAURANT);

    // The restaurant picks up: Twilio runs the TwiML it was given, the stream opens.
    let twiml = m.twilio.call(&sid).unwrap().twiml.unwrap();
    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;
    // Two restaurant turns, each heard by the model session's VAD in the phone's audio.
    for turn in 1..=2 {
        phone.say(&fixture_speech());
        m.h.emulator
            .wait_for(&session, Duration::from_secs(20), |v| {
                v.caller_lines.len() == turn
            })
            .await
            .unwrap_or_else(|| panic!("restaurant turn {turn} heard"));
    }

    // end_call: the controller hangs the call up through Twilio and the record closes.
    let record = m.h.wait_final(&sid).await;
    drop(phone);
    assert_eq!(
        (record.state, record.end_reason.as_deref()),
        (CallState::Ended, Some("end_call")),
        "{record:#?}"
    );
    assert_eq!(record.media.as_ref().unwrap().direction, "outbound");
    assert_eq!(
        record
            .after_call
            .extracted
            .get("confirmation_number")
            .map(String::as_str),
        Some("R7K2P9"),
        "{:#?}",
        record.after_call
    );
    let transcript = m.h.store().transcript(&sid).await.unwrap();
    assert!(
        transcript
            .iter()
            .any(|l| l.speaker == Speaker::Caller && l.text.contains("R7K2P9")),
        "{transcript:#?}"
    );
    // The hang-up went to Twilio as a call update to `completed`.
    assert!(
        m.twilio
            .requests()
            .iter()
            .any(|r| r.path.ends_with(&format!("/Calls/{sid}.json"))
                && r.field("Status") == Some("completed")),
        "{:#?}",
        m.twilio.requests()
    );
}
