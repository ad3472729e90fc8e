//! Throughput of `parse_page` on the real sample pages and on a page of ~6 KB Graph alerts,
//! beside a plain `serde_json::from_slice::<Value>` of the same bytes (the cost of merely
//! reading the JSON into a tree, which the client avoids).
//!
//! `cargo bench -p relay-defender --bench parse_pages -- [SECONDS] [--page TEXT]` prints
//! items/s and MiB/s for: `parse` (body → `Item`s, as the pager hands them over),
//! `+fields` (that, then the severity and title the pipeline's normalize step takes from
//! each item) and `Value`, each run for SECONDS (default 2) on the pages whose name
//! contains TEXT.
//!
//! On a busy machine the rates vary by ±30 %; `--calls N` instead runs each case exactly
//! N times and prints nothing measured, for an instruction count that does not depend on
//! the load:
//! `valgrind --tool=callgrind --toggle-collect='parse_pages::to_*' target/release/deps/parse_pages-* --calls 20 --page x200`
//! (the Ir it reports over `calls × items` is instructions per item for `to_items` +
//! `to_events`; collect one at a time for each alone).

use std::hint::black_box;
use std::time::{Duration, Instant};

use relay_config::Feed;
use relay_defender::{parse_page, Item, ItemFields};

const SAMPLES: [(&str, Feed); 4] = [
    ("m365d-incidents-list-1.json", Feed::M365dIncidents),
    ("graph-alerts_v2-1.json", Feed::GraphAlerts),
    ("graph-incidents-expand-alerts-1.json", Feed::GraphIncidents),
    ("mde-alerts-expand-evidence-1.json", Feed::MdeAlerts),
];

/// Items in the synthetic page: a Graph page of this many alerts is ~1.2 MB.
const SYNTHETIC_ITEMS: usize = 200;

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

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{what}: {e}");
    std::process::exit(1);
}

/// Drops the whitespace outside strings: Graph sends compact JSON, the samples are pretty.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A compact Graph alerts page of `n` elements, cycling through the sample's alerts
/// (5.8 and 6.6 KB compact: ~6.2 KB per item).
fn synthetic_graph_page(n: usize) -> Vec<u8> {
    let name = "graph-alerts_v2-1.json";
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| fail(&path, e));
    let page = parse_page(Feed::GraphAlerts, &bytes).unwrap_or_else(|e| fail(&path, e));
    let docs: Vec<String> = page.items.iter().map(|i| minify(i.raw.get())).collect();
    let mut body = String::from(
        r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2","value":["#,
    );
    for (k, doc) in docs.iter().cycle().take(n).enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(doc);
    }
    body.push_str("]}");
    body.into_bytes()
}

/// Case `parse`: one body into `Item`s, tenant fields included, as the pager hands them
/// over.
#[inline(never)]
fn to_items(feed: Feed, bytes: &[u8]) -> Vec<Item> {
    match parse_page(feed, bytes) {
        Ok(page) => page
            .items
            .into_iter()
            .map(|i| Item {
                tenant_id: "00000000-0000-0000-0000-000000000001".to_string(),
                tenant: "contoso".to_string(),
                feed,
                id: i.id,
                last_update: i.last_update,
                fields: i.fields,
                raw: i.raw,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Case `+fields`: that, then each item's severity text and title.
#[inline(never)]
fn to_events(feed: Feed, bytes: &[u8]) -> Vec<(Option<String>, Option<String>)> {
    to_items(feed, bytes)
        .into_iter()
        .map(severity_and_title)
        .collect()
}

/// Severity text and title of one item, as the pipeline's normalize step derives them
/// (its title preference, copied: this crate cannot depend on the pipeline). Since the
/// head pass reads them, this no longer touches the document.
fn severity_and_title(item: Item) -> (Option<String>, Option<String>) {
    let ItemFields {
        severity,
        title,
        incident_name,
        display_name,
    } = item.fields;
    let [own, a, b] = match item.feed {
        Feed::M365dIncidents => [incident_name, display_name, title],
        Feed::GraphIncidents => [display_name, incident_name, title],
        Feed::MdeAlerts | Feed::GraphAlerts => [title, display_name, incident_name],
    };
    (severity, own.or(a).or(b))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default())
    };
    let budget = args
        .iter()
        .find_map(|a| a.parse::<f64>().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs_f64);
    let calls = flag("--calls").map(|n| n.parse::<u64>().unwrap_or_else(|e| fail(&n, e)));
    let only = flag("--page").unwrap_or_default();

    let mut cases: Vec<(String, Feed, Vec<u8>)> = SAMPLES
        .iter()
        .map(|(name, feed)| {
            let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| fail(&path, e));
            (name.to_string(), *feed, bytes)
        })
        .collect();
    cases.push((
        format!("graph alerts_v2 x{SYNTHETIC_ITEMS}, compact"),
        Feed::GraphAlerts,
        synthetic_graph_page(SYNTHETIC_ITEMS),
    ));
    cases.retain(|(name, _, _)| name.contains(&only));

    if let Some(calls) = calls {
        for (name, feed, bytes) in &cases {
            for _ in 0..calls {
                black_box(to_items(*feed, black_box(bytes)));
            }
            for _ in 0..calls {
                black_box(to_events(*feed, black_box(bytes)));
            }
            println!("{name}: {calls} calls of to_items and of to_events");
        }
        return;
    }
    println!(
        "{:<38} {:>5} {:>7} {:>13} {:>7} {:>13} {:>13} {:>7}",
        "page", "items", "B/item", "parse items/s", "MiB/s", "+fields /s", "Value items/s", "ratio"
    );
    for (name, feed, bytes) in &cases {
        let (feed, bytes) = (*feed, bytes.as_slice());
        let n = match parse_page(feed, bytes) {
            Ok(p) => p.items.len(),
            Err(e) => fail(name, e),
        };
        let parse = rate(budget, || {
            black_box(to_items(feed, black_box(bytes)));
        });
        let fields = rate(budget, || {
            black_box(to_events(feed, black_box(bytes)));
        });
        let value = rate(budget, || {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(bytes)).ok());
        });
        let mib = bytes.len() as f64 / (1024.0 * 1024.0);
        println!(
            "{:<38} {:>5} {:>7} {:>13.0} {:>7.1} {:>13.0} {:>13.0} {:>6.2}x",
            name,
            n,
            bytes.len() / n.max(1),
            parse * n as f64,
            parse * mib,
            fields * n as f64,
            value * n as f64,
            parse / value
        );
    }
}
