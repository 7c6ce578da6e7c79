//! Issue 13 item 8: the HTTP server's limits, against a served instance on 127.0.0.1 (and the
//! real binary for file-descriptor exhaustion): slow-header (slowloris) and slow-body clients
//! are closed after their timeout, idle keep-alive connections are closed, the connection cap
//! refuses extra connections with 503 and recovers, slow clients do not hold shutdown, and
//! `accept()` failing with EMFILE pauses accepting (without spinning) and recovers.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::harness::Harness;
use support::serve::Controller;

/// Reads until EOF (or an error such as a reset); returns what was read and when it ended.
/// Panics if the connection is still open after `limit`.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Instant) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    started.elapsed() < limit,
                    "connection still open after {limit:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                );
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

/// Writes `byte` to `s` every 100 ms for ten seconds, or until the server closes it.
fn trickle(s: &TcpStream, byte: &'static [u8]) {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..100 {
            if w.write_all(byte).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

async fn harness(adjust: impl FnOnce(&mut voxmachina::config::HttpLimitsConfig)) -> Harness {
    Harness::start_with(|c| adjust(&mut c.http)).await
}

fn addr(h: &Harness) -> SocketAddr {
    h.server.addr
}

/// `GET /healthz` on a new connection; the status line.
fn healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (text, _) = read_to_close(&mut s, Duration::from_secs(10));
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let h = harness(|l| {
        l.header_read_timeout_ms = 800;
        l.idle_timeout_ms = 30_000;
    })
    .await;
    let a = addr(&h);
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        let opened = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .unwrap();
        // One header byte every 100 ms: never a complete head.
        trickle(&s, b"X");
        let (text, at) = read_to_close(&mut s, Duration::from_secs(8));
        (text, at.duration_since(opened))
    })
    .await
    .unwrap();
    assert!(
        closed.0.is_empty(),
        "no response to a head never finished: {closed:?}"
    );
    assert!(
        closed.1 >= Duration::from_millis(700),
        "closed by the header timeout, not before it: {:?}",
        closed.1
    );
    // A normal client is served meanwhile and afterwards.
    let a = addr(&h);
    let status = tokio::task::spawn_blocking(move || healthz(a))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_the_connection_closes() {
    let h = harness(|l| {
        l.body_read_timeout_ms = 800;
        l.header_read_timeout_ms = 5_000;
    })
    .await;
    let a = addr(&h);
    let (text, took) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        let opened = Instant::now();
        s.write_all(
            b"POST /openai/webhook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .unwrap();
        trickle(&s, b" ");
        let (text, at) = read_to_close(&mut s, Duration::from_secs(8));
        (text, at.duration_since(opened))
    })
    .await
    .unwrap();
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout"),
        "{text:?} after {took:?}"
    );
    assert!(took >= Duration::from_millis(700), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let h = harness(|l| {
        l.idle_timeout_ms = 600;
        l.header_read_timeout_ms = 5_000;
    })
    .await;
    let a = addr(&h);
    let (text, idle_for) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        // Read the answer (keep-alive: the connection stays open after it).
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let answered = Instant::now();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (rest, at) = read_to_close(&mut s, Duration::from_secs(6));
        (first + &rest, at.duration_since(answered))
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(idle_for >= Duration::from_millis(500), "{idle_for:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_extra_connections_then_recovers() {
    let h = harness(|l| {
        l.max_connections = 3;
        l.header_read_timeout_ms = 30_000;
    })
    .await;
    let a = addr(&h);
    tokio::task::spawn_blocking(move || {
        // Three silent connections take every slot.
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(a).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..2 {
            let mut extra = TcpStream::connect(a).unwrap();
            let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
            let (text, _) = read_to_close(&mut extra, Duration::from_secs(5));
            assert!(
                text.starts_with("HTTP/1.1 503 Service Unavailable"),
                "{text:?}"
            );
        }
        drop(held);
        // Slots come back as the held connections close.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = healthz(a);
            if status == "HTTP/1.1 200 OK" {
                break;
            }
            assert!(Instant::now() < deadline, "still refused: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let metrics = h
        .http
        .get(format!("{}/metrics", h.server.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("voxmachina_http_connections_refused_total{reason=\"max_connections\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_shutdown() {
    let h = harness(|l| {
        l.header_read_timeout_ms = 60_000;
        l.body_read_timeout_ms = 1_000;
        l.idle_timeout_ms = 60_000;
    })
    .await;
    let a = addr(&h);
    // A slow header and a slow body, both far from their (header) timeout.
    let mut slow_head = TcpStream::connect(a).unwrap();
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let mut slow_body = TcpStream::connect(a).unwrap();
    slow_body
        .write_all(b"POST /openai/webhook HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let Harness { server, .. } = h;
    tokio::time::timeout(
        Duration::from_secs(15),
        server.shutdown(Duration::from_secs(1)),
    )
    .await
    .expect("shutdown finishes although two clients never finish their requests");
    // Both connections were closed by the server.
    let (_, _) = read_to_close(&mut slow_head, Duration::from_secs(5));
    let (_, _) = read_to_close(&mut slow_body, Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_pauses_accepting_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    support::harness::copy_prompts_with_closed_line(&prompts);
    let config = dir.path().join("voxmachina.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[logging]\nformat = \"json\"\n[prompts]\ndir = \"{}\"\n[store]\nsqlite_path = \"{}\"\n[http]\nheader_read_timeout_ms = 60000\nmax_connections = 10000\n",
            prompts.display(),
            dir.path().join("v.db").display()
        ),
    )
    .unwrap();
    let c = Controller::start(&config, "emfile", &[]);
    let pid = c.child.id();
    // A few descriptors above what the server holds now.
    let limit = open_fds(pid) + 6;
    let ok = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit");
    let a = c.addr;
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(a).unwrap()).collect();
    // Let the server run into EMFILE and sit in its backoff for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        c.log_text().contains("accept failed"),
        "the server ran out of descriptors (limit {limit}):\n{}",
        c.log_text()
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = tokio::task::spawn_blocking(move || healthz(a))
            .await
            .unwrap();
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{a}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("voxmachina_http_accept_errors_total "))
        .unwrap_or_else(|| panic!("accept errors counted: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    // With a backoff from 10 ms doubling to 1 s, two seconds of EMFILE are under a dozen tries;
    // a loop retrying at once would count millions.
    assert!((1.0..100.0).contains(&errors), "{errors} accept errors");
    let logs = c.log_text();
    assert_eq!(
        logs.matches("accept failed").count(),
        1,
        "one warning per 30 s, however often accept fails:\n{logs}"
    );
    assert!(logs.contains("accepting HTTP connections again"), "{logs}");
}
