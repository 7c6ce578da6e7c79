//! The calls this instance is monitoring right now, with a command channel into each monitor.
//!
//! An entry is owned by its [`Registration`]: dropping it (the monitor returned, panicked or was
//! aborted) removes the entry and its per-profile capacity count, so no path through the
//! monitor can leak either.

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
    /// Which [`Registration`] owns the entry (a later registration of the same `call_id`
    /// must not be removed by an earlier one's drop).
    generation: u64,
    /// The monitor task, once spawned: [`CallRegistry::abort_all`] ends it.
    task: Option<tokio::task::AbortHandle>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: HashMap<String, Entry>,
    /// Monitored calls per profile name, kept with `calls` so the `max_concurrent_calls` check
    /// on every webhook is one lookup, not a scan of every live call.
    per_profile: HashMap<String, usize>,
    next_generation: u64,
}

/// The registry entry of one call, held by its monitor. Dropping it removes the entry and its
/// per-profile count (the drop guard of `crate::calls::monitor`'s task).
#[derive(Debug)]
pub struct Registration {
    registry: CallRegistry,
    call_id: String,
    generation: u64,
    commands: Option<mpsc::Receiver<Command>>,
}

impl Registration {
    /// The `call_id` registered.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The command receiver of the monitor (once; later calls return a closed receiver).
    pub fn take_commands(&mut self) -> mpsc::Receiver<Command> {
        self.commands.take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    /// Identifies this registration for [`CallRegistry::set_task`].
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .remove_generation(&self.call_id, self.generation);
    }
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
    /// Registers a monitor for `call_id` on `profile`. Returns the [`Registration`] that owns
    /// the entry (drop it to remove the entry), or `None` when a monitor for this call is
    /// already registered (exactly one monitor per call).
    pub fn register(&self, call_id: &str, profile: &str) -> Option<Registration> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.calls.contains_key(call_id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(8);
        inner.next_generation += 1;
        let generation = inner.next_generation;
        *inner.per_profile.entry(profile.to_string()).or_default() += 1;
        inner.calls.insert(
            call_id.to_string(),
            Entry {
                profile: profile.to_string(),
                commands: tx,
                generation,
                task: None,
            },
        );
        Some(Registration {
            registry: self.clone(),
            call_id: call_id.to_string(),
            generation,
            commands: Some(rx),
        })
    }

    /// Removes the entry of `call_id` if `generation` still owns it.
    fn remove_generation(&self, call_id: &str, generation: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner
            .calls
            .get(call_id)
            .is_none_or(|e| e.generation != generation)
        {
            return;
        }
        let entry = inner.calls.remove(call_id).expect("checked above");
        if let Some(n) = inner.per_profile.get_mut(&entry.profile) {
            *n -= 1;
            if *n == 0 {
                inner.per_profile.remove(&entry.profile);
            }
        }
    }

    /// Remembers the monitor task of the registration `generation` of `call_id`, so
    /// [`CallRegistry::abort_all`] can end it. Nothing when that registration is gone.
    pub fn set_task(&self, call_id: &str, generation: u64, task: tokio::task::AbortHandle) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner
            .calls
            .get_mut(call_id)
            .filter(|e| e.generation == generation)
        {
            e.task = Some(task);
        }
    }

    /// Aborts every registered monitor task (the hard end of shutdown, after the drain and
    /// detach waits). Their [`Registration`]s drop with the tasks and remove the entries.
    /// Returns how many tasks were aborted.
    pub fn abort_all(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for task in inner.calls.values().filter_map(|e| e.task.as_ref()) {
            task.abort();
            n += 1;
        }
        n
    }

    /// Number of monitored calls.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .len()
    }

    /// True when no call is monitored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Monitored calls on `profile` (for the `max_concurrent_calls` reject rule).
    pub fn count_for_profile(&self, profile: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.per_profile.get(profile).copied().unwrap_or(0)
    }

    /// True when `call_id` is monitored here.
    pub fn contains(&self, call_id: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .contains_key(call_id)
    }

    /// Sends `command` to the monitor of `call_id`.
    ///
    /// # Errors
    /// [`CommandError`] when the call is not monitored here or its monitor is ending.
    pub fn send(&self, call_id: &str, command: Command) -> Result<(), CommandError> {
        let tx = {
            let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut one = r.register("rtc_1", "support").unwrap();
        let mut rx = one.take_commands();
        assert!(r.register("rtc_1", "support").is_none());
        let two = r.register("rtc_2", "support").unwrap();
        let _three = r.register("rtc_3", "default").unwrap();
        assert_eq!(r.count_for_profile("support"), 2);
        r.send("rtc_1", Command::Hangup("x".into())).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Command::Hangup("x".into()));
        assert_eq!(
            r.send("rtc_9", Command::Transfer(String::new())),
            Err(CommandError::NotMonitored)
        );
        drop(one);
        assert_eq!(r.len(), 2);
        assert_eq!(r.count_for_profile("support"), 1);
        // A new registration of rtc_1 is not removed by anything of the old one.
        let again = r.register("rtc_1", "support").unwrap();
        assert_eq!(r.count_for_profile("support"), 2);
        drop(two);
        assert_eq!(r.count_for_profile("support"), 1);
        assert!(r.contains("rtc_1"));
        drop(again);
        assert_eq!(r.count_for_profile("support"), 0);
        assert_eq!(r.count_for_profile("default"), 1);
    }

    /// A monitor task that panics or is aborted drops its registration with it: the entry and
    /// the capacity count go away without any happy-path call.
    #[tokio::test]
    async fn entries_die_with_their_task() {
        let r = CallRegistry::default();
        let reg = r.register("rtc_p", "support").unwrap();
        let panics = tokio::spawn(async move {
            let _reg = reg;
            panic!("injected");
        });
        assert!(panics.await.unwrap_err().is_panic());
        assert!(!r.contains("rtc_p"));
        assert_eq!(r.count_for_profile("support"), 0);

        let reg = r.register("rtc_a", "support").unwrap();
        let generation = reg.generation();
        let task = tokio::spawn(async move {
            let _reg = reg;
            std::future::pending::<()>().await;
        });
        r.set_task("rtc_a", generation, task.abort_handle());
        assert_eq!(r.abort_all(), 1);
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(r.is_empty());
        assert_eq!(r.count_for_profile("support"), 0);
    }
}
