//! `/readyz`: whether the relay is doing its job yet.

use relay_pipeline::{RelayStatus, SinkState};
use serde::Serialize;

/// The `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether to answer 200.
    pub ready: bool,
    /// Why not, in one line; empty when ready.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Ready once the relay is built (it is, or there would be no status), every (tenant,
/// feed) has had its first poll attempted — succeeded, failed, or skipped because an
/// outbox is full — and no sink is stopped by a permanent failure; not ready again while
/// shutting down.
pub fn readiness(status: &RelayStatus, shutting_down: bool) -> Readiness {
    let mut reasons = Vec::new();
    if shutting_down {
        reasons.push("shutting down".to_string());
    }
    let waiting: Vec<_> = status
        .feeds
        .iter()
        .filter(|f| f.last_poll.is_none() && f.skipped_outbox_full == 0)
        .collect();
    if let Some(first) = waiting.first() {
        reasons.push(format!(
            "first poll cycle not complete: {} of {} feeds not polled yet (e.g. {}/{})",
            waiting.len(),
            status.feeds.len(),
            first.tenant,
            first.stream.as_str()
        ));
    }
    for s in status
        .sinks
        .iter()
        .filter(|s| s.state == SinkState::Stopped)
    {
        let mut error = s.last_error.clone().unwrap_or_default();
        // The reason is for a probe's log line, not for diagnosis: `status` has the rest.
        if let Some((cut, _)) = error.char_indices().nth(160) {
            error.truncate(cut);
            error.push('…');
        }
        reasons.push(format!("sink {} stopped: {error}", s.name));
    }
    Readiness {
        ready: reasons.is_empty(),
        reason: reasons.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{feed, sink, status};

    #[test]
    fn not_ready_until_every_feed_was_polled_once() {
        let mut s = status();
        s.feeds = vec![feed("contoso", true), feed("fabrikam", false)];
        assert_eq!(
            readiness(&s, false),
            Readiness {
                ready: false,
                reason: "first poll cycle not complete: 1 of 2 feeds not polled yet \
                         (e.g. fabrikam/alerts)"
                    .into()
            }
        );
        s.feeds[1].skipped_outbox_full = 1;
        assert!(
            readiness(&s, false).ready,
            "a poll skipped for a full outbox was attempted"
        );
        s.feeds[1] = feed("fabrikam", true);
        assert_eq!(
            readiness(&s, false),
            Readiness {
                ready: true,
                reason: String::new()
            }
        );
        assert_eq!(
            serde_json::to_string(&readiness(&s, false)).unwrap(),
            r#"{"ready":true}"#
        );
    }

    #[test]
    fn a_stopped_sink_makes_it_unready_naming_the_sink() {
        let mut s = status();
        s.feeds = vec![feed("contoso", true)];
        let mut bad = sink("splunk");
        bad.state = SinkState::Stopped;
        bad.last_error = Some(format!(
            "hec answered 403: invalid token {}",
            "x".repeat(300)
        ));
        s.sinks = vec![sink("file"), bad];
        let r = readiness(&s, false);
        assert!(!r.ready);
        assert!(
            r.reason
                .starts_with("sink splunk stopped: hec answered 403: invalid token xxx"),
            "{}",
            r.reason
        );
        assert!(r.reason.chars().count() < 200, "{}", r.reason);
        assert!(serde_json::to_string(&r)
            .unwrap()
            .starts_with(r#"{"ready":false,"reason":"sink splunk stopped"#));
    }

    #[test]
    fn shutting_down_is_not_ready() {
        let mut s = status();
        s.feeds = vec![feed("contoso", true)];
        assert_eq!(readiness(&s, true).reason, "shutting down");
    }
}
