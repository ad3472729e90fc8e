//! The HTTP side of the HEC sink: one reqwest client (rustls) per sink with the sink's TLS
//! settings, and the three requests HEC knows (event, ack, health).

use super::config::SplunkHecSinkConfig;
use super::request;
use super::response::HecUnavailable;
use crate::error::SinkError;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use std::time::Duration;
use tracing::warn;
use url::Url;

/// The header carrying the channel (sinks.md §1.4).
pub(crate) const CHANNEL_HEADER: &str = "x-splunk-request-channel";

/// Replies are a few dozen bytes; a misconfigured proxy may send a whole page. Only the
/// start is kept (for the message); the rest is read and dropped so the connection can be
/// reused.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// HEC front ends (splunkd, load balancers) close idle keep-alive connections after some
/// seconds; a request sent on a connection just as the server closes it fails. Closing ours
/// first avoids most of those retries at the cost of an occasional new handshake.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connecting should never take long; a dead host is found out sooner than the request
/// timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP status and the start of the body.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The sink's HTTP client and the URLs it talks to.
pub(crate) struct HecClient {
    http: reqwest::Client,
    /// `<url>/services/collector/event`.
    pub event_url: Url,
    /// `<url>/services/collector/ack`.
    pub ack_url: Url,
    /// `<url>/services/collector/health`.
    pub health_url: Url,
    /// `Splunk <token>`, marked sensitive so no Debug of a request shows it.
    auth: HeaderValue,
    /// The channel GUID sent with every request.
    pub channel: String,
    /// The gzip level when bodies are compressed; `None`: sent uncompressed.
    gzip: Option<u32>,
    timeout: Duration,
}

impl std::fmt::Debug for HecClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HecClient")
            .field("event_url", &self.event_url.as_str())
            .field("channel", &self.channel)
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HecClient {
    /// Builds the client: reads the TLS files (blocking; call at start-up).
    pub fn new(config: &SplunkHecSinkConfig) -> Result<HecClient, SinkError> {
        let sink = &config.name;
        let cfg_err = |reason: String| SinkError::Config {
            sink: sink.clone(),
            reason,
        };
        let endpoint = |path: &str| -> Result<Url, SinkError> {
            let mut base = config.url.clone();
            // Keep a path prefix of the base URL (HEC behind a reverse proxy).
            if !base.path().ends_with('/') {
                let p = format!("{}/", base.path());
                base.set_path(&p);
            }
            base.join(path)
                .map_err(|e| cfg_err(format!("url: cannot append {path}: {e}")))
        };
        let mut auth = HeaderValue::from_str(&format!("Splunk {}", config.token.expose()))
            .map_err(|_| {
                cfg_err("token: contains characters not allowed in an HTTP header".to_string())
            })?;
        auth.set_sensitive(true);
        let channel = match &config.indexer_ack.channel {
            Some(c) => uuid::Uuid::parse_str(c)
                .map_err(|_| cfg_err(format!("indexer_ack.channel: {c:?} is not a GUID")))?
                .to_string(),
            None => uuid::Uuid::new_v4().to_string(),
        };

        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("xdr-relay/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(MAX_CONNECT_TIMEOUT))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirected POST turns into a GET and loses the batch; refuse instead.
            .redirect(reqwest::redirect::Policy::none());
        let tls = &config.tls;
        if config.url.scheme() == "https" {
            if let Some(ca_file) = &tls.ca_file {
                let pem = std::fs::read(ca_file).map_err(|source| SinkError::Io {
                    sink: sink.clone(),
                    action: "read the TLS CA file",
                    path: ca_file.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    cfg_err(format!(
                        "tls.ca_file: {}: not a PEM certificate bundle: {e}",
                        ca_file.display()
                    ))
                })?;
                if certs.is_empty() {
                    return Err(cfg_err(format!(
                        "tls.ca_file: {}: holds no certificate",
                        ca_file.display()
                    )));
                }
                // The configured CA is the one to trust: a private Splunk CA should not be
                // diluted by every public root.
                b = b.tls_built_in_root_certs(false);
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            if let (Some(cert_file), Some(key)) = (&tls.client_cert_file, &tls.client_key) {
                let mut pem = std::fs::read(cert_file).map_err(|source| SinkError::Io {
                    sink: sink.clone(),
                    action: "read the TLS client certificate",
                    path: cert_file.clone(),
                    source,
                })?;
                pem.push(b'\n');
                pem.extend_from_slice(key.expose().as_bytes());
                let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
                    cfg_err(format!(
                        "tls.client_cert_file / tls.client_key: {} and the key do not form a \
                         PEM certificate and private key",
                        cert_file.display()
                    ))
                })?;
                b = b.identity(identity);
            }
            if !tls.verify {
                warn!(
                    sink = %sink,
                    url = %display_url(&config.url),
                    "tls.verify = false: the HEC server's certificate is not checked; anyone \
                     on the path can read the events and the token"
                );
                b = b.danger_accept_invalid_certs(true);
            }
        }
        let http = b
            .build()
            .map_err(|e| cfg_err(format!("cannot build the HTTP client: {e}")))?;
        Ok(HecClient {
            http,
            event_url: endpoint("services/collector/event")?,
            ack_url: endpoint("services/collector/ack")?,
            health_url: endpoint("services/collector/health")?,
            auth,
            channel,
            gzip: config.gzip.then_some(config.gzip_level),
            timeout: config.request_timeout,
        })
    }

    /// POSTs a JSON `body` (gzipped if configured) to `url` with token and channel.
    pub async fn post(&self, url: &Url, body: Vec<u8>) -> Result<RawReply, HecUnavailable> {
        let mut req = self
            .http
            .post(url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(CHANNEL_HEADER, &self.channel);
        let body = if let Some(level) = self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
            // A megabyte of gzip takes milliseconds of CPU: off the async workers.
            tokio::task::spawn_blocking(move || request::gzip(&body, level))
                .await
                .map_err(|e| HecUnavailable::Compress(std::io::Error::other(e)))?
                .map_err(HecUnavailable::Compress)?
        } else {
            body
        };
        self.execute(req.body(body)).await
    }

    /// GETs the health endpoint with the token, so that a bad token shows too.
    pub async fn health(&self) -> Result<RawReply, HecUnavailable> {
        let req = self
            .http
            .get(self.health_url.clone())
            .header(AUTHORIZATION, self.auth.clone());
        self.execute(req).await
    }

    async fn execute(&self, req: reqwest::RequestBuilder) -> Result<RawReply, HecUnavailable> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                HecUnavailable::Timeout(self.timeout)
            } else {
                // The URL is in the sink error already; reqwest's copy would repeat it.
                HecUnavailable::Transport(e.without_url())
            }
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            let room = MAX_REPLY_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(RawReply { status, body })
    }
}

/// `url` as errors and logs show it: no user info, query or fragment.
pub(crate) fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    // Errors are impossible for http(s) URLs, which validation ensured.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}
