//! Formatting throughput: ~6 KB Graph alerts (the real sample `graph-alerts_v2-1.json`) to
//! CEF lines, HEC envelopes and JSON lines. Prints events/s and MB/s of input document.
//!
//! `cargo bench -p relay-sinks --bench format`

use relay_config::Feed;
use relay_sinks::{cef, hec, jsonl, Event, Severity};
use serde_json::value::RawValue;
use serde_json::Value;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SAMPLE: &str = include_str!("../testdata/graph-alerts_v2-1.json");

type BoxError = Box<dyn std::error::Error>;

fn events() -> Result<Vec<Event>, BoxError> {
    let page: Value = serde_json::from_str(SAMPLE)?;
    let alerts = page["value"]
        .as_array()
        .ok_or("sample has no value array")?;
    (0..1000)
        .map(|i| {
            let a = &alerts[i % alerts.len()];
            let mut doc = a.clone();
            // Distinct ids so nothing can be cached across events.
            doc["id"] = Value::String(format!("{}-{i}", a["id"].as_str().unwrap_or("")));
            Ok(Event {
                tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
                tenant_name: "contoso".into(),
                stream: Feed::GraphAlerts.stream(),
                feed: Feed::GraphAlerts,
                id: doc["id"].as_str().unwrap_or("").to_string(),
                version_time: a["lastUpdateDateTime"]
                    .as_str()
                    .ok_or("alert without lastUpdateDateTime")?
                    .parse()?,
                severity: Severity::from_api(a["severity"].as_str().unwrap_or("")),
                title: a["title"].as_str().map(str::to_string),
                raw: RawValue::from_string(doc.to_string())?,
            })
        })
        .collect()
}

fn run(name: &str, events: &[Event], mut format_one: impl FnMut(&Event) -> usize) {
    let input_bytes: usize = events.iter().map(|e| e.raw.get().len()).sum();
    // Warm up, then run for at least a second.
    for e in events {
        black_box(format_one(e));
    }
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut out_bytes = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        for e in events {
            out_bytes += black_box(format_one(black_box(e)));
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = rounds as f64 * events.len() as f64;
    println!(
        "{name:<10} {:>10.0} events/s  {:>7.1} MB/s in  avg out {:>5} B/event  (avg in {} B)",
        n / secs,
        rounds as f64 * input_bytes as f64 / secs / 1e6,
        out_bytes / (rounds as usize * events.len()),
        input_bytes / events.len(),
    );
}

fn main() -> Result<(), BoxError> {
    let events = events()?;
    let cef_opts = cef::CefOptions::default();
    let hec_opts = hec::HecOptions::default();
    let mut line = String::new();
    run("cef", &events, |e| {
        line.clear();
        cef::encode(e, &cef_opts, &mut line);
        line.len()
    });
    let mut buf = Vec::new();
    run("hec", &events, |e| {
        buf.clear();
        hec::encode_event(e, &hec_opts, &mut buf);
        buf.len()
    });
    run("jsonl", &events, |e| {
        buf.clear();
        jsonl::encode_line(e, &mut buf);
        buf.len()
    });
    Ok(())
}
