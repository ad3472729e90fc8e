//! The production token source: `relay_auth::TokenManager`.

use async_trait::async_trait;
use relay_auth::{AccessToken, AuthError, TokenManager};
use relay_config::Audience;

use crate::token::{TokenError, TokenProvider};

#[async_trait]
impl TokenProvider for TokenManager {
    async fn bearer(&self, tenant: &str, audience: Audience) -> Result<AccessToken, TokenError> {
        self.access_token(tenant, audience).await.map_err(classify)
    }

    fn invalidate(&self, tenant: &str, audience: Audience, rejected: &AccessToken) {
        TokenManager::invalidate(self, tenant, audience, rejected);
    }
}

fn classify(error: AuthError) -> TokenError {
    if error.is_needs_consent() {
        TokenError::NeedsConsent(Box::new(error))
    } else if error.is_transient() {
        TokenError::Transient(Box::new(error))
    } else {
        TokenError::Rejected(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_keep_their_retry_class() {
        let unknown = classify(AuthError::UnknownTenant { tenant: "x".into() });
        assert!(!unknown.is_transient() && !unknown.needs_consent());
        let transient = classify(AuthError::Transient {
            tenant: "x".into(),
            url: "http://127.0.0.1/x/oauth2/v2.0/token".into(),
            kind: relay_auth::FailureKind::Internal,
            retry_after: None,
            source: None,
        });
        assert!(transient.is_transient());
        let source = std::error::Error::source(&transient).map(|s| s.to_string());
        assert!(source.is_some_and(|s| s.contains("tenant x")));
    }
}
