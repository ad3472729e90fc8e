use super::*;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::post;
use relay_sim::{Sim, SimConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

const TENANT_ID: &str = "6f3b1c2a-0000-4000-8000-000000000001";
const CLIENT_ID: &str = "a1b2c3d4-0000-4000-8000-000000000002";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn sign_in_at(base: &str, secret: Option<&str>) -> SignIn {
    let endpoints = Endpoints::single_host(&Url::parse(base).unwrap());
    SignIn::new(
        no_redirects(),
        "contoso",
        TENANT_ID,
        &endpoints,
        CLIENT_ID,
        secret.map(Secret::new),
    )
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn authorize_url_carries_pkce_state_scopes_and_redirect() {
    let s = sign_in_at("https://login.microsoftonline.com", None);
    let redirect = Url::parse("http://localhost:53682/").unwrap();
    let req = s
        .authorize(
            &redirect,
            &scopes(&["https://graph.microsoft.com/.default", "offline_access"]),
        )
        .unwrap();
    let url = req.url().clone();
    assert_eq!(url.host_str(), Some("login.microsoftonline.com"));
    assert_eq!(url.path(), format!("/{TENANT_ID}/oauth2/v2.0/authorize"));
    let q = query(&url);
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], "http://localhost:53682/");
    assert_eq!(
        q["scope"],
        "https://graph.microsoft.com/.default offline_access"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["state"], req.state());
    assert!(req.state().len() >= 16);
    // The challenge is the S256 of the verifier we keep.
    let expected = PkceCodeChallenge::from_code_verifier_sha256(&req.verifier);
    assert_eq!(q["code_challenge"], expected.as_str());
    // Two requests never share state or verifier.
    let other = s
        .authorize(&redirect, &scopes(&["offline_access"]))
        .unwrap();
    assert_ne!(other.state(), req.state());
    assert_ne!(other.verifier.secret(), req.verifier.secret());
}

#[test]
fn admin_consent_url_names_app_redirect_and_state() {
    let s = sign_in_at("https://login.microsoftonline.us/", None);
    let req = s
        .admin_consent(&Url::parse("http://localhost:8400/").unwrap())
        .unwrap();
    let url = req.url();
    assert_eq!(url.host_str(), Some("login.microsoftonline.us"));
    assert_eq!(url.path(), format!("/{TENANT_ID}/adminconsent"));
    let q = query(url);
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], "http://localhost:8400/");
    assert_eq!(q["state"], req.state());
}

#[test]
fn a_login_url_that_cannot_take_a_path_is_an_error() {
    let s = sign_in_at("mailto:x@example.com", None);
    let e = s
        .authorize(&Url::parse("http://localhost:1/").unwrap(), &[])
        .unwrap_err();
    assert!(matches!(e, InteractiveError::Endpoint { .. }), "{e}");
    assert!(e.to_string().contains("contoso"), "{e}");
}

#[test]
fn redirects_are_checked_against_our_state() {
    use RedirectCheck::*;
    assert_eq!(
        check_redirect(Some("code=abc&state=s1&session_state=x"), "s1"),
        Done(Redirect::Code(Secret::new("abc")))
    );
    assert_eq!(check_redirect(Some("code=abc&state=s2"), "s1"), WrongState);
    assert_eq!(check_redirect(Some("code=abc"), "s1"), WrongState);
    assert_eq!(
        check_redirect(Some("error=access_denied"), "s1"),
        WrongState
    );
    assert_eq!(check_redirect(Some("code=abc&state="), ""), WrongState);
    assert_eq!(check_redirect(None, "s1"), NotARedirect);
    assert_eq!(check_redirect(Some("foo=bar&state=s1"), "s1"), NotARedirect);
    assert_eq!(
        check_redirect(Some("tenant=t-1&state=s1&admin_consent=True"), "s1"),
        Done(Redirect::Consented {
            tenant: Some("t-1".into())
        })
    );
    let Done(Redirect::Refused(e)) = check_redirect(
        Some(
            "error=access_denied&error_description=AADSTS65004%3A+User+declined+to+consent.%0D%0ATrace+ID%3A+x&state=s1",
        ),
        "s1",
    ) else {
        panic!("not refused")
    };
    assert_eq!(e.error, "access_denied");
    assert_eq!(e.code, Some(65004));
    assert_eq!(
        e.description.as_deref(),
        Some("AADSTS65004: User declined to consent.")
    );
    assert_eq!(
        e.to_string(),
        "access_denied: AADSTS65004: User declined to consent."
    );
    let Done(Redirect::Refused(e)) = check_redirect(
        Some("error=permission_denied&error_description=The+admin+canceled+the+request&state=s1"),
        "s1",
    ) else {
        panic!("not refused")
    };
    assert_eq!(e.code, None);
    assert_eq!(
        e.to_string(),
        "permission_denied: The admin canceled the request"
    );
    let Done(Redirect::Refused(e)) = check_redirect(Some("admin_consent=False&state=s1"), "s1")
    else {
        panic!("not refused")
    };
    assert_eq!(e.error, "admin_consent=False");
}

#[test]
fn advice_covers_the_onboarding_codes() {
    for code in [7000215, 700016, 65001, 90094, 50011, 7000218] {
        assert!(advice(code).is_some(), "{code}");
    }
    assert_eq!(advice(1), None);
}

async fn sim() -> Sim {
    Sim::start(SimConfig {
        tenants: 1,
        backlog: 0,
        activity: 0,
        device_code_interval: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn sim_sign_in(sim: &Sim, secret: Option<&str>) -> SignIn {
    let t = &sim.tenants()[0];
    SignIn::new(
        no_redirects(),
        "contoso",
        &t.tenant_id,
        &sim.endpoints(),
        &t.client_id,
        secret.map(Secret::new),
    )
}

/// Opens `url` as the browser would and returns where the sign-in redirects to.
async fn follow_once(url: &Url) -> Url {
    let answer = no_redirects().get(url.clone()).send().await.unwrap();
    assert_eq!(answer.status(), 302, "{url}");
    let location = answer.headers()["location"].to_str().unwrap();
    Url::parse(location).unwrap()
}

#[tokio::test]
async fn code_flow_against_the_simulator_yields_a_working_refresh_token() {
    let sim = sim().await;
    for secret in [None, Some(sim.tenants()[0].client_secret.as_str())] {
        let s = sim_sign_in(&sim, secret);
        let redirect = Url::parse("http://localhost:40000/").unwrap();
        let req = s
            .authorize(
                &redirect,
                &scopes(&["https://graph.microsoft.com/.default", "offline_access"]),
            )
            .unwrap();
        let back = follow_once(req.url()).await;
        assert_eq!(back.host_str(), Some("localhost"));
        let RedirectCheck::Done(Redirect::Code(code)) = check_redirect(back.query(), req.state())
        else {
            panic!("no code in {back}")
        };
        let rt = s.redeem(req, &code).await.unwrap();
        assert!(!rt.expose().is_empty());
        assert_eq!(format!("{rt:?}"), "***");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn code_flow_without_offline_access_is_refused_naming_it() {
    let sim = sim().await;
    let s = sim_sign_in(&sim, None);
    let req = s
        .authorize(
            &Url::parse("http://localhost:40000/").unwrap(),
            &scopes(&["https://graph.microsoft.com/.default"]),
        )
        .unwrap();
    let back = follow_once(req.url()).await;
    let RedirectCheck::Done(Redirect::Code(code)) = check_redirect(back.query(), req.state())
    else {
        panic!("no code in {back}")
    };
    let e = s.redeem(req, &code).await.unwrap_err();
    assert!(matches!(e, InteractiveError::NoRefreshToken { .. }), "{e}");
    assert!(e.to_string().contains("offline_access"), "{e}");
    sim.shutdown().await;
}

#[tokio::test]
async fn code_redemption_with_a_wrong_secret_names_the_aadsts_code() {
    let sim = sim().await;
    let s = sim_sign_in(&sim, Some("not-the-secret"));
    let req = s
        .authorize(
            &Url::parse("http://localhost:40000/").unwrap(),
            &scopes(&["https://graph.microsoft.com/.default", "offline_access"]),
        )
        .unwrap();
    let back = follow_once(req.url()).await;
    let RedirectCheck::Done(Redirect::Code(code)) = check_redirect(back.query(), req.state())
    else {
        panic!("no code in {back}")
    };
    let e = s.redeem(req, &code).await.unwrap_err();
    assert_eq!(e.aadsts_code(), Some(7000215), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("AADSTS7000215") && text.contains("contoso"),
        "{text}"
    );
    assert!(!text.contains("not-the-secret"), "{text}");
    assert!(!e.is_transient());
    sim.shutdown().await;
}

#[tokio::test]
async fn device_code_flow_against_the_simulator() {
    let sim = sim().await;
    let s = sim_sign_in(&sim, None);
    let want = scopes(&[
        "https://api.security.microsoft.com/.default",
        "offline_access",
    ]);

    let grant = s.start_device_code(&want).await.unwrap();
    assert!(grant.message().contains(grant.user_code()));
    assert_eq!(grant.interval(), Duration::from_secs(1));
    assert!(grant.expires_in() > Duration::from_secs(60));
    let entra = sim.entra().clone();
    let code = grant.user_code().to_string();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(entra.approve_device_code(&code));
    });
    let rt = s
        .finish_device_code(&grant, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!rt.expose().is_empty());

    let grant = s.start_device_code(&want).await.unwrap();
    assert!(sim.entra().decline_device_code(grant.user_code()));
    let e = s
        .finish_device_code(&grant, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, InteractiveError::Declined { .. }), "{e}");
    assert!(e.to_string().contains("declined"), "{e}");

    let grant = s.start_device_code(&want).await.unwrap();
    let e = s
        .finish_device_code(&grant, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(matches!(e, InteractiveError::TimedOut { .. }), "{e}");
    sim.shutdown().await;
}

#[tokio::test]
async fn device_code_start_for_an_unknown_app_names_the_aadsts_code() {
    let sim = sim().await;
    let t = &sim.tenants()[0];
    let s = SignIn::new(
        no_redirects(),
        "contoso",
        &t.tenant_id,
        &sim.endpoints(),
        CLIENT_ID,
        None,
    );
    let e = s
        .start_device_code(&scopes(&["offline_access"]))
        .await
        .unwrap_err();
    assert_eq!(e.aadsts_code(), Some(700016), "{e}");
    assert!(e.to_string().contains("devicecode"), "{e}");
    sim.shutdown().await;
}

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

/// A token endpoint answering device-code polls from a script.
#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
    polls: Arc<Mutex<Vec<(tokio::time::Instant, String)>>>,
}

type Answer = (StatusCode, [(header::HeaderName, &'static str); 1], String);

async fn devicecode(State(_): State<Script>) -> Answer {
    (
        StatusCode::OK,
        JSON,
        r#"{"user_code":"ABCDEFGHJ","device_code":"dc-1","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":1,"message":"Open the page and enter ABCDEFGHJ."}"#
            .to_string(),
    )
}

async fn token(State(s): State<Script>, body: String) -> Answer {
    s.polls.lock().push((tokio::time::Instant::now(), body));
    let (status, text) = s.answers.lock().pop_front().unwrap_or((500, "{}"));
    (
        StatusCode::from_u16(status).unwrap(),
        JSON,
        text.to_string(),
    )
}

async fn scripted(answers: Vec<(u16, &'static str)>) -> (Script, String) {
    let script = Script {
        answers: Arc::new(Mutex::new(answers.into())),
        polls: Arc::new(Mutex::new(Vec::new())),
    };
    let app = axum::Router::new()
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (script, base)
}

const PENDING: &str = r#"{"error":"authorization_pending","error_description":"AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.","error_codes":[70016]}"#;
const SLOW_DOWN: &str = r#"{"error":"slow_down","error_description":"slow down"}"#;
const DONE: &str = r#"{"token_type":"Bearer","scope":"https://graph.microsoft.com/.default","expires_in":3599,"access_token":"at-1","refresh_token":"rt-from-device-flow"}"#;
const EXPIRED: &str = r#"{"error":"expired_token","error_description":"AADSTS70019: Verification code expired.","error_codes":[70019]}"#;

#[tokio::test]
async fn device_polling_honours_interval_pending_and_slow_down() {
    let (script, base) = scripted(vec![(400, PENDING), (400, SLOW_DOWN), (200, DONE)]).await;
    let s = sign_in_at(&base, Some("must-not-be-sent"));
    let grant = s
        .start_device_code(&scopes(&["offline_access"]))
        .await
        .unwrap();
    assert_eq!(grant.message(), "Open the page and enter ABCDEFGHJ.");
    let rt = s
        .finish_device_code(&grant, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rt.expose(), "rt-from-device-flow");
    let polls = script.polls.lock().clone();
    assert_eq!(polls.len(), 3);
    for (_, body) in &polls {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            form["grant_type"],
            "urn:ietf:params:oauth:grant-type:device_code"
        );
        assert_eq!(form["device_code"], "dc-1");
        assert_eq!(form["client_id"], CLIENT_ID);
        assert!(!form.contains_key("client_secret"), "{body}");
    }
    // `interval` (1 s) after pending; 5 s more after slow_down (RFC 8628 §3.5).
    let gap1 = polls[1].0 - polls[0].0;
    let gap2 = polls[2].0 - polls[1].0;
    assert!(gap1 >= Duration::from_millis(950), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(5_950), "{gap2:?}");
}

#[tokio::test]
async fn device_code_expired_by_entra_is_reported_as_expired() {
    let (_script, base) = scripted(vec![(400, PENDING), (400, EXPIRED)]).await;
    let s = sign_in_at(&base, None);
    let grant = s
        .start_device_code(&scopes(&["offline_access"]))
        .await
        .unwrap();
    let e = s
        .finish_device_code(&grant, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, InteractiveError::Expired { .. }), "{e}");
}

#[tokio::test]
async fn device_polling_against_a_failing_endpoint_says_unreachable() {
    // Every poll gets a 500 with no OAuth body: transient, so polling goes on until the
    // wait is over, and the error then says why.
    let (_script, base) = scripted(vec![]).await;
    let s = sign_in_at(&base, None);
    let grant = s
        .start_device_code(&scopes(&["offline_access"]))
        .await
        .unwrap();
    let e = s
        .finish_device_code(&grant, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert!(matches!(e, InteractiveError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("500"), "{e}");
    assert!(e.is_transient());
}
