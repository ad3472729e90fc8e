//! Incidents and alerts as the simulated world holds them, and their four JSON shapes:
//! the M365 Defender incident (PascalCase enums, numeric `incidentId`, nested alerts with
//! `devices` and flat `entities`), the Defender for Endpoint alert (flat `evidence`), and
//! the Graph incident and `alerts_v2` alert (camelCase enums, polymorphic `evidence`).
//!
//! Key order and null-versus-absent follow the sample payloads in `shared/samples` (copied
//! into `testdata/`), so a client that works against the simulator sees what it will see
//! in production.

use crate::odata::{Field, Record, Tick};
use bytes::Bytes;
use relay_config::Feed;
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// The product that raised an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// Defender for Endpoint: also served by `/api/alerts`.
    Endpoint,
    /// Defender for Office 365.
    Office,
    /// Defender for Cloud Apps.
    CloudApps,
    /// Defender for Identity.
    Identity,
    /// Defender for Cloud: an evolvable enum member on Graph.
    Cloud,
}

impl Source {
    pub fn xdr(self) -> &'static str {
        match self {
            Source::Endpoint => "MicrosoftDefenderForEndpoint",
            Source::Office => "OfficeATP",
            Source::CloudApps => "MicrosoftCloudAppSecurity",
            Source::Identity => "AzureAdIdentityProtection",
            Source::Cloud => "MicrosoftDefenderForCloud",
        }
    }

    pub fn graph(self) -> &'static str {
        match self {
            Source::Endpoint => "microsoftDefenderForEndpoint",
            Source::Office => "microsoftDefenderForOffice365",
            Source::CloudApps => "microsoftDefenderForCloudApps",
            Source::Identity => "microsoftDefenderForIdentity",
            Source::Cloud => "microsoftDefenderForCloud",
        }
    }

    pub fn product(self) -> &'static str {
        match self {
            Source::Endpoint => "Microsoft Defender for Endpoint",
            Source::Office => "Microsoft Defender for Office 365",
            Source::CloudApps => "Microsoft Defender for Cloud Apps",
            Source::Identity => "Microsoft Defender for Identity",
            Source::Cloud => "Microsoft Defender for Cloud",
        }
    }

    /// The two-letter prefix Graph puts before the provider's alert id.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Source::Endpoint => "da",
            Source::Office => "fa",
            Source::CloudApps => "ca",
            Source::Identity => "aa",
            Source::Cloud => "dc",
        }
    }

    /// (XDR/MDE `detectionSource`, Graph `detectionSource`).
    pub fn detection(self) -> (&'static str, &'static str) {
        match self {
            Source::Endpoint => ("WindowsDefenderAtp", "microsoftDefenderForEndpoint"),
            Source::Office => ("OfficeATP", "microsoftDefenderForOffice365"),
            Source::CloudApps => ("MCAS", "microsoftDefenderForCloudApps"),
            Source::Identity => ("AzureAtp", "microsoftDefenderForIdentity"),
            Source::Cloud => ("AzureSecurityCenter", "microsoftDefenderForCloud"),
        }
    }
}

/// Incident `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncidentStatus {
    Active,
    InProgress,
    Resolved,
    Redirected,
}

impl IncidentStatus {
    pub fn pascal(self) -> &'static str {
        match self {
            IncidentStatus::Active => "Active",
            IncidentStatus::InProgress => "InProgress",
            IncidentStatus::Resolved => "Resolved",
            IncidentStatus::Redirected => "Redirected",
        }
    }
}

/// Alert `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertStatus {
    New,
    InProgress,
    Resolved,
}

impl AlertStatus {
    pub fn pascal(self) -> &'static str {
        match self {
            AlertStatus::New => "New",
            AlertStatus::InProgress => "InProgress",
            AlertStatus::Resolved => "Resolved",
        }
    }
}

/// Severity, PascalCase as XDR/MDE print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    Informational,
    Low,
    Medium,
    High,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Informational,
        Severity::Low,
        Severity::Medium,
        Severity::High,
    ];

    pub fn pascal(self) -> &'static str {
        match self {
            Severity::Informational => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
        }
    }
}

/// Lower-cases the first letter: XDR `TruePositive` is Graph `truePositive`.
pub(crate) fn camel(pascal: &str) -> String {
    let mut c = pascal.chars();
    match c.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Comment {
    pub text: String,
    pub by: String,
    pub at: Tick,
}

#[derive(Debug, Clone)]
pub(crate) struct UserAccount {
    pub account: String,
    pub domain: String,
    pub sid: String,
    pub aad_id: Option<String>,
    pub upn: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    pub sha1: Option<String>,
    pub sha256: Option<String>,
    pub name: String,
    pub path: String,
    pub size: u64,
    pub publisher: Option<String>,
}

// Evidence lives in a few `Vec`s per alert and is only read to render JSON; boxing the
// process variant would add an allocation per item for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum EvidenceKind {
    User(UserAccount),
    Ip {
        address: String,
        country: Option<&'static str>,
    },
    Url {
        url: String,
    },
    File {
        file: FileInfo,
    },
    Process {
        pid: u32,
        ppid: u32,
        cmdline: String,
        created: Tick,
        parent_created: Tick,
        image: FileInfo,
        parent_image: FileInfo,
        user: Option<UserAccount>,
    },
    Registry {
        key: String,
        hive: &'static str,
        value_type: Option<&'static str>,
        value: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    pub created: Tick,
    pub suspicious: bool,
    pub detected: bool,
    pub kind: EvidenceKind,
}

#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub mde_id: String,
    pub aad_id: Option<String>,
    pub dns_name: String,
    pub os_platform: &'static str,
    pub os_build: u32,
    pub version: &'static str,
    pub healthy: bool,
    pub risk: &'static str,
    pub rbac_group_id: u32,
    pub rbac_group_name: Option<String>,
    pub first_seen: Tick,
    pub ips: Vec<String>,
    pub logged_on: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Alert {
    pub id: String,
    pub provider_id: String,
    pub source: Source,
    pub incident: u64,
    pub title: String,
    pub description: String,
    pub recommended_actions: String,
    pub category: &'static str,
    pub severity: Severity,
    pub status: AlertStatus,
    pub classification: Option<&'static str>,
    pub determination: Option<&'static str>,
    pub assigned_to: Option<String>,
    pub detector_id: String,
    pub investigation_id: Option<u64>,
    pub investigation_state: &'static str,
    pub threat_family: Option<String>,
    pub actor: Option<String>,
    pub mitre: Vec<&'static str>,
    pub created: Tick,
    pub first_activity: Tick,
    pub last_activity: Tick,
    pub resolved: Option<Tick>,
    pub last_update: Tick,
    pub device: Option<Device>,
    pub related_user: Option<(String, String)>,
    pub evidence: Vec<Evidence>,
    pub comments: Vec<Comment>,
}

#[derive(Debug, Clone)]
pub(crate) struct Incident {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub created: Tick,
    pub last_update: Tick,
    pub assigned_to: Option<String>,
    pub classification: &'static str,
    pub determination: &'static str,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub redirect: Option<u64>,
    pub tags: Vec<String>,
    pub system_tags: Vec<&'static str>,
    pub comments: Vec<Comment>,
    /// Alert ids, in the order they joined.
    pub alerts: Vec<String>,
}

/// What the query side needs to know about one version without parsing its JSON: the
/// filterable properties.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub last_update: Tick,
    pub created: Tick,
    pub status: &'static str,
    pub severity: &'static str,
    pub assigned_to: Option<String>,
    pub classification: Option<&'static str>,
    pub determination: Option<&'static str>,
    pub source: Source,
    pub incident_id: u64,
}

impl Record for Meta {
    fn time(&self, field: Field) -> Tick {
        match field {
            Field::Created => self.created,
            _ => self.last_update,
        }
    }

    fn text(&self, field: Field) -> Option<&str> {
        match field {
            Field::Status => Some(self.status),
            Field::Severity => Some(self.severity),
            Field::AssignedTo => self.assigned_to.as_deref(),
            Field::Classification => self.classification,
            Field::Determination => self.determination,
            Field::ServiceSource => Some(self.source.graph()),
            _ => None,
        }
    }

    fn number(&self, field: Field) -> Option<i64> {
        match field {
            Field::IncidentId => i64::try_from(self.incident_id).ok(),
            _ => None,
        }
    }
}

/// One version as the store indexes it: a snapshot of the item (shared with the world
/// until the item changes again) and its JSON per shape, rendered the first time a query
/// asks for that shape and then reused. Rendering lazily keeps memory proportional to the
/// shapes clients actually read (a daemon uses one API family), while repeated queries
/// stay a byte copy — which is what makes thousands of requests per second cheap.
#[derive(Debug)]
pub(crate) struct Entry {
    pub meta: Meta,
    /// Holds a value Graph only shows with `Prefer: include-unknown-enum-members`.
    pub evolvable: bool,
    pub tenant_id: Arc<str>,
    pub body: Body,
}

#[derive(Debug)]
pub(crate) enum Body {
    Incident {
        incident: Arc<Incident>,
        /// The incident's alerts as they were when this version was made.
        alerts: Vec<Arc<Alert>>,
        xdr: OnceLock<Bytes>,
        /// The `$expand=alerts` rendering and the length of the object without alerts.
        graph: OnceLock<(Bytes, usize)>,
    },
    Alert {
        alert: Arc<Alert>,
        graph: OnceLock<Bytes>,
        /// The `$expand=evidence` rendering and where its evidence array starts.
        mde: OnceLock<(Bytes, usize)>,
    },
}

impl Entry {
    pub fn incident(
        meta: Meta,
        tenant_id: Arc<str>,
        incident: Arc<Incident>,
        alerts: Vec<Arc<Alert>>,
    ) -> Entry {
        Entry {
            evolvable: alerts.iter().any(|a| a.source == Source::Cloud),
            meta,
            tenant_id,
            body: Body::Incident {
                incident,
                alerts,
                xdr: OnceLock::new(),
                graph: OnceLock::new(),
            },
        }
    }

    pub fn alert(meta: Meta, tenant_id: Arc<str>, alert: Arc<Alert>) -> Entry {
        Entry {
            evolvable: alert.source == Source::Cloud,
            meta,
            tenant_id,
            body: Body::Alert {
                alert,
                graph: OnceLock::new(),
                mde: OnceLock::new(),
            },
        }
    }

    /// Appends the version in `feed`'s shape to `out`; false when `feed` does not serve
    /// this kind of item.
    pub fn write(&self, feed: Feed, expand: bool, out: &mut Vec<u8>) -> bool {
        let tenant = &*self.tenant_id;
        match (&self.body, feed) {
            (
                Body::Incident {
                    incident,
                    alerts,
                    xdr,
                    ..
                },
                Feed::M365dIncidents,
            ) => {
                let b = xdr.get_or_init(|| {
                    let nested: Vec<Bytes> = alerts.iter().map(|a| xdr_alert_json(a)).collect();
                    xdr_incident_json(incident, &nested)
                });
                out.extend_from_slice(b);
            }
            (
                Body::Incident {
                    incident,
                    alerts,
                    graph,
                    ..
                },
                Feed::GraphIncidents,
            ) => {
                let (b, head) = graph.get_or_init(|| {
                    let nested: Vec<Bytes> =
                        alerts.iter().map(|a| graph_alert_json(a, tenant)).collect();
                    let (head, expanded) = graph_incident_json(incident, tenant, &nested);
                    (expanded, head.len())
                });
                if expand {
                    out.extend_from_slice(b);
                } else {
                    out.extend_from_slice(&b[..head - 1]);
                    out.push(b'}');
                }
            }
            (Body::Alert { alert, graph, .. }, Feed::GraphAlerts) => {
                out.extend_from_slice(graph.get_or_init(|| graph_alert_json(alert, tenant)));
            }
            (Body::Alert { alert, mde, .. }, Feed::MdeAlerts)
                if alert.source == Source::Endpoint =>
            {
                let (b, at) = mde.get_or_init(|| {
                    let (plain, expanded) = mde_alert_json(alert, tenant);
                    // `plain` ends in `"evidence":[]}` and equals `expanded` up to the `[`.
                    (expanded, plain.len() - 2)
                });
                if expand {
                    out.extend_from_slice(b);
                } else {
                    out.extend_from_slice(&b[..*at]);
                    out.extend_from_slice(b"]}");
                }
            }
            _ => return false,
        }
        true
    }
}

/// The evolvable Graph enum values and what Graph prints without the `Prefer` header.
pub(crate) const EVOLVABLE: &[(&str, &str)] = &[
    (
        "\":\"microsoftDefenderForCloud\"",
        "\":\"unknownFutureValue\"",
    ),
    ("\":\"awaitingAction\"", "\":\"unknownFutureValue\""),
];

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    // Plain structs of strings and numbers always serialise.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// Shared pieces

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct XdrComment<'a> {
    comment: &'a str,
    created_by: &'a str,
    created_time: Tick,
}

fn xdr_comments(c: &[Comment]) -> Vec<XdrComment<'_>> {
    c.iter()
        .map(|c| XdrComment {
            comment: &c.text,
            created_by: &c.by,
            created_time: c.at,
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphComment<'a> {
    comment: &'a str,
    created_by_display_name: &'a str,
    created_date_time: Tick,
}

fn graph_comments(c: &[Comment]) -> Vec<GraphComment<'_>> {
    c.iter()
        .map(|c| GraphComment {
            comment: &c.text,
            created_by_display_name: &c.by,
            created_date_time: c.at,
        })
        .collect()
}

/// The values behind the flat entity shapes of XDR `entities[]` and MDE `evidence[]`.
#[derive(Default)]
struct FlatValues<'a> {
    entity_type: &'a str,
    sha1: Option<&'a str>,
    sha256: Option<&'a str>,
    file_name: Option<&'a str>,
    file_path: Option<&'a str>,
    process_id: Option<u32>,
    process_command_line: Option<&'a str>,
    process_creation_time: Option<Tick>,
    parent_process_id: Option<u32>,
    parent_process_creation_time: Option<Tick>,
    parent_process_file_name: Option<&'a str>,
    parent_process_file_path: Option<&'a str>,
    ip_address: Option<&'a str>,
    url: Option<&'a str>,
    registry_key: Option<&'a str>,
    registry_hive: Option<&'a str>,
    registry_value_type: Option<&'a str>,
    registry_value: Option<&'a str>,
    account_name: Option<&'a str>,
    domain_name: Option<&'a str>,
    user_sid: Option<&'a str>,
    aad_user_id: Option<&'a str>,
    user_principal_name: Option<&'a str>,
    on_device: bool,
}

fn flat_values(e: &Evidence) -> FlatValues<'_> {
    let mut f = FlatValues::default();
    match &e.kind {
        EvidenceKind::User(u) => {
            f.entity_type = "User";
            f.account_name = Some(&u.account);
            f.domain_name = Some(&u.domain);
            f.user_sid = Some(&u.sid);
            f.aad_user_id = u.aad_id.as_deref();
            f.user_principal_name = u.upn.as_deref();
        }
        EvidenceKind::Ip { address, .. } => {
            f.entity_type = "Ip";
            f.ip_address = Some(address);
        }
        EvidenceKind::Url { url } => {
            f.entity_type = "Url";
            f.url = Some(url);
        }
        EvidenceKind::File { file } => {
            f.entity_type = "File";
            f.sha1 = file.sha1.as_deref();
            f.sha256 = file.sha256.as_deref();
            f.file_name = Some(&file.name);
            f.file_path = Some(&file.path);
            f.on_device = true;
        }
        EvidenceKind::Process {
            pid,
            ppid,
            cmdline,
            created,
            parent_created,
            image,
            parent_image,
            ..
        } => {
            f.entity_type = "Process";
            f.sha1 = image.sha1.as_deref();
            f.sha256 = image.sha256.as_deref();
            f.file_name = Some(&image.name);
            f.file_path = Some(&image.path);
            f.process_id = Some(*pid);
            f.process_command_line = Some(cmdline);
            f.process_creation_time = Some(*created);
            f.parent_process_id = Some(*ppid);
            f.parent_process_creation_time = Some(*parent_created);
            f.parent_process_file_name = Some(&parent_image.name);
            f.parent_process_file_path = Some(&parent_image.path);
            f.on_device = true;
        }
        EvidenceKind::Registry {
            key,
            hive,
            value_type,
            value,
        } => {
            f.entity_type = "Registry";
            f.registry_key = Some(key);
            f.registry_hive = Some(hive);
            f.registry_value_type = *value_type;
            f.registry_value = value.as_deref();
            f.on_device = true;
        }
    }
    f
}

/// MDE `evidence[]` item: the 25 keys of the doc, in its order, all always present.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MdeEvidence<'a> {
    entity_type: &'a str,
    evidence_creation_time: Tick,
    sha1: Option<&'a str>,
    sha256: Option<&'a str>,
    file_name: Option<&'a str>,
    file_path: Option<&'a str>,
    process_id: Option<u32>,
    process_command_line: Option<&'a str>,
    process_creation_time: Option<Tick>,
    parent_process_id: Option<u32>,
    parent_process_creation_time: Option<Tick>,
    parent_process_file_name: Option<&'a str>,
    parent_process_file_path: Option<&'a str>,
    ip_address: Option<&'a str>,
    url: Option<&'a str>,
    registry_key: Option<&'a str>,
    registry_hive: Option<&'a str>,
    registry_value_type: Option<&'a str>,
    registry_value: Option<&'a str>,
    account_name: Option<&'a str>,
    domain_name: Option<&'a str>,
    user_sid: Option<&'a str>,
    aad_user_id: Option<&'a str>,
    user_principal_name: Option<&'a str>,
    detection_status: Option<&'a str>,
}

fn mde_evidence(e: &Evidence) -> MdeEvidence<'_> {
    let f = flat_values(e);
    MdeEvidence {
        entity_type: f.entity_type,
        evidence_creation_time: e.created,
        sha1: f.sha1,
        sha256: f.sha256,
        file_name: f.file_name,
        file_path: f.file_path,
        process_id: f.process_id,
        process_command_line: f.process_command_line,
        process_creation_time: f.process_creation_time,
        parent_process_id: f.parent_process_id,
        parent_process_creation_time: f.parent_process_creation_time,
        parent_process_file_name: f.parent_process_file_name,
        parent_process_file_path: f.parent_process_file_path,
        ip_address: f.ip_address,
        url: f.url,
        registry_key: f.registry_key,
        registry_hive: f.registry_hive,
        registry_value_type: f.registry_value_type,
        registry_value: f.registry_value,
        account_name: f.account_name,
        domain_name: f.domain_name,
        user_sid: f.user_sid,
        aad_user_id: f.aad_user_id,
        user_principal_name: f.user_principal_name,
        detection_status: match (&e.kind, e.detected) {
            (EvidenceKind::User(_), _) => None,
            (_, true) => Some("Detected"),
            (_, false) => Some("Prevented"),
        },
    }
}

/// XDR `entities[]` item: the 31 keys of the doc, in its order, all always present.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct XdrEntity<'a> {
    entity_type: &'a str,
    sha1: Option<&'a str>,
    sha256: Option<&'a str>,
    file_name: Option<&'a str>,
    file_path: Option<&'a str>,
    process_id: Option<u32>,
    process_command_line: Option<&'a str>,
    process_creation_time: Option<Tick>,
    parent_process_id: Option<u32>,
    parent_process_creation_time: Option<Tick>,
    ip_address: Option<&'a str>,
    url: Option<&'a str>,
    account_name: Option<&'a str>,
    domain_name: Option<&'a str>,
    user_sid: Option<&'a str>,
    aad_user_id: Option<&'a str>,
    user_principal_name: Option<&'a str>,
    mailbox_display_name: Option<&'a str>,
    mailbox_address: Option<&'a str>,
    cluster_by: Option<&'a str>,
    sender: Option<&'a str>,
    recipient: Option<&'a str>,
    subject: Option<&'a str>,
    delivery_action: Option<&'a str>,
    security_group_id: Option<&'a str>,
    security_group_name: Option<&'a str>,
    registry_hive: Option<&'a str>,
    registry_key: Option<&'a str>,
    registry_value_type: Option<&'a str>,
    registry_value: Option<&'a str>,
    device_id: Option<&'a str>,
}

fn xdr_entity<'a>(e: &'a Evidence, device_id: Option<&'a str>) -> XdrEntity<'a> {
    let f = flat_values(e);
    XdrEntity {
        entity_type: f.entity_type,
        sha1: f.sha1,
        sha256: f.sha256,
        file_name: f.file_name,
        file_path: f.file_path,
        process_id: f.process_id,
        process_command_line: f.process_command_line,
        process_creation_time: f.process_creation_time,
        parent_process_id: f.parent_process_id,
        parent_process_creation_time: f.parent_process_creation_time,
        ip_address: f.ip_address,
        url: f.url,
        account_name: f.account_name,
        domain_name: f.domain_name,
        user_sid: f.user_sid,
        aad_user_id: f.aad_user_id,
        user_principal_name: f.user_principal_name,
        mailbox_display_name: None,
        mailbox_address: None,
        cluster_by: None,
        sender: None,
        recipient: None,
        subject: None,
        delivery_action: None,
        security_group_id: None,
        security_group_name: None,
        registry_hive: f.registry_hive,
        registry_key: f.registry_key,
        registry_value_type: f.registry_value_type,
        registry_value: f.registry_value,
        device_id: if f.on_device { device_id } else { None },
    }
}

// ---------------------------------------------------------------------------------------
// XDR (M365 Defender) shapes

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct XdrDevice<'a> {
    mdatp_device_id: &'a str,
    aad_device_id: Option<&'a str>,
    device_dns_name: &'a str,
    os_platform: &'a str,
    version: &'a str,
    os_processor: &'a str,
    os_build: u32,
    health_status: &'a str,
    risk_score: &'a str,
    rbac_group_name: Option<&'a str>,
    rbac_group_id: u32,
    first_seen: Tick,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct XdrAlert<'a> {
    alert_id: &'a str,
    incident_id: u64,
    service_source: &'a str,
    creation_time: Tick,
    last_updated_time: Tick,
    resolved_time: Option<Tick>,
    first_activity: Tick,
    last_activity: Tick,
    title: &'a str,
    description: &'a str,
    category: &'a str,
    status: &'a str,
    severity: &'a str,
    investigation_id: Option<u64>,
    investigation_state: &'a str,
    classification: Option<&'a str>,
    determination: Option<&'a str>,
    detection_source: &'a str,
    detector_id: &'a str,
    assigned_to: Option<&'a str>,
    actor_name: Option<&'a str>,
    threat_family_name: Option<&'a str>,
    mitre_techniques: &'a [&'a str],
    devices: Vec<XdrDevice<'a>>,
    entities: Vec<XdrEntity<'a>>,
}

/// The alert as nested in an M365 Defender incident.
pub(crate) fn xdr_alert_json(a: &Alert) -> Bytes {
    let device_id = a.device.as_ref().map(|d| d.mde_id.as_str());
    let x = XdrAlert {
        alert_id: &a.id,
        incident_id: a.incident,
        service_source: a.source.xdr(),
        creation_time: a.created,
        last_updated_time: a.last_update,
        resolved_time: a.resolved,
        first_activity: a.first_activity,
        last_activity: a.last_activity,
        title: &a.title,
        description: &a.description,
        category: a.category,
        status: a.status.pascal(),
        severity: a.severity.pascal(),
        investigation_id: a.investigation_id,
        investigation_state: a.investigation_state,
        classification: a.classification,
        determination: a.determination,
        detection_source: a.source.detection().0,
        detector_id: &a.detector_id,
        assigned_to: a.assigned_to.as_deref(),
        actor_name: a.actor.as_deref(),
        threat_family_name: a.threat_family.as_deref(),
        mitre_techniques: &a.mitre,
        devices: a
            .device
            .iter()
            .map(|d| XdrDevice {
                mdatp_device_id: &d.mde_id,
                aad_device_id: d.aad_id.as_deref(),
                device_dns_name: &d.dns_name,
                os_platform: d.os_platform,
                version: d.version,
                os_processor: "x64",
                os_build: d.os_build,
                health_status: if d.healthy { "Active" } else { "Inactive" },
                risk_score: d.risk,
                rbac_group_name: d.rbac_group_name.as_deref(),
                rbac_group_id: d.rbac_group_id,
                first_seen: d.first_seen,
            })
            .collect(),
        entities: a
            .evidence
            .iter()
            .map(|e| xdr_entity(e, device_id))
            .collect(),
    };
    to_bytes(&x)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct XdrIncidentHead<'a> {
    incident_id: u64,
    redirect_incident_id: Option<u64>,
    incident_name: &'a str,
    created_time: Tick,
    last_update_time: Tick,
    assigned_to: Option<&'a str>,
    classification: &'a str,
    determination: &'a str,
    status: &'a str,
    severity: &'a str,
    tags: &'a [String],
    comments: Vec<XdrComment<'a>>,
}

/// Splices pre-rendered objects into `head` (a rendered object) as `"key":[...]`.
fn splice_array(head: &[u8], key: &str, items: &[Bytes]) -> Bytes {
    let total: usize =
        items.iter().map(|b| b.len() + 1).sum::<usize>() + head.len() + key.len() + 8;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// The M365 Defender incident with its alerts (`alerts_xdr`: their nested renderings).
pub(crate) fn xdr_incident_json(i: &Incident, alerts_xdr: &[Bytes]) -> Bytes {
    let head = to_bytes(&XdrIncidentHead {
        incident_id: i.id,
        redirect_incident_id: i.redirect,
        incident_name: &i.name,
        created_time: i.created,
        last_update_time: i.last_update,
        assigned_to: i.assigned_to.as_deref(),
        classification: i.classification,
        determination: i.determination,
        status: i.status.pascal(),
        severity: i.severity.pascal(),
        tags: &i.tags,
        comments: xdr_comments(&i.comments),
    });
    splice_array(&head, "alerts", alerts_xdr)
}

// ---------------------------------------------------------------------------------------
// Defender for Endpoint `/api/alerts`

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RelatedUser<'a> {
    user_name: &'a str,
    domain_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MdeAlert<'a> {
    id: &'a str,
    incident_id: u64,
    investigation_id: Option<u64>,
    assigned_to: Option<&'a str>,
    severity: &'a str,
    status: &'a str,
    classification: Option<&'a str>,
    determination: Option<&'a str>,
    investigation_state: &'a str,
    detection_source: &'a str,
    detector_id: &'a str,
    category: &'a str,
    threat_family_name: Option<&'a str>,
    title: &'a str,
    description: &'a str,
    alert_creation_time: Tick,
    first_event_time: Tick,
    last_event_time: Tick,
    last_update_time: Tick,
    resolved_time: Option<Tick>,
    machine_id: Option<&'a str>,
    computer_dns_name: Option<&'a str>,
    rbac_group_name: Option<&'a str>,
    aad_tenant_id: &'a str,
    threat_name: Option<&'a str>,
    mitre_techniques: &'a [&'a str],
    related_user: Option<RelatedUser<'a>>,
    comments: Vec<XdrComment<'a>>,
    evidence: Vec<MdeEvidence<'a>>,
}

/// `/api/alerts` renderings: (without `$expand=evidence`, with it).
pub(crate) fn mde_alert_json(a: &Alert, tenant_id: &str) -> (Bytes, Bytes) {
    let mut m = MdeAlert {
        id: &a.id,
        incident_id: a.incident,
        investigation_id: a.investigation_id,
        assigned_to: a.assigned_to.as_deref(),
        severity: a.severity.pascal(),
        status: a.status.pascal(),
        classification: a.classification,
        determination: a.determination,
        investigation_state: a.investigation_state,
        detection_source: a.source.detection().0,
        detector_id: &a.detector_id,
        category: a.category,
        threat_family_name: a.threat_family.as_deref(),
        title: &a.title,
        description: &a.description,
        alert_creation_time: a.created,
        first_event_time: a.first_activity,
        last_event_time: a.last_activity,
        last_update_time: a.last_update,
        resolved_time: a.resolved,
        machine_id: a.device.as_ref().map(|d| d.mde_id.as_str()),
        computer_dns_name: a.device.as_ref().map(|d| d.dns_name.as_str()),
        rbac_group_name: a.device.as_ref().and_then(|d| d.rbac_group_name.as_deref()),
        aad_tenant_id: tenant_id,
        threat_name: a.threat_family.as_deref(),
        mitre_techniques: &a.mitre,
        related_user: a.related_user.as_ref().map(|(u, d)| RelatedUser {
            user_name: u,
            domain_name: d,
        }),
        comments: xdr_comments(&a.comments),
        evidence: Vec::new(),
    };
    let plain = to_bytes(&m);
    m.evidence = a.evidence.iter().map(mde_evidence).collect();
    (plain, to_bytes(&m))
}

// ---------------------------------------------------------------------------------------
// Graph shapes

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphUserAccount<'a> {
    account_name: &'a str,
    domain_name: &'a str,
    user_sid: &'a str,
    azure_ad_user_id: Option<&'a str>,
    user_principal_name: Option<&'a str>,
    display_name: Option<&'a str>,
}

fn graph_user(u: &UserAccount) -> GraphUserAccount<'_> {
    GraphUserAccount {
        account_name: &u.account,
        domain_name: &u.domain,
        user_sid: &u.sid,
        azure_ad_user_id: u.aad_id.as_deref(),
        user_principal_name: u.upn.as_deref(),
        display_name: None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphFile<'a> {
    sha1: Option<&'a str>,
    sha256: Option<&'a str>,
    file_name: &'a str,
    file_path: &'a str,
    file_size: u64,
    file_publisher: Option<&'a str>,
    signer: Option<&'a str>,
    issuer: Option<&'a str>,
}

fn graph_file(f: &FileInfo) -> GraphFile<'_> {
    GraphFile {
        sha1: f.sha1.as_deref(),
        sha256: f.sha256.as_deref(),
        file_name: &f.name,
        file_path: &f.path,
        file_size: f.size,
        file_publisher: f.publisher.as_deref(),
        signer: None,
        issuer: None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvidenceHead<'a> {
    #[serde(rename = "@odata.type")]
    odata_type: &'a str,
    created_date_time: Tick,
    verdict: &'a str,
    remediation_status: &'a str,
    remediation_status_details: Option<&'a str>,
    roles: Vec<&'a str>,
    detailed_roles: Vec<&'a str>,
    tags: Vec<&'a str>,
    #[serde(flatten)]
    body: GraphEvidenceBody<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum GraphEvidenceBody<'a> {
    Device(GraphDevice<'a>),
    User {
        #[serde(rename = "userAccount")]
        user_account: GraphUserAccount<'a>,
    },
    Url {
        url: &'a str,
    },
    Ip {
        #[serde(rename = "ipAddress")]
        ip_address: &'a str,
        #[serde(rename = "countryLetterCode")]
        country_letter_code: Option<&'a str>,
    },
    File {
        #[serde(rename = "detectionStatus")]
        detection_status: &'a str,
        #[serde(rename = "mdeDeviceId")]
        mde_device_id: Option<&'a str>,
        #[serde(rename = "fileDetails")]
        file_details: GraphFile<'a>,
    },
    Process(GraphProcess<'a>),
    Registry {
        #[serde(rename = "registryKey")]
        registry_key: &'a str,
        #[serde(rename = "registryHive")]
        registry_hive: &'a str,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphDevice<'a> {
    first_seen_date_time: Tick,
    mde_device_id: &'a str,
    azure_ad_device_id: Option<&'a str>,
    device_dns_name: &'a str,
    os_platform: &'a str,
    os_build: u32,
    version: &'a str,
    health_status: &'a str,
    risk_score: String,
    rbac_group_id: u32,
    rbac_group_name: Option<&'a str>,
    onboarding_status: &'a str,
    defender_av_status: &'a str,
    ip_interfaces: &'a [String],
    vm_metadata: Option<()>,
    logged_on_users: Vec<LoggedOn<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoggedOn<'a> {
    account_name: &'a str,
    domain_name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphProcess<'a> {
    process_id: u32,
    parent_process_id: u32,
    process_command_line: &'a str,
    process_creation_date_time: Tick,
    parent_process_creation_date_time: Tick,
    detection_status: &'a str,
    mde_device_id: Option<&'a str>,
    image_file: GraphFile<'a>,
    parent_process_image_file: GraphFile<'a>,
    user_account: Option<GraphUserAccount<'a>>,
}

fn graph_evidence<'a>(a: &'a Alert) -> Vec<EvidenceHead<'a>> {
    let mde_device = a.device.as_ref().map(|d| d.mde_id.as_str());
    let mut out = Vec::with_capacity(a.evidence.len() + 1);
    if let Some(d) = &a.device {
        out.push(EvidenceHead {
            odata_type: "#microsoft.graph.security.deviceEvidence",
            created_date_time: a.created,
            verdict: "unknown",
            remediation_status: "none",
            remediation_status_details: None,
            roles: Vec::new(),
            detailed_roles: vec!["PrimaryDevice"],
            tags: Vec::new(),
            body: GraphEvidenceBody::Device(GraphDevice {
                first_seen_date_time: d.first_seen,
                mde_device_id: &d.mde_id,
                azure_ad_device_id: d.aad_id.as_deref(),
                device_dns_name: &d.dns_name,
                os_platform: d.os_platform,
                os_build: d.os_build,
                version: d.version,
                health_status: if d.healthy { "active" } else { "inactive" },
                risk_score: camel(d.risk),
                rbac_group_id: d.rbac_group_id,
                rbac_group_name: d.rbac_group_name.as_deref(),
                onboarding_status: "onboarded",
                defender_av_status: "notSupported",
                ip_interfaces: &d.ips,
                vm_metadata: None,
                logged_on_users: d
                    .logged_on
                    .iter()
                    .map(|(a, d)| LoggedOn {
                        account_name: a,
                        domain_name: d,
                    })
                    .collect(),
            }),
        });
    }
    for e in &a.evidence {
        let detection = if e.detected { "detected" } else { "prevented" };
        let (odata_type, body) = match &e.kind {
            EvidenceKind::User(u) => (
                "#microsoft.graph.security.userEvidence",
                GraphEvidenceBody::User {
                    user_account: graph_user(u),
                },
            ),
            EvidenceKind::Ip { address, country } => (
                "#microsoft.graph.security.ipEvidence",
                GraphEvidenceBody::Ip {
                    ip_address: address,
                    country_letter_code: *country,
                },
            ),
            EvidenceKind::Url { url } => (
                "#microsoft.graph.security.urlEvidence",
                GraphEvidenceBody::Url { url },
            ),
            EvidenceKind::File { file } => (
                "#microsoft.graph.security.fileEvidence",
                GraphEvidenceBody::File {
                    detection_status: detection,
                    mde_device_id: mde_device,
                    file_details: graph_file(file),
                },
            ),
            EvidenceKind::Process {
                pid,
                ppid,
                cmdline,
                created,
                parent_created,
                image,
                parent_image,
                user,
            } => (
                "#microsoft.graph.security.processEvidence",
                GraphEvidenceBody::Process(GraphProcess {
                    process_id: *pid,
                    parent_process_id: *ppid,
                    process_command_line: cmdline,
                    process_creation_date_time: *created,
                    parent_process_creation_date_time: *parent_created,
                    detection_status: detection,
                    mde_device_id: mde_device,
                    image_file: graph_file(image),
                    parent_process_image_file: graph_file(parent_image),
                    user_account: user.as_ref().map(graph_user),
                }),
            ),
            EvidenceKind::Registry { key, hive, .. } => (
                "#microsoft.graph.security.registryKeyEvidence",
                GraphEvidenceBody::Registry {
                    registry_key: key,
                    registry_hive: hive,
                },
            ),
        };
        out.push(EvidenceHead {
            odata_type,
            created_date_time: e.created,
            verdict: if e.suspicious {
                "suspicious"
            } else {
                "unknown"
            },
            remediation_status: "none",
            remediation_status_details: None,
            roles: Vec::new(),
            detailed_roles: Vec::new(),
            tags: Vec::new(),
            body,
        });
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphAlert<'a> {
    #[serde(rename = "@odata.type")]
    odata_type: &'a str,
    id: &'a str,
    provider_alert_id: &'a str,
    incident_id: String,
    status: String,
    severity: String,
    classification: Option<String>,
    determination: Option<String>,
    service_source: &'a str,
    detection_source: &'a str,
    product_name: &'a str,
    detector_id: &'a str,
    tenant_id: &'a str,
    title: &'a str,
    description: &'a str,
    recommended_actions: &'a str,
    category: &'a str,
    assigned_to: Option<&'a str>,
    alert_web_url: String,
    incident_web_url: String,
    actor_display_name: Option<&'a str>,
    threat_display_name: Option<&'a str>,
    threat_family_name: Option<&'a str>,
    mitre_techniques: &'a [&'a str],
    created_date_time: Tick,
    last_update_date_time: Tick,
    resolved_date_time: Option<Tick>,
    first_activity_date_time: Tick,
    last_activity_date_time: Tick,
    alert_policy_id: Option<&'a str>,
    additional_data: Option<()>,
    system_tags: Vec<&'a str>,
    comments: Vec<GraphComment<'a>>,
    evidence: Vec<EvidenceHead<'a>>,
}

/// The alerts_v2 alert (also the nested form of `$expand=alerts`).
pub(crate) fn graph_alert_json(a: &Alert, tenant_id: &str) -> Bytes {
    let g = GraphAlert {
        odata_type: "#microsoft.graph.security.alert",
        id: &a.id,
        provider_alert_id: &a.provider_id,
        incident_id: a.incident.to_string(),
        status: camel(a.status.pascal()),
        severity: camel(a.severity.pascal()),
        classification: a.classification.map(camel),
        determination: a.determination.map(camel),
        service_source: a.source.graph(),
        detection_source: a.source.detection().1,
        product_name: a.source.product(),
        detector_id: &a.detector_id,
        tenant_id,
        title: &a.title,
        description: &a.description,
        recommended_actions: &a.recommended_actions,
        category: a.category,
        assigned_to: a.assigned_to.as_deref(),
        alert_web_url: format!(
            "https://security.microsoft.com/alerts/{}?tid={tenant_id}",
            a.id
        ),
        incident_web_url: format!(
            "https://security.microsoft.com/incidents/{}?tid={tenant_id}",
            a.incident
        ),
        actor_display_name: a.actor.as_deref(),
        threat_display_name: a.threat_family.as_deref(),
        threat_family_name: a.threat_family.as_deref(),
        mitre_techniques: &a.mitre,
        created_date_time: a.created,
        last_update_date_time: a.last_update,
        resolved_date_time: a.resolved,
        first_activity_date_time: a.first_activity,
        last_activity_date_time: a.last_activity,
        alert_policy_id: None,
        additional_data: None,
        system_tags: Vec::new(),
        comments: graph_comments(&a.comments),
        evidence: graph_evidence(a),
    };
    to_bytes(&g)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphIncidentHead<'a> {
    #[serde(rename = "@odata.type")]
    odata_type: &'a str,
    id: String,
    incident_web_url: String,
    redirect_incident_id: Option<String>,
    tenant_id: &'a str,
    display_name: &'a str,
    created_date_time: Tick,
    last_update_date_time: Tick,
    assigned_to: Option<&'a str>,
    classification: String,
    determination: String,
    status: String,
    severity: String,
    custom_tags: &'a [String],
    system_tags: &'a [&'a str],
    description: &'a str,
    comments: Vec<GraphComment<'a>>,
}

/// Graph incident renderings: (without alerts, with `$expand=alerts`).
pub(crate) fn graph_incident_json(
    i: &Incident,
    tenant_id: &str,
    alerts_graph: &[Bytes],
) -> (Bytes, Bytes) {
    let head = to_bytes(&GraphIncidentHead {
        odata_type: "#microsoft.graph.security.incident",
        id: i.id.to_string(),
        incident_web_url: format!(
            "https://security.microsoft.com/incidents/{}?tid={tenant_id}",
            i.id
        ),
        redirect_incident_id: i.redirect.map(|r| r.to_string()),
        tenant_id,
        display_name: &i.name,
        created_date_time: i.created,
        last_update_date_time: i.last_update,
        assigned_to: i.assigned_to.as_deref(),
        classification: camel(i.classification),
        determination: camel(i.determination),
        status: camel(i.status.pascal()),
        severity: camel(i.severity.pascal()),
        custom_tags: &i.tags,
        system_tags: &i.system_tags,
        description: &i.description,
        comments: graph_comments(&i.comments),
    });
    let expanded = splice_array(&head, "alerts", alerts_graph);
    (head, expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::odata::parse_datetime;

    fn t(s: &str) -> Tick {
        parse_datetime(s).unwrap()
    }

    fn user() -> UserAccount {
        UserAccount {
            account: "name".into(),
            domain: "DOMAIN".into(),
            sid: "S-1-5-21-1".into(),
            aad_id: Some("11118379-2a59-1111-ac3c-a51eb4a3c627".into()),
            upn: Some("temp123@microsoft.com".into()),
        }
    }

    fn file(name: &str) -> FileInfo {
        FileInfo {
            sha1: Some("ff836cfb1af40252bd2a2ea843032e99a5b262ed".into()),
            sha256: None,
            name: name.into(),
            path: "C:\\Windows\\SysWOW64".into(),
            size: 10,
            publisher: None,
        }
    }

    fn alert() -> Alert {
        Alert {
            id: "da637472900382838869_1364969609".into(),
            provider_id: "637472900382838869_1364969609".into(),
            source: Source::Endpoint,
            incident: 1126093,
            title: "Low-reputation arbitrary code executed by signed executable".into(),
            description: "d".into(),
            recommended_actions: "r".into(),
            category: "Execution",
            severity: Severity::Low,
            status: AlertStatus::New,
            classification: None,
            determination: None,
            assigned_to: None,
            detector_id: "17e10bbc-3a68-474a-8aad-faef14d43952".into(),
            investigation_id: None,
            investigation_state: "Queued",
            threat_family: None,
            actor: None,
            mitre: vec!["T1064"],
            created: t("2021-01-26T20:33:57.7220239Z"),
            first_activity: t("2021-01-26T20:31:32.9562661Z"),
            last_activity: t("2021-01-26T20:31:33.0577322Z"),
            resolved: None,
            last_update: t("2021-01-26T20:33:59.2Z"),
            device: Some(Device {
                mde_id: "111e6dd8c833c8a052ea231ec1b19adaf497b625".into(),
                aad_id: None,
                dns_name: "temp123.middleeast.corp.microsoft.com".into(),
                os_platform: "Windows10",
                os_build: 19045,
                version: "22H2",
                healthy: true,
                risk: "High",
                rbac_group_id: 9,
                rbac_group_name: Some("A".into()),
                first_seen: t("2020-02-06T14:16:01.9330135Z"),
                ips: vec!["10.0.0.1".into()],
                logged_on: vec![("temp123".into(), "DOMAIN".into())],
            }),
            related_user: Some(("temp123".into(), "DOMAIN".into())),
            evidence: vec![
                Evidence {
                    created: t("2021-01-26T20:33:58.42Z"),
                    suspicious: false,
                    detected: false,
                    kind: EvidenceKind::User(user()),
                },
                Evidence {
                    created: t("2021-01-26T20:33:58.6133333Z"),
                    suspicious: true,
                    detected: true,
                    kind: EvidenceKind::Process {
                        pid: 3276,
                        ppid: 8420,
                        cmdline: "rundll32.exe  c:\\temp\\suspicious.dll,RepeatAfterMe".into(),
                        created: t("2021-01-26T20:31:32.9581596Z"),
                        parent_created: t("2021-01-26T20:31:32.9004163Z"),
                        image: file("rundll32.exe"),
                        parent_image: file("rundll32.exe"),
                        user: Some(user()),
                    },
                },
                Evidence {
                    created: t("2021-01-26T20:33:58.42Z"),
                    suspicious: false,
                    detected: true,
                    kind: EvidenceKind::Registry {
                        key: "SYSTEM\\X".into(),
                        hive: "HKEY_LOCAL_MACHINE",
                        value_type: None,
                        value: None,
                    },
                },
            ],
            comments: vec![Comment {
                text: "test comment for docs".into(),
                by: "secop123@contoso.com".into(),
                at: t("2021-01-26T01:00:37.8404534Z"),
            }],
        }
    }

    /// The keys of the object at `path` inside the JSON text `raw`, in document order
    /// (`serde_json::Value` sorts keys, so it cannot check order).
    fn keys_at(raw: &str, path: &[&str]) -> Vec<String> {
        use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
        use serde_json::value::RawValue;
        let mut cur: &RawValue = serde_json::from_str(raw).unwrap();
        for step in path {
            cur = match step.parse::<usize>() {
                Ok(i) => serde_json::from_str::<Vec<&RawValue>>(cur.get()).unwrap()[i],
                Err(_) => {
                    serde_json::from_str::<std::collections::HashMap<&str, &RawValue>>(cur.get())
                        .unwrap()[step]
                }
            };
        }
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    out.push(k);
                }
                Ok(out)
            }
        }
        let mut de = serde_json::Deserializer::from_str(cur.get());
        (&mut de).deserialize_map(Keys).unwrap()
    }

    fn sample(name: &str) -> String {
        // Copies of shared/samples (Microsoft documentation payloads), so the crate's tests
        // do not depend on a folder outside the repository.
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    fn without(mut keys: Vec<String>, drop: &[&str]) -> Vec<String> {
        keys.retain(|k| !drop.contains(&k.as_str()));
        keys
    }

    fn only(keys: Vec<String>, of: &[String]) -> Vec<String> {
        keys.into_iter().filter(|k| of.contains(k)).collect()
    }

    #[test]
    fn mde_alert_keys_in_the_documented_order() {
        let (plain, expanded) = mde_alert_json(&alert(), "a839b112-1253-6432-9bf6-94542403f21c");
        let raw = std::str::from_utf8(&expanded).unwrap();
        let doc = sample("mde-alerts-expand-evidence-1.json");
        assert_eq!(keys_at(raw, &[]), keys_at(&doc, &["value", "0"]));
        for i in ["0", "1", "2"] {
            assert_eq!(
                keys_at(raw, &["evidence", i]),
                keys_at(&doc, &["value", "0", "evidence", "1"])
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&expanded).unwrap();
        assert_eq!(v["evidence"][1]["entityType"], "Process");
        assert_eq!(v["evidence"][1]["parentProcessFileName"], "rundll32.exe");
        assert_eq!(v["evidence"][2]["registryHive"], "HKEY_LOCAL_MACHINE");
        assert_eq!(v["evidence"][0]["detectionStatus"], serde_json::Value::Null);
        assert_eq!(v["lastUpdateTime"], "2021-01-26T20:33:59.2Z");
        let p: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(p["evidence"], serde_json::json!([]));
    }

    #[test]
    fn xdr_incident_keys_in_the_documented_order() {
        let a = alert();
        let nested = xdr_alert_json(&a);
        let inc = Incident {
            id: 924521,
            name: "n".into(),
            description: "d".into(),
            created: a.created,
            last_update: a.last_update,
            assigned_to: None,
            classification: "Unknown",
            determination: "NotAvailable",
            status: IncidentStatus::Active,
            severity: Severity::Low,
            redirect: None,
            tags: vec![],
            system_tags: vec![],
            comments: vec![],
            alerts: vec![a.id.clone()],
        };
        let out = xdr_incident_json(&inc, &[nested]);
        let raw = std::str::from_utf8(&out).unwrap();
        let doc = sample("m365d-incidents-list-1.json");
        let d = ["value", "1"];
        assert_eq!(keys_at(raw, &[]), keys_at(&doc, &d));
        assert_eq!(
            without(keys_at(raw, &["alerts", "0"]), &["detectorId"]),
            keys_at(&doc, &["value", "1", "alerts", "0"])
        );
        assert_eq!(
            keys_at(raw, &["alerts", "0", "devices", "0"]),
            keys_at(&doc, &["value", "1", "alerts", "0", "devices", "0"])
        );
        for i in ["0", "1", "2"] {
            assert_eq!(
                keys_at(raw, &["alerts", "0", "entities", i]),
                keys_at(&doc, &["value", "1", "alerts", "0", "entities", "0"])
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["incidentId"], 924521);
        assert_eq!(
            v["alerts"][0]["entities"][1]["deviceId"],
            "111e6dd8c833c8a052ea231ec1b19adaf497b625"
        );
        assert_eq!(
            v["alerts"][0]["entities"][0]["deviceId"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["alerts"][0]["entities"][2]["registryHive"],
            "HKEY_LOCAL_MACHINE"
        );
    }

    #[test]
    fn graph_alert_keys_in_the_observed_order() {
        let a = alert();
        let g = graph_alert_json(&a, "3adb963c-8e61-48e8-a06d-6dbb0dacea39");
        let raw = std::str::from_utf8(&g).unwrap();
        let doc = sample("graph-alerts_v2-1.json");
        let want = keys_at(&doc, &["value", "0"]);
        assert_eq!(
            only(keys_at(raw, &[]), &want),
            want,
            "same order for the shared keys"
        );
        // (ours, sample): device, user, process evidence.
        for (ours, theirs) in [("0", "0"), ("1", "1"), ("2", "4")] {
            let want = keys_at(&doc, &["value", "0", "evidence", theirs]);
            assert_eq!(keys_at(raw, &["evidence", ours]), want, "evidence {ours}");
        }
        assert_eq!(
            keys_at(raw, &["evidence", "1", "userAccount"]),
            keys_at(&doc, &["value", "0", "evidence", "1", "userAccount"])
        );
    }

    #[test]
    fn graph_shapes_carry_camel_case_and_string_ids() {
        let a = alert();
        let g = graph_alert_json(&a, "3adb963c-8e61-48e8-a06d-6dbb0dacea39");
        let v: serde_json::Value = serde_json::from_slice(&g).unwrap();
        assert_eq!(v["incidentId"], "1126093");
        assert_eq!(v["status"], "new");
        assert_eq!(
            v["evidence"][0]["@odata.type"],
            "#microsoft.graph.security.deviceEvidence"
        );
        assert_eq!(v["evidence"][0]["riskScore"], "high");
        assert_eq!(v["evidence"][2]["processId"], 3276);
        let inc = Incident {
            id: 2972395,
            name: "n".into(),
            description: "d".into(),
            created: a.created,
            last_update: a.last_update,
            assigned_to: None,
            classification: "TruePositive",
            determination: "MultiStagedAttack",
            status: IncidentStatus::InProgress,
            severity: Severity::Medium,
            redirect: Some(5),
            tags: vec!["Demo".into()],
            system_tags: vec!["Defender Experts"],
            comments: vec![],
            alerts: vec![],
        };
        let (plain, expanded) = graph_incident_json(&inc, "t", &[g]);
        let p: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(p.get("alerts").is_none());
        assert_eq!(p["id"], "2972395");
        assert_eq!(p["redirectIncidentId"], "5");
        assert_eq!(p["classification"], "truePositive");
        assert_eq!(p["status"], "inProgress");
        let e: serde_json::Value = serde_json::from_slice(&expanded).unwrap();
        assert_eq!(e["alerts"][0]["id"], a.id.as_str());
    }
}
