//! A local DynamoDB engine for the tests.
//!
//! The endpoint comes from `VOXMACHINA_TEST_DYNAMODB_ENDPOINT` (set by
//! `tools/setup.d/10-dynamodb.sh`, which `tools/test.sh` sources). Without it:
//! - when `CI` is set, the tests fail: CI must run against the engine;
//! - when `target/moto-venv/bin/moto_server` exists (left by an earlier `tools/test.sh`), one
//!   moto server per test binary is started on a free port and stopped when the binary exits;
//! - otherwise each DynamoDB test prints one skip line (on the real stderr, past the test
//!   harness's capture) and returns.
//!
//! Every [`fresh_store`] gets its own table prefix, so tests and runs never share tables; the
//! returned [`Tables`] guard deletes them when dropped.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use voxmachina::store::{DynamoStore, Store};

/// The variable naming the engine's endpoint, e.g. `http://127.0.0.1:41234`.
pub const ENDPOINT_ENV: &str = "VOXMACHINA_TEST_DYNAMODB_ENDPOINT";

/// Region used with the local engine (any is accepted).
pub const REGION: &str = "us-east-1";

/// The engine's endpoint, or `None` when the tests should skip (see the module docs).
///
/// # Panics
/// When `CI` is set and no endpoint is configured, or a moto server cannot be started.
pub fn endpoint() -> Option<String> {
    static ENDPOINT: OnceLock<Option<String>> = OnceLock::new();
    ENDPOINT.get_or_init(find_endpoint).clone()
}

fn find_endpoint() -> Option<String> {
    if let Some(ep) = std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()) {
        return Some(ep);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{ENDPOINT_ENV} is not set but CI is: the DynamoDB tests must run against a local \
             engine (tools/test.sh sources tools/setup.d/10-dynamodb.sh to start moto)"
        );
    }
    let moto = moto_server_path();
    if moto.is_file() {
        return Some(start_moto(&moto));
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: DynamoDB tests: {ENDPOINT_ENV} is not set and {} does not exist; run \
         `bash tools/test.sh` (or source tools/setup.d/10-dynamodb.sh) to run them",
        moto.display()
    );
    None
}

/// `target/moto-venv/bin/moto_server` of this checkout.
pub fn moto_server_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server")
}

/// Starts `moto_server` on a free loopback port, watched by a shell that stops it when this
/// test process exits, and waits until it accepts connections.
fn start_moto(moto: &Path) -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The watcher runs detached (the outer shell exits at once and is waited for): it stops
    // moto when this process is gone.
    let script = format!(
        "( \"$0\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done; \
         kill $m 2>/dev/null ) &",
        parent = std::process::id()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(moto)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start moto_server");
    assert!(status.success(), "starting moto_server: {status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on 127.0.0.1:{port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = writeln!(
        std::io::stderr(),
        "started {} on 127.0.0.1:{port} for this test binary",
        moto.display()
    );
    format!("http://127.0.0.1:{port}")
}

/// A table prefix unique to this process and call.
pub fn unique_prefix() -> String {
    static RUN: OnceLock<u32> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let run = *RUN.get_or_init(rand::random);
    format!("vmt{run:08x}_{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The tables of one test store; dropping it deletes them (from a helper thread with its own
/// client and runtime, so it works inside and outside async tests).
pub struct Tables {
    endpoint: String,
    prefix: String,
}

impl Tables {
    /// The table prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let (endpoint, prefix) = (self.endpoint.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let store = DynamoStore::new(DynamoStore::local_client(&endpoint, REGION), &prefix);
                let _ = store.delete_tables().await;
            });
        })
        .join();
    }
}

/// A [`DynamoStore`] on freshly created tables with a unique prefix, or `None` (skip).
pub async fn fresh_dynamo() -> Option<(DynamoStore, Tables)> {
    let endpoint = endpoint()?;
    let prefix = unique_prefix();
    let store = DynamoStore::new(DynamoStore::local_client(&endpoint, REGION), &prefix);
    store
        .create_tables(Duration::from_secs(60))
        .await
        .expect("create tables");
    Some((store, Tables { endpoint, prefix }))
}

/// [`fresh_dynamo`], but the returned store talks to `via` (e.g. a TCP proxy in front of the
/// engine that a test can cut) instead of the engine; the tables are created and deleted on the
/// engine itself.
pub async fn fresh_dynamo_via(via: &str) -> Option<(DynamoStore, Tables)> {
    let (_, tables) = fresh_dynamo().await?;
    let store = DynamoStore::new(DynamoStore::local_client(via, REGION), &tables.prefix);
    Some((store, tables))
}

/// [`fresh_dynamo`] as a trait object, for `store_conformance_tests!(optional ...)`.
pub async fn fresh_store() -> Option<(Arc<dyn Store>, Tables)> {
    let (store, tables) = fresh_dynamo().await?;
    Some((Arc::new(store), tables))
}
