//! The binary's commands as a newcomer runs them: `check`, `trigger` (the demo is
//! `crates/demo`, tested there).

use std::process::Command;

fn voxmachina() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxmachina"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_WEBHOOK_SECRET");
    cmd
}

#[test]
fn check_accepts_the_shipped_config_and_profiles() {
    let out = voxmachina()
        .args(["--config", "config/voxmachina.toml", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("default [default]"), "{stdout}");
}

#[test]
fn check_reports_errors_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("default.toml"), "default = true\n").unwrap();
    std::fs::write(dir.path().join("default.md"), "Hi.\n").unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "[match]\ndialed = [\"+1800\"]\n[escalation]\ntarget = \"mailto:x@example.com\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.md"), "Hi.\n").unwrap();
    let out = voxmachina()
        .arg("check")
        .env("VOXMACHINA_PROMPTS__DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("broken.toml:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("broken.toml:4:") || l.contains("broken.toml:3:")),
        "{stdout}"
    );
}

#[test]
fn trigger_refuses_without_a_secret() {
    let out = voxmachina()
        .args(["trigger", "--url", "http://127.0.0.1:9/openai/webhook"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_WEBHOOK_SECRET"));
}
