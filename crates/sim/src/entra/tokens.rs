//! Access tokens: HS256 JWTs signed with a key that lives only in this process, minted
//! by the token endpoint and checked by the simulated APIs through
//! [`super::Entra::verify_bearer`].

use super::resource::Resource;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use relay_config::Audience;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The claims of a simulator access token, in the v1.0 token format the Defender-family
/// resources use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub appid: String,
    /// "0" public client, "1" client secret, "2" certificate.
    pub appidacr: String,
    pub idp: String,
    pub oid: String,
    pub sub: String,
    pub tid: String,
    pub uti: String,
    pub ver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
}

/// What the API side learns from a valid bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// `tid`: the tenant whose data the token may read.
    pub tenant_id: String,
    /// `appid`: the client application.
    pub app_id: String,
    /// The audience the token was checked against (its `aud` names it).
    pub audience: Audience,
    /// `iat`.
    pub issued_at: DateTime<Utc>,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
    /// `roles` (app-only tokens).
    pub roles: Vec<String>,
    /// `scp` split on spaces (delegated tokens).
    pub scopes: Vec<String>,
    /// `upn` of the signed-in user, for delegated tokens.
    pub user: Option<String>,
}

/// Why a bearer token was refused. The API renders each as its own 401 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No `Authorization` header.
    #[error("no authorization header")]
    Missing,
    /// The header is not `Bearer <jwt>`, or the JWT cannot be decoded.
    #[error("authorization header is not a well-formed bearer token")]
    Malformed,
    /// The JWT was not signed by this simulator.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired at {expired_at}")]
    Expired {
        /// The token's `exp`.
        expired_at: DateTime<Utc>,
    },
    /// `nbf` is in the future.
    #[error("token is not valid before {not_before}")]
    NotYetValid {
        /// The token's `nbf`.
        not_before: DateTime<Utc>,
    },
    /// `aud` names another resource.
    #[error("token audience {actual:?} is not {expected}")]
    WrongAudience {
        /// The audience the endpoint requires.
        expected: Audience,
        /// The token's `aud`.
        actual: String,
    },
}

impl BearerError {
    /// The message Microsoft Graph puts in its `InvalidAuthenticationToken` 401 body.
    pub fn graph_message(&self) -> &'static str {
        match self {
            BearerError::Missing => "Access token is empty.",
            BearerError::Malformed => "IDX14100: JWT is not well formed, there are no dots (.).",
            BearerError::BadSignature => "Access token validation failure.",
            BearerError::Expired { .. } | BearerError::NotYetValid { .. } => {
                "Lifetime validation failed, the token is expired."
            }
            BearerError::WrongAudience { .. } => "Invalid audience.",
        }
    }
}

/// Signs and checks access tokens with one random HS256 key.
pub(crate) struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_unix(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Who a token is for and how it was obtained.
pub(crate) struct Subject<'a> {
    pub tenant_id: &'a str,
    pub app_id: &'a str,
    /// `appidacr`: "0", "1" or "2".
    pub client_auth: &'static str,
    /// `Some(upn)` for a delegated (user) token.
    pub user: Option<&'a str>,
}

impl Signer {
    pub fn new() -> Signer {
        let key: [u8; 32] = rand::random();
        let mut validation = Validation::new(Algorithm::HS256);
        // Lifetime and audience are checked by hand so each failure gets its own
        // BearerError variant.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Signer {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
        }
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        // Serialising plain structs of strings and integers with HS256 cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// A v1.0-format access token for `resource` valid from `not_before` to `expires`.
    pub fn mint(
        &self,
        who: &Subject<'_>,
        resource: &Resource,
        not_before: SystemTime,
        expires: SystemTime,
    ) -> String {
        let nbf = unix(not_before);
        let (roles, scp) = match who.user {
            None => (
                super::resource::app_roles(resource.audience)
                    .iter()
                    .map(|r| (*r).to_string())
                    .collect(),
                None,
            ),
            Some(_) => (
                Vec::new(),
                Some(super::resource::delegated_scopes(resource.audience).join(" ")),
            ),
        };
        // App-only tokens have the service principal as subject; user tokens the admin.
        let oid =
            stable_guid(&format!("{}/{}/{:?}", who.tenant_id, who.app_id, who.user)).to_string();
        let claims = TokenClaims {
            aud: resource.requested.clone(),
            iss: format!("https://sts.windows.net/{}/", who.tenant_id),
            iat: nbf,
            nbf,
            exp: unix(expires),
            appid: who.app_id.to_string(),
            appidacr: who.client_auth.to_string(),
            idp: format!("https://sts.windows.net/{}/", who.tenant_id),
            oid: oid.clone(),
            sub: oid,
            tid: who.tenant_id.to_string(),
            uti: Uuid::new_v4().simple().to_string(),
            ver: "1.0".to_string(),
            roles,
            scp,
            upn: who.user.map(str::to_string),
        };
        self.sign(&claims)
    }

    /// Checks signature, lifetime and audience.
    pub fn verify(
        &self,
        header: Option<&str>,
        audience: Audience,
        now: SystemTime,
    ) -> Result<AccessClaims, BearerError> {
        let header = header.ok_or(BearerError::Missing)?;
        let token = match header.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                token.trim()
            }
            _ => return Err(BearerError::Malformed),
        };
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => BearerError::BadSignature,
                _ => BearerError::Malformed,
            })?;
        let claims = data.claims;
        let now = unix(now);
        if claims.exp <= now {
            return Err(BearerError::Expired {
                expired_at: from_unix(claims.exp),
            });
        }
        if claims.nbf > now {
            return Err(BearerError::NotYetValid {
                not_before: from_unix(claims.nbf),
            });
        }
        if !Resource::aud_matches(&claims.aud, audience) {
            return Err(BearerError::WrongAudience {
                expected: audience,
                actual: claims.aud,
            });
        }
        Ok(AccessClaims {
            tenant_id: claims.tid,
            app_id: claims.appid,
            audience,
            issued_at: from_unix(claims.iat),
            expires_at: from_unix(claims.exp),
            roles: claims.roles,
            scopes: claims
                .scp
                .map(|s| s.split(' ').map(str::to_string).collect())
                .unwrap_or_default(),
            user: claims.upn,
        })
    }
}

/// A name-based (v5-style) GUID, so the same principal keeps the same object id.
pub(crate) fn stable_guid(name: &str) -> Uuid {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// A short lifetime helper shared by minting paths.
pub(crate) fn after(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(tenant: &str) -> Subject<'_> {
        Subject {
            tenant_id: tenant,
            app_id: "11111111-1111-1111-1111-111111111111",
            client_auth: "1",
            user: None,
        }
    }

    #[test]
    fn round_trip_and_failures() {
        let s = Signer::new();
        let now = SystemTime::now();
        let graph = Resource::canonical(Audience::Graph);
        let tok = s.mint(&app("t1"), &graph, now, after(now, Duration::from_secs(60)));
        let bearer = format!("Bearer {tok}");
        let c = s.verify(Some(&bearer), Audience::Graph, now).unwrap();
        assert_eq!(c.tenant_id, "t1");
        assert_eq!(
            c.roles,
            vec!["SecurityIncident.Read.All", "SecurityAlert.Read.All"]
        );
        assert!(c.scopes.is_empty());
        assert_eq!(c.expires_at.timestamp(), unix(now) + 60);

        assert_eq!(
            s.verify(None, Audience::Graph, now),
            Err(BearerError::Missing)
        );
        assert_eq!(
            s.verify(Some("Basic abc"), Audience::Graph, now),
            Err(BearerError::Malformed)
        );
        assert_eq!(
            s.verify(Some("Bearer abc"), Audience::Graph, now),
            Err(BearerError::Malformed)
        );
        assert!(matches!(
            s.verify(Some(&bearer), Audience::ThreatProtection, now),
            Err(BearerError::WrongAudience {
                expected: Audience::ThreatProtection,
                ..
            })
        ));
        assert!(matches!(
            s.verify(
                Some(&bearer),
                Audience::Graph,
                after(now, Duration::from_secs(60))
            ),
            Err(BearerError::Expired { .. })
        ));
        // Signed by another simulator instance.
        let other = Signer::new();
        assert_eq!(
            other.verify(Some(&bearer), Audience::Graph, now),
            Err(BearerError::BadSignature)
        );
        // Tampered payload.
        let mut parts: Vec<&str> = tok.split('.').collect();
        let forged = s.mint(&app("t2"), &graph, now, after(now, Duration::from_secs(60)));
        let forged_payload = forged.split('.').nth(1).unwrap().to_string();
        parts[1] = &forged_payload;
        let tampered = format!("Bearer {}", parts.join("."));
        assert_eq!(
            s.verify(Some(&tampered), Audience::Graph, now),
            Err(BearerError::BadSignature)
        );
    }

    #[test]
    fn delegated_tokens_carry_scp() {
        let s = Signer::new();
        let now = SystemTime::now();
        let who = Subject {
            user: Some("admin@t1.example"),
            ..app("t1")
        };
        let tok = s.mint(
            &who,
            &Resource::canonical(Audience::WindowsDefenderAtp),
            now,
            after(now, Duration::from_secs(60)),
        );
        let c = s
            .verify(
                Some(&format!("bearer {tok}")),
                Audience::WindowsDefenderAtp,
                now,
            )
            .unwrap();
        assert!(c.roles.is_empty());
        assert_eq!(c.scopes, vec!["Alert.Read", "Machine.Read"]);
        assert_eq!(c.user.as_deref(), Some("admin@t1.example"));
    }
}
