//! After-call work: the call summary, values extracted from the transcript, the cost estimate
//! and the SMS follow-up. The monitor runs it when a call ends, before the final record is
//! saved, so `GET /v1/calls/{call_id}` shows it together with the final state.
//!
//! **Summary.** With `[after_call] summary = "model"` (default) and a profile with `summary =
//! true`, when the *controller* ends the call (the `end_call` tool, the maximum duration, an
//! operator hang-up, a failed transfer after its apology) the monitor first sends an out-of-band
//! text response on the sideband ([`summary_request`]: `response.create` with `conversation:
//! "none"`, `output_modalities: ["text"]`, OpenAPI `RealtimeClientEvent*`) and waits up to
//! `summary_timeout_ms` for its JSON answer ([`parse_model_summary`]) before hanging up. When the
//! call ends any other way (the caller hangs up, a transfer takes, the sideband is lost), or the
//! model's answer is missing or not the expected JSON, the summary is built deterministically from
//! the transcript and the record ([`transcript_summary`]); `source` says which.
//!
//! **Extraction.** `[[after_call.extract]]` rules run over the stored transcript ([`extract`]).
//!
//! **Cost.** Token counts by kind (from each `response.done`'s `usage` details, [`add_usage`])
//! times the `[pricing]` entry of the session model ([`estimate_cost_micros`]). Transcription
//! is not included.
//!
//! **SMS follow-up and opt-out.** A profile with `[after_call.sms]` texts the caller through
//! Twilio (`TwilioRest::send_message`, `[twilio] from_number`) unless:
//! the caller number is unknown; a `require`d value was not extracted; the caller said an
//! opt-out phrase during the call ([`opted_out_in_call`]: "stop texting", "don't text me",
//! "no SMS", "unsubscribe", "opt out", "SMS mat bhejo", or a line that is just "stop"); or the
//! number is on the opt-out list (`[after_call] sms_opt_out_file`, one E.164 number per line).
//! An in-call opt-out, and a send Twilio refuses with error 21610 (the recipient replied STOP to
//! our number), add the number to that file, so the choice sticks.
//!
//! **What an SMS may say.** A caller chooses what they say and can spoof the number we text,
//! so an SMS from our number must never relay their words (a phishing link read out on the call
//! would otherwise arrive as a text from the business). The body is the profile's template with
//! fields we control (`{{call.*}}`); the transcript-derived `{{summary.*}}` and
//! `{{extract.NAME}}` load only with `allow_transcript_fields = true`, and their values are
//! cleaned ([`clean_transcript_field`]). At most one follow-up goes to a number per
//! `[after_call] sms_window_secs` (claimed in the store before sending,
//! `Store::claim_sms_window`, so it holds across restarts and instances; a send that fails
//! still uses the window).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use regex::Regex;
use serde_json::{Value, json};

use crate::calls::record::{
    CallRecord, CallState, CallSummary, SmsFollowUp, Speaker, TokenDetail, TranscriptLine,
};
use crate::config::{AfterCallConfig, Config, ModelPrice, PricingConfig, Secret};
use crate::prompts::{ExtractFrom, ExtractRule, SmsSettings};
use crate::store::Store;
use crate::tools::template::{CallField, Encoding, SummaryField, Values};
use crate::twilio::rest::{TwilioError, TwilioRest};

/// `metadata.voxmachina` of the summary request, echoed on its `response.created`/`done`.
pub const SUMMARY_METADATA: &str = "call_summary";

/// Twilio error: the recipient has opted out (replied STOP).
pub const TWILIO_UNSUBSCRIBED: u32 = 21610;

/// Sends SMS follow-ups.
#[derive(Debug, Clone)]
pub struct SmsSender {
    /// The Twilio REST client.
    pub rest: TwilioRest,
    /// `From` number, E.164.
    pub from: String,
}

/// What after-call work needs, shared by every monitor.
#[derive(Clone)]
pub struct AfterCallServices {
    /// `[after_call]`.
    pub config: AfterCallConfig,
    /// `[pricing]`.
    pub pricing: PricingConfig,
    /// Twilio SMS, when `[twilio] account_sid`, `from_number` and `TWILIO_AUTH_TOKEN` are set.
    pub sms: Option<SmsSender>,
    /// The store holding the per-number SMS windows; without one no SMS is sent (the window
    /// could not be enforced).
    pub store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for AfterCallServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterCallServices")
            .field("config", &self.config)
            .field("pricing", &self.pricing)
            .field("sms", &self.sms)
            .field("store", &self.store.is_some())
            .finish()
    }
}

impl AfterCallServices {
    /// From the configuration; SMS only when Twilio is fully configured (`twilio_auth_token`).
    pub fn from_config(config: &Config, twilio_auth_token: Option<Secret>) -> Self {
        let t = &config.twilio;
        let sms = match twilio_auth_token {
            Some(token) if !t.account_sid.is_empty() && !t.from_number.is_empty() => {
                match TwilioRest::new(
                    &t.api_base_url,
                    &t.account_sid,
                    token,
                    Duration::from_millis(t.request_timeout_ms),
                ) {
                    Ok(rest) => Some(SmsSender {
                        rest,
                        from: t.from_number.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "Twilio client unusable; SMS follow-ups off");
                        None
                    }
                }
            }
            _ => None,
        };
        Self {
            config: config.after_call.clone(),
            pricing: config.pricing.clone(),
            sms,
            store: None,
        }
    }

    /// The same services with `store` holding the SMS windows.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
}

/// The out-of-band `response.create` asking the model for the call summary as JSON (no audio,
/// not added to the conversation, no tools). The instructions hold no double quotes.
pub fn summary_request() -> String {
    json!({
        "type": "response.create",
        "response": {
            "conversation": "none",
            "output_modalities": ["text"],
            "tool_choice": "none",
            "metadata": { "voxmachina": SUMMARY_METADATA },
            "instructions": "The phone call is over. Summarise it for the call log. Answer with \
                one JSON object and nothing else, with the keys intent (why the caller called, \
                one sentence), outcome (how the call ended, one sentence) and key_facts (an \
                array of at most 8 short strings: numbers, dates, names, promises made). Write \
                the summary in English even when the call was in another language.",
        }
    })
    .to_string()
}

/// Parses the model's summary text: a JSON object (optionally inside a ``` fence) with string
/// `intent` and `outcome` and an array of strings `key_facts` (missing = empty). `None` for
/// anything else.
pub fn parse_model_summary(text: &str) -> Option<CallSummary> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .map(|r| r.trim_end().trim_end_matches("```"))
        .unwrap_or(t)
        .trim();
    let start = t.find('{')?;
    let end = t.rfind('}')?;
    let v: Value = serde_json::from_str(t.get(start..=end)?).ok()?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
    };
    let key_facts = match v.get("key_facts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    Some(CallSummary {
        intent: clip(&s("intent")?, 300),
        outcome: clip(&s("outcome")?, 300),
        key_facts: key_facts.iter().take(8).map(|f| clip(f, 200)).collect(),
        source: "model".into(),
    })
}

/// At most `max_chars` characters of `s`, `…` appended when cut.
pub(crate) fn clip(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

/// The deterministic summary: `intent` = the caller's first line of three or more words (else
/// their first line), `outcome` from the final state, end reason and escalation, `key_facts` =
/// the extracted values, the escalation detail and the tools used with their outcomes.
pub fn transcript_summary(record: &CallRecord, transcript: &[TranscriptLine]) -> CallSummary {
    let caller: Vec<&str> = transcript
        .iter()
        .filter(|l| l.speaker == Speaker::Caller)
        .map(|l| l.text.trim())
        .filter(|t| !t.is_empty())
        .collect();
    let intent = caller
        .iter()
        .find(|t| t.split_whitespace().count() >= 3)
        .or(caller.first())
        .map(|t| clip(t, 200))
        .unwrap_or_else(|| "Unknown: the caller said nothing that was transcribed.".into());
    let reason = record.end_reason.as_deref().unwrap_or("");
    let outcome = match record.state {
        CallState::Transferred => format!(
            "Transferred to a human ({}).",
            record
                .escalation
                .as_ref()
                .map(|e| e.target.as_str())
                .unwrap_or("unknown target")
        ),
        CallState::TransferFailed => {
            "A transfer to a human was attempted but did not go through; the caller heard an \
             apology and the call was ended."
                .into()
        }
        _ => match reason {
            "end_call" => "The agent finished the conversation and ended the call.".into(),
            "caller_hangup" | "call_ended" => "The caller hung up.".into(),
            "max_duration" => "The call reached its maximum duration and was ended.".into(),
            "operator_hangup" => "An operator ended the call.".into(),
            "sideband_lost" | "call_gone" => "The connection to the call was lost.".into(),
            "" => "The call ended.".into(),
            other => format!("The call ended ({other})."),
        },
    };
    let mut key_facts: Vec<String> = record
        .after_call
        .extracted
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if let Some(e) = &record.escalation {
        if !e.detail.is_empty() {
            key_facts.push(format!(
                "escalation ({}): {}",
                e.trigger,
                clip(&e.detail, 120)
            ));
        }
    }
    for (tool, outcomes) in &record.after_call.tools {
        let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
        key_facts.push(format!("tool {tool}: {}", parts.join(", ")));
    }
    CallSummary {
        intent,
        outcome,
        key_facts,
        source: "transcript".into(),
    }
}

/// Applies `rules` to `transcript`: per rule, the **last** match in the transcript gives the
/// value (capture group 1, else the whole match): the last line (of the rule's speaker) that
/// matches, and the last match within that line, since a correction or read-back comes after
/// the first mention ("... is K4T7Q2. No wait: ... is R7K2P9" gives `R7K2P9`).
pub fn extract(rules: &[ExtractRule], transcript: &[TranscriptLine]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rule in rules {
        let found = transcript
            .iter()
            .rev()
            .filter(|l| match rule.from {
                ExtractFrom::Any => true,
                ExtractFrom::Caller => l.speaker == Speaker::Caller,
                ExtractFrom::Agent => l.speaker == Speaker::Agent,
            })
            .filter_map(|l| {
                rule.regex.captures_iter(&l.text).last().map(|c| {
                    c.get(1)
                        .or_else(|| c.get(0))
                        .map(|m| m.as_str().trim().to_string())
                        .unwrap_or_default()
                })
            })
            .find(|v| !v.is_empty());
        if let Some(v) = found {
            out.insert(rule.name.clone(), v);
        }
    }
    out
}

/// Adds one `response.done`'s `response.usage` (raw JSON) to `tokens`. `text_tokens` and
/// `audio_tokens` are taken to include their cached part (`cached_tokens_details`). Without
/// details, the totals go to `unknown_input` / `unknown_output`.
pub fn add_usage(tokens: &mut TokenDetail, usage: &Value) {
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    match usage.get("input_token_details").filter(|d| d.is_object()) {
        Some(d) => {
            let cached_text = n(d, "/cached_tokens_details/text_tokens");
            let cached_audio = n(d, "/cached_tokens_details/audio_tokens");
            tokens.cached_text_input += cached_text;
            tokens.cached_audio_input += cached_audio;
            tokens.text_input += n(d, "/text_tokens").saturating_sub(cached_text);
            tokens.audio_input += n(d, "/audio_tokens").saturating_sub(cached_audio);
        }
        None => tokens.unknown_input += n(usage, "/input_tokens"),
    }
    match usage.get("output_token_details").filter(|d| d.is_object()) {
        Some(d) => {
            tokens.text_output += n(d, "/text_tokens");
            tokens.audio_output += n(d, "/audio_tokens");
        }
        None => tokens.unknown_output += n(usage, "/output_tokens"),
    }
}

/// The estimated cost in millionths of the currency: Σ tokens × price per million tokens.
/// Cached tokens without a cached price use the uncached price; unknown-kind tokens are priced
/// as audio.
pub fn estimate_cost_micros(tokens: &TokenDetail, price: &ModelPrice) -> u64 {
    let t = |x: u64| x as f64;
    let micros = t(tokens.audio_input + tokens.unknown_input) * price.audio_input
        + t(tokens.cached_audio_input) * price.cached_audio_input.unwrap_or(price.audio_input)
        + t(tokens.text_input) * price.text_input
        + t(tokens.cached_text_input) * price.cached_text_input.unwrap_or(price.text_input)
        + t(tokens.audio_output + tokens.unknown_output) * price.audio_output
        + t(tokens.text_output) * price.text_output;
    micros.round().max(0.0) as u64
}

fn opt_out_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?ix)
            ^\s*stop[\s.!]*$
            | \bstop\s+(texting|messaging|sending)\b
            | \b(don'?t|do\s+not|never)\s+(text|sms|message)\b
            | \b(don'?t|do\s+not|never)\s+send\s+(me\s+)?(a\s+|any\s+)?(text|texts|sms|messages?)\b
            | \bno\s+(more\s+)?(texts|text\s+messages|sms)\b
            | \bunsubscribe\b
            | \bopt[\s-]?out\b
            | \b(sms|message|msg|text)\s+mat\s+(bhejo|bhejna|bhejiye|karo|karna)\b",
        )
        .expect("static regex")
    })
}

/// True when the caller said an opt-out phrase in any transcript line.
pub fn opted_out_in_call(transcript: &[TranscriptLine]) -> bool {
    transcript
        .iter()
        .any(|l| l.speaker == Speaker::Caller && opt_out_regex().is_match(&l.text))
}

/// True when `number` is listed in the opt-out file (missing file = empty list).
pub fn on_opt_out_list(path: &Path, number: &str) -> bool {
    if path.as_os_str().is_empty() {
        return false;
    }
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == number)
    })
}

/// Appends `number` to the opt-out file unless listed, creating it mode 0600 (and its directory
/// 0700) when missing ([`crate::private_fs::open_private_append`]).
pub fn add_to_opt_out_list(path: &Path, number: &str) {
    use std::io::Write as _;
    if path.as_os_str().is_empty() || on_opt_out_list(path, number) {
        return;
    }
    let written =
        crate::private_fs::open_private_append(path).and_then(|mut f| writeln!(f, "{number}"));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot update the SMS opt-out list");
    }
}

/// Longest text of one transcript-derived field in an SMS, characters.
pub const SMS_FIELD_MAX_CHARS: usize = 160;
/// Longest SMS body, characters (Twilio accepts 1600; this keeps a follow-up to a few segments).
pub const SMS_BODY_MAX_CHARS: usize = 640;
/// What replaces a removed URL, e-mail address or phone number.
pub const SMS_REMOVED: &str = "[removed]";

fn link_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?ix)
            [a-z][a-z0-9+.\-]*://\S*                     # scheme://...
            | \bwww\.\S*                                # www....
            | [^\s@]+@[^\s@]+                            # e-mail, user@host
            | \b(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}\b(?:[/:?\#]\S*)?   # host.tld[/...]",
        )
        .expect("static regex")
    })
}

fn phone_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\+?\(?\d[\d\s().\-/]{4,}\d").expect("static regex"))
}

/// A transcript-derived value made fit for an SMS from our number: URLs (`scheme://…`,
/// `www.…`, `host.tld[/…]`), e-mail addresses and phone numbers (7 or more digits, with or
/// without separators) are replaced with [`SMS_REMOVED`], control characters and runs of white
/// space become one space, and the result is cut to [`SMS_FIELD_MAX_CHARS`].
pub fn clean_transcript_field(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let no_links = link_regex().replace_all(&flat, SMS_REMOVED);
    let no_numbers = phone_regex().replace_all(&no_links, |c: &regex::Captures<'_>| {
        let digits = c[0].chars().filter(char::is_ascii_digit).count();
        if digits >= 7 {
            SMS_REMOVED.to_string()
        } else {
            c[0].to_string()
        }
    });
    let words: Vec<&str> = no_numbers.split_whitespace().collect();
    clip(&words.join(" "), SMS_FIELD_MAX_CHARS)
}

struct SmsValues<'a> {
    record: &'a CallRecord,
    intent: Option<String>,
    outcome: Option<String>,
    extracted: BTreeMap<String, String>,
}

impl Values for SmsValues<'_> {
    fn call(&self, f: CallField) -> Option<&str> {
        match f {
            CallField::Id => Some(&self.record.call_id),
            CallField::Caller => self.record.caller.as_deref(),
            CallField::Dialed => self.record.dialed.as_deref(),
        }
    }
    fn summary(&self, f: SummaryField) -> Option<&str> {
        match f {
            SummaryField::Intent => self.intent.as_deref(),
            SummaryField::Outcome => self.outcome.as_deref(),
        }
    }
    fn extract(&self, name: &str) -> Option<&str> {
        self.extracted.get(name).map(String::as_str)
    }
}

/// Renders the SMS text for `record` (summary and extracted values already set). The
/// transcript-derived fields are filled only when the profile allows them
/// (`allow_transcript_fields`, else they render empty), and then cleaned with
/// [`clean_transcript_field`]; the body is cut to [`SMS_BODY_MAX_CHARS`].
pub fn render_sms(sms: &SmsSettings, record: &CallRecord) -> String {
    let allowed = sms.allow_transcript_fields;
    let summary = record.after_call.summary.as_ref().filter(|_| allowed);
    let values = SmsValues {
        record,
        intent: summary.map(|s| clean_transcript_field(&s.intent)),
        outcome: summary.map(|s| clean_transcript_field(&s.outcome)),
        extracted: if allowed {
            record
                .after_call
                .extracted
                .iter()
                .map(|(k, v)| (k.clone(), clean_transcript_field(v)))
                .collect()
        } else {
            BTreeMap::new()
        },
    };
    let body = sms.template.render(&values, Encoding::Raw);
    clip(body.trim(), SMS_BODY_MAX_CHARS)
}

/// Decides and (when allowed) sends the SMS follow-up of `record` (see the module docs for the
/// rules, in that order).
pub async fn sms_follow_up(
    sms: &SmsSettings,
    record: &CallRecord,
    transcript: &[TranscriptLine],
    services: &AfterCallServices,
) -> SmsFollowUp {
    let done = |status: &str, reason: Option<String>, sid: Option<String>| SmsFollowUp {
        status: status.into(),
        reason,
        sid,
        at: Utc::now(),
    };
    let opt_out_file = &services.config.sms_opt_out_file;
    let Some(to) = record.caller.as_deref() else {
        return done("skipped", Some("no_caller_number".into()), None);
    };
    if let Some(missing) = sms
        .require
        .iter()
        .find(|r| !record.after_call.extracted.contains_key(*r))
    {
        return done("skipped", Some(format!("missing {missing}")), None);
    }
    if opted_out_in_call(transcript) {
        add_to_opt_out_list(opt_out_file, to);
        return done(
            "opted_out",
            Some("the caller opted out during the call".into()),
            None,
        );
    }
    if on_opt_out_list(opt_out_file, to) {
        return done("opted_out", Some("on the opt-out list".into()), None);
    }
    let Some(sender) = &services.sms else {
        return done("skipped", Some("twilio_not_configured".into()), None);
    };
    let Some(store) = &services.store else {
        return done("skipped", Some("no_store_for_sms_window".into()), None);
    };
    let now = Utc::now();
    match store
        .claim_sms_window(to, now, now + services.config.sms_window())
        .await
    {
        Ok(true) => {}
        Ok(false) => return done("skipped", Some("sent_within_window".into()), None),
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim the SMS window; no follow-up sent");
            return done("skipped", Some("sms_window_unavailable".into()), None);
        }
    }
    let body = render_sms(sms, record);
    match sender.rest.send_message(to, &sender.from, &body).await {
        Ok(m) => done("sent", None, Some(m.sid)),
        Err(TwilioError::Api(e)) if e.code == Some(TWILIO_UNSUBSCRIBED) => {
            add_to_opt_out_list(opt_out_file, to);
            done("opted_out", Some(e.to_string()), None)
        }
        Err(e) => done("failed", Some(e.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(speaker: Speaker, text: &str) -> TranscriptLine {
        TranscriptLine {
            call_id: "rtc_1".into(),
            speaker,
            text: text.into(),
            at: Utc::now(),
            item_id: None,
        }
    }

    #[test]
    fn parses_model_summaries() {
        let s = parse_model_summary(
            "```json\n{\"intent\":\"Order status\",\"outcome\":\"Told ETA\",\"key_facts\":[\"SK-1\"]}\n```",
        )
        .unwrap();
        assert_eq!(s.intent, "Order status");
        assert_eq!(s.key_facts, ["SK-1"]);
        assert_eq!(s.source, "model");
        assert!(parse_model_summary("Sorry, I cannot do that.").is_none());
        assert!(
            parse_model_summary("{\"intent\":\"x\"}").is_none(),
            "outcome missing"
        );
        assert!(
            parse_model_summary("{\"intent\":\"x\",\"outcome\":\"y\",\"key_facts\":[1]}").is_none()
        );
    }

    #[test]
    fn opt_out_phrases() {
        let yes = [
            "Stop.",
            "please don't text me",
            "No SMS please",
            "I want to unsubscribe",
            "opt out",
            "SMS mat bhejo",
        ];
        for t in yes {
            assert!(opted_out_in_call(&[line(Speaker::Caller, t)]), "{t}");
        }
        let no = [
            "Please stop the delivery of order 5",
            "can you text me the number",
            "the bus stop",
        ];
        for t in no {
            assert!(!opted_out_in_call(&[line(Speaker::Caller, t)]), "{t}");
        }
        assert!(!opted_out_in_call(&[line(Speaker::Agent, "unsubscribe")]));
    }

    #[test]
    fn extraction_takes_the_last_match_of_the_speaker() {
        let rule = ExtractRule {
            name: "confirmation_number".into(),
            regex: Regex::new(r"(?i)confirmation (?:number|code) is ([A-Z0-9]{5,10})").unwrap(),
            from: ExtractFrom::Caller,
        };
        let t = [
            line(Speaker::Caller, "Your confirmation number is ABC123."),
            line(Speaker::Agent, "So the confirmation number is ZZZ999?"),
            line(Speaker::Caller, "Sorry, the confirmation code is R7K2P9."),
        ];
        let got = extract(std::slice::from_ref(&rule), &t);
        assert_eq!(got["confirmation_number"], "R7K2P9");
        // Within one line the last match wins too (a correction follows the first mention).
        let t = [line(
            Speaker::Caller,
            "The confirmation number is K4T7Q2. No wait: the confirmation number is R7K2P9.",
        )];
        assert_eq!(extract(&[rule], &t)["confirmation_number"], "R7K2P9");
    }

    #[test]
    fn usage_and_cost() {
        let mut t = TokenDetail::default();
        add_usage(
            &mut t,
            &json!({"input_tokens": 1100, "output_tokens": 500,
                "input_token_details": {"text_tokens": 100, "audio_tokens": 1000, "cached_tokens": 600,
                    "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 500}},
                "output_token_details": {"text_tokens": 100, "audio_tokens": 400}}),
        );
        add_usage(&mut t, &json!({"input_tokens": 10, "output_tokens": 5}));
        assert_eq!(
            t,
            TokenDetail {
                audio_input: 500,
                cached_audio_input: 500,
                text_input: 0,
                cached_text_input: 100,
                unknown_input: 10,
                audio_output: 400,
                text_output: 100,
                unknown_output: 5,
            }
        );
        let price = ModelPrice {
            model: "m".into(),
            audio_input: 32.0,
            cached_audio_input: Some(0.4),
            text_input: 4.0,
            cached_text_input: Some(0.4),
            audio_output: 64.0,
            text_output: 16.0,
        };
        // 510*32 + 500*0.4 + 100*0.4 + 405*64 + 100*16
        assert_eq!(
            estimate_cost_micros(&t, &price),
            16_320 + 200 + 40 + 25_920 + 1_600
        );
    }

    #[test]
    fn transcript_fields_lose_links_and_numbers() {
        let said = "Please visit https://evil.example/login or www.bad.test, write to x@evil.test, \
                    or open paypa1-secure.com/verify; call +1 (415) 555-0123 or 4155550123. \
                    Order SK-10423 costs 1399.";
        let clean = clean_transcript_field(said);
        for gone in [
            "https://",
            "evil.example",
            "www.bad.test",
            "x@evil.test",
            "paypa1-secure.com",
            "555-0123",
            "4155550123",
        ] {
            assert!(!clean.contains(gone), "{gone} survived: {clean}");
        }
        assert!(clean.contains("Order SK-10423 costs 1399."), "{clean}");
        assert!(clean_transcript_field(&"a ".repeat(500)).chars().count() <= 161);
    }

    #[test]
    fn opt_out_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/opt_out.txt");
        assert!(!on_opt_out_list(&path, "+14155550123"));
        add_to_opt_out_list(&path, "+14155550123");
        add_to_opt_out_list(&path, "+14155550123");
        assert!(on_opt_out_list(&path, "+14155550123"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "+14155550123\n");
    }
}
