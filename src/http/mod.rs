//! The HTTP surface.
//!
//! | route | purpose |
//! |---|---|
//! | `POST /openai/webhook` | OpenAI webhooks ([`crate::webhook::handler`]), body limit from config (64 KiB) |
//! | `GET /healthz` | the process is alive: always 200 `ok` |
//! | `GET /readyz` | 200 when the store answers, its writes succeed ([`crate::store::resilient`]: 503 from the first failed write until one succeeds again), profiles are loaded and webhooks are taken; else 503 |
//! | `GET /metrics` | Prometheus text format ([`crate::telemetry`]) |
//! | `POST /twilio/voice`, `GET /twilio/media`, `POST /twilio/status` | the Twilio Media Streams path ([`crate::bridge::http`]), `X-Twilio-Signature` checked, 404 when Twilio is not configured |
//! | `/v1/...` | the admin API ([`admin`]), bearer token, off when no token is configured |

pub mod admin;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::bridge::BridgeServices;
use crate::calls::services::CallServices;
use crate::store::ResilientStore;
use crate::webhook::handler::WebhookServices;
pub use admin::AdminServices;

/// The router's state: one service struct per group of routes, each handler extracting only
/// its own ([`FromRef`], as in axum's `State` docs).
#[derive(Clone, FromRef)]
pub struct HttpState {
    /// `POST /openai/webhook`.
    pub webhook: Arc<WebhookServices>,
    /// `/twilio/*` and `POST /v1/calls/outbound`.
    pub bridge: Arc<BridgeServices>,
    /// `/v1/...` (admin API).
    pub admin: Arc<AdminServices>,
    /// `GET /readyz`, `GET /metrics`.
    pub health: Arc<HealthServices>,
}

/// What `GET /readyz` and `GET /metrics` read.
pub struct HealthServices {
    /// Configuration, store (pinged), profiles (counted), registry (active calls).
    pub calls: CallServices,
    /// The store's write health.
    pub held_writes: ResilientStore,
    /// False once shutdown began.
    pub accepting: Arc<AtomicBool>,
    /// Prometheus render handle.
    pub metrics: PrometheusHandle,
}

/// Builds the router over `state`; webhook bodies are limited to `webhook_max_body` bytes.
pub fn router(state: HttpState, webhook_max_body: usize) -> Router {
    let webhook = Router::new()
        .route("/openai/webhook", post(crate::webhook::handler::receive))
        .layer(DefaultBodyLimit::max(webhook_max_body));
    Router::new()
        .merge(webhook)
        .merge(crate::bridge::http::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", admin::router(state.admin.clone()))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<HealthServices>>) -> impl IntoResponse {
    let store = app.calls.store.ping().await;
    let health = app.held_writes.health();
    let writes_ok = health.writes_ok();
    let profiles = app.calls.profiles.load().len();
    let accepting = app.accepting.load(Ordering::SeqCst);
    let ready = store.is_ok() && writes_ok && profiles > 0 && accepting;
    let body = json!({
        "ready": ready,
        "store": store.as_ref().map(|()| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "store_writes": health.describe(),
        "held_writes": health.pending(),
        "profiles": profiles,
        "accepting_webhooks": accepting,
        "active_calls": app.calls.registry().len(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(app): State<Arc<HealthServices>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
