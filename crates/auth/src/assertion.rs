//! Certificate credentials: the client assertion JWT that replaces a client secret
//! (defender-api.md §1.4).
//!
//! The JWT is signed RS256 and carries both thumbprint headers: `x5t#S256` (SHA-256, what
//! current Entra documentation uses) and `x5t` (SHA-1, what older endpoints look for).
//!
//! Signing is jsonwebtoken's ring backend (ring's constant-time RSA, `RsaKeyPair::sign`),
//! never the `rsa` crate, whose private-key operations leak timing (RUSTSEC-2023-0071,
//! "Marvin"); `rsa` is only a dev-dependency that makes test keys, and scripts/deny fails
//! the suite if it ever becomes a normal dependency. jsonwebtoken 10 makes the backend a
//! choice (`aws_lc_rs` or `rust_crypto`, the latter being `rsa`): upgrading must not pick
//! `rust_crypto`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_config::Secret;
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// How long an assertion is valid. Entra does not enforce a maximum; short limits the use of
/// a leaked assertion. Ten minutes covers clock skew and a slow token endpoint.
const ASSERTION_LIFETIME_SECS: i64 = 600;

/// A loaded certificate + RSA private key, ready to sign client assertions.
#[derive(Clone)]
pub(crate) struct AssertionSigner {
    key: EncodingKey,
    /// base64url(SHA-1 of the certificate DER).
    x5t: String,
    /// base64url(SHA-256 of the certificate DER).
    x5t_s256: String,
    /// The certificate's notAfter, Unix seconds.
    not_after: i64,
}

// EncodingKey has no Debug, and key material must never get one.
impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("x5t#S256", &self.x5t_s256)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl AssertionSigner {
    /// Reads a PEM certificate (the first `CERTIFICATE` block; a chain may follow) and a PEM
    /// RSA private key (PKCS#1 or PKCS#8, unencrypted), and checks that they belong together
    /// so that a mismatch is reported at start-up rather than as AADSTS700027 later.
    /// Errors never contain key material.
    pub(crate) fn load(cert_pem: &str, key_pem: &Secret) -> Result<AssertionSigner, String> {
        let blocks =
            pem::parse_many(cert_pem).map_err(|e| format!("certificate is not valid PEM: {e}"))?;
        let der = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents().to_vec())
            .ok_or_else(|| "no CERTIFICATE block in the certificate PEM".to_string())?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("certificate cannot be parsed: {e}"))?;
        let not_after = cert.validity().not_after.timestamp();
        let (modulus, exponent) = match cert.public_key().parsed() {
            Ok(PublicKey::RSA(rsa)) => (strip_zeros(rsa.modulus), strip_zeros(rsa.exponent)),
            Ok(_) => return Err("certificate key is not RSA".to_string()),
            Err(e) => return Err(format!("certificate public key cannot be parsed: {e}")),
        };

        let key = EncodingKey::from_rsa_pem(key_pem.expose().as_bytes())
            .map_err(|e| format!("private key is not a PEM RSA key: {e}"))?;

        // jsonwebtoken only finds out whether the key is usable when it signs; so sign once
        // now, and verify with the certificate's public key to prove the pair matches.
        let probe = b"relay-auth key check";
        let signature = jsonwebtoken::crypto::sign(probe, &key, Algorithm::RS256)
            .map_err(|e| format!("private key cannot sign RS256: {e}"))?;
        let public = jsonwebtoken::DecodingKey::from_rsa_raw_components(modulus, exponent);
        let matches = jsonwebtoken::crypto::verify(&signature, probe, &public, Algorithm::RS256)
            .unwrap_or(false);
        if !matches {
            return Err("private key does not match the certificate".to_string());
        }

        Ok(AssertionSigner {
            key,
            x5t: URL_SAFE_NO_PAD.encode(Sha1::digest(&der)),
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(&der)),
            not_after,
        })
    }

    /// The certificate's expiry, Unix seconds.
    pub(crate) fn not_after(&self) -> i64 {
        self.not_after
    }

    /// base64url SHA-256 thumbprint, the certificate's identity in logs.
    pub(crate) fn thumbprint(&self) -> &str {
        &self.x5t_s256
    }

    /// A fresh assertion for `client_id` addressed to `token_url`, valid from `now` (Unix
    /// seconds) for ten minutes.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: i64,
    ) -> Result<Secret, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_string());
        header.x5t = Some(self.x5t.clone());
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let claims = AssertionClaims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| format!("signing the client assertion failed: {e}"))
    }
}

/// DER integers carry a leading zero byte when the high bit is set; ring wants the minimal
/// big-endian form.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    use std::sync::OnceLock;

    /// (cert PEM, key PEM) for a 2048-bit RSA key, generated once per test binary because
    /// RSA key generation is slow.
    pub(crate) fn test_identity() -> &'static (String, String) {
        static ID: OnceLock<(String, String)> = OnceLock::new();
        ID.get_or_init(|| make_identity("relay-auth test"))
    }

    pub(crate) fn make_identity(cn: &str) -> (String, String) {
        let mut rng = rand::thread_rng();
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let key_pair =
            rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        (cert.pem(), key_pem)
    }

    fn b64json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn assertion_has_the_documented_header_and_claims() {
        let (cert, key) = test_identity();
        let signer = AssertionSigner::load(cert, &Secret::new(key.clone())).unwrap();
        let der = pem::parse(cert).unwrap().contents().to_vec();
        let url = "https://login.example/tid/oauth2/v2.0/token";
        let jwt = signer.assertion("client-guid", url, 1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);

        let header = b64json(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(&der))
        );
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(Sha1::digest(&der)));

        let claims = b64json(parts[1]);
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "client-guid");
        assert_eq!(claims["sub"], "client-guid");
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_600);
        let jti = claims["jti"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(jti).is_ok());
        let again = signer.assertion("client-guid", url, 1_700_000_000).unwrap();
        assert_ne!(
            b64json(again.expose().split('.').nth(1).unwrap())["jti"],
            jti
        );

        // The signature verifies with the certificate's key.
        let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem(key).as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&[url]);
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(jwt.expose(), &decoding, &validation).unwrap();
    }

    /// The signature checked the way Entra checks it, independently of jsonwebtoken and of
    /// the `rsa` crate: RS256 (PKCS #1 v1.5, SHA-256) under the certificate's own public
    /// key, verified with ring.
    #[test]
    fn the_signature_verifies_under_the_certificate_key() {
        use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
        let (cert, key) = test_identity();
        let signer = AssertionSigner::load(cert, &Secret::new(key.clone())).unwrap();
        let url = "https://login.example/tid/oauth2/v2.0/token";
        let jwt = signer.assertion("client-guid", url, 1_700_000_000).unwrap();
        let (signed, signature) = jwt.expose().rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert_eq!(signature.len(), 256, "a 2048-bit RSA signature");

        let der = pem::parse(cert).unwrap().contents().to_vec();
        let (_, x509) = X509Certificate::from_der(&der).unwrap();
        // The SPKI's BIT STRING is the PKCS #1 RSAPublicKey, what ring takes.
        let public = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            x509.public_key().subject_public_key.data.to_vec(),
        );
        public.verify(signed.as_bytes(), &signature).unwrap();

        // A changed claim or a changed signature does not verify.
        let mut other = signed.as_bytes().to_vec();
        let last = other.len() - 1;
        other[last] = if other[last] == b'A' { b'B' } else { b'A' };
        assert!(public.verify(&other, &signature).is_err());
        let mut forged = signature.clone();
        forged[10] ^= 0x01;
        assert!(public.verify(signed.as_bytes(), &forged).is_err());

        // Another key's certificate does not verify it either.
        let (other_cert, _) = make_identity("someone else");
        let other_der = pem::parse(&other_cert).unwrap().contents().to_vec();
        let (_, other_x509) = X509Certificate::from_der(&other_der).unwrap();
        let wrong = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            other_x509.public_key().subject_public_key.data.to_vec(),
        );
        assert!(wrong.verify(signed.as_bytes(), &signature).is_err());
    }

    fn public_pem(key_pem: &str) -> String {
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(key_pem).unwrap();
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    #[test]
    fn bad_material_is_reported_without_leaking_it() {
        let (cert, key) = test_identity();
        let garbage_key = Secret::new(
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        );
        let err = AssertionSigner::load(cert, &garbage_key).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");

        let err = AssertionSigner::load("not a pem", &Secret::new(key.clone())).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        let err = AssertionSigner::load(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            &Secret::new(key.clone()),
        )
        .unwrap_err();
        assert!(err.contains("no CERTIFICATE block"), "{err}");

        let (_, other_key) = make_identity("someone else");
        let err = AssertionSigner::load(cert, &Secret::new(other_key)).unwrap_err();
        assert_eq!(err, "private key does not match the certificate");
    }

    #[test]
    fn debug_shows_thumbprint_not_key() {
        let (cert, key) = test_identity();
        let signer = AssertionSigner::load(cert, &Secret::new(key.clone())).unwrap();
        let d = format!("{signer:?}");
        assert!(d.contains(signer.thumbprint()));
        let key_body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!d.contains(&key_body));
    }
}
