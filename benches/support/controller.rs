//! Shared by the benches that run the real `voxmachina serve` binary as a child process
//! (`e2e_webhooks`, `monitors`): starting it against the emulator, waiting for `/healthz`,
//! and reading its CPU time and memory from `/proc` (proc(5)).

#![allow(dead_code)] // each bench uses a part

use std::time::Duration;

use voxmachina_emulator::Emulator;

/// `name` parsed from the environment, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `voxmachina serve` command listening on 127.0.0.1:`port`, talking to `emulator` with
/// `api_key`, verifying webhooks with `secret`, storing in the SQLite file `db`; stdout
/// discarded, `RUST_LOG` from the environment (default `error`), killed when dropped. Add
/// more `VOXMACHINA_*` variables before spawning it.
pub fn command(
    port: u16,
    emulator: &Emulator,
    api_key: &str,
    secret: &str,
    db: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_voxmachina"));
    cmd.arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VOXMACHINA_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("VOXMACHINA_OPENAI__BASE_URL", emulator.rest_base_url())
        .env("VOXMACHINA_OPENAI__SIDEBAND_URL", emulator.sideband_url())
        .env("VOXMACHINA_STORE__SQLITE_PATH", db)
        .env("OPENAI_API_KEY", api_key)
        .env("OPENAI_WEBHOOK_SECRET", secret)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `{base}/healthz` every 25 ms, for at most 10 s.
pub async fn wait_healthy(base: &str) {
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The number after `key` in `/proc/{pid}/{file}` (e.g. `status`, `VmRSS:` in KiB).
pub fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid` in clock ticks (proc(5) `stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}
