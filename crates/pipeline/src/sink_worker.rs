//! One worker per sink: reads the sink's outbox in order, cuts batches, keeps up to the
//! sink's `max_in_flight` of them awaiting the destination's confirmation, and deletes each
//! batch's rows once that batch alone is confirmed, in whatever order confirmations come. A
//! batch that fails is sent again on its own while the others go on; per item, versions
//! still arrive in version order (`lanes.rs`). A failing sink backs up its own outbox;
//! polling and the other sinks go on.

mod lanes;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use relay_sinks::{AnySink, BatchLimits, Event, Receipt, Sink, SinkError};
use relay_state::{Outbox, OutboxRow, StateError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::retry_delay;
use crate::error::chain;
use crate::status::{SinkCell, SinkState};
use lanes::{lane_key, Lanes, Window};

/// How long an idle worker sleeps before looking at its outbox even without a poke: a
/// safety net, e.g. for rows committed by a previous run.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Bound on `Sink::shutdown` at the end, so a hung destination cannot hang the exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows read ahead of the batches in flight, in batches' worth (`max_events`, `max_bytes`):
/// one is enough to cut the next batch around items whose lane is held; two raised the
/// daemon's peak RSS in the CEF benchmark from ~95 to 111–154 MiB for no throughput.
const READ_AHEAD_BATCHES: usize = 1;

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
    pub(crate) outbox: Outbox,
    pub(crate) cell: Arc<SinkCell>,
    pub(crate) retry: SinkRetry,
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

/// A row read from the outbox, decoded, waiting for a batch.
struct Queued {
    seq: i64,
    key: u64,
    bytes: usize,
    event: Event,
}

/// A batch handed to the sink and not yet confirmed, or failed and waiting to go again.
/// Only its rows' seqs and lanes are kept: a resend reads the rows back from the outbox, so
/// a thousand batches awaiting indexer acknowledgement cost kilobytes, not their events.
#[derive(Debug)]
struct Batch {
    seqs: Vec<i64>,
    keys: Vec<u64>,
    /// When its latest attempt was submitted.
    sent: Instant,
    /// Batches in flight when it was submitted (for the window).
    in_flight_at_send: usize,
    /// Failed attempts so far.
    attempt: u32,
}

impl Batch {
    /// Whether its seqs are one run with nothing between them (so that, if nothing older
    /// is outstanding, a range delete removes exactly them).
    fn contiguous(&self) -> Option<(i64, i64)> {
        let first = *self.seqs.first()?;
        let last = *self.seqs.last()?;
        let sorted = self.seqs.windows(2).all(|w| w[0] < w[1]);
        (sorted && usize::try_from(last - first).ok()? + 1 == self.seqs.len())
            .then_some((first, last))
    }
}

/// A failed batch and when it may go again.
struct Resend {
    batch: Batch,
    due: Instant,
}

/// The worker's bookkeeping between outbox and sink.
struct Delivery {
    limits: BatchLimits,
    queue: VecDeque<Queued>,
    /// Highest seq read into `queue` so far.
    cursor: i64,
    /// The last read found the end of the outbox; read again after a poke or a timer.
    at_end: bool,
    /// Moving average of a row's payload size, for the read-ahead's byte bound.
    row_bytes: usize,
    lanes: Lanes,
    window: Window,
    next_id: u64,
    in_flight: HashMap<u64, Batch>,
    acks: JoinSet<(u64, Result<(), SinkError>)>,
    resends: Vec<Resend>,
    /// No new batch before this: the destination pushed back on a submission.
    hold_until: Option<Instant>,
    /// Submissions failing in a row, for the backoff.
    failing: u32,
    /// A permanent failure: delivery stopped until then.
    stopped_until: Option<Instant>,
    /// Since when the next batch could go but is not full and lingers for more events.
    lingering_since: Option<Instant>,
    /// In flight and window as last shown in the status.
    shown: (usize, usize),
}

impl Delivery {
    fn new(limits: BatchLimits) -> Delivery {
        Delivery {
            limits,
            queue: VecDeque::new(),
            cursor: 0,
            at_end: false,
            row_bytes: 1024,
            lanes: Lanes::default(),
            window: Window::new(limits.max_in_flight),
            next_id: 0,
            in_flight: HashMap::new(),
            acks: JoinSet::new(),
            resends: Vec::new(),
            hold_until: None,
            failing: 0,
            stopped_until: None,
            lingering_since: None,
            shown: (0, 0),
        }
    }

    /// Batches submitted and not yet confirmed, failed ones waiting included.
    fn outstanding(&self) -> usize {
        self.in_flight.len() + self.resends.len()
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.outstanding() == 0
    }

    /// The smallest seq still queued, in flight or waiting to be sent again (a batch's
    /// seqs are in outbox order, so its first is its smallest).
    fn oldest_outstanding(&self) -> Option<i64> {
        let queued = self.queue.front().map(|q| q.seq);
        let flying = self
            .in_flight
            .values()
            .filter_map(|b| b.seqs.first().copied());
        let resending = self
            .resends
            .iter()
            .filter_map(|r| r.batch.seqs.first().copied());
        queued.into_iter().chain(flying).chain(resending).min()
    }

    /// The range delete that removes exactly `batch`'s rows, when there is one: its seqs
    /// are one run and nothing older is outstanding.
    fn range_of(&self, batch: &Batch) -> Option<(i64, i64)> {
        batch
            .contiguous()
            .filter(|(first, _)| self.oldest_outstanding().is_none_or(|o| o > *first))
    }
}

/// Where a batch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Handing it over (`Sink::submit`).
    Submit,
    /// Waiting for its confirmation (the receipt's acknowledgement).
    Confirm,
}

/// What to do next, decided from the bookkeeping alone.
enum Next {
    /// Send this failed batch again.
    Resend(Resend),
    /// Send these queued rows (indices into the queue).
    Send(Vec<usize>),
    /// Nothing can go now.
    Wait,
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
            // Not fatal: `submit` decides between retrying and stopping, with the same error.
            warn!(error = %chain(&e), "sink {name} failed its start-up health check");
        }

        let mut d = Delivery::new(self.sink.batch_limits());
        let mut read_attempt = 0u32;
        let mut idle_since = Instant::now();
        loop {
            if stop.hard.is_cancelled() {
                if d.outstanding() > 0 {
                    info!(batches = d.outstanding(), "shutdown grace period over with batches of sink {name} in flight; they stay in the outbox and are sent again after restart");
                }
                break;
            }
            let draining = stop.drain.is_cancelled();
            let shown = (d.outstanding(), d.window.allowed());
            if shown != d.shown {
                d.shown = shown;
                self.cell.set_in_flight(shown.0, shown.1);
            }
            let now = Instant::now();
            if d.stopped_until.is_some_and(|t| t <= now) {
                d.stopped_until = None;
                info!("retrying delivery to sink {name} after it was stopped");
            }
            if d.stopped_until.is_some() && draining {
                // A destination that refuses everything will not drain.
                break;
            }

            // Read ahead.
            let want = d.limits.max_events.max(1) * READ_AHEAD_BATCHES;
            if !d.at_end && d.queue.len() < d.limits.max_events.max(1) {
                let n = want - d.queue.len();
                match self.read(&mut d, n).await {
                    Ok(()) => read_attempt = 0,
                    Err(e) => {
                        let delay =
                            retry_delay(read_attempt, self.retry.base, self.retry.cap, &mut rng);
                        read_attempt = read_attempt.saturating_add(1);
                        warn!(error = %e, "cannot read the outbox of sink {name}; retrying in {delay:?}");
                        if !sleep_or_stop(delay, &stop.hard).await {
                            break;
                        }
                        continue;
                    }
                }
            }

            // Send what may go.
            match self.next(&mut d, draining, Instant::now()) {
                Next::Resend(r) => {
                    if !self.resend(&mut d, r, &stop.hard, &mut rng).await {
                        break;
                    }
                    continue;
                }
                Next::Send(rows) => {
                    if !self.send(&mut d, rows, &stop.hard, &mut rng).await {
                        break;
                    }
                    continue;
                }
                Next::Wait => {}
            }

            if d.idle() && d.at_end {
                if draining {
                    info!("outbox of sink {name} drained");
                    break;
                }
                if d.stopped_until.is_none() {
                    self.cell.set_state(SinkState::Idle);
                }
            } else {
                idle_since = Instant::now();
            }

            // Wait for a confirmation, a poke, a timer or a stop.
            let timer = [
                d.hold_until,
                d.stopped_until,
                d.resends.iter().map(|r| r.due).min(),
                d.lingering_since.map(|t| t + d.limits.linger),
                Some(idle_since + IDLE_WAKE),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            // Nothing is sent before a backoff or a stop ends, so no timer may fire before:
            // a linger or a resend already due would otherwise wake the loop at once, again
            // and again, for the whole backoff (a busy HEC cost a core).
            let timer = [d.hold_until, d.stopped_until]
                .into_iter()
                .flatten()
                .fold(timer, Instant::max);
            tokio::select! {
                biased;
                _ = stop.hard.cancelled() => {}
                Some(done) = d.acks.join_next(), if !d.acks.is_empty() => {
                    match done {
                        Ok((id, result)) => {
                            if !self.settle(&mut d, id, result, &stop.hard, &mut rng).await {
                                break;
                            }
                        }
                        // An acknowledgement task does not panic; if one did, its batch
                        // is lost track of here but still in the outbox (sent after restart).
                        Err(e) => warn!(error = %e, "an acknowledgement of sink {name} failed"),
                    }
                }
                _ = stop.drain.cancelled(), if !draining => {}
                _ = self.cell.wake.notified() => d.at_end = false,
                _ = tokio::time::sleep_until(timer) => {
                    if Instant::now() >= idle_since + IDLE_WAKE {
                        d.at_end = false;
                        idle_since = Instant::now();
                    }
                }
            }
        }

        // Abandon whatever is still awaiting confirmation: it is in the outbox.
        d.acks.abort_all();
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, self.sink.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %chain(&e), "sink {name} failed to shut down cleanly"),
            Err(_) => warn!("sink {name} did not shut down within {SHUTDOWN_TIMEOUT:?}"),
        }
        self.refresh_depth().await;
        self.cell.set_state(SinkState::Finished);
        debug!("sink worker stopped");
    }

    /// Reads up to `n` rows after the cursor into the queue, decoded and keyed. Rows that
    /// cannot be read back or decoded are dropped (counted, logged) so they cannot wedge the
    /// sink.
    async fn read(&self, d: &mut Delivery, n: usize) -> Result<(), String> {
        let sink = self.cell.name.as_str();
        let after = d.cursor;
        // Bounded in bytes too, by the rows' average size so far: a read-ahead of large
        // documents stays a few batches' worth of memory. (Not by `read_batch`'s byte
        // bound: a read cut by it would look like the end of the outbox.)
        let bound = d.limits.max_bytes.saturating_mul(READ_AHEAD_BATCHES);
        let n = n.min((bound / d.row_bytes.max(1)).max(1));
        let rows = match self.outbox.read_batch(sink, after, n, usize::MAX).await {
            Ok(rows) => rows,
            Err(e) => {
                // One row's payload gone or corrupt: drop it, read again.
                if let Some(seq) = unreadable_row(&e) {
                    if self.skip_unreadable(seq, &e).await {
                        return Ok(());
                    }
                }
                return Err(chain(&e));
            }
        };
        d.at_end = rows.len() < n;
        if !rows.is_empty() {
            let bytes: usize = rows.iter().map(|r| r.payload.len()).sum();
            d.row_bytes = (d.row_bytes + bytes / rows.len()) / 2;
        }
        let mut undecodable = Vec::new();
        for row in rows {
            d.cursor = d.cursor.max(row.seq);
            match self.decode(&row) {
                Some(event) => d.queue.push_back(Queued {
                    seq: row.seq,
                    key: lane_key(&event.tenant_id, event.feed.as_str(), &event.id),
                    bytes: row.payload.len(),
                    event,
                }),
                None => undecodable.push(row.seq),
            }
        }
        if !undecodable.is_empty() {
            if let Err(e) = self.outbox.ack_rows(&self.cell.name, undecodable).await {
                // They stay in the outbox and are skipped again after a restart.
                warn!(error = %chain(&e), "cannot remove undecodable outbox rows of sink {}", self.cell.name);
            }
        }
        Ok(())
    }

    /// The next thing to send, if the window, the backoff and the lanes allow it.
    fn next(&self, d: &mut Delivery, draining: bool, now: Instant) -> Next {
        if d.stopped_until.is_some() {
            return Next::Wait;
        }
        if d.hold_until.is_some_and(|t| t > now) {
            return Next::Wait;
        }
        d.hold_until = None;
        // A failed batch goes first: its items' later versions wait behind it.
        if let Some(i) = d
            .resends
            .iter()
            .enumerate()
            .filter(|(_, r)| r.due <= now)
            .min_by_key(|(_, r)| (r.due, r.batch.seqs.first().copied()))
            .map(|(i, _)| i)
        {
            return Next::Resend(d.resends.swap_remove(i));
        }
        if d.outstanding() >= d.window.allowed() {
            return Next::Wait;
        }
        let pick = d.lanes.pick(
            d.queue.iter().map(|q| (q.key, q.bytes)),
            d.limits.max_events.max(1),
            d.limits.max_bytes,
        );
        if pick.rows.is_empty() {
            return Next::Wait;
        }
        let everything_waiting = !pick.skipped && pick.rows.len() == d.queue.len() && d.at_end;
        if !pick.full && everything_waiting && !draining && !d.limits.linger.is_zero() {
            // The batch holds everything waiting, yet is not full: give the pollers up to
            // `linger` to add more, so that a trickle of events becomes fewer, fuller
            // requests (HEC `batch.linger_ms`).
            let since = *d.lingering_since.get_or_insert(now);
            if now < since + d.limits.linger {
                return Next::Wait;
            }
        }
        d.lingering_since = None;
        Next::Send(pick.rows)
    }

    /// Submits the queued rows `rows` as a new batch. False on the hard stop.
    async fn send(
        &mut self,
        d: &mut Delivery,
        rows: Vec<usize>,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        // Usually the batch is the head of the queue; otherwise one pass splits the queue.
        let taken: Vec<Queued> = if rows.iter().enumerate().all(|(n, i)| n == *i) {
            d.queue.drain(..rows.len()).collect()
        } else {
            let mut picked = vec![false; d.queue.len()];
            for i in &rows {
                if let Some(p) = picked.get_mut(*i) {
                    *p = true;
                }
            }
            let mut taken = Vec::with_capacity(rows.len());
            let mut kept = VecDeque::with_capacity(d.queue.len().saturating_sub(rows.len()));
            for (q, p) in d.queue.drain(..).zip(picked) {
                if p {
                    taken.push(q);
                } else {
                    kept.push_back(q);
                }
            }
            d.queue = kept;
            taken
        };
        let batch = Batch {
            seqs: taken.iter().map(|q| q.seq).collect(),
            keys: taken.iter().map(|q| q.key).collect(),
            sent: Instant::now(),
            in_flight_at_send: d.outstanding(),
            attempt: 0,
        };
        let events: Vec<Event> = taken.into_iter().map(|q| q.event).collect();
        d.lanes.hold(&batch.keys);
        self.submit(d, batch, events, hard, rng).await
    }

    /// Reads a failed batch back from the outbox and submits it again. False on the hard
    /// stop.
    async fn resend(
        &mut self,
        d: &mut Delivery,
        mut r: Resend,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        let read = self
            .outbox
            .read_rows(&self.cell.name, r.batch.seqs.clone())
            .await;
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                if let Some(seq) = unreadable_row(&e) {
                    if self.skip_unreadable(seq, &e).await {
                        r.batch.seqs.retain(|s| *s != seq);
                    }
                }
                r.due = Instant::now() + self.retry.base;
                warn!(error = %chain(&e), "cannot read a batch of sink {} back from its outbox; retrying", self.cell.name);
                d.resends.push(r);
                return true;
            }
        };
        let mut events = Vec::with_capacity(rows.len());
        let mut present = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(e) = self.decode(row) {
                events.push(e);
                present.push(row.seq);
            }
        }
        r.batch.seqs = present;
        r.batch.sent = Instant::now();
        r.batch.in_flight_at_send = d.outstanding();
        debug!(
            events = events.len(),
            attempt = r.batch.attempt,
            "sending a failed batch again"
        );
        self.submit(d, r.batch, events, hard, rng).await
    }

    /// Hands `events` (the rows of `batch`) to the sink. False on the hard stop.
    async fn submit(
        &mut self,
        d: &mut Delivery,
        batch: Batch,
        events: Vec<Event>,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        let id = d.next_id;
        d.next_id += 1;
        if events.is_empty() {
            // Nothing left to send (rows gone or undecodable): done.
            return self.confirmed(d, batch, hard, rng).await;
        }
        self.cell.set_state(SinkState::Delivering);
        let submitted = tokio::select! {
            biased;
            _ = hard.cancelled() => {
                info!(batch = events.len(), "shutdown grace period over with a batch of sink {} being sent; it stays in the outbox and is sent again after restart", self.cell.name);
                return false;
            }
            r = self.sink.submit(&events) => r,
        };
        drop(events);
        match submitted {
            Ok(Receipt::Delivered) => {
                d.failing = 0;
                self.confirmed(d, batch, hard, rng).await
            }
            Ok(Receipt::Pending(ack)) => {
                d.failing = 0;
                d.in_flight.insert(id, batch);
                d.acks.spawn(async move { (id, ack.await) });
                true
            }
            Err(e) => {
                // The destination pushed back on the submission itself: no new batch for a
                // while either, or a busy HEC would get a 503 per queued batch.
                let delay = retry_delay(d.failing, self.retry.base, self.retry.cap, rng);
                d.failing = d.failing.saturating_add(1);
                if e.is_transient() {
                    d.hold_until = Some(Instant::now() + delay);
                }
                self.failed(d, batch, e, Stage::Submit, rng).await;
                true
            }
        }
    }

    /// A batch's acknowledgement came in. False on the hard stop.
    async fn settle(
        &mut self,
        d: &mut Delivery,
        id: u64,
        result: Result<(), SinkError>,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        let Some(batch) = d.in_flight.remove(&id) else {
            return true;
        };
        match result {
            Ok(()) => {
                // Range delete when nothing older is outstanding: the common case, cheaper
                // than deleting row by row.
                let range = d.range_of(&batch);
                self.delete(d, batch, range, hard, rng).await
            }
            Err(e) => {
                self.failed(d, batch, e, Stage::Confirm, rng).await;
                true
            }
        }
    }

    /// A batch delivered without anything left to wait for.
    async fn confirmed(
        &mut self,
        d: &mut Delivery,
        batch: Batch,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        let range = d.range_of(&batch);
        self.delete(d, batch, range, hard, rng).await
    }

    /// Deletes a confirmed batch's rows (`range`: by one range delete) and frees its lanes.
    /// False on the hard stop.
    async fn delete(
        &mut self,
        d: &mut Delivery,
        batch: Batch,
        range: Option<(i64, i64)>,
        hard: &CancellationToken,
        rng: &mut SmallRng,
    ) -> bool {
        let took = batch.sent.elapsed();
        // Delivered. A failed delete is retried: giving up would only send the batch again.
        let mut attempt = 0u32;
        loop {
            let sink = self.cell.name.as_str();
            let deleted = match range {
                Some((_, last)) => self.outbox.ack(sink, last).await,
                None => self.outbox.ack_rows(sink, batch.seqs.clone()).await,
            };
            match deleted.map_err(|e| chain(&e)) {
                Ok(_) => break,
                Err(e) => {
                    let delay = retry_delay(attempt, self.retry.base, self.retry.cap, rng);
                    attempt = attempt.saturating_add(1);
                    warn!(error = %e, "cannot remove delivered events from the outbox of sink {}; retrying in {delay:?}", self.cell.name);
                    if !sleep_or_stop(delay, hard).await {
                        return false;
                    }
                }
            }
        }
        d.lanes.release(&batch.keys);
        d.window.confirmed(took, batch.in_flight_at_send);
        self.cell
            .sent
            .fetch_add(batch.seqs.len() as u64, Ordering::Relaxed);
        {
            let mut i = self.cell.inner.lock();
            i.last_delivery = Some(Utc::now());
            if !batch.seqs.is_empty() {
                i.ack_latency.observe(took);
            }
        }
        debug!(
            events = batch.seqs.len(),
            ?took,
            in_flight = d.in_flight.len(),
            lanes = d.lanes.held(),
            window = d.window.allowed(),
            "batch delivered"
        );
        self.refresh_depth().await;
        true
    }

    /// A batch failed: it goes again alone after a backoff (transient), or the sink stops
    /// until the long retry (permanent). Its lanes stay held meanwhile.
    async fn failed(
        &mut self,
        d: &mut Delivery,
        mut batch: Batch,
        e: SinkError,
        stage: Stage,
        rng: &mut SmallRng,
    ) {
        let text = chain(&e);
        self.record_failure(&text).await;
        let now = Instant::now();
        let delay = retry_delay(batch.attempt, self.retry.base, self.retry.cap, rng);
        batch.attempt = batch.attempt.saturating_add(1);
        if e.is_transient() {
            // Only a confirmation that did not come in time narrows the window: that is
            // batches in flight hurting. A refused submission (503, reset) already pauses
            // every submission (`hold_until`); cutting the window for each refusal as well
            // took it from 1000 to 1 in one 15 s busy period, and a window of 1 held by a
            // batch the indexers lost waits out the whole ack timeout, since no later
            // batch can overtake it.
            if stage == Stage::Confirm && e.is_push_back() {
                d.window.pushed_back(now);
            }
            self.cell.set_state(SinkState::Retrying);
            warn!(
                error = %text,
                attempt = batch.attempt,
                events = batch.seqs.len(),
                in_flight = d.in_flight.len(),
                window = d.window.allowed(),
                "delivery of a batch to sink {} failed; sending it again in {delay:?}",
                self.cell.name
            );
            d.resends.push(Resend {
                batch,
                due: now + delay,
            });
        } else {
            let until = now + self.retry.stopped;
            d.stopped_until = Some(until);
            self.stopped(&e, &text).await;
            d.resends.push(Resend { batch, due: until });
        }
    }

    /// The event of `row`. A row that does not decode (written by an incompatible build, or
    /// damaged) can never be delivered; it is skipped with an error rather than wedging the
    /// sink forever.
    fn decode(&self, row: &OutboxRow) -> Option<Event> {
        match Event::from_outbox_bytes(&row.payload) {
            Ok(e) => Some(e),
            Err(e) => {
                self.cell.inner.lock().undecodable += 1;
                error!(
                    seq = row.seq,
                    tenant = %row.tenant,
                    error = %e,
                    "outbox row of sink {} cannot be decoded; skipping it (this event is lost)",
                    self.cell.name
                );
                None
            }
        }
    }

    /// Drops the outbox row `seq` whose payload cannot be read back (`e`: its segment file
    /// is gone or the bytes fail their checksum). It can never be delivered; keeping it would
    /// stop this sink for every tenant. Counted and logged as lost. False if even the
    /// removal failed (the caller retries the read).
    async fn skip_unreadable(&self, seq: i64, e: &StateError) -> bool {
        match self.outbox.ack_rows(&self.cell.name, vec![seq]).await {
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
                warn!(seq, error = %chain(&removal), "cannot remove the unreadable outbox row of sink {}", self.cell.name);
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
        if let Err(e) = self
            .outbox
            .record_error(&self.cell.name, text.to_owned())
            .await
        {
            warn!(error = %chain(&e), "cannot record the delivery failure in the state store");
        }
    }

    async fn stopped(&self, e: &SinkError, text: &str) {
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
        match self.outbox.depth(&self.cell.name).await {
            Ok(depth) => self.cell.set_depth(depth),
            Err(e) => {
                warn!(error = %chain(&e), "cannot read the outbox depth of sink {}", self.cell.name)
            }
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
    use relay_state::{OutboxDepth, PollCommit, StateStore, StoreOptions};
    use std::collections::HashMap;

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
            outbox: relay_state::State::start(Arc::clone(state))
                .unwrap()
                .outbox(),
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

    // ----- several batches in flight, HEC indexer acknowledgement --------------------

    use relay_sinks::splunk_hec::test_receiver::{AckMode, HecReceiverConfig};

    /// Version `v` of item `item`: the version time counts up with `v`, and the document
    /// says which version it is, so the receiver's copy can be checked for order.
    fn version(item: usize, v: u32) -> Event {
        let mut e = event(item);
        e.version_time = chrono::DateTime::from_timestamp(1_700_000_000 + i64::from(v), 0).unwrap();
        e.raw = relay_sinks::RawDoc::parse(format!(r#"{{"id":"da{item}","v":{v}}}"#)).unwrap();
        e
    }

    fn append_events(state: &StateStore, events: &[Event]) {
        let payloads: Vec<Vec<u8>> = events.iter().map(Event::to_outbox_bytes).collect();
        append_payloads(state, &payloads);
    }

    async fn ack_receiver() -> HecReceiver {
        HecReceiver::start(HecReceiverConfig {
            indexer_ack: true,
            ..HecReceiverConfig::default()
        })
        .await
        .unwrap()
    }

    /// A HEC sink with indexer ack, 10 events per request, no linger, acknowledgement
    /// timeout `timeout`, and the ack endpoint asked every 100 ms at most.
    fn start_acked(
        receiver: &HecReceiver,
        state: &Arc<StateStore>,
        timeout: Duration,
    ) -> (Arc<SinkCell>, StopSignals, tokio::task::JoinHandle<()>) {
        start_with(receiver, state, |config| {
            config.batch.max_events = 10;
            config.batch.linger = Duration::ZERO;
            config.indexer_ack.enabled = true;
            config.indexer_ack.timeout = timeout;
            config.indexer_ack.poll_interval = Duration::from_millis(100);
        })
    }

    async fn wait_sent(cell: &SinkCell, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while cell.sent.load(Ordering::Relaxed) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} confirmed within {within:?}",
                cell.sent.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn ids(receiver: &HecReceiver) -> Vec<String> {
        receiver
            .events()
            .iter()
            .map(|e| e.envelope["event"]["id"].as_str().unwrap().to_string())
            .collect()
    }

    async fn finish(stop: StopSignals, task: tokio::task::JoinHandle<()>) {
        stop.drain.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// Twenty batches whose acknowledgement takes 600 ms each are all outstanding at once:
    /// delivered in about one acknowledgement delay, not twenty, with every pending id asked
    /// for in the same query.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_batches_await_their_indexer_acks_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = ack_receiver().await;
        receiver.set_ack_mode(AckMode::AfterDelay(Duration::from_millis(600)));
        append(&state, 0..200);
        let started = std::time::Instant::now();
        let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_secs(30));
        wait_sent(&cell, 200, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "20 batches × 600 ms one at a time would take 12 s; took {took:?}"
        );
        let widest = receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/services/collector/ack" && r.status == 200)
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["acks"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .max()
            .unwrap();
        assert!(widest >= 10, "one query asked for {widest} ids at most");
        assert_eq!(receiver.events().len(), 200, "no batch was sent twice");
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        finish(stop, task).await;
    }

    /// One request is never acknowledged: only its batch is sent again, after the timeout;
    /// every other batch is confirmed meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_never_acknowledged_batch_is_resent_alone_and_holds_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = ack_receiver().await;
        receiver.set_ack_mode(AckMode::NeverNth(3));
        append(&state, 0..100);
        let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_secs(3));
        // Everything but the lost batch, long before its 3 s timeout.
        wait_sent(&cell, 90, Duration::from_millis(2500)).await;
        assert_eq!(state.depth(SINK).unwrap().rows, 10);
        wait_sent(&cell, 100, Duration::from_secs(10)).await;

        let got = ids(&receiver);
        assert_eq!(got.len(), 110, "exactly one batch twice");
        let lost: Vec<String> = receiver
            .events()
            .iter()
            .filter(|e| e.ack_id == Some(2))
            .map(|e| e.envelope["event"]["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(lost.len(), 10);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &got {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        for i in 0..100 {
            let id = format!("da{i}");
            let expect = if lost.contains(&id) { 2 } else { 1 };
            assert_eq!(counts.get(id.as_str()), Some(&expect), "{id}");
        }
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        assert_eq!(cell.inner.lock().failures, 1);
        finish(stop, task).await;
    }

    /// HEC is busy for a while, on the event endpoint and on the ack endpoint: the worker
    /// backs off, keeps the acks already pending (nothing is sent twice) and delivers
    /// everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_hec_backs_off_without_losing_pending_acks() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = ack_receiver().await;
        receiver.set_ack_mode(AckMode::AfterDelay(Duration::from_millis(300)));
        append(&state, 0..100);
        let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_secs(30));
        // Let batches go out and their acks become pending, then turn busy.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while receiver.pending_acks() < 5 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        receiver.set_ack_busy(4);
        receiver.set_busy(3);
        append(&state, 100..200);
        cell.wake.notify_one();
        wait_sent(&cell, 200, Duration::from_secs(20)).await;
        assert_eq!(
            receiver.events().len(),
            200,
            "busy periods cost no duplicates"
        );
        let refused_posts = receiver
            .event_requests()
            .iter()
            .filter(|r| r.status == 503)
            .count();
        assert_eq!(refused_posts, 3);
        assert_eq!(cell.inner.lock().failures, 3);
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        finish(stop, task).await;
    }

    /// Splunk restarts after indexing batches it had not yet confirmed: their statuses are
    /// gone, so those batches are sent again (counted as duplicates) and nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_after_indexing_resends_the_unconfirmed_batches_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let mut receiver = ack_receiver().await;
        receiver.set_ack_mode(AckMode::Never);
        append(&state, 0..50);
        let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_secs(4));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while receiver.events().len() < 50 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Indexed, not confirmed; the restart forgets every status and restarts the ids.
        receiver.restart().await.unwrap();
        receiver.set_ack_mode(AckMode::Immediate);
        append(&state, 50..80);
        cell.wake.notify_one();
        wait_sent(&cell, 80, Duration::from_secs(20)).await;

        let got = ids(&receiver);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &got {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        for i in 0..80 {
            let n = counts.get(format!("da{i}").as_str()).copied().unwrap_or(0);
            let expect = if i < 50 { 2 } else { 1 };
            assert_eq!(
                n, expect,
                "da{i}: the first 50 were indexed before the reset"
            );
        }
        assert_eq!(
            got.len(),
            130,
            "duplicates: the 50 unconfirmed at the reset"
        );
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        finish(stop, task).await;
    }

    /// This process's CPU time (utime + stime), from /proc.
    fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        // USER_HZ is 100 on every Linux this runs on.
        Duration::from_millis((f[0] + f[1]) * 10)
    }

    /// HEC busy for three seconds while events keep coming and partial batches linger: the
    /// worker waits out its backoff asleep. (A linger or resend already due used to wake it
    /// at once, over and over, until the backoff ended: a core for the whole busy period.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_hec_is_waited_out_without_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = ack_receiver().await;
        let busy = Duration::from_secs(3);
        receiver.set_busy_until(Some(std::time::Instant::now() + busy));
        let (cell, stop, task) = start_with(&receiver, &state, |config| {
            config.batch.max_events = 10;
            config.batch.linger = Duration::from_millis(100);
            config.indexer_ack.enabled = true;
            config.indexer_ack.poll_interval = Duration::from_millis(100);
        });
        let cpu = cpu_time();
        for i in 0..30 {
            append(&state, i * 5..i * 5 + 5);
            cell.wake.notify_one();
            tokio::time::sleep(busy / 30).await;
        }
        let used = cpu_time() - cpu;
        assert!(
            used < Duration::from_millis(1500),
            "{used:?} of CPU during {busy:?} of backoff"
        );
        wait_sent(&cell, 150, Duration::from_secs(20)).await;
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        assert!(cell.inner.lock().failures > 0, "HEC was busy");
        assert_eq!(
            cell.inner.lock().in_flight_limit,
            relay_config::DEFAULT_HEC_MAX_IN_FLIGHT,
            "refused submissions pause sending; they do not narrow the window"
        );
        finish(stop, task).await;
    }

    /// Every third request is indexed and then answered with a reset connection: the sink
    /// cannot know it arrived, so exactly those batches are sent again. Duplicates are the
    /// events of the reset requests, each once more; nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_reset_after_indexing_duplicate_only_their_batches() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
        );
        let receiver = ack_receiver().await;
        receiver.set_reset_every(3);
        append(&state, 0..100);
        let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_secs(30));
        wait_sent(&cell, 100, Duration::from_secs(20)).await;

        let events = receiver.events();
        let unanswered: Vec<&str> = events
            .iter()
            .filter(|e| !e.answered)
            .map(|e| e.envelope["event"]["id"].as_str().unwrap())
            .collect();
        assert!(receiver.resets() >= 3, "{} resets", receiver.resets());
        assert_eq!(unanswered.len() as u64, receiver.resets() * 10);
        let mut answered: HashMap<&str, usize> = HashMap::new();
        for e in events.iter().filter(|e| e.answered) {
            *answered
                .entry(e.envelope["event"]["id"].as_str().unwrap())
                .or_default() += 1;
        }
        for i in 0..100 {
            let id = format!("da{i}");
            assert_eq!(
                answered.get(id.as_str()),
                Some(&1),
                "{id}: one answered copy, nothing lost"
            );
        }
        assert_eq!(
            events.len(),
            100 + unanswered.len(),
            "duplicates: the events of the reset requests, once each"
        );
        assert_eq!(state.depth(SINK).unwrap().rows, 0);
        assert_eq!(cell.inner.lock().failures, receiver.resets());
        finish(stop, task).await;
    }

    /// Random refusals, lost acknowledgements and several versions per item: whatever is
    /// sent again, per item the receiver sees versions in version order, and every
    /// version arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_item_order_holds_under_random_failures_and_resends() {
        use rand::{Rng, SeedableRng};
        for seed in 0..3u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let state = Arc::new(
                StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default())
                    .unwrap(),
            );
            let receiver = ack_receiver().await;
            receiver.set_ack_mode(AckMode::NeverEvery(rng.gen_range(3..6)));
            for _ in 0..rng.gen_range(2..6) {
                receiver.push_reply(503, r#"{"text":"Server is busy","code":9}"#);
            }
            // 12 items, 120 versions in random item order, versions counting up per item.
            let mut next = [0u32; 12];
            let events: Vec<Event> = (0..120)
                .map(|_| {
                    let item = rng.gen_range(0..12);
                    next[item] += 1;
                    version(item, next[item])
                })
                .collect();
            append_events(&state, &events);
            let (cell, stop, task) = start_acked(&receiver, &state, Duration::from_millis(700));
            wait_sent(&cell, 120, Duration::from_secs(60)).await;

            let mut last: HashMap<String, u64> = HashMap::new();
            let mut seen: std::collections::HashSet<(String, u64)> = Default::default();
            for e in receiver.events() {
                let id = e.envelope["event"]["id"].as_str().unwrap().to_string();
                let v = e.envelope["event"]["v"].as_u64().unwrap();
                let before = last.insert(id.clone(), v).unwrap_or(0);
                assert!(
                    v >= before,
                    "seed {seed}: {id} version {v} arrived after {before}"
                );
                seen.insert((id, v));
            }
            assert_eq!(seen.len(), 120, "seed {seed}: every version arrived");
            assert_eq!(state.depth(SINK).unwrap().rows, 0);
            finish(stop, task).await;
        }
    }
}
