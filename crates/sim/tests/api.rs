//! The simulator over HTTP, as a client sees it: paging, filters, limits, late
//! visibility, ground truth, auth, quotas, faults and hostile content.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use relay_config::{Audience, Feed, Stream};
use relay_sim::entra::TokenFault;
use relay_sim::odata::{parse_datetime, Tick};
use relay_sim::{ApiFault, FaultKind, QuotaLimits, Sim, SimConfig};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A quiet world: no background activity, no quota, versions visible at once.
fn quiet(backlog: usize) -> SimConfig {
    SimConfig {
        tenants: 2,
        seed: 11,
        activity: 0,
        backlog,
        late_visibility: Duration::ZERO,
        late_visibility_jitter: Duration::ZERO,
        quotas_enabled: false,
        ..SimConfig::default()
    }
}

fn path(feed: Feed) -> &'static str {
    match feed {
        Feed::M365dIncidents => "api/incidents",
        Feed::MdeAlerts => "api/alerts",
        Feed::GraphIncidents => "v1.0/security/incidents",
        Feed::GraphAlerts => "v1.0/security/alerts_v2",
    }
}

fn token(sim: &Sim, tenant: usize, feed: Feed) -> String {
    sim.entra().mint_access_token(
        &sim.tenants()[tenant].tenant_id,
        feed.audience(),
        Duration::from_secs(600),
    )
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", &self.body[..self.body.len().min(300)]))
    }
}

async fn get_url(url: &str, bearer: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

async fn get(sim: &Sim, feed: Feed, query: &str) -> Reply {
    get_as(sim, 0, feed, query).await
}

async fn get_as(sim: &Sim, tenant: usize, feed: Feed, query: &str) -> Reply {
    let url = format!("{}{}?{}", sim.base_url(), path(feed), query);
    get_url(&url, Some(&token(sim, tenant, feed))).await
}

fn id_of(feed: Feed, item: &Value) -> String {
    match &item[feed.id_field()] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("id {other:?}"),
    }
}

fn last_update(feed: Feed, item: &Value) -> Tick {
    parse_datetime(item[feed.time_field()].as_str().unwrap()).unwrap()
}

/// Reads a whole feed: `$skip` paging for XDR/MDE/alerts_v2, `@odata.nextLink` for Graph
/// incidents.
async fn drain(
    sim: &Sim,
    tenant: usize,
    feed: Feed,
    filter: Option<&str>,
    top: usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    let filter = filter.map(|f| format!("&$filter={f}")).unwrap_or_default();
    let expand = match feed {
        Feed::MdeAlerts => "&$expand=evidence",
        Feed::GraphIncidents => "&$expand=alerts",
        _ => "",
    };
    let mut skip = 0;
    let mut url = format!(
        "{}{}?$top={top}{filter}{expand}",
        sim.base_url(),
        path(feed)
    );
    loop {
        let r = get_url(&url, Some(&token(sim, tenant, feed))).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.body);
        let page = r.json();
        let items = page["value"].as_array().unwrap().clone();
        let n = items.len();
        out.extend(items);
        if feed == Feed::GraphIncidents {
            match page.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => url = next.to_string(),
                None => break,
            }
        } else {
            assert!(
                page.get("@odata.nextLink").is_none(),
                "{feed} does not emit nextLink"
            );
            if n < top {
                break;
            }
            skip += top;
            url = format!(
                "{}{}?$top={top}&$skip={skip}{filter}{expand}",
                sim.base_url(),
                path(feed)
            );
        }
    }
    out
}

fn ground_truth_ids(sim: &Sim, tenant: usize, feed: Feed) -> BTreeMap<String, Vec<Tick>> {
    let tid = &sim.tenants()[tenant].tenant_id;
    let mut m: BTreeMap<String, Vec<Tick>> = BTreeMap::new();
    for g in sim.ground_truth() {
        if &g.tenant_id == tid && g.feed == feed {
            m.entry(g.id)
                .or_default()
                .push(Tick::from_datetime(g.last_update));
        }
    }
    m
}

#[tokio::test]
async fn paging_reaches_the_end_of_every_feed_exactly_once() {
    let sim = Sim::start(quiet(60)).await.unwrap();
    for (feed, top) in [
        (Feed::M365dIncidents, 100),
        (Feed::M365dIncidents, 7),
        (Feed::MdeAlerts, 13),
        (Feed::GraphIncidents, 9),
        (Feed::GraphAlerts, 41),
    ] {
        let items = drain(&sim, 1, feed, None, top).await;
        let truth = ground_truth_ids(&sim, 1, feed);
        let mut seen = BTreeMap::new();
        for it in &items {
            assert!(
                seen.insert(id_of(feed, it), last_update(feed, it))
                    .is_none(),
                "{feed}: duplicate"
            );
        }
        assert_eq!(seen.len(), truth.len(), "{feed} top {top}");
        for (id, lu) in &seen {
            assert_eq!(truth[id], vec![*lu], "{feed} {id}");
        }
        // Default order is newest first.
        let lus: Vec<Tick> = items.iter().map(|i| last_update(feed, i)).collect();
        assert!(lus.windows(2).all(|w| w[0] >= w[1]), "{feed} newest first");
    }
    // The other tenant has other data.
    let a = drain(&sim, 0, Feed::GraphIncidents, None, 50).await;
    let b = drain(&sim, 1, Feed::GraphIncidents, None, 50).await;
    assert_ne!(
        id_of(Feed::GraphIncidents, &a[0]),
        id_of(Feed::GraphIncidents, &b[0])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn envelopes_carry_the_real_context_strings() {
    let sim = Sim::start(quiet(3)).await.unwrap();
    let cases = [
        (
            Feed::M365dIncidents,
            "",
            "https://api.security.microsoft.com/api/$metadata#Incidents",
        ),
        (
            Feed::MdeAlerts,
            "",
            "https://api.securitycenter.microsoft.com/api/$metadata#Alerts",
        ),
        (
            Feed::GraphIncidents,
            "",
            "https://graph.microsoft.com/v1.0/$metadata#security/incidents",
        ),
        (
            Feed::GraphAlerts,
            "",
            "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2",
        ),
    ];
    for (feed, q, ctx) in cases {
        let r = get(&sim, feed, q).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.body
                .starts_with(&format!("{{\"@odata.context\":\"{ctx}\"")),
            "{}",
            &r.body[..120]
        );
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
    // Shapes: XDR numeric incidentId with nested alerts; Graph string ids.
    let x = get(&sim, Feed::M365dIncidents, "").await.json();
    let with_alerts = x["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| !i["alerts"].as_array().unwrap().is_empty())
        .unwrap();
    assert!(with_alerts["incidentId"].is_u64());
    assert!(with_alerts["alerts"][0]["lastUpdatedTime"].is_string());
    assert!(with_alerts["alerts"][0]["entities"].is_array());
    let g = get(&sim, Feed::GraphIncidents, "$expand=alerts")
        .await
        .json();
    assert!(g["value"][0]["id"].is_string());
    assert!(g["value"][0]["alerts"].is_array());
    let g = get(&sim, Feed::GraphIncidents, "").await.json();
    assert!(g["value"][0].get("alerts").is_none());
    let m = get(&sim, Feed::MdeAlerts, "$expand=evidence&$top=200")
        .await
        .json();
    let m0 = get(&sim, Feed::MdeAlerts, "$top=200").await.json();
    let with: usize = m["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["evidence"].as_array().unwrap().len())
        .sum();
    let without: usize = m0["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["evidence"].as_array().unwrap().len())
        .sum();
    assert!(with > 0 && without == 0);
    let c = get(&sim, Feed::GraphAlerts, "$count=true&$top=1")
        .await
        .json();
    assert!(c["@odata.count"].as_u64().unwrap() > 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn filters_compare_at_tick_precision_with_ties_across_pages() {
    let sim = Sim::start(quiet(70)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let t = Tick::from_datetime(sim.burst(&tid, Stream::Alerts, 150).unwrap());
    let tie = t.format7();
    let trimmed = t.format_trimmed();
    for feed in [Feed::GraphAlerts, Feed::MdeAlerts] {
        let f = feed.time_field();
        let at = drain(
            &sim,
            0,
            feed,
            Some(&format!("{f} ge {tie} and {f} le {trimmed}")),
            30,
        )
        .await;
        assert!(at.iter().all(|i| last_update(feed, i) == t));
        let expected = if feed == Feed::GraphAlerts {
            150
        } else {
            at.len()
        };
        assert_eq!(
            at.len(),
            expected,
            "{feed}: the whole tie run across five pages"
        );
        assert!(!at.is_empty());
        let after = drain(&sim, 0, feed, Some(&format!("{f} gt {tie}")), 1_000).await;
        assert!(
            after.iter().all(|i| last_update(feed, i) > t),
            "gt drops the tie"
        );
        let before = drain(&sim, 0, feed, Some(&format!("{f} lt {tie}")), 1_000).await;
        assert!(
            before.iter().all(|i| last_update(feed, i) < t),
            "lt is exclusive"
        );
        let all = drain(&sim, 0, feed, None, 1_000).await;
        assert_eq!(before.len() + at.len() + after.len(), all.len());
        // One tick earlier as the lower bound with gt includes the tie again.
        let prev = Tick(t.0 - 1).format7();
        let again = drain(
            &sim,
            0,
            feed,
            Some(&format!(
                "{f} gt {prev} and {f} lt {}",
                Tick(t.0 + 1).format7()
            )),
            1_000,
        )
        .await;
        assert_eq!(again.len(), at.len());
    }
    // Status filters are cheap extras.
    let r = get(
        &sim,
        Feed::GraphIncidents,
        "$filter=status%20eq%20'resolved'",
    )
    .await
    .json();
    assert!(r["value"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "resolved"));
    let r = get(
        &sim,
        Feed::M365dIncidents,
        "$filter=createdTime%20ge%202000-01-01T00:00:00Z%20and%20status%20eq%20'Active'",
    )
    .await
    .json();
    assert!(r["value"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "Active"));
    sim.shutdown().await;
}

#[tokio::test]
async fn limits_and_400_bodies_per_family() {
    let sim = Sim::start(quiet(20)).await.unwrap();
    let defender_400 = |r: &Reply, code: &str| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], code);
        assert!(v["error"]["target"].as_str().unwrap().len() == 36);
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let graph_400 = |r: &Reply| {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], "BadRequest");
        assert!(v["error"]["innerError"]["request-id"].is_string());
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let m = defender_400(
        &get(&sim, Feed::M365dIncidents, "$top=101").await,
        "BadRequest",
    );
    assert!(m.contains("'100'"), "{m}");
    assert_eq!(
        get(&sim, Feed::M365dIncidents, "$top=100").await.status,
        StatusCode::OK
    );
    defender_400(
        &get(&sim, Feed::MdeAlerts, "$top=10001").await,
        "BadRequest",
    );
    assert_eq!(
        get(&sim, Feed::MdeAlerts, "$top=10000").await.status,
        StatusCode::OK
    );
    let m = graph_400(&get(&sim, Feed::GraphIncidents, "$top=51").await);
    assert!(
        m.contains("The limit of '50' for Top query has been exceeded"),
        "{m}"
    );
    let r = get(&sim, Feed::GraphAlerts, "$top=5000").await;
    assert_eq!(r.status, StatusCode::OK, "alerts_v2 clamps $top");
    assert!(r.json()["value"].as_array().unwrap().len() <= 1_000);
    graph_400(&get(&sim, Feed::GraphAlerts, "$skip=501").await);
    graph_400(&get(&sim, Feed::GraphIncidents, "$skip=501").await);
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "$skip=500").await.status,
        StatusCode::OK
    );
    let m = graph_400(
        &get(
            &sim,
            Feed::GraphAlerts,
            "$filter=lastUpdateDateTime%20gq%202024-01-01T00:00:00Z",
        )
        .await,
    );
    assert!(m.starts_with("Invalid filter clause"), "{m}");
    graph_400(
        &get(
            &sim,
            Feed::GraphAlerts,
            "$filter=lastUpdateDateTime%20ge%202024-01-01T00:00:00.12345678Z",
        )
        .await,
    );
    defender_400(
        &get(&sim, Feed::MdeAlerts, "$filter=lastUpdateTime+ge+yesterday").await,
        "ODataError",
    );
    defender_400(
        &get(&sim, Feed::M365dIncidents, "$orderby=lastUpdateTime%20desc").await,
        "ODataError",
    );
    // The documented SIEM query works verbatim.
    let r = get(
        &sim,
        Feed::M365dIncidents,
        "$filter=lastUpdateTime+ge+2020-06-03T18:04:29.4633333Z",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    sim.shutdown().await;
}

#[tokio::test]
async fn graph_orderby_and_next_link() {
    let sim = Sim::start(quiet(30)).await.unwrap();
    let r = get(
        &sim,
        Feed::GraphAlerts,
        "$orderby=lastUpdateDateTime%20asc&$top=1000",
    )
    .await
    .json();
    let lus: Vec<Tick> = r["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| last_update(Feed::GraphAlerts, i))
        .collect();
    assert!(lus.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        r.get("@odata.nextLink").is_none(),
        "alerts_v2 emits no nextLink"
    );
    let r = get(&sim, Feed::GraphIncidents, "$top=10&$expand=alerts")
        .await
        .json();
    let next = r["@odata.nextLink"].as_str().unwrap();
    assert!(next.starts_with(sim.base_url().as_str()));
    assert!(
        next.contains("$skip=10") && next.contains("$expand=alerts") && next.contains("$top=10"),
        "{next}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_version_is_invisible_until_its_delay_then_shows_with_its_old_timestamp() {
    let sim = Sim::start(SimConfig {
        late_visibility: Duration::from_secs(1),
        ..quiet(0)
    })
    .await
    .unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let created = sim.create_incident(&tid, 2, None).unwrap();
    for feed in Feed::ALL {
        let r = get(&sim, feed, "").await.json();
        assert_eq!(
            r["value"].as_array().unwrap().len(),
            0,
            "{feed} before the delay"
        );
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let queried_at = Tick::now();
    let r = get(&sim, Feed::GraphIncidents, "$expand=alerts")
        .await
        .json();
    let items = r["value"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], created.incident_id.as_str());
    let lu = last_update(Feed::GraphIncidents, &items[0]);
    assert_eq!(lu, Tick::from_datetime(created.last_update));
    assert!(
        queried_at.0 - lu.0 >= 10_000_000,
        "the timestamp is a second older than the query"
    );
    // A poller that asked `ge <time of creation>` before the delay missed it; the same
    // filter now finds it.
    let f = format!("$filter=lastUpdateDateTime%20ge%20{}", lu.format7());
    assert_eq!(
        get(&sim, Feed::GraphAlerts, &f).await.json()["value"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn only_the_latest_visible_version_is_returned() {
    let sim = Sim::start(quiet(0)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let c = sim.create_incident(&tid, 1, None).unwrap();
    let alert = &c.alert_ids[0];
    let v1 = Tick::from_datetime(c.last_update);
    let v2 = Tick::from_datetime(sim.touch(&tid, Stream::Alerts, alert, None).unwrap());
    assert!(v2 > v1);
    let all = get(&sim, Feed::GraphAlerts, "").await.json();
    let items = all["value"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(last_update(Feed::GraphAlerts, &items[0]), v2);
    let old = get(
        &sim,
        Feed::GraphAlerts,
        &format!("$filter=lastUpdateDateTime%20le%20{}", v1.format7()),
    )
    .await
    .json();
    assert_eq!(
        old["value"].as_array().unwrap().len(),
        0,
        "the superseded version is gone"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ground_truth_lists_exactly_what_a_poller_could_see() {
    let sim = Sim::start(quiet(0)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let c = sim.create_incident(&tid, 1, None).unwrap();
    let alert = c.alert_ids[0].clone();
    // v2 surfaces after 1 s, v3 (made later) after 400 ms: v2 is superseded before it
    // is ever visible. v4 (made at ~700 ms) is visible for ~400 ms before v5 replaces it.
    let start = Instant::now();
    let v2 = Tick::from_datetime(
        sim.touch(
            &tid,
            Stream::Alerts,
            &alert,
            Some(Duration::from_millis(1_000)),
        )
        .unwrap(),
    );
    let v3 = Tick::from_datetime(
        sim.touch(
            &tid,
            Stream::Alerts,
            &alert,
            Some(Duration::from_millis(400)),
        )
        .unwrap(),
    );
    let mut observed = BTreeSet::new();
    let deadline = start + Duration::from_millis(1_600);
    let mut touched = false;
    let mut v4 = Tick(0);
    let mut v5 = Tick(0);
    while Instant::now() < deadline {
        for it in get(&sim, Feed::GraphAlerts, "").await.json()["value"]
            .as_array()
            .unwrap()
        {
            observed.insert(last_update(Feed::GraphAlerts, it));
        }
        if !touched && start.elapsed() > Duration::from_millis(700) {
            touched = true;
            v4 = Tick::from_datetime(
                sim.touch(&tid, Stream::Alerts, &alert, Some(Duration::ZERO))
                    .unwrap(),
            );
            v5 = Tick::from_datetime(
                sim.touch(
                    &tid,
                    Stream::Alerts,
                    &alert,
                    Some(Duration::from_millis(400)),
                )
                .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.settle().await;
    for it in get(&sim, Feed::GraphAlerts, "").await.json()["value"]
        .as_array()
        .unwrap()
    {
        observed.insert(last_update(Feed::GraphAlerts, it));
    }
    let truth: BTreeSet<Tick> = ground_truth_ids(&sim, 0, Feed::GraphAlerts)[&alert]
        .iter()
        .copied()
        .collect();
    assert!(!truth.contains(&v2), "superseded before visible");
    assert!(!observed.contains(&v2));
    let want: BTreeSet<Tick> = [Tick::from_datetime(c.last_update), v3, v4, v5]
        .into_iter()
        .collect();
    assert_eq!(truth, want);
    assert_eq!(
        observed, truth,
        "a 10 ms poller saw exactly the ground truth"
    );
    // The same versions on the MDE feed when the alert is an MDE one.
    let mde = ground_truth_ids(&sim, 0, Feed::MdeAlerts);
    if let Some(v) = mde.get(&alert) {
        assert_eq!(v.iter().copied().collect::<BTreeSet<_>>(), want);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn background_activity_feeds_a_poller_nothing_outside_the_ground_truth() {
    let sim = Sim::start(SimConfig {
        tenants: 1,
        activity: 3_000,
        activity_tick: Duration::from_millis(10),
        late_visibility: Duration::from_millis(100),
        late_visibility_jitter: Duration::from_millis(200),
        burst_size: 30,
        ..quiet(5)
    })
    .await
    .unwrap();
    let mut observed: BTreeSet<(String, Tick)> = BTreeSet::new();
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        for it in drain(&sim, 0, Feed::GraphIncidents, None, 50).await {
            observed.insert((
                id_of(Feed::GraphIncidents, &it),
                last_update(Feed::GraphIncidents, &it),
            ));
        }
    }
    sim.settle().await;
    let final_page = drain(&sim, 0, Feed::GraphIncidents, None, 50).await;
    let truth = ground_truth_ids(&sim, 0, Feed::GraphIncidents);
    for (id, lu) in &observed {
        assert!(
            truth.get(id).is_some_and(|v| v.contains(lu)),
            "observed {id} {lu} is not ground truth"
        );
    }
    // After settling, the newest ground-truth version of every item is what is served.
    assert_eq!(final_page.len(), truth.len());
    for it in &final_page {
        let id = id_of(Feed::GraphIncidents, it);
        assert_eq!(
            truth[&id].iter().max(),
            Some(&last_update(Feed::GraphIncidents, it))
        );
    }
    let versions: usize = truth.values().map(Vec::len).sum();
    assert!(versions > truth.len(), "items were updated");
    // Statuses moved and merges happened.
    let stats = sim.stats();
    assert!(stats.world.versions > 100, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_and_the_family_body() {
    let sim = Sim::start(SimConfig {
        quotas_enabled: true,
        quota_limits: QuotaLimits {
            graph_per_minute: 3,
            ..QuotaLimits::default()
        },
        ..quiet(2)
    })
    .await
    .unwrap();
    for _ in 0..50 {
        assert_eq!(
            get(&sim, Feed::M365dIncidents, "").await.status,
            StatusCode::OK
        );
    }
    let r = get(&sim, Feed::M365dIncidents, "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs));
    let v = r.json();
    assert_eq!(v["error"]["code"], "429");
    assert_eq!(
        v["error"]["message"],
        "API calls quota exceeded! maximum allowed 50 per 00:01:00"
    );
    // Other families and tenants have their own budgets.
    assert_eq!(get(&sim, Feed::MdeAlerts, "").await.status, StatusCode::OK);
    assert_eq!(
        get_as(&sim, 1, Feed::M365dIncidents, "").await.status,
        StatusCode::OK
    );
    // Graph: both feeds share the /security budget.
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    let r = get(&sim, Feed::GraphIncidents, "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    let v = r.json();
    assert_eq!(v["error"]["code"], "TooManyRequests");
    assert_eq!(v["error"]["message"], "Too many requests.");
    assert!(v["error"]["innerError"]["date"].is_string());
    let stats = sim.stats();
    assert_eq!(stats.throttled, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn bearer_tokens_expire_and_must_match_the_audience() {
    let sim = Sim::start(quiet(1)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let graph = sim
        .entra()
        .mint_access_token(&tid, Audience::Graph, Duration::from_secs(1));
    let mde =
        sim.entra()
            .mint_access_token(&tid, Audience::WindowsDefenderAtp, Duration::from_secs(1));
    let url = |feed| format!("{}{}", sim.base_url(), path(feed));
    assert_eq!(
        get_url(&url(Feed::GraphAlerts), Some(&graph)).await.status,
        StatusCode::OK
    );
    // Wrong audience: a Graph token on the MDE API and the reverse.
    let r = get_url(&url(Feed::MdeAlerts), Some(&graph)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "Unauthorized");
    let r = get_url(&url(Feed::GraphIncidents), Some(&mde)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["code"], "InvalidAuthenticationToken");
    // Missing and garbage tokens.
    let r = get_url(&url(Feed::GraphAlerts), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    assert_eq!(
        get_url(&url(Feed::M365dIncidents), Some("not-a-jwt"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = get_url(&url(Feed::GraphAlerts), Some(&graph)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let v = r.json();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        v["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    assert!(v["error"]["innerError"]["request-id"].is_string());
    let r = get_url(&url(Feed::MdeAlerts), Some(&mde)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let v = r.json();
    assert_eq!(v["error"]["code"], "Unauthorized");
    assert_eq!(v["error"]["target"].as_str().unwrap().len(), 36);
    assert!(sim.stats().unauthorized >= 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_fault_kind() {
    let sim = Sim::start(quiet(10)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    let once = |k: FaultKind| ApiFault::new(k).times(1);

    sim.set_fault(&tid, once(FaultKind::ServerError { status: 503 }))
        .unwrap();
    let r = get(&sim, Feed::MdeAlerts, "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["error"]["code"], "ServiceUnavailable");
    assert_eq!(
        get(&sim, Feed::MdeAlerts, "").await.status,
        StatusCode::OK,
        "times(1) is spent"
    );

    sim.set_fault(&tid, once(FaultKind::ServerError { status: 500 }))
        .unwrap();
    let r = get(&sim, Feed::GraphIncidents, "").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.json()["error"]["innerError"].is_object());

    sim.set_fault(&tid, once(FaultKind::HtmlError { status: 502 }))
        .unwrap();
    let r = get(&sim, Feed::GraphAlerts, "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "text/html");
    assert!(r.body.contains("<h1>502 Bad Gateway</h1>"));

    sim.set_fault(
        &tid,
        once(FaultKind::TooManyRequests {
            retry_after_secs: 7,
        }),
    )
    .unwrap();
    let r = get(&sim, Feed::M365dIncidents, "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "7");

    sim.set_fault(&tid, once(FaultKind::MalformedJson)).unwrap();
    let r = get(&sim, Feed::GraphAlerts, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&r.body).is_err());

    sim.set_fault(&tid, once(FaultKind::CutJson)).unwrap();
    let r = get(&sim, Feed::M365dIncidents, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(serde_json::from_str::<Value>(&r.body).is_err());

    sim.set_fault(&tid, once(FaultKind::TruncatedBody)).unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}{}", sim.base_url(), path(Feed::MdeAlerts)))
        .bearer_auth(token(&sim, 0, Feed::MdeAlerts))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let promised: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(promised > 100);
    assert!(
        resp.bytes().await.is_err(),
        "the body ends before Content-Length"
    );

    sim.set_fault(&tid, once(FaultKind::ConnectionReset))
        .unwrap();
    let err = reqwest::Client::new()
        .get(format!("{}{}", sim.base_url(), path(Feed::GraphAlerts)))
        .bearer_auth(token(&sim, 0, Feed::GraphAlerts))
        .send()
        .await
        .unwrap_err();
    assert!(
        err.is_request() || err.is_connect() || err.is_body(),
        "{err:?}"
    );

    sim.set_fault(
        &tid,
        once(FaultKind::Slow {
            delay: Duration::from_millis(400),
        }),
    )
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    assert!(t0.elapsed() >= Duration::from_millis(400));

    // 206 only on Graph; the failing provider's items are missing.
    sim.set_fault(&tid, ApiFault::new(FaultKind::PartialContent))
        .unwrap();
    assert_eq!(get(&sim, Feed::MdeAlerts, "").await.status, StatusCode::OK);
    let full = get_as(&sim, 1, Feed::GraphAlerts, "").await.json();
    assert_eq!(
        full["value"].as_array().map(Vec::len).map(|n| n > 0),
        Some(true)
    );
    let r = get(&sim, Feed::GraphAlerts, "").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.headers["warning"]
        .to_str()
        .unwrap()
        .starts_with("199 - \""));
    assert!(r.json()["value"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["serviceSource"] != "microsoftDefenderForEndpoint"));
    sim.clear_faults(&tid).unwrap();
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );

    // A feed-scoped fault leaves the other feeds alone; another tenant is unaffected.
    sim.set_fault(
        &tid,
        ApiFault::new(FaultKind::ServerError { status: 500 }).on(Feed::GraphIncidents),
    )
    .unwrap();
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "until cleared"
    );
    assert_eq!(
        get_as(&sim, 1, Feed::GraphIncidents, "").await.status,
        StatusCode::OK
    );
    sim.clear_faults(&tid).unwrap();

    // A large tenant's `$expand=alerts` keeps failing; without it, incidents work.
    sim.set_fault(&tid, ApiFault::new(FaultKind::ExpandFails))
        .unwrap();
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "$expand=alerts")
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "$expand=alerts")
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&sim, Feed::GraphIncidents, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    sim.clear_faults(&tid).unwrap();

    // Token-side faults go to Entra.
    sim.set_token_fault(&tid, Some(TokenFault::Down)).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}{tid}/oauth2/v2.0/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", sim.tenants()[0].client_id.as_str()),
            ("client_secret", sim.tenants()[0].client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    sim.set_token_fault(&tid, None).unwrap();
    assert!(sim
        .set_fault("no-such-tenant", once(FaultKind::CutJson))
        .is_err());
    assert!(sim.stats().faults_injected >= 12);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_set_at_start_apply_from_the_first_request() {
    let sim = Sim::start(SimConfig {
        faults: vec![(
            1,
            ApiFault::new(FaultKind::ServerError { status: 500 }).times(2),
        )],
        ..quiet(1)
    })
    .await
    .unwrap();
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&sim, 1, Feed::GraphAlerts, "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get_as(&sim, 1, Feed::MdeAlerts, "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get_as(&sim, 1, Feed::MdeAlerts, "").await.status,
        StatusCode::OK
    );
    assert!(Sim::start(SimConfig {
        faults: vec![(5, ApiFault::new(FaultKind::CutJson))],
        ..quiet(0)
    })
    .await
    .is_err());
    sim.shutdown().await;
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn hostile_content_is_present_and_every_page_is_valid_json() {
    let sim = Sim::start(SimConfig {
        burst_size: 10,
        ..quiet(30)
    })
    .await
    .unwrap();
    for feed in Feed::ALL {
        let items = drain(&sim, 0, feed, None, 50).await;
        let mut all = Vec::new();
        for i in &items {
            strings(i, &mut all);
        }
        let has = |needle: &str| all.iter().any(|s| s.contains(needle));
        if feed != Feed::MdeAlerts {
            // MDE serves only Defender for Endpoint alerts, a subset.
            for needle in [
                "CEF:0|",
                "\r\n",
                "\t",
                "Café",
                "可疑",
                "🔥",
                "\"double\"",
                "\u{1b}[31m",
                "\u{2028}",
                "\\",
            ] {
                assert!(has(needle), "{feed}: no {needle:?}");
            }
            assert!(
                all.iter().any(|s| s.len() >= 10_240),
                "{feed}: no 10 KB string"
            );
        }
        assert!(
            all.iter().any(|s| !s.is_ascii()),
            "{feed}: no non-ASCII text"
        );
    }
    let alerts = drain(&sim, 0, Feed::GraphAlerts, None, 1_000).await;
    let evidence: Vec<usize> = alerts
        .iter()
        .map(|a| a["evidence"].as_array().unwrap().len())
        .collect();
    assert!(evidence.iter().any(|n| *n >= 200), "huge evidence");
    assert!(
        alerts.iter().any(|a| a["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["@odata.type"] == "#microsoft.graph.security.deviceEvidence")),
        "no evidence beyond the device"
    );
    assert!(alerts.iter().any(|a| a["classification"].is_null()));
    // Timestamps print with 0 to 7 fractional digits.
    let mut texts = Vec::new();
    for a in &alerts {
        strings(a, &mut texts);
    }
    let digits: BTreeSet<usize> = texts
        .iter()
        .filter(|s| s.len() >= 20 && s.ends_with('Z') && parse_datetime(s).is_ok())
        .map(|s| s.split('.').nth(1).map_or(0, |f| f.len() - 1))
        .collect();
    assert!(digits.len() >= 6, "{digits:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_enum_members_need_the_prefer_header() {
    let sim = Sim::start(quiet(40)).await.unwrap();
    let url = format!("{}{}?$top=1000", sim.base_url(), path(Feed::GraphAlerts));
    let plain = get_url(&url, Some(&token(&sim, 0, Feed::GraphAlerts)))
        .await
        .json();
    let with = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token(&sim, 0, Feed::GraphAlerts))
        .header("Prefer", "include-unknown-enum-members")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let sources = |v: &Value| -> BTreeSet<String> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["serviceSource"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(sources(&with).contains("microsoftDefenderForCloud"));
    assert!(!sources(&plain).contains("microsoftDefenderForCloud"));
    assert!(sources(&plain).contains("unknownFutureValue"));
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_mirrors_the_methods() {
    let sim = Sim::start(quiet(3)).await.unwrap();
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let tenants: Value = http
        .get(format!("{base}_sim/tenants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tenants.as_array().unwrap().len(), 2);
    assert_eq!(tenants[0]["tenant_id"], sim.tenants()[0].tenant_id.as_str());
    assert_eq!(
        tenants[0]["client_secret"],
        sim.tenants()[0].client_secret.as_str()
    );
    assert!(!format!("{:?}", sim.tenants()[0]).contains(&sim.tenants()[0].client_secret));
    let tid = sim.tenants()[0].tenant_id.clone();

    let r = http
        .post(format!("{base}_sim/faults/{tid}"))
        .json(&serde_json::json!({"kind": "server_error", "status": 503, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let listed: Value = http
        .get(format!("{base}_sim/faults/{tid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["kind"], "server_error");
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    http.post(format!("{base}_sim/faults/{tid}"))
        .json(&serde_json::json!({"kind": "cut_json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        http.delete(format!("{base}_sim/faults/{tid}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.post(format!("{base}_sim/faults/nope"))
            .json(&serde_json::json!({"kind": "cut_json"}))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let created: Value = http
        .post(format!("{base}_sim/tenants/{tid}/incidents"))
        .json(&serde_json::json!({"alerts": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inc = created["incident_id"].as_str().unwrap().to_string();
    let touched: Value = http
        .post(format!("{base}_sim/tenants/{tid}/incidents/{inc}/touch"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(touched["last_update"].is_string());
    let burst = http
        .post(format!("{base}_sim/tenants/{tid}/alerts/burst"))
        .json(&serde_json::json!({"count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(burst.status(), StatusCode::OK);

    let paused: Value = http
        .post(format!("{base}_sim/activity/pause"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paused["paused"], true);
    http.post(format!("{base}_sim/activity/resume"))
        .send()
        .await
        .unwrap();

    let gt: Vec<Value> = http
        .get(format!("{base}_sim/ground-truth"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(gt.len(), sim.ground_truth().len());
    assert!(gt
        .iter()
        .any(|g| g["feed"] == "m365d_incidents" && g["id"] == inc.as_str()));
    let stats: Value = http
        .get(format!("{base}_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["requests"].as_u64().unwrap() >= 2);
    assert!(stats["requests_by_feed"]["graph_alerts"].as_u64().unwrap() >= 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_prompt_with_idle_keep_alive_connections() {
    let sim = Sim::start(quiet(1)).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}{}", sim.base_url(), path(Feed::GraphAlerts));
    http.get(&url)
        .bearer_auth(token(&sim, 0, Feed::GraphAlerts))
        .send()
        .await
        .unwrap();
    let addr = sim.local_addr();
    assert_eq!(sim.endpoints().graph.as_str(), sim.base_url().as_str());
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn connection_reset_is_a_tcp_rst_before_any_response_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Sim::start(quiet(1)).await.unwrap();
    let tid = sim.tenants()[0].tenant_id.clone();
    sim.set_fault(&tid, ApiFault::new(FaultKind::ConnectionReset).times(1))
        .unwrap();
    let mut conn = tokio::net::TcpStream::connect(sim.local_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /v1.0/security/alerts_v2 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        sim.local_addr(),
        token(&sim, 0, Feed::GraphAlerts)
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let err = conn.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty(), "no response byte before the reset");
    // The next connection works.
    assert_eq!(
        get(&sim, Feed::GraphAlerts, "").await.status,
        StatusCode::OK
    );
    sim.shutdown().await;
}
