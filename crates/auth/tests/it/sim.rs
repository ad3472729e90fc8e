//! The token manager against the simulator's Entra: grants, rotation, single flight,
//! refresh timing, 401 handling, consent loss and endpoint faults.

use crate::harness::{Kind, SimEntra, SimOptions};
use crate::util::*;
use relay_auth::{
    AccessToken, AuthError, AuthState, FailureKind, ManagerOptions, MemoryStore, OAuthError,
    ProbeBackoff, RefreshCounts, TenantAuth, TokenManager, TokenVersion,
};
use relay_config::{Audience, Secret};
use relay_sim::entra::{AppRegistration, GrantKind, TokenFault};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use TokenVersion::{V1, V2};

const AUDIENCES: [Audience; 3] = [
    Audience::Graph,
    Audience::ThreatProtection,
    Audience::WindowsDefenderAtp,
];

/// Probes `d` apart, without doubling.
fn every(d: Duration) -> ProbeBackoff {
    ProbeBackoff { first: d, max: d }
}

/// Calls `access_token` every 50 ms for `total`, returning how many got a token.
async fn hammer(m: &TokenManager, tenant: &str, total: Duration) -> usize {
    let until = Instant::now() + total;
    let mut ok = 0;
    while Instant::now() < until {
        if m.access_token(tenant, Audience::Graph).await.is_ok() {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok
}

fn no_grace() -> SimOptions {
    SimOptions {
        refresh_token_grace: Duration::ZERO,
        ..SimOptions::default()
    }
}

async fn concurrently(
    m: &TokenManager,
    tenant: &str,
    audience: Audience,
    n: usize,
) -> Vec<Result<AccessToken, AuthError>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let m = m.clone();
            let tenant = tenant.to_string();
            tokio::spawn(async move { m.access_token(&tenant, audience).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn every_grant_and_version_gets_tokens_the_apis_accept() {
    let sim = SimEntra::start(SimOptions {
        tenants: 4,
        ..SimOptions::default()
    });
    let (m, store) = memory_manager();
    let mut next_rt_tenant = 0;
    for version in [V1, V2] {
        for kind in [
            Kind::RefreshToken,
            Kind::RefreshTokenWithSecret,
            Kind::ClientSecret,
            Kind::Certificate,
        ] {
            // Each refresh-token configuration gets its own simulated tenant so that no two
            // share (and rotate) one refresh token.
            let i = match kind {
                Kind::RefreshToken | Kind::RefreshTokenWithSecret => {
                    next_rt_tenant += 1;
                    next_rt_tenant - 1
                }
                Kind::ClientSecret | Kind::Certificate => 0,
            };
            let name = format!("{kind:?}-{version:?}");
            m.upsert_tenant(sim.tenant(&name, i, kind, version));
            for audience in AUDIENCES {
                let t = m
                    .access_token(&name, audience)
                    .await
                    .unwrap_or_else(|e| panic!("{name} {audience}: {e}"));
                assert_eq!(sim.verify(&t.secret, audience), sim.tenant_id(i), "{name}");
            }
            let Some(AuthState::Ok { tokens }) = m.auth_state(&name) else {
                panic!("{name}: {:?}", m.auth_state(&name))
            };
            assert_eq!(tokens.len(), 3);
            let rotated = store.get(&name);
            match kind {
                Kind::RefreshToken | Kind::RefreshTokenWithSecret => {
                    let rotated = rotated.expect("rotated refresh token saved");
                    assert_ne!(rotated.expose(), sim.apps[i].initial_refresh_token);
                }
                _ => assert!(rotated.is_none()),
            }
        }
    }
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_refresh_token_is_saved_before_any_caller_gets_the_access_token() {
    let sim = SimEntra::start(no_grace());
    let store = Arc::new(RecordingStore::default());
    *store.delay.lock().unwrap() = Duration::from_millis(300);
    let m = manager(store.clone(), ManagerOptions::default());
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));

    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (m, store) = (m.clone(), store.clone());
            tokio::spawn(async move {
                let t = m.access_token("contoso", Audience::Graph).await.unwrap();
                store.used(&t.secret);
                t
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = store.log.lock().unwrap().clone();
    assert_eq!(log.len(), 6, "{log:?}");
    let Event::Saved(saved) = &log[0] else {
        panic!("first event is not the save: {log:?}")
    };
    assert!(log[1..].iter().all(|e| matches!(e, Event::Used(_))));
    assert_ne!(saved, &sim.apps[0].initial_refresh_token);

    // After a crash the daemon starts from what the store holds; with no grace period only
    // that newest refresh token still works.
    let (fresh, _) = memory_manager();
    let mut from_disk = sim.tenant("contoso", 0, Kind::RefreshToken, V2);
    from_disk.credential = relay_auth::Credential::RefreshToken {
        refresh_token: Secret::new(saved.clone()),
        client_secret: None,
    };
    fresh.upsert_tenant(from_disk);
    fresh
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap();

    let (stale, _) = memory_manager();
    stale.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));
    let err = stale
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(err.is_needs_consent(), "{err:?}");
}

#[tokio::test]
async fn a_failing_store_withholds_the_access_token() {
    let sim = SimEntra::start(no_grace());
    let store = Arc::new(RecordingStore::default());
    store.set_fail(true);
    let m = manager(store.clone(), ManagerOptions::default());
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));

    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Store { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("contoso"));
    assert!(store.log.lock().unwrap().is_empty());
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Failing {
            kind: FailureKind::Store,
            ..
        })
    ));

    // Nothing was cached: the next call asks Entra again, with the refresh token it was
    // given last (the initial one is dead: no grace period), and saves the newer one.
    store.set_fail(false);
    let t = m.access_token("contoso", Audience::Graph).await.unwrap();
    sim.verify(&t.secret, Audience::Graph);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2);
    assert_eq!(store.saved().len(), 1);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Ok { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_cause_one_token_request() {
    let sim = SimEntra::start(SimOptions::default());
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("delegated", 0, Kind::RefreshToken, V2));
    m.upsert_tenant(sim.tenant("app-only", 1, Kind::Certificate, V2));

    for (name, i, grant) in [
        ("delegated", 0, GrantKind::RefreshToken),
        ("app-only", 1, GrantKind::ClientCredentials),
    ] {
        let results = concurrently(&m, name, Audience::Graph, 50).await;
        let first = results[0].as_ref().unwrap().clone();
        for r in &results {
            assert_eq!(r.as_ref().unwrap(), &first);
        }
        assert_eq!(sim.requests(i, grant), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_token_grants_of_a_tenant_are_serialized_across_audiences() {
    let sim = SimEntra::start(no_grace());
    let store = Arc::new(RecordingStore::default());
    let m = manager(store.clone(), ManagerOptions::default());
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));

    let tasks: Vec<_> = AUDIENCES
        .iter()
        .flat_map(|a| std::iter::repeat_n(*a, 10))
        .map(|audience| {
            let m = m.clone();
            tokio::spawn(
                async move { (audience, m.access_token("contoso", audience).await.unwrap()) },
            )
        })
        .collect();
    for t in tasks {
        let (audience, token) = t.await.unwrap();
        sim.verify(&token.secret, audience);
    }
    // One grant per audience, never two at once, each with the refresh token the previous
    // one produced (with no grace period any other would have failed).
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 3);
    assert_eq!(sim.max_in_flight(0, GrantKind::RefreshToken), 1);
    let saved = store.saved();
    assert_eq!(saved.len(), 3);
    assert!(saved[0] != saved[1] && saved[1] != saved[2]);
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry() {
    let sim = SimEntra::start(SimOptions {
        access_token_lifetime: Duration::from_secs(4),
        ..SimOptions::default()
    });
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::ClientSecret, V2));

    let t1 = m.access_token("contoso", Audience::Graph).await.unwrap();
    let lifetime = t1.expires_at - Instant::now();
    assert!(lifetime > Duration::from_secs(3) && lifetime <= Duration::from_secs(4));

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t2 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(t2, t1);
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 1);

    // Past half of a lifetime shorter than the 5-minute margin: replaced, while the old
    // token is still valid.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t3 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert!(Instant::now() < t1.expires_at, "refresh came too late");
    assert_ne!(t3, t1);
    assert!(t3.expires_at > t1.expires_at);
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 2);
    sim.verify(&t3.secret, Audience::Graph);
}

#[tokio::test]
async fn a_transient_failure_of_an_early_refresh_serves_the_current_token() {
    let sim = SimEntra::start(SimOptions {
        access_token_lifetime: Duration::from_secs(8),
        ..SimOptions::default()
    });
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));
    let t1 = m.access_token("contoso", Audience::Graph).await.unwrap();

    tokio::time::sleep(Duration::from_millis(4300)).await;
    sim.fault(0, Some(TokenFault::Down));
    let t2 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(t2, t1);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Failing {
            kind: FailureKind::HttpStatus(503),
            ..
        })
    ));
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2);
    // The retry is spaced out rather than made on every call.
    let t3 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(t3, t1);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2);

    sim.fault(0, None);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let t4 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_ne!(t4, t1);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Ok { .. })
    ));
}

#[tokio::test]
async fn after_a_401_the_rejected_token_is_replaced_but_a_newer_one_is_kept() {
    let sim = SimEntra::start(SimOptions::default());
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));

    let t1 = m.access_token("contoso", Audience::Graph).await.unwrap();
    m.invalidate("contoso", Audience::Graph, &t1);
    let t2 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_ne!(t2, t1);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2);

    // A second task that also got a 401 with t1 reports it late: t2 stays.
    m.invalidate("contoso", Audience::Graph, &t1);
    let t3 = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(t3, t2);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2);

    // Other audiences are not touched by an invalidation.
    let g = m
        .access_token("contoso", Audience::ThreatProtection)
        .await
        .unwrap();
    m.invalidate("contoso", Audience::Graph, &t3);
    assert_eq!(
        m.access_token("contoso", Audience::ThreatProtection)
            .await
            .unwrap(),
        g
    );
    // Unknown tenants are ignored.
    m.invalidate("nobody", Audience::Graph, &t3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_needs_consent_once_and_then_fails_fast() {
    let sim = SimEntra::start(SimOptions::default());
    let m = manager(Arc::new(MemoryStore::new()), ManagerOptions::default());
    m.upsert_tenant(TenantAuth {
        probe: every(Duration::from_secs(3)),
        ..sim.tenant("revoked", 0, Kind::RefreshToken, V2)
    });
    m.upsert_tenant(sim.tenant("healthy", 1, Kind::RefreshToken, V2));
    let t = m.access_token("revoked", Audience::Graph).await.unwrap();
    m.access_token("healthy", Audience::Graph).await.unwrap();

    sim.entra.revoke_grant(sim.tenant_id(0));
    m.invalidate("revoked", Audience::Graph, &t);
    let err = m
        .access_token("revoked", Audience::Graph)
        .await
        .unwrap_err();
    let AuthError::NeedsConsent { error, since, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(error.error, OAuthError::InvalidGrant);
    assert!(
        matches!(error.code, Some(50173) | Some(700082)),
        "{error:?}"
    );
    assert!(!err.is_transient());
    let since = *since;
    let requests = sim.requests(0, GrantKind::RefreshToken);

    // Fail fast, for every audience and many callers, without a request.
    let started = std::time::Instant::now();
    for audience in AUDIENCES {
        for r in concurrently(&m, "revoked", audience, 20).await {
            assert!(r.unwrap_err().is_needs_consent());
        }
    }
    // Generous for a loaded CI machine; a request per caller would take far longer.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), requests);
    let Some(AuthState::NeedsConsent {
        error: e, since: s, ..
    }) = m.auth_state("revoked")
    else {
        panic!("{:?}", m.auth_state("revoked"))
    };
    assert_eq!(&e, error);
    assert_eq!(s, since);

    // The other tenant carries on.
    let h = m.access_token("healthy", Audience::Graph).await.unwrap();
    m.invalidate("healthy", Audience::Graph, &h);
    m.access_token("healthy", Audience::Graph).await.unwrap();
    assert!(matches!(
        m.auth_state("healthy"),
        Some(AuthState::Ok { .. })
    ));

    // After the recheck interval exactly one request re-checks, however many ask.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for r in concurrently(&m, "revoked", Audience::Graph, 10).await {
        assert!(r.unwrap_err().is_needs_consent());
    }
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), requests + 1);
    let Some(AuthState::NeedsConsent { since: s, .. }) = m.auth_state("revoked") else {
        panic!()
    };
    assert_eq!(s, since, "still the same incident");

    // Re-onboarding hands over a new refresh token: it is used at once.
    let fresh_rt = format!("re-onboarded-{}", uuid::Uuid::new_v4().simple());
    sim.entra.register_app(AppRegistration {
        initial_refresh_token: fresh_rt.clone(),
        ..sim.apps[0].clone()
    });
    let mut again = sim.tenant("revoked", 0, Kind::RefreshToken, V2);
    again.credential = relay_auth::Credential::RefreshToken {
        refresh_token: Secret::new(fresh_rt),
        client_secret: None,
    };
    m.upsert_tenant(again);
    let t = m.access_token("revoked", Audience::Graph).await.unwrap();
    sim.verify(&t.secret, Audience::Graph);
    assert!(matches!(
        m.auth_state("revoked"),
        Some(AuthState::Ok { .. })
    ));
}

#[tokio::test]
async fn withdrawn_consent_for_an_app_only_tenant_needs_consent_until_the_recheck() {
    let sim = SimEntra::start(SimOptions::default());
    let m = manager(Arc::new(MemoryStore::new()), ManagerOptions::default());
    let contoso = || TenantAuth {
        probe: every(Duration::from_secs(2)),
        ..sim.tenant("contoso", 0, Kind::ClientSecret, V2)
    };
    m.upsert_tenant(contoso());
    sim.entra.revoke_consent(sim.tenant_id(0));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    let AuthError::NeedsConsent { error, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(error.code, Some(700016));

    // Consent given again; registering the same configuration again changes nothing, the
    // recheck finds it.
    sim.entra.restore(sim.tenant_id(0));
    m.upsert_tenant(contoso());
    assert!(m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err()
        .is_needs_consent());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 2);
}

#[tokio::test]
async fn token_endpoint_faults_are_transient_and_recover() {
    let sim = SimEntra::start(SimOptions::default());
    let m = manager(
        Arc::new(MemoryStore::new()),
        ManagerOptions {
            request_timeout: Duration::from_millis(500),
            ..ManagerOptions::default()
        },
    );
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));
    for (fault, want) in [
        (TokenFault::Down, FailureKind::HttpStatus(503)),
        (TokenFault::Html, FailureKind::HttpStatus(503)),
        (TokenFault::Reset, FailureKind::Connection),
        (
            TokenFault::Slow(Duration::from_secs(3)),
            FailureKind::Timeout,
        ),
    ] {
        sim.fault(0, Some(fault));
        let err = m
            .access_token("contoso", Audience::Graph)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{fault:?}: {err:?}");
        let AuthError::Transient { kind, .. } = &err else {
            panic!("{fault:?}: {err:?}")
        };
        assert_eq!(kind, &want, "{fault:?}");
        assert!(matches!(
            m.auth_state("contoso"),
            Some(AuthState::Failing { .. })
        ));
    }
    sim.fault(0, None);
    let t = m.access_token("contoso", Audience::Graph).await.unwrap();
    sim.verify(&t.secret, Audience::Graph);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Ok { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tenant_does_not_hold_up_the_others() {
    let sim = SimEntra::start(SimOptions::default());
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("slow", 0, Kind::ClientSecret, V2));
    m.upsert_tenant(sim.tenant("fast", 1, Kind::ClientSecret, V2));
    sim.fault(0, Some(TokenFault::Slow(Duration::from_secs(2))));

    let slow = {
        let m = m.clone();
        tokio::spawn(async move { m.access_token("slow", Audience::Graph).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    m.access_token("fast", Audience::Graph).await.unwrap();
    // Status reads do not wait for the slow tenant's request either.
    assert!(matches!(m.auth_state("slow"), Some(AuthState::Ok { .. })));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!slow.is_finished());
    slow.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unregistered_certificate_is_rejected_not_consent() {
    let sim = SimEntra::start(SimOptions::default());
    let (m, _) = memory_manager();
    let mut t = sim.tenant("contoso", 0, Kind::ClientSecret, V2);
    let (cert, key) = make_identity("never registered");
    t.credential = relay_auth::Credential::Certificate {
        cert_pem: cert,
        key_pem: Secret::new(key),
    };
    m.upsert_tenant(t);
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    let AuthError::Rejected {
        kind: FailureKind::Entra(e),
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, Some(700027));
    assert!(!err.is_transient() && !err.is_needs_consent());
}

#[tokio::test]
async fn registering_the_same_configuration_again_keeps_the_rotated_refresh_token() {
    let sim = SimEntra::start(no_grace());
    let (m, _) = memory_manager();
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));
    let t = m.access_token("contoso", Audience::Graph).await.unwrap();

    // A config reload registers every tenant again, with the refresh token the file had.
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::RefreshToken, V2));
    assert_eq!(m.access_token("contoso", Audience::Graph).await.unwrap(), t);
    m.invalidate("contoso", Audience::Graph, &t);
    // The initial token is dead (no grace); the rotated one kept in memory works.
    let t2 = m.access_token("contoso", Audience::Graph).await.unwrap();
    sim.verify(&t2.secret, Audience::Graph);
}

#[tokio::test]
async fn token_requests_are_counted_per_audience_by_outcome_across_reconfiguration() {
    let sim = SimEntra::start(SimOptions::default());
    let (m, _) = memory_manager();
    assert!(m.refresh_counts("contoso").is_empty(), "unknown tenant");
    // Probes 300 ms apart: calls in between are answered from memory.
    m.upsert_tenant(TenantAuth {
        probe: every(Duration::from_millis(300)),
        ..sim.tenant("contoso", 0, Kind::ClientSecret, V2)
    });
    m.upsert_tenant(sim.tenant("fabrikam", 1, Kind::RefreshToken, V2));
    assert!(m.refresh_counts("contoso").is_empty(), "before any request");
    let counts = |ok, failed, needs_consent| RefreshCounts {
        audience: Audience::Graph,
        ok,
        failed,
        needs_consent,
    };

    // Issued, then served from the cache: one request.
    let graph = m.access_token("contoso", Audience::Graph).await.unwrap();
    m.access_token("contoso", Audience::Graph).await.unwrap();
    m.access_token("fabrikam", Audience::Graph).await.unwrap();
    m.access_token("contoso", Audience::WindowsDefenderAtp)
        .await
        .unwrap();
    assert_eq!(
        m.refresh_counts("contoso"),
        [
            RefreshCounts {
                audience: Audience::WindowsDefenderAtp,
                ..counts(1, 0, 0)
            },
            counts(1, 0, 0),
        ],
        "in audience order"
    );
    let graph_counts = |tenant| {
        m.refresh_counts(tenant)
            .into_iter()
            .find(|c| c.audience == Audience::Graph)
            .unwrap()
    };

    // Entra down: the next request fails.
    sim.fault(0, Some(TokenFault::Down));
    m.invalidate("contoso", Audience::Graph, &graph);
    m.access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert_eq!(graph_counts("contoso"), counts(1, 1, 0));

    // Consent withdrawn: one request (the next probe) learns it, later calls are refused
    // from memory.
    sim.fault(0, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    sim.entra.revoke_consent(sim.tenant_id(0));
    for _ in 0..3 {
        assert!(m
            .access_token("contoso", Audience::Graph)
            .await
            .unwrap_err()
            .is_needs_consent());
    }
    assert_eq!(graph_counts("contoso"), counts(1, 1, 1));

    // A changed configuration (re-onboarding) keeps the counts; removal drops them.
    sim.entra.restore(sim.tenant_id(0));
    m.upsert_tenant(sim.tenant("contoso", 0, Kind::ClientSecret, V1));
    m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(graph_counts("contoso"), counts(2, 1, 1));
    assert_eq!(m.refresh_counts("fabrikam"), [counts(1, 0, 0)]);
    m.remove_tenant("contoso");
    assert!(m.refresh_counts("contoso").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_consent_is_probed_on_a_doubling_backoff_and_recovers_by_itself() {
    let sim = SimEntra::start(SimOptions::default());
    let m = manager(Arc::new(MemoryStore::new()), ManagerOptions::default());
    m.upsert_tenant(TenantAuth {
        probe: ProbeBackoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(4),
        },
        ..sim.tenant("contoso", 0, Kind::ClientSecret, V2)
    });
    sim.entra.revoke_consent(sim.tenant_id(0));
    let started = Instant::now();
    assert!(m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err()
        .is_needs_consent());
    assert!(m.next_probe("contoso").is_some());
    // Probes at about +1 s and +3 s (1 s, then 2 s); the next one is 4 s later.
    assert_eq!(hammer(&m, "contoso", Duration::from_millis(5000)).await, 0);
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 3);
    let Some(AuthState::NeedsConsent { next_probe, .. }) = m.auth_state("contoso") else {
        panic!("{:?}", m.auth_state("contoso"))
    };
    let probe_in = (next_probe - chrono::Utc::now()).num_milliseconds();
    assert!(
        (500..=4000).contains(&probe_in),
        "next probe in {probe_in} ms"
    );

    // Consent given again: the next probe gets a token, nobody re-registers anything.
    sim.entra.restore(sim.tenant_id(0));
    let recovered = {
        let until = Instant::now() + Duration::from_secs(8);
        loop {
            if m.access_token("contoso", Audience::Graph).await.is_ok() || Instant::now() > until {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Ok { .. })
    ));
    assert!(m.next_probe("contoso").is_none());
    assert!(recovered - started < Duration::from_secs(13));
    // The max is 4 s: capped, not 8.
    assert_eq!(sim.requests(0, GrantKind::ClientCredentials), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_is_down_is_probed_not_hammered() {
    let sim = SimEntra::start(SimOptions::default());
    let m = manager(Arc::new(MemoryStore::new()), ManagerOptions::default());
    m.upsert_tenant(TenantAuth {
        probe: every(Duration::from_millis(1500)),
        ..sim.tenant("contoso", 0, Kind::RefreshToken, V2)
    });
    sim.fault(0, Some(TokenFault::Down));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // Refused from memory until the probe, with the wait as the retry hint.
    let again = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(again
        .retry_after()
        .is_some_and(|d| d > Duration::ZERO && d <= Duration::from_millis(1500)));
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 1);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Failing {
            kind: FailureKind::HttpStatus(503),
            ..
        })
    ));
    assert_eq!(hammer(&m, "contoso", Duration::from_millis(2000)).await, 0);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 2, "one probe");

    sim.fault(0, None);
    assert!(hammer(&m, "contoso", Duration::from_millis(2000)).await > 0);
    assert_eq!(sim.requests(0, GrantKind::RefreshToken), 3);
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Ok { .. })
    ));
}
