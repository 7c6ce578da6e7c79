//! [`CallServices`]: what the call-handling code shared by the webhook handler, the Twilio
//! routes, the admin API and the takeover scan needs — the configuration, the store, the
//! profiles in force and the monitors' context (registry, leases, call control, shutdown).
//! `crate::app` builds it once at start-up; request handlers and background tasks take it (or
//! a service struct holding it) instead of the whole application.

use std::sync::Arc;

use crate::calls::monitor::MonitorContext;
use crate::calls::registry::CallRegistry;
use crate::config::Config;
use crate::prompts::{Profile, Profiles};
use crate::store::Store;

/// The services of the calls domain (cheap to clone: every field is a shared handle).
#[derive(Clone)]
pub struct CallServices {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// Persistence (the [`crate::store::ResilientStore`] over the opened store).
    pub store: Arc<dyn Store>,
    /// The prompt profiles in force.
    pub profiles: Profiles,
    /// What monitors share (registry, store, sideband settings, leases, shutdown token).
    pub monitors: Arc<MonitorContext>,
}

impl CallServices {
    /// The registry of calls monitored by this instance.
    pub fn registry(&self) -> &CallRegistry {
        &self.monitors.registry
    }

    /// The profile named `name`, or the default profile when there is none of that name (a
    /// stored call whose profile was removed since).
    pub fn profile_or_default(&self, name: &str) -> Arc<Profile> {
        let profiles = self.profiles.load();
        profiles
            .get(name)
            .cloned()
            .unwrap_or_else(|| profiles.default_profile().clone())
    }
}

/// Access to the store, for the best-effort writes of [`crate::calls::persist`]: implemented by
/// the store itself and by the service structs that hold one.
pub trait HasStore {
    /// The store to write to.
    fn store(&self) -> &dyn Store;
}

impl HasStore for CallServices {
    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}

impl HasStore for dyn Store {
    fn store(&self) -> &dyn Store {
        self
    }
}

impl<T: HasStore + ?Sized> HasStore for &T {
    fn store(&self) -> &dyn Store {
        (**self).store()
    }
}

impl<T: HasStore + ?Sized> HasStore for Arc<T> {
    fn store(&self) -> &dyn Store {
        (**self).store()
    }
}
