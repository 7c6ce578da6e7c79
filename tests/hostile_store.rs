//! A failing store, for real: the SQLite database is capped with `[store] sqlite_max_size_mb`
//! (SQLite's `max_page_count`, which fails writes with `SQLITE_FULL` exactly like a full disk),
//! and the test fills the remaining pages from its own connection in the middle of a call, then
//! frees them again. What must hold: every transcript line of the call is stored, in order,
//! once the space is back; `/readyz` answers 503 while writes fail and 200 again after; a new
//! call offered during the outage is answered 503 (OpenAI redelivers) and never accepted without
//! a record; beyond the per-call bound lines are dropped, counted in a metric and recorded in a
//! `store_writes_dropped` event. The same outage on DynamoDB: a TCP proxy in front of the
//! local engine (moto) is cut in the middle of a call and restored.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;
use support::harness::{Harness, webhook_secret};
use voxmachina_emulator::Script;

const LINES: usize = 90;
/// `[store] sqlite_max_size_mb` in these tests: 256 pages of 4 KiB.
const CAP_MB: u64 = 1;

fn script() -> Script {
    let mut s = Script::new()
        .auto_reply(false)
        .greeting_wait_ms(100)
        .turn_gap_ms(30);
    for i in 0..LINES {
        s = s.caller(format!("line {i:02}"));
    }
    s.wait_ms(200).hangup()
}

/// The test's own connection to the controller's database file (another writer on the disk).
fn open(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Fills the database file to its cap with a ballast table: afterwards every write of the
/// controller that needs a new page fails with SQLITE_FULL.
fn fill(db: &Path) {
    let c = open(db);
    c.execute_batch("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
        .unwrap();
    let cap_pages = (CAP_MB << 20) / 4096;
    loop {
        let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free: u64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        if pages >= cap_pages + 4 && free == 0 {
            return;
        }
        c.execute("INSERT INTO ballast VALUES (zeroblob(3000))", [])
            .unwrap();
    }
}

/// Frees the ballast's pages (they go to the free list, which the capped writer reuses).
fn free(db: &Path) {
    open(db).execute("DELETE FROM ballast", []).unwrap();
}

/// The caller lines of `call_id` as committed in the database file (not the held copies).
fn stored_lines(db: &Path, call_id: &str) -> Vec<String> {
    let c = open(db);
    let mut st = c
        .prepare(
            "SELECT text FROM transcript_lines WHERE call_id = ?1 AND speaker = 'caller' ORDER BY id",
        )
        .unwrap();
    st.query_map([call_id], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn stored_events(db: &Path, call_id: &str) -> Vec<(String, Value)> {
    let c = open(db);
    let mut st = c
        .prepare("SELECT kind, detail FROM call_events WHERE call_id = ?1 ORDER BY id")
        .unwrap();
    st.query_map([call_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (k, d) = r.unwrap();
        (k, serde_json::from_str(&d).unwrap())
    })
    .collect()
}

fn stored_state(db: &Path, call_id: &str) -> Option<String> {
    open(db)
        .query_row(
            "SELECT state FROM calls WHERE call_id = ?1",
            [call_id],
            |r| r.get(0),
        )
        .ok()
}

async fn readyz(h: &Harness) -> (u16, Value) {
    let r = h
        .http
        .get(format!("{}/readyz", h.server.base_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls `/readyz` until it answers `status`; returns the answer and how long it took.
async fn readyz_becomes(h: &Harness, status: u16, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let (s, body) = readyz(h).await;
        if s == status {
            return (body, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "/readyz still {s} after {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(format!("{}/metrics", h.server.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Places the long call, fills the disk once `after` lines are committed, keeps it full while
/// `during` runs, frees it, and returns the call id.
async fn call_through_an_outage<F, Fut>(h: &Harness, after: usize, during: F) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = h.dir.path().join("voxmachina.db");
    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), script())
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let id = placed.call_id.clone();
    wait_until("first lines stored", Duration::from_secs(15), || {
        stored_lines(&db, &id).len() >= after
    })
    .await;
    let d = db.clone();
    tokio::task::spawn_blocking(move || fill(&d)).await.unwrap();
    during(placed.call_id.clone()).await;
    let d = db.clone();
    tokio::task::spawn_blocking(move || free(&d)).await.unwrap();
    placed.call_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_call_loses_no_line_and_readyz_follows_the_store() {
    let h = Harness::start_with(|c| c.store.sqlite_max_size_mb = CAP_MB).await;
    let db = h.dir.path().join("voxmachina.db");
    assert_eq!(readyz(&h).await.0, 200);

    let call_id = call_through_an_outage(&h, 10, |call_id| {
        let h = &h;
        let db = db.clone();
        async move {
            // Unready once writes fail (the next line after the disk filled), with the reason.
            let (body, _) = readyz_becomes(h, 503, Duration::from_secs(3)).await;
            assert_eq!(body["ready"], false, "{body}");
            let writes = body["store_writes"].as_str().unwrap();
            assert!(writes.starts_with("failing since"), "{body}");
            assert!(writes.contains("full"), "{body}");
            assert_eq!(body["store"], "ok", "reads still work: {body}");
            // /healthz stays the liveness answer.
            let live = h
                .http
                .get(format!("{}/healthz", h.server.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(live.status(), 200);

            // A new call during the outage: 503 so OpenAI redelivers, never accepted, no record.
            let other = h
                .emulator
                .place_call(&h.webhook_url(), &webhook_secret(), Script::new().hangup())
                .await
                .unwrap();
            assert_eq!(other.status, 503);
            assert!(
                h.emulator
                    .call(&other.call_id)
                    .unwrap()
                    .accept_body
                    .is_none(),
                "not accepted during the outage"
            );
            assert_eq!(stored_state(&db, &other.call_id), None);

            // Lines keep coming and are held, not lost. (A write that still fits in a page
            // with room succeeds, as on a real full disk with a partly filled page.)
            wait_until("lines held", Duration::from_secs(5), || {
                futures_executor_pending(h) >= 5
            })
            .await;
            assert!(stored_lines(&db, &call_id).len() < LINES);
            let m = metrics(h).await;
            assert!(
                m.lines().any(
                    |l| l.starts_with("voxmachina_store_pending_writes ") && !l.ends_with(" 0")
                ),
                "{m}"
            );
        }
    })
    .await;

    // Space is back: ready again, and every line is committed in order.
    let (body, _) = readyz_becomes(&h, 200, Duration::from_secs(5)).await;
    assert_eq!(body["store_writes"], "ok", "{body}");
    let record = h.wait_final(&call_id).await;
    let db2 = db.clone();
    let id = call_id.clone();
    wait_until("all lines committed", Duration::from_secs(20), move || {
        stored_lines(&db2, &id).len() == LINES
    })
    .await;
    let want: Vec<String> = (0..LINES).map(|i| format!("line {i:02}")).collect();
    assert_eq!(stored_lines(&db, &call_id), want);
    wait_until("record final on disk", Duration::from_secs(5), || {
        stored_state(&db, &call_id).as_deref() == Some(record.state.as_str())
    })
    .await;
    assert_eq!(h.server.state.held_writes.health().pending(), 0);
    let kinds: Vec<String> = stored_events(&db, &call_id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(kinds.iter().any(|k| k == "call_ended"), "{kinds:?}");
    assert!(
        !kinds.iter().any(|k| k == "store_writes_dropped"),
        "{kinds:?}"
    );

    // New calls are taken again.
    let again = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), Script::new().hangup())
        .await
        .unwrap();
    assert_eq!(again.status, 200);
}

/// Held writes right now (the controller's gauge, read in-process).
fn futures_executor_pending(h: &Harness) -> usize {
    h.server.state.held_writes.health().pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_lines_are_dropped_counted_and_recorded() {
    let h = Harness::start_with(|c| {
        c.store.sqlite_max_size_mb = CAP_MB;
        c.store.write_queue_per_call = 5;
    })
    .await;
    let db = h.dir.path().join("voxmachina.db");
    let call_id = call_through_an_outage(&h, 10, |call_id| {
        let db = db.clone();
        let h = &h;
        async move {
            // Hold the outage until well past the bound: 5 held, the rest dropped.
            wait_until("the bound is exceeded", Duration::from_secs(10), || {
                futures_executor_pending(h) >= 6
            })
            .await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert!(stored_lines(&db, &call_id).len() < LINES);
        }
    })
    .await;
    readyz_becomes(&h, 200, Duration::from_secs(5)).await;
    h.wait_final(&call_id).await;
    let db2 = db.clone();
    let id = call_id.clone();
    wait_until("drop event committed", Duration::from_secs(20), move || {
        stored_events(&db2, &id)
            .iter()
            .any(|(k, _)| k == "store_writes_dropped")
    })
    .await;
    wait_until("nothing held", Duration::from_secs(10), || {
        futures_executor_pending(&h) == 0
    })
    .await;

    let lines = stored_lines(&db, &call_id);
    let dropped: u64 = stored_events(&db, &call_id)
        .iter()
        .filter(|(k, _)| k == "store_writes_dropped")
        .map(|(_, d)| d["dropped_lines"].as_u64().unwrap())
        .sum();
    assert!(dropped > 0, "{lines:?}");
    assert_eq!(lines.len() as u64 + dropped, LINES as u64, "{lines:?}");
    // What was kept is in order.
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    let m = metrics(&h).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("voxmachina_store_dropped_total{kind=\"transcript\"}")),
        "{m}"
    );
}

/// A TCP proxy on 127.0.0.1:0 in front of `upstream` that can be cut (open connections reset,
/// new ones closed at once) and restored: a DynamoDB endpoint becoming unreachable.
struct Cuttable {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    async fn start(upstream: String) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Cuttable { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_outage_mid_call_loses_no_line_and_readyz_follows_it() {
    use voxmachina::store::Store;
    let Some(endpoint) = support::dynamodb::endpoint() else {
        return;
    };
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = Cuttable::start(upstream).await;
    let Some((store, tables)) =
        support::dynamodb::fresh_dynamo_via(&format!("http://{}", proxy.addr)).await
    else {
        return;
    };
    // The test reads what is committed straight from the engine.
    let direct = voxmachina::store::DynamoStore::new(
        voxmachina::store::DynamoStore::local_client(&endpoint, support::dynamodb::REGION),
        tables.prefix(),
    );
    let emulator = voxmachina_emulator::Emulator::start(voxmachina_emulator::EmulatorConfig {
        api_key: support::harness::API_KEY.to_string(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    support::harness::copy_prompts_with_closed_line(&prompts);
    let mut config = support::harness::test_config(&emulator, dir.path(), &prompts);
    config.store.backend = "dynamodb".into();
    let server = voxmachina::app::start_with_store(
        config,
        support::harness::test_secrets(),
        std::sync::Arc::new(store),
    )
    .await
    .unwrap();
    let h = Harness {
        emulator,
        server,
        dir,
        http: reqwest::Client::new(),
    };
    let committed = |id: String| {
        let direct = direct.clone();
        async move {
            direct
                .transcript(&id)
                .await
                .unwrap()
                .into_iter()
                .filter(|l| l.text.starts_with("line "))
                .map(|l| l.text)
                .collect::<Vec<_>>()
        }
    };

    let placed = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), script())
        .await
        .unwrap();
    assert_eq!(placed.status, 200);
    let id = placed.call_id.clone();
    let start = Instant::now();
    while committed(id.clone()).await.len() < 10 {
        assert!(start.elapsed() < Duration::from_secs(15), "no lines stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let (body, _) = readyz_becomes(&h, 503, Duration::from_secs(15)).await;
    assert_eq!(body["ready"], false, "{body}");
    let other = h
        .emulator
        .place_call(&h.webhook_url(), &webhook_secret(), Script::new().hangup())
        .await
        .unwrap();
    assert_eq!(
        other.status, 503,
        "no call is taken while the store is unreachable"
    );
    assert!(
        h.emulator
            .call(&other.call_id)
            .unwrap()
            .accept_body
            .is_none()
    );
    wait_until("lines held", Duration::from_secs(10), || {
        futures_executor_pending(&h) >= 5
    })
    .await;
    proxy.restore();

    readyz_becomes(&h, 200, Duration::from_secs(15)).await;
    let record = h.wait_final(&id).await;
    let want: Vec<String> = (0..LINES).map(|i| format!("line {i:02}")).collect();
    let start = Instant::now();
    loop {
        let lines = committed(id.clone()).await;
        if lines.len() >= LINES {
            assert_eq!(lines, want);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} lines",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    while direct.get_call(&id).await.unwrap().map(|r| r.state) != Some(record.state) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "final record not committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(futures_executor_pending(&h), 0);
}
