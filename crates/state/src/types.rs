//! The values that go in and out of the store. Nothing here knows SQLite, so a second
//! backend can take the same types.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Everything one poll of one (tenant, feed) produced, committed all-or-nothing by
/// [`StateStore::commit_poll`](crate::StateStore::commit_poll).
#[derive(Debug, Clone, Copy)]
pub struct PollCommit<'a> {
    /// The tenant's configured name.
    pub tenant: &'a str,
    /// The feed's stable name (`relay_config::Feed::as_str`).
    pub feed: &'a str,
    /// Where the next poll starts (before its lookback). `None` leaves the checkpoint as it
    /// is. A value older than the stored one is ignored: checkpoints never move backwards.
    pub new_checkpoint: Option<DateTime<Utc>>,
    /// The versions (item id, version time) whose events this commit puts in the outboxes,
    /// so later polls of the overlap window skip them.
    pub seen: &'a [(&'a str, DateTime<Utc>)],
    /// The events to deliver: one (sink name, payload) per sink the tenant routes to.
    /// Rows keep this order within each sink's outbox.
    pub outbox: &'a [(&'a str, &'a [u8])],
    /// Seen versions of this (tenant, feed) older than this are forgotten: no query from
    /// the new checkpoint minus the lookback can return them again.
    pub prune_seen_before: DateTime<Utc>,
}

/// What [`StateStore::commit_poll`](crate::StateStore::commit_poll) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The checkpoint stored after the commit (the newer of the old and the proposed one).
    pub checkpoint: Option<DateTime<Utc>>,
    /// Outbox rows appended.
    pub appended: u64,
    /// Sinks this commit appended to whose outbox is now at or over its
    /// [`OutboxLimit`]. The rows were still appended (nothing is ever dropped); the caller
    /// pauses polling the tenants routed to these sinks until [`OutboxDepth::over_limit`]
    /// turns false again.
    pub sinks_over_limit: Vec<String>,
}

/// One queued event of one sink's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Position in the outbox: increasing in append order, never reused, even after the
    /// rows before it are acknowledged and deleted.
    pub seq: i64,
    /// The tenant the event came from.
    pub tenant: String,
    /// The payload bytes as appended.
    pub payload: Vec<u8>,
    /// When the row was appended (100-ns precision).
    pub enqueued_at: DateTime<Utc>,
}

/// How much one sink's outbox holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OutboxDepth {
    /// Rows waiting.
    pub rows: u64,
    /// Sum of their payload sizes.
    pub bytes: u64,
    /// When the oldest waiting row was appended: the sink's delivery lag.
    pub oldest_enqueued: Option<DateTime<Utc>>,
    /// At or over the sink's [`OutboxLimit`].
    pub over_limit: bool,
}

/// The size bound of one sink's outbox. When it is reached, rows are still accepted (so
/// a poll in flight commits whole) and the store reports the sink as over its limit;
/// polling of its tenants pauses until the sink drains. Nothing is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxLimit {
    /// Rows at which the outbox counts as full.
    pub max_rows: u64,
    /// Payload bytes at which the outbox counts as full.
    pub max_bytes: u64,
}

impl Default for OutboxLimit {
    /// One million rows or 2 GiB: about a day of a busy MSSP's alerts for one sink, and
    /// an amount of disk an operator notices but survives.
    fn default() -> Self {
        OutboxLimit {
            max_rows: 1_000_000,
            max_bytes: 2 << 30,
        }
    }
}

impl OutboxLimit {
    /// Whether a depth of `rows` rows and `bytes` bytes reaches this limit.
    pub fn reached_by(&self, rows: u64, bytes: u64) -> bool {
        rows >= self.max_rows || bytes >= self.max_bytes
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The outbox bound of sinks not listed in `sink_outbox_limits`.
    pub outbox_limit: OutboxLimit,
    /// Per-sink outbox bounds, by sink name.
    pub sink_outbox_limits: HashMap<String, OutboxLimit>,
    /// How long a statement waits for a lock held by another connection (a concurrent
    /// `xdr-relay status`, a WAL checkpoint) before failing with
    /// [`StateError::Busy`](crate::StateError::Busy).
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            outbox_limit: OutboxLimit::default(),
            sink_outbox_limits: HashMap::new(),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreOptions {
    /// The bound that applies to `sink`.
    pub fn limit_for(&self, sink: &str) -> OutboxLimit {
        self.sink_outbox_limits
            .get(sink)
            .copied()
            .unwrap_or(self.outbox_limit)
    }
}

/// Where a tenant's sign-in stands, as the token manager last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AuthState {
    /// Tokens are being issued.
    Ok {
        /// Since when.
        since: DateTime<Utc>,
    },
    /// The grant or consent was revoked; an administrator must consent again or the tenant
    /// be re-onboarded. The daemon probes the token endpoint meanwhile and resumes by itself.
    NeedsConsent {
        /// The Entra error code (e.g. `AADSTS65001`).
        code: String,
        /// Since when.
        since: DateTime<Utc>,
        /// When the daemon asks the token endpoint again (`None` if not recorded).
        next_probe: Option<DateTime<Utc>>,
    },
    /// Token requests fail for another reason (endpoint down, bad secret).
    Failing {
        /// The last error, already free of secrets.
        error: String,
        /// Since when.
        since: DateTime<Utc>,
        /// When the daemon asks the token endpoint again (`None` if not recorded).
        next_probe: Option<DateTime<Utc>>,
    },
}

/// An error message and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimedError {
    /// When.
    pub at: DateTime<Utc>,
    /// The message.
    pub message: String,
}

/// The state of one (tenant, feed), for `xdr-relay status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedStatus {
    /// The tenant's configured name.
    pub tenant: String,
    /// The feed's name.
    pub feed: String,
    /// The committed checkpoint.
    pub checkpoint: Option<DateTime<Utc>>,
    /// When the last poll ended.
    pub last_poll: Option<DateTime<Utc>>,
    /// Whether it succeeded.
    pub last_poll_ok: Option<bool>,
    /// The most recent failure, kept after later successes so `status` can show it.
    pub last_error: Option<TimedError>,
}

/// The state of one sink, for `xdr-relay status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    /// The sink's configured name.
    pub sink: String,
    /// Its outbox.
    pub depth: OutboxDepth,
    /// When rows were last acknowledged.
    pub last_delivery: Option<DateTime<Utc>>,
    /// The most recent delivery failure.
    pub last_error: Option<TimedError>,
}

/// The sign-in state of one tenant, for `xdr-relay status`. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantStatus {
    /// The tenant's configured name.
    pub tenant: String,
    /// The last recorded auth state.
    pub auth: Option<AuthState>,
    /// When a refresh token was last saved, if one is stored.
    pub refresh_token_saved: Option<DateTime<Utc>>,
}

/// One consistent read of everything `xdr-relay status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusSnapshot {
    /// Per (tenant, feed), sorted.
    pub feeds: Vec<FeedStatus>,
    /// Per sink, sorted by name.
    pub sinks: Vec<SinkStatus>,
    /// Per tenant with auth state or a token, sorted.
    pub tenants: Vec<TenantStatus>,
}

/// Counts of the store's work since it was opened ([`StateStore::stats`](crate::StateStore::stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StoreStats {
    /// Transactions committed (a group commit counts once).
    pub commits: u64,
    /// Commits synced to disk before returning (`synchronous = FULL`): refresh tokens.
    pub durable_commits: u64,
    /// Syncs of outbox segment files (one per commit or group that appended payloads).
    pub segment_syncs: u64,
    /// Writes carried by group commits (many per commit).
    pub grouped_writes: u64,
}
