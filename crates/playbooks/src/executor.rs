//! Carrying out: the task that takes journal rows the daemon still has work on
//! (approved, denied, queued, sending, sent) and moves each one step, every step
//! committed with its audit event in one write.
//!
//! Crash safety: a row is marked `sending` (committed) before its POST and `sent` after
//! the answer; a crash in between leaves it `sending`, and the next start sends it again.
//! That repeat meets the first action still pending — "Action is already in progress" —
//! which counts as done. So a SIGKILL costs at most one repeated request, never a second
//! action.
//!
//! The machine-action quota (100 a minute, 1,500 an hour per tenant) is kept by a sliding
//! window per tenant below it; a 429 all the same pauses that tenant for `Retry-After`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_defender::{
    DefenderClient, MachineAction, MachineActionError, MachineActionKind, MachineActionRequest,
    TenantTarget,
};
use relay_state::{
    ActionOp, ActionRecord, ActionState, PollLog, PollWrite, StateError, StateStore,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::audit::{self, Extra, Outcome};

/// What the executor needs to know of a tenant.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    /// Where its APIs are.
    pub target: TenantTarget,
    /// The sinks its audit events go to.
    pub sinks: Arc<[String]>,
    /// Its alerts feed's stable name (audit events are committed under it).
    pub feed: &'static str,
}

/// Audit events per outcome, since start (for `status` and `/metrics`).
#[derive(Debug, Default)]
pub struct ExecutorStats {
    counts: [AtomicU64; 8],
}

impl ExecutorStats {
    /// Counts one audit event.
    pub fn record(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (outcome, count) for every outcome.
    pub fn snapshot(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .zip(&self.counts)
            .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The machine-action budget the executor keeps to, per tenant: under Microsoft's
/// 100/min and 1,500/h so that an operator's own calls still fit.
const PER_MINUTE: usize = 90;
const PER_HOUR: usize = 1_400;

#[derive(Default)]
struct Budget {
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Budget {
    fn allows(&mut self, now: Instant) -> bool {
        if self.blocked_until.is_some_and(|t| t > now) {
            return false;
        }
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3_600))
        {
            self.sent.pop_front();
        }
        let minute = self
            .sent
            .iter()
            .filter(|t| now.duration_since(**t) < Duration::from_secs(60))
            .count();
        minute < PER_MINUTE && self.sent.len() < PER_HOUR
    }
}

/// Carries out decided actions until cancelled.
pub struct Executor {
    client: DefenderClient,
    log: PollLog,
    store: Arc<StateStore>,
    tenants: HashMap<String, TenantInfo>,
    stats: Arc<ExecutorStats>,
    every: Duration,
    wake_sinks: Arc<dyn Fn() + Send + Sync>,
    budgets: HashMap<String, Budget>,
}

/// The fix an operator applies for a refused action.
fn fix_for(e: &MachineActionError, kind: MachineActionKind) -> String {
    match e {
        MachineActionError::Forbidden { .. } => format!(
            "grant the app the {} application permission of WindowsDefenderATP and admin consent in the tenant",
            kind.permission()
        ),
        MachineActionError::NotFound { .. } => {
            "the machine is not known to Defender for Endpoint in this tenant (offboarded or deleted)"
                .to_string()
        }
        _ => "see the detail; the request was refused".to_string(),
    }
}

fn kind_of(action: &str) -> MachineActionKind {
    if action == "isolate" {
        MachineActionKind::Isolate
    } else {
        MachineActionKind::RunAntiVirusScan
    }
}

/// One step's result: the new state, the audit outcome (if any) and what to record.
struct Step {
    to: ActionState,
    outcome: Option<Outcome>,
    machine_action_id: Option<String>,
    detail: Option<String>,
}

impl Executor {
    /// An executor over `store`'s journal, committing through `log`. `wake_sinks` is
    /// called after each commit that appended audit events.
    pub fn new(
        client: DefenderClient,
        log: PollLog,
        store: Arc<StateStore>,
        tenants: HashMap<String, TenantInfo>,
        stats: Arc<ExecutorStats>,
        every: Duration,
        wake_sinks: Arc<dyn Fn() + Send + Sync>,
    ) -> Executor {
        Executor {
            client,
            log,
            store,
            tenants,
            stats,
            every,
            wake_sinks,
            budgets: HashMap::new(),
        }
    }

    /// Runs until `cancel`; a step in progress finishes first.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
            let store = Arc::clone(&self.store);
            let rows = match tokio::task::spawn_blocking(move || store.open_actions()).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(error)) => {
                    warn!(%error, "cannot read the action journal; retrying");
                    continue;
                }
                Err(_) => break,
            };
            for row in rows {
                if cancel.is_cancelled() {
                    break;
                }
                self.advance(row).await;
            }
        }
        debug!("playbook executor stopped");
    }

    async fn advance(&mut self, row: ActionRecord) {
        let d = &row.decision;
        let Some(tenant) = self.tenants.get(&d.key.tenant).cloned() else {
            // The tenant left the configuration; its row waits for it to come back.
            return;
        };
        let span = tracing::info_span!("playbook", tenant = %d.key.tenant, stream = "actions", playbook = %d.key.playbook);
        let _enter = span.enter();
        let step = match d.state {
            ActionState::DenyRequested => Some(Step {
                to: ActionState::Denied,
                outcome: Some(Outcome::Denied),
                machine_action_id: None,
                detail: None,
            }),
            ActionState::Approved => Some(Step {
                to: ActionState::Queued,
                outcome: Some(Outcome::Approved),
                machine_action_id: None,
                detail: None,
            }),
            ActionState::Queued => {
                // Marked before the request, so a crash during it re-sends (see above).
                if !self.budget(&tenant).allows(Instant::now()) {
                    return;
                }
                let mark = Step {
                    to: ActionState::Sending,
                    outcome: None,
                    machine_action_id: None,
                    detail: None,
                };
                if self
                    .commit(&tenant, &row, ActionState::Queued, mark)
                    .await
                    .is_err()
                {
                    return;
                }
                self.send(&tenant, &row).await
            }
            ActionState::Sending => {
                if !self.budget(&tenant).allows(Instant::now()) {
                    return;
                }
                self.send(&tenant, &row).await
            }
            ActionState::Sent => self.follow(&tenant, &row).await,
            _ => None,
        };
        let from = if d.state == ActionState::Queued {
            ActionState::Sending
        } else {
            d.state
        };
        if let Some(step) = step {
            let _ = self.commit(&tenant, &row, from, step).await;
        }
    }

    fn budget(&mut self, tenant: &TenantInfo) -> &mut Budget {
        self.budgets
            .entry(tenant.target.tenant_id.clone())
            .or_default()
    }

    async fn send(&mut self, tenant: &TenantInfo, row: &ActionRecord) -> Option<Step> {
        let d = &row.decision;
        let kind = kind_of(&d.action);
        let comment = format!(
            "xdr-relay playbook {}: alert {} ({})",
            d.key.playbook,
            d.key.alert_id,
            d.alert_title.as_deref().unwrap_or("untitled")
        );
        self.budget(tenant).sent.push_back(Instant::now());
        let answer = self
            .client
            .request_machine_action(
                &tenant.target,
                &MachineActionRequest {
                    machine_id: &d.key.device_id,
                    kind,
                    option: &d.option,
                    comment: &comment,
                },
            )
            .await;
        match answer {
            Ok(MachineAction { id, status }) => {
                info!(machine_action = %id, device = %d.key.device_id, "machine action {} requested ({status})", d.action);
                Some(Step {
                    to: ActionState::Sent,
                    outcome: Some(Outcome::Sent),
                    machine_action_id: Some(id),
                    detail: Some(status),
                })
            }
            Err(MachineActionError::AlreadyInProgress { .. }) => Some(Step {
                to: ActionState::Succeeded,
                outcome: Some(Outcome::Succeeded),
                machine_action_id: None,
                detail: Some("the same action was already in progress on the device".into()),
            }),
            Err(MachineActionError::Throttled { retry_after, .. }) => {
                warn!(
                    ?retry_after,
                    "machine-action quota reached; pausing this tenant's actions"
                );
                self.budget(tenant).blocked_until = Some(Instant::now() + retry_after);
                None
            }
            Err(e) if e.is_transient() => {
                // Unknown whether it was queued: stays `sending`, asked again next round.
                warn!(error = %e, "machine action request failed; retrying");
                None
            }
            Err(e) => {
                let fix = fix_for(&e, kind);
                warn!(error = %e, "machine action refused: {fix}");
                Some(Step {
                    to: ActionState::Failed,
                    outcome: Some(Outcome::Failed),
                    machine_action_id: None,
                    detail: Some(format!("{e}; fix: {fix}")),
                })
            }
        }
    }

    async fn follow(&mut self, tenant: &TenantInfo, row: &ActionRecord) -> Option<Step> {
        let id = row.machine_action_id.as_deref()?;
        match self.client.machine_action(&tenant.target, id).await {
            Ok(a) if a.is_terminal() => {
                let ok = a.status == "Succeeded";
                Some(Step {
                    to: if ok {
                        ActionState::Succeeded
                    } else {
                        ActionState::Failed
                    },
                    outcome: Some(if ok {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    }),
                    machine_action_id: None,
                    detail: Some(a.status),
                })
            }
            Ok(_) => None,
            Err(e) if e.is_transient() => {
                debug!(error = %e, "machine action status unavailable; asking again later");
                None
            }
            Err(e) => Some(Step {
                to: ActionState::Failed,
                outcome: Some(Outcome::Failed),
                machine_action_id: None,
                detail: Some(format!("cannot follow machine action {id}: {e}")),
            }),
        }
    }

    async fn commit(
        &self,
        tenant: &TenantInfo,
        row: &ActionRecord,
        from: ActionState,
        step: Step,
    ) -> Result<(), StateError> {
        let now: DateTime<Utc> = Utc::now();
        let mut payloads = Vec::new();
        if let Some(outcome) = step.outcome {
            let machine_action_id = step
                .machine_action_id
                .as_deref()
                .or(row.machine_action_id.as_deref());
            match audit::event(
                &tenant.target.tenant_id,
                &row.decision,
                outcome,
                Extra {
                    action_id: Some(row.id),
                    machine_action_id,
                    detail: step.detail.as_deref(),
                },
                now,
            ) {
                Ok(e) => payloads.push(e.to_outbox_bytes()),
                Err(error) => warn!(%error, "cannot build the audit event"),
            }
        }
        let appended = !payloads.is_empty();
        let result = self
            .log
            .commit(PollWrite {
                tenant: row.decision.key.tenant.clone(),
                feed: tenant.feed,
                new_checkpoint: None,
                seen: Vec::new(),
                payloads,
                sinks: Arc::clone(&tenant.sinks),
                prune_seen_before: DateTime::<Utc>::UNIX_EPOCH,
                outcome: None,
                actions: vec![ActionOp::Advance {
                    id: row.id,
                    from: vec![from],
                    to: step.to,
                    machine_action_id: step.machine_action_id,
                    detail: step.detail,
                }],
            })
            .await;
        match result {
            Ok(_) => {
                if let Some(o) = step.outcome {
                    self.stats.record(o);
                }
                if appended {
                    (self.wake_sinks)();
                }
                Ok(())
            }
            Err(error) => {
                warn!(%error, action = row.id, "cannot record the action's step; retrying");
                Err(error)
            }
        }
    }
}
