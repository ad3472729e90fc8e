//! The async runtime the daemon and the demo run on.
//!
//! Its blocking pool is bounded and keeps its threads. Tokio's default lets the pool grow
//! to 512 threads and retires each after 10 s idle, so a relay whose polls handed every
//! state-store call to the pool kept creating threads; each new thread took a malloc
//! arena, buffers were allocated on one thread and freed on another, and the arenas'
//! fragmentation showed as resident memory rising for many minutes while the live heap
//! stayed flat (issue 13). Writes now go to the state store's own writer thread; the pool
//! only serves reads (outbox batches, start-up checkpoint loads) and refresh-token saves.

use std::time::Duration;

use anyhow::Context;

/// Threads of the blocking pool at most: outbox reads of a few sinks, start-up reads and
/// token saves; more would only add arenas.
const MAX_BLOCKING_THREADS: usize = 16;
/// An idle blocking thread stays this long, so a steady load reuses the same few.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// A multi-threaded runtime with one worker per core and the bounded blocking pool.
pub fn build() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .context("cannot start the async runtime")
}
