//! Twilio Media Streams text frames (Twilio → us: `connected`, `start`, `media`, `dtmf`, `mark`,
//! `stop`; us → Twilio: `media`, `mark`, `clear`), as the bridge reads them: the full
//! [`TwilioMessage`] parse, the per-frame [`TwilioPeek`], the inbound audio path in both
//! session modes (`pcmu` passthrough, `pcm16` transcoding) and the frames we synthesise.
//!
//! Input: one WebSocket text frame (non-UTF-8 input is skipped: the WebSocket layer refuses
//! such text frames before the bridge sees them).
//!
//! Properties:
//! - nothing panics;
//! - a typed message serialises and parses back to itself; an unknown one keeps its `event`;
//! - when both parse, the per-frame peek agrees with the full parse on `event`, `streamSid`, the media payload,
//!   the mark name and the DTMF digit;
//! - an accepted media payload becomes a valid `input_audio_buffer.append` JSON event carrying
//!   at most 1 s of audio (the `pcmu` one with the payload unchanged);
//! - the DTMF event and the outbound `media` frame built by hand are valid JSON that carry the
//!   caller's digit and our audio unchanged, and the hand-built frame equals serde's.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voxmachina::bridge::audio::{Inbound, MediaFrameWriter};
use voxmachina::bridge::events::{TwilioPeek, dtmf_received};
use voxmachina::media::pipeline::MAX_INBOUND_ULAW_BYTES;
use voxmachina::prompts::MediaAudio;
use voxmachina::twilio::media::{ServerMessage, TwilioMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let msg = TwilioMessage::parse(text);
    let peek = TwilioPeek::parse(text);
    if let Ok(m) = &msg {
        let json = m.to_json();
        let back = TwilioMessage::parse(&json).expect("our own JSON parses");
        match m {
            TwilioMessage::Unknown(_) => assert_eq!(back.event(), m.event()),
            typed => assert_eq!(&back, typed, "{json}"),
        }
        // A typed message whose other keys have odd types (`"mark": 1` on a `media`) may
        // fail the peek, which counts it as malformed; when both parse they must agree.
        if let (Ok(p), false) = (&peek, matches!(m, TwilioMessage::Unknown(_))) {
            assert_eq!(p.event, m.event());
            // `connected` has no `streamSid` (Twilio sends none; the full parse ignores one).
            if !matches!(m, TwilioMessage::Connected(_)) {
                assert_eq!(p.stream_sid.as_deref(), m.stream_sid());
            }
            match m {
                TwilioMessage::Media(media) => {
                    let pm = p.media.as_ref().expect("media peeked");
                    assert_eq!(pm.payload, media.media.payload);
                    assert_eq!(pm.track.as_deref(), Some(media.media.track.as_str()));
                }
                TwilioMessage::Mark(mark) => {
                    assert_eq!(p.mark.as_ref().expect("mark peeked").name, mark.mark.name);
                }
                TwilioMessage::Dtmf(d) => {
                    assert_eq!(p.dtmf.as_ref().expect("dtmf peeked").digit, d.dtmf.digit);
                }
                _ => {}
            }
        }
    }
    let Ok(peek) = peek else {
        return;
    };
    if let Some(media) = &peek.media {
        for mode in [MediaAudio::Pcmu, MediaAudio::Pcm16] {
            let mut inbound = Inbound::new(mode);
            let mut out = String::new();
            match inbound.append_event(&media.payload, &mut out) {
                Ok(0) => assert!(out.is_empty()),
                Ok(samples) => {
                    assert!(samples <= MAX_INBOUND_ULAW_BYTES, "{samples} samples");
                    let v: Value = serde_json::from_str(&out).expect("append event is JSON");
                    assert_eq!(v["type"], "input_audio_buffer.append");
                    let audio = v["audio"].as_str().expect("audio is a string");
                    if mode == MediaAudio::Pcmu {
                        assert_eq!(audio, media.payload);
                    }
                }
                Err(_) => assert!(out.is_empty()),
            }
        }
    }
    if let Some(d) = &peek.dtmf {
        let v: Value = serde_json::from_str(&dtmf_received(&d.digit, 1)).expect("JSON");
        assert_eq!(v["event"].as_str(), Some(d.digit.as_ref()));
    }
    if let Some(sid) = &peek.stream_sid {
        let frame = MediaFrameWriter::new(sid).frame(&B64.encode(data));
        assert_eq!(frame, ServerMessage::media(sid.as_ref(), data).to_json());
        match ServerMessage::parse(&frame).expect("our frame parses") {
            ServerMessage::Media { stream_sid, media } => {
                assert_eq!(stream_sid, sid.as_ref());
                assert_eq!(B64.decode(media.payload).expect("base64"), data);
            }
            other => panic!("not a media frame: {other:?}"),
        }
    }
    if let Ok(s) = ServerMessage::parse(text) {
        assert_eq!(ServerMessage::parse(&s.to_json()).expect("round trip"), s);
    }
});
