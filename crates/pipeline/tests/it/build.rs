//! Building the relay refuses what cannot work, naming the tenant or sink.

use std::time::Duration;

use relay_config::{Api, AuthMethod, KafkaCompression, KafkaConfig, SinkConfig};
use relay_pipeline::{PipelineError, Relay};
use relay_sim::Sim;
use relay_state::{StateStore, StoreOptions};

use crate::util::*;

async fn setup() -> (Sim, tempfile::TempDir) {
    let mut cfg = sim_config(1, 3);
    cfg.activity = 0;
    (Sim::start(cfg).await.unwrap(), tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn every_sink_type_is_built_and_a_refused_sink_configuration_names_the_sink() {
    let (sim, dir) = setup().await;
    let mut config = config(
        &sim,
        &[spec(0, Api::Graph, Auth::ClientSecret)],
        dir.path(),
        &dir.path().join("out"),
    );
    let kafka = |topic: &str| {
        SinkConfig::Kafka(KafkaConfig {
            brokers: vec!["127.0.0.1:9".into()],
            topic: topic.into(),
            compression: KafkaCompression::Lz4,
            librdkafka: Default::default(),
        })
    };
    config
        .sinks
        .insert("bus".into(), kafka("defender.{region}"));
    let err = Relay::new(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    )
    .unwrap_err();
    assert!(matches!(err, PipelineError::Sink(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("sink bus: invalid configuration: topic: "),
        "{err}"
    );
    assert!(!err.is_transient());

    config
        .sinks
        .insert("bus".into(), kafka("defender.{stream}"));
    Relay::new(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    )
    .unwrap();
}

#[tokio::test]
async fn refresh_token_tenant_needs_a_state_key() {
    let (sim, dir) = setup().await;
    let config = config(
        &sim,
        &[spec(0, Api::Graph, Auth::RefreshToken)],
        dir.path(),
        &dir.path().join("out"),
    );
    let keyless = std::sync::Arc::new(
        StateStore::open(&dir.path().join("state.db"), None, StoreOptions::default()).unwrap(),
    );
    let err = Relay::new(&config, keyless, options()).unwrap_err();
    assert!(
        matches!(&err, PipelineError::StateKeyRequired { tenant } if tenant == "t0"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("tenant t0: "), "{err}");
}

#[tokio::test]
async fn bootstrap_refresh_token_is_saved_and_a_missing_one_is_refused() {
    let (sim, dir) = setup().await;
    let mut config = config(
        &sim,
        &[spec(0, Api::Graph, Auth::RefreshToken)],
        dir.path(),
        &dir.path().join("out"),
    );
    let state = open_state(dir.path(), StoreOptions::default());
    Relay::new(&config, state.clone(), options()).unwrap();
    assert_eq!(
        state.load_refresh_token("t0").unwrap().unwrap().expose(),
        sim.tenants()[0].refresh_token
    );

    // No token in a fresh store and none in the file.
    let other = tempfile::tempdir().unwrap();
    if let AuthMethod::RefreshToken { refresh_token, .. } = &mut config.tenants[0].auth.method {
        *refresh_token = None;
    }
    let err = Relay::new(
        &config,
        open_state(other.path(), StoreOptions::default()),
        options(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PipelineError::NoRefreshToken { tenant, .. } if tenant == "t0"),
        "{err:?}"
    );
    // ...but a stored one is enough.
    Relay::new(&config, state, options()).unwrap();
}

#[tokio::test]
async fn tenant_routed_to_an_unknown_sink_is_refused() {
    let (sim, dir) = setup().await;
    let mut config = config(
        &sim,
        &[spec(0, Api::Defender, Auth::ClientSecret)],
        dir.path(),
        &dir.path().join("out"),
    );
    config.tenants[0].sinks = vec!["out".into(), "nowhere".into()];
    let err = Relay::new(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PipelineError::UnknownSink { tenant, sink } if tenant == "t0" && sink == "nowhere")
    );
    config.tenants[0].sinks.clear();
    let err = Relay::new(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    )
    .unwrap_err();
    assert!(matches!(&err, PipelineError::NoSinks { .. }), "{err:?}");
}

/// A relay with nothing to do still starts, reports, and stops promptly.
#[tokio::test]
async fn idle_relay_stops_promptly() {
    let (sim, dir) = setup().await;
    let mut config = config(
        &sim,
        &[spec(0, Api::Graph, Auth::ClientSecret)],
        dir.path(),
        &dir.path().join("out"),
    );
    config.tenants[0].enabled = false;
    let relay = start(
        &config,
        open_state(dir.path(), StoreOptions::default()),
        options(),
    );
    assert!(relay.status.snapshot().feeds.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let report = relay.stop().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(report.events, 0);
    assert_eq!(report.left_in_outbox.get("out"), Some(&0));
}
