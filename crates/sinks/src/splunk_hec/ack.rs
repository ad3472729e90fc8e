//! Indexer acknowledgement (sinks.md §1.4): after HEC answered a request with an `ackId`,
//! ask `/services/collector/ack` on the same channel until the indexers report it indexed.
//!
//! One [`AckTracker`] per sink holds every outstanding `ackId` of its channel, however many
//! batches they belong to, and one poller task asks for all of them in a single query per
//! tick. A batch waits only for its own ids: one that is never acknowledged times out alone
//! (and is sent again by the worker) while the others complete.
//!
//! * **Pace.** Splunk's advice is to poll every ~10 s. A batch indexed in a second should
//!   not wait ten, so the tick starts at [`FIRST_QUERY_AFTER`], halves (not below it) after
//!   a query that confirmed something and doubles, up to `indexer_ack.poll_interval_secs`,
//!   after one that confirmed nothing: with a steady stream of batches the queries follow
//!   the indexers, with a slow indexer they go at the configured pace.
//! * **Busy or failing ack endpoint** (503 code 9, transport errors): the ids stay pending
//!   and the tick backs off; only their own deadlines end them.
//! * **A channel reset** (Splunk restarted and forgot its statuses, then hands out ids from
//!   0 again): an id handed out again while still pending means the old one can never be
//!   confirmed; its batch fails at once as unacknowledged and is sent again.
//! * **Refused for good** (ack disabled on the token, bad token): every pending batch fails
//!   with the refusal.
//! * **Lost by the indexers.** Splunk never reports a request whose data the indexers lost;
//!   waiting out `indexer_ack.timeout_secs` (300 s by default) for it would delay its items
//!   by five minutes. So an id is also given up once ids registered *after* it have been
//!   confirmed and it has waited [`LOST_AFTER_FACTOR`] × the usual confirmation time (a
//!   moving average), at least [`LOST_AFTER_MIN`]: the indexers are keeping up, just not
//!   with this one. While nothing is confirmed (a busy or slow indexer, a busy ack
//!   endpoint) nothing is overtaken and only the configured timeout applies, so a slow
//!   Splunk gets no flood of resends. Splunk's acknowledgements are not strictly in order
//!   across indexers, which is what the floor is for; a batch given up too early is only
//!   sent twice (a duplicate), never lost.

use super::client::{display_url, HecClient};
use super::request::ack_query_body;
use super::response::{AckStatus, Decision, HecReply};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The shortest wait between two ack queries, and the first one.
pub(crate) const FIRST_QUERY_AFTER: Duration = Duration::from_millis(100);

/// An id overtaken by later confirmations is given up after this many times the usual
/// confirmation time...
pub(crate) const LOST_AFTER_FACTOR: f64 = 3.0;
/// ...but never before it waited this long.
pub(crate) const LOST_AFTER_MIN: Duration = Duration::from_secs(10);

/// Why an outstanding `ackId` ended without being confirmed.
#[derive(Debug)]
pub(crate) enum AckFailure {
    /// Not reported indexed by its deadline: resend the batch.
    Timeout,
    /// Ids registered after it were confirmed and it waited well past the usual time: the
    /// indexers lost it; resend the batch. Carries how long it waited.
    Overtaken(Duration),
    /// HEC handed the same id out again (its statuses were reset): resend the batch.
    Reset,
    /// The ack endpoint refused the query for good (ack disabled on the token, bad token).
    Rejected(HecReply),
    /// The sink shut down first.
    Closed,
}

struct Waiter {
    registered: Instant,
    deadline: Instant,
    tx: oneshot::Sender<Result<(), AckFailure>>,
}

#[derive(Default)]
struct Pending {
    ids: HashMap<u64, Waiter>,
    /// A poller task is running (it ends once nothing is pending).
    polling: bool,
    /// Moving average of registration → confirmation, seconds.
    usual: Option<f64>,
    /// The latest registration among the confirmed ids: anything registered before it and
    /// still pending has been overtaken.
    newest_confirmed: Option<Instant>,
}

impl Pending {
    /// How long an overtaken id may wait before it counts as lost.
    fn lost_after(&self) -> Duration {
        let usual = Duration::from_secs_f64(self.usual.unwrap_or(0.0) * LOST_AFTER_FACTOR);
        usual.max(LOST_AFTER_MIN)
    }

    /// `w` was confirmed at `now`.
    fn confirmed(&mut self, w: &Waiter, now: Instant) {
        let took = now.duration_since(w.registered).as_secs_f64();
        self.usual = Some(self.usual.map_or(took, |u| u * 0.9 + took * 0.1));
        self.newest_confirmed = self.newest_confirmed.max(Some(w.registered));
    }
}

/// The outstanding ack ids of one sink's channel. See the module docs.
pub(crate) struct AckTracker {
    sink: String,
    max_interval: Duration,
    pending: Mutex<Pending>,
    closed: AtomicBool,
}

impl std::fmt::Debug for AckTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTracker")
            .field("sink", &self.sink)
            .field("pending", &self.lock().ids.len())
            .finish_non_exhaustive()
    }
}

impl AckTracker {
    pub(crate) fn new(sink: &str, max_interval: Duration) -> AckTracker {
        AckTracker {
            sink: sink.to_string(),
            max_interval: max_interval.max(FIRST_QUERY_AFTER),
            pending: Mutex::new(Pending::default()),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every critical section is a few map operations: a panic cannot leave it torn.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many ids are waiting for confirmation.
    pub(crate) fn outstanding(&self) -> usize {
        self.lock().ids.len()
    }

    /// Registers `id`, to be confirmed by `deadline`; starts the poller if none runs.
    pub(crate) fn register(
        self: &Arc<Self>,
        client: &Arc<HecClient>,
        id: u64,
        deadline: Instant,
    ) -> oneshot::Receiver<Result<(), AckFailure>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut p = self.lock();
            let waiter = Waiter {
                registered: Instant::now(),
                deadline,
                tx,
            };
            if let Some(old) = p.ids.insert(id, waiter) {
                warn!(
                    sink = %self.sink,
                    ack_id = id,
                    "HEC handed out an ack id that is still pending (its statuses were reset, \
                     e.g. by a restart); the older batch is sent again"
                );
                let _ = old.tx.send(Err(AckFailure::Reset));
            }
            !std::mem::replace(&mut p.polling, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).poll(Arc::clone(client)));
        }
        rx
    }

    /// Ends every pending wait with [`AckFailure::Closed`] and stops the poller.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let ids = std::mem::take(&mut self.lock().ids);
        for (_, w) in ids {
            let _ = w.tx.send(Err(AckFailure::Closed));
        }
    }

    /// The poller: one query for every pending id per tick, until none is pending.
    async fn poll(self: Arc<Self>, client: Arc<HecClient>) {
        let mut interval = FIRST_QUERY_AFTER;
        loop {
            let (ids, next_deadline) = {
                let mut p = self.lock();
                if p.ids.is_empty() || self.closed.load(Ordering::Relaxed) {
                    p.polling = false;
                    return;
                }
                let ids: Vec<u64> = p.ids.keys().copied().collect();
                let next = p.ids.values().map(|w| w.deadline).min();
                (ids, next)
            };
            let wake = Instant::now() + interval;
            tokio::time::sleep_until(next_deadline.map_or(wake, |d| d.min(wake))).await;
            let confirmed = self.query(&client, ids).await;
            self.expire(Instant::now());
            interval = match confirmed {
                Some(n) if n > 0 => (interval / 2).max(FIRST_QUERY_AFTER),
                _ => (interval * 2).min(self.max_interval),
            };
        }
    }

    /// Asks for `ids` once; how many were confirmed, `None` if the query failed.
    async fn query(&self, client: &HecClient, mut ids: Vec<u64>) -> Option<usize> {
        ids.sort_unstable();
        let sink = self.sink.as_str();
        let url = || display_url(&client.ack_url);
        match client.post(&client.ack_url, ack_query_body(&ids)).await {
            Ok(raw) if (200..300).contains(&raw.status) => {
                match serde_json::from_slice::<AckStatus>(&raw.body) {
                    Ok(status) => {
                        let mut p = self.lock();
                        let mut confirmed = 0;
                        let now = Instant::now();
                        for id in ids.iter().filter(|id| status.is_acked(**id)) {
                            if let Some(w) = p.ids.remove(id) {
                                p.confirmed(&w, now);
                                let _ = w.tx.send(Ok(()));
                                confirmed += 1;
                            }
                        }
                        debug!(
                            sink,
                            asked = ids.len(),
                            confirmed,
                            pending = p.ids.len(),
                            "indexer ack query answered"
                        );
                        Some(confirmed)
                    }
                    Err(e) => {
                        warn!(sink, url = %url(), error = %e, "unexpected answer to an indexer ack query; asking again");
                        None
                    }
                }
            }
            Ok(raw) => {
                let reply = HecReply::parse(raw.status, &raw.body);
                match reply.decision() {
                    Decision::Reject => {
                        let failed = std::mem::take(&mut self.lock().ids);
                        for (_, w) in failed {
                            let _ = w.tx.send(Err(AckFailure::Rejected(reply.clone())));
                        }
                    }
                    Decision::Retry | Decision::Accepted => warn!(
                        sink,
                        url = %url(),
                        reply = %reply.describe(),
                        pending = ids.len(),
                        "indexer ack query failed; the acks stay pending, asking again later"
                    ),
                }
                None
            }
            Err(e) => {
                warn!(
                    sink,
                    url = %url(),
                    error = %crate::splunk_hec::error_chain(&e),
                    pending = ids.len(),
                    "indexer ack query failed; the acks stay pending, asking again later"
                );
                None
            }
        }
    }

    /// Ends the waits whose deadline passed, and those overtaken for too long (see the
    /// module docs).
    fn expire(&self, now: Instant) {
        let mut p = self.lock();
        let lost_after = p.lost_after();
        let newest = p.newest_confirmed;
        let late: Vec<(u64, AckFailure)> = p
            .ids
            .iter()
            .filter_map(|(id, w)| {
                let waited = now.duration_since(w.registered);
                if w.deadline <= now {
                    Some((*id, AckFailure::Timeout))
                } else if newest.is_some_and(|n| n > w.registered) && waited >= lost_after {
                    Some((*id, AckFailure::Overtaken(waited)))
                } else {
                    None
                }
            })
            .collect();
        for (id, failure) in late {
            if let Some(w) = p.ids.remove(&id) {
                if let AckFailure::Overtaken(waited) = failure {
                    debug!(sink = %self.sink, ack_id = id, ?waited, "ack id overtaken by later confirmations; taken as lost");
                }
                let _ = w.tx.send(Err(failure));
            }
        }
    }
}
