//! Audit events: every decision and every step after it becomes an [`Event`] of stream
//! `actions`, delivered to the tenant's sinks like its alerts. Pure.

use chrono::{DateTime, SecondsFormat, Utc};
use relay_config::{Feed, Stream};
use relay_sinks::{Event, RawDoc, Severity};
use relay_state::NewAction;
use serde::Serialize;

/// What an audit event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Dry run: this is what would have been sent.
    WouldAct,
    /// A limit or the never-list held it back (see `reason`).
    Limited,
    /// Waiting for `xdr-relay actions approve`.
    AwaitingApproval,
    /// An operator approved it.
    Approved,
    /// An operator denied it.
    Denied,
    /// The API accepted it (or had the same action in progress already).
    Sent,
    /// The machine action finished successfully.
    Succeeded,
    /// Refused by the API, or the machine action ended otherwise than `Succeeded`.
    Failed,
}

impl Outcome {
    /// The name in the event (`outcome`) and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::WouldAct => "would_act",
            Outcome::Limited => "limited",
            Outcome::AwaitingApproval => "awaiting_approval",
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Sent => "sent",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }

    /// Every outcome, for metrics.
    pub const ALL: [Outcome; 8] = [
        Outcome::WouldAct,
        Outcome::Limited,
        Outcome::AwaitingApproval,
        Outcome::Approved,
        Outcome::Denied,
        Outcome::Sent,
        Outcome::Succeeded,
        Outcome::Failed,
    ];

    /// How loud: a failure wants attention, a sent action is notable, the rest is
    /// bookkeeping.
    fn severity(self) -> Severity {
        match self {
            Outcome::Failed => Severity::High,
            Outcome::Sent | Outcome::Succeeded | Outcome::AwaitingApproval => Severity::Medium,
            Outcome::WouldAct | Outcome::Limited | Outcome::Approved | Outcome::Denied => {
                Severity::Low
            }
        }
    }
}

/// The document of an audit event (the `raw` every sink carries).
#[derive(Debug, Serialize)]
struct AuditDoc<'a> {
    time: String,
    outcome: &'static str,
    playbook: &'a str,
    tenant: &'a str,
    tenant_id: &'a str,
    action: &'a str,
    option: &'a str,
    mode: &'a str,
    alert_id: &'a str,
    incident_id: Option<&'a str>,
    device_id: &'a str,
    device_name: Option<&'a str>,
    alert_title: Option<&'a str>,
    reason: Option<&'a str>,
    action_id: Option<i64>,
    machine_action_id: Option<&'a str>,
    detail: Option<&'a str>,
}

/// What else an audit event says beyond its decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// The journal row id (what `actions approve` takes), once there is one.
    pub action_id: Option<i64>,
    /// The machine action id the API gave.
    pub machine_action_id: Option<&'a str>,
    /// The API's answer, or the fix an operator must apply.
    pub detail: Option<&'a str>,
}

/// The audit event of `decision` reaching `outcome` at `at`. (Serialising its document
/// cannot fail in practice; the error is passed on rather than assumed away.)
pub fn event(
    tenant_id: &str,
    decision: &NewAction,
    outcome: Outcome,
    extra: Extra<'_>,
    at: DateTime<Utc>,
) -> Result<Event, serde_json::Error> {
    let k = &decision.key;
    let doc = AuditDoc {
        time: at.to_rfc3339_opts(SecondsFormat::Micros, true),
        outcome: outcome.as_str(),
        playbook: &k.playbook,
        tenant: &k.tenant,
        tenant_id,
        action: &decision.action,
        option: &decision.option,
        mode: &decision.mode,
        alert_id: &k.alert_id,
        incident_id: decision.incident_id.as_deref(),
        device_id: &k.device_id,
        device_name: decision.device_name.as_deref(),
        alert_title: decision.alert_title.as_deref(),
        reason: decision.reason.as_deref(),
        action_id: extra.action_id,
        machine_action_id: extra.machine_action_id,
        detail: extra.detail,
    };
    let raw = RawDoc::from(serde_json::value::to_raw_value(&doc)?);
    let feed = if decision.feed == Feed::GraphAlerts.as_str() {
        Feed::GraphAlerts
    } else {
        Feed::MdeAlerts
    };
    Ok(Event {
        tenant_id: tenant_id.to_string(),
        tenant_name: k.tenant.clone(),
        stream: Stream::Actions,
        feed,
        id: format!("{}:{}:{}", k.playbook, k.alert_id, k.device_id),
        version_time: at,
        severity: outcome.severity(),
        title: Some(format!(
            "playbook {}: {} {}: {}",
            k.playbook,
            decision.action,
            decision.device_name.as_deref().unwrap_or(&k.device_id),
            outcome.as_str()
        )),
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_state::{ActionKey, ActionState};

    fn decision() -> NewAction {
        NewAction {
            key: ActionKey {
                playbook: "iso".into(),
                tenant: "contoso".into(),
                alert_id: "da1".into(),
                device_id: "m1".into(),
            },
            action: "isolate".into(),
            option: "Selective".into(),
            mode: "enforce".into(),
            state: ActionState::Queued,
            reason: None,
            incident_id: Some("7".into()),
            device_name: Some("host1".into()),
            alert_title: Some("Ransomware".into()),
            feed: "graph_alerts".into(),
        }
    }

    fn sent() -> Event {
        let at: DateTime<Utc> = "2026-01-02T03:04:05.5Z".parse().unwrap();
        event(
            "tid",
            &decision(),
            Outcome::Sent,
            Extra {
                action_id: Some(3),
                machine_action_id: Some("ma"),
                detail: None,
            },
            at,
        )
        .unwrap()
    }

    #[test]
    fn every_sink_formats_audit_events_as_the_actions_stream() {
        let e = sent();
        let mut hec = Vec::new();
        relay_sinks::hec::encode_event(&e, &relay_sinks::hec::HecOptions::default(), &mut hec);
        let hec: serde_json::Value = serde_json::from_slice(&hec).unwrap();
        assert_eq!(hec["sourcetype"], "xdr:relay:actions");
        assert_eq!(hec["fields"]["stream"], "actions");
        assert_eq!(hec["event"]["outcome"], "sent");
        assert_eq!(
            relay_sinks::cef::to_line(&e, &relay_sinks::cef::CefOptions::default()),
            "CEF:0|xdr-relay|playbooks|1.0|playbook:sent|playbook iso: isolate host1: sent|5|\
             act=isolate outcome=sent rt=1767323045500 dhost=host1 deviceExternalId=tid \
             cs1Label=Playbook cs1=iso cs2Label=AlertId cs2=da1 cs3Label=MdeDeviceId cs3=m1 \
             cs4Label=Mode cs4=enforce cs6Label=MachineActionId cs6=ma flexString1Label=Option \
             flexString1=Selective flexString2Label=IncidentId flexString2=7 cn1=3 \
             cn1Label=ActionId cat=contoso"
        );
        let mut line = Vec::new();
        relay_sinks::jsonl::encode_line(&e, &mut line);
        let line: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(line["stream"], "actions");
        assert_eq!(line["event"]["device_id"], "m1");
        let topic = relay_sinks::Template::parse("defender.{tenant}.{stream}").unwrap();
        assert_eq!(topic.render(&e), "defender.contoso.actions");
        // Through the outbox and back, as the sink workers read it.
        let back = Event::from_outbox_bytes(&e.to_outbox_bytes()).unwrap();
        assert_eq!(back.stream, Stream::Actions);
        assert_eq!(back.raw.get(), e.raw.get());
    }

    #[test]
    fn an_audit_event_names_playbook_alert_device_and_outcome() {
        let e = sent();
        assert_eq!(e.stream, Stream::Actions);
        assert_eq!(e.feed, Feed::GraphAlerts);
        assert_eq!(e.id, "iso:da1:m1");
        assert_eq!(
            e.title.as_deref(),
            Some("playbook iso: isolate host1: sent")
        );
        assert_eq!(
            e.raw.get(),
            r#"{"time":"2026-01-02T03:04:05.500000Z","outcome":"sent","playbook":"iso","tenant":"contoso","tenant_id":"tid","action":"isolate","option":"Selective","mode":"enforce","alert_id":"da1","incident_id":"7","device_id":"m1","device_name":"host1","alert_title":"Ransomware","reason":null,"action_id":3,"machine_action_id":"ma","detail":null}"#
        );
    }
}
