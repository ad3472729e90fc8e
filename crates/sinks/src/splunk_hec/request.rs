//! Request bodies: a batch of events cut into HEC requests of concatenated envelopes, and
//! their gzip form. Pure; the sink moves the bytes.

use crate::event::Event;
use crate::hec::{self, HecOptions};
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write as _;
use std::ops::Range;

/// One HEC request: the envelopes of `batch[events]`, back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedRequest {
    /// Which events of the batch the body holds, so an error naming an event number can be
    /// traced to the event.
    pub events: Range<usize>,
    /// Concatenated envelopes, uncompressed.
    pub body: Vec<u8>,
}

/// Encodes `batch` into requests whose bodies stay within `max_bytes`, in order.
///
/// The worker cuts batches by [`Event::approx_bytes`], an estimate; the envelopes can come
/// out a little larger, so the batch is cut again on the real size. An envelope larger than
/// `max_bytes` on its own travels alone (HEC's own limit is far higher; if it refuses, the
/// answer is a permanent 413).
pub(crate) fn encode_requests<'a>(
    batch: &[Event],
    options_for: impl Fn(&Event) -> &'a HecOptions,
    max_bytes: usize,
) -> Vec<EncodedRequest> {
    let mut requests = Vec::new();
    let mut body = Vec::with_capacity(max_bytes.min(batch_estimate(batch)));
    let mut first = 0;
    for (i, event) in batch.iter().enumerate() {
        let start = body.len();
        hec::encode_event(event, options_for(event), &mut body);
        if start > 0 && body.len() > max_bytes {
            // This envelope overflows the request: it starts the next one.
            let next = body.split_off(start);
            requests.push(EncodedRequest {
                events: first..i,
                body: std::mem::replace(&mut body, next),
            });
            first = i;
        }
    }
    if !body.is_empty() {
        requests.push(EncodedRequest {
            events: first..batch.len(),
            body,
        });
    }
    requests
}

fn batch_estimate(batch: &[Event]) -> usize {
    batch.iter().map(Event::approx_bytes).sum()
}

// flate2 runs on the zlib-rs backend (root `Cargo.toml`): about half of miniz_oxide's CPU
// on these documents at the same level, for bodies about a tenth larger. The level is the
// sink's `gzip_level` (default `relay_config::DEFAULT_GZIP_LEVEL`).

/// The gzip member (RFC 1952) of `body` at `level` (1–9), for `Content-Encoding: gzip`.
/// Writing into memory does not fail in practice; the `Result` is the encoder's signature.
pub(crate) fn gzip(body: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        Compression::new(level),
    );
    enc.write_all(body)?;
    enc.finish()
}

/// The body of an ack status query: `{"acks":[1,2,3]}`.
pub(crate) fn ack_query_body(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + ids.len() * 8);
    out.extend_from_slice(b"{\"acks\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use flate2::read::GzDecoder;
    use relay_config::Feed;
    use serde_json::value::RawValue;
    use std::io::Read as _;

    fn small(id: &str) -> Event {
        let mut e = event(GRAPH_ALERTS, 0, Feed::GraphAlerts);
        e.raw = RawValue::from_string(format!(r#"{{"id":"{id}"}}"#))
            .unwrap()
            .into();
        e
    }

    fn envelope(id: &str) -> String {
        format!(
            concat!(
                r#"{{"time":1697795647.503333,"#,
                r#""source":"xdr-relay:graph_alerts:3adb963c-8e61-48e8-a06d-6dbb0dacea39","#,
                r#""sourcetype":"ms365:defender:incident:alerts","#,
                r#""fields":{{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","stream":"alerts","feed":"graph_alerts"}},"#,
                r#""event":{{"id":"{}"}}}}"#
            ),
            id
        )
    }

    #[test]
    fn one_request_holds_the_envelopes_back_to_back() {
        let batch = [small("a"), small("b")];
        let opts = HecOptions::default();
        let reqs = encode_requests(&batch, |_| &opts, 1_000_000);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].events, 0..2);
        assert_eq!(
            String::from_utf8(reqs[0].body.clone()).unwrap(),
            format!("{}{}", envelope("a"), envelope("b"))
        );
    }

    #[test]
    fn batches_are_cut_on_the_real_envelope_size() {
        let one = envelope("a").len();
        let batch: Vec<Event> = ["a", "b", "c", "d", "e"].map(small).into();
        let opts = HecOptions::default();
        // Two envelopes fit, a third does not.
        let reqs = encode_requests(&batch, |_| &opts, 2 * one + 10);
        let ranges: Vec<_> = reqs.iter().map(|r| r.events.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..4, 4..5]);
        assert_eq!(
            String::from_utf8(reqs[1].body.clone()).unwrap(),
            format!("{}{}", envelope("c"), envelope("d"))
        );
        assert!(reqs.iter().all(|r| r.body.len() <= 2 * one + 10));
    }

    #[test]
    fn an_envelope_larger_than_the_limit_travels_alone() {
        let batch = [small("a"), small("b")];
        let opts = HecOptions::default();
        let reqs = encode_requests(&batch, |_| &opts, 10);
        let ranges: Vec<_> = reqs.iter().map(|r| r.events.clone()).collect();
        assert_eq!(ranges, vec![0..1, 1..2]);
        assert_eq!(reqs[1].body, envelope("b").into_bytes());
    }

    #[test]
    fn per_event_options_are_consulted() {
        let mut other = small("b");
        other.tenant_name = "fabrikam".into();
        let base = HecOptions::default();
        let fabrikam = HecOptions {
            index: Some(crate::Template::parse("cust_{tenant}").unwrap()),
            ..HecOptions::default()
        };
        let batch = [small("a"), other];
        let reqs = encode_requests(
            &batch,
            |e| {
                if e.tenant_name == "fabrikam" {
                    &fabrikam
                } else {
                    &base
                }
            },
            1_000_000,
        );
        let body = String::from_utf8(reqs[0].body.clone()).unwrap();
        assert_eq!(body.matches(r#""index":"cust_fabrikam""#).count(), 1);
        assert!(body.starts_with(&envelope("a")));
    }

    #[test]
    fn empty_batch_makes_no_request() {
        let opts = HecOptions::default();
        assert!(encode_requests(&[], |_| &opts, 100).is_empty());
    }

    #[test]
    fn gzip_roundtrips_and_shrinks_real_alerts_more_at_higher_levels() {
        let batch: Vec<Event> = (0..20)
            .map(|i| event(GRAPH_ALERTS, i % 2, Feed::GraphAlerts))
            .collect();
        let opts = HecOptions::default();
        let body = encode_requests(&batch, |_| &opts, usize::MAX)
            .remove(0)
            .body;
        let packed = gzip(&body, relay_config::DEFAULT_GZIP_LEVEL).unwrap();
        assert_eq!(&packed[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(
            packed.len() * 5 < body.len(),
            "{} -> {}",
            body.len(),
            packed.len()
        );
        let mut back = Vec::new();
        GzDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        let fastest = gzip(&body, 1).unwrap();
        let smallest = gzip(&body, 9).unwrap();
        assert!(smallest.len() < fastest.len());
        for packed in [fastest, smallest] {
            let mut back = Vec::new();
            GzDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, body);
        }
    }

    #[test]
    fn ack_query_body_lists_the_ids() {
        assert_eq!(ack_query_body(&[7, 8, 9]), br#"{"acks":[7,8,9]}"#);
        assert_eq!(ack_query_body(&[]), br#"{"acks":[]}"#);
    }
}
