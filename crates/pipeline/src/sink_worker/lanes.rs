//! The sink worker's scheduling, pure so that it is tested without a sink: which queued
//! rows may go into the next batch (per-item lanes), and how many batches may be in flight
//! (the adaptive window).
//!
//! **Lanes.** Every row has a key, a hash of (tenant, feed, item id). A key is *held* while
//! a batch containing it is in flight or waiting to be sent again; a row whose key is held,
//! already in this batch, or already skipped for this batch is passed over and stays
//! queued, in order. So per item one version is outstanding at a time, and a batch that
//! fails is sent again before any later version of its items goes out: an older version
//! never arrives after a newer one, resends included (a batch holding two versions of one
//! item would, sent again, deliver the older after the newer). Rows of other items fill the batch meanwhile, so one stuck batch
//! holds back only its own items. Two items whose keys collide merely share a lane.
//!
//! **Window.** Like Vector's adaptive request concurrency, reduced to what a serial
//! submitter needs: it starts at the sink's `max_in_flight` (a batch in flight costs the
//! relay only its sequence numbers), halves — at most once per round trip — when the
//! destination pushes back on batches in flight (an acknowledgement timeout; a refused
//! submission pauses all submissions instead, see `sink_worker.rs`), and grows by one per
//! confirmed batch that was sent into a full window while the round trip held (no longer
//! than [`RTT_TOLERANCE`] × its moving average).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// A round trip this many times the moving average counts as latency not holding.
pub(crate) const RTT_TOLERANCE: f64 = 2.0;

/// The lane of an item: a hash of tenant, feed and item id.
pub(crate) fn lane_key(tenant_id: &str, feed: &str, id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    tenant_id.hash(&mut h);
    feed.hash(&mut h);
    id.hash(&mut h);
    h.finish()
}

/// The rows chosen for the next batch, by index into the queue, in queue order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pick {
    pub(crate) rows: Vec<usize>,
    /// The batch reached `max_events` or `max_bytes`.
    pub(crate) full: bool,
    /// Queued rows were passed over because their lane is held.
    pub(crate) skipped: bool,
}

/// Which keys are held by batches in flight.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    held: HashMap<u64, u32>,
}

impl Lanes {
    /// Chooses the next batch from `queue` (`(key, bytes)` per row, in outbox order): rows
    /// whose lane is free, in order, up to `max_events` rows and `max_bytes` (a first row
    /// larger than `max_bytes` goes alone).
    pub(crate) fn pick(
        &self,
        queue: impl Iterator<Item = (u64, usize)>,
        max_events: usize,
        max_bytes: usize,
    ) -> Pick {
        let mut pick = Pick::default();
        let mut skipped: HashSet<u64> = HashSet::new();
        let mut taken: HashSet<u64> = HashSet::new();
        let mut bytes = 0usize;
        for (i, (key, size)) in queue.enumerate() {
            if self.held.contains_key(&key) || skipped.contains(&key) || taken.contains(&key) {
                // Later versions of this item must wait behind the earlier one.
                skipped.insert(key);
                pick.skipped = true;
                continue;
            }
            if pick.rows.len() >= max_events
                || (!pick.rows.is_empty() && bytes.saturating_add(size) > max_bytes)
            {
                pick.full = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            taken.insert(key);
            pick.rows.push(i);
        }
        if pick.rows.len() >= max_events || bytes >= max_bytes {
            pick.full = true;
        }
        pick
    }

    /// Holds the lanes of a batch going out; `keys` may repeat.
    pub(crate) fn hold(&mut self, keys: &[u64]) {
        for k in distinct(keys) {
            *self.held.entry(k).or_default() += 1;
        }
    }

    /// Frees the lanes of a batch confirmed (or given up).
    pub(crate) fn release(&mut self, keys: &[u64]) {
        for k in distinct(keys) {
            if let Some(n) = self.held.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.held.remove(&k);
                }
            }
        }
    }

    /// How many lanes are held.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

fn distinct(keys: &[u64]) -> impl Iterator<Item = u64> {
    let set: HashSet<u64> = keys.iter().copied().collect();
    set.into_iter()
}

/// How many batches may be in flight. See the module docs.
#[derive(Debug)]
pub(crate) struct Window {
    limit: f64,
    max: usize,
    /// Moving average of the round trip (submit to confirmation), seconds.
    rtt: Option<f64>,
    last_cut: Option<Instant>,
}

impl Window {
    pub(crate) fn new(max: usize) -> Window {
        let max = max.max(1);
        Window {
            limit: max as f64,
            max,
            rtt: None,
            last_cut: None,
        }
    }

    /// Batches allowed in flight now, 1 to `max_in_flight`.
    pub(crate) fn allowed(&self) -> usize {
        // `limit` stays within 1..=max, so the cast cannot truncate anything that matters.
        (self.limit.floor() as usize).clamp(1, self.max)
    }

    /// A batch sent into a window of `in_flight_at_send` was confirmed after `rtt`.
    pub(crate) fn confirmed(&mut self, rtt: Duration, in_flight_at_send: usize) {
        let r = rtt.as_secs_f64();
        let holds = self.rtt.is_none_or(|mean| r <= mean * RTT_TOLERANCE);
        self.rtt = Some(match self.rtt {
            None => r,
            Some(mean) => mean * 0.9 + r * 0.1,
        });
        if holds && in_flight_at_send + 1 >= self.allowed() {
            self.limit = (self.limit + 1.0).min(self.max as f64);
        }
    }

    /// The destination pushed back (busy, unavailable, acknowledgement timeout) at `now`.
    pub(crate) fn pushed_back(&mut self, now: Instant) {
        // One cut per round trip: a burst of failures of batches sent together is one signal.
        let round = Duration::from_secs_f64(self.rtt.unwrap_or(0.0));
        if self.last_cut.is_some_and(|t| now.duration_since(t) < round) {
            return;
        }
        self.last_cut = Some(now);
        self.limit = (self.limit / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pick_skips_held_lanes_and_later_versions_of_skipped_items() {
        let mut lanes = Lanes::default();
        lanes.hold(&[7]);
        // Keys: 7 (held), 1, 7 (later version: must wait too), 2, 1 (a second version of 1
        // waits for the next batch).
        let queue = [(7, 10), (1, 10), (7, 10), (2, 10), (1, 10)];
        let pick = lanes.pick(queue.iter().copied(), 100, 1000);
        assert_eq!(pick.rows, vec![1, 3]);
        assert!(pick.skipped && !pick.full);

        // A key first skipped because it is held keeps its later rows back even after a
        // free row of another item; limits cut the batch.
        let pick = lanes.pick(queue.iter().copied(), 2, 1000);
        assert_eq!(pick.rows, vec![1, 3]);
        assert!(pick.full);
        let pick = lanes.pick(queue.iter().copied(), 100, 15);
        assert_eq!(pick.rows, vec![1]);
        assert!(pick.full);

        lanes.release(&[7, 7]);
        assert_eq!(lanes.held(), 0);
        let pick = lanes.pick(queue.iter().copied(), 100, 1000);
        assert_eq!(pick.rows, vec![0, 1, 3]);
    }

    #[test]
    fn an_oversized_first_row_goes_alone() {
        let lanes = Lanes::default();
        let pick = lanes.pick([(1, 5000), (2, 10)].into_iter(), 10, 100);
        assert_eq!(pick.rows, vec![0]);
        assert!(pick.full);
    }

    #[test]
    fn window_halves_once_per_round_trip_and_grows_back_while_latency_holds() {
        let t0 = Instant::now();
        let mut w = Window::new(16);
        assert_eq!(w.allowed(), 16);
        w.confirmed(Duration::from_secs(2), 15);
        w.pushed_back(t0);
        assert_eq!(w.allowed(), 8);
        // Same round trip: not cut again.
        w.pushed_back(t0 + Duration::from_millis(500));
        assert_eq!(w.allowed(), 8);
        w.pushed_back(t0 + Duration::from_secs(3));
        assert_eq!(w.allowed(), 4);
        // Growth needs a full window and a round trip that holds.
        w.confirmed(Duration::from_secs(2), 0);
        assert_eq!(w.allowed(), 4);
        w.confirmed(Duration::from_secs(60), 3);
        assert_eq!(w.allowed(), 4);
        for _ in 0..20 {
            w.confirmed(Duration::from_secs(2), 100);
        }
        assert_eq!(w.allowed(), 16, "capped at max_in_flight");
        for i in 0..10 {
            w.pushed_back(t0 + Duration::from_secs(100 * (i + 1)));
        }
        assert_eq!(w.allowed(), 1, "never below one");
    }

    /// What the property test does to a batch in flight.
    #[derive(Debug, Clone)]
    enum Step {
        /// Send the next batch, if the window and the lanes allow one.
        Send,
        /// The in-flight batch at this position (mod the count) is confirmed.
        Confirm(usize),
        /// It fails (after arriving in whole, the worst case for order); it is sent again
        /// later, alone.
        Fail(usize),
        /// The failed batch at this position is sent again.
        Resend(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Send),
            3 => any::<usize>().prop_map(Step::Confirm),
            2 => any::<usize>().prop_map(Step::Fail),
            2 => any::<usize>().prop_map(Step::Resend),
        ]
    }

    proptest! {
        /// Per item, versions arrive in version order however batches fail, partly
        /// arrive, and are resent in whatever order; every version arrives at least once.
        #[test]
        fn per_item_versions_never_arrive_out_of_order(
            items in prop::collection::vec(0u64..6, 1..60),
            max_events in 1usize..6,
            window in 1usize..5,
            steps in prop::collection::vec(step(), 1..300),
        ) {
            // The outbox: (key, version) in append order; versions count up per item.
            let mut versions: HashMap<u64, u32> = HashMap::new();
            let mut queue: Vec<(u64, u32)> = items
                .iter()
                .map(|k| {
                    let v = versions.entry(*k).or_default();
                    *v += 1;
                    (*k, *v)
                })
                .collect();
            let total = queue.len();
            let mut lanes = Lanes::default();
            let mut in_flight: Vec<Vec<(u64, u32)>> = Vec::new();
            let mut failed: Vec<Vec<(u64, u32)>> = Vec::new();
            let mut arrived: Vec<(u64, u32)> = Vec::new();
            let mut confirmed = 0usize;
            let send = |batch: &Vec<(u64, u32)>, arrived: &mut Vec<(u64, u32)>| {
                arrived.extend(batch.iter().copied());
            };
            // The random steps, then as many sends/confirms/resends as it takes to finish.
            let finish = std::iter::repeat_n([Step::Resend(0), Step::Send, Step::Confirm(0)], total * 3 + 10).flatten();
            for s in steps.into_iter().chain(finish) {
                match s {
                    Step::Send => {
                        if in_flight.len() + failed.len() >= window {
                            continue;
                        }
                        let pick = lanes.pick(queue.iter().map(|(k, _)| (*k, 1)), max_events, usize::MAX);
                        if pick.rows.is_empty() {
                            continue;
                        }
                        let batch: Vec<(u64, u32)> = pick.rows.iter().map(|i| queue[*i]).collect();
                        for i in pick.rows.iter().rev() {
                            queue.remove(*i);
                        }
                        lanes.hold(&batch.iter().map(|(k, _)| *k).collect::<Vec<_>>());
                        send(&batch, &mut arrived);
                        in_flight.push(batch);
                    }
                    Step::Confirm(i) if !in_flight.is_empty() => {
                        let batch = in_flight.remove(i % in_flight.len());
                        lanes.release(&batch.iter().map(|(k, _)| *k).collect::<Vec<_>>());
                        confirmed += batch.len();
                    }
                    Step::Fail(i) if !in_flight.is_empty() => {
                        // Its lanes stay held until it is confirmed.
                        let batch = in_flight.remove(i % in_flight.len());
                        failed.push(batch);
                    }
                    Step::Resend(i) if !failed.is_empty() => {
                        let batch = failed.remove(i % failed.len());
                        send(&batch, &mut arrived);
                        in_flight.push(batch);
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(confirmed, total, "everything delivered");
            prop_assert!(queue.is_empty() && in_flight.is_empty() && failed.is_empty());
            let mut last: HashMap<u64, u32> = HashMap::new();
            for (k, v) in arrived {
                let before = last.insert(k, v).unwrap_or(0);
                prop_assert!(v >= before, "item {} version {} arrived after version {}", k, v, before);
            }
        }
    }
}
