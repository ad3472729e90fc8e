//! The client against the real simulator (`relay_sim::Sim`): complete windows compared
//! with the simulator's ground truth, bulk updates sharing one timestamp, large backlogs,
//! quotas, injected faults and expired tokens.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use relay_config::{Audience, Feed, Secret, Stream};
use relay_defender::{
    AccessToken, ClientOptions, DefenderClient, DefenderError, Item, PagerStats, ParseError,
    RateLimits, RetryPolicy, TenantTarget, TokenError, TokenProvider,
};
use relay_sim::entra::Entra;
use relay_sim::{ApiFault, FaultKind, QuotaLimits, Sim, SimConfig};

/// Tokens minted by the simulator's Entra, cached until invalidated.
struct SimTokens {
    entra: Arc<Entra>,
    tenant_ids: HashMap<String, String>,
    lifetime: Duration,
    cache: Mutex<HashMap<(String, Audience), AccessToken>>,
    minted: AtomicUsize,
    invalidated: AtomicUsize,
}

impl SimTokens {
    fn new(sim: &Sim, lifetime: Duration) -> Arc<SimTokens> {
        Arc::new(SimTokens {
            entra: sim.entra().clone(),
            tenant_ids: sim
                .tenants()
                .iter()
                .map(|t| (t.name.clone(), t.tenant_id.clone()))
                .collect(),
            lifetime,
            cache: Mutex::new(HashMap::new()),
            minted: AtomicUsize::new(0),
            invalidated: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl TokenProvider for SimTokens {
    async fn bearer(&self, tenant: &str, audience: Audience) -> Result<AccessToken, TokenError> {
        let Some(tenant_id) = self.tenant_ids.get(tenant) else {
            return Err(TokenError::Rejected(
                format!("unknown tenant {tenant}").into(),
            ));
        };
        let mut cache = self.cache.lock().unwrap();
        let token = cache
            .entry((tenant.to_string(), audience))
            .or_insert_with(|| {
                self.minted.fetch_add(1, Ordering::SeqCst);
                AccessToken {
                    secret: Secret::new(self.entra.mint_access_token(
                        tenant_id,
                        audience,
                        self.lifetime,
                    )),
                    expires_at: tokio::time::Instant::now() + self.lifetime,
                }
            });
        Ok(token.clone())
    }

    fn invalidate(&self, tenant: &str, audience: Audience, rejected: &AccessToken) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
        let mut cache = self.cache.lock().unwrap();
        if cache.get(&(tenant.to_string(), audience)) == Some(rejected) {
            cache.remove(&(tenant.to_string(), audience));
        }
    }
}

fn quiet_world(backlog: usize) -> SimConfig {
    SimConfig {
        tenants: 2,
        seed: 42,
        activity: 0,
        backlog,
        backlog_span: Duration::from_secs(6 * 3600),
        late_visibility: Duration::ZERO,
        late_visibility_jitter: Duration::ZERO,
        quotas_enabled: false,
        ..SimConfig::default()
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            max_throttled: 3,
            max_retry_after: Duration::from_secs(5),
        },
        rate_limits: RateLimits::unlimited(),
        request_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

fn target(sim: &Sim, i: usize) -> TenantTarget {
    let t = &sim.tenants()[i];
    TenantTarget {
        name: t.name.clone(),
        tenant_id: t.tenant_id.clone(),
        endpoints: sim.endpoints(),
    }
}

fn client(tokens: Arc<dyn TokenProvider>, options: ClientOptions) -> DefenderClient {
    DefenderClient::new(reqwest::Client::new(), tokens, options)
}

async fn drain(
    client: &DefenderClient,
    tenant: &TenantTarget,
    feed: Feed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<Item>, PagerStats), DefenderError> {
    let mut pager = client.window(tenant, feed, from, to);
    let mut all = Vec::new();
    while let Some(items) = pager.next_page().await? {
        all.extend(items);
    }
    Ok((all, pager.stats()))
}

type Versions = BTreeSet<(String, DateTime<Utc>)>;

/// The versions a query can return now: the newest version of each item (the ground
/// truth also lists versions superseded since), inside `[from, to)`.
fn truth(
    sim: &Sim,
    tenant: &TenantTarget,
    feed: Feed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Versions {
    let mut newest: HashMap<String, DateTime<Utc>> = HashMap::new();
    for v in sim.ground_truth() {
        if v.tenant_id == tenant.tenant_id && v.feed == feed {
            let t = newest.entry(v.id).or_insert(v.last_update);
            *t = (*t).max(v.last_update);
        }
    }
    newest
        .into_iter()
        .filter(|(_, t)| from <= *t && *t < to)
        .collect()
}

fn versions(items: &[Item]) -> Versions {
    items
        .iter()
        .map(|i| (i.id.clone(), i.last_update))
        .collect()
}

/// Compares without dumping thousands of versions into the failure message.
#[track_caller]
fn assert_same(got: &Versions, want: &Versions, what: &str) {
    let missing: Vec<_> = want.difference(got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: got {} versions, want {}; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
        got.len(),
        want.len()
    );
}

/// Each item's raw JSON carries the id and time the pager reported.
fn check_raw(items: &[Item]) {
    for i in items {
        let v: serde_json::Value = serde_json::from_str(i.raw.get()).unwrap();
        let id = &v[i.feed.id_field()];
        let id = id
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| id.to_string());
        assert_eq!(id, i.id);
        let t =
            relay_defender::odata_time::parse_timestamp(v[i.feed.time_field()].as_str().unwrap())
                .unwrap();
        assert_eq!(t, i.last_update);
    }
}

#[tokio::test]
async fn full_window_drain_matches_ground_truth_on_every_feed() {
    let sim = Sim::start(quiet_world(300)).await.unwrap();
    sim.settle().await;
    let tokens = SimTokens::new(&sim, Duration::from_secs(600));
    let c = client(tokens.clone(), options());
    let now = Utc::now();
    for i in 0..sim.tenants().len() {
        let tenant = target(&sim, i);
        for feed in Feed::ALL {
            let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
            let want = truth(&sim, &tenant, feed, from, to);
            assert!(
                want.len() >= 300,
                "{feed}: only {} items in the ground truth",
                want.len()
            );
            let (items, stats) = drain(&c, &tenant, feed, from, to).await.unwrap();
            assert_same(&versions(&items), &want, &format!("{} {feed}", tenant.name));
            assert!(items.iter().all(|i| i.tenant_id == tenant.tenant_id
                && i.tenant == tenant.name
                && i.feed == feed));
            check_raw(&items);
            assert!(stats.max_skip_sent <= 500, "{feed}: {stats:?}");

            // A narrow window in the middle: exactly the versions inside it.
            let times: Vec<DateTime<Utc>> = want
                .iter()
                .map(|(_, t)| *t)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let (from, to) = (times[times.len() / 3], times[2 * times.len() / 3]);
            let (items, _) = drain(&c, &tenant, feed, from, to).await.unwrap();
            assert_same(
                &versions(&items),
                &truth(&sim, &tenant, feed, from, to),
                &format!("{feed} middle window"),
            );
        }
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.bad_requests, stats.unauthorized, stats.throttled),
        (0, 0, 0)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn large_backlog_is_split_by_time_without_deep_skip() {
    let sim = Sim::start(quiet_world(1500)).await.unwrap();
    sim.settle().await;
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let tenant = target(&sim, 0);
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    for feed in Feed::ALL {
        let want = truth(&sim, &tenant, feed, from, to);
        let (items, stats) = drain(&c, &tenant, feed, from, to).await.unwrap();
        assert_same(&versions(&items), &want, &format!("{feed}"));
        assert!(stats.max_skip_sent <= 500, "{feed}: {stats:?}");
        if feed.api() == relay_config::Api::Graph {
            assert!(
                stats.splits > 0,
                "{feed} needs time splitting for {} items: {stats:?}",
                want.len()
            );
        }
    }
    // Graph would have answered 400 to any `$skip` past 500.
    assert_eq!(sim.stats().bad_requests, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn bulk_updates_sharing_one_timestamp_span_page_boundaries() {
    let sim = Sim::start(quiet_world(700)).await.unwrap();
    let tenant = target(&sim, 1);
    let incidents_at = sim
        .burst(&tenant.tenant_id, Stream::Incidents, 320)
        .unwrap();
    let alerts_at = sim.burst(&tenant.tenant_id, Stream::Alerts, 1200).unwrap();
    sim.settle().await;
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    for feed in Feed::ALL {
        let at = if feed.stream() == Stream::Incidents {
            incidents_at
        } else {
            alerts_at
        };
        let want = truth(&sim, &tenant, feed, from, to);
        let tied = want.iter().filter(|(_, t)| *t == at).count();
        assert!(
            tied >= 300,
            "{feed}: only {tied} items share the burst timestamp"
        );
        if feed == Feed::GraphAlerts {
            // More than a page (1000) at one instant: only `$skip` (≤ 500) can reach them.
            assert!(tied > 1000, "{tied}");
        }
        let (items, stats) = drain(&c, &tenant, feed, from, to).await.unwrap();
        assert_same(&versions(&items), &want, &format!("{feed}: {stats:?}"));
        assert!(stats.max_skip_sent <= 500, "{feed}: {stats:?}");
        if feed == Feed::GraphAlerts {
            assert_eq!(stats.max_skip_sent, 500, "{stats:?}");
        }
        if feed != Feed::MdeAlerts {
            assert!(stats.splits > 0, "{feed}: {stats:?}");
        }
    }
    assert_eq!(sim.stats().bad_requests, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_errors_and_resets_are_retried() {
    let sim = Sim::start(quiet_world(120)).await.unwrap();
    sim.settle().await;
    let tenant = target(&sim, 0);
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    for feed in Feed::ALL {
        sim.set_fault(
            &tenant.tenant_id,
            ApiFault::new(FaultKind::ServerError { status: 500 })
                .on(feed)
                .times(1),
        )
        .unwrap();
        sim.set_fault(
            &tenant.tenant_id,
            ApiFault::new(FaultKind::ConnectionReset).on(feed).times(1),
        )
        .unwrap();
        let before = sim.stats().faults_injected;
        let (items, _) = drain(&c, &tenant, feed, from, to).await.unwrap();
        assert_same(
            &versions(&items),
            &truth(&sim, &tenant, feed, from, to),
            &format!("{feed}"),
        );
        assert_eq!(sim.stats().faults_injected - before, 2, "{feed}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn broken_responses_are_typed_errors() {
    let sim = Sim::start(quiet_world(60)).await.unwrap();
    sim.settle().await;
    let tenant = target(&sim, 0);
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    type Check = fn(&DefenderError) -> bool;
    let cases: Vec<(FaultKind, Feed, Check)> = vec![
        (FaultKind::MalformedJson, Feed::GraphAlerts, |e| {
            matches!(
                e,
                DefenderError::Body {
                    source: ParseError::Malformed { .. },
                    ..
                }
            ) && !e.is_transient()
        }),
        (FaultKind::TruncatedBody, Feed::M365dIncidents, |e| {
            matches!(
                e,
                DefenderError::Body {
                    source: ParseError::Truncated { .. },
                    ..
                }
            ) && e.is_transient()
        }),
        (FaultKind::CutJson, Feed::MdeAlerts, |e| {
            matches!(
                e,
                DefenderError::Body {
                    source: ParseError::Truncated { .. },
                    ..
                }
            ) && e.is_transient()
        }),
        (
            FaultKind::HtmlError { status: 502 },
            Feed::GraphIncidents,
            |e| matches!(e, DefenderError::Html { status: 502, .. }) && e.is_transient(),
        ),
        (FaultKind::PartialContent, Feed::GraphAlerts, |e| {
            matches!(e, DefenderError::PartialContent { warning, .. } if warning.contains("Microsoft Defender for Endpoint"))
                && e.is_transient()
        }),
        (
            FaultKind::ServerError { status: 503 },
            Feed::MdeAlerts,
            |e| {
                matches!(
                    e,
                    DefenderError::Server {
                        status: 503,
                        attempts: 3,
                        ..
                    }
                ) && e.is_transient()
            },
        ),
    ];
    for (kind, feed, check) in cases {
        sim.clear_faults(&tenant.tenant_id).unwrap();
        sim.set_fault(&tenant.tenant_id, ApiFault::new(kind.clone()).on(feed))
            .unwrap();
        let err = drain(&c, &tenant, feed, from, to).await.unwrap_err();
        assert!(check(&err), "{kind:?} on {feed}: {err:?}");
        assert_eq!(err.tenant(), tenant.name);
        assert!(
            err.endpoint().starts_with(sim.base_url().as_str()) && !err.endpoint().contains('?'),
            "{}",
            err.endpoint()
        );
    }
    sim.clear_faults(&tenant.tenant_id).unwrap();
    let (items, _) = drain(&c, &tenant, Feed::GraphAlerts, from, to)
        .await
        .unwrap();
    assert_same(
        &versions(&items),
        &truth(&sim, &tenant, Feed::GraphAlerts, from, to),
        "window",
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn throttling_waits_for_retry_after() {
    let sim = Sim::start(quiet_world(60)).await.unwrap();
    sim.settle().await;
    let tenant = target(&sim, 0);
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    sim.set_fault(
        &tenant.tenant_id,
        ApiFault::new(FaultKind::TooManyRequests {
            retry_after_secs: 2,
        })
        .on(Feed::GraphIncidents)
        .times(1),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let (items, _) = drain(&c, &tenant, Feed::GraphIncidents, from, to)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_same(
        &versions(&items),
        &truth(&sim, &tenant, Feed::GraphIncidents, from, to),
        "window",
    );
    assert_eq!(sim.stats().throttled, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn exhausted_quota_is_reported_with_retry_after_and_blocks_the_tenant() {
    let sim = Sim::start(SimConfig {
        quotas_enabled: true,
        quota_limits: QuotaLimits {
            m365d_per_minute: 2,
            ..QuotaLimits::default()
        },
        ..quiet_world(60)
    })
    .await
    .unwrap();
    sim.settle().await;
    let tenant = target(&sim, 0);
    let other = target(&sim, 1);
    // The client's own limiter is off, so the simulator's quota is what stops it.
    let c = client(SimTokens::new(&sim, Duration::from_secs(600)), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    for _ in 0..2 {
        drain(&c, &tenant, Feed::M365dIncidents, from, to)
            .await
            .unwrap();
    }
    let err = drain(&c, &tenant, Feed::M365dIncidents, from, to)
        .await
        .unwrap_err();
    let DefenderError::QuotaExhausted {
        retry_after,
        detail,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        *retry_after > Duration::from_secs(5) && *retry_after <= Duration::from_secs(60),
        "{retry_after:?}"
    );
    assert!(detail.contains("2 per 00:01:00"), "{detail}");
    assert!(err.is_transient());
    assert!(c
        .limiter()
        .blocked_for(&tenant.tenant_id, relay_defender::ApiFamily::M365d)
        .is_some());
    // Quotas are per tenant: the other one is served.
    drain(&c, &other, Feed::M365dIncidents, from, to)
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_refreshed_once() {
    let sim = Sim::start(quiet_world(60)).await.unwrap();
    sim.settle().await;
    let tenant = target(&sim, 0);
    let tokens = SimTokens::new(&sim, Duration::from_secs(1));
    let c = client(tokens.clone(), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    drain(&c, &tenant, Feed::GraphAlerts, from, to)
        .await
        .unwrap();
    assert_eq!(tokens.minted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (items, _) = drain(&c, &tenant, Feed::GraphAlerts, from, to)
        .await
        .unwrap();
    assert_same(
        &versions(&items),
        &truth(&sim, &tenant, Feed::GraphAlerts, from, to),
        "window",
    );
    assert_eq!(tokens.invalidated.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.minted.load(Ordering::SeqCst), 2);
    assert_eq!(sim.stats().unauthorized, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_for_another_audience_is_unauthorized_after_one_refresh() {
    struct WrongAudience(Arc<SimTokens>);
    #[async_trait::async_trait]
    impl TokenProvider for WrongAudience {
        async fn bearer(&self, tenant: &str, _: Audience) -> Result<AccessToken, TokenError> {
            self.0.bearer(tenant, Audience::Graph).await
        }
        fn invalidate(&self, tenant: &str, _: Audience, rejected: &AccessToken) {
            self.0.invalidate(tenant, Audience::Graph, rejected);
        }
    }
    let sim = Sim::start(quiet_world(10)).await.unwrap();
    let tenant = target(&sim, 0);
    let tokens = SimTokens::new(&sim, Duration::from_secs(600));
    let c = client(Arc::new(WrongAudience(tokens.clone())), options());
    let now = Utc::now();
    let err = drain(&c, &tenant, Feed::MdeAlerts, now - TimeDelta::hours(1), now)
        .await
        .unwrap_err();
    assert!(matches!(err, DefenderError::Unauthorized { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(tokens.invalidated.load(Ordering::SeqCst), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn with_the_real_token_manager() {
    let sim = Sim::start(quiet_world(80)).await.unwrap();
    sim.settle().await;
    let manager = relay_auth::TokenManager::new(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        Arc::new(relay_auth::MemoryStore::new()),
        relay_auth::ManagerOptions::default(),
    );
    for t in sim.tenants() {
        manager.upsert_tenant(relay_auth::TenantAuth {
            name: t.name.clone(),
            tenant_id: t.tenant_id.clone(),
            endpoints: sim.endpoints(),
            client_id: t.client_id.clone(),
            credential: relay_auth::Credential::ClientSecret {
                secret: Secret::new(t.client_secret.clone()),
            },
            token_version: relay_auth::TokenVersion::V2,
            probe: relay_auth::ProbeBackoff::default(),
        });
    }
    let c = client(Arc::new(manager.clone()), options());
    let now = Utc::now();
    let (from, to) = (now - TimeDelta::hours(8), now + TimeDelta::minutes(1));
    for i in 0..sim.tenants().len() {
        let tenant = target(&sim, i);
        for feed in Feed::ALL {
            let (items, _) = drain(&c, &tenant, feed, from, to).await.unwrap();
            assert_same(
                &versions(&items),
                &truth(&sim, &tenant, feed, from, to),
                &format!("{feed}"),
            );
        }
    }
    // An unknown tenant is a token error naming the tenant, not a panic.
    let mut stranger = target(&sim, 0);
    stranger.name = "stranger".into();
    let err = drain(&c, &stranger, Feed::GraphAlerts, from, to)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DefenderError::Token { .. }) && err.tenant() == "stranger",
        "{err:?}"
    );
    assert!(!err.is_transient());
    sim.shutdown().await;
}
