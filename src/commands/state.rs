//! Opening the state store the way every subcommand that needs it does.

use anyhow::Context;
use relay_config::{Config, StateKey as KeySource};
use relay_state::{StateKey, StateStore};
use std::path::Path;

/// Whether the caller writes (the daemon) or only reads (`status`, while the daemon runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// The state key named by the configuration. A `key_file` that does not exist yet is
/// created with a fresh random key when `create` is set (first start of the daemon): an
/// operator gets encryption at rest without a set-up step, and a key file lost later makes
/// the store refuse to open ("wrong state key") instead of silently starting over.
pub fn load_key(config: &Config, create: bool) -> anyhow::Result<StateKey> {
    match &config.state.key {
        KeySource::Secret(secret) => Ok(StateKey::parse(
            Path::new("relay.toml: state.key"),
            secret.expose().as_bytes(),
        )?),
        KeySource::File(path) => {
            if create && !path.exists() {
                tracing::info!(path = %path.display(), "state key file does not exist; generating a new key");
                return Ok(StateKey::generate_to_file(path)?);
            }
            Ok(StateKey::from_file(path)?)
        }
    }
}

/// Opens the state store named in the configuration.
pub fn open(config: &Config, access: Access) -> anyhow::Result<StateStore> {
    let key = load_key(config, access == Access::ReadWrite)?;
    let path = &config.state.path;
    let opts = relay_pipeline::store_options(config);
    let store = match access {
        Access::ReadWrite => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the state directory {}", dir.display())
                })?;
            }
            StateStore::open(path, Some(&key), opts)?
        }
        Access::ReadOnly => StateStore::open_read_only(path, Some(&key), opts)?,
    };
    Ok(store)
}
