//! [`AnySink`]: the closed set of sinks the pipeline holds, dispatched by `match`. Apart
//! from the contract (`sink.rs`) so that the contract depends on no sink and every sink
//! on the contract, not the other way round.

use crate::error::SinkError;
use crate::event::Event;
use crate::file::FileSink;
#[cfg(feature = "kafka")]
use crate::kafka::KafkaSink;
use crate::sink::{BatchLimits, Receipt, Sink};
use crate::splunk_hec::{HecLabels, SplunkHecSink};
use crate::syslog::SyslogSink;

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

    fn labels(&self) -> Option<HecLabels> {
        match self {
            AnySink::File(s) => s.labels(),
            AnySink::SplunkHec(s) => s.labels(),
            AnySink::Syslog(s) => s.labels(),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.labels(),
        }
    }

    async fn submit(&mut self, batch: &[Event]) -> Result<Receipt, SinkError> {
        match self {
            AnySink::File(s) => s.submit(batch).await,
            AnySink::SplunkHec(s) => s.submit(batch).await,
            AnySink::Syslog(s) => s.submit(batch).await,
            #[cfg(feature = "kafka")]
            AnySink::Kafka(s) => s.submit(batch).await,
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
