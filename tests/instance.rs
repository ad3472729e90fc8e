//! One daemon per state file: the real binary started twice on one configuration (issue
//! 10, item 2). The second refuses with exit status 2, naming the state file and the pid of
//! the first; `status` keeps working; a killed holder leaves no stale lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::process::Command;
use std::time::{Duration, Instant};
use util::*;

/// Waits for `child` to exit within `limit`; `None` (after killing it) if it did not.
fn exit_code_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn two_tenants() -> Setup {
    let mut setup = Setup::default();
    setup.sim.tenants = 2;
    setup.sim.seed = 2;
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_exits_2_naming_the_file_and_the_pid() {
    let h = Harness::start(two_tenants()).await;
    let mut first = KillOnDrop(h.spawn_relay(0));
    let pid = first.0.id();
    // Polling and delivering: the first daemon is really the one working.
    assert!(
        wait_for(Duration::from_secs(60), || !h.delivered().is_empty()).await,
        "the first daemon delivered nothing:\n{}",
        h.log(0)
    );

    // The same relay.toml (each gets its own admin port, as in the report: only the state
    // is shared).
    let mut second = h.spawn_relay(1);
    let code = exit_code_within(&mut second, Duration::from_secs(20));
    let log = h.log(1);
    assert_eq!(
        code,
        Some(2),
        "the second daemon kept running or failed otherwise:\n{log}"
    );
    let state = h.path("state.db");
    assert!(
        log.contains(&format!(
            "state file {} is in use by another xdr-relay (pid {pid}, holding {}.lock)",
            state.display(),
            state.display()
        )),
        "{log}"
    );
    assert!(
        !log.contains("xdr-relay running"),
        "the second daemon started before refusing:\n{log}"
    );
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first daemon stopped:\n{}",
        h.log(0)
    );

    // `status` reads the state while the daemon holds the lock.
    let out = h.run_cmd(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant = &h.sim.tenants()[0].name;
    assert!(stdout.contains(tenant.as_str()), "{stdout}");

    // A holder killed outright leaves the file but not the lock: the next daemon starts.
    signal(&first.0, "KILL");
    first.0.wait().unwrap();
    assert!(h.path("state.db.lock").exists());
    let third = KillOnDrop(h.spawn_relay(2));
    assert!(
        wait_for(Duration::from_secs(30), || h
            .log(2)
            .contains("xdr-relay running"))
        .await,
        "the daemon after a SIGKILLed one did not start:\n{}",
        h.log(2)
    );
    let recorded = std::fs::read_to_string(h.path("state.db.lock")).unwrap();
    assert_eq!(recorded.trim(), third.0.id().to_string());
}

/// `demo` takes the same lock, before it deletes the previous demo's state: a second demo
/// in the same directory refuses and leaves the running one's files alone.
#[test]
fn a_second_demo_in_the_same_directory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let log = std::fs::File::create(dir.path().join("demo-0.log")).unwrap();
    let first = KillOnDrop(
        Command::new(bin())
            .args([
                "demo",
                "--tenants",
                "1",
                "--every",
                "1",
                "--duration",
                "120",
                "--dir",
            ])
            .arg(&demo_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let state = demo_dir.join("state.db");
    let start = Instant::now();
    while !state.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        state.exists(),
        "the first demo made no state:\n{}",
        std::fs::read_to_string(dir.path().join("demo-0.log")).unwrap_or_default()
    );

    let out = Command::new(bin())
        .args(["demo", "--duration", "5", "--dir"])
        .arg(&demo_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.0.id())),
        "{stderr}"
    );
    assert!(
        state.exists(),
        "the refused demo deleted the running one's state"
    );
}
