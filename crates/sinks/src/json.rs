//! Small JSON writing helpers shared by the JSON formatters (`jsonl`, `hec`).
//!
//! Written by hand rather than through `serde_json::to_writer` so that formatting into a
//! `Vec<u8>` is infallible by type (no `Result` to swallow) and envelopes can embed the raw
//! document without a tree.

use chrono::{DateTime, Timelike, Utc};
use std::io::Write as _;

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    write_str_parts(out, &[s]);
}

/// Appends the concatenation of `parts` as one JSON string literal, without building it
/// first.
pub(crate) fn write_str_parts(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for s in parts {
        write_escaped(out, s);
    }
    out.push(b'"');
}

fn write_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `s` as a JSON string, or `null`.
pub(crate) fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends a valid JSON document on one line: verbatim when it has no line break, else
/// without insignificant whitespace. `raw` must be valid JSON (it comes from a `RawValue`):
/// then every space, tab, CR or LF outside a string literal is insignificant, and string
/// literals cannot contain raw control characters, so dropping those bytes is exact — key
/// order, number spelling and string escapes stay as the API wrote them.
pub(crate) fn write_compact(out: &mut Vec<u8>, raw: &str) {
    let bytes = raw.as_bytes();
    // The common case, the APIs' own compact JSON, costs one vectorized search of the
    // document (6 KB on average) rather than a loop over its bytes.
    if memchr::memchr2(b'\n', b'\r', bytes).is_none() {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                // Strings are most of a document's bytes: copy each in one piece.
                let end = string_end(bytes, i + 1);
                out.extend_from_slice(&bytes[i..end]);
                i = end;
            }
            _ => {
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b'"') {
                    i += 1;
                }
                out.extend_from_slice(&bytes[start..i]);
            }
        }
    }
}

/// The index just past the closing quote of the string literal whose content starts at
/// `i` (the end of `bytes` if it is not closed).
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    loop {
        match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
            // An escape: the next byte, whatever it is, belongs to it.
            Some(k) if bytes[i + k] == b'\\' => i = (i + k + 2).min(bytes.len()),
            Some(k) => return i + k + 1,
            None => return bytes.len(),
        }
    }
}

/// Appends `t` as an RFC 3339 UTC timestamp with seven fractional digits, the 100 ns
/// precision Defender reports (`2023-10-20T09:54:07.5033333Z`).
pub(crate) fn write_time_100ns(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    // A leap second shows as nanos >= 1e9; clamp rather than print an eighth digit.
    let ticks = (t.nanosecond() / 100).min(9_999_999);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}.{ticks:07}Z", t.format("%Y-%m-%dT%H:%M:%S"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_escape_like_rfc8259() {
        assert_eq!(
            s(|o| write_str(o, "a\"b\\c\nd\re\tf\u{1}g é")),
            r#""a\"b\\c\nd\re\tf\u0001g é""#
        );
    }

    #[test]
    fn parts_make_one_string() {
        assert_eq!(
            s(|o| write_str_parts(o, &["a\"", ":", "\nb"])),
            r#""a\":\nb""#
        );
        assert_eq!(s(|o| write_str_parts(o, &[])), r#""""#);
    }

    #[test]
    fn compact_drops_only_whitespace_outside_strings() {
        let raw = "{\n  \"a b\" : [ 1 , \"x \\\" y\\\\\" ],\r\n\t\"c\": {} }";
        assert_eq!(
            s(|o| write_compact(o, raw)),
            r#"{"a b":[1,"x \" y\\"],"c":{}}"#
        );
    }

    #[test]
    fn time_has_seven_fraction_digits() {
        let t: DateTime<Utc> = "2023-10-20T09:54:07.5033333Z".parse().unwrap();
        assert_eq!(
            s(|o| write_time_100ns(o, &t)),
            "2023-10-20T09:54:07.5033333Z"
        );
        let t: DateTime<Utc> = "2021-01-26T20:33:59Z".parse().unwrap();
        assert_eq!(
            s(|o| write_time_100ns(o, &t)),
            "2021-01-26T20:33:59.0000000Z"
        );
    }

    /// The byte-at-a-time formatter `write_compact` replaced, kept as its reference.
    fn write_compact_reference(out: &mut Vec<u8>, raw: &str) {
        let bytes = raw.as_bytes();
        if !bytes.iter().any(|&b| matches!(b, b'\n' | b'\r')) {
            out.extend_from_slice(bytes);
            return;
        }
        let mut in_string = false;
        let mut escaped = false;
        for &b in bytes {
            if in_string {
                out.push(b);
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'"' => {
                        in_string = true;
                        out.push(b);
                    }
                    _ => out.push(b),
                }
            }
        }
    }

    #[test]
    fn compact_matches_the_reference_on_every_sample_compact_and_pretty() {
        use crate::event::testdata::*;
        for page in [
            GRAPH_ALERTS,
            GRAPH_ALERTS_DOCS,
            MDE_ALERTS,
            M365D_INCIDENTS,
            GRAPH_INCIDENTS,
        ] {
            let v: serde_json::Value = serde_json::from_str(page).unwrap();
            for text in [
                page.to_string(),
                v.to_string(),
                serde_json::to_string_pretty(&v).unwrap(),
            ] {
                let new = s(|o| write_compact(o, &text));
                assert_eq!(new, s(|o| write_compact_reference(o, &text)));
                assert_eq!(serde_json::from_str::<serde_json::Value>(&new).unwrap(), v);
            }
        }
    }

    proptest! {
        #[test]
        fn compact_matches_the_reference_on_any_text(
            text in "[ \t\r\n\"\\\\a:,{}\\[\\]é0]{0,64}",
            any_text in any::<String>(),
        ) {
            // Valid JSON or not, the output is the reference's byte for byte.
            for t in [&text, &any_text] {
                prop_assert_eq!(
                    s(|o| write_compact(o, t)),
                    s(|o| write_compact_reference(o, t))
                );
            }
        }

        #[test]
        fn written_strings_parse_back(text in any::<String>()) {
            let json = s(|o| write_str(o, &text));
            let back: String = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, text);
        }

        #[test]
        fn compact_is_the_same_document_on_one_line(
            v in proptest::collection::vec((any::<String>(), any::<i64>()), 0..8)
        ) {
            let doc: serde_json::Map<String, serde_json::Value> =
                v.into_iter().map(|(k, n)| (k.clone(), serde_json::json!([k, n]))).collect();
            let pretty = serde_json::to_string_pretty(&doc).unwrap();
            let compact = s(|o| write_compact(o, &pretty));
            prop_assert!(!compact.contains('\n'));
            let a: serde_json::Value = serde_json::from_str(&compact).unwrap();
            prop_assert_eq!(a, serde_json::Value::Object(doc));
        }
    }
}
