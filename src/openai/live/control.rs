//! GPT-Live call control over REST: `POST {live_base_url}/live/sessions/{session_id}/
//! {accept,reject,refer,hangup}` and outbound calls with `POST {live_base_url}/live/sessions`.
//!
//! Sources: <https://developers.openai.com/api/docs/guides/voice-sip?api=live> (inbound and
//! outbound), openai-python `src/openai/resources/live/sessions.py`. The HTTP plumbing and error
//! classification are shared with the Realtime client ([`CallControl`]); what differs:
//!
//! - the accept body wraps the session: `{"session":{"type":"live","model":...}}`;
//! - reject needs a `status_code` from 300 to 699 (checked here before anything is sent);
//! - "the first accept or reject decision wins; a later competing decision returns
//!   `decision_already_made`" ([`CallControlError::DecisionAlreadyMade`]);
//! - refer targets must be non-blank `sip:` or `tel:` URIs;
//! - creating a session is **not idempotent** (`X-Client-Request-Id` does not deduplicate), so
//!   [`LiveControl::create_outbound`] sends exactly once and never retries.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{LiveTrunkConfig, Secret};
use crate::openai::call_control::{CallControl, CallControlError, retry_within};
use crate::sip::E164;

/// Outcome of [`LiveControl::accept_with_retry`].
#[derive(Debug)]
pub enum LiveAccept {
    /// Accepted (or, after an attempt whose outcome was unknown, `decision_already_made`: our
    /// earlier attempt most likely won; the attach sideband confirms it).
    Accepted {
        /// Requests sent.
        attempts: u32,
    },
    /// Another decision had already been made before ours: leave the session alone.
    AlreadyDecided {
        /// Requests sent.
        attempts: u32,
    },
    /// The accept failed.
    Failed {
        /// Requests sent.
        attempts: u32,
        /// The last error.
        error: CallControlError,
    },
}

/// Creating an outbound call failed (OpenAI's voice-sip guide (`?api=live`) "Limits and errors").
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The request is invalid before sending (destination not E.164, no trunk, no password).
    #[error("invalid outbound call: {0}")]
    Invalid(String),
    /// OpenAI refused it (4xx): e.g. 403 `outbound_sip_not_enabled`, 400 for a bad trunk.
    /// Nothing was created.
    #[error("OpenAI refused the call ({status}{}): {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: String,
    },
    /// The outcome is unknown (5xx such as 502 transport setup or 504 initialization timeout,
    /// a timeout, a dropped connection): a session may or may not exist. Not retried, because
    /// a retry could place a second call.
    #[error("outcome unknown, not retried: {0}")]
    Ambiguous(CallControlError),
}

/// Client for GPT-Live sessions: call control, outbound create, and the attach URL.
#[derive(Clone, Debug)]
pub struct LiveControl {
    rest: CallControl,
    sideband_base: String,
    api_key: Secret,
}

impl LiveControl {
    /// `base_url` is the REST base (`https://api.openai.com/v1`), `sideband_base` the WebSocket
    /// base (`wss://api.openai.com/v1`); `request_timeout` bounds each request.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(
        base_url: &str,
        sideband_base: &str,
        api_key: Secret,
        request_timeout: Duration,
    ) -> Result<Self, CallControlError> {
        Ok(Self {
            rest: CallControl::new(base_url, api_key.clone(), request_timeout)?,
            sideband_base: sideband_base.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    /// The bearer key (for the attach sideband).
    pub fn api_key(&self) -> &Secret {
        &self.api_key
    }

    /// `{sideband_base}/live/sessions/{session_id}/attach`, the id percent-encoded as one
    /// segment.
    pub fn attach_url(&self, session_id: &str) -> String {
        match reqwest::Url::parse(&self.sideband_base) {
            Ok(mut url) if !url.cannot_be_a_base() => {
                url.path_segments_mut()
                    .expect("checked base")
                    .pop_if_empty()
                    .extend(["live", "sessions", session_id, "attach"]);
                url.to_string()
            }
            _ => format!("{}/live/sessions/{session_id}/attach", self.sideband_base),
        }
    }

    async fn post(
        &self,
        session_id: &str,
        action: &str,
        body: Option<&Value>,
    ) -> Result<(), CallControlError> {
        self.rest
            .post_to(&["live", "sessions", session_id, action], body)
            .await
            .map(drop)
    }

    /// `POST /live/sessions/{session_id}/accept` with `{"session": session}` (`session` must
    /// carry `"type":"live"` and `model`), once.
    ///
    /// # Errors
    /// [`CallControlError`]; `DecisionAlreadyMade` when another decision won.
    pub async fn accept(&self, session_id: &str, session: &Value) -> Result<(), CallControlError> {
        self.post(session_id, "accept", Some(&json!({ "session": session })))
            .await
    }

    /// [`LiveControl::accept`] retried on retryable failures until `budget` has elapsed.
    /// `decision_already_made` on the first attempt means someone else decided; after an
    /// attempt with an unknown outcome it means our earlier attempt won.
    pub async fn accept_with_retry(
        &self,
        session_id: &str,
        session: &Value,
        budget: Duration,
    ) -> LiveAccept {
        let (attempts, result) = retry_within(budget, || self.accept(session_id, session)).await;
        match result {
            Ok(()) => LiveAccept::Accepted { attempts },
            Err(CallControlError::DecisionAlreadyMade { .. }) if attempts > 1 => {
                LiveAccept::Accepted { attempts }
            }
            Err(CallControlError::DecisionAlreadyMade { .. }) => {
                LiveAccept::AlreadyDecided { attempts }
            }
            Err(error) => LiveAccept::Failed { attempts, error },
        }
    }

    /// `POST /live/sessions/{session_id}/reject` with `{"status_code": status}`; `status` must
    /// be 300..=699 (required by Live, unlike Realtime).
    ///
    /// # Errors
    /// [`CallControlError::Status`] with status 0 for an out-of-range code (nothing sent), else
    /// as returned.
    pub async fn reject(&self, session_id: &str, status: u16) -> Result<(), CallControlError> {
        if !(300..=699).contains(&status) {
            return Err(CallControlError::Status {
                status: 0,
                code: Some("invalid_status_code".into()),
                message: format!("reject status_code {status} is outside 300..=699"),
            });
        }
        self.post(
            session_id,
            "reject",
            Some(&json!({ "status_code": status })),
        )
        .await
    }

    /// `POST /live/sessions/{session_id}/refer` with `{"target_uri": target}` (`sip:` or
    /// `tel:`, non-blank). 200 means the REFER was relayed.
    ///
    /// # Errors
    /// [`CallControlError::Status`] with status 0 for a target that is not `sip:`/`tel:`
    /// (nothing sent), else as returned.
    pub async fn refer(&self, session_id: &str, target_uri: &str) -> Result<(), CallControlError> {
        let t = target_uri.trim();
        if t.is_empty() || !(t.starts_with("sip:") || t.starts_with("tel:")) {
            return Err(CallControlError::Status {
                status: 0,
                code: Some("invalid_target_uri".into()),
                message: "refer target must be a sip: or tel: URI".into(),
            });
        }
        self.post(session_id, "refer", Some(&json!({ "target_uri": t })))
            .await
    }

    /// `POST /live/sessions/{session_id}/hangup`, no body. The end is confirmed by
    /// `session.closed` on the attach sideband, not by this 200.
    ///
    /// # Errors
    /// [`CallControlError`].
    pub async fn hangup(&self, session_id: &str) -> Result<(), CallControlError> {
        self.post(session_id, "hangup", None).await
    }

    /// Places an outbound call: `POST /live/sessions` with `session` (without `type`, as in the
    /// reference example) and a SIP `transport` to `destination` through `trunk` with digest
    /// auth (`password`). Sent **once**. Returns the new `live_...` session id; 200 means the
    /// session was initialized, not that anyone answered (progress comes on the sideband).
    ///
    /// # Errors
    /// [`OutboundError`]: `Refused` for 4xx, `Ambiguous` for anything whose outcome is unknown.
    pub async fn create_outbound(
        &self,
        session: &Value,
        destination: &E164,
        trunk: &LiveTrunkConfig,
        password: &Secret,
    ) -> Result<String, OutboundError> {
        let mut session = session.clone();
        if let Some(obj) = session.as_object_mut() {
            obj.remove("type");
        }
        let body = json!({
            "session": session,
            "transport": {
                "type": "sip",
                "destination": destination.as_str(),
                "trunk": {
                    "provider_url": trunk.provider_url,
                    "auth": { "type": "digest", "username": trunk.username, "password": password.expose() },
                    "caller_number": trunk.caller_number,
                }
            }
        });
        match self.rest.post_to(&["live", "sessions"], Some(&body)).await {
            Ok(text) => {
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    OutboundError::Ambiguous(CallControlError::Transport(format!(
                        "create answered 200 without a session id: {e}"
                    )))
                })?;
                v.pointer("/session/id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        OutboundError::Ambiguous(CallControlError::Transport(
                            "create answered 200 without session.id".into(),
                        ))
                    })
            }
            Err(CallControlError::Status {
                status,
                code,
                message,
            }) if (400..500).contains(&status) && status != 408 && status != 429 => {
                Err(OutboundError::Refused {
                    status,
                    code,
                    message,
                })
            }
            Err(CallControlError::NotFound { code }) => Err(OutboundError::Refused {
                status: 404,
                code,
                message: "not found".into(),
            }),
            Err(e) => Err(OutboundError::Ambiguous(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_url_encodes_the_session_id() {
        let lc = LiveControl::new(
            "http://127.0.0.1:9/v1",
            "ws://127.0.0.1:9/v1/",
            Secret::new("k"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            lc.attach_url("live_a/b"),
            "ws://127.0.0.1:9/v1/live/sessions/live_a%2Fb/attach"
        );
    }

    #[tokio::test]
    async fn reject_and_refer_are_checked_before_sending() {
        // Port 9 is never contacted: both fail validation first.
        let lc = LiveControl::new(
            "http://127.0.0.1:9/v1",
            "ws://127.0.0.1:9/v1",
            Secret::new("k"),
            Duration::from_millis(200),
        )
        .unwrap();
        for bad in [0, 200, 299, 700] {
            let e = lc.reject("live_1", bad).await.unwrap_err();
            assert!(
                matches!(e, CallControlError::Status { status: 0, .. }),
                "{bad}: {e}"
            );
        }
        for bad in ["", "  ", "https://example.com", "+14155550123"] {
            let e = lc.refer("live_1", bad).await.unwrap_err();
            assert!(
                matches!(e, CallControlError::Status { status: 0, .. }),
                "{bad:?}: {e}"
            );
        }
    }
}
