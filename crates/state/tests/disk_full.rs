//! A state store on a disk that fills up: the write that hits ENOSPC fails as a storage
//! failure naming the file, every later write fails without touching the disk (even once
//! there is room again: a failed sync is never retried as if it had worked), the failure
//! is announced, and what was committed before is all there after a restart.
//!
//! Needs a small tmpfs: the test mounts one when it may (root, mounts permitted) and skips
//! with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use relay_state::{PollWrite, State, StateError, StateStore, StoreOptions};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipping: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn at(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap()
}

fn page(i: i64) -> PollWrite {
    PollWrite {
        tenant: "contoso".into(),
        feed: "graph_alerts",
        new_checkpoint: Some(at(i)),
        seen: (0..20).map(|k| (format!("a{i}-{k}"), at(i))).collect(),
        // Incompressible-ish and large: the disk fills within a few dozen commits.
        payloads: (0..20)
            .map(|k| format!("{i:08}-{k:04}-").repeat(2_000).into_bytes())
            .collect(),
        sinks: Arc::from(vec!["splunk".to_owned()]),
        prune_seen_before: at(0),
        outcome: Some(Ok(())),
        actions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_every_write_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "4m") else {
        return;
    };
    let path = dir.path().join("state.db");
    let store = Arc::new(StateStore::open(&path, None, StoreOptions::default()).unwrap());
    let mut failed = store.storage_failure();
    let state = State::start(Arc::clone(&store)).unwrap();
    let log = state.poll_log();

    let mut committed = 0i64;
    let error = loop {
        assert!(committed < 1_000, "the 4 MiB disk never filled up");
        match log.commit(page(committed)).await {
            Ok(_) => committed += 1,
            Err(e) => break e,
        }
    };
    assert!(committed > 0, "nothing fitted: {error}");
    assert!(error.is_storage_failure(), "{error:?}");
    assert!(
        !error.is_transient(),
        "a full disk retried as transient: {error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()),
        "the error does not name the file: {text}"
    );
    // Announced, once, for the daemon to stop on.
    let cause = failed
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert!(cause.contains(&dir.path().display().to_string()), "{cause}");

    // Room again: still no write goes through, neither grouped nor direct.
    disk.resize("64m");
    let again = log.commit(page(committed)).await.unwrap_err();
    assert!(
        matches!(again, StateError::StorageFailed { .. }),
        "{again:?}"
    );
    let direct = store
        .set_auth_state("contoso", &relay_state::AuthState::Ok { since: Utc::now() })
        .unwrap_err();
    assert!(
        matches!(direct, StateError::StorageFailed { .. }),
        "{direct:?}"
    );
    drop(log);
    drop(state);
    drop(store);

    // A restart finds every committed page, and nothing of the failed one.
    let store = StateStore::open(&path, None, StoreOptions::default()).unwrap();
    assert_eq!(
        store.checkpoint("contoso", "graph_alerts").unwrap(),
        Some(at(committed - 1))
    );
    let rows = store
        .read_batch("splunk", 0, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(rows.len() as i64, committed * 20);
    for (n, row) in rows.iter().enumerate() {
        let (i, k) = (n as i64 / 20, n % 20);
        assert_eq!(
            row.payload,
            format!("{i:08}-{k:04}-").repeat(2_000).into_bytes(),
            "row {n}"
        );
    }
    // And it writes again.
    let state = State::start(Arc::new(store)).unwrap();
    state.poll_log().commit(page(committed)).await.unwrap();
}
