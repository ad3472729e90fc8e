//! Test helpers: a scripted HTTP/1.1 server on 127.0.0.1:0 (exact control over status,
//! headers, cut bodies and dropped connections), a small fake list API with OData
//! `$filter`/`$top`/`$skip` semantics, and token providers.

// Test scaffolding: a failed unwrap here is a failed test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use relay_config::{Audience, Endpoints, Feed, Secret};
use relay_defender::odata_time::{filter_literal, parse_timestamp};
use relay_defender::{AccessToken, TenantTarget, TokenError, TokenProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub target: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Decoded query parameters.
    pub fn query(&self) -> HashMap<String, String> {
        let q = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// What the mock answers.
pub enum Reply {
    /// A complete response (Content-Length and `Connection: close` added).
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// These bytes, then the connection is closed.
    Raw(Vec<u8>),
    /// Close the connection without answering.
    Close,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Http {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Http { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

/// A scripted HTTP server.
pub struct Mock {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Mock {
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recs = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recs = recs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or("");
                    let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let headers = lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let rec = Recorded {
                        target,
                        headers,
                        at: Instant::now(),
                    };
                    let index = {
                        let mut r = recs.lock().unwrap();
                        r.push(rec.clone());
                        r.len() - 1
                    };
                    match handler(&rec, index) {
                        Reply::Http {
                            status,
                            headers,
                            body,
                        } => {
                            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                            if !headers
                                .iter()
                                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            {
                                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
                            }
                            for (k, v) in headers {
                                out.push_str(&format!("{k}: {v}\r\n"));
                            }
                            out.push_str("\r\n");
                            let mut bytes = out.into_bytes();
                            bytes.extend_from_slice(&body);
                            let _ = sock.write_all(&bytes).await;
                        }
                        Reply::Raw(bytes) => {
                            let _ = sock.write_all(&bytes).await;
                        }
                        Reply::Close => {}
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Mock { addr, requests }
    }

    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).unwrap()
    }

    pub fn tenant(&self) -> TenantTarget {
        TenantTarget {
            name: "contoso".into(),
            tenant_id: "00000000-0000-0000-0000-0000000000c1".into(),
            endpoints: Endpoints::single_host(&self.url()),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Tokens `tok-0`, `tok-1`, ...: a new one after each `invalidate`.
#[derive(Default)]
pub struct CountingTokens {
    pub generation: AtomicUsize,
    pub invalidated: Mutex<Vec<(String, Audience, String)>>,
    pub asked: Mutex<Vec<(String, Audience)>>,
}

#[async_trait::async_trait]
impl TokenProvider for CountingTokens {
    async fn bearer(&self, tenant: &str, audience: Audience) -> Result<AccessToken, TokenError> {
        self.asked
            .lock()
            .unwrap()
            .push((tenant.to_string(), audience));
        let n = self.generation.load(Ordering::SeqCst);
        Ok(AccessToken {
            secret: Secret::new(format!("tok-{n}")),
            expires_at: tokio::time::Instant::now() + Duration::from_secs(3600),
        })
    }

    fn invalidate(&self, tenant: &str, audience: Audience, rejected: &AccessToken) {
        self.invalidated.lock().unwrap().push((
            tenant.to_string(),
            audience,
            rejected.secret.expose().to_string(),
        ));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A fake list API over `items` with the paging rules of the real ones: `$filter`
/// `ge`/`lt` on the feed's time field, `$top` (clamped to `top_cap`), `$skip` (400 past
/// `max_skip`), order: ascending when `$orderby` is sent, newest first for XDR, a fixed
/// scramble otherwise.
pub struct FakeApi {
    pub feed: Feed,
    pub items: Mutex<Vec<(String, DateTime<Utc>)>>,
    pub max_skip: Option<u32>,
    pub top_cap: u32,
}

impl FakeApi {
    pub fn new(feed: Feed, items: Vec<(String, DateTime<Utc>)>) -> FakeApi {
        let (max_skip, top_cap) = match feed {
            Feed::GraphIncidents | Feed::GraphAlerts => (Some(500), 1000),
            Feed::M365dIncidents => (None, 100),
            Feed::MdeAlerts => (None, 10_000),
        };
        FakeApi {
            feed,
            items: Mutex::new(items),
            max_skip,
            top_cap,
        }
    }

    pub fn handle(&self, req: &Recorded) -> Reply {
        let q = req.query();
        let top: u32 = q.get("$top").map_or(Ok(50), |t| t.parse()).unwrap();
        let skip: u32 = q.get("$skip").map_or(Ok(0), |t| t.parse()).unwrap();
        if let Some(max) = self.max_skip {
            if skip > max {
                return Reply::json(
                    400,
                    format!(
                        r#"{{"error":{{"code":"BadRequest","message":"Invalid ODataQueryOptions: $skip {skip} exceeds {max}"}}}}"#
                    ),
                );
            }
        }
        let filter = q.get("$filter").cloned().unwrap_or_default();
        let field = self.feed.time_field();
        let parts: Vec<&str> = filter.split(' ').collect();
        assert_eq!(parts.len(), 7, "filter {filter:?}");
        assert_eq!(
            (parts[0], parts[1], parts[3], parts[4], parts[5]),
            (field, "ge", "and", field, "lt")
        );
        let lo = parse_timestamp(parts[2]).unwrap();
        let hi = parse_timestamp(parts[6]).unwrap();
        let mut hits: Vec<(String, DateTime<Utc>)> = self
            .items
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| lo <= *t && *t < hi)
            .cloned()
            .collect();
        if q.contains_key("$orderby") {
            hits.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        } else if self.feed == Feed::M365dIncidents {
            hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        } else {
            hits.sort_by_key(|(id, _)| scramble(id));
        }
        let page: Vec<String> = hits
            .iter()
            .skip(skip as usize)
            .take(top.min(self.top_cap) as usize)
            .map(|(id, t)| {
                let id_json = if self.feed == Feed::M365dIncidents && id.parse::<u64>().is_ok() {
                    id.clone()
                } else {
                    format!("\"{id}\"")
                };
                format!(
                    r#"{{"{}":{id_json},"{field}":"{}","title":"item {id}","nested":{{"id":"x","{field}":"1999-01-01T00:00:00Z"}}}}"#,
                    self.feed.id_field(),
                    filter_literal(*t)
                )
            })
            .collect();
        Reply::json(
            200,
            format!(
                r#"{{"@odata.context":"fake","value":[{}]}}"#,
                page.join(",")
            ),
        )
    }
}

fn scramble(id: &str) -> u64 {
    id.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

pub fn at(s: &str) -> DateTime<Utc> {
    parse_timestamp(s).unwrap()
}
