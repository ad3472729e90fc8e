//! The harness: a simulator, a temp directory with the state file and the file sink's
//! output, and a `Config` built in code (so poll intervals can go below the config
//! validation floor) pointing every tenant at the simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_config::{
    AdminConfig, Api, AuthConfig, AuthMethod, Cloud, Config, Feed, FileSinkConfig, HttpConfig,
    OutboxConfig, Secret, SinkConfig, StateConfig, Stream, TenantConfig, TenantDefaults,
    TokenVersion,
};
use relay_pipeline::{Relay, RelayOptions, RelayStatus, RunReport, StatusHandle};
use relay_sim::{Sim, SimConfig};
use relay_state::{StateKey, StateStore, StoreOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a test tenant signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    ClientSecret,
    RefreshToken,
}

/// One tenant of a test: which simulated tenant, through which API, signing in how.
#[derive(Debug, Clone, Copy)]
pub struct TenantSpec {
    pub sim_index: usize,
    pub api: Api,
    pub auth: Auth,
}

pub fn spec(sim_index: usize, api: Api, auth: Auth) -> TenantSpec {
    TenantSpec {
        sim_index,
        api,
        auth,
    }
}

/// A simulator with short visibility delays and token lifetimes, lively activity and a
/// small backlog an hour deep.
pub fn sim_config(tenants: usize, seed: u64) -> SimConfig {
    SimConfig {
        tenants,
        seed,
        access_token_lifetime: Duration::from_secs(4),
        refresh_token_grace: Duration::from_secs(30),
        late_visibility: Duration::from_millis(300),
        late_visibility_jitter: Duration::ZERO,
        activity: 40,
        backlog: 8,
        backlog_span: Duration::from_secs(3600),
        // No 120-item bulk updates: they make the test slow, not more thorough here
        // (the defender crate tests paging through them).
        burst_size: 0,
        quotas_enabled: false,
        ..SimConfig::default()
    }
}

pub fn tenant_name(i: usize) -> String {
    format!("t{i}")
}

/// The config of `specs` against `sim`, with one file sink `out` writing to `sink_dir`.
pub fn config(sim: &Sim, specs: &[TenantSpec], dir: &Path, sink_dir: &Path) -> Config {
    let endpoints = sim.endpoints();
    let tenants = specs
        .iter()
        .map(|s| {
            let t = &sim.tenants()[s.sim_index];
            let method = match s.auth {
                Auth::ClientSecret => AuthMethod::ClientSecret {
                    client_secret: Secret::new(t.client_secret.clone()),
                },
                Auth::RefreshToken => AuthMethod::RefreshToken {
                    client_secret: Some(Secret::new(t.client_secret.clone())),
                    refresh_token: Some(Secret::new(t.refresh_token.clone())),
                },
            };
            TenantConfig {
                name: tenant_name(s.sim_index),
                tenant_id: t.tenant_id.clone(),
                enabled: true,
                playbooks: true,
                api: s.api,
                streams: vec![Stream::Incidents, Stream::Alerts],
                sinks: vec!["out".to_string()],
                cloud: Cloud::Custom(endpoints.clone()),
                endpoints: endpoints.clone(),
                poll_interval: Duration::from_secs(1),
                overlap: Duration::from_secs(20),
                availability_lag: Duration::from_millis(500),
                first_fetch: Duration::from_secs(2 * 3600),
                auth_probe: relay_config::AuthProbe::default(),
                auth: AuthConfig {
                    client_id: t.client_id.clone(),
                    token_version: TokenVersion::V2,
                    method,
                    client_secret_expires: None,
                },
                hec_overrides: BTreeMap::new(),
                file: dir.join(format!("tenants.d/{}.toml", tenant_name(s.sim_index))),
            }
        })
        .collect();
    let mut sinks = BTreeMap::new();
    sinks.insert(
        "out".to_string(),
        SinkConfig::File(FileSinkConfig {
            path: sink_dir.to_path_buf(),
            max_file_bytes: 1 << 30,
            max_files: 10,
        }),
    );
    Config {
        config_file: dir.join("relay.toml"),
        config_dir: dir.to_path_buf(),
        tenants_dir: dir.join("tenants.d"),
        state: StateConfig {
            path: dir.join("state.db"),
            key: relay_config::StateKey::File(dir.join("state.key")),
        },
        defaults: TenantDefaults::default(),
        http: HttpConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            ..HttpConfig::default()
        },
        admin: AdminConfig::default(),
        outbox: OutboxConfig::default(),
        sinks,
        playbooks: BTreeMap::new(),
        tenants,
    }
}

pub fn open_state(dir: &Path, options: StoreOptions) -> Arc<StateStore> {
    let key = StateKey::from_bytes([42; 32]);
    Arc::new(StateStore::open(&dir.join("state.db"), Some(&key), options).unwrap())
}

/// 1 s polls, and no client-side quotas (the simulator's are off unless a test turns them
/// on): M365 Defender's 45/min would stretch 1 s polls, and a version superseded between
/// two polls can never be seen although the ground truth lists it.
pub fn options() -> RelayOptions {
    RelayOptions {
        shutdown_grace: Duration::from_secs(10),
        poll_interval_override: Some(Duration::from_secs(1)),
        rate_limits: Some(relay_defender::RateLimits::unlimited()),
        ..RelayOptions::default()
    }
}

/// A relay running in the background.
pub struct Running {
    pub status: StatusHandle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<RunReport, relay_pipeline::PipelineError>>,
}

pub fn start(config: &Config, state: Arc<StateStore>, opts: RelayOptions) -> Running {
    let relay = Relay::new(config, state, opts).unwrap();
    let status = relay.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    Running {
        status,
        shutdown,
        task,
    }
}

impl Running {
    /// Cancels and waits for the drain; the report.
    pub async fn stop(self) -> RunReport {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay did not stop within 30 s")
            .unwrap()
            .unwrap()
    }
}

/// Polls `cond` on the status every 100 ms until it holds, or panics after `limit` with
/// `what` and the last snapshot.
pub async fn wait_for(
    status: &StatusHandle,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut(&RelayStatus) -> bool,
) -> RelayStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = status.snapshot();
        if cond(&s) {
            return s;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; status: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every feed of `tenants` has committed a window ending after `t`, and every event
/// committed has been delivered.
pub fn caught_up(s: &RelayStatus, tenants: &[String], t: DateTime<Utc>) -> bool {
    s.feeds
        .iter()
        .filter(|f| tenants.contains(&f.tenant))
        .all(|f| f.checkpoint.is_some_and(|c| c > t))
        && s.outbox_rows() == 0
        && s.events() == s.delivered()
}

/// One delivered version: (tenant id, feed, id, version time).
pub type Version = (String, Feed, String, DateTime<Utc>);

/// Every line of every file the file sink wrote in `dir`, as versions, in file order.
pub fn delivered(dir: &Path) -> Vec<Version> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        if f.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad line in {}: {e}: {line}", f.display()));
            let feed: Feed = serde_json::from_value(v["feed"].clone()).unwrap();
            let t: DateTime<Utc> = v["version_time"].as_str().unwrap().parse().unwrap();
            out.push((
                v["tenant_id"].as_str().unwrap().to_string(),
                feed,
                v["id"].as_str().unwrap().to_string(),
                t,
            ));
            // The raw document is the item itself.
            assert!(v["event"].is_object(), "{line}");
        }
    }
    out
}

/// The ground truth for the (tenant, feed) pairs of `specs`.
pub fn expected(sim: &Sim, specs: &[TenantSpec]) -> BTreeSet<Version> {
    let wanted: HashMap<String, Vec<Feed>> = specs
        .iter()
        .map(|s| {
            (
                sim.tenants()[s.sim_index].tenant_id.clone(),
                vec![
                    Feed::of(s.api, Stream::Incidents),
                    Feed::of(s.api, Stream::Alerts),
                ],
            )
        })
        .collect();
    sim.ground_truth()
        .into_iter()
        .filter(|v| {
            wanted
                .get(&v.tenant_id)
                .is_some_and(|f| f.contains(&v.feed))
        })
        .map(|v| (v.tenant_id, v.feed, v.id, v.last_update))
        .collect()
}

/// Asserts `delivered` holds every version of `expected` exactly once and nothing else.
pub fn assert_exactly_once(delivered: &[Version], expected: &BTreeSet<Version>) {
    let mut counts: BTreeMap<&Version, usize> = BTreeMap::new();
    for v in delivered {
        *counts.entry(v).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|v| !counts.contains_key(v))
        .collect();
    let extra: Vec<_> = counts.keys().filter(|v| !expected.contains(**v)).collect();
    // For a missing version, the item's other versions: one superseded within a poll
    // interval may never have been visible to a poll.
    let versions_of_missing: Vec<_> = missing
        .iter()
        .map(|m| {
            let others: Vec<_> = expected
                .iter()
                .filter(|v| v.0 == m.0 && v.1 == m.1 && v.2 == m.2)
                .map(|v| (v.3, counts.contains_key(v)))
                .collect();
            (m.2.clone(), others)
        })
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "{} delivered, {} expected; delivered twice: {twice:?}; missing: {missing:?}; \
         not in ground truth: {extra:?}; versions (time, delivered) of the missing items: {versions_of_missing:?}",
        delivered.len(),
        expected.len()
    );
}
