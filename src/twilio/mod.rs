//! Twilio: Media Streams, TwiML, `X-Twilio-Signature`, REST.
//!
//! Building blocks for putting the agent on Twilio calls, following Twilio's public docs
//! (<https://www.twilio.com/docs/voice>,
//! <https://www.twilio.com/docs/usage/webhooks/webhooks-security>):
//!
//! - [`signature`]: validating (and, for tests, creating) `X-Twilio-Signature` on webhooks, JSON
//!   webhooks with `bodySHA256`, and Media Streams WebSocket upgrades (§2, §1.7);
//! - [`twiml`]: TwiML documents for `<Connect><Stream>`, `<Dial><Number sendDigits>`,
//!   `<Dial><Sip>`, `<Refer>`, `<Say>`, `<Play digits>`, `<Hangup/>` (§1.1, §5);
//! - [`media`]: the Media Streams WebSocket JSON messages in both directions (§1.3, §1.4);
//! - [`voice`]: the parameters of a voice webhook (§3);
//! - [`rest`]: create and update calls, send SMS, Twilio's error JSON (§4).

pub mod media;
pub mod rest;
pub mod signature;
pub mod twiml;
pub mod voice;
