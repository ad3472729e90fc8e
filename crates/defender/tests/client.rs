//! The client against a scripted HTTP server: retries, quotas, tokens, error mapping and
//! the paging algorithm over a fake list API with exact control over the data.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{at, CountingTokens, FakeApi, Mock, Reply};
use relay_config::{Audience, Feed};
use relay_defender::{
    ClientOptions, DefenderClient, DefenderError, FeedPaging, Item, ParseError, Quota, RateLimits,
    RetryPolicy,
};

fn fast_options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_throttled: 3,
            max_retry_after: Duration::from_secs(5),
        },
        rate_limits: RateLimits::unlimited(),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn client(tokens: Arc<CountingTokens>, options: ClientOptions) -> DefenderClient {
    DefenderClient::new(reqwest::Client::new(), tokens, options)
}

const ONE: &str = r#"{"value":[{"id":"a1","lastUpdateDateTime":"2024-05-01T10:00:00.1234567Z"}]}"#;

fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    (at("2024-05-01T00:00:00Z"), at("2024-05-02T00:00:00Z"))
}

async fn drain(
    client: &DefenderClient,
    mock: &Mock,
    feed: Feed,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Item>, DefenderError> {
    let mut pager = client.window(&mock.tenant(), feed, from, to);
    let mut all = Vec::new();
    while let Some(items) = pager.next_page().await? {
        assert!(!items.is_empty(), "batches are never empty");
        assert!(
            client.admission().stats().in_flight >= 1,
            "a batch keeps its slot"
        );
        all.extend(items);
    }
    // The window is done: its slot is free while the caller commits its end.
    assert_eq!(client.admission().stats().in_flight, 0);
    Ok(all)
}

async fn one_page(
    client: &DefenderClient,
    mock: &Mock,
    feed: Feed,
) -> Result<Vec<Item>, DefenderError> {
    let (from, to) = window();
    drain(client, mock, feed, from, to).await
}

#[tokio::test]
async fn sends_partner_headers_and_bearer() {
    let mock = Mock::start(|_, _| Reply::json(200, ONE)).await;
    let tokens = Arc::new(CountingTokens::default());
    let c = client(tokens.clone(), fast_options());
    let items = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(
        (item.tenant.as_str(), item.tenant_id.as_str()),
        ("contoso", "00000000-0000-0000-0000-0000000000c1")
    );
    assert_eq!((item.feed, item.id.as_str()), (Feed::GraphAlerts, "a1"));
    assert_eq!(
        item.raw.get(),
        r#"{"id":"a1","lastUpdateDateTime":"2024-05-01T10:00:00.1234567Z"}"#
    );
    let reqs = mock.requests();
    let r = &reqs[0];
    assert_eq!(r.header("authorization"), Some("Bearer tok-0"));
    assert_eq!(
        r.header("user-agent"),
        Some(concat!("xdr-relay/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(r.header("prefer"), Some("include-unknown-enum-members"));
    assert_eq!(r.path(), "/v1.0/security/alerts_v2");
    assert_eq!(
        tokens.asked.lock().unwrap()[0],
        ("contoso".to_string(), Audience::Graph)
    );

    // Not on the Defender APIs, which do not know the header.
    let body = r#"{"value":[{"incidentId":7,"lastUpdateTime":"2024-05-01T10:00:00Z"}]}"#;
    let mock = Mock::start(move |_, _| Reply::json(200, body)).await;
    let c = client(
        tokens.clone(),
        ClientOptions {
            user_agent: "mssp-x/1.0".into(),
            ..fast_options()
        },
    );
    let items = one_page(&c, &mock, Feed::M365dIncidents).await.unwrap();
    assert_eq!(items[0].id, "7");
    let r = &mock.requests()[0];
    assert_eq!(r.header("prefer"), None);
    assert_eq!(r.header("user-agent"), Some("mssp-x/1.0"));
    assert_eq!(r.path(), "/api/incidents");
}

#[tokio::test]
async fn server_errors_and_resets_are_retried() {
    let mock = Mock::start(|_, i| match i {
        0 => Reply::json(
            503,
            r#"{"error":{"code":"ServiceUnavailable","message":"try later"}}"#,
        ),
        1 => Reply::Close,
        _ => Reply::json(200, ONE),
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let items = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn persistent_server_error_gives_up_after_max_attempts() {
    let mock = Mock::start(|_, _| {
        Reply::json(
            500,
            r#"{"error":{"code":"InternalServerError","message":"boom"}}"#,
        )
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::MdeAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Server { status: 500, attempts: 3, detail, .. } if detail == "InternalServerError: boom"),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(err.tenant(), "contoso");
    assert_eq!(err.endpoint(), format!("{}api/alerts", mock.url()));
    assert!(
        !err.to_string().contains("$filter"),
        "no query in errors: {err}"
    );
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn connection_refused_is_a_network_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let tenant = relay_defender::TenantTarget {
        name: "gone".into(),
        tenant_id: "t".into(),
        endpoints: relay_config::Endpoints::single_host(
            &url::Url::parse(&format!("http://{addr}/")).unwrap(),
        ),
    };
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let (from, to) = window();
    let err = c
        .window(&tenant, Feed::GraphIncidents, from, to)
        .next_page()
        .await
        .unwrap_err();
    assert!(
        matches!(err, DefenderError::Network { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(!chain.contains("$filter"), "{chain}");
}

#[tokio::test]
async fn retry_after_is_honoured_and_counted_per_tenant() {
    let mock = Mock::start(|_, i| match i {
        0 => Reply::json(429, include_str!("../testdata/mde-429-quota-minute.json"))
            .with_header("Retry-After", "2"),
        _ => Reply::json(200, r#"{"value":[]}"#),
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let pager_result = one_page(&c, &mock, Feed::MdeAlerts).await.unwrap();
    assert!(pager_result.is_empty());
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_secs(2), "waited only {gap:?}");
    assert!(gap < Duration::from_secs(4), "waited {gap:?}");
}

#[tokio::test]
async fn a_quota_stated_by_a_429_is_kept_to_from_then_on() {
    let mock = Mock::start(|_, i| match i {
        0 | 1 => Reply::json(429, include_str!("../testdata/mde-429-quota-minute.json"))
            .with_header("Retry-After", "0"),
        _ => Reply::json(200, r#"{"value":[]}"#),
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    assert!(one_page(&c, &mock, Feed::MdeAlerts)
        .await
        .unwrap()
        .is_empty());
    let mde = relay_defender::ApiFamily::Mde.index();
    // Learned once, however often it is said.
    assert_eq!(c.limiter().headroom()[mde].learned, 1);
    // The tenant now keeps to 40 a minute (a tenth under 45), starting from an empty
    // bucket refilled every 60 s / 32: three more requests take over 5 s.
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        one_page(&c, &mock, Feed::MdeAlerts).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "3 requests went out in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let mock = Mock::start(|_, i| match i {
        0 => {
            let when = (Utc::now() + TimeDelta::seconds(2))
                .to_rfc2822()
                .replace("+0000", "GMT");
            Reply::json(429, include_str!("../testdata/graph-429.json"))
                .with_header("Retry-After", &when)
        }
        _ => Reply::json(200, ONE),
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    let reqs = mock.requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(900), "waited only {gap:?}");
}

#[tokio::test]
async fn long_retry_after_is_quota_exhausted_and_blocks_the_tenant() {
    let mock = Mock::start(|_, _| {
        Reply::json(429, include_str!("../testdata/mde-429-quota-minute.json"))
            .with_header("Retry-After", "3600")
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::M365dIncidents).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::QuotaExhausted { detail, .. } if detail.contains("maximum allowed 45 per 00:01:00")),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 1);
    let blocked = c
        .limiter()
        .blocked_for(&mock.tenant().tenant_id, relay_defender::ApiFamily::M365d)
        .unwrap();
    assert!(blocked > Duration::from_secs(3500), "{blocked:?}");
    // Other families of the tenant are not blocked.
    assert_eq!(
        c.limiter()
            .blocked_for(&mock.tenant().tenant_id, relay_defender::ApiFamily::Graph),
        None
    );
}

#[tokio::test]
async fn repeated_429_gives_up_after_max_throttled() {
    let mock = Mock::start(|_, _| {
        Reply::json(429, include_str!("../testdata/graph-429.json")).with_header("Retry-After", "0")
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::QuotaExhausted { detail, .. } if detail == "TooManyRequests: Too many requests."),
        "{err:?}"
    );
    assert_eq!(
        mock.requests().len(),
        4,
        "first try + max_throttled retries"
    );
}

#[tokio::test]
async fn quota_is_applied_before_sending() {
    let mock = Mock::start(|_, _| Reply::json(200, r#"{"value":[]}"#)).await;
    let options = ClientOptions {
        rate_limits: RateLimits {
            graph: vec![Quota {
                limit: 3,
                per: Duration::from_secs(2),
                burst: 2,
            }],
            ..RateLimits::unlimited()
        },
        ..fast_options()
    };
    let c = client(Arc::new(CountingTokens::default()), options);
    for _ in 0..3 {
        one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    }
    let reqs = mock.requests();
    assert!(reqs[1].at - reqs[0].at < Duration::from_millis(1000));
    assert!(
        reqs[2].at - reqs[0].at >= Duration::from_millis(1900),
        "{:?}",
        reqs[2].at - reqs[0].at
    );
}

#[tokio::test]
async fn expired_token_is_invalidated_and_replaced_once() {
    let mock = Mock::start(|r, _| {
        if r.header("authorization") == Some("Bearer tok-0") {
            Reply::json(
                401,
                r#"{"error":{"code":"Unauthorized","message":"token expired"}}"#,
            )
        } else {
            Reply::json(200, ONE)
        }
    })
    .await;
    let tokens = Arc::new(CountingTokens::default());
    let c = client(tokens.clone(), fast_options());
    let items = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        tokens.invalidated.lock().unwrap().as_slice(),
        [("contoso".to_string(), Audience::Graph, "tok-0".to_string())]
    );
    assert_eq!(
        mock.requests()[1].header("authorization"),
        Some("Bearer tok-1")
    );
}

#[tokio::test]
async fn a_redirect_is_an_error_naming_where_it_pointed() {
    let mock = Mock::start(|_, _| {
        Reply::json(302, "").with_header(
            "Location",
            "https://login.example.invalid/signin?token=secret-in-query",
        )
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let c = DefenderClient::new(http, Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(format!("{err:?}").contains("302"), "{err:?}");
    assert!(
        format!("{err:?}").contains("redirect to https://login.example.invalid/signin"),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("secret-in-query"), "{err:?}");
    assert_eq!(mock.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn second_401_is_unauthorized() {
    let mock = Mock::start(|_, _| {
        Reply::json(
            401,
            r#"{"error":{"code":"Unauthorized","message":"no roles"}}"#,
        )
    })
    .await;
    let tokens = Arc::new(CountingTokens::default());
    let c = client(tokens.clone(), fast_options());
    let err = one_page(&c, &mock, Feed::MdeAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Unauthorized { detail, .. } if detail == "Unauthorized: no roles"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(tokens.invalidated.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn forbidden_and_bad_request_are_not_retried() {
    let mock = Mock::start(|_, _| Reply::json(403, r#"{"error":{"code":"Forbidden","message":"Missing application roles. API required roles: Incident.Read.All"}}"#)).await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::M365dIncidents).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Forbidden { detail, .. } if detail.contains("Incident.Read.All")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.requests().len(), 1);

    let mock = Mock::start(|_, _| {
        Reply::json(
            404,
            include_str!("../testdata/mde-error-resourcenotfound.json"),
        )
    })
    .await;
    let err = one_page(&c, &mock, Feed::MdeAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Api { status: 404, detail, .. } if detail == "ResourceNotFound: Machine 123123123 was not found"),
        "{err:?}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn html_page_is_a_typed_error_after_retries() {
    let mock = Mock::start(|_, _| Reply::Http {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: b"<html><body>Service Unavailable</body></html>".to_vec(),
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphIncidents).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Html { status: 200, snippet, .. } if snippet.contains("Service Unavailable")),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 3);

    // An HTML 502 from a gateway, recognised by its body alone, is retried too.
    let mock = Mock::start(|_, _| Reply::Http {
        status: 502,
        headers: vec![],
        body: b"  <html>Bad Gateway</html>".to_vec(),
    })
    .await;
    let err = one_page(&c, &mock, Feed::GraphIncidents).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Html { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 3);

    // An HTML 404: the base URL points at some web site, not the API.
    let mock = Mock::start(|_, _| Reply::Http {
        status: 404,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        body: b"not found".to_vec(),
    })
    .await;
    let err = one_page(&c, &mock, Feed::GraphIncidents).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Html { status: 404, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn partial_content_is_never_a_page() {
    let mock = Mock::start(|_, _| {
        Reply::json(206, ONE).with_header("Warning", r#"199 - "Microsoft/MDE/503/2800""#)
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::PartialContent { warning, .. } if warning.contains("Microsoft/MDE/503")),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 3);
}

#[tokio::test]
async fn cut_bodies_are_truncated_errors() {
    // Content-Length promises more than arrives.
    let mock = Mock::start(|_, _| {
        Reply::Raw(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{}", &ONE[..40]).into_bytes())
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DefenderError::Body {
                source: ParseError::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(mock.requests().len(), 3);

    // No length at all: the JSON itself is incomplete.
    let mock = Mock::start(|_, _| {
        Reply::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{}",
                &ONE[..40]
            )
            .into_bytes(),
        )
    })
    .await;
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DefenderError::Body {
                source: ParseError::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let big = format!(
        r#"{{"value":[{{"id":"{}","lastUpdateDateTime":"2024-05-01T10:00:00Z"}}]}}"#,
        "x".repeat(5000)
    );
    let mock = Mock::start(move |_, _| Reply::json(200, big.clone())).await;
    let c = client(
        Arc::new(CountingTokens::default()),
        ClientOptions {
            max_body_bytes: 4096,
            ..fast_options()
        },
    );
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Body { source: ParseError::Malformed { detail }, .. } if detail.contains("4096")),
        "{err:?}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn malformed_json_is_not_retried() {
    let mock = Mock::start(|_, _| {
        Reply::json(
            200,
            r#"{"value":[{"id":"a","lastUpdateDateTime":"2024-05-01T10:00:00Z"},}"#,
        )
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DefenderError::Body {
                source: ParseError::Malformed { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(mock.requests().len(), 1);

    let mock = Mock::start(|_, _| {
        Reply::json(
            200,
            r#"{"value":[{"id":"da9","createdDateTime":"2024-05-01T10:00:00Z"}]}"#,
        )
    })
    .await;
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains("da9") && msg.contains("lastUpdateDateTime"),
        "{msg}"
    );
}

#[tokio::test]
async fn after_an_error_the_pager_retries_the_same_page() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let api = Arc::new(FakeApi::new(
        Feed::GraphAlerts,
        items(1500, "2024-05-01T00:00:00Z", 1000),
    ));
    let api2 = api.clone();
    let mock = Mock::start(move |r, _| {
        if c2.fetch_add(1, Ordering::SeqCst) == 1 {
            Reply::json(400, r#"{"error":{"code":"BadRequest","message":"once"}}"#)
        } else {
            api2.handle(r)
        }
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let (from, to) = window();
    let mut pager = c.window(&mock.tenant(), Feed::GraphAlerts, from, to);
    let first = pager.next_page().await.unwrap().unwrap();
    assert!(pager.next_page().await.is_err());
    let mut all: Vec<Item> = first;
    while let Some(items) = pager.next_page().await.unwrap() {
        all.extend(items);
    }
    assert_complete(&api, &all, from, to);
}

// ---- paging ----------------------------------------------------------------------

/// `n` items starting at `start`, `step_ms` apart.
fn items(n: usize, start: &str, step_ms: i64) -> Vec<(String, DateTime<Utc>)> {
    let t0 = at(start);
    (0..n)
        .map(|i| {
            (
                format!("{}", 1000 + i),
                t0 + TimeDelta::milliseconds(step_ms * i as i64),
            )
        })
        .collect()
}

fn assert_complete(api: &FakeApi, got: &[Item], from: DateTime<Utc>, to: DateTime<Utc>) {
    let mut want: Vec<(String, DateTime<Utc>)> = api
        .items
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| from <= *t && *t < to)
        .cloned()
        .collect();
    want.sort();
    let mut have: Vec<(String, DateTime<Utc>)> =
        got.iter().map(|i| (i.id.clone(), i.last_update)).collect();
    have.sort();
    have.dedup();
    assert_eq!(have.len(), want.len(), "distinct items");
    assert_eq!(have, want);
    for i in got {
        assert!(from <= i.last_update && i.last_update < to);
    }
}

async fn drain_fake(
    feed: Feed,
    data: Vec<(String, DateTime<Utc>)>,
    options: ClientOptions,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (
    Arc<FakeApi>,
    Mock,
    Result<Vec<Item>, DefenderError>,
    relay_defender::PagerStats,
) {
    let api = Arc::new(FakeApi::new(feed, data));
    let api2 = api.clone();
    let mock = Mock::start(move |r, _| api2.handle(r)).await;
    let c = client(Arc::new(CountingTokens::default()), options);
    let mut pager = c.window(&mock.tenant(), feed, from, to);
    let mut all = Vec::new();
    let result = loop {
        match pager.next_page().await {
            Ok(Some(items)) => all.extend(items),
            Ok(None) => break Ok(all),
            Err(e) => break Err(e),
        }
    };
    let stats = pager.stats();
    (api, mock, result, stats)
}

fn max_skip_sent(mock: &Mock) -> u32 {
    mock.requests()
        .iter()
        .filter_map(|r| r.query().get("$skip").map(|s| s.parse::<u32>().unwrap()))
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn graph_alerts_large_backlog_splits_by_time_never_skipping_past_500() {
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-01T02:00:00Z"));
    let (api, mock, result, stats) = drain_fake(
        Feed::GraphAlerts,
        items(5200, "2024-05-01T00:00:00Z", 1000),
        fast_options(),
        from,
        to,
    )
    .await;
    let got = result.unwrap();
    assert_complete(&api, &got, from, to);
    assert_eq!(
        max_skip_sent(&mock),
        0,
        "top 1000 > max_skip 500: time splitting only"
    );
    assert!(stats.splits >= 4, "{stats:?}");
    for r in mock.requests() {
        assert_eq!(
            r.query().get("$orderby").map(String::as_str),
            Some("lastUpdateDateTime asc")
        );
    }
}

#[tokio::test]
async fn graph_incidents_skip_up_to_500_then_split() {
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-02T00:00:00Z"));
    let (api, mock, result, stats) = drain_fake(
        Feed::GraphIncidents,
        items(1234, "2024-05-01T00:00:00Z", 10),
        fast_options(),
        from,
        to,
    )
    .await;
    assert_complete(&api, &result.unwrap(), from, to);
    assert_eq!(max_skip_sent(&mock), 500);
    assert!(stats.splits >= 1);
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.query().get("$expand").map(String::as_str) == Some("alerts")));
}

#[tokio::test]
async fn many_items_sharing_one_timestamp_across_page_boundaries() {
    // 50 before, 530 at one instant, 50 after: the instant spans many pages (of 50 on
    // Graph incidents, of 100 on XDR). 550 (`max_skip` + `$top`) is all `$skip` can
    // reach within one instant; more is the error tested below.
    let mut data = items(50, "2024-05-01T00:00:00Z", 1);
    data.extend((0..530).map(|i| (format!("tie{i:04}"), at("2024-05-01T01:00:00.5000001Z"))));
    data.extend(
        items(50, "2024-05-01T02:00:00Z", 1)
            .into_iter()
            .map(|(id, t)| (format!("b{id}"), t)),
    );
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-02T00:00:00Z"));
    for feed in [Feed::GraphIncidents, Feed::M365dIncidents] {
        let (api, mock, result, stats) =
            drain_fake(feed, data.clone(), fast_options(), from, to).await;
        assert_complete(&api, &result.unwrap(), from, to);
        assert!(max_skip_sent(&mock) <= 500, "{feed}");
        assert!(stats.splits >= 1, "{feed}: {stats:?}");
    }
}

#[tokio::test]
async fn an_instant_larger_than_a_page_is_read_with_overlapping_skip() {
    // Graph alerts: pages of 1000, `$skip` ≤ 500, so one instant can hold up to 1500.
    let mut data = items(10, "2024-05-01T00:00:00Z", 1);
    data.extend((0..1499).map(|i| (format!("tie{i:04}"), at("2024-05-01T01:00:00Z"))));
    data.extend(
        items(10, "2024-05-01T02:00:00Z", 1)
            .into_iter()
            .map(|(id, t)| (format!("b{id}"), t)),
    );
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-02T00:00:00Z"));
    let (api, mock, result, _) =
        drain_fake(Feed::GraphAlerts, data, fast_options(), from, to).await;
    assert_complete(&api, &result.unwrap(), from, to);
    assert_eq!(max_skip_sent(&mock), 500);
}

#[tokio::test]
async fn xdr_newest_first_splits_below_the_oldest_of_the_page() {
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-01T12:00:00Z"));
    let (api, mock, result, stats) = drain_fake(
        Feed::M365dIncidents,
        items(2345, "2024-05-01T00:00:00Z", 3000),
        fast_options(),
        from,
        to,
    )
    .await;
    assert_complete(&api, &result.unwrap(), from, to);
    assert!(max_skip_sent(&mock) <= 500);
    assert!(stats.splits >= 3, "{stats:?}");
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.query().get("$top").map(String::as_str) == Some("100")));
}

#[tokio::test]
async fn mde_unknown_order_bisects_when_skip_runs_out() {
    let options = ClientOptions {
        mde_alerts: FeedPaging {
            top: 100,
            max_skip: 200,
        },
        ..fast_options()
    };
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-01T12:00:00Z"));
    let (api, mock, result, stats) = drain_fake(
        Feed::MdeAlerts,
        items(1000, "2024-05-01T00:00:00Z", 7000),
        options,
        from,
        to,
    )
    .await;
    assert_complete(&api, &result.unwrap(), from, to);
    assert!(max_skip_sent(&mock) <= 200);
    assert!(stats.splits >= 1);
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.query().get("$expand").map(String::as_str) == Some("evidence")));
}

#[tokio::test]
async fn too_many_items_at_one_instant_is_an_error_not_a_short_window() {
    let mut data = items(10, "2024-05-01T00:00:00Z", 1);
    data.extend((0..1501).map(|i| (format!("tie{i:04}"), at("2024-05-01T01:00:00Z"))));
    let (from, to) = (at("2024-05-01T00:00:00Z"), at("2024-05-02T00:00:00Z"));
    let (_, mock, result, _) = drain_fake(Feed::GraphAlerts, data, fast_options(), from, to).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Paging { detail, .. } if detail.contains("2024-05-01T01:00:00")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(max_skip_sent(&mock) <= 500);
}

#[tokio::test]
async fn items_outside_the_exact_window_are_left_to_their_own_window() {
    // The printed window is widened to whole ticks; an item in the widened edge is not
    // returned for this window (`edge-hi` is not even fetched: `lt` the ceiled bound).
    let data = vec![
        ("edge-lo".to_string(), at("2024-05-01T00:00:00.0000001Z")),
        ("in".to_string(), at("2024-05-01T00:00:00.0000002Z")),
        ("edge-hi".to_string(), at("2024-05-01T00:00:00.0000003Z")),
    ];
    let from = at("2024-05-01T00:00:00.00000015Z");
    let to = at("2024-05-01T00:00:00.00000025Z");
    let (_, _, result, stats) = drain_fake(Feed::GraphAlerts, data, fast_options(), from, to).await;
    let got: Vec<String> = result.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(got, ["in"]);
    assert_eq!(stats.outside_window, 1);
}

#[tokio::test]
async fn next_link_is_followed_verbatim() {
    let mock = Mock::start(|r, _| {
        if r.target.contains("skiptoken=p2") {
            Reply::json(200, r#"{"value":[{"id":"b","lastUpdateDateTime":"2024-05-01T10:00:01Z"}]}"#)
        } else {
            let host = r.header("host").unwrap().to_string();
            Reply::json(200, format!(
                r#"{{"@odata.nextLink":"http://{host}/v1.0/security/alerts_v2?$skiptoken=p2","value":[{{"id":"a","lastUpdateDateTime":"2024-05-01T10:00:00Z"}}]}}"#
            ))
        }
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let items = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].target, "/v1.0/security/alerts_v2?$skiptoken=p2");
    assert_eq!(reqs[1].header("authorization"), Some("Bearer tok-0"));
}

#[tokio::test]
async fn next_link_to_another_host_is_refused() {
    let mock = Mock::start(|_, _| {
        Reply::json(200, r#"{"@odata.nextLink":"http://127.0.0.2:1/v1.0/security/alerts_v2?$skiptoken=x","value":[{"id":"a","lastUpdateDateTime":"2024-05-01T10:00:00Z"}]}"#)
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let err = one_page(&c, &mock, Feed::GraphAlerts).await.unwrap_err();
    assert!(
        matches!(&err, DefenderError::Paging { detail, .. } if detail.contains("another host")),
        "{err:?}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn next_link_with_deep_skip_is_replaced_by_time_splitting() {
    let api = Arc::new(FakeApi::new(
        Feed::GraphIncidents,
        items(700, "2024-05-01T00:00:00Z", 1000),
    ));
    let api2 = api.clone();
    let mock = Mock::start(move |r, _| {
        // Like Graph: a nextLink with $skip, even past what it accepts.
        let Reply::Http {
            status: 200, body, ..
        } = api2.handle(r)
        else {
            return api2.handle(r);
        };
        let q = r.query();
        let skip: u32 = q.get("$skip").map_or(0, |s| s.parse().unwrap());
        let top: u32 = q["$top"].parse().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["value"].as_array().unwrap().len() < top as usize {
            return Reply::json(200, body);
        }
        let host = r.header("host").unwrap().to_string();
        let base = r.target.split("&$skip").next().unwrap().to_string();
        let link = format!("http://{host}{base}&$skip={}", skip + top);
        let mut v = v;
        v["@odata.nextLink"] = serde_json::Value::String(link);
        Reply::json(200, serde_json::to_vec(&v).unwrap())
    })
    .await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let (from, to) = window();
    let got = drain(&c, &mock, Feed::GraphIncidents, from, to)
        .await
        .unwrap();
    assert_complete(&api, &got, from, to);
    assert!(max_skip_sent(&mock) <= 500, "{}", max_skip_sent(&mock));
}

#[tokio::test]
async fn empty_window_sends_nothing() {
    let mock = Mock::start(|_, _| Reply::json(200, ONE)).await;
    let c = client(Arc::new(CountingTokens::default()), fast_options());
    let t = at("2024-05-01T00:00:00Z");
    assert!(drain(&c, &mock, Feed::GraphAlerts, t, t)
        .await
        .unwrap()
        .is_empty());
    assert!(mock.requests().is_empty());
}

mod random_windows {
    //! The paging algorithm against random data: whatever the clustering of timestamps,
    //! the page size and the `$skip` ceiling, a window is either returned completely or
    //! fails with a paging error, and the error only when some instant holds more items
    //! than `$skip` can reach.

    use super::*;
    use proptest::prelude::*;

    /// Items over `spread_ms` with few distinct instants, so that ties are common.
    fn dataset() -> impl Strategy<Value = (Vec<(String, DateTime<Utc>)>, i64)> {
        (
            prop::collection::vec((0i64..40, 0i64..3), 0..400),
            1i64..86_400_000,
            1i64..=40,
        )
            .prop_map(|(cells, spread_ms, slots)| {
                let t0 = at("2024-05-01T00:00:00Z");
                let items = cells
                    .into_iter()
                    .enumerate()
                    .map(|(i, (slot, sub))| {
                        let t = t0
                            + TimeDelta::milliseconds(spread_ms * (slot % slots) / 40)
                            + TimeDelta::nanoseconds(100 * sub);
                        (format!("{}", 10_000 + i), t)
                    })
                    .collect();
                (items, spread_ms)
            })
    }

    fn feed() -> impl Strategy<Value = Feed> {
        prop::sample::select(Feed::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn window_is_complete_or_a_paging_error(
            (data, spread_ms) in dataset(),
            feed in feed(),
            top in prop_oneof![1u32..8, 1u32..60],
            max_skip in prop_oneof![0u32..20, 0u32..150],
            from_pct in -10i64..100,
            len_pct in 1i64..130,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let paging = FeedPaging { top, max_skip };
                let options = ClientOptions {
                    m365d_incidents: paging,
                    mde_alerts: paging,
                    graph_incidents: paging,
                    graph_alerts: paging,
                    ..fast_options()
                };
                let from = at("2024-05-01T00:00:00Z") + TimeDelta::milliseconds(spread_ms * from_pct / 100);
                let to = from + TimeDelta::milliseconds((spread_ms * len_pct / 100).max(1));
                let (api, mock, result, _) = drain_fake(feed, data.clone(), options, from, to).await;
                let mut per_instant = std::collections::HashMap::new();
                for (_, t) in data.iter().filter(|(_, t)| from <= *t && *t < to) {
                    *per_instant.entry(*t).or_insert(0u32) += 1;
                }
                // With `max_skip + top` items at one instant the last page is full, so
                // whether more follow cannot be known: that is an error too.
                let reachable = max_skip + top;
                let crowded = per_instant.values().any(|n| *n >= reachable);
                match result {
                    Ok(items) => assert_complete(&api, &items, from, to),
                    Err(DefenderError::Paging { .. }) => {
                        assert!(crowded, "paging error though every instant holds fewer than {reachable}");
                    }
                    Err(e) => panic!("{e:?}"),
                }
                assert!(max_skip_sent(&mock) <= max_skip);
            });
        }
    }
}
