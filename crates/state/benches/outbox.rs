//! Outbox throughput: appends 100,000 payloads of about 6 KB (the size of a Defender
//! incident with its alerts) through `commit_poll` in polls of 100, then drains them
//! with `read_batch` + `ack` as a sink worker would, printing rows/s and MB/s for both.
//!
//! `cargo bench -p relay-state --bench outbox`. The database goes in `$RELAY_BENCH_DIR`
//! (default: the system temp dir); put it on the disk you care about, since every commit
//! is fsynced and a tmpfs makes that free.

use std::time::Instant;

use chrono::{Duration, Utc};
use relay_state::{PollCommit, StateStore, StoreOptions};

const ROWS: usize = 100_000;
const BATCH: usize = 100;
const PAYLOAD_BYTES: usize = 6 * 1024;
const READ_ROWS: usize = 500;
const READ_BYTES: usize = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::var_os("RELAY_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("bench.db");
    let store = StateStore::open(&path, None, StoreOptions::default())?;

    // Distinct payloads so nothing benefits from identical pages.
    let payloads: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let mut p = format!("{{\"incidentId\":{i},\"padding\":\"").into_bytes();
            p.extend((0..PAYLOAD_BYTES).map(|j| b'a' + ((i * 31 + j * 7) % 26) as u8));
            p.extend_from_slice(b"\"}");
            p
        })
        .collect();
    let batch_bytes: usize = payloads.iter().map(Vec::len).sum();
    let total_bytes = batch_bytes * (ROWS / BATCH);
    let start_time = Utc::now() - Duration::days(1);

    let started = Instant::now();
    for b in 0..ROWS / BATCH {
        let ids: Vec<String> = (0..BATCH).map(|i| format!("inc-{b}-{i}")).collect();
        let version = start_time + Duration::milliseconds(b as i64);
        let seen: Vec<(&str, _)> = ids.iter().map(|id| (id.as_str(), version)).collect();
        let outbox: Vec<(&str, &[u8])> =
            payloads.iter().map(|p| ("splunk", p.as_slice())).collect();
        store.commit_poll(&PollCommit {
            tenant: "contoso",
            feed: "m365d_incidents",
            new_checkpoint: Some(version),
            seen: &seen,
            outbox: &outbox,
            prune_seen_before: version - Duration::minutes(10),
        })?;
    }
    report("append (commit_poll, 100 per commit)", started, total_bytes);

    let depth = store.depth("splunk")?;
    assert_eq!(depth.rows, ROWS as u64, "appended rows missing");

    let started = Instant::now();
    let (mut after, mut drained, mut drained_bytes) = (0, 0, 0);
    loop {
        let batch = store.read_batch("splunk", after, READ_ROWS, READ_BYTES)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        drained += batch.len();
        drained_bytes += batch.iter().map(|r| r.payload.len()).sum::<usize>();
        store.ack("splunk", after)?;
    }
    report(
        &format!(
            "drain (read_batch {READ_ROWS} rows / {} MiB + ack)",
            READ_BYTES >> 20
        ),
        started,
        drained_bytes,
    );
    assert_eq!(drained, ROWS, "drained row count");
    assert_eq!(
        store.depth("splunk")?.rows,
        0,
        "outbox not empty after drain"
    );
    let file_mb = |path: &std::path::Path| -> std::io::Result<f64> {
        Ok(std::fs::metadata(path)?.len() as f64 / 1e6)
    };
    println!(
        "database file after drain: {:.0} MB at {}",
        file_mb(&path)?,
        path.display()
    );

    // A trickle after the drain: each ack that empties the outbox gives back up to
    // 64 MiB of the backlog's pages.
    let started = Instant::now();
    let small: Vec<(&str, &[u8])> = payloads[..10]
        .iter()
        .map(|p| ("splunk", p.as_slice()))
        .collect();
    for _ in 0..20 {
        store.commit_poll(&PollCommit {
            tenant: "contoso",
            feed: "m365d_incidents",
            new_checkpoint: None,
            seen: &[],
            outbox: &small,
            prune_seen_before: start_time,
        })?;
        let batch = store.read_batch("splunk", after, READ_ROWS, READ_BYTES)?;
        if let Some(last) = batch.last() {
            after = last.seq;
            store.ack("splunk", after)?;
        }
    }
    println!(
        "after 20 trickle polls (10 rows each, acked): {:.0} MB, {:.2} s",
        file_mb(&path)?,
        started.elapsed().as_secs_f64()
    );
    store.close()?;
    Ok(())
}

fn report(what: &str, started: Instant, bytes: usize) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what}: {ROWS} rows in {secs:.2} s = {:.0} rows/s, {:.1} MB/s",
        ROWS as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
}
