//! The file sink: events as JSON lines ([`crate::jsonl`]) appended to
//! `<directory>/<base_name>.jsonl`, for the demo and for operators who ship files onward.
//!
//! * **Durability.** Each batch is written and `fsync`ed (`sync_data`) before `send` returns
//!   `Ok`; creating and renaming files also syncs the directory, so an acknowledged event
//!   survives a power cut.
//! * **Rotation.** When a batch would take the active file past `max_file_bytes`, the file is
//!   first renamed to `<base_name>-<UTC yyyymmddThhmmssZ>-<seq>.jsonl` and a new one begun;
//!   a batch never straddles two files, so a file exceeds the limit only when one batch alone
//!   does. `seq` increases across restarts (it continues from the highest one on disk) and
//!   orders the rotated files even if the clock jumps. Only the newest `max_files` rotated
//!   files are kept.
//! * **Crash recovery.** A crash in the middle of a write can leave a partial last line. That
//!   batch was never acknowledged, so the outbox still holds it and will send it again; on
//!   open the sink therefore truncates the file after its last newline. Complete lines of that
//!   batch stay and arrive twice — the at-least-once duplicates of a crash. A failed write
//!   (disk full) is rolled back to where the batch began, so the retry does not follow a torn
//!   copy of itself.
//! * **Blocking I/O** runs on tokio's blocking pool; formatting happens before, on the caller.
//! * One sink per file: two sinks (or two relays) must not share a directory and base name.

use crate::error::SinkError;
use crate::event::Event;
use crate::jsonl;
use crate::sink::{BatchLimits, Receipt, Sink};
use chrono::{NaiveDateTime, Utc};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{debug, info, warn};

/// Where and how the file sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The sink's configured name, for logs and errors.
    pub name: String,
    /// The directory holding the files; created if missing.
    pub directory: PathBuf,
    /// File names start with this: `<base_name>.jsonl` is written, rotated files are
    /// `<base_name>-<timestamp>-<seq>.jsonl`.
    pub base_name: String,
    /// Rotate before a batch would make the active file larger than this.
    pub max_file_bytes: u64,
    /// How many rotated files to keep; older ones are deleted.
    pub max_files: usize,
}

impl FileSinkConfig {
    /// Default [`base_name`](Self::base_name).
    pub const DEFAULT_BASE_NAME: &'static str = "events";
    /// Default [`max_file_bytes`](Self::max_file_bytes): 100 MiB.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
    /// Default [`max_files`](Self::max_files).
    pub const DEFAULT_MAX_FILES: usize = 10;

    /// A configuration with the defaults for everything but name and directory.
    pub fn new(name: impl Into<String>, directory: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            name: name.into(),
            directory: directory.into(),
            base_name: Self::DEFAULT_BASE_NAME.to_string(),
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }

    /// The sink `[sinks.NAME]` of the relay's validated configuration.
    pub fn from_config(name: &str, config: &relay_config::FileSinkConfig) -> Self {
        let mut c = FileSinkConfig::new(name, config.path.clone());
        c.max_file_bytes = config.max_file_bytes;
        c.max_files = usize::try_from(config.max_files).unwrap_or(usize::MAX);
        c
    }

    /// Checks the configuration without touching the disk; reports every problem at once.
    pub fn validate(&self) -> Result<(), SinkError> {
        let mut problems = Vec::new();
        if self.directory.as_os_str().is_empty() {
            problems.push("directory: must not be empty".to_string());
        }
        let b = &self.base_name;
        if b.is_empty()
            || b.starts_with('.')
            || b.contains(['/', '\\', '\0'])
            || b.chars().any(char::is_control)
        {
            problems.push(format!(
                "base_name: {b:?} must be a plain file name \
                 (no path separators, not starting with '.')"
            ));
        }
        if self.max_file_bytes == 0 {
            problems.push("max_file_bytes: must be at least 1".to_string());
        }
        if self.max_files == 0 {
            problems.push("max_files: must be at least 1".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Config {
                sink: self.name.clone(),
                reason: problems.join("; "),
            })
        }
    }
}

/// Appends events as JSON lines to local files. See the module docs for the guarantees.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    limits: BatchLimits,
    writer: Arc<Mutex<Writer>>,
    /// Reused between batches to avoid reallocating the formatted batch.
    buf: Vec<u8>,
}

impl FileSink {
    /// Validates `config`; the files are opened on the first `healthcheck` or `send`.
    pub fn new(config: FileSinkConfig) -> Result<FileSink, SinkError> {
        config.validate()?;
        const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
        let max_bytes =
            usize::try_from(config.max_file_bytes.min(MAX_BATCH_BYTES)).unwrap_or(usize::MAX);
        Ok(FileSink {
            name: config.name.clone(),
            limits: BatchLimits::new(1000, max_bytes),
            writer: Arc::new(Mutex::new(Writer {
                active: None,
                next_seq: None,
                syncs: 0,
                config,
            })),
            buf: Vec::new(),
        })
    }

    /// The file being written: `<directory>/<base_name>.jsonl`.
    pub fn path(&self) -> PathBuf {
        lock(&self.writer).active_path()
    }

    /// Runs `f` on the writer on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> T + Send + 'static,
    ) -> Result<T, SinkError> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || f(&mut lock(&writer)))
            .await
            .map_err(|e| SinkError::Io {
                sink: self.name.clone(),
                action: "write to",
                path: self.path(),
                source: io::Error::other(format!("file writer task failed: {e}")),
            })
    }

    #[cfg(test)]
    fn syncs(&self) -> u64 {
        lock(&self.writer).syncs
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        self.blocking(|w| w.ensure_open().map(|_| ())).await?
    }

    /// Delivered once this returns: there is no later confirmation to wait for.
    async fn submit(&mut self, batch: &[Event]) -> Result<Receipt, SinkError> {
        self.deliver(batch).await.map(|()| Receipt::Delivered)
    }

    async fn shutdown(&mut self) -> Result<(), SinkError> {
        self.blocking(|w| w.close()).await?
    }
}

impl FileSink {
    /// The batch written, flushed or confirmed: what `submit` reports as delivered.
    async fn deliver(&mut self, batch: &[Event]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for e in batch {
            jsonl::encode_line(e, &mut buf);
        }
        let (result, buf) = self
            .blocking(move |w| {
                let r = w.write_batch(&buf);
                (r, buf)
            })
            .await?;
        // Keep the buffer for the next batch unless one huge batch blew it up.
        if buf.capacity() <= 2 * self.limits.max_bytes {
            self.buf = buf;
        }
        result
    }
}

/// A panic inside a blocking write poisons the lock; the file may then end in a partial
/// line, so the writer forgets its handle and the next open recovers the file.
fn lock(m: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => {
            let mut g = poisoned.into_inner();
            g.active = None;
            m.clear_poison();
            g
        }
    }
}

/// The blocking half: owns the open file.
#[derive(Debug)]
struct Writer {
    config: FileSinkConfig,
    active: Option<Active>,
    /// Sequence number of the next rotated file; `None` until the directory was scanned.
    next_seq: Option<u64>,
    /// Batches made durable, for tests.
    syncs: u64,
}

#[derive(Debug)]
struct Active {
    file: File,
    len: u64,
}

impl Writer {
    fn active_path(&self) -> PathBuf {
        self.config
            .directory
            .join(format!("{}.jsonl", self.config.base_name))
    }

    fn io_error(&self, action: &'static str, path: &Path, source: io::Error) -> SinkError {
        SinkError::Io {
            sink: self.config.name.clone(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Opens (creating and recovering as needed) the active file.
    fn ensure_open(&mut self) -> Result<&mut Active, SinkError> {
        let active = match self.active.take() {
            Some(a) => a,
            None => {
                let dir = self.config.directory.clone();
                fs::create_dir_all(&dir).map_err(|e| self.io_error("create directory", &dir, e))?;
                if self.next_seq.is_none() {
                    let highest = self.rotated_files()?.last().map_or(0, |(seq, _)| *seq);
                    self.next_seq = Some(highest + 1);
                }
                self.open_active()?
            }
        };
        Ok(self.active.insert(active))
    }

    fn open_active(&self) -> Result<Active, SinkError> {
        let path = self.active_path();
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| self.io_error("open", &path, e))?;
        if !existed {
            self.sync_dir()?;
        }
        let len = file
            .metadata()
            .map_err(|e| self.io_error("read metadata of", &path, e))?
            .len();
        let kept = truncate_partial_line(&mut file, len)
            .map_err(|e| self.io_error("recover", &path, e))?;
        if kept < len {
            warn!(
                sink = %self.config.name,
                path = %path.display(),
                dropped_bytes = len - kept,
                "removed a partial last line left by an interrupted write; \
                 its batch will be sent again"
            );
        }
        let len = kept;
        Ok(Active { file, len })
    }

    fn write_batch(&mut self, buf: &[u8]) -> Result<(), SinkError> {
        let max = self.config.max_file_bytes;
        let len = self.ensure_open()?.len;
        if len > 0 && len.saturating_add(buf.len() as u64) > max {
            self.rotate()?;
        }
        let path = self.active_path();
        let active = self.ensure_open()?;
        let before = active.len;
        let result = active
            .file
            .write_all(buf)
            .map_err(|e| ("write to", e))
            .and_then(|()| active.file.sync_data().map_err(|e| ("sync", e)));
        match result {
            Ok(()) => {
                active.len = before + buf.len() as u64;
                self.syncs += 1;
                Ok(())
            }
            Err((action, e)) => {
                // Cut the torn batch off so that its retry does not follow a partial copy.
                // If even that fails, forget the handle: reopening truncates to the last
                // complete line.
                let rolled_back = active
                    .file
                    .set_len(before)
                    .and_then(|()| active.file.sync_data())
                    .is_ok();
                if !rolled_back {
                    self.active = None;
                }
                Err(self.io_error(action, &path, e))
            }
        }
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        // The active file was synced after its last batch; closing it loses nothing.
        self.active = None;
        let from = self.active_path();
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let mut seq = self.next_seq.unwrap_or(1);
        let mut to = self.rotated_path(&stamp.to_string(), seq);
        while to.exists() {
            seq += 1;
            to = self.rotated_path(&stamp.to_string(), seq);
        }
        fs::rename(&from, &to).map_err(|e| self.io_error("rotate", &from, e))?;
        self.next_seq = Some(seq + 1);
        self.sync_dir()?;
        debug!(sink = %self.config.name, file = %to.display(), "rotated");
        self.prune();
        Ok(())
    }

    fn rotated_path(&self, stamp: &str, seq: u64) -> PathBuf {
        self.config
            .directory
            .join(format!("{}-{stamp}-{seq:06}.jsonl", self.config.base_name))
    }

    /// Rotated files of this sink, oldest first.
    fn rotated_files(&self) -> Result<Vec<(u64, PathBuf)>, SinkError> {
        let dir = &self.config.directory;
        let mut files = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| self.io_error("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error("list", dir, e))?;
            let name = entry.file_name();
            if let Some(seq) = name
                .to_str()
                .and_then(|n| rotated_seq(&self.config.base_name, n))
            {
                files.push((seq, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Deletes rotated files beyond `max_files`. Failing to delete is not a delivery failure:
    /// the events are safe, the disk just holds more than configured.
    fn prune(&self) {
        let files = match self.rotated_files() {
            Ok(f) => f,
            Err(error) => {
                warn!(sink = %self.config.name, %error, "cannot list rotated files to prune them");
                return;
            }
        };
        let excess = files.len().saturating_sub(self.config.max_files);
        for (_, path) in files.into_iter().take(excess) {
            let sink = &self.config.name;
            let file = path.display();
            match fs::remove_file(&path) {
                Ok(()) => info!(%sink, %file, "deleted old rotated file"),
                Err(error) => warn!(%sink, %file, %error, "cannot delete old rotated file"),
            }
        }
    }

    /// Makes file creation and renames durable.
    fn sync_dir(&self) -> Result<(), SinkError> {
        let dir = &self.config.directory;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io_error("sync directory", dir, e))
    }

    fn close(&mut self) -> Result<(), SinkError> {
        if let Some(active) = self.active.take() {
            let path = self.active_path();
            active
                .file
                .sync_data()
                .map_err(|e| self.io_error("sync", &path, e))?;
        }
        Ok(())
    }
}

/// Truncates `file` (of `len` bytes) after its last `\n`; returns the new length.
fn truncate_partial_line(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
        file.sync_data()?;
    }
    Ok(end)
}

/// The sequence number of a rotated file of `base` (`<base>-<yyyymmddThhmmssZ>-<seq>.jsonl`).
fn rotated_seq(base: &str, file_name: &str) -> Option<u64> {
    let rest = file_name
        .strip_prefix(base)?
        .strip_prefix('-')?
        .strip_suffix(".jsonl")?;
    let (stamp, seq) = rest.split_once('-')?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

#[cfg(test)]
mod tests;
