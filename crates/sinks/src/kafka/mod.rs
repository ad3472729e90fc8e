//! The Kafka sink: each event becomes one record produced by an idempotent librdkafka
//! producer (`rdkafka`'s `FutureProducer`, bundled librdkafka), and a batch counts as
//! delivered only when every record of it has a successful delivery report.
//!
//! * **Acknowledgement.** `enable.idempotence=true` and `acks=all` are fixed: a delivery
//!   report means every in-sync replica has the record. [`KafkaSink`]'s `send` enqueues the
//!   whole batch, then awaits *all* reports and returns `Ok` only if all succeeded; the
//!   worker deletes the batch from the outbox only then.
//! * **Failure.** Any failed record fails the batch, which is sent again in whole. Records
//!   of it that did arrive arrive twice — those duplicates, and records that timed out while
//!   in flight yet were written, are the at-least-once duplicates of the relay. Once one record
//!   failed the rest of the batch is not enqueued, but what was enqueued is awaited, so no
//!   record of a failed batch is still in flight when its retry starts. librdkafka retries
//!   inside `message.timeout.ms` (default 120 s here, always bounded) before reporting; the
//!   error is transient for outages and timeouts and permanent for what an operator must fix
//!   (message too large, topic authorization, unknown topic with auto-creation off, SASL).
//! * **Back-pressure.** A full librdkafka queue makes `send` wait for its own oldest record's
//!   report and enqueue again; nothing is dropped.
//! * **Order.** Key `<tenant_id>:<id>` keeps every version of an item in one partition;
//!   idempotence keeps a partition's order through retries.
//! * **Records.** See `encode.rs`: key, headers `tenant`, `tenant_id`, `stream`, `feed`, `id`,
//!   `version_time`, and the JSON-lines record of [`crate::jsonl`] as the value.
//! * **Health and shutdown.** `healthcheck` fetches broker metadata with a timeout (and the
//!   topic's, when the topic has no placeholder); `shutdown` flushes with a timeout, since
//!   dropping a producer purges its queue.
//! * **Secrets.** Passed-through properties (`sasl.password`, `ssl.key.password`, …) are
//!   exposed only into librdkafka's configuration, which is never formatted; [`KafkaSink`]'s
//!   `Debug` shows name, brokers and topic only.
//! * **Recovery.** After a failed batch the producer is replaced by a new one (new producer
//!   id, new connections) before the retry: librdkafka does not leave every state by itself
//!   — a broker that lost its producer state answers UNKNOWN_PRODUCER_ID for ever to an
//!   epoch-bumped id — and a producer librdkafka declared fatally failed is replaced too.

mod config;
mod encode;
mod errors;
mod sink;
#[cfg(test)]
mod tansu;
#[cfg(test)]
mod tests;

pub use config::KafkaSinkConfig;
pub use sink::KafkaSink;
