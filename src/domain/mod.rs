//! Pure domain types and rules: no I/O, no database or HTTP types.

pub mod batch;
pub mod breaker;
pub mod claim;
pub mod concurrency;
pub mod delivery;
pub mod endpoint;
pub mod event;
pub mod event_type;
pub mod filter;
pub mod id;
pub mod net;
pub mod operational;
pub mod policy;
pub mod retry;
pub mod signing;
pub mod stats;
pub mod tenant;
pub mod time;
pub mod token;
pub mod trace;

use std::fmt;

/// One problem with one input field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// The field, as a JSON path-like name (`url`, `headers.X-Api-Key`, `event_types[2]`).
    pub field: String,
    /// What is wrong, lowercase.
    pub message: String,
}

/// Every problem found in one input; empty means valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    /// A single-field error.
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut invalid = Invalid::default();
        invalid.push(field, message);
        invalid
    }

    /// `Ok(())` when nothing was recorded.
    pub fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// Checks a free-text field: at most `max` characters and no control characters but newlines and tabs.
pub fn check_text(invalid: &mut Invalid, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        invalid.push(field, format!("must be at most {max} characters"));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        invalid.push(field, "must not contain control characters");
    }
}
