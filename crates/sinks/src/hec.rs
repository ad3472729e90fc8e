//! The Splunk HTTP Event Collector envelope for one event (`/services/collector/event`).
//! Pure: the HEC transport concatenates these envelopes into a request body.
//!
//! ```text
//! {"time":1697795647.503333,"host":"relay01","source":"xdr-relay:graph_alerts:<tenant id>","sourcetype":"ms365:defender:incident:alerts","index":"defender_contoso","fields":{"tenant_id":"…","tenant_name":"contoso","stream":"alerts","feed":"graph_alerts"},"event":{…}}
//! ```
//!
//! * `time`: the version time (`lastUpdateDateTime` / `lastUpdateTime`) in epoch seconds,
//!   a plain decimal number with six fractional digits — Splunk keeps subseconds to the
//!   microsecond, and exponent notation is refused by some HEC front ends.
//! * `host`: only when configured; otherwise Splunk applies the token's default.
//! * `source`: configurable; default `xdr-relay:<feed>:<tenant id>`, which like the Splunk
//!   add-on's `<input>:<tenant id>` tells the API feed and the tenant apart.
//! * `sourcetype`: configurable per stream; default per feed, the Splunk Add-on for Microsoft
//!   Security's names so its field extractions and CIM tags apply (see [`default_sourcetype`]).
//! * `index`: only when configured (templates such as `defender_{tenant}` route each
//!   customer to its own index); otherwise the token's default index.
//! * `fields`: index-time fields, strings only (HEC rejects other types with code 15):
//!   `tenant_id`, `tenant_name`, `stream`, `feed`.
//! * `event`: the API's document, embedded unchanged.

use crate::event::Event;
use crate::json;
use crate::template::Template;
use relay_config::{Feed, Stream};
use std::io::Write as _;

/// How envelopes are labelled. `None` means the default described in the module docs.
#[derive(Debug, Clone, Default)]
pub struct HecOptions {
    /// `host` of every event; omitted when `None`.
    pub host: Option<String>,
    /// `source`; default `xdr-relay:{feed}:{tenant_id}`.
    pub source: Option<Template>,
    /// `sourcetype` of `incidents` events; default [`default_sourcetype`] of the feed.
    pub sourcetype_incidents: Option<Template>,
    /// `sourcetype` of `alerts` events; default [`default_sourcetype`] of the feed.
    pub sourcetype_alerts: Option<Template>,
    /// `sourcetype` of playbook audit events; default [`ACTIONS_SOURCETYPE`].
    pub sourcetype_actions: Option<Template>,
    /// `index`; omitted when `None`.
    pub index: Option<Template>,
}

/// The Splunk Add-on for Microsoft Security's sourcetype for documents of `feed`:
/// incidents (both APIs) `ms365:defender:incident`; Defender for Endpoint alerts
/// `ms:defender:atp:alerts`; Graph `alerts_v2` alerts `ms365:defender:incident:alerts`
/// (the add-on's name for the Graph alert documents it splits out of incidents — the same
/// schema as `alerts_v2`). Unlike the add-on, incidents keep their nested alerts.
pub fn default_sourcetype(feed: Feed) -> &'static str {
    match feed {
        Feed::M365dIncidents | Feed::GraphIncidents => "ms365:defender:incident",
        Feed::MdeAlerts => "ms:defender:atp:alerts",
        Feed::GraphAlerts => "ms365:defender:incident:alerts",
    }
}

/// The sourcetype of playbook audit events (stream `actions`) unless configured.
pub const ACTIONS_SOURCETYPE: &str = "xdr:relay:actions";

/// Appends the HEC envelope of `event` to `out` (no separator: HEC takes envelopes back to
/// back).
pub fn encode_event(event: &Event, opts: &HecOptions, out: &mut Vec<u8>) {
    // Only templates render into it: the defaults are written without a copy, and an
    // empty `String` does not allocate.
    let mut scratch = String::new();
    out.extend_from_slice(b"{\"time\":");
    write_epoch_micros(out, event.version_time.timestamp_micros());
    if let Some(host) = &opts.host {
        out.extend_from_slice(b",\"host\":");
        json::write_str(out, host);
    }
    out.extend_from_slice(b",\"source\":");
    match &opts.source {
        Some(t) => {
            t.render_into(event, &mut scratch);
            json::write_str(out, &scratch);
        }
        None => json::write_str_parts(
            out,
            &["xdr-relay:", event.feed.as_str(), ":", &event.tenant_id],
        ),
    }
    out.extend_from_slice(b",\"sourcetype\":");
    let sourcetype = match event.stream {
        Stream::Incidents => &opts.sourcetype_incidents,
        Stream::Alerts => &opts.sourcetype_alerts,
        Stream::Actions => &opts.sourcetype_actions,
    };
    match sourcetype {
        Some(t) => {
            scratch.clear();
            t.render_into(event, &mut scratch);
            json::write_str(out, &scratch);
        }
        None if event.stream == Stream::Actions => json::write_str(out, ACTIONS_SOURCETYPE),
        None => json::write_str(out, default_sourcetype(event.feed)),
    }
    if let Some(t) = &opts.index {
        scratch.clear();
        t.render_into(event, &mut scratch);
        out.extend_from_slice(b",\"index\":");
        json::write_str(out, &scratch);
    }
    out.extend_from_slice(b",\"fields\":{\"tenant_id\":");
    json::write_str(out, &event.tenant_id);
    out.extend_from_slice(b",\"tenant_name\":");
    json::write_str(out, &event.tenant_name);
    out.extend_from_slice(b",\"stream\":\"");
    out.extend_from_slice(event.stream.as_str().as_bytes());
    out.extend_from_slice(b"\",\"feed\":\"");
    out.extend_from_slice(event.feed.as_str().as_bytes());
    out.extend_from_slice(b"\"},\"event\":");
    out.extend_from_slice(event.raw.get().as_bytes());
    out.push(b'}');
}

/// Writes microseconds since the epoch as seconds with six decimals, never in exponent form.
fn write_epoch_micros(out: &mut Vec<u8>, micros: i64) {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testdata::*;
    use serde_json::value::RawValue;

    fn envelope(e: &Event, o: &HecOptions) -> String {
        let mut out = Vec::new();
        encode_event(e, o, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn small(feed: Feed, page: &str) -> Event {
        let mut e = event(page, 0, feed);
        e.raw = RawValue::from_string(r#"{"id":"x"}"#.into())
            .unwrap()
            .into();
        e
    }

    #[test]
    fn default_envelope_of_a_graph_alert() {
        let e = small(Feed::GraphAlerts, GRAPH_ALERTS);
        assert_eq!(
            envelope(&e, &HecOptions::default()),
            concat!(
                r#"{"time":1697795647.503333,"#,
                r#""source":"xdr-relay:graph_alerts:3adb963c-8e61-48e8-a06d-6dbb0dacea39","#,
                r#""sourcetype":"ms365:defender:incident:alerts","#,
                r#""fields":{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","stream":"alerts","feed":"graph_alerts"},"#,
                r#""event":{"id":"x"}}"#
            )
        );
    }

    #[test]
    fn configured_envelope_of_an_m365d_incident() {
        let e = small(Feed::M365dIncidents, M365D_INCIDENTS);
        let o = HecOptions {
            host: Some("relay01".into()),
            source: Some(Template::parse("defender:{tenant}").unwrap()),
            sourcetype_incidents: Some(Template::parse("defender:{stream}").unwrap()),
            sourcetype_alerts: Some(Template::parse("unused").unwrap()),
            sourcetype_actions: None,
            index: Some(Template::parse("mssp_{tenant}").unwrap()),
        };
        assert_eq!(
            envelope(&e, &o),
            concat!(
                r#"{"time":1599403617.290000,"host":"relay01","source":"defender:contoso","#,
                r#""sourcetype":"defender:incidents","index":"mssp_contoso","#,
                r#""fields":{"tenant_id":"3adb963c-8e61-48e8-a06d-6dbb0dacea39","tenant_name":"contoso","stream":"incidents","feed":"m365d_incidents"},"#,
                r#""event":{"id":"x"}}"#
            )
        );
    }

    #[test]
    fn sourcetypes_follow_the_splunk_add_on() {
        for (page, feed, st) in [
            (MDE_ALERTS, Feed::MdeAlerts, "ms:defender:atp:alerts"),
            (
                GRAPH_INCIDENTS,
                Feed::GraphIncidents,
                "ms365:defender:incident",
            ),
        ] {
            let env = envelope(&small(feed, page), &HecOptions::default());
            assert!(env.contains(&format!(r#""sourcetype":"{st}""#)), "{env}");
        }
    }

    #[test]
    fn full_sample_envelopes_are_valid_json_with_the_document_intact() {
        for (page, feed) in [
            (GRAPH_ALERTS, Feed::GraphAlerts),
            (MDE_ALERTS, Feed::MdeAlerts),
            (M365D_INCIDENTS, Feed::M365dIncidents),
            (GRAPH_INCIDENTS, Feed::GraphIncidents),
        ] {
            let e = event(page, 0, feed);
            let v: serde_json::Value =
                serde_json::from_str(&envelope(&e, &HecOptions::default())).unwrap();
            let doc: serde_json::Value = serde_json::from_str(e.raw.get()).unwrap();
            assert_eq!(v["event"], doc);
            assert!(v["time"].is_f64());
            for f in ["tenant_id", "tenant_name", "stream", "feed"] {
                assert!(v["fields"][f].is_string(), "{f}");
            }
        }
    }

    #[test]
    fn time_is_plain_decimal_seconds() {
        let w = |m| {
            let mut o = Vec::new();
            write_epoch_micros(&mut o, m);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(w(1_697_795_647_503_333), "1697795647.503333");
        assert_eq!(w(0), "0.000000");
        assert_eq!(w(-1_500_000), "-1.500000");
        assert_eq!(w(5), "0.000005");
    }
}
