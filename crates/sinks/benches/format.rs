//! Formatting throughput on 1,000 distinct ~6 KB Graph alerts built from the real samples
//! (`common::graph_alerts`): CEF lines, HEC envelopes, JSON lines from compact and from
//! pretty-printed documents, and the gzip of HEC request bodies. Prints events/s and MB/s
//! of input document.
//!
//! `cargo bench -p relay-sinks --bench format [-- NAME…]` (`FORMAT_BENCH_SHOW=1` prints one
//! document)

mod common;

use common::BoxError;
use flate2::write::GzEncoder;
use flate2::Compression;
use relay_sinks::{cef, hec, jsonl, Event};
use std::hint::black_box;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// Names given on the command line (`cargo bench --bench format -- cef jsonl`), if any.
fn selected(name: &str) -> bool {
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    names.is_empty() || names.iter().any(|n| n == name)
}

fn run(name: &str, events: &[Event], mut format_one: impl FnMut(&Event) -> usize) {
    if !selected(name) {
        return;
    }
    let input_bytes: usize = events.iter().map(|e| e.raw.get().len()).sum();
    // Warm up, then run for at least two seconds.
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
        "{name:<12} {:>10.0} events/s  {:>7.1} MB/s in  avg out {:>5} B/event  (avg in {} B)",
        n / secs,
        rounds as f64 * input_bytes as f64 / secs / 1e6,
        out_bytes / (rounds as usize * events.len()),
        input_bytes / events.len(),
    );
}

fn main() -> Result<(), BoxError> {
    let events = common::graph_alerts(1000)?;
    let pretty = common::pretty(&events)?;
    if std::env::var_os("FORMAT_BENCH_SHOW").is_some() {
        // One of the generated documents, to see what is being measured.
        println!("{}", pretty[1].raw.get());
    }
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
    run("jsonl-pretty", &pretty, |e| {
        buf.clear();
        jsonl::encode_line(e, &mut buf);
        buf.len()
    });

    if !selected("hec-gzip") {
        return Ok(());
    }
    // gzip as the HEC sink compresses a request body (`splunk_hec::request::gzip`, at the
    // default `gzip_level`; `FORMAT_BENCH_GZIP_LEVEL` to compare others): bodies of the sink's default 1 MB, each
    // event's share of the time. `out` is the compressed bytes per event.
    let mut bodies = vec![Vec::new()];
    for e in &events {
        let body = bodies.last_mut().ok_or("no body")?;
        hec::encode_event(e, &hec_opts, body);
        if body.len() >= 1_000_000 {
            bodies.push(Vec::new());
        }
    }
    let level: u32 = match std::env::var("FORMAT_BENCH_GZIP_LEVEL") {
        Ok(l) => l.parse()?,
        Err(_) => relay_config::DEFAULT_GZIP_LEVEL,
    };
    let per_body = events.len() as f64 / bodies.len() as f64;
    let raw: usize = bodies.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut rounds = 0u64;
    let mut packed = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        packed = 0;
        for body in &bodies {
            let mut enc = GzEncoder::new(
                Vec::with_capacity(body.len() / 4 + 64),
                Compression::new(level),
            );
            enc.write_all(black_box(body))?;
            packed += black_box(enc.finish()?).len();
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<12} {:>10.0} events/s  {:>7.1} MB/s in  avg out {:>5} B/event  (bodies of {per_body:.0} \
         events, level {level}, ratio {:.1}:1)",
        "hec-gzip",
        rounds as f64 * events.len() as f64 / secs,
        rounds as f64 * raw as f64 / secs / 1e6,
        packed / events.len(),
        raw as f64 / packed as f64,
    );
    Ok(())
}
