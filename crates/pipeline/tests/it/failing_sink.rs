//! A sink that cannot write backs up its own outbox up to the bound, polling pauses
//! instead of dropping anything, and once the destination is fixed everything arrives.

use std::time::Duration;

use relay_config::Api;
use relay_pipeline::{RelayOptions, SinkState};
use relay_sim::Sim;
use relay_state::{OutboxLimit, StoreOptions};

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_sink_fills_its_outbox_pauses_polling_and_recovers_when_fixed() {
    let sim = Sim::start(sim_config(2, 59)).await.unwrap();
    // While polling is paused, a version superseded before polling resumes is never
    // visible to the relay (only an item's newest version is queryable), yet the ground
    // truth counts it; with an outbox bound this small polling pauses again and again. So
    // there is no background activity: the backlog, plus versions made by hand, each
    // superseding one the relay already queued.
    sim.pause_activity();
    let dir = tempfile::tempdir().unwrap();
    // The sink's directory lies under a regular file: every write fails with
    // NotADirectory, a permanent error.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let sink_dir = blocker.join("out");
    let specs = [
        spec(0, Api::Graph, Auth::ClientSecret),
        spec(1, Api::Defender, Auth::RefreshToken),
    ];
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let names: Vec<String> = specs.iter().map(|s| tenant_name(s.sim_index)).collect();
    let limit = 20;
    let state = open_state(
        dir.path(),
        StoreOptions {
            outbox_limit: OutboxLimit {
                max_rows: limit,
                max_bytes: u64::MAX,
            },
            ..StoreOptions::default()
        },
    );
    let relay = start(
        &config,
        state.clone(),
        RelayOptions {
            sink_stopped_retry: Duration::from_secs(1),
            ..options()
        },
    );

    let status = wait_for(
        &relay.status,
        Duration::from_secs(20),
        "the sink stopped and polling paused",
        |s| {
            let sink = s.sink("out").unwrap();
            sink.state == SinkState::Stopped
                && sink.outbox.over_limit
                && s.feeds
                    .iter()
                    .all(|f| f.paused_by_sink.as_deref() == Some("out"))
        },
    )
    .await;
    let sink = status.sink("out").unwrap();
    assert_eq!(sink.sent, 0);
    assert!(sink.failures >= 1);
    assert!(
        sink.last_error.as_deref().unwrap().contains("sink out"),
        "{sink:?}"
    );
    assert!(sink.outbox.rows >= limit);
    assert_eq!(
        status.events(),
        state.depth("out").unwrap().rows,
        "every committed event is queued"
    );
    assert!(status.feeds.iter().all(|f| f.errors.total() == 0));

    // Paused: new versions (each made once, so none is superseded before polling
    // resumes) are not polled while the outbox is full.
    let rows = state.depth("out").unwrap().rows;
    // Only items whose current version is already queued: touching one the relay has
    // not polled yet would supersede a version it never saw.
    let queued: Vec<relay_sinks::Event> = state
        .read_batch("out", 0, 1000, usize::MAX)
        .unwrap()
        .iter()
        .map(|row| relay_sinks::Event::from_outbox_bytes(&row.payload).unwrap())
        .collect();
    assert!(queued.len() >= 3, "{} events queued", queued.len());
    for e in queued.iter().step_by(queued.len() / 3).take(3) {
        sim.touch(&e.tenant_id, e.stream, &e.id, None).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(state.depth("out").unwrap().rows, rows);
    let paused = relay.status.snapshot();
    assert!(
        paused.feeds.iter().all(|f| f.skipped_outbox_full >= 1),
        "{paused:#?}"
    );
    assert!(state
        .status_snapshot()
        .unwrap()
        .sinks
        .iter()
        .any(|s| s.sink == "out" && s.last_error.is_some()));

    // The operator fixes the destination; the next retry delivers and polling resumes.
    std::fs::remove_file(&blocker).unwrap();
    wait_for(
        &relay.status,
        Duration::from_secs(20),
        "delivery after the fix",
        |s| s.sink("out").unwrap().sent >= rows,
    )
    .await;
    sim.settle().await;
    let settled = chrono::Utc::now();
    let status = wait_for(&relay.status, Duration::from_secs(20), "catch-up", |s| {
        caught_up(s, &names, settled)
    })
    .await;
    assert!(status.feeds.iter().all(|f| f.paused_by_sink.is_none()));
    relay.stop().await;

    assert_exactly_once(&delivered(&sink_dir), &expected(&sim, &specs));
    sim.shutdown().await;
}
