//! Events as Herald sends them: the producer's `data` kept as raw JSON (whitespace removed,
//! nothing else changed), checked for duplicate keys, and wrapped once in the signed envelope.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `data` parsed for validation, refusing objects with duplicate keys.
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses raw JSON `data`: must be an object without duplicate keys.
pub fn parse_data(raw: &str) -> Result<Value, String> {
    let StrictValue(value) = serde_json::from_str(raw).map_err(|e| format!("is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("must be a JSON object".into());
    }
    Ok(value)
}

/// Removes insignificant whitespace from valid JSON text; keys, order, numbers and escapes stay.
pub fn minify(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// The envelope bytes that are stored, signed and sent: `{"id","event","timestamp","data"}`.
/// `id` and `event` are validated names (no characters that need escaping).
pub fn envelope(id: &str, event: &str, timestamp: &str, minified_data: &str) -> String {
    format!(r#"{{"id":"{id}","event":"{event}","timestamp":"{timestamp}","data":{minified_data}}}"#)
}

/// The `data` part of a stored envelope, as raw JSON text.
pub fn data_of_envelope(envelope: &str) -> Option<&str> {
    let start = envelope.find(",\"data\":")? + 8;
    envelope.get(start..envelope.len().checked_sub(1)?)
}

/// Checks an idempotency key: 1–255 printable ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("must be printable ASCII".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_everything_but_whitespace() {
        let raw = "{ \"b\" : 1 ,\n \"a\": [ 12345678901234567890123 , \"x y\\\" z\" ], \"c\": 1.50e3 , \"d\":\"\\u00e9\" }";
        assert_eq!(minify(raw), r#"{"b":1,"a":[12345678901234567890123,"x y\" z"],"c":1.50e3,"d":"\u00e9"}"#);
    }

    #[test]
    fn data_must_be_an_object_without_duplicate_keys() {
        assert!(parse_data(r#"{"a":1,"b":{"c":2}}"#).is_ok());
        assert!(parse_data(r#"{"a":1,"a":2}"#).expect_err("duplicate").contains("duplicate key `a`"));
        assert!(parse_data(r#"{"x":{"a":1,"a":2}}"#).is_err());
        assert!(parse_data("[1,2]").is_err());
        assert!(parse_data("42").is_err());
    }

    #[test]
    fn envelope_round_trips_its_data() {
        let e = envelope("evt_1", "a.b", "2026-01-01T00:00:00.000Z", r#"{"k":[1,2]}"#);
        assert_eq!(
            e,
            r#"{"id":"evt_1","event":"a.b","timestamp":"2026-01-01T00:00:00.000Z","data":{"k":[1,2]}}"#
        );
        assert_eq!(data_of_envelope(&e), Some(r#"{"k":[1,2]}"#));
        let parsed: Value = serde_json::from_str(&e).expect("valid JSON");
        assert_eq!(parsed["data"]["k"][1], 2);
    }

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert!(validate_idempotency_key("order-42/retry 1").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key("é").is_err());
        assert!(validate_idempotency_key(&"k".repeat(256)).is_err());
    }
}
