//! Certificate credentials: registered certificates and the checks Entra applies to a
//! `client_assertion` (reference §1.4).

use super::sts_error::StsError;
use super::tokens::{from_unix, unix};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// The JWT-bearer client assertion type.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew Entra tolerates on assertion `exp`/`nbf`.
const SKEW_SECS: i64 = 300;

/// Why a certificate could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The text holds no PEM `CERTIFICATE` block.
    #[error("certificate is not PEM with a CERTIFICATE block: {0}")]
    NotPem(String),
    /// The DER inside is not an X.509 certificate.
    #[error("certificate is not valid X.509: {0}")]
    NotX509(String),
    /// The key is not RSA (Entra's client assertions are RS256/PS256).
    #[error("certificate key is not RSA")]
    NotRsa,
}

/// A certificate registered on an app: its thumbprints and public key.
#[derive(Clone)]
pub(crate) struct RegisteredCert {
    sha1: [u8; 20],
    sha256: [u8; 32],
    key: DecodingKey,
}

impl std::fmt::Debug for RegisteredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredCert")
            .field("sha1", &hex(&self.sha1))
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `rsaEncryption` (PKCS #1).
const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

impl RegisteredCert {
    /// Parses a PEM certificate as uploaded to an app registration.
    pub fn from_pem(cert_pem: &str) -> Result<RegisteredCert, CertificateError> {
        let block = pem::parse_many(cert_pem)
            .map_err(|e| CertificateError::NotPem(e.to_string()))?
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .ok_or_else(|| CertificateError::NotPem("no CERTIFICATE block".to_string()))?;
        let der = block.contents();
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertificateError::NotX509(e.to_string()))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm.to_id_string() != RSA_ENCRYPTION_OID {
            return Err(CertificateError::NotRsa);
        }
        // The BIT STRING of an rsaEncryption SPKI is the PKCS #1 RSAPublicKey DER, which
        // is what the verifier takes.
        let key = DecodingKey::from_rsa_der(&spki.subject_public_key.data);
        Ok(RegisteredCert {
            sha1: Sha1::digest(der).into(),
            sha256: Sha256::digest(der).into(),
            key,
        })
    }

    /// Uppercase hex SHA-1 thumbprint, as the portal shows it.
    pub fn thumbprint_hex(&self) -> String {
        hex(&self.sha1)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    aud: Option<OneOrMany>,
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// A client assertion split and decoded, signature not yet checked.
pub(crate) struct ClientAssertion<'a> {
    header: jsonwebtoken::Header,
    claims: AssertionClaims,
    signing_input: &'a str,
    signature: &'a str,
}

/// Decodes a thumbprint header; some SDKs pad base64url, one doc revision shows `=`.
fn decode_thumbprint(value: &str) -> Option<Vec<u8>> {
    let trimmed = value.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .or_else(|| STANDARD.decode(value).ok())
}

impl<'a> ClientAssertion<'a> {
    /// Splits and decodes the JWT (AADSTS50027 when it is not one).
    pub fn parse(assertion: &'a str) -> Result<ClientAssertion<'a>, StsError> {
        let (signing_input, signature) = assertion
            .rsplit_once('.')
            .ok_or_else(|| StsError::assertion_malformed("the token has no signature part"))?;
        let payload = signing_input
            .split_once('.')
            .map(|(_, p)| p)
            .ok_or_else(|| StsError::assertion_malformed("the token has fewer than three parts"))?;
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| StsError::assertion_malformed(&format!("header: {e}")))?;
        let claims: AssertionClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| StsError::assertion_malformed("the payload is not base64url JSON"))?;
        Ok(ClientAssertion {
            header,
            claims,
            signing_input,
            signature,
        })
    }

    /// The `iss` claim: the client id when the form omits `client_id`.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.iss.as_deref()
    }

    /// Entra's checks, in its order: key lookup by thumbprint, signature, subject and
    /// issuer, audience, lifetime.
    pub fn verify(
        &self,
        client_id: &str,
        certs: &[RegisteredCert],
        audiences: &[String],
        now: SystemTime,
    ) -> Result<(), StsError> {
        // (which digest, its decoded bytes, the value as shown in the error message)
        let (use_sha256, digest, presented) = match (&self.header.x5t_s256, &self.header.x5t) {
            (Some(s256), _) => (true, decode_thumbprint(s256), s256.clone()),
            (None, Some(sha1)) => {
                let d = decode_thumbprint(sha1);
                let shown = d.as_deref().map(hex).unwrap_or_else(|| sha1.clone());
                (false, d, shown)
            }
            (None, None) => (false, None, String::new()),
        };
        let cert = certs
            .iter()
            .find(|c| {
                let registered: &[u8] = if use_sha256 { &c.sha256 } else { &c.sha1 };
                digest.as_deref() == Some(registered)
            })
            .ok_or_else(|| StsError::assertion_key_not_registered(&presented, client_id))?;

        let alg = self.header.alg;
        if !matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
            return Err(StsError::assertion_invalid(&format!(
                "The algorithm {alg:?} is not supported; use RS256 or PS256."
            )));
        }
        let ok = jsonwebtoken::crypto::verify(
            self.signature,
            self.signing_input.as_bytes(),
            &cert.key,
            alg,
        )
        .unwrap_or(false);
        if !ok {
            return Err(StsError::assertion_bad_signature());
        }

        let c = &self.claims;
        if c.iss.as_deref() != c.sub.as_deref() {
            return Err(StsError::assertion_invalid(
                "The 'iss' and 'sub' claims of the assertion must both be the client id.",
            ));
        }
        if !c
            .sub
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(client_id))
        {
            return Err(StsError::assertion_client_mismatch());
        }

        let norm = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
        let accepted: Vec<String> = audiences.iter().map(|a| norm(a)).collect();
        let presented_auds: Vec<&str> = match &c.aud {
            Some(OneOrMany::One(a)) => vec![a.as_str()],
            Some(OneOrMany::Many(v)) => v.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        if !presented_auds.iter().any(|a| accepted.contains(&norm(a))) {
            return Err(StsError::assertion_invalid(&format!(
                "The audience claim value is invalid '{}'. Expected '{}'.",
                presented_auds.join(","),
                audiences.first().map(String::as_str).unwrap_or_default()
            )));
        }

        let now_s = unix(now);
        let exp = c
            .exp
            .ok_or_else(|| StsError::assertion_invalid("The assertion has no 'exp' claim."))?;
        if now_s > exp + SKEW_SECS || c.nbf.is_some_and(|nbf| nbf > now_s + SKEW_SECS) {
            return Err(StsError::assertion_time(from_unix(now_s), from_unix(exp)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_thumbprint_header_forms_decode() {
        // The example of the older certificate-credentials doc (reference §1.4), with and
        // without the trailing `=` one revision prints.
        for header in [
            "hOBcHZi846VCHSJbFAs26Go9VTQ",
            "hOBcHZi846VCHSJbFAs26Go9VTQ=",
        ] {
            let bytes = decode_thumbprint(header).unwrap();
            assert_eq!(hex(&bytes), "84E05C1D98BCE3A5421D225B140B36E86A3D5534");
        }
    }

    #[test]
    fn non_certificates_are_refused() {
        assert!(matches!(
            RegisteredCert::from_pem("hello"),
            Err(CertificateError::NotPem(_))
        ));
        let not_x509 = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert!(matches!(
            RegisteredCert::from_pem(&not_x509),
            Err(CertificateError::NotX509(_))
        ));
    }
}
