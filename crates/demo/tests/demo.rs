//! `voxmachina-demo` as a newcomer runs it (`cargo run --release -p voxmachina-demo`, from the
//! repository root): the OpenAI SIP call that ends transferred, the Amazon Connect hand-over
//! and the Twilio Media Streams path in both audio modes, all in-process on 127.0.0.1.

use std::process::Command;

/// The demo binary, run from the repository root (it reads `config/`, `prompts/`, `scripts/`
/// and `tests/fixtures/` there).
fn voxmachina_demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina-demo"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_WEBHOOK_SECRET");
    cmd
}

#[test]
fn demo_plays_a_call_that_ends_transferred() {
    let out = voxmachina_demo().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("caller: Thanks. Can I speak to a real person please?"),
        "{stdout}"
    );
    assert!(stdout.contains("\"state\": \"transferred\""), "{stdout}");
    assert!(stdout.contains("demo ok"), "{stdout}");
}

#[test]
fn demo_connect_hands_over_and_the_lambda_redeems_the_token() {
    let out = voxmachina_demo().arg("--connect").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo --connect failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"action\": \"connect_refer\"")
            && stdout.contains("\"target\": \"tel:+18885550123\""),
        "{stdout}"
    );
    for needle in [
        "contact attributes the agent sees:",
        "success              true",
        "matched_by           token",
        "caller_phone         +14155550188",
        "route_to_queue       billing",
        "intent               billing",
        "summary              Caller request: Hi, I called earlier this week about a double charge",
        "second redemption of the same code: success=false reason=invalid_token",
        "demo ok",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

fn demo_media(audio: &str) -> String {
    let out = voxmachina_demo()
        .args(["--media", "--audio", audio])
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
    demo_media("pcmu");
}

#[test]
fn demo_media_pcm16() {
    demo_media("pcm16");
}
