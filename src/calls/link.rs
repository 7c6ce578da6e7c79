//! The two seams between a call monitor and the outside world, so one monitor serves every call
//! path:
//!
//! - [`Link`]: the JSON event connection to the model. For SIP calls this is the Realtime
//!   sideband ([`SidebandLink`]); for the Twilio Media Streams path it is the bridge's Realtime
//!   WebSocket with audio events taken out.
//! - [`CallActions`]: how the call itself is transferred or hung up. For SIP calls, OpenAI's
//!   `/refer` and `/hangup` ([`OpenAiActions`]); for Twilio calls, a REST call update.

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::config::{MonitorConfig, Secret};
use crate::openai::CallControl;
use crate::openai::sideband::{self, SidebandError, SidebandStream};
use crate::sip::TransferTarget;

/// What a [`Link`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// One JSON text frame (a Realtime server event).
    Text(String),
    /// The connection ended; `clean` when the peer sent a close frame.
    Closed {
        /// A close frame was received (a normal end), rather than a drop.
        clean: bool,
    },
}

/// Why a [`Link::reconnect`] did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconnectError {
    /// The peer says the call is over (the sideband upgrade answered 404).
    #[error("the call is gone")]
    CallGone,
    /// Attempts ran out or reconnecting is not possible on this link.
    #[error("gave up: {0}")]
    GaveUp(String),
}

/// Most DTMF keys one `send_dtmf` call may press (the built-in tool's schema allows the same).
pub const MAX_DTMF_KEYS: usize = 32;

/// Why DTMF could not be sent ([`Link::send_dtmf`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// This call path cannot send DTMF (the Realtime SIP sideband has no such client event;
    /// the Twilio Media Streams socket cannot carry it).
    #[error("sending DTMF is not possible on this call path")]
    Unsupported,
    /// The keys are not 1 to [`MAX_DTMF_KEYS`] of `0`-`9`, `*`, `#`, `A`-`D`.
    #[error("invalid DTMF keys: {0}")]
    Invalid(String),
    /// The connection refused the event (it is closed).
    #[error("sending DTMF failed: {0}")]
    Send(String),
}

/// The DTMF keys of `input` in upper case: 1 to [`MAX_DTMF_KEYS`] of `0`-`9`, `*`, `#` and
/// `A`-`D` (`a`-`d` accepted). These are the sixteen DTMF events of RFC 4733 §3.2 (events 0-15)
/// and the keys the `openai` SDK documents for `transport.dtmf.send`
/// (`openai.types.live.connect_client_event.TransportDtmfSend.event`). No pause character: no
/// reference defines one for GPT-Live.
///
/// # Errors
/// [`DtmfError::Invalid`] naming the problem (never echoing more than the first bad key).
pub fn dtmf_keys(input: &str) -> Result<String, DtmfError> {
    let count = input.chars().count();
    if count == 0 || count > MAX_DTMF_KEYS {
        return Err(DtmfError::Invalid(format!(
            "{count} keys; send 1 to {MAX_DTMF_KEYS}"
        )));
    }
    if let Some(bad) = input
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'a'..='d')))
    {
        return Err(DtmfError::Invalid(format!(
            "{bad:?} is not a DTMF key (0-9, *, #, A-D)"
        )));
    }
    Ok(input.to_ascii_uppercase())
}

/// A model event connection the monitor reads from and writes to.
#[async_trait]
pub trait Link: Send {
    /// The next event. After [`LinkEvent::Closed`] only [`Link::reconnect`] makes sense.
    async fn recv(&mut self) -> LinkEvent;
    /// Sends one client event (JSON text).
    ///
    /// # Errors
    /// When the connection is gone; the read side reports the close.
    async fn send(&mut self, text: String) -> Result<(), String>;
    /// Re-establishes the connection after an unclean close, with the link's own backoff.
    ///
    /// # Errors
    /// [`ReconnectError`].
    async fn reconnect(&mut self) -> Result<(), ReconnectError>;
    /// Closes the connection without touching the call (detach).
    async fn close(&mut self);
    /// After the monitor ended the call, waits (bounded) for the peer's authoritative end event and
    /// returns it as a JSON text frame. Only GPT-Live has one (`session.closed` with the final
    /// usage, OpenAI's voice-sip guide (`?api=live`) step 6); the default returns `None` at once.
    async fn await_end(&mut self) -> Option<String> {
        None
    }
    /// Presses DTMF `keys` (already checked by [`dtmf_keys`]) on the call, in order; returns how
    /// many were sent. Only GPT-Live can ([`crate::openai::live::link::LiveLink`]); the default
    /// is [`DtmfError::Unsupported`].
    ///
    /// # Errors
    /// [`DtmfError`].
    async fn send_dtmf(&mut self, keys: &str) -> Result<usize, DtmfError> {
        let _ = keys;
        Err(DtmfError::Unsupported)
    }
}

/// Transfers and hang-ups of the call itself.
#[async_trait]
pub trait CallActions: Send + Sync {
    /// Hands the caller to `target`. `Ok` means the request was relayed, not that it worked.
    ///
    /// # Errors
    /// A description of the failure (recorded in the call's events).
    async fn refer(&self, target: &TransferTarget) -> Result<(), String>;
    /// Ends the call.
    ///
    /// # Errors
    /// A description of the failure.
    async fn hangup(&self) -> Result<(), String>;
}

/// The Realtime sideband `{sideband_url}?call_id=...` as a [`Link`], reconnecting with bounded
/// exponential backoff (`[monitor]` settings).
pub struct SidebandLink {
    url: String,
    call_id: String,
    api_key: Secret,
    config: MonitorConfig,
    ws: Option<SidebandStream>,
}

impl SidebandLink {
    /// Connects (with retries) to the sideband of `call_id`.
    ///
    /// # Errors
    /// [`SidebandError`] from the last attempt; permanent errors (404, 401) are not retried.
    pub async fn connect(
        url: &str,
        call_id: &str,
        api_key: &Secret,
        config: &MonitorConfig,
    ) -> Result<Self, SidebandError> {
        let mut link = Self {
            url: url.to_string(),
            call_id: call_id.to_string(),
            api_key: api_key.clone(),
            config: config.clone(),
            ws: None,
        };
        link.ws = Some(link.connect_with_retry().await?);
        Ok(link)
    }

    async fn connect_with_retry(&self) -> Result<SidebandStream, SidebandError> {
        connect_with_backoff(&self.config, || {
            sideband::connect(&self.url, &self.call_id, &self.api_key)
        })
        .await
    }
}

/// Runs `connect` with bounded exponential backoff (`[monitor] reconnect_*` settings); permanent
/// errors (404, 401/403) are not retried. Shared by the Realtime and GPT-Live sidebands.
///
/// # Errors
/// The last attempt's [`SidebandError`].
pub(crate) async fn connect_with_backoff<F, Fut>(
    config: &MonitorConfig,
    connect: F,
) -> Result<SidebandStream, SidebandError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<SidebandStream, SidebandError>>,
{
    connect
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(config.reconnect_initial_delay_ms))
                .with_max_delay(Duration::from_millis(config.reconnect_max_delay_ms))
                .with_max_times(config.reconnect_max_attempts),
        )
        .when(|e: &SidebandError| !e.is_permanent())
        .notify(|e, delay| debug!(error = %e, ?delay, "sideband connect retry"))
        .await
}

#[async_trait]
impl Link for SidebandLink {
    async fn recv(&mut self) -> LinkEvent {
        let Some(ws) = self.ws.as_mut() else {
            return LinkEvent::Closed { clean: false };
        };
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return LinkEvent::Text(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    debug!(?frame, "sideband closed with a close frame");
                    self.ws = None;
                    return LinkEvent::Closed { clean: true };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    debug!(error = %e, "sideband dropped");
                    self.ws = None;
                    return LinkEvent::Closed { clean: false };
                }
                None => {
                    self.ws = None;
                    return LinkEvent::Closed { clean: false };
                }
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), String> {
        match self.ws.as_mut() {
            Some(ws) => ws
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string()),
            None => Err("sideband is closed".into()),
        }
    }

    async fn reconnect(&mut self) -> Result<(), ReconnectError> {
        match self.connect_with_retry().await {
            Ok(ws) => {
                self.ws = Some(ws);
                Ok(())
            }
            Err(SidebandError::CallNotFound) => Err(ReconnectError::CallGone),
            Err(e) => Err(ReconnectError::GaveUp(e.to_string())),
        }
    }

    async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }
}

/// OpenAI's Realtime call control as [`CallActions`] for one call.
#[derive(Clone, Debug)]
pub struct OpenAiActions {
    /// The REST client.
    pub call_control: CallControl,
    /// The call.
    pub call_id: String,
}

#[async_trait]
impl CallActions for OpenAiActions {
    async fn refer(&self, target: &TransferTarget) -> Result<(), String> {
        self.call_control
            .refer(&self.call_id, &target.as_uri())
            .await
            .map_err(|e| e.to_string())
    }

    async fn hangup(&self) -> Result<(), String> {
        self.call_control
            .hangup(&self.call_id)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_keys_are_the_sixteen_keys_bounded() {
        assert_eq!(
            dtmf_keys("0123456789*#abcdABCD").unwrap(),
            "0123456789*#ABCDABCD"
        );
        for bad in ["", "12w3", "1,2", "١", "+1", " 1"] {
            assert!(
                matches!(dtmf_keys(bad), Err(DtmfError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(dtmf_keys(&"1".repeat(MAX_DTMF_KEYS)).is_ok());
        assert!(dtmf_keys(&"1".repeat(MAX_DTMF_KEYS + 1)).is_err());
    }
}
