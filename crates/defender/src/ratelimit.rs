//! Per-tenant request quotas: one set of token buckets per (tenant, API family), plus
//! the wait a `429 Retry-After` imposes.
//!
//! Hand-written on `tokio::time` rather than taken from `governor`: governor reads its
//! own clock (quanta / `std::time::Instant`), which ignores tokio's paused test clock, so
//! quota and `Retry-After` behaviour could only be tested with real sleeps. This is a
//! few dozen lines; the paused-time tests below pin its behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_config::Feed;
use tokio::time::Instant;

/// A quota family: the APIs whose requests count against one quota of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiFamily {
    /// M365 Defender (`api.security.microsoft.com`): 50/min and 1,500/h for the whole API.
    M365d,
    /// Defender for Endpoint (`api.securitycenter.microsoft.com`): 100/min and 1,500/h.
    Mde,
    /// Graph `/security`: 150/min per app per tenant.
    Graph,
}

impl ApiFamily {
    /// The family `feed`'s requests count against.
    pub fn of(feed: Feed) -> ApiFamily {
        match feed {
            Feed::M365dIncidents => ApiFamily::M365d,
            Feed::MdeAlerts => ApiFamily::Mde,
            Feed::GraphIncidents | Feed::GraphAlerts => ApiFamily::Graph,
        }
    }

    /// A dense index, for per-family arrays.
    pub fn index(self) -> usize {
        match self {
            ApiFamily::M365d => 0,
            ApiFamily::Mde => 1,
            ApiFamily::Graph => 2,
        }
    }

    /// A short stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFamily::M365d => "m365d",
            ApiFamily::Mde => "mde",
            ApiFamily::Graph => "graph",
        }
    }
}

/// At most `limit` requests in any interval of length `per`, allowing bursts of `burst`.
///
/// Implemented as a bucket of capacity `burst` refilled at `(limit - burst) / per`: in any
/// interval of length `per` at most `burst` tokens were in the bucket at its start and
/// `limit - burst` more drip in, so a sliding-window quota of `limit` is never exceeded
/// (a bucket of capacity `limit` refilled at `limit / per` could send almost twice that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests allowed per `per`.
    pub limit: u32,
    /// The quota's interval.
    pub per: Duration,
    /// Requests that may go back to back after an idle period; clamped to `1..limit`.
    pub burst: u32,
}

impl Quota {
    /// `limit` per minute, bursts of a fifth of it.
    pub fn per_minute(limit: u32) -> Quota {
        Quota {
            limit,
            per: Duration::from_secs(60),
            burst: (limit / 5).max(1),
        }
    }

    /// `limit` per hour, bursts of a thirtieth of it.
    pub fn per_hour(limit: u32) -> Quota {
        Quota {
            limit,
            per: Duration::from_secs(3600),
            burst: (limit / 30).max(1),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.clamp(1, self.limit.saturating_sub(1).max(1)))
    }

    /// Time for one token to drip in, rounded up so that rounding never lets one
    /// request too many into an interval.
    fn interval(&self) -> Duration {
        let capacity = self.burst.clamp(1, self.limit.saturating_sub(1).max(1));
        let drip = u128::from(self.limit.saturating_sub(capacity).max(1));
        let nanos = self.per.as_nanos().div_ceil(drip);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Quotas per API family; each tenant gets its own buckets. Defaults sit a little under
/// Microsoft's published limits, because the limits are per app and tenant and a second
/// consumer (a portal export, another tool) may share them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// M365 Defender: 50/min and 1,500/h published.
    pub m365d: Vec<Quota>,
    /// Defender for Endpoint: 100/min and 1,500/h published.
    pub mde: Vec<Quota>,
    /// Graph security: 150/min published.
    pub graph: Vec<Quota>,
    /// Graph's budget for the whole app, every tenant's requests together: 130,000
    /// requests per 10 s published (Microsoft Graph's global limit per app).
    pub graph_app: Vec<Quota>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            m365d: vec![Quota::per_minute(45), Quota::per_hour(1400)],
            mde: vec![Quota::per_minute(90), Quota::per_hour(1400)],
            graph: vec![Quota::per_minute(140)],
            graph_app: vec![Quota {
                limit: 120_000,
                per: Duration::from_secs(10),
                burst: 12_000,
            }],
        }
    }
}

impl RateLimits {
    /// The quotas of `family`.
    pub fn of(&self, family: ApiFamily) -> &[Quota] {
        match family {
            ApiFamily::M365d => &self.m365d,
            ApiFamily::Mde => &self.mde,
            ApiFamily::Graph => &self.graph,
        }
    }

    /// The budget `family` shares across every tenant of the app.
    pub fn app_of(&self, family: ApiFamily) -> &[Quota] {
        match family {
            ApiFamily::Graph => &self.graph_app,
            ApiFamily::M365d | ApiFamily::Mde => &[],
        }
    }

    /// No limits at all (tests against a simulator without quotas).
    pub fn unlimited() -> RateLimits {
        RateLimits {
            m365d: Vec::new(),
            mde: Vec::new(),
            graph: Vec::new(),
            graph_app: Vec::new(),
        }
    }
}

/// Reads the quota a Defender 429 states, `… maximum allowed 45 per 00:01:00` (a .NET
/// time span, `[d.]hh:mm:ss`), from an error message.
pub fn stated_quota(message: &str) -> Option<(u32, Duration)> {
    const MARK: &str = "maximum allowed ";
    let at = message.to_ascii_lowercase().find(MARK)? + MARK.len();
    let rest = message.get(at..)?;
    let (limit, rest) = rest.split_once(' ')?;
    let limit: u32 = limit.parse().ok().filter(|n| *n > 0)?;
    let span = rest.strip_prefix("per ")?;
    let span = span
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    let (days, clock) = match span.split_once('.') {
        Some((d, c)) if c.contains(':') => (d.parse::<u64>().ok()?, c),
        _ => (0, span),
    };
    let mut parts = clock.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || m >= 60 || sec >= 60 {
        return None;
    }
    let secs = ((days * 24 + h) * 60 + m) * 60 + sec;
    (secs > 0).then(|| (limit, Duration::from_secs(secs)))
}

/// The quota the relay keeps to once the API stated `limit` per `per`: a tenth under it
/// (at least one request), as the defaults sit under the published limits.
fn under(limit: u32, per: Duration) -> Quota {
    let keep = limit.saturating_sub((limit / 10).max(1)).max(1);
    Quota {
        limit: keep,
        per,
        burst: (keep / 5).max(1),
    }
}

/// How much room a quota family has left now, from 1 (idle) to 0 (at its limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct QuotaHeadroom {
    /// The app-wide budget's room (Graph), if the family has one.
    pub app: Option<f64>,
    /// The room of the tenant closest to its quota (0 while one is blocked by a
    /// `Retry-After`), if any tenant used the family yet.
    pub tightest_tenant: Option<f64>,
    /// Quotas lowered since start because a 429 stated a lower one.
    pub learned: u64,
}

#[derive(Debug)]
struct Bucket {
    quota: Quota,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        if now <= self.updated {
            // Still inside a Retry-After block (see `block`).
            return;
        }
        let elapsed = now.saturating_duration_since(self.updated);
        let gained = elapsed.as_secs_f64() / self.quota.interval().as_secs_f64();
        self.tokens = (self.tokens + gained).min(self.quota.capacity());
        self.updated = now;
    }

    /// How long until one whole token is in the bucket. Never a zero wait while a
    /// fraction is missing: a zero sleep would spin without the clock moving.
    fn wait_for_one(&self) -> Duration {
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            self.quota
                .interval()
                .mul_f64(missing)
                .max(Duration::from_millis(1))
        }
    }

    /// The share of the bucket filled at `now`, without refilling it.
    fn room(&self, now: Instant) -> f64 {
        let tokens = if now <= self.updated {
            self.tokens
        } else {
            let gained = now.saturating_duration_since(self.updated).as_secs_f64()
                / self.quota.interval().as_secs_f64();
            (self.tokens + gained).min(self.quota.capacity())
        };
        (tokens / self.quota.capacity()).clamp(0.0, 1.0)
    }
}

fn buckets_of(quotas: &[Quota], now: Instant) -> Vec<Bucket> {
    quotas
        .iter()
        .map(|q| Bucket {
            quota: *q,
            tokens: q.capacity(),
            updated: now,
        })
        .collect()
}

#[derive(Debug)]
struct TenantBuckets {
    buckets: Vec<Bucket>,
    blocked_until: Option<Instant>,
}

/// The buckets of one tenant, by family (see [`ApiFamily::index`]).
type FamilySlots = [Option<Arc<Mutex<TenantBuckets>>>; 3];

/// The token buckets of every (tenant, family) this process talks to, and the app-wide
/// budgets above them.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    /// Keyed by tenant id alone so a lookup borrows the id instead of allocating a key.
    tenants: Mutex<HashMap<String, FamilySlots>>,
    /// Per family (see [`ApiFamily::index`]): the buckets every tenant's requests share.
    app: [Mutex<Vec<Bucket>>; 3],
    /// Per family: quotas lowered by a 429's stated quota.
    learned: [AtomicU64; 3],
}

impl RateLimiter {
    /// A limiter applying `limits` to every tenant.
    pub fn new(limits: RateLimits) -> RateLimiter {
        let now = Instant::now();
        let app = [ApiFamily::M365d, ApiFamily::Mde, ApiFamily::Graph]
            .map(|f| Mutex::new(buckets_of(limits.app_of(f), now)));
        RateLimiter {
            limits,
            tenants: Mutex::new(HashMap::new()),
            app,
            learned: Default::default(),
        }
    }

    fn entry(&self, tenant_id: &str, family: ApiFamily) -> Arc<Mutex<TenantBuckets>> {
        // A poisoned lock only means another task panicked mid-update of plain numbers;
        // the state is still usable.
        let mut map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.get(tenant_id).and_then(|f| f[family.index()].as_ref()) {
            return Arc::clone(found);
        }
        let created = Arc::new(Mutex::new(TenantBuckets {
            buckets: buckets_of(self.limits.of(family), Instant::now()),
            blocked_until: None,
        }));
        let slots = map.entry(tenant_id.to_string()).or_default();
        slots[family.index()] = Some(Arc::clone(&created));
        created
    }

    /// (tenant, family) pairs with buckets: one per pair ever asked for, so bounded by the
    /// tenants configured (a reload that removes tenants leaves theirs, a few hundred
    /// bytes each, until restart).
    pub fn len(&self) -> usize {
        let map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|f| f.iter().flatten().count()).sum()
    }

    /// Whether no buckets exist yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `tenant_id` may send one more request to `family` (its own quota and
    /// the app's budget both have room), and takes the permit.
    pub async fn acquire(&self, tenant_id: &str, family: ApiFamily) {
        let entry = self.entry(tenant_id, family);
        let app = &self.app[family.index()];
        loop {
            let wait = {
                let mut state = entry.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                match state.blocked_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        state.blocked_until = None;
                        let wait = next_wait(&mut state.buckets, now);
                        if wait.is_zero() {
                            // Lock order: tenant, then app; nothing takes them the other way.
                            let mut shared = app.lock().unwrap_or_else(|e| e.into_inner());
                            let shared_wait = next_wait(&mut shared, now);
                            if shared_wait.is_zero() {
                                for bucket in state.buckets.iter_mut().chain(shared.iter_mut()) {
                                    bucket.tokens -= 1.0;
                                }
                                return;
                            }
                            shared_wait
                        } else {
                            wait
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A 429 stated the quota `limit` per `per` for `tenant_id`'s `family`: from now on
    /// the tenant keeps a tenth under it. Returns the quota kept when this lowered one
    /// (or added one for a period the limiter did not know), `None` when the limiter
    /// already kept under it.
    pub fn learn(
        &self,
        tenant_id: &str,
        family: ApiFamily,
        limit: u32,
        per: Duration,
    ) -> Option<Quota> {
        let kept = under(limit, per);
        let entry = self.entry(tenant_id, family);
        let mut state = entry.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.buckets.iter_mut().find(|b| b.quota.per == per) {
            Some(b) if b.quota.limit <= kept.limit => return None,
            Some(b) => {
                b.refill(now);
                b.quota = kept;
                b.tokens = b.tokens.min(kept.capacity());
            }
            None => state.buckets.push(Bucket {
                quota: kept,
                tokens: 0.0,
                updated: now,
            }),
        }
        self.learned[family.index()].fetch_add(1, Ordering::Relaxed);
        Some(kept)
    }

    /// How much room each family has left now, by [`ApiFamily::index`]. Walks every
    /// tenant: for a metrics scrape, not for the request path.
    pub fn headroom(&self) -> [QuotaHeadroom; 3] {
        let now = Instant::now();
        let mut out = [QuotaHeadroom::default(); 3];
        for (i, h) in out.iter_mut().enumerate() {
            let app = self.app[i].lock().unwrap_or_else(|e| e.into_inner());
            h.app = min_room(&app, now);
            h.learned = self.learned[i].load(Ordering::Relaxed);
        }
        let entries: Vec<(usize, Arc<Mutex<TenantBuckets>>)> = {
            let map = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
            map.values()
                .flat_map(|slots| {
                    slots
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| s.as_ref().map(|e| (i, Arc::clone(e))))
                })
                .collect()
        };
        for (i, entry) in entries {
            let state = entry.lock().unwrap_or_else(|e| e.into_inner());
            let room = if state.blocked_until.is_some_and(|u| u > now) {
                Some(0.0)
            } else {
                min_room(&state.buckets, now)
            };
            if let Some(room) = room {
                let t = &mut out[i].tightest_tenant;
                *t = Some(t.map_or(room, |r: f64| r.min(room)));
            }
        }
        out
    }

    /// The API answered 429: no request of `tenant_id` to `family` goes out for `wait`,
    /// and the buckets restart empty so the first requests after it do not burst.
    pub fn block(&self, tenant_id: &str, family: ApiFamily, wait: Duration) {
        let entry = self.entry(tenant_id, family);
        let mut state = entry.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // An absurd Retry-After must not overflow the clock; a day is blocked enough.
        let asked = now + wait.min(Duration::from_secs(24 * 3600));
        let until = state.blocked_until.map_or(asked, |u| u.max(asked));
        state.blocked_until = Some(until);
        for bucket in &mut state.buckets {
            bucket.refill(now);
            bucket.tokens = bucket.tokens.min(0.0);
            // Nothing drips in while blocked.
            bucket.updated = until;
        }
    }

    /// How long `tenant_id` is blocked from `family` by a `Retry-After`, if at all.
    pub fn blocked_for(&self, tenant_id: &str, family: ApiFamily) -> Option<Duration> {
        let entry = self.entry(tenant_id, family);
        let state = entry.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        state.blocked_until.filter(|u| *u > now).map(|u| u - now)
    }
}

/// Refills `buckets` to `now`; the wait until each has a whole token (zero: go).
fn next_wait(buckets: &mut [Bucket], now: Instant) -> Duration {
    for bucket in buckets.iter_mut() {
        bucket.refill(now);
    }
    buckets
        .iter()
        .map(Bucket::wait_for_one)
        .max()
        .unwrap_or(Duration::ZERO)
}

fn min_room(buckets: &[Bucket], now: Instant) -> Option<f64> {
    buckets.iter().map(|b| b.room(now)).reduce(f64::min)
}

/// The 429s one feed of one tenant received and the waits they imposed, counted as each
/// answer arrives. Most 429s are retried inside [`WindowPager::next_page`] and never
/// surface as an error, so this is the only place they can be seen.
///
/// The poller owns one per (tenant, feed) for the life of the process and hands it to
/// every pager it opens ([`WindowPager::count_throttling`]); a metrics scrape reads it
/// at any time. Each update is two relaxed atomic adds.
///
/// [`WindowPager::next_page`]: crate::WindowPager::next_page
/// [`WindowPager::count_throttling`]: crate::WindowPager::count_throttling
#[derive(Debug, Default)]
pub struct ThrottleCounter {
    responses: AtomicU64,
    wait_micros: AtomicU64,
}

impl ThrottleCounter {
    /// A counter at zero.
    pub fn new() -> ThrottleCounter {
        ThrottleCounter::default()
    }

    /// 429 answers received.
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
    }

    /// The waits those answers imposed, summed: each one's `Retry-After`, or the client's
    /// backoff when it had none. Summed per answer, so two feeds of one API family
    /// throttled at once count their overlapping waits twice.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.wait_micros.load(Ordering::Relaxed))
    }

    /// One 429 that asked for `wait`.
    pub(crate) fn record(&self, wait: Duration) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        // Saturating: an absurd Retry-After must not wrap the total around to small.
        let _ = self
            .wait_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_add(micros))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counter_counts_answers_and_sums_waits_without_wrapping() {
        let c = ThrottleCounter::new();
        assert_eq!((c.responses(), c.waited()), (0, Duration::ZERO));
        c.record(Duration::from_secs(2));
        c.record(Duration::from_millis(1500));
        assert_eq!(
            (c.responses(), c.waited()),
            (2, Duration::from_millis(3500))
        );
        c.record(Duration::MAX);
        c.record(Duration::from_secs(1));
        assert_eq!(c.responses(), 4);
        assert_eq!(c.waited(), Duration::from_micros(u64::MAX));
    }

    fn limiter(quotas: Vec<Quota>) -> RateLimiter {
        RateLimiter::new(RateLimits {
            m365d: quotas,
            ..RateLimits::unlimited()
        })
    }

    /// Sends `n` requests as fast as the limiter allows; returns their send times
    /// relative to the start.
    async fn send_times(l: &RateLimiter, tenant: &str, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            l.acquire(tenant, ApiFamily::M365d).await;
            times.push(start.elapsed());
        }
        times
    }

    fn max_in_any_window(times: &[Duration], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < times[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn minute_quota_is_never_exceeded_in_any_sliding_minute() {
        let l = limiter(vec![Quota::per_minute(45)]);
        let times = send_times(&l, "t1", 200).await;
        // Timer granularity (1 ms) can only make the limiter slower, never faster.
        let busiest = max_in_any_window(&times, Duration::from_secs(60));
        assert!((43..=45).contains(&busiest), "{busiest}");
        // The first burst goes out at once; the rest drips at (45 - 9) per minute.
        assert!(times[8] < Duration::from_millis(1), "{:?}", &times[..10]);
        assert!(
            times[9] >= Duration::from_millis(1600),
            "{:?}",
            &times[..10]
        );
        let total = *times.last().unwrap();
        let expected = Duration::from_secs(60) * (200 - 9) / 36;
        assert!(
            total >= expected - Duration::from_secs(2)
                && total <= expected + Duration::from_secs(2),
            "200 requests took {total:?}, expected about {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn minute_and_hour_quotas_apply_together() {
        let l = limiter(vec![Quota::per_minute(45), Quota::per_hour(1400)]);
        let times = send_times(&l, "t1", 3000).await;
        assert!(max_in_any_window(&times, Duration::from_secs(60)) <= 45);
        assert!(max_in_any_window(&times, Duration::from_secs(3600)) <= 1400);
        // Sustained rate is the hour's: (1400 - 46) per hour.
        let total = *times.last().unwrap();
        assert!(total > Duration::from_secs(2 * 3600), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tenants_and_families_have_their_own_buckets() {
        let l = RateLimiter::new(RateLimits {
            m365d: vec![Quota {
                limit: 3,
                per: Duration::from_secs(60),
                burst: 2,
            }],
            mde: vec![Quota {
                limit: 3,
                per: Duration::from_secs(60),
                burst: 2,
            }],
            ..RateLimits::unlimited()
        });
        let start = Instant::now();
        for tenant in ["a", "b", "c"] {
            l.acquire(tenant, ApiFamily::M365d).await;
            l.acquire(tenant, ApiFamily::M365d).await;
            l.acquire(tenant, ApiFamily::Mde).await;
            l.acquire(tenant, ApiFamily::Mde).await;
            for _ in 0..100 {
                l.acquire(tenant, ApiFamily::Graph).await;
            }
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.acquire("a", ApiFamily::M365d).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_blocks_the_tenant_family_then_resumes_without_burst() {
        let l = limiter(vec![Quota {
            limit: 20,
            per: Duration::from_secs(60),
            burst: 10,
        }]);
        let start = Instant::now();
        l.acquire("t", ApiFamily::M365d).await;
        l.block("t", ApiFamily::M365d, Duration::from_secs(30));
        assert_eq!(
            l.blocked_for("t", ApiFamily::M365d),
            Some(Duration::from_secs(30))
        );
        // Another tenant is not affected.
        l.acquire("u", ApiFamily::M365d).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A shorter Retry-After does not shorten the block.
        l.block("t", ApiFamily::M365d, Duration::from_secs(5));
        l.acquire("t", ApiFamily::M365d).await;
        let first = start.elapsed();
        assert!(first >= Duration::from_secs(30), "{first:?}");
        assert!(
            first <= Duration::from_secs(30) + Duration::from_secs(6),
            "{first:?}"
        );
        l.acquire("t", ApiFamily::M365d).await;
        assert!(
            start.elapsed() - first >= Duration::from_secs(5),
            "no burst after a 429"
        );
        assert_eq!(l.blocked_for("t", ApiFamily::M365d), None);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_retry_after_is_capped_not_a_panic() {
        let l = limiter(Vec::new());
        l.block("t", ApiFamily::M365d, Duration::from_secs(u64::MAX));
        let blocked = l.blocked_for("t", ApiFamily::M365d).unwrap();
        assert_eq!(blocked, Duration::from_secs(24 * 3600));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_quota() {
        let l = Arc::new(limiter(vec![Quota {
            limit: 10,
            per: Duration::from_secs(10),
            burst: 5,
        }]));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..5 {
                    l.acquire("t", ApiFamily::M365d).await;
                    times.push(start.elapsed());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all.len(), 40);
        assert!(
            max_in_any_window(&all, Duration::from_secs(10)) <= 10,
            "{all:?}"
        );
    }

    #[test]
    fn stated_quotas_are_read_from_defender_429_messages() {
        let m = "429: API calls quota exceeded! maximum allowed 45 per 00:01:00";
        assert_eq!(stated_quota(m), Some((45, Duration::from_secs(60))));
        assert_eq!(
            stated_quota("Maximum allowed 1500 per 01:00:00."),
            Some((1500, Duration::from_secs(3600)))
        );
        assert_eq!(
            stated_quota("maximum allowed 10000 per 1.00:00:00"),
            Some((10000, Duration::from_secs(86_400)))
        );
        for bad in [
            "TooManyRequests: Too many requests.",
            "maximum allowed 0 per 00:01:00",
            "maximum allowed 45 per 00:61:00",
            "maximum allowed 45 per 00:00:00",
            "maximum allowed x per 00:01:00",
            "maximum allowed 45 per soon",
            "maximum allowed 45",
        ] {
            assert_eq!(stated_quota(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stated_quota_lowers_the_tenants_own_and_only_once() {
        let l = limiter(vec![Quota::per_minute(45)]);
        let kept = l
            .learn("t1", ApiFamily::M365d, 20, Duration::from_secs(60))
            .unwrap();
        assert_eq!(kept.limit, 18);
        // Saying it again, or a higher one, changes nothing.
        assert!(l
            .learn("t1", ApiFamily::M365d, 20, Duration::from_secs(60))
            .is_none());
        assert!(l
            .learn("t1", ApiFamily::M365d, 40, Duration::from_secs(60))
            .is_none());
        let times = send_times(&l, "t1", 60).await;
        assert!(max_in_any_window(&times, Duration::from_secs(60)) <= 18);
        // Another tenant keeps the configured quota.
        let other = send_times(&l, "t2", 60).await;
        assert!(max_in_any_window(&other, Duration::from_secs(60)) > 18);
        // A period the limiter did not know is added.
        let kept = l
            .learn("t1", ApiFamily::M365d, 100, Duration::from_secs(3600))
            .unwrap();
        assert_eq!((kept.limit, kept.per), (90, Duration::from_secs(3600)));
        assert_eq!(l.headroom()[ApiFamily::M365d.index()].learned, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_app_budget_is_shared_by_every_tenant() {
        let l = RateLimiter::new(RateLimits {
            graph_app: vec![Quota {
                limit: 20,
                per: Duration::from_secs(10),
                burst: 5,
            }],
            ..RateLimits::unlimited()
        });
        let start = Instant::now();
        let mut all = Vec::new();
        for _ in 0..10 {
            for t in 0..10 {
                l.acquire(&format!("t{t}"), ApiFamily::Graph).await;
                all.push(start.elapsed());
            }
        }
        assert!(
            max_in_any_window(&all, Duration::from_secs(10)) <= 20,
            "{all:?}"
        );
        // Other families have no app budget.
        for _ in 0..100 {
            l.acquire("t0", ApiFamily::Mde).await;
        }
        let h = l.headroom();
        assert!(h[ApiFamily::Graph.index()].app.is_some_and(|r| r < 0.5));
        assert_eq!(h[ApiFamily::Mde.index()].app, None);
    }

    #[tokio::test(start_paused = true)]
    async fn headroom_follows_use_and_blocks() {
        let l = limiter(vec![Quota::per_minute(50)]);
        assert_eq!(l.headroom()[0].tightest_tenant, None);
        l.acquire("t1", ApiFamily::M365d).await;
        l.acquire("t2", ApiFamily::M365d).await;
        for _ in 0..5 {
            l.acquire("t2", ApiFamily::M365d).await;
        }
        let room = l.headroom()[0].tightest_tenant.unwrap();
        assert!((0.0..0.5).contains(&room), "{room}");
        l.block("t1", ApiFamily::M365d, Duration::from_secs(30));
        assert_eq!(l.headroom()[0].tightest_tenant, Some(0.0));
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(l.headroom()[0].tightest_tenant, Some(1.0));
    }

    #[test]
    fn defaults_stay_under_published_limits() {
        let d = RateLimits::default();
        assert!(!d.graph_app.is_empty());
        assert!(d
            .graph_app
            .iter()
            .all(|q| q.limit < 130_000 && q.per == Duration::from_secs(10)));
        for (quotas, minute, hour) in [
            (&d.m365d, 50, Some(1500)),
            (&d.mde, 100, Some(1500)),
            (&d.graph, 150, None),
        ] {
            let m = quotas
                .iter()
                .find(|q| q.per == Duration::from_secs(60))
                .unwrap();
            assert!(m.limit < minute);
            if let Some(hour) = hour {
                let h = quotas
                    .iter()
                    .find(|q| q.per == Duration::from_secs(3600))
                    .unwrap();
                assert!(h.limit < hour);
            }
        }
    }
}
