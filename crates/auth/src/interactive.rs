//! Interactive sign-in, for onboarding a customer tenant (`xdr-relay onboard`): the
//! authorization-code flow with PKCE, the device-code flow and the admin-consent link.
//!
//! The daemon never runs these. Onboarding runs one of them once per customer and ends with
//! what the daemon then lives on: a refresh token (delegated access; one refresh token
//! serves every resource the app was consented for, because Entra binds it to the user and
//! the client, not to a resource), or a consented multi-tenant app whose client credentials
//! the [`TokenManager`](crate::TokenManager) uses.
//!
//! This module builds the URLs, checks what comes back to the redirect URI and talks to the
//! token and device-code endpoints, all through `oauth2` (PKCE, CSRF state, RFC 8628
//! polling with `authorization_pending` / `slow_down`). Listening for the browser's
//! redirect is the caller's job: it is plain I/O and the caller knows its terminal.

use crate::entra::{aadsts_code, classify, EntraErrorBody, EntraHttp, EntraTokenResponse};
use crate::entra::{HttpFailure, Verdict};
use crate::error::{EntraError, OAuthError};
use oauth2::basic::{BasicRevocationErrorResponse, BasicTokenIntrospectionResponse};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, DeviceCodeErrorResponse, DeviceCodeErrorResponseType, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use oauth2::{DeviceAuthorizationResponse, ExtraDeviceAuthorizationFields};
use parking_lot::Mutex;
use relay_config::{Endpoints, Secret};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;
use url::Url;

/// Entra's v2 endpoints as one `oauth2` client: authorize, device code and token.
type SignInClient = oauth2::Client<
    EntraErrorBody,
    EntraTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The longest error description (first line) kept from a redirect.
const MAX_DESCRIPTION: usize = 300;

/// Interactive sign-in against one customer tenant's Entra authority (v2 endpoints).
#[derive(Debug, Clone)]
pub struct SignIn {
    http: reqwest::Client,
    tenant: String,
    tenant_id: String,
    login: Url,
    client_id: String,
    client_secret: Option<Secret>,
}

impl SignIn {
    /// Sign-in for the tenant configured as `tenant` (the name errors carry) with Entra
    /// tenant id `tenant_id`, through the authority of `endpoints`, as app `client_id`.
    /// `client_secret` is sent when an authorization code is redeemed (web apps need it);
    /// the device-code flow never sends it (Entra refuses a secret from a public client).
    /// `http` should not follow redirects.
    pub fn new(
        http: reqwest::Client,
        tenant: &str,
        tenant_id: &str,
        endpoints: &Endpoints,
        client_id: &str,
        client_secret: Option<Secret>,
    ) -> SignIn {
        SignIn {
            http,
            tenant: tenant.to_string(),
            tenant_id: tenant_id.to_string(),
            login: endpoints.login.clone(),
            client_id: client_id.to_string(),
            client_secret,
        }
    }

    /// `{login}/{tenant_id}/{tail...}`.
    fn endpoint(&self, tail: &[&str]) -> Result<Url, InteractiveError> {
        let mut url = self.login.clone();
        url.path_segments_mut()
            .map_err(|_| InteractiveError::Endpoint {
                tenant: self.tenant.clone(),
                login: self.login.to_string(),
            })?
            .pop_if_empty()
            .push(&self.tenant_id)
            .extend(tail);
        Ok(url)
    }

    /// The v2 token endpoint: `{login}/{tenant_id}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> Result<Url, InteractiveError> {
        self.endpoint(&["oauth2", "v2.0", "token"])
    }

    fn client(&self, with_secret: bool) -> Result<SignInClient, InteractiveError> {
        let client =
            oauth2::Client::new(ClientId::new(self.client_id.clone()))
                .set_auth_uri(AuthUrl::from_url(self.endpoint(&[
                    "oauth2",
                    "v2.0",
                    "authorize",
                ])?))
                .set_device_authorization_url(DeviceAuthorizationUrl::from_url(
                    self.endpoint(&["oauth2", "v2.0", "devicecode"])?,
                ))
                .set_token_uri(TokenUrl::from_url(self.token_url()?))
                // Entra documents the secret as a form field; Basic auth works too but is the
                // less trodden path.
                .set_auth_type(AuthType::RequestBody);
        Ok(match (&self.client_secret, with_secret) {
            (Some(secret), true) => {
                client.set_client_secret(ClientSecret::new(secret.expose().to_string()))
            }
            _ => client,
        })
    }

    /// Starts the authorization-code flow: the URL the administrator opens, with a fresh
    /// PKCE challenge (S256) and CSRF `state`, asking for `scopes` (include
    /// `offline_access`, or no refresh token is issued) and coming back to `redirect_uri`.
    pub fn authorize(
        &self,
        redirect_uri: &Url,
        scopes: &[String],
    ) -> Result<AuthorizationRequest, InteractiveError> {
        let client = self.client(false)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let redirect = RedirectUrl::from_url(redirect_uri.clone());
        let (url, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect.clone()))
            // The operator's browser is usually signed in to the MSSP's own account; the
            // customer's administrator must be able to pick theirs.
            .add_extra_param("prompt", "select_account")
            .url();
        Ok(AuthorizationRequest {
            url,
            state,
            verifier,
            redirect_uri: redirect,
            scopes: scopes.to_vec(),
        })
    }

    /// Redeems the authorization code that came back for `request` and returns the refresh
    /// token (an error if Entra issued none).
    pub async fn redeem(
        &self,
        request: AuthorizationRequest,
        code: &Secret,
    ) -> Result<Secret, InteractiveError> {
        let client = self.client(true)?;
        let url = self.token_url()?;
        let http = EntraHttp { client: &self.http };
        let answer = client
            .exchange_code(AuthorizationCode::new(code.expose().to_string()))
            .set_pkce_verifier(request.verifier)
            .set_redirect_uri(Cow::Owned(request.redirect_uri))
            .add_extra_param("scope", request.scopes.join(" "))
            .request_async(&http)
            .await;
        match answer {
            Ok(response) => self.refresh_token_of(&response, &url),
            Err(e) => Err(self.request_error(&url, e, |body| body.to_error())),
        }
    }

    /// Starts the device-code flow for `scopes`: Entra answers with the user code and the
    /// page to enter it on.
    pub async fn start_device_code(
        &self,
        scopes: &[String],
    ) -> Result<DeviceCodeGrant, InteractiveError> {
        let client = self.client(false)?;
        let url = self.endpoint(&["oauth2", "v2.0", "devicecode"])?;
        let http = EntraHttp { client: &self.http };
        let answer = client
            .exchange_device_code()
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .request_async(&http)
            .await;
        match answer {
            Ok(response) => Ok(DeviceCodeGrant { response }),
            Err(e) => Err(self.request_error(&url, e, |body| body.to_error())),
        }
    }

    /// Polls the token endpoint until the administrator has entered the code of `grant`
    /// (honouring `interval`, `authorization_pending` and `slow_down`), the code expires,
    /// sign-in is declined, or `wait` has passed; returns the refresh token.
    pub async fn finish_device_code(
        &self,
        grant: &DeviceCodeGrant,
        wait: Duration,
    ) -> Result<Secret, InteractiveError> {
        let client = self.client(false)?;
        let url = self.token_url()?;
        let http = Recording {
            inner: EntraHttp { client: &self.http },
            last_failure: Mutex::new(None),
        };
        let limit = wait.min(grant.expires_in());
        let answer = client
            .exchange_device_access_token(&grant.response)
            .request_async(&http, tokio::time::sleep, Some(limit))
            .await;
        let e = match answer {
            Ok(response) => return self.refresh_token_of(&response, &url),
            Err(e) => e,
        };
        let body = match e {
            RequestTokenError::ServerResponse(body) => body,
            other => return Err(self.request_error(&url, other, |b| device_error(&b))),
        };
        let tenant = self.tenant.clone();
        let error = device_error(&body);
        Err(match body.error() {
            // `oauth2` reports its own deadline as an `expired_token` without an AADSTS
            // code; Entra's own carries AADSTS70019.
            DeviceCodeErrorResponseType::ExpiredToken if error.code.is_none() => {
                match http.last_failure.lock().take() {
                    Some(detail) => InteractiveError::Unreachable {
                        tenant,
                        url: url.to_string(),
                        detail,
                    },
                    None if limit < grant.expires_in() => InteractiveError::TimedOut {
                        tenant,
                        waited: limit,
                    },
                    None => InteractiveError::Expired { tenant },
                }
            }
            DeviceCodeErrorResponseType::ExpiredToken => InteractiveError::Expired { tenant },
            DeviceCodeErrorResponseType::AccessDenied => {
                InteractiveError::Declined { tenant, error }
            }
            _ if error.error.as_str() == "authorization_declined" => {
                InteractiveError::Declined { tenant, error }
            }
            _ => InteractiveError::Entra {
                tenant,
                url: url.to_string(),
                error,
            },
        })
    }

    /// The admin-consent URL for a multi-tenant app, coming back to `redirect_uri` with
    /// `admin_consent=True` (or an error) and a fresh CSRF `state`.
    pub fn admin_consent(&self, redirect_uri: &Url) -> Result<ConsentRequest, InteractiveError> {
        let mut url = self.endpoint(&["adminconsent"])?;
        let state = CsrfToken::new_random();
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("state", state.secret());
        Ok(ConsentRequest { url, state })
    }

    fn refresh_token_of(
        &self,
        response: &EntraTokenResponse,
        url: &Url,
    ) -> Result<Secret, InteractiveError> {
        match response.refresh_token() {
            Some(rt) if !rt.secret().is_empty() => Ok(Secret::new(rt.secret().clone())),
            _ => Err(InteractiveError::NoRefreshToken {
                tenant: self.tenant.clone(),
                url: url.to_string(),
            }),
        }
    }

    /// Maps what `oauth2` reports; raw bodies are dropped here (one that failed to parse
    /// may still hold a token).
    fn request_error<TE>(
        &self,
        url: &Url,
        e: RequestTokenError<HttpFailure, TE>,
        to_entra: impl Fn(TE) -> EntraError,
    ) -> InteractiveError
    where
        TE: oauth2::ErrorResponse + 'static,
    {
        let tenant = self.tenant.clone();
        let url = url.to_string();
        match e {
            RequestTokenError::ServerResponse(body) => InteractiveError::Entra {
                tenant,
                url,
                error: to_entra(body),
            },
            RequestTokenError::Request(HttpFailure::Send(source))
            | RequestTokenError::Request(HttpFailure::Build(source)) => {
                InteractiveError::Transport {
                    tenant,
                    url,
                    source: source.without_url(),
                }
            }
            RequestTokenError::Request(HttpFailure::Status {
                entra: Some(error), ..
            }) => InteractiveError::Entra { tenant, url, error },
            RequestTokenError::Request(HttpFailure::Status { status, .. }) => {
                InteractiveError::Status {
                    tenant,
                    url,
                    status,
                }
            }
            RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => {
                InteractiveError::Malformed { tenant, url }
            }
        }
    }
}

/// The typed error of a device-code poll answer. `oauth2` parses these bodies itself, with
/// `error` and `error_description` only, so the AADSTS code comes from the description.
fn device_error(body: &DeviceCodeErrorResponse) -> EntraError {
    EntraError {
        error: OAuthError::parse(body.error().as_ref()),
        code: body.error_description().and_then(|d| aadsts_code(d)),
        trace_id: None,
        correlation_id: None,
    }
}

/// `EntraHttp` remembering the last transport failure, so a device-code poll that ran
/// out of time while Entra was unreachable says so instead of "expired".
struct Recording<'a> {
    inner: EntraHttp<'a>,
    last_failure: Mutex<Option<String>>,
}

impl<'c> AsyncHttpClient<'c> for Recording<'_> {
    type Error = HttpFailure;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, HttpFailure>> + Send + 'c>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let result = self.inner.call(request).await;
            *self.last_failure.lock() = match &result {
                Ok(_) => None,
                Err(HttpFailure::Send(e)) | Err(HttpFailure::Build(e)) => Some(chain(e)),
                Err(other) => Some(other.to_string()),
            };
            result
        })
    }
}

/// An error and its sources on one line. The URL reqwest names is Entra's token endpoint,
/// which carries no secret.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An authorization-code flow in progress: the URL to open and what checking the
/// redirect and redeeming the code need (the PKCE verifier never leaves this process).
#[derive(Debug)]
pub struct AuthorizationRequest {
    url: Url,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
    redirect_uri: RedirectUrl,
    scopes: Vec<String>,
}

impl AuthorizationRequest {
    /// The URL the administrator opens.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The CSRF `state` the redirect must carry back.
    pub fn state(&self) -> &str {
        self.state.secret()
    }
}

/// An admin-consent request: the URL to open and the `state` to expect back.
#[derive(Debug)]
pub struct ConsentRequest {
    url: Url,
    state: CsrfToken,
}

impl ConsentRequest {
    /// The URL a global administrator of the customer tenant opens.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The CSRF `state` the redirect must carry back.
    pub fn state(&self) -> &str {
        self.state.secret()
    }
}

/// Entra's additions to the RFC 8628 device authorization response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntraDeviceFields {
    /// The sentence to show the user ("To sign in, use a web browser to open ...").
    #[serde(default)]
    message: Option<String>,
}

impl ExtraDeviceAuthorizationFields for EntraDeviceFields {}

/// A device-code flow in progress.
#[derive(Debug)]
pub struct DeviceCodeGrant {
    response: DeviceAuthorizationResponse<EntraDeviceFields>,
}

impl DeviceCodeGrant {
    /// The code the administrator types in.
    pub fn user_code(&self) -> &str {
        self.response.user_code().secret()
    }

    /// The page to type it in on.
    pub fn verification_uri(&self) -> &str {
        self.response.verification_uri().url().as_str()
    }

    /// Entra's instructions (URL and code), or ours if it sent none.
    pub fn message(&self) -> String {
        match &self.response.extra_fields().message {
            Some(m) if !m.trim().is_empty() => m.clone(),
            _ => format!(
                "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
                self.verification_uri(),
                self.user_code()
            ),
        }
    }

    /// How long the code is valid.
    pub fn expires_in(&self) -> Duration {
        self.response.expires_in()
    }

    /// How often the token endpoint may be polled.
    pub fn interval(&self) -> Duration {
        self.response.interval()
    }
}

/// What a request to the redirect URI carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The authorization code (authorization-code flow).
    Code(Secret),
    /// `admin_consent=True`: the app is consented in the tenant Entra names.
    Consented {
        /// The `tenant` parameter, the customer's tenant id.
        tenant: Option<String>,
    },
    /// The sign-in or consent failed or was refused.
    Refused(RedirectError),
}

/// An `error` on the redirect (`access_denied`, `consent_required`, `permission_denied`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectError {
    /// The OAuth `error` value.
    pub error: String,
    /// The AADSTS code at the start of the description, if any.
    pub code: Option<u32>,
    /// The first line of `error_description` (Entra's text, shown to the operator; no
    /// decision is made on it).
    pub description: Option<String>,
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        match (&self.description, self.code) {
            (Some(d), _) => write!(f, ": {d}"),
            (None, Some(code)) => write!(f, " AADSTS{code}"),
            (None, None) => Ok(()),
        }
    }
}

/// How to treat one request to the redirect URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectCheck {
    /// The answer of the flow (success or refusal), with the expected `state`.
    Done(Redirect),
    /// A redirect whose `state` is missing or not ours: not from the sign-in we started
    /// (a stale tab, or a forged request). Ignore it and keep waiting.
    WrongState,
    /// Not a redirect at all (no `code`, `error` or `admin_consent`), e.g. a reload of
    /// the bare URL. Ignore it.
    NotARedirect,
}

/// Checks the query string of a request to the redirect URI against the `state` we sent.
pub fn check_redirect(query: Option<&str>, expected_state: &str) -> RedirectCheck {
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut consent = None;
    let mut tenant = None;
    let mut state = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "code" => code = Some(v),
            "error" => error = Some(v),
            "error_description" => description = Some(v),
            "admin_consent" => consent = Some(v),
            "tenant" => tenant = Some(v),
            "state" => state = Some(v),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() && consent.is_none() {
        return RedirectCheck::NotARedirect;
    }
    if state.as_deref() != Some(expected_state) || expected_state.is_empty() {
        return RedirectCheck::WrongState;
    }
    let refused = |error: String, description: Option<String>| {
        let first_line = description.as_deref().map(|d| {
            let line = d.lines().next().unwrap_or("").trim();
            line.chars().take(MAX_DESCRIPTION).collect::<String>()
        });
        RedirectCheck::Done(Redirect::Refused(RedirectError {
            error,
            code: description.as_deref().and_then(aadsts_code),
            description: first_line.filter(|d| !d.is_empty()),
        }))
    };
    if let Some(error) = error {
        return refused(error, description);
    }
    if let Some(code) = code {
        return RedirectCheck::Done(Redirect::Code(Secret::new(code)));
    }
    match consent {
        Some(c) if c.eq_ignore_ascii_case("true") => {
            RedirectCheck::Done(Redirect::Consented { tenant })
        }
        Some(c) => refused(format!("admin_consent={c}"), description),
        None => RedirectCheck::NotARedirect,
    }
}

/// What the operator can do about an AADSTS code met while onboarding, if we know.
pub fn advice(code: u32) -> Option<&'static str> {
    Some(match code {
        7000215 => "the client secret is wrong; use the secret's Value, not its Secret ID",
        7000222 => "the client secret has expired; create a new one in the app registration",
        7000218 | 700025 => {
            "the app's client type does not match: a web app needs --client-secret-file / \
             --client-secret-env; the device-code flow needs \"Allow public client flows\" \
             in the app registration"
        }
        700016 => {
            "the app is not in the tenant: check --tenant-id and --client-id; for a \
             multi-tenant app an administrator of the tenant must consent first \
             (--admin-consent)"
        }
        65001 | 65004 => {
            "consent is missing or was refused: an administrator of the tenant must consent \
             to the app's permissions"
        }
        90094 | 90008 => {
            "administrator consent is required: sign in as a Global Administrator or \
             Privileged Role Administrator of the tenant, or use --admin-consent"
        }
        500011 | 50001 => {
            "the API is not available in the tenant (product not licensed, or its \
             permissions not granted); check --api"
        }
        50011 | 500113 => {
            "the redirect URI is not registered: add http://localhost to the app \
             registration (Mobile and desktop applications; Entra ignores the port of a \
             localhost URI), or use --device-code"
        }
        70011 | 28000 | 28003 => "the requested scope is not valid for this app",
        90072 | 50020 => {
            "the account that signed in is not a member of the customer's tenant; sign in \
             with an account of that tenant (or a GDAP partner account with access to it)"
        }
        70019 => "the device code expired; run onboard again and enter the code sooner",
        90002 => "no such tenant: check --tenant-id and --cloud",
        _ => return None,
    })
}

/// Onboarding went wrong.
#[derive(Debug, thiserror::Error)]
pub enum InteractiveError {
    /// Entra answered a token or device-code request with an OAuth error.
    #[error("tenant {tenant}: {url} refused the request ({error})")]
    Entra {
        /// The tenant's configured name.
        tenant: String,
        /// The endpoint.
        url: String,
        /// The error and its AADSTS code (never the description text).
        error: EntraError,
    },
    /// The administrator declined the device-code sign-in.
    #[error("tenant {tenant}: the sign-in was declined ({error})")]
    Declined {
        /// The tenant's configured name.
        tenant: String,
        /// What Entra said.
        error: EntraError,
    },
    /// The device code expired before the sign-in was completed.
    #[error("tenant {tenant}: the device code expired before the sign-in was completed")]
    Expired {
        /// The tenant's configured name.
        tenant: String,
    },
    /// Nobody completed the sign-in within the time the caller was willing to wait.
    #[error("tenant {tenant}: no sign-in within {} s", waited.as_secs())]
    TimedOut {
        /// The tenant's configured name.
        tenant: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The token endpoint could not be reached while polling, until time ran out.
    #[error("tenant {tenant}: {url} unreachable until the sign-in timed out: {detail}")]
    Unreachable {
        /// The tenant's configured name.
        tenant: String,
        /// The endpoint.
        url: String,
        /// The last transport failure.
        detail: String,
    },
    /// Tokens were issued but no refresh token: the request lacked `offline_access`, or
    /// it was not consented.
    #[error(
        "tenant {tenant}: {url} issued no refresh token; the sign-in must ask for the \
         `offline_access` scope and the administrator must consent to it"
    )]
    NoRefreshToken {
        /// The tenant's configured name.
        tenant: String,
        /// The token endpoint.
        url: String,
    },
    /// Connecting to or talking with Entra failed.
    #[error("tenant {tenant}: request to {url} failed")]
    Transport {
        /// The tenant's configured name.
        tenant: String,
        /// The endpoint.
        url: String,
        /// The transport error (its URL removed).
        #[source]
        source: reqwest::Error,
    },
    /// Entra answered with an HTTP error and no OAuth error body.
    #[error("tenant {tenant}: {url} answered http {status}")]
    Status {
        /// The tenant's configured name.
        tenant: String,
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A success answer that is not an OAuth response (a proxy's HTML page).
    #[error("tenant {tenant}: {url} answered something that is not an OAuth response")]
    Malformed {
        /// The tenant's configured name.
        tenant: String,
        /// The endpoint.
        url: String,
    },
    /// The login URL cannot take the tenant path.
    #[error("tenant {tenant}: login url {login} cannot take a path")]
    Endpoint {
        /// The tenant's configured name.
        tenant: String,
        /// The configured login URL.
        login: String,
    },
}

impl InteractiveError {
    /// Whether trying again later, unchanged, may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            InteractiveError::Transport { .. }
            | InteractiveError::Unreachable { .. }
            | InteractiveError::Malformed { .. } => true,
            InteractiveError::Status { status, .. } => *status == 429 || *status >= 500,
            InteractiveError::Entra { error, .. } => classify(error) == Verdict::Transient,
            _ => false,
        }
    }

    /// The AADSTS code Entra gave, if any.
    pub fn aadsts_code(&self) -> Option<u32> {
        match self {
            InteractiveError::Entra { error, .. } | InteractiveError::Declined { error, .. } => {
                error.code
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
