//! An idle poll commits nothing durable: no synced commit, no segment sync, and the
//! ends of many polls share commits. Read through the store's own counters, as
//! `/metrics` shows them.

use std::time::Duration;

use relay_config::Api;
use relay_sim::Sim;
use relay_state::StoreOptions;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_polls_sync_nothing_and_share_commits() {
    let mut cfg = sim_config(12, 5);
    cfg.activity = 0;
    cfg.backlog = 0;
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    // Client secrets: no refresh token rotates, so nothing has a reason to sync.
    let specs: Vec<_> = (0..12)
        .map(|i| {
            let api = if i % 2 == 0 {
                Api::Graph
            } else {
                Api::Defender
            };
            spec(i, api, Auth::ClientSecret)
        })
        .collect();
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let state = open_state(dir.path(), StoreOptions::default());
    let relay = start(&config, state, options());
    // Past every feed's first poll (spread over one interval), then count.
    let warm = wait_for(&relay.status, Duration::from_secs(20), "first polls", |s| {
        s.feeds.iter().all(|f| f.polls >= 2)
    })
    .await;
    let after = wait_for(&relay.status, Duration::from_secs(30), "idle polls", |s| {
        s.feeds.iter().map(|f| f.polls).sum::<u64>()
            >= warm.feeds.iter().map(|f| f.polls).sum::<u64>() + 100
    })
    .await;
    relay.stop().await;

    let polls = after.feeds.iter().map(|f| f.polls).sum::<u64>()
        - warm.feeds.iter().map(|f| f.polls).sum::<u64>();
    let (a, b) = (&after.engine, &warm.engine);
    assert_eq!(after.events(), 0, "the world was meant to be idle");
    assert_eq!(
        a.state_synced_commits, b.state_synced_commits,
        "an idle poll synced the database"
    );
    assert_eq!(
        a.state_segment_syncs, b.state_segment_syncs,
        "an idle poll synced an outbox segment"
    );
    let commits = a.state_commits - b.state_commits;
    assert!(
        commits * 2 <= polls,
        "{polls} idle polls took {commits} commits: their ends did not share them"
    );
}
