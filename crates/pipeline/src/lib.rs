//! relay-pipeline: xdr-relay's engine. It wires the other crates into the flow of one event
//! (design.md): a **scheduler** with one timer per (tenant, feed), a **poller** that reads
//! the window `[checkpoint − overlap, now − availability_lag)` to its end, drops versions
//! already delivered, **normalizes** each new one into a [`relay_sinks::Event`] and commits
//! it to the **outbox** of every sink the tenant routes to in one state-store transaction,
//! and one **sink worker** per sink that delivers its outbox in order and deletes rows only
//! after the sink acknowledged them. [`Relay::run`] runs all of it until cancelled, then
//! drains. A [`ReloadHandle`] applies a reloaded configuration to the running relay
//! (SIGHUP): tenants added, removed and changed start, stop and restart; the others and
//! the state store are left alone.
//!
//! ```no_run
//! # async fn demo(config: relay_config::Config, state: std::sync::Arc<relay_state::StateStore>)
//! #     -> Result<(), relay_pipeline::PipelineError> {
//! use tokio_util::sync::CancellationToken;
//! let relay = relay_pipeline::Relay::new(&config, state, relay_pipeline::RelayOptions::default())?;
//! let status = relay.status(); // cheap live snapshot for `status` lines and metrics
//! let shutdown = CancellationToken::new(); // the binary cancels it on SIGTERM / SIGINT
//! let report = relay.run(shutdown).await?;
//! println!("{} events polled, {} delivered", report.events, report.delivered);
//! # let _ = status; Ok(()) }
//! ```
//!
//! Invariants this crate keeps:
//! * A version is marked seen only in the same transaction that puts its event in every
//!   routed outbox, and the checkpoint advances only after the whole window was read: a
//!   crash at any point re-polls, and the seen set makes the re-poll deliver nothing twice.
//! * Nothing is dropped when an outbox is full: polling of the tenants routed to that sink
//!   pauses until it drains.
//! * One tenant's failures (throttling, revoked consent) never stop another tenant or a
//!   sink; one sink's failures never stop polling or another sink.

mod backoff;
mod build;
mod error;
mod normalize;
mod poll;
mod relay;
mod reload;
mod sink_worker;
mod status;
mod token_store;

pub use build::{http_client, store_options, HttpPurpose};
pub use error::PipelineError;
pub use normalize::normalize;
pub use relay::{Relay, RelayOptions, RunReport};
pub use reload::{ReloadHandle, ReloadReport};
pub use status::{
    EngineStats, ErrorCounts, FeedStats, LatencyHistogram, RelayStatus, SinkState, SinkStats,
    StatusHandle, TenantStats, ACK_LATENCY_BOUNDS,
};
pub use token_store::StateTokenStore;
