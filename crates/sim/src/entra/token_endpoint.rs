//! `POST /{tenant}/oauth2/token` (v1) and `POST /{tenant}/oauth2/v2.0/token` (v2): the
//! four grants, client authentication, refresh-token rotation and the response shapes.

use super::assertion::{ClientAssertion, RegisteredCert, ASSERTION_TYPE};
use super::resource::{delegated_scopes, Resource, Scopes};
use super::stats::{GrantKind, Outcome};
use super::sts_error::StsError;
use super::tokens::{self, Subject};
use super::{DeviceState, Entra, Grant, RefreshRecord, TokenFault};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::SystemTime;

/// Which protocol generation an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// A parsed `application/x-www-form-urlencoded` body.
pub(crate) struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        // An unparseable body is treated like an empty one: Entra then complains about
        // the first missing parameter, which is what a client needs to see.
        Form {
            pairs: serde_urlencoded::from_bytes(body).unwrap_or_default(),
        }
    }

    /// The first non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// Where a request was addressed.
pub(crate) enum TenantPath {
    /// A simulated tenant: lowercase key and the tenant id as registered.
    Known { key: String, tenant_id: String },
    /// `common`, `organizations` or `consumers`.
    Common,
    /// Anything else.
    Unknown,
}

impl TenantPath {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            TenantPath::Known { key: k, .. } => k == key,
            TenantPath::Common => true,
            TenantPath::Unknown => false,
        }
    }
}

enum Credential {
    None,
    Secret(String),
    Assertion(String),
}

struct ClientAuth {
    client_id: Option<String>,
    credential: Credential,
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl ClientAuth {
    /// Client id and credential from the form or, per RFC 6749 §2.3.1, HTTP Basic
    /// (whose parts are form-encoded).
    fn from_request(form: &Form, headers: &HeaderMap) -> Result<ClientAuth, StsError> {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, b64)| {
                STANDARD
                    .decode(b64.trim())
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(id, secret)| (percent_decode(id), percent_decode(secret)))
                    })
                    .ok_or_else(|| {
                        StsError::new(
                            "invalid_client",
                            7000216,
                            "The Authorization header is not a valid HTTP Basic client authentication header.",
                        )
                    })
            })
            .transpose()?;
        let client_id = form
            .get("client_id")
            .map(str::to_string)
            .or_else(|| basic.as_ref().map(|(id, _)| id.clone()));
        let credential = if let Some((_, secret)) = basic {
            Credential::Secret(secret)
        } else if let Some(secret) = form.get("client_secret") {
            Credential::Secret(secret.to_string())
        } else if let Some(assertion) = form.get("client_assertion") {
            if form.get("client_assertion_type") != Some(ASSERTION_TYPE) {
                return Err(StsError::new(
                    "invalid_request",
                    90014,
                    "The required field 'client_assertion_type' is missing or is not 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
                ));
            }
            Credential::Assertion(assertion.to_string())
        } else {
            Credential::None
        };
        Ok(ClientAuth {
            client_id,
            credential,
        })
    }

    /// The client id, taken from the assertion's `iss` when the form has none.
    fn client_id(&self) -> Result<String, StsError> {
        if let Some(id) = &self.client_id {
            return Ok(id.clone());
        }
        if let Credential::Assertion(a) = &self.credential {
            if let Some(iss) = ClientAssertion::parse(a)?.issuer() {
                return Ok(iss.to_string());
            }
        }
        Err(StsError::missing_parameter("client_id"))
    }
}

/// What the credential check needs of an app, copied out of the registry.
struct AppSnapshot {
    tenant_id: String,
    client_id: String,
    secret: String,
    certs: Vec<RegisteredCert>,
    consented: bool,
    admin_upn: String,
}

/// One token request.
struct Request<'a> {
    version: Version,
    tenant_segment: &'a str,
    path: TenantPath,
    form: Form,
    headers: &'a HeaderMap,
    now: SystemTime,
}

pub(crate) async fn token_v1(
    State(entra): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    entra.token(Version::V1, &tenant, &headers, &body).await
}

pub(crate) async fn token_v2(
    State(entra): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    entra.token(Version::V2, &tenant, &headers, &body).await
}

pub(crate) fn correlation_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("client-request-id")
        .and_then(|h| h.to_str().ok())
}

/// JSON with the no-store headers Entra puts on token responses.
pub(crate) fn token_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

impl Entra {
    pub(crate) fn resolve_path(&self, segment: &str) -> (TenantPath, Option<TokenFault>) {
        let key = segment.to_ascii_lowercase();
        if matches!(key.as_str(), "common" | "organizations" | "consumers") {
            return (TenantPath::Common, None);
        }
        let reg = self.registry.lock();
        match reg.tenants.get(&key) {
            Some(t) => (
                TenantPath::Known {
                    key,
                    tenant_id: t.tenant_id.clone(),
                },
                t.fault,
            ),
            None => (TenantPath::Unknown, None),
        }
    }

    /// Applies the tenant's fault: `Some(response)` replaces the endpoint's answer.
    pub(crate) async fn apply_fault(&self, fault: Option<TokenFault>) -> Option<Response> {
        match fault {
            Some(TokenFault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                None
            }
            Some(other) => other.response(),
            None => None,
        }
    }

    async fn token(
        &self,
        version: Version,
        segment: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let form = Form::parse(body);
        let grant = GrantKind::from_grant_type(form.get("grant_type"));
        let (path, fault) = self.resolve_path(segment);
        let stats_tenant = match &path {
            TenantPath::Known { tenant_id, .. } => tenant_id.clone(),
            _ => segment.to_string(),
        };
        let _in_flight = self.stats.enter(&stats_tenant, grant);
        if let Some(response) = self.apply_fault(fault).await {
            self.stats.record(&stats_tenant, grant, Outcome::Faulted);
            tracing::debug!(tenant = %stats_tenant, ?grant, "token request answered by injected fault");
            return response;
        }
        let request = Request {
            version,
            tenant_segment: segment,
            path,
            form,
            headers,
            now: SystemTime::now(),
        };
        match self.grant(&request) {
            Ok(body) => {
                self.stats.record(&stats_tenant, grant, Outcome::Issued);
                token_json(StatusCode::OK, &body)
            }
            Err(e) => {
                let outcome = if e.error == "authorization_pending" {
                    Outcome::Pending
                } else {
                    Outcome::Rejected
                };
                self.stats.record(&stats_tenant, grant, outcome);
                tracing::debug!(tenant = %stats_tenant, ?grant, error = e.error, code = e.code, "token request rejected");
                e.into_response_with(correlation_id(headers))
            }
        }
    }

    fn grant(&self, req: &Request<'_>) -> Result<Value, StsError> {
        if matches!(req.path, TenantPath::Unknown) {
            return Err(StsError::tenant_not_found(req.tenant_segment));
        }
        if req.version == Version::V2 && req.form.get("resource").is_some() {
            return Err(StsError::resource_on_v2());
        }
        let grant_type = req
            .form
            .get("grant_type")
            .ok_or_else(|| StsError::missing_parameter("grant_type"))?;
        let client = ClientAuth::from_request(&req.form, req.headers)?;
        match grant_type {
            "client_credentials" => self.client_credentials(req, &client),
            "refresh_token" => self.refresh_token(req, &client),
            "authorization_code" => self.authorization_code(req, &client),
            "urn:ietf:params:oauth:grant-type:device_code" | "device_code" => {
                self.device_code(req, &client)
            }
            other => Err(StsError::unsupported_grant_type(other)),
        }
    }

    fn app_snapshot(&self, tenant_key: &str, client_id: &str) -> Result<AppSnapshot, StsError> {
        let reg = self.registry.lock();
        let tenant = reg
            .tenants
            .get(tenant_key)
            .ok_or_else(|| StsError::tenant_not_found(tenant_key))?;
        let app = tenant
            .app(client_id)
            .ok_or_else(|| StsError::app_not_found(client_id, &tenant.tenant_id))?;
        Ok(AppSnapshot {
            tenant_id: tenant.tenant_id.clone(),
            client_id: app.client_id.clone(),
            secret: app.client_secret.clone(),
            certs: app.certs.clone(),
            consented: app.consented,
            admin_upn: tenant.admin_upn(),
        })
    }

    /// The token-endpoint URLs a client assertion may name as `aud`: the v2 token URL
    /// and the v1 forms (reference §1.4), under the configured base and the Host the
    /// request came to, for the path's tenant segment and the tenant id.
    fn assertion_audiences(&self, req: &Request<'_>, tenant_id: &str) -> Vec<String> {
        let mut bases = vec![self
            .knobs
            .read()
            .issuer_base
            .as_str()
            .trim_end_matches('/')
            .to_string()];
        if let Some(host) = req.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            bases.push(format!("http://{host}"));
            bases.push(format!("https://{host}"));
        }
        let mut tenants = vec![req.tenant_segment.to_string()];
        if !tenant_id.eq_ignore_ascii_case(req.tenant_segment) {
            tenants.push(tenant_id.to_string());
        }
        let suffixes: &[&str] = match req.version {
            Version::V2 => &["/oauth2/v2.0/token", "/oauth2/token", "/v2.0"],
            Version::V1 => &["/oauth2/token", "/oauth2/v2.0/token", "/v2.0"],
        };
        let mut out = Vec::new();
        for base in &bases {
            for t in &tenants {
                for suffix in suffixes {
                    out.push(format!("{base}/{t}{suffix}"));
                }
            }
        }
        out
    }

    /// Checks the presented credential; returns `appidacr` ("0" none, "1" secret,
    /// "2" certificate).
    fn authenticate(
        &self,
        req: &Request<'_>,
        app: &AppSnapshot,
        client: &ClientAuth,
        required: bool,
    ) -> Result<&'static str, StsError> {
        match &client.credential {
            Credential::None if required => Err(StsError::missing_client_credential()),
            // Apps here allow public-client flows, so delegated grants may come without a
            // credential (as from the device-code flow), but a wrong one is still refused.
            Credential::None => Ok("0"),
            Credential::Secret(secret) => {
                if *secret == app.secret {
                    Ok("1")
                } else {
                    Err(StsError::invalid_client_secret(&app.client_id))
                }
            }
            Credential::Assertion(assertion) => {
                let parsed = ClientAssertion::parse(assertion)?;
                let audiences = self.assertion_audiences(req, &app.tenant_id);
                parsed.verify(&app.client_id, &app.certs, &audiences, req.now)?;
                Ok("2")
            }
        }
    }

    fn client_credentials(
        &self,
        req: &Request<'_>,
        client: &ClientAuth,
    ) -> Result<Value, StsError> {
        let TenantPath::Known { key, tenant_id } = &req.path else {
            return Err(StsError::grant_not_on_common());
        };
        let client_id = client.client_id()?;
        let app = self.app_snapshot(key, &client_id)?;
        if !app.consented {
            // Consent withdrawn means the service principal is gone from the tenant.
            return Err(StsError::app_not_found(&client_id, tenant_id));
        }
        let acr = self.authenticate(req, &app, client, true)?;
        let resource = match req.version {
            Version::V2 => {
                let scope = req
                    .form
                    .get("scope")
                    .ok_or_else(|| StsError::missing_parameter("scope"))?;
                Scopes::client_credentials_resource(scope, tenant_id)?
            }
            Version::V1 => {
                let resource = req
                    .form
                    .get("resource")
                    .ok_or_else(|| StsError::missing_parameter("resource"))?;
                Resource::parse_or_error(resource, tenant_id)?
            }
        };
        let who = Subject {
            tenant_id: &app.tenant_id,
            app_id: &app.client_id,
            client_auth: acr,
            user: None,
        };
        Ok(self.token_body(req, &who, &resource, None, None))
    }

    /// The resource a delegated request names (`scope` on v2, `resource` on v1), if any,
    /// and whether v2 asked for an id token.
    fn requested_resource(
        &self,
        req: &Request<'_>,
        tenant_id: &str,
    ) -> Result<(Option<Resource>, bool), StsError> {
        match req.version {
            Version::V2 => match req.form.get("scope") {
                Some(scope) => {
                    let s = Scopes::parse(scope, tenant_id)?;
                    Ok((s.resource, s.openid))
                }
                None => Ok((None, false)),
            },
            Version::V1 => match req.form.get("resource") {
                Some(r) => Ok((Some(Resource::parse_or_error(r, tenant_id)?), false)),
                None => Ok((None, false)),
            },
        }
    }

    fn refresh_token(&self, req: &Request<'_>, client: &ClientAuth) -> Result<Value, StsError> {
        let presented = req
            .form
            .get("refresh_token")
            .ok_or_else(|| StsError::missing_parameter("refresh_token"))?;
        let client_id = client.client_id()?;
        let grant = {
            let reg = self.registry.lock();
            let record = reg
                .refresh_tokens
                .get(presented)
                .ok_or_else(StsError::malformed_grant)?;
            record.grant.clone()
        };
        check_grant_target(req, &grant, &client_id, "refresh_token")?;
        let app = self.app_snapshot(&grant.tenant_key, &client_id)?;
        let acr = self.authenticate(req, &app, client, false)?;
        let (requested, openid) = self.requested_resource(req, &app.tenant_id)?;

        let now = req.now;
        let grace = self.refresh_grace();
        let max_inactive = self.knobs.read().refresh_token_max_inactive;
        let (new_refresh_token, resource, id_token_wanted) = {
            let mut reg = self.registry.lock();
            let reg = &mut *reg;
            let tenant = reg
                .tenants
                .get(&grant.tenant_key)
                .ok_or_else(|| StsError::tenant_not_found(&grant.tenant_key))?;
            let revoked = tenant.revoked_below;
            let consented = tenant.app(&client_id).is_some_and(|a| a.consented);
            let record = reg
                .refresh_tokens
                .get_mut(presented)
                .ok_or_else(StsError::malformed_grant)?;
            if let Some((below, at)) = revoked {
                if record.seq < below {
                    return Err(StsError::grant_revoked(
                        tokens::from_unix(tokens::unix(record.issued_at)),
                        tokens::from_unix(tokens::unix(at)),
                    ));
                }
            }
            if !consented {
                return Err(StsError::consent_required(&client_id));
            }
            if let Some(replaced) = record.replaced_at {
                if now >= tokens::after(replaced, grace) {
                    return Err(StsError::grant_expired());
                }
            }
            let idle = now.duration_since(record.last_used).unwrap_or_default();
            if idle > max_inactive {
                return Err(StsError::refresh_token_inactive(
                    tokens::from_unix(tokens::unix(record.issued_at)),
                    idle,
                ));
            }
            let resource = requested
                .or_else(|| record.grant.resource.clone())
                .unwrap_or_else(|| Resource::canonical(relay_config::Audience::Graph));
            record.replaced_at.get_or_insert(now);
            record.last_used = now;
            let openid = openid || record.grant.openid;
            let new_grant = Grant {
                resource: Some(resource.clone()),
                openid,
                ..record.grant.clone()
            };
            let token = self.store_refresh_token(reg, new_grant, now);
            (token, resource, openid)
        };
        let who = Subject {
            tenant_id: &app.tenant_id,
            app_id: &app.client_id,
            client_auth: acr,
            user: Some(&app.admin_upn),
        };
        let id_token = id_token_wanted.then(|| self.id_token(&app, now));
        Ok(self.token_body(req, &who, &resource, Some(new_refresh_token), id_token))
    }

    fn store_refresh_token(
        &self,
        reg: &mut super::Registry,
        grant: Grant,
        now: SystemTime,
    ) -> String {
        let token = super::random_token("0.A", 120);
        let seq = reg.next_seq();
        reg.refresh_tokens.insert(
            token.clone(),
            RefreshRecord {
                grant,
                seq,
                issued_at: now,
                last_used: now,
                replaced_at: None,
            },
        );
        reg.maybe_sweep(now, self.refresh_grace());
        token
    }

    fn authorization_code(
        &self,
        req: &Request<'_>,
        client: &ClientAuth,
    ) -> Result<Value, StsError> {
        let code = req
            .form
            .get("code")
            .ok_or_else(|| StsError::missing_parameter("code"))?;
        let client_id = client.client_id()?;
        let grant = {
            let reg = self.registry.lock();
            let record = reg.auth_codes.get(code).ok_or_else(|| {
                StsError::invalid_grant_value(
                    "code",
                    "The code is malformed or was not issued by this tenant.",
                )
            })?;
            record.grant.clone()
        };
        check_grant_target(req, &grant, &client_id, "code")?;
        let app = self.app_snapshot(&grant.tenant_key, &client_id)?;
        let acr = self.authenticate(req, &app, client, false)?;
        let now = req.now;
        let refresh_token = {
            let mut reg = self.registry.lock();
            let reg = &mut *reg;
            let consented = reg
                .tenants
                .get(&grant.tenant_key)
                .and_then(|t| t.app(&client_id))
                .is_some_and(|a| a.consented);
            let record = reg
                .auth_codes
                .get_mut(code)
                .ok_or_else(StsError::malformed_grant)?;
            if record.redeemed {
                return Err(StsError::code_already_redeemed());
            }
            if now >= record.expires {
                return Err(StsError::grant_expired());
            }
            let redirect = req
                .form
                .get("redirect_uri")
                .ok_or_else(|| StsError::missing_parameter("redirect_uri"))?;
            if redirect != record.redirect_uri {
                return Err(StsError::invalid_grant_value(
                    "redirect_uri",
                    "The value must exactly match the redirect URI used to obtain the authorization code.",
                ));
            }
            if let Some((challenge, method)) = &record.challenge {
                let verifier = req
                    .form
                    .get("code_verifier")
                    .ok_or_else(|| StsError::missing_parameter("code_verifier"))?;
                let computed = if method.eq_ignore_ascii_case("S256") {
                    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                } else {
                    verifier.to_string()
                };
                if computed != *challenge {
                    return Err(StsError::pkce_mismatch());
                }
            }
            if !consented {
                return Err(StsError::consent_required(&client_id));
            }
            record.redeemed = true;
            // v1 always returns a refresh token; v2 only for offline_access.
            let wants_rt = req.version == Version::V1 || record.grant.offline_access;
            let grant = record.grant.clone();
            wants_rt.then(|| self.store_refresh_token(reg, grant, now))
        };
        let resource = grant
            .resource
            .clone()
            .unwrap_or_else(|| Resource::canonical(relay_config::Audience::Graph));
        let who = Subject {
            tenant_id: &app.tenant_id,
            app_id: &app.client_id,
            client_auth: acr,
            user: Some(&app.admin_upn),
        };
        let id_token = grant.openid.then(|| self.id_token(&app, now));
        Ok(self.token_body(req, &who, &resource, refresh_token, id_token))
    }

    fn device_code(&self, req: &Request<'_>, client: &ClientAuth) -> Result<Value, StsError> {
        let device_code = req
            .form
            .get("device_code")
            .or_else(|| req.form.get("code"))
            .ok_or_else(|| StsError::missing_parameter("device_code"))?;
        let client_id = client.client_id()?;
        let grant = {
            let reg = self.registry.lock();
            let record = reg
                .device_codes
                .get(device_code)
                .ok_or_else(StsError::bad_verification_code)?;
            record.grant.clone()
        };
        check_grant_target(req, &grant, &client_id, "device_code")?;
        let app = self.app_snapshot(&grant.tenant_key, &client_id)?;
        let acr = self.authenticate(req, &app, client, false)?;
        let now = req.now;
        let refresh_token = {
            let mut reg = self.registry.lock();
            let reg = &mut *reg;
            let consented = reg
                .tenants
                .get(&grant.tenant_key)
                .and_then(|t| t.app(&client_id))
                .is_some_and(|a| a.consented);
            let record = reg
                .device_codes
                .get_mut(device_code)
                .ok_or_else(StsError::bad_verification_code)?;
            match record.state {
                DeviceState::Redeemed => {
                    return Err(StsError::invalid_grant_value(
                        "device_code",
                        "The code was already redeemed.",
                    ))
                }
                _ if now >= record.expires => return Err(StsError::device_code_expired()),
                DeviceState::Declined => return Err(StsError::authorization_declined()),
                DeviceState::Pending => return Err(StsError::authorization_pending()),
                DeviceState::Approved => {}
            }
            if !consented {
                return Err(StsError::consent_required(&client_id));
            }
            record.state = DeviceState::Redeemed;
            let grant = record.grant.clone();
            let wants_rt = req.version == Version::V1 || grant.offline_access;
            wants_rt.then(|| self.store_refresh_token(reg, grant, now))
        };
        let resource = grant
            .resource
            .clone()
            .unwrap_or_else(|| Resource::canonical(relay_config::Audience::Graph));
        let who = Subject {
            tenant_id: &app.tenant_id,
            app_id: &app.client_id,
            client_auth: acr,
            user: Some(&app.admin_upn),
        };
        let id_token = grant.openid.then(|| self.id_token(&app, now));
        Ok(self.token_body(req, &who, &resource, refresh_token, id_token))
    }

    /// An OpenID Connect id token for the simulated admin.
    fn id_token(&self, app: &AppSnapshot, now: SystemTime) -> String {
        let iat = tokens::unix(now);
        self.signer.sign(&json!({
            "aud": app.client_id,
            "iss": format!("https://login.microsoftonline.com/{}/v2.0", app.tenant_id),
            "iat": iat,
            "nbf": iat,
            "exp": iat + 3600,
            "name": "Simulated Admin",
            "oid": tokens::stable_guid(&format!("oid/{}", app.admin_upn)).to_string(),
            "preferred_username": app.admin_upn,
            "sub": tokens::stable_guid(&format!("sub/{}", app.admin_upn)).simple().to_string(),
            "tid": app.tenant_id,
            "ver": "2.0",
        }))
    }

    /// The success body: v2 with numbers, v1 with string-typed times and `resource`.
    fn token_body(
        &self,
        req: &Request<'_>,
        who: &Subject<'_>,
        resource: &Resource,
        refresh_token: Option<String>,
        id_token: Option<String>,
    ) -> Value {
        let lifetime = self.cfg.access_token_lifetime;
        let nbf = req.now;
        let exp = tokens::after(nbf, lifetime);
        let access_token = self.signer.mint(who, resource, nbf, exp);
        let expires_in = lifetime.as_secs();
        let mut body = Map::new();
        body.insert("token_type".into(), json!("Bearer"));
        let scope = who.user.map(|_| match req.version {
            Version::V2 => delegated_scopes(resource.audience)
                .iter()
                .map(|s| format!("{}/{s}", resource.scope_prefix()))
                .collect::<Vec<_>>()
                .join(" "),
            Version::V1 => delegated_scopes(resource.audience).join(" "),
        });
        if let Some(scope) = scope {
            body.insert("scope".into(), json!(scope));
        }
        match req.version {
            Version::V2 => {
                body.insert("expires_in".into(), json!(expires_in));
                body.insert("ext_expires_in".into(), json!(expires_in));
            }
            Version::V1 => {
                // v1 sends these as JSON strings (reference §1.5, samples/token-refresh-response-v1.json).
                body.insert("expires_in".into(), json!(expires_in.to_string()));
                body.insert("ext_expires_in".into(), json!(expires_in.to_string()));
                body.insert("expires_on".into(), json!(tokens::unix(exp).to_string()));
                body.insert("not_before".into(), json!(tokens::unix(nbf).to_string()));
                body.insert("resource".into(), json!(resource.requested));
            }
        }
        body.insert("access_token".into(), json!(access_token));
        if let Some(rt) = refresh_token {
            body.insert("refresh_token".into(), json!(rt));
        }
        if let Some(id) = id_token {
            body.insert("id_token".into(), json!(id));
        }
        Value::Object(body)
    }
}

/// A grant redeemed at another tenant's endpoint or by another client is refused.
fn check_grant_target(
    req: &Request<'_>,
    grant: &Grant,
    client_id: &str,
    what: &str,
) -> Result<(), StsError> {
    if !req.path.matches(&grant.tenant_key) {
        return Err(StsError::invalid_grant_value(
            what,
            "It was issued for a different tenant.",
        ));
    }
    if !grant.client_id.eq_ignore_ascii_case(client_id) {
        return Err(StsError::invalid_grant_value(
            what,
            "It was issued to a different client id.",
        ));
    }
    Ok(())
}
