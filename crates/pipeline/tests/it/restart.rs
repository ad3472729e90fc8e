//! Stopping and rebuilding the relay on the same state file loses nothing and repeats
//! nothing.

use std::time::Duration;

use relay_config::Api;
use relay_sim::Sim;
use relay_state::StoreOptions;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_loses_and_repeats_nothing() {
    let mut cfg = sim_config(3, 23);
    // A used refresh token dies 1 s after rotation: the second run must sign in with the
    // token rotated into the state store, not the stale bootstrap token in the config.
    cfg.refresh_token_grace = Duration::from_secs(1);
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs = [
        spec(0, Api::Graph, Auth::RefreshToken),
        spec(1, Api::Defender, Auth::ClientSecret),
        spec(2, Api::Defender, Auth::RefreshToken),
    ];
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let names: Vec<String> = specs.iter().map(|s| tenant_name(s.sim_index)).collect();

    let state = open_state(dir.path(), StoreOptions::default());
    let first = start(&config, state.clone(), options());
    tokio::time::sleep(Duration::from_secs(7)).await;
    // No relay can see a version made and superseded while it is down, yet the ground
    // truth lists it; so while the relay is down, new versions are made by hand, each of
    // a different item.
    sim.settle().await;
    let report = first.stop().await;
    assert!(report.events > 0, "{report:?}");
    let before = delivered(&sink_dir);
    assert!(!before.is_empty());
    drop(state);
    touch_some(&sim, &before);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A new process: the state file reopened, the config unchanged (so the refresh-token
    // tenants' bootstrap tokens in it are stale: the stored, rotated ones must win).
    let state = open_state(dir.path(), StoreOptions::default());
    let second = start(&config, state.clone(), options());
    sim.resume_activity();
    tokio::time::sleep(Duration::from_secs(6)).await;
    sim.settle().await;
    let settled = chrono::Utc::now();
    wait_for(&second.status, Duration::from_secs(20), "catch-up", |s| {
        caught_up(s, &names, settled)
    })
    .await;
    let status = second.status.snapshot();
    second.stop().await;

    let delivered = delivered(&sink_dir);
    assert!(delivered.len() > before.len());
    assert_exactly_once(&delivered, &expected(&sim, &specs));
    // The second run re-read the overlap with the first run's versions and skipped them.
    assert!(
        status
            .feeds
            .iter()
            .map(|f| f.duplicates_skipped)
            .sum::<u64>()
            > 0
    );
    assert!(
        status.feeds.iter().all(|f| f.errors.total() == 0),
        "{status:#?}"
    );
    sim.shutdown().await;
}

/// A crash (every task dropped wherever it was, nothing drained) loses nothing; the only
/// repeats allowed are events of the batch that was being delivered when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_run_loses_nothing() {
    let sim = Sim::start(sim_config(2, 31)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs = [
        spec(0, Api::Graph, Auth::RefreshToken),
        spec(1, Api::Defender, Auth::ClientSecret),
    ];
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let names: Vec<String> = specs.iter().map(|s| tenant_name(s.sim_index)).collect();

    // The first process gets its own runtime so it can be killed without a drain.
    let state = open_state(dir.path(), StoreOptions::default());
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = relay_pipeline::Relay::new(&config, state.clone(), options()).unwrap();
    let status = relay.status();
    doomed.spawn(relay.run(tokio_util::sync::CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(status.snapshot().events() > 0);
    // Versions made and superseded while the relay is dead can be seen by no relay, yet
    // the ground truth lists them. So background activity stops, the relay catches up,
    // and the work in flight at the crash is a bulk update of many items, each once.
    sim.settle().await;
    let settled = chrono::Utc::now();
    wait_for(
        &status,
        Duration::from_secs(20),
        "catch-up before the crash",
        |s| {
            s.feeds
                .iter()
                .all(|f| f.checkpoint.is_some_and(|c| c > settled))
        },
    )
    .await;
    sim.burst(
        &sim.tenants()[0].tenant_id,
        relay_config::Stream::Alerts,
        80,
    )
    .unwrap();
    sim.burst(
        &sim.tenants()[1].tenant_id,
        relay_config::Stream::Incidents,
        30,
    )
    .unwrap();
    // Visible after 300 ms, polled within the next second: kill it somewhere in there.
    let events = status.snapshot().events();
    let kill_after =
        Duration::from_millis(300 + u64::from(chrono::Utc::now().timestamp_subsec_millis() % 1500));
    tokio::time::sleep(kill_after).await;
    let events_at_crash = status.snapshot().events();
    doomed.shutdown_background();
    // Blocking writes already started finish on their own threads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.settle().await;
    let written = delivered(&sink_dir);
    let before = written.len();
    drop(state);
    touch_some(&sim, &written);

    let state = open_state(dir.path(), StoreOptions::default());
    let second = start(&config, state, options());
    sim.resume_activity();
    tokio::time::sleep(Duration::from_secs(4)).await;
    eprintln!(
        "crashed {kill_after:?} after the bursts, with {} of their events committed",
        events_at_crash - events
    );
    sim.settle().await;
    let settled = chrono::Utc::now();
    wait_for(&second.status, Duration::from_secs(20), "catch-up", |s| {
        caught_up(s, &names, settled)
    })
    .await;
    second.stop().await;

    let delivered = delivered(&sink_dir);
    let expected = expected(&sim, &specs);
    let unique: std::collections::BTreeSet<Version> = delivered.iter().cloned().collect();
    assert_exactly_once(&unique.iter().cloned().collect::<Vec<_>>(), &expected);
    // Repeats: only versions the first process wrote but had not acknowledged.
    let mut first_index = std::collections::HashMap::new();
    let mut repeats = 0;
    for (i, v) in delivered.iter().enumerate() {
        match first_index.get(v) {
            Some(&first) => {
                repeats += 1;
                assert!(
                    first < before,
                    "{v:?} repeated although first written after the crash"
                );
            }
            None => {
                first_index.insert(v.clone(), i);
            }
        }
    }
    assert!(repeats <= 1000, "{repeats} repeats: more than one batch");
    sim.shutdown().await;
}

/// Makes a new version of a few items whose newest version was delivered, one each.
/// Call with activity settled, so the ground truth is final.
fn touch_some(sim: &Sim, delivered: &[Version]) {
    let mut newest: std::collections::HashMap<(String, relay_config::Feed, String), _> =
        std::collections::HashMap::new();
    for v in sim.ground_truth() {
        let t = newest
            .entry((v.tenant_id, v.feed, v.id))
            .or_insert(v.last_update);
        *t = (*t).max(v.last_update);
    }
    let mut touched = std::collections::BTreeSet::new();
    for (tenant_id, feed, id, at) in delivered {
        if touched.len() == 4 {
            break;
        }
        let key = (tenant_id.clone(), *feed, id.clone());
        if newest.get(&key) == Some(at)
            && touched.insert((tenant_id.clone(), feed.stream(), id.clone()))
        {
            sim.touch(tenant_id, feed.stream(), id, None).unwrap();
        }
    }
    assert_eq!(touched.len(), 4);
}
