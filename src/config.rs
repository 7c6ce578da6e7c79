//! Configuration: `config/voxmachina.toml` layered with `VOXMACHINA_<SECTION>__<KEY>` environment
//! overrides, plus secrets that never come from the TOML file.
//!
//! Layers, lowest first:
//! 1. built-in defaults (the values documented in `config/voxmachina.toml`);
//! 2. the TOML file given with `--config` (missing file is an error only when named explicitly);
//! 3. environment variables such as `VOXMACHINA_OPENAI__BASE_URL` or `VOXMACHINA_SERVER__LISTEN`
//!    (prefix `VOXMACHINA_`, section and key separated by a double underscore).
//!
//! Secrets ([`Secrets`]) come from the environment (`OPENAI_API_KEY`, `OPENAI_WEBHOOK_SECRET`,
//! `VOXMACHINA_ADMIN_TOKEN`) or from files of the same lower-case name in `$CREDENTIALS_DIRECTORY`
//! (systemd `LoadCredential=`, see systemd.exec(5) "Credentials"). A file wins over the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod explain;

/// Errors while loading configuration or secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layered sources could not be read or did not deserialize into [`Config`].
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not usable (the message says which key and why).
    #[error("configuration: {0}")]
    Invalid(String),
    /// A required secret is missing from both the environment and `$CREDENTIALS_DIRECTORY`.
    #[error("secret {name} is not set: export {env} or provide the credential file {file}")]
    MissingSecret {
        /// Human name of the secret.
        name: &'static str,
        /// Environment variable that can carry it.
        env: &'static str,
        /// File name looked up in `$CREDENTIALS_DIRECTORY`.
        file: &'static str,
    },
    /// A secret is set but empty or only whitespace (a credential file, a `whsec_` prefix with
    /// nothing after it, or an environment variable). Secrets fail closed: such a value never
    /// disables a check or becomes an empty key.
    #[error(
        "secret {name} is empty or only whitespace (from {origin}): give it a value or remove it"
    )]
    EmptySecret {
        /// Name of the secret (the environment variable or credential/secret file name).
        name: String,
        /// Where the empty value came from: the file path or `environment variable NAME`.
        origin: String,
    },
    /// A credential file exists but could not be read.
    #[error("reading credential {path}: {source}")]
    CredentialFile {
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The whole controller configuration. Every key is documented in `config/voxmachina.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// HTTP listener settings.
    pub server: ServerConfig,
    /// OpenAI endpoints and call-control timing.
    pub openai: OpenAiConfig,
    /// Webhook verification and deduplication.
    pub webhook: WebhookConfig,
    /// Prompt profiles on disk.
    pub prompts: PromptsConfig,
    /// Where call records live.
    pub store: StoreConfig,
    /// Per-call sideband monitor behaviour.
    pub monitor: MonitorConfig,
    /// Log format and what may be logged.
    pub logging: LoggingConfig,
    /// How long finished calls are kept.
    pub retention: RetentionConfig,
    /// Twilio (Media Streams path, dial-outs, SMS).
    pub twilio: TwilioConfig,
    /// HubSpot CRM (contact and ticket on escalation).
    pub hubspot: HubSpotConfig,
    /// Agent tools declared in profiles: timeouts, filler line, output size, secrets directory.
    pub tools: ToolsConfig,
    /// After-call work: the call summary and the SMS opt-out list.
    pub after_call: AfterCallConfig,
    /// Per-model token prices for the call cost estimate.
    pub pricing: PricingConfig,
    /// Several instances on one store: instance id and call monitor leases.
    pub cluster: ClusterConfig,
    /// Per-call budgets (`[limits]`): DTMF events, message rate, event rows, transcript lines,
    /// tool calls and pending tool jobs per call ([`crate::calls::budget`]).
    pub limits: crate::calls::budget::LimitsConfig,
    /// Limits of the HTTP server: header, body and idle timeouts, maximum connections.
    pub http: HttpLimitsConfig,
}

/// `[http]`: limits of the HTTP server (`crate::http::server`), so slow or idle clients cannot
/// hold connections, memory or shutdown. Defaults suit nginx in front (nginx's
/// `client_header_timeout`/`client_body_timeout` are 60 s; these apply behind it too, and to
/// anything reaching the port directly).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct HttpLimitsConfig {
    /// Time a client has to send a complete request head (request line and headers), counted
    /// from the connection's accept for its first request, and from its first byte for later
    /// requests on a keep-alive connection, milliseconds. Past it the connection is closed
    /// (slowloris). Default 10 000.
    pub header_read_timeout_ms: u64,
    /// Time a request has, once its head is read, to deliver its whole body and be answered,
    /// milliseconds. Past it the client gets `408 Request Timeout` and the connection is closed
    /// (a slow body cannot hold a connection). WebSocket upgrades answer at once and are not
    /// limited by it afterwards. Default 15 000.
    pub body_read_timeout_ms: u64,
    /// How long a keep-alive connection may stay open with no request in flight and no byte
    /// of a new request received, milliseconds. Default 60 000.
    pub idle_timeout_ms: u64,
    /// Most HTTP connections open at once (WebSocket streams included, until they close). More
    /// are accepted and closed at once with `503 Service Unavailable`. Default 1024.
    pub max_connections: usize,
}

impl Default for HttpLimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 15_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
        }
    }
}

impl HttpLimitsConfig {
    /// `header_read_timeout_ms` as a [`Duration`].
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `body_read_timeout_ms` as a [`Duration`].
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// `idle_timeout_ms` as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Checks the limits: timeouts from 100 ms to 1 hour, `max_connections` from 1 to 1 000 000.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, ms) in [
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.body_read_timeout_ms", self.body_read_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {ms}: use 100 to 3600000 milliseconds"
                )));
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "http.max_connections = {}: use 1 to 1000000",
                self.max_connections
            )));
        }
        Ok(())
    }
}

/// `[tools]`: how the controller runs the tools declared in prompt profiles (`[[tools]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ToolsConfig {
    /// Timeout of a tool that sets no `timeout_ms`, milliseconds. The model then gets a
    /// `{"error":{"code":"timeout",...}}` object.
    pub default_timeout_ms: u64,
    /// When a tool has run this long, the agent says the filler line (once per batch of running
    /// tools, and only when no response is in progress), milliseconds. 0 disables fillers.
    pub filler_after_ms: u64,
    /// The filler line, unless the profile (`filler_line`) or the tool (`filler`) sets one.
    pub filler_line: String,
    /// Largest tool output handed to the model, bytes of JSON, unless the tool's
    /// `response.max_bytes` says otherwise. Larger outputs are cut (arrays lose trailing items).
    pub max_output_bytes: usize,
    /// Optional directory of named secret files (`{{secret:NAME}}` reads `<secrets_dir>/NAME`),
    /// looked up before `$CREDENTIALS_DIRECTORY/NAME` and `VOXMACHINA_SECRET_<NAME>`. Empty: not
    /// used.
    pub secrets_dir: PathBuf,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            default_timeout_ms: 5_000,
            filler_after_ms: 1_500,
            filler_line: "One moment while I look that up.".into(),
            max_output_bytes: 4_096,
            secrets_dir: PathBuf::new(),
        }
    }
}

/// How the after-call summary is produced.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SummaryMode {
    /// Ask the model through the sideband before the controller hangs up (an out-of-band text
    /// response); fall back to the transcript summary when that is impossible or fails.
    Model,
    /// Always the deterministic summary built from the transcript and the call record.
    Transcript,
    /// No summary.
    Off,
}

/// `[after_call]`: work done when a call ends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AfterCallConfig {
    /// `model` (default), `transcript` or `off`; a profile can turn summaries off.
    pub summary: SummaryMode,
    /// How long to wait for the model's summary before hanging up anyway, milliseconds.
    pub summary_timeout_ms: u64,
    /// File of E.164 numbers (one per line, `#` comments) that never get an SMS follow-up.
    /// Read at each send; callers who opt out during a call (or whose SMS Twilio refuses as
    /// unsubscribed, error 21610) are appended. Empty: no file.
    pub sms_opt_out_file: PathBuf,
    /// At most one SMS follow-up per caller number in this many seconds (default 86 400, a
    /// day), whatever the profile and instance: the window is claimed in the store
    /// (`Store::claim_sms_window`) before sending, so it holds across restarts and instances.
    pub sms_window_secs: u64,
}

impl Default for AfterCallConfig {
    fn default() -> Self {
        Self {
            summary: SummaryMode::Model,
            summary_timeout_ms: 4_000,
            sms_opt_out_file: PathBuf::from("data/sms_opt_out.txt"),
            sms_window_secs: 86_400,
        }
    }
}

impl AfterCallConfig {
    /// `sms_window_secs` as a [`chrono::Duration`].
    pub fn sms_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.sms_window_secs).unwrap_or(i64::MAX))
    }

    /// Checks `sms_window_secs`: 1 second to 366 days.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=366 * 86_400).contains(&self.sms_window_secs) {
            return Err(ConfigError::Invalid(format!(
                "after_call.sms_window_secs = {}: use 1 to 31622400 (366 days)",
                self.sms_window_secs
            )));
        }
        Ok(())
    }
}

/// `[pricing]`: token prices per model, for the cost estimate stored on each call record.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PricingConfig {
    /// Currency of the prices, e.g. `USD`.
    pub currency: String,
    /// One entry per Realtime model; a call whose model is not listed gets no estimate.
    pub models: Vec<ModelPrice>,
}

/// Prices of one model in `currency` per one million tokens (`[[pricing.models]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ModelPrice {
    /// The `[session] model` name, exact.
    pub model: String,
    /// Audio input tokens (also used for input tokens whose kind is unknown).
    pub audio_input: f64,
    /// Cached audio input tokens.
    #[serde(default)]
    pub cached_audio_input: Option<f64>,
    /// Text input tokens.
    pub text_input: f64,
    /// Cached text input tokens.
    #[serde(default)]
    pub cached_text_input: Option<f64>,
    /// Audio output tokens (also used for output tokens whose kind is unknown).
    pub audio_output: f64,
    /// Text output tokens.
    pub text_output: f64,
}

impl Default for PricingConfig {
    /// OpenAI's published list prices (USD per 1M tokens) for `gpt-realtime` and
    /// `gpt-realtime-mini` at the time of writing; check them against the current price list.
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            models: vec![
                ModelPrice {
                    model: "gpt-realtime".into(),
                    audio_input: 32.0,
                    cached_audio_input: Some(0.40),
                    text_input: 4.0,
                    cached_text_input: Some(0.40),
                    audio_output: 64.0,
                    text_output: 16.0,
                },
                ModelPrice {
                    model: "gpt-realtime-mini".into(),
                    audio_input: 10.0,
                    cached_audio_input: Some(0.30),
                    text_input: 0.60,
                    cached_text_input: Some(0.06),
                    audio_output: 20.0,
                    text_output: 2.40,
                },
            ],
        }
    }
}

impl PricingConfig {
    /// The price entry of `model`, if listed.
    pub fn for_model(&self, model: &str) -> Option<&ModelPrice> {
        self.models.iter().find(|m| m.model == model)
    }
}

/// `[twilio]`: Twilio Programmable Voice. The Auth Token is a secret (`TWILIO_AUTH_TOKEN`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TwilioConfig {
    /// REST base URL, `https://api.twilio.com` by default (a local fake in tests).
    pub api_base_url: String,
    /// Account SID (`AC...`); empty disables the Twilio features.
    pub account_sid: String,
    /// Public base URL of this controller as Twilio reaches it, e.g. `https://voice.example.com`.
    /// Used to build the `wss://…/twilio/media` stream URL and status callbacks, and as the URL
    /// Twilio signed when validating `X-Twilio-Signature` behind a proxy.
    pub public_url: String,
    /// E.164 caller ID for outbound calls and SMS.
    pub from_number: String,
    /// REST request timeout, milliseconds.
    pub request_timeout_ms: u64,
    /// How `POST /twilio/voice` answers an admitted call: `stream` (default) bridges it over
    /// Media Streams, `sip` dials it on to OpenAI SIP ([`TwilioVoiceMode`]).
    pub voice_mode: TwilioVoiceMode,
    /// The OpenAI SIP URI that `voice_mode = "sip"` dials, e.g.
    /// `sip:proj_XXXX@sip.api.openai.com;transport=tls` (OpenAI's Realtime SIP guide; `sip-eu…` for
    /// EU projects). A `sip:`/`sips:` URI without `?headers`; required for `sip`.
    pub openai_sip_uri: String,
}

/// `[twilio] voice_mode`: what the voice webhook answers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TwilioVoiceMode {
    /// `<Connect><Stream>`: the Media Streams bridge (`crate::bridge`).
    #[default]
    Stream,
    /// `<Dial><Sip>{openai_sip_uri}?X-Twilio-CallSid={CallSid}</Sip></Dial>`: the call reaches
    /// OpenAI over SIP (the SIP webhook path) while Twilio keeps the parent call, which a
    /// `twilio_dial` escalation redirects (`crate::escalation::twilio_dial`).
    Sip,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        Self {
            api_base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            public_url: String::new(),
            from_number: String::new(),
            request_timeout_ms: 5_000,
            voice_mode: TwilioVoiceMode::Stream,
            openai_sip_uri: String::new(),
        }
    }
}

/// `[hubspot]`: HubSpot CRM v3. The private-app token is a secret (`HUBSPOT_TOKEN`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HubSpotConfig {
    /// Use HubSpot (with `HUBSPOT_TOKEN`): the `create_ticket` tool, and the contact and ticket
    /// on escalation when `on_escalation` is also set.
    pub enabled: bool,
    /// API base URL, `https://api.hubapi.com` by default.
    pub base_url: String,
    /// Request timeout, milliseconds.
    pub request_timeout_ms: u64,
    /// On every escalation, find or create the caller's contact by phone and open a ticket with
    /// the conversation summary, associated with it (default true; needs `enabled`). A failure
    /// is recorded on the call record (`escalation.crm.error`) and never stops the hand-off.
    pub on_escalation: bool,
    /// How long a `connect_refer` hand-off waits for the contact and ticket ids before minting
    /// the handover token without them, milliseconds (default 2000). Plain REFER hand-offs never
    /// wait: their CRM work runs beside the transfer.
    pub escalation_wait_ms: u64,
    /// Pipeline id of escalation tickets; unset = the stock default pipeline `"0"`.
    pub ticket_pipeline: Option<String>,
    /// Stage **id** of escalation tickets (required with `ticket_pipeline`); unset = `"1"`.
    pub ticket_stage: Option<String>,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.hubapi.com".into(),
            request_timeout_ms: 5_000,
            on_escalation: true,
            escalation_wait_ms: 2_000,
            ticket_pipeline: None,
            ticket_stage: None,
        }
    }
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Socket address to bind, e.g. `127.0.0.1:8080` behind nginx. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Seconds to wait on SIGTERM for in-flight requests and monitors before exiting.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_secs: 20,
        }
    }
}

/// `[openai]`: base URLs and call-control timing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct OpenAiConfig {
    /// REST base URL, `https://api.openai.com/v1` by default (`https://eu.api.openai.com/v1` for EU
    /// projects, or a local emulator). Call control is `{base_url}/realtime/calls/{call_id}/...`.
    pub base_url: String,
    /// Sideband WebSocket base, `wss://api.openai.com/v1/realtime` by default; the monitor connects
    /// to `{sideband_url}?call_id={call_id}`.
    pub sideband_url: String,
    /// Per-request timeout for call-control requests, milliseconds.
    pub request_timeout_ms: u64,
    /// Total time budget for retrying `/accept` on 5xx or timeouts, milliseconds. The INVITE is
    /// held while we decide, so keep this to a few seconds.
    pub accept_retry_budget_ms: u64,
    /// GPT-Live REST base URL, `https://api.openai.com/v1` by default: call control is
    /// `{live_base_url}/live/sessions/{session_id}/...`, outbound calls `POST
    /// {live_base_url}/live/sessions` (OpenAI's voice-sip guide (`?api=live`)).
    pub live_base_url: String,
    /// GPT-Live WebSocket base, `wss://api.openai.com/v1` by default: the attach sideband is
    /// `{live_sideband_url}/live/sessions/{session_id}/attach` (OpenAI's voice-sip guide
    /// (`?api=live`) step 4).
    pub live_sideband_url: String,
    /// `[openai.live_trunk]`: the SIP trunk GPT-Live dials outbound calls through
    /// (`voxmachina call --api live`); `None` = outbound calls are off.
    pub live_trunk: Option<LiveTrunkConfig>,
}

/// `[openai.live_trunk]`: the `transport.trunk` of `POST /live/sessions` (OpenAI's voice-sip guide
/// (`?api=live`)). The trunk must support TLS signalling, Opus and SDES-SRTP.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LiveTrunkConfig {
    /// `sips:host[:port][;transport=tcp]` (no userinfo, path, headers or other parameters;
    /// public hosts only). Checked by OpenAI on the create request.
    pub provider_url: String,
    /// Digest auth user name.
    pub username: String,
    /// Name of the secret holding the digest password (`[tools] secrets_dir/<name>`, then
    /// `$CREDENTIALS_DIRECTORY/<name>`, then `VOXMACHINA_SECRET_<NAME>`), read per call; never
    /// in this file.
    pub password_secret: String,
    /// The caller number presented, E.164.
    pub caller_number: String,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            sideband_url: "wss://api.openai.com/v1/realtime".into(),
            request_timeout_ms: 2_000,
            accept_retry_budget_ms: 4_000,
            live_base_url: "https://api.openai.com/v1".into(),
            live_sideband_url: "wss://api.openai.com/v1".into(),
            live_trunk: None,
        }
    }
}

/// `[webhook]`: Standard Webhooks verification and dedupe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Accepted clock difference between `webhook-timestamp` and now, seconds, both directions,
    /// inclusive (the OpenAI SDKs use 300).
    pub tolerance_secs: u64,
    /// How long a `webhook-id` is remembered for dedupe, hours. OpenAI retries for up to 72 h.
    pub dedupe_ttl_hours: u64,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            tolerance_secs: 300,
            dedupe_ttl_hours: 72,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// `[prompts]`: where prompt profiles are read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PromptsConfig {
    /// Directory holding `*.toml` profiles and their Markdown instructions.
    pub dir: PathBuf,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("prompts"),
        }
    }
}

/// `[store]`: which store backs call records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite` (the embedded default) or `dynamodb` (tables shared by several instances).
    pub backend: String,
    /// SQLite database file; its directory is created if missing.
    pub sqlite_path: PathBuf,
    /// `[store.dynamodb]`: used when `backend = "dynamodb"` and by `voxmachina dynamodb ...`.
    pub dynamodb: DynamoDbConfig,
    /// Largest SQLite database, MiB (SQLite's `max_page_count` on the writer connection,
    /// <https://www.sqlite.org/pragma.html#pragma_max_page_count>): beyond it writes fail with
    /// `SQLITE_FULL` exactly as on a full disk, and are held and retried like any failing write.
    /// 0 (default): no limit but the disk.
    pub sqlite_max_size_mb: u64,
    /// Transcript lines and events held in memory per call while store writes fail
    /// ([`crate::store::resilient`]); beyond it new ones are dropped and counted. Default 2000.
    pub write_queue_per_call: usize,
    /// Transcript lines and events held in memory in all while store writes fail. Default
    /// 200000 (about 100 MB at most).
    pub write_queue_total: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            sqlite_path: PathBuf::from("data/voxmachina.db"),
            dynamodb: DynamoDbConfig::default(),
            sqlite_max_size_mb: 0,
            write_queue_per_call: crate::store::HoldLimits::default().per_call,
            write_queue_total: crate::store::HoldLimits::default().total,
        }
    }
}

/// `[store.dynamodb]`: where the DynamoDB tables are. Credentials come from the AWS default
/// chain (environment, shared profile, web identity, ECS/EC2 instance roles), never from here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct DynamoDbConfig {
    /// Table name prefix: the tables are `{prefix}_calls`, `{prefix}_transcripts`,
    /// `{prefix}_events`, `{prefix}_webhooks`, `{prefix}_tokens` and `{prefix}_leases`. Letters, digits, `_`, `-`
    /// and `.`, at most 200 characters.
    pub table_prefix: String,
    /// AWS region, e.g. `eu-west-1`. When unset, the AWS default chain decides (`AWS_REGION`,
    /// the shared config profile).
    pub region: Option<String>,
    /// Endpoint URL override, for a local engine (`http://127.0.0.1:8000`) or a VPC endpoint.
    /// Unset means the regional AWS endpoint.
    pub endpoint_url: Option<String>,
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        Self {
            table_prefix: "voxmachina".into(),
            region: None,
            endpoint_url: None,
        }
    }
}

/// `[cluster]`: running several controller instances on one store (`crate::calls::lease`).
///
/// Each live call has exactly one monitor: the instance holding the call's lease in the store.
/// The holder renews it every `lease_renew_interval_ms`; a lease not renewed for
/// `lease_ttl_ms` (its holder died or lost the store) is taken over by the first instance whose
/// takeover scan sees it expired, which reattaches the call's sideband.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This instance's id, the owner name written into leases. Must be unique among running
    /// instances and stable across restarts of one instance (so a restart takes its own leases
    /// back at once). Unset: the host name ([`ClusterConfig::instance_id`]).
    pub instance_id: Option<String>,
    /// How long a lease lasts without renewal, milliseconds. A dead owner's calls are taken over
    /// after at most this plus `takeover_scan_interval_ms`. Must exceed the renew interval plus
    /// the clock skew between instances.
    pub lease_ttl_ms: u64,
    /// How often an owner renews the leases of its calls, milliseconds (less than
    /// `lease_ttl_ms`; a third of it leaves room for two failed renewals).
    pub lease_renew_interval_ms: u64,
    /// How often every instance looks for live calls whose lease expired (or that have none
    /// for longer than `lease_ttl_ms`), milliseconds.
    pub takeover_scan_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            instance_id: None,
            lease_ttl_ms: 15_000,
            lease_renew_interval_ms: 5_000,
            takeover_scan_interval_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// The configured `instance_id`, else the host name (`/proc/sys/kernel/hostname`, then
    /// `$HOSTNAME`), else `"voxmachina"`.
    pub fn instance_id(&self) -> String {
        if let Some(id) = self.instance_id.as_deref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "voxmachina".to_string())
    }

    /// `lease_ttl_ms` as a [`Duration`].
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// `lease_renew_interval_ms` as a [`Duration`].
    pub fn lease_renew_interval(&self) -> Duration {
        Duration::from_millis(self.lease_renew_interval_ms)
    }

    /// `takeover_scan_interval_ms` as a [`Duration`].
    pub fn takeover_scan_interval(&self) -> Duration {
        Duration::from_millis(self.takeover_scan_interval_ms)
    }
}

/// `[monitor]`: the per-call sideband monitor.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MonitorConfig {
    /// Reconnect attempts after an abnormal sideband drop before the monitor gives up.
    pub reconnect_max_attempts: usize,
    /// First reconnect delay, milliseconds; doubles up to `reconnect_max_delay_ms`.
    pub reconnect_initial_delay_ms: u64,
    /// Largest reconnect delay, milliseconds.
    pub reconnect_max_delay_ms: u64,
    /// After `/refer` returns 200, how long to wait for the sideband to close before the transfer
    /// is declared failed, milliseconds. A 200 from `/refer` only means "relayed".
    pub refer_outcome_window_ms: u64,
    /// How long to wait for a spoken line (handoff, apology, goodbye) to finish before moving on,
    /// milliseconds.
    pub handoff_line_timeout_ms: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            reconnect_max_attempts: 5,
            reconnect_initial_delay_ms: 200,
            reconnect_max_delay_ms: 5_000,
            refer_outcome_window_ms: 10_000,
            handoff_line_timeout_ms: 8_000,
        }
    }
}

impl MonitorConfig {
    /// The refer outcome window as a [`Duration`].
    pub fn refer_outcome_window(&self) -> Duration {
        Duration::from_millis(self.refer_outcome_window_ms)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (systemd, files), human-readable otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LoggingConfig {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directive, e.g. `info` or `voxmachina=debug`. `RUST_LOG`
    /// wins when set.
    pub level: String,
    /// Log caller and agent transcript text. Off by default: transcripts are stored, not logged.
    pub log_transcripts: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
            log_transcripts: false,
        }
    }
}

/// `[retention]`: how long finished call records (with their transcripts and events) are kept.
///
/// A background task purges once at start and then every hour
/// ([`crate::app::RETENTION_PURGE_INTERVAL`]): final calls created more than `days` days ago,
/// and expired webhook-id dedupe entries. Live calls are never purged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Days to keep finished calls, counted from their creation. `0` turns purging off
    /// (records are kept forever and dedupe entries are only dropped when reused).
    pub days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { days: 30 }
    }
}

impl RetentionConfig {
    /// The retention period, or `None` when purging is off (`days = 0`).
    pub fn period(&self) -> Option<chrono::Duration> {
        let days = i64::try_from(self.days).ok()?;
        (days > 0).then(|| chrono::Duration::try_days(days))?
    }
}

impl Config {
    /// Loads defaults, then `path` (if given), then `VOXMACHINA_*` environment overrides.
    ///
    /// # Errors
    /// [`ConfigError::Load`] when the file is unreadable or a value has the wrong type,
    /// [`ConfigError::Invalid`] when a URL is malformed.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, for tests.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = env_overrides(env);
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        // `try_parsing(false)`: every environment value stays a string and is converted by the
        // type of the field it lands in (`u64`, `bool`, `SocketAddr`, ...). Guessing from the
        // string would turn `+18005550111`, an all-digit account SID, id or secret into a
        // number and lose the `+` or leading zeros.
        builder = builder.add_source(
            config::Environment::with_prefix("VOXMACHINA")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(false)
                .source(Some(env)),
        );
        let cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every configuration key holding an E.164 number, with its value: checked by
    /// [`Config::validate`] whatever layer set it. A new number key belongs here.
    fn e164_keys(&self) -> Vec<(&'static str, &str)> {
        let mut keys = Vec::new();
        if !self.twilio.from_number.is_empty() {
            // Empty means "not configured" (Twilio outbound calls and SMS are then off).
            keys.push(("twilio.from_number", self.twilio.from_number.as_str()));
        }
        if let Some(trunk) = &self.openai.live_trunk {
            keys.push((
                "openai.live_trunk.caller_number",
                trunk.caller_number.as_str(),
            ));
        }
        keys
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.after_call.validate()?;
        for (key, value) in self.e164_keys() {
            check_e164(key, value)?;
        }
        for (key, url, schemes) in [
            (
                "openai.base_url",
                &self.openai.base_url,
                &["http", "https"][..],
            ),
            (
                "openai.sideband_url",
                &self.openai.sideband_url,
                &["ws", "wss"][..],
            ),
            (
                "openai.live_base_url",
                &self.openai.live_base_url,
                &["http", "https"][..],
            ),
            (
                "openai.live_sideband_url",
                &self.openai.live_sideband_url,
                &["ws", "wss"][..],
            ),
        ] {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| ConfigError::Invalid(format!("{key} = {url:?}: {e}")))?;
            if !schemes.contains(&parsed.scheme()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {url:?}: scheme must be one of {schemes:?}"
                )));
            }
        }
        for m in &self.pricing.models {
            let prices = [
                m.audio_input,
                m.text_input,
                m.audio_output,
                m.text_output,
                m.cached_audio_input.unwrap_or(0.0),
                m.cached_text_input.unwrap_or(0.0),
            ];
            if m.model.trim().is_empty() || prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
                return Err(ConfigError::Invalid(format!(
                    "pricing.models {:?}: needs a model name and prices >= 0",
                    m.model
                )));
            }
        }
        if self.twilio.voice_mode == TwilioVoiceMode::Sip
            && crate::twilio::twiml::SipTarget::new(self.twilio.openai_sip_uri.trim()).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "twilio.voice_mode = \"sip\" needs twilio.openai_sip_uri, a sip: URI without \
                 headers such as sip:proj_XXXX@sip.api.openai.com;transport=tls (got {:?})",
                self.twilio.openai_sip_uri
            )));
        }
        if self.hubspot.ticket_pipeline.is_some() && self.hubspot.ticket_stage.is_none() {
            return Err(ConfigError::Invalid(
                "hubspot.ticket_pipeline needs hubspot.ticket_stage (a stage id belongs to one pipeline)"
                    .into(),
            ));
        }
        if self.tools.default_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "tools.default_timeout_ms must be at least 1".into(),
            ));
        }
        if !["sqlite", "dynamodb"].contains(&self.store.backend.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "store.backend = {:?}: supported backends are \"sqlite\" and \"dynamodb\"",
                self.store.backend
            )));
        }
        let cluster = &self.cluster;
        if cluster.lease_renew_interval_ms == 0
            || cluster.takeover_scan_interval_ms == 0
            || cluster.lease_renew_interval_ms >= cluster.lease_ttl_ms
        {
            return Err(ConfigError::Invalid(format!(
                "cluster: need 0 < lease_renew_interval_ms ({}) < lease_ttl_ms ({}) and \
                 takeover_scan_interval_ms ({}) > 0",
                cluster.lease_renew_interval_ms,
                cluster.lease_ttl_ms,
                cluster.takeover_scan_interval_ms
            )));
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        let ddb = &self.store.dynamodb;
        let prefix_ok = !ddb.table_prefix.is_empty()
            && ddb.table_prefix.len() <= 200
            && ddb
                .table_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !prefix_ok {
            return Err(ConfigError::Invalid(format!(
                "store.dynamodb.table_prefix = {:?}: use 1 to 200 letters, digits, '_', '-' or '.'",
                ddb.table_prefix
            )));
        }
        if ddb.region.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "store.dynamodb.region is empty: remove it or name a region".into(),
            ));
        }
        if let Some(url) = &ddb.endpoint_url {
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                ConfigError::Invalid(format!("store.dynamodb.endpoint_url = {url:?}: {e}"))
            })?;
            if !["http", "https"].contains(&parsed.scheme()) {
                return Err(ConfigError::Invalid(format!(
                    "store.dynamodb.endpoint_url = {url:?}: scheme must be http or https"
                )));
            }
        }
        Ok(())
    }
}

/// The `VOXMACHINA_<SECTION>__<KEY>` variables of `env` (prefix `VOXMACHINA_`, at least one `__`);
/// everything else in the environment is ignored.
fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> config::Map<String, String> {
    env.into_iter()
        .filter(|(k, _)| k.starts_with("VOXMACHINA_") && k.contains("__"))
        .collect()
}

/// Smallest number of digits accepted in a configured E.164 number
/// ([`crate::sip::E164::MIN_DIALABLE_DIGITS`]).
pub const E164_MIN_DIGITS: usize = crate::sip::E164::MIN_DIALABLE_DIGITS;

/// Checks that `value` (the configuration key `key`) is an E.164 number: `+`, then 8 to 15
/// digits, the first not `0` ([`crate::sip::E164::parse`] plus [`E164_MIN_DIGITS`]).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key, the value and the expected form.
pub fn check_e164(key: &str, value: &str) -> Result<(), ConfigError> {
    // `E164::parse` accepted `+` and ASCII digits only, so the digit count is the length - 1.
    let ok = crate::sip::E164::parse(value).is_ok_and(|n| n.as_str().len() > E164_MIN_DIGITS);
    if ok {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{key} = {value:?}: expected an E.164 number, '+' then {E164_MIN_DIGITS} to 15 digits \
         (e.g. +14155550123)"
    )))
}

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call only where the value is sent or used as a key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Secrets the controller needs, never read from the TOML file.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// `OPENAI_API_KEY`: bearer key for call control and the sideband (same project as the webhook).
    pub openai_api_key: Secret,
    /// `OPENAI_WEBHOOK_SECRET`: the endpoint's `whsec_...` signing secret.
    pub webhook_secret: Secret,
    /// `VOXMACHINA_ADMIN_TOKEN`: bearer token for `/v1/...`; the admin API is off when unset.
    pub admin_token: Option<Secret>,
    /// `TWILIO_AUTH_TOKEN`: signs Twilio webhooks and authenticates REST calls.
    pub twilio_auth_token: Option<Secret>,
    /// `TWILIO_WEBHOOK_SHARED_KEY`: the secret of the Twilio SharedKey that signs webhooks with
    /// HMAC-SHA256 when a Webhook Rule applies one (requests carrying
    /// `X-Twilio-Webhooks-Signature-Settings`, see [`crate::twilio::signature`]). Unset: such
    /// requests are refused; set but blank: start-up error.
    pub twilio_webhook_shared_key: Option<Secret>,
    /// `HUBSPOT_TOKEN`: HubSpot private-app token.
    pub hubspot_token: Option<Secret>,
}

impl Secrets {
    /// Reads secrets from `$CREDENTIALS_DIRECTORY/<file>` first, then the environment.
    ///
    /// Secrets fail closed: a credential file or variable that is set but empty or only
    /// whitespace (and an `OPENAI_WEBHOOK_SECRET` of `whsec_` with nothing after it) is an error
    /// naming the secret, never "unset" (which would turn the admin API off) and never an empty
    /// HMAC key.
    ///
    /// # Errors
    /// [`ConfigError::MissingSecret`] for a missing OpenAI key or webhook secret,
    /// [`ConfigError::EmptySecret`] for an empty or whitespace-only value,
    /// [`ConfigError::CredentialFile`] when a credential file exists but cannot be read.
    pub fn from_env() -> Result<Self, ConfigError> {
        let lookup = |env: &'static str, file: &'static str| {
            Ok::<_, ConfigError>(find_secret(env, file)?.map(|(secret, _)| secret))
        };
        let required = |name, env, file| {
            lookup(env, file)?.ok_or(ConfigError::MissingSecret { name, env, file })
        };
        let webhook_secret = required(
            "OpenAI webhook secret",
            "OPENAI_WEBHOOK_SECRET",
            "openai_webhook_secret",
        )?;
        if webhook_secret
            .expose()
            .strip_prefix("whsec_")
            .is_some_and(|rest| rest.trim().is_empty())
        {
            return Err(ConfigError::EmptySecret {
                name: "OPENAI_WEBHOOK_SECRET".into(),
                origin: "a whsec_ prefix with no key after it".into(),
            });
        }
        Ok(Self {
            openai_api_key: required("OpenAI API key", "OPENAI_API_KEY", "openai_api_key")?,
            webhook_secret,
            admin_token: lookup("VOXMACHINA_ADMIN_TOKEN", "admin_token")?,
            twilio_auth_token: lookup("TWILIO_AUTH_TOKEN", "twilio_auth_token")?,
            twilio_webhook_shared_key: lookup(
                "TWILIO_WEBHOOK_SHARED_KEY",
                "twilio_webhook_shared_key",
            )?,
            hubspot_token: lookup("HUBSPOT_TOKEN", "hubspot_token")?,
        })
    }

    /// Refuses secrets that are empty or only whitespace (for values built in code rather than
    /// read by [`Secrets::from_env`], e.g. by tests or `voxmachina-demo`), and an
    /// `OPENAI_WEBHOOK_SECRET` of `whsec_` with nothing after it.
    ///
    /// # Errors
    /// [`ConfigError::EmptySecret`] naming the first blank secret.
    pub fn check_not_blank(&self) -> Result<(), ConfigError> {
        let blank = |name: &str, s: Option<&Secret>| match s {
            Some(s) if s.expose().trim().is_empty() => Err(ConfigError::EmptySecret {
                name: name.to_string(),
                origin: "the secrets given to the server".into(),
            }),
            _ => Ok(()),
        };
        let whsec_rest = self.webhook_secret.expose().strip_prefix("whsec_");
        blank("OPENAI_API_KEY", Some(&self.openai_api_key))?;
        blank("OPENAI_WEBHOOK_SECRET", Some(&self.webhook_secret))?;
        blank(
            "OPENAI_WEBHOOK_SECRET",
            whsec_rest.map(Secret::new).as_ref(),
        )?;
        blank("VOXMACHINA_ADMIN_TOKEN", self.admin_token.as_ref())?;
        blank("TWILIO_AUTH_TOKEN", self.twilio_auth_token.as_ref())?;
        blank("HUBSPOT_TOKEN", self.hubspot_token.as_ref())
    }

    /// A named secret for tools and integrations: `$CREDENTIALS_DIRECTORY/<name>` first, then
    /// the environment variable `VOXMACHINA_SECRET_<NAME>` (upper case, `-`/`.` as `_`).
    /// `name` must be 1–64 characters of `[A-Za-z0-9_.-]`; anything else is `None`.
    ///
    /// # Errors
    /// [`ConfigError::CredentialFile`] when the file exists but cannot be read,
    /// [`ConfigError::EmptySecret`] when the file or variable is empty or only whitespace.
    pub fn named(name: &str) -> Result<Option<Secret>, ConfigError> {
        Self::named_in(None, name)
    }

    /// [`Secrets::named`] with `<secrets_dir>/<name>` looked up first (`[tools] secrets_dir`;
    /// `None` or an empty path: not used). Files are read at each call, so a rotated secret is
    /// used without a restart.
    ///
    /// # Errors
    /// As [`Secrets::named`].
    pub fn named_in(secrets_dir: Option<&Path>, name: &str) -> Result<Option<Secret>, ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !name.starts_with('.');
        if !valid {
            return Ok(None);
        }
        if let Some(dir) = secrets_dir.filter(|d| !d.as_os_str().is_empty()) {
            if let Some(s) = read_secret_file(&dir.join(name), name)? {
                return Ok(Some(s));
            }
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            if let Some(s) = read_secret_file(&PathBuf::from(dir).join(name), name)? {
                return Ok(Some(s));
            }
        }
        let var = format!(
            "VOXMACHINA_SECRET_{}",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        read_secret_env(&var, name)
    }
}

/// Reads a secret file: `None` when it does not exist; its content without the trailing line
/// break otherwise.
///
/// # Errors
/// [`ConfigError::CredentialFile`] when it cannot be read, [`ConfigError::EmptySecret`] (naming
/// `name`) when the content is empty or only whitespace.
fn read_secret_file(path: &Path, name: &str) -> Result<Option<Secret>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(v) => {
            let v = v.trim_end_matches(['\r', '\n']);
            if v.trim().is_empty() {
                return Err(ConfigError::EmptySecret {
                    name: name.to_string(),
                    origin: format!("file {}", path.display()),
                });
            }
            Ok(Some(Secret::new(v)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::CredentialFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a secret from the environment variable `var`: `None` when unset.
///
/// # Errors
/// [`ConfigError::EmptySecret`] (naming `name`) when it is set but empty or only whitespace,
/// [`ConfigError::Invalid`] when it is not UTF-8.
fn read_secret_env(var: &str, name: &str) -> Result<Option<Secret>, ConfigError> {
    match std::env::var(var) {
        Ok(v) if v.trim().is_empty() => Err(ConfigError::EmptySecret {
            name: name.to_string(),
            origin: format!("environment variable {var}"),
        }),
        Ok(v) => Ok(Some(Secret::new(v))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::Invalid(format!(
            "secret {name}: environment variable {var} is not UTF-8"
        ))),
    }
}

/// Every secret of [`Secrets`] as `(environment variable, credential file name)`, for
/// [`explain::secrets`]. A new field of [`Secrets`] belongs here too.
pub const SECRET_NAMES: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "openai_api_key"),
    ("OPENAI_WEBHOOK_SECRET", "openai_webhook_secret"),
    ("VOXMACHINA_ADMIN_TOKEN", "admin_token"),
    ("TWILIO_AUTH_TOKEN", "twilio_auth_token"),
    ("TWILIO_WEBHOOK_SHARED_KEY", "twilio_webhook_shared_key"),
    ("HUBSPOT_TOKEN", "hubspot_token"),
];

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `$CREDENTIALS_DIRECTORY/<file>` (this path).
    Credential(PathBuf),
    /// The environment variable.
    Env,
}

/// A secret from `$CREDENTIALS_DIRECTORY/<file>` (trailing CR/LF removed) first, then the
/// environment variable `env`, with where it was found; `None` when neither is set.
///
/// # Errors
/// [`ConfigError::CredentialFile`] when the file exists but cannot be read;
/// [`ConfigError::EmptySecret`] (naming `env`) when either is set but empty or only whitespace.
fn find_secret(env: &str, file: &str) -> Result<Option<(Secret, SecretSource)>, ConfigError> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = PathBuf::from(dir).join(file);
        if let Some(s) = read_secret_file(&path, env)? {
            return Ok(Some((s, SecretSource::Credential(path))));
        }
    }
    Ok(read_secret_env(env, env)?.map(|s| (s, SecretSource::Env)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            "[openai]\nbase_url = \"http://127.0.0.1:1/v1\"\n[webhook]\ntolerance_secs = 60\n",
        )
        .unwrap();
        let cfg = Config::load_with_env(
            Some(&path),
            [
                (
                    "VOXMACHINA_SERVER__LISTEN".to_string(),
                    "127.0.0.1:0".to_string(),
                ),
                (
                    "VOXMACHINA_WEBHOOK__TOLERANCE_SECS".to_string(),
                    "30".to_string(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.listen.port(), 0);
        assert_eq!(cfg.webhook.tolerance_secs, 30, "env beats file");
        assert_eq!(
            cfg.openai.base_url, "http://127.0.0.1:1/v1",
            "file beats default"
        );
        assert_eq!(cfg.webhook.dedupe_ttl_hours, 72, "default kept");
    }

    #[test]
    fn rejects_bad_urls() {
        let err = Config::load_with_env(
            None,
            [(
                "VOXMACHINA_OPENAI__SIDEBAND_URL".to_string(),
                "http://x".to_string(),
            )],
        )
        .unwrap_err();
        assert!(err.to_string().contains("openai.sideband_url"), "{err}");
    }

    #[test]
    fn store_dynamodb_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            "[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\ntable_prefix = \"vm-prod\"\n\
             region = \"eu-west-1\"\n",
        )
        .unwrap();
        let cfg = Config::load_with_env(
            Some(&path),
            [(
                "VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL".to_string(),
                "http://127.0.0.1:8000".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(cfg.store.backend, "dynamodb");
        assert_eq!(
            cfg.store.dynamodb,
            DynamoDbConfig {
                table_prefix: "vm-prod".into(),
                region: Some("eu-west-1".into()),
                endpoint_url: Some("http://127.0.0.1:8000".into()),
            }
        );
        let defaults = Config::load_with_env(None, []).unwrap();
        assert_eq!(defaults.store.backend, "sqlite");
        assert_eq!(defaults.store.dynamodb, DynamoDbConfig::default());
        assert_eq!(defaults.store.dynamodb.table_prefix, "voxmachina");
    }

    #[test]
    fn store_rejects_unknown_backend_and_bad_dynamodb_keys() {
        for (key, value, needle) in [
            ("VOXMACHINA_STORE__BACKEND", "postgres", "store.backend"),
            (
                "VOXMACHINA_STORE__DYNAMODB__TABLE_PREFIX",
                "bad prefix!",
                "table_prefix",
            ),
            (
                "VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL",
                "ftp://127.0.0.1",
                "endpoint_url",
            ),
            (
                "VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL",
                "not a url",
                "endpoint_url",
            ),
        ] {
            let err =
                Config::load_with_env(None, [(key.to_string(), value.to_string())]).unwrap_err();
            assert!(err.to_string().contains(needle), "{key}={value}: {err}");
        }
    }

    #[test]
    fn cluster_defaults_env_overrides_and_validation() {
        let cfg = Config::load_with_env(None, []).unwrap();
        assert_eq!(cfg.cluster.lease_ttl(), Duration::from_secs(15));
        assert_eq!(cfg.cluster.lease_renew_interval(), Duration::from_secs(5));
        assert_eq!(cfg.cluster.takeover_scan_interval(), Duration::from_secs(5));
        assert!(
            !cfg.cluster.instance_id().is_empty(),
            "defaults to the host name"
        );
        let env = |pairs: &[(&str, &str)]| {
            Config::load_with_env(
                None,
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let cfg = env(&[
            ("VOXMACHINA_CLUSTER__INSTANCE_ID", " vm-b "),
            ("VOXMACHINA_CLUSTER__LEASE_TTL_MS", "1500"),
            ("VOXMACHINA_CLUSTER__LEASE_RENEW_INTERVAL_MS", "300"),
            ("VOXMACHINA_CLUSTER__TAKEOVER_SCAN_INTERVAL_MS", "200"),
        ])
        .unwrap();
        assert_eq!(cfg.cluster.instance_id(), "vm-b");
        assert_eq!(cfg.cluster.lease_ttl(), Duration::from_millis(1500));
        for bad in [
            &[("VOXMACHINA_CLUSTER__LEASE_RENEW_INTERVAL_MS", "15000")][..],
            &[("VOXMACHINA_CLUSTER__LEASE_RENEW_INTERVAL_MS", "0")][..],
            &[("VOXMACHINA_CLUSTER__TAKEOVER_SCAN_INTERVAL_MS", "0")][..],
        ] {
            let err = env(bad).unwrap_err();
            assert!(err.to_string().contains("lease_ttl_ms"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn retention_defaults_to_thirty_days_and_zero_turns_it_off() {
        let cfg = Config::load_with_env(None, []).unwrap();
        assert_eq!(cfg.retention.days, 30);
        assert_eq!(cfg.retention.period(), Some(chrono::Duration::days(30)));
        let off = Config::load_with_env(
            None,
            [("VOXMACHINA_RETENTION__DAYS".to_string(), "0".to_string())],
        )
        .unwrap();
        assert_eq!(off.retention.period(), None);
        let huge = RetentionConfig { days: u64::MAX };
        assert_eq!(
            huge.period(),
            None,
            "out of range is treated as off, not a panic"
        );
    }

    #[test]
    fn tools_after_call_and_pricing_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            "[tools]\nfiller_after_ms = 800\nsecrets_dir = \"/etc/vm/secrets\"\n\
             [after_call]\nsummary = \"transcript\"\n\
             [pricing]\ncurrency = \"EUR\"\n[[pricing.models]]\nmodel = \"gpt-realtime-2.1\"\n\
             audio_input = 30.0\ntext_input = 4.0\naudio_output = 60.0\ntext_output = 15.0\n",
        )
        .unwrap();
        let cfg = Config::load_with_env(Some(&path), Vec::new()).unwrap();
        assert_eq!(cfg.tools.filler_after_ms, 800);
        assert_eq!(cfg.tools.default_timeout_ms, 5_000, "default kept");
        assert_eq!(cfg.tools.secrets_dir, PathBuf::from("/etc/vm/secrets"));
        assert_eq!(cfg.after_call.summary, SummaryMode::Transcript);
        assert_eq!(cfg.pricing.currency, "EUR");
        let p = cfg.pricing.for_model("gpt-realtime-2.1").unwrap();
        assert_eq!((p.audio_input, p.cached_audio_input), (30.0, None));
        assert!(
            cfg.pricing.for_model("gpt-realtime").is_none(),
            "the table replaces the defaults"
        );
        assert!(
            Config::default()
                .pricing
                .for_model("gpt-realtime")
                .is_some()
        );

        std::fs::write(
            &path,
            "[[pricing.models]]\nmodel = \"m\"\naudio_input = -1.0\ntext_input = 1.0\naudio_output = 1.0\ntext_output = 1.0\n",
        )
        .unwrap();
        let err = Config::load_with_env(Some(&path), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("pricing.models"), "{err}");
    }

    fn env_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_values_take_the_type_of_their_key() {
        let cfg = Config::load_with_env(
            None,
            env_pairs(&[
                ("VOXMACHINA_TWILIO__FROM_NUMBER", "+18005550111"),
                ("VOXMACHINA_TWILIO__ACCOUNT_SID", "0012345"),
                ("VOXMACHINA_CLUSTER__INSTANCE_ID", "007"),
                ("VOXMACHINA_HUBSPOT__TICKET_PIPELINE", "1e3"),
                ("VOXMACHINA_HUBSPOT__TICKET_STAGE", "true"),
                ("VOXMACHINA_SERVER__SHUTDOWN_GRACE_SECS", "7"),
                ("VOXMACHINA_HUBSPOT__ENABLED", "true"),
                ("VOXMACHINA_WEBHOOK__MAX_BODY_BYTES", "1024"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.twilio.from_number, "+18005550111", "the + is kept");
        assert_eq!(cfg.twilio.account_sid, "0012345", "leading zeros kept");
        assert_eq!(cfg.cluster.instance_id.as_deref(), Some("007"));
        assert_eq!(cfg.hubspot.ticket_pipeline.as_deref(), Some("1e3"));
        assert_eq!(cfg.hubspot.ticket_stage.as_deref(), Some("true"));
        assert_eq!(cfg.server.shutdown_grace_secs, 7, "numbers still parse");
        assert!(cfg.hubspot.enabled, "booleans still parse");
        assert_eq!(cfg.webhook.max_body_bytes, 1024);
        let err = Config::load_with_env(
            None,
            env_pairs(&[("VOXMACHINA_SERVER__SHUTDOWN_GRACE_SECS", "soon")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("server.shutdown_grace_secs"),
            "{err}"
        );
    }

    #[test]
    fn e164_keys_are_checked_from_any_layer() {
        let trunk = "[openai.live_trunk]\nprovider_url = \"sips:t.example.com\"\nusername = \"u\"\n\
                     password_secret = \"pw\"\n";
        for (file, env, key) in [
            (
                String::new(),
                vec![("VOXMACHINA_TWILIO__FROM_NUMBER", "18005550111")],
                "twilio.from_number",
            ),
            (
                "[twilio]\nfrom_number = \"+1800\"\n".to_string(),
                vec![],
                "twilio.from_number",
            ),
            (
                "[twilio]\nfrom_number = \"+1 800 555 0111\"\n".to_string(),
                vec![],
                "twilio.from_number",
            ),
            (
                format!("{trunk}caller_number = \"+018005550111\"\n"),
                vec![],
                "openai.live_trunk.caller_number",
            ),
            (
                format!("{trunk}caller_number = \"+18005550111\"\n"),
                vec![(
                    "VOXMACHINA_OPENAI__LIVE_TRUNK__CALLER_NUMBER",
                    "+1234567890123456",
                )],
                "openai.live_trunk.caller_number",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.toml");
            std::fs::write(&path, &file).unwrap();
            let err = Config::load_with_env(Some(&path), env_pairs(&env)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains("'+' then 8 to 15 digits"),
                "{file} {env:?}: {msg}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(&path, format!("{trunk}caller_number = \"+18005550111\"\n")).unwrap();
        let cfg = Config::load_with_env(
            Some(&path),
            env_pairs(&[("VOXMACHINA_TWILIO__FROM_NUMBER", "+442071838750")]),
        )
        .unwrap();
        assert_eq!(cfg.openai.live_trunk.unwrap().caller_number, "+18005550111");
        assert_eq!(cfg.twilio.from_number, "+442071838750");
    }

    #[test]
    fn http_limits_defaults_env_and_validation() {
        let cfg = Config::load_with_env(None, []).unwrap();
        assert_eq!(cfg.http, HttpLimitsConfig::default());
        let env = |k: &str, v: &str| Config::load_with_env(None, [(k.to_string(), v.to_string())]);
        let cfg = env("VOXMACHINA_HTTP__MAX_CONNECTIONS", "7").unwrap();
        assert_eq!(cfg.http.max_connections, 7);
        for (k, v) in [
            ("VOXMACHINA_HTTP__MAX_CONNECTIONS", "0"),
            ("VOXMACHINA_HTTP__HEADER_READ_TIMEOUT_MS", "0"),
            ("VOXMACHINA_HTTP__BODY_READ_TIMEOUT_MS", "99"),
            ("VOXMACHINA_HTTP__IDLE_TIMEOUT_MS", "3600001"),
        ] {
            let err = env(k, v).unwrap_err().to_string();
            let key = k
                .trim_start_matches("VOXMACHINA_HTTP__")
                .to_ascii_lowercase();
            assert!(err.contains(&format!("http.{key}")), "{k}={v}: {err}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
