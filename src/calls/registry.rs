//! The calls this instance is monitoring right now, with a command channel into each monitor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// A request from outside the monitor (the operator API, shutdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Escalate now (`POST /v1/calls/{call_id}/transfer`), with the operator's note.
    Transfer(String),
    /// Hang up now (`POST /v1/calls/{call_id}/hangup`), with the operator's note.
    Hangup(String),
}

#[derive(Debug)]
struct Entry {
    profile: String,
    commands: mpsc::Sender<Command>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<String, Entry>,
    /// Monitored calls per profile name, kept with `calls` so the `max_concurrent_calls` check
    /// on every webhook is one lookup, not a scan of every live call.
    per_profile: HashMap<String, usize>,
}

/// Registry of running monitors, keyed by `call_id`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CallRegistry {
    inner: Arc<Mutex<Inner>>,
}

/// Sending a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No monitor runs for this call on this instance.
    #[error("call is not being monitored here")]
    NotMonitored,
    /// The monitor is finishing and no longer takes commands.
    #[error("call is ending")]
    Ending,
}

impl CallRegistry {
    /// Registers a monitor for `call_id` on `profile`. Returns the command receiver, or `None`
    /// when a monitor for this call is already registered (exactly one monitor per call).
    pub fn register(&self, call_id: &str, profile: &str) -> Option<mpsc::Receiver<Command>> {
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.calls.contains_key(call_id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(8);
        *inner.per_profile.entry(profile.to_string()).or_default() += 1;
        inner.calls.insert(
            call_id.to_string(),
            Entry {
                profile: profile.to_string(),
                commands: tx,
            },
        );
        Some(rx)
    }

    /// Removes `call_id` (the monitor finished).
    pub fn remove(&self, call_id: &str) {
        let mut inner = self.inner.lock().expect("registry lock");
        let Some(entry) = inner.calls.remove(call_id) else {
            return;
        };
        if let Some(n) = inner.per_profile.get_mut(&entry.profile) {
            *n -= 1;
            if *n == 0 {
                inner.per_profile.remove(&entry.profile);
            }
        }
    }

    /// Number of monitored calls.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("registry lock").calls.len()
    }

    /// True when no call is monitored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Monitored calls on `profile` (for the `max_concurrent_calls` reject rule).
    pub fn count_for_profile(&self, profile: &str) -> usize {
        let inner = self.inner.lock().expect("registry lock");
        inner.per_profile.get(profile).copied().unwrap_or(0)
    }

    /// True when `call_id` is monitored here.
    pub fn contains(&self, call_id: &str) -> bool {
        self.inner
            .lock()
            .expect("registry lock")
            .calls
            .contains_key(call_id)
    }

    /// Sends `command` to the monitor of `call_id`.
    ///
    /// # Errors
    /// [`CommandError`] when the call is not monitored here or its monitor is ending.
    pub fn send(&self, call_id: &str, command: Command) -> Result<(), CommandError> {
        let tx = {
            let inner = self.inner.lock().expect("registry lock");
            inner
                .calls
                .get(call_id)
                .ok_or(CommandError::NotMonitored)?
                .commands
                .clone()
        };
        tx.try_send(command).map_err(|_| CommandError::Ending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_monitor_per_call_and_profile_counts() {
        let r = CallRegistry::default();
        let mut rx = r.register("rtc_1", "support").unwrap();
        assert!(r.register("rtc_1", "support").is_none());
        r.register("rtc_2", "support").unwrap();
        r.register("rtc_3", "default").unwrap();
        assert_eq!(r.count_for_profile("support"), 2);
        r.send("rtc_1", Command::Hangup("x".into())).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Command::Hangup("x".into()));
        assert_eq!(
            r.send("rtc_9", Command::Transfer(String::new())),
            Err(CommandError::NotMonitored)
        );
        r.remove("rtc_1");
        assert_eq!(r.len(), 2);
        assert_eq!(r.count_for_profile("support"), 1);
        r.remove("rtc_1");
        assert_eq!(
            r.count_for_profile("support"),
            1,
            "a second remove changes nothing"
        );
        r.remove("rtc_2");
        assert_eq!(r.count_for_profile("support"), 0);
        assert_eq!(r.count_for_profile("default"), 1);
    }
}
