//! A loaded, validated prompt profile and what it decides: selection, admission, the accept body.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::hours::OpenHours;
use crate::escalation::phrases::PhraseMatcher;
use crate::sip::{CallParties, E164, SipHeader, TransferTarget, headers_named};
use crate::tools::ToolSet;

/// Name of the built-in function tool that asks for a human (OpenAPI
/// `RealtimeSessionCreateRequestGA` tool shape).
pub const TOOL_TRANSFER_TO_HUMAN: &str = "transfer_to_human";
/// Name of the built-in function tool that ends the call.
pub const TOOL_END_CALL: &str = "end_call";

/// Default `[session] model`.
pub const DEFAULT_MODEL: &str = "gpt-realtime-2.1";
/// Default `[session] voice`.
pub const DEFAULT_VOICE: &str = "marin";
/// Default `[session] transcription_model`.
pub const DEFAULT_TRANSCRIPTION_MODEL: &str = "gpt-4o-mini-transcribe";
/// Default `max_call_duration_secs`.
pub const DEFAULT_MAX_CALL_DURATION_SECS: u64 = 1800;
/// Default `[escalation] handoff_line`.
pub const DEFAULT_HANDOFF_LINE: &str = "Let me connect you with a colleague now. Please hold.";
/// Default `[escalation.fallback] apology`.
pub const DEFAULT_APOLOGY: &str =
    "I'm sorry, no one can take your call right now. Please try again later. Goodbye.";

/// One prompt profile, loaded from `NAME.toml` plus its Markdown instructions. Immutable once
/// loaded; shared as `Arc<Profile>` by [`super::ProfileSet`].
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique name (`name` key, or the file stem).
    pub name: String,
    /// Free text from `description`.
    pub description: Option<String>,
    /// The `.toml` file it was loaded from.
    pub source: PathBuf,
    /// The Markdown instructions file that was read.
    pub instructions_path: PathBuf,
    /// `default = true`: catches every call no other profile matches.
    pub is_default: bool,
    /// Higher wins when several profiles match.
    pub priority: i32,
    /// `api = "realtime" | "live"` (default `realtime`): which OpenAI API answers this
    /// profile's calls. When a project subscribes to both, the delivery of the other API is
    /// acknowledged and left alone.
    pub api: crate::calls::record::Api,
    /// The session instructions (the Markdown file, surrounding whitespace trimmed).
    pub instructions: String,
    /// Instructions for the first `response.create` after the call starts; `None` = the agent
    /// waits for the caller to speak.
    pub greeting: Option<String>,
    /// After this long the monitor hangs up (`max_call_duration_secs`, default 1800 s).
    pub max_call_duration: Duration,
    /// `[match]`: which calls this profile is for.
    pub match_rules: MatchRules,
    /// `[session]`: the Realtime session configuration sent with `/accept`.
    pub session: SessionSettings,
    /// `[escalation]`: hand-off to a human.
    pub escalation: EscalationSettings,
    /// `[reject]`: when to refuse the call.
    pub reject: RejectRules,
    /// `[[tools]]`: the declared tools (see [`crate::tools`]).
    pub tools: ToolSet,
    /// `tools_base_url`: what `{{base_url}}` stands for in tool urls.
    pub tools_base_url: Option<String>,
    /// `filler_line`: said when a tool runs long (unless the tool sets `filler`); `None` =
    /// `[tools] filler_line`.
    pub filler_line: Option<String>,
    /// `[after_call]`: summary, extraction rules, SMS follow-up.
    pub after_call: AfterCallSettings,
}

/// `[after_call]` of a profile.
#[derive(Debug, Clone)]
pub struct AfterCallSettings {
    /// `summary` (default true): store a call summary (how: `[after_call] summary` in config).
    pub summary: bool,
    /// `[[after_call.extract]]`: values taken from the transcript when the call ends.
    pub extract: Vec<ExtractRule>,
    /// `[after_call.sms]`: a text message to the caller after the call.
    pub sms: Option<SmsSettings>,
}

impl Default for AfterCallSettings {
    fn default() -> Self {
        Self {
            summary: true,
            extract: Vec::new(),
            sms: None,
        }
    }
}

/// `[[after_call.extract]]`: a named value found in the transcript by a regex.
#[derive(Debug, Clone)]
pub struct ExtractRule {
    /// The name the value is stored under (`after_call.extracted.NAME`).
    pub name: String,
    /// The regex; the value is its first capture group, or the whole match when it has none.
    /// The **last** matching line wins (a read-back confirmation comes after the first mention).
    pub regex: regex::Regex,
    /// Whose lines are searched.
    pub from: ExtractFrom,
}

/// Whose transcript lines an [`ExtractRule`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractFrom {
    /// `caller`: the other party's lines.
    Caller,
    /// `agent`: the AI agent's lines.
    Agent,
    /// `any` (default).
    Any,
}

/// `[after_call.sms]`: the follow-up text.
#[derive(Debug, Clone)]
pub struct SmsSettings {
    /// The message; placeholders `{{call.*}}` (values we control), and only with
    /// `allow_transcript_fields` the transcript-derived `{{summary.intent}}`,
    /// `{{summary.outcome}}` and `{{extract.NAME}}`.
    pub template: crate::tools::template::Template,
    /// Extract rule names whose values must exist, or no SMS is sent.
    pub require: Vec<String>,
    /// `allow_transcript_fields = true`: the profile opts in to transcript-derived fields in
    /// the text. Their values are then cleaned
    /// ([`crate::calls::after_call::clean_transcript_field`]: URLs, e-mail addresses and phone
    /// numbers removed, length capped), since what a caller says must never be relayed from
    /// our number as it was said. Default false: such templates do not load.
    pub allow_transcript_fields: bool,
}

/// `[match]`: all kinds that are given must match (AND); within a kind any entry matches (OR).
/// A kind with an empty list counts as not given.
#[derive(Debug, Clone, Default)]
pub struct MatchRules {
    /// Dialed number is one of these (exact E.164).
    pub dialed: Vec<E164>,
    /// Caller number is one of these (exact E.164).
    pub caller: Vec<E164>,
    /// Caller number starts with one of these (`+44`, `+1415`).
    pub caller_prefix: Vec<String>,
    /// Some header rule matches.
    pub sip_header: Vec<HeaderRule>,
}

impl MatchRules {
    /// True when no rule is given (such a profile can only be the default).
    pub fn is_empty(&self) -> bool {
        self.dialed.is_empty()
            && self.caller.is_empty()
            && self.caller_prefix.is_empty()
            && self.sip_header.is_empty()
    }

    /// True when every given kind matches the call. Empty rules match nothing (a profile with
    /// no rules is only reachable as the default).
    pub fn matches(&self, parties: &CallParties, headers: &[SipHeader]) -> bool {
        if self.is_empty() {
            return false;
        }
        let number_in = |list: &[E164], n: &Option<E164>| {
            list.is_empty() || n.as_ref().is_some_and(|n| list.contains(n))
        };
        number_in(&self.dialed, &parties.dialed)
            && number_in(&self.caller, &parties.caller)
            && (self.caller_prefix.is_empty()
                || parties.caller.as_ref().is_some_and(|c| {
                    self.caller_prefix
                        .iter()
                        .any(|p| c.as_str().starts_with(p.as_str()))
                }))
            && (self.sip_header.is_empty() || self.sip_header.iter().any(|r| r.matches(headers)))
    }
}

/// `[[match.sip_header]]`: one header test.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    /// Header name, compared case-insensitively (compact forms too, see [`crate::sip::header`]).
    pub name: String,
    /// The test applied to each value of that header.
    pub test: HeaderTest,
}

/// How a [`HeaderRule`] tests a header value. Values are those of
/// [`crate::sip::headers_named`]: trimmed, list headers split into entries.
#[derive(Debug, Clone)]
pub enum HeaderTest {
    /// The value equals this string exactly (case-sensitive).
    Equals(String),
    /// The value contains this string (case-sensitive).
    Contains(String),
    /// The regex matches somewhere in the value (use `(?i)` for case-insensitive, `^...$` to
    /// anchor; `regex` crate syntax).
    Regex(regex::Regex),
}

impl HeaderRule {
    /// True when any value of the named header passes the test.
    pub fn matches(&self, headers: &[SipHeader]) -> bool {
        headers_named(headers, &self.name).any(|v| match &self.test {
            HeaderTest::Equals(s) => v == s,
            HeaderTest::Contains(s) => v.contains(s.as_str()),
            HeaderTest::Regex(r) => r.is_match(v),
        })
    }
}

/// `[session]`: fields of the Realtime accept body (OpenAPI `RealtimeSessionCreateRequestGA`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// Realtime model, default [`DEFAULT_MODEL`].
    pub model: String,
    /// Output voice, default [`DEFAULT_VOICE`].
    pub voice: String,
    /// Output speed, 0.25..=1.5; `None` leaves OpenAI's default (1.0).
    pub speed: Option<f64>,
    /// Input transcription model (transcription is always on), default
    /// [`DEFAULT_TRANSCRIPTION_MODEL`].
    pub transcription_model: String,
    /// Transcription language hint (ISO-639-1, e.g. `en`).
    pub language: Option<String>,
    /// Input noise reduction.
    pub noise_reduction: Option<NoiseReduction>,
    /// Turn detection, default semantic VAD with eagerness `auto`.
    pub turn_detection: TurnDetection,
    /// Audio format between the Twilio Media Streams bridge and the Realtime session (unused
    /// on the SIP path, where SDP negotiates the codec).
    pub audio: MediaAudio,
    /// `api = "live"` only: the Responses model behind the Live session's tool delegation
    /// (`session.delegation.responses.model`), default
    /// [`crate::openai::live::DEFAULT_DELEGATION_MODEL`].
    pub delegation_model: String,
}

/// `[session] audio`: how the Twilio Media Streams bridge (`crate::bridge`) carries audio to and
/// from the Realtime WebSocket session. Twilio's side is always G.711 μ-law, 8 kHz, mono.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaAudio {
    /// `pcmu` (default): the session uses `audio/pcmu` (μ-law 8 kHz) both ways; Twilio's
    /// payloads pass through untouched, model deltas are only re-framed into 160-byte (20 ms)
    /// frames. Lowest latency and cost.
    #[default]
    Pcmu,
    /// `pcm16`: the session uses `audio/pcm` at 24 kHz; the bridge transcodes with
    /// `crate::media::InboundTranscoder` / `OutboundTranscoder` (1.875 ms filter delay each
    /// way).
    Pcm16,
}

impl MediaAudio {
    /// `"pcmu"` or `"pcm16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pcmu => "pcmu",
            Self::Pcm16 => "pcm16",
        }
    }

    /// The Realtime `audio.input.format` / `audio.output.format` object (OpenAPI
    /// `RealtimeSessionCreateRequestGA`): `{"type":"audio/pcmu"}` or
    /// `{"type":"audio/pcm","rate":24000}`.
    pub fn realtime_format(self) -> Value {
        match self {
            Self::Pcmu => json!({ "type": "audio/pcmu" }),
            Self::Pcm16 => json!({ "type": "audio/pcm", "rate": 24_000 }),
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            model: DEFAULT_MODEL.into(),
            voice: DEFAULT_VOICE.into(),
            speed: None,
            transcription_model: DEFAULT_TRANSCRIPTION_MODEL.into(),
            language: None,
            noise_reduction: None,
            turn_detection: TurnDetection::default(),
            audio: MediaAudio::default(),
            delegation_model: crate::openai::live::DEFAULT_DELEGATION_MODEL.into(),
        }
    }
}

/// `noise_reduction`: `near_field` (handsets, headsets) or `far_field` (speakerphones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReduction {
    /// `near_field`.
    NearField,
    /// `far_field`.
    FarField,
}

impl NoiseReduction {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NearField => "near_field",
            Self::FarField => "far_field",
        }
    }
}

/// Semantic VAD eagerness (`auto` is the API's medium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eagerness {
    /// `low`: lets the caller take their time.
    Low,
    /// `medium`.
    Medium,
    /// `high`: answers quickly.
    High,
    /// `auto` (default).
    #[default]
    Auto,
}

impl Eagerness {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Auto => "auto",
        }
    }
}

/// `[session.turn_detection]` (OpenAPI `RealtimeSessionCreateRequestGA`
/// `audio.input.turn_detection`).
#[derive(Debug, Clone, PartialEq)]
pub enum TurnDetection {
    /// `type = "semantic_vad"`.
    SemanticVad {
        /// How eagerly the model answers.
        eagerness: Eagerness,
    },
    /// `type = "server_vad"`; unset fields keep the API defaults (0.5, 300 ms, 500 ms, none).
    ServerVad {
        /// Activation threshold, 0.0..=1.0.
        threshold: Option<f64>,
        /// Audio kept before speech starts, milliseconds.
        prefix_padding_ms: Option<u32>,
        /// Silence that ends a turn, milliseconds.
        silence_duration_ms: Option<u32>,
        /// Silence after which the model is prompted to respond, milliseconds.
        idle_timeout_ms: Option<u32>,
    },
    /// `type = "none"`: manual turns; sent as JSON `null`.
    None,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection::SemanticVad {
            eagerness: Eagerness::Auto,
        }
    }
}

impl TurnDetection {
    /// The `audio.input.turn_detection` JSON: an object, or `null` for [`TurnDetection::None`].
    /// VAD objects always carry `create_response` and `interrupt_response` = true.
    pub fn to_json(&self) -> Value {
        match self {
            TurnDetection::SemanticVad { eagerness } => json!({
                "type": "semantic_vad",
                "eagerness": eagerness.as_str(),
                "create_response": true,
                "interrupt_response": true,
            }),
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
                idle_timeout_ms,
            } => {
                let mut o = json!({
                    "type": "server_vad",
                    "create_response": true,
                    "interrupt_response": true,
                });
                let m = o.as_object_mut().expect("object literal");
                if let Some(t) = threshold {
                    m.insert("threshold".into(), json!(t));
                }
                if let Some(v) = prefix_padding_ms {
                    m.insert("prefix_padding_ms".into(), json!(v));
                }
                if let Some(v) = silence_duration_ms {
                    m.insert("silence_duration_ms".into(), json!(v));
                }
                if let Some(v) = idle_timeout_ms {
                    m.insert("idle_timeout_ms".into(), json!(v));
                }
                o
            }
            TurnDetection::None => Value::Null,
        }
    }
}

/// `[escalation]`: hand-off to a human by SIP REFER. When the table is absent escalation is
/// disabled; when present, `enabled` defaults to true and `target` is required.
#[derive(Debug, Clone)]
pub struct EscalationSettings {
    /// Whether any trigger may escalate (and whether `transfer_to_human` is offered).
    pub enabled: bool,
    /// The first `Refer-To` target (`Some` whenever `enabled`).
    pub target: Option<TransferTarget>,
    /// What the agent says before the REFER.
    pub handoff_line: String,
    /// Caller phrases that trigger escalation (empty when disabled).
    pub phrases: PhraseMatcher,
    /// DTMF key that triggers escalation: one of `0-9 * # A-D` (RFC 4733 events).
    pub dtmf_key: Option<char>,
    /// Second target tried when the first transfer is not confirmed.
    pub fallback_target: Option<TransferTarget>,
    /// Spoken before hanging up when every target failed.
    pub apology: String,
    /// `action`: plain REFER, or an Amazon Connect hand-over (`connect_refer` or `twilio_dial`, with
    /// `[escalation.connect]`).
    pub action: crate::escalation::Action,
}

impl EscalationSettings {
    /// Escalation switched off: no target, no phrases, default wording.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            target: None,
            handoff_line: DEFAULT_HANDOFF_LINE.into(),
            phrases: PhraseMatcher::default(),
            dtmf_key: None,
            fallback_target: None,
            apology: DEFAULT_APOLOGY.into(),
            action: crate::escalation::Action::Refer,
        }
    }
}

/// `[reject]`: reasons to refuse a call, checked in the order blocklist, hours, capacity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RejectRules {
    /// `[reject.blocklist]`.
    pub blocklist: Option<Blocklist>,
    /// `[reject.hours]`.
    pub hours: Option<OpenHours>,
    /// `[reject.capacity]`.
    pub capacity: Option<CapacityLimit>,
}

/// `[reject.blocklist]`: callers refused outright. Calls without a caller number are not
/// blocked by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocklist {
    /// Exact caller numbers.
    pub numbers: Vec<E164>,
    /// Caller number prefixes, `+` and digits (`+1900`).
    pub prefixes: Vec<String>,
    /// SIP status for `/reject` (default 603 Decline).
    pub status: u16,
}

impl Blocklist {
    /// True when `caller` is listed or starts with a listed prefix.
    pub fn blocks(&self, caller: &E164) -> bool {
        self.numbers.contains(caller)
            || self
                .prefixes
                .iter()
                .any(|p| caller.as_str().starts_with(p.as_str()))
    }
}

/// `[reject.capacity]`: concurrent-call limit for this profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityLimit {
    /// Calls beyond this many live ones are rejected (at least 1).
    pub max_concurrent_calls: usize,
    /// SIP status for `/reject` (default 486 Busy Here).
    pub status: u16,
}

/// The admission decision for an incoming call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accept the call.
    Accept,
    /// Reject it: `POST /reject` with `{"status_code": status}` (OpenAPI
    /// `RealtimeCallRejectRequest`).
    Reject {
        /// SIP final status, 400..=699.
        status: u16,
        /// Which rule fired.
        reason: RejectReason,
    },
}

/// Which reject rule fired; the name is stored as the call's `end_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Outside `[reject.hours]`.
    ClosedHours,
    /// Caller on `[reject.blocklist]`.
    BlockedCaller,
    /// `[reject.capacity]` reached.
    OverCapacity,
}

impl RejectReason {
    /// `"closed_hours"`, `"blocked_caller"` or `"over_capacity"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClosedHours => "closed_hours",
            Self::BlockedCaller => "blocked_caller",
            Self::OverCapacity => "over_capacity",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The built-in function tools (OpenAPI `RealtimeSessionCreateRequestGA` function tool shape):
/// `transfer_to_human` (`reason` string, required) when `escalation_enabled`, and always `end_call`
/// (`reason` string, optional).
pub fn builtin_tools(escalation_enabled: bool) -> Vec<Value> {
    let mut tools = Vec::with_capacity(2);
    if escalation_enabled {
        tools.push(json!({
            "type": "function",
            "name": TOOL_TRANSFER_TO_HUMAN,
            "description": "Transfer the caller to a human colleague. Use it when the caller asks \
                            for a real person, or when you cannot help with their request.",
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {
                        "type": "string",
                        "description": "Short reason for the transfer, for the colleague and the call log."
                    }
                },
                "required": ["reason"]
            }
        }));
    }
    tools.push(json!({
        "type": "function",
        "name": TOOL_END_CALL,
        "description": "End the call. Use it only after the conversation is finished and you have \
                        said goodbye, or when the caller asks to end the call.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {
                    "type": "string",
                    "description": "Short reason for ending the call, for the call log."
                }
            }
        }
    }));
    tools
}

impl Profile {
    /// True when this profile's `[match]` rules are non-empty and all match the call.
    pub fn matches(&self, parties: &CallParties, headers: &[SipHeader]) -> bool {
        self.match_rules.matches(parties, headers)
    }

    /// Checks the reject rules in order blocklist, hours, capacity. `active_calls` = calls
    /// currently live on this profile (not counting this one); the capacity rule rejects when
    /// `active_calls >= max_concurrent_calls`. `now` is converted to the hours' time zone.
    pub fn admission(
        &self,
        parties: &CallParties,
        now: DateTime<Utc>,
        active_calls: usize,
    ) -> Admission {
        if let (Some(bl), Some(caller)) = (&self.reject.blocklist, &parties.caller) {
            if bl.blocks(caller) {
                return Admission::Reject {
                    status: bl.status,
                    reason: RejectReason::BlockedCaller,
                };
            }
        }
        if let Some(hours) = &self.reject.hours {
            if !hours.is_open(now) {
                return Admission::Reject {
                    status: hours.status,
                    reason: RejectReason::ClosedHours,
                };
            }
        }
        if let Some(cap) = &self.reject.capacity {
            if active_calls >= cap.max_concurrent_calls {
                return Admission::Reject {
                    status: cap.status,
                    reason: RejectReason::OverCapacity,
                };
            }
        }
        Admission::Accept
    }

    /// The JSON body for `POST /v1/realtime/calls/{call_id}/accept` (OpenAPI
    /// `RealtimeSessionCreateRequestGA`): `type` "realtime" (always: without it accept can return
    /// 200 and the session dies), `model`, `instructions`, `output_modalities` ["audio"],
    /// `audio.input.transcription` {model, language?} (always, so caller transcripts exist),
    /// `audio.input.turn_detection` (object or `null`), `audio.input.noise_reduction`?,
    /// `audio.output` {voice, speed?}, `tools` ([`builtin_tools`], descriptions overridden by the
    /// profile, then the profile's other `[[tools]]`) and `tool_choice` "auto". No
    /// `audio.*.format`: SIP negotiates the codec in SDP.
    pub fn realtime_session(&self) -> Value {
        let s = &self.session;
        let mut transcription = json!({ "model": s.transcription_model });
        if let Some(lang) = &s.language {
            transcription["language"] = json!(lang);
        }
        let mut input = json!({
            "transcription": transcription,
            "turn_detection": s.turn_detection.to_json(),
        });
        if let Some(nr) = s.noise_reduction {
            input["noise_reduction"] = json!({ "type": nr.as_str() });
        }
        let mut output = json!({ "voice": s.voice });
        if let Some(speed) = s.speed {
            output["speed"] = json!(speed);
        }
        json!({
            "type": "realtime",
            "model": s.model,
            "instructions": self.instructions,
            "output_modalities": ["audio"],
            "audio": { "input": input, "output": output },
            "tools": self.tools.session_tools(builtin_tools(self.escalation.enabled)),
            "tool_choice": "auto",
        })
    }

    /// The GPT-Live session for `POST /live/sessions/{id}/accept` (wrapped in `{"session":...}` by
    /// the client) and outbound creates (OpenAI's voice-sip guide (`?api=live`)): `type` `"live"`,
    /// `model`, `instructions`, `audio.output.voice` (no `audio.format` for SIP) and `delegation`.
    ///
    /// Tools: the only tool-call loop known for Live is Responses delegation (openai-python
    /// `types/live/session_accept_params.py`; the loop itself is **[unverified]**)
    /// (calls arrive in `response.event`, answered with `response.item.create`), limited to
    /// `function` tools, so a profile with tools (declared or built-in) gets
    /// `{"type":"responses","responses":{"model":...,"tools":[...],"tool_choice":"auto"}}`
    /// (`model` is `[session] delegation_model`; the SDK type
    /// `openai.types.live.ResponsesDelegationConfigParam` requires it), where the controller
    /// runs every call; a profile without tools gets `{"type":"client"}`.
    pub fn live_session(&self) -> Value {
        let tools = self
            .tools
            .session_tools(builtin_tools(self.escalation.enabled));
        let delegation = if !tools.is_empty() {
            json!({
                "type": "responses",
                "responses": {
                    "model": self.session.delegation_model,
                    "tools": tools,
                    "tool_choice": "auto",
                },
            })
        } else {
            json!({ "type": "client" })
        };
        json!({
            "type": "live",
            "model": self.session.model,
            "instructions": self.instructions,
            "audio": { "output": { "voice": self.session.voice } },
            "delegation": delegation,
        })
    }
}
