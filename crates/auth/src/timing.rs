//! When to refresh: pure functions of a token's lifetime, so they are tested with paused
//! time and no network.

use std::time::Duration;
use tokio::time::Instant;

/// Used when a token response has no `expires_in`. Short on purpose: refreshing too often
/// costs one request, assuming too long costs a 401 on every call.
pub(crate) const LIFETIME_IF_UNSAID: Duration = Duration::from_secs(300);

/// How long after receipt a token of `lifetime` should be replaced: at `fraction` of its
/// lifetime or `margin` before it expires, whichever comes first — but not in the first half
/// of its life (unless `fraction` itself says earlier). Without that floor a lifetime shorter
/// than the margin (short-lived tokens in tests, some proxies) would mean a token request on
/// every call.
pub(crate) fn refresh_after(lifetime: Duration, fraction: f64, margin: Duration) -> Duration {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let by_fraction = lifetime.mul_f64(fraction);
    let by_margin = lifetime.saturating_sub(margin);
    let floor = by_fraction.min(lifetime / 2);
    by_fraction.min(by_margin).max(floor)
}

/// After a failed refresh while the old token still has time left, when to try again: soon,
/// but leaving half of the remaining time so a second failure still has a fallback, and
/// never sooner than the endpoint's `Retry-After`.
pub(crate) fn retry_at(
    now: Instant,
    expires_at: Instant,
    retry_after: Option<Duration>,
) -> Instant {
    let remaining = expires_at.saturating_duration_since(now);
    let mut wait = (remaining / 2).min(Duration::from_secs(30));
    if let Some(ra) = retry_after {
        wait = wait.max(ra.min(remaining));
    }
    now + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5: Duration = Duration::from_secs(300);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_hour_token_is_refreshed_at_80_percent() {
        assert_eq!(refresh_after(secs(3600), 0.8, M5), secs(2880));
        // 60-90 min randomised lifetimes: 80% is always earlier than 5 min before expiry.
        assert_eq!(refresh_after(secs(5400), 0.8, M5), secs(4320));
    }

    #[test]
    fn the_margin_wins_when_it_comes_first() {
        // 80% of 20 min = 16 min; 5 min before expiry = 15 min.
        assert_eq!(refresh_after(secs(1200), 0.8, M5), secs(900));
    }

    #[test]
    fn short_lifetimes_are_not_refreshed_on_every_call() {
        assert_eq!(refresh_after(secs(10), 0.8, M5), secs(5));
        assert_eq!(refresh_after(secs(360), 0.8, M5), secs(180));
        assert_eq!(refresh_after(Duration::ZERO, 0.8, M5), Duration::ZERO);
    }

    #[test]
    fn odd_fractions_are_tamed() {
        assert_eq!(refresh_after(secs(100), 0.3, Duration::ZERO), secs(30));
        assert_eq!(refresh_after(secs(100), 7.0, Duration::ZERO), secs(100));
        assert_eq!(
            refresh_after(secs(100), f64::NAN, Duration::ZERO),
            secs(100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_fresh_until_its_refresh_point_in_paused_time() {
        let received = Instant::now();
        let lifetime = secs(3600);
        let refresh_at = received + refresh_after(lifetime, 0.8, M5);
        tokio::time::advance(secs(2879)).await;
        assert!(Instant::now() < refresh_at);
        tokio::time::advance(secs(1)).await;
        assert!(Instant::now() >= refresh_at);
        assert!(Instant::now() < received + lifetime);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_a_failed_ahead_refresh() {
        let now = Instant::now();
        let expires = now + secs(600);
        assert_eq!(retry_at(now, expires, None), now + secs(30));
        assert_eq!(retry_at(now, now + secs(20), None), now + secs(10));
        assert_eq!(retry_at(now, expires, Some(secs(120))), now + secs(120));
        assert_eq!(
            retry_at(now, now + secs(60), Some(secs(120))),
            now + secs(60)
        );
        assert_eq!(retry_at(now, now, None), now);
    }
}
