//! The state key and the authenticated encryption of refresh tokens with it.
//!
//! XChaCha20-Poly1305: its 192-bit nonce makes a fresh random nonce per write safe for any
//! number of writes under one key, so there is no nonce counter to persist and get wrong.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, OsRng, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Result, StateError};

/// Length of a state key in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// First byte of every sealed blob, so a later format can be told apart.
const FORMAT_V1: u8 = 1;

/// The 32-byte key that encrypts refresh tokens at rest.
///
/// `Debug` prints `StateKey(***)`; the bytes are wiped from memory on drop.
#[derive(Clone)]
pub struct StateKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl StateKey {
    /// A key from its raw bytes (for a binary that gets the key another way, e.g. a
    /// systemd credential it already read).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        StateKey {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// Reads a key file holding the key as exactly 32 raw bytes, as 64 hex digits, or as
    /// base64 (standard alphabet, padding optional); surrounding whitespace is ignored in
    /// the text forms.
    pub fn from_file(path: &Path) -> Result<Self> {
        let content = Zeroizing::new(fs::read(path).map_err(|e| {
            let reason = if e.kind() == io::ErrorKind::NotFound {
                "does not exist; create it with `head -c 32 /dev/urandom > FILE && chmod 600 FILE`"
            } else {
                "cannot be read"
            };
            key_file_error(path, reason, Some(e))
        })?);
        warn_if_loose_permissions(path);
        parse_key(&content)
            .map(StateKey::from_bytes)
            .map_err(|reason| key_file_error(path, reason, None))
    }

    /// Parses a key handed over as bytes rather than a file path (a `key = { env | file |
    /// credential = ... }` secret the configuration loader already resolved), in the same
    /// encodings as [`StateKey::from_file`]. `origin` names where it came from, for errors
    /// (e.g. `relay.toml: state.key`).
    pub fn parse(origin: &Path, content: &[u8]) -> Result<Self> {
        parse_key(content)
            .map(StateKey::from_bytes)
            .map_err(|reason| key_file_error(origin, reason, None))
    }

    /// Generates a random key, writes it to a new file `path` as 64 hex digits with mode
    /// 0600 (whatever the umask), syncs it, and returns it. Refuses to overwrite an existing
    /// file: replacing a key makes every refresh token encrypted with it unreadable.
    pub fn generate_to_file(path: &Path) -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.try_fill_bytes(bytes.as_mut()).map_err(|e| {
            key_file_error(
                path,
                "no randomness from the operating system",
                Some(io::Error::other(e.to_string())),
            )
        })?;
        let key = StateKey { bytes };

        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            let reason = if e.kind() == io::ErrorKind::AlreadyExists {
                "already exists; refusing to overwrite a key (tokens encrypted with it would be lost)"
            } else {
                "cannot be created"
            };
            key_file_error(path, reason, Some(e))
        })?;
        restrict_permissions(path)
            .map_err(|e| key_file_error(path, "cannot set mode 0600", Some(e)))?;
        let mut text = Zeroizing::new(hex::encode(key.bytes.as_ref()));
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| key_file_error(path, "cannot be written", Some(e)))?;
        Ok(key)
    }

    pub(crate) fn sealer(&self) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(self.bytes.as_ref().into()),
        }
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(***)")
    }
}

fn key_file_error(path: &Path, reason: &str, source: Option<io::Error>) -> StateError {
    StateError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
        source,
    }
}

/// The accepted key file encodings, raw first: a raw key is exactly 32 bytes, whitespace
/// included, while text forms are longer than that.
fn parse_key(content: &[u8]) -> Result<[u8; KEY_LEN], &'static str> {
    if content.len() == KEY_LEN {
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(content);
        return Ok(key);
    }
    let text = content.trim_ascii();
    let decoded = if text.len() == 2 * KEY_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        hex::decode(text).ok()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .ok()
    };
    let decoded = Zeroizing::new(decoded.ok_or(
        "is not a 32-byte key: expected 32 raw bytes, 64 hex digits or base64 of 32 bytes",
    )?);
    <[u8; KEY_LEN]>::try_from(decoded.as_slice())
        .map_err(|_| "decodes to the wrong length: a state key is exactly 32 bytes")
}

#[cfg(unix)]
fn warn_if_loose_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "state key file is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_loose_permissions(_path: &Path) {}

/// Sets mode 0600 explicitly: `open(.., 0600)` only promises "no more than that" after
/// the umask, and a pre-existing file keeps whatever mode it had.
#[cfg(unix)]
pub(crate) fn restrict_permissions(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
pub(crate) fn restrict_permissions(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Encrypts and decrypts small values bound to a context string (the associated data).
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    /// `[format][nonce][ciphertext + tag]`; `None` only if the OS has no randomness.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce).ok()?;
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .ok()?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        blob.push(FORMAT_V1);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Some(blob)
    }

    /// The plaintext, or `None` if the blob is malformed, was sealed under another key or
    /// another associated data, or was altered.
    pub(crate) fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&format, rest) = blob.split_first()?;
        if format != FORMAT_V1 || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.key");
        let key = StateKey::generate_to_file(&path).unwrap();
        let again = StateKey::from_file(&path).unwrap();
        assert_eq!(key.bytes.as_ref(), again.bytes.as_ref());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn parse_takes_hex_text_and_names_its_origin_on_error() {
        let hex_key = "ab".repeat(32);
        let key = StateKey::parse(Path::new("relay.toml: state.key"), hex_key.as_bytes()).unwrap();
        assert_eq!(key.bytes.as_ref(), &[0xab; KEY_LEN]);
        let err = StateKey::parse(Path::new("relay.toml: state.key"), b"short").unwrap_err();
        assert!(err.to_string().contains("relay.toml: state.key"), "{err}");
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.key");
        let first = StateKey::generate_to_file(&path).unwrap();
        let err = StateKey::generate_to_file(&path).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            StateKey::from_file(&path).unwrap().bytes.as_ref(),
            first.bytes.as_ref()
        );
    }

    #[test]
    fn accepts_raw_hex_and_base64() {
        let raw: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let dir = tempfile::tempdir().unwrap();
        let forms: [(&str, Vec<u8>); 4] = [
            ("raw", raw.to_vec()),
            ("hex", format!("  {}\n", hex::encode(raw)).into_bytes()),
            (
                "b64",
                format!(
                    "{}\n",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
                .into_bytes(),
            ),
            (
                "b64nopad",
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(raw)
                    .into_bytes(),
            ),
        ];
        for (name, content) in forms {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            assert_eq!(*StateKey::from_file(&path).unwrap().bytes, raw, "{name}");
        }
    }

    #[test]
    fn missing_or_wrong_length_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let err = StateKey::from_file(&missing).unwrap_err();
        assert!(
            matches!(err, StateError::KeyFile { ref path, source: Some(_), .. } if *path == missing)
        );
        assert!(
            err.to_string().contains("nope.key") && err.to_string().contains("does not exist"),
            "{err}"
        );

        for (name, content) in [
            ("short", vec![1u8; 31]),
            ("hex31", hex::encode([1u8; 31]).into_bytes()),
            (
                "b64-16",
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 16])
                    .into_bytes(),
            ),
            ("garbage", b"not a key at all, definitely not".repeat(3)),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            let err = StateKey::from_file(&path).unwrap_err();
            assert!(matches!(err, StateError::KeyFile { .. }), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let key = StateKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "StateKey(***)");
    }

    #[test]
    fn sealed_blobs_are_bound_to_key_and_context() {
        let sealer = StateKey::from_bytes([1; 32]).sealer();
        let blob = sealer.seal(b"tenant-a", b"secret").unwrap();
        assert_eq!(&*sealer.open(b"tenant-a", &blob).unwrap(), b"secret");
        assert!(sealer.open(b"tenant-b", &blob).is_none());
        assert!(StateKey::from_bytes([2; 32])
            .sealer()
            .open(b"tenant-a", &blob)
            .is_none());
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(sealer.open(b"tenant-a", &flipped).is_none());
        assert!(sealer.open(b"tenant-a", &blob[..10]).is_none());
        // A fresh nonce per write: the same plaintext never seals to the same bytes.
        assert_ne!(sealer.seal(b"tenant-a", b"secret").unwrap(), blob);
    }
}
