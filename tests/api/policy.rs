//! Per-endpoint delivery policy: an endpoint's own timeout, retry schedule and 4xx rule, each
//! inheriting the server's `[delivery]` value until set, enforced on every attempt.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, id_of, ms, spawn_app, spawn_stepped_app_with};
use crate::receiver::{Receiver, Reply};

const SOON: Duration = Duration::from_secs(15);

/// Server retries of 50 ms, and endpoint delays down to 1 ms allowed.
fn quick(config: &mut herald::config::Config) {
    config.delivery.retry_schedule = vec![ms(50)];
    config.delivery.retry_min = ms(1);
}

async fn settled(app: &TestApp, tenant: &str, event: &str) -> Value {
    let id = id_of(&app.only_delivery(tenant, event).await);
    app.until(SOON, "the delivery to settle", || async {
        let delivery = app.delivery(tenant, &id).await;
        (delivery["status"] != json!("pending")).then_some(delivery)
    })
    .await
}

#[tokio::test]
async fn an_endpoint_shows_its_own_policy_and_the_one_in_force() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let inherits = app.create_endpoint(&tenant, &token, &json!({"url": "https://example.com/a"})).await;
    assert_eq!(
        inherits["delivery"],
        json!({"timeout": null, "retry_schedule": null, "retry_client_errors": null,
               "effective": {"timeout": "10s", "retry_schedule": ["5s", "5m", "30m"], "retry_client_errors": false}})
    );
    let own = app
        .create_endpoint(
            &tenant,
            &token,
            &json!({"url": "https://example.com/b",
                    "delivery": {"timeout": "3s", "retry_schedule": ["1m", "1h"], "retry_client_errors": true}}),
        )
        .await;
    assert_eq!(own["delivery"]["timeout"], json!("3s"));
    assert_eq!(
        own["delivery"]["effective"],
        json!({"timeout": "3s", "retry_schedule": ["1m", "1h"], "retry_client_errors": true})
    );
    let path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&own));
    assert_eq!(app.get(&path, &token).await.body["delivery"], own["delivery"]);

    // PATCH merges member by member: absent = unchanged, null = inherit.
    let patched = app.patch(&path, &token, &json!({"delivery": {"timeout": null}})).await;
    patched.expect(200);
    assert_eq!(patched.body["delivery"]["timeout"], json!(null));
    assert_eq!(patched.body["delivery"]["effective"]["timeout"], json!("10s"));
    assert_eq!(patched.body["delivery"]["retry_schedule"], json!(["1m", "1h"]), "left alone");
    let patched = app.patch(&path, &token, &json!({"delivery": {"retry_schedule": []}})).await;
    assert_eq!(patched.body["delivery"]["effective"]["retry_schedule"], json!([]), "no retries");
    let reset = app.patch(&path, &token, &json!({"delivery": null})).await;
    assert_eq!(reset.body["delivery"], inherits["delivery"], "null inherits everything");
}

#[tokio::test]
async fn a_policy_out_of_bounds_is_refused_naming_the_member() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let path = format!("/v1/tenants/{tenant}/endpoints");
    let url = "https://example.com/hook";
    for (delivery, field) in [
        (json!({"timeout": "26s"}), "delivery.timeout"),
        (json!({"timeout": "500ms"}), "delivery.timeout"),
        (json!({"timeout": "soon"}), "delivery.timeout"),
        (json!({"retry_schedule": vec!["1s"; 11]}), "delivery.retry_schedule"),
        (json!({"retry_schedule": ["10s", "200ms"]}), "delivery.retry_schedule[1]"),
        (json!({"retry_schedule": ["25h"]}), "delivery.retry_schedule[0]"),
        (json!({"retries": 3}), "delivery.retries"),
    ] {
        let response = app.post(&path, &token, &json!({"url": url, "delivery": delivery})).await;
        response.expect_invalid(field);
    }
    assert!(app.get(&path, &token).await.data().is_empty(), "nothing stored");
    let made = app.create_endpoint(&tenant, &token, &json!({"url": url})).await;
    let patch =
        app.patch(&format!("{path}/{}", id_of(&made)), &token, &json!({"delivery": {"timeout": "1m"}})).await;
    patch.expect_invalid("delivery.timeout");
}

#[tokio::test]
async fn the_endpoints_timeout_applies_to_its_attempts_and_is_logged() {
    let app = spawn_stepped_app_with(quick).await;
    let receiver = Receiver::start().await;
    receiver.respond("/slow", Reply::ok().delayed(Duration::from_millis(2500)));
    app.create_event_type("order.created").await;
    let (tenant, _) = app
        .tenant_with_endpoint(
            &receiver.url("/slow"),
            json!({"delivery": {"timeout": "1s", "retry_schedule": []}}),
        )
        .await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery = settled(&app, &tenant, &event).await;
    assert_eq!(delivery["status"], json!("failed"), "{delivery}");
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["error_kind"], json!("timeout"), "{attempt}");
    assert_eq!(attempt["timeout_ms"], json!(1000), "the attempt log says which timeout applied");
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1, "an empty schedule: one attempt");
}

#[tokio::test]
async fn the_endpoints_schedule_sets_the_runs_budget_and_its_4xx_rule_applies() {
    let app = spawn_stepped_app_with(quick).await;
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(500));
    receiver.respond("/picky", Reply::status(400));
    app.create_event_type("order.created").await;
    let (tenant, _) = app
        .tenant_with_endpoint(
            &receiver.url("/down"),
            json!({"delivery": {"retry_schedule": ["5ms", "5ms", "5ms"]}}),
        )
        .await;
    app.add_endpoint(&tenant, &receiver.url("/picky"), json!({"delivery": {"retry_client_errors": true}}))
        .await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let deliveries = app
        .until(SOON, "both deliveries to settle", || async {
            let all = app.deliveries(&tenant, &format!("event_id={event}")).await;
            (all.len() == 2 && all.iter().all(|d| d["status"] == json!("failed"))).then_some(all)
        })
        .await;
    let attempts = |path: &str| receiver.requests(path).len();
    assert_eq!(attempts("/down"), 4, "1 + the endpoint's 3 retries, not the server's 1");
    assert_eq!(attempts("/picky"), 2, "its 400 retried under the server's schedule of one retry");
    let mut counts: Vec<i64> = deliveries.iter().map(|d| d["attempt_count"].as_i64().unwrap()).collect();
    counts.sort();
    assert_eq!(counts, vec![2, 4], "the recorded attempts match what the receiver saw");
}
