//! `xdr-relay run`: the daemon.

use anyhow::Context;
use relay_pipeline::{Relay, RelayOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::check_config::EXIT_BAD_CONFIG;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of relay.toml.
    #[arg(long, short, default_value = "/etc/xdr-relay/relay.toml")]
    pub config: PathBuf,
    /// After SIGTERM, how long sinks may keep delivering their outboxes before the
    /// process exits (what is left is delivered after the next start).
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Under a systemd watchdog (`WatchdogSec=`): how long no poll may end before the
    /// keep-alive is withheld and systemd restarts the relay. Default: derived from the
    /// shortest poll interval and the request timeout (about 13.5 minutes with the defaults).
    #[arg(long)]
    pub watchdog_stall_secs: Option<u64>,
}

/// Exit status of `run` when the state's storage failed while running (the disk full, an
/// I/O error writing or syncing the state file or an outbox segment): `EX_IOERR` of
/// sysexits.h. systemd does not restart on it (the unit's `RestartPreventExitStatus`),
/// since a restart would only hit the full or failing disk again.
pub const EXIT_STORAGE: u8 = 74;

/// Loads the configuration, opens the state store, runs until SIGTERM/SIGINT, drains.
///
/// Exit status: 0 after a clean shutdown; 2 when the configuration, the state file or
/// its key is unusable, or another instance holds the state's lock (nothing was started);
/// [`EXIT_STORAGE`] (74) when the state's disk filled up or failed; 1 on another failure
/// while running.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = super::process_env();
    let config = match relay_config::load(&relay_config::LoadOptions::new(&args.config, &env)) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} problem(s); nothing was started",
                args.config.display(),
                errors.problems().len()
            );
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    // Before anything else is bound or opened: a second daemon on this state must be told
    // about the first (not about the admin port the first already holds), and start nothing.
    // Held until this function returns, i.e. until the relay has drained.
    let lock = match super::state::lock(&config) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "nothing was started");
            eprintln!("xdr-relay: error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    let rt = crate::runtime::build()?;
    rt.block_on(async move {
        // Bound before anything else: a taken port stops the start with nothing started.
        let admin = match relay_admin::AdminServer::bind(config.admin.listen).await {
            Ok(a) => a,
            Err(e) => {
                let e = anyhow::Error::new(e);
                tracing::error!(error = format!("{e:#}"), "nothing was started");
                eprintln!("xdr-relay: error: {e:#}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        };
        let state = match super::state::open(&config, super::state::Access::Exclusive(&lock)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot open the state store; nothing was started"
                );
                eprintln!("xdr-relay: error: {e:#}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        };
        let opts = RelayOptions {
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            ..RelayOptions::default()
        };
        let relay = match Relay::new(&config, Arc::clone(&state), opts) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot build the relay; nothing was started"
                );
                eprintln!("xdr-relay: error: {e:#}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        };
        let shutdown = CancellationToken::new();
        spawn_reloader(&args.config, relay.reload_handle(), shutdown.clone());
        let storage_failure = watch_storage(&state, shutdown.clone());
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            tracing::info!("shutdown requested: stopping polls, draining sinks");
            crate::systemd::notify_stopping();
            on_signal.cancel();
        });
        tracing::info!(
            config = %args.config.display(),
            tenants = config.enabled_tenants().count(),
            sinks = config.sinks.len(),
            "xdr-relay running"
        );
        // Said once at start, so "why does it (not) go through the proxy" is answered by
        // the journal: the settings came from relay.toml or from the unit's environment.
        match &config.http.proxy {
            Some(p) => tracing::info!(
                proxy = %p.url,
                source = %p.source,
                https_only = p.scope == relay_config::ProxyScope::HttpsOnly,
                no_proxy = %p.no_proxy.join(","),
                "requests to Entra and the APIs go through a proxy"
            ),
            None => tracing::info!("requests to Entra and the APIs connect directly (no proxy)"),
        }
        if let Some(ca) = &config.http.ca {
            tracing::info!(
                ca_file = %ca.path.display(),
                certificates = ca.certificates.len(),
                "trusting the certificates of http.ca_file in addition to the built-in roots"
            );
        }
        let stall_budget = args.watchdog_stall_secs.map_or_else(
            || crate::systemd::stall_budget(&config),
            Duration::from_secs,
        );
        tokio::spawn(crate::systemd::supervise(
            relay.status(),
            stall_budget,
            shutdown.child_token(),
        ));
        // Serves until the relay has drained; /readyz turns 503 as shutdown begins.
        let admin = admin.spawn(relay_admin::AdminSources::new(
            &config,
            state,
            relay.status(),
            shutdown.clone(),
        ));
        crate::systemd::notify_ready(&relay.status().snapshot());
        let result = relay.run(shutdown).await;
        admin.stop().await;
        if let Some(cause) = storage_failure.borrow().clone() {
            tracing::error!(
                error = %cause,
                "xdr-relay stopped: the state storage failed; what was committed is kept and \
                 a restart resumes from it once the disk has room (or is replaced)"
            );
            eprintln!("xdr-relay: error: the state storage failed: {cause}");
            return Ok(ExitCode::from(EXIT_STORAGE));
        }
        let report = result.context("the relay failed")?;
        tracing::info!(
            polls = report.polls,
            poll_errors = report.poll_errors,
            events = report.events,
            delivered = report.delivered,
            left_in_outbox = ?report.left_in_outbox,
            "xdr-relay stopped"
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Stops the relay at the state store's first storage failure: no poll can be kept, so
/// none is made, and nothing is acknowledged that could not be recorded. The receiver
/// holds the failure for the exit.
fn watch_storage(
    state: &relay_state::StateStore,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let failure = state.storage_failure();
    let mut watched = failure.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            failed = watched.wait_for(Option::is_some) => {
                if failed.is_ok() {
                    tracing::error!("state storage failed: stopping polls and sinks");
                    crate::systemd::notify_stopping();
                    shutdown.cancel();
                }
            }
        }
    });
    failure
}

/// SIGHUP (`systemctl reload`): re-reads relay.toml and tenants.d and hands the result to
/// the running relay, which starts new tenants, stops removed ones and restarts changed
/// ones. A configuration that does not validate, or a change that needs a restart, is
/// rejected with its problems and the running configuration is kept.
fn spawn_reloader(
    config_path: &std::path::Path,
    reloader: relay_pipeline::ReloadHandle,
    stop: CancellationToken,
) {
    // Registered before the relay starts: a SIGHUP's default action would end the
    // process, which systemd counts as a clean exit and does not restart.
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload needs a restart");
            return;
        }
    };
    let config_path = config_path.to_path_buf();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hangup.recv() => if got.is_none() { return },
            }
            tracing::info!(config = %config_path.display(), "SIGHUP: reloading the configuration");
            let env = super::process_env();
            match relay_config::load(&relay_config::LoadOptions::new(&config_path, &env)) {
                Err(errors) => {
                    let problems: Vec<String> =
                        errors.problems().iter().map(|p| p.to_string()).collect();
                    tracing::error!(
                        problems = %problems.join("; "),
                        "configuration reload rejected: the new files do not validate; the running configuration is kept"
                    );
                }
                Ok(new) => match reloader.reload(new).await {
                    Ok(report) => tracing::info!("{report}"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "configuration reload rejected")
                    }
                },
            }
        }
    });
}
