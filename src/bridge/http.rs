//! The Twilio routes and the outbound-call admin route.
//!
//! | route | checks | answer |
//! |---|---|---|
//! | `POST /twilio/voice` | `X-Twilio-Signature` over `{public URL}{path}[?query]` and all form parameters (403 otherwise); `CallSid`, `AccountSid`, `From`, `To` present (400) | TwiML: `<Connect><Stream>` (`[twilio] voice_mode = "stream"`), `<Dial><Sip>{openai_sip_uri}?X-Twilio-CallSid={CallSid}&X-Voxmachina-CallSid-Mac={HMAC}</Sip></Dial>` (`voice_mode = "sip"`, see [`crate::escalation::twilio_dial`]), or a reject |
//! | `GET /twilio/media` | signature over the stream URL `wss://{public host}{prefix}/twilio/media`, no params (403); then the `start` message must carry a live single-use `stream_token` whose grant names its `callSid`/`accountSid` (else the socket is closed 1008 before any Realtime session, see [`super::stream`]) | WebSocket upgrade → [`super::stream::run`] |
//! | `POST /twilio/status` | signature over `{public URL}/twilio/status` + form (403); `CallSid` (400) | 200; events, and `missed` for outbound calls that never connected |
//! | `POST /v1/calls/outbound` (admin token) | JSON `{"to": "+E164", "profile": "name"?}` | 201 `{"call": record}`; 400/404/409/502 `{"error"}` |
//!
//! All `/twilio/*` routes answer 404 when Twilio is not configured ([`super::TwilioContext`]) and
//! 503 during shutdown. The public URL is `[twilio] public_url` (we sit behind nginx, so the
//! request's own URL is not what Twilio signed, Twilio's webhook security docs); when it is empty
//! the first `X-Forwarded-Proto` / `X-Forwarded-Host` (else `Host`) values are used.
//!
//! **Reject rules** on `/twilio/voice` (the profile's `[reject]`, as on the SIP path; the call
//! record ends `rejected` with the rule as reason):
//!
//! | rule | TwiML |
//! |---|---|
//! | `blocked_caller` | `<Hangup/>` |
//! | `closed_hours` | `<Say>`[`CLOSED_MESSAGE`]`</Say><Hangup/>` |
//! | `over_capacity` | `<Say>`[`BUSY_MESSAGE`]`</Say><Hangup/>` |
//!
//! The profile's SIP status codes do not apply. TwiML `<Reject>` would refuse without answering
//! (no billing) but is not in our TwiML builder or reference, so it is not used.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, FromRef, OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;
use tracing::{Instrument, info, warn};

use super::BridgeServices;
use super::{MEDIA_PATH, STATUS_PATH, TwilioContext, VOICE_PATH, params};
use crate::calls::persist::{append, save};
use crate::calls::record::{Api, CallEvent, CallRecord, CallState, MediaInfo};
use crate::config::TwilioVoiceMode;
use crate::escalation::twilio_dial;
use crate::prompts::{Admission, Profile, RejectReason};
use crate::sip::{CallParties, E164, SipHeader};
use crate::store::StreamGrant;
use crate::telemetry::{mask_number, names};
use crate::twilio::signature;
use crate::twilio::twiml::{Response as Twiml, Stream, TwimlError};
use crate::twilio::voice::VoiceWebhook;

/// Said before hanging up when the profile's opening hours are closed.
pub const CLOSED_MESSAGE: &str =
    "Sorry, we are closed right now. Please call again during our opening hours. Goodbye.";
/// Said before hanging up when the profile's line is at capacity.
pub const BUSY_MESSAGE: &str =
    "Sorry, all of our lines are busy right now. Please try again in a few minutes. Goodbye.";

/// Largest accepted body of a Twilio webhook, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `/twilio/*` routes, on any router state that provides the [`BridgeServices`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<BridgeServices>: FromRef<S>,
{
    Router::new()
        .route(VOICE_PATH, post(voice))
        .route(MEDIA_PATH, get(media))
        .route(STATUS_PATH, post(status))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn not_configured() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Twilio is not configured: set [twilio] account_sid and TWILIO_AUTH_TOKEN",
    )
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `scheme://host[/prefix]` as Twilio reaches us: `[twilio] public_url`, else rebuilt from
/// `X-Forwarded-Proto` (default `https`) and `X-Forwarded-Host` / `Host`. `None` when neither
/// is available.
pub fn public_base(tw: &TwilioContext, headers: &HeaderMap) -> Option<String> {
    if !tw.public_url.is_empty() {
        return Some(tw.public_url.clone());
    }
    let host = first_value(headers, "x-forwarded-host").or_else(|| first_value(headers, "host"))?;
    let proto = first_value(headers, "x-forwarded-proto").unwrap_or("https");
    Some(format!("{proto}://{host}"))
}

/// The `<Stream url>` for a public base: `wss://` + the base without its scheme +
/// `/twilio/media` (Twilio streams only to `wss`, Twilio's `<Stream>` TwiML docs).
pub fn stream_url(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    format!("wss://{rest}{MEDIA_PATH}")
}

/// A Twilio form webhook whose `X-Twilio-Signature` checked out over the public URL.
struct SignedForm<'a> {
    tw: &'a TwilioContext,
    /// The public base URL (`scheme://host[/prefix]`).
    base: String,
    /// The `application/x-www-form-urlencoded` parameters, in order.
    form: Vec<(String, String)>,
}

/// The common start of every Twilio form webhook (`what` names it in the log): 404 when Twilio
/// is not configured, 400 without a host to rebuild the public URL from, 403 when the
/// signature over `{public base}{path and query}` and the form does not verify.
fn signed_form<'a>(
    app: &'a BridgeServices,
    what: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SignedForm<'a>, Box<Response>> {
    let Some(tw) = app.twilio.as_ref() else {
        return Err(Box::new(not_configured()));
    };
    let form = signature::parse_form(body);
    let Some(base) = public_base(tw, headers) else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "no Host header")));
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let url = format!("{base}{path}");
    if !signature_ok(tw, headers, &url, &form) {
        warn!(%url, "{what} refused: bad or missing X-Twilio-Signature");
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "invalid X-Twilio-Signature",
        )));
    }
    Ok(SignedForm { tw, base, form })
}

/// The request's signature scheme (`X-Twilio-Webhooks-Signature-Settings`, see
/// [`signature::Scheme::for_request`]); `None` (logged) when it cannot be checked.
fn signature_scheme<'a>(
    tw: &'a TwilioContext,
    headers: &HeaderMap,
) -> Option<signature::Scheme<'a>> {
    let settings = headers
        .get(signature::SETTINGS_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match signature::Scheme::for_request(settings, &tw.auth_token, tw.webhook_shared_key.as_ref()) {
        Ok(scheme) => Some(scheme),
        Err(e) => {
            warn!(error = %e, "Twilio request refused");
            None
        }
    }
}

fn signature_ok(
    tw: &TwilioContext,
    headers: &HeaderMap,
    url: &str,
    params: &[(String, String)],
) -> bool {
    let Some(sig) = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    signature_scheme(tw, headers).is_some_and(|s| s.validate(url, params, sig))
}

/// The `<Connect><Stream>` document: stream URL from `base`, `statusCallback`
/// `{base}/twilio/status`, the single-use [`params::STREAM_TOKEN`] `stream_token`, then the
/// informational `profile`, `direction`, `from`, `to` parameters (each left out when name plus
/// value would reach Twilio's 500-character limit; the bridge never reads them back).
///
/// # Errors
/// [`TwimlError`] when `base` makes an unusable stream URL (e.g. it has a query string).
pub fn connect_twiml(
    base: &str,
    stream_token: &str,
    profile: &str,
    direction: &str,
    from: &str,
    to: &str,
) -> Result<String, TwimlError> {
    let mut stream = Stream::new(stream_url(base))?
        .status_callback(format!("{base}{STATUS_PATH}"), None)
        .parameter(params::STREAM_TOKEN, stream_token)?;
    for (name, value) in [
        (params::PROFILE, profile),
        (params::DIRECTION, direction),
        (params::FROM, from),
        (params::TO, to),
    ] {
        if name.len() + value.chars().count() < crate::twilio::twiml::PARAMETER_MAX_CHARS {
            stream = stream.parameter(name, value)?;
        }
    }
    Ok(Twiml::new().connect_stream(stream).render())
}

/// Mints the single-use stream token of `grant`, valid for [`super::STREAM_TOKEN_TTL`]. A
/// store failure is logged and counted (`voxmachina_store_errors_total{op="mint_stream_token"}`):
/// without a token the stream would be refused, so the caller answers an error instead.
///
/// # Errors
/// The [`crate::store::StoreError`] of [`crate::store::Store::mint_stream_token`].
pub async fn mint_stream_token(
    app: &BridgeServices,
    grant: &StreamGrant,
) -> Result<String, crate::store::StoreError> {
    let ttl = chrono::Duration::from_std(super::STREAM_TOKEN_TTL).unwrap_or(chrono::Duration::MAX);
    let minted = app
        .calls
        .store
        .mint_stream_token(grant, ttl, Utc::now())
        .await;
    if let Err(e) = &minted {
        warn!(error = %e, "cannot mint the stream token");
        metrics::counter!(names::STORE_ERRORS, "op" => "mint_stream_token").increment(1);
    }
    minted
}

/// The TwiML answering a call refused by `reason` (see the module docs).
pub fn reject_twiml(reason: RejectReason) -> String {
    match reason {
        RejectReason::BlockedCaller => Twiml::new().hangup(),
        RejectReason::ClosedHours => Twiml::new().say(CLOSED_MESSAGE).hangup(),
        RejectReason::OverCapacity => Twiml::new().say(BUSY_MESSAGE).hangup(),
    }
    .render()
}

fn reject_reason(name: &str) -> Option<RejectReason> {
    [
        RejectReason::BlockedCaller,
        RejectReason::ClosedHours,
        RejectReason::OverCapacity,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// Who calls whom, from a voice webhook: `From`/`To` as E.164 when they are numbers,
/// `CallerName`, `ForwardedFrom`.
pub fn parties(hook: &VoiceWebhook) -> CallParties {
    CallParties {
        caller: E164::parse(&hook.from).ok(),
        caller_display_name: hook.caller_name.clone(),
        dialed: E164::parse(&hook.to).ok(),
        diverted_from: hook
            .forwarded_from
            .as_deref()
            .and_then(|f| E164::parse(f).ok()),
        sip_call_id: None,
    }
}

/// The `<Connect><Stream>` answer for an inbound call waiting for its stream: a fresh stream
/// token bound to the webhook's `CallSid`/`AccountSid` and `profile`. 503 when the token cannot
/// be stored (Twilio then tries the number's fallback URL).
async fn answer_connect(
    app: &BridgeServices,
    base: &str,
    profile: &str,
    hook: &VoiceWebhook,
) -> Response {
    let grant = StreamGrant {
        call_sid: Some(hook.call_sid.clone()),
        account_sid: hook.account_sid.clone(),
        profile: profile.to_string(),
        direction: "inbound".into(),
        dialed: None,
        created_at: Utc::now(),
    };
    let Ok(token) = mint_stream_token(app, &grant).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot bind the media stream to the call",
        );
    };
    match connect_twiml(base, &token, profile, "inbound", &hook.from, &hook.to) {
        Ok(body) => xml(body),
        Err(e) => {
            warn!(error = %e, "cannot build the stream TwiML from the public URL");
            error(StatusCode::INTERNAL_SERVER_ERROR, "bad [twilio] public_url")
        }
    }
}

/// `POST /twilio/voice`.
async fn voice(
    State(app): State<Arc<BridgeServices>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let SignedForm { tw, base, form } =
        match signed_form(&app, "voice webhook", &uri, &headers, &body) {
            Ok(signed) => signed,
            Err(refused) => return *refused,
        };
    if !app.accepting.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let hook = match VoiceWebhook::from_params(&form) {
        Ok(h) => h,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let span = tracing::info_span!("call", call_id = %hook.call_sid);
    if tw.voice_mode == TwilioVoiceMode::Sip {
        let sip_uri = tw.openai_sip_uri.clone();
        let binding = signature::call_sid_binding(&tw.auth_token, &hook.call_sid);
        return dial_openai(app, sip_uri, binding, hook)
            .instrument(span)
            .await;
    }
    incoming(app, base, hook).instrument(span).await
}

/// The profile for a voice webhook (chosen as on the SIP path, from `From`/`To` and the
/// `SipHeader_*` parameters), with the parties it was chosen on.
fn select_profile(app: &BridgeServices, hook: &VoiceWebhook) -> (CallParties, Arc<Profile>) {
    let parties = parties(hook);
    let sip_headers: Vec<SipHeader> = hook
        .sip_headers
        .iter()
        .map(|(n, v)| SipHeader::new(n.as_str(), v.as_str()))
        .collect();
    let profile = app
        .calls
        .profiles
        .load()
        .select(&parties, &sip_headers)
        .clone();
    (parties, profile)
}

/// `[twilio] voice_mode = "sip"`: the profile's reject rules answer as in `stream` mode (a
/// `rejected` record keyed by the `CallSid`); an admitted call is answered with
/// [`twilio_dial::dial_sip_twiml`] and gets no record here: its record is the SIP call's,
/// created by the `realtime.call.incoming` webhook, which keeps this `CallSid` as
/// `twilio_call_sid` when the binding we put next to it verifies.
async fn dial_openai(
    app: Arc<BridgeServices>,
    sip_uri: String,
    binding: Option<String>,
    hook: VoiceWebhook,
) -> Response {
    let now = Utc::now();
    let (parties, profile) = select_profile(&app, &hook);
    let active = app.calls.registry().count_for_profile(&profile.name);
    if let Admission::Reject { reason, .. } = profile.admission(&parties, now, active) {
        let mut record = CallRecord::new(&hook.call_sid, Api::TwilioMedia, "twilio-voice", now);
        record.profile = profile.name.clone();
        record.caller = parties.caller.as_ref().map(|n| n.as_str().to_string());
        record.dialed = parties.dialed.as_ref().map(|n| n.as_str().to_string());
        record.state = CallState::Rejected;
        record.ended_at = Some(now);
        record.end_reason = Some(reason.as_str().into());
        match app.calls.store.create_call(&record).await {
            Ok(crate::store::CreateOutcome::Exists(existing)) => {
                info!(state = %existing.state, "voice webhook for a known call: answering as before");
            }
            Ok(crate::store::CreateOutcome::Created) => {
                rejected(&app, &record, reason).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot store the call record; answering anyway");
                metrics::counter!(names::STORE_ERRORS, "op" => "create_call").increment(1);
            }
        }
        return xml(reject_twiml(reason));
    }
    let Some(binding) = binding else {
        warn!("no key to bind the CallSid with: TWILIO_AUTH_TOKEN is empty");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TWILIO_AUTH_TOKEN is empty",
        );
    };
    match twilio_dial::dial_sip_twiml(&sip_uri, &hook.call_sid, &binding) {
        Ok(body) => {
            info!(
                caller = %parties.caller.as_ref().map(|n| mask_number(n.as_str())).unwrap_or_default(),
                profile = %profile.name,
                "twilio voice webhook: dialing OpenAI SIP"
            );
            xml(body)
        }
        Err(e) => {
            warn!(error = %e, "cannot build the <Dial><Sip> TwiML");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad [twilio] openai_sip_uri",
            )
        }
    }
}

/// The event and metric of a call refused by a reject rule.
async fn rejected(app: &BridgeServices, record: &CallRecord, reason: RejectReason) {
    info!(reason = reason.as_str(), "rejecting Twilio call");
    append(
        app,
        CallEvent::new(
            &record.call_id,
            "rejected",
            json!({ "reason": reason.as_str() }),
        ),
    )
    .await;
    metrics::counter!(names::CALLS_ENDED, "state" => "rejected", "reason" => reason.as_str())
        .increment(1);
}

/// A verified voice webhook: profile, record, reject rules, TwiML.
async fn incoming(app: Arc<BridgeServices>, base: String, hook: VoiceWebhook) -> Response {
    let now = Utc::now();
    let (parties, profile) = select_profile(&app, &hook);
    let mut record = CallRecord::new(&hook.call_sid, Api::TwilioMedia, "twilio-voice", now);
    record.profile = profile.name.clone();
    record.caller = parties.caller.as_ref().map(|n| n.as_str().to_string());
    record.dialed = parties.dialed.as_ref().map(|n| n.as_str().to_string());
    record.media = Some(MediaInfo {
        direction: "inbound".into(),
        audio: profile.session.audio.as_str().into(),
        ..MediaInfo::default()
    });
    match app.calls.store.create_call(&record).await {
        Ok(crate::store::CreateOutcome::Created) => {}
        Ok(crate::store::CreateOutcome::Exists(existing)) => {
            info!(state = %existing.state, "voice webhook for a known call: answering as before");
            if existing.state == CallState::Rejected
                && let Some(reason) = existing.end_reason.as_deref().and_then(reject_reason)
            {
                return xml(reject_twiml(reason));
            }
            if existing.state != CallState::Accepting {
                // Its stream started already (or the call ended): a replay of this webhook
                // gets no new stream token.
                return xml(Twiml::new().hangup().render());
            }
            return answer_connect(&app, &base, &existing.profile, &hook).await;
        }
        Err(e) => {
            warn!(error = %e, "cannot store the call record; answering anyway");
            metrics::counter!(names::STORE_ERRORS, "op" => "create_call").increment(1);
        }
    }
    info!(
        caller = %record.caller.as_deref().map(mask_number).unwrap_or_default(),
        dialed = %record.dialed.as_deref().map(mask_number).unwrap_or_default(),
        profile = %profile.name,
        "twilio voice webhook"
    );
    append(
        &app,
        CallEvent::new(
            &record.call_id,
            "twilio_voice_webhook",
            json!({ "profile": profile.name, "direction": hook.direction, "call_status": hook.call_status }),
        ),
    )
    .await;
    let active = app.calls.registry().count_for_profile(&profile.name);
    if let Admission::Reject { reason, .. } = profile.admission(&parties, now, active) {
        record.state = CallState::Rejected;
        record.ended_at = Some(Utc::now());
        record.end_reason = Some(reason.as_str().into());
        save(&app, &record).await;
        rejected(&app, &record, reason).await;
        return xml(reject_twiml(reason));
    }
    answer_connect(&app, &base, &profile.name, &hook).await
}

/// `GET /twilio/media`: signature first, then the upgrade.
async fn media(
    State(app): State<Arc<BridgeServices>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(tw) = app.twilio.as_ref() else {
        return not_configured();
    };
    let Some(base) = public_base(tw, &headers) else {
        return error(StatusCode::BAD_REQUEST, "no Host header");
    };
    let url = stream_url(&base);
    let valid = headers
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sig| {
            signature_scheme(tw, &headers).is_some_and(|s| s.validate_websocket(&url, sig))
        });
    if !valid {
        warn!(%url, "media stream refused: bad or missing X-Twilio-Signature");
        metrics::counter!(super::metric_names::STREAMS, "outcome" => "bad_signature").increment(1);
        return error(StatusCode::FORBIDDEN, "invalid X-Twilio-Signature");
    }
    if !app.accepting.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match ws {
        Ok(ws) => super::ws_upgrade(ws).on_upgrade(move |socket| super::stream::run(app, socket)),
        Err(rejection) => rejection.into_response(),
    }
}

/// Terminal `CallStatus` values of a call that never streamed, and the record they give.
fn terminal(status: &str) -> Option<(CallState, &'static str)> {
    Some(match status {
        "busy" => (CallState::Missed, "busy"),
        "no-answer" => (CallState::Missed, "no_answer"),
        "failed" => (CallState::Missed, "failed"),
        "canceled" => (CallState::Missed, "canceled"),
        "completed" => (CallState::Ended, "completed_without_stream"),
        _ => return None,
    })
}

/// `POST /twilio/status`: call status callbacks (`CallStatus`) and `<Stream>` status callbacks
/// (`StreamEvent`), both stored as call events. A terminal status of a call still `accepting`
/// (its stream never started) ends the record: `missed` with reason `busy`, `no_answer`,
/// `failed` or `canceled`, or `ended` with `completed_without_stream`. A running call is left to
/// its bridge (the stream's `stop` ends it).
async fn status(
    State(app): State<Arc<BridgeServices>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match signed_form(&app, "status callback", &uri, &headers, &body) {
        Ok(signed) => signed.form,
        Err(refused) => return *refused,
    };
    let get = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(call_sid) = get("CallSid") else {
        return error(StatusCode::BAD_REQUEST, "CallSid is missing");
    };
    if let Some(stream_event) = get("StreamEvent") {
        append(
            &app,
            CallEvent::new(
                call_sid,
                "twilio_stream_status",
                json!({
                    "stream_event": stream_event,
                    "stream_sid": get("StreamSid"),
                    "error": get("StreamError"),
                }),
            ),
        )
        .await;
        return StatusCode::OK.into_response();
    }
    let call_status = get("CallStatus").unwrap_or_default();
    append(
        &app,
        CallEvent::new(
            call_sid,
            "twilio_status",
            json!({
                "status": call_status,
                "duration": get("CallDuration"),
                "sequence": get("SequenceNumber"),
                "sip_response_code": get("SipResponseCode"),
            }),
        ),
    )
    .await;
    if let Some((state, reason)) = terminal(call_status) {
        let moved = app
            .calls
            .store
            .transition_call(call_sid, &[CallState::Accepting], state)
            .await
            .unwrap_or(false);
        if moved && let Ok(Some(mut rec)) = app.calls.store.get_call(call_sid).await {
            rec.ended_at = Some(Utc::now());
            rec.end_reason = Some(reason.into());
            rec.media
                .get_or_insert_with(MediaInfo::default)
                .twilio_status = Some(call_status.to_string());
            save(&app, &rec).await;
            info!(call_id = %call_sid, status = call_status, "call ended before its stream started");
            metrics::counter!(names::CALLS_ENDED, "state" => state.as_str(), "reason" => reason)
                .increment(1);
        }
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_url_from_public_base() {
        assert_eq!(
            stream_url("https://voice.example.com"),
            "wss://voice.example.com/twilio/media"
        );
        assert_eq!(
            stream_url("https://x.example/vox"),
            "wss://x.example/vox/twilio/media"
        );
        assert_eq!(stream_url("http://h:8080"), "wss://h:8080/twilio/media");
    }

    #[test]
    fn connect_twiml_carries_parameters_without_query() {
        let xml = connect_twiml(
            "https://voice.example.com",
            "vst_0123456789abcdef0123456789abcdef",
            "support",
            "inbound",
            "+14155550123",
            "+18005550100",
        )
        .unwrap();
        assert!(xml.contains(r#"<Connect><Stream url="wss://voice.example.com/twilio/media" statusCallback="https://voice.example.com/twilio/status">"#), "{xml}");
        assert!(xml.contains(r#"<Parameter name="stream_token" value="vst_0123456789abcdef0123456789abcdef"/><Parameter name="profile" value="support"/>"#));
        assert!(xml.contains(r#"<Parameter name="direction" value="inbound"/>"#));
        assert!(xml.contains(r#"<Parameter name="from" value="+14155550123"/>"#));
        assert!(xml.contains(r#"<Parameter name="to" value="+18005550100"/>"#));
        assert!(connect_twiml("https://h/x?y=1", "vst_x", "p", "inbound", "", "").is_err());
        let long = "x".repeat(600);
        assert!(
            !connect_twiml("https://h", "vst_x", "p", "inbound", &long, "")
                .unwrap()
                .contains("xxxx")
        );
    }

    #[test]
    fn reject_documents() {
        assert!(
            reject_twiml(RejectReason::BlockedCaller).ends_with("<Response><Hangup/></Response>")
        );
        assert!(reject_twiml(RejectReason::ClosedHours).contains("<Say>Sorry, we are closed"));
        assert!(reject_twiml(RejectReason::OverCapacity).contains("<Hangup/></Response>"));
    }
}
