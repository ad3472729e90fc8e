//! `xdr-relay demo`: the whole pipeline against the built-in simulator, delivering to
//! local files, with a live line per tenant. The first thing a newcomer runs.

use anyhow::Context;
use relay_pipeline::{Relay, RelayOptions, RelayStatus};
use relay_sim::{RelayFiles, Sim, SimConfig};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The state file the simulator's relay.toml names (`[state] path`), inside `--dir`.
const STATE_FILE: &str = "state.db";

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the demo writes its configuration, state and events. Its state and events
    /// are started afresh on every run (the simulator is new each time).
    #[arg(long, default_value = "xdr-relay-demo")]
    pub dir: PathBuf,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Number of simulated customer tenants.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Seed of the simulated world.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds between live status lines.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = crate::runtime::build()?;
    rt.block_on(demo(args))
}

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    // Before prepare_dir deletes the previous demo's state: a demo still running in this
    // directory keeps it, and this one stops with the lock error.
    let lock = match relay_state::InstanceLock::acquire(&args.dir.join(STATE_FILE)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("xdr-relay: error: {e}");
            return Ok(ExitCode::from(super::check_config::EXIT_BAD_CONFIG));
        }
    };
    let sim = Sim::start(SimConfig {
        tenants: args.tenants,
        seed: args.seed,
        // Short-lived tokens so refresh-token rotation shows within a demo's minutes.
        access_token_lifetime: Duration::from_secs(120),
        late_visibility: Duration::from_secs(5),
        late_visibility_jitter: Duration::from_secs(2),
        activity: 30,
        backlog: 20,
        backlog_span: Duration::from_secs(3_600),
        ..SimConfig::default()
    })
    .await
    .context("cannot start the simulator")?;
    let config_path = prepare_dir(&args.dir, &sim)?;

    let env = super::process_env();
    let config =
        relay_config::load(&relay_config::LoadOptions::new(&config_path, &env)).map_err(|e| {
            anyhow::anyhow!("the demo wrote a configuration that does not validate:\n{e}")
        })?;
    let state = Arc::new(super::state::open(
        &config,
        super::state::Access::Exclusive(&lock),
    )?);
    let relay = Relay::new(
        &config,
        state,
        RelayOptions {
            // Faster than the 10 s floor operators get, so the demo is lively.
            poll_interval_override: Some(Duration::from_secs(3)),
            shutdown_grace: Duration::from_secs(5),
            ..RelayOptions::default()
        },
    )
    .context("cannot build the relay")?;
    let status = relay.status();

    println!(
        "xdr-relay demo: simulator at {} with {} tenant(s); configuration in {}; events go to {}",
        sim.base_url(),
        sim.tenants().len(),
        config_path.display(),
        args.dir.join("events").display()
    );
    println!(
        "stop with Ctrl-C{}",
        match args.duration {
            Some(d) => format!(" (or wait {d} s)"),
            None => String::new(),
        }
    );

    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let duration = args.duration;
    tokio::spawn(async move {
        match duration {
            Some(secs) => {
                tokio::select! {
                    _ = super::shutdown_signal() => {}
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                }
            }
            None => super::shutdown_signal().await,
        }
        stopper.cancel();
    });
    let printer_stop = shutdown.clone();
    let every = Duration::from_secs(args.every.max(1));
    let printer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = printer_stop.cancelled() => break,
                _ = tick.tick() => print!("{}", live_lines(&status.snapshot())),
            }
        }
        status
    });

    let report = relay.run(shutdown).await.context("the relay failed")?;
    let status = printer.await.context("status printer")?;
    print!("{}", live_lines(&status.snapshot()));
    println!(
        "done: {} poll(s), {} new version(s) committed, {} delivered to the file sink; left in outbox: {:?}",
        report.polls, report.events, report.delivered, report.left_in_outbox
    );
    println!("events: {}", args.dir.join("events").display());
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// One line per tenant: polls, events, lag, auth; then one per sink.
fn live_lines(s: &RelayStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "-- {}", s.taken_at.format("%H:%M:%S"));
    for t in &s.tenants {
        let feeds: Vec<_> = s.feeds.iter().filter(|f| f.tenant == t.name).collect();
        let polls: u64 = feeds.iter().map(|f| f.polls).sum();
        let events: u64 = feeds.iter().map(|f| f.events).sum();
        let errors: u64 = feeds.iter().map(|f| f.errors.total()).sum();
        let lag = feeds
            .iter()
            .filter_map(|f| f.lag)
            .max()
            .map(|d| format!("{}s", d.as_secs()))
            .unwrap_or_else(|| "-".into());
        let auth = match &t.auth {
            None => "pending".to_string(),
            Some(relay_state::AuthState::Ok { .. }) => "ok".to_string(),
            Some(relay_state::AuthState::NeedsConsent { code, .. }) => {
                format!("NEEDS CONSENT ({code})")
            }
            Some(relay_state::AuthState::Failing { error, .. }) => format!("failing: {error}"),
        };
        let _ = writeln!(
            out,
            "   {:<16} polls {polls:>5}  events {events:>6}  errors {errors:>3}  lag {lag:>5}  auth {auth}",
            t.name
        );
    }
    for k in &s.sinks {
        let _ = writeln!(
            out,
            "   sink {:<11} delivered {:>6}  outbox {:>5}",
            k.name, k.sent, k.outbox.rows
        );
    }
    out
}

/// Writes the demo's configuration for `sim` into `dir`, starting its state and events
/// afresh. Returns the path of relay.toml.
fn prepare_dir(dir: &Path, sim: &Sim) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A new simulator has forgotten the refresh tokens an earlier demo rotated, so an old
    // state store would only hold dead tokens: start over.
    for f in ["state.db", "state.db-wal", "state.db-shm", "state.key"] {
        let p = dir.join(f);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    let outbox = dir.join("state.db-outbox");
    if outbox.exists() {
        fs::remove_dir_all(&outbox)
            .with_context(|| format!("cannot remove {}", outbox.display()))?;
    }
    let events = dir.join("events");
    if events.exists() {
        fs::remove_dir_all(&events)
            .with_context(|| format!("cannot remove {}", events.display()))?;
    }
    let files = RelayFiles {
        overlap_secs: 60,
        ..RelayFiles::default()
    };
    sim.write_relay_config(dir, &files)
        .with_context(|| format!("cannot write the demo configuration into {}", dir.display()))
}
