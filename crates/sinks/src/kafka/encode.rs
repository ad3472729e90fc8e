//! What one event becomes as a Kafka record: key, headers and value. Pure; the I/O is in
//! `sink.rs`.
//!
//! * **Key** `<tenant_id>:<id>` — every version of an incident or alert hashes to the same
//!   partition, so consumers see its versions in the order the relay delivered them.
//! * **Headers** `tenant` (configured name), `tenant_id`, `stream`, `feed`, `id`,
//!   `version_time` (RFC 3339 UTC, seven fractional digits), all UTF-8: enough to route or
//!   deduplicate without parsing the value.
//! * **Value** the file sink's JSON-lines record ([`crate::jsonl`]) without the newline:
//!   the envelope (`tenant_id`, `tenant_name`, `stream`, `feed`, `id`, `version_time`,
//!   `severity`, `title`) and the API's document unchanged under `event`. One format for
//!   files and Kafka means one documented schema for consumers.
//! * **Timestamp** left to librdkafka (the produce time). The version time would be the
//!   natural choice, but a backfill of month-old versions would then fall straight out of
//!   time-based retention or be refused by `message.timestamp.difference.max.ms`.

use crate::event::Event;
use crate::json;
use crate::jsonl;
use rdkafka::message::{Header, OwnedHeaders};

/// The record key: `<tenant_id>:<id>`.
pub(crate) fn key(event: &Event, out: &mut String) {
    out.clear();
    out.push_str(&event.tenant_id);
    out.push(':');
    out.push_str(&event.id);
}

/// The record value, replacing what `out` held.
pub(crate) fn value(event: &Event, out: &mut Vec<u8>) {
    out.clear();
    jsonl::encode_line(event, out);
    // The line always ends with the newline that only files need.
    out.pop();
}

/// The record headers as `(name, value)` pairs, in the order they are sent.
pub(crate) fn header_pairs(event: &Event) -> [(&'static str, String); 6] {
    let mut time = Vec::with_capacity(28);
    json::write_time_100ns(&mut time, &event.version_time);
    [
        ("tenant", event.tenant_name.clone()),
        ("tenant_id", event.tenant_id.clone()),
        ("stream", event.stream.as_str().to_string()),
        ("feed", event.feed.as_str().to_string()),
        ("id", event.id.clone()),
        ("version_time", String::from_utf8_lossy(&time).into_owned()),
    ]
}

/// The record headers, ready for librdkafka.
pub(crate) fn headers(event: &Event) -> OwnedHeaders {
    let pairs = header_pairs(event);
    let mut h = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        h = h.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use rdkafka::message::Headers;
    use relay_config::Feed;

    fn incident() -> Event {
        let mut e = event(M365D_INCIDENTS, 0, Feed::M365dIncidents);
        e.raw = serde_json::value::RawValue::from_string(
            r#"{"incidentId":924565,"incidentName":"Ransomware activity","severity":"Medium"}"#
                .into(),
        )
        .unwrap()
        .into();
        e
    }

    #[test]
    fn key_is_tenant_id_and_item_id() {
        let mut k = String::from("stale");
        key(&incident(), &mut k);
        assert_eq!(k, "3adb963c-8e61-48e8-a06d-6dbb0dacea39:924565");
    }

    #[test]
    fn value_is_the_jsonl_record_without_newline() {
        let mut v = b"stale".to_vec();
        value(&incident(), &mut v);
        assert_eq!(
            String::from_utf8(v).unwrap(),
            concat!(
                r#"{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","#,
                r#""stream":"incidents","feed":"m365d_incidents","id":"924565","#,
                r#""version_time":"2020-09-06T14:46:57.2900000Z","severity":"medium","#,
                r#""title":"Ransomware activity","#,
                r#""event":{"incidentId":924565,"incidentName":"Ransomware activity","severity":"Medium"}}"#,
            )
        );
    }

    #[test]
    fn headers_carry_the_envelope() {
        let e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        let expected = [
            ("tenant", "contoso".to_string()),
            (
                "tenant_id",
                "3adb963c-8e61-48e8-a06d-6dbb0dacea39".to_string(),
            ),
            ("stream", "alerts".to_string()),
            ("feed", "graph_alerts".to_string()),
            ("id", e.id.clone()),
            ("version_time", "2023-10-20T09:54:07.5033333Z".to_string()),
        ];
        assert_eq!(header_pairs(&e), expected);
        let owned = headers(&e);
        let got: Vec<(String, String)> = owned
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(got, want);
    }
}
