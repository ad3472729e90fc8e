//! The token manager: one cache entry per (tenant, audience), one refresh in flight per entry,
//! refresh-token grants serialized per tenant, and a per-tenant health that stops a tenant
//! whose consent is gone from hammering Entra.

use crate::assertion::AssertionSigner;
use crate::entra::{classify, EntraErrorBody, EntraHttp, EntraTokenResponse, HttpFailure, Verdict};
use crate::error::{AuthError, EntraError, FailureKind, OAuthError};
use crate::store::RefreshTokenStore;
use crate::timing::{refresh_after, retry_at, LIFETIME_IF_UNSAID};
use chrono::{DateTime, Utc};
use oauth2::basic::{BasicRevocationErrorResponse, BasicTokenIntrospectionResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, RequestTokenError, Scope,
    StandardRevocableToken, TokenResponse, TokenUrl,
};
use parking_lot::{Mutex, RwLock};
use relay_config::{Audience, Endpoints, Secret};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};
use url::Url;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

type EntraClient<HasTokenUrl> = oauth2::Client<
    EntraErrorBody,
    EntraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

/// An access token for one (tenant, audience).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The bearer token.
    pub secret: Secret,
    /// When Entra says it expires (measured from when the request was sent, so slightly
    /// early).
    pub expires_at: Instant,
}

/// Which token endpoint generation a tenant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenVersion {
    /// `/{tenant}/oauth2/token` with `resource=<resource>` (ADAL era; legacy SIEM apps).
    V1,
    /// `/{tenant}/oauth2/v2.0/token` with `scope=<resource>/.default`.
    #[default]
    V2,
}

/// How a tenant authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Delegated: a refresh token obtained at onboarding (auth-code or device-code flow),
    /// rotated on every use. `client_secret` is needed for web (confidential) apps.
    RefreshToken {
        /// The refresh token to start from (the latest saved one).
        refresh_token: Secret,
        /// The app's client secret, if the app is confidential.
        client_secret: Option<Secret>,
    },
    /// App-only: client credentials with a client secret.
    ClientSecret {
        /// The app's client secret.
        secret: Secret,
    },
    /// App-only: client credentials with a certificate (a signed client assertion).
    Certificate {
        /// The certificate, PEM (public; its thumbprint identifies the key to Entra).
        cert_pem: String,
        /// The RSA private key, PEM (PKCS#1 or PKCS#8, unencrypted).
        key_pem: Secret,
    },
}

impl Credential {
    fn grant_name(&self) -> &'static str {
        match self {
            Credential::RefreshToken { .. } => "refresh_token",
            Credential::ClientSecret { .. } => "client_secret",
            Credential::Certificate { .. } => "certificate",
        }
    }
}

/// Everything the manager needs to get tokens for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAuth {
    /// The tenant's configured name: the key for every call and the `tenant` log field.
    pub name: String,
    /// The customer's Entra tenant id (GUID or verified domain).
    pub tenant_id: String,
    /// Login authority and resource identifiers.
    pub endpoints: Endpoints,
    /// The app (client) id.
    pub client_id: String,
    /// How the app authenticates.
    pub credential: Credential,
    /// v1 or v2 token endpoint.
    pub token_version: TokenVersion,
    /// How the token endpoint is probed while the tenant's token requests fail.
    pub probe: ProbeBackoff,
}

/// How a tenant whose token requests fail (consent gone, credential refused, token
/// endpoint down) is asked again: after `first`, then twice as long after each failed
/// probe, at most `max` apart. Between probes its token requests are answered from memory,
/// so thousands of broken tenants cost Entra nothing and the log nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeBackoff {
    /// The wait after the first failure (default 1 min).
    pub first: Duration,
    /// The longest wait between probes (default 30 min).
    pub max: Duration,
}

impl Default for ProbeBackoff {
    fn default() -> Self {
        ProbeBackoff {
            first: Duration::from_secs(60),
            max: Duration::from_secs(30 * 60),
        }
    }
}

impl ProbeBackoff {
    /// No wait: every token request goes to Entra. For one-shot tools (onboarding asks
    /// while consent propagates) and tests.
    pub const NONE: ProbeBackoff = ProbeBackoff {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The wait after a failure, given the wait before it (`None`: the first failure).
    pub fn next(&self, previous: Option<Duration>) -> Duration {
        match previous {
            None => self.first.min(self.max),
            Some(d) => d
                .saturating_mul(2)
                .clamp(self.first.min(self.max), self.max),
        }
    }
}

impl TenantAuth {
    /// The token endpoint: `{login}/{tenant_id}/oauth2/v2.0/token`, or `/oauth2/token` for v1.
    pub fn token_url(&self) -> Result<Url, String> {
        let mut url = self.endpoints.login.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| format!("login url {} cannot take a path", self.endpoints.login))?;
            segments.pop_if_empty().push(&self.tenant_id).push("oauth2");
            if self.token_version == TokenVersion::V2 {
                segments.push("v2.0");
            }
            segments.push("token");
        }
        Ok(url)
    }
}

/// Tuning of the manager. `Default` is what production wants.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Refresh a token once this fraction of its lifetime has passed (default 0.8) ...
    pub refresh_fraction: f64,
    /// ... or this long before it expires (default 5 min), whichever comes first; never in
    /// the first half of the lifetime.
    pub refresh_margin: Duration,
    /// Upper bound for one token request (default 30 s).
    pub request_timeout: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            refresh_fraction: 0.8,
            refresh_margin: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A tenant's authentication health, for `xdr-relay status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthState {
    /// The last token request succeeded (or none was made yet).
    Ok {
        /// The cached tokens, by audience.
        tokens: Vec<TokenStatus>,
    },
    /// The grant or consent is gone; an administrator must act. No token requests are made
    /// except one probe at `next_probe` (see [`ProbeBackoff`]); the first that gets a token
    /// ends this state.
    NeedsConsent {
        /// The Entra error (its `error` value and AADSTS code; no description text).
        error: EntraError,
        /// When the tenant entered this state.
        since: DateTime<Utc>,
        /// When the token endpoint is asked again.
        next_probe: DateTime<Utc>,
    },
    /// Token requests have been failing since `since`. While no cached token is still
    /// valid, none are made except one probe at `next_probe`.
    Failing {
        /// The last failure.
        kind: FailureKind,
        /// When the current run of failures began.
        since: DateTime<Utc>,
        /// When the token endpoint is asked again.
        next_probe: DateTime<Utc>,
    },
}

/// One cached token, as shown in [`AuthState::Ok`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    /// Which API the token is for.
    pub audience: Audience,
    /// When it expires (monotonic clock).
    pub expires_at: Instant,
    /// When it expires (wall clock), for display.
    pub expires_at_utc: DateTime<Utc>,
}

/// Token requests made for one (tenant, audience) since the process started, by how they
/// ended. For metrics: counted in memory, reset by a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RefreshCounts {
    /// The API the tokens were for.
    pub audience: Audience,
    /// A token was issued.
    pub ok: u64,
    /// The request failed: transiently (Entra or the network down, throttled, a rotated
    /// refresh token that could not be saved) or rejected (bad credential); a token
    /// still valid was kept when it could be.
    pub failed: u64,
    /// Entra said the grant or consent is gone ([`AuthState::NeedsConsent`]); this
    /// includes the probes that found it still gone.
    pub needs_consent: u64,
}

impl RefreshCounts {
    fn zero(audience: Audience) -> RefreshCounts {
        RefreshCounts {
            audience,
            ok: 0,
            failed: 0,
            needs_consent: 0,
        }
    }

    fn count<T>(&mut self, outcome: &Result<T, AuthError>) {
        match outcome {
            Ok(_) => self.ok += 1,
            Err(AuthError::NeedsConsent { .. }) => self.needs_consent += 1,
            Err(_) => self.failed += 1,
        }
    }
}

/// A tenant's [`RefreshCounts`] by audience. Shared by every registration of the tenant,
/// so that a changed configuration (which replaces the [`Tenant`]) does not reset them.
type RefreshTally = Arc<Mutex<BTreeMap<Audience, RefreshCounts>>>;

/// Hands out access tokens for every (tenant, audience). Cheap to clone; one per process.
///
/// - A token is reused until it is due for refresh ([`ManagerOptions::refresh_fraction`]),
///   then replaced ahead of expiry; if that early refresh fails transiently the old token
///   is served until it actually expires.
/// - However many tasks ask at once, one request per (tenant, audience) is in flight and
///   everyone waiting gets its result. It runs in its own task, so a caller that gives up
///   cannot cut a refresh-token rotation in half.
/// - Refresh-token grants of one tenant are serialized (one current refresh token is shared
///   by all audiences), and a rotated refresh token is saved to the [`RefreshTokenStore`]
///   before the access token that came with it is handed out.
/// - A tenant whose grant or consent is gone goes to [`AuthState::NeedsConsent`], one whose
///   requests fail otherwise to [`AuthState::Failing`]; either is answered without network
///   traffic (unless a cached token is still valid) until it is re-registered with a
///   different [`TenantAuth`] or its next probe is due ([`ProbeBackoff`]). Entering and
///   leaving either state is logged once (ERROR or WARN, then INFO with how long it
///   lasted); the probes in between only at DEBUG. Other tenants are not affected: no lock
///   shared between tenants is held across a network call.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    store: Arc<dyn RefreshTokenStore>,
    opts: ManagerOptions,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
}

struct Tenant {
    auth: TenantAuth,
    token_url: Result<Url, String>,
    signer: Option<Result<AssertionSigner, String>>,
    state: Mutex<TenantState>,
    /// Held for the whole of a refresh-token grant, including saving the rotated token.
    rt_grant: tokio::sync::Mutex<()>,
    /// Token requests made, by audience and outcome.
    refreshes: RefreshTally,
}

struct TenantState {
    /// The current refresh token (refresh-token credentials only): the newest one Entra
    /// issued, saved or not.
    refresh_token: Option<Secret>,
    slots: HashMap<Audience, Slot>,
    health: Health,
}

type Outcome = Option<Result<AccessToken, AuthError>>;

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The refresh in flight; its channel gets the result.
    inflight: Option<watch::Receiver<Outcome>>,
}

#[derive(Clone)]
struct Cached {
    token: AccessToken,
    refresh_at: Instant,
    expires_at_utc: DateTime<Utc>,
}

enum Health {
    Ok,
    NeedsConsent {
        error: EntraError,
        since: DateTime<Utc>,
        began: Instant,
        probe: Probe,
    },
    Failing {
        kind: FailureKind,
        /// Whether retrying can help (the last failure was transient).
        transient: bool,
        since: DateTime<Utc>,
        began: Instant,
        probe: Probe,
    },
}

/// When a tenant that is not [`Health::Ok`] is asked again, and the wait that led there
/// (the next one doubles it).
#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    at_utc: DateTime<Utc>,
    delay: Duration,
}

impl Probe {
    fn after(now: Instant, delay: Duration) -> Probe {
        Probe {
            at: now + delay,
            at_utc: Utc::now()
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
            delay,
        }
    }
}

impl Health {
    fn probe(&self) -> Option<&Probe> {
        match self {
            Health::Ok => None,
            Health::NeedsConsent { probe, .. } | Health::Failing { probe, .. } => Some(probe),
        }
    }

    fn probe_mut(&mut self) -> Option<&mut Probe> {
        match self {
            Health::Ok => None,
            Health::NeedsConsent { probe, .. } | Health::Failing { probe, .. } => Some(probe),
        }
    }

    fn began(&self) -> Option<Instant> {
        match self {
            Health::Ok => None,
            Health::NeedsConsent { began, .. } | Health::Failing { began, .. } => Some(*began),
        }
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants = self.inner.tenants.read();
        let mut names: Vec<&String> = tenants.keys().collect();
        names.sort();
        f.debug_struct("TokenManager")
            .field("tenants", &names)
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager without tenants. `http` should not follow redirects (a token request must
    /// not be replayed elsewhere); `store` receives rotated refresh tokens.
    pub fn new(
        http: reqwest::Client,
        store: Arc<dyn RefreshTokenStore>,
        opts: ManagerOptions,
    ) -> Self {
        TokenManager {
            inner: Arc::new(Inner {
                http,
                store,
                opts,
                tenants: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Registers a tenant, or replaces it if anything in `auth` changed (which forgets its
    /// cached tokens and a needs-consent state). Registering an identical `auth` again keeps
    /// everything, including a refresh token rotated since.
    pub fn upsert_tenant(&self, auth: TenantAuth) {
        if let Some(existing) = self.inner.tenants.read().get(&auth.name) {
            if existing.auth == auth {
                return;
            }
        }
        let name = auth.name.clone();
        let refreshes = self
            .inner
            .tenants
            .read()
            .get(&name)
            .map(|old| Arc::clone(&old.refreshes))
            .unwrap_or_default();
        let tenant = Arc::new(Tenant::new(auth, refreshes));
        if let Some(Err(reason)) = &tenant.signer {
            warn!(tenant = %name, %reason, "certificate credential unusable");
        }
        if let Some(Ok(signer)) = &tenant.signer {
            if signer.not_after() < Utc::now().timestamp() {
                warn!(tenant = %name, thumbprint = signer.thumbprint(), "certificate has expired");
            }
        }
        let replaced = self.inner.tenants.write().insert(name.clone(), tenant);
        debug!(tenant = %name, replaced = replaced.is_some(), "tenant registered");
    }

    /// Forgets a tenant. A refresh in flight finishes but its refresh token is not saved.
    pub fn remove_tenant(&self, name: &str) {
        if self.inner.tenants.write().remove(name).is_some() {
            debug!(tenant = %name, "tenant removed");
        }
    }

    /// A valid access token for `tenant` and `audience`, from the cache or fresh from Entra.
    pub async fn access_token(
        &self,
        tenant: &str,
        audience: Audience,
    ) -> Result<AccessToken, AuthError> {
        let t = self.inner.tenant(tenant)?;
        let mut rx = {
            let mut st = t.state.lock();
            let now = Instant::now();
            // A failing tenant with a token still valid keeps using it (and retries on the
            // token's own schedule); without one, only the due probe goes to Entra.
            let usable = st
                .slots
                .get(&audience)
                .and_then(|s| s.cached.as_ref())
                .is_some_and(|c| now < c.token.expires_at);
            if !usable {
                if let Some(err) = self.wait_for_probe(&t, &mut st.health, now) {
                    return Err(err);
                }
            }
            let slot = st.slots.entry(audience).or_default();
            if let Some(c) = &slot.cached {
                if now < c.refresh_at {
                    return Ok(c.token.clone());
                }
            }
            match &slot.inflight {
                // A closed channel means the refresh task died (panicked): start anew.
                Some(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    slot.inflight = Some(rx.clone());
                    let span = tracing::info_span!(
                        "token_refresh",
                        tenant = %tenant,
                        audience = %audience,
                        grant = %t.auth.credential.grant_name()
                    );
                    let inner = self.inner.clone();
                    tokio::spawn(refresh(inner, t.clone(), audience, tx).instrument(span));
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(AuthError::Transient {
                tenant: tenant.to_string(),
                url: t.url_for_errors(),
                kind: FailureKind::Internal,
                retry_after: None,
                source: None,
            })
        })
    }

    /// `None` when a token request may go out now: the tenant is healthy, or its probe is
    /// due (then this caller makes it, and the probe is pushed back so that everyone else
    /// keeps failing fast meanwhile); otherwise the error to answer from memory.
    fn wait_for_probe(&self, t: &Tenant, health: &mut Health, now: Instant) -> Option<AuthError> {
        let tenant = &t.auth.name;
        let refused = match health {
            Health::Ok => return None,
            Health::NeedsConsent { error, since, .. } => AuthError::NeedsConsent {
                tenant: tenant.clone(),
                error: error.clone(),
                since: *since,
            },
            Health::Failing {
                kind,
                transient: true,
                probe,
                ..
            } => AuthError::Transient {
                tenant: tenant.clone(),
                url: t.url_for_errors(),
                kind: kind.clone(),
                retry_after: Some(probe.at.saturating_duration_since(now)),
                source: None,
            },
            Health::Failing { kind, .. } => AuthError::Rejected {
                tenant: tenant.clone(),
                url: t.url_for_errors(),
                kind: kind.clone(),
            },
        };
        let probe = health.probe_mut()?;
        if now < probe.at {
            return Some(refused);
        }
        // The probe's own outcome sets the real next one.
        *probe = Probe::after(now, probe.delay);
        debug!(tenant = %tenant, "probing the token endpoint of a failing tenant");
        None
    }

    /// When the token endpoint is next asked for `tenant`, if its token requests are failing
    /// (`None` when it is healthy or unknown). A poller waiting for the tenant to recover
    /// comes back then.
    pub fn next_probe(&self, tenant: &str) -> Option<Instant> {
        let t = self.inner.tenants.read().get(tenant).cloned()?;
        let st = t.state.lock();
        st.health.probe().map(|p| p.at)
    }

    /// Drops `rejected` from the cache after an API answered 401 with it, so the next
    /// [`access_token`](Self::access_token) fetches a new one. A newer token cached in the
    /// meantime (another task already refreshed) is kept.
    pub fn invalidate(&self, tenant: &str, audience: Audience, rejected: &AccessToken) {
        let Ok(t) = self.inner.tenant(tenant) else {
            return;
        };
        let mut st = t.state.lock();
        if let Some(slot) = st.slots.get_mut(&audience) {
            if slot.cached.as_ref().is_some_and(|c| &c.token == rejected) {
                slot.cached = None;
                debug!(tenant = %tenant, %audience, "access token rejected by the API; dropped");
            }
        }
    }

    /// The token requests made for `tenant` since the process started (across changes of
    /// its configuration), one entry per audience asked for, in audience order; empty for
    /// an unknown tenant or before its first request. Requests answered from the cache or
    /// refused from memory while the tenant needs consent are not counted.
    pub fn refresh_counts(&self, tenant: &str) -> Vec<RefreshCounts> {
        let Some(t) = self.inner.tenants.read().get(tenant).cloned() else {
            return Vec::new();
        };
        let counts = t.refreshes.lock();
        counts.values().copied().collect()
    }

    /// The tenant's authentication health, or `None` for an unknown tenant.
    pub fn auth_state(&self, tenant: &str) -> Option<AuthState> {
        let t = self.inner.tenants.read().get(tenant).cloned()?;
        let st = t.state.lock();
        Some(match &st.health {
            Health::Ok => {
                let mut tokens: Vec<TokenStatus> = st
                    .slots
                    .iter()
                    .filter_map(|(audience, slot)| {
                        slot.cached.as_ref().map(|c| TokenStatus {
                            audience: *audience,
                            expires_at: c.token.expires_at,
                            expires_at_utc: c.expires_at_utc,
                        })
                    })
                    .collect();
                tokens.sort_by_key(|s| s.audience);
                AuthState::Ok { tokens }
            }
            Health::NeedsConsent {
                error,
                since,
                probe,
                ..
            } => AuthState::NeedsConsent {
                error: error.clone(),
                since: *since,
                next_probe: probe.at_utc,
            },
            Health::Failing {
                kind, since, probe, ..
            } => AuthState::Failing {
                kind: kind.clone(),
                since: *since,
                next_probe: probe.at_utc,
            },
        })
    }
}

impl Inner {
    fn tenant(&self, name: &str) -> Result<Arc<Tenant>, AuthError> {
        self.tenants
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| AuthError::UnknownTenant {
                tenant: name.to_string(),
            })
    }

    /// Whether `t` is still the registered configuration of its tenant.
    fn is_current(&self, t: &Arc<Tenant>) -> bool {
        self.tenants
            .read()
            .get(&t.auth.name)
            .is_some_and(|cur| Arc::ptr_eq(cur, t))
    }

    /// One token request (and, for refresh tokens, the save of the rotated one).
    async fn fetch(&self, t: &Arc<Tenant>, audience: Audience) -> Result<Cached, AuthError> {
        let name = &t.auth.name;
        let url = t
            .token_url
            .clone()
            .map_err(|reason| AuthError::Credential {
                tenant: name.clone(),
                reason,
            })?;

        let Credential::RefreshToken { .. } = &t.auth.credential else {
            let sent = (Instant::now(), Utc::now());
            let response = self.request(t, &url, audience, None).await?;
            return Ok(self.cached(response, sent));
        };

        let _one_grant_at_a_time = t.rt_grant.lock().await;
        let current =
            t.state
                .lock()
                .refresh_token
                .clone()
                .ok_or_else(|| AuthError::Credential {
                    tenant: name.clone(),
                    reason: "no refresh token".to_string(),
                })?;
        let sent = (Instant::now(), Utc::now());
        let response = self.request(t, &url, audience, Some(&current)).await?;
        if let Some(rotated) = response.refresh_token() {
            let rotated = Secret::new(rotated.secret().clone());
            if rotated != current {
                if !self.is_current(t) {
                    // Saving it would overwrite the refresh token of the new configuration.
                    return Err(AuthError::Transient {
                        tenant: name.clone(),
                        url: url.to_string(),
                        kind: FailureKind::Superseded,
                        retry_after: None,
                        source: None,
                    });
                }
                // The rotated token is the live one from now on, saved or not: the next
                // attempt must use it (and save it again) rather than an older one.
                t.state.lock().refresh_token = Some(rotated.clone());
                if let Err(source) = self.store.save(name, &rotated).await {
                    return Err(AuthError::Store {
                        tenant: name.clone(),
                        source,
                    });
                }
                debug!("rotated refresh token saved");
            }
        }
        Ok(self.cached(response, sent))
    }

    fn cached(&self, response: EntraTokenResponse, sent: (Instant, DateTime<Utc>)) -> Cached {
        let lifetime = response.expires_in().unwrap_or_else(|| {
            warn!(
                assumed_secs = LIFETIME_IF_UNSAID.as_secs(),
                "token response without expires_in"
            );
            LIFETIME_IF_UNSAID
        });
        let (sent_at, sent_utc) = sent;
        let ahead = refresh_after(
            lifetime,
            self.opts.refresh_fraction,
            self.opts.refresh_margin,
        );
        debug!(
            expires_in_secs = lifetime.as_secs(),
            refresh_in_secs = ahead.as_secs(),
            "access token acquired"
        );
        Cached {
            token: AccessToken {
                secret: Secret::new(response.access_token().secret().clone()),
                expires_at: sent_at + lifetime,
            },
            refresh_at: sent_at + ahead,
            expires_at_utc: sent_utc
                + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::zero()),
        }
    }

    /// Sends the grant for `audience`: a refresh-token grant when `refresh_token` is given,
    /// client credentials otherwise.
    async fn request(
        &self,
        t: &Tenant,
        url: &Url,
        audience: Audience,
        refresh_token: Option<&Secret>,
    ) -> Result<EntraTokenResponse, AuthError> {
        let auth = &t.auth;
        let mut client = EntraClient::<EndpointNotSet>::new(ClientId::new(auth.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(url.clone()))
            .set_auth_type(AuthType::RequestBody);
        match &auth.credential {
            Credential::RefreshToken {
                client_secret: Some(secret),
                ..
            }
            | Credential::ClientSecret { secret } => {
                client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
            }
            Credential::RefreshToken { .. } | Credential::Certificate { .. } => {}
        }
        // v2 names the API by scope, v1 by resource (defender-api.md §1.1).
        let scope = match auth.token_version {
            TokenVersion::V2 => Some(Scope::new(auth.endpoints.scope_for(audience))),
            TokenVersion::V1 => None,
        };
        let resource = auth.endpoints.resource_for(audience).to_string();
        let http = EntraHttp { client: &self.http };
        debug!(url = %url, "requesting token");

        let answer = if let Some(rt) = refresh_token {
            let rt = oauth2::RefreshToken::new(rt.expose().to_string());
            let mut req = client.exchange_refresh_token(&rt);
            req = match scope {
                Some(scope) => req.add_scope(scope),
                None => req.add_extra_param("resource", resource),
            };
            tokio::time::timeout(self.opts.request_timeout, req.request_async(&http)).await
        } else {
            let mut req = client.exchange_client_credentials();
            req = match scope {
                Some(scope) => req.add_scope(scope),
                None => req.add_extra_param("resource", resource),
            };
            if let Some(signer) = &t.signer {
                let signer = signer.as_ref().map_err(|reason| AuthError::Credential {
                    tenant: auth.name.clone(),
                    reason: reason.clone(),
                })?;
                let assertion = signer
                    .assertion(&auth.client_id, url.as_str(), Utc::now().timestamp())
                    .map_err(|reason| AuthError::Credential {
                        tenant: auth.name.clone(),
                        reason,
                    })?;
                req = req
                    .add_extra_param("client_assertion_type", JWT_BEARER)
                    .add_extra_param("client_assertion", assertion.expose().to_string());
            }
            tokio::time::timeout(self.opts.request_timeout, req.request_async(&http)).await
        };

        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(request_error(&auth.name, url, e)),
            Err(_elapsed) => Err(AuthError::Transient {
                tenant: auth.name.clone(),
                url: url.to_string(),
                kind: FailureKind::Timeout,
                retry_after: None,
                source: None,
            }),
        }
    }
}

/// Maps what `oauth2` reports to what the caller should do. Raw response bodies are dropped
/// here: a body that failed to parse may still hold a token.
fn request_error(
    tenant: &str,
    url: &Url,
    e: RequestTokenError<HttpFailure, EntraErrorBody>,
) -> AuthError {
    let tenant = tenant.to_string();
    let url = url.to_string();
    let transient = |kind, retry_after, source: Option<reqwest::Error>| AuthError::Transient {
        tenant: tenant.clone(),
        url: url.clone(),
        kind,
        retry_after,
        source: source.map(|s| Arc::new(s) as Arc<dyn std::error::Error + Send + Sync>),
    };
    match e {
        RequestTokenError::ServerResponse(body) => {
            let error = body.to_error();
            match classify(&error) {
                Verdict::NeedsConsent => AuthError::NeedsConsent {
                    tenant,
                    error,
                    since: Utc::now(),
                },
                Verdict::Transient => transient(FailureKind::Entra(error), None, None),
                Verdict::Rejected => AuthError::Rejected {
                    tenant,
                    url,
                    kind: FailureKind::Entra(error),
                },
            }
        }
        RequestTokenError::Request(HttpFailure::Send(e)) => {
            let kind = if e.is_timeout() {
                FailureKind::Timeout
            } else {
                FailureKind::Connection
            };
            transient(kind, None, Some(e))
        }
        RequestTokenError::Request(HttpFailure::Status {
            status,
            retry_after,
            ..
        }) if status == 429 || status >= 500 => {
            transient(FailureKind::HttpStatus(status), retry_after, None)
        }
        RequestTokenError::Request(HttpFailure::Status { status, .. }) => AuthError::Rejected {
            tenant,
            url,
            kind: FailureKind::HttpStatus(status),
        },
        RequestTokenError::Request(HttpFailure::Build(_)) => AuthError::Rejected {
            tenant,
            url,
            kind: FailureKind::InvalidRequest,
        },
        RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => {
            transient(FailureKind::MalformedResponse, None, None)
        }
    }
}

/// The body of the refresh task: fetch, record the outcome in the tenant's state, tell the
/// waiters.
async fn refresh(
    inner: Arc<Inner>,
    t: Arc<Tenant>,
    audience: Audience,
    tx: watch::Sender<Outcome>,
) {
    let outcome = inner.fetch(&t, audience).await;
    t.refreshes
        .lock()
        .entry(audience)
        .or_insert_with(|| RefreshCounts::zero(audience))
        .count(&outcome);
    let result = {
        let mut st = t.state.lock();
        let now = Instant::now();
        let result = match outcome {
            Ok(cached) => {
                log_recovery(&t.auth.name, &st.health, now);
                st.health = Health::Ok;
                let token = cached.token.clone();
                st.slots.entry(audience).or_default().cached = Some(cached);
                Ok(token)
            }
            Err(err) => record_failure(&mut st, err, now, &t.auth.probe, audience),
        };
        if let Some(slot) = st.slots.get_mut(&audience) {
            slot.inflight = None;
        }
        result
    };
    tx.send_replace(Some(result));
}

/// Says once that a tenant which was not healthy gets tokens again, and for how long it
/// did not.
fn log_recovery(tenant: &str, health: &Health, now: Instant) {
    let Some(began) = health.began() else { return };
    let lasted = humantime_secs(now.saturating_duration_since(began));
    match health {
        Health::NeedsConsent { error, .. } => info!(
            tenant = %tenant,
            lasted_secs = now.saturating_duration_since(began).as_secs(),
            "tenant {tenant} has consent again ({} was lifted after {lasted}): tokens are \
             issued and polling resumes from its checkpoint",
            error_code(error)
        ),
        _ => info!(
            tenant = %tenant,
            lasted_secs = now.saturating_duration_since(began).as_secs(),
            "tenant {tenant}: token requests succeed again after failing for {lasted}; \
             polling resumes from its checkpoint"
        ),
    }
}

/// `AADSTS65001`, or the OAuth error when Entra gave no code.
fn error_code(error: &EntraError) -> String {
    match error.code {
        Some(code) => format!("AADSTS{code}"),
        None => error.error.as_str().to_owned(),
    }
}

/// What the operator should do about a tenant whose grant or consent is gone.
fn consent_advice(tenant: &str, error: &EntraError) -> String {
    match error.error {
        // A delegated grant: the refresh token (or the session behind it) was revoked.
        OAuthError::InvalidGrant => format!(
            "the refresh token was revoked or expired (sign-out, password reset, consent \
             withdrawn); run `xdr-relay onboard --name {tenant}` to sign in again, or have the \
             customer's administrator grant consent again"
        ),
        _ => "the customer's Global Administrator must grant admin consent to the app again \
              (the onboarding consent link)"
            .to_owned(),
    }
}

/// `90s`, `12m30s`, `2h5m`: short enough for a log line.
fn humantime_secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Updates the tenant's health after a failed request and decides what the waiters get:
/// the error, or the previous token if the failure is transient and it is still valid.
/// Entering a failing state is logged (ERROR when an operator must act, WARN otherwise);
/// a failed probe of a tenant already failing only at DEBUG, with the next probe.
fn record_failure(
    st: &mut TenantState,
    err: AuthError,
    now: Instant,
    backoff: &ProbeBackoff,
    audience: Audience,
) -> Result<AccessToken, AuthError> {
    let previous = st.health.probe().map(|p| p.delay);
    let mut delay = backoff.next(previous);
    if let Some(asked) = err.retry_after() {
        delay = delay.max(asked.min(backoff.max));
    }
    let probe = Probe::after(now, delay);

    if let AuthError::NeedsConsent {
        tenant,
        error,
        since,
    } = err
    {
        let (since, began) = match &st.health {
            Health::NeedsConsent { since, began, .. } => {
                debug!(next_probe_in = ?delay, "tenant still needs consent");
                (*since, *began)
            }
            _ => {
                error!(
                    tenant = %tenant,
                    code = %error_code(&error),
                    %error,
                    "tenant {tenant} needs consent ({}): {}. Its polling is suspended (nothing \
                     is skipped: it resumes from the checkpoint); the token endpoint is probed \
                     in {:?}, then at doubling intervals up to {:?}",
                    error_code(&error),
                    consent_advice(&tenant, &error),
                    delay,
                    backoff.max,
                );
                (since, now)
            }
        };
        st.health = Health::NeedsConsent {
            error: error.clone(),
            since,
            began,
            probe,
        };
        // The customer withdrew access: stop using tokens issued before, and make the
        // probe go to Entra rather than find a cached token.
        for slot in st.slots.values_mut() {
            slot.cached = None;
        }
        return Err(AuthError::NeedsConsent {
            tenant,
            error,
            since,
        });
    }

    let transient = err.is_transient();
    let served = if transient {
        st.slots
            .get_mut(&audience)
            .and_then(|s| s.cached.as_mut())
            .filter(|c| now < c.token.expires_at)
            .map(|cached| {
                cached.refresh_at = retry_at(now, cached.token.expires_at, err.retry_after());
                cached.token.clone()
            })
    } else {
        None
    };
    match &mut st.health {
        // A probe that failed for another reason says nothing new about consent; the next
        // one still backs off.
        Health::NeedsConsent { probe: p, .. } if transient => {
            debug!(error = %err, next_probe_in = ?delay, "probe of a tenant that needs consent failed");
            *p = probe;
        }
        Health::Failing {
            kind,
            transient: was,
            probe: p,
            ..
        } => {
            debug!(error = %err, next_probe_in = ?delay, "token request still failing");
            *kind = err.kind();
            *was = transient;
            *p = probe;
        }
        _ => {
            let tenant = err.tenant().to_owned();
            if served.is_some() {
                warn!(
                    tenant = %tenant,
                    error = %err,
                    "token refresh failed; still using the current token while it is valid, \
                     retrying before it expires"
                );
            } else if transient {
                warn!(
                    tenant = %tenant,
                    error = %err,
                    "token requests of tenant {tenant} are failing; its polls wait and the \
                     token endpoint is probed in {delay:?}, then at doubling intervals up to \
                     {:?}",
                    backoff.max
                );
            } else {
                error!(
                    tenant = %tenant,
                    error = %err,
                    "token request of tenant {tenant} rejected: fix its credential in its \
                     tenant file (or re-onboard it); probed again in {delay:?}, then at \
                     doubling intervals up to {:?}",
                    backoff.max
                );
            }
            st.health = Health::Failing {
                kind: err.kind(),
                transient,
                since: Utc::now(),
                began: now,
                probe,
            };
        }
    }
    match served {
        Some(token) => Ok(token),
        None => Err(err),
    }
}

impl Tenant {
    fn new(auth: TenantAuth, refreshes: RefreshTally) -> Tenant {
        let token_url = auth.token_url();
        let signer = match &auth.credential {
            Credential::Certificate { cert_pem, key_pem } => {
                Some(AssertionSigner::load(cert_pem, key_pem))
            }
            _ => None,
        };
        let refresh_token = match &auth.credential {
            Credential::RefreshToken { refresh_token, .. } => Some(refresh_token.clone()),
            _ => None,
        };
        Tenant {
            auth,
            token_url,
            signer,
            state: Mutex::new(TenantState {
                refresh_token,
                slots: HashMap::new(),
                health: Health::Ok,
            }),
            rt_grant: tokio::sync::Mutex::new(()),
            refreshes,
        }
    }

    fn url_for_errors(&self) -> String {
        match &self.token_url {
            Ok(u) => u.to_string(),
            Err(_) => self.auth.endpoints.login.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(version: TokenVersion, login: &str) -> TenantAuth {
        TenantAuth {
            name: "contoso".into(),
            tenant_id: "00000000-0000-0000-0000-000000000001".into(),
            endpoints: Endpoints::single_host(&Url::parse(login).unwrap()),
            client_id: "app".into(),
            credential: Credential::ClientSecret {
                secret: Secret::new("s"),
            },
            token_version: version,
            probe: ProbeBackoff::default(),
        }
    }

    #[test]
    fn probes_double_from_first_to_max() {
        let b = ProbeBackoff::default();
        let mut waits = Vec::new();
        let mut last = None;
        for _ in 0..8 {
            let d = b.next(last);
            waits.push(d.as_secs());
            last = Some(d);
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 1800, 1800, 1800]);
        assert_eq!(ProbeBackoff::NONE.next(None), Duration::ZERO);
        assert_eq!(
            ProbeBackoff::NONE.next(Some(Duration::ZERO)),
            Duration::ZERO
        );
        // A shorter configuration applied to a tenant mid-backoff takes effect at once.
        let short = ProbeBackoff {
            first: Duration::from_secs(2),
            max: Duration::from_secs(8),
        };
        assert_eq!(
            short.next(Some(Duration::from_secs(1800))),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn log_texts_name_code_and_duration() {
        assert_eq!(humantime_secs(Duration::from_secs(75)), "75s");
        assert_eq!(humantime_secs(Duration::from_secs(750)), "12m30s");
        assert_eq!(humantime_secs(Duration::from_secs(7500)), "2h5m");
        let e = EntraError {
            error: OAuthError::InvalidGrant,
            code: Some(65001),
            trace_id: None,
            correlation_id: None,
        };
        assert_eq!(error_code(&e), "AADSTS65001");
        assert!(consent_advice("contoso", &e).contains("xdr-relay onboard --name contoso"));
    }

    #[test]
    fn token_urls() {
        let v2 = auth(TokenVersion::V2, "https://login.microsoftonline.com");
        assert_eq!(
            v2.token_url().unwrap().as_str(),
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/oauth2/v2.0/token"
        );
        let v1 = auth(TokenVersion::V1, "http://127.0.0.1:4000/");
        assert_eq!(
            v1.token_url().unwrap().as_str(),
            "http://127.0.0.1:4000/00000000-0000-0000-0000-000000000001/oauth2/token"
        );
        let prefixed = auth(TokenVersion::V2, "http://127.0.0.1:4000/login/");
        assert_eq!(
            prefixed.token_url().unwrap().as_str(),
            "http://127.0.0.1:4000/login/00000000-0000-0000-0000-000000000001/oauth2/v2.0/token"
        );
        let bad = auth(TokenVersion::V2, "mailto:x@example.com");
        assert!(bad.token_url().is_err());
    }
}
