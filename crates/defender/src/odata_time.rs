//! Timestamps as the Defender and Graph APIs print them, and as `$filter` literals.
//!
//! The APIs keep times in 100-ns ticks (.NET `DateTime`) and print 0–7 fractional
//! digits, sometimes different counts within one page. We parse at full precision and
//! print filter literals with exactly seven digits. A literal is never rounded to the
//! nearest tick: a window's lower bound is floored and its upper bound ceiled, so the
//! printed window can only be wider than the asked one, never narrower (the pager drops
//! the few items of the widened edges again, see `pager.rs`).

use chrono::{DateTime, NaiveDateTime, SubsecRound, TimeDelta, Utc};

/// One API tick: 100 ns.
pub const TICK: TimeDelta = TimeDelta::nanoseconds(100);

/// Parses an API timestamp: RFC 3339 with 0–9 fractional digits and `Z` or an offset.
/// A timestamp without an offset is taken as UTC (every Defender time is UTC; older
/// payloads drop the `Z`).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// The start of the tick holding `t`.
pub fn floor_tick(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(7)
}

/// The first tick boundary at or after `t`.
pub fn ceil_tick(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_tick(t);
    if floor == t {
        t
    } else {
        // Only the last representable tick has no successor; it stays as it is.
        floor.checked_add_signed(TICK).unwrap_or(t)
    }
}

/// A `$filter` literal for `t`: `2020-06-03T18:04:29.4633333Z`. `t` should be
/// tick-aligned ([`floor_tick`] / [`ceil_tick`]); sub-tick nanoseconds are cut, which
/// is why callers align first, choosing the direction that widens their window.
pub fn filter_literal(t: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(28);
    push_literal(&mut out, t);
    out
}

/// Appends [`filter_literal`]`(t)` to `out`. Printed field by field rather than through
/// chrono's `format`, which parses its pattern anew on every call (two literals per
/// request, hundreds of requests a second); chrono has no `%.7f` anyway.
pub fn push_literal(out: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let ticks = (t.timestamp_subsec_nanos() % 1_000_000_000) / 100;
    let year = t.year();
    // Years outside 0..=9999 keep chrono's RFC 3339 sign and width; no API has them.
    let _ = if (0..=9999).contains(&year) {
        write!(out, "{year:04}")
    } else {
        write!(out, "{year:+05}")
    };
    let _ = write!(
        out,
        "-{:02}-{:02}T{:02}:{:02}:{:02}.{ticks:07}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

/// `$filter` selecting `lo <= field < hi`, with `lo` floored and `hi` ceiled to ticks.
pub fn window_filter(field: &str, lo: DateTime<Utc>, hi: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(2 * field.len() + 72);
    out.push_str(field);
    out.push_str(" ge ");
    push_literal(&mut out, floor_tick(lo));
    out.push_str(" and ");
    out.push_str(field);
    out.push_str(" lt ");
    push_literal(&mut out, ceil_tick(hi));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(nanos_since_epoch: i64) -> DateTime<Utc> {
        Utc.timestamp_nanos(nanos_since_epoch)
    }

    #[test]
    fn parses_every_precision_seen_in_the_apis() {
        let cases = [
            ("2020-09-04T05:22:59Z", 0),
            ("2021-01-26T20:33:59.2Z", 200_000_000),
            ("2021-04-15T16:16:35.92Z", 920_000_000),
            ("2020-09-06T14:46:57.29Z", 290_000_000),
            ("2023-10-20T09:54:06.750499Z", 750_499_000),
            ("2021-01-26T20:33:57.7220239Z", 722_023_900),
            ("2021-01-26T20:33:57.722023912Z", 722_023_912),
        ];
        for (s, nanos) in cases {
            let t = parse_timestamp(s).unwrap_or_else(|| panic!("{s} did not parse"));
            assert_eq!(t.timestamp_subsec_nanos(), nanos, "{s}");
        }
        let t = parse_timestamp("2021-01-26T20:33:57.7220239Z").unwrap();
        assert_eq!(t.timestamp(), 1_611_693_237);
    }

    #[test]
    fn parses_offsets_and_missing_zone_as_utc() {
        let z = parse_timestamp("2021-01-26T20:33:57.5Z").unwrap();
        assert_eq!(parse_timestamp("2021-01-26T20:33:57.5+00:00"), Some(z));
        assert_eq!(parse_timestamp("2021-01-26T21:33:57.5+01:00"), Some(z));
        assert_eq!(parse_timestamp("2021-01-26T20:33:57.5"), Some(z));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2021-13-01T00:00:00Z",
            "1611693237",
            "2021-01-26",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn literal_has_seven_digits() {
        let t = parse_timestamp("2020-09-04T05:22:59Z").unwrap();
        assert_eq!(filter_literal(t), "2020-09-04T05:22:59.0000000Z");
        let t = parse_timestamp("2021-01-26T20:33:57.7220239Z").unwrap();
        assert_eq!(filter_literal(t), "2021-01-26T20:33:57.7220239Z");
    }

    #[test]
    fn window_filter_widens_sub_tick_bounds() {
        let lo = parse_timestamp("2021-01-26T20:33:57.722023912Z").unwrap();
        let hi = parse_timestamp("2021-01-26T20:34:00.000000001Z").unwrap();
        assert_eq!(
            window_filter("lastUpdateTime", lo, hi),
            "lastUpdateTime ge 2021-01-26T20:33:57.7220239Z and lastUpdateTime lt 2021-01-26T20:34:00.0000001Z"
        );
    }

    proptest! {
        #[test]
        fn literal_prints_as_chrono_would(ticks in 0i64..90_000_000_000_000_000) {
            let t = at(ticks * 100);
            let sub = (t.timestamp_subsec_nanos() % 1_000_000_000) / 100;
            let chrono = format!("{}.{sub:07}Z", t.format("%Y-%m-%dT%H:%M:%S"));
            prop_assert_eq!(filter_literal(t), chrono);
        }

        #[test]
        fn tick_literal_parses_back_to_the_same_instant(ticks in 0i64..41_024_000_000_000_000) {
            let t = at(ticks * 100);
            prop_assert_eq!(parse_timestamp(&filter_literal(t)), Some(t));
        }

        #[test]
        fn aligned_bounds_never_narrow_the_window(nanos in 0i64..4_102_400_000_000_000_000) {
            let t = at(nanos);
            let lo = floor_tick(t);
            let hi = ceil_tick(t);
            prop_assert!(lo <= t && t <= hi);
            prop_assert!(hi - lo <= TICK);
            prop_assert_eq!(parse_timestamp(&filter_literal(lo)), Some(lo));
            prop_assert_eq!(parse_timestamp(&filter_literal(hi)), Some(hi));
        }
    }
}
