//! What can go wrong while getting a token, sorted by what the caller should do about it.

use chrono::{DateTime, Utc};
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The `error` value of an Entra (OAuth 2.0) error body. Decisions are made on this and the
/// AADSTS code, never on `error_description` text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OAuthError {
    /// `invalid_grant`: the refresh token (or other grant) is expired, revoked or unusable.
    InvalidGrant,
    /// `invalid_client`: client authentication failed (wrong/expired secret, bad assertion).
    InvalidClient,
    /// `invalid_request`: malformed request.
    InvalidRequest,
    /// `invalid_scope`: bad scope, or scopes of more than one resource.
    InvalidScope,
    /// `invalid_resource`: the resource is unknown in the tenant.
    InvalidResource,
    /// `unauthorized_client`: the app may not use this grant here (typically not in the tenant).
    UnauthorizedClient,
    /// `interaction_required`: a user must sign in again (MFA, conditional access, consent).
    InteractionRequired,
    /// `consent_required`: consent is missing.
    ConsentRequired,
    /// `unsupported_grant_type`: the endpoint does not accept the grant.
    UnsupportedGrantType,
    /// `temporarily_unavailable`: Entra is overloaded or down; retry later.
    TemporarilyUnavailable,
    /// `server_error`: Entra failed internally; retry later.
    ServerError,
    /// Any other value, kept verbatim.
    Other(String),
}

impl OAuthError {
    /// Parses the wire value.
    pub fn parse(value: &str) -> OAuthError {
        match value {
            "invalid_grant" => OAuthError::InvalidGrant,
            "invalid_client" => OAuthError::InvalidClient,
            "invalid_request" => OAuthError::InvalidRequest,
            "invalid_scope" => OAuthError::InvalidScope,
            "invalid_resource" => OAuthError::InvalidResource,
            "unauthorized_client" => OAuthError::UnauthorizedClient,
            "interaction_required" => OAuthError::InteractionRequired,
            "consent_required" => OAuthError::ConsentRequired,
            "unsupported_grant_type" => OAuthError::UnsupportedGrantType,
            "temporarily_unavailable" => OAuthError::TemporarilyUnavailable,
            "server_error" => OAuthError::ServerError,
            other => OAuthError::Other(other.to_string()),
        }
    }

    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidResource => "invalid_resource",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::InteractionRequired => "interaction_required",
            OAuthError::ConsentRequired => "consent_required",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthError::ServerError => "server_error",
            OAuthError::Other(s) => s,
        }
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed Entra error body: the `error` value, the first AADSTS code and the ids Microsoft
/// support asks for. The free-text description is deliberately not kept: Microsoft says not
/// to act on it, and it can quote request input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraError {
    /// The OAuth `error` value.
    pub error: OAuthError,
    /// The AADSTS code (`error_codes[0]`, else the `AADSTSnnnn` prefix of the description).
    pub code: Option<u32>,
    /// `trace_id`, for a support case.
    pub trace_id: Option<String>,
    /// `correlation_id`, for a support case.
    pub correlation_id: Option<String>,
}

impl fmt::Display for EntraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(code) = self.code {
            write!(f, " AADSTS{code}")?;
        }
        if let Some(id) = &self.trace_id {
            write!(f, " trace_id={id}")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " correlation_id={id}")?;
        }
        Ok(())
    }
}

/// Why the last token request of a tenant failed, without the details that only belong in
/// the error chain. This is what status output and metrics show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The token endpoint did not answer in time.
    Timeout,
    /// Connecting or talking to the token endpoint failed (refused, reset, DNS, TLS).
    Connection,
    /// The token endpoint answered with this HTTP status and no usable error body.
    HttpStatus(u16),
    /// Entra answered with an error body.
    Entra(EntraError),
    /// A success answer that is not a token response (HTML from a proxy, truncated JSON).
    MalformedResponse,
    /// The request could not be built (a bad token endpoint URL).
    InvalidRequest,
    /// The rotated refresh token could not be saved.
    Store,
    /// The configured credential cannot be used (unreadable certificate or key).
    Credential,
    /// The tenant was reconfigured or removed while its refresh was in flight; the result
    /// was discarded.
    Superseded,
    /// The refresh task ended without a result (it panicked).
    Internal,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Timeout => f.write_str("timed out"),
            FailureKind::Connection => f.write_str("connection failed"),
            FailureKind::HttpStatus(s) => write!(f, "http status {s}"),
            FailureKind::Entra(e) => write!(f, "entra error {e}"),
            FailureKind::MalformedResponse => f.write_str("malformed token response"),
            FailureKind::InvalidRequest => f.write_str("invalid token request"),
            FailureKind::Store => f.write_str("refresh token store failed"),
            FailureKind::Credential => f.write_str("unusable credential"),
            FailureKind::Superseded => f.write_str("tenant reconfigured during the request"),
            FailureKind::Internal => f.write_str("refresh task failed"),
        }
    }
}

/// A refresh-token store could not make a rotated refresh token durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(Arc<dyn StdError + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error (or a message).
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError(Arc::from(error.into()))
    }
}

/// A token could not be had. Cloneable because every caller waiting on one refresh gets
/// the same outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The tenant's grant or consent is gone (revoked or expired refresh token, app not
    /// consented in the tenant). Retrying does not help: an administrator must consent again
    /// or re-onboard. Until then the manager answers this without network traffic, except
    /// for one probe at a time on the tenant's [`ProbeBackoff`](crate::ProbeBackoff).
    #[error(
        "tenant {tenant}: consent or grant no longer valid ({error}); an administrator must re-consent or re-onboard the tenant"
    )]
    NeedsConsent {
        /// The tenant's configured name.
        tenant: String,
        /// The Entra error that put the tenant into this state.
        error: EntraError,
        /// When the tenant entered this state.
        since: DateTime<Utc>,
    },
    /// The token endpoint was unreachable, slow, overloaded or answered garbage; retry with
    /// backoff.
    #[error("tenant {tenant}: token request to {url} failed ({kind}); will retry")]
    Transient {
        /// The tenant's configured name.
        tenant: String,
        /// The token endpoint.
        url: String,
        /// What failed.
        kind: FailureKind,
        /// How long the endpoint asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
        /// The transport error, if any.
        #[source]
        source: Option<Arc<dyn StdError + Send + Sync>>,
    },
    /// Entra refused the request for a reason that retrying will not fix (wrong or expired
    /// client secret, bad assertion, unknown resource, bad scope): the configuration must change.
    #[error("tenant {tenant}: token endpoint {url} rejected the request ({kind})")]
    Rejected {
        /// The tenant's configured name.
        tenant: String,
        /// The token endpoint.
        url: String,
        /// What was rejected.
        kind: FailureKind,
    },
    /// Entra issued a new refresh token but the store could not save it, so the new access
    /// token was not used (using it would risk leaving only a dead refresh token on disk).
    #[error(
        "tenant {tenant}: saving the rotated refresh token failed; the new token was not used"
    )]
    Store {
        /// The tenant's configured name.
        tenant: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The configured credential cannot be used (certificate or key unreadable, not RSA,
    /// token endpoint URL unusable).
    #[error("tenant {tenant}: credential unusable: {reason}")]
    Credential {
        /// The tenant's configured name.
        tenant: String,
        /// What is wrong with it (never the secret itself).
        reason: String,
    },
    /// No tenant of this name is registered with the manager.
    #[error("unknown tenant {tenant}")]
    UnknownTenant {
        /// The name asked for.
        tenant: String,
    },
}

impl AuthError {
    /// Whether retrying later (with backoff) may succeed without anyone changing anything.
    /// A store failure counts: the store may recover, and the old refresh token still works.
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Transient { .. } | AuthError::Store { .. })
    }

    /// Whether the tenant needs an administrator's consent or a new refresh token.
    pub fn is_needs_consent(&self) -> bool {
        matches!(self, AuthError::NeedsConsent { .. })
    }

    /// The `Retry-After` the token endpoint sent, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The tenant the error is about.
    pub fn tenant(&self) -> &str {
        match self {
            AuthError::NeedsConsent { tenant, .. }
            | AuthError::Transient { tenant, .. }
            | AuthError::Rejected { tenant, .. }
            | AuthError::Store { tenant, .. }
            | AuthError::Credential { tenant, .. }
            | AuthError::UnknownTenant { tenant } => tenant,
        }
    }

    /// The failure as shown in [`crate::AuthState::Failing`].
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            AuthError::NeedsConsent { error, .. } => FailureKind::Entra(error.clone()),
            AuthError::Transient { kind, .. } | AuthError::Rejected { kind, .. } => kind.clone(),
            AuthError::Store { .. } => FailureKind::Store,
            AuthError::Credential { .. } | AuthError::UnknownTenant { .. } => {
                FailureKind::Credential
            }
        }
    }
}
