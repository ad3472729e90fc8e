//! Fairness: a tenant onboarded with a deep backlog drains it at its own quota while every
//! other tenant's new versions still arrive within one poll interval (plus the
//! availability lag and 5 s). The admission gate is kept small so requests queue at it
//! and the order it serves them in decides the others' latency.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_config::{Api, Feed};
use relay_defender::{Quota, RateLimits};
use relay_pipeline::RelayOptions;
use relay_sim::{PayloadProfile, Sim};
use relay_state::StoreOptions;

use crate::util::*;

const TENANTS: usize = 16;
const BACKLOG: usize = 2_500;
const INTERVAL: Duration = Duration::from_secs(2);
const LATE: Duration = Duration::from_millis(300);

/// Reads what the file sink appended since the last call, remembering when each line
/// was first seen.
#[derive(Default)]
struct Tail {
    offsets: HashMap<PathBuf, u64>,
    /// (tenant id, version time) → first seen.
    seen: BTreeMap<(String, String, DateTime<Utc>), DateTime<Utc>>,
}

impl Tail {
    fn poll(&mut self, dir: &Path) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let now = Utc::now();
        for e in entries {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) != Some("jsonl") {
                continue;
            }
            let offset = self.offsets.entry(path.clone()).or_default();
            let mut f = std::fs::File::open(&path).unwrap();
            f.seek(SeekFrom::Start(*offset)).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            // Only whole lines; a line being written is read next time.
            let whole = text.rfind('\n').map_or(0, |i| i + 1);
            *offset += whole as u64;
            for line in text[..whole].lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let key = (
                    v["tenant_id"].as_str().unwrap().to_string(),
                    v["id"].as_str().unwrap().to_string(),
                    v["version_time"].as_str().unwrap().parse().unwrap(),
                );
                self.seen.entry(key).or_insert(now);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_tenant_does_not_delay_the_others() {
    let mut cfg = sim_config(TENANTS, 23);
    cfg.backlog = 0;
    cfg.backlog_of = vec![(0, BACKLOG)];
    cfg.late_visibility = LATE;
    cfg.activity = 6;
    // No version replaced before a poll could see it, so every one must arrive.
    cfg.min_update_gap = INTERVAL * 3;
    cfg.payload = PayloadProfile::Uniform { alert_bytes: 600 };
    // Microsoft's quotas in the simulator: a relay draining faster than its quota would
    // be answered 429.
    cfg.quotas_enabled = true;
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs: Vec<_> = (0..TENANTS)
        .map(|i| spec(i, Api::Graph, Auth::ClientSecret))
        .collect();
    let mut config = config(&sim, &specs, dir.path(), &sink_dir);
    // Requests queue at a gate of four: what it serves first decides the others' latency.
    config.http.max_requests_in_flight = 4;
    let state = open_state(dir.path(), StoreOptions::default());
    let backlog_tenant = sim.tenants()[0].tenant_id.clone();
    let relay = start(
        &config,
        state,
        RelayOptions {
            poll_interval_override: Some(INTERVAL),
            // Every tenant keeps to 120 requests a minute, under the simulator's 150.
            rate_limits: Some(RateLimits {
                graph: vec![Quota::per_minute(120)],
                ..RateLimits::unlimited()
            }),
            ..options()
        },
    );

    // Watch the sink until the backlog tenant's history has arrived.
    let started = Utc::now();
    let graph = |f: Feed| matches!(f, Feed::GraphIncidents | Feed::GraphAlerts);
    let history = sim
        .ground_truth()
        .into_iter()
        .filter(|v| graph(v.feed) && v.tenant_id == backlog_tenant && v.last_update < started)
        .count();
    assert!(history > BACKLOG, "{history}");
    let mut tail = Tail::default();
    // Drained once both of its feeds committed a window reaching past the start (a
    // checkpoint moves only after a window's last page), and the sink has it all.
    let drained = loop {
        tail.poll(&sink_dir);
        let s = relay.status.snapshot();
        let past_start = s
            .feeds
            .iter()
            .filter(|f| f.tenant == tenant_name(0))
            .all(|f| f.checkpoint.is_some_and(|c| c > started));
        if past_start && s.outbox_rows() == 0 {
            break Utc::now();
        }
        assert!(
            Utc::now() - started < chrono::Duration::seconds(240),
            "the backlog did not drain in 4 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tail.poll(&sink_dir);
    // Versions of the history that the activity replaced before the drain reached them
    // are gone from the API; the rest arrived.
    let backlog_in = tail
        .seen
        .keys()
        .filter(|(t, _, v)| *t == backlog_tenant && *v < started)
        .count();
    assert!(
        backlog_in * 100 >= history * 95,
        "{backlog_in} of {history} history versions arrived"
    );
    // A few more intervals for what the others made at the end of the drain.
    tokio::time::sleep(INTERVAL * 3 + Duration::from_secs(5)).await;
    tail.poll(&sink_dir);
    relay.stop().await;
    sim.settle().await;

    // The backlog was deep enough to need its quota's pacing: at 120 requests a minute
    // and 50 incidents a page it cannot drain in under ~20 s.
    let took = (drained - started).to_std().unwrap();
    assert!(
        took >= Duration::from_secs(15),
        "the backlog drained in {took:?}: too shallow to test fairness"
    );
    assert_eq!(sim.stats().throttled, 0, "a tenant went over its quota");

    // Every other tenant's versions made during the drain, and when they arrived.
    let bound = INTERVAL + config.tenants[0].availability_lag + Duration::from_secs(5);
    let truth = sim.ground_truth();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut missing = Vec::new();
    for v in truth
        .iter()
        .filter(|v| graph(v.feed) && v.tenant_id != backlog_tenant)
    {
        let visible = v.last_update + chrono::Duration::from_std(LATE).unwrap();
        if visible < started || visible > drained {
            continue;
        }
        match tail
            .seen
            .get(&(v.tenant_id.clone(), v.id.clone(), v.last_update))
        {
            Some(at) => latencies.push((*at - visible).to_std().unwrap_or_default()),
            None => missing.push(v),
        }
    }
    assert!(
        latencies.len() >= 50,
        "too little activity during the drain: {} versions",
        latencies.len()
    );
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "backlog of {backlog_in} versions drained in {took:?}; the other {} tenants' {} \
         versions: p50 {:?}, p99 {p99:?}, max {:?} (bound {bound:?})",
        TENANTS - 1,
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    assert!(
        p99 <= bound,
        "the backlog delayed the other tenants: p99 {p99:?} > {bound:?}"
    );
    assert!(
        missing.is_empty(),
        "{} of the others' versions never arrived: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
