//! The two monitor seams on the media path: [`MediaLink`] (the model's non-audio events in, the
//! monitor's client events out) and [`TwilioActions`] (transfer and hang-up as Twilio REST call
//! updates, Twilio's Call resource; TwiML `<Dial>`/`<Number>`).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::calls::link::{CallActions, Link, LinkEvent, ReconnectError};
use crate::sip::TransferTarget;
use crate::twilio::rest::{CallUpdate, TwilioRest};
use crate::twilio::twiml::{Dial, Number, Response, SipTarget};

/// Where a [`MediaLink`] writes: the model socket of the call's bridge.
#[async_trait]
pub trait ModelWriter: Send + Sync {
    /// Writes one client event (JSON text) to the model socket.
    ///
    /// # Errors
    /// When the socket is gone.
    async fn send(&self, text: String) -> Result<(), String>;
    /// Cuts off the agent audio still buffered at Twilio, as a barge-in does (`clear` +
    /// `conversation.item.truncate`); nothing when none is buffered.
    async fn cut_playback(&self);
}

/// A [`Link`] fed by the bridge.
///
/// - `recv`: model events except audio deltas, plus the bridge's synthesised events (DTMF,
///   `output_audio_buffer.started`/`stopped`), then `Closed { clean: true }` when the Twilio
///   stream ended (caller hang-up or a REST redirect such as a transfer) or the model closed
///   with a close frame, `Closed { clean: false }` when the model socket dropped.
/// - `send`: written to the model socket by the calling (monitor) task; a `response.cancel`
///   first cuts off the agent audio buffered at Twilio (as a barge-in does), so a hand-off line
///   plays at once.
/// - `reconnect`: not possible (a new Realtime session would not have the conversation), so it
///   fails and the monitor ends the call (`sideband_lost`); the bridge then closes the Twilio
///   stream, which ends the call.
/// - `close`: nothing; the bridge closes both sockets when the monitor returns.
pub struct MediaLink {
    events: mpsc::UnboundedReceiver<LinkEvent>,
    model: Arc<dyn ModelWriter>,
    closed: bool,
}

impl MediaLink {
    /// A link reading `events` and writing through `model`.
    pub fn new(events: mpsc::UnboundedReceiver<LinkEvent>, model: Arc<dyn ModelWriter>) -> Self {
        Self {
            events,
            model,
            closed: false,
        }
    }
}

#[async_trait]
impl Link for MediaLink {
    async fn recv(&mut self) -> LinkEvent {
        if self.closed {
            return LinkEvent::Closed { clean: false };
        }
        match self.events.recv().await {
            Some(ev @ LinkEvent::Closed { .. }) => {
                self.closed = true;
                ev
            }
            Some(ev) => ev,
            None => {
                self.closed = true;
                LinkEvent::Closed { clean: false }
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        if is_response_cancel(&text) {
            self.model.cut_playback().await;
        }
        self.model.send(text).await
    }

    async fn reconnect(&mut self) -> Result<(), ReconnectError> {
        Err(ReconnectError::GaveUp(
            "a bridged Realtime session cannot be resumed".into(),
        ))
    }

    async fn close(&mut self) {}
}

fn is_response_cancel(text: &str) -> bool {
    text.contains("response.cancel")
        && serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("type")
                    .and_then(|t| t.as_str())
                    .map(|t| t == "response.cancel")
            })
            .unwrap_or(false)
}

/// Transfers and hang-ups of one Twilio call through the REST API.
#[derive(Clone, Debug)]
pub struct TwilioActions {
    /// The account's REST client.
    pub rest: TwilioRest,
    /// The call (`CA…`).
    pub call_sid: String,
}

/// The TwiML a transfer to `target` runs: `<Dial><Number>+E164</Number></Dial>` for `tel:` targets,
/// `<Dial><Sip>uri</Sip></Dial>` for `sip:`/`sips:` ones (TwiML `<Dial>`/`<Number>`). The call's
/// caller ID is kept (no `callerId`); nothing follows the `<Dial>`, so the call ends when the
/// dialed leg does.
///
/// # Errors
/// The TwiML builder's refusal (a SIP URI with its own `?headers` part).
pub fn transfer_twiml(target: &TransferTarget) -> Result<String, String> {
    let dial = match target {
        TransferTarget::Tel(n) => Dial::new(Number::new(n.as_str()).map_err(|e| e.to_string())?),
        TransferTarget::Sip(uri) => Dial::new(SipTarget::new(uri).map_err(|e| e.to_string())?),
    };
    Ok(Response::new().dial(dial).render())
}

#[async_trait]
impl CallActions for TwilioActions {
    /// Redirects the live call to [`transfer_twiml`]. Twilio then ends the stream (`stop`),
    /// which the monitor takes as the transfer's success (Twilio's Call resource).
    async fn refer(&self, target: &TransferTarget) -> Result<(), String> {
        let twiml = transfer_twiml(target)?;
        self.rest
            .update_call(&self.call_sid, &CallUpdate::Twiml(twiml))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `Status=completed`.
    async fn hangup(&self) -> Result<(), String> {
        self.rest
            .update_call(&self.call_sid, &CallUpdate::Complete)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_twiml_by_target_kind() {
        let tel = TransferTarget::parse("tel:+14155550100").unwrap();
        assert_eq!(
            transfer_twiml(&tel).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number>+14155550100</Number></Dial></Response>"#
        );
        let sip = TransferTarget::parse("sip:queue@pbx.example.com").unwrap();
        assert!(
            transfer_twiml(&sip)
                .unwrap()
                .contains("<Dial><Sip>sip:queue@pbx.example.com</Sip></Dial>")
        );
    }

    #[test]
    fn cancel_detection() {
        assert!(is_response_cancel(r#"{"type":"response.cancel"}"#));
        assert!(!is_response_cancel(
            r#"{"type":"response.create","response":{"instructions":"response.cancel"}}"#
        ));
    }
}
