//! The `http` executor: renders the request from templates, sends it, and maps the answer to
//! the model's `function_call_output`.
//!
//! - Secrets of `{{secret:NAME}}` are resolved per call; a missing one is a `not_configured`
//!   error naming the secret (never its value). Header values built from secrets are marked
//!   sensitive, and any echo of a secret value in the answer is replaced with `***` before the
//!   model or the call events see it.
//! - 2xx with a JSON body: `response.pointer` selects, `response.fields` filters, the size limit
//!   applies ([`super::fit_output`]). A non-JSON body, a pointer that selects nothing or a body
//!   over 1 MiB is `bad_response`.
//! - Anything else is `http_error` with the status; 400/404/409/422 answers include a short
//!   `detail` from the body so the model can tell the caller what was wrong.
//! - Connection failures are `unavailable`. Redirects are not followed.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::run::{CallInfo, Outcome, Services, ToolResult, fit_output, redact};
use super::spec::HttpSpec;
use super::template::{CallField, Encoding, Values};
use crate::config::Secret;

/// Largest answer body read, bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

struct Vals<'a> {
    args: &'a Value,
    call: &'a CallInfo,
    base_url: Option<&'a str>,
    secrets: &'a HashMap<String, Secret>,
}

impl Values for Vals<'_> {
    fn arg(&self, name: &str) -> Option<&Value> {
        self.args.get(name).filter(|v| !v.is_null())
    }
    fn call(&self, f: CallField) -> Option<&str> {
        match f {
            CallField::Id => Some(&self.call.call_id),
            CallField::Caller => self.call.caller.as_deref(),
            CallField::Dialed => self.call.dialed.as_deref(),
        }
    }
    fn base_url(&self) -> Option<&str> {
        self.base_url.map(|b| b.trim_end_matches('/'))
    }
    fn secret(&self, name: &str) -> Option<&str> {
        self.secrets.get(name).map(Secret::expose)
    }
}

fn failed(code: &str, message: &str, note: String) -> ToolResult {
    ToolResult::error(Outcome::Failed, code, message, Some(note))
}

/// Runs one HTTP tool call (without the timeout, which [`super::execute`] applies).
pub(crate) async fn run(
    spec: &HttpSpec,
    args: &Value,
    call: &CallInfo,
    base_url: Option<&str>,
    services: &Services,
) -> ToolResult {
    let mut secrets = HashMap::new();
    for (_, t) in &spec.headers {
        for name in t.secrets() {
            match (services.secrets)(name) {
                Some(s) => {
                    secrets.insert(name.to_string(), s);
                }
                None => {
                    return ToolResult::error(
                        Outcome::NotConfigured,
                        "not_configured",
                        "This tool is not set up right now. Apologise and help the caller another \
                         way (or offer a transfer).",
                        Some(format!("secret {name} is not set")),
                    );
                }
            }
        }
    }
    let values = Vals {
        args,
        call,
        base_url,
        secrets: &secrets,
    };
    let url_text = match spec.url.render_url(&values) {
        Ok(u) => u,
        Err(e) => {
            return failed(
                "bad_request",
                "The request could not be built from these arguments.",
                format!("url refused: {e}"),
            );
        }
    };
    let url = match reqwest::Url::parse(&url_text) {
        Ok(u) => u,
        Err(e) => {
            return failed(
                "bad_request",
                "The request could not be built from these arguments.",
                format!("url does not parse: {e}"),
            );
        }
    };
    let mut req = services
        .http
        .request(spec.method.clone(), url)
        .header(reqwest::header::ACCEPT, "application/json");
    for (name, t) in &spec.headers {
        let text = t.render(&values, Encoding::Raw);
        let Ok(mut value) = reqwest::header::HeaderValue::from_str(&text) else {
            return failed(
                "bad_request",
                "The request could not be built from these arguments.",
                format!("header {name} has characters not allowed in a header"),
            );
        };
        if t.secrets().next().is_some() {
            value.set_sensitive(true);
        }
        req = req.header(name.clone(), value);
    }
    if let Some(body) = &spec.body {
        req = req.json(&body.render(&values).unwrap_or(Value::Null));
    }
    let secret_values: Vec<Secret> = secrets.into_values().collect();

    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return ToolResult::error(
                Outcome::Unavailable,
                "unavailable",
                "The service cannot be reached right now. Apologise, and offer to try again later \
                 or to transfer the caller.",
                Some(e.without_url().to_string()),
            );
        }
    };
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return ToolResult::error(
                        Outcome::BadResponse,
                        "bad_response",
                        "The service answered with more data than can be used.",
                        Some(format!("answer larger than {MAX_RESPONSE_BYTES} bytes")),
                    )
                    .with_status(Some(status));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return ToolResult::error(
                    Outcome::Unavailable,
                    "unavailable",
                    "The service stopped answering. Apologise, and offer to try again later or to \
                     transfer the caller.",
                    Some(e.without_url().to_string()),
                )
                .with_status(Some(status));
            }
        }
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();

    if !(200..300).contains(&status) {
        let (code, message) = match status {
            404 => (
                "not_found",
                "Nothing was found for these details. Check them with the caller.",
            ),
            400 | 409 | 422 => (
                "rejected",
                "The service rejected the request; see detail. Check the details with the caller.",
            ),
            401 | 403 => (
                "not_authorized",
                "The service refused access. Apologise and help the caller another way.",
            ),
            429 => (
                "busy",
                "The service is busy. Apologise, and offer to try again in a moment.",
            ),
            _ => (
                "upstream_error",
                "The service failed. Apologise, and offer to try again later or to transfer the \
                 caller.",
            ),
        };
        let mut r = ToolResult::error(
            Outcome::HttpError,
            code,
            message,
            Some(format!("HTTP {status}")),
        )
        .with_status(Some(status));
        if matches!(status, 400 | 404 | 409 | 422) && !body.is_empty() {
            let detail = match parsed {
                Some(v) => fit_output(v, 500),
                None => {
                    let text = String::from_utf8_lossy(&body);
                    json!(text.chars().take(300).collect::<String>())
                }
            };
            r.output["error"]["detail"] = detail;
            redact(&mut r.output, &secret_values);
        }
        return r;
    }

    let Some(value) = parsed else {
        return ToolResult::error(
            Outcome::BadResponse,
            "bad_response",
            "The service answered with something unreadable. Apologise, and offer to try again \
             later or to transfer the caller.",
            Some(format!(
                "HTTP {status} answer is not JSON ({} bytes)",
                body.len()
            )),
        )
        .with_status(Some(status));
    };
    let mut selected = match &spec.response.pointer {
        None => value,
        Some(p) => match value.pointer(p) {
            Some(v) => v.clone(),
            None => {
                return ToolResult::error(
                    Outcome::BadResponse,
                    "bad_response",
                    "The service answered without the expected information.",
                    Some(format!("the answer has nothing at {p}")),
                )
                .with_status(Some(status));
            }
        },
    };
    if !spec.response.fields.is_empty() {
        let keep = |v: &mut Value| {
            if let Value::Object(m) = v {
                m.retain(|k, _| spec.response.fields.iter().any(|f| f == k));
            }
        };
        match &mut selected {
            Value::Array(a) => a.iter_mut().for_each(keep),
            other => keep(other),
        }
    }
    redact(&mut selected, &secret_values);
    let max = spec
        .response
        .max_bytes
        .unwrap_or(services.config.max_output_bytes);
    let mut result = ToolResult::ok(selected);
    result.output = fit_output(result.output, max);
    result.with_status(Some(status))
}
