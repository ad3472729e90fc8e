//! The typed mapping (`mapping.rs` reading `doc.rs`) against the `Value` mapping it
//! replaced (`legacy.rs`): the same line, byte for byte, for every item of every sample page
//! under every feed, for hostile variants of them (wrong types, duplicate keys, escapes,
//! documents `Value` refuses), and for generated documents.

use super::*;
use crate::event::testdata::*;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Value};

const FEEDS: [Feed; 4] = [
    Feed::GraphAlerts,
    Feed::MdeAlerts,
    Feed::GraphIncidents,
    Feed::M365dIncidents,
];

/// Every item of every page in `testdata/`, with the feed it came from.
fn sample_items() -> Vec<(Feed, Value)> {
    let mut items = Vec::new();
    for (page, feed) in [
        (GRAPH_ALERTS, Feed::GraphAlerts),
        (GRAPH_ALERTS_DOCS, Feed::GraphAlerts),
        (MDE_ALERTS, Feed::MdeAlerts),
        (M365D_INCIDENTS, Feed::M365dIncidents),
        (GRAPH_INCIDENTS, Feed::GraphIncidents),
    ] {
        let page: Value = serde_json::from_str(page).unwrap();
        for item in page["value"].as_array().unwrap() {
            items.push((feed, item.clone()));
        }
    }
    assert_eq!(items.len(), 8);
    items
}

/// Both mappings of `raw` under `feed`, with and without an envelope title (without one,
/// the mapping reads the document's).
#[track_caller]
fn assert_same(feed: Feed, raw: &str) {
    for title in [None, Some("Envelope | title")] {
        assert_same_with_title(feed, raw, title);
    }
}

#[track_caller]
fn assert_same_with_title(feed: Feed, raw: &str, title: Option<&str>) {
    let mut e = event_with_raw("{}");
    e.feed = feed;
    e.stream = feed.stream();
    e.raw = RawValue::from_string(raw.to_string()).unwrap().into();
    e.title = title.map(str::to_string);
    let opts = CefOptions::default();
    let mut new = String::new();
    mapping::encode(&e, &opts, &mut new);
    let mut old = String::new();
    legacy::encode(&e, &opts, &mut old);
    assert_eq!(new, old, "feed {feed:?}, title {title:?}, document {raw}");
}

/// Texts a customer's attacker can put into an alert, and the CEF-special characters.
const HOSTILE: &[&str] = &[
    "",
    "   ",
    " padded ",
    "CEF:0|Vendor|Product|1|sig|name|10|cs1=x = y \\ z",
    "line\nbreak\r\nand\rreturn",
    "nul\u{0}inside",
    "quote \" backslash \\ slash / tab \t",
    "Ångström 可疑的 🔥🛡️ \u{2028}\u{feff}",
    "#microsoft.graph.security.deviceEvidence",
    "#microsoft.graph.security.#microsoft.graph.security.fileEvidence",
    "File",
    "Process",
    "2024-02-29T23:59:59.9999999Z",
    " 2023-10-20T09:54:07.5033333+02:00 ",
    "fe80::cfe4:80b:615c:38fb",
    " 10.1.2.3 ",
    "host.sub.example.com",
];

/// Values of every JSON type, for fields the mapping expects to be of another.
fn probes() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(1e300),
        json!(-0.0),
        json!([]),
        json!(["a", 1, null, " t ", ["x"], {"y": 1}, "a"]),
        json!({}),
        json!({"accountName": "acct", "fileName": "f.exe", "@odata.type": "x"}),
    ]
}

/// Every key `doc.rs` reads, at any level.
const MAPPED_KEYS: &[&str] = &[
    "detectorId",
    "title",
    "displayName",
    "incidentName",
    "category",
    "detectionSource",
    "incidentId",
    "mitreTechniques",
    "status",
    "description",
    "evidence",
    "createdDateTime",
    "firstActivityDateTime",
    "lastActivityDateTime",
    "threatDisplayName",
    "threatFamilyName",
    "actorDisplayName",
    "alertWebUrl",
    "alertCreationTime",
    "firstEventTime",
    "lastEventTime",
    "threatName",
    "computerDnsName",
    "relatedUser",
    "createdTime",
    "incidentWebUrl",
    "tags",
    "customTags",
    "systemTags",
    "classification",
    "assignedTo",
    "determination",
    "alerts",
    "@odata.type",
    "entityType",
    "deviceDnsName",
    "loggedOnUsers",
    "userAccount",
    "ipAddress",
    "url",
    "fileDetails",
    "imageFile",
    "accountName",
    "userName",
    "userPrincipalName",
    "domainName",
    "fileName",
    "filePath",
    "sha1",
    "sha256",
];

/// Paths (as JSON pointers) of every value under a mapped key, and of every array element
/// under one.
fn mapped_paths(v: &Value, here: String, under_mapped: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let mapped = MAPPED_KEYS.contains(&k.as_str());
                let path = format!("{here}/{}", k.replace('~', "~0").replace('/', "~1"));
                if mapped {
                    out.push(path.clone());
                }
                mapped_paths(child, path, mapped, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let path = format!("{here}/{i}");
                if under_mapped {
                    out.push(path.clone());
                }
                mapped_paths(child, path, under_mapped, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_sample_item_maps_the_same_under_every_feed() {
    for (_, item) in sample_items() {
        for feed in FEEDS {
            assert_same(feed, &item.to_string());
            assert_same(feed, &serde_json::to_string_pretty(&item).unwrap());
        }
    }
}

#[test]
fn every_mapped_field_of_every_sample_maps_the_same_with_a_value_of_any_type() {
    let probes = probes();
    let mut hostile = HOSTILE.iter().cycle();
    for (feed, item) in sample_items() {
        let mut paths = Vec::new();
        mapped_paths(&item, String::new(), false, &mut paths);
        assert!(paths.len() > 5, "{paths:?}");
        for path in &paths {
            // Every type at every path; the hostile texts in turn, three per path (the
            // document's own title is read only without an envelope title).
            let texts = hostile.by_ref().take(3).map(|s| json!(s));
            for probe in probes.iter().cloned().chain(texts) {
                let mut doc = item.clone();
                *doc.pointer_mut(path).unwrap() = probe;
                assert_same_with_title(feed, &doc.to_string(), None);
            }
            let mut doc = item.clone();
            let parent = &path[..path.rfind('/').unwrap()];
            let key = path[path.rfind('/').unwrap() + 1..].to_string();
            if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                m.remove(&key);
                assert_same_with_title(feed, &doc.to_string(), None);
            }
        }
    }
}

/// `doc` (an object's text) with `entry` added as its first member.
fn with_first(doc: &str, entry: &str) -> String {
    assert!(doc.starts_with('{'));
    if doc == "{}" {
        format!("{{{entry}}}")
    } else {
        format!("{{{entry},{}", &doc[1..])
    }
}

/// `doc` (an object's text) with `entry` added as its last member.
fn with_last(doc: &str, entry: &str) -> String {
    assert!(doc.ends_with('}'));
    if doc == "{}" {
        format!("{{{entry}}}")
    } else {
        format!("{},{entry}}}", &doc[..doc.len() - 1])
    }
}

#[test]
fn duplicate_keys_and_repeated_evidence_map_the_same() {
    for (feed, item) in sample_items() {
        let text = item.to_string();
        for (k, v) in item.as_object().unwrap() {
            if !MAPPED_KEYS.contains(&k.as_str()) {
                continue;
            }
            for other in [json!(null), json!("other"), json!(7), json!([])] {
                // The original after the injected value (it wins), then before it.
                let entry = format!("{}:{other}", json!(k));
                assert_same(feed, &with_first(&text, &entry));
                assert_same(feed, &with_last(&text, &entry));
                let entry = format!("{}:{v}", json!(k));
                assert_same(feed, &with_first(&with_last(&text, &entry), &entry));
            }
        }
    }
    // Inside evidence: a null `fileDetails` after a good one, an `@odata.type` changed.
    for doc in [
        r##"{"evidence":[{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":{"fileName":"a.exe","sha1":"1"},"fileDetails":null},{"@odata.type":"#microsoft.graph.security.processEvidence","imageFile":{"fileName":"b.exe"}}]}"##,
        r##"{"evidence":[{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":null,"fileDetails":{"fileName":"a.exe","fileName":"c.exe"}}]}"##,
        // The first file evidence with `fileDetails` wins even when they are null.
        r##"{"evidence":[{"@odata.type":"#microsoft.graph.security.fileEvidence"},{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":null},{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":{"fileName":"second.exe"}},{"@odata.type":"#microsoft.graph.security.processEvidence","imageFile":{"fileName":"image.exe"}}]}"##,
        r##"{"evidence":[{"@odata.type":"#microsoft.graph.security.ipEvidence","@odata.type":"#microsoft.graph.security.urlEvidence","ipAddress":"10.0.0.1","url":"http://x"}]}"##,
        r#"{"evidence":[{"entityType":"File","fileName":"a","fileName":null,"sha1":"s"}],"evidence":[{"entityType":"Process","fileName":"p"}]}"#,
        r#"{"relatedUser":{"userName":"u","userName":"","userPrincipalName":"upn@x"},"computerDnsName":"h.x","computerDnsName":"h.y"}"#,
    ] {
        for feed in FEEDS {
            assert_same(feed, doc);
        }
    }
}

#[test]
fn documents_that_value_refuses_map_the_same() {
    let base = sample_items()[1].1.to_string();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_obj = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let mut entries: Vec<String> = vec![
        // Lone and paired surrogates, in a field read and one not read.
        r#""zzz":"\ud800""#.into(),
        r#""zzz":"\udc00x""#.into(),
        r#""zzz":"\ud800\u0041""#.into(),
        r#""zzz":"\ud83d\ude00""#.into(),
        r#""description":"\ud800""#.into(),
        r#""description":"ok \ud83d\ude00 \u0000 \/ \b\f""#.into(),
        r#""z\ud800":1"#.into(),
        // Numbers beyond f64, and beyond u64 / i64.
        r#""zzz":1e400"#.into(),
        r#""zzz":-1e400"#.into(),
        r#""zzz":1e-400"#.into(),
        r#""incidentId":1e400"#.into(),
        r#""incidentId":18446744073709551616"#.into(),
        r#""incidentId":-9223372036854775809"#.into(),
        r#""incidentId":123456789012345678901234567890"#.into(),
        r#""incidentId":1.0e3"#.into(),
        r#""incidentId":-0"#.into(),
        r#""incidentId":0.1"#.into(),
        r#""incidentId":1E+2"#.into(),
        // Escaped keys.
        r#""t\u0069tle":"escaped key""#.into(),
        r#""\u0064escription":"escaped description""#.into(),
    ];
    // Nesting around serde_json's limit of 128, in a field that is not read and in one
    // that is.
    for n in [126, 127, 128, 129] {
        entries.push(format!(r#""zzz":{}"#, deep(n)));
        entries.push(format!(r#""zzz":{}"#, deep_obj(n)));
        entries.push(format!(r#""evidence":[{{"zzz":{}}}]"#, deep(n)));
        entries.push(format!(r#""alerts":{}"#, deep(n)));
    }
    for entry in &entries {
        for doc in [with_first(&base, entry), with_last(&base, entry)] {
            // Only documents a RawValue accepts reach the mapping.
            if RawValue::from_string(doc.clone()).is_err() {
                continue;
            }
            for feed in FEEDS {
                assert_same(feed, &doc);
            }
        }
    }
    for doc in [
        "[1,2]",
        "\"x\"",
        "null",
        "1",
        "{}",
        "[]",
        "true",
        "[{\"title\":\"t\"}]",
    ] {
        for feed in FEEDS {
            assert_same(feed, doc);
        }
    }
}

#[test]
fn serde_json_raw_value_marker_keys_map_the_same() {
    const TOKEN: &str = "$serde_json::private::RawValue";
    let item = sample_items()[1].1.clone();
    let text = item.to_string();
    let inner = |json: &str| format!("{}:{}", json!(TOKEN), json!(json));
    let evidence = |e: &str| {
        let mut d = item.clone();
        d["evidence"] = serde_json::from_str(&format!("[{e}]")).unwrap();
        d.to_string()
    };
    let docs = vec![
        // The whole document behind the marker, and broken variants of it.
        format!("{{{}}}", inner(&text)),
        format!("{{{},\"title\":\"more\"}}", inner(&text)),
        format!("{{{}}}", inner("{\"title\":")),
        format!("{{{}}}", inner("[1,2]")),
        format!("{{{}}}", inner(&format!("{} ", text))),
        format!("{{{}}}", inner(&format!("{}x", text))),
        format!("{{{}:{}}}", json!(TOKEN), text),
        format!("{{{}:7}}", json!(TOKEN)),
        // Not the first key: an ordinary key.
        with_last(&text, &inner("{\"title\":\"x\"}")),
        // Nested in read and unread fields.
        with_last(&text, &format!("\"zzz\":{{{}}}", inner("[1"))),
        with_last(&text, &format!("\"zzz\":{{{}}}", inner("{\"a\":[]}"))),
        with_last(&text, &format!("\"zzz\":{{{}}}", inner("\"\\ud800\""))),
        with_last(
            &text,
            &format!("\"description\":{{{}}}", inner("\"from the marker\"")),
        ),
        with_last(&text, &format!("\"incidentId\":{{{}}}", inner("42"))),
        with_last(
            &text,
            &format!("\"mitreTechniques\":{{{}}}", inner("[\"T1\",\" T2 \"]")),
        ),
        with_last(&text, &format!("\"alerts\":{{{}}}", inner("[1,2,3]"))),
        evidence(&format!(
            "{{{}}}",
            inner(
                r##"{"@odata.type":"#microsoft.graph.security.deviceEvidence","deviceDnsName":"marker.example"}"##
            )
        )),
        evidence(&format!(
            r##"{{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":{{{}}}}}"##,
            inner(r#"{"fileName":"m.exe","sha256":"abc"}"#)
        )),
        evidence(&format!(
            r##"{{"@odata.type":"#microsoft.graph.security.fileEvidence","fileDetails":{{{}}}}}"##,
            inner("null")
        )),
        evidence(&format!(
            r##"{{"@odata.type":"#microsoft.graph.security.userEvidence","userAccount":{{{}}}}}"##,
            inner(r#"{"accountName":"m","domainName":"D"}"#)
        )),
        evidence(&format!(
            r##"{{"@odata.type":"#microsoft.graph.security.deviceEvidence","deviceDnsName":"d","loggedOnUsers":[{{{}}}]}}"##,
            inner(r#"{"accountName":"a","domainName":"D"}"#)
        )),
    ];
    for doc in docs {
        if RawValue::from_string(doc.clone()).is_err() {
            continue;
        }
        for feed in FEEDS {
            assert_same(feed, &doc);
        }
    }
}

/// Documents built from the keys the mapping reads, nested, with leaves of every type.
fn arb_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        proptest::sample::select(HOSTILE).prop_map(|s| json!(s)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        4 => proptest::sample::select(MAPPED_KEYS).prop_map(str::to_string),
        1 => "[a-z@.]{1,6}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn generated_documents_map_the_same(
        doc in arb_doc(),
        feed in proptest::sample::select(&FEEDS[..]),
        pretty in any::<bool>(),
    ) {
        let text = if pretty {
            serde_json::to_string_pretty(&doc).unwrap()
        } else {
            doc.to_string()
        };
        assert_same(feed, &text);
    }

    #[test]
    fn sample_items_with_generated_evidence_map_the_same(
        item in proptest::sample::select(sample_items()),
        evidence in proptest::collection::vec(arb_doc(), 0..6),
        kinds in proptest::collection::vec(proptest::sample::select(&[
            "#microsoft.graph.security.deviceEvidence",
            "#microsoft.graph.security.userEvidence",
            "#microsoft.graph.security.ipEvidence",
            "#microsoft.graph.security.urlEvidence",
            "#microsoft.graph.security.fileEvidence",
            "#microsoft.graph.security.processEvidence",
            "File", "Process", "User", "Ip", "Url",
        ][..]), 6),
    ) {
        let (feed, mut doc) = item;
        let evidence: Vec<Value> = evidence
            .into_iter()
            .zip(kinds)
            .map(|(mut e, kind)| {
                if let Value::Object(m) = &mut e {
                    m.insert("@odata.type".into(), json!(kind));
                    m.insert("entityType".into(), json!(kind));
                }
                e
            })
            .collect();
        doc["evidence"] = Value::Array(evidence);
        assert_same(feed, &doc.to_string());
    }
}
