//! Benchmark (1): the webhook path per request, without I/O:
//! verify signature → parse event → parse SIP headers → choose profile → build the accept body.
//!
//! Run: `cargo bench --bench webhook`. Numbers go to docs/performance.md.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use voxmachina::prompts::ProfileSet;
use voxmachina::sip::CallParties;
use voxmachina::webhook::event::{Envelope, RealtimeCallIncoming};
use voxmachina::webhook::signature::{DeliveryHeaders, Verifier};

/// A realistic delivery: the headers a Twilio trunk INVITE carries.
const BODY: &str = r#"{"object":"event","id":"evt_685343a1381c819085d44c354e1b330e","type":"realtime.call.incoming","created_at":1750287018,"data":{"call_id":"rtc_479a275623b54bdb9b6fbae2f7cbd408","sip_media_security":"srtp","sip_headers":[{"name":"Via","value":"SIP/2.0/TLS 54.172.60.1:5061;branch=z9hG4bK0f2b.1"},{"name":"Max-Forwards","value":"69"},{"name":"From","value":"\"Ada Lovelace\" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl"},{"name":"To","value":"<sip:proj_abc123@sip.api.openai.com>"},{"name":"Call-ID","value":"03782086-4ce9-44bf-8b0d-4e303d2cc590"},{"name":"CSeq","value":"1 INVITE"},{"name":"Diversion","value":"<sip:+18005550100@twilio.com>;reason=unconditional;counter=1"},{"name":"P-Asserted-Identity","value":"<sip:+14155550123@pstn.twilio.com>"},{"name":"X-Twilio-AccountSid","value":"AC0123456789abcdef0123456789abcdef"},{"name":"Content-Type","value":"application/sdp"}]}}"#;

fn bench(c: &mut Criterion) {
    let verifier = Verifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 300).unwrap();
    let now = 1_750_287_018_i64;
    let ts = now.to_string();
    let id = "wh_685342e6c53c8190a1be43f081506c52";
    let sig = verifier.sign(id, &ts, BODY.as_bytes());
    let headers = DeliveryHeaders {
        id: Some(id),
        timestamp: Some(&ts),
        signature: Some(&sig),
    };
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts");
    let profiles = ProfileSet::load(&prompts).unwrap();

    let env: Envelope = serde_json::from_str(BODY).unwrap();
    let data: RealtimeCallIncoming = serde_json::from_value(env.data).unwrap();
    let parties = CallParties::from_headers(&data.sip_headers);
    let profile = profiles.select(&parties, &data.sip_headers).clone();

    let mut g = c.benchmark_group("webhook");
    g.bench_function("verify", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(headers), black_box(BODY.as_bytes()), now)
                .unwrap()
        })
    });
    g.bench_function("parse_event", |b| {
        b.iter(|| {
            let env: Envelope = serde_json::from_slice(black_box(BODY.as_bytes())).unwrap();
            let data: RealtimeCallIncoming = serde_json::from_value(env.data).unwrap();
            data
        })
    });
    g.bench_function("sip_parties", |b| {
        b.iter(|| CallParties::from_headers(black_box(&data.sip_headers)))
    });
    g.bench_function("select_profile", |b| {
        b.iter(|| {
            profiles
                .select(black_box(&parties), black_box(&data.sip_headers))
                .name
                .len()
        })
    });
    g.bench_function("accept_body", |b| {
        b.iter(|| serde_json::to_vec(&profile.realtime_session()).unwrap())
    });
    g.bench_function("full_path", |b| {
        b.iter(|| {
            let v = verifier
                .verify(black_box(headers), black_box(BODY.as_bytes()), now)
                .unwrap();
            let env: Envelope = serde_json::from_slice(BODY.as_bytes()).unwrap();
            let data: RealtimeCallIncoming = serde_json::from_value(env.data).unwrap();
            let parties = CallParties::from_headers(&data.sip_headers);
            let p = profiles.select(&parties, &data.sip_headers);
            let body = serde_json::to_vec(&p.realtime_session()).unwrap();
            (v, body)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
