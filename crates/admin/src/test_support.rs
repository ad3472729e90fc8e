//! Builders for the unit tests.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_config::{Config, Feed, Stream};
use relay_pipeline::{ErrorCounts, FeedStats, LatencyHistogram, RelayStatus, SinkState, SinkStats};
use relay_state::OutboxDepth;

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An empty status taken at 2026-05-01T12:00:00Z, the relay started an hour before.
pub fn status() -> RelayStatus {
    RelayStatus {
        taken_at: t("2026-05-01T12:00:00Z"),
        started_at: t("2026-05-01T11:00:00Z"),
        tenants: Vec::new(),
        feeds: Vec::new(),
        sinks: Vec::new(),
        engine: Default::default(),
        actions: Default::default(),
    }
}

/// The `alerts` feed of `tenant` (Graph), polled 3 times (if `polled`) with one transient
/// error, 40 s behind, throttled twice for 2.5 s in all.
pub fn feed(tenant: &str, polled: bool) -> FeedStats {
    let now = t("2026-05-01T12:00:00Z");
    FeedStats {
        tenant: tenant.into(),
        feed: Feed::GraphAlerts,
        stream: Stream::Alerts,
        polls: if polled { 4 } else { 0 },
        events: if polled { 17 } else { 0 },
        duplicates_skipped: if polled { 2 } else { 0 },
        errors: ErrorCounts {
            transient: u64::from(polled),
            ..ErrorCounts::default()
        },
        last_poll: polled.then(|| t("2026-05-01T11:59:50Z")),
        last_success: polled.then(|| t("2026-05-01T11:59:50Z")),
        last_error: None,
        checkpoint: polled.then(|| t("2026-05-01T11:59:20Z")),
        lag: polled.then(|| (now - t("2026-05-01T11:59:20Z")).to_std().unwrap()),
        skipped_outbox_full: 0,
        paused_by_sink: None,
        throttled: if polled { 2 } else { 0 },
        throttled_wait: if polled {
            Duration::from_millis(2_500)
        } else {
            Duration::ZERO
        },
    }
}

/// An idle sink that delivered 17 events in 4 batches, acknowledged after 1/64 s, 0.125 s,
/// 0.25 s and 0.5 s (binary fractions: their sum prints exactly), and holds 3 more, the
/// oldest 90 s old.
pub fn sink(name: &str) -> SinkStats {
    SinkStats {
        name: name.into(),
        kind: "file".into(),
        state: SinkState::Idle,
        sent: 17,
        failures: 1,
        undecodable: 0,
        last_delivery: Some(t("2026-05-01T11:59:55Z")),
        last_error: None,
        outbox: OutboxDepth {
            rows: 3,
            bytes: 4_096,
            oldest_enqueued: Some(t("2026-05-01T11:58:30Z")),
            over_limit: false,
        },
        ack_latency: {
            let mut h = LatencyHistogram::ack_latency();
            for micros in [15_625, 125_000, 250_000, 500_000] {
                h.observe(Duration::from_micros(micros));
            }
            h
        },
        in_flight: 0,
        in_flight_limit: 1,
    }
}

/// A loaded configuration with one client-secret tenant, `contoso`, polling every 60 s.
pub fn config() -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("tenants.d")).unwrap();
    fs::write(
        dir.path().join("relay.toml"),
        "[state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\n\
         [sinks.file]\ntype = \"file\"\npath = \"events\"\n",
    )
    .unwrap();
    fs::write(dir.path().join("app.secret"), "s3cr3t\n").unwrap();
    fs::write(
        dir.path().join("tenants.d/contoso.toml"),
        "tenant_id = \"3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b\"\nsinks = [\"file\"]\n\
         poll_interval_secs = 60\n[auth]\nkind = \"client_secret\"\n\
         client_id = \"0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3\"\n\
         client_secret = { file = \"app.secret\" }\n",
    )
    .unwrap();
    let env = HashMap::new();
    let config = relay_config::load(&relay_config::LoadOptions::new(
        dir.path().join("relay.toml"),
        &env,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, config)
}
