//! Injected API failures per tenant: what a client sees when Defender, Graph or a
//! gateway in front of them misbehaves. Set at start (`SimConfig::faults`) or live
//! ([`crate::Sim::set_fault`], `POST /_sim/faults/{tenant_id}`).

use parking_lot::Mutex;
use relay_config::{Api, Feed};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// A 5xx (500, 502, 503, 504) with the API family's JSON error envelope; 503 carries
    /// `Retry-After`.
    ServerError {
        /// The status code.
        status: u16,
    },
    /// The TCP connection is reset (RST) without a response.
    ConnectionReset,
    /// The normal response, after a delay.
    Slow {
        /// How long the response is held back.
        #[serde(with = "millis")]
        delay: Duration,
    },
    /// 200 with a body that is not valid JSON.
    MalformedJson,
    /// 200 whose `Content-Length` promises the whole page but the connection closes
    /// halfway through the body.
    TruncatedBody,
    /// 200 with an honest length but a body cut halfway through the JSON document.
    CutJson,
    /// An HTML error page (`text/html`), as an application gateway sends it.
    HtmlError {
        /// The status code (502, 503, 504...).
        status: u16,
    },
    /// 429 with the family's throttling body, regardless of the quota.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_secs: u64,
    },
    /// Graph only: 206 Partial Content with `Warning: 199 - "..."`, one provider's
    /// items missing from the page.
    PartialContent,
    /// Graph incidents only: every request with `$expand=alerts` answers 500, requests
    /// without it work (a large tenant's behaviour, elastic/integrations#18144).
    ExpandFails,
}

/// A fault on a tenant's API requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    /// What goes wrong.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Only requests to this feed (all feeds when `None`).
    #[serde(default)]
    pub feed: Option<Feed>,
    /// Only the next N matching requests (until cleared when `None`).
    #[serde(default)]
    pub times: Option<u32>,
}

impl ApiFault {
    /// `kind` on every feed of the tenant until cleared.
    pub fn new(kind: FaultKind) -> ApiFault {
        ApiFault {
            kind,
            feed: None,
            times: None,
        }
    }

    /// Only on `feed`.
    pub fn on(mut self, feed: Feed) -> ApiFault {
        self.feed = Some(feed);
        self
    }

    /// Only for the next `n` matching requests.
    pub fn times(mut self, n: u32) -> ApiFault {
        self.times = Some(n);
        self
    }

    fn applies(&self, feed: Feed, expand: bool) -> bool {
        self.feed.is_none_or(|f| f == feed)
            && match self.kind {
                FaultKind::PartialContent => feed.api() == Api::Graph,
                FaultKind::ExpandFails => feed == Feed::GraphIncidents && expand,
                _ => true,
            }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Active faults of every tenant, in the order they were set.
pub(crate) struct Faults {
    tenants: Vec<Mutex<Vec<ApiFault>>>,
}

impl Faults {
    pub fn new(tenants: usize) -> Faults {
        Faults {
            tenants: (0..tenants).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub fn set(&self, tenant: usize, fault: ApiFault) {
        if let Some(cell) = self.tenants.get(tenant) {
            cell.lock().push(fault);
        }
    }

    pub fn clear(&self, tenant: usize) {
        if let Some(cell) = self.tenants.get(tenant) {
            cell.lock().clear();
        }
    }

    pub fn active(&self, tenant: usize) -> Vec<ApiFault> {
        self.tenants
            .get(tenant)
            .map(|c| c.lock().clone())
            .unwrap_or_default()
    }

    /// The fault this request (with or without `$expand`) meets, if any; counts it
    /// against `times`.
    pub fn take(&self, tenant: usize, feed: Feed, expand: bool) -> Option<FaultKind> {
        let mut faults = self.tenants.get(tenant)?.lock();
        let i = faults.iter().position(|f| f.applies(feed, expand))?;
        let kind = faults[i].kind.clone();
        if let Some(n) = &mut faults[i].times {
            *n = n.saturating_sub(1);
            if *n == 0 {
                faults.remove(i);
            }
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_then_gone_and_feed_scoping() {
        let f = Faults::new(1);
        let fault = ApiFault::new(FaultKind::ServerError { status: 503 });
        f.set(0, fault.on(Feed::MdeAlerts).times(2));
        assert_eq!(f.take(0, Feed::GraphAlerts, false), None);
        assert!(f.take(0, Feed::MdeAlerts, false).is_some());
        assert!(f.take(0, Feed::MdeAlerts, true).is_some());
        assert_eq!(f.take(0, Feed::MdeAlerts, false), None);
        f.set(0, ApiFault::new(FaultKind::PartialContent));
        assert_eq!(
            f.take(0, Feed::M365dIncidents, false),
            None,
            "206 is Graph's"
        );
        let partial = Some(FaultKind::PartialContent);
        assert_eq!(f.take(0, Feed::GraphIncidents, false), partial);
        assert_eq!(
            f.take(0, Feed::GraphIncidents, false),
            partial,
            "until cleared"
        );
        f.clear(0);
        assert_eq!(f.take(0, Feed::GraphIncidents, false), None);
        assert_eq!(f.take(5, Feed::GraphIncidents, false), None);
        f.set(0, ApiFault::new(FaultKind::ExpandFails));
        assert_eq!(f.take(0, Feed::GraphIncidents, false), None);
        assert_eq!(f.take(0, Feed::GraphAlerts, true), None);
        let expand = Some(FaultKind::ExpandFails);
        assert_eq!(f.take(0, Feed::GraphIncidents, true), expand);
    }

    #[test]
    fn json_form_is_tagged_by_kind() {
        let fault: ApiFault =
            serde_json::from_str(r#"{"kind":"slow","delay":1500,"feed":"graph_alerts","times":3}"#)
                .unwrap();
        assert_eq!(
            fault,
            ApiFault::new(FaultKind::Slow {
                delay: Duration::from_millis(1500)
            })
            .on(Feed::GraphAlerts)
            .times(3)
        );
        let fault: ApiFault = serde_json::from_str(r#"{"kind":"connection_reset"}"#).unwrap();
        assert_eq!(fault, ApiFault::new(FaultKind::ConnectionReset));
        let text =
            serde_json::to_string(&ApiFault::new(FaultKind::HtmlError { status: 502 })).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"html_error","status":502,"feed":null,"times":null}"#
        );
    }
}
