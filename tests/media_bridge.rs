//! The Twilio Media Streams bridge end to end over real sockets: a simulated Twilio phone
//! (signed Media Streams WebSocket, real-time playback, mark echoes) → our server → the OpenAI
//! emulator's Realtime model session, in both audio modes; the fake Twilio REST API for
//! transfers and hang-ups.

mod media_bridge_common;
mod support;

use std::time::Duration;

use media_bridge_common::*;
use serde_json::Value;
use voxmachina::calls::record::{CallRecord, CallState, Speaker};
use voxmachina_emulator::Script;
use voxmachina_emulator::phone::PhoneLog;

const GREETING: &str = "Hello, thanks for calling Example Corp.";
const CALLER_LINE: &str = "Hello, thanks for calling. How can I help you today?";
const REPLY: &str = "Your confirmation number is R7K2P9.";

fn script() -> Script {
    Script::new()
        .greeting(GREETING)
        .reply(REPLY)
        .caller(CALLER_LINE)
}

/// Greeting: 200 + 250 × 6 words = 1700 ms; reply: 5 words = 1450 ms.
const GREETING_MS: u64 = 1700;
const REPLY_MS: u64 = 1450;

/// Frames for `ms` of agent audio: the last one padded; `pcm16` adds the decimator's flushed
/// tail (47–48 samples, `media::resample`).
fn frames_for(ms: u64, mode: &str) -> usize {
    let tail = if mode == "pcm16" { 48 } else { 0 };
    ((ms * 8 + tail) as usize).div_ceil(160)
}

async fn wait_record(
    m: &MediaHarness,
    call_id: &str,
    what: &str,
    pred: impl Fn(&CallRecord) -> bool,
) -> CallRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = m.h.store().get_call(call_id).await.unwrap()
            && pred(&r)
        {
            return r;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: record {:#?}\nevents {:#?}",
                m.h.store().get_call(call_id).await.unwrap(),
                m.h.event_kinds(call_id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_played(log: &PhoneLog) -> bool {
    log.queued == 0
        && !log.marks_received.is_empty()
        && log.marks_echoed.len() == log.marks_received.len()
}

fn frames_bytes(log: &PhoneLog, range: std::ops::Range<usize>) -> Vec<u8> {
    log.frames[range]
        .iter()
        .flat_map(|f| f.bytes.clone())
        .collect()
}

/// The whole call in one mode: greeting out, fixture speech in, reply out, stop.
async fn round_trip(mode: &str, line: &str) {
    let m = start(|_| {}).await;
    m.h.emulator.push_model_script(script());
    let sid = call_sid(if mode == "pcmu" { 1 } else { 2 });
    let (status, twiml) = m.voice_webhook(&sid, CALLER, line).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains(&format!(
            r#"<Parameter name="profile" value="media_{mode}"/>"#
        )),
        "{twiml}"
    );
    let before = m.h.store().get_call(&sid).await.unwrap().unwrap();
    assert_eq!(before.state, CallState::Accepting);

    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;

    // session.update: the profile's session with this mode's formats, no model.
    let view =
        m.h.emulator
            .wait_for(&session, Duration::from_secs(5), |v| {
                !v.client_events.is_empty()
            })
            .await
            .unwrap();
    let update = &view.client_events[0];
    assert_eq!(update["type"], "session.update");
    let expected_format = if mode == "pcmu" {
        serde_json::json!({"type": "audio/pcmu"})
    } else {
        serde_json::json!({"type": "audio/pcm", "rate": 24000})
    };
    assert_eq!(
        update["session"]["audio"]["input"]["format"],
        expected_format
    );
    assert_eq!(
        update["session"]["audio"]["output"]["format"],
        expected_format
    );
    assert_eq!(update["session"]["type"], "realtime");
    assert!(update["session"].get("model").is_none());
    assert!(update["session"]["audio"]["input"]["transcription"].is_object());
    assert_eq!(
        update["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        400
    );
    assert_eq!(
        m.h.emulator.media(&session).unwrap().model,
        "gpt-realtime-2.1"
    );

    // The greeting plays out completely, in 160-byte frames, each chunk followed by a mark.
    let t_first = tokio::time::Instant::now();
    let log = phone
        .wait_until(Duration::from_secs(10), |l| {
            l.frames.len() >= frames_for(GREETING_MS, mode) && all_played(l)
        })
        .await
        .expect("greeting played");
    let played_for = t_first.elapsed();
    let greeting_frames = frames_for(GREETING_MS, mode);
    assert_eq!(
        log.frames.len(),
        greeting_frames,
        "only the greeting so far"
    );
    assert!(log.frames.iter().all(|f| f.bytes.len() == 160));
    assert!(log.invalid.is_empty(), "{:?}", log.invalid);
    // 1700 ms in 17 deltas of 100 ms: a mark after each delta's frames, one after the frames
    // flushed at the end (pcm16: the filter tail), and the end-of-response mark.
    let marks = if mode == "pcmu" { 17 + 1 } else { 17 + 1 + 1 };
    assert_eq!(log.marks_received.len(), marks, "{:?}", log.marks_received);
    assert!(
        played_for >= Duration::from_millis(GREETING_MS - 100),
        "playback follows the 20 ms clock: {played_for:?}"
    );
    let media = m.h.emulator.media(&session).unwrap();
    assert_eq!(media.agent_audio.len(), 1);
    let sent = &media.agent_audio[0];
    let got = frames_bytes(&log, 0..greeting_frames);
    match mode {
        "pcmu" => {
            // Passthrough: the model's bytes exactly, then μ-law silence padding.
            assert_eq!(sent.bytes.len(), 13_600);
            assert_eq!(got, sent.bytes, "85 whole frames, no padding needed");
        }
        _ => {
            assert_eq!(sent.bytes.len(), 13_600 * 6);
            let reference = pcm16(&sent.bytes);
            let got = decode(&got);
            let (corr, lag) = (0..3)
                .map(|phase| best_lag(&decimate3(&reference, phase), &got, 0..40))
                .fold((f64::MIN, 0), |a, b| if b.0 > a.0 { b } else { a });
            eprintln!("pcm16 outbound: correlation {corr:.5} at lag {lag} samples");
            assert!(corr > 0.99, "correlation {corr} at lag {lag}");
            assert!(
                (13..=17).contains(&lag),
                "1.875 ms filter delay = 15 samples: {lag}"
            );
        }
    }

    // The caller speaks: the fixture travels to the model and is transcribed.
    let speech = fixture_speech();
    phone.say(&speech);
    let reply_frames = frames_for(REPLY_MS, mode);
    let log = phone
        .wait_until(Duration::from_secs(15), |l| {
            l.frames.len() >= greeting_frames + reply_frames && all_played(l)
        })
        .await
        .expect("reply played");
    assert_eq!(log.frames.len(), greeting_frames + reply_frames);
    assert!(
        log.clears.is_empty(),
        "no barge-in: the caller spoke after the greeting"
    );
    let media = m.h.emulator.media(&session).unwrap();
    assert_eq!(media.utterances.len(), 1, "{:?}", media.utterances);
    assert!(
        media.appends > 150,
        "one append per 20 ms frame: {}",
        media.appends
    );
    match mode {
        "pcmu" => {
            assert_eq!(media.input_format, "audio/pcmu");
            assert!(
                media
                    .audio_in
                    .windows(speech.len())
                    .any(|w| w == &speech[..]),
                "the caller's μ-law reaches the model byte for byte"
            );
            assert_eq!(media.audio_in.len() as u64, media.appends * 160);
        }
        _ => {
            assert_eq!(media.input_format, "audio/pcm");
            assert_eq!(media.audio_in.len() as u64, media.appends * 960);
            let x = decode(&speech);
            let z = pcm16(&media.audio_in);
            let a = onset(&x, 300.0).unwrap();
            let best = (0..3)
                .map(|phase| {
                    let d = decimate3(&z, phase);
                    let b = onset(&d, 300.0).unwrap();
                    let from = (b + 5).saturating_sub(a + 25);
                    best_lag(&x, &d, from..from + 40)
                })
                .fold((f64::MIN, 0), |a, b| if b.0 > a.0 { b } else { a });
            eprintln!("pcm16 inbound: correlation {:.5}", best.0);
            assert!(best.0 > 0.98, "inbound correlation {best:?}");
        }
    }

    let transcript = m.h.transcript(&sid).await;
    let lines: Vec<(Speaker, &str)> = transcript
        .iter()
        .map(|l| (l.speaker, l.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Speaker::Agent, GREETING),
            (Speaker::Caller, CALLER_LINE),
            (Speaker::Agent, REPLY),
        ]
    );

    // Twilio ends the stream: a clean end, stats and the extracted value on the record.
    phone.stop();
    let rec = wait_record(&m, &sid, "final", |r| {
        r.state.is_final() && r.media.as_ref().is_some_and(|x| x.stats.is_some())
    })
    .await;
    assert_eq!(rec.state, CallState::Ended);
    assert_eq!(rec.end_reason.as_deref(), Some("call_ended"));
    assert_eq!(rec.profile, format!("media_{mode}"));
    assert_eq!(rec.caller.as_deref(), Some(CALLER));
    assert_eq!(rec.dialed.as_deref(), Some(line));
    let media = rec.media.unwrap();
    assert_eq!(media.audio, mode);
    assert_eq!(media.direction, "inbound");
    assert_eq!(media.stream_sid.as_deref(), Some(log.stream_sid.as_str()));
    assert_eq!(rec.after_call.extracted["confirmation_number"], "R7K2P9");
    let stats = media.stats.unwrap();
    assert_eq!(stats.frames_out, (greeting_frames + reply_frames) as u64);
    assert_eq!(stats.bytes_out, stats.frames_out * 160);
    assert_eq!(stats.marks_sent, log.marks_received.len() as u64);
    assert_eq!(stats.marks_echoed, stats.marks_sent);
    assert!(stats.frames_in >= 150 && stats.appends == stats.frames_in);
    assert_eq!(stats.bytes_in, stats.frames_in * 160);
    assert_eq!(
        (stats.malformed, stats.bad_audio, stats.barge_ins),
        (0, 0, 0)
    );
    assert_eq!(
        stats.deltas,
        17 + 15,
        "1700 ms and 1450 ms in 100 ms deltas"
    );
    assert!(stats.inbound_p50_us > 0 && stats.outbound_p50_us > 0);
    let kinds = m.h.event_kinds(&sid).await;
    for k in [
        "twilio_voice_webhook",
        "stream_started",
        "sideband_attached",
        "call_ended",
        "stream_ended",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_passthrough_round_trip() {
    round_trip("pcmu", PCMU_LINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm16_transcoded_round_trip() {
    round_trip("pcm16", PCM16_LINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_twilio_and_truncates_at_the_played_position() {
    let m = start(|_| {}).await;
    let long = "This greeting is deliberately long so that the caller can interrupt it while it \
                is still playing on the phone line and we can check the truncation point.";
    m.h.emulator.push_model_script(
        Script::new()
            .greeting(long)
            .reply("Sure, go ahead.")
            .caller(CALLER_LINE),
    );
    let sid = call_sid(3);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;
    // Let about a second of the greeting play, then talk over it.
    phone
        .wait_until(Duration::from_secs(10), |l| l.played.len() >= 8_000)
        .await
        .expect("greeting playing");
    phone.say(&fixture_speech());
    let log = phone
        .wait_until(Duration::from_secs(10), |l| !l.clears.is_empty())
        .await
        .expect("Twilio got a clear");
    let clear = &log.clears[0];
    assert!(
        clear.discarded_bytes > 8_000,
        "most of the greeting was still queued"
    );
    let media = m.h.emulator.media(&session).unwrap();
    let greeting = &media.agent_audio[0];
    m.h.emulator
        .wait_for(&session, Duration::from_secs(5), |_| {
            !m.h.emulator.media(&session).unwrap().truncates.is_empty()
        })
        .await
        .expect("truncate reached the model");
    let truncation = m.h.emulator.media(&session).unwrap().truncates;
    assert_eq!(truncation.len(), 1, "{truncation:?}");
    let t = &truncation[0];
    assert!(t.accepted, "{t:?}");
    assert_eq!(t.item_id, greeting.item_id);
    let played_ms = (clear.played_bytes / 8) as u64;
    eprintln!(
        "barge-in: truncate audio_end_ms {} vs {played_ms} ms played when the clear arrived",
        t.audio_end_ms
    );
    assert!(
        t.audio_end_ms + 120 >= played_ms && t.audio_end_ms <= played_ms + 120,
        "truncated at {} ms, the phone had played {played_ms} ms",
        t.audio_end_ms
    );
    assert!(t.audio_end_ms < greeting.duration_ms);

    // The caller's turn is answered; nothing more of the greeting plays.
    m.h.emulator
        .wait_for(&session, Duration::from_secs(15), |v| {
            v.agent_lines.len() == 2
        })
        .await
        .expect("reply sent");
    let reply = m.h.emulator.media(&session).unwrap().agent_audio[1].clone();
    let reply_frames = reply.bytes.len().div_ceil(160);
    let clear_at = clear.at_ms;
    let log = phone
        .wait_until(Duration::from_secs(15), |l| {
            l.frames.iter().filter(|f| f.at_ms > clear_at).count() >= reply_frames && all_played(l)
        })
        .await
        .expect("reply played");
    let greeting_bytes_played = clear.played_bytes;
    assert_eq!(
        log.played.len(),
        greeting_bytes_played + reply_frames * 160,
        "after the clear only the reply played"
    );
    phone.stop();
    let rec = wait_record(&m, &sid, "final", |r| {
        r.media.as_ref().is_some_and(|x| x.stats.is_some())
    })
    .await;
    let stats = rec.media.unwrap().stats.unwrap();
    assert_eq!((stats.barge_ins, stats.truncates), (1, 1));
    let events = m.h.events(&sid).await;
    let barge = events.iter().find(|e| e.kind == "barge_in").unwrap();
    assert_eq!(barge.detail["cause"], "speech_started");
    assert_eq!(barge.detail["truncated"][0]["audio_end_ms"], t.audio_end_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_escalation_redirects_the_call_to_dial_after_the_handoff_line() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    // Outbound call, so the fake Twilio knows the call the transfer updates.
    let resp =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": CALLER, "profile": "media_pcm16"}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let sid = body["call"]["call_id"].as_str().unwrap().to_string();
    let twiml = m.twilio.call(&sid).unwrap().twiml.unwrap();
    let phone = m.phone(&sid, &twiml).await;
    m.session(1).await;
    phone
        .wait_until(Duration::from_secs(10), |l| {
            !l.frames.is_empty() && all_played(l)
        })
        .await
        .expect("greeting played");
    phone.press("5");
    phone.press("0");
    // The transfer happens only after the hand-off line has played out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let update = loop {
        let call = m.twilio.call(&sid).unwrap();
        if let Some(u) = call.updates.first() {
            let log = phone.log();
            assert!(
                all_played(&log),
                "the hand-off line played before the redirect"
            );
            break u.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no REST update");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let twiml_update = update
        .iter()
        .find(|(n, _)| n == "Twiml")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        twiml_update,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number>+14155550100</Number></Dial></Response>"#
    );
    // Twilio runs the new TwiML: the stream stops.
    phone.stop();
    let rec = wait_record(&m, &sid, "transferred", |r| {
        r.state.is_final() && r.media.as_ref().is_some_and(|x| x.stats.is_some())
    })
    .await;
    assert_eq!(rec.state, CallState::Transferred, "{rec:#?}");
    let esc = rec.escalation.clone().unwrap();
    assert_eq!(
        (
            esc.trigger.as_str(),
            esc.detail.as_str(),
            esc.target.as_str()
        ),
        ("dtmf", "0", "tel:+14155550100")
    );
    let media = rec.media.unwrap();
    assert_eq!(media.direction, "outbound");
    assert_eq!(media.stats.unwrap().dtmf, 2);
    let dtmf: Vec<Value> =
        m.h.events(&sid)
            .await
            .into_iter()
            .filter(|e| e.kind == "dtmf")
            .map(|e| e.detail["key"].clone())
            .collect();
    assert_eq!(dtmf, vec![Value::from("5"), Value::from("0")]);
    let agent: Vec<String> =
        m.h.transcript(&sid)
            .await
            .into_iter()
            .filter(|l| l.speaker == Speaker::Agent)
            .map(|l| l.text)
            .collect();
    assert_eq!(
        agent.last().unwrap(),
        "Let me connect you with a colleague now."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_counted_and_skipped() {
    let m = start(|_| {}).await;
    m.h.emulator.push_model_script(script());
    let sid = call_sid(4);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCM16_LINE).await;
    let phone = m.phone(&sid, &twiml).await;
    let session = m.session(1).await;
    let stream_sid = phone.log().stream_sid;
    phone.send_text("not json at all");
    phone.send_binary(vec![1, 2, 3]);
    phone.send_text(format!(
        r#"{{"event":"media","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"9","timestamp":"0","payload":"@@@not base64"}}}}"#
    ));
    phone.send_text(
        r#"{"event":"media","streamSid":"MZ-someone-else","media":{"track":"inbound","chunk":"9","timestamp":"0","payload":"AAAA"}}"#,
    );
    phone.send_text(format!(r#"{{"event":"bogus","streamSid":"{stream_sid}"}}"#));
    phone.send_text(format!(r#"{{"event":"media","streamSid":"{stream_sid}"}}"#));
    phone.send_text(format!(
        r#"{{"event":"mark","streamSid":"{stream_sid}","mark":{{"name":"never-sent"}}}}"#
    ));
    // The call goes on: the caller is still heard and answered.
    phone.say(&fixture_speech());
    m.h.emulator
        .wait_for(&session, Duration::from_secs(15), |v| {
            v.agent_lines.len() == 2
        })
        .await
        .expect("caller heard and answered after the garbage");
    phone.stop();
    let rec = wait_record(&m, &sid, "final", |r| {
        r.media.as_ref().is_some_and(|x| x.stats.is_some())
    })
    .await;
    assert_eq!(rec.state, CallState::Ended);
    let stats = rec.media.unwrap().stats.unwrap();
    assert_eq!(stats.malformed, 5, "{stats:?}");
    assert_eq!(stats.bad_audio, 1, "{stats:?}");
    assert!(phone.log().invalid.is_empty());
    assert_eq!(m.h.emulator.media(&session).unwrap().bad_appends, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_hangs_up_through_twilio_rest_and_closes_the_stream() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let resp =
        m.h.admin(reqwest::Method::POST, "/v1/calls/outbound")
            .json(&serde_json::json!({"to": CALLER, "profile": "short"}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let sid = resp.json::<Value>().await.unwrap()["call"]["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    let phone = m
        .phone(&sid, &m.twilio.call(&sid).unwrap().twiml.unwrap())
        .await;
    // (The `short` profile has no greeting: the agent waits for the caller.)
    phone
        .wait_until(Duration::from_secs(10), |l| l.closed)
        .await
        .expect("our server closed the stream");
    let rec = wait_record(&m, &sid, "final", |r| r.state.is_final()).await;
    assert_eq!(
        (rec.state, rec.end_reason.as_deref()),
        (CallState::Ended, Some("max_duration"))
    );
    let call = m.twilio.call(&sid).unwrap();
    assert_eq!(call.status, "completed");
    assert_eq!(
        call.updates,
        vec![vec![("Status".to_string(), "completed".to_string())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_unavailable_ends_the_call_and_closes_the_stream() {
    let m = start(|c| c.openai.sideband_url = "ws://127.0.0.1:9/v1/realtime".into()).await;
    let sid = call_sid(5);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let phone = m.phone(&sid, &twiml).await;
    phone
        .wait_until(Duration::from_secs(10), |l| l.closed)
        .await
        .expect("stream closed");
    let rec = wait_record(&m, &sid, "final", |r| r.state.is_final()).await;
    assert_eq!(rec.end_reason.as_deref(), Some("model_unavailable"));
    assert!(
        m.h.event_kinds(&sid)
            .await
            .contains(&"model_connect_failed".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_a_bridged_call_is_refused() {
    let m = start(|_| {}).await;
    m.h.emulator
        .push_model_script(Script::new().greeting("Hi."));
    let sid = call_sid(6);
    let (_, twiml) = m.voice_webhook(&sid, CALLER, PCMU_LINE).await;
    let first = m.phone(&sid, &twiml).await;
    m.session(1).await;
    first
        .wait_until(Duration::from_secs(10), |l| !l.frames.is_empty())
        .await
        .unwrap();
    let second = m.phone(&sid, &twiml).await;
    second
        .wait_until(Duration::from_secs(5), |l| l.closed)
        .await
        .expect("second stream closed");
    assert!(second.log().frames.is_empty());
    assert!(!first.log().closed, "the first stream goes on");
    assert_eq!(m.h.emulator.model_sessions().len(), 1);
    first.stop();
}
