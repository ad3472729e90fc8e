//! The response-action journal: one row per (playbook, tenant, alert, device) a playbook
//! decided about, with where that decision stands. The row is the idempotency key: it is
//! inserted in the same transaction as the alert's outbox commit (a [`PollWrite`]'s
//! `actions`), so a crash either loses both (the re-poll decides again) or keeps both
//! (the decision is never taken twice). Later steps (sending, the answer, approval) are
//! [`ActionOp::Advance`]s, applied only from the states they expect, so two writers (the
//! daemon and `xdr-relay actions approve`) cannot both move one row.
//!
//! [`PollWrite`]: super::PollWrite

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::StateStore;
use crate::error::{Result, StateError};
use crate::ticks::{from_ticks, to_ticks};

/// Where a decision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionState {
    /// `dry_run`: nothing will be sent.
    WouldAct,
    /// A limit or the never-list stopped it; nothing will be sent.
    Limited,
    /// `approve`: waiting for an operator.
    AwaitingApproval,
    /// An operator approved it; the daemon sends it next.
    Approved,
    /// An operator denied it; the daemon audits that next.
    DenyRequested,
    /// Denied, and audited.
    Denied,
    /// `enforce` (or approved): to be sent.
    Queued,
    /// The request may have been sent; its answer is not recorded. After a crash it is
    /// sent again (the API answers a repeat with "already in progress").
    Sending,
    /// Accepted by the API; its machine action is being followed.
    Sent,
    /// The machine action succeeded (or one was already in progress).
    Succeeded,
    /// Refused by the API or ended `Failed`, `Cancelled` or `TimeOut`.
    Failed,
}

impl ActionState {
    /// Every state, in lifecycle order.
    pub const ALL: [ActionState; 11] = [
        ActionState::WouldAct,
        ActionState::Limited,
        ActionState::AwaitingApproval,
        ActionState::Approved,
        ActionState::DenyRequested,
        ActionState::Denied,
        ActionState::Queued,
        ActionState::Sending,
        ActionState::Sent,
        ActionState::Succeeded,
        ActionState::Failed,
    ];

    /// The stored (and printed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::WouldAct => "would_act",
            ActionState::Limited => "limited",
            ActionState::AwaitingApproval => "awaiting_approval",
            ActionState::Approved => "approved",
            ActionState::DenyRequested => "deny_requested",
            ActionState::Denied => "denied",
            ActionState::Queued => "queued",
            ActionState::Sending => "sending",
            ActionState::Sent => "sent",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ActionState> {
        ActionState::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the daemon still has work to do on a row in this state.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ActionState::Approved
                | ActionState::DenyRequested
                | ActionState::Queued
                | ActionState::Sending
                | ActionState::Sent
        )
    }

    /// Whether a row in this state counts against a playbook's limits: everything that
    /// was or may be sent, and what waits for approval.
    pub fn counts_against_limits(self) -> bool {
        !matches!(
            self,
            ActionState::Limited | ActionState::Denied | ActionState::DenyRequested
        )
    }
}

/// The idempotency key of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionKey {
    /// The playbook's name.
    pub playbook: String,
    /// The tenant's configured name.
    pub tenant: String,
    /// The alert id.
    pub alert_id: String,
    /// The MDE machine id.
    pub device_id: String,
}

/// A decision to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    /// Its key.
    pub key: ActionKey,
    /// `isolate` or `run_av_scan`.
    pub action: String,
    /// The API option (`Selective`, `Quick`, ...).
    pub option: String,
    /// The playbook's mode when decided.
    pub mode: String,
    /// The first state.
    pub state: ActionState,
    /// Why (`per_tenant_per_hour`, `never_devices_matching`, ...), for `limited`.
    pub reason: Option<String>,
    /// The alert's incident, if it names one.
    pub incident_id: Option<String>,
    /// The device's DNS name, if known.
    pub device_name: Option<String>,
    /// The alert's title, for `actions list`.
    pub alert_title: Option<String>,
    /// The alert's feed (`mde_alerts`, `graph_alerts`).
    pub feed: String,
}

/// One change to the journal, applied inside a poll write's savepoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOp {
    /// Records a decision; a row with the same key already there is left as it is.
    Insert(Box<NewAction>),
    /// Moves row `id` to `to` if it is in one of `from`; otherwise the whole write fails
    /// with [`StateError::ActionConflict`] (someone else moved it first).
    Advance {
        /// The row.
        id: i64,
        /// The states it may be in.
        from: Vec<ActionState>,
        /// The new state.
        to: ActionState,
        /// The machine action id, once the API gave one.
        machine_action_id: Option<String>,
        /// The latest detail (the API's answer, the fix to apply).
        detail: Option<String>,
    },
}

/// A journal row: the decision as recorded (its `state` is the current one) and what
/// happened since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// Row id: what `xdr-relay actions approve ID` names.
    pub id: i64,
    /// The decision; `state` is where it stands now.
    pub decision: NewAction,
    /// The machine action id.
    pub machine_action_id: Option<String>,
    /// The latest detail.
    pub detail: Option<String>,
    /// When decided.
    pub created: DateTime<Utc>,
    /// When last changed.
    pub updated: DateTime<Utc>,
}

const COLUMNS: &str = "id, playbook, tenant, alert_id, device_id, action, option, mode, state, \
     reason, incident_id, device_name, alert_title, feed, machine_action_id, detail, \
     created_ticks, updated_ticks";

fn record(row: &Row<'_>) -> rusqlite::Result<(ActionRecord, String, i64, i64)> {
    let state: String = row.get(8)?;
    let created: i64 = row.get(16)?;
    let updated: i64 = row.get(17)?;
    Ok((
        ActionRecord {
            id: row.get(0)?,
            decision: NewAction {
                key: ActionKey {
                    playbook: row.get(1)?,
                    tenant: row.get(2)?,
                    alert_id: row.get(3)?,
                    device_id: row.get(4)?,
                },
                action: row.get(5)?,
                option: row.get(6)?,
                mode: row.get(7)?,
                state: ActionState::Failed,
                reason: row.get(9)?,
                incident_id: row.get(10)?,
                device_name: row.get(11)?,
                alert_title: row.get(12)?,
                feed: row.get(13)?,
            },
            machine_action_id: row.get(14)?,
            detail: row.get(15)?,
            created: DateTime::<Utc>::MIN_UTC,
            updated: DateTime::<Utc>::MIN_UTC,
        },
        state,
        created,
        updated,
    ))
}

/// Applies `ops` inside the caller's transaction or savepoint.
pub(crate) fn apply(
    conn: &Connection,
    path: &std::path::Path,
    ops: &[ActionOp],
    now: i64,
) -> Result<()> {
    let sql = |e| StateError::sqlite(path, "recording response actions", e);
    for op in ops {
        match op {
            ActionOp::Insert(a) => {
                conn.prepare_cached(
                    "INSERT INTO actions (playbook, tenant, alert_id, device_id, action, option, \
                     mode, state, reason, incident_id, device_name, alert_title, feed, \
                     created_ticks, updated_ticks)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
                     ON CONFLICT (playbook, tenant, alert_id, device_id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        a.key.playbook,
                        a.key.tenant,
                        a.key.alert_id,
                        a.key.device_id,
                        a.action,
                        a.option,
                        a.mode,
                        a.state.as_str(),
                        a.reason,
                        a.incident_id,
                        a.device_name,
                        a.alert_title,
                        a.feed,
                        now
                    ])
                })
                .map_err(sql)?;
            }
            ActionOp::Advance {
                id,
                from,
                to,
                machine_action_id,
                detail,
            } => {
                advance_in(
                    conn,
                    path,
                    *id,
                    from,
                    *to,
                    machine_action_id.as_deref(),
                    detail.as_deref(),
                    now,
                )?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn advance_in(
    conn: &Connection,
    path: &std::path::Path,
    id: i64,
    from: &[ActionState],
    to: ActionState,
    machine_action_id: Option<&str>,
    detail: Option<&str>,
    now: i64,
) -> Result<()> {
    let sql = |e| StateError::sqlite(path, "recording response actions", e);
    let current: Option<String> = conn
        .prepare_cached("SELECT state FROM actions WHERE id = ?1")
        .and_then(|mut s| s.query_row(params![id], |r| r.get(0)).optional())
        .map_err(sql)?;
    let ok = current
        .as_deref()
        .and_then(ActionState::parse)
        .is_some_and(|s| from.contains(&s));
    if !ok {
        return Err(StateError::ActionConflict {
            id,
            state: current.unwrap_or_else(|| "missing".to_string()),
        });
    }
    conn.prepare_cached(
        "UPDATE actions SET state = ?2,
             machine_action_id = coalesce(?3, machine_action_id),
             detail = coalesce(?4, detail), updated_ticks = ?5
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, to.as_str(), machine_action_id, detail, now]))
    .map_err(sql)?;
    Ok(())
}

impl StateStore {
    fn action_rows(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ActionRecord>> {
        let conn = self.reader();
        let sql = |e| StateError::sqlite(&self.path, "reading response actions", e);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM actions {filter} ORDER BY id"
            ))
            .map_err(sql)?;
        let rows = stmt.query_map(args, record).map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (mut r, state, created, updated) = row.map_err(sql)?;
            let bad = |what: String| StateError::Invalid {
                path: self.path.clone(),
                table: "actions",
                what,
            };
            r.decision.state =
                ActionState::parse(&state).ok_or_else(|| bad(format!("state {state}")))?;
            r.created = from_ticks(created).ok_or_else(|| bad(format!("time {created}")))?;
            r.updated = from_ticks(updated).ok_or_else(|| bad(format!("time {updated}")))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Every decision taken at or after `since`, oldest first: what limits count and what
    /// keeps a decision from being taken twice.
    pub fn actions_since(&self, since: DateTime<Utc>) -> Result<Vec<ActionRecord>> {
        let since = to_ticks(since)?;
        self.action_rows("WHERE created_ticks >= ?1", &[&since])
    }

    /// Every key ever decided for `tenant` (the idempotency set the daemon keeps).
    pub fn action_keys(&self, tenant: &str) -> Result<Vec<ActionKey>> {
        Ok(self
            .action_rows("WHERE tenant = ?1", &[&tenant])?
            .into_iter()
            .map(|r| r.decision.key)
            .collect())
    }

    /// Rows the daemon still has to act on (see [`ActionState::is_open`]).
    pub fn open_actions(&self) -> Result<Vec<ActionRecord>> {
        self.action_rows(
            "WHERE state IN ('approved', 'deny_requested', 'queued', 'sending', 'sent')",
            &[],
        )
    }

    /// Rows in `states` (all when empty), oldest first.
    pub fn actions_in(&self, states: &[ActionState]) -> Result<Vec<ActionRecord>> {
        if states.is_empty() {
            return self.action_rows("", &[]);
        }
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        self.action_rows(&format!("WHERE state IN ({})", list.join(", ")), &[])
    }

    /// One row.
    pub fn action(&self, id: i64) -> Result<Option<ActionRecord>> {
        Ok(self
            .action_rows("WHERE id = ?1", &[&id])?
            .into_iter()
            .next())
    }

    /// An operator's decision on a row awaiting approval: `approve` moves it to
    /// [`ActionState::Approved`], otherwise to [`ActionState::DenyRequested`]; the running
    /// daemon carries it out. Works while the daemon runs (its own transaction).
    pub fn decide_action(&self, id: i64, approve: bool, by: &str) -> Result<ActionRecord> {
        let to = if approve {
            ActionState::Approved
        } else {
            ActionState::DenyRequested
        };
        let now = to_ticks(Utc::now())?;
        {
            let mut conn = self.writer("decide_action")?;
            let tx = conn
                .transaction()
                .map_err(|e| StateError::sqlite(&self.path, "decide_action", e))?;
            advance_in(
                &tx,
                &self.path,
                id,
                &[ActionState::AwaitingApproval],
                to,
                None,
                Some(&format!(
                    "{} by {by}",
                    if approve { "approved" } else { "denied" }
                )),
                now,
            )?;
            tx.commit()
                .map_err(|e| StateError::sqlite(&self.path, "decide_action", e))?;
        }
        self.action(id)?.ok_or(StateError::ActionConflict {
            id,
            state: "missing".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PollWrite, State};
    use crate::types::StoreOptions;
    use std::sync::Arc;

    fn new_action(alert: &str, state: ActionState) -> NewAction {
        NewAction {
            key: ActionKey {
                playbook: "iso".into(),
                tenant: "contoso".into(),
                alert_id: alert.into(),
                device_id: "d1".into(),
            },
            action: "isolate".into(),
            option: "Selective".into(),
            mode: "enforce".into(),
            state,
            reason: None,
            incident_id: Some("7".into()),
            device_name: Some("host1".into()),
            alert_title: Some("Ransomware".into()),
            feed: "mde_alerts".into(),
        }
    }

    fn write(payloads: Vec<Vec<u8>>, actions: Vec<ActionOp>) -> PollWrite {
        PollWrite {
            tenant: "contoso".into(),
            feed: "mde_alerts",
            new_checkpoint: None,
            seen: Vec::new(),
            payloads,
            sinks: Arc::from(vec!["out".to_owned()]),
            prune_seen_before: DateTime::<Utc>::UNIX_EPOCH,
            outcome: None,
            actions,
        }
    }

    #[tokio::test]
    async fn decisions_commit_with_their_events_once_and_advance_only_from_expected_states() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            StateStore::open(&dir.path().join("s.db"), None, StoreOptions::default()).unwrap();
        let state = State::start(Arc::new(store)).unwrap();
        let log = state.poll_log();
        log.commit(write(
            vec![b"audit-1".to_vec()],
            vec![ActionOp::Insert(Box::new(new_action(
                "a1",
                ActionState::Queued,
            )))],
        ))
        .await
        .unwrap();
        // A later version deciding again changes nothing.
        log.commit(write(
            Vec::new(),
            vec![ActionOp::Insert(Box::new(new_action(
                "a1",
                ActionState::Limited,
            )))],
        ))
        .await
        .unwrap();
        let store = state.store();
        let rows = store.open_actions().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].decision.state, ActionState::Queued);
        assert_eq!(store.depth("out").unwrap().rows, 1);
        let id = rows[0].id;

        let advance = |from: Vec<ActionState>, to| ActionOp::Advance {
            id,
            from,
            to,
            machine_action_id: Some("ma-1".into()),
            detail: None,
        };
        log.commit(write(
            vec![b"audit-2".to_vec()],
            vec![advance(vec![ActionState::Queued], ActionState::Sending)],
        ))
        .await
        .unwrap();
        // From the wrong state the write fails as a whole: its event is not appended.
        let err = log
            .commit(write(
                vec![b"audit-3".to_vec()],
                vec![advance(vec![ActionState::Queued], ActionState::Sent)],
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::ActionConflict { .. }), "{err}");
        assert_eq!(store.depth("out").unwrap().rows, 2);
        let row = store.action(id).unwrap().unwrap();
        assert_eq!(row.decision.state, ActionState::Sending);
        assert_eq!(row.machine_action_id.as_deref(), Some("ma-1"));
        assert_eq!(
            store.action_keys("contoso").unwrap(),
            vec![row.decision.key.clone()]
        );
        assert_eq!(store.actions_since(row.created).unwrap().len(), 1);
    }

    #[test]
    fn approval_is_decided_once_by_whoever_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            StateStore::open(&dir.path().join("s.db"), None, StoreOptions::default()).unwrap();
        let now = to_ticks(Utc::now()).unwrap();
        {
            let conn = store.writer("test").unwrap();
            apply(
                &conn,
                &store.path,
                &[
                    ActionOp::Insert(Box::new(new_action("a1", ActionState::AwaitingApproval))),
                    ActionOp::Insert(Box::new(new_action("a2", ActionState::AwaitingApproval))),
                ],
                now,
            )
            .unwrap();
        }
        let waiting = store.actions_in(&[ActionState::AwaitingApproval]).unwrap();
        assert_eq!(waiting.len(), 2);
        let a = store.decide_action(waiting[0].id, true, "alice").unwrap();
        assert_eq!(a.decision.state, ActionState::Approved);
        assert_eq!(a.detail.as_deref(), Some("approved by alice"));
        let err = store
            .decide_action(waiting[0].id, false, "bob")
            .unwrap_err();
        assert!(matches!(err, StateError::ActionConflict { ref state, .. } if state == "approved"));
        let b = store.decide_action(waiting[1].id, false, "bob").unwrap();
        assert_eq!(b.decision.state, ActionState::DenyRequested);
        assert!(matches!(
            store.decide_action(999, true, "x").unwrap_err(),
            StateError::ActionConflict { .. }
        ));
        assert_eq!(store.open_actions().unwrap().len(), 2);
    }
}
