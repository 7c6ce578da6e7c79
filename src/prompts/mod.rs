//! Prompt profiles on disk: match rules, session settings, reject rules and instructions.
//!
//! A directory (`[prompts] dir`, default `prompts/`) holds one `NAME.toml` per profile with its
//! instructions in Markdown beside it (`NAME.md`, or the file named by `instructions`). Every
//! incoming call gets exactly one profile ([`ProfileSet::select`]), which decides whether the call
//! is admitted ([`Profile::admission`]) and what the Realtime session looks like
//! ([`Profile::realtime_session`], the `/accept` body of OpenAPI `RealtimeSessionCreateRequestGA`).
//! The shipped `prompts/default.toml` and `prompts/support.toml` are commented examples.
//!
//! # File format
//!
//! ```toml
//! name = "support"             # optional; defaults to the file stem; unique;
//!                              # 1-64 of A-Z a-z 0-9 - _ .
//! description = "Support line" # optional, free text
//! default = false              # exactly one profile in the directory has default = true:
//!                              # it catches every call no other profile matches
//! priority = 10                # default 0; higher wins when several profiles match;
//!                              # ties -> name order (alphabetically first)
//! instructions = "support.md"  # optional, default "<stem>.md", relative to the directory;
//!                              # must exist and not be blank
//! greeting = "Greet the caller warmly and ask how you can help."
//!                              # optional: instructions for the first response.create;
//!                              # omitted = the agent waits for the caller to speak
//! max_call_duration_secs = 1800  # default 1800 (>= 1); then the monitor hangs up
//!
//! [match]                      # all given kinds must match (AND); within a list any entry (OR)
//! dialed = ["+18005550100"]    # E.164, exact
//! caller = ["+14155550123"]    # E.164, exact
//! caller_prefix = ["+44"]      # '+' and digits
//! [[match.sip_header]]         # name case-insensitive (compact forms too); exactly one of
//! name = "X-Queue"             # equals (exact) / contains (substring) / regex (regex crate,
//! equals = "vip"               # unanchored); tested on every value of the header
//!
//! [session]                    # -> the /accept body (OpenAPI `RealtimeSessionCreateRequestGA`)
//! model = "gpt-realtime-2.1"   # default
//! voice = "marin"              # default
//! speed = 1.0                  # optional, 0.25..=1.5
//! transcription_model = "gpt-4o-mini-transcribe"  # default; transcription is ALWAYS on
//! language = "en"              # optional transcription language hint
//! noise_reduction = "far_field"  # optional: near_field | far_field
//! audio = "pcmu"               # Twilio Media Streams path only: pcmu (default; μ-law passed
//!                              # through) | pcm16 (PCM16 24 kHz, transcoded by the bridge)
//! delegation_model = "gpt-5.4-mini"  # api = "live" only (default shown): the Responses model
//!                              # of the tool delegation, session.delegation.responses.model
//! [session.turn_detection]     # default: semantic_vad, eagerness auto
//! type = "semantic_vad"        # semantic_vad | server_vad | none (manual turns, sent as null)
//! eagerness = "auto"           # semantic_vad only: low | medium | high | auto
//! # server_vad only: threshold (0.0..=1.0), prefix_padding_ms, silence_duration_ms,
//! # idle_timeout_ms
//!
//! [escalation]                 # absent = escalation disabled
//! enabled = true               # default true when the table is present
//! target = "tel:+14155550100"  # required when enabled: tel:+E164 or a sip:/sips: URI
//! handoff_line = "Let me connect you with a colleague now. Please hold."  # default shown
//! default_phrases = true       # default true: include escalation::phrases::DEFAULT_PHRASES
//! phrases = ["manager"]        # extra caller phrases (whole words, negation-aware)
//! dtmf_key = "0"               # optional: one of 0-9 * # A-D
//! [escalation.fallback]        # when the transfer is not confirmed
//! target = "sip:queue@pbx.example.com"  # optional second target
//! apology = "I'm sorry, no one can take your call right now. Please try again later. Goodbye."
//!                              # default shown; spoken before hangup when all targets fail
//!
//! [reject.hours]               # outside these hours -> reject
//! timezone = "America/New_York"  # IANA name (chrono-tz); DST applies
//! open = ["mon-fri 09:00-17:00", "sat 10:00-14:00"]
//!                              # DAY[-DAY] HH:MM-HH:MM, end exclusive, "24:00" allowed,
//!                              # day ranges may wrap (fri-mon); no overnight windows
//! status = 480                 # default 480
//! [reject.blocklist]           # checked first
//! numbers = ["+19005550199"]   # E.164, exact
//! prefixes = ["+1900"]
//! status = 603                 # default 603
//! [reject.capacity]            # checked last
//! max_concurrent_calls = 20    # >= 1; reject when this many calls are already live
//! status = 486                 # default 486
//!
//! tools_base_url = "https://api.example.com/v1"  # optional (a top-level key: write it above
//!                              # the first table); {{base_url}} in tool urls
//! tools_allow_private_hosts = ["tools.internal"]  # optional (top-level): hosts tools may reach
//!                              # although they are or resolve to loopback/private/link-local
//!                              # addresses (names as in the url, or IP literals); default none
//! filler_line = "One moment while I look that up."  # optional (top-level); said when a tool
//!                              # runs past [tools] filler_after_ms; default from config
//! [[tools]]                    # agent tools: http requests or built-ins; the full format is
//! name = "lookup_order"        # in the crate::tools docs
//! description = "..."
//! parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
//! http = { url = "{{base_url}}/orders/{{args.order_id}}", headers = { Authorization = "Bearer {{secret:orders_token}}" } }
//! [[tools]]
//! builtin = "lookup_call_history"  # transfer_to_human | end_call | send_dtmf | create_ticket |
//!                              # lookup_call_history
//!
//! [after_call]
//! summary = true               # default true: store a summary (intent, outcome, key facts)
//! [[after_call.extract]]       # a value taken from the transcript after the call
//! name = "confirmation_number" # stored as after_call.extracted.confirmation_number
//! regex = '(?i)confirmation (?:number|code) is ([A-Z0-9]{5,10})'  # group 1, else the match;
//!                              # the last matching line wins
//! from = "caller"              # caller | agent | any (default)
//! [after_call.sms]             # a text to the caller after the call (Twilio; opt-outs respected)
//! template = "Thanks for calling! Ref {{extract.confirmation_number}}. Reply STOP to opt out."
//! require = ["confirmation_number"]  # send only when these were extracted
//! ```
//!
//! Reject statuses must be SIP final failure responses, 400..=699.
//!
//! # Validation
//!
//! [`ProfileSet::load`] checks the whole directory and reports every problem it finds as a
//! [`LoadError`] with the file and, for TOML locations, the 1-based line: TOML syntax, unknown
//! keys and wrong types (these stop the checks of that file), duplicate names, zero or several
//! defaults, a missing or blank instructions file, a non-default profile without `[match]`
//! rules, invalid E.164 numbers, unknown time zones, bad opening hours (quoting the string), bad
//! regexes, bad transfer targets, a `dtmf_key` that is not one DTMF key, escalation enabled
//! without a target, `speed`/`threshold` out of range, reject statuses outside 400..=699,
//! empty strings where text is required and settings that belong to another turn detection
//! type; for tools: bad names, duplicates, a `parameters` that is not a valid JSON Schema of
//! type object, templates that reference undeclared parameters or unknown placeholders, urls
//! that do not parse as http(s), a url whose scheme, user, host or port a placeholder other
//! than `{{base_url}}` could reach (or a `{{base_url}}` not followed by `/`, `?`, `#`), a url
//! host that is a loopback/private/link-local IP literal not listed in
//! `tools_allow_private_hosts`, a `Host` header, literal credentials, `{{base_url}}` without `tools_base_url`,
//! `transfer_to_human` without escalation; for `[after_call]`: bad regexes, duplicate rule
//! names, SMS templates referencing undeclared rules.

mod current;
mod file;
mod hours;
mod load;
mod profile;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

pub use current::{Profiles, check_named_secrets};
pub use hours::{OpenHours, OpenWindow};
pub use load::ProfileSet;
pub use profile::{
    Admission, AfterCallSettings, Blocklist, CapacityLimit, DEFAULT_APOLOGY, DEFAULT_HANDOFF_LINE,
    DEFAULT_MAX_CALL_DURATION_SECS, DEFAULT_MODEL, DEFAULT_TRANSCRIPTION_MODEL, DEFAULT_VOICE,
    Eagerness, EscalationSettings, ExtractFrom, ExtractRule, HeaderRule, HeaderTest, MatchRules,
    MediaAudio, NoiseReduction, Profile, RejectReason, RejectRules, SessionSettings, SmsSettings,
    TOOL_END_CALL, TOOL_TRANSFER_TO_HUMAN, TurnDetection, builtin_tools,
};

/// One problem found while loading a profile directory.
///
/// Displays as `prompts/x.toml:12: message`, or `prompts/x.toml: message` when the problem has
/// no line (a missing file, a cross-file rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The profile file (or the directory, for directory-wide problems).
    pub file: PathBuf,
    /// 1-based line in `file`, when the problem is at a TOML location.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// Every problem found by [`ProfileSet::load`], sorted by file and line. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}
