//! A tenant whose grant is revoked is marked as needing consent, says so without a log
//! storm, and does not hold up the other tenants.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_config::Api;
use relay_sim::Sim;
use relay_state::{AuthState, StoreOptions};

use crate::util::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines_containing(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

// Single-threaded so the log subscriber set for this test sees every task's events.
#[tokio::test]
async fn revoked_grant_marks_tenant_needs_consent_and_others_carry_on() {
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = Sim::start(sim_config(3, 47)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs = [
        spec(0, Api::Graph, Auth::RefreshToken),
        spec(1, Api::Defender, Auth::ClientSecret),
        spec(2, Api::Defender, Auth::RefreshToken),
    ];
    let config = config(&sim, &specs, dir.path(), &sink_dir);
    let state = open_state(dir.path(), StoreOptions::default());
    let relay = start(&config, state.clone(), options());
    wait_for(
        &relay.status,
        Duration::from_secs(10),
        "a first successful poll of every feed",
        |s| s.feeds.iter().all(|f| f.last_success.is_some()),
    )
    .await;

    sim.entra().revoke_grant(&sim.tenants()[0].tenant_id);
    let revoked = tokio::time::Instant::now();
    // Access tokens live 4 s; the next refresh meets the revoked grant.
    let deadline = revoked + Duration::from_secs(15);
    loop {
        if let Some(AuthState::NeedsConsent { code, .. }) = state.auth_state("t0").unwrap() {
            assert!(code.starts_with("AADSTS"), "{code}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "t0 never marked needs_consent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let window = revoked.elapsed();

    sim.settle().await;
    let settled = chrono::Utc::now();
    let others = vec![tenant_name(1), tenant_name(2)];
    let status = wait_for(
        &relay.status,
        Duration::from_secs(20),
        "catch-up of the others",
        |s| caught_up(s, &others, settled),
    )
    .await;
    relay.stop().await;

    // The revoked tenant: failing with needs_consent, recorded in the live status too.
    let t0: Vec<_> = status.feeds.iter().filter(|f| f.tenant == "t0").collect();
    assert!(t0.iter().all(|f| f.errors.needs_consent >= 1), "{t0:#?}");
    assert!(matches!(
        status.tenant("t0").unwrap().auth,
        Some(AuthState::NeedsConsent { .. })
    ));
    // The others: never an error, caught up, everything delivered exactly once.
    for f in status.feeds.iter().filter(|f| f.tenant != "t0") {
        assert_eq!(f.errors.total(), 0, "{f:#?}");
    }
    for t in &others {
        assert!(matches!(
            state.auth_state(t).unwrap(),
            Some(AuthState::Ok { .. })
        ));
    }
    let delivered = delivered(&sink_dir);
    let t0_id = sim.tenants()[0].tenant_id.clone();
    let (t0_delivered, rest): (Vec<_>, Vec<_>) = delivered.into_iter().partition(|v| v.0 == t0_id);
    assert_exactly_once(&rest, &expected(&sim, &specs[1..]));
    // What t0 delivered before the revocation is real and not repeated.
    let t0_expected = expected(&sim, &specs[..1]);
    assert!(!t0_delivered.is_empty());
    let unique: std::collections::BTreeSet<_> = t0_delivered.iter().cloned().collect();
    assert_eq!(unique.len(), t0_delivered.len());
    assert!(unique.is_subset(&t0_expected));

    // One ERROR when the tenant loses consent, not one per feed and poll.
    let consent_lines = logs.lines_containing("needs consent");
    assert_eq!(consent_lines, 1, "{window:?}");
    assert_eq!(logs.lines_containing("tenant t0 needs consent"), 1);
    sim.shutdown().await;
}
