//! The admin HTTP server and the credential watcher behind it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use parking_lot::RwLock;
use relay_config::Config;
use relay_pipeline::{RelayStatus, StatusHandle};
use relay_state::StateStore;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::health::{CredentialHealth, CredentialReport, Expiry, TenantSignals};
use crate::ready::readiness;

/// How often credential expiry is re-assessed (refresh tokens rotate; time passes).
const CHECK_EVERY: Duration = Duration::from_secs(15 * 60);

/// A credential warning is logged at most this often per tenant and topic.
const LOG_EVERY: Duration = Duration::from_secs(24 * 3600);

/// How long [`RunningAdmin::stop`] waits for open connections before dropping them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// `text/plain; version=0.0.4`: the Prometheus text format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configured address cannot be listened on: in use, not an address of this host,
    /// or a privileged port.
    #[error(
        "cannot listen on {addr} for the admin endpoint (/healthz, /readyz, /metrics); \
         change [admin] listen in relay.toml"
    )]
    Bind {
        /// `[admin] listen`.
        addr: SocketAddr,
        /// The operating system's refusal.
        #[source]
        source: std::io::Error,
    },
}

/// Where the admin endpoint reads its answers from.
pub struct AdminSources {
    snapshot: Box<dyn Fn() -> RelayStatus + Send + Sync>,
    state: Option<Arc<StateStore>>,
    credentials: CredentialHealth,
    poll_intervals: BTreeMap<String, Duration>,
    shutting_down: CancellationToken,
}

impl std::fmt::Debug for AdminSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSources")
            .field("poll_intervals", &self.poll_intervals.len())
            .finish_non_exhaustive()
    }
}

impl AdminSources {
    /// The daemon's sources: the live status of the relay built from `config`, the state
    /// store (for refresh-token save times) and the token that is cancelled when shutdown
    /// begins (`/readyz` answers 503 from then on).
    pub fn new(
        config: &Config,
        state: Arc<StateStore>,
        status: StatusHandle,
        shutting_down: CancellationToken,
    ) -> AdminSources {
        let mut sources =
            AdminSources::from_snapshots(config, move || status.snapshot(), shutting_down);
        sources.state = Some(state);
        sources
    }

    /// Sources reading status snapshots from `snapshot` and no state store, for tests.
    pub fn from_snapshots(
        config: &Config,
        snapshot: impl Fn() -> RelayStatus + Send + Sync + 'static,
        shutting_down: CancellationToken,
    ) -> AdminSources {
        AdminSources {
            snapshot: Box::new(snapshot),
            state: None,
            credentials: CredentialHealth::new(config, config.enabled_tenants()),
            poll_intervals: config
                .enabled_tenants()
                .map(|t| (t.name.clone(), t.poll_interval))
                .collect(),
            shutting_down,
        }
    }
}

struct Shared {
    sources: AdminSources,
    /// The credential watcher's latest assessment.
    credentials: RwLock<Vec<Expiry>>,
}

/// A bound, not yet serving admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` (`[admin] listen`). Done before anything else starts, so a taken port
    /// is a start-up error rather than a relay without metrics.
    pub async fn bind(addr: SocketAddr) -> Result<AdminServer, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminServer { listener, addr })
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` and runs the credential watcher until
    /// [`RunningAdmin::stop`].
    pub fn spawn(self, sources: AdminSources) -> RunningAdmin {
        let shared = Arc::new(Shared {
            sources,
            credentials: RwLock::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let addr = self.addr;
        info!(%addr, "admin endpoint listening: /healthz, /readyz, /metrics");
        let server = axum::serve(self.listener, router(Arc::clone(&shared)))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(e) = server.await {
                error!(%addr, error = %e, "admin endpoint failed; /metrics and probes are down");
            }
        });
        tasks.spawn(watch_credentials(shared, stop.clone()));
        tasks.close();
        RunningAdmin { stop, tasks, addr }
    }
}

/// The running admin endpoint.
#[derive(Debug)]
pub struct RunningAdmin {
    stop: CancellationToken,
    tasks: TaskTracker,
    addr: SocketAddr,
}

impl RunningAdmin {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; requests in flight get a short grace, then connections are dropped.
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            debug!("admin connections still open after the grace; dropping them");
        }
    }
}

/// The routes, on `shared`. Public to the crate for tests without a socket.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; this endpoint serves /healthz, /readyz and /metrics\n",
            )
        })
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let status = (shared.sources.snapshot)();
    let r = readiness(&status, shared.sources.shutting_down.is_cancelled());
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // Thousands of tenants make a few megabytes of text: render off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let status = (shared.sources.snapshot)();
        let credentials = shared.credentials.read().clone();
        crate::metrics::render(&status, &credentials, &shared.sources.poll_intervals)
    })
    .await;
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            error!(error = %e, "rendering /metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response()
        }
    }
}

/// Re-assesses credential expiry every [`CHECK_EVERY`], publishes it for `/metrics` and
/// logs each warning once a day per tenant and topic.
async fn watch_credentials(shared: Arc<Shared>, stop: CancellationToken) {
    let mut logged: HashMap<(String, &'static str), Instant> = HashMap::new();
    loop {
        let report = assess(&shared).await;
        *shared.credentials.write() = report.expiries.clone();
        log_due(&report, &mut logged, Instant::now());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn assess(shared: &Arc<Shared>) -> CredentialReport {
    let sources = &shared.sources;
    let mut signals: HashMap<String, TenantSignals> = HashMap::new();
    if let Some(state) = &sources.state {
        let state = Arc::clone(state);
        match tokio::task::spawn_blocking(move || state.status_snapshot()).await {
            Ok(Ok(snapshot)) => {
                for t in snapshot.tenants {
                    signals.entry(t.tenant).or_default().refresh_token_saved =
                        t.refresh_token_saved;
                }
            }
            Ok(Err(e)) => warn!(
                error = %e,
                "cannot read refresh-token save times from the state store; their expiry is \
                 not watched this round"
            ),
            Err(e) => warn!(error = %e, "reading the state store for credential checks failed"),
        }
    }
    // The live auth state, not the stored one: a state left from before a restart must not
    // raise (and then silence for a day) a consent warning that no longer holds.
    for t in (sources.snapshot)().tenants {
        signals.entry(t.name).or_default().auth = t.auth;
    }
    sources.credentials.assess(&signals, Utc::now())
}

fn log_due(
    report: &CredentialReport,
    logged: &mut HashMap<(String, &'static str), Instant>,
    now: Instant,
) {
    let wall = Utc::now();
    for w in &report.warnings {
        let key = (w.tenant.clone(), w.topic());
        if logged
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < LOG_EVERY)
        {
            continue;
        }
        logged.insert(key, now);
        let what = w.describe(wall);
        if w.is_lapsed(wall) {
            error!(
                tenant = %w.tenant,
                credential = w.topic(),
                fix = %w.fix,
                "tenant {}: {what}; fix: {}",
                w.tenant,
                w.fix
            );
        } else {
            warn!(
                tenant = %w.tenant,
                credential = w.topic(),
                fix = %w.fix,
                "tenant {}: {what}; fix: {}",
                w.tenant,
                w.fix
            );
        }
    }
    // Forget topics that recovered, so a relapse is logged at once.
    logged.retain(|(tenant, topic), _| {
        report
            .warnings
            .iter()
            .any(|w| &w.tenant == tenant && w.topic() == *topic)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config, feed, sink, status};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn shared(snapshot: RelayStatus, shutting_down: bool) -> Arc<Shared> {
        let (_dir, config) = config();
        let token = CancellationToken::new();
        if shutting_down {
            token.cancel();
        }
        Arc::new(Shared {
            sources: AdminSources::from_snapshots(&config, move || snapshot.clone(), token),
            credentials: RwLock::new(Vec::new()),
        })
    }

    async fn get(shared: &Arc<Shared>, path: &str) -> (StatusCode, String, String) {
        let response = router(Arc::clone(shared))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            code,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn healthz_readyz_metrics_and_not_found() {
        let mut s = status();
        s.feeds = vec![feed("contoso", true)];
        s.sinks = vec![sink("file")];
        let shared = shared(s, false);

        assert_eq!(get(&shared, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&shared, "/healthz").await.2, "ok");
        let (code, ct, body) = get(&shared, "/readyz").await;
        assert_eq!(
            (code, ct.as_str(), body.as_str()),
            (StatusCode::OK, "application/json", r#"{"ready":true}"#)
        );
        let (code, ct, body) = get(&shared, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ct, METRICS_CONTENT_TYPE);
        assert!(
            body.contains("xdr_relay_polls_total{tenant=\"contoso\",stream=\"alerts\",outcome=\"success\"} 3\n"),
            "{body}"
        );
        let (code, _, body) = get(&shared, "/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(body.contains("/metrics"));
    }

    #[tokio::test]
    async fn readyz_answers_503_with_a_reason() {
        let mut s = status();
        s.feeds = vec![feed("contoso", false)];
        let (code, _, body) = get(&shared(s.clone(), false), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ready"], false);
        assert!(
            v["reason"].as_str().unwrap().contains("contoso/alerts"),
            "{body}"
        );

        s.feeds = vec![feed("contoso", true)];
        let (code, _, body) = get(&shared(s, true), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address_and_the_key() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = AdminServer::bind(addr).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("[admin] listen"), "{text}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn serves_on_a_socket_until_stopped() {
        let mut s = status();
        s.feeds = vec![feed("contoso", true)];
        let (_dir, config) = config();
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let running = server.spawn(AdminSources::from_snapshots(
            &config,
            move || s.clone(),
            CancellationToken::new(),
        ));
        assert_eq!(running.local_addr(), addr);
        let fetch = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::TcpStream::connect(addr).await?;
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut out = String::new();
            c.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let answer = fetch("/healthz").await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), running.stop())
            .await
            .unwrap();
        assert!(fetch("/healthz").await.is_err(), "still serving after stop");
    }

    #[test]
    fn warnings_are_logged_once_a_day_per_tenant_and_topic() {
        use crate::health::{CredentialKind, Finding, Warning};
        let warning = |tenant: &str, kind| Warning {
            tenant: tenant.into(),
            finding: Finding::Expiring {
                kind,
                expires_at: Utc::now() + chrono::TimeDelta::days(3),
            },
            fix: "xdr-relay onboard --name x --force".into(),
        };
        let report = CredentialReport {
            warnings: vec![
                warning("a", CredentialKind::Certificate),
                warning("a", CredentialKind::RefreshToken),
                warning("b", CredentialKind::Certificate),
            ],
            ..CredentialReport::default()
        };
        let mut logged = HashMap::new();
        let t0 = Instant::now();
        log_due(&report, &mut logged, t0);
        assert_eq!(logged.len(), 3);
        assert!(logged.values().all(|at| *at == t0));

        // An hour later nothing is due; a day later all are.
        log_due(&report, &mut logged, t0 + Duration::from_secs(3600));
        assert!(logged.values().all(|at| *at == t0));
        let t1 = t0 + LOG_EVERY;
        log_due(&report, &mut logged, t1);
        assert!(logged.values().all(|at| *at == t1));

        // A warning that went away is forgotten, so its return is logged at once.
        let fewer = CredentialReport {
            warnings: vec![warning("b", CredentialKind::Certificate)],
            ..CredentialReport::default()
        };
        log_due(&fewer, &mut logged, t1 + Duration::from_secs(60));
        assert_eq!(logged.len(), 1);
        let t2 = t1 + Duration::from_secs(120);
        log_due(&report, &mut logged, t2);
        assert_eq!(logged[&("a".to_string(), "certificate")], t2);
        assert_eq!(logged[&("b".to_string(), "certificate")], t1);
    }
}
