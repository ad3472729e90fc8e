//! The simulated tenants' data: incidents and alerts that are created and updated over
//! time, every version they ever had, and when each version became visible to queries.
//!
//! Eventual consistency is modelled per version: a version made at `m` is queryable from
//! `m + late_visibility (+ jitter)` on, carrying the last-update timestamp it was made
//! with. A query sees, per item, the newest version that is already visible. Versions are
//! promoted into the query index in visibility order, so an older version that becomes
//! visible after a newer one never shows — exactly the versions [`World::ground_truth`]
//! leaves out.

use crate::gen::{self, Fixtures, Hostile};
use crate::model::{Alert, AlertStatus, Entry, Incident, IncidentStatus, Meta, Source};
use crate::odata::{Compiled, Tick};
use crate::{GroundTruthVersion, PayloadProfile};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use relay_config::{Feed, Stream};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The world's knobs (a subset of `SimConfig`).
#[derive(Debug, Clone)]
pub(crate) struct WorldConfig {
    pub late_visibility: Duration,
    pub late_visibility_jitter: Duration,
    pub activity_per_minute: f64,
    pub backlog: usize,
    /// (tenant index, incidents) where a tenant's backlog is not `backlog`.
    pub backlog_of: Vec<(usize, usize)>,
    pub backlog_span: Duration,
    pub burst_size: usize,
    pub min_update_gap: Duration,
    pub payload: PayloadProfile,
}

/// Which index a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Incidents (M365 Defender and Graph render the same versions).
    Incidents,
    /// All alerts (Graph alerts_v2).
    Alerts,
    /// Alerts from Defender for Endpoint only (`/api/alerts`).
    MdeAlerts,
}

/// The order of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    LastUpdateAsc,
    LastUpdateDesc,
    CreatedAsc,
    CreatedDesc,
}

/// One page request against a view.
pub(crate) struct PageQuery<'a> {
    pub view: View,
    pub filter: &'a Compiled,
    pub order: Order,
    pub skip: usize,
    pub top: usize,
    pub count: bool,
    /// Leave out items of this provider (a federated 206 answer).
    pub exclude: Option<Source>,
}

/// What a query found.
pub(crate) struct PageResult {
    pub entries: Vec<Arc<Entry>>,
    /// More matching items follow this page.
    pub more: bool,
    /// All matching items (for `$count=true`).
    pub count: Option<usize>,
}

/// Failures of the scripted-activity calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    /// No simulated tenant has this id.
    #[error("unknown simulated tenant {tenant_id}")]
    UnknownTenant {
        /// The id asked for.
        tenant_id: String,
    },
    /// The tenant has no incident or alert with this id.
    #[error("tenant {tenant_id} has no {stream} item with id {id}")]
    UnknownItem {
        /// The tenant.
        tenant_id: String,
        /// Incidents or alerts.
        stream: Stream,
        /// The id asked for.
        id: String,
    },
}

/// Counts of what the world holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorldStats {
    /// Incidents across tenants.
    pub incidents: usize,
    /// Alerts across tenants.
    pub alerts: usize,
    /// Versions ever made (incidents and alerts).
    pub versions: u64,
    /// Versions made but not yet visible.
    pub pending: usize,
}

/// An incident made by [`crate::Sim::create_incident`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedIncident {
    /// The incident id (`incidentId` / Graph `id`).
    pub incident_id: String,
    /// Its alerts' ids.
    pub alert_ids: Vec<String>,
    /// The last-update timestamp all of them carry.
    pub last_update: chrono::DateTime<chrono::Utc>,
}

struct Version {
    last_update: Tick,
    made: Tick,
    visible_at: Tick,
    /// Dropped once a newer version is shown: only queries need the JSON.
    entry: Option<Arc<Entry>>,
}

struct History {
    id: Arc<str>,
    mde: bool,
    versions: Vec<Version>,
    shown: Option<usize>,
}

type Index = BTreeMap<(Tick, u64), Arc<Entry>>;

#[derive(Default)]
struct Store {
    items: HashMap<u64, History>,
    visible: Index,
    visible_mde: Index,
}

impl Store {
    fn push(&mut self, key: u64, id: &str, mde: bool, v: Version) -> usize {
        let h = self.items.entry(key).or_insert_with(|| History {
            id: Arc::from(id),
            mde,
            versions: Vec::new(),
            shown: None,
        });
        h.versions.push(v);
        h.versions.len() - 1
    }

    fn last_update(&self, key: u64) -> Option<Tick> {
        self.items
            .get(&key)
            .and_then(|h| h.versions.last())
            .map(|v| v.last_update)
    }

    /// Whether the item's newest version was made less than `gap` before `now`.
    fn recent(&self, key: u64, now: Tick, gap: Duration) -> bool {
        !gap.is_zero()
            && self
                .items
                .get(&key)
                .and_then(|h| h.versions.last())
                .is_some_and(|v| v.made.plus(gap) > now)
    }

    /// Makes version `vidx` of `key` the shown one, unless a newer one already is.
    fn promote(&mut self, key: u64, vidx: usize) {
        let Some(h) = self.items.get_mut(&key) else {
            return;
        };
        if h.shown.is_some_and(|s| s >= vidx) {
            if let Some(v) = h.versions.get_mut(vidx) {
                v.entry = None;
            }
            return;
        }
        if let Some(s) = h.shown {
            let old = h.versions[s].last_update;
            self.visible.remove(&(old, key));
            if h.mde {
                self.visible_mde.remove(&(old, key));
            }
        }
        for older in &mut h.versions[..vidx] {
            older.entry = None;
        }
        let v = &h.versions[vidx];
        if let Some(entry) = &v.entry {
            self.visible.insert((v.last_update, key), entry.clone());
            if h.mde {
                self.visible_mde.insert((v.last_update, key), entry.clone());
            }
        }
        h.shown = Some(vidx);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    visible_at: Tick,
    alerts: bool,
    key: u64,
    vidx: usize,
}

/// Which items an event changed; their new versions are made together.
#[derive(Default)]
struct Changes {
    incidents: BTreeSet<u64>,
    alerts: Vec<String>,
}

impl Changes {
    fn alert(&mut self, id: &str) {
        if !self.alerts.iter().any(|a| a == id) {
            self.alerts.push(id.to_string());
        }
    }
}

struct TenantState {
    tenant_id: Arc<str>,
    rng: StdRng,
    fx: Fixtures,
    cfg: Arc<WorldConfig>,
    incidents: BTreeMap<u64, Arc<Incident>>,
    open: BTreeSet<u64>,
    alerts: HashMap<String, Arc<Alert>>,
    alert_keys: HashMap<String, u64>,
    alert_order: Vec<String>,
    next_incident: u64,
    alert_seq: u64,
    incident_store: Store,
    alert_store: Store,
    pending: BinaryHeap<Reverse<Pending>>,
    credit: f64,
    versions: u64,
}

/// All tenants' data.
pub(crate) struct World {
    tenants: Vec<(String, Mutex<TenantState>)>,
    by_id: HashMap<String, usize>,
    paused: AtomicBool,
    started: Tick,
    versions_total: AtomicU64,
}

impl World {
    /// Builds the tenants (ids from `tenant_ids`) with their backlog.
    pub fn new(cfg: WorldConfig, seed: u64, tenant_ids: &[String]) -> World {
        let cfg = Arc::new(cfg);
        let started = Tick::now();
        let mut tenants = Vec::with_capacity(tenant_ids.len());
        let mut by_id = HashMap::new();
        let mut versions = 0;
        for (index, tenant_id) in tenant_ids.iter().enumerate() {
            // One stream per tenant, so a tenant's content does not depend on how many
            // tenants there are or on what the others do.
            let mut rng = StdRng::seed_from_u64(
                seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index as u64 + 1)),
            );
            let fx = Fixtures::new(&mut rng, index, started);
            let next_incident = rng.gen_range(10_000..900_000);
            let mut t = TenantState {
                tenant_id: Arc::from(tenant_id.as_str()),
                rng,
                fx,
                cfg: cfg.clone(),
                incidents: BTreeMap::new(),
                open: BTreeSet::new(),
                alerts: HashMap::new(),
                alert_keys: HashMap::new(),
                alert_order: Vec::new(),
                next_incident,
                alert_seq: 0,
                incident_store: Store::default(),
                alert_store: Store::default(),
                pending: BinaryHeap::new(),
                credit: 0.0,
                versions: 0,
            };
            let backlog = cfg
                .backlog_of
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(cfg.backlog, |(_, n)| *n);
            t.backlog(started, backlog);
            t.promote(started);
            // Below one change per tenant per minute, tenants that all start at zero credit
            // would all change in the same tick; a random phase spreads them over the
            // period the way real tenants are spread.
            if cfg.activity_per_minute > 0.0 && cfg.activity_per_minute < 1.0 {
                t.credit = t.rng.gen_range(0.0..1.0);
            }
            versions += t.versions;
            by_id.insert(tenant_id.clone(), index);
            tenants.push((tenant_id.clone(), Mutex::new(t)));
        }
        World {
            tenants,
            by_id,
            paused: AtomicBool::new(false),
            started,
            versions_total: AtomicU64::new(versions),
        }
    }

    /// The DNS name of the tenant's machine with this MDE id, if it has one.
    pub fn machine(&self, tenant: usize, machine_id: &str) -> Option<String> {
        let (_, cell) = self.tenants.get(tenant)?;
        let t = cell.lock();
        t.fx.devices
            .iter()
            .find(|d| d.mde_id == machine_id)
            .map(|d| d.dns_name.clone())
    }

    /// The tenant's machines as (MDE id, DNS name).
    pub fn machines(&self, tenant: usize) -> Vec<(String, String)> {
        let Some((_, cell)) = self.tenants.get(tenant) else {
            return Vec::new();
        };
        let t = cell.lock();
        t.fx.devices
            .iter()
            .map(|d| (d.mde_id.clone(), d.dns_name.clone()))
            .collect()
    }

    /// The index of a tenant id.
    pub fn tenant_index(&self, tenant_id: &str) -> Option<usize> {
        self.by_id.get(tenant_id).copied()
    }

    fn tenant(&self, tenant_id: &str) -> Result<&Mutex<TenantState>, WorldError> {
        self.tenant_index(tenant_id)
            .and_then(|i| self.tenants.get(i))
            .map(|(_, m)| m)
            .ok_or_else(|| WorldError::UnknownTenant {
                tenant_id: tenant_id.to_string(),
            })
    }

    /// One page of the latest visible versions.
    pub fn query(&self, tenant: usize, q: &PageQuery<'_>) -> PageResult {
        let Some((_, cell)) = self.tenants.get(tenant) else {
            return PageResult {
                entries: Vec::new(),
                more: false,
                count: q.count.then_some(0),
            };
        };
        let mut t = cell.lock();
        t.promote(Tick::now());
        t.page(q)
    }

    /// Stops the background activity (scripted calls still work).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Restarts the background activity.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Whether the background activity is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// When the last version made so far becomes visible (now, if all are).
    pub fn fully_visible_at(&self) -> Tick {
        let now = Tick::now();
        self.tenants
            .iter()
            .flat_map(|(_, m)| {
                let t = m.lock();
                t.pending.iter().map(|Reverse(p)| p.visible_at).max()
            })
            .fold(now, Tick::max)
    }

    /// Runs one step of the background activity for every tenant.
    pub fn step(&self, elapsed: Duration) {
        let now = Tick::now();
        let paused = self.is_paused();
        for (_, cell) in &self.tenants {
            let mut t = cell.lock();
            if !paused {
                t.credit += t.cfg.activity_per_minute * elapsed.as_secs_f64() / 60.0;
                // A stalled runtime must not turn into an avalanche of events.
                t.credit = t.credit.min(1_000.0);
                let before = t.versions;
                while t.credit >= 1.0 {
                    t.credit -= 1.0;
                    t.random_event(now);
                }
                self.versions_total
                    .fetch_add(t.versions - before, Ordering::Relaxed);
            }
            t.promote(now);
        }
    }

    /// Every version that was the newest visible version of its item at some instant
    /// since the world started, as of now.
    pub fn ground_truth(&self) -> Vec<GroundTruthVersion> {
        self.ground_truth_dwelling(Duration::ZERO)
    }

    /// Like [`World::ground_truth`], but a superseded version counts only if it was the
    /// newest visible one for at least `min_dwell`: what a poller that looks every
    /// `min_dwell / 2` or so is certain to have seen. The current newest visible version
    /// of every item always counts.
    pub fn ground_truth_dwelling(&self, min_dwell: Duration) -> Vec<GroundTruthVersion> {
        self.ground_truth_dwelling_from(min_dwell, self.started)
    }

    /// As [`ground_truth_dwelling`](Self::ground_truth_dwelling) for a poller that started
    /// looking at `from` (not earlier than the simulator's start).
    pub fn ground_truth_dwelling_from(
        &self,
        min_dwell: Duration,
        from: Tick,
    ) -> Vec<GroundTruthVersion> {
        let started = from.max(self.started);
        let now = Tick::now();
        let dwell = Tick(0).plus(min_dwell).0;
        let mut out = Vec::new();
        for (tenant_id, cell) in &self.tenants {
            let t = cell.lock();
            for (store, feeds) in [
                (
                    &t.incident_store,
                    [Some(Feed::M365dIncidents), Some(Feed::GraphIncidents)],
                ),
                (&t.alert_store, [Some(Feed::GraphAlerts), None]),
            ] {
                for h in store.items.values() {
                    let mut later = Tick(i64::MAX);
                    let mut observable = Vec::new();
                    for v in h.versions.iter().rev() {
                        let newest = later.0 == i64::MAX || later > now;
                        if v.visible_at <= now
                            && v.visible_at < later
                            && later > started
                            && (newest || later.0 - v.visible_at.max(started).0 >= dwell)
                        {
                            observable.push(v.last_update);
                        }
                        later = later.min(v.visible_at);
                    }
                    let mde = h.mde.then_some(Feed::MdeAlerts);
                    for feed in feeds.iter().flatten().copied().chain(mde) {
                        for lu in &observable {
                            out.push(GroundTruthVersion {
                                tenant_id: tenant_id.clone(),
                                feed,
                                id: h.id.to_string(),
                                last_update: lu.to_datetime(),
                            });
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.tenant_id, a.feed, &a.id, a.last_update).cmp(&(
                &b.tenant_id,
                b.feed,
                &b.id,
                b.last_update,
            ))
        });
        out
    }

    /// Counts.
    pub fn stats(&self) -> WorldStats {
        let mut s = WorldStats {
            versions: self.versions_total.load(Ordering::Relaxed),
            ..Default::default()
        };
        for (_, cell) in &self.tenants {
            let t = cell.lock();
            s.incidents += t.incidents.len();
            s.alerts += t.alerts.len();
            s.pending += t.pending.len();
        }
        s
    }

    fn scripted<R>(
        &self,
        tenant_id: &str,
        f: impl FnOnce(&mut TenantState) -> Result<R, WorldError>,
    ) -> Result<R, WorldError> {
        let mut t = self.tenant(tenant_id)?.lock();
        let before = t.versions;
        let r = f(&mut t);
        self.versions_total
            .fetch_add(t.versions - before, Ordering::Relaxed);
        t.promote(Tick::now());
        r
    }

    /// Makes a new version of one incident or alert now (an analyst comment), visible
    /// after `visible_after` (default: the configured delay). Returns its last-update.
    pub fn touch(
        &self,
        tenant_id: &str,
        stream: Stream,
        id: &str,
        visible_after: Option<Duration>,
    ) -> Result<Tick, WorldError> {
        self.scripted(tenant_id, |t| {
            let now = Tick::now();
            let unknown = || WorldError::UnknownItem {
                tenant_id: tenant_id.to_string(),
                stream,
                id: id.to_string(),
            };
            let comment = gen::comment(&mut t.rng, &t.fx, t.cfg.payload, now);
            let mut ch = Changes::default();
            match stream {
                // The relay writes audit events; the API has no such items.
                Stream::Actions => return Err(unknown()),
                Stream::Incidents => {
                    let key: u64 = id.parse().map_err(|_| unknown())?;
                    let inc = t
                        .incidents
                        .get_mut(&key)
                        .map(Arc::make_mut)
                        .ok_or_else(unknown)?;
                    inc.comments.push(comment);
                    ch.incidents.insert(key);
                }
                Stream::Alerts => {
                    let a = t
                        .alerts
                        .get_mut(id)
                        .map(Arc::make_mut)
                        .ok_or_else(unknown)?;
                    a.comments.push(comment);
                    ch.alert(id);
                }
            }
            let stamp = gen::quantize(&mut t.rng, now);
            Ok(t.commit(ch, stamp, now, visible_after, false))
        })
    }

    /// Creates an incident with `alerts` new alerts now, all with one last-update.
    pub fn create_incident(
        &self,
        tenant_id: &str,
        alerts: usize,
        visible_after: Option<Duration>,
    ) -> Result<CreatedIncident, WorldError> {
        self.scripted(tenant_id, |t| {
            let now = Tick::now();
            let stamp = gen::quantize(&mut t.rng, now);
            let (id, ch) = t.new_incident(stamp, alerts.max(1), None);
            let alert_ids = ch.alerts.clone();
            let lu = t.commit(ch, stamp, now, visible_after, false);
            Ok(CreatedIncident {
                incident_id: id.to_string(),
                alert_ids,
                last_update: lu.to_datetime(),
            })
        })
    }

    /// Updates up to `n` items of `stream` now, all with one identical last-update
    /// timestamp (bulk triage), and returns that timestamp.
    pub fn burst(&self, tenant_id: &str, stream: Stream, n: usize) -> Result<Tick, WorldError> {
        self.scripted(tenant_id, |t| {
            let now = Tick::now();
            let stamp = gen::quantize(&mut t.rng, now);
            let ch = t.burst(stream, n, stamp);
            Ok(t.commit(ch, stamp, now, None, false))
        })
    }
}

/// Runs the background activity until cancelled.
pub(crate) async fn run_activity(world: Arc<World>, tick: Duration, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Wall-clock, not tokio time: versions carry wall-clock timestamps, and a test
    // runtime with paused time must not change the activity rate.
    let mut last = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = std::time::Instant::now();
        let elapsed = now - last;
        last = now;
        world.step(elapsed);
    }
}

impl TenantState {
    fn delay(&mut self) -> Duration {
        let jitter = self.cfg.late_visibility_jitter;
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(
                self.rng
                    .gen_range(0..=u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX)),
            )
        };
        self.cfg.late_visibility + extra
    }

    /// Promotes every version due by `now` into the query index.
    fn promote(&mut self, now: Tick) {
        while let Some(Reverse(p)) = self.pending.peek().copied() {
            if p.visible_at > now {
                break;
            }
            self.pending.pop();
            let store = if p.alerts {
                &mut self.alert_store
            } else {
                &mut self.incident_store
            };
            store.promote(p.key, p.vidx);
        }
    }

    fn alert_key(&mut self, id: &str) -> u64 {
        if let Some(k) = self.alert_keys.get(id) {
            return *k;
        }
        let k = self.alert_keys.len() as u64;
        self.alert_keys.insert(id.to_string(), k);
        k
    }

    /// Makes one new version of every changed item, stamped `stamp` (bumped per item
    /// where an item's previous version is not older), made at `made`. Returns the
    /// stamp of the last version made.
    ///
    /// With `respect_gap`, an item whose last version is younger than `min_update_gap`
    /// gets no new version now: its change is published with its next one. This keeps
    /// every version visible long enough for a poller to see it.
    fn commit(
        &mut self,
        ch: Changes,
        stamp: Tick,
        made: Tick,
        visible_after: Option<Duration>,
        respect_gap: bool,
    ) -> Tick {
        let gap = if respect_gap {
            self.cfg.min_update_gap
        } else {
            Duration::ZERO
        };
        let mut last = stamp;
        for id in &ch.alerts {
            let key = self.alert_key(id);
            if self.alert_store.recent(key, made, gap) {
                continue;
            }
            let prev = self.alert_store.last_update(key);
            let lu = match prev {
                Some(p) if p >= stamp => Tick(p.0 + 1),
                _ => stamp,
            };
            let Some(a) = self.alerts.get_mut(id) else {
                continue;
            };
            Arc::make_mut(a).last_update = lu;
            last = lu;
            let snapshot = a.clone();
            let meta = Meta {
                last_update: lu,
                created: a.created,
                status: a.status.pascal(),
                severity: a.severity.pascal(),
                assigned_to: a.assigned_to.clone(),
                classification: a.classification,
                determination: a.determination,
                source: a.source,
                incident_id: a.incident,
            };
            let is_mde = a.source == Source::Endpoint;
            let entry = Arc::new(Entry::alert(meta, self.tenant_id.clone(), snapshot));
            let visible_at = made.plus(visible_after.unwrap_or_else(|| self.delay()));
            let vidx = self.alert_store.push(
                key,
                id,
                is_mde,
                Version {
                    last_update: lu,
                    made,
                    visible_at,
                    entry: Some(entry),
                },
            );
            self.pending.push(Reverse(Pending {
                visible_at,
                alerts: true,
                key,
                vidx,
            }));
            self.versions += 1;
        }
        for key in &ch.incidents {
            if self.incident_store.recent(*key, made, gap) {
                continue;
            }
            let prev = self.incident_store.last_update(*key);
            let lu = match prev {
                Some(p) if p >= stamp => Tick(p.0 + 1),
                _ => stamp,
            };
            let Some(inc) = self.incidents.get_mut(key) else {
                continue;
            };
            Arc::make_mut(inc).last_update = lu;
            last = lu;
            let snapshot = inc.clone();
            let alerts: Vec<Arc<Alert>> = snapshot
                .alerts
                .iter()
                .filter_map(|id| self.alerts.get(id).cloned())
                .collect();
            let meta = Meta {
                last_update: lu,
                created: snapshot.created,
                status: snapshot.status.pascal(),
                severity: snapshot.severity.pascal(),
                assigned_to: snapshot.assigned_to.clone(),
                classification: Some(snapshot.classification),
                determination: Some(snapshot.determination),
                // The provider of a federated incident: its first alert's.
                source: alerts.first().map_or(Source::Endpoint, |a| a.source),
                incident_id: snapshot.id,
            };
            let entry = Arc::new(Entry::incident(
                meta,
                self.tenant_id.clone(),
                snapshot,
                alerts,
            ));
            let visible_at = made.plus(visible_after.unwrap_or_else(|| self.delay()));
            let vidx = self.incident_store.push(
                *key,
                &key.to_string(),
                false,
                Version {
                    last_update: lu,
                    made,
                    visible_at,
                    entry: Some(entry),
                },
            );
            self.pending.push(Reverse(Pending {
                visible_at,
                alerts: false,
                key: *key,
                vidx,
            }));
            self.versions += 1;
        }
        last
    }

    fn page(&self, q: &PageQuery<'_>) -> PageResult {
        let map = match q.view {
            View::Incidents => &self.incident_store.visible,
            View::Alerts => &self.alert_store.visible,
            View::MdeAlerts => &self.alert_store.visible_mde,
        };
        if let (Some(f), Some(u)) = (q.filter.from, q.filter.until) {
            if f >= u {
                return PageResult {
                    entries: Vec::new(),
                    more: false,
                    count: q.count.then_some(0),
                };
            }
        }
        let lo = q
            .filter
            .from
            .map_or(Bound::Unbounded, |t| Bound::Included((t, 0)));
        let hi = q
            .filter
            .until
            .map_or(Bound::Unbounded, |t| Bound::Excluded((t, 0)));
        let pure = q.filter.is_pure_range() && q.exclude.is_none();
        let keep = |e: &&Arc<Entry>| {
            pure || (q.filter.matches(&e.meta) && q.exclude.is_none_or(|s| e.meta.source != s))
        };
        let mut entries = Vec::with_capacity(q.top.min(1_024));
        let mut more = false;
        let mut collect = |it: &mut dyn Iterator<Item = &Arc<Entry>>| {
            for e in it.skip(q.skip) {
                if entries.len() == q.top {
                    // `$top=0` asks for no items, not for an endless chain of links.
                    more = q.top > 0;
                    break;
                }
                entries.push(e.clone());
            }
        };
        let range = map.range((lo, hi)).map(|(_, e)| e).filter(keep);
        match q.order {
            Order::LastUpdateAsc => collect(&mut range.into_iter()),
            Order::LastUpdateDesc => collect(&mut range.rev()),
            Order::CreatedAsc | Order::CreatedDesc => {
                // No index by creation time: sort the matches (rarely asked for).
                let mut all: Vec<&Arc<Entry>> = range.collect();
                all.sort_by_key(|e| (e.meta.created, e.meta.last_update));
                if q.order == Order::CreatedDesc {
                    all.reverse();
                }
                collect(&mut all.into_iter());
            }
        }
        let count = q
            .count
            .then(|| map.range((lo, hi)).map(|(_, e)| e).filter(keep).count());
        PageResult {
            entries,
            more,
            count,
        }
    }

    // -----------------------------------------------------------------------------------
    // Content changes

    fn new_alert(
        &mut self,
        incident: u64,
        at: Tick,
        hostile: Hostile,
        source: Option<Source>,
    ) -> String {
        loop {
            self.alert_seq += 1;
            let a = gen::alert(
                &mut self.rng,
                &self.fx,
                self.cfg.payload,
                self.alert_seq,
                incident,
                at,
                hostile,
                source,
            );
            if !self.alerts.contains_key(&a.id) {
                let id = a.id.clone();
                self.alert_order.push(id.clone());
                self.alerts.insert(id.clone(), Arc::new(a));
                return id;
            }
        }
    }

    fn new_incident(
        &mut self,
        at: Tick,
        n_alerts: usize,
        hostile: Option<Hostile>,
    ) -> (u64, Changes) {
        let id = self.next_incident;
        self.next_incident += self.rng.gen_range(1..4);
        let mut ch = Changes::default();
        let hostile = hostile.unwrap_or(Hostile::Random);
        let first = self.new_alert(id, at, hostile, None);
        ch.alert(&first);
        let inc = match self.alerts.get(&first) {
            Some(a) => gen::incident(&mut self.rng, id, a, at),
            None => return (id, ch),
        };
        self.incidents.insert(id, Arc::new(inc));
        self.open.insert(id);
        for _ in 1..n_alerts {
            let a = self.new_alert(id, at, Hostile::Random, None);
            if let Some(inc) = self.incidents.get_mut(&id).map(Arc::make_mut) {
                inc.alerts.push(a.clone());
            }
            ch.alert(&a);
        }
        ch.incidents.insert(id);
        (id, ch)
    }

    fn pick_open(&mut self) -> Option<u64> {
        let n = self.open.len();
        if n == 0 {
            return None;
        }
        self.open.iter().nth(self.rng.gen_range(0..n)).copied()
    }

    fn resolve_alert(
        &mut self,
        id: &str,
        at: Tick,
        classification: Option<(&'static str, &'static str)>,
    ) {
        let (c, d) = classification.unwrap_or_else(|| gen::resolution(&mut self.rng));
        if let Some(a) = self.alerts.get_mut(id).map(Arc::make_mut) {
            a.status = AlertStatus::Resolved;
            a.resolved = Some(at);
            a.classification = Some(c);
            a.determination = Some(d);
        }
    }

    fn random_event(&mut self, now: Tick) {
        let stamp = gen::quantize(&mut self.rng, now);
        let roll = self.rng.gen_range(0..100);
        let ch = match roll {
            0..=1 if self.cfg.burst_size > 0 => {
                let stream = if self.rng.gen_bool(0.5) {
                    Stream::Alerts
                } else {
                    Stream::Incidents
                };
                let n = self.cfg.burst_size;
                self.burst(stream, n, stamp)
            }
            0..=17 => {
                let n = self.rng.gen_range(1..4);
                self.new_incident(stamp, n, None).1
            }
            18..=35 => self.join(stamp),
            36..=60 => self.alert_progress(stamp),
            61..=82 => self.incident_progress(stamp),
            83..=94 => self.comment_or_tag(stamp),
            _ => self.merge(stamp),
        };
        self.commit(ch, stamp, now, None, true);
    }

    fn join(&mut self, at: Tick) -> Changes {
        let Some(inc) = self.pick_open() else {
            return self.new_incident(at, 1, None).1;
        };
        let mut ch = Changes::default();
        let a = self.new_alert(inc, at, Hostile::Random, None);
        if let Some(i) = self.incidents.get_mut(&inc).map(Arc::make_mut) {
            i.alerts.push(a.clone());
        }
        ch.alert(&a);
        ch.incidents.insert(inc);
        ch
    }

    fn alert_progress(&mut self, at: Tick) -> Changes {
        let mut ch = Changes::default();
        let n = self.alert_order.len();
        if n == 0 {
            return self.new_incident(at, 1, None).1;
        }
        // Recent alerts are the ones analysts work on.
        let from = n.saturating_sub(200);
        let id = self.alert_order[self.rng.gen_range(from..n)].clone();
        let analyst = self.fx.analysts[self.rng.gen_range(0..self.fx.analysts.len())].clone();
        let status = self.alerts.get(&id).map(|a| a.status);
        match status {
            Some(AlertStatus::New) => {
                if let Some(a) = self.alerts.get_mut(&id).map(Arc::make_mut) {
                    a.status = AlertStatus::InProgress;
                    a.assigned_to = Some(analyst);
                }
            }
            Some(AlertStatus::InProgress) => self.resolve_alert(&id, at, None),
            Some(AlertStatus::Resolved) | None => {
                let c = gen::comment(&mut self.rng, &self.fx, self.cfg.payload, at);
                if let Some(a) = self.alerts.get_mut(&id).map(Arc::make_mut) {
                    a.comments.push(c);
                }
            }
        }
        ch.alert(&id);
        if self.rng.gen_bool(0.5) {
            if let Some(a) = self.alerts.get(&id) {
                ch.incidents.insert(a.incident);
            }
        }
        ch
    }

    fn incident_progress(&mut self, at: Tick) -> Changes {
        let Some(id) = self.pick_open() else {
            return self.new_incident(at, 2, None).1;
        };
        let mut ch = Changes::default();
        ch.incidents.insert(id);
        let analyst = self.fx.analysts[self.rng.gen_range(0..self.fx.analysts.len())].clone();
        let status = self.incidents.get(&id).map(|i| i.status);
        match status {
            Some(IncidentStatus::Active) => {
                let c = gen::comment(&mut self.rng, &self.fx, self.cfg.payload, at);
                if let Some(i) = self.incidents.get_mut(&id).map(Arc::make_mut) {
                    i.status = IncidentStatus::InProgress;
                    i.assigned_to = Some(analyst);
                    i.comments.push(c);
                }
            }
            Some(IncidentStatus::InProgress) => {
                let (c, d) = gen::resolution(&mut self.rng);
                let alerts = match self.incidents.get_mut(&id).map(Arc::make_mut) {
                    Some(i) => {
                        i.status = IncidentStatus::Resolved;
                        i.classification = c;
                        i.determination = d;
                        i.alerts.clone()
                    }
                    None => Vec::new(),
                };
                self.open.remove(&id);
                // Resolving an incident resolves its alerts in the same instant: a
                // natural run of identical timestamps.
                for a in alerts {
                    if self
                        .alerts
                        .get(&a)
                        .is_some_and(|x| x.status != AlertStatus::Resolved)
                    {
                        self.resolve_alert(&a, at, Some((c, d)));
                        ch.alert(&a);
                    }
                }
            }
            _ => {
                self.open.remove(&id);
            }
        }
        ch
    }

    fn comment_or_tag(&mut self, at: Tick) -> Changes {
        let mut ch = Changes::default();
        let id = match self.pick_open() {
            Some(id) => id,
            None => match self.incidents.keys().next_back() {
                Some(id) => *id,
                None => return self.new_incident(at, 1, None).1,
            },
        };
        let c = gen::comment(&mut self.rng, &self.fx, self.cfg.payload, at);
        let tag = self.rng.gen_bool(0.3);
        if let Some(i) = self.incidents.get_mut(&id).map(Arc::make_mut) {
            if tag {
                let t = format!("tag-{}", i.tags.len() + 1);
                i.tags.push(t);
            } else {
                i.comments.push(c);
            }
        }
        ch.incidents.insert(id);
        ch
    }

    fn merge(&mut self, at: Tick) -> Changes {
        if self.open.len() < 2 {
            return self.new_incident(at, 1, None).1;
        }
        let Some(into) = self.pick_open() else {
            return Changes::default();
        };
        let Some(from) = self.pick_open() else {
            return Changes::default();
        };
        let mut ch = Changes::default();
        let into_len = self.incidents.get(&into).map_or(0, |i| i.alerts.len());
        let from_len = self.incidents.get(&from).map_or(0, |i| i.alerts.len());
        if from == into || into_len + from_len > 30 {
            return self.comment_or_tag(at);
        }
        let moved = match self.incidents.get_mut(&from).map(Arc::make_mut) {
            Some(f) => {
                f.status = IncidentStatus::Redirected;
                f.redirect = Some(into);
                std::mem::take(&mut f.alerts)
            }
            None => Vec::new(),
        };
        self.open.remove(&from);
        for a in &moved {
            if let Some(x) = self.alerts.get_mut(a).map(Arc::make_mut) {
                x.incident = into;
            }
            ch.alert(a);
        }
        if let Some(i) = self.incidents.get_mut(&into).map(Arc::make_mut) {
            i.alerts.extend(moved);
        }
        ch.incidents.insert(into);
        ch.incidents.insert(from);
        ch
    }

    /// Bulk triage of up to `n` items with one timestamp: alerts get an assignee (or a
    /// comment), incidents a tag.
    fn burst(&mut self, stream: Stream, n: usize, at: Tick) -> Changes {
        let mut ch = Changes::default();
        match stream {
            Stream::Alerts => {
                let len = self.alert_order.len();
                let from = len.saturating_sub(n);
                let ids: Vec<String> = self.alert_order[from..].to_vec();
                let who = self.fx.analysts[self.rng.gen_range(0..self.fx.analysts.len())].clone();
                for id in ids {
                    let c = gen::comment(&mut self.rng, &self.fx, self.cfg.payload, at);
                    if let Some(a) = self.alerts.get_mut(&id).map(Arc::make_mut) {
                        if a.assigned_to.is_none() {
                            a.assigned_to = Some(who.clone());
                        } else {
                            a.comments.push(c);
                        }
                    }
                    ch.alert(&id);
                }
            }
            Stream::Incidents => {
                let keys: Vec<u64> = self.incidents.keys().rev().take(n).copied().collect();
                for k in keys {
                    if let Some(i) = self.incidents.get_mut(&k).map(Arc::make_mut) {
                        i.tags.push("bulk-triage".into());
                    }
                    ch.incidents.insert(k);
                }
            }
            Stream::Actions => {}
        }
        ch
    }

    /// The items that exist when the simulator starts: already visible, spread over
    /// `backlog_span`, every kind of hostile content present, one run of identical
    /// timestamps longer than any page in each stream, and a few merged incidents.
    fn backlog(&mut self, started: Tick, n: usize) {
        if n == 0 {
            return;
        }
        let settle =
            self.cfg.late_visibility + self.cfg.late_visibility_jitter + Duration::from_secs(1);
        let end = started.minus(settle);
        let begin = end.minus(self.cfg.backlog_span);
        let span = (end.0 - begin.0).max(1);
        let mut forced = 0usize;
        let mut all = Changes::default();
        for i in 0..n {
            let created = Tick(begin.0 + span * i as i64 / n as i64);
            let created = gen::quantize(&mut self.rng, created);
            let n_alerts = self.rng.gen_range(1..5);
            let id = self.next_incident;
            self.next_incident += self.rng.gen_range(1..4);
            let mut alert_ids = Vec::new();
            for _ in 0..n_alerts {
                let hostile = Hostile::for_backlog(forced);
                forced += 1;
                alert_ids.push(self.new_alert(id, created, hostile, None));
            }
            let Some(first) = self.alerts.get(&alert_ids[0]) else {
                continue;
            };
            let mut inc = gen::incident(&mut self.rng, id, first, created);
            inc.alerts = alert_ids.clone();
            // Lifecycles progressed before the simulator started.
            // A fraction, not a range draw: rejection sampling over a range that depends
            // on the wall clock would consume a varying number of random values and make
            // the world depend on when it was built.
            let f: f64 = self.rng.gen();
            let last = Tick(created.0 + (f * (end.0 - created.0).max(0) as f64) as i64);
            let last = gen::quantize(&mut self.rng, last).max(created);
            match self.rng.gen_range(0..3) {
                0 => {
                    self.open.insert(id);
                }
                1 => {
                    inc.status = IncidentStatus::InProgress;
                    inc.assigned_to = Some(self.fx.analysts[0].clone());
                    self.open.insert(id);
                }
                _ => {
                    let (c, d) = gen::resolution(&mut self.rng);
                    inc.status = IncidentStatus::Resolved;
                    inc.classification = c;
                    inc.determination = d;
                    for a in &alert_ids {
                        self.resolve_alert(a, last, Some((c, d)));
                    }
                }
            }
            inc.last_update = last;
            for a in &alert_ids {
                if let Some(x) = self.alerts.get_mut(a).map(Arc::make_mut) {
                    x.last_update = last;
                }
                all.alert(a);
            }
            self.incidents.insert(id, Arc::new(inc));
            all.incidents.insert(id);
        }
        // A few merges.
        let open: Vec<u64> = self.open.iter().copied().collect();
        for pair in open.chunks(2).take((n / 20).max(1)) {
            if let [into, from] = pair {
                let moved = match self.incidents.get_mut(from).map(Arc::make_mut) {
                    Some(f) => {
                        f.status = IncidentStatus::Redirected;
                        f.redirect = Some(*into);
                        std::mem::take(&mut f.alerts)
                    }
                    None => continue,
                };
                self.open.remove(from);
                for a in &moved {
                    if let Some(x) = self.alerts.get_mut(a).map(Arc::make_mut) {
                        x.incident = *into;
                    }
                }
                if let Some(i) = self.incidents.get_mut(into).map(Arc::make_mut) {
                    i.alerts.extend(moved);
                }
            }
        }
        // Runs of identical timestamps across page boundaries.
        let burst = gen::quantize(&mut self.rng, end.minus(Duration::from_secs(60)));
        // At most half of each stream, so the backlog keeps varied timestamps too.
        let k = self.cfg.burst_size.min(self.alert_order.len() / 2);
        let mut ids: Vec<String> = self.alert_order.clone();
        ids.shuffle(&mut self.rng);
        for id in ids.iter().take(k) {
            if let Some(a) = self.alerts.get_mut(id).map(Arc::make_mut) {
                a.last_update = a.last_update.max(burst);
            }
        }
        let mut keys: Vec<u64> = self.incidents.keys().copied().collect();
        keys.shuffle(&mut self.rng);
        for key in keys
            .iter()
            .take(self.cfg.burst_size.min(self.incidents.len() / 2))
        {
            if let Some(i) = self.incidents.get_mut(key).map(Arc::make_mut) {
                i.last_update = i.last_update.max(burst);
            }
        }
        // One version per item, made at its last-update, long visible.
        let mut alerts: Vec<(Tick, String)> = all
            .alerts
            .iter()
            .filter_map(|id| self.alerts.get(id).map(|a| (a.last_update, id.clone())))
            .collect();
        alerts.sort();
        for (lu, id) in alerts {
            let mut ch = Changes::default();
            ch.alert(&id);
            self.commit(ch, lu, lu, None, false);
        }
        let mut incidents: Vec<(Tick, u64)> = all
            .incidents
            .iter()
            .filter_map(|k| self.incidents.get(k).map(|i| (i.last_update, *k)))
            .collect();
        incidents.sort();
        for (lu, k) in incidents {
            let mut ch = Changes::default();
            ch.incidents.insert(k);
            self.commit(ch, lu, lu, None, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata::{compile, parse_filter, Field};

    fn cfg(backlog: usize) -> WorldConfig {
        WorldConfig {
            late_visibility: Duration::from_millis(300),
            late_visibility_jitter: Duration::ZERO,
            activity_per_minute: 0.0,
            backlog,
            backlog_of: Vec::new(),
            backlog_span: Duration::from_secs(3_600),
            burst_size: 120,
            min_update_gap: Duration::ZERO,
            payload: PayloadProfile::Realistic,
        }
    }

    fn all(world: &World, view: View) -> Vec<Arc<Entry>> {
        world
            .query(
                0,
                &PageQuery {
                    view,
                    filter: &Compiled::all(),
                    order: Order::LastUpdateAsc,
                    skip: 0,
                    top: usize::MAX,
                    count: false,
                    exclude: None,
                },
            )
            .entries
    }

    #[test]
    fn same_seed_same_world() {
        let ids = vec!["t1".to_string()];
        let a = World::new(cfg(30), 42, &ids);
        let b = World::new(cfg(30), 42, &ids);
        let c = World::new(cfg(30), 43, &ids);
        let ids_of = |w: &World| {
            let mut v: Vec<String> = w
                .ground_truth()
                .into_iter()
                .map(|g| format!("{:?}{}", g.feed, g.id))
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids_of(&a), ids_of(&b));
        assert_ne!(ids_of(&a), ids_of(&c));
    }

    #[test]
    fn backlog_is_visible_with_a_burst_longer_than_a_page() {
        let w = World::new(cfg(100), 1, &["t1".to_string()]);
        let inc = all(&w, View::Incidents);
        assert_eq!(inc.len(), 100);
        let alerts = all(&w, View::Alerts);
        assert!(alerts.len() >= 60);
        let mut runs: HashMap<Tick, usize> = HashMap::new();
        for e in &alerts {
            *runs.entry(e.meta.last_update).or_default() += 1;
        }
        assert!(
            runs.values().any(|n| *n > 100),
            "a tie run longer than an XDR page"
        );
        let mde = all(&w, View::MdeAlerts);
        assert!(!mde.is_empty() && mde.len() < alerts.len());
        assert!(mde.iter().all(|e| e.meta.source == Source::Endpoint));
        assert!(inc.iter().any(|e| e.meta.status == "Redirected"));
        // Ground truth: each backlog item once per feed.
        let gt = w.ground_truth();
        let count = |f: Feed| gt.iter().filter(|g| g.feed == f).count();
        assert_eq!(count(Feed::M365dIncidents), 100);
        assert_eq!(count(Feed::GraphIncidents), 100);
        assert_eq!(count(Feed::GraphAlerts), alerts.len());
        assert_eq!(count(Feed::MdeAlerts), mde.len());
    }

    #[test]
    fn one_tenant_can_have_a_backlog_of_its_own() {
        let mut c = cfg(5);
        c.backlog_of = vec![(1, 300)];
        let ids: Vec<String> = ["t0", "t1", "t2"].map(String::from).to_vec();
        let w = World::new(c, 1, &ids);
        let incidents = |tenant: &str| {
            w.ground_truth()
                .into_iter()
                .filter(|g| g.tenant_id == tenant && g.feed == Feed::GraphIncidents)
                .count()
        };
        assert_eq!(
            (incidents("t0"), incidents("t1"), incidents("t2")),
            (5, 300, 5)
        );
    }

    #[test]
    fn late_visibility_shows_old_version_until_new_is_visible() {
        let w = World::new(cfg(0), 1, &["t1".to_string()]);
        let created = w.create_incident("t1", 2, Some(Duration::ZERO)).unwrap();
        assert_eq!(all(&w, View::Incidents).len(), 1);
        let first = all(&w, View::Incidents)[0].meta.last_update;
        let lu = w
            .touch(
                "t1",
                Stream::Incidents,
                &created.incident_id,
                Some(Duration::from_millis(400)),
            )
            .unwrap();
        assert!(lu > first);
        // Still the old version.
        assert_eq!(all(&w, View::Incidents)[0].meta.last_update, first);
        std::thread::sleep(Duration::from_millis(450));
        let now = all(&w, View::Incidents);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].meta.last_update, lu);
    }

    #[test]
    fn superseded_before_visible_is_not_ground_truth() {
        let w = World::new(cfg(0), 1, &["t1".to_string()]);
        let c = w.create_incident("t1", 1, Some(Duration::ZERO)).unwrap();
        let a = &c.alert_ids[0];
        let slow = w
            .touch("t1", Stream::Alerts, a, Some(Duration::from_millis(600)))
            .unwrap();
        let fast = w
            .touch("t1", Stream::Alerts, a, Some(Duration::from_millis(200)))
            .unwrap();
        assert!(fast > slow);
        std::thread::sleep(Duration::from_millis(700));
        let shown = all(&w, View::Alerts);
        assert_eq!(
            shown[0].meta.last_update, fast,
            "the older version never shows"
        );
        let gt: Vec<Tick> = w
            .ground_truth()
            .into_iter()
            .filter(|g| g.feed == Feed::GraphAlerts && &g.id == a)
            .map(|g| Tick::from_datetime(g.last_update))
            .collect();
        assert_eq!(gt, vec![Tick::from_datetime(c.last_update), fast]);
    }

    #[test]
    fn a_version_visible_for_an_instant_is_ground_truth_and_pending_ones_are_not() {
        let w = World::new(cfg(0), 1, &["t1".to_string()]);
        let c = w.create_incident("t1", 1, Some(Duration::ZERO)).unwrap();
        let v2 = w
            .touch(
                "t1",
                Stream::Incidents,
                &c.incident_id,
                Some(Duration::from_millis(100)),
            )
            .unwrap();
        let v3 = w
            .touch(
                "t1",
                Stream::Incidents,
                &c.incident_id,
                Some(Duration::from_millis(150)),
            )
            .unwrap();
        let v4 = w
            .touch(
                "t1",
                Stream::Incidents,
                &c.incident_id,
                Some(Duration::from_secs(30)),
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let gt: Vec<Tick> = w
            .ground_truth()
            .into_iter()
            .filter(|g| g.feed == Feed::M365dIncidents)
            .map(|g| Tick::from_datetime(g.last_update))
            .collect();
        assert_eq!(gt, vec![Tick::from_datetime(c.last_update), v2, v3]);
        assert!(!gt.contains(&v4));
        assert!(w.fully_visible_at() >= v4);
    }

    #[test]
    fn filters_select_half_open_windows_and_paging_covers_everything() {
        let w = World::new(cfg(80), 9, &["t1".to_string()]);
        let every = all(&w, View::Alerts);
        let mid = every[every.len() / 2].meta.last_update;
        let f = compile(
            &parse_filter(&format!("lastUpdateDateTime lt {}", mid.format7())).unwrap(),
            "alert",
            &|n| (n == "lastUpdateDateTime").then_some(Field::LastUpdate),
        )
        .unwrap();
        let g = compile(
            &parse_filter(&format!("lastUpdateDateTime ge {}", mid.format7())).unwrap(),
            "alert",
            &|n| (n == "lastUpdateDateTime").then_some(Field::LastUpdate),
        )
        .unwrap();
        let page_all = |filter: &Compiled, top: usize, descending: bool| {
            let mut out = Vec::new();
            let mut skip = 0;
            loop {
                let r = w.query(
                    0,
                    &PageQuery {
                        view: View::Alerts,
                        filter,
                        order: if descending {
                            Order::LastUpdateDesc
                        } else {
                            Order::LastUpdateAsc
                        },
                        skip,
                        top,
                        count: true,
                        exclude: None,
                    },
                );
                let n = r.entries.len();
                out.extend(r.entries);
                if !r.more {
                    assert!(n <= top);
                    break;
                }
                skip += top;
            }
            out
        };
        let below = page_all(&f, 7, true);
        let above = page_all(&g, 50, false);
        assert_eq!(below.len() + above.len(), every.len());
        assert!(below.iter().all(|e| e.meta.last_update < mid));
        assert!(above.iter().all(|e| e.meta.last_update >= mid));
        assert!(below
            .windows(2)
            .all(|p| p[0].meta.last_update >= p[1].meta.last_update));
        assert!(above
            .windows(2)
            .all(|p| p[0].meta.last_update <= p[1].meta.last_update));
    }

    #[test]
    fn min_update_gap_spaces_versions_of_one_item() {
        let mut c = cfg(3);
        c.activity_per_minute = 60_000.0;
        c.late_visibility = Duration::ZERO;
        c.min_update_gap = Duration::from_millis(200);
        let w = World::new(c, 5, &["t1".to_string()]);
        for _ in 0..30 {
            w.step(Duration::from_millis(20));
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = w.tenants[0].1.lock();
        let mut checked = 0;
        for store in [&t.incident_store, &t.alert_store] {
            for h in store.items.values() {
                for pair in h.versions.windows(2) {
                    // Backlog versions are made in the past; live ones are spaced.
                    if pair[0].made >= w.started {
                        assert!(
                            pair[1].made.0 - pair[0].made.0 >= 2_000_000,
                            "versions 200 ms apart"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 0);
    }

    #[test]
    fn activity_creates_and_updates_over_time() {
        let mut c = cfg(5);
        c.activity_per_minute = 6_000.0;
        c.late_visibility = Duration::ZERO;
        let w = World::new(c, 3, &["t1".to_string(), "t2".to_string()]);
        let before = w.stats();
        for _ in 0..20 {
            w.step(Duration::from_millis(50));
        }
        let after = w.stats();
        assert!(
            after.versions >= before.versions + 150,
            "{before:?} {after:?}"
        );
        assert!(after.incidents > before.incidents);
        // Ground truth grows with every visible version; only the latest per item is queryable.
        let gt = w.ground_truth();
        let latest = all(&w, View::Alerts);
        let gt_alerts = gt
            .iter()
            .filter(|g| g.feed == Feed::GraphAlerts && g.tenant_id == "t1")
            .count();
        assert!(gt_alerts > latest.len());
        // Every shown version is in the ground truth.
        for e in &latest {
            assert!(gt.iter().any(|g| g.tenant_id == "t1"
                && g.feed == Feed::GraphAlerts
                && Tick::from_datetime(g.last_update) == e.meta.last_update));
        }
        w.pause();
        let v = w.stats().versions;
        w.step(Duration::from_secs(1));
        assert_eq!(w.stats().versions, v);
    }
}
