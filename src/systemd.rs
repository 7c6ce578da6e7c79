//! The systemd service-manager protocol for `voxmachina serve` under `Type=notify`
//! (`systemd/voxmachina.service`), through the `sd-notify` crate.
//!
//! Messages sent to `$NOTIFY_SOCKET` (sd_notify(3), systemd.service(5) `Type=notify`,
//! `WatchdogSec=`):
//!
//! | when | message |
//! |---|---|
//! | listener bound, store open, profiles loaded, live calls reattached | `READY=1` + `STATUS=...` |
//! | every half watchdog interval, from the `serve` event loop | `WATCHDOG=1` |
//! | SIGHUP received, before the profiles are re-read | `RELOADING=1` + `MONOTONIC_USEC=...` |
//! | reload finished (accepted or refused) | `READY=1` + `STATUS=...` |
//! | SIGTERM/SIGINT received, before draining | `STOPPING=1` + `STATUS=...` |
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op. A failed send is logged at
//! `warn` and otherwise ignored: the service manager being unreachable must not stop calls.
//!
//! The watchdog interval comes from `$WATCHDOG_USEC` (microseconds, set by systemd from
//! `WatchdogSec=`), honoured only when `$WATCHDOG_PID` is unset or names this process, as
//! `sd_watchdog_enabled(3)` specifies. systemd recommends pinging at half the interval.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// Sends state changes to the service manager. Cheap to copy; holds only the watchdog interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads the watchdog settings (`$WATCHDOG_USEC`, `$WATCHDOG_PID`) from the environment.
    /// Notifications go to `$NOTIFY_SOCKET`, read at each send.
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// A notifier with an explicit watchdog interval (the full `WatchdogSec=`), for tests.
    pub fn with_watchdog(interval: Option<Duration>) -> Self {
        Self { watchdog: interval }
    }

    /// The full watchdog interval the service manager expects pings within, if enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to send `WATCHDOG=1`: half the interval ([`ping_period`]).
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.and_then(ping_period)
    }

    /// `READY=1` with a human status line (shown by `systemctl status`).
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (required by systemd 253 and later for reloads
    /// signalled over the notify socket). Follow with [`Notifier::ready`].
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `STATUS=...` alone.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: "still alive". Call every [`Notifier::watchdog_period`].
    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }
}

/// The ping period for a watchdog `interval`: half of it, as systemd.service(5) recommends for
/// `WatchdogSec=`. `None` for a zero interval (watchdog off).
pub fn ping_period(interval: Duration) -> Option<Duration> {
    (!interval.is_zero()).then(|| interval / 2)
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            ping_period(Duration::from_micros(3)),
            Some(Duration::from_nanos(1500))
        );
        assert_eq!(ping_period(Duration::ZERO), None);
        let n = Notifier::with_watchdog(Some(Duration::from_millis(400)));
        assert_eq!(n.watchdog_period(), Some(Duration::from_millis(200)));
        assert_eq!(Notifier::default().watchdog_period(), None);
    }
}
