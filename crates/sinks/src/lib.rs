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
//!   Splunk HEC, syslog and Kafka transports come next, on the formatters that exist here.

pub mod cef;
mod error;
mod event;
pub mod file;
pub mod hec;
mod json;
pub mod jsonl;
mod sink;
mod template;

pub use error::SinkError;
pub use event::{Event, Severity};
pub use file::{FileSink, FileSinkConfig};
pub use sink::{AnySink, BatchLimits, Sink};
pub use template::{Template, TemplateError};
