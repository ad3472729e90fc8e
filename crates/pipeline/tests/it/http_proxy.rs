//! `[http] proxy`, `no_proxy` and `ca_file`: the token and API clients through a forward
//! proxy started here (CONNECT for HTTPS, absolute-form requests for plain HTTP), an HTTPS
//! server whose certificate is issued by a private CA, and the whole relay polling the
//! simulator through the proxy. Everything on 127.0.0.1, ports picked at run time.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use relay_config::{Api, CaBundle, HttpConfig, ProxyConfig, ProxyScope};
use relay_pipeline::{http_client, HttpPurpose};
use relay_sim::Sim;
use relay_state::StoreOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use crate::util::*;

/// A forward proxy: logs the request line of every CONNECT and absolute-form request,
/// then relays bytes both ways to the target it names.
struct Proxy {
    url: Url,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        Proxy::answering(None).await
    }

    /// A proxy that answers every request with `refusal` (a status line) instead.
    async fn answering(refusal: Option<&'static str>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(proxy_one(client, Arc::clone(&log), refusal));
            }
        });
        Proxy { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().clone()
    }
}

/// Reads up to the end of the request head; what came after it (a body already sent) is
/// returned too.
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn proxy_one(
    mut client: TcpStream,
    log: Arc<Mutex<Vec<String>>>,
    refusal: Option<&'static str>,
) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let line = head.lines().next().unwrap_or_default().to_string();
    log.lock().push(line.clone());
    if let Some(status) = refusal {
        let _ = client
            .write_all(format!("{status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        return;
    }
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "CONNECT" {
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let _ = upstream.write_all(&rest).await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    } else {
        // Absolute-form (`GET http://host:port/path HTTP/1.1`): the origin server (the
        // simulator's hyper) accepts it as it is, so the head is forwarded verbatim. Every
        // request on a kept-alive connection goes to the same upstream, which is all a
        // test with one upstream needs.
        let Ok(url) = Url::parse(target) else {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            return;
        };
        let addr = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(80)
        );
        let Ok(mut upstream) = TcpStream::connect(addr).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        if upstream.write_all(head.as_bytes()).await.is_err()
            || upstream.write_all(&rest).await.is_err()
        {
            return;
        }
        // Later requests on this kept-alive connection are logged from the byte stream.
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_upstream, mut to_upstream) = upstream.into_split();
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_upstream, &mut to_client).await;
        });
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match from_client.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&chunk[..n]);
            for line in text.split("\r\n") {
                if ["GET http://", "POST http://"]
                    .iter()
                    .any(|m| line.starts_with(m))
                {
                    log.lock().push(line.to_string());
                }
            }
            if to_upstream.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_upstream.shutdown().await;
        let _ = back.await;
    }
}

/// A private CA and an HTTPS server on 127.0.0.1 with a `localhost` certificate it issued.
struct TlsServer {
    port: u16,
    ca_der: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    async fn start() -> TlsServer {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "xdr-relay test inspection CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    // A handshake the client aborts (untrusted certificate) ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    log.lock()
                        .push(head.lines().next().unwrap_or_default().to_string());
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                              Content-Length: 5\r\nConnection: close\r\n\r\nhello",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer {
            port,
            ca_der: ca_cert.der().to_vec(),
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

fn http_config(proxy: Option<ProxyConfig>, ca: Option<Vec<u8>>) -> HttpConfig {
    HttpConfig {
        proxy,
        ca: ca.map(|der| CaBundle {
            path: "corp-ca.pem".into(),
            certificates: vec![der],
        }),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    }
}

fn proxy_config(proxy: &Proxy, scope: ProxyScope, no_proxy: &[&str]) -> ProxyConfig {
    ProxyConfig {
        url: proxy.url.clone(),
        scope,
        no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
        source: "http.proxy".into(),
    }
}

async fn get(http: &HttpConfig, purpose: HttpPurpose, url: &str) -> reqwest::Result<String> {
    http_client(http, purpose)
        .unwrap()
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[tokio::test]
async fn token_and_api_clients_tunnel_through_the_proxy_and_trust_ca_file() {
    let proxy = Proxy::start().await;
    let server = TlsServer::start().await;
    let http = http_config(
        Some(proxy_config(&proxy, ProxyScope::All, &[])),
        Some(server.ca_der.clone()),
    );
    for (purpose, path) in [
        (HttpPurpose::Token, "/tenant/oauth2/v2.0/token"),
        (HttpPurpose::Api, "/v1.0/security/incidents"),
    ] {
        let body = get(&http, purpose, &server.url(path)).await.unwrap();
        assert_eq!(body, "hello");
    }
    let connect = format!("CONNECT localhost:{} HTTP/1.1", server.port);
    assert_eq!(proxy.seen(), [connect.clone(), connect]);
    assert_eq!(
        *server.requests.lock(),
        [
            "GET /tenant/oauth2/v2.0/token HTTP/1.1",
            "GET /v1.0/security/incidents HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn without_ca_file_a_privately_issued_certificate_is_refused() {
    let proxy = Proxy::start().await;
    let server = TlsServer::start().await;
    let http = http_config(Some(proxy_config(&proxy, ProxyScope::All, &[])), None);
    for purpose in [HttpPurpose::Token, HttpPurpose::Api] {
        let err = get(&http, purpose, &server.url("/x")).await.unwrap_err();
        let chain = error_chain(&err).join(": ");
        assert!(
            chain.contains("invalid peer certificate: UnknownIssuer"),
            "{chain}"
        );
    }
    assert!(server.requests.lock().is_empty());
    // Directly, too: the CA is trusted only through ca_file, never by default.
    let err = get(
        &http_config(None, None),
        HttpPurpose::Api,
        &server.url("/x"),
    )
    .await
    .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_is_reported_as_such() {
    let server = TlsServer::start().await;
    for (refusal, expected) in [
        (
            "HTTP/1.1 407 Proxy Authentication Required",
            "tunnel error: proxy authorization required",
        ),
        ("HTTP/1.1 403 Forbidden", "tunnel error: unsuccessful"),
    ] {
        let proxy = Proxy::answering(Some(refusal)).await;
        let http = http_config(
            Some(proxy_config(&proxy, ProxyScope::All, &[])),
            Some(server.ca_der.clone()),
        );
        let err = get(&http, HttpPurpose::Token, &server.url("/t"))
            .await
            .unwrap_err();
        let chain = error_chain(&err);
        assert!(
            chain.iter().any(|e| e.contains(expected)),
            "{refusal}: {chain:?}"
        );
    }
    assert!(server.requests.lock().is_empty());
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![format!("{err}")];
    let mut source = err.source();
    while let Some(s) = source {
        out.push(format!("{s}"));
        source = s.source();
    }
    out
}

#[tokio::test]
async fn no_proxy_hosts_and_env_scoped_plain_http_connect_directly() {
    let proxy = Proxy::start().await;
    let server = TlsServer::start().await;
    // `no_proxy` names the host: straight to it, and the CA still applies.
    let http = http_config(
        Some(proxy_config(&proxy, ProxyScope::All, &["localhost"])),
        Some(server.ca_der.clone()),
    );
    assert_eq!(
        get(&http, HttpPurpose::Api, &server.url("/direct"))
            .await
            .unwrap(),
        "hello"
    );
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());

    // A proxy from HTTPS_PROXY carries HTTPS only: a plain-HTTP endpoint (the simulator)
    // is reached directly; `[http] proxy` carries it too.
    let mut cfg = sim_config(1, 5);
    cfg.activity = 0;
    let sim = Sim::start(cfg).await.unwrap();
    let plain = sim.base_url().join("proxy-probe").unwrap().to_string();
    let env_scoped = http_config(Some(proxy_config(&proxy, ProxyScope::HttpsOnly, &[])), None);
    let _ = http_client(&env_scoped, HttpPurpose::Api)
        .unwrap()
        .get(&plain)
        .send()
        .await
        .unwrap();
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    let all = http_config(Some(proxy_config(&proxy, ProxyScope::All, &[])), None);
    let _ = http_client(&all, HttpPurpose::Api)
        .unwrap()
        .get(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(proxy.seen(), [format!("GET {plain} HTTP/1.1")]);
}

/// The whole relay with `[http] proxy`: every token request and every API page goes
/// through the proxy, and every version arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_polls_and_gets_tokens_through_the_proxy() {
    let proxy = Proxy::start().await;
    let mut cfg = sim_config(2, 17);
    cfg.activity = 0;
    let sim = Sim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("out");
    let specs = [
        spec(0, Api::Graph, Auth::ClientSecret),
        spec(1, Api::Defender, Auth::RefreshToken),
    ];
    let mut config = config(&sim, &specs, dir.path(), &sink_dir);
    config.http.proxy = Some(proxy_config(&proxy, ProxyScope::All, &[]));
    let state = open_state(dir.path(), StoreOptions::default());
    let names: Vec<String> = specs.iter().map(|s| tenant_name(s.sim_index)).collect();
    let relay = start(&config, state, options());
    sim.settle().await;
    let settled = chrono::Utc::now();
    wait_for(&relay.status, Duration::from_secs(30), "catch-up", |s| {
        caught_up(s, &names, settled)
    })
    .await;
    relay.stop().await;
    assert_exactly_once(&delivered(&sink_dir), &expected(&sim, &specs));
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("POST ") && l.contains("/oauth2/v2.0/token")),
        "no token request went through the proxy: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET ") && l.contains("/security/incidents")),
        "no Graph API page went through the proxy: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("GET ") && l.contains("/api/")),
        "no Defender API page went through the proxy: {seen:?}"
    );
}
