//! `voxmachina demo --media` as a newcomer runs it: the whole Twilio Media Streams path
//! in-process on 127.0.0.1, in both audio modes.

use std::process::Command;

fn demo(audio: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_voxmachina"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_WEBHOOK_SECRET")
        .args(["demo", "--media", "--audio", audio])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo --media --audio {audio} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "POST /twilio/voice → HTTP 200 OK",
        "<Connect><Stream url=\"wss://demo.voxmachina.invalid/twilio/media\"",
        "caller: Hello, thanks for calling. How can I help you today?",
        "caller: Sorry, one more thing: can I bring my dog?",
        "agent: Of course, dogs are welcome on the terrace. Goodbye!",
        &format!("bridge frame statistics ({audio} mode)"),
        "barge-ins 1 (truncates 1), dtmf 0, malformed 0",
        "per-frame bridge time: inbound p50",
        "\"confirmation_number\": \"R7K2P9\"",
        "\"state\": \"ended\"",
        "demo ok",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    stdout
}

#[test]
fn demo_media_pcmu() {
    demo("pcmu");
}

#[test]
fn demo_media_pcm16() {
    demo("pcm16");
}
