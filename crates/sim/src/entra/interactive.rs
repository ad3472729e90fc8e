//! The browser-facing endpoints: authorize (auto-approved as the tenant's admin),
//! admin consent, the device-code start endpoint and the device-login page.
//!
//! There is no user in the simulator: whoever opens an authorize or consent URL is the
//! tenant's global admin and says yes.

use super::resource::{Resource, Scopes};
use super::stats::{GrantKind, Outcome};
use super::sts_error::StsError;
use super::token_endpoint::{correlation_id, token_json, Form, TenantPath, Version};
use super::{AuthCode, DeviceCode, DeviceState, Entra, Grant};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;
use url::Url;

type Params = Query<HashMap<String, String>>;

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// An error page, as Entra shows one when it cannot redirect back to the client.
fn error_page(e: &StsError) -> Response {
    let body = e.body(None);
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we're having trouble signing you in.</h1><p id=\"error\">{}</p><p>Request Id: {}<br>Correlation Id: {}<br>Timestamp: {}</p></body></html>",
            html_escape(&format!("AADSTS{}: {}", e.code, e.message)),
            body.trace_id,
            body.correlation_id,
            body.timestamp
        )),
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `redirect_uri` with the given query parameters appended.
fn redirect_with(redirect_uri: &Url, params: &[(&str, &str)]) -> Response {
    let mut target = redirect_uri.clone();
    {
        let mut q = target.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    // Entra answers authorize with 302 Found.
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

impl Entra {
    /// The tenant an interactive request is for: the path's tenant, or for `/common` and
    /// `/organizations` the tenant named by `domain_hint`, else the first one that has
    /// the app (the simulated admin's home tenant).
    fn interactive_tenant(
        &self,
        segment: &str,
        client_id: &str,
        domain_hint: Option<&str>,
    ) -> Result<String, StsError> {
        let (path, _) = self.resolve_path(segment);
        let reg = self.registry.lock();
        match path {
            TenantPath::Known { key, .. } => Ok(key),
            TenantPath::Unknown => Err(StsError::tenant_not_found(segment)),
            TenantPath::Common => {
                if let Some(hint) = domain_hint.map(str::to_ascii_lowercase) {
                    if reg.tenants.contains_key(&hint) {
                        return Ok(hint);
                    }
                }
                reg.tenant_order
                    .iter()
                    .find(|k| {
                        reg.tenants
                            .get(*k)
                            .is_some_and(|t| t.app(client_id).is_some())
                    })
                    .cloned()
                    .ok_or_else(|| StsError::app_not_found(client_id, segment))
            }
        }
    }

    /// Marks the app consented in the tenant; the tenant id on success.
    fn consent(&self, tenant_key: &str, client_id: &str) -> Result<String, StsError> {
        let mut reg = self.registry.lock();
        let tenant = reg
            .tenants
            .get_mut(tenant_key)
            .ok_or_else(|| StsError::tenant_not_found(tenant_key))?;
        let tenant_id = tenant.tenant_id.clone();
        let app = tenant
            .app_mut(client_id)
            .ok_or_else(|| StsError::app_not_found(client_id, &tenant_id))?;
        app.consented = true;
        Ok(tenant_id)
    }

    fn authorize(&self, version: Version, segment: &str, q: &HashMap<String, String>) -> Response {
        let Some(client_id) = param(q, "client_id") else {
            return error_page(&StsError::missing_parameter("client_id"));
        };
        let tenant_key = match self.interactive_tenant(segment, client_id, param(q, "domain_hint"))
        {
            Ok(k) => k,
            Err(e) => return error_page(&e),
        };
        // No redirect URIs are registered in the simulator, so any absolute URL (a
        // localhost listener during onboarding) is accepted.
        let Some(redirect_uri) = param(q, "redirect_uri").and_then(|r| Url::parse(r).ok()) else {
            return error_page(&StsError::missing_parameter("redirect_uri"));
        };
        let state = param(q, "state");
        let fail = |error: &str, e: StsError| {
            let description = format!("AADSTS{}: {}", e.code, e.message);
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = state {
                params.push(("state", s));
            }
            redirect_with(&redirect_uri, &params)
        };
        if param(q, "response_type") != Some("code") {
            return fail(
                "unsupported_response_type",
                StsError::new(
                    "unsupported_response_type",
                    700054,
                    "response_type 'code' is the only one the simulator supports.",
                ),
            );
        }
        let (resource, offline_access, openid) = match version {
            Version::V2 => match Scopes::parse(param(q, "scope").unwrap_or(""), &tenant_key) {
                Ok(s) => (s.resource, s.offline_access, s.openid),
                Err(e) => return fail(e.error, e),
            },
            Version::V1 => {
                match param(q, "resource").map(|r| Resource::parse_or_error(r, &tenant_key)) {
                    Some(Err(e)) => return fail(e.error, e),
                    Some(Ok(r)) => (Some(r), true, false),
                    None => (None, true, false),
                }
            }
        };
        let challenge = match (param(q, "code_challenge"), param(q, "code_challenge_method")) {
            (None, _) => None,
            (Some(c), None) => Some((c.to_string(), "plain".to_string())),
            (Some(c), Some(m)) if m == "S256" || m == "plain" => Some((c.to_string(), m.to_string())),
            (Some(_), Some(_)) => {
                return fail(
                    "invalid_request",
                    StsError::new(
                        "invalid_request",
                        501491,
                        "Invalid size of Code_Challenge parameter or unsupported code_challenge_method.",
                    ),
                )
            }
        };
        let tenant_id = match self.consent(&tenant_key, client_id) {
            Ok(t) => t,
            Err(e) => return error_page(&e),
        };
        let code = super::random_token("1.A", 160);
        let session_state = uuid::Uuid::new_v4().to_string();
        let now = SystemTime::now();
        let lifetime = self.knobs.read().auth_code_lifetime;
        {
            let mut reg = self.registry.lock();
            reg.auth_codes.insert(
                code.clone(),
                AuthCode {
                    grant: Grant {
                        tenant_key,
                        client_id: client_id.to_string(),
                        resource,
                        offline_access,
                        openid,
                    },
                    redirect_uri: param(q, "redirect_uri").unwrap_or_default().to_string(),
                    challenge,
                    expires: super::tokens::after(now, lifetime),
                    redeemed: false,
                },
            );
            reg.maybe_sweep(now, self.refresh_grace());
        }
        tracing::debug!(tenant = %tenant_id, client_id, "authorization code issued");
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = state {
            params.push(("state", s));
        }
        params.push(("session_state", session_state.as_str()));
        redirect_with(&redirect_uri, &params)
    }

    fn admin_consent(&self, segment: &str, q: &HashMap<String, String>) -> Response {
        let Some(client_id) = param(q, "client_id") else {
            return error_page(&StsError::missing_parameter("client_id"));
        };
        let Some(redirect_uri) = param(q, "redirect_uri").and_then(|r| Url::parse(r).ok()) else {
            return error_page(&StsError::missing_parameter("redirect_uri"));
        };
        let tenant_id = match self
            .interactive_tenant(segment, client_id, param(q, "domain_hint"))
            .and_then(|key| self.consent(&key, client_id))
        {
            Ok(t) => t,
            Err(e) => return error_page(&e),
        };
        tracing::debug!(tenant = %tenant_id, client_id, "admin consent granted");
        let mut params = vec![("tenant", tenant_id.as_str())];
        if let Some(s) = param(q, "state") {
            params.push(("state", s));
        }
        params.push(("admin_consent", "True"));
        redirect_with(&redirect_uri, &params)
    }

    async fn device_code_start(
        &self,
        version: Version,
        segment: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let form = Form::parse(body);
        let (path, fault) = self.resolve_path(segment);
        let stats_tenant = match &path {
            TenantPath::Known { tenant_id, .. } => tenant_id.clone(),
            _ => segment.to_string(),
        };
        if let Some(response) = self.apply_fault(fault).await {
            self.stats
                .record(&stats_tenant, GrantKind::DeviceCodeStart, Outcome::Faulted);
            return response;
        }
        match self.start_device_flow(version, segment, &form) {
            Ok(body) => {
                self.stats
                    .record(&stats_tenant, GrantKind::DeviceCodeStart, Outcome::Issued);
                token_json(StatusCode::OK, &body)
            }
            Err(e) => {
                self.stats
                    .record(&stats_tenant, GrantKind::DeviceCodeStart, Outcome::Rejected);
                e.into_response_with(correlation_id(headers))
            }
        }
    }

    fn start_device_flow(
        &self,
        version: Version,
        segment: &str,
        form: &Form,
    ) -> Result<serde_json::Value, StsError> {
        let client_id = form
            .get("client_id")
            .ok_or_else(|| StsError::missing_parameter("client_id"))?;
        let tenant_key = self.interactive_tenant(segment, client_id, None)?;
        let (resource, offline_access, openid) = match version {
            Version::V2 => {
                if form.get("resource").is_some() {
                    return Err(StsError::resource_on_v2());
                }
                let scope = form
                    .get("scope")
                    .ok_or_else(|| StsError::missing_parameter("scope"))?;
                let s = Scopes::parse(scope, &tenant_key)?;
                (s.resource, s.offline_access, s.openid)
            }
            Version::V1 => {
                let r = form
                    .get("resource")
                    .ok_or_else(|| StsError::missing_parameter("resource"))?;
                (Some(Resource::parse_or_error(r, &tenant_key)?), true, false)
            }
        };
        let (lifetime, base) = {
            let k = self.knobs.read();
            (k.device_code_lifetime, k.issuer_base.clone())
        };
        let now = SystemTime::now();
        let device_code = super::random_token("DAQABAAEAAAD--DLA3VO7QrddgJg7Wevr", 96);
        let user_code = {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            (0..9)
                .map(|_| char::from(rng.gen_range(b'A'..=b'Z')))
                .collect::<String>()
        };
        {
            let mut reg = self.registry.lock();
            if reg
                .tenants
                .get(&tenant_key)
                .is_none_or(|t| t.app(client_id).is_none())
            {
                let tenant_id = reg
                    .tenants
                    .get(&tenant_key)
                    .map_or(tenant_key.clone(), |t| t.tenant_id.clone());
                return Err(StsError::app_not_found(client_id, &tenant_id));
            }
            reg.user_codes
                .insert(user_code.clone(), device_code.clone());
            reg.device_codes.insert(
                device_code.clone(),
                DeviceCode {
                    grant: Grant {
                        tenant_key,
                        client_id: client_id.to_string(),
                        resource,
                        offline_access,
                        openid,
                    },
                    expires: super::tokens::after(now, lifetime),
                    state: DeviceState::Pending,
                },
            );
            reg.maybe_sweep(now, self.refresh_grace());
        }
        let verification_uri = base
            .join("devicelogin")
            .map_or_else(|_| base.to_string(), |u| u.to_string());
        let message = format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
        );
        let expires_in = lifetime.as_secs();
        let interval = self.cfg.device_code_interval.as_secs().max(1);
        Ok(match version {
            Version::V2 => json!({
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": expires_in,
                "interval": interval,
                "message": message,
            }),
            // The v1 endpoint names the URL `verification_url` and sends numbers as strings.
            Version::V1 => json!({
                "user_code": user_code,
                "device_code": device_code,
                "verification_url": verification_uri,
                "expires_in": expires_in.to_string(),
                "interval": interval.to_string(),
                "message": message,
            }),
        })
    }
}

pub(crate) async fn authorize_v1(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    e.authorize(Version::V1, &tenant, &q)
}

pub(crate) async fn authorize_v2(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    e.authorize(Version::V2, &tenant, &q)
}

pub(crate) async fn adminconsent(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Query(q): Params,
) -> Response {
    e.admin_consent(&tenant, &q)
}

pub(crate) async fn devicecode_v1(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    e.device_code_start(Version::V1, &tenant, &headers, &body)
        .await
}

pub(crate) async fn devicecode_v2(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    e.device_code_start(Version::V2, &tenant, &headers, &body)
        .await
}

const DEVICE_LOGIN_FORM: &str = "<!DOCTYPE html><html><head><title>Enter code</title></head><body><h1>Enter code</h1><p>Enter the code displayed on your app or device. You sign in as the tenant's administrator.</p><form method=\"post\" action=\"devicelogin\"><input name=\"otc\" autofocus> <button type=\"submit\">Next</button> <button type=\"submit\" name=\"decline\" value=\"1\">Cancel sign-in</button></form></body></html>";

pub(crate) async fn devicelogin_page() -> Html<&'static str> {
    Html(DEVICE_LOGIN_FORM)
}

/// The device-login form: approves (or, with `decline`, declines) the entered code.
pub(crate) async fn devicelogin_submit(State(e): State<Arc<Entra>>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let code = form.get("otc").unwrap_or_default();
    let decline = form.get("decline").is_some();
    let done = if decline {
        e.decline_device_code(code)
    } else {
        e.approve_device_code(code)
    };
    match (done, decline) {
        (true, false) => Html("<!DOCTYPE html><html><body><h1>You have signed in</h1><p>You may now close this window.</p></body></html>").into_response(),
        (true, true) => Html("<!DOCTYPE html><html><body><h1>Sign-in cancelled</h1></body></html>").into_response(),
        (false, _) => (
            StatusCode::BAD_REQUEST,
            Html("<!DOCTYPE html><html><body><h1>That code didn't work</h1><p>Check the code and try again.</p></body></html>"),
        )
            .into_response(),
    }
}
