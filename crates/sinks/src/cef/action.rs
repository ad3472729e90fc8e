//! The CEF line of a playbook audit event (stream `actions`). The relay itself is the
//! reporting device here, not Defender: vendor `xdr-relay`, product `playbooks`. `act` is
//! the machine action, `outcome` the decision (`would_act`, `sent`, `failed`, ...),
//! `dhost` the device acted on.
//!
//! ```text
//! CEF:0|xdr-relay|playbooks|1.0|playbook:sent|playbook iso: isolate host1: sent|5|act=isolate outcome=sent rt=… dhost=host1 …
//! ```

use serde_json::Value;

use super::{escape_header, severity_number, truncate_chars, Extension, LABEL_MAX};
use crate::event::Event;

/// `Device Vendor` of audit lines.
pub const ACTIONS_VENDOR: &str = "xdr-relay";
/// `Device Product` of audit lines.
pub const ACTIONS_PRODUCT: &str = "playbooks";
/// `Device Version` of audit lines: the version of this mapping.
pub const ACTIONS_VERSION: &str = "1.0";

const TEXT_MAX: usize = 1023;

fn header(out: &mut String, value: &str) {
    escape_header(truncate_chars(value.trim(), 512).trim_end(), out);
    out.push('|');
}

pub(super) fn encode(event: &Event, out: &mut String) {
    let doc: Value = serde_json::from_str(event.raw.get()).unwrap_or(Value::Null);
    let s = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or_default();
    out.push_str("CEF:0|");
    header(out, ACTIONS_VENDOR);
    header(out, ACTIONS_PRODUCT);
    header(out, ACTIONS_VERSION);
    header(out, &format!("playbook:{}", s("outcome")));
    header(out, event.title.as_deref().unwrap_or("playbook action"));
    out.push_str(&severity_number(event.severity).to_string());
    out.push('|');
    let mut ext = Extension::new(out);
    ext.text("act", TEXT_MAX, s("action"));
    ext.text("outcome", 63, s("outcome"));
    ext.number("rt", event.version_time.timestamp_millis());
    ext.text("dhost", TEXT_MAX, s("device_name"));
    ext.text("deviceExternalId", 255, &event.tenant_id);
    let labelled = [
        ("cs1", "cs1Label", "Playbook", "playbook"),
        ("cs2", "cs2Label", "AlertId", "alert_id"),
        ("cs3", "cs3Label", "MdeDeviceId", "device_id"),
        ("cs4", "cs4Label", "Mode", "mode"),
        ("cs5", "cs5Label", "Reason", "reason"),
        ("cs6", "cs6Label", "MachineActionId", "machine_action_id"),
        ("flexString1", "flexString1Label", "Option", "option"),
        (
            "flexString2",
            "flexString2Label",
            "IncidentId",
            "incident_id",
        ),
    ];
    for (key, label_key, label, field) in labelled {
        ext.labelled(key, label_key, label, TEXT_MAX.min(LABEL_MAX), s(field));
    }
    if let Some(id) = doc.get("action_id").and_then(Value::as_i64) {
        ext.number("cn1", id);
        ext.text("cn1Label", LABEL_MAX, "ActionId");
    }
    ext.text("cat", TEXT_MAX, s("tenant"));
    ext.text("msg", TEXT_MAX, s("detail"));
}
