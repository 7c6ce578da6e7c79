//! Benchmark (2): end to end, at a fixed rate. Signed `realtime.call.incoming` webhooks are sent
//! to the real controller, the `voxmachina serve` binary in a child process (HTTP on 127.0.0.1,
//! SQLite file), which verifies, dedupes, routes, calls `/accept` on the OpenAI emulator and
//! answers; each accepted call then attaches a sideband monitor and is greeted (the calls stay
//! up), so monitors run while webhooks arrive.
//!
//! Reports requests/s and latency percentiles of the webhook round trip, and, at the same rate,
//! of a bare `/accept` round trip to the emulator: the difference is what the controller adds.
//! Also the CPU each side used during the webhook run (`/proc/<pid>/stat` utime + stime): the
//! controller per call, and this process (load generator + emulator), which shares the
//! machine's cores with the controller, so the latencies are an upper bound on the
//! controller's own.
//!
//! Run: `cargo bench --bench e2e_webhooks` (env `RATE`, default 1000 per second; `SECS`,
//! default 10; `STORE=dynamodb` stores through `aws-sdk-dynamodb` on fresh tables at
//! `VOXMACHINA_TEST_DYNAMODB_ENDPOINT`, e.g. the moto server `tools/setup.d/10-dynamodb.sh`
//! starts, instead of the SQLite file; `TRACE=1` prints one stderr line per successful request,
//! `T <start, Unix µs> <latency µs> <index>`, baseline run first, to line slow requests up
//! with what the controller did at the time). Other `VOXMACHINA_*` variables in the
//! environment reach the controller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voxmachina::store::DynamoStore;
use voxmachina_emulator::{Emulator, EmulatorConfig, Script};

#[path = "support/controller.rs"]
mod controller;
use controller::env_or;

const API_KEY: &str = "sk-bench";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn script() -> Script {
    Script::new()
        .from("\"Bench Caller\" <sip:+14155550123@pstn.twilio.com>;tag=bench")
        .to("<sip:+18005550000@sip.api.openai.com>")
        .greeting_wait_ms(50)
}

struct Stats {
    sorted_us: Vec<u64>,
}

impl Stats {
    fn new(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        Self { sorted_us: us }
    }
    fn pct(&self, p: f64) -> f64 {
        if self.sorted_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.sorted_us.len() as f64 - 1.0) * p).round() as usize;
        self.sorted_us[i] as f64 / 1000.0
    }
    fn line(&self, name: &str, elapsed: Duration) -> String {
        format!(
            "{name:<28} n={:<6} rate={:>7.0}/s  p50={:.3} ms  p90={:.3} ms  p99={:.3} ms  p99.9={:.3} ms  max={:.3} ms",
            self.sorted_us.len(),
            self.sorted_us.len() as f64 / elapsed.as_secs_f64(),
            self.pct(0.50),
            self.pct(0.90),
            self.pct(0.99),
            self.pct(0.999),
            self.pct(1.0),
        )
    }
}

/// Runs `n` requests at `rate` per second; `op(i)` returns the HTTP status.
async fn fixed_rate<F, Fut>(n: usize, rate: u64, op: F) -> (Stats, Duration, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let op = Arc::new(op);
    let trace = std::env::var_os("TRACE").is_some();
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        ticker.tick().await;
        let (op, lat, failures) = (op.clone(), lat.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let started_at = std::time::SystemTime::now();
            let status = op(i).await;
            let us = t.elapsed().as_micros() as u64;
            if status == 200 {
                lat.lock().unwrap().push(us);
                if trace {
                    let w = started_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_micros();
                    eprintln!("T {w} {us} {i}");
                }
            } else {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let us = std::mem::take(&mut *lat.lock().unwrap());
    (
        Stats::new(us),
        elapsed,
        failures.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// CPU seconds used by the controller process and by this one (generator + emulator).
fn cpu_secs(controller: u32) -> (f64, f64) {
    (
        controller::cpu_ticks(controller) as f64 / 100.0,
        controller::cpu_ticks(std::process::id()) as f64 / 100.0,
    )
}

fn main() {
    let rate = env_or("RATE", 1000);
    let secs = env_or("SECS", 10);
    let n = (rate * secs) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let emulator = Emulator::start(EmulatorConfig {
            api_key: API_KEY.into(),
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = controller::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = controller::command(
            port,
            &emulator,
            API_KEY,
            SECRET,
            &dir.path().join("bench.db"),
        );
        cmd.env("VOXMACHINA_MONITOR__RECONNECT_INITIAL_DELAY_MS", "20");
        if std::env::var("STORE").as_deref() == Ok("dynamodb") {
            let endpoint = std::env::var("VOXMACHINA_TEST_DYNAMODB_ENDPOINT")
                .expect("STORE=dynamodb needs VOXMACHINA_TEST_DYNAMODB_ENDPOINT");
            let prefix = format!("bench{}", std::process::id());
            DynamoStore::new(DynamoStore::local_client(&endpoint, "us-east-1"), &prefix)
                .create_tables(Duration::from_secs(60))
                .await
                .unwrap();
            cmd.env("VOXMACHINA_STORE__BACKEND", "dynamodb")
                .env("VOXMACHINA_STORE__DYNAMODB__TABLE_PREFIX", &prefix)
                .env("VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL", &endpoint)
                .env("VOXMACHINA_STORE__DYNAMODB__REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "bench")
                .env("AWS_SECRET_ACCESS_KEY", "bench");
            println!("store: DynamoDB at {endpoint} (tables {prefix}_*)");
        } else {
            println!("store: SQLite file");
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        controller::wait_healthy(&base).await;
        let http = reqwest::Client::new();
        let url = format!("{base}/openai/webhook");

        // Warm-up: connections, SQLite pages, allocator.
        for _ in 0..200 {
            let p = emulator.new_call(script());
            let ts = chrono::Utc::now().timestamp();
            let status = emulator
                .deliver(&url, SECRET, &format!("wh_warm_{}", p.call_id), ts, &p.body)
                .await
                .unwrap();
            assert_eq!(status, 200, "warm-up webhook refused");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Baseline: a bare /accept round trip to the emulator at the same rate.
        let pending: Arc<Vec<_>> = Arc::new((0..n).map(|_| emulator.new_call(script())).collect());
        let accept_base = emulator.rest_base_url();
        let (p2, h2) = (pending.clone(), http.clone());
        let (baseline, b_elapsed, b_fail) = fixed_rate(n, rate, move |i| {
            let (p, h, base) = (p2.clone(), h2.clone(), accept_base.clone());
            async move {
                h.post(format!("{base}/realtime/calls/{}/accept", p[i].call_id))
                    .bearer_auth(API_KEY)
                    .json(&serde_json::json!({"type": "realtime", "model": "gpt-realtime-2.1"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .await;

        // The webhook path end to end, on fresh calls.
        let pending: Arc<Vec<_>> = Arc::new((0..n).map(|_| emulator.new_call(script())).collect());
        let (e, u) = (emulator.clone(), url.clone());
        let (c0, h0) = cpu_secs(pid);
        let (webhooks, w_elapsed, w_fail) = fixed_rate(n, rate, move |i| {
            let (e, u, p) = (e.clone(), u.clone(), pending.clone());
            async move {
                let ts = chrono::Utc::now().timestamp();
                e.deliver(&u, SECRET, &format!("wh_{}", p[i].call_id), ts, &p[i].body)
                    .await
                    .unwrap_or(0)
            }
        })
        .await;
        let (c1, h1) = cpu_secs(pid);
        let wall = w_elapsed.as_secs_f64();

        println!("target rate {rate}/s for {secs} s ({n} requests each)");
        println!(
            "{}  failures={b_fail}",
            baseline.line("accept round trip (base)", b_elapsed)
        );
        println!(
            "{}  failures={w_fail}",
            webhooks.line("webhook end to end", w_elapsed)
        );
        println!(
            "added by the controller: p50={:.3} ms  p99={:.3} ms",
            webhooks.pct(0.50) - baseline.pct(0.50),
            webhooks.pct(0.99) - baseline.pct(0.99)
        );
        println!(
            "CPU during the webhook run: controller {:.2} cores ({:.0} µs per call), generator + emulator {:.2} cores",
            (c1 - c0) / wall,
            (c1 - c0) * 1e6 / n as f64,
            (h1 - h0) / wall,
        );
        child.kill().await.unwrap();
    });
}
