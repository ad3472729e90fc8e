//! Where rotated refresh tokens go. The trait lives here, with its consumer; the state crate
//! (encrypted SQLite) implements it in the daemon.

use crate::error::StoreError;
use async_trait::async_trait;
use relay_config::Secret;
use std::collections::HashMap;
use std::sync::Mutex;

/// Durable storage for the current refresh token of each tenant.
///
/// Entra hands out a new refresh token with every refresh (defender-api.md §1.5). The
/// manager calls [`save`](Self::save) with it *before* using the access token that came with
/// it, and uses the access token only if `save` returned `Ok`: a crash can then never leave
/// only a dead refresh token on disk.
#[async_trait]
pub trait RefreshTokenStore: Send + Sync {
    /// Saves `refresh_token` as the current one of `tenant` (its configured name). Must be
    /// durable (committed, fsynced) when it returns `Ok`.
    async fn save(&self, tenant: &str, refresh_token: &Secret) -> Result<(), StoreError>;
}

/// A store that keeps refresh tokens in memory only: for the demo, tests, and tenants that use
/// only client credentials (which never rotate anything). Not durable.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tokens: Mutex<HashMap<String, Secret>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last refresh token saved for `tenant`.
    pub fn get(&self, tenant: &str) -> Option<Secret> {
        match self.tokens.lock() {
            Ok(map) => map.get(tenant).cloned(),
            Err(poisoned) => poisoned.into_inner().get(tenant).cloned(),
        }
    }
}

#[async_trait]
impl RefreshTokenStore for MemoryStore {
    async fn save(&self, tenant: &str, refresh_token: &Secret) -> Result<(), StoreError> {
        let mut map = match self.tokens.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(tenant.to_string(), refresh_token.clone());
        Ok(())
    }
}
