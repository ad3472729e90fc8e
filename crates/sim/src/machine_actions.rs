//! Defender for Endpoint machine actions: `POST /api/machines/{id}/isolate`,
//! `POST /api/machines/{id}/runAntiVirusScan` and `GET /api/machineactions/{id}`, as the
//! real API has them.
//!
//! - Bodies are case-sensitive: a key other than `Comment` and the action's one option
//!   (`IsolationType`, `ScanType`) is 400 `InvalidRequestBody`; a missing `Comment` (or
//!   `ScanType`) is 400 `MissingRequiredParameter`; option values are checked against
//!   their enum.
//! - An unknown machine is 404 `ResourceNotFound`; the same action type on a machine
//!   with one not yet finished is 400 "Action is already in progress".
//! - Actions are `Pending`, then `InProgress`, then `Succeeded` after
//!   [`MachineActionSettings::completion`] — computed from the clock when asked.
//! - Their own quota (100/min and 1,500/h per tenant by default) on the POSTs; the GET
//!   is an ordinary MDE API call.
//! - 403 when the tenant's app lacks `Machine.Isolate` / `Machine.Scan` (a per-tenant
//!   setting: the simulated Entra ID mints one role set for every app).
//! - A ground truth of every request that reached the body check, with its outcome.
//!
//! Order of checks: token (401), permission (403), quota (429), body (400), machine
//! (404), duplicate (400).

use crate::api::{throttled, unauthorized, App, Ctx};
use crate::entra::BearerError;
use crate::odata::Tick;
use crate::quota::Family;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;
use relay_config::{Audience, Feed};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How simulated machine actions behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineActionSettings {
    /// How long an action takes from its request to `Succeeded` (the first half of it
    /// `Pending`, the second `InProgress`).
    pub completion: Duration,
}

impl Default for MachineActionSettings {
    fn default() -> Self {
        MachineActionSettings {
            completion: Duration::from_secs(2),
        }
    }
}

/// Which machine-action permissions a tenant's app was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MachinePermissions {
    /// `Machine.Isolate` (isolate, release from isolation).
    pub isolate: bool,
    /// `Machine.Scan` (run antivirus scan).
    pub scan: bool,
}

impl Default for MachinePermissions {
    fn default() -> Self {
        MachinePermissions {
            isolate: true,
            scan: true,
        }
    }
}

/// A machine action type the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum MachineActionType {
    /// `POST /api/machines/{id}/isolate`.
    Isolate,
    /// `POST /api/machines/{id}/runAntiVirusScan`.
    RunAntiVirusScan,
}

impl MachineActionType {
    /// The name the API prints in `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineActionType::Isolate => "Isolate",
            MachineActionType::RunAntiVirusScan => "RunAntiVirusScan",
        }
    }

    /// The body key of the action's option, its allowed values, and whether it may be
    /// left out (isolation defaults to `Full`; a scan type is required).
    fn option(self) -> (&'static str, &'static [&'static str], Option<&'static str>) {
        match self {
            MachineActionType::Isolate => (
                "IsolationType",
                &["Full", "Selective", "UnManagedDevice"],
                Some("Full"),
            ),
            MachineActionType::RunAntiVirusScan => ("ScanType", &["Quick", "Full"], None),
        }
    }

    fn role(self) -> &'static str {
        match self {
            MachineActionType::Isolate => "Machine.Isolate",
            MachineActionType::RunAntiVirusScan => "Machine.Scan",
        }
    }
}

/// What became of one machine-action request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RequestOutcome {
    /// 201: a new action, with its id.
    Created {
        /// The action id.
        action_id: String,
    },
    /// 400 "Action is already in progress".
    AlreadyInProgress,
    /// Any other refusal after the quota check (400 body errors, 404).
    Rejected {
        /// HTTP status.
        status: u16,
        /// The error code of the body.
        code: String,
    },
}

/// One machine-action request as the simulator saw it (its ground truth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestedAction {
    /// Tenant GUID.
    pub tenant_id: String,
    /// The machine id in the path.
    pub machine_id: String,
    /// Which action.
    pub action: MachineActionType,
    /// The `Comment` sent, when there was one.
    pub comment: Option<String>,
    /// The option sent (`IsolationType` / `ScanType`), when there was one.
    pub option: Option<String>,
    /// When it arrived.
    pub at: chrono::DateTime<chrono::Utc>,
    /// What the API answered.
    pub outcome: RequestOutcome,
}

struct Action {
    id: String,
    tenant: usize,
    action: MachineActionType,
    scope: String,
    requestor: String,
    comment: String,
    machine_id: String,
    dns_name: String,
    created: Tick,
    started: Instant,
}

#[derive(Default)]
struct TenantActions {
    permissions: MachinePermissions,
}

/// Every tenant's machine actions.
pub(crate) struct MachineActions {
    settings: MachineActionSettings,
    tenants: Vec<Mutex<TenantActions>>,
    actions: Mutex<HashMap<String, Action>>,
    requested: Mutex<Vec<RequestedAction>>,
}

impl MachineActions {
    pub fn new(settings: MachineActionSettings, tenants: usize) -> MachineActions {
        MachineActions {
            settings,
            tenants: (0..tenants).map(|_| Mutex::default()).collect(),
            actions: Mutex::default(),
            requested: Mutex::default(),
        }
    }

    pub fn set_permissions(&self, tenant: usize, p: MachinePermissions) {
        if let Some(t) = self.tenants.get(tenant) {
            t.lock().permissions = p;
        }
    }

    fn permissions(&self, tenant: usize) -> MachinePermissions {
        self.tenants
            .get(tenant)
            .map(|t| t.lock().permissions)
            .unwrap_or_default()
    }

    pub fn requested(&self) -> Vec<RequestedAction> {
        self.requested.lock().clone()
    }

    fn status(&self, a: &Action, now: Instant) -> &'static str {
        let age = now.duration_since(a.started);
        if age >= self.settings.completion {
            "Succeeded"
        } else if age >= self.settings.completion / 2 {
            "InProgress"
        } else {
            "Pending"
        }
    }
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/machines/{id}/isolate", post(isolate))
        .route("/api/machines/{id}/runAntiVirusScan", post(run_av_scan))
        .route("/api/machineactions/{id}", get(get_action))
        .with_state(app)
}

async fn isolate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    request(&app, MachineActionType::Isolate, &id, &headers, &body)
}

async fn run_av_scan(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    request(
        &app,
        MachineActionType::RunAntiVirusScan,
        &id,
        &headers,
        &body,
    )
}

/// A checked body: the comment and the option value.
#[derive(Debug, PartialEq, Eq)]
struct Body {
    comment: String,
    option: String,
}

/// A body refusal: (code, message).
type BodyError = (&'static str, String);

fn parse_body(action: MachineActionType, body: &[u8]) -> Result<Body, BodyError> {
    let invalid = || {
        (
            "InvalidRequestBody",
            "Request body is incorrect".to_string(),
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| invalid())?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid());
    };
    let (option_key, allowed, default) = action.option();
    // Keys are case-sensitive: `comment` is not `Comment`, and an unknown key fails the
    // whole body the way the service's strict binder does.
    if map.keys().any(|k| k != "Comment" && k != option_key) {
        return Err(invalid());
    }
    let comment = match map.get("Comment") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(serde_json::Value::String(_)) | None | Some(serde_json::Value::Null) => {
            return Err((
                "MissingRequiredParameter",
                "Comment is a required parameter".to_string(),
            ))
        }
        Some(_) => return Err(invalid()),
    };
    let option = match map.get(option_key) {
        Some(serde_json::Value::String(s)) => {
            if !allowed.contains(&s.as_str()) {
                return Err((
                    "InvalidRequestBody",
                    format!(
                        "{option_key} '{s}' is not valid; expected one of {}",
                        allowed.join(", ")
                    ),
                ));
            }
            s.clone()
        }
        None | Some(serde_json::Value::Null) => match default {
            Some(d) => d.to_string(),
            None => {
                return Err((
                    "MissingRequiredParameter",
                    format!("{option_key} is a required parameter"),
                ))
            }
        },
        Some(_) => return Err(invalid()),
    };
    Ok(Body { comment, option })
}

fn forbidden(ctx: &Ctx, action: MachineActionType) -> Response {
    ctx.error(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "The application does not have any of the required application roles ({}) to access the resource.",
            action.role()
        ),
    )
}

/// Verifies the bearer and names its tenant's index and app id.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(usize, String), BearerError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = app
        .entra
        .verify_bearer(auth, Audience::WindowsDefenderAtp)?;
    let tenant = app
        .world
        .tenant_index(&claims.tenant_id)
        .ok_or(BearerError::BadSignature)?;
    Ok((tenant, claims.app_id))
}

fn request(
    app: &App,
    action: MachineActionType,
    machine_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let ctx = Ctx::new(Feed::MdeAlerts, headers);
    let (tenant, app_id) = match authorize(app, headers) {
        Ok(x) => x,
        Err(e) => return unauthorized(&ctx, &e),
    };
    let ma = &app.machine_actions;
    let granted = ma.permissions(tenant);
    let allowed = match action {
        MachineActionType::Isolate => granted.isolate,
        MachineActionType::RunAntiVirusScan => granted.scan,
    };
    if !allowed {
        return forbidden(&ctx, action);
    }
    if let Err(t) = app
        .quotas
        .admit(tenant, Family::MachineActions, Instant::now())
    {
        return throttled(&ctx, t);
    }
    let tenant_id = app
        .tenants
        .get(tenant)
        .map(|t| t.tenant_id.clone())
        .unwrap_or_default();
    let raw: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        raw.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut record = RequestedAction {
        tenant_id,
        machine_id: machine_id.to_string(),
        action,
        comment: field("Comment"),
        option: field(action.option().0),
        at: chrono::Utc::now(),
        outcome: RequestOutcome::AlreadyInProgress,
    };
    let (status, response) = answer(app, &ctx, tenant, &app_id, action, machine_id, body);
    record.outcome = status;
    ma.requested.lock().push(record);
    response
}

fn answer(
    app: &App,
    ctx: &Ctx,
    tenant: usize,
    app_id: &str,
    action: MachineActionType,
    machine_id: &str,
    body: &[u8],
) -> (RequestOutcome, Response) {
    let rejected = |status: StatusCode, code: &'static str, message: &str| {
        (
            RequestOutcome::Rejected {
                status: status.as_u16(),
                code: code.to_string(),
            },
            ctx.error(status, code, message),
        )
    };
    let parsed = match parse_body(action, body) {
        Ok(b) => b,
        Err((code, message)) => return rejected(StatusCode::BAD_REQUEST, code, &message),
    };
    let Some(dns_name) = app.world.machine(tenant, machine_id) else {
        return rejected(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("Machine {machine_id} was not found"),
        );
    };
    let ma = &app.machine_actions;
    let now = Instant::now();
    let mut actions = ma.actions.lock();
    let busy = actions.values().any(|a| {
        a.tenant == tenant
            && a.machine_id == machine_id
            && a.action == action
            && ma.status(a, now) != "Succeeded"
    });
    if busy {
        return (
            RequestOutcome::AlreadyInProgress,
            ctx.error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Action is already in progress",
            ),
        );
    }
    let a = Action {
        id: uuid::Uuid::new_v4().to_string(),
        tenant,
        action,
        scope: parsed.option,
        requestor: app_id.to_string(),
        comment: parsed.comment,
        machine_id: machine_id.to_string(),
        dns_name,
        created: Tick::now(),
        started: now,
    };
    let body = render(&a, ma.status(&a, now), Tick::now());
    let id = a.id.clone();
    actions.insert(id.clone(), a);
    (
        RequestOutcome::Created { action_id: id },
        json(StatusCode::CREATED, body),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineActionBody<'a> {
    #[serde(rename = "@odata.context")]
    context: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    title: Option<&'a str>,
    requestor: &'a str,
    requestor_comment: &'a str,
    status: &'static str,
    machine_id: &'a str,
    computer_dns_name: &'a str,
    creation_date_time_utc: String,
    last_update_date_time_utc: String,
    cancellation_requestor: Option<&'a str>,
    cancellation_comment: Option<&'a str>,
    cancellation_date_time_utc: Option<&'a str>,
    error_h_result: i64,
    scope: &'a str,
    external_id: Option<&'a str>,
    request_source: &'static str,
    related_file_info: Option<()>,
    commands: [(); 0],
    troubleshoot_info: Option<&'a str>,
}

fn render(a: &Action, status: &'static str, updated: Tick) -> Vec<u8> {
    serde_json::to_vec(&MachineActionBody {
        context: "https://api.securitycenter.microsoft.com/api/$metadata#MachineActions/$entity",
        id: &a.id,
        kind: a.action.as_str(),
        title: None,
        requestor: &a.requestor,
        requestor_comment: &a.comment,
        status,
        machine_id: &a.machine_id,
        computer_dns_name: &a.dns_name,
        creation_date_time_utc: a.created.format7(),
        last_update_date_time_utc: updated.format7(),
        cancellation_requestor: None,
        cancellation_comment: None,
        cancellation_date_time_utc: None,
        error_h_result: 0,
        scope: &a.scope,
        external_id: None,
        request_source: "PublicApi",
        related_file_info: None,
        commands: [],
        troubleshoot_info: None,
    })
    .unwrap_or_default()
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; odata.metadata=minimal; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn get_action(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = Ctx::new(Feed::MdeAlerts, &headers);
    let (tenant, _) = match authorize(&app, &headers) {
        Ok(x) => x,
        Err(e) => return unauthorized(&ctx, &e),
    };
    if let Err(t) = app.quotas.admit(tenant, Family::Mde, Instant::now()) {
        return throttled(&ctx, t);
    }
    let ma = &app.machine_actions;
    let actions = ma.actions.lock();
    // Another tenant's action is as unknown as a made-up id.
    match actions.get(&id).filter(|a| a.tenant == tenant) {
        Some(a) => {
            let now = Instant::now();
            let status = ma.status(a, now);
            let updated = if status == "Succeeded" {
                a.created.plus(ma.settings.completion)
            } else {
                Tick::now()
            };
            json(StatusCode::OK, render(a, status, updated))
        }
        None => ctx.error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("MachineAction {id} was not found"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(action: MachineActionType, body: &str) -> &'static str {
        parse_body(action, body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn bodies_are_case_sensitive_and_checked() {
        let iso = MachineActionType::Isolate;
        let scan = MachineActionType::RunAntiVirusScan;
        assert_eq!(
            parse_body(iso, br#"{"Comment":"x","IsolationType":"Selective"}"#).unwrap(),
            Body {
                comment: "x".into(),
                option: "Selective".into()
            }
        );
        assert_eq!(
            parse_body(iso, br#"{"Comment":"x"}"#).unwrap().option,
            "Full"
        );
        assert_eq!(err(iso, r#"{"comment":"x"}"#), "InvalidRequestBody");
        assert_eq!(
            err(iso, r#"{"Comment":"x","isolationType":"Full"}"#),
            "InvalidRequestBody"
        );
        assert_eq!(
            err(iso, r#"{"IsolationType":"Full"}"#),
            "MissingRequiredParameter"
        );
        assert_eq!(err(iso, r#"{"Comment":""}"#), "MissingRequiredParameter");
        assert_eq!(
            err(iso, r#"{"Comment":"x","IsolationType":"selective"}"#),
            "InvalidRequestBody"
        );
        assert_eq!(
            err(iso, r#"{"Comment":"x","ScanType":"Quick"}"#),
            "InvalidRequestBody"
        );
        assert_eq!(err(iso, "not json"), "InvalidRequestBody");
        assert_eq!(err(iso, "[]"), "InvalidRequestBody");
        assert_eq!(err(scan, r#"{"Comment":"x"}"#), "MissingRequiredParameter");
        assert_eq!(
            err(scan, r#"{"Comment":"x","ScanType":"Deep"}"#),
            "InvalidRequestBody"
        );
        assert_eq!(
            parse_body(scan, br#"{"Comment":"x","ScanType":"Quick"}"#)
                .unwrap()
                .option,
            "Quick"
        );
    }
}
