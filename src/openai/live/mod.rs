//! GPT-Live (Live API) SIP: call control and outbound calls over REST ([`control`]), the attach
//! sideband translated into the monitor's events ([`link`]), and transcript stitching
//! ([`stitch`]). Source: <https://developers.openai.com/api/docs/guides/voice-sip?api=live>.
//!
//! A Live call runs through the same [`crate::calls::monitor`] as a Realtime call: only the
//! [`crate::calls::link::Link`] ([`LiveLink`]) and [`crate::calls::link::CallActions`]
//! ([`LiveActions`]) differ.

pub mod control;
pub mod link;
pub mod stitch;

pub use control::{LiveAccept, LiveControl, OutboundError};
pub use link::{LiveActions, LiveLink};

/// Default GPT-Live model (OpenAI's Realtime SIP and voice-sip guides).
pub const DEFAULT_LIVE_MODEL: &str = "gpt-live-1";

/// Default `[session] delegation_model` of an `api = "live"` profile: the Responses model that
/// runs the tool-calling backend of a Live session (`session.delegation.responses.model`,
/// required by the `openai` SDK's `openai.types.live.ResponsesDelegationConfigParam`; the API
/// reference: https://developers.openai.com/api/reference/resources/live). Our choice, not an
/// OpenAI default: a small, fast model, since it only routes function calls to our tools.
pub const DEFAULT_DELEGATION_MODEL: &str = "gpt-5.4-mini";
