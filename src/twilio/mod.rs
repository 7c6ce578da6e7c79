//! Twilio: Media Streams, TwiML, `X-Twilio-Signature`, REST.
