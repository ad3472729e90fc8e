//! The simulated Microsoft Entra ID: the per-tenant token endpoints (v1 and v2), the
//! authorize, admin-consent and device-code endpoints, access-token minting and checking
//! for the simulated APIs, and live faults and revocations.
//!
//! It follows reference §1 of `defender-api.md`: v1 answers with string-typed
//! `expires_in`/`expires_on`, v2 with numbers; refresh tokens rotate on every use; errors
//! are Entra's JSON bodies with AADSTS codes. Each tenant has app registrations (client
//! id, secret, optional certificates) and an initial refresh token as after admin
//! consent, so clients configured for any credential kind work against it.
//!
//! Control routes under `/_sim/entra/` let out-of-process tests do what the methods of
//! [`Entra`] do.

mod assertion;
mod control;
mod fault;
mod interactive;
mod resource;
mod stats;
mod sts_error;
mod token_endpoint;
mod tokens;

#[cfg(test)]
mod tests;

pub use assertion::CertificateError;
pub use fault::TokenFault;
pub use stats::{GrantKind, InFlightPeak, Outcome, TokenCount, TokenStats};
pub use sts_error::{StsError, StsErrorBody};
pub use tokens::{AccessClaims, BearerError};

use assertion::RegisteredCert;
use axum::routing::{get, post, put};
use parking_lot::{Mutex, RwLock};
use relay_config::Audience;
use resource::Resource;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokens::{Signer, Subject};
use url::Url;

/// How the simulated Entra behaves.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Lifetime of issued access tokens (`expires_in`).
    pub access_token_lifetime: Duration,
    /// How long a refresh token keeps working after it was used once (and so replaced).
    pub refresh_token_grace: Duration,
    /// The device-flow polling `interval` announced to clients.
    pub device_code_interval: Duration,
    /// The simulator's own base URL (`http://127.0.0.1:port/`): the authority clients
    /// build client-assertion audiences from, and the device-login page's host.
    pub issuer_base: Url,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            access_token_lifetime: Duration::from_secs(3599),
            refresh_token_grace: Duration::from_secs(60),
            device_code_interval: Duration::from_secs(5),
            issuer_base: default_issuer_base(),
        }
    }
}

#[allow(clippy::expect_used)] // a constant literal; cannot fail
fn default_issuer_base() -> Url {
    Url::parse("http://127.0.0.1/").expect("literal URL parses")
}

/// One app registration in one tenant, consented, as an MSSP's onboarding leaves it.
#[derive(Debug, Clone)]
pub struct AppRegistration {
    /// Tenant GUID.
    pub tenant_id: String,
    /// Application (client) GUID.
    pub client_id: String,
    /// A valid client secret.
    pub client_secret: String,
    /// A refresh token issued to the tenant's admin for this app (as after consent).
    pub initial_refresh_token: String,
}

/// Errors of the embedding API.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    /// No such tenant in the simulator.
    #[error("tenant {tenant} is not simulated")]
    UnknownTenant {
        /// The tenant asked for.
        tenant: String,
    },
    /// The client id is not registered in the tenant.
    #[error("app {client_id} is not registered in tenant {tenant}")]
    UnknownApp {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
    },
    /// The certificate could not be used.
    #[error("certificate for app {client_id} in tenant {tenant} rejected")]
    Certificate {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// Why.
        #[source]
        source: CertificateError,
    },
}

struct AppState {
    client_id: String,
    client_secret: String,
    certs: Vec<RegisteredCert>,
    /// Admin consent in force; `revoke_consent` clears it, consent flows set it.
    consented: bool,
}

struct TenantState {
    tenant_id: String,
    apps: Vec<AppState>,
    fault: Option<TokenFault>,
    /// Refresh tokens with a sequence number below this were revoked (`revoke_grant`).
    revoked_below: Option<(u64, SystemTime)>,
}

impl TenantState {
    fn app(&self, client_id: &str) -> Option<&AppState> {
        self.apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    fn app_mut(&mut self, client_id: &str) -> Option<&mut AppState> {
        self.apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// The signed-in admin the simulator acts as for delegated flows.
    fn admin_upn(&self) -> String {
        let short: String = self.tenant_id.chars().take(8).collect();
        format!("admin@sim{short}.onmicrosoft.com")
    }
}

/// Delegated-grant state shared by refresh tokens, authorization codes and device codes.
#[derive(Clone)]
struct Grant {
    tenant_key: String,
    client_id: String,
    resource: Option<Resource>,
    offline_access: bool,
    openid: bool,
}

struct RefreshRecord {
    grant: Grant,
    seq: u64,
    issued_at: SystemTime,
    last_used: SystemTime,
    /// When this token was first redeemed (and so replaced by a new one).
    replaced_at: Option<SystemTime>,
}

struct AuthCode {
    grant: Grant,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    expires: SystemTime,
    redeemed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    Pending,
    Approved,
    Declined,
    Redeemed,
}

struct DeviceCode {
    grant: Grant,
    expires: SystemTime,
    state: DeviceState,
}

struct Knobs {
    refresh_token_max_inactive: Duration,
    device_code_lifetime: Duration,
    auth_code_lifetime: Duration,
    issuer_base: Url,
}

#[derive(Default)]
struct Registry {
    /// Keyed by lowercase tenant id.
    tenants: HashMap<String, TenantState>,
    /// Tenant keys in registration order (for `/common` authorize).
    tenant_order: Vec<String>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    auth_codes: HashMap<String, AuthCode>,
    device_codes: HashMap<String, DeviceCode>,
    /// Uppercase user code → device code.
    user_codes: HashMap<String, String>,
    seq: u64,
    inserts_since_sweep: u32,
}

/// How often (in issued codes and tokens) expired records are swept out.
const SWEEP_EVERY: u32 = 4096;
/// How long a rotated-away or expired record is kept after it stopped working, so that a
/// replay still gets the precise error rather than "malformed".
const TOMBSTONE: Duration = Duration::from_secs(600);

/// The simulated Entra ID. Cheap to share: `Arc<Entra>`.
pub struct Entra {
    cfg: EntraConfig,
    signer: Signer,
    registry: Mutex<Registry>,
    knobs: RwLock<Knobs>,
    stats: stats::Stats,
}

fn random_token(prefix: &str, len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    Alphanumeric.append_string(&mut rand::thread_rng(), &mut s, len);
    s
}

impl Entra {
    /// A simulator with these app registrations (one per tenant and client id).
    pub fn new(cfg: EntraConfig, apps: Vec<AppRegistration>) -> Arc<Entra> {
        let knobs = Knobs {
            refresh_token_max_inactive: Duration::from_secs(90 * 86_400),
            device_code_lifetime: Duration::from_secs(900),
            auth_code_lifetime: Duration::from_secs(600),
            issuer_base: cfg.issuer_base.clone(),
        };
        let entra = Arc::new(Entra {
            cfg,
            signer: Signer::new(),
            registry: Mutex::new(Registry::default()),
            knobs: RwLock::new(knobs),
            stats: stats::Stats::default(),
        });
        for app in apps {
            entra.register_app(app);
        }
        entra
    }

    /// The axum routes of the token, authorize, admin-consent and device-code endpoints
    /// and of the `/_sim/entra/` control API.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/{tenant}/oauth2/token", post(token_endpoint::token_v1))
            .route(
                "/{tenant}/oauth2/v2.0/token",
                post(token_endpoint::token_v2),
            )
            .route(
                "/{tenant}/oauth2/devicecode",
                post(interactive::devicecode_v1),
            )
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(interactive::devicecode_v2),
            )
            .route("/{tenant}/oauth2/authorize", get(interactive::authorize_v1))
            .route(
                "/{tenant}/oauth2/v2.0/authorize",
                get(interactive::authorize_v2),
            )
            .route("/{tenant}/adminconsent", get(interactive::adminconsent))
            .route(
                "/{tenant}/v2.0/adminconsent",
                get(interactive::adminconsent),
            )
            .route(
                "/devicelogin",
                get(interactive::devicelogin_page).post(interactive::devicelogin_submit),
            )
            .route("/_sim/entra/stats", get(control::stats))
            .route(
                "/_sim/entra/tenants/{tenant}/fault",
                put(control::set_fault).delete(control::clear_fault),
            )
            .route(
                "/_sim/entra/tenants/{tenant}/revoke-grant",
                post(control::revoke_grant),
            )
            .route(
                "/_sim/entra/tenants/{tenant}/revoke-consent",
                post(control::revoke_consent),
            )
            .route(
                "/_sim/entra/tenants/{tenant}/restore",
                post(control::restore),
            )
            .route(
                "/_sim/entra/tenants/{tenant}/certificates",
                post(control::register_certificate),
            )
            .route(
                "/_sim/entra/tenants/{tenant}/access-tokens",
                post(control::mint),
            )
            .route(
                "/_sim/entra/device-codes/{user_code}/approve",
                post(control::approve_device_code),
            )
            .route(
                "/_sim/entra/device-codes/{user_code}/decline",
                post(control::decline_device_code),
            )
            .with_state(Arc::clone(self))
    }

    /// Adds (or replaces) an app registration; its initial refresh token starts working.
    pub fn register_app(&self, app: AppRegistration) {
        let key = app.tenant_id.to_ascii_lowercase();
        let now = SystemTime::now();
        let mut reg = self.registry.lock();
        if !reg.tenants.contains_key(&key) {
            reg.tenant_order.push(key.clone());
        }
        let tenant = reg
            .tenants
            .entry(key.clone())
            .or_insert_with(|| TenantState {
                tenant_id: app.tenant_id.clone(),
                apps: Vec::new(),
                fault: None,
                revoked_below: None,
            });
        tenant
            .apps
            .retain(|a| !a.client_id.eq_ignore_ascii_case(&app.client_id));
        tenant.apps.push(AppState {
            client_id: app.client_id.clone(),
            client_secret: app.client_secret,
            certs: Vec::new(),
            consented: true,
        });
        reg.seq += 1;
        let seq = reg.seq;
        reg.refresh_tokens.insert(
            app.initial_refresh_token,
            RefreshRecord {
                grant: Grant {
                    tenant_key: key,
                    client_id: app.client_id,
                    resource: None,
                    offline_access: true,
                    openid: false,
                },
                seq,
                issued_at: now,
                last_used: now,
                replaced_at: None,
            },
        );
    }

    /// Whether the tenant is simulated.
    pub fn has_tenant(&self, tenant_id: &str) -> bool {
        self.registry
            .lock()
            .tenants
            .contains_key(&tenant_id.to_ascii_lowercase())
    }

    /// Sets the simulator's base URL once the listener is bound (client-assertion
    /// audiences and the device-login URL are built from it).
    pub fn set_issuer_base(&self, base: Url) {
        self.knobs.write().issuer_base = base;
    }

    /// How long a refresh token may go unused before it dies with AADSTS700082
    /// (Entra: 90 days).
    pub fn set_refresh_token_max_inactive(&self, d: Duration) {
        self.knobs.write().refresh_token_max_inactive = d;
    }

    /// Lifetime of new device codes (Entra: 900 s).
    pub fn set_device_code_lifetime(&self, d: Duration) {
        self.knobs.write().device_code_lifetime = d;
    }

    /// Lifetime of new authorization codes (Entra: about 10 minutes).
    pub fn set_auth_code_lifetime(&self, d: Duration) {
        self.knobs.write().auth_code_lifetime = d;
    }

    /// Checks an `Authorization` header for an API endpoint serving `audience`.
    pub fn verify_bearer(
        &self,
        authorization_header: Option<&str>,
        audience: Audience,
    ) -> Result<AccessClaims, BearerError> {
        self.signer
            .verify(authorization_header, audience, SystemTime::now())
    }

    /// An app-only access token for the tenant's (first) app, valid from now for
    /// `lifetime` (zero gives an already-expired token).
    pub fn mint_access_token(
        &self,
        tenant_id: &str,
        audience: Audience,
        lifetime: Duration,
    ) -> String {
        let now = SystemTime::now();
        self.mint_access_token_between(tenant_id, audience, now, tokens::after(now, lifetime))
    }

    /// An app-only access token with explicit `nbf` and `exp`.
    pub fn mint_access_token_between(
        &self,
        tenant_id: &str,
        audience: Audience,
        not_before: SystemTime,
        expires: SystemTime,
    ) -> String {
        let app_id = {
            let reg = self.registry.lock();
            reg.tenants
                .get(&tenant_id.to_ascii_lowercase())
                .and_then(|t| t.apps.first())
                .map_or_else(|| uuid::Uuid::nil().to_string(), |a| a.client_id.clone())
        };
        let who = Subject {
            tenant_id,
            app_id: &app_id,
            client_auth: "1",
            user: None,
        };
        self.signer
            .mint(&who, &Resource::canonical(audience), not_before, expires)
    }

    /// Sets or clears (`None`) a live fault on the tenant's token endpoints.
    pub fn set_token_fault(&self, tenant_id: &str, fault: Option<TokenFault>) {
        if let Some(t) = self
            .registry
            .lock()
            .tenants
            .get_mut(&tenant_id.to_ascii_lowercase())
        {
            t.fault = fault;
        }
    }

    /// Revokes every refresh token issued so far in the tenant (AADSTS50173), as when
    /// an admin revokes sessions or resets the password. Tokens from a new consent work.
    pub fn revoke_grant(&self, tenant_id: &str) {
        let mut reg = self.registry.lock();
        let below = reg.seq + 1;
        if let Some(t) = reg.tenants.get_mut(&tenant_id.to_ascii_lowercase()) {
            t.revoked_below = Some((below, SystemTime::now()));
        }
    }

    /// Withdraws consent for every app in the tenant: client credentials get
    /// `unauthorized_client` (AADSTS700016), delegated grants `invalid_grant`
    /// (AADSTS65001) until consent is given again (authorize, adminconsent, device login)
    /// or [`Entra::restore`].
    pub fn revoke_consent(&self, tenant_id: &str) {
        if let Some(t) = self
            .registry
            .lock()
            .tenants
            .get_mut(&tenant_id.to_ascii_lowercase())
        {
            for app in &mut t.apps {
                app.consented = false;
            }
        }
    }

    /// Clears the tenant's fault, grant revocation and consent revocation.
    pub fn restore(&self, tenant_id: &str) {
        if let Some(t) = self
            .registry
            .lock()
            .tenants
            .get_mut(&tenant_id.to_ascii_lowercase())
        {
            t.fault = None;
            t.revoked_below = None;
            for app in &mut t.apps {
                app.consented = true;
            }
        }
    }

    /// Registers a certificate (PEM) on an app: client assertions signed by its key and
    /// naming its thumbprint are accepted from then on.
    pub fn register_certificate(
        &self,
        tenant_id: &str,
        client_id: &str,
        cert_pem: &str,
    ) -> Result<(), EntraError> {
        let cert =
            RegisteredCert::from_pem(cert_pem).map_err(|source| EntraError::Certificate {
                tenant: tenant_id.to_string(),
                client_id: client_id.to_string(),
                source,
            })?;
        let mut reg = self.registry.lock();
        let tenant = reg
            .tenants
            .get_mut(&tenant_id.to_ascii_lowercase())
            .ok_or_else(|| EntraError::UnknownTenant {
                tenant: tenant_id.to_string(),
            })?;
        let app = tenant
            .app_mut(client_id)
            .ok_or_else(|| EntraError::UnknownApp {
                tenant: tenant_id.to_string(),
                client_id: client_id.to_string(),
            })?;
        tracing::debug!(tenant = %tenant_id, client_id, thumbprint = %cert.thumbprint_hex(), "certificate registered");
        app.certs.push(cert);
        Ok(())
    }

    /// Approves a pending device code as the tenant's admin (which also consents).
    /// False when the code is unknown, expired or no longer pending.
    pub fn approve_device_code(&self, user_code: &str) -> bool {
        self.finish_device_code(user_code, DeviceState::Approved)
    }

    /// Declines a pending device code; the client gets `authorization_declined`.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        self.finish_device_code(user_code, DeviceState::Declined)
    }

    fn finish_device_code(&self, user_code: &str, to: DeviceState) -> bool {
        let now = SystemTime::now();
        let mut reg = self.registry.lock();
        let reg = &mut *reg;
        let Some(device_code) = reg.user_codes.get(&user_code.trim().to_ascii_uppercase()) else {
            return false;
        };
        let Some(dc) = reg.device_codes.get_mut(device_code) else {
            return false;
        };
        if dc.state != DeviceState::Pending || dc.expires <= now {
            return false;
        }
        dc.state = to;
        if to == DeviceState::Approved {
            let grant = dc.grant.clone();
            if let Some(app) = reg
                .tenants
                .get_mut(&grant.tenant_key)
                .and_then(|t| t.app_mut(&grant.client_id))
            {
                app.consented = true;
            }
        }
        true
    }

    /// A snapshot of the token-request counters.
    pub fn token_requests(&self) -> TokenStats {
        self.stats.snapshot()
    }

    fn refresh_grace(&self) -> Duration {
        self.cfg.refresh_token_grace
    }
}

impl Registry {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Amortised clean-up of records that stopped working long ago.
    fn maybe_sweep(&mut self, now: SystemTime, grace: Duration) {
        self.inserts_since_sweep += 1;
        if self.inserts_since_sweep < SWEEP_EVERY {
            return;
        }
        self.inserts_since_sweep = 0;
        let dead_since = |t: SystemTime| now.duration_since(t).is_ok_and(|d| d > TOMBSTONE);
        self.refresh_tokens.retain(|_, r| {
            !r.replaced_at
                .is_some_and(|at| dead_since(tokens::after(at, grace)))
        });
        self.auth_codes.retain(|_, c| !dead_since(c.expires));
        let before = self.device_codes.len();
        self.device_codes.retain(|_, d| !dead_since(d.expires));
        if self.device_codes.len() != before {
            let live = &self.device_codes;
            self.user_codes.retain(|_, dc| live.contains_key(dc));
        }
    }
}
