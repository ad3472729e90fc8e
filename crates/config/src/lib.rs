//! relay-config: the operator's configuration — `relay.toml`, `tenants.d/*.toml` and
//! environment overrides — read into raw serde structs and validated once into a typed
//! [`Config`]. Every problem is reported at once, each naming its file and key.
//!
//! This crate also owns the small vocabulary every other crate shares: [`Secret`],
//! [`Stream`], [`Api`], [`Feed`] and the per-cloud [`Endpoints`].

mod secret;
mod types;

pub use secret::Secret;
pub use types::{
    Api, Audience, Cloud, Endpoints, Feed, Stream, RESOURCE_GRAPH, RESOURCE_THREAT_PROTECTION,
    RESOURCE_WINDOWS_DEFENDER_ATP,
};
