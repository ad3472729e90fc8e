//! relay-sinks: delivers [`Event`]s — one version of one Defender incident or alert, as the
//! pipeline normalized it — to the SIEMs an MSSP runs, and says when they are safely there.
//!
//! * [`Event`] is the only input: tenant, stream, feed, id, version time, severity, title and
//!   the original JSON document. Sinks know no Defender types; formatters that need
//!   Defender fields read them from the document by name.
//! * [`Sink`] is the contract every sink keeps (acknowledgement, retry classification,
//!   batching, health, shutdown); [`AnySink`] is the closed set the pipeline holds.
//! * Formatting is pure and separate from I/O: [`jsonl`] (the file sink's records),
//!   [`hec`] (Splunk HEC envelopes), [`cef`] (ArcSight CEF lines). Transports move bytes.
//! * [`mod@file`] is the file sink (JSON lines, fsync per batch, rotation, crash recovery).
//! * [`splunk_hec`] is the Splunk HTTP Event Collector sink (batches of envelopes, gzip,
//!   indexer acknowledgement, TLS); with feature `test-support` it also offers a strict HEC
//!   receiver for tests.
//! * [`syslog`] is the syslog sink (CEF or JSON behind an RFC 5424/3164 header; TCP with
//!   octet counting or LF framing, TLS, UDP).
//! * [`kafka`] is the Kafka sink (idempotent librdkafka producer, `acks=all`, key
//!   `tenant_id:id`, the JSON-lines record as value; `Ok` only once every record of a batch
//!   has a successful delivery report).

mod any;
pub mod cef;
mod error;
mod event;
pub mod file;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hec;
mod json;
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
mod sink;
pub mod splunk_hec;
pub mod syslog;
mod template;

pub use any::AnySink;
pub use error::SinkError;
pub use event::{Event, OutboxDecodeError, RawDoc, Severity};
pub use file::{FileSink, FileSinkConfig};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSink, KafkaSinkConfig};
pub use sink::{Acknowledgement, BatchLimits, Receipt, Sink};
pub use splunk_hec::{SplunkHecSink, SplunkHecSinkConfig};
pub use syslog::{SyslogSink, SyslogSinkConfig};
pub use template::{Template, TemplateError};
