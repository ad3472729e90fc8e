//! Every version the simulator made observable arrives in the sink exactly once.

use std::time::Duration;

use relay_config::Api;
use relay_pipeline::RelayOptions;
use relay_sim::Sim;
use relay_state::StoreOptions;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_of_every_tenant_arrives_exactly_once() {
    let mut cfg = sim_config(4, 11);
    // Microsoft's quotas in the simulator, the client's own (lower) limits in the relay.
    cfg.quotas_enabled = true;
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs = [
        spec(0, Api::Graph, Auth::ClientSecret),
        spec(1, Api::Defender, Auth::RefreshToken),
        spec(2, Api::Graph, Auth::RefreshToken),
        spec(3, Api::Defender, Auth::ClientSecret),
    ];
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let state = open_state(dir.path(), StoreOptions::default());
    let names: Vec<String> = specs.iter().map(|s| tenant_name(s.sim_index)).collect();
    let relay = start(
        &config,
        state.clone(),
        RelayOptions {
            rate_limits: None,
            ..options()
        },
    );

    // Activity for a while; access tokens (4 s) expire and refresh tokens rotate meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;
    sim.settle().await;
    let settled = chrono::Utc::now();
    let status = wait_for(&relay.status, Duration::from_secs(20), "catch-up", |s| {
        caught_up(s, &names, settled)
    })
    .await;
    let report = relay.stop().await;

    let expected = expected(&sim, &specs);
    let delivered = delivered(&sink_dir);
    assert!(
        expected.len() > 100,
        "too little activity: {}",
        expected.len()
    );
    assert_exactly_once(&delivered, &expected);

    assert_eq!(report.events, delivered.len() as u64);
    assert_eq!(report.delivered, delivered.len() as u64);
    assert_eq!(report.left_in_outbox.get("out"), Some(&0));
    assert_eq!(status.feeds.len(), 8);
    for f in &status.feeds {
        assert!(f.polls >= 5, "{f:?}");
        assert_eq!(f.errors.total(), 0, "{f:?}");
        assert!(f.lag.is_some_and(|l| l < Duration::from_secs(10)), "{f:?}");
    }
    // The overlap re-scan met versions again and skipped them.
    assert!(
        status
            .feeds
            .iter()
            .map(|f| f.duplicates_skipped)
            .sum::<u64>()
            > 0
    );
    for t in &status.tenants {
        assert!(
            matches!(t.auth, Some(relay_state::AuthState::Ok { .. })),
            "{t:?}"
        );
    }
    // Refresh-token tenants: the rotated token is in the store, not the bootstrap one.
    for s in specs.iter().filter(|s| s.auth == Auth::RefreshToken) {
        let stored = state
            .load_refresh_token(&tenant_name(s.sim_index))
            .unwrap()
            .unwrap();
        assert_ne!(stored.expose(), sim.tenants()[s.sim_index].refresh_token);
    }
    let snapshot = state.status_snapshot().unwrap();
    assert!(
        snapshot.feeds.iter().all(|f| f.last_poll_ok == Some(true)),
        "{snapshot:?}"
    );
    sim.shutdown().await;
}

/// With a single request permit for everyone, every feed of every tenant still gets its
/// turn: the permit queue is first come, first served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_permit_serves_every_tenant_in_turn() {
    let sim = Sim::start(sim_config(3, 71)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        spec(0, Api::Graph, Auth::ClientSecret),
        spec(1, Api::Defender, Auth::ClientSecret),
        spec(2, Api::Graph, Auth::RefreshToken),
    ];
    let mut config = config(&sim, &specs, dir.path(), &dir.path().join("out"));
    config.http.max_requests_in_flight = 1;
    let relay = start(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    );
    let status = wait_for(
        &relay.status,
        Duration::from_secs(15),
        "3 polls of every feed",
        |s| {
            s.feeds
                .iter()
                .all(|f| f.polls >= 3 && f.errors.total() == 0)
        },
    )
    .await;
    assert_eq!(status.feeds.len(), 6);
    relay.stop().await;
    sim.shutdown().await;
}
