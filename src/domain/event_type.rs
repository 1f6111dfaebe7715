//! Event type names (`segment(.segment)+`, lowercase `[a-z0-9_]`) and the subscription patterns
//! endpoints use to choose them: exact names, `prefix.*` and `*`.

/// Longest accepted event type name.
pub const MAX_NAME_LEN: usize = 128;

/// The event type of test events; never matched by a subscription.
pub const WEBHOOK_TEST: &str = "webhook.test";

/// Checks an event type name; the error says what is accepted.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if !is_dotted(name) || !name.contains('.') {
        return Err(
            "must be two or more dot-separated segments of lowercase letters, digits and underscores, such as `workflow.completed`"
                .into(),
        );
    }
    Ok(())
}

fn is_dotted(text: &str) -> bool {
    text.split('.').all(|segment| {
        !segment.is_empty()
            && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// One entry of an endpoint's `event_types`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every event type.
    All,
    /// `a.b.*`: every name that begins `a.b.`, at any depth (not `a.b` itself).
    Prefix(String),
    /// One exact name.
    Exact(String),
}

impl Pattern {
    /// Parses a subscription entry; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::All);
        }
        if text.len() > MAX_NAME_LEN {
            return Err(format!("must be at most {MAX_NAME_LEN} characters"));
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            if is_dotted(prefix) {
                return Ok(Pattern::Prefix(format!("{prefix}.")));
            }
            return Err(format!(
                "`{text}` is not a valid wildcard: expected `*` or `prefix.*`, such as `workflow.*`"
            ));
        }
        validate_name(text).map_err(|why| format!("`{text}` is not a valid event type name: {why}"))?;
        Ok(Pattern::Exact(text.to_owned()))
    }

    /// Whether this pattern selects `name`.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Pattern::Exact(exact) => exact == name,
        }
    }
}

/// Whether an endpoint subscribed to `patterns` receives events of type `name`.
/// Empty means everything; `webhook.test` is never matched by a subscription.
pub fn subscribed(patterns: &[String], name: &str) -> bool {
    if name == WEBHOOK_TEST {
        return false;
    }
    patterns.is_empty()
        || patterns.iter().any(|p| Pattern::parse(p).is_ok_and(|pattern| pattern.matches(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_two_lowercase_segments() {
        for good in ["workflow.completed", "a.b_c.d9"] {
            assert_eq!(validate_name(good), Ok(()), "{good} is a valid name");
        }
        for bad in ["workflow", "Workflow.completed", "a..b", ".a.b", "a.b.", "a-b.c", "a.b c", "", "é.b"] {
            assert!(validate_name(bad).is_err(), "{bad} should be refused");
        }
        assert!(validate_name(&format!("a.{}", "b".repeat(200))).is_err());
    }

    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(Pattern::parse("*"), Ok(Pattern::All));
        assert_eq!(Pattern::parse("a.*"), Ok(Pattern::Prefix("a.".into())));
        assert!(Pattern::parse("a*").is_err());
        assert!(Pattern::parse("*.a").is_err());
        assert!(Pattern::parse("A.*").is_err());
        let prefix = Pattern::parse("workflow.*").expect("valid");
        assert!(prefix.matches("workflow.completed"));
        assert!(prefix.matches("workflow.step.failed"));
        assert!(!prefix.matches("workflow"));
        assert!(!prefix.matches("workflows.completed"));
    }

    #[test]
    fn empty_subscription_matches_all_but_test_events() {
        assert!(subscribed(&[], "a.b"));
        assert!(!subscribed(&[], WEBHOOK_TEST));
        assert!(!subscribed(&["*".into()], WEBHOOK_TEST));
        assert!(subscribed(&["x.y".into(), "a.*".into()], "a.b.c"));
        assert!(!subscribed(&["x.y".into()], "a.b"));
    }
}

/// A catalogued event type.
#[derive(Clone, Debug, PartialEq)]
pub struct EventType {
    /// The name, such as `workflow.completed`.
    pub name: String,
    /// Free text for the catalogue.
    pub description: String,
    /// Optional JSON Schema that event `data` must match.
    pub schema: Option<serde_json::Value>,
    /// Archived types accept no new events or subscriptions.
    pub archived: bool,
    /// Unix µs.
    pub created_at: i64,
    /// Unix µs.
    pub updated_at: i64,
}

/// Checks that `schema` is itself a valid JSON Schema that Herald can compile offline.
pub fn validate_schema(schema: &serde_json::Value) -> Result<(), String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("must be a JSON Schema object".into());
    }
    if let Err(error) = jsonschema::meta::validate(schema) {
        return Err(format!("is not a valid JSON Schema: {error}"));
    }
    jsonschema::validator_for(schema).map(|_| ()).map_err(|error| format!("cannot be compiled: {error}"))
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_are_checked() {
        assert!(validate_schema(&json!({"type": "object", "required": ["id"]})).is_ok());
        assert!(validate_schema(&json!({"type": "no-such-type"})).is_err());
        assert!(validate_schema(&json!({"minimum": "ten"})).is_err());
        assert!(validate_schema(&json!("a string")).is_err());
        assert!(validate_schema(&json!({"$ref": "https://example.com/remote.json"})).is_err());
    }
}
