//! relay-auth: the per-tenant token manager.
//!
//! One [`TokenManager`] serves every customer tenant. It hands a poller a valid access token
//! for a (tenant, audience), getting it from the tenant's Entra token endpoint with one of
//! three credentials — a rotating refresh token, a client secret, or a certificate (signed
//! client assertion) — over the v1 or v2 endpoint. It refreshes ahead of expiry, keeps one
//! request in flight per (tenant, audience), saves every rotated refresh token through a
//! [`RefreshTokenStore`] before using what came with it, and marks a tenant whose grant or
//! consent is gone as [`AuthState::NeedsConsent`] instead of retrying it in a loop, and
//! probes it (and a tenant whose token endpoint is down) on a [`ProbeBackoff`] until tokens
//! are issued again.
//!
//! [`interactive`] holds the one-time flows that onboarding (`xdr-relay onboard`) runs to get
//! a tenant's refresh token or admin consent: authorization code with PKCE, device code,
//! admin consent.
//!
//! Tokens and secrets are [`relay_config::Secret`]s everywhere: nothing this crate formats
//! or logs contains one.

// AuthError is large (tenant, URL, the typed Entra error with its support ids). It is built
// at most once per token request and cloned to the callers waiting on that request; boxing
// it would make every caller's `match` clumsier to save a memcpy on a cold path.
#![allow(clippy::result_large_err)]

mod assertion;
mod entra;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod interactive;
mod manager;
mod store;
mod timing;

pub use error::{AuthError, EntraError, FailureKind, OAuthError, StoreError};
pub use manager::{
    AccessToken, AuthState, Credential, ManagerOptions, ProbeBackoff, RefreshCounts, TenantAuth,
    TokenManager, TokenStatus, TokenVersion,
};
pub use store::{MemoryStore, RefreshTokenStore};
