//! Deciding: which playbooks match an alert, and for each device it names whether to
//! act, wait for approval, only say so (dry run) or hold back (a limit, the never-list).
//! Matching ([`matches`]) is pure; [`Decider`] adds the memory a decision needs — the
//! keys already decided (each (playbook, tenant, alert, device) once, whatever later
//! versions say) and the sliding-hour counts and per-incident devices the limits check —
//! restored from the journal at start.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use parking_lot::Mutex;
use relay_config::{PlaybookAction, PlaybookConfig, PlaybookMode, PlaybookWhen, Severity};
use relay_sinks::Severity as EventSeverity;
use relay_state::{ActionKey, ActionRecord, ActionState, NewAction};

use crate::facts::AlertFacts;

/// The severity an event carries, on the configuration's scale.
fn severity(s: EventSeverity) -> Option<Severity> {
    match s {
        EventSeverity::Informational => Some(Severity::Informational),
        EventSeverity::Low => Some(Severity::Low),
        EventSeverity::Medium => Some(Severity::Medium),
        EventSeverity::High => Some(Severity::High),
        EventSeverity::Unknown => None,
    }
}

/// Whether an alert of `sev` with `facts` meets `when`. Pure.
pub fn matches(when: &PlaybookWhen, sev: EventSeverity, facts: &AlertFacts) -> bool {
    let field = |pattern: &Option<relay_config::Pattern>, value: &Option<String>| match pattern {
        None => true,
        Some(p) => value.as_deref().is_some_and(|v| p.is_match(v)),
    };
    severity(sev).is_some_and(|s| s >= when.min_severity)
        && field(&when.title_matches, &facts.title)
        && field(&when.category_matches, &facts.category)
        && field(&when.detection_source_matches, &facts.detection_source)
        && field(&when.service_source_matches, &facts.service_source)
}

/// The API option a playbook's action sends.
pub fn api_option(action: PlaybookAction) -> &'static str {
    match action {
        PlaybookAction::Isolate(t) => t.api_value(),
        PlaybookAction::RunAvScan(t) => t.api_value(),
    }
}

/// The alert a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct AlertRef<'a> {
    /// The tenant's configured name.
    pub tenant: &'a str,
    /// The alert id.
    pub alert_id: &'a str,
    /// Its feed's stable name.
    pub feed: &'a str,
    /// Its severity.
    pub severity: EventSeverity,
}

#[derive(Default)]
struct Memory {
    decided: HashSet<ActionKey>,
    /// Per playbook, the times of decisions counting against `per_hour`.
    hour: HashMap<String, VecDeque<DateTime<Utc>>>,
    /// Per (playbook, tenant), for `per_tenant_per_hour`.
    tenant_hour: HashMap<(String, String), VecDeque<DateTime<Utc>>>,
    /// Per (playbook, tenant, incident), the devices decided on.
    incident_devices: HashMap<(String, String, String), HashSet<String>>,
}

fn recent(q: &mut VecDeque<DateTime<Utc>>, now: DateTime<Utc>) -> usize {
    while q.front().is_some_and(|t| *t <= now - Duration::hours(1)) {
        q.pop_front();
    }
    q.len()
}

/// Decides for every playbook; shared by every tenant's alert feed.
pub struct Decider {
    playbooks: Vec<PlaybookConfig>,
    memory: Mutex<Memory>,
}

impl Decider {
    /// A decider for `playbooks`, remembering `journal` (every row of the action journal).
    pub fn new(playbooks: Vec<PlaybookConfig>, journal: &[ActionRecord]) -> Decider {
        let mut m = Memory::default();
        for r in journal {
            let d = &r.decision;
            m.decided.insert(d.key.clone());
            if d.state.counts_against_limits() {
                remember(&mut m, d, r.created);
            }
        }
        Decider {
            playbooks,
            memory: Mutex::new(m),
        }
    }

    /// Whether any playbook may act on `tenant`.
    pub fn applies_to(&self, tenant: &str) -> bool {
        self.playbooks.iter().any(|p| p.tenants.includes(tenant))
    }

    /// The decisions on one alert version: one per (matching playbook, device) not
    /// decided before. Each is remembered at once (so limits see it); [`Decider::forget`]
    /// them if their commit fails.
    pub fn decide(
        &self,
        alert: AlertRef<'_>,
        facts: &AlertFacts,
        now: DateTime<Utc>,
    ) -> Vec<NewAction> {
        let mut out = Vec::new();
        let mut m = self.memory.lock();
        for pb in &self.playbooks {
            if !pb.tenants.includes(alert.tenant) || !matches(&pb.when, alert.severity, facts) {
                continue;
            }
            for device in &facts.devices {
                let key = ActionKey {
                    playbook: pb.name.clone(),
                    tenant: alert.tenant.to_string(),
                    alert_id: alert.alert_id.to_string(),
                    device_id: device.id.clone(),
                };
                if m.decided.contains(&key) {
                    continue;
                }
                let limited = self.limit_hit(&mut m, pb, &key, device.name.as_deref(), facts, now);
                let state = match (limited, pb.mode) {
                    (Some(_), _) => ActionState::Limited,
                    (None, PlaybookMode::DryRun) => ActionState::WouldAct,
                    (None, PlaybookMode::Approve) => ActionState::AwaitingApproval,
                    (None, PlaybookMode::Enforce) => ActionState::Queued,
                };
                let decision = NewAction {
                    key,
                    action: pb.action.as_str().to_string(),
                    option: api_option(pb.action).to_string(),
                    mode: pb.mode.as_str().to_string(),
                    state,
                    reason: limited.map(str::to_string),
                    incident_id: facts.incident_id.clone(),
                    device_name: device.name.clone(),
                    alert_title: facts.title.clone(),
                    feed: alert.feed.to_string(),
                };
                m.decided.insert(decision.key.clone());
                if state.counts_against_limits() {
                    remember(&mut m, &decision, now);
                }
                out.push(decision);
            }
        }
        out
    }

    /// Which limit, if any, stops acting on this device now.
    fn limit_hit(
        &self,
        m: &mut Memory,
        pb: &PlaybookConfig,
        key: &ActionKey,
        device_name: Option<&str>,
        facts: &AlertFacts,
        now: DateTime<Utc>,
    ) -> Option<&'static str> {
        let l = &pb.limits;
        if let (Some(never), Some(name)) = (&l.never_devices_matching, device_name) {
            if never.is_match(name) {
                return Some("never_devices_matching");
            }
        }
        if let Some(incident) = &facts.incident_id {
            let k = (pb.name.clone(), key.tenant.clone(), incident.clone());
            let devices = m.incident_devices.get(&k);
            let known = devices.is_some_and(|d| d.contains(&key.device_id));
            if !known && devices.map_or(0, HashSet::len) >= l.max_devices_per_incident as usize {
                return Some("max_devices_per_incident");
            }
        }
        let tk = (pb.name.clone(), key.tenant.clone());
        if m.tenant_hour.get_mut(&tk).map_or(0, |q| recent(q, now))
            >= l.per_tenant_per_hour as usize
        {
            return Some("per_tenant_per_hour");
        }
        if m.hour.get_mut(&pb.name).map_or(0, |q| recent(q, now)) >= l.per_hour as usize {
            return Some("per_hour");
        }
        None
    }

    /// Forgets decisions whose commit failed: the re-poll decides them again. Their
    /// places in the hourly counts stay taken until the hour passes (erring on the side
    /// of sending fewer actions).
    pub fn forget(&self, decisions: &[NewAction]) {
        let mut m = self.memory.lock();
        for d in decisions {
            m.decided.remove(&d.key);
        }
    }
}

fn remember(m: &mut Memory, d: &NewAction, at: DateTime<Utc>) {
    let k = &d.key;
    m.hour.entry(k.playbook.clone()).or_default().push_back(at);
    m.tenant_hour
        .entry((k.playbook.clone(), k.tenant.clone()))
        .or_default()
        .push_back(at);
    if let Some(incident) = &d.incident_id {
        m.incident_devices
            .entry((k.playbook.clone(), k.tenant.clone(), incident.clone()))
            .or_default()
            .insert(k.device_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Device;
    use relay_config::{IsolationType, PlaybookLimits, TenantSelector};

    fn when(min: Severity) -> PlaybookWhen {
        PlaybookWhen {
            min_severity: min,
            title_matches: None,
            category_matches: None,
            detection_source_matches: None,
            service_source_matches: None,
        }
    }

    fn pattern(s: &str) -> relay_config::Pattern {
        relay_config::Pattern::new(s).unwrap()
    }

    fn playbook(name: &str, mode: PlaybookMode, limits: PlaybookLimits) -> PlaybookConfig {
        PlaybookConfig {
            name: name.into(),
            action: PlaybookAction::Isolate(IsolationType::Selective),
            mode,
            tenants: TenantSelector::All,
            when: when(Severity::Medium),
            limits,
        }
    }

    fn facts(incident: &str, devices: &[(&str, &str)]) -> AlertFacts {
        AlertFacts {
            title: Some("Ransomware detected".into()),
            category: Some("Ransomware".into()),
            detection_source: Some("WindowsDefenderAv".into()),
            service_source: None,
            incident_id: Some(incident.into()),
            devices: devices
                .iter()
                .map(|(id, name)| Device {
                    id: (*id).into(),
                    name: Some((*name).into()),
                })
                .collect(),
        }
    }

    fn alert<'a>(tenant: &'a str, id: &'a str) -> AlertRef<'a> {
        AlertRef {
            tenant,
            alert_id: id,
            feed: "mde_alerts",
            severity: EventSeverity::High,
        }
    }

    #[test]
    fn conditions_all_must_hold_and_absent_fields_do_not_match() {
        let f = facts("1", &[]);
        assert!(matches(&when(Severity::High), EventSeverity::High, &f));
        assert!(!matches(&when(Severity::High), EventSeverity::Medium, &f));
        assert!(!matches(
            &when(Severity::Informational),
            EventSeverity::Unknown,
            &f
        ));
        let mut w = when(Severity::Low);
        w.title_matches = Some(pattern("(?i)ransom"));
        assert!(matches(&w, EventSeverity::Low, &f));
        w.service_source_matches = Some(pattern("Endpoint"));
        assert!(
            !matches(&w, EventSeverity::Low, &f),
            "MDE alerts have no serviceSource"
        );
        let mut w = when(Severity::Low);
        w.title_matches = Some(pattern("^phish"));
        assert!(!matches(&w, EventSeverity::High, &f));
    }

    #[test]
    fn each_device_is_decided_once_whatever_later_versions_say() {
        let d = Decider::new(
            vec![playbook(
                "iso",
                PlaybookMode::Enforce,
                PlaybookLimits::default(),
            )],
            &[],
        );
        let now = Utc::now();
        let f = facts("1", &[("m1", "host1"), ("m2", "host2")]);
        let first = d.decide(alert("contoso", "a1"), &f, now);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|a| a.state == ActionState::Queued));
        assert_eq!(first[0].option, "Selective");
        assert!(d.decide(alert("contoso", "a1"), &f, now).is_empty());
        // The same devices in another tenant are other keys.
        assert_eq!(d.decide(alert("fabrikam", "a1"), &f, now).len(), 2);
        // A failed commit is forgotten and decided again.
        d.forget(&first);
        assert_eq!(d.decide(alert("contoso", "a1"), &f, now).len(), 2);
    }

    #[test]
    fn modes_give_their_first_state() {
        let now = Utc::now();
        let f = facts("1", &[("m1", "host1")]);
        for (mode, state) in [
            (PlaybookMode::DryRun, ActionState::WouldAct),
            (PlaybookMode::Approve, ActionState::AwaitingApproval),
            (PlaybookMode::Enforce, ActionState::Queued),
        ] {
            let d = Decider::new(vec![playbook("p", mode, PlaybookLimits::default())], &[]);
            let got = d.decide(alert("t", "a"), &f, now);
            assert_eq!(got[0].state, state);
            assert_eq!(got[0].mode, mode.as_str());
        }
    }

    #[test]
    fn limits_and_the_never_list_hold_back_and_say_which() {
        let limits = PlaybookLimits {
            per_tenant_per_hour: 2,
            per_hour: 3,
            max_devices_per_incident: 2,
            never_devices_matching: Some(pattern("(?i)^dc")),
        };
        let d = Decider::new(vec![playbook("p", PlaybookMode::Enforce, limits)], &[]);
        let now = Utc::now();
        let states = |v: Vec<NewAction>| -> Vec<(ActionState, Option<String>)> {
            v.into_iter().map(|a| (a.state, a.reason)).collect()
        };
        let got = states(d.decide(
            alert("t1", "a1"),
            &facts(
                "1",
                &[("m1", "DC01"), ("m2", "h2"), ("m3", "h3"), ("m4", "h4")],
            ),
            now,
        ));
        assert_eq!(
            got,
            [
                (ActionState::Limited, Some("never_devices_matching".into())),
                (ActionState::Queued, None),
                (ActionState::Queued, None),
                (
                    ActionState::Limited,
                    Some("max_devices_per_incident".into())
                ),
            ]
        );
        // A device already acted on in this incident does not count twice.
        let got = states(d.decide(alert("t1", "a2"), &facts("1", &[("m2", "h2")]), now));
        assert_eq!(
            got,
            [(ActionState::Limited, Some("per_tenant_per_hour".into()))]
        );
        let got = states(d.decide(alert("t2", "a3"), &facts("5", &[("x1", "h")]), now));
        assert_eq!(got, [(ActionState::Queued, None)]);
        let got = states(d.decide(alert("t3", "a4"), &facts("6", &[("y1", "h")]), now));
        assert_eq!(got, [(ActionState::Limited, Some("per_hour".into()))]);
        // An hour later the windows are free again.
        let later = now + Duration::minutes(61);
        let got = states(d.decide(alert("t3", "a5"), &facts("6", &[("y1", "h")]), later));
        assert_eq!(got, [(ActionState::Queued, None)]);
    }

    #[test]
    fn the_journal_restores_what_was_decided_and_counted() {
        let now = Utc::now();
        let limits = PlaybookLimits {
            per_tenant_per_hour: 1,
            ..PlaybookLimits::default()
        };
        let first = Decider::new(
            vec![playbook("p", PlaybookMode::Enforce, limits.clone())],
            &[],
        );
        let decided = first.decide(alert("t", "a1"), &facts("1", &[("m1", "h")]), now);
        let journal: Vec<ActionRecord> = decided
            .into_iter()
            .enumerate()
            .map(|(i, decision)| ActionRecord {
                id: i as i64 + 1,
                decision,
                machine_action_id: None,
                detail: None,
                created: now,
                updated: now,
            })
            .collect();
        let again = Decider::new(vec![playbook("p", PlaybookMode::Enforce, limits)], &journal);
        assert!(again
            .decide(alert("t", "a1"), &facts("1", &[("m1", "h")]), now)
            .is_empty());
        let next = again.decide(alert("t", "a2"), &facts("2", &[("m9", "h")]), now);
        assert_eq!(next[0].reason.as_deref(), Some("per_tenant_per_hour"));
    }
}
