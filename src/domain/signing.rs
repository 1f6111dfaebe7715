//! Standard Webhooks signatures (`webhook-signature: v1,<base64>`) and the optional classic
//! body-only hex HMAC header.

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

/// The `webhook-signature` value: one entry per active secret, current first, one space apart.
pub fn signature_header(keys: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter().map(|key| sign(key, msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
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
        let a = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let b = secret_key(&crate::domain::endpoint::generate_secret());
        let header = signature_header(&[a, b], "msg", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,") && p.len() == 3 + 44));
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
