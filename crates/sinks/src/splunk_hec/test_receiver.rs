//! A strict Splunk HEC receiver for tests (feature `test-support`): the real protocol on
//! 127.0.0.1, stricter than Splunk where that catches a sink bug.
//!
//! * `/services/collector/event` (also `/services/collector`, `/services/collector/event/1.0`),
//!   `/services/collector/ack`, `/services/collector/health` (also `/health/1.0`); anything
//!   else 404.
//! * Checks, in Splunk's order, answering with Splunk's status and body (sinks.md §1.5):
//!   the token (`Authorization: Splunk <token>`: missing → 401 code 2, malformed → 401 code 3,
//!   disabled → 403 code 1, unknown → 403 code 4); the channel (`X-Splunk-Request-Channel` or
//!   `?channel=`; with indexer ack on, missing → 400 code 10; not a GUID → 400 code 11);
//!   `Content-Type: application/json` and `Content-Encoding` absent or `gzip` (else 415 — Splunk
//!   does not check the type; this receiver does because the sink promises it); body size
//!   (413 past `max_content_length`); empty body → 400 code 5.
//! * Each envelope of the body must be a JSON object with only the envelope keys; `event`
//!   present (else code 12) and not blank (code 13); `time`, when present, a plain decimal
//!   number (no exponent, not a string: code 15); `host`/`source`/`sourcetype`/`index`
//!   non-empty strings (code 6); `index` in `allowed_indexes` when set (code 7); `fields` an
//!   object of strings or string arrays (code 15). A bad envelope fails the whole request
//!   with `invalid-event-number` (0-based) and nothing of it is recorded (Splunk may keep the
//!   envelopes before the bad one; a test should not depend on either).
//! * Indexer acknowledgement per [`AckMode`], ack ids per channel from 0, statuses forgotten
//!   once reported `true` and on restart (as Splunk keeps them in memory).
//! * Faults: [`set_busy`](HecReceiver::set_busy) (503 code 9) for a number of requests or
//!   [`set_busy_until`](HecReceiver::set_busy_until) a moment, canned replies
//!   ([`push_reply`](HecReceiver::push_reply)), connections reset after indexing
//!   ([`set_reset_every`](HecReceiver::set_reset_every)), unhealthy health endpoint,
//!   [`stop`](HecReceiver::stop) / [`restart`](HecReceiver::restart) on the same port.
//! * TLS (rustls, ring) with an optional client CA for mutual TLS.
//!
//! Every accepted envelope is recorded ([`events`](HecReceiver::events)), and every request
//! with its decoded body and the answer ([`requests`](HecReceiver::requests)).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flate2::read::GzDecoder;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// The token the receiver accepts unless configured otherwise.
pub const DEFAULT_TOKEN: &str = "6a1d0b4e-2c3f-4e5a-8b7c-9d0e1f2a3b4c";

/// How the receiver is set up.
#[derive(Debug, Clone)]
pub struct HecReceiverConfig {
    /// The one valid token.
    pub token: String,
    /// Tokens known but disabled (403 code 1).
    pub disabled_tokens: Vec<String>,
    /// The token has indexer acknowledgement on (`useACK`).
    pub indexer_ack: bool,
    /// Indexes the token may write; `None` allows any.
    pub allowed_indexes: Option<Vec<String>>,
    /// Largest accepted body, in bytes as sent (compressed).
    pub max_content_length: usize,
    /// Serve HTTPS with this certificate.
    pub tls: Option<ReceiverTls>,
    /// Keep every accepted envelope and request ([`events`](HecReceiver::events),
    /// [`requests`](HecReceiver::requests)); off, only counts are kept
    /// ([`event_count`](HecReceiver::event_count)), for benchmarks that send gigabytes.
    pub record: bool,
}

impl Default for HecReceiverConfig {
    fn default() -> Self {
        HecReceiverConfig {
            token: DEFAULT_TOKEN.to_string(),
            disabled_tokens: Vec::new(),
            indexer_ack: false,
            allowed_indexes: None,
            // Splunk's default `max_content_length` (~800 MB).
            max_content_length: 838_860_800,
            tls: None,
            record: true,
        }
    }
}

/// The receiver's TLS identity.
#[derive(Debug, Clone)]
pub struct ReceiverTls {
    /// The server certificate (then intermediates), PEM.
    pub cert_chain_pem: String,
    /// The server's private key, PEM.
    pub key_pem: String,
    /// When set, clients must present a certificate issued by this CA (PEM).
    pub client_ca_pem: Option<String>,
}

/// When the receiver reports a request's `ackId` as indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// At the first query.
    Immediate,
    /// After answering `false` this many times.
    AfterQueries(u32),
    /// At the first query this long after the request arrived (an indexer's delay).
    AfterDelay(std::time::Duration),
    /// Never: the indexers lost the data.
    Never,
    /// Every `n`-th request (counting from the first accepted one, 1-based) is never
    /// acknowledged; the others at the first query.
    NeverEvery(u64),
    /// Only the `n`-th request (1-based, as in `NeverEvery`) is never acknowledged.
    NeverNth(u64),
    /// Every `every`-th request (as in `NeverEvery`) is lost; the others are acknowledged
    /// at the first query `delay` after they arrived.
    DelayLosingEvery {
        /// The indexers' delay.
        delay: std::time::Duration,
        /// One request in this many is never acknowledged.
        every: u64,
    },
}

/// One accepted envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The envelope as parsed.
    pub envelope: Value,
    /// The request's channel.
    pub channel: Option<String>,
    /// The request's ack id, with indexer ack on.
    pub ack_id: Option<u64>,
    /// False when the request is one the indexers lost (never acknowledged, per
    /// [`AckMode`]): a Splunk search would not find it.
    pub indexed: bool,
    /// False when the request's connection was reset instead of answered
    /// ([`set_reset_every`](HecReceiver::set_reset_every)): the sink sends it again.
    pub answered: bool,
    /// When the request arrived.
    pub received: std::time::SystemTime,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// Channel from header or query.
    pub channel: Option<String>,
    /// Whether the query string held anything (the sink never sends one).
    pub has_query: bool,
    /// Body size as sent.
    pub wire_len: usize,
    /// Body after gunzip (as sent when not gzipped or not decodable).
    pub body: Vec<u8>,
    /// The answer's status.
    pub status: u16,
    /// The answer's body.
    pub reply: String,
}

#[derive(Debug)]
struct Shared {
    config: HecReceiverConfig,
    state: Mutex<ReceiverState>,
}

#[derive(Debug)]
struct ReceiverState {
    events: Vec<ReceivedEvent>,
    requests: Vec<ReceivedRequest>,
    busy: usize,
    ack_busy: usize,
    /// Event POSTs and ack queries answer 503 code 9 until then.
    busy_until: Option<std::time::Instant>,
    /// Every n-th accepted event request has its connection reset instead of an answer.
    reset_every: u64,
    /// Event requests accepted (for `reset_every`).
    accepted_requests: u64,
    /// Connections reset after indexing.
    resets: u64,
    canned: VecDeque<(u16, String)>,
    unhealthy: bool,
    ack_mode: AckMode,
    channels: HashMap<String, AckChannel>,
    ack_queries: usize,
    /// Envelopes accepted (also when not recorded).
    event_count: u64,
    /// Envelopes reported indexed to an ack query.
    acked_events: u64,
    /// Event requests accepted with indexer ack (for `NeverEvery`).
    ack_requests: u64,
}

/// When an ack id is reported indexed.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// After answering `false` this many more times.
    Queries(u32),
    /// At the first query from this moment on.
    At(std::time::Instant),
    /// Never.
    Never,
}

#[derive(Debug, Default)]
struct AckChannel {
    next_id: u64,
    /// Ack id → when it is reported indexed, and the request's envelope count.
    pending: BTreeMap<u64, (Due, u64)>,
}

struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A running strict HEC receiver on 127.0.0.1. See the module docs.
pub struct HecReceiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    running: Option<Running>,
}

impl std::fmt::Debug for HecReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HecReceiver")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl HecReceiver {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start(config: HecReceiverConfig) -> io::Result<HecReceiver> {
        let tls = config.tls.as_ref().map(acceptor).transpose()?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut r = HecReceiver {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(ReceiverState {
                    events: Vec::new(),
                    requests: Vec::new(),
                    busy: 0,
                    ack_busy: 0,
                    busy_until: None,
                    reset_every: 0,
                    accepted_requests: 0,
                    resets: 0,
                    canned: VecDeque::new(),
                    unhealthy: false,
                    ack_mode: AckMode::Immediate,
                    channels: HashMap::new(),
                    ack_queries: 0,
                    event_count: 0,
                    acked_events: 0,
                    ack_requests: 0,
                }),
            }),
            addr,
            tls,
            running: None,
        };
        r.serve(listener);
        Ok(r)
    }

    /// Starts with the default configuration (plain HTTP, [`DEFAULT_TOKEN`]).
    pub async fn start_default() -> io::Result<HecReceiver> {
        Self::start(HecReceiverConfig::default()).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HEC base URL, `http(s)://127.0.0.1:<port>/`.
    #[allow(clippy::expect_used)] // A scheme and a socket address always make a valid URL.
    pub fn url(&self) -> Url {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Url::parse(&format!("{scheme}://{}/", self.addr)).expect("valid receiver URL")
    }

    /// Stops accepting and drops every open connection; recorded data stays.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            r.tracker.close();
            r.tracker.wait().await;
        }
    }

    /// Serves again on the same port. Ack statuses are forgotten, as in a Splunk restart.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        lock(&self.shared).channels.clear();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Every accepted envelope, in arrival order.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        lock(&self.shared).events.clone()
    }

    /// Every request (event, ack and health), in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// Requests to the event endpoint only.
    pub fn event_requests(&self) -> Vec<ReceivedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| is_event_path(&r.path))
            .collect()
    }

    /// The next `requests` event POSTs (with a valid token) get 503 code 9 "Server is busy".
    pub fn set_busy(&self, requests: usize) {
        lock(&self.shared).busy = requests;
    }

    /// The next `queries` ack queries (with a valid token) get 503 code 9 "Server is busy";
    /// the statuses they asked for are kept.
    pub fn set_ack_busy(&self, queries: usize) {
        lock(&self.shared).ack_busy = queries;
    }

    /// Event POSTs and ack queries (with a valid token) get 503 code 9 "Server is busy"
    /// until `until` (`None`: from now on not); pending statuses are kept.
    pub fn set_busy_until(&self, until: Option<std::time::Instant>) {
        lock(&self.shared).busy_until = until;
    }

    /// Every `n`-th event request accepted from now on (0: none) is indexed and then gets no
    /// answer: its connection is reset (RST), as when a load balancer or the network drops
    /// it. The sink cannot tell it arrived, so it sends the batch again: a duplicate.
    pub fn set_reset_every(&self, n: u64) {
        let mut st = lock(&self.shared);
        st.reset_every = n;
        st.accepted_requests = 0;
    }

    /// How many connections were reset after indexing (see
    /// [`set_reset_every`](Self::set_reset_every)).
    pub fn resets(&self) -> u64 {
        lock(&self.shared).resets
    }

    /// The next event POST with a valid token gets this answer instead (queued in order).
    pub fn push_reply(&self, status: u16, body: &str) {
        lock(&self.shared)
            .canned
            .push_back((status, body.to_string()));
    }

    /// The health endpoint answers 503 code 18 while set.
    pub fn set_unhealthy(&self, unhealthy: bool) {
        lock(&self.shared).unhealthy = unhealthy;
    }

    /// How requests accepted from now on are acknowledged.
    pub fn set_ack_mode(&self, mode: AckMode) {
        lock(&self.shared).ack_mode = mode;
    }

    /// How many ack queries were answered.
    pub fn ack_queries(&self) -> usize {
        lock(&self.shared).ack_queries
    }

    /// How many envelopes were accepted (recorded or not).
    pub fn event_count(&self) -> u64 {
        lock(&self.shared).event_count
    }

    /// How many envelopes were reported indexed to an ack query.
    pub fn acked_event_count(&self) -> u64 {
        lock(&self.shared).acked_events
    }

    /// How many ack ids of any channel wait to be reported indexed.
    pub fn pending_acks(&self) -> usize {
        lock(&self.shared)
            .channels
            .values()
            .map(|c| c.pending.len())
            .sum()
    }

    fn serve(&mut self, listener: TcpListener) {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&self.shared));
        let tls = self.tls.clone();
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                // A second handle on the socket, to make a reset connection close with an
                // RST rather than a FIN (only then: lingering off would also discard an
                // answer still in the send buffer).
                let socket = socket2::SockRef::from(&stream).try_clone().ok();
                let reset = ConnReset(CancellationToken::new());
                let router = router.clone().layer(axum::Extension(reset.clone()));
                let (tls, c) = (tls.clone(), c.clone());
                t.spawn(async move {
                    let conn = async move {
                        let svc = TowerToHyperService::new(router);
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(s), svc).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = c.cancelled() => {}
                        _ = reset.0.cancelled() => {
                            if let Some(socket) = &socket {
                                let _ = socket.set_linger(Some(std::time::Duration::ZERO));
                            }
                        }
                        _ = conn => {}
                    }
                });
            }
        });
        self.running = Some(Running { cancel, tracker });
    }
}

impl Drop for HecReceiver {
    /// Stops serving without waiting: the tasks end at their next turn.
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.cancel.cancel();
        }
    }
}

/// Cancelled to drop one connection without an answer.
#[derive(Clone)]
struct ConnReset(CancellationToken);

fn lock(shared: &Shared) -> MutexGuard<'_, ReceiverState> {
    // A panicking test thread must not hide the recorded data from the others.
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn acceptor(tls: &ReceiverTls) -> io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let certs = CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let builder = match &tls.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| bad(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

const EVENT_PATHS: [&str; 3] = [
    "/services/collector/event",
    "/services/collector",
    "/services/collector/event/1.0",
];
const ACK_PATH: &str = "/services/collector/ack";
const HEALTH_PATHS: [&str; 2] = [
    "/services/collector/health",
    "/services/collector/health/1.0",
];

fn is_event_path(path: &str) -> bool {
    EVENT_PATHS.contains(&path)
}

/// A HEC reply body: `{"text":"...","code":N}` plus `invalid-event-number` when given.
fn hec_body(text: &str, code: i64, invalid_event: Option<usize>) -> String {
    let text = Value::String(text.to_string());
    match invalid_event {
        Some(n) => format!(r#"{{"text":{text},"code":{code},"invalid-event-number":{n}}}"#),
        None => format!(r#"{{"text":{text},"code":{code}}}"#),
    }
}

type Answer = (StatusCode, String);

fn answer(status: StatusCode, text: &str, code: i64) -> Answer {
    (status, hec_body(text, code, None))
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let limit = shared.config.max_content_length;
    let mut reset = false;
    let (answer, wire_len, decoded) = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            let (answer, decoded) = respond(
                &shared,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &bytes,
                &mut reset,
            );
            (
                answer,
                bytes.len(),
                decoded.unwrap_or_else(|| bytes.to_vec()),
            )
        }
        Err(_) => (
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"text":"Content-Length too large"}"#.to_string(),
            ),
            limit,
            Vec::new(),
        ),
    };
    let header = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if reset {
        if let Some(conn) = parts.extensions.get::<ConnReset>() {
            conn.0.cancel();
            // The connection task drops this request with its connection.
            std::future::pending::<()>().await;
        }
    }
    if !shared.config.record {
        return (
            answer.0,
            [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
            answer.1,
        )
            .into_response();
    }
    lock(&shared).requests.push(ReceivedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        content_type: header(header::CONTENT_TYPE),
        content_encoding: header(header::CONTENT_ENCODING),
        channel: channel_of(&parts.uri, &parts.headers),
        has_query: parts.uri.query().is_some(),
        wire_len,
        body: decoded,
        status: answer.0.as_u16(),
        reply: answer.1.clone(),
    });
    (
        answer.0,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        answer.1,
    )
        .into_response()
}

/// The answer, and the decoded body when it was gzipped; `reset` set when the answer is to
/// be replaced by a reset connection.
fn respond(
    shared: &Shared,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    reset: &mut bool,
) -> (Answer, Option<Vec<u8>>) {
    let path = uri.path();
    if is_event_path(path) && method == Method::POST {
        match decode(headers, body) {
            Ok(decoded) => {
                let a = event(shared, uri, headers, &decoded, reset);
                (a, Some(decoded))
            }
            Err(a) => (a, None),
        }
    } else if path == ACK_PATH && method == Method::POST {
        match decode(headers, body) {
            Ok(decoded) => {
                let a = ack(shared, uri, headers, &decoded);
                (a, Some(decoded))
            }
            Err(a) => (a, None),
        }
    } else if HEALTH_PATHS.contains(&path) && method == Method::GET {
        (health(shared, headers), None)
    } else if is_event_path(path) || path == ACK_PATH || HEALTH_PATHS.contains(&path) {
        (
            (
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"text":"Method not allowed"}"#.to_string(),
            ),
            None,
        )
    } else {
        (
            answer(
                StatusCode::NOT_FOUND,
                "The requested URL was not found on this server.",
                404,
            ),
            None,
        )
    }
}

/// Authorization as HEC checks it on the event and ack endpoints.
fn check_token(config: &HecReceiverConfig, headers: &HeaderMap) -> Result<(), Answer> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(answer(StatusCode::UNAUTHORIZED, "Token is required", 2));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Splunk "))
        .ok_or_else(|| answer(StatusCode::UNAUTHORIZED, "Invalid authorization", 3))?;
    if config.disabled_tokens.iter().any(|t| t == token) {
        return Err(answer(StatusCode::FORBIDDEN, "Token disabled", 1));
    }
    if token != config.token {
        return Err(answer(StatusCode::FORBIDDEN, "Invalid token", 4));
    }
    Ok(())
}

fn channel_of(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-splunk-request-channel") {
        return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "channel")
            .map(|(_, v)| v.into_owned())
    })
}

/// The channel, checked: required with indexer ack (code 10), a GUID when given (code 11).
fn check_channel(
    config: &HecReceiverConfig,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Option<String>, Answer> {
    match channel_of(uri, headers) {
        None if config.indexer_ack => Err(answer(
            StatusCode::BAD_REQUEST,
            "Data channel is missing",
            10,
        )),
        None => Ok(None),
        Some(c) if uuid::Uuid::parse_str(&c).is_err() => {
            Err(answer(StatusCode::BAD_REQUEST, "Invalid data channel", 11))
        }
        Some(c) => Ok(Some(c)),
    }
}

/// Content type and encoding; the decoded body.
fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Answer> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media.as_deref() != Some("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"text":"Content-Type must be application/json"}"#.to_string(),
        ));
    }
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|_| answer(StatusCode::BAD_REQUEST, "Invalid data format", 6))?;
            Ok(out)
        }
        Some(_) => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"text":"Unsupported Content-Encoding"}"#.to_string(),
        )),
    }
}

/// Whether HEC is busy for a while now (`set_busy_until`).
fn busy_now(st: &ReceiverState) -> bool {
    st.busy_until.is_some_and(|t| std::time::Instant::now() < t)
}

fn event(
    shared: &Shared,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    reset: &mut bool,
) -> Answer {
    let config = &shared.config;
    if let Err(a) = check_token(config, headers) {
        return a;
    }
    {
        let mut st = lock(shared);
        if st.busy > 0 || busy_now(&st) {
            st.busy = st.busy.saturating_sub(1);
            return answer(StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9);
        }
        if let Some((status, body)) = st.canned.pop_front() {
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            );
        }
    }
    let channel = match check_channel(config, uri, headers) {
        Ok(c) => c,
        Err(a) => return a,
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return answer(StatusCode::BAD_REQUEST, "No data", 5);
    }
    let envelopes = match check_envelopes(body, config.allowed_indexes.as_deref()) {
        Ok(e) => e,
        Err(a) => return a,
    };
    let mut st = lock(shared);
    let count = envelopes.len() as u64;
    let ack_id = match (&channel, config.indexer_ack) {
        (Some(c), true) => {
            st.ack_requests += 1;
            let due = match st.ack_mode {
                AckMode::Immediate => Due::Queries(0),
                AckMode::AfterQueries(n) => Due::Queries(n),
                AckMode::AfterDelay(d) => Due::At(std::time::Instant::now() + d),
                AckMode::Never => Due::Never,
                AckMode::NeverEvery(n) if n > 0 && st.ack_requests % n == 0 => Due::Never,
                AckMode::NeverEvery(_) => Due::Queries(0),
                AckMode::NeverNth(n) if st.ack_requests == n => Due::Never,
                AckMode::NeverNth(_) => Due::Queries(0),
                AckMode::DelayLosingEvery { every, .. }
                    if every > 0 && st.ack_requests % every == 0 =>
                {
                    Due::Never
                }
                AckMode::DelayLosingEvery { delay, .. } => {
                    Due::At(std::time::Instant::now() + delay)
                }
            };
            let ch = st.channels.entry(c.clone()).or_default();
            let id = ch.next_id;
            ch.next_id += 1;
            ch.pending.insert(id, (due, count));
            Some(id)
        }
        _ => None,
    };
    st.event_count += count;
    let indexed = !ack_id
        .and_then(|id| Some(st.channels.get(channel.as_ref()?)?.pending.get(&id)?.0))
        .is_some_and(|due| matches!(due, Due::Never));
    st.accepted_requests += 1;
    if st.reset_every > 0 && st.accepted_requests % st.reset_every == 0 {
        st.resets += 1;
        *reset = true;
    }
    if config.record {
        let received = std::time::SystemTime::now();
        let answered = !*reset;
        st.events
            .extend(envelopes.into_iter().map(|envelope| ReceivedEvent {
                envelope,
                channel: channel.clone(),
                ack_id,
                indexed,
                answered,
                received,
            }));
    }
    match ack_id {
        Some(id) => (
            StatusCode::OK,
            format!(r#"{{"text":"Success","code":0,"ackId":{id}}}"#),
        ),
        None => answer(StatusCode::OK, "Success", 0),
    }
}

const ENVELOPE_KEYS: [&str; 7] = [
    "event",
    "time",
    "host",
    "source",
    "sourcetype",
    "index",
    "fields",
];

/// Every envelope of the body, checked; the first bad one fails the request.
fn check_envelopes(body: &[u8], allowed_indexes: Option<&[String]>) -> Result<Vec<Value>, Answer> {
    let mut out = Vec::new();
    let bad = |n: usize, status: StatusCode, text: &str, code: i64| -> Answer {
        (status, hec_body(text, code, Some(n)))
    };
    let format = |n| bad(n, StatusCode::BAD_REQUEST, "Invalid data format", 6);
    let indexed = |n| {
        bad(
            n,
            StatusCode::BAD_REQUEST,
            "Error in handling indexed fields",
            15,
        )
    };
    let stream = serde_json::Deserializer::from_slice(body).into_iter::<Box<RawValue>>();
    for (n, raw) in stream.enumerate() {
        let raw = raw.map_err(|_| format(n))?;
        let map: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|_| format(n))?;
        if map.keys().any(|k| !ENVELOPE_KEYS.contains(&k.as_str())) {
            return Err(format(n));
        }
        match map.get("event").map(|e| e.get().trim()) {
            None => {
                return Err(bad(
                    n,
                    StatusCode::BAD_REQUEST,
                    "Event field is required",
                    12,
                ))
            }
            Some("\"\"" | "null") => {
                return Err(bad(
                    n,
                    StatusCode::BAD_REQUEST,
                    "Event field cannot be blank",
                    13,
                ))
            }
            Some(_) => {}
        }
        if let Some(t) = map.get("time") {
            if !is_plain_decimal(t.get()) {
                return Err(indexed(n));
            }
        }
        for key in ["host", "source", "sourcetype", "index"] {
            if let Some(v) = map.get(key) {
                match serde_json::from_str::<String>(v.get()) {
                    Ok(s) if !s.is_empty() => {
                        if key == "index"
                            && allowed_indexes.is_some_and(|allowed| !allowed.contains(&s))
                        {
                            return Err(bad(n, StatusCode::BAD_REQUEST, "Incorrect index", 7));
                        }
                    }
                    _ => return Err(format(n)),
                }
            }
        }
        if let Some(f) = map.get("fields") {
            let ok = match serde_json::from_str::<Value>(f.get()) {
                Ok(Value::Object(fields)) => fields.values().all(|v| match v {
                    Value::String(_) => true,
                    Value::Array(items) => items.iter().all(Value::is_string),
                    _ => false,
                }),
                _ => false,
            };
            if !ok {
                return Err(indexed(n));
            }
        }
        out.push(serde_json::from_str(raw.get()).map_err(|_| format(n))?);
    }
    Ok(out)
}

/// `123`, `-1`, `1697795647.503333`: what HEC takes as `time` without complaint.
fn is_plain_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn ack(shared: &Shared, uri: &axum::http::Uri, headers: &HeaderMap, body: &[u8]) -> Answer {
    let config = &shared.config;
    if let Err(a) = check_token(config, headers) {
        return a;
    }
    if !config.indexer_ack {
        return answer(StatusCode::BAD_REQUEST, "ACK is disabled", 14);
    }
    let channel = match check_channel(config, uri, headers) {
        Ok(Some(c)) => c,
        Ok(None) => return answer(StatusCode::BAD_REQUEST, "Data channel is missing", 10),
        Err(a) => return a,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        acks: Vec<u64>,
    }
    let Ok(query) = serde_json::from_slice::<Query>(body) else {
        return answer(StatusCode::BAD_REQUEST, "Invalid data format", 6);
    };
    let mut st = lock(shared);
    if st.ack_busy > 0 || busy_now(&st) {
        st.ack_busy = st.ack_busy.saturating_sub(1);
        return answer(StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9);
    }
    st.ack_queries += 1;
    let now = std::time::Instant::now();
    let mut acked_events = 0;
    let ch = st.channels.entry(channel).or_default();
    let mut parts = Vec::new();
    for id in query.acks {
        let acked = match ch.pending.get_mut(&id) {
            Some((Due::Queries(0), n)) => {
                acked_events += *n;
                // Splunk forgets a status once it was reported indexed.
                ch.pending.remove(&id);
                true
            }
            Some((Due::At(t), n)) if *t <= now => {
                acked_events += *n;
                ch.pending.remove(&id);
                true
            }
            Some((Due::Queries(n), _)) => {
                *n -= 1;
                false
            }
            Some((Due::At(_) | Due::Never, _)) | None => false,
        };
        parts.push(format!(r#""{id}":{acked}"#));
    }
    st.acked_events += acked_events;
    (
        StatusCode::OK,
        format!(r#"{{"acks":{{{}}}}}"#, parts.join(",")),
    )
}

fn health(shared: &Shared, headers: &HeaderMap) -> Answer {
    let config = &shared.config;
    if lock(shared).unhealthy {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "HEC is unhealthy, queues are full",
            18,
        );
    }
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let Some(token) = v.to_str().ok().and_then(|v| v.strip_prefix("Splunk ")) else {
            return answer(StatusCode::UNAUTHORIZED, "Invalid authorization", 3);
        };
        if config.disabled_tokens.iter().any(|t| t == token) {
            return answer(StatusCode::BAD_REQUEST, "Token disabled", 22);
        }
        if token != config.token {
            return answer(StatusCode::BAD_REQUEST, "Invalid token", 21);
        }
    }
    answer(StatusCode::OK, "HEC is healthy", 17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_only() {
        for ok in ["0", "1697795647.503333", "-1.5", "12"] {
            assert!(is_plain_decimal(ok), "{ok}");
        }
        for bad in [
            "1.7E9", "1e3", "\"1\"", "", "1.", ".5", "-", "1.2.3", "null",
        ] {
            assert!(!is_plain_decimal(bad), "{bad}");
        }
    }

    fn check(body: &str) -> Result<Vec<Value>, Answer> {
        check_envelopes(body.as_bytes(), Some(&["main".to_string()]))
    }

    #[test]
    fn envelope_rules_name_the_bad_event() {
        let good = r#"{"time":1.5,"index":"main","fields":{"a":"b","c":["d"]},"event":{"x":1}}"#;
        assert_eq!(check(&format!("{good}\n{good}")).unwrap().len(), 2);
        let cases = [
            (r#"{"event":"x"} {"time":1}"#, 12, 1),
            (r#"{"event":""}"#, 13, 0),
            (r#"{"event":null}"#, 13, 0),
            (r#"{"event":1,"time":"1"}"#, 15, 0),
            (r#"{"event":1,"time":1.7E9}"#, 15, 0),
            (r#"{"event":1,"fields":{"n":1}}"#, 15, 0),
            (r#"{"event":1,"fields":"x"}"#, 15, 0),
            (r#"{"event":1,"index":"other"}"#, 7, 0),
            (r#"{"event":1,"sourcetype":3}"#, 6, 0),
            (r#"{"event":1,"host":""}"#, 6, 0),
            (r#"{"event":1,"extra":1}"#, 6, 0),
            (r#"{"event":1}{"event":"#, 6, 1),
            (r#"[{"event":1}]"#, 6, 0),
        ];
        for (body, code, n) in cases {
            let (status, reply) = check(body).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            let v: Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(v["code"], code, "{body}: {reply}");
            assert_eq!(v["invalid-event-number"], n, "{body}: {reply}");
        }
    }

    #[test]
    fn reply_bodies_are_splunks() {
        assert_eq!(
            hec_body("Incorrect index", 7, Some(3)),
            r#"{"text":"Incorrect index","code":7,"invalid-event-number":3}"#
        );
        assert_eq!(
            hec_body("Invalid token", 4, None),
            r#"{"text":"Invalid token","code":4}"#
        );
    }
}
