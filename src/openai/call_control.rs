//! Realtime call control over REST: `POST {base_url}/realtime/calls/{call_id}/{accept,reject,refer,hangup}`.
//!
//! Sources: <https://developers.openai.com/api/docs/guides/realtime-sip>, OpenAPI
//! `paths./realtime/calls/{call_id}/{accept,reject,refer,hangup}`. Every endpoint answers `200 OK`
//! with an empty body; errors carry the standard OpenAI body
//! `{"error":{"message","type","param","code"}}`. A 404 on `/accept` means the caller is already
//! gone (a late webhook retry).

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};

use crate::config::Secret;

/// A call-control request failed.
#[derive(Debug, thiserror::Error)]
pub enum CallControlError {
    /// OpenAI answered 404: the call does not exist (any more).
    #[error("call not found (404){}", code_suffix(.code))]
    NotFound {
        /// `error.code` from the body, e.g. `call_id_not_found`.
        code: Option<String>,
    },
    /// OpenAI answered another non-2xx status.
    #[error("OpenAI answered {status}{}: {message}", code_suffix(.code))]
    Status {
        /// HTTP status.
        status: u16,
        /// `error.code` from the body.
        code: Option<String>,
        /// `error.message` from the body, or the start of the raw body.
        message: String,
    },
    /// GPT-Live only: another accept or reject decision already won for this session
    /// (`error.code` `decision_already_made`, OpenAI's voice-sip guide (`?api=live`)).
    #[error("decision already made (HTTP {status})")]
    DecisionAlreadyMade {
        /// The HTTP status it came with.
        status: u16,
    },
    /// No answer within the per-request timeout.
    #[error("request timed out")]
    Timeout,
    /// Connecting or sending failed.
    #[error("transport: {0}")]
    Transport(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default()
}

impl CallControlError {
    /// True for failures worth retrying: 5xx, 429, timeouts and transport errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Timeout | Self::Transport(_) => true,
            Self::NotFound { .. } | Self::DecisionAlreadyMade { .. } => false,
        }
    }

    /// A short label for metrics and logs: `not_found`, `status_4xx`, `status_5xx`, `timeout`,
    /// `transport`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::DecisionAlreadyMade { .. } => "decision_already_made",
            Self::Status { status, .. } if *status >= 500 => "status_5xx",
            Self::Status { .. } => "status_4xx",
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
        }
    }
}

/// Client for the four Realtime call-control endpoints.
#[derive(Clone, Debug)]
pub struct CallControl {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
}

impl CallControl {
    /// `base_url` is e.g. `https://api.openai.com/v1` (no trailing slash needed);
    /// `request_timeout` bounds each request.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(
        base_url: &str,
        api_key: Secret,
        request_timeout: Duration,
    ) -> Result<Self, CallControlError> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("voxmachina/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallControlError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    /// `{base_url}/seg/seg/...`; every segment (ids are opaque) is percent-encoded as one path
    /// segment.
    pub(crate) fn url_of(&self, segments: &[&str]) -> String {
        let mut url = reqwest::Url::parse(&self.base_url).expect("validated in config");
        url.path_segments_mut()
            .expect("http(s) base")
            .extend(segments);
        url.to_string()
    }

    async fn post(
        &self,
        call_id: &str,
        action: &str,
        body: Option<&Value>,
    ) -> Result<(), CallControlError> {
        self.post_to(&["realtime", "calls", call_id, action], body)
            .await
            .map(drop)
    }

    /// `POST {base_url}/{segments...}` with the bearer key and an optional JSON body, sent once.
    /// Returns the response body text on 2xx (OpenAI's call-control endpoints answer an empty
    /// body; `POST /live/sessions` answers JSON). Shared by the Realtime and GPT-Live clients.
    ///
    /// # Errors
    /// [`CallControlError`] classified from the status and the standard error body
    /// `{"error":{"message","type","param","code"}}`; any status whose `error.code` is
    /// `decision_already_made` is [`CallControlError::DecisionAlreadyMade`].
    pub(crate) async fn post_to(
        &self,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<String, CallControlError> {
        let mut req = self
            .http
            .post(self.url_of(segments))
            .bearer_auth(self.api_key.expose())
            .header(reqwest::header::ACCEPT, "*/*");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        let status = resp.status();
        if status.is_success() {
            return resp.text().await.map_err(map_reqwest);
        }
        let text = resp.text().await.unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let code = err
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if code.as_deref() == Some("decision_already_made") {
            return Err(CallControlError::DecisionAlreadyMade {
                status: status.as_u16(),
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CallControlError::NotFound { code });
        }
        let message = err
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(CallControlError::Status {
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// `POST /realtime/calls/{call_id}/accept` with `session` as the body (it must carry
    /// `"type":"realtime"`), once.
    ///
    /// # Errors
    /// [`CallControlError`]; `NotFound` when the caller is gone.
    pub async fn accept(&self, call_id: &str, session: &Value) -> Result<(), CallControlError> {
        self.post(call_id, "accept", Some(session)).await
    }

    /// [`CallControl::accept`] retried with exponential backoff on retryable failures until
    /// `budget` has elapsed. Returns the number of attempts made with the result.
    pub async fn accept_with_retry(
        &self,
        call_id: &str,
        session: &Value,
        budget: Duration,
    ) -> (u32, Result<(), CallControlError>) {
        retry_within(budget, || self.accept(call_id, session)).await
    }

    /// `POST /realtime/calls/{call_id}/reject` with `{"status_code": status}`.
    ///
    /// # Errors
    /// [`CallControlError`].
    pub async fn reject(&self, call_id: &str, status: u16) -> Result<(), CallControlError> {
        self.post(call_id, "reject", Some(&json!({ "status_code": status })))
            .await
    }

    /// `POST /realtime/calls/{call_id}/refer` with `{"target_uri": target}`; the value becomes the
    /// SIP `Refer-To` header. A 200 only means the REFER was relayed.
    ///
    /// # Errors
    /// [`CallControlError`].
    pub async fn refer(&self, call_id: &str, target_uri: &str) -> Result<(), CallControlError> {
        self.post(call_id, "refer", Some(&json!({ "target_uri": target_uri })))
            .await
    }

    /// `POST /realtime/calls/{call_id}/hangup`, no body.
    ///
    /// # Errors
    /// [`CallControlError`].
    pub async fn hangup(&self, call_id: &str) -> Result<(), CallControlError> {
        self.post(call_id, "hangup", None).await
    }
}

/// Runs `op` once, then again with exponential backoff (100 ms doubling to 1 s, jittered) while
/// it fails retryably ([`CallControlError::is_retryable`]) and `budget` has not elapsed. Returns
/// the number of attempts with the last result. Used for accept decisions of both APIs.
pub(crate) async fn retry_within<F, Fut>(
    budget: Duration,
    mut op: F,
) -> (u32, Result<(), CallControlError>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CallControlError>>,
{
    let started = Instant::now();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result = (|| {
        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        op()
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times(),
    )
    .when(|e: &CallControlError| e.is_retryable() && started.elapsed() < budget)
    .await;
    (attempts.into_inner(), result)
}

fn map_reqwest(e: reqwest::Error) -> CallControlError {
    if e.is_timeout() {
        CallControlError::Timeout
    } else {
        // Without the URL: it is ours, but keep error strings short and uniform.
        CallControlError::Transport(e.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_id_is_a_single_path_segment() {
        let cc = CallControl::new(
            "http://127.0.0.1:9/v1/",
            Secret::new("k"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            cc.url_of(&["realtime", "calls", "rtc_a/b?c", "accept"]),
            "http://127.0.0.1:9/v1/realtime/calls/rtc_a%2Fb%3Fc/accept"
        );
    }

    #[test]
    fn retryable_classification() {
        let s = |status| CallControlError::Status {
            status,
            code: None,
            message: String::new(),
        };
        assert!(s(503).is_retryable());
        assert!(s(429).is_retryable());
        assert!(!s(400).is_retryable());
        assert!(!CallControlError::NotFound { code: None }.is_retryable());
        assert!(CallControlError::Timeout.is_retryable());
    }
}
