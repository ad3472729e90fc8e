//! Raw sections → typed configuration. Each function checks every key of its section,
//! reports each problem, and returns `None` if there was any.

use crate::check::{child_key, host_port, is_valid_name, Ctx, NAME_RULE};
use crate::error::join_key;
use crate::load::{deserialize_at, undefined_sink_message};
use crate::model::*;
use crate::raw::*;
use crate::{
    Api, Cloud, Endpoints, Stream, RESOURCE_GRAPH, RESOURCE_THREAT_PROTECTION,
    RESOURCE_WINDOWS_DEFENDER_ATP,
};
use chrono::NaiveDate;
use config::{Map, Value, ValueKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DAY: u64 = 86_400;
/// Defender keeps incidents and alerts for 180 days; a first fetch further back finds
/// nothing more.
const MAX_FIRST_FETCH_HOURS: u64 = 180 * 24;

const APIS: [(&str, Api); 2] = [("graph", Api::Graph), ("defender", Api::Defender)];
const STREAMS: [(&str, Stream); 2] = [("incidents", Stream::Incidents), ("alerts", Stream::Alerts)];

pub(crate) fn state(ctx: &mut Ctx<'_>, raw: RawState) -> Option<StateConfig> {
    let path = ctx
        .required("state.path", raw.path)
        .and_then(|p| ctx.non_empty("state.path", Some(p)))
        .flatten()
        .map(|p| ctx.res.path(&p));
    let key = match (raw.key, raw.key_file) {
        (Some(secret), None) => ctx.secret("state.key", &secret).map(StateKey::Secret),
        (None, Some(file)) if !file.trim().is_empty() => Some(StateKey::File(ctx.res.path(&file))),
        (None, Some(_)) => {
            ctx.problem("state.key_file", "must not be empty");
            None
        }
        (Some(_), Some(_)) => {
            ctx.problem("state.key", "set either `key` or `key_file`, not both");
            None
        }
        (None, None) => {
            ctx.problem(
                "state.key",
                "is required: the key that encrypts refresh tokens, as `key = { credential = \"...\" }` \
                 (or `env` / `file`), or `key_file` for a key file the store may create",
            );
            None
        }
    };
    Some(StateConfig {
        path: path?,
        key: key?,
    })
}

pub(crate) fn defaults(ctx: &mut Ctx<'_>, raw: RawDefaults) -> Option<TenantDefaults> {
    let builtin = TenantDefaults::default();
    let timing = timing(ctx, "defaults.", &raw_timing(&raw), None);
    let api = match &raw.api {
        Some(a) => ctx.choice("defaults.api", a, &APIS),
        None => Some(builtin.api),
    };
    let cloud = match &raw.cloud {
        None => Some(builtin.cloud.clone()),
        Some(name) => {
            let cloud = Cloud::from_name(name);
            if cloud.is_none() {
                ctx.problem(
                    "defaults.cloud",
                    format!(
                        "must be one of `global`, `gcc`, `gcc_high`, `dod` (found `{name}`); \
                         explicit endpoints go in a tenant file's [cloud] table"
                    ),
                );
            }
            cloud
        }
    };
    let streams = match raw.streams {
        Some(list) => streams(ctx, "defaults.streams", &list),
        None => Some(builtin.streams.clone()),
    };
    let sinks = match raw.sinks {
        Some(list) => sink_names(ctx, "defaults.sinks", list),
        None => Some(Vec::new()),
    };
    let auth_probe = auth_probe(
        ctx,
        "defaults.",
        (raw.auth_probe_min_secs, raw.auth_probe_max_secs),
        &builtin.auth_probe,
    );
    let (poll_interval, overlap, availability_lag, first_fetch) = timing?;
    Some(TenantDefaults {
        poll_interval,
        overlap,
        availability_lag,
        first_fetch,
        api: api?,
        cloud: cloud?,
        streams: streams?,
        sinks: sinks?,
        auth_probe: auth_probe?,
    })
}

/// `auth_probe_min_secs` and `auth_probe_max_secs` (unset ones from `inherit`). The floor
/// of 1 s is for tests; the ceiling keeps a recovered tenant from waiting a day.
fn auth_probe(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    (min, max): (Option<u64>, Option<u64>),
    inherit: &AuthProbe,
) -> Option<AuthProbe> {
    let min_key = format!("{prefix}auth_probe_min_secs");
    let max_key = format!("{prefix}auth_probe_max_secs");
    let min = match min {
        Some(v) => ctx.secs_in(&min_key, Some(v), 0, 1, DAY),
        None => Some(inherit.min),
    };
    let max = match max {
        Some(v) => ctx.secs_in(&max_key, Some(v), 0, 1, DAY),
        None => Some(inherit.max),
    };
    let (min, max) = (min?, max?);
    if max < min {
        ctx.problem(
            &max_key,
            format!(
                "must be at least auth_probe_min_secs ({}), found {}",
                min.as_secs(),
                max.as_secs()
            ),
        );
        return None;
    }
    Some(AuthProbe { min, max })
}

/// The timing keys shared by `[defaults]` and tenant files.
struct RawTiming {
    poll_interval_secs: Option<u64>,
    overlap_secs: Option<u64>,
    availability_lag_secs: Option<u64>,
    first_fetch_hours: Option<u64>,
    first_fetch_secs: Option<u64>,
}

fn raw_timing(raw: &RawDefaults) -> RawTiming {
    RawTiming {
        poll_interval_secs: raw.poll_interval_secs,
        overlap_secs: raw.overlap_secs,
        availability_lag_secs: raw.availability_lag_secs,
        first_fetch_hours: raw.first_fetch_hours,
        first_fetch_secs: raw.first_fetch_secs,
    }
}

type Timing = (Duration, Duration, Duration, Duration);

/// Poll interval, overlap, availability lag and first fetch; unset keys come from
/// `inherit` (a tenant's `[defaults]`) or the built-in defaults.
fn timing(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    raw: &RawTiming,
    inherit: Option<&TenantDefaults>,
) -> Option<Timing> {
    let base = inherit.cloned().unwrap_or_default();
    let key = |k: &str| format!("{prefix}{k}");
    let poll = match raw.poll_interval_secs {
        // Below 10 s a few thousand tenants would exceed the APIs' per-app rate limits.
        Some(v) => ctx.secs_in(&key("poll_interval_secs"), Some(v), 0, 10, DAY),
        None => Some(base.poll_interval),
    };
    let overlap = match raw.overlap_secs {
        Some(v) => ctx.secs_in(&key("overlap_secs"), Some(v), 0, 0, 7 * DAY),
        None => Some(base.overlap),
    };
    let lag = match raw.availability_lag_secs {
        Some(v) => ctx.secs_in(&key("availability_lag_secs"), Some(v), 0, 0, DAY),
        None => Some(base.availability_lag),
    };
    let first = match (raw.first_fetch_hours, raw.first_fetch_secs) {
        (Some(_), Some(_)) => {
            ctx.problem(
                &key("first_fetch_secs"),
                "set either `first_fetch_hours` or `first_fetch_secs`, not both",
            );
            None
        }
        (Some(h), None) => ctx
            .int_in(
                &key("first_fetch_hours"),
                Some(h),
                0,
                0,
                MAX_FIRST_FETCH_HOURS,
            )
            .map(|h| Duration::from_secs(h * 3600)),
        (None, Some(s)) => ctx.secs_in(
            &key("first_fetch_secs"),
            Some(s),
            0,
            0,
            MAX_FIRST_FETCH_HOURS * 3600,
        ),
        (None, None) => Some(base.first_fetch),
    };
    Some((poll?, overlap?, lag?, first?))
}

fn streams(ctx: &mut Ctx<'_>, key: &str, list: &[String]) -> Option<Vec<Stream>> {
    if list.is_empty() {
        ctx.problem(key, "must name at least one stream: `incidents`, `alerts`");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, name) in list.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        match ctx.choice(&item_key, name, &STREAMS) {
            Some(s) if out.contains(&s) => {
                ctx.problem(&item_key, format!("stream `{name}` is listed twice"));
                ok = false;
            }
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn sink_names(ctx: &mut Ctx<'_>, key: &str, list: Vec<String>) -> Option<Vec<String>> {
    let mut ok = true;
    for (i, name) in list.iter().enumerate() {
        if list[..i].contains(name) {
            ctx.problem(
                &format!("{key}[{i}]"),
                format!("sink `{name}` is listed twice"),
            );
            ok = false;
        }
    }
    ok.then_some(list)
}

pub(crate) fn http(ctx: &mut Ctx<'_>, raw: RawHttp) -> Option<HttpConfig> {
    let builtin = HttpConfig::default();
    let user_agent = match raw.user_agent {
        Some(ua) if ua.trim().is_empty() || ua.chars().any(char::is_control) => {
            ctx.problem("http.user_agent", "must be non-empty printable text");
            None
        }
        Some(ua) => Some(ua),
        None => Some(builtin.user_agent),
    };
    let connect_timeout = ctx.secs_in(
        "http.connect_timeout_secs",
        raw.connect_timeout_secs,
        10,
        1,
        300,
    );
    let request_timeout = ctx.secs_in(
        "http.request_timeout_secs",
        raw.request_timeout_secs,
        60,
        1,
        3600,
    );
    let in_flight = ctx.int_in(
        "http.max_requests_in_flight",
        raw.max_requests_in_flight,
        32,
        1,
        10_000,
    );
    let proxy = proxy(ctx, raw.proxy.as_deref(), raw.no_proxy.as_deref());
    let ca = match raw.ca_file {
        None => Some(None),
        Some(file) => ca_bundle(ctx, "http.ca_file", &file).map(Some),
    };
    Some(HttpConfig {
        user_agent: user_agent?,
        connect_timeout: connect_timeout?,
        request_timeout: request_timeout?,
        max_requests_in_flight: usize::try_from(in_flight?).ok()?,
        proxy: proxy?,
        ca: ca?,
    })
}

/// The proxy: `[http] proxy` (every request), else `HTTPS_PROXY` / `https_proxy` from the
/// environment the caller passed (HTTPS requests only, as curl reads it). The bypass list:
/// `[http] no_proxy`, else `NO_PROXY` / `no_proxy`. `Some(None)`: connect directly.
fn proxy(
    ctx: &mut Ctx<'_>,
    configured: Option<&str>,
    no_proxy: Option<&[String]>,
) -> Option<Option<ProxyConfig>> {
    let env = ctx.res.env;
    let from_env = |names: [&'static str; 2]| {
        names.into_iter().find_map(|n| {
            env.get(n)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (n, v.clone()))
        })
    };
    let key = "http.proxy";
    let (value, scope, source) = match configured {
        Some(url) => (url.to_string(), ProxyScope::All, key.to_string()),
        None => match from_env(["HTTPS_PROXY", "https_proxy"]) {
            Some((var, url)) => (
                url,
                ProxyScope::HttpsOnly,
                format!("environment variable {var}"),
            ),
            None => return Some(None),
        },
    };
    let before = ctx.problems.len();
    let url = ctx.http_url(key, &value);
    if scope == ProxyScope::HttpsOnly {
        // Reported under the key it stands in for, naming the variable that set it.
        for p in &mut ctx.problems[before..] {
            p.message.push_str(&format!(" (set by {source})"));
        }
    }
    let bypass = match no_proxy {
        Some(list) => no_proxy_entries(ctx, "http.no_proxy", list.iter().map(String::as_str)),
        None => match from_env(["NO_PROXY", "no_proxy"]) {
            Some((_, list)) => Some(
                // An environment list is taken as curl takes it: empty entries ignored.
                list.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            None => Some(Vec::new()),
        },
    };
    Some(Some(ProxyConfig {
        url: url?,
        scope,
        no_proxy: bypass?,
        source,
    }))
}

fn no_proxy_entries<'a>(
    ctx: &mut Ctx<'_>,
    key: &str,
    entries: impl Iterator<Item = &'a str>,
) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, entry) in entries.enumerate() {
        let e = entry.trim();
        if e.is_empty() || e.contains(',') || e.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            ctx.problem(
                &format!("{key}[{i}]"),
                "must be one host name, IP address or CIDR block (no spaces or commas)",
            );
            ok = false;
        } else {
            out.push(e.to_string());
        }
    }
    ok.then_some(out)
}

/// `ca_file`: a readable PEM file of one or more certificates, each parsed here so that a
/// wrong file (a key, a DER file, a truncated copy) is reported at start-up with its key
/// rather than as a TLS failure on the first request.
fn ca_bundle(ctx: &mut Ctx<'_>, key: &str, file: &str) -> Option<CaBundle> {
    let path = ctx.readable_file(key, file)?;
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            ctx.problem(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let blocks = match pem::parse_many(&text) {
        Ok(b) => b,
        Err(e) => {
            ctx.problem(key, format!("{} is not valid PEM: {e}", path.display()));
            return None;
        }
    };
    // pem skips a block it cannot read (no END line, bad base64 inside): a truncated
    // copy of a bundle would silently lose its last certificates.
    let begun = text.windows(11).filter(|w| w == b"-----BEGIN ").count();
    if begun > blocks.len() {
        ctx.problem(
            key,
            format!(
                "{}: a PEM block is truncated or malformed ({begun} begun, {} readable)",
                path.display(),
                blocks.len()
            ),
        );
        return None;
    }
    let mut certificates = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block.tag() {
            "CERTIFICATE" => {}
            // Never echo a key block, only say what it is.
            other => {
                ctx.problem(
                    key,
                    format!(
                        "{}: PEM block {} is `{other}`, not a CERTIFICATE",
                        path.display(),
                        i + 1
                    ),
                );
                return None;
            }
        }
        if let Err(e) = x509_parser::parse_x509_certificate(block.contents()) {
            ctx.problem(
                key,
                format!(
                    "{}: certificate {} cannot be parsed: {e}",
                    path.display(),
                    i + 1
                ),
            );
            return None;
        }
        certificates.push(block.contents().to_vec());
    }
    if certificates.is_empty() {
        ctx.problem(
            key,
            format!("{} holds no PEM CERTIFICATE block", path.display()),
        );
        return None;
    }
    Some(CaBundle { path, certificates })
}

pub(crate) fn admin(ctx: &mut Ctx<'_>, raw: RawAdmin) -> Option<AdminConfig> {
    match raw.listen {
        None => Some(AdminConfig::default()),
        Some(listen) => match listen.trim().parse::<SocketAddr>() {
            Ok(listen) => Some(AdminConfig { listen }),
            Err(_) => {
                ctx.problem(
                    "admin.listen",
                    "must be an IP address and port, e.g. 127.0.0.1:9464",
                );
                None
            }
        },
    }
}

pub(crate) fn outbox(ctx: &mut Ctx<'_>, raw: RawOutbox) -> Option<OutboxConfig> {
    let max = ctx.int_in(
        "outbox.max_events_per_sink",
        raw.max_events_per_sink,
        OutboxConfig::default().max_events_per_sink,
        1,
        u64::MAX,
    )?;
    Some(OutboxConfig {
        max_events_per_sink: max,
    })
}

pub(crate) fn file_sink(ctx: &mut Ctx<'_>, key: &str, raw: RawFileSink) -> Option<SinkConfig> {
    let path = ctx
        .required(&join_key(key, "path"), raw.path)
        .and_then(|p| ctx.non_empty(&join_key(key, "path"), Some(p)))
        .flatten()
        .map(|p| ctx.res.path(&p));
    let max_file_bytes = ctx.int_in(
        &join_key(key, "max_file_bytes"),
        raw.max_file_bytes,
        100 * 1024 * 1024,
        1024,
        u64::MAX,
    );
    let max_files = ctx.int_in(&join_key(key, "max_files"), raw.max_files, 10, 1, 100_000);
    Some(SinkConfig::File(FileSinkConfig {
        path: path?,
        max_file_bytes: max_file_bytes?,
        max_files: u32::try_from(max_files?).ok()?,
    }))
}

pub(crate) fn hec_sink(ctx: &mut Ctx<'_>, key: &str, raw: RawHecSink) -> Option<SinkConfig> {
    let k = |s: &str| join_key(key, s);
    let url = ctx
        .required(&k("url"), raw.url)
        .and_then(|u| ctx.http_url(&k("url"), &u));
    let token = ctx
        .required(&k("token"), raw.token)
        .and_then(|t| ctx.secret(&k("token"), &t));
    let index = ctx.non_empty(&k("index"), raw.index);
    let source = ctx.non_empty(&k("source"), raw.source);
    let sourcetype = ctx.non_empty(&k("sourcetype"), raw.sourcetype);
    let per_stream = raw.sourcetypes.unwrap_or_default();
    let st_incidents = ctx.non_empty(&k("sourcetypes.incidents"), per_stream.incidents);
    let st_alerts = ctx.non_empty(&k("sourcetypes.alerts"), per_stream.alerts);
    let st_actions = ctx.non_empty(&k("sourcetypes.actions"), per_stream.actions);
    let host = ctx.non_empty(&k("host"), raw.host);
    let request_timeout = ctx.secs_in(
        &k("request_timeout_secs"),
        raw.request_timeout_secs,
        30,
        1,
        600,
    );

    let batch_raw = raw.batch.unwrap_or_default();
    let batch_defaults = BatchConfig::default();
    let max_events = ctx.int_in(
        &k("batch.max_events"),
        batch_raw.max_events,
        batch_defaults.max_events as u64,
        1,
        100_000,
    );
    // Splunk's receiver limit is ~800 MB (`max_content_length`); far smaller is sane.
    let max_bytes = ctx.int_in(
        &k("batch.max_bytes"),
        batch_raw.max_bytes,
        batch_defaults.max_bytes as u64,
        1024,
        838_860_800,
    );
    let linger_ms = ctx.int_in(&k("batch.linger_ms"), batch_raw.linger_ms, 1000, 0, 60_000);
    let gzip_level = ctx.int_in(
        &k("gzip_level"),
        raw.gzip_level,
        u64::from(crate::model::DEFAULT_GZIP_LEVEL),
        1,
        9,
    );

    let ack_raw = raw.indexer_ack.unwrap_or_default();
    let ack_defaults = IndexerAckConfig::default();
    let channel = match &ack_raw.channel {
        Some(c) => ctx.guid(&k("indexer_ack.channel"), c).map(Some),
        None => Some(None),
    };
    let ack_timeout = ctx.secs_in(
        &k("indexer_ack.timeout_secs"),
        ack_raw.timeout_secs,
        ack_defaults.timeout.as_secs(),
        10,
        3600,
    );
    let ack_poll = ctx.secs_in(
        &k("indexer_ack.poll_interval_secs"),
        ack_raw.poll_interval_secs,
        ack_defaults.poll_interval.as_secs(),
        1,
        300,
    );

    let max_in_flight = ctx.int_in(
        &k("max_in_flight"),
        raw.max_in_flight,
        crate::model::DEFAULT_HEC_MAX_IN_FLIGHT as u64,
        1,
        100_000,
    );

    let tls = match raw.tls {
        None => Some(TlsConfig::default()),
        Some(t) => {
            if url.as_ref().is_some_and(|u| u.scheme() != "https") {
                ctx.problem(&k("tls"), "applies only to an https `url`");
            }
            tls(ctx, &k("tls"), t)
        }
    };

    let (index, source, sourcetype, st_incidents, st_alerts, host) = (
        index?,
        source?,
        sourcetype?,
        st_incidents?,
        st_alerts?,
        host?,
    );
    Some(SinkConfig::SplunkHec(SplunkHecConfig {
        url: url?,
        token: token?,
        index,
        source,
        sourcetype_incidents: st_incidents.or_else(|| sourcetype.clone()),
        sourcetype_alerts: st_alerts.or(sourcetype),
        sourcetype_actions: st_actions?,
        host,
        gzip: raw.gzip.unwrap_or(true),
        gzip_level: u32::try_from(gzip_level?).ok()?,
        request_timeout: request_timeout?,
        batch: BatchConfig {
            max_events: usize::try_from(max_events?).ok()?,
            max_bytes: usize::try_from(max_bytes?).ok()?,
            linger: Duration::from_millis(linger_ms?),
        },
        indexer_ack: IndexerAckConfig {
            enabled: ack_raw.enabled.unwrap_or(ack_defaults.enabled),
            channel: channel?,
            timeout: ack_timeout?,
            poll_interval: ack_poll?,
        },
        max_in_flight: usize::try_from(max_in_flight?).ok()?,
        tls: tls?,
    }))
}

fn tls(ctx: &mut Ctx<'_>, key: &str, raw: RawTls) -> Option<TlsConfig> {
    let k = |s: &str| join_key(key, s);
    let ca_file = match &raw.ca_file {
        Some(f) => ctx.readable_file(&k("ca_file"), f).map(Some),
        None => Some(None),
    };
    let client_cert_file = match &raw.client_cert_file {
        Some(f) => ctx.readable_file(&k("client_cert_file"), f).map(Some),
        None => Some(None),
    };
    let client_key = match &raw.client_key {
        Some(s) => ctx.secret(&k("client_key"), s).map(Some),
        None => Some(None),
    };
    if raw.client_cert_file.is_some() != raw.client_key.is_some() {
        let missing = if raw.client_cert_file.is_some() {
            "client_key"
        } else {
            "client_cert_file"
        };
        ctx.problem(
            &k(missing),
            "`client_cert_file` and `client_key` must be set together",
        );
        return None;
    }
    Some(TlsConfig {
        ca_file: ca_file?,
        verify: raw.verify.unwrap_or(true),
        client_cert_file: client_cert_file?,
        client_key: client_key?,
    })
}

pub(crate) fn syslog_sink(ctx: &mut Ctx<'_>, key: &str, raw: RawSyslogSink) -> Option<SinkConfig> {
    let k = |s: &str| join_key(key, s);
    let address = ctx.required(&k("address"), raw.address);
    let host_port = address.as_deref().and_then(|a| match host_port(a.trim()) {
        Ok(hp) => Some(hp),
        Err(message) => {
            ctx.problem(&k("address"), message);
            None
        }
    });
    let transport = match &raw.transport {
        Some(t) => ctx.choice(
            &k("transport"),
            t,
            &[
                ("tcp", SyslogTransport::Tcp),
                ("tls", SyslogTransport::Tls),
                ("udp", SyslogTransport::Udp),
            ],
        ),
        None => Some(SyslogTransport::Tcp),
    };
    let framing = match &raw.framing {
        Some(f) => ctx.choice(
            &k("framing"),
            f,
            &[
                ("octet_counting", SyslogFraming::OctetCounting),
                ("lf", SyslogFraming::Lf),
            ],
        ),
        None => Some(SyslogFraming::OctetCounting),
    };
    if transport == Some(SyslogTransport::Udp) && raw.framing.is_some() {
        ctx.problem(
            &k("framing"),
            "does not apply to `transport = \"udp\"` (one message per datagram)",
        );
    }
    let format = match &raw.format {
        Some(f) => ctx.choice(
            &k("format"),
            f,
            &[("cef", SyslogFormat::Cef), ("json", SyslogFormat::Json)],
        ),
        None => Some(SyslogFormat::Cef),
    };
    let rfc = match raw.rfc {
        None | Some(5424) => Some(SyslogRfc::Rfc5424),
        Some(3164) => Some(SyslogRfc::Rfc3164),
        Some(other) => {
            ctx.problem(&k("rfc"), format!("must be 5424 or 3164 (found {other})"));
            None
        }
    };
    // RFC 5424 caps APP-NAME at 48 printable ASCII characters, RFC 3164 its TAG at 32
    // alphanumerics; check the stricter rule for the chosen header.
    let app_name = raw.app_name.unwrap_or_else(|| "xdr-relay".to_string());
    let app_ok = match rfc {
        Some(SyslogRfc::Rfc3164) => {
            !app_name.is_empty()
                && app_name.len() <= 32
                && app_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }
        _ => {
            !app_name.is_empty()
                && app_name.len() <= 48
                && app_name.bytes().all(|b| b.is_ascii_graphic())
        }
    };
    if !app_ok {
        ctx.problem(
            &k("app_name"),
            "must be 1–48 printable ASCII characters without spaces (RFC 5424), \
             or 1–32 of a-z, A-Z, 0-9, `-`, `_` with rfc = 3164",
        );
    }
    let hostname = match raw.hostname {
        Some(h) if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) => {
            ctx.problem(
                &k("hostname"),
                "must be 1–255 printable ASCII characters without spaces",
            );
            None
        }
        other => Some(other),
    };
    let facility = match &raw.facility {
        Some(f) => ctx.choice(&k("facility"), f, &SYSLOG_FACILITIES),
        None => Some(16),
    };
    let tls = match (transport, raw.tls) {
        (Some(SyslogTransport::Tls), Some(t)) => tls(ctx, &k("tls"), t).map(Some),
        (Some(SyslogTransport::Tls), None) => Some(Some(TlsConfig::default())),
        (_, Some(_)) => {
            ctx.problem(&k("tls"), "applies only to `transport = \"tls\"`");
            None
        }
        (_, None) => Some(None),
    };
    let bom = raw.bom.unwrap_or(false);
    if bom && rfc == Some(SyslogRfc::Rfc3164) {
        ctx.problem(&k("bom"), "applies only to `rfc = 5424`");
    }
    let max_datagram_bytes = match raw.max_datagram_bytes {
        None => Some(SyslogConfig::DEFAULT_MAX_DATAGRAM_BYTES),
        Some(_) if transport.is_some() && transport != Some(SyslogTransport::Udp) => {
            ctx.problem(
                &k("max_datagram_bytes"),
                "applies only to `transport = \"udp\"`",
            );
            None
        }
        Some(n) => match usize::try_from(n) {
            Ok(n)
                if (SyslogConfig::MIN_DATAGRAM_BYTES..=SyslogConfig::MAX_DATAGRAM_BYTES)
                    .contains(&n) =>
            {
                Some(n)
            }
            _ => {
                ctx.problem(
                    &k("max_datagram_bytes"),
                    format!(
                        "must be {}–{} (found {n})",
                        SyslogConfig::MIN_DATAGRAM_BYTES,
                        SyslogConfig::MAX_DATAGRAM_BYTES
                    ),
                );
                None
            }
        },
    };
    let (host, port) = host_port?;
    if !app_ok {
        return None;
    }
    Some(SinkConfig::Syslog(SyslogConfig {
        address: address?.trim().to_string(),
        host,
        port,
        transport: transport?,
        framing: framing?,
        format: format?,
        rfc: rfc?,
        app_name,
        hostname: hostname?,
        facility: facility?,
        tls: tls?,
        bom,
        max_datagram_bytes: max_datagram_bytes?,
    }))
}

/// A property whose value is a credential, so it must come from a secret reference.
fn kafka_property_is_secret(name: &str) -> bool {
    name.contains("password")
        || name.contains("secret")
        || name == "ssl.key.pem"
        || name == "sasl.oauthbearer.config"
}

pub(crate) fn kafka_sink(ctx: &mut Ctx<'_>, key: &str, raw: RawKafkaSink) -> Option<SinkConfig> {
    let k = |s: &str| join_key(key, s);
    let brokers = match ctx.required(&k("brokers"), raw.brokers) {
        Some(StringList(list)) if list.is_empty() => {
            ctx.problem(&k("brokers"), "must name at least one broker");
            None
        }
        Some(StringList(list)) => {
            let mut ok = true;
            for (i, broker) in list.iter().enumerate() {
                if let Err(message) = host_port(broker) {
                    ctx.problem(&format!("{}[{i}]", k("brokers")), message);
                    ok = false;
                }
            }
            ok.then_some(list)
        }
        None => None,
    };
    let topic = raw.topic.unwrap_or_else(|| "defender.{stream}".to_string());
    let topic_ok = match topic_problem(&topic) {
        Some(message) => {
            ctx.problem(&k("topic"), message);
            false
        }
        None => true,
    };
    let compression = match &raw.compression {
        Some(c) => ctx.choice(
            &k("compression"),
            c,
            &[
                ("none", KafkaCompression::None),
                ("gzip", KafkaCompression::Gzip),
                ("snappy", KafkaCompression::Snappy),
                ("lz4", KafkaCompression::Lz4),
                ("zstd", KafkaCompression::Zstd),
            ],
        ),
        None => Some(KafkaCompression::Lz4),
    };
    let mut properties = BTreeMap::new();
    let mut props_ok = true;
    for (name, value) in raw.librdkafka.unwrap_or_default() {
        let pkey = child_key(&k("librdkafka"), &name);
        if let Some((_, why)) = crate::model::KAFKA_RESERVED_PROPERTIES
            .iter()
            .find(|(n, _)| *n == name)
        {
            ctx.problem(&pkey, format!("cannot be set here: {why}"));
            props_ok = false;
            continue;
        }
        let property = match value {
            RawProperty::Secret(secret) => ctx.secret(&pkey, &secret).map(KafkaProperty::Secret),
            RawProperty::Plain(_) if kafka_property_is_secret(&name) => {
                ctx.problem(&pkey, crate::raw::LITERAL_SECRET);
                None
            }
            RawProperty::Plain(v)
                if (name == "message.timeout.ms" || name == "delivery.timeout.ms")
                    && !v
                        .parse::<u32>()
                        .is_ok_and(|ms| (1..=i32::MAX as u32).contains(&ms)) =>
            {
                ctx.problem(
                    &pkey,
                    "must be a number of milliseconds from 1 \
                     (0 would let a batch wait for ever during an outage)",
                );
                None
            }
            RawProperty::Plain(v) => Some(KafkaProperty::Plain(v)),
        };
        match property {
            Some(p) => {
                properties.insert(name, p);
            }
            None => props_ok = false,
        }
    }
    let brokers = brokers?;
    if !topic_ok || !props_ok {
        return None;
    }
    Some(SinkConfig::Kafka(KafkaConfig {
        brokers,
        topic,
        compression: compression?,
        librdkafka: properties,
    }))
}

/// What is wrong with a topic template, if anything. Tenant names and streams are
/// `[a-z0-9_-]`, so checking the literal parts checks every topic it can produce.
fn topic_problem(template: &str) -> Option<String> {
    let mut literal = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Some("has an unclosed `{`".to_string());
        };
        let placeholder = &rest[open + 1..open + close];
        if placeholder != "tenant" && placeholder != "stream" {
            return Some(format!(
                "unknown placeholder `{{{placeholder}}}`; use `{{tenant}}` and `{{stream}}`"
            ));
        }
        literal.push('x');
        rest = &rest[open + close + 1..];
    }
    literal.push_str(rest);
    if literal.is_empty() {
        return Some("must not be empty".to_string());
    }
    if !literal
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("may contain only a-z, A-Z, 0-9, `.`, `_`, `-` and the placeholders `{tenant}`, `{stream}`".to_string());
    }
    // Kafka's limit is 249 characters; leave room for the longest tenant name (64).
    if template.len() > 180 {
        return Some("is too long for Kafka's 249-character topic limit".to_string());
    }
    None
}

/// Tenant names and ids seen so far, with the file that claimed them.
#[derive(Default)]
pub(crate) struct Seen {
    names: BTreeMap<String, String>,
    tenant_ids: BTreeMap<String, String>,
}

pub(crate) fn tenant(
    ctx: &mut Ctx<'_>,
    stem: &str,
    path: &Path,
    mut table: Map<String, Value>,
    defaults: &TenantDefaults,
    sinks: Option<&BTreeMap<String, Option<SinkKind>>>,
    seen: &mut Seen,
) -> Option<TenantConfig> {
    let auth_value = table.remove("auth");
    let cloud_value = table.remove("cloud");
    let overrides_value = table.remove("sink_overrides");
    let raw: Option<RawTenant> = deserialize_at(ctx, "", Value::new(None, ValueKind::Table(table)));

    let scalars = raw.and_then(|raw| tenant_scalars(ctx, stem, raw, defaults, sinks, seen));
    let cloud = match cloud_value {
        None => Some(defaults.cloud.clone()),
        Some(value) => cloud(ctx, value),
    };
    let auth = match auth_value {
        None => {
            ctx.problem(
                "auth",
                "is required: an [auth] table with `kind` and `client_id`",
            );
            None
        }
        Some(value) => deserialize_at(ctx, "auth", value).and_then(|raw| auth(ctx, raw)),
    };
    let hec_overrides = match overrides_value {
        None => Some(BTreeMap::new()),
        Some(value) => sink_overrides(ctx, value, scalars.as_ref().map(|s| &s.sinks), sinks),
    };

    let s = scalars?;
    let cloud = cloud?;
    Some(TenantConfig {
        name: s.name,
        tenant_id: s.tenant_id,
        enabled: s.enabled,
        playbooks: s.playbooks,
        api: s.api,
        streams: s.streams,
        sinks: s.sinks,
        endpoints: cloud.endpoints(),
        cloud,
        poll_interval: s.timing.0,
        overlap: s.timing.1,
        availability_lag: s.timing.2,
        first_fetch: s.timing.3,
        auth_probe: s.auth_probe,
        auth: auth?,
        hec_overrides: hec_overrides?,
        file: path.to_path_buf(),
    })
}

struct TenantScalars {
    name: String,
    tenant_id: String,
    enabled: bool,
    playbooks: bool,
    api: Api,
    streams: Vec<Stream>,
    sinks: Vec<String>,
    timing: Timing,
    auth_probe: AuthProbe,
}

fn tenant_scalars(
    ctx: &mut Ctx<'_>,
    stem: &str,
    raw: RawTenant,
    defaults: &TenantDefaults,
    sinks: Option<&BTreeMap<String, Option<SinkKind>>>,
    seen: &mut Seen,
) -> Option<TenantScalars> {
    let name = match raw.name {
        Some(name) if is_valid_name(&name) => Some(name),
        Some(_) => {
            ctx.problem("name", NAME_RULE);
            None
        }
        None if is_valid_name(stem) => Some(stem.to_string()),
        None => {
            ctx.problem(
                "name",
                format!(
                    "the file name `{stem}` is not a valid tenant name ({NAME_RULE}); \
                     rename the file or set `name`"
                ),
            );
            None
        }
    };
    if let Some(name) = &name {
        if let Some(other) = seen.names.get(name) {
            ctx.problem(
                "name",
                format!("tenant name `{name}` is already used by {other}"),
            );
        } else {
            seen.names.insert(name.clone(), ctx.file.clone());
        }
    }
    let tenant_id = ctx
        .required("tenant_id", raw.tenant_id)
        .and_then(|id| ctx.guid("tenant_id", &id));
    if let Some(id) = &tenant_id {
        if let Some(other) = seen.tenant_ids.get(id) {
            ctx.problem(
                "tenant_id",
                format!("tenant {id} is already configured in {other}"),
            );
        } else {
            seen.tenant_ids.insert(id.clone(), ctx.file.clone());
        }
    }
    let api = match &raw.api {
        Some(a) => ctx.choice("api", a, &APIS),
        None => Some(defaults.api),
    };
    let streams = match &raw.streams {
        Some(list) => streams(ctx, "streams", list),
        None => Some(defaults.streams.clone()),
    };
    let sink_list = match raw.sinks {
        Some(list) => sink_names(ctx, "sinks", list),
        None => Some(defaults.sinks.clone()),
    };
    // Without relay.toml's sinks (it failed to load) there is nothing to check against.
    let sink_list = match (sink_list, sinks) {
        (Some(list), Some(kinds)) => check_tenant_sinks(ctx, list, kinds),
        (list, _) => list,
    };
    let timing = timing(
        ctx,
        "",
        &RawTiming {
            poll_interval_secs: raw.poll_interval_secs,
            overlap_secs: raw.overlap_secs,
            availability_lag_secs: raw.availability_lag_secs,
            first_fetch_hours: raw.first_fetch_hours,
            first_fetch_secs: raw.first_fetch_secs,
        },
        Some(defaults),
    );
    let auth_probe = auth_probe(
        ctx,
        "",
        (raw.auth_probe_min_secs, raw.auth_probe_max_secs),
        &defaults.auth_probe,
    );
    Some(TenantScalars {
        name: name?,
        tenant_id: tenant_id?,
        enabled: raw.enabled.unwrap_or(true),
        playbooks: raw.playbooks.unwrap_or(true),
        api: api?,
        streams: streams?,
        sinks: sink_list?,
        timing: timing?,
        auth_probe: auth_probe?,
    })
}

/// A tenant's sinks must be non-empty and defined in relay.toml.
fn check_tenant_sinks(
    ctx: &mut Ctx<'_>,
    list: Vec<String>,
    kinds: &BTreeMap<String, Option<SinkKind>>,
) -> Option<Vec<String>> {
    if list.is_empty() {
        ctx.problem(
            "sinks",
            "must name at least one sink (or set `sinks` in [defaults])",
        );
        return None;
    }
    let mut ok = true;
    for (i, name) in list.iter().enumerate() {
        if !kinds.contains_key(name) {
            ctx.problem(&format!("sinks[{i}]"), undefined_sink_message(name, kinds));
            ok = false;
        }
    }
    ok.then_some(list)
}

fn cloud(ctx: &mut Ctx<'_>, value: Value) -> Option<Cloud> {
    if let ValueKind::String(name) = &value.kind {
        let cloud = Cloud::from_name(name);
        if cloud.is_none() {
            ctx.problem(
                "cloud",
                format!(
                    "must be one of `global`, `gcc`, `gcc_high`, `dod` (found `{name}`), \
                     or a [cloud] table of explicit endpoints"
                ),
            );
        }
        return cloud;
    }
    let raw: RawCustomCloud = deserialize_at(ctx, "cloud", value)?;
    let base = match &raw.base {
        Some(b) => ctx.http_url("cloud.base", b).map(Some),
        None => Some(None),
    };
    let endpoint = |ctx: &mut Ctx<'_>, name: &str, value: &Option<String>| -> Option<url::Url> {
        let key = format!("cloud.{name}");
        match (value, &base) {
            (Some(v), _) => ctx.http_url(&key, v),
            (None, Some(Some(base))) => Some(base.clone()),
            (None, Some(None)) => {
                ctx.problem(&key, "is required (or set `base` for every endpoint)");
                None
            }
            // `base` itself was invalid and already reported.
            (None, None) => None,
        }
    };
    let login = endpoint(ctx, "login", &raw.login);
    let m365d = endpoint(ctx, "m365d", &raw.m365d);
    let mde = endpoint(ctx, "mde", &raw.mde);
    let graph = endpoint(ctx, "graph", &raw.graph);
    let resource = |ctx: &mut Ctx<'_>, name: &str, value: Option<String>, default: &str| {
        ctx.non_empty(&format!("cloud.{name}"), value)
            .map(|v| v.unwrap_or_else(|| default.to_string()))
    };
    let r_tp = resource(
        ctx,
        "resource_threat_protection",
        raw.resource_threat_protection,
        RESOURCE_THREAT_PROTECTION,
    );
    let r_atp = resource(
        ctx,
        "resource_windows_defender_atp",
        raw.resource_windows_defender_atp,
        RESOURCE_WINDOWS_DEFENDER_ATP,
    );
    let r_graph = resource(ctx, "resource_graph", raw.resource_graph, RESOURCE_GRAPH);
    Some(Cloud::Custom(Endpoints {
        login: login?,
        m365d: m365d?,
        mde: mde?,
        graph: graph?,
        resource_threat_protection: r_tp?,
        resource_windows_defender_atp: r_atp?,
        resource_graph: r_graph?,
    }))
}

fn auth(ctx: &mut Ctx<'_>, raw: RawAuth) -> Option<AuthConfig> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        RefreshToken,
        ClientSecret,
        Certificate,
    }
    let before = ctx.problems.len();
    let kind = ctx.required("auth.kind", raw.kind.clone()).and_then(|k| {
        ctx.choice(
            "auth.kind",
            &k,
            &[
                ("refresh_token", Kind::RefreshToken),
                ("client_secret", Kind::ClientSecret),
                ("certificate", Kind::Certificate),
            ],
        )
    });
    let client_id = ctx
        .required("auth.client_id", raw.client_id)
        .and_then(|id| ctx.guid("auth.client_id", &id));
    let token_version = match &raw.token_version {
        Some(v) => ctx.choice(
            "auth.token_version",
            v,
            &[("v1", TokenVersion::V1), ("v2", TokenVersion::V2)],
        ),
        None => Some(TokenVersion::V2),
    };
    let expires = match &raw.client_secret_expires {
        Some(date) => match NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d") {
            Ok(d) => Some(Some(d)),
            Err(_) => {
                ctx.problem(
                    "auth.client_secret_expires",
                    "must be a date, e.g. 2026-12-31",
                );
                None
            }
        },
        None => Some(None),
    };

    // Resolve every secret given, whatever the kind, so unresolvable ones are reported
    // even when the kind is wrong too.
    let resolve = |ctx: &mut Ctx<'_>, key: &str, raw: &Option<RawSecret>| match raw {
        Some(s) => ctx.secret(key, s).map(Some),
        None => Some(None),
    };
    let client_secret = resolve(ctx, "auth.client_secret", &raw.client_secret);
    let refresh_token = resolve(ctx, "auth.refresh_token", &raw.refresh_token);
    let private_key = resolve(ctx, "auth.private_key", &raw.private_key);

    let kind = kind?;
    let kind_name = match kind {
        Kind::RefreshToken => "refresh_token",
        Kind::ClientSecret => "client_secret",
        Kind::Certificate => "certificate",
    };
    let unused = format!("is not used with kind = \"{kind_name}\"");
    if kind != Kind::RefreshToken {
        ctx.not_allowed("auth.refresh_token", &raw.refresh_token, &unused);
    }
    if kind == Kind::Certificate {
        ctx.not_allowed("auth.client_secret", &raw.client_secret, &unused);
        ctx.not_allowed(
            "auth.client_secret_expires",
            &raw.client_secret_expires,
            "is for client secrets; a certificate carries its own expiry",
        );
    } else {
        ctx.not_allowed("auth.certificate_file", &raw.certificate_file, &unused);
        ctx.not_allowed("auth.private_key", &raw.private_key, &unused);
    }
    if kind == Kind::RefreshToken && raw.client_secret.is_none() {
        ctx.not_allowed(
            "auth.client_secret_expires",
            &raw.client_secret_expires,
            "applies only when `client_secret` is set",
        );
    }

    let method = match kind {
        Kind::RefreshToken => AuthMethod::RefreshToken {
            client_secret: client_secret?,
            refresh_token: refresh_token?,
        },
        Kind::ClientSecret => {
            let secret = ctx.required("auth.client_secret", client_secret?)?;
            AuthMethod::ClientSecret {
                client_secret: secret,
            }
        }
        Kind::Certificate => {
            let cert = ctx
                .required("auth.certificate_file", raw.certificate_file)
                .and_then(|f| certificate(ctx, &f));
            let key = ctx
                .required("auth.private_key", private_key?)
                .filter(|key| {
                    // PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY") all end this way.
                    let ok = key.expose().contains("-----BEGIN")
                        && key.expose().contains("PRIVATE KEY-----");
                    if !ok {
                        ctx.problem(
                            "auth.private_key",
                            "must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)",
                        );
                    }
                    ok
                });
            let (certificate_file, certificate_pem) = cert?;
            AuthMethod::Certificate {
                certificate_file,
                certificate_pem,
                private_key: key?,
            }
        }
    };
    // Keys that do not apply to the kind were reported above without failing a step.
    if ctx.problems.len() > before {
        return None;
    }
    Some(AuthConfig {
        client_id: client_id?,
        token_version: token_version?,
        method,
        client_secret_expires: expires?,
    })
}

/// Reads the certificate file (public, so its text is kept) and checks it is PEM.
fn certificate(ctx: &mut Ctx<'_>, file: &str) -> Option<(PathBuf, String)> {
    let path = ctx.readable_file("auth.certificate_file", file)?;
    match std::fs::read_to_string(&path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some((path, pem)),
        Ok(_) => {
            ctx.problem(
                "auth.certificate_file",
                format!(
                    "{} is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            );
            None
        }
        Err(e) => {
            ctx.problem(
                "auth.certificate_file",
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

fn sink_overrides(
    ctx: &mut Ctx<'_>,
    value: Value,
    tenant_sinks: Option<&Vec<String>>,
    kinds: Option<&BTreeMap<String, Option<SinkKind>>>,
) -> Option<BTreeMap<String, HecOverrides>> {
    let table = match value.into_table() {
        Ok(t) => t,
        Err(e) => {
            let (_, message) = crate::error::describe_config_error(&e, "");
            ctx.problem("sink_overrides", message);
            return None;
        }
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (sink, value) in table.into_iter().collect::<BTreeMap<_, _>>() {
        let key = child_key("sink_overrides", &sink);
        if let Some(kinds) = kinds {
            match kinds.get(&sink) {
                None => {
                    ctx.problem(&key, undefined_sink_message(&sink, kinds));
                    ok = false;
                }
                Some(Some(kind)) if *kind != SinkKind::SplunkHec => {
                    ctx.problem(
                        &key,
                        format!(
                            "overrides exist only for `splunk_hec` sinks; `{sink}` is `{}`",
                            kind.as_str()
                        ),
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        if let Some(list) = tenant_sinks {
            if kinds.is_some_and(|k| k.contains_key(&sink)) && !list.contains(&sink) {
                ctx.problem(
                    &key,
                    format!("this tenant does not send to sink `{sink}` (see `sinks`)"),
                );
                ok = false;
            }
        }
        let Some(raw) = deserialize_at::<RawHecOverrides>(ctx, &key, value) else {
            ok = false;
            continue;
        };
        let k = |s: &str| join_key(&key, s);
        let fields = (
            ctx.non_empty(&k("index"), raw.index),
            ctx.non_empty(&k("source"), raw.source),
            ctx.non_empty(&k("sourcetype"), raw.sourcetype),
            ctx.non_empty(&k("host"), raw.host),
        );
        match fields {
            (Some(index), Some(source), Some(sourcetype), Some(host)) => {
                out.insert(
                    sink,
                    HecOverrides {
                        index,
                        source,
                        sourcetype,
                        host,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
