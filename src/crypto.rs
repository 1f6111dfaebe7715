//! Encryption at rest for endpoint secrets, custom header values and stored idempotent answers:
//! XChaCha20-Poly1305 with a random nonce per value, under a master key from configuration.
//! Stored form: `enc:v1:<key id>:<base64(nonce ‖ ciphertext)>`, where the key id (the first 8 hex
//! digits of the key's SHA-256) lets `herald secrets rekey` move every value to a new key while
//! the previous keys still decrypt. Without a key, values are stored as they are.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";

/// One master key.
#[derive(Clone)]
struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Seals values with the current key and opens values sealed with any configured key.
#[derive(Clone, Default)]
pub struct Cipher {
    current: Option<MasterKey>,
    previous: Vec<MasterKey>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher").field("key", &self.current.as_ref().map(|k| &k.id)).finish_non_exhaustive()
    }
}

/// Why a stored value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key that sealed it is not configured.
    #[error("the value was sealed with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// Tampered, truncated or not ours.
    #[error("the value cannot be decrypted")]
    Corrupt,
}

fn parse_key(text: &str) -> anyhow::Result<MasterKey> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| {
        anyhow::anyhow!("expected 32 random bytes in standard base64 (e.g. `openssl rand -base64 32`)")
    })?;
    if bytes.len() != 32 {
        anyhow::bail!("expected 32 bytes after base64 decoding, got {}", bytes.len());
    }
    let id = hex::encode(&Sha256::digest(&bytes)[..4]);
    let cipher =
        XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| anyhow::anyhow!("invalid key length"))?;
    Ok(MasterKey { id, cipher })
}

impl Cipher {
    /// A cipher from the current key and older keys still accepted for reading (base64 of 32
    /// bytes each). No current key: values are stored in clear.
    pub fn new(current: Option<&str>, previous: &[String]) -> anyhow::Result<Cipher> {
        let current = current.map(parse_key).transpose()?;
        let previous = previous.iter().map(|k| parse_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Cipher { current, previous })
    }

    /// Whether values are encrypted when written.
    pub fn enabled(&self) -> bool {
        self.current.is_some()
    }

    /// The id of the current key.
    pub fn key_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// Encrypts `value` with the current key (or returns it as is without one).
    pub fn seal(&self, value: &str) -> String {
        let Some(key) = &self.current else { return value.to_owned() };
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        match key.cipher.encrypt(&nonce, value.as_bytes()) {
            Ok(ciphertext) => {
                let mut sealed = nonce_bytes.to_vec();
                sealed.extend_from_slice(&ciphertext);
                format!("{PREFIX}{}:{}", key.id, STANDARD.encode(sealed))
            }
            // Encryption of an in-memory buffer cannot fail; never store clear text silently.
            Err(_) => String::new(),
        }
    }

    /// Decrypts a stored value; values without the prefix are returned as they are.
    pub fn open(&self, stored: &str) -> Result<String, CryptoError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let (id, data) = rest.split_once(':').ok_or(CryptoError::Corrupt)?;
        let key = self
            .current
            .iter()
            .chain(self.previous.iter())
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let bytes = STANDARD.decode(data).map_err(|_| CryptoError::Corrupt)?;
        if bytes.len() < 24 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| CryptoError::Corrupt)?;
        let plain = key.cipher.decrypt(&XNonce::from(nonce), ciphertext).map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)
    }

    /// Whether `stored` is already sealed with the current key (rekey skips it).
    pub fn is_current(&self, stored: &str) -> bool {
        match (&self.current, stored.strip_prefix(PREFIX)) {
            (Some(key), Some(rest)) => rest.split_once(':').is_some_and(|(id, _)| id == key.id),
            (None, None) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn sealed_values_open_and_do_not_contain_the_secret() {
        let cipher = Cipher::new(Some(&key(1)), &[]).expect("valid key");
        let sealed = cipher.seal("whsec_topsecret");
        assert!(sealed.starts_with("enc:v1:"));
        assert!(!sealed.contains("topsecret"));
        assert_ne!(cipher.seal("whsec_topsecret"), sealed, "a fresh nonce every time");
        assert_eq!(cipher.open(&sealed).expect("opens"), "whsec_topsecret");
        assert_eq!(cipher.open("plain").expect("clear text passes"), "plain");
    }

    #[test]
    fn previous_keys_open_and_unknown_or_tampered_values_fail() {
        let old = Cipher::new(Some(&key(1)), &[]).expect("valid");
        let sealed = old.seal("v");
        let new = Cipher::new(Some(&key(2)), &[key(1)]).expect("valid");
        assert_eq!(new.open(&sealed).expect("old key still opens"), "v");
        assert!(!new.is_current(&sealed));
        assert!(new.is_current(&new.seal("v")));
        let without = Cipher::new(Some(&key(2)), &[]).expect("valid");
        assert!(matches!(without.open(&sealed), Err(CryptoError::UnknownKey(_))));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(old.open(&tampered).is_err());
        assert!(Cipher::new(Some("short"), &[]).is_err());
    }
}
