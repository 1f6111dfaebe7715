//! Ingest: idempotency keys, batches with per-item results, validation that stores nothing, the
//! `deliveries` count, and producers' JSON reaching receivers byte for byte.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, id_of, spawn_app, spawn_app_with};
use crate::receiver::Receiver;

const SOON: Duration = Duration::from_secs(10);

fn events_path(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/events")
}

async fn event_ids(app: &TestApp, tenant: &str) -> Vec<String> {
    let (events, _) = app.walk_pages(&events_path(tenant), &app.admin_token, 250).await;
    events.iter().map(id_of).collect()
}

/// Posts a raw JSON body to the single-event route as admin.
async fn post_raw(app: &TestApp, tenant: &str, body: &str) -> crate::helpers::ApiResponse {
    let token = Some(app.admin_token.as_str());
    app.send_raw(Method::POST, &events_path(tenant), token, Some("application/json"), body.to_owned()).await
}

#[tokio::test]
async fn an_idempotency_key_header_replays_the_first_event_and_creates_nothing() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let body = json!({"event": "order.created", "data": {"order_id": "o-1"}});
    let key = [("Idempotency-Key", "order-o-1")];

    let first = app.post_with_headers(&events_path(&tenant), &app.admin_token, &key, &body).await;
    first.expect(202);
    assert!(first.headers.get("idempotent-replayed").is_none(), "the first answer is not a replay");
    assert_eq!(first.body["deliveries"], json!(1));
    let replay = app.post_with_headers(&events_path(&tenant), &app.admin_token, &key, &body).await;
    replay.expect(202);
    assert_eq!(replay.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(replay.body, first.body, "the replay answers with the first event");

    let id = id_of(&first.body);
    assert_eq!(event_ids(&app, &tenant).await, vec![id.clone()]);
    let stored = app.admin_get(&format!("{}/{id}", events_path(&tenant))).await;
    assert_eq!(stored.body["idempotency_key"], json!("order-o-1"), "{}", stored.text);
    let delivery = app.only_delivery(&tenant, &id).await;
    app.settled(&tenant, &id_of(&delivery), "delivered", SOON).await;
    assert_eq!(app.deliveries(&tenant, "").await.len(), 1);
    assert_eq!(receiver.requests("/hook").len(), 1, "one event, one request");

    let other = app
        .post_with_headers(
            &events_path(&tenant),
            &app.admin_token,
            &[("Idempotency-Key", "order-o-2")],
            &body,
        )
        .await;
    other.expect(202);
    assert_ne!(id_of(&other.body), id, "another key is another event");
}

#[tokio::test]
async fn the_idempotency_key_in_the_body_wins_over_the_header() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let tenant = id_of(&app.create_tenant().await);
    let path = events_path(&tenant);
    let with_body_key = json!({"event": "order.created", "data": {"n": 1}, "idempotency_key": "from-body"});
    let first = app
        .post_with_headers(&path, &app.admin_token, &[("Idempotency-Key", "from-header")], &with_body_key)
        .await;
    first.expect(202);

    let replay = app.post(&path, &app.admin_token, &with_body_key).await;
    replay.expect(202);
    assert_eq!(replay.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(id_of(&replay.body), id_of(&first.body));

    let plain = json!({"event": "order.created", "data": {"n": 1}});
    let header_only =
        app.post_with_headers(&path, &app.admin_token, &[("Idempotency-Key", "from-header")], &plain).await;
    header_only.expect(202);
    assert!(header_only.headers.get("idempotent-replayed").is_none(), "the header key was never used");
    assert_ne!(id_of(&header_only.body), id_of(&first.body));
    assert_eq!(event_ids(&app, &tenant).await.len(), 2);
}

#[tokio::test]
async fn a_known_key_with_other_data_or_another_type_is_a_conflict() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    app.create_event_type("order.paid").await;
    let tenant = id_of(&app.create_tenant().await);
    let path = events_path(&tenant);
    let first = app
        .post(
            &path,
            &app.admin_token,
            &json!({"event": "order.created", "data": {"n": 1}, "idempotency_key": "k"}),
        )
        .await;
    first.expect(202);
    for body in [
        json!({"event": "order.created", "data": {"n": 2}, "idempotency_key": "k"}),
        json!({"event": "order.paid", "data": {"n": 1}, "idempotency_key": "k"}),
    ] {
        app.post(&path, &app.admin_token, &body).await.expect_problem(409);
    }
    // Whitespace is not part of the data: the same data written differently is a replay.
    let spaced = r#"{"event": "order.created", "data": { "n" : 1 }, "idempotency_key": "k"}"#;
    let replay = post_raw(&app, &tenant, spaced).await;
    replay.expect(202);
    assert_eq!(id_of(&replay.body), id_of(&first.body));
    assert_eq!(event_ids(&app, &tenant).await, [id_of(&first.body)]);

    // Keys are per tenant.
    let other = id_of(&app.create_tenant().await);
    let elsewhere = app
        .post(
            &events_path(&other),
            &app.admin_token,
            &json!({"event": "order.created", "data": {"n": 2}, "idempotency_key": "k"}),
        )
        .await;
    elsewhere.expect(202);
    assert!(elsewhere.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_refused() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let tenant = id_of(&app.create_tenant().await);
    for key in [String::new(), "k".repeat(256), "tab\there".to_owned(), "é".to_owned()] {
        let body = json!({"event": "order.created", "data": {}, "idempotency_key": key});
        let response = app.post(&events_path(&tenant), &app.admin_token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{key:?}: {}", response.text);
        response.expect_invalid("idempotency_key");
    }
    let longest = json!({"event": "order.created", "data": {}, "idempotency_key": "k".repeat(255)});
    app.post(&events_path(&tenant), &app.admin_token, &longest).await.expect(202);
    assert_eq!(event_ids(&app, &tenant).await.len(), 1);
}

#[tokio::test]
async fn a_batch_answers_each_item_in_input_order() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let prior = app
        .post(
            &events_path(&tenant),
            &app.admin_token,
            &json!({"event": "order.created", "data": {"n": "prior"}, "idempotency_key": "prior"}),
        )
        .await;
    prior.expect(202);
    let prior_id = id_of(&prior.body);

    let items = [
        json!({"event": "order.created", "data": {"n": 0}}).to_string(),
        json!({"event": "no.such", "data": {"n": 1}}).to_string(),
        json!({"event": "order.created", "data": [1, 2]}).to_string(),
        json!({"event": "order.created", "data": {"n": 3}, "idempotency_key": "k1"}).to_string(),
        json!({"event": "order.created", "data": {"n": 3}, "idempotency_key": "k1"}).to_string(),
        json!({"event": "order.created", "data": {"n": 5}, "idempotency_key": "k1"}).to_string(),
        r#"{"event": "order.created", "data": {"a": 1, "a": 2}}"#.to_owned(),
        r#""junk""#.to_owned(),
        json!({"event": "order.created", "data": {"n": "prior"}, "idempotency_key": "prior"}).to_string(),
    ];
    let body = format!(r#"{{"events": [{}]}}"#, items.join(", "));
    let path = format!("{}/batch", events_path(&tenant));
    let response =
        app.send_raw(Method::POST, &path, Some(&app.admin_token), Some("application/json"), body).await;
    response.expect(202);
    let results = response.data();
    assert_eq!(results.len(), items.len(), "{}", response.text);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], json!(index), "{}", response.text);
    }
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [202, 422, 422, 202, 202, 409, 422, 422, 202], "{}", response.text);
    for index in [1, 2, 5, 6, 7] {
        assert!(
            results[index]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "item {index}: {}",
            response.text
        );
        assert!(results[index].get("id").is_none_or(Value::is_null), "item {index}: {}", response.text);
    }
    for index in [0, 3] {
        assert_eq!(results[index]["deliveries"], json!(1), "item {index}");
        assert!(results[index].get("replayed").is_none_or(|r| *r == json!(false)), "item {index}");
    }
    assert_eq!(results[4]["replayed"], json!(true), "a key repeated inside a batch replays its first use");
    assert_eq!(results[4]["id"], results[3]["id"]);
    assert_eq!(results[8]["replayed"], json!(true));
    assert_eq!(results[8]["id"], json!(prior_id));

    let stored: BTreeSet<String> = event_ids(&app, &tenant).await.into_iter().collect();
    let expected: BTreeSet<String> = [prior_id, id_of(&results[0]), id_of(&results[3])].into_iter().collect();
    assert_eq!(stored, expected, "only the accepted items are stored");
    app.all_delivered(&tenant, 3, SOON).await;
    assert_eq!(app.deliveries(&tenant, "").await.len(), 3);
    assert_eq!(receiver.requests("/hook").len(), 3);
}

#[tokio::test]
async fn a_batch_holds_one_to_a_thousand_events() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let tenant = id_of(&app.create_tenant().await);
    let path = format!("{}/batch", events_path(&tenant));
    app.post(&path, &app.admin_token, &json!({"events": []})).await.expect_invalid("events");
    let event = json!({"event": "order.created", "data": {}});
    let too_many = json!({"events": vec![event.clone(); 1001]});
    app.post(&path, &app.admin_token, &too_many).await.expect_invalid("events");
    assert!(event_ids(&app, &tenant).await.is_empty());
    let most = app.post(&path, &app.admin_token, &json!({"events": vec![event; 1000]})).await;
    most.expect(202);
    assert_eq!(most.data().len(), 1000);
    assert!(most.data().iter().all(|r| r["status"] == json!(202)));
}

#[tokio::test]
async fn invalid_events_are_refused_and_nothing_is_stored() {
    let app = spawn_app_with(|config| config.ingest.payload_limit = 1024).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    app.create_event_type("old.thing").await;
    app.delete("/v1/event-types/old.thing", &app.admin_token).await.expect(204);
    let schema = json!({
        "type": "object",
        "required": ["order_id"],
        "properties": {"order_id": {"type": "string"}, "lines": {"type": "array", "items": {"type": "integer"}}},
    });
    let typed = json!({"name": "order.typed", "description": "with a schema", "schema": schema});
    app.post("/v1/event-types", &app.admin_token, &typed).await.expect(201);
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let path = events_path(&tenant);

    let refused = |body: Value, field: &'static str| {
        let app = &app;
        let path = &path;
        async move {
            let response = app.post(path, &app.admin_token, &body).await;
            assert_eq!(response.status.as_u16(), 422, "{body}: {}", response.text);
            response.expect_invalid(field);
        }
    };
    refused(json!({"event": "no.such", "data": {}}), "event").await;
    refused(json!({"event": "old.thing", "data": {}}), "event").await;
    for data in [json!([1]), json!("text"), json!(5), json!(null), json!(true)] {
        refused(json!({"event": "order.created", "data": data}), "data").await;
    }
    refused(json!({"event": "order.typed", "data": {"order_id": 5}}), "data/order_id").await;
    refused(json!({"event": "order.typed", "data": {"order_id": "o", "lines": [1, "x"]}}), "data/lines/1")
        .await;
    let missing = app.post(&path, &app.admin_token, &json!({"event": "order.typed", "data": {}})).await;
    missing.expect_problem(422);
    assert!(
        missing.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"].as_str().is_some_and(|f| f.starts_with("data"))),
        "{}",
        missing.text
    );
    for raw in [
        r#"{"event": "order.created", "data": {"a": 1, "a": 2}}"#,
        r#"{"event": "order.created", "data": {"outer": {"b": 1, "b": 1}}}"#,
    ] {
        let response = post_raw(&app, &tenant, raw).await;
        assert_eq!(response.status.as_u16(), 422, "{raw}: {}", response.text);
        response.expect_invalid("data");
    }
    let big = json!({"event": "order.created", "data": {"blob": "x".repeat(2000)}});
    app.post(&path, &app.admin_token, &big).await.expect_problem(413);
    let huge = json!({"event": "order.created", "data": {"blob": "x".repeat(64 * 1024)}});
    app.post(&path, &app.admin_token, &huge).await.expect(413);

    assert!(event_ids(&app, &tenant).await.is_empty(), "a refused event was stored");
    assert!(app.deliveries(&tenant, "").await.is_empty(), "a refused event made a delivery");
    let fits = json!({"event": "order.typed", "data": {"order_id": "o-1", "lines": [1, 2]}});
    app.post(&path, &app.admin_token, &fits).await.expect(202);
    receiver.wait_for("/hook", 1, SOON).await;
    assert_eq!(receiver.requests("/hook").len(), 1);
}

#[tokio::test]
async fn big_integers_key_order_and_escapes_reach_the_receiver_unchanged() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let raw = "{\"event\": \"order.created\", \"data\": {\n  \"z\": 1,\n  \"a\": { \"y\": 2, \"b\": 3 },\n  \
               \"big\": 123456789012345678901234567890,\n  \"neg\": -9223372036854775809,\n  \"f\": 1.50,\n  \
               \"e\": 1E+2,\n  \"s\": \"\\u00e9\\n\\\"q\\\" \\/ \"\n} }";
    let minified = r#"{"z":1,"a":{"y":2,"b":3},"big":123456789012345678901234567890,"neg":-9223372036854775809,"f":1.50,"e":1E+2,"s":"\u00e9\n\"q\" \/ "}"#;
    let answer = post_raw(&app, &tenant, raw).await;
    answer.expect(202);
    let id = id_of(&answer.body);

    let request = receiver.wait_for("/hook", 1, SOON).await.remove(0);
    let text = request.text();
    let data = text.split_once(r#","data":"#).map(|(_, rest)| rest.strip_suffix('}').unwrap_or(rest));
    assert_eq!(data, Some(minified), "data as sent, whitespace removed: {text}");
    let stored = app.admin_get(&format!("{}/{id}", events_path(&tenant))).await;
    stored.expect(200);
    assert!(stored.text.contains(minified), "the API shows the data as sent: {}", stored.text);
}

#[tokio::test]
async fn deliveries_counts_every_matching_endpoint_disabled_ones_included() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    app.create_event_type("user.created").await;
    let (tenant, enabled) =
        app.tenant_with_endpoint(&receiver.url("/on"), json!({"event_types": ["order.*"]})).await;
    let disabled = app.add_endpoint(&tenant, &receiver.url("/off"), json!({"enabled": false})).await;
    app.add_endpoint(&tenant, &receiver.url("/users"), json!({"event_types": ["user.created"]})).await;

    let answer = app.emit(&tenant, "order.created", &json!({})).await;
    assert_eq!(answer["deliveries"], json!(2), "{answer}");
    let id = id_of(&answer);
    let event = app.admin_get(&format!("{}/{id}", events_path(&tenant))).await;
    event.expect(200);
    assert_eq!(event.body["deliveries"], json!(2));
    let summaries = event.body["delivery_summaries"].as_array().expect("delivery_summaries");
    let targets: BTreeSet<&str> = summaries.iter().map(|s| s["endpoint_id"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        [enabled["id"].as_str().unwrap(), disabled["id"].as_str().unwrap()].into_iter().collect()
    );
    let off = summaries.iter().find(|s| s["endpoint_id"] == disabled["id"]).unwrap();
    assert_eq!(off["status"], json!("failed"));
    assert_eq!(off["attempt_count"], json!(0));
    let listed = app.admin_get(&events_path(&tenant)).await;
    assert_eq!(listed.data()[0]["deliveries"], json!(2));

    let lonely = id_of(&app.create_tenant().await);
    assert_eq!(app.emit(&lonely, "order.created", &json!({})).await["deliveries"], json!(0));
    receiver.wait_for("/on", 1, SOON).await;
    assert!(receiver.requests("/off").is_empty() && receiver.requests("/users").is_empty());
}

/// Ingest claims what can start at once in its own transaction; a claim that fails (here an
/// endpoint row whose stored delivery policy cannot be read) never costs the events: the group
/// is written again without a claim, and the producer gets its 202.
#[tokio::test]
async fn a_claim_that_fails_at_ingest_never_fails_the_events() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let sql = "update endpoints set delivery_policy = 'not a policy' where id = $1";
    if app.db.url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
        sqlx::query(sql).bind(id_of(&endpoint)).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
        sqlx::query(sql).bind(id_of(&endpoint)).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let body = json!({"event": "order.created", "data": {"order_id": "o-1"}});
    let accepted = app.post(&events_path(&tenant), &app.admin_token, &body).await;
    accepted.expect(202);
    assert_eq!(accepted.body["deliveries"], json!(1));
    let id = id_of(&accepted.body);
    assert_eq!(event_ids(&app, &tenant).await, vec![id.clone()], "the event is stored");
    let delivery = app.only_delivery(&tenant, &id).await;
    assert_eq!(delivery["status"], json!("pending"), "left for a claim: {delivery}");
    assert!(receiver.requests("/hook").is_empty(), "nothing was sent to an endpoint it cannot read");
}
