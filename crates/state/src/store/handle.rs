//! The async face of the store, one handle per role: [`PollLog`] (checkpoints, seen
//! versions and the poll commits), [`Outbox`] (a sink worker's reads and acks),
//! [`Credentials`] (refresh tokens, auth state) and [`StatusReader`]. Writes go to the
//! group-commit writer thread (group.rs); reads run on the blocking pool against the
//! reader connection. Every handle is cheap to clone.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use relay_config::Secret;
use tokio::sync::{mpsc, oneshot};

use super::group::{self, Job, PollWrite};
use super::StateStore;
use crate::error::{Result, StateError};
use crate::types::{AuthState, CommitOutcome, OutboxDepth, OutboxRow, StatusSnapshot, StoreStats};

/// The store with its writer thread running. Dropping the last handle (this and every
/// role handle taken from it) stops the thread once the queued writes are done.
#[derive(Clone)]
pub struct State {
    store: Arc<StateStore>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("path", &self.store.path)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Starts the writer thread of `store`.
    pub fn start(store: Arc<StateStore>) -> Result<State> {
        let jobs = group::spawn(Arc::clone(&store)).map_err(|source| StateError::Io {
            path: store.path.clone(),
            source,
        })?;
        Ok(State { store, jobs })
    }

    /// The synchronous store underneath, for start-up and offline work.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// What the store did since it was opened.
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// Checkpoints, seen versions and poll commits.
    pub fn poll_log(&self) -> PollLog {
        PollLog(self.clone())
    }

    /// A sink's outbox.
    pub fn outbox(&self) -> Outbox {
        Outbox(self.clone())
    }

    /// Refresh tokens and auth state.
    pub fn credentials(&self) -> Credentials {
        Credentials(self.clone())
    }

    /// What `status` shows.
    pub fn status(&self) -> StatusReader {
        StatusReader(self.clone())
    }

    async fn write<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let stopped = || StateError::WriterStopped {
            path: self.store.path.clone(),
        };
        self.jobs.send(job(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs a read (or a rare write that must not wait for a group) on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StateStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| StateError::WriterStopped {
                path: self.store.path.clone(),
            })?
    }
}

/// Checkpoints, seen versions and poll commits of the (tenant, feed)s.
#[derive(Clone, Debug)]
pub struct PollLog(State);

impl PollLog {
    /// The committed checkpoint of (tenant, feed).
    pub async fn checkpoint(&self, tenant: &str, feed: &str) -> Result<Option<DateTime<Utc>>> {
        let (tenant, feed) = (tenant.to_owned(), feed.to_owned());
        self.0.blocking(move |s| s.checkpoint(&tenant, &feed)).await
    }

    /// See [`StateStore::seen_since`].
    pub async fn seen_since(
        &self,
        tenant: &str,
        feed: &str,
        from: DateTime<Utc>,
    ) -> Result<HashSet<(String, DateTime<Utc>)>> {
        let (tenant, feed) = (tenant.to_owned(), feed.to_owned());
        self.0
            .blocking(move |s| s.seen_since(&tenant, &feed, from))
            .await
    }

    /// Commits `write` in the next group commit (see [`StateStore::commit_poll`] for what
    /// one commit does). Returns once that commit is done.
    pub async fn commit(&self, write: PollWrite) -> Result<CommitOutcome> {
        self.0
            .write(|reply| Job::Poll(Box::new(write), reply))
            .await
    }

    /// Ends a poll that has nothing (more) to append: advances the checkpoint of (tenant,
    /// feed) to `checkpoint` (never backwards), records the poll as a success and, with
    /// `prune_before`, forgets seen versions older than it. Grouped with the ends of other
    /// polls (it may wait a moment for them: see the group writer's `IDLE_LINGER`) and
    /// never synced. Returns the checkpoint now stored.
    pub async fn advance(
        &self,
        tenant: &str,
        feed: &'static str,
        checkpoint: DateTime<Utc>,
        prune_before: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>> {
        let tenant = tenant.to_owned();
        self.0
            .write(|reply| Job::Advance {
                tenant,
                feed,
                checkpoint,
                prune_before,
                reply,
            })
            .await
    }

    /// Records how a poll ended without committing anything else (a failed poll).
    pub async fn record_poll(
        &self,
        tenant: &str,
        feed: &'static str,
        error: Option<String>,
    ) -> Result<()> {
        let tenant = tenant.to_owned();
        self.0
            .write(|reply| Job::RecordPoll {
                tenant,
                feed,
                error,
                reply,
            })
            .await
    }
}

/// One sink's view of the outboxes.
#[derive(Clone, Debug)]
pub struct Outbox(State);

impl Outbox {
    /// See [`StateStore::read_batch`].
    pub async fn read_batch(
        &self,
        sink: &str,
        after_seq: i64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>> {
        let sink = sink.to_owned();
        self.0
            .blocking(move |s| s.read_batch(&sink, after_seq, max_rows, max_bytes))
            .await
    }

    /// See [`StateStore::ack`]; grouped with other writes.
    pub async fn ack(&self, sink: &str, up_to_seq: i64) -> Result<u64> {
        let sink = sink.to_owned();
        self.0
            .write(|reply| Job::Ack {
                sink,
                rows: Ok(up_to_seq),
                reply,
            })
            .await
    }

    /// See [`StateStore::ack_rows`]; grouped with other writes.
    pub async fn ack_rows(&self, sink: &str, seqs: Vec<i64>) -> Result<u64> {
        let sink = sink.to_owned();
        self.0
            .write(|reply| Job::Ack {
                sink,
                rows: Err(seqs),
                reply,
            })
            .await
    }

    /// See [`StateStore::depth`].
    pub async fn depth(&self, sink: &str) -> Result<OutboxDepth> {
        let sink = sink.to_owned();
        self.0.blocking(move |s| s.depth(&sink)).await
    }

    /// See [`StateStore::record_sink_error`]; grouped with other writes.
    pub async fn record_error(&self, sink: &str, error: String) -> Result<()> {
        let sink = sink.to_owned();
        self.0
            .write(|reply| Job::SinkError { sink, error, reply })
            .await
    }
}

/// Refresh tokens and the auth state of tenants.
#[derive(Clone, Debug)]
pub struct Credentials(State);

impl Credentials {
    /// See [`StateStore::save_refresh_token`]: durable when it returns. Not grouped: it
    /// commits alone, synced, without waiting for a group.
    pub async fn save_refresh_token(&self, tenant: &str, refresh_token: Secret) -> Result<()> {
        let tenant = tenant.to_owned();
        self.0
            .blocking(move |s| s.save_refresh_token(&tenant, &refresh_token))
            .await
    }

    /// See [`StateStore::load_refresh_token`].
    pub async fn load_refresh_token(&self, tenant: &str) -> Result<Option<Secret>> {
        let tenant = tenant.to_owned();
        self.0
            .blocking(move |s| s.load_refresh_token(&tenant))
            .await
    }

    /// See [`StateStore::set_auth_state`]; grouped with other writes.
    pub async fn set_auth_state(&self, tenant: &str, state: AuthState) -> Result<()> {
        let tenant = tenant.to_owned();
        self.0
            .write(|reply| Job::AuthState {
                tenant,
                state,
                reply,
            })
            .await
    }
}

/// Reads for `status` and the admin endpoint.
#[derive(Clone, Debug)]
pub struct StatusReader(State);

impl StatusReader {
    /// See [`StateStore::status_snapshot`].
    pub async fn snapshot(&self) -> Result<StatusSnapshot> {
        self.0.blocking(|s| s.status_snapshot()).await
    }
}
