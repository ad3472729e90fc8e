//! What the HEC sink needs to know, mapped from `relay_config` and checked without I/O.

use crate::error::SinkError;
use crate::hec::HecOptions;
use crate::template::Template;
use relay_config::{
    BatchConfig, HecOverrides, IndexerAckConfig, Secret, SplunkHecConfig, TenantConfig, TlsConfig,
};
use std::collections::HashMap;
use std::time::Duration;
use url::Url;

/// A Splunk HEC sink's settings: where, with which token, how events are labelled (for the
/// whole sink and per tenant), batching, indexer acknowledgement and TLS.
///
/// Built from the validated configuration with [`from_config`](Self::from_config), or field
/// by field (tests, the demo). [`validate`](Self::validate) checks it without I/O;
/// [`SplunkHecSink::new`](super::SplunkHecSink::new) then reads the TLS files and builds the
/// HTTP client.
#[derive(Debug, Clone)]
pub struct SplunkHecSinkConfig {
    /// The sink's configured name, for logs, metrics and errors.
    pub name: String,
    /// The HEC base URL (`https://splunk.example:8088`); the sink appends
    /// `services/collector/event`, `.../ack` and `.../health` to its path.
    pub url: Url,
    /// The HEC token, sent as `Authorization: Splunk <token>`.
    pub token: Secret,
    /// Envelope labels for every tenant without overrides.
    pub options: HecOptions,
    /// Envelope labels of tenants with `[sink_overrides.NAME]`, by tenant name
    /// ([`Event::tenant_name`](crate::Event::tenant_name)): the sink options with the
    /// tenant's keys laid over them.
    pub tenant_options: HashMap<String, HecOptions>,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// gzip level, 1 (fastest) to 9 (smallest).
    pub gzip_level: u32,
    /// Limit on one HTTP request, connect to last byte of the answer.
    pub request_timeout: Duration,
    /// Events and bytes (uncompressed) per request; `linger` is for the pipeline's sink
    /// worker, which waits that long for a partial batch to fill before calling `send`.
    pub batch: BatchConfig,
    /// Indexer acknowledgement (Splunk Enterprise, tokens with `useACK`) and the channel.
    pub indexer_ack: IndexerAckConfig,
    /// With indexer acknowledgement: at most this many batches sent and not yet confirmed
    /// at once (`max_in_flight`). Each costs only its ack ids while it waits.
    pub max_in_flight: usize,
    /// Server verification and client certificate for an `https` URL.
    pub tls: TlsConfig,
}

impl SplunkHecSinkConfig {
    /// A sink sending to `url` with `token` and every default: labels per feed, gzip on,
    /// 30 s requests, 500 events / 1,000,000 bytes per request, no indexer ack, system roots.
    pub fn new(name: impl Into<String>, url: Url, token: Secret) -> Self {
        SplunkHecSinkConfig {
            name: name.into(),
            url,
            token,
            options: HecOptions::default(),
            tenant_options: HashMap::new(),
            gzip: true,
            gzip_level: relay_config::DEFAULT_GZIP_LEVEL,
            request_timeout: Duration::from_secs(30),
            batch: BatchConfig::default(),
            indexer_ack: IndexerAckConfig::default(),
            max_in_flight: relay_config::DEFAULT_HEC_MAX_IN_FLIGHT,
            tls: TlsConfig::default(),
        }
    }

    /// Maps `[sinks.<name>]` and the `[sink_overrides.<name>]` tables of `tenants` onto the
    /// sink's settings, parsing the templates in `index`, `source` and `sourcetype`. Reports
    /// every bad template at once, each with its file and key.
    pub fn from_config(
        name: &str,
        hec: &SplunkHecConfig,
        tenants: &[TenantConfig],
    ) -> Result<Self, SinkError> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("relay.toml: sinks.{name}.{k}");
        let mut template = |k: String, value: Option<&str>| -> Option<Template> {
            let value = value?;
            match Template::parse(value) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("{k}: {e}"));
                    None
                }
            }
        };
        let options = HecOptions {
            host: hec.host.clone(),
            source: template(key("source"), hec.source.as_deref()),
            sourcetype_incidents: template(
                key("sourcetypes.incidents"),
                hec.sourcetype_incidents.as_deref(),
            ),
            sourcetype_alerts: template(
                key("sourcetypes.alerts"),
                hec.sourcetype_alerts.as_deref(),
            ),
            sourcetype_actions: template(
                key("sourcetypes.actions"),
                hec.sourcetype_actions.as_deref(),
            ),
            index: template(key("index"), hec.index.as_deref()),
        };
        let mut tenant_options = HashMap::new();
        for t in tenants {
            let Some(o) = t.hec_overrides_for(name) else {
                continue;
            };
            let key = |k: &str| format!("{}: sink_overrides.{name}.{k}", t.file.display());
            match overlay(&options, o, key) {
                Ok(opts) => {
                    tenant_options.insert(t.name.clone(), opts);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if !problems.is_empty() {
            return Err(SinkError::Config {
                sink: name.to_string(),
                reason: problems.join("; "),
            });
        }
        let config = SplunkHecSinkConfig {
            name: name.to_string(),
            url: hec.url.clone(),
            token: hec.token.clone(),
            options,
            tenant_options,
            gzip: hec.gzip,
            gzip_level: hec.gzip_level,
            request_timeout: hec.request_timeout,
            batch: hec.batch.clone(),
            indexer_ack: hec.indexer_ack.clone(),
            max_in_flight: hec.max_in_flight,
            tls: hec.tls.clone(),
        };
        // The rules (ranges, formats) were checked by relay-config, the one place for them;
        // `SplunkHecSink::new` checks the sink's own invariants, once.
        Ok(config)
    }

    /// Sets (or, with `None`, removes) the overrides of one tenant, e.g. when its tenant file
    /// changed. The tenant's options are the sink's options with `overrides` laid over them.
    pub fn set_tenant_overrides(
        &mut self,
        tenant: &str,
        overrides: Option<&HecOverrides>,
    ) -> Result<(), SinkError> {
        match overrides {
            None => {
                self.tenant_options.remove(tenant);
            }
            Some(o) => {
                let opts = overlay(&self.options, o, |k| {
                    format!("tenant {tenant}: sink_overrides.{}.{k}", self.name)
                })
                .map_err(|p| SinkError::Config {
                    sink: self.name.clone(),
                    reason: p.join("; "),
                })?;
                self.tenant_options.insert(tenant.to_string(), opts);
            }
        }
        Ok(())
    }

    /// Checks the invariants the sink relies on (a usable URL, non-zero limits and waits, a
    /// GUID channel, a complete client identity), without I/O; reports every problem at
    /// once. The operator-facing rules — ranges such as `indexer_ack.timeout_secs` 10–3600 —
    /// are relay-config's alone; they imply these, so a validated configuration never fails
    /// here, while a configuration built field by field (tests, the demo) is still checked.
    pub fn validate(&self) -> Result<(), SinkError> {
        let mut problems = Vec::new();
        match self.url.scheme() {
            "http" | "https" => {}
            other => problems.push(format!("url: scheme {other:?} is not http or https")),
        }
        if self.url.cannot_be_a_base() || self.url.host().is_none() {
            problems.push("url: must be an absolute http(s) URL with a host".to_string());
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            // The token authenticates; credentials in the URL would only end up in logs.
            problems.push("url: must not contain a user name or password".to_string());
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            // A query would end up in every request and in logs; HEC needs none.
            problems.push("url: must not have a query string or fragment".to_string());
        }
        if self.token.expose().trim().is_empty() {
            problems.push("token: must not be empty".to_string());
        }
        if self.request_timeout.is_zero() {
            problems.push("request_timeout_secs: must be at least 1".to_string());
        }
        if !(1..=9).contains(&self.gzip_level) {
            problems.push(format!(
                "gzip_level: {} is not between 1 and 9",
                self.gzip_level
            ));
        }
        if self.batch.max_events == 0 {
            problems.push("batch.max_events: must be at least 1".to_string());
        }
        if self.batch.max_bytes == 0 {
            problems.push("batch.max_bytes: must be at least 1".to_string());
        }
        if let Some(c) = &self.indexer_ack.channel {
            if uuid::Uuid::parse_str(c).is_err() {
                problems.push(format!("indexer_ack.channel: {c:?} is not a GUID"));
            }
        }
        if self.indexer_ack.enabled {
            if self.indexer_ack.timeout.is_zero() {
                problems.push("indexer_ack.timeout_secs: must be at least 1".to_string());
            }
            if self.indexer_ack.poll_interval.is_zero() {
                problems.push("indexer_ack.poll_interval_secs: must be at least 1".to_string());
            }
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key.is_some() {
            problems.push("tls: client_cert_file and client_key must be set together".to_string());
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

/// The sink's options with one tenant's overrides laid over them: a `sourcetype` override
/// applies to both streams.
pub(crate) fn overlay(
    base: &HecOptions,
    o: &HecOverrides,
    key: impl Fn(&str) -> String,
) -> Result<HecOptions, Vec<String>> {
    let mut problems = Vec::new();
    let mut parse = |k: &str, v: &str| match Template::parse(v) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("{}: {e}", key(k)));
            None
        }
    };
    let mut opts = base.clone();
    if let Some(h) = &o.host {
        opts.host = Some(h.clone());
    }
    if let Some(v) = &o.source {
        opts.source = parse("source", v);
    }
    if let Some(v) = &o.sourcetype {
        let t = parse("sourcetype", v);
        opts.sourcetype_incidents = t.clone();
        opts.sourcetype_alerts = t;
    }
    if let Some(v) = &o.index {
        opts.index = parse("index", v);
    }
    if problems.is_empty() {
        Ok(opts)
    } else {
        Err(problems)
    }
}
