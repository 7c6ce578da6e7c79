//! The profile set in force ([`Profiles`]: swapped whole on reload, running calls keep the
//! profile they started with) and the start-up check of the named secrets the profiles and the
//! configuration use ([`check_named_secrets`]).

use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::{LoadErrors, ProfileSet};
use crate::config::{Config, ConfigError, Secrets};

/// A shared handle on the current [`ProfileSet`]. Cloning shares the set; [`Profiles::reload`]
/// swaps it for every holder at once (lock-free reads through `arc_swap`).
#[derive(Clone)]
pub struct Profiles(Arc<ArcSwap<ProfileSet>>);

impl Profiles {
    /// A handle holding `set`.
    pub fn new(set: ProfileSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(set)))
    }

    /// The set in force now (a cheap guard; do not hold it across long awaits).
    pub fn load(&self) -> Guard<Arc<ProfileSet>> {
        self.0.load()
    }

    /// Re-reads the profiles of `dir` ([`ProfileSet::load`]) and puts them in force; returns how
    /// many were loaded. On error the current set stays in force.
    ///
    /// # Errors
    /// [`LoadErrors`] listing every problem with file and line.
    pub fn reload(&self, dir: &Path) -> Result<usize, LoadErrors> {
        let set = ProfileSet::load(dir)?;
        let n = set.len();
        self.0.store(Arc::new(set));
        Ok(n)
    }
}

/// Start-up check of the named secrets the configuration and profiles use: every
/// `{{secret:NAME}}` of a profile's tool headers and `[openai.live_trunk] password_secret`.
/// Secrets fail closed: one that is set but empty or only whitespace (a file or a
/// `VOXMACHINA_SECRET_<NAME>` variable), or whose file cannot be read, stops the start with an
/// error naming it. An unset one only makes its tool answer `not_configured` (`voxmachina check`
/// warns about it).
///
/// # Errors
/// [`ConfigError::EmptySecret`] or [`ConfigError::CredentialFile`] naming the secret.
pub fn check_named_secrets(config: &Config, profiles: &ProfileSet) -> Result<(), ConfigError> {
    let dir = Some(config.tools.secrets_dir.as_path());
    let tool_secrets = profiles
        .iter()
        .flat_map(|p| p.tools.iter())
        .flat_map(|t| t.secret_names());
    let trunk = config
        .openai
        .live_trunk
        .as_ref()
        .map(|t| t.password_secret.as_str());
    for name in tool_secrets.chain(trunk) {
        Secrets::named_in(dir, name)?;
    }
    Ok(())
}
