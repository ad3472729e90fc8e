//! relay-defender: the HTTP client for the Defender incident and alert APIs — M365
//! Defender `/api/incidents`, Defender for Endpoint `/api/alerts`, Graph
//! `/security/incidents` and `/security/alerts_v2`.
//!
//! Its job is to read every item of one feed of one tenant whose last update lies in a
//! time window, completely, and hand the items over as sink-neutral [`Item`]s carrying
//! the original JSON. Around that: bearer tokens from a [`TokenProvider`], per-tenant
//! quotas ([`RateLimiter`]), one admission gate for every tenant's requests in flight
//! ([`Admission`]: adaptive, live pages first, tenants in turn), `Retry-After`, retries with jittered backoff, and typed
//! errors ([`DefenderError`]) that name tenant and endpoint and say whether retrying
//! later may help. A window is either read to its end or fails; it is never silently
//! shortened (see [`WindowPager`] for how deep paging is avoided).
//!
//! ```no_run
//! # async fn demo(client: relay_defender::DefenderClient, tenant: relay_defender::TenantTarget,
//! #   from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>)
//! #   -> Result<(), relay_defender::DefenderError> {
//! let mut pager = client.window(&tenant, relay_config::Feed::GraphAlerts, from, to);
//! while let Some(items) = pager.next_page().await? {
//!     for item in items {
//!         println!("{} {} {}", item.id, item.last_update, item.raw.get().len());
//!     }
//! }
//! # Ok(()) }
//! ```

mod admission;
mod auth_impl;
mod client;
mod error;
mod machine_actions;
pub mod odata_time;
mod pager;
mod parse;
mod ratelimit;
mod retry;
mod token;

pub use admission::{
    Admission, AdmissionLimits, AdmissionPermit, AdmissionStats, Answer, HeldSlot, RequestClass,
};
pub use client::{ClientOptions, DefenderClient, FeedPaging, TenantTarget};
pub use error::DefenderError;
pub use machine_actions::{
    MachineAction, MachineActionError, MachineActionKind, MachineActionRequest,
};
pub use pager::{Item, PagerStats, WindowPager};
pub use parse::{parse_page, ItemFields, Page, PageItem, ParseError};
pub use ratelimit::{
    stated_quota, ApiFamily, Quota, QuotaHeadroom, RateLimiter, RateLimits, ThrottleCounter,
};
pub use retry::{parse_retry_after, RetryPolicy};
pub use token::{AccessToken, BoxError, TokenError, TokenProvider};
