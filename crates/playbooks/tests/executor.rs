//! The executor against the simulator: a queued isolation is sent once and followed to
//! `Succeeded`; an unknown machine is an audited failure naming the fix; each step's
//! audit event is committed with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use relay_config::{Audience, Secret};
use relay_defender::{
    AccessToken, ClientOptions, DefenderClient, TenantTarget, TokenError, TokenProvider,
};
use relay_playbooks::{Executor, ExecutorStats, Outcome, TenantInfo};
use relay_sim::{MachineActionSettings, RequestOutcome, Sim, SimConfig};
use relay_state::{
    ActionKey, ActionOp, ActionState, NewAction, PollWrite, State, StateStore, StoreOptions,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct SimTokens(Arc<Sim>, String);

#[async_trait]
impl TokenProvider for SimTokens {
    async fn bearer(&self, _tenant: &str, audience: Audience) -> Result<AccessToken, TokenError> {
        Ok(AccessToken {
            secret: Secret::new(self.0.entra().mint_access_token(
                &self.1,
                audience,
                Duration::from_secs(600),
            )),
            expires_at: tokio::time::Instant::now() + Duration::from_secs(600),
        })
    }

    fn invalidate(&self, _tenant: &str, _audience: Audience, _rejected: &AccessToken) {}
}

fn queued(alert: &str, device: &str) -> ActionOp {
    ActionOp::Insert(Box::new(NewAction {
        key: ActionKey {
            playbook: "iso".into(),
            tenant: "t1".into(),
            alert_id: alert.into(),
            device_id: device.into(),
        },
        action: "isolate".into(),
        option: "Full".into(),
        mode: "enforce".into(),
        state: ActionState::Queued,
        reason: None,
        incident_id: None,
        device_name: None,
        alert_title: Some("Ransomware".into()),
        feed: "mde_alerts".into(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_actions_are_sent_once_followed_and_failures_name_the_fix() {
    let sim = Arc::new(
        Sim::start(SimConfig {
            tenants: 1,
            activity: 0,
            backlog: 1,
            machine_actions: MachineActionSettings {
                completion: Duration::from_millis(500),
            },
            ..SimConfig::default()
        })
        .await
        .unwrap(),
    );
    let tenant_id = sim.tenants()[0].tenant_id.clone();
    let machine = sim.machines(&tenant_id).unwrap()[0].0.clone();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        StateStore::open(&dir.path().join("s.db"), None, StoreOptions::default()).unwrap(),
    );
    let state = State::start(Arc::clone(&store)).unwrap();
    let sinks: Arc<[String]> = Arc::from(vec!["out".to_string()]);
    state
        .poll_log()
        .commit(PollWrite {
            tenant: "t1".into(),
            feed: "mde_alerts",
            new_checkpoint: None,
            seen: Vec::new(),
            payloads: Vec::new(),
            sinks: Arc::clone(&sinks),
            prune_seen_before: DateTime::<Utc>::UNIX_EPOCH,
            outcome: None,
            actions: vec![
                queued("a1", &machine),
                queued("a2", "0000000000000000000000000000000000000000"),
            ],
        })
        .await
        .unwrap();

    let client = DefenderClient::new(
        reqwest::Client::new(),
        Arc::new(SimTokens(Arc::clone(&sim), tenant_id.clone())),
        ClientOptions::default(),
    );
    let tenants = HashMap::from([(
        "t1".to_string(),
        TenantInfo {
            target: TenantTarget {
                name: "t1".into(),
                tenant_id: tenant_id.clone(),
                endpoints: sim.endpoints(),
            },
            sinks,
            feed: "mde_alerts",
        },
    )]);
    let stats = Arc::new(ExecutorStats::default());
    let executor = Executor::new(
        client,
        state.poll_log(),
        Arc::clone(&store),
        tenants,
        Arc::clone(&stats),
        Duration::from_millis(100),
        Arc::new(|| {}),
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(executor.run(cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if store.open_actions().unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            store.open_actions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap();

    let rows = store.actions_in(&[]).unwrap();
    assert_eq!(rows[0].decision.state, ActionState::Succeeded);
    assert!(rows[0].machine_action_id.is_some());
    assert_eq!(rows[1].decision.state, ActionState::Failed);
    let detail = rows[1].detail.as_deref().unwrap();
    assert!(
        detail.contains("404") && detail.contains("not known to Defender for Endpoint"),
        "{detail}"
    );

    let reqs = sim.machine_action_requests();
    assert_eq!(reqs.len(), 2);
    assert!(matches!(reqs[0].outcome, RequestOutcome::Created { .. }));
    assert_eq!(reqs[0].option.as_deref(), Some("Full"));
    assert!(reqs[0].comment.as_deref().unwrap().contains("alert a1"));
    // Audit events: sent + succeeded for a1, failed for a2, all in the outbox.
    let counts: HashMap<Outcome, u64> = stats.snapshot().into_iter().collect();
    assert_eq!(counts[&Outcome::Sent], 1);
    assert_eq!(counts[&Outcome::Succeeded], 1);
    assert_eq!(counts[&Outcome::Failed], 1);
    assert_eq!(store.depth("out").unwrap().rows, 3);
}
