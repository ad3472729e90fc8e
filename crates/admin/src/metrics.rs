//! `/metrics`: the relay's live status, rendered at scrape time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use relay_pipeline::{RelayStatus, SinkState};
use relay_state::AuthState;

use crate::exposition::{Exposition, MetricType};
use crate::health::Expiry;

/// Every series of one scrape. `credentials` is the credential watcher's latest result;
/// `poll_intervals` the configured interval per tenant (for "quiet for N intervals").
pub fn render(
    status: &RelayStatus,
    credentials: &[Expiry],
    poll_intervals: &BTreeMap<String, Duration>,
) -> String {
    use MetricType::{Counter, Gauge, Histogram};
    let now = status.taken_at;
    let mut e = Exposition::new();

    e.family(
        "xdr_relay_start_time_seconds",
        Gauge,
        "When the relay was built, Unix seconds.",
    )
    .sample(&[], unix(status.started_at));

    // The engine's shared parts: requests in flight across all tenants, and the state
    // store's commits (an idle poll must add commits but no synced commit).
    let g = &status.engine;
    for (name, kind, help, value) in [
        (
            "xdr_relay_api_requests_in_flight",
            Gauge,
            "API requests holding an admission slot now (on the wire, or their page not yet \
             committed), across all tenants.",
            g.requests_in_flight,
        ),
        (
            "xdr_relay_api_request_limit",
            Gauge,
            "The adaptive limit of API requests in flight (grows while answers are prompt, cut \
             on timeouts, 5xx and slow answers; ceiling [http] max_requests_in_flight).",
            g.request_limit,
        ),
        (
            "xdr_relay_api_requests_waiting",
            Gauge,
            "API requests waiting for an admission slot now.",
            g.requests_waiting,
        ),
        (
            "xdr_relay_api_request_limit_cuts_total",
            Counter,
            "Times the adaptive limit of API requests in flight was cut.",
            g.request_limit_cuts,
        ),
        (
            "xdr_relay_state_commits_total",
            Counter,
            "State-store transactions committed (a group commit of many writes counts once).",
            g.state_commits,
        ),
        (
            "xdr_relay_state_synced_commits_total",
            Counter,
            "State-store commits synced to disk before returning (rotated refresh tokens).",
            g.state_synced_commits,
        ),
        (
            "xdr_relay_state_segment_syncs_total",
            Counter,
            "Syncs of outbox segment files (one per commit that appended events).",
            g.state_segment_syncs,
        ),
        (
            "xdr_relay_state_writes_total",
            Counter,
            "Writes (poll commits, poll outcomes, acks, auth states) carried by group commits.",
            g.state_grouped_writes,
        ),
    ] {
        e.family(name, kind, help).sample(&[], value as f64);
    }
    let families = [
        relay_defender::ApiFamily::M365d,
        relay_defender::ApiFamily::Mde,
        relay_defender::ApiFamily::Graph,
    ];
    {
        let mut f = e.family(
            "xdr_relay_api_quota_headroom_ratio",
            Gauge,
            "Room left in the API quotas, 1 (idle) to 0 (at the limit): scope app is the budget \
             all tenants share (Graph), tightest_tenant the tenant closest to its own quota (0 \
             while one waits out a Retry-After).",
        );
        for family in families {
            let h = &g.quota[family.index()];
            for (scope, room) in [("app", h.app), ("tightest_tenant", h.tightest_tenant)] {
                if let Some(room) = room {
                    f.sample(&[("api", family.as_str()), ("scope", scope)], room);
                }
            }
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_api_quota_learned_total",
            Counter,
            "Tenant quotas lowered because a 429 stated a lower quota than the relay kept to.",
        );
        for family in families {
            f.sample(
                &[("api", family.as_str())],
                g.quota[family.index()].learned as f64,
            );
        }
    }

    if !status.actions.is_empty() {
        let mut f = e.family(
            "xdr_relay_playbook_actions_total",
            Counter,
            "Playbook audit events since start, by outcome (would_act, limited, \
             awaiting_approval, approved, denied, sent, succeeded, failed).",
        );
        for (outcome, n) in &status.actions {
            f.sample(&[("outcome", outcome.as_str())], *n as f64);
        }
    }

    // Per (tenant, stream). A tenant reads each stream through one feed, so the pair is
    // unique and the feed name need not be a label.
    {
        let mut f = e.family(
            "xdr_relay_polls_total",
            Counter,
            "Polls that ran, by outcome (success or failure); skipped polls are not counted.",
        );
        for x in &status.feeds {
            let failed = x.errors.total();
            let ok = x.polls.saturating_sub(failed);
            let (t, s) = (x.tenant.as_str(), x.stream.as_str());
            f.sample(
                &[("tenant", t), ("stream", s), ("outcome", "success")],
                ok as f64,
            );
            f.sample(
                &[("tenant", t), ("stream", s), ("outcome", "failure")],
                failed as f64,
            );
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_poll_errors_total",
            Counter,
            "Failed polls by what the operator should make of them: transient (throttling \
             incl. 429 quota exhausted, timeouts, 5xx; retried), needs_consent (grant or \
             consent revoked), permanent (retrying will not help), state (state store failed).",
        );
        for x in &status.feeds {
            let (t, s) = (x.tenant.as_str(), x.stream.as_str());
            for (outcome, n) in [
                ("transient", x.errors.transient),
                ("needs_consent", x.errors.needs_consent),
                ("permanent", x.errors.permanent),
                ("state", x.errors.state),
            ] {
                f.sample(
                    &[("tenant", t), ("stream", s), ("outcome", outcome)],
                    n as f64,
                );
            }
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_polls_skipped_total",
            Counter,
            "Polls skipped, by reason: outbox_full (a sink the tenant routes to is at its \
             outbox bound; nothing is dropped, polling resumes when it drains).",
        );
        for x in &status.feeds {
            f.sample(
                &[
                    ("tenant", x.tenant.as_str()),
                    ("stream", x.stream.as_str()),
                    ("outcome", "outbox_full"),
                ],
                x.skipped_outbox_full as f64,
            );
        }
    }
    per_feed(
        &mut e,
        status,
        "xdr_relay_throttled_total",
        Counter,
        "HTTP 429 answers from the Defender or Graph API, counted as they arrive: most are \
         waited out and retried within the poll, which then succeeds; a poll that gives up \
         counts once more in xdr_relay_poll_errors_total{outcome=\"transient\"}.",
        |x| Some(x.throttled as f64),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_throttled_wait_seconds_total",
        Counter,
        "The waits those 429s imposed on the tenant's API (Retry-After, or the client's \
         backoff when absent), summed per answer.",
        |x| Some(x.throttled_wait.as_secs_f64()),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_items_total",
        Counter,
        "New incident/alert versions committed to the outboxes.",
        |x| Some(x.events as f64),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_duplicate_items_total",
        Counter,
        "Versions the API returned again that were already delivered (overlap re-scan, page \
         ties); dropped.",
        |x| Some(x.duplicates_skipped as f64),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_lag_seconds",
        Gauge,
        "How far behind the stream is: now minus the committed checkpoint (includes the \
         configured availability lag). Absent until the first checkpoint.",
        |x| x.lag.map(|d| d.as_secs_f64()),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_last_poll_timestamp_seconds",
        Gauge,
        "When the last poll ended (success or failure), Unix seconds. Absent before the first.",
        |x| x.last_poll.map(unix),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_last_success_timestamp_seconds",
        Gauge,
        "When a poll last succeeded, Unix seconds. Absent before the first success.",
        |x| x.last_success.map(unix),
    );
    per_feed(
        &mut e,
        status,
        "xdr_relay_poll_interval_seconds",
        Gauge,
        "The configured poll interval.",
        |x| poll_intervals.get(&x.tenant).map(Duration::as_secs_f64),
    );

    {
        let mut f = e.family(
            "xdr_relay_auth_state",
            Gauge,
            "1 for the tenant's current sign-in state (ok, needs_consent, failing), 0 for the \
             others; all 0 before the first token request.",
        );
        for t in &status.tenants {
            let current = match &t.auth {
                None => None,
                Some(AuthState::Ok { .. }) => Some("ok"),
                Some(AuthState::NeedsConsent { .. }) => Some("needs_consent"),
                Some(AuthState::Failing { .. }) => Some("failing"),
            };
            for state in ["ok", "needs_consent", "failing"] {
                f.sample(
                    &[("tenant", t.name.as_str()), ("state", state)],
                    if current == Some(state) { 1.0 } else { 0.0 },
                );
            }
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_auth_next_probe_timestamp_seconds",
            Gauge,
            "When the token endpoint is next asked for a tenant that needs consent or whose \
             token requests fail, Unix seconds; polling resumes by itself once a probe gets a \
             token. Absent while the tenant is ok.",
        );
        for t in &status.tenants {
            let next = match &t.auth {
                Some(AuthState::NeedsConsent { next_probe, .. })
                | Some(AuthState::Failing { next_probe, .. }) => *next_probe,
                _ => None,
            };
            if let Some(at) = next {
                f.sample(&[("tenant", t.name.as_str())], unix(at));
            }
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_token_refreshes_total",
            Counter,
            "Token requests to Entra ID per tenant and API audience, by outcome: ok (token \
             issued), failed (Entra or the network failing, or the credential refused), \
             needs_consent (grant or consent gone, probes included). Tokens served from \
             the cache are not requests; an audience appears with its first request.",
        );
        for t in &status.tenants {
            for c in &t.token_refreshes {
                for (outcome, n) in [
                    ("ok", c.ok),
                    ("failed", c.failed),
                    ("needs_consent", c.needs_consent),
                ] {
                    f.sample(
                        &[
                            ("tenant", t.name.as_str()),
                            ("audience", c.audience.as_str()),
                            ("outcome", outcome),
                        ],
                        n as f64,
                    );
                }
            }
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_credential_expiry_seconds",
            Gauge,
            "Seconds until the credential lapses (negative: lapsed): client_secret \
             (auth.client_secret_expires), certificate (notAfter), refresh_token (last saved \
             + 90 days of inactivity). Warnings start 14 days ahead.",
        );
        for x in credentials {
            let left = (x.expires_at - now).num_milliseconds() as f64 / 1_000.0;
            f.sample(
                &[("tenant", x.tenant.as_str()), ("kind", x.kind.as_str())],
                left,
            );
        }
    }

    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_events_sent_total",
        Counter,
        "Events the destination acknowledged.",
        |s| Some(s.sent as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_failures_total",
        Counter,
        "Failed deliveries (each retried; a permanent one stops the sink until its long retry).",
        |s| Some(s.failures as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_undecodable_events_total",
        Counter,
        "Outbox rows that could not be decoded and were skipped (never expected).",
        |s| Some(s.undecodable as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_outbox_events",
        Gauge,
        "Events waiting in the sink's durable outbox.",
        |s| Some(s.outbox.rows as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_outbox_bytes",
        Gauge,
        "Payload bytes waiting in the sink's outbox.",
        |s| Some(s.outbox.bytes as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_outbox_oldest_age_seconds",
        Gauge,
        "Age of the oldest event waiting in the outbox (the sink's delivery lag); 0 when empty.",
        |s| {
            Some(s.outbox.oldest_enqueued.map_or(0.0, |t| {
                ((now - t).num_milliseconds().max(0) as f64) / 1_000.0
            }))
        },
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_outbox_full",
        Gauge,
        "1 while the outbox is at its bound and polling of the tenants routed to it is paused.",
        |s| Some(if s.outbox.over_limit { 1.0 } else { 0.0 }),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_in_flight_batches",
        Gauge,
        "Batches handed to the sink and awaiting the destination's confirmation (HEC indexer \
         ack), failed ones waiting to be sent again included.",
        |s| Some(s.in_flight as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_in_flight_limit_batches",
        Gauge,
        "How many batches may be in flight now: the adaptive window (halved when the \
         destination pushes back, grown while confirmations keep their pace), at most the \
         sink's max_in_flight.",
        |s| Some(s.in_flight_limit as f64),
    );
    per_sink(
        &mut e,
        status,
        "xdr_relay_sink_last_delivery_timestamp_seconds",
        Gauge,
        "When the destination last acknowledged events, Unix seconds. Absent before the first.",
        |s| s.last_delivery.map(unix),
    );
    // A histogram rather than a summary: bucket counts add up across sinks and relay
    // instances and `histogram_quantile` gives any quantile at query time, whereas a
    // summary's quantiles are fixed in-process and cannot be aggregated. Fixed buckets also
    // keep the hot path to one search and three additions under the lock the worker takes
    // per batch anyway.
    {
        let mut f = e.family(
            "xdr_relay_sink_ack_latency_seconds",
            Histogram,
            "How long the destination took to acknowledge a delivered batch, from the start \
             of the send to its acknowledgement (HEC 2xx or indexer ack, Kafka delivery \
             reports, syslog flush, file fsync). Failed sends are not observed (see \
             xdr_relay_sink_failures_total); _count is the number of batches delivered.",
        );
        for s in &status.sinks {
            f.histogram(
                &[("sink", s.name.as_str())],
                s.ack_latency.cumulative(),
                s.ack_latency.sum_seconds(),
            );
        }
    }
    {
        let mut f = e.family(
            "xdr_relay_sink_state",
            Gauge,
            "1 for where the sink worker stands (starting, idle, delivering, retrying, \
             stopped, finished), 0 for the others.",
        );
        for s in &status.sinks {
            for (state, name) in SINK_STATES {
                f.sample(
                    &[("sink", s.name.as_str()), ("state", name)],
                    if s.state == state { 1.0 } else { 0.0 },
                );
            }
        }
    }
    e.finish()
}

const SINK_STATES: [(SinkState, &str); 6] = [
    (SinkState::Starting, "starting"),
    (SinkState::Idle, "idle"),
    (SinkState::Delivering, "delivering"),
    (SinkState::Retrying, "retrying"),
    (SinkState::Stopped, "stopped"),
    (SinkState::Finished, "finished"),
];

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1_000.0
}

/// One family with a `{tenant, stream}` sample per feed for which `value` is known.
fn per_feed(
    e: &mut Exposition,
    status: &RelayStatus,
    name: &'static str,
    kind: MetricType,
    help: &str,
    value: impl Fn(&relay_pipeline::FeedStats) -> Option<f64>,
) {
    let mut f = e.family(name, kind, help);
    for x in &status.feeds {
        if let Some(v) = value(x) {
            f.sample(
                &[("tenant", x.tenant.as_str()), ("stream", x.stream.as_str())],
                v,
            );
        }
    }
}

/// One family with a `{sink}` sample per sink for which `value` is known.
fn per_sink(
    e: &mut Exposition,
    status: &RelayStatus,
    name: &'static str,
    kind: MetricType,
    help: &str,
    value: impl Fn(&relay_pipeline::SinkStats) -> Option<f64>,
) {
    let mut f = e.family(name, kind, help);
    for s in &status.sinks {
        if let Some(v) = value(s) {
            f.sample(&[("sink", s.name.as_str())], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CredentialKind;
    use crate::test_support::{feed, sink, status, t};
    use relay_auth::RefreshCounts;
    use relay_config::Audience;
    use relay_pipeline::TenantStats;

    #[test]
    fn renders_every_family_literally() {
        let mut s = status();
        s.tenants = vec![TenantStats {
            name: "contoso".into(),
            tenant_id: "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            auth: Some(AuthState::Ok {
                since: t("2026-05-01T11:00:05Z"),
            }),
            token_refreshes: vec![RefreshCounts {
                audience: Audience::Graph,
                ok: 3,
                failed: 1,
                needs_consent: 0,
            }],
        }];
        s.feeds = vec![feed("contoso", true)];
        s.sinks = vec![sink("file")];
        s.engine = relay_pipeline::EngineStats {
            requests_in_flight: 3,
            request_limit: 17,
            requests_waiting: 2,
            request_limit_cuts: 1,
            state_commits: 40,
            state_synced_commits: 1,
            state_segment_syncs: 5,
            state_grouped_writes: 120,
            quota: [
                relay_defender::QuotaHeadroom {
                    app: None,
                    tightest_tenant: Some(0.25),
                    learned: 1,
                },
                relay_defender::QuotaHeadroom::default(),
                relay_defender::QuotaHeadroom {
                    app: Some(0.5),
                    tightest_tenant: Some(1.0),
                    learned: 0,
                },
            ],
        };
        let credentials = [Expiry {
            tenant: "contoso".into(),
            kind: CredentialKind::Certificate,
            expires_at: t("2026-05-04T12:00:00.5Z"),
        }];
        let intervals = BTreeMap::from([("contoso".to_string(), Duration::from_secs(60))]);
        let text = render(&s, &credentials, &intervals);
        assert_eq!(text, EXPECTED);
    }

    const EXPECTED: &str = r#"# HELP xdr_relay_start_time_seconds When the relay was built, Unix seconds.
# TYPE xdr_relay_start_time_seconds gauge
xdr_relay_start_time_seconds 1777633200
# HELP xdr_relay_api_requests_in_flight API requests holding an admission slot now (on the wire, or their page not yet committed), across all tenants.
# TYPE xdr_relay_api_requests_in_flight gauge
xdr_relay_api_requests_in_flight 3
# HELP xdr_relay_api_request_limit The adaptive limit of API requests in flight (grows while answers are prompt, cut on timeouts, 5xx and slow answers; ceiling [http] max_requests_in_flight).
# TYPE xdr_relay_api_request_limit gauge
xdr_relay_api_request_limit 17
# HELP xdr_relay_api_requests_waiting API requests waiting for an admission slot now.
# TYPE xdr_relay_api_requests_waiting gauge
xdr_relay_api_requests_waiting 2
# HELP xdr_relay_api_request_limit_cuts_total Times the adaptive limit of API requests in flight was cut.
# TYPE xdr_relay_api_request_limit_cuts_total counter
xdr_relay_api_request_limit_cuts_total 1
# HELP xdr_relay_state_commits_total State-store transactions committed (a group commit of many writes counts once).
# TYPE xdr_relay_state_commits_total counter
xdr_relay_state_commits_total 40
# HELP xdr_relay_state_synced_commits_total State-store commits synced to disk before returning (rotated refresh tokens).
# TYPE xdr_relay_state_synced_commits_total counter
xdr_relay_state_synced_commits_total 1
# HELP xdr_relay_state_segment_syncs_total Syncs of outbox segment files (one per commit that appended events).
# TYPE xdr_relay_state_segment_syncs_total counter
xdr_relay_state_segment_syncs_total 5
# HELP xdr_relay_state_writes_total Writes (poll commits, poll outcomes, acks, auth states) carried by group commits.
# TYPE xdr_relay_state_writes_total counter
xdr_relay_state_writes_total 120
# HELP xdr_relay_api_quota_headroom_ratio Room left in the API quotas, 1 (idle) to 0 (at the limit): scope app is the budget all tenants share (Graph), tightest_tenant the tenant closest to its own quota (0 while one waits out a Retry-After).
# TYPE xdr_relay_api_quota_headroom_ratio gauge
xdr_relay_api_quota_headroom_ratio{api="m365d",scope="tightest_tenant"} 0.25
xdr_relay_api_quota_headroom_ratio{api="graph",scope="app"} 0.5
xdr_relay_api_quota_headroom_ratio{api="graph",scope="tightest_tenant"} 1
# HELP xdr_relay_api_quota_learned_total Tenant quotas lowered because a 429 stated a lower quota than the relay kept to.
# TYPE xdr_relay_api_quota_learned_total counter
xdr_relay_api_quota_learned_total{api="m365d"} 1
xdr_relay_api_quota_learned_total{api="mde"} 0
xdr_relay_api_quota_learned_total{api="graph"} 0
# HELP xdr_relay_polls_total Polls that ran, by outcome (success or failure); skipped polls are not counted.
# TYPE xdr_relay_polls_total counter
xdr_relay_polls_total{tenant="contoso",stream="alerts",outcome="success"} 3
xdr_relay_polls_total{tenant="contoso",stream="alerts",outcome="failure"} 1
# HELP xdr_relay_poll_errors_total Failed polls by what the operator should make of them: transient (throttling incl. 429 quota exhausted, timeouts, 5xx; retried), needs_consent (grant or consent revoked), permanent (retrying will not help), state (state store failed).
# TYPE xdr_relay_poll_errors_total counter
xdr_relay_poll_errors_total{tenant="contoso",stream="alerts",outcome="transient"} 1
xdr_relay_poll_errors_total{tenant="contoso",stream="alerts",outcome="needs_consent"} 0
xdr_relay_poll_errors_total{tenant="contoso",stream="alerts",outcome="permanent"} 0
xdr_relay_poll_errors_total{tenant="contoso",stream="alerts",outcome="state"} 0
# HELP xdr_relay_polls_skipped_total Polls skipped, by reason: outbox_full (a sink the tenant routes to is at its outbox bound; nothing is dropped, polling resumes when it drains).
# TYPE xdr_relay_polls_skipped_total counter
xdr_relay_polls_skipped_total{tenant="contoso",stream="alerts",outcome="outbox_full"} 0
# HELP xdr_relay_throttled_total HTTP 429 answers from the Defender or Graph API, counted as they arrive: most are waited out and retried within the poll, which then succeeds; a poll that gives up counts once more in xdr_relay_poll_errors_total{outcome="transient"}.
# TYPE xdr_relay_throttled_total counter
xdr_relay_throttled_total{tenant="contoso",stream="alerts"} 2
# HELP xdr_relay_throttled_wait_seconds_total The waits those 429s imposed on the tenant's API (Retry-After, or the client's backoff when absent), summed per answer.
# TYPE xdr_relay_throttled_wait_seconds_total counter
xdr_relay_throttled_wait_seconds_total{tenant="contoso",stream="alerts"} 2.5
# HELP xdr_relay_items_total New incident/alert versions committed to the outboxes.
# TYPE xdr_relay_items_total counter
xdr_relay_items_total{tenant="contoso",stream="alerts"} 17
# HELP xdr_relay_duplicate_items_total Versions the API returned again that were already delivered (overlap re-scan, page ties); dropped.
# TYPE xdr_relay_duplicate_items_total counter
xdr_relay_duplicate_items_total{tenant="contoso",stream="alerts"} 2
# HELP xdr_relay_lag_seconds How far behind the stream is: now minus the committed checkpoint (includes the configured availability lag). Absent until the first checkpoint.
# TYPE xdr_relay_lag_seconds gauge
xdr_relay_lag_seconds{tenant="contoso",stream="alerts"} 40
# HELP xdr_relay_last_poll_timestamp_seconds When the last poll ended (success or failure), Unix seconds. Absent before the first.
# TYPE xdr_relay_last_poll_timestamp_seconds gauge
xdr_relay_last_poll_timestamp_seconds{tenant="contoso",stream="alerts"} 1777636790
# HELP xdr_relay_last_success_timestamp_seconds When a poll last succeeded, Unix seconds. Absent before the first success.
# TYPE xdr_relay_last_success_timestamp_seconds gauge
xdr_relay_last_success_timestamp_seconds{tenant="contoso",stream="alerts"} 1777636790
# HELP xdr_relay_poll_interval_seconds The configured poll interval.
# TYPE xdr_relay_poll_interval_seconds gauge
xdr_relay_poll_interval_seconds{tenant="contoso",stream="alerts"} 60
# HELP xdr_relay_auth_state 1 for the tenant's current sign-in state (ok, needs_consent, failing), 0 for the others; all 0 before the first token request.
# TYPE xdr_relay_auth_state gauge
xdr_relay_auth_state{tenant="contoso",state="ok"} 1
xdr_relay_auth_state{tenant="contoso",state="needs_consent"} 0
xdr_relay_auth_state{tenant="contoso",state="failing"} 0
# HELP xdr_relay_auth_next_probe_timestamp_seconds When the token endpoint is next asked for a tenant that needs consent or whose token requests fail, Unix seconds; polling resumes by itself once a probe gets a token. Absent while the tenant is ok.
# TYPE xdr_relay_auth_next_probe_timestamp_seconds gauge
# HELP xdr_relay_token_refreshes_total Token requests to Entra ID per tenant and API audience, by outcome: ok (token issued), failed (Entra or the network failing, or the credential refused), needs_consent (grant or consent gone, probes included). Tokens served from the cache are not requests; an audience appears with its first request.
# TYPE xdr_relay_token_refreshes_total counter
xdr_relay_token_refreshes_total{tenant="contoso",audience="graph",outcome="ok"} 3
xdr_relay_token_refreshes_total{tenant="contoso",audience="graph",outcome="failed"} 1
xdr_relay_token_refreshes_total{tenant="contoso",audience="graph",outcome="needs_consent"} 0
# HELP xdr_relay_credential_expiry_seconds Seconds until the credential lapses (negative: lapsed): client_secret (auth.client_secret_expires), certificate (notAfter), refresh_token (last saved + 90 days of inactivity). Warnings start 14 days ahead.
# TYPE xdr_relay_credential_expiry_seconds gauge
xdr_relay_credential_expiry_seconds{tenant="contoso",kind="certificate"} 259200.5
# HELP xdr_relay_sink_events_sent_total Events the destination acknowledged.
# TYPE xdr_relay_sink_events_sent_total counter
xdr_relay_sink_events_sent_total{sink="file"} 17
# HELP xdr_relay_sink_failures_total Failed deliveries (each retried; a permanent one stops the sink until its long retry).
# TYPE xdr_relay_sink_failures_total counter
xdr_relay_sink_failures_total{sink="file"} 1
# HELP xdr_relay_sink_undecodable_events_total Outbox rows that could not be decoded and were skipped (never expected).
# TYPE xdr_relay_sink_undecodable_events_total counter
xdr_relay_sink_undecodable_events_total{sink="file"} 0
# HELP xdr_relay_outbox_events Events waiting in the sink's durable outbox.
# TYPE xdr_relay_outbox_events gauge
xdr_relay_outbox_events{sink="file"} 3
# HELP xdr_relay_outbox_bytes Payload bytes waiting in the sink's outbox.
# TYPE xdr_relay_outbox_bytes gauge
xdr_relay_outbox_bytes{sink="file"} 4096
# HELP xdr_relay_outbox_oldest_age_seconds Age of the oldest event waiting in the outbox (the sink's delivery lag); 0 when empty.
# TYPE xdr_relay_outbox_oldest_age_seconds gauge
xdr_relay_outbox_oldest_age_seconds{sink="file"} 90
# HELP xdr_relay_outbox_full 1 while the outbox is at its bound and polling of the tenants routed to it is paused.
# TYPE xdr_relay_outbox_full gauge
xdr_relay_outbox_full{sink="file"} 0
# HELP xdr_relay_sink_in_flight_batches Batches handed to the sink and awaiting the destination's confirmation (HEC indexer ack), failed ones waiting to be sent again included.
# TYPE xdr_relay_sink_in_flight_batches gauge
xdr_relay_sink_in_flight_batches{sink="file"} 0
# HELP xdr_relay_sink_in_flight_limit_batches How many batches may be in flight now: the adaptive window (halved when the destination pushes back, grown while confirmations keep their pace), at most the sink's max_in_flight.
# TYPE xdr_relay_sink_in_flight_limit_batches gauge
xdr_relay_sink_in_flight_limit_batches{sink="file"} 1
# HELP xdr_relay_sink_last_delivery_timestamp_seconds When the destination last acknowledged events, Unix seconds. Absent before the first.
# TYPE xdr_relay_sink_last_delivery_timestamp_seconds gauge
xdr_relay_sink_last_delivery_timestamp_seconds{sink="file"} 1777636795
# HELP xdr_relay_sink_ack_latency_seconds How long the destination took to acknowledge a delivered batch, from the start of the send to its acknowledgement (HEC 2xx or indexer ack, Kafka delivery reports, syslog flush, file fsync). Failed sends are not observed (see xdr_relay_sink_failures_total); _count is the number of batches delivered.
# TYPE xdr_relay_sink_ack_latency_seconds histogram
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.005"} 0
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.01"} 0
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.025"} 1
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.05"} 1
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.1"} 1
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.25"} 3
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="0.5"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="1"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="2.5"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="5"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="10"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="30"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="60"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="120"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="300"} 4
xdr_relay_sink_ack_latency_seconds_bucket{sink="file",le="+Inf"} 4
xdr_relay_sink_ack_latency_seconds_sum{sink="file"} 0.890625
xdr_relay_sink_ack_latency_seconds_count{sink="file"} 4
# HELP xdr_relay_sink_state 1 for where the sink worker stands (starting, idle, delivering, retrying, stopped, finished), 0 for the others.
# TYPE xdr_relay_sink_state gauge
xdr_relay_sink_state{sink="file",state="starting"} 0
xdr_relay_sink_state{sink="file",state="idle"} 1
xdr_relay_sink_state{sink="file",state="delivering"} 0
xdr_relay_sink_state{sink="file",state="retrying"} 0
xdr_relay_sink_state{sink="file",state="stopped"} 0
xdr_relay_sink_state{sink="file",state="finished"} 0
"#;

    #[test]
    fn playbook_audit_counts_are_a_counter_by_outcome_and_absent_without_playbooks() {
        let mut s = status();
        assert!(!render(&s, &[], &BTreeMap::new()).contains("xdr_relay_playbook_actions_total"));
        s.actions = [("sent".to_string(), 2), ("would_act".to_string(), 0)]
            .into_iter()
            .collect();
        let text = render(&s, &[], &BTreeMap::new());
        assert!(
            text.contains("# TYPE xdr_relay_playbook_actions_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("xdr_relay_playbook_actions_total{outcome=\"sent\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("xdr_relay_playbook_actions_total{outcome=\"would_act\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn unknown_values_are_left_out_and_auth_states_are_all_zero_before_the_first_token() {
        let mut s = status();
        s.tenants = vec![TenantStats {
            name: "fabrikam".into(),
            tenant_id: "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6c".into(),
            auth: None,
            token_refreshes: Vec::new(),
        }];
        s.feeds = vec![feed("fabrikam", false)];
        let mut idle = sink("file");
        idle.outbox = relay_state::OutboxDepth::default();
        idle.last_delivery = None;
        idle.ack_latency = relay_pipeline::LatencyHistogram::ack_latency();
        s.sinks = vec![idle];
        let text = render(&s, &[], &BTreeMap::new());
        for absent in [
            "xdr_relay_lag_seconds{",
            "xdr_relay_last_poll_timestamp_seconds{",
            "xdr_relay_last_success_timestamp_seconds{",
            "xdr_relay_poll_interval_seconds{",
            "xdr_relay_credential_expiry_seconds{",
            "xdr_relay_sink_last_delivery_timestamp_seconds{",
            "xdr_relay_token_refreshes_total{",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
        for present in [
            "xdr_relay_auth_state{tenant=\"fabrikam\",state=\"ok\"} 0\n",
            "xdr_relay_auth_state{tenant=\"fabrikam\",state=\"needs_consent\"} 0\n",
            "xdr_relay_auth_state{tenant=\"fabrikam\",state=\"failing\"} 0\n",
            "xdr_relay_polls_total{tenant=\"fabrikam\",stream=\"alerts\",outcome=\"success\"} 0\n",
            "xdr_relay_outbox_oldest_age_seconds{sink=\"file\"} 0\n",
            "xdr_relay_throttled_total{tenant=\"fabrikam\",stream=\"alerts\"} 0\n",
            "xdr_relay_throttled_wait_seconds_total{tenant=\"fabrikam\",stream=\"alerts\"} 0\n",
            "xdr_relay_sink_ack_latency_seconds_bucket{sink=\"file\",le=\"0.005\"} 0\n",
            "xdr_relay_sink_ack_latency_seconds_bucket{sink=\"file\",le=\"+Inf\"} 0\n",
            "xdr_relay_sink_ack_latency_seconds_sum{sink=\"file\"} 0\n",
            "xdr_relay_sink_ack_latency_seconds_count{sink=\"file\"} 0\n",
        ] {
            assert!(text.contains(present), "no {present} in:\n{text}");
        }
    }

    #[test]
    fn a_tenant_without_tokens_shows_its_state_and_next_probe() {
        let mut s = status();
        let since = Utc::now();
        let next = DateTime::from_timestamp(1_777_636_855, 0).unwrap();
        s.tenants = vec![TenantStats {
            name: "contoso".into(),
            tenant_id: "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6c".into(),
            auth: Some(AuthState::NeedsConsent {
                code: "AADSTS65001".into(),
                since,
                next_probe: Some(next),
            }),
            token_refreshes: Vec::new(),
        }];
        let text = render(&s, &[], &BTreeMap::new());
        for present in [
            "xdr_relay_auth_state{tenant=\"contoso\",state=\"needs_consent\"} 1\n",
            "xdr_relay_auth_state{tenant=\"contoso\",state=\"ok\"} 0\n",
            "xdr_relay_auth_next_probe_timestamp_seconds{tenant=\"contoso\"} 1777636855\n",
        ] {
            assert!(text.contains(present), "no {present} in:\n{text}");
        }
        s.tenants[0].auth = Some(AuthState::Ok { since });
        let text = render(&s, &[], &BTreeMap::new());
        assert!(
            !text.contains("xdr_relay_auth_next_probe_timestamp_seconds{"),
            "{text}"
        );
    }

    /// Every string under `key` anywhere in `v`.
    fn strings_under(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match x {
                        serde_json::Value::String(s) if k == key => out.push(s.clone()),
                        _ => strings_under(x, key, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings_under(x, key, out)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana/xdr-relay.json"))
                .expect("deploy/grafana/xdr-relay.json is JSON");
        let mut s = status();
        s.tenants = vec![TenantStats {
            name: "contoso".into(),
            tenant_id: "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
            auth: None,
            token_refreshes: Vec::new(),
        }];
        s.feeds = vec![feed("contoso", true)];
        s.sinks = vec![sink("file")];
        let text = render(&s, &[], &BTreeMap::new());
        // The series names a query can use: a histogram family's are its `_bucket`, `_sum`
        // and `_count`.
        let families: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .flat_map(|l| match l.split_once(' ') {
                Some((name, "histogram")) => ["_bucket", "_sum", "_count"]
                    .map(|suffix| format!("{name}{suffix}"))
                    .to_vec(),
                Some((name, _)) => vec![name.to_string()],
                None => Vec::new(),
            })
            .collect();

        let mut exprs = Vec::new();
        strings_under(&dashboard, "expr", &mut exprs);
        strings_under(&dashboard, "definition", &mut exprs);
        assert!(exprs.len() > 20, "{exprs:?}");
        let mut used = std::collections::BTreeSet::new();
        for expr in &exprs {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("xdr_relay_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                assert!(families.contains(&name), "{name} is not exported: {expr}");
                used.insert(name);
            }
        }
        for wanted in [
            "xdr_relay_lag_seconds",
            "xdr_relay_last_success_timestamp_seconds",
            "xdr_relay_poll_interval_seconds",
            "xdr_relay_poll_errors_total",
            "xdr_relay_outbox_events",
            "xdr_relay_outbox_oldest_age_seconds",
            "xdr_relay_credential_expiry_seconds",
            "xdr_relay_throttled_total",
            "xdr_relay_throttled_wait_seconds_total",
            "xdr_relay_token_refreshes_total",
            "xdr_relay_sink_ack_latency_seconds_bucket",
        ] {
            assert!(
                used.contains(wanted),
                "the dashboard does not show {wanted}"
            );
        }

        // Every query goes to the datasource the viewer picks.
        let vars = dashboard["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"));
        let mut uids = Vec::new();
        strings_under(&dashboard["panels"], "uid", &mut uids);
        assert!(
            !uids.is_empty() && uids.iter().all(|u| u == "${datasource}"),
            "{uids:?}"
        );
    }
}
