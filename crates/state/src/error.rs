//! The one error type of the state store.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Everything that can go wrong opening or using the state store.
///
/// Every variant names the state file (or key file) so an operator reading the message knows
/// which file to look at; none carries a token or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A read-only open found no state file; only the daemon creates one.
    #[error("state file {path} does not exist (has the daemon run yet?)")]
    NotFound {
        /// The state file.
        path: PathBuf,
    },

    /// The state file (or its `-wal`/`-shm` companions, or its `-outbox` segment
    /// directory) could not be created, read or have its permissions set.
    #[error("state file {path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// The file exists but is not an SQLite database at all.
    #[error(
        "state file {path} is not an SQLite database (wrong path in [state], or overwritten?)"
    )]
    NotSqlite {
        /// The state file.
        path: PathBuf,
    },

    /// SQLite found the database image malformed. Restore a backup or move the file aside.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// SQLite's own report.
        source: rusqlite::Error,
    },

    /// The file is an SQLite database, but not one xdr-relay created (its `application_id`
    /// is not ours). xdr-relay refuses to write into another program's database.
    #[error(
        "state file {path} is an SQLite database of another application \
         (application_id {found:#010x}, expected {expected:#010x}); refusing to use it"
    )]
    Foreign {
        /// The state file.
        path: PathBuf,
        /// The `application_id` found in the file header.
        found: i32,
        /// xdr-relay's `application_id`.
        expected: i32,
    },

    /// The schema was written by a newer xdr-relay; this one cannot know what it means.
    #[error(
        "state file {path} has schema version {found}, newer than version {supported} known \
         to this xdr-relay; upgrade xdr-relay or restore the state file that matches it"
    )]
    NewerSchema {
        /// The state file.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },

    /// A read-only open found an older schema; only a read-write open migrates.
    #[error(
        "state file {path} has schema version {found}, older than version {supported}; \
         start the daemon once so it migrates the file"
    )]
    OlderSchema {
        /// The state file.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: i64,
        /// The version this build needs.
        supported: i64,
    },

    /// The state key given does not decrypt the key check value stored when the first key
    /// was used with this file: refresh tokens in it would not decrypt either.
    #[error(
        "wrong state key for {path}: the file's refresh tokens were encrypted with another key \
         (check [state] key_file, or re-onboard the tenants with a new state file)"
    )]
    WrongKey {
        /// The state file.
        path: PathBuf,
    },

    /// A refresh-token operation on a store opened without a state key.
    #[error("state file {path}: storing or reading refresh tokens needs a state key, and none was given")]
    KeyRequired {
        /// The state file.
        path: PathBuf,
    },

    /// A stored refresh token failed authenticated decryption although the key is right:
    /// the row was altered or copied from another tenant.
    #[error(
        "refresh token of tenant {tenant} in {path} fails authentication \
         (tampered with, or copied from another tenant); re-onboard the tenant"
    )]
    TokenUndecryptable {
        /// The tenant's configured name.
        tenant: String,
        /// The state file.
        path: PathBuf,
    },

    /// The state key file is missing, unreadable, or does not hold a 32-byte key.
    #[error("state key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The I/O error, if there was one.
        #[source]
        source: Option<io::Error>,
    },

    /// A write on a store opened with [`StateStore::open_read_only`](crate::StateStore::open_read_only).
    #[error(
        "state file {path} is open read-only; {operation} needs the daemon's read-write store"
    )]
    ReadOnly {
        /// The state file.
        path: PathBuf,
        /// The refused operation.
        operation: &'static str,
    },

    /// Another connection held the database lock for longer than the busy timeout.
    #[error("state file {path}: {operation} timed out waiting for a lock held by another process (is a second xdr-relay using this file?)")]
    Busy {
        /// The state file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// SQLite's report.
        source: rusqlite::Error,
    },

    /// A timestamp outside what 100-ns ticks in an `i64` can hold (about ±29,000 years).
    #[error("time {time} is outside the range the state store can hold")]
    TimeOutOfRange {
        /// The offending time, formatted.
        time: String,
    },

    /// A value read back from the file does not make sense (e.g. an unknown auth state); the
    /// file was edited by hand or by a buggy build.
    #[error("state file {path}: unexpected {what} in table {table}")]
    Invalid {
        /// The state file.
        path: PathBuf,
        /// The table holding it.
        table: &'static str,
        /// What was wrong.
        what: String,
    },

    /// A queued outbox row refers to a segment file that is gone: deleted by hand, or the
    /// state file was restored or copied without its `-outbox` directory.
    #[error(
        "outbox row {seq} of sink {sink}: its payload's segment file {segment} is missing \
         (was the state file copied without its -outbox directory?)"
    )]
    SegmentMissing {
        /// The sink whose row it is.
        sink: String,
        /// The row's sequence number.
        seq: i64,
        /// The missing segment file.
        segment: PathBuf,
    },

    /// A queued outbox row's payload does not read back as written: its crc32 differs, or
    /// the segment file ends before it. The disk or someone altered the file.
    #[error(
        "outbox row {seq} of sink {sink}: payload at offset {offset} of segment file \
         {segment} is corrupt ({what})"
    )]
    PayloadCorrupt {
        /// The sink whose row it is.
        sink: String,
        /// The row's sequence number.
        seq: i64,
        /// The segment file holding the payload.
        segment: PathBuf,
        /// Where the payload starts in it.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },

    /// Creating, writing, syncing or reading an outbox segment file failed.
    #[error("outbox segment file {segment}: {operation} failed: {source}")]
    Segment {
        /// The segment file (or the segment directory).
        segment: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// What the operating system said.
        source: io::Error,
    },

    /// Any other SQLite failure (a constraint such as an empty sink or tenant name, disk
    /// full, an I/O error), with the operation that hit it.
    #[error("state file {path}: {operation} failed: {source}")]
    Sqlite {
        /// The state file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// SQLite's report.
        source: rusqlite::Error,
    },

    /// The transaction that carried this write together with others failed as a whole
    /// (e.g. the disk filled up at commit); nothing of it was stored.
    #[error("state file {path}: the group commit carrying this write failed: {message}")]
    GroupCommit {
        /// The state file.
        path: PathBuf,
        /// The commit's error, with its sources.
        message: String,
        /// Whether that error was transient.
        transient: bool,
        /// Whether that error was a storage failure ([`StateError::is_storage_failure`]).
        fatal: bool,
    },

    /// An earlier write found the storage failing (the disk full, an I/O error writing or
    /// syncing the state file or a segment file); this process writes nothing more, since
    /// what a failed sync left on disk is unknown. What was committed before is kept; a
    /// restart once the disk is fixed carries on from it.
    #[error("state file {path}: no more writes after a storage failure: {cause}")]
    StorageFailed {
        /// The state file.
        path: PathBuf,
        /// The failure that stopped the writes, naming the file it hit.
        cause: String,
    },

    /// A response action was not in the state a change expected (another writer moved
    /// it first, or it does not exist).
    #[error("response action {id} is {state}; nothing changed")]
    ActionConflict {
        /// The journal row.
        id: i64,
        /// Its state, or `missing`.
        state: String,
    },

    /// The writer thread of the async face is gone: the relay is shutting down, or the
    /// thread panicked.
    #[error("state file {path}: the state writer has stopped")]
    WriterStopped {
        /// The state file.
        path: PathBuf,
    },
}

impl StateError {
    /// Whether trying the same operation again later may succeed without anyone acting:
    /// lock contention, a full disk being cleaned up, a passing I/O error. Schema, key and
    /// file-identity problems are permanent.
    ///
    /// A storage failure ([`StateError::is_storage_failure`]) is not transient: a failed
    /// fsync may have dropped the data it was to make durable, so retrying the write and
    /// carrying on as if the retry made up for it could lose what the first write held.
    pub fn is_transient(&self) -> bool {
        match self {
            StateError::Busy { .. } => true,
            StateError::GroupCommit { transient, .. } => *transient,
            StateError::Segment { source, .. } => {
                !is_storage_io(source) && source.kind() == io::ErrorKind::Interrupted
            }
            StateError::Sqlite { source, .. } => {
                matches!(source.sqlite_error_code(), Some(ErrorCode::OutOfMemory))
            }
            _ => false,
        }
    }

    /// Whether the storage under the state failed: the disk (or quota) is full, or writing
    /// or syncing the state file, its WAL or an outbox segment file failed with an I/O
    /// error. The process must stop writing (and polling): it keeps what was committed and
    /// exits, naming the file.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            StateError::StorageFailed { .. } => true,
            StateError::GroupCommit { fatal, .. } => *fatal,
            StateError::Segment { source, .. } | StateError::Io { source, .. } => {
                is_storage_io(source)
            }
            StateError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure)
            ),
            _ => false,
        }
    }

    /// The message followed by those of its sources, `: `-separated.
    pub(crate) fn with_sources(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        message
    }

    /// Sorts a raw SQLite error into the variant an operator can act on.
    pub(crate) fn sqlite(path: &Path, operation: &'static str, source: rusqlite::Error) -> Self {
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StateError::Busy {
                path,
                operation,
                source,
            },
            Some(ErrorCode::DatabaseCorrupt) => StateError::Corrupt { path, source },
            Some(ErrorCode::NotADatabase) => StateError::NotSqlite { path },
            _ => StateError::Sqlite {
                path,
                operation,
                source,
            },
        }
    }
}

/// ENOSPC, EDQUOT or EIO: the disk is full or failing.
fn is_storage_io(e: &io::Error) -> bool {
    // Linux's numbers; the kinds cover the full disk elsewhere, EIO has no kind.
    const EIO: i32 = 5;
    const EDQUOT: i32 = 122;
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(EIO | EDQUOT))
}

/// Shorthand for results of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;
