//! Where the client gets its bearer tokens. The trait lives here, with its consumer;
//! `relay_auth::TokenManager` implements it, tests implement it with minted tokens.

use std::error::Error as StdError;

use async_trait::async_trait;
use relay_config::Audience;

/// An access token for one (tenant, audience): the token manager's own type, so that
/// what `invalidate` gets back is exactly what it handed out.
pub use relay_auth::AccessToken;

/// A boxed error from a token source, kept as the source of a [`TokenError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The tenant's consent or grant is gone; an operator must onboard it again.
    #[error("tenant needs admin consent again")]
    NeedsConsent(#[source] BoxError),
    /// The token endpoint is unreachable, throttling or failing; try later.
    #[error("token endpoint temporarily unavailable")]
    Transient(#[source] BoxError),
    /// The token request was refused for another reason (bad credential, unknown
    /// tenant); an operator must act.
    #[error("token request rejected")]
    Rejected(#[source] BoxError),
}

impl TokenError {
    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Transient(_))
    }

    /// Whether the tenant must be consented again.
    pub fn needs_consent(&self) -> bool {
        matches!(self, TokenError::NeedsConsent(_))
    }
}

/// Hands out access tokens per (tenant, audience). `tenant` is the tenant's configured
/// name. Implementations cache and refresh; the client calls `bearer` before every
/// request and `invalidate` when the API answered 401 to a token.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token for `audience` in `tenant`, valid for a while yet.
    async fn bearer(&self, tenant: &str, audience: Audience) -> Result<AccessToken, TokenError>;

    /// Forget `rejected`: the API refused it, so the next `bearer` must not return it.
    fn invalidate(&self, tenant: &str, audience: Audience, rejected: &AccessToken);
}
