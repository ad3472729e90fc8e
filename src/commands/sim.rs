//! `xdr-relay sim`: the simulator as a standalone server.

use anyhow::Context;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on. Loopback only, unless you mean it.
    #[arg(long, default_value = "127.0.0.1:8400")]
    pub listen: SocketAddr,
    /// Number of simulated tenants.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Seed of everything random (tenant ids, credentials, content).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3_599)]
    pub token_lifetime_secs: u64,
    /// Seconds before a new version becomes queryable.
    #[arg(long, default_value_t = 20)]
    pub late_visibility_secs: u64,
    /// Creates and updates per tenant per minute.
    #[arg(long, default_value_t = 30)]
    pub activity: u32,
    /// Incidents per tenant that exist at start.
    #[arg(long, default_value_t = 50)]
    pub backlog: usize,
    /// Turn off Microsoft's per-tenant API quotas.
    #[arg(long)]
    pub no_quotas: bool,
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let cfg = relay_sim::SimConfig {
            tenants: args.tenants,
            seed: args.seed,
            access_token_lifetime: Duration::from_secs(args.token_lifetime_secs),
            late_visibility: Duration::from_secs(args.late_visibility_secs),
            activity: args.activity,
            backlog: args.backlog,
            quotas_enabled: !args.no_quotas,
            ..relay_sim::SimConfig::default()
        };
        let sim = relay_sim::Sim::start_on(listener, cfg)
            .await
            .context("cannot start the simulator")?;
        println!("simulator listening on {}", sim.base_url());
        // The simulated tenants' credentials are fake; printing them is the point: they
        // are what a tenant file pointing at the simulator needs.
        for t in sim.tenants() {
            println!(
                "{}",
                serde_json::json!({
                    "name": t.name,
                    "tenant_id": t.tenant_id,
                    "client_id": t.client_id,
                    "client_secret": t.client_secret,
                    "refresh_token": t.refresh_token,
                })
            );
        }
        super::shutdown_signal().await;
        sim.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
