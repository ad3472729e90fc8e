//! The relay: built once from the configuration, run until cancelled, then drained.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relay_auth::{ManagerOptions, TokenManager};
use relay_config::Config;
use relay_defender::{AdmissionLimits, ClientOptions, DefenderClient, RateLimits, TokenProvider};
use relay_sinks::splunk_hec::HecLabels;
use relay_sinks::{AnySink, Sink};
use relay_state::{State, StateStore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::build::{http_client, sink, tenant_auth, tenant_plan, HttpPurpose};
use crate::error::PipelineError;
use crate::poll::Playbooks;
use crate::reload::{hec_overrides, Control, FeedSetup, Live, ReloadHandle, Spawner};
use crate::sink_worker::{SinkRetry, SinkWorker, StopSignals};
use crate::status::{EngineSources, SinkCell, StatusHandle};
use crate::token_store::StateTokenStore;
use relay_playbooks::{Decider, Executor, ExecutorStats, TenantInfo};

/// Knobs that are not operator configuration: how the binary, the demo and tests run the
/// relay. `Default` is what the daemon wants.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// After shutdown is requested and polling stopped, how long sink workers may keep
    /// delivering what is in their outboxes before they are stopped (what is left is
    /// delivered after the next start). Default 10 s.
    pub shutdown_grace: Duration,
    /// Poll every (tenant, feed) at this interval instead of the configured one. Not
    /// subject to the configuration's 10 s floor: for the demo and tests against the
    /// simulator.
    pub poll_interval_override: Option<Duration>,
    /// Client-side API quotas per tenant; `None` keeps the defaults, a little under
    /// Microsoft's published limits.
    pub rate_limits: Option<RateLimits>,
    /// Upper bound of the backoff between delivery retries of a sink failing transiently.
    /// Default 30 s.
    pub sink_retry_cap: Duration,
    /// After a permanent delivery failure, how long a sink stays stopped before delivery
    /// is tried again (in case the destination was fixed). Default 5 min.
    pub sink_stopped_retry: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            shutdown_grace: Duration::from_secs(10),
            poll_interval_override: None,
            rate_limits: None,
            sink_retry_cap: Duration::from_secs(30),
            sink_stopped_retry: Duration::from_secs(300),
        }
    }
}

/// What a run did, returned by [`Relay::run`] after the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Polls that ran.
    pub polls: u64,
    /// Failed polls.
    pub poll_errors: u64,
    /// New versions committed to the outboxes.
    pub events: u64,
    /// Events acknowledged by the sinks.
    pub delivered: u64,
    /// Rows left in each sink's outbox at exit (delivered after the next start).
    pub left_in_outbox: BTreeMap<String, u64>,
}

/// The running engine: every tenant's poll tasks and every sink's worker, sharing one
/// token manager, one API client (with one admission gate for requests in flight) and one
/// state store.
pub struct Relay {
    state: Arc<StateStore>,
    /// The store's async face (group commits); every task's writes go through it.
    writes: State,
    tokens: TokenManager,
    client: DefenderClient,
    tenants: Vec<FeedSetup>,
    sinks: Vec<(AnySink, Arc<SinkCell>)>,
    status: StatusHandle,
    opts: RelayOptions,
    /// The configuration built from, for reloads to compare with.
    config: Config,
    control: Arc<Control>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("tenants", &self.tenants.len())
            .field("sinks", &self.sinks.len())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Builds the relay for every enabled tenant and every configured sink of `config`.
    /// Nothing runs yet and no event is sent (a Kafka sink's librdkafka producer starts
    /// connecting to its brokers); the state store is read (stored refresh tokens, outbox
    /// depths) and a refresh-token tenant's bootstrap token is saved to it.
    ///
    /// Fails, naming the tenant or sink, on a refresh-token tenant without a state key or
    /// without any refresh token, a sink configuration the sink refuses (a bad template, an
    /// unreadable TLS file), a tenant routed to no or an unknown sink.
    pub fn new(
        config: &Config,
        state: Arc<StateStore>,
        opts: RelayOptions,
    ) -> Result<Relay, PipelineError> {
        let api_http = http_client(&config.http, HttpPurpose::Api)?;
        let token_http = http_client(&config.http, HttpPurpose::Token)?;
        let tokens = TokenManager::new(
            token_http,
            Arc::new(StateTokenStore::new(Arc::clone(&state))),
            ManagerOptions {
                request_timeout: config.http.request_timeout,
                ..ManagerOptions::default()
            },
        );
        let max_in_flight = config.http.max_requests_in_flight.max(1);
        let mut client_options = ClientOptions {
            user_agent: config.http.user_agent.clone(),
            request_timeout: config.http.request_timeout,
            admission: AdmissionLimits {
                min: 4.min(max_in_flight),
                max: max_in_flight,
                initial: 16.min(max_in_flight),
            },
            ..ClientOptions::default()
        };
        if let Some(limits) = &opts.rate_limits {
            client_options.rate_limits = limits.clone();
        }
        let provider: Arc<dyn TokenProvider> = Arc::new(tokens.clone());
        let client = DefenderClient::new(api_http, provider, client_options);

        let mut sinks = Vec::with_capacity(config.sinks.len());
        for (name, sink_config) in &config.sinks {
            let built = sink(name, sink_config, &config.tenants)?;
            let depth = state.depth(name).map_err(|source| PipelineError::State {
                context: format!("sink {name}: cannot read its outbox depth"),
                source: Box::new(source),
            })?;
            let cell = Arc::new(SinkCell::new(name, built.kind(), depth));
            sinks.push((built, cell));
        }

        let sink_cells: Vec<Arc<SinkCell>> = sinks.iter().map(|(_, c)| Arc::clone(c)).collect();
        let mut tenants = Vec::new();
        for tenant in config.enabled_tenants() {
            let plan = Arc::new(tenant_plan(config, tenant, opts.poll_interval_override)?);
            let auth = tenant_auth(tenant, &state)?;
            tokens.upsert_tenant(auth.clone());
            tenants.push(FeedSetup::new(plan, auth, &sink_cells, None));
        }

        let status = StatusHandle::new(
            tokens.clone(),
            tenants.iter().map(|t| Arc::clone(&t.tenant)).collect(),
            tenants
                .iter()
                .flat_map(|t| t.feeds.iter().map(|(_, cell)| Arc::clone(cell)))
                .collect(),
            sinks.iter().map(|(_, cell)| Arc::clone(cell)).collect(),
        );
        status.attach_engine(EngineSources {
            admission: Arc::clone(client.admission()),
            client: client.clone(),
            state: Arc::clone(&state),
        });
        let writes = State::start(Arc::clone(&state)).map_err(|source| PipelineError::State {
            context: "cannot start the state writer".into(),
            source: Box::new(source),
        })?;
        Ok(Relay {
            state,
            writes,
            tokens,
            client,
            tenants,
            sinks,
            status,
            opts,
            config: config.clone(),
            control: Arc::new(Control::new()),
        })
    }

    /// A live view of polls, events, errors, lag and auth state per (tenant, feed) and of
    /// deliveries and outbox depth per sink. Cheap to clone and to snapshot.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// The handle through which the binary hands a reloaded configuration to the running
    /// relay (SIGHUP); see [`ReloadHandle::reload`]. Take it before [`Relay::run`]; a
    /// reload is refused until `run` has started the tasks and once shutdown began.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle::new(Arc::clone(&self.control))
    }

    /// Runs every poll task and sink worker until `shutdown` is cancelled, then shuts down
    /// in order: no new polls start and polls in flight stop at their next page fetch
    /// (commits already started finish; an uncommitted page is simply polled again after
    /// restart); then sink workers get [`RelayOptions::shutdown_grace`] to deliver what is
    /// in their outboxes, and each sink is shut down. Returns once every task has ended.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, PipelineError> {
        let Relay {
            state,
            writes,
            tokens,
            client,
            tenants,
            sinks,
            status,
            opts,
            config,
            control,
        } = self;
        info!(
            tenants = tenants.len(),
            feeds = tenants.iter().map(|t| t.feeds.len()).sum::<usize>(),
            sinks = sinks.len(),
            "relay starting"
        );

        let stop = StopSignals {
            drain: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let retry = SinkRetry {
            base: Duration::from_millis(500).min(opts.sink_retry_cap),
            cap: opts.sink_retry_cap,
            stopped: opts.sink_stopped_retry,
        };
        let sink_tasks = TaskTracker::new();
        let sink_names: Vec<String> = sinks.iter().map(|(_, c)| c.name.clone()).collect();
        let sink_cells: Vec<Arc<SinkCell>> = sinks.iter().map(|(_, c)| Arc::clone(c)).collect();
        let hec_labels: BTreeMap<String, HecLabels> = sinks
            .iter()
            .filter_map(|(sink, cell)| Some((cell.name.clone(), sink.labels()?)))
            .collect();
        for (sink, cell) in sinks {
            let span = info_span!("sink", sink = %cell.name, kind = sink.kind());
            let worker = SinkWorker {
                sink,
                outbox: writes.outbox(),
                cell,
                retry,
            };
            sink_tasks.spawn(worker.run(stop.clone()).instrument(span));
        }
        sink_tasks.close();

        // One child token per tenant, so a tenant can be stopped alone (offboarding,
        // config reload) without touching the others.
        let poll_tasks = TaskTracker::new();
        let poll_root = shutdown.child_token();
        let playbooks = start_playbooks(
            &status,
            &config,
            &state,
            &writes,
            &client,
            &tenants,
            &sink_cells,
            &poll_tasks,
            &poll_root,
        )?;
        let spawner = Spawner {
            state: Arc::clone(&state),
            writes: writes.clone(),
            client,
            tokens,
            poll_root,
            tracker: poll_tasks.clone(),
            playbooks,
        };
        let running = tenants
            .into_iter()
            .map(|setup| (setup.plan.name().to_owned(), spawner.start(setup)))
            .collect();
        control
            .set_running(Live {
                hec_baseline: hec_overrides(&config),
                hec_labels,
                config,
                tenants: running,
                spawner,
                sinks: sink_cells,
                status: status.clone(),
                poll_interval_override: opts.poll_interval_override,
            })
            .await;

        shutdown.cancelled().await;
        info!("shutdown requested; finishing polls in flight");
        // Reloads spawn tasks: the tracker may close only once none can run any more.
        control.stop().await;
        poll_tasks.close();
        poll_tasks.wait().await;
        info!(grace = ?opts.shutdown_grace, "polling stopped; delivering what is in the outboxes");
        stop.drain.cancel();
        tokio::select! {
            _ = sink_tasks.wait() => {}
            _ = tokio::time::sleep(opts.shutdown_grace) => {
                warn!(grace = ?opts.shutdown_grace, "shutdown grace period over; stopping sinks with events still queued (they are delivered after the next start)");
                stop.hard.cancel();
                sink_tasks.wait().await;
            }
        }

        let snapshot = status.snapshot();
        let mut left_in_outbox = BTreeMap::new();
        for name in sink_names {
            let rows = snapshot.sink(&name).map_or(0, |s| s.outbox.rows);
            left_in_outbox.insert(name, rows);
        }
        let retired = status.retired();
        let report = RunReport {
            polls: snapshot.polls() + retired.polls,
            poll_errors: snapshot.poll_errors() + retired.poll_errors,
            events: snapshot.events() + retired.events,
            delivered: snapshot.delivered(),
            left_in_outbox,
        };
        info!(
            polls = report.polls,
            events = report.events,
            delivered = report.delivered,
            "relay stopped"
        );
        Ok(report)
    }
}

/// The playbooks' decider, restored from the action journal, and the executor carrying
/// out what it decides (spawned on the poll tracker: it stops with the polls, before the
/// sinks drain, so its last audit events are delivered). `None` without playbooks.
#[allow(clippy::too_many_arguments)]
fn start_playbooks(
    status: &StatusHandle,
    config: &Config,
    state: &Arc<StateStore>,
    writes: &State,
    client: &DefenderClient,
    tenants: &[FeedSetup],
    sinks: &[Arc<SinkCell>],
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Option<Playbooks>, PipelineError> {
    if config.playbooks.is_empty() {
        return Ok(None);
    }
    let journal = state
        .actions_in(&[])
        .map_err(|source| PipelineError::State {
            context: "cannot read the response-action journal".into(),
            source: Box::new(source),
        })?;
    let decider = Arc::new(Decider::new(
        config.playbooks.values().cloned().collect(),
        &journal,
    ));
    let stats = Arc::new(ExecutorStats::default());
    let infos = tenants
        .iter()
        .map(|t| {
            let feed = t
                .plan
                .feeds
                .iter()
                .find(|f| f.stream() == relay_config::Stream::Alerts)
                .map_or(relay_config::Feed::GraphAlerts.as_str(), |f| f.as_str());
            let info = TenantInfo {
                target: t.plan.target.clone(),
                sinks: t.sinks.iter().map(|s| s.name.clone()).collect(),
                feed,
            };
            (t.plan.name().to_owned(), info)
        })
        .collect();
    let cells: Vec<Arc<SinkCell>> = sinks.to_vec();
    let executor = Executor::new(
        client.clone(),
        writes.poll_log(),
        Arc::clone(state),
        infos,
        Arc::clone(&stats),
        EXECUTOR_EVERY,
        Arc::new(move || cells.iter().for_each(|c| c.wake.notify_one())),
    );
    info!(
        playbooks = config.playbooks.len(),
        journal = journal.len(),
        "response playbooks active"
    );
    tracker.spawn(
        executor
            .run(cancel.clone())
            .instrument(info_span!("playbooks", stream = "actions")),
    );
    status.attach_actions(Arc::clone(&stats));
    Ok(Some(Playbooks { decider, stats }))
}

/// How often the executor looks at the journal for work.
const EXECUTOR_EVERY: Duration = Duration::from_secs(1);
