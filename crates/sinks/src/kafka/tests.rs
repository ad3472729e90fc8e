//! The Kafka sink against a real broker (tansu, see `tansu.rs`), plus its pure parts.

use super::tansu::{consume, create_topics, Received, Tansu};
use super::*;
use crate::event::testdata::*;
use crate::event::Event;
use crate::template::Template;
use crate::SinkError;
use crate::{AnySink, Sink};
use relay_config::{Feed, KafkaCompression, KafkaProperty, Secret};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const OTHER_TENANT_ID: &str = "9b1f27a4-0c3e-4a8e-b7a2-5d1c2e3f4a5b";

fn plain(v: &str) -> KafkaProperty {
    KafkaProperty::Plain(v.to_string())
}

/// A sink configuration for tests: 5 s message timeout so outages surface quickly.
fn config(bootstrap: &str, topic: &str) -> KafkaSinkConfig {
    let mut c = KafkaSinkConfig::new(
        "bus",
        vec![bootstrap.to_string()],
        Template::parse(topic).unwrap(),
    );
    c.properties
        .insert("message.timeout.ms".into(), plain("5000"));
    c.healthcheck_timeout = Duration::from_secs(5);
    c.flush_timeout = Duration::from_secs(10);
    c
}

/// Every sample item, for two tenants, in `versions` versions each (one second apart),
/// ordered version by version as an outbox would hold them.
fn events(versions: i64) -> Vec<Event> {
    let mut out = Vec::new();
    for v in 0..versions {
        for (name, id) in [(TENANT_NAME, TENANT_ID), ("fabrikam", OTHER_TENANT_ID)] {
            for (page, feed, n) in [
                (M365D_INCIDENTS, Feed::M365dIncidents, 3),
                (GRAPH_INCIDENTS, Feed::GraphIncidents, 1),
                (GRAPH_ALERTS, Feed::GraphAlerts, 2),
                (MDE_ALERTS, Feed::MdeAlerts, 1),
            ] {
                for i in 0..n {
                    let mut e = event(page, i, feed);
                    e.tenant_name = name.to_string();
                    e.tenant_id = id.to_string();
                    e.version_time += chrono::Duration::seconds(v);
                    out.push(e);
                }
            }
        }
    }
    out
}

/// `n` distinct alerts (ids suffixed), for volume tests.
fn alerts(n: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = event(GRAPH_ALERTS, i % 2, Feed::GraphAlerts);
            e.id = format!("{}-{tag}-{i}", e.id);
            e
        })
        .collect()
}

/// What the sink should have produced for `e`.
fn expected(e: &Event, topic: &str) -> Received {
    let mut key = String::new();
    encode::key(e, &mut key);
    let mut value = Vec::new();
    encode::value(e, &mut value);
    Received {
        topic: topic.to_string(),
        partition: -1,
        offset: -1,
        key: key.into_bytes(),
        headers: encode::header_pairs(e)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_bytes()))
            .collect(),
        value,
    }
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    let (_, v) = r.headers.iter().find(|(k, _)| k == name).unwrap();
    std::str::from_utf8(v).unwrap()
}

/// Asserts that `got` holds exactly the records of `sent` (no loss, no duplicate), each with
/// its key, headers and value, and that each key's versions are in one partition, in the
/// order they were sent.
fn assert_delivered(sent: &[Event], template: &Template, got: &[Received]) {
    assert_eq!(got.len(), sent.len(), "records read back");
    let mut by_version: BTreeMap<(Vec<u8>, String), &Received> = BTreeMap::new();
    for r in got {
        let prev = by_version.insert((r.key.clone(), header(r, "version_time").to_string()), r);
        assert!(
            prev.is_none(),
            "duplicate record {:?}",
            String::from_utf8_lossy(&r.key)
        );
    }
    let mut order: BTreeMap<Vec<u8>, Vec<&Received>> = BTreeMap::new();
    for e in sent {
        let want = expected(e, &template.render(e));
        let version = header(&want, "version_time").to_string();
        let r = by_version
            .get(&(want.key.clone(), version))
            .unwrap_or_else(|| panic!("missing {}", String::from_utf8_lossy(&want.key)));
        assert_eq!(r.topic, want.topic);
        assert_eq!(r.key, want.key);
        assert_eq!(r.headers, want.headers);
        assert_eq!(r.value, want.value);
        order.entry(r.key.clone()).or_default().push(r);
    }
    for (key, records) in order {
        let partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
        assert!(
            partitions.windows(2).all(|w| w[0] == w[1]),
            "{} spread over partitions {partitions:?}",
            String::from_utf8_lossy(&key)
        );
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{} versions out of order: offsets {offsets:?} in sending order",
            String::from_utf8_lossy(&key)
        );
    }
}

async fn read_back(t: &Tansu, topics: &[&str], expected: usize) -> Vec<Received> {
    let bootstrap = t.bootstrap();
    let topics: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        // Ask for one more than expected, so that a duplicate would be read too.
        consume(&bootstrap, &topics, expected + 1, Duration::from_secs(8)).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn kafka_batch_arrives_with_key_headers_value_and_per_key_order() {
    let t = Tansu::start().unwrap();
    create_topics(
        &t.bootstrap(),
        &[("defender.incidents", 3), ("defender.alerts", 3)],
    )
    .await
    .unwrap();
    let mut sink = KafkaSink::new(config(&t.bootstrap(), "defender.{stream}")).unwrap();
    sink.healthcheck().await.unwrap();
    let sent = events(3);
    // Two batches, as the worker would cut them: order must hold across batches too.
    let (first, second) = sent.split_at(sent.len() / 2);
    sink.send(first).await.unwrap();
    sink.send(second).await.unwrap();
    sink.shutdown().await.unwrap();

    let got = read_back(&t, &["defender.incidents", "defender.alerts"], sent.len()).await;
    let template = Template::parse("defender.{stream}").unwrap();
    assert_delivered(&sent, &template, &got);
    // The keys really are spread: more than one partition is in use.
    let partitions: std::collections::BTreeSet<i32> = got.iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "{partitions:?}");
}

#[tokio::test]
async fn kafka_every_compression_codec_round_trips() {
    let t = Tansu::start().unwrap();
    for (codec, name) in [
        (KafkaCompression::None, "none"),
        (KafkaCompression::Gzip, "gzip"),
        (KafkaCompression::Snappy, "snappy"),
        (KafkaCompression::Lz4, "lz4"),
        (KafkaCompression::Zstd, "zstd"),
    ] {
        let topic = format!("codec-{name}");
        create_topics(&t.bootstrap(), &[(&topic, 1)]).await.unwrap();
        let mut c = config(&t.bootstrap(), &topic);
        c.compression = codec;
        let mut sink = KafkaSink::new(c).unwrap();
        let sent = alerts(20, name);
        sink.send(&sent).await.unwrap();
        let got = read_back(&t, &[&topic], sent.len()).await;
        assert_delivered(&sent, &Template::parse(&topic).unwrap(), &got);
    }
}

#[tokio::test]
async fn kafka_full_local_queue_waits_instead_of_dropping() {
    let t = Tansu::start().unwrap();
    create_topics(&t.bootstrap(), &[("small-queue", 2)])
        .await
        .unwrap();
    let mut c = config(&t.bootstrap(), "small-queue");
    c.properties
        .insert("queue.buffering.max.messages".into(), plain("4"));
    let mut sink = KafkaSink::new(c).unwrap();
    let sent = alerts(60, "q");
    sink.send(&sent).await.unwrap();
    let got = read_back(&t, &["small-queue"], sent.len()).await;
    assert_delivered(&sent, &Template::parse("small-queue").unwrap(), &got);
}

#[tokio::test]
async fn kafka_broker_down_is_transient_and_the_retried_batch_arrives_after_restart() {
    let mut t = Tansu::start().unwrap();
    let topics = [("defender.incidents", 2), ("defender.alerts", 2)];
    create_topics(&t.bootstrap(), &topics).await.unwrap();
    let mut sink = KafkaSink::new(config(&t.bootstrap(), "defender.{stream}")).unwrap();
    sink.send(&events(1)).await.unwrap();

    t.stop();
    let batch = events(2);
    let started = Instant::now();
    let e = sink.send(&batch).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(matches!(e, SinkError::Unavailable { .. }), "{e:?}");
    // Bounded by message.timeout.ms (5 s), with room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains(&t.bootstrap()), "{e}");
    let chain = format!("{:?}", std::error::Error::source(&e));
    assert!(chain.contains("events failed"), "{chain}");
    let health = sink.healthcheck().await.unwrap_err();
    assert!(health.is_transient() && health.to_string().contains(&t.bootstrap()));

    // A new broker on the same port, empty (in-memory storage): the worker's retry of the
    // same batch must get through.
    t.restart().unwrap();
    create_topics(&t.bootstrap(), &topics).await.unwrap();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink.send(&batch).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempts < 5 => {
                eprintln!("retry {attempts}: {e:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("after {attempts} attempts: {e:?}"),
        }
    }
    sink.healthcheck().await.unwrap();
    let got = read_back(&t, &["defender.incidents", "defender.alerts"], batch.len()).await;
    assert_delivered(&batch, &Template::parse("defender.{stream}").unwrap(), &got);
}

#[tokio::test]
async fn kafka_shutdown_flushes_what_a_cancelled_send_left_queued() {
    let t = Tansu::start().unwrap();
    create_topics(&t.bootstrap(), &[("lingering", 1)])
        .await
        .unwrap();
    let mut c = config(&t.bootstrap(), "lingering");
    // Messages wait 3 s in librdkafka's queue before a produce request goes out.
    c.properties.insert("linger.ms".into(), plain("3000"));
    let mut sink = KafkaSink::new(c).unwrap();
    let sent = alerts(10, "linger");
    // The worker cancels a send when the relay shuts down.
    let cancelled = tokio::time::timeout(Duration::from_millis(300), sink.send(&sent)).await;
    assert!(cancelled.is_err(), "send finished before the linger time");
    sink.shutdown().await.unwrap();
    let got = read_back(&t, &["lingering"], sent.len()).await;
    assert_delivered(&sent, &Template::parse("lingering").unwrap(), &got);
}

#[tokio::test]
async fn kafka_message_larger_than_allowed_is_rejected_permanently() {
    let t = Tansu::start().unwrap();
    create_topics(&t.bootstrap(), &[("sized", 1)])
        .await
        .unwrap();
    let mut c = config(&t.bootstrap(), "sized");
    c.properties
        .insert("message.max.bytes".into(), plain("4000"));
    c.properties.insert("batch.size".into(), plain("4000"));
    let mut sink = KafkaSink::new(c).unwrap();
    let mut batch = vec![event_with_raw(r#"{"small":true}"#)];
    batch.push(event(GRAPH_ALERTS, 1, Feed::GraphAlerts)); // ~6 KB
    let e = sink.send(&batch).await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("rejected the batch"), "{text}");
    assert!(text.contains("topic sized"), "{text}");
    assert!(text.contains(&batch[1].id), "{text}");
    assert!(text.contains("1 of 2 events failed"), "{text}");
}

#[tokio::test]
async fn kafka_healthcheck_names_the_brokers_when_none_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut c = config(&bootstrap, "defender.{stream}");
    c.healthcheck_timeout = Duration::from_secs(2);
    let mut sink = AnySink::from(KafkaSink::new(c).unwrap());
    assert_eq!(sink.kind(), "kafka");
    let e = sink.healthcheck().await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("sink bus: {bootstrap} is unavailable")
    );
    assert!(std::error::Error::source(&e).is_some());
}

#[tokio::test]
async fn kafka_healthcheck_passes_against_a_running_broker() {
    let t = Tansu::start().unwrap();
    create_topics(&t.bootstrap(), &[("fixed", 1)])
        .await
        .unwrap();
    let mut sink = KafkaSink::new(config(&t.bootstrap(), "fixed")).unwrap();
    sink.healthcheck().await.unwrap();
    let mut sink = KafkaSink::new(config(&t.bootstrap(), "defender.{tenant}")).unwrap();
    sink.healthcheck().await.unwrap();
}

#[test]
fn kafka_debug_output_has_no_secret() {
    let mut c = config("127.0.0.1:9", "defender.{stream}");
    c.properties.insert(
        "sasl.password".into(),
        KafkaProperty::Secret(Secret::new("kafka-pw-VALUE-7f3a")),
    );
    c.properties.insert("sasl.username".into(), plain("relay"));
    let sink = KafkaSink::new(c.clone()).unwrap();
    let alone = format!("{sink:?}");
    let shown = format!("{alone} {:?} {c:?}", AnySink::from(sink));
    assert!(!shown.contains("kafka-pw-VALUE-7f3a"), "{shown}");
    assert!(
        shown.contains("127.0.0.1:9") && shown.contains("bus"),
        "{shown}"
    );
    // The secret does reach librdkafka.
    assert_eq!(
        c.client_config().get("sasl.password"),
        Some("kafka-pw-VALUE-7f3a")
    );
}

#[test]
fn kafka_invalid_secret_property_error_does_not_quote_it() {
    let mut c = config("127.0.0.1:9", "t");
    c.properties.insert(
        "sasl.password".into(),
        KafkaProperty::Secret(Secret::new("pw-VALUE-91")),
    );
    let e = rdkafka::error::KafkaError::ClientConfig(
        rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        "Invalid value \"pw-VALUE-91\" for configuration property \"sasl.password\"".into(),
        "sasl.password".into(),
        "pw-VALUE-91".into(),
    );
    let text = sink::creation_error(&c, &e);
    assert!(!text.contains("pw-VALUE-91"), "{text}");
    assert!(text.contains("sasl.password"), "{text}");
}

#[test]
fn kafka_unknown_property_is_a_config_error_naming_it() {
    let mut c = config("127.0.0.1:9", "t");
    c.properties.insert("no.such.property".into(), plain("1"));
    let e = KafkaSink::new(c).unwrap_err();
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(
        text.starts_with("sink bus: invalid configuration: librdkafka.\"no.such.property\""),
        "{text}"
    );
    // Idempotence caps in-flight requests at 5; librdkafka refuses more at build time.
    let mut c = config("127.0.0.1:9", "t");
    c.properties
        .insert("max.in.flight.requests.per.connection".into(), plain("10"));
    let e = KafkaSink::new(c).unwrap_err();
    assert!(matches!(e, SinkError::Config { .. }), "{e:?}");
}

#[test]
fn kafka_client_config_fixes_idempotence_and_keeps_overrides() {
    let mut c = config("k1:9092", "t");
    c.brokers.push("k2:9092".into());
    c.compression = KafkaCompression::Zstd;
    c.properties
        .insert("queue.buffering.max.ms".into(), plain("50"));
    c.properties.insert("client.id".into(), plain("mssp-relay"));
    let cc = c.client_config();
    assert_eq!(cc.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
    assert_eq!(cc.get("enable.idempotence"), Some("true"));
    assert_eq!(cc.get("acks"), Some("all"));
    assert_eq!(cc.get("delivery.report.only.error"), Some("false"));
    assert_eq!(cc.get("max.in.flight.requests.per.connection"), Some("5"));
    assert_eq!(cc.get("compression.codec"), Some("zstd"));
    assert_eq!(cc.get("message.timeout.ms"), Some("5000"));
    assert_eq!(cc.get("partitioner"), Some("murmur2_random"));
    assert_eq!(cc.get("client.id"), Some("mssp-relay"));
    // The operator used linger.ms's alias: the default must not race it.
    assert_eq!(cc.get("queue.buffering.max.ms"), Some("50"));
    assert_eq!(cc.get("linger.ms"), None);
    assert_eq!(cc.get("batch.size"), Some("1000000"));
}

#[test]
fn kafka_validation_reports_every_problem() {
    let mut c = config("k:9092", "t");
    c.brokers.push(String::new());
    c.properties.insert("acks".into(), plain("1"));
    c.properties.insert("transactional.id".into(), plain("x"));
    c.properties
        .insert("delivery.timeout.ms".into(), plain("0"));
    c.batch.max_events = 0;
    let e = c.validate().unwrap_err();
    let text = e.to_string();
    for part in [
        "brokers[1]: \"\" is not a host:port",
        "librdkafka.\"acks\": cannot be set here: fixed: the producer always waits for acks=all",
        "librdkafka.\"transactional.id\": cannot be set here",
        "librdkafka.\"delivery.timeout.ms\": must be a number of milliseconds from 1",
        "batch.max_events: must be at least 1",
    ] {
        assert!(text.contains(part), "{part} not in {text}");
    }
    let mut ok = config("k:9092", "t");
    ok.properties
        .insert("message.timeout.ms".into(), plain("900000"));
    assert!(ok.validate().is_ok());
}

#[test]
fn kafka_config_from_config_maps_every_key() {
    let relay = relay_config::KafkaConfig {
        brokers: vec!["k1:9092".into()],
        topic: "defender.{tenant}.{stream}".into(),
        compression: KafkaCompression::Gzip,
        librdkafka: BTreeMap::from([
            ("security.protocol".to_string(), plain("sasl_plaintext")),
            (
                "sasl.password".to_string(),
                KafkaProperty::Secret(Secret::new("s3cret-VALUE")),
            ),
        ]),
    };
    let c = KafkaSinkConfig::from_config("bus", &relay).unwrap();
    assert_eq!(c.name, "bus");
    assert_eq!(c.bootstrap_servers(), "k1:9092");
    assert_eq!(c.topic.as_str(), "defender.{tenant}.{stream}");
    let e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
    assert_eq!(
        c.topic.render(&e),
        relay.topic_for(&e.tenant_name, e.stream)
    );
    assert_eq!(c.compression, KafkaCompression::Gzip);
    assert_eq!(c.batch, KafkaSinkConfig::DEFAULT_BATCH);
    let cc = c.client_config();
    assert_eq!(cc.get("security.protocol"), Some("sasl_plaintext"));
    assert_eq!(cc.get("sasl.password"), Some("s3cret-VALUE"));
    assert!(!format!("{c:?}").contains("s3cret-VALUE"));

    let bad = relay_config::KafkaConfig {
        topic: "x.{customer}".into(),
        ..relay
    };
    let e = KafkaSinkConfig::from_config("bus", &bad).unwrap_err();
    assert!(e.to_string().contains("topic: template"), "{e}");
}

#[tokio::test]
async fn kafka_unknown_topic_without_auto_creation_is_rejected_permanently() {
    let t = Tansu::start().unwrap();
    let mut c = config(&t.bootstrap(), "never-created");
    // The broker creates topics on demand only when the client allows it (tansu does).
    c.properties
        .insert("allow.auto.create.topics".into(), plain("false"));
    // librdkafka reports an unknown topic once topic.metadata.propagation.max.ms (30 s) has
    // passed; in production that is well inside message.timeout.ms (120 s), here the
    // message timeout is 5 s, so shorten the propagation wait to keep that order.
    c.properties
        .insert("topic.metadata.propagation.max.ms".into(), plain("1000"));
    let mut sink = KafkaSink::new(c).unwrap();
    let health = sink.healthcheck().await.unwrap_err();
    assert!(!health.is_transient(), "{health:?}");
    assert!(
        health
            .to_string()
            .contains("topic never-created: UnknownTopicOrPartition"),
        "{health}"
    );
    let batch = alerts(3, "unknown");
    let e = sink.send(&batch).await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("Unknown topic or partition"), "{text}");
    assert!(text.contains("3 of 3 events failed"), "{text}");
    assert!(
        text.contains(&format!("event contoso/{}", batch[0].id)),
        "{text}"
    );

    // With auto-creation allowed (librdkafka's producer default) the same topic just works.
    let mut sink = KafkaSink::new(config(&t.bootstrap(), "created-on-demand")).unwrap();
    sink.healthcheck().await.unwrap();
    sink.send(&batch).await.unwrap();
    let got = read_back(&t, &["created-on-demand"], batch.len()).await;
    assert_delivered(&batch, &Template::parse("created-on-demand").unwrap(), &got);
}
