//! The daemon's side of systemd's service protocol (`sd_notify(3)`, `Type=notify` in
//! `deploy/xdr-relay.service`): `READY=1` once the configuration validated, the state store
//! is open and the relay is built; a `STATUS=` line with a short summary for
//! `systemctl status`; `WATCHDOG=1` keep-alives, but only while the scheduler makes
//! progress; `STOPPING=1` when shutdown starts. Every function is a no-op when no service
//! manager listens (`NOTIFY_SOCKET` unset), so `xdr-relay run` in a terminal, a container
//! or a test behaves the same without it.
//!
//! # When a keep-alive is sent
//!
//! systemd kills and restarts the service (`Restart=on-failure`) when no `WATCHDOG=1`
//! arrives for `WatchdogSec=`. A keep-alive sent from a timer alone would only prove that
//! the async runtime still turns; a relay whose poll tasks are all wedged (a request that
//! never ends, a state store that never returns) would be kept alive forever. So every
//! half watchdog interval the supervisor takes the pipeline's live status and sends
//! `WATCHDOG=1` only when
//!
//! 1. no tenant is enabled (nothing to schedule: idle by design), or
//! 2. the scheduler made progress since the previous check: some poll ended (succeeded or
//!    failed — a tenant whose API is down or whose consent was revoked still counts, its
//!    poll task did its job), some page of new events was committed, or some poll was
//!    skipped because a full outbox pauses its tenant; or
//! 3. the last progress is less than the *stall budget* ago: the longest a healthy relay
//!    can go without any of the above. It is derived from the configuration (see
//!    [`stall_budget`]): the shortest poll interval plus its jitter — between polls the
//!    scheduler is legitimately idle, and the first polls after start are spread over one
//!    interval — plus the longest a single page may legitimately take (every attempt
//!    timing out, retry backoff and `Retry-After` waits). `run --watchdog-stall-secs`
//!    overrides it.
//!
//! Otherwise the keep-alive is withheld, an error is logged once and the `STATUS=` line
//! says "stalled", so `systemctl status` shows why the watchdog fired. When the runtime
//! itself is stuck, the supervisor does not run at all and no keep-alive is sent either.

use std::time::Duration;

use relay_config::Config;
use relay_pipeline::{RelayStatus, StatusHandle};
use sd_notify::NotifyState;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often the `STATUS=` line is refreshed when systemd set no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Whether a service manager listens for notifications (`NOTIFY_SOCKET` is set).
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The watchdog interval systemd expects keep-alives within (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC`), or `None` when there is none, when it is meant for another process
/// (`WATCHDOG_PID`), or when no service manager listens.
pub fn watchdog_interval() -> Option<Duration> {
    if !under_systemd() {
        return None;
    }
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Startup is finished: tells systemd the service is up, with a first status line.
pub fn notify_ready(status: &RelayStatus) {
    let line = status_line(status, None);
    send(&[NotifyState::Ready, NotifyState::Status(&line)], true);
}

/// Replaces the status line `systemctl status` shows.
pub fn notify_status(line: &str) {
    send(&[NotifyState::Status(line)], false);
}

/// Shutdown started: systemd waits for the exit (up to `TimeoutStopSec=`) instead of
/// treating it as a crash, and stops expecting keep-alives.
pub fn notify_stopping() {
    send(
        &[
            NotifyState::Stopping,
            NotifyState::Status("stopping: finishing polls, draining sinks"),
        ],
        true,
    );
}

fn send(states: &[NotifyState], important: bool) {
    if let Err(e) = sd_notify::notify(states) {
        // A lost READY or STOPPING makes systemd time the service out: worth a warning.
        // A lost periodic status line is repaired by the next one.
        if important {
            warn!(error = %e, "cannot notify systemd");
        } else {
            debug!(error = %e, "cannot notify systemd");
        }
    }
}

/// The longest a healthy relay running `config` can go without a poll ending, a page
/// being committed or a poll being skipped for a full outbox (see the module docs).
///
/// It is the shortest poll interval of the enabled tenants plus its 10 % jitter, plus one
/// page's worst legitimate duration under the API client's retry policy — every attempt
/// timing out after `http.request_timeout_secs`, the backoff between attempts, every
/// allowed 429 answered with the longest `Retry-After` still waited out — plus one more
/// request timeout for the access token the poll fetches first. With the defaults (60 s
/// polls, 60 s timeouts) that is about 13.5 minutes: the watchdog catches a wedged relay,
/// never a slow Defender.
pub fn stall_budget(config: &Config) -> Duration {
    let shortest_interval = config
        .enabled_tenants()
        .map(|t| t.poll_interval)
        .min()
        .unwrap_or(config.defaults.poll_interval);
    let timeout = config.http.request_timeout;
    let retry = relay_defender::RetryPolicy::default();
    let attempts = retry.max_attempts.max(1);
    let page = timeout.saturating_mul(attempts)
        + retry.max_delay.saturating_mul(attempts - 1)
        + retry.max_retry_after.saturating_mul(retry.max_throttled);
    shortest_interval.mul_f64(1.1) + page + timeout
}

/// Sends keep-alives and status lines until `stop` is cancelled; returns at once when no
/// service manager listens. `stall_budget` as in [`stall_budget`].
pub async fn supervise(status: StatusHandle, stall_budget: Duration, stop: CancellationToken) {
    if !under_systemd() {
        return;
    }
    let watchdog = watchdog_interval();
    // Half the interval, as sd_watchdog_enabled(3) advises: one late tick is not fatal.
    let period = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(10)));
    info!(
        ?watchdog,
        ?stall_budget,
        "systemd notification enabled; keep-alives only while polls make progress"
    );
    let mut liveness = Liveness::new(stall_budget, &status.snapshot(), Instant::now());
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stall_reported = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let snapshot = status.snapshot();
        let verdict = liveness.check(&snapshot, Instant::now());
        let line = status_line(&snapshot, Some(verdict));
        match verdict {
            Verdict::Alive => {
                if stall_reported {
                    info!("polls make progress again");
                    stall_reported = false;
                }
                if watchdog.is_some() {
                    send(&[NotifyState::Watchdog, NotifyState::Status(&line)], false);
                } else {
                    notify_status(&line);
                }
            }
            Verdict::Stalled { idle } => {
                if !stall_reported {
                    stall_reported = true;
                    if watchdog.is_some() {
                        error!(
                            ?idle,
                            ?stall_budget,
                            "no poll has ended for {}s; withholding the watchdog keep-alive, so systemd restarts the relay",
                            idle.as_secs()
                        );
                    } else {
                        warn!(
                            ?idle,
                            ?stall_budget,
                            "no poll has ended for {}s; polling looks stuck",
                            idle.as_secs()
                        );
                    }
                }
                notify_status(&line);
            }
        }
    }
}

/// What one check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Progress, idle by design, or still within the stall budget: send the keep-alive.
    Alive,
    /// Nothing happened for longer than the stall budget.
    Stalled {
        /// Since the last progress.
        idle: Duration,
    },
}

/// The keep-alive decision of the module docs, as a pure function of status snapshots and
/// the time, so it is tested without a clock or a relay.
#[derive(Debug, Clone)]
pub struct Liveness {
    budget: Duration,
    mark: u64,
    last_progress: Instant,
}

impl Liveness {
    /// Starts watching at `now`, from the counters in `initial`.
    pub fn new(budget: Duration, initial: &RelayStatus, now: Instant) -> Self {
        Liveness {
            budget,
            mark: progress_mark(initial),
            last_progress: now,
        }
    }

    /// Whether the scheduler is alive at `now`, given the latest snapshot.
    pub fn check(&mut self, status: &RelayStatus, now: Instant) -> Verdict {
        let mark = progress_mark(status);
        if status.feeds.is_empty() || mark != self.mark {
            self.mark = mark;
            self.last_progress = now;
            return Verdict::Alive;
        }
        let idle = now.saturating_duration_since(self.last_progress);
        if idle <= self.budget {
            Verdict::Alive
        } else {
            Verdict::Stalled { idle }
        }
    }
}

/// A number that grows whenever any poll task does something: polls ended, pages of new
/// events committed, polls skipped for a full outbox. Counters only grow, so "changed"
/// means "progressed".
fn progress_mark(status: &RelayStatus) -> u64 {
    status.feeds.iter().fold(0u64, |acc, f| {
        acc.wrapping_add(f.polls)
            .wrapping_add(f.events)
            .wrapping_add(f.skipped_outbox_full)
    })
}

/// The `STATUS=` line: `42 tenants, 1234 events, 1200 delivered, 0 poll errors`, with the
/// tenants needing consent and a stall, when there are any.
pub fn status_line(status: &RelayStatus, verdict: Option<Verdict>) -> String {
    let mut line = String::new();
    if let Some(Verdict::Stalled { idle }) = verdict {
        line.push_str(&format!("stalled: no poll ended for {}s; ", idle.as_secs()));
    }
    line.push_str(&format!(
        "{} tenants, {} events, {} delivered, {} poll errors",
        status.tenants.len(),
        status.events(),
        status.delivered(),
        status.poll_errors()
    ));
    let consent = status
        .tenants
        .iter()
        .filter(|t| matches!(t.auth, Some(relay_state::AuthState::NeedsConsent { .. })))
        .count();
    if consent > 0 {
        line.push_str(&format!(", {consent} need consent"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use relay_config::Feed;
    use relay_pipeline::{ErrorCounts, FeedStats, TenantStats};

    fn feed(tenant: &str, polls: u64, events: u64, skipped: u64) -> FeedStats {
        FeedStats {
            tenant: tenant.to_owned(),
            feed: Feed::GraphAlerts,
            stream: Feed::GraphAlerts.stream(),
            polls,
            events,
            duplicates_skipped: 0,
            errors: ErrorCounts::default(),
            last_poll: None,
            last_success: None,
            last_error: None,
            checkpoint: None,
            lag: None,
            skipped_outbox_full: skipped,
            paused_by_sink: None,
            throttled: 0,
            throttled_wait: Duration::ZERO,
        }
    }

    fn status(feeds: Vec<FeedStats>) -> RelayStatus {
        let mut tenants: Vec<TenantStats> = feeds
            .iter()
            .map(|f| TenantStats {
                name: f.tenant.clone(),
                tenant_id: format!("id-{}", f.tenant),
                auth: None,
                token_refreshes: Vec::new(),
            })
            .collect();
        tenants.dedup_by(|a, b| a.name == b.name);
        RelayStatus {
            taken_at: Utc::now(),
            started_at: Utc::now(),
            tenants,
            feeds,
            sinks: Vec::new(),
            engine: Default::default(),
            actions: Default::default(),
        }
    }

    const BUDGET: Duration = Duration::from_secs(100);

    #[test]
    fn within_the_budget_an_idle_scheduler_is_alive() {
        let t0 = Instant::now();
        let s = status(vec![feed("a", 0, 0, 0)]);
        let mut l = Liveness::new(BUDGET, &s, t0);
        assert_eq!(l.check(&s, t0 + Duration::from_secs(30)), Verdict::Alive);
        assert_eq!(l.check(&s, t0 + BUDGET), Verdict::Alive);
        assert_eq!(
            l.check(&s, t0 + BUDGET + Duration::from_secs(1)),
            Verdict::Stalled {
                idle: BUDGET + Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn any_ended_poll_committed_page_or_skipped_poll_is_progress() {
        let t0 = Instant::now();
        let mut l = Liveness::new(BUDGET, &status(vec![feed("a", 3, 10, 0)]), t0);
        let mut t = t0;
        for next in [
            feed("a", 4, 10, 0), // a poll ended
            feed("a", 4, 60, 0), // a page of a long poll was committed
            feed("a", 4, 60, 1), // a poll skipped: outbox full
        ] {
            t += BUDGET + Duration::from_secs(50);
            assert_eq!(l.check(&status(vec![next]), t), Verdict::Alive);
        }
        // And the budget restarts from the last progress.
        let same = status(vec![feed("a", 4, 60, 1)]);
        assert_eq!(l.check(&same, t + BUDGET), Verdict::Alive);
        assert!(matches!(
            l.check(&same, t + BUDGET + Duration::from_secs(1)),
            Verdict::Stalled { .. }
        ));
    }

    #[test]
    fn one_busy_tenant_keeps_the_relay_alive_while_others_hang() {
        let t0 = Instant::now();
        let mut l = Liveness::new(
            BUDGET,
            &status(vec![feed("stuck", 0, 0, 0), feed("ok", 0, 0, 0)]),
            t0,
        );
        for i in 1..10u64 {
            let s = status(vec![feed("stuck", 0, 0, 0), feed("ok", i, 0, 0)]);
            assert_eq!(
                l.check(&s, t0 + Duration::from_secs(90 * i)),
                Verdict::Alive
            );
        }
    }

    #[test]
    fn no_enabled_tenant_is_idle_by_design() {
        let t0 = Instant::now();
        let s = status(Vec::new());
        let mut l = Liveness::new(Duration::ZERO, &s, t0);
        assert_eq!(
            l.check(&s, t0 + Duration::from_secs(86_400)),
            Verdict::Alive
        );
    }

    #[test]
    fn stall_budget_follows_the_fastest_enabled_tenant_and_the_request_timeout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
        std::fs::write(
            dir.path().join("relay.toml"),
            "[state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\
             [defaults]\npoll_interval_secs = 60\nsinks = [\"file\"]\n\
             [http]\nrequest_timeout_secs = 30\n\
             [sinks.file]\ntype = \"file\"\npath = \"events\"\n",
        )
        .unwrap();
        let tenant = |name: &str, n: u32, extra: &str| {
            std::fs::write(
                dir.path().join(format!("tenants.d/{name}.toml")),
                format!(
                    "tenant_id = \"00000000-0000-0000-0000-00000000000{n}\"\n{extra}\n\
                     [auth]\nkind = \"refresh_token\"\n\
                     client_id = \"10000000-0000-0000-0000-00000000000{n}\"\n"
                ),
            )
            .unwrap();
        };
        tenant("fast", 1, "poll_interval_secs = 20");
        tenant("default", 2, "");
        // A disabled tenant is never polled, so its interval does not count.
        tenant("off", 3, "enabled = false\npoll_interval_secs = 10");
        let env = std::collections::HashMap::new();
        let config = relay_config::load(&relay_config::LoadOptions::new(
            dir.path().join("relay.toml"),
            &env,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        // 20 s × 1.1 jitter; 4 attempts × 30 s + 3 backoffs ≤ 30 s + 3 × 120 s Retry-After;
        // 30 s for the token.
        assert_eq!(
            stall_budget(&config),
            Duration::from_secs(22 + 120 + 90 + 360 + 30)
        );
    }

    #[test]
    fn status_line_summarises_and_says_why_the_watchdog_fired() {
        let mut s = status(vec![feed("a", 2, 1234, 0), feed("b", 1, 0, 0)]);
        s.feeds[1].errors.transient = 1;
        assert_eq!(
            status_line(&s, Some(Verdict::Alive)),
            "2 tenants, 1234 events, 0 delivered, 1 poll errors"
        );
        s.tenants[1].auth = Some(relay_state::AuthState::NeedsConsent {
            code: "AADSTS50173".into(),
            since: Utc::now(),
            next_probe: None,
        });
        assert_eq!(
            status_line(
                &s,
                Some(Verdict::Stalled {
                    idle: Duration::from_secs(901)
                })
            ),
            "stalled: no poll ended for 901s; 2 tenants, 1234 events, 0 delivered, \
             1 poll errors, 1 need consent"
        );
    }
}
