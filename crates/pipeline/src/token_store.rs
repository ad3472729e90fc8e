//! Rotated refresh tokens go to the state store, encrypted, before the token manager uses
//! the access token that came with them.

use std::sync::Arc;

use async_trait::async_trait;
use relay_auth::{RefreshTokenStore, StoreError};
use relay_config::Secret;
use relay_state::StateStore;

/// A [`RefreshTokenStore`] that saves into the [`StateStore`] (encrypted with the state
/// key, committed with `synchronous = FULL`), so `Ok` means the token survives a crash.
#[derive(Debug, Clone)]
pub struct StateTokenStore {
    state: Arc<StateStore>,
}

impl StateTokenStore {
    /// A store writing into `state`, which must have been opened with a state key.
    pub fn new(state: Arc<StateStore>) -> Self {
        StateTokenStore { state }
    }
}

#[async_trait]
impl RefreshTokenStore for StateTokenStore {
    async fn save(&self, tenant: &str, refresh_token: &Secret) -> Result<(), StoreError> {
        let state = Arc::clone(&self.state);
        let name = tenant.to_owned();
        let token = refresh_token.clone();
        // SQLite commits block on fsync: keep them off the async workers.
        match tokio::task::spawn_blocking(move || state.save_refresh_token(&name, &token)).await {
            Ok(result) => result.map_err(StoreError::new),
            Err(join) => Err(StoreError::new(format!(
                "saving the refresh token of tenant {tenant}: the state store task failed: {join}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_state::{StateKey, StoreOptions};

    #[tokio::test]
    async fn saved_token_is_durable_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let key = StateKey::from_bytes([7; 32]);
        let path = dir.path().join("state.db");
        let state = Arc::new(StateStore::open(&path, Some(&key), StoreOptions::default()).unwrap());
        let store = StateTokenStore::new(Arc::clone(&state));
        store.save("contoso", &Secret::new("rt-1")).await.unwrap();
        drop(store);
        drop(state);
        let reopened = StateStore::open(&path, Some(&key), StoreOptions::default()).unwrap();
        assert_eq!(
            reopened
                .load_refresh_token("contoso")
                .unwrap()
                .unwrap()
                .expose(),
            "rt-1"
        );
    }

    #[tokio::test]
    async fn store_without_key_fails_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("s.db"), None, StoreOptions::default()).unwrap(),
        );
        let err = StateTokenStore::new(state)
            .save("contoso", &Secret::new("rt-1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("state key"), "{err}");
        assert!(!err.to_string().contains("rt-1"));
    }
}
