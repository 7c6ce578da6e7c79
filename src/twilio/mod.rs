//! Twilio: Media Streams, TwiML, `X-Twilio-Signature`, REST.
//!
//! Building blocks for putting the agent on Twilio calls, following Twilio's public docs
//! (<https://www.twilio.com/docs/voice>,
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>):
//!
//! - [`signature`]: validating (and, for tests, creating) `X-Twilio-Signature` on webhooks, JSON
//!   webhooks with `bodySHA256`, and Media Streams WebSocket upgrades;
//! - [`twiml`]: TwiML documents for `<Connect><Stream>`, `<Dial><Number sendDigits>`,
//!   `<Dial><Sip>`, `<Refer>`, `<Say>`, `<Play digits>`, `<Hangup/>`;
//! - [`media`]: the Media Streams WebSocket JSON messages in both directions;
//! - [`voice`]: the parameters of a voice webhook;
//! - [`rest`]: create and update calls, send SMS, Twilio's error JSON.

pub mod media;
pub mod rest;
pub mod signature;
pub mod twiml;
pub mod voice;
