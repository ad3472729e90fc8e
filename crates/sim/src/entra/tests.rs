//! Router-level tests of the simulated Entra: every grant's success and failure shapes,
//! rotation, certificates, device flow, faults, revocations and bearer checks.

use super::*;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use std::time::Instant;
use tower::ServiceExt;

const T1: &str = "10000000-0000-4000-8000-000000000001";
const T2: &str = "20000000-0000-4000-8000-000000000002";
/// One multi-tenant app consented in both tenants, as an MSSP runs it.
const CLIENT: &str = "a0000000-0000-4000-8000-00000000000a";
const SECRET1: &str = "s1~Q8.x_y-Zz+/=%";
const SECRET2: &str = "secret-two";
const RT1: &str = "0.Ainitial-refresh-token-t1";
const RT2: &str = "0.Ainitial-refresh-token-t2";
const BASE: &str = "http://sim.test/";

fn config() -> EntraConfig {
    EntraConfig {
        access_token_lifetime: Duration::from_secs(60),
        refresh_token_grace: Duration::from_secs(1),
        device_code_interval: Duration::from_secs(1),
        issuer_base: Url::parse(BASE).unwrap(),
    }
}

fn apps() -> Vec<AppRegistration> {
    vec![
        AppRegistration {
            tenant_id: T1.into(),
            client_id: CLIENT.into(),
            client_secret: SECRET1.into(),
            initial_refresh_token: RT1.into(),
        },
        AppRegistration {
            tenant_id: T2.into(),
            client_id: CLIENT.into(),
            client_secret: SECRET2.into(),
            initial_refresh_token: RT2.into(),
        },
    ]
}

fn sim() -> Arc<Entra> {
    Entra::new(config(), apps())
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn location(&self) -> Url {
        Url::parse(self.headers[header::LOCATION].to_str().unwrap()).unwrap()
    }
}

async fn call(e: &Arc<Entra>, req: Request<Body>) -> Resp {
    let res = e.router().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

async fn post_form_with(
    e: &Arc<Entra>,
    path: &str,
    pairs: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Resp {
    let mut req =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = serde_urlencoded::to_string(pairs).unwrap();
    call(e, req.body(Body::from(body)).unwrap()).await
}

async fn post_form(e: &Arc<Entra>, path: &str, pairs: &[(&str, &str)]) -> Resp {
    post_form_with(e, path, pairs, &[]).await
}

async fn get(e: &Arc<Entra>, uri: &str) -> Resp {
    call(e, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn send_json(e: &Arc<Entra>, method: &str, uri: &str, body: Value) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(e, req).await
}

fn v2(tenant: &str) -> String {
    format!("/{tenant}/oauth2/v2.0/token")
}

fn v1(tenant: &str) -> String {
    format!("/{tenant}/oauth2/token")
}

const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

/// Asserts an Entra error body, field by field.
#[track_caller]
fn assert_sts(r: &Resp, status: StatusCode, error: &str, code: u32) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let b = r.json();
    assert_eq!(b["error"], error, "{b}");
    assert_eq!(b["error_codes"], json!([code]), "{b}");
    let desc = b["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    let trailer = format!(
        "\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
        b["trace_id"].as_str().unwrap(),
        b["correlation_id"].as_str().unwrap(),
        b["timestamp"].as_str().unwrap()
    );
    assert!(desc.ends_with(&trailer), "{desc:?}");
    assert!(chrono::NaiveDateTime::parse_from_str(
        b["timestamp"].as_str().unwrap(),
        "%Y-%m-%d %H:%M:%SZ"
    )
    .is_ok());
    assert_eq!(
        b["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    b
}

fn claims_of(e: &Entra, access_token: &str, audience: Audience) -> AccessClaims {
    e.verify_bearer(Some(&format!("Bearer {access_token}")), audience)
        .unwrap()
}

fn now_unix() -> i64 {
    tokens::unix(SystemTime::now())
}

// ---------------------------------------------------------------- client credentials

#[tokio::test]
async fn client_credentials_v2_secret_issues_app_token() {
    let e = sim();
    let r = post_form(
        &e,
        &v2(T1),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_DEFAULT),
            ("client_secret", SECRET1),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store, no-cache");
    let b = r.json();
    let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["access_token", "expires_in", "ext_expires_in", "token_type"]
    );
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], json!(60));
    assert_eq!(b["ext_expires_in"], json!(60));
    let c = claims_of(&e, b["access_token"].as_str().unwrap(), Audience::Graph);
    assert_eq!(c.tenant_id, T1);
    assert_eq!(c.app_id, CLIENT);
    assert_eq!(
        c.roles,
        ["SecurityIncident.Read.All", "SecurityAlert.Read.All"]
    );
    assert!(c.user.is_none());
    let lifetime = (c.expires_at - c.issued_at).num_seconds();
    assert_eq!(lifetime, 60);
}

#[tokio::test]
async fn client_credentials_basic_auth_with_form_encoded_secret() {
    let e = sim();
    let user = percent_encoding::utf8_percent_encode(CLIENT, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let pass = percent_encoding::utf8_percent_encode(SECRET1, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
    let r = post_form_with(
        &e,
        &v2(T1),
        &[
            ("scope", "https://api.security.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ],
        &[("authorization", &basic)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of(
        &e,
        r.json()["access_token"].as_str().unwrap(),
        Audience::ThreatProtection,
    );
    assert_eq!(c.roles, ["Incident.Read.All", "Alert.Read.All"]);

    let wrong = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:nope")));
    let r = post_form_with(
        &e,
        &v2(T1),
        &[
            ("scope", GRAPH_DEFAULT),
            ("grant_type", "client_credentials"),
        ],
        &[("authorization", &wrong)],
    )
    .await;
    assert_sts(&r, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn client_credentials_v1_types_times_as_strings() {
    let e = sim();
    let before = now_unix();
    let r = post_form(
        &e,
        &v1(T2),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET2),
            ("resource", "https://api.securitycenter.microsoft.com"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], json!("60"));
    assert_eq!(b["ext_expires_in"], json!("60"));
    assert_eq!(b["resource"], "https://api.securitycenter.microsoft.com");
    let expires_on: i64 = b["expires_on"].as_str().unwrap().parse().unwrap();
    let not_before: i64 = b["not_before"].as_str().unwrap().parse().unwrap();
    assert!(not_before >= before && expires_on == not_before + 60, "{b}");
    assert!(b.get("refresh_token").is_none());
    let c = claims_of(
        &e,
        b["access_token"].as_str().unwrap(),
        Audience::WindowsDefenderAtp,
    );
    assert_eq!(c.tenant_id, T2);
}

#[tokio::test]
async fn client_credentials_failures_have_entra_shapes() {
    let e = sim();
    let ok = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![
            ("client_id", CLIENT),
            ("client_secret", SECRET1),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_DEFAULT),
        ];
        for (k, val) in extra {
            v.retain(|(key, _)| key != k);
            if !val.is_empty() {
                v.push((k, val));
            }
        }
        v
    };
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, StatusCode, &'a str, u32);
    let cases: Vec<Case<'_>> = vec![
        (
            v2(T1),
            ok(&[("client_secret", "wrong")]),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
        ),
        (
            v2(T1),
            ok(&[("client_secret", "")]),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
        ),
        (
            v2("30000000-0000-4000-8000-000000000003"),
            ok(&[]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
        ),
        (
            v2(T1),
            ok(&[("resource", "https://graph.microsoft.com")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            901002,
        ),
        (
            v2(T1),
            ok(&[("scope", "https://graph.windows.net/.default")]),
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
        ),
        (
            v2(T1),
            ok(&[(
                "scope",
                "https://graph.microsoft.com/SecurityAlert.Read.All",
            )]),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
        ),
        (
            v2(T1),
            ok(&[("scope", "")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            v2("common"),
            ok(&[]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            9001023,
        ),
        (
            v2(T1),
            ok(&[("client_id", "b0000000-0000-4000-8000-00000000000b")]),
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
        ),
        (
            v2(T1),
            ok(&[("grant_type", "password")]),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
        ),
        (
            v2(T1),
            ok(&[("grant_type", "")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            v1(T1),
            ok(&[("scope", "")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            v1(T1),
            ok(&[("scope", ""), ("resource", "https://example.com")]),
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
        ),
    ];
    for (path, form, status, error, code) in cases {
        let r = post_form(&e, &path, &form).await;
        assert_sts(&r, status, error, code);
    }
    // Tenant T1's secret is not T2's.
    let r = post_form(&e, &v2(T2), &ok(&[])).await;
    assert_sts(&r, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
}

#[tokio::test]
async fn error_echoes_client_request_id_as_correlation_id() {
    let e = sim();
    let cid = "7c9a2f1e-1111-4222-8333-944445555666";
    let r = post_form_with(
        &e,
        &v2(T1),
        &[("grant_type", "client_credentials"), ("client_id", CLIENT)],
        &[("client-request-id", cid)],
    )
    .await;
    let b = assert_sts(&r, StatusCode::UNAUTHORIZED, "invalid_client", 7000218);
    assert_eq!(b["correlation_id"], cid);
}

// ---------------------------------------------------------------- refresh tokens

async fn refresh_v2(e: &Arc<Entra>, tenant: &str, rt: &str, scope: &str) -> Resp {
    post_form(
        e,
        &v2(tenant),
        &[
            ("client_id", CLIENT),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("scope", scope),
        ],
    )
    .await
}

#[tokio::test]
async fn refresh_rotates_and_old_token_dies_after_grace() {
    let e = sim();
    let r = refresh_v2(&e, T1, RT1, &format!("{GRAPH_DEFAULT} offline_access")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], json!(60));
    assert!(
        b["scope"]
            .as_str()
            .unwrap()
            .starts_with("https://graph.microsoft.com/"),
        "{b}"
    );
    let rt_a = b["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt_a, RT1);
    let c = claims_of(&e, b["access_token"].as_str().unwrap(), Audience::Graph);
    assert!(c.roles.is_empty());
    assert!(c.scopes.contains(&"SecurityAlert.Read.All".to_string()));
    assert!(c.user.is_some());

    // Within the grace the replaced token still works (and rotates again).
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let rt_b = r.json()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt_b, rt_a);

    // A refresh token is not bound to a resource.
    let r = refresh_v2(&e, T1, &rt_a, "https://api.security.microsoft.com/.default").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of(
        &e,
        r.json()["access_token"].as_str().unwrap(),
        Audience::ThreatProtection,
    );
    assert_eq!(c.scopes, ["Incident.Read", "Alert.Read"]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70008);
    let r = refresh_v2(&e, T1, &rt_a, GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70008);
    // The never-used token from the second rotation is alive.
    let r = refresh_v2(&e, T1, &rt_b, GRAPH_DEFAULT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn refresh_v1_with_secret_types_times_as_strings() {
    let e = sim();
    let r = post_form(
        &e,
        &v1(T2),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", RT2),
            ("resource", "https://api.security.microsoft.com"),
            ("client_secret", SECRET2),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    for k in ["expires_in", "expires_on", "not_before", "ext_expires_in"] {
        assert!(b[k].is_string(), "{k} in {b}");
    }
    assert_eq!(b["expires_in"], "60");
    assert_eq!(b["resource"], "https://api.security.microsoft.com");
    assert!(b["refresh_token"].as_str().is_some_and(|rt| rt != RT2));
    assert!(b["scope"].is_string());
}

#[tokio::test]
async fn refresh_failures() {
    let e = sim();
    let r = refresh_v2(&e, T1, "garbage", GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 9002313);
    // T2's token at T1's endpoint.
    let r = refresh_v2(&e, T1, RT2, GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70000);
    // Another client.
    let r = post_form(
        &e,
        &v2(T1),
        &[
            ("client_id", "b0000000-0000-4000-8000-00000000000b"),
            ("grant_type", "refresh_token"),
            ("refresh_token", RT1),
        ],
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70000);
    // A wrong secret is refused even though none is required.
    let r = post_form(
        &e,
        &v2(T1),
        &[
            ("client_id", CLIENT),
            ("grant_type", "refresh_token"),
            ("refresh_token", RT1),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_sts(&r, StatusCode::UNAUTHORIZED, "invalid_client", 7000215);
    let r = refresh_v2(&e, T1, "", GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_request", 900144);
    let r = refresh_v2(&e, T1, RT1, "https://example.com/.default").await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_resource", 500011);
    // None of the failures above consumed the token.
    assert_eq!(
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_token_dies_after_inactivity() {
    let e = sim();
    e.set_refresh_token_max_inactive(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    let b = assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 700082);
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("inactive for 0.00:00:01"),
        "{b}"
    );
}

#[tokio::test]
async fn revoke_grant_kills_refresh_tokens_until_restore() {
    let e = sim();
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    let rt_new = r.json()["refresh_token"].as_str().unwrap().to_string();
    e.revoke_grant(T1);
    for rt in [RT1, rt_new.as_str()] {
        let r = refresh_v2(&e, T1, rt, GRAPH_DEFAULT).await;
        let b = assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 50173);
        assert!(b["error_description"].as_str().unwrap().contains("revoked"));
    }
    // Other tenants are untouched; client credentials are not a grant.
    assert_eq!(
        refresh_v2(&e, T2, RT2, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
    let r = post_form(
        &e,
        &v2(T1),
        &[
            ("client_id", CLIENT),
            ("client_secret", SECRET1),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_DEFAULT),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // A new sign-in yields a working token.
    let rt = authorize_and_redeem(
        &e,
        T1,
        "offline_access https://graph.microsoft.com/.default",
    )
    .await;
    assert_eq!(
        refresh_v2(&e, T1, &rt, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
    e.restore(T1);
    assert_eq!(
        refresh_v2(&e, T1, &rt_new, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn revoke_consent_then_admin_consent_restores() {
    let e = sim();
    e.revoke_consent(T1);
    let cc = [
        ("client_id", CLIENT),
        ("client_secret", SECRET1),
        ("grant_type", "client_credentials"),
        ("scope", GRAPH_DEFAULT),
    ];
    let r = post_form(&e, &v2(T1), &cc).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "unauthorized_client", 700016);
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 65001);
    assert_eq!(
        post_form(&e, &v2(T2), &cc_form(SECRET2)).await.status,
        StatusCode::OK
    );

    let r = get(
        &e,
        &format!("/{T1}/adminconsent?client_id={CLIENT}&state=xyz&redirect_uri=http%3A%2F%2Flocalhost%3A8400%2Fcb"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let loc = r.location();
    assert_eq!(loc.path(), "/cb");
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["tenant"], T1);
    assert_eq!(q["state"], "xyz");
    assert_eq!(q["admin_consent"], "True");
    assert_eq!(post_form(&e, &v2(T1), &cc).await.status, StatusCode::OK);
    assert_eq!(
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
}

fn cc_form(secret: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("client_id", CLIENT),
        ("client_secret", secret),
        ("grant_type", "client_credentials"),
        ("scope", GRAPH_DEFAULT),
    ]
}

// ---------------------------------------------------------------- authorization code

fn pkce_pair() -> (String, String) {
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_string();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn authorize(
    e: &Arc<Entra>,
    tenant: &str,
    scope: &str,
    challenge: Option<&str>,
) -> (String, Url) {
    let mut url = Url::parse(&format!("http://x/{tenant}/oauth2/v2.0/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT)
        .append_pair("redirect_uri", "http://localhost:8400/callback")
        .append_pair("response_type", "code")
        .append_pair("state", "st4te")
        .append_pair("scope", scope);
    if let Some(c) = challenge {
        url.query_pairs_mut()
            .append_pair("code_challenge", c)
            .append_pair("code_challenge_method", "S256");
    }
    let r = get(e, &format!("{}?{}", url.path(), url.query().unwrap())).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    let loc = r.location();
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("st4te"), "{loc}");
    (q.get("code").cloned().unwrap_or_default(), loc)
}

async fn redeem(e: &Arc<Entra>, tenant: &str, code: &str, verifier: Option<&str>) -> Resp {
    let mut form = vec![
        ("client_id", CLIENT),
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", "http://localhost:8400/callback"),
        ("scope", GRAPH_DEFAULT),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    post_form(e, &v2(tenant), &form).await
}

async fn authorize_and_redeem(e: &Arc<Entra>, tenant: &str, scope: &str) -> String {
    let (code, _) = authorize(e, tenant, scope, None).await;
    let r = redeem(e, tenant, &code, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn authorization_code_with_pkce() {
    let e = sim();
    let (verifier, challenge) = pkce_pair();
    let (code, loc) = authorize(
        &e,
        T1,
        "openid offline_access https://api.securitycenter.microsoft.com/.default",
        Some(&challenge),
    )
    .await;
    assert!(loc
        .as_str()
        .starts_with("http://localhost:8400/callback?code="));
    let r = redeem(
        &e,
        T1,
        &code,
        Some("wrong-verifier-wrong-verifier-wrong-verifier"),
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 501481);
    let r = redeem(&e, T1, &code, None).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_request", 900144);
    let r = redeem(&e, T1, &code, Some(&verifier)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    assert_eq!(b["expires_in"], json!(60));
    assert!(b["refresh_token"].is_string());
    assert!(b["id_token"].is_string());
    let c = claims_of(
        &e,
        b["access_token"].as_str().unwrap(),
        Audience::WindowsDefenderAtp,
    );
    assert_eq!(c.tenant_id, T1);
    // Single use.
    let r = redeem(&e, T1, &code, Some(&verifier)).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 54005);
}

#[tokio::test]
async fn authorization_code_rules() {
    let e = sim();
    // Without offline_access there is no refresh token.
    let (code, _) = authorize(&e, T2, "https://graph.microsoft.com/.default", None).await;
    let r = redeem(&e, T2, &code, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json().get("refresh_token").is_none());
    assert!(r.json().get("id_token").is_none());
    // Redirect URI must match.
    let (code, _) = authorize(&e, T2, "https://graph.microsoft.com/.default", None).await;
    let r = post_form(
        &e,
        &v2(T2),
        &[
            ("client_id", CLIENT),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://localhost:9999/other"),
        ],
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70000);
    // Redeemed at the wrong tenant.
    let r = redeem(&e, T1, &code, None).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70000);
    // Expired.
    e.set_auth_code_lifetime(Duration::ZERO);
    let (code, _) = authorize(&e, T2, "https://graph.microsoft.com/.default", None).await;
    let r = redeem(&e, T2, &code, None).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70008);
    // A bad scope goes back to the client as a redirect error.
    let (code, loc) = authorize(&e, T2, "https://example.com/.default", None).await;
    assert!(code.is_empty());
    let q: HashMap<String, String> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "invalid_resource");
    assert!(q["error_description"].starts_with("AADSTS500011"));
    // Unknown app: an error page, never a redirect.
    let r = get(
        &e,
        &format!("/{T1}/oauth2/v2.0/authorize?client_id=b0000000-0000-4000-8000-00000000000b&redirect_uri=http://localhost/&response_type=code&scope=openid"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("AADSTS700016"));
}

#[tokio::test]
async fn authorize_on_common_uses_domain_hint() {
    let e = sim();
    let r = get(
        &e,
        &format!("/common/oauth2/v2.0/authorize?client_id={CLIENT}&redirect_uri=http://localhost/cb&response_type=code&scope=offline_access&domain_hint={T2}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let code = r
        .location()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let r = post_form(
        &e,
        &v2("organizations"),
        &[
            ("client_id", CLIENT),
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://localhost/cb"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = claims_of(
        &e,
        r.json()["access_token"].as_str().unwrap(),
        Audience::Graph,
    );
    assert_eq!(c.tenant_id, T2);
}

// ---------------------------------------------------------------- device code

async fn start_device(e: &Arc<Entra>, tenant: &str, scope: &str) -> Value {
    let r = post_form(
        e,
        &format!("/{tenant}/oauth2/v2.0/devicecode"),
        &[("client_id", CLIENT), ("scope", scope)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn poll_device(e: &Arc<Entra>, tenant: &str, device_code: &str) -> Resp {
    post_form(
        e,
        &v2(tenant),
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", CLIENT),
            ("device_code", device_code),
        ],
    )
    .await
}

#[tokio::test]
async fn device_code_pending_then_approved() {
    let e = sim();
    let d = start_device(
        &e,
        T1,
        "https://graph.microsoft.com/.default offline_access",
    )
    .await;
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "device_code",
            "expires_in",
            "interval",
            "message",
            "user_code",
            "verification_uri"
        ]
    );
    assert_eq!(d["expires_in"], json!(900));
    assert_eq!(d["interval"], json!(1));
    assert_eq!(d["verification_uri"], "http://sim.test/devicelogin");
    let user_code = d["user_code"].as_str().unwrap();
    assert!(d["message"].as_str().unwrap().contains(user_code));
    let device_code = d["device_code"].as_str().unwrap();

    let r = poll_device(&e, T1, device_code).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "authorization_pending", 70016);
    assert!(e.approve_device_code(&user_code.to_lowercase()));
    assert!(
        !e.approve_device_code(user_code),
        "only pending codes can be approved"
    );
    let r = poll_device(&e, T1, device_code).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let b = r.json();
    let rt = b["refresh_token"].as_str().unwrap();
    assert!(b["scope"].is_string());
    claims_of(&e, b["access_token"].as_str().unwrap(), Audience::Graph);
    assert_eq!(
        refresh_v2(&e, T1, rt, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
    let r = poll_device(&e, T1, device_code).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 70000);

    let stats = e.token_requests();
    assert_eq!(stats.tenant(T1, GrantKind::DeviceCode, Outcome::Pending), 1);
    assert_eq!(stats.tenant(T1, GrantKind::DeviceCode, Outcome::Issued), 1);
    assert_eq!(
        stats.tenant(T1, GrantKind::DeviceCodeStart, Outcome::Issued),
        1
    );
}

#[tokio::test]
async fn device_code_declined_expired_unknown() {
    let e = sim();
    let d = start_device(&e, T2, "https://graph.microsoft.com/.default").await;
    assert!(e.decline_device_code(d["user_code"].as_str().unwrap()));
    let r = poll_device(&e, T2, d["device_code"].as_str().unwrap()).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "authorization_declined", 70000);

    e.set_device_code_lifetime(Duration::ZERO);
    let d = start_device(&e, T2, "https://graph.microsoft.com/.default").await;
    assert!(!e.approve_device_code(d["user_code"].as_str().unwrap()));
    let r = poll_device(&e, T2, d["device_code"].as_str().unwrap()).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "expired_token", 70019);

    let r = poll_device(&e, T2, "no-such-code").await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "bad_verification_code", 70000);
    let r = post_form(
        &e,
        &format!("/{T2}/oauth2/v2.0/devicecode"),
        &[("client_id", CLIENT)],
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_request", 900144);
    let r = post_form(
        &e,
        &format!("/{T2}/oauth2/v2.0/devicecode"),
        &[
            ("client_id", "b0000000-0000-4000-8000-00000000000b"),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "unauthorized_client", 700016);
}

#[tokio::test]
async fn device_login_page_and_control_route_approve() {
    let e = sim();
    let d = start_device(&e, T1, "offline_access").await;
    let r = get(&e, "/devicelogin").await;
    assert!(r.text().contains("<form"));
    let r = post_form(&e, "/devicelogin", &[("otc", "WRONGCODE")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let uc = d["user_code"].as_str().unwrap();
    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/device-codes/{uc}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/device-codes/{uc}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = poll_device(&e, T1, d["device_code"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let d = start_device(&e, T1, "offline_access").await;
    let r = post_form(
        &e,
        "/devicelogin",
        &[("otc", d["user_code"].as_str().unwrap())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        poll_device(&e, T1, d["device_code"].as_str().unwrap())
            .await
            .status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- certificates

struct KeyMaterial {
    key_pem: String,
    cert_pem: String,
    cert_der: Vec<u8>,
}

fn make_key() -> KeyMaterial {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let kp = rcgen::KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["xdr-relay.test".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    KeyMaterial {
        key_pem: key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
    }
}

/// Two key pairs, generated once per test binary (RSA generation is the slow part).
fn keys() -> &'static (KeyMaterial, KeyMaterial) {
    static KEYS: OnceLock<(KeyMaterial, KeyMaterial)> = OnceLock::new();
    KEYS.get_or_init(|| (make_key(), make_key()))
}

enum Thumb<'a> {
    S256(&'a [u8]),
    Sha1(&'a [u8]),
}

fn assertion(signer: &KeyMaterial, alg: Algorithm, thumb: Thumb<'_>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    match thumb {
        Thumb::S256(der) => h.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(der))),
        Thumb::Sha1(der) => {
            use sha1::Sha1;
            h.x5t = Some(URL_SAFE_NO_PAD.encode(Sha1::digest(der)));
        }
    }
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_rsa_pem(signer.key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn assertion_claims(aud: &str, exp_in: i64) -> Value {
    let now = now_unix();
    json!({
        "aud": aud, "iss": CLIENT, "sub": CLIENT, "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now, "nbf": now, "exp": now + exp_in,
    })
}

async fn cc_with_assertion(
    e: &Arc<Entra>,
    path: &str,
    assertion: &str,
    with_client_id: bool,
    host: Option<&str>,
) -> Resp {
    let mut form = vec![
        ("scope", GRAPH_DEFAULT),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", assertion::ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    if with_client_id {
        form.push(("client_id", CLIENT));
    }
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    post_form_with(e, path, &form, &headers).await
}

#[tokio::test]
async fn certificate_assertion_checks() {
    let e = sim();
    let (good, other) = keys();
    e.register_certificate(T1, CLIENT, &good.cert_pem).unwrap();
    let aud_v2 = format!("{BASE}{T1}/oauth2/v2.0/token");

    // RS256 with x5t#S256.
    let a = assertion(
        good,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(&aud_v2, 600),
    );
    let r = cc_with_assertion(&e, &v2(T1), &a, true, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        claims_of(
            &e,
            r.json()["access_token"].as_str().unwrap(),
            Audience::Graph
        )
        .tenant_id,
        T1
    );

    // PS256, SHA-1 x5t, no client_id (taken from iss), v1 audience forms.
    for aud in [
        aud_v2.clone(),
        format!("{BASE}{T1}/oauth2/token"),
        format!("{BASE}{T1}/v2.0"),
    ] {
        let a = assertion(
            good,
            Algorithm::PS256,
            Thumb::Sha1(&good.cert_der),
            &assertion_claims(&aud, 600),
        );
        let r = cc_with_assertion(&e, &v2(T1), &a, false, None).await;
        assert_eq!(r.status, StatusCode::OK, "{aud}: {}", r.text());
    }
    // The audience may be built from the Host the client used.
    let a = assertion(
        good,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(
            &format!("http://127.0.0.1:4555/{T1}/oauth2/v2.0/token"),
            600,
        ),
    );
    let r = cc_with_assertion(&e, &v2(T1), &a, true, Some("127.0.0.1:4555")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Signed by another key but naming the registered certificate.
    let a = assertion(
        other,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(&aud_v2, 600),
    );
    assert_sts(
        &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
    );
    // An unregistered certificate.
    let a = assertion(
        other,
        Algorithm::RS256,
        Thumb::S256(&other.cert_der),
        &assertion_claims(&aud_v2, 600),
    );
    let b = assert_sts(
        &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
    );
    assert!(b["error_description"]
        .as_str()
        .unwrap()
        .contains("not registered"));
    // Wrong audience: another tenant's endpoint, and the real login host.
    for aud in [
        format!("{BASE}{T2}/oauth2/v2.0/token"),
        format!("https://login.microsoftonline.com/{T1}/oauth2/v2.0/token"),
    ] {
        let a = assertion(
            good,
            Algorithm::RS256,
            Thumb::S256(&good.cert_der),
            &assertion_claims(&aud, 600),
        );
        assert_sts(
            &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            50013,
        );
    }
    // Expired beyond the clock skew.
    let a = assertion(
        good,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(&aud_v2, -3600),
    );
    assert_sts(
        &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        500133,
    );
    // Not yet valid.
    let mut c = assertion_claims(&aud_v2, 7200);
    c["nbf"] = json!(now_unix() + 3600);
    let a = assertion(good, Algorithm::RS256, Thumb::S256(&good.cert_der), &c);
    assert_sts(
        &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        500133,
    );
    // Issued for another client.
    let mut c = assertion_claims(&aud_v2, 600);
    c["iss"] = json!("b0000000-0000-4000-8000-00000000000b");
    c["sub"] = json!("b0000000-0000-4000-8000-00000000000b");
    let a = assertion(good, Algorithm::RS256, Thumb::S256(&good.cert_der), &c);
    assert_sts(
        &cc_with_assertion(&e, &v2(T1), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700021,
    );
    // Certificates are per tenant: T2 has none.
    let aud_t2 = format!("{BASE}{T2}/oauth2/v2.0/token");
    let a = assertion(
        good,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(&aud_t2, 600),
    );
    assert_sts(
        &cc_with_assertion(&e, &v2(T2), &a, true, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
    );
    // Garbage.
    assert_sts(
        &cc_with_assertion(&e, &v2(T1), "not.a-jwt", true, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
    );
    // Wrong assertion type.
    let r = post_form(
        &e,
        &v2(T1),
        &[
            ("client_id", CLIENT),
            ("scope", GRAPH_DEFAULT),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "jwt"),
            ("client_assertion", &a),
        ],
    )
    .await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_request", 90014);
}

#[tokio::test]
async fn register_certificate_errors_and_control_route() {
    let e = sim();
    let (good, _) = keys();
    assert!(matches!(
        e.register_certificate("nope", CLIENT, &good.cert_pem),
        Err(EntraError::UnknownTenant { .. })
    ));
    assert!(matches!(
        e.register_certificate(T1, "b0000000-0000-4000-8000-00000000000b", &good.cert_pem),
        Err(EntraError::UnknownApp { .. })
    ));
    assert!(matches!(
        e.register_certificate(
            T1,
            CLIENT,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ),
        Err(EntraError::Certificate { .. })
    ));
    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/tenants/{T2}/certificates"),
        json!({"client_id": CLIENT, "cert_pem": good.cert_pem}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let aud = format!("{BASE}{T2}/oauth2/v2.0/token");
    let a = assertion(
        good,
        Algorithm::RS256,
        Thumb::S256(&good.cert_der),
        &assertion_claims(&aud, 600),
    );
    assert_eq!(
        cc_with_assertion(&e, &v2(T2), &a, true, None).await.status,
        StatusCode::OK
    );
    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/tenants/{T2}/certificates"),
        json!({"client_id": CLIENT, "cert_pem": "junk"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------- faults and stats

#[tokio::test]
async fn faults_down_html_slow_and_clear() {
    let e = sim();
    let cc = [
        ("client_id", CLIENT),
        ("client_secret", SECRET1),
        ("grant_type", "client_credentials"),
        ("scope", GRAPH_DEFAULT),
    ];
    e.set_token_fault(T1, Some(TokenFault::Down));
    let r = post_form(&e, &v2(T1), &cc).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    // Other tenants are fine.
    assert_eq!(
        post_form(&e, &v2(T2), &cc_form(SECRET2)).await.status,
        StatusCode::OK
    );

    e.set_token_fault(T1, Some(TokenFault::Html));
    let r = post_form(&e, &v1(T1), &cc).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().starts_with("<!DOCTYPE html>"));
    // The device-code endpoint is behind the same front door.
    let r = post_form(
        &e,
        &format!("/{T1}/oauth2/v2.0/devicecode"),
        &[("client_id", CLIENT), ("scope", "openid")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    e.set_token_fault(T1, Some(TokenFault::Slow(Duration::from_millis(300))));
    let started = Instant::now();
    let r = post_form(&e, &v2(T1), &cc).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    e.set_token_fault(T1, None);
    assert_eq!(post_form(&e, &v2(T1), &cc).await.status, StatusCode::OK);
    let stats = e.token_requests();
    assert_eq!(
        stats.tenant(T1, GrantKind::ClientCredentials, Outcome::Faulted),
        2
    );
    assert_eq!(
        stats.tenant(T1, GrantKind::ClientCredentials, Outcome::Issued),
        2
    );
    assert_eq!(
        stats.tenant(T1, GrantKind::DeviceCodeStart, Outcome::Faulted),
        1
    );
    assert_eq!(
        stats.tenant(T2, GrantKind::ClientCredentials, Outcome::Issued),
        1
    );
}

#[tokio::test]
async fn reset_fault_drops_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let e = Entra::new(
        EntraConfig {
            issuer_base: Url::parse(&format!("http://{addr}/")).unwrap(),
            ..config()
        },
        apps(),
    );
    let router = e.router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/{T1}/oauth2/v2.0/token");
    let form = [
        ("client_id", CLIENT),
        ("client_secret", SECRET1),
        ("grant_type", "client_credentials"),
        ("scope", GRAPH_DEFAULT),
    ];
    e.set_token_fault(T1, Some(TokenFault::Reset));
    let err = http.post(&url).form(&form).send().await.unwrap_err();
    assert!(!err.is_status() && err.status().is_none(), "{err:?}");

    e.set_token_fault(T1, None);
    let r = http.post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    assert!(b["access_token"].is_string());
    assert_eq!(
        e.token_requests()
            .tenant(T1, GrantKind::ClientCredentials, Outcome::Faulted),
        1
    );
    server.abort();
}

#[tokio::test]
async fn concurrent_refreshes_show_in_flight_peak() {
    let e = sim();
    e.set_token_fault(T1, Some(TokenFault::Slow(Duration::from_millis(200))));
    let (a, b, c) = tokio::join!(
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT),
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT),
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT)
    );
    for r in [a, b, c] {
        assert_eq!(r.status, StatusCode::OK);
    }
    refresh_v2(&e, T2, RT2, GRAPH_DEFAULT).await;
    let s = e.token_requests();
    assert_eq!(s.max_in_flight(T1, GrantKind::RefreshToken), 3);
    assert_eq!(s.max_in_flight(T2, GrantKind::RefreshToken), 1);
    assert_eq!(s.tenant(T1, GrantKind::RefreshToken, Outcome::Issued), 3);
    assert_eq!(s.total(GrantKind::RefreshToken, Outcome::Issued), 4);
}

// ---------------------------------------------------------------- control routes

#[tokio::test]
async fn control_routes_drive_faults_revocations_and_stats() {
    let e = sim();
    let r = send_json(
        &e,
        "PUT",
        &format!("/_sim/entra/tenants/{T1}/fault"),
        json!({"kind": "down"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = send_json(
        &e,
        "PUT",
        &format!("/_sim/entra/tenants/{T1}/fault"),
        json!({"kind": "slow"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send_json(
        &e,
        "PUT",
        "/_sim/entra/tenants/nope/fault",
        json!({"kind": "down"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send_json(
        &e,
        "DELETE",
        &format!("/_sim/entra/tenants/{T1}/fault"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/tenants/{T1}/revoke-grant"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_sts(
        &refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        50173,
    );
    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/tenants/{T2}/revoke-consent"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_sts(
        &refresh_v2(&e, T2, RT2, GRAPH_DEFAULT).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        65001,
    );
    for t in [T1, T2] {
        let r = send_json(
            &e,
            "POST",
            &format!("/_sim/entra/tenants/{t}/restore"),
            json!({}),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );
    assert_eq!(
        refresh_v2(&e, T2, RT2, GRAPH_DEFAULT).await.status,
        StatusCode::OK
    );

    let r = send_json(
        &e,
        "POST",
        &format!("/_sim/entra/tenants/{T1}/access-tokens"),
        json!({"audience": "windows_defender_atp", "lifetime_secs": 30}),
    )
    .await;
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims_of(&e, &token, Audience::WindowsDefenderAtp).tenant_id,
        T1
    );

    let r = get(&e, "/_sim/entra/stats").await;
    let s = r.json();
    let counts = s["counts"].as_array().unwrap();
    assert!(counts.iter().any(|c| c["tenant_id"] == T1
        && c["grant"] == "refresh_token"
        && c["outcome"] == "faulted"
        && c["count"] == 1));
    assert!(counts.iter().any(|c| c["tenant_id"] == T2
        && c["grant"] == "refresh_token"
        && c["outcome"] == "rejected"
        && c["count"] == 1));
}

// ---------------------------------------------------------------- bearer verification

#[tokio::test]
async fn bearer_verification() {
    let e = sim();
    let t = e.mint_access_token(T1, Audience::ThreatProtection, Duration::from_secs(30));
    let c = claims_of(&e, &t, Audience::ThreatProtection);
    assert_eq!((c.tenant_id.as_str(), c.app_id.as_str()), (T1, CLIENT));
    assert!(matches!(
        e.verify_bearer(Some(&format!("Bearer {t}")), Audience::Graph),
        Err(BearerError::WrongAudience {
            expected: Audience::Graph,
            ..
        })
    ));
    let expired = e.mint_access_token(T1, Audience::Graph, Duration::ZERO);
    assert!(matches!(
        e.verify_bearer(Some(&format!("Bearer {expired}")), Audience::Graph),
        Err(BearerError::Expired { .. })
    ));
    let now = SystemTime::now();
    let future = e.mint_access_token_between(
        T1,
        Audience::Graph,
        now + Duration::from_secs(600),
        now + Duration::from_secs(1200),
    );
    assert!(matches!(
        e.verify_bearer(Some(&format!("Bearer {future}")), Audience::Graph),
        Err(BearerError::NotYetValid { .. })
    ));
    let stranger = sim().mint_access_token(T1, Audience::Graph, Duration::from_secs(30));
    assert_eq!(
        e.verify_bearer(Some(&format!("Bearer {stranger}")), Audience::Graph),
        Err(BearerError::BadSignature)
    );
    assert_eq!(
        e.verify_bearer(None, Audience::Graph),
        Err(BearerError::Missing)
    );
    assert_eq!(
        e.verify_bearer(Some(&t), Audience::Graph),
        Err(BearerError::Malformed)
    );
    assert_eq!(
        e.verify_bearer(Some("Bearer x.y.z"), Audience::Graph),
        Err(BearerError::Malformed)
    );
    assert_eq!(
        BearerError::Missing.graph_message(),
        "Access token is empty."
    );
}

#[tokio::test]
async fn sweep_drops_long_dead_records_only() {
    let e = sim();
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    let fresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let now = SystemTime::now();
    {
        let mut reg = e.registry.lock();
        let long_ago = now - Duration::from_secs(3600);
        reg.refresh_tokens.get_mut(RT1).unwrap().replaced_at = Some(long_ago);
        reg.inserts_since_sweep = SWEEP_EVERY - 1;
        reg.maybe_sweep(now, Duration::from_secs(1));
        assert!(!reg.refresh_tokens.contains_key(RT1));
        assert!(reg.refresh_tokens.contains_key(&fresh));
        assert!(reg.refresh_tokens.contains_key(RT2));
    }
    // A swept token reads as an unknown one.
    let r = refresh_v2(&e, T1, RT1, GRAPH_DEFAULT).await;
    assert_sts(&r, StatusCode::BAD_REQUEST, "invalid_grant", 9002313);
}
