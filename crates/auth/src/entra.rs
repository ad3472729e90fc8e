//! The Entra token endpoint as `oauth2` sees it: a token response type that tolerates v1's
//! string-typed numbers, an error body type carrying AADSTS codes, an HTTP client that keeps
//! the status of answers that are not OAuth error bodies, and the classification of errors
//! into "needs consent", "transient" and "rejected".

use crate::error::{EntraError, OAuthError};
use oauth2::basic::BasicTokenType;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse, RefreshToken, Scope, TokenResponse};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A successful token response, v1 or v2.
///
/// `oauth2`'s `StandardTokenResponse` cannot be used: v1 endpoints send `expires_in` as a
/// JSON string (`"3600"`), which its `u64` field rejects.
#[derive(Deserialize, Serialize)]
pub(crate) struct EntraTokenResponse {
    access_token: oauth2::AccessToken,
    #[serde(
        default = "bearer",
        deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive"
    )]
    token_type: BasicTokenType,
    #[serde(
        default,
        deserialize_with = "lenient_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<RefreshToken>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

// Written by hand so that no future field can leak a token through a derived Debug.
impl fmt::Debug for EntraTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokenResponse")
            .field("access_token", &"***")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl TokenResponse for EntraTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        // Entra echoes the scope; nothing here depends on it.
        None
    }
}

/// Accepts `3599`, `"3599"`, `3599.0` and `null`; a negative number counts as 0.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64() {
                Ok(Some(if f <= 0.0 { 0 } else { f as u64 }))
            } else {
                Err(D::Error::custom("expires_in is not a number"))
            }
        }
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                Ok(Some(u))
            } else if s.parse::<i64>().is_ok() {
                Ok(Some(0))
            } else {
                Err(D::Error::custom("expires_in is not a number"))
            }
        }
        Some(_) => Err(D::Error::custom("expires_in is not a number")),
    }
}

/// An Entra error body (`error`, `error_description`, `error_codes`, `trace_id`, ...).
#[derive(Clone, Deserialize, Serialize)]
pub(crate) struct EntraErrorBody {
    error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_description: Option<String>,
    // Values, not u32s: one odd element must not turn a perfectly good error body into a
    // parse failure.
    #[serde(default)]
    error_codes: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
}

impl EntraErrorBody {
    /// The typed error: `error` parsed, the first AADSTS code, the support ids.
    pub(crate) fn to_error(&self) -> EntraError {
        let code = self
            .error_codes
            .iter()
            .find_map(|v| match v {
                serde_json::Value::Number(n) => n.as_u64().and_then(|c| u32::try_from(c).ok()),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .or_else(|| self.error_description.as_deref().and_then(aadsts_code));
        EntraError {
            error: OAuthError::parse(&self.error),
            code,
            trace_id: self.trace_id.clone(),
            correlation_id: self.correlation_id.clone(),
        }
    }
}

impl fmt::Debug for EntraErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The description is left out for the same reason EntraError does not keep it.
        fmt::Debug::fmt(&self.to_error(), f)
    }
}

impl fmt::Display for EntraErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_error(), f)
    }
}

impl oauth2::ErrorResponse for EntraErrorBody {}

/// The code from a description that starts `AADSTS70011: ...`. Used only when `error_codes`
/// is missing; this is the one thing ever read from description text.
pub(crate) fn aadsts_code(description: &str) -> Option<u32> {
    let at = description.find("AADSTS")?;
    let digits: String = description[at + "AADSTS".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What to do about an Entra error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Mark the tenant as needing consent / re-onboarding; stop asking.
    NeedsConsent,
    /// Retry later.
    Transient,
    /// A configuration problem; retrying will not help.
    Rejected,
}

/// AADSTS codes that mean the grant or consent is gone: 700082/70008 refresh token expired
/// by inactivity, 50173 grant revoked, 70043 sign-in frequency, 700084 SPA refresh-token
/// limit, 65001 no consent, 700016 app not in tenant, 90094 admin consent required, 50076 /
/// 50079 MFA (re-)registration required.
const CONSENT_CODES: &[u32] = &[
    700082, 70008, 50173, 70043, 700084, 65001, 700016, 90094, 50076, 50079,
];

/// AADSTS codes that are Entra having a bad moment: 50196 loop detected (too many
/// identical requests), 90055 tenant throttling, 90033 service unavailable.
const TRANSIENT_CODES: &[u32] = &[50196, 90055, 90033];

/// AADSTS codes about the client's own credential: 7000215 wrong secret, 7000222 expired
/// secret, 7000218 no credential sent, 700027 assertion signature invalid, 50013 / 500133
/// assertion invalid or outside its validity window. These are configuration problems even
/// when Entra pairs them with `invalid_grant`.
const CREDENTIAL_CODES: &[u32] = &[7000215, 7000222, 7000218, 700027, 50013, 500133];

/// Sorts an Entra error by what the daemon should do (defender-api.md §1.8). Codes decide
/// first because one `error` value covers causes that need different handling.
pub(crate) fn classify(error: &EntraError) -> Verdict {
    if let Some(code) = error.code {
        if TRANSIENT_CODES.contains(&code) {
            return Verdict::Transient;
        }
        if CREDENTIAL_CODES.contains(&code) {
            return Verdict::Rejected;
        }
        if CONSENT_CODES.contains(&code) {
            return Verdict::NeedsConsent;
        }
    }
    match error.error {
        OAuthError::InvalidGrant
        | OAuthError::InteractionRequired
        | OAuthError::UnauthorizedClient
        | OAuthError::ConsentRequired => Verdict::NeedsConsent,
        OAuthError::TemporarilyUnavailable | OAuthError::ServerError => Verdict::Transient,
        _ => Verdict::Rejected,
    }
}

/// A failure below the OAuth layer: the request never got an answer, or the answer was an
/// HTTP error without an OAuth error body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpFailure {
    /// The `http::Request` from `oauth2` could not be turned into a reqwest request.
    #[error("building the token request failed")]
    Build(#[source] reqwest::Error),
    /// Connect, send or receive failed (including reqwest's own timeout).
    #[error("sending the token request failed")]
    Send(#[source] reqwest::Error),
    /// Throttled (429), a server error (5xx), or another non-200 status whose body is not an
    /// OAuth error body.
    #[error("token endpoint answered http {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// The OAuth error in the body, if there was one (5xx with `temporarily_unavailable`).
        entra: Option<EntraError>,
    },
}

/// The reqwest client seen through `oauth2`'s `AsyncHttpClient`.
///
/// `oauth2` turns every non-200 answer into either a parsed error body or a parse error that
/// carries the raw body, losing the status. Throttling and server errors must be transient
/// whatever their body says, so they are intercepted here with their status and
/// `Retry-After`; raw bodies never travel further.
pub(crate) struct EntraHttp<'a> {
    pub(crate) client: &'a reqwest::Client,
}

impl<'c> AsyncHttpClient<'c> for EntraHttp<'_> {
    type Error = HttpFailure;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpFailure>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(HttpFailure::Build)?;
            let response = self
                .client
                .execute(request)
                .await
                .map_err(HttpFailure::Send)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(HttpFailure::Send)?;

            let error_body = || {
                serde_json::from_slice::<EntraErrorBody>(&body)
                    .ok()
                    .map(|b| b.to_error())
            };
            let retry_after = || {
                headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            let throttled_or_down = status.as_u16() == 429 || status.is_server_error();
            if throttled_or_down || (status != reqwest::StatusCode::OK && error_body().is_none()) {
                return Err(HttpFailure::Status {
                    status: status.as_u16(),
                    retry_after: retry_after(),
                    entra: error_body(),
                });
            }

            let mut builder = oauth2::http::Response::builder().status(status);
            for (name, value) in headers.iter() {
                builder = builder.header(name, value);
            }
            builder
                .body(body.to_vec())
                .map_err(|_| HttpFailure::Status {
                    status: status.as_u16(),
                    retry_after: None,
                    entra: None,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Samples from shared/samples (Microsoft documentation), inlined so the tests do not
    // depend on files outside the crate.
    const V2_REFRESH: &str = r#"{
      "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik5HVEZ2ZEstZnl0aEV1Q...",
      "token_type": "Bearer",
      "expires_in": 3599,
      "scope": "https%3A%2F%2Fgraph.microsoft.com%2Fmail.read",
      "refresh_token": "AwABAAAAvPM1KaPlrEqdFSBzjqfTGAMxZGUTdM0t4B4...",
      "id_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiIyZDRkMTFhMi1mODE0LTQ2YTctOD..."
    }"#;
    const V1_REFRESH: &str = r#"{
      "token_type": "Bearer",
      "expires_in": "3600",
      "expires_on": "1460404526",
      "resource": "https://service.contoso.com/",
      "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik5HVEZ2ZEstZnl0aEV1THdqcHdBSk9NOW4tQSJ9.e30.sig",
      "refresh_token": "AwABAAAAv YNqmf9SoAylD1PycGCB90xzZeEDg6oBzOIPfYsbDWNf621pKo2Q3GGTHYlmNfwoc"
    }"#;
    const V1_SIEM_CC: &str = r#"{
      "token_type": "Bearer",
      "expires_in": 3599,
      "ext_expires_in": 0,
      "expires_on": 1488720683,
      "not_before": 1488720683,
      "resource": "https://graph.windows.net",
      "access_token":"eyJ0eXaioJJOIneiowiouqSuzNiZ345FYOVkaJL0625TueyaJasjhIjEnbMlWqP..."
    }"#;
    pub(crate) const ERR_INVALID_SCOPE: &str = r#"{
      "error": "invalid_scope",
      "error_description": "AADSTS70011: The provided value for the input parameter 'scope' isn't valid. The scope https://example.contoso.com/activity.read isn't valid.\r\nTrace ID: 0000aaaa-11bb-cccc-dd33-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2016-01-09 02:02:12Z",
      "error_codes": [70011],
      "timestamp": "2016-01-09 02:02:12Z",
      "trace_id": "0000aaaa-11bb-cccc-dd33-eeeeee333333",
      "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
      "error_uri":"https://login.microsoftonline.com/error?code=70011"
    }"#;
    const ERR_V1_INVALID_RESOURCE: &str = r#"{
      "error": "invalid_resource",
      "error_description": "AADSTS50001: The application named https://foo.microsoft.com/mail.read was not found in the tenant named 295e01fc-0c56-4ac3-ac57-5d0ed568f872.\r\nTrace ID: ef1f89f6-a14f-49de-9868-61bd4072f0a9\r\nCorrelation ID: b6908274-2c58-4e91-aea9-1f6b9c99347c\r\nTimestamp: 2016-04-11 18:59:01Z",
      "error_codes": [50001],
      "timestamp": "2016-04-11 18:59:01Z",
      "trace_id": "ef1f89f6-a14f-49de-9868-61bd4072f0a9",
      "correlation_id": "b6908274-2c58-4e91-aea9-1f6b9c99347c"
    }"#;

    #[test]
    fn v2_refresh_response_parses_with_numeric_expires_in() {
        let r: EntraTokenResponse = serde_json::from_str(V2_REFRESH).unwrap();
        assert_eq!(r.expires_in(), Some(Duration::from_secs(3599)));
        assert!(r.access_token().secret().starts_with("eyJ0eXAi"));
        assert!(r
            .refresh_token()
            .unwrap()
            .secret()
            .starts_with("AwABAAAAvPM1"));
        assert_eq!(r.token_type(), &BasicTokenType::Bearer);
    }

    #[test]
    fn v1_refresh_response_parses_with_string_expires_in() {
        let r: EntraTokenResponse = serde_json::from_str(V1_REFRESH).unwrap();
        assert_eq!(r.expires_in(), Some(Duration::from_secs(3600)));
        assert!(r.refresh_token().is_some());
    }

    #[test]
    fn v1_client_credentials_response_has_no_refresh_token() {
        let r: EntraTokenResponse = serde_json::from_str(V1_SIEM_CC).unwrap();
        assert_eq!(r.expires_in(), Some(Duration::from_secs(3599)));
        assert!(r.refresh_token().is_none());
    }

    #[test]
    fn odd_expires_in_values() {
        let parse = |v: &str| {
            serde_json::from_str::<EntraTokenResponse>(&format!(
                r#"{{"access_token":"a","token_type":"bearer","expires_in":{v}}}"#
            ))
            .map(|r| r.expires_in())
        };
        assert_eq!(parse("null").unwrap(), None);
        assert_eq!(parse("\" 42 \"").unwrap(), Some(Duration::from_secs(42)));
        assert_eq!(parse("-5").unwrap(), Some(Duration::ZERO));
        assert_eq!(parse("\"-5\"").unwrap(), Some(Duration::ZERO));
        assert_eq!(parse("60.9").unwrap(), Some(Duration::from_secs(60)));
        assert!(parse("\"soon\"").is_err());
        assert!(parse("[1]").is_err());
        let missing: EntraTokenResponse =
            serde_json::from_str(r#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert_eq!(missing.expires_in(), None);
    }

    #[test]
    fn debug_of_token_response_shows_no_token() {
        let r: EntraTokenResponse = serde_json::from_str(V1_REFRESH).unwrap();
        let d = format!("{r:?} {r:#?}");
        assert!(!d.contains("eyJ0eXAi"), "{d}");
        assert!(!d.contains("AwABAAAAv"), "{d}");
        assert!(d.contains("expires_in: Some(3600)"), "{d}");
    }

    #[test]
    fn error_bodies_become_typed_errors() {
        let b: EntraErrorBody = serde_json::from_str(ERR_INVALID_SCOPE).unwrap();
        let e = b.to_error();
        assert_eq!(e.error, OAuthError::InvalidScope);
        assert_eq!(e.code, Some(70011));
        assert_eq!(
            e.trace_id.as_deref(),
            Some("0000aaaa-11bb-cccc-dd33-eeeeee333333")
        );
        assert_eq!(classify(&e), Verdict::Rejected);
        // Display and Debug carry no description text.
        let shown = format!("{b} {b:?} {e} {e:?}");
        assert!(!shown.contains("isn't valid"), "{shown}");
        assert!(shown.contains("AADSTS70011"), "{shown}");

        let b: EntraErrorBody = serde_json::from_str(ERR_V1_INVALID_RESOURCE).unwrap();
        assert_eq!(b.to_error().error, OAuthError::InvalidResource);
        assert_eq!(b.to_error().code, Some(50001));
    }

    #[test]
    fn code_falls_back_to_the_description_prefix() {
        let b: EntraErrorBody = serde_json::from_str(
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#,
        )
        .unwrap();
        assert_eq!(b.to_error().code, Some(700082));
        let b: EntraErrorBody =
            serde_json::from_str(r#"{"error":"invalid_grant","error_codes":["50173", 1]}"#)
                .unwrap();
        assert_eq!(b.to_error().code, Some(50173));
        assert_eq!(aadsts_code("no code here"), None);
        assert_eq!(aadsts_code("AADSTS: nothing"), None);
    }

    fn e(error: &str, code: Option<u32>) -> EntraError {
        EntraError {
            error: OAuthError::parse(error),
            code,
            trace_id: None,
            correlation_id: None,
        }
    }

    #[test]
    fn classification_follows_the_error_table() {
        use Verdict::*;
        for (error, code, want) in [
            ("invalid_grant", Some(700082), NeedsConsent),
            ("invalid_grant", Some(70008), NeedsConsent),
            ("invalid_grant", Some(50173), NeedsConsent),
            ("invalid_grant", Some(65001), NeedsConsent),
            ("unauthorized_client", Some(700016), NeedsConsent),
            ("invalid_client", Some(700016), NeedsConsent),
            ("interaction_required", None, NeedsConsent),
            ("unauthorized_client", None, NeedsConsent),
            ("invalid_grant", None, NeedsConsent),
            ("invalid_client", Some(7000215), Rejected),
            ("invalid_client", Some(7000222), Rejected),
            ("invalid_grant", Some(500133), Rejected),
            ("invalid_client", None, Rejected),
            ("invalid_scope", Some(70011), Rejected),
            ("invalid_resource", Some(500011), Rejected),
            ("invalid_request", Some(901002), Rejected),
            ("temporarily_unavailable", None, Transient),
            ("server_error", None, Transient),
            ("invalid_request", Some(90055), Transient),
            ("invalid_request", Some(50196), Transient),
            ("something_new", None, Rejected),
        ] {
            assert_eq!(classify(&e(error, code)), want, "{error} {code:?}");
        }
    }
}
