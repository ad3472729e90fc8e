//! The sink contract and the closed set of sinks.

use crate::error::SinkError;
use crate::event::Event;
use crate::file::FileSink;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSink;
use crate::splunk_hec::SplunkHecSink;
use crate::syslog::SyslogSink;
use std::future::Future;

/// How big a batch the sink worker should hand to [`Sink::send`].
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
}

/// What every sink does. Implemented by each sink and by [`AnySink`], which the pipeline
/// holds; the trait exists so that each sink is checked against the same contract, not for
/// `dyn` dispatch.
///
/// # The contract
///
/// * **Acknowledgement.** [`send`](Sink::send) returns `Ok` only once the destination has
///   durably accepted every event of the batch: the file sink after `fsync`; Splunk HEC after
///   a 200 — and, with indexer acknowledgement on, after `/services/collector/ack` reports
///   the batch indexed; Kafka after a successful delivery report with `acks=all` for every
///   message; syslog after the bytes were written and flushed on a connection that is still
///   healthy. The worker deletes the batch from the outbox only after `Ok`.
/// * **Failure.** On `Err` the batch counts as not delivered, in whole; the worker retries the
///   same batch (transient) or stops the sink (permanent), see [`SinkError::is_transient`].
///   Part of a failed batch may have arrived already, so a retry may duplicate events: the
///   relay is at-least-once, and these few events in flight are where duplicates come from.
/// * **Order.** Events of one batch are delivered in slice order, and a sink finishes one
///   `send` before the next starts (`&mut self`), so outbox order is delivery order.
/// * **Batching.** [`batch_limits`](Sink::batch_limits) tells the worker how to cut
///   batches; a sink may still split a batch into several requests internally, but returns
///   `Ok` only when all of them succeeded.
/// * **Health.** [`healthcheck`](Sink::healthcheck) probes the destination without sending
///   events (open the file, HEC `/services/collector/health`, Kafka metadata, TCP connect); it
///   runs at start-up and backs `/readyz`. It does not replace `send` errors.
/// * **Shutdown.** [`shutdown`](Sink::shutdown) flushes and closes: after it returns `Ok`
///   nothing is buffered inside the sink (Kafka `flush()`, outstanding HEC acks awaited or
///   abandoned — the outbox still has them, so they are re-sent after restart).
/// * **Blocking.** Sinks never block the async runtime: blocking I/O runs on
///   `spawn_blocking`.
pub trait Sink {
    /// The sink's configured name, for logs, metrics and errors.
    fn name(&self) -> &str;

    /// How the worker should cut batches for this sink.
    fn batch_limits(&self) -> BatchLimits;

    /// Checks that the destination can take events, without sending any.
    fn healthcheck(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Delivers `batch`, in order; `Ok` means durably accepted (see the trait docs).
    fn send(&mut self, batch: &[Event]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Flushes anything buffered and releases connections and files.
    fn shutdown(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Every sink the relay can deliver to, built from configuration. A closed set dispatched by
/// `match`: adding a sink means adding a variant here and a module beside `file`.
// Built once per configured sink and held for the process's life: the size difference
// between variants costs nothing, boxing would cost an indirection per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnySink {
    /// JSON lines in local files.
    File(FileSink),
    /// Splunk HTTP Event Collector.
    SplunkHec(SplunkHecSink),
    /// CEF or JSON over syslog (TCP, TLS, UDP) to ArcSight and other syslog receivers.
    Syslog(SyslogSink),
    /// Kafka topics, through an idempotent librdkafka producer.
    #[cfg(feature = "kafka")]
    Kafka(KafkaSink),
}

impl AnySink {
    /// The sink's type as written in configuration (`type = "file"`), a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            AnySink::File(_) => "file",
            AnySink::SplunkHec(_) => "splunk_hec",
            AnySink::Syslog(_) => "syslog",
            #[cfg(feature = "kafka")]
            AnySink::Kafka(_) => "kafka",
        }
    }
}

impl From<FileSink> for AnySink {
    fn from(s: FileSink) -> Self {
        AnySink::File(s)
    }
}

impl From<SplunkHecSink> for AnySink {
    fn from(s: SplunkHecSink) -> Self {
        AnySink::SplunkHec(s)
    }
}

impl From<SyslogSink> for AnySink {
    fn from(s: SyslogSink) -> Self {
        AnySink::Syslog(s)
    }
}

#[cfg(feature = "kafka")]
impl From<KafkaSink> for AnySink {
    fn from(s: KafkaSink) -> Self {
        AnySink::Kafka(s)
    }
}

impl Sink for AnySink {
    fn name(&self) -> &str {
        match self {
            AnySink::File(s) => s.name(),
            AnySink::SplunkHec(s) => s.name(),
            AnySink::Syslog(s) => s.name(),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.name(),
        }
    }

    fn batch_limits(&self) -> BatchLimits {
        match self {
            AnySink::File(s) => s.batch_limits(),
            AnySink::SplunkHec(s) => s.batch_limits(),
            AnySink::Syslog(s) => s.batch_limits(),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.batch_limits(),
        }
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::File(s) => s.healthcheck().await,
            AnySink::SplunkHec(s) => s.healthcheck().await,
            AnySink::Syslog(s) => s.healthcheck().await,
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.healthcheck().await,
        }
    }

    async fn send(&mut self, batch: &[Event]) -> Result<(), SinkError> {
        match self {
            AnySink::File(s) => s.send(batch).await,
            AnySink::SplunkHec(s) => s.send(batch).await,
            AnySink::Syslog(s) => s.send(batch).await,
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.send(batch).await,
        }
    }

    async fn shutdown(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::File(s) => s.shutdown().await,
            AnySink::SplunkHec(s) => s.shutdown().await,
            AnySink::Syslog(s) => s.shutdown().await,
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.shutdown().await,
        }
    }
}
