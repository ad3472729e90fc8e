//! `/_sim/...`: JSON control routes doing what [`crate::Sim`]'s methods do, for tests
//! and demos that drive the simulator from another process (`xdr-relay sim`). Token-side
//! controls live under `/_sim/entra/` (see [`crate::entra`]).

use crate::api::App;
use crate::faults::ApiFault;
use crate::world::WorldError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use relay_config::Stream;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/_sim/tenants", get(tenants))
        .route("/_sim/ground-truth", get(ground_truth))
        .route("/_sim/stats", get(stats))
        .route("/_sim/machine-actions", get(machine_actions))
        .route("/_sim/activity/pause", post(pause))
        .route("/_sim/activity/resume", post(resume))
        .route(
            "/_sim/faults/{tenant_id}",
            get(list_faults).post(set_fault).delete(clear_faults),
        )
        .route("/_sim/tenants/{tenant_id}/incidents", post(create_incident))
        .route("/_sim/tenants/{tenant_id}/{stream}/burst", post(burst))
        .route("/_sim/tenants/{tenant_id}/{stream}/{id}/touch", post(touch))
        .with_state(app)
}

async fn machine_actions(State(app): State<Arc<App>>) -> Response {
    Json(app.machine_actions.requested()).into_response()
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn world_error(e: WorldError) -> Response {
    problem(StatusCode::NOT_FOUND, e.to_string())
}

fn tenant_index(app: &App, tenant_id: &str) -> Result<usize, String> {
    app.world
        .tenant_index(tenant_id)
        .ok_or_else(|| format!("unknown simulated tenant {tenant_id}"))
}

fn stream(s: &str) -> Result<Stream, String> {
    match s {
        "incidents" => Ok(Stream::Incidents),
        "alerts" => Ok(Stream::Alerts),
        other => Err(format!(
            "unknown stream {other:?}; expected incidents or alerts"
        )),
    }
}

async fn tenants(State(app): State<Arc<App>>) -> Response {
    Json(&app.tenants).into_response()
}

async fn ground_truth(State(app): State<Arc<App>>) -> Response {
    Json(app.world.ground_truth()).into_response()
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(app.stats()).into_response()
}

async fn pause(State(app): State<Arc<App>>) -> Response {
    app.world.pause();
    Json(json!({ "paused": true, "fully_visible_at": app.world.fully_visible_at().to_datetime() }))
        .into_response()
}

async fn resume(State(app): State<Arc<App>>) -> Response {
    app.world.resume();
    Json(json!({ "paused": false })).into_response()
}

async fn list_faults(State(app): State<Arc<App>>, Path(tenant_id): Path<String>) -> Response {
    match tenant_index(&app, &tenant_id) {
        Ok(i) => Json(app.faults.active(i)).into_response(),
        Err(e) => problem(StatusCode::NOT_FOUND, e),
    }
}

async fn set_fault(
    State(app): State<Arc<App>>,
    Path(tenant_id): Path<String>,
    Json(fault): Json<ApiFault>,
) -> Response {
    match tenant_index(&app, &tenant_id) {
        Ok(i) => {
            app.faults.set(i, fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => problem(StatusCode::NOT_FOUND, e),
    }
}

async fn clear_faults(State(app): State<Arc<App>>, Path(tenant_id): Path<String>) -> Response {
    match tenant_index(&app, &tenant_id) {
        Ok(i) => {
            app.faults.clear(i);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => problem(StatusCode::NOT_FOUND, e),
    }
}

/// Body of the scripted-activity routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scripted {
    #[serde(default)]
    alerts: Option<usize>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    visible_after_ms: Option<u64>,
}

async fn create_incident(
    State(app): State<Arc<App>>,
    Path(tenant_id): Path<String>,
    body: Option<Json<Scripted>>,
) -> Response {
    let s = body.map(|b| b.0).unwrap_or_default();
    match app.world.create_incident(
        &tenant_id,
        s.alerts.unwrap_or(1),
        s.visible_after_ms.map(Duration::from_millis),
    ) {
        Ok(c) => Json(json!({
            "incident_id": c.incident_id,
            "alert_ids": c.alert_ids,
            "last_update": c.last_update,
        }))
        .into_response(),
        Err(e) => world_error(e),
    }
}

async fn burst(
    State(app): State<Arc<App>>,
    Path((tenant_id, s)): Path<(String, String)>,
    body: Option<Json<Scripted>>,
) -> Response {
    let stream = match stream(&s) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::NOT_FOUND, e),
    };
    let n = body.and_then(|b| b.0.count).unwrap_or(1);
    match app.world.burst(&tenant_id, stream, n) {
        Ok(t) => Json(json!({ "last_update": t.to_datetime() })).into_response(),
        Err(e) => world_error(e),
    }
}

async fn touch(
    State(app): State<Arc<App>>,
    Path((tenant_id, s, id)): Path<(String, String, String)>,
    body: Option<Json<Scripted>>,
) -> Response {
    let stream = match stream(&s) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::NOT_FOUND, e),
    };
    let after = body
        .and_then(|b| b.0.visible_after_ms)
        .map(Duration::from_millis);
    match app.world.touch(&tenant_id, stream, &id, after) {
        Ok(t) => Json(json!({ "last_update": t.to_datetime() })).into_response(),
        Err(e) => world_error(e),
    }
}
