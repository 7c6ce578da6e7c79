//! The profile file as written on disk: serde shapes only, validated in `load.rs`.
//!
//! Values that need checking beyond their TOML type are wrapped in [`toml::Spanned`] so every
//! validation error can name its line.

use serde::Deserialize;
use toml::Spanned;

use super::profile::{Eagerness, NoiseReduction};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    pub default: Option<Spanned<bool>>,
    pub api: Option<Spanned<String>>,
    #[serde(default)]
    pub priority: i32,
    pub instructions: Option<Spanned<String>>,
    pub greeting: Option<Spanned<String>>,
    pub max_call_duration_secs: Option<Spanned<u64>>,
    #[serde(rename = "match")]
    pub match_rules: Option<Spanned<RawMatch>>,
    pub session: Option<RawSession>,
    pub escalation: Option<Spanned<RawEscalation>>,
    pub reject: Option<RawReject>,
    pub tools_base_url: Option<Spanned<String>>,
    #[serde(default)]
    pub tools_allow_private_hosts: Vec<Spanned<String>>,
    pub filler_line: Option<Spanned<String>>,
    #[serde(default)]
    pub tools: Vec<Spanned<crate::tools::RawTool>>,
    pub after_call: Option<RawAfterCall>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAfterCall {
    pub summary: Option<bool>,
    #[serde(default)]
    pub extract: Vec<Spanned<RawExtract>>,
    pub sms: Option<Spanned<RawSms>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExtract {
    pub name: Spanned<String>,
    pub regex: Spanned<String>,
    pub from: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSms {
    pub template: Spanned<String>,
    #[serde(default)]
    pub require: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_transcript_fields: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub dialed: Vec<Spanned<String>>,
    #[serde(default)]
    pub caller: Vec<Spanned<String>>,
    #[serde(default)]
    pub caller_prefix: Vec<Spanned<String>>,
    #[serde(default)]
    pub sip_header: Vec<Spanned<RawHeaderRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRule {
    pub name: Spanned<String>,
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub model: Option<Spanned<String>>,
    pub voice: Option<Spanned<String>>,
    pub speed: Option<Spanned<f64>>,
    pub transcription_model: Option<Spanned<String>>,
    pub language: Option<Spanned<String>>,
    pub noise_reduction: Option<NoiseReduction>,
    pub turn_detection: Option<Spanned<RawTurnDetection>>,
    pub audio: Option<super::profile::MediaAudio>,
    pub delegation_model: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawTurnKind {
    SemanticVad,
    ServerVad,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTurnDetection {
    #[serde(rename = "type")]
    pub kind: Option<RawTurnKind>,
    pub eagerness: Option<Eagerness>,
    pub threshold: Option<Spanned<f64>>,
    pub prefix_padding_ms: Option<u32>,
    pub silence_duration_ms: Option<u32>,
    pub idle_timeout_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEscalation {
    pub target: Option<Spanned<String>>,
    pub handoff_line: Option<Spanned<String>>,
    pub default_phrases: Option<bool>,
    #[serde(default)]
    pub phrases: Vec<Spanned<String>>,
    pub dtmf_key: Option<Spanned<String>>,
    pub enabled: Option<bool>,
    pub fallback: Option<RawFallback>,
    pub action: Option<Spanned<String>>,
    pub connect: Option<Spanned<RawConnect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConnect {
    pub queue: Option<Spanned<String>>,
    pub intent: Option<Spanned<String>>,
    pub priority: Option<Spanned<String>>,
    pub token_ttl_secs: Option<Spanned<i64>>,
    pub read_code: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallback {
    pub target: Option<Spanned<String>>,
    pub apology: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReject {
    pub hours: Option<Spanned<RawHours>>,
    pub blocklist: Option<Spanned<RawBlocklist>>,
    pub capacity: Option<RawCapacity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHours {
    pub timezone: Spanned<String>,
    pub open: Vec<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBlocklist {
    #[serde(default)]
    pub numbers: Vec<Spanned<String>>,
    #[serde(default)]
    pub prefixes: Vec<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCapacity {
    pub max_concurrent_calls: Spanned<i64>,
    pub status: Option<Spanned<i64>>,
}
