//! Admission of API requests across every tenant: how many may be in flight at once, and
//! which waiting request goes next.
//!
//! A request is admitted after its tenant's quota let it go ([`RateLimiter`]) and holds its
//! slot only while it is on the wire, so a tenant waiting out its quota or a `Retry-After`
//! holds nothing. The number of slots adapts, the way TCP's congestion window and Vector's
//! adaptive request concurrency do: it grows by one per round trip while answers come as
//! fast as usual, and shrinks by a factor when they slow down markedly or fail with
//! timeouts, 5xx or resets (additive increase, multiplicative decrease). Waiting requests
//! are served by class first — the first page of a due poll (new alerts), then the
//! continuation pages of a long poll, then background work — and within a class round
//! robin across tenants, so one tenant's backlog of thousands of pages cannot delay another
//! tenant's new alert.
//!
//! [`RateLimiter`]: crate::RateLimiter

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a request is for; lower classes are served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestClass {
    /// The first page of a due poll: what finds a new alert.
    Live = 0,
    /// A further page of a poll whose window holds more than one page (a backlog).
    Continuation = 1,
    /// Background work (reconciliation, backfill).
    Background = 2,
}

const CLASSES: usize = 3;

/// Bounds of the adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// The limit never falls below this.
    pub min: usize,
    /// Nor rises above this (`[http] max_requests_in_flight`).
    pub max: usize,
    /// Where it starts.
    pub initial: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            min: 4,
            max: 256,
            initial: 16,
        }
    }
}

/// How an admitted request ended, for the adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An answer arrived (any status that is about the request, 429 included: a tenant's
    /// quota says nothing about the API's capacity).
    Answered,
    /// A timeout, a reset, a 5xx: the far side may be overloaded.
    Overloaded,
}

/// A snapshot of the admission state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionStats {
    /// The current limit of requests in flight.
    pub limit: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Requests waiting for a slot now.
    pub waiting: usize,
    /// Requests admitted since start.
    pub admitted: u64,
    /// Of those, admitted after waiting for a slot.
    pub waited: u64,
    /// Times the limit was cut.
    pub decreases: u64,
    /// The smoothed round-trip time the limit compares against.
    pub rtt_baseline: Option<Duration>,
}

/// The shared admission gate. Cheap to share in an `Arc`.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    queues: [ClassQueue; CLASSES],
    /// Long-run smoothed RTT (seconds).
    baseline: Option<f64>,
    last_decrease: Option<Instant>,
    admitted: u64,
    waited: u64,
    decreases: u64,
}

impl State {
    /// Whole slots: the limit grows by fractions, a request takes a whole one.
    fn slots(&self) -> usize {
        self.limit as usize
    }
}

/// The waiters of one class: a ring of tenants, each with its own queue, served one
/// request per turn.
#[derive(Debug, Default)]
struct ClassQueue {
    ring: VecDeque<Arc<str>>,
    by_tenant: HashMap<Arc<str>, VecDeque<oneshot::Sender<AdmissionPermit>>>,
    len: usize,
}

impl ClassQueue {
    fn push(&mut self, tenant: &str, tx: oneshot::Sender<AdmissionPermit>) {
        if let Some(q) = self.by_tenant.get_mut(tenant) {
            q.push_back(tx);
        } else {
            let key: Arc<str> = Arc::from(tenant);
            self.ring.push_back(Arc::clone(&key));
            self.by_tenant.insert(key, VecDeque::from([tx]));
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<oneshot::Sender<AdmissionPermit>> {
        let tenant = self.ring.pop_front()?;
        let q = self.by_tenant.get_mut(&tenant)?;
        let tx = q.pop_front();
        if q.is_empty() {
            self.by_tenant.remove(&tenant);
        } else {
            self.ring.push_back(tenant);
        }
        self.len -= 1;
        tx
    }
}

/// Weight of a new RTT sample in the baseline.
const BASELINE_ALPHA: f64 = 0.05;
/// An answer this many times slower than the baseline counts as congestion.
const SLOW_FACTOR: f64 = 3.0;
/// What a decrease keeps of the limit.
const DECREASE: f64 = 0.7;
/// At most one decrease per this long: one bad moment makes many requests fail at once.
const DECREASE_EVERY: Duration = Duration::from_secs(1);

impl Admission {
    /// A gate with `limits` (clamped so that `1 <= min <= initial <= max`).
    pub fn new(limits: AdmissionLimits) -> Admission {
        let max = limits.max.max(1);
        let min = limits.min.clamp(1, max);
        let initial = limits.initial.clamp(min, max);
        Admission {
            limits: AdmissionLimits { min, max, initial },
            state: Mutex::new(State {
                limit: initial as f64,
                in_flight: 0,
                queues: Default::default(),
                baseline: None,
                last_decrease: None,
                admitted: 0,
                waited: 0,
                decreases: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters and queues: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for a request of `tenant` in `class`. The slot is held until the
    /// permit is dropped; report how the request ended with [`AdmissionPermit::answered`]
    /// first so the limit can adapt. Cancel-safe: a request given up while waiting takes
    /// nothing.
    pub async fn admit(self: &Arc<Self>, tenant: &str, class: RequestClass) -> AdmissionPermit {
        let rx = {
            let mut st = self.lock();
            let ahead: usize = st.queues[..=class as usize].iter().map(|q| q.len).sum();
            if ahead == 0 && st.in_flight < st.slots() {
                st.in_flight += 1;
                st.admitted += 1;
                return self.permit();
            }
            let (tx, rx) = oneshot::channel();
            st.queues[class as usize].push(tenant, tx);
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // Only if the gate dropped its queue, which it never does while alive: admit
            // anyway rather than fail a poll.
            Err(_) => {
                let mut st = self.lock();
                st.in_flight += 1;
                st.admitted += 1;
                drop(st);
                self.permit()
            }
        }
    }

    fn permit(self: &Arc<Self>) -> AdmissionPermit {
        AdmissionPermit {
            gate: Some(Arc::clone(self)),
            started: Instant::now(),
        }
    }

    /// The state now.
    pub fn stats(&self) -> AdmissionStats {
        let st = self.lock();
        AdmissionStats {
            limit: st.limit as usize,
            in_flight: st.in_flight,
            waiting: st.queues.iter().map(|q| q.len).sum(),
            admitted: st.admitted,
            waited: st.waited,
            decreases: st.decreases,
            rtt_baseline: st.baseline.map(Duration::from_secs_f64),
        }
    }

    /// Adapts the limit to how one request ended.
    fn record(&self, rtt: Duration, answer: Answer) {
        let mut st = self.lock();
        // Counted as the gate was when the request took its slot (it still holds it).
        let was_full = st.in_flight >= st.slots();
        let now = Instant::now();
        let rtt = rtt.as_secs_f64();
        let congested = match answer {
            Answer::Overloaded => true,
            Answer::Answered => st.baseline.is_some_and(|b| rtt > b * SLOW_FACTOR),
        };
        if congested {
            let due = st
                .last_decrease
                .is_none_or(|at| now.duration_since(at) >= DECREASE_EVERY);
            if due {
                st.limit = (st.limit * DECREASE).max(self.limits.min as f64);
                st.last_decrease = Some(now);
                st.decreases += 1;
            }
        } else {
            st.baseline = Some(match st.baseline {
                None => rtt,
                Some(b) => b + BASELINE_ALPHA * (rtt - b),
            });
            // Growth only when the limit was what held requests back.
            if was_full {
                st.limit = (st.limit + 1.0 / st.limit).min(self.limits.max as f64);
            }
        }
    }

    /// Frees one slot and hands free slots to waiters, highest class first, round robin
    /// inside it.
    fn free(self: &Arc<Self>) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let now = Instant::now();
        while st.in_flight < st.slots() {
            let Some(tx) = st.queues.iter_mut().find_map(ClassQueue::pop) else {
                break;
            };
            st.in_flight += 1;
            let permit = AdmissionPermit {
                gate: Some(Arc::clone(self)),
                started: now,
            };
            match tx.send(permit) {
                Ok(()) => {
                    st.admitted += 1;
                    st.waited += 1;
                }
                Err(mut unclaimed) => {
                    // The waiter gave up; its slot goes to the next one.
                    unclaimed.gate = None;
                    st.in_flight -= 1;
                }
            }
        }
    }
}

/// A slot for one request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct AdmissionPermit {
    gate: Option<Arc<Admission>>,
    started: Instant,
}

impl AdmissionPermit {
    /// Records how the request ended (the round trip is measured from admission to this
    /// call) and frees the slot.
    pub fn answered(self, answer: Answer) {
        drop(self.answered_keep(answer));
    }

    /// Records how the request ended like [`answered`](Self::answered), but keeps the slot
    /// until the returned [`HeldSlot`] is dropped: a page that was read still takes memory
    /// until its events are committed, so the poll keeps its slot until then and the
    /// number of pages held in memory stays bounded by the limit.
    pub fn answered_keep(mut self, answer: Answer) -> HeldSlot {
        let rtt = self.started.elapsed();
        let gate = self.gate.take();
        if let Some(gate) = &gate {
            gate.record(rtt, answer);
        }
        HeldSlot { gate }
    }
}

/// A slot whose request is answered but whose page is still being processed; dropping it
/// frees the slot.
#[derive(Debug)]
#[must_use = "dropping the slot frees it at once"]
pub struct HeldSlot {
    gate: Option<Arc<Admission>>,
}

impl HeldSlot {
    /// A slot that holds nothing (for pages that needed no admission).
    pub fn none() -> HeldSlot {
        HeldSlot { gate: None }
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.free();
        }
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        // Dropped without an answer (the request was cancelled): no signal for the limit.
        if let Some(gate) = self.gate.take() {
            gate.free();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(min: usize, initial: usize, max: usize) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionLimits { min, max, initial }))
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_limit_then_queues() {
        let g = gate(1, 2, 2);
        let a = g.admit("t1", RequestClass::Live).await;
        let _b = g.admit("t2", RequestClass::Live).await;
        let g2 = Arc::clone(&g);
        let third = tokio::spawn(async move { g2.admit("t3", RequestClass::Live).await });
        tokio::task::yield_now().await;
        assert_eq!(g.stats().waiting, 1);
        assert_eq!(g.stats().in_flight, 2);
        a.answered(Answer::Answered);
        let _c = third.await.unwrap();
        assert_eq!(g.stats().in_flight, 2);
        assert_eq!(g.stats().waited, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn live_pages_go_before_a_backlog_and_tenants_take_turns() {
        let g = gate(1, 1, 1);
        let first = g.admit("busy", RequestClass::Continuation).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The busy tenant queues ten continuation pages, then two others queue live ones
        // and a second busy-ish tenant queues continuation pages too.
        for (tenant, class, n) in [
            ("busy", RequestClass::Continuation, 10),
            ("other", RequestClass::Continuation, 3),
            ("new1", RequestClass::Live, 1),
            ("new2", RequestClass::Live, 1),
        ] {
            for _ in 0..n {
                let g = Arc::clone(&g);
                let order = Arc::clone(&order);
                tasks.push(tokio::spawn(async move {
                    let p = g.admit(tenant, class).await;
                    order.lock().unwrap().push(tenant);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    p.answered(Answer::Answered);
                }));
                tokio::task::yield_now().await;
            }
        }
        first.answered(Answer::Answered);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(&order[..2], &["new1", "new2"], "{order:?}");
        // Then the two backlogged tenants alternate until `other` is done.
        assert_eq!(
            &order[2..8],
            &["busy", "other", "busy", "other", "busy", "other"],
            "{order:?}"
        );
        assert!(order[8..].iter().all(|t| *t == "busy"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_answers_are_fast_and_falls_when_they_fail() {
        let g = gate(2, 4, 64);
        // Keep the gate full with fast answers: the limit grows.
        for _ in 0..400 {
            let permits: Vec<_> = {
                let mut v = Vec::new();
                for i in 0..g.stats().limit {
                    v.push(g.admit(&format!("t{i}"), RequestClass::Live).await);
                }
                v
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            for p in permits {
                p.answered(Answer::Answered);
            }
        }
        let grown = g.stats().limit;
        assert!(grown >= 20, "limit only reached {grown}");
        // Failures cut it, at most once a second.
        for _ in 0..5 {
            let p = g.admit("t", RequestClass::Live).await;
            p.answered(Answer::Overloaded);
        }
        assert_eq!(g.stats().decreases, 1);
        let cut = g.stats().limit;
        assert!(cut < grown, "{cut} !< {grown}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = g.admit("t", RequestClass::Live).await;
        p.answered(Answer::Overloaded);
        assert_eq!(g.stats().decreases, 2);
        // A slow answer (many times the baseline) counts as congestion too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = g.admit("t", RequestClass::Live).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        p.answered(Answer::Answered);
        assert_eq!(g.stats().decreases, 3);
        // Never below the floor.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            g.admit("t", RequestClass::Live)
                .await
                .answered(Answer::Overloaded);
        }
        assert_eq!(g.stats().limit, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_takes_no_slot() {
        let g = gate(1, 1, 1);
        let held = g.admit("a", RequestClass::Live).await;
        let g2 = Arc::clone(&g);
        let waiter = tokio::spawn(async move { g2.admit("b", RequestClass::Live).await });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(g.stats().in_flight, 0);
        let _next = g.admit("c", RequestClass::Live).await;
        assert_eq!(g.stats().in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_slot_counts_until_dropped() {
        let g = gate(1, 1, 1);
        let slot = g
            .admit("a", RequestClass::Live)
            .await
            .answered_keep(Answer::Answered);
        assert_eq!(g.stats().in_flight, 1);
        let g2 = Arc::clone(&g);
        let next = tokio::spawn(async move { g2.admit("b", RequestClass::Live).await });
        tokio::task::yield_now().await;
        assert_eq!(g.stats().waiting, 1);
        drop(slot);
        let _p = next.await.unwrap();
        assert_eq!(g.stats().in_flight, 1);
        assert_eq!(g.stats().waiting, 0);
    }
}
