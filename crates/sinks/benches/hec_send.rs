//! HEC sink throughput: 100,000 distinct ~6 KB Graph alerts built from the real samples
//! (`common::graph_alerts`) through `SplunkHecSink::send`, cut into batches the way the sink
//! worker cuts them (`batch_limits`), to a local receiver that reads each body and answers
//! 200.
//!
//! The receiver runs on its own thread with its own runtime and measures its own CPU
//! (`getrusage(RUSAGE_THREAD)`), so the sink's CPU is the process's (`RUSAGE_SELF`) minus
//! the receiver's. Prints events/s and events per CPU-second of the sink, gzip off and on.
//! Every document differs in its ids, hashes, hosts and times, so gzip works as hard as on
//! real traffic (about 7:1). The outbox → worker → sink benchmark is the workspace's
//! `examples/sink_bench.rs`.
//!
//! `cargo bench -p relay-sinks --bench hec_send`

mod common;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use common::BoxError;
use nix::sys::resource::{getrusage, UsageWho};
use relay_config::Secret;
use relay_sinks::{Event, Sink, SplunkHecSink, SplunkHecSinkConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS: usize = 100_000;

/// CPU seconds (user + system) of `who`.
fn cpu(who: UsageWho) -> Result<f64, BoxError> {
    let u = getrusage(who)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// The fast receiver: its address, request and byte counters, a stop switch, and the thread
/// that returns its CPU seconds.
struct Receiver {
    url: url::Url,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<f64, String>>,
}

fn start_receiver() -> Result<Receiver, BoxError> {
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (r, b) = (Arc::clone(&requests), Arc::clone(&bytes));
    let thread = std::thread::spawn(move || -> Result<f64, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let start_cpu = cpu(UsageWho::RUSAGE_THREAD).map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/services/collector/event",
                    post(move |body: Bytes| {
                        r.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(body.len() as u64, Ordering::Relaxed);
                        async { r#"{"text":"Success","code":0}"# }
                    }),
                )
                .layer(DefaultBodyLimit::disable());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string())?);
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| e.to_string())
        })?;
        Ok(cpu(UsageWho::RUSAGE_THREAD).map_err(|e| e.to_string())? - start_cpu)
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    Ok(Receiver {
        url: format!("http://{addr}/").parse()?,
        requests,
        bytes,
        stop,
        thread,
    })
}

/// Batches as the sink worker cuts them: in order, up to `max_events` and about
/// `max_bytes` by `Event::approx_bytes`.
fn batches(events: &[Event], limits: relay_sinks::BatchLimits) -> Vec<&[Event]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < events.len() && end - start < limits.max_events {
            let b = events[end].approx_bytes();
            if end > start && bytes + b > limits.max_bytes {
                break;
            }
            bytes += b;
            end += 1;
        }
        out.push(&events[start..end]);
        start = end;
    }
    out
}

async fn run(events: &[Event], gzip: bool) -> Result<(), BoxError> {
    let receiver = start_receiver()?;
    let mut config = SplunkHecSinkConfig::new(
        "bench",
        receiver.url.clone(),
        Secret::new("6a1d0b4e-2c3f-4e5a-8b7c-9d0e1f2a3b4c"),
    );
    config.gzip = gzip;
    let mut sink = SplunkHecSink::new(config)?;
    let batches = batches(events, sink.batch_limits());
    // Warm up the connection.
    sink.send(&events[..1]).await?;

    let process_cpu = cpu(UsageWho::RUSAGE_SELF)?;
    let start = Instant::now();
    for batch in &batches {
        sink.send(batch).await?;
    }
    let wall = start.elapsed().as_secs_f64();
    let process_cpu = cpu(UsageWho::RUSAGE_SELF)? - process_cpu;

    let requests = receiver.requests.load(Ordering::Relaxed) - 1;
    let wire = receiver.bytes.load(Ordering::Relaxed);
    let _ = receiver.stop.send(());
    let receiver_cpu = receiver
        .thread
        .join()
        .map_err(|_| "receiver thread panicked")??;
    // The receiver's CPU includes the warm-up request and its start; negligible here.
    let sink_cpu = (process_cpu - receiver_cpu).max(1e-9);
    let input: usize = events.iter().map(|e| e.raw.get().len()).sum();
    println!(
        "gzip={:<5} {} events in {} batches / {requests} requests: {:>8.0} events/s, \
         {:>6.1} MB/s of documents, {:>5.1} MB on the wire; sink {:>8.0} events per CPU-second \
         ({sink_cpu:.2} CPU-s; process {process_cpu:.2} CPU-s, receiver {receiver_cpu:.2} CPU-s, \
         wall {wall:.2} s)",
        gzip,
        events.len(),
        batches.len(),
        events.len() as f64 / wall,
        input as f64 / wall / 1e6,
        wire as f64 / 1e6,
        events.len() as f64 / sink_cpu,
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let events = common::graph_alerts(EVENTS)?;
    let avg = events.iter().map(|e| e.raw.get().len()).sum::<usize>() / events.len();
    println!("{} events, {avg} B per document on average", events.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        run(&events, false).await?;
        run(&events, true).await
    })
}
