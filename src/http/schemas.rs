//! The event types' JSON Schemas, compiled once and kept between requests: compiling a schema
//! costs far more than validating an event with it. A schema is compiled again only when its
//! event type changed (`updated_at`), so an edit applies to the next event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::event_type::EventType;

/// Compiled schemas by event type name, with the `updated_at` they were compiled at.
#[derive(Default)]
pub struct Validators {
    compiled: Mutex<HashMap<String, (i64, Arc<jsonschema::Validator>)>>,
}

impl Validators {
    /// The compiled schema of `event_type` (`None` when it has none); the error says why a
    /// stored schema cannot be compiled.
    pub fn of(&self, event_type: &EventType) -> Result<Option<Arc<jsonschema::Validator>>, String> {
        let Some(schema) = &event_type.schema else { return Ok(None) };
        if let Ok(compiled) = self.compiled.lock()
            && let Some((at, validator)) = compiled.get(&event_type.name)
            && *at == event_type.updated_at
        {
            return Ok(Some(validator.clone()));
        }
        let validator = Arc::new(jsonschema::validator_for(schema).map_err(|error| error.to_string())?);
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.insert(event_type.name.clone(), (event_type.updated_at, validator.clone()));
        }
        Ok(Some(validator))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event_type(schema: Option<serde_json::Value>, updated_at: i64) -> EventType {
        EventType {
            name: "order.paid".into(),
            description: String::new(),
            schema,
            archived: false,
            created_at: 1,
            updated_at,
        }
    }

    #[test]
    fn a_schema_is_compiled_once_until_its_event_type_changes() {
        let validators = Validators::default();
        let typed = event_type(Some(json!({"type": "object", "required": ["n"]})), 1);
        let first = validators.of(&typed).expect("compiles").expect("a schema");
        let again = validators.of(&typed).expect("compiles").expect("a schema");
        assert!(Arc::ptr_eq(&first, &again), "the compiled schema is kept");
        assert!(!first.is_valid(&json!({})));
        let edited = event_type(Some(json!({"type": "object"})), 2);
        let recompiled = validators.of(&edited).expect("compiles").expect("a schema");
        assert!(!Arc::ptr_eq(&first, &recompiled), "an edit compiles it again");
        assert!(recompiled.is_valid(&json!({})));
        assert!(validators.of(&event_type(None, 3)).expect("no schema").is_none());
    }
}
