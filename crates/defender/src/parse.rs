//! Turning one response body into items: pure, no I/O, benchmarked in
//! `benches/parse_pages.rs`.
//!
//! A page is read in two passes over the bytes. The envelope pass borrows every element
//! of `value` as a `&RawValue` (a validating scan, no tree is built); then a small seeded
//! visitor reads, in one pass over each element, the feed's id and last-update fields
//! and the four fields the pipeline turns into an event's severity and title
//! ([`ItemFields`]), and skips the rest. So nothing downstream needs to read the document
//! again to build an event. The element's bytes are kept verbatim, so every field an
//! analyst may need — including ones this crate has never heard of — reaches the sinks
//! unchanged.

use std::cell::Cell;
use std::fmt;

use chrono::{DateTime, Utc};
use relay_config::Feed;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::odata_time::parse_timestamp;

/// One parsed element of a page: its id, its version time, the fields an event's severity
/// and title come from, and its original JSON.
#[derive(Debug, Clone)]
pub struct PageItem {
    /// The item's id as a string (XDR's numeric `incidentId` printed in decimal).
    pub id: String,
    /// The feed's last-update time, at full precision.
    pub last_update: DateTime<Utc>,
    /// `severity` and the title candidates, read in the same pass as `id`.
    pub fields: ItemFields,
    /// The element exactly as the API sent it.
    pub raw: Box<RawValue>,
}

/// The top-level fields of an element that an event's severity and title are made from,
/// read while the element is parsed so that the document need not be read again.
///
/// Each is the field's string value when it is a string with something other than
/// whitespace in it (escapes decoded, not trimmed); anything else — absent, `null`, a
/// number, an object, a blank string — is `None` rather than an error, since neither
/// field is worth losing an item over. When one of the four names occurs twice in the
/// element, or one of their values cannot be read as JSON text (a lone surrogate escape,
/// a number beyond `f64`, nesting deeper than 127 levels), all four are `None`: the rules the
/// pipeline applied when it read these fields from the document itself, kept so that no
/// event changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFields {
    /// `severity` as the API spells it (`High`, `medium`, `UnSpecified`, ...).
    pub severity: Option<String>,
    /// `title` (alerts).
    pub title: Option<String>,
    /// `incidentName` (M365 Defender incidents).
    pub incident_name: Option<String>,
    /// `displayName` (Graph incidents).
    pub display_name: Option<String>,
}

impl ItemFields {
    /// Reads the fields from one document on its own, by the rules [`parse_page`] applies
    /// to each element: for items not made by `parse_page` (tests, replays). A document
    /// that is not a JSON object has none of them.
    pub fn from_raw(raw: &RawValue) -> ItemFields {
        let failed = Cell::new(false);
        read_head(raw, None, true, &failed).map_or_else(|_| ItemFields::default(), |h| h.fields)
    }
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
    let fields_failed = Cell::new(false);
    let head = match read_head(raw, Some(feed), true, &fields_failed) {
        // A severity or title value serde_json cannot read stops the pass midway, yet the
        // element is sound (the envelope pass checks syntax only) and must not fail for a
        // field it can do without: read it again for id and time alone, the four fields
        // absent. Only hostile documents take this path.
        Err(_) if fields_failed.get() => read_head(raw, Some(feed), false, &fields_failed),
        head => head,
    };
    item_from_head(feed, index, raw, head)
}

/// The page item, or the error naming it, from the outcome of reading its head.
fn item_from_head(
    feed: Feed,
    index: usize,
    raw: &RawValue,
    head: Result<Head, serde_json::Error>,
) -> Result<PageItem, ParseError> {
    let bad = |id: Option<&str>, detail: String| ParseError::BadItem {
        index,
        id: id.unwrap_or("?").to_string(),
        detail,
    };
    let head = head.map_err(|e| bad(None, e.to_string()))?;
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
        fields: head.fields,
        raw: raw.to_owned(),
    })
}

/// One pass over `raw`: `feed`'s id and time fields when a feed is given, the
/// [`ItemFields`] when `fields` is set. `fields_failed` is set when the pass stopped on
/// the value of one of those fields.
fn read_head(
    raw: &RawValue,
    feed: Option<Feed>,
    fields: bool,
    fields_failed: &Cell<bool>,
) -> Result<Head, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    HeadSeed {
        feed,
        fields,
        fields_failed,
    }
    .deserialize(&mut de)
}

/// The fields of an element the client reads.
struct Head {
    id: Option<IdValue>,
    time: Option<TimeValue>,
    fields: ItemFields,
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

/// Reads `feed.id_field()` and `feed.time_field()` of one element and, when `fields` is
/// set, the [`ItemFields`]; skips every other field without building it.
struct HeadSeed<'a> {
    feed: Option<Feed>,
    fields: bool,
    fields_failed: &'a Cell<bool>,
}

enum Key {
    Id,
    Time,
    Field(Field),
    Other,
}

/// The names [`ItemFields`] are read from.
#[derive(Clone, Copy)]
enum Field {
    Severity,
    Title,
    IncidentName,
    DisplayName,
}

impl Field {
    fn of(name: &str) -> Option<Field> {
        match name {
            "severity" => Some(Field::Severity),
            "title" => Some(Field::Title),
            "incidentName" => Some(Field::IncidentName),
            "displayName" => Some(Field::DisplayName),
            _ => None,
        }
    }

    fn slot(self, fields: &mut ItemFields) -> &mut Option<String> {
        match self {
            Field::Severity => &mut fields.severity,
            Field::Title => &mut fields.title,
            Field::IncidentName => &mut fields.incident_name,
            Field::DisplayName => &mut fields.display_name,
        }
    }
}

struct KeySeed {
    feed: Option<Feed>,
    fields: bool,
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
        if let Some(feed) = self.feed {
            if v == feed.id_field() {
                return Ok(Key::Id);
            }
            if v == feed.time_field() {
                return Ok(Key::Time);
            }
        }
        Ok(match Field::of(v) {
            Some(field) if self.fields => Key::Field(field),
            _ => Key::Other,
        })
    }
}

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = Head;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = Head;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = Head {
            id: None,
            time: None,
            fields: ItemFields::default(),
        };
        let mut fields = self.fields;
        let mut met = [false; 4];
        while let Some(key) = map.next_key_seed(KeySeed {
            feed: self.feed,
            fields,
        })? {
            match (key, self.feed) {
                (Key::Id, Some(feed)) => {
                    if head.id.is_some() {
                        return Err(de::Error::duplicate_field(feed.id_field()));
                    }
                    head.id = Some(map.next_value::<IdValue>()?);
                }
                (Key::Time, Some(feed)) => {
                    if head.time.is_some() {
                        return Err(de::Error::duplicate_field(feed.time_field()));
                    }
                    head.time = Some(map.next_value::<TimeValue>()?);
                }
                (Key::Field(field), _) if met[field as usize] => {
                    // A document with a repeated severity or title name has none of the
                    // four (see `ItemFields`); its id and time are still read.
                    fields = false;
                    head.fields = ItemFields::default();
                    map.next_value::<IgnoredAny>()?;
                }
                (Key::Field(field), _) => {
                    met[field as usize] = true;
                    match map.next_value::<Text>() {
                        Ok(Text(text)) => *field.slot(&mut head.fields) = text,
                        Err(e) => {
                            self.fields_failed.set(true);
                            return Err(e);
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// The value of one of the [`ItemFields`]: the text of a string with something other than
/// whitespace in it, else nothing. Values of other types are walked in full through
/// `deserialize_any` rather than skipped, so that exactly the values serde_json cannot
/// read as a value make the four fields unreadable, as they did when the pipeline read
/// them into an untagged enum (which buffers every value the same way).
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text((!v.trim().is_empty()).then(|| v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text((!v.trim().is_empty()).then_some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
                AnyValue.visit_seq(seq).map(|()| Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                AnyValue.visit_map(map).map(|()| Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, read through `deserialize_any` at every level and discarded (unlike
/// `IgnoredAny`, which serde_json skips without decoding strings or numbers and without a
/// depth limit).
struct AnyValue;

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyValue).map(|()| AnyValue)
    }
}

impl<'de> Visitor<'de> for AnyValue {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<AnyValue>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<AnyValue, AnyValue>()?.is_some() {}
        Ok(())
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

    /// `(severity, title, incidentName, displayName)` of each item.
    fn fields_of(page: &Page) -> Vec<[Option<&str>; 4]> {
        page.items
            .iter()
            .map(|i| {
                let f = &i.fields;
                [
                    f.severity.as_deref(),
                    f.title.as_deref(),
                    f.incident_name.as_deref(),
                    f.display_name.as_deref(),
                ]
            })
            .collect()
    }

    #[test]
    fn severity_and_titles_are_read_on_every_feed() {
        let page =
            parse_page(Feed::M365dIncidents, &sample("m365d-incidents-list-1.json")).unwrap();
        assert_eq!(
            fields_of(&page),
            [
                [Some("Medium"), None, Some("Ransomware activity"), None],
                [
                    Some("Low"),
                    None,
                    Some("'Mimikatz' hacktool was detected on one endpoint"),
                    None
                ],
                [
                    Some("Informational"),
                    None,
                    Some("Email reported by user as malware or phish"),
                    None
                ],
            ]
        );
        let page = parse_page(Feed::GraphAlerts, &sample("graph-alerts_v2-1.json")).unwrap();
        assert_eq!(
            fields_of(&page),
            [
                [
                    Some("medium"),
                    Some("Suspicious PowerShell command line"),
                    None,
                    None
                ],
                [
                    Some("informational"),
                    Some("[Test Alert] Suspicious Powershell commandline"),
                    None,
                    None
                ],
            ]
        );
        // The incident's alerts have their own `title` and `severity`; only the
        // incident's own fields count.
        let page = parse_page(
            Feed::GraphIncidents,
            &sample("graph-incidents-expand-alerts-1.json"),
        )
        .unwrap();
        assert_eq!(
            fields_of(&page),
            [[
                Some("medium"),
                None,
                None,
                Some(
                    "Multi-stage incident involving Initial access & Command and control on \
                     multiple endpoints reported by multiple sources"
                )
            ]]
        );
        let page = parse_page(
            Feed::MdeAlerts,
            &sample("mde-alerts-expand-evidence-1.json"),
        )
        .unwrap();
        assert_eq!(
            fields_of(&page),
            [[
                Some("Low"),
                Some("Low-reputation arbitrary code executed by signed executable"),
                None,
                None
            ]]
        );
    }

    #[test]
    fn escaped_titles_come_out_unescaped() {
        let body = br#"{"value":[{"id":"da1","lastUpdateDateTime":"2024-01-01T00:00:00Z","title":"Suspicious \"PowerShell\" by caf\u00e9 \ud83d\ude00\n\t\\ \/x","sev\u0065rity":"\u0048igh","displayName":"plain"}]}"#;
        let page = parse_page(Feed::GraphAlerts, body).unwrap();
        assert_eq!(
            fields_of(&page),
            [[
                Some("High"),
                Some("Suspicious \"PowerShell\" by caf\u{e9} \u{1f600}\n\t\\ /x"),
                None,
                Some("plain")
            ]]
        );
    }

    #[test]
    fn odd_types_and_blank_strings_are_absent() {
        for (value, expected) in [
            ("42", None),
            ("-1.5e3", None),
            ("true", None),
            ("null", None),
            (r#"{"title":"nested"}"#, None),
            (r#"["a","b"]"#, None),
            (r#""""#, None),
            (r#"" \t\n\u00a0""#, None),
            // Kept as sent, surrounding blanks included.
            (r#""  Low ""#, Some("  Low ")),
        ] {
            let body = format!(
                r#"{{"value":[{{"incidentId":1,"severity":{value},"incidentName":{value},"displayName":{value},"title":{value},"lastUpdateTime":"2024-01-01T00:00:00Z"}}]}}"#
            );
            let page = parse_page(Feed::M365dIncidents, body.as_bytes()).unwrap();
            assert_eq!(fields_of(&page), [[expected; 4]], "{value}");
        }
        // One odd field takes nothing from the others.
        let body = br#"{"value":[{"id":"a","title":{"x":[1]},"severity":"low","displayName":"shown","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let page = parse_page(Feed::GraphAlerts, body).unwrap();
        assert_eq!(fields_of(&page), [[Some("low"), None, None, Some("shown")]]);
    }

    #[test]
    fn missing_fields_are_absent() {
        let body = br#"{"value":[{"id":"a","lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let page = parse_page(Feed::GraphAlerts, body).unwrap();
        assert_eq!(page.items[0].fields, ItemFields::default());
    }

    /// What the pipeline's normalize step did when it read these fields from the document
    /// itself, before they were read during the page pass: the reference the page pass
    /// must match.
    fn fields_as_normalize_read_them(raw: &RawValue) -> ItemFields {
        use std::borrow::Cow;

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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text<'a> {
            Str(#[serde(borrow)] Cow<'a, str>),
            Other(IgnoredAny),
        }
        let text = |t: Option<Text<'_>>| match t {
            Some(Text::Str(s)) if !s.trim().is_empty() => Some(s.into_owned()),
            _ => None,
        };
        let f: Fields<'_> = serde_json::from_str(raw.get()).unwrap_or_default();
        ItemFields {
            severity: text(f.severity),
            title: text(f.title),
            incident_name: text(f.incident_name),
            display_name: text(f.display_name),
        }
    }

    /// Nested arrays `depth` deep.
    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn repeated_field_names_leave_all_four_absent_as_before() {
        for doc in [
            r#"{"id":"a","severity":"high","title":"t","severity":"low","lastUpdateDateTime":"2024-01-01T00:00:00Z"}"#,
            r#"{"id":"a","severity":null,"severity":"low","title":"t","lastUpdateDateTime":"2024-01-01T00:00:00Z"}"#,
            r#"{"id":"a","severity":"high","title":"t","t\u0069tle":"u","lastUpdateDateTime":"2024-01-01T00:00:00Z"}"#,
            r#"{"displayName":1,"id":"a","severity":"high","title":"t","lastUpdateDateTime":"2024-01-01T00:00:00Z","displayName":"d"}"#,
        ] {
            let raw = RawValue::from_string(doc.to_string()).unwrap();
            assert_eq!(fields_as_normalize_read_them(&raw), ItemFields::default());
            let body = format!(r#"{{"value":[{doc}]}}"#);
            let page = parse_page(Feed::GraphAlerts, body.as_bytes()).unwrap();
            assert_eq!(page.items[0].id, "a", "{doc}");
            assert_eq!(page.items[0].fields, ItemFields::default(), "{doc}");
            assert_eq!(ItemFields::from_raw(&raw), ItemFields::default(), "{doc}");
        }
    }

    #[test]
    fn unreadable_field_values_leave_all_four_absent_and_the_item_whole() {
        for value in [
            r#""\ud800""#.to_string(),
            r#""lone \udc00 low""#.to_string(),
            "1e400".to_string(),
            r#"{"deep":[1,"\ud800"]}"#.to_string(),
            r#"[-1e999]"#.to_string(),
            nested(127),
            nested(200),
        ] {
            let doc = format!(
                r#"{{"id":"a","severity":"high","displayName":"d","title":{value},"lastUpdateDateTime":"2024-01-01T00:00:00Z","incidentName":"i"}}"#
            );
            let raw = RawValue::from_string(doc.clone()).unwrap();
            assert_eq!(
                fields_as_normalize_read_them(&raw),
                ItemFields::default(),
                "{value}"
            );
            let body = format!(r#"{{"value":[{doc}]}}"#);
            let page = parse_page(Feed::GraphAlerts, body.as_bytes()).unwrap();
            assert_eq!(page.items[0].id, "a");
            assert_eq!(page.items[0].raw.get(), doc);
            assert_eq!(page.items[0].fields, ItemFields::default(), "{value}");
            // The same values elsewhere are skipped, not read.
            let doc = format!(
                r#"{{"id":"a","severity":"high","description":{value},"lastUpdateDateTime":"2024-01-01T00:00:00Z"}}"#
            );
            let body = format!(r#"{{"value":[{doc}]}}"#);
            let page = parse_page(Feed::GraphAlerts, body.as_bytes()).unwrap();
            assert_eq!(page.items[0].fields.severity.as_deref(), Some("high"));
        }
        // Just inside serde_json's depth limit of 127 levels (the element is the first).
        let doc = format!(r#"{{"id":"a","title":{},"severity":"low"}}"#, nested(126));
        let raw = RawValue::from_string(doc).unwrap();
        assert_eq!(ItemFields::from_raw(&raw).severity.as_deref(), Some("low"));
        assert_eq!(
            fields_as_normalize_read_them(&raw),
            ItemFields::from_raw(&raw)
        );
    }

    #[test]
    fn unreadable_title_does_not_change_the_error_of_a_bad_item() {
        // The title stops the first pass; the error comes from the id, at the same place
        // as without fields being read.
        let body = br#"{"value":[{"title":"\ud800","id":{"x":1},"lastUpdateDateTime":"2024-01-01T00:00:00Z"}]}"#;
        let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
        let ParseError::BadItem { index, id, detail } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*index, id.as_str()), (0, "?"));
        assert!(detail.starts_with("invalid type: map"), "{detail}");
        let body = br#"{"value":[{"id":"b","title":"\ud800","lastUpdateDateTime":"soon"}]}"#;
        let err = parse_page(Feed::GraphAlerts, body).unwrap_err();
        assert_eq!(
            err,
            ParseError::BadItem {
                index: 0,
                id: "b".into(),
                detail: "`lastUpdateDateTime` is not a timestamp: \"soon\"".into()
            }
        );
    }

    #[test]
    fn not_an_object_has_no_fields() {
        for doc in ["[1,2,3]", r#"["high","title"]"#, "17", r#""title""#, "null"] {
            let raw = RawValue::from_string(doc.to_string()).unwrap();
            assert_eq!(ItemFields::from_raw(&raw), ItemFields::default(), "{doc}");
        }
    }

    mod same_as_before {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 11] = [
            "severity",
            "title",
            "incidentName",
            "displayName",
            "t\\u0069tle",
            "severit\\u0079",
            "id",
            "lastUpdateDateTime",
            "description",
            "Title",
            "alerts",
        ];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(r#""High""#.to_string()),
                Just(r#""\u0068igh""#.to_string()),
                Just(r#""Suspicious \"PowerShell\" caf\u00e9""#.to_string()),
                Just(r#""  ""#.to_string()),
                Just(r#""""#.to_string()),
                Just(r#""\ud800""#.to_string()),
                Just(r#""\ud83d\ude00""#.to_string()),
                Just("42".to_string()),
                Just("-0.5".to_string()),
                Just("1e400".to_string()),
                Just("18446744073709551616".to_string()),
                Just("null".to_string()),
                Just("false".to_string()),
                Just(r#"{"title":"x","severity":"high"}"#.to_string()),
                Just(r#"[1,{"a":"\ud800"}]"#.to_string()),
                Just("[]".to_string()),
                Just(nested(126)),
                Just(nested(127)),
                Just(nested(130)),
                Just(r#""2024-01-01T00:00:00Z""#.to_string()),
                "[a-zA-Z \u{e9}\u{1f600}]{0,12}".prop_map(|s| format!("{s:?}")),
            ]
        }

        fn doc() -> impl Strategy<Value = String> {
            (
                proptest::collection::vec((0..KEYS.len(), value()), 0..8),
                0..9usize,
                any::<bool>(),
            )
                .prop_map(|(entries, at, with_head)| {
                    let mut parts: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v)| format!(r#""{}":{v}"#, KEYS[k]))
                        .collect();
                    if with_head {
                        let at = at.min(parts.len());
                        parts.insert(
                            at,
                            r#""id":"x","lastUpdateDateTime":"2024-01-01T00:00:00Z""#.to_string(),
                        );
                    }
                    format!("{{ {} }}", parts.join(" ,\n"))
                })
        }

        proptest! {
            #[test]
            fn fields_match_normalize_and_items_parse_as_without_them(doc in doc()) {
                let raw = RawValue::from_string(doc.clone()).unwrap();
                let before = fields_as_normalize_read_them(&raw);
                prop_assert_eq!(&ItemFields::from_raw(&raw), &before);

                let fused = parse_item(Feed::GraphAlerts, 3, &raw);
                let head_only = item_from_head(
                    Feed::GraphAlerts,
                    3,
                    &raw,
                    read_head(&raw, Some(Feed::GraphAlerts), false, &Cell::new(false)),
                );
                match (fused, head_only) {
                    (Ok(a), Ok(b)) => {
                        prop_assert_eq!(&a.fields, &before);
                        prop_assert_eq!(b.fields, ItemFields::default());
                        prop_assert_eq!((a.id, a.last_update), (b.id, b.last_update));
                        prop_assert_eq!(a.raw.get(), doc.as_str());
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (a, b) => prop_assert!(false, "fused {:?}, head only {:?}", a, b),
                }
            }
        }
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
