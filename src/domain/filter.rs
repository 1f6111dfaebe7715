//! Payload filters (DESIGN §13): which events an endpoint receives beyond their type, written in
//! the JSON operator dialect Outpost, Convoy and Hookdeck users know, plus RFC 9535 JSONPath.
//! A filter is compiled once when it is written (every error names the JSON pointer of the node
//! at fault) and the compiled form is what fan-out evaluates against each event's envelope
//! `{id, event, timestamp, data}`.
//!
//! Semantics, one function each below:
//! - dotted keys are paths into the envelope; sibling keys are ANDed; an object value without
//!   operators is a nested partial match ([`compile_object`]);
//! - a bare value or `$eq` is equality; on an array field it means "contains" ([`equals_or_contains`]);
//! - `$in`/`$nin`: one of, or intersects on an array field ([`is_in`]);
//! - `$gt $gte $lt $lte`: numbers by value, strings by code point; any other pair is false ([`order`]);
//! - numbers compare by value: `1` equals `1.0`, integers compare exactly ([`same_number`]);
//! - a missing field fails every operator except `$neq`, `$nin` and `$exists: false` ([`Op::holds`]).

use std::cmp::Ordering;

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// Largest filter, as JSON text.
pub const MAX_BYTES: usize = 8 * 1024;
/// Deepest nesting of objects and arrays.
pub const MAX_DEPTH: usize = 8;
/// Most conditions (operators and bare values) in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Most values in one `$in` or `$nin`.
pub const MAX_IN: usize = 100;
/// Most `$jsonpath` conditions in one filter.
pub const MAX_JSONPATHS: usize = 4;
/// Longest `$jsonpath` expression.
pub const MAX_JSONPATH_BYTES: usize = 1024;

/// A compiled filter.
#[derive(Debug)]
pub struct Filter(Node);

#[derive(Debug)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field(Vec<String>, Op),
    JsonPath(Box<JsonPath>),
}

/// One operator applied to a field.
#[derive(Debug)]
enum Op {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Cmp(Ordering, bool, Value),
    Exists(bool),
    StartsWith(String),
    EndsWith(String),
}

/// Why a filter was refused: the JSON pointer of the node at fault (`""` for the whole filter)
/// and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    /// RFC 6901 pointer into the filter.
    pub pointer: String,
    /// What is wrong, lowercase.
    pub message: String,
}

struct Compiler {
    conditions: usize,
    jsonpaths: usize,
}

impl Filter {
    /// Compiles a filter, checking every limit.
    pub fn compile(filter: &Value) -> Result<Filter, FilterError> {
        let text = filter.to_string();
        if text.len() > MAX_BYTES {
            return Err(error("", format!("must be at most {MAX_BYTES} bytes of JSON")));
        }
        if depth(filter) > MAX_DEPTH {
            return Err(error("", format!("must nest at most {MAX_DEPTH} levels deep")));
        }
        let Value::Object(object) = filter else {
            return Err(error("", "must be a JSON object (or null for no filter)"));
        };
        let mut compiler = Compiler { conditions: 0, jsonpaths: 0 };
        compiler.compile_object(object, &[], "").map(Filter)
    }

    /// Whether `envelope` (`{id, event, timestamp, data}`) matches.
    pub fn matches(&self, envelope: &Value) -> bool {
        self.0.matches(envelope)
    }
}

impl Compiler {
    /// An object of field keys (dotted paths, ANDed; object values are nested partial matches)
    /// and logical operators, at the field path `prefix`.
    fn compile_object(
        &mut self,
        object: &Map<String, Value>,
        prefix: &[String],
        at: &str,
    ) -> Result<Node, FilterError> {
        let mut all = Vec::with_capacity(object.len());
        for (key, value) in object {
            let here = format!("{at}/{}", escape(key));
            match key.as_str() {
                "$and" | "$or" => {
                    let Value::Array(items) = value else {
                        return Err(error(&here, "must be an array of filters"));
                    };
                    if items.is_empty() {
                        return Err(error(&here, "must list at least one filter"));
                    }
                    let mut nodes = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let Value::Object(item) = item else {
                            return Err(error(&format!("{here}/{i}"), "must be a filter object"));
                        };
                        nodes.push(self.compile_object(item, prefix, &format!("{here}/{i}"))?);
                    }
                    all.push(if key == "$and" { Node::All(nodes) } else { Node::Any(nodes) });
                }
                "$not" => {
                    let Value::Object(inner) = value else {
                        return Err(error(&here, "must be a filter object"));
                    };
                    all.push(Node::Not(Box::new(self.compile_object(inner, prefix, &here)?)));
                }
                "$jsonpath" => {
                    if !prefix.is_empty() {
                        return Err(error(&here, "applies to the whole envelope: use it at the top level"));
                    }
                    all.push(self.compile_jsonpath(value, &here)?);
                }
                operator if operator.starts_with('$') => {
                    if prefix.is_empty() {
                        return Err(error(
                            &here,
                            format!(
                                "`{operator}` needs a field, such as {{\"data.amount\": {{\"{operator}\": …}}}}"
                            ),
                        ));
                    }
                    all.push(Node::Field(prefix.to_vec(), self.compile_op(operator, value, &here)?));
                }
                field => {
                    if field.is_empty() || field.split('.').any(str::is_empty) {
                        return Err(error(
                            &here,
                            "a field path must be dot-separated names, such as `data.customer.tier`",
                        ));
                    }
                    let mut path = prefix.to_vec();
                    path.extend(field.split('.').map(str::to_owned));
                    all.push(self.compile_value(value, &path, &here)?);
                }
            }
        }
        Ok(Node::All(all))
    }

    /// The value of a field key: an operator object, a nested partial match, or a bare value.
    fn compile_value(&mut self, value: &Value, path: &[String], at: &str) -> Result<Node, FilterError> {
        match value {
            Value::Object(object) if object.keys().any(|k| k.starts_with('$')) => {
                if let Some(field) = object.keys().find(|k| !k.starts_with('$')) {
                    return Err(error(
                        &format!("{at}/{}", escape(field)),
                        "cannot mix field names and operators in one object",
                    ));
                }
                self.compile_object(object, path, at)
            }
            Value::Object(object) => self.compile_object(object, path, at),
            bare => Ok(Node::Field(path.to_vec(), self.counted(Op::Eq(bare.clone()), at)?)),
        }
    }

    fn compile_op(&mut self, operator: &str, value: &Value, at: &str) -> Result<Op, FilterError> {
        let op = match operator {
            "$eq" => Op::Eq(value.clone()),
            "$neq" => Op::Neq(value.clone()),
            "$in" | "$nin" => {
                let Value::Array(values) = value else { return Err(error(at, "must be an array of values")) };
                if values.len() > MAX_IN {
                    return Err(error(at, format!("must list at most {MAX_IN} values")));
                }
                if operator == "$in" { Op::In(values.clone()) } else { Op::Nin(values.clone()) }
            }
            "$gt" | "$gte" | "$lt" | "$lte" => {
                if !(value.is_number() || value.is_string()) {
                    return Err(error(at, "must be a number or a string"));
                }
                let (order, or_equal) = match operator {
                    "$gt" => (Ordering::Greater, false),
                    "$gte" => (Ordering::Greater, true),
                    "$lt" => (Ordering::Less, false),
                    _ => (Ordering::Less, true),
                };
                Op::Cmp(order, or_equal, value.clone())
            }
            "$exists" => match value {
                Value::Bool(exists) => Op::Exists(*exists),
                _ => return Err(error(at, "must be true or false")),
            },
            "$startsWith" | "$endsWith" => {
                let Value::String(text) = value else { return Err(error(at, "must be a string")) };
                if operator == "$startsWith" {
                    Op::StartsWith(text.clone())
                } else {
                    Op::EndsWith(text.clone())
                }
            }
            other => {
                return Err(error(
                    at,
                    format!(
                        "unknown operator `{other}`: use $eq, $neq, $in, $nin, $gt, $gte, $lt, $lte, $exists, $startsWith, $endsWith, $and, $or, $not or $jsonpath"
                    ),
                ));
            }
        };
        self.counted(op, at)
    }

    fn compile_jsonpath(&mut self, value: &Value, at: &str) -> Result<Node, FilterError> {
        let Value::String(query) = value else {
            return Err(error(at, "must be an RFC 9535 JSONPath query string"));
        };
        if query.len() > MAX_JSONPATH_BYTES {
            return Err(error(at, format!("must be at most {MAX_JSONPATH_BYTES} bytes")));
        }
        self.jsonpaths += 1;
        if self.jsonpaths > MAX_JSONPATHS {
            return Err(error(at, format!("a filter may hold at most {MAX_JSONPATHS} $jsonpath conditions")));
        }
        self.count(at)?;
        let path =
            JsonPath::parse(query).map_err(|e| error(at, format!("is not a valid JSONPath query: {e}")))?;
        Ok(Node::JsonPath(Box::new(path)))
    }

    fn counted(&mut self, op: Op, at: &str) -> Result<Op, FilterError> {
        self.count(at)?;
        Ok(op)
    }

    fn count(&mut self, at: &str) -> Result<(), FilterError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(error(at, format!("a filter may hold at most {MAX_CONDITIONS} conditions")));
        }
        Ok(())
    }
}

impl Node {
    fn matches(&self, envelope: &Value) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.matches(envelope)),
            Node::Any(nodes) => nodes.iter().any(|n| n.matches(envelope)),
            Node::Not(node) => !node.matches(envelope),
            Node::Field(path, op) => op.holds(lookup(envelope, path)),
            Node::JsonPath(path) => !path.query(envelope).is_empty(),
        }
    }
}

impl Op {
    /// Whether the operator holds for `field` (`None` = missing: only `$neq`, `$nin` and
    /// `$exists: false` hold).
    fn holds(&self, field: Option<&Value>) -> bool {
        let Some(field) = field else {
            return matches!(self, Op::Neq(_) | Op::Nin(_) | Op::Exists(false));
        };
        match self {
            Op::Eq(value) => equals_or_contains(field, value),
            Op::Neq(value) => !equals_or_contains(field, value),
            Op::In(values) => is_in(field, values),
            Op::Nin(values) => !is_in(field, values),
            Op::Cmp(wanted, or_equal, value) => order(field, value)
                .is_some_and(|found| found == *wanted || (*or_equal && found == Ordering::Equal)),
            Op::Exists(exists) => *exists,
            Op::StartsWith(prefix) => field.as_str().is_some_and(|text| text.starts_with(prefix.as_str())),
            Op::EndsWith(suffix) => field.as_str().is_some_and(|text| text.ends_with(suffix.as_str())),
        }
    }
}

/// The value at a dotted path; array elements by index (`data.items.0.sku`).
fn lookup<'a>(envelope: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(envelope, |value, key| match value {
        Value::Object(object) => object.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Equality; on an array field compared with a non-array value: the array contains it.
fn equals_or_contains(field: &Value, value: &Value) -> bool {
    match (field, value) {
        (Value::Array(items), wanted) if !wanted.is_array() => items.iter().any(|item| same(item, wanted)),
        _ => same(field, value),
    }
}

/// `$in`: one of the values; on an array field, the two lists intersect.
fn is_in(field: &Value, values: &[Value]) -> bool {
    match field {
        Value::Array(items) => items.iter().any(|item| values.iter().any(|v| same(item, v))),
        scalar => values.iter().any(|v| same(scalar, v)),
    }
}

/// Numbers against numbers by value, strings against strings by code point; else `None`.
fn order(field: &Value, value: &Value) -> Option<Ordering> {
    match (field, value) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    }
}

/// Structural equality with numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => same_number(a, b),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `1` equals `1.0`; integers (up to 64 bits) compare exactly, beyond 2^53 too.
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    compare_numbers(a, b) == Some(Ordering::Equal)
}

fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    if a.as_i64().is_some() && b.as_u64().is_some() {
        return Some(Ordering::Less);
    }
    if a.as_u64().is_some() && b.as_i64().is_some() {
        return Some(Ordering::Greater);
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(object) => 1 + object.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn error(pointer: &str, message: impl Into<String>) -> FilterError {
    FilterError { pointer: pointer.to_owned(), message: message.into() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn envelope() -> Value {
        json!({
            "id": "evt_1", "event": "order.created", "timestamp": "2026-11-30T05:00:00.000Z",
            "data": {
                "customer": {"tier": "gold", "region": "eu"},
                "amount": 120, "tags": ["vip", "new"],
                "items": [{"sku": "A1", "qty": 3}, {"sku": "B2", "qty": 1}],
                "big": 9007199254740993u64, "ratio": 1.0, "note": null
            }
        })
    }

    fn matches(filter: Value) -> bool {
        Filter::compile(&filter).unwrap_or_else(|e| panic!("{filter}: {e:?}")).matches(&envelope())
    }

    #[test]
    fn dotted_and_nested_keys_are_partial_matches_and_siblings_are_anded() {
        assert!(matches(json!({"data.customer.tier": "gold"})));
        assert!(matches(json!({"data": {"customer": {"tier": "gold"}}})));
        assert!(matches(json!({"data.customer.tier": "gold", "event": "order.created"})));
        assert!(!matches(json!({"data.customer.tier": "gold", "event": "order.paid"})));
        assert!(
            matches(json!({"data": {"customer": {"region": "eu"}}})),
            "partial, not whole-object equality"
        );
        assert!(matches(json!({"data.items.0.sku": "A1"})), "array elements by index");
    }

    #[test]
    fn equality_on_an_array_field_means_contains() {
        assert!(matches(json!({"data.tags": "vip"})));
        assert!(matches(json!({"data.tags": {"$eq": "new"}})));
        assert!(!matches(json!({"data.tags": "old"})));
        assert!(matches(json!({"data.tags": ["vip", "new"]})), "an array value is array equality");
        assert!(matches(json!({"data.tags": {"$neq": "old"}})));
    }

    #[test]
    fn in_is_one_of_or_intersects_and_nin_negates() {
        assert!(matches(json!({"data.customer.tier": {"$in": ["silver", "gold"]}})));
        assert!(!matches(json!({"data.customer.tier": {"$nin": ["silver", "gold"]}})));
        assert!(matches(json!({"data.tags": {"$in": ["old", "vip"]}})));
        assert!(matches(json!({"data.tags": {"$nin": ["old"]}})));
    }

    #[test]
    fn comparisons_need_two_numbers_or_two_strings() {
        assert!(matches(json!({"data.amount": {"$gt": 100, "$lte": 120}})));
        assert!(!matches(json!({"data.amount": {"$gt": 120}})));
        assert!(matches(json!({"timestamp": {"$gte": "2026-11-30T00:00:00Z"}})), "RFC 3339 by code point");
        assert!(!matches(json!({"data.amount": {"$gt": "100"}})), "a number against a string is false");
        assert!(!matches(json!({"data.amount": {"$lt": "100"}})), "…both ways");
    }

    #[test]
    fn numbers_compare_by_value_and_large_integers_exactly() {
        assert!(matches(json!({"data.ratio": 1})), "1 equals 1.0");
        assert!(matches(json!({"data.amount": 120.0})));
        assert!(matches(json!({"data.big": 9007199254740993u64})));
        assert!(!matches(json!({"data.big": 9007199254740992u64})), "beyond 2^53, exactly");
        assert!(matches(json!({"data.big": {"$gt": 9007199254740992u64}})));
    }

    #[test]
    fn a_missing_field_fails_every_operator_but_neq_nin_and_exists_false() {
        for op in [
            json!("x"),
            json!({"$eq": null}),
            json!({"$in": ["x"]}),
            json!({"$gt": 1}),
            json!({"$startsWith": ""}),
            json!({"$exists": true}),
        ] {
            assert!(!matches(json!({"data.missing": op})), "{op}");
        }
        for op in [json!({"$neq": "x"}), json!({"$nin": ["x"]}), json!({"$exists": false})] {
            assert!(matches(json!({"data.missing": op})), "{op}");
        }
        assert!(matches(json!({"data.note": {"$exists": true}})), "null is present");
        assert!(matches(json!({"data.note": null})));
    }

    #[test]
    fn strings_logic_and_jsonpath() {
        assert!(matches(json!({"event": {"$startsWith": "order."}})));
        assert!(matches(json!({"event": {"$endsWith": ".created"}})));
        assert!(!matches(json!({"data.amount": {"$startsWith": "1"}})), "only strings");
        assert!(matches(json!({"$or": [{"data.amount": {"$lt": 10}}, {"data.customer.tier": "gold"}]})));
        assert!(!matches(json!({"$and": [{"data.amount": {"$lt": 10}}, {"data.customer.tier": "gold"}]})));
        assert!(matches(json!({"$not": {"data.customer.region": "us"}})));
        assert!(matches(json!({"data.customer.tier": {"$not": {"$eq": "silver"}}})));
        assert!(matches(json!({"$jsonpath": "$.data.items[?@.sku == 'A1' && @.qty > 2]"})));
        assert!(!matches(json!({"$jsonpath": "$.data.items[?@.sku == 'A1' && @.qty > 3]"})));
        assert!(matches(json!({"$jsonpath": "$.data.note"})), "a selected null still matches");
        assert!(matches(json!({})), "an empty filter matches everything");
    }

    #[test]
    fn invalid_filters_name_the_json_pointer_of_the_node_at_fault() {
        let pointer = |filter: Value| match Filter::compile(&filter) {
            Ok(_) => panic!("accepted: {filter}"),
            Err(error) => error.pointer,
        };
        assert_eq!(pointer(json!({"data.amount": {"$gtt": 1}})), "/data.amount/$gtt");
        assert_eq!(pointer(json!({"data": {"a/b": {"$in": 3}}})), "/data/a~1b/$in");
        assert_eq!(pointer(json!({"$or": [{"a": 1}, 2]})), "/$or/1");
        assert_eq!(pointer(json!({"$gt": 1})), "/$gt");
        assert_eq!(pointer(json!({"a": {"$eq": 1, "b": 2}})), "/a/b");
        assert_eq!(pointer(json!({"$jsonpath": "$.data[?"})), "/$jsonpath");
        assert_eq!(pointer(json!({"a..b": 1})), "/a..b");
        assert_eq!(pointer(json!([1])), "");
        assert_eq!(pointer(json!({"a": {"$in": vec![1; 101]}})), "/a/$in");
        let many: Map<String, Value> = (0..65).map(|i| (format!("f{i:02}"), json!(i))).collect();
        assert_eq!(pointer(Value::Object(many)), "/f64");
        let paths: Vec<Value> = (0..5).map(|_| json!({"$jsonpath": "$.id"})).collect();
        assert_eq!(pointer(json!({"$and": paths})), "/$and/4/$jsonpath");
        let deep = json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}});
        assert_eq!(pointer(deep), "");
        assert_eq!(pointer(json!({"a": "x".repeat(9000)})), "");
    }
}
