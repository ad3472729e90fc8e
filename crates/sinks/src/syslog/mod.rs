//! The syslog sink: events as CEF (ArcSight) or JSON behind an RFC 5424 (or RFC 3164) header,
//! over TCP with RFC 6587 octet counting (or LF framing), TLS (RFC 5425) or UDP (RFC 5426).
//!
//! ```text
//! 1234 <132>1 2023-10-20T09:54:07.503333Z relay01 xdr-relay 4242 graph_alerts - CEF:0|Microsoft|Microsoft Defender XDR|2.0|…
//! ```
//!
//! * [`frame`] is pure: header fields, PRI, timestamps, framing; `transport` moves bytes;
//!   [`SyslogSink`] ties them to the [`Sink`](crate::Sink) contract.
//! * **Delivery.** `send` formats and frames the whole batch first, then checks that the
//!   connection is still open (a receiver that closed it is noticed here, and the sink
//!   reconnects instead of writing into a dead socket), writes every byte and flushes (TLS
//!   records included), and only then returns `Ok`. Syslog has no application-level
//!   acknowledgement, so "accepted" means handed to the kernel on a live connection. A write
//!   error fails the batch as transient and drops the connection; the worker resends the whole
//!   batch, so a receiver may see the part that got through before the error twice
//!   (at-least-once). Reconnects back off exponentially (0.5 s doubling to 30 s by default).
//! * **UDP** is best effort (no feedback at all; a lost datagram is never known). A message
//!   larger than `max_datagram_bytes` (default 8,192) is neither cut nor dropped: the batch
//!   fails with a permanent [`SinkError::Rejected`](crate::SinkError::Rejected) naming the
//!   event before any of it is sent, the sink stops, and the event waits in the outbox until
//!   the operator raises the limit or moves to TCP/TLS. Cutting would deliver a garbled CEF
//!   line an analyst cannot tell from a whole one.
//! * **TLS** verifies the receiver's certificate and name (the host part of `address`) by
//!   default, against `tls.ca_file` alone when set, else the system trust store; a client
//!   certificate is sent when configured. The connection is closed with `close_notify`.
//! * **healthcheck** connects (and completes the TLS handshake); the connection is kept for
//!   the first batch.

pub mod frame;
mod sink;
mod transport;

pub use sink::{Format, SyslogSink, SyslogSinkConfig, TransportKind};
pub use transport::SyslogStats;

#[cfg(test)]
mod tests;
