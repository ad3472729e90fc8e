//! Resource identifiers and v2 scopes: which of the three Defender-family APIs a token
//! request is for.

use super::sts_error::StsError;
use relay_config::{
    Audience, RESOURCE_GRAPH, RESOURCE_THREAT_PROTECTION, RESOURCE_WINDOWS_DEFENDER_ATP,
};

/// Every identifier Entra accepts for each resource: the App ID URI, the alternative
/// URI some docs use, and the resource application GUID (see reference §1.2).
const ALIASES: &[(&str, Audience)] = &[
    (RESOURCE_THREAT_PROTECTION, Audience::ThreatProtection),
    (
        "8ee8fdad-f234-4243-8f3b-15c294843740",
        Audience::ThreatProtection,
    ),
    (RESOURCE_WINDOWS_DEFENDER_ATP, Audience::WindowsDefenderAtp),
    (
        "https://securitycenter.onmicrosoft.com/windowsatpservice",
        Audience::WindowsDefenderAtp,
    ),
    (
        "fc780465-2017-40d4-a0c5-307022471b92",
        Audience::WindowsDefenderAtp,
    ),
    (RESOURCE_GRAPH, Audience::Graph),
    ("00000003-0000-0000-c000-000000000000", Audience::Graph),
];

/// A resource as the client named it (that string becomes the token's `aud` and the v1
/// `resource` field) and the audience it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resource {
    pub audience: Audience,
    pub requested: String,
}

impl Resource {
    /// Resolves a v1 `resource` value or the prefix of a v2 scope.
    pub fn parse(identifier: &str) -> Option<Resource> {
        let trimmed = identifier.trim_end_matches('/');
        ALIASES
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(trimmed))
            .map(|(_, audience)| Resource {
                audience: *audience,
                requested: identifier.to_string(),
            })
    }

    /// The canonical resource of an audience.
    pub fn canonical(audience: Audience) -> Resource {
        Resource {
            audience,
            requested: canonical_identifier(audience).to_string(),
        }
    }

    /// Like [`Resource::parse`], with Entra's error for an unknown resource.
    pub fn parse_or_error(identifier: &str, tenant: &str) -> Result<Resource, StsError> {
        Resource::parse(identifier).ok_or_else(|| StsError::resource_not_found(identifier, tenant))
    }

    /// Whether a token `aud` claim names this audience.
    pub fn aud_matches(aud: &str, audience: Audience) -> bool {
        Resource::parse(aud).is_some_and(|r| r.audience == audience)
    }

    /// The v2 `scope` prefix (no trailing slash).
    pub fn scope_prefix(&self) -> &str {
        self.requested.trim_end_matches('/')
    }
}

/// The global resource identifier of an audience.
pub(crate) fn canonical_identifier(audience: Audience) -> &'static str {
    match audience {
        Audience::ThreatProtection => RESOURCE_THREAT_PROTECTION,
        Audience::WindowsDefenderAtp => RESOURCE_WINDOWS_DEFENDER_ATP,
        Audience::Graph => RESOURCE_GRAPH,
    }
}

/// The application permissions (app roles) an app-only token carries per resource.
pub(crate) fn app_roles(audience: Audience) -> &'static [&'static str] {
    match audience {
        Audience::ThreatProtection => &["Incident.Read.All", "Alert.Read.All"],
        Audience::WindowsDefenderAtp => &["Alert.Read.All", "Machine.Read.All", "User.Read.All"],
        Audience::Graph => &["SecurityIncident.Read.All", "SecurityAlert.Read.All"],
    }
}

/// The delegated permissions (`scp`) a user token carries per resource.
pub(crate) fn delegated_scopes(audience: Audience) -> &'static [&'static str] {
    match audience {
        Audience::ThreatProtection => &["Incident.Read", "Alert.Read"],
        Audience::WindowsDefenderAtp => &["Alert.Read", "Machine.Read"],
        Audience::Graph => &["SecurityIncident.Read.All", "SecurityAlert.Read.All"],
    }
}

/// A parsed v2 `scope` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Scopes {
    /// The one resource the scopes name, if any.
    pub resource: Option<Resource>,
    /// Permission names after the resource prefix (`.default`, `SecurityAlert.Read.All`).
    pub permissions: Vec<String>,
    /// `offline_access` was requested: the response carries a refresh token.
    pub offline_access: bool,
    /// `openid` was requested: the response carries an id token.
    pub openid: bool,
}

impl Scopes {
    /// Parses a space-separated v2 scope list. Bare permission names (no `/`) are
    /// Microsoft Graph permissions, as in Entra.
    pub fn parse(scope: &str, tenant: &str) -> Result<Scopes, StsError> {
        let mut out = Scopes::default();
        for item in scope.split_whitespace() {
            match item.to_ascii_lowercase().as_str() {
                "offline_access" => {
                    out.offline_access = true;
                    continue;
                }
                "openid" => {
                    out.openid = true;
                    continue;
                }
                "profile" | "email" => continue,
                _ => {}
            }
            let (resource, permission) = match item.rsplit_once('/') {
                Some((prefix, perm))
                    if !perm.is_empty() && !prefix.ends_with('/') && !prefix.is_empty() =>
                {
                    (Resource::parse_or_error(prefix, tenant)?, perm.to_string())
                }
                Some(_) => return Err(StsError::invalid_scope(item)),
                None => (Resource::canonical(Audience::Graph), item.to_string()),
            };
            match &out.resource {
                Some(existing) if existing.audience != resource.audience => {
                    return Err(StsError::scopes_of_several_resources())
                }
                Some(_) => {}
                None => out.resource = Some(resource),
            }
            out.permissions.push(permission);
        }
        Ok(out)
    }

    /// The resource of a client-credentials request: exactly `<resource>/.default`.
    pub fn client_credentials_resource(scope: &str, tenant: &str) -> Result<Resource, StsError> {
        let parsed = Scopes::parse(scope, tenant)?;
        match (&parsed.resource, parsed.permissions.as_slice()) {
            (Some(resource), [perm]) if perm == ".default" => Ok(resource.clone()),
            (Some(_), _) => Err(StsError::client_credentials_scope(scope)),
            (None, _) => Err(StsError::invalid_scope(scope)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve() {
        assert_eq!(
            Resource::parse("https://graph.microsoft.com/").map(|r| r.audience),
            Some(Audience::Graph)
        );
        assert_eq!(
            Resource::parse("FC780465-2017-40d4-a0c5-307022471b92").map(|r| r.audience),
            Some(Audience::WindowsDefenderAtp)
        );
        assert_eq!(Resource::parse("https://graph.windows.net"), None);
        assert!(Resource::aud_matches(
            "https://api.security.microsoft.com",
            Audience::ThreatProtection
        ));
        assert!(!Resource::aud_matches(
            "https://api.security.microsoft.com",
            Audience::Graph
        ));
    }

    #[test]
    fn scopes_parse() {
        let s = Scopes::parse(
            "https://api.securitycenter.microsoft.com/.default offline_access openid",
            "t",
        )
        .unwrap();
        assert_eq!(s.resource.unwrap().audience, Audience::WindowsDefenderAtp);
        assert!(s.offline_access && s.openid);
        let s = Scopes::parse(
            "https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
            "t",
        )
        .unwrap();
        assert_eq!(s.resource.unwrap().audience, Audience::WindowsDefenderAtp);
        let s = Scopes::parse("SecurityAlert.Read.All", "t").unwrap();
        assert_eq!(s.resource.unwrap().audience, Audience::Graph);
        assert_eq!(
            Scopes::parse(
                "https://graph.microsoft.com/.default https://api.security.microsoft.com/.default",
                "t"
            )
            .unwrap_err()
            .code,
            28000
        );
        assert_eq!(
            Scopes::parse("https://example.com/.default", "t")
                .unwrap_err()
                .code,
            500011
        );
        assert_eq!(
            Scopes::parse("https://graph.microsoft.com/", "t")
                .unwrap_err()
                .code,
            70011
        );
    }

    #[test]
    fn client_credentials_needs_default() {
        assert!(
            Scopes::client_credentials_resource("https://graph.microsoft.com/.default", "t")
                .is_ok()
        );
        assert_eq!(
            Scopes::client_credentials_resource(
                "https://graph.microsoft.com/SecurityAlert.Read.All",
                "t"
            )
            .unwrap_err()
            .code,
            1002012
        );
        assert_eq!(
            Scopes::client_credentials_resource("openid", "t")
                .unwrap_err()
                .code,
            70011
        );
    }
}
