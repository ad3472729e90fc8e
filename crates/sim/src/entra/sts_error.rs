//! Entra's token-endpoint error body (`error`, `error_description` with the trace
//! trailer, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One STS failure: the OAuth `error` value, the AADSTS number and its message.
///
/// Rendered by [`StsError::into_response_with`] exactly as Entra does: HTTP 400
/// (401 for `invalid_client`), JSON, with a fresh trace id and the caller's
/// `client-request-id` (if any) echoed as the correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError {
    /// The OAuth 2.0 `error` value (`invalid_grant`, `invalid_client`, ...).
    pub error: &'static str,
    /// The AADSTS number, e.g. 70008.
    pub code: u32,
    /// The message after `AADSTSnnnnn: `.
    pub message: String,
}

/// The JSON shape of an Entra token error.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StsErrorBody {
    /// OAuth error value.
    pub error: String,
    /// `AADSTSnnnnn: message\r\nTrace ID: ..\r\nCorrelation ID: ..\r\nTimestamp: ..`.
    pub error_description: String,
    /// The AADSTS numbers.
    pub error_codes: Vec<u32>,
    /// `2016-01-09 02:02:12Z`.
    pub timestamp: String,
    /// Per-request GUID.
    pub trace_id: String,
    /// The caller's `client-request-id`, or a fresh GUID.
    pub correlation_id: String,
    /// `https://login.microsoftonline.com/error?code=nnnnn`.
    pub error_uri: String,
}

/// Entra's `timestamp` format: seconds precision, a space, and `Z`.
pub(crate) fn sts_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Entra's .NET-style instant in messages: seven fractional digits.
fn iso7(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

impl StsError {
    /// A new error value.
    pub fn new(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        StsError {
            error,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status Entra uses for this error.
    pub fn status(&self) -> StatusCode {
        if self.error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    /// The body as Entra would send it now.
    pub fn body(&self, correlation_id: Option<&str>) -> StsErrorBody {
        let trace_id = Uuid::new_v4().to_string();
        // Entra echoes a well-formed client-request-id as the correlation id, which is
        // what lets an operator find a failed request in sign-in logs.
        let correlation_id = correlation_id
            .and_then(|c| Uuid::parse_str(c).ok())
            .unwrap_or_else(Uuid::new_v4)
            .to_string();
        let timestamp = sts_timestamp(Utc::now());
        StsErrorBody {
            error: self.error.to_string(),
            error_description: format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.message
            ),
            error_codes: vec![self.code],
            timestamp,
            trace_id,
            correlation_id,
            error_uri: format!("https://login.microsoftonline.com/error?code={}", self.code),
        }
    }

    /// The full HTTP response, with the headers Entra sends on token errors.
    pub fn into_response_with(self, correlation_id: Option<&str>) -> Response {
        let status = self.status();
        let body = self.body(correlation_id);
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: a 401 for client authentication carries a challenge.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"login.microsoftonline.com\""),
            );
        }
        response
    }

    // --- The catalogue. Messages follow Entra's wording where it is documented. ---

    /// AADSTS900144: a required body parameter is missing.
    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// AADSTS90002: the tenant in the path does not exist.
    pub fn tenant_not_found(tenant: &str) -> Self {
        Self::new(
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    /// AADSTS9001023: app-only grants need a tenant-specific authority.
    pub fn grant_not_on_common() -> Self {
        Self::new(
            "invalid_request",
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
        )
    }

    /// AADSTS700016: the client id has no service principal in the tenant.
    pub fn app_not_found(client_id: &str, tenant: &str) -> Self {
        Self::new(
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    /// AADSTS7000215: wrong client secret.
    pub fn invalid_client_secret(client_id: &str) -> Self {
        Self::new(
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )
    }

    /// AADSTS7000218: a confidential-client grant without credentials.
    pub fn missing_client_credential() -> Self {
        Self::new(
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    }

    /// AADSTS901002: `resource` sent to the v2 endpoint.
    pub fn resource_on_v2() -> Self {
        Self::new(
            "invalid_request",
            901002,
            "The 'resource' request parameter isn't supported.",
        )
    }

    /// AADSTS70003: an unknown `grant_type`.
    pub fn unsupported_grant_type(grant: &str) -> Self {
        Self::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        )
    }

    /// AADSTS500011: the resource has no service principal in the tenant.
    pub fn resource_not_found(resource: &str, tenant: &str) -> Self {
        Self::new(
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        )
    }

    /// AADSTS70011: a malformed scope.
    pub fn invalid_scope(scope: &str) -> Self {
        Self::new(
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' isn't valid. The scope {scope} isn't valid."
            ),
        )
    }

    /// AADSTS1002012: client credentials need `<resource>/.default`.
    pub fn client_credentials_scope(scope: &str) -> Self {
        Self::new(
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )
    }

    /// AADSTS28000: scopes of more than one resource in one request.
    pub fn scopes_of_several_resources() -> Self {
        Self::new(
            "invalid_scope",
            28000,
            "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope openid offline_access is not valid.",
        )
    }

    /// AADSTS9002313: an unparseable grant (garbage refresh token).
    pub fn malformed_grant() -> Self {
        Self::new(
            "invalid_grant",
            9002313,
            "Invalid request. Request is malformed or invalid.",
        )
    }

    /// AADSTS70000: a grant that is not valid for this client or tenant.
    pub fn invalid_grant_value(what: &str, why: &str) -> Self {
        Self::new(
            "invalid_grant",
            70000,
            format!("The provided value for the '{what}' parameter is not valid. {why}"),
        )
    }

    /// AADSTS70008: an authorization code or a rotated-away refresh token has expired.
    pub fn grant_expired() -> Self {
        Self::new(
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        )
    }

    /// AADSTS700082: refresh token unused for longer than its inactivity window.
    pub fn refresh_token_inactive(
        issued: DateTime<Utc>,
        inactive_for: std::time::Duration,
    ) -> Self {
        let secs = inactive_for.as_secs();
        let (days, h, m, s) = (
            secs / 86_400,
            (secs % 86_400) / 3600,
            (secs % 3600) / 60,
            secs % 60,
        );
        Self::new(
            "invalid_grant",
            700082,
            format!(
                "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for {days}.{h:02}:{m:02}:{s:02}.",
                iso7(issued)
            ),
        )
    }

    /// AADSTS50173: the grant was revoked (password reset, admin revocation).
    pub fn grant_revoked(issued: DateTime<Utc>, valid_from: DateTime<Utc>) -> Self {
        Self::new(
            "invalid_grant",
            50173,
            format!(
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{}'.",
                iso7(issued),
                iso7(valid_from)
            ),
        )
    }

    /// AADSTS65001: consent for the app was withdrawn.
    pub fn consent_required(client_id: &str) -> Self {
        Self::new(
            "invalid_grant",
            65001,
            format!(
                "The user or administrator has not consented to use the application with ID '{client_id}' named 'xdr-relay'. Send an interactive authorization request for this user and resource."
            ),
        )
    }

    /// AADSTS54005: an authorization code redeemed twice.
    pub fn code_already_redeemed() -> Self {
        Self::new(
            "invalid_grant",
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        )
    }

    /// AADSTS501481: PKCE verifier does not match the challenge.
    pub fn pkce_mismatch() -> Self {
        Self::new(
            "invalid_grant",
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        )
    }

    /// AADSTS70016: device code not yet approved.
    pub fn authorization_pending() -> Self {
        Self::new(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )
    }

    /// AADSTS70019: device code expired.
    pub fn device_code_expired() -> Self {
        Self::new("expired_token", 70019, "Verification code expired.")
    }

    /// The user declined the device-code sign-in.
    pub fn authorization_declined() -> Self {
        Self::new(
            "authorization_declined",
            70000,
            "The user declined the device code authentication request.",
        )
    }

    /// An unknown device code.
    pub fn bad_verification_code() -> Self {
        Self::new(
            "bad_verification_code",
            70000,
            "The provided value for the 'device_code' parameter is not valid.",
        )
    }

    /// AADSTS50027: the client assertion is not a well-formed JWT.
    pub fn assertion_malformed(why: &str) -> Self {
        Self::new(
            "invalid_request",
            50027,
            format!("JWT token is invalid or malformed. [Reason - {why}]"),
        )
    }

    /// AADSTS700027: no registered certificate matches the assertion's thumbprint.
    pub fn assertion_key_not_registered(thumbprint: &str, client_id: &str) -> Self {
        Self::new(
            "invalid_client",
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
            ),
        )
    }

    /// AADSTS700027: the assertion's signature does not verify.
    pub fn assertion_bad_signature() -> Self {
        Self::new(
            "invalid_client",
            700027,
            "Client assertion failed signature validation. [Reason - The key was found but use of the key to verify the signature failed.]",
        )
    }

    /// AADSTS500133: the assertion is outside its validity window.
    pub fn assertion_time(now: DateTime<Utc>, exp: DateTime<Utc>) -> Self {
        Self::new(
            "invalid_client",
            500133,
            format!(
                "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion, or request a new token. Current time: {}, expiry time of assertion {}.",
                iso7(now),
                iso7(exp)
            ),
        )
    }

    /// AADSTS50013: the assertion's claims are invalid (audience, issuer, subject).
    pub fn assertion_invalid(why: &str) -> Self {
        Self::new(
            "invalid_client",
            50013,
            format!("Assertion is invalid. [Reason - {why}]"),
        )
    }

    /// AADSTS700021: the assertion was issued for another client id.
    pub fn assertion_client_mismatch() -> Self {
        Self::new(
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_entra_shape() {
        let body =
            StsError::invalid_scope("x/y").body(Some("aaaa0000-bb11-2222-33cc-444444dddddd"));
        assert_eq!(body.error, "invalid_scope");
        assert_eq!(body.error_codes, vec![70011]);
        assert_eq!(body.correlation_id, "aaaa0000-bb11-2222-33cc-444444dddddd");
        assert!(body.error_description.starts_with(
            "AADSTS70011: The provided value for the input parameter 'scope' isn't valid. The scope x/y isn't valid.\r\nTrace ID: "
        ));
        assert!(body.error_description.ends_with(&format!(
            "\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: {}",
            body.timestamp
        )));
        assert!(body.error_description.contains(&body.trace_id));
        // "2016-01-09 02:02:12Z"
        assert_eq!(body.timestamp.len(), 20);
        assert!(
            chrono::NaiveDateTime::parse_from_str(&body.timestamp, "%Y-%m-%d %H:%M:%SZ").is_ok()
        );
        assert_eq!(
            body.error_uri,
            "https://login.microsoftonline.com/error?code=70011"
        );
    }

    #[test]
    fn bogus_correlation_id_is_replaced() {
        let body = StsError::malformed_grant().body(Some("not a guid\r\nX: y"));
        assert!(Uuid::parse_str(&body.correlation_id).is_ok());
    }

    #[test]
    fn invalid_client_is_401() {
        assert_eq!(
            StsError::invalid_client_secret("c").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(StsError::grant_expired().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn inactivity_duration_reads_like_entra() {
        let issued = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        let e = StsError::refresh_token_inactive(
            issued,
            std::time::Duration::from_secs(90 * 86_400 + 61),
        );
        assert!(
            e.message.ends_with("was inactive for 90.00:01:01."),
            "{}",
            e.message
        );
    }
}
