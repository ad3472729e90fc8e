//! Response playbooks end to end: the real binary against the simulator's machine
//! actions, with the file sink as the audit reader. Dry run sends nothing; enforce sends
//! one valid action per matching (alert, device), across restarts and a SIGKILL; limits
//! and never-lists hold; approve works through the CLI while the daemon runs.

mod util;

use relay_sim::{MachineActionSettings, RequestOutcome, RequestedAction, SimConfig};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;
use util::{signal, wait_for, Harness, KillOnDrop, Setup};

/// A quiet world: a fixed backlog, visible at once, no background activity, so the set
/// of alerts (and the devices they name) is known once the first polls are done.
fn setup(playbooks: &str, completion: Duration) -> Setup {
    let mut s = Setup {
        sim: SimConfig {
            tenants: 2,
            seed: 23,
            backlog: 8,
            backlog_span: Duration::from_secs(1_800),
            activity: 0,
            late_visibility: Duration::ZERO,
            late_visibility_jitter: Duration::ZERO,
            machine_actions: MachineActionSettings { completion },
            ..SimConfig::default()
        },
        ..Setup::default()
    };
    s.files.extra_toml = playbooks.to_string();
    s
}

fn playbook(name: &str, mode: &str, limits: &str) -> String {
    format!(
        r#"
[playbooks.{name}]
action = "isolate"
isolation_type = "selective"
mode = "{mode}"
tenants = ["*"]
[playbooks.{name}.when]
min_severity = "informational"
[playbooks.{name}.limits]
{limits}
"#
    )
}

const WIDE: &str =
    "per_tenant_per_hour = 100000\nper_hour = 100000\nmax_devices_per_incident = 100000\n";

/// Every line the file sink wrote.
fn lines(h: &Harness) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(h.sink_dir()) else {
        return out;
    };
    let mut files: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        for line in fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// Whether every alert version the simulator holds was delivered: only then is the set of
/// (alert, device) pairs complete (tenants' first polls are spread over the interval).
fn all_alerts_delivered(h: &Harness) -> bool {
    let truth: BTreeSet<_> = h
        .ground_truth()
        .into_iter()
        .filter(|d| d.feed.ends_with("alerts"))
        .map(|d| (d.tenant_id, d.id, d.version_time))
        .collect();
    let got: BTreeSet<_> = h
        .delivered()
        .into_iter()
        .filter(|d| d.feed.ends_with("alerts"))
        .map(|d| (d.tenant_id, d.id, d.version_time))
        .collect();
    !truth.is_empty() && truth.is_subset(&got)
}

/// (tenant name, alert id, device id) of every delivered alert naming a device, once every
/// alert is delivered (empty before).
fn alert_devices(h: &Harness) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    if !all_alerts_delivered(h) {
        return out;
    }
    for l in lines(h).iter().filter(|l| l["stream"] == "alerts") {
        let tenant = l["tenant_name"].as_str().unwrap_or_default().to_string();
        let id = l["id"].as_str().unwrap_or_default().to_string();
        let e = &l["event"];
        if let Some(m) = e["machineId"].as_str() {
            out.insert((tenant.clone(), id.clone(), m.to_string()));
        }
        for ev in e["evidence"].as_array().into_iter().flatten() {
            let is_device = ev["@odata.type"]
                .as_str()
                .is_some_and(|t| t.ends_with("deviceEvidence"));
            if let (true, Some(m)) = (is_device, ev["mdeDeviceId"].as_str()) {
                out.insert((tenant.clone(), id.clone(), m.to_string()));
            }
        }
    }
    out
}

/// The audit events delivered, as (tenant, alert, device, outcome) with repeats kept.
fn audits(h: &Harness) -> Vec<(String, String, String, String, Value)> {
    lines(h)
        .into_iter()
        .filter(|l| l["stream"] == "actions")
        .map(|l| {
            let e = l["event"].clone();
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("tenant"), s("alert_id"), s("device_id"), s("outcome"), e)
        })
        .collect()
}

fn with_outcome(h: &Harness, outcome: &str) -> BTreeSet<(String, String, String)> {
    audits(h)
        .into_iter()
        .filter(|a| a.3 == outcome)
        .map(|a| (a.0, a.1, a.2))
        .collect()
}

/// Requests per (tenant id, alert, machine), the alert read back from the comment.
fn requests_by_key(
    reqs: &[RequestedAction],
) -> BTreeMap<(String, String, String), Vec<RequestedAction>> {
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for r in reqs {
        let comment = r.comment.clone().unwrap_or_default();
        let alert = comment
            .split("alert ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or_default()
            .to_string();
        out.entry((r.tenant_id.clone(), alert, r.machine_id.clone()))
            .or_default()
            .push(r.clone());
    }
    out
}

fn tenant_ids(h: &Harness) -> BTreeMap<String, String> {
    h.sim
        .tenants()
        .iter()
        .map(|t| (t.name.clone(), t.tenant_id.clone()))
        .collect()
}

/// The keys of `expected` as the simulator names them (tenant id instead of name).
fn by_tenant_id(
    h: &Harness,
    keys: &BTreeSet<(String, String, String)>,
) -> BTreeSet<(String, String, String)> {
    let ids = tenant_ids(h);
    keys.iter()
        .map(|(t, a, d)| (ids[t].clone(), a.clone(), d.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_nothing_and_audits_what_it_would_do_once_each() {
    let h = Harness::start(setup(
        &playbook("iso", "dry_run", WIDE),
        Duration::from_secs(2),
    ))
    .await;
    let relay = KillOnDrop(h.spawn_relay(0));
    let done = wait_for(Duration::from_secs(60), || {
        let want = alert_devices(&h);
        !want.is_empty() && with_outcome(&h, "would_act") == want
    })
    .await;
    assert!(
        done,
        "would_act audits {:?}\nexpected {:?}\n{}",
        with_outcome(&h, "would_act"),
        alert_devices(&h),
        h.log(0)
    );
    // More polls of the same alerts decide nothing again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(relay);
    let all = audits(&h);
    assert_eq!(
        all.len(),
        alert_devices(&h).len(),
        "one audit per (alert, device)"
    );
    assert!(
        h.sim.machine_action_requests().is_empty(),
        "dry run sent a request"
    );
    let (_, _, _, _, doc) = &all[0];
    assert_eq!(doc["playbook"], "iso");
    assert_eq!(doc["action"], "isolate");
    assert_eq!(doc["option"], "Selective");
    assert_eq!(doc["mode"], "dry_run");
    assert!(doc["time"].is_string() && doc["tenant_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_sends_one_valid_action_per_alert_and_device_across_a_restart() {
    let h = Harness::start(setup(
        &playbook("iso", "enforce", WIDE),
        Duration::from_secs(2),
    ))
    .await;
    let relay = KillOnDrop(h.spawn_relay(0));
    let finished = |h: &Harness| {
        let want = alert_devices(h);
        let done: BTreeSet<_> = with_outcome(h, "succeeded");
        !want.is_empty() && done == want
    };
    let ok = wait_for(Duration::from_secs(90), || finished(&h)).await;
    assert!(
        ok,
        "succeeded {:?}\nexpected {:?}\n{}",
        with_outcome(&h, "succeeded"),
        alert_devices(&h),
        h.log(0)
    );
    signal(&relay.0, "TERM");
    drop(relay);
    let before = h.sim.machine_action_requests().len();
    // A restart decides and sends nothing again.
    let relay = KillOnDrop(h.spawn_relay(1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    drop(relay);

    let reqs = h.sim.machine_action_requests();
    assert_eq!(reqs.len(), before, "the restart sent requests");
    let by_key = requests_by_key(&reqs);
    let want = by_tenant_id(&h, &alert_devices(&h));
    assert_eq!(by_key.keys().cloned().collect::<BTreeSet<_>>(), want);
    for (key, rs) in &by_key {
        assert_eq!(rs.len(), 1, "{key:?}: {rs:?}");
        let r = &rs[0];
        // A second alert on a device whose isolation is pending is absorbed by the API.
        assert!(
            matches!(
                r.outcome,
                RequestOutcome::Created { .. } | RequestOutcome::AlreadyInProgress
            ),
            "{key:?}: {r:?}"
        );
        assert_eq!(r.option.as_deref(), Some("Selective"));
        assert!(r
            .comment
            .as_deref()
            .unwrap_or_default()
            .starts_with("xdr-relay playbook iso: alert "));
    }
    // Audited: every sent action was followed to its end.
    let sent = with_outcome(&h, "sent");
    assert!(sent.is_subset(&alert_devices(&h)));
    assert!(
        audits(&h).iter().all(|a| a.3 != "failed"),
        "{:?}",
        audits(&h)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_post_and_record_repeats_at_most_once_and_the_api_absorbs_it() {
    // Actions stay pending long enough for the restart's repeat to meet them.
    let h = Harness::start(setup(
        &playbook("iso", "enforce", WIDE),
        Duration::from_secs(60),
    ))
    .await;
    let relay = h.spawn_relay(0);
    assert!(
        wait_for(Duration::from_secs(60), || !h
            .sim
            .machine_action_requests()
            .is_empty())
        .await,
        "no request\n{}",
        h.log(0)
    );
    signal(&relay, "KILL");
    let mut relay = relay;
    let _ = relay.wait();
    let relay = KillOnDrop(h.spawn_relay(1));
    let ok = wait_for(Duration::from_secs(90), || {
        let want = by_tenant_id(&h, &alert_devices(&h));
        !want.is_empty()
            && requests_by_key(&h.sim.machine_action_requests())
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
                == want
            && with_outcome(&h, "sent").len() + with_outcome(&h, "succeeded").len() >= want.len()
    })
    .await;
    drop(relay);
    assert!(ok, "{}\n{}", h.log(0), h.log(1));
    for (key, rs) in requests_by_key(&h.sim.machine_action_requests()) {
        assert!(rs.len() <= 2, "{key:?} requested {} times", rs.len());
        let created = rs
            .iter()
            .filter(|r| matches!(r.outcome, RequestOutcome::Created { .. }))
            .count();
        assert!(created <= 1, "{key:?}: two actions created: {rs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_never_lists_hold_back_and_are_audited() {
    let limited = playbook(
        "iso",
        "enforce",
        "per_tenant_per_hour = 2\nper_hour = 3\nmax_devices_per_incident = 1\nnever_devices_matching = \"^host0\\\\.\"\n",
    );
    let h = Harness::start(setup(&limited, Duration::from_secs(2))).await;
    let relay = KillOnDrop(h.spawn_relay(0));
    let ok = wait_for(Duration::from_secs(60), || {
        let want = alert_devices(&h);
        let decided: BTreeSet<_> = audits(&h)
            .into_iter()
            .filter(|a| a.3 == "limited" || a.3 == "sent" || a.3 == "succeeded")
            .map(|a| (a.0, a.1, a.2))
            .collect();
        !want.is_empty() && decided == want
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(relay);
    assert!(ok, "{:?}\n{}", audits(&h), h.log(0));
    let reqs = h.sim.machine_action_requests();
    assert!(reqs.len() <= 3, "per_hour = 3 but {} requests", reqs.len());
    let mut per_tenant: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &reqs {
        *per_tenant.entry(r.tenant_id.as_str()).or_default() += 1;
    }
    assert!(per_tenant.values().all(|n| *n <= 2), "{per_tenant:?}");
    let never: Vec<_> = h
        .sim
        .tenants()
        .iter()
        .flat_map(|t| h.sim.machines(&t.tenant_id).unwrap())
        .filter(|(_, name)| name.starts_with("host0."))
        .map(|(id, _)| id)
        .collect();
    assert!(
        reqs.iter().all(|r| !never.contains(&r.machine_id)),
        "a never-listed device was acted on"
    );
    let reasons: BTreeSet<String> = audits(&h)
        .iter()
        .filter(|a| a.3 == "limited")
        .map(|a| a.4["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!reasons.is_empty());
    assert!(reasons.iter().all(|r| [
        "per_tenant_per_hour",
        "per_hour",
        "max_devices_per_incident",
        "never_devices_matching"
    ]
    .contains(&r.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_deny_through_the_cli_while_the_daemon_runs() {
    let h = Harness::start(setup(
        &playbook("iso", "approve", WIDE),
        Duration::from_secs(2),
    ))
    .await;
    let relay = KillOnDrop(h.spawn_relay(0));
    let ok = wait_for(Duration::from_secs(60), || {
        let want = alert_devices(&h);
        !want.is_empty() && with_outcome(&h, "awaiting_approval") == want
    })
    .await;
    assert!(ok, "{:?}\n{}", audits(&h), h.log(0));
    assert!(
        h.sim.machine_action_requests().is_empty(),
        "approve mode sent before approval"
    );

    let out = h.run_cmd(&["actions", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), alert_devices(&h).len());
    assert!(rows.iter().all(|r| r["state"] == "awaiting_approval"));
    let status = h.run_cmd(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("PLAYBOOKS") && text.contains("awaiting_approval"),
        "{text}"
    );
    let approve_id = rows[0]["id"].as_i64().unwrap().to_string();
    let deny_id = rows[1]["id"].as_i64().unwrap().to_string();

    let out = h.run_cmd(&["actions", "approve", &approve_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = h.run_cmd(&["actions", "deny", &deny_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Deciding twice is refused.
    let out = h.run_cmd(&["actions", "deny", &approve_id]);
    assert_eq!(out.status.code(), Some(1));

    let device = rows[0]["device_id"].as_str().unwrap().to_string();
    let ok = wait_for(Duration::from_secs(30), || {
        !h.sim.machine_action_requests().is_empty()
            && audits(&h).iter().any(|a| a.3 == "denied")
            && audits(&h).iter().any(|a| a.3 == "succeeded")
    })
    .await;
    drop(relay);
    assert!(ok, "{:?}\n{}", audits(&h), h.log(0));
    let reqs = h.sim.machine_action_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].machine_id, device);
    let approved: Vec<_> = audits(&h)
        .into_iter()
        .filter(|a| a.3 == "approved")
        .collect();
    assert_eq!(approved.len(), 1);
    assert_eq!(
        approved[0].4["action_id"].as_i64().unwrap().to_string(),
        approve_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_an_audited_failure_naming_the_fix() {
    let h = Harness::start(setup(
        &playbook("iso", "enforce", WIDE),
        Duration::from_secs(2),
    ))
    .await;
    for t in h.sim.tenants() {
        h.sim
            .set_machine_permissions(
                &t.tenant_id,
                relay_sim::MachinePermissions {
                    isolate: false,
                    scan: true,
                },
            )
            .unwrap();
    }
    let relay = KillOnDrop(h.spawn_relay(0));
    let ok = wait_for(Duration::from_secs(60), || {
        let want = alert_devices(&h);
        !want.is_empty() && with_outcome(&h, "failed") == want
    })
    .await;
    drop(relay);
    assert!(ok, "{:?}\n{}", audits(&h), h.log(0));
    for a in audits(&h).iter().filter(|a| a.3 == "failed") {
        let detail = a.4["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("403"), "{detail}");
        assert!(
            detail.contains(
                "grant the app the Machine.Isolate application permission of WindowsDefenderATP"
            ),
            "{detail}"
        );
    }
    // Refused before the body check: the simulator recorded no request, and nothing retries.
    assert!(h.sim.machine_action_requests().is_empty());
}
