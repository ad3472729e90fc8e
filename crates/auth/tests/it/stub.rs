//! Protocol edge cases against a scripted token endpoint: what is sent for each grant and
//! version, and how odd answers are classified.

use crate::util::*;
use relay_auth::{
    AuthError, AuthState, Credential, FailureKind, ManagerOptions, MemoryStore, OAuthError,
    TokenVersion,
};
use relay_config::{Audience, Secret};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const V1_REFRESH: &str = r#"{
  "token_type": "Bearer",
  "expires_in": "3600",
  "expires_on": "1460404526",
  "resource": "https://graph.microsoft.com",
  "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.v1-access-token-ABC.sig",
  "refresh_token": "AwABAAAAv-rotated-v1-refresh-token-XYZ"
}"#;

const V2_CC: &str = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":0,"access_token":"eyJ0eXAiOiJKV1Qi.v2-cc-access-token-DEF.sig"}"#;

fn rt_credential() -> Credential {
    Credential::RefreshToken {
        refresh_token: Secret::new("initial-refresh-token-0001"),
        client_secret: Some(Secret::new("web-app-secret-0002")),
    }
}

fn secret_credential() -> Credential {
    Credential::ClientSecret {
        secret: Secret::new("client-secret-0003"),
    }
}

#[tokio::test]
async fn v1_refresh_grant_sends_resource_and_accepts_string_expires_in() {
    let stub = Stub::start(Answer::json(200, V1_REFRESH)).await;
    let (m, store) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        rt_credential(),
        TokenVersion::V1,
    ));

    let before = Instant::now();
    let t = m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(
        t.secret.expose(),
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.v1-access-token-ABC.sig"
    );
    let lifetime = t.expires_at - before;
    assert!(
        lifetime <= Duration::from_secs(3602) && lifetime > Duration::from_secs(3590),
        "{lifetime:?}"
    );
    assert_eq!(
        store.get("contoso").unwrap().expose(),
        "AwABAAAAv-rotated-v1-refresh-token-XYZ"
    );

    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, format!("/{TENANT_ID}/oauth2/token"));
    assert_eq!(req.get("grant_type"), Some("refresh_token"));
    assert_eq!(req.get("refresh_token"), Some("initial-refresh-token-0001"));
    assert_eq!(req.get("client_id"), Some("app-1"));
    assert_eq!(req.get("client_secret"), Some("web-app-secret-0002"));
    assert_eq!(req.get("resource"), Some("https://graph.microsoft.com"));
    assert_eq!(req.get("scope"), None);

    // The next refresh uses the rotated token.
    m.invalidate("contoso", Audience::Graph, &t);
    m.access_token("contoso", Audience::Graph).await.unwrap();
    assert_eq!(
        stub.seen()[1].get("refresh_token"),
        Some("AwABAAAAv-rotated-v1-refresh-token-XYZ")
    );
}

#[tokio::test]
async fn v2_client_credentials_send_the_default_scope() {
    let stub = Stub::start(Answer::json(200, V2_CC)).await;
    let (m, store) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    m.access_token("contoso", Audience::WindowsDefenderAtp)
        .await
        .unwrap();
    let req = &stub.seen()[0];
    assert_eq!(req.path, format!("/{TENANT_ID}/oauth2/v2.0/token"));
    assert_eq!(req.get("grant_type"), Some("client_credentials"));
    assert_eq!(
        req.get("scope"),
        Some("https://api.securitycenter.microsoft.com/.default")
    );
    assert_eq!(req.get("client_secret"), Some("client-secret-0003"));
    assert_eq!(req.get("resource"), None);
    assert!(store.get("contoso").is_none(), "nothing to rotate");
}

#[tokio::test]
async fn certificate_grant_sends_an_assertion_instead_of_a_secret() {
    let stub = Stub::start(Answer::json(200, V2_CC)).await;
    let (m, _) = memory_manager();
    let (cert, key) = identity();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        Credential::Certificate {
            cert_pem: cert.clone(),
            key_pem: Secret::new(key.clone()),
        },
        TokenVersion::V2,
    ));
    m.access_token("contoso", Audience::Graph).await.unwrap();
    let req = &stub.seen()[0];
    assert_eq!(req.get("client_secret"), None);
    assert_eq!(
        req.get("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let jwt = req.get("client_assertion").unwrap();
    let claims = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["aud"],
        format!("{}{TENANT_ID}/oauth2/v2.0/token", stub.base)
    );
    assert_eq!(claims["iss"], "app-1");
}

#[tokio::test]
async fn throttling_is_transient_and_keeps_retry_after() {
    let mut answer = Answer::json(429, r#"{"error":"temporarily_unavailable"}"#);
    answer.retry_after = Some("7");
    let stub = Stub::start(answer).await;
    let (m, _) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(matches!(
        err,
        AuthError::Transient {
            kind: FailureKind::HttpStatus(429),
            ..
        }
    ));
    assert!(matches!(
        m.auth_state("contoso"),
        Some(AuthState::Failing {
            kind: FailureKind::HttpStatus(429),
            ..
        })
    ));
}

#[tokio::test]
async fn html_and_plain_text_answers_are_classified_by_status() {
    let stub = Stub::start(Answer::text(
        503,
        "text/html",
        "<html><body>Service Unavailable</body></html>",
    ))
    .await;
    let (m, _) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AuthError::Transient {
            kind: FailureKind::HttpStatus(503),
            ..
        }
    ));

    // A 404 page means the login URL is wrong: retrying will not fix it.
    stub.set(Answer::text(404, "text/html", "<h1>Not Found</h1>"));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(matches!(
        err,
        AuthError::Rejected {
            kind: FailureKind::HttpStatus(404),
            ..
        }
    ));

    // A 200 that is not a token response (a proxy's login page).
    stub.set(Answer::text(
        200,
        "text/html",
        "<html>sign in to the proxy</html>",
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AuthError::Transient {
            kind: FailureKind::MalformedResponse,
            ..
        }
    ));
}

#[tokio::test]
async fn an_unparseable_success_body_does_not_end_up_in_the_error() {
    let stub = Stub::start(Answer::json(
        200,
        r#"{"access_token":"LEAKY-access-token-998877","refresh_token":"LEAKY-refresh-665544","expires_in":"soon"}"#,
    ))
    .await;
    let (m, store) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        rt_credential(),
        TokenVersion::V2,
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AuthError::Transient {
            kind: FailureKind::MalformedResponse,
            ..
        }
    ));
    let shown = format!("{err} {err:?} {err:#?} {:?}", m.auth_state("contoso"));
    assert_no_leak(
        &shown,
        &[
            "LEAKY-access-token-998877".into(),
            "LEAKY-refresh-665544".into(),
        ],
    );
    assert!(store.get("contoso").is_none());
}

#[tokio::test]
async fn bad_client_secret_is_rejected_not_transient_and_not_consent() {
    let stub = Stub::start(Answer::json(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"trace_id":"t-1","correlation_id":"c-1"}"#,
    ))
    .await;
    let (m, _) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(!err.is_needs_consent());
    let AuthError::Rejected {
        kind: FailureKind::Entra(e),
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(e.error, OAuthError::InvalidClient);
    assert_eq!(e.code, Some(7000215));
    assert_eq!(e.trace_id.as_deref(), Some("t-1"));
    let shown = err.to_string();
    assert!(shown.contains("contoso"), "{shown}");
    assert!(shown.contains("AADSTS7000215"), "{shown}");
    assert!(!shown.contains("Invalid client secret provided"), "{shown}");
    // Not a consent problem: the next call asks again.
    let _ = m.access_token("contoso", Audience::Graph).await;
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn a_slow_endpoint_times_out_as_transient() {
    let mut answer = Answer::json(200, V2_CC);
    answer.delay = Duration::from_secs(5);
    let stub = Stub::start(answer).await;
    let m = manager(
        Arc::new(MemoryStore::new()),
        ManagerOptions {
            request_timeout: Duration::from_millis(300),
            ..ManagerOptions::default()
        },
    );
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    let started = std::time::Instant::now();
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        err,
        AuthError::Transient {
            kind: FailureKind::Timeout,
            ..
        }
    ));
}

#[tokio::test]
async fn a_response_without_expires_in_gets_a_short_lifetime() {
    let stub = Stub::start(Answer::json(
        200,
        r#"{"token_type":"Bearer","access_token":"no-expiry-token"}"#,
    ))
    .await;
    let (m, _) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    let before = Instant::now();
    let t = m.access_token("contoso", Audience::Graph).await.unwrap();
    let lifetime = t.expires_at - before;
    assert!(
        lifetime <= Duration::from_secs(302) && lifetime > Duration::from_secs(290),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn unusable_certificate_is_a_credential_error_without_network() {
    let stub = Stub::start(Answer::json(200, V2_CC)).await;
    let (m, _) = memory_manager();
    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        Credential::Certificate {
            cert_pem: "not a certificate".into(),
            key_pem: Secret::new(
                "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5\n-----END PRIVATE KEY-----",
            ),
        },
        TokenVersion::V2,
    ));
    let err = m
        .access_token("contoso", Audience::Graph)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Credential { .. }), "{err:?}");
    assert!(!err.to_string().contains("bm90LWEta2V5"));
    assert!(stub.seen().is_empty());
}

#[tokio::test]
async fn unknown_tenants_and_removal() {
    let stub = Stub::start(Answer::json(200, V2_CC)).await;
    let (m, _) = memory_manager();
    let err = m.access_token("nobody", Audience::Graph).await.unwrap_err();
    assert!(matches!(err, AuthError::UnknownTenant { .. }));
    assert_eq!(err.to_string(), "unknown tenant nobody");
    assert!(m.auth_state("nobody").is_none());

    m.upsert_tenant(tenant(
        "contoso",
        TENANT_ID,
        &stub.base,
        "app-1",
        secret_credential(),
        TokenVersion::V2,
    ));
    m.access_token("contoso", Audience::Graph).await.unwrap();
    let Some(AuthState::Ok { tokens }) = m.auth_state("contoso") else {
        panic!()
    };
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].audience, Audience::Graph);

    m.remove_tenant("contoso");
    assert!(m.auth_state("contoso").is_none());
    assert!(matches!(
        m.access_token("contoso", Audience::Graph).await,
        Err(AuthError::UnknownTenant { .. })
    ));
}
