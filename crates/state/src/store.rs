//! [`StateStore`]: the SQLite implementation of the state store.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use relay_config::Secret;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::error::{Result, StateError};
use crate::key::{restrict_permissions, Sealer, StateKey};
use crate::schema::{self, Identity};
use crate::segments::{self, Location, SegmentReader, SegmentWriter};
use crate::ticks::{from_ticks, to_ticks};
use crate::types::{
    AuthState, CommitOutcome, FeedStatus, OutboxDepth, OutboxRow, PollCommit, SinkStatus,
    StatusSnapshot, StoreOptions, StoreStats, TenantStatus, TimedError,
};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The page size of state files created from now on. An outbox row is an event of
/// typically 2–15 KB; with SQLite's default 4 KiB pages each spills into a chain of
/// overflow pages, written to the WAL, checkpointed and read back one 4 KiB page at a
/// time. At 16 KiB such a row sits whole in its leaf page and a commit of 1,000 of them
/// takes a quarter of the page writes. Measured with `cargo bench -p relay-state --bench
/// outbox` (6.4 KB alerts): append about 25 % less CPU, reads 15 % less, acks within the
/// noise (deleting whole cells makes SQLite rebalance leaves, which overflow pages avoid);
/// the same bytes reach the disk. 8 KiB measured between 4 and 16. (Since schema V3 the
/// payloads live in segment files and new rows are small; the page size still serves the
/// inline rows queued before, and costs the small rows nothing.)
const NEW_FILE_PAGE_SIZE: i64 = 16 * 1024;
const KEY_CHECK_NAME: &str = "key_check";
const KEY_CHECK_AAD: &[u8] = b"xdr-relay state key check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"xdr-relay state key check v1";
const TOKEN_AAD_PREFIX: &[u8] = b"xdr-relay refresh token\0";

/// The durable state of one xdr-relay process: checkpoints, seen versions, per-sink
/// outboxes, tenant auth state and encrypted refresh tokens, in one SQLite file, with the
/// outbox payloads in segment files in the `<state file>-outbox` directory beside it
/// (see segments.rs).
///
/// The API is synchronous; the pipeline uses the async, role-shaped face
/// [`State`](crate::State), whose writer thread groups many writes into one transaction.
///
/// `StateStore` is `Send + Sync` and meant to be shared in an `Arc`. It holds two
/// connections, each behind a mutex: one writer, because SQLite serialises writers
/// anyway and a pool of them would only contend for the same lock; and one reader, so
/// sink workers reading their outbox and `status` reads do not queue behind a commit
/// (WAL lets a reader proceed while the writer commits).
///
/// Durability: WAL mode with `synchronous = NORMAL`: a commit is on disk in order but not
/// synced, so a power loss (not a crash of the process, which loses nothing committed)
/// can lose the last commits — always a suffix, since SQLite's WAL recovery stops at the
/// first frame that did not make it. Every such loss is re-done by polling again: a lost
/// checkpoint advance re-reads its window, lost seen rows and outbox rows go with it (the
/// same commit) and are re-created by that re-poll, and a lost ack re-sends its batch (a
/// duplicate, never a gap). Outbox payloads are synced to their segment before the commit
/// that indexes them, so a surviving row always finds its bytes. The one write a re-poll
/// cannot re-create, a rotated refresh token, commits with `synchronous = FULL`
/// ([`StateStore::save_refresh_token`]); that sync also makes every earlier commit durable.
pub struct StateStore {
    path: PathBuf,
    segment_dir: PathBuf,
    writer: Option<Mutex<Writer>>,
    reader: Mutex<Connection>,
    sealer: Option<Sealer>,
    options: StoreOptions,
    counters: Counters,
    /// Set by the first storage failure ([`StateError::is_storage_failure`]); from then on
    /// every write fails with [`StateError::StorageFailed`].
    failure: tokio::sync::watch::Sender<Option<String>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .field("read_only", &self.writer.is_none())
            .field("has_key", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if missing, with mode 0600) the state file at `path` for reading
    /// and writing, migrates its schema, and checks `key` against the file.
    ///
    /// Without a key everything but refresh tokens works. With one, the first open
    /// stores a key check value; later opens with another key fail with
    /// [`StateError::WrongKey`].
    pub fn open(path: &Path, key: Option<&StateKey>, options: StoreOptions) -> Result<Self> {
        let path = path.to_path_buf();
        create_or_check_file(&path)?;

        let mut writer = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_WRITE, &options)?;
        // Refuse a foreign file before anything (even the journal mode) is written to it.
        if schema::identify(&writer, &path)? == Identity::Fresh {
            // Both only settable before the first table exists, and the page size only
            // before auto_vacuum. Existing files keep the page size they were made with.
            writer
                .pragma_update(None, "page_size", NEW_FILE_PAGE_SIZE)
                .map_err(|e| StateError::sqlite(&path, "configuring the connection", e))?;
            // It lets `ack` give the space of a drained backlog back to the filesystem
            // (see `reclaim_space`).
            writer
                .pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(|e| StateError::sqlite(&path, "configuring the connection", e))?;
        }
        configure_writer(&writer, &path)?;
        schema::migrate(&mut writer, &path)?;
        for file in [
            path.clone(),
            companion(&path, "-wal"),
            companion(&path, "-shm"),
        ] {
            match restrict_permissions(&file) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Io { path: file, source }),
                Ok(()) => {}
            }
        }
        let sealer = key.map(StateKey::sealer);
        if let Some(sealer) = &sealer {
            check_key(&writer, &path, sealer, true)?;
        }

        let mut segments = SegmentWriter::open(&path, &writer)?;
        // Segments a previous process left unreferenced (drained, or written by a commit
        // that never happened because it was killed).
        segments.collect(&writer, true);

        let reader = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_ONLY, &options)?;
        tracing::debug!(path = %path.display(), "state store open");
        Ok(StateStore {
            segment_dir: segments::dir_of(&path),
            path,
            writer: Some(Mutex::new(Writer {
                conn: writer,
                segments,
            })),
            reader: Mutex::new(reader),
            sealer,
            options,
            counters: Counters::default(),
            failure: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Opens an existing state file for reading only, e.g. for `xdr-relay status` while
    /// the daemon runs. Never creates, migrates or changes the file; every write returns
    /// [`StateError::ReadOnly`].
    pub fn open_read_only(
        path: &Path,
        key: Option<&StateKey>,
        options: StoreOptions,
    ) -> Result<Self> {
        let path = path.to_path_buf();
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound { path })
            }
            Err(source) => return Err(StateError::Io { path, source }),
            Ok(_) => check_header(&path)?,
        }
        let reader = open_connection(&path, OpenFlags::SQLITE_OPEN_READ_ONLY, &options)?;
        match schema::identify(&reader, &path)? {
            Identity::Ours(version) if version == schema::LATEST => {}
            Identity::Ours(found) => {
                return Err(StateError::OlderSchema {
                    path,
                    found,
                    supported: schema::LATEST,
                })
            }
            Identity::Fresh => {
                return Err(StateError::OlderSchema {
                    path,
                    found: 0,
                    supported: schema::LATEST,
                })
            }
        }
        let sealer = key.map(StateKey::sealer);
        if let Some(sealer) = &sealer {
            check_key(&reader, &path, sealer, false)?;
        }
        Ok(StateStore {
            segment_dir: segments::dir_of(&path),
            path,
            writer: None,
            reader: Mutex::new(reader),
            sealer,
            options,
            counters: Counters::default(),
            failure: tokio::sync::watch::Sender::new(None),
        })
    }

    /// What the store did since it was opened: commits, how many of them were synced, and
    /// how many segment syncs outbox payloads cost.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            durable_commits: c.durable_commits.load(Ordering::Relaxed),
            segment_syncs: c.segment_syncs.load(Ordering::Relaxed),
            grouped_writes: c.grouped_writes.load(Ordering::Relaxed),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both connections, reporting a failure of the final WAL checkpoint instead of
    /// ignoring it as a plain drop does. Dropping without `close` loses nothing committed.
    pub fn close(self) -> Result<()> {
        let path = self.path;
        let reader = self.reader.into_inner();
        reader
            .close()
            .map_err(|(_, e)| StateError::sqlite(&path, "closing", e))?;
        if let Some(writer) = self.writer {
            writer
                .into_inner()
                .conn
                .close()
                .map_err(|(_, e)| StateError::sqlite(&path, "closing", e))?;
        }
        Ok(())
    }

    // ----- polling -------------------------------------------------------------------

    /// THE transaction of a poll: appends `commit.outbox` to each sink's outbox, records
    /// `commit.seen`, advances the checkpoint (never backwards) and prunes seen versions
    /// older than `commit.prune_seen_before`. All of it or none of it is stored; once this
    /// returns `Ok`, all of it survives a crash of the process, and a power loss either
    /// keeps all of it or loses it together with every later commit (see the durability
    /// note on [`StateStore`]). The pipeline hands its commits to the group-commit writer
    /// ([`State`](crate::State)) instead, which runs the same steps for many at once.
    pub fn commit_poll(&self, commit: &PollCommit<'_>) -> Result<CommitOutcome> {
        const OP: &str = "commit_poll";
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let mut writer = self.writer_state(OP)?;
        let Writer { conn, segments } = &mut *writer;
        let staged = self.stage_payloads(segments, std::slice::from_ref(commit))?;
        let now = to_ticks(Utc::now())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        self.record_high_water(&tx, &staged).map_err(sql)?;
        let outcome = self.apply_poll(&tx, commit, &staged.slots_of[0], &staged.locations, now)?;
        tx.commit().map_err(sql)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if staged.rotated {
            segments.collect(conn, true);
        }
        warn_over_limit(commit, &outcome);
        Ok(outcome)
    }

    /// Writes the payloads of `commits` to the active segment in one write and one sync
    /// (a payload passed for several sinks of one commit is written once), before any
    /// transaction refers to them: a crash in between leaves unreferenced bytes, collected
    /// later, never a row without its payload.
    pub(crate) fn stage_payloads(
        &self,
        segments: &mut SegmentWriter,
        commits: &[PollCommit<'_>],
    ) -> Result<Staged> {
        let mut slots: Vec<&[u8]> = Vec::new();
        let mut slots_of = Vec::with_capacity(commits.len());
        for commit in commits {
            let mut by_slice: HashMap<(usize, usize), usize> = HashMap::new();
            let mut slot_of = Vec::with_capacity(commit.outbox.len());
            for (_, payload) in commit.outbox {
                let key = (payload.as_ptr() as usize, payload.len());
                let slot = *by_slice.entry(key).or_insert_with(|| {
                    slots.push(payload);
                    slots.len() - 1
                });
                slot_of.push(slot);
            }
            slots_of.push(slot_of);
        }
        if slots.is_empty() {
            return Ok(Staged {
                locations: Vec::new(),
                slots_of,
                started: None,
                rotated: false,
            });
        }
        let written = segments.append(&slots)?;
        self.counters.segment_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(Staged {
            locations: written.locations,
            slots_of,
            started: written.started,
            rotated: written.rotated,
        })
    }

    /// Remembers the first segment a staged write started, so a restart knows which
    /// segment ids were ever used.
    pub(crate) fn record_high_water(
        &self,
        conn: &Connection,
        staged: &Staged,
    ) -> rusqlite::Result<()> {
        if let Some(started) = staged.started {
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )
            .and_then(|mut stmt| stmt.execute(params![segments::HIGH_WATER_KEY, started]))?;
        }
        Ok(())
    }

    /// The rows of one poll commit, inside the caller's transaction or savepoint; its
    /// payloads are at `locations[slot_of[i]]` for its `i`-th outbox entry.
    pub(crate) fn apply_poll(
        &self,
        conn: &Connection,
        commit: &PollCommit<'_>,
        slot_of: &[usize],
        locations: &[Location],
        now: i64,
    ) -> Result<CommitOutcome> {
        const OP: &str = "commit_poll";
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let new_checkpoint = commit.new_checkpoint.map(to_ticks).transpose()?;
        let prune_before = to_ticks(commit.prune_seen_before)?;

        // Sink ids are looked up inside the transaction and not cached across calls: a
        // sink row created by a transaction that then rolls back must not be remembered.
        let mut appended: Vec<Appended<'_>> = Vec::new();
        if !commit.outbox.is_empty() {
            let mut append = conn
                .prepare_cached(
                    "INSERT INTO outbox
                        (sink_id, tenant, enqueued_ticks, bytes, payload, segment, segment_offset, crc32)
                     VALUES (?1, ?2, ?3, ?4, x'', ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            for ((sink, payload), slot) in commit.outbox.iter().zip(slot_of) {
                let index = match appended.iter().position(|a| a.sink == *sink) {
                    Some(index) => index,
                    None => {
                        let sink_id = ensure_sink(conn, sink).map_err(sql)?;
                        appended.push(Appended {
                            sink,
                            sink_id,
                            rows: 0,
                            bytes: 0,
                        });
                        appended.len() - 1
                    }
                };
                let entry = &mut appended[index];
                let bytes = len_i64(payload.len());
                let at = locations.get(*slot).ok_or_else(|| StateError::Invalid {
                    path: self.path.clone(),
                    table: "outbox",
                    what: "payload without a segment location".into(),
                })?;
                append
                    .execute(params![
                        entry.sink_id,
                        commit.tenant,
                        now,
                        bytes,
                        at.segment,
                        u64_i64(at.offset),
                        i64::from(at.crc)
                    ])
                    .map_err(sql)?;
                entry.rows += 1;
                entry.bytes = entry.bytes.saturating_add(bytes);
            }
        }
        if !commit.seen.is_empty() {
            let mut record = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO seen (tenant, feed, version_ticks, item_id)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for (id, at) in commit.seen {
                record
                    .execute(params![commit.tenant, commit.feed, to_ticks(*at)?, id])
                    .map_err(sql)?;
            }
        }

        let stored: Option<i64> = conn
            .prepare_cached("SELECT checkpoint_ticks FROM feeds WHERE tenant = ?1 AND feed = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![commit.tenant, commit.feed], |row| row.get(0))
                    .optional()
            })
            .map_err(sql)?
            .flatten();
        let checkpoint = match (stored, new_checkpoint) {
            (Some(old), Some(new)) if new < old => {
                tracing::warn!(
                    tenant = commit.tenant,
                    feed = commit.feed,
                    stored = ?from_ticks(old),
                    proposed = ?from_ticks(new),
                    "checkpoint would move backwards; keeping the stored one"
                );
                Some(old)
            }
            (Some(old), Some(new)) if new == old => Some(old),
            (_, Some(new)) => {
                conn.prepare_cached(
                    "INSERT INTO feeds (tenant, feed, checkpoint_ticks) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant, feed) DO UPDATE SET checkpoint_ticks = excluded.checkpoint_ticks",
                )
                .and_then(|mut stmt| stmt.execute(params![commit.tenant, commit.feed, new]))
                .map_err(sql)?;
                Some(new)
            }
            (old, None) => old,
        };

        conn.prepare_cached(
            "DELETE FROM seen WHERE tenant = ?1 AND feed = ?2 AND version_ticks < ?3",
        )
        .and_then(|mut stmt| stmt.execute(params![commit.tenant, commit.feed, prune_before]))
        .map_err(sql)?;

        let mut sinks_over_limit = Vec::new();
        for a in &appended {
            let (rows, bytes) = add_depth(conn, a.sink_id, a.rows, a.bytes).map_err(sql)?;
            if self.options.limit_for(a.sink).reached_by(rows, bytes) {
                sinks_over_limit.push(a.sink.to_owned());
            }
        }
        tracing::debug!(
            tenant = commit.tenant,
            feed = commit.feed,
            appended = commit.outbox.len(),
            seen = commit.seen.len(),
            "poll staged"
        );
        Ok(CommitOutcome {
            checkpoint: checkpoint.map(|t| self.time(t, "feeds")).transpose()?,
            appended: u64::try_from(commit.outbox.len()).unwrap_or(u64::MAX),
            sinks_over_limit,
        })
    }

    /// The committed checkpoint of (tenant, feed), if any poll committed one.
    pub fn checkpoint(&self, tenant: &str, feed: &str) -> Result<Option<DateTime<Utc>>> {
        let ticks: Option<i64> = self
            .reader()
            .query_row(
                "SELECT checkpoint_ticks FROM feeds WHERE tenant = ?1 AND feed = ?2",
                params![tenant, feed],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| StateError::sqlite(&self.path, "reading a checkpoint", e))?
            .flatten();
        ticks.map(|t| self.time(t, "feeds")).transpose()
    }

    /// The versions of (tenant, feed) recorded as delivered to the outboxes whose version
    /// time is at or after `from`: what a poll of the window starting at `from` must skip.
    /// Times come back at 100-ns precision (see [`truncate_to_tick`](crate::truncate_to_tick)).
    pub fn seen_since(
        &self,
        tenant: &str,
        feed: &str,
        from: DateTime<Utc>,
    ) -> Result<HashSet<(String, DateTime<Utc>)>> {
        let from = to_ticks(from)?;
        let sql = |e| StateError::sqlite(&self.path, "reading seen versions", e);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT item_id, version_ticks FROM seen
                 WHERE tenant = ?1 AND feed = ?2 AND version_ticks >= ?3",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![tenant, feed, from], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(sql)?;
        let mut seen = HashSet::new();
        for row in rows {
            let (id, ticks) = row.map_err(sql)?;
            seen.insert((id, self.time(ticks, "seen")?));
        }
        Ok(seen)
    }

    /// Records how a poll of (tenant, feed) ended, for `status`: `Err` carries the error
    /// text (free of secrets). A failure's text is kept after later successes.
    pub fn record_poll(&self, tenant: &str, feed: &str, outcome: Result<(), &str>) -> Result<()> {
        let now = to_ticks(Utc::now())?;
        let conn = self.writer("record_poll")?;
        self.record_poll_in(&conn, tenant, feed, outcome, now)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn record_poll_in(
        &self,
        conn: &Connection,
        tenant: &str,
        feed: &str,
        outcome: Result<(), &str>,
        now: i64,
    ) -> Result<()> {
        const OP: &str = "record_poll";
        let result = match outcome {
            Ok(()) => conn
                .prepare_cached(
                    "INSERT INTO feeds (tenant, feed, last_poll_ticks, last_poll_ok) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (tenant, feed) DO UPDATE SET last_poll_ticks = ?3, last_poll_ok = 1",
                )
                .and_then(|mut stmt| stmt.execute(params![tenant, feed, now])),
            Err(error) => conn
                .prepare_cached(
                    "INSERT INTO feeds (tenant, feed, last_poll_ticks, last_poll_ok, last_error, last_error_ticks)
                     VALUES (?1, ?2, ?3, 0, ?4, ?3)
                     ON CONFLICT (tenant, feed) DO UPDATE SET
                        last_poll_ticks = ?3, last_poll_ok = 0, last_error = ?4, last_error_ticks = ?3",
                )
                .and_then(|mut stmt| stmt.execute(params![tenant, feed, now, error])),
        };
        result
            .map(drop)
            .map_err(|e| StateError::sqlite(&self.path, OP, e))
    }

    /// The end of a poll with nothing (more) to append, in one statement when nothing is
    /// to be pruned: the checkpoint becomes the newer of the stored and `checkpoint`, the
    /// poll is recorded as a success. Returns the stored checkpoint.
    pub(crate) fn advance_in(
        &self,
        conn: &Connection,
        tenant: &str,
        feed: &str,
        checkpoint: DateTime<Utc>,
        prune_before: Option<DateTime<Utc>>,
        now: i64,
    ) -> Result<Option<DateTime<Utc>>> {
        const OP: &str = "advance_checkpoint";
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let proposed = to_ticks(checkpoint)?;
        let prune_before = prune_before.map(to_ticks).transpose()?;
        let stored: Option<i64> = conn
            .prepare_cached(
                "INSERT INTO feeds (tenant, feed, checkpoint_ticks, last_poll_ticks, last_poll_ok)
                 VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (tenant, feed) DO UPDATE SET
                    checkpoint_ticks = max(coalesce(checkpoint_ticks, excluded.checkpoint_ticks),
                                           excluded.checkpoint_ticks),
                    last_poll_ticks = excluded.last_poll_ticks, last_poll_ok = 1
                 RETURNING checkpoint_ticks",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![tenant, feed, proposed, now], |row| row.get(0))
            })
            .map_err(sql)?;
        if stored.is_some_and(|t| t > proposed) {
            tracing::warn!(
                tenant,
                feed,
                stored = ?stored.map(from_ticks),
                proposed = ?checkpoint,
                "checkpoint would move backwards; keeping the stored one"
            );
        }
        if let Some(before) = prune_before {
            conn.prepare_cached(
                "DELETE FROM seen WHERE tenant = ?1 AND feed = ?2 AND version_ticks < ?3",
            )
            .and_then(|mut stmt| stmt.execute(params![tenant, feed, before]))
            .map_err(sql)?;
        }
        stored.map(|t| self.time(t, "feeds")).transpose()
    }

    // ----- outboxes ------------------------------------------------------------------

    /// Up to `max_rows` rows of `sink`'s outbox with `seq > after_seq`, in order, stopping
    /// before the row that would take the payload total over `max_bytes` — except that the
    /// first row is always returned, so one oversized event cannot wedge the sink.
    pub fn read_batch(
        &self,
        sink: &str,
        after_seq: i64,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>> {
        let sql = |e| StateError::sqlite(&self.path, "reading an outbox batch", e);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT o.seq, o.tenant, o.enqueued_ticks, o.bytes, o.payload,
                        o.segment, o.segment_offset, o.crc32
                 FROM outbox o JOIN sinks s ON s.sink_id = o.sink_id
                 WHERE s.name = ?1 AND o.seq > ?2 ORDER BY o.seq LIMIT ?3",
            )
            .map_err(sql)?;
        let mut rows = stmt
            .query(params![sink, after_seq, len_i64(max_rows)])
            .map_err(sql)?;
        let mut batch = Vec::new();
        let mut total: usize = 0;
        let mut segments = SegmentReader::new(&self.segment_dir);
        while let Some(row) = rows.next().map_err(sql)? {
            // The size column is read before the payload so the row that does not fit is
            // never loaded.
            let bytes = usize::try_from(row.get::<_, i64>(3).map_err(sql)?).unwrap_or(usize::MAX);
            if !batch.is_empty() && total.saturating_add(bytes) > max_bytes {
                break;
            }
            total = total.saturating_add(bytes);
            batch.push(self.outbox_row(row, bytes, &mut segments, sink)?);
        }
        Ok(batch)
    }

    /// Exactly the rows `seqs` of `sink`'s outbox that are still there, in `seqs` order:
    /// how a sink worker reads a batch back to send it again after a failure, when its
    /// rows are no longer contiguous (other batches were acknowledged around them).
    pub fn read_rows(&self, sink: &str, seqs: &[i64]) -> Result<Vec<OutboxRow>> {
        let sql = |e| StateError::sqlite(&self.path, "reading outbox rows", e);
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT o.seq, o.tenant, o.enqueued_ticks, o.bytes, o.payload,
                        o.segment, o.segment_offset, o.crc32
                 FROM outbox o JOIN sinks s ON s.sink_id = o.sink_id
                 WHERE s.name = ?1 AND o.seq = ?2",
            )
            .map_err(sql)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut segments = SegmentReader::new(&self.segment_dir);
        for seq in seqs {
            let mut rows = stmt.query(params![sink, seq]).map_err(sql)?;
            if let Some(row) = rows.next().map_err(sql)? {
                let bytes =
                    usize::try_from(row.get::<_, i64>(3).map_err(sql)?).unwrap_or(usize::MAX);
                out.push(self.outbox_row(row, bytes, &mut segments, sink)?);
            }
        }
        Ok(out)
    }

    /// One row of the outbox query of [`read_batch`](Self::read_batch) /
    /// [`read_rows`](Self::read_rows) (`seq, tenant, enqueued_ticks, bytes, payload, segment,
    /// segment_offset, crc32`), its payload read from its segment.
    fn outbox_row(
        &self,
        row: &rusqlite::Row<'_>,
        bytes: usize,
        segments: &mut SegmentReader,
        sink: &str,
    ) -> Result<OutboxRow> {
        let sql = |e| StateError::sqlite(&self.path, "reading an outbox batch", e);
        let seq: i64 = row.get(0).map_err(sql)?;
        let segment: Option<i64> = row.get(5).map_err(sql)?;
        let payload = match segment {
            // Queued before V3: the payload is in the row.
            None => row.get(4).map_err(sql)?,
            Some(segment) => {
                let offset: i64 = row.get(6).map_err(sql)?;
                let crc: i64 = row.get(7).map_err(sql)?;
                let invalid = |what: String| StateError::Invalid {
                    path: self.path.clone(),
                    table: "outbox",
                    what,
                };
                let at = Location {
                    segment,
                    offset: u64::try_from(offset)
                        .map_err(|_| invalid(format!("segment offset {offset} (seq {seq})")))?,
                    crc: u32::try_from(crc)
                        .map_err(|_| invalid(format!("crc32 {crc} (seq {seq})")))?,
                };
                segments.read(at, bytes, sink, seq)?
            }
        };
        Ok(OutboxRow {
            seq,
            tenant: row.get(1).map_err(sql)?,
            enqueued_at: self.time(row.get(2).map_err(sql)?, "outbox")?,
            payload,
        })
    }

    /// Deletes `sink`'s rows with `seq <= up_to_seq` after the sink acknowledged them, and
    /// records the delivery time. Returns the number of rows deleted.
    pub fn ack(&self, sink: &str, up_to_seq: i64) -> Result<u64> {
        self.delete_acked("ack", sink, &Acked::UpTo(up_to_seq))
    }

    /// Deletes exactly the listed rows of `sink`, for sinks that acknowledge out of order
    /// (delivery reports, indexer acks). Unknown or already deleted seqs are ignored.
    /// Returns the number of rows deleted.
    pub fn ack_rows(&self, sink: &str, seqs: &[i64]) -> Result<u64> {
        self.delete_acked("ack_rows", sink, &Acked::Rows(seqs))
    }

    fn delete_acked(&self, op: &'static str, sink: &str, acked: &Acked<'_>) -> Result<u64> {
        let now = to_ticks(Utc::now())?;
        let sql = |e| StateError::sqlite(&self.path, op, e);
        let mut writer = self.writer_state(op)?;
        let Writer { conn, segments } = &mut *writer;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let done = self.apply_ack(&tx, op, sink, acked, now)?;
        tx.commit().map_err(sql)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        if done.rows > 0 {
            segments.collect(conn, false);
        }
        if done.emptied {
            reclaim_space(conn, &self.path);
        }
        Ok(done.rows)
    }

    /// Deletes acknowledged rows inside the caller's transaction or savepoint and takes
    /// them off the sink's depth.
    pub(crate) fn apply_ack(
        &self,
        conn: &Connection,
        op: &'static str,
        sink: &str,
        acked: &Acked<'_>,
        now: i64,
    ) -> Result<AckDone> {
        let sql = |e| StateError::sqlite(&self.path, op, e);
        let Some(sink_id) = sink_id(conn, sink).map_err(sql)? else {
            return Ok(AckDone::default());
        };
        let mut deleted = Deleted::default();
        match acked {
            Acked::UpTo(up_to_seq) => {
                let mut stmt = conn
                    .prepare_cached(
                        "DELETE FROM outbox WHERE sink_id = ?1 AND seq <= ?2 RETURNING bytes",
                    )
                    .map_err(sql)?;
                let mut rows = stmt.query(params![sink_id, up_to_seq]).map_err(sql)?;
                while let Some(row) = rows.next().map_err(sql)? {
                    deleted.add(row.get(0).map_err(sql)?);
                }
            }
            Acked::Rows(seqs) => {
                let mut stmt = conn
                    .prepare_cached(
                        "DELETE FROM outbox WHERE sink_id = ?1 AND seq = ?2 RETURNING bytes",
                    )
                    .map_err(sql)?;
                for seq in *seqs {
                    if let Some(bytes) = stmt
                        .query_row(params![sink_id, seq], |row| row.get(0))
                        .optional()
                        .map_err(sql)?
                    {
                        deleted.add(bytes);
                    }
                }
            }
        }
        let mut emptied = false;
        if deleted.rows > 0 {
            let (rows, _) = conn
                .prepare_cached(
                    "UPDATE sinks SET depth_rows = depth_rows - ?2, depth_bytes = depth_bytes - ?3,
                                      last_delivery_ticks = ?4
                     WHERE sink_id = ?1 RETURNING depth_rows, depth_bytes",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![sink_id, deleted.rows, deleted.bytes, now], depth_of)
                })
                .map_err(sql)?;
            emptied = rows == 0;
        }
        Ok(AckDone {
            rows: u64::try_from(deleted.rows).unwrap_or(u64::MAX),
            emptied,
        })
    }

    /// How much `sink`'s outbox holds; zero for a sink that never had a row.
    pub fn depth(&self, sink: &str) -> Result<OutboxDepth> {
        let sql = |e| StateError::sqlite(&self.path, "reading outbox depth", e);
        let row: Option<(i64, i64, Option<i64>)> = self
            .reader()
            .query_row(
                "SELECT depth_rows, depth_bytes,
                        (SELECT enqueued_ticks FROM outbox o WHERE o.sink_id = s.sink_id ORDER BY seq LIMIT 1)
                 FROM sinks s WHERE name = ?1",
                params![sink],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(sql)?;
        let (rows, bytes, oldest) = row.unwrap_or((0, 0, None));
        self.depth_from(sink, rows, bytes, oldest)
    }

    /// Records a failed delivery attempt of `sink`, for `status`.
    pub fn record_sink_error(&self, sink: &str, error: &str) -> Result<()> {
        let now = to_ticks(Utc::now())?;
        let conn = self.writer("record_sink_error")?;
        self.record_sink_error_in(&conn, sink, error, now)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn record_sink_error_in(
        &self,
        conn: &Connection,
        sink: &str,
        error: &str,
        now: i64,
    ) -> Result<()> {
        conn.prepare_cached(
            "INSERT INTO sinks (name, last_error, last_error_ticks) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET last_error = ?2, last_error_ticks = ?3",
        )
        .and_then(|mut stmt| stmt.execute(params![sink, error, now]))
        .map(drop)
        .map_err(|e| StateError::sqlite(&self.path, "record_sink_error", e))
    }

    // ----- tenants: auth state and refresh tokens --------------------------------------

    /// Records the tenant's auth state, for `status` and for deciding at start-up whether
    /// a tenant needs consent before it is polled.
    pub fn set_auth_state(&self, tenant: &str, state: &AuthState) -> Result<()> {
        let conn = self.writer("set_auth_state")?;
        self.set_auth_state_in(&conn, tenant, state)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn set_auth_state_in(
        &self,
        conn: &Connection,
        tenant: &str,
        state: &AuthState,
    ) -> Result<()> {
        const OP: &str = "set_auth_state";
        let (name, detail, since, next_probe) = match state {
            AuthState::Ok { since } => ("ok", None, since, None),
            AuthState::NeedsConsent {
                code,
                since,
                next_probe,
            } => ("needs_consent", Some(code.as_str()), since, *next_probe),
            AuthState::Failing {
                error,
                since,
                next_probe,
            } => ("failing", Some(error.as_str()), since, *next_probe),
        };
        let since = to_ticks(*since)?;
        let next_probe = next_probe.map(to_ticks).transpose()?;
        conn.prepare_cached(
            "INSERT INTO tenant_auth (tenant, state, detail, since_ticks, next_probe_ticks)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant) DO UPDATE
             SET state = ?2, detail = ?3, since_ticks = ?4, next_probe_ticks = ?5",
        )
        .and_then(|mut stmt| stmt.execute(params![tenant, name, detail, since, next_probe]))
        .map(drop)
        .map_err(|e| StateError::sqlite(&self.path, OP, e))
    }

    /// The tenant's last recorded auth state.
    pub fn auth_state(&self, tenant: &str) -> Result<Option<AuthState>> {
        let row: Option<AuthRow> = self
            .reader()
            .query_row(
                "SELECT state, detail, since_ticks, next_probe_ticks FROM tenant_auth
                 WHERE tenant = ?1",
                params![tenant],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(|e| StateError::sqlite(&self.path, "reading auth state", e))?;
        match row {
            Some(row) => self.auth_from(row),
            None => Ok(None),
        }
    }

    /// Encrypts and stores the tenant's refresh token, replacing the previous one. Durable
    /// when it returns (`synchronous = FULL`): the token manager calls it *before* using
    /// the access token that came with a rotated refresh token.
    pub fn save_refresh_token(&self, tenant: &str, refresh_token: &Secret) -> Result<()> {
        const OP: &str = "save_refresh_token";
        let sealer = self.sealer()?;
        let blob = sealer
            .seal(&token_aad(tenant), refresh_token.expose().as_bytes())
            .ok_or_else(|| StateError::Io {
                path: self.path.clone(),
                source: io::Error::other("no randomness from the operating system for a nonce"),
            })?;
        let now = to_ticks(Utc::now())?;
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let conn = self.writer(OP)?;
        // The one write that must survive a power loss: a rotated refresh token lost with
        // the last commit means a dead tenant until a customer re-consents. This commit
        // syncs the WAL, which also makes every earlier (NORMAL) commit durable.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        let saved = conn.execute(
            "INSERT INTO tenant_auth (tenant, refresh_token, token_saved_ticks) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant) DO UPDATE SET refresh_token = ?2, token_saved_ticks = ?3",
            params![tenant, blob, now],
        );
        let restored = conn.pragma_update(None, "synchronous", "NORMAL");
        saved.map_err(sql)?;
        restored.map_err(sql)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .durable_commits
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(tenant, "refresh token saved");
        Ok(())
    }

    /// The tenant's stored refresh token, decrypted.
    pub fn load_refresh_token(&self, tenant: &str) -> Result<Option<Secret>> {
        let sealer = self.sealer()?;
        let blob: Option<Vec<u8>> = self
            .reader()
            .query_row(
                "SELECT refresh_token FROM tenant_auth WHERE tenant = ?1",
                params![tenant],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| StateError::sqlite(&self.path, "reading a refresh token", e))?
            .flatten();
        let Some(blob) = blob else {
            return Ok(None);
        };
        let undecryptable = || StateError::TokenUndecryptable {
            tenant: tenant.to_owned(),
            path: self.path.clone(),
        };
        let plaintext = sealer
            .open(&token_aad(tenant), &blob)
            .ok_or_else(undecryptable)?;
        let text = std::str::from_utf8(&plaintext).map_err(|_| undecryptable())?;
        Ok(Some(Secret::new(text)))
    }

    /// Removes everything kept about `tenant` except its events still waiting in outboxes
    /// (they are delivered as usual): checkpoints, seen versions, auth state and refresh
    /// token. For offboarding a customer.
    pub fn forget_tenant(&self, tenant: &str) -> Result<()> {
        const OP: &str = "forget_tenant";
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let mut conn = self.writer(OP)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        for table in ["feeds", "seen", "tenant_auth"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE tenant = ?1"),
                params![tenant],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        tracing::info!(tenant, "tenant state forgotten");
        Ok(())
    }

    /// Removes `tenant`'s auth state and refresh token but keeps its checkpoints and seen
    /// versions: for undoing a failed (re-)onboarding without making the next successful
    /// one fetch the tenant's history again.
    pub fn forget_credentials(&self, tenant: &str) -> Result<()> {
        const OP: &str = "forget_credentials";
        let sql = |e| StateError::sqlite(&self.path, OP, e);
        let conn = self.writer(OP)?;
        conn.execute("DELETE FROM tenant_auth WHERE tenant = ?1", params![tenant])
            .map_err(sql)?;
        tracing::info!(tenant, "tenant credentials forgotten");
        Ok(())
    }

    // ----- status ----------------------------------------------------------------------

    /// Everything `xdr-relay status` shows, read in one transaction so the numbers agree.
    pub fn status_snapshot(&self) -> Result<StatusSnapshot> {
        let sql = |e| StateError::sqlite(&self.path, "reading status", e);
        let mut conn = self.reader();
        let tx = conn.transaction().map_err(sql)?;

        let mut feeds = Vec::new();
        {
            let mut stmt = tx
                .prepare(
                    "SELECT tenant, feed, checkpoint_ticks, last_poll_ticks, last_poll_ok,
                            last_error, last_error_ticks
                     FROM feeds ORDER BY tenant, feed",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                feeds.push(FeedStatus {
                    tenant: row.get(0).map_err(sql)?,
                    feed: row.get(1).map_err(sql)?,
                    checkpoint: self.opt_time(row.get(2).map_err(sql)?, "feeds")?,
                    last_poll: self.opt_time(row.get(3).map_err(sql)?, "feeds")?,
                    last_poll_ok: row.get(4).map_err(sql)?,
                    last_error: self.timed_error(
                        row.get(5).map_err(sql)?,
                        row.get(6).map_err(sql)?,
                        "feeds",
                    )?,
                });
            }
        }

        let mut sinks = Vec::new();
        {
            let mut stmt = tx
                .prepare(
                    "SELECT name, depth_rows, depth_bytes,
                            (SELECT enqueued_ticks FROM outbox o WHERE o.sink_id = s.sink_id ORDER BY seq LIMIT 1),
                            last_delivery_ticks, last_error, last_error_ticks
                     FROM sinks s ORDER BY name",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                let sink: String = row.get(0).map_err(sql)?;
                let depth = self.depth_from(
                    &sink,
                    row.get(1).map_err(sql)?,
                    row.get(2).map_err(sql)?,
                    row.get(3).map_err(sql)?,
                )?;
                sinks.push(SinkStatus {
                    depth,
                    last_delivery: self.opt_time(row.get(4).map_err(sql)?, "sinks")?,
                    last_error: self.timed_error(
                        row.get(5).map_err(sql)?,
                        row.get(6).map_err(sql)?,
                        "sinks",
                    )?,
                    sink,
                });
            }
        }

        let mut tenants = Vec::new();
        {
            let mut stmt = tx
                .prepare(
                    "SELECT tenant, state, detail, since_ticks, token_saved_ticks,
                            next_probe_ticks
                     FROM tenant_auth ORDER BY tenant",
                )
                .map_err(sql)?;
            let mut rows = stmt.query([]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                tenants.push(TenantStatus {
                    tenant: row.get(0).map_err(sql)?,
                    auth: self.auth_from((
                        row.get(1).map_err(sql)?,
                        row.get(2).map_err(sql)?,
                        row.get(3).map_err(sql)?,
                        row.get(5).map_err(sql)?,
                    ))?,
                    refresh_token_saved: self.opt_time(row.get(4).map_err(sql)?, "tenant_auth")?,
                });
            }
        }
        tx.commit().map_err(sql)?;
        Ok(StatusSnapshot {
            feeds,
            sinks,
            tenants,
        })
    }

    // ----- helpers ---------------------------------------------------------------------

    fn writer(&self, operation: &'static str) -> Result<MappedMutexGuard<'_, Connection>> {
        self.writer_state(operation)
            .map(|guard| MutexGuard::map(guard, |w| &mut w.conn))
    }

    /// Resolves once a write met a storage failure, with that failure (naming the file it
    /// hit). The daemon then stops: nothing more can be committed, so polling on would
    /// only fetch what it cannot keep.
    pub fn storage_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Stops every later write if `e` is a storage failure, and says so once. A failed
    /// fsync is never retried as if it had succeeded: the kernel may have dropped the
    /// pages it failed to write and report the next fsync as clean.
    pub(crate) fn poison(&self, e: &StateError) {
        if !e.is_storage_failure() {
            return;
        }
        let cause = e.with_sources();
        let first = self.failure.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            *f = Some(cause.clone());
            true
        });
        if first {
            tracing::error!(
                path = %self.path.display(),
                error = %cause,
                "state storage failed; no more writes to it from this process"
            );
        }
    }

    /// The error every write gets after a storage failure.
    pub(crate) fn poisoned(&self) -> Option<StateError> {
        self.failure
            .borrow()
            .as_ref()
            .map(|cause| StateError::StorageFailed {
                path: self.path.clone(),
                cause: cause.clone(),
            })
    }

    fn writer_state(&self, operation: &'static str) -> Result<MutexGuard<'_, Writer>> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        match &self.writer {
            Some(writer) => Ok(writer.lock()),
            None => Err(StateError::ReadOnly {
                path: self.path.clone(),
                operation,
            }),
        }
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock()
    }

    fn sealer(&self) -> Result<&Sealer> {
        self.sealer.as_ref().ok_or_else(|| StateError::KeyRequired {
            path: self.path.clone(),
        })
    }

    fn time(&self, ticks: i64, table: &'static str) -> Result<DateTime<Utc>> {
        from_ticks(ticks).ok_or_else(|| StateError::Invalid {
            path: self.path.clone(),
            table,
            what: format!("time {ticks}"),
        })
    }

    fn opt_time(&self, ticks: Option<i64>, table: &'static str) -> Result<Option<DateTime<Utc>>> {
        ticks.map(|t| self.time(t, table)).transpose()
    }

    fn timed_error(
        &self,
        message: Option<String>,
        ticks: Option<i64>,
        table: &'static str,
    ) -> Result<Option<TimedError>> {
        match (message, ticks) {
            (Some(message), Some(ticks)) => Ok(Some(TimedError {
                at: self.time(ticks, table)?,
                message,
            })),
            _ => Ok(None),
        }
    }

    fn depth_from(
        &self,
        sink: &str,
        rows: i64,
        bytes: i64,
        oldest: Option<i64>,
    ) -> Result<OutboxDepth> {
        let rows = u64::try_from(rows).unwrap_or(0);
        let bytes = u64::try_from(bytes).unwrap_or(0);
        Ok(OutboxDepth {
            rows,
            bytes,
            oldest_enqueued: self.opt_time(oldest, "outbox")?,
            over_limit: self.options.limit_for(sink).reached_by(rows, bytes),
        })
    }

    fn auth_from(&self, (state, detail, since, next_probe): AuthRow) -> Result<Option<AuthState>> {
        let Some(state) = state else {
            return Ok(None);
        };
        let invalid = |what: String| StateError::Invalid {
            path: self.path.clone(),
            table: "tenant_auth",
            what,
        };
        let since = self.time(
            since.ok_or_else(|| invalid("auth state without a time".into()))?,
            "tenant_auth",
        )?;
        let detail = detail.unwrap_or_default();
        let next_probe = self.opt_time(next_probe, "tenant_auth")?;
        Ok(Some(match state.as_str() {
            "ok" => AuthState::Ok { since },
            "needs_consent" => AuthState::NeedsConsent {
                code: detail,
                since,
                next_probe,
            },
            "failing" => AuthState::Failing {
                error: detail,
                since,
                next_probe,
            },
            other => return Err(invalid(format!("auth state {other:?}"))),
        }))
    }
}

/// `state, detail, since_ticks, next_probe_ticks` of a `tenant_auth` row.
type AuthRow = (Option<String>, Option<String>, Option<i64>, Option<i64>);

/// Creates the file with mode 0600 if it is missing (before SQLite creates it with the
/// umask's mode), or checks that an existing one is an SQLite file.
fn create_or_check_file(path: &Path) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => {
            tracing::info!(path = %path.display(), "state file created");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_header(path),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An empty file is a new database; anything else must start with SQLite's magic.
/// Checked by hand because SQLite may accept some non-database files until the first
/// page is read, and a message naming the file beats "file is not a database" later.
fn check_header(path: &Path) -> Result<()> {
    let io_err = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    if file.metadata().map_err(io_err)?.is_dir() {
        return Err(io_err(io::Error::other("is a directory")));
    }
    let mut header = Vec::with_capacity(SQLITE_MAGIC.len());
    file.take(SQLITE_MAGIC.len() as u64)
        .read_to_end(&mut header)
        .map_err(io_err)?;
    if header.is_empty() || header == SQLITE_MAGIC {
        Ok(())
    } else {
        Err(StateError::NotSqlite {
            path: path.to_path_buf(),
        })
    }
}

fn open_connection(path: &Path, mode: OpenFlags, options: &StoreOptions) -> Result<Connection> {
    // NO_MUTEX: each connection sits behind our own mutex, so SQLite's would be redundant.
    let flags = mode | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StateError::sqlite(path, "opening", e))?;
    conn.busy_timeout(options.busy_timeout)
        .map_err(|e| StateError::sqlite(path, "setting the busy timeout", e))?;
    // Statements are few and fixed; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn configure_writer(conn: &Connection, path: &Path) -> Result<()> {
    let sql = |e| StateError::sqlite(path, "configuring the connection", e);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StateError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(format!(
                "cannot switch to WAL journal mode (got {mode}); is the file on a network filesystem?"
            )),
        });
    }
    // NORMAL: in WAL mode a commit is not synced, and a power loss may lose the last
    // commits, always a suffix of them. What they hold is re-created by polling again
    // (see the durability note on `StateStore`); the one write that must not be lost,
    // a rotated refresh token, switches to FULL for its own commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sql)?;
    // A sink outage can grow the WAL to gigabytes during a drain; give the space back
    // after each checkpoint instead of keeping the high-water mark forever.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sql)?;
    Ok(())
}

fn check_key(conn: &Connection, path: &Path, sealer: &Sealer, may_write: bool) -> Result<()> {
    let sql = |e| StateError::sqlite(path, "checking the state key", e);
    let read = || {
        conn.query_row(
            "SELECT value FROM meta WHERE key = ?1",
            params![KEY_CHECK_NAME],
            |row| row.get::<_, Vec<u8>>(0),
        )
        .optional()
        .map_err(sql)
    };
    let stored = match read()? {
        Some(stored) => stored,
        None if may_write => {
            let blob = sealer
                .seal(KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
                .ok_or_else(|| StateError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::other("no randomness from the operating system for a nonce"),
                })?;
            // OR IGNORE + read back: if another process stored its check value first,
            // ours must match that one.
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![KEY_CHECK_NAME, blob],
            )
            .map_err(sql)?;
            match read()? {
                Some(stored) => stored,
                None => return Ok(()),
            }
        }
        // Read-only and no key ever used: no token can exist to be decrypted wrongly.
        None => return Ok(()),
    };
    match sealer.open(KEY_CHECK_AAD, &stored) {
        Some(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
        _ => Err(StateError::WrongKey {
            path: path.to_path_buf(),
        }),
    }
}

/// Free space below which `reclaim_space` leaves the file alone (4 MiB).
const RECLAIM_MIN_FREE_BYTES: i64 = 4 << 20;
/// At most 64 MiB given back per call, bounding the time one `ack` takes; the next ack
/// that empties an outbox goes on.
const RECLAIM_STEP_BYTES: i64 = 64 << 20;

/// Gives the space of a drained backlog back to the filesystem. After a sink outage the
/// outbox may have grown to gigabytes; once delivered, those pages sit free in the file.
///
/// Called only when an ack empties a sink's outbox, and acts only when at least half the
/// file is free. Shrinking moves live pages from the end of the file into free slots, so
/// doing it while a backlog is still draining would copy the not-yet-delivered rows again
/// and again (measured: it made the drain five times slower); once the outbox is empty
/// little is left to move. In steady state free pages are few and reused by appends, so
/// this does nothing. Best effort: the ack is already committed, a failure is logged.
fn reclaim_space(conn: &Connection, path: &Path) {
    let pages = |pragma: &str| conn.query_row(pragma, [], |row| row.get::<_, i64>(0));
    // Files keep the page size they were created with (4 KiB before NEW_FILE_PAGE_SIZE).
    let counts = (
        pages("PRAGMA freelist_count"),
        pages("PRAGMA page_count"),
        pages("PRAGMA page_size"),
    );
    let (free, total, page_size) = match counts {
        (Ok(free), Ok(total), Ok(size)) => (free, total, size.max(512)),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            tracing::debug!(path = %path.display(), %error, "cannot read free page count");
            return;
        }
    };
    if free * page_size < RECLAIM_MIN_FREE_BYTES || free * 2 < total {
        return;
    }
    // Stepped to the end by hand: rusqlite's execute_batch steps a statement only once.
    // A file whose auto_vacuum is off ignores the pragma.
    let vacuum = || -> rusqlite::Result<()> {
        let step = RECLAIM_STEP_BYTES / page_size;
        let mut stmt = conn.prepare_cached(&format!("PRAGMA incremental_vacuum({step})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    };
    match vacuum() {
        Ok(()) => {
            tracing::debug!(path = %path.display(), free_pages = free, "gave drained outbox space back")
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not give free space back to the filesystem")
        }
    }
}

fn ensure_sink(tx: &Connection, sink: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO sinks (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
        .execute(params![sink])?;
    tx.prepare_cached("SELECT sink_id FROM sinks WHERE name = ?1")?
        .query_row(params![sink], |row| row.get(0))
}

fn sink_id(tx: &Connection, sink: &str) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached("SELECT sink_id FROM sinks WHERE name = ?1")?
        .query_row(params![sink], |row| row.get(0))
        .optional()
}

/// The writing half of a read-write store: the writer connection and the active segment,
/// behind one mutex so a segment append and the commit of its rows are never interleaved
/// with another commit or a segment collection.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) segments: SegmentWriter,
}

/// One sink's rows appended by a `commit_poll`, added to its depth once at the end.
struct Appended<'a> {
    sink: &'a str,
    sink_id: i64,
    rows: i64,
    bytes: i64,
}

/// Which rows an acknowledgement covers.
pub(crate) enum Acked<'a> {
    /// Every row up to and including this seq.
    UpTo(i64),
    /// Exactly these rows.
    Rows(&'a [i64]),
}

/// What an ack did.
#[derive(Default)]
pub(crate) struct AckDone {
    pub(crate) rows: u64,
    /// The sink's outbox is empty now.
    pub(crate) emptied: bool,
}

/// Payloads written to a segment ahead of the transaction that indexes them.
pub(crate) struct Staged {
    pub(crate) locations: Vec<Location>,
    /// Per commit, the location index of each outbox entry.
    pub(crate) slots_of: Vec<Vec<usize>>,
    pub(crate) started: Option<i64>,
    pub(crate) rotated: bool,
}

/// Counts of what the store did since it was opened, for tests and benchmarks: an idle
/// poll must cost no sync.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) durable_commits: AtomicU64,
    pub(crate) segment_syncs: AtomicU64,
    pub(crate) grouped_writes: AtomicU64,
}

/// Logs each sink a commit took over its outbox limit.
pub(crate) fn warn_over_limit(commit: &PollCommit<'_>, outcome: &CommitOutcome) {
    for sink in &outcome.sinks_over_limit {
        tracing::warn!(
            tenant = commit.tenant,
            feed = commit.feed,
            sink,
            "sink outbox reached its limit"
        );
    }
}

/// What an ack deleted, subtracted from the sink's depth in the same transaction.
#[derive(Default)]
struct Deleted {
    rows: i64,
    bytes: i64,
}

impl Deleted {
    fn add(&mut self, bytes: i64) {
        self.rows += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Adds to a sink's depth (schema V2 keeps it in code, see schema.rs) and returns the new one.
fn add_depth(tx: &Connection, sink_id: i64, rows: i64, bytes: i64) -> rusqlite::Result<(u64, u64)> {
    tx.prepare_cached(
        "UPDATE sinks SET depth_rows = depth_rows + ?2, depth_bytes = depth_bytes + ?3
         WHERE sink_id = ?1 RETURNING depth_rows, depth_bytes",
    )?
    .query_row(params![sink_id, rows, bytes], depth_of)
}

fn depth_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, u64)> {
    let (rows, bytes): (i64, i64) = (row.get(0)?, row.get(1)?);
    Ok((
        u64::try_from(rows).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
    ))
}

/// The associated data of a tenant's refresh token: a ciphertext copied to another
/// tenant's row fails authentication instead of handing that tenant a foreign token.
fn token_aad(tenant: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(TOKEN_AAD_PREFIX.len() + tenant.len());
    aad.extend_from_slice(TOKEN_AAD_PREFIX);
    aad.extend_from_slice(tenant.as_bytes());
    aad
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn u64_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

mod actions;
mod group;
mod handle;

pub use actions::{ActionKey, ActionOp, ActionRecord, ActionState, NewAction};
pub use group::PollWrite;
pub use handle::{Credentials, Outbox, PollLog, State, StatusReader};

#[cfg(test)]
mod tests;
