//! The `xdr-relay` binary: parses the command line, sets up logging and starts things.
//! Each subcommand lives in `commands/`; the work itself is done by the library crates.

mod commands;
mod runtime;
mod systemd;
mod telemetry;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: with the runtime's worker, blocking-pool and
/// writer threads handing buffers to each other, glibc's per-thread arenas each keep their
/// own peak (the RSS growth of issue 13) and its allocator was a sixth of the daemon's CPU
/// at 10,000 tenants. Measured against glibc and mimalloc in docs/performance.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Pulls Microsoft Defender incidents and alerts from many tenants into SIEMs.
#[derive(Debug, Parser)]
#[command(name = "xdr-relay", version, about)]
struct Cli {
    /// Log format: `text` (human-readable; the default on a terminal) or `json` (one object
    /// per line, for journald and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = telemetry::LogFormat::Auto)]
    log_format: telemetry::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: poll every enabled tenant and deliver to the sinks until SIGTERM.
    Run(commands::run::Args),
    /// The whole pipeline against the built-in simulator, delivering to ./xdr-relay-demo/.
    Demo(commands::demo::Args),
    /// Validate relay.toml and tenants.d/*.toml; print every problem; exit 0 or 2.
    CheckConfig(commands::check_config::Args),
    /// Run the Entra ID + Defender API simulator (for demos, tests and load runs).
    Sim(commands::sim::Args),
    /// Per tenant and feed: last poll, checkpoint, lag, errors, auth; per sink: outbox.
    Status(commands::status::Args),
    /// Onboard a customer tenant: consent and credentials (browser sign-in, device code or
    /// admin consent), its tenant file, and a test call; exit 0, 1 (failed) or 2 (bad input).
    Onboard(Box<commands::onboard::Args>),
    /// Response playbooks' decisions: list them; approve or deny those awaiting approval
    /// (works while the daemon runs).
    Actions(commands::actions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Sim(args) => commands::sim::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Onboard(args) => commands::onboard::run(*args),
        Command::Actions(args) => commands::actions::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xdr-relay: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
