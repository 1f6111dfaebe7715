//! The `webhooks` of the full OpenAPI document (DESIGN §16), built from the live event type
//! catalogue: per event type, the envelope with the type's JSON Schema as `data` and the Standard
//! Webhooks headers, and one `batch` webhook for endpoints that receive batches, so a customer can
//! generate typed handlers. The public `/openapi.json` is the API alone (the catalogue is not
//! public); `GET /v1/openapi.json` serves this one to any valid token.

use serde_json::{Map, Value, json};

use crate::domain::event_type::EventType;

/// The component name of an event type's envelope, such as `WorkflowCompletedEvent` for
/// `workflow.completed`: each run of letters and digits capitalised.
pub fn component_name(event_type: &str) -> String {
    let mut name: String = event_type
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    if name.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        name.insert_str(0, "Type");
    }
    name + "Event"
}

/// Points the local `$ref`s of a schema placed at `at` (a JSON pointer in the document) at their
/// new place, and drops the keywords that only a standalone schema carries.
fn rebase(schema: &mut Value, at: &str, top: bool) {
    match schema {
        Value::Object(object) => {
            if top {
                object.remove("$schema");
                object.remove("$id");
            }
            if let Some(Value::String(reference)) = object.get_mut("$ref")
                && let Some(rest) = reference.strip_prefix('#')
            {
                *reference = format!("#{at}{rest}");
            }
            for value in object.values_mut() {
                rebase(value, at, false);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase(item, at, false)),
        _ => {}
    }
}

/// The API document as served: utoipa's, with every free-form object schema (a `data`,
/// `metadata` or `filter` without declared properties) saying that it takes any members
/// (`additionalProperties: {}`), which code generators need to type it as a map rather than an
/// empty object.
pub fn api_document() -> Value {
    let mut document =
        serde_json::to_value(<super::ApiDoc as utoipa::OpenApi>::openapi()).unwrap_or_default();
    open_free_form_objects(&mut document);
    document
}

fn open_free_form_objects(node: &mut Value) {
    match node {
        Value::Object(object) => {
            let is_object = match object.get("type") {
                Some(Value::String(kind)) => kind == "object",
                Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "object"),
                _ => false,
            };
            if is_object && !object.contains_key("properties") && !object.contains_key("additionalProperties")
            {
                object.insert("additionalProperties".into(), json!({}));
            }
            for (key, value) in object.iter_mut() {
                if key != "example" && key != "examples" {
                    open_free_form_objects(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(open_free_form_objects),
        _ => {}
    }
}

/// A header parameter.
fn header(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": true, "description": description, "schema": {"type": "string"}})
}

/// The Standard Webhooks headers every request carries, and the optional trace context.
fn headers(batch: bool) -> Value {
    let id = if batch {
        "The batch request's id, `bat_…`: new on every request (deduplicate on each envelope's `id`)."
    } else {
        "The event id, `evt_…`: the same on every retry and replay (deduplicate on it)."
    };
    json!([
        header("webhook-id", id),
        header("webhook-timestamp", "Unix seconds when this attempt was made."),
        header(
            "webhook-signature",
            "Space-separated signatures of `{webhook-id}.{webhook-timestamp}.{body}`: `v1,<base64 HMAC-SHA256>` with a `whsec_` secret, or `v1a,<base64 ed25519>` with a `whpk_` public key.",
        ),
        {"name": "traceparent", "in": "header", "required": false, "schema": {"type": "string"},
         "description": "W3C trace context of the producer's request, with a span of this attempt."},
    ])
}

/// The webhook (path item) of one request body.
fn webhook(summary: &str, operation_id: &str, body: &str, batch: bool, deprecated: bool) -> Value {
    let mut post = json!({
        "summary": summary,
        "operationId": operation_id,
        "parameters": headers(batch),
        "requestBody": {
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}
        },
        "responses": {"200": {"description": "Received: any 2xx status acknowledges the request."}}
    });
    if deprecated {
        post["deprecated"] = json!(true);
    }
    json!({"post": post})
}

/// Adds to the API document (`api`, as JSON) a `webhooks` entry per event type and a `batch`
/// entry, with their schemas in `components.schemas`.
pub fn with_webhooks(mut api: Value, catalogue: &[EventType]) -> Value {
    let mut schemas = Map::new();
    let mut webhooks = Map::new();
    let mut envelopes = Vec::new();
    let api_schemas: std::collections::HashSet<String> = api["components"]["schemas"]
        .as_object()
        .map(|existing| existing.keys().cloned().collect())
        .unwrap_or_default();
    for event_type in catalogue {
        // `<Base>Event` and `<Base>Data`, neither taken by another type nor by the API's own.
        let mut base = component_name(&event_type.name).strip_suffix("Event").unwrap_or_default().to_owned();
        let taken = |name: &str| schemas.contains_key(name) || api_schemas.contains(name);
        while taken(&format!("{base}Event")) || taken(&format!("{base}Data")) {
            base.push('2');
        }
        let (name, data_name) = (format!("{base}Event"), format!("{base}Data"));
        let mut data = event_type
            .schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "additionalProperties": {}}));
        rebase(&mut data, &format!("/components/schemas/{data_name}"), true);
        schemas.insert(data_name.clone(), data);
        let description = if event_type.description.is_empty() {
            format!("A `{}` event.", event_type.name)
        } else {
            event_type.description.clone()
        };
        schemas.insert(
            name.clone(),
            json!({
                "type": "object",
                "description": description,
                "required": ["id", "event", "timestamp", "data"],
                "properties": {
                    "id": {"type": "string", "description": "The event id, `evt_…`."},
                    "event": {"type": "string", "const": event_type.name},
                    "timestamp": {"type": "string", "format": "date-time", "description": "When Herald accepted the event."},
                    "data": {"$ref": format!("#/components/schemas/{data_name}")}
                }
            }),
        );
        envelopes.push(json!({"$ref": format!("#/components/schemas/{name}")}));
        let operation_id =
            format!("receive_{}", event_type.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        webhooks.insert(
            event_type.name.clone(),
            webhook(&description, &operation_id, &name, false, event_type.archived),
        );
    }
    let items = if envelopes.is_empty() { json!({"type": "object"}) } else { json!({"oneOf": envelopes}) };
    schemas.insert(
        "WebhookBatch".into(),
        json!({
            "type": "array",
            "description": "The body an endpoint with `batch` set receives: envelopes in acceptance order for a FIFO endpoint, signed as a whole.",
            "items": items
        }),
    );
    webhooks.insert(
        "batch".into(),
        webhook(
            "A batch of events, for endpoints that receive batches.",
            "receive_batch",
            "WebhookBatch",
            true,
            false,
        ),
    );
    if let Some(components) = api.get_mut("components").and_then(Value::as_object_mut) {
        let existing = components.entry("schemas").or_insert_with(|| json!({}));
        if let Some(existing) = existing.as_object_mut() {
            existing.extend(schemas);
        }
    }
    api["webhooks"] = Value::Object(webhooks);
    api
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_type(name: &str, schema: Option<Value>) -> EventType {
        EventType {
            name: name.to_owned(),
            description: String::new(),
            schema,
            archived: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn free_form_objects_take_any_members_and_declared_ones_stay_as_they_are() {
        let mut document = json!({
            "data": {"type": "object"},
            "metadata": {"type": ["object", "null"]},
            "declared": {"type": "object", "properties": {"a": {"type": "string"}}},
            "example": {"type": "object"}
        });
        open_free_form_objects(&mut document);
        assert_eq!(document["data"]["additionalProperties"], json!({}));
        assert_eq!(document["metadata"]["additionalProperties"], json!({}));
        assert!(document["declared"].get("additionalProperties").is_none());
        assert!(document["example"].get("additionalProperties").is_none(), "examples are data");
    }

    #[test]
    fn component_names_are_pascal_case_and_never_start_with_a_digit() {
        assert_eq!(component_name("workflow.completed"), "WorkflowCompletedEvent");
        assert_eq!(component_name("invoice-paid_v2"), "InvoicePaidV2Event");
        assert_eq!(component_name("3d.printed"), "Type3dPrintedEvent");
    }

    #[test]
    fn names_never_collide_with_another_type_or_the_apis_own() {
        let api = json!({"components": {"schemas": {"ProblemEvent": {}}}});
        let types = [event_type("order", None), event_type("order.event", None), event_type("problem", None)];
        let document = with_webhooks(api, &types);
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        for name in
            ["OrderEvent", "OrderData", "OrderEventEvent", "OrderEventData", "Problem2Event", "Problem2Data"]
        {
            assert!(schemas.contains_key(name), "{name} in {:?}", schemas.keys().collect::<Vec<_>>());
        }
        assert_eq!(schemas["ProblemEvent"], json!({}), "the API's own stays");
    }

    #[test]
    fn each_type_gets_a_webhook_with_its_schema_as_data_and_a_batch_of_them() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"step": {"$ref": "#/$defs/step"}},
            "$defs": {"step": {"type": "string"}}
        });
        let api = json!({"openapi": "3.1.0", "paths": {}, "components": {"schemas": {"Problem": {}}}});
        let document = with_webhooks(
            api,
            &[event_type("workflow.completed", Some(schema)), event_type("order.paid", None)],
        );
        let schemas = &document["components"]["schemas"];
        assert!(schemas["Problem"].is_object(), "the API's own schemas stay");
        assert_eq!(schemas["WorkflowCompletedEvent"]["properties"]["event"]["const"], "workflow.completed");
        let data = &schemas["WorkflowCompletedData"];
        assert!(data.get("$schema").is_none());
        assert_eq!(
            data["properties"]["step"]["$ref"],
            "#/components/schemas/WorkflowCompletedData/$defs/step"
        );
        assert_eq!(schemas["OrderPaidData"], json!({"type": "object", "additionalProperties": {}}));
        let webhook = &document["webhooks"]["workflow.completed"]["post"];
        assert_eq!(
            webhook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/WorkflowCompletedEvent"
        );
        let headers: Vec<&str> = webhook["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(headers, ["webhook-id", "webhook-timestamp", "webhook-signature", "traceparent"]);
        assert_eq!(schemas["WebhookBatch"]["items"]["oneOf"].as_array().map(Vec::len), Some(2));
        assert!(document["webhooks"]["batch"]["post"].is_object());
    }
}
