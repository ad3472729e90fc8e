//! The files as written: serde structs that reject unknown keys and hold only primitive
//! types. Every value is optional here so that validation, not serde, decides what is
//! missing — serde stops at its first error, validation reports them all.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawState {
    pub path: Option<String>,
    pub key: Option<RawSecret>,
    pub key_file: Option<String>,
}

/// `[defaults]`, and the per-tenant overrides of the same keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDefaults {
    pub poll_interval_secs: Option<u64>,
    pub overlap_secs: Option<u64>,
    pub availability_lag_secs: Option<u64>,
    pub first_fetch_hours: Option<u64>,
    pub first_fetch_secs: Option<u64>,
    pub api: Option<String>,
    pub cloud: Option<String>,
    pub streams: Option<Vec<String>>,
    pub sinks: Option<Vec<String>>,
    pub auth_probe_min_secs: Option<u64>,
    pub auth_probe_max_secs: Option<u64>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHttp {
    pub user_agent: Option<String>,
    pub connect_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub max_requests_in_flight: Option<u64>,
    pub proxy: Option<String>,
    pub no_proxy: Option<Vec<String>>,
    pub ca_file: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
}

/// `[outbox]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOutbox {
    pub max_events_per_sink: Option<u64>,
}

/// `[sinks.NAME]` with `type = "file"` (the `type` key is taken out before this is read).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFileSink {
    pub path: Option<String>,
    pub max_file_bytes: Option<u64>,
    pub max_files: Option<u64>,
}

/// `[sinks.NAME]` with `type = "splunk_hec"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHecSink {
    pub url: Option<String>,
    pub token: Option<RawSecret>,
    pub index: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub sourcetypes: Option<RawPerStream>,
    pub host: Option<String>,
    pub gzip: Option<bool>,
    pub gzip_level: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub batch: Option<RawBatch>,
    pub indexer_ack: Option<RawIndexerAck>,
    pub max_in_flight: Option<u64>,
    pub tls: Option<RawTls>,
}

/// `sourcetypes = { incidents = "...", alerts = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPerStream {
    pub incidents: Option<String>,
    pub alerts: Option<String>,
    pub actions: Option<String>,
}

/// `[sinks.NAME.batch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBatch {
    pub max_events: Option<u64>,
    pub max_bytes: Option<u64>,
    pub linger_ms: Option<u64>,
}

/// `[sinks.NAME.indexer_ack]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawIndexerAck {
    pub enabled: Option<bool>,
    pub channel: Option<String>,
    pub timeout_secs: Option<u64>,
    pub poll_interval_secs: Option<u64>,
}

/// `[sinks.NAME.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
    pub client_cert_file: Option<String>,
    pub client_key: Option<RawSecret>,
}

/// `[sinks.NAME]` with `type = "syslog"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSyslogSink {
    pub address: Option<String>,
    pub transport: Option<String>,
    pub framing: Option<String>,
    pub format: Option<String>,
    pub rfc: Option<u64>,
    pub app_name: Option<String>,
    pub hostname: Option<String>,
    pub facility: Option<String>,
    pub tls: Option<RawTls>,
    pub bom: Option<bool>,
    pub max_datagram_bytes: Option<u64>,
}

/// `[sinks.NAME]` with `type = "kafka"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawKafkaSink {
    pub brokers: Option<StringList>,
    pub topic: Option<String>,
    pub compression: Option<String>,
    pub librdkafka: Option<BTreeMap<String, RawProperty>>,
}

/// The scalar keys of a tenant file; `auth`, `cloud` and `sink_overrides` are read
/// separately so that an error in one does not hide errors in the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTenant {
    pub name: Option<String>,
    pub tenant_id: Option<String>,
    pub enabled: Option<bool>,
    pub playbooks: Option<bool>,
    pub streams: Option<Vec<String>>,
    pub sinks: Option<Vec<String>>,
    pub api: Option<String>,
    pub poll_interval_secs: Option<u64>,
    pub overlap_secs: Option<u64>,
    pub availability_lag_secs: Option<u64>,
    pub first_fetch_hours: Option<u64>,
    pub first_fetch_secs: Option<u64>,
    pub auth_probe_min_secs: Option<u64>,
    pub auth_probe_max_secs: Option<u64>,
}

/// `[auth]` of a tenant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    pub kind: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    pub refresh_token: Option<RawSecret>,
    pub certificate_file: Option<String>,
    pub private_key: Option<RawSecret>,
    pub client_secret_expires: Option<String>,
    pub token_version: Option<String>,
}

/// `[cloud]` of a tenant: explicit endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCustomCloud {
    pub base: Option<String>,
    pub login: Option<String>,
    pub m365d: Option<String>,
    pub mde: Option<String>,
    pub graph: Option<String>,
    pub resource_threat_protection: Option<String>,
    pub resource_windows_defender_atp: Option<String>,
    pub resource_graph: Option<String>,
}

/// `[sink_overrides.NAME]` of a tenant.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHecOverrides {
    pub index: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub host: Option<String>,
}

/// What a literal where a secret belongs is told. Deliberately does not echo the value.
pub(crate) const LITERAL_SECRET: &str = "secrets are not accepted as literal values; \
     use { env = \"NAME\" }, { file = \"path\" } or { credential = \"name\" }";

/// A secret reference as written. Which one of the three is set is checked in validation,
/// so that `{ env = "A", file = "b" }` gets a message of ours.
#[derive(Debug, Default, Clone)]
pub(crate) struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
    pub credential: Option<String>,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any` so a string reaches `visit_str` and gets our message instead of
        // "invalid type: string, expected a map" (which would also print the secret).
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = RawSecret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a secret reference: { env = \"NAME\" }, { file = \"path\" } or { credential = \"name\" }",
        )
    }

    fn visit_str<E: de::Error>(self, _value: &str) -> Result<RawSecret, E> {
        Err(E::custom(LITERAL_SECRET))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
        secret_from_map(map)
    }
}

fn secret_from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<RawSecret, A::Error> {
    const FIELDS: &[&str] = &["env", "file", "credential"];
    let mut secret = RawSecret::default();
    while let Some(key) = map.next_key::<String>()? {
        let slot = match key.as_str() {
            "env" => &mut secret.env,
            "file" => &mut secret.file,
            "credential" => &mut secret.credential,
            other => return Err(de::Error::unknown_field(other, FIELDS)),
        };
        *slot = Some(map.next_value()?);
    }
    Ok(secret)
}

/// A `[librdkafka]` value: a scalar (kept as its string form) or a secret reference.
#[derive(Debug, Clone)]
pub(crate) enum RawProperty {
    Plain(String),
    Secret(RawSecret),
}

impl<'de> Deserialize<'de> for RawProperty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PropertyVisitor)
    }
}

struct PropertyVisitor;

impl<'de> Visitor<'de> for PropertyVisitor {
    type Value = RawProperty;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or secret reference")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawProperty, E> {
        Ok(RawProperty::Plain(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawProperty, E> {
        Ok(RawProperty::Plain(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawProperty, E> {
        Ok(RawProperty::Plain(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawProperty, E> {
        Ok(RawProperty::Plain(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawProperty, E> {
        Ok(RawProperty::Plain(v.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawProperty, A::Error> {
        secret_from_map(map).map(RawProperty::Secret)
    }
}

/// A list of strings, also accepted as one comma-separated string so that an environment
/// variable can set it (`XDR_RELAY__SINKS__BUS__BROKERS=k1:9092,k2:9092`).
#[derive(Debug, Default, Clone)]
pub(crate) struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringListVisitor)
    }
}

struct StringListVisitor;

impl<'de> Visitor<'de> for StringListVisitor {
    type Value = StringList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings or a comma-separated string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
        Ok(StringList(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(StringList(items))
    }
}
