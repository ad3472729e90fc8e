//! The validated configuration: what the rest of the daemon reads. Every value here has
//! been checked and has its default applied; durations are [`Duration`]s and secrets are
//! [`Secret`]s, so `{:?}` of a whole [`Config`] is safe to log.

use crate::{Api, Cloud, Endpoints, Feed, Secret, Stream};
use chrono::NaiveDate;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// The whole validated configuration: `relay.toml`, every tenant file and the
/// environment overrides.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `relay.toml` that was loaded.
    pub config_file: PathBuf,
    /// The directory of `relay.toml`; relative paths in every file are resolved against it.
    pub config_dir: PathBuf,
    /// The directory the tenant files were read from.
    pub tenants_dir: PathBuf,
    /// `[state]`.
    pub state: StateConfig,
    /// `[defaults]`, with the built-in defaults applied.
    pub defaults: TenantDefaults,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[outbox]`.
    pub outbox: OutboxConfig,
    /// `[sinks.NAME]`, by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[playbooks.NAME]`, by name.
    pub playbooks: BTreeMap<String, crate::PlaybookConfig>,
    /// Every tenant file, disabled ones included, ordered by file name.
    pub tenants: Vec<TenantConfig>,
}

impl Config {
    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The tenants to poll (`enabled = true`).
    pub fn enabled_tenants(&self) -> impl Iterator<Item = &TenantConfig> {
        self.tenants.iter().filter(|t| t.enabled)
    }
}

/// `[state]`: the embedded state store.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The SQLite database file (`path`).
    pub path: PathBuf,
    /// The key that encrypts refresh tokens at rest.
    pub key: StateKey,
}

/// Where the state store's encryption key comes from.
#[derive(Debug, Clone)]
pub enum StateKey {
    /// `key = { env | file | credential = ... }`: resolved at load time.
    Secret(Secret),
    /// `key_file = "path"`: a file the state store owns. It need not exist yet, so the
    /// store can create it with a fresh key on first start; this crate does not read it.
    File(PathBuf),
}

/// `[defaults]`: what a tenant file gets for every key it leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDefaults {
    /// `poll_interval_secs` (default 60).
    pub poll_interval: Duration,
    /// `overlap_secs` (default 900): how far each poll reaches back before the checkpoint,
    /// to catch items that became visible late.
    pub overlap: Duration,
    /// `availability_lag_secs` (default 120): the newest `lastUpdateTime` a poll asks for
    /// is `now - availability_lag`.
    pub availability_lag: Duration,
    /// `first_fetch_hours` / `first_fetch_secs` (default 24 h): how far back the first poll
    /// of a new tenant starts.
    pub first_fetch: Duration,
    /// `api` (default `graph`).
    pub api: Api,
    /// `cloud` (default `global`); only a named cloud can be a default.
    pub cloud: Cloud,
    /// `streams` (default `["incidents", "alerts"]`).
    pub streams: Vec<Stream>,
    /// `sinks` (default none: each tenant must name its own).
    pub sinks: Vec<String>,
    /// `auth_probe_min_secs` / `auth_probe_max_secs`: how a tenant whose token requests
    /// fail (consent gone, token endpoint down) is probed.
    pub auth_probe: AuthProbe,
}

/// How often the token endpoint is asked again for a tenant whose token requests fail:
/// first after `min`, then twice as long after each failed probe, at most `max` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthProbe {
    /// `auth_probe_min_secs` (default 60).
    pub min: Duration,
    /// `auth_probe_max_secs` (default 1800).
    pub max: Duration,
}

/// Built-in `auth_probe_min_secs`.
pub const DEFAULT_AUTH_PROBE_MIN_SECS: u64 = 60;
/// Built-in `auth_probe_max_secs`.
pub const DEFAULT_AUTH_PROBE_MAX_SECS: u64 = 1800;

impl Default for AuthProbe {
    fn default() -> Self {
        AuthProbe {
            min: Duration::from_secs(DEFAULT_AUTH_PROBE_MIN_SECS),
            max: Duration::from_secs(DEFAULT_AUTH_PROBE_MAX_SECS),
        }
    }
}

/// Built-in `poll_interval_secs`.
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;
/// Built-in `overlap_secs`.
pub const DEFAULT_OVERLAP_SECS: u64 = 900;
/// Built-in `availability_lag_secs`.
pub const DEFAULT_AVAILABILITY_LAG_SECS: u64 = 120;
/// Built-in `first_fetch_hours`.
pub const DEFAULT_FIRST_FETCH_HOURS: u64 = 24;

impl Default for TenantDefaults {
    fn default() -> Self {
        TenantDefaults {
            poll_interval: Duration::from_secs(DEFAULT_POLL_INTERVAL_SECS),
            overlap: Duration::from_secs(DEFAULT_OVERLAP_SECS),
            availability_lag: Duration::from_secs(DEFAULT_AVAILABILITY_LAG_SECS),
            first_fetch: Duration::from_secs(DEFAULT_FIRST_FETCH_HOURS * 3600),
            api: Api::Graph,
            cloud: Cloud::Global,
            streams: vec![Stream::Incidents, Stream::Alerts],
            sinks: Vec::new(),
            auth_probe: AuthProbe::default(),
        }
    }
}

/// `[http]`: the client used for Entra and the Defender / Graph APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `user_agent` (default `xdr-relay/<version> (MSSP partner)`).
    pub user_agent: String,
    /// `connect_timeout_secs` (default 10).
    pub connect_timeout: Duration,
    /// `request_timeout_secs` (default 60): one request, headers and body.
    pub request_timeout: Duration,
    /// `max_requests_in_flight` (default 256): the ceiling of the adaptive limit of API
    /// requests in flight across all tenants.
    pub max_requests_in_flight: usize,
    /// The outbound proxy for Entra and the APIs: `proxy`, else the `HTTPS_PROXY`
    /// (`https_proxy`) environment variable; `None`: direct connections.
    pub proxy: Option<ProxyConfig>,
    /// `ca_file`: certificates trusted in addition to the built-in roots (a TLS-inspecting
    /// proxy's CA), by both the token and the API clients.
    pub ca: Option<CaBundle>,
}

/// Where requests to Entra and the APIs go when they do not connect directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy, `http://host:port` (or `https://`); HTTPS requests are tunnelled through
    /// it with `CONNECT`. Never carries credentials (validation refuses them).
    pub url: Url,
    /// Which requests use it: `All` when `[http] proxy` set it, `HttpsOnly` when the
    /// environment did (as curl reads `HTTPS_PROXY`: plain-HTTP URLs stay direct).
    pub scope: ProxyScope,
    /// Hosts reached directly: `[http] no_proxy`, else `NO_PROXY` (`no_proxy`); each entry
    /// a host name (`.example.com` or `example.com` matches subdomains too), an IP address,
    /// a CIDR block, or `*` for every host.
    pub no_proxy: Vec<String>,
    /// What set `url`, for messages and logs: `http.proxy` or `environment variable
    /// HTTPS_PROXY`.
    pub source: String,
}

/// Which requests a [`ProxyConfig`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyScope {
    /// Every request (`[http] proxy`).
    All,
    /// HTTPS requests only (`HTTPS_PROXY` from the environment).
    HttpsOnly,
}

/// Extra trust anchors read from `[http] ca_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The file, resolved against the config directory.
    pub path: PathBuf,
    /// Each `CERTIFICATE` block of the file, DER; at least one, each a parseable X.509
    /// certificate.
    pub certificates: Vec<Vec<u8>>,
}

/// The default `User-Agent`. Microsoft asks API partners to identify themselves.
pub fn default_user_agent() -> String {
    format!("xdr-relay/{} (MSSP partner)", env!("CARGO_PKG_VERSION"))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            user_agent: default_user_agent(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_requests_in_flight: 256,
            proxy: None,
            ca: None,
        }
    }
}

/// `[admin]`: the HTTP endpoint serving `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `listen` (default `127.0.0.1:9464`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// `[outbox]`: the durable queue in front of every sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// `max_events_per_sink` (default 1,000,000): the bound on one sink's backlog.
    pub max_events_per_sink: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_events_per_sink: 1_000_000,
        }
    }
}

/// One `[sinks.NAME]` table, by its `type`.
// Built once per sink at start-up, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `type = "file"`.
    File(FileSinkConfig),
    /// `type = "splunk_hec"`.
    SplunkHec(SplunkHecConfig),
    /// `type = "syslog"`.
    Syslog(SyslogConfig),
    /// `type = "kafka"`.
    Kafka(KafkaConfig),
}

impl SinkConfig {
    /// Which kind of sink this is.
    pub fn kind(&self) -> SinkKind {
        match self {
            SinkConfig::File(_) => SinkKind::File,
            SinkConfig::SplunkHec(_) => SinkKind::SplunkHec,
            SinkConfig::Syslog(_) => SinkKind::Syslog,
            SinkConfig::Kafka(_) => SinkKind::Kafka,
        }
    }
}

/// The `type` of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkKind {
    /// `file`.
    File,
    /// `splunk_hec`.
    SplunkHec,
    /// `syslog`.
    Syslog,
    /// `kafka`.
    Kafka,
}

impl SinkKind {
    /// Every kind with its config-file name.
    pub const ALL: [(&'static str, SinkKind); 4] = [
        ("file", SinkKind::File),
        ("splunk_hec", SinkKind::SplunkHec),
        ("syslog", SinkKind::Syslog),
        ("kafka", SinkKind::Kafka),
    ];

    /// The config-file name (`type = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::SplunkHec => "splunk_hec",
            SinkKind::Syslog => "syslog",
            SinkKind::Kafka => "kafka",
        }
    }
}

/// `type = "file"`: newline-delimited JSON files, rotated by size. For demos and audits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// `path`: the directory the files are written to.
    pub path: PathBuf,
    /// `max_file_bytes` (default 100 MiB): rotate when a file would grow past this.
    pub max_file_bytes: u64,
    /// `max_files` (default 10): rotated files kept.
    pub max_files: u32,
}

/// `type = "splunk_hec"`: Splunk HTTP Event Collector.
#[derive(Debug, Clone)]
pub struct SplunkHecConfig {
    /// `url`: the HEC base URL, e.g. `https://splunk.example:8088`.
    pub url: Url,
    /// `token`: the HEC token.
    pub token: Secret,
    /// `index` (default unset: the token's default index).
    pub index: Option<String>,
    /// `source` (default unset: the sink uses `xdr-relay:{feed}:{tenant_id}`). May hold the
    /// placeholders `{tenant}`, `{tenant_id}`, `{stream}`, `{feed}`, checked when the sink is
    /// built.
    pub source: Option<String>,
    /// Sourcetype of `incidents` events: `sourcetypes.incidents`, else `sourcetype`, else
    /// unset: the sink then uses the Splunk Add-on for Microsoft Security's sourcetype of the
    /// feed (`ms365:defender:incident`).
    pub sourcetype_incidents: Option<String>,
    /// Sourcetype of `alerts` events: `sourcetypes.alerts`, else `sourcetype`, else unset:
    /// the sink then uses the add-on's sourcetype of the feed (`ms:defender:atp:alerts` for
    /// Defender for Endpoint alerts, `ms365:defender:incident:alerts` for Graph alerts).
    pub sourcetype_alerts: Option<String>,
    /// Sourcetype of playbook audit events (`actions`): `sourcetypes.actions`, else unset:
    /// the sink then uses `xdr:relay:actions`. `sourcetype` does not apply: audit events
    /// are not Defender documents.
    pub sourcetype_actions: Option<String>,
    /// `host` (default unset: Splunk records the sender).
    pub host: Option<String>,
    /// `gzip` (default true).
    pub gzip: bool,
    /// `gzip_level`, 1 (fastest) to 9 (smallest); default [`DEFAULT_GZIP_LEVEL`].
    pub gzip_level: u32,
    /// `request_timeout_secs` (default 30).
    pub request_timeout: Duration,
    /// `[batch]`.
    pub batch: BatchConfig,
    /// `[indexer_ack]`.
    pub indexer_ack: IndexerAckConfig,
    /// `max_in_flight` (default [`DEFAULT_HEC_MAX_IN_FLIGHT`], 1–100,000): with indexer
    /// ack, at most this many batches sent and awaiting their acknowledgement at once.
    pub max_in_flight: usize,
    /// `[tls]`.
    pub tls: TlsConfig,
}

impl SplunkHecConfig {
    /// The configured sourcetype for events of `stream`; `None` means the per-feed default.
    pub fn sourcetype_for(&self, stream: Stream) -> Option<&str> {
        match stream {
            Stream::Incidents => self.sourcetype_incidents.as_deref(),
            Stream::Alerts => self.sourcetype_alerts.as_deref(),
            Stream::Actions => self.sourcetype_actions.as_deref(),
        }
    }
}

/// The default `gzip_level` of a HEC sink: on distinct Defender alerts, level 3 compresses
/// about 6:1, nine tenths of what level 6 achieves (6.8:1), for about 70 % of its CPU
/// (`cargo bench -p relay-sinks --bench format -- hec-gzip` with `FORMAT_BENCH_GZIP_LEVEL`).
pub const DEFAULT_GZIP_LEVEL: u32 = 3;

/// The default `max_in_flight` of a HEC sink. A batch awaiting indexer acknowledgement
/// costs the relay only its outbox sequence numbers and ack ids, and Splunk keeps up to
/// 1,000,000 pending acks per channel; the window has to cover the indexers' delay at full
/// speed (at ~8,000 events/s and 160 events per 1 MB batch, a 10 s acknowledgement needs
/// about 500 batches outstanding). docs/performance.md has the measurement.
pub const DEFAULT_HEC_MAX_IN_FLIGHT: usize = 1000;

/// `[sinks.NAME.batch]` of a HEC sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// `max_events` (default 500).
    pub max_events: usize,
    /// `max_bytes` (default 1,000,000, before compression).
    pub max_bytes: usize,
    /// `linger_ms` (default 1000): how long a partial batch waits for more events.
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 500,
            max_bytes: 1_000_000,
            linger: Duration::from_millis(1000),
        }
    }
}

/// `[sinks.NAME.indexer_ack]` of a HEC sink (Splunk Enterprise only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexerAckConfig {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `channel` (default unset: a random GUID per start). A GUID, lowercase.
    pub channel: Option<String>,
    /// `timeout_secs` (default 300): resend a batch not acknowledged within this.
    pub timeout: Duration,
    /// `poll_interval_secs` (default 10): how often `/services/collector/ack` is asked.
    pub poll_interval: Duration,
}

impl Default for IndexerAckConfig {
    fn default() -> Self {
        IndexerAckConfig {
            enabled: false,
            channel: None,
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(10),
        }
    }
}

/// `[...tls]` of a HEC or syslog sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `ca_file` (default unset: the system roots). PEM; checked to be readable.
    pub ca_file: Option<PathBuf>,
    /// `verify` (default true): verify the server's certificate and name.
    pub verify: bool,
    /// `client_cert_file` (default unset): PEM client certificate for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// `client_key`: the client certificate's private key (PEM), set exactly when
    /// `client_cert_file` is.
    pub client_key: Option<Secret>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            verify: true,
            client_cert_file: None,
            client_key: None,
        }
    }
}

/// `type = "syslog"`: syslog carrying CEF (ArcSight) or JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// `address` as written, `host:port`.
    pub address: String,
    /// The host part of `address` (brackets of an IPv6 literal removed).
    pub host: String,
    /// The port part of `address`.
    pub port: u16,
    /// `transport` (default `tcp`).
    pub transport: SyslogTransport,
    /// `framing` (default `octet_counting`; ignored for UDP, one message per datagram).
    pub framing: SyslogFraming,
    /// `format` (default `cef`).
    pub format: SyslogFormat,
    /// `rfc` (default 5424).
    pub rfc: SyslogRfc,
    /// `app_name` (default `xdr-relay`).
    pub app_name: String,
    /// `hostname` (default unset: the machine's host name).
    pub hostname: Option<String>,
    /// `facility` (default `local0`), as its numeric code (0–23).
    pub facility: u8,
    /// `[tls]`; present exactly when `transport = "tls"`.
    pub tls: Option<TlsConfig>,
    /// `bom` (default false): put a UTF-8 BOM before MSG (RFC 5424 §6.4). Only with
    /// `rfc = 5424`; off by default because it breaks rsyslog's CEF parsing.
    pub bom: bool,
    /// `max_datagram_bytes` (default 8,192; 480–65,507; UDP only): a larger message is
    /// refused (the sink stops with an error naming the event), never cut or dropped.
    pub max_datagram_bytes: usize,
}

impl SyslogConfig {
    /// Default `max_datagram_bytes`: rsyslog's default `maxMessageSize`, so a default receiver
    /// does not cut what the relay sends.
    pub const DEFAULT_MAX_DATAGRAM_BYTES: usize = 8192;
    /// Smallest `max_datagram_bytes`: what every receiver must take (RFC 5426 §3.2).
    pub const MIN_DATAGRAM_BYTES: usize = 480;
    /// Largest `max_datagram_bytes`: the IPv4 UDP payload limit.
    pub const MAX_DATAGRAM_BYTES: usize = 65_507;
}

/// `transport` of a syslog sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// Plain TCP (RFC 6587).
    Tcp,
    /// TLS (RFC 5425).
    Tls,
    /// UDP (RFC 5426): best effort, no delivery feedback.
    Udp,
}

/// `framing` of a syslog sink over a stream transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFraming {
    /// `LEN SP MSG` (RFC 6587 §3.4.1); mandatory for TLS receivers per RFC 5425.
    OctetCounting,
    /// `MSG LF` (non-transparent framing), what many "raw TCP" listeners expect.
    Lf,
}

/// `format` of a syslog sink's MSG part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// ArcSight Common Event Format.
    Cef,
    /// The event as one JSON object.
    Json,
}

/// `rfc` of a syslog sink: the header format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogRfc {
    /// RFC 5424 (`<PRI>1 TIMESTAMP HOST APP ...`).
    Rfc5424,
    /// RFC 3164 (BSD, `<PRI>Mmm dd hh:mm:ss HOST TAG:`).
    Rfc3164,
}

/// Syslog facility names accepted in `facility`, with their codes (RFC 5424 §6.2.1).
pub const SYSLOG_FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// `type = "kafka"`. The producer is always idempotent with `acks=all`.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `brokers`: `host:port` bootstrap servers.
    pub brokers: Vec<String>,
    /// `topic` (default `defender.{stream}`): a template with `{tenant}` and `{stream}`.
    pub topic: String,
    /// `compression` (default `lz4`).
    pub compression: KafkaCompression,
    /// `[librdkafka]`: further producer properties passed through as they are.
    pub librdkafka: BTreeMap<String, KafkaProperty>,
}

impl KafkaConfig {
    /// The topic for events of `tenant` on `stream`.
    pub fn topic_for(&self, tenant: &str, stream: Stream) -> String {
        self.topic
            .replace("{tenant}", tenant)
            .replace("{stream}", stream.as_str())
    }
}

/// `compression` of a Kafka sink (librdkafka `compression.codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaCompression {
    /// `none`.
    None,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd` (needs librdkafka built with zstd).
    Zstd,
}

impl KafkaCompression {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// librdkafka properties the Kafka sink always sets itself, with why; `[librdkafka]` may
/// not set them (nor an alias). The one list: validation refuses them, the sink relies on
/// it.
pub const KAFKA_RESERVED_PROPERTIES: [(&str, &str); 9] = [
    ("bootstrap.servers", "set by `brokers`"),
    ("metadata.broker.list", "set by `brokers`"),
    ("compression.codec", "set by `compression`"),
    ("compression.type", "set by `compression`"),
    (
        "enable.idempotence",
        "fixed: the producer is always idempotent",
    ),
    ("acks", "fixed: the producer always waits for acks=all"),
    (
        "request.required.acks",
        "fixed: the producer always waits for acks=all",
    ),
    (
        "delivery.report.only.error",
        "fixed: the sink needs every delivery report",
    ),
    (
        "transactional.id",
        "not supported: the sink is idempotent, not transactional",
    ),
];

/// One `[librdkafka]` property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaProperty {
    /// A literal value.
    Plain(String),
    /// A secret reference (`sasl.password = { env = "..." }`), resolved.
    Secret(Secret),
}

impl KafkaProperty {
    /// The value to hand to librdkafka.
    pub fn expose(&self) -> &str {
        match self {
            KafkaProperty::Plain(v) => v,
            KafkaProperty::Secret(s) => s.expose(),
        }
    }
}

/// One `tenants.d/NAME.toml`.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// `name` (default: the file stem); unique, `[a-z0-9_-]`. Logs and metrics use it.
    pub name: String,
    /// `tenant_id`: the Entra tenant (directory) id, a lowercase GUID; unique.
    pub tenant_id: String,
    /// `enabled` (default true).
    pub enabled: bool,
    /// `playbooks` (default true): `false` opts the tenant out of every playbook.
    pub playbooks: bool,
    /// `api` (default from `[defaults]`).
    pub api: Api,
    /// `streams` (default from `[defaults]`); non-empty, no duplicates.
    pub streams: Vec<Stream>,
    /// `sinks` (default from `[defaults]`); non-empty, each defined in `relay.toml`.
    pub sinks: Vec<String>,
    /// `cloud` (default from `[defaults]`).
    pub cloud: Cloud,
    /// `cloud.endpoints()`, resolved once.
    pub endpoints: Endpoints,
    /// `poll_interval_secs`.
    pub poll_interval: Duration,
    /// `overlap_secs`.
    pub overlap: Duration,
    /// `availability_lag_secs`.
    pub availability_lag: Duration,
    /// `first_fetch_hours` / `first_fetch_secs`.
    pub first_fetch: Duration,
    /// `auth_probe_min_secs` / `auth_probe_max_secs` (default from `[defaults]`).
    pub auth_probe: AuthProbe,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[sink_overrides.NAME]` for this tenant's Splunk HEC sinks, by sink name.
    pub hec_overrides: BTreeMap<String, HecOverrides>,
    /// The file this tenant was read from.
    pub file: PathBuf,
}

impl TenantConfig {
    /// The API feeds to poll: one per stream, through the tenant's API family.
    pub fn feeds(&self) -> Vec<Feed> {
        self.streams
            .iter()
            .map(|&stream| Feed::of(self.api, stream))
            .collect()
    }

    /// The overrides of HEC sink `sink` for this tenant, if any.
    pub fn hec_overrides_for(&self, sink: &str) -> Option<&HecOverrides> {
        self.hec_overrides.get(sink)
    }
}

/// `[sink_overrides.NAME]` of a tenant, for a `splunk_hec` sink: where this customer's
/// events go in Splunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HecOverrides {
    /// `index`.
    pub index: Option<String>,
    /// `source`.
    pub source: Option<String>,
    /// `sourcetype` (both streams).
    pub sourcetype: Option<String>,
    /// `host`.
    pub host: Option<String>,
}

/// `[auth]` of a tenant.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `client_id`: the (multi-tenant) app registration, a lowercase GUID.
    pub client_id: String,
    /// `token_version` (default `v2`): which token endpoint and parameter style to use.
    pub token_version: TokenVersion,
    /// `kind` and its credentials.
    pub method: AuthMethod,
    /// `client_secret_expires`: when the client secret expires, for early warnings.
    pub client_secret_expires: Option<NaiveDate>,
}

/// `kind` of `[auth]`, with the credentials that kind needs.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    /// `kind = "refresh_token"`: delegated access, the GDAP / partner-consent path.
    RefreshToken {
        /// `client_secret`: set for a confidential client, unset for a public client.
        client_secret: Option<Secret>,
        /// `refresh_token`: a bootstrap seed only. Once the state store holds a refresh
        /// token for the tenant, that one (rotated on every use) wins.
        refresh_token: Option<Secret>,
    },
    /// `kind = "client_secret"`: application permissions, client-credentials grant.
    ClientSecret {
        /// `client_secret`.
        client_secret: Secret,
    },
    /// `kind = "certificate"`: application permissions, certificate assertion.
    Certificate {
        /// `certificate_file`.
        certificate_file: PathBuf,
        /// The contents of `certificate_file` (PEM; public, not a secret).
        certificate_pem: String,
        /// `private_key`: the certificate's PEM private key.
        private_key: Secret,
    },
}

impl AuthMethod {
    /// The config-file name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthMethod::RefreshToken { .. } => "refresh_token",
            AuthMethod::ClientSecret { .. } => "client_secret",
            AuthMethod::Certificate { .. } => "certificate",
        }
    }
}

/// Which Entra token endpoint a tenant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenVersion {
    /// `/oauth2/token` with `resource=`.
    V1,
    /// `/oauth2/v2.0/token` with `scope=<resource>/.default`.
    #[default]
    V2,
}
