//! The HTTP side: one GET of one page, with tokens, quotas, retries and the mapping of
//! every answer to a page or a typed error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use relay_config::{Endpoints, Feed};
use reqwest::header::{
    HeaderMap, ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT, WARNING,
};
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::{debug, warn};
use url::Url;

use crate::admission::{Admission, AdmissionLimits, Answer, HeldSlot, RequestClass};
use crate::error::DefenderError;
use crate::pager::WindowPager;
use crate::parse::{looks_like_html, parse_page, snippet, Page, ParseError};
use crate::ratelimit::{stated_quota, ApiFamily, RateLimiter, RateLimits};
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::token::{AccessToken, TokenProvider};

/// The tenant a window is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantTarget {
    /// The configured name (unique key; what logs and the token provider use).
    pub name: String,
    /// The Entra tenant id (GUID); quotas are kept per tenant id.
    pub tenant_id: String,
    /// Where its APIs are.
    pub endpoints: Endpoints,
}

/// Page size and `$skip` ceiling of one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPaging {
    /// `$top`: items per page, at most the API's cap.
    pub top: u32,
    /// The largest `$skip` ever sent. Past it the window is split by time instead.
    pub max_skip: u32,
}

/// Settings of a [`DefenderClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `User-Agent` of every request. Microsoft asks partners to identify themselves.
    pub user_agent: String,
    /// Timeout of one request, body included.
    pub request_timeout: Duration,
    /// A response body larger than this is refused rather than buffered (an MDE page of
    /// 10,000 alerts with evidence is some tens of MB).
    pub max_body_bytes: usize,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Bounds of the adaptive limit of requests in flight across all tenants.
    pub admission: AdmissionLimits,
    /// Quotas per tenant and API family.
    pub rate_limits: RateLimits,
    /// XDR `/api/incidents`: `$top` ≤ 100 (more is a 400). Its `$skip` paging runs
    /// newest first and shifts when an item is updated mid-sweep, so deep `$skip` is
    /// avoided in favour of time splitting.
    pub m365d_incidents: FeedPaging,
    /// MDE `/api/alerts?$expand=evidence`: `$top` ≤ 10,000.
    pub mde_alerts: FeedPaging,
    /// Graph `/security/incidents?$expand=alerts`: 50 per page is what large tenants
    /// sustain with alerts expanded; `$skip` > 500 is a 400.
    pub graph_incidents: FeedPaging,
    /// Graph `/security/alerts_v2`: `$top` clamped at 1,000; `$skip` > 500 is a 400.
    pub graph_alerts: FeedPaging,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            user_agent: format!("xdr-relay/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(120),
            max_body_bytes: 256 << 20,
            retry: RetryPolicy::default(),
            admission: AdmissionLimits::default(),
            rate_limits: RateLimits::default(),
            m365d_incidents: FeedPaging {
                top: 100,
                max_skip: 500,
            },
            mde_alerts: FeedPaging {
                top: 10_000,
                max_skip: 40_000,
            },
            graph_incidents: FeedPaging {
                top: 50,
                max_skip: 500,
            },
            graph_alerts: FeedPaging {
                top: 1000,
                max_skip: 500,
            },
        }
    }
}

impl ClientOptions {
    /// Paging settings of `feed`, with `top` at least 1.
    pub fn paging(&self, feed: Feed) -> FeedPaging {
        let p = match feed {
            Feed::M365dIncidents => self.m365d_incidents,
            Feed::MdeAlerts => self.mde_alerts,
            Feed::GraphIncidents => self.graph_incidents,
            Feed::GraphAlerts => self.graph_alerts,
        };
        FeedPaging {
            top: p.top.max(1),
            max_skip: p.max_skip,
        }
    }
}

/// The API client for the four feeds. Cheap to clone; one per process, shared by all
/// tenants (quotas are tracked per tenant inside).
#[derive(Clone)]
pub struct DefenderClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) tokens: Arc<dyn TokenProvider>,
    pub(crate) options: ClientOptions,
    pub(crate) limiter: RateLimiter,
    admission: Arc<Admission>,
    rng: Mutex<SmallRng>,
}

impl std::fmt::Debug for DefenderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefenderClient")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl DefenderClient {
    /// A client sending through `http` with tokens from `tokens`.
    pub fn new(
        http: reqwest::Client,
        tokens: Arc<dyn TokenProvider>,
        options: ClientOptions,
    ) -> Self {
        DefenderClient {
            inner: Arc::new(Inner {
                http,
                tokens,
                limiter: RateLimiter::new(options.rate_limits.clone()),
                admission: Arc::new(Admission::new(options.admission)),
                options,
                rng: Mutex::new(SmallRng::from_entropy()),
            }),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The limiter, for schedulers that want to know whether a tenant is blocked.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The admission gate every request of this client passes.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.inner.admission
    }

    /// A pager over every item of `feed` in `tenant` with `from <= last update < to`.
    pub fn window(
        &self,
        tenant: &TenantTarget,
        feed: Feed,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> WindowPager {
        WindowPager::new(self.clone(), tenant.clone(), feed, from, to)
    }

    /// GETs one page, retrying what is worth retrying; the page comes with its admission
    /// slot, held until the caller is done with the page. `on_throttled` is called with the
    /// wait of every 429 as it arrives, the retried ones included.
    pub(crate) async fn fetch_page(
        &self,
        tenant: &TenantTarget,
        feed: Feed,
        url: &Url,
        class: RequestClass,
        on_throttled: &mut (dyn FnMut(Duration) + Send),
    ) -> Result<(Page, HeldSlot), DefenderError> {
        let inner = &self.inner;
        let policy = &inner.options.retry;
        let family = ApiFamily::of(feed);
        let audience = feed.audience();
        let endpoint = endpoint_of(url);
        let mut attempts = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        loop {
            inner.limiter.acquire(&tenant.tenant_id, family).await;
            let token = inner
                .tokens
                .bearer(&tenant.name, audience)
                .await
                .map_err(|source| DefenderError::Token {
                    tenant: tenant.name.clone(),
                    endpoint: endpoint.clone(),
                    audience,
                    source,
                })?;
            attempts += 1;
            // Quota first, then a slot: a tenant waiting for its quota holds none.
            let permit = inner.admission.admit(&tenant.tenant_id, class).await;
            let started = tokio::time::Instant::now();
            let outcome = self.attempt(feed, url, &token).await;
            let elapsed = started.elapsed();
            let slot = permit.answered_keep(match &outcome {
                Err(Failure::Transient { .. }) => Answer::Overloaded,
                _ => Answer::Answered,
            });
            let failure = match outcome {
                Ok(page) => {
                    debug!(url = %endpoint, items = page.items.len(), ?elapsed, "page fetched");
                    return Ok((page, slot));
                }
                Err(f) => f,
            };
            let ctx = Ctx {
                tenant: &tenant.name,
                endpoint: &endpoint,
                attempts,
            };
            match failure {
                Failure::Unauthorized { detail } => {
                    if refreshed {
                        return Err(DefenderError::Unauthorized {
                            tenant: tenant.name.clone(),
                            endpoint,
                            detail,
                        });
                    }
                    // An expired or revoked token: drop it and retry once with a new
                    // one. A second 401 is not about expiry.
                    warn!(url = %endpoint, %detail, "401 from the api; refreshing the token once");
                    inner.tokens.invalidate(&tenant.name, audience, &token);
                    refreshed = true;
                    attempts -= 1;
                }
                Failure::Throttled {
                    retry_after,
                    detail,
                } => {
                    throttled += 1;
                    attempts -= 1;
                    if let Some((limit, per)) = stated_quota(&detail) {
                        if let Some(kept) =
                            inner.limiter.learn(&tenant.tenant_id, family, limit, per)
                        {
                            warn!(url = %endpoint, api = family.as_str(),
                                "the API states tenant {}'s quota as {limit} requests per {per:?}, \
                                 lower than the relay kept to; keeping to {} per {per:?} from now on",
                                tenant.name, kept.limit);
                        }
                    }
                    let wait = retry_after
                        .unwrap_or_else(|| self.backoff(throttled - 1).max(Duration::from_secs(1)));
                    inner.limiter.block(&tenant.tenant_id, family, wait);
                    on_throttled(wait);
                    if throttled > policy.max_throttled || wait > policy.max_retry_after {
                        return Err(DefenderError::QuotaExhausted {
                            tenant: tenant.name.clone(),
                            endpoint,
                            retry_after: wait,
                            detail,
                        });
                    }
                    warn!(url = %endpoint, %detail, ?wait, "429 from the api; waiting as told");
                }
                Failure::Transient { retry_after, error } => {
                    let error = error.into_error(&ctx);
                    if attempts >= policy.max_attempts.max(1) {
                        return Err(error);
                    }
                    let delay = self
                        .backoff(attempts - 1)
                        .max(retry_after.unwrap_or_default());
                    if let Some(wait) = retry_after {
                        // A 503 with Retry-After speaks for the whole tenant, as a 429 does.
                        inner.limiter.block(&tenant.tenant_id, family, wait);
                    }
                    if delay > policy.max_retry_after {
                        return Err(error);
                    }
                    warn!(url = %endpoint, error = %ErrorChain(&error), ?delay, attempt = attempts,
                        "transient failure; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Failure::Fatal(error) => return Err(error.into_error(&ctx)),
            }
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let mut rng = self.inner.rng.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.options.retry.backoff(retry, &mut *rng)
    }

    /// One request, its answer classified.
    async fn attempt(&self, feed: Feed, url: &Url, token: &AccessToken) -> Result<Page, Failure> {
        let opts = &self.inner.options;
        let mut request = self
            .inner
            .http
            .get(url.clone())
            .bearer_auth(token.secret.expose())
            .header(USER_AGENT, &opts.user_agent)
            .header(ACCEPT, "application/json")
            .timeout(opts.request_timeout);
        if ApiFamily::of(feed) == ApiFamily::Graph {
            // Without it Graph hides newer enum values (`awaitingAction`,
            // `microsoftDefenderForCloud`) behind `unknownFutureValue`.
            request = request.header("Prefer", "include-unknown-enum-members");
        }
        let mut response = request.send().await.map_err(|e| Failure::Transient {
            retry_after: None,
            error: PendingError::Network(e.without_url()),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));

        // Read chunk by chunk so that a cut connection still tells how much arrived.
        let mut body =
            Vec::with_capacity(response.content_length().unwrap_or(0).min(1 << 24) as usize);
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > opts.max_body_bytes {
                        return Err(Failure::Fatal(PendingError::Body(ParseError::Malformed {
                            detail: format!("body larger than {} bytes", opts.max_body_bytes),
                        })));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(Failure::Transient {
                        retry_after,
                        error: PendingError::Network(e.without_url()),
                    })
                }
                Err(e) => {
                    return Err(Failure::Transient {
                        retry_after,
                        error: PendingError::Body(ParseError::Truncated {
                            len: body.len(),
                            detail: e.without_url().to_string(),
                        }),
                    })
                }
            }
        }
        if let Some(expected) = declared_length(&headers) {
            if expected != body.len() as u64 {
                return Err(Failure::Transient {
                    retry_after,
                    error: PendingError::Body(ParseError::Truncated {
                        len: body.len(),
                        detail: format!("content-length says {expected} bytes"),
                    }),
                });
            }
        }
        classify(feed, status, &headers, retry_after, &body)
    }
}

/// Content-Length, when it describes the bytes we got (not a compressed body that the
/// client decoded).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(CONTENT_ENCODING) {
        return None;
    }
    headers
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn classify(
    feed: Feed,
    status: StatusCode,
    headers: &HeaderMap,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Page, Failure> {
    let is_html = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        })
        || looks_like_html(body);
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let warning = headers
                .get_all(WARNING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            Err(Failure::Transient {
                retry_after,
                error: PendingError::PartialContent {
                    warning: if warning.is_empty() {
                        "no Warning header".to_string()
                    } else {
                        warning
                    },
                },
            })
        }
        StatusCode::UNAUTHORIZED => Err(Failure::Unauthorized {
            detail: error_detail(body, is_html),
        }),
        StatusCode::FORBIDDEN => Err(Failure::Fatal(PendingError::Forbidden {
            detail: error_detail(body, is_html),
        })),
        StatusCode::TOO_MANY_REQUESTS => Err(Failure::Throttled {
            retry_after,
            detail: error_detail(body, is_html),
        }),
        s if is_html => {
            let error = PendingError::Html {
                status: s.as_u16(),
                snippet: snippet(body, 120),
            };
            if s.is_success() || s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT {
                Err(Failure::Transient { retry_after, error })
            } else {
                Err(Failure::Fatal(error))
            }
        }
        s if s.is_success() => parse_page(feed, body).map_err(|e| match e {
            ParseError::Html { snippet } => Failure::Transient {
                retry_after,
                error: PendingError::Html {
                    status: s.as_u16(),
                    snippet,
                },
            },
            e if e.is_transient() => Failure::Transient {
                retry_after,
                error: PendingError::Body(e),
            },
            e => Failure::Fatal(PendingError::Body(e)),
        }),
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => Err(Failure::Transient {
            retry_after,
            error: PendingError::Server {
                status: s.as_u16(),
                detail: error_detail(body, is_html),
            },
        }),
        s if s.is_redirection() => Err(Failure::Fatal(PendingError::Api {
            status: s.as_u16(),
            // Not followed: the list endpoints never redirect, and a bearer token must
            // not follow one. Where it pointed is what the operator needs (a proxy or
            // gateway in the way, a wrong `endpoints` override).
            detail: match headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| Url::parse(l).ok())
            {
                Some(to) => format!("redirect to {} (not followed)", endpoint_of(&to)),
                None => "redirect (not followed)".to_string(),
            },
        })),
        s => Err(Failure::Fatal(PendingError::Api {
            status: s.as_u16(),
            detail: error_detail(body, is_html),
        })),
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

/// `code: message` from `{"error":{"code","message"}}`, else the start of the body.
fn error_detail(body: &[u8], is_html: bool) -> String {
    if is_html {
        return format!("html error page: {}", snippet(body, 120));
    }
    if let Ok(env) = serde_json::from_slice::<ErrorEnvelope>(body) {
        let code = match env.error.code {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => "no code".to_string(),
        };
        return match env.error.message {
            Some(m) => format!("{code}: {m}"),
            None => code,
        };
    }
    if body.is_empty() {
        "empty body".to_string()
    } else {
        snippet(body, 200)
    }
}

/// The URL without query, fragment or credentials: safe for logs and errors.
pub(crate) fn endpoint_of(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

struct Ctx<'a> {
    tenant: &'a str,
    endpoint: &'a str,
    attempts: u32,
}

/// An error before it knows its tenant and endpoint.
enum PendingError {
    Network(reqwest::Error),
    Body(ParseError),
    PartialContent { warning: String },
    Html { status: u16, snippet: String },
    Server { status: u16, detail: String },
    Forbidden { detail: String },
    Api { status: u16, detail: String },
}

impl PendingError {
    fn into_error(self, ctx: &Ctx<'_>) -> DefenderError {
        let tenant = ctx.tenant.to_string();
        let endpoint = ctx.endpoint.to_string();
        match self {
            PendingError::Network(source) => DefenderError::Network {
                tenant,
                endpoint,
                attempts: ctx.attempts,
                source,
            },
            PendingError::Body(source) => DefenderError::Body {
                tenant,
                endpoint,
                source,
            },
            PendingError::PartialContent { warning } => DefenderError::PartialContent {
                tenant,
                endpoint,
                warning,
            },
            PendingError::Html { status, snippet } => DefenderError::Html {
                tenant,
                endpoint,
                status,
                snippet,
            },
            PendingError::Server { status, detail } => DefenderError::Server {
                tenant,
                endpoint,
                status,
                attempts: ctx.attempts,
                detail,
            },
            PendingError::Forbidden { detail } => DefenderError::Forbidden {
                tenant,
                endpoint,
                detail,
            },
            PendingError::Api { status, detail } => DefenderError::Api {
                tenant,
                endpoint,
                status,
                detail,
            },
        }
    }
}

enum Failure {
    Unauthorized {
        detail: String,
    },
    Throttled {
        retry_after: Option<Duration>,
        detail: String,
    },
    Transient {
        retry_after: Option<Duration>,
        error: PendingError,
    },
    Fatal(PendingError),
}

/// Formats an error with its sources, `a: b: c`, for one-line logs.
pub(crate) struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ThrottleCounter;
    use crate::token::TokenError;
    use relay_config::{Audience, Secret};
    use relay_sim::{ApiFault, FaultKind, Sim, SimConfig};

    /// Access tokens minted directly by the simulator's Entra.
    struct SimTokens(Arc<relay_sim::entra::Entra>, Vec<(String, String)>);

    #[async_trait::async_trait]
    impl TokenProvider for SimTokens {
        async fn bearer(
            &self,
            tenant: &str,
            audience: Audience,
        ) -> Result<AccessToken, TokenError> {
            let (_, id) = self.1.iter().find(|(name, _)| name == tenant).unwrap();
            let lifetime = Duration::from_secs(600);
            Ok(AccessToken {
                secret: Secret::new(self.0.mint_access_token(id, audience, lifetime)),
                expires_at: tokio::time::Instant::now() + lifetime,
            })
        }

        fn invalidate(&self, _: &str, _: Audience, _: &AccessToken) {}
    }

    fn target(sim: &Sim, i: usize) -> TenantTarget {
        let t = &sim.tenants()[i];
        TenantTarget {
            name: t.name.clone(),
            tenant_id: t.tenant_id.clone(),
            endpoints: sim.endpoints(),
        }
    }

    /// Drains the window of the last hour, counting 429s in `counter`.
    async fn drain(
        c: &DefenderClient,
        tenant: &TenantTarget,
        counter: &Arc<ThrottleCounter>,
    ) -> Result<u64, DefenderError> {
        let now = Utc::now();
        let mut pager = c
            .window(
                tenant,
                Feed::GraphAlerts,
                now - chrono::TimeDelta::hours(1),
                now,
            )
            .count_throttling(Arc::clone(counter));
        while pager.next_page().await?.is_some() {}
        Ok(pager.stats().throttled)
    }

    #[tokio::test]
    async fn every_429_is_counted_for_its_tenant_retried_or_not() {
        let sim = Sim::start(SimConfig {
            tenants: 2,
            activity: 0,
            backlog: 5,
            quotas_enabled: false,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let tokens = SimTokens(
            sim.entra().clone(),
            sim.tenants()
                .iter()
                .map(|t| (t.name.clone(), t.tenant_id.clone()))
                .collect(),
        );
        let options = ClientOptions {
            rate_limits: RateLimits::unlimited(),
            ..ClientOptions::default()
        };
        let c = DefenderClient::new(reqwest::Client::new(), Arc::new(tokens), options);
        let (throttled, calm) = (target(&sim, 0), target(&sim, 1));
        let (counter, calm_counter) = (
            Arc::new(ThrottleCounter::new()),
            Arc::new(ThrottleCounter::new()),
        );

        // Two 429s retried inside the poll: it succeeds, and both are counted.
        let storm = |retry_after_secs| {
            ApiFault::new(FaultKind::TooManyRequests { retry_after_secs }).on(Feed::GraphAlerts)
        };
        sim.set_fault(&throttled.tenant_id, storm(1).times(2))
            .unwrap();
        assert_eq!(drain(&c, &throttled, &counter).await.unwrap(), 2);
        assert_eq!(drain(&c, &calm, &calm_counter).await.unwrap(), 0);
        assert_eq!(
            (counter.responses(), counter.waited()),
            (2, Duration::from_secs(2))
        );

        // A Retry-After too long to wait out fails the poll; the 429 still counts.
        sim.set_fault(&throttled.tenant_id, storm(3600)).unwrap();
        let err = drain(&c, &throttled, &counter).await.unwrap_err();
        assert!(
            matches!(err, DefenderError::QuotaExhausted { .. }),
            "{err:?}"
        );
        assert_eq!(counter.responses(), 3);
        assert_eq!(counter.waited(), Duration::from_secs(3602));
        assert_eq!(sim.stats().throttled, 3);
        assert_eq!(
            (calm_counter.responses(), calm_counter.waited()),
            (0, Duration::ZERO)
        );
        sim.shutdown().await;
    }
}
