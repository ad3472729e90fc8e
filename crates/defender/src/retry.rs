//! Backoff between attempts and the `Retry-After` header.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total for one page when failures are transient (5xx, timeouts, resets,
    /// cut or HTML bodies, 206); at least 1.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further retry.
    pub base_delay: Duration,
    /// Backoff ceiling.
    pub max_delay: Duration,
    /// How many 429 answers one page may receive before the client gives up with
    /// `QuotaExhausted` (the limiter keeps the tenant blocked for `Retry-After` anyway).
    pub max_throttled: u32,
    /// A `Retry-After` longer than this is not waited out inside `next_page`: the client
    /// returns `QuotaExhausted` at once, so the scheduler can move on to other tenants.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_throttled: 3,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first), with "equal jitter": half
    /// the exponential delay is fixed, half random, so synchronized failures of many
    /// tenants spread out while every delay still grows.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        let jitter_nanos = rng.gen_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// Parses `Retry-After`: delay-seconds (Defender and Graph send these) or an HTTP date
/// (RFC 9110 allows it). A date in the past means no wait.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822 syntax with the
    // obsolete-but-accepted `GMT` zone, which chrono parses.
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_within_equal_jitter_bounds_and_caps() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let mut rng = SmallRng::seed_from_u64(1);
        for retry in 0..40 {
            let full = (Duration::from_millis(100) * 2u32.saturating_pow(retry.min(20)))
                .min(Duration::from_secs(2));
            for _ in 0..50 {
                let d = policy.backoff(retry, &mut rng);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let policy = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let delays: std::collections::HashSet<_> =
            (0..20).map(|_| policy.backoff(3, &mut rng)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn worst_case_wait_for_one_page_is_bounded() {
        // What a caller can rely on: a page that keeps failing gives up after at most
        // the sum of the capped delays, never sooner than half of it.
        let policy = RetryPolicy::default();
        let mut rng = SmallRng::seed_from_u64(3);
        let start = tokio::time::Instant::now();
        for retry in 0..policy.max_attempts - 1 {
            tokio::time::sleep(policy.backoff(retry, &mut rng)).await;
        }
        let waited = start.elapsed();
        let full: Duration = (0..policy.max_attempts - 1)
            .map(|r| (policy.base_delay * 2u32.pow(r)).min(policy.max_delay))
            .sum();
        assert!(
            waited >= full / 2 && waited <= full + Duration::from_millis(10),
            "{waited:?} vs {full:?}"
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
