//! Sealing secrets kept in the store with a key the database never sees.
//!
//! `--ca-key-secret FILE` holds a secret of at least 32 bytes (e.g. 32 random bytes, or a
//! long passphrase). An AES-256-GCM key is derived from it with HKDF-SHA256, and the CA
//! private keys (and, for replicas, the admin token) are stored sealed: whoever reads
//! the database or a backup gets no key that signs. Each sealed value is bound to what
//! it is (the root's SHA-256, `admin-token`) as associated data, so sealed values cannot
//! be swapped between rows. A value sealed at first use (`secret_check`) tells a wrong
//! secret apart from a damaged store at start-up.

use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// Prefix of a sealed value, so a sealed CA key is told apart from a PEM one.
const SEALED_PREFIX: &str = "weft-sealed-v1:";

/// Shortest secret accepted, in bytes.
const MIN_SECRET_LEN: usize = 32;

/// Associated data of the value that recognises the secret.
pub const CHECK_AAD: &str = "secret-check";
/// Associated data of the sealed admin token.
pub const ADMIN_TOKEN_AAD: &str = "admin-token";

/// Why a secret could not be loaded or a value not opened. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read --ca-key-secret {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error(
        "--ca-key-secret {path} holds {len} bytes; use at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom > {path}`)"
    )]
    TooShort { path: String, len: usize },
    #[error(
        "--ca-key-secret does not open the secrets in this store: it is not the secret the store was sealed with; pass the file the other replicas use"
    )]
    WrongSecret,
    #[error(
        "the store holds a sealed value that is damaged ({0}); restore the store from a backup"
    )]
    Malformed(&'static str),
    #[error("the system has no randomness available")]
    NoRandomness,
    /// HKDF or AES refused the derived key; only a broken crypto library gets here.
    #[error("cannot derive a key from --ca-key-secret")]
    KeyDerivation,
}

/// The key derived from `--ca-key-secret`.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// HKDF output length for AES-256-GCM.
struct KeyLen;

impl ring::hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        AES_256_GCM.key_len()
    }
}

impl SecretKey {
    /// Reads the secret file; surrounding whitespace (a trailing newline) is ignored.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let shown = path.display().to_string();
        let raw = std::fs::read(path).map_err(|err| SecretError::Read {
            path: shown.clone(),
            err,
        })?;
        let secret = raw.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: shown,
                len: secret.len(),
            });
        }
        Self::from_secret(secret)
    }

    fn from_secret(secret: &[u8]) -> Result<Self, SecretError> {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"weft ca-key-secret v1");
        let mut bytes = [0u8; 32];
        salt.extract(secret)
            .expand(&[b"aes-256-gcm"], KeyLen)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| SecretError::KeyDerivation)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretError::KeyDerivation)?;
        Ok(SecretKey {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `plain` for the row named by `aad`.
    pub fn seal(&self, plain: &[u8], aad: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::NoRandomness)?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Malformed("value too large to seal"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a value made by [`SecretKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, SecretError> {
        let b64 = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SecretError::Malformed("not a sealed value"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| SecretError::Malformed("bad base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Malformed("too short"));
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed("nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| SecretError::WrongSecret)?;
        Ok(plain.to_vec())
    }
}

/// Whether a stored value is sealed (rather than a plain PEM from before sealing).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_row() {
        let key = SecretKey::from_secret(&[7u8; 32]).unwrap();
        let sealed = key.seal(b"-----BEGIN PRIVATE KEY-----", "root-a").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("PRIVATE"));
        assert_eq!(
            key.open(&sealed, "root-a").unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(matches!(
            key.open(&sealed, "root-b"),
            Err(SecretError::WrongSecret)
        ));
        let other = SecretKey::from_secret(&[8u8; 32]).unwrap();
        assert!(matches!(
            other.open(&sealed, "root-a"),
            Err(SecretError::WrongSecret)
        ));
        assert!(matches!(
            key.open("PEM", "root-a"),
            Err(SecretError::Malformed(_))
        ));
        // A fresh nonce each time: the same value never seals to the same text.
        assert_ne!(key.seal(b"x", "a").unwrap(), key.seal(b"x", "a").unwrap());
    }

    #[test]
    fn a_short_secret_file_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").unwrap();
        let err = SecretKey::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("at least 32") && err.contains("/dev/urandom"),
            "{err}"
        );
        std::fs::write(&path, format!("{}\n", "k".repeat(40))).unwrap();
        assert!(SecretKey::from_file(&path).is_ok());
    }
}
