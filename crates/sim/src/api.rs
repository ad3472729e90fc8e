//! The four list endpoints — `GET /api/incidents` (M365 Defender), `GET /api/alerts`
//! (Defender for Endpoint), `GET /v1.0/security/incidents` and
//! `GET /v1.0/security/alerts_v2` (Graph) — with their OData options, limits, error
//! bodies, bearer checks, quotas and injected faults.
//!
//! Order of checks, as the services do it: token (401/403), then injected faults (they
//! stand for infrastructure failures), then the quota (429), then the query (400).

use crate::entra::{AccessClaims, BearerError, Entra};
use crate::faults::{FaultKind, Faults};
use crate::model::{Source, EVOLVABLE};
use crate::odata::{compile, parse_filter, Compiled, Field};
use crate::quota::{Family, Quotas, Throttled};
use crate::server::ConnHandle;
use crate::world::{Order, PageQuery, PageResult, View, World};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use relay_config::{Api, Feed};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use url::Url;

/// Request counters (see [`crate::SimStats`]).
#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub by_feed: [AtomicU64; 4],
    pub ok: AtomicU64,
    pub throttled: AtomicU64,
    pub unauthorized: AtomicU64,
    pub forbidden: AtomicU64,
    pub bad_requests: AtomicU64,
    pub faults: AtomicU64,
    pub items: AtomicU64,
}

fn feed_index(feed: Feed) -> usize {
    match feed {
        Feed::M365dIncidents => 0,
        Feed::MdeAlerts => 1,
        Feed::GraphIncidents => 2,
        Feed::GraphAlerts => 3,
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the API handlers share.
pub(crate) struct App {
    pub world: Arc<World>,
    pub entra: Arc<Entra>,
    pub quotas: Quotas,
    pub faults: Faults,
    pub counters: Counters,
    pub machine_actions: crate::machine_actions::MachineActions,
    pub base_url: Url,
    pub tenants: Vec<crate::SimTenant>,
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/incidents", get(m365d_incidents))
        .route("/api/alerts", get(mde_alerts))
        .route("/v1.0/security/incidents", get(graph_incidents))
        .route("/v1.0/security/alerts_v2", get(graph_alerts))
        // Graph paths are case-insensitive; the docs themselves write `alerts_V2`.
        .route("/v1.0/security/alerts_V2", get(graph_alerts))
        .with_state(app)
}

async fn m365d_incidents(State(app): State<Arc<App>>, req: Request) -> Response {
    list(&app, Feed::M365dIncidents, req).await
}

async fn mde_alerts(State(app): State<Arc<App>>, req: Request) -> Response {
    list(&app, Feed::MdeAlerts, req).await
}

async fn graph_incidents(State(app): State<Arc<App>>, req: Request) -> Response {
    list(&app, Feed::GraphIncidents, req).await
}

async fn graph_alerts(State(app): State<Arc<App>>, req: Request) -> Response {
    list(&app, Feed::GraphAlerts, req).await
}

// ---------------------------------------------------------------------------------------
// Error bodies

/// Who answers: Graph's envelope has `innerError`, Defender's has `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Envelope {
    Graph,
    Defender,
}

impl Envelope {
    fn of(feed: Feed) -> Envelope {
        match feed.api() {
            Api::Graph => Envelope::Graph,
            Api::Defender => Envelope::Defender,
        }
    }
}

#[derive(Serialize)]
struct GraphError<'a> {
    error: GraphErrorInner<'a>,
}

#[derive(Serialize)]
struct GraphErrorInner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "innerError")]
    inner_error: InnerError<'a>,
}

#[derive(Serialize)]
struct InnerError<'a> {
    date: String,
    #[serde(rename = "request-id")]
    request_id: &'a str,
    #[serde(rename = "client-request-id")]
    client_request_id: &'a str,
}

#[derive(Serialize)]
struct DefenderError<'a> {
    error: DefenderErrorInner<'a>,
}

#[derive(Serialize)]
struct DefenderErrorInner<'a> {
    code: &'a str,
    message: &'a str,
    target: &'a str,
}

/// Request context for error bodies.
pub(crate) struct Ctx {
    family: Envelope,
    client_request_id: Option<String>,
}

impl Ctx {
    pub(crate) fn new(feed: Feed, headers: &HeaderMap) -> Ctx {
        Ctx {
            family: Envelope::of(feed),
            client_request_id: headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }

    /// A JSON error in the family's envelope.
    pub(crate) fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (body, mut headers) = match self.family {
            Envelope::Graph => {
                let client = self
                    .client_request_id
                    .clone()
                    .unwrap_or_else(|| request_id.clone());
                let body = serde_json::to_vec(&GraphError {
                    error: GraphErrorInner {
                        code,
                        message,
                        inner_error: InnerError {
                            date: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                            request_id: &request_id,
                            client_request_id: &client,
                        },
                    },
                });
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&client) {
                    h.insert("client-request-id", v);
                }
                (body, h)
            }
            Envelope::Defender => (
                serde_json::to_vec(&DefenderError {
                    error: DefenderErrorInner {
                        code,
                        message,
                        target: &request_id,
                    },
                }),
                HeaderMap::new(),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert("request-id", v);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        (status, headers, body.unwrap_or_default()).into_response()
    }

    fn bad_request(&self, code: &str, message: &str) -> Response {
        self.error(StatusCode::BAD_REQUEST, code, message)
    }
}

pub(crate) fn unauthorized(ctx: &Ctx, e: &BearerError) -> Response {
    match ctx.family {
        Envelope::Graph => {
            let message = match e {
                BearerError::Missing => "Access token is empty.",
                BearerError::Malformed => {
                    "IDX14100: JWT is not well formed, there are no dots (.)."
                }
                BearerError::Expired { .. } | BearerError::NotYetValid { .. } => {
                    "Access token has expired or is not yet valid."
                }
                BearerError::WrongAudience { .. } => {
                    "Access token validation failure. Invalid audience."
                }
                BearerError::BadSignature => "Access token validation failure.",
            };
            let mut r = ctx.error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
                ),
            );
            r
        }
        Envelope::Defender => {
            let message = match e {
                BearerError::Missing => "Authorization header is missing or empty",
                BearerError::Malformed => "The access token is malformed",
                BearerError::Expired { .. } => "The access token has expired",
                BearerError::NotYetValid { .. } => "The access token is not yet valid",
                BearerError::WrongAudience { .. } => "The access token audience is invalid",
                BearerError::BadSignature => "The access token signature is invalid",
            };
            let mut r = ctx.error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// The app roles (or delegated scopes) that let a token read `feed`.
fn required_permissions(feed: Feed) -> &'static [&'static str] {
    match feed {
        Feed::M365dIncidents => &[
            "Incident.Read.All",
            "Incident.ReadWrite.All",
            "Incident.Read",
            "Incident.ReadWrite",
        ],
        Feed::MdeAlerts => &[
            "Alert.Read.All",
            "Alert.ReadWrite.All",
            "Alert.Read",
            "Alert.ReadWrite",
        ],
        Feed::GraphIncidents => &[
            "SecurityIncident.Read.All",
            "SecurityIncident.ReadWrite.All",
        ],
        Feed::GraphAlerts => &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"],
    }
}

pub(crate) fn has_permission(feed: Feed, claims: &AccessClaims) -> bool {
    let need = required_permissions(feed);
    claims
        .roles
        .iter()
        .chain(claims.scopes.iter())
        .any(|r| need.iter().any(|n| n.eq_ignore_ascii_case(r)))
}

fn forbidden(ctx: &Ctx, feed: Feed, claims: &AccessClaims) -> Response {
    let need = required_permissions(feed);
    let message = match ctx.family {
        Envelope::Graph => format!(
            "Missing application roles. API required roles: {}. API application roles: {}.",
            need.join(","),
            claims.roles.join(",")
        ),
        Envelope::Defender => format!(
            "The application does not have any of the required application roles ({}) to access the resource.",
            need.join(", ")
        ),
    };
    ctx.error(StatusCode::FORBIDDEN, "Forbidden", &message)
}

fn too_many(ctx: &Ctx, limit: u32, window: &str, retry_after_secs: u64) -> Response {
    let mut r = match ctx.family {
        Envelope::Graph => ctx.error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests.",
        ),
        Envelope::Defender => ctx.error(
            StatusCode::TOO_MANY_REQUESTS,
            "429",
            &format!("API calls quota exceeded! maximum allowed {limit} per {window}"),
        ),
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

pub(crate) fn throttled(ctx: &Ctx, t: Throttled) -> Response {
    too_many(ctx, t.limit, &t.window_text(), t.retry_after_secs)
}

fn server_error(ctx: &Ctx, status: u16) -> Response {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(StatusCode::is_server_error)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, message) = match (ctx.family, status.as_u16()) {
        (Envelope::Graph, 500) => ("UnknownError", ""),
        (Envelope::Graph, 502) => ("BadGateway", "Bad Gateway"),
        (Envelope::Graph, 503) => ("serviceNotAvailable", "Service unavailable"),
        (Envelope::Graph, 504) => ("GatewayTimeout", "The request timed out."),
        (Envelope::Defender, 503) => (
            "ServiceUnavailable",
            "The service is temporarily unavailable",
        ),
        (Envelope::Defender, _) => ("InternalServerError", "Internal server error"),
        (Envelope::Graph, _) => ("generalException", "An unspecified error occurred."),
    };
    let mut r = ctx.error(status, code, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

fn html_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let line = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>Microsoft-Azure-Application-Gateway/v2</center>\r\n</body>\r\n</html>\r\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Query options

/// What a feed accepts.
struct Rules {
    top_default: usize,
    top_max: usize,
    /// Graph alerts_v2 clamps an oversized `$top`; everyone else refuses it.
    clamp_top: bool,
    skip_max: Option<usize>,
    orderby: bool,
    expand: Option<&'static str>,
    count: bool,
    type_name: &'static str,
    resolve: fn(&str) -> Option<Field>,
}

fn rules(feed: Feed) -> Rules {
    match feed {
        Feed::M365dIncidents => Rules {
            top_default: 100,
            top_max: 100,
            clamp_top: false,
            skip_max: None,
            // Not documented for the incidents API: refuse rather than let a client
            // depend on it.
            orderby: false,
            expand: None,
            count: false,
            type_name: "Microsoft.Windows.Security.Incident",
            resolve: |n| match n {
                "lastUpdateTime" => Some(Field::LastUpdate),
                "createdTime" => Some(Field::Created),
                "status" => Some(Field::Status),
                "assignedTo" => Some(Field::AssignedTo),
                "classification" => Some(Field::Classification),
                "determination" => Some(Field::Determination),
                _ => None,
            },
        },
        Feed::MdeAlerts => Rules {
            top_default: 10_000,
            top_max: 10_000,
            clamp_top: false,
            skip_max: None,
            orderby: true,
            expand: Some("evidence"),
            count: false,
            type_name: "Microsoft.Windows.Security.Alert",
            resolve: |n| match n {
                "lastUpdateTime" => Some(Field::LastUpdate),
                "alertCreationTime" => Some(Field::Created),
                "status" => Some(Field::Status),
                "severity" => Some(Field::Severity),
                "assignedTo" => Some(Field::AssignedTo),
                "classification" => Some(Field::Classification),
                "determination" => Some(Field::Determination),
                "incidentId" => Some(Field::IncidentId),
                _ => None,
            },
        },
        Feed::GraphIncidents => Rules {
            top_default: 50,
            top_max: 50,
            clamp_top: false,
            skip_max: Some(500),
            orderby: true,
            expand: Some("alerts"),
            count: true,
            type_name: "microsoft.graph.security.incident",
            resolve: |n| match n {
                "lastUpdateDateTime" => Some(Field::LastUpdate),
                "createdDateTime" => Some(Field::Created),
                "status" => Some(Field::Status),
                "severity" => Some(Field::Severity),
                "assignedTo" => Some(Field::AssignedTo),
                "classification" => Some(Field::Classification),
                "determination" => Some(Field::Determination),
                _ => None,
            },
        },
        Feed::GraphAlerts => Rules {
            top_default: 1_000,
            top_max: 1_000,
            clamp_top: true,
            skip_max: Some(500),
            orderby: true,
            expand: None,
            count: true,
            type_name: "microsoft.graph.security.alert",
            resolve: |n| match n {
                "lastUpdateDateTime" => Some(Field::LastUpdate),
                "createdDateTime" => Some(Field::Created),
                "status" => Some(Field::Status),
                "severity" => Some(Field::Severity),
                "assignedTo" => Some(Field::AssignedTo),
                "classification" => Some(Field::Classification),
                "determination" => Some(Field::Determination),
                "serviceSource" => Some(Field::ServiceSource),
                _ => None,
            },
        },
    }
}

/// A parsed list request.
#[derive(Debug)]
pub(crate) struct Params {
    pub filter: Compiled,
    pub top: usize,
    pub skip: usize,
    pub order: Order,
    pub expand: bool,
    pub count: bool,
    /// The query pairs as received, for building `@odata.nextLink`.
    pub pairs: Vec<(String, String)>,
}

/// A refused query: the status code, the error code and message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QueryError {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        code,
        message: message.into(),
    }
}

fn number(name: &str, value: &str) -> Result<usize, QueryError> {
    value.trim().parse::<usize>().map_err(|_| {
        invalid(
            "BadRequest",
            format!("Invalid value '{value}' for {name} query option found. The {name} query option requires a non-negative integer value."),
        )
    })
}

/// Parses the query string of a list request for `feed`.
pub(crate) fn parse_params(feed: Feed, query: &str) -> Result<Params, QueryError> {
    let r = rules(feed);
    let graph = feed.api() == Api::Graph;
    let odata_code = if graph { "BadRequest" } else { "ODataError" };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut p = Params {
        filter: Compiled::all(),
        top: r.top_default,
        skip: 0,
        order: Order::LastUpdateDesc,
        expand: false,
        count: false,
        pairs: Vec::new(),
    };
    for (key, value) in &pairs {
        let lower = key.to_ascii_lowercase();
        if !lower.starts_with('$') {
            continue;
        }
        if seen.contains(&lower) {
            return Err(invalid(
                odata_code,
                format!("Query option '{key}' was specified more than once, but it must be specified at most once."),
            ));
        }
        seen.push(lower.clone());
        match lower.as_str() {
            "$filter" => {
                let expr = parse_filter(value).and_then(|e| compile(&e, r.type_name, &r.resolve));
                p.filter = expr.map_err(|e| {
                    if graph {
                        invalid("BadRequest", format!("Invalid filter clause: {}", e.message))
                    } else {
                        invalid(
                            "ODataError",
                            format!("The query specified in the URI is not valid. {}", e.message),
                        )
                    }
                })?;
            }
            "$top" => {
                let n = number("$top", value)?;
                if n > r.top_max {
                    if !r.clamp_top {
                        return Err(invalid(
                            "BadRequest",
                            format!("The limit of '{}' for Top query has been exceeded. The value from the incoming request is '{n}'.", r.top_max),
                        ));
                    }
                    p.top = r.top_max;
                } else {
                    p.top = n;
                }
            }
            "$skip" => {
                let n = number("$skip", value)?;
                if let Some(max) = r.skip_max {
                    if n > max {
                        return Err(invalid(
                            "BadRequest",
                            format!("The limit of '{max}' for Skip query has been exceeded. The value from the incoming request is '{n}'."),
                        ));
                    }
                }
                p.skip = n;
            }
            "$orderby" if r.orderby => {
                let mut words = value.split_whitespace();
                let field = words.next().unwrap_or("");
                let dir = words.next().map(str::to_ascii_lowercase);
                if words.next().is_some() || value.contains(',') {
                    return Err(invalid(odata_code, format!("The query specified in the URI is not valid. Only one $orderby property is supported: '{value}'.")));
                }
                let desc = match dir.as_deref() {
                    None | Some("asc") => false,
                    Some("desc") => true,
                    Some(other) => {
                        return Err(invalid(odata_code, format!("Syntax error: unexpected '{other}' in $orderby.")));
                    }
                };
                p.order = match (r.resolve)(field) {
                    Some(Field::LastUpdate) if desc => Order::LastUpdateDesc,
                    Some(Field::LastUpdate) => Order::LastUpdateAsc,
                    Some(Field::Created) if desc => Order::CreatedDesc,
                    Some(Field::Created) => Order::CreatedAsc,
                    _ => {
                        return Err(invalid(
                            odata_code,
                            format!("The query specified in the URI is not valid. Order by '{field}' is not supported."),
                        ))
                    }
                };
            }
            "$expand" => match r.expand {
                Some(what) if value.trim().eq_ignore_ascii_case(what) => p.expand = true,
                _ => {
                    return Err(invalid(
                        odata_code,
                        format!("The query specified in the URI is not valid. Could not find a property named '{value}' to expand."),
                    ))
                }
            },
            "$count" if r.count => match value.trim() {
                "true" => p.count = true,
                "false" => p.count = false,
                other => return Err(invalid(odata_code, format!("'{other}' is not a valid count option."))),
            },
            _ => {
                let option = key.trim_start_matches('$');
                let mut name = option.to_string();
                if let Some(first) = name.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                return Err(invalid(
                    odata_code,
                    format!("Query option '{name}' is not allowed. The simulator serves $filter, $top, $skip{}.",
                        match feed {
                            Feed::M365dIncidents => "",
                            Feed::MdeAlerts => ", $orderby, $expand=evidence",
                            Feed::GraphIncidents => ", $orderby, $count, $expand=alerts",
                            Feed::GraphAlerts => ", $orderby, $count",
                        }),
                ));
            }
        }
    }
    p.pairs = pairs;
    Ok(p)
}

/// Percent-encodes a query component the way Graph writes its links: `$` and the OData
/// punctuation literal, spaces as `%20`.
fn encode_component(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'$')
        .remove(b':')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b',');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

fn next_link(base: &Url, path: &str, p: &Params) -> String {
    let mut q: Vec<String> = p
        .pairs
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip"))
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    q.push(format!("$skip={}", p.skip + p.top));
    format!(
        "{}{}?{}",
        base.as_str().trim_end_matches('/'),
        path,
        q.join("&")
    )
}

// ---------------------------------------------------------------------------------------
// Pages

fn context(feed: Feed, expand: bool) -> &'static str {
    match (feed, expand) {
        (Feed::M365dIncidents, _) => "https://api.security.microsoft.com/api/$metadata#Incidents",
        (Feed::MdeAlerts, _) => "https://api.securitycenter.microsoft.com/api/$metadata#Alerts",
        (Feed::GraphIncidents, false) => {
            "https://graph.microsoft.com/v1.0/$metadata#security/incidents"
        }
        (Feed::GraphIncidents, true) => {
            "https://graph.microsoft.com/v1.0/$metadata#security/incidents(alerts())"
        }
        (Feed::GraphAlerts, _) => "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2",
    }
}

fn hide_evolvable(item: &[u8]) -> Vec<u8> {
    let mut s = String::from_utf8_lossy(item).into_owned();
    for (from, to) in EVOLVABLE {
        s = s.replace(from, to);
    }
    s.into_bytes()
}

/// The page body: context, count, nextLink, then the items' cached renderings.
pub(crate) fn render_page(
    feed: Feed,
    p: &Params,
    page: &PageResult,
    next: Option<&str>,
    include_unknown_enums: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + page.entries.len() * 4_096);
    out.extend_from_slice(b"{\"@odata.context\":\"");
    out.extend_from_slice(context(feed, p.expand).as_bytes());
    out.push(b'"');
    if let Some(n) = page.count {
        out.extend_from_slice(format!(",\"@odata.count\":{n}").as_bytes());
    }
    if let Some(link) = next {
        out.extend_from_slice(b",\"@odata.nextLink\":");
        out.extend_from_slice(&serde_json::to_vec(link).unwrap_or_default());
    }
    out.extend_from_slice(b",\"value\":[");
    let hide = feed.api() == Api::Graph && !include_unknown_enums;
    let mut first = true;
    let mut scratch = Vec::new();
    for e in &page.entries {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        if hide && e.evolvable {
            scratch.clear();
            if e.write(feed, p.expand, &mut scratch) {
                out.extend_from_slice(&hide_evolvable(&scratch));
                first = false;
            } else {
                out.truncate(mark);
            }
        } else if e.write(feed, p.expand, &mut out) {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn json_content_type(feed: Feed) -> HeaderValue {
    match feed.api() {
        Api::Graph => HeaderValue::from_static(
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        ),
        Api::Defender => {
            HeaderValue::from_static("application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8")
        }
    }
}

fn view(feed: Feed) -> View {
    match feed {
        Feed::M365dIncidents | Feed::GraphIncidents => View::Incidents,
        Feed::GraphAlerts => View::Alerts,
        Feed::MdeAlerts => View::MdeAlerts,
    }
}

async fn list(app: &App, feed: Feed, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    bump(&app.counters.requests);
    bump(&app.counters.by_feed[feed_index(feed)]);
    let ctx = Ctx::new(feed, &parts.headers);
    let auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = match app.entra.verify_bearer(auth, feed.audience()) {
        Ok(c) => c,
        Err(e) => {
            bump(&app.counters.unauthorized);
            return unauthorized(&ctx, &e);
        }
    };
    let Some(tenant) = app.world.tenant_index(&claims.tenant_id) else {
        bump(&app.counters.unauthorized);
        return unauthorized(&ctx, &BearerError::BadSignature);
    };
    if !has_permission(feed, &claims) {
        bump(&app.counters.forbidden);
        return forbidden(&ctx, feed, &claims);
    }
    let mut mangle = None;
    let expand = parts
        .uri
        .query()
        .is_some_and(|q| q.to_ascii_lowercase().contains("expand"));
    if let Some(kind) = app.faults.take(tenant, feed, expand) {
        bump(&app.counters.faults);
        tracing::debug!(tenant = %claims.tenant_id, feed = %feed, ?kind, "injecting fault");
        match kind {
            FaultKind::ConnectionReset => {
                if let Some(h) = parts.extensions.get::<ConnHandle>() {
                    h.reset();
                }
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            FaultKind::ServerError { status } => return server_error(&ctx, status),
            FaultKind::ExpandFails => return server_error(&ctx, 500),
            FaultKind::HtmlError { status } => return html_error(status),
            FaultKind::TooManyRequests { retry_after_secs } => {
                bump(&app.counters.throttled);
                let limit = match Family::of(feed) {
                    Family::M365d => 50,
                    Family::Mde => 100,
                    Family::Graph => 150,
                    Family::MachineActions => 100,
                };
                return too_many(&ctx, limit, "00:01:00", retry_after_secs);
            }
            FaultKind::Slow { delay } => tokio::time::sleep(delay).await,
            other => mangle = Some(other),
        }
    }
    if let Err(t) = app.quotas.admit(tenant, Family::of(feed), Instant::now()) {
        bump(&app.counters.throttled);
        return throttled(&ctx, t);
    }
    let params = match parse_params(feed, parts.uri.query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            bump(&app.counters.bad_requests);
            return ctx.bad_request(e.code, &e.message);
        }
    };
    let partial = matches!(mangle, Some(FaultKind::PartialContent));
    let page = app.world.query(
        tenant,
        &PageQuery {
            view: view(feed),
            filter: &params.filter,
            order: params.order,
            skip: params.skip,
            top: params.top,
            count: params.count,
            // A failing provider's items are missing from a federated 206 answer.
            exclude: partial.then_some(Source::Endpoint),
        },
    );
    let next = (feed == Feed::GraphIncidents && page.more)
        .then(|| next_link(&app.base_url, parts.uri.path(), &params));
    let include_unknown = parts
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.to_ascii_lowercase()
                .contains("include-unknown-enum-members")
        });
    let body = render_page(feed, &params, &page, next.as_deref(), include_unknown);
    bump(&app.counters.ok);
    app.counters
        .items
        .fetch_add(page.entries.len() as u64, Ordering::Relaxed);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, json_content_type(feed));
    headers.insert("odata-version", HeaderValue::from_static("4.0"));
    let status = if partial {
        headers.insert(
            header::WARNING,
            HeaderValue::from_static(
                "199 - \"Microsoft/Microsoft Defender for Endpoint/504/10000\"",
            ),
        );
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    match mangle {
        Some(FaultKind::MalformedJson) => {
            let mut b = body;
            // A trailing comma: never valid JSON, whatever the page holds.
            b.pop();
            b.extend_from_slice(b",}");
            (status, headers, b).into_response()
        }
        Some(FaultKind::CutJson) => {
            let half = body.len() / 2;
            (status, headers, body[..half].to_vec()).into_response()
        }
        Some(FaultKind::TruncatedBody) => {
            let full = body.len();
            let half = Bytes::from(body).slice(..full / 2);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full));
            // A stream has no size hint, so hyper sends the length we claim; the stream
            // then fails, and hyper closes the connection short of that length.
            // The pause lets hyper flush the half before the error aborts the connection.
            let stream = futures::StreamExt::chain(
                futures::stream::iter([Ok::<Bytes, std::io::Error>(half)]),
                futures::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "simulated truncated body",
                    ))
                }),
            );
            (status, headers, Body::from_stream(stream)).into_response()
        }
        _ => (status, headers, body).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_caps_per_family() {
        assert_eq!(
            parse_params(Feed::M365dIncidents, "$top=100").unwrap().top,
            100
        );
        let e = parse_params(Feed::M365dIncidents, "$top=101").unwrap_err();
        assert_eq!(e.code, "BadRequest");
        assert!(e.message.contains("'100'"), "{}", e.message);
        assert_eq!(
            parse_params(Feed::MdeAlerts, "$top=10000").unwrap().top,
            10_000
        );
        assert!(parse_params(Feed::MdeAlerts, "$top=10001").is_err());
        assert!(parse_params(Feed::GraphIncidents, "$top=51").is_err());
        assert_eq!(
            parse_params(Feed::GraphAlerts, "$top=5000").unwrap().top,
            1_000
        );
        assert!(parse_params(Feed::GraphAlerts, "$top=-1").is_err());
        assert!(parse_params(Feed::GraphAlerts, "$skip=500").is_ok());
        assert!(parse_params(Feed::GraphAlerts, "$skip=501").is_err());
        assert_eq!(
            parse_params(Feed::MdeAlerts, "$skip=50000").unwrap().skip,
            50_000
        );
    }

    #[test]
    fn options_per_feed() {
        assert!(parse_params(Feed::M365dIncidents, "$orderby=lastUpdateTime desc").is_err());
        assert_eq!(
            parse_params(Feed::GraphAlerts, "$orderby=lastUpdateDateTime%20asc")
                .unwrap()
                .order,
            Order::LastUpdateAsc
        );
        assert_eq!(
            parse_params(Feed::GraphAlerts, "$orderby=lastUpdateDateTime+desc")
                .unwrap()
                .order,
            Order::LastUpdateDesc
        );
        assert_eq!(
            parse_params(Feed::MdeAlerts, "$orderby=alertCreationTime")
                .unwrap()
                .order,
            Order::CreatedAsc
        );
        assert!(parse_params(Feed::GraphAlerts, "$orderby=title").is_err());
        assert!(
            parse_params(Feed::GraphIncidents, "$expand=alerts")
                .unwrap()
                .expand
        );
        assert!(
            parse_params(Feed::MdeAlerts, "$expand=evidence")
                .unwrap()
                .expand
        );
        assert!(parse_params(Feed::GraphAlerts, "$expand=evidence").is_err());
        assert!(parse_params(Feed::GraphAlerts, "$select=id").is_err());
        assert!(parse_params(Feed::GraphAlerts, "$top=1&$top=2").is_err());
        assert!(
            parse_params(Feed::GraphAlerts, "$count=true")
                .unwrap()
                .count
        );
        assert!(parse_params(Feed::GraphAlerts, "api-version=1&foo=bar").is_ok());
        let e = parse_params(Feed::MdeAlerts, "$filter=lastUpdateTime+gx+2020").unwrap_err();
        assert_eq!(e.code, "ODataError");
        let e = parse_params(
            Feed::GraphAlerts,
            "$filter=lastUpdateTime ge 2020-01-01T00:00:00Z",
        )
        .unwrap_err();
        assert_eq!(e.code, "BadRequest");
        assert!(e.message.starts_with(
            "Invalid filter clause: Could not find a property named 'lastUpdateTime'"
        ));
    }

    #[test]
    fn next_link_replaces_skip_and_encodes_like_graph() {
        let p = parse_params(
            Feed::GraphIncidents,
            "$filter=lastUpdateDateTime%20ge%202024-01-01T00:00:00.5Z&$top=10&$skip=20&$expand=alerts",
        )
        .unwrap();
        let base = Url::parse("http://127.0.0.1:4000/").unwrap();
        assert_eq!(
            next_link(&base, "/v1.0/security/incidents", &p),
            "http://127.0.0.1:4000/v1.0/security/incidents?$filter=lastUpdateDateTime%20ge%202024-01-01T00:00:00.5Z&$top=10&$expand=alerts&$skip=30"
        );
    }

    #[test]
    fn permissions() {
        let claims = |roles: &[&str]| AccessClaims {
            tenant_id: "t".into(),
            app_id: "a".into(),
            audience: relay_config::Audience::Graph,
            issued_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scopes: Vec::new(),
            user: None,
        };
        assert!(has_permission(
            Feed::GraphAlerts,
            &claims(&["SecurityAlert.Read.All"])
        ));
        assert!(!has_permission(
            Feed::GraphIncidents,
            &claims(&["SecurityAlert.Read.All"])
        ));
        assert!(!has_permission(Feed::MdeAlerts, &claims(&[])));
        let ctx = Ctx {
            family: Envelope::Graph,
            client_request_id: Some("abc".into()),
        };
        let r = forbidden(
            &ctx,
            Feed::GraphIncidents,
            &claims(&["SecurityAlert.Read.All"]),
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()["client-request-id"], "abc");
    }
}
