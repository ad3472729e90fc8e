//! One writer per state file: an exclusive advisory lock on `<state file>.lock`.
//!
//! SQLite lets two processes write the same database, so without this two daemons started
//! on one `relay.toml` both poll every tenant and both drain every outbox (each event
//! delivered twice, outbox rows acknowledged under the other's feet). The lock is taken
//! by every command that polls or delivers (`run`, `demo`) before it touches the state;
//! read-only users (`status`) and `onboard` (one refresh-token row, documented as safe
//! while the daemon runs) do not take it.
//!
//! `flock` rather than a pid file: the kernel drops the lock when the holder dies however
//! it dies (SIGKILL, OOM, power loss with the file on a local disk), so a crashed daemon
//! never leaves a stale lock that an operator has to delete. The holder's pid is written
//! into the file only so that the refusal can name it. The file is left in place on exit:
//! deleting it would let a third process lock a new inode while a second still waits on
//! the old one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock: a daemon (or demo) is already using this state.
    #[error(
        "state file {state} is in use by another xdr-relay ({holder}, holding {lock}); \
         stop it first, or give this instance its own [state] path"
    )]
    Held {
        /// The state file the lock guards.
        state: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid as it wrote it, if it did (it writes it right after locking).
        pid: Option<u32>,
        /// `pid N`, or `pid unknown`, for the message.
        holder: String,
    },

    /// The lock file (or the state directory) could not be created, opened or written.
    #[error("state lock {lock}: {source}")]
    Io {
        /// The lock file.
        lock: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// The exclusive lock on a state file; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    #[cfg(unix)]
    _file: nix::fcntl::Flock<File>,
    #[cfg(not(unix))]
    _file: File,
    state: PathBuf,
    lock: PathBuf,
}

impl InstanceLock {
    /// The lock file that guards `state`: `<state>.lock` beside it.
    pub fn path_for(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock for `state` without waiting, creating the state directory and the
    /// lock file when missing, and records this process's pid in it.
    pub fn acquire(state: &Path) -> Result<InstanceLock, LockError> {
        let lock = Self::path_for(state);
        let io_err = |source| LockError::Io {
            lock: lock.clone(),
            source,
        };
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        // Not truncated on open: the holder's pid must still be readable by a refused
        // second process.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_err)?;
        let mut file = match try_lock(file) {
            Ok(locked) => locked,
            Err((mut file, e)) if e.kind() == io::ErrorKind::WouldBlock => {
                let pid = read_pid(&mut file);
                return Err(LockError::Held {
                    state: state.to_path_buf(),
                    lock,
                    pid,
                    holder: pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}")),
                });
            }
            Err((_, e)) => return Err(io_err(e)),
        };
        write_pid(&mut file).map_err(io_err)?;
        Ok(InstanceLock {
            _file: file,
            state: state.to_path_buf(),
            lock,
        })
    }

    /// The state file this lock guards.
    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.lock
    }
}

#[cfg(unix)]
type LockedFile = nix::fcntl::Flock<File>;
#[cfg(not(unix))]
type LockedFile = File;

#[cfg(unix)]
fn try_lock(file: File) -> Result<LockedFile, (File, io::Error)> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(file, errno)| (file, io::Error::from(errno)))
}

// Only unix hosts run the daemon; elsewhere (a developer's machine) there is no lock.
#[cfg(not(unix))]
fn try_lock(file: File) -> Result<LockedFile, (File, io::Error)> {
    Ok(file)
}

fn write_pid(file: &mut LockedFile) -> io::Result<()> {
    let file: &mut File = file;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    file.flush()
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    // A pid is a few digits; a lock file of another shape is not worth reading whole.
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("sub").join("state.db");
        let first = InstanceLock::acquire(&state).unwrap();
        assert_eq!(
            first.lock_path(),
            dir.path().join("sub").join("state.db.lock")
        );
        assert_eq!(first.state_path(), state);
        let recorded = fs::read_to_string(first.lock_path()).unwrap();
        assert_eq!(recorded, format!("{}\n", std::process::id()));

        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let err = InstanceLock::acquire(&state).unwrap_err();
        match &err {
            LockError::Held { pid, lock, .. } => {
                assert_eq!(*pid, Some(std::process::id()));
                assert_eq!(lock, first.lock_path());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&state.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );

        // Released on drop: the next instance gets it and records itself.
        drop(first);
        let again = InstanceLock::acquire(&state).unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_from_a_dead_holder_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        // What a SIGKILLed daemon leaves: the file with its pid, no lock.
        fs::write(InstanceLock::path_for(&state), "4194304\nleftover garbage").unwrap();
        let lock = InstanceLock::acquire(&state).unwrap();
        let recorded = fs::read_to_string(lock.lock_path()).unwrap();
        assert_eq!(recorded, format!("{}\n", std::process::id()));
    }

    #[test]
    fn an_unreadable_pid_is_reported_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let lock_path = InstanceLock::path_for(&state);
        fs::write(&lock_path, "not a pid").unwrap();
        // Hold the lock the way a holder that has not written its pid yet would.
        let held = try_lock(File::open(&lock_path).unwrap())
            .map_err(|(_, e)| e)
            .unwrap();
        let err = InstanceLock::acquire(&state).unwrap_err();
        assert!(matches!(err, LockError::Held { pid: None, .. }), "{err:?}");
        assert!(err.to_string().contains("pid unknown"), "{err}");
        drop(held);
    }

    #[test]
    fn a_lock_file_that_cannot_be_created_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // The state's "directory" is a regular file.
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let err = InstanceLock::acquire(&blocker.join("state.db")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("state.db.lock"), "{err}");
    }
}
