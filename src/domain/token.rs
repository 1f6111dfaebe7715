//! API tokens: `hrld_` + base64url of 32 random bytes, stored only as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "hrld_";
/// Characters of a token kept in clear to recognise it (`hrld_` + 8).
pub const SHOWN_PREFIX_LEN: usize = 13;

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// One tenant's objects only.
    Tenant(String),
}

/// A token, without its secret.
// Also the API's body (`TokenOut`), so the field docs speak of the API: times are Unix µs here
// and RFC 3339 there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = TokenOut)]
pub struct Token {
    /// `tok_…`
    pub id: String,
    /// Label.
    pub name: String,
    /// The tenant it is confined to; `null` for admin tokens.
    pub tenant_id: Option<String>,
    /// First characters of the token, to recognise it.
    pub prefix: String,
    /// RFC 3339.
    #[serde(serialize_with = "super::time::serialize")]
    #[schema(value_type = String)]
    pub created_at: i64,
    /// RFC 3339, to the minute.
    #[serde(serialize_with = "super::time::serialize_opt")]
    #[schema(value_type = Option<String>)]
    pub last_used_at: Option<i64>,
    /// RFC 3339: refused with 401 from then on; `null` = until revoked.
    #[serde(serialize_with = "super::time::serialize_opt")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<i64>,
}

impl Token {
    /// The scope this token grants.
    pub fn scope(&self) -> Scope {
        match &self.tenant_id {
            Some(tenant) => Scope::Tenant(tenant.clone()),
            None => Scope::Admin,
        }
    }
}

/// A fresh random token in clear text (shown once).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The part of a token that may be shown and logged.
pub fn shown_prefix(token: &str) -> String {
    token.chars().take(SHOWN_PREFIX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let a = generate_token();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), 5 + 43);
        assert_ne!(a, generate_token());
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_eq!(hash_token(&a).len(), 64);
        assert_eq!(shown_prefix(&a).len(), SHOWN_PREFIX_LEN);
    }
}
