//! The Splunk HTTP Event Collector sink (sinks.md §1): batches of [`hec`](crate::hec)
//! envelopes POSTed to `/services/collector/event`.
//!
//! * **Requests.** `Authorization: Splunk <token>` (the token is a
//!   [`Secret`](relay_config::Secret), never logged), `Content-Type: application/json`, the
//!   envelopes back to back, gzipped with `Content-Encoding: gzip` unless `gzip = false`,
//!   and `X-Splunk-Request-Channel: <GUID>` on every request — required with indexer ack,
//!   harmless without, and what Splunk asks of every client (one channel per sender).
//! * **Batching.** The pipeline's sink worker cuts batches by [`Sink::batch_limits`]
//!   (`batch.max_events`, `batch.max_bytes` uncompressed) and waits up to its `linger`
//!   (`batch.linger_ms`) for a partial batch to fill. `submit` cuts the batch again on
//!   the real envelope size, so no request body exceeds `max_bytes` unless one envelope
//!   alone does.
//! * **Delivered** means HTTP 2xx for every request of the batch and, with
//!   `indexer_ack.enabled`, every request's `ackId` reported `true` by
//!   `/services/collector/ack` (see `ack.rs`). With ack on, `submit` returns once HEC took
//!   the requests, with a pending [`Receipt`](crate::Receipt): up to `max_in_flight`
//!   batches wait for their acks at once, all asked for in one query per tick. A batch
//!   not acknowledged within `indexer_ack.timeout_secs` fails as transient, alone, so the
//!   worker sends it again (duplicates possible, as Splunk's own client guidance says).
//! * **Retry or not** follows the code table (sinks.md §1.5, `response.rs`): transport
//!   errors, timeouts, 408, 429, 5xx but 501, and HEC codes 8, 9, 18–20 are
//!   [`SinkError::Unavailable`] (transient, source [`HecUnavailable`]); every other refusal
//!   is [`SinkError::Rejected`] (permanent) with HEC's code and text and what to do,
//!   naming the sink and URL — the worker stops the sink and keeps its outbox.
//! * **TLS** through rustls: verification on unless `tls.verify = false` (warned about);
//!   `tls.ca_file` replaces the built-in roots; optional client certificate.
//! * **Healthcheck**: `GET /services/collector/health` with the token, and an empty ack
//!   query when indexer ack is on.
//!
//! [`Sink::batch_limits`]: crate::Sink::batch_limits
//! [`SinkError::Unavailable`]: crate::SinkError::Unavailable
//! [`SinkError::Rejected`]: crate::SinkError::Rejected

mod ack;
mod client;
mod config;
mod request;
pub(crate) mod response;
mod sink;
#[cfg(any(test, feature = "test-support"))]
pub mod test_receiver;
#[cfg(test)]
mod tests;

pub use config::SplunkHecSinkConfig;
pub use response::HecUnavailable;
pub use sink::{HecLabels, SplunkHecSink};

/// `error` and its sources, `: `-separated, for a log field.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        s.push_str(": ");
        s.push_str(&e.to_string());
        next = e.source();
    }
    s
}
