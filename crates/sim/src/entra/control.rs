//! `/_sim/entra/...`: JSON control routes doing what [`Entra`]'s methods do, for tests
//! that drive the simulator from another process.

use super::{Entra, TokenFault};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use relay_config::Audience;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

fn bad_request(what: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": what }))).into_response()
}

fn unknown_tenant(tenant: &str) -> Response {
    not_found(&format!("tenant {tenant} is not simulated"))
}

pub(crate) async fn stats(State(e): State<Arc<Entra>>) -> Response {
    Json(e.token_requests()).into_response()
}

/// `{"kind": "down" | "html" | "reset" | "slow", "delay_ms": 1500}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    kind: String,
    #[serde(default)]
    delay_ms: Option<u64>,
}

impl FaultSpec {
    fn to_fault(&self) -> Result<TokenFault, String> {
        match (self.kind.as_str(), self.delay_ms) {
            ("down", _) => Ok(TokenFault::Down),
            ("html", _) => Ok(TokenFault::Html),
            ("reset", _) => Ok(TokenFault::Reset),
            ("slow", Some(ms)) => Ok(TokenFault::Slow(Duration::from_millis(ms))),
            ("slow", None) => Err("fault kind slow needs delay_ms".to_string()),
            (other, _) => Err(format!(
                "unknown fault kind {other:?}; expected down, html, reset or slow"
            )),
        }
    }
}

pub(crate) async fn set_fault(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Json(spec): Json<FaultSpec>,
) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    match spec.to_fault() {
        Ok(fault) => {
            e.set_token_fault(&tenant, Some(fault));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(msg) => bad_request(msg),
    }
}

pub(crate) async fn clear_fault(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    e.set_token_fault(&tenant, None);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn revoke_grant(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    e.revoke_grant(&tenant);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn revoke_consent(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    e.revoke_consent(&tenant);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn restore(State(e): State<Arc<Entra>>, Path(tenant): Path<String>) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    e.restore(&tenant);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateSpec {
    client_id: String,
    cert_pem: String,
}

pub(crate) async fn register_certificate(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Json(spec): Json<CertificateSpec>,
) -> Response {
    match e.register_certificate(&tenant, &spec.client_id, &spec.cert_pem) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(
            err @ (super::EntraError::UnknownTenant { .. } | super::EntraError::UnknownApp { .. }),
        ) => not_found(&err.to_string()),
        Err(err) => {
            let mut msg = err.to_string();
            if let Some(source) = std::error::Error::source(&err) {
                msg = format!("{msg}: {source}");
            }
            bad_request(msg)
        }
    }
}

/// `{"audience": "graph" | "threat_protection" | "windows_defender_atp", "lifetime_secs": 60}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MintSpec {
    audience: Audience,
    lifetime_secs: u64,
}

pub(crate) async fn mint(
    State(e): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    Json(spec): Json<MintSpec>,
) -> Response {
    if !e.has_tenant(&tenant) {
        return unknown_tenant(&tenant);
    }
    let token = e.mint_access_token(
        &tenant,
        spec.audience,
        Duration::from_secs(spec.lifetime_secs),
    );
    Json(json!({ "access_token": token, "token_type": "Bearer" })).into_response()
}

pub(crate) async fn approve_device_code(
    State(e): State<Arc<Entra>>,
    Path(user_code): Path<String>,
) -> Response {
    if e.approve_device_code(&user_code) {
        Json(json!({ "approved": true })).into_response()
    } else {
        not_found("no pending device code with that user code")
    }
}

pub(crate) async fn decline_device_code(
    State(e): State<Arc<Entra>>,
    Path(user_code): Path<String>,
) -> Response {
    if e.decline_device_code(&user_code) {
        Json(json!({ "declined": true })).into_response()
    } else {
        not_found("no pending device code with that user code")
    }
}
