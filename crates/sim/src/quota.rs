//! Per-tenant API quotas: sliding windows per API family, as Microsoft states them
//! (per application and tenant: XDR 50/min and 1,500/h, MDE 100/min and 1,500/h, Graph
//! security 150/min). A refused request does not count, but retrying early is refused
//! again because the window is still full — what the docs warn about.

use parking_lot::Mutex;
use relay_config::Feed;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Request limits per tenant per window. [`QuotaLimits::default`] is Microsoft's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// M365 Defender API, per minute.
    pub m365d_per_minute: u32,
    /// M365 Defender API, per hour.
    pub m365d_per_hour: u32,
    /// Defender for Endpoint API, per minute.
    pub mde_per_minute: u32,
    /// Defender for Endpoint API, per hour.
    pub mde_per_hour: u32,
    /// Graph `/security`, per minute.
    pub graph_per_minute: u32,
    /// Machine actions (isolate, scan, ...) requested, per minute.
    pub machine_actions_per_minute: u32,
    /// Machine actions requested, per hour.
    pub machine_actions_per_hour: u32,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        QuotaLimits {
            m365d_per_minute: 50,
            m365d_per_hour: 1_500,
            mde_per_minute: 100,
            mde_per_hour: 1_500,
            graph_per_minute: 150,
            machine_actions_per_minute: 100,
            machine_actions_per_hour: 1_500,
        }
    }
}

impl QuotaLimits {
    /// Every limit multiplied by `factor` (at least 1): `0.1` makes tests hit them fast,
    /// `10.0` leaves room for load tests.
    pub fn scaled(self, factor: f64) -> QuotaLimits {
        let s = |n: u32| ((f64::from(n) * factor).round() as u32).max(1);
        QuotaLimits {
            m365d_per_minute: s(self.m365d_per_minute),
            m365d_per_hour: s(self.m365d_per_hour),
            mde_per_minute: s(self.mde_per_minute),
            mde_per_hour: s(self.mde_per_hour),
            graph_per_minute: s(self.graph_per_minute),
            machine_actions_per_minute: s(self.machine_actions_per_minute),
            machine_actions_per_hour: s(self.machine_actions_per_hour),
        }
    }

    fn windows(&self, family: Family) -> [(u32, Duration); 2] {
        const MIN: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3_600);
        match family {
            Family::M365d => [(self.m365d_per_minute, MIN), (self.m365d_per_hour, HOUR)],
            Family::Mde => [(self.mde_per_minute, MIN), (self.mde_per_hour, HOUR)],
            // Graph states no hourly limit.
            Family::Graph => [(self.graph_per_minute, MIN), (u32::MAX, HOUR)],
            Family::MachineActions => [
                (self.machine_actions_per_minute, MIN),
                (self.machine_actions_per_hour, HOUR),
            ],
        }
    }
}

/// The quota scopes: each API family has its own budget per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    M365d,
    Mde,
    Graph,
    /// Machine-action requests: a budget of their own beside the MDE API's.
    MachineActions,
}

impl Family {
    pub fn of(feed: Feed) -> Family {
        match feed {
            Feed::M365dIncidents => Family::M365d,
            Feed::MdeAlerts => Family::Mde,
            Feed::GraphIncidents | Feed::GraphAlerts => Family::Graph,
        }
    }

    fn index(self) -> usize {
        match self {
            Family::M365d => 0,
            Family::Mde => 1,
            Family::Graph => 2,
            Family::MachineActions => 3,
        }
    }
}

/// A refusal: which window is full, and when a request would next be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub limit: u32,
    pub window: Duration,
    pub retry_after_secs: u64,
}

impl Throttled {
    /// The window as .NET prints a `TimeSpan` ("00:01:00", "01:00:00").
    pub fn window_text(&self) -> String {
        let s = self.window.as_secs();
        format!("{:02}:{:02}:{:02}", s / 3_600, s / 60 % 60, s % 60)
    }
}

#[derive(Default)]
struct Log {
    minute: VecDeque<Instant>,
    hour: VecDeque<Instant>,
}

/// The sliding-window request logs of every tenant.
pub(crate) struct Quotas {
    limits: QuotaLimits,
    enabled: bool,
    tenants: Vec<Mutex<[Log; 4]>>,
}

impl Quotas {
    pub fn new(limits: QuotaLimits, enabled: bool, tenants: usize) -> Quotas {
        Quotas {
            limits,
            enabled,
            tenants: (0..tenants)
                .map(|_| Mutex::new(Default::default()))
                .collect(),
        }
    }

    /// Counts a request of `tenant` to `family` at `now`, or refuses it.
    pub fn admit(&self, tenant: usize, family: Family, now: Instant) -> Result<(), Throttled> {
        if !self.enabled {
            return Ok(());
        }
        let Some(cell) = self.tenants.get(tenant) else {
            return Ok(());
        };
        let mut logs = cell.lock();
        let log = &mut logs[family.index()];
        let windows = self.limits.windows(family);
        let mut refusal: Option<Throttled> = None;
        for ((limit, window), q) in windows.iter().zip([&mut log.minute, &mut log.hour]) {
            while q.front().is_some_and(|t| now.duration_since(*t) >= *window) {
                q.pop_front();
            }
            if *limit != u32::MAX && q.len() >= *limit as usize {
                let oldest = q.front().copied().unwrap_or(now);
                let wait = (oldest + *window).saturating_duration_since(now);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let t = Throttled {
                    limit: *limit,
                    window: *window,
                    retry_after_secs: secs.max(1),
                };
                // Report the window that blocks longest.
                if refusal.is_none_or(|r| r.retry_after_secs < t.retry_after_secs) {
                    refusal = Some(t);
                }
            }
        }
        if let Some(r) = refusal {
            return Err(r);
        }
        log.minute.push_back(now);
        if windows[1].0 != u32::MAX {
            log.hour.push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_window_refuses_then_recovers() {
        let q = Quotas::new(QuotaLimits::default(), true, 2);
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(q
                .admit(0, Family::M365d, t0 + Duration::from_millis(i))
                .is_ok());
        }
        let r = q
            .admit(0, Family::M365d, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!((r.limit, r.window_text().as_str()), (50, "00:01:00"));
        assert_eq!(r.retry_after_secs, 50);
        // Other tenants and families have their own budget.
        assert!(q.admit(1, Family::M365d, t0).is_ok());
        assert!(q.admit(0, Family::Mde, t0).is_ok());
        // Refusals do not count: once the window slides, requests pass.
        assert!(q
            .admit(0, Family::M365d, t0 + Duration::from_secs(60))
            .is_ok());
    }

    #[test]
    fn hour_window_blocks_after_the_minute_ones_pass() {
        let limits = QuotaLimits {
            mde_per_minute: 100,
            mde_per_hour: 150,
            ..QuotaLimits::default()
        };
        let q = Quotas::new(limits, true, 1);
        let t0 = Instant::now();
        for i in 0..150u64 {
            // 75 per minute: under the minute limit.
            q.admit(0, Family::Mde, t0 + Duration::from_millis(i * 800))
                .unwrap();
        }
        let r = q
            .admit(0, Family::Mde, t0 + Duration::from_secs(130))
            .unwrap_err();
        assert_eq!((r.limit, r.window_text().as_str()), (150, "01:00:00"));
        assert_eq!(r.retry_after_secs, 3_600 - 130);
    }

    #[test]
    fn graph_has_no_hour_limit_and_disabled_admits_all() {
        let q = Quotas::new(QuotaLimits::default().scaled(0.02), true, 1);
        let t0 = Instant::now();
        for i in 0..3 {
            q.admit(0, Family::Graph, t0 + Duration::from_secs(i * 61))
                .unwrap();
        }
        assert!(q
            .admit(0, Family::Graph, t0 + Duration::from_secs(183))
            .is_ok());
        assert!(q
            .admit(0, Family::Graph, t0 + Duration::from_secs(183))
            .is_ok());
        assert!(q
            .admit(0, Family::Graph, t0 + Duration::from_secs(183))
            .is_ok());
        assert!(q
            .admit(0, Family::Graph, t0 + Duration::from_secs(184))
            .is_err());
        let off = Quotas::new(QuotaLimits::default(), false, 1);
        for _ in 0..1_000 {
            off.admit(0, Family::M365d, t0).unwrap();
        }
    }
}
