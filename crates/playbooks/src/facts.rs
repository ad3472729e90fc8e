//! What a playbook looks at in an alert, read from the alert document of either API
//! family: Defender for Endpoint alerts name their machine in `machineId` /
//! `computerDnsName`; Graph `alerts_v2` alerts in `deviceEvidence` entries
//! (`mdeDeviceId`, `deviceDnsName`). Pure.

use relay_config::{Feed, Stream};
use relay_sinks::Event;
use serde_json::Value;

/// A device an alert names, by its MDE machine id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The MDE machine id (40 hex characters).
    pub id: String,
    /// Its DNS name, when the alert gives one.
    pub name: Option<String>,
}

/// The fields of an alert playbooks match on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertFacts {
    /// `title`.
    pub title: Option<String>,
    /// `category`.
    pub category: Option<String>,
    /// `detectionSource`.
    pub detection_source: Option<String>,
    /// `serviceSource` (Graph only; MDE alerts have none).
    pub service_source: Option<String>,
    /// `incidentId`, as text.
    pub incident_id: Option<String>,
    /// The devices, each once, in document order.
    pub devices: Vec<Device>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn push(devices: &mut Vec<Device>, id: Option<String>, name: Option<String>) {
    let Some(id) = id else { return };
    match devices.iter_mut().find(|d| d.id.eq_ignore_ascii_case(&id)) {
        Some(d) => {
            if d.name.is_none() {
                d.name = name;
            }
        }
        None => devices.push(Device { id, name }),
    }
}

impl AlertFacts {
    /// The facts of an alert event; `None` for incidents, audit events and documents that
    /// are not JSON objects.
    pub fn of(event: &Event) -> Option<AlertFacts> {
        if event.stream != Stream::Alerts {
            return None;
        }
        let doc: Value = serde_json::from_str(event.raw.get()).ok()?;
        if !doc.is_object() {
            return None;
        }
        let mut devices = Vec::new();
        match event.feed {
            Feed::MdeAlerts => push(
                &mut devices,
                text(&doc, "machineId"),
                text(&doc, "computerDnsName"),
            ),
            _ => {
                let evidence = doc.get("evidence").and_then(Value::as_array);
                for e in evidence.into_iter().flatten() {
                    let is_device = e
                        .get("@odata.type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.ends_with("deviceEvidence"));
                    if is_device {
                        push(
                            &mut devices,
                            text(e, "mdeDeviceId"),
                            text(e, "deviceDnsName"),
                        );
                    }
                }
            }
        }
        Some(AlertFacts {
            title: event.title.clone().or_else(|| text(&doc, "title")),
            category: text(&doc, "category"),
            detection_source: text(&doc, "detectionSource"),
            service_source: text(&doc, "serviceSource"),
            incident_id: text(&doc, "incidentId"),
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use relay_sinks::{RawDoc, Severity};

    pub(crate) fn event(feed: Feed, raw: &str) -> Event {
        Event {
            tenant_id: "3adb963c-8e61-48e8-a06d-6dbb0dacea39".into(),
            tenant_name: "contoso".into(),
            stream: feed.stream(),
            feed,
            id: "a1".into(),
            version_time: Utc::now(),
            severity: Severity::High,
            title: None,
            raw: RawDoc::parse(raw.to_string()).unwrap(),
        }
    }

    #[test]
    fn mde_alerts_name_their_machine() {
        let f = AlertFacts::of(&event(
            Feed::MdeAlerts,
            r#"{"id":"da1","title":"Ransomware","category":"Ransomware","detectionSource":"WindowsDefenderAv","incidentId":7,"machineId":"abc","computerDnsName":"host1.corp"}"#,
        ))
        .unwrap();
        assert_eq!(f.title.as_deref(), Some("Ransomware"));
        assert_eq!(f.incident_id.as_deref(), Some("7"));
        assert_eq!(f.service_source, None);
        assert_eq!(
            f.devices,
            [Device {
                id: "abc".into(),
                name: Some("host1.corp".into())
            }]
        );
    }

    #[test]
    fn graph_alerts_name_devices_in_device_evidence_once_each() {
        let f = AlertFacts::of(&event(
            Feed::GraphAlerts,
            r##"{"id":"da1","title":"t","serviceSource":"microsoftDefenderForEndpoint","incidentId":"9","evidence":[
                {"@odata.type":"#microsoft.graph.security.processEvidence","mdeDeviceId":"other"},
                {"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"d1","deviceDnsName":"h1"},
                {"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"D1"},
                {"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"d2"},
                {"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":null}
            ]}"##,
        ))
        .unwrap();
        assert_eq!(
            f.service_source.as_deref(),
            Some("microsoftDefenderForEndpoint")
        );
        let ids: Vec<_> = f.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(f.devices[0].name.as_deref(), Some("h1"));
    }

    #[test]
    fn incidents_and_odd_documents_have_no_facts() {
        assert!(AlertFacts::of(&event(Feed::GraphIncidents, r#"{"id":"1"}"#)).is_none());
        assert!(AlertFacts::of(&event(Feed::GraphAlerts, "[]")).is_none());
        let f = AlertFacts::of(&event(Feed::GraphAlerts, r#"{"evidence":"x"}"#)).unwrap();
        assert!(f.devices.is_empty());
    }
}
