//! The admin API under `/v1`, guarded by `Authorization: Bearer <VOXMACHINA_ADMIN_TOKEN>`
//! (compared in constant time). When no token is configured every route answers 404.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/openapi.json` | this API as an OpenAPI 3.1 document ([`ApiDoc`], generated with `utoipa` from the handlers' types; committed as `docs/openapi.json`). Same bearer token as every `/v1` route: it describes an admin surface, so it is no more public than that surface |
//! | `GET /v1/calls?state=&limit=&before=` | `{"calls":[CallRecord...]}`, newest first, `limit` default 100, at most 1000 |
//! | `POST /v1/calls` `{"api":"live","to":"+E164","profile":"name"}` | 201 `{"call":CallRecord}` (GPT-Live outbound call placed, monitor attached); 400 bad request or `api` not `live`; 503 no trunk configured; 502 OpenAI refused (`code`) or the outcome is unknown (`"retried":false`) |
//! | `GET /v1/calls/{call_id}` | `{"call":CallRecord,"transcript":[...],"events":[...],"transcript_next_cursor":...,"events_next_cursor":...}`: the record with the **first page** ([`DEFAULT_PAGE`] items) of its transcript and events, and the cursors of their next pages (`null` when complete), or 404 |
//! | `GET /v1/calls/{call_id}/transcript?limit=&cursor=` | `{"transcript":[...],"next_cursor":...}`: one page, `limit` default [`DEFAULT_PAGE`], at most [`crate::store::MAX_PAGE`]; `cursor` from the previous page; 404 unknown call; 400 bad cursor |
//! | `GET /v1/calls/{call_id}/events?limit=&cursor=` | `{"events":[...],"next_cursor":...}`, likewise |
//! | `POST /v1/calls/{call_id}/transfer` `{"note":"..."}` (optional) | 202 escalation started; 404 unknown; 409 not live here |
//! | `POST /v1/calls/{call_id}/hangup` `{"note":"..."}` (optional) | 202; 404; 409 |
//! | `POST /v1/calls/outbound` `{"to":"+E164","profile":"name"}` | 201 `{"call":CallRecord}` (Twilio call placed, see [`crate::bridge::outbound`]); 400; 404 Twilio not configured; 409; 502 |
//!
//! No response holds an unbounded list: transcripts and events are read a page at a time from
//! the store ([`crate::store::Store::transcript_page`]). Every error is `{"error":"..."}` JSON
//! (bad query strings and bodies included), 401 with `WWW-Authenticate: Bearer`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::calls::record::{CallEvent, CallRecord, CallState, TranscriptLine};
use crate::calls::registry::{Command, CommandError};
use crate::calls::services::CallServices;
use crate::config::Secret;
use crate::store::{CallQuery, MAX_PAGE, Page};

/// Page size of transcripts and events when `limit` is not given (and on `GET
/// /v1/calls/{call_id}`).
pub const DEFAULT_PAGE: usize = 100;

/// The OpenAPI 3.1 document of `/v1` (served at `GET /v1/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "voxmachina admin API",
        description = "Calls handled by this controller: records, paged transcripts and events, operator transfer and hang-up, outbound calls. Every operation needs `Authorization: Bearer <VOXMACHINA_ADMIN_TOKEN>`; without a configured token every route answers 404.",
        license(name = "see the repository")
    ),
    paths(
        openapi_json,
        list_calls,
        place_call,
        get_call,
        get_transcript,
        get_events,
        transfer,
        hangup,
        outbound,
    ),
    components(schemas(
        ErrorBody,
        CallEnvelope,
        CallList,
        CallDetail,
        TranscriptPage,
        EventsPage,
        Accepted,
        PlaceBody,
        NoteBody,
        OutboundBody,
    )),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    tags((name = "calls", description = "Call records and call control"))
)]
pub struct ApiDoc;

/// Declares the `admin_token` bearer scheme every operation requires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every error answer: `{"error": message}`, plus details on some 502s.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// OpenAI's HTTP status (502 from `POST /v1/calls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openai_status: Option<u16>,
    /// OpenAI's error code, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Always `false`: a GPT-Live create is never retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<bool>,
    /// `unknown` when the create's outcome is not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What to do next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `{"call": CallRecord}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallEnvelope {
    /// The record as stored.
    pub call: CallRecord,
}

/// `GET /v1/calls`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallList {
    /// Newest first.
    pub calls: Vec<CallRecord>,
}

/// `GET /v1/calls/{call_id}`: the record and the first page of its transcript and events.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallDetail {
    /// The record.
    pub call: CallRecord,
    /// The first [`DEFAULT_PAGE`] transcript lines, in order.
    pub transcript: Vec<TranscriptLine>,
    /// `cursor` for `GET /v1/calls/{call_id}/transcript` to read on; `null` when complete.
    pub transcript_next_cursor: Option<String>,
    /// The first [`DEFAULT_PAGE`] events, in order.
    pub events: Vec<CallEvent>,
    /// `cursor` for `GET /v1/calls/{call_id}/events` to read on; `null` when complete.
    pub events_next_cursor: Option<String>,
}

/// One page of a transcript.
#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptPage {
    /// The lines, in order.
    pub transcript: Vec<TranscriptLine>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// One page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The events, in order.
    pub events: Vec<CallEvent>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `{"status":"accepted"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: String,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// What the admin API uses: the bearer token and the call services (store reads, operator
/// commands through the registry, GPT-Live outbound calls). Built by `crate::app`.
pub struct AdminServices {
    /// Bearer token for the admin API; `None` disables it (every route 404).
    pub admin_token: Option<Secret>,
    /// Configuration, store, profiles, monitors.
    pub calls: CallServices,
}

/// The `/v1` router (to be nested), on any router state that provides the [`AdminServices`]
/// and, for `POST /v1/calls/outbound`, the [`crate::bridge::BridgeServices`].
pub fn router<S>(state: Arc<AdminServices>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AdminServices>: FromRef<S>,
    Arc<crate::bridge::BridgeServices>: FromRef<S>,
{
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/calls", get(list_calls).post(place_call))
        .route("/calls/outbound", post(outbound))
        .route("/calls/{call_id}", get(get_call))
        .route("/calls/{call_id}/transcript", get(get_transcript))
        .route("/calls/{call_id}/events", get(get_events))
        .route("/calls/{call_id}/transfer", post(transfer))
        .route("/calls/{call_id}/hangup", post(hangup))
        .layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(
    State(app): State<Arc<AdminServices>>,
    req: Request,
    next: Next,
) -> Response {
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

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "calls",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// Body of `POST /v1/calls`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PlaceBody {
    /// Must be `live`.
    pub api: String,
    /// E.164 number to call.
    pub to: String,
    /// An `api = "live"` profile.
    pub profile: String,
}

/// Places a GPT-Live outbound call through `[openai.live_trunk]`.
#[utoipa::path(
    post,
    path = "/v1/calls",
    tag = "calls",
    request_body = PlaceBody,
    responses(
        (status = 201, description = "call placed", body = CallEnvelope),
        (status = 400, description = "bad body, api not live, number or profile invalid", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 502, description = "OpenAI refused, or the outcome is unknown", body = ErrorBody),
        (status = 503, description = "no GPT-Live trunk configured", body = ErrorBody),
    )
)]
async fn place_call(State(app): State<Arc<AdminServices>>, body: Bytes) -> Response {
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
    match place_live_call(&app.calls, &body.profile, &body.to).await {
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

/// Query of `GET /v1/calls`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only calls in this state (`accepting`, `active`, `ended`, ...).
    state: Option<String>,
    /// How many, default 100, at most 1000.
    #[param(minimum = 0)]
    limit: Option<usize>,
    /// Only calls created before this time (RFC 3339).
    before: Option<DateTime<Utc>>,
}

/// Call records, newest first.
#[utoipa::path(
    get,
    path = "/v1/calls",
    tag = "calls",
    params(ListParams),
    responses(
        (status = 200, description = "the records", body = CallList),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "the store failed", body = ErrorBody),
    )
)]
async fn list_calls(
    State(app): State<Arc<AdminServices>>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
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
    match app.calls.store.list_calls(&query).await {
        Ok(calls) => Json(json!({ "calls": calls })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// A call record with the first page of its transcript and events.
#[utoipa::path(
    get,
    path = "/v1/calls/{call_id}",
    tag = "calls",
    params(("call_id" = String, Path, description = "The call id (`rtc_...`, `live_...` or a Twilio `CA...`)")),
    responses(
        (status = 200, description = "the record", body = CallDetail),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such call", body = ErrorBody),
        (status = 503, description = "the store failed", body = ErrorBody),
    )
)]
async fn get_call(State(app): State<Arc<AdminServices>>, Path(call_id): Path<String>) -> Response {
    let call = match app.calls.store.get_call(&call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such call"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let transcript = app
        .calls
        .store
        .transcript_page(&call_id, None, DEFAULT_PAGE)
        .await;
    let events = app
        .calls
        .store
        .events_page(&call_id, None, DEFAULT_PAGE)
        .await;
    let (transcript, events) = match (transcript, events) {
        (Ok(t), Ok(e)) => (t, e),
        (Err(e), _) | (_, Err(e)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
    };
    Json(CallDetail {
        call,
        transcript: transcript.items,
        transcript_next_cursor: transcript.next.map(|n| n.to_string()),
        events: events.items,
        events_next_cursor: events.next.map(|n| n.to_string()),
    })
    .into_response()
}

/// Query of the paged sub-resources.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageParams {
    /// Page size, default 100, at most 1000 (larger values are capped, 0 reads one).
    #[param(minimum = 0)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page; absent for the first page.
    cursor: Option<String>,
}

/// The store position of `cursor`: an opaque decimal string we handed out.
fn cursor_position(cursor: Option<&str>) -> Result<Option<u64>, Box<Response>> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => c.parse::<u64>().map(Some).map_err(|_| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "cursor is not one we handed out",
            ))
        }),
    }
}

/// Reads one page for the sub-resources: checks the query and that the call exists.
async fn page_params(
    app: &AdminServices,
    call_id: &str,
    p: Result<Query<PageParams>, QueryRejection>,
) -> Result<(Option<u64>, usize), Box<Response>> {
    let Query(p) = p.map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.body_text())))?;
    let after = cursor_position(p.cursor.as_deref())?;
    match app.calls.store.get_call(call_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Box::new(error(StatusCode::NOT_FOUND, "no such call"))),
        Err(e) => {
            return Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                &e.to_string(),
            )));
        }
    }
    Ok((after, p.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE)))
}

/// One page of a sub-resource: checks the query and the call, reads the page with `read`
/// (`after`, `limit`) and answers `body(items, next_cursor)`.
async fn one_page<T, Fut>(
    app: &AdminServices,
    call_id: &str,
    p: Result<Query<PageParams>, QueryRejection>,
    read: impl FnOnce(Option<u64>, usize) -> Fut,
    body: impl FnOnce(Vec<T>, Option<String>) -> Response,
) -> Response
where
    Fut: std::future::Future<Output = Result<Page<T>, crate::store::StoreError>>,
{
    let (after, limit) = match page_params(app, call_id, p).await {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    match read(after, limit).await {
        Ok(page) => body(page.items, page.next.map(|n| n.to_string())),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// One page of a call's transcript.
#[utoipa::path(
    get,
    path = "/v1/calls/{call_id}/transcript",
    tag = "calls",
    params(("call_id" = String, Path, description = "The call id"), PageParams),
    responses(
        (status = 200, description = "one page", body = TranscriptPage),
        (status = 400, description = "bad query or cursor", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such call", body = ErrorBody),
        (status = 503, description = "the store failed", body = ErrorBody),
    )
)]
async fn get_transcript(
    State(app): State<Arc<AdminServices>>,
    Path(call_id): Path<String>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> Response {
    let read = |after, limit| app.calls.store.transcript_page(&call_id, after, limit);
    let body = |transcript, next_cursor| {
        Json(TranscriptPage {
            transcript,
            next_cursor,
        })
        .into_response()
    };
    one_page(&app, &call_id, p, read, body).await
}

/// One page of a call's events.
#[utoipa::path(
    get,
    path = "/v1/calls/{call_id}/events",
    tag = "calls",
    params(("call_id" = String, Path, description = "The call id"), PageParams),
    responses(
        (status = 200, description = "one page", body = EventsPage),
        (status = 400, description = "bad query or cursor", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such call", body = ErrorBody),
        (status = 503, description = "the store failed", body = ErrorBody),
    )
)]
async fn get_events(
    State(app): State<Arc<AdminServices>>,
    Path(call_id): Path<String>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> Response {
    let read = |after, limit| app.calls.store.events_page(&call_id, after, limit);
    let body = |events, next_cursor| {
        Json(EventsPage {
            events,
            next_cursor,
        })
        .into_response()
    };
    one_page(&app, &call_id, p, read, body).await
}

/// Body of `transfer` and `hangup` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NoteBody {
    /// Recorded with the operator action.
    #[serde(default)]
    pub note: String,
}

async fn command(app: &AdminServices, call_id: &str, cmd: Command) -> Response {
    match app.calls.registry().send(call_id, cmd) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response(),
        Err(CommandError::NotMonitored) => match app.calls.store.get_call(call_id).await {
            Ok(Some(c)) => error(
                StatusCode::CONFLICT,
                &format!("call is {} and not monitored by this instance", c.state),
            ),
            _ => error(StatusCode::NOT_FOUND, "no such call"),
        },
        Err(CommandError::Ending) => error(StatusCode::CONFLICT, "call is ending"),
    }
}

/// The note of an optional JSON body (empty body: no note); a body that is not a JSON object
/// with an optional string `note` is a 400.
fn note(body: &Bytes) -> Result<String, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    serde_json::from_slice::<NoteBody>(body)
        .map(|b| b.note)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &format!("bad body: {e}"))))
}

/// Hands a live call to a human (the profile's escalation).
#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/transfer",
    tag = "calls",
    params(("call_id" = String, Path, description = "The call id")),
    request_body(content = Option<NoteBody>, description = "optional note"),
    responses(
        (status = 202, description = "escalation started", body = Accepted),
        (status = 400, description = "bad body", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such call", body = ErrorBody),
        (status = 409, description = "not live on this instance, or ending", body = ErrorBody),
    )
)]
async fn transfer(
    State(app): State<Arc<AdminServices>>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    match note(&body) {
        Ok(n) => command(&app, &call_id, Command::Transfer(n)).await,
        Err(resp) => *resp,
    }
}

/// Ends a live call.
#[utoipa::path(
    post,
    path = "/v1/calls/{call_id}/hangup",
    tag = "calls",
    params(("call_id" = String, Path, description = "The call id")),
    request_body(content = Option<NoteBody>, description = "optional note"),
    responses(
        (status = 202, description = "hang-up started", body = Accepted),
        (status = 400, description = "bad body", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such call", body = ErrorBody),
        (status = 409, description = "not live on this instance, or ending", body = ErrorBody),
    )
)]
async fn hangup(
    State(app): State<Arc<AdminServices>>,
    Path(call_id): Path<String>,
    body: Bytes,
) -> Response {
    match note(&body) {
        Ok(n) => command(&app, &call_id, Command::Hangup(n)).await,
        Err(resp) => *resp,
    }
}

/// Body of `POST /v1/calls/outbound`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OutboundBody {
    /// E.164 number to call.
    pub to: String,
    /// Profile name; the default profile when absent.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `POST /v1/calls/outbound` (nested under the admin router, so token-guarded).
#[utoipa::path(
    post,
    path = "/v1/calls/outbound",
    tag = "calls",
    request_body = OutboundBody,
    responses(
        (status = 201, description = "Twilio call placed", body = CallEnvelope),
        (status = 400, description = "bad body, number not E.164 or unknown profile", body = ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "Twilio is not configured", body = ErrorBody),
        (status = 409, description = "public_url or from_number missing", body = ErrorBody),
        (status = 502, description = "Twilio refused the call", body = ErrorBody),
    )
)]
pub async fn outbound(
    State(app): State<Arc<crate::bridge::BridgeServices>>,
    body: Bytes,
) -> Response {
    let body: OutboundBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad body: {e}")),
    };
    let req = crate::bridge::outbound::OutboundRequest {
        to: body.to,
        profile: body.profile,
    };
    match crate::bridge::outbound::place_call(&app, &req).await {
        Ok(record) => (StatusCode::CREATED, Json(json!({ "call": record }))).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "outbound call not placed");
            error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY),
                &e.to_string(),
            )
        }
    }
}
