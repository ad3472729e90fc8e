//! End to end with the whole simulator (`relay_sim::Sim`): tokens from the manager open
//! the simulated Defender and Graph APIs, and an API's 401 leads to a working new token.

use crate::util::*;
use relay_auth::{Credential, TenantAuth, TokenVersion};
use relay_config::{Audience, Feed, Secret};
use relay_sim::{Sim, SimConfig};
use std::time::Duration;

fn feed_url(sim: &Sim, feed: Feed) -> url::Url {
    let endpoints = sim.endpoints();
    let path = match feed {
        Feed::M365dIncidents => "api/incidents?$top=1",
        Feed::MdeAlerts => "api/alerts?$top=1",
        Feed::GraphIncidents => "v1.0/security/incidents?$top=1",
        Feed::GraphAlerts => "v1.0/security/alerts_v2?$top=1",
    };
    endpoints.base_for(feed).join(path).unwrap()
}

async fn get(url: &url::Url, token: &Secret) -> reqwest::StatusCode {
    http()
        .get(url.clone())
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap()
        .status()
}

fn auth(sim: &Sim, i: usize, credential: Credential) -> TenantAuth {
    let t = &sim.tenants()[i];
    TenantAuth {
        name: t.name.clone(),
        tenant_id: t.tenant_id.clone(),
        endpoints: sim.endpoints(),
        client_id: t.client_id.clone(),
        credential,
        token_version: TokenVersion::V2,
        probe: relay_auth::ProbeBackoff::default(),
    }
}

#[tokio::test]
async fn tokens_open_every_feed_of_the_simulated_apis() {
    let sim = Sim::start(SimConfig {
        tenants: 3,
        seed: 11,
        backlog: 2,
        activity: 0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (m, _) = memory_manager();
    let tenants = sim.tenants().to_vec();
    let (cert, key) = identity();
    sim.entra()
        .register_certificate(&tenants[2].tenant_id, &tenants[2].client_id, cert)
        .unwrap();
    m.upsert_tenant(auth(
        &sim,
        0,
        Credential::RefreshToken {
            refresh_token: Secret::new(tenants[0].refresh_token.clone()),
            client_secret: None,
        },
    ));
    m.upsert_tenant(auth(
        &sim,
        1,
        Credential::ClientSecret {
            secret: Secret::new(tenants[1].client_secret.clone()),
        },
    ));
    m.upsert_tenant(auth(
        &sim,
        2,
        Credential::Certificate {
            cert_pem: cert.clone(),
            key_pem: Secret::new(key.clone()),
        },
    ));
    for t in &tenants {
        for feed in Feed::ALL {
            let token = m.access_token(&t.name, feed.audience()).await.unwrap();
            assert_eq!(
                get(&feed_url(&sim, feed), &token.secret).await,
                reqwest::StatusCode::OK,
                "{} {feed}",
                t.name
            );
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_api_401_is_answered_by_invalidate_and_a_new_token() {
    let sim = Sim::start(SimConfig {
        tenants: 1,
        seed: 12,
        backlog: 1,
        activity: 0,
        access_token_lifetime: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let t = sim.tenants()[0].clone();
    let (m, _) = memory_manager();
    m.upsert_tenant(auth(
        &sim,
        0,
        Credential::ClientSecret {
            secret: Secret::new(t.client_secret.clone()),
        },
    ));
    let url = feed_url(&sim, Feed::GraphAlerts);
    let old = m.access_token(&t.name, Audience::Graph).await.unwrap();
    assert_eq!(get(&url, &old.secret).await, reqwest::StatusCode::OK);

    // A caller that held on to its token past expiry gets the API's 401.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        get(&url, &old.secret).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    m.invalidate(&t.name, Audience::Graph, &old);
    let new = m.access_token(&t.name, Audience::Graph).await.unwrap();
    assert_ne!(new, old);
    assert_eq!(get(&url, &new.secret).await, reqwest::StatusCode::OK);
    sim.shutdown().await;
}
