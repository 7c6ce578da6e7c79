//! Media Streams messages: the example JSON of Twilio's WebSocket messages page
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>) parsed, checked
//! field by field, and serialised back to the same JSON.

use serde_json::{Value, json};
use voxmachina::twilio::media::{FRAME_BYTES, ServerMessage, TwilioMessage};

fn roundtrip(text: &str) -> TwilioMessage {
    let msg = TwilioMessage::parse(text).unwrap();
    let back: Value = serde_json::from_str(&msg.to_json()).unwrap();
    let original: Value = serde_json::from_str(text).unwrap();
    assert_eq!(back, original, "round trip of {text}");
    msg
}

#[test]
fn connected() {
    let msg = roundtrip(r#"{ "event": "connected", "protocol": "Call", "version": "1.0.0" }"#);
    let TwilioMessage::Connected(c) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!((c.protocol.as_str(), c.version.as_str()), ("Call", "1.0.0"));
    assert_eq!(msg.stream_sid(), None);
    assert_eq!(msg.event(), "connected");
}

#[test]
fn start() {
    let msg = roundtrip(
        r#"{
  "event": "start",
  "sequenceNumber": "1",
  "start": {
    "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "tracks": [ "inbound" ],
    "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
    "customParameters": { "FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob" }
  },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"#,
    );
    let TwilioMessage::Start(s) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(s.sequence_number, "1");
    assert_eq!(s.start.call_sid, "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    assert_eq!(s.start.account_sid, "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    assert_eq!(s.start.tracks, ["inbound"]);
    assert_eq!(s.start.media_format.encoding, "audio/x-mulaw");
    assert_eq!(s.start.media_format.sample_rate, 8000);
    assert_eq!(s.start.media_format.channels, 1);
    assert_eq!(s.start.custom_parameters["RemoteParty"], "Bob");
    assert_eq!(s.start.custom_parameters.len(), 3);
    assert_eq!(msg.stream_sid(), Some("MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"));
}

#[test]
fn media() {
    let msg = roundtrip(
        r#"{
  "event": "media",
  "sequenceNumber": "4",
  "media": { "track": "inbound", "chunk": "2", "timestamp": "5", "payload": "no+JhoaJjpzS" },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
}"#,
    );
    let TwilioMessage::Media(m) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(m.media.track, "inbound");
    assert_eq!(m.media.chunk, "2");
    assert_eq!(m.media.timestamp_ms(), Some(5));
    assert_eq!(
        m.audio().unwrap(),
        [0x9e, 0x8f, 0x89, 0x86, 0x86, 0x89, 0x8e, 0x9c, 0xd2]
    );
}

#[test]
fn dtmf_mark_stop() {
    let msg = roundtrip(
        r#"{ "event": "dtmf", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "sequenceNumber": "5",
  "dtmf": { "track": "inbound_track", "digit": "1" } }"#,
    );
    let TwilioMessage::Dtmf(d) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(
        (d.dtmf.track.as_str(), d.dtmf.digit.as_str()),
        ("inbound_track", "1")
    );

    let msg = roundtrip(
        r#"{ "event": "mark", "sequenceNumber": "4", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
  "mark": { "name": "my label" } }"#,
    );
    let TwilioMessage::Mark(m) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(m.mark.name, "my label");

    let msg = roundtrip(
        r#"{ "event": "stop", "sequenceNumber": "5",
  "stop": { "accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX" },
  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX" }"#,
    );
    let TwilioMessage::Stop(s) = &msg else {
        panic!("{msg:?}")
    };
    assert_eq!(s.stop.call_sid, "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
    assert_eq!(s.sequence_number, "5");
}

#[test]
fn unknown_events_and_odd_shapes_never_fail() {
    let text = r#"{"event":"speech-started","streamSid":"MZ1","whatever":[1,2]}"#;
    let msg = TwilioMessage::parse(text).unwrap();
    assert_eq!(
        msg,
        TwilioMessage::Unknown(serde_json::from_str(text).unwrap())
    );
    assert_eq!(msg.event(), "speech-started");
    assert_eq!(msg.stream_sid(), Some("MZ1"));
    // Round-trips raw.
    assert_eq!(
        serde_json::from_str::<Value>(&msg.to_json()).unwrap(),
        serde_json::from_str::<Value>(text).unwrap()
    );
    // A known event missing its body.
    let msg = TwilioMessage::parse(r#"{"event":"media","streamSid":"MZ1"}"#).unwrap();
    assert!(matches!(msg, TwilioMessage::Unknown(_)), "{msg:?}");
    assert_eq!(msg.event(), "media");
    // No event at all.
    assert_eq!(
        TwilioMessage::parse(r#"{"hello":1}"#).unwrap().event(),
        "unknown"
    );
    // Only non-JSON is an error.
    assert!(TwilioMessage::parse("not json").is_err());
}

#[test]
fn lenient_numbers_and_extra_fields() {
    let msg = TwilioMessage::parse(
        r#"{"event":"media","sequenceNumber":4,"media":{"track":"inbound","chunk":2,"timestamp":5,"payload":"","extra":true},"streamSid":"MZ1","new":"field"}"#,
    )
    .unwrap();
    let TwilioMessage::Media(m) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(
        (
            m.sequence_number.as_str(),
            m.media.chunk.as_str(),
            m.media.timestamp.as_str()
        ),
        ("4", "2", "5")
    );
    // Serialised back as strings, as Twilio sends them.
    let v: Value = serde_json::from_str(&TwilioMessage::Media(m).to_json()).unwrap();
    assert_eq!(v["sequenceNumber"], json!("4"));
    assert_eq!(v["media"]["chunk"], json!("2"));
}

#[test]
fn start_without_custom_parameters() {
    let msg = TwilioMessage::parse(
        r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#,
    )
    .unwrap();
    let TwilioMessage::Start(s) = msg else {
        panic!("{msg:?}")
    };
    assert!(s.start.custom_parameters.is_empty());
}

#[test]
fn server_messages_match_the_reference() {
    let sid = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";
    let cases = [
        (
            r#"{ "event": "media", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "media": { "payload": "a3242sa..." } }"#,
            ServerMessage::Media {
                stream_sid: sid.into(),
                media: voxmachina::twilio::media::OutboundMedia {
                    payload: "a3242sa...".into(),
                },
            },
        ),
        (
            r#"{ "event": "mark",  "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "mark": { "name": "my label" } }"#,
            ServerMessage::mark(sid, "my label"),
        ),
        (
            r#"{ "event": "clear", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX" }"#,
            ServerMessage::clear(sid),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(ServerMessage::parse(text).unwrap(), expected);
        assert_eq!(
            serde_json::from_str::<Value>(&expected.to_json()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(expected.stream_sid(), sid);
    }
    assert!(ServerMessage::parse(r#"{"event":"dtmf","streamSid":"MZ1"}"#).is_err());
}

#[test]
fn outbound_media_encodes_a_20ms_frame() {
    let frame = [0xffu8; FRAME_BYTES];
    let msg = ServerMessage::media("MZ1", &frame);
    let v: Value = serde_json::from_str(&msg.to_json()).unwrap();
    let payload = v["media"]["payload"].as_str().unwrap();
    assert_eq!(payload.len(), 216);
    assert_eq!(v["event"], "media");
    assert_eq!(v["streamSid"], "MZ1");
    assert_eq!(v.as_object().unwrap().len(), 3);
}
