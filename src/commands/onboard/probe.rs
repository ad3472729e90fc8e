//! Proving a tenant works the way the daemon will use it: tokens from the token manager
//! for every audience its feeds need, then one window of every feed through the API client.

use chrono::{DateTime, Utc};
use relay_auth::{AuthError, Credential, FailureKind, ManagerOptions, TenantAuth, TokenManager};
use relay_config::{Audience, AuthMethod, Feed, HttpConfig, TenantConfig};
use relay_defender::{ClientOptions, DefenderClient, DefenderError, TenantTarget};
use relay_pipeline::{HttpPurpose, PipelineError};
use relay_state::StateStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP client for Entra, built as the daemon builds it (no redirects, `[http]`
/// proxy and `ca_file`).
pub fn token_http(http: &HttpConfig) -> Result<reqwest::Client, PipelineError> {
    relay_pipeline::http_client(http, HttpPurpose::Token)
}

/// The token manager and API client onboarding tests a tenant with. Rotated refresh
/// tokens go to the state store, as in the daemon.
pub struct Probe {
    tokens: TokenManager,
    api: DefenderClient,
}

impl Probe {
    /// A probe sending through clients configured as `[http]` says.
    pub fn new(http: &HttpConfig, state: Arc<StateStore>) -> Result<Probe, PipelineError> {
        let tokens = TokenManager::new(
            token_http(http)?,
            Arc::new(relay_pipeline::StateTokenStore::new(state)),
            ManagerOptions {
                request_timeout: http.request_timeout,
                ..ManagerOptions::default()
            },
        );
        let api_http = relay_pipeline::http_client(http, HttpPurpose::Api)?;
        let api = DefenderClient::new(
            api_http,
            Arc::new(tokens.clone()),
            ClientOptions {
                user_agent: http.user_agent.clone(),
                request_timeout: http.request_timeout,
                ..ClientOptions::default()
            },
        );
        Ok(Probe { tokens, api })
    }

    /// Registers (or re-registers) a tenant's credentials.
    pub fn register(&self, auth: TenantAuth) {
        self.tokens.upsert_tenant(auth);
    }

    /// A token for every audience of `feeds`. A tenant whose consent Entra does not show
    /// yet (it can take a while after admin consent) is asked again every few seconds for
    /// up to `propagation`; `on_wait` hears about each wait.
    pub async fn tokens(
        &self,
        tenant: &str,
        feeds: &[Feed],
        propagation: Duration,
        mut on_wait: impl FnMut(&AuthError),
    ) -> Result<(), AuthError> {
        let audiences: BTreeSet<Audience> = feeds.iter().map(|f| f.audience()).collect();
        let deadline = tokio::time::Instant::now() + propagation;
        for audience in audiences {
            loop {
                match self.tokens.access_token(tenant, audience).await {
                    Ok(_) => break,
                    Err(e) if e.is_needs_consent() && tokio::time::Instant::now() < deadline => {
                        on_wait(&e);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// How many distinct items each feed holds with a last update in `[from, to)`.
    pub async fn count(
        &self,
        target: &TenantTarget,
        feeds: &[Feed],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(Feed, usize)>, DefenderError> {
        let mut out = Vec::new();
        for &feed in feeds {
            let mut pager = self.api.window(target, feed, from, to);
            // Pages may repeat an item at their boundaries; count each once.
            let mut ids = BTreeSet::new();
            while let Some(items) = pager.next_page().await? {
                ids.extend(items.into_iter().map(|i| i.id));
            }
            out.push((feed, ids.len()));
        }
        Ok(out)
    }
}

/// The token manager's view of a configured tenant, as the daemon builds it: a
/// refresh-token tenant starts from the token in the state store.
pub fn tenant_auth(tenant: &TenantConfig, state: &StateStore) -> anyhow::Result<TenantAuth> {
    let credential = match &tenant.auth.method {
        AuthMethod::RefreshToken { client_secret, .. } => {
            let Some(refresh_token) = state.load_refresh_token(&tenant.name)? else {
                anyhow::bail!(
                    "tenant {}: the state store {} holds no refresh token for it",
                    tenant.name,
                    state.path().display()
                );
            };
            Credential::RefreshToken {
                refresh_token,
                client_secret: client_secret.clone(),
            }
        }
        AuthMethod::ClientSecret { client_secret } => Credential::ClientSecret {
            secret: client_secret.clone(),
        },
        AuthMethod::Certificate {
            certificate_pem,
            private_key,
            ..
        } => Credential::Certificate {
            cert_pem: certificate_pem.clone(),
            key_pem: private_key.clone(),
        },
    };
    Ok(TenantAuth {
        name: tenant.name.clone(),
        tenant_id: tenant.tenant_id.clone(),
        endpoints: tenant.endpoints.clone(),
        client_id: tenant.auth.client_id.clone(),
        credential,
        token_version: match tenant.auth.token_version {
            relay_config::TokenVersion::V1 => relay_auth::TokenVersion::V1,
            relay_config::TokenVersion::V2 => relay_auth::TokenVersion::V2,
        },
        // Onboarding asks while consent propagates; it must not wait out a backoff.
        probe: relay_auth::ProbeBackoff::NONE,
    })
}

/// The AADSTS code behind a token failure, if Entra gave one.
pub fn aadsts_code(e: &AuthError) -> Option<u32> {
    match e {
        AuthError::NeedsConsent { error, .. } => error.code,
        AuthError::Transient {
            kind: FailureKind::Entra(error),
            ..
        }
        | AuthError::Rejected {
            kind: FailureKind::Entra(error),
            ..
        } => error.code,
        _ => None,
    }
}

/// "12 incidents and 30 alerts".
pub fn describe_counts(counts: &[(Feed, usize)]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(feed, n)| {
            let plural = feed.stream().as_str();
            let word = if *n == 1 {
                plural.trim_end_matches('s')
            } else {
                plural
            };
            format!("{n} {word}")
        })
        .collect();
    match parts.as_slice() {
        [] => "no feeds".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_a_sentence() {
        assert_eq!(
            describe_counts(&[(Feed::GraphIncidents, 12)]),
            "12 incidents"
        );
        assert_eq!(
            describe_counts(&[(Feed::M365dIncidents, 1), (Feed::MdeAlerts, 0)]),
            "1 incident and 0 alerts"
        );
    }
}
