//! Twilio REST (API version 2010-04-01): create and update calls, send SMS.
//!
//! Sources: <https://www.twilio.com/docs/voice/api/call-resource> (create a call, update a live
//! call), <https://www.twilio.com/docs/usage/twilios-response> (error JSON), twilio-node
//! `src/rest/api/v2010/account/call.ts`. Requests are `application/x-www-form-urlencoded` with
//! PascalCase names, to `{base_url}/2010-04-01/Accounts/{AccountSid}/….json` (the `.json` suffix
//! makes Twilio answer JSON instead of XML), with HTTP Basic auth `AccountSid:AuthToken` or
//! `ApiKeySid:ApiKeySecret`.
//!
//! Nothing is retried: creating a call or a message is not idempotent, and an update that timed
//! out may have been applied. Callers decide.
//!
//! The Messages API ([`TwilioRest::send_message`]) is outside the pages above: its path
//! (`/Messages.json`), parameters (`To`, `From`, `Body`) and `201` answer with an `SM…` sid and
//! `"status": "queued"` follow Twilio's public Messages resource docs as we know them,
//! **[unverified]** against Twilio.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;

/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Maximum length of inline `Twiml` on a call (Call resource `Twiml`: "at most 4000 characters").
pub const TWIML_MAX_CHARS: usize = 4000;

/// Maximum length of `SendDigits`.
pub const SEND_DIGITS_MAX_CHARS: usize = 32;

/// Maximum `Timeout` (ring seconds) on a created call (Call resource `Timeout`: default 60, max 600).
pub const TIMEOUT_MAX_SECS: u32 = 600;

/// The error body Twilio returns with a non-2xx status:
/// `{"code": 21211, "message": "...", "more_info": "https://www.twilio.com/docs/errors/21211",
/// "status": 400}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Twilio answered {status}{}: {message}", .code.map(|c| format!(" (error {c})")).unwrap_or_default())]
pub struct TwilioApiError {
    /// Twilio error code (e.g. 21211); present on 4xx validation errors, `None` when absent or the
    /// body was not Twilio's JSON.
    pub code: Option<u32>,
    /// `message`, or the start of the body when it was not Twilio's JSON.
    pub message: String,
    /// `more_info`: the error's docs page.
    pub more_info: Option<String>,
    /// HTTP status (`status` in the body mirrors it; the HTTP status line wins).
    pub status: u16,
    /// `details`, which newer APIs may add.
    pub details: Option<Value>,
}

/// A Twilio REST request failed.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered a non-2xx status.
    #[error(transparent)]
    Api(#[from] TwilioApiError),
    /// The request was refused locally because Twilio would reject it (the message says why).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No answer within the request timeout. The request may still have been applied.
    #[error("request timed out")]
    Timeout,
    /// Connecting or sending failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A 2xx answer whose body was not the expected JSON.
    #[error("unexpected response body: {0}")]
    Decode(String),
}

/// What a new call runs when answered (Call resource: exactly one of `Url`, `Twiml`, `ApplicationSid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallInstructions {
    /// Inline TwiML, at most [`TWIML_MAX_CHARS`] characters (`Twiml`).
    Twiml(String),
    /// Absolute URL fetched for TwiML (`Url`), with `Method` (`GET`/`POST`; Twilio's default
    /// `POST`, omitted when `None`).
    Url {
        /// The TwiML URL.
        url: String,
        /// `Method`.
        method: Option<String>,
    },
    /// A TwiML App (`ApplicationSid`, `AP…`).
    ApplicationSid(String),
}

/// Parameters of `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateCall {
    /// `To`: E.164 number, SIP URI, or `client:…`.
    pub to: String,
    /// `From`: a Twilio number or verified caller ID.
    pub from: String,
    /// `Url`, `Twiml` or `ApplicationSid`.
    pub instructions: CallInstructions,
    /// `StatusCallback`.
    pub status_callback: Option<String>,
    /// `StatusCallbackMethod`.
    pub status_callback_method: Option<String>,
    /// `StatusCallbackEvent`, sent once per value (`initiated`, `ringing`, `answered`,
    /// `completed`); empty means Twilio's default (`completed` only).
    pub status_callback_events: Vec<String>,
    /// `Timeout`: ring seconds (Twilio's default 60, at most 600).
    pub timeout_secs: Option<u32>,
    /// `SendDigits`: keys played after answer, at most 32 of `0-9A-D#*wW`.
    pub send_digits: Option<String>,
}

impl CreateCall {
    /// A call from `from` to `to` running `instructions`, with no optional parameters.
    pub fn new(
        to: impl Into<String>,
        from: impl Into<String>,
        instructions: CallInstructions,
    ) -> Self {
        Self {
            to: to.into(),
            from: from.into(),
            instructions,
            status_callback: None,
            status_callback_method: None,
            status_callback_events: Vec::new(),
            timeout_secs: None,
            send_digits: None,
        }
    }

    /// Sets `StatusCallback` and the `StatusCallbackEvent` values.
    pub fn status_callback<I, S>(mut self, url: impl Into<String>, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.status_callback = Some(url.into());
        self.status_callback_events = events.into_iter().map(Into::into).collect();
        self
    }

    /// The form fields in the order sent.
    ///
    /// # Errors
    /// [`TwilioError::Invalid`] for empty `To`/`From`, TwiML over 4000 characters, `Timeout`
    /// over 600, or bad `SendDigits`.
    pub fn form(&self) -> Result<Vec<(&'static str, String)>, TwilioError> {
        if self.to.is_empty() || self.from.is_empty() {
            return Err(TwilioError::Invalid("To and From are required".into()));
        }
        let mut form = vec![("To", self.to.clone()), ("From", self.from.clone())];
        instructions_form(&self.instructions, &mut form)?;
        if let Some(url) = &self.status_callback {
            form.push(("StatusCallback", url.clone()));
        }
        if let Some(method) = &self.status_callback_method {
            form.push(("StatusCallbackMethod", method.clone()));
        }
        for event in &self.status_callback_events {
            form.push(("StatusCallbackEvent", event.clone()));
        }
        if let Some(secs) = self.timeout_secs {
            if secs > TIMEOUT_MAX_SECS {
                return Err(TwilioError::Invalid(format!(
                    "Timeout {secs} exceeds {TIMEOUT_MAX_SECS} s"
                )));
            }
            form.push(("Timeout", secs.to_string()));
        }
        if let Some(digits) = &self.send_digits {
            let ok = !digits.is_empty()
                && digits.chars().count() <= SEND_DIGITS_MAX_CHARS
                && digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"ABCD#*wW".contains(&b));
            if !ok {
                return Err(TwilioError::Invalid(format!(
                    "SendDigits {digits:?}: at most 32 of 0-9, A-D, #, *, w, W"
                )));
            }
            form.push(("SendDigits", digits.clone()));
        }
        Ok(form)
    }
}

fn instructions_form(
    instructions: &CallInstructions,
    form: &mut Vec<(&'static str, String)>,
) -> Result<(), TwilioError> {
    match instructions {
        CallInstructions::Twiml(twiml) => {
            let n = twiml.chars().count();
            if n > TWIML_MAX_CHARS {
                return Err(TwilioError::Invalid(format!(
                    "Twiml is {n} characters; Twilio takes at most {TWIML_MAX_CHARS}"
                )));
            }
            form.push(("Twiml", twiml.clone()));
        }
        CallInstructions::Url { url, method } => {
            form.push(("Url", url.clone()));
            if let Some(method) = method {
                form.push(("Method", method.clone()));
            }
        }
        CallInstructions::ApplicationSid(sid) => form.push(("ApplicationSid", sid.clone())),
    }
    Ok(())
}

/// What to do with a live call. Updating a call inside `<Connect><Stream>` replaces the
/// running TwiML: the stream ends (`stop`, then the socket closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallUpdate {
    /// `Twiml`: run this TwiML now (at most [`TWIML_MAX_CHARS`] characters).
    Twiml(String),
    /// `Url` (+ `Method`): fetch TwiML from here now.
    Url {
        /// The TwiML URL.
        url: String,
        /// `Method`.
        method: Option<String>,
    },
    /// `Status=completed`: hang up a call in progress.
    Complete,
    /// `Status=canceled`: cancel a call that is queued or ringing.
    Cancel,
}

impl CallUpdate {
    /// The form fields.
    ///
    /// # Errors
    /// [`TwilioError::Invalid`] for TwiML over 4000 characters.
    pub fn form(&self) -> Result<Vec<(&'static str, String)>, TwilioError> {
        let mut form = Vec::new();
        match self {
            Self::Twiml(twiml) => {
                instructions_form(&CallInstructions::Twiml(twiml.clone()), &mut form)?
            }
            Self::Url { url, method } => instructions_form(
                &CallInstructions::Url {
                    url: url.clone(),
                    method: method.clone(),
                },
                &mut form,
            )?,
            Self::Complete => form.push(("Status", "completed".to_string())),
            Self::Cancel => form.push(("Status", "canceled".to_string())),
        }
        Ok(form)
    }
}

/// The call resource Twilio returns (§4.1 response example). Dates are RFC 2822 strings; nullable
/// fields are `Option`. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Call {
    /// `CA…`.
    pub sid: String,
    /// `AC…`.
    pub account_sid: String,
    /// `queued` for a fresh call; `ringing`, `in-progress`, `completed`, `busy`, `failed`,
    /// `no-answer`, `canceled`.
    pub status: String,
    /// `inbound`, `outbound-api`, `outbound-dial`.
    pub direction: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// Parent leg for child calls.
    pub parent_call_sid: Option<String>,
    /// Seconds, as a string.
    pub duration: Option<String>,
    /// RFC 2822.
    pub date_created: Option<String>,
    /// RFC 2822.
    pub start_time: Option<String>,
    /// RFC 2822.
    pub end_time: Option<String>,
    /// `/2010-04-01/Accounts/AC…/Calls/CA….json`.
    pub uri: Option<String>,
}

/// The message resource Twilio returns **[unverified]**, see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Message {
    /// `SM…` (or `MM…` for MMS).
    pub sid: String,
    /// `AC…`.
    pub account_sid: Option<String>,
    /// `queued`, `sending`, `sent`, `delivered`, `failed`, ….
    pub status: String,
    /// `to`.
    pub to: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `body`.
    pub body: Option<String>,
    /// SMS segments, as a string.
    pub num_segments: Option<String>,
    /// Delivery error code, if failed.
    pub error_code: Option<i64>,
}

/// Client for the calls and messages endpoints of one account.
#[derive(Clone, Debug)]
pub struct TwilioRest {
    http: reqwest::Client,
    base_url: String,
    account_sid: String,
    username: String,
    password: Secret,
}

impl TwilioRest {
    /// Authenticates as `account_sid:auth_token`. `base_url` is [`DEFAULT_BASE_URL`] in
    /// production (no trailing slash needed); `request_timeout` bounds each request.
    ///
    /// # Errors
    /// [`TwilioError::Transport`] when the HTTP client cannot be built;
    /// [`TwilioError::Invalid`] when `base_url` is not an http(s) URL.
    pub fn new(
        base_url: &str,
        account_sid: &str,
        auth_token: Secret,
        request_timeout: Duration,
    ) -> Result<Self, TwilioError> {
        Self::with_api_key(
            base_url,
            account_sid,
            account_sid,
            auth_token,
            request_timeout,
        )
    }

    /// Authenticates with an API key (`SK…` sid and its secret) for `account_sid`'s resources.
    ///
    /// # Errors
    /// As [`TwilioRest::new`].
    pub fn with_api_key(
        base_url: &str,
        account_sid: &str,
        key_sid: &str,
        key_secret: Secret,
        request_timeout: Duration,
    ) -> Result<Self, TwilioError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(TwilioError::Invalid(format!("base URL {base_url:?}"))),
        }
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .user_agent(concat!("voxmachina/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TwilioError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            account_sid: account_sid.to_string(),
            username: key_sid.to_string(),
            password: key_secret,
        })
    }

    /// The account the client acts on.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// `{base}/2010-04-01/Accounts/{AccountSid}/{segments…}` with each segment percent-encoded;
    /// the last segment gets `.json`.
    fn url(&self, segments: &[&str]) -> String {
        let mut url = reqwest::Url::parse(&self.base_url).expect("checked in the constructor");
        {
            let mut path = url.path_segments_mut().expect("http(s) base");
            path.pop_if_empty()
                .extend(["2010-04-01", "Accounts", &self.account_sid]);
            let (last, init) = segments.split_last().expect("at least one segment");
            path.extend(init);
            path.push(&format!("{last}.json"));
        }
        url.to_string()
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        url: String,
        form: &[(&'static str, String)],
    ) -> Result<T, TwilioError> {
        let resp = self
            .http
            .post(url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(map_reqwest)?;
        let status = resp.status();
        let text = resp.text().await.map_err(map_reqwest)?;
        if !status.is_success() {
            return Err(parse_error(status.as_u16(), &text).into());
        }
        serde_json::from_str(&text).map_err(|e| TwilioError::Decode(e.to_string()))
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`; Twilio answers `201` with
    /// the call (normally `"status": "queued"`). Sent once.
    ///
    /// # Errors
    /// [`TwilioError::Invalid`] before sending (see [`CreateCall::form`]); [`TwilioError::Api`]
    /// with Twilio's code (e.g. 21211 invalid `To`, 21206 invalid `SendDigits`); timeouts and
    /// transport errors.
    pub async fn create_call(&self, call: &CreateCall) -> Result<Call, TwilioError> {
        let form = call.form()?;
        self.post(self.url(&["Calls"]), &form).await
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`: redirect a live call
    /// to new TwiML or a URL, or end it. Returns the updated call.
    ///
    /// # Errors
    /// As [`TwilioRest::create_call`].
    pub async fn update_call(
        &self,
        call_sid: &str,
        update: &CallUpdate,
    ) -> Result<Call, TwilioError> {
        let form = update.form()?;
        self.post(self.url(&["Calls", call_sid]), &form).await
    }

    /// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with `To`, `From`, `Body`: an SMS
    /// **[unverified]** (see the module docs).
    ///
    /// # Errors
    /// [`TwilioError::Invalid`] for an empty `To`, `From` or `Body`; as
    /// [`TwilioRest::create_call`] otherwise.
    pub async fn send_message(
        &self,
        to: &str,
        from: &str,
        body: &str,
    ) -> Result<Message, TwilioError> {
        if to.is_empty() || from.is_empty() || body.is_empty() {
            return Err(TwilioError::Invalid(
                "To, From and Body are required".into(),
            ));
        }
        let form = [
            ("To", to.to_string()),
            ("From", from.to_string()),
            ("Body", body.to_string()),
        ];
        self.post(self.url(&["Messages"]), &form).await
    }
}

/// Maps a non-2xx answer to [`TwilioApiError`]: Twilio's JSON when the body is that, otherwise
/// the HTTP status and the start of the body.
pub fn parse_error(status: u16, body: &str) -> TwilioApiError {
    #[derive(Deserialize)]
    struct Body {
        code: Option<u32>,
        message: Option<String>,
        more_info: Option<String>,
        details: Option<Value>,
    }
    match serde_json::from_str::<Body>(body) {
        Ok(b) if b.message.is_some() || b.code.is_some() => TwilioApiError {
            code: b.code,
            message: b.message.unwrap_or_default(),
            more_info: b.more_info,
            status,
            details: b.details,
        },
        _ => TwilioApiError {
            code: None,
            message: body.chars().take(200).collect(),
            more_info: None,
            status,
            details: None,
        },
    }
}

fn map_reqwest(e: reqwest::Error) -> TwilioError {
    if e.is_timeout() {
        TwilioError::Timeout
    } else {
        TwilioError::Transport(e.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> TwilioRest {
        TwilioRest::new(base, "AC123", Secret::new("t"), Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_sids() {
        assert_eq!(
            client("https://api.twilio.com").url(&["Calls"]),
            "https://api.twilio.com/2010-04-01/Accounts/AC123/Calls.json"
        );
        assert_eq!(
            client("http://127.0.0.1:9/prefix/").url(&["Calls", "CA1/x"]),
            "http://127.0.0.1:9/prefix/2010-04-01/Accounts/AC123/Calls/CA1%2Fx.json"
        );
    }

    #[test]
    fn error_body_mapping() {
        let e = parse_error(
            400,
            r#"{ "code": 21211, "message": "The 'To' number 5551234567 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400 }"#,
        );
        assert_eq!(e.code, Some(21211));
        assert_eq!(e.status, 400);
        assert_eq!(
            e.more_info.as_deref(),
            Some("https://www.twilio.com/docs/errors/21211")
        );
        let e = parse_error(502, "<html>bad gateway</html>");
        assert_eq!((e.code, e.status), (None, 502));
        assert_eq!(e.message, "<html>bad gateway</html>");
    }

    #[test]
    fn local_validation() {
        let long = CallInstructions::Twiml("x".repeat(4001));
        assert!(matches!(
            CreateCall::new("+1", "+2", long).form(),
            Err(TwilioError::Invalid(_))
        ));
        let mut c = CreateCall::new("+1", "+2", CallInstructions::Twiml("x".repeat(4000)));
        assert!(c.form().is_ok());
        c.send_digits = Some("W1234#".into());
        assert!(c.form().is_ok());
        c.send_digits = Some("12e".into());
        assert!(c.form().is_err());
        c.send_digits = Some("1".repeat(33));
        assert!(c.form().is_err());
        c.send_digits = None;
        c.timeout_secs = Some(601);
        assert!(c.form().is_err());
    }
}
