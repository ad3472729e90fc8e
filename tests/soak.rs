//! Long-running behaviour of the real binary: what it keeps must stop growing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use relay_sim::SimConfig;
use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};
use util::*;

/// The thread ids of a process right now.
fn threads(pid: u32) -> BTreeSet<u64> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 13: resident memory rose for as long as the daemon ran while its live heap stayed
/// flat. Every poll handed four state-store calls to tokio's blocking pool, whose threads
/// retire after 10 s idle and are replaced on the next burst; each new thread took a
/// malloc arena and the arenas' fragmentation grew. The daemon must settle on a fixed set
/// of threads: after warm-up no thread is created any more (and none is retired), and
/// there are few of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_settles_on_a_fixed_set_of_threads() {
    let h = Harness::start(Setup {
        sim: SimConfig {
            tenants: 150,
            seed: 13,
            backlog: 2,
            backlog_span: Duration::from_secs(600),
            activity: 1,
            ..SimConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let child = KillOnDrop(h.spawn_relay(0));
    let pid = child.0.id();

    // Warm-up: the first interval starts every feed and fills the pools.
    let warm_up = Duration::from_secs(25);
    let watch = Duration::from_secs(45);
    let started = Instant::now();
    while started.elapsed() < warm_up {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = threads(pid);
    assert!(!settled.is_empty(), "daemon died: {}", h.log(0));
    let mut seen = settled.clone();
    let mut most = settled.len();
    while started.elapsed() < warm_up + watch {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = threads(pid);
        most = most.max(now.len());
        seen.extend(now);
    }
    let created: Vec<_> = seen.difference(&settled).collect();
    assert!(
        created.len() <= 1,
        "{} threads were created after warm-up ({} at warm-up, at most {most} at once)",
        created.len(),
        settled.len()
    );
    // Two workers, the bounded blocking pool (16), the state writer, the signal and admin
    // tasks' threads and a few spare.
    assert!(most <= 24, "{most} threads at once");
    // And it kept polling meanwhile.
    let polls = h.log(0).lines().filter(|l| l.contains("\"ERROR\"")).count();
    assert_eq!(polls, 0, "{}", h.log(0));
    assert!(!h.delivered().is_empty());
}
