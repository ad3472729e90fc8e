//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never in the shipped
//! binary): what the Splunk HEC sink does with an answer body, without a network.

use crate::splunk_hec::response::{AckStatus, HecReply};

/// Reads `body` as HEC's reply to `status` (decision and operator message) and as an
/// indexer-ack status, as the sink does; the results are discarded.
pub fn hec_answer(status: u16, body: &[u8]) {
    let reply = HecReply::parse(status, body);
    let _ = reply.decision();
    let _ = reply.describe();
    if let Ok(acks) = serde_json::from_slice::<AckStatus>(body) {
        for id in [0, 1, u64::MAX] {
            let _ = acks.is_acked(id);
        }
    }
}
