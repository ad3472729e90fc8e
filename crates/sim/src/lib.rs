//! relay-sim: a faithful simulator of Microsoft Entra ID's token endpoints and the
//! Defender incident and alert APIs, for tests, demos and benchmarks of xdr-relay.
//!
//! One HTTP server on 127.0.0.1 serves, for any number of seeded tenants:
//! - Entra ID (`/{tenant}/oauth2/...`): see [`entra`];
//! - M365 Defender `GET /api/incidents`, Defender for Endpoint `GET /api/alerts`, Graph
//!   `GET /v1.0/security/incidents` and `GET /v1.0/security/alerts_v2`, with the real
//!   OData options, page limits, error bodies, quotas and `@odata` annotations;
//! - `/_sim/...` control routes (faults, pause, ground truth, stats, credentials).
//!
//! The data is a world per tenant in which incidents and alerts are created and updated
//! over time; each version becomes visible to queries only after a delay (Defender's
//! eventual consistency), and [`Sim::ground_truth`] lists exactly the versions a poller
//! could have seen, so tests can check that the daemon delivered each one once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_sim::SimError> {
//! let sim = relay_sim::Sim::start(relay_sim::SimConfig { tenants: 3, seed: 7, ..Default::default() }).await?;
//! let endpoints = sim.endpoints(); // point the daemon here
//! // ... run the daemon ...
//! sim.settle().await; // stop activity, wait until every version is visible
//! let expected = sim.ground_truth();
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

pub mod entra;
mod relay_files;

pub use relay_files::{api_of, FilesAuth, RelayFiles};

mod api;
mod control;
mod faults;
mod gen;
mod machine_actions;
mod model;
pub mod odata;
mod quota;
mod server;
mod world;

pub use faults::{ApiFault, FaultKind};
pub use machine_actions::{
    MachineActionSettings, MachineActionType, MachinePermissions, RequestOutcome, RequestedAction,
};
pub use quota::QuotaLimits;
pub use world::{CreatedIncident, WorldError, WorldStats};

use crate::api::App;
use crate::entra::{AppRegistration, Entra, EntraConfig, TokenFault, TokenStats};
use crate::odata::Tick;
use crate::world::{World, WorldConfig};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use relay_config::{Endpoints, Feed, Stream};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// How big generated items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadProfile {
    /// Like production: 1–5 evidence items, sometimes none or 200, hostile text in
    /// titles, descriptions, comments and evidence, occasional 10 KB strings.
    #[default]
    Realistic,
    /// Every alert's Graph rendering padded to about `alert_bytes`, no hostile outliers:
    /// for throughput benchmarks with a known payload size.
    Uniform {
        /// Target size of one alerts_v2 alert in bytes.
        alert_bytes: usize,
    },
}

/// Simulator settings. `Default` is a small lively demo.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of tenants.
    pub tenants: usize,
    /// Seed of everything random: tenant ids, credentials, content.
    pub seed: u64,
    /// Lifetime of issued access tokens.
    pub access_token_lifetime: Duration,
    /// How long a used (rotated) refresh token keeps working.
    pub refresh_token_grace: Duration,
    /// Device-flow polling interval announced to clients.
    pub device_code_interval: Duration,
    /// How long after it was made a version becomes queryable.
    pub late_visibility: Duration,
    /// A random extra delay in `[0, jitter]` per version, so versions surface out of
    /// order (and some are superseded before anyone could see them).
    pub late_visibility_jitter: Duration,
    /// Creates and updates per tenant per minute (0: only scripted activity).
    pub activity: u32,
    /// When set, replaces `activity` with a rate per tenant per hour, for the realistic
    /// case of a tenant changing a few items a day (1.0 ≈ 24 changes a day).
    pub activity_per_hour: Option<f64>,
    /// How often the activity generator runs.
    pub activity_tick: Duration,
    /// Incidents per tenant that exist, already visible, at start.
    pub backlog: usize,
    /// How far back the backlog's timestamps reach.
    pub backlog_span: Duration,
    /// Tenants whose backlog differs from `backlog`: (tenant index, incidents), e.g. one
    /// customer onboarded with months of history among thousands of quiet ones.
    pub backlog_of: Vec<(usize, usize)>,
    /// Items sharing one last-update timestamp in a bulk update (more than a page).
    pub burst_size: usize,
    /// The background activity never makes a new version of an item sooner than this
    /// after its previous one (scripted calls are exempt). Zero lets versions be replaced
    /// within milliseconds — which no poller can see, yet the ground truth lists them;
    /// exactly-once tests set it above the poll interval plus the visibility jitter.
    pub min_update_gap: Duration,
    /// Whether per-tenant API quotas apply.
    pub quotas_enabled: bool,
    /// The quotas (Microsoft's by default).
    pub quota_limits: QuotaLimits,
    /// Size profile of generated items.
    pub payload: PayloadProfile,
    /// Faults active from the start, by tenant index (position in [`Sim::tenants`]).
    pub faults: Vec<(usize, ApiFault)>,
    /// How machine actions (isolate, antivirus scan) progress.
    pub machine_actions: MachineActionSettings,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tenants: 3,
            seed: 1,
            access_token_lifetime: Duration::from_secs(3_599),
            refresh_token_grace: Duration::from_secs(60),
            device_code_interval: Duration::from_secs(5),
            late_visibility: Duration::from_secs(20),
            late_visibility_jitter: Duration::from_secs(10),
            activity: 30,
            activity_per_hour: None,
            activity_tick: Duration::from_millis(100),
            backlog: 50,
            backlog_span: Duration::from_secs(24 * 3_600),
            backlog_of: Vec::new(),
            burst_size: 120,
            min_update_gap: Duration::ZERO,
            quotas_enabled: true,
            quota_limits: QuotaLimits::default(),
            payload: PayloadProfile::Realistic,
            faults: Vec::new(),
            machine_actions: MachineActionSettings::default(),
        }
    }
}

/// A simulated customer tenant and the credentials that work for it.
#[derive(Clone, Serialize)]
pub struct SimTenant {
    /// A display name (`sim-tenant-1`, ...).
    pub name: String,
    /// Tenant GUID.
    pub tenant_id: String,
    /// Client id of the app consented in the tenant.
    pub client_id: String,
    /// A valid client secret of that app.
    pub client_secret: String,
    /// A refresh token as issued after admin consent.
    pub refresh_token: String,
}

impl fmt::Debug for SimTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTenant")
            .field("name", &self.name)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("refresh_token", &"***")
            .finish()
    }
}

/// One version a poller could have observed: it was the newest visible version of its
/// item at some instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GroundTruthVersion {
    /// Tenant GUID.
    pub tenant_id: String,
    /// The feed it is served on.
    pub feed: Feed,
    /// The item id as the feed prints it (`incidentId` as a decimal string).
    pub id: String,
    /// Its last-update timestamp.
    pub last_update: DateTime<Utc>,
}

/// Counters of what the simulator served.
#[derive(Debug, Clone, Serialize)]
pub struct SimStats {
    /// API requests (all outcomes).
    pub requests: u64,
    /// API requests per feed.
    pub requests_by_feed: BTreeMap<Feed, u64>,
    /// Pages served (200 and 206).
    pub ok: u64,
    /// 429 answers (quota and injected).
    pub throttled: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 403 answers.
    pub forbidden: u64,
    /// 400 answers.
    pub bad_requests: u64,
    /// Requests that met an injected fault.
    pub faults_injected: u64,
    /// Items in all pages served.
    pub items_served: u64,
    /// What the world holds.
    pub world: WorldStats,
    /// Token-endpoint counters.
    pub tokens: TokenStats,
}

/// Errors of the embedding API.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listener could not be bound.
    #[error("cannot bind the simulator to {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener's address could not be read.
    #[error("cannot read the simulator listener's address")]
    LocalAddr {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid simulator setting {key}: {reason}")]
    InvalidConfig {
        /// The `SimConfig` field.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No simulated tenant has this id.
    #[error("unknown simulated tenant {tenant_id}")]
    UnknownTenant {
        /// The id asked for.
        tenant_id: String,
    },
    /// A scripted call named an item the tenant does not have.
    #[error(transparent)]
    World(#[from] WorldError),
}

/// A running simulator. Dropping it stops it; [`Sim::shutdown`] also waits.
pub struct Sim {
    app: Arc<App>,
    local_addr: SocketAddr,
    base_url: Url,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn validate(cfg: &SimConfig) -> Result<(), SimError> {
    let bad = |key, reason: &str| {
        Err(SimError::InvalidConfig {
            key,
            reason: reason.to_string(),
        })
    };
    if cfg.tenants == 0 {
        return bad("tenants", "must be at least 1");
    }
    if cfg.activity_tick.is_zero() {
        return bad("activity_tick", "must be positive");
    }
    if let Some((i, _)) = cfg.faults.iter().find(|(i, _)| *i >= cfg.tenants) {
        return Err(SimError::InvalidConfig {
            key: "faults",
            reason: format!(
                "tenant index {i} is out of range (tenants = {})",
                cfg.tenants
            ),
        });
    }
    if let PayloadProfile::Uniform { alert_bytes } = cfg.payload {
        if alert_bytes > 16 * 1024 * 1024 {
            return bad("payload", "alert_bytes above 16 MiB");
        }
    }
    Ok(())
}

impl Sim {
    /// Starts a simulator on `127.0.0.1:0` in the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> Result<Sim, SimError> {
        let addr = "127.0.0.1:0";
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Sim::start_on(listener, cfg).await
    }

    /// Starts a simulator on an already bound listener (the CLI binds `--listen`).
    pub async fn start_on(listener: TcpListener, cfg: SimConfig) -> Result<Sim, SimError> {
        validate(&cfg)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SimError::LocalAddr { source })?;
        let base_url =
            Url::parse(&format!("http://{local_addr}/")).map_err(|e| SimError::InvalidConfig {
                key: "listener",
                reason: format!("address {local_addr} gives no URL: {e}"),
            })?;

        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let tenants: Vec<SimTenant> = (0..cfg.tenants)
            .map(|i| SimTenant {
                name: format!("sim-tenant-{}", i + 1),
                tenant_id: gen::guid(&mut rng),
                client_id: gen::guid(&mut rng),
                client_secret: gen::client_secret(&mut rng),
                refresh_token: gen::refresh_token(&mut rng),
            })
            .collect();
        let entra = Entra::new(
            EntraConfig {
                access_token_lifetime: cfg.access_token_lifetime,
                refresh_token_grace: cfg.refresh_token_grace,
                device_code_interval: cfg.device_code_interval,
                issuer_base: base_url.clone(),
            },
            tenants
                .iter()
                .map(|t| AppRegistration {
                    tenant_id: t.tenant_id.clone(),
                    client_id: t.client_id.clone(),
                    client_secret: t.client_secret.clone(),
                    initial_refresh_token: t.refresh_token.clone(),
                })
                .collect(),
        );
        let ids: Vec<String> = tenants.iter().map(|t| t.tenant_id.clone()).collect();
        let world = Arc::new(World::new(
            WorldConfig {
                late_visibility: cfg.late_visibility,
                late_visibility_jitter: cfg.late_visibility_jitter,
                activity_per_minute: cfg
                    .activity_per_hour
                    .map_or(f64::from(cfg.activity), |per_hour| per_hour / 60.0),
                backlog: cfg.backlog,
                backlog_of: cfg.backlog_of.clone(),
                backlog_span: cfg.backlog_span,
                burst_size: cfg.burst_size,
                min_update_gap: cfg.min_update_gap,
                payload: cfg.payload,
            },
            cfg.seed,
            &ids,
        ));
        let faults = faults::Faults::new(tenants.len());
        for (i, f) in &cfg.faults {
            faults.set(*i, f.clone());
        }
        let app = Arc::new(App {
            world: world.clone(),
            entra: entra.clone(),
            quotas: quota::Quotas::new(cfg.quota_limits, cfg.quotas_enabled, tenants.len()),
            faults,
            counters: api::Counters::default(),
            machine_actions: machine_actions::MachineActions::new(
                cfg.machine_actions,
                tenants.len(),
            ),
            base_url: base_url.clone(),
            tenants,
        });
        let router = api::router(app.clone())
            .merge(machine_actions::router(app.clone()))
            .merge(control::router(app.clone()))
            .merge(entra.router())
            .fallback(|| async {
                (StatusCode::NOT_FOUND, "no such simulator route").into_response()
            });

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(server::serve(
            listener,
            router,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(world::run_activity(
            world,
            cfg.activity_tick,
            cancel.clone(),
        ));
        tracing::info!(%base_url, tenants = app.tenants.len(), "simulator listening");
        Ok(Sim {
            app,
            local_addr,
            base_url,
            cancel,
            tracker,
        })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every API and the login authority on this simulator, with the global resource
    /// identifiers as token audiences.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::single_host(&self.base_url)
    }

    /// The simulated tenants, in index order.
    pub fn tenants(&self) -> &[SimTenant] {
        &self.app.tenants
    }

    /// The simulated Entra ID (token faults, revocations, minting test tokens).
    pub fn entra(&self) -> &Arc<Entra> {
        &self.app.entra
    }

    fn index(&self, tenant_id: &str) -> Result<usize, SimError> {
        self.app
            .world
            .tenant_index(tenant_id)
            .ok_or_else(|| SimError::UnknownTenant {
                tenant_id: tenant_id.to_string(),
            })
    }

    /// Adds a fault on the tenant's API requests (after any already set).
    pub fn set_fault(&self, tenant_id: &str, fault: ApiFault) -> Result<(), SimError> {
        let i = self.index(tenant_id)?;
        self.app.faults.set(i, fault);
        Ok(())
    }

    /// Removes every API fault of the tenant.
    pub fn clear_faults(&self, tenant_id: &str) -> Result<(), SimError> {
        let i = self.index(tenant_id)?;
        self.app.faults.clear(i);
        Ok(())
    }

    /// Sets or clears a fault on the tenant's token endpoints (delegates to Entra).
    pub fn set_token_fault(
        &self,
        tenant_id: &str,
        fault: Option<TokenFault>,
    ) -> Result<(), SimError> {
        self.index(tenant_id)?;
        self.app.entra.set_token_fault(tenant_id, fault);
        Ok(())
    }

    /// Every version that was the newest visible version of its item at some instant
    /// since start, per feed, sorted. Versions not yet visible are not included: call
    /// [`Sim::settle`] first to compare with what a daemon delivered.
    pub fn ground_truth(&self) -> Vec<GroundTruthVersion> {
        self.app.world.ground_truth()
    }

    /// The ground truth for a poller that looks at least every `min_dwell / 2`: a
    /// superseded version counts only if it was the newest visible one for `min_dwell` or
    /// longer; every item's current newest visible version always counts. A daemon
    /// polling that often must deliver all of these, and nothing outside
    /// [`Sim::ground_truth`].
    pub fn ground_truth_dwelling(&self, min_dwell: Duration) -> Vec<GroundTruthVersion> {
        self.app.world.ground_truth_dwelling(min_dwell)
    }

    /// [`Sim::ground_truth_dwelling`] for a poller that started looking at `since` (a tenant
    /// added to a running daemon): a version superseded before it had been visible for
    /// `min_dwell` after `since` could not be seen.
    pub fn ground_truth_dwelling_since(
        &self,
        min_dwell: Duration,
        since: DateTime<Utc>,
    ) -> Vec<GroundTruthVersion> {
        self.app
            .world
            .ground_truth_dwelling_from(min_dwell, Tick::from_datetime(since))
    }

    /// The tenant's machines (the devices its alerts name) as (MDE machine id, DNS name).
    pub fn machines(&self, tenant_id: &str) -> Result<Vec<(String, String)>, SimError> {
        let i = self.index(tenant_id)?;
        Ok(self.app.world.machines(i))
    }

    /// Grants or withdraws the machine-action permissions of the tenant's app
    /// (`Machine.Isolate`, `Machine.Scan`); both are granted at start.
    pub fn set_machine_permissions(
        &self,
        tenant_id: &str,
        permissions: MachinePermissions,
    ) -> Result<(), SimError> {
        let i = self.index(tenant_id)?;
        self.app.machine_actions.set_permissions(i, permissions);
        Ok(())
    }

    /// Every machine-action request that passed the token, permission and quota checks,
    /// in arrival order, with what it was answered.
    pub fn machine_action_requests(&self) -> Vec<RequestedAction> {
        self.app.machine_actions.requested()
    }

    /// Stops creating and updating items (pending versions still become visible).
    pub fn pause_activity(&self) {
        self.app.world.pause();
    }

    /// Restarts background activity.
    pub fn resume_activity(&self) {
        self.app.world.resume();
    }

    /// When the newest version made so far becomes visible (now or earlier if all are).
    pub fn fully_visible_at(&self) -> DateTime<Utc> {
        self.app.world.fully_visible_at().to_datetime()
    }

    /// Pauses activity and waits until every version made is visible, so the ground
    /// truth is final.
    pub async fn settle(&self) {
        self.pause_activity();
        loop {
            let at = self.app.world.fully_visible_at();
            let now = Tick::now();
            if at <= now {
                return;
            }
            let wait = Duration::from_nanos(u64::try_from((at.0 - now.0) * 100).unwrap_or(0));
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
        }
    }

    /// Makes a new version of an incident or alert now (an analyst comment), visible
    /// after `visible_after` (default: the configured delay). Returns its last-update.
    pub fn touch(
        &self,
        tenant_id: &str,
        stream: Stream,
        id: &str,
        visible_after: Option<Duration>,
    ) -> Result<DateTime<Utc>, SimError> {
        Ok(self
            .app
            .world
            .touch(tenant_id, stream, id, visible_after)?
            .to_datetime())
    }

    /// Creates an incident with `alerts` new alerts, all stamped with one last-update.
    pub fn create_incident(
        &self,
        tenant_id: &str,
        alerts: usize,
        visible_after: Option<Duration>,
    ) -> Result<CreatedIncident, SimError> {
        Ok(self
            .app
            .world
            .create_incident(tenant_id, alerts, visible_after)?)
    }

    /// Updates the newest `n` items of `stream` with one identical last-update timestamp
    /// (a bulk triage), and returns it.
    pub fn burst(
        &self,
        tenant_id: &str,
        stream: Stream,
        n: usize,
    ) -> Result<DateTime<Utc>, SimError> {
        Ok(self.app.world.burst(tenant_id, stream, n)?.to_datetime())
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.app.stats()
    }

    /// Stops accepting, lets in-flight requests finish, stops activity, and waits.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl App {
    pub(crate) fn stats(&self) -> SimStats {
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            requests: get(&c.requests),
            requests_by_feed: Feed::ALL
                .iter()
                .enumerate()
                .map(|(i, f)| (*f, get(&c.by_feed[i])))
                .collect(),
            ok: get(&c.ok),
            throttled: get(&c.throttled),
            unauthorized: get(&c.unauthorized),
            forbidden: get(&c.forbidden),
            bad_requests: get(&c.bad_requests),
            faults_injected: get(&c.faults),
            items_served: get(&c.items),
            world: self.world.stats(),
            tokens: self.entra.token_requests(),
        }
    }
}
