//! Outbox payloads in append-only segment files beside the state file.
//!
//! SQLite keeps a small index row per queued event (sink, seq, size, where its bytes are,
//! their crc32); the event itself is written once into a segment file. Compared with a
//! payload inside the row, that skips the WAL copy and the checkpoint copy of every byte,
//! stores an event routed to several sinks once, and turns an ack into the deletion of a
//! few small rows. A whole segment file is deleted once no row refers to it any more.
//!
//! Crash safety rests on ordering: a commit appends its payloads to the active segment and
//! fsyncs it *before* the SQLite transaction that inserts the rows pointing at them. A
//! crash in between leaves bytes no row refers to, never a row without its bytes. Each
//! process starts a new segment at its first commit, so nothing is ever appended after a
//! tail a killed process may have torn; offsets come from the rows, never from parsing a
//! segment, so garbage after the last committed payload is never read.
//!
//! A second process writing the same state file (not a supported set-up, but SQLite does
//! not prevent it) must not have its active segment collected before its rows commit: the
//! writer holds an exclusive `flock` on its active segment, and collection skips files it
//! cannot lock.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Result, StateError};

/// The first bytes of every segment file: tells our files apart from anything else put in
/// the directory, and versions the format.
const MAGIC: &[u8; 8] = b"XDRRSEG1";
const SUFFIX: &str = ".seg";
/// A commit starts a new segment once the active one holds this much. Large enough that
/// rotation and collection are rare, small enough that a drained backlog gives its space
/// back in steps instead of only when the last event of a huge file is acknowledged.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// The directory of a state file's segments: `<state file>-outbox`, beside SQLite's own
/// `-wal` and `-shm` companions.
pub(crate) fn dir_of(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push("-outbox");
    PathBuf::from(name)
}

pub(crate) fn file_of(dir: &Path, segment: i64) -> PathBuf {
    dir.join(format!("{segment:016}{SUFFIX}"))
}

fn id_of(name: &OsStr) -> Option<i64> {
    let digits = name.to_str()?.strip_suffix(SUFFIX)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where one payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: i64,
    pub(crate) offset: u64,
    pub(crate) crc: u32,
}

/// What [`SegmentWriter::append`] did.
pub(crate) struct Written {
    /// Where each payload went, in the order given.
    pub(crate) locations: Vec<Location>,
    /// A full segment was closed first: the caller collects once its rows committed, since
    /// the closed one may already be unreferenced.
    pub(crate) rotated: bool,
    /// The segment this append started, to be recorded (see [`HIGH_WATER_KEY`]).
    pub(crate) started: Option<i64>,
}

/// The `meta` key holding the highest segment number ever started. Numbers are never
/// reused, even after every segment was drained and deleted, so a row restored from an old
/// backup can only find its own segment or none, never another payload under its name.
pub(crate) const HIGH_WATER_KEY: &str = "outbox_segment_high";

/// The writing side, owned by the store's writer connection (same mutex).
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    active: Option<Active>,
    next_id: i64,
    /// Segment files on disk that this process may collect: those found at open and those
    /// it made itself.
    known: BTreeSet<i64>,
    limit: u64,
    buf: Vec<u8>,
    /// The oldest segment referenced at the last collection; an ack runs a collection only
    /// when it changed.
    last_oldest: Option<Option<i64>>,
}

struct Active {
    id: i64,
    path: PathBuf,
    file: Locked,
    len: u64,
}

impl SegmentWriter {
    /// Creates the directory (mode 0700) if needed and lists the segments in it. No
    /// segment is created until the first payload arrives. `conn` is the writer connection
    /// of a migrated store.
    pub(crate) fn open(state: &Path, conn: &Connection) -> Result<Self> {
        let dir = dir_of(state);
        let io_err = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        match create_private_dir(&dir) {
            Ok(()) => {
                // The new directory entry must survive a power loss before any row points
                // into it.
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent).map_err(|source| StateError::Io {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::metadata(&dir).map_err(io_err)?.is_dir() {
                    return Err(io_err(io::Error::other("exists and is not a directory")));
                }
                restrict_dir(&dir).map_err(io_err)?;
            }
            Err(source) => return Err(io_err(source)),
        }
        let mut known = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err)? {
            if let Some(id) = id_of(&entry.map_err(io_err)?.file_name()) {
                known.insert(id);
            }
        }
        let (referenced, high): (Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT (SELECT MAX(segment) FROM outbox),
                        (SELECT value FROM meta WHERE key = ?1)",
                params![HIGH_WATER_KEY],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| StateError::sqlite(state, "listing outbox segments", e))?;
        let newest = known.last().copied().max(referenced).max(high).unwrap_or(0);
        Ok(SegmentWriter {
            dir,
            active: None,
            next_id: newest.saturating_add(1),
            known,
            limit: SEGMENT_BYTES,
            buf: Vec::new(),
            last_oldest: None,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    #[cfg(test)]
    pub(crate) fn active(&self) -> Option<i64> {
        self.active.as_ref().map(|a| a.id)
    }

    /// Appends `payloads` to the active segment (starting a new one first when there is
    /// none or it is full) and makes them durable.
    pub(crate) fn append(&mut self, payloads: &[&[u8]]) -> Result<Written> {
        let mut rotated = false;
        if self.active.as_ref().is_some_and(|a| a.len >= self.limit) {
            self.active = None;
            rotated = true;
        }
        let created = self.active.is_none();
        if created {
            self.active = Some(self.create()?);
        }
        let started = self.active.as_ref().filter(|_| created).map(|a| a.id);
        let Some(active) = self.active.as_mut() else {
            return Err(StateError::Segment {
                segment: self.dir.clone(),
                operation: "opening",
                source: io::Error::other("no active segment"),
            });
        };

        self.buf.clear();
        if active.len == 0 {
            self.buf.extend_from_slice(MAGIC);
        }
        let mut locations = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let offset = active.len + self.buf.len() as u64;
            locations.push(Location {
                segment: active.id,
                offset,
                crc: crc32fast::hash(payload),
            });
            self.buf.extend_from_slice(payload);
        }
        let written = write_and_sync(active.file.file(), &self.buf, active.len);
        let written = written.and_then(|()| if created { sync_dir(&self.dir) } else { Ok(()) });
        if let Err(source) = written {
            // The file's length is unknown after a failed write; never append to it again.
            let segment = active.path.clone();
            self.active = None;
            return Err(StateError::Segment {
                segment,
                operation: "writing",
                source,
            });
        }
        active.len += self.buf.len() as u64;
        // A commit's worth of 1,000 events is a few MB; do not keep the largest one forever.
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::new();
        }
        Ok(Written {
            locations,
            rotated,
            started,
        })
    }

    fn create(&mut self) -> Result<Active> {
        // Another process on the same state file may take ids too; `create_new` makes sure
        // two never share a file.
        for _ in 0..1000 {
            let id = self.next_id;
            self.next_id = self.next_id.saturating_add(1);
            let path = file_of(&self.dir, id);
            let mut options = fs::OpenOptions::new();
            options.read(true).write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(&path) {
                Ok(file) => {
                    let file = Locked::exclusive(file).map_err(|source| StateError::Segment {
                        segment: path.clone(),
                        operation: "locking",
                        source,
                    })?;
                    self.known.insert(id);
                    tracing::debug!(segment = %path.display(), "outbox segment started");
                    return Ok(Active {
                        id,
                        path,
                        file,
                        len: 0,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(StateError::Segment {
                        segment: path,
                        operation: "creating",
                        source,
                    })
                }
            }
        }
        Err(StateError::Segment {
            segment: self.dir.clone(),
            operation: "creating",
            source: io::Error::other("no free segment number"),
        })
    }

    /// Deletes the segment files no outbox row refers to, except the active one. With
    /// `force` false it does so only when the oldest referenced segment changed since the
    /// last time, so an ack costs one index lookup. Best effort: a failure is logged and
    /// the file is tried again at the next collection.
    pub(crate) fn collect(&mut self, conn: &Connection, force: bool) {
        let oldest: rusqlite::Result<Option<i64>> = conn
            .prepare_cached("SELECT MIN(segment) FROM outbox WHERE segment IS NOT NULL")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)));
        let oldest = match oldest {
            Ok(oldest) => oldest,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the oldest outbox segment");
                return;
            }
        };
        // Every outbox is empty: a large active segment holds only delivered events. Close
        // it so its space goes back now rather than at the next open; the next commit
        // starts a new one. Small ones are kept, or a sink that keeps up would make every
        // poll create and delete a file.
        let close_active = oldest.is_none()
            && self
                .active
                .as_ref()
                .is_some_and(|a| a.len >= self.limit / 4);
        if !force && !close_active && self.last_oldest == Some(oldest) {
            return;
        }
        self.last_oldest = Some(oldest);
        if close_active {
            self.active = None;
        }
        let active = self.active.as_ref().map(|a| a.id);
        let candidates: Vec<i64> = self
            .known
            .iter()
            .copied()
            .filter(|id| Some(*id) != active)
            .collect();
        for id in candidates {
            // Below the oldest referenced segment nothing can refer to it.
            let referenced = match oldest {
                None => Ok(false),
                Some(oldest) if id < oldest => Ok(false),
                Some(_) => conn
                    .prepare_cached("SELECT 1 FROM outbox WHERE segment = ?1 LIMIT 1")
                    .and_then(|mut stmt| stmt.query_row(params![id], |_| Ok(())).optional())
                    .map(|found| found.is_some()),
            };
            match referenced {
                Ok(true) => {}
                Ok(false) => self.remove(id),
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot check outbox segment references");
                    return;
                }
            }
        }
    }

    fn remove(&mut self, id: i64) {
        let path = file_of(&self.dir, id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.known.remove(&id);
                return;
            }
            Err(error) => {
                tracing::warn!(segment = %path.display(), %error, "cannot open drained outbox segment");
                return;
            }
        };
        // Held by another process writing the same state file: its rows may not be
        // committed yet.
        let Some(_lock) = Locked::try_exclusive(file) else {
            tracing::debug!(segment = %path.display(), "outbox segment in use by another process");
            return;
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                self.known.remove(&id);
                tracing::debug!(segment = %path.display(), "drained outbox segment deleted");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.known.remove(&id);
            }
            Err(error) => {
                tracing::warn!(segment = %path.display(), %error, "cannot delete drained outbox segment");
            }
        }
    }
}

/// Reads payloads back for one `read_batch`, keeping the files it opened for that call only
/// (a long-lived handle would keep a deleted segment's space allocated).
pub(crate) struct SegmentReader<'a> {
    dir: &'a Path,
    files: HashMap<i64, File>,
}

impl<'a> SegmentReader<'a> {
    pub(crate) fn new(dir: &'a Path) -> Self {
        SegmentReader {
            dir,
            files: HashMap::new(),
        }
    }

    /// The `len` bytes at `at`, checked against their crc. `sink` and `seq` name the row
    /// in errors.
    pub(crate) fn read(
        &mut self,
        at: Location,
        len: usize,
        sink: &str,
        seq: i64,
    ) -> Result<Vec<u8>> {
        let path = || file_of(self.dir, at.segment);
        let file = match self.files.entry(at.segment) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => match File::open(path()) {
                Ok(file) => entry.insert(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StateError::SegmentMissing {
                        sink: sink.to_owned(),
                        seq,
                        segment: path(),
                    })
                }
                Err(source) => {
                    return Err(StateError::Segment {
                        segment: path(),
                        operation: "opening",
                        source,
                    })
                }
            },
        };
        let corrupt = |what: &'static str| StateError::PayloadCorrupt {
            sink: sink.to_owned(),
            seq,
            segment: path(),
            offset: at.offset,
            what,
        };
        let mut payload = vec![0; len];
        match read_exact_at(file, &mut payload, at.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(corrupt("the segment file ends before the payload"))
            }
            Err(source) => {
                return Err(StateError::Segment {
                    segment: path(),
                    operation: "reading",
                    source,
                })
            }
        }
        if crc32fast::hash(&payload) != at.crc {
            return Err(corrupt("crc32 mismatch"));
        }
        Ok(payload)
    }
}

fn write_and_sync(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, at)?;
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = file;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(buf)?;
    }
    file.sync_data()
}

fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(buf)
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn restrict_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let _ = dir;
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    let _ = dir;
    Ok(())
}

/// A file under an exclusive advisory lock (`flock`), released when dropped.
#[cfg(unix)]
struct Locked(nix::fcntl::Flock<File>);

#[cfg(not(unix))]
struct Locked(File);

impl Locked {
    /// Never blocks: a file locked elsewhere is an error (`exclusive`) or `None`.
    fn exclusive(file: File) -> io::Result<Locked> {
        #[cfg(unix)]
        {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map(Locked)
                .map_err(|(_, errno)| io::Error::from(errno))
        }
        #[cfg(not(unix))]
        {
            Ok(Locked(file))
        }
    }

    fn try_exclusive(file: File) -> Option<Locked> {
        Locked::exclusive(file).ok()
    }

    fn file(&self) -> &File {
        &self.0
    }
}
