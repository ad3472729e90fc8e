//! Syslog sink throughput: 100,000 distinct ~6 KB Graph alerts built from the real samples
//! (`common::graph_alerts`) formatted as CEF behind an RFC 5424 header and
//! sent over TCP with octet counting, in batches of the sink's own size, to a local receiver
//! thread that reads and discards. Prints events/s and events per CPU-second of the sending
//! side (process CPU from getrusage minus the receiver thread's own).
//!
//! `cargo bench -p relay-sinks --bench syslog_send`

mod common;

use common::BoxError;
use nix::sys::resource::{getrusage, Usage, UsageWho};
use relay_sinks::{Sink, SyslogSink, SyslogSinkConfig};
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const EVENTS: usize = 100_000;

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
    let events = common::graph_alerts(EVENTS)?;
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
