//! Opening the state store the way every subcommand that needs it does.

use anyhow::Context;
use relay_config::{Config, StateKey as KeySource};
use relay_state::{InstanceLock, LockError, StateKey, StateStore};
use std::path::Path;
use std::process::ExitCode;

/// How a command uses the state store.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Polls and delivers (`run`, `demo`): only one process per state file, proved by
    /// holding its [`InstanceLock`] (see [`lock`]).
    Exclusive(&'a InstanceLock),
    /// Writes a tenant's refresh token next to a running daemon (`onboard`), or an
    /// operator's decision on a response action (`actions approve`): one row in one
    /// SQLite transaction, which the daemon's own writes do not conflict with; it polls and
    /// delivers nothing, so it does not take the lock.
    Onboard,
    /// Reads only (`status`, while the daemon runs).
    ReadOnly,
}

/// Takes the one-writer lock of the configured state file, `<state.path>.lock`. A second
/// daemon on the same state gets [`LockError::Held`] naming the file and the holder's pid.
pub fn lock(config: &Config) -> Result<InstanceLock, LockError> {
    InstanceLock::acquire(&config.state.path)
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
    let path = &config.state.path;
    if let Access::Exclusive(lock) = access {
        // A lock on another file would prove nothing.
        anyhow::ensure!(
            lock.state_path() == path.as_path(),
            "internal error: holding the lock of {} but opening {}",
            lock.state_path().display(),
            path.display()
        );
    }
    let key = load_key(config, !matches!(access, Access::ReadOnly))?;
    let opts = relay_pipeline::store_options(config);
    let store = match access {
        Access::Exclusive(_) | Access::Onboard => {
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

/// The configuration of a command that reads the state the daemon left (`status`,
/// `actions`): configuration problems, or a state file that does not exist yet, are
/// printed and become exit 2.
pub fn config_with_state(config_path: &Path) -> Result<Config, ExitCode> {
    let env = super::process_env();
    let bad = || ExitCode::from(super::check_config::EXIT_BAD_CONFIG);
    let config = relay_config::load(&relay_config::LoadOptions::new(config_path, &env)).map_err(
        |errors| {
            eprintln!("{errors}");
            bad()
        },
    )?;
    if !config.state.path.exists() {
        eprintln!(
            "{}: no state yet: the daemon has not run with this configuration",
            config.state.path.display()
        );
        return Err(bad());
    }
    Ok(config)
}
