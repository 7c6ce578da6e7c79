//! Caller scripts: who calls, what the canned "model" answers, which faults the emulated OpenAI
//! injects, and the caller's turns. Loadable from TOML ([`Script::from_toml_str`],
//! [`Script::load`]) or built in code with the builder methods on [`Script`].
//!
//! TOML format (every table and key is optional; defaults in the field docs):
//!
//! ```toml
//! [call]
//! from = '"Ada Lovelace" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl'
//! to = "<sip:+18005550100@sip.api.openai.com>"
//! headers = [["Diversion", "<sip:+18005550100@example.com>;reason=unconditional"]]
//! media_security = "srtp"        # "rtp" | "srtp" | any string; "" omits the field
//!
//! [agent]
//! greeting = "Hello, thanks for calling. How can I help?"
//! replies = ["We're open nine to five, Monday to Friday."]
//! auto_reply = true
//! turn_gap_ms = 50
//! greeting_wait_ms = 1000
//! tool_timeout_ms = 5000
//! summary = '{"intent": "...", "outcome": "...", "key_facts": []}'  # out-of-band text answer
//! audio_chunk_ms = 100           # model sessions: agent audio per response.output_audio.delta
//! listen_timeout_ms = 10000      # model sessions: how long a caller turn waits for speech
//!
//! [faults]
//! accept_statuses = [503]
//! accept_delay_ms = 0
//! refer = ["transfer"]           # "transfer" | "ignore" | an HTTP status such as 500
//!
//! [[turn]]
//! caller = "Hi, what are your opening hours?"
//! [[turn]]
//! wait_ms = 200
//! [[turn]]
//! dtmf = "0"
//! [[turn]]
//! tool = "transfer_to_human"
//! arguments = { reason = "caller asked" }
//! [[turn]]
//! drop = true
//! [[turn]]
//! hangup = true
//! ```

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The reply the canned "model" gives once [`AgentSpec::replies`] has run out.
pub const FALLBACK_REPLY: &str = "Is there anything else I can help with?";

/// The greeting used when a script does not set [`AgentSpec::greeting`].
pub const DEFAULT_GREETING: &str = "Hello, thanks for calling. How can I help you today?";

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("reading script {path}: {source}")]
    Io {
        /// The path given to [`Script::load`].
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not match the script schema.
    #[error("parsing script: {0}")]
    Toml(#[from] toml::de::Error),
    /// The TOML parsed but describes an impossible script (e.g. a turn with two kinds).
    #[error("invalid script: {0}")]
    Invalid(String),
}

/// One scripted call: the SIP INVITE facts, the canned model, the injected faults and the
/// caller's turns, played in order on the call's sideband.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// `[call]`: what the incoming-call webhook reports.
    pub call: CallSpec,
    /// `[agent]`: how the emulated model speaks.
    pub agent: AgentSpec,
    /// `[faults]`: failures the emulated REST API injects.
    pub faults: Faults,
    /// `[[turn]]`: the caller's actions, in order.
    pub turns: Vec<Turn>,
}

/// `[call]`: the SIP facts reported in `realtime.call.incoming` (OpenAPI
/// `WebhookRealtimeCallIncoming`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallSpec {
    /// The `From` SIP header value. Default `"Test Caller" <sip:+14155550123@pstn.example.com>;tag=emu`.
    pub from: String,
    /// The `To` SIP header value. Default `<sip:+18005550100@sip.api.openai.com>`.
    pub to: String,
    /// Extra SIP headers `(name, value)`, appended after `From`, `To` and `Call-ID` in order.
    pub headers: Vec<(String, String)>,
    /// `data.sip_media_security`; `None` omits the field (as OpenAI does when unknown).
    /// Default `Some("srtp")`; in TOML an empty string means `None`.
    pub media_security: Option<String>,
}

/// `[agent]`: the canned "model" behind the sideband.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// What the agent says for the greeting `response.create` (the first one on the first
    /// connection, before any turn) when its instructions carry no quoted line.
    /// Default [`DEFAULT_GREETING`]. Emulator-specific.
    pub greeting: String,
    /// Canned replies, used in order by responses that have no quoted line to say; after they
    /// run out the agent says [`FALLBACK_REPLY`].
    pub replies: Vec<String>,
    /// After each caller turn the model answers on its own, like server VAD with
    /// `create_response: true`. It also requires the session not to disable it (see
    /// [`crate`] docs). Default `true`.
    pub auto_reply: bool,
    /// Pause between turns, milliseconds. Default 50.
    pub turn_gap_ms: u64,
    /// On the first sideband connection, how long to wait for the greeting `response.create`
    /// before starting the turns, milliseconds. Default 1000.
    pub greeting_wait_ms: u64,
    /// How long a tool turn waits for the matching `function_call_output`, and then for the
    /// following `response.create`, milliseconds each. Default 5000.
    pub tool_timeout_ms: u64,
    /// What the model answers to an out-of-band text response (`conversation: "none"` with
    /// `output_modalities: ["text"]`, e.g. the controller's call-summary request). `None`: a
    /// fixed non-JSON refusal, [`NO_SUMMARY_TEXT`]. Emulator-specific.
    pub summary: Option<String>,
    /// Model sessions only: milliseconds of agent audio per `response.output_audio.delta`.
    /// Default 100.
    pub audio_chunk_ms: u64,
    /// Model sessions only: how long a caller turn waits for the VAD to hear an utterance in the
    /// appended audio before moving on without it, milliseconds. Default 10 000.
    pub listen_timeout_ms: u64,
}

/// The out-of-band text answer when the script sets no [`AgentSpec::summary`].
pub const NO_SUMMARY_TEXT: &str = "I am sorry, I cannot summarise this call.";

/// `[faults]`: what the emulated call-control API does wrong.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// HTTP statuses `/accept` returns before succeeding, each used once, in order. A `404`
    /// means "the caller already hung up": that accept and every later one returns 404 and the
    /// call becomes [`super::EmuCallStatus::Missed`]. A 2xx entry is a normal accept.
    pub accept_statuses: Vec<u16>,
    /// Delay before every `/accept` answers, milliseconds.
    pub accept_delay_ms: u64,
    /// What each `/refer` does, in order; the last entry repeats. Empty means always
    /// [`ReferFault::Transfer`].
    pub refer: Vec<ReferFault>,
}

/// What one `/refer` request does (OpenAPI `RealtimeCallReferRequest`; OpenAI developer forum
/// reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferFault {
    /// 200, then ~100 ms later the sideband closes with a close frame (1000) and the call is
    /// [`super::EmuCallStatus::Transferred`].
    Transfer,
    /// 200 and nothing else happens: the silent failure of OpenAI developer forum reports.
    Ignore,
    /// That HTTP status with an OpenAI error body; the call is unchanged.
    Status(u16),
}

/// One caller action. Turns run in order on the call's driving sideband connection, with
/// [`AgentSpec::turn_gap_ms`] between them. On a Realtime model session (the Twilio media path)
/// a `Caller` turn instead waits for the VAD to hear an utterance in the appended audio and
/// transcribes it as `text`; `Dtmf` turns do nothing there (keys travel over Twilio).
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The caller says `text`: speech started/stopped, buffer committed, transcription
    /// completed; then (if auto reply applies) the agent answers.
    Caller {
        /// What the caller says.
        text: String,
    },
    /// The caller presses keys: one `input_audio_buffer.dtmf_event_received` per character
    /// (`0`-`9`, `*`, `#`, `A`-`D`).
    Dtmf {
        /// The keys, e.g. `"0"` or `"12#"`.
        key: String,
    },
    /// The model calls a function tool, then waits for the controller's
    /// `function_call_output` and its `response.create`.
    Tool {
        /// The function name.
        name: String,
        /// The arguments object; sent as a JSON string.
        arguments: Value,
    },
    /// Nothing happens for `ms` milliseconds.
    Wait {
        /// Milliseconds.
        ms: u64,
    },
    /// The server drops the TCP connection without a close frame while the call stays live;
    /// the next sideband connection resumes at the following turn.
    Drop,
    /// The caller hangs up: the TCP connection drops without a close frame (OpenAI developer forum
    /// reports) and the call is over.
    Hangup,
}

impl Default for CallSpec {
    fn default() -> Self {
        Self {
            from: r#""Test Caller" <sip:+14155550123@pstn.example.com>;tag=emu"#.to_string(),
            to: "<sip:+18005550100@sip.api.openai.com>".to_string(),
            headers: Vec::new(),
            media_security: Some("srtp".to_string()),
        }
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            greeting: DEFAULT_GREETING.to_string(),
            replies: Vec::new(),
            auto_reply: true,
            turn_gap_ms: 50,
            greeting_wait_ms: 1000,
            tool_timeout_ms: 5000,
            summary: None,
            audio_chunk_ms: 100,
            listen_timeout_ms: 10_000,
        }
    }
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// An empty script with every default: no turns, no faults, auto reply on.
    pub fn new() -> Self {
        Self {
            call: CallSpec::default(),
            agent: AgentSpec::default(),
            faults: Faults::default(),
            turns: Vec::new(),
        }
    }

    /// Parses a TOML script (format in the [module docs](self)).
    ///
    /// # Errors
    /// [`ScriptError::Toml`] for bad TOML or unknown keys, [`ScriptError::Invalid`] for a turn
    /// with no or several kinds, a bad DTMF key or a refer fault that is neither a known word
    /// nor an HTTP status.
    pub fn from_toml_str(text: &str) -> Result<Self, ScriptError> {
        let raw: RawScript = toml::from_str(text)?;
        raw.into_script()
    }

    /// Reads and parses a TOML script file.
    ///
    /// # Errors
    /// [`ScriptError::Io`] when the file cannot be read, otherwise as [`Script::from_toml_str`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ScriptError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Sets the `From` header value.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.call.from = from.into();
        self
    }

    /// Sets the `To` header value.
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.call.to = to.into();
        self
    }

    /// Appends an extra SIP header (after `From`, `To`, `Call-ID`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.call.headers.push((name.into(), value.into()));
        self
    }

    /// Sets `sip_media_security`; `None` omits it from the webhook.
    pub fn media_security(mut self, value: Option<&str>) -> Self {
        self.call.media_security = value.map(str::to_string);
        self
    }

    /// Sets the greeting line.
    pub fn greeting(mut self, text: impl Into<String>) -> Self {
        self.agent.greeting = text.into();
        self
    }

    /// Appends a canned agent reply.
    pub fn reply(mut self, text: impl Into<String>) -> Self {
        self.agent.replies.push(text.into());
        self
    }

    /// Turns the model's automatic answer after caller turns on or off.
    pub fn auto_reply(mut self, on: bool) -> Self {
        self.agent.auto_reply = on;
        self
    }

    /// Sets the pause between turns, milliseconds.
    pub fn turn_gap_ms(mut self, ms: u64) -> Self {
        self.agent.turn_gap_ms = ms;
        self
    }

    /// Sets how long the first connection waits for the greeting `response.create`, ms.
    pub fn greeting_wait_ms(mut self, ms: u64) -> Self {
        self.agent.greeting_wait_ms = ms;
        self
    }

    /// Model sessions: sets the agent audio per delta, milliseconds (at least 1).
    pub fn audio_chunk_ms(mut self, ms: u64) -> Self {
        self.agent.audio_chunk_ms = ms.max(1);
        self
    }

    /// Model sessions: sets how long a caller turn waits for speech, milliseconds.
    pub fn listen_timeout_ms(mut self, ms: u64) -> Self {
        self.agent.listen_timeout_ms = ms;
        self
    }

    /// Sets how long a tool turn waits for the output and for the follow-up response, ms.
    pub fn tool_timeout_ms(mut self, ms: u64) -> Self {
        self.agent.tool_timeout_ms = ms;
        self
    }

    /// Sets the text answered to out-of-band text responses (see [`AgentSpec::summary`]).
    pub fn summary(mut self, text: impl Into<String>) -> Self {
        self.agent.summary = Some(text.into());
        self
    }

    /// Sets the statuses `/accept` returns before succeeding (see [`Faults::accept_statuses`]).
    pub fn accept_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.faults.accept_statuses = statuses.into_iter().collect();
        self
    }

    /// Sets the delay before every `/accept` answers, milliseconds.
    pub fn accept_delay_ms(mut self, ms: u64) -> Self {
        self.faults.accept_delay_ms = ms;
        self
    }

    /// Sets what successive `/refer` requests do (see [`Faults::refer`]).
    pub fn refer_faults(mut self, faults: impl IntoIterator<Item = ReferFault>) -> Self {
        self.faults.refer = faults.into_iter().collect();
        self
    }

    /// Appends a caller utterance turn.
    pub fn caller(mut self, text: impl Into<String>) -> Self {
        self.turns.push(Turn::Caller { text: text.into() });
        self
    }

    /// Appends a DTMF turn (one event per character).
    pub fn dtmf(mut self, keys: impl Into<String>) -> Self {
        self.turns.push(Turn::Dtmf { key: keys.into() });
        self
    }

    /// Appends a function-call turn; `arguments` should be a JSON object.
    pub fn tool(mut self, name: impl Into<String>, arguments: Value) -> Self {
        self.turns.push(Turn::Tool {
            name: name.into(),
            arguments,
        });
        self
    }

    /// Appends a pause turn of `ms` milliseconds.
    pub fn wait_ms(mut self, ms: u64) -> Self {
        self.turns.push(Turn::Wait { ms });
        self
    }

    /// Appends a connection-drop turn (no close frame; the call stays live).
    pub fn drop_connection(mut self) -> Self {
        self.turns.push(Turn::Drop);
        self
    }

    /// Appends a caller-hangup turn (no close frame; the call ends).
    pub fn hangup(mut self) -> Self {
        self.turns.push(Turn::Hangup);
        self
    }

    /// Appends any turn.
    pub fn turn(mut self, turn: Turn) -> Self {
        self.turns.push(turn);
        self
    }
}

/// Whether `c` is a DTMF key (`0`-`9`, `*`, `#`, `A`-`D`; openai-python
/// `types/live/server_event.py` lists the alphabet).
pub(crate) fn is_dtmf_key(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A' | 'B' | 'C' | 'D')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    #[serde(default)]
    call: RawCall,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    faults: RawFaults,
    #[serde(default, rename = "turn")]
    turns: Vec<RawTurn>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCall {
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    media_security: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    greeting: Option<String>,
    #[serde(default)]
    replies: Vec<String>,
    auto_reply: Option<bool>,
    turn_gap_ms: Option<u64>,
    greeting_wait_ms: Option<u64>,
    tool_timeout_ms: Option<u64>,
    summary: Option<String>,
    audio_chunk_ms: Option<u64>,
    listen_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    accept_statuses: Vec<u16>,
    #[serde(default)]
    accept_delay_ms: u64,
    #[serde(default)]
    refer: Vec<RawReferFault>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawReferFault {
    Status(u16),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    caller: Option<String>,
    dtmf: Option<String>,
    tool: Option<String>,
    arguments: Option<Value>,
    wait_ms: Option<u64>,
    #[serde(default)]
    drop: bool,
    #[serde(default)]
    hangup: bool,
}

impl RawScript {
    fn into_script(self) -> Result<Script, ScriptError> {
        let defaults = Script::new();
        let call = CallSpec {
            from: self.call.from.unwrap_or(defaults.call.from),
            to: self.call.to.unwrap_or(defaults.call.to),
            headers: self.call.headers,
            media_security: match self.call.media_security {
                None => defaults.call.media_security,
                Some(s) if s.is_empty() => None,
                Some(s) => Some(s),
            },
        };
        let agent = AgentSpec {
            greeting: self.agent.greeting.unwrap_or(defaults.agent.greeting),
            replies: self.agent.replies,
            auto_reply: self.agent.auto_reply.unwrap_or(defaults.agent.auto_reply),
            turn_gap_ms: self.agent.turn_gap_ms.unwrap_or(defaults.agent.turn_gap_ms),
            greeting_wait_ms: self
                .agent
                .greeting_wait_ms
                .unwrap_or(defaults.agent.greeting_wait_ms),
            tool_timeout_ms: self
                .agent
                .tool_timeout_ms
                .unwrap_or(defaults.agent.tool_timeout_ms),
            summary: self.agent.summary,
            audio_chunk_ms: self
                .agent
                .audio_chunk_ms
                .filter(|ms| *ms > 0)
                .unwrap_or(defaults.agent.audio_chunk_ms),
            listen_timeout_ms: self
                .agent
                .listen_timeout_ms
                .unwrap_or(defaults.agent.listen_timeout_ms),
        };
        let refer = self
            .faults
            .refer
            .into_iter()
            .map(|f| match f {
                RawReferFault::Status(s) if (100..=599).contains(&s) => Ok(ReferFault::Status(s)),
                RawReferFault::Status(s) => Err(ScriptError::Invalid(format!(
                    "refer fault {s} is not an HTTP status"
                ))),
                RawReferFault::Word(w) => match w.as_str() {
                    "transfer" => Ok(ReferFault::Transfer),
                    "ignore" => Ok(ReferFault::Ignore),
                    other => other
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .map(ReferFault::Status)
                        .ok_or_else(|| {
                            ScriptError::Invalid(format!(
                                "refer fault {other:?}: expected \"transfer\", \"ignore\" or an HTTP status"
                            ))
                        }),
                },
            })
            .collect::<Result<Vec<_>, _>>()?;
        for s in &self.faults.accept_statuses {
            if !(100..=599).contains(s) {
                return Err(ScriptError::Invalid(format!(
                    "accept status {s} is not an HTTP status"
                )));
            }
        }
        let faults = Faults {
            accept_statuses: self.faults.accept_statuses,
            accept_delay_ms: self.faults.accept_delay_ms,
            refer,
        };
        let turns = self
            .turns
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.into_turn()
                    .map_err(|e| ScriptError::Invalid(format!("turn {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Script {
            call,
            agent,
            faults,
            turns,
        })
    }
}

impl RawTurn {
    fn into_turn(self) -> Result<Turn, String> {
        let mut kinds = Vec::new();
        if let Some(text) = self.caller {
            kinds.push(Turn::Caller { text });
        }
        if let Some(key) = self.dtmf {
            if key.is_empty() || !key.chars().all(is_dtmf_key) {
                return Err(format!(
                    "dtmf {key:?}: expected one or more of 0-9, *, #, A-D"
                ));
            }
            kinds.push(Turn::Dtmf { key });
        }
        if let Some(name) = self.tool {
            let arguments = self
                .arguments
                .unwrap_or_else(|| Value::Object(Default::default()));
            kinds.push(Turn::Tool { name, arguments });
        } else if self.arguments.is_some() {
            return Err("`arguments` without `tool`".to_string());
        }
        if let Some(ms) = self.wait_ms {
            kinds.push(Turn::Wait { ms });
        }
        if self.drop {
            kinds.push(Turn::Drop);
        }
        if self.hangup {
            kinds.push(Turn::Hangup);
        }
        match kinds.len() {
            1 => Ok(kinds.remove(0)),
            0 => Err("expected one of caller, dtmf, tool, wait_ms, drop, hangup".to_string()),
            _ => Err(
                "a turn must have exactly one of caller, dtmf, tool, wait_ms, drop, hangup"
                    .to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_full_format() {
        let s = Script::from_toml_str(
            r#"
[call]
from = '"Ada Lovelace" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl'
to = "<sip:+18005550100@sip.api.openai.com>"
headers = [["Diversion", "<sip:+18005550100@example.com>;reason=unconditional"]]
media_security = "rtp"

[agent]
replies = ["one", "two"]
auto_reply = false
turn_gap_ms = 10

[faults]
accept_statuses = [503]
refer = ["ignore", 500, "transfer"]

[[turn]]
caller = "hi"
[[turn]]
wait_ms = 200
[[turn]]
dtmf = "0#"
[[turn]]
tool = "transfer_to_human"
arguments = { reason = "caller asked" }
[[turn]]
drop = true
[[turn]]
hangup = true
"#,
        )
        .unwrap();
        assert_eq!(s.call.headers.len(), 1);
        assert_eq!(s.call.media_security.as_deref(), Some("rtp"));
        assert_eq!(s.agent.replies, ["one", "two"]);
        assert!(!s.agent.auto_reply);
        assert_eq!(s.agent.turn_gap_ms, 10);
        assert_eq!(s.agent.greeting_wait_ms, 1000);
        assert_eq!(s.faults.accept_statuses, [503]);
        assert_eq!(
            s.faults.refer,
            [
                ReferFault::Ignore,
                ReferFault::Status(500),
                ReferFault::Transfer
            ]
        );
        assert_eq!(
            s.turns,
            [
                Turn::Caller { text: "hi".into() },
                Turn::Wait { ms: 200 },
                Turn::Dtmf { key: "0#".into() },
                Turn::Tool {
                    name: "transfer_to_human".into(),
                    arguments: serde_json::json!({"reason": "caller asked"})
                },
                Turn::Drop,
                Turn::Hangup,
            ]
        );
    }

    #[test]
    fn empty_text_is_the_default_script() {
        assert_eq!(Script::from_toml_str("").unwrap(), Script::new());
    }

    #[test]
    fn empty_media_security_omits_it() {
        let s = Script::from_toml_str("[call]\nmedia_security = \"\"").unwrap();
        assert_eq!(s.call.media_security, None);
    }

    #[test]
    fn rejects_ambiguous_or_bad_turns() {
        for bad in [
            "[[turn]]\ncaller = \"a\"\ndtmf = \"1\"",
            "[[turn]]\n",
            "[[turn]]\ndtmf = \"x\"",
            "[[turn]]\narguments = {}",
            "[faults]\nrefer = [\"maybe\"]",
            "[faults]\naccept_statuses = [42]",
        ] {
            assert!(
                matches!(Script::from_toml_str(bad), Err(ScriptError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Script::from_toml_str("[[turn]]\nshout = \"a\""),
            Err(ScriptError::Toml(_))
        ));
    }
}
