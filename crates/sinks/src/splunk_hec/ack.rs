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

/// Why an outstanding `ackId` ended without being confirmed.
#[derive(Debug)]
pub(crate) enum AckFailure {
    /// Not reported indexed by its deadline: resend the batch.
    Timeout,
    /// HEC handed the same id out again (its statuses were reset): resend the batch.
    Reset,
    /// The ack endpoint refused the query for good (ack disabled on the token, bad token).
    Rejected(HecReply),
    /// The sink shut down first.
    Closed,
}

struct Waiter {
    deadline: Instant,
    tx: oneshot::Sender<Result<(), AckFailure>>,
}

#[derive(Default)]
struct Pending {
    ids: HashMap<u64, Waiter>,
    /// A poller task is running (it ends once nothing is pending).
    polling: bool,
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
            if let Some(old) = p.ids.insert(id, Waiter { deadline, tx }) {
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
                        for id in ids.iter().filter(|id| status.is_acked(**id)) {
                            if let Some(w) = p.ids.remove(id) {
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

    /// Ends the waits whose deadline passed.
    fn expire(&self, now: Instant) {
        let mut p = self.lock();
        let late: Vec<u64> = p
            .ids
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(w) = p.ids.remove(&id) {
                let _ = w.tx.send(Err(AckFailure::Timeout));
            }
        }
    }
}
