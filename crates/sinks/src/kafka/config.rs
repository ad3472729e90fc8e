//! The Kafka sink's settings: validated without I/O, then turned into librdkafka producer
//! properties in exactly one place ([`KafkaSinkConfig::client_config`]), the only place the
//! secrets among them are exposed.

use crate::error::SinkError;
use crate::sink::BatchLimits;
use crate::template::Template;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use relay_config::{KafkaCompression, KafkaProperty};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where and how the Kafka sink produces.
///
/// `Debug` is safe to print: secret properties are [`relay_config::Secret`]s, which print
/// `***`.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// The sink's configured name, for logs and errors.
    pub name: String,
    /// Bootstrap brokers, `host:port` (`bootstrap.servers`).
    pub brokers: Vec<String>,
    /// The topic of each event, e.g. `defender.{stream}`.
    pub topic: Template,
    /// `compression.codec`: compression per produce batch.
    pub compression: KafkaCompression,
    /// Further librdkafka producer properties (SASL, TLS, tuning), passed through as they
    /// are. They override [`KafkaSinkConfig::DEFAULT_PROPERTIES`]; the keys in
    /// [`KafkaSinkConfig::RESERVED_PROPERTIES`] are refused.
    pub properties: BTreeMap<String, KafkaProperty>,
    /// How the sink worker should cut batches.
    pub batch: BatchLimits,
    /// How long a healthcheck waits for broker metadata.
    pub healthcheck_timeout: Duration,
    /// How long `shutdown` waits for queued messages to be delivered.
    pub flush_timeout: Duration,
}

impl KafkaSinkConfig {
    /// Properties the sink always sets; none of them (nor an alias) may be configured.
    ///
    /// Idempotence is what makes librdkafka's internal retries safe: no duplicates and no
    /// reordering within a partition after a lost response, which is the per-incident order
    /// the key buys. Success-only delivery reports would never resolve the delivery futures
    /// `send` awaits. A transactional id would require transactions the sink does not run.
    pub const RESERVED_PROPERTIES: [(&'static str, &'static str); 9] =
        relay_config::KAFKA_RESERVED_PROPERTIES;

    /// Properties the sink sets unless the configuration sets them (or an alias of them):
    /// `(key, aliases, value)`.
    ///
    /// * `max.in.flight.requests.per.connection = 5`: the most idempotence allows, for
    ///   throughput; ordering holds anyway.
    /// * `linger.ms = 10`, `batch.size = 1000000`: `send` hands librdkafka a whole batch at
    ///   once, so a short linger is enough to fill produce requests, and waiting longer would
    ///   only delay the acknowledgement the worker waits for.
    /// * `message.timeout.ms = 120000`: how long one `send` keeps retrying before it reports
    ///   a transient error. Bounded so that an outage surfaces in logs and `/readyz` within
    ///   minutes; the outbox keeps the batch meanwhile, so the bound costs no data. Larger
    ///   values mean fewer duplicates after outages (a message that times out in flight may
    ///   have been written and is sent again).
    /// * `partitioner = murmur2_random`: the Java client's partitioner, so that other
    ///   producers and Kafka Streams place a key on the same partition as the relay does.
    pub const DEFAULT_PROPERTIES: [(&'static str, &'static [&'static str], &'static str); 7] = [
        ("client.id", &[], "xdr-relay"),
        (
            "max.in.flight.requests.per.connection",
            &["max.in.flight"],
            "5",
        ),
        ("linger.ms", &["queue.buffering.max.ms"], "10"),
        ("batch.size", &[], "1000000"),
        ("message.timeout.ms", &["delivery.timeout.ms"], "120000"),
        ("partitioner", &[], "murmur2_random"),
        ("socket.keepalive.enable", &[], "true"),
    ];

    /// Default [`batch`](Self::batch): 1,000 events or about 8 MiB. `send` waits for every
    /// delivery report of a batch before the next batch starts, so batches must be large
    /// enough to keep the producer's pipeline busy.
    pub const DEFAULT_BATCH: BatchLimits = BatchLimits::new(1000, 8 * 1024 * 1024);
    /// Default [`healthcheck_timeout`](Self::healthcheck_timeout).
    pub const DEFAULT_HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`flush_timeout`](Self::flush_timeout).
    pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

    /// A configuration with the defaults for everything but name, brokers and topic.
    pub fn new(name: impl Into<String>, brokers: Vec<String>, topic: Template) -> Self {
        KafkaSinkConfig {
            name: name.into(),
            brokers,
            topic,
            compression: KafkaCompression::Lz4,
            properties: BTreeMap::new(),
            batch: Self::DEFAULT_BATCH,
            healthcheck_timeout: Self::DEFAULT_HEALTHCHECK_TIMEOUT,
            flush_timeout: Self::DEFAULT_FLUSH_TIMEOUT,
        }
    }

    /// The sink `[sinks.NAME]` of the relay's validated configuration; the topic template
    /// is parsed here.
    pub fn from_config(
        name: &str,
        config: &relay_config::KafkaConfig,
    ) -> Result<KafkaSinkConfig, SinkError> {
        let topic = Template::parse(&config.topic).map_err(|e| SinkError::Config {
            sink: name.to_string(),
            reason: format!("topic: {e}"),
        })?;
        let mut c = KafkaSinkConfig::new(name, config.brokers.clone(), topic);
        c.compression = config.compression;
        c.properties = config.librdkafka.clone();
        // Validated by relay-config; `KafkaSink::new` checks the sink's own invariants.
        Ok(c)
    }

    /// Checks the configuration without connecting; reports every problem at once.
    /// librdkafka checks property names and values again when the producer is built.
    pub fn validate(&self) -> Result<(), SinkError> {
        let mut problems = Vec::new();
        if self.brokers.is_empty() {
            problems.push("brokers: must name at least one broker".to_string());
        }
        for (i, b) in self.brokers.iter().enumerate() {
            if b.is_empty() || b.contains([',', ' ']) {
                problems.push(format!("brokers[{i}]: {b:?} is not a host:port"));
            }
        }
        for (key, value) in &self.properties {
            if let Some((_, why)) = Self::RESERVED_PROPERTIES.iter().find(|(k, _)| k == key) {
                problems.push(format!("librdkafka.{key:?}: cannot be set here: {why}"));
            }
            if key == "message.timeout.ms" || key == "delivery.timeout.ms" {
                let ok = matches!(value, KafkaProperty::Plain(v)
                    if v.parse::<u32>().is_ok_and(|ms| (1..=i32::MAX as u32).contains(&ms)));
                if !ok {
                    problems.push(format!(
                        "librdkafka.{key:?}: must be a number of milliseconds from 1 \
                         (0 would let a batch wait for ever during an outage)"
                    ));
                }
            }
        }
        if self.batch.max_events == 0 {
            problems.push("batch.max_events: must be at least 1".to_string());
        }
        if self.batch.max_bytes == 0 {
            problems.push("batch.max_bytes: must be at least 1".to_string());
        }
        if self.healthcheck_timeout.is_zero() {
            problems.push("healthcheck_timeout: must be positive".to_string());
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

    /// The brokers as librdkafka's `bootstrap.servers`, also how errors name the destination.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.join(",")
    }

    /// The librdkafka producer properties: the fixed ones, the defaults not overridden, and
    /// every configured property.
    ///
    /// The result holds secrets in the clear and rdkafka's `ClientConfig` prints its values
    /// with `Debug`: it must never be formatted or logged, only handed to librdkafka.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        // Warnings and errors only, as librdkafka's notices repeat on every reconnect; but an
        // operator who sets librdkafka's `debug` contexts wants to see that output.
        c.set_log_level(if self.properties.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
        c.set("bootstrap.servers", self.bootstrap_servers());
        c.set("enable.idempotence", "true");
        c.set("acks", "all");
        c.set("delivery.report.only.error", "false");
        c.set("compression.codec", self.compression.as_str());
        for (key, aliases, value) in Self::DEFAULT_PROPERTIES {
            // librdkafka applies properties in map order, so setting a default under one
            // name while the operator set an alias would make the winner arbitrary.
            let overridden = std::iter::once(key)
                .chain(aliases.iter().copied())
                .any(|k| self.properties.contains_key(k));
            if !overridden {
                c.set(key, value);
            }
        }
        for (key, value) in &self.properties {
            c.set(key, value.expose());
        }
        c
    }

    /// True when `key` is configured with a secret value, so that errors about it must not
    /// repeat librdkafka's text (which quotes the value).
    pub(crate) fn is_secret_property(&self, key: &str) -> bool {
        matches!(self.properties.get(key), Some(KafkaProperty::Secret(_)))
    }
}
