//! Turning one response body into items: pure, no I/O, benchmarked in
//! `benches/parse_pages.rs`.
//!
//! A page is read in two passes over the bytes. The envelope pass borrows every element
//! of `value` as a `&RawValue` (a validating scan, no tree is built); then a small seeded
//! visitor reads only the feed's id and last-update fields of each element and skips the
//! rest. The element's bytes are kept verbatim, so every field an analyst may need —
//! including ones this crate has never heard of — reaches the sinks unchanged.

use std::fmt;

use chrono::{DateTime, Utc};
use relay_config::Feed;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::odata_time::parse_timestamp;

/// One parsed element of a page: its id, its version time and its original JSON.
#[derive(Debug, Clone)]
pub struct PageItem {
    /// The item's id as a string (XDR's numeric `incidentId` printed in decimal).
    pub id: String,
    /// The feed's last-update time, at full precision.
    pub last_update: DateTime<Utc>,
    /// The element exactly as the API sent it.
    pub raw: Box<RawValue>,
}

/// One response body, parsed.
#[derive(Debug, Clone)]
pub struct Page {
    /// The elements of `value`, in the order the API sent them.
    pub items: Vec<PageItem>,
    /// `@odata.nextLink`, when the API sent one.
    pub next_link: Option<String>,
}

/// Why a body is not a usable page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body looks like an HTML document (an error page from a proxy or gateway).
    #[error("html instead of json: {snippet:?}")]
    Html {
        /// The start of the body.
        snippet: String,
    },
    /// The body ends before the JSON does: the connection was cut mid-body.
    #[error("truncated json after {len} bytes: {detail}")]
    Truncated {
        /// How many bytes arrived.
        len: usize,
        /// What the JSON parser said.
        detail: String,
    },
    /// The body is not JSON, or not an OData collection (`{"value": [...]}`).
    #[error("malformed page: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// An element of `value` lacks a usable id or time field.
    #[error("item {index} (id {id}) of the page: {detail}")]
    BadItem {
        /// Position of the element in `value`.
        index: usize,
        /// The element's id, or `?` when that is what is missing.
        id: String,
        /// What is wrong, naming the field.
        detail: String,
    },
}

impl ParseError {
    /// Whether fetching the same page again may succeed: a cut connection or a gateway's
    /// HTML page may; a malformed document or item will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, ParseError::Html { .. } | ParseError::Truncated { .. })
    }
}

/// Whether a body is an HTML document rather than JSON.
pub fn looks_like_html(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'<')
}

/// The start of a body, for error messages; at most `max` characters.
pub fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    let mut out: String = trimmed.chars().take(max).collect();
    if trimmed.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: Option<Vec<&'a RawValue>>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Parses one response body of `feed` into a [`Page`].
pub fn parse_page(feed: Feed, bytes: &[u8]) -> Result<Page, ParseError> {
    if looks_like_html(bytes) {
        return Err(ParseError::Html {
            snippet: snippet(bytes, 120),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ParseError::Malformed {
        detail: format!("not utf-8: {e}"),
    })?;
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_eof() {
            ParseError::Truncated {
                len: bytes.len(),
                detail: e.to_string(),
            }
        } else {
            ParseError::Malformed {
                detail: e.to_string(),
            }
        }
    })?;
    let Some(values) = envelope.value else {
        return Err(ParseError::Malformed {
            detail: "no `value` array".to_string(),
        });
    };
    let mut items = Vec::with_capacity(values.len());
    for (index, raw) in values.into_iter().enumerate() {
        items.push(parse_item(feed, index, raw)?);
    }
    Ok(Page {
        items,
        next_link: envelope.next_link,
    })
}

fn parse_item(feed: Feed, index: usize, raw: &RawValue) -> Result<PageItem, ParseError> {
    let bad = |id: Option<&str>, detail: String| ParseError::BadItem {
        index,
        id: id.unwrap_or("?").to_string(),
        detail,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let head = HeadSeed { feed }
        .deserialize(&mut de)
        .map_err(|e| bad(None, e.to_string()))?;
    let id = match head.id {
        Some(IdValue::Text(id)) if !id.is_empty() => id,
        Some(IdValue::Text(_)) => return Err(bad(None, format!("`{}` is empty", feed.id_field()))),
        Some(IdValue::Null) | None => {
            return Err(bad(None, format!("no `{}` field", feed.id_field())))
        }
    };
    let last_update = match head.time {
        Some(TimeValue::Parsed(t)) => t,
        Some(TimeValue::Unparsable(s)) => {
            return Err(bad(
                Some(&id),
                format!("`{}` is not a timestamp: {s:?}", feed.time_field()),
            ))
        }
        Some(TimeValue::Null) | None => {
            return Err(bad(Some(&id), format!("no `{}` field", feed.time_field())))
        }
    };
    Ok(PageItem {
        id,
        last_update,
        raw: raw.to_owned(),
    })
}

/// The two fields of an element the client needs.
struct Head {
    id: Option<IdValue>,
    time: Option<TimeValue>,
}

enum IdValue {
    Text(String),
    Null,
}

enum TimeValue {
    Parsed(DateTime<Utc>),
    Unparsable(String),
    Null,
}

/// Reads `feed.id_field()` and `feed.time_field()` of one element, skipping every other
/// field without building it.
struct HeadSeed {
    feed: Feed,
}

enum Key {
    Id,
    Time,
    Other,
}

struct KeySeed {
    feed: Feed,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(if v == self.feed.id_field() {
            Key::Id
        } else if v == self.feed.time_field() {
            Key::Time
        } else {
            Key::Other
        })
    }
}

impl<'de> DeserializeSeed<'de> for HeadSeed {
    type Value = Head;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed {
    type Value = Head;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = Head {
            id: None,
            time: None,
        };
        while let Some(key) = map.next_key_seed(KeySeed { feed: self.feed })? {
            match key {
                Key::Id => {
                    if head.id.is_some() {
                        return Err(de::Error::duplicate_field(self.feed.id_field()));
                    }
                    head.id = Some(map.next_value::<IdValue>()?);
                }
                Key::Time => {
                    if head.time.is_some() {
                        return Err(de::Error::duplicate_field(self.feed.time_field()));
                    }
                    head.time = Some(map.next_value::<TimeValue>()?);
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IdValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or integer id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdValue, E> {
                Ok(IdValue::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<IdValue, E> {
                Ok(IdValue::Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdValue, E> {
                Ok(IdValue::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdValue, E> {
                Ok(IdValue::Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IdValue, E> {
                Ok(IdValue::Null)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for TimeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TimeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a timestamp string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeValue, E> {
                Ok(match parse_timestamp(v) {
                    Some(t) => TimeValue::Parsed(t),
                    None => TimeValue::Unparsable(v.to_string()),
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<TimeValue, E> {
                Ok(TimeValue::Null)
            }
            // Numbers and booleans are reported as unparsable values, so that the error
            // can name the item rather than fail the element as a whole.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeValue, E> {
                Ok(TimeValue::Unparsable(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeValue, E> {
                Ok(TimeValue::Unparsable(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TimeValue, E> {
                Ok(TimeValue::Unparsable(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<TimeValue, E> {
                Ok(TimeValue::Unparsable(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ids_and_times(page: &Page) -> Vec<(String, String)> {
        page.items
            .iter()
            .map(|i| {
                (
                    i.id.clone(),
                    crate::odata_time::filter_literal(i.last_update),
                )
            })
            .collect()
    }

    #[test]
    fn xdr_incidents_sample_numeric_ids() {
        let page =
            parse_page(Feed::M365dIncidents, &sample("m365d-incidents-list-1.json")).unwrap();
        assert_eq!(
            ids_and_times(&page),
            [
                (
                    "924565".to_string(),
                    "2020-09-06T14:46:57.2900000Z".to_string()
                ),
                (
                    "924521".to_string(),
                    "2020-09-06T12:18:03.8100000Z".to_string()
                ),
                (
                    "924518".to_string(),
                    "2020-09-06T12:07:55.3200000Z".to_string()
                ),
            ]
        );
        assert_eq!(page.next_link, None);
    }

    #[test]
    fn graph_alerts_sample() {
        let page = parse_page(Feed::GraphAlerts, &sample("graph-alerts_v2-1.json")).unwrap();
        assert_eq!(
            ids_and_times(&page),
            [
                (
                    "daefa1828b-dd4e-405c-8a3b-aa28596830dd_1".to_string(),
                    "2023-10-20T09:54:07.5033333Z".to_string()
                ),
                (
                    "da2046fc02-67f1-41f5-923d-ef916d70c005_1".to_string(),
                    "2023-10-20T09:54:10.4666667Z".to_string()
                ),
            ]
        );
        let docs = parse_page(Feed::GraphAlerts, &sample("graph-alerts_v2-3-docs.json")).unwrap();
        assert_eq!(docs.items.len(), 1);
        assert_eq!(docs.items[0].id, "da637551227677560813_-961444813");
    }

    #[test]
    fn graph_incidents_sample_ignores_nested_alert_fields() {
        let page = parse_page(
            Feed::GraphIncidents,
            &sample("graph-incidents-expand-alerts-1.json"),
        )
        .unwrap();
        // The nested alert has its own `id` and `lastUpdateDateTime`; only the
        // incident's count.
        assert_eq!(
            ids_and_times(&page),
            [(
                "2972395".to_string(),
                "2021-09-30T09:35:45.1133333Z".to_string()
            )]
        );
    }

    #[test]
    fn mde_alerts_sample() {
        let page = parse_page(
            Feed::MdeAlerts,
            &sample("mde-alerts-expand-evidence-1.json"),
        )
        .unwrap();
        assert_eq!(
            ids_and_times(&page),
            [(
                "da637472900382838869_1364969609".to_string(),
                "2021-01-26T20:33:59.2000000Z".to_string()
            )]
        );
    }

    #[test]
    fn empty_page() {
        let page = parse_page(
            Feed::GraphAlerts,
            &sample("graph-alerts_v2-empty-page.json"),
        )
        .unwrap();
        assert!(page.items.is_empty());
    }

    #[test]
    fn raw_keeps_every_byte_of_the_element() {
        let bytes = sample("graph-incidents-expand-alerts-1.json");
        let page = parse_page(Feed::GraphIncidents, &bytes).unwrap();
        let whole: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let raw: serde_json::Value = serde_json::from_str(page.items[0].raw.get()).unwrap();
        assert_eq!(raw, whole["value"][0]);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.contains(page.items[0].raw.get()),
            "raw must be a verbatim slice"
        );
    }

    #[test]
    fn next_link_is_kept() {
        let body = br#"{"@odata.nextLink":"https://graph.microsoft.com/v1.0/security/alerts_v2?$skiptoken=abc","value":[{"id":"a","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let page = parse_page(Feed::GraphAlerts, body).unwrap();
        assert_eq!(
            page.next_link.as_deref(),
            Some("https://graph.microsoft.com/v1.0/security/alerts_v2?$skiptoken=abc")
        );
    }

    #[test]
    fn ids_may_be_numbers_or_strings_on_any_feed() {
        let body = br#"{"value":[{"incidentId":"77","lastUpdateTime":"2024-01-01T00:00:00Z"},{"incidentId":-5,"lastUpdateTime":"2024-01-01T00:00:00Z"},{"incidentId":18446744073709551615,"lastUpdateTime":"2024-01-01T00:00:00Z"}]}"#;
        let page = parse_page(Feed::M365dIncidents, body).unwrap();
        let ids: Vec<_> = page.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["77", "-5", "18446744073709551615"]);
    }

    #[test]
    fn zero_to_seven_fraction_digits_at_full_precision() {
        let mut body = String::from(r#"{"value":["#);
        for digits in 0..=7 {
            let frac = if digits == 0 {
                String::new()
            } else {
                format!(".{}", &"1234567"[..digits])
            };
            if digits > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"id":"{digits}","lastUpdateDateTime":"2024-02-29T23:59:59{frac}Z"}}"#
            ));
        }
        body.push_str("]}");
        let page = parse_page(Feed::GraphAlerts, body.as_bytes()).unwrap();
        let nanos: Vec<u32> = page
            .items
            .iter()
            .map(|i| i.last_update.timestamp_subsec_nanos())
            .collect();
        assert_eq!(
            nanos,
            [
                0,
                100_000_000,
                120_000_000,
                123_000_000,
                123_400_000,
                123_450_000,
                123_456_000,
                123_456_700
            ]
        );
    }

    #[test]
    fn escaped_field_names_still_match() {
        let body = br#"{"value":[{"\u0069d":"x","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let page = parse_page(Feed::GraphAlerts, body).unwrap();
        assert_eq!(page.items[0].id, "x");
    }

    #[test]
    fn missing_time_names_the_item() {
        let body = br#"{"value":[{"id":"ok","lastUpdateDateTime":"2024-01-01T00:00:00Z"},{"id":"da123","createdDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
        assert_eq!(
            err,
            ParseError::BadItem {
                index: 1,
                id: "da123".into(),
                detail: "no `lastUpdateDateTime` field".into()
            }
        );
        assert!(err.to_string().contains("da123"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn null_or_garbage_time_names_the_item() {
        let body = br#"{"value":[{"incidentId":5,"lastUpdateTime":null}]}"#;
        let err = parse_page(Feed::M365dIncidents, body).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadItem { id, .. } if id == "5"),
            "{err:?}"
        );
        let body = br#"{"value":[{"incidentId":5,"lastUpdateTime":"soon"}]}"#;
        let err = parse_page(Feed::M365dIncidents, body).unwrap_err();
        assert!(err.to_string().contains("\"soon\""), "{err}");
        let body = br#"{"value":[{"incidentId":5,"lastUpdateTime":1700000000}]}"#;
        let err = parse_page(Feed::M365dIncidents, body).unwrap_err();
        assert!(
            matches!(&err, ParseError::BadItem { id, .. } if id == "5"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_or_bad_id_is_an_error() {
        for body in [
            &br#"{"value":[{"lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#[..],
            br#"{"value":[{"id":null,"lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#,
            br#"{"value":[{"id":"","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#,
            br#"{"value":[{"id":{"x":1},"lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#,
            br#"{"value":[{"id":"a","id":"b","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#,
            br#"{"value":[17]}"#,
        ] {
            let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
            assert!(
                matches!(err, ParseError::BadItem { index: 0, .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn truncated_body_is_transient() {
        let bytes = sample("m365d-incidents-list-1.json");
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 2] {
            let err = parse_page(Feed::M365dIncidents, &bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, ParseError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
            assert!(err.is_transient());
        }
    }

    #[test]
    fn html_error_page_is_recognised() {
        let body = b"\r\n  <!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>";
        let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
        assert!(matches!(&err, ParseError::Html { snippet } if snippet.starts_with("<!DOCTYPE")));
        assert!(err.is_transient());
    }

    #[test]
    fn malformed_bodies() {
        for body in [
            &b"not json"[..],
            b"{\"value\":[1,]}",
            b"{\"value\":{}}",
            b"{\"error\":{\"code\":\"x\"}}",
            b"[]",
            b"{\"value\":null}",
            b"{\"value\":[]} trailing",
            b"\xff\xfe",
            b"",
        ] {
            let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
            assert!(
                matches!(
                    err,
                    ParseError::Malformed { .. } | ParseError::Truncated { .. }
                ),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            parse_page(Feed::GraphAlerts, b"{\"value\":{}}"),
            Err(ParseError::Malformed { .. })
        ));
    }
}
