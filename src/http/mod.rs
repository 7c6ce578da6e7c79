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
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::app::AppState;

/// Server-side WebSocket settings for the upgrades we accept (Twilio Media Streams here, the
/// sideband in the emulator): the same small buffers as the client side
/// ([`crate::openai::sideband::ws_config`]). axum's defaults allocate (and zero) a 128 KiB read
/// buffer per connection, which at thousands of streams is most of the memory and a good part
/// of the CPU of accepting a connection; the messages on these sockets are small JSON (a Media
/// Streams `media` message is ~250 bytes). Buffers still grow for a larger message, up to
/// 4 MiB per message or frame.
pub fn ws_upgrade(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(4 << 20)
        .max_frame_size(4 << 20)
}

/// Builds the router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let webhook = Router::new()
        .route("/openai/webhook", post(crate::webhook::handler::receive))
        .layer(DefaultBodyLimit::max(state.config.webhook.max_body_bytes));
    Router::new()
        .merge(webhook)
        .merge(crate::bridge::http::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", admin::router(state.clone()))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let store = app.store.ping().await;
    let health = app.held_writes.health();
    let writes_ok = health.writes_ok();
    let profiles = app.profiles.load().len();
    let accepting = app.accepting.load(Ordering::SeqCst);
    let ready = store.is_ok() && writes_ok && profiles > 0 && accepting;
    let body = json!({
        "ready": ready,
        "store": store.as_ref().map(|()| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "store_writes": health.describe(),
        "held_writes": health.pending(),
        "profiles": profiles,
        "accepting_webhooks": accepting,
        "active_calls": app.registry().len(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
