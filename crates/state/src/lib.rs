//! relay-state: xdr-relay's durable state, in one SQLite file plus the outbox payloads in
//! append-only segment files in the `<state file>-outbox` directory beside it.
//!
//! It keeps what must survive a crash or restart so that no incident is lost or
//! repeated: per (tenant, feed) the checkpoint and the versions already handed to the
//! outboxes inside the lookback window; per sink an append-only outbox that the sink
//! worker drains and acknowledges; per tenant the auth state and the refresh token,
//! encrypted with a key kept outside the file. The central operation is
//! [`StateStore::commit_poll`], one transaction that appends a poll's events to every
//! outbox, records their versions as seen and advances the checkpoint: a crash before it
//! re-polls, after it nothing is lost. An event's bytes are written once to a segment and
//! fsynced before that transaction commits the rows (one per routed sink) pointing at them;
//! a segment file is deleted once no row refers to it.
//!
//! The crate knows nothing of HTTP, Defender or sinks: tenants, feeds and sinks are
//! string keys, events are bytes. The API is synchronous and narrow so that a second
//! backend (PostgreSQL, for several instances sharing state) is another implementation
//! of the same methods over the same [`types`].

mod error;
mod key;
mod lock;
mod schema;
mod segments;
mod store;
mod ticks;
pub mod types;

pub use error::{Result, StateError};
pub use key::{StateKey, KEY_LEN};
pub use lock::{InstanceLock, LockError};
pub use store::{
    ActionKey, ActionOp, ActionRecord, ActionState, Credentials, NewAction, Outbox, PollLog,
    PollWrite, State, StateStore, StatusReader,
};
pub use ticks::truncate_to_tick;
pub use types::{
    AuthState, CommitOutcome, FeedStatus, OutboxDepth, OutboxLimit, OutboxRow, PollCommit,
    SinkStatus, StatusSnapshot, StoreOptions, StoreStats, TenantStatus, TimedError,
};
