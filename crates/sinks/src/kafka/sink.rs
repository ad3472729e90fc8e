//! The producer: enqueue a batch, wait for every delivery report, report the batch's fate.

use super::config::KafkaSinkConfig;
use super::{encode, errors};
use crate::error::SinkError;
use crate::event::Event;
use crate::sink::{BatchLimits, Receipt, Sink};
use crate::template::Template;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// How long to wait before enqueueing again when librdkafka's queue is full and none of
/// this batch's messages is in flight to wait for.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(50);

/// Produces events to Kafka with an idempotent librdkafka producer; `send` returns `Ok`
/// only after every message of the batch has a successful delivery report (`acks=all`).
/// See the [module docs](super) for the guarantees.
pub struct KafkaSink {
    name: String,
    brokers: String,
    topic: Template,
    /// The topic when the template has no placeholder: the healthcheck asks for it.
    fixed_topic: Option<String>,
    limits: BatchLimits,
    healthcheck_timeout: Duration,
    flush_timeout: Duration,
    /// Kept to rebuild the producer after a failed batch. Holds secrets in the clear, and
    /// rdkafka's `Debug` prints them: never format it.
    client_config: ClientConfig,
    producer: FutureProducer<RelayContext>,
}

impl fmt::Debug for KafkaSink {
    // By hand: the derived impl would print `client_config`, secrets included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic.as_str())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Validates `config` and builds the producer. librdkafka connects in the background;
    /// nothing here waits for a broker (see [`Sink::healthcheck`]).
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        config.validate()?;
        let client_config = config.client_config();
        let producer = build_producer(&config, &client_config)?;
        let fixed_topic =
            (!config.topic.as_str().contains('{')).then(|| config.topic.as_str().to_string());
        Ok(KafkaSink {
            brokers: config.bootstrap_servers(),
            name: config.name,
            topic: config.topic,
            fixed_topic,
            limits: config.batch,
            healthcheck_timeout: config.healthcheck_timeout,
            flush_timeout: config.flush_timeout,
            client_config,
            producer,
        })
    }

    /// The bootstrap brokers, as errors name them.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    fn unavailable(
        &self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            destination: self.brokers.clone(),
            source: source.into(),
        }
    }

    /// After a fatal error (librdkafka gives up on an idempotent producer whose sequence it
    /// can no longer guarantee) the producer fails everything; start over with a new one.
    fn replace_if_fatal(&mut self) -> Result<(), SinkError> {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => {
                error!(sink = %self.name, ?code, %reason, "kafka producer failed fatally");
                self.replace_producer()
            }
            None => Ok(()),
        }
    }

    /// Swaps in a new producer (new producer id, new connections, empty queue).
    ///
    /// Done after every failed batch, before it is retried. librdkafka has already spent
    /// `message.timeout.ms` recovering inside the old producer, and some states it does not
    /// leave by itself: after a broker lost its producer state (restored from backup, a
    /// rebuilt cluster at the same address) every produce fails with UNKNOWN_PRODUCER_ID
    /// while librdkafka only bumps its epoch, until each message times out. A new producer
    /// asks the cluster for a new id. Nothing is lost: every message of the failed batch
    /// already has its (failed) report, and the batch is sent again in whole, in order.
    fn replace_producer(&mut self) -> Result<(), SinkError> {
        let producer = ClientConfig::create_with_context(
            &self.client_config,
            RelayContext {
                sink: self.name.clone(),
            },
        )
        .map_err(|e| SinkError::Config {
            sink: self.name.clone(),
            reason: format!("cannot rebuild the producer: {e}"),
        })?;
        let old = std::mem::replace(&mut self.producer, producer);
        // Dropping a producer purges, flushes and joins its threads: keep that off the
        // runtime's workers.
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// Turns the failures of one batch into the sink's error: permanent if any failure is,
    /// so that the operator hears about an oversized event even when a timeout came first.
    fn batch_error(&self, batch: &[Event], failed: Vec<Failure>, attempted: usize) -> SinkError {
        let total = batch.len();
        let count = failed.len();
        let worst = failed
            .iter()
            .find(|f| !errors::is_transient(&f.error))
            .or_else(|| failed.first());
        let Some(worst) = worst else {
            return self.unavailable("no delivery report");
        };
        let event = &batch[worst.index];
        let not_sent = total - attempted;
        let mut detail = format!("{count} of {total} events failed");
        if not_sent > 0 {
            detail.push_str(&format!(
                " ({not_sent} not enqueued after the first failure)"
            ));
        }
        detail.push_str(&format!(
            "; topic {}, event {}/{} version {}",
            self.topic.render(event),
            event.tenant_name,
            event.id,
            event
                .version_time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        ));
        if errors::is_transient(&worst.error) {
            warn!(sink = %self.name, tenant = %event.tenant_name, stream = event.stream.as_str(),
                  error = %worst.error, "kafka batch not delivered; it will be sent again on a new producer");
            self.unavailable(BatchFailed {
                detail,
                source: worst.error.clone(),
            })
        } else {
            SinkError::Rejected {
                sink: self.name.clone(),
                destination: self.brokers.clone(),
                reason: format!("{}: {detail}", worst.error),
            }
        }
    }
}

/// One message of a batch whose delivery failed.
struct Failure {
    index: usize,
    error: KafkaError,
}

/// The source of [`SinkError::Unavailable`] for a batch that was not fully delivered.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
struct BatchFailed {
    detail: String,
    #[source]
    source: KafkaError,
}

fn build_producer(
    config: &KafkaSinkConfig,
    client_config: &ClientConfig,
) -> Result<FutureProducer<RelayContext>, SinkError> {
    client_config
        .create_with_context(RelayContext {
            sink: config.name.clone(),
        })
        .map_err(|e| SinkError::Config {
            sink: config.name.clone(),
            reason: creation_error(config, &e),
        })
}

/// librdkafka's complaint about a property, without the value when the value is a secret
/// (rdkafka's own message quotes the value).
pub(super) fn creation_error(config: &KafkaSinkConfig, e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, _value) => {
            if config.is_secret_property(key) {
                format!("librdkafka.{key:?}: invalid value (not shown: it is a secret)")
            } else {
                format!("librdkafka.{key:?}: {description}")
            }
        }
        other => format!("cannot create the producer: {other}"),
    }
}

/// Awaits one delivery report.
async fn settle(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _message))) => Err(error),
        // The producer was dropped (replaced after a fatal error) before reporting.
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    async fn healthcheck(&mut self) -> Result<(), SinkError> {
        self.replace_if_fatal()?;
        let producer = self.producer.clone();
        let topic = self.fixed_topic.clone();
        let timeout = self.healthcheck_timeout;
        // A metadata request is a blocking librdkafka call.
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(topic.as_deref(), timeout)
                .map(|m| {
                    let topic_error = m
                        .topics()
                        .first()
                        .filter(|_| topic.is_some())
                        .and_then(|t| t.error())
                        .map(RDKafkaErrorCode::from);
                    (m.brokers().len(), topic_error)
                })
        })
        .await
        .map_err(|e| self.unavailable(e))?;
        match answer {
            Err(e) => Err(self.unavailable(e)),
            Ok((_, Some(code))) => {
                let topic = self.fixed_topic.as_deref().unwrap_or_default();
                if errors::code_is_transient(code) {
                    Err(self.unavailable(format!("topic {topic}: {code}")))
                } else {
                    Err(SinkError::Rejected {
                        sink: self.name.clone(),
                        destination: self.brokers.clone(),
                        reason: format!("topic {topic}: {code}"),
                    })
                }
            }
            Ok((brokers, None)) => {
                debug!(sink = %self.name, brokers, "kafka healthcheck passed");
                Ok(())
            }
        }
    }

    /// Delivered once this returns: there is no later confirmation to wait for.
    async fn submit(&mut self, batch: &[Event]) -> Result<Receipt, SinkError> {
        self.deliver(batch).await.map(|()| Receipt::Delivered)
    }

    async fn shutdown(&mut self) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        let timeout = self.flush_timeout;
        // `flush` blocks until every queued message has a delivery report or the timeout.
        let (result, left) = tokio::task::spawn_blocking(move || {
            let r = producer.flush(timeout);
            (r, producer.in_flight_count())
        })
        .await
        .map_err(|e| self.unavailable(e))?;
        match result {
            Ok(()) => {
                info!(sink = %self.name, "kafka producer flushed");
                Ok(())
            }
            Err(e) => Err(self.unavailable(BatchFailed {
                detail: format!("{left} messages still queued after flushing for {timeout:?}"),
                source: e,
            })),
        }
    }
}

impl KafkaSink {
    /// The batch written, flushed or confirmed: what `submit` reports as delivered.
    async fn deliver(&mut self, batch: &[Event]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.replace_if_fatal()?;
        // Reports are awaited in enqueue order; awaiting the oldest first is also what frees
        // room when librdkafka's queue is full.
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::with_capacity(batch.len());
        let mut failed: Vec<Failure> = Vec::new();
        let mut attempted = 0;
        let mut topic = String::new();
        let mut key = String::new();
        let mut value = Vec::new();
        'enqueue: for (index, event) in batch.iter().enumerate() {
            attempted = index + 1;
            topic.clear();
            self.topic.render_into(event, &mut topic);
            encode::key(event, &mut key);
            encode::value(event, &mut value);
            let mut record = FutureRecord::to(&topic)
                .key(key.as_str())
                .payload(value.as_slice())
                .headers(encode::headers(event));
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back((index, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Never drop: wait until there is room, then enqueue the same record.
                        record = back;
                        match pending.pop_front() {
                            Some((i, delivery)) => {
                                if let Err(error) = settle(delivery).await {
                                    failed.push(Failure { index: i, error });
                                    // This event was never enqueued.
                                    attempted = index;
                                    break 'enqueue;
                                }
                            }
                            None => tokio::time::sleep(QUEUE_FULL_BACKOFF).await,
                        }
                    }
                    Err((error, _)) => {
                        failed.push(Failure { index, error });
                        break 'enqueue;
                    }
                }
            }
        }
        // Once one message failed the batch will be sent again in whole, so the rest is not
        // enqueued; what is already enqueued is still awaited, so that nothing of this batch
        // is left in flight to land after (and out of order with) the retry.
        for (index, delivery) in pending {
            if let Err(error) = settle(delivery).await {
                failed.push(Failure { index, error });
            }
        }
        if failed.is_empty() {
            debug!(sink = %self.name, events = batch.len(), "kafka batch delivered");
            return Ok(());
        }
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            error!(sink = %self.name, ?code, %reason, "kafka producer failed fatally");
        }
        let e = self.batch_error(batch, failed, attempted);
        self.replace_producer()?;
        Err(e)
    }
}

/// Routes librdkafka's logs and errors to `tracing`, tagged with the sink's name.
pub(crate) struct RelayContext {
    sink: String,
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::*;
        match level {
            // A broker dropping a connection is an error to librdkafka but not to the relay:
            // nothing is lost while the outbox holds the batch.
            Emerg | Alert | Critical | Error | Warning => {
                warn!(sink = %self.sink, facility, "librdkafka: {message}")
            }
            Notice | Info => info!(sink = %self.sink, facility, "librdkafka: {message}"),
            Debug => debug!(sink = %self.sink, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(sink = %self.sink, %error, "librdkafka: {reason}");
    }
}
