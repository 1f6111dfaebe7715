//! Standard Webhooks signatures — `v1,<base64>` HMAC-SHA256 with a `whsec_` secret, `v1a,<base64>`
//! ed25519 with a `whsk_` signing key — and the optional classic body-only hex HMAC header. The
//! scheme of a stored secret is its prefix, so a rotation that switches scheme signs with both
//! keys during its grace, each entry with its own prefix.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::endpoint::SECRET_PREFIX;

type HmacSha256 = Hmac<Sha256>;

/// The key bytes of a `whsec_` secret: base64-decoded after the prefix. A secret that does not
/// decode (only possible for rows written outside the API) signs with its raw bytes.
pub fn secret_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// Prefix of an ed25519 signing key: base64 of the 32-byte seed (Standard Webhooks).
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// Prefix of an ed25519 public key: base64 of its 32 bytes.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// How an endpoint's requests are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `v1,` entries: HMAC-SHA256 with a `whsec_` secret (the default).
    HmacSha256,
    /// `v1a,` entries: ed25519 with a `whsk_` signing key Herald keeps; receivers hold the
    /// `whpk_` public key.
    Ed25519,
}

impl Scheme {
    /// Parses the API name.
    pub fn parse(text: &str) -> Option<Scheme> {
        match text {
            "hmac-sha256" => Some(Scheme::HmacSha256),
            "ed25519" => Some(Scheme::Ed25519),
            _ => None,
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::Ed25519 => "ed25519",
        }
    }

    /// The scheme a stored secret signs with: its prefix says.
    pub fn of(secret: &str) -> Scheme {
        if secret.starts_with(SIGNING_KEY_PREFIX) { Scheme::Ed25519 } else { Scheme::HmacSha256 }
    }
}

/// A fresh ed25519 signing key, `whsk_` + base64 of a random 32-byte seed.
pub fn generate_signing_key() -> String {
    let seed: [u8; 32] = rand::random();
    format!("{SIGNING_KEY_PREFIX}{}", STANDARD.encode(seed))
}

/// Reads a `whsk_` key: base64 of the 32-byte seed, or of the 64-byte seed ‖ public key form
/// (whose public half must belong to the seed).
pub fn parse_signing_key(text: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let encoded = text
        .strip_prefix(SIGNING_KEY_PREFIX)
        .ok_or_else(|| format!("must start with `{SIGNING_KEY_PREFIX}`"))?;
    let bytes = STANDARD.decode(encoded).map_err(|_| "must be `whsk_` followed by base64".to_owned())?;
    match bytes.len() {
        32 => Ok(ed25519_dalek::SigningKey::from_bytes(&bytes[..32].try_into().map_err(|_| "bad seed")?)),
        64 => {
            let key = ed25519_dalek::SigningKey::from_bytes(&bytes[..32].try_into().map_err(|_| "bad seed")?);
            if key.verifying_key().as_bytes()[..] != bytes[32..] {
                return Err("the public half of the 64-byte key does not belong to its seed".into());
            }
            Ok(key)
        }
        n => Err(format!("must hold a 32-byte seed (or 64 bytes: seed and public key), not {n} bytes")),
    }
}

/// The `whpk_` public key of a `whsk_` signing key; `None` for an HMAC secret.
pub fn public_key(secret: &str) -> Option<String> {
    let key = parse_signing_key(secret).ok()?;
    Some(format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(key.verifying_key().as_bytes())))
}

/// One `webhook-signature` entry for a stored secret: `v1,` for a `whsec_` secret, `v1a,` for a
/// `whsk_` key.
pub fn sign_with(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    match Scheme::of(secret) {
        Scheme::HmacSha256 => sign(&secret_key(secret), msg_id, timestamp, body),
        Scheme::Ed25519 => match parse_signing_key(secret) {
            Ok(key) => sign_ed25519(&key, msg_id, timestamp, body),
            // Only a row written outside the API could hold such a key; it signs nothing useful.
            Err(_) => sign(secret.as_bytes(), msg_id, timestamp, body),
        },
    }
}

/// One `v1a` entry: base64 of the ed25519 signature over `{id}.{timestamp}.{body}`.
pub fn sign_ed25519(key: &ed25519_dalek::SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    use ed25519_dalek::Signer;
    let mut message = Vec::with_capacity(msg_id.len() + body.len() + 24);
    message.extend_from_slice(msg_id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    format!("v1a,{}", STANDARD.encode(key.sign(&message).to_bytes()))
}

/// One signature entry, `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` value: one entry per active secret, current first, one space apart,
/// each in its own scheme.
pub fn signature_header(secrets: &[&str], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| sign_with(secret, msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// The classic header: lowercase hex HMAC-SHA256 of the body, keyed by the whole secret string
/// (`whsec_` included) as UTF-8, with an optional prefix such as `sha256=`.
pub fn hex_signature(secret: &str, body: &[u8], prefix: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable_hmac());
    mac.update(body);
    format!("{prefix}{}", hex::encode(mac.finalize().into_bytes()))
}

fn unreachable_hmac() -> HmacSha256 {
    // HMAC accepts keys of any length; this branch cannot be taken.
    HmacSha256::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!("hmac accepts any key length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_give_two_entries_one_space_apart() {
        let b = crate::domain::endpoint::generate_secret();
        let header = signature_header(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &b], "msg", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,") && p.len() == 3 + 44));
    }

    #[test]
    fn ed25519_test_vector() {
        let seed = "whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
        assert_eq!(public_key(seed).as_deref(), Some("whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="));
        let signature =
            sign_with(seed, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(
            signature,
            "v1a,fldxM4gAKugP6nnt1hdz3sgGfZ6d99nzrMFnZOELIxbzEHoVmAb2ADpkJK7zgPePmPsle0zV9jSeGlHFG2NVAw=="
        );
    }

    #[test]
    fn signing_keys_import_in_both_forms_and_a_switching_rotation_signs_with_both_schemes() {
        let key = parse_signing_key("whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=").expect("seed");
        let mut long = key.to_bytes().to_vec();
        long.extend_from_slice(key.verifying_key().as_bytes());
        let long = format!("whsk_{}", STANDARD.encode(&long));
        assert_eq!(parse_signing_key(&long).map(|k| k.to_bytes()), Ok(key.to_bytes()));
        let mut wrong = key.to_bytes().to_vec();
        wrong.extend_from_slice(&[7u8; 32]);
        assert!(parse_signing_key(&format!("whsk_{}", STANDARD.encode(&wrong))).is_err());
        assert!(parse_signing_key("whsk_AAAA").is_err());
        assert!(parse_signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        let fresh = generate_signing_key();
        assert!(parse_signing_key(&fresh).is_ok() && public_key(&fresh).is_some());
        let header = signature_header(&[&fresh, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "msg", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert!(parts[0].starts_with("v1a,") && parts[1].starts_with("v1,"), "{header}");
        assert_eq!(Scheme::of(&fresh), Scheme::Ed25519);
        assert_eq!(Scheme::parse("ed25519"), Some(Scheme::Ed25519));
    }

    #[test]
    fn hex_header_is_keyed_by_the_secret_string() {
        let value = hex_signature("whsec_abc", b"{}", "sha256=");
        assert!(value.starts_with("sha256="));
        assert_eq!(value.len(), 7 + 64);
        assert_eq!(value, value.to_lowercase());
        assert_ne!(hex_signature("whsec_abd", b"{}", ""), value.trim_start_matches("sha256="));
    }
}
