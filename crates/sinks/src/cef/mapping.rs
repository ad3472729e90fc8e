//! Which Defender field goes to which CEF key, per feed. Fields are read from the raw
//! document by name (`doc.rs` declares which); a missing or null field leaves its key out.
//! The table lives in `docs/field-mappings.md` — change both together.

use super::doc::{self, Doc, FileFields, List, Text, UserFields};
use super::{
    default_product, escape_header, severity_number, truncate_chars, CefOptions, Extension,
    NAME_MAX, SIGNATURE_MAX, VENDOR_MAX, VERSION_MAX,
};
use crate::event::Event;
use chrono::{DateTime, Utc};
use relay_config::Feed;
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

pub(super) fn encode(event: &Event, opts: &CefOptions, out: &mut String) {
    // `raw` is valid JSON by construction; a document that is not an object just maps to
    // no extension fields beyond the envelope's.
    let doc = doc::parse(event.raw.get());
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
        doc.detector_id.text().unwrap_or(Cow::Borrowed("alert"))
    } else {
        Cow::Borrowed("incident")
    };
    header(out, &signature, SIGNATURE_MAX);
    let title_field = match event.feed {
        Feed::MdeAlerts | Feed::GraphAlerts => &doc.title,
        Feed::GraphIncidents => &doc.display_name,
        Feed::M365dIncidents => &doc.incident_name,
    };
    let name = event
        .title
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(Cow::Borrowed)
        .or_else(|| title_field.text())
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
        Feed::GraphIncidents => incident(&mut ext, event, &doc, &graph_incident_fields(&doc)),
        Feed::M365dIncidents => incident(&mut ext, event, &doc, &m365d_incident_fields(&doc)),
    }
}

fn header(out: &mut String, value: &str, max_chars: usize) {
    escape_header(truncate_chars(value.trim(), max_chars).trim_end(), out);
    out.push('|');
}

/// What the two alert feeds have in common once their names are resolved.
struct AlertFields<'a> {
    created: &'a Text<'a>,
    first_activity: &'a Text<'a>,
    last_activity: &'a Text<'a>,
    threat: Option<Cow<'a, str>>,
    actor: Option<Cow<'a, str>>,
    portal_url: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    logged_on: Vec<String>,
    user: Option<User<'a>>,
    ip: Option<Cow<'a, str>>,
    url: Option<Cow<'a, str>>,
    file: Option<&'a FileFields<'a>>,
}

struct User<'a> {
    name: Option<Cow<'a, str>>,
    domain: Option<Cow<'a, str>>,
}

impl<'a> User<'a> {
    /// `name` (`accountName` or `userName`) and `domainName` of `v`; the UPN stands in for
    /// the name when there is no account name (`suser` takes e-mail addresses too).
    fn from(v: &'a UserFields<'a>, name: &'a Text<'a>) -> Option<User<'a>> {
        let name = name.text().or_else(|| v.user_principal_name.text());
        let domain = v.domain_name.text();
        (name.is_some() || domain.is_some()).then_some(User { name, domain })
    }

    fn by_account_name(v: &'a UserFields<'a>) -> Option<User<'a>> {
        User::from(v, &v.account_name)
    }
}

fn alert(ext: &mut Extension<'_>, event: &Event, doc: &Doc<'_>, f: &AlertFields<'_>) {
    if let Some(ms) = epoch_ms(f.created) {
        ext.number("rt", ms);
    }
    if let Some(ms) = epoch_ms(f.first_activity) {
        ext.number("start", ms);
    }
    if let Some(ms) = epoch_ms(f.last_activity) {
        ext.number("end", ms);
    }
    external_id(ext, &event.id);
    ext.text("cat", STR_MAX, &doc.category.text().unwrap_or_default());
    ext.text(
        "sourceServiceName",
        STR_MAX,
        &doc.detection_source.text().unwrap_or_default(),
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
        ext.text("fname", STR_MAX, &file.file_name.text().unwrap_or_default());
        ext.text(
            "filePath",
            STR_MAX,
            &file.file_path.text().unwrap_or_default(),
        );
        ext.text("fileHash", HASH_MAX, &file.sha1.text().unwrap_or_default());
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
        &doc.incident_id.text().unwrap_or_default(),
    );
    ext.labelled(
        "cs3",
        "cs3Label",
        "MitreTechniques",
        CS_MAX,
        &join_strings(&doc.mitre_techniques),
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
            &file.sha256.text().unwrap_or_default(),
        );
    }
    common_tail(ext, event, doc, f.portal_url.as_deref());
}

/// Fields every feed ends with: portal link, status, version time and description.
fn common_tail(ext: &mut Extension<'_>, event: &Event, doc: &Doc<'_>, portal_url: Option<&str>) {
    if let Some(url) = portal_url {
        flex(ext, "flexString1", "PortalUrl", url);
    }
    flex(
        ext,
        "flexString2",
        "Status",
        &doc.status.text().unwrap_or_default(),
    );
    // The customer tenant: one ArcSight receives every customer of the MSSP, and analysts
    // and ArcSight's customer assignment need to know whose event this is.
    ext.text("deviceExternalId", DEVICE_EXTERNAL_ID_MAX, &event.tenant_id);
    ext.text("deviceCustomDate1Label", super::LABEL_MAX, "LastUpdateTime");
    ext.number("deviceCustomDate1", event.version_time.timestamp_millis());
    ext.text("msg", MSG_MAX, &doc.description.text().unwrap_or_default());
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
fn graph_alert_fields<'a>(doc: &'a Doc<'a>) -> AlertFields<'a> {
    let mut f = AlertFields {
        created: &doc.created_date_time,
        first_activity: &doc.first_activity_date_time,
        last_activity: &doc.last_activity_date_time,
        threat: doc
            .threat_display_name
            .text()
            .or_else(|| doc.threat_family_name.text()),
        actor: doc.actor_display_name.text(),
        portal_url: doc.alert_web_url.text(),
        host: None,
        logged_on: Vec::new(),
        user: None,
        ip: None,
        url: None,
        file: None,
    };
    // The first file evidence that has `fileDetails` wins, even when they are not an object
    // (then the process's image file is used).
    let mut file_details: Option<Option<&FileFields<'_>>> = None;
    let mut process_file = None;
    let mut process_user = None;
    for ev in doc.evidence.iter() {
        // `trim_start_matches` (every leading copy of the prefix), without building a
        // substring searcher for each evidence.
        let mut kind = ev.odata_type.as_str().unwrap_or("");
        while let Some(rest) = kind.strip_prefix("#microsoft.graph.security.") {
            kind = rest;
        }
        match kind {
            "deviceEvidence" if f.host.is_none() => {
                f.host = ev.device_dns_name.text();
                f.logged_on = ev
                    .logged_on_users
                    .iter()
                    .filter_map(|u| logon_name(u.domain_name.text(), u.account_name.text()))
                    .collect();
            }
            "userEvidence" if f.user.is_none() => {
                f.user = User::by_account_name(&ev.user_account);
            }
            "ipEvidence" if f.ip.is_none() => f.ip = ev.ip_address.text(),
            "urlEvidence" if f.url.is_none() => f.url = ev.url.text(),
            "fileEvidence" if file_details.is_none() => file_details = ev.file_details.get(),
            "processEvidence" => {
                if process_file.is_none() {
                    process_file = ev.image_file.object();
                }
                if process_user.is_none() {
                    process_user = User::by_account_name(&ev.user_account);
                }
            }
            _ => {}
        }
    }
    f.file = file_details.flatten().or(process_file);
    f.user = f.user.or(process_user);
    f
}

/// Defender for Endpoint `/api/alerts?$expand=evidence`: the device is the alert's own
/// `computerDnsName`, the user its `relatedUser`; the rest comes from `evidence` by
/// `entityType`, first of each kind, `File` before `Process` for file details.
fn mde_alert_fields<'a>(doc: &'a Doc<'a>) -> AlertFields<'a> {
    let mut f = AlertFields {
        created: &doc.alert_creation_time,
        first_activity: &doc.first_event_time,
        last_activity: &doc.last_event_time,
        threat: doc
            .threat_name
            .text()
            .or_else(|| doc.threat_family_name.text()),
        actor: None,
        portal_url: None,
        host: doc.computer_dns_name.text(),
        logged_on: Vec::new(),
        user: User::from(&doc.related_user, &doc.related_user.user_name),
        ip: None,
        url: None,
        file: None,
    };
    let mut process_file = None;
    let mut evidence_user = None;
    for ev in doc.evidence.iter() {
        match ev.entity_type.as_str().unwrap_or("") {
            "User" if evidence_user.is_none() => evidence_user = User::by_account_name(&ev.user),
            "Ip" if f.ip.is_none() => f.ip = ev.ip_address.text(),
            "Url" if f.url.is_none() => f.url = ev.url.text(),
            "File" if f.file.is_none() => f.file = Some(&ev.file),
            "Process" if process_file.is_none() => process_file = Some(&ev.file),
            _ => {}
        }
    }
    f.file = f.file.or(process_file);
    f.user = f.user.or(evidence_user);
    f
}

/// Where one incident feed keeps its creation time, portal link and tag lists.
struct IncidentFields<'a> {
    created: &'a Text<'a>,
    portal_url: Option<&'a Text<'a>>,
    tag_lists: [Option<&'a List<Text<'a>>>; 3],
}

fn graph_incident_fields<'a>(doc: &'a Doc<'a>) -> IncidentFields<'a> {
    IncidentFields {
        created: &doc.created_date_time,
        portal_url: Some(&doc.incident_web_url),
        tag_lists: [
            Some(&doc.tags),
            Some(&doc.custom_tags),
            Some(&doc.system_tags),
        ],
    }
}

fn m365d_incident_fields<'a>(doc: &'a Doc<'a>) -> IncidentFields<'a> {
    IncidentFields {
        created: &doc.created_time,
        portal_url: None,
        tag_lists: [Some(&doc.tags), None, None],
    }
}

/// Incidents have no legacy mapping; they get the same envelope keys as alerts and their
/// triage fields in custom strings. Entities stay with the alerts stream.
fn incident(ext: &mut Extension<'_>, event: &Event, doc: &Doc<'_>, f: &IncidentFields<'_>) {
    if let Some(ms) = epoch_ms(f.created) {
        ext.number("rt", ms);
    }
    external_id(ext, &event.id);
    ext.labelled(
        "cs1",
        "cs1Label",
        "Classification",
        CS_MAX,
        &doc.classification.text().unwrap_or_default(),
    );
    ext.labelled("cs2", "cs2Label", "IncidentId", CS_MAX, &event.id);
    let mut tags: Vec<String> = Vec::new();
    for list in f.tag_lists.into_iter().flatten() {
        for t in join_parts(list) {
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
        &doc.assigned_to.text().unwrap_or_default(),
    );
    ext.labelled(
        "cs5",
        "cs5Label",
        "Determination",
        CS_MAX,
        &doc.determination.text().unwrap_or_default(),
    );
    if let Some(alerts) = doc.alerts.0 {
        ext.text("cn1Label", super::LABEL_MAX, "AlertCount");
        ext.number("cn1", i64::try_from(alerts).unwrap_or(i64::MAX));
    }
    let url = f.portal_url.and_then(Text::text);
    common_tail(ext, event, doc, url.as_deref());
}

/// An RFC 3339 time field as epoch milliseconds.
fn epoch_ms(v: &Text<'_>) -> Option<i64> {
    let s = v.as_str()?;
    s.trim()
        .parse::<DateTime<Utc>>()
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The non-empty strings of an array field.
fn join_parts(v: &List<Text<'_>>) -> Vec<String> {
    v.iter()
        .filter_map(Text::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The strings of an array field, comma-separated.
fn join_strings(v: &List<Text<'_>>) -> String {
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
