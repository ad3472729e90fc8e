//! Syslog sink throughput: 100,000 ~6 KB Graph alerts (the real sample
//! `graph-alerts_v2-1.json`, distinct ids) formatted as CEF behind an RFC 5424 header and
//! sent over TCP with octet counting, in batches of the sink's own size, to a local receiver
//! thread that reads and discards. Prints events/s and events per CPU-second of the sending
//! side (process CPU from getrusage minus the receiver thread's own).
//!
//! `cargo bench -p relay-sinks --bench syslog_send`

use nix::sys::resource::{getrusage, Usage, UsageWho};
use relay_config::Feed;
use relay_sinks::{Event, Severity, Sink, SyslogSink, SyslogSinkConfig};
use serde_json::value::RawValue;
use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const SAMPLE: &str = include_str!("../testdata/graph-alerts_v2-1.json");
const EVENTS: usize = 100_000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn events() -> Result<Vec<Event>, BoxError> {
    let page: Value = serde_json::from_str(SAMPLE)?;
    // The second alert of the sample is the ~6 KB one (full evidence).
    let alert = page["value"]
        .get(1)
        .ok_or("sample has no second alert")?
        .clone();
    let version_time = alert["lastUpdateDateTime"]
        .as_str()
        .ok_or("alert without lastUpdateDateTime")?
        .parse()?;
    (0..EVENTS)
        .map(|i| {
            let mut doc = alert.clone();
            let id = format!("{}-{i}", alert["id"].as_str().unwrap_or(""));
            doc["id"] = Value::String(id.clone());
            Ok(Event {
                tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
                tenant_name: "contoso".into(),
                stream: Feed::GraphAlerts.stream(),
                feed: Feed::GraphAlerts,
                id,
                version_time,
                severity: Severity::from_api(alert["severity"].as_str().unwrap_or("")),
                title: alert["title"].as_str().map(str::to_string),
                raw: RawValue::from_string(doc.to_string())?,
            })
        })
        .collect()
}

fn cpu(u: &Usage) -> Duration {
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    t(u.user_time()) + t(u.system_time())
}

fn main() -> Result<(), BoxError> {
    let events = events()?;
    let doc_bytes: usize = events.iter().map(|e| e.raw.get().len()).sum();

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // The receiver only reads: a std thread with a large buffer, measuring its own CPU so
    // that it can be taken out of the sender's.
    let receiver = std::thread::spawn(move || -> Result<(u64, Duration), BoxError> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        Ok((total, cpu(&getrusage(UsageWho::RUSAGE_THREAD)?)))
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = SyslogSinkConfig::new("bench", "127.0.0.1", port);
    config.hostname = Some("relay01".into());
    let mut sink = SyslogSink::new(config)?;
    let batch = sink.batch_limits().max_events;

    let cpu_before = cpu(&getrusage(UsageWho::RUSAGE_SELF)?);
    let start = Instant::now();
    rt.block_on(async {
        sink.healthcheck().await?;
        for chunk in events.chunks(batch) {
            sink.send(chunk).await?;
        }
        sink.shutdown().await
    })?;
    let elapsed = start.elapsed();
    let (received, receiver_cpu) = receiver.join().map_err(|_| "receiver panicked")??;
    let cpu_total = cpu(&getrusage(UsageWho::RUSAGE_SELF)?) - cpu_before;
    let sender_cpu = cpu_total.saturating_sub(receiver_cpu);

    let stats = sink.stats();
    assert_eq!(stats.events_sent, EVENTS as u64);
    assert_eq!(received, stats.bytes_sent, "receiver got every byte");
    let secs = elapsed.as_secs_f64();
    println!(
        "syslog_send: {EVENTS} events ({:.1} KB document, {:.1} KB on the wire each), batches of {batch}",
        doc_bytes as f64 / EVENTS as f64 / 1024.0,
        stats.bytes_sent as f64 / EVENTS as f64 / 1024.0,
    );
    println!(
        "  {:>9.0} events/s   {:>7.1} MB/s on the wire   {:.2} s wall",
        EVENTS as f64 / secs,
        stats.bytes_sent as f64 / secs / 1e6,
        secs
    );
    println!(
        "  {:>9.0} events per CPU-second of the sender ({:.2} s CPU; receiver {:.2} s)",
        EVENTS as f64 / sender_cpu.as_secs_f64().max(1e-9),
        sender_cpu.as_secs_f64(),
        receiver_cpu.as_secs_f64()
    );
    Ok(())
}
