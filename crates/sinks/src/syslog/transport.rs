//! Moving framed bytes to the receiver: one TCP, TLS or UDP connection, reconnected with
//! exponential backoff, checked for a peer close before every write.
//!
//! What "delivered" can mean here: syslog over TCP/TLS has no application acknowledgement
//! (only RELP would), so a batch counts as delivered once every byte was handed to the kernel
//! on a connection that the receiver had not closed when the write began, and the TLS
//! records were flushed. Bytes in flight when the receiver dies are lost to it but the batch
//! was acknowledged — the same window every plain-TCP syslog sender has. A write that fails
//! drops the connection and fails the batch, which is then resent whole: the receiver may see
//! the part that got through twice (at-least-once).

use crate::error::SinkError;
use relay_config::TlsConfig;
use socket2::{SockRef, TcpKeepalive};
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// Which transport, with what it needs to connect.
pub(crate) enum Kind {
    /// Plain TCP (RFC 6587).
    Tcp,
    /// TLS over TCP (RFC 5425).
    Tls(Box<TlsSetup>),
    /// UDP (RFC 5426), one message per datagram.
    Udp,
}

/// A ready rustls client for one receiver.
pub(crate) struct TlsSetup {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

/// Timing of connections and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Counters of one sink's connection, for tests and the operator's status view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyslogStats {
    /// Events written and flushed (UDP: sent) in batches that returned `Ok`.
    pub events_sent: u64,
    /// Bytes of those batches, framing included.
    pub bytes_sent: u64,
    /// Connections established (TCP connect + TLS handshake; UDP socket set up).
    pub connects: u64,
    /// Attempts to connect that failed.
    pub connect_failures: u64,
    /// Connections found closed by the receiver before a write; they were replaced.
    pub peer_closes: u64,
    /// Writes that failed (the batch was failed as transient and the connection dropped).
    pub write_failures: u64,
    /// Events refused before sending because their message exceeded `max_datagram_bytes`.
    pub oversize_rejected: u64,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

/// One receiver: its address, the open connection if any, and the reconnect backoff.
pub(crate) struct Transport {
    sink: String,
    destination: String,
    host: String,
    port: u16,
    kind: Kind,
    timing: Timing,
    conn: Option<Conn>,
    backoff: Backoff,
    pub(crate) stats: SyslogStats,
}

impl Transport {
    pub(crate) fn new(sink: &str, host: &str, port: u16, kind: Kind, timing: Timing) -> Self {
        Transport {
            sink: sink.to_string(),
            destination: destination(host, port),
            host: host.to_string(),
            port,
            kind,
            timing,
            conn: None,
            backoff: Backoff::new(timing.backoff_initial, timing.backoff_max),
            stats: SyslogStats::default(),
        }
    }

    /// `host:port` (IPv6 in brackets), for logs and errors.
    pub(crate) fn destination(&self) -> &str {
        &self.destination
    }

    /// Makes sure there is a connection the receiver has not closed: checks the open one,
    /// or waits out the backoff and connects.
    pub(crate) async fn ensure_connected(&mut self) -> Result<(), SinkError> {
        if let Some(conn) = &mut self.conn {
            match conn.peer_closed().await {
                Ok(false) => return Ok(()),
                Ok(true) => info!(
                    sink = %self.sink,
                    destination = %self.destination,
                    "syslog receiver closed the connection; reconnecting"
                ),
                Err(error) => info!(
                    sink = %self.sink,
                    destination = %self.destination,
                    %error,
                    "syslog connection broke while idle; reconnecting"
                ),
            }
            self.stats.peer_closes += 1;
            self.conn = None;
        }
        self.backoff.wait().await;
        match self.connect().await {
            Ok(conn) => {
                self.stats.connects += 1;
                self.conn = Some(conn);
                Ok(())
            }
            Err(source) => {
                self.stats.connect_failures += 1;
                let delay = self.backoff.fail();
                warn!(
                    sink = %self.sink,
                    destination = %self.destination,
                    error = %source,
                    "cannot connect to syslog receiver; next attempt in {delay:?}"
                );
                Err(self.unavailable(source))
            }
        }
    }

    /// Writes `bytes` and flushes them on the current connection (stream transports).
    pub(crate) async fn write_stream(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let write_timeout = self.timing.write_timeout;
        let result = match &mut self.conn {
            Some(Conn::Tcp(s)) => timeout(write_timeout, write_flush(s, bytes)).await,
            Some(Conn::Tls(s)) => timeout(write_timeout, write_flush(s.as_mut(), bytes)).await,
            Some(Conn::Udp(_)) | None => Ok(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no stream connection",
            ))),
        };
        let error = match result {
            Ok(Ok(())) => {
                self.backoff.reset();
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("write not finished within {write_timeout:?}"),
            ),
        };
        self.write_failed(error)
    }

    /// Sends one datagram per message; `ends[i]` is where message `i` ends in `buf`.
    pub(crate) async fn send_datagrams(
        &mut self,
        buf: &[u8],
        ends: &[usize],
    ) -> Result<(), SinkError> {
        let write_timeout = self.timing.write_timeout;
        let Some(Conn::Udp(socket)) = &self.conn else {
            return self.write_failed(io::Error::new(io::ErrorKind::NotConnected, "no UDP socket"));
        };
        let send_all = async {
            let mut start = 0;
            for &end in ends {
                let sent = socket.send(&buf[start..end]).await?;
                if sent != end - start {
                    return Err(io::Error::other(format!(
                        "datagram cut: {sent} of {} bytes sent",
                        end - start
                    )));
                }
                start = end;
            }
            Ok(())
        };
        let error = match timeout(write_timeout, send_all).await {
            Ok(Ok(())) => {
                self.backoff.reset();
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("send not finished within {write_timeout:?}"),
            ),
        };
        self.write_failed(error)
    }

    fn write_failed(&mut self, error: io::Error) -> Result<(), SinkError> {
        self.stats.write_failures += 1;
        self.conn = None;
        let delay = self.backoff.fail();
        warn!(
            sink = %self.sink,
            destination = %self.destination,
            %error,
            "syslog write failed; the batch will be resent whole (the receiver may see part of \
             it twice); reconnecting in {delay:?}"
        );
        Err(self.unavailable(error))
    }

    /// Closes the connection: TLS `close_notify`, then the TCP write side.
    pub(crate) async fn close(&mut self) -> Result<(), SinkError> {
        let write_timeout = self.timing.write_timeout;
        let result = match self.conn.take() {
            Some(Conn::Tcp(mut s)) => timeout(write_timeout, s.shutdown()).await,
            Some(Conn::Tls(mut s)) => timeout(write_timeout, s.shutdown()).await,
            Some(Conn::Udp(_)) | None => Ok(Ok(())),
        };
        match result {
            Ok(Ok(())) => Ok(()),
            // The peer may be gone already; nothing is buffered on our side either way.
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(io::Error::new(
                io::ErrorKind::TimedOut,
                "close not finished in time",
            ))),
        }
    }

    fn unavailable(&self, source: io::Error) -> SinkError {
        SinkError::Unavailable {
            sink: self.sink.clone(),
            destination: self.destination.clone(),
            source: Box::new(source),
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        let connect_timeout = self.timing.connect_timeout;
        let within = |what: &str| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} not finished within {connect_timeout:?}"),
            )
        };
        let addrs: Vec<SocketAddr> = timeout(
            connect_timeout,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| within("name resolution"))??
        .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.host),
            ));
        }
        if let Kind::Udp = self.kind {
            let addr = addrs[0];
            let local: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((local, 0)).await?;
            socket.connect(addr).await?;
            return Ok(Conn::Udp(socket));
        }
        let mut last_error = None;
        let mut tcp = None;
        for addr in addrs {
            match timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => last_error = Some(within("connect")),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last_error.unwrap_or_else(|| io::Error::other("no address to connect to")));
        };
        // Batches go out in one write; there is nothing to gain from Nagle's delay.
        tcp.set_nodelay(true)?;
        // An idle connection through a firewall can die without a FIN; keepalive finds out
        // before the next batch is written into it.
        let keepalive = TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10));
        SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
        match &self.kind {
            Kind::Tls(setup) => {
                let tls = timeout(
                    connect_timeout,
                    setup.connector.connect(setup.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| within("TLS handshake"))??;
                Ok(Conn::Tls(Box::new(tls)))
            }
            Kind::Tcp | Kind::Udp => Ok(Conn::Tcp(tcp)),
        }
    }
}

impl Conn {
    /// True when the receiver has closed the connection (EOF, TLS `close_notify`), as far as
    /// can be seen without blocking: a read that would block means the connection is open.
    /// Receivers do not send on a syslog connection, so data that does arrive is discarded.
    async fn peer_closed(&mut self) -> io::Result<bool> {
        match self {
            Conn::Tcp(s) => peer_closed(s).await,
            Conn::Tls(s) => peer_closed(s.as_mut()).await,
            Conn::Udp(_) => Ok(false),
        }
    }
}

async fn peer_closed<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> io::Result<bool> {
    // Polling the stream itself (not the raw socket under TLS) lets rustls consume what the
    // server sends after the handshake (TLS 1.3 session tickets) and report close_notify.
    let mut scratch = [0u8; 1024];
    poll_fn(|cx| {
        // Bounded, so that a receiver that talks without pause cannot keep us here.
        for _ in 0..64 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(true)),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(false))
    })
    .await
}

async fn write_flush<S: tokio::io::AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// `host:port`, with brackets around an IPv6 literal.
pub(crate) fn destination(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Exponential backoff between connection attempts: `initial`, doubling up to `max`, reset
/// by a successful write (not by a successful connect, so a receiver that accepts and then
/// drops every connection is not hammered). No jitter: each sink has one connection to one
/// receiver, there is no herd to spread.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
    not_before: Option<Instant>,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: None,
            not_before: None,
        }
    }

    /// Records a failure; returns how long the next attempt waits.
    fn fail(&mut self) -> Duration {
        let next = match self.current {
            None => self.initial,
            Some(d) => (d * 2).min(self.max),
        };
        self.current = Some(next);
        self.not_before = Some(Instant::now() + next);
        next
    }

    fn reset(&mut self) {
        self.current = None;
        self.not_before = None;
    }

    async fn wait(&self) {
        if let Some(t) = self.not_before {
            sleep_until(t).await;
        }
    }
}

/// Builds the rustls client for `host` from `[tls]`: the CA file's certificates as the only
/// roots when `ca_file` is set (an MSSP's SIEM usually has a private CA, and trusting only it
/// is the point), else the operating system's trust store; the client certificate when set;
/// the server name checked against the host part of `address` (DNS name or IP address).
pub(crate) fn tls_setup(sink: &str, host: &str, tls: &TlsConfig) -> Result<TlsSetup, SinkError> {
    let config_error = |reason: String| SinkError::Config {
        sink: sink.to_string(),
        reason,
    };
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("tls: {e}")))?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        if let Some(ca_file) = &tls.ca_file {
            let certs = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    config_error(format!(
                        "tls.ca_file: cannot read certificates from {}: {e}",
                        ca_file.display()
                    ))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    config_error(format!(
                        "tls.ca_file: bad certificate in {}: {e}",
                        ca_file.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(config_error(format!(
                    "tls.ca_file: no certificate in {}",
                    ca_file.display()
                )));
            }
        } else {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(config_error(
                    "tls: the system trust store has no certificate; set tls.ca_file".to_string(),
                ));
            }
        }
        builder.with_root_certificates(roots)
    } else {
        warn!(
            sink = %sink,
            "tls.verify = false: the syslog receiver's certificate is not checked; anyone on \
             the path can read and change the events"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match (&tls.client_cert_file, &tls.client_key) {
        (Some(cert_file), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    config_error(format!(
                        "tls.client_cert_file: cannot read certificates from {}: {e}",
                        cert_file.display()
                    ))
                })?;
            // The key's own error text could quote key material; say only what failed.
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes())
                .map_err(|_| config_error("tls.client_key: not a PEM private key".to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| config_error(format!("tls.client_cert_file: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| config_error(format!("address: {host:?} is not a TLS server name: {e}")))?;
    Ok(TlsSetup {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// `tls.verify = false`: accepts any certificate and name, still checking that the server
/// holds the key of the certificate it showed (handshake signatures).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<Duration> = (0..5).map(|_| b.fail()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
        let start = Instant::now();
        b.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        b.reset();
        let start = Instant::now();
        b.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(b.fail(), Duration::from_millis(100));
    }

    #[test]
    fn destination_brackets_ipv6() {
        assert_eq!(destination("::1", 6514), "[::1]:6514");
        assert_eq!(destination("siem.example", 514), "siem.example:514");
    }
}
