//! Benchmark documents: distinct, realistic ~6 KB Graph `alerts_v2` alerts built from the
//! three real samples in `testdata/`.
//!
//! Copying a sample with a new id is not realistic enough: a 1 MB HEC body of three
//! documents repeating lets gzip replace every document after the third by a few
//! back-references (70:1, and fast), and lz4 likewise. Real batches hold alerts of the same
//! few detectors — same keys, titles, descriptions, recommended actions, MITRE ids,
//! binary names — but every id, GUID, hash, host, account, address, time and number
//! differs. So each event takes a sample in turn and replaces, with a seeded generator:
//!
//! * in every token with a digit in it (GUIDs, hashes, SIDs, ids, host and account names)
//!   the hex digits of hex tokens and the digits of others by random ones, except in the
//!   per-detector fields listed in [`KEEP`];
//! * times by valid random times of the same precision (the CEF mapping parses them);
//! * IPv4 addresses by valid random ones (the CEF mapping parses them too);
//! * integers by random integers with as many digits.
//!
//! Bodies of these documents compress about 7:1 with gzip level 6 (`format` prints the ratio):
//! close to real Defender alerts (the HEC sink's notes measure 5.5:1 on a few distinct
//! real alerts; batches repeat detectors more than the samples do).

// Each benchmark uses part of this module.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use relay_config::Feed;
use relay_sinks::{Event, Severity};
use serde_json::value::RawValue;
use serde_json::Value;
use std::net::Ipv4Addr;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SAMPLES: [&str; 2] = [
    include_str!("../../testdata/graph-alerts_v2-1.json"),
    include_str!("../../testdata/graph-alerts_v2-3-docs.json"),
];

/// Fields that are the same for every alert of one detector, kept as the sample has them.
const KEEP: &[&str] = &[
    "@odata.type",
    "detectorId",
    "title",
    "description",
    "recommendedActions",
    "mitreTechniques",
    "category",
];

/// `n` distinct Graph alerts as the pipeline hands them to sinks; compact JSON, tenant ids
/// and names from a pool of 50 tenants. Deterministic.
pub fn graph_alerts(n: usize) -> Result<Vec<Event>, BoxError> {
    let mut samples = Vec::new();
    for sample in SAMPLES {
        let page: Value = serde_json::from_str(sample)?;
        samples.extend(
            page["value"]
                .as_array()
                .ok_or("sample has no value array")?
                .iter()
                .cloned(),
        );
    }
    let mut rng = Rng(0x005e_ed0f_a1e7);
    let tenants: Vec<String> = (0..50).map(|_| rng.guid()).collect();
    (0..n)
        .map(|i| {
            let mut doc = samples[i % samples.len()].clone();
            vary(&mut doc, None, &mut rng);
            let tenant = i * 7 % tenants.len();
            doc["tenantId"] = Value::String(tenants[tenant].clone());
            let id = doc["id"].as_str().ok_or("alert without id")?.to_string();
            let version_time: DateTime<Utc> = doc["lastUpdateDateTime"]
                .as_str()
                .ok_or("alert without lastUpdateDateTime")?
                .parse()?;
            Ok(Event {
                tenant_id: tenants[tenant].clone(),
                tenant_name: format!("tenant{tenant:02}"),
                stream: Feed::GraphAlerts.stream(),
                feed: Feed::GraphAlerts,
                id,
                version_time,
                severity: Severity::from_api(doc["severity"].as_str().unwrap_or("")),
                title: doc["title"].as_str().map(str::to_string),
                raw: RawValue::from_string(doc.to_string())?.into(),
            })
        })
        .collect()
}

/// The same document pretty-printed (line breaks and indentation), as an API or a proxy
/// might return it: the JSON-lines formatter must take the whitespace out.
pub fn pretty(events: &[Event]) -> Result<Vec<Event>, BoxError> {
    events
        .iter()
        .map(|e| {
            let doc: Value = serde_json::from_str(e.raw.get())?;
            let mut p = e.clone();
            p.raw = RawValue::from_string(serde_json::to_string_pretty(&doc)?)?.into();
            Ok(p)
        })
        .collect()
}

fn vary(v: &mut Value, key: Option<&str>, rng: &mut Rng) {
    if key.is_some_and(|k| KEEP.contains(&k)) {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                vary(v, Some(k), rng);
            }
        }
        Value::Array(items) => {
            for item in items {
                vary(item, key, rng);
            }
        }
        Value::String(s) => *s = vary_text(s, rng),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let digits = u.checked_ilog10().unwrap_or(0) + 1;
                let low = if digits > 1 { 10u64.pow(digits - 1) } else { 0 };
                let span = 10u64.saturating_pow(digits) - low;
                *n = (low + rng.next() % span.max(1)).into();
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

fn vary_text(s: &str, rng: &mut Rng) -> String {
    if let Some(t) = vary_time(s, rng) {
        return t;
    }
    if s.parse::<Ipv4Addr>().is_ok() {
        let r = rng.next();
        return Ipv4Addr::new(10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8).to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String, rng: &mut Rng| {
        if token.bytes().any(|b| b.is_ascii_digit()) {
            // Hex (GUID parts, hashes, ids) stays hex; otherwise only the digits change
            // (`Windows10`, `System32`, `clw555test`, `22H2` keep their letters).
            let hex = token.bytes().all(|b| b.is_ascii_hexdigit())
                && token.bytes().any(|b| b.is_ascii_alphabetic());
            for c in token.chars() {
                out.push(match c {
                    '0'..='9' | 'a'..='f' if hex => rng.hex_lower(),
                    'A'..='F' if hex => rng.hex_lower().to_ascii_uppercase(),
                    '0'..='9' => rng.pick(b"0123456789"),
                    c => c,
                });
            }
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c);
        } else {
            flush(&mut token, &mut out, rng);
            out.push(c);
        }
    }
    flush(&mut token, &mut out, rng);
    out
}

/// `2023-10-20T09:54:07.5033333Z` → the same date and hour, random minutes, seconds and
/// fraction digits (as many as before).
fn vary_time(s: &str, rng: &mut Rng) -> Option<String> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shaped = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && digits(17..19)
        && b.last() == Some(&b'Z');
    if !shaped || s.parse::<DateTime<Utc>>().is_err() {
        return None;
    }
    let mut out = format!("{}{:02}:{:02}", &s[..14], rng.next() % 60, rng.next() % 60);
    if let Some(frac) = s[19..s.len() - 1].strip_prefix('.') {
        out.push('.');
        for _ in 0..frac.len() {
            out.push(rng.pick(b"0123456789"));
        }
    }
    out.push('Z');
    Some(out)
}

/// splitmix64: small, seeded, good enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick(&mut self, set: &[u8]) -> char {
        char::from(set[(self.next() % set.len() as u64) as usize])
    }

    fn hex_lower(&mut self) -> char {
        self.pick(b"0123456789abcdef")
    }

    fn guid(&mut self) -> String {
        let h: String = (0..32).map(|_| self.hex_lower()).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}
