//! Conformance of the syslog sink against a real receiver: syslog-ng (3.38 on Debian 12) as a
//! child process, listening on 127.0.0.1 for RFC 5424 over octet-counted TCP, LF-framed TCP
//! and TLS, and RFC 3164 over LF-framed TCP; splitting CEF with regexp-parser + kv-parser (the
//! working config of sinks.md §6.2 — Debian's build has no cef-parser()) and writing JSON
//! lines. The test then checks, for real samples and hand-made adversarial documents, that
//! every value syslog-ng extracted, after CEF unescaping, equals
//!
//! 1. the value a strict reference decoder reads from the line the relay sent (every key,
//!    nothing lost, added or garbled on the way), and
//! 2. the source field of the Defender document, transformed only as the CEF mapping
//!    documents (trimmed, cut to the dictionary length in characters, CR/LF in the header
//!    replaced by a space, NUL replaced by U+FFFD).
//!
//! syslog-ng comes from `SYSLOG_NG_BIN`, else `syslog-ng` on PATH, else `/usr/sbin/syslog-ng`.
//! A missing syslog-ng FAILS the test: the test suite installs it.
//!
//! Known peer quirk, avoided in the inputs: kv-parser strips quotes around a value that
//! *starts* with `"` or `'` (sinks.md §6.2), which is not CEF; quotes elsewhere are kept.

// Helpers outside #[test] functions panic on setup failures too; that is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_config::{Feed, SyslogFraming, SyslogRfc, TlsConfig};
use relay_sinks::cef::truncate_chars;
use relay_sinks::syslog::{Format, TransportKind};
use relay_sinks::{Event, Severity, Sink, SyslogSink, SyslogSinkConfig};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TENANT_ID: &str = "3adb963c-8e61-48e8-a06d-6dbb0dacea39";
const HOSTNAME: &str = "relay-conformance";

// ---------------------------------------------------------------------------------------
// The syslog-ng child process.

/// A running syslog-ng, killed when dropped.
struct SyslogNg {
    child: Child,
    dir: tempfile::TempDir,
    ports: Ports,
}

#[derive(Clone, Copy)]
struct Ports {
    octet: u16,
    lf: u16,
    tls: u16,
    bsd: u16,
}

/// Output files, one per source.
const OUTPUTS: [&str; 4] = ["octet", "lf", "tls", "bsd"];

impl Drop for SyslogNg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Bound and released at once; syslog-ng binds it right after. Port 0 cannot be handed
    // to syslog-ng, which must be told a number.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn syslog_ng_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SYSLOG_NG_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("syslog-ng"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/syslog-ng"))
}

fn config_text(dir: &Path, p: Ports) -> String {
    let d = dir.display();
    let mut conf = format!(
        r#"@version: 3.38
options {{ keep-hostname(yes); log-msg-size(65536); stats-freq(0); }};

source s_octet {{ syslog(ip("127.0.0.1") port({octet}) transport("tcp") max-connections(10)); }};
source s_lf {{ network(ip("127.0.0.1") port({lf}) transport("tcp") flags(syslog-protocol) max-connections(10)); }};
source s_tls {{ syslog(ip("127.0.0.1") port({tls}) transport("tls")
    tls(key-file("{d}/server-key.pem") cert-file("{d}/server-cert.pem") peer-verify(optional-untrusted))); }};
source s_bsd {{ network(ip("127.0.0.1") port({bsd}) transport("tcp") max-connections(10)); }};

# sinks.md §6.2's header pattern, with possessive quantifiers: the plain `(?:[^|\\]|\\.)*`
# exhausts PCRE's JIT stack (error -27) on a 1,023-character signature id or a 512-character
# name, and the message lands in rejected.log. Same language, no backtracking.
parser p_cef_header {{
  regexp-parser(
    prefix("cef.")
    patterns('^CEF:(?<version>\d+)\|(?<device_vendor>(?:[^|\\]++|\\.)*+)\|(?<device_product>(?:[^|\\]++|\\.)*+)\|(?<device_version>(?:[^|\\]++|\\.)*+)\|(?<device_event_class_id>(?:[^|\\]++|\\.)*+)\|(?<name>(?:[^|\\]++|\\.)*+)\|(?<severity>(?:[^|\\]++|\\.)*+)\|(?<extension>.*)$')
  );
}};
# kv-parser ends a value at its pair separator, by default ", " (so "installation,
# exploration" would lose its tail), and at spaces before `key=`. CEF separates pairs by a
# space only: make the pair separator a string that never occurs (two ASCII control codes).
parser p_cef_ext {{ kv-parser(prefix("cef.ext.") pair-separator("\x1e\x1f") template("${{cef.extension}}")); }};
destination d_reject {{ file("{d}/rejected.log" template("${{MESSAGE}}\n")); }};
"#,
        octet = p.octet,
        lf = p.lf,
        tls = p.tls,
        bsd = p.bsd,
    );
    for name in OUTPUTS {
        conf.push_str(&format!(
            r#"
destination d_{name} {{
  file("{d}/{name}.jsonl"
       template("$(format-json --scope none --pair pri=${{PRI}} --pair host=${{HOST}} --pair app=${{PROGRAM}} --pair procid=${{PID}} --pair msgid=${{MSGID}} --pair sdata=${{SDATA}} --key cef.* --exclude cef.extension)\n"));
}};
log {{
  source(s_{name});
  log {{ parser(p_cef_header); parser(p_cef_ext); destination(d_{name}); flags(final); }};
  log {{ destination(d_reject); }};
}};
"#
        ));
    }
    conf
}

impl SyslogNg {
    fn start(pki: &Pki) -> SyslogNg {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server-cert.pem"), &pki.server_cert_pem).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), &pki.server_key_pem).unwrap();
        let ports = Ports {
            octet: free_port(),
            lf: free_port(),
            tls: free_port(),
            bsd: free_port(),
        };
        let conf = dir.path().join("syslog-ng.conf");
        std::fs::write(&conf, config_text(dir.path(), ports)).unwrap();
        let bin = syslog_ng_bin();
        let log = std::fs::File::create(dir.path().join("syslog-ng.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-F")
            .arg("-e")
            .arg("--no-caps")
            .arg("-f")
            .arg(&conf)
            .arg("--persist-file")
            .arg(dir.path().join("persist"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .arg("--control")
            .arg(dir.path().join("ctl"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start syslog-ng ({}): {e}. The syslog conformance test needs it: \
                     install syslog-ng-core (apt-get install syslog-ng-core) or set \
                     SYSLOG_NG_BIN to its path. The test suite script installs it.",
                    bin.display()
                )
            });
        let mut ng = SyslogNg { child, dir, ports };
        ng.wait_listening();
        ng
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("syslog-ng.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let p = self.ports;
        for port in [p.octet, p.lf, p.tls, p.bsd] {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!(
                        "syslog-ng exited with {status} at start-up:\n{}",
                        self.log()
                    );
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "syslog-ng does not listen on 127.0.0.1:{port}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until `name`.jsonl has `n` lines and returns them parsed.
    fn records(&mut self, name: &str, n: usize) -> Vec<Value> {
        let path = self.path(&format!("{name}.jsonl"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() >= n && text.ends_with('\n') {
                assert_eq!(lines.len(), n, "more records than events sent in {name}");
                return lines
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("syslog-ng exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {} of {n} records after 30 s; rejected:\n{}\nlog:\n{}",
                lines.len(),
                std::fs::read_to_string(self.path("rejected.log")).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Certificates.

struct Pki {
    ca_cert_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "xdr-relay conformance CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Pki {
            ca_cert_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Events.

fn event_from(item: &Value, feed: Feed) -> Event {
    let id = match &item[feed.id_field()] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let title_field = match feed {
        Feed::M365dIncidents => "incidentName",
        Feed::GraphIncidents => "displayName",
        Feed::MdeAlerts | Feed::GraphAlerts => "title",
    };
    Event {
        tenant_id: TENANT_ID.to_string(),
        tenant_name: "contoso".to_string(),
        stream: feed.stream(),
        feed,
        id,
        version_time: item[feed.time_field()].as_str().unwrap().parse().unwrap(),
        severity: Severity::from_api(item["severity"].as_str().unwrap_or("")),
        title: item[title_field].as_str().map(str::to_string),
        raw: RawValue::from_string(serde_json::to_string(item).unwrap())
            .unwrap()
            .into(),
    }
}

fn sample_events() -> Vec<Event> {
    let pages = [
        (
            include_str!("../testdata/graph-alerts_v2-1.json"),
            Feed::GraphAlerts,
        ),
        (
            include_str!("../testdata/graph-alerts_v2-3-docs.json"),
            Feed::GraphAlerts,
        ),
        (
            include_str!("../testdata/mde-alerts-expand-evidence-1.json"),
            Feed::MdeAlerts,
        ),
        (
            include_str!("../testdata/m365d-incidents-list-1.json"),
            Feed::M365dIncidents,
        ),
        (
            include_str!("../testdata/graph-incidents-expand-alerts-1.json"),
            Feed::GraphIncidents,
        ),
    ];
    let mut events = Vec::new();
    for (page, feed) in pages {
        let page: Value = serde_json::from_str(page).unwrap();
        for item in page["value"].as_array().unwrap() {
            events.push(event_from(item, feed));
        }
    }
    events
}

/// Texts that break naive CEF and syslog handling. No text starts with a quote (the peer's
/// kv-parser quirk, see the module docs).
fn adversarial_texts() -> Vec<String> {
    let unit = "Long | text = with \\ delimiters, ünïcödé 漢字 🔥\r\n\t";
    let mut ten_kb = String::new();
    while ten_kb.len() < 10 * 1024 {
        ten_kb.push_str(unit);
    }
    vec![
        "Pipe | equals = backslash \\ in CEF:0|Microsoft|Defender|1.0|sig|name|10| ext=val"
            .to_string(),
        "Line one\r\nLine two\nLine three\rtail".to_string(),
        "Tabs\tbetween\tcolumns".to_string(),
        "Quotes \"double\" 'single' `back` and \\\"escaped\\\"".to_string(),
        "Accents: Café, naïve, Ångström, São Paulo, Zürich, Łódź".to_string(),
        "CJK: 可疑的 PowerShell 命令行 — 不審なスクリプト — 의심스러운 활동".to_string(),
        "Emoji: 🔥💀🛡️ ransomware 🚨 👩‍💻 🇺🇦".to_string(),
        "Control: \u{1}\u{7}\u{1b}[31mred\u{1b}[0m end".to_string(),
        "Separators \u{2028} \u{2029} zero\u{200b}width BOM\u{feff} replacement \u{fffd}"
            .to_string(),
        "Lookalike pairs cs1=evil msg=fake rt=0 end".to_string(),
        "C:\\Windows\\System32\\cmd.exe /c \"echo a=b | more\" \\\\server\\share\\".to_string(),
        "Literal \\n and \\r and \\= and \\| sequences".to_string(),
        "Trailing backslash \\".to_string(),
        "Ends with equals =".to_string(),
        "   padded   with   spaces   ".to_string(),
        "NUL \u{0} inside".to_string(),
        ten_kb,
    ]
}

/// A Graph alert whose every mapped text field is `t` (rotated, so fields differ).
fn adversarial_alert(i: usize, texts: &[String]) -> Event {
    let t = |k: usize| texts[(i + k) % texts.len()].clone();
    let severity = [
        "high",
        "medium",
        "low",
        "informational",
        "unknownFutureValue",
    ][i % 5];
    let doc = json!({
        "id": format!("da{i:04}-adversarial_1"),
        "detectorId": t(0),
        "title": t(1),
        "description": t(2),
        "category": t(3),
        "detectionSource": t(4),
        "threatDisplayName": t(5),
        "actorDisplayName": t(6),
        "status": t(7),
        "severity": severity,
        "incidentId": "4242",
        "mitreTechniques": ["T1059.001", "T1566"],
        "createdDateTime": "2024-05-07T01:56:59.3190000Z",
        "firstActivityDateTime": "2024-05-07T01:50:00.0000000Z",
        "lastActivityDateTime": "2024-05-07T01:55:00.1234567Z",
        "lastUpdateDateTime": "2024-05-07T02:00:00.9876543Z",
        "alertWebUrl": format!("https://security.microsoft.com/alerts/da{i:04}?tid={TENANT_ID}&x=|"),
        "evidence": [
            {"@odata.type": "#microsoft.graph.security.deviceEvidence", "deviceDnsName": t(8)},
            {"@odata.type": "#microsoft.graph.security.userEvidence",
             "userAccount": {"accountName": t(9), "domainName": t(10)}},
            {"@odata.type": "#microsoft.graph.security.fileEvidence",
             "fileDetails": {"fileName": t(11), "filePath": t(12), "sha1": t(13), "sha256": t(14)}},
            {"@odata.type": "#microsoft.graph.security.urlEvidence", "url": t(15)},
            {"@odata.type": "#microsoft.graph.security.ipEvidence", "ipAddress": "10.1.2.3"}
        ]
    });
    event_from(&doc, Feed::GraphAlerts)
}

/// The fields of a hand-made alert as the CEF mapping documents them: key → expected value
/// after decoding. `None` means the key must be absent.
fn expected_fields(doc: &Value) -> (BTreeMap<&'static str, Option<String>>, Vec<String>) {
    fn text(v: &Value, max: usize) -> Option<String> {
        let s = v.as_str()?;
        let s = truncate_chars(s.trim(), max).trim_end();
        (!s.is_empty()).then(|| s.replace('\0', "\u{fffd}"))
    }
    fn header(v: &Value, max: usize) -> String {
        text(v, max).unwrap_or_default().replace(['\r', '\n'], " ")
    }
    let ev = &doc["evidence"];
    let mut ext = BTreeMap::new();
    ext.insert("cat", text(&doc["category"], 1023));
    ext.insert("sourceServiceName", text(&doc["detectionSource"], 1023));
    ext.insert("shost", text(&ev[0]["deviceDnsName"], 1023));
    ext.insert("suser", text(&ev[1]["userAccount"]["accountName"], 1023));
    ext.insert("sntdom", text(&ev[1]["userAccount"]["domainName"], 255));
    ext.insert("fname", text(&ev[2]["fileDetails"]["fileName"], 1023));
    ext.insert("filePath", text(&ev[2]["fileDetails"]["filePath"], 1023));
    ext.insert("fileHash", text(&ev[2]["fileDetails"]["sha1"], 255));
    ext.insert("cs6", text(&ev[2]["fileDetails"]["sha256"], 4000));
    ext.insert("request", text(&ev[3]["url"], 1023));
    ext.insert("src", Some("10.1.2.3".to_string()));
    ext.insert("cs1", text(&doc["threatDisplayName"], 4000));
    ext.insert("cs4", text(&doc["actorDisplayName"], 4000));
    ext.insert("flexString2", text(&doc["status"], 1023));
    ext.insert("msg", text(&doc["description"], 1023));
    ext.insert("externalId", text(&doc["id"], 40));
    ext.insert("cs2", Some("4242".to_string()));
    ext.insert("cs3", Some("T1059.001,T1566".to_string()));
    ext.insert("rt", Some("1715047019319".to_string()));
    ext.insert("start", Some("1715046600000".to_string()));
    ext.insert("end", Some("1715046900123".to_string()));
    ext.insert("deviceCustomDate1", Some("1715047200987".to_string()));
    ext.insert("flexString1", text(&doc["alertWebUrl"], 1023));
    let signature = header(&doc["detectorId"], 1023);
    let name = header(&doc["title"], 512);
    (
        ext,
        vec![
            "0".to_string(),
            "Microsoft".to_string(),
            "Microsoft Defender XDR".to_string(),
            "2.0".to_string(),
            if signature.is_empty() {
                "alert".to_string()
            } else {
                signature
            },
            if name.is_empty() {
                "Defender alert".to_string()
            } else {
                name
            },
        ],
    )
}

// ---------------------------------------------------------------------------------------
// A strict reference decoder, written from the CEF standard (not from the relay's encoder).

fn unescape_header(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | '|')) => out.push(e),
                other => panic!("bad header escape \\{other:?} in {s:?}"),
            }
        } else {
            assert_ne!(c, '|', "bare pipe in header value {s:?}");
            out.push(c);
        }
    }
    out
}

fn unescape_value(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('=') => out.push('='),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                other => panic!("bad extension escape \\{other:?} in {s:?}"),
            }
        } else {
            assert!(
                c != '=' && c != '\n' && c != '\r',
                "raw {c:?} in value {s:?}"
            );
            out.push(c);
        }
    }
    out
}

/// Splits a CEF line into 7 unescaped header fields and the unescaped extension pairs.
fn decode_cef(line: &str) -> (Vec<String>, Vec<(String, String)>) {
    let rest = line.strip_prefix("CEF:").expect("line starts with CEF:");
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = rest.char_indices();
    let mut ext_start = None;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                field.push(c);
                if let Some((_, e)) = chars.next() {
                    field.push(e);
                }
            }
            '|' => {
                header.push(unescape_header(&std::mem::take(&mut field)));
                if header.len() == 7 {
                    ext_start = Some(i + 1);
                    break;
                }
            }
            _ => field.push(c),
        }
    }
    let ext = &rest[ext_start.expect("7 header fields")..];
    // Keys: alphanumeric runs directly before an unescaped `=`, at the start or after a space.
    let bytes = ext.as_bytes();
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' => {
                eqs.push(i);
                i += 1;
            }
            _ => i += 1,
        }
    }
    let mut keys = Vec::new(); // (key start, '=' position)
    for eq in eqs {
        let start = ext[..eq]
            .rfind(|c: char| !c.is_ascii_alphanumeric())
            .map_or(0, |p| p + 1);
        assert!(start < eq, "empty key before = at {eq} in {ext:?}");
        assert!(
            start == 0 || bytes[start - 1] == b' ',
            "unescaped = inside a value at {eq} in {ext:?}"
        );
        keys.push((start, eq));
    }
    let mut pairs = Vec::new();
    for (n, &(start, eq)) in keys.iter().enumerate() {
        let end = keys.get(n + 1).map_or(ext.len(), |&(next, _)| next - 1);
        pairs.push((
            ext[start..eq].to_string(),
            unescape_value(&ext[eq + 1..end]),
        ));
    }
    (header, pairs)
}

/// Alerts as the simulator serves them (Graph `alerts_v2` and Defender for Endpoint
/// `/api/alerts`): its backlog starts with one alert per adversarial text, then a 10 KB text,
/// huge evidence and no evidence.
async fn simulator_alerts() -> Vec<Event> {
    use relay_config::Audience;
    let sim = relay_sim::Sim::start(relay_sim::SimConfig {
        tenants: 1,
        seed: 7,
        ..relay_sim::SimConfig::default()
    })
    .await
    .unwrap();
    let tenant_id = sim.tenants()[0].tenant_id.clone();
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    for (path, feed, audience) in [
        (
            "v1.0/security/alerts_v2?$top=40",
            Feed::GraphAlerts,
            Audience::Graph,
        ),
        (
            "api/alerts?$top=40&$expand=evidence",
            Feed::MdeAlerts,
            Audience::WindowsDefenderAtp,
        ),
    ] {
        let token = sim
            .entra()
            .mint_access_token(&tenant_id, audience, Duration::from_secs(300));
        let url = sim.base_url().join(path).unwrap();
        let page: Value = http
            .get(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .json()
            .await
            .unwrap();
        let items = page["value"].as_array().unwrap();
        assert!(!items.is_empty(), "{url}: no alerts");
        events.extend(items.iter().map(|item| event_from(item, feed)));
    }
    sim.shutdown().await;
    events
}

// ---------------------------------------------------------------------------------------
// The test.

fn sink_config(port: u16, transport: TransportKind, framing: SyslogFraming) -> SyslogSinkConfig {
    let mut c = SyslogSinkConfig::new("arcsight", "127.0.0.1", port);
    c.transport = transport;
    c.framing = framing;
    c.format = Format::Cef;
    c.hostname = Some(HOSTNAME.to_string());
    c.facility = 10;
    c.connect_timeout = Duration::from_secs(10);
    c
}

/// Sends `events` in two batches through a fresh sink and closes it.
async fn deliver(config: SyslogSinkConfig, events: &[Event]) -> Vec<String> {
    let mut sink = SyslogSink::new(config).unwrap();
    sink.healthcheck().await.unwrap();
    let (a, b) = events.split_at(events.len() / 2);
    sink.send(a).await.unwrap();
    sink.send(b).await.unwrap();
    sink.shutdown().await.unwrap();
    assert_eq!(sink.stats().events_sent, events.len() as u64);
    events
        .iter()
        .map(|e| String::from_utf8(sink.message(e)).unwrap())
        .collect()
}

/// syslog-ng's record, with every CEF value unescaped.
fn decoded_record(r: &Value) -> (Vec<String>, BTreeMap<String, String>) {
    let cef = &r["cef"];
    let s = |k: &str| {
        cef[k]
            .as_str()
            .unwrap_or_else(|| panic!("no cef.{k} in {r}"))
    };
    let header = vec![
        s("version").to_string(),
        unescape_header(s("device_vendor")),
        unescape_header(s("device_product")),
        unescape_header(s("device_version")),
        unescape_header(s("device_event_class_id")),
        unescape_header(s("name")),
        unescape_header(s("severity")),
    ];
    let ext = cef["ext"]
        .as_object()
        .cloned()
        .unwrap_or_else(Map::new)
        .into_iter()
        .map(|(k, v)| (k, unescape_value(v.as_str().unwrap())))
        .collect();
    (header, ext)
}

fn check(transport: &str, records: &[Value], events: &[Event], sent: &[String], rfc: SyslogRfc) {
    let pid = std::process::id().to_string();
    for ((r, e), message) in records.iter().zip(events).zip(sent) {
        let at = format!("{transport}: event {}", e.id);
        // The syslog header as the receiver parsed it.
        let sev = match e.severity {
            Severity::High => 3,
            Severity::Medium => 4,
            Severity::Low | Severity::Unknown => 5,
            Severity::Informational => 6,
        };
        assert_eq!(r["pri"], (10 * 8 + sev).to_string(), "{at}");
        assert_eq!(r["host"], HOSTNAME, "{at}");
        assert_eq!(r["app"], "xdr-relay", "{at}");
        assert_eq!(r["procid"], pid.as_str(), "{at}");
        if rfc == SyslogRfc::Rfc5424 {
            assert_eq!(r["msgid"], e.feed.as_str(), "{at}");
        }

        // 1. Everything the relay sent arrived, decoded the same by syslog-ng and by the
        //    strict reference decoder.
        let line = &message[message.find("CEF:").unwrap()..];
        let (sent_header, sent_pairs) = decode_cef(line);
        let (got_header, got_ext) = decoded_record(r);
        assert_eq!(got_header, sent_header, "{at}");
        let sent_ext: BTreeMap<String, String> = sent_pairs.iter().cloned().collect();
        assert_eq!(sent_ext.len(), sent_pairs.len(), "{at}: a key sent twice");
        assert_eq!(got_ext, sent_ext, "{at}");
    }
}

fn check_against_source(transport: &str, records: &[Value], events: &[Event]) {
    for (r, e) in records.iter().zip(events) {
        let at = format!("{transport}: event {}", e.id);
        let doc: Value = serde_json::from_str(e.raw.get()).unwrap();
        let (want_ext, want_header) = expected_fields(&doc);
        let (got_header, got_ext) = decoded_record(r);
        assert_eq!(&got_header[..6], &want_header[..], "{at}");
        for (key, want) in &want_ext {
            assert_eq!(got_ext.get(*key), want.as_ref(), "{at}: {key}");
        }
    }
}

/// For every event (samples, simulator, hand-made): the CEF Name and `msg` are the document's
/// title and description as the mapping documents them.
fn check_titles_and_descriptions(transport: &str, records: &[Value], events: &[Event]) {
    fn clean(s: &str, max: usize) -> String {
        truncate_chars(s.trim(), max)
            .trim_end()
            .replace('\0', "\u{fffd}")
    }
    for (r, e) in records.iter().zip(events) {
        let at = format!("{transport}: event {}", e.id);
        let (header, ext) = decoded_record(r);
        if let Some(title) = e.title.as_deref().filter(|t| !t.trim().is_empty()) {
            assert_eq!(
                header[5],
                clean(title, 512).replace(['\r', '\n'], " "),
                "{at}"
            );
        }
        let doc: Value = serde_json::from_str(e.raw.get()).unwrap();
        let description = doc["description"].as_str().map(|d| clean(d, 1023));
        assert_eq!(
            ext.get("msg").cloned(),
            description.filter(|d| !d.is_empty()),
            "{at}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ng_receives_every_value_intact_over_octet_counted_tcp_lf_tcp_and_tls() {
    let pki = Pki::new();
    let mut ng = SyslogNg::start(&pki);
    let ca_file = ng.path("ca.pem");
    std::fs::write(&ca_file, &pki.ca_cert_pem).unwrap();

    let texts = adversarial_texts();
    let adversarial: Vec<Event> = (0..texts.len() * 2)
        .map(|i| adversarial_alert(i, &texts))
        .collect();
    let simulated = simulator_alerts().await;
    // The simulator's backlog carries its hostile texts (CR LF, pipes, 10 KB strings).
    assert!(
        simulated.iter().any(|e| e.raw.get().contains(r"\r\n")),
        "simulator alerts without adversarial text"
    );
    let mut events = sample_events();
    events.extend(simulated.iter().cloned());
    let before_adversarial = events.len();
    events.extend(adversarial.iter().cloned());

    let mut tls = sink_config(
        ng.ports.tls,
        TransportKind::Tls,
        SyslogFraming::OctetCounting,
    );
    tls.host = "localhost".to_string();
    tls.tls = Some(TlsConfig {
        ca_file: Some(ca_file),
        ..TlsConfig::default()
    });
    let mut bsd = sink_config(ng.ports.bsd, TransportKind::Tcp, SyslogFraming::Lf);
    bsd.rfc = SyslogRfc::Rfc3164;
    let runs = [
        (
            "octet",
            sink_config(
                ng.ports.octet,
                TransportKind::Tcp,
                SyslogFraming::OctetCounting,
            ),
        ),
        (
            "lf",
            sink_config(ng.ports.lf, TransportKind::Tcp, SyslogFraming::Lf),
        ),
        ("tls", tls),
        ("bsd", bsd),
    ];
    for (name, config) in runs {
        let rfc = config.rfc;
        let sent = deliver(config, &events).await;
        let records = ng.records(name, events.len());
        check(name, &records, &events, &sent, rfc);
        check_against_source(
            name,
            &records[before_adversarial..],
            &events[before_adversarial..],
        );
        check_titles_and_descriptions(name, &records, &events);
    }
    let rejected = std::fs::read_to_string(ng.path("rejected.log")).unwrap_or_default();
    assert!(
        rejected.is_empty(),
        "syslog-ng could not parse:\n{rejected}"
    );
    let log = ng.log();
    assert!(!log.contains("Invalid frame header"), "{log}");
}
