//! End-to-end tests of the engine: the real `xdr-relay` binary against the simulator,
//! delivering to the file sink, compared with the simulator's ground truth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use relay_sim::entra::{GrantKind, Outcome};
use std::time::{Duration, Instant};
use util::*;

/// A version the simulator showed for this long must have been seen by a daemon polling
/// every 10 s (± jitter, plus start-up): the "must deliver" set.
const MUST_SEE: Duration = Duration::from_secs(25);

/// The file sink's batch size: at most this many events are in flight per kill.
const FILE_SINK_BATCH: usize = 1000;

/// Stops the simulator's activity, lets every version become visible, waits until the
/// daemon delivered all it must, and returns (delivered, must deliver).
async fn settle_and_wait(h: &Harness, within: Duration) -> (Vec<Delivered>, Vec<Delivered>) {
    settle_and_wait_for(h, within, |h| h.must_deliver(MUST_SEE)).await
}

/// [`settle_and_wait`] with the "must deliver" set computed by `must` once settled.
async fn settle_and_wait_for(
    h: &Harness,
    within: Duration,
    must: impl FnOnce(&Harness) -> Vec<Delivered>,
) -> (Vec<Delivered>, Vec<Delivered>) {
    h.sim.settle().await;
    let truth = must(h);
    let ok = wait_for(within, || {
        let (missing, _, _) = compare(&h.delivered(), &truth);
        missing.is_empty()
    })
    .await;
    let delivered = h.delivered();
    if !ok {
        let (missing, _, _) = compare(&delivered, &truth);
        eprintln!(
            "{} of {} versions still missing after {within:?}, e.g. {:?}",
            missing.len(),
            truth.len(),
            &missing[..missing.len().min(5)]
        );
    }
    (delivered, truth)
}

fn assert_complete(h: &Harness, delivered: &[Delivered], truth: &[Delivered], logs: usize) {
    let (missing, _, _) = compare(delivered, truth);
    // Anything delivered must have been observable at some instant.
    let (_, _, unexpected) = compare(delivered, &h.ground_truth());
    let log: String = (0..logs).map(|n| h.log(n)).collect::<Vec<_>>().join("\n");
    assert!(
        missing.is_empty(),
        "missing {} of {}: {:?}\n{}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(10)],
        &log[log.len().saturating_sub(20_000)..]
    );
    assert!(
        unexpected.is_empty(),
        "delivered versions the simulator never showed: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
}

fn twenty_tenants() -> Setup {
    let mut setup = Setup::default();
    setup.sim.tenants = 20;
    setup.sim.seed = 20;
    setup.sim.access_token_lifetime = Duration::from_secs(10);
    setup.sim.late_visibility = Duration::from_secs(20);
    setup.sim.late_visibility_jitter = Duration::from_secs(5);
    setup.sim.activity = 12;
    setup
}

/// 20 tenants, both streams and both API families, 10-second access tokens (so refresh
/// tokens rotate all the time), versions visible 20–25 s late, two minutes of activity:
/// the file sink holds every version the simulator showed long enough to be seen, each
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tenants_every_version_exactly_once() {
    let h = Harness::start(twenty_tenants()).await;
    let relay = KillOnDrop(h.spawn_relay(0));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let (delivered, truth) = settle_and_wait(&h, Duration::from_secs(60)).await;
    drop(relay);
    assert!(
        truth.len() > 1_000,
        "the simulator made only {} versions",
        truth.len()
    );
    assert_complete(&h, &delivered, &truth, 1);
    let (_, dups, _) = compare(&delivered, &truth);
    assert!(
        dups.is_empty(),
        "duplicates: {:?}",
        &dups[..dups.len().min(10)]
    );
    let refreshed = h
        .sim
        .entra()
        .token_requests()
        .total(GrantKind::RefreshToken, Outcome::Issued);
    assert!(
        refreshed > 40,
        "expected refresh-token rotation with 10 s tokens, saw {refreshed} refresh grants"
    );
}

/// The daemon killed with SIGKILL three times at random moments and restarted: nothing
/// missing; duplicates only for what was in flight at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_loses_nothing() {
    let mut setup = twenty_tenants();
    setup.sim.tenants = 8;
    setup.sim.seed = 8;
    let h = Harness::start(setup).await;
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    for run in 0..3 {
        let child = h.spawn_relay(run);
        tokio::time::sleep(Duration::from_millis(next(4_000, 25_000))).await;
        signal(&child, "KILL");
        let mut child = child;
        let status = child.wait().expect("wait");
        assert!(!status.success(), "run {run} was killed");
    }
    let relay = KillOnDrop(h.spawn_relay(3));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (delivered, truth) = settle_and_wait(&h, Duration::from_secs(60)).await;
    drop(relay);
    assert_complete(&h, &delivered, &truth, 4);
    let (_, dups, _) = compare(&delivered, &truth);
    let extra: usize = dups.iter().map(|(_, n)| n - 1).sum();
    assert!(
        extra <= 3 * FILE_SINK_BATCH,
        "{extra} duplicate deliveries after 3 kills (bound: one batch per kill): {:?}",
        &dups[..dups.len().min(10)]
    );
    assert!(
        dups.iter().all(|(_, n)| *n <= 4),
        "a version delivered more than once per kill"
    );
}

/// SIGTERM: the daemon exits 0 within its grace period, and a restart delivers nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_restart_repeats_nothing() {
    let mut setup = twenty_tenants();
    setup.sim.tenants = 6;
    setup.sim.seed = 6;
    let h = Harness::start(setup).await;
    let mut child = h.spawn_relay(0);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = h.delivered().len();
    assert!(before > 0, "nothing delivered in 15 s\n{}", h.log(0));
    signal(&child, "TERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM (grace is 10 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status:?}\n{}", h.log(0));
    assert!(h.log(0).contains("xdr-relay stopped"), "{}", h.log(0));

    let relay = KillOnDrop(h.spawn_relay(1));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (delivered, truth) = settle_and_wait(&h, Duration::from_secs(60)).await;
    drop(relay);
    assert_complete(&h, &delivered, &truth, 2);
    let (_, dups, _) = compare(&delivered, &truth);
    assert!(
        dups.is_empty(),
        "a restart after SIGTERM repeated: {:?}",
        &dups[..dups.len().min(10)]
    );
}

/// A revoked grant on one tenant: `status` shows it needs consent, the daemon says so
/// once (no storm), and every other tenant delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_isolates_one_tenant() {
    let mut setup = twenty_tenants();
    setup.sim.seed = 21;
    let h = Harness::start(setup).await;
    let victim = h.sim.tenants()[3].clone();
    h.sim.entra().revoke_grant(&victim.tenant_id);
    let started = Instant::now();
    let relay = KillOnDrop(h.spawn_relay(0));
    tokio::time::sleep(Duration::from_secs(50)).await;
    let (delivered, truth) = settle_and_wait(&h, Duration::from_secs(60)).await;
    let ran = started.elapsed();

    let others: Vec<Delivered> = truth
        .iter()
        .filter(|d| d.tenant_id != victim.tenant_id)
        .cloned()
        .collect();
    assert_complete(&h, &delivered, &others, 1);
    assert!(
        delivered.iter().all(|d| d.tenant_id != victim.tenant_id),
        "the revoked tenant delivered events"
    );

    let out = h.run_cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&victim.name) && l.contains("NEEDS CONSENT"))
        .unwrap_or_else(|| {
            panic!(
                "status does not show {} needing consent:\n{text}",
                victim.name
            )
        });
    assert!(line.contains("AADSTS"), "{line}");
    let ok_tenants = text.lines().filter(|l| l.contains(" ok since ")).count();
    assert_eq!(ok_tenants, 19, "{text}");

    drop(relay);
    let log = h.log(0);
    // Said once, when the tenant lost consent; the polls refused meanwhile say nothing.
    let consent_lines = log
        .lines()
        .filter(|l| {
            l.contains("needs consent") && l.contains("\"ERROR\"") && l.contains(&victim.name)
        })
        .count();
    assert_eq!(consent_lines, 1, "{ran:?}:\n{log}");
    let token_calls = h
        .sim
        .entra()
        .token_requests()
        .tenant_requests(&victim.tenant_id, GrantKind::RefreshToken);
    assert!(
        token_calls <= 3,
        "{token_calls} token requests for the revoked tenant: a retry storm"
    );
}

/// SIGHUP re-reads tenants.d: a new tenant file starts delivering, a removed one stops, an
/// invalid file is rejected with the running configuration kept, and the tenants that
/// stayed lose nothing and repeat nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_adds_and_removes_tenants() {
    let mut setup = twenty_tenants();
    setup.sim.tenants = 4;
    setup.sim.seed = 44;
    let h = Harness::start(setup).await;
    let tenants = h.sim.tenants().to_vec();
    let (late, leaving) = (&tenants[2], &tenants[3]);
    let late_file = h.path(&format!("tenants.d/{}.toml", late.name));
    let late_toml = std::fs::read_to_string(&late_file).unwrap();
    std::fs::remove_file(&late_file).unwrap();

    let relay = KillOnDrop(h.spawn_relay(0));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        h.delivered().iter().all(|d| d.tenant_id != late.tenant_id),
        "a tenant without a file was polled"
    );

    // An invalid tenant file: rejected, everything keeps running.
    let bad = h.path("tenants.d/broken.toml");
    std::fs::write(&bad, "tenant_id = \"not-a-guid\"\n").unwrap();
    signal(&relay.0, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || h
            .log(0)
            .contains("configuration reload rejected"))
        .await,
        "{}",
        h.log(0)
    );
    std::fs::remove_file(&bad).unwrap();

    // Add one tenant, remove another.
    std::fs::write(&late_file, late_toml).unwrap();
    std::fs::remove_file(h.path(&format!("tenants.d/{}.toml", leaving.name))).unwrap();
    // The added tenant is looked at from here on: what its versions superseded before could
    // not be seen.
    let added_at = chrono::Utc::now();
    signal(&relay.0, "HUP");
    assert!(
        wait_for(Duration::from_secs(10), || h
            .log(0)
            .contains("configuration reloaded"))
        .await,
        "{}",
        h.log(0)
    );
    let removed_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (delivered, stayed) = settle_and_wait_for(&h, Duration::from_secs(60), |h| {
        let late_truth: Vec<Delivered> = h
            .must_deliver_since(MUST_SEE, added_at)
            .into_iter()
            .filter(|d| d.tenant_id == late.tenant_id)
            .collect();
        assert!(!late_truth.is_empty());
        h.must_deliver(MUST_SEE)
            .into_iter()
            .filter(|d| d.tenant_id != leaving.tenant_id && d.tenant_id != late.tenant_id)
            .chain(late_truth)
            .collect()
    })
    .await;
    drop(relay);
    let truth = h.must_deliver(MUST_SEE);

    assert_complete(&h, &delivered, &stayed, 1);
    let (_, dups, _) = compare(&delivered, &truth);
    assert!(
        dups.is_empty(),
        "duplicates across the reload: {:?}",
        &dups[..dups.len().min(10)]
    );
    assert!(
        delivered.iter().any(|d| d.tenant_id == late.tenant_id),
        "the added tenant delivered nothing"
    );
    let cutoff = removed_at + chrono::Duration::seconds(5);
    let late_from_removed = delivered.iter().filter(|d| {
        d.tenant_id == leaving.tenant_id
            && chrono::DateTime::parse_from_rfc3339(&d.version_time)
                .map(|t| t > cutoff)
                .unwrap_or(false)
    });
    assert_eq!(
        late_from_removed.count(),
        0,
        "the removed tenant kept delivering"
    );
}
