//! relay-admin: what an operator sees of a running relay without reading its logs. It
//! serves, on `[admin] listen` (loopback by default):
//!
//! * `/healthz` — the process is alive: `200 ok`;
//! * `/readyz` — `200` once every (tenant, feed) had its first poll and no sink is
//!   stopped, else `503` with a one-line JSON reason (see [`readiness`]);
//! * `/metrics` — the Prometheus text format, rendered from the relay's live
//!   [`RelayStatus`](relay_pipeline::RelayStatus) at scrape time (see [`metrics::render`]).
//!
//! It also watches **credential health** ([`health`]): client secrets and certificates that
//! lapse within 14 days, refresh tokens nearing Entra's 90-day inactivity limit and revoked
//! consent are logged once a day per tenant, exported as
//! `xdr_relay_credential_expiry_seconds`, and shown by `xdr-relay status`, each with the
//! `xdr-relay onboard` command that fixes it.
//!
//! ```no_run
//! # async fn demo(config: relay_config::Config, state: std::sync::Arc<relay_state::StateStore>,
//! #     relay: relay_pipeline::Relay) -> Result<(), relay_admin::AdminError> {
//! use tokio_util::sync::CancellationToken;
//! let shutdown = CancellationToken::new();
//! let server = relay_admin::AdminServer::bind(config.admin.listen).await?; // fails: exit 2
//! let sources = relay_admin::AdminSources::new(&config, state, relay.status(), shutdown.clone());
//! let admin = server.spawn(sources);
//! // ... relay.run(shutdown).await ...
//! admin.stop().await;
//! # Ok(()) }
//! ```
//!
//! Invariants: nothing here writes to the state store or talks to Entra or the APIs; the
//! endpoint only reads snapshots, so a slow or hostile scraper cannot slow the relay down.

mod exposition;
pub mod health;
pub mod metrics;
mod ready;
mod server;

pub use exposition::{escape_label_value, format_value, Exposition, Family, MetricType};
pub use ready::{readiness, Readiness};
pub use server::{AdminError, AdminServer, AdminSources, RunningAdmin};

#[cfg(test)]
mod test_support;
