//! Simulated machine actions over HTTP: bodies, errors, progression, quota, permissions
//! and the ground truth of requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_config::Audience;
use relay_sim::{
    MachineActionSettings, MachineActionType, MachinePermissions, QuotaLimits, RequestOutcome, Sim,
    SimConfig,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn config(completion: Duration) -> SimConfig {
    SimConfig {
        tenants: 2,
        seed: 5,
        activity: 0,
        backlog: 3,
        late_visibility: Duration::ZERO,
        late_visibility_jitter: Duration::ZERO,
        machine_actions: MachineActionSettings { completion },
        ..SimConfig::default()
    }
}

fn token(sim: &Sim, tenant: usize) -> String {
    sim.entra().mint_access_token(
        &sim.tenants()[tenant].tenant_id,
        Audience::WindowsDefenderAtp,
        Duration::from_secs(600),
    )
}

fn machine(sim: &Sim, tenant: usize) -> String {
    sim.machines(&sim.tenants()[tenant].tenant_id).unwrap()[0]
        .0
        .clone()
}

async fn post(sim: &Sim, tenant: usize, path: &str, body: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .bearer_auth(token(sim, tenant))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(sim: &Sim, tenant: usize, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(token(sim, tenant))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn isolate_progresses_to_succeeded_and_refuses_a_duplicate_meanwhile() {
    let sim = Sim::start(config(Duration::from_millis(600)))
        .await
        .unwrap();
    let m = machine(&sim, 0);
    let path = format!("api/machines/{m}/isolate");
    let body = json!({"Comment": "xdr-relay test", "IsolationType": "Selective"}).to_string();
    let (status, action) = post(&sim, 0, &path, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{action}");
    assert_eq!(action["type"], "Isolate");
    assert_eq!(action["scope"], "Selective");
    assert_eq!(action["status"], "Pending");
    assert_eq!(action["machineId"], m.as_str());
    assert_eq!(action["requestorComment"], "xdr-relay test");
    let id = action["id"].as_str().unwrap().to_string();

    let (status, dup) = post(&sim, 0, &path, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(dup["error"]["message"], "Action is already in progress");
    // A different action type on the same machine is not a duplicate.
    let scan = json!({"Comment": "c", "ScanType": "Quick"}).to_string();
    let (status, _) = post(
        &sim,
        0,
        &format!("api/machines/{m}/runAntiVirusScan"),
        &scan,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Another tenant cannot see it.
    let (status, _) = get(&sim, 1, &format!("api/machineactions/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, now) = get(&sim, 0, &format!("api/machineactions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(now["status"], "Succeeded");
    // Once finished, the same action may be asked for again.
    let (status, _) = post(&sim, 0, &path, &body).await;
    assert_eq!(status, StatusCode::CREATED);

    let requests = sim.machine_action_requests();
    let outcomes: Vec<_> = requests.iter().map(|r| r.outcome.clone()).collect();
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0], RequestOutcome::Created { action_id: id });
    assert_eq!(outcomes[1], RequestOutcome::AlreadyInProgress);
    assert_eq!(requests[2].action, MachineActionType::RunAntiVirusScan);
    assert_eq!(requests[0].option.as_deref(), Some("Selective"));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_unknown_machines_and_missing_permissions_are_refused() {
    let sim = Sim::start(config(Duration::from_secs(5))).await.unwrap();
    let m = machine(&sim, 0);
    let isolate = format!("api/machines/{m}/isolate");
    let scan = format!("api/machines/{m}/runAntiVirusScan");
    let cases = [
        (
            &isolate,
            r#"{"comment":"x","IsolationType":"Full"}"#,
            "InvalidRequestBody",
        ),
        (
            &isolate,
            r#"{"IsolationType":"Full"}"#,
            "MissingRequiredParameter",
        ),
        (
            &isolate,
            r#"{"Comment":"x","IsolationType":"Partial"}"#,
            "InvalidRequestBody",
        ),
        (&scan, r#"{"Comment":"x"}"#, "MissingRequiredParameter"),
        (
            &scan,
            r#"{"Comment":"x","ScanType":"quick"}"#,
            "InvalidRequestBody",
        ),
    ];
    for (path, body, code) in cases {
        let (status, e) = post(&sim, 0, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e["error"]["code"], code, "{body}");
    }
    let (status, e) = post(
        &sim,
        0,
        "api/machines/0000000000000000000000000000000000000000/isolate",
        r#"{"Comment":"x","IsolationType":"Full"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "ResourceNotFound");
    // A machine of tenant 0 does not exist in tenant 1.
    let (status, _) = post(&sim, 1, &isolate, r#"{"Comment":"x"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let t0 = sim.tenants()[0].tenant_id.clone();
    sim.set_machine_permissions(
        &t0,
        MachinePermissions {
            isolate: false,
            scan: true,
        },
    )
    .unwrap();
    let (status, e) = post(&sim, 0, &isolate, r#"{"Comment":"x"}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Machine.Isolate"),
        "{e}"
    );
    let (status, _) = post(&sim, 0, &scan, r#"{"Comment":"x","ScanType":"Full"}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    // Refusals before the body check are not requests the ground truth records.
    assert_eq!(sim.machine_action_requests().len(), cases.len() + 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn machine_actions_have_their_own_quota() {
    let sim = Sim::start(SimConfig {
        quota_limits: QuotaLimits {
            machine_actions_per_minute: 2,
            ..QuotaLimits::default()
        },
        ..config(Duration::from_secs(5))
    })
    .await
    .unwrap();
    let machines = sim.machines(&sim.tenants()[0].tenant_id).unwrap();
    for (m, _) in &machines[..2] {
        let (status, _) = post(
            &sim,
            0,
            &format!("api/machines/{m}/isolate"),
            r#"{"Comment":"x"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let resp = reqwest::Client::new()
        .post(format!(
            "{}api/machines/{}/isolate",
            sim.base_url(),
            machines[2].0
        ))
        .bearer_auth(token(&sim, 0))
        .body(r#"{"Comment":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    // The alerts API keeps its own budget.
    let (status, _) = get(&sim, 0, "api/alerts?$top=1").await;
    assert_eq!(status, StatusCode::OK);
    // Another tenant has its own.
    let other = sim.machines(&sim.tenants()[1].tenant_id).unwrap();
    let (status, _) = post(
        &sim,
        1,
        &format!("api/machines/{}/isolate", other[0].0),
        r#"{"Comment":"x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    sim.shutdown().await;
}

#[tokio::test]
async fn alerts_name_machines_the_actions_api_knows() {
    let sim = Sim::start(config(Duration::from_secs(5))).await.unwrap();
    let t0 = sim.tenants()[0].tenant_id.clone();
    let known: Vec<String> = sim
        .machines(&t0)
        .unwrap()
        .into_iter()
        .map(|m| m.0)
        .collect();
    let (status, page) = get(&sim, 0, "api/alerts").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["machineId"].as_str())
        .collect();
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|id| known.iter().any(|k| k == id)),
        "{ids:?}"
    );
    sim.shutdown().await;
}
