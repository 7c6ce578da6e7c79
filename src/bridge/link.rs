//! The two monitor seams on the media path: [`MediaLink`] (the model's non-audio events in, the
//! monitor's client events out) and [`TwilioActions`] (transfer and hang-up as Twilio REST call
//! updates, Twilio's Call resource; TwiML `<Dial>`/`<Number>`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Bytes of model events a [`MediaLink`] may hold for a monitor that has not read them yet
/// (8 MiB: at the sideband's 4 MiB message cap, two whole messages; at a normal call's pace,
/// minutes of transcript deltas). Each queued event counts its text plus
/// [`QUEUED_EVENT_OVERHEAD`].
pub const MAX_LINK_BACKLOG_BYTES: usize = 8 << 20;

/// What one queued event costs beyond its text (the queue node and the `String` header), in
/// bytes, so a flood of empty events is bounded too.
pub const QUEUED_EVENT_OVERHEAD: usize = 64;

/// The bridge's side of a [`MediaLink`]: queues model events for the call's monitor, bounded
/// in bytes.
///
/// A monitor that stops reading (a stalled store, a bug) must not let the model's events pile
/// up in memory: once [`MAX_LINK_BACKLOG_BYTES`] (or the limit given to [`media_link_channel`])
/// are queued, the sender stops queueing, drops every later event and queues one
/// `Closed { clean: false }`, so the monitor, once it reads again, gets every event queued
/// before the overflow and then a dropped link, and ends the call (`sideband_lost`: a bridged
/// session cannot be reattached). Only this call is affected.
#[derive(Debug)]
pub struct LinkSender {
    tx: mpsc::UnboundedSender<LinkEvent>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    overflowed: AtomicBool,
    closed: AtomicBool,
}

/// What [`LinkSender::text`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued for the monitor.
    Yes,
    /// Dropped: this event overflowed the backlog; the link is now closed (reported once).
    Overflowed,
    /// Dropped: the link was already closed or overflowed, or the monitor is gone.
    Dropped,
}

impl LinkSender {
    /// Queues one model event (JSON text) for the monitor.
    pub fn text(&self, text: String) -> Queued {
        if self.closed.load(Ordering::SeqCst) || self.overflowed.load(Ordering::SeqCst) {
            return Queued::Dropped;
        }
        let cost = text.len() + QUEUED_EVENT_OVERHEAD;
        let before = self.queued.fetch_add(cost, Ordering::SeqCst);
        if before + cost > self.max_bytes {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
            if self.overflowed.swap(true, Ordering::SeqCst) {
                return Queued::Dropped;
            }
            if !self.closed.swap(true, Ordering::SeqCst) {
                let _ = self.tx.send(LinkEvent::Closed { clean: false });
            }
            return Queued::Overflowed;
        }
        if self.tx.send(LinkEvent::Text(text)).is_err() {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
            return Queued::Dropped;
        }
        Queued::Yes
    }

    /// Reports the end of the model connection, once (after an overflow, the overflow's
    /// `Closed { clean: false }` stands).
    pub fn close(&self, clean: bool) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(LinkEvent::Closed { clean });
        }
    }

    /// Bytes queued and not yet read by the monitor.
    pub fn backlog_bytes(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

/// A bounded queue from the bridge to the call's monitor: the bridge keeps the
/// [`LinkSender`], the monitor reads the [`MediaLink`] built from the receiver half.
/// `max_bytes` bounds what may wait unread ([`MAX_LINK_BACKLOG_BYTES`] in production).
pub fn media_link_channel(max_bytes: usize) -> (LinkSender, LinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        LinkSender {
            tx,
            queued: queued.clone(),
            max_bytes,
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        },
        LinkReceiver { rx, queued },
    )
}

/// The monitor's half of [`media_link_channel`]; give it to [`MediaLink::new`].
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::UnboundedReceiver<LinkEvent>,
    queued: Arc<AtomicUsize>,
}

impl LinkReceiver {
    async fn recv(&mut self) -> Option<LinkEvent> {
        let ev = self.rx.recv().await;
        if let Some(LinkEvent::Text(t)) = &ev {
            self.queued
                .fetch_sub(t.len() + QUEUED_EVENT_OVERHEAD, Ordering::SeqCst);
        }
        ev
    }
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
    events: LinkReceiver,
    model: Arc<dyn ModelWriter>,
    closed: bool,
}

impl MediaLink {
    /// A link reading `events` and writing through `model`.
    pub fn new(events: LinkReceiver, model: Arc<dyn ModelWriter>) -> Self {
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

    struct NoModel;

    #[async_trait]
    impl ModelWriter for NoModel {
        async fn send(&self, _text: String) -> Result<(), String> {
            Err("no model in this test".into())
        }
        async fn cut_playback(&self) {}
    }

    fn link(max_bytes: usize) -> (LinkSender, MediaLink) {
        let (tx, rx) = media_link_channel(max_bytes);
        (tx, MediaLink::new(rx, Arc::new(NoModel)))
    }

    #[tokio::test]
    async fn a_stalled_monitor_bounds_the_backlog_and_then_sees_a_dropped_link() {
        let event = r#"{"type":"response.output_audio_transcript.delta","delta":"hi"}"#;
        let cost = event.len() + QUEUED_EVENT_OVERHEAD;
        let (tx, mut link) = link(cost * 3);
        // The monitor reads nothing while the model keeps talking.
        assert_eq!(tx.text(event.into()), Queued::Yes);
        assert_eq!(tx.text(event.into()), Queued::Yes);
        assert_eq!(tx.text(event.into()), Queued::Yes);
        assert_eq!(tx.backlog_bytes(), cost * 3);
        assert_eq!(tx.text(event.into()), Queued::Overflowed);
        for _ in 0..1000 {
            assert_eq!(tx.text(event.into()), Queued::Dropped);
        }
        assert_eq!(tx.backlog_bytes(), cost * 3, "nothing more was queued");
        // A later clean close does not replace the overflow's drop.
        tx.close(true);
        // Everything queued before the overflow arrives, in order, then the drop.
        for _ in 0..3 {
            match link.recv().await {
                LinkEvent::Text(t) => assert_eq!(t, event),
                other => panic!("expected the queued event, got {other:?}"),
            }
        }
        assert!(matches!(
            link.recv().await,
            LinkEvent::Closed { clean: false }
        ));
        assert!(matches!(
            link.recv().await,
            LinkEvent::Closed { clean: false }
        ));
        assert_eq!(tx.backlog_bytes(), 0);
    }

    #[tokio::test]
    async fn a_reading_monitor_never_overflows_and_sees_the_clean_close() {
        let (tx, mut link) = link(1024);
        for i in 0..10_000 {
            let text = format!(r#"{{"type":"x","n":{i}}}"#);
            assert_eq!(tx.text(text.clone()), Queued::Yes);
            match link.recv().await {
                LinkEvent::Text(t) => assert_eq!(t, text),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(tx.backlog_bytes(), 0);
        tx.close(true);
        tx.close(false);
        assert!(matches!(
            link.recv().await,
            LinkEvent::Closed { clean: true }
        ));
        assert_eq!(tx.text("{}".into()), Queued::Dropped);
    }

    #[test]
    fn empty_events_cost_their_overhead() {
        let (tx, _link) = link(QUEUED_EVENT_OVERHEAD * 2);
        assert_eq!(tx.text(String::new()), Queued::Yes);
        assert_eq!(tx.text(String::new()), Queued::Yes);
        assert_eq!(tx.text(String::new()), Queued::Overflowed);
    }
}
