//! Timer arithmetic: poll jitter and delivery backoff. Pure functions of a random source,
//! so they are tested without waiting.

use std::time::Duration;

use rand::Rng;

/// The delay before a feed's first poll: uniform over one interval, so 5,000 tenants
/// started together spread their first polls evenly instead of all hitting the APIs (and
/// the token endpoint) in the same second.
pub(crate) fn first_poll_delay(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval.mul_f64(rng.gen_range(0.0..1.0))
}

/// The delay between two polls of a feed: the interval ±10 %, so feeds that happen to line
/// up drift apart again.
pub(crate) fn next_poll_delay(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval.mul_f64(rng.gen_range(0.9..=1.1))
}

/// The wait before delivery retry number `attempt` (0 for the first): `base` doubled per
/// attempt, capped at `cap`, with "equal jitter" (half fixed, half random) so sinks that
/// failed together do not retry in lockstep while every delay still grows.
pub(crate) fn retry_delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let capped = base.saturating_mul(factor).min(cap);
    let half = capped / 2;
    half + half.mul_f64(rng.gen_range(0.0..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn poll_delays_stay_in_their_ranges() {
        let mut rng = SmallRng::seed_from_u64(1);
        let interval = Duration::from_secs(60);
        let mut firsts = Vec::new();
        for _ in 0..1000 {
            let first = first_poll_delay(interval, &mut rng);
            assert!(first < interval);
            firsts.push(first);
            let next = next_poll_delay(interval, &mut rng);
            assert!(next >= Duration::from_secs(54) && next <= Duration::from_secs(66));
        }
        // Spread over the whole interval, not bunched at one end.
        assert!(firsts.iter().any(|d| *d < Duration::from_secs(6)));
        assert!(firsts.iter().any(|d| *d > Duration::from_secs(54)));
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let mut rng = SmallRng::seed_from_u64(2);
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        for attempt in 0..40 {
            let d = retry_delay(attempt, base, cap, &mut rng);
            let full = base.saturating_mul(1 << attempt.min(31)).min(cap);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(retry_delay(100, base, cap, &mut rng) >= Duration::from_secs(15));
    }
}
