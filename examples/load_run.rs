//! Load run: many simulated tenants polled by the real daemon, with the figures an
//! operator sizes a server by. Documented in docs/performance.md.
//!
//! ```sh
//! cargo build --release && cargo run --release --example load_run -- --tenants 1000 --minutes 5
//! ```
//!
//! Starts the simulator in this process (1,000 tenants by default, Microsoft's quotas on,
//! versions visible a fixed delay after they are made), writes a configuration for it,
//! runs `target/release/xdr-relay run` on it with a file sink, and while it runs samples
//! the daemon's CPU time and peak RSS from /proc and the file sink's output. Prints: CPU
//! (share of one core), peak RSS, polls/s, 429s, token requests, and p50/p99 of
//! visible→written latency (a line's first sighting in the sink file minus the moment
//! its version became visible). Everything stays on 127.0.0.1.

use relay_sim::{RelayFiles, Sim, SimConfig};
use std::fs;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LATE_VISIBILITY: Duration = Duration::from_secs(20);

struct Args {
    tenants: usize,
    minutes: u64,
    interval_secs: u64,
    activity: u32,
    binary: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        tenants: 1_000,
        minutes: 5,
        interval_secs: 60,
        activity: 1,
        binary: PathBuf::from("target/release/xdr-relay"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--tenants" => a.tenants = v.parse().unwrap_or(a.tenants),
            "--minutes" => a.minutes = v.parse().unwrap_or(a.minutes),
            "--interval-secs" => a.interval_secs = v.parse().unwrap_or(a.interval_secs),
            "--activity" => a.activity = v.parse().unwrap_or(a.activity),
            "--binary" => a.binary = PathBuf::from(v),
            other => eprintln!("ignoring unknown argument {other}"),
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

/// Peak resident set size (VmHWM) in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Reads lines appended to the sink file since the last call; for each new version
/// records when it was first seen.
struct Tail {
    path: PathBuf,
    offset: u64,
    latencies_ms: Vec<i64>,
    lines: u64,
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
            if let Some(t) = version_time(&line) {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = parse_args();
    if !args.binary.exists() {
        eprintln!(
            "{} does not exist: run `cargo build --release` first",
            args.binary.display()
        );
        std::process::exit(2);
    }
    let sim = Sim::start(SimConfig {
        tenants: args.tenants,
        seed: 1000,
        late_visibility: LATE_VISIBILITY,
        late_visibility_jitter: Duration::ZERO,
        activity: args.activity,
        backlog: 5,
        backlog_span: Duration::from_secs(1_800),
        ..SimConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("simulator: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let config = sim
        .write_relay_config(
            dir.path(),
            &RelayFiles {
                poll_interval_secs: args.interval_secs,
                overlap_secs: 120,
                availability_lag_secs: 0,
                first_fetch_hours: 1,
                // One file for the whole run, so the tail below sees every line.
                sinks_toml: "[sinks.file]\ntype = \"file\"\npath = \"events\"\nmax_file_bytes = 1099511627776\n"
                    .to_string(),
                ..RelayFiles::default()
            },
        )
        .unwrap_or_else(|e| panic!("config: {e}"));
    let log = fs::File::create(dir.path().join("relay.log")).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(&args.binary)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", args.binary.display()));
    let pid = child.id();
    println!(
        "load run: {} tenants x 2 streams, {} s interval, {} min, daemon pid {pid}",
        args.tenants, args.interval_secs, args.minutes
    );
    let mut tail = Tail {
        path: dir.path().join("events").join("events.jsonl"),
        offset: 0,
        latencies_ms: Vec::new(),
        lines: 0,
    };
    let started = Instant::now();
    let run_for = Duration::from_secs(args.minutes * 60);
    // The first interval is start-up (every tenant's first token and backlog); steady
    // state is measured after it.
    let warmup = Duration::from_secs(args.interval_secs + 10);
    let mut steady: Option<(Instant, f64, u64, u64)> = None;
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
    }
    let cpu_end = cpu_secs(pid).unwrap_or(0.0);
    let rss = peak_rss_mib(pid).unwrap_or(0.0);
    let stats = sim.stats();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let log = fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
    let warnings = log.lines().filter(|l| l.contains("\"WARN\"")).count();
    let errors = log.lines().filter(|l| l.contains("\"ERROR\"")).count();
    println!("daemon log: {warnings} warning(s), {errors} error(s)");
    for l in log.lines().rev().take(5) {
        println!("  {l:.300}");
    }
    let total_cpu = cpu_end;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "total: {total_cpu:.1} CPU-s over {wall:.0} s ({:.1}% of one core incl. start-up)",
        100.0 * total_cpu / wall
    );
    if let Some((t0, cpu0, req0, thr0)) = steady {
        let secs = t0.elapsed().as_secs_f64().max(1.0);
        let cpu = cpu_end - cpu0;
        println!("steady state ({secs:.0} s after the first interval):");
        println!("  CPU: {:.2}% of one core", 100.0 * cpu / secs);
        println!(
            "  API requests/s (polls incl. paging): {:.1}",
            (stats.requests - req0) as f64 / secs
        );
        println!("  429s received: {}", stats.throttled - thr0);
    }
    println!("peak RSS: {rss:.0} MiB");
    println!("429s over the whole run: {}", stats.throttled);
    let tokens = &stats.tokens;
    use relay_sim::entra::{GrantKind, Outcome};
    println!(
        "token requests: {} refresh-token grants issued, {} rejected",
        tokens.total(GrantKind::RefreshToken, Outcome::Issued),
        tokens.total(GrantKind::RefreshToken, Outcome::Rejected)
    );
    let mut l = tail.latencies_ms.clone();
    l.sort_unstable();
    println!(
        "visible->written latency (steady state, {} versions): p50 {:.1} s, p99 {:.1} s",
        l.len(),
        percentile(&l, 0.5) as f64 / 1000.0,
        percentile(&l, 0.99) as f64 / 1000.0
    );
    println!(
        "events written in total: {} (the simulator made {} versions of {} incidents and {} alerts)",
        tail.lines, stats.world.versions, stats.world.incidents, stats.world.alerts
    );
}
