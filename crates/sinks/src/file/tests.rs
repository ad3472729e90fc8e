use super::*;
use crate::event::testdata::*;
use crate::AnySink;
use relay_config::Feed;

fn batch(ids: std::ops::Range<usize>) -> Vec<Event> {
    ids.map(|i| {
        let mut e = event(GRAPH_ALERTS, i % 2, Feed::GraphAlerts);
        e.id = format!("alert-{i:04}");
        e
    })
    .collect()
}

fn line_len() -> u64 {
    let mut buf = Vec::new();
    jsonl::encode_line(&batch(0..1)[0], &mut buf);
    buf.len() as u64
}

fn config(dir: &Path) -> FileSinkConfig {
    FileSinkConfig::new("archive", dir)
}

/// Ids of every line in `path`, checking each line is a complete JSON record.
fn ids_in(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{path:?} ends mid-line"
    );
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Rotated files oldest first, then the active file.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter_map(|e| {
            let name = e.file_name().into_string().unwrap();
            rotated_seq("events", &name).map(|s| (s, e.path()))
        })
        .collect();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let active = dir.join("events.jsonl");
    if active.exists() {
        files.push(active);
    }
    files
}

fn expected_ids(r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("alert-{i:04}")).collect()
}

#[tokio::test]
async fn batches_are_appended_in_order_and_synced_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::new(config(dir.path())).unwrap();
    sink.send(&batch(0..3)).await.unwrap();
    sink.send(&[]).await.unwrap();
    sink.send(&batch(3..5)).await.unwrap();
    assert_eq!(sink.syncs(), 2, "one fsync per non-empty batch");
    assert_eq!(sink.path(), dir.path().join("events.jsonl"));
    assert_eq!(ids_in(&sink.path()), expected_ids(0..5));

    // A new sink on the same files (a restart) appends after what is there.
    sink.shutdown().await.unwrap();
    let mut again = FileSink::new(config(dir.path())).unwrap();
    again.send(&batch(5..6)).await.unwrap();
    assert_eq!(ids_in(&again.path()), expected_ids(0..6));
}

#[tokio::test]
async fn rotates_by_size_keeps_max_files_and_loses_no_order() {
    let dir = tempfile::tempdir().unwrap();
    let len = line_len();
    let mut cfg = config(dir.path());
    // Room for three of these (same-sized) lines per file.
    cfg.max_file_bytes = 3 * len + len / 2;
    cfg.max_files = 2;
    let mut sink = FileSink::new(cfg).unwrap();
    for i in 0..10 {
        sink.send(&batch(i..i + 1)).await.unwrap();
    }
    let files = all_files(dir.path());
    // 10 events, 3 per file: rotated [0..3] [3..6] [6..9], active [9]; max_files = 2
    // keeps the two newest rotated files.
    assert_eq!(files.len(), 3, "{files:?}");
    let ids: Vec<String> = files.iter().flat_map(|f| ids_in(f)).collect();
    assert_eq!(ids, expected_ids(3..10));
    for f in &files {
        assert!(fs::metadata(f).unwrap().len() <= 3 * len + len / 2);
    }
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names[0].ends_with("-000002.jsonl"), "{names:?}");
    assert!(names[1].ends_with("-000003.jsonl"), "{names:?}");
    assert_eq!(names[2], "events.jsonl");
    assert!(rotated_seq("events", &names[0]).is_some());
}

#[tokio::test]
async fn a_batch_never_straddles_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let len = line_len();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 4 * len;
    let mut sink = FileSink::new(cfg).unwrap();
    sink.send(&batch(0..3)).await.unwrap();
    sink.send(&batch(3..5)).await.unwrap(); // 5 lines > 4: rotate first
    sink.send(&batch(5..11)).await.unwrap(); // larger than a file: rotate, then write whole
    let files = all_files(dir.path());
    let per_file: Vec<Vec<String>> = files.iter().map(|f| ids_in(f)).collect();
    assert_eq!(
        per_file,
        vec![expected_ids(0..3), expected_ids(3..5), expected_ids(5..11)]
    );
}

#[tokio::test]
async fn rotation_numbers_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("events-20240101T000000Z-000007.jsonl"), "").unwrap();
    // Not ours: another base name and a malformed stamp.
    fs::write(dir.path().join("events-x.jsonl"), "").unwrap();
    fs::write(dir.path().join("events-2024-000099.jsonl"), "").unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_bytes = 1;
    let mut sink = FileSink::new(cfg).unwrap();
    sink.send(&batch(0..1)).await.unwrap();
    sink.send(&batch(1..2)).await.unwrap();
    let rotated: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with("-000008.jsonl"))
        .collect();
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(ids_in(&dir.path().join(&rotated[0])), expected_ids(0..1));
    assert!(dir.path().join("events-x.jsonl").exists());
    assert!(dir.path().join("events-2024-000099.jsonl").exists());
}

#[tokio::test]
async fn a_partial_last_line_from_a_crash_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut before = Vec::new();
    for e in batch(0..2) {
        jsonl::encode_line(&e, &mut before);
    }
    // A crash mid-batch: one more complete line, then half of the next one.
    let mut torn = Vec::new();
    for e in batch(2..4) {
        jsonl::encode_line(&e, &mut torn);
    }
    let cut = before.len() + torn.len() - 100;
    let mut f = File::create(&path).unwrap();
    f.write_all(&before).unwrap();
    f.write_all(&torn[..torn.len() - 100]).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, cut);

    let mut sink = FileSink::new(config(dir.path())).unwrap();
    sink.healthcheck().await.unwrap();
    // The unacknowledged batch 2..4 is sent again by the outbox.
    sink.send(&batch(2..4)).await.unwrap();
    let ids = ids_in(&path);
    // Line 2 was complete before the crash, so it arrives twice (at-least-once); the torn
    // line 3 is gone and every line parses.
    assert_eq!(
        ids,
        [
            "alert-0000",
            "alert-0001",
            "alert-0002",
            "alert-0002",
            "alert-0003"
        ]
    );
}

#[tokio::test]
async fn a_file_that_is_only_a_partial_line_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    // Longer than the 64 KiB scan chunk, without any newline.
    fs::write(&path, vec![b'x'; 70 * 1024]).unwrap();
    let mut sink = FileSink::new(config(dir.path())).unwrap();
    sink.send(&batch(0..1)).await.unwrap();
    assert_eq!(ids_in(&path), expected_ids(0..1));
}

#[test]
fn truncate_finds_the_last_newline_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut content = b"line\n".to_vec();
    content.extend(vec![b'y'; 200 * 1024]);
    fs::write(&path, &content).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    assert_eq!(
        truncate_partial_line(&mut f, content.len() as u64).unwrap(),
        5
    );
    assert_eq!(fs::read(&path).unwrap(), b"line\n");
    // Nothing to do on a clean file or an empty one.
    assert_eq!(truncate_partial_line(&mut f, 5).unwrap(), 5);
    f.set_len(0).unwrap();
    assert_eq!(truncate_partial_line(&mut f, 0).unwrap(), 0);
}

#[tokio::test]
async fn an_unusable_directory_is_a_permanent_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // Tests run as root, so permission bits would not stop us: a path under a regular
    // file fails with ENOTDIR for anyone.
    let file = dir.path().join("not-a-dir");
    fs::write(&file, "").unwrap();
    let target = file.join("out");
    let mut sink = FileSink::new(config(&target)).unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("sink archive: cannot create directory {}", target.display())
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("Not a directory"), "{source}");
    let err = sink.send(&batch(0..1)).await.unwrap_err();
    assert!(err.to_string().contains(&target.display().to_string()));
}

#[test]
fn configuration_problems_are_reported_together_by_key() {
    let mut cfg = FileSinkConfig::new("archive", "");
    cfg.base_name = "../events".into();
    cfg.max_file_bytes = 0;
    cfg.max_files = 0;
    let err = FileSink::new(cfg).unwrap_err();
    assert!(!err.is_transient());
    let msg = err.to_string();
    for key in ["directory:", "base_name:", "max_file_bytes:", "max_files:"] {
        assert!(msg.contains(key), "{key} missing from {msg}");
    }
    assert!(FileSinkConfig::new("a", "/tmp").validate().is_ok());
    for bad in ["", ".hidden", "a/b", "a\\b"] {
        let mut c = FileSinkConfig::new("a", "/tmp");
        c.base_name = bad.into();
        assert!(c.validate().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn batch_limits_never_exceed_a_file() {
    let mut cfg = FileSinkConfig::new("a", "/tmp");
    cfg.max_file_bytes = 10_000;
    let sink = FileSink::new(cfg).unwrap();
    assert_eq!(sink.batch_limits().max_bytes, 10_000);
    let sink = FileSink::new(FileSinkConfig::new("a", "/tmp")).unwrap();
    assert_eq!(sink.batch_limits().max_bytes, 4 * 1024 * 1024);
}

#[tokio::test]
async fn any_sink_dispatches_to_the_file_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = AnySink::from(FileSink::new(config(dir.path())).unwrap());
    assert_eq!(sink.kind(), "file");
    assert_eq!(sink.name(), "archive");
    assert_eq!(sink.batch_limits().max_events, 1000);
    sink.healthcheck().await.unwrap();
    sink.send(&batch(0..2)).await.unwrap();
    sink.shutdown().await.unwrap();
    assert_eq!(ids_in(&dir.path().join("events.jsonl")), expected_ids(0..2));
}

#[test]
fn rotated_names_parse_strictly() {
    assert_eq!(
        rotated_seq("events", "events-20240102T030405Z-000042.jsonl"),
        Some(42)
    );
    assert_eq!(rotated_seq("events", "events.jsonl"), None);
    assert_eq!(
        rotated_seq("events", "events-20240102T030405Z-.jsonl"),
        None
    );
    assert_eq!(
        rotated_seq("events", "events-20241302T030405Z-1.jsonl"),
        None
    );
    assert_eq!(
        rotated_seq("events", "events-20240102T030405Z-+1.jsonl"),
        None
    );
    assert_eq!(
        rotated_seq("events", "other-20240102T030405Z-1.jsonl"),
        None
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_is_a_transient_error_naming_the_file() {
    // /dev/full accepts the open and fails every write with ENOSPC, like a full disk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let mut sink = FileSink::new(config(dir.path())).unwrap();
    let err = sink.send(&batch(0..2)).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("sink archive: cannot write to {}", path.display())
    );
    assert_eq!(sink.syncs(), 0, "a failed batch is not counted as durable");
    // The next attempt reopens and fails the same way: nothing was acknowledged.
    assert!(sink.send(&batch(0..2)).await.unwrap_err().is_transient());
}
