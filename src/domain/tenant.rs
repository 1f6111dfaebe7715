//! Tenants and their platform-chosen `external_id`.

use serde_json::{Map, Value};

/// A stored tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    /// `tnt_…`
    pub id: String,
    /// The platform's own id for this customer, usable in paths in place of `id`.
    pub external_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Free-form JSON object kept for the platform.
    pub metadata: Map<String, Value>,
    /// Unix µs.
    pub created_at: i64,
    /// Unix µs.
    pub updated_at: i64,
}

/// Largest accepted `metadata`, serialised.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Checks an `external_id`: `[A-Za-z0-9_-]{1,64}`, not starting with `tnt_`.
pub fn validate_external_id(external_id: &str) -> Result<(), String> {
    if external_id.is_empty() || external_id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !external_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("may contain only letters, digits, `_` and `-`".into());
    }
    if external_id.starts_with("tnt_") {
        return Err("must not start with `tnt_`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_follow_the_rules() {
        assert_eq!(validate_external_id("acme-42_x"), Ok(()));
        let too_long = "a".repeat(65);
        for bad in ["", "tnt_fake", "a.b", too_long.as_str()] {
            assert!(validate_external_id(bad).is_err(), "{bad} should be refused");
        }
    }
}
