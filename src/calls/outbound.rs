//! Outbound calls on GPT-Live (`POST /v1/calls` on the admin API, `voxmachina call --api live`).
//!
//! Flow (OpenAI's voice-sip guide (`?api=live`)): `POST /live/sessions` with the profile's Live
//! session and a SIP transport to an E.164 destination through `[openai.live_trunk]` (digest auth,
//! password from a named secret looked up like tool secrets: `[tools] secrets_dir/NAME`, then
//! `$CREDENTIALS_DIRECTORY/NAME`, then `VOXMACHINA_SECRET_<NAME>`) — sent **once**, because creates
//! are not deduplicated; then the monitor attaches at once ([`Attach::Outbound`]) and follows
//! `transport.ringing`, `transport.answered` (greeting) or `transport.failed` (call ends,
//! `end_reason` `transport_failed`, the error code in the `transport_failed` event). Realtime
//! cannot place calls.

use chrono::Utc;
use serde_json::json;
use tracing::{info, warn};

use crate::calls::monitor::{self, Attach};
use crate::calls::record::{Api, CallEvent, CallRecord, CallState};
use crate::calls::services::CallServices;
use crate::openai::live::OutboundError;
use crate::sip::E164;

/// The `webhook_id` recorded for calls we placed (no webhook created them).
pub const OUTBOUND_WEBHOOK_ID: &str = "outbound";

/// Why an outbound call was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Bad request: unknown profile, a profile not on `api = "live"`, a destination that is not
    /// E.164.
    #[error("{0}")]
    Invalid(String),
    /// Outbound calls are not configured here (`[openai.live_trunk]` or its password secret
    /// missing).
    #[error("{0}")]
    NotConfigured(String),
    /// OpenAI refused or the outcome is unknown; see [`OutboundError`].
    #[error(transparent)]
    OpenAi(#[from] OutboundError),
}

/// Places a GPT-Live outbound call to `to` with profile `profile_name` and starts its monitor.
/// Returns the stored record (`call_id` = the `live_...` session id, state `active`).
///
/// # Errors
/// [`PlaceError`]; on [`OutboundError::Ambiguous`] nothing is retried and nothing recorded (no
/// session id is known).
pub async fn place_live_call(
    app: &CallServices,
    profile_name: &str,
    to: &str,
) -> Result<CallRecord, PlaceError> {
    let destination = E164::parse(to)
        .map_err(|e| PlaceError::Invalid(format!("destination must be E.164: {e}")))?;
    let profile = app
        .profiles
        .load()
        .get(profile_name)
        .cloned()
        .ok_or_else(|| PlaceError::Invalid(format!("unknown profile {profile_name:?}")))?;
    if profile.api != Api::Live {
        return Err(PlaceError::Invalid(format!(
            "profile {profile_name:?} is not on api = \"live\"; outbound calls need GPT-Live"
        )));
    }
    let trunk = app.config.openai.live_trunk.as_ref().ok_or_else(|| {
        PlaceError::NotConfigured("outbound calls are off: configure [openai.live_trunk]".into())
    })?;
    let password =
        crate::tools::secret_lookup(&app.config.tools.secrets_dir)(&trunk.password_secret)
            .ok_or_else(|| {
                PlaceError::NotConfigured(format!(
                    "the trunk password secret {:?} is not set",
                    trunk.password_secret
                ))
            })?;
    let session = profile.live_session();
    let session_id = match app
        .monitors
        .live
        .create_outbound(&session, &destination, trunk, &password)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            warn!(error = %e, profile = %profile.name, "outbound call not placed");
            return Err(e.into());
        }
    };
    let now = Utc::now();
    let mut record = CallRecord::new(&session_id, Api::Live, OUTBOUND_WEBHOOK_ID, now);
    record.profile = profile.name.clone();
    record.caller = Some(trunk.caller_number.clone());
    record.dialed = Some(destination.as_str().to_string());
    record.state = CallState::Active;
    record.accepted_at = Some(now);
    info!(call_id = %session_id, profile = %profile.name, "outbound call created");
    if let Err(e) = app.store.create_call(&record).await {
        warn!(error = %e, "cannot store the outbound call record");
    }
    if let Err(e) = app
        .store
        .append_event(&CallEvent::new(
            &session_id,
            "outbound_created",
            json!({ "profile": profile.name, "destination": destination.as_str() }),
        ))
        .await
    {
        warn!(error = %e, "cannot store call event");
    }
    monitor::spawn(
        app.monitors.clone(),
        record.clone(),
        profile,
        Attach::Outbound,
    );
    Ok(record)
}
