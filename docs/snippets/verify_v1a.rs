// ed25519-dalek = "3", base64 = "0.22"
use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, VerifyingKey};

fn verify_v1a(public_key: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Some(key) = public_key.strip_prefix("whpk_").and_then(|k| STANDARD.decode(k).ok())
        .and_then(|k| <[u8; 32]>::try_from(k).ok()).and_then(|k| VerifyingKey::from_bytes(&k).ok())
    else { return false };
    let message = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    signatures.split(' ').filter_map(|e| e.strip_prefix("v1a,")).any(|e| {
        STANDARD.decode(e).ok().and_then(|s| <[u8; 64]>::try_from(s).ok())
            .is_some_and(|s| key.verify_strict(&message, &Signature::from_bytes(&s)).is_ok())
    })
}
