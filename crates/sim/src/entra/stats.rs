//! Token-request counters, so tests and benchmarks can assert how the client behaved
//! ("exactly one refresh per tenant", "never two refreshes in flight").

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;

/// The `grant_type` of a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// `client_credentials` (secret or certificate).
    ClientCredentials,
    /// `refresh_token`.
    RefreshToken,
    /// `authorization_code`.
    AuthorizationCode,
    /// `urn:ietf:params:oauth:grant-type:device_code`.
    DeviceCode,
    /// A request to `/devicecode` (starting a device flow).
    DeviceCodeStart,
    /// Missing or unsupported `grant_type`.
    Other,
}

impl GrantKind {
    pub(crate) fn from_grant_type(grant_type: Option<&str>) -> GrantKind {
        match grant_type {
            Some("client_credentials") => GrantKind::ClientCredentials,
            Some("refresh_token") => GrantKind::RefreshToken,
            Some("authorization_code") => GrantKind::AuthorizationCode,
            Some("urn:ietf:params:oauth:grant-type:device_code") | Some("device_code") => {
                GrantKind::DeviceCode
            }
            _ => GrantKind::Other,
        }
    }
}

/// How a token request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Tokens (or a device code) were issued.
    Issued,
    /// Device flow `authorization_pending`.
    Pending,
    /// An Entra error body (4xx).
    Rejected,
    /// An injected fault answered (503, reset).
    Faulted,
}

/// One counter: requests of `grant` for `tenant_id` that ended with `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenCount {
    /// Tenant id (or the path segment, for unknown tenants and `/common`).
    pub tenant_id: String,
    /// The grant type.
    pub grant: GrantKind,
    /// The outcome.
    pub outcome: Outcome,
    /// How many.
    pub count: u64,
}

/// The highest number of concurrent requests of one grant for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlightPeak {
    /// Tenant id.
    pub tenant_id: String,
    /// The grant type.
    pub grant: GrantKind,
    /// Peak concurrency observed.
    pub max_in_flight: u64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TokenStats {
    /// Every non-zero counter, sorted by tenant, grant, outcome.
    pub counts: Vec<TokenCount>,
    /// Concurrency peaks per tenant and grant.
    pub in_flight: Vec<InFlightPeak>,
}

impl TokenStats {
    /// Requests of `grant` that ended with `outcome`, over all tenants.
    pub fn total(&self, grant: GrantKind, outcome: Outcome) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.grant == grant && c.outcome == outcome)
            .map(|c| c.count)
            .sum()
    }

    /// Requests of `grant` for one tenant that ended with `outcome`.
    pub fn tenant(&self, tenant_id: &str, grant: GrantKind, outcome: Outcome) -> u64 {
        self.counts
            .iter()
            .filter(|c| {
                c.tenant_id.eq_ignore_ascii_case(tenant_id)
                    && c.grant == grant
                    && c.outcome == outcome
            })
            .map(|c| c.count)
            .sum()
    }

    /// All requests of `grant` for one tenant, whatever the outcome.
    pub fn tenant_requests(&self, tenant_id: &str, grant: GrantKind) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.tenant_id.eq_ignore_ascii_case(tenant_id) && c.grant == grant)
            .map(|c| c.count)
            .sum()
    }

    /// Peak concurrency of `grant` requests for one tenant.
    pub fn max_in_flight(&self, tenant_id: &str, grant: GrantKind) -> u64 {
        self.in_flight
            .iter()
            .find(|p| p.tenant_id.eq_ignore_ascii_case(tenant_id) && p.grant == grant)
            .map_or(0, |p| p.max_in_flight)
    }
}

#[derive(Default)]
struct Inner {
    counts: HashMap<(String, GrantKind, Outcome), u64>,
    /// (current, peak)
    in_flight: HashMap<(String, GrantKind), (u64, u64)>,
}

/// The live counters.
#[derive(Default)]
pub(crate) struct Stats {
    inner: Mutex<Inner>,
}

/// Decrements the in-flight gauge when the request ends, however it ends.
pub(crate) struct InFlight<'a> {
    stats: &'a Stats,
    key: (String, GrantKind),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut inner = self.stats.inner.lock();
        if let Some((current, _)) = inner.in_flight.get_mut(&self.key) {
            *current = current.saturating_sub(1);
        }
    }
}

impl Stats {
    pub fn record(&self, tenant: &str, grant: GrantKind, outcome: Outcome) {
        *self
            .inner
            .lock()
            .counts
            .entry((tenant.to_ascii_lowercase(), grant, outcome))
            .or_default() += 1;
    }

    pub fn enter(&self, tenant: &str, grant: GrantKind) -> InFlight<'_> {
        let key = (tenant.to_ascii_lowercase(), grant);
        let mut inner = self.inner.lock();
        let slot = inner.in_flight.entry(key.clone()).or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(slot.0);
        InFlight { stats: self, key }
    }

    pub fn snapshot(&self) -> TokenStats {
        let inner = self.inner.lock();
        let mut counts: Vec<TokenCount> = inner
            .counts
            .iter()
            .map(|((tenant_id, grant, outcome), count)| TokenCount {
                tenant_id: tenant_id.clone(),
                grant: *grant,
                outcome: *outcome,
                count: *count,
            })
            .collect();
        counts.sort_by(|a, b| {
            (&a.tenant_id, a.grant, a.outcome).cmp(&(&b.tenant_id, b.grant, b.outcome))
        });
        let mut in_flight: Vec<InFlightPeak> = inner
            .in_flight
            .iter()
            .map(|((tenant_id, grant), (_, peak))| InFlightPeak {
                tenant_id: tenant_id.clone(),
                grant: *grant,
                max_in_flight: *peak,
            })
            .collect();
        in_flight.sort_by(|a, b| (&a.tenant_id, a.grant).cmp(&(&b.tenant_id, b.grant)));
        TokenStats { counts, in_flight }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_peaks() {
        let s = Stats::default();
        s.record("T1", GrantKind::RefreshToken, Outcome::Issued);
        s.record("t1", GrantKind::RefreshToken, Outcome::Issued);
        s.record("t2", GrantKind::RefreshToken, Outcome::Rejected);
        {
            let _a = s.enter("t1", GrantKind::RefreshToken);
            let _b = s.enter("t1", GrantKind::RefreshToken);
        }
        let _c = s.enter("t1", GrantKind::RefreshToken);
        let snap = s.snapshot();
        assert_eq!(
            snap.tenant("t1", GrantKind::RefreshToken, Outcome::Issued),
            2
        );
        assert_eq!(snap.total(GrantKind::RefreshToken, Outcome::Rejected), 1);
        assert_eq!(snap.tenant_requests("t2", GrantKind::RefreshToken), 1);
        assert_eq!(snap.max_in_flight("t1", GrantKind::RefreshToken), 2);
        assert_eq!(snap.max_in_flight("t2", GrantKind::RefreshToken), 0);
    }
}
