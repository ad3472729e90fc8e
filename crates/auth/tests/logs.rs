//! Log output of refreshes carries no token or secret, and names tenant and audience.
//!
//! A binary of its own: `tracing` caches per-callsite interest process-wide, and tests
//! running in parallel threads without a subscriber can make a thread-local capture miss
//! events. Alone in its process the capture sees everything.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use harness::{Kind, SimEntra, SimOptions};
use relay_auth::{ManagerOptions, MemoryStore, TokenVersion};
use relay_config::Audience;
use relay_sim::entra::TokenFault;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use util::*;

#[test]
fn logs_of_refreshes_show_no_token_and_carry_tenant_and_audience() {
    let sim = SimEntra::start(SimOptions {
        access_token_lifetime: Duration::from_secs(4),
        ..SimOptions::default()
    });
    let capture = Capture::default();
    let _guard = capture.install();
    // A current-thread runtime: every task the manager spawns logs through this thread's
    // subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut secrets = sim.secrets();
    rt.block_on(async {
        let m = manager(store.clone(), ManagerOptions::default());
        m.upsert_tenant(sim.tenant(
            "delegated",
            0,
            Kind::RefreshTokenWithSecret,
            TokenVersion::V1,
        ));
        m.upsert_tenant(sim.tenant("app", 1, Kind::ClientSecret, TokenVersion::V2));
        m.upsert_tenant(sim.tenant("cert", 2, Kind::Certificate, TokenVersion::V2));
        for name in ["delegated", "app", "cert"] {
            let t = m.access_token(name, Audience::Graph).await.unwrap();
            secrets.push(t.secret.expose().to_string());
            // A 401 and a refresh.
            m.invalidate(name, Audience::Graph, &t);
            let t = m.access_token(name, Audience::Graph).await.unwrap();
            secrets.push(t.secret.expose().to_string());
        }
        // An early refresh that fails, and a revoked grant.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        sim.fault(1, Some(TokenFault::Down));
        let t = m.access_token("app", Audience::Graph).await.unwrap();
        secrets.push(t.secret.expose().to_string());
        sim.entra.revoke_grant(sim.tenant_id(0));
        if let Ok(t) = m.access_token("delegated", Audience::Graph).await {
            m.invalidate("delegated", Audience::Graph, &t);
        }
        assert!(m
            .access_token("delegated", Audience::Graph)
            .await
            .unwrap_err()
            .is_needs_consent());
    });
    secrets.push(store.get("delegated").unwrap().expose().to_string());

    let logs = capture.text();
    assert_no_leak(&logs, &secrets);
    // The refresh spans name tenant and audience, and the interesting events happened.
    assert!(logs.contains("tenant=delegated"), "{logs}");
    assert!(logs.contains("audience=graph"), "{logs}");
    assert!(logs.contains("rotated refresh token saved"), "{logs}");
    assert!(logs.contains("still using the current token"), "{logs}");
    assert!(logs.contains("needs consent"), "{logs}");
}

/// A `tracing` subscriber writing everything (TRACE, with span fields) into a buffer.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Installs the subscriber for the current thread; with a current-thread runtime that
    /// includes every task spawned on it.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
