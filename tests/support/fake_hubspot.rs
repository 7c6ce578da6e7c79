//! A local fake of HubSpot CRM v3 (<https://developers.hubspot.com/docs/api/crm/search>,
//! <https://developers.hubspot.com/docs/api/crm/tickets>), a real HTTP server on `127.0.0.1:0` with
//! in-memory contacts and tickets.
//!
//! Routes: `POST /crm/v3/objects/contacts/search`, `POST /crm/v3/objects/contacts`
//! (201), `POST /crm/v3/objects/tickets` (201). Every request is recorded (method,
//! path, headers, JSON body). Checks, in order:
//!
//! 1. `Authorization: Bearer <token>`: otherwise 401 (`category: INVALID_AUTHENTICATION`; the
//!    exact 401 body is **[unverified]**, HubSpot's pages only say "401: invalid token");
//! 2. the route: unknown → 404;
//! 3. a pending injected 429 ([`FakeHubSpot::rate_limit_next`]): HubSpot's 429 body
//!    `{"status":"error","message":…,"errorType":"RATE_LIMIT","correlationId",…,"policyName",…}`,
//!    with `Retry-After` when asked (HubSpot does not document it; community sources say it is
//!    sent) and the `X-HubSpot-RateLimit-*` headers;
//! 4. the body; malformed → 400 `VALIDATION_ERROR` (HubSpot's error body shape).
//!
//! Search implements `filterGroups` (groups ORed, filters ANDed; at most 5 groups, 10 filters per
//! group, 25 in all, per the 2024-08-26 limits) with `EQ`, `NEQ`, `HAS_PROPERTY` and
//! `NOT_HAS_PROPERTY`, exact string comparison (no phone normalisation caveat); other
//! documented operators answer 400 "not implemented by the fake". `limit` at most 200. Results
//! carry `id`, the requested `properties` (or the default set), `createdAt`, `updatedAt`,
//! `archived`; `paging` is absent (the fake returns one page).
//!
//! Creating a contact whose `email` is already taken answers 409 `"Contact already exists.
//! Existing ID: N"` with `category: CONFLICT`; contacts with only a phone are never
//! deduplicated. A ticket needs `subject` and `hs_pipeline_stage` (400 otherwise); `hs_pipeline`
//! defaults to `"0"`; the only pipeline is `"0"` with stages `"1"`–`"4"`; every association must
//! name an existing contact with `HUBSPOT_DEFINED` type 16 (or `USER_DEFINED` any id) (400
//! otherwise).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Default test token.
pub const TOKEN: &str = "pat-na1-00000000-test";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `POST`, ….
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it was not JSON).
    pub json: Value,
}

impl RecordedRequest {
    /// First header value named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A stored ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeTicket {
    /// Object id.
    pub id: String,
    /// Properties as sent (plus defaults).
    pub properties: Map<String, Value>,
    /// `(contact id, associationCategory, associationTypeId)` of each association.
    pub associations: Vec<(String, String, u64)>,
}

#[derive(Debug, Clone)]
struct RateLimit {
    retry_after: Option<String>,
    policy: String,
}

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    /// id → properties.
    contacts: BTreeMap<String, Map<String, Value>>,
    tickets: Vec<FakeTicket>,
    rate_limits: VecDeque<RateLimit>,
    next_id: u64,
}

struct Inner {
    token: String,
    state: Mutex<State>,
}

/// The fake. Dropping it stops the server.
pub struct FakeHubSpot {
    /// `http://127.0.0.1:{port}`: pass as the client's base URL.
    pub base_url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHubSpot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHubSpot {
    /// Starts a fake accepting [`TOKEN`].
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            token: TOKEN.to_string(),
            state: Mutex::new(State {
                next_id: 100,
                ..State::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}"),
            inner,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    /// Adds a contact directly; returns its id.
    pub fn insert_contact(&self, properties: Value) -> String {
        let mut state = self.lock();
        let id = next_id(&mut state);
        state.contacts.insert(
            id.clone(),
            properties.as_object().cloned().unwrap_or_default(),
        );
        id
    }

    /// All contacts, id → properties.
    pub fn contacts(&self) -> BTreeMap<String, Map<String, Value>> {
        self.lock().contacts.clone()
    }

    /// All tickets in creation order.
    pub fn tickets(&self) -> Vec<FakeTicket> {
        self.lock().tickets.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The next `n` authenticated requests to a known route answer 429 with `policyName` =
    /// `policy` and, when given, `Retry-After: retry_after`.
    pub fn rate_limit_next(&self, n: usize, retry_after: Option<&str>, policy: &str) {
        let mut state = self.lock();
        for _ in 0..n {
            state.rate_limits.push_back(RateLimit {
                retry_after: retry_after.map(str::to_string),
                policy: policy.to_string(),
            });
        }
    }
}

fn next_id(state: &mut State) -> String {
    state.next_id += 1;
    state.next_id.to_string()
}

fn correlation_id(n: usize) -> String {
    format!("c033cdaa-0000-4000-8000-{n:012}")
}

fn error(status: StatusCode, category: &str, message: &str, n: usize) -> Response {
    let body = json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id(n),
        "category": category,
    });
    (
        status,
        [("content-type", "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            ("content-type", "application/json;charset=utf-8"),
            ("x-hubspot-ratelimit-daily", "250000"),
            ("x-hubspot-ratelimit-daily-remaining", "249999"),
        ],
        body.to_string(),
    )
        .into_response()
}

const NOW: &str = "2026-01-01T00:00:00.000Z";

async fn handle(
    axum::extract::State(inner): axum::extract::State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let mut state = inner.state.lock().unwrap();
    state.requests.push(recorded.clone());
    let n = state.requests.len();

    if recorded.header("authorization") != Some(&format!("Bearer {}", inner.token)) {
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
            n,
        );
    }
    let route = match (method.as_str(), uri.path()) {
        ("POST", "/crm/v3/objects/contacts/search") => Route::Search,
        ("POST", "/crm/v3/objects/contacts") => Route::CreateContact,
        ("POST", "/crm/v3/objects/tickets") => Route::CreateTicket,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                &format!("{method} {} not found", uri.path()),
                n,
            );
        }
    };
    if let Some(limit) = state.rate_limits.pop_front() {
        let body = json!({
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(n),
            "policyName": limit.policy,
            "requestId": format!("3d3e35b7-0000-4000-8000-{n:012}"),
        });
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("content-type", "application/json;charset=utf-8"),
                ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
                ("x-hubspot-ratelimit-max", "100"),
                ("x-hubspot-ratelimit-remaining", "0"),
            ],
            body.to_string(),
        )
            .into_response();
        if let Some(after) = limit.retry_after {
            resp.headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        return resp;
    }
    if !recorded
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "VALIDATION_ERROR",
            "Content-Type must be application/json",
            n,
        );
    }
    let body = recorded.json;
    match route {
        Route::Search => search(&state, &body, n),
        Route::CreateContact => create_contact(&mut state, &body, n),
        Route::CreateTicket => create_ticket(&mut state, &body, n),
    }
}

enum Route {
    Search,
    CreateContact,
    CreateTicket,
}

fn bad(message: &str, n: usize) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message, n)
}

const DEFAULT_CONTACT_PROPERTIES: [&str; 6] = [
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
];

fn contact_json(id: &str, props: &Map<String, Value>, wanted: &[String]) -> Value {
    let mut out = Map::new();
    let all = |name: &str| match name {
        "hs_object_id" => Value::String(id.to_string()),
        "createdate" | "lastmodifieddate" => Value::String(NOW.to_string()),
        other => props.get(other).cloned().unwrap_or(Value::Null),
    };
    if wanted.is_empty() {
        for name in DEFAULT_CONTACT_PROPERTIES {
            out.insert(name.to_string(), all(name));
        }
    } else {
        for name in wanted {
            out.insert(name.clone(), all(name));
        }
    }
    json!({
        "id": id,
        "properties": out,
        "createdAt": NOW,
        "updatedAt": NOW,
        "archived": false,
    })
}

fn search(state: &State, body: &Value, n: usize) -> Response {
    let groups = match body.get("filterGroups") {
        None => Vec::new(),
        Some(Value::Array(groups)) => groups.clone(),
        Some(_) => return bad("filterGroups must be an array", n),
    };
    if groups.len() > 5 {
        return bad("Too many filter groups (max 5)", n);
    }
    let mut parsed: Vec<Vec<(String, String, Option<String>)>> = Vec::new();
    let mut total_filters = 0;
    for group in &groups {
        let Some(filters) = group.get("filters").and_then(Value::as_array) else {
            return bad("each filter group needs a filters array", n);
        };
        if filters.len() > 10 {
            return bad("Too many filters in a group (max 10)", n);
        }
        total_filters += filters.len();
        let mut out = Vec::new();
        for f in filters {
            let (Some(prop), Some(op)) = (
                f.get("propertyName").and_then(Value::as_str),
                f.get("operator").and_then(Value::as_str),
            ) else {
                return bad("filter needs propertyName and operator", n);
            };
            let value = f.get("value").and_then(Value::as_str).map(str::to_string);
            match op {
                "EQ" | "NEQ" if value.is_none() => {
                    return bad(&format!("{op} needs a string value"), n);
                }
                "EQ" | "NEQ" | "HAS_PROPERTY" | "NOT_HAS_PROPERTY" => {}
                "LT" | "LTE" | "GT" | "GTE" | "BETWEEN" | "IN" | "NOT_IN" | "CONTAINS_TOKEN"
                | "NOT_CONTAINS_TOKEN" => {
                    return bad(&format!("operator {op} is not implemented by the fake"), n);
                }
                other => return bad(&format!("Unknown operator {other}"), n),
            }
            out.push((prop.to_string(), op.to_string(), value));
        }
        parsed.push(out);
    }
    if total_filters > 25 {
        return bad("Too many filters (max 25)", n);
    }
    let limit = body.get("limit").and_then(Value::as_u64).unwrap_or(10);
    if limit > 200 {
        return bad("limit must be at most 200", n);
    }
    let wanted: Vec<String> = body
        .get("properties")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let matches = |props: &Map<String, Value>| {
        parsed.is_empty()
            || parsed.iter().any(|group| {
                group.iter().all(|(prop, op, value)| {
                    let have = props.get(prop).and_then(Value::as_str);
                    match op.as_str() {
                        "EQ" => have == value.as_deref(),
                        "NEQ" => have != value.as_deref(),
                        "HAS_PROPERTY" => have.is_some_and(|v| !v.is_empty()),
                        _ => have.is_none_or(str::is_empty),
                    }
                })
            })
    };
    let hits: Vec<Value> = state
        .contacts
        .iter()
        .filter(|(_, props)| matches(props))
        .map(|(id, props)| contact_json(id, props, &wanted))
        .collect();
    let total = hits.len();
    let results: Vec<Value> = hits.into_iter().take(limit as usize).collect();
    ok(
        StatusCode::OK,
        json!({ "total": total, "results": results }),
    )
}

fn properties(body: &Value) -> Option<Map<String, Value>> {
    body.get("properties").and_then(Value::as_object).cloned()
}

fn create_contact(state: &mut State, body: &Value, n: usize) -> Response {
    let Some(props) = properties(body) else {
        return bad(
            "Property values were not valid: properties object required",
            n,
        );
    };
    if props
        .values()
        .any(|v| !(v.is_string() || v.is_number() || v.is_boolean()))
    {
        return bad("Property values were not valid", n);
    }
    if let Some(email) = props.get("email").and_then(Value::as_str) {
        let existing = state.contacts.iter().find(|(_, p)| {
            p.get("email")
                .and_then(Value::as_str)
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        });
        if let Some((id, _)) = existing {
            return error(
                StatusCode::CONFLICT,
                "CONFLICT",
                &format!("Contact already exists. Existing ID: {id}"),
                n,
            );
        }
    }
    let id = next_id(state);
    state.contacts.insert(id.clone(), props.clone());
    let keys: Vec<String> = props.keys().cloned().collect();
    ok(StatusCode::CREATED, contact_json(&id, &props, &keys))
}

fn create_ticket(state: &mut State, body: &Value, n: usize) -> Response {
    let Some(mut props) = properties(body) else {
        return bad(
            "Property values were not valid: properties object required",
            n,
        );
    };
    if props
        .get("subject")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return bad("Property values were not valid: subject is required", n);
    }
    let pipeline = props
        .entry("hs_pipeline")
        .or_insert_with(|| json!("0"))
        .as_str()
        .unwrap_or_default()
        .to_string();
    if pipeline != "0" {
        return bad(
            &format!("Property values were not valid: pipeline {pipeline} does not exist"),
            n,
        );
    }
    match props.get("hs_pipeline_stage").and_then(Value::as_str) {
        Some("1" | "2" | "3" | "4") => {}
        Some(stage) => {
            return bad(
                &format!(
                    "Property values were not valid: {stage} is not a valid pipeline stage ID"
                ),
                n,
            );
        }
        None => {
            return bad(
                "Property values were not valid: hs_pipeline_stage is required",
                n,
            );
        }
    }
    let mut associations = Vec::new();
    if let Some(list) = body.get("associations") {
        let Some(list) = list.as_array() else {
            return bad("associations must be an array", n);
        };
        for a in list {
            let Some(to) = a.pointer("/to/id").and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }) else {
                return bad("association needs to.id", n);
            };
            let Some(types) = a.get("types").and_then(Value::as_array) else {
                return bad("association needs types", n);
            };
            if types.is_empty() {
                return bad("association needs at least one type", n);
            }
            for t in types {
                let category = t
                    .get("associationCategory")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some(type_id) = t.get("associationTypeId").and_then(Value::as_u64) else {
                    return bad("associationTypeId must be an integer", n);
                };
                match (category, type_id) {
                    ("HUBSPOT_DEFINED", 16) | ("USER_DEFINED", _) => {}
                    ("HUBSPOT_DEFINED", other) => {
                        return bad(
                            &format!("association type {other} is not ticket to contact (16)"),
                            n,
                        );
                    }
                    (other, _) => {
                        return bad(&format!("invalid associationCategory {other:?}"), n);
                    }
                }
                if !state.contacts.contains_key(&to) {
                    return bad(&format!("contact {to} does not exist"), n);
                }
                associations.push((to.clone(), category.to_string(), type_id));
            }
        }
    }
    let id = next_id(state);
    state.tickets.push(FakeTicket {
        id: id.clone(),
        properties: props.clone(),
        associations,
    });
    ok(
        StatusCode::CREATED,
        json!({
            "id": id,
            "properties": props,
            "createdAt": NOW,
            "updatedAt": NOW,
            "archived": false,
        }),
    )
}
