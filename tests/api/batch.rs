//! Batched delivery (DESIGN §14): an endpoint that asks for batches receives JSON arrays of
//! envelopes in one request signed as a whole, in acceptance order for a FIFO endpoint; a failed
//! batch retries as a batch; `max_wait` lets a batch fill; an event over `max_bytes` goes alone.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use standardwebhooks::Webhook;

use crate::helpers::{TestApp, id_of, spawn_stepped_app_with};
use crate::receiver::{Receiver, Recorded, Reply};

/// The events of a batch request, after checking its signature with the Standard Webhooks
/// reference crate over the whole body and its `bat_` request id.
fn verified_batch(secret: &str, request: &Recorded) -> Vec<Value> {
    Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .expect("the batch signature verifies");
    assert!(request.header("webhook-id").unwrap().starts_with("bat_"), "a batch has its own bat_ id");
    request.json().as_array().expect("a batch is a JSON array").clone()
}

async fn emit_all(app: &TestApp, tenant: &str, events: Vec<Value>) -> Vec<String> {
    let answer = app
        .post(&format!("/v1/tenants/{tenant}/events/batch"), &app.admin_token, &json!({"events": events}))
        .await;
    answer.expect(202);
    answer.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn five_hundred_events_reach_a_fifo_endpoint_in_ten_verified_batches_in_order_each_once() {
    let receiver = Receiver::start().await;
    receiver.respond("/batches", Reply::ok());
    let app = spawn_stepped_app_with(|_| {}).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) = app
        .tenant_with_endpoint(&receiver.url("/batches"), json!({"fifo": true, "batch": {"max_events": 50}}))
        .await;
    assert_eq!(endpoint["batch"], json!({"max_events": 50, "max_wait": "0s", "max_bytes": 1_048_576}));
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let accepted =
        emit_all(&app, &tenant, (0..500).map(|n| json!({"event": "order.paid", "data": {"n": n}})).collect())
            .await;

    let requests = app.received(&receiver, "/batches", 10, Duration::from_secs(30)).await;
    assert_eq!(requests.len(), 10, "500 events in batches of 50");
    let mut received = Vec::new();
    for request in &requests {
        let events = verified_batch(&secret, request);
        assert_eq!(events.len(), 50);
        received.extend(events.iter().map(|envelope| envelope["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(received, accepted, "each event once, in acceptance order");
    let delivered = app.deliveries(&tenant, "status=delivered").await;
    assert_eq!(delivered.len(), 500);
    let first = app.delivery(&tenant, delivered[0]["id"].as_str().unwrap()).await;
    let attempt = &first["attempts"][0];
    assert!(attempt["batch_id"].as_str().unwrap().starts_with("bat_"), "{attempt}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_batch_retries_as_a_batch_and_counts_once_for_the_circuit() {
    let receiver = Receiver::start().await;
    receiver.respond_sequence("/flaky", vec![Reply::status(500), Reply::ok()]);
    let app = spawn_stepped_app_with(|c| c.delivery.retry_schedule = vec![Duration::from_millis(50)]).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/flaky"), json!({"batch": {"max_events": 5}})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let accepted =
        emit_all(&app, &tenant, (0..5).map(|n| json!({"event": "order.paid", "data": {"n": n}})).collect())
            .await;
    let failed = app.received(&receiver, "/flaky", 1, Duration::from_secs(30)).await;
    let shown = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint))).await;
    assert_eq!(shown.body["circuit"]["consecutive_failures"], 1, "one request, one failure");

    let requests = app.received(&receiver, "/flaky", 2, Duration::from_secs(30)).await;
    assert_eq!(requests.len(), 2);
    let ids = |request: &Recorded| -> Vec<String> {
        let mut ids: Vec<String> =
            verified_batch(&secret, request).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    let mut expected = accepted.clone();
    expected.sort();
    assert_eq!(ids(&failed[0]), expected);
    assert_eq!(ids(&requests[1]), expected, "the members retried together");
    assert_ne!(requests[0].header("webhook-id"), requests[1].header("webhook-id"), "a new request, a new id");
    for event in &accepted {
        let delivery = app.only_delivery(&tenant, event).await;
        let delivery = app
            .settled(&tenant, delivery["id"].as_str().unwrap(), "delivered", Duration::from_secs(10))
            .await;
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!(attempts[0]["batch_id"].as_str(), requests[0].header("webhook-id"));
        assert_eq!(attempts[1]["batch_id"].as_str(), requests[1].header("webhook-id"));
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_waits_up_to_max_wait_to_fill_and_a_large_event_goes_alone() {
    let receiver = Receiver::start().await;
    receiver.respond("/wait", Reply::ok());
    let app = spawn_stepped_app_with(|_| {}).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) = app
        .tenant_with_endpoint(
            &receiver.url("/wait"),
            json!({"batch": {"max_events": 10, "max_wait": "300ms", "max_bytes": 2048}}),
        )
        .await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let sent = Instant::now();
    let small = |n: u32| json!({"event": "order.paid", "data": {"n": n}});
    let large = json!({"event": "order.paid", "data": {"padding": "x".repeat(3000)}});
    let accepted = emit_all(&app, &tenant, vec![large, small(1), small(2)]).await;
    let requests = app.received(&receiver, "/wait", 2, Duration::from_secs(30)).await;
    assert!(
        requests[0].at.duration_since(sent) >= Duration::from_millis(300),
        "three of ten: the batch waited for max_wait first"
    );
    let batches: Vec<Vec<String>> = requests
        .iter()
        .map(|r| verified_batch(&secret, r).iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect())
        .collect();
    assert!(batches.contains(&vec![accepted[0].clone()]), "the large event alone: {batches:?}");
    assert_eq!(batches.concat().len(), 3, "each event once: {batches:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn batch_settings_are_validated_and_can_be_removed() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let tenant = id_of(&app.create_tenant().await);
    let path = format!("/v1/tenants/{tenant}/endpoints");
    for (batch, field) in [
        (json!({"max_events": 1}), "batch.max_events"),
        (json!({"max_events": 1001}), "batch.max_events"),
        (json!({"max_events": 10, "max_wait": "11s"}), "batch.max_wait"),
        (json!({"max_events": 10, "max_wait": "soon"}), "batch.max_wait"),
        (json!({"max_events": 10, "max_bytes": 10}), "batch.max_bytes"),
    ] {
        let body = json!({"url": "https://example.com/hook", "batch": batch});
        app.post(&path, &app.admin_token, &body).await.expect_invalid(field);
    }
    let created = app
        .add_endpoint(
            &tenant,
            "https://example.com/hook",
            json!({"batch": {"max_events": 20, "max_wait": "1s"}}),
        )
        .await;
    assert_eq!(created["batch"], json!({"max_events": 20, "max_wait": "1s", "max_bytes": 1_048_576}));
    let endpoint = format!("{path}/{}", id_of(&created));
    let patched = app.patch(&endpoint, &app.admin_token, &json!({"batch": null})).await;
    patched.expect(200);
    assert_eq!(patched.body["batch"], Value::Null);
    app.stop().await.unwrap();
}
