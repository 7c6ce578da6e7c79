//! A local HTTP tool server on 127.0.0.1:0 for the tool tests: scripted answers per path
//! (status, body, content type, delay), every request recorded with its headers and the time the
//! handler itself took.
//!
//! Out of the box it serves a tiny ShopKart API under `/v1` (what `prompts/hinglish_support.toml`
//! calls): `GET /v1/orders/SK-10423`, `GET /v1/availability?product=&pincode=`; every other path
//! answers 404 `{"error":"not found"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// `Content-Type`.
    pub content_type: String,
    /// Wait before answering.
    pub delay: Duration,
    /// Answer the request's headers as a JSON object instead of `body` (an endpoint that
    /// echoes credentials).
    pub echo_headers: bool,
}

impl Answer {
    /// 200 with a JSON body.
    pub fn json(v: Value) -> Answer {
        Answer {
            status: 200,
            body: v.to_string(),
            content_type: "application/json".into(),
            delay: Duration::ZERO,
            echo_headers: false,
        }
    }

    /// 200 with the request headers as a JSON object.
    pub fn echo_headers() -> Answer {
        Answer {
            echo_headers: true,
            ..Answer::json(Value::Null)
        }
    }

    /// Any status with a text body.
    pub fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.into(),
            content_type: "text/html".into(),
            delay: Duration::ZERO,
            echo_headers: false,
        }
    }

    /// The same answer after `ms` milliseconds.
    pub fn delayed(mut self, ms: u64) -> Answer {
        self.delay = Duration::from_millis(ms);
        self
    }
}

/// A request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path as sent (percent-encoded).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Header names in lower case → value.
    pub headers: HashMap<String, String>,
    /// The body, when JSON.
    pub body: Option<Value>,
    /// Time spent in the handler, excluding any scripted delay, microseconds.
    pub handler_micros: u64,
}

impl Seen {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct Inner {
    routes: Mutex<HashMap<String, Answer>>,
    seen: Mutex<Vec<Seen>>,
}

/// The server; stops when dropped.
pub struct ToolServer {
    /// Bound address.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ToolServer {
    /// Starts on 127.0.0.1:0 with the ShopKart routes.
    pub async fn start() -> ToolServer {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        let server = ToolServer { addr, inner, stop };
        server.route(
            "/v1/orders/SK-10423",
            Answer::json(json!({
                "order": {
                    "order_id": "SK-10423",
                    "status": "shipped",
                    "expected_delivery": "2026-09-18",
                    "courier": "BlueDart",
                    "items": [{"sku": "BT-AD141", "name": "boAt Airdopes 141", "qty": 1}],
                    "internal_margin_inr": 312,
                    "warehouse_notes": "fragile"
                },
                "request_id": "req_abc"
            })),
        );
        server.route(
            "/v1/availability",
            Answer::json(json!({
                "product": "boAt Airdopes 141",
                "sku": "BT-AD141",
                "in_stock": true,
                "delivery_days": 2,
                "price_inr": 1399,
                "supplier_cost_inr": 700
            })),
        );
        server
    }

    /// `http://127.0.0.1:PORT/v1`: the profile's `tools_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Scripts the answer for `path` (exact, without query).
    pub fn route(&self, path: &str, answer: Answer) {
        self.inner
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), answer);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Requests to `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let answer = inner
        .routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_else(|| Answer {
            status: 404,
            body: json!({"error": "not found"}).to_string(),
            content_type: "application/json".into(),
            delay: Duration::ZERO,
            echo_headers: false,
        });
    let seen = Seen {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&bytes).ok(),
        handler_micros: 0,
    };
    let body = if answer.echo_headers {
        json!(seen.headers).to_string()
    } else {
        answer.body.clone()
    };
    let handler_micros = started.elapsed().as_micros() as u64;
    inner.seen.lock().unwrap().push(Seen {
        handler_micros,
        ..seen
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    (
        StatusCode::from_u16(answer.status).unwrap(),
        [("content-type", answer.content_type)],
        body,
    )
        .into_response()
}
