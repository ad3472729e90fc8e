//! End-to-end tests of the admin endpoint: the real `xdr-relay run` against the simulator,
//! scraped over HTTP, its `/metrics` parsed line by line; the credential warnings of a
//! certificate tenant whose certificate lapses in a few days, in the metrics, the log and
//! `xdr-relay status`; 429s, token requests and sink ack latency counted as they happen;
//! a taken admin port refusing the start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;
use util::*;

/// One sample of the exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format strictly: every line is a `# HELP` / `# TYPE`
/// comment or `name{label="value",...} value`, every sample belongs to a family whose
/// `# TYPE` came before it (a histogram's samples are its `_bucket`, `_sum` and `_count`),
/// and a family's samples are not interleaved with another's.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut typed: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut histogram = false;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            match keyword {
                "HELP" => assert!(parts.next().is_some_and(|h| !h.is_empty()), "{}", at()),
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&kind),
                        "{}",
                        at()
                    );
                    histogram = kind == "histogram";
                    assert!(
                        typed.insert(name.to_string()),
                        "family typed twice: {}",
                        at()
                    );
                    current = Some(name.to_string());
                }
                _ => panic!("unknown comment: {}", at()),
            }
            assert!(valid_name(name), "{}", at());
            continue;
        }
        assert!(!line.is_empty(), "empty line: {}", at());
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {}", at()));
        let name = &line[..name_end];
        assert!(valid_name(name), "{}", at());
        let family = match name.rsplit_once('_') {
            Some((family, "bucket" | "sum" | "count")) if histogram => family,
            _ => name,
        };
        assert_eq!(
            current.as_deref(),
            Some(family),
            "sample outside its family: {}",
            at()
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            loop {
                let start = chars.peek().map(|(i, _)| *i).unwrap();
                let eq = body[start..]
                    .find('=')
                    .unwrap_or_else(|| panic!("{}", at()))
                    + start;
                let label = &body[start..eq];
                assert!(valid_name(label), "label {label:?}: {}", at());
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{}", at());
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated: {}", at()))
                    {
                        (_, '"') => break,
                        (_, '\\') => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?}: {}", at()),
                        },
                        (_, c) => value.push(c),
                    }
                }
                assert!(
                    labels.insert(label.to_string(), value).is_none(),
                    "repeated label: {}",
                    at()
                );
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((i, '}')) => {
                        rest = &body[i + 1..];
                        break;
                    }
                    other => panic!("unexpected {other:?}: {}", at()),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {}", at())),
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[test]
fn the_test_parser_rejects_what_prometheus_would() {
    let good = "# HELP m h\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\n\",b=\"\"} 1.5\nm 2\n";
    let s = parse_exposition(good);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].labels["a"], "x\"y\\z\n");
    assert_eq!(s[0].value, 1.5);
    let histogram = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                     h_sum 3.5\nh_count 2\n";
    assert_eq!(parse_exposition(histogram).len(), 4);
    for bad in [
        "m 1\n",                                 // no TYPE
        "# TYPE m gauge\nm{a=\"x} 1\n",          // unterminated
        "# TYPE m gauge\nm{a=x} 1\n",            // unquoted
        "# TYPE m gauge\nm  1\n",                // bad value
        "# TYPE m gauge\nm{a=\"\\t\"} 1\n",      // bad escape
        "# TYPE m gauge\n# TYPE n gauge\nm 1\n", // interleaved
        "# TYPE m gauge\nm_sum 1\n",             // suffix of a non-histogram
        "# TYPE m histogram\nm_total 1\n",       // not a histogram series
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}

/// The samples called `name` whose labels include every `(label, value)` of `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The single sample `name{with}`; panics naming it when absent or repeated.
fn one(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, with);
    assert_eq!(found.len(), 1, "{name}{with:?}: {found:?}");
    found[0].value
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed RSA certificate (what Entra accepts) lapsing `valid_for` from now, and
/// its PKCS#8 key.
fn rsa_certificate(valid_for: Duration) -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["xdr-relay admin test".into()]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + (now - Duration::from_secs(3600));
    params.not_after = epoch + (now + valid_for);
    (params.self_signed(&pair).unwrap().pem(), key_pem)
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Admin {
        Admin {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// (status, content type, body), or `None` while nothing answers.
    async fn get(&self, path: &str) -> Option<(u16, String, String)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((status, ct, r.text().await.ok()?))
    }

    async fn metrics(&self) -> Vec<Sample> {
        let (status, ct, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        parse_exposition(&body)
    }
}

/// Three tenants against the simulator, the second one signing in with a certificate that
/// lapses in five days: every per-tenant series is there with sane values, the probes
/// answer, and the certificate is warned about in the metrics, the log and `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_probes_and_credential_warnings_of_a_running_relay() {
    let port = free_port();
    let mut setup = Setup::default();
    setup.sim.tenants = 3;
    setup.files.extra_toml = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    let h = Harness::start(setup).await;

    // Tenant 1 switches to a certificate that lapses in 5 days.
    let cert_tenant = h.sim.tenants()[1].clone();
    let (cert_pem, key_pem) = rsa_certificate(Duration::from_secs(5 * 86_400));
    h.sim
        .entra()
        .register_certificate(&cert_tenant.tenant_id, &cert_tenant.client_id, &cert_pem)
        .unwrap();
    fs::write(h.path("secrets/cert.pem"), &cert_pem).unwrap();
    fs::write(h.path("secrets/cert.key"), &key_pem).unwrap();
    fs::write(
        h.path(&format!("tenants.d/{}.toml", cert_tenant.name)),
        format!(
            "name = \"{name}\"\ntenant_id = \"{tid}\"\nstreams = [\"incidents\", \"alerts\"]\n\
             sinks = [\"file\"]\napi = \"{api}\"\n\n[cloud]\nbase = \"{base}\"\n\n\
             [auth]\nkind = \"certificate\"\nclient_id = \"{cid}\"\n\
             certificate_file = \"secrets/cert.pem\"\nprivate_key = {{ file = \"secrets/cert.key\" }}\n",
            name = cert_tenant.name,
            tid = cert_tenant.tenant_id,
            api = api_of(1),
            base = h.sim.base_url(),
            cid = cert_tenant.client_id,
        ),
    )
    .unwrap();

    let mut relay = KillOnDrop(h.spawn_relay(0));
    let admin = Admin::new(port);

    // /healthz answers as soon as the relay is up.
    let start = std::time::Instant::now();
    let health = loop {
        if let Some(answer) = admin.get("/healthz").await {
            break answer;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no /healthz on port {port}:\n{}",
            h.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        health,
        (200, "text/plain; charset=utf-8".into(), "ok".into())
    );

    // A couple of poll intervals: every feed polled successfully at least twice.
    let tenants: Vec<String> = h.sim.tenants().iter().map(|t| t.name.clone()).collect();
    let polled_twice = |samples: &[Sample]| {
        tenants.iter().all(|t| {
            ["incidents", "alerts"].iter().all(|s| {
                find(
                    samples,
                    "xdr_relay_polls_total",
                    &[("tenant", t), ("stream", s), ("outcome", "success")],
                )
                .first()
                .is_some_and(|x| x.value >= 2.0)
            })
        })
    };
    let start = std::time::Instant::now();
    let samples = loop {
        let samples = admin.metrics().await;
        if polled_twice(&samples) {
            break samples;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "feeds not polled twice: {samples:#?}\n{}",
            h.log(0)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    for t in &tenants {
        for s in ["incidents", "alerts"] {
            let feed = [("tenant", t.as_str()), ("stream", s)];
            let with = |extra: (&'static str, &'static str)| {
                let mut l = feed.to_vec();
                l.push(extra);
                l
            };
            assert_eq!(
                one(
                    &samples,
                    "xdr_relay_polls_total",
                    &with(("outcome", "failure"))
                ),
                0.0
            );
            for outcome in ["transient", "needs_consent", "permanent", "state"] {
                assert_eq!(
                    one(
                        &samples,
                        "xdr_relay_poll_errors_total",
                        &with(("outcome", outcome))
                    ),
                    0.0,
                    "{t}/{s} {outcome}"
                );
            }
            let lag = one(&samples, "xdr_relay_lag_seconds", &feed);
            assert!((0.0..120.0).contains(&lag), "{t}/{s}: lag {lag}");
            assert!(one(&samples, "xdr_relay_items_total", &feed) >= 0.0);
            assert_eq!(
                one(&samples, "xdr_relay_poll_interval_seconds", &feed),
                10.0
            );
            let last = one(&samples, "xdr_relay_last_success_timestamp_seconds", &feed);
            let now = chrono::Utc::now().timestamp() as f64;
            assert!(
                now - last < 60.0 && last <= now + 1.0,
                "{t}/{s}: last success {last}"
            );
        }
        assert_eq!(
            one(
                &samples,
                "xdr_relay_auth_state",
                &[("tenant", t), ("state", "ok")]
            ),
            1.0
        );
        assert_eq!(
            one(
                &samples,
                "xdr_relay_auth_state",
                &[("tenant", t), ("state", "needs_consent")]
            ),
            0.0
        );
    }
    let items: f64 = find(&samples, "xdr_relay_items_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(items > 0.0, "the backlog was not polled");
    assert!(
        one(
            &samples,
            "xdr_relay_sink_events_sent_total",
            &[("sink", "file")]
        ) > 0.0
    );
    assert_eq!(
        one(
            &samples,
            "xdr_relay_sink_failures_total",
            &[("sink", "file")]
        ),
        0.0
    );
    assert!(one(&samples, "xdr_relay_outbox_events", &[("sink", "file")]) >= 0.0);
    assert!(
        one(
            &samples,
            "xdr_relay_outbox_oldest_age_seconds",
            &[("sink", "file")]
        ) >= 0.0
    );
    assert_eq!(
        one(
            &samples,
            "xdr_relay_sink_state",
            &[("sink", "file"), ("state", "stopped")]
        ),
        0.0
    );

    // Credentials: the certificate lapses in 5 days; refresh tokens were just rotated.
    let cert_left = one(
        &samples,
        "xdr_relay_credential_expiry_seconds",
        &[("tenant", &cert_tenant.name), ("kind", "certificate")],
    );
    assert!(
        (4.9 * 86_400.0..=5.0 * 86_400.0).contains(&cert_left),
        "certificate expiry in {cert_left} s"
    );
    for t in [&tenants[0], &tenants[2]] {
        let left = one(
            &samples,
            "xdr_relay_credential_expiry_seconds",
            &[("tenant", t), ("kind", "refresh_token")],
        );
        assert!(
            left > 89.0 * 86_400.0 && left <= 90.0 * 86_400.0,
            "{t}: {left}"
        );
    }
    assert!(find(
        &samples,
        "xdr_relay_credential_expiry_seconds",
        &[("tenant", &cert_tenant.name), ("kind", "refresh_token")]
    )
    .is_empty());

    // Ready: every feed polled, the sink fine.
    let (status, ct, body) = admin.get("/readyz").await.unwrap();
    assert_eq!(
        (status, ct.as_str(), body.as_str()),
        (200, "application/json", r#"{"ready":true}"#)
    );

    // The log warns about the certificate, naming the command that fixes it.
    let log = h.log(0);
    let warning = log
        .lines()
        .find(|l| l.contains("certificate expires") && l.contains(&cert_tenant.name))
        .unwrap_or_else(|| panic!("no certificate warning in the log:\n{log}"));
    assert!(
        warning.contains(&format!(
            "xdr-relay onboard --config {}",
            h.config_path().display()
        )) && warning.contains(&format!("--name {}", cert_tenant.name))
            && warning.contains("--admin-consent --certificate <new cert.pem>"),
        "{warning}"
    );
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");

    // Shutdown: the relay exits cleanly and the endpoint goes away with it.
    signal(&relay.0, "TERM");
    let code = wait_exit(&mut relay.0, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", h.log(0));
    assert!(
        admin.get("/healthz").await.is_none(),
        "still serving after exit"
    );

    // `status` shows the credential table and the warning with its fix.
    let out = h.run_cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("CREDENTIALS"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with(&cert_tenant.name) && l.contains(" certificate "))
        .unwrap_or_else(|| panic!("no certificate row:\n{text}"));
    assert!(
        row.trim_end().ends_with("4d") || row.trim_end().ends_with("5d"),
        "{row}"
    );
    for t in [&tenants[0], &tenants[2]] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(t.as_str()) && l.contains(" refresh_token ")),
            "no refresh token row of {t}:\n{text}"
        );
    }
    let expected_warning = format!("WARNING {}: certificate expires ", cert_tenant.name);
    let at = text
        .find(&expected_warning)
        .unwrap_or_else(|| panic!("no `{expected_warning}` in:\n{text}"));
    let fix_line = text[at..].lines().nth(1).unwrap();
    assert!(
        fix_line.starts_with("  fix: xdr-relay onboard ")
            && fix_line.contains(&format!("--name {}", cert_tenant.name))
            && fix_line.ends_with("--force"),
        "{fix_line}"
    );
    assert_eq!(text.matches("WARNING ").count(), 1, "{text}");

    let json = h.run_cmd(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let warnings = doc["credentials"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{doc:#}");
    assert_eq!(warnings[0]["tenant"], cert_tenant.name.as_str());
    assert_eq!(warnings[0]["problem"], "expiring");
    assert_eq!(warnings[0]["kind"], "certificate");
}

/// Tenant 1 is throttled — five 429s on its alerts feed: three waited out and retried
/// within one poll, a fourth that makes that poll give up, a fifth retried within the next
/// poll — and tenant 2's grant is revoked. The 429s show for tenant 1's alerts alone and
/// match what the API sent, token requests are counted per tenant, audience and outcome
/// as Entra saw them, and the file sink's ack-latency histogram is consistent and grows
/// with the batches delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_token_requests_and_ack_latency_are_counted() {
    use relay_sim::entra::{GrantKind, Outcome};
    use relay_sim::{ApiFault, FaultKind};

    let port = free_port();
    let mut setup = Setup::default();
    setup.sim.tenants = 3;
    setup.files.extra_toml = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    let h = Harness::start(setup).await;
    let tenants = h.sim.tenants().to_vec();
    let (throttled, revoked) = (&tenants[1], &tenants[2]);
    assert_eq!(api_of(1), "defender", "alerts of tenant 1 come from MDE");
    h.sim.entra().revoke_grant(&revoked.tenant_id);

    let mut relay = KillOnDrop(h.spawn_relay(0));
    let admin = Admin::new(port);
    let throttled_of = |samples: &[Sample], tenant: &str, stream: &str| {
        one(
            samples,
            "xdr_relay_throttled_total",
            &[("tenant", tenant), ("stream", stream)],
        )
    };

    // Every feed polled once (tenant 2's fail for want of consent), nothing throttled.
    let start = std::time::Instant::now();
    let polled = |samples: &[Sample]| {
        tenants.iter().all(|t| {
            ["incidents", "alerts"].iter().all(|s| {
                find(
                    samples,
                    "xdr_relay_polls_total",
                    &[("tenant", &t.name), ("stream", s)],
                )
                .iter()
                .map(|x| x.value)
                .sum::<f64>()
                    >= 1.0
            })
        })
    };
    let before = loop {
        if let Some((200, _, body)) = admin.get("/metrics").await {
            let samples = parse_exposition(&body);
            if polled(&samples) {
                break samples;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "feeds not polled:\n{}",
            h.log(0)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for t in &tenants {
        for s in ["incidents", "alerts"] {
            assert_eq!(throttled_of(&before, &t.name, s), 0.0, "{}/{s}", t.name);
        }
    }

    // The storm: five 429s, each asking for a 1 s wait.
    let storm = ApiFault::new(FaultKind::TooManyRequests {
        retry_after_secs: 1,
    })
    .on(relay_config::Feed::MdeAlerts)
    .times(5);
    h.sim.set_fault(&throttled.tenant_id, storm).unwrap();
    let start = std::time::Instant::now();
    let samples = loop {
        let samples = admin.metrics().await;
        let recovered = one(
            &samples,
            "xdr_relay_polls_total",
            &[
                ("tenant", &throttled.name),
                ("stream", "alerts"),
                ("outcome", "success"),
            ],
        ) >= 2.0;
        if throttled_of(&samples, &throttled.name, "alerts") >= 5.0 && recovered {
            break samples;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the storm did not pass: {:?}\n{}",
            find(&samples, "xdr_relay_throttled_total", &[]),
            h.log(0)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(throttled_of(&samples, &throttled.name, "alerts"), 5.0);
    assert_eq!(
        one(
            &samples,
            "xdr_relay_throttled_wait_seconds_total",
            &[("tenant", &throttled.name), ("stream", "alerts")]
        ),
        5.0
    );
    assert_eq!(
        one(
            &samples,
            "xdr_relay_poll_errors_total",
            &[
                ("tenant", &throttled.name),
                ("stream", "alerts"),
                ("outcome", "transient")
            ]
        ),
        1.0,
        "the fourth 429 of one page gives the poll up"
    );
    for t in &tenants {
        for s in ["incidents", "alerts"] {
            if (t.name.as_str(), s) != (throttled.name.as_str(), "alerts") {
                assert_eq!(throttled_of(&samples, &t.name, s), 0.0, "{}/{s}", t.name);
                let wait = one(
                    &samples,
                    "xdr_relay_throttled_wait_seconds_total",
                    &[("tenant", &t.name), ("stream", s)],
                );
                assert_eq!(wait, 0.0, "{}/{s}", t.name);
            }
        }
    }
    let counted: f64 = find(&samples, "xdr_relay_throttled_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(counted, h.sim.stats().throttled as f64, "every 429 sent");

    // Token requests: one per audience for the healthy tenants, as Entra counted them; the
    // revoked tenant learned it once and is answered from memory since.
    let requests = h.sim.entra().token_requests();
    let refreshes = |tenant: &str, outcome: &str| -> f64 {
        find(
            &samples,
            "xdr_relay_token_refreshes_total",
            &[("tenant", tenant), ("outcome", outcome)],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    };
    for (t, audiences) in [
        (&tenants[0], &["graph"][..]),
        (
            throttled,
            &["threat_protection", "windows_defender_atp"][..],
        ),
    ] {
        for audience in audiences {
            assert_eq!(
                one(
                    &samples,
                    "xdr_relay_token_refreshes_total",
                    &[
                        ("tenant", &t.name),
                        ("audience", audience),
                        ("outcome", "ok")
                    ]
                ),
                1.0,
                "{} {audience}",
                t.name
            );
        }
        let issued = requests.tenant(&t.tenant_id, GrantKind::RefreshToken, Outcome::Issued);
        assert_eq!(refreshes(&t.name, "ok"), issued as f64, "{}", t.name);
        assert_eq!(refreshes(&t.name, "failed"), 0.0, "{}", t.name);
        assert_eq!(refreshes(&t.name, "needs_consent"), 0.0, "{}", t.name);
    }
    assert_eq!(
        one(
            &samples,
            "xdr_relay_token_refreshes_total",
            &[
                ("tenant", &revoked.name),
                ("audience", "graph"),
                ("outcome", "needs_consent")
            ]
        ),
        1.0
    );
    assert_eq!(refreshes(&revoked.name, "ok"), 0.0);
    assert_eq!(
        requests.tenant(
            &revoked.tenant_id,
            GrantKind::RefreshToken,
            Outcome::Rejected
        ),
        1
    );

    // Ack latency: one observation per delivered batch; buckets cumulative up to +Inf.
    let check_histogram = |samples: &[Sample]| -> f64 {
        let mut buckets: Vec<(f64, f64)> = find(
            samples,
            "xdr_relay_sink_ack_latency_seconds_bucket",
            &[("sink", "file")],
        )
        .iter()
        .map(|s| {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            (le, s.value)
        })
        .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 10, "{buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let count = one(
            samples,
            "xdr_relay_sink_ack_latency_seconds_count",
            &[("sink", "file")],
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)));
        let sum = one(
            samples,
            "xdr_relay_sink_ack_latency_seconds_sum",
            &[("sink", "file")],
        );
        // The sum lies between what the bucket bounds allow.
        let mut below = 0.0;
        let mut at_most = 0.0;
        let mut previous = (0.0, 0.0);
        for &(le, n) in &buckets {
            let in_bucket = n - previous.1;
            if in_bucket > 0.0 {
                below += previous.0 * in_bucket;
                at_most += le * in_bucket;
            }
            previous = (le, n);
        }
        assert!(sum >= below && sum <= at_most, "sum {sum}: {buckets:?}");
        let sent = one(
            samples,
            "xdr_relay_sink_events_sent_total",
            &[("sink", "file")],
        );
        assert!(
            count >= 1.0 && count <= sent,
            "{count} batches, {sent} events"
        );
        count
    };
    let batches = check_histogram(&samples);
    // More events (a burst for tenant 0) mean more acknowledged batches.
    let sent_before = one(
        &samples,
        "xdr_relay_sink_events_sent_total",
        &[("sink", "file")],
    );
    h.sim
        .burst(&tenants[0].tenant_id, relay_config::Stream::Alerts, 3)
        .unwrap();
    let start = std::time::Instant::now();
    let later = loop {
        let samples = admin.metrics().await;
        let sent = one(
            &samples,
            "xdr_relay_sink_events_sent_total",
            &[("sink", "file")],
        );
        if sent > sent_before {
            break samples;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the burst was not delivered:\n{}",
            h.log(0)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(check_histogram(&later) > batches);

    signal(&relay.0, "TERM");
    let code = wait_exit(&mut relay.0, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{}", h.log(0));
}

/// A taken `[admin] listen` address stops the start with exit status 2, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_admin_port_is_a_startup_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut setup = Setup::default();
    setup.sim.tenants = 1;
    setup.files.extra_toml = format!("[admin]\nlisten = \"{addr}\"\n");
    let h = Harness::start(setup).await;
    let mut relay = KillOnDrop(h.spawn_relay(0));
    let code = wait_exit(&mut relay.0, Duration::from_secs(30)).await;
    let log = h.log(0);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
    assert!(log.contains("[admin] listen"), "{log}");
    assert!(
        !h.path("state.db").exists(),
        "state opened before the admin port was bound"
    );
    drop(taken);
}

/// The child's exit code once it exited, or `None` after `timeout`.
async fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
