//! HEC's answers: the JSON reply body, the retry decision by HTTP status and HEC code
//! (sinks.md §1.5), and words an operator can act on. Pure.

use serde::Deserialize;
use std::time::Duration;

/// What HEC answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HecReply {
    /// The HTTP status.
    pub status: u16,
    /// HEC's `code`, when the body was HEC's JSON.
    pub code: Option<i64>,
    /// HEC's `text`.
    pub text: Option<String>,
    /// `invalid-event-number`: the 0-based envelope of the request that was refused.
    pub invalid_event_number: Option<u64>,
    /// `ackId`: present on a 200 when the token has indexer acknowledgement on.
    pub ack_id: Option<u64>,
    /// The start of a body that was not HEC's JSON (a proxy's error page), for messages.
    pub other: Option<String>,
}

/// What the sink does with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// HEC took the request (and, with indexer ack, will tell when it is indexed).
    Accepted,
    /// Busy, overloaded or broken for now: send the same batch again later.
    Retry,
    /// Refused for a reason that sending again will not fix.
    Reject,
}

#[derive(Deserialize)]
struct Body {
    text: Option<String>,
    code: Option<i64>,
    #[serde(rename = "invalid-event-number")]
    invalid_event_number: Option<u64>,
    #[serde(rename = "ackId", alias = "ack_id")]
    ack_id: Option<u64>,
}

/// How much of a non-HEC body goes into a message.
const OTHER_BODY_CHARS: usize = 200;

impl HecReply {
    /// Reads a reply; a body that is not HEC's JSON is kept (shortened) for the message.
    pub fn parse(status: u16, body: &[u8]) -> HecReply {
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => HecReply {
                status,
                code: b.code,
                text: b.text,
                invalid_event_number: b.invalid_event_number,
                ack_id: b.ack_id,
                other: None,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(OTHER_BODY_CHARS)
                    .collect();
                let text = text.trim();
                HecReply {
                    status,
                    code: None,
                    text: None,
                    invalid_event_number: None,
                    ack_id: None,
                    other: (!text.is_empty()).then(|| text.to_string()),
                }
            }
        }
    }

    /// Retry or not, exactly as sinks.md §1.5 says: transport errors and timeouts are retried
    /// (decided before a reply exists); so are 408, 429, every 5xx but 501, and HEC codes 8
    /// (internal error), 9 (server is busy) and 18–20 (unhealthy) whatever the status. Every
    /// other non-2xx — bad or disabled token (1–4), no data (5), invalid data format (6),
    /// incorrect index (7), channel problems (10, 11), event field missing or blank (12, 13),
    /// ack disabled (14), bad indexed fields (15), query-string auth (16), invalid or
    /// disabled token on health (21, 22), 404, 413, redirects — is a configuration problem or
    /// a bug that sending again cannot fix.
    pub fn decision(&self) -> Decision {
        if matches!(self.code, Some(8 | 9 | 18..=20)) {
            return Decision::Retry;
        }
        match self.status {
            200..=299 => Decision::Accepted,
            408 | 429 => Decision::Retry,
            501 => Decision::Reject,
            500..=599 => Decision::Retry,
            _ => Decision::Reject,
        }
    }

    /// `HTTP 403, HEC code 4 "Invalid token"`, then what to do about it when that is known.
    pub fn describe(&self) -> String {
        let mut s = format!("HTTP {}", self.status);
        if let Some(code) = self.code {
            s.push_str(&format!(", HEC code {code}"));
        }
        if let Some(text) = &self.text {
            s.push_str(&format!(" {text:?}"));
        } else if let Some(other) = &self.other {
            s.push_str(&format!(" (body: {other:?})"));
        }
        if let Some(hint) = self.hint() {
            s.push_str(": ");
            s.push_str(hint);
        }
        s
    }

    /// What an operator should do, by HEC code, else by HTTP status.
    fn hint(&self) -> Option<&'static str> {
        Some(match self.code {
            Some(1 | 22) => {
                "the token is disabled in Splunk; enable it under Settings > Data inputs > \
                 HTTP Event Collector, or configure another token"
            }
            Some(2) => "the request carried no token (a bug in the relay)",
            Some(3) => "the Authorization header was malformed (a bug in the relay)",
            Some(4 | 21) => "Splunk does not know this token; check the sink's `token`",
            Some(5) => "the request had no data (a bug in the relay)",
            Some(6) => {
                "HEC could not parse the request body; if a proxy sits in between, check \
                 that it passes bodies unchanged"
            }
            Some(7) => {
                "the token may not write to this index; add the index to the token's allowed \
                 indexes, or fix `index` of the sink or the tenant's `sink_overrides`"
            }
            Some(10 | 11) => {
                "HEC refused the request channel; set `indexer_ack.channel` to a GUID or \
                 leave it unset"
            }
            Some(12 | 13) => "an envelope had no usable `event` (a bug in the relay)",
            Some(14) => ACK_DISABLED_HINT,
            Some(15) => "HEC refused the envelope's indexed fields or time (a bug in the relay)",
            Some(16) => "query-string authentication is off (the relay never uses it)",
            Some(8 | 9 | 18..=20) => "HEC is overloaded or unhealthy; sending again later",
            _ => match self.status {
                300..=399 => {
                    "HEC answered with a redirect; set `url` to the address HEC answers on"
                }
                404 => {
                    "there is no HEC endpoint at this URL; `url` must be the HEC base URL \
                     (e.g. https://splunk.example:8088) and HEC must be enabled"
                }
                413 => {
                    "the request is larger than HEC accepts (max_content_length); lower \
                     `batch.max_bytes`"
                }
                401 | 403 => "authentication failed; check the sink's `token`",
                408 | 429 | 500 | 502..=599 => "HEC is unavailable; sending again later",
                _ => return None,
            },
        })
    }
}

/// What to do when a token has no indexer acknowledgement although the sink asks for it.
pub(crate) const ACK_DISABLED_HINT: &str =
    "`indexer_ack.enabled` is set but indexer acknowledgement (useACK) is off on this token; \
     turn it on for the token in Splunk, or set `indexer_ack.enabled = false` to count an \
     HTTP 200 as delivered";

/// The answer of `/services/collector/ack`: `{"acks":{"7":true,"8":false}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct AckStatus {
    /// Ack id (a decimal string in JSON) → indexed yet.
    pub acks: std::collections::HashMap<String, bool>,
}

impl AckStatus {
    /// Whether `id` is reported indexed.
    pub fn is_acked(&self, id: u64) -> bool {
        self.acks.get(&id.to_string()).copied().unwrap_or(false)
    }
}

/// Why HEC could not take a batch for now: the `source` of
/// [`SinkError::Unavailable`](crate::SinkError::Unavailable) from the HEC sink.
#[derive(Debug, thiserror::Error)]
pub enum HecUnavailable {
    /// No answer: connection refused or reset, DNS failure, TLS handshake or certificate
    /// verification failure. The chain below has the details.
    #[error("request failed")]
    Transport(#[source] reqwest::Error),

    /// No complete answer within `request_timeout_secs`.
    #[error(
        "no answer within {0:?}; if this persists, lower `batch.max_bytes`, enable `gzip` or \
         raise `request_timeout_secs`"
    )]
    Timeout(Duration),

    /// HEC answered that it is busy or failing (429, 5xx, HEC codes 8, 9, 18–20).
    #[error("{0}")]
    Busy(String),

    /// Compressing the request failed (in memory: not expected to happen).
    #[error("cannot gzip the request")]
    Compress(#[source] std::io::Error),

    /// HEC took the batch but the indexers did not confirm it within
    /// `indexer_ack.timeout_secs`; it is sent again (duplicates possible).
    #[error(
        "indexers did not acknowledge {pending} of {total} request(s) of the batch within \
         {timeout:?}; sending the batch again"
    )]
    AckTimeout {
        /// Requests still unacknowledged.
        pending: usize,
        /// Requests in the batch.
        total: usize,
        /// The configured wait.
        timeout: Duration,
    },

    /// Requests sent after the batch were acknowledged and the batch was not, long past the
    /// usual time: taken as lost by the indexers and sent again (duplicates possible).
    #[error(
        "indexers acknowledged later requests but not the batch within {waited:?}; taking it \
         as lost and sending it again"
    )]
    AckOvertaken {
        /// How long the batch waited.
        waited: Duration,
    },

    /// HEC handed out one of the batch's ack ids again before confirming it: its statuses
    /// were reset (a Splunk restart), so the batch can never be confirmed; it is sent again
    /// (duplicates possible).
    #[error(
        "HEC reset its indexer acknowledgements (ack id handed out again) before confirming \
         the batch; sending the batch again"
    )]
    AckReset,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> HecReply {
        HecReply::parse(status, body.as_bytes())
    }

    /// Every row of the code table in sinks.md §1.5, with the body Splunk sends.
    #[test]
    fn every_hec_code_gets_the_documented_decision() {
        use Decision::*;
        let table: &[(u16, i64, &str, Decision)] = &[
            (200, 0, "Success", Accepted),
            (403, 1, "Token disabled", Reject),
            (401, 2, "Token is required", Reject),
            (401, 3, "Invalid authorization", Reject),
            (403, 4, "Invalid token", Reject),
            (400, 5, "No data", Reject),
            (400, 6, "Invalid data format", Reject),
            (400, 7, "Incorrect index", Reject),
            (500, 8, "Internal server error", Retry),
            (503, 9, "Server is busy", Retry),
            (400, 10, "Data channel is missing", Reject),
            (400, 11, "Invalid data channel", Reject),
            (400, 12, "Event field is required", Reject),
            (400, 13, "Event field cannot be blank", Reject),
            (400, 14, "ACK is disabled", Reject),
            (400, 15, "Error in handling indexed fields", Reject),
            (400, 16, "Query string authorization is not enabled", Reject),
            (200, 17, "HEC is healthy", Accepted),
            (503, 18, "HEC is unhealthy, queues are full", Retry),
            (503, 19, "HEC is unhealthy, ack service unavailable", Retry),
            (
                503,
                20,
                "HEC is unhealthy, queues are full, ack service unavailable",
                Retry,
            ),
            (400, 21, "Invalid token", Reject),
            (400, 22, "Token disabled", Reject),
        ];
        for &(status, code, text, want) in table {
            let r = reply(status, &format!(r#"{{"text":"{text}","code":{code}}}"#));
            assert_eq!(r.decision(), want, "HTTP {status} code {code}");
            assert_eq!(r.code, Some(code));
            assert!(r
                .describe()
                .contains(&format!("HEC code {code} \"{text}\"")));
        }
    }

    #[test]
    fn server_is_busy_is_retried_whatever_the_status() {
        assert_eq!(
            reply(400, r#"{"text":"Server is busy","code":9}"#).decision(),
            Decision::Retry
        );
    }

    #[test]
    fn statuses_without_hec_bodies_follow_the_http_rules() {
        use Decision::*;
        for (status, want) in [
            (200, Accepted),
            (204, Accepted),
            (301, Reject),
            (307, Reject),
            (400, Reject),
            (401, Reject),
            (403, Reject),
            (404, Reject),
            (405, Reject),
            (408, Retry),
            (413, Reject),
            (415, Reject),
            (429, Retry),
            (500, Retry),
            (501, Reject),
            (502, Retry),
            (503, Retry),
            (504, Retry),
        ] {
            assert_eq!(
                reply(status, "<html>proxy</html>").decision(),
                want,
                "HTTP {status}"
            );
            assert_eq!(reply(status, "").decision(), want, "HTTP {status}");
        }
    }

    #[test]
    fn success_with_ack_id() {
        let r = reply(200, r#"{"text":"Success","code":0,"ackId":7}"#);
        assert_eq!(r.decision(), Decision::Accepted);
        assert_eq!(r.ack_id, Some(7));
        assert_eq!(reply(200, r#"{"text":"Success","code":0}"#).ack_id, None);
    }

    #[test]
    fn per_event_errors_keep_the_event_number() {
        let r = reply(
            400,
            r#"{"text":"Incorrect index","code":7,"invalid-event-number":3}"#,
        );
        assert_eq!(r.invalid_event_number, Some(3));
        assert_eq!(
            r.describe(),
            "HTTP 400, HEC code 7 \"Incorrect index\": the token may not write to this index; \
             add the index to the token's allowed indexes, or fix `index` of the sink or the \
             tenant's `sink_overrides`"
        );
    }

    #[test]
    fn foreign_bodies_are_quoted_short_and_on_one_line() {
        let body = format!("<html>\n<b>Bad gateway</b>{}</html>", "x".repeat(1000));
        let r = reply(502, &body);
        let d = r.describe();
        assert!(
            d.starts_with("HTTP 502 (body: \"<html> <b>Bad gateway</b>xxx"),
            "{d}"
        );
        assert!(d.len() < 400, "{d}");
        assert!(!d.contains('\n'));
        assert_eq!(
            reply(404, "").describe(),
            "HTTP 404: there is no HEC endpoint at this URL; `url` must be the HEC base URL \
             (e.g. https://splunk.example:8088) and HEC must be enabled"
        );
    }

    #[test]
    fn ack_status_reads_string_keys() {
        let s: AckStatus = serde_json::from_str(r#"{"acks":{"7":true,"8":false}}"#).unwrap();
        assert!(s.is_acked(7));
        assert!(!s.is_acked(8));
        assert!(!s.is_acked(9));
    }
}
