//! Hot reload (SIGHUP, `systemctl reload`): the running relay takes a newly loaded
//! [`Config`] and starts the tenants that were added, stops the ones removed or disabled,
//! and restarts the ones whose tenant file changed, leaving every other tenant's tasks,
//! tokens and the whole state store (checkpoints, seen versions, outboxes, keyed by tenant
//! name) alone.
//!
//! A reload is all or nothing: every added and changed tenant is checked first (its plan,
//! its credential, its refresh token in the state store) and only if all of them pass is
//! anything stopped or started. A tenant's `[sink_overrides.NAME]` for a HEC sink changes
//! live (from the sink's next batch, including that tenant's events already queued). Sinks
//! and the other `relay.toml` sections that are built once at start-up (`[state]`, `[http]`,
//! `[admin]`, `[outbox]`) cannot change live: a reload that changes one is rejected, naming
//! it, and the running configuration is kept. Reloads are serialized; one that arrives before
//! [`Relay::run`](crate::Relay::run) started the tasks or after shutdown began is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use relay_auth::{TenantAuth, TokenManager};
use relay_config::{
    AuthConfig, AuthMethod, Config, HecOverrides, KafkaConfig, SinkConfig, SplunkHecConfig,
    StateKey, TenantConfig,
};
use relay_defender::DefenderClient;
use relay_sinks::splunk_hec::HecLabels;
use relay_state::{State, StateStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::build::{
    prepare_auth, save_bootstrap, tenant_plan, with_stored_refresh_token, PreparedAuth, TenantPlan,
};
use crate::error::{chain, PipelineError};
use crate::poll::{FeedTask, Playbooks};
use crate::status::{FeedCell, SinkCell, StatusHandle, TenantCell};

const RESTART_HINT: &str = "systemctl restart xdr-relay";

/// What a reload changed, returned by [`ReloadHandle::reload`]. `Display` is a one-line
/// summary for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Tenants started (new, or newly enabled), by name.
    pub added: Vec<String>,
    /// Tenants stopped (tenant file gone, or `enabled = false`), by name.
    pub removed: Vec<String>,
    /// Tenants whose tenant file changed, stopped and started again, by name.
    pub restarted: Vec<String>,
    /// Tenants left running untouched.
    pub unchanged: usize,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names(f: &mut fmt::Formatter<'_>, what: &str, list: &[String]) -> fmt::Result {
            write!(f, "{} {what}", list.len())?;
            if !list.is_empty() {
                write!(f, " ({})", list.join(", "))?;
            }
            f.write_str(", ")
        }
        f.write_str("configuration reloaded: ")?;
        names(f, "added", &self.added)?;
        names(f, "removed", &self.removed)?;
        names(f, "restarted", &self.restarted)?;
        write!(f, "{} unchanged", self.unchanged)
    }
}

/// Hands a newly loaded configuration to the running relay. Obtained from
/// [`Relay::reload_handle`](crate::Relay::reload_handle); cheap to clone, usable from any
/// task (the binary's SIGHUP handler).
#[derive(Clone)]
pub struct ReloadHandle {
    control: Arc<Control>,
}

impl fmt::Debug for ReloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle").finish_non_exhaustive()
    }
}

impl ReloadHandle {
    pub(crate) fn new(control: Arc<Control>) -> Self {
        ReloadHandle { control }
    }

    /// Applies `new` (already loaded and validated by `relay_config`) to the running relay:
    /// see the module docs. Waits for a reload in progress to finish first, and for the
    /// poll tasks of removed and changed tenants to stop (a commit in flight completes; an
    /// uncommitted page is polled again when the tenant runs again).
    ///
    /// Fails without changing anything with [`PipelineError::ReloadRejected`], listing
    /// every problem, or [`PipelineError::NotRunning`]; with
    /// [`PipelineError::State`] if the state store failed before anything was stopped.
    pub async fn reload(&self, new: Config) -> Result<ReloadReport, PipelineError> {
        let mut phase = self.control.phase.lock().await;
        match &mut *phase {
            Phase::NotStarted => Err(PipelineError::NotRunning {
                phase: "not started yet",
            }),
            Phase::Stopped => Err(PipelineError::NotRunning {
                phase: "shutting down",
            }),
            Phase::Running(_) if self.control.shutdown_requested() => {
                Err(PipelineError::NotRunning {
                    phase: "shutting down",
                })
            }
            Phase::Running(live) => live.reload(new).await,
        }
    }
}

/// Shared between the relay's run loop and its reload handles.
pub(crate) struct Control {
    phase: tokio::sync::Mutex<Phase>,
    shutdown: parking_lot::Mutex<Option<CancellationToken>>,
}

enum Phase {
    NotStarted,
    Running(Box<Live>),
    Stopped,
}

impl Control {
    pub(crate) fn new() -> Self {
        Control {
            phase: tokio::sync::Mutex::new(Phase::NotStarted),
            shutdown: parking_lot::Mutex::new(None),
        }
    }

    fn shutdown_requested(&self) -> bool {
        self.shutdown
            .lock()
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// `run` has spawned every task: reloads may start.
    pub(crate) async fn set_running(&self, live: Live) {
        *self.shutdown.lock() = Some(live.spawner.poll_root.clone());
        *self.phase.lock().await = Phase::Running(Box::new(live));
    }

    /// Shutdown began: waits for a reload in progress, refuses the later ones. After this
    /// no task is spawned any more, so the poll tracker can be closed.
    pub(crate) async fn stop(&self) {
        *self.phase.lock().await = Phase::Stopped;
    }
}

/// What starts a tenant's poll tasks: the parts every tenant shares.
pub(crate) struct Spawner {
    pub(crate) state: Arc<StateStore>,
    /// The same store's async face: poll commits go through its group-commit writer.
    pub(crate) writes: State,
    pub(crate) client: DefenderClient,
    pub(crate) tokens: TokenManager,
    /// Parent of every tenant's token; a child of the shutdown token.
    pub(crate) poll_root: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// The playbooks, when any are configured (changing them needs a restart).
    pub(crate) playbooks: Option<Playbooks>,
}

/// A tenant as built: its plan, the credential registered with the token manager, its
/// status cells and the sinks it routes to.
pub(crate) struct FeedSetup {
    pub(crate) plan: Arc<TenantPlan>,
    pub(crate) auth: TenantAuth,
    pub(crate) tenant: Arc<TenantCell>,
    pub(crate) feeds: Vec<(relay_config::Feed, Arc<FeedCell>)>,
    pub(crate) sinks: Vec<Arc<SinkCell>>,
}

impl FeedSetup {
    /// The setup of `plan`; status cells of `previous` (the same tenant before a restart)
    /// are reused where they still fit, so its counters go on.
    pub(crate) fn new(
        plan: Arc<TenantPlan>,
        auth: TenantAuth,
        sinks: &[Arc<SinkCell>],
        previous: Option<&FeedSetup>,
    ) -> Self {
        let routed = plan
            .sinks
            .iter()
            .filter_map(|name| sinks.iter().find(|cell| &cell.name == name).cloned())
            .collect();
        let feeds = plan
            .feeds
            .iter()
            .map(|&feed| {
                let cell = previous
                    .and_then(|p| p.feeds.iter().find(|(f, _)| *f == feed))
                    .map_or_else(
                        || Arc::new(FeedCell::new(plan.name(), feed)),
                        |(_, cell)| Arc::clone(cell),
                    );
                (feed, cell)
            })
            .collect();
        let tenant = match previous {
            Some(p) if p.tenant.tenant_id == plan.target.tenant_id => {
                if p.auth != auth {
                    // Let the first poll record the new credential's auth state.
                    p.tenant.inner.lock().auth = None;
                }
                Arc::clone(&p.tenant)
            }
            _ => Arc::new(TenantCell::new(plan.name(), &plan.target.tenant_id)),
        };
        FeedSetup {
            plan,
            auth,
            tenant,
            feeds,
            sinks: routed,
        }
    }
}

/// A tenant whose poll tasks run.
pub(crate) struct RunningTenant {
    setup: FeedSetup,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Spawner {
    /// Spawns one poll task per feed of `setup`, under a child token of its own so the
    /// tenant can be stopped alone.
    pub(crate) fn start(&self, setup: FeedSetup) -> RunningTenant {
        let cancel = self.poll_root.child_token();
        let tasks = setup
            .feeds
            .iter()
            .map(|(feed, cell)| {
                let span = info_span!(
                    "poll",
                    tenant = %setup.plan.name(),
                    feed = %feed,
                    stream = %feed.stream()
                );
                let task = FeedTask {
                    plan: Arc::clone(&setup.plan),
                    feed: *feed,
                    log: self.writes.poll_log(),
                    credentials: self.writes.credentials(),
                    sink_names: setup.sinks.iter().map(|s| s.name.clone()).collect(),
                    client: self.client.clone(),
                    tokens: self.tokens.clone(),
                    sinks: setup.sinks.clone(),
                    stats: Arc::clone(cell),
                    tenant: Arc::clone(&setup.tenant),
                    playbooks: self.playbooks.clone().filter(|p| {
                        feed.stream() == relay_config::Stream::Alerts
                            && setup.plan.playbooks
                            && p.decider.applies_to(setup.plan.name())
                    }),
                };
                self.tracker
                    .spawn(task.run(cancel.clone()).instrument(span))
            })
            .collect();
        RunningTenant {
            setup,
            cancel,
            tasks,
        }
    }
}

impl RunningTenant {
    /// Waits for the tasks after their token was cancelled.
    async fn join(self) -> FeedSetup {
        for task in self.tasks {
            if let Err(e) = task.await {
                warn!(tenant = %self.setup.plan.name(), error = %e, "poll task ended abnormally");
            }
        }
        self.setup
    }
}

/// The running relay as reloads see it.
pub(crate) struct Live {
    /// The configuration in force.
    pub(crate) config: Config,
    pub(crate) tenants: HashMap<String, RunningTenant>,
    pub(crate) spawner: Spawner,
    /// Every sink's cell; the sinks themselves never change while running.
    pub(crate) sinks: Vec<Arc<SinkCell>>,
    pub(crate) status: StatusHandle,
    pub(crate) poll_interval_override: Option<Duration>,
    /// `(tenant, sink) → overrides` the HEC sinks hold now.
    pub(crate) hec_baseline: BTreeMap<(String, String), HecOverrides>,
    /// Each HEC sink's per-tenant labels, by sink name: how a reload changes a tenant's
    /// `[sink_overrides.NAME]` while the sink runs.
    pub(crate) hec_labels: BTreeMap<String, HecLabels>,
}

/// How a tenant to start gets its credential.
enum AuthChange {
    /// Same `[auth]`, tenant id and endpoints: the token manager keeps its entry (cached
    /// tokens, the rotated refresh token, a needs-consent state).
    Keep,
    /// New or changed: registered anew.
    Replace(Box<PreparedAuth>),
}

struct Start {
    name: String,
    plan: TenantPlan,
    auth: AuthChange,
}

/// `(tenant, sink) → overrides` of every tenant of `config` for its HEC sinks, as the sinks
/// are built (disabled tenants included).
pub(crate) fn hec_overrides(config: &Config) -> BTreeMap<(String, String), HecOverrides> {
    let mut out = BTreeMap::new();
    for t in &config.tenants {
        for (sink, o) in &t.hec_overrides {
            if matches!(config.sinks.get(sink), Some(SinkConfig::SplunkHec(_))) {
                out.insert((t.name.clone(), sink.clone()), o.clone());
            }
        }
    }
    out
}

impl Live {
    async fn reload(&mut self, new: Config) -> Result<ReloadReport, PipelineError> {
        let mut problems = fixed_section_changes(&self.config, &new);
        let label_changes = hec_override_changes(&self.hec_baseline, &new);
        for change in &label_changes {
            // A sink that is itself new or changed is reported by fixed_section_changes.
            if let Some(labels) = self.hec_labels.get(&change.sink) {
                if let Err(e) = labels.check(&change.tenant, change.overrides.as_ref()) {
                    problems.push(format!("{}: {}", change.file, chain(&e)));
                }
            }
        }

        let old: HashMap<&str, &TenantConfig> = self
            .config
            .enabled_tenants()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut report = ReloadReport::default();
        let mut starts = Vec::new();
        let mut to_prepare: Vec<TenantConfig> = Vec::new();
        for t in new.enabled_tenants() {
            let before = old.get(t.name.as_str());
            match before {
                Some(o) if same_tenant(o, t) => {
                    report.unchanged += 1;
                    continue;
                }
                Some(_) => report.restarted.push(t.name.clone()),
                None => report.added.push(t.name.clone()),
            }
            match tenant_plan(&new, t, self.poll_interval_override) {
                Ok(plan) => {
                    let keep = before.is_some_and(|o| same_credential(o, t));
                    if !keep {
                        to_prepare.push(t.clone());
                    }
                    starts.push(Start {
                        name: t.name.clone(),
                        plan,
                        auth: AuthChange::Keep,
                    });
                }
                Err(e) => problems.push(chain(&e)),
            }
        }
        let enabled: BTreeSet<&str> = new.enabled_tenants().map(|t| t.name.as_str()).collect();
        report.removed = self
            .config
            .enabled_tenants()
            .filter(|t| !enabled.contains(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect();

        // Credentials read the state store (refresh tokens): on the blocking pool.
        let state = Arc::clone(&self.spawner.state);
        let prepared = tokio::task::spawn_blocking(move || {
            to_prepare
                .iter()
                .map(|t| prepare_auth(t, &state).map_err(|e| chain(&e)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![Err(format!("state store task failed: {e}"))]);
        for p in prepared {
            match p {
                Ok(p) => {
                    if let Some(s) = starts.iter_mut().find(|s| s.name == p.auth.name) {
                        s.auth = AuthChange::Replace(Box::new(p));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            let e = PipelineError::ReloadRejected { problems };
            warn!(error = %e, "configuration reload rejected");
            return Err(e);
        }

        // Bootstrap refresh tokens go to the store before anything stops: a failure here
        // still leaves the running configuration as it was.
        let bootstraps: Vec<PreparedAuth> = starts
            .iter()
            .filter_map(|s| match &s.auth {
                AuthChange::Replace(p) if p.bootstrap => Some((**p).clone()),
                _ => None,
            })
            .collect();
        if !bootstraps.is_empty() {
            let state = Arc::clone(&self.spawner.state);
            tokio::task::spawn_blocking(move || {
                bootstraps
                    .iter()
                    .try_for_each(|p| save_bootstrap(p, &state))
            })
            .await
            .unwrap_or_else(|e| {
                Err(PipelineError::ReloadRejected {
                    problems: vec![format!("state store task failed: {e}")],
                })
            })?;
        }

        // Stop every removed and changed tenant at once, then wait for all of them.
        let stopping: Vec<RunningTenant> = report
            .removed
            .iter()
            .chain(&report.restarted)
            .filter_map(|name| self.tenants.remove(name))
            .collect();
        for t in &stopping {
            t.cancel.cancel();
        }
        let mut stopped: HashMap<String, FeedSetup> = HashMap::new();
        for t in stopping {
            let setup = t.join().await;
            stopped.insert(setup.plan.name().to_owned(), setup);
        }
        for name in &report.removed {
            self.spawner.tokens.remove_tenant(name);
            info!(tenant = %name, "tenant stopped: removed or disabled in the configuration");
        }
        // Before the tenants start, so their first events carry the new labels. Checked
        // above, so `set` cannot fail here short of a bug; if it did, the sink keeps the old
        // labels and says so rather than the reload stopping half-way.
        for change in label_changes {
            let Some(labels) = self.hec_labels.get(&change.sink) else {
                continue;
            };
            let key = (change.tenant.clone(), change.sink.clone());
            match labels.set(&change.tenant, change.overrides.as_ref()) {
                Ok(()) => {
                    info!(tenant = %change.tenant, sink = %change.sink, "sink_overrides applied");
                    match change.overrides {
                        Some(o) => self.hec_baseline.insert(key, o),
                        None => self.hec_baseline.remove(&key),
                    };
                }
                Err(e) => {
                    warn!(tenant = %change.tenant, sink = %change.sink, error = %chain(&e), "sink_overrides not applied; the previous labels stay");
                }
            }
        }

        for start in starts {
            let previous = stopped.remove(&start.name);
            let auth = match start.auth {
                AuthChange::Keep => match &previous {
                    Some(p) => p.auth.clone(),
                    // Not reachable: Keep is chosen only for a tenant that ran.
                    None => continue,
                },
                AuthChange::Replace(p) => {
                    let p = *p;
                    // A refresh token rotated while the old tasks stopped wins.
                    let state = Arc::clone(&self.spawner.state);
                    let fallback = p.auth.clone();
                    let fresh = tokio::task::spawn_blocking(move || {
                        with_stored_refresh_token(p.auth, &state)
                    })
                    .await;
                    let auth = match fresh {
                        Ok(Ok(auth)) => auth,
                        Ok(Err(e)) => {
                            warn!(tenant = %start.name, error = %chain(&e), "cannot re-read the refresh token; using the one read before the reload");
                            fallback
                        }
                        Err(e) => {
                            warn!(tenant = %start.name, error = %e, "cannot re-read the refresh token; using the one read before the reload");
                            fallback
                        }
                    };
                    self.spawner.tokens.upsert_tenant(auth.clone());
                    auth
                }
            };
            let setup = FeedSetup::new(Arc::new(start.plan), auth, &self.sinks, previous.as_ref());
            info!(
                tenant = %start.name,
                feeds = setup.feeds.len(),
                restarted = previous.is_some(),
                "tenant started"
            );
            self.tenants.insert(start.name, self.spawner.start(setup));
        }

        let mut tenant_cells = Vec::with_capacity(self.tenants.len());
        let mut feed_cells = Vec::new();
        for t in new.enabled_tenants() {
            if let Some(running) = self.tenants.get(&t.name) {
                tenant_cells.push(Arc::clone(&running.setup.tenant));
                feed_cells.extend(running.setup.feeds.iter().map(|(_, c)| Arc::clone(c)));
            }
        }
        self.status.replace_tenants(tenant_cells, feed_cells);
        self.config = new;
        info!(
            added = report.added.len(),
            removed = report.removed.len(),
            restarted = report.restarted.len(),
            unchanged = report.unchanged,
            "{report}"
        );
        Ok(report)
    }
}

/// Changes to the parts of `relay.toml` that are built once at start-up, one problem each,
/// naming the file and the section.
fn fixed_section_changes(old: &Config, new: &Config) -> Vec<String> {
    let file = new.config_file.display();
    let mut problems = Vec::new();
    let names: BTreeSet<&String> = old.sinks.keys().chain(new.sinks.keys()).collect();
    for name in names {
        let change = match (old.sinks.get(name), new.sinks.get(name)) {
            (Some(_), None) => "removed",
            (None, Some(_)) => "added",
            (Some(a), Some(b)) if !same_sink(a, b) => "changed",
            _ => continue,
        };
        problems.push(format!(
            "{file}: sinks.{name}: {change}; sink changes need a restart: {RESTART_HINT}"
        ));
    }
    let mut section = |key: &str, changed: bool| {
        if changed {
            problems.push(format!(
                "{file}: {key}: changed; it cannot change while running, it needs a restart: {RESTART_HINT}"
            ));
        }
    };
    section("state.path", old.state.path != new.state.path);
    section("state.key", !same_state_key(&old.state.key, &new.state.key));
    section("http", old.http != new.http);
    section("admin", old.admin != new.admin);
    section("outbox", old.outbox != new.outbox);
    problems
}

/// A change of one tenant's `[sink_overrides.NAME]` for a running HEC sink.
struct LabelChange {
    tenant: String,
    sink: String,
    /// The new overrides; `None` removes them (the sink's own labels apply).
    overrides: Option<HecOverrides>,
    /// The tenant file, for error messages.
    file: String,
}

/// The `[sink_overrides.NAME]` of HEC sinks that differ between what the sinks hold and the
/// enabled tenants of `new`. A tenant that is removed or disabled keeps its labels in the
/// sink: its events still queued in the outbox must reach its own index, never the shared one.
fn hec_override_changes(
    baseline: &BTreeMap<(String, String), HecOverrides>,
    new: &Config,
) -> Vec<LabelChange> {
    let current = hec_overrides(new);
    let mut changes = Vec::new();
    for t in new.enabled_tenants() {
        for (sink, config) in &new.sinks {
            if !matches!(config, SinkConfig::SplunkHec(_)) {
                continue;
            }
            let key = (t.name.clone(), sink.clone());
            if baseline.get(&key) != current.get(&key) {
                changes.push(LabelChange {
                    tenant: t.name.clone(),
                    sink: sink.clone(),
                    overrides: current.get(&key).cloned(),
                    file: t.file.display().to_string(),
                });
            }
        }
    }
    changes
}

fn same_state_key(a: &StateKey, b: &StateKey) -> bool {
    match (a, b) {
        (StateKey::Secret(a), StateKey::Secret(b)) => a == b,
        (StateKey::File(a), StateKey::File(b)) => a == b,
        _ => false,
    }
}

/// Whether a tenant needs no restart: every key of its file is the same (where the file
/// lives does not matter). Destructured so that a new field cannot be forgotten here.
fn same_tenant(a: &TenantConfig, b: &TenantConfig) -> bool {
    let TenantConfig {
        name,
        tenant_id,
        enabled,
        playbooks,
        api,
        streams,
        sinks,
        cloud,
        endpoints,
        poll_interval,
        overlap,
        availability_lag,
        first_fetch,
        auth_probe,
        auth,
        hec_overrides,
        file: _,
    } = a;
    *name == b.name
        && *tenant_id == b.tenant_id
        && *playbooks == b.playbooks
        && *enabled == b.enabled
        && *api == b.api
        && *streams == b.streams
        && *sinks == b.sinks
        && *cloud == b.cloud
        && *endpoints == b.endpoints
        && *poll_interval == b.poll_interval
        && *overlap == b.overlap
        && *availability_lag == b.availability_lag
        && *first_fetch == b.first_fetch
        && *auth_probe == b.auth_probe
        && same_auth(auth, &b.auth)
        && auth.client_secret_expires == b.auth.client_secret_expires
        && *hec_overrides == b.hec_overrides
}

/// Whether the token manager's entry of a restarted tenant can stay: everything that goes
/// into its [`TenantAuth`] is the same.
fn same_credential(a: &TenantConfig, b: &TenantConfig) -> bool {
    a.tenant_id == b.tenant_id
        && a.endpoints == b.endpoints
        && a.auth_probe == b.auth_probe
        && same_auth(&a.auth, &b.auth)
}

/// `[auth]` compared on what signs in (the secret's expiry date only drives warnings).
fn same_auth(a: &AuthConfig, b: &AuthConfig) -> bool {
    let AuthConfig {
        client_id,
        token_version,
        method,
        client_secret_expires: _,
    } = a;
    *client_id == b.client_id
        && *token_version == b.token_version
        && match (method, &b.method) {
            (
                AuthMethod::RefreshToken {
                    client_secret: s1,
                    refresh_token: r1,
                },
                AuthMethod::RefreshToken {
                    client_secret: s2,
                    refresh_token: r2,
                },
            ) => s1 == s2 && r1 == r2,
            (
                AuthMethod::ClientSecret { client_secret: s1 },
                AuthMethod::ClientSecret { client_secret: s2 },
            ) => s1 == s2,
            (
                AuthMethod::Certificate {
                    certificate_file: f1,
                    certificate_pem: c1,
                    private_key: k1,
                },
                AuthMethod::Certificate {
                    certificate_file: f2,
                    certificate_pem: c2,
                    private_key: k2,
                },
            ) => f1 == f2 && c1 == c2 && k1 == k2,
            _ => false,
        }
}

/// Whether two `[sinks.NAME]` tables build the same sink. Secrets included (a new HEC
/// token is a change); the types without a `PartialEq` are destructured field by field so
/// that a new field cannot be forgotten here.
fn same_sink(a: &SinkConfig, b: &SinkConfig) -> bool {
    match (a, b) {
        (SinkConfig::File(a), SinkConfig::File(b)) => a == b,
        (SinkConfig::Syslog(a), SinkConfig::Syslog(b)) => a == b,
        (SinkConfig::SplunkHec(a), SinkConfig::SplunkHec(b)) => same_hec(a, b),
        (SinkConfig::Kafka(a), SinkConfig::Kafka(b)) => same_kafka(a, b),
        _ => false,
    }
}

fn same_hec(a: &SplunkHecConfig, b: &SplunkHecConfig) -> bool {
    let SplunkHecConfig {
        url,
        token,
        index,
        source,
        sourcetype_incidents,
        sourcetype_alerts,
        sourcetype_actions,
        host,
        gzip,
        gzip_level,
        request_timeout,
        batch,
        indexer_ack,
        max_in_flight,
        tls,
    } = a;
    *url == b.url
        && *token == b.token
        && *index == b.index
        && *source == b.source
        && *sourcetype_incidents == b.sourcetype_incidents
        && *sourcetype_alerts == b.sourcetype_alerts
        && *sourcetype_actions == b.sourcetype_actions
        && *host == b.host
        && *gzip == b.gzip
        && *gzip_level == b.gzip_level
        && *request_timeout == b.request_timeout
        && *batch == b.batch
        && *indexer_ack == b.indexer_ack
        && *max_in_flight == b.max_in_flight
        && *tls == b.tls
}

fn same_kafka(a: &KafkaConfig, b: &KafkaConfig) -> bool {
    let KafkaConfig {
        brokers,
        topic,
        compression,
        librdkafka,
    } = a;
    *brokers == b.brokers
        && *topic == b.topic
        && *compression == b.compression
        && *librdkafka == b.librdkafka
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = r#"
[state]
path = "state.db"
key_file = "state.key"

[sinks.splunk]
type = "splunk_hec"
url = "https://splunk.example:8088"
token = { env = "HEC_TOKEN" }

[sinks.files]
type = "file"
path = "out"
"#;

    fn tenant(name: &str, id: u8, extra: &str) -> String {
        format!(
            r#"
name = "{name}"
tenant_id = "00000000-0000-4000-8000-0000000000{id:02}"
sinks = ["splunk", "files"]
[auth]
kind = "client_secret"
client_id = "11111111-1111-4111-8111-111111111111"
client_secret = {{ env = "SECRET_{name}" }}
{extra}
"#
        )
    }

    /// Loads `relay` and `tenants` written to `dir` (the same directory for the old and
    /// the new configuration, as in the daemon: relative paths resolve alike).
    fn load(
        dir: &std::path::Path,
        relay: &str,
        tenants: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Config {
        std::fs::write(dir.join("relay.toml"), relay).unwrap();
        let tenants_dir = dir.join("tenants.d");
        let _ = std::fs::remove_dir_all(&tenants_dir);
        std::fs::create_dir(&tenants_dir).unwrap();
        for (file, text) in tenants {
            std::fs::write(tenants_dir.join(file), text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        relay_config::load(&relay_config::LoadOptions::new(
            dir.join("relay.toml"),
            &env,
        ))
        .unwrap()
    }

    const ENV: &[(&str, &str)] = &[
        ("HEC_TOKEN", "hec-1"),
        ("SECRET_a", "s-a"),
        ("SECRET_b", "s-b"),
    ];

    fn base(dir: &std::path::Path) -> Config {
        load(
            dir,
            RELAY,
            &[
                ("a.toml", tenant("a", 1, "")),
                ("b.toml", tenant("b", 2, "")),
            ],
            ENV,
        )
    }

    #[test]
    fn identical_files_change_nothing_and_a_moved_file_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let old = base(dir.path());
        let mut new = base(dir.path());
        assert!(fixed_section_changes(&old, &new).is_empty());
        assert!(hec_override_changes(&hec_overrides(&old), &new).is_empty());
        new.tenants[0].file = "/elsewhere/a.toml".into();
        assert!(same_tenant(&old.tenants[0], &new.tenants[0]));
    }

    #[test]
    fn poll_changes_restart_but_keep_the_credential_and_secret_changes_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let old = base(dir.path());
        let slower = load(
            dir.path(),
            RELAY,
            &[(
                "a.toml",
                tenant("a", 1, "").replace("sinks =", "poll_interval_secs = 120\nsinks ="),
            )],
            ENV,
        );
        assert!(!same_tenant(&old.tenants[0], &slower.tenants[0]));
        assert!(same_credential(&old.tenants[0], &slower.tenants[0]));

        let rotated = load(
            dir.path(),
            RELAY,
            &[("a.toml", tenant("a", 1, ""))],
            &[("HEC_TOKEN", "hec-1"), ("SECRET_a", "s-a2")],
        );
        assert!(!same_tenant(&old.tenants[0], &rotated.tenants[0]));
        assert!(!same_credential(&old.tenants[0], &rotated.tenants[0]));
    }

    #[test]
    fn sink_and_fixed_section_changes_are_named_with_the_restart_hint() {
        let dir = tempfile::tempdir().unwrap();
        let old = base(dir.path());
        let new = load(
            dir.path(),
            &RELAY.replace("path = \"out\"", "path = \"out2\"").replace(
                "[sinks.files]",
                "[http]\nmax_requests_in_flight = 3\n\n[sinks.files]",
            ),
            &[
                ("a.toml", tenant("a", 1, "")),
                ("b.toml", tenant("b", 2, "")),
            ],
            &[
                ("HEC_TOKEN", "hec-2"),
                ("SECRET_a", "s-a"),
                ("SECRET_b", "s-b"),
            ],
        );
        let problems = fixed_section_changes(&old, &new);
        let file = new.config_file.display();
        assert_eq!(
            problems,
            [
                format!("{file}: sinks.files: changed; sink changes need a restart: systemctl restart xdr-relay"),
                format!("{file}: sinks.splunk: changed; sink changes need a restart: systemctl restart xdr-relay"),
                format!("{file}: http: changed; it cannot change while running, it needs a restart: systemctl restart xdr-relay"),
            ]
        );
    }

    #[test]
    fn hec_override_changes_name_tenant_sink_and_new_labels() {
        let dir = tempfile::tempdir().unwrap();
        let old = base(dir.path());
        let overridden = tenant("a", 1, "[sink_overrides.splunk]\nindex = \"cust_a\"");
        let new = load(
            dir.path(),
            RELAY,
            &[
                ("a.toml", overridden),
                ("b.toml", tenant("b", 2, "")),
                ("c.toml", tenant("c", 3, "")),
            ],
            &[
                ("HEC_TOKEN", "hec-1"),
                ("SECRET_a", "s-a"),
                ("SECRET_b", "s-b"),
                ("SECRET_c", "s-c"),
            ],
        );
        let changes = hec_override_changes(&hec_overrides(&old), &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].tenant, "a");
        assert_eq!(changes[0].sink, "splunk");
        assert!(changes[0].file.ends_with("a.toml"), "{}", changes[0].file);
        assert_eq!(
            changes[0]
                .overrides
                .as_ref()
                .and_then(|o| o.index.as_deref()),
            Some("cust_a")
        );
        // And back: removing the table removes the labels.
        let back = hec_override_changes(&hec_overrides(&new), &old);
        assert_eq!(back.len(), 1);
        assert!(back[0].overrides.is_none());
        // A tenant that goes away keeps its labels (its queued events go to its index).
        let without_a = load(
            dir.path(),
            RELAY,
            &[
                ("b.toml", tenant("b", 2, "")),
                ("c.toml", tenant("c", 3, "")),
            ],
            &[
                ("HEC_TOKEN", "hec-1"),
                ("SECRET_b", "s-b"),
                ("SECRET_c", "s-c"),
            ],
        );
        assert!(hec_override_changes(&hec_overrides(&new), &without_a).is_empty());
    }

    #[test]
    fn report_summarises_in_one_line() {
        let r = ReloadReport {
            added: vec!["c".into(), "d".into()],
            removed: vec![],
            restarted: vec!["a".into()],
            unchanged: 7,
        };
        assert_eq!(
            r.to_string(),
            "configuration reloaded: 2 added (c, d), 0 removed, 1 restarted (a), 7 unchanged"
        );
    }
}
