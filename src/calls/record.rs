//! The call record: what the controller knows about one call, as stored and as served by
//! `GET /v1/calls/{call_id}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which OpenAI API answers the call (<https://developers.openai.com/api/docs/guides/realtime-sip>,
/// <https://developers.openai.com/api/docs/guides/voice-sip?api=live>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Realtime SIP: `realtime.call.incoming`, `/v1/realtime/calls/{call_id}/...`.
    Realtime,
    /// GPT-Live: `live.transport.incoming`, `/v1/live/sessions/{session_id}/...`.
    Live,
    /// Twilio Media Streams bridged to a Realtime WebSocket session (`crate::bridge`); the
    /// call id is Twilio's `CallSid` and [`CallRecord::media`] holds the stream details.
    TwilioMedia,
}

/// Where a call is in its life. Stored as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Webhook verified, decision being made, `/accept` in flight.
    Accepting,
    /// `/accept` failed after its retry budget; a redelivery of the webhook may try again.
    AcceptFailed,
    /// `/accept` answered 404: the caller was gone before we answered.
    Missed,
    /// Rejected by a rule (closed hours, blocked caller, over capacity).
    Rejected,
    /// Accepted; the monitor owns the call.
    Active,
    /// Escalation running: handoff line spoken, `/refer` sent, waiting for the sideband to close.
    Transferring,
    /// The sideband closed within the refer outcome window after `/refer`.
    Transferred,
    /// The transfer did not complete and no fallback target succeeded; the fallback ran.
    TransferFailed,
    /// The call ended without a transfer (caller hung up, `end_call`, max duration, operator).
    Ended,
    /// Another API owns this SIP call: the delivery came from the API the profile does not use (one
    /// SIP call fires `realtime.call.incoming` and `live.transport.incoming` when the project
    /// subscribes to both, OpenAI's Realtime SIP and voice-sip guides), or GPT-Live answered
    /// `decision_already_made`. It was acknowledged and left alone; `sip_call_id` links it to the
    /// owning record.
    Ignored,
}

impl CallState {
    /// Every state, in life-cycle order (store backends build state filters from it).
    pub const ALL: [CallState; 10] = [
        Self::Accepting,
        Self::AcceptFailed,
        Self::Missed,
        Self::Rejected,
        Self::Active,
        Self::Transferring,
        Self::Transferred,
        Self::TransferFailed,
        Self::Ended,
        Self::Ignored,
    ];
    const _ALL_COMPLETE: () = assert!(Self::ALL.len() == Self::Ignored.all_index() + 1);

    /// Position in [`CallState::ALL`]; an exhaustive match, so adding a state fails to compile
    /// until it is listed.
    #[allow(dead_code)]
    const fn all_index(self) -> usize {
        match self {
            Self::Accepting => 0,
            Self::AcceptFailed => 1,
            Self::Missed => 2,
            Self::Rejected => 3,
            Self::Active => 4,
            Self::Transferring => 5,
            Self::Transferred => 6,
            Self::TransferFailed => 7,
            Self::Ended => 8,
            Self::Ignored => 9,
        }
    }

    /// The stored name, e.g. `"transfer_failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepting => "accepting",
            Self::AcceptFailed => "accept_failed",
            Self::Missed => "missed",
            Self::Rejected => "rejected",
            Self::Active => "active",
            Self::Transferring => "transferring",
            Self::Transferred => "transferred",
            Self::TransferFailed => "transfer_failed",
            Self::Ended => "ended",
            Self::Ignored => "ignored",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accepting" => Self::Accepting,
            "accept_failed" => Self::AcceptFailed,
            "missed" => Self::Missed,
            "rejected" => Self::Rejected,
            "active" => Self::Active,
            "transferring" => Self::Transferring,
            "transferred" => Self::Transferred,
            "transfer_failed" => Self::TransferFailed,
            "ended" => Self::Ended,
            "ignored" => Self::Ignored,
            _ => return None,
        })
    }

    /// True while OpenAI may still have the call: a monitor should be attached.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Active | Self::Transferring)
    }

    /// True once nothing more will happen to the call.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Missed
                | Self::Rejected
                | Self::Transferred
                | Self::TransferFailed
                | Self::Ended
                | Self::Ignored
        )
    }
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token usage summed over the call's `response.done` events (`response.usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Number of `response.done` events seen.
    pub responses: u64,
    /// Sum of `usage.input_tokens`.
    pub input_tokens: u64,
    /// Sum of `usage.output_tokens`.
    pub output_tokens: u64,
    /// Sum of `usage.total_tokens`.
    pub total_tokens: u64,
}

/// The escalation of a call, if one happened. Every step is also in the call's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EscalationSummary {
    /// What triggered it: `caller_phrase`, `tool`, `dtmf` or `operator`.
    pub trigger: String,
    /// Trigger detail: the phrase, the tool's reason, the DTMF key, the operator's note.
    pub detail: String,
    /// The last `Refer-To` target tried (`tel:+E164` or `sip:...`).
    pub target: String,
    /// `pending`, `transferred`, `transfer_failed` or `abandoned`.
    pub outcome: String,
    /// When the escalation was triggered.
    pub at: DateTime<Utc>,
    /// The profile's escalation action: `refer` or `connect_refer` (`refer` in records written
    /// before actions existed).
    #[serde(default = "default_action")]
    pub action: String,
    /// The Amazon Connect handover token of a `connect_refer` hand-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<HandoverRecord>,
    /// The HubSpot contact and ticket opened for the escalation (`[hubspot] on_escalation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm: Option<CrmRecord>,
}

fn default_action() -> String {
    "refer".into()
}

/// The handover token minted for a `connect_refer` hand-off
/// (`crate::escalation::connect`). Shown on the admin API only; never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandoverRecord {
    /// The 10-digit one-time token, when minting succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When the token stops being redeemable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Why no token was minted (a store failure); the caller is transferred all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// HubSpot work done on escalation. Ids are set for whatever succeeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CrmRecord {
    /// The caller's contact id (found by phone or created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// The escalation ticket's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    /// Why the CRM work failed or was skipped (`no caller number`, a HubSpot error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One call as stored. `call_id` is OpenAI's opaque id (`rtc_...` for Realtime), or Twilio's
/// `CallSid` (`CA...`) for [`Api::TwilioMedia`] calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecord {
    /// OpenAI's call id (or the Twilio `CallSid` on the media path), the primary key.
    pub call_id: String,
    /// Which API answers the call.
    pub api: Api,
    /// Life-cycle state.
    pub state: CallState,
    /// Name of the prompt profile chosen for the call.
    pub profile: String,
    /// Caller number in E.164 (`+14155550123`), when the SIP headers carried one.
    pub caller: Option<String>,
    /// Dialed number in E.164, when the SIP headers carried one.
    pub dialed: Option<String>,
    /// The SIP `Call-ID` header of the INVITE.
    pub sip_call_id: Option<String>,
    /// The `webhook-id` of the delivery that created the record.
    pub webhook_id: String,
    /// When the webhook was first received.
    pub created_at: DateTime<Utc>,
    /// When `/accept` returned 200.
    pub accepted_at: Option<DateTime<Utc>>,
    /// When the call reached a final state.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended, e.g. `caller_hangup`, `end_call`, `max_duration`, `operator_hangup`,
    /// `closed_hours`, `blocked_caller`, `over_capacity`, `accept_404`.
    pub end_reason: Option<String>,
    /// The escalation, if any.
    pub escalation: Option<EscalationSummary>,
    /// Summed model usage.
    pub usage: Usage,
    /// Tool use, the summary, extracted values, the cost estimate and the SMS follow-up
    /// (stored as one JSON column; absent in records written before it existed).
    #[serde(default)]
    pub after_call: AfterCall,
    /// The Twilio Media Streams side of the call (only for [`Api::TwilioMedia`]); stored as one
    /// JSON column, absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaInfo>,
    /// The parent Twilio `CallSid` (`CA` + 32 hex) of a SIP call that reached OpenAI through
    /// Twilio Programmable Voice (`<Dial><Sip>` with the `X-Twilio-CallSid` URI header, see
    /// [`crate::escalation::twilio_dial`]): the call a `twilio_dial` hand-off redirects. Absent
    /// otherwise and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilio_call_sid: Option<String>,
}

/// What the controller adds to a call around and after it: token details for the cost estimate,
/// tool counts, the summary, values extracted from the transcript and the SMS follow-up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AfterCall {
    /// Token counts by kind, summed over `response.done` (`usage.input_token_details`,
    /// `usage.output_token_details`); tokens whose kind the event did not give are in
    /// [`TokenDetail::unknown_input`] / [`TokenDetail::unknown_output`].
    #[serde(default)]
    pub tokens: TokenDetail,
    /// Tool calls by the model: `name` → counts by outcome (`ok`, `timeout`, ...).
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// The call summary, once the call ended (absent when summaries are off).
    #[serde(default)]
    pub summary: Option<CallSummary>,
    /// Values extracted from the transcript by the profile's `[[after_call.extract]]` rules,
    /// by rule name (e.g. `confirmation_number`).
    #[serde(default)]
    pub extracted: std::collections::BTreeMap<String, String>,
    /// The estimated model cost, when the model is in the `[pricing]` table.
    #[serde(default)]
    pub cost: Option<CostEstimate>,
    /// The SMS follow-up, when the profile has one.
    #[serde(default)]
    pub sms: Option<SmsFollowUp>,
}

/// Token counts by kind (see [`AfterCall::tokens`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenDetail {
    /// `input_token_details.audio_tokens`, minus cached ones.
    pub audio_input: u64,
    /// `input_token_details.cached_tokens_details.audio_tokens`.
    pub cached_audio_input: u64,
    /// `input_token_details.text_tokens`, minus cached ones.
    pub text_input: u64,
    /// `input_token_details.cached_tokens_details.text_tokens`.
    pub cached_text_input: u64,
    /// Input tokens of responses without details.
    pub unknown_input: u64,
    /// `output_token_details.audio_tokens`.
    pub audio_output: u64,
    /// `output_token_details.text_tokens`.
    pub text_output: u64,
    /// Output tokens of responses without details.
    pub unknown_output: u64,
}

/// The summary of a call: why the caller called, how it ended, the facts worth keeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallSummary {
    /// Why the caller called, one sentence.
    pub intent: String,
    /// How the call ended, one sentence.
    pub outcome: String,
    /// Facts worth keeping (order numbers, dates, promises made).
    pub key_facts: Vec<String>,
    /// `model` (the model answered through the sideband before hangup) or `transcript` (the
    /// deterministic summary built from the transcript and the record).
    pub source: String,
}

/// The cost estimate of a call's model usage (transcription is not included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CostEstimate {
    /// The Realtime model priced.
    pub model: String,
    /// Currency of `amount`.
    pub currency: String,
    /// The estimate in millionths of `currency` (e.g. `123456` = 0.123456 USD): tokens of each
    /// kind times the `[pricing]` price per million tokens, rounded to the nearest millionth.
    /// Tokens of unknown kind are priced as audio (an upper bound).
    pub amount_micros: u64,
}

/// What happened to the SMS follow-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SmsFollowUp {
    /// `sent`, `skipped` (see `reason`), `opted_out` or `failed`.
    pub status: String,
    /// Why it was skipped or failed, e.g. `no_caller_number`, `twilio_not_configured`,
    /// `missing confirmation_number`, or the Twilio error.
    pub reason: Option<String>,
    /// Twilio's message SID when sent (`SM...`).
    pub sid: Option<String>,
    /// When the decision was made.
    pub at: DateTime<Utc>,
}

/// The Twilio Media Streams side of a bridged call (`crate::bridge`). The call's `call_id` is
/// Twilio's `CallSid` (`CA…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MediaInfo {
    /// `inbound` (Twilio called our voice webhook) or `outbound` (we placed the call through
    /// the Twilio REST API).
    pub direction: String,
    /// The profile's audio mode for the Realtime session: `pcmu` (G.711 μ-law 8 kHz passed
    /// through) or `pcm16` (PCM16 24 kHz, transcoded by `crate::media`).
    pub audio: String,
    /// Twilio's `StreamSid` (`MZ…`) once the stream started.
    #[serde(default)]
    pub stream_sid: Option<String>,
    /// The last `CallStatus` a status callback reported (`queued`, `ringing`, `in-progress`,
    /// `completed`, `busy`, `no-answer`, `failed`, `canceled`), while no stream was running.
    #[serde(default)]
    pub twilio_status: Option<String>,
    /// Frame statistics of the bridge, written when the stream ended.
    #[serde(default)]
    pub stats: Option<BridgeStats>,
}

/// Per-call frame statistics of the media bridge. Counts are of WebSocket messages; bytes are
/// μ-law bytes at 8 kHz (1 byte = 1 sample = 0.125 ms) on the Twilio side; times are
/// microseconds from a message received to the resulting message(s) written to the other
/// socket (see `crate::bridge::stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BridgeStats {
    /// Twilio `media` messages received with caller audio.
    pub frames_in: u64,
    /// μ-law bytes of caller audio received.
    pub bytes_in: u64,
    /// `input_audio_buffer.append` events sent to the model.
    pub appends: u64,
    /// `response.output_audio.delta` events received from the model.
    pub deltas: u64,
    /// Twilio `media` messages sent (160 bytes = 20 ms each).
    pub frames_out: u64,
    /// μ-law bytes of agent audio sent.
    pub bytes_out: u64,
    /// `mark` messages sent to Twilio.
    pub marks_sent: u64,
    /// `mark` messages Twilio echoed back.
    pub marks_echoed: u64,
    /// Barge-ins: Twilio `clear` sent because the caller spoke over buffered agent audio (or the
    /// monitor cancelled a response while its audio was still buffered).
    pub barge_ins: u64,
    /// `conversation.item.truncate` events sent.
    pub truncates: u64,
    /// DTMF keys received from Twilio.
    pub dtmf: u64,
    /// Messages from either side that were not JSON, had an unknown shape or a wrong
    /// `streamSid` (skipped).
    pub malformed: u64,
    /// Audio payloads that were not valid base64 or exceeded the size limit (skipped).
    pub bad_audio: u64,
    /// PCM16 streams that ended in the middle of a sample (the stray byte was dropped).
    pub odd_pcm: u64,
    /// Model audio deltas dropped because their item had been cut off by a barge-in.
    pub dropped_deltas: u64,
    /// Median time from a Twilio `media` received to its `input_audio_buffer.append` written,
    /// microseconds.
    pub inbound_p50_us: u64,
    /// 99th percentile of the same, microseconds.
    pub inbound_p99_us: u64,
    /// Median time from a model audio delta received to its last Twilio frame written,
    /// microseconds.
    pub outbound_p50_us: u64,
    /// 99th percentile of the same, microseconds.
    pub outbound_p99_us: u64,
}

impl CallRecord {
    /// A new record in state [`CallState::Accepting`].
    pub fn new(
        call_id: impl Into<String>,
        api: Api,
        webhook_id: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            call_id: call_id.into(),
            api,
            state: CallState::Accepting,
            profile: String::new(),
            caller: None,
            dialed: None,
            sip_call_id: None,
            webhook_id: webhook_id.into(),
            created_at: now,
            accepted_at: None,
            ended_at: None,
            end_reason: None,
            escalation: None,
            usage: Usage::default(),
            after_call: AfterCall::default(),
            media: None,
            twilio_call_sid: None,
        }
    }
}

/// Who spoke a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The person on the phone (from `conversation.item.input_audio_transcription.completed`).
    Caller,
    /// The AI agent (from `response.output_audio_transcript.done`).
    Agent,
}

impl Speaker {
    /// `"caller"` or `"agent"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Agent => "agent",
        }
    }
}

/// One line of a call's transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TranscriptLine {
    /// The call this line belongs to.
    pub call_id: String,
    /// Who spoke.
    pub speaker: Speaker,
    /// What was said, as transcribed.
    pub text: String,
    /// When the controller received the transcript event.
    pub at: DateTime<Utc>,
    /// The Realtime conversation `item_id`, used to skip a line replayed after a reconnect.
    pub item_id: Option<String>,
}

/// One step in a call's life, kept in order: `webhook_received`, `accepted`, `escalation_triggered`,
/// `refer_sent`, `transferred`, `error`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallEvent {
    /// The call this event belongs to.
    pub call_id: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Event kind, snake_case.
    pub kind: String,
    /// Structured detail (never secrets; transcript text only in transcript lines).
    pub detail: serde_json::Value,
}

impl CallEvent {
    /// A new event stamped `now`.
    pub fn new(call_id: &str, kind: &str, detail: serde_json::Value) -> Self {
        Self {
            call_id: call_id.to_string(),
            at: Utc::now(),
            kind: kind.to_string(),
            detail,
        }
    }
}
