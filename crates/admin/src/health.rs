//! Credential health: when each tenant's credentials stop working, and what an operator
//! must be told about it. Pure: the inputs are the configuration (read once), the
//! refresh-token save times from the state store and the auth states, the output a
//! [`CredentialReport`]; the daemon's watcher, `/metrics` and `xdr-relay status` all read
//! the same report.
//!
//! What is checked, per tenant:
//! * a client secret (`kind = "client_secret"`, or a confidential `refresh_token` client)
//!   whose `auth.client_secret_expires` date is within [`WARN_WITHIN`];
//! * a certificate (`kind = "certificate"`) whose `notAfter` is within [`WARN_WITHIN`];
//! * a refresh token that was last saved more than 90 − 14 days ago: Entra revokes a
//!   refresh token unused for [`REFRESH_TOKEN_INACTIVITY`] (the relay rotates it on every
//!   refresh, so this only happens to a tenant that stopped refreshing: disabled, failing,
//!   or the daemon not running);
//! * revoked consent (the auth state `needs_consent`).
//!
//! Every warning carries the `xdr-relay onboard` command that fixes it, with the tenant's
//! current client id, API, streams, sinks and cloud spelled out, because `onboard --force`
//! rewrites the tenant file from its arguments and `[defaults]`.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use relay_config::{Api, AuthMethod, Cloud, Config, TenantConfig};
use relay_state::AuthState;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long before a credential lapses the warnings start.
pub const WARN_WITHIN: TimeDelta = TimeDelta::days(14);

/// Entra's refresh-token inactivity limit: a refresh token not used for this long is
/// revoked.
pub const REFRESH_TOKEN_INACTIVITY: TimeDelta = TimeDelta::days(90);

/// Where `xdr-relay onboard` looks for relay.toml when `--config` is not given.
const DEFAULT_CONFIG: &str = "/etc/xdr-relay/relay.toml";

/// A credential that expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// The app's client secret (`auth.client_secret_expires`).
    ClientSecret,
    /// The app's certificate (its `notAfter`).
    Certificate,
    /// The tenant's delegated refresh token (last saved + 90 days).
    RefreshToken,
}

impl CredentialKind {
    /// The name used in metrics labels and output: `client_secret`, `certificate`,
    /// `refresh_token`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ClientSecret => "client_secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::RefreshToken => "refresh_token",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            CredentialKind::ClientSecret => "client secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::RefreshToken => "refresh token",
        }
    }
}

/// When one credential of one tenant stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expiry {
    /// The tenant's configured name.
    pub tenant: String,
    /// Which credential.
    pub kind: CredentialKind,
    /// When it lapses.
    pub expires_at: DateTime<Utc>,
}

/// Something about a tenant's credentials an operator must act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Finding {
    /// The credential lapses within [`WARN_WITHIN`], or already has.
    Expiring {
        /// Which credential.
        kind: CredentialKind,
        /// When it lapses.
        expires_at: DateTime<Utc>,
    },
    /// An administrator revoked the consent or grant; nothing is polled until the tenant
    /// is onboarded again.
    ConsentRevoked {
        /// The Entra error code (`AADSTS65001`, ...).
        code: String,
        /// Since when.
        since: DateTime<Utc>,
    },
    /// The configured certificate cannot be read, so its expiry is unknown.
    Unreadable {
        /// Which credential.
        kind: CredentialKind,
        /// Why.
        error: String,
    },
}

/// One finding about one tenant, with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The tenant's configured name.
    pub tenant: String,
    /// What is wrong.
    #[serde(flatten)]
    pub finding: Finding,
    /// The `xdr-relay onboard ...` command that fixes it.
    pub fix: String,
}

impl Warning {
    /// What the warning is about (`client_secret`, `certificate`, `refresh_token`,
    /// `consent`): one log line per tenant and topic and day.
    pub fn topic(&self) -> &'static str {
        match &self.finding {
            Finding::Expiring { kind, .. } | Finding::Unreadable { kind, .. } => kind.as_str(),
            Finding::ConsentRevoked { .. } => "consent",
        }
    }

    /// Whether the tenant is already cut off (lapsed, revoked, unreadable) rather than
    /// about to be.
    pub fn is_lapsed(&self, now: DateTime<Utc>) -> bool {
        match &self.finding {
            Finding::Expiring { expires_at, .. } => *expires_at <= now,
            Finding::ConsentRevoked { .. } | Finding::Unreadable { .. } => true,
        }
    }

    /// The problem in a few words, e.g. `certificate expires 2025-07-03 10:00 UTC (in 2d 4h)`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        match &self.finding {
            Finding::Expiring { kind, expires_at } => {
                let at = expires_at.format("%Y-%m-%d %H:%M UTC");
                let noun = kind.noun();
                if *expires_at <= now {
                    format!(
                        "{noun} {} {at} ({} ago)",
                        lapsed_verb(*kind),
                        span(now - *expires_at)
                    )
                } else {
                    format!(
                        "{noun} {} {at} (in {})",
                        expiring_verb(*kind),
                        span(*expires_at - now)
                    )
                }
            }
            Finding::ConsentRevoked { code, since } => format!(
                "consent revoked ({code}) since {}; nothing is polled",
                since.format("%Y-%m-%d %H:%M UTC")
            ),
            Finding::Unreadable { kind, error } => {
                format!("{} expiry unknown: {error}", kind.noun())
            }
        }
    }
}

fn expiring_verb(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::RefreshToken => "is revoked for inactivity at",
        CredentialKind::ClientSecret | CredentialKind::Certificate => "expires",
    }
}

fn lapsed_verb(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::RefreshToken => "was revoked for inactivity at",
        CredentialKind::ClientSecret | CredentialKind::Certificate => "expired",
    }
}

/// `3d 4h`, `5h 12m`, `42m`.
fn span(d: TimeDelta) -> String {
    let mins = d.num_minutes().max(0);
    let (days, hours, mins) = (mins / 1_440, (mins % 1_440) / 60, mins % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else {
        format!("{mins}m")
    }
}

/// What the relay or the state store knows about a tenant's sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSignals {
    /// When a refresh token was last saved (rotation or onboarding).
    pub refresh_token_saved: Option<DateTime<Utc>>,
    /// The last recorded auth state.
    pub auth: Option<AuthState>,
}

/// Everything known about credential lifetimes at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CredentialReport {
    /// Every credential whose expiry is known, lapsed or not, by tenant then kind.
    pub expiries: Vec<Expiry>,
    /// What needs an operator: lapsing within [`WARN_WITHIN`], lapsed, revoked,
    /// unreadable.
    pub warnings: Vec<Warning>,
    /// Client secrets without `auth.client_secret_expires`: their expiry cannot be
    /// watched. By tenant name.
    pub unknown: Vec<String>,
}

/// The credential side of the configuration, read once: expiry dates and parsed
/// certificates of every tenant given.
#[derive(Debug, Clone)]
pub struct CredentialHealth {
    tenants: Vec<TenantCredentials>,
}

#[derive(Debug, Clone)]
struct TenantCredentials {
    name: String,
    method: Method,
    client_secret_expires: Option<DateTime<Utc>>,
    certificate: Option<Result<DateTime<Utc>, String>>,
    /// The `xdr-relay onboard ...` arguments that recreate this tenant as it is, without
    /// the credential flags.
    onboard: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    RefreshToken { confidential: bool },
    ClientSecret,
    Certificate,
}

impl CredentialHealth {
    /// Reads the credential facts of `tenants` (certificates are parsed here, once).
    /// `config` supplies the path `onboard --config` needs.
    pub fn new<'a>(
        config: &Config,
        tenants: impl IntoIterator<Item = &'a TenantConfig>,
    ) -> CredentialHealth {
        let tenants = tenants
            .into_iter()
            .map(|t| TenantCredentials::new(&config.config_file, t))
            .collect();
        CredentialHealth { tenants }
    }

    /// Whether no tenant is known.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The expiries and warnings as of `now`. `signals` is keyed by tenant name; a tenant
    /// missing from it has no saved refresh token and no recorded auth state.
    pub fn assess(
        &self,
        signals: &HashMap<String, TenantSignals>,
        now: DateTime<Utc>,
    ) -> CredentialReport {
        let none = TenantSignals::default();
        let mut report = CredentialReport::default();
        for t in &self.tenants {
            let signals = signals.get(&t.name).unwrap_or(&none);
            t.assess(signals, now, &mut report);
        }
        report
    }
}

impl TenantCredentials {
    fn new(config_file: &Path, t: &TenantConfig) -> TenantCredentials {
        let (method, certificate) = match &t.auth.method {
            AuthMethod::RefreshToken { client_secret, .. } => (
                Method::RefreshToken {
                    confidential: client_secret.is_some(),
                },
                None,
            ),
            AuthMethod::ClientSecret { .. } => (Method::ClientSecret, None),
            AuthMethod::Certificate {
                certificate_pem,
                certificate_file,
                ..
            } => (
                Method::Certificate,
                Some(
                    certificate_not_after(certificate_pem)
                        .map_err(|e| format!("{}: {e}", certificate_file.display())),
                ),
            ),
        };
        TenantCredentials {
            name: t.name.clone(),
            method,
            // The configuration holds a date; the secret's exact expiry time of day is not
            // known, so count from the start of that day (UTC): never a warning too late.
            client_secret_expires: t
                .auth
                .client_secret_expires
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc()),
            certificate,
            onboard: onboard_base(config_file, t),
        }
    }

    fn assess(&self, s: &TenantSignals, now: DateTime<Utc>, report: &mut CredentialReport) {
        let has_secret = matches!(
            self.method,
            Method::ClientSecret | Method::RefreshToken { confidential: true }
        );
        let mut expiries = Vec::new();
        if has_secret {
            match self.client_secret_expires {
                Some(at) => expiries.push((CredentialKind::ClientSecret, at)),
                None => report.unknown.push(self.name.clone()),
            }
        }
        match &self.certificate {
            Some(Ok(at)) => expiries.push((CredentialKind::Certificate, *at)),
            Some(Err(error)) => report.warnings.push(self.warning(Finding::Unreadable {
                kind: CredentialKind::Certificate,
                error: error.clone(),
            })),
            None => {}
        }
        if matches!(self.method, Method::RefreshToken { .. }) {
            if let Some(saved) = s.refresh_token_saved {
                expiries.push((
                    CredentialKind::RefreshToken,
                    saved + REFRESH_TOKEN_INACTIVITY,
                ));
            }
        }
        for (kind, expires_at) in expiries {
            report.expiries.push(Expiry {
                tenant: self.name.clone(),
                kind,
                expires_at,
            });
            if expires_at - now <= WARN_WITHIN {
                report
                    .warnings
                    .push(self.warning(Finding::Expiring { kind, expires_at }));
            }
        }
        if let Some(AuthState::NeedsConsent { code, since, .. }) = &s.auth {
            report.warnings.push(self.warning(Finding::ConsentRevoked {
                code: code.clone(),
                since: *since,
            }));
        }
    }

    fn warning(&self, finding: Finding) -> Warning {
        let fix = self.fix(&finding);
        Warning {
            tenant: self.name.clone(),
            finding,
            fix,
        }
    }

    /// The onboard command with the credential flags `finding` calls for: a new secret or
    /// certificate when that one lapses, the current ones when consent or a refresh token
    /// must be renewed.
    fn fix(&self, finding: &Finding) -> String {
        let renew = |k: CredentialKind| {
            matches!(finding,
                Finding::Expiring { kind, .. } | Finding::Unreadable { kind, .. } if *kind == k)
        };
        let credential = match self.method {
            Method::RefreshToken {
                confidential: false,
            } => String::new(),
            Method::RefreshToken { confidential: true } => {
                if renew(CredentialKind::ClientSecret) {
                    " --client-secret-file <new secret file>".to_string()
                } else {
                    " --client-secret-file <secret file>".to_string()
                }
            }
            Method::ClientSecret => {
                if renew(CredentialKind::ClientSecret) {
                    " --admin-consent --client-secret-file <new secret file>".to_string()
                } else {
                    " --admin-consent --client-secret-file <secret file>".to_string()
                }
            }
            Method::Certificate => {
                if renew(CredentialKind::Certificate) {
                    " --admin-consent --certificate <new cert.pem> --private-key <new key.pem>"
                        .to_string()
                } else {
                    " --admin-consent --certificate <cert.pem> --private-key <key.pem>".to_string()
                }
            }
        };
        format!("{}{credential} --force", self.onboard)
    }
}

/// `xdr-relay onboard [--config F] --name N --tenant-id T --client-id C --api A --streams S
/// --sinks K [--cloud X | --base-url U]`.
fn onboard_base(config_file: &Path, t: &TenantConfig) -> String {
    let mut cmd = String::from("xdr-relay onboard");
    if config_file != Path::new(DEFAULT_CONFIG) {
        let _ = write!(cmd, " --config {}", config_file.display());
    }
    let api = match t.api {
        Api::Graph => "graph",
        Api::Defender => "defender",
    };
    let streams: Vec<&str> = t.streams.iter().map(|s| s.as_str()).collect();
    let _ = write!(
        cmd,
        " --name {} --tenant-id {} --client-id {} --api {api} --streams {} --sinks {}",
        t.name,
        t.tenant_id,
        t.auth.client_id,
        streams.join(","),
        t.sinks.join(",")
    );
    match &t.cloud {
        Cloud::Global => {}
        Cloud::Custom(e) => {
            // `--base-url` puts Entra and every API on one host; other layouts cannot be
            // written by onboard and are left to the operator.
            if e.login == e.graph && e.login == e.m365d && e.login == e.mde {
                let _ = write!(cmd, " --base-url {}", e.login);
            }
        }
        named => {
            let _ = write!(cmd, " --cloud {}", named.as_str());
        }
    }
    cmd
}

/// The `notAfter` of the first `CERTIFICATE` block of `pem` (a chain may follow; the
/// first one is the app's, as the token manager uses it).
pub fn certificate_not_after(pem: &str) -> Result<DateTime<Utc>, String> {
    let blocks = pem::parse_many(pem).map_err(|e| format!("not valid PEM: {e}"))?;
    let der = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| "no CERTIFICATE block".to_string())?;
    let (_, cert) = X509Certificate::from_der(der.contents())
        .map_err(|e| format!("certificate cannot be parsed: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    DateTime::from_timestamp(secs, 0).ok_or_else(|| format!("notAfter {secs} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const CID: &str = "0b4c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3";

    /// A self-signed certificate valid until `not_after` (to the second), and its key.
    fn certificate(not_after: DateTime<Utc>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["relay-admin.test".into()]).unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + std::time::Duration::from_secs(1_600_000_000);
        params.not_after =
            epoch + std::time::Duration::from_secs(u64::try_from(not_after.timestamp()).unwrap());
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A configuration in `dir` with one tenant file per `(name, [auth] body)`; paths in
    /// the bodies are relative to `dir`.
    fn config_in(dir: &Path, tenants: &[(&str, &str)]) -> Config {
        fs::create_dir_all(dir.join("tenants.d")).unwrap();
        fs::write(
            dir.join("relay.toml"),
            "[state]\npath = \"state.db\"\nkey_file = \"state.key\"\n\n\
             [sinks.file]\ntype = \"file\"\npath = \"events\"\n",
        )
        .unwrap();
        fs::write(dir.join("app.secret"), "s3cr3t\n").unwrap();
        fs::write(dir.join("seed.rt"), "seed-refresh-token\n").unwrap();
        for (i, (name, auth)) in tenants.iter().enumerate() {
            fs::write(
                dir.join(format!("tenants.d/{name}.toml")),
                format!(
                    "tenant_id = \"3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a{i:02}\"\nsinks = [\"file\"]\n\
                     [auth]\nclient_id = \"{CID}\"\n{auth}\n"
                ),
            )
            .unwrap();
        }
        let env = HashMap::new();
        relay_config::load(&relay_config::LoadOptions::new(
            dir.join("relay.toml"),
            &env,
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`config_in`] a fresh directory.
    fn config(tenants: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), tenants);
        (dir, config)
    }

    fn cert_tenant(dir: &Path, name: &str, not_after: DateTime<Utc>) -> String {
        let (cert, key) = certificate(not_after);
        fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
        fs::write(dir.join(format!("{name}.key")), key).unwrap();
        format!(
            "kind = \"certificate\"\ncertificate_file = \"{name}.pem\"\n\
             private_key = {{ file = \"{name}.key\" }}"
        )
    }

    fn assess_at(
        config: &Config,
        signals: &[(&str, TenantSignals)],
        now: DateTime<Utc>,
    ) -> CredentialReport {
        let signals = signals
            .iter()
            .map(|(n, s)| ((*n).to_string(), s.clone()))
            .collect();
        CredentialHealth::new(config, &config.tenants).assess(&signals, now)
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn certificate_expiring_in_3_days_warns_and_in_30_days_does_not() {
        // Whole seconds, as a certificate's notAfter has.
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let soon = now + TimeDelta::days(3);
        let later = now + TimeDelta::days(30);
        let a = cert_tenant(dir.path(), "soon", soon);
        let b = cert_tenant(dir.path(), "later", later);
        let config = config_in(dir.path(), &[("soon", &a), ("later", &b)]);

        let report = assess_at(&config, &[], now);

        let expiry = |tenant: &str| {
            report
                .expiries
                .iter()
                .find(|e| e.tenant == tenant && e.kind == CredentialKind::Certificate)
                .unwrap()
                .expires_at
        };
        assert_eq!(expiry("soon").timestamp(), soon.timestamp());
        assert_eq!(expiry("later").timestamp(), later.timestamp());
        assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
        let w = &report.warnings[0];
        assert_eq!(w.tenant, "soon");
        assert_eq!(w.topic(), "certificate");
        assert!(!w.is_lapsed(now));
        assert!(
            w.describe(now).starts_with("certificate expires ")
                && w.describe(now).ends_with("(in 3d 0h)"),
            "{}",
            w.describe(now)
        );
        assert!(
            w.fix.contains(" --name soon --tenant-id ")
                && w.fix.contains(
                    " --admin-consent --certificate <new cert.pem> --private-key <new key.pem> --force"
                ),
            "{}",
            w.fix
        );
        assert!(
            w.fix.starts_with("xdr-relay onboard --config "),
            "{}",
            w.fix
        );
    }

    #[test]
    fn certificate_not_after_reads_the_first_certificate_of_a_chain() {
        let (first, _) = certificate(t("2030-01-02T03:04:05Z"));
        let (second, _) = certificate(t("2040-01-01T00:00:00Z"));
        let chain = format!("{first}{second}");
        assert_eq!(
            certificate_not_after(&chain).unwrap(),
            t("2030-01-02T03:04:05Z")
        );
        assert!(certificate_not_after("no pem here").is_err());
        assert!(certificate_not_after(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .unwrap_err()
        .contains("cannot be parsed"));
    }

    #[test]
    fn client_secret_expiry_date_warns_from_14_days_before_the_start_of_that_day() {
        let secret = "kind = \"client_secret\"\nclient_secret = { file = \"app.secret\" }\n\
                      client_secret_expires = \"2026-03-15\"";
        let (_d, config) = config(&[("contoso", secret)]);
        let expires = t("2026-03-15T00:00:00Z");

        let quiet = assess_at(
            &config,
            &[],
            expires - TimeDelta::days(14) - TimeDelta::seconds(1),
        );
        assert_eq!(quiet.expiries.len(), 1);
        assert_eq!(quiet.expiries[0].expires_at, expires);
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);

        let now = expires - TimeDelta::days(14);
        let warned = assess_at(&config, &[], now);
        assert_eq!(warned.warnings.len(), 1);
        let w = &warned.warnings[0];
        assert_eq!(
            w.finding,
            Finding::Expiring {
                kind: CredentialKind::ClientSecret,
                expires_at: expires
            }
        );
        assert_eq!(
            w.describe(now),
            "client secret expires 2026-03-15 00:00 UTC (in 14d 0h)"
        );
        assert!(
            w.fix.ends_with(
                &format!(" --name contoso --tenant-id 3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a00 --client-id {CID} --api graph --streams incidents,alerts --sinks file --admin-consent --client-secret-file <new secret file> --force")
            ),
            "{}",
            w.fix
        );

        let after = expires + TimeDelta::hours(5);
        let lapsed = assess_at(&config, &[], after);
        assert!(lapsed.warnings[0].is_lapsed(after));
        assert_eq!(
            lapsed.warnings[0].describe(after),
            "client secret expired 2026-03-15 00:00 UTC (5h 0m ago)"
        );
    }

    #[test]
    fn client_secret_without_expiry_date_is_reported_unknown() {
        let secret = "kind = \"client_secret\"\nclient_secret = { file = \"app.secret\" }";
        let (_d, config) = config(&[("contoso", secret)]);
        let report = assess_at(&config, &[], Utc::now());
        assert_eq!(report.unknown, vec!["contoso".to_string()]);
        assert!(report.expiries.is_empty());
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn refresh_token_warns_within_14_days_of_90_days_after_its_last_save() {
        let rt = "kind = \"refresh_token\"\nrefresh_token = { file = \"seed.rt\" }";
        let (_d, config) = config(&[("contoso", rt), ("fresh", rt), ("never", rt)]);
        let now = t("2026-06-01T12:00:00Z");
        let saved_long_ago = now - TimeDelta::days(80);
        let signals = [
            (
                "contoso",
                TenantSignals {
                    refresh_token_saved: Some(saved_long_ago),
                    auth: None,
                },
            ),
            (
                "fresh",
                TenantSignals {
                    refresh_token_saved: Some(now - TimeDelta::hours(1)),
                    auth: None,
                },
            ),
        ];
        let report = assess_at(&config, &signals, now);
        // "never" has no saved token: nothing to say about it yet.
        assert_eq!(
            report
                .expiries
                .iter()
                .map(|e| (e.tenant.as_str(), e.kind, e.expires_at))
                .collect::<Vec<_>>(),
            vec![
                (
                    "contoso",
                    CredentialKind::RefreshToken,
                    saved_long_ago + TimeDelta::days(90)
                ),
                (
                    "fresh",
                    CredentialKind::RefreshToken,
                    now - TimeDelta::hours(1) + TimeDelta::days(90)
                ),
            ]
        );
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let w = &report.warnings[0];
        assert_eq!((w.tenant.as_str(), w.topic()), ("contoso", "refresh_token"));
        assert_eq!(
            w.describe(now),
            "refresh token is revoked for inactivity at 2026-06-11 12:00 UTC (in 10d 0h)"
        );
        assert!(
            w.fix.ends_with(" --sinks file --force") && !w.fix.contains("--admin-consent"),
            "{}",
            w.fix
        );
    }

    #[test]
    fn revoked_consent_warns_with_the_onboard_command() {
        let rt = "kind = \"refresh_token\"\nrefresh_token = { file = \"seed.rt\" }\n\
                  client_secret = { file = \"app.secret\" }\nclient_secret_expires = \"2099-01-01\"";
        let (_d, config) = config(&[("contoso", rt)]);
        let now = t("2026-06-01T12:00:00Z");
        let since = now - TimeDelta::hours(2);
        let signals = [(
            "contoso",
            TenantSignals {
                refresh_token_saved: Some(now - TimeDelta::days(1)),
                auth: Some(AuthState::NeedsConsent {
                    code: "AADSTS65001".into(),
                    since,
                    next_probe: None,
                }),
            },
        )];
        let report = assess_at(&config, &signals, now);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        let w = &report.warnings[0];
        assert_eq!(w.topic(), "consent");
        assert!(w.is_lapsed(now));
        assert_eq!(
            w.describe(now),
            "consent revoked (AADSTS65001) since 2026-06-01 10:00 UTC; nothing is polled"
        );
        assert!(
            w.fix
                .ends_with(" --sinks file --client-secret-file <secret file> --force"),
            "{}",
            w.fix
        );
        // A healthy tenant says nothing.
        let ok = [(
            "contoso",
            TenantSignals {
                refresh_token_saved: Some(now),
                auth: Some(AuthState::Ok { since }),
            },
        )];
        assert!(assess_at(&config, &ok, now).warnings.is_empty());
    }

    #[test]
    fn unreadable_certificate_is_a_warning_not_an_expiry() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("bad.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("bad.key"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let auth = "kind = \"certificate\"\ncertificate_file = \"bad.pem\"\n\
                    private_key = { file = \"bad.key\" }";
        let config = config_in(dir.path(), &[("broken", auth)]);
        let report = assess_at(&config, &[], Utc::now());
        assert!(report.expiries.is_empty());
        assert_eq!(report.warnings.len(), 1);
        assert!(matches!(
            &report.warnings[0].finding,
            Finding::Unreadable { kind: CredentialKind::Certificate, error } if error.contains("bad.pem")
        ));
    }

    #[test]
    fn onboard_command_keeps_the_tenants_settings() {
        let rt = "kind = \"refresh_token\"\nrefresh_token = { file = \"seed.rt\" }";
        let (_d, mut config) = config(&[("contoso", rt)]);
        config.config_file = std::path::PathBuf::from(DEFAULT_CONFIG);
        config.tenants[0].api = Api::Defender;
        config.tenants[0].streams = vec![relay_config::Stream::Alerts];
        config.tenants[0].sinks = vec!["splunk".into(), "kafka".into()];
        config.tenants[0].cloud = Cloud::GccHigh;
        let health = CredentialHealth::new(&config, &config.tenants);
        let fix = health.tenants[0].fix(&Finding::ConsentRevoked {
            code: "AADSTS50173".into(),
            since: Utc::now(),
        });
        assert_eq!(
            fix,
            format!(
                "xdr-relay onboard --name contoso --tenant-id 3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a00 \
                 --client-id {CID} --api defender --streams alerts --sinks splunk,kafka \
                 --cloud gcc_high --force"
            )
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(TimeDelta::minutes(42)), "42m");
        assert_eq!(span(TimeDelta::minutes(5 * 60 + 12)), "5h 12m");
        assert_eq!(span(TimeDelta::hours(76)), "3d 4h");
        assert_eq!(span(TimeDelta::seconds(-5)), "0m");
    }
}
