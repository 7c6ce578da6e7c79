//! Placing an outbound call whose audio is bridged to the agent.
//!
//! `POST {api_base_url}/2010-04-01/Accounts/{AccountSid}/Calls.json` (Twilio's Call resource) with
//! `To`, `From` = `[twilio] from_number`, inline `Twiml` = the same `<Connect><Stream>` as
//! inbound calls (parameters `stream_token`, `profile`, `direction=outbound`, `from`, `to`; the
//! token is minted before the call is created, so its [`StreamGrant`] has no `CallSid` and names
//! the callee instead, and the bridge binds it through this call's record), `StatusCallback` =
//! `{public_url}/twilio/status` and `StatusCallbackEvent` = `initiated`, `ringing`, `answered`,
//! `completed`. The record (`call_id` = the returned `CallSid`, state `accepting`) waits for the
//! stream, which Twilio opens when the callee answers; a status callback ends it `missed` when
//! the callee does not answer.

use chrono::Utc;
use serde_json::json;
use tracing::info;

use super::http::{connect_twiml, mint_stream_token};
use super::{BridgeServices, STATUS_PATH};
use crate::calls::record::{Api, CallRecord, MediaInfo};
use crate::sip::E164;
use crate::store::{CreateOutcome, StoreError, StreamGrant};
use crate::telemetry::mask_number;
use crate::twilio::rest::{CallInstructions, CreateCall, TwilioError};

/// Status callback events requested for outbound calls.
pub const STATUS_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// What to call.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The callee, E.164.
    pub to: String,
    /// Profile name; `None` = the default profile.
    pub profile: Option<String>,
}

/// Why a call was not placed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// `[twilio] account_sid` or `TWILIO_AUTH_TOKEN` is missing (404).
    #[error("Twilio is not configured: set [twilio] account_sid and TWILIO_AUTH_TOKEN")]
    NotConfigured,
    /// `[twilio] public_url` or `from_number` is empty (409).
    #[error("[twilio] {0} must be set to place calls")]
    Missing(&'static str),
    /// `to` is not E.164 (400).
    #[error("'to' must be an E.164 number: {0}")]
    InvalidNumber(String),
    /// No such profile (400).
    #[error("no prompt profile named {0:?}")]
    UnknownProfile(String),
    /// The TwiML could not be built from the public URL (409).
    #[error("cannot build the stream TwiML: {0}")]
    Twiml(String),
    /// Twilio refused or did not answer (502).
    #[error("Twilio: {0}")]
    Twilio(#[from] TwilioError),
    /// The stream token could not be stored, so the call's stream would be refused (503).
    #[error("cannot store the stream token: {0}")]
    Store(StoreError),
}

impl OutboundError {
    /// The HTTP status for the admin API.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotConfigured => 404,
            Self::Missing(_) | Self::Twiml(_) => 409,
            Self::InvalidNumber(_) | Self::UnknownProfile(_) => 400,
            Self::Twilio(_) => 502,
            Self::Store(_) => 503,
        }
    }
}

/// Places the call and stores its record (returned as stored).
///
/// # Errors
/// [`OutboundError`]; nothing is stored then.
pub async fn place_call(
    app: &BridgeServices,
    req: &OutboundRequest,
) -> Result<CallRecord, OutboundError> {
    let tw = app.twilio.as_ref().ok_or(OutboundError::NotConfigured)?;
    if tw.public_url.is_empty() {
        return Err(OutboundError::Missing("public_url"));
    }
    if tw.from_number.is_empty() {
        return Err(OutboundError::Missing("from_number"));
    }
    let to =
        E164::parse(req.to.trim()).map_err(|_| OutboundError::InvalidNumber(req.to.clone()))?;
    let profile = {
        let profiles = app.calls.profiles.load();
        match &req.profile {
            Some(name) => profiles
                .get(name)
                .cloned()
                .ok_or_else(|| OutboundError::UnknownProfile(name.clone()))?,
            None => profiles.default_profile().clone(),
        }
    };
    let grant = StreamGrant {
        call_sid: None,
        account_sid: app.calls.config.twilio.account_sid.clone(),
        profile: profile.name.clone(),
        direction: "outbound".into(),
        dialed: Some(to.as_str().to_string()),
        created_at: Utc::now(),
    };
    let token = mint_stream_token(app, &grant)
        .await
        .map_err(OutboundError::Store)?;
    let twiml = connect_twiml(
        &tw.public_url,
        &token,
        &profile.name,
        "outbound",
        &tw.from_number,
        to.as_str(),
    )
    .map_err(|e| OutboundError::Twiml(e.to_string()))?;
    let create = CreateCall::new(
        to.as_str(),
        tw.from_number.clone(),
        CallInstructions::Twiml(twiml),
    )
    .status_callback(format!("{}{STATUS_PATH}", tw.public_url), STATUS_EVENTS);
    let call = tw.rest.create_call(&create).await?;
    let mut record = CallRecord::new(&call.sid, Api::TwilioMedia, "twilio-outbound", Utc::now());
    record.profile = profile.name.clone();
    record.caller = E164::parse(&tw.from_number)
        .ok()
        .map(|n| n.as_str().to_string());
    record.dialed = Some(to.as_str().to_string());
    record.media = Some(MediaInfo {
        direction: "outbound".into(),
        audio: profile.session.audio.as_str().into(),
        twilio_status: Some(call.status.clone()),
        ..MediaInfo::default()
    });
    info!(call_id = %call.sid, to = %mask_number(to.as_str()), profile = %profile.name, "outbound call placed");
    let stored = match app.calls.store.create_call(&record).await {
        Ok(CreateOutcome::Created) => record,
        // The stream already started and created it.
        Ok(CreateOutcome::Exists(existing)) => *existing,
        Err(e) => {
            tracing::warn!(error = %e, "cannot store the outbound call record");
            record
        }
    };
    crate::calls::persist::event(
        app,
        &stored.call_id,
        "outbound_call_placed",
        json!({ "profile": profile.name, "twilio_status": call.status }),
    )
    .await;
    Ok(stored)
}
