//! Syslog sink tests: literal frames, and the sink against real TCP, TLS and UDP receivers on
//! 127.0.0.1 (restarts, peer closes, write failures, certificates, datagram sizes).

use super::frame::{frame, Framing, Header, Rfc};
use super::*;
use crate::cef::{self, CefOptions};
use crate::event::testdata::*;
use crate::event::Event;
use crate::sink::Sink;
use crate::SinkError;
use relay_config::{Feed, Secret, TlsConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;
use tokio_rustls::rustls;

/// The short M365D incident sample: Low severity, so PRI = local0 (16) × 8 + notice (5).
fn incident() -> Event {
    event(M365D_INCIDENTS, 1, Feed::M365dIncidents)
}

macro_rules! incident_cef {
    () => {
        concat!(
            r"CEF:0|Microsoft|Microsoft Defender XDR|2.0|incident|'Mimikatz' hacktool was detected on one endpoint|3|",
            r"rt=1599394683626 externalId=924521 cs1Label=Classification cs1=Unknown cs2Label=IncidentId cs2=924521 ",
            r"cs5Label=Determination cs5=NotAvailable cn1Label=AlertCount cn1=1 flexString2Label=Status flexString2=Active ",
            r"deviceExternalId=3adb963c-8e61-48e8-a06d-6dbb0dacea39 ",
            r"deviceCustomDate1Label=LastUpdateTime deviceCustomDate1=1599394683810"
        )
    };
}

fn message(h: &Header, e: &Event) -> Vec<u8> {
    let mut msg = Vec::new();
    h.write(e, &mut msg);
    msg.extend_from_slice(cef::to_line(e, &CefOptions::default()).as_bytes());
    msg
}

fn framed(framing: Framing, msg: &[u8]) -> String {
    let mut out = Vec::new();
    frame(framing, msg, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn literal_rfc5424_frames_octet_counted_and_lf() {
    let h = Header::new(Rfc::Rfc5424, 16, "relay01", "xdr-relay", "4242", false);
    let msg = message(&h, &incident());
    assert_eq!(
        framed(Framing::OctetCounting, &msg),
        concat!(
            "513 <133>1 2020-09-06T12:18:03.810000Z relay01 xdr-relay 4242 m365d_incidents - ",
            incident_cef!()
        )
    );
    assert_eq!(
        framed(Framing::Lf, &msg),
        concat!(
            "<133>1 2020-09-06T12:18:03.810000Z relay01 xdr-relay 4242 m365d_incidents - ",
            incident_cef!(),
            "\n"
        )
    );
}

#[test]
fn literal_rfc3164_frames_octet_counted_and_lf() {
    let h = Header::new(Rfc::Rfc3164, 10, "relay01", "xdr-relay", "4242", false);
    let msg = message(&h, &incident());
    // authpriv (10) × 8 + notice (5) = 85.
    assert_eq!(
        framed(Framing::OctetCounting, &msg),
        concat!(
            "482 <85>Sep  6 12:18:03 relay01 xdr-relay[4242]: ",
            incident_cef!()
        )
    );
    assert_eq!(
        framed(Framing::Lf, &msg),
        concat!(
            "<85>Sep  6 12:18:03 relay01 xdr-relay[4242]: ",
            incident_cef!(),
            "\n"
        )
    );
}

#[test]
fn the_octet_count_is_bytes_not_characters() {
    let mut e = incident();
    e.title = Some("Ünïcödé 日本語 😀".to_string());
    let h = Header::new(Rfc::Rfc5424, 16, "relay01", "xdr-relay", "4242", false);
    let msg = message(&h, &e);
    let f = framed(Framing::OctetCounting, &msg);
    let (count, rest) = f.split_once(' ').unwrap();
    assert_eq!(count.parse::<usize>().unwrap(), rest.len());
    assert!(rest.chars().count() < rest.len());
}

// ---------------------------------------------------------------------------------------
// The sink against receivers.

fn config(port: u16) -> SyslogSinkConfig {
    let mut c = SyslogSinkConfig::new("arcsight", "127.0.0.1", port);
    c.hostname = Some("relay01".to_string());
    c.connect_timeout = Duration::from_secs(5);
    c.write_timeout = Duration::from_secs(10);
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(50);
    c
}

fn samples() -> Vec<Event> {
    vec![
        event(GRAPH_ALERTS, 0, Feed::GraphAlerts),
        event(MDE_ALERTS, 0, Feed::MdeAlerts),
        incident(),
        event(GRAPH_INCIDENTS, 0, Feed::GraphIncidents),
        event(GRAPH_ALERTS_DOCS, 0, Feed::GraphAlerts),
    ]
}

/// Reads `n` octet-counted frames (RFC 6587 §3.4.1), strictly: digits, one space, exactly
/// that many bytes.
async fn read_octet_frames<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut len = Vec::new();
        loop {
            let b = r.read_u8().await.unwrap();
            if b == b' ' {
                break;
            }
            assert!(b.is_ascii_digit(), "bad frame header byte {b:#x}");
            len.push(b);
        }
        assert_ne!(len.first(), Some(&b'0'), "leading zero");
        let len: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
        let mut msg = vec![0; len];
        r.read_exact(&mut msg).await.unwrap();
        out.push(msg);
    }
    out
}

async fn read_lines<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    while out.len() < n {
        let b = r.read_u8().await.unwrap();
        if b == b'\n' {
            out.push(std::mem::take(&mut line));
        } else {
            line.push(b);
        }
    }
    out
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn tcp_octet_counted_batch_arrives_whole_and_in_order() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(config(port)).unwrap();
    let events = samples();
    let expected: Vec<Vec<u8>> = events.iter().map(|e| sink.message(e)).collect();
    let pid = std::process::id();
    assert_eq!(
        String::from_utf8(sink.message(&incident())).unwrap(),
        format!(
            "<133>1 2020-09-06T12:18:03.810000Z relay01 xdr-relay {pid} m365d_incidents - {}",
            incident_cef!()
        )
    );

    sink.send(&events).await.unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    let got = within(read_octet_frames(&mut conn, events.len())).await;
    assert_eq!(got, expected);
    let stats = sink.stats();
    assert_eq!(stats.events_sent, 5);
    assert_eq!(stats.connects, 1);
    assert!(stats.bytes_sent > expected.iter().map(Vec::len).sum::<usize>() as u64);
    sink.shutdown().await.unwrap();
    // After shutdown the receiver sees a clean end of stream and nothing more.
    let mut rest = Vec::new();
    within(conn.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn lf_framing_sends_one_json_line_per_event() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(port);
    c.framing = Framing::Lf;
    c.format = Format::Json;
    let mut sink = SyslogSink::new(c).unwrap();
    // A document with line breaks and a pretty layout still makes one line.
    let mut pretty = event_with_raw("{\n  \"id\": \"a\\nb\",\n  \"x\": [1,\n 2]\n}");
    pretty.title = Some("two\nlines".to_string());
    let mut events = samples();
    events.push(pretty);
    sink.send(&events).await.unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    let lines = within(read_lines(&mut conn, events.len())).await;
    for (line, e) in lines.iter().zip(&events) {
        let text = std::str::from_utf8(line).unwrap();
        let json = text.split_once(" - ").unwrap().1;
        assert!(text.starts_with('<') && text.contains(&format!(" {} - {{", e.feed.as_str())));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(v["tenant_id"], TENANT_ID);
        let original: serde_json::Value = serde_json::from_str(e.raw.get()).unwrap();
        assert_eq!(v["event"], original);
    }
}

#[tokio::test]
async fn rfc3164_header_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(port);
    c.rfc = Rfc::Rfc3164;
    c.facility = 4;
    let mut sink = SyslogSink::new(c).unwrap();
    sink.send(&[incident()]).await.unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    let got = within(read_octet_frames(&mut conn, 1)).await;
    assert_eq!(
        String::from_utf8(got[0].clone()).unwrap(),
        format!(
            "<37>Sep  6 12:18:03 relay01 xdr-relay[{}]: {}",
            std::process::id(),
            incident_cef!()
        )
    );
}

#[tokio::test]
async fn a_connection_the_receiver_closed_is_replaced_before_the_next_batch() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(config(port)).unwrap();
    let events = samples();
    sink.send(&events[..2]).await.unwrap();
    let (mut first, _) = within(listener.accept()).await.unwrap();
    assert_eq!(within(read_octet_frames(&mut first, 2)).await.len(), 2);
    // The receiver closes (as syslog-ng does on a bad frame or when it restarts).
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;

    sink.send(&events[2..]).await.unwrap();
    let (mut second, _) = within(listener.accept()).await.unwrap();
    let got = within(read_octet_frames(&mut second, 3)).await;
    let expected: Vec<Vec<u8>> = events[2..].iter().map(|e| sink.message(e)).collect();
    assert_eq!(got, expected);
    let stats = sink.stats();
    assert_eq!((stats.peer_closes, stats.connects), (1, 2));
    assert_eq!(stats.write_failures, 0);
}

#[tokio::test]
async fn sending_resumes_after_the_receiver_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut sink = SyslogSink::new(config(addr.port())).unwrap();
    let events = samples();
    sink.healthcheck().await.unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    sink.send(&events[..1]).await.unwrap();
    within(read_octet_frames(&mut conn, 1)).await;

    // The receiver goes away entirely.
    drop(conn);
    drop(listener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = sink.send(&events[1..]).await.unwrap_err();
    assert!(err.is_transient(), "{err:#?}");
    assert!(matches!(err, SinkError::Unavailable { .. }));
    assert!(err
        .to_string()
        .contains(&format!("127.0.0.1:{}", addr.port())));
    assert!(sink.healthcheck().await.is_err());
    assert!(sink.stats().connect_failures >= 2);

    // It comes back on the same port; the same batch goes through on the retry.
    let listener = TcpListener::bind(addr).await.unwrap();
    sink.send(&events[1..]).await.unwrap();
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    let got = within(read_octet_frames(&mut conn, 4)).await;
    let expected: Vec<Vec<u8>> = events[1..].iter().map(|e| sink.message(e)).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn healthcheck_connects_and_fails_transiently_when_nobody_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(config(port)).unwrap();
    sink.healthcheck().await.unwrap();
    within(listener.accept()).await.unwrap();
    // A second healthcheck reuses the live connection.
    sink.healthcheck().await.unwrap();
    assert_eq!(sink.stats().connects, 1);
    drop(listener);

    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = free.local_addr().unwrap().port();
    drop(free);
    let mut sink = SyslogSink::new(config(closed_port)).unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        err.to_string(),
        format!("sink arcsight: 127.0.0.1:{closed_port} is unavailable")
    );
}

#[tokio::test]
async fn a_write_error_fails_the_batch_transiently_and_the_retry_sends_it_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(config(port)).unwrap();
    sink.healthcheck().await.unwrap();
    let (conn, _) = within(listener.accept()).await.unwrap();
    // A batch far larger than the socket buffers: the receiver reads a little, then resets
    // the connection in the middle of the write.
    let big: Vec<Event> = (0..4000)
        .map(|i| {
            let mut e = event(GRAPH_ALERTS, 1, Feed::GraphAlerts);
            e.id = format!("alert-{i}");
            e
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut conn = conn;
        let mut buf = vec![0; 64 * 1024];
        conn.read_exact(&mut buf).await.unwrap();
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn);
    });
    let err = sink.send(&big).await.unwrap_err();
    reader.await.unwrap();
    assert!(err.is_transient(), "{err:#?}");
    assert_eq!(sink.stats().write_failures, 1);
    assert_eq!(sink.stats().events_sent, 0);

    let reader = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        read_octet_frames(&mut conn, 4000).await
    });
    sink.send(&big).await.unwrap();
    let got = within(reader).await.unwrap();
    assert_eq!(got.len(), 4000);
    assert_eq!(got[3999], sink.message(&big[3999]));
    assert_eq!(sink.stats().events_sent, 4000);
}

// ---------------------------------------------------------------------------------------
// UDP.

#[tokio::test]
async fn udp_sends_one_datagram_per_event() {
    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let mut c = config(port);
    c.transport = TransportKind::Udp;
    let mut sink = SyslogSink::new(c).unwrap();
    let events = samples();
    sink.send(&events).await.unwrap();
    let mut buf = vec![0; 65_536];
    for e in &events {
        let n = within(receiver.recv(&mut buf)).await.unwrap();
        // No framing on UDP: the datagram is the message.
        assert_eq!(&buf[..n], &sink.message(e)[..]);
    }
}

#[tokio::test]
async fn udp_refuses_an_oversized_message_before_sending_any_of_the_batch() {
    let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = receiver.local_addr().unwrap().port();
    let mut c = config(port);
    c.transport = TransportKind::Udp;
    c.max_datagram_bytes = 480;
    let mut sink = SyslogSink::new(c.clone()).unwrap();
    let mut small = incident();
    // A short tenant id keeps this message under the smallest datagram limit.
    small.tenant_id = "t".into();
    assert!(sink.message(&small).len() <= 480);
    let big = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
    let big_len = sink.message(&big).len();
    assert!(big_len > 480);

    let err = sink
        .send(&[small.clone(), big.clone(), small.clone()])
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(matches!(err, SinkError::Rejected { .. }));
    let text = err.to_string();
    assert!(text.contains(&big.id), "{text}");
    assert!(text.contains(&format!("{big_len} bytes")), "{text}");
    assert!(text.contains("max_datagram_bytes = 480"), "{text}");
    assert_eq!(sink.stats().oversize_rejected, 1);
    let mut buf = vec![0; 65_536];
    assert!(
        timeout(Duration::from_millis(200), receiver.recv(&mut buf))
            .await
            .is_err(),
        "nothing of the refused batch may be sent"
    );

    // A message of exactly the limit goes through, whole.
    c.max_datagram_bytes = big_len;
    let mut sink = SyslogSink::new(c).unwrap();
    sink.send(std::slice::from_ref(&big)).await.unwrap();
    let n = within(receiver.recv(&mut buf)).await.unwrap();
    assert_eq!(n, big_len);
}

// ---------------------------------------------------------------------------------------
// TLS.

/// A CA, a server certificate (for `localhost` and 127.0.0.1 by default) signed by it, and a client
/// certificate, written to a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server_cert_pem: String,
    server_key_pem: String,
    ca_cert_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        Pki::for_names(&["localhost", "127.0.0.1"])
    }

    fn for_names(server_names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Distinct CA names, so that a certificate from one test CA is not even matched by
        // name against another (which would report a bad signature, not an unknown issuer).
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("test syslog CA {serial}"),
        );
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let server = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["xdr-relay.test".into()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_cert_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca_cert_pem).unwrap();
        std::fs::write(pki.path("client.pem"), &pki.client_cert_pem).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.path("ca.pem")),
            ..TlsConfig::default()
        }
    }

    /// A TLS receiver on 127.0.0.1:0; with `client_ca`, client certificates signed by this
    /// PKI's CA are required.
    async fn receiver(
        &self,
        require_client_cert: bool,
    ) -> (TcpListener, tokio_rustls::TlsAcceptor) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes()).unwrap())
                .unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

fn tls_config(port: u16, host: &str, tls: TlsConfig) -> SyslogSinkConfig {
    let mut c = config(port);
    c.host = host.to_string();
    c.transport = TransportKind::Tls;
    c.tls = Some(tls);
    c
}

/// Accepts one TLS connection and reads `n` frames; returns the frames, or the handshake
/// error.
async fn tls_accept_frames(
    listener: &TcpListener,
    acceptor: &tokio_rustls::TlsAcceptor,
    n: usize,
) -> Result<Vec<Vec<u8>>, std::io::Error> {
    let (tcp, _) = listener.accept().await?;
    let mut tls = acceptor.accept(tcp).await?;
    Ok(read_octet_frames(&mut tls, n).await)
}

#[tokio::test]
async fn tls_with_the_receivers_ca_delivers_by_name_and_by_ip() {
    let pki = Pki::new();
    let (listener, acceptor) = pki.receiver(false).await;
    let port = listener.local_addr().unwrap().port();
    let events = samples();
    for host in ["localhost", "127.0.0.1"] {
        let mut sink = SyslogSink::new(tls_config(port, host, pki.tls())).unwrap();
        let expected: Vec<Vec<u8>> = events.iter().map(|e| sink.message(e)).collect();
        let (sent, got) = tokio::join!(
            sink.send(&events),
            within(tls_accept_frames(&listener, &acceptor, events.len()))
        );
        sent.unwrap();
        assert_eq!(got.unwrap(), expected, "{host}");
        sink.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn tls_fails_with_a_wrong_ca_or_a_wrong_name_and_verify_false_skips_the_check() {
    // The server certificate names only `localhost`.
    let pki = Pki::for_names(&["localhost"]);
    let other = Pki::new();
    let (listener, acceptor) = pki.receiver(false).await;
    let port = listener.local_addr().unwrap().port();
    let acceptor = Arc::new(acceptor);
    let server = {
        let acceptor = Arc::clone(&acceptor);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                outcomes.push(tls_accept_frames(&listener, &acceptor, 1).await.is_ok());
            }
            outcomes
        })
    };

    // Signed by another CA.
    let mut sink = SyslogSink::new(tls_config(port, "localhost", other.tls())).unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    assert!(matches!(err, SinkError::Unavailable { .. }));
    let chain = format!("{:?}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    // The right CA, but the certificate does not name the host.
    let mut sink = SyslogSink::new(tls_config(port, "127.0.0.1", pki.tls())).unwrap();
    let err = sink.healthcheck().await.unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("NotValidForName"), "{chain}");

    // verify = false accepts the other CA's receiver.
    let mut sink = SyslogSink::new(tls_config(
        port,
        "localhost",
        TlsConfig {
            verify: false,
            ..TlsConfig::default()
        },
    ))
    .unwrap();
    sink.send(&[incident()]).await.unwrap();
    let outcomes = within(server).await.unwrap();
    assert_eq!(outcomes, [false, false, true]);
    let _ = other;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let (listener, acceptor) = pki.receiver(true).await;
    let port = listener.local_addr().unwrap().port();
    let with_cert = TlsConfig {
        client_cert_file: Some(pki.path("client.pem")),
        client_key: Some(Secret::new(pki.client_key_pem.clone())),
        ..pki.tls()
    };
    let mut sink = SyslogSink::new(tls_config(port, "localhost", with_cert.clone())).unwrap();
    let batch = [incident()];
    let (sent, got) = tokio::join!(
        sink.send(&batch),
        within(tls_accept_frames(&listener, &acceptor, 1))
    );
    sent.unwrap();
    assert_eq!(got.unwrap(), vec![sink.message(&incident())]);

    // Without a client certificate the receiver refuses the handshake; with TLS 1.3 the
    // client learns it on its first read or write, so the sink's batch fails.
    let mut no_cert = tls_config(port, "localhost", pki.tls());
    // The second send reconnects to a listener nobody accepts on any more: fail fast.
    no_cert.connect_timeout = Duration::from_millis(500);
    let mut sink = SyslogSink::new(no_cert).unwrap();
    let (sent, got) = tokio::join!(
        async {
            let first = sink.send(&batch).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = sink.send(&batch).await;
            (first, second)
        },
        within(tls_accept_frames(&listener, &acceptor, 1))
    );
    assert!(got.is_err());
    assert!(sent.0.is_err() || sent.1.is_err(), "{sent:?}");

    // The client key never shows in Debug output.
    let debug = format!("{:?}", tls_config(port, "localhost", with_cert));
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[tokio::test]
async fn a_tls_receiver_that_closed_is_noticed_and_replaced() {
    let pki = Pki::new();
    let (listener, acceptor) = pki.receiver(false).await;
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(tls_config(port, "localhost", pki.tls())).unwrap();
    let events = samples();
    let (sent, first) = tokio::join!(sink.send(&events[..1]), async {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        read_octet_frames(&mut tls, 1).await;
        tls
    });
    sent.unwrap();
    // close_notify, then the TCP close.
    let mut first = first;
    first.shutdown().await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (sent, got) = tokio::join!(
        sink.send(&events[1..]),
        within(tls_accept_frames(&listener, &acceptor, 4))
    );
    sent.unwrap();
    assert_eq!(got.unwrap().len(), 4);
    assert_eq!(sink.stats().peer_closes, 1);
    assert_eq!(sink.stats().connects, 2);
}

// ---------------------------------------------------------------------------------------
// Configuration.

#[test]
fn from_config_maps_every_key() {
    let c = relay_config::SyslogConfig {
        address: "siem.example:6514".into(),
        host: "siem.example".into(),
        port: 6514,
        transport: TransportKind::Tls,
        framing: Framing::Lf,
        format: Format::Json,
        rfc: Rfc::Rfc3164,
        app_name: "relay".into(),
        hostname: Some("relay01".into()),
        facility: 10,
        tls: Some(TlsConfig::default()),
        bom: false,
        max_datagram_bytes: 1480,
    };
    let s = SyslogSinkConfig::from_config("arcsight", &c);
    assert_eq!(s.name, "arcsight");
    assert_eq!((s.host.as_str(), s.port), ("siem.example", 6514));
    assert_eq!(
        (s.transport, s.framing, s.format, s.rfc),
        (TransportKind::Tls, Framing::Lf, Format::Json, Rfc::Rfc3164)
    );
    assert_eq!(s.app_name, "relay");
    assert_eq!(s.hostname.as_deref(), Some("relay01"));
    assert_eq!(s.facility, 10);
    assert_eq!(s.tls, Some(TlsConfig::default()));
    assert!(!s.bom);
    assert_eq!(s.max_datagram_bytes, 1480);
    s.validate().unwrap();
}

#[test]
fn validate_reports_every_problem_and_bad_tls_files_are_config_errors() {
    let mut c = SyslogSinkConfig::new("arcsight", "", 0);
    c.facility = 24;
    c.transport = TransportKind::Tls;
    c.max_datagram_bytes = 100;
    c.rfc = Rfc::Rfc3164;
    c.bom = true;
    let err = SyslogSink::new(c).unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    for problem in [
        "address: the host must not be empty",
        "address: the port must not be 0",
        "facility: 24 is not 0–23",
        "tls: required with transport = \"tls\"",
        "max_datagram_bytes: must be 480–65507 (found 100)",
        "bom: applies only to rfc = 5424",
    ] {
        assert!(text.contains(problem), "{problem} missing in {text}");
    }

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = SyslogSink::new(tls_config(
        6514,
        "localhost",
        TlsConfig {
            ca_file: Some(missing.clone()),
            ..TlsConfig::default()
        },
    ))
    .unwrap_err();
    assert!(matches!(err, SinkError::Config { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = SyslogSink::new(tls_config(
        6514,
        "localhost",
        TlsConfig {
            ca_file: Some(empty),
            ..TlsConfig::default()
        },
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("tls.ca_file: no certificate in"),
        "{err}"
    );
    let pki = Pki::new();
    let err = SyslogSink::new(tls_config(
        6514,
        "localhost",
        TlsConfig {
            client_cert_file: Some(pki.path("client.pem")),
            client_key: Some(Secret::new(
                "-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n-----END PRIVATE KEY-----\n",
            )),
            ..pki.tls()
        },
    ))
    .unwrap_err();
    assert!(err.to_string().contains("tls.client_"), "{err}");
    assert!(!err.to_string().contains("bm9wZQ"), "{err}");
}

#[tokio::test]
async fn an_empty_batch_sends_nothing_and_needs_no_connection() {
    let mut sink = SyslogSink::new(config(9)).unwrap();
    sink.send(&[]).await.unwrap();
    assert_eq!(sink.stats(), SyslogStats::default());
    assert_eq!(crate::AnySink::from(sink).kind(), "syslog");
}
