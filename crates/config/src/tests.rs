//! Loader tests: real files in temporary directories, checked through the public API.

use crate::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TENANT_ID: &str = "6b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61";
const CLIENT_ID: &str = "0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";

// Distinctive values so a leak is found by a plain substring search.
const STATE_KEY: &str = "state-key-VALUE-a1";
const HEC_TOKEN: &str = "hec-token-VALUE-b2";
const CONTOSO_SECRET: &str = "contoso-secret-VALUE-c3";

const RELAY: &str = r#"
[state]
path = "state.db"
key = { env = "STATE_KEY" }

[sinks.splunk]
type = "splunk_hec"
url = "https://splunk.example:8088"
token = { env = "HEC_TOKEN" }

[sinks.out]
type = "file"
path = "out"
"#;

fn tenant_toml(tenant_id: &str, sinks: &str) -> String {
    format!(
        r#"
tenant_id = "{tenant_id}"
sinks = {sinks}

[auth]
kind = "client_secret"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "CONTOSO_SECRET" }}
"#
    )
}

/// A config directory in a temp dir, with an environment.
struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    credentials_dir: Option<PathBuf>,
}

impl Fixture {
    fn new(relay: &str) -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            env: [
                ("STATE_KEY", STATE_KEY),
                ("HEC_TOKEN", HEC_TOKEN),
                ("CONTOSO_SECRET", CONTOSO_SECRET),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            credentials_dir: None,
        };
        f.write("relay.toml", relay);
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_string(), value.to_string());
    }

    fn load(&self) -> Result<Config, ConfigErrors> {
        let mut opts = LoadOptions::new(self.path("relay.toml"), &self.env);
        opts.credentials_dir = self.credentials_dir.clone();
        load(&opts)
    }

    fn config(&self) -> Config {
        match self.load() {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    /// The problems, one display line each.
    fn errors(&self) -> Vec<String> {
        match self.load() {
            Ok(_) => panic!("expected configuration problems"),
            Err(e) => {
                assert!(!e.problems().is_empty());
                e.problems().iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn assert_has(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e == expected),
        "expected problem\n  {expected}\namong\n  {}",
        errors.join("\n  ")
    );
}

fn assert_has_prefix(errors: &[String], prefix: &str) {
    assert!(
        errors.iter().any(|e| e.starts_with(prefix)),
        "expected a problem starting with\n  {prefix}\namong\n  {}",
        errors.join("\n  ")
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_examples_load() {
    let root = repo_root();
    let relay = std::fs::read_to_string(root.join("config/relay.toml")).unwrap();
    let tenant =
        std::fs::read_to_string(root.join("config/tenants.d/contoso.toml.example")).unwrap();
    let mut f = Fixture::new(&relay);
    f.write("tenants.d/contoso.toml", &tenant);
    // Only *.toml files are tenants: the example itself must be ignored.
    f.write("tenants.d/contoso.toml.example", &tenant);
    f.write(
        "credentials/state-key",
        "0123456789abcdef0123456789abcdef\n",
    );
    f.write("credentials/contoso-client-secret", CONTOSO_SECRET);
    f.credentials_dir = Some(f.path("credentials"));
    f.set_env("SPLUNK_HEC_TOKEN", HEC_TOKEN);

    let config = f.config();
    assert_eq!(config.sinks.len(), 4);
    assert_eq!(
        config.defaults,
        TenantDefaults {
            sinks: vec!["splunk".to_string()],
            ..TenantDefaults::default()
        }
    );
    assert_eq!(config.http, HttpConfig::default());
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.outbox, OutboxConfig::default());
    match &config.state.key {
        StateKey::Secret(s) => assert_eq!(s.expose(), "0123456789abcdef0123456789abcdef"),
        other => panic!("unexpected state key {other:?}"),
    }
    let Some(SinkConfig::SplunkHec(hec)) = config.sinks.get("splunk") else {
        panic!("splunk sink missing");
    };
    assert_eq!(hec.token.expose(), HEC_TOKEN);
    assert_eq!(hec.batch, BatchConfig::default());
    assert_eq!(hec.indexer_ack, IndexerAckConfig::default());
    assert_eq!(hec.tls, TlsConfig::default());
    // The example leaves sourcetypes unset, so the sink's add-on defaults apply.
    assert_eq!(hec.sourcetype_for(Stream::Incidents), None);
    let Some(SinkConfig::Syslog(syslog)) = config.sinks.get("arcsight") else {
        panic!("arcsight sink missing");
    };
    assert_eq!(
        (syslog.host.as_str(), syslog.port),
        ("arcsight.example", 514)
    );
    assert_eq!(syslog.facility, 16);
    let Some(SinkConfig::Kafka(kafka)) = config.sinks.get("bus") else {
        panic!("bus sink missing");
    };
    assert_eq!(
        kafka.topic_for("contoso", Stream::Alerts),
        "defender.alerts"
    );
    assert_eq!(kafka.librdkafka["client.id"].expose(), "xdr-relay");
    assert!(!kafka.librdkafka.contains_key("message.timeout.ms"));

    assert_eq!(config.tenants.len(), 1);
    let t = &config.tenants[0];
    assert_eq!(t.name, "contoso");
    assert_eq!(t.feeds(), vec![Feed::GraphIncidents, Feed::GraphAlerts]);
    assert_eq!(t.endpoints, Cloud::Global.endpoints());
    assert_eq!(t.poll_interval, Duration::from_secs(60));
    assert_eq!(t.first_fetch, Duration::from_secs(24 * 3600));
    assert_eq!(t.auth.token_version, TokenVersion::V2);
    assert_eq!(
        t.auth.client_secret_expires,
        chrono::NaiveDate::from_ymd_opt(2027, 6, 30)
    );
    match &t.auth.method {
        AuthMethod::RefreshToken {
            client_secret: Some(s),
            refresh_token: None,
        } => {
            assert_eq!(s.expose(), CONTOSO_SECRET)
        }
        other => panic!("unexpected auth {other:?}"),
    }
    assert_eq!(
        t.hec_overrides_for("splunk")
            .and_then(|o| o.index.as_deref()),
        Some("cust_contoso")
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["splunk", "out"]"#),
    );
    let config = f.config();
    assert_eq!(config.config_dir, f.dir.path());
    assert_eq!(config.tenants_dir, f.path("tenants.d"));
    assert_eq!(config.state.path, f.path("state.db"));
    assert_eq!(config.http.user_agent, default_user_agent());
    assert!(config.http.user_agent.starts_with("xdr-relay/"));
    let Some(SinkConfig::File(file)) = config.sinks.get("out") else {
        panic!("file sink missing");
    };
    assert_eq!(file.path, f.path("out"));
    assert_eq!(
        (file.max_file_bytes, file.max_files),
        (100 * 1024 * 1024, 10)
    );
    let Some(SinkConfig::SplunkHec(hec)) = config.sinks.get("splunk") else {
        panic!("splunk sink missing");
    };
    // Unset source and sourcetypes leave the per-feed defaults to the sink.
    assert_eq!(hec.source, None);
    assert_eq!(hec.sourcetype_for(Stream::Incidents), None);
    assert_eq!(hec.sourcetype_for(Stream::Alerts), None);
    assert!(hec.gzip);
    assert_eq!(hec.gzip_level, DEFAULT_GZIP_LEVEL);
    assert_eq!(hec.request_timeout, Duration::from_secs(30));

    let t = config.tenant("contoso").unwrap();
    assert_eq!(t.tenant_id, TENANT_ID);
    assert!(t.enabled);
    assert_eq!(t.api, Api::Graph);
    assert_eq!(t.cloud, Cloud::Global);
    assert_eq!(t.overlap, Duration::from_secs(900));
    assert_eq!(t.availability_lag, Duration::from_secs(120));
    assert_eq!(t.file, f.path("tenants.d/contoso.toml"));
    assert!(matches!(t.auth.method, AuthMethod::ClientSecret { .. }));
    assert_eq!(config.enabled_tenants().count(), 1);
}

#[test]
fn tenant_values_override_defaults_and_defaults_override_builtins() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[defaults]\npoll_interval_secs = 300\napi = \"defender\"\nsinks = [\"out\"]\ncloud = \"gcc_high\"\n"
    ));
    f.write(
        "tenants.d/a.toml",
        &format!(
            r#"
tenant_id = "{TENANT_ID}"
streams = ["alerts"]
overlap_secs = 0
first_fetch_secs = 60
enabled = false
[auth]
kind = "refresh_token"
client_id = "{CLIENT_ID}"
"#
        ),
    );
    let config = f.config();
    let t = &config.tenants[0];
    assert_eq!(t.poll_interval, Duration::from_secs(300));
    assert_eq!(t.overlap, Duration::ZERO);
    assert_eq!(t.first_fetch, Duration::from_secs(60));
    assert_eq!(t.sinks, vec!["out".to_string()]);
    assert_eq!(t.feeds(), vec![Feed::MdeAlerts]);
    assert_eq!(t.cloud, Cloud::GccHigh);
    assert_eq!(t.endpoints.graph.as_str(), "https://graph.microsoft.us/");
    assert!(!t.enabled);
    assert_eq!(config.enabled_tenants().count(), 0);
    assert!(matches!(
        t.auth.method,
        AuthMethod::RefreshToken {
            client_secret: None,
            refresh_token: None
        }
    ));
}

#[test]
fn toml_syntax_error_names_file_line_and_column() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        "tenant_id = \"x\"\nsinks = [\"splunk\"\n",
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_has_prefix(
        &errors,
        "tenants.d/contoso.toml: TOML syntax error at line 2, column",
    );

    let f = Fixture::new("[state\npath = 1\n");
    assert_has_prefix(
        &f.errors(),
        "relay.toml: TOML syntax error at line 1, column 7:",
    );
}

#[test]
fn unknown_keys_are_reported_with_their_path() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[http]\nuser_agnet = \"x\"\n[sinks.splunk.batch]\nmax_event = 5\n[outbox.extra]\n"
    ));
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["splunk"]"#).replace("client_secret =", "client_scret ="),
    );
    f.write(
        "tenants.d/fabrikam.toml",
        &format!(
            "colour = 1\n{}",
            tenant_toml("1b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61", r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    assert_has_prefix(
        &errors,
        "relay.toml: http.user_agnet: unknown key; expected one of `user_agent`",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.splunk.batch.max_event: unknown key",
    );
    assert_has_prefix(&errors, "relay.toml: outbox.extra: unknown key");
    assert_has_prefix(
        &errors,
        "tenants.d/contoso.toml: auth.client_scret: unknown key",
    );
    assert_has_prefix(&errors, "tenants.d/fabrikam.toml: colour: unknown key");

    let f = Fixture::new(&format!("log_level = \"debug\"\n{RELAY}"));
    assert_has_prefix(
        &f.errors(),
        "relay.toml: log_level: unknown key; expected one of `state`",
    );
}

#[test]
fn bad_guids_are_reported() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml("contoso.onmicrosoft.com", r#"["splunk"]"#).replace(CLIENT_ID, "not-a-guid"),
    );
    let errors = f.errors();
    assert_has(&errors, "tenants.d/contoso.toml: tenant_id: must be a GUID");
    assert_has(
        &errors,
        "tenants.d/contoso.toml: auth.client_id: must be a GUID",
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn guids_are_normalised_to_lowercase_hyphenated() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(&TENANT_ID.to_uppercase(), r#"["splunk"]"#)
            .replace(CLIENT_ID, &CLIENT_ID.replace('-', "")),
    );
    let config = f.config();
    assert_eq!(config.tenants[0].tenant_id, TENANT_ID);
    assert_eq!(config.tenants[0].auth.client_id, CLIENT_ID);
}

#[test]
fn sinks_a_tenant_names_must_exist() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["splunk", "splnk"]"#),
    );
    assert_has(
        &f.errors(),
        "tenants.d/contoso.toml: sinks[1]: no sink `splnk` is defined in relay.toml (defined: out, splunk)",
    );

    let f = Fixture::new(RELAY);
    f.write("tenants.d/contoso.toml", &tenant_toml(TENANT_ID, "[]"));
    assert_has_prefix(
        &f.errors(),
        "tenants.d/contoso.toml: sinks: must name at least one sink",
    );
}

#[test]
fn a_broken_sink_is_not_also_reported_as_missing() {
    let f = Fixture::new(&RELAY.replace("https://splunk.example:8088", "splunk.example:8088"));
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["splunk"]"#),
    );
    let errors = f.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.splunk.url: must be an http(s) URL",
    );
}

#[test]
fn duplicate_tenant_names_and_ids_are_reported_in_the_later_file() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!(
            "name = \"contoso\"\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    f.write(
        "tenants.d/b.toml",
        &format!(
            "name = \"contoso\"\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "tenants.d/b.toml: name: tenant name `contoso` is already used by tenants.d/a.toml",
    );
    assert_has(
        &errors,
        &format!("tenants.d/b.toml: tenant_id: tenant {TENANT_ID} is already configured in tenants.d/a.toml"),
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn tenant_names_come_from_the_file_and_must_be_safe() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/Contoso Ltd.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    assert_has_prefix(
        &f.errors(),
        "tenants.d/Contoso Ltd.toml: name: the file name `Contoso Ltd` is not a valid tenant name",
    );

    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &format!(
            "name = \"../etc\"\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_has_prefix(
        &f.errors(),
        "tenants.d/contoso.toml: name: must be 1–64 characters",
    );
}

#[test]
fn unresolvable_secrets_name_the_variable_or_file_never_the_value() {
    let mut f = Fixture::new(&RELAY.replace(
        "key = { env = \"STATE_KEY\" }",
        "key = { file = \"secrets/state.key\" }",
    ));
    f.env.remove("HEC_TOKEN");
    f.set_env("CONTOSO_SECRET", "");
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: sinks.splunk.token: environment variable HEC_TOKEN is not set",
    );
    assert_has(
        &errors,
        "tenants.d/contoso.toml: auth.client_secret: environment variable CONTOSO_SECRET is empty",
    );
    let missing = f.path("secrets/state.key");
    assert_has_prefix(
        &errors,
        &format!(
            "relay.toml: state.key: cannot read secret file {}: ",
            missing.display()
        ),
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn secrets_resolve_from_files_and_systemd_credentials() {
    let mut f = Fixture::new(&RELAY.replace(
        "key = { env = \"STATE_KEY\" }",
        "key = { file = \"secrets/state.key\" }",
    ));
    f.write("secrets/state.key", "from-a-file\r\n");
    f.write("creds/contoso", "from-a-credential");
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#).replace(
            r#"{ env = "CONTOSO_SECRET" }"#,
            r#"{ credential = "contoso" }"#,
        ),
    );
    // Without a credentials directory the credential cannot be found.
    assert_has_prefix(
        &f.errors(),
        "tenants.d/contoso.toml: auth.client_secret: credential `contoso` needs a systemd credentials directory",
    );
    // The directory comes from the options or, failing that, CREDENTIALS_DIRECTORY in the
    // environment passed in.
    let creds = f.path("creds").display().to_string();
    f.set_env("CREDENTIALS_DIRECTORY", &creds);
    let config = f.config();
    match &config.state.key {
        StateKey::Secret(s) => assert_eq!(s.expose(), "from-a-file"),
        other => panic!("unexpected {other:?}"),
    }
    match &config.tenants[0].auth.method {
        AuthMethod::ClientSecret { client_secret } => {
            assert_eq!(client_secret.expose(), "from-a-credential")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn secret_references_must_be_exactly_one_reference() {
    let f = Fixture::new(&RELAY.replace(
        "token = { env = \"HEC_TOKEN\" }",
        "token = \"hunter2-literal\"",
    ));
    let errors = f.errors();
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.splunk.token: secrets are not accepted as literal values",
    );
    assert!(!errors.join("\n").contains("hunter2-literal"), "{errors:?}");

    let f = Fixture::new(&RELAY.replace(
        "token = { env = \"HEC_TOKEN\" }",
        "token = { env = \"HEC_TOKEN\", file = \"x\" }",
    ));
    assert_has(
        &f.errors(),
        "relay.toml: sinks.splunk.token: must set exactly one of `env`, `file` or `credential`",
    );

    let f = Fixture::new(&RELAY.replace(
        "key = { env = \"STATE_KEY\" }",
        "key = { credential = \"../../etc/shadow\" }",
    ));
    assert_has(
        &f.errors(),
        "relay.toml: state.key: `credential` must be a plain credential name",
    );
}

#[test]
fn urls_are_checked() {
    let cases = [
        ("ftp://splunk.example", "must be an http(s) URL, not `ftp:`"),
        (
            "https://user:pw@splunk.example:8088",
            "must not contain a user name or password",
        ),
        (
            "https://splunk.example:8088/?token=x",
            "must not have a query or fragment",
        ),
        (
            "not a url",
            "must be an http(s) URL: relative URL without a base",
        ),
    ];
    for (url, message) in cases {
        let f = Fixture::new(&RELAY.replace("https://splunk.example:8088", url));
        let errors = f.errors();
        assert_has(&errors, &format!("relay.toml: sinks.splunk.url: {message}"));
        // A URL may hold a password, so it is never echoed.
        assert!(!errors.join("\n").contains(url), "{errors:?}");
    }
}

#[test]
fn many_problems_in_many_files_are_reported_together() {
    let f = Fixture::new(&format!(
        "{}\n[defaults]\npoll_interval_secs = 5\nstreams = [\"incidents\", \"events\"]\n[admin]\nlisten = \"localhost\"\n",
        RELAY.replace("path = \"state.db\"\n", "")
    ));
    f.write("tenants.d/a.toml", &tenant_toml("bad", r#"["nope"]"#));
    f.write("tenants.d/b.toml", "tenant_id = \n");
    f.write(
        "tenants.d/c.toml",
        &format!(
            "overlap_secs = 999999999\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        )
        .replace("client_secret\"", "token\""),
    );
    let errors = f.errors();
    let expected_prefixes = [
        "relay.toml: state.path: is required",
        "relay.toml: defaults.poll_interval_secs: must be between 10 and 86400",
        "relay.toml: defaults.streams[1]: must be one of `incidents`, `alerts` (found `events`)",
        "relay.toml: admin.listen: must be an IP address and port",
        "tenants.d/a.toml: tenant_id: must be a GUID",
        "tenants.d/b.toml: TOML syntax error at line 1",
        "tenants.d/c.toml: overlap_secs: must be between 0 and 604800",
        "tenants.d/c.toml: auth.kind: must be one of `refresh_token`, `client_secret`, `certificate` (found `token`)",
    ];
    for prefix in expected_prefixes {
        assert_has_prefix(&errors, prefix);
    }
    // relay.toml's [defaults] is broken, so tenant sinks are not checked against it.
    assert!(!errors.iter().any(|e| e.contains("nope")), "{errors:?}");
    assert_eq!(
        errors.len(),
        expected_prefixes.len(),
        "{}",
        errors.join("\n")
    );
    // Files come out in order: relay.toml first, then the tenants by file name.
    let files: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').next().unwrap())
        .collect();
    let mut sorted = files.clone();
    sorted.sort_by_key(|f| (*f != "relay.toml", f.to_string()));
    assert_eq!(files, sorted);
}

#[test]
fn environment_overrides_relay_toml() {
    let mut f = Fixture::new(RELAY);
    f.set_env("XDR_RELAY__ADMIN__LISTEN", "0.0.0.0:9000");
    f.set_env("XDR_RELAY__SINKS__SPLUNK__BATCH__MAX_EVENTS", "50");
    f.set_env("XDR_RELAY__SINKS__SPLUNK__GZIP", "false");
    f.set_env("XDR_RELAY__SINKS__SPLUNK__INDEX", "123");
    f.set_env("XDR_RELAY__DEFAULTS__POLL_INTERVAL_SECS", "30");
    f.set_env("xdr_relay__sinks__out__max_files", "3");
    // Not ours: a single underscore after the prefix, and an empty value.
    f.set_env("XDR_RELAY_LOG", "debug");
    f.set_env("XDR_RELAY__HTTP__USER_AGENT", "");
    let config = f.config();
    assert_eq!(config.admin.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.defaults.poll_interval, Duration::from_secs(30));
    assert_eq!(config.http.user_agent, default_user_agent());
    let Some(SinkConfig::SplunkHec(hec)) = config.sinks.get("splunk") else {
        panic!("splunk sink missing");
    };
    assert_eq!(hec.batch.max_events, 50);
    assert!(!hec.gzip);
    assert_eq!(hec.index.as_deref(), Some("123"));
    let Some(SinkConfig::File(file)) = config.sinks.get("out") else {
        panic!("file sink missing");
    };
    assert_eq!(file.max_files, 3);
}

#[test]
fn environment_can_add_a_sink_and_list_brokers() {
    let mut f = Fixture::new(RELAY);
    f.set_env("XDR_RELAY__SINKS__BUS__TYPE", "kafka");
    f.set_env("XDR_RELAY__SINKS__BUS__BROKERS", "k1:9092, k2:9092");
    f.set_env("XDR_RELAY__SINKS__BUS__TOPIC", "mssp.{tenant}.{stream}");
    let config = f.config();
    let Some(SinkConfig::Kafka(kafka)) = config.sinks.get("bus") else {
        panic!("kafka sink missing");
    };
    assert_eq!(kafka.brokers, vec!["k1:9092", "k2:9092"]);
    assert_eq!(
        kafka.topic_for("contoso", Stream::Incidents),
        "mssp.contoso.incidents"
    );
}

#[test]
fn problems_caused_by_the_environment_name_the_variable() {
    let mut f = Fixture::new(RELAY);
    f.set_env("XDR_RELAY__ADMIN__LISTN", "0.0.0.0:9000");
    f.set_env("XDR_RELAY__SINKS__SPLUNK__BATCH__MAX_BYTES", "12");
    f.set_env("XDR_RELAY__SINKS__SPLUNK__GZIP_LEVEL", "0");
    f.set_env("XDR_RELAY__OUTBOX__MAX_EVENTS_PER_SINK", "lots");
    let errors = f.errors();
    assert_has_prefix(
        &errors,
        "relay.toml: admin.listn: unknown key; expected `listen` (set by environment variable XDR_RELAY__ADMIN__LISTN)",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.splunk.batch.max_bytes: must be between 1024 and 838860800 \
         (set by environment variable XDR_RELAY__SINKS__SPLUNK__BATCH__MAX_BYTES)",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: outbox.max_events_per_sink: expected an integer, found string \"lots\"",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.splunk.gzip_level: must be between 1 and 9 \
         (set by environment variable XDR_RELAY__SINKS__SPLUNK__GZIP_LEVEL)",
    );
}

#[test]
fn environment_does_not_override_tenant_files() {
    let mut f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    f.set_env(
        "XDR_RELAY__TENANT_ID",
        "00000000-0000-0000-0000-000000000000",
    );
    assert_has_prefix(&f.errors(), "relay.toml: tenant_id: unknown key");
}

#[test]
fn debug_of_a_loaded_config_leaks_no_secret() {
    let mut f = Fixture::new(&format!(
        "{RELAY}\n[sinks.bus]\ntype = \"kafka\"\nbrokers = [\"k:9092\"]\n[sinks.bus.librdkafka]\n\"sasl.password\" = {{ env = \"KAFKA_PW\" }}\n\"client.id\" = \"relay\"\n"
    ));
    f.set_env("KAFKA_PW", "kafka-password-VALUE-d4");
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    f.write(
        "tenants.d/fabrikam.toml",
        &format!(
            r#"
tenant_id = "1b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61"
sinks = ["splunk"]
[auth]
kind = "refresh_token"
client_id = "{CLIENT_ID}"
refresh_token = {{ file = "rt" }}
"#
        ),
    );
    f.write("rt", "refresh-token-VALUE-e5\n");
    let config = f.config();
    let debug = format!("{config:?} {config:#?}");
    for secret in [
        STATE_KEY,
        HEC_TOKEN,
        CONTOSO_SECRET,
        "kafka-password-VALUE-d4",
        "refresh-token-VALUE-e5",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(debug.contains("***"));
    // The values are there, just not printed.
    let Some(SinkConfig::Kafka(kafka)) = config.sinks.get("bus") else {
        panic!("kafka sink missing");
    };
    assert_eq!(
        kafka.librdkafka["sasl.password"].expose(),
        "kafka-password-VALUE-d4"
    );
}

#[test]
fn kafka_properties_are_checked() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.bus]\ntype = \"kafka\"\nbrokers = [\"k\"]\ntopic = \"x.{{customer}}\"\n[sinks.bus.librdkafka]\nacks = \"1\"\n\"sasl.password\" = \"hunter2-literal\"\n"
    ));
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: sinks.bus.brokers[0]: must be host:port (the port is required)",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.bus.topic: unknown placeholder `{customer}`; use `{tenant}` and `{stream}`",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.bus.librdkafka.acks: cannot be set here: fixed: the producer always waits for acks=all",
    );
    assert_has_prefix(&errors, "relay.toml: sinks.bus.librdkafka.\"sasl.password\": secrets are not accepted as literal values");
    assert!(!errors.join("\n").contains("hunter2-literal"));
}

#[test]
fn kafka_properties_that_would_break_delivery_are_refused() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.bus]\ntype = \"kafka\"\nbrokers = [\"k:9092\"]\n[sinks.bus.librdkafka]\n\"message.timeout.ms\" = 0\n\"transactional.id\" = \"relay\"\n\"delivery.report.only.error\" = true\n"
    ));
    let errors = f.errors();
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.bus.librdkafka.\"message.timeout.ms\": must be a number of milliseconds from 1",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.bus.librdkafka.\"transactional.id\": cannot be set here: not supported",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.bus.librdkafka.\"delivery.report.only.error\": cannot be set here",
    );
}

#[test]
fn syslog_bom_and_datagram_size_are_checked() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.siem]\ntype = \"syslog\"\naddress = \"siem:514\"\nrfc = 3164\nbom = true\nmax_datagram_bytes = 4096\n[sinks.udp]\ntype = \"syslog\"\naddress = \"siem:514\"\ntransport = \"udp\"\nmax_datagram_bytes = 100\n"
    ));
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: sinks.siem.bom: applies only to `rfc = 5424`",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.siem.max_datagram_bytes: applies only to `transport = \"udp\"`",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.udp.max_datagram_bytes: must be 480–65507 (found 100)",
    );

    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.siem]\ntype = \"syslog\"\naddress = \"siem:514\"\nbom = true\n[sinks.udp]\ntype = \"syslog\"\naddress = \"siem:514\"\ntransport = \"udp\"\nmax_datagram_bytes = 65507\n"
    ));
    let config = f.config();
    let Some(SinkConfig::Syslog(s)) = config.sinks.get("siem") else {
        panic!("syslog sink missing");
    };
    assert!(s.bom);
    assert_eq!(
        s.max_datagram_bytes,
        SyslogConfig::DEFAULT_MAX_DATAGRAM_BYTES
    );
    let Some(SinkConfig::Syslog(u)) = config.sinks.get("udp") else {
        panic!("syslog sink missing");
    };
    assert!(!u.bom);
    assert_eq!(u.max_datagram_bytes, 65_507);
}

#[test]
fn syslog_options_are_checked() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.siem]\ntype = \"syslog\"\naddress = \"siem\"\ntransport = \"udp\"\nframing = \"lf\"\nrfc = 5425\nfacility = \"local9\"\n[sinks.siem.tls]\nverify = false\n"
    ));
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: sinks.siem.address: must be host:port (the port is required)",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.siem.framing: does not apply to `transport = \"udp\"`",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.siem.rfc: must be 5424 or 3164 (found 5425)",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: sinks.siem.facility: must be one of `kern`",
    );
    assert_has(
        &errors,
        "relay.toml: sinks.siem.tls: applies only to `transport = \"tls\"`",
    );

    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.siem]\ntype = \"syslog\"\naddress = \"[::1]:6514\"\ntransport = \"tls\"\nformat = \"json\"\nrfc = 3164\n[sinks.siem.tls]\nca_file = \"ca.pem\"\n"
    ));
    f.write("ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let config = f.config();
    let Some(SinkConfig::Syslog(s)) = config.sinks.get("siem") else {
        panic!("syslog sink missing");
    };
    assert_eq!((s.host.as_str(), s.port), ("::1", 6514));
    assert_eq!(
        (s.transport, s.framing, s.format, s.rfc),
        (
            SyslogTransport::Tls,
            SyslogFraming::OctetCounting,
            SyslogFormat::Json,
            SyslogRfc::Rfc3164
        )
    );
    assert_eq!(
        s.tls.as_ref().and_then(|t| t.ca_file.clone()),
        Some(f.path("ca.pem"))
    );
}

#[test]
fn sink_types_and_names_are_checked() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[sinks.a]\ntype = \"elastic\"\n[sinks.b]\npath = \"x\"\n[sinks.Bad]\ntype = \"file\"\npath = \"x\"\n"
    ));
    let errors = f.errors();
    assert_has(&errors, "relay.toml: sinks.a.type: must be one of `file`, `splunk_hec`, `syslog`, `kafka` (found `elastic`)");
    assert_has_prefix(&errors, "relay.toml: sinks.b.type: is required");
    assert_has_prefix(&errors, "relay.toml: sinks.Bad: invalid sink name");
}

#[test]
fn hec_overrides_must_target_a_hec_sink_of_the_tenant() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &format!(
            "{}\n[sink_overrides.out]\nindex = \"x\"\n[sink_overrides.splunk]\nindex = \"\"\n[sink_overrides.nope]\nindex = \"x\"\n",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    assert_has(&errors, "tenants.d/contoso.toml: sink_overrides.out: overrides exist only for `splunk_hec` sinks; `out` is `file`");
    assert_has(&errors, "tenants.d/contoso.toml: sink_overrides.splunk: this tenant does not send to sink `splunk` (see `sinks`)");
    assert_has(
        &errors,
        "tenants.d/contoso.toml: sink_overrides.splunk.index: must not be empty",
    );
    assert_has_prefix(
        &errors,
        "tenants.d/contoso.toml: sink_overrides.nope: no sink `nope` is defined",
    );
}

#[test]
fn custom_cloud_endpoints_default_to_base_and_global_resources() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/sim.toml",
        &format!(
            "{}\n[cloud]\nbase = \"http://127.0.0.1:8080\"\ngraph = \"http://127.0.0.1:9090\"\n",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let config = f.config();
    let base = url::Url::parse("http://127.0.0.1:8080").unwrap();
    let mut expected = Endpoints::single_host(&base);
    expected.graph = url::Url::parse("http://127.0.0.1:9090").unwrap();
    assert_eq!(config.tenants[0].cloud, Cloud::Custom(expected.clone()));
    assert_eq!(config.tenants[0].endpoints, expected);

    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/sim.toml",
        &format!(
            "{}\n[cloud]\nlogin = \"http://127.0.0.1:1\"\n",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "tenants.d/sim.toml: cloud.m365d: is required (or set `base` for every endpoint)",
    );
    assert_eq!(errors.len(), 3, "{errors:?}");

    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/sim.toml",
        &format!(
            "cloud = \"china\"\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_has_prefix(&f.errors(), "tenants.d/sim.toml: cloud: must be one of `global`, `gcc`, `gcc_high`, `dod` (found `china`)");
}

#[test]
fn auth_kinds_require_their_own_credentials() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!(
            r#"
tenant_id = "{TENANT_ID}"
sinks = ["out"]
[auth]
kind = "client_secret"
client_id = "{CLIENT_ID}"
refresh_token = {{ env = "CONTOSO_SECRET" }}
client_secret_expires = "next year"
"#
        ),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "tenants.d/a.toml: auth.refresh_token: is not used with kind = \"client_secret\"",
    );
    assert_has(
        &errors,
        "tenants.d/a.toml: auth.client_secret_expires: must be a date, e.g. 2026-12-31",
    );
    assert_has(&errors, "tenants.d/a.toml: auth.client_secret: is required");

    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!("tenant_id = \"{TENANT_ID}\"\nsinks = [\"out\"]\n"),
    );
    assert_has_prefix(&f.errors(), "tenants.d/a.toml: auth: is required");
}

#[test]
fn certificate_auth_reads_the_certificate_and_key() {
    let mut f = Fixture::new(RELAY);
    f.write(
        "certs/contoso.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    f.set_env(
        "CERT_KEY",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    );
    let tenant = format!(
        r#"
tenant_id = "{TENANT_ID}"
sinks = ["out"]
[auth]
kind = "certificate"
client_id = "{CLIENT_ID}"
certificate_file = "certs/contoso.pem"
private_key = {{ env = "CERT_KEY" }}
token_version = "v1"
"#
    );
    f.write("tenants.d/a.toml", &tenant);
    let config = f.config();
    let auth = &config.tenants[0].auth;
    assert_eq!(auth.token_version, TokenVersion::V1);
    match &auth.method {
        AuthMethod::Certificate {
            certificate_file,
            certificate_pem,
            private_key,
        } => {
            assert_eq!(certificate_file, &f.path("certs/contoso.pem"));
            assert!(certificate_pem.contains("MIIB"));
            assert!(private_key.expose().contains("MIIE"));
        }
        other => panic!("unexpected {other:?}"),
    }

    f.write(
        "tenants.d/a.toml",
        &tenant.replace("certs/contoso.pem", "certs/missing.pem"),
    );
    f.set_env("CERT_KEY", "not a key");
    let errors = f.errors();
    assert_has_prefix(
        &errors,
        "tenants.d/a.toml: auth.certificate_file: cannot read ",
    );
    assert_has_prefix(
        &errors,
        "tenants.d/a.toml: auth.private_key: must be a PEM private key",
    );
}

#[test]
fn timing_keys_are_range_checked() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!(
            "poll_interval_secs = 1\nfirst_fetch_hours = 1\nfirst_fetch_secs = 1\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "tenants.d/a.toml: poll_interval_secs: must be between 10 and 86400",
    );
    assert_has(&errors, "tenants.d/a.toml: first_fetch_secs: set either `first_fetch_hours` or `first_fetch_secs`, not both");
}

#[test]
fn auth_probe_keys_default_inherit_and_are_checked() {
    let f = Fixture::new(&format!("{RELAY}\n[defaults]\nauth_probe_min_secs = 5\n"));
    f.write("tenants.d/a.toml", &tenant_toml(TENANT_ID, r#"["out"]"#));
    let config = f.config();
    assert_eq!(
        config.defaults.auth_probe,
        AuthProbe {
            min: Duration::from_secs(5),
            max: Duration::from_secs(DEFAULT_AUTH_PROBE_MAX_SECS),
        }
    );
    assert_eq!(config.tenants[0].auth_probe, config.defaults.auth_probe);

    f.write(
        "tenants.d/a.toml",
        &format!(
            "auth_probe_max_secs = 20\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_eq!(
        f.config().tenants[0].auth_probe,
        AuthProbe {
            min: Duration::from_secs(5),
            max: Duration::from_secs(20),
        }
    );

    f.write(
        "tenants.d/a.toml",
        &format!(
            "auth_probe_max_secs = 2\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_has(
        &f.errors(),
        "tenants.d/a.toml: auth_probe_max_secs: must be at least auth_probe_min_secs (5), found 2",
    );
    f.write(
        "tenants.d/a.toml",
        &format!(
            "auth_probe_min_secs = 0\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_has(
        &f.errors(),
        "tenants.d/a.toml: auth_probe_min_secs: must be between 1 and 86400",
    );
}

#[test]
fn streams_must_be_known_and_non_empty() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!("streams = []\n{}", tenant_toml(TENANT_ID, r#"["out"]"#)),
    );
    assert_has_prefix(
        &f.errors(),
        "tenants.d/a.toml: streams: must name at least one stream",
    );

    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/a.toml",
        &format!(
            "streams = [\"alerts\", \"alerts\"]\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    assert_has(
        &f.errors(),
        "tenants.d/a.toml: streams[1]: stream `alerts` is listed twice",
    );
}

#[test]
fn missing_files_and_directories() {
    let env = HashMap::new();
    let dir = tempfile::tempdir().unwrap();
    let errors = load(&LoadOptions::new(dir.path().join("relay.toml"), &env)).unwrap_err();
    assert_eq!(errors.problems().len(), 1, "{errors}");
    assert!(
        errors.to_string().starts_with("relay.toml: cannot read "),
        "{errors}"
    );

    // No tenants.d yet is a valid (empty) installation; a named directory must exist.
    let f = Fixture::new(RELAY);
    assert!(f.config().tenants.is_empty());
    let f = Fixture::new(&format!("tenants_dir = \"customers\"\n{RELAY}"));
    assert_has_prefix(&f.errors(), "customers: cannot read tenant directory ");

    let f = Fixture::new(RELAY);
    f.write(
        "elsewhere/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    let mut opts = LoadOptions::new(f.path("relay.toml"), &f.env);
    opts.tenants_dir = Some(f.path("elsewhere"));
    let config = load(&opts).unwrap();
    assert_eq!(config.tenants[0].name, "contoso");
    assert_eq!(config.tenants_dir, f.path("elsewhere"));
}

#[test]
fn only_visible_toml_files_are_tenants() {
    let f = Fixture::new(RELAY);
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    f.write("tenants.d/.contoso.toml", "garbage = [");
    f.write("tenants.d/contoso.toml.swp", "garbage = [");
    f.write("tenants.d/README", "garbage = [");
    std::fs::create_dir_all(f.path("tenants.d/dir.toml")).unwrap();
    assert_eq!(f.config().tenants.len(), 1);
}

#[test]
fn state_needs_exactly_one_key_source() {
    let f = Fixture::new(&RELAY.replace("key = { env = \"STATE_KEY\" }", ""));
    assert_has_prefix(&f.errors(), "relay.toml: state.key: is required");
    let f =
        Fixture::new(&RELAY.replace("key = { env = \"STATE_KEY\" }", "key_file = \"state.key\""));
    match f.config().state.key {
        StateKey::File(path) => assert_eq!(path, f.path("state.key")),
        other => panic!("unexpected {other:?}"),
    }
    let f = Fixture::new(&RELAY.replace(
        "key = { env = \"STATE_KEY\" }",
        "key = { env = \"STATE_KEY\" }\nkey_file = \"k\"",
    ));
    assert_has(
        &f.errors(),
        "relay.toml: state.key: set either `key` or `key_file`, not both",
    );
}

#[test]
fn wrong_value_types_name_the_key() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[http]\nmax_requests_in_flight = \"many\"\n"
    ));
    assert_has(
        &f.errors(),
        "relay.toml: http.max_requests_in_flight: expected an integer, found string \"many\"",
    );
    let f = Fixture::new(&format!("admin = 5\n{RELAY}"));
    assert_has(
        &f.errors(),
        "relay.toml: admin: expected a table, found integer `5`",
    );
    let f = Fixture::new(&format!("{RELAY}\n[defaults]\nstreams = \"alerts\"\n"));
    assert_has_prefix(
        &f.errors(),
        "relay.toml: defaults.streams: expected an array, found",
    );
}

fn test_ca_pem(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn http_proxy_and_ca_file_from_relay_toml() {
    let mut f = Fixture::new(&format!(
        "{RELAY}\n[http]\nproxy = \"http://proxy.corp.example:3128\"\n\
         no_proxy = [\"localhost\", \".corp.example\", \"10.0.0.0/8\"]\nca_file = \"corp-ca.pem\"\n"
    ));
    let pem = format!(
        "{}{}",
        test_ca_pem("corp root"),
        test_ca_pem("corp issuing")
    );
    f.write("corp-ca.pem", &pem);
    // The file wins over the environment.
    f.set_env("HTTPS_PROXY", "http://other.example:8080");
    f.set_env("NO_PROXY", "elsewhere.example");
    let http = f.config().http;
    let proxy = http.proxy.unwrap();
    assert_eq!(proxy.url.as_str(), "http://proxy.corp.example:3128/");
    assert_eq!(proxy.scope, ProxyScope::All);
    assert_eq!(proxy.no_proxy, ["localhost", ".corp.example", "10.0.0.0/8"]);
    assert_eq!(proxy.source, "http.proxy");
    let ca = http.ca.unwrap();
    assert_eq!(ca.path, f.path("corp-ca.pem"));
    assert_eq!(ca.certificates.len(), 2);
}

#[test]
fn https_proxy_and_no_proxy_from_the_environment_apply_to_https_only() {
    let mut f = Fixture::new(RELAY);
    assert_eq!(f.config().http.proxy, None, "no proxy unless one is set");
    f.set_env("https_proxy", "http://10.1.2.3:3128");
    f.set_env("no_proxy", "localhost, .internal.example,,127.0.0.1");
    let proxy = f.config().http.proxy.unwrap();
    assert_eq!(proxy.url.as_str(), "http://10.1.2.3:3128/");
    assert_eq!(proxy.scope, ProxyScope::HttpsOnly);
    assert_eq!(
        proxy.no_proxy,
        ["localhost", ".internal.example", "127.0.0.1"]
    );
    assert_eq!(proxy.source, "environment variable https_proxy");
    // Upper case first, as curl does.
    f.set_env("HTTPS_PROXY", "http://10.9.9.9:8080");
    let proxy = f.config().http.proxy.unwrap();
    assert_eq!(proxy.url.as_str(), "http://10.9.9.9:8080/");
    assert_eq!(proxy.source, "environment variable HTTPS_PROXY");
    // The relay's own override is `[http] proxy`: every request.
    f.set_env("XDR_RELAY__HTTP__PROXY", "http://10.7.7.7:3128");
    let proxy = f.config().http.proxy.unwrap();
    assert_eq!(proxy.url.as_str(), "http://10.7.7.7:3128/");
    assert_eq!(proxy.scope, ProxyScope::All);
}

#[test]
fn bad_proxy_settings_are_reported_with_file_and_key() {
    let f = Fixture::new(&format!(
        "{RELAY}\n[http]\nproxy = \"proxy.corp.example:3128\"\nno_proxy = [\"a.example\", \"b.example, c.example\", \"\"]\n"
    ));
    let errors = f.errors();
    assert_has_prefix(&errors, "relay.toml: http.proxy: must be an http(s) URL");
    assert_has(
        &errors,
        "relay.toml: http.no_proxy[1]: must be one host name, IP address or CIDR block (no spaces or commas)",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: http.no_proxy[2]: must be one host name",
    );

    let f = Fixture::new(&format!(
        "{RELAY}\n[http]\nproxy = \"http://user:hunter2@proxy.corp.example:3128\"\n"
    ));
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: http.proxy: must not contain a user name or password",
    );
    assert!(!errors.join("\n").contains("hunter2"), "{errors:?}");

    let mut f = Fixture::new(RELAY);
    f.set_env("HTTPS_PROXY", "socks5://127.0.0.1:1080");
    assert_has(
        &f.errors(),
        "relay.toml: http.proxy: must be an http(s) URL, not `socks5:` (set by environment variable HTTPS_PROXY)",
    );
}

#[test]
fn bad_ca_files_are_reported_with_file_and_key() {
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("missing.pem", None, "cannot read "),
        ("garbage.pem", Some("just some text\n"), "holds no PEM CERTIFICATE block"),
        (
            "key.pem",
            Some("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"),
            "PEM block 1 is `PRIVATE KEY`, not a CERTIFICATE",
        ),
        (
            "truncated.pem",
            Some("-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAK\n"),
            "a PEM block is truncated or malformed (1 begun, 0 readable)",
        ),
        (
            "not-x509.pem",
            Some("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"),
            "certificate 1 cannot be parsed",
        ),
    ];
    for (file, content, expected) in cases {
        let f = Fixture::new(&format!("{RELAY}\n[http]\nca_file = \"{file}\"\n"));
        if let Some(text) = content {
            f.write(file, text);
        }
        let errors = f.errors();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("relay.toml: http.ca_file: ")
                    && e.contains(expected)
                    && e.contains(file)),
            "{file}: expected `{expected}` among {errors:?}"
        );
        assert!(!errors.join("\n").contains("c2VjcmV0"), "{errors:?}");
    }
}

const PLAYBOOKS: &str = r#"
[playbooks.isolate-ransomware]
action = "isolate"
isolation_type = "selective"
mode = "enforce"
tenants = ["*"]
[playbooks.isolate-ransomware.when]
min_severity = "medium"
title_matches = "(?i)ransom"
[playbooks.isolate-ransomware.limits]
per_tenant_per_hour = 2
per_hour = 10
max_devices_per_incident = 1
never_devices_matching = "(?i)^(dc|adfs)"

[playbooks.scan]
action = "run_av_scan"
scan_type = "quick"
tenants = ["contoso"]
"#;

#[test]
fn playbooks_load_with_defaults_and_tenants_may_opt_out() {
    let f = Fixture::new(&format!("{RELAY}{PLAYBOOKS}"));
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    f.write(
        "tenants.d/fabrikam.toml",
        &format!(
            "playbooks = false\n{}",
            tenant_toml("7b1e1f3c-1d2a-4c8e-9a7b-0c2d3e4f5a61", r#"["out"]"#)
        ),
    );
    let config = f.config();
    assert!(config.tenant("contoso").unwrap().playbooks);
    assert!(!config.tenant("fabrikam").unwrap().playbooks);
    let iso = &config.playbooks["isolate-ransomware"];
    assert_eq!(
        iso.action,
        PlaybookAction::Isolate(IsolationType::Selective)
    );
    assert_eq!(iso.mode, PlaybookMode::Enforce);
    assert_eq!(iso.tenants, TenantSelector::All);
    assert_eq!(iso.when.min_severity, Severity::Medium);
    assert!(iso
        .when
        .title_matches
        .as_ref()
        .unwrap()
        .is_match("RANSOMWARE found"));
    assert_eq!(iso.limits.max_devices_per_incident, 1);
    assert!(iso
        .limits
        .never_devices_matching
        .as_ref()
        .unwrap()
        .is_match("DC01.corp"));
    let scan = &config.playbooks["scan"];
    assert_eq!(scan.action, PlaybookAction::RunAvScan(ScanType::Quick));
    // Safe defaults: dry run, high severity only, conservative limits.
    assert_eq!(scan.mode, PlaybookMode::DryRun);
    assert_eq!(scan.when.min_severity, Severity::High);
    assert_eq!(scan.limits, PlaybookLimits::default());
    assert_eq!(
        scan.tenants,
        TenantSelector::Named(vec!["contoso".to_string()])
    );
}

#[test]
fn every_playbook_problem_is_reported_with_its_key() {
    let f = Fixture::new(&format!(
        r#"{RELAY}
[playbooks.a]
action = "isolate"
isolation_type = "full"
tenants = ["*"]
[playbooks.a.when]
colour = "red"

[playbooks.b]
action = "isolate"
scan_type = "quick"
tenants = ["ghost"]
[playbooks.b.limits]
per_tenant_per_hour = 0
max_devices_per_incident = 3
never_devices_matching = "[z-a]"

[playbooks.c]
action = "run_av_scan"
isolation_type = "full"
scan_type = "deep"
[playbooks.c.limits]
per_tenant_per_hour = 60
per_hour = 50

[playbooks.Bad]
action = "run_av_scan"
scan_type = "quick"
tenants = ["*"]
"#
    ));
    f.write(
        "tenants.d/contoso.toml",
        &format!(
            "playbooks = \"maybe\"\n{}",
            tenant_toml(TENANT_ID, r#"["out"]"#)
        ),
    );
    let errors = f.errors();
    // Serde stops a section at its first unknown key: `a` reports only that.
    assert_has(
        &errors,
        "relay.toml: playbooks.a.when.colour: unknown key; expected one of `min_severity`, `title_matches`, `category_matches`, `detection_source_matches`, `service_source_matches`",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.b.isolation_type: is required: `full` or `selective`",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.b.scan_type: applies to `run_av_scan` only",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.b.limits.per_tenant_per_hour: must be between 1 and 100000",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: playbooks.b.limits.never_devices_matching: not a valid regex: ",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.c.isolation_type: applies to `isolate` only",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.c.scan_type: must be one of `quick`, `full` (found `deep`)",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.c.tenants: is required: tenant names, or [\"*\"] for every tenant",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.c.limits.per_tenant_per_hour: is above per_hour (50): the smaller one always wins",
    );
    assert_has_prefix(&errors, "relay.toml: playbooks.Bad: invalid playbook name");
    assert_has_prefix(&errors, "tenants.d/contoso.toml: playbooks: ");
}

#[test]
fn playbook_values_are_checked_one_by_one() {
    let f = Fixture::new(&format!(
        r#"{RELAY}
[playbooks.a]
action = "quarantine"
mode = "yolo"
tenants = ["nobody", "*"]
[playbooks.a.when]
min_severity = "critical"
title_matches = "(unclosed"
category_matches = ""

[playbooks.b]
action = "run_av_scan"
scan_type = "full"
tenants = ["ghost"]
"#
    ));
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    let errors = f.errors();
    assert_has(
        &errors,
        "relay.toml: playbooks.a.action: must be one of `isolate`, `run_av_scan` (found `quarantine`)",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.a.mode: must be one of `dry_run`, `approve`, `enforce` (found `yolo`)",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.a.tenants: `*` stands alone: it already names every tenant",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.a.when.min_severity: must be one of `informational`, `low`, `medium`, `high` (found `critical`)",
    );
    assert_has_prefix(
        &errors,
        "relay.toml: playbooks.a.when.title_matches: not a valid regex: ",
    );
    assert_has(
        &errors,
        "relay.toml: playbooks.a.when.category_matches: must not be empty (leave it out to match everything)",
    );
    // Tenant names are checked against the tenant files only when the playbooks loaded;
    // `b` alone would report `ghost`.
    assert!(!errors.iter().any(|e| e.contains("ghost")), "{errors:?}");
}

#[test]
fn playbooks_must_name_configured_tenants() {
    let f = Fixture::new(&format!(
        r#"{RELAY}
[playbooks.b]
action = "run_av_scan"
scan_type = "full"
tenants = ["contoso", "ghost"]
"#
    ));
    f.write(
        "tenants.d/contoso.toml",
        &tenant_toml(TENANT_ID, r#"["out"]"#),
    );
    assert_eq!(
        f.errors(),
        ["relay.toml: playbooks.b.tenants[1]: no tenant `ghost` is configured"]
    );
}
