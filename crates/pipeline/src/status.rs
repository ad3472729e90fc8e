//! Live, in-memory counters of the running relay, for the demo's status line, `/metrics`
//! and tests. Taking a snapshot locks each small cell briefly and never touches the state
//! store or the network.
//!
//! Besides the cells below, a snapshot reads two counters kept where they happen: the
//! 429s of each (tenant, feed) in a [`ThrottleCounter`] its pagers update as answers
//! arrive, and the token requests of each tenant in the [`TokenManager`]. Everything resets
//! when the process restarts (Prometheus counters are built for that).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use relay_auth::{RefreshCounts, TokenManager};
use relay_config::{Feed, Stream};
use relay_defender::ThrottleCounter;
use relay_state::{AuthState, OutboxDepth};
use serde::Serialize;

/// A cheap, cloneable handle on the relay's live status. Obtained from
/// [`Relay::status`](crate::Relay::status) before [`Relay::run`](crate::Relay::run); stays
/// valid after the relay stopped (it then shows the final numbers).
#[derive(Clone, Debug)]
pub struct StatusHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    started_at: DateTime<Utc>,
    /// For the token-request counters of each tenant.
    tokens: TokenManager,
    /// Replaced as a whole by a config reload; a snapshot reads one version of each list.
    tenants: RwLock<Vec<Arc<TenantCell>>>,
    feeds: RwLock<Vec<Arc<FeedCell>>>,
    sinks: Vec<Arc<SinkCell>>,
    /// Counters of the feeds of tenants a reload removed, so the run's totals
    /// ([`RunReport`](crate::RunReport)) still count their work.
    retired: Mutex<Retired>,
    /// The shared parts whose counters the engine figures come from; set once built.
    engine: RwLock<Option<EngineSources>>,
    /// The playbooks' audit counters, when playbooks run.
    actions: RwLock<Option<Arc<relay_playbooks::ExecutorStats>>>,
}

/// Where [`EngineStats`] are read from.
#[derive(Debug, Clone)]
pub(crate) struct EngineSources {
    pub(crate) admission: Arc<relay_defender::Admission>,
    pub(crate) client: relay_defender::DefenderClient,
    pub(crate) state: Arc<relay_state::StateStore>,
}

/// How the engine's shared parts stand: the admission gate of API requests and the state
/// store's commits. Zero before the relay is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// API requests holding a slot now (on the wire, or their page not yet committed).
    pub requests_in_flight: u64,
    /// The adaptive limit of requests in flight.
    pub request_limit: u64,
    /// Requests waiting for a slot now.
    pub requests_waiting: u64,
    /// Times the limit was cut (timeouts, 5xx, slow answers).
    pub request_limit_cuts: u64,
    /// State-store transactions committed.
    pub state_commits: u64,
    /// Of those, synced to disk before returning (refresh tokens).
    pub state_synced_commits: u64,
    /// Syncs of outbox segment files.
    pub state_segment_syncs: u64,
    /// Writes carried by group commits.
    pub state_grouped_writes: u64,
    /// Room left in the API quotas, per family in [`relay_defender::ApiFamily::index`]
    /// order (M365 Defender, Defender for Endpoint, Graph).
    pub quota: [relay_defender::QuotaHeadroom; 3],
}

/// The summed counters of feeds no longer in the status.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Retired {
    pub(crate) polls: u64,
    pub(crate) poll_errors: u64,
    pub(crate) events: u64,
}

impl StatusHandle {
    pub(crate) fn new(
        tokens: TokenManager,
        tenants: Vec<Arc<TenantCell>>,
        feeds: Vec<Arc<FeedCell>>,
        sinks: Vec<Arc<SinkCell>>,
    ) -> Self {
        StatusHandle {
            inner: Arc::new(Shared {
                started_at: Utc::now(),
                tokens,
                tenants: RwLock::new(tenants),
                feeds: RwLock::new(feeds),
                sinks,
                retired: Mutex::new(Retired::default()),
                engine: RwLock::new(None),
                actions: RwLock::new(None),
            }),
        }
    }

    pub(crate) fn attach_engine(&self, sources: EngineSources) {
        *self.inner.engine.write() = Some(sources);
    }

    pub(crate) fn attach_actions(&self, stats: Arc<relay_playbooks::ExecutorStats>) {
        *self.inner.actions.write() = Some(stats);
    }

    fn engine(&self) -> EngineStats {
        let Some(src) = self.inner.engine.read().clone() else {
            return EngineStats::default();
        };
        let a = src.admission.stats();
        let st = src.state.stats();
        EngineStats {
            requests_in_flight: a.in_flight as u64,
            request_limit: a.limit as u64,
            requests_waiting: a.waiting as u64,
            request_limit_cuts: a.decreases,
            state_commits: st.commits,
            state_synced_commits: st.durable_commits,
            state_segment_syncs: st.segment_syncs,
            state_grouped_writes: st.grouped_writes,
            quota: src.client.limiter().headroom(),
        }
    }

    /// Everything as of now.
    pub fn snapshot(&self) -> RelayStatus {
        let now = Utc::now();
        RelayStatus {
            taken_at: now,
            started_at: self.inner.started_at,
            tenants: self
                .inner
                .tenants
                .read()
                .iter()
                .map(|t| t.snapshot(&self.inner.tokens))
                .collect(),
            feeds: self
                .inner
                .feeds
                .read()
                .iter()
                .map(|f| f.snapshot(now))
                .collect(),
            sinks: self.inner.sinks.iter().map(|s| s.snapshot()).collect(),
            engine: self.engine(),
            actions: self
                .inner
                .actions
                .read()
                .as_ref()
                .map(|s| {
                    s.snapshot()
                        .into_iter()
                        .map(|(o, n)| (o.as_str().to_string(), n))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// After a reload: the new tenant set. Feed cells that are not kept have their counters
    /// added to the retired totals.
    pub(crate) fn replace_tenants(&self, tenants: Vec<Arc<TenantCell>>, feeds: Vec<Arc<FeedCell>>) {
        let mut current_feeds = self.inner.feeds.write();
        {
            let mut retired = self.inner.retired.lock();
            for old in current_feeds.iter() {
                if !feeds.iter().any(|f| Arc::ptr_eq(f, old)) {
                    let i = old.inner.lock();
                    retired.polls += i.polls;
                    retired.poll_errors += i.errors.total();
                    retired.events += i.events;
                }
            }
        }
        *current_feeds = feeds;
        *self.inner.tenants.write() = tenants;
    }

    /// The counters of feeds removed by reloads.
    pub(crate) fn retired(&self) -> Retired {
        *self.inner.retired.lock()
    }
}

/// One consistent-enough picture of the relay: each cell is read atomically, the cells
/// one after another.
#[derive(Debug, Clone, Serialize)]
pub struct RelayStatus {
    /// When the snapshot was taken.
    pub taken_at: DateTime<Utc>,
    /// When the relay was built.
    pub started_at: DateTime<Utc>,
    /// Per running tenant, in configuration order (after a reload: the new set; a removed
    /// tenant's rows are gone, so sums over `feeds` no longer include its work).
    pub tenants: Vec<TenantStats>,
    /// Per (tenant, feed), in configuration order.
    pub feeds: Vec<FeedStats>,
    /// Per sink, by name.
    pub sinks: Vec<SinkStats>,
    /// The admission gate and the state store.
    pub engine: EngineStats,
    /// Playbook audit events since start, by outcome (`would_act`, `sent`, ...); empty
    /// without playbooks.
    pub actions: BTreeMap<String, u64>,
}

impl RelayStatus {
    /// Polls completed or failed, over every feed.
    pub fn polls(&self) -> u64 {
        self.feeds.iter().map(|f| f.polls).sum()
    }

    /// New events committed to the outboxes, over every feed.
    pub fn events(&self) -> u64 {
        self.feeds.iter().map(|f| f.events).sum()
    }

    /// Events acknowledged by sinks, over every sink.
    pub fn delivered(&self) -> u64 {
        self.sinks.iter().map(|s| s.sent).sum()
    }

    /// Failed polls, over every feed.
    pub fn poll_errors(&self) -> u64 {
        self.feeds.iter().map(|f| f.errors.total()).sum()
    }

    /// Rows waiting in every outbox, as last seen by the sink workers.
    pub fn outbox_rows(&self) -> u64 {
        self.sinks.iter().map(|s| s.outbox.rows).sum()
    }

    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantStats> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The sink called `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkStats> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

/// One tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantStats {
    /// The tenant's configured name.
    pub name: String,
    /// The tenant's Entra id.
    pub tenant_id: String,
    /// The auth state last recorded in the state store (`None` before the first poll).
    pub auth: Option<AuthState>,
    /// Token requests since the start, per audience asked for, in audience order.
    pub token_refreshes: Vec<RefreshCounts>,
}

/// Failed polls of one feed, by what the operator should make of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Throttling, timeouts, 5xx, token endpoint down: retried at the next interval.
    pub transient: u64,
    /// The tenant's grant or consent is gone: an administrator must re-consent.
    pub needs_consent: u64,
    /// Refused for a reason retrying will not fix (403, bad request, bad credential).
    pub permanent: u64,
    /// The state store failed (disk full, file locked).
    pub state: u64,
}

impl ErrorCounts {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.transient + self.needs_consent + self.permanent + self.state
    }
}

/// One (tenant, feed).
#[derive(Debug, Clone, Serialize)]
pub struct FeedStats {
    /// The tenant's configured name.
    pub tenant: String,
    /// The feed polled.
    pub feed: Feed,
    /// Its stream.
    pub stream: Stream,
    /// Polls that ran (succeeded or failed); skipped polls are not counted.
    pub polls: u64,
    /// New versions committed to the outboxes.
    pub events: u64,
    /// Versions the API returned again that were already delivered (the overlap re-scan
    /// and page ties).
    pub duplicates_skipped: u64,
    /// Failed polls by kind.
    pub errors: ErrorCounts,
    /// When the last poll ended.
    pub last_poll: Option<DateTime<Utc>>,
    /// When a poll last succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// The last failure's message (kept after later successes).
    pub last_error: Option<String>,
    /// The committed checkpoint: every version older than it (less the overlap) is in
    /// the outboxes.
    pub checkpoint: Option<DateTime<Utc>>,
    /// `now − checkpoint`: how far behind the feed is (includes the availability lag).
    pub lag: Option<Duration>,
    /// Polls skipped because an outbox this tenant routes to is full.
    pub skipped_outbox_full: u64,
    /// The sink whose full outbox is pausing this feed right now.
    pub paused_by_sink: Option<String>,
    /// 429 answers from the API, counted as they arrive: those retried within a poll
    /// (which end in no error) included.
    pub throttled: u64,
    /// The waits those 429s imposed, summed (`Retry-After`, or the client's backoff).
    pub throttled_wait: Duration,
}

/// Where a sink worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Not started yet.
    Starting,
    /// Outbox empty, waiting for events.
    Idle,
    /// Sending.
    Delivering,
    /// The last send failed transiently; backing off.
    Retrying,
    /// The last send failed permanently; delivery is stopped until the long retry.
    Stopped,
    /// The worker ended (shutdown).
    Finished,
}

/// One sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStats {
    /// The sink's configured name.
    pub name: String,
    /// Its type (`file`, ...).
    pub kind: String,
    /// Where the worker stands.
    pub state: SinkState,
    /// Events acknowledged by the destination.
    pub sent: u64,
    /// Failed `send` calls.
    pub failures: u64,
    /// Outbox rows that could not be decoded and were skipped (never expected).
    pub undecodable: u64,
    /// When events were last acknowledged.
    pub last_delivery: Option<DateTime<Utc>>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The outbox as last read by the worker.
    pub outbox: OutboxDepth,
    /// How long the destination took to acknowledge each delivered batch.
    pub ack_latency: LatencyHistogram,
    /// Batches handed to the sink and not yet confirmed, failed ones waiting to be sent
    /// again included.
    pub in_flight: usize,
    /// How many may be in flight now: the worker's adaptive window, 1 to the sink's
    /// `max_in_flight`.
    pub in_flight_limit: usize,
}

/// Upper bounds, in seconds, of the [`SinkStats::ack_latency`] buckets: from a file sink's
/// fsync (milliseconds) to a Splunk HEC batch waiting for indexer acknowledgement (polled
/// every 10 s, given up after 300 s by default) or a Kafka batch with `acks=all` on a
/// struggling cluster.
pub const ACK_LATENCY_BOUNDS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Durations in fixed buckets, as a Prometheus histogram keeps them: exact count and sum,
/// the distribution to within a bucket. Observing is a search among a dozen bounds and
/// three additions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyHistogram {
    /// Upper bounds in seconds, ascending; a last, unbounded bucket follows them.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Vec<u64>,
    /// Sum of every observation, seconds.
    sum_seconds: f64,
}

impl LatencyHistogram {
    /// An empty histogram with buckets up to each of `bounds` (seconds, ascending) and one
    /// above them all.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        LatencyHistogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_seconds: 0.0,
        }
    }

    /// An empty histogram with the [`ACK_LATENCY_BOUNDS`].
    pub fn ack_latency() -> Self {
        LatencyHistogram::new(&ACK_LATENCY_BOUNDS)
    }

    /// Records one duration, in the first bucket whose bound is not below it.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        self.counts[i] += 1;
        self.sum_seconds += secs;
    }

    /// Observations in total.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations, seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    /// `(upper bound, observations at or below it)` per bucket in ascending order, the last
    /// one `(+Inf, count)`: Prometheus' `_bucket{le}` series.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        bounds.zip(&self.counts).scan(0u64, |total, (bound, n)| {
            *total += n;
            Some((bound, *total))
        })
    }
}

/// Mutable side of one tenant's stats.
#[derive(Debug)]
pub(crate) struct TenantCell {
    pub(crate) name: String,
    pub(crate) tenant_id: String,
    pub(crate) inner: Mutex<TenantInner>,
}

#[derive(Debug, Default)]
pub(crate) struct TenantInner {
    pub(crate) auth: Option<AuthState>,
}

impl TenantCell {
    pub(crate) fn new(name: &str, tenant_id: &str) -> Self {
        TenantCell {
            name: name.to_owned(),
            tenant_id: tenant_id.to_owned(),
            inner: Mutex::new(TenantInner::default()),
        }
    }

    fn snapshot(&self, tokens: &TokenManager) -> TenantStats {
        TenantStats {
            name: self.name.clone(),
            tenant_id: self.tenant_id.clone(),
            auth: self.inner.lock().auth.clone(),
            token_refreshes: tokens.refresh_counts(&self.name),
        }
    }
}

/// Mutable side of one feed's stats; written only by its poll task.
#[derive(Debug)]
pub(crate) struct FeedCell {
    pub(crate) tenant: String,
    pub(crate) feed: Feed,
    pub(crate) inner: Mutex<FeedInner>,
    /// Handed to every pager of this feed, which counts 429s in it as they arrive.
    pub(crate) throttling: Arc<ThrottleCounter>,
}

#[derive(Debug, Default)]
pub(crate) struct FeedInner {
    pub(crate) polls: u64,
    pub(crate) events: u64,
    pub(crate) duplicates_skipped: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) last_poll: Option<DateTime<Utc>>,
    pub(crate) last_success: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
    pub(crate) checkpoint: Option<DateTime<Utc>>,
    pub(crate) skipped_outbox_full: u64,
    pub(crate) paused_by_sink: Option<String>,
}

impl FeedCell {
    pub(crate) fn new(tenant: &str, feed: Feed) -> Self {
        FeedCell {
            tenant: tenant.to_owned(),
            feed,
            inner: Mutex::new(FeedInner::default()),
            throttling: Arc::new(ThrottleCounter::new()),
        }
    }

    fn snapshot(&self, now: DateTime<Utc>) -> FeedStats {
        let i = self.inner.lock();
        FeedStats {
            tenant: self.tenant.clone(),
            feed: self.feed,
            stream: self.feed.stream(),
            polls: i.polls,
            events: i.events,
            duplicates_skipped: i.duplicates_skipped,
            errors: i.errors,
            last_poll: i.last_poll,
            last_success: i.last_success,
            last_error: i.last_error.clone(),
            checkpoint: i.checkpoint,
            lag: i
                .checkpoint
                .map(|c| (now - c).to_std().unwrap_or(Duration::ZERO)),
            skipped_outbox_full: i.skipped_outbox_full,
            paused_by_sink: i.paused_by_sink.clone(),
            throttled: self.throttling.responses(),
            throttled_wait: self.throttling.waited(),
        }
    }
}

/// One sink's shared cell: the wake-up signal pollers poke after a commit, the "outbox
/// full" flag pollers check before a poll, and the worker's stats.
#[derive(Debug)]
pub(crate) struct SinkCell {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    /// Poked after every commit that appended to this sink's outbox.
    pub(crate) wake: tokio::sync::Notify,
    /// The outbox is at or over its bound: tenants routed here skip their polls.
    pub(crate) over_limit: AtomicBool,
    pub(crate) sent: AtomicU64,
    /// When pollers last logged that this outbox is full.
    pause_logged: Mutex<Option<tokio::time::Instant>>,
    pub(crate) inner: Mutex<SinkInner>,
}

#[derive(Debug)]
pub(crate) struct SinkInner {
    pub(crate) state: SinkState,
    pub(crate) failures: u64,
    pub(crate) undecodable: u64,
    pub(crate) last_delivery: Option<DateTime<Utc>>,
    pub(crate) last_error: Option<String>,
    pub(crate) outbox: OutboxDepth,
    pub(crate) ack_latency: LatencyHistogram,
    pub(crate) in_flight: usize,
    pub(crate) in_flight_limit: usize,
}

impl SinkCell {
    pub(crate) fn new(name: &str, kind: &'static str, depth: OutboxDepth) -> Self {
        SinkCell {
            name: name.to_owned(),
            kind,
            wake: tokio::sync::Notify::new(),
            over_limit: AtomicBool::new(depth.over_limit),
            sent: AtomicU64::new(0),
            pause_logged: Mutex::new(None),
            inner: Mutex::new(SinkInner {
                state: SinkState::Starting,
                failures: 0,
                undecodable: 0,
                last_delivery: None,
                last_error: None,
                outbox: depth,
                ack_latency: LatencyHistogram::ack_latency(),
                in_flight: 0,
                in_flight_limit: 1,
            }),
        }
    }

    pub(crate) fn is_over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    pub(crate) fn set_depth(&self, depth: OutboxDepth) {
        let was = self.over_limit.swap(depth.over_limit, Ordering::Relaxed);
        if was && !depth.over_limit {
            *self.pause_logged.lock() = None;
            tracing::info!(
                rows = depth.rows,
                "outbox of sink {} has room again; polling of its tenants resumes",
                self.name
            );
        }
        self.inner.lock().outbox = depth;
    }

    /// Whether the caller should log that this outbox is full: true once per `every`.
    pub(crate) fn pause_log_due(&self, now: tokio::time::Instant, every: Duration) -> bool {
        let mut logged = self.pause_logged.lock();
        let due = logged.is_none_or(|at| now.duration_since(at) >= every);
        if due {
            *logged = Some(now);
        }
        due
    }

    pub(crate) fn set_state(&self, state: SinkState) {
        self.inner.lock().state = state;
    }

    /// Batches in flight and the window they may fill.
    pub(crate) fn set_in_flight(&self, in_flight: usize, limit: usize) {
        let mut i = self.inner.lock();
        i.in_flight = in_flight;
        i.in_flight_limit = limit;
    }

    fn snapshot(&self) -> SinkStats {
        let i = self.inner.lock();
        SinkStats {
            name: self.name.clone(),
            kind: self.kind.to_owned(),
            state: i.state,
            sent: self.sent.load(Ordering::Relaxed),
            failures: i.failures,
            undecodable: i.undecodable,
            last_delivery: i.last_delivery,
            last_error: i.last_error.clone(),
            outbox: i.outbox,
            ack_latency: i.ack_latency.clone(),
            in_flight: i.in_flight,
            in_flight_limit: i.in_flight_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_inclusive_and_cumulative() {
        const BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let mut h = LatencyHistogram::new(&BOUNDS);
        assert_eq!(h.count(), 0);
        assert_eq!(
            h.cumulative().collect::<Vec<_>>(),
            [(0.1, 0), (1.0, 0), (10.0, 0), (f64::INFINITY, 0)]
        );
        for ms in [0, 100, 101, 1_000, 2_500, 10_000, 10_001, 3_600_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(
            h.cumulative().collect::<Vec<_>>(),
            [(0.1, 2), (1.0, 4), (10.0, 6), (f64::INFINITY, 8)]
        );
        assert_eq!(h.count(), 8);
        assert!(
            (h.sum_seconds() - 3_623.702).abs() < 1e-9,
            "{}",
            h.sum_seconds()
        );
    }

    #[test]
    fn ack_latency_buckets_ascend_and_reach_the_indexer_ack_timeout() {
        assert!(ACK_LATENCY_BOUNDS.windows(2).all(|w| w[0] < w[1]));
        let h = LatencyHistogram::ack_latency();
        assert_eq!(h.cumulative().count(), ACK_LATENCY_BOUNDS.len() + 1);
        assert_eq!(ACK_LATENCY_BOUNDS.last(), Some(&300.0));
    }

    /// The status of one tenant reading Graph alerts from `sim` through the real token
    /// manager and API client, the way the relay wires them.
    #[tokio::test]
    async fn snapshots_read_the_live_throttle_and_token_counters() {
        use relay_sim::{ApiFault, FaultKind, Sim, SimConfig};
        let sim = Sim::start(SimConfig {
            tenants: 1,
            activity: 0,
            quotas_enabled: false,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let t = sim.tenants()[0].clone();
        let tokens = TokenManager::new(
            reqwest::Client::new(),
            Arc::new(relay_auth::MemoryStore::new()),
            relay_auth::ManagerOptions::default(),
        );
        tokens.upsert_tenant(relay_auth::TenantAuth {
            name: t.name.clone(),
            tenant_id: t.tenant_id.clone(),
            endpoints: sim.endpoints(),
            client_id: t.client_id.clone(),
            credential: relay_auth::Credential::ClientSecret {
                secret: relay_config::Secret::new(t.client_secret.clone()),
            },
            token_version: relay_auth::TokenVersion::V2,
            probe: relay_auth::ProbeBackoff::default(),
        });
        let client = relay_defender::DefenderClient::new(
            reqwest::Client::new(),
            Arc::new(tokens.clone()),
            relay_defender::ClientOptions {
                rate_limits: relay_defender::RateLimits::unlimited(),
                ..relay_defender::ClientOptions::default()
            },
        );
        let tenant = Arc::new(TenantCell::new(&t.name, &t.tenant_id));
        let feed = Arc::new(FeedCell::new(&t.name, Feed::GraphAlerts));
        let sink = Arc::new(SinkCell::new("file", "file", OutboxDepth::default()));
        let status = StatusHandle::new(
            tokens,
            vec![tenant],
            vec![Arc::clone(&feed)],
            vec![Arc::clone(&sink)],
        );
        let before = status.snapshot();
        assert_eq!(
            (before.feeds[0].throttled, before.feeds[0].throttled_wait),
            (0, Duration::ZERO)
        );
        assert!(before.tenants[0].token_refreshes.is_empty());
        assert_eq!(before.sinks[0].ack_latency.count(), 0);

        // Two 429s retried inside one poll, which then succeeds.
        sim.set_fault(
            &t.tenant_id,
            ApiFault::new(FaultKind::TooManyRequests {
                retry_after_secs: 1,
            })
            .times(2),
        )
        .unwrap();
        let target = relay_defender::TenantTarget {
            name: t.name.clone(),
            tenant_id: t.tenant_id.clone(),
            endpoints: sim.endpoints(),
        };
        let now = Utc::now();
        let mut pager = client
            .window(
                &target,
                Feed::GraphAlerts,
                now - chrono::Duration::hours(1),
                now,
            )
            .count_throttling(Arc::clone(&feed.throttling));
        while pager.next_page().await.unwrap().is_some() {}
        // What the sink worker does on an acknowledgement.
        sink.inner
            .lock()
            .ack_latency
            .observe(Duration::from_millis(30));

        let after = status.snapshot();
        assert_eq!(after.feeds[0].throttled, 2);
        assert_eq!(after.feeds[0].throttled_wait, Duration::from_secs(2));
        assert_eq!(
            after.tenants[0].token_refreshes,
            [RefreshCounts {
                audience: relay_config::Audience::Graph,
                ok: 1,
                failed: 0,
                needs_consent: 0,
            }]
        );
        assert_eq!(after.sinks[0].ack_latency.count(), 1);
        sim.shutdown().await;
    }
}
