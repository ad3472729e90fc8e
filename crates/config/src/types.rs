//! The shared vocabulary: which feed, which API family, which cloud.

use serde::{Deserialize, Serialize};
use std::fmt;
use url::Url;

/// What an operator subscribes a tenant to. Metrics and sinks label events with this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Defender XDR incidents (with their alerts nested).
    Incidents,
    /// Alerts (Defender for Endpoint or Graph alerts_v2).
    Alerts,
    /// Audit events of response playbooks (never polled: the relay writes them).
    Actions,
}

impl Stream {
    /// The lowercase name used in config files, metrics labels and sink metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Incidents => "incidents",
            Stream::Alerts => "alerts",
            Stream::Actions => "actions",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which API family a tenant is read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Microsoft Graph security API (`/v1.0/security/incidents`, `/v1.0/security/alerts_v2`);
    /// Microsoft's recommended path.
    #[default]
    Graph,
    /// The product APIs: M365 Defender `/api/incidents` and Defender for Endpoint `/api/alerts`.
    Defender,
}

/// One concrete API feed: a (stream, API family) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feed {
    /// `GET {m365d}/api/incidents` — `incidentId`, `lastUpdateTime`, `$top` ≤ 100.
    M365dIncidents,
    /// `GET {mde}/api/alerts?$expand=evidence` — `id`, `lastUpdateTime`, `$top` ≤ 10,000.
    MdeAlerts,
    /// `GET {graph}/v1.0/security/incidents?$expand=alerts` — `id`, `lastUpdateDateTime`.
    GraphIncidents,
    /// `GET {graph}/v1.0/security/alerts_v2` — `id`, `lastUpdateDateTime`.
    GraphAlerts,
}

impl Feed {
    /// The feed that serves `stream` through `api`.
    pub fn of(api: Api, stream: Stream) -> Feed {
        match (api, stream) {
            (Api::Graph, Stream::Incidents) => Feed::GraphIncidents,
            (Api::Graph, Stream::Alerts) => Feed::GraphAlerts,
            (Api::Defender, Stream::Incidents) => Feed::M365dIncidents,
            (Api::Defender, Stream::Alerts) => Feed::MdeAlerts,
            // Nothing polls `actions`; an audit event names the feed of the alert it
            // acted on, which is the tenant's alerts feed.
            (Api::Graph, Stream::Actions) => Feed::GraphAlerts,
            (Api::Defender, Stream::Actions) => Feed::MdeAlerts,
        }
    }

    /// The stream this feed serves.
    pub fn stream(self) -> Stream {
        match self {
            Feed::M365dIncidents | Feed::GraphIncidents => Stream::Incidents,
            Feed::MdeAlerts | Feed::GraphAlerts => Stream::Alerts,
        }
    }

    /// The API family this feed belongs to.
    pub fn api(self) -> Api {
        match self {
            Feed::GraphIncidents | Feed::GraphAlerts => Api::Graph,
            Feed::M365dIncidents | Feed::MdeAlerts => Api::Defender,
        }
    }

    /// The token audience the feed's requests need.
    pub fn audience(self) -> Audience {
        match self {
            Feed::M365dIncidents => Audience::ThreatProtection,
            Feed::MdeAlerts => Audience::WindowsDefenderAtp,
            Feed::GraphIncidents | Feed::GraphAlerts => Audience::Graph,
        }
    }

    /// The JSON field holding the item's id.
    pub fn id_field(self) -> &'static str {
        match self {
            Feed::M365dIncidents => "incidentId",
            Feed::MdeAlerts | Feed::GraphIncidents | Feed::GraphAlerts => "id",
        }
    }

    /// The JSON field holding the last-update time, also the `$filter` field.
    pub fn time_field(self) -> &'static str {
        match self {
            Feed::M365dIncidents | Feed::MdeAlerts => "lastUpdateTime",
            Feed::GraphIncidents | Feed::GraphAlerts => "lastUpdateDateTime",
        }
    }

    /// A short stable name (`m365d_incidents`, ...), for logs and state keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Feed::M365dIncidents => "m365d_incidents",
            Feed::MdeAlerts => "mde_alerts",
            Feed::GraphIncidents => "graph_incidents",
            Feed::GraphAlerts => "graph_alerts",
        }
    }

    /// All four feeds.
    pub const ALL: [Feed; 4] = [
        Feed::M365dIncidents,
        Feed::MdeAlerts,
        Feed::GraphIncidents,
        Feed::GraphAlerts,
    ];
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token audience: one Entra resource whose app roles a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// "Microsoft Threat Protection" — the M365 Defender incidents API.
    ThreatProtection,
    /// "WindowsDefenderATP" — the Defender for Endpoint API.
    WindowsDefenderAtp,
    /// Microsoft Graph.
    Graph,
}

impl Audience {
    /// A short stable name for logs and state keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::ThreatProtection => "threat_protection",
            Audience::WindowsDefenderAtp => "windows_defender_atp",
            Audience::Graph => "graph",
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A national cloud, or explicit endpoints (which is how tests point at the simulator).
// Built once per tenant at start-up; boxing `Custom` would only make every construction
// site noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cloud {
    /// Commercial cloud.
    Global,
    /// US Government Community Cloud.
    Gcc,
    /// US Government GCC High.
    GccHigh,
    /// US Department of Defense.
    Dod,
    /// Explicit base URLs.
    Custom(Endpoints),
}

impl Cloud {
    /// The named clouds, as written in config files (`cloud = "gcc_high"`).
    pub const NAMED: [(&'static str, Cloud); 4] = [
        ("global", Cloud::Global),
        ("gcc", Cloud::Gcc),
        ("gcc_high", Cloud::GccHigh),
        ("dod", Cloud::Dod),
    ];

    /// The named cloud called `name` (`global`, `gcc`, `gcc_high`, `dod`).
    pub fn from_name(name: &str) -> Option<Cloud> {
        Cloud::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
    }

    /// The config-file name of the cloud; `custom` for explicit endpoints.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Gcc => "gcc",
            Cloud::GccHigh => "gcc_high",
            Cloud::Dod => "dod",
            Cloud::Custom(_) => "custom",
        }
    }

    /// Where this cloud's Entra authority and APIs live, and which resource identifiers
    /// its tokens are requested for.
    ///
    /// Hosts are Microsoft's documented ones: "Microsoft Defender for Endpoint for US
    /// Government customers" and "Microsoft Defender XDR for US Government customers" (API
    /// section: sign-in `login.microsoftonline.com` for GCC and `login.microsoftonline.us`
    /// for GCC High and DoD; M365 Defender `api-gcc.security.microsoft.us` /
    /// `api-gov.security.microsoft.us`; Defender for Endpoint
    /// `api-gcc.securitycenter.microsoft.us` / `api-gov.securitycenter.microsoft.us`) and
    /// "Microsoft Graph national cloud deployments" (GCC keeps the worldwide
    /// `graph.microsoft.com`; GCC High uses `graph.microsoft.us`; DoD
    /// `dod-graph.microsoft.us`; Graph scopes must use the national Graph host).
    ///
    /// Uncertain: Microsoft does not document the *resource identifiers* of the two
    /// Defender APIs in the US Government clouds. We use the API host, as in the
    /// commercial cloud and as the scripts we found for GCC do
    /// (`https://api-gcc.securitycenter.microsoft.us/.default`). If a government tenant's
    /// token request fails with AADSTS500011 (resource not found), override the
    /// resource with `[cloud]` and explicit `resource_*` keys.
    pub fn endpoints(&self) -> Endpoints {
        let (login, m365d, mde, graph) = match self {
            Cloud::Custom(endpoints) => return endpoints.clone(),
            Cloud::Global => (
                "https://login.microsoftonline.com",
                RESOURCE_THREAT_PROTECTION,
                RESOURCE_WINDOWS_DEFENDER_ATP,
                RESOURCE_GRAPH,
            ),
            Cloud::Gcc => (
                "https://login.microsoftonline.com",
                "https://api-gcc.security.microsoft.us",
                "https://api-gcc.securitycenter.microsoft.us",
                RESOURCE_GRAPH,
            ),
            Cloud::GccHigh => (
                "https://login.microsoftonline.us",
                "https://api-gov.security.microsoft.us",
                "https://api-gov.securitycenter.microsoft.us",
                "https://graph.microsoft.us",
            ),
            Cloud::Dod => (
                "https://login.microsoftonline.us",
                "https://api-gov.security.microsoft.us",
                "https://api-gov.securitycenter.microsoft.us",
                "https://dod-graph.microsoft.us",
            ),
        };
        Endpoints {
            login: builtin_url(login),
            m365d: builtin_url(m365d),
            mde: builtin_url(mde),
            graph: builtin_url(graph),
            resource_threat_protection: m365d.to_string(),
            resource_windows_defender_atp: mde.to_string(),
            resource_graph: graph.to_string(),
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses one of the literal URLs above. They are constants checked by a unit test, so a
/// failure here is a typo in this file, not an input error.
fn builtin_url(url: &'static str) -> Url {
    match Url::parse(url) {
        Ok(url) => url,
        Err(e) => unreachable!("built-in URL {url} does not parse: {e}"),
    }
}

/// Where to send requests and which resource identifiers to ask tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Entra authority host, e.g. `https://login.microsoftonline.com`; the tenant id and
    /// `/oauth2/v2.0/token` are appended.
    pub login: Url,
    /// M365 Defender API base, e.g. `https://api.security.microsoft.com`.
    pub m365d: Url,
    /// Defender for Endpoint API base, e.g. `https://api.securitycenter.microsoft.com`.
    pub mde: Url,
    /// Microsoft Graph base, e.g. `https://graph.microsoft.com` (`/v1.0/...` is appended).
    pub graph: Url,
    /// Resource identifier (v1 `resource`, v2 scope prefix) for each audience.
    pub resource_threat_protection: String,
    /// See `resource_threat_protection`.
    pub resource_windows_defender_atp: String,
    /// See `resource_threat_protection`.
    pub resource_graph: String,
}

impl Endpoints {
    /// The API base URL serving `feed`.
    pub fn base_for(&self, feed: Feed) -> &Url {
        match feed {
            Feed::M365dIncidents => &self.m365d,
            Feed::MdeAlerts => &self.mde,
            Feed::GraphIncidents | Feed::GraphAlerts => &self.graph,
        }
    }

    /// The resource identifier tokens for `audience` are requested for.
    pub fn resource_for(&self, audience: Audience) -> &str {
        match audience {
            Audience::ThreatProtection => &self.resource_threat_protection,
            Audience::WindowsDefenderAtp => &self.resource_windows_defender_atp,
            Audience::Graph => &self.resource_graph,
        }
    }

    /// The v2 scope for `audience`: `<resource>/.default`.
    pub fn scope_for(&self, audience: Audience) -> String {
        format!(
            "{}/.default",
            self.resource_for(audience).trim_end_matches('/')
        )
    }

    /// Endpoints of `base` for every API, with the global cloud's resource identifiers.
    /// This is what the simulator serves: one host for Entra and all APIs, and tokens
    /// whose audiences are the real resource identifiers.
    pub fn single_host(base: &Url) -> Endpoints {
        Endpoints {
            login: base.clone(),
            m365d: base.clone(),
            mde: base.clone(),
            graph: base.clone(),
            resource_threat_protection: RESOURCE_THREAT_PROTECTION.to_string(),
            resource_windows_defender_atp: RESOURCE_WINDOWS_DEFENDER_ATP.to_string(),
            resource_graph: RESOURCE_GRAPH.to_string(),
        }
    }
}

/// Global resource identifier of the M365 Defender ("Microsoft Threat Protection") API.
pub const RESOURCE_THREAT_PROTECTION: &str = "https://api.security.microsoft.com";
/// Global resource identifier of the Defender for Endpoint ("WindowsDefenderATP") API.
pub const RESOURCE_WINDOWS_DEFENDER_ATP: &str = "https://api.securitycenter.microsoft.com";
/// Global resource identifier of Microsoft Graph.
pub const RESOURCE_GRAPH: &str = "https://graph.microsoft.com";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_cloud_has_https_endpoints() {
        for (name, cloud) in Cloud::NAMED {
            assert_eq!(Cloud::from_name(name), Some(cloud.clone()));
            assert_eq!(cloud.as_str(), name);
            let e = cloud.endpoints();
            for url in [&e.login, &e.m365d, &e.mde, &e.graph] {
                assert_eq!(url.scheme(), "https", "{name}: {url}");
            }
        }
        assert_eq!(Cloud::from_name("china"), None);
    }

    #[test]
    fn global_cloud_uses_the_global_resource_identifiers() {
        let e = Cloud::Global.endpoints();
        assert_eq!(e.resource_for(Audience::Graph), RESOURCE_GRAPH);
        assert_eq!(
            e.scope_for(Audience::ThreatProtection),
            "https://api.security.microsoft.com/.default"
        );
        assert_eq!(e.login.as_str(), "https://login.microsoftonline.com/");
    }

    #[test]
    fn government_clouds_use_government_hosts() {
        let gcc = Cloud::Gcc.endpoints();
        assert_eq!(gcc.login.host_str(), Some("login.microsoftonline.com"));
        assert_eq!(gcc.graph.host_str(), Some("graph.microsoft.com"));
        assert_eq!(
            gcc.mde.host_str(),
            Some("api-gcc.securitycenter.microsoft.us")
        );
        let high = Cloud::GccHigh.endpoints();
        assert_eq!(high.login.host_str(), Some("login.microsoftonline.us"));
        assert_eq!(
            high.scope_for(Audience::Graph),
            "https://graph.microsoft.us/.default"
        );
        let dod = Cloud::Dod.endpoints();
        assert_eq!(dod.graph.host_str(), Some("dod-graph.microsoft.us"));
        assert_eq!(dod.m365d.host_str(), Some("api-gov.security.microsoft.us"));
    }

    #[test]
    fn custom_cloud_returns_its_endpoints() {
        let base = Url::parse("http://127.0.0.1:8080/").unwrap();
        let e = Endpoints::single_host(&base);
        assert_eq!(Cloud::Custom(e.clone()).endpoints(), e);
    }
}
