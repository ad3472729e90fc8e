//! Time as the store keeps it: 100-nanosecond ticks since the Unix epoch in an `i64`.
//!
//! Defender and Graph timestamps carry seven fractional digits (100 ns), so ticks hold
//! them exactly; an integer compares and indexes faster than text and is the same in any
//! backend (a Postgres `bigint`, where `timestamptz` would lose the last digit).

use chrono::{DateTime, Utc};

use crate::error::{Result, StateError};

const TICKS_PER_SECOND: i64 = 10_000_000;
const NANOS_PER_TICK: u32 = 100;

/// `t` in ticks; digits finer than 100 ns are dropped (towards the past).
pub(crate) fn to_ticks(t: DateTime<Utc>) -> Result<i64> {
    // A leap second shows as nanos >= 1e9; it then lands in the next second, which keeps
    // the mapping monotonic.
    let sub = i64::from(t.timestamp_subsec_nanos() / NANOS_PER_TICK);
    t.timestamp()
        .checked_mul(TICKS_PER_SECOND)
        .and_then(|ticks| ticks.checked_add(sub))
        .ok_or_else(|| StateError::TimeOutOfRange {
            time: t.to_rfc3339(),
        })
}

/// The time `ticks` stands for; `None` outside chrono's range (only a hand-edited file).
pub(crate) fn from_ticks(ticks: i64) -> Option<DateTime<Utc>> {
    let secs = ticks.div_euclid(TICKS_PER_SECOND);
    // rem_euclid is in 0..10_000_000, so the product fits a u32.
    let nanos = u32::try_from(ticks.rem_euclid(TICKS_PER_SECOND)).ok()? * NANOS_PER_TICK;
    DateTime::from_timestamp(secs, nanos)
}

/// `t` at the store's precision: what a time read back from the store equals.
///
/// Callers comparing their own times with [`StateStore::seen_since`](crate::StateStore::seen_since)
/// results should pass them through this first if they may carry digits finer than 100 ns
/// (Defender's never do).
pub fn truncate_to_tick(t: DateTime<Utc>) -> DateTime<Utc> {
    to_ticks(t).ok().and_then(from_ticks).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    // i64 ticks reach about ±29,227 years around 1970; keep clear of the ends.
    const TICK_RANGE: std::ops::Range<i64> =
        -(9_000_000_000 * TICKS_PER_SECOND)..(9_000_000_000 * TICKS_PER_SECOND);

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        (-9_000_000_000_i64..9_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    #[test]
    fn defender_timestamp_is_exact() {
        let t: DateTime<Utc> = "2024-05-06T07:08:09.1234567Z".parse().unwrap();
        let ticks = to_ticks(t).unwrap();
        assert_eq!(ticks % TICKS_PER_SECOND, 1_234_567);
        assert_eq!(from_ticks(ticks).unwrap(), t);
        assert_eq!(truncate_to_tick(t), t);
    }

    #[test]
    fn before_the_epoch_rounds_towards_the_past() {
        let t = Utc.timestamp_opt(-1, 999_999_999).unwrap();
        let ticks = to_ticks(t).unwrap();
        assert_eq!(ticks, -1);
        assert_eq!(
            from_ticks(ticks).unwrap(),
            Utc.timestamp_opt(-1, 999_999_900).unwrap()
        );
    }

    #[test]
    fn out_of_range_is_an_error_not_a_wrap() {
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(matches!(
            to_ticks(far),
            Err(StateError::TimeOutOfRange { .. })
        ));
        assert_eq!(truncate_to_tick(far), far);
    }

    proptest! {
        #[test]
        fn ticks_roundtrip(ticks in TICK_RANGE) {
            let t = from_ticks(ticks).unwrap();
            prop_assert_eq!(to_ticks(t).unwrap(), ticks);
        }

        #[test]
        fn ticks_keep_order(a in any_time(), b in any_time()) {
            let (ta, tb) = (to_ticks(a).unwrap(), to_ticks(b).unwrap());
            if a <= b {
                prop_assert!(ta <= tb);
            } else {
                prop_assert!(ta >= tb);
            }
            // Strict order survives whenever the two differ by at least one tick.
            if (b - a).num_nanoseconds().is_some_and(|d| d >= 100) {
                prop_assert!(ta < tb);
            }
        }

        #[test]
        fn truncation_is_idempotent_and_never_later(t in any_time()) {
            let once = truncate_to_tick(t);
            prop_assert!(once <= t);
            prop_assert!(t - once < chrono::Duration::nanoseconds(100));
            prop_assert_eq!(truncate_to_tick(once), once);
        }
    }
}
