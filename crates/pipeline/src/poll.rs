//! The scheduler's task for one (tenant, feed) and its poll cycle — the heart of the relay.
//!
//! One poll reads the window `[checkpoint − overlap, now − availability_lag)` page by page.
//! Each page's new versions (not in the seen set loaded at the start, not already met in
//! this cycle) are normalized and committed in one transaction that appends one outbox row
//! per (event, routed sink) and records the versions as seen, leaving the checkpoint alone;
//! so memory stays bounded by one page however large the backlog. After the last page a
//! final commit advances the checkpoint to the window's end and forgets seen versions older
//! than the window's start. A crash before a commit re-polls what it would have held; after
//! it nothing is lost; the seen set makes the re-poll deliver nothing twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use relay_auth::TokenManager;
use relay_config::Feed;
use relay_defender::{ApiFamily, DefenderClient, DefenderError};
use relay_state::{truncate_to_tick, AuthState, Credentials, PollLog, PollWrite, StateError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::backoff::{first_poll_delay, next_poll_delay};
use crate::build::TenantPlan;
use crate::error::chain;
use crate::normalize::normalize;
use crate::status::{FeedCell, SinkCell, TenantCell};
use relay_playbooks::{audit, AlertFacts, AlertRef, Decider, ExecutorStats, Extra, Outcome};
use relay_state::{ActionOp, ActionState, NewAction};

/// How often "outbox full; pausing polls" is repeated per sink while a pause lasts.
const PAUSE_LOG_EVERY: Duration = Duration::from_secs(300);

/// How long after its token probe is due a feed without tokens polls again, at least: the
/// probe is then certainly due, and a probe time already past cannot make the task spin.
const PROBE_SLACK: Duration = Duration::from_millis(100);

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    /// Reading the window failed (after the client's own retries).
    #[error(transparent)]
    Defender(#[from] DefenderError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// How a poll ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollEnd {
    /// The whole window was read and committed.
    Completed {
        /// New versions committed.
        events: u64,
        /// Versions skipped as already delivered.
        duplicates: u64,
        /// The checkpoint after the final commit.
        checkpoint: Option<DateTime<Utc>>,
    },
    /// Shutdown arrived while a page was being fetched; what was committed stays, the rest
    /// is re-polled after restart.
    Cancelled,
}

/// What a feed task keeps between polls: its committed checkpoint and the versions it
/// committed inside the overlap, so a poll reads nothing from the store. Loaded from the
/// store at the first poll and again after any failed poll (a page whose commit failed
/// must not count as seen).
struct Memo {
    checkpoint: Option<DateTime<Utc>>,
    seen: HashSet<(String, DateTime<Utc>)>,
    /// The window start `seen` was loaded or pruned for.
    seen_from: DateTime<Utc>,
    /// Whether the store may hold seen versions older than `seen_from`: after a load
    /// (only the window's were read) and after `seen` forgot some. The end of a poll
    /// prunes the store only then, so an idle poll's end is one statement.
    prune_due: bool,
}

/// Everything one (tenant, feed) task needs.
pub(crate) struct FeedTask {
    pub(crate) plan: Arc<TenantPlan>,
    pub(crate) feed: Feed,
    pub(crate) log: PollLog,
    pub(crate) credentials: Credentials,
    pub(crate) client: DefenderClient,
    pub(crate) tokens: TokenManager,
    /// The sinks the tenant routes to, in plan order.
    pub(crate) sinks: Vec<Arc<SinkCell>>,
    /// Their names, as every commit of this feed names them.
    pub(crate) sink_names: Arc<[String]>,
    pub(crate) stats: Arc<FeedCell>,
    pub(crate) tenant: Arc<TenantCell>,
    /// The playbooks' decider, for an alerts feed of a tenant some playbook may act on.
    pub(crate) playbooks: Option<Playbooks>,
}

/// What a poll needs to decide on its alerts: the shared decider and the audit counters.
#[derive(Clone)]
pub(crate) struct Playbooks {
    pub(crate) decider: Arc<Decider>,
    pub(crate) stats: Arc<ExecutorStats>,
}

impl FeedTask {
    /// The task body: poll every interval (the first one jittered across the interval,
    /// each next one ±10 %) until `cancel` fires. A poll in progress when it fires stops at
    /// the next page fetch; commits already started finish.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let interval = self.plan.poll_interval;
        let mut rng = SmallRng::from_entropy();
        let mut next = Instant::now() + first_poll_delay(interval, &mut rng);
        let mut paused_since = None;
        let mut memo = None;
        debug!(?interval, "feed scheduled");
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            next = started + next_poll_delay(interval, &mut rng);

            if self.outbox_full(&mut paused_since) {
                continue;
            }
            // A tenant the API told to back off (429 + Retry-After) would only wait for
            // the block inside the poll; skip it instead and come back when it is over.
            let family = ApiFamily::of(self.feed);
            if let Some(wait) = self
                .client
                .limiter()
                .blocked_for(&self.plan.target.tenant_id, family)
            {
                debug!(?wait, "tenant throttled by the API; skipping this poll");
                next = next.max(Instant::now() + wait);
                continue;
            }
            // Requests in flight are bounded per request, not per poll, by the client's
            // admission gate (adaptive, live pages first, tenants in turn): a poll waiting
            // out its tenant's quota holds no slot.
            // Boxed: a future is as large as its largest await point, and this one (the
            // pager, the page in flight, the commit) would otherwise sit inline in every
            // idle task of every tenant between polls.
            let result = Box::pin(self.poll_once(&cancel, &mut memo)).await;
            if result.is_err() {
                memo = None;
            }
            match result {
                Ok(PollEnd::Cancelled) => break,
                Ok(PollEnd::Completed {
                    events,
                    duplicates,
                    checkpoint,
                }) => {
                    self.on_success(events, duplicates, checkpoint, started)
                        .await;
                }
                Err(e) => {
                    self.on_failure(&e, interval).await;
                    // A tenant without tokens comes back when its token endpoint is probed,
                    // not an interval later: it resumes from the checkpoint within moments
                    // of consent coming back. Whichever feed of the tenant wakes first
                    // makes the probe; the others follow at their next poll.
                    if let PollError::Defender(DefenderError::Token { .. }) = &e {
                        if let Some(at) = self.tokens.next_probe(self.plan.name()) {
                            next = next.min(at.max(Instant::now() + PROBE_SLACK));
                        }
                    }
                }
            }
            self.sync_auth_state().await;
        }
        debug!("feed stopped");
    }

    /// Whether a sink this tenant routes to has a full outbox. The pause is logged once
    /// per sink (and again every few minutes while it lasts), not once per tenant: a
    /// shared sink filling up pauses thousands of tenants at once.
    fn outbox_full(&self, pause: &mut Option<Instant>) -> bool {
        let Some(sink) = self.sinks.iter().find(|s| s.is_over_limit()) else {
            if let Some(since) = pause.take() {
                debug!(paused_for = ?since.elapsed(), "outboxes have room again; polling resumes");
                self.stats.inner.lock().paused_by_sink = None;
            }
            return false;
        };
        let now = Instant::now();
        if sink.pause_log_due(now, PAUSE_LOG_EVERY) {
            warn!(
                sink = %sink.name,
                "outbox of sink {} full; pausing polls for tenant {} (and every other tenant \
                 routed to it) until the sink catches up; nothing is dropped",
                sink.name,
                self.plan.name()
            );
        } else {
            debug!(sink = %sink.name, "outbox full; poll skipped");
        }
        pause.get_or_insert(now);
        let mut s = self.stats.inner.lock();
        s.skipped_outbox_full += 1;
        s.paused_by_sink = Some(sink.name.clone());
        true
    }

    /// One poll of the window; see the module docs.
    async fn poll_once(
        &self,
        cancel: &CancellationToken,
        memo: &mut Option<Memo>,
    ) -> Result<PollEnd, PollError> {
        let tenant = self.plan.name();
        let feed = self.feed.as_str();
        let now = Utc::now();

        let stored = match memo {
            Some(m) => m.checkpoint,
            None => self.log.checkpoint(tenant, feed).await?,
        };
        let checkpoint = stored.unwrap_or_else(|| before(now, self.plan.first_fetch));
        let from = truncate_to_tick(before(checkpoint, self.plan.overlap));
        let to = truncate_to_tick(before(now, self.plan.availability_lag));
        if to <= from {
            // Only possible with an availability lag longer than overlap + the time since
            // the last poll; there is nothing to ask for yet.
            self.log.record_poll(tenant, feed, None).await?;
            return Ok(PollEnd::Completed {
                events: 0,
                duplicates: 0,
                checkpoint: stored,
            });
        }

        let m = match memo {
            Some(m) => {
                if from > m.seen_from {
                    let before = m.seen.len();
                    m.seen.retain(|(_, t)| *t >= from);
                    m.seen_from = from;
                    m.prune_due |= m.seen.len() < before;
                }
                m
            }
            None => memo.insert(Memo {
                checkpoint: stored,
                seen: self.log.seen_since(tenant, feed, from).await?,
                seen_from: from,
                prune_due: true,
            }),
        };
        debug!(from = %from.to_rfc3339(), to = %to.to_rfc3339(), seen = m.seen.len(), "polling window");

        let mut pager = self
            .client
            .window(&self.plan.target, self.feed, from, to)
            .count_throttling(Arc::clone(&self.stats.throttling));
        let mut events = 0u64;
        let mut duplicates = 0u64;
        loop {
            let page = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(PollEnd::Cancelled),
                page = pager.next_page() => page?,
            };
            let Some(items) = page else { break };

            let mut page_seen: Vec<(String, DateTime<Utc>)> = Vec::with_capacity(items.len());
            let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(items.len());
            let mut decisions: Vec<NewAction> = Vec::new();
            for item in items {
                // The store keeps 100-ns ticks; compare at that precision.
                let key = (item.id.clone(), truncate_to_tick(item.last_update));
                if m.seen.contains(&key) || page_seen.contains(&key) {
                    duplicates += 1;
                    continue;
                }
                let event = normalize(item);
                payloads.push(event.to_outbox_bytes());
                page_seen.push(key);
                if let Some(p) = &self.playbooks {
                    decide(p, &event, &mut decisions, &mut payloads);
                }
            }
            if payloads.is_empty() {
                continue;
            }
            let appended = page_seen.len() as u64;
            let actions: Vec<ActionOp> = decisions
                .iter()
                .map(|d| ActionOp::Insert(Box::new(d.clone())))
                .collect();
            let committed = self
                .log
                .commit(PollWrite {
                    tenant: tenant.to_owned(),
                    feed,
                    new_checkpoint: None,
                    seen: page_seen.clone(),
                    payloads,
                    sinks: Arc::clone(&self.sink_names),
                    prune_seen_before: from,
                    outcome: None,
                    actions,
                })
                .await;
            if let Some(p) = &self.playbooks {
                match &committed {
                    // Not journaled: the re-poll decides these again.
                    Err(_) => p.decider.forget(&decisions),
                    Ok(_) => {
                        for o in decisions.iter().filter_map(|d| first_outcome(d.state)) {
                            p.stats.record(o);
                        }
                    }
                }
            }
            let outcome = committed?;
            // Committed: from now on these versions are delivered.
            m.seen.extend(page_seen);
            events += appended;
            self.stats.inner.lock().events += appended;
            for sink in &self.sinks {
                if outcome.sinks_over_limit.contains(&sink.name) {
                    sink.over_limit
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                sink.wake.notify_one();
            }
        }

        // Every page was read and committed: the window is done. The same write records
        // the poll for `status`.
        let prune = m.prune_due.then_some(from);
        let checkpoint = self.log.advance(tenant, feed, to, prune).await?;
        m.checkpoint = checkpoint;
        m.prune_due = false;
        Ok(PollEnd::Completed {
            events,
            duplicates,
            checkpoint,
        })
    }

    async fn on_success(
        &self,
        events: u64,
        duplicates: u64,
        checkpoint: Option<DateTime<Utc>>,
        started: Instant,
    ) {
        let now = Utc::now();
        {
            let mut s = self.stats.inner.lock();
            s.polls += 1;
            s.duplicates_skipped += duplicates;
            s.last_poll = Some(now);
            s.last_success = Some(now);
            s.checkpoint = checkpoint;
        }
        debug!(events, duplicates, took = ?started.elapsed(), "poll done");
    }

    async fn on_failure(&self, e: &PollError, interval: Duration) {
        let text = chain(e);
        let now = Utc::now();
        {
            let mut s = self.stats.inner.lock();
            s.polls += 1;
            s.last_poll = Some(now);
            s.last_error = Some(text.clone());
            match e {
                PollError::Defender(d) if d.needs_consent() => s.errors.needs_consent += 1,
                PollError::Defender(d) if d.is_transient() => s.errors.transient += 1,
                PollError::Defender(_) => s.errors.permanent += 1,
                PollError::State(st) if st.is_transient() => s.errors.transient += 1,
                PollError::State(_) => s.errors.state += 1,
            }
        }
        // The token manager logs a tenant's way into and out of a failing sign-in state
        // once each; the polls it refuses meanwhile are not news.
        let auth_failing = !matches!(
            self.tokens.auth_state(self.plan.name()),
            None | Some(relay_auth::AuthState::Ok { .. })
        );
        match e {
            PollError::Defender(DefenderError::Token { .. }) if auth_failing => {
                debug!(error = %text, "poll skipped: the tenant has no token");
            }
            PollError::Defender(d) if d.needs_consent() => {
                error!(
                    error = %text,
                    "tenant {} needs admin consent again; its polling waits until consent is \
                     given again or it is re-onboarded (other tenants are unaffected)",
                    self.plan.name()
                );
            }
            PollError::Defender(d) if d.is_transient() => {
                warn!(error = %text, "poll failed; retrying in {interval:?}");
            }
            PollError::State(st) if st.is_transient() => {
                warn!(error = %text, "poll failed; retrying in {interval:?}");
            }
            _ => {
                error!(error = %text, "poll failed and needs an operator; retrying every {interval:?}");
            }
        }
        self.record_poll(Some(text)).await;
    }

    async fn record_poll(&self, error: Option<String>) {
        let r = self
            .log
            .record_poll(self.plan.name(), self.feed.as_str(), error)
            .await;
        if let Err(e) = r {
            warn!(error = %chain(&e), "cannot record the poll outcome in the state store");
        }
    }

    /// Mirrors the token manager's view of the tenant into the state store (for `status`
    /// and the next start) when it changed kind or its next probe moved.
    async fn sync_auth_state(&self) {
        let Some(current) = self.tokens.auth_state(self.plan.name()) else {
            return;
        };
        let now = Utc::now();
        let new = match current {
            relay_auth::AuthState::Ok { .. } => AuthState::Ok { since: now },
            relay_auth::AuthState::NeedsConsent {
                error,
                since,
                next_probe,
            } => AuthState::NeedsConsent {
                code: match error.code {
                    Some(code) => format!("AADSTS{code}"),
                    None => error.error.as_str().to_owned(),
                },
                since,
                next_probe: Some(next_probe),
            },
            relay_auth::AuthState::Failing {
                kind,
                since,
                next_probe,
            } => AuthState::Failing {
                error: kind.to_string(),
                since,
                next_probe: Some(next_probe),
            },
        };
        {
            let mut t = self.tenant.inner.lock();
            if t.auth.as_ref().is_some_and(|old| same_auth(old, &new)) {
                return;
            }
            t.auth = Some(new.clone());
        }
        let r = self.credentials.set_auth_state(self.plan.name(), new).await;
        if let Err(e) = r {
            warn!(error = %chain(&e), "cannot record the auth state in the state store");
            // Try again after the next poll.
            self.tenant.inner.lock().auth = None;
        }
    }
}

/// Same kind, detail and next probe; the `since` of a state that did not change does not
/// matter.
fn same_auth(a: &AuthState, b: &AuthState) -> bool {
    match (a, b) {
        (AuthState::Ok { .. }, AuthState::Ok { .. }) => true,
        (
            AuthState::NeedsConsent {
                code: x,
                next_probe: p,
                ..
            },
            AuthState::NeedsConsent {
                code: y,
                next_probe: q,
                ..
            },
        ) => x == y && p == q,
        (
            AuthState::Failing {
                error: x,
                next_probe: p,
                ..
            },
            AuthState::Failing {
                error: y,
                next_probe: q,
                ..
            },
        ) => x == y && p == q,
        _ => false,
    }
}

/// The audit outcome of a decision's first state; `queued` (enforce) has none of its own:
/// its audit is the executor's `sent` (or `failed`).
fn first_outcome(state: ActionState) -> Option<Outcome> {
    match state {
        ActionState::WouldAct => Some(Outcome::WouldAct),
        ActionState::Limited => Some(Outcome::Limited),
        ActionState::AwaitingApproval => Some(Outcome::AwaitingApproval),
        _ => None,
    }
}

/// The playbooks' decisions on one alert version, appended with their audit events to
/// the page's write (one transaction: decided once, audited once).
fn decide(
    p: &Playbooks,
    event: &relay_sinks::Event,
    decisions: &mut Vec<NewAction>,
    payloads: &mut Vec<Vec<u8>>,
) {
    let Some(facts) = AlertFacts::of(event) else {
        return;
    };
    let now = Utc::now();
    let alert = AlertRef {
        tenant: &event.tenant_name,
        alert_id: &event.id,
        feed: event.feed.as_str(),
        severity: event.severity,
    };
    for d in p.decider.decide(alert, &facts, now) {
        if let Some(outcome) = first_outcome(d.state) {
            match audit::event(&event.tenant_id, &d, outcome, Extra::default(), now) {
                Ok(e) => payloads.push(e.to_outbox_bytes()),
                Err(error) => warn!(%error, "cannot build an audit event"),
            }
        }
        decisions.push(d);
    }
}

/// `t − d`, never earlier than the Unix epoch (no Defender item is older, and the state
/// store's clock cannot go before year −27,000 anyway): a configured first fetch of
/// "forever" must not overflow.
fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .map_or(DateTime::UNIX_EPOCH, |x| x.max(DateTime::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_states_compare_by_kind_and_detail() {
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(5);
        assert!(same_auth(
            &AuthState::Ok { since: t0 },
            &AuthState::Ok { since: t1 }
        ));
        let consent = |code: &str, since| AuthState::NeedsConsent {
            code: code.into(),
            since,
            next_probe: Some(t0),
        };
        assert!(same_auth(
            &consent("AADSTS50173", t0),
            &consent("AADSTS50173", t1)
        ));
        assert!(!same_auth(
            &consent("AADSTS50173", t0),
            &consent("AADSTS65001", t0)
        ));
        assert!(!same_auth(
            &AuthState::Ok { since: t0 },
            &consent("AADSTS50173", t0)
        ));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let now = Utc::now();
        assert_eq!(before(now, Duration::MAX), DateTime::UNIX_EPOCH);
        assert_eq!(
            before(now, Duration::from_secs(90)),
            now - chrono::Duration::seconds(90)
        );
    }
}
