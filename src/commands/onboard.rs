//! `xdr-relay onboard`: gets a customer tenant's consent and credentials without the
//! PowerShell of Microsoft's MSSP guide, writes its tenant file, and proves it works.
//!
//! Three ways in, whichever the customer's set-up allows:
//! - default: the authorization-code flow with PKCE. The administrator opens a URL, signs in,
//!   and the browser comes back to a listener on 127.0.0.1 → a refresh token (delegated).
//! - `--device-code`: the same refresh token on a headless server: the administrator enters
//!   a code on any device.
//! - `--admin-consent`: a multi-tenant app with application permissions. A global
//!   administrator consents; the app's client secret or certificate is then checked with a
//!   client-credentials token request.
//!
//! Then, in this order: the refresh token goes encrypted into the state store (the daemon
//! may be running: SQLite's WAL and busy timeout let both write); `tenants.d/<name>.toml`
//! is written without any secret; the whole configuration is validated; one test call
//! reads the last 24 h of every feed through the token manager and the API client, exactly
//! as the daemon will. A file that does not validate or does not work is taken back.
//!
//! Everything that can be checked without asking Entra is checked first, so an
//! administrator is never asked to sign in for an onboarding that cannot succeed.
//! Exit status: 0 onboarded; 1 the sign-in, the credentials or the test call failed;
//! 2 bad arguments or configuration (nothing was asked of Entra).

mod listener;
mod probe;
mod tenant_file;

use chrono::Utc;
use relay_auth::interactive::{advice, InteractiveError, Redirect, SignIn};
use relay_auth::{AuthError, Credential, TenantAuth, TokenVersion};
use relay_config::{Api, Cloud, Config, Endpoints, Feed, Secret, Stream};
use relay_defender::TenantTarget;
use relay_state::{AuthState, StateStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

use self::listener::RedirectListener;
use self::probe::Probe;
use self::tenant_file::{AuthEntry, CloudEntry, SecretRef, TenantFile, Written};
use super::check_config::EXIT_BAD_CONFIG;

/// Exit status when the sign-in, the credentials or the test call failed.
pub const EXIT_FAILED: u8 = 1;

/// How long client-credential requests are retried after admin consent while Entra does
/// not show the consent yet (it propagates within seconds to a few minutes).
const CONSENT_PROPAGATION: Duration = Duration::from_secs(60);

/// How far back the test call reads.
const TEST_WINDOW_HOURS: i64 = 24;

/// `--api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiArg {
    /// Microsoft Graph security API.
    Graph,
    /// M365 Defender incidents and Defender for Endpoint alerts APIs.
    Defender,
}

/// `--streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamArg {
    /// Incidents.
    Incidents,
    /// Alerts.
    Alerts,
}

/// `--cloud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudArg {
    /// Commercial cloud.
    Global,
    /// US Government Community Cloud.
    Gcc,
    /// US Government GCC High.
    #[value(name = "gcc_high")]
    GccHigh,
    /// US Department of Defense.
    Dod,
}

impl CloudArg {
    fn as_str(self) -> &'static str {
        match self {
            CloudArg::Global => "global",
            CloudArg::Gcc => "gcc",
            CloudArg::GccHigh => "gcc_high",
            CloudArg::Dod => "dod",
        }
    }
}

/// Arguments of `onboard`.
///
/// Run it on the relay host after the service has started once, so that the state file
/// exists and belongs to the service's user: onboarding writes into it and into the tenants
/// directory, both of which the daemon must still be able to read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path of relay.toml; the tenant file goes into its tenants directory.
    #[arg(long, short, default_value = "/etc/xdr-relay/relay.toml")]
    pub config: PathBuf,
    /// The tenant's name in xdr-relay (file name, logs, metrics): a-z, 0-9, `_`, `-`.
    #[arg(long)]
    pub name: String,
    /// The customer's Entra tenant (directory) id, a GUID.
    #[arg(long, value_name = "GUID")]
    pub tenant_id: String,
    /// The app registration's client id. Default: the one every configured tenant uses.
    #[arg(long, value_name = "GUID")]
    pub client_id: Option<String>,
    /// API family to read the tenant through. Default: `[defaults] api`.
    #[arg(long, value_enum)]
    pub api: Option<ApiArg>,
    /// Streams to poll, comma-separated. Default: `[defaults] streams`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub streams: Option<Vec<StreamArg>>,
    /// Sinks to deliver to, comma-separated, as named in relay.toml. Default:
    /// `[defaults] sinks`.
    #[arg(long, value_delimiter = ',')]
    pub sinks: Option<Vec<String>>,
    /// National cloud. Default: `[defaults] cloud`.
    #[arg(long, value_enum, conflicts_with = "base_url")]
    pub cloud: Option<CloudArg>,
    /// Explicit endpoints: Entra and every API on this one base URL (e.g. the simulator of
    /// `xdr-relay sim`), written as `[cloud] base`.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<Url>,
    /// A file holding the app's client secret. The tenant file refers to it
    /// (`client_secret = { file = ... }`); the secret itself is never copied.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["client_secret_env", "certificate", "device_code"]
    )]
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the app's client secret (the daemon must have it
    /// too). The tenant file refers to it (`client_secret = { env = ... }`).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["certificate", "device_code"]
    )]
    pub client_secret_env: Option<String>,
    /// With --admin-consent: the app's certificate (PEM), instead of a client secret.
    #[arg(long, value_name = "FILE", requires_all = ["private_key", "admin_consent"])]
    pub certificate: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "certificate")]
    pub private_key: Option<PathBuf>,
    /// Device-code flow, for a server without a browser: enter the printed code on any
    /// device. The app must allow public client flows.
    #[arg(long, conflicts_with = "admin_consent")]
    pub device_code: bool,
    /// Admin consent for a multi-tenant app with application permissions; needs the app's
    /// client secret or certificate, checked with a client-credentials request.
    #[arg(long)]
    pub admin_consent: bool,
    /// Port of the local redirect listener (default: any free port). The redirect URI is
    /// `http://localhost:PORT/`; register `http://localhost` in the app.
    #[arg(long, value_name = "N")]
    pub redirect_port: Option<u16>,
    /// How long to wait for the browser's redirect (or for the device code to be entered)
    /// before giving up. With --admin-consent, onboarding then checks the app's credentials
    /// anyway: the administrator may have consented on a machine that cannot reach this one.
    #[arg(long, value_name = "N", default_value_t = 900)]
    pub no_browser_wait_secs: u64,
    /// Replace an existing tenant file of this name (re-onboarding after consent was
    /// revoked or the refresh token died).
    #[arg(long)]
    pub force: bool,
}

/// Why onboarding stopped.
#[derive(Debug)]
enum Stop {
    /// The arguments or the configuration are wrong (exit 2).
    Usage(String),
    /// The sign-in, the credentials or the test call failed (exit 1).
    Failed(String),
}

type Step<T> = Result<T, Stop>;

/// Which flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    AuthCode,
    DeviceCode,
    AdminConsent,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::AuthCode => "authorization code with PKCE",
            Mode::DeviceCode => "device code",
            Mode::AdminConsent => "admin consent",
        }
    }
}

/// The app credential the operator gave.
enum Given {
    None,
    Secret {
        value: Secret,
        reference: SecretRef,
    },
    Certificate {
        cert_pem: String,
        key_pem: Secret,
        certificate_file: String,
        private_key: SecretRef,
    },
}

/// Everything decided before Entra is asked anything.
struct Plan {
    name: String,
    tenant_id: String,
    client_id: String,
    mode: Mode,
    feeds: Vec<Feed>,
    endpoints: Endpoints,
    file: TenantFile,
    given: Given,
    wait: Duration,
    redirect_port: Option<u16>,
    config_path: PathBuf,
    config: Config,
}

impl Plan {
    /// A path as the operator sees it in messages: relative to the config directory.
    fn label(&self, path: &Path) -> String {
        label(&self.config.config_dir, path)
    }

    fn tenant_file_path(&self) -> PathBuf {
        self.config.tenants_dir.join(format!("{}.toml", self.name))
    }
}

fn label(config_dir: &Path, path: &Path) -> String {
    match path.strip_prefix(config_dir) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// Onboards one tenant.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = super::process_env();
    let outcome = match prepare(&args, &env) {
        Err(stop) => Err(stop),
        Ok(plan) => {
            let rt = tokio::runtime::Runtime::new()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            rt.block_on(onboard(plan, &env))
        }
    };
    Ok(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Usage(message)) => {
            eprintln!("xdr-relay onboard: {message}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(Stop::Failed(message)) => {
            eprintln!("xdr-relay onboard: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn guid(value: &str) -> Option<String> {
    uuid::Uuid::try_parse(value.trim())
        .ok()
        .map(|id| id.hyphenated().to_string())
}

/// A secret from a file, as relay-config reads one: the trailing newline of `echo` is
/// not part of it.
fn read_secret_file(path: &Path, what: &str) -> Step<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Stop::Usage(format!("{what} {}: cannot read it: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(Stop::Usage(format!("{what} {} is empty", path.display())));
    }
    Ok(Secret::new(value))
}

fn reference_path(path: &Path, config_dir: &Path) -> Step<String> {
    tenant_file::config_path(path, config_dir)
        .map_err(|e| Stop::Usage(format!("{}: {e}", path.display())))
}

/// Checks the arguments against the configuration and decides everything that does not
/// need Entra.
fn prepare(args: &Args, env: &HashMap<String, String>) -> Step<Plan> {
    let name = args.name.clone();
    if !valid_name(&name) {
        return Err(Stop::Usage(format!(
            "--name `{name}`: must be 1–64 characters of a-z, 0-9, `_` and `-`"
        )));
    }
    let tenant_id = guid(&args.tenant_id).ok_or_else(|| {
        Stop::Usage(format!(
            "--tenant-id `{}`: must be a GUID (the customer's Entra tenant id)",
            args.tenant_id
        ))
    })?;
    let config = relay_config::load(&relay_config::LoadOptions::new(&args.config, env)).map_err(
        |errors| {
            Stop::Usage(format!(
                "{} does not validate; fix it before onboarding:\n{errors}",
                args.config.display()
            ))
        },
    )?;
    let config_dir = config.config_dir.clone();
    let path = config.tenants_dir.join(format!("{name}.toml"));
    let shown = label(&config_dir, &path);
    if path.exists() && !args.force {
        return Err(Stop::Usage(format!(
            "{shown} already exists; pass --force to replace it (re-onboarding tenant {name})"
        )));
    }
    for t in &config.tenants {
        if t.file.file_name() == path.file_name() {
            continue;
        }
        let other = label(&config_dir, &t.file);
        if t.name == name {
            return Err(Stop::Usage(format!(
                "tenant name `{name}` is already used by {other}"
            )));
        }
        if t.tenant_id == tenant_id {
            return Err(Stop::Usage(format!(
                "tenant {tenant_id} is already configured as `{}` in {other}",
                t.name
            )));
        }
    }

    let client_id = match &args.client_id {
        Some(id) => guid(id).ok_or_else(|| {
            Stop::Usage(format!(
                "--client-id `{id}`: must be a GUID (the app registration's client id)"
            ))
        })?,
        None => {
            let mut ids: Vec<&str> = config
                .tenants
                .iter()
                .map(|t| t.auth.client_id.as_str())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            match ids.as_slice() {
                [one] => {
                    println!("using client id {one}, the app every configured tenant uses");
                    one.to_string()
                }
                [] => {
                    return Err(Stop::Usage(
                        "--client-id is required: no tenant is configured yet to take it from"
                            .to_string(),
                    ))
                }
                _ => {
                    return Err(Stop::Usage(
                        "--client-id is required: the configured tenants use different apps"
                            .to_string(),
                    ))
                }
            }
        }
    };

    let api = match args.api {
        Some(ApiArg::Graph) => Api::Graph,
        Some(ApiArg::Defender) => Api::Defender,
        None => config.defaults.api,
    };
    let streams: Option<Vec<Stream>> = args.streams.as_ref().map(|list| {
        let mut out = Vec::new();
        for s in list {
            let s = match s {
                StreamArg::Incidents => Stream::Incidents,
                StreamArg::Alerts => Stream::Alerts,
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    });
    let effective_streams = streams
        .clone()
        .unwrap_or_else(|| config.defaults.streams.clone());
    if effective_streams.is_empty() {
        return Err(Stop::Usage(
            "--streams must name at least one stream".to_string(),
        ));
    }
    let sinks: Option<Vec<String>> = args.sinks.as_ref().map(|list| {
        let mut out: Vec<String> = Vec::new();
        for s in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
        out
    });
    let defined: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
    let defined_text = if defined.is_empty() {
        "relay.toml defines none".to_string()
    } else {
        format!("defined: {}", defined.join(", "))
    };
    let effective_sinks = sinks
        .clone()
        .unwrap_or_else(|| config.defaults.sinks.clone());
    if effective_sinks.is_empty() {
        return Err(Stop::Usage(format!(
            "--sinks is required: relay.toml's [defaults] names no sinks ({defined_text})"
        )));
    }
    if let Some(unknown) = effective_sinks
        .iter()
        .find(|s| !config.sinks.contains_key(s.as_str()))
    {
        return Err(Stop::Usage(format!(
            "--sinks: no sink `{unknown}` is defined in relay.toml ({defined_text})"
        )));
    }

    let (endpoints, cloud) = match (&args.base_url, args.cloud) {
        (Some(base), _) => {
            if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
                return Err(Stop::Usage(format!(
                    "--base-url {base}: must be an http(s) base URL"
                )));
            }
            (
                Endpoints::single_host(base),
                Some(CloudEntry::Base(base.to_string())),
            )
        }
        (None, Some(named)) => {
            let cloud = Cloud::from_name(named.as_str()).unwrap_or(Cloud::Global);
            (cloud.endpoints(), Some(CloudEntry::Named(named.as_str())))
        }
        (None, None) => (config.defaults.cloud.endpoints(), None),
    };

    let mode = if args.admin_consent {
        Mode::AdminConsent
    } else if args.device_code {
        Mode::DeviceCode
    } else {
        Mode::AuthCode
    };
    let given = if let Some(file) = &args.client_secret_file {
        Given::Secret {
            value: read_secret_file(file, "--client-secret-file")?,
            reference: SecretRef::File(reference_path(file, &config_dir)?),
        }
    } else if let Some(var) = &args.client_secret_env {
        match env.get(var) {
            Some(v) if !v.is_empty() => Given::Secret {
                value: Secret::new(v.clone()),
                reference: SecretRef::Env(var.clone()),
            },
            _ => {
                return Err(Stop::Usage(format!(
                    "--client-secret-env {var}: the variable is not set (or empty) here"
                )))
            }
        }
    } else if let (Some(cert), Some(key)) = (&args.certificate, &args.private_key) {
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| {
            Stop::Usage(format!(
                "--certificate {}: cannot read it: {e}",
                cert.display()
            ))
        })?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Stop::Usage(format!(
                "--certificate {}: not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert.display()
            )));
        }
        let key_pem = read_secret_file(key, "--private-key")?;
        if !key_pem.expose().contains("PRIVATE KEY-----") {
            return Err(Stop::Usage(format!(
                "--private-key {}: not a PEM private key (-----BEGIN ... PRIVATE KEY-----)",
                key.display()
            )));
        }
        Given::Certificate {
            cert_pem,
            key_pem,
            certificate_file: reference_path(cert, &config_dir)?,
            private_key: SecretRef::File(reference_path(key, &config_dir)?),
        }
    } else {
        Given::None
    };
    let auth = match (&given, mode) {
        (Given::None, Mode::AdminConsent) => {
            return Err(Stop::Usage(
                "--admin-consent needs the app's credential: --client-secret-file, \
                 --client-secret-env, or --certificate with --private-key"
                    .to_string(),
            ))
        }
        (Given::Secret { reference, .. }, Mode::AdminConsent) => AuthEntry::ClientSecret {
            client_secret: reference.clone(),
        },
        (
            Given::Certificate {
                certificate_file,
                private_key,
                ..
            },
            _,
        ) => AuthEntry::Certificate {
            certificate_file: certificate_file.clone(),
            private_key: private_key.clone(),
        },
        (Given::Secret { reference, .. }, _) => AuthEntry::RefreshToken {
            client_secret: Some(reference.clone()),
        },
        (Given::None, _) => AuthEntry::RefreshToken {
            client_secret: None,
        },
    };
    let mut comment = vec![format!(
        "Written by `xdr-relay onboard` on {} ({}).",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        mode.describe()
    )];
    if matches!(auth, AuthEntry::RefreshToken { .. }) {
        comment.push(
            "The refresh token is not in this file: it is kept encrypted in the state store."
                .to_string(),
        );
    }
    let file = TenantFile {
        comment,
        name: name.clone(),
        tenant_id: tenant_id.clone(),
        api: args.api.map(|_| api),
        streams,
        sinks,
        cloud,
        client_id: client_id.clone(),
        auth,
    };
    Ok(Plan {
        name,
        tenant_id,
        client_id,
        mode,
        feeds: effective_streams
            .iter()
            .map(|&s| Feed::of(api, s))
            .collect(),
        endpoints,
        file,
        given,
        wait: Duration::from_secs(args.no_browser_wait_secs.max(1)),
        redirect_port: args.redirect_port,
        config_path: args.config.clone(),
        config,
    })
}

/// An error and its causes on one line, then what to do about its AADSTS code.
fn with_advice(error: &(dyn std::error::Error + 'static), code: Option<u32>) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    advise(text, code)
}

/// `text`, then what to do about AADSTS `code` if we know.
fn advise(mut text: String, code: Option<u32>) -> String {
    if let Some(hint) = code.and_then(advice) {
        text.push_str("\n  hint: ");
        text.push_str(hint);
    }
    text
}

fn sign_in_failed(e: InteractiveError) -> Stop {
    let code = e.aadsts_code();
    Stop::Failed(with_advice(&e, code))
}

fn token_failed(e: &AuthError) -> String {
    with_advice(e, probe::aadsts_code(e))
}

/// The URL without its query, for messages.
fn endpoint_of(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

async fn onboard(plan: Plan, env: &HashMap<String, String>) -> Step<()> {
    let state = super::state::open(&plan.config, super::state::Access::Onboard)
        .map(Arc::new)
        .map_err(|e| Stop::Usage(format!("{e:#}")))?;
    let http = probe::token_http(&plan.config.http)
        .map_err(|e| Stop::Failed(format!("{:#}", anyhow::Error::new(e))))?;
    let probe = Probe::new(&plan.config.http, Arc::clone(&state))
        .map_err(|e| Stop::Failed(format!("{:#}", anyhow::Error::new(e))))?;
    let secret = match &plan.given {
        Given::Secret { value, .. } => Some(value.clone()),
        _ => None,
    };
    let sign_in = SignIn::new(
        http,
        &plan.name,
        &plan.tenant_id,
        &plan.endpoints,
        &plan.client_id,
        secret,
    );
    // One refresh token serves every resource the app is consented for (Entra binds it to
    // user and client), but one request may name only one resource: ask for the first
    // feed's; the test call gets tokens for the others from the refresh token.
    let first = plan
        .feeds
        .first()
        .map_or(relay_config::Audience::Graph, |f| f.audience());
    let scopes = vec![
        plan.endpoints.scope_for(first),
        "offline_access".to_string(),
    ];

    let refresh_token = match plan.mode {
        Mode::AuthCode => Some(auth_code(&plan, &sign_in, &scopes).await?),
        Mode::DeviceCode => Some(device_code(&plan, &sign_in, &scopes).await?),
        Mode::AdminConsent => {
            admin_consent(&plan, &sign_in).await?;
            app_credentials(&plan, &probe).await?;
            None
        }
    };
    if let Some(rt) = &refresh_token {
        state.save_refresh_token(&plan.name, rt).map_err(|e| {
            Stop::Failed(format!(
                "tenant {}: cannot store its refresh token in {}: {e}",
                plan.name,
                state.path().display()
            ))
        })?;
    }

    let file_label = plan.label(&plan.tenant_file_path());
    let written =
        match tenant_file::write(&plan.config.tenants_dir, &plan.name, &plan.file.render()) {
            Ok(w) => w,
            Err(e) => {
                if refresh_token.is_some() && !plan.tenant_file_path().exists() {
                    let _ = state.forget_credentials(&plan.name);
                }
                return Err(Stop::Failed(format!("cannot write {file_label}: {e}")));
            }
        };
    let undo = Undo {
        written,
        state: &state,
        tenant: &plan.name,
        label: file_label.clone(),
        forget: refresh_token.is_some(),
    };

    let config = match relay_config::load(&relay_config::LoadOptions::new(&plan.config_path, env)) {
        Ok(c) => c,
        Err(errors) => {
            let undone = undo.run();
            return Err(Stop::Usage(format!(
                "with {file_label} the configuration does not validate:\n{errors}\n{undone}"
            )));
        }
    };
    let Some(tenant) = config.tenant(&plan.name) else {
        let undone = undo.run();
        return Err(Stop::Failed(format!(
            "{file_label} was written but the configuration has no tenant `{}`; {undone}",
            plan.name
        )));
    };
    let auth = match probe::tenant_auth(tenant, &state) {
        Ok(a) => a,
        Err(e) => {
            let undone = undo.run();
            return Err(Stop::Failed(format!("{e:#}; {undone}")));
        }
    };
    probe.register(auth);
    if let Err(e) = probe
        .tokens(&plan.name, &plan.feeds, Duration::ZERO, |_| {})
        .await
    {
        let undone = undo.run();
        return Err(Stop::Failed(format!("{}\n{undone}", token_failed(&e))));
    }
    let now = Utc::now();
    let target = TenantTarget {
        name: tenant.name.clone(),
        tenant_id: tenant.tenant_id.clone(),
        endpoints: tenant.endpoints.clone(),
    };
    let counts = match probe
        .count(
            &target,
            &plan.feeds,
            now - chrono::Duration::hours(TEST_WINDOW_HOURS),
            now,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let undone = undo.run();
            return Err(Stop::Failed(format!(
                "{}: token OK, but the test call failed: {}\n{undone}",
                plan.name,
                with_advice(&e, None)
            )));
        }
    };
    if let Err(e) = state.set_auth_state(&plan.name, &AuthState::Ok { since: now }) {
        tracing::warn!(tenant = %plan.name, error = %e, "cannot record the auth state");
    }

    println!(
        "{}: token OK, {} visible in the last {TEST_WINDOW_HOURS} h",
        plan.name,
        probe::describe_counts(&counts)
    );
    let replaced = if undo.written.replaced() {
        "replaced"
    } else {
        "wrote"
    };
    match &plan.file.auth {
        AuthEntry::RefreshToken { .. } => println!(
            "{replaced} {file_label} (kind refresh_token; the refresh token is stored encrypted in {})",
            state.path().display()
        ),
        AuthEntry::ClientSecret { .. } => {
            println!("{replaced} {file_label} (kind client_secret)")
        }
        AuthEntry::Certificate { .. } => println!("{replaced} {file_label} (kind certificate)"),
    }
    if let Given::Secret {
        reference: SecretRef::Env(var),
        ..
    } = &plan.given
    {
        println!(
            "note: the daemon reads the client secret from ${var}: set it in the daemon's \
             environment (systemd: Environment= or EnvironmentFile=)"
        );
    }
    println!(
        "next: `systemctl reload xdr-relay` makes a running daemon poll {}; a daemon started \
         later picks it up by itself",
        plan.name
    );
    Ok(())
}

/// Takes back what onboarding wrote when it turns out not to work.
struct Undo<'a> {
    written: Written,
    state: &'a StateStore,
    tenant: &'a str,
    label: String,
    /// Whether a refresh token was stored for a tenant that did not exist before.
    forget: bool,
}

impl Undo<'_> {
    /// Rolls back and says what was done.
    fn run(self) -> String {
        let replaced = self.written.replaced();
        let mut said = match self.written.roll_back() {
            Ok(()) if replaced => format!("the previous {} was restored", self.label),
            Ok(()) => format!("{} was removed again", self.label),
            Err(e) => format!(
                "{} could not be taken back ({e}); fix or remove it by hand",
                self.label
            ),
        };
        if self.forget && !replaced {
            if let Err(e) = self.state.forget_credentials(self.tenant) {
                said.push_str(&format!(
                    "; its refresh token could not be removed from the state store: {e}"
                ));
            }
        }
        said
    }
}

async fn auth_code(plan: &Plan, sign_in: &SignIn, scopes: &[String]) -> Step<Secret> {
    let listener = bind(plan).await?;
    let redirect = listener.redirect_uri();
    let port = listener.port();
    let request = sign_in
        .authorize(&redirect, scopes)
        .map_err(sign_in_failed)?;
    println!(
        "To onboard tenant {} ({}), open this URL in a browser and sign in as an administrator \
         of the customer's tenant:\n\n  {}\n",
        plan.name,
        plan.tenant_id,
        request.url()
    );
    print_listener_hint(plan, port);
    match listener.wait(request.state(), &plan.name, plan.wait).await {
        None => Err(Stop::Failed(format!(
            "tenant {}: no sign-in came back to {redirect} within {} s",
            plan.name,
            plan.wait.as_secs()
        ))),
        Some(Redirect::Code(code)) => {
            println!("sign-in received; redeeming the authorization code");
            sign_in.redeem(request, &code).await.map_err(sign_in_failed)
        }
        Some(Redirect::Refused(e)) => Err(Stop::Failed(advise(
            format!(
                "tenant {}: {} refused: {e}",
                plan.name,
                endpoint_of(request.url())
            ),
            e.code,
        ))),
        Some(Redirect::Consented { .. }) => Err(Stop::Failed(format!(
            "tenant {}: the redirect carried an admin-consent answer, not an authorization code",
            plan.name
        ))),
    }
}

async fn device_code(plan: &Plan, sign_in: &SignIn, scopes: &[String]) -> Step<Secret> {
    let grant = sign_in
        .start_device_code(scopes)
        .await
        .map_err(sign_in_failed)?;
    println!(
        "To onboard tenant {} ({}), sign in as an administrator of the customer's tenant on \
         any device:\n\n  {}\n",
        plan.name,
        plan.tenant_id,
        grant.message()
    );
    println!(
        "Waiting up to {} s for code {} to be entered (the code expires in {} min) ...",
        plan.wait.min(grant.expires_in()).as_secs(),
        grant.user_code(),
        grant.expires_in().as_secs() / 60
    );
    let rt = sign_in
        .finish_device_code(&grant, plan.wait)
        .await
        .map_err(sign_in_failed)?;
    println!("sign-in completed");
    Ok(rt)
}

async fn admin_consent(plan: &Plan, sign_in: &SignIn) -> Step<()> {
    let listener = bind(plan).await?;
    let redirect = listener.redirect_uri();
    let port = listener.port();
    let request = sign_in.admin_consent(&redirect).map_err(sign_in_failed)?;
    println!(
        "To onboard tenant {} ({}), a global administrator of the customer's tenant opens this \
         URL and grants consent to app {}:\n\n  {}\n",
        plan.name,
        plan.tenant_id,
        plan.client_id,
        request.url()
    );
    print_listener_hint(plan, port);
    match listener.wait(request.state(), &plan.name, plan.wait).await {
        // The consent link is often forwarded to the customer's administrator, whose browser
        // cannot reach this listener: consent recorded in Entra shows in the credential
        // check that follows, which fails naming the AADSTS code if there is none.
        None => {
            println!(
                "no redirect came back to {redirect} within {} s; checking whether consent was \
                 granted anyway",
                plan.wait.as_secs()
            );
            Ok(())
        }
        Some(Redirect::Consented { tenant }) => {
            if let Some(t) = tenant.filter(|t| !t.eq_ignore_ascii_case(&plan.tenant_id)) {
                return Err(Stop::Failed(format!(
                    "tenant {}: consent was granted in tenant {t}, not in {}; sign in with an \
                     administrator of {}",
                    plan.name, plan.tenant_id, plan.tenant_id
                )));
            }
            println!("admin consent granted; checking the app's credentials");
            Ok(())
        }
        Some(Redirect::Refused(e)) => Err(Stop::Failed(advise(
            format!(
                "tenant {}: {} refused: {e}",
                plan.name,
                endpoint_of(request.url())
            ),
            e.code,
        ))),
        Some(Redirect::Code(_)) => Err(Stop::Failed(format!(
            "tenant {}: the redirect carried an authorization code, not an admin-consent answer",
            plan.name
        ))),
    }
}

/// Client credentials right after admin consent: the token request is the proof.
async fn app_credentials(plan: &Plan, probe: &Probe) -> Step<()> {
    let credential = match &plan.given {
        Given::Secret { value, .. } => Credential::ClientSecret {
            secret: value.clone(),
        },
        Given::Certificate {
            cert_pem, key_pem, ..
        } => Credential::Certificate {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        },
        Given::None => {
            return Err(Stop::Usage(
                "--admin-consent needs the app's credential".to_string(),
            ))
        }
    };
    probe.register(TenantAuth {
        name: plan.name.clone(),
        tenant_id: plan.tenant_id.clone(),
        endpoints: plan.endpoints.clone(),
        client_id: plan.client_id.clone(),
        credential,
        token_version: TokenVersion::V2,
        probe: relay_auth::ProbeBackoff::NONE,
    });
    probe
        .tokens(&plan.name, &plan.feeds, CONSENT_PROPAGATION, |e| {
            println!(
                "consent is not visible to the token endpoint yet ({}); trying again ...",
                probe::aadsts_code(e)
                    .map_or_else(|| "no code".to_string(), |c| format!("AADSTS{c}"))
            );
        })
        .await
        .map_err(|e| Stop::Failed(token_failed(&e)))?;
    println!("client credentials OK");
    Ok(())
}

async fn bind(plan: &Plan) -> Step<RedirectListener> {
    RedirectListener::bind(plan.redirect_port)
        .await
        .map_err(|e| {
            Stop::Usage(format!(
                "cannot listen on 127.0.0.1:{} for the redirect: {e}",
                plan.redirect_port.unwrap_or(0)
            ))
        })
}

fn print_listener_hint(plan: &Plan, port: u16) {
    println!(
        "The browser comes back to http://localhost:{port}/ on this machine. If it runs on \
         another one, forward the port first: ssh -L {port}:127.0.0.1:{port} <this server>"
    );
    println!(
        "Waiting up to {} s for the browser ...",
        plan.wait.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_guids() {
        assert!(valid_name("contoso-eu_2"));
        assert!(!valid_name("Contoso"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
        assert_eq!(
            guid(" 6F3B1C2A-0000-4000-8000-000000000001 ").as_deref(),
            Some("6f3b1c2a-0000-4000-8000-000000000001")
        );
        assert_eq!(guid("contoso.onmicrosoft.com"), None);
    }
}
