//! The JSON-lines record the file sink writes: one line per event, the envelope fields
//! first and the original document under `event`.
//!
//! ```text
//! {"tenant_id":"…","tenant_name":"contoso","stream":"alerts","feed":"graph_alerts","id":"…","version_time":"2023-10-20T09:54:07.5033333Z","severity":"medium","title":"…","event":{…}}
//! ```
//!
//! * `stream`, `feed`, `severity` use the relay's lowercase names (`incidents`/`alerts`;
//!   `m365d_incidents`, `mde_alerts`, `graph_incidents`, `graph_alerts`;
//!   `informational`, `low`, `medium`, `high`, `unknown`).
//! * `version_time` is RFC 3339 UTC with seven fractional digits; with `id` it names the
//!   version (the same alert appears once per update).
//! * `title` is a string or `null`.
//! * `event` is the API's document, unchanged except that line breaks between tokens are
//!   removed when the document had any (so that each record is exactly one line).
//! * Lines end with `\n`; files are UTF-8.

use crate::event::Event;
use crate::json;

/// Appends the JSON-lines record of `event`, newline included, to `out`.
pub fn encode_line(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"tenant_id\":");
    json::write_str(out, &event.tenant_id);
    out.extend_from_slice(b",\"tenant_name\":");
    json::write_str(out, &event.tenant_name);
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(event.stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"feed\":\"");
    out.extend_from_slice(event.feed.as_str().as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    json::write_str(out, &event.id);
    out.extend_from_slice(b",\"version_time\":\"");
    json::write_time_100ns(out, &event.version_time);
    out.extend_from_slice(b"\",\"severity\":\"");
    out.extend_from_slice(event.severity.as_str().as_bytes());
    out.extend_from_slice(b"\",\"title\":");
    json::write_opt_str(out, event.title.as_deref());
    out.extend_from_slice(b",\"event\":");
    json::write_compact(out, event.raw.get());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use relay_config::Feed;

    fn line(e: &Event) -> String {
        let mut out = Vec::new();
        encode_line(e, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn line_of_an_m365d_incident() {
        let mut e = event(M365D_INCIDENTS, 0, Feed::M365dIncidents);
        e.raw = serde_json::value::RawValue::from_string(
            r#"{"incidentId":924565,"incidentName":"Ransomware activity","severity":"Medium"}"#
                .into(),
        )
        .unwrap()
        .into();
        assert_eq!(
            line(&e),
            concat!(
                r#"{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","#,
                r#""stream":"incidents","feed":"m365d_incidents","id":"924565","#,
                r#""version_time":"2020-09-06T14:46:57.2900000Z","severity":"medium","#,
                r#""title":"Ransomware activity","#,
                r#""event":{"incidentId":924565,"incidentName":"Ransomware activity","severity":"Medium"}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn pretty_raw_becomes_one_line_and_null_title_is_null() {
        let mut e = event_with_raw("{\n  \"id\": \"a b\",\n  \"x\": [1, 2]\n}");
        e.title = None;
        let l = line(&e);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with("\"title\":null,\"event\":{\"id\":\"a b\",\"x\":[1,2]}}\n"));
    }

    #[test]
    fn every_sample_line_parses_back_to_envelope_and_same_document() {
        for (page, feed, n) in [
            (GRAPH_ALERTS, Feed::GraphAlerts, 2),
            (MDE_ALERTS, Feed::MdeAlerts, 1),
            (M365D_INCIDENTS, Feed::M365dIncidents, 3),
            (GRAPH_INCIDENTS, Feed::GraphIncidents, 1),
        ] {
            for i in 0..n {
                let e = event(page, i, feed);
                let l = line(&e);
                assert_eq!(l.matches('\n').count(), 1);
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                assert_eq!(v["tenant_id"], TENANT_ID);
                assert_eq!(v["id"], e.id.as_str());
                assert_eq!(v["stream"], feed.stream().as_str());
                assert_eq!(v["severity"], e.severity.as_str());
                let original: serde_json::Value = serde_json::from_str(e.raw.get()).unwrap();
                assert_eq!(v["event"], original);
                let t: chrono::DateTime<chrono::Utc> =
                    v["version_time"].as_str().unwrap().parse().unwrap();
                assert_eq!(t, e.version_time);
            }
        }
    }
}
