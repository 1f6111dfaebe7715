//! The event type catalogue: names, schemas, archiving and who may change it.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_time, spawn_app};

async fn names(app: &TestApp, query: &str) -> Vec<String> {
    let list = app.admin_get(&format!("/v1/event-types{query}")).await;
    list.expect(200);
    list.data().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn creating_an_event_type_returns_it_with_its_fields() {
    let app = spawn_app().await;
    let schema =
        json!({"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}});
    let body = json!({"name": "order.created", "description": "an order was placed", "schema": schema});
    let response = app.post("/v1/event-types", &app.admin_token, &body).await;
    response.expect(201);
    let created = &response.body;
    assert_eq!(created["name"], json!("order.created"));
    assert_eq!(created["description"], json!("an order was placed"));
    assert_eq!(created["schema"], schema);
    assert_eq!(created["archived"], json!(false));
    assert_time(&created["created_at"]);
    assert_time(&created["updated_at"]);
    let fetched = app.admin_get("/v1/event-types/order.created").await;
    fetched.expect(200);
    assert_eq!(&fetched.body, created);
}

#[tokio::test]
async fn description_and_schema_are_optional() {
    let app = spawn_app().await;
    let response = app.post("/v1/event-types", &app.admin_token, &json!({"name": "user.signed_up"})).await;
    response.expect(201);
    assert!(response.body["schema"].is_null(), "{}", response.text);
    assert!(
        matches!(&response.body["description"], Value::String(s) if s.is_empty())
            || response.body["description"].is_null()
    );
}

#[tokio::test]
async fn invalid_event_type_names_are_refused() {
    let app = spawn_app().await;
    let too_long = format!("a.{}", "b".repeat(127));
    assert_eq!(too_long.len(), 129);
    for name in [
        "",
        "order",
        "Order.created",
        "order..created",
        ".order.created",
        "order.created.",
        "order-x.created",
        "order.cre ated",
        "order.*",
        "*",
        "ordér.created",
        too_long.as_str(),
    ] {
        let response = app.post("/v1/event-types", &app.admin_token, &json!({"name": name})).await;
        assert_eq!(response.status.as_u16(), 422, "{name:?}: {}", response.text);
        response.expect_invalid("name");
    }
    assert!(names(&app, "?include_archived=true").await.is_empty());
}

#[tokio::test]
async fn names_up_to_128_characters_with_deep_segments_are_accepted() {
    let app = spawn_app().await;
    let longest = format!("a.{}", "b".repeat(126));
    assert_eq!(longest.len(), 128);
    for name in [longest.as_str(), "a.b", "billing.invoice.payment_failed", "v2.x9.y_z"] {
        app.create_event_type(name).await;
    }
    assert_eq!(names(&app, "").await.len(), 4);
}

#[tokio::test]
async fn an_invalid_json_schema_is_refused() {
    let app = spawn_app().await;
    for schema in [
        json!({"type": "no-such-type"}),
        json!({"minimum": "ten"}),
        json!("a string"),
        json!(42),
        json!({"$ref": "https://example.com/remote.json"}),
    ] {
        let body = json!({"name": "order.created", "schema": schema});
        let response = app.post("/v1/event-types", &app.admin_token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{schema}: {}", response.text);
        response.expect_invalid("schema");
    }
    assert!(names(&app, "?include_archived=true").await.is_empty());
}

#[tokio::test]
async fn a_duplicate_event_type_name_is_refused_with_409() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let again = json!({"name": "order.created", "description": "second"});
    let response = app.post("/v1/event-types", &app.admin_token, &again).await;
    response.expect_problem(409);
    let stored = app.admin_get("/v1/event-types/order.created").await;
    assert_eq!(stored.body["description"], json!("order.created happened"));
    assert_eq!(names(&app, "").await, vec!["order.created"]);
}

#[tokio::test]
async fn the_catalogue_is_listed_by_name() {
    let app = spawn_app().await;
    for name in ["zeta.one", "alpha.two", "mid.three", "alpha.one"] {
        app.create_event_type(name).await;
    }
    let list = app.admin_get("/v1/event-types").await;
    list.expect(200);
    assert!(list.body["next_cursor"].is_null(), "{}", list.text);
    assert_eq!(names(&app, "").await, vec!["alpha.one", "alpha.two", "mid.three", "zeta.one"]);
}

#[tokio::test]
async fn an_unknown_event_type_answers_404() {
    let app = spawn_app().await;
    app.admin_get("/v1/event-types/no.such").await.expect_problem(404);
    app.patch("/v1/event-types/no.such", &app.admin_token, &json!({"description": "x"}))
        .await
        .expect_problem(404);
    app.delete("/v1/event-types/no.such", &app.admin_token).await.expect_problem(404);
    assert!(names(&app, "?include_archived=true").await.is_empty());
}

#[tokio::test]
async fn patching_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let schema = json!({"type": "object"});
    let body = json!({"name": "order.created", "description": "old", "schema": schema});
    let created = app.post("/v1/event-types", &app.admin_token, &body).await.body.clone();

    let response =
        app.patch("/v1/event-types/order.created", &app.admin_token, &json!({"description": "new"})).await;
    response.expect(200);
    assert_eq!(response.body["description"], json!("new"));
    assert_eq!(response.body["schema"], schema, "schema untouched");
    assert_eq!(response.body["archived"], json!(false));
    assert_eq!(response.body["created_at"], created["created_at"]);
    assert_time(&response.body["updated_at"]);
    assert!(response.body["updated_at"].as_str() >= created["updated_at"].as_str());

    let new_schema = json!({"type": "object", "required": ["id"]});
    let response =
        app.patch("/v1/event-types/order.created", &app.admin_token, &json!({"schema": new_schema})).await;
    response.expect(200);
    assert_eq!(response.body["schema"], new_schema);
    assert_eq!(response.body["description"], json!("new"));

    let response =
        app.patch("/v1/event-types/order.created", &app.admin_token, &json!({"schema": null})).await;
    response.expect(200);
    assert!(response.body["schema"].is_null(), "null removes the schema: {}", response.text);
    let fetched = app.admin_get("/v1/event-types/order.created").await;
    assert_eq!(fetched.body, response.body);
}

#[tokio::test]
async fn an_invalid_patch_changes_nothing() {
    let app = spawn_app().await;
    let body = json!({"name": "order.created", "description": "old", "schema": {"type": "object"}});
    let created = app.post("/v1/event-types", &app.admin_token, &body).await.body.clone();
    app.patch(
        "/v1/event-types/order.created",
        &app.admin_token,
        &json!({"schema": {"type": "no-such-type"}}),
    )
    .await
    .expect_invalid("schema");
    for bad in [json!({"name": "order.renamed"}), json!({"description": 5}), json!({"archived": "yes"})] {
        let response = app.patch("/v1/event-types/order.created", &app.admin_token, &bad).await;
        assert_eq!(response.status.as_u16(), 422, "{bad}: {}", response.text);
        response.expect_problem(422);
    }
    let fetched = app.admin_get("/v1/event-types/order.created").await;
    assert_eq!(fetched.body, created);
}

#[tokio::test]
async fn deleting_an_event_type_archives_it() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    app.create_event_type("order.shipped").await;
    let response = app.delete("/v1/event-types/order.created", &app.admin_token).await;
    response.expect(204);
    assert!(response.text.is_empty());

    let fetched = app.admin_get("/v1/event-types/order.created").await;
    fetched.expect(200);
    assert_eq!(fetched.body["archived"], json!(true));
    assert_eq!(names(&app, "").await, vec!["order.shipped"], "archived types are hidden by default");
    assert_eq!(names(&app, "?include_archived=false").await, vec!["order.shipped"]);
    assert_eq!(names(&app, "?include_archived=true").await, vec!["order.created", "order.shipped"]);

    // The name stays taken.
    app.post("/v1/event-types", &app.admin_token, &json!({"name": "order.created"}))
        .await
        .expect_problem(409);
}

#[tokio::test]
async fn an_archived_event_type_can_be_restored_with_patch() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    app.delete("/v1/event-types/order.created", &app.admin_token).await.expect(204);
    let response =
        app.patch("/v1/event-types/order.created", &app.admin_token, &json!({"archived": false})).await;
    response.expect(200);
    assert_eq!(response.body["archived"], json!(false));
    assert_eq!(names(&app, "").await, vec!["order.created"]);
    let response =
        app.patch("/v1/event-types/order.created", &app.admin_token, &json!({"archived": true})).await;
    response.expect(200);
    assert!(names(&app, "").await.is_empty());
}

#[tokio::test]
async fn include_archived_must_be_a_boolean() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let response = app.admin_get("/v1/event-types?include_archived=maybe").await;
    let status = response.status.as_u16();
    assert!(matches!(status, 400 | 422), "{}", response.text);
    response.expect_problem(status);
}
