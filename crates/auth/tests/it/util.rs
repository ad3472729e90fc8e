//! Test helpers: a scripted token endpoint for protocol edge cases, stores that record or
//! fail, a tracing capture, and certificate generation.

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relay_auth::{
    Credential, ManagerOptions, MemoryStore, RefreshTokenStore, StoreError, TenantAuth,
    TokenManager, TokenVersion,
};
use relay_config::{Endpoints, Secret};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use url::Url;

/// One scripted answer of the stub token endpoint.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub retry_after: Option<&'static str>,
    pub delay: Duration,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "application/json; charset=utf-8",
            body: body.to_string(),
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: &str) -> Answer {
        Answer {
            content_type,
            ..Answer::json(status, body)
        }
    }
}

/// A request the stub received: the path and the decoded form.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub form: Vec<(String, String)>,
}

impl Seen {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct StubState {
    answer: Mutex<Option<Answer>>,
    seen: Mutex<Vec<Seen>>,
}

/// A token endpoint that answers whatever it is told to, on 127.0.0.1:0. Only for the
/// protocol edge cases the simulator does not produce (odd bodies, Retry-After, 404s).
pub struct Stub {
    pub base: Url,
    state: Arc<StubState>,
}

impl Stub {
    pub async fn start(answer: Answer) -> Stub {
        let state = Arc::new(StubState::default());
        *state.answer.lock().unwrap() = Some(answer);
        let app = axum::Router::new()
            .fallback(stub_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Stub { base, state }
    }

    pub fn set(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = Some(answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn stub_handler(
    State(state): State<Arc<StubState>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        form: serde_urlencoded::from_bytes(&body).unwrap_or_default(),
    });
    let answer = state.answer.lock().unwrap().clone().unwrap();
    tokio::time::sleep(answer.delay).await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static(answer.content_type),
    );
    if let Some(ra) = answer.retry_after {
        headers.insert("retry-after", HeaderValue::from_static(ra));
    }
    (
        StatusCode::from_u16(answer.status).unwrap(),
        headers,
        answer.body,
    )
        .into_response()
}

pub const TENANT_ID: &str = "0f4e8a52-1c1b-4c57-9d3c-111111111111";

/// A tenant named `name` whose login authority is `base`.
pub fn tenant(
    name: &str,
    tenant_id: &str,
    base: &Url,
    client_id: &str,
    credential: Credential,
    version: TokenVersion,
) -> TenantAuth {
    TenantAuth {
        name: name.to_string(),
        tenant_id: tenant_id.to_string(),
        endpoints: Endpoints::single_host(base),
        client_id: client_id.to_string(),
        credential,
        token_version: version,
        probe: relay_auth::ProbeBackoff::NONE,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn manager(store: Arc<dyn RefreshTokenStore>, opts: ManagerOptions) -> TokenManager {
    TokenManager::new(http(), store, opts)
}

pub fn memory_manager() -> (TokenManager, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    (manager(store.clone(), ManagerOptions::default()), store)
}

/// What happened, in order: saves of rotated refresh tokens and uses of access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Saved(String),
    Used(String),
}

/// A store that records every save in an event log shared with the test, and can be told
/// to fail.
#[derive(Default)]
pub struct RecordingStore {
    pub log: Mutex<Vec<Event>>,
    pub fail: AtomicBool,
    pub delay: Mutex<Duration>,
}

impl RecordingStore {
    pub fn used(&self, token: &Secret) {
        self.log
            .lock()
            .unwrap()
            .push(Event::Used(token.expose().to_string()));
    }

    pub fn saved(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Saved(s) => Some(s.clone()),
                Event::Used(_) => None,
            })
            .collect()
    }

    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

#[async_trait]
impl RefreshTokenStore for RecordingStore {
    async fn save(&self, _tenant: &str, refresh_token: &Secret) -> Result<(), StoreError> {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::new("disk full (simulated)"));
        }
        self.log
            .lock()
            .unwrap()
            .push(Event::Saved(refresh_token.expose().to_string()));
        Ok(())
    }
}

/// (cert PEM, key PEM) of a fresh self-signed RSA-2048 certificate; one per test binary
/// because key generation is slow.
pub fn identity() -> &'static (String, String) {
    static ID: OnceLock<(String, String)> = OnceLock::new();
    ID.get_or_init(|| make_identity("relay-auth integration test"))
}

pub fn make_identity(cn: &str) -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let key_pair =
        rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![cn.to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    (cert.pem(), key_pem)
}

/// Asserts that `haystack` contains none of `needles` (ignoring empty ones).
#[track_caller]
pub fn assert_no_leak(haystack: &str, needles: &[String]) {
    for n in needles {
        assert!(
            n.is_empty() || !haystack.contains(n.as_str()),
            "secret {:?}... leaked into:\n{haystack}",
            &n[..n.len().min(12)]
        );
    }
}
