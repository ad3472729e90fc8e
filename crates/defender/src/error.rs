//! What can go wrong fetching a page, each error naming the tenant and the endpoint
//! (the URL without its query).

use std::time::Duration;

use relay_config::Audience;

use crate::parse::ParseError;
use crate::token::TokenError;

/// A failed page of a window. The pager keeps its position, so calling `next_page`
/// again retries the same page.
#[derive(Debug, thiserror::Error)]
pub enum DefenderError {
    /// No access token could be had for the tenant.
    #[error("tenant {tenant}: no {audience} token for {endpoint}")]
    Token {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// The audience asked for.
        audience: Audience,
        /// Why.
        #[source]
        source: TokenError,
    },
    /// The API refused a freshly issued token too (HTTP 401): a consent or app
    /// registration problem, not an expiry.
    #[error("tenant {tenant}: {endpoint} rejected a fresh token (401): {detail}")]
    Unauthorized {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// The API's error code and message.
        detail: String,
    },
    /// HTTP 403: the app lacks the role (e.g. `Incident.Read.All`,
    /// `SecurityAlert.Read.All`) or the tenant lacks the product.
    #[error("tenant {tenant}: {endpoint} forbidden (403), app role or license missing: {detail}")]
    Forbidden {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// The API's error code and message.
        detail: String,
    },
    /// Another 4xx: the request itself is wrong (a bug or an API change).
    #[error("tenant {tenant}: {endpoint} answered {status}: {detail}")]
    Api {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The API's error code and message (`{"error":{"code","message"}}`) or the start
        /// of the body.
        detail: String,
    },
    /// 5xx or 408, still failing after the retries.
    #[error(
        "tenant {tenant}: {endpoint} failing with {status} after {attempts} attempts: {detail}"
    )]
    Server {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// HTTP status of the last attempt.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The API's error code and message, or the start of the body.
        detail: String,
    },
    /// Connection refused or reset, DNS failure or timeout, still after the retries.
    #[error("tenant {tenant}: request to {endpoint} failed after {attempts} attempts")]
    Network {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// The transport error (its URL removed).
        #[source]
        source: reqwest::Error,
    },
    /// HTTP 429 more often than the policy allows, or a `Retry-After` too long to wait
    /// out now. The limiter keeps the tenant blocked for `retry_after` regardless.
    #[error(
        "tenant {tenant}: {endpoint} quota exhausted (429), retry after {retry_after:?}: {detail}"
    )]
    QuotaExhausted {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// How long the API asked to wait.
        retry_after: Duration,
        /// The API's message, e.g. "API calls quota exceeded! maximum allowed 45 per
        /// 00:01:00".
        detail: String,
    },
    /// HTTP 206 from Graph security: a federated provider failed and the page is
    /// incomplete; the `Warning` header names the provider. Never passed on as a page.
    #[error("tenant {tenant}: {endpoint} returned a partial result (206): {warning}")]
    PartialContent {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// The `Warning` header(s).
        warning: String,
    },
    /// An HTML page instead of JSON (`text/html` or a body starting with `<`): a gateway,
    /// proxy or load balancer answered, not the API. Transient for 2xx/5xx (retried
    /// first); for other statuses the endpoint is probably misconfigured.
    #[error("tenant {tenant}: {endpoint} answered {status} with an html page: {snippet:?}")]
    Html {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The start of the page.
        snippet: String,
    },
    /// The body is not a usable page: cut short, malformed, or an item without id or
    /// time.
    #[error("tenant {tenant}: bad response body from {endpoint}")]
    Body {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        source: ParseError,
    },
    /// The window cannot be paged to its end without losing items (more items share
    /// one timestamp than `$skip` can reach, an unusable `@odata.nextLink`); nothing is
    /// returned rather than a silently shortened result.
    #[error("tenant {tenant}: cannot page {endpoint} completely: {detail}")]
    Paging {
        /// The tenant's configured name.
        tenant: String,
        /// The API URL, without query.
        endpoint: String,
        /// Why.
        detail: String,
    },
}

impl DefenderError {
    /// Whether polling the same window later may succeed without an operator acting.
    pub fn is_transient(&self) -> bool {
        match self {
            DefenderError::Token { source, .. } => source.is_transient(),
            DefenderError::Server { .. }
            | DefenderError::Network { .. }
            | DefenderError::QuotaExhausted { .. }
            | DefenderError::PartialContent { .. } => true,
            DefenderError::Body { source, .. } => source.is_transient(),
            DefenderError::Html { status, .. } => *status < 300 || *status >= 500 || *status == 408,
            DefenderError::Unauthorized { .. }
            | DefenderError::Forbidden { .. }
            | DefenderError::Api { .. }
            | DefenderError::Paging { .. } => false,
        }
    }

    /// Whether the tenant must be consented again before anything works.
    pub fn needs_consent(&self) -> bool {
        matches!(self, DefenderError::Token { source, .. } if source.needs_consent())
    }

    /// How long the API asked the tenant to wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DefenderError::QuotaExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The tenant's configured name.
    pub fn tenant(&self) -> &str {
        match self {
            DefenderError::Token { tenant, .. }
            | DefenderError::Unauthorized { tenant, .. }
            | DefenderError::Forbidden { tenant, .. }
            | DefenderError::Api { tenant, .. }
            | DefenderError::Server { tenant, .. }
            | DefenderError::Network { tenant, .. }
            | DefenderError::QuotaExhausted { tenant, .. }
            | DefenderError::PartialContent { tenant, .. }
            | DefenderError::Body { tenant, .. }
            | DefenderError::Html { tenant, .. }
            | DefenderError::Paging { tenant, .. } => tenant,
        }
    }

    /// The API URL, without query.
    pub fn endpoint(&self) -> &str {
        match self {
            DefenderError::Token { endpoint, .. }
            | DefenderError::Unauthorized { endpoint, .. }
            | DefenderError::Forbidden { endpoint, .. }
            | DefenderError::Api { endpoint, .. }
            | DefenderError::Server { endpoint, .. }
            | DefenderError::Network { endpoint, .. }
            | DefenderError::QuotaExhausted { endpoint, .. }
            | DefenderError::PartialContent { endpoint, .. }
            | DefenderError::Body { endpoint, .. }
            | DefenderError::Html { endpoint, .. }
            | DefenderError::Paging { endpoint, .. } => endpoint,
        }
    }
}
