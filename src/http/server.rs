//! The HTTP server: an accept loop over hyper's HTTP/1.1 server connection (with upgrades, for
//! the WebSocket routes), with the limits of `[http]` ([`HttpLimitsConfig`]):
//!
//! - **header read timeout**: a connection that has not delivered a complete request head
//!   `header_read_timeout_ms` after its accept (first request) or after the first byte of a
//!   later request is closed (slowloris);
//! - **body read timeout**: a request must deliver its body and be answered within
//!   `body_read_timeout_ms` of its head (`tower_http::timeout::TimeoutLayer`): past it the client
//!   gets `408 Request Timeout` and the connection is closed (hyper does not keep a connection
//!   whose request body was not read to its end);
//! - **idle timeout**: a keep-alive connection with no request in flight and no byte of a new
//!   one for `idle_timeout_ms` is closed;
//! - **maximum connections**: at most `max_connections` connections are open (a WebSocket holds
//!   its slot until it closes); more are accepted and answered `503 Service Unavailable` with
//!   `Connection: close` at once, and counted.
//!
//! File-descriptor exhaustion (`accept()` failing with `EMFILE`/`ENFILE`, or `ENOBUFS`/`ENOMEM`)
//! pauses accepting with a backoff from 10 ms to 1 s (new connections wait in the kernel's listen
//! backlog or are refused by it), warns at most every 30 s and logs when accepting works again,
//! counts each failure (`voxmachina_http_accept_errors_total`), and never spins. Per-connection accept errors (`ECONNABORTED`, ...) are skipped.
//!
//! Shutdown ([`serve`]'s `shutdown` token): the listener is closed, idle connections close at
//! once, requests in flight may finish within the body read timeout (at most [`DRAIN_MAX`]),
//! and whatever is left is then dropped, so no client can hold shutdown.
//!
//! Sources: hyper's server connection (`hyper::server::conn::http1`,
//! <https://docs.rs/hyper/1/hyper/server/conn/http1/>), RFC 9110 §15.5.9 (408) and §15.6.4
//! (503), RFC 9112 §9.6 (`Connection: close`), accept(2) (`EMFILE`, `ENFILE`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, info, warn};

use crate::config::HttpLimitsConfig;
use crate::telemetry::names;

/// Longest wait, at shutdown, for requests in flight before their connections are dropped.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);

/// First pause after an accept error caused by resource exhaustion; doubles per failure.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while resources are exhausted.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one accept-failure warning per this interval (a draining backlog can flap).
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(30);
/// How often a connection's deadline is re-checked at most (its phase may have moved it).
const DEADLINE_RECHECK: Duration = Duration::from_millis(250);

/// The answer to a connection over `max_connections` (RFC 9110 §15.6.4, RFC 9112 §9.6).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// Serves `router` on `listener` with the limits of `limits` until `shutdown` is cancelled,
/// then drains as described in the module docs and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimitsConfig,
    shutdown: CancellationToken,
) {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.body_read_timeout(),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let mut conns = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // The current run of accept failures: (since, failures, warned about), and the last warning.
    let mut failing: Option<(Instant, u64, bool)> = None;
    let mut last_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    if let Some((since, failures, true)) = failing.take() {
                        info!(
                            failures,
                            paused_ms = since.elapsed().as_millis() as u64,
                            "accepting HTTP connections again"
                        );
                    }
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let conn = Connection {
                                router: router.clone(),
                                limits: limits.clone(),
                                graceful: graceful.clone(),
                                hard: hard.clone(),
                            };
                            conns.spawn(conn.run(tcp, permit));
                        }
                        Err(_) => refuse(tcp),
                    }
                }
                Err(e) if per_connection_error(&e) => {
                    debug!(error = %e, "accept: connection gone before it was accepted");
                }
                Err(e) => {
                    metrics::counter!(names::HTTP_ACCEPT_ERRORS).increment(1);
                    let run = failing.get_or_insert((Instant::now(), 0, false));
                    run.1 += 1;
                    if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                        warn!(
                            error = %e,
                            "accept failed (file descriptors or memory exhausted?); new \
                             connections wait until it works again"
                        );
                        last_warning = Some(Instant::now());
                        run.2 = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
        }
    }
    drop(listener);
    graceful.cancel();
    let drain = limits.body_read_timeout().min(DRAIN_MAX);
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        info!(
            connections = conns.len(),
            "closing HTTP connections still open after the drain"
        );
        hard.cancel();
        conns.shutdown().await;
    }
}

/// Accept errors that concern one connection only (it went away before `accept()` returned),
/// after which the next `accept()` can be tried at once.
fn per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers a connection over `max_connections` with [`OVER_CAPACITY`] (best effort, never
/// waiting on the client) and closes it.
fn refuse(tcp: TcpStream) {
    metrics::counter!(names::HTTP_CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
    let _ = tcp.try_write(OVER_CAPACITY);
    debug!("connection refused: max_connections reached");
}

/// Where a connection is in its request cycle, and the deadline of that phase.
#[derive(Debug)]
struct Phase {
    /// Requests whose response is not ready yet.
    in_flight: usize,
    /// A byte of a request head arrived while no request was in flight.
    head_started: bool,
    /// When the connection is closed unless the phase changes first; `None` while a request is
    /// in flight (the body read timeout applies then).
    deadline: Option<Instant>,
}

/// Shared by a connection's I/O (reads), its service (requests) and its watcher.
#[derive(Debug)]
struct ConnState {
    phase: Mutex<Phase>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnState {
    fn new(limits: &HttpLimitsConfig) -> Self {
        Self {
            // The first request's head is due `header_timeout` after the accept.
            phase: Mutex::new(Phase {
                in_flight: 0,
                head_started: true,
                deadline: Some(Instant::now() + limits.header_read_timeout()),
            }),
            header_timeout: limits.header_read_timeout(),
            idle_timeout: limits.idle_timeout(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived: on an idle connection they start a request head.
    fn on_read(&self) {
        let mut p = self.lock();
        if p.in_flight == 0 && !p.head_started {
            p.head_started = true;
            p.deadline = Some(Instant::now() + self.header_timeout);
        }
    }

    /// A request head was read and handed to the router.
    fn request_started(&self) {
        let mut p = self.lock();
        p.in_flight += 1;
        p.deadline = None;
    }

    /// A response is ready; with none left in flight the connection is idle.
    fn request_finished(&self) {
        let mut p = self.lock();
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.head_started = false;
            p.deadline = Some(Instant::now() + self.idle_timeout);
        }
    }

    /// The deadline, and whether it is the header (not the idle) one.
    fn deadline(&self) -> Option<(Instant, bool)> {
        let p = self.lock();
        p.deadline.map(|d| (d, p.head_started))
    }
}

/// The TCP stream of a connection: reports reads to [`ConnState`] and holds the connection's
/// slot (`max_connections`) until it is dropped, also after a WebSocket upgrade took it over.
struct TrackedIo {
    tcp: TcpStream,
    state: Arc<ConnState>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The router as a hyper service that marks each request's start and end on [`ConnState`].
#[derive(Clone)]
struct TrackedService {
    router: Router,
    state: Arc<ConnState>,
}

/// Ends a request on [`ConnState`] when dropped (its response is ready, or hyper dropped it).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for TrackedService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.state.request_started();
        let guard = InFlight(self.state.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let resp = tower::ServiceExt::oneshot(router, req).await;
            drop(guard);
            resp
        })
    }
}

/// One accepted connection and what it needs.
struct Connection {
    router: Router,
    limits: HttpLimitsConfig,
    graceful: CancellationToken,
    hard: CancellationToken,
}

impl Connection {
    /// Serves the connection until it ends, its phase deadline passes, or shutdown.
    async fn run(self, tcp: TcpStream, slot: OwnedSemaphorePermit) {
        let _ = tcp.set_nodelay(true);
        let _open = OpenGauge::new();
        let state = Arc::new(ConnState::new(&self.limits));
        let io = TrackedIo {
            tcp,
            state: state.clone(),
            _slot: slot,
        };
        let service = TrackedService {
            router: self.router,
            state: state.clone(),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let now = Instant::now();
            let wake = match state.deadline() {
                Some((deadline, _)) => deadline.min(now + DEADLINE_RECHECK),
                None => now + DEADLINE_RECHECK,
            };
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        debug!(error = %e, "HTTP connection ended with an error");
                    }
                    break;
                }
                () = self.graceful.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = self.hard.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {
                    if let Some((deadline, header)) = state.deadline() {
                        if Instant::now() >= deadline {
                            let phase = if header { "header" } else { "idle" };
                            metrics::counter!(names::HTTP_TIMEOUTS, "phase" => phase).increment(1);
                            debug!(phase, "closing an HTTP connection past its deadline");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// `voxmachina_http_connections`: up while a connection task lives (also when it is aborted).
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!(names::HTTP_CONNECTIONS).increment(1.0);
        Self
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!(names::HTTP_CONNECTIONS).decrement(1.0);
    }
}
