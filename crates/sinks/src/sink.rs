//! The sink contract: what every sink does and what the worker may rely on. The closed set
//! of sinks that implements it is [`AnySink`](crate::AnySink) (`any.rs`).

use crate::error::SinkError;
use crate::event::Event;
use crate::splunk_hec::HecLabels;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How big a batch the sink worker should hand to [`Sink::submit`], and how long it may
/// wait for one to fill.
///
/// The worker takes events from the head of the outbox, in order, until adding one more
/// would exceed `max_events` or `max_bytes` (summing [`Event::approx_bytes`]). An event
/// larger than `max_bytes` on its own is sent alone; a sink that cannot take it returns
/// [`SinkError::Rejected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// At most this many events per batch.
    pub max_events: usize,
    /// At most about this many bytes per batch.
    pub max_bytes: usize,
    /// How long a partial batch that holds everything waiting may wait for more events
    /// before it is sent anyway (HEC `batch.linger_ms`); zero: send what is there at once.
    pub linger: Duration,
    /// At most this many batches submitted and not yet acknowledged at once (the sink's
    /// `max_in_flight`). The worker adapts its window between 1 and this.
    pub max_in_flight: usize,
}

impl BatchLimits {
    /// `max_events` / `max_bytes` with no linger and one batch in flight.
    pub const fn new(max_events: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_events,
            max_bytes,
            linger: Duration::ZERO,
            max_in_flight: 1,
        }
    }
}

/// What [`Sink::submit`] hands back: the batch is either already durably accepted, or
/// accepted for now with the destination's confirmation still to come.
#[must_use = "a pending receipt must be awaited before the batch counts as delivered"]
pub enum Receipt {
    /// Durably accepted: the batch is delivered.
    Delivered,
    /// Handed over; the future resolves `Ok` once the destination confirmed every event
    /// (HEC indexer acknowledgement), or `Err` when it will not (timeout: send the batch
    /// again). It borrows nothing: the worker may drop the batch's events meanwhile.
    Pending(Acknowledgement),
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Receipt::Delivered => f.write_str("Delivered"),
            Receipt::Pending(_) => f.write_str("Pending"),
        }
    }
}

impl Receipt {
    /// Waits for the confirmation, if one is due.
    pub async fn confirmed(self) -> Result<(), SinkError> {
        match self {
            Receipt::Delivered => Ok(()),
            Receipt::Pending(ack) => ack.await,
        }
    }
}

/// The destination's confirmation of one submitted batch, still to come.
pub struct Acknowledgement(Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>);

impl Acknowledgement {
    /// Wraps the future that resolves when the batch is confirmed.
    pub fn new(f: impl Future<Output = Result<(), SinkError>> + Send + 'static) -> Self {
        Acknowledgement(Box::pin(f))
    }
}

impl Future for Acknowledgement {
    type Output = Result<(), SinkError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// What every sink does. Implemented by each sink and by [`AnySink`](crate::AnySink), which the pipeline
/// holds; the trait exists so that each sink is checked against the same contract, not for
/// `dyn` dispatch. The engine knows sinks only through this trait: batch limits, linger and
/// window come from [`batch_limits`](Sink::batch_limits), live label changes go through
/// [`labels`](Sink::labels).
///
/// # The contract
///
/// * **Acknowledgement.** [`submit`](Sink::submit) hands a batch over and returns a
///   [`Receipt`]; the batch is delivered once the receipt is confirmed (`Delivered`, or its
///   `Pending` acknowledgement resolved `Ok`): the file sink after `fsync`; Splunk HEC after
///   a 200 — and, with indexer acknowledgement on, once `/services/collector/ack` reports
///   every request of the batch indexed; Kafka after a successful delivery report with
///   `acks=all` for every message; syslog after the bytes were written and flushed on a
///   connection that is still healthy. The worker deletes a batch's rows from the outbox
///   only after that, batch by batch, in whatever order confirmations come.
///   [`send`](Sink::send) is `submit` and the wait in one.
/// * **Failure.** An `Err` from `submit` or from the acknowledgement means the batch counts
///   as not delivered, in whole; the worker retries that batch alone (transient) or stops
///   the sink (permanent), see [`SinkError::is_transient`]; only failures that are push-back
///   ([`SinkError::is_push_back`]: busy, unreachable, not confirmed in time — not a batch the
///   destination lost) narrow the worker's window of batches in flight. Part of a failed batch may have
///   arrived already, so a retry may duplicate events: the relay is at-least-once, and
///   these batches are where duplicates come from.
/// * **Order.** Events of one batch are delivered in slice order; `submit` takes `&mut
///   self`, so submissions are handed over one at a time, in the worker's order. Several
///   batches may await their acknowledgement at once (up to `max_in_flight`); the worker
///   never has two batches holding versions of the same item in flight, so per item,
///   versions arrive in version order even when a batch is sent again.
/// * **Batching.** [`batch_limits`](Sink::batch_limits) tells the worker how to cut
///   batches; a sink may still split a batch into several requests internally, but confirms
///   it only when all of them succeeded.
/// * **Health.** [`healthcheck`](Sink::healthcheck) probes the destination without sending
///   events (open the file, HEC `/services/collector/health`, Kafka metadata, TCP connect); it
///   runs at start-up and backs `/readyz`. It does not replace `submit` errors.
/// * **Shutdown.** [`shutdown`](Sink::shutdown) flushes and closes: after it returns `Ok`
///   nothing is buffered inside the sink (Kafka `flush()`, outstanding HEC acks abandoned —
///   the outbox still has them, so they are re-sent after restart).
/// * **Blocking.** Sinks never block the async runtime: blocking I/O runs on
///   `spawn_blocking`.
pub trait Sink {
    /// The sink's configured name, for logs, metrics and errors.
    fn name(&self) -> &str;

    /// How the worker should cut batches for this sink, how long a partial batch may
    /// linger, and how many batches may await acknowledgement at once.
    fn batch_limits(&self) -> BatchLimits;

    /// A handle on the sink's per-tenant labels, for sinks that have them (HEC
    /// `[sink_overrides.NAME]`): how a reload changes them while the worker owns the sink.
    fn labels(&self) -> Option<HecLabels> {
        None
    }

    /// Checks that the destination can take events, without sending any.
    fn healthcheck(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Hands `batch` over, in order; see the trait docs for what the [`Receipt`] means.
    fn submit(
        &mut self,
        batch: &[Event],
    ) -> impl Future<Output = Result<Receipt, SinkError>> + Send;

    /// Delivers `batch`, in order; `Ok` means durably accepted (see the trait docs).
    fn send(&mut self, batch: &[Event]) -> impl Future<Output = Result<(), SinkError>> + Send
    where
        Self: Send,
    {
        async move { self.submit(batch).await?.confirmed().await }
    }

    /// Flushes anything buffered and releases connections and files.
    fn shutdown(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}
