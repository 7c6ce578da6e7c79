//! `POST /openai/webhook`: verify, dedupe, decide, accept or reject, then start the monitor.
//!
//! Handles `realtime.call.incoming` (Realtime, `rtc_...` ids) and `live.transport.incoming` plus
//! the deprecated `live.call.incoming` (GPT-Live, `live_...` ids) with one flow. When a project
//! subscribes to both APIs one SIP call fires one webhook of each, with different ids; the selected
//! profile's `api` is the single decision owner: the matching delivery is decided, the other
//! acknowledged and left alone (OpenAI's Realtime SIP and voice-sip guides: "the first successful
//! Realtime or Live accept endpoint selects the runtime surface"). Both records carry the SIP
//! `Call-ID`.
//!
//! Order follows OpenAI's Realtime SIP guide
//! (<https://developers.openai.com/api/docs/guides/realtime-sip>): call `/accept`, answer the
//! delivery 200 only after it returned, attach the sideband in the background.
//!
//! The decision runs on its own task and the handler only awaits it: when the delivery client
//! disconnects mid-accept (OpenAI's delivery timeout, a proxy reset) the accept, the record and
//! the monitor start still complete, so the redelivery answered `duplicate` finds the call
//! monitored. A record left in `accepting` anyway (the process died mid-decision) is reconciled
//! after the accept budget by the stuck-accept scan ([`crate::calls::takeover`]).
//!
//! | situation | answer | effect |
//! |---|---|---|
//! | missing/garbled signature headers | 400 | nothing |
//! | bad signature, stale or future timestamp | 401 | nothing |
//! | authentic but not JSON / not the event shape | 400 | nothing |
//! | during shutdown | 503 | nothing (OpenAI retries) |
//! | store writes failing ([`crate::store::resilient`]), or the call record cannot be created | 503 `store_unavailable` | nothing decided (OpenAI redelivers; the call is never accepted without a record) |
//! | duplicate `webhook-id` | 200 | nothing |
//! | unknown event type | 200 | ignored |
//! | the profile's `api` is the other API (one SIP call fires both webhooks) | 200 | record `ignored` with the SIP `Call-ID`, call left alone (never rejected) |
//! | GPT-Live answers `decision_already_made` | 200 | record `ignored` |
//! | call already handled (another delivery) | 200 | nothing |
//! | reject rule | 200 after `/reject` | record `rejected` |
//! | accept 200 | 200 | record `active`, monitor started |
//! | accept 404 | 200 | record `missed` (caller gone) |
//! | accept failed after retries | 503 | record `accept_failed`, `webhook-id` released so a retry runs again |
//! | the decision task panicked | 500 | record left `accepting`; reconciled after the accept budget |
//! | a delivery of a call stuck in `accepting` past the accept budget, monitored nowhere here | 200 | reconciled at once (attach: live → monitored, 404 → `missed`) |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::calls::monitor::{self, Attach};
use crate::calls::persist::{append, event, save};
use crate::calls::record::{Api, CallEvent, CallRecord, CallState};
use crate::calls::services::{CallServices, HasStore};
use crate::calls::takeover::stuck_accept_after;
use crate::config::Secret;
use crate::escalation::twilio_dial::{
    CALL_SID_HEADER, ParentCallSid, UNBOUND_METRIC, parent_call_sid,
};
use crate::openai::live::LiveAccept;
use crate::openai::{CallControl, CallControlError};
use crate::prompts::Admission;
use crate::sip::{CallParties, SipHeader};
use crate::store::api_name as api_label;
use crate::store::{CreateOutcome, ResilientStore, Store};
use crate::telemetry::{mask_number, names};
use crate::webhook::event::{
    Envelope, LIVE_CALL_INCOMING, LIVE_TRANSPORT_INCOMING, LiveTransportIncoming,
    REALTIME_CALL_INCOMING, RealtimeCallIncoming,
};
use crate::webhook::signature::{DeliveryHeaders, Verifier};

/// What the webhook endpoint uses: the call services, the signature verifier, the write health
/// of the store, OpenAI call control, the intake switch and the Twilio auth token (to trust a
/// bound `X-Twilio-CallSid`). Built by `crate::app`.
#[derive(Clone)]
pub struct WebhookServices {
    /// Configuration, store, profiles, monitors.
    pub calls: CallServices,
    /// Webhook signature verifier (holds the key).
    pub verifier: Verifier,
    /// The store's write health: an incoming call is not taken while writes fail.
    pub held_writes: ResilientStore,
    /// OpenAI Realtime call control (reject; the monitor accepts).
    pub call_control: CallControl,
    /// False once shutdown began: webhooks get 503 so OpenAI retries them elsewhere/later.
    pub accepting: Arc<AtomicBool>,
    /// `TWILIO_AUTH_TOKEN`, the key of the `X-Twilio-CallSid` binding; `None` trusts none.
    pub twilio_auth_token: Option<Secret>,
}

impl HasStore for WebhookServices {
    fn store(&self) -> &dyn Store {
        self.calls.store.as_ref()
    }
}

/// An incoming-call event of either API, reduced to what the decision needs.
struct Incoming {
    /// The API that sent it.
    api: Api,
    /// `rtc_...` (Realtime `call_id`) or `live_...` (Live `session_id`).
    id: String,
    sip_headers: Vec<SipHeader>,
    media_security: Option<String>,
    /// The event type, for metrics.
    event: &'static str,
}

impl Incoming {
    fn parse(kind: &str, data: serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
        Some(match kind {
            REALTIME_CALL_INCOMING => {
                serde_json::from_value::<RealtimeCallIncoming>(data).map(|d| Self {
                    api: Api::Realtime,
                    id: d.call_id,
                    sip_headers: d.sip_headers,
                    media_security: d.sip_media_security,
                    event: REALTIME_CALL_INCOMING,
                })
            }
            LIVE_TRANSPORT_INCOMING | LIVE_CALL_INCOMING => {
                let event = if kind == LIVE_CALL_INCOMING {
                    LIVE_CALL_INCOMING
                } else {
                    LIVE_TRANSPORT_INCOMING
                };
                serde_json::from_value::<LiveTransportIncoming>(data).map(|d| Self {
                    api: Api::Live,
                    id: d.session_id,
                    sip_headers: d.sip_headers,
                    media_security: d.sip_media_security,
                    event,
                })
            }
            _ => return None,
        })
    }
}

fn reply(status: StatusCode, event: &str, outcome: &'static str) -> Response {
    metrics::counter!(names::WEBHOOKS, "event" => event.to_string(), "outcome" => outcome)
        .increment(1);
    (status, Json(json!({ "status": outcome }))).into_response()
}

/// The webhook endpoint handler. Takes the raw body: the signature covers the exact bytes.
pub async fn receive(
    State(app): State<Arc<WebhookServices>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = std::time::Instant::now();
    let delivery = DeliveryHeaders::from_map(&headers);
    let verified = match app.verifier.verify(delivery, &body, Utc::now().timestamp()) {
        Ok(v) => v,
        Err(e) => {
            // Only the id (public) and the reason; never the signature or body.
            warn!(webhook_id = ?delivery.id, reason = e.label(), "webhook refused");
            let status = StatusCode::from_u16(e.status()).expect("400 or 401");
            return reply(status, "unverified", e.label());
        }
    };
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            warn!(webhook_id = %verified.webhook_id, error = %e, "authentic webhook with malformed body");
            return reply(StatusCode::BAD_REQUEST, "malformed", "bad_body");
        }
    };
    if !app.accepting.load(Ordering::SeqCst) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &envelope.kind,
            "shutting_down",
        );
    }
    let data = match Incoming::parse(&envelope.kind, envelope.data) {
        None => {
            info!(webhook_id = %verified.webhook_id, event_type = %envelope.kind, "event type not handled; acknowledged");
            return reply(StatusCode::OK, "other", "ignored");
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            warn!(webhook_id = %verified.webhook_id, event_type = %envelope.kind, error = %e, "incoming-call event without its id/sip_headers");
            let ev = if envelope.kind == REALTIME_CALL_INCOMING {
                REALTIME_CALL_INCOMING
            } else {
                LIVE_TRANSPORT_INCOMING
            };
            return reply(StatusCode::BAD_REQUEST, ev, "bad_body");
        }
    };
    let span = info_span!("call", call_id = %data.id, api = api_label(data.api));
    let ev = data.event;
    // The decision and its follow-up (accept, record, monitor start) run on their own task: a
    // delivery client that disconnects (OpenAI's delivery timeout, a proxy reset) drops this
    // handler, which only waits, never the decision half-way.
    let decision =
        tokio::spawn(incoming_call(app, verified.webhook_id, data, received).instrument(span));
    match decision.await {
        Ok(response) => response,
        Err(e) => {
            // A panic in the decision: the record stays `accepting` and is reconciled after
            // the accept budget ([`crate::calls::takeover`]).
            warn!(error = %e, "webhook decision task failed");
            reply(StatusCode::INTERNAL_SERVER_ERROR, ev, "internal_error")
        }
    }
}

async fn incoming_call(
    app: Arc<WebhookServices>,
    webhook_id: String,
    data: Incoming,
    received: std::time::Instant,
) -> Response {
    let ev = data.event;
    if !app.held_writes.health().writes_ok() {
        warn!(%webhook_id, store = %app.held_writes.health().describe(), "store writes failing: incoming call not taken, OpenAI redelivers");
        return reply(StatusCode::SERVICE_UNAVAILABLE, ev, "store_unavailable");
    }
    let now = Utc::now();
    let ttl = chrono::Duration::hours(
        i64::try_from(app.calls.config.webhook.dedupe_ttl_hours).unwrap_or(72),
    );
    let parties = CallParties::from_headers(&data.sip_headers);
    let profiles = app.calls.profiles.load();
    let profile = profiles.select(&parties, &data.sip_headers).clone();
    let mut record = CallRecord::new(&data.id, data.api, &webhook_id, now);
    record.profile = profile.name.clone();
    record.caller = parties.caller.as_ref().map(|n| n.as_str().to_string());
    record.dialed = parties.dialed.as_ref().map(|n| n.as_str().to_string());
    record.sip_call_id = parties.sip_call_id.clone();
    // Calls dialed in by Twilio (`[twilio] voice_mode = "sip"`) name their parent call; only
    // the one our `<Dial><Sip>` bound (HMAC) is trusted.
    record.twilio_call_sid = trusted_parent_call_sid(&app, &data.id, &data.sip_headers);
    let other_owns = profile.api != data.api;
    if other_owns {
        // The other API's delivery of this SIP call owns the decision: record, never decide.
        record.state = CallState::Ignored;
        record.ended_at = Some(now);
        record.end_reason = Some(format!("owned_by_{}", api_label(profile.api)));
    }

    // Dedupe by webhook-id and guard by call_id in one round trip: both writes are conditional
    // and independent, so they run together (and share one commit in the SQLite store).
    let (claim, created) = tokio::join!(
        app.calls.store.claim_webhook(&webhook_id, now, now + ttl),
        app.calls.store.create_call(&record)
    );
    let first_delivery = match claim {
        Ok(first) => first,
        Err(e) => {
            // Degrade: the per-call guard still prevents a second accept.
            warn!(error = %e, "webhook dedupe unavailable");
            metrics::counter!(names::STORE_ERRORS, "op" => "claim_webhook").increment(1);
            true
        }
    };
    match created {
        Ok(CreateOutcome::Created) => {}
        Ok(CreateOutcome::Exists(existing)) => {
            let retry = existing.state == CallState::AcceptFailed
                && app
                    .calls
                    .store
                    .transition_call(
                        &record.call_id,
                        &[CallState::AcceptFailed],
                        CallState::Accepting,
                    )
                    .await
                    .unwrap_or(false);
            if !retry && is_stuck_accept(&app, &existing, now) {
                // The decision that created this record died before finishing (its process or
                // task): find out now (attach; live → monitored, 404 → missed) rather than at
                // the next scan.
                info!("redelivery of a call stuck in accepting; reconciling it now");
                let (app2, call_id) = (app.clone(), record.call_id.clone());
                tokio::spawn(
                    async move { app2.calls.reconcile_one(&call_id).await }
                        .instrument(tracing::Span::current()),
                );
                return reply(StatusCode::OK, ev, "reconciling");
            }
            if !retry {
                if first_delivery {
                    info!(state = %existing.state, "call already handled by another delivery");
                    return reply(StatusCode::OK, ev, "call_exists");
                }
                info!(%webhook_id, "duplicate delivery");
                return reply(StatusCode::OK, ev, "duplicate");
            }
            record.created_at = existing.created_at;
        }
        Err(e) => {
            // Never accept a call whose record cannot be written: OpenAI redelivers the 503
            // (the record guard, not the webhook-id claim, decides a redelivery).
            warn!(error = %e, "cannot create call record; asking OpenAI to redeliver");
            metrics::counter!(names::STORE_ERRORS, "op" => "create_call").increment(1);
            if first_delivery {
                let _ = app.calls.store.release_webhook(&webhook_id).await;
            }
            return reply(StatusCode::SERVICE_UNAVAILABLE, ev, "store_unavailable");
        }
    }
    if other_owns {
        info!(
            %webhook_id,
            sip_call_id = ?record.sip_call_id,
            profile = %profile.name,
            owner_api = api_label(profile.api),
            "delivery of the API this profile does not use: acknowledged, call left alone"
        );
        event(
            &app,
            &record.call_id,
            "left_alone",
            json!({
                "webhook_id": webhook_id,
                "profile": profile.name,
                "owner_api": api_label(profile.api),
                "sip_call_id": record.sip_call_id,
            }),
        )
        .await;
        metrics::counter!(names::CALLS_ENDED, "state" => "ignored", "reason" => "other_api")
            .increment(1);
        return reply(StatusCode::OK, ev, "left_alone");
    }
    info!(
        %webhook_id,
        caller = %record.caller.as_deref().map(mask_number).unwrap_or_default(),
        dialed = %record.dialed.as_deref().map(mask_number).unwrap_or_default(),
        profile = %profile.name,
        media_security = ?data.media_security,
        "incoming call"
    );
    let received_event = CallEvent::new(
        &record.call_id,
        "webhook_received",
        json!({ "webhook_id": webhook_id, "profile": profile.name, "api": api_label(data.api), "sip_call_id": record.sip_call_id }),
    );

    let active = app.calls.registry().count_for_profile(&profile.name);
    if let Admission::Reject { status, reason } = profile.admission(&parties, now, active) {
        info!(reason = reason.as_str(), status, "rejecting call");
        append(&app, received_event.clone()).await;
        let result = match data.api {
            Api::Live => {
                app.calls
                    .monitors
                    .live
                    .reject(&record.call_id, status)
                    .await
            }
            _ => app.call_control.reject(&record.call_id, status).await,
        };
        match &result {
            Ok(()) | Err(CallControlError::NotFound { .. }) => {
                record.state = CallState::Rejected;
                record.ended_at = Some(Utc::now());
                record.end_reason = Some(reason.as_str().to_string());
                save(&app, &record).await;
                event(
                    &app,
                    &record.call_id,
                    "rejected",
                    json!({ "reason": reason.as_str(), "status": status, "ok": result.is_ok() }),
                )
                .await;
                metrics::counter!(names::CALLS_ENDED, "state" => "rejected", "reason" => reason.as_str()).increment(1);
                return reply(StatusCode::OK, ev, "rejected");
            }
            Err(CallControlError::DecisionAlreadyMade { .. }) => {
                return already_decided(&app, record, received_event, ev).await;
            }
            Err(e) => {
                warn!(error = %e, "reject failed; asking OpenAI to redeliver");
                return decision_failed(&app, record, &webhook_id, e, ev).await;
            }
        }
    }

    let budget = std::time::Duration::from_millis(app.calls.config.openai.accept_retry_budget_ms);
    let (attempts, result) = match data.api {
        Api::Live => {
            let session = profile.live_session();
            match app
                .calls
                .monitors
                .live
                .accept_with_retry(&record.call_id, &session, budget)
                .await
            {
                LiveAccept::Accepted { attempts } => (attempts, Ok(())),
                LiveAccept::AlreadyDecided { attempts } => (
                    attempts,
                    Err(CallControlError::DecisionAlreadyMade { status: 409 }),
                ),
                LiveAccept::Failed { attempts, error } => (attempts, Err(error)),
            }
        }
        _ => {
            let session = profile.realtime_session();
            app.call_control
                .accept_with_retry(&record.call_id, &session, budget)
                .await
        }
    };
    let latency = received.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            metrics::histogram!(names::ACCEPT_LATENCY, "outcome" => "accepted").record(latency);
            record.state = CallState::Active;
            record.accepted_at = Some(Utc::now());
            info!(attempts, latency_ms = latency * 1000.0, "call accepted");
            let accepted = CallEvent::new(
                &record.call_id,
                "accepted",
                json!({ "attempts": attempts, "latency_ms": (latency * 1000.0).round() }),
            );
            // Register now (capacity counts and the operator API see the call at once), answer
            // OpenAI, and persist then attach in the background, in that order.
            let Some(registration) = app
                .calls
                .registry()
                .register(&record.call_id, &profile.name)
            else {
                return reply(StatusCode::OK, ev, "call_exists");
            };
            let app2 = app.clone();
            tokio::spawn(
                async move {
                    // Issued together, so the SQLite store commits them in one batch (its queue
                    // keeps this order).
                    tokio::join!(
                        save(&app2, &record),
                        append(&app2, received_event),
                        append(&app2, accepted)
                    );
                    monitor::spawn_registered(
                        app2.calls.monitors.clone(),
                        record,
                        profile,
                        Attach::Fresh,
                        registration,
                    );
                }
                .instrument(tracing::Span::current()),
            );
            reply(StatusCode::OK, ev, "accepted")
        }
        Err(CallControlError::NotFound { code }) => {
            metrics::histogram!(names::ACCEPT_LATENCY, "outcome" => "missed").record(latency);
            info!(?code, "accept answered 404: the caller is gone");
            record.state = CallState::Missed;
            record.ended_at = Some(Utc::now());
            record.end_reason = Some("accept_404".into());
            save(&app, &record).await;
            append(&app, received_event).await;
            event(&app, &record.call_id, "missed", json!({ "code": code })).await;
            metrics::counter!(names::CALLS_ENDED, "state" => "missed", "reason" => "accept_404")
                .increment(1);
            reply(StatusCode::OK, ev, "missed")
        }
        Err(CallControlError::DecisionAlreadyMade { .. }) => {
            metrics::histogram!(names::ACCEPT_LATENCY, "outcome" => "already_decided")
                .record(latency);
            already_decided(&app, record, received_event, ev).await
        }
        Err(e) => {
            metrics::histogram!(names::ACCEPT_LATENCY, "outcome" => "failed").record(latency);
            warn!(error = %e, attempts, "accept failed");
            append(&app, received_event).await;
            decision_failed(&app, record, &webhook_id, &e, ev).await
        }
    }
}

/// True when `existing` has been `accepting` for longer than
/// [`stuck_accept_after`] and no monitor runs for it here.
fn is_stuck_accept(
    app: &WebhookServices,
    existing: &CallRecord,
    now: chrono::DateTime<Utc>,
) -> bool {
    let after = chrono::Duration::from_std(stuck_accept_after(&app.calls.config))
        .unwrap_or(chrono::Duration::MAX);
    existing.state == CallState::Accepting
        && existing.api != Api::TwilioMedia
        && existing
            .created_at
            .checked_add_signed(after)
            .is_some_and(|stuck_at| stuck_at <= now)
        && !app.calls.registry().contains(&existing.call_id)
}

/// Accept or reject failed in a way a redelivery may fix: record it, release the `webhook-id`
/// and answer 503 so OpenAI retries.
async fn decision_failed(
    app: &WebhookServices,
    mut record: CallRecord,
    webhook_id: &str,
    e: &CallControlError,
    ev: &str,
) -> Response {
    record.state = CallState::AcceptFailed;
    save(app, &record).await;
    event(
        app,
        &record.call_id,
        "accept_failed",
        json!({ "error": e.to_string(), "kind": e.label() }),
    )
    .await;
    if let Err(err) = app.calls.store.release_webhook(webhook_id).await {
        warn!(error = %err, "cannot release webhook id; a retry will be treated as a duplicate");
    }
    reply(StatusCode::SERVICE_UNAVAILABLE, ev, "accept_failed")
}

/// GPT-Live said `decision_already_made` to our first decision: another owner decided (the
/// Realtime surface, another instance). Recorded, nothing else touched.
async fn already_decided(
    app: &WebhookServices,
    mut record: CallRecord,
    received_event: CallEvent,
    ev: &str,
) -> Response {
    info!("decision already made elsewhere; leaving the session alone");
    record.state = CallState::Ignored;
    record.ended_at = Some(Utc::now());
    record.end_reason = Some("decision_already_made".into());
    save(app, &record).await;
    append(app, received_event).await;
    event(app, &record.call_id, "decision_already_made", json!({})).await;
    metrics::counter!(names::CALLS_ENDED, "state" => "ignored", "reason" => "decision_already_made")
        .increment(1);
    reply(StatusCode::OK, ev, "already_decided")
}

/// [`parent_call_sid`] for the SIP webhook of `call_id`: the bound `CallSid`, to keep as the
/// record's `twilio_call_sid`. An unbound one is ignored: logged (warn), counted
/// ([`UNBOUND_METRIC`]) and recorded as an `untrusted_sip_header` event of the call.
fn trusted_parent_call_sid(
    app: &Arc<WebhookServices>,
    call_id: &str,
    sip_headers: &[SipHeader],
) -> Option<String> {
    match parent_call_sid(sip_headers, app.twilio_auth_token.as_ref()) {
        ParentCallSid::Absent => None,
        ParentCallSid::Bound(sid) => Some(sid),
        ParentCallSid::Unbound(claimed) => {
            warn!(claimed = %claimed, "X-Twilio-CallSid without our binding; ignored");
            metrics::counter!(UNBOUND_METRIC).increment(1);
            let event = CallEvent::new(
                call_id,
                "untrusted_sip_header",
                json!({ "header": CALL_SID_HEADER, "value": claimed, "reason": "unbound" }),
            );
            let app = app.clone();
            tokio::spawn(async move { append(&app, event).await });
            None
        }
    }
}
