//! Hot reload against the simulator: tenants added, removed and changed while events keep
//! coming; the tenants that stay lose and repeat nothing, a removed one stops, an added one
//! delivers its whole first fetch; invalid reloads change nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_config::{Api, AuthMethod, Config, Feed, SinkConfig, Stream};
use relay_pipeline::{PipelineError, Relay, RelayOptions, ReloadReport};
use relay_sim::{GroundTruthVersion, Sim};
use relay_state::{StateStore, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::util::*;

/// Comfortably above the longest gap between two polls of a restarted tenant (the old
/// task's last poll, the new task's first poll jittered over its 1.5 s interval).
const DWELL: Duration = Duration::from_secs(5);

fn feeds_of(api: Api) -> [Feed; 2] {
    [
        Feed::of(api, Stream::Incidents),
        Feed::of(api, Stream::Alerts),
    ]
}

/// The versions of `truth` on the feeds `spec`'s tenant polls.
fn truth_of(sim: &Sim, spec: &TenantSpec, truth: &[GroundTruthVersion]) -> BTreeSet<Version> {
    let tenant_id = &sim.tenants()[spec.sim_index].tenant_id;
    let feeds = feeds_of(spec.api);
    truth
        .iter()
        .filter(|v| &v.tenant_id == tenant_id && feeds.contains(&v.feed))
        .map(|v| (v.tenant_id.clone(), v.feed, v.id.clone(), v.last_update))
        .collect()
}

fn checkpoints(state: &StateStore, tenant: &str, api: Api) -> Vec<Option<DateTime<Utc>>> {
    feeds_of(api)
        .iter()
        .map(|f| state.checkpoint(tenant, f.as_str()).unwrap())
        .collect()
}

/// `config` with only the tenants named.
fn with_tenants(config: &Config, names: &[&str]) -> Config {
    let mut c = config.clone();
    c.tenants.retain(|t| names.contains(&t.name.as_str()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_restarts_tenants_without_loss_or_repeat() {
    let mut cfg = sim_config(4, 41);
    // A used refresh token dies 1 s after rotation: the restarted tenant A must go on with
    // the rotated token the token manager holds, not the stale bootstrap in its file.
    cfg.refresh_token_grace = Duration::from_secs(1);
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let a = spec(0, Api::Graph, Auth::RefreshToken);
    let b = spec(1, Api::Defender, Auth::ClientSecret);
    let c = spec(2, Api::Defender, Auth::RefreshToken);
    let d = spec(3, Api::Graph, Auth::ClientSecret);
    let all = config(&sim, &[a, b, c, d], dir.path(), &sink_dir);
    let (na, nb, nc, nd) = ("t0", "t1", "t2", "t3");

    // The configured 1 s intervals, not the test override: A's change must matter.
    let opts = RelayOptions {
        poll_interval_override: None,
        ..options()
    };
    let state = open_state(dir.path(), StoreOptions::default());
    let initial = with_tenants(&all, &[na, nb, nd]);
    let relay = Relay::new(&initial, Arc::clone(&state), opts).unwrap();
    let status = relay.status();
    let reload = relay.reload_handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let b_polls = |s: &relay_pipeline::RelayStatus| {
        s.feeds
            .iter()
            .filter(|f| f.tenant == nb)
            .map(|f| f.polls)
            .sum::<u64>()
    };

    // A sink change is rejected, naming the sink, and the relay keeps running.
    let mut sink_changed = initial.clone();
    sink_changed.sinks.insert(
        "out".into(),
        SinkConfig::File(relay_config::FileSinkConfig {
            path: dir.path().join("elsewhere"),
            max_file_bytes: 1 << 30,
            max_files: 10,
        }),
    );
    let err = reload.reload(sink_changed).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PipelineError::ReloadRejected { .. }),
        "{err:?}"
    );
    assert!(
        text.contains("sinks.out: changed") && text.contains("systemctl restart xdr-relay"),
        "{text}"
    );

    // A new tenant without any refresh token rejects the whole reload: B, which it would
    // also have removed, keeps polling.
    let mut no_token = all.tenant(nc).unwrap().clone();
    no_token.name = "t9".into();
    no_token.auth.method = AuthMethod::RefreshToken {
        client_secret: None,
        refresh_token: None,
    };
    let mut bad = with_tenants(&all, &[na, nd]);
    bad.tenants.push(no_token);
    let err = reload.reload(bad).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tenant t9: no refresh token") && text.contains("kept"),
        "{text}"
    );
    let polls_then = b_polls(&status.snapshot());
    wait_for(&status, Duration::from_secs(10), "B to keep polling", |s| {
        b_polls(s) > polls_then
    })
    .await;
    let names: Vec<String> = status
        .snapshot()
        .tenants
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names, [na, nb, nd]);
    assert!(state.load_refresh_token("t9").unwrap().is_none());

    // The real reload: C added, B removed, A's poll interval changed, D untouched.
    let a_before = checkpoints(&state, na, a.api);
    assert!(a_before.iter().all(Option::is_some), "{a_before:?}");
    let d_polls_before: u64 = status
        .snapshot()
        .feeds
        .iter()
        .filter(|f| f.tenant == nd)
        .map(|f| f.polls)
        .sum();
    let mut next = with_tenants(&all, &[na, nc, nd]);
    next.tenants
        .iter_mut()
        .find(|t| t.name == na)
        .unwrap()
        .poll_interval = Duration::from_millis(1500);
    let reloaded_at = Utc::now();
    let report = reload.reload(next.clone()).await.unwrap();
    assert_eq!(
        report,
        ReloadReport {
            added: vec![nc.into()],
            removed: vec![nb.into()],
            restarted: vec![na.into()],
            unchanged: 1,
        }
    );
    assert_eq!(
        report.to_string(),
        "configuration reloaded: 1 added (t2), 1 removed (t1), 1 restarted (t0), 1 unchanged"
    );
    let b_after = checkpoints(&state, nb, b.api);
    let snapshot = status.snapshot();
    let names: Vec<&str> = snapshot.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, [na, nc, nd]);
    assert!(snapshot.feeds.iter().all(|f| f.tenant != nb));

    // Activity goes on; A's committed checkpoints never go back.
    let mut a_last = a_before.clone();
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let now = checkpoints(&state, na, a.api);
        for (old, new) in a_last.iter().zip(&now) {
            assert!(new >= old, "A's checkpoint went back: {old:?} → {new:?}");
        }
        a_last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a_last.iter().zip(&a_before).all(|(now, then)| now > then),
        "A did not poll after its restart: {a_before:?} → {a_last:?}"
    );

    sim.settle().await;
    let settled = Utc::now();
    let stayed = [na.to_string(), nc.to_string(), nd.to_string()];
    let last = wait_for(&status, Duration::from_secs(20), "catch-up", |s| {
        s.feeds
            .iter()
            .filter(|f| stayed.contains(&f.tenant))
            .all(|f| f.checkpoint.is_some_and(|c| c > settled))
            && s.outbox_rows() == 0
    })
    .await;
    shutdown.cancel();
    let run = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // After shutdown a reload is refused.
    let err = reload.reload(next).await.unwrap_err();
    assert!(matches!(err, PipelineError::NotRunning { .. }), "{err:?}");

    let delivered = delivered(&sink_dir);
    let mut counts: HashMap<&Version, usize> = HashMap::new();
    for v in &delivered {
        *counts.entry(v).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    // The run's totals still count the removed tenant's work.
    assert_eq!(run.events, delivered.len() as u64, "{run:?}");
    assert_eq!(run.delivered, delivered.len() as u64, "{run:?}");

    let dwelling = sim.ground_truth_dwelling(DWELL);
    let everything = sim.ground_truth();
    let of = |s: &TenantSpec| -> BTreeSet<Version> {
        let id = &sim.tenants()[s.sim_index].tenant_id;
        delivered.iter().filter(|v| &v.0 == id).cloned().collect()
    };

    // A (restarted) and D (untouched): everything seen long enough, nothing invented.
    for (name, s) in [(na, &a), (nd, &d)] {
        let got = of(s);
        let must = truth_of(&sim, s, &dwelling);
        let may = truth_of(&sim, s, &everything);
        let missing: Vec<_> = must.difference(&got).collect();
        let extra: Vec<_> = got.difference(&may).collect();
        assert!(must.len() > 20, "too little activity for {name}");
        assert!(
            missing.is_empty() && extra.is_empty(),
            "tenant {name}: missing {missing:?}; not in the ground truth {extra:?}"
        );
    }

    // C: its first fetch (2 h, the backlog is 1 h deep) brought the newest version of
    // every item, and every version made after it started and seen long enough.
    let got = of(&c);
    let may = truth_of(&sim, &c, &everything);
    let mut newest: BTreeMap<(Feed, String), &Version> = BTreeMap::new();
    for v in &may {
        let e = newest.entry((v.1, v.2.clone())).or_insert(v);
        if v.3 > e.3 {
            *e = v;
        }
    }
    let must: BTreeSet<Version> = truth_of(&sim, &c, &dwelling)
        .into_iter()
        .filter(|v| v.3 >= reloaded_at)
        .chain(newest.values().map(|v| (*v).clone()))
        .collect();
    let missing: Vec<_> = must.difference(&got).collect();
    let extra: Vec<_> = got.difference(&may).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "tenant t2: missing {missing:?}; not in the ground truth {extra:?}"
    );
    assert!(got.len() >= newest.len() && !newest.is_empty());

    // B: nothing polled after its removal.
    assert_eq!(checkpoints(&state, nb, b.api), b_after);
    let b_late: Vec<_> = of(&b).into_iter().filter(|v| v.3 >= reloaded_at).collect();
    assert!(
        b_late.is_empty(),
        "B delivered after its removal: {b_late:?}"
    );
    assert!(!of(&b).is_empty());

    // D's counters went on (its tasks were never restarted); no tenant had errors.
    let d_polls: u64 = last
        .feeds
        .iter()
        .filter(|f| f.tenant == nd)
        .map(|f| f.polls)
        .sum();
    assert!(
        d_polls > d_polls_before + 10,
        "{d_polls_before} → {d_polls}"
    );
    for f in &last.feeds {
        assert_eq!(f.errors.total(), 0, "{f:?}");
    }
    for t in &last.tenants {
        assert!(
            matches!(t.auth, Some(relay_state::AuthState::Ok { .. })),
            "{t:?}"
        );
    }
    sim.shutdown().await;
}

/// A tenant's `[sink_overrides.NAME]` for a HEC sink changes on reload, live: its next
/// events go to its own index while the other tenant's keep the sink's labels; an override
/// the sink refuses rejects the reload, naming the tenant file, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_a_tenants_hec_labels_live() {
    use relay_config::{HecOverrides, SplunkHecConfig};
    use relay_sinks::splunk_hec::test_receiver::HecReceiver;

    let sim = Sim::start(sim_config(2, 43)).await.unwrap();
    let receiver = HecReceiver::start_default().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = spec(0, Api::Graph, Auth::ClientSecret);
    let b = spec(1, Api::Graph, Auth::ClientSecret);
    let mut initial = config(&sim, &[a, b], dir.path(), &dir.path().join("out"));
    initial.sinks.insert(
        "splunk".into(),
        SinkConfig::SplunkHec(SplunkHecConfig {
            url: receiver.url(),
            token: relay_config::Secret::new(
                relay_sinks::splunk_hec::test_receiver::HecReceiverConfig::default().token,
            ),
            index: None,
            source: None,
            sourcetype_incidents: None,
            sourcetype_alerts: None,
            sourcetype_actions: None,
            host: None,
            gzip: true,
            gzip_level: relay_config::DEFAULT_GZIP_LEVEL,
            request_timeout: Duration::from_secs(10),
            batch: relay_config::BatchConfig {
                linger: Duration::from_millis(100),
                ..Default::default()
            },
            indexer_ack: Default::default(),
            max_in_flight: relay_config::DEFAULT_HEC_MAX_IN_FLIGHT,
            tls: Default::default(),
        }),
    );
    for t in &mut initial.tenants {
        t.sinks = vec!["splunk".into()];
    }
    let (na, nb) = ("t0", "t1");
    let state = open_state(dir.path(), StoreOptions::default());
    let relay = Relay::new(&initial, Arc::clone(&state), options()).unwrap();
    let status = relay.status();
    let reload = relay.reload_handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    let index_of = |tenant: &str| -> Vec<Option<String>> {
        receiver
            .events()
            .iter()
            .filter(|e| e.envelope["fields"]["tenant_name"] == tenant)
            .map(|e| e.envelope["index"].as_str().map(str::to_string))
            .collect()
    };
    wait_for(
        &status,
        Duration::from_secs(20),
        "first events of both",
        |_| !index_of(na).is_empty() && !index_of(nb).is_empty(),
    )
    .await;
    assert!(index_of(na).iter().all(Option::is_none));

    let with_overrides = |o: HecOverrides| {
        let mut c = initial.clone();
        let t = c.tenants.iter_mut().find(|t| t.name == na).unwrap();
        t.hec_overrides.insert("splunk".into(), o);
        c
    };
    let bad = with_overrides(HecOverrides {
        source: Some("x{".into()),
        ..Default::default()
    });
    let text = reload.reload(bad).await.unwrap_err().to_string();
    assert!(
        text.contains("t0.toml") && text.contains("sink_overrides.splunk.source"),
        "{text}"
    );

    let report = reload
        .reload(with_overrides(HecOverrides {
            index: Some("cust_{tenant}".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(report.restarted, vec![na.to_string()]);
    let b_before = index_of(nb).len();
    wait_for(
        &status,
        Duration::from_secs(30),
        "new events of both",
        |_| {
            index_of(na).iter().any(|i| i.as_deref() == Some("cust_t0"))
                && index_of(nb).len() > b_before
        },
    )
    .await;
    // One worker sends batches in order: once the new labels show, every later event of
    // the tenant has them (a batch encoded just before the reload may still arrive first).
    let a_after = index_of(na);
    let switch = a_after
        .iter()
        .position(|i| i.as_deref() == Some("cust_t0"))
        .unwrap();
    assert!(a_after[..switch].iter().all(Option::is_none), "{a_after:?}");
    assert!(
        a_after[switch..]
            .iter()
            .all(|i| i.as_deref() == Some("cust_t0")),
        "{a_after:?}"
    );
    assert!(index_of(nb).iter().all(Option::is_none));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
