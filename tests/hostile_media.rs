//! Issue 13 items 1 and 9, as an attacker would try them, through the real served endpoints
//! (the controller on 127.0.0.1:0, the fake Twilio, the OpenAI emulator):
//!
//! - a captured signed `/twilio/media` upgrade replayed with a used, stale, forged or missing
//!   stream token, with a `start` naming another `callSid` or `accountSid`: closed 1008 with
//!   the reason, counted, recorded on the call we know, and no Realtime session opened;
//! - a `start` whose parameters try to choose another profile: the call's own profile is used;
//! - caller audio at 3× real time: closed as abusive, recorded, and the model received no more
//!   audio than real time allows;
//! - a SIP `X-Twilio-CallSid` header sent by anyone (without our binding, with a forged one,
//!   with the binding of another call) is not stored; the one our `<Dial><Sip>` bound is.

mod media_bridge_common;
mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use media_bridge_common::*;
use support::fake_twilio::sip_dial_headers;
use voxmachina::bridge::pacer::PacerLimits;
use voxmachina::calls::record::CallState;
use voxmachina::config::TwilioVoiceMode;
use voxmachina::store::StreamGrant;
use voxmachina_emulator::Script;
use voxmachina_emulator::phone::stream_of_twiml;

const REFUSED: u16 = 1008;

/// The `stream_token` parameter of a `<Connect><Stream>` answer.
fn token_of(twiml: &str) -> String {
    stream_of_twiml(twiml)
        .expect("<Connect><Stream> TwiML")
        .1
        .into_iter()
        .find(|(n, _)| n == "stream_token")
        .expect("a stream_token parameter")
        .1
}

/// The value of the Prometheus series `series` (exact name and labels), 0 when absent.
async fn counter(m: &MediaHarness, series: &str) -> u64 {
    let text =
        m.h.http
            .get(m.local("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Opens `/twilio/media` with the captured (valid) signature, sends `connected` and a `start`
/// for `call_sid` with `params`, and returns the server's close code and reason.
async fn replay(m: &MediaHarness, call_sid: &str, params: &[(&str, &str)]) -> (u16, String) {
    replay_as(m, None, call_sid, params).await
}

async fn replay_as(
    m: &MediaHarness,
    account_sid: Option<&str>,
    call_sid: &str,
    params: &[(&str, &str)],
) -> (u16, String) {
    let mut ws = m
        .twilio
        .open_media_stream_signed_as(&m.media_ws(), STREAM_URL)
        .await
        .expect("a captured signature still opens the socket");
    if let Some(account) = account_sid {
        ws.set_account_sid(account);
    }
    ws.send_connected().await;
    ws.send_start(call_sid, params).await;
    ws.send_media(&[0xFF; 160]).await;
    ws.recv_close(Duration::from_secs(10)).await
}

fn refused(reason: &str) -> (u16, String) {
    (REFUSED, format!("stream refused: {reason}"))
}

async fn refusal_reasons(m: &MediaHarness, call_id: &str) -> Vec<String> {
    m.h.events(call_id)
        .await
        .into_iter()
        .filter(|e| e.kind == "media_stream_refused")
        .map(|e| e.detail["reason"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_upgrades_with_a_used_stale_forged_or_missing_token_are_refused() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let before = counter(
        &m,
        r#"voxmachina_bridge_streams_total{outcome="refused",reason="invalid_token"}"#,
    )
    .await;

    // The genuine call: answered, streamed once, ended.
    let sid = call_sid(101);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let token = token_of(&twiml);
    let phone = m.phone(&sid, &twiml).await;
    m.session(1).await;
    phone
        .wait_until(Duration::from_secs(10), |l| !l.frames.is_empty())
        .await
        .expect("the genuine stream is bridged");
    phone.stop();
    m.h.wait_final(&sid).await;

    // 1. The same upgrade and start again: the token is used.
    assert_eq!(
        replay(&m, &sid, &[("stream_token", &token)]).await,
        refused("invalid_token")
    );
    assert_eq!(refusal_reasons(&m, &sid).await, ["invalid_token"]);
    // A replay of the voice webhook does not hand out a new token for that call either.
    let (status, again) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    assert_eq!(status, 200);
    assert!(!again.contains("stream_token"), "{again}");

    // 2. A token we minted, past its lifetime, for a call still waiting for its stream.
    let waiting = call_sid(102);
    let (_, twiml) = m.voice_webhook(&waiting, CALLER, PCMU_LINE).await;
    let fresh = token_of(&twiml);
    let grant = StreamGrant {
        call_sid: Some(waiting.clone()),
        account_sid: support::fake_twilio::ACCOUNT_SID.to_string(),
        profile: "media_pcmu".into(),
        direction: "inbound".into(),
        dialed: None,
        created_at: Utc::now() - chrono::Duration::minutes(6),
    };
    let stale =
        m.h.store()
            .mint_stream_token(&grant, chrono::Duration::minutes(5), grant.created_at)
            .await
            .unwrap();
    assert_eq!(
        replay(&m, &waiting, &[("stream_token", &stale)]).await,
        refused("invalid_token")
    );
    let rec = m.h.store().get_call(&waiting).await.unwrap().unwrap();
    assert_eq!(
        rec.state,
        CallState::Accepting,
        "a refused stream changes nothing"
    );
    assert_eq!(refusal_reasons(&m, &waiting).await, ["invalid_token"]);

    // 3. Forged tokens and no token, for a call id nobody answered: refused, and no row is
    // created for the made-up id.
    let made_up = call_sid(199);
    for forged in [
        format!("vst_{:032x}", rand::random::<u128>()),
        "0123456789".to_string(),
        "vst_' OR 1=1 --".to_string(),
        fresh.to_uppercase(),
    ] {
        assert_eq!(
            replay(&m, &made_up, &[("stream_token", &forged)]).await,
            refused("invalid_token"),
            "{forged}"
        );
    }
    assert_eq!(
        replay(&m, &made_up, &[("profile", "media_pcm16")]).await,
        refused("no_token")
    );
    assert_eq!(m.h.store().get_call(&made_up).await.unwrap(), None);
    assert!(m.h.events(&made_up).await.is_empty());

    // None of it opened a Realtime session, and the fresh token still works for its call.
    assert_eq!(m.h.emulator.model_sessions().len(), 1);
    let after = counter(
        &m,
        r#"voxmachina_bridge_streams_total{outcome="refused",reason="invalid_token"}"#,
    )
    .await;
    assert!(after >= before + 6, "{before} -> {after}");
    assert!(
        counter(
            &m,
            r#"voxmachina_bridge_streams_total{outcome="refused",reason="no_token"}"#
        )
        .await
            >= 1
    );
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let phone = m.phone(&waiting, &twiml).await;
    m.session(2).await;
    phone
        .wait_until(Duration::from_secs(10), |l| !l.frames.is_empty())
        .await
        .expect("the call's own stream is bridged");
    phone.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_must_match_the_answered_call_and_cannot_pick_its_profile() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));

    // Another call's token: refused, recorded on the call the token was granted for, and
    // burned (a token that leaked is spent by its first use).
    let granted = call_sid(201);
    let other = call_sid(202);
    let (_, twiml) = m.voice_webhook(&granted, CALLER, PCMU_LINE).await;
    let token = token_of(&twiml);
    m.voice_webhook(&other, CALLER, PCMU_LINE).await;
    assert_eq!(
        replay(&m, &other, &[("stream_token", &token)]).await,
        refused("call_mismatch")
    );
    assert_eq!(refusal_reasons(&m, &granted).await, ["call_mismatch"]);
    assert_eq!(
        replay(&m, &granted, &[("stream_token", &token)]).await,
        refused("invalid_token")
    );

    // The right call, claimed by another account.
    let sid = call_sid(203);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let token = token_of(&twiml);
    assert_eq!(
        replay_as(
            &m,
            Some("AC00000000000000000000000000000000"),
            &sid,
            &[("stream_token", &token)]
        )
        .await,
        refused("call_mismatch")
    );
    assert_eq!(
        m.h.store().get_call(&sid).await.unwrap().unwrap().state,
        CallState::Accepting
    );
    assert!(m.h.emulator.model_sessions().is_empty());

    // A valid token with parameters that try to switch to the pcm16 profile, the outbound
    // direction and other parties: bridged, on the profile the call was answered with.
    let sid = call_sid(204);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let token = token_of(&twiml);
    let mut ws = m
        .twilio
        .open_media_stream_signed_as(&m.media_ws(), STREAM_URL)
        .await
        .unwrap();
    ws.send_connected().await;
    ws.send_start(
        &sid,
        &[
            ("stream_token", &token),
            ("profile", "media_pcm16"),
            ("direction", "outbound"),
            ("from", "+19005550199"),
            ("to", PCM16_LINE),
        ],
    )
    .await;
    let session = m.session(1).await;
    let pumped = ws.pump_media(1.0, Duration::from_millis(600)).await;
    assert_eq!(pumped.close, None, "a real-time stream is not closed");
    let rec = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(rec.profile, "media_pcmu");
    let media = rec.media.unwrap();
    assert_eq!(
        (media.direction.as_str(), media.audio.as_str()),
        ("inbound", "pcmu")
    );
    assert_eq!(rec.caller.as_deref(), Some(CALLER));
    assert_eq!(
        m.h.emulator.media(&session).unwrap().input_format,
        "audio/pcmu"
    );
    ws.send_stop().await;
    m.h.wait_final(&sid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_at_three_times_real_time_is_closed_as_abusive() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let sid = call_sid(301);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let token = token_of(&twiml);
    let mut ws = m
        .twilio
        .open_media_stream_signed_as(&m.media_ws(), STREAM_URL)
        .await
        .unwrap();
    ws.send_connected().await;
    let t0 = Instant::now();
    ws.send_start(&sid, &[("stream_token", &token)]).await;
    let pumped = ws.pump_media(3.0, Duration::from_secs(30)).await;
    let elapsed = t0.elapsed();
    eprintln!("3x stream: {pumped:?}, {elapsed:?} since start");

    assert_eq!(
        pumped.close,
        Some((REFUSED, "caller audio faster than real time".to_string())),
        "{pumped:?}"
    );
    assert!(
        pumped.sent.as_secs_f64() >= 2.5 * pumped.elapsed.as_secs_f64(),
        "really sent at ~3x: {pumped:?}"
    );
    // What reached the model: μ-law bytes at 8 kHz, never more than real time since the start
    // plus the forward burst, and less than was sent.
    let session = m.session(1).await;
    let forwarded_bytes = m.h.emulator.media(&session).unwrap().audio_in.len();
    let forwarded = Duration::from_micros(forwarded_bytes as u64 * 125);
    let bound = elapsed + PacerLimits::default().forward_burst;
    eprintln!("forwarded to the model: {forwarded:?} (bound {bound:?})");
    assert!(forwarded <= bound, "forwarded {forwarded:?} > {bound:?}");
    assert!(forwarded < pumped.sent, "{forwarded:?} vs {pumped:?}");

    let rec = m.h.wait_final(&sid).await;
    assert_eq!(rec.end_reason.as_deref(), Some("abusive_media"), "{rec:#?}");
    let events = m.h.events(&sid).await;
    let abusive = events
        .iter()
        .find(|e| e.kind == "media_abusive")
        .expect("media_abusive event");
    let forwarded_ms = abusive.detail["forwarded_ms"].as_u64().unwrap();
    assert!(forwarded_ms <= u64::try_from(bound.as_millis()).unwrap());
    assert!(abusive.detail["dropped_ms"].as_u64().unwrap() > 0);
    assert!(counter(&m, "voxmachina_bridge_abusive_streams_total").await >= 1);
    assert!(counter(&m, r#"voxmachina_bridge_errors_total{kind="paced_drop"}"#).await >= 1);
}

/// What Twilio puts on the INVITE when it follows our `<Dial><Sip>` answer for `sid`.
async fn dial(m: &MediaHarness, sid: &str) -> Vec<(String, String)> {
    let (status, twiml) = m.voice_webhook(sid, CALLER, PCMU_LINE).await;
    assert_eq!(status, 200);
    sip_dial_headers(&twiml).expect("<Dial><Sip> TwiML")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_x_twilio_callsid_is_not_stored_but_our_bound_one_is() {
    let m = start(|c| {
        c.twilio.voice_mode = TwilioVoiceMode::Sip;
        c.twilio.openai_sip_uri = "sip:proj_test123@sip.api.openai.com;transport=tls".into();
    })
    .await;
    let before = counter(&m, "voxmachina_sip_unbound_call_sid_total").await;
    let sid = m.twilio.add_inbound_call(CALLER, PCMU_LINE);
    let other = m.twilio.add_inbound_call(CALLER, PCMU_LINE);
    let bound = dial(&m, &sid).await;
    assert_eq!(bound[0], ("X-Twilio-CallSid".to_string(), sid.clone()));
    assert_eq!(bound[1].0, "X-Voxmachina-CallSid-Mac");
    let other_mac = dial(&m, &other).await[1].1.clone();

    let call = |headers: Vec<(String, String)>| {
        let mut script = Script::new().greeting_wait_ms(100);
        for (n, v) in headers {
            script = script.header(n, v);
        }
        script.caller("Hello.").hangup()
    };
    let h = |n: &str, v: &str| (n.to_string(), v.to_string());
    let spoofs = [
        // Anyone's INVITE naming a live Twilio call.
        vec![h("X-Twilio-CallSid", &sid)],
        // With a made-up binding.
        vec![
            h("X-Twilio-CallSid", &sid),
            h("X-Voxmachina-CallSid-Mac", &"ab".repeat(32)),
        ],
        // With the genuine binding of another call.
        vec![
            h("X-Twilio-CallSid", &sid),
            h("X-Voxmachina-CallSid-Mac", &other_mac),
        ],
    ];
    for spoof in spoofs {
        let (call_id, _, record) = m.h.call_to_end(call(spoof.clone())).await;
        assert_eq!(record.twilio_call_sid, None, "{spoof:?}");
        let events = m.h.events(&call_id).await;
        let untrusted = events
            .iter()
            .find(|e| e.kind == "untrusted_sip_header")
            .unwrap_or_else(|| panic!("untrusted_sip_header event for {spoof:?}: {events:#?}"));
        assert_eq!(untrusted.detail["header"], "X-Twilio-CallSid");
        assert_eq!(untrusted.detail["value"], sid.as_str());
    }
    assert!(counter(&m, "voxmachina_sip_unbound_call_sid_total").await >= before + 3);

    // The headers our `<Dial><Sip>` generated: trusted and stored.
    let (call_id, _, record) = m.h.call_to_end(call(bound)).await;
    assert_eq!(record.twilio_call_sid.as_deref(), Some(sid.as_str()));
    assert!(
        !m.h.event_kinds(&call_id)
            .await
            .contains(&"untrusted_sip_header".to_string())
    );
}
