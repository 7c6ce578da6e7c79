//! The admin API under `/v1`, guarded by `Authorization: Bearer <VOXMACHINA_ADMIN_TOKEN>`
//! (compared in constant time). When no token is configured every route answers 404.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/calls?state=&limit=&before=` | `{"calls":[CallRecord...]}`, newest first |
//! | `POST /v1/calls` `{"api":"live","to":"+E164","profile":"name"}` | 201 `{"call":CallRecord}` (GPT-Live outbound call placed, monitor attached); 400 bad request or `api` not `live`; 503 no trunk configured; 502 OpenAI refused (`code`) or the outcome is unknown (`"retried":false`) |
//! | `GET /v1/calls/{call_id}` | `{"call":CallRecord,"transcript":[...],"events":[...]}` or 404 |
//! | `POST /v1/calls/{call_id}/transfer` `{"note":"..."}` (optional) | 202 escalation started; 404 unknown; 409 not live here |
//! | `POST /v1/calls/{call_id}/hangup` `{"note":"..."}` (optional) | 202; 404; 409 |
//! | `POST /v1/calls/outbound` `{"to":"+E164","profile":"name"}` | 201 `{"call":CallRecord}` (Twilio call placed, see [`crate::bridge::outbound`]); 400; 404 Twilio not configured; 409; 502 |

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::calls::record::CallState;
use crate::calls::registry::{Command, CommandError};
use crate::store::CallQuery;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The `/v1` router (to be nested).
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/calls", get(list_calls).post(place_call))
        .route("/calls/outbound", post(crate::bridge::http::outbound))
        .route("/calls/{call_id}", get(get_call))
        .route("/calls/{call_id}/transfer", post(transfer))
        .route("/calls/{call_id}/hangup", post(hangup))
        .layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = &app.admin_token else {
        return error(
            StatusCode::NOT_FOUND,
            "admin API disabled: set VOXMACHINA_ADMIN_TOKEN",
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        next.run(req).await
    } else {
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        resp
    }
}

#[derive(Debug, Deserialize)]
struct PlaceBody {
    api: String,
    to: String,
    profile: String,
}

async fn place_call(State(app): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    use crate::calls::outbound::{PlaceError, place_live_call};
    use crate::openai::live::OutboundError;
    let body: PlaceBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad body: {e}")),
    };
    if body.api != "live" {
        return error(
            StatusCode::BAD_REQUEST,
            "outbound calls are only supported on GPT-Live (\"api\": \"live\")",
        );
    }
    match place_live_call(&app, &body.profile, &body.to).await {
        Ok(record) => (StatusCode::CREATED, Json(json!({ "call": record }))).into_response(),
        Err(PlaceError::Invalid(m)) => error(StatusCode::BAD_REQUEST, &m),
        Err(PlaceError::NotConfigured(m)) => error(StatusCode::SERVICE_UNAVAILABLE, &m),
        Err(PlaceError::OpenAi(OutboundError::Invalid(m))) => error(StatusCode::BAD_REQUEST, &m),
        Err(PlaceError::OpenAi(OutboundError::Refused {
            status,
            code,
            message,
        })) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": format!("OpenAI refused the call: {message}"),
                "openai_status": status,
                "code": code,
                "retried": false,
            })),
        )
            .into_response(),
        Err(PlaceError::OpenAi(e @ OutboundError::Ambiguous(_))) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": e.to_string(),
                "outcome": "unknown",
                "retried": false,
                "hint": "a session may exist; check before placing the call again",
            })),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    state: Option<String>,
    limit: Option<usize>,
    before: Option<DateTime<Utc>>,
}

async fn list_calls(State(app): State<Arc<AppState>>, Query(p): Query<ListParams>) -> Response {
    let state = match p.state.as_deref().map(|s| CallState::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => return error(StatusCode::BAD_REQUEST, &format!("unknown state {s:?}")),
    };
    let query = CallQuery {
        state,
        before: p.before,
        limit: p.limit.unwrap_or(100).min(1000),
    };
    match app.store.list_calls(&query).await {
        Ok(calls) => Json(json!({ "calls": calls })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn get_call(State(app): State<Arc<AppState>>, Path(call_id): Path<String>) -> Response {
    let call = match app.store.get_call(&call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such call"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let transcript = app.store.transcript(&call_id).await.unwrap_or_default();
    let events = app.store.events(&call_id).await.unwrap_or_default();
    Json(json!({ "call": call, "transcript": transcript, "events": events })).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct NoteBody {
    #[serde(default)]
    note: String,
}

async fn command(app: &AppState, call_id: &str, cmd: Command) -> Response {
    match app.registry().send(call_id, cmd) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response(),
        Err(CommandError::NotMonitored) => match app.store.get_call(call_id).await {
            Ok(Some(c)) => error(
                StatusCode::CONFLICT,
                &format!("call is {} and not monitored by this instance", c.state),
            ),
            _ => error(StatusCode::NOT_FOUND, "no such call"),
        },
        Err(CommandError::Ending) => error(StatusCode::CONFLICT, "call is ending"),
    }
}

fn note(body: Option<Json<NoteBody>>) -> String {
    body.map(|b| b.0.note).unwrap_or_default()
}

async fn transfer(
    State(app): State<Arc<AppState>>,
    Path(call_id): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Response {
    command(&app, &call_id, Command::Transfer(note(body))).await
}

async fn hangup(
    State(app): State<Arc<AppState>>,
    Path(call_id): Path<String>,
    body: Option<Json<NoteBody>>,
) -> Response {
    command(&app, &call_id, Command::Hangup(note(body))).await
}
