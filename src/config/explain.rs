//! `voxmachina check --explain`: every effective configuration key with its value and the layer
//! that set it, and every secret as set/unset with where it was found.
//!
//! The walk is generic: it serializes the effective [`Config`] and visits every leaf (a scalar,
//! an array or an unset option), so a key added to any section is listed without touching this
//! module. A leaf's layer is the highest one that names it:
//! 1. `env VOXMACHINA_<SECTION>__<KEY>` when that variable is set (see [`super::Config::load`]);
//! 2. `file <path>` when the TOML file given with `--config` sets the key (or a table or array
//!    containing it);
//! 3. `default` otherwise (the built-in value documented in `config/voxmachina.toml`).
//!
//! Secrets never appear in [`Config`]; [`secrets`] reports each one as `set` or `unset` with its
//! layer (`credential <file>` in `$CREDENTIALS_DIRECTORY`, or `env <VAR>`), never its value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Config, ConfigError, SecretSource};

/// Where an effective value came from, lowest layer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// The built-in default.
    Default,
    /// The TOML file given with `--config`.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A file in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`), for secrets.
    Credential(PathBuf),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Default => f.write_str("default"),
            Layer::File(p) => write!(f, "file {}", p.display()),
            Layer::Env(v) => write!(f, "env {v}"),
            Layer::Credential(p) => write!(f, "credential {}", p.display()),
        }
    }
}

/// One effective configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Dotted key, e.g. `twilio.from_number` or `openai.live_trunk.caller_number`.
    pub key: String,
    /// The effective value as compact JSON (strings quoted); `null` for an unset option.
    pub value: String,
    /// The layer that set it.
    pub layer: Layer,
}

/// Every leaf of the effective `config`, in key order, with the layer that set it. `path` and
/// `env` must be the ones `config` was loaded from ([`Config::load_with_env`]).
///
/// # Errors
/// [`ConfigError::Invalid`] when the file cannot be read as TOML again or the configuration does
/// not serialize (a path that is not UTF-8).
pub fn config(
    config: &Config,
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Explained>, ConfigError> {
    let effective = serde_json::to_value(config)
        .map_err(|e| ConfigError::Invalid(format!("explaining the configuration: {e}")))?;
    let file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError::Invalid(format!("reading {}: {e}", p.display())))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("parsing {}: {e}", p.display())))?;
            Some((p.to_path_buf(), table))
        }
        None => None,
    };
    // `VOXMACHINA_OPENAI__LIVE_TRUNK__CALLER_NUMBER` → `openai.live_trunk.caller_number`, the
    // mapping `config::Environment` applies (prefix stripped, `__` as the separator, lower case).
    let env: Vec<(String, String)> = super::env_overrides(env)
        .into_keys()
        .filter_map(|var| {
            let key = var
                .strip_prefix("VOXMACHINA_")?
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            Some((key, var))
        })
        .collect();
    let mut out = Vec::new();
    let mut leaves = Vec::new();
    collect_leaves(&effective, String::new(), &mut leaves);
    for (key, value) in leaves {
        let layer = if let Some((_, var)) = env.iter().find(|(k, _)| covers(k, &key)) {
            Layer::Env(var.clone())
        } else if let Some((p, _)) = file.as_ref().filter(|(_, t)| file_sets(t, &key)) {
            Layer::File(p.clone())
        } else {
            Layer::Default
        };
        out.push(Explained {
            key,
            value: value.to_string(),
            layer,
        });
    }
    Ok(out)
}

/// Whether one secret of [`super::Secrets`] is set, and where. Never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretState {
    /// The credential file name in `$CREDENTIALS_DIRECTORY`, e.g. `openai_api_key`.
    pub file: &'static str,
    /// The environment variable, e.g. `OPENAI_API_KEY`.
    pub env: &'static str,
    /// Where it was found; `None` when unset.
    pub layer: Option<Layer>,
}

/// Every secret of [`super::Secrets`] ([`super::SECRET_NAMES`]) as set/unset with its layer.
///
/// # Errors
/// [`ConfigError::CredentialFile`] when a credential file exists but cannot be read.
pub fn secrets() -> Result<Vec<SecretState>, ConfigError> {
    let mut out = Vec::new();
    for &(env, file) in super::SECRET_NAMES {
        let layer = super::find_secret(env, file)?.map(|(_, source)| match source {
            SecretSource::Credential(p) => Layer::Credential(p),
            SecretSource::Env => Layer::Env(env.to_string()),
        });
        out.push(SecretState { file, env, layer });
    }
    Ok(out)
}

/// Depth-first leaves of `value`: scalars, arrays, `null` and empty objects.
fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, key, out);
            }
        }
        _ => out.push((prefix, value.clone())),
    }
}

/// True when `set` (a key some layer set) is `key` or one of its parents.
fn covers(set: &str, key: &str) -> bool {
    key == set || key.strip_prefix(set).is_some_and(|r| r.starts_with('.'))
}

/// True when the TOML `table` sets `key`, or a value (array, inline table) that contains it.
fn file_sets(table: &toml::Table, key: &str) -> bool {
    let mut current = table;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            None => return false,
            Some(toml::Value::Table(t)) if parts.peek().is_some() => current = t,
            Some(_) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_of<'a>(rows: &'a [Explained], key: &str) -> &'a Explained {
        rows.iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("{key} listed: {rows:#?}"))
    }

    #[test]
    fn every_leaf_gets_its_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.toml");
        std::fs::write(
            &path,
            "[webhook]\ntolerance_secs = 60\n[twilio]\nfrom_number = \"+18005550100\"\n\
             [openai.live_trunk]\nprovider_url = \"sips:trunk.example.com\"\nusername = \"u\"\n\
             password_secret = \"trunk_pw\"\ncaller_number = \"+18005550101\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "VOXMACHINA_TWILIO__FROM_NUMBER".to_string(),
                "+18005550111".to_string(),
            ),
            ("VOXMACHINA_SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ];
        let cfg = Config::load_with_env(Some(&path), env.clone()).unwrap();
        let rows = config(&cfg, Some(&path), env).unwrap();
        let from = layer_of(&rows, "twilio.from_number");
        assert_eq!(from.value, "\"+18005550111\"");
        assert_eq!(
            from.layer,
            Layer::Env("VOXMACHINA_TWILIO__FROM_NUMBER".into())
        );
        assert_eq!(
            layer_of(&rows, "webhook.tolerance_secs").layer,
            Layer::File(path.clone())
        );
        assert_eq!(layer_of(&rows, "webhook.tolerance_secs").value, "60");
        assert_eq!(
            layer_of(&rows, "openai.live_trunk.caller_number").layer,
            Layer::File(path.clone())
        );
        assert_eq!(
            layer_of(&rows, "webhook.dedupe_ttl_hours").layer,
            Layer::Default
        );
        assert_eq!(layer_of(&rows, "cluster.instance_id").value, "null");
        assert_eq!(layer_of(&rows, "pricing.models").layer, Layer::Default);
        // Every section of the effective configuration is walked.
        let json = serde_json::to_value(&cfg).unwrap();
        for section in json.as_object().unwrap().keys() {
            assert!(
                rows.iter()
                    .any(|r| r.key.starts_with(&format!("{section}."))),
                "{section} missing"
            );
        }
    }

    #[test]
    fn covers_parents_only() {
        assert!(covers("a.b", "a.b"));
        assert!(covers("a", "a.b"));
        assert!(!covers("a.b", "a.bc"));
        assert!(!covers("a.bc", "a.b"));
    }
}
