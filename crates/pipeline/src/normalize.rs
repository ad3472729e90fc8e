//! Normalize: one API item becomes the sink-neutral [`Event`]. Pure; the raw document is
//! moved into the event untouched.

use std::borrow::Cow;

use relay_config::Feed;
use relay_defender::Item;
use relay_sinks::{Event, Severity};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The few fields normalize reads from the document. Everything else is skipped by the
/// parser without being built into a tree.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Fields<'a> {
    #[serde(borrow)]
    severity: Option<Text<'a>>,
    #[serde(borrow)]
    title: Option<Text<'a>>,
    #[serde(borrow, rename = "incidentName")]
    incident_name: Option<Text<'a>>,
    #[serde(borrow, rename = "displayName")]
    display_name: Option<Text<'a>>,
}

/// A field that should be a string; anything else (a number, an object, `null`) is
/// tolerated and treated as absent rather than failing the whole item.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text<'a> {
    Str(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

impl Text<'_> {
    fn into_string(self) -> Option<String> {
        match self {
            Text::Str(s) if !s.trim().is_empty() => Some(s.into_owned()),
            _ => None,
        }
    }
}

/// Turns `item` into the [`Event`] every sink formats from: tenant id and name, stream and
/// feed, id, version time, severity (from the document's `severity` via
/// [`Severity::from_api`]) and title (the feed's own title field — `incidentName` for
/// M365 Defender incidents, `displayName` for Graph incidents, `title` for alerts — else
/// whichever of them the document has). The document itself is kept whole.
///
/// A document normalize cannot read (the pager only hands over valid JSON objects, so this
/// is theoretical) still becomes an event, with unknown severity and no title: dropping it
/// would lose the version.
pub fn normalize(item: Item) -> Event {
    let fields: Fields<'_> = serde_json::from_str(item.raw.get()).unwrap_or_default();
    let severity = fields
        .severity
        .and_then(Text::into_string)
        .map_or(Severity::Unknown, |s| Severity::from_api(&s));
    let [own, a, b] = match item.feed {
        Feed::M365dIncidents => [fields.incident_name, fields.display_name, fields.title],
        Feed::GraphIncidents => [fields.display_name, fields.incident_name, fields.title],
        Feed::MdeAlerts | Feed::GraphAlerts => {
            [fields.title, fields.display_name, fields.incident_name]
        }
    };
    let title = [own, a, b]
        .into_iter()
        .flatten()
        .find_map(Text::into_string);
    Event {
        tenant_id: item.tenant_id,
        tenant_name: item.tenant,
        stream: item.feed.stream(),
        feed: item.feed,
        id: item.id,
        version_time: item.last_update,
        severity,
        title,
        raw: item.raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use relay_config::Stream;
    use serde_json::value::RawValue;

    fn item(feed: Feed, raw: &str) -> Item {
        Item {
            tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
            tenant: "contoso".into(),
            feed,
            id: "924565".into(),
            last_update: "2020-09-06T14:46:57.29Z".parse::<DateTime<Utc>>().unwrap(),
            raw: RawValue::from_string(raw.to_string()).unwrap(),
        }
    }

    #[test]
    fn m365d_incident_takes_incident_name_and_pascal_case_severity() {
        let raw = r#"{"incidentId":924565,"incidentName":"Ransomware activity","severity":"High","extra":{"x":[1,2]}}"#;
        let e = normalize(item(Feed::M365dIncidents, raw));
        assert_eq!(e.severity, Severity::High);
        assert_eq!(e.title.as_deref(), Some("Ransomware activity"));
        assert_eq!(e.stream, Stream::Incidents);
        assert_eq!(e.feed, Feed::M365dIncidents);
        assert_eq!(e.id, "924565");
        assert_eq!(e.tenant_name, "contoso");
        assert_eq!(e.tenant_id, "3adb963c-8e61-48e8-a06d-6dbb0dacea39");
        assert_eq!(e.raw.get(), raw, "the document is kept byte for byte");
        assert_eq!(
            e.version_time,
            "2020-09-06T14:46:57.29Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn graph_incident_takes_display_name_and_alert_takes_title() {
        let e = normalize(item(
            Feed::GraphIncidents,
            r#"{"id":"1","displayName":"Multi-stage","severity":"medium","title":"not me"}"#,
        ));
        assert_eq!(e.title.as_deref(), Some("Multi-stage"));
        assert_eq!(e.severity, Severity::Medium);
        let e = normalize(item(
            Feed::GraphAlerts,
            r#"{"id":"da1","title":"Suspicious \"PowerShell\"","severity":"low"}"#,
        ));
        assert_eq!(e.title.as_deref(), Some("Suspicious \"PowerShell\""));
        assert_eq!(e.severity, Severity::Low);
        assert_eq!(e.stream, Stream::Alerts);
    }

    #[test]
    fn missing_or_odd_fields_give_unknown_severity_and_a_fallback_title() {
        let e = normalize(item(
            Feed::MdeAlerts,
            r#"{"id":"x","severity":null,"title":42,"displayName":"fallback"}"#,
        ));
        assert_eq!(e.severity, Severity::Unknown);
        assert_eq!(e.title.as_deref(), Some("fallback"));
        let e = normalize(item(
            Feed::MdeAlerts,
            r#"{"id":"x","severity":"UnSpecified","title":"  "}"#,
        ));
        assert_eq!(e.severity, Severity::Unknown);
        assert_eq!(e.title, None);
    }

    #[test]
    fn unreadable_document_still_becomes_an_event() {
        let e = normalize(item(Feed::GraphAlerts, r#"[1,2,3]"#));
        assert_eq!(e.severity, Severity::Unknown);
        assert_eq!(e.title, None);
        assert_eq!(e.raw.get(), "[1,2,3]");
    }
}
