//! The syslog sink: formats each event (CEF or JSON) behind a syslog header, frames the
//! batch, and writes it to the receiver in one go.

use super::frame::{self, Framing, Header, Rfc};
use super::transport::{self, Kind, SyslogStats, Timing, Transport};
use crate::cef::{self, CefOptions};
use crate::error::SinkError;
use crate::event::Event;
use crate::jsonl;
use crate::sink::{BatchLimits, Receipt, Sink};
use relay_config::{SyslogConfig, TlsConfig};
pub use relay_config::{SyslogFormat as Format, SyslogTransport as TransportKind};
use std::time::Duration;
use tracing::error;

/// Everything the syslog sink needs, already validated by `relay-config` when it comes from
/// a file ([`SyslogSinkConfig::from_config`]); [`SyslogSinkConfig::validate`] checks it again
/// for configurations built in code.
#[derive(Debug, Clone)]
pub struct SyslogSinkConfig {
    /// The sink's configured name, for logs, metrics and errors.
    pub name: String,
    /// The receiver's host name or IP address (no brackets). For TLS this is also the name
    /// its certificate must carry.
    pub host: String,
    /// The receiver's port.
    pub port: u16,
    /// TCP, TLS or UDP.
    pub transport: TransportKind,
    /// Framing on TCP/TLS; ignored for UDP (one message per datagram).
    pub framing: Framing,
    /// What MSG carries: a CEF line or the event's JSON line.
    pub format: Format,
    /// RFC 5424 or RFC 3164 header.
    pub rfc: Rfc,
    /// Facility code, 0–23.
    pub facility: u8,
    /// HOSTNAME; `None` uses this machine's host name.
    pub hostname: Option<String>,
    /// APP-NAME (RFC 5424) or TAG (RFC 3164).
    pub app_name: String,
    /// Put a UTF-8 BOM before MSG (RFC 5424 only). Off by default: it breaks rsyslog's CEF
    /// parsing.
    pub bom: bool,
    /// TLS settings; required when `transport` is TLS.
    pub tls: Option<TlsConfig>,
    /// UDP only: the largest message (header + MSG) sent in one datagram. A larger one is
    /// refused with a permanent error before any event of its batch is sent — never cut,
    /// never dropped. Default [`Self::DEFAULT_MAX_DATAGRAM_BYTES`], at most
    /// [`Self::MAX_DATAGRAM_BYTES`].
    pub max_datagram_bytes: usize,
    /// CEF header labels (format `cef`).
    pub cef: CefOptions,
    /// Bound on name resolution, TCP connect and TLS handshake, each.
    pub connect_timeout: Duration,
    /// Bound on writing and flushing one batch.
    pub write_timeout: Duration,
    /// First wait before reconnecting after a failure; doubles per failure.
    pub backoff_initial: Duration,
    /// Longest wait before reconnecting.
    pub backoff_max: Duration,
    /// At most this many events per batch.
    pub max_batch_events: usize,
    /// At most about this many bytes of events per batch.
    pub max_batch_bytes: usize,
}

impl SyslogSinkConfig {
    /// Default [`max_datagram_bytes`](Self::max_datagram_bytes): 8,192 bytes. RFC 5426 asks
    /// receivers to take 2,048; the sample alerts' messages are 1–2 KB, but the CEF mapping
    /// allows a 1,023-character `msg` and 4,000-character custom strings, so real alerts pass
    /// 2 KB, and each one that does would stop the sink. 8 KiB is rsyslog's default
    /// `maxMessageSize` (syslog-ng takes 64 KiB), so what is sent is not cut silently by a
    /// receiver left at its defaults. Above ~1,470 bytes a datagram is IP-fragmented, which
    /// a LAN handles; UDP is best effort either way.
    pub const DEFAULT_MAX_DATAGRAM_BYTES: usize = SyslogConfig::DEFAULT_MAX_DATAGRAM_BYTES;
    /// The largest UDP payload over IPv4: 65,535 − 20 (IP header) − 8 (UDP header).
    pub const MAX_DATAGRAM_BYTES: usize = SyslogConfig::MAX_DATAGRAM_BYTES;
    /// The smallest `max_datagram_bytes`: every receiver must take 480 bytes (RFC 5426 §3.2).
    pub const MIN_DATAGRAM_BYTES: usize = SyslogConfig::MIN_DATAGRAM_BYTES;

    /// A configuration with the defaults (TCP, octet counting, CEF, RFC 5424, `local0`,
    /// `xdr-relay`, no BOM) for everything but name and address.
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        SyslogSinkConfig {
            name: name.into(),
            host: host.into(),
            port,
            transport: TransportKind::Tcp,
            framing: Framing::OctetCounting,
            format: Format::Cef,
            rfc: Rfc::Rfc5424,
            facility: 16,
            hostname: None,
            app_name: "xdr-relay".to_string(),
            bom: false,
            tls: None,
            max_datagram_bytes: Self::DEFAULT_MAX_DATAGRAM_BYTES,
            cef: CefOptions::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_batch_events: 1000,
            max_batch_bytes: 4 * 1024 * 1024,
        }
    }

    /// The sink named `name` as configured in `[sinks.NAME]` (`type = "syslog"`).
    pub fn from_config(name: &str, c: &SyslogConfig) -> Self {
        SyslogSinkConfig {
            transport: c.transport,
            framing: c.framing,
            format: c.format,
            rfc: c.rfc,
            facility: c.facility,
            hostname: c.hostname.clone(),
            app_name: c.app_name.clone(),
            bom: c.bom,
            tls: c.tls.clone(),
            max_datagram_bytes: c.max_datagram_bytes,
            ..SyslogSinkConfig::new(name, c.host.clone(), c.port)
        }
    }

    /// Checks the configuration without touching network or files; reports every problem.
    pub fn validate(&self) -> Result<(), SinkError> {
        let mut problems = Vec::new();
        if self.host.trim().is_empty() {
            problems.push("address: the host must not be empty".to_string());
        }
        if self.port == 0 {
            problems.push("address: the port must not be 0".to_string());
        }
        if self.facility > 23 {
            problems.push(format!("facility: {} is not 0–23", self.facility));
        }
        match (self.transport, &self.tls) {
            (TransportKind::Tls, None) => {
                problems.push("tls: required with transport = \"tls\"".to_string())
            }
            (TransportKind::Tcp | TransportKind::Udp, Some(_)) => {
                problems.push("tls: applies only to transport = \"tls\"".to_string())
            }
            _ => {}
        }
        if !(Self::MIN_DATAGRAM_BYTES..=Self::MAX_DATAGRAM_BYTES).contains(&self.max_datagram_bytes)
        {
            problems.push(format!(
                "max_datagram_bytes: must be {}–{} (found {})",
                Self::MIN_DATAGRAM_BYTES,
                Self::MAX_DATAGRAM_BYTES,
                self.max_datagram_bytes
            ));
        }
        if self.bom && self.rfc == Rfc::Rfc3164 {
            problems.push("bom: applies only to rfc = 5424".to_string());
        }
        if self.max_batch_events == 0 || self.max_batch_bytes == 0 {
            problems.push("batch limits must be at least 1".to_string());
        }
        if self.connect_timeout.is_zero() || self.write_timeout.is_zero() {
            problems.push("timeouts must be longer than 0".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Config {
                sink: self.name.clone(),
                reason: problems.join("; "),
            })
        }
    }
}

/// Sends events to a syslog receiver (ArcSight SmartConnector, syslog-ng, rsyslog) over TCP,
/// TLS or UDP. See the [module docs](super) for the format and the delivery guarantee.
pub struct SyslogSink {
    name: String,
    limits: BatchLimits,
    header: Header,
    format: Format,
    framing: Framing,
    udp: bool,
    max_datagram_bytes: usize,
    cef: CefOptions,
    transport: Transport,
    /// The framed batch, reused between batches.
    buf: Vec<u8>,
    /// One message being built.
    msg: Vec<u8>,
    /// One CEF line being built.
    line: String,
    /// UDP: where each datagram ends in `buf`.
    ends: Vec<usize>,
}

impl std::fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogSink")
            .field("name", &self.name)
            .field("destination", &self.transport.destination())
            .field("header", &self.header)
            .field("format", &self.format)
            .field("framing", &self.framing)
            .field("udp", &self.udp)
            .finish_non_exhaustive()
    }
}

impl SyslogSink {
    /// Validates `config` and loads the TLS material (CA file, client certificate and key);
    /// connects on the first `healthcheck` or `send`.
    pub fn new(config: SyslogSinkConfig) -> Result<SyslogSink, SinkError> {
        config.validate()?;
        let kind = match (config.transport, &config.tls) {
            (TransportKind::Tls, Some(tls)) => Kind::Tls(Box::new(transport::tls_setup(
                &config.name,
                &config.host,
                tls,
            )?)),
            (TransportKind::Udp, _) => Kind::Udp,
            _ => Kind::Tcp,
        };
        let hostname = config.hostname.clone().unwrap_or_else(machine_hostname);
        let header = Header::new(
            config.rfc,
            config.facility,
            &hostname,
            &config.app_name,
            &std::process::id().to_string(),
            config.bom,
        );
        let timing = Timing {
            connect_timeout: config.connect_timeout,
            write_timeout: config.write_timeout,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
        };
        Ok(SyslogSink {
            limits: BatchLimits::new(config.max_batch_events, config.max_batch_bytes),
            header,
            format: config.format,
            framing: config.framing,
            udp: config.transport == TransportKind::Udp,
            max_datagram_bytes: config.max_datagram_bytes,
            transport: Transport::new(&config.name, &config.host, config.port, kind, timing),
            cef: config.cef,
            name: config.name,
            buf: Vec::new(),
            msg: Vec::new(),
            line: String::new(),
            ends: Vec::new(),
        })
    }

    /// `host:port` of the receiver.
    pub fn destination(&self) -> &str {
        self.transport.destination()
    }

    /// Counters of this sink's connection and deliveries.
    pub fn stats(&self) -> SyslogStats {
        self.transport.stats
    }

    /// The syslog message (header + MSG, unframed) of one event, as it goes on the wire.
    pub fn message(&mut self, event: &Event) -> Vec<u8> {
        self.build_message(event);
        self.msg.clone()
    }

    fn build_message(&mut self, event: &Event) {
        self.msg.clear();
        self.header.write(event, &mut self.msg);
        match self.format {
            Format::Cef => {
                self.line.clear();
                cef::encode(event, &self.cef, &mut self.line);
                self.msg.extend_from_slice(self.line.as_bytes());
            }
            Format::Json => {
                jsonl::encode_line(event, &mut self.msg);
                // The JSON line is the message; its terminator is framing's business.
                if self.msg.last() == Some(&b'\n') {
                    self.msg.pop();
                }
            }
        }
    }

    /// Formats and frames the whole batch into `buf` before anything is sent, so that an
    /// event that cannot be sent fails the batch before any of it reaches the receiver.
    fn encode_batch(&mut self, batch: &[Event]) -> Result<(), SinkError> {
        self.buf.clear();
        self.ends.clear();
        for event in batch {
            self.build_message(event);
            if self.udp {
                if self.msg.len() > self.max_datagram_bytes {
                    self.transport.stats.oversize_rejected += 1;
                    let reason = format!(
                        "event {} (tenant {}, {}): the syslog message is {} bytes, more than \
                         max_datagram_bytes = {}; it is neither cut nor dropped — raise \
                         max_datagram_bytes (at most {}) or use transport = \"tcp\" or \"tls\"",
                        event.id,
                        event.tenant_name,
                        event.feed.as_str(),
                        self.msg.len(),
                        self.max_datagram_bytes,
                        SyslogSinkConfig::MAX_DATAGRAM_BYTES,
                    );
                    error!(
                        sink = %self.name,
                        tenant = %event.tenant_name,
                        stream = %event.stream.as_str(),
                        id = %event.id,
                        "{reason}"
                    );
                    return Err(self.rejected(reason));
                }
                self.buf.extend_from_slice(&self.msg);
                self.ends.push(self.buf.len());
            } else if let Err(e) = frame::frame(self.framing, &self.msg, &mut self.buf) {
                return Err(self.rejected(format!(
                    "event {} (tenant {}, {}): {e}",
                    event.id,
                    event.tenant_name,
                    event.feed.as_str()
                )));
            }
        }
        Ok(())
    }

    fn rejected(&self, reason: String) -> SinkError {
        SinkError::Rejected {
            sink: self.name.clone(),
            destination: self.transport.destination().to_string(),
            reason,
        }
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    /// Connects (TCP connect, TLS handshake) unless a live connection is open.
    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        self.transport.ensure_connected().await
    }

    /// Delivered once this returns: there is no later confirmation to wait for.
    async fn submit(&mut self, batch: &[Event]) -> Result<Receipt, SinkError> {
        self.deliver(batch).await.map(|()| Receipt::Delivered)
    }

    /// Sends TLS `close_notify` and closes the connection; nothing is buffered in the sink.
    async fn shutdown(&mut self) -> Result<(), SinkError> {
        self.transport.close().await
    }
}

impl SyslogSink {
    /// The batch written, flushed or confirmed: what `submit` reports as delivered.
    async fn deliver(&mut self, batch: &[Event]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.encode_batch(batch)?;
        self.transport.ensure_connected().await?;
        let buf = std::mem::take(&mut self.buf);
        let result = if self.udp {
            self.transport.send_datagrams(&buf, &self.ends).await
        } else {
            self.transport.write_stream(&buf).await
        };
        if result.is_ok() {
            self.transport.stats.events_sent += batch.len() as u64;
            self.transport.stats.bytes_sent += buf.len() as u64;
        }
        // Keep the buffer for the next batch unless one huge batch blew it up.
        if buf.capacity() <= 2 * self.limits.max_bytes {
            self.buf = buf;
        }
        result
    }
}

/// This machine's host name (`uname`), or the NILVALUE when the system has none.
fn machine_hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "-".to_string()
    } else {
        name
    }
}
