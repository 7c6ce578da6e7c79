//! The Twilio Media Streams path: Twilio streams the caller's audio to us over a WebSocket, we
//! bridge it to an OpenAI Realtime WebSocket session and stream the agent's audio back.
//!
//! Sources: Twilio Media Streams
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>), `X-Twilio-Signature`
//! (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>), voice webhook parameters
//! (<https://www.twilio.com/docs/voice/twiml>), the Call resource
//! (<https://www.twilio.com/docs/voice/api/call-resource>), `<Dial>`
//! (<https://www.twilio.com/docs/voice/twiml/dial>); OpenAI's Realtime session fields and audio
//! formats (OpenAPI schema `RealtimeSessionCreateRequestGA`) and Realtime events
//! (<https://developers.openai.com/api/docs/guides/realtime-server-controls>), here on
//! `wss://api.openai.com/v1/realtime?model=...`.
//!
//! ```text
//! caller ─PSTN─ Twilio ──POST /twilio/voice (signed)──▶ profile, reject rules ─▶ TwiML
//!                 │        <Connect><Stream url="wss://{public}/twilio/media"> + <Parameter>s
//!                 └──WSS /twilio/media (signed upgrade)──▶ bridge ──WSS {sideband_url}?model=──▶ OpenAI
//!                      media (μ-law 20 ms)  ──────────────▶ input_audio_buffer.append
//!                      media + mark         ◀────────────── response.output_audio.delta
//!                      clear                ◀── barge-in ── input_audio_buffer.speech_started
//!                      dtmf, mark echoes ──▶ monitor ◀───── every other event (transcripts, tools)
//! ```
//!
//! # Audio modes (profile `[session] audio`)
//!
//! | mode | session format | Twilio → model | model → Twilio |
//! |---|---|---|---|
//! | `pcmu` (default) | `{"type":"audio/pcmu"}` both ways | payload base64 passed through (validated, not decoded further) | [`crate::media::UlawFramer`]: deltas re-framed into 160-byte (20 ms) frames |
//! | `pcm16` | `{"type":"audio/pcm","rate":24000}` both ways | [`crate::media::InboundTranscoder`]: μ-law 8 kHz → PCM16LE 24 kHz (1.875 ms delay) | [`crate::media::OutboundTranscoder`]: PCM16LE 24 kHz → μ-law 8 kHz, 160-byte frames (1.875 ms delay) |
//!
//! Every agent audio delta becomes whole 20 ms frames (a partial frame waits for the next delta;
//! the end of the response pads it with μ-law silence) followed by one Twilio `mark`; the marks
//! Twilio echoes tell how much of each item has played ([`playback`]).
//!
//! # Barge-in
//!
//! On `input_audio_buffer.speech_started` (or a `response.cancel` from the monitor) while agent
//! audio is still buffered at Twilio (marks not yet echoed), the bridge sends Twilio `clear`,
//! `conversation.item.truncate` with `audio_end_ms` = the played position of the playing item
//! (interpolated from the last echoed mark, never past the next unechoed one), drops the rest
//! of that item's deltas, and resets the outbound transcoder.
//!
//! # The monitor
//!
//! The per-call monitor ([`crate::calls::monitor::spawn_with`]) is the same code as on the SIP
//! path. It runs over [`link::MediaLink`]: every model event except audio deltas, plus events
//! the bridge synthesises so the monitor's SIP logic applies unchanged:
//! `input_audio_buffer.dtmf_event_received` for Twilio `dtmf`, `output_audio_buffer.started`
//! when a response's first frame is sent and `output_audio_buffer.stopped` when Twilio echoes the
//! mark after its last frame (or the audio is cleared), so a hand-off line finishes playing
//! before the transfer. Its [`crate::calls::link::CallActions`] are [`link::TwilioActions`]:
//! a transfer is a REST call update with `<Dial><Number>` (`tel:` targets) or `<Dial><Sip>`
//! (`sip:` targets), a hang-up is `Status=completed`. Updating the call ends the stream (Twilio
//! sends `stop`), which the link reports as a clean close: the monitor then records
//! `transferred`, exactly as a sideband close after a SIP REFER.
//!
//! # Call records
//!
//! `call_id` is Twilio's `CallSid`; `api` is `twilio_media`; `media` holds direction, audio
//! mode, `StreamSid`, frame statistics and extracted values. States: `accepting` (voice webhook
//! answered or outbound call placed, stream not started), `rejected` (a reject rule answered
//! `<Say>…<Hangup/>`), `missed` (an outbound call ended `busy`/`no-answer`/`failed`/`canceled`
//! before any stream), then the monitor's `active` … `ended`/`transferred`/`transfer_failed`.
//!
//! # Binding and pacing
//!
//! A stream is bridged only for a call we answered: the voice webhook (or the outbound call
//! placement) mints a single-use stream token in the store ([`STREAM_TOKEN_TTL`]) and puts it
//! in the `<Stream>` as [`params::STREAM_TOKEN`]; the bridge redeems it from the `start`
//! message and checks `callSid`/`accountSid` against it before it opens a Realtime session
//! ([`stream`]). Caller audio is paced ([`pacer`]): never forwarded ahead of real time, and a
//! stream sending it faster than 1.5× real time for long is closed as abusive.
//!
//! Modules: [`http`] (routes), [`stream`] (one bridged call), [`audio`] (per-mode processing),
//! [`pacer`] (inbound pacing),
//! [`playback`] (marks and played position), [`events`] (message shapes), [`link`] (monitor
//! seams), [`stats`] (frame statistics), [`outbound`] (placing calls), [`extract`].

pub mod audio;
pub mod events;
pub mod http;
pub mod link;
pub mod outbound;
pub mod pacer;
pub mod playback;
pub mod stats;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;

use crate::calls::services::{CallServices, HasStore};
use crate::config::{Secret, TwilioConfig};
use crate::store::Store;
use crate::twilio::rest::{TwilioError, TwilioRest};

/// Path of the voice webhook (`POST`, form-encoded, signed).
pub const VOICE_PATH: &str = "/twilio/voice";
/// Path of the Media Streams WebSocket (`GET` upgrade, signed).
pub const MEDIA_PATH: &str = "/twilio/media";
/// Path of call and stream status callbacks (`POST`, form-encoded, signed).
pub const STATUS_PATH: &str = "/twilio/status";

/// `<Parameter>` names the bridge puts on its `<Stream>`; Twilio sends them back in
/// `start.customParameters` (<https://www.twilio.com/docs/voice/twiml/stream#custom-parameters>).
/// Only [`params::STREAM_TOKEN`] is read back: the others are informational (Twilio's console
/// and logs show them), the bridge takes the profile, direction and parties from its own call
/// record.
pub mod params {
    /// The single-use stream token ([`crate::store::Store::mint_stream_token`]).
    pub const STREAM_TOKEN: &str = "stream_token";
    /// The prompt profile chosen for the call.
    pub const PROFILE: &str = "profile";
    /// `inbound` or `outbound`.
    pub const DIRECTION: &str = "direction";
    /// Twilio's `From` (E.164 when it is a number).
    pub const FROM: &str = "from";
    /// Twilio's `To`.
    pub const TO: &str = "to";
}

/// How long a stream token minted by the voice webhook or an outbound call placement stays
/// redeemable: Twilio opens the stream within a second of our TwiML for an inbound call, and
/// when the callee answers (Twilio rings up to 60 s by default) for an outbound one.
pub const STREAM_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Metric names of the bridge (all prefixed `voxmachina_bridge_`).
pub mod metric_names {
    /// Counter: Twilio `media` messages, by `direction` (`in` = caller audio received, `out` =
    /// agent audio frames sent).
    pub const FRAMES: &str = "voxmachina_bridge_frames_total";
    /// Counter: skipped or repaired messages, by `kind` (`malformed`, `bad_audio`, `odd_pcm`,
    /// `dropped_delta`, `paced_drop` = caller audio ahead of real time, not forwarded).
    pub const ERRORS: &str = "voxmachina_bridge_errors_total";
    /// Counter: barge-ins (Twilio `clear` sent).
    pub const BARGE_INS: &str = "voxmachina_bridge_barge_ins_total";
    /// Summary (seconds): per-message bridge time by `direction` (`inbound`: Twilio `media`
    /// received → `input_audio_buffer.append` written; `outbound`: model audio delta received →
    /// its last Twilio frame written).
    pub const FRAME_SECONDS: &str = "voxmachina_bridge_frame_seconds";
    /// Counter: media streams by `outcome` (`bad_signature`, `bridged`, `refused`,
    /// `model_unavailable`, `duplicate`, `no_start`, `monitor_backlog`). `refused` carries a `reason`
    /// ([`super::stream::Refusal::as_str`]: `no_token`, `invalid_token`, `call_mismatch`,
    /// `not_waiting`, `already_bridged`, `store_unavailable`).
    pub const STREAMS: &str = "voxmachina_bridge_streams_total";
    /// Counter: streams closed for sending caller audio faster than real time
    /// ([`super::pacer`]).
    pub const ABUSIVE: &str = "voxmachina_bridge_abusive_streams_total";
}

/// What the Twilio routes and the media bridge use: the call services, the Twilio context
/// (`None`: the routes answer 404) and the intake switch. Built by `crate::app`.
#[derive(Clone)]
pub struct BridgeServices {
    /// Configuration, store, profiles, monitors.
    pub calls: CallServices,
    /// `None` unless `[twilio] account_sid` and `TWILIO_AUTH_TOKEN` are both set.
    pub twilio: Option<TwilioContext>,
    /// False once shutdown began: new calls are refused.
    pub accepting: Arc<AtomicBool>,
}

impl HasStore for BridgeServices {
    fn store(&self) -> &dyn Store {
        self.calls.store.as_ref()
    }
}

/// Server-side WebSocket settings for the upgrades we accept (Twilio Media Streams here, the
/// sideband in the emulator): the same small buffers as the client side
/// ([`crate::openai::sideband::ws_config`]). axum's defaults allocate (and zero) a 128 KiB read
/// buffer per connection, which at thousands of streams is most of the memory and a good part
/// of the CPU of accepting a connection; the messages on these sockets are small JSON (a Media
/// Streams `media` message is ~250 bytes). Buffers still grow for a larger message, up to
/// 4 MiB per message or frame.
pub fn ws_upgrade(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(4 << 20)
        .max_frame_size(4 << 20)
}

/// What the Twilio routes need: the Auth Token (signatures and REST), the REST client and the
/// public URL. Built from `[twilio]` only when `account_sid` and `TWILIO_AUTH_TOKEN` are both set;
/// otherwise the `/twilio/*` routes and `POST /v1/calls/outbound` answer 404.
#[derive(Debug, Clone)]
pub struct TwilioContext {
    /// `TWILIO_AUTH_TOKEN`: HMAC key of `X-Twilio-Signature` and REST password.
    pub auth_token: Secret,
    /// `TWILIO_WEBHOOK_SHARED_KEY`: HMAC key of requests carrying
    /// `X-Twilio-Webhooks-Signature-Settings` (shared-key signing); `None` refuses them.
    pub webhook_shared_key: Option<Secret>,
    /// REST client for the account.
    pub rest: TwilioRest,
    /// `[twilio] public_url` without a trailing `/` (may be empty: then the request's
    /// `X-Forwarded-Proto`/`X-Forwarded-Host`/`Host` are used).
    pub public_url: String,
    /// `[twilio] from_number`: caller ID of outbound calls.
    pub from_number: String,
    /// `[twilio] voice_mode`: `<Connect><Stream>` or `<Dial><Sip>` to OpenAI.
    pub voice_mode: crate::config::TwilioVoiceMode,
    /// `[twilio] openai_sip_uri` (trimmed), dialed in `sip` mode.
    pub openai_sip_uri: String,
}

impl TwilioContext {
    /// The context for `cfg`, or `None` when Twilio is not configured (empty `account_sid` or
    /// no Auth Token).
    ///
    /// `webhook_shared_key` is `TWILIO_WEBHOOK_SHARED_KEY` (shared-key signing, optional).
    ///
    /// # Errors
    /// [`TwilioError::Invalid`] for an unusable `api_base_url` or a blank shared key (fail
    /// closed: an empty HMAC key would verify anyone's signature), [`TwilioError::Transport`]
    /// when the HTTP client cannot be built.
    pub fn from_config(
        cfg: &TwilioConfig,
        auth_token: Option<&Secret>,
        webhook_shared_key: Option<&Secret>,
    ) -> Result<Option<Self>, TwilioError> {
        let Some(token) = auth_token.filter(|_| !cfg.account_sid.is_empty()) else {
            return Ok(None);
        };
        if webhook_shared_key.is_some_and(|k| k.expose().trim().is_empty()) {
            return Err(TwilioError::Invalid(
                "the Twilio webhook shared key (TWILIO_WEBHOOK_SHARED_KEY or the credential \
                 twilio_webhook_shared_key) is empty"
                    .into(),
            ));
        }
        let rest = TwilioRest::new(
            &cfg.api_base_url,
            &cfg.account_sid,
            token.clone(),
            Duration::from_millis(cfg.request_timeout_ms),
        )?;
        Ok(Some(Self {
            auth_token: token.clone(),
            webhook_shared_key: webhook_shared_key.cloned(),
            rest,
            public_url: cfg.public_url.trim().trim_end_matches('/').to_string(),
            from_number: cfg.from_number.trim().to_string(),
            voice_mode: cfg.voice_mode,
            openai_sip_uri: cfg.openai_sip_uri.trim().to_string(),
        }))
    }
}
