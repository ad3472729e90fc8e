//! Outbox cost per event, the way the daemon uses it: 100,000 realistic ~6 KB events
//! appended through `commit_poll` in polls of 1,000 (one Graph page), then drained by a
//! sink worker with `read_batch` (500 rows / 1 MB, the HEC defaults) and `ack` after each
//! batch. Prints, per event, the wall and CPU time of append, read and ack, the bytes the
//! process wrote to disk during each phase (WAL, checkpoints), and the file's size.
//!
//! `cargo bench -p relay-state --bench outbox`. The database goes in `$RELAY_BENCH_DIR`
//! (default: the system temp dir); put it on the disk you care about, since every commit
//! is fsynced and a tmpfs makes that free. `RELAY_BENCH_ROWS` changes the event count.
//!
//! The payloads are the pipeline's outbox rows (an `Event` serialized as JSON) around the
//! real documents in `benches/testdata/` (copies of shared/samples: Graph alerts_v2 and
//! incidents, Defender XDR incidents, MDE alerts, compacted as the API sends them). Every
//! event gets fresh GUIDs, hashes, long numbers and timestamps, so compression and page
//! contents see what a stream of distinct alerts looks like, not repeated bytes. CPU time
//! is this thread's (`CLOCK_THREAD_CPUTIME_ID`): SQLite does all its work on the
//! calling thread, and CPU is what the daemon's profile counts; wall time adds fsync waits.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use relay_state::{PollCommit, StateStore, StoreOptions};
use serde_json::Value;

const PAGE: usize = 1_000;
const READ_ROWS: usize = 500;
const READ_BYTES: usize = 1_000_000;
const SINK: &str = "splunk";

const SAMPLES: &[&str] = &[
    include_str!("testdata/graph-alerts_v2-1.json"),
    include_str!("testdata/graph-alerts_v2-3-docs.json"),
    include_str!("testdata/graph-incidents-expand-alerts-1.json"),
    include_str!("testdata/m365d-incidents-list-1.json"),
    include_str!("testdata/mde-alerts-expand-evidence-1.json"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = match std::env::var("RELAY_BENCH_ROWS") {
        Ok(n) => n.parse()?,
        Err(_) => 100_000,
    };
    let dir = match std::env::var_os("RELAY_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("bench.db");
    let store = StateStore::open(&path, None, StoreOptions::default())?;

    let docs = sample_documents()?;
    let mut rng = SplitMix(0x5844_5252);
    let start_time = Utc::now() - Duration::days(1);

    // Payloads are made outside the timed region, one page at a time.
    let mut append = Phase::default();
    let mut payload_bytes = 0usize;
    let mut made = 0usize;
    while made < rows {
        let n = PAGE.min(rows - made);
        let version = start_time + Duration::milliseconds(made as i64);
        let page: Vec<(String, Vec<u8>)> = (made..made + n)
            .map(|i| event(&docs[i % docs.len()], i, version, &mut rng))
            .collect::<serde_json::Result<_>>()?;
        payload_bytes += page.iter().map(|(_, p)| p.len()).sum::<usize>();
        let seen: Vec<(&str, _)> = page.iter().map(|(id, _)| (id.as_str(), version)).collect();
        let outbox: Vec<(&str, &[u8])> = page.iter().map(|(_, p)| (SINK, p.as_slice())).collect();
        let commit = PollCommit {
            tenant: "contoso",
            feed: "graph_alerts",
            new_checkpoint: Some(version),
            seen: &seen,
            outbox: &outbox,
            prune_seen_before: version - Duration::minutes(10),
        };
        append.time(|| store.commit_poll(&commit))?;
        made += n;
    }
    let depth = store.depth(SINK)?;
    assert_eq!(depth.rows, rows as u64, "appended rows missing");
    println!(
        "{rows} events of {:.0} bytes on average (uncompressed), pages of {PAGE}",
        payload_bytes as f64 / rows as f64
    );
    append.report("append (commit_poll)", rows);
    let disk = Disk::measure(&path)?;
    println!(
        "on disk after append: {:.0} bytes/event in live SQLite pages (page_size {}), files incl. segments {:.0} bytes/event",
        disk.live_bytes as f64 / rows as f64,
        disk.page_size,
        disk.file_bytes as f64 / rows as f64,
    );

    let (mut read, mut ack) = (Phase::default(), Phase::default());
    let (mut after, mut drained, mut drained_bytes) = (0, 0, 0);
    loop {
        let batch = read.time(|| store.read_batch(SINK, after, READ_ROWS, READ_BYTES))?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        drained += batch.len();
        drained_bytes += batch.iter().map(|r| r.payload.len()).sum::<usize>();
        ack.time(|| store.ack(SINK, after))?;
    }
    assert_eq!(drained, rows, "drained row count");
    assert_eq!(drained_bytes, payload_bytes, "drained bytes");
    assert_eq!(store.depth(SINK)?.rows, 0, "outbox not empty after drain");
    read.report(
        &format!("read (read_batch {READ_ROWS} rows / {READ_BYTES} bytes)"),
        rows,
    );
    ack.report("ack (after each batch)", rows);
    println!(
        "state files and segments after drain: {:.1} MB",
        Disk::measure(&path)?.file_bytes as f64 / 1e6
    );
    store.close()?;
    Ok(())
}

/// Time, CPU and disk writes spent in one kind of call, summed over its calls.
#[derive(Default)]
struct Phase {
    wall_secs: f64,
    cpu_ns: Option<u64>,
    written: Option<u64>,
}

impl Phase {
    fn time<T, E>(&mut self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let (cpu, io) = (thread_cpu_ns(), written_bytes());
        let started = Instant::now();
        let result = f();
        self.wall_secs += started.elapsed().as_secs_f64();
        let add = |total: &mut Option<u64>, before: Option<u64>, after: Option<u64>| {
            *total = match (before, after) {
                (Some(b), Some(a)) => Some(total.unwrap_or(0) + a.saturating_sub(b)),
                _ => None,
            }
        };
        add(&mut self.cpu_ns, cpu, thread_cpu_ns());
        add(&mut self.written, io, written_bytes());
        result
    }

    fn report(&self, what: &str, rows: usize) {
        let per = |x: f64| x / rows as f64;
        let cpu = self.cpu_ns.map_or("n/a".to_owned(), |ns| {
            format!("{:.2}", per(ns as f64 / 1e3))
        });
        let written = self
            .written
            .map_or("n/a".to_owned(), |b| format!("{:.0}", per(b as f64)));
        println!(
            "{what}: {:.2} µs/event wall, {cpu} µs/event CPU, {written} bytes/event written to disk",
            per(self.wall_secs * 1e6),
        );
    }
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// Bytes this process caused to be sent to the storage layer.
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()
}

struct Disk {
    page_size: i64,
    live_bytes: i64,
    file_bytes: u64,
}

impl Disk {
    fn measure(path: &Path) -> Result<Disk, Box<dyn std::error::Error>> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let pragma = |name: &str| -> rusqlite::Result<i64> {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        };
        let page_size = pragma("page_size")?;
        let live_bytes = page_size * (pragma("page_count")? - pragma("freelist_count")?);
        let size = |suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        };
        // Payloads live in segment files in `<state file>-outbox/`.
        let mut segments = path.as_os_str().to_owned();
        segments.push("-outbox");
        let segment_bytes: u64 = match std::fs::read_dir(segments) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum(),
            Err(_) => 0,
        };
        Ok(Disk {
            page_size,
            live_bytes,
            file_bytes: size("") + size("-wal") + segment_bytes,
        })
    }
}

/// One document of the samples, compact, with what the pipeline's normalize step reads.
struct Doc {
    raw: String,
    id_field: &'static str,
    title: Option<String>,
    severity: String,
}

fn sample_documents() -> Result<Vec<Doc>, Box<dyn std::error::Error>> {
    let mut docs = Vec::new();
    for sample in SAMPLES {
        let page: Value = serde_json::from_str(sample)?;
        let items = match page.get("value") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![page],
        };
        for item in items {
            // The profile being reproduced is of ~6 KB alerts; the samples' small
            // documents (2.7–3.5 KB) would pull the average down to 5.2 KB.
            if item.to_string().len() < 4_000 {
                continue;
            }
            let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
            let id_field = if item.get("incidentId").is_some() && item.get("id").is_none() {
                "incidentId"
            } else {
                "id"
            };
            docs.push(Doc {
                title: text("title")
                    .or_else(|| text("displayName"))
                    .or_else(|| text("incidentName")),
                severity: text("severity").unwrap_or_else(|| "unknown".into()),
                raw: serde_json::to_string(&item)?,
                id_field,
            });
        }
    }
    Ok(docs)
}

/// The outbox payload of event `i`: the pipeline's JSON envelope around a copy of `doc`
/// whose GUIDs, hashes, long numbers and timestamps are new (the same original value maps
/// to the same new one within the document, as a tenant id repeated in URLs would).
fn event(
    doc: &Doc,
    i: usize,
    version: DateTime<Utc>,
    rng: &mut SplitMix,
) -> serde_json::Result<(String, Vec<u8>)> {
    let raw = vary(&doc.raw, version, rng);
    // Parsed back so a variation that broke the JSON stops the benchmark.
    let parsed: Value = serde_json::from_str(&raw)?;
    let id = parsed
        .get(doc.id_field)
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| format!("event-{i}"));
    let tenant_id = parsed
        .get("tenantId")
        .and_then(Value::as_str)
        .unwrap_or("b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c");
    let quoted = |s: &str| Value::from(s).to_string();
    let envelope = format!(
        "{{\"tenant_id\":{},\"tenant_name\":\"contoso\",\"stream\":\"alerts\",\"feed\":\"graph_alerts\",\
         \"id\":{},\"version_time\":\"{}\",\"severity\":{},\"title\":{},\"raw\":{raw}}}",
        quoted(tenant_id),
        quoted(&id),
        version.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        quoted(&doc.severity.to_lowercase()),
        doc.title.as_deref().map_or("null".into(), quoted),
    );
    Ok((format!("{id}#{i}"), envelope.into_bytes()))
}

fn vary(text: &str, now: DateTime<Utc>, rng: &mut SplitMix) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 64);
    let mut map: HashMap<&str, String> = HashMap::new();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let token = if boundary { token_at(b, i) } else { None };
        let Some((len, kind)) = token else {
            i += 1;
            continue;
        };
        out.push_str(&text[copied..i]);
        let original = &text[i..i + len];
        let replacement = map
            .entry(original)
            .or_insert_with(|| replace(original, kind, now, rng));
        out.push_str(replacement);
        i += len;
        copied = i;
    }
    out.push_str(&text[copied..]);
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Guid,
    Time,
    Hex,
    Digits,
}

fn token_at(b: &[u8], i: usize) -> Option<(usize, Kind)> {
    let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
    let run = |pred: fn(u8) -> bool| (i..b.len()).take_while(|&k| pred(b[k])).count();
    let end_ok = |len: usize| !at(len).is_ascii_alphanumeric();
    if (0..36).all(|k| match k {
        8 | 13 | 18 | 23 => at(k) == b'-',
        _ => at(k).is_ascii_hexdigit(),
    }) && end_ok(36)
    {
        return Some((36, Kind::Guid));
    }
    let pattern = b"dddd-dd-ddTdd:dd:dd";
    if pattern.iter().enumerate().all(|(k, &p)| match p {
        b'd' => at(k).is_ascii_digit(),
        c => at(k) == c,
    }) {
        let mut len = pattern.len();
        if at(len) == b'.' {
            len += 1
                + (i + len + 1..b.len())
                    .take_while(|&k| b[k].is_ascii_digit())
                    .count();
        }
        if at(len) == b'Z' {
            return Some((len + 1, Kind::Time));
        }
    }
    let hex = run(|c| c.is_ascii_hexdigit());
    if hex >= 16 && end_ok(hex) && b[i..i + hex].iter().any(u8::is_ascii_digit) {
        return Some((hex, Kind::Hex));
    }
    let digits = run(|c| c.is_ascii_digit());
    if digits >= 5 && end_ok(digits) {
        return Some((digits, Kind::Digits));
    }
    None
}

fn replace(original: &str, kind: Kind, now: DateTime<Utc>, rng: &mut SplitMix) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    match kind {
        Kind::Guid | Kind::Hex => original
            .bytes()
            .map(|c| match c {
                b'-' => '-',
                c if c.is_ascii_uppercase() => HEX[rng.below(16)].to_ascii_uppercase() as char,
                _ => HEX[rng.below(16)] as char,
            })
            .collect(),
        Kind::Digits => original
            .bytes()
            .enumerate()
            .map(|(k, _)| {
                let d = if k == 0 {
                    1 + rng.below(9)
                } else {
                    rng.below(10)
                };
                char::from(b'0' + d as u8)
            })
            .collect(),
        Kind::Time => {
            let fraction = original
                .split_once('.')
                .map_or(0, |(_, f)| f.len().saturating_sub(1));
            // Up to a week before the poll, at Defender's 100-ns precision.
            let back = Duration::nanoseconds(rng.below(7 * 86_400 * 10_000_000) as i64 * 100);
            let t = now - back;
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            if fraction > 0 {
                let nanos = format!("{:09}", t.timestamp_subsec_nanos());
                s.push('.');
                s.push_str(&nanos[..fraction.min(9)]);
                s.extend(std::iter::repeat_n('0', fraction.saturating_sub(9)));
            }
            s.push('Z');
            s
        }
    }
}

/// A small deterministic generator, so every run stores the same bytes.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}
