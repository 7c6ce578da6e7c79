//! HubSpot CRM v3: find or create the caller's contact and open a ticket associated with it, for
//! the human agent's screen pop.
//!
//! Sources: <https://developers.hubspot.com/docs/api/crm/search>,
//! <https://developers.hubspot.com/docs/api/crm/tickets>,
//! <https://developers.hubspot.com/docs/api/usage-details>. Every request goes to `{base_url}`
//! (`https://api.hubapi.com` by default) with `Authorization: Bearer <private app token>` and JSON
//! bodies:
//!
//! - `POST /crm/v3/objects/contacts/search`: `phone` EQ *or* `mobilephone` EQ the number,
//!   `limit` 1;
//! - `POST /crm/v3/objects/contacts` with `{"properties":{"phone":…}}` → 201; a 409
//!   `"Contact already exists. Existing ID: 777"` is turned into that id;
//! - `POST /crm/v3/objects/tickets` with `subject`, `content`, `hs_pipeline`,
//!   `hs_pipeline_stage` and an association to the contact (`HUBSPOT_DEFINED`, type id 16,
//!   ticket → contact);
//! - 429: retried a bounded number of times ([`RetryPolicy`]) after `Retry-After` seconds
//!   when present (HubSpot does not document that header; community sources say it is sent),
//!   otherwise after an exponential backoff with jitter. A 429 with `policyName: "DAILY"` is not
//!   retried (the daily cap resets only at midnight in the portal's time zone). Nothing else is
//!   retried: a create that failed with 5xx or timed out may have been applied.
//!
//! Phone caveat (§6.1, **[unverified]**): HubSpot stores `phone` as entered, so `EQ` on an E.164
//! value misses contacts saved as `555-122-2323`; search is also eventually consistent, so a
//! contact created seconds ago may not be found and gets duplicated (contacts dedupe only on
//! email). Keep the id returned by [`HubSpot::find_or_create_contact`].

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{HubSpotConfig, Secret};

/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";

/// Default association type id ticket → contact.
pub const TICKET_TO_CONTACT: u32 = 16;

/// Default pipeline id in stock portals.
pub const DEFAULT_PIPELINE: &str = "0";

/// First stage of the default pipeline in stock portals.
pub const DEFAULT_PIPELINE_STAGE: &str = "1";

/// Contact properties requested by the search.
pub const SEARCH_PROPERTIES: [&str; 5] = ["firstname", "lastname", "email", "phone", "mobilephone"];

/// A HubSpot request failed.
#[derive(Debug, thiserror::Error)]
pub enum HubSpotError {
    /// A non-2xx answer other than a 429 (400 `VALIDATION_ERROR`, 401 invalid token, 403
    /// `MISSING_SCOPES`, 5xx, …).
    #[error("HubSpot answered {status}{}: {message}", .category.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// `category`, e.g. `VALIDATION_ERROR`, `CONFLICT`, `MISSING_SCOPES`.
        category: Option<String>,
        /// `message`, or the start of the body when it was not JSON.
        message: String,
        /// `correlationId`, for HubSpot support.
        correlation_id: Option<String>,
    },
    /// Still 429 after the bounded attempts, or a daily-limit 429 (not retried).
    #[error("HubSpot rate limit{} after {attempts} attempt(s): {message}", .policy.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    RateLimited {
        /// `policyName`: `DAILY`, `TEN_SECONDLY_ROLLING`, `SECONDLY`, ….
        policy: Option<String>,
        /// `Retry-After` of the last answer, if any.
        retry_after: Option<Duration>,
        /// `message`.
        message: String,
        /// Requests made, the first included.
        attempts: usize,
    },
    /// The request was refused locally (the message says why).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No answer within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Connecting or sending failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A 2xx answer whose body was not the expected JSON.
    #[error("unexpected response body: {0}")]
    Decode(String),
}

impl HubSpotError {
    /// HTTP status for [`HubSpotError::Api`] (429 for [`HubSpotError::RateLimited`]).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

/// How 429 answers are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests in all, the first included (at least 1).
    pub max_attempts: usize,
    /// First backoff when there is no `Retry-After`; doubles each time, with jitter.
    pub min_delay: Duration,
    /// Cap on any wait, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 1 s → 2 s → 4 s without `Retry-After`, every wait capped at 10 s (the
    /// 10-second window).
    fn default() -> Self {
        Self {
            max_attempts: 4,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// A contact as returned by search or create.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Contact {
    /// HubSpot's object id (a decimal string).
    pub id: String,
    /// Requested (or default) properties; values may be `null`.
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
}

/// Client for the three CRM calls.
#[derive(Clone, Debug)]
pub struct HubSpot {
    http: reqwest::Client,
    base_url: String,
    token: Secret,
    retry: RetryPolicy,
}

/// One failed attempt, before retry classification.
#[derive(Debug)]
struct Attempt {
    error: HubSpotError,
    /// Set for a retryable 429.
    retry_after: Option<Option<Duration>>,
}

impl HubSpot {
    /// `base_url` is [`DEFAULT_BASE_URL`] in production; `token` is the private app's access
    /// token (scopes `tickets`, `crm.objects.contacts.read`, `crm.objects.contacts.write`);
    /// `request_timeout` bounds each request. Retries use [`RetryPolicy::default`].
    ///
    /// # Errors
    /// [`HubSpotError::Invalid`] for a base URL that is not http(s);
    /// [`HubSpotError::Transport`] when the HTTP client cannot be built.
    pub fn new(
        base_url: &str,
        token: Secret,
        request_timeout: Duration,
    ) -> Result<Self, HubSpotError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(HubSpotError::Invalid(format!("base URL {base_url:?}"))),
        }
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("voxmachina/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubSpotError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            token,
            retry: RetryPolicy::default(),
        })
    }

    /// The client of `[hubspot]` when `enabled` and a `token` (`HUBSPOT_TOKEN`) is given;
    /// `None` when disabled, or enabled without a token (logged: `create_ticket` is then
    /// unavailable).
    ///
    /// # Errors
    /// As [`HubSpot::new`] (bad base URL, client not buildable).
    pub fn from_config(
        config: &HubSpotConfig,
        token: Option<Secret>,
    ) -> Result<Option<Self>, HubSpotError> {
        match token {
            Some(token) if config.enabled => Self::new(
                &config.base_url,
                token,
                Duration::from_millis(config.request_timeout_ms),
            )
            .map(Some),
            None if config.enabled => {
                tracing::warn!(
                    "[hubspot] enabled but HUBSPOT_TOKEN is not set; create_ticket is unavailable"
                );
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Replaces the 429 retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// POSTs `body` to `path`, retrying 429s per the policy. Returns the status and JSON body of
    /// the first non-429 answer.
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), HubSpotError> {
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let policy = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(policy.max_attempts.saturating_sub(1));
        let result = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.post_once(path, body).await
        })
        .retry(backoff)
        .when(|a: &Attempt| a.retry_after.is_some())
        .adjust(|a: &Attempt, backoff_delay| {
            // None from the backoff means the attempts are used up: keep it that way.
            let delay = backoff_delay?;
            Some(match a.retry_after {
                Some(Some(after)) => after.min(policy.max_delay),
                _ => delay,
            })
        })
        .notify(|a: &Attempt, wait| {
            tracing::warn!(path, error = %a.error, wait_ms = wait.as_millis() as u64, "HubSpot rate limited; retrying");
        })
        .await;
        result.map_err(|a| match a.error {
            HubSpotError::RateLimited {
                policy,
                retry_after,
                message,
                ..
            } => HubSpotError::RateLimited {
                policy,
                retry_after,
                message,
                attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
            },
            other => other,
        })
    }

    async fn post_once(&self, path: &str, body: &Value) -> Result<(u16, Value), Attempt> {
        let fail = |error| Attempt {
            error,
            retry_after: None,
        };
        let resp = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(self.token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(body)
            .send()
            .await
            .map_err(|e| fail(map_reqwest(e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.map_err(|e| fail(map_reqwest(e)))?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if status == 429 {
            let policy = field("policyName");
            let daily = policy.as_deref() == Some("DAILY");
            return Err(Attempt {
                error: HubSpotError::RateLimited {
                    policy,
                    retry_after,
                    message: field("message").unwrap_or_default(),
                    attempts: 1,
                },
                retry_after: (!daily).then_some(retry_after),
            });
        }
        if !(200..300).contains(&status) && status != 409 {
            return Err(fail(HubSpotError::Api {
                status,
                category: field("category"),
                message: field("message").unwrap_or_else(|| text.chars().take(200).collect()),
                correlation_id: field("correlationId"),
            }));
        }
        // 409 is handed back so contact creation can read the existing id.
        let json = json.ok_or_else(|| {
            fail(HubSpotError::Decode(format!(
                "status {status}, body not JSON: {}",
                text.chars().take(200).collect::<String>()
            )))
        })?;
        Ok((status, json))
    }

    /// the first contact whose `phone` or `mobilephone` equals `phone` exactly (E.164
    /// expected), with [`SEARCH_PROPERTIES`].
    ///
    /// # Errors
    /// [`HubSpotError`].
    pub async fn search_contact_by_phone(
        &self,
        phone: &str,
    ) -> Result<Option<Contact>, HubSpotError> {
        let body = json!({
            "filterGroups": [
                { "filters": [ { "propertyName": "phone", "operator": "EQ", "value": phone } ] },
                { "filters": [ { "propertyName": "mobilephone", "operator": "EQ", "value": phone } ] }
            ],
            "properties": SEARCH_PROPERTIES,
            "limit": 1
        });
        let (status, json) = self.post("/crm/v3/objects/contacts/search", &body).await?;
        reject_conflict(status, &json)?;
        let first = json
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| HubSpotError::Decode("search answer has no results array".into()))?
            .first()
            .cloned();
        first
            .map(|c| serde_json::from_value(c).map_err(|e| HubSpotError::Decode(e.to_string())))
            .transpose()
    }

    /// creates a contact with `properties` (e.g. `{"phone": "+15551234567"}`) and returns
    /// its id. A 409 duplicate (email) answers the existing id parsed from
    /// `"Contact already exists. Existing ID: 777"`.
    ///
    /// # Errors
    /// [`HubSpotError`]; a 409 whose message has no id is [`HubSpotError::Api`].
    pub async fn create_contact(
        &self,
        properties: serde_json::Map<String, Value>,
    ) -> Result<String, HubSpotError> {
        let body = json!({ "properties": properties });
        let (status, json) = self.post("/crm/v3/objects/contacts", &body).await?;
        if status == 409 {
            let message = json
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return existing_id(message).ok_or_else(|| api_error(status, &json));
        }
        object_id(&json)
    }

    /// The id of the contact with this phone number: the search's first hit, or a new
    /// contact with `phone` set.
    ///
    /// # Errors
    /// [`HubSpotError`] from either request.
    pub async fn find_or_create_contact(&self, phone: &str) -> Result<String, HubSpotError> {
        if phone.trim().is_empty() {
            return Err(HubSpotError::Invalid("empty phone number".into()));
        }
        if let Some(contact) = self.search_contact_by_phone(phone).await? {
            return Ok(contact.id);
        }
        let mut props = serde_json::Map::new();
        props.insert("phone".into(), Value::String(phone.to_string()));
        self.create_contact(props).await
    }

    /// creates a ticket with `subject` and `content` in `pipeline`/`stage` (stage **ids**,
    /// not labels), associated with `contact_id` (`HUBSPOT_DEFINED`, type id 16), and returns its
    /// id. Without a pipeline, the stock default pipeline `"0"` and its first stage `"1"` are
    /// used.
    ///
    /// # Errors
    /// [`HubSpotError::Invalid`] for a pipeline without a stage (a stage id belongs to one
    /// pipeline) or an empty subject; otherwise [`HubSpotError`] (400 `VALIDATION_ERROR` for an
    /// unknown stage or contact).
    pub async fn create_ticket(
        &self,
        subject: &str,
        content: &str,
        contact_id: &str,
        pipeline: Option<&str>,
        stage: Option<&str>,
    ) -> Result<String, HubSpotError> {
        if subject.is_empty() {
            return Err(HubSpotError::Invalid("ticket subject is empty".into()));
        }
        let (pipeline, stage) = match (pipeline, stage) {
            (None, None) => (DEFAULT_PIPELINE, DEFAULT_PIPELINE_STAGE),
            (None, Some(stage)) => (DEFAULT_PIPELINE, stage),
            (Some(pipeline), Some(stage)) => (pipeline, stage),
            (Some(pipeline), None) => {
                return Err(HubSpotError::Invalid(format!(
                    "pipeline {pipeline:?} needs a stage id"
                )));
            }
        };
        let body = json!({
            "properties": {
                "subject": subject,
                "content": content,
                "hs_pipeline": pipeline,
                "hs_pipeline_stage": stage
            },
            "associations": [
                {
                    "to": { "id": contact_id },
                    "types": [ { "associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TICKET_TO_CONTACT } ]
                }
            ]
        });
        let (status, json) = self.post("/crm/v3/objects/tickets", &body).await?;
        reject_conflict(status, &json)?;
        object_id(&json)
    }
}

/// The contact and ticket opened by [`HubSpot::ticket_for_caller`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerTicket {
    /// The caller's contact id (found or created).
    pub contact_id: String,
    /// The new ticket's id.
    pub ticket_id: String,
}

/// [`HubSpot::ticket_for_caller`] failed; `contact_id` is set when the contact step succeeded
/// and only the ticket failed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CallerTicketError {
    /// The contact id, when it was found or created before the failure.
    pub contact_id: Option<String>,
    /// What failed.
    pub error: HubSpotError,
}

impl HubSpot {
    /// Finds or creates the contact with `phone` ([`HubSpot::find_or_create_contact`]), then opens a ticket associated with it ([`HubSpot::create_ticket`], type id
    /// 16). 429s are retried per the [`RetryPolicy`].
    ///
    /// # Errors
    /// [`CallerTicketError`] with the contact id when only the ticket failed.
    pub async fn ticket_for_caller(
        &self,
        phone: &str,
        subject: &str,
        content: &str,
        pipeline: Option<&str>,
        stage: Option<&str>,
    ) -> Result<CallerTicket, CallerTicketError> {
        let contact_id =
            self.find_or_create_contact(phone)
                .await
                .map_err(|error| CallerTicketError {
                    contact_id: None,
                    error,
                })?;
        match self
            .create_ticket(subject, content, &contact_id, pipeline, stage)
            .await
        {
            Ok(ticket_id) => Ok(CallerTicket {
                contact_id,
                ticket_id,
            }),
            Err(error) => Err(CallerTicketError {
                contact_id: Some(contact_id),
                error,
            }),
        }
    }
}

fn reject_conflict(status: u16, json: &Value) -> Result<(), HubSpotError> {
    if status == 409 {
        Err(api_error(status, json))
    } else {
        Ok(())
    }
}

fn api_error(status: u16, json: &Value) -> HubSpotError {
    let field = |name: &str| json.get(name).and_then(Value::as_str).map(str::to_string);
    HubSpotError::Api {
        status,
        category: field("category"),
        message: field("message").unwrap_or_default(),
        correlation_id: field("correlationId"),
    }
}

fn object_id(json: &Value) -> Result<String, HubSpotError> {
    match json.get("id") {
        Some(Value::String(id)) => Ok(id.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(HubSpotError::Decode("answer has no id".into())),
    }
}

/// The id in `"Contact already exists. Existing ID: 777"` (relied on widely, not formally
/// documented).
pub fn existing_id(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("Existing ID:")?;
    let id: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// `Retry-After` as delay-seconds (HTTP says a non-negative integer; a fraction is accepted too).
/// HTTP-dates are not parsed (treated as absent: the backoff applies).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn map_reqwest(e: reqwest::Error) -> HubSpotError {
    if e.is_timeout() {
        HubSpotError::Timeout
    } else {
        HubSpotError::Transport(e.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_id_from_conflict_message() {
        assert_eq!(
            existing_id("Contact already exists. Existing ID: 777").as_deref(),
            Some("777")
        );
        assert_eq!(existing_id("Contact already exists."), None);
        assert_eq!(existing_id("Existing ID: x"), None);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
