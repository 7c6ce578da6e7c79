//! The admin API's contract: transcripts and events are paged (`limit`, `cursor`) and never
//! read whole; the OpenAPI document the binary serves at `/v1/openapi.json` is the committed
//! `docs/openapi.json` (regenerate it with `VOXMACHINA_BLESS_OPENAPI=1 cargo test --test
//! admin_api`), and it needs the admin token like every `/v1` route.

mod support;

use std::path::Path;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use support::harness::{ADMIN_TOKEN, Harness, fixture_prompts};
use support::serve::Controller;
use voxmachina::calls::record::{Api, CallEvent, CallRecord, CallState, Speaker, TranscriptLine};

async fn get(h: &Harness, path: &str) -> (u16, Value) {
    let resp = h.admin(Method::GET, path).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_and_events_are_paged() {
    let h = Harness::start().await;
    let store = h.store();
    let id = "rtc_paging0000000000000000000000001";
    let mut rec = CallRecord::new(id, Api::Realtime, "wh_paging", Utc::now());
    rec.state = CallState::Ended;
    store.create_call(&rec).await.unwrap();
    for i in 0..250 {
        store
            .append_event(&CallEvent::new(id, "dtmf", json!({ "i": i })))
            .await
            .unwrap();
    }
    for i in 0..130 {
        store
            .append_transcript(&TranscriptLine {
                call_id: id.into(),
                speaker: Speaker::Caller,
                text: format!("line {i}"),
                at: Utc::now(),
                item_id: None,
            })
            .await
            .unwrap();
    }

    // The record carries the first page only, with cursors to the rest.
    let (status, detail) = get(&h, &format!("/v1/calls/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["events"].as_array().unwrap().len(), 100);
    assert_eq!(detail["transcript"].as_array().unwrap().len(), 100);
    assert_eq!(detail["events"][99]["detail"]["i"], 99);
    let mut cursor = detail["events_next_cursor"].as_str().unwrap().to_string();

    // Walk the events in pages of 60.
    let mut seen = 100;
    loop {
        let (status, page) = get(
            &h,
            &format!("/v1/calls/{id}/events?limit=60&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 60);
        for e in events {
            assert_eq!(e["detail"]["i"], seen, "in order, none skipped");
            seen += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 250);

    // The transcript's second page ends it.
    let cursor = detail["transcript_next_cursor"].as_str().unwrap();
    let (status, page) = get(&h, &format!("/v1/calls/{id}/transcript?cursor={cursor}")).await;
    assert_eq!(status, 200);
    assert_eq!(page["transcript"].as_array().unwrap().len(), 30);
    assert_eq!(page["transcript"][0]["text"], "line 100");
    assert!(page["next_cursor"].is_null());

    // limit is capped at 1000 and 0 reads one; bad cursors and queries are JSON 400s.
    let (_, page) = get(&h, &format!("/v1/calls/{id}/events?limit=100000")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 250);
    let (_, page) = get(&h, &format!("/v1/calls/{id}/events?limit=0")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    for bad in ["cursor=abc", "cursor=-1", "limit=many", "limit=-3"] {
        let (status, body) = get(&h, &format!("/v1/calls/{id}/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, _) = get(&h, "/v1/calls/rtc_nobody/transcript").await;
    assert_eq!(status, 404);
    let resp = h
        .http
        .get(format!("{}/v1/calls/{id}/events", h.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

fn committed() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_committed_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("voxmachina.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[logging]\nformat = \"json\"\n[prompts]\n\
             dir = \"{}\"\n[store]\nsqlite_path = \"{}\"\n",
            fixture_prompts().display(),
            dir.path().join("state/v.db").display()
        ),
    )
    .unwrap();
    let controller =
        tokio::task::spawn_blocking(move || Controller::start(&config, "openapi", &[]))
            .await
            .unwrap();
    let url = format!("http://{}/v1/openapi.json", controller.addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        401,
        "the document needs the admin token"
    );
    let resp = http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let served: Value = resp.json().await.unwrap();
    if std::env::var_os("VOXMACHINA_BLESS_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
        std::fs::write(committed(), text).unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(committed()).unwrap())
        .expect("docs/openapi.json is JSON");
    assert_eq!(
        served, file,
        "docs/openapi.json is stale: VOXMACHINA_BLESS_OPENAPI=1 cargo test --test admin_api"
    );
    assert_eq!(served["openapi"], "3.1.0");
    // Every operation needs the bearer token.
    assert_eq!(served["security"], json!([{ "admin_token": [] }]));
    assert_eq!(
        served["components"]["securitySchemes"]["admin_token"],
        json!({ "type": "http", "scheme": "bearer" })
    );
    for path in [
        "/v1/calls",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/transcript",
        "/v1/calls/{call_id}/events",
        "/v1/calls/{call_id}/transfer",
        "/v1/calls/{call_id}/hangup",
        "/v1/calls/outbound",
        "/v1/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} documented");
    }
}
