//! Throughput of `parse_page` on the real sample pages, beside a plain
//! `serde_json::from_slice::<Value>` of the same bytes (the cost of merely reading the
//! JSON into a tree, which the client avoids).
//!
//! `cargo bench -p relay-defender --bench parse_pages` — prints items/s and MiB/s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use relay_config::Feed;
use relay_defender::{parse_page, Item};

const SAMPLES: [(&str, Feed); 4] = [
    ("m365d-incidents-list-1.json", Feed::M365dIncidents),
    ("graph-alerts_v2-1.json", Feed::GraphAlerts),
    ("graph-incidents-expand-alerts-1.json", Feed::GraphIncidents),
    ("mde-alerts-expand-evidence-1.json", Feed::MdeAlerts),
];

/// Runs `f` repeatedly for about `budget`, returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up caches and the allocator.
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        f();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        calls += 64;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs_f64);
    println!(
        "{:<40} {:>6} {:>8} {:>14} {:>10} {:>14} {:>10} {:>7}",
        "sample", "items", "bytes", "parse items/s", "MiB/s", "Value items/s", "MiB/s", "ratio"
    );
    for (name, feed) in SAMPLES {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };
        let n = match parse_page(feed, &bytes) {
            Ok(p) => p.items.len(),
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        };
        let ours = rate(budget, || {
            // Into full `Item`s, tenant fields included, as the pager hands them over.
            if let Ok(page) = parse_page(feed, black_box(&bytes)) {
                let items: Vec<Item> = page
                    .items
                    .into_iter()
                    .map(|i| Item {
                        tenant_id: "00000000-0000-0000-0000-000000000001".to_string(),
                        tenant: "contoso".to_string(),
                        feed,
                        id: i.id,
                        last_update: i.last_update,
                        raw: i.raw,
                    })
                    .collect();
                black_box(items);
            }
        });
        let value = rate(budget, || {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).ok());
        });
        let mib = bytes.len() as f64 / (1024.0 * 1024.0);
        println!(
            "{:<40} {:>6} {:>8} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>6.2}x",
            name,
            n,
            bytes.len(),
            ours * n as f64,
            ours * mib,
            value * n as f64,
            value * mib,
            ours / value
        );
    }
}
