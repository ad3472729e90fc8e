//! The crash loop: the daemon SIGKILLed again and again at random moments while the
//! simulator keeps changing items, delivering to all four sinks at once; afterwards every
//! version is at every sink and the duplicates are bounded by what can be in flight at a
//! kill. The suite runs a short loop; `scripts/crashloop` runs the long one
//! (`CRASHLOOP_KILLS=200`).

use super::*;

/// What a kill may make a sink repeat: the batches it had submitted and not yet seen
/// confirmed (a few in flight, the largest batch being the file sink's 1,000 events).
/// Loose on purpose; a repeat for any other reason (an ack not recorded, a re-poll not
/// deduplicated) shows as a version repeated more often than there were kills.
const IN_FLIGHT_PER_KILL: usize = 4 * 1_000;

/// Versions that stayed this long are seen by a daemon killed every few seconds: each run
/// polls a feed with a good chance (its first poll is jittered across the 10 s interval),
/// and a version lasting a minute spans a dozen runs.
const CRASH_MUST_SEE: Duration = Duration::from_secs(60);

fn kills() -> usize {
    std::env::var("CRASHLOOP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18)
}

/// Versions `have` holds that `other` lacks, as sets: a version the file sink got twice
/// is not "missing" at a sink that got it once (`Arrived::missing` counts copies, right
/// for exactly-once tests, wrong here).
fn lost<K: Ord>(have: &[K], other: &[K]) -> usize {
    let other: std::collections::BTreeSet<&K> = other.iter().collect();
    let have: std::collections::BTreeSet<&K> = have.iter().collect();
    have.difference(&other).count()
}

/// Per receiver (HEC, Kafka, syslog): versions of the file sink it never got.
fn lost_at_receivers(a: &Arrived) -> [usize; 3] {
    let cef_file: Vec<CefKey> = a.file.iter().map(cef_key).collect();
    [
        lost(&a.file, &a.hec),
        lost(&a.file, &a.kafka),
        lost(&cef_file, &a.syslog),
    ]
}

/// Extra deliveries (beyond the first) of each key.
fn repeats<K: Ord + Clone>(keys: &[K]) -> usize {
    let mut n: BTreeMap<&K, usize> = BTreeMap::new();
    for k in keys {
        *n.entry(k).or_default() += 1;
    }
    n.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_sigkill_at_random_moments_loses_nothing_at_any_sink() {
    let kills = kills();
    let (h, rx) = start_with(77, |s| {
        // Every version dwells long enough to be seen across restarts; activity keeps
        // making new ones throughout.
        s.sim.min_update_gap = Duration::from_secs(120);
        s.sim.activity = 30;
    })
    .await;
    let started = Instant::now();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d ^ kills as u64;
    let mut next = move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    for run in 0..kills {
        let mut child = h.spawn_relay(run);
        // From "still starting up" to "several polls in": 0.3 s to 8 s.
        tokio::time::sleep(Duration::from_millis(next(300, 8_000))).await;
        signal(&child, "KILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "run {run} was not killed: {status:?}");
    }
    let looped = started.elapsed();
    let relay = KillOnDrop(h.spawn_relay(kills));
    tokio::time::sleep(Duration::from_secs(15)).await;
    h.sim.settle().await;
    let truth = h.must_deliver(CRASH_MUST_SEE);
    let deadline = Instant::now() + Duration::from_secs(180);
    let a = loop {
        let a = arrived(&h, &rx, &[], Duration::from_secs(3)).await;
        let done = compare(&a.file, &truth).0.is_empty()
            && lost_at_receivers(&a) == [0, 0, 0]
            && a.ahead_of_file() == [0, 0, 0];
        if done || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    drop(relay);

    let (missing, _, _) = compare(&a.file, &truth);
    let (_, _, never_shown) = compare(&a.file, &h.ground_truth());
    let [hec_missing, kafka_missing, syslog_missing] = lost_at_receivers(&a);
    let cef_file: Vec<CefKey> = a.file.iter().map(cef_key).collect();
    let dups = [
        ("file", repeats(&a.file)),
        ("splunk", repeats(&a.hec)),
        ("bus", repeats(&a.kafka)),
        ("arcsight", repeats(&a.syslog)),
    ];
    let unique = a.file.len() - dups[0].1;
    // The figure docs/operations.md quotes.
    eprintln!(
        "crash loop: {kills} SIGKILLs in {looped:?} (then {:?} to settle); {} versions must \
         be delivered, {unique} delivered; lost: file {}, HEC {hec_missing}, Kafka \
         {kafka_missing}, syslog {syslog_missing}; duplicates: {dups:?}",
        started.elapsed() - looped,
        truth.len(),
        missing.len(),
    );
    assert!(truth.len() > 200, "only {} versions", truth.len());
    assert!(
        missing.is_empty(),
        "file sink lost {} of {}: {:?}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(never_shown.is_empty(), "{never_shown:?}");
    assert_eq!(
        [hec_missing, kafka_missing, syslog_missing],
        [0, 0, 0],
        "HEC, Kafka, syslog lost versions the file sink has"
    );
    let (_, syslog_extra) = diff(&cef_file, &a.syslog);
    assert!(
        syslog_extra.iter().all(|(k, _)| cef_file.contains(k)),
        "syslog-ng holds versions the file sink has not"
    );
    for (sink, keys) in [("file", &a.file), ("splunk", &a.hec), ("bus", &a.kafka)] {
        let mut n: BTreeMap<&Delivered, usize> = BTreeMap::new();
        for k in keys.iter() {
            *n.entry(k).or_default() += 1;
        }
        let worst = n.values().copied().max().unwrap_or(0);
        assert!(
            worst <= kills + 1,
            "sink {sink}: a version delivered {worst} times"
        );
    }
    for (sink, n) in dups {
        assert!(
            n <= kills * IN_FLIGHT_PER_KILL,
            "sink {sink}: {n} duplicates after {kills} kills (bound {})",
            kills * IN_FLIGHT_PER_KILL
        );
    }
}
