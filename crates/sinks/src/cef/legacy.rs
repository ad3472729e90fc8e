//! The mapping as it was before `doc.rs`: it reads a `serde_json::Value` of the whole
//! document. Kept, unchanged, as the reference that `differential.rs` holds the typed
//! mapping to, byte for byte.

use super::{
    default_product, escape_header, severity_number, truncate_chars, CefOptions, Extension,
    NAME_MAX, SIGNATURE_MAX, VENDOR_MAX, VERSION_MAX,
};
use crate::event::Event;
use chrono::{DateTime, Utc};
use relay_config::Feed;
use serde_json::Value;
use std::borrow::Cow;
use std::net::IpAddr;

// Dictionary lengths (characters) of the keys written here; `cs*` hold 4000, most strings
// 1023, domains and hashes 255, `externalId` only 40.
const MSG_MAX: usize = 1023;
const STR_MAX: usize = 1023;
const DOMAIN_MAX: usize = 255;
const HASH_MAX: usize = 255;
const CS_MAX: usize = 4000;
const FLEX_MAX: usize = 1023;
const FLEX_LABEL_MAX: usize = 128;
const EXTERNAL_ID_MAX: usize = 40;
/// `deviceExternalId` holds 255 characters (a tenant GUID has 36).
const DEVICE_EXTERNAL_ID_MAX: usize = 255;

pub(crate) fn encode(event: &Event, opts: &CefOptions, out: &mut String) {
    // `raw` is valid JSON by construction; a document that is not an object just maps to
    // no extension fields beyond the envelope's.
    let doc: Value = serde_json::from_str(event.raw.get()).unwrap_or(Value::Null);
    let is_alert = matches!(event.feed, Feed::MdeAlerts | Feed::GraphAlerts);

    out.push_str("CEF:0|");
    header(out, &opts.device_vendor, VENDOR_MAX);
    let product = opts
        .device_product
        .as_deref()
        .unwrap_or_else(|| default_product(event.feed));
    header(out, product, VENDOR_MAX);
    header(out, &opts.device_version, VERSION_MAX);
    let signature = if is_alert {
        text(&doc, "detectorId").unwrap_or(Cow::Borrowed("alert"))
    } else {
        Cow::Borrowed("incident")
    };
    header(out, &signature, SIGNATURE_MAX);
    let title_field = match event.feed {
        Feed::MdeAlerts | Feed::GraphAlerts => "title",
        Feed::GraphIncidents => "displayName",
        Feed::M365dIncidents => "incidentName",
    };
    let name = event
        .title
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(Cow::Borrowed)
        .or_else(|| text(&doc, title_field))
        .unwrap_or(Cow::Borrowed(if is_alert {
            "Defender alert"
        } else {
            "Defender incident"
        }));
    header(out, &name, NAME_MAX);
    out.push_str(&severity_number(event.severity).to_string());
    out.push('|');

    let mut ext = Extension::new(out);
    match event.feed {
        Feed::GraphAlerts => alert(&mut ext, event, &doc, &graph_alert_fields(&doc)),
        Feed::MdeAlerts => alert(&mut ext, event, &doc, &mde_alert_fields(&doc)),
        Feed::GraphIncidents => incident(&mut ext, event, &doc, &GRAPH_INCIDENT),
        Feed::M365dIncidents => incident(&mut ext, event, &doc, &M365D_INCIDENT),
    }
}

fn header(out: &mut String, value: &str, max_chars: usize) {
    escape_header(truncate_chars(value.trim(), max_chars).trim_end(), out);
    out.push('|');
}

/// What the two alert feeds have in common once their names are resolved.
#[derive(Default)]
struct AlertFields<'a> {
    created: &'static str,
    first_activity: &'static str,
    last_activity: &'static str,
    threat: Option<Cow<'a, str>>,
    actor: Option<Cow<'a, str>>,
    portal_url: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    logged_on: Vec<String>,
    user: Option<User<'a>>,
    ip: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    file: Option<&'a Value>,
}

struct User<'a> {
    name: Option<Cow<'a, str>>,
    domain: Option<Cow<'a, str>>,
}

impl<'a> User<'a> {
    /// `accountName` (or `userName`) and `domainName`; the UPN stands in for the name when
    /// there is no account name (`suser` takes e-mail addresses too).
    fn from(v: &'a Value, name_field: &str) -> Option<User<'a>> {
        let name = text(v, name_field).or_else(|| text(v, "userPrincipalName"));
        let domain = text(v, "domainName");
        (name.is_some() || domain.is_some()).then_some(User { name, domain })
    }
}

fn alert(ext: &mut Extension<'_>, event: &Event, doc: &Value, f: &AlertFields<'_>) {
    if let Some(ms) = epoch_ms(doc, f.created) {
        ext.number("rt", ms);
    }
    if let Some(ms) = epoch_ms(doc, f.first_activity) {
        ext.number("start", ms);
    }
    if let Some(ms) = epoch_ms(doc, f.last_activity) {
        ext.number("end", ms);
    }
    external_id(ext, &event.id);
    ext.text("cat", STR_MAX, &text(doc, "category").unwrap_or_default());
    ext.text(
        "sourceServiceName",
        STR_MAX,
        &text(doc, "detectionSource").unwrap_or_default(),
    );
    if let Some(host) = &f.host {
        ext.text("shost", STR_MAX, host);
        if let Some((_, domain)) = host.split_once('.') {
            ext.text("sourceDnsDomain", DOMAIN_MAX, domain);
        }
    }
    if let Some(u) = &f.user {
        ext.text("suser", STR_MAX, u.name.as_deref().unwrap_or(""));
        ext.text("sntdom", DOMAIN_MAX, u.domain.as_deref().unwrap_or(""));
    }
    ext.text("suid", STR_MAX, &f.logged_on.join(","));
    if let Some(ip) =
        f.ip.as_deref()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
    {
        match ip {
            IpAddr::V4(v4) => ext.text("src", STR_MAX, &v4.to_string()),
            IpAddr::V6(v6) => ext.labelled(
                "c6a2",
                "c6a2Label",
                "Source IPv6 Address",
                STR_MAX,
                &v6.to_string(),
            ),
        }
    }
    ext.text("request", STR_MAX, f.url.as_deref().unwrap_or(""));
    if let Some(file) = f.file {
        ext.text(
            "fname",
            STR_MAX,
            &text(file, "fileName").unwrap_or_default(),
        );
        ext.text(
            "filePath",
            STR_MAX,
            &text(file, "filePath").unwrap_or_default(),
        );
        ext.text(
            "fileHash",
            HASH_MAX,
            &text(file, "sha1").unwrap_or_default(),
        );
    }
    ext.labelled(
        "cs1",
        "cs1Label",
        "ThreatName",
        CS_MAX,
        f.threat.as_deref().unwrap_or(""),
    );
    ext.labelled(
        "cs2",
        "cs2Label",
        "IncidentId",
        CS_MAX,
        &text(doc, "incidentId").unwrap_or_default(),
    );
    ext.labelled(
        "cs3",
        "cs3Label",
        "MitreTechniques",
        CS_MAX,
        &join_strings(doc.get("mitreTechniques")),
    );
    ext.labelled(
        "cs4",
        "cs4Label",
        "Actor",
        CS_MAX,
        f.actor.as_deref().unwrap_or(""),
    );
    if let Some(file) = f.file {
        ext.labelled(
            "cs6",
            "cs6Label",
            "Sha256",
            CS_MAX,
            &text(file, "sha256").unwrap_or_default(),
        );
    }
    common_tail(ext, event, doc, f.portal_url.as_deref());
}

/// Fields every feed ends with: portal link, status, version time and description.
fn common_tail(ext: &mut Extension<'_>, event: &Event, doc: &Value, portal_url: Option<&str>) {
    if let Some(url) = portal_url {
        flex(ext, "flexString1", "PortalUrl", url);
    }
    flex(
        ext,
        "flexString2",
        "Status",
        &text(doc, "status").unwrap_or_default(),
    );
    // The customer tenant: one ArcSight receives every customer of the MSSP, and analysts
    // and ArcSight's customer assignment need to know whose event this is.
    ext.text("deviceExternalId", DEVICE_EXTERNAL_ID_MAX, &event.tenant_id);
    ext.text("deviceCustomDate1Label", super::LABEL_MAX, "LastUpdateTime");
    ext.number("deviceCustomDate1", event.version_time.timestamp_millis());
    ext.text(
        "msg",
        MSG_MAX,
        &text(doc, "description").unwrap_or_default(),
    );
}

fn flex(ext: &mut Extension<'_>, key: &str, label: &str, value: &str) {
    if value.trim().is_empty() {
        return;
    }
    let label_key = if key == "flexString1" {
        "flexString1Label"
    } else {
        "flexString2Label"
    };
    ext.text(label_key, FLEX_LABEL_MAX, label);
    ext.text(key, FLEX_MAX, value);
}

/// `externalId` holds 40 characters. Every current id format fits (MDE
/// `da637472900382838869_1364969609`, Graph `da<guid>_1`, numeric incident ids); a longer
/// one is left out rather than cut, since a cut id would name a different item.
fn external_id(ext: &mut Extension<'_>, id: &str) {
    if id.chars().count() <= EXTERNAL_ID_MAX {
        ext.text("externalId", EXTERNAL_ID_MAX, id);
    }
}

/// Graph `alerts_v2`: entities come from the typed `evidence` list; the first evidence of
/// each kind wins. File details prefer `fileEvidence` over a process's `imageFile`; the user
/// prefers `userEvidence` over a process's `userAccount`.
fn graph_alert_fields(doc: &Value) -> AlertFields<'_> {
    let mut f = AlertFields {
        created: "createdDateTime",
        first_activity: "firstActivityDateTime",
        last_activity: "lastActivityDateTime",
        threat: text(doc, "threatDisplayName").or_else(|| text(doc, "threatFamilyName")),
        actor: text(doc, "actorDisplayName"),
        portal_url: text(doc, "alertWebUrl"),
        ..AlertFields::default()
    };
    let mut process_file = None;
    let mut process_user = None;
    for ev in doc
        .get("evidence")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = ev
            .get("@odata.type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_start_matches("#microsoft.graph.security.");
        match kind {
            "deviceEvidence" if f.host.is_none() => {
                f.host = text(ev, "deviceDnsName");
                f.logged_on = ev
                    .get("loggedOnUsers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|u| logon_name(text(u, "domainName"), text(u, "accountName")))
                    .collect();
            }
            "userEvidence" if f.user.is_none() => {
                f.user = ev
                    .get("userAccount")
                    .and_then(|u| User::from(u, "accountName"));
            }
            "ipEvidence" if f.ip.is_none() => f.ip = text(ev, "ipAddress"),
            "urlEvidence" if f.url.is_none() => f.url = text(ev, "url"),
            "fileEvidence" if f.file.is_none() => f.file = ev.get("fileDetails"),
            "processEvidence" => {
                if process_file.is_none() {
                    process_file = ev.get("imageFile").filter(|v| v.is_object());
                }
                if process_user.is_none() {
                    process_user = ev
                        .get("userAccount")
                        .and_then(|u| User::from(u, "accountName"));
                }
            }
            _ => {}
        }
    }
    f.file = f.file.filter(|v| v.is_object()).or(process_file);
    f.user = f.user.or(process_user);
    f
}

/// Defender for Endpoint `/api/alerts?$expand=evidence`: the device is the alert's own
/// `computerDnsName`, the user its `relatedUser`; the rest comes from `evidence` by
/// `entityType`, first of each kind, `File` before `Process` for file details.
fn mde_alert_fields(doc: &Value) -> AlertFields<'_> {
    let mut f = AlertFields {
        created: "alertCreationTime",
        first_activity: "firstEventTime",
        last_activity: "lastEventTime",
        threat: text(doc, "threatName").or_else(|| text(doc, "threatFamilyName")),
        host: text(doc, "computerDnsName"),
        user: doc
            .get("relatedUser")
            .and_then(|u| User::from(u, "userName")),
        ..AlertFields::default()
    };
    let mut process_file = None;
    let mut evidence_user = None;
    for ev in doc
        .get("evidence")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match ev.get("entityType").and_then(Value::as_str).unwrap_or("") {
            "User" if evidence_user.is_none() => evidence_user = User::from(ev, "accountName"),
            "Ip" if f.ip.is_none() => f.ip = text(ev, "ipAddress"),
            "Url" if f.url.is_none() => f.url = text(ev, "url"),
            "File" if f.file.is_none() => f.file = Some(ev),
            "Process" if process_file.is_none() => process_file = Some(ev),
            _ => {}
        }
    }
    f.file = f.file.or(process_file);
    f.user = f.user.or(evidence_user);
    f
}

/// Field names of one incident feed.
struct IncidentFields {
    created: &'static str,
    portal_url: Option<&'static str>,
    tag_lists: &'static [&'static str],
}

const GRAPH_INCIDENT: IncidentFields = IncidentFields {
    created: "createdDateTime",
    portal_url: Some("incidentWebUrl"),
    tag_lists: &["tags", "customTags", "systemTags"],
};

const M365D_INCIDENT: IncidentFields = IncidentFields {
    created: "createdTime",
    portal_url: None,
    tag_lists: &["tags"],
};

/// Incidents have no legacy mapping; they get the same envelope keys as alerts and their
/// triage fields in custom strings. Entities stay with the alerts stream.
fn incident(ext: &mut Extension<'_>, event: &Event, doc: &Value, f: &IncidentFields) {
    if let Some(ms) = epoch_ms(doc, f.created) {
        ext.number("rt", ms);
    }
    external_id(ext, &event.id);
    ext.labelled(
        "cs1",
        "cs1Label",
        "Classification",
        CS_MAX,
        &text(doc, "classification").unwrap_or_default(),
    );
    ext.labelled("cs2", "cs2Label", "IncidentId", CS_MAX, &event.id);
    let mut tags: Vec<String> = Vec::new();
    for list in f.tag_lists {
        for t in join_parts(doc.get(*list)) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    ext.labelled("cs3", "cs3Label", "Tags", CS_MAX, &tags.join(","));
    ext.labelled(
        "cs4",
        "cs4Label",
        "AssignedTo",
        CS_MAX,
        &text(doc, "assignedTo").unwrap_or_default(),
    );
    ext.labelled(
        "cs5",
        "cs5Label",
        "Determination",
        CS_MAX,
        &text(doc, "determination").unwrap_or_default(),
    );
    if let Some(alerts) = doc.get("alerts").and_then(Value::as_array) {
        ext.text("cn1Label", super::LABEL_MAX, "AlertCount");
        ext.number("cn1", i64::try_from(alerts.len()).unwrap_or(i64::MAX));
    }
    let url = f.portal_url.and_then(|k| text(doc, k));
    common_tail(ext, event, doc, url.as_deref());
}

/// A string or number field as text; `None` when missing, null, empty or of another type.
fn text<'a>(v: &'a Value, key: &str) -> Option<Cow<'a, str>> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// An RFC 3339 time field as epoch milliseconds.
fn epoch_ms(v: &Value, key: &str) -> Option<i64> {
    let s = v.get(key)?.as_str()?;
    s.trim()
        .parse::<DateTime<Utc>>()
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The non-empty strings of an array field.
fn join_parts(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The strings of an array field, comma-separated.
fn join_strings(v: Option<&Value>) -> String {
    join_parts(v).join(",")
}

/// `DOMAIN\account`, the form Windows shows a logged-on user in.
fn logon_name(domain: Option<Cow<'_, str>>, account: Option<Cow<'_, str>>) -> Option<String> {
    match (domain, account) {
        (Some(d), Some(a)) => Some(format!("{d}\\{a}")),
        (None, Some(a)) => Some(a.into_owned()),
        _ => None,
    }
}
