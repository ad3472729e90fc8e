//! Recovery without an operator: a tenant whose consent is withdrawn and given back, and
//! one whose token endpoint is down for a while, come back by themselves; nothing the
//! simulator showed outside the outage is missed, versions made during it are delivered
//! after it, and each state change is logged once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use chrono::{DateTime, Utc};
use relay_sim::entra::TokenFault;
use std::time::Duration;
use util::*;

/// A version the simulator showed for this long must have been seen by a daemon polling
/// every 10 s (± jitter, plus start-up).
const MUST_SEE: Duration = Duration::from_secs(25);

/// The JSON log lines of level `level` that mention `tenant` and contain `text`.
fn lines<'a>(log: &'a str, level: &str, tenant: &str, text: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            v["level"].as_str() == Some(level) && l.contains(tenant) && l.contains(text)
        })
        .collect()
}

/// Every WARN and ERROR line that mentions `tenant`.
fn complaints<'a>(log: &'a str, tenant: &str) -> Vec<&'a str> {
    let mut out = lines(log, "WARN", tenant, "");
    out.extend(lines(log, "ERROR", tenant, ""));
    out
}

fn version_time(d: &Delivered) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&d.version_time)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_consent_and_a_token_endpoint_outage_recover_by_themselves() {
    let mut setup = Setup::default();
    setup.sim.tenants = 4;
    setup.sim.seed = 1010;
    // Short tokens: the daemon learns of the withdrawal at its next refresh, seconds later.
    setup.sim.access_token_lifetime = Duration::from_secs(10);
    setup.sim.late_visibility = Duration::from_secs(3);
    setup.sim.late_visibility_jitter = Duration::from_secs(2);
    setup.sim.activity = 12;
    setup.sim.min_update_gap = Duration::from_secs(20);
    let h = Harness::start(setup).await;
    let late = h.setup.sim.late_visibility + h.setup.sim.late_visibility_jitter;
    // Probes 2 s, 4 s, 8 s, 8 s ... apart: the outage below sees the backoff cap.
    let relay_toml = std::fs::read_to_string(h.config_path()).unwrap();
    std::fs::write(
        h.config_path(),
        relay_toml.replacen(
            "[defaults]\n",
            "[defaults]\nauth_probe_min_secs = 2\nauth_probe_max_secs = 8\n",
            1,
        ),
    )
    .unwrap();
    let tenants = h.sim.tenants().to_vec();
    let (victim, down) = (&tenants[1], &tenants[2]);

    let relay = KillOnDrop(h.spawn_relay(0));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!h.delivered().is_empty(), "nothing delivered\n{}", h.log(0));

    let outage_start = Utc::now();
    h.sim.entra().revoke_consent(&victim.tenant_id);
    h.sim
        .set_token_fault(&down.tenant_id, Some(TokenFault::Down))
        .unwrap();
    // Both tenants notice at their next token refresh (10 s tokens).
    let noticed = wait_for(Duration::from_secs(30), || {
        let log = h.log(0);
        !lines(&log, "ERROR", &victim.name, "needs consent").is_empty()
    })
    .await;
    assert!(noticed, "consent loss not noticed\n{}", h.log(0));
    // Versions made while the victim has no token: delivered once it has one again.
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(
            h.sim
                .create_incident(&victim.tenant_id, 1, None)
                .unwrap()
                .incident_id,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // `status` names the state and when the next probe is.
    let out = h.run_cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(&victim.name) && l.contains("NEEDS CONSENT"))
        .unwrap_or_else(|| panic!("status does not show the consent loss:\n{text}"));
    assert!(
        line.contains("AADSTS") && line.contains("next probe"),
        "{line}"
    );

    h.sim.entra().restore(&victim.tenant_id);
    h.sim.set_token_fault(&down.tenant_id, None).unwrap();
    let restored = Utc::now();
    let recovered = wait_for(Duration::from_secs(30), || {
        let log = h.log(0);
        !lines(&log, "INFO", &victim.name, "has consent again").is_empty()
            && !lines(&log, "INFO", &down.name, "succeed again").is_empty()
    })
    .await;
    assert!(recovered, "no recovery logged\n{}", h.log(0));
    tokio::time::sleep(Duration::from_secs(30)).await;

    let affected = [victim.tenant_id.as_str(), down.tenant_id.as_str()];
    let (delivered, must) = {
        h.sim.settle().await;
        let seen_before = |d: &Delivered| {
            version_time(d) + chrono::Duration::from_std(late + MUST_SEE).unwrap() <= outage_start
        };
        let after: Vec<Delivered> = h
            .must_deliver_since(MUST_SEE, restored)
            .into_iter()
            .filter(|d| affected.contains(&d.tenant_id.as_str()))
            .collect();
        let must: Vec<Delivered> = h
            .must_deliver(MUST_SEE)
            .into_iter()
            .filter(|d| !affected.contains(&d.tenant_id.as_str()) || seen_before(d))
            .chain(after)
            .collect();
        wait_for(Duration::from_secs(60), || {
            compare(&h.delivered(), &must).0.is_empty()
        })
        .await;
        (h.delivered(), must)
    };
    let log = h.log(0);
    drop(relay);

    let (missing, dups, _) = compare(&delivered, &must);
    let (_, _, unexpected) = compare(&delivered, &h.ground_truth());
    assert!(
        missing.is_empty(),
        "missing {} of {}: {:?}\n{}",
        missing.len(),
        must.len(),
        &missing[..missing.len().min(10)],
        &log[log.len().saturating_sub(20_000)..]
    );
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    for id in &during {
        assert!(
            delivered
                .iter()
                .any(|d| d.tenant_id == victim.tenant_id && &d.id == id),
            "incident {id}, made during the outage, was not delivered"
        );
    }
    assert!(
        delivered.iter().any(|d| d.tenant_id == victim.tenant_id
            && version_time(d) > outage_start
            && version_time(d) < restored),
        "nothing of the outage delivered for the victim"
    );

    // Once per state change: one ERROR on entering, one INFO on leaving, nothing between.
    let entered = lines(&log, "ERROR", &victim.name, "needs consent");
    assert_eq!(entered.len(), 1, "{entered:#?}");
    assert!(
        entered[0].contains("AADSTS") && entered[0].contains("consent again"),
        "{}",
        entered[0]
    );
    assert_eq!(complaints(&log, &victim.name).len(), 1, "{log}");
    let back = lines(&log, "INFO", &victim.name, "has consent again");
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(back[0].contains("lasted_secs"), "{}", back[0]);

    let down_complaints = complaints(&log, &down.name);
    assert_eq!(down_complaints.len(), 1, "{down_complaints:#?}");
    assert!(
        down_complaints[0].contains("\"WARN\""),
        "{}",
        down_complaints[0]
    );
    assert_eq!(
        lines(&log, "INFO", &down.name, "succeed again").len(),
        1,
        "{log}"
    );

    // After recovery `status` says ok again for both.
    let out = h.run_cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for t in [victim, down] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&t.name) && l.contains(" ok since ")),
            "{} not ok again:\n{text}",
            t.name
        );
    }
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (with a message) where mounting is not permitted.
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system at `dir` with one file until it is full.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

/// The state's disk fills up under a running daemon: it stops with exit 74 and an error
/// naming the file, and a restart once there is room delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_stops_the_daemon_with_exit_74_and_a_restart_loses_nothing() {
    let mut setup = Setup::default();
    setup.sim.tenants = 3;
    setup.sim.seed = 1074;
    setup.sim.late_visibility = Duration::from_secs(2);
    setup.sim.late_visibility_jitter = Duration::from_secs(1);
    setup.sim.activity = 30;
    setup.sim.min_update_gap = Duration::from_secs(60);
    let h = Harness::start(setup).await;
    let Some(_disk) = Tmpfs::mount(&h.path("disk"), "16m") else {
        return;
    };
    let relay_toml = std::fs::read_to_string(h.config_path()).unwrap();
    std::fs::write(
        h.config_path(),
        relay_toml.replacen("path = \"state.db\"", "path = \"disk/state.db\"", 1),
    )
    .unwrap();

    let mut relay = h.spawn_relay(0);
    assert!(
        wait_for(Duration::from_secs(40), || !h.delivered().is_empty()).await,
        "nothing delivered\n{}",
        h.log(0)
    );
    let filler = fill(&h.path("disk"));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = relay.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = relay.kill();
            panic!("still running 60 s after the disk filled up\n{}", h.log(0));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = h.log(0);
    assert_eq!(status.code(), Some(74), "{log}");
    let stopped = log
        .lines()
        .find(|l| l.contains("the state storage failed: "))
        .unwrap_or_else(|| panic!("no final error\n{log}"));
    assert!(
        stopped.contains(&h.path("disk").display().to_string()),
        "the error names no file: {stopped}"
    );
    assert_eq!(
        lines(&log, "ERROR", "state", "no more writes to it").len(),
        1,
        "{log}"
    );

    // Room again: a restart carries on from the last commit and loses nothing.
    std::fs::remove_file(filler).unwrap();
    let relay = KillOnDrop(h.spawn_relay(1));
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.sim.settle().await;
    let must = h.must_deliver(MUST_SEE);
    wait_for(Duration::from_secs(60), || {
        compare(&h.delivered(), &must).0.is_empty()
    })
    .await;
    drop(relay);
    let delivered = h.delivered();
    let (missing, _, _) = compare(&delivered, &must);
    assert!(
        missing.is_empty(),
        "missing {} of {} after the restart: {:?}\n{}",
        missing.len(),
        must.len(),
        &missing[..missing.len().min(10)],
        h.log(1)
    );
    let (_, _, unexpected) = compare(&delivered, &h.ground_truth());
    assert!(unexpected.is_empty(), "{unexpected:?}");
}
