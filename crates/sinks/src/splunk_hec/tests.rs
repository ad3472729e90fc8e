//! The HEC sink against the strict receiver on 127.0.0.1: request bytes, every status
//! decision, gzip, indexer ack, busy periods, outages, timeouts and TLS.

use super::test_receiver::{AckMode, HecReceiver, HecReceiverConfig, ReceiverTls, DEFAULT_TOKEN};
use super::*;
use crate::event::testdata::*;
use crate::hec::HecOptions;
use crate::{AnySink, Event, Sink, SinkError, Template};
use relay_config::{Feed, Secret};
use serde_json::value::RawValue;
use std::time::Duration;

const SINK: &str = "splunk";

fn small(id: &str) -> Event {
    let mut e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
    e.raw = RawValue::from_string(format!(r#"{{"id":"{id}"}}"#))
        .unwrap()
        .into();
    e
}

fn envelope(id: &str) -> String {
    format!(
        concat!(
            r#"{{"time":1697795647.503333,"#,
            r#""source":"xdr-relay:graph_alerts:3adb963c-8e61-48e8-a06d-6dbb0dacea39","#,
            r#""sourcetype":"ms365:defender:incident:alerts","#,
            r#""fields":{{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","stream":"alerts","feed":"graph_alerts"}},"#,
            r#""event":{{"id":"{}"}}}}"#
        ),
        id
    )
}

fn config(r: &HecReceiver) -> SplunkHecSinkConfig {
    let mut c = SplunkHecSinkConfig::new(SINK, r.url(), Secret::new(DEFAULT_TOKEN));
    c.gzip = false;
    c.request_timeout = Duration::from_secs(5);
    c
}

fn sink(c: SplunkHecSinkConfig) -> SplunkHecSink {
    SplunkHecSink::new(c).unwrap()
}

fn ack_config(r: &HecReceiver, timeout: Duration) -> SplunkHecSinkConfig {
    let mut c = config(r);
    c.indexer_ack.enabled = true;
    c.indexer_ack.timeout = timeout;
    c.indexer_ack.poll_interval = Duration::from_millis(50);
    c
}

/// The strict receiver with indexer acknowledgement on for its token.
async fn ack_receiver() -> HecReceiver {
    HecReceiver::start(HecReceiverConfig {
        indexer_ack: true,
        ..HecReceiverConfig::default()
    })
    .await
    .unwrap()
}

/// The error's message and every source below it.
fn chain(e: &SinkError) -> String {
    error_chain(e)
}

fn hec_source(e: &SinkError) -> &HecUnavailable {
    match e {
        SinkError::Unavailable { source, .. } | SinkError::Lost { source, .. } => source
            .downcast_ref::<HecUnavailable>()
            .unwrap_or_else(|| panic!("source is not HecUnavailable: {e:?}")),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn request_is_concatenated_envelopes_with_token_and_channel() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    s.send(&[small("a"), small("b")]).await.unwrap();

    let reqs = r.event_requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/services/collector/event");
    assert!(!req.has_query, "nothing may travel in the query string");
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert_eq!(req.content_encoding, None);
    assert_eq!(req.channel.as_deref(), Some(s.channel()));
    assert_eq!(req.status, 200);
    assert_eq!(
        String::from_utf8(req.body.clone()).unwrap(),
        format!("{}{}", envelope("a"), envelope("b"))
    );
    let events = r.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].envelope["event"]["id"], "b");
    assert_eq!(
        events[0].envelope["sourcetype"],
        "ms365:defender:incident:alerts"
    );
}

#[tokio::test]
async fn gzip_bodies_roundtrip_through_the_receiver() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut c = config(&r);
    c.gzip = true;
    let mut s = sink(c);
    let batch: Vec<Event> = (0..50)
        .map(|i| event(GRAPH_ALERTS, i % 2, Feed::GraphAlerts))
        .collect();
    s.send(&batch).await.unwrap();

    let reqs = r.event_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].content_encoding.as_deref(), Some("gzip"));
    let mut expected = Vec::new();
    for e in &batch {
        crate::hec::encode_event(e, &HecOptions::default(), &mut expected);
    }
    assert_eq!(reqs[0].body, expected, "gunzipped body is the envelopes");
    assert!(
        reqs[0].wire_len * 5 < expected.len(),
        "{} bytes on the wire for {}",
        reqs[0].wire_len,
        expected.len()
    );
    let events = r.events();
    assert_eq!(events.len(), 50);
    let doc: serde_json::Value = serde_json::from_str(batch[1].raw.get()).unwrap();
    assert_eq!(events[1].envelope["event"], doc);
}

#[tokio::test]
async fn large_batches_become_several_requests_in_order() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut c = config(&r);
    c.batch.max_bytes = 2 * envelope("0").len() + 1;
    let mut s = sink(c);
    let ids: Vec<String> = (0..5).map(|i| i.to_string()).collect();
    let batch: Vec<Event> = ids.iter().map(|i| small(i)).collect();
    s.send(&batch).await.unwrap();
    assert_eq!(r.event_requests().len(), 3);
    let got: Vec<String> = r
        .events()
        .iter()
        .map(|e| e.envelope["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn empty_batch_sends_nothing() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    s.send(&[]).await.unwrap();
    assert!(r.requests().is_empty());
}

#[tokio::test]
async fn tenant_overrides_label_only_that_tenants_events() {
    let r = HecReceiver::start(HecReceiverConfig {
        allowed_indexes: Some(vec!["defender".into(), "cust_fabrikam".into()]),
        ..HecReceiverConfig::default()
    })
    .await
    .unwrap();
    let mut c = config(&r);
    c.options.index = Some(Template::parse("defender").unwrap());
    let mut s = sink(c);
    s.set_tenant_overrides(
        "fabrikam",
        Some(&relay_config::HecOverrides {
            index: Some("cust_{tenant}".into()),
            source: Some("mssp:{tenant}".into()),
            sourcetype: Some("defender:{stream}".into()),
            host: Some("fabrikam-relay".into()),
        }),
    )
    .unwrap();
    let mut fab = small("f");
    fab.tenant_name = "fabrikam".into();
    s.send(&[small("c"), fab]).await.unwrap();
    let body = String::from_utf8(r.event_requests()[0].body.clone()).unwrap();
    let contoso = envelope("c").replace(r#","fields""#, r#","index":"defender","fields""#);
    let fabrikam = concat!(
        r#"{"time":1697795647.503333,"host":"fabrikam-relay","source":"mssp:fabrikam","#,
        r#""sourcetype":"defender:alerts","index":"cust_fabrikam","#,
        r#""fields":{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"fabrikam","stream":"alerts","feed":"graph_alerts"},"#,
        r#""event":{"id":"f"}}"#
    );
    assert_eq!(body, format!("{contoso}{fabrikam}"));

    // Removing the overrides sends the tenant to the sink's index again.
    s.set_tenant_overrides("fabrikam", None).unwrap();
    let mut fab = small("g");
    fab.tenant_name = "fabrikam".into();
    s.send(&[fab]).await.unwrap();
    assert_eq!(r.events()[2].envelope["index"], "defender");
}

/// A reload changes a tenant's labels through the handle while a worker task owns the sink:
/// the next batch carries them; a bad override is refused by `check` and `set` alike and
/// changes nothing.
#[tokio::test]
async fn labels_handle_changes_a_running_sinks_tenant_labels() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut c = config(&r);
    c.options.index = Some(Template::parse("defender").unwrap());
    let s = sink(c);
    let labels = s.labels().unwrap();
    assert_eq!(labels.sink(), s.name());
    type Job = (Vec<Event>, tokio::sync::oneshot::Sender<()>);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(1);
    let worker = tokio::spawn(async move {
        let mut s = s;
        while let Some((batch, done)) = rx.recv().await {
            s.send(&batch).await.unwrap();
            done.send(()).unwrap();
        }
    });
    let send = |batch: Vec<Event>| {
        let tx = tx.clone();
        async move {
            let (done, sent) = tokio::sync::oneshot::channel();
            tx.send((batch, done)).await.unwrap();
            sent.await.unwrap();
        }
    };
    let fab = |id: &str| {
        let mut e = small(id);
        e.tenant_name = "fabrikam".into();
        e
    };
    send(vec![fab("before")]).await;
    let bad = relay_config::HecOverrides {
        source: Some("x{".into()),
        ..Default::default()
    };
    let err = labels
        .check("fabrikam", Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tenant fabrikam: sink_overrides."), "{err}");
    assert!(labels.set("fabrikam", Some(&bad)).is_err());
    let good = relay_config::HecOverrides {
        index: Some("cust_{tenant}".into()),
        ..Default::default()
    };
    labels.check("fabrikam", Some(&good)).unwrap();
    labels.set("fabrikam", Some(&good)).unwrap();
    send(vec![fab("after"), small("other")]).await;
    labels.set("fabrikam", None).unwrap();
    send(vec![fab("removed")]).await;
    drop(tx);
    worker.await.unwrap();
    let index_of: std::collections::HashMap<String, String> = r
        .events()
        .iter()
        .map(|e| {
            (
                e.envelope["event"]["id"].as_str().unwrap().to_string(),
                e.envelope["index"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(index_of["before"], "defender");
    assert_eq!(index_of["after"], "cust_fabrikam");
    assert_eq!(index_of["other"], "defender");
    assert_eq!(index_of["removed"], "defender");
}

/// Every row of the status table through the wire: canned answers from the receiver, the
/// sink's decision as the worker sees it (`is_transient`).
#[tokio::test]
async fn every_status_gets_the_documented_retry_decision() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    let cases: &[(u16, &str, bool)] = &[
        (403, r#"{"text":"Token disabled","code":1}"#, false),
        (401, r#"{"text":"Token is required","code":2}"#, false),
        (401, r#"{"text":"Invalid authorization","code":3}"#, false),
        (403, r#"{"text":"Invalid token","code":4}"#, false),
        (400, r#"{"text":"No data","code":5}"#, false),
        (
            400,
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":0}"#,
            false,
        ),
        (
            400,
            r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#,
            false,
        ),
        (500, r#"{"text":"Internal server error","code":8}"#, true),
        (503, r#"{"text":"Server is busy","code":9}"#, true),
        (
            400,
            r#"{"text":"Data channel is missing","code":10}"#,
            false,
        ),
        (400, r#"{"text":"Invalid data channel","code":11}"#, false),
        (
            400,
            r#"{"text":"Event field is required","code":12}"#,
            false,
        ),
        (
            400,
            r#"{"text":"Event field cannot be blank","code":13}"#,
            false,
        ),
        (400, r#"{"text":"ACK is disabled","code":14}"#, false),
        (
            400,
            r#"{"text":"Error in handling indexed fields","code":15}"#,
            false,
        ),
        (
            400,
            r#"{"text":"Query string authorization is not enabled","code":16}"#,
            false,
        ),
        (
            503,
            r#"{"text":"HEC is unhealthy, queues are full","code":18}"#,
            true,
        ),
        (429, "Too Many Requests", true),
        (408, "", true),
        (502, "<html>Bad Gateway</html>", true),
        (504, "", true),
        (501, "", false),
        (404, "", false),
        (413, "", false),
        (307, "", false),
    ];
    for &(status, body, transient) in cases {
        r.push_reply(status, body);
        let err = s.send(&[small("x")]).await.unwrap_err();
        assert_eq!(
            err.is_transient(),
            transient,
            "HTTP {status} {body}: {}",
            chain(&err)
        );
        let text = chain(&err);
        assert!(text.contains(&format!("HTTP {status}")), "{text}");
        assert!(text.contains(&r.url().to_string()), "{text}");
        if transient {
            assert!(matches!(hec_source(&err), HecUnavailable::Busy(_)));
        } else {
            assert!(matches!(err, SinkError::Rejected { .. }), "{err:?}");
        }
    }
    // After all of that the sink works: nothing sticky.
    s.send(&[small("ok")]).await.unwrap();
    assert_eq!(r.events().len(), 1);
}

#[tokio::test]
async fn bad_token_is_permanent_and_names_sink_and_url_but_not_the_token() {
    let r = HecReceiver::start_default().await.unwrap();
    let token = "wrong-token-VALUE-5f3e";
    let mut c = config(&r);
    c.token = Secret::new(token);
    let mut s = sink(c);
    let err = s.send(&[small("a")]).await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.sink(), SINK);
    assert_eq!(
        err.to_string(),
        format!(
            "sink splunk: {}services/collector/event rejected the batch: HTTP 403, HEC code 4 \
             \"Invalid token\": Splunk does not know this token; check the sink's `token`",
            r.url()
        )
    );
    for shown in [chain(&err), format!("{err:?}"), format!("{s:?}")] {
        assert!(!shown.contains(token), "token leaked: {shown}");
        assert!(!shown.contains("5f3e"), "token leaked: {shown}");
    }
    assert!(r.events().is_empty());

    // The health check finds it too (code 21 on the health endpoint).
    let err = s.healthcheck().await.unwrap_err();
    assert!(!err.is_transient());
    assert!(chain(&err).contains("HEC code 21"), "{}", chain(&err));
}

#[tokio::test]
async fn disabled_token_is_permanent() {
    let r = HecReceiver::start(HecReceiverConfig {
        disabled_tokens: vec!["disabled-token".into()],
        ..HecReceiverConfig::default()
    })
    .await
    .unwrap();
    let mut c = config(&r);
    c.token = Secret::new("disabled-token");
    let mut s = sink(c);
    let err = s.send(&[small("a")]).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        chain(&err).contains("HEC code 1 \"Token disabled\""),
        "{err}"
    );
    let err = s.healthcheck().await.unwrap_err();
    assert!(chain(&err).contains("HEC code 22"), "{err}");
}

#[tokio::test]
async fn incorrect_index_names_the_event_hec_pointed_at() {
    let r = HecReceiver::start(HecReceiverConfig {
        allowed_indexes: Some(vec!["defender".into()]),
        ..HecReceiverConfig::default()
    })
    .await
    .unwrap();
    let mut c = config(&r);
    c.options.index = Some(Template::parse("defender").unwrap());
    let mut s = sink(c);
    s.set_tenant_overrides(
        "fabrikam",
        Some(&relay_config::HecOverrides {
            index: Some("cust_fabrikam".into()),
            ..Default::default()
        }),
    )
    .unwrap();
    let mut fab = small("fab-1");
    fab.tenant_name = "fabrikam".into();
    fab.id = "fab-1".into();
    let err = s.send(&[small("a"), fab]).await.unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("HTTP 400, HEC code 7 \"Incorrect index\""),
        "{text}"
    );
    assert!(
        text.contains(
            "(event 1 of 2 in the request: tenant fabrikam, alerts fab-1 version \
             2023-10-20T09:54:07.503333300+00:00)"
        ),
        "{text}"
    );
    assert!(
        r.events().is_empty(),
        "the strict receiver keeps nothing of a bad request"
    );
}

#[tokio::test]
async fn busy_period_is_transient_then_the_same_batch_succeeds() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    r.set_busy(2);
    let batch = [small("a"), small("b")];
    for _ in 0..2 {
        let err = s.send(&batch).await.unwrap_err();
        assert!(err.is_transient());
        assert!(
            chain(&err).contains("HTTP 503, HEC code 9 \"Server is busy\""),
            "{}",
            chain(&err)
        );
    }
    s.send(&batch).await.unwrap();
    assert_eq!(r.events().len(), 2, "busy answers kept nothing");
}

#[tokio::test]
async fn receiver_down_is_transient_and_recovery_on_the_same_port_works() {
    let mut r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    s.send(&[small("before")]).await.unwrap();
    r.stop().await;

    let err = s.send(&[small("during")]).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(hec_source(&err), HecUnavailable::Transport(_)));
    assert!(chain(&err).contains("onnect"), "{}", chain(&err));
    let err = s.healthcheck().await.unwrap_err();
    assert!(err.is_transient());

    r.restart().await.unwrap();
    s.healthcheck().await.unwrap();
    s.send(&[small("during")]).await.unwrap();
    let ids: Vec<_> = r
        .events()
        .iter()
        .map(|e| e.envelope["event"]["id"].clone())
        .collect();
    assert_eq!(ids, ["before", "during"]);
}

#[tokio::test]
async fn no_answer_within_the_request_timeout_is_transient() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut c = SplunkHecSinkConfig::new(
        SINK,
        format!("http://{addr}").parse().unwrap(),
        Secret::new(DEFAULT_TOKEN),
    );
    c.request_timeout = Duration::from_millis(300);
    let mut s = sink(c);
    let started = std::time::Instant::now();
    let err = s.send(&[small("a")]).await.unwrap_err();
    assert!(err.is_transient());
    assert!(matches!(hec_source(&err), HecUnavailable::Timeout(_)));
    assert!(
        chain(&err).contains("no answer within 300ms"),
        "{}",
        chain(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn healthcheck_reports_health_and_busy_health() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = sink(config(&r));
    s.healthcheck().await.unwrap();
    r.set_unhealthy(true);
    let err = s.healthcheck().await.unwrap_err();
    assert!(err.is_transient());
    assert!(chain(&err).contains("HEC code 18"), "{}", chain(&err));
    let health: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| q.path == "/services/collector/health")
        .collect();
    assert_eq!(health.len(), 2);
    assert_eq!(health[0].method, "GET");
    assert!(r.events().is_empty(), "a healthcheck sends no events");
}

#[tokio::test]
async fn indexer_ack_returns_ok_only_once_acknowledged() {
    let r = ack_receiver().await;
    r.set_ack_mode(AckMode::AfterQueries(2));
    let channel = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let mut c = ack_config(&r, Duration::from_secs(10));
    c.indexer_ack.channel = Some(channel.into());
    c.gzip = true;
    let mut s = sink(c);
    assert_eq!(s.channel(), channel);
    s.healthcheck().await.unwrap();
    s.send(&[small("a")]).await.unwrap();
    s.send(&[small("b")]).await.unwrap();

    // Two false answers, then true, per batch (plus the health probe).
    assert_eq!(r.ack_queries(), 1 + 3 + 3);
    let acks: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| q.path == "/services/collector/ack")
        .collect();
    assert_eq!(acks[0].body, br#"{"acks":[]}"#);
    assert_eq!(acks[1].body, br#"{"acks":[0]}"#);
    assert_eq!(acks[1].reply, r#"{"acks":{"0":false}}"#);
    assert_eq!(acks[3].reply, r#"{"acks":{"0":true}}"#);
    assert_eq!(acks[4].body, br#"{"acks":[1]}"#);
    assert!(acks
        .iter()
        .all(|q| q.channel.as_deref() == Some(channel)
            && q.content_encoding.as_deref() == Some("gzip")));
    let events = r.events();
    assert_eq!(
        events.iter().map(|e| e.ack_id).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    assert!(events.iter().all(|e| e.channel.as_deref() == Some(channel)));
}

#[tokio::test]
async fn a_batch_in_several_requests_waits_for_every_ack() {
    let r = ack_receiver().await;
    let mut c = ack_config(&r, Duration::from_secs(10));
    c.batch.max_bytes = envelope("0").len();
    let mut s = sink(c);
    s.send(&[small("0"), small("1"), small("2")]).await.unwrap();
    let acks: Vec<_> = r
        .requests()
        .into_iter()
        .filter(|q| q.path == "/services/collector/ack")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].body, br#"{"acks":[0,1,2]}"#);
}

#[tokio::test]
async fn unacknowledged_batch_times_out_as_transient_and_is_resent() {
    let r = ack_receiver().await;
    r.set_ack_mode(AckMode::Never);
    let mut s = sink(ack_config(&r, Duration::from_millis(400)));
    let started = std::time::Instant::now();
    let err = s.send(&[small("a")]).await.unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(
            hec_source(&err),
            HecUnavailable::AckTimeout {
                pending: 1,
                total: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(
        chain(&err).contains("/services/collector/ack"),
        "{}",
        chain(&err)
    );

    // The worker sends the same batch again; now the indexers keep up.
    r.set_ack_mode(AckMode::Immediate);
    s.send(&[small("a")]).await.unwrap();
    let events = r.events();
    assert_eq!(
        events.len(),
        2,
        "the resent event arrives twice: at-least-once"
    );
    assert_eq!(events[0].envelope, events[1].envelope);
    assert_eq!(
        events.iter().map(|e| e.ack_id).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
}

/// A request the indexers lost is never reported; once later batches were confirmed and it
/// waited `LOST_AFTER_MIN`, it is given up as lost long before the configured 300 s, while
/// the batch after it is confirmed at once.
#[tokio::test]
async fn a_batch_overtaken_by_later_acknowledgements_is_given_up_before_its_timeout() {
    let r = ack_receiver().await;
    r.set_ack_mode(AckMode::NeverNth(1));
    let mut s = sink(ack_config(&r, Duration::from_secs(300)));
    let started = std::time::Instant::now();
    let lost = s.submit(&[small("lost")]).await.unwrap();
    s.submit(&[small("next")])
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), lost.confirmed())
        .await
        .expect("given up before the 300 s timeout")
        .unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_transient() && !err.is_push_back(), "{err:?}");
    assert!(
        matches!(hec_source(&err), HecUnavailable::AckOvertaken { .. }),
        "{err:?}"
    );
    assert!(waited >= super::ack::LOST_AFTER_MIN, "{waited:?}");
}

/// While nothing is confirmed (the ack endpoint busy), a pending id is not overtaken: it
/// waits, and is confirmed once the endpoint answers again.
#[tokio::test]
async fn nothing_is_given_up_as_lost_while_no_acknowledgement_comes() {
    let r = ack_receiver().await;
    let mut s = sink(ack_config(&r, Duration::from_secs(300)));
    // One confirmed batch first, so that the tracker knows the usual (short) time.
    s.send(&[small("first")]).await.unwrap();
    r.set_ack_busy(usize::MAX);
    let pending = s.submit(&[small("pending")]).await.unwrap();
    tokio::time::sleep(super::ack::LOST_AFTER_MIN + Duration::from_secs(1)).await;
    r.set_ack_busy(0);
    tokio::time::timeout(Duration::from_secs(10), pending.confirmed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.events().len(), 2, "first and pending, nothing twice");
}

#[tokio::test]
async fn ack_ids_lost_in_a_receiver_restart_mean_a_resend() {
    let mut r = ack_receiver().await;
    r.set_ack_mode(AckMode::AfterQueries(1_000));
    let mut s = sink(ack_config(&r, Duration::from_secs(1)));
    let batch = [small("a")];
    let send = s.send(&batch);
    let restart = async {
        // Restart once HEC took the batch, while the sink waits for its ack.
        while r.events().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.restart().await.unwrap();
    };
    let (result, ()) = tokio::join!(send, restart);
    let err = result.unwrap_err();
    assert!(err.is_transient());
    assert!(matches!(
        hec_source(&err),
        HecUnavailable::AckTimeout { .. }
    ));
}

#[tokio::test]
async fn ack_on_a_token_without_ack_is_a_clear_permanent_error() {
    let r = HecReceiver::start_default().await.unwrap(); // token without useACK
    let mut s = sink(ack_config(&r, Duration::from_secs(10)));

    let err = s.healthcheck().await.unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("services/collector/ack"), "{text}");
    assert!(text.contains("HEC code 14 \"ACK is disabled\""), "{text}");
    assert!(text.contains("indexer_ack.enabled"), "{text}");

    let err = s.send(&[small("a")]).await.unwrap_err();
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("HTTP 200"), "{text}");
    assert!(text.contains("without an ackId"), "{text}");
    assert!(
        text.contains("useACK") && text.contains("indexer_ack.enabled = false"),
        "{text}"
    );
}

#[tokio::test]
async fn anysink_dispatches_to_hec() {
    let r = HecReceiver::start_default().await.unwrap();
    let mut s = AnySink::from(sink(config(&r)));
    assert_eq!(s.kind(), "splunk_hec");
    assert_eq!(s.name(), SINK);
    assert_eq!(s.batch_limits().max_events, 500);
    assert_eq!(s.batch_limits().max_bytes, 1_000_000);
    s.healthcheck().await.unwrap();
    s.send(&[small("a")]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(r.events().len(), 1);
}

#[test]
fn invalid_settings_are_all_reported() {
    let mut c = SplunkHecSinkConfig::new(
        SINK,
        "ftp://user:pw@splunk.example/?x=1".parse().unwrap(),
        Secret::new(" "),
    );
    c.batch.max_events = 0;
    c.indexer_ack.channel = Some("not-a-guid".into());
    c.tls.client_key = Some(Secret::new("key"));
    let err = SplunkHecSink::new(c).unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "sink splunk: invalid configuration: url: scheme \"ftp\" is not http or https; \
         url: must not contain a user name or password; \
         url: must not have a query string or fragment; token: must not be empty; \
         batch.max_events: must be at least 1; indexer_ack.channel: \"not-a-guid\" is not a \
         GUID; tls: client_cert_file and client_key must be set together"
    );
}

#[test]
fn base_url_path_prefix_is_kept() {
    let c = SplunkHecSinkConfig::new(
        SINK,
        "https://proxy.example/splunk".parse().unwrap(),
        Secret::new("t"),
    );
    let s = SplunkHecSink::new(c).unwrap();
    assert_eq!(
        s.event_url().as_str(),
        "https://proxy.example/splunk/services/collector/event"
    );
    // A generated channel is a GUID.
    assert!(uuid::Uuid::parse_str(s.channel()).is_ok());
}

mod from_config {
    use super::*;
    use std::collections::HashMap;

    const TENANT_ID: &str = "6b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61";

    fn load(relay_extra: &str, overrides: &str) -> Result<SplunkHecSinkConfig, SinkError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("relay.toml"),
            format!(
                r#"
[state]
path = "state.db"
key = {{ env = "STATE_KEY" }}

[sinks.splunk]
type = "splunk_hec"
url = "https://splunk.example:8088"
token = {{ env = "HEC_TOKEN" }}
{relay_extra}
"#
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
        std::fs::write(
            dir.path().join("tenants.d/contoso.toml"),
            format!(
                r#"
tenant_id = "{TENANT_ID}"
sinks = ["splunk"]

[auth]
kind = "client_secret"
client_id = "0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"
client_secret = {{ env = "CONTOSO_SECRET" }}

{overrides}
"#
            ),
        )
        .unwrap();
        let env: HashMap<String, String> = [
            ("STATE_KEY", "state-key-VALUE"),
            ("HEC_TOKEN", "hec-token-VALUE"),
            ("CONTOSO_SECRET", "secret-VALUE"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = relay_config::load(&relay_config::LoadOptions::new(
            dir.path().join("relay.toml"),
            &env,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let Some(relay_config::SinkConfig::SplunkHec(hec)) = config.sinks.get("splunk") else {
            panic!("no hec sink");
        };
        SplunkHecSinkConfig::from_config("splunk", hec, &config.tenants)
    }

    #[test]
    fn defaults_leave_labels_to_the_feed() {
        let c = load("", "").unwrap();
        assert_eq!(c.token.expose(), "hec-token-VALUE");
        assert!(c.options.source.is_none());
        assert!(c.options.sourcetype_incidents.is_none());
        assert!(c.options.sourcetype_alerts.is_none());
        assert!(c.options.index.is_none());
        assert!(c.tenant_options.is_empty());
        assert!(c.gzip);
        assert_eq!(c.gzip_level, relay_config::DEFAULT_GZIP_LEVEL);
        assert!(!c.indexer_ack.enabled);
        assert_eq!(c.batch.max_events, 500);
        let s = SplunkHecSink::new(c).unwrap();
        assert_eq!(s.batch_limits().linger, Duration::from_millis(1000));
    }

    #[test]
    fn sink_settings_and_tenant_overrides_are_mapped() {
        let c = load(
            "index = \"defender\"\nsourcetypes = { alerts = \"defender:alert\" }\n\
             host = \"relay01\"\n[sinks.splunk.indexer_ack]\nenabled = true\n\
             channel = \"0f8fad5b-d9cb-469f-a165-70867728950e\"\n",
            "[sink_overrides.splunk]\nindex = \"cust_{tenant}\"\nsourcetype = \"x:{stream}\"\n",
        )
        .unwrap();
        assert_eq!(c.options.index.as_ref().unwrap().as_str(), "defender");
        assert_eq!(
            c.options.sourcetype_alerts.as_ref().unwrap().as_str(),
            "defender:alert"
        );
        assert!(c.options.sourcetype_incidents.is_none());
        assert_eq!(c.options.host.as_deref(), Some("relay01"));
        assert!(c.indexer_ack.enabled);
        let t = &c.tenant_options["contoso"];
        assert_eq!(t.index.as_ref().unwrap().as_str(), "cust_{tenant}");
        assert_eq!(
            t.sourcetype_incidents.as_ref().unwrap().as_str(),
            "x:{stream}"
        );
        assert_eq!(t.sourcetype_alerts.as_ref().unwrap().as_str(), "x:{stream}");
        assert_eq!(
            t.host.as_deref(),
            Some("relay01"),
            "unset keys keep the sink's"
        );
        let s = SplunkHecSink::new(c).unwrap();
        assert_eq!(s.channel(), "0f8fad5b-d9cb-469f-a165-70867728950e");
    }

    #[test]
    fn bad_templates_name_file_and_key() {
        let err = load(
            "index = \"defender_{customer}\"\n",
            "[sink_overrides.splunk]\nsource = \"x{\"\n",
        )
        .unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains(
                "relay.toml: sinks.splunk.index: template \"defender_{customer}\": unknown \
                 placeholder {customer}"
            ),
            "{text}"
        );
        assert!(
            text.contains("tenants.d/contoso.toml: sink_overrides.splunk.source: template \"x{\""),
            "{text}"
        );
    }
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `san`, issued by `ca`: (cert PEM, key PEM).
    fn leaf(ca: &Ca, san: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, san);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    async fn tls_receiver(ca: &Ca, client_ca: Option<&Ca>) -> HecReceiver {
        let (cert_chain_pem, key_pem) = leaf(ca, "127.0.0.1");
        HecReceiver::start(HecReceiverConfig {
            tls: Some(ReceiverTls {
                cert_chain_pem,
                key_pem,
                client_ca_pem: client_ca.map(|c| c.pem.clone()),
            }),
            ..HecReceiverConfig::default()
        })
        .await
        .unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, pem: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    #[tokio::test]
    async fn custom_ca_is_trusted_and_gzip_works_over_tls() {
        let ca = ca("relay test CA");
        let r = tls_receiver(&ca, None).await;
        assert_eq!(r.url().scheme(), "https");
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&r);
        c.gzip = true;
        c.tls.ca_file = Some(write(&dir, "ca.pem", &ca.pem));
        let mut s = sink(c);
        s.healthcheck().await.unwrap();
        s.send(&[small("a")]).await.unwrap();
        assert_eq!(r.events().len(), 1);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_fails_verification() {
        let r = tls_receiver(&ca("the server's CA"), None).await;
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&r);
        c.tls.ca_file = Some(write(&dir, "ca.pem", &ca("some other CA").pem));
        let mut s = sink(c);
        let err = s.send(&[small("a")]).await.unwrap_err();
        // A handshake failure is the destination being unreachable: transient, as the
        // server's certificate may be mid-rotation; the chain says why.
        assert!(err.is_transient());
        assert!(matches!(hec_source(&err), HecUnavailable::Transport(_)));
        let text = chain(&err);
        assert!(text.contains("certificate"), "{text}");
        assert!(r.events().is_empty());

        // The built-in roots do not know a private CA either.
        let mut s = sink(config(&r));
        assert!(s.send(&[small("a")]).await.unwrap_err().is_transient());
        assert!(r.events().is_empty());
    }

    #[tokio::test]
    async fn verify_false_accepts_any_certificate() {
        let r = tls_receiver(&ca("unknown CA"), None).await;
        let mut c = config(&r);
        c.tls.verify = false;
        let mut s = sink(c);
        s.send(&[small("a")]).await.unwrap();
        assert_eq!(r.events().len(), 1);
    }

    #[tokio::test]
    async fn client_certificate_for_mutual_tls() {
        let server_ca = ca("server CA");
        let client_ca = ca("client CA");
        let r = tls_receiver(&server_ca, Some(&client_ca)).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write(&dir, "ca.pem", &server_ca.pem);

        let mut c = config(&r);
        c.tls.ca_file = Some(ca_file.clone());
        let mut without = sink(c.clone());
        let err = without.send(&[small("a")]).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");

        let (cert, key) = leaf(&client_ca, "xdr-relay");
        c.tls.client_cert_file = Some(write(&dir, "client.pem", &cert));
        c.tls.client_key = Some(Secret::new(key));
        let mut with = sink(c);
        with.send(&[small("a")]).await.unwrap();
        assert_eq!(r.events().len(), 1);
    }

    #[test]
    fn unreadable_or_empty_ca_file_is_reported_at_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SplunkHecSinkConfig::new(
            SINK,
            "https://splunk.example:8088".parse().unwrap(),
            Secret::new("t"),
        );
        c.tls.ca_file = Some(dir.path().join("missing.pem"));
        let err = SplunkHecSink::new(c.clone()).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("missing.pem"), "{err}");

        c.tls.ca_file = Some(write(&dir, "empty.pem", "no certificates here\n"));
        let err = SplunkHecSink::new(c).unwrap_err();
        assert!(err.to_string().contains("tls.ca_file"), "{err}");
    }
}
