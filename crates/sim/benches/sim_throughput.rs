//! Requests per second the simulator serves on ONE core: the server runs on a
//! current-thread tokio runtime in its own thread; reqwest clients on another runtime
//! drive it over keep-alive connections on 127.0.0.1.
//!
//! `cargo bench -p relay-sim --bench sim_throughput` (target: ≥ 5,000 requests/s).

use relay_config::{Audience, Feed};
use relay_sim::{PayloadProfile, Sim, SimConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

const CLIENTS: usize = 32;
const REQUESTS: usize = 40_000;

struct Target {
    base: String,
    tokens: Vec<(Audience, String)>,
}

type Server = std::thread::JoinHandle<Result<(), Error>>;

fn start_server(
    cfg: SimConfig,
) -> Result<(Target, tokio::sync::oneshot::Sender<()>, Server), Error> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || -> Result<(), Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let sim = Sim::start(cfg).await?;
            let tenant = sim.tenants()[0].tenant_id.clone();
            let tokens = [
                Audience::ThreatProtection,
                Audience::WindowsDefenderAtp,
                Audience::Graph,
            ]
            .into_iter()
            .map(|a| {
                (
                    a,
                    sim.entra()
                        .mint_access_token(&tenant, a, Duration::from_secs(3_600)),
                )
            })
            .collect();
            ready_tx
                .send(Target {
                    base: sim.base_url().to_string(),
                    tokens,
                })
                .map_err(|_| "the benchmark stopped waiting for the simulator")?;
            let _ = stop_rx.await;
            sim.shutdown().await;
            Ok(())
        })
    });
    match ready_rx.recv() {
        Ok(target) => Ok((target, stop_tx, handle)),
        // The server thread ended before it was ready: its error says why.
        Err(_) => Err(match handle.join() {
            Ok(Err(e)) => e,
            _ => "the simulator thread ended before it was ready".into(),
        }),
    }
}

fn path(feed: Feed) -> &'static str {
    match feed {
        Feed::M365dIncidents => "api/incidents?$top=10",
        Feed::MdeAlerts => "api/alerts?$top=10&$expand=evidence",
        Feed::GraphIncidents => {
            "v1.0/security/incidents?$top=10&$filter=lastUpdateDateTime%20ge%202000-01-01T00:00:00Z"
        }
        Feed::GraphAlerts => {
            "v1.0/security/alerts_v2?$top=10&$filter=lastUpdateDateTime%20ge%202000-01-01T00:00:00Z"
        }
    }
}

fn run(name: &str, cfg: SimConfig, feeds: &[Feed]) -> Result<(), Error> {
    let (target, stop, server) = start_server(cfg)?;
    let target = Arc::new(target);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let feeds: Arc<Vec<Feed>> = Arc::new(feeds.to_vec());
    let started = Instant::now();
    client_rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .build()?;
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let http = http.clone();
            let target = target.clone();
            let bytes = bytes.clone();
            let feeds = feeds.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..REQUESTS / CLIENTS {
                    let feed = feeds[(c + i) % feeds.len()];
                    let token = &target
                        .tokens
                        .iter()
                        .find(|(a, _)| *a == feed.audience())
                        .ok_or_else(|| format!("no token minted for {feed:?}"))?
                        .1;
                    let url = format!("{}{}", target.base, path(feed));
                    let resp = http.get(&url).bearer_auth(token).send().await?;
                    if !resp.status().is_success() {
                        return Err(format!("GET {url}: HTTP {}", resp.status()).into());
                    }
                    let body = resp.bytes().await?;
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
                Ok::<(), Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<(), Error>(())
    })?;
    let elapsed = started.elapsed();
    let done = (REQUESTS / CLIENTS * CLIENTS) as f64;
    let rps = done / elapsed.as_secs_f64();
    let mbps = bytes.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "{name}: {done} requests in {:.2} s = {rps:.0} requests/s, {mbps:.1} MB/s ({})",
        elapsed.as_secs_f64(),
        if rps >= 5_000.0 {
            "meets 5,000/s"
        } else {
            "BELOW 5,000/s"
        }
    );
    let _ = stop.send(());
    server
        .join()
        .map_err(|_| "the simulator thread panicked")??;
    Ok(())
}

fn main() -> Result<(), Error> {
    let base = SimConfig {
        tenants: 4,
        seed: 1,
        activity: 0,
        backlog: 200,
        quotas_enabled: false,
        late_visibility: Duration::ZERO,
        late_visibility_jitter: Duration::ZERO,
        ..SimConfig::default()
    };
    run(
        "mixed feeds, realistic payloads, $top=10",
        base.clone(),
        &Feed::ALL,
    )?;
    run(
        "alerts_v2, uniform 6 KB alerts, $top=10",
        SimConfig {
            payload: PayloadProfile::Uniform { alert_bytes: 6_000 },
            ..base
        },
        &[Feed::GraphAlerts],
    )
}
