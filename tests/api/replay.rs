//! Replays: `retry` of one delivery, `recover` over a window, the refusals on disabled endpoints
//! and in-flight deliveries, and the endpoint test route.

use std::time::Duration;

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::helpers::{TestApp, fast_retries, id_of, ms, spawn_app_with};
use crate::receiver::{Receiver, Reply};

const SOON: Duration = Duration::from_secs(10);

fn numbers(delivery: &Value) -> Vec<i64> {
    delivery["attempts"].as_array().expect("attempts").iter().map(|a| a["number"].as_i64().unwrap()).collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn retry(app: &TestApp, tenant: &str, delivery: &str) -> crate::helpers::ApiResponse {
    app.post(&format!("/v1/tenants/{tenant}/deliveries/{delivery}/retry"), &app.admin_token, &json!({})).await
}

/// Emits one event to the tenant's single endpoint and returns its delivery id.
async fn emit_one(app: &TestApp, tenant: &str, n: i64) -> String {
    let event = id_of(&app.emit(tenant, "order.created", &json!({"n": n})).await);
    id_of(&app.only_delivery(tenant, &event).await)
}

#[tokio::test]
async fn retrying_a_failed_delivery_starts_a_new_run_with_the_next_attempt_numbers() {
    let app = spawn_app_with(|config| config.delivery.retry_schedule = vec![ms(50)]).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(500));
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let id = emit_one(&app, &tenant, 1).await;
    let failed = app.settled(&tenant, &id, "failed", SOON).await;
    assert_eq!(numbers(&failed), [1, 2]);

    let accepted = retry(&app, &tenant, &id).await;
    accepted.expect(202);
    assert_eq!(accepted.body["id"], json!(id));
    let failed_again = app.settled(&tenant, &id, "failed", SOON).await;
    assert_eq!(numbers(&failed_again), [1, 2, 3, 4], "a new run of 1 + 1 attempts, numbers never reset");
    assert_eq!(failed_again["attempt_count"], json!(4));

    receiver.respond("/hook", Reply::ok());
    retry(&app, &tenant, &id).await.expect(202);
    let delivered = app.settled(&tenant, &id, "delivered", SOON).await;
    assert_eq!(numbers(&delivered), [1, 2, 3, 4, 5]);
    assert_eq!(delivered["attempt_count"], json!(5));
    let last = &delivered["attempts"][4];
    assert_eq!(last["status_code"], json!(200));
    assert!(last["error_kind"].is_null(), "{last}");
    assert!(delivered["completed_at"].is_string());

    let requests = receiver.requests("/hook");
    assert_eq!(requests.len(), 5);
    let first_id = requests[0].header("webhook-id").unwrap();
    assert!(requests.iter().all(|r| r.header("webhook-id") == Some(first_id) && r.body == requests[0].body));
}

#[tokio::test]
async fn retrying_a_delivered_delivery_sends_it_again_with_the_same_webhook_id() {
    let app = spawn_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let id = emit_one(&app, &tenant, 1).await;
    app.settled(&tenant, &id, "delivered", SOON).await;

    retry(&app, &tenant, &id).await.expect(202);
    let requests = receiver.wait_for("/hook", 2, SOON).await;
    let delivered = app.settled(&tenant, &id, "delivered", SOON).await;
    assert_eq!(numbers(&delivered), [1, 2]);
    assert_eq!(requests[0].header("webhook-id"), requests[1].header("webhook-id"));
    assert_eq!(requests[0].body, requests[1].body, "the stored bytes are sent again");
    let secret = endpoint["secret"].as_str().unwrap();
    for request in &requests {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&request.body, &request.headers)
            .expect("signed");
    }
}

#[tokio::test]
async fn recover_requeues_exactly_the_failed_deliveries_in_its_window() {
    let app = spawn_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(400));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let (other_tenant, _) = app.tenant_with_endpoint(&receiver.url("/other"), json!({})).await;
    receiver.respond("/other", Reply::status(400));

    let before = emit_one(&app, &tenant, 0).await;
    app.settled(&tenant, &before, "failed", SOON).await;
    let since = now();
    let in_window_failed = emit_one(&app, &tenant, 1).await;
    app.settled(&tenant, &in_window_failed, "failed", SOON).await;
    receiver.respond("/hook", Reply::ok());
    let in_window_delivered = emit_one(&app, &tenant, 2).await;
    app.settled(&tenant, &in_window_delivered, "delivered", SOON).await;
    receiver.respond("/hook", Reply::status(400));
    let also_in_window = emit_one(&app, &tenant, 3).await;
    app.settled(&tenant, &also_in_window, "failed", SOON).await;
    let other_in_window = emit_one(&app, &other_tenant, 4).await;
    app.settled(&other_tenant, &other_in_window, "failed", SOON).await;
    let until = now();
    let after = emit_one(&app, &tenant, 5).await;
    app.settled(&tenant, &after, "failed", SOON).await;
    let seen_before = receiver.requests("/hook").len();

    receiver.respond("/hook", Reply::ok());
    let path = format!("/v1/tenants/{tenant}/endpoints/{}/recover", id_of(&endpoint));
    let recovered = app.post(&path, &app.admin_token, &json!({"since": since, "until": until})).await;
    recovered.expect(202);
    assert_eq!(recovered.body["requeued"], json!(2), "{}", recovered.text);

    for id in [&in_window_failed, &also_in_window] {
        let delivery = app.settled(&tenant, id, "delivered", SOON).await;
        assert_eq!(numbers(&delivery), [1, 2], "{delivery}");
    }
    assert_eq!(
        numbers(&app.delivery(&tenant, &in_window_delivered).await),
        [1],
        "delivered ones are not requeued"
    );
    for id in [&before, &after] {
        let delivery = app.delivery(&tenant, id).await;
        assert_eq!(delivery["status"], json!("failed"), "outside the window: {delivery}");
        assert_eq!(numbers(&delivery), [1]);
    }
    let other_delivery = app.delivery(&other_tenant, &other_in_window).await;
    assert_eq!(other_delivery["status"], json!("failed"), "another endpoint is untouched");
    assert_eq!(receiver.requests("/hook").len(), seen_before + 2);
    assert_eq!(receiver.requests("/other").len(), 1);

    // Without `until` the window ends now; nothing failed is left in it but `before` and `after`.
    let everything = app.post(&path, &app.admin_token, &json!({"since": since})).await;
    everything.expect(202);
    assert_eq!(
        everything.body["requeued"],
        json!(1),
        "only `after` is failed since `since`: {}",
        everything.text
    );
    app.settled(&tenant, &after, "delivered", SOON).await;
}

#[tokio::test]
async fn retry_and_recover_on_a_disabled_endpoint_are_conflicts() {
    let app = spawn_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(400));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let since = now();
    let id = emit_one(&app, &tenant, 1).await;
    app.settled(&tenant, &id, "failed", SOON).await;
    let endpoint_path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint));
    app.post(&format!("{endpoint_path}/disable"), &app.admin_token, &json!({})).await.expect(200);

    retry(&app, &tenant, &id).await.expect_problem(409);
    let recover =
        app.post(&format!("{endpoint_path}/recover"), &app.admin_token, &json!({"since": since})).await;
    recover.expect_problem(409);
    assert_eq!(app.delivery(&tenant, &id).await["status"], json!("failed"));

    app.post(&format!("{endpoint_path}/enable"), &app.admin_token, &json!({})).await.expect(200);
    assert_eq!(app.delivery(&tenant, &id).await["status"], json!("failed"), "enabling requeues nothing");
    receiver.respond("/hook", Reply::ok());
    let recover =
        app.post(&format!("{endpoint_path}/recover"), &app.admin_token, &json!({"since": since})).await;
    recover.expect(202);
    assert_eq!(recover.body["requeued"], json!(1));
    app.settled(&tenant, &id, "delivered", SOON).await;
}

#[tokio::test]
async fn retrying_a_delivery_in_flight_is_a_conflict() {
    let app = spawn_app_with(|config| {
        config.delivery.timeout = Duration::from_secs(2);
        config.delivery.lease = Duration::from_secs(7);
        config.delivery.retry_schedule = vec![];
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::hang());
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let id = emit_one(&app, &tenant, 1).await;
    receiver.wait_for("/hook", 1, SOON).await;
    let delivery = app.delivery(&tenant, &id).await;
    assert_eq!(delivery["in_flight"], json!(true), "{delivery}");
    assert_eq!(delivery["status"], json!("pending"));
    let listed = app.deliveries(&tenant, "status=pending").await;
    assert_eq!(listed.len(), 1, "pending includes in-flight ones");
    retry(&app, &tenant, &id).await.expect_problem(409);
    let failed = app.settled(&tenant, &id, "failed", SOON).await;
    assert_eq!(failed["attempts"][0]["error_kind"], json!("timeout"));
}

/// Checks one `webhook.test` request at `path`: its envelope, and that its delivery went to
/// `endpoint` only. Returns the delivery id.
async fn check_test_delivery(
    app: &TestApp,
    receiver: &Receiver,
    tenant: &str,
    endpoint: &str,
    path: &str,
    n: usize,
) -> String {
    let accepted = app
        .post(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}/test"), &app.admin_token, &json!({}))
        .await;
    accepted.expect(202);
    assert_eq!(accepted.body["event"], json!("webhook.test"));
    assert_eq!(accepted.body["deliveries"], json!(1));
    let event = id_of(&accepted.body);
    let request = receiver.wait_for(path, n, SOON).await.remove(n - 1);
    let body = request.json();
    assert_eq!(body["event"], json!("webhook.test"));
    assert_eq!(body["id"], json!(event));
    assert_eq!(body["data"], json!({"endpoint_id": endpoint}));
    let delivery = app.only_delivery(tenant, &event).await;
    assert_eq!(delivery["endpoint_id"], json!(endpoint));
    id_of(&delivery)
}

#[tokio::test]
async fn the_test_route_sends_one_webhook_test_to_an_enabled_endpoint_alone() {
    let app = spawn_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, target) =
        app.tenant_with_endpoint(&receiver.url("/target"), json!({"event_types": ["*"]})).await;
    app.add_endpoint(&tenant, &receiver.url("/bystander"), json!({})).await;
    let target_id = id_of(&target);

    let delivery = check_test_delivery(&app, &receiver, &tenant, &target_id, "/target", 1).await;
    let delivered = app.settled(&tenant, &delivery, "delivered", SOON).await;
    assert_eq!(numbers(&delivered), [1]);
    let after = emit_one_to_all(&app, &tenant).await;
    receiver.wait_for("/bystander", 1, SOON).await;
    assert_eq!(
        ids_at(&receiver, "/bystander"),
        [after],
        "`*` never matches webhook.test; other work goes on"
    );
}

async fn emit_one_to_all(app: &TestApp, tenant: &str) -> String {
    id_of(&app.emit(tenant, "order.created", &json!({"n": 1})).await)
}

fn ids_at(receiver: &Receiver, path: &str) -> Vec<String> {
    receiver.requests(path).iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_test_route_bypasses_a_blocked_fifo_lane_and_reaches_a_disabled_endpoint_once() {
    let app = spawn_app_with(|config| config.delivery.retry_schedule = vec![Duration::from_secs(60)]).await;
    let receiver = Receiver::start().await;
    receiver.respond_statuses("/target", &[500, 500, 200]);
    app.create_event_type("order.created").await;
    let options = json!({"event_types": ["*"], "fifo": true});
    let (tenant, target) = app.tenant_with_endpoint(&receiver.url("/target"), options).await;
    app.add_endpoint(&tenant, &receiver.url("/bystander"), json!({"enabled": false})).await;
    let target_id = id_of(&target);

    // The head of the lane failed and waits a minute for its retry: the lane is blocked.
    let head = id_of(&app.emit(&tenant, "order.created", &json!({"n": 1})).await);
    let head = id_of(&app.deliveries(&tenant, &format!("event_id={head}&endpoint_id={target_id}")).await[0]);
    crate::helpers::eventually(SOON, "the head's first attempt to be recorded", || async {
        let delivery = app.delivery(&tenant, &head).await;
        (delivery["attempt_count"] == json!(1) && delivery["in_flight"] == json!(false)).then_some(())
    })
    .await;

    let test = check_test_delivery(&app, &receiver, &tenant, &target_id, "/target", 2).await;
    let failed = app.settled(&tenant, &test, "failed", SOON).await;
    assert_eq!(numbers(&failed), [1], "a test gets one attempt, even when it fails");

    app.post(&format!("/v1/tenants/{tenant}/endpoints/{target_id}/disable"), &app.admin_token, &json!({}))
        .await
        .expect(200);
    let test = check_test_delivery(&app, &receiver, &tenant, &target_id, "/target", 3).await;
    app.settled(&tenant, &test, "delivered", SOON).await;
    let endpoint = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints/{target_id}")).await;
    assert_eq!(endpoint.body["enabled"], json!(false), "a test does not re-enable");
    assert_eq!(receiver.requests("/target").len(), 3);
    assert!(receiver.requests("/bystander").is_empty());
}
