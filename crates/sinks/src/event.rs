//! The sink-neutral event: one version of one Defender incident or alert, as the pipeline's
//! normalize step hands it to every sink.

use chrono::{DateTime, Utc};
use relay_config::{Feed, Stream};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// One version of one incident or alert, ready for any sink.
///
/// The envelope fields are what every sink needs without looking inside the document;
/// `raw` is the document exactly as the API returned it (every field kept, unknown ones too).
/// Formatters that need more (CEF) read fields from `raw` by name.
///
/// Serialized with serde as a flat JSON object for the outbox; `raw` is embedded verbatim and
/// is not re-parsed into a tree on the way in or out, so storing and loading an event costs
/// about one copy of the document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The customer's Entra tenant id (a GUID).
    pub tenant_id: String,
    /// The tenant's configured name (the operator's key for it).
    pub tenant_name: String,
    /// Which stream the event belongs to.
    pub stream: Stream,
    /// Which API feed it was read from; tells formatters which field names `raw` uses.
    pub feed: Feed,
    /// The item's id (`id` or `incidentId`), as a string.
    pub id: String,
    /// The item's last-update time: together with `id` it names this version. Defender
    /// reports it with 100 ns precision; it is kept as given.
    pub version_time: DateTime<Utc>,
    /// The item's severity, normalized by the pipeline.
    pub severity: Severity,
    /// The item's title (alert `title`, incident `displayName` / `incidentName`), if any.
    pub title: Option<String>,
    /// The original JSON document.
    pub raw: Box<RawValue>,
}

impl Event {
    /// A cheap estimate of the bytes this event takes in a batch, for batching by size.
    /// Formatted output differs per sink; this is the document plus a fixed envelope allowance.
    pub fn approx_bytes(&self) -> usize {
        const ENVELOPE: usize = 256;
        self.raw.get().len()
            + self.id.len()
            + self.tenant_id.len()
            + self.tenant_name.len()
            + self.title.as_ref().map_or(0, String::len)
            + ENVELOPE
    }
}

/// A severity every sink understands, normalized from the API's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational: no action expected.
    Informational,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// The API gave no severity, or one this version does not know.
    #[default]
    Unknown,
}

impl Severity {
    /// Normalizes an API severity string: Graph uses `informational`, `low`, `medium`, `high`,
    /// `unknown`, `unknownFutureValue`; the Defender APIs use `Informational`, `Low`,
    /// `Medium`, `High`, `UnSpecified`. Anything else is [`Severity::Unknown`].
    pub fn from_api(value: &str) -> Severity {
        let v = value.trim();
        if v.eq_ignore_ascii_case("informational") {
            Severity::Informational
        } else if v.eq_ignore_ascii_case("low") {
            Severity::Low
        } else if v.eq_ignore_ascii_case("medium") {
            Severity::Medium
        } else if v.eq_ignore_ascii_case("high") {
            Severity::High
        } else {
            Severity::Unknown
        }
    }

    /// The lowercase name used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Events built from the real payloads in `testdata/` (copied from shared/samples).

    use super::*;
    use serde_json::Value;

    pub const GRAPH_ALERTS: &str = include_str!("../testdata/graph-alerts_v2-1.json");
    pub const GRAPH_ALERTS_DOCS: &str = include_str!("../testdata/graph-alerts_v2-3-docs.json");
    pub const MDE_ALERTS: &str = include_str!("../testdata/mde-alerts-expand-evidence-1.json");
    pub const M365D_INCIDENTS: &str = include_str!("../testdata/m365d-incidents-list-1.json");
    pub const GRAPH_INCIDENTS: &str =
        include_str!("../testdata/graph-incidents-expand-alerts-1.json");

    pub const TENANT_ID: &str = "3adb963c-8e61-48e8-a06d-6dbb0dacea39";
    pub const TENANT_NAME: &str = "contoso";

    /// The `index`-th item of a sample page, compacted, as the pipeline would build it.
    pub fn event(page: &str, index: usize, feed: Feed) -> Event {
        let page: Value = serde_json::from_str(page).unwrap();
        let item = &page["value"][index];
        let id = match &item[feed.id_field()] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let version_time = item[feed.time_field()]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap();
        let title_field = match feed {
            Feed::M365dIncidents => "incidentName",
            Feed::GraphIncidents => "displayName",
            Feed::MdeAlerts | Feed::GraphAlerts => "title",
        };
        Event {
            tenant_id: TENANT_ID.to_string(),
            tenant_name: TENANT_NAME.to_string(),
            stream: feed.stream(),
            feed,
            id,
            version_time,
            severity: Severity::from_api(item["severity"].as_str().unwrap_or("")),
            title: item[title_field].as_str().map(str::to_string),
            raw: RawValue::from_string(serde_json::to_string(item).unwrap()).unwrap(),
        }
    }

    /// An event whose raw document is `raw` verbatim (whitespace kept).
    pub fn event_with_raw(raw: &str) -> Event {
        let mut e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        e.raw = RawValue::from_string(raw.to_string()).unwrap();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    #[test]
    fn outbox_roundtrip_keeps_every_field_and_the_raw_text() {
        for (page, feed) in [
            (GRAPH_ALERTS, Feed::GraphAlerts),
            (MDE_ALERTS, Feed::MdeAlerts),
            (M365D_INCIDENTS, Feed::M365dIncidents),
            (GRAPH_INCIDENTS, Feed::GraphIncidents),
        ] {
            let e = event(page, 0, feed);
            let json = serde_json::to_string(&e).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap();
            assert_eq!(back.tenant_id, e.tenant_id);
            assert_eq!(back.tenant_name, e.tenant_name);
            assert_eq!(back.stream, e.stream);
            assert_eq!(back.feed, e.feed);
            assert_eq!(back.id, e.id);
            assert_eq!(back.version_time, e.version_time);
            assert_eq!(back.severity, e.severity);
            assert_eq!(back.title, e.title);
            assert_eq!(back.raw.get(), e.raw.get());
        }
    }

    #[test]
    fn outbox_json_embeds_raw_verbatim_and_keeps_100ns_precision() {
        // Pretty-printed raw with odd spacing must come back byte for byte: the outbox does
        // not re-serialize the document.
        let raw = "{\n  \"id\" : \"a\",\n  \"n\": 1.50e3 }";
        let e = event_with_raw(raw);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(raw), "{json}");
        assert!(json.contains("\"version_time\":\"2023-10-20T09:54:07.503333300Z\""));
        assert!(json.contains("\"stream\":\"alerts\",\"feed\":\"graph_alerts\""));
        assert!(json.contains("\"severity\":\"medium\""));
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.raw.get(), raw);
        assert_eq!(back.version_time.timestamp_subsec_nanos(), 503_333_300);
    }

    #[test]
    fn severity_from_api_covers_both_api_spellings() {
        assert_eq!(Severity::from_api("High"), Severity::High);
        assert_eq!(Severity::from_api("high"), Severity::High);
        assert_eq!(Severity::from_api("Medium"), Severity::Medium);
        assert_eq!(Severity::from_api("low"), Severity::Low);
        assert_eq!(Severity::from_api("Informational"), Severity::Informational);
        assert_eq!(Severity::from_api("UnSpecified"), Severity::Unknown);
        assert_eq!(Severity::from_api("unknownFutureValue"), Severity::Unknown);
        assert_eq!(Severity::from_api(""), Severity::Unknown);
    }

    #[test]
    fn approx_bytes_grows_with_the_document() {
        let small = event_with_raw("{}");
        let big = event(GRAPH_ALERTS, 1, Feed::GraphAlerts);
        assert!(big.approx_bytes() > small.approx_bytes() + 6000);
    }
}
