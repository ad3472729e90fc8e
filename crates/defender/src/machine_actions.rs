//! Defender for Endpoint machine actions: `POST /api/machines/{id}/isolate`,
//! `POST /api/machines/{id}/runAntiVirusScan` and `GET /api/machineactions/{id}`, on the
//! tenant's MDE host with a WindowsDefenderATP token.
//!
//! Unlike a page GET, a POST is not retried here: an answer lost on the way may mean the
//! action was queued, so the caller (which journals what it sent) decides when to ask
//! again — and a repeat while the first is pending is answered "Action is already in
//! progress", reported as [`MachineActionError::AlreadyInProgress`].

use std::time::Duration;

use chrono::Utc;
use relay_config::Audience;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use crate::client::{endpoint_of, DefenderClient, TenantTarget};
use crate::ratelimit::ApiFamily;
use crate::retry::parse_retry_after;
use crate::token::TokenError;

/// Which machine action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineActionKind {
    /// `isolate`, with `IsolationType`.
    Isolate,
    /// `runAntiVirusScan`, with `ScanType`.
    RunAntiVirusScan,
}

impl MachineActionKind {
    fn path(self) -> &'static str {
        match self {
            MachineActionKind::Isolate => "isolate",
            MachineActionKind::RunAntiVirusScan => "runAntiVirusScan",
        }
    }

    fn option_key(self) -> &'static str {
        match self {
            MachineActionKind::Isolate => "IsolationType",
            MachineActionKind::RunAntiVirusScan => "ScanType",
        }
    }

    /// The app role the action needs in WindowsDefenderATP.
    pub fn permission(self) -> &'static str {
        match self {
            MachineActionKind::Isolate => "Machine.Isolate",
            MachineActionKind::RunAntiVirusScan => "Machine.Scan",
        }
    }
}

/// A machine action to request.
#[derive(Debug, Clone, Copy)]
pub struct MachineActionRequest<'a> {
    /// The MDE machine id.
    pub machine_id: &'a str,
    /// Which action.
    pub kind: MachineActionKind,
    /// `IsolationType` / `ScanType` as the API spells it (`Selective`, `Quick`, ...).
    pub option: &'a str,
    /// `Comment` (required by the API).
    pub comment: &'a str,
}

/// A machine action as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineAction {
    /// The action id.
    pub id: String,
    /// `Pending`, `InProgress`, `Succeeded`, `Failed`, `TimeOut`, `Cancelled`.
    pub status: String,
}

impl MachineAction {
    /// Whether the action has ended (successfully or not).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Succeeded" | "Failed" | "TimeOut" | "Cancelled"
        )
    }
}

/// Why a machine-action request did not give an action.
#[derive(Debug, thiserror::Error)]
pub enum MachineActionError {
    /// No WindowsDefenderATP token.
    #[error("tenant {tenant}: no WindowsDefenderATP token for machine actions")]
    Token {
        /// The tenant's configured name.
        tenant: String,
        /// Why.
        #[source]
        source: TokenError,
    },
    /// 400 "Action is already in progress": the same action is pending on the machine.
    #[error("tenant {tenant}: {endpoint}: action is already in progress")]
    AlreadyInProgress {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
    },
    /// 404: no such machine (or machine action) in this tenant.
    #[error("tenant {tenant}: {endpoint} not found (404): {detail}")]
    NotFound {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
        /// The API's error code and message.
        detail: String,
    },
    /// 401 or 403: the app lacks the action's permission (or consent).
    #[error("tenant {tenant}: {endpoint} forbidden ({status}): {detail}")]
    Forbidden {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// The API's error code and message.
        detail: String,
    },
    /// 429: the machine-action quota is used up for now.
    #[error("tenant {tenant}: {endpoint} throttled (429); retry after {retry_after:?}")]
    Throttled {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
        /// How long the API asked to wait.
        retry_after: Duration,
    },
    /// Another 4xx: the request is wrong (a bug, or the API changed).
    #[error("tenant {tenant}: {endpoint} refused the request ({status}): {detail}")]
    Rejected {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The API's error code and message.
        detail: String,
    },
    /// 5xx, a network failure or an unreadable answer: whether the action was queued is
    /// unknown; asking again later is safe.
    #[error("tenant {tenant}: {endpoint}: {detail}")]
    Transient {
        /// The tenant's configured name.
        tenant: String,
        /// The URL.
        endpoint: String,
        /// What happened.
        detail: String,
    },
}

impl MachineActionError {
    /// Whether asking again later may succeed without anyone acting.
    pub fn is_transient(&self) -> bool {
        match self {
            MachineActionError::Token { source, .. } => source.is_transient(),
            MachineActionError::Throttled { .. } | MachineActionError::Transient { .. } => true,
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn detail_of(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => format!("{}: {}", b.error.code, b.error.message),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

impl DefenderClient {
    /// Requests a machine action. Not retried (see the module docs).
    pub async fn request_machine_action(
        &self,
        tenant: &TenantTarget,
        req: &MachineActionRequest<'_>,
    ) -> Result<MachineAction, MachineActionError> {
        let url = join(
            &tenant.endpoints.mde,
            &format!("api/machines/{}/{}", req.machine_id, req.kind.path()),
        );
        let mut body = serde_json::Map::new();
        body.insert("Comment".into(), req.comment.into());
        body.insert(req.kind.option_key().into(), req.option.into());
        let body = serde_json::Value::Object(body).to_string();
        self.send(tenant, url, Some(body)).await
    }

    /// The current state of machine action `id`.
    pub async fn machine_action(
        &self,
        tenant: &TenantTarget,
        id: &str,
    ) -> Result<MachineAction, MachineActionError> {
        let url = join(&tenant.endpoints.mde, &format!("api/machineactions/{id}"));
        self.send(tenant, url, None).await
    }

    async fn send(
        &self,
        tenant: &TenantTarget,
        url: Url,
        body: Option<String>,
    ) -> Result<MachineAction, MachineActionError> {
        let inner = &self.inner;
        let endpoint = endpoint_of(&url);
        if body.is_none() {
            // A status GET is an ordinary MDE API call: it spends the tenant's MDE quota
            // like the alert polls do. Requests keep to their own quota (the caller's).
            inner
                .limiter
                .acquire(&tenant.tenant_id, ApiFamily::Mde)
                .await;
        }
        let token = inner
            .tokens
            .bearer(&tenant.name, Audience::WindowsDefenderAtp)
            .await
            .map_err(|source| MachineActionError::Token {
                tenant: tenant.name.clone(),
                source,
            })?;
        let opts = &inner.options;
        let request = match &body {
            Some(b) => inner
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(b.clone()),
            None => inner.http.get(url.clone()),
        };
        let transient = |detail: String| MachineActionError::Transient {
            tenant: tenant.name.clone(),
            endpoint: endpoint.clone(),
            detail,
        };
        let response = request
            .bearer_auth(token.secret.expose())
            .header(USER_AGENT, &opts.user_agent)
            .header(ACCEPT, "application/json")
            .timeout(opts.request_timeout)
            .send()
            .await
            .map_err(|e| transient(e.without_url().to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transient(e.without_url().to_string()))?;
        let t = || tenant.name.clone();
        match status {
            s if s.is_success() => serde_json::from_slice(&bytes)
                .map_err(|e| transient(format!("unreadable machine action: {e}"))),
            StatusCode::BAD_REQUEST
                if detail_of(&bytes).contains("Action is already in progress") =>
            {
                Err(MachineActionError::AlreadyInProgress {
                    tenant: t(),
                    endpoint,
                })
            }
            StatusCode::NOT_FOUND => Err(MachineActionError::NotFound {
                tenant: t(),
                endpoint,
                detail: detail_of(&bytes),
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                if status == StatusCode::UNAUTHORIZED {
                    inner
                        .tokens
                        .invalidate(&tenant.name, Audience::WindowsDefenderAtp, &token);
                }
                Err(MachineActionError::Forbidden {
                    tenant: t(),
                    endpoint,
                    status: status.as_u16(),
                    detail: detail_of(&bytes),
                })
            }
            StatusCode::TOO_MANY_REQUESTS => Err(MachineActionError::Throttled {
                tenant: t(),
                endpoint,
                retry_after: retry_after.unwrap_or(Duration::from_secs(60)),
            }),
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                Err(transient(format!("{}: {}", s.as_u16(), detail_of(&bytes))))
            }
            s => Err(MachineActionError::Rejected {
                tenant: t(),
                endpoint,
                status: s.as_u16(),
                detail: detail_of(&bytes),
            }),
        }
    }
}

/// `base` + `path`, keeping any path `base` has (a sovereign cloud or a test server).
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}
