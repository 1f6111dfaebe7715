//! Payload filters end to end: validated when written, applied at fan-out, editable, testable,
//! bypassed by the test event.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{id_of, spawn_app, spawn_stepped_app_with};
use crate::receiver::Receiver;

const SOON: Duration = Duration::from_secs(15);

#[tokio::test]
async fn only_matching_events_get_a_delivery_and_the_rest_are_counted() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, gold) = app
        .tenant_with_endpoint(
            &receiver.url("/gold"),
            json!({"filter": {"data.customer.tier": "gold", "data.amount": {"$gte": 100}}}),
        )
        .await;
    app.add_endpoint(&tenant, &receiver.url("/all"), json!({})).await;
    let by_path = app
        .add_endpoint(
            &tenant,
            &receiver.url("/sku"),
            json!({"filter": {"$jsonpath": "$.data.items[?@.sku == 'A1']"}}),
        )
        .await;
    assert_eq!(gold["filter"], json!({"data.customer.tier": "gold", "data.amount": {"$gte": 100}}));
    assert!(by_path["filter"].is_object());

    let rich = app
        .emit(
            &tenant,
            "order.created",
            &json!({"customer": {"tier": "gold"}, "amount": 150, "items": [{"sku": "A1"}]}),
        )
        .await;
    let small = app.emit(&tenant, "order.created", &json!({"customer": {"tier": "gold"}, "amount": 5})).await;
    assert_eq!(rich["deliveries"], json!(3));
    assert_eq!(small["deliveries"], json!(1), "only the unfiltered endpoint");
    let event = app.get(&format!("/v1/tenants/{tenant}/events/{}", id_of(&small)), &app.admin_token).await;
    assert_eq!(event.body["delivery_summaries"].as_array().map(Vec::len), Some(1), "{}", event.text);

    app.received(&receiver, "/all", 2, SOON).await;
    let gold_requests = app.received(&receiver, "/gold", 1, SOON).await;
    assert_eq!(gold_requests[0].json()["id"], rich["id"]);
    assert_eq!(receiver.requests("/sku").len(), 1);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let filtered = metrics
        .lines()
        .find(|line| line.starts_with("herald_deliveries_filtered_total"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .expect("the filtered counter");
    assert!(filtered >= 2.0, "{filtered}");
}

#[tokio::test]
async fn an_invalid_filter_is_refused_naming_its_json_pointer() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let path = format!("/v1/tenants/{tenant}/endpoints");
    let url = "https://example.com/hook";
    for (filter, field) in [
        (json!({"data.amount": {"$gtt": 1}}), "filter/data.amount/$gtt"),
        (json!({"$or": [{"a": 1}, "b"]}), "filter/$or/1"),
        (json!("gold"), "filter"),
        (json!({"$jsonpath": "$.data[?"}), "filter/$jsonpath"),
        (json!({"a": "x".repeat(9000)}), "filter"),
    ] {
        app.post(&path, &token, &json!({"url": url, "filter": filter})).await.expect_invalid(field);
    }
    assert!(app.get(&path, &token).await.data().is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_filter_edit_applies_to_events_accepted_afterwards_and_null_removes_it() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/hook"), json!({"filter": {"data.n": 1}})).await;
    let path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint));
    assert_eq!(app.emit(&tenant, "order.created", &json!({"n": 2})).await["deliveries"], json!(0));
    let patched = app.patch(&path, &app.admin_token, &json!({"filter": {"data.n": 2}})).await;
    patched.expect(200);
    assert_eq!(patched.body["filter"], json!({"data.n": 2}));
    assert_eq!(app.emit(&tenant, "order.created", &json!({"n": 2})).await["deliveries"], json!(1));
    app.patch(&path, &app.admin_token, &json!({"filter": {"data.n": {"$bad": 1}}}))
        .await
        .expect_invalid("filter/data.n/$bad");
    let removed = app.patch(&path, &app.admin_token, &json!({"filter": null})).await;
    assert_eq!(removed.body["filter"], json!(null));
    assert_eq!(app.emit(&tenant, "order.created", &json!({"n": 3})).await["deliveries"], json!(1));
}

#[tokio::test]
async fn the_filter_test_route_tries_a_filter_on_a_trial_or_stored_event() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint("https://example.com/hook", json!({"filter": {"data.tier": "gold"}})).await;
    let path = format!("/v1/tenants/{tenant}/endpoints/{}/filter/test", id_of(&endpoint));
    let try_it = |body: serde_json::Value| {
        let app = &app;
        let path = path.clone();
        async move { app.post(&path, &app.admin_token, &body).await }
    };
    let own = try_it(json!({"event": "order.created", "data": {"tier": "gold"}})).await;
    own.expect(200);
    assert_eq!(own.body, json!({"matched": true}));
    let other = try_it(json!({"event": "order.created", "data": {"tier": "silver"}})).await;
    assert_eq!(other.body["matched"], json!(false));
    let given =
        try_it(json!({"filter": {"data.tier": {"$in": ["silver"]}}, "event": "order.created", "data": {"tier": "silver"}}))
            .await;
    assert_eq!(given.body["matched"], json!(true));
    let stored = app.emit(&tenant, "order.created", &json!({"tier": "gold"})).await;
    let by_id = try_it(json!({"event_id": id_of(&stored)})).await;
    assert_eq!(by_id.body["matched"], json!(true));
    try_it(json!({"event": "order.created"})).await.expect_invalid("body");
    try_it(json!({"filter": {"$nope": 1}, "event_id": id_of(&stored)})).await.expect_invalid("filter/$nope");
    try_it(json!({"event_id": "evt_missing"})).await.expect_problem(404);
}

#[tokio::test]
async fn the_test_event_bypasses_the_filter() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/hook"), json!({"filter": {"data.never": true}})).await;
    let path = format!("/v1/tenants/{tenant}/endpoints/{}/test", id_of(&endpoint));
    app.post(&path, &app.admin_token, &json!({})).await.expect(202);
    let requests = app.received(&receiver, "/hook", 1, SOON).await;
    assert_eq!(requests[0].json()["event"], json!("webhook.test"));
}
