//! Benchmark (3): many concurrent call monitors. The real `voxmachina serve` binary runs as a
//! child process; this process hosts the OpenAI emulator and places `CALLS` calls through signed
//! webhooks. Each call's sideband then carries one caller transcript event a second (plus the
//! speech/commit events around it), which the controller stores in SQLite.
//!
//! Reports the controller's resident memory per monitored call (VmRSS of the child, steady state
//! minus idle), its CPU use, and that the transcript lines really landed.
//!
//! Run: `ulimit -n 65536; CALLS=10000 cargo bench --bench monitors` (default CALLS=1000,
//! HOLD_SECS=15 of steady state after the last call is up).

use std::time::{Duration, Instant};

use voxmachina::store::{SqliteStore, Store};
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

#[path = "support/controller.rs"]
mod controller;
use controller::{cpu_ticks, env_or, proc_field};

const API_KEY: &str = "sk-bench";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn script(secs: u64) -> Script {
    let mut s = Script::new()
        .from("<sip:+14155550123@pstn.twilio.com>;tag=m")
        .to("<sip:+18005550000@sip.api.openai.com>")
        .auto_reply(false)
        .greeting_wait_ms(0)
        .turn_gap_ms(0);
    for i in 0..secs {
        s = s
            .caller(format!(
                "This is transcript line number {i} of a long call."
            ))
            .wait_ms(1000);
    }
    s
}

fn main() {
    let calls = env_or("CALLS", 1000) as usize;
    let hold = env_or("HOLD_SECS", 15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let emulator = Emulator::start(EmulatorConfig { api_key: API_KEY.into() }).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("monitors.db");
        let port = controller::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = controller::command(port, &emulator, API_KEY, SECRET, &db).spawn().unwrap();
        let pid = child.id().unwrap();
        controller::wait_healthy(&base).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_kib = proc_field(pid, "status", "VmRSS:").unwrap();

        let url = format!("{base}/openai/webhook");
        let started = Instant::now();
        let mut ids = Vec::with_capacity(calls);
        let mut ticker = tokio::time::interval(Duration::from_millis(2));
        let call_secs = hold + 60;
        let mut handles = Vec::new();
        for _ in 0..calls {
            ticker.tick().await;
            let (e, u) = (emulator.clone(), url.clone());
            let s = script(call_secs);
            handles.push(tokio::spawn(async move { e.place_call(&u, SECRET, s).await }));
        }
        let mut failed = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(p) if p.status == 200 => ids.push(p.call_id),
                _ => failed += 1,
            }
        }
        // Wait until every accepted call has its sideband attached.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let connected = ids
                .iter()
                .filter(|id| emulator.call(id).is_some_and(|v| v.sideband_connections >= 1))
                .count();
            if connected == ids.len() || Instant::now() > deadline {
                println!("{connected}/{} sidebands attached in {:.1} s ({failed} webhooks failed)", ids.len(), started.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ticks0 = cpu_ticks(pid);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let ticks = cpu_ticks(pid) - ticks0;
        let busy = ticks as f64 / 100.0 / t0.elapsed().as_secs_f64();
        let steady_kib = proc_field(pid, "status", "VmRSS:").unwrap();
        let hwm_kib = proc_field(pid, "status", "VmHWM:").unwrap();

        let store = SqliteStore::open(&db).unwrap();
        let sample: Vec<_> = ids.iter().step_by((ids.len() / 20).max(1)).collect();
        let mut lines = 0;
        for id in &sample {
            lines += store.transcript(id).await.unwrap().len();
        }
        let per_call = (steady_kib.saturating_sub(idle_kib)) as f64 / ids.len().max(1) as f64;
        println!("calls monitored: {}", ids.len());
        println!("controller RSS idle {idle_kib} KiB, steady {steady_kib} KiB, peak {hwm_kib} KiB");
        println!("RSS per monitored call: {per_call:.1} KiB");
        println!("controller CPU during {hold} s of steady state: {:.0}% of one core ({:.1} µs per transcript event)",
            busy * 100.0, busy * 1e6 / ids.len().max(1) as f64);
        println!("transcript lines stored for {} sampled calls: {lines} (≈{:.1} per call)", sample.len(), lines as f64 / sample.len().max(1) as f64);
        child.kill().await.unwrap();
    });
}
