//! One worker per sink: reads the sink's outbox in order, sends batches, and deletes rows
//! only after the sink acknowledged them. A failing sink backs up its own outbox; polling
//! and the other sinks go on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use relay_sinks::{AnySink, Event, Sink, SinkError};
use relay_state::{OutboxRow, StateError, StateStore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::retry_delay;
use crate::error::chain;
use crate::status::{SinkCell, SinkState};

/// How long an idle worker sleeps before looking at its outbox even without a poke: a
/// safety net, e.g. for rows committed by a previous run.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Bound on `Sink::shutdown` at the end, so a hung destination cannot hang the exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry timing of a sink worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkRetry {
    /// First backoff after a transient failure.
    pub(crate) base: Duration,
    /// Backoff ceiling for transient failures.
    pub(crate) cap: Duration,
    /// Wait after a permanent failure before trying again, in case the operator fixed the
    /// destination meanwhile.
    pub(crate) stopped: Duration,
}

/// How the relay tells a worker to stop.
#[derive(Debug, Clone)]
pub(crate) struct StopSignals {
    /// Polling has stopped: deliver what is in the outbox, then end.
    pub(crate) drain: CancellationToken,
    /// The grace period is over: end now, even mid-batch (it is re-sent after restart).
    pub(crate) hard: CancellationToken,
}

pub(crate) struct SinkWorker {
    pub(crate) sink: AnySink,
    pub(crate) state: Arc<StateStore>,
    pub(crate) cell: Arc<SinkCell>,
    pub(crate) retry: SinkRetry,
}

async fn blocking<T: Send + 'static>(
    state: &Arc<StateStore>,
    f: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, String> {
    let state = Arc::clone(state);
    match tokio::task::spawn_blocking(move || f(&state)).await {
        Ok(r) => r.map_err(|e| chain(&e)),
        Err(e) => Err(format!("state store task failed: {e}")),
    }
}

/// The row a read error is about, when the error is that row's payload alone (gone or
/// corrupt) rather than the store as a whole.
fn unreadable_row(e: &StateError) -> Option<i64> {
    match e {
        StateError::SegmentMissing { seq, .. } | StateError::PayloadCorrupt { seq, .. } => {
            Some(*seq)
        }
        _ => None,
    }
}

/// Sleeps `d`; false if the hard stop came first.
async fn sleep_or_stop(d: Duration, hard: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = hard.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// How long `sink` wants a partial batch to wait for more events: only Splunk HEC batches
/// by time (`batch.linger_ms`); the other sinks send what is there at once.
fn linger_of(sink: &AnySink) -> Duration {
    match sink {
        AnySink::SplunkHec(s) => s.linger(),
        AnySink::File(_) | AnySink::Syslog(_) | AnySink::Kafka(_) => Duration::ZERO,
    }
}

impl SinkWorker {
    pub(crate) async fn run(mut self, stop: StopSignals) {
        let name = self.cell.name.clone();
        let mut rng = SmallRng::from_entropy();
        let health = tokio::select! {
            biased;
            _ = stop.hard.cancelled() => Ok(()),
            r = self.sink.healthcheck() => r,
        };
        if let Err(e) = health {
            // Not fatal: `send` decides between retrying and stopping, with the same error.
            warn!(error = %chain(&e), "sink {name} failed its start-up health check");
        }

        let limits = self.sink.batch_limits();
        let linger = linger_of(&self.sink);
        let mut after_seq = 0i64;
        let mut attempt = 0u32;
        // Whether the batch about to be sent already waited its linger.
        let mut lingered = false;
        'work: loop {
            if stop.hard.is_cancelled() {
                break;
            }
            let rows = {
                let sink = name.clone();
                let state = Arc::clone(&self.state);
                tokio::task::spawn_blocking(move || {
                    state.read_batch(&sink, after_seq, limits.max_events.max(1), limits.max_bytes)
                })
                .await
            };
            let rows = match rows {
                Ok(Ok(rows)) => Ok(rows),
                Ok(Err(e)) => match unreadable_row(&e) {
                    Some(seq) => {
                        if self.skip_unreadable(seq, &e).await {
                            continue;
                        }
                        Err(chain(&e))
                    }
                    None => Err(chain(&e)),
                },
                Err(e) => Err(format!("state store task failed: {e}")),
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    let delay = retry_delay(attempt, self.retry.base, self.retry.cap, &mut rng);
                    attempt = attempt.saturating_add(1);
                    warn!(error = %e, "cannot read the outbox of sink {name}; retrying in {delay:?}");
                    if !sleep_or_stop(delay, &stop.hard).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(last_seq) = rows.last().map(|r| r.seq) else {
                self.refresh_depth().await;
                if stop.drain.is_cancelled() {
                    info!("outbox of sink {name} drained");
                    break;
                }
                self.cell.set_state(SinkState::Idle);
                tokio::select! {
                    biased;
                    _ = stop.hard.cancelled() => break,
                    _ = stop.drain.cancelled() => {}
                    _ = self.cell.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_WAKE) => {}
                }
                continue;
            };

            if !lingered
                && !linger.is_zero()
                && attempt == 0
                && rows.len() < limits.max_events
                && !stop.drain.is_cancelled()
                && self.nothing_after(last_seq).await
            {
                // The batch holds everything waiting, yet is not full: give the pollers up to
                // `linger` to add more, so that a trickle of events becomes fewer, fuller
                // requests (HEC `batch.linger_ms`). The rows stay in the outbox meanwhile;
                // the batch is read again and sent whatever its size.
                lingered = true;
                tokio::select! {
                    biased;
                    _ = stop.hard.cancelled() => break,
                    _ = stop.drain.cancelled() => {}
                    _ = tokio::time::sleep(linger) => {}
                }
                continue;
            }
            lingered = false;

            let events = self.decode(rows);
            // From the start of the send to the destination's acknowledgement (`send`
            // returns Ok only then); the outbox bookkeeping after it is ours, not the sink's.
            let mut ack_latency = None;
            if !events.is_empty() {
                self.cell.set_state(SinkState::Delivering);
                let sending = tokio::time::Instant::now();
                let sent = tokio::select! {
                    biased;
                    _ = stop.hard.cancelled() => {
                        info!(batch = events.len(), "shutdown grace period over with a batch of sink {name} in flight; it stays in the outbox and is sent again after restart");
                        break;
                    }
                    r = self.sink.send(&events) => r,
                };
                if let Err(e) = sent {
                    let text = chain(&e);
                    self.record_failure(&text).await;
                    if e.is_transient() {
                        let delay = retry_delay(attempt, self.retry.base, self.retry.cap, &mut rng);
                        attempt = attempt.saturating_add(1);
                        self.cell.set_state(SinkState::Retrying);
                        warn!(error = %text, attempt, "delivery to sink {name} failed; retrying in {delay:?}");
                        if !sleep_or_stop(delay, &stop.hard).await {
                            break;
                        }
                    } else {
                        self.stopped(&e, &text).await;
                        tokio::select! {
                            biased;
                            // A destination that refuses everything will not drain.
                            _ = stop.drain.cancelled() => break,
                            _ = stop.hard.cancelled() => break,
                            _ = tokio::time::sleep(self.retry.stopped) => {
                                info!("retrying delivery to sink {name} after it was stopped");
                            }
                        }
                    }
                    continue;
                }
                ack_latency = Some(sending.elapsed());
            }
            attempt = 0;

            // Delivered. A failed ack is retried: giving up would only send the batch again.
            let mut ack_attempt = 0u32;
            loop {
                let sink = name.clone();
                match blocking(&self.state, move |s| s.ack(&sink, last_seq)).await {
                    Ok(_) => break,
                    Err(e) => {
                        let delay =
                            retry_delay(ack_attempt, self.retry.base, self.retry.cap, &mut rng);
                        ack_attempt = ack_attempt.saturating_add(1);
                        warn!(error = %e, "cannot remove delivered events from the outbox of sink {name}; retrying in {delay:?}");
                        if !sleep_or_stop(delay, &stop.hard).await {
                            break 'work;
                        }
                    }
                }
            }
            after_seq = last_seq;
            self.cell
                .sent
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            {
                let mut i = self.cell.inner.lock();
                i.last_delivery = Some(Utc::now());
                if let Some(took) = ack_latency {
                    i.ack_latency.observe(took);
                }
            }
            debug!(
                events = events.len(),
                up_to = last_seq,
                ?ack_latency,
                "batch delivered"
            );
            self.refresh_depth().await;
        }

        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.sink.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %chain(&e), "sink {name} failed to shut down cleanly"),
            Err(_) => warn!("sink {name} did not shut down within {SHUTDOWN_TIMEOUT:?}"),
        }
        self.refresh_depth().await;
        self.cell.set_state(SinkState::Finished);
        debug!("sink worker stopped");
    }

    /// Whether the outbox holds no row after `seq`, i.e. a batch ending at `seq` was not cut
    /// by the batch limits. A failed read counts as "more waiting", which only skips the
    /// linger.
    async fn nothing_after(&self, seq: i64) -> bool {
        let sink = self.cell.name.clone();
        blocking(&self.state, move |s| {
            s.read_batch(&sink, seq, 1, usize::MAX)
        })
        .await
        .is_ok_and(|rows| rows.is_empty())
    }

    /// The events of `rows`, in order. A row that does not decode (written by an
    /// incompatible build, or damaged) can never be delivered; it is skipped with an error
    /// rather than wedging the sink forever, and is acknowledged with its batch.
    fn decode(&self, rows: Vec<OutboxRow>) -> Vec<Event> {
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match Event::from_outbox_bytes(&row.payload) {
                Ok(e) => events.push(e),
                Err(e) => {
                    self.cell.inner.lock().undecodable += 1;
                    error!(
                        seq = row.seq,
                        tenant = %row.tenant,
                        error = %e,
                        "outbox row of sink {} cannot be decoded; skipping it (this event is lost)",
                        self.cell.name
                    );
                }
            }
        }
        events
    }

    /// Drops the outbox row `seq` whose payload cannot be read back (`e`: its segment file
    /// is gone or the bytes fail their checksum). It can never be delivered; keeping it would
    /// stop this sink for every tenant. Counted and logged as lost. False if even the
    /// removal failed (the caller retries the read).
    async fn skip_unreadable(&self, seq: i64, e: &StateError) -> bool {
        let sink = self.cell.name.clone();
        match blocking(&self.state, move |s| s.ack_rows(&sink, &[seq])).await {
            Ok(_) => {
                self.cell.inner.lock().undecodable += 1;
                error!(
                    seq,
                    error = %chain(e),
                    "outbox row of sink {} cannot be read back; skipping it (this event is lost)",
                    self.cell.name
                );
                true
            }
            Err(removal) => {
                warn!(seq, error = %removal, "cannot remove the unreadable outbox row of sink {}", self.cell.name);
                false
            }
        }
    }

    async fn record_failure(&self, text: &str) {
        {
            let mut i = self.cell.inner.lock();
            i.failures += 1;
            i.last_error = Some(text.to_owned());
        }
        let sink = self.cell.name.clone();
        let message = text.to_owned();
        if let Err(e) = blocking(&self.state, move |s| s.record_sink_error(&sink, &message)).await {
            warn!(error = %e, "cannot record the delivery failure in the state store");
        }
    }

    async fn stopped(&mut self, e: &SinkError, text: &str) {
        self.cell.set_state(SinkState::Stopped);
        self.refresh_depth().await;
        let waiting = self.cell.inner.lock().outbox.rows;
        error!(
            error = %text,
            kind = self.sink.kind(),
            "delivery to sink {} stopped: {e}. Its events are kept in the outbox ({waiting} waiting; \
             polling pauses for its tenants when the outbox is full). Fix the destination; delivery is \
             retried in {:?} and at every restart",
            self.cell.name,
            self.retry.stopped
        );
    }

    async fn refresh_depth(&self) {
        let sink = self.cell.name.clone();
        match blocking(&self.state, move |s| s.depth(&sink)).await {
            Ok(depth) => self.cell.set_depth(depth),
            Err(e) => warn!(error = %e, "cannot read the outbox depth of sink {}", self.cell.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SinkCell;
    use relay_config::{Feed, Secret};
    use relay_sinks::splunk_hec::test_receiver::{HecReceiver, DEFAULT_TOKEN};
    use relay_sinks::{Severity, SplunkHecSink, SplunkHecSinkConfig};
    use relay_state::{OutboxDepth, PollCommit, StoreOptions};

    const SINK: &str = "hec";

    fn event(i: usize) -> Event {
        Event {
            tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
            tenant_name: "contoso".into(),
            stream: Feed::GraphAlerts.stream(),
            feed: Feed::GraphAlerts,
            id: format!("da{i}"),
            version_time: Utc::now(),
            severity: Severity::High,
            title: Some(format!("alert {i}")),
            raw: relay_sinks::RawDoc::parse(format!(r#"{{"id":"da{i}"}}"#)).unwrap(),
        }
    }

    /// Queues events `ids` as the poller does.
    fn append(state: &StateStore, ids: std::ops::Range<usize>) {
        let payloads: Vec<Vec<u8>> = ids.map(|i| event(i).to_outbox_bytes()).collect();
        append_payloads(state, &payloads);
    }

    /// Queues `payloads` as they are.
    fn append_payloads(state: &StateStore, payloads: &[Vec<u8>]) {
        let outbox: Vec<(&str, &[u8])> = payloads.iter().map(|p| (SINK, p.as_slice())).collect();
        state
            .commit_poll(&PollCommit {
                tenant: "contoso",
                feed: Feed::GraphAlerts.as_str(),
                new_checkpoint: None,
                seen: &[],
                outbox: &outbox,
                prune_seen_before: Utc::now(),
            })
            .unwrap();
    }

    /// A worker on a HEC sink with `linger` and at most 100 events per request.
    fn start(
        receiver: &HecReceiver,
        state: &Arc<StateStore>,
        linger: Duration,
    ) -> (Arc<SinkCell>, StopSignals, tokio::task::JoinHandle<()>) {
        start_with(receiver, state, |config| config.batch.linger = linger)
    }

    /// A worker on a HEC sink with at most 100 events per request, configured further by
    /// `configure`.
    fn start_with(
        receiver: &HecReceiver,
        state: &Arc<StateStore>,
        configure: impl FnOnce(&mut SplunkHecSinkConfig),
    ) -> (Arc<SinkCell>, StopSignals, tokio::task::JoinHandle<()>) {
        let mut config = SplunkHecSinkConfig::new(SINK, receiver.url(), Secret::new(DEFAULT_TOKEN));
        config.gzip = false;
        config.batch.max_events = 100;
        configure(&mut config);
        let sink = AnySink::SplunkHec(SplunkHecSink::new(config).unwrap());
        let cell = Arc::new(SinkCell::new(SINK, "splunk_hec", OutboxDepth::default()));
        let stop = StopSignals {
            drain: CancellationToken::new(),
            hard: CancellationToken::new(),
        };
        let worker = SinkWorker {
            sink,
            state: Arc::clone(state),
            cell: Arc::clone(&cell),
            retry: SinkRetry {
                base: Duration::from_millis(50),
                cap: Duration::from_millis(200),
                stopped: Duration::from_secs(1),
            },
        };
        let task = tokio::spawn(worker.run(stop.clone()));
        (cell, stop, task)
    }

    async fn wait_delivered(receiver: &HecReceiver, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while receiver.events().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} events arrived",
                receiver.events().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn request_sizes(receiver: &HecReceiver) -> Vec<usize> {
        receiver
            .event_requests()
            .iter()
            .map(|r| {
                serde_json::Deserializer::from_slice(&r.body)
                    .into_iter::<serde::de::IgnoredAny>()
                    .count()
            })
            .collect()
    }

    /// A row whose payload fails its checksum on disk is dropped, counted and logged; the
    /// rows around it are delivered and the sink does not wedge.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_payload_is_skipped_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let state = Arc::new(StateStore::open(&path, None, StoreOptions::default()).unwrap());
        append(&state, 0..3);
        append(&state, 3..6);
        // Flip one byte inside the payload of event da4 in its segment file.
        let segments: Vec<_> = std::fs::read_dir(dir.path().join("state.db-outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        assert_eq!(segments.len(), 1, "{segments:?}");
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        let at = bytes
            .windows(10)
            .position(|w| w == b"\"id\":\"da4\"")
            .unwrap();
        bytes[at + 8] = b'X';
        std::fs::write(&segments[0], &bytes).unwrap();

        let receiver = HecReceiver::start_default().await.unwrap();
        let (cell, stop, task) = start(&receiver, &state, Duration::ZERO);
        wait_delivered(&receiver, 5).await;
        let ids: Vec<String> = receiver
            .events()
            .iter()
            .map(|e| e.envelope["event"]["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["da0", "da1", "da2", "da3", "da5"]);
        assert_eq!(cell.inner.lock().undecodable, 1);
        stop.drain.cancel();
        task.await.unwrap();
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
    }

    /// Rows queued by an earlier build (serde JSON) are delivered alongside binary ones; a
    /// binary row cut short is skipped, counted and logged without wedging the sink.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_rows_still_deliver_and_a_truncated_binary_row_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let mut truncated = event(2).to_outbox_bytes();
        truncated.pop();
        append_payloads(
            &state,
            &[
                event(0).to_outbox_bytes(),
                serde_json::to_vec(&event(1)).unwrap(),
                truncated,
                event(3).to_outbox_bytes(),
            ],
        );

        let receiver = HecReceiver::start_default().await.unwrap();
        let (cell, stop, task) = start(&receiver, &state, Duration::ZERO);
        wait_delivered(&receiver, 3).await;
        let ids: Vec<String> = receiver
            .events()
            .iter()
            .map(|e| e.envelope["event"]["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["da0", "da1", "da3"]);
        assert_eq!(cell.inner.lock().undecodable, 1);
        stop.drain.cancel();
        task.await.unwrap();
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hec_partial_batch_lingers_for_more_events_and_full_batches_go_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = HecReceiver::start_default().await.unwrap();

        // One event waits alone; two more come 300 ms later, within the 1.5 s linger: one
        // request carries all three. Without the linger the first would go on its own.
        append(&state, 0..1);
        let (cell, stop, task) = start(&receiver, &state, Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(300)).await;
        append(&state, 1..3);
        cell.wake.notify_one();
        wait_delivered(&receiver, 3).await;
        assert_eq!(request_sizes(&receiver), vec![3]);

        // 250 more: two full requests at once, then the partial rest after its linger.
        append(&state, 3..253);
        cell.wake.notify_one();
        wait_delivered(&receiver, 253).await;
        assert_eq!(request_sizes(&receiver), vec![3, 100, 100, 50]);

        stop.drain.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hec_drain_sends_a_partial_batch_without_lingering() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = HecReceiver::start_default().await.unwrap();
        append(&state, 0..5);
        let (_cell, stop, task) = start(&receiver, &state, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let drained = std::time::Instant::now();
        stop.drain.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a drain does not wait out a 60 s linger")
            .unwrap();
        assert!(drained.elapsed() < Duration::from_secs(10));
        assert_eq!(request_sizes(&receiver), vec![5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ack_latency_is_observed_once_per_acknowledged_batch_and_never_for_failed_sends() {
        use relay_sinks::splunk_hec::test_receiver::{AckMode, HecReceiverConfig};
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = HecReceiver::start(HecReceiverConfig {
            indexer_ack: true,
            ..HecReceiverConfig::default()
        })
        .await
        .unwrap();
        // Each batch is confirmed at the third ack query, 100 ms apart: at least 0.2 s
        // from send to acknowledgement. The first request is refused (busy) and retried.
        receiver.set_ack_mode(AckMode::AfterQueries(2));
        receiver.set_busy(1);
        append(&state, 0..150);
        let (cell, stop, task) = start_with(&receiver, &state, |config| {
            config.indexer_ack.enabled = true;
            config.indexer_ack.poll_interval = Duration::from_millis(100);
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while cell.sent.load(Ordering::Relaxed) < 150 {
            assert!(tokio::time::Instant::now() < deadline, "not delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (histogram, failures) = {
            let i = cell.inner.lock();
            (i.ack_latency.clone(), i.failures)
        };
        assert_eq!(failures, 1);
        assert_eq!(
            histogram.count(),
            2,
            "batches of 100 and 50; the refused send is not one"
        );
        let buckets: Vec<(f64, u64)> = histogram.cumulative().collect();
        assert_eq!(
            buckets.iter().find(|(le, _)| *le == 0.1),
            Some(&(0.1, 0)),
            "{buckets:?}"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
        assert!(
            (0.4..20.0).contains(&histogram.sum_seconds()),
            "{}",
            histogram.sum_seconds()
        );

        stop.drain.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
