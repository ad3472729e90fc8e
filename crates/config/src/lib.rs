//! relay-config: the operator's configuration — `relay.toml`, `tenants.d/*.toml` and
//! environment overrides — read into raw serde structs and validated once into a typed
//! [`Config`]. Every problem is reported at once, each naming its file and key.
//!
//! ```no_run
//! use std::collections::HashMap;
//! let env: HashMap<String, String> = std::env::vars().collect(); // only the binary does this
//! match relay_config::load(&relay_config::LoadOptions::new("/etc/xdr-relay/relay.toml", &env)) {
//!     Ok(config) => println!("{} tenants", config.tenants.len()),
//!     Err(problems) => eprintln!("{problems}"), // one `file: key: message` per line
//! }
//! ```
//!
//! Loading reads files (the configuration, secret files, systemd credentials, the
//! certificate of certificate-auth tenants) but never the process environment: the
//! caller passes it in [`LoadOptions::env`].
//!
//! This crate also owns the small vocabulary every other crate shares: [`Secret`],
//! [`Stream`], [`Api`], [`Feed`] and the per-cloud [`Endpoints`].

mod check;
mod error;
mod load;
mod model;
mod playbooks;
mod raw;
mod secret;
mod types;
mod validate;

pub use error::{ConfigErrors, ConfigProblem};
pub use load::{load, LoadOptions, DEFAULT_TENANTS_DIR, ENV_PREFIX, ENV_SEPARATOR};
pub use model::*;
pub use playbooks::{
    IsolationType, Pattern, PlaybookAction, PlaybookConfig, PlaybookLimits, PlaybookMode,
    PlaybookWhen, ScanType, Severity, TenantSelector,
};
pub use secret::Secret;
pub use types::{
    Api, Audience, Cloud, Endpoints, Feed, Stream, RESOURCE_GRAPH, RESOURCE_THREAT_PROTECTION,
    RESOURCE_WINDOWS_DEFENDER_ATP,
};

#[cfg(test)]
mod tests;
