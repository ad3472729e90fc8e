//! No token or secret in any `Debug`/`Display` output (log lines: `tests/logs.rs`).

use crate::harness::{Kind, SimEntra, SimOptions};
use crate::util::*;
use relay_auth::{AuthError, Credential, ManagerOptions, MemoryStore, TokenVersion};
use relay_config::{Audience, Secret};
use relay_sim::entra::TokenFault;
use std::sync::Arc;

#[tokio::test]
async fn debug_and_display_show_no_secret() {
    let sim = SimEntra::start(SimOptions::default());
    let store = Arc::new(MemoryStore::new());
    let m = manager(store.clone(), ManagerOptions::default());
    let delegated = sim.tenant(
        "delegated",
        0,
        Kind::RefreshTokenWithSecret,
        TokenVersion::V2,
    );
    let app = sim.tenant("app", 1, Kind::ClientSecret, TokenVersion::V1);
    let cert = sim.tenant("cert", 2, Kind::Certificate, TokenVersion::V2);
    let mut bad_secret = sim.tenant("bad-secret", 1, Kind::ClientSecret, TokenVersion::V2);
    bad_secret.credential = Credential::ClientSecret {
        secret: Secret::new("wrong-secret-value-12345"),
    };
    for t in [&delegated, &app, &cert, &bad_secret] {
        m.upsert_tenant(t.clone());
    }

    let mut secrets = sim.secrets();
    secrets.push("wrong-secret-value-12345".into());
    let mut shown = String::new();
    for t in [&delegated, &app, &cert, &bad_secret] {
        shown += &format!("{t:?} {t:#?} {:?}\n", t.credential);
    }
    for name in ["delegated", "app", "cert"] {
        for audience in [Audience::Graph, Audience::ThreatProtection] {
            let token = m.access_token(name, audience).await.unwrap();
            secrets.push(token.secret.expose().to_string());
            shown += &format!("{token:?} {token:#?}\n");
        }
        shown += &format!("{:?}\n", m.auth_state(name));
    }
    secrets.push(store.get("delegated").unwrap().expose().to_string());

    // Errors built from real error bodies.
    let rejected = m
        .access_token("bad-secret", Audience::Graph)
        .await
        .unwrap_err();
    assert!(
        matches!(rejected, AuthError::Rejected { .. }),
        "{rejected:?}"
    );
    sim.entra.revoke_grant(sim.tenant_id(0));
    let t = m.access_token("delegated", Audience::Graph).await.unwrap();
    m.invalidate("delegated", Audience::Graph, &t);
    let consent = m
        .access_token("delegated", Audience::Graph)
        .await
        .unwrap_err();
    assert!(consent.is_needs_consent(), "{consent:?}");
    sim.fault(1, Some(TokenFault::Reset));
    m.upsert_tenant(sim.tenant("app-v2", 1, Kind::ClientSecret, TokenVersion::V2));
    let transient = m.access_token("app-v2", Audience::Graph).await.unwrap_err();
    assert!(transient.is_transient(), "{transient:?}");
    for e in [&rejected, &consent, &transient] {
        shown += &format!("{e} {e:?} {e:#?}\n");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            shown += &format!("{s} {s:?}\n");
            source = s.source();
        }
    }
    shown += &format!(
        "{:?} {:?}\n",
        m.auth_state("delegated"),
        m.auth_state("bad-secret")
    );
    shown += &format!("{m:?} {m:#?} {store:?}\n");

    assert_no_leak(&shown, &secrets);
    // And the output is not empty of meaning.
    assert!(
        shown.contains("delegated") && shown.contains("AADSTS"),
        "{shown}"
    );
}
