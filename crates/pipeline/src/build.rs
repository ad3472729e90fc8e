//! Building the parts of the relay from the validated configuration: HTTP clients, the
//! tenants' credentials, the sinks. All checks that can fail do so here, before anything
//! runs, each naming the tenant or sink at fault.

use std::time::Duration;

use relay_auth::{Credential, TenantAuth};
use relay_config::{AuthMethod, Config, Feed, HttpConfig, ProxyScope, SinkConfig, TenantConfig};
use relay_defender::TenantTarget;
use relay_sinks::{
    AnySink, FileSink, FileSinkConfig, KafkaSink, KafkaSinkConfig, SplunkHecSink,
    SplunkHecSinkConfig, SyslogSink, SyslogSinkConfig,
};
use relay_state::{OutboxLimit, StateError, StateStore, StoreOptions};

use crate::error::PipelineError;

/// The [`StoreOptions`] the daemon should open its state store with for `config`: the
/// `[outbox] max_events_per_sink` bound on every sink's outbox.
pub fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        outbox_limit: OutboxLimit {
            max_rows: config.outbox.max_events_per_sink,
            ..OutboxLimit::default()
        },
        ..StoreOptions::default()
    }
}

/// Everything a tenant's poll tasks need, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct TenantPlan {
    pub(crate) target: TenantTarget,
    pub(crate) feeds: Vec<Feed>,
    /// The sinks its events go to, in configuration order.
    pub(crate) sinks: Vec<String>,
    pub(crate) poll_interval: Duration,
    pub(crate) overlap: Duration,
    pub(crate) availability_lag: Duration,
    pub(crate) first_fetch: Duration,
    /// Whether playbooks may act on the tenant (its file's `playbooks`).
    pub(crate) playbooks: bool,
}

impl TenantPlan {
    pub(crate) fn name(&self) -> &str {
        &self.target.name
    }
}

/// The plan of `tenant`, its sinks checked against the configured ones.
pub(crate) fn tenant_plan(
    config: &Config,
    tenant: &TenantConfig,
    poll_interval_override: Option<Duration>,
) -> Result<TenantPlan, PipelineError> {
    if tenant.sinks.is_empty() {
        return Err(PipelineError::NoSinks {
            tenant: tenant.name.clone(),
            file: tenant.file.display().to_string(),
        });
    }
    if let Some(sink) = tenant.sinks.iter().find(|s| !config.sinks.contains_key(*s)) {
        return Err(PipelineError::UnknownSink {
            tenant: tenant.name.clone(),
            sink: sink.clone(),
        });
    }
    let mut sinks: Vec<String> = Vec::with_capacity(tenant.sinks.len());
    for s in &tenant.sinks {
        // A sink listed twice must not get every event twice.
        if !sinks.contains(s) {
            sinks.push(s.clone());
        }
    }
    let mut feeds = tenant.feeds();
    feeds.dedup();
    Ok(TenantPlan {
        target: TenantTarget {
            name: tenant.name.clone(),
            tenant_id: tenant.tenant_id.clone(),
            endpoints: tenant.endpoints.clone(),
        },
        feeds,
        sinks,
        poll_interval: poll_interval_override
            .unwrap_or(tenant.poll_interval)
            .max(Duration::from_millis(100)),
        overlap: tenant.overlap,
        availability_lag: tenant.availability_lag,
        first_fetch: tenant.first_fetch,
        playbooks: tenant.playbooks,
    })
}

/// Which of the two outbound clients [`http_client`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpPurpose {
    /// Entra ID's token endpoint.
    Token,
    /// The Defender and Graph APIs.
    Api,
}

impl HttpPurpose {
    fn as_str(self) -> &'static str {
        match self {
            HttpPurpose::Token => "token",
            HttpPurpose::Api => "api",
        }
    }
}

/// The HTTP client for Entra or the APIs, as `[http]` says: timeouts, user agent, the
/// proxy and the extra trust roots of `ca_file` (both clients get the same, so a
/// TLS-inspecting proxy is trusted for tokens and API calls alike). Neither follows
/// redirects: a token request carrying a secret must not be replayed to wherever a
/// redirect points, and the list endpoints never redirect (a 3xx is an error naming the
/// endpoint; checking each response against a redirect policy was measurable at scale). `onboard` builds its clients here too, so that its test
/// call goes out exactly as the daemon's requests will.
pub fn http_client(
    http: &HttpConfig,
    purpose: HttpPurpose,
) -> Result<reqwest::Client, PipelineError> {
    let err = |source| PipelineError::Http {
        purpose: purpose.as_str(),
        source,
    };
    // reqwest would otherwise read HTTP(S)_PROXY/ALL_PROXY from the process environment
    // itself; relay-config already resolved them (no library reads the environment), and
    // a proxy the operator cannot see in the configuration is a proxy nobody debugs.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .user_agent(http.user_agent.clone())
        .connect_timeout(http.connect_timeout)
        .timeout(http.request_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(proxy) = &http.proxy {
        let p = match proxy.scope {
            ProxyScope::All => reqwest::Proxy::all(proxy.url.as_str()),
            ProxyScope::HttpsOnly => reqwest::Proxy::https(proxy.url.as_str()),
        }
        .map_err(err)?;
        builder =
            builder.proxy(p.no_proxy(reqwest::NoProxy::from_string(&proxy.no_proxy.join(","))));
    }
    if let Some(ca) = &http.ca {
        for der in &ca.certificates {
            let cert = reqwest::Certificate::from_der(der).map_err(err)?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(err)
}

/// The token manager's view of `tenant`. For a refresh-token tenant the refresh token is
/// the one in the state store (rotated on every use, so newer than any file), else the
/// tenant file's bootstrap token, which is saved to the store first so that the store
/// holds the current token from the first rotation on.
pub(crate) fn tenant_auth(
    tenant: &TenantConfig,
    state: &StateStore,
) -> Result<TenantAuth, PipelineError> {
    let prepared = prepare_auth(tenant, state)?;
    save_bootstrap(&prepared, state)?;
    Ok(prepared.auth)
}

/// [`tenant_auth`] split in two so that a reload can check every tenant before it changes
/// anything: this half only reads the state store.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAuth {
    pub(crate) auth: TenantAuth,
    /// The refresh token in `auth` is the tenant file's bootstrap token, not yet in the
    /// state store.
    pub(crate) bootstrap: bool,
    file: String,
}

/// The first half of [`tenant_auth`]: fails, naming the tenant, where it would.
pub(crate) fn prepare_auth(
    tenant: &TenantConfig,
    state: &StateStore,
) -> Result<PreparedAuth, PipelineError> {
    let mut bootstrap = false;
    let credential = match &tenant.auth.method {
        AuthMethod::RefreshToken {
            client_secret,
            refresh_token,
        } => {
            let stored = state
                .load_refresh_token(&tenant.name)
                .map_err(|e| refresh_token_error(&tenant.name, e))?;
            let token = match (stored, refresh_token) {
                (Some(stored), _) => stored,
                (None, Some(seed)) => {
                    bootstrap = true;
                    seed.clone()
                }
                (None, None) => {
                    return Err(PipelineError::NoRefreshToken {
                        tenant: tenant.name.clone(),
                        file: tenant.file.display().to_string(),
                    })
                }
            };
            Credential::RefreshToken {
                refresh_token: token,
                client_secret: client_secret.clone(),
            }
        }
        AuthMethod::ClientSecret { client_secret } => Credential::ClientSecret {
            secret: client_secret.clone(),
        },
        AuthMethod::Certificate {
            certificate_pem,
            private_key,
            ..
        } => Credential::Certificate {
            cert_pem: certificate_pem.clone(),
            key_pem: private_key.clone(),
        },
    };
    Ok(PreparedAuth {
        auth: TenantAuth {
            name: tenant.name.clone(),
            tenant_id: tenant.tenant_id.clone(),
            endpoints: tenant.endpoints.clone(),
            client_id: tenant.auth.client_id.clone(),
            credential,
            token_version: match tenant.auth.token_version {
                relay_config::TokenVersion::V1 => relay_auth::TokenVersion::V1,
                relay_config::TokenVersion::V2 => relay_auth::TokenVersion::V2,
            },
            probe: relay_auth::ProbeBackoff {
                first: tenant.auth_probe.min,
                max: tenant.auth_probe.max,
            },
        },
        bootstrap,
        file: tenant.file.display().to_string(),
    })
}

/// The second half of [`tenant_auth`]: saves a bootstrap refresh token to the state store.
pub(crate) fn save_bootstrap(
    prepared: &PreparedAuth,
    state: &StateStore,
) -> Result<(), PipelineError> {
    let Credential::RefreshToken { refresh_token, .. } = &prepared.auth.credential else {
        return Ok(());
    };
    if !prepared.bootstrap {
        return Ok(());
    }
    let name = &prepared.auth.name;
    state
        .save_refresh_token(name, refresh_token)
        .map_err(|e| refresh_token_error(name, e))?;
    tracing::info!(tenant = %name, file = %prepared.file, "bootstrap refresh token from the tenant file saved to the state store");
    Ok(())
}

/// `auth` with the refresh token now in the state store, if it is a refresh-token tenant
/// and the store has one: a token rotated after `auth` was prepared wins.
pub(crate) fn with_stored_refresh_token(
    mut auth: TenantAuth,
    state: &StateStore,
) -> Result<TenantAuth, PipelineError> {
    if let Credential::RefreshToken { refresh_token, .. } = &mut auth.credential {
        if let Some(stored) = state
            .load_refresh_token(&auth.name)
            .map_err(|e| refresh_token_error(&auth.name, e))?
        {
            *refresh_token = stored;
        }
    }
    Ok(auth)
}

fn refresh_token_error(tenant: &str, e: StateError) -> PipelineError {
    match e {
        StateError::KeyRequired { .. } => PipelineError::StateKeyRequired {
            tenant: tenant.to_owned(),
        },
        source => PipelineError::State {
            context: format!("tenant {tenant}: cannot read or store its refresh token"),
            source: Box::new(source),
        },
    }
}

/// The sink configured as `name`; `tenants` supplies a HEC sink's per-tenant
/// `[sink_overrides.NAME]` labels. TLS files are read here, so a missing CA or key fails the
/// start, naming the sink; nothing is sent until the sink worker runs.
pub(crate) fn sink(
    name: &str,
    config: &SinkConfig,
    tenants: &[TenantConfig],
) -> Result<AnySink, PipelineError> {
    // One convention for every sink: `<Sink>Config::from_config` maps the validated
    // `[sinks.NAME]` (parsing templates), `<Sink>::new` builds it (reading TLS files).
    Ok(match config {
        SinkConfig::File(c) => FileSink::new(FileSinkConfig::from_config(name, c))?.into(),
        SinkConfig::SplunkHec(c) => {
            SplunkHecSink::new(SplunkHecSinkConfig::from_config(name, c, tenants)?)?.into()
        }
        SinkConfig::Syslog(c) => SyslogSink::new(SyslogSinkConfig::from_config(name, c))?.into(),
        SinkConfig::Kafka(c) => KafkaSink::new(KafkaSinkConfig::from_config(name, c)?)?.into(),
    })
}
