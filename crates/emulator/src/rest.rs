//! The emulated call-control REST API (OpenAI's Realtime SIP guide) and the HTTP side of the
//! sideband upgrade.
//!
//! Every request to `/v1/realtime/calls/{call_id}/{accept|reject|refer|hangup}` is checked in
//! this order:
//!
//! 1. method and path: anything but `POST` to one of the four actions gets OpenAI's
//!    `404 Invalid URL (METHOD /path)` (`invalid_request_error`);
//! 2. `Authorization: Bearer <api_key>`: missing → 401 (`code: null`), wrong → 401
//!    `invalid_api_key`;
//! 3. an unknown `call_id` → 404 `call_id_not_found`;
//! 4. the body (see each action) → 400 `invalid_request_error`;
//! 5. the call's state and the script's faults.
//!
//! Success is `200 OK` with an **empty body**. Errors carry
//! `{"error":{"message","type","param","code"}}`.
//!
//! **accept**: the body must be a JSON object (400 otherwise). On a pending call it is
//! recorded and the next `accept_statuses` fault, if any, is returned instead of success (a 404
//! fault makes the call [`Missed`](super::EmuCallStatus::Missed)). Then 200: with
//! `type: "realtime"` the call is Accepted and its session is built from the body; any other
//! `type` (or none) still answers 200 but the call is Failed and the sideband says 404.
//! *Emulator-specific:* an accept of an already accepted call is `409
//! call_already_accepted` (the Realtime docs define nothing; Live documents
//! `decision_already_made`); an accept of a rejected, failed, transferred, hung-up or missed call
//! is 404 `call_id_not_found`, like a late webhook retry.
//!
//! **reject**: optional body `{"status_code": n}`; empty body or no `status_code` means 603.
//! *Emulator-specific:* `status_code` must be an integer 300–699 (the Live API's rule),
//! else 400; rejecting an accepted call is 409 `call_already_accepted`; rejecting an ended call
//! is 404.
//!
//! **refer**: body `{"target_uri": "..."}`; a missing, blank, or non-`sip:`/`sips:`/`tel:`
//! target is 400 with `param: "target_uri"`. Only a live (Accepted) call can be referred, else
//! 404. Then the script's next refer fault: `transfer` (200; the call becomes Transferred and
//! the sideband gets a close frame 1000 about 100 ms later), `ignore` (200, nothing happens), or an HTTP status (that status with an error body).
//!
//! **hangup**: no body needed (any body is recorded and ignored). A live call becomes HungUp
//! and its sideband connections get a close frame 1000; any other state is 404.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

use super::sideband;
use super::{
    CallState, Control, EmuCallStatus, EmulatorEvent, HangupBy, RecordedRequest, ReferFault,
    ReferOutcome, Shared,
};

/// An OpenAI-style error response.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    fn invalid(
        message: impl Into<String>,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code,
        }
    }

    pub(crate) fn call_not_found(call_id: &str) -> Self {
        Self {
            status: 404,
            message: format!("Call with id '{call_id}' not found."),
            kind: "invalid_request_error",
            param: None,
            code: Some("call_id_not_found"),
        }
    }

    fn already_accepted(call_id: &str) -> Self {
        Self {
            status: 409,
            message: format!("Call '{call_id}' has already been accepted."),
            kind: "invalid_request_error",
            param: None,
            code: Some("call_already_accepted"),
        }
    }

    /// The error body for an injected fault status.
    fn fault(status: u16) -> Self {
        let (message, kind, code) = match status {
            429 => (
                "Rate limit reached for requests. Please try again later.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            503 => (
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
            ),
            s if s >= 500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            _ => (
                "The request was refused (injected by the emulator).",
                "invalid_request_error",
                None,
            ),
        };
        Self {
            status,
            message: message.to_string(),
            kind,
            param: None,
            code,
        }
    }

    fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

/// Checks `Authorization: Bearer <api_key>`; `Err` is the 401 to return.
pub(crate) fn check_auth(headers: &HeaderMap, api_key: &str) -> Result<(), ApiError> {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError {
            status: 401,
            message: "You didn't provide an API key. You need to provide your API key in an \
                      Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .to_string(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        });
    };
    let presented = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match presented {
        Some(key) if key == api_key => Ok(()),
        _ => Err(ApiError {
            status: 401,
            message: "Incorrect API key provided. You can find your API key at \
                      https://platform.openai.com/account/api-keys."
                .to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }),
    }
}

/// The body as recorded: `Null` when empty, parsed JSON, or the raw text as a JSON string.
pub(crate) fn body_value(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn unparseable() -> ApiError {
    ApiError::invalid(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        None,
        None,
    )
}

fn invalid_url(method: &Method, path: &str) -> ApiError {
    ApiError {
        status: 404,
        message: format!("Invalid URL ({method} {path})"),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

/// The emulator's router: REST under `/v1/realtime/calls`, the sideband at `/v1/realtime`, and
/// an OpenAI-style 404 for everything else (recorded like any REST request).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/realtime/calls/{call_id}/{action}", any(call_action))
        .route("/v1/realtime", get(sideband_upgrade))
        .fallback(fallback)
        .with_state(shared)
}

async fn fallback(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let err = invalid_url(&method, uri.path());
    shared.record(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorized: check_auth(&headers, &shared.api_key).is_ok(),
        body: body_value(&body),
        status: err.status,
    });
    err.into_response()
}

async fn call_action(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Path((call_id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let auth = check_auth(&headers, &shared.api_key);
    let parsed = body_value(&body);
    let result = if method != Method::POST
        || !matches!(action.as_str(), "accept" | "reject" | "refer" | "hangup")
    {
        Err(invalid_url(&method, &path))
    } else if let Err(e) = auth.clone() {
        Err(e)
    } else {
        match action.as_str() {
            "accept" => accept(&shared, &call_id, &body, &parsed).await,
            "reject" => reject(&shared, &call_id, &body, &parsed),
            "refer" => refer(&shared, &call_id, &body),
            _ => hangup(&shared, &call_id),
        }
    };
    let status = match &result {
        Ok(()) => 200,
        Err(e) => e.status,
    };
    tracing::debug!(target: "voxmachina::emulator", %method, %path, status, "REST request");
    shared.record(RecordedRequest {
        method: method.to_string(),
        path,
        authorized: auth.is_ok(),
        body: parsed,
        status,
    });
    match result {
        // 200 with an empty body, as OpenAI answers (OpenAI's Realtime SIP guide).
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses a body that must be a JSON object; `None` body text → `None`.
fn json_object(body: &[u8]) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(Value::Null) => Ok(None),
        Ok(_) => Err(ApiError::invalid(
            "Invalid body: expected a JSON object.",
            None,
            None,
        )),
        Err(_) => Err(unparseable()),
    }
}

async fn accept(
    shared: &Arc<Shared>,
    call_id: &str,
    body: &[u8],
    parsed: &Value,
) -> Result<(), ApiError> {
    let delay = match shared.calls().get(call_id) {
        Some(c) => c.script.faults.accept_delay_ms,
        None => return Err(ApiError::call_not_found(call_id)),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let object = json_object(body);
    let mut calls = shared.calls();
    let call = calls
        .get_mut(call_id)
        .ok_or_else(|| ApiError::call_not_found(call_id))?;
    call.view.accept_count += 1;
    let outcome = accept_locked(call, call_id, object, parsed);
    drop(calls);
    shared.bump();
    let valid = outcome?;
    shared.emit(EmulatorEvent::Accepted {
        call_id: call_id.to_string(),
        valid,
    });
    Ok(())
}

/// The accept decision, under the state lock. `Ok(valid)`: 200, and whether the session is valid.
fn accept_locked(
    call: &mut CallState,
    call_id: &str,
    object: Result<Option<serde_json::Map<String, Value>>, ApiError>,
    parsed: &Value,
) -> Result<bool, ApiError> {
    match call.view.status {
        EmuCallStatus::Pending => {}
        EmuCallStatus::Accepted => return Err(ApiError::already_accepted(call_id)),
        _ => return Err(ApiError::call_not_found(call_id)),
    }
    call.view.accept_body = Some(parsed.clone());
    let Some(session) = object? else {
        return Err(ApiError::invalid(
            "Missing request body: expected a session object.",
            None,
            None,
        ));
    };
    if let Some(&fault) = call
        .script
        .faults
        .accept_statuses
        .get(call.accept_faults_used)
    {
        call.accept_faults_used += 1;
        if fault == 404 {
            call.view.status = EmuCallStatus::Missed;
            return Err(ApiError::call_not_found(call_id));
        }
        if !(200..300).contains(&fault) {
            return Err(ApiError::fault(fault));
        }
    }
    let valid = session.get("type").and_then(Value::as_str) == Some("realtime");
    if valid {
        call.view.status = EmuCallStatus::Accepted;
        call.session = sideband::build_session(&call.session_id, &session);
        call.accepted_at = Some(Instant::now());
    } else {
        call.view.status = EmuCallStatus::Failed;
    }
    Ok(valid)
}

fn reject(
    shared: &Arc<Shared>,
    call_id: &str,
    body: &[u8],
    parsed: &Value,
) -> Result<(), ApiError> {
    let mut calls = shared.calls();
    let call = calls
        .get_mut(call_id)
        .ok_or_else(|| ApiError::call_not_found(call_id))?;
    let object = json_object(body)?;
    let status_code = match object.as_ref().and_then(|m| m.get("status_code")) {
        None | Some(Value::Null) => 603,
        Some(v) => match v.as_u64() {
            Some(n @ 300..=699) => n as u16,
            _ => {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid 'status_code': expected an integer SIP status from 300 to 699, got {v}."
                    ),
                    Some("status_code"),
                    Some("invalid_value"),
                ));
            }
        },
    };
    match call.view.status {
        EmuCallStatus::Pending => {}
        EmuCallStatus::Accepted => return Err(ApiError::already_accepted(call_id)),
        _ => return Err(ApiError::call_not_found(call_id)),
    }
    call.view.status = EmuCallStatus::Rejected { status_code };
    call.view.reject_body = Some(parsed.clone());
    drop(calls);
    shared.bump();
    shared.emit(EmulatorEvent::Rejected {
        call_id: call_id.to_string(),
        status_code,
    });
    Ok(())
}

/// Validates a refer target: non-blank, scheme `sip:`, `sips:` or `tel:` (case-insensitive),
/// something after the scheme.
fn valid_target(target: &str) -> bool {
    let t = target.trim();
    let Some((scheme, rest)) = t.split_once(':') else {
        return false;
    };
    ["sip", "sips", "tel"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
        && !rest.trim().is_empty()
        && t == target
}

fn refer(shared: &Arc<Shared>, call_id: &str, body: &[u8]) -> Result<(), ApiError> {
    let mut calls = shared.calls();
    let call = calls
        .get_mut(call_id)
        .ok_or_else(|| ApiError::call_not_found(call_id))?;
    let object = json_object(body)?;
    let target = match object.as_ref().and_then(|m| m.get("target_uri")) {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'target_uri'.",
                Some("target_uri"),
                Some("missing_required_parameter"),
            ));
        }
        Some(Value::String(s)) if valid_target(s) => s.clone(),
        Some(v) => {
            return Err(ApiError::invalid(
                format!("Invalid 'target_uri': expected a sip:, sips: or tel: URI, got {v}."),
                Some("target_uri"),
                Some("invalid_value"),
            ));
        }
    };
    if call.view.status != EmuCallStatus::Accepted {
        return Err(ApiError::call_not_found(call_id));
    }
    call.view.refer_targets.push(target.clone());
    let faults = &call.script.faults.refer;
    let fault = faults
        .get(call.refers)
        .or(faults.last())
        .cloned()
        .unwrap_or(ReferFault::Transfer);
    call.refers += 1;
    let (result, outcome) = match fault {
        ReferFault::Transfer => {
            call.view.status = EmuCallStatus::Transferred {
                target: target.clone(),
            };
            // The REFER is handed off; the caller's leg leaves OpenAI and the sideband closes
            // shortly after (OpenAPI `RealtimeCallReferRequest`).
            let conns: Vec<_> = call.conns.iter().map(|(_, tx)| tx.clone()).collect();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for tx in conns {
                    let _ = tx.send(Control::Close);
                }
            });
            (Ok(()), ReferOutcome::Transferred)
        }
        ReferFault::Ignore => (Ok(()), ReferOutcome::Ignored),
        ReferFault::Status(s) => (Err(ApiError::fault(s)), ReferOutcome::Failed { status: s }),
    };
    drop(calls);
    shared.bump();
    shared.emit(EmulatorEvent::Refer {
        call_id: call_id.to_string(),
        target,
        outcome,
    });
    result
}

fn hangup(shared: &Arc<Shared>, call_id: &str) -> Result<(), ApiError> {
    let mut calls = shared.calls();
    let call = calls
        .get_mut(call_id)
        .ok_or_else(|| ApiError::call_not_found(call_id))?;
    call.view.hangup_count += 1;
    let live = call.view.status == EmuCallStatus::Accepted;
    if live {
        call.view.status = EmuCallStatus::HungUp;
        call.control_all(Control::Close);
    }
    drop(calls);
    shared.bump();
    if !live {
        return Err(ApiError::call_not_found(call_id));
    }
    shared.emit(EmulatorEvent::Hangup {
        call_id: call_id.to_string(),
        by: HangupBy::Controller,
    });
    Ok(())
}

/// `GET /v1/realtime?call_id=...`: bearer auth (401), a `call_id` (400), a live accepted call
/// (404 `call_id_not_found`, as an HTTP response before any upgrade), then the WebSocket upgrade.
/// `GET /v1/realtime?model=...` (no `call_id`): bearer auth (401), then a new model session
/// ([`sideband::open_model_session`]).
async fn sideband_upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(e) = check_auth(&headers, &shared.api_key) {
        return e.into_response();
    }
    let Some(call_id) = query.get("call_id").cloned() else {
        if let Some(model) = query.get("model").filter(|m| !m.is_empty()).cloned() {
            return match ws {
                Ok(ws) => {
                    let id = sideband::open_model_session(&shared, &model);
                    voxmachina::bridge::ws_upgrade(ws)
                        .on_upgrade(move |socket| sideband::run(shared, id, socket))
                }
                Err(rejection) => rejection.into_response(),
            };
        }
        return ApiError::invalid(
            "Missing required parameter: 'call_id' (sideband of a SIP call) or 'model' (a \
             Realtime session).",
            Some("call_id"),
            Some("missing_required_parameter"),
        )
        .into_response();
    };
    let live = shared
        .calls()
        .get(&call_id)
        .is_some_and(|c| c.view.status == EmuCallStatus::Accepted);
    if !live {
        return ApiError::call_not_found(&call_id).into_response();
    }
    match ws {
        Ok(ws) => voxmachina::bridge::ws_upgrade(ws)
            .on_upgrade(move |socket| sideband::run(shared, call_id, socket)),
        Err(rejection) => rejection.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refer_targets() {
        for ok in [
            "tel:+14155550123",
            "sip:agent@example.com",
            "SIPS:a@b",
            "sips:x",
        ] {
            assert!(valid_target(ok), "{ok}");
        }
        for bad in [
            "",
            "  ",
            "tel:",
            "http://x",
            "+14155550123",
            " tel:+1",
            "mailto:a@b",
        ] {
            assert!(!valid_target(bad), "{bad}");
        }
    }

    #[test]
    fn auth_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(check_auth(&h, "k").unwrap_err().code, None);
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            check_auth(&h, "k").unwrap_err().code,
            Some("invalid_api_key")
        );
        h.insert("authorization", "bearer k".parse().unwrap());
        assert!(check_auth(&h, "k").is_ok());
        h.insert("authorization", "Basic k".parse().unwrap());
        assert!(check_auth(&h, "k").is_err());
    }
}
