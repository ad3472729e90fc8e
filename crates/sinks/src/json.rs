//! Small JSON writing helpers shared by the JSON formatters (`jsonl`, `hec`).
//!
//! Written by hand rather than through `serde_json::to_writer` so that formatting into a
//! `Vec<u8>` is infallible by type (no `Result` to swallow) and envelopes can embed the raw
//! document without a tree.

use chrono::{DateTime, Timelike, Utc};
use std::io::Write as _;

/// Appends `s` as a JSON string literal (RFC 8259 escaping).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
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
    out.push(b'"');
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
    if !bytes.iter().any(|&b| matches!(b, b'\n' | b'\r')) {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(bytes.len());
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

    proptest! {
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
