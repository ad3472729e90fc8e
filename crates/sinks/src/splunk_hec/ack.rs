//! Indexer acknowledgement (sinks.md §1.4): after HEC answered a request with an `ackId`,
//! ask `/services/collector/ack` on the same channel until the indexers report it indexed.
//!
//! Splunk's advice is to poll every ~10 s and resend what is not acknowledged within ~5
//! minutes. A sink has one batch outstanding at a time (`send` returns only when it is
//! acknowledged), so waiting a full interval before the first query would cap a sink at one
//! batch per interval. The first query therefore goes out after [`FIRST_QUERY_AFTER`] and the
//! wait doubles up to `indexer_ack.poll_interval_secs`: a batch indexed in a second costs a
//! few cheap queries, a slow indexer is asked at the configured pace.

use super::client::{display_url, HecClient};
use super::request::ack_query_body;
use super::response::{AckStatus, Decision, HecReply};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The wait before the first ack query.
pub(crate) const FIRST_QUERY_AFTER: Duration = Duration::from_millis(100);

/// Why waiting for acknowledgements ended without them.
#[derive(Debug)]
pub(crate) enum AckError {
    /// Some ids were not reported indexed by the deadline: resend the batch.
    Timeout {
        /// Ids still unacknowledged.
        pending: usize,
    },
    /// The ack endpoint refused the query for good (ack disabled on the token, bad token).
    Rejected(HecReply),
}

/// Queries the status of `ids` until all are acknowledged or `deadline` passes; the last
/// query is made at the deadline.
pub(crate) async fn wait_for_acks(
    client: &HecClient,
    sink: &str,
    ids: &[u64],
    deadline: Instant,
    max_interval: Duration,
) -> Result<(), AckError> {
    let mut pending: Vec<u64> = ids.to_vec();
    let mut interval = FIRST_QUERY_AFTER.min(max_interval);
    loop {
        tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
        match client.post(&client.ack_url, ack_query_body(&pending)).await {
            Ok(raw) if (200..300).contains(&raw.status) => {
                match serde_json::from_slice::<AckStatus>(&raw.body) {
                    Ok(status) => {
                        pending.retain(|id| !status.is_acked(*id));
                        if pending.is_empty() {
                            return Ok(());
                        }
                        debug!(sink, pending = pending.len(), "waiting for indexer acks");
                    }
                    Err(e) => warn!(
                        sink,
                        url = %display_url(&client.ack_url),
                        error = %e,
                        "unexpected answer to an indexer ack query; asking again"
                    ),
                }
            }
            Ok(raw) => {
                let reply = HecReply::parse(raw.status, &raw.body);
                match reply.decision() {
                    Decision::Reject => return Err(AckError::Rejected(reply)),
                    Decision::Retry | Decision::Accepted => warn!(
                        sink,
                        url = %display_url(&client.ack_url),
                        reply = %reply.describe(),
                        "indexer ack query failed; asking again"
                    ),
                }
            }
            Err(e) => warn!(
                sink,
                url = %display_url(&client.ack_url),
                error = %crate::splunk_hec::error_chain(&e),
                "indexer ack query failed; asking again"
            ),
        }
        if Instant::now() >= deadline {
            return Err(AckError::Timeout {
                pending: pending.len(),
            });
        }
        interval = (interval * 2).min(max_interval);
    }
}
