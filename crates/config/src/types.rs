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
}

impl Stream {
    /// The lowercase name used in config files, metrics labels and sink metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Incidents => "incidents",
            Stream::Alerts => "alerts",
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
        format!("{}/.default", self.resource_for(audience).trim_end_matches('/'))
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
