//! Normalize: one API item becomes the sink-neutral [`Event`]. Pure; the raw document is
//! moved into the event untouched and not read again: the fields an event needs from it
//! were read while its page was parsed ([`relay_defender::ItemFields`]).

use relay_config::Feed;
use relay_defender::{Item, ItemFields};
use relay_sinks::{Event, Severity};

/// Turns `item` into the [`Event`] every sink formats from: tenant id and name, stream and
/// feed, id, version time, severity (from the document's `severity` via
/// [`Severity::from_api`]) and title (the feed's own title field — `incidentName` for
/// M365 Defender incidents, `displayName` for Graph incidents, `title` for alerts — else
/// whichever of them the document has). The document itself is kept whole.
///
/// Fields that are missing, not strings, blank, or unreadable (see [`ItemFields`]) give
/// an unknown severity and no title rather than an error: dropping the item would lose
/// the version.
pub fn normalize(item: Item) -> Event {
    let ItemFields {
        severity,
        title,
        incident_name,
        display_name,
    } = item.fields;
    let severity = severity.map_or(Severity::Unknown, |s| Severity::from_api(&s));
    let [own, a, b] = match item.feed {
        Feed::M365dIncidents => [incident_name, display_name, title],
        Feed::GraphIncidents => [display_name, incident_name, title],
        Feed::MdeAlerts | Feed::GraphAlerts => [title, display_name, incident_name],
    };
    let title = own.or(a).or(b);
    Event {
        tenant_id: item.tenant_id,
        tenant_name: item.tenant,
        stream: item.feed.stream(),
        feed: item.feed,
        id: item.id,
        version_time: item.last_update,
        severity,
        title,
        raw: item.raw.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use relay_config::Stream;
    use serde_json::value::RawValue;

    fn item(feed: Feed, raw: &str) -> Item {
        let raw = RawValue::from_string(raw.to_string()).unwrap();
        Item {
            tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
            tenant: "contoso".into(),
            feed,
            id: "924565".into(),
            last_update: "2020-09-06T14:46:57.29Z".parse::<DateTime<Utc>>().unwrap(),
            fields: ItemFields::from_raw(&raw),
            raw,
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

    /// The items of a one-element page of `feed`, as the pager hands them over.
    fn parsed(feed: Feed, element: &str) -> Item {
        let body = format!(r#"{{"value":[{element}]}}"#);
        let mut page = relay_defender::parse_page(feed, body.as_bytes()).unwrap();
        let it = page.items.remove(0);
        Item {
            tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
            tenant: "contoso".into(),
            feed,
            id: it.id,
            last_update: it.last_update,
            fields: it.fields,
            raw: it.raw,
        }
    }

    #[test]
    fn each_feed_prefers_its_own_title_from_the_page_pass() {
        // Every candidate present: the feed's own wins.
        let all = r#""title":"T","incidentName":"I","displayName":"D","severity":" HIGH ""#;
        for (feed, head, title) in [
            (
                Feed::M365dIncidents,
                r#""incidentId":1,"lastUpdateTime":"2024-01-01T00:00:00Z""#,
                "I",
            ),
            (
                Feed::GraphIncidents,
                r#""id":"1","lastUpdateDateTime":"2024-01-01T00:00:00Z""#,
                "D",
            ),
            (
                Feed::MdeAlerts,
                r#""id":"da1","lastUpdateTime":"2024-01-01T00:00:00Z""#,
                "T",
            ),
            (
                Feed::GraphAlerts,
                r#""id":"da1","lastUpdateDateTime":"2024-01-01T00:00:00Z""#,
                "T",
            ),
        ] {
            let doc = format!("{{{head},{all}}}");
            let e = normalize(parsed(feed, &doc));
            assert_eq!(e.title.as_deref(), Some(title), "{feed:?}");
            assert_eq!(e.severity, Severity::High, "{feed:?}");
            assert_eq!(e.raw.get(), doc, "{feed:?}");
        }
        // The fallback order when the own field is missing or blank.
        let e = normalize(parsed(
            Feed::M365dIncidents,
            r#"{"incidentId":1,"lastUpdateTime":"2024-01-01T00:00:00Z","incidentName":" ","title":"T","displayName":"D"}"#,
        ));
        assert_eq!(e.title.as_deref(), Some("D"));
        let e = normalize(parsed(
            Feed::GraphIncidents,
            r#"{"id":"1","lastUpdateDateTime":"2024-01-01T00:00:00Z","title":"T","incidentName":"I"}"#,
        ));
        assert_eq!(e.title.as_deref(), Some("I"));
        let e = normalize(parsed(
            Feed::GraphAlerts,
            r#"{"id":"1","lastUpdateDateTime":"2024-01-01T00:00:00Z","incidentName":"I","displayName":"D"}"#,
        ));
        assert_eq!(e.title.as_deref(), Some("D"));
    }

    #[test]
    fn hostile_title_text_is_unescaped_exactly() {
        let e = normalize(parsed(
            Feed::GraphAlerts,
            r#"{"id":"da1","lastUpdateDateTime":"2024-01-01T00:00:00Z","title":"Run \"x.ps1\" on caf\u00e9\u0000 <b>&amp;</b>\r\n","severity":"m\u0065dium"}"#,
        ));
        assert_eq!(
            e.title.as_deref(),
            Some("Run \"x.ps1\" on caf\u{e9}\u{0} <b>&amp;</b>\r\n")
        );
        assert_eq!(e.severity, Severity::Medium);
    }

    #[test]
    fn repeated_severity_or_title_gives_unknown_and_no_title_as_before() {
        // serde's derive refused a document with a repeated field, and normalize fell
        // back to nothing; the page pass keeps that.
        for doc in [
            r#"{"id":"1","lastUpdateDateTime":"2024-01-01T00:00:00Z","title":"T","severity":"high","severity":"high"}"#,
            r#"{"id":"1","lastUpdateDateTime":"2024-01-01T00:00:00Z","title":"T","severity":"high","title":"U"}"#,
        ] {
            let e = normalize(parsed(Feed::GraphAlerts, doc));
            assert_eq!((e.severity, e.title), (Severity::Unknown, None), "{doc}");
            let e = normalize(item(Feed::GraphAlerts, doc));
            assert_eq!((e.severity, e.title), (Severity::Unknown, None), "{doc}");
        }
    }

    #[test]
    fn unreadable_document_still_becomes_an_event() {
        let e = normalize(item(Feed::GraphAlerts, r#"[1,2,3]"#));
        assert_eq!(e.severity, Severity::Unknown);
        assert_eq!(e.title, None);
        assert_eq!(e.raw.get(), "[1,2,3]");
    }
}
