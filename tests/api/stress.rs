//! Endpoints under stress (DESIGN §14): the circuit breaker parks an outage's backlog and sends
//! only probes until the endpoint answers again, on one replica or several; the adaptive window
//! grows for a slow healthy endpoint and backs off for a failing one.

use std::time::Duration;

use herald::config::Config;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, eventually, id_of, ms, spawn_app_with, spawn_stepped_app_on, spawn_stepped_app_with,
};
use crate::receiver::{Receiver, Reply};

/// A breaker that opens after `failures`, probes after 100 ms, then 200 ms at most; retries
/// after 50 ms and 100 ms (a run of 3 attempts); an operations tenant `ops`.
fn short_breaker(failures: u32) -> impl FnOnce(&mut Config) {
    move |c| {
        c.delivery.retry_schedule = vec![ms(50), ms(100)];
        c.delivery.breaker_failures = failures;
        c.delivery.breaker_cooldown = ms(100);
        c.delivery.breaker_cooldown_max = ms(200);
        c.operations.tenant = Some("ops".into());
    }
}

/// The operations tenant with an endpoint on `receiver`'s `/ops`.
async fn operations_tenant(app: &TestApp, receiver: &Receiver) {
    receiver.respond("/ops", Reply::ok());
    let ops = id_of(&app.create_tenant_with(&json!({"name": "Operations", "external_id": "ops"})).await);
    app.add_endpoint(&ops, &receiver.url("/ops"), json!({"event_types": ["endpoint.*", "delivery.*"]})).await;
}

fn ops_events(receiver: &Receiver, event: &str) -> Vec<Value> {
    receiver.requests("/ops").iter().map(|r| r.json()).filter(|b| b["event"] == event).collect()
}

async fn endpoint(app: &TestApp, tenant: &str, id: &str) -> Value {
    let response = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints/{id}")).await;
    response.expect(200);
    response.body
}

#[tokio::test]
async fn an_outage_parks_the_backlog_sends_only_probes_and_delivers_everything_when_it_ends() {
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(503));
    let app = spawn_stepped_app_with(short_breaker(3)).await;
    app.create_event_type("order.paid").await;
    operations_tenant(&app, &receiver).await;
    let (tenant, created) = app.tenant_with_endpoint(&receiver.url("/down"), json!({})).await;
    let endpoint_id = id_of(&created);
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(id_of(&app.emit(&tenant, "order.paid", &json!({"n": n})).await));
    }

    // The first window of attempts fails and opens the circuit; then only probes go out,
    // one at a time, each a real attempt marked `probe`.
    let opened = app
        .until(Duration::from_secs(20), "the circuit to open", || async {
            let shown = endpoint(&app, &tenant, &endpoint_id).await;
            (shown["circuit"]["state"] != "closed").then_some(shown)
        })
        .await;
    assert!(opened["circuit"]["consecutive_failures"].as_i64().unwrap() >= 3);
    assert!(opened["circuit"]["opened_at"].is_string());
    let before_probes = receiver.requests("/down").len();
    let probes = app
        .until(Duration::from_secs(20), "three failed probes", || async {
            let probes = receiver.requests("/down").len() - before_probes;
            (probes >= 3).then_some(probes)
        })
        .await;
    assert!(receiver.max_in_flight("/down") <= 10, "the first window at most");
    let pending = app.deliveries(&tenant, "status=pending").await;
    assert_eq!(pending.len(), 12, "nothing exhausted while the circuit is open: {pending:?}");
    let mut probe_attempts = 0;
    for delivery in &pending {
        let attempts = app.delivery(&tenant, delivery["id"].as_str().unwrap()).await["attempts"].clone();
        let attempts = attempts.as_array().unwrap();
        let (probed, normal): (Vec<&Value>, Vec<&Value>) = attempts.iter().partition(|a| a["probe"] == true);
        probe_attempts += probed.len();
        assert!(normal.len() <= 3, "a run allows three attempts besides probes: {attempts:?}");
    }
    assert!(probe_attempts >= probes, "every request while open was a recorded probe");

    // The receiver recovers: the next probe closes the circuit and the backlog flows.
    receiver.respond("/down", Reply::ok());
    for event in &events {
        let delivery = app.only_delivery(&tenant, event).await;
        app.settled(&tenant, delivery["id"].as_str().unwrap(), "delivered", Duration::from_secs(20)).await;
    }
    let closed = endpoint(&app, &tenant, &endpoint_id).await;
    assert_eq!(
        closed["circuit"],
        json!({"state": "closed", "opened_at": null, "next_probe_at": null, "consecutive_failures": 0})
    );
    let opened = app
        .until(Duration::from_secs(10), "endpoint.circuit_opened and _closed reports", || async {
            let opened = ops_events(&receiver, "endpoint.circuit_opened");
            let closed = ops_events(&receiver, "endpoint.circuit_closed");
            (!opened.is_empty() && !closed.is_empty()).then_some((opened, closed))
        })
        .await;
    let (opened, closed) = opened;
    assert_eq!(opened.len(), 1, "one outage, one report: {opened:?}");
    assert_eq!(opened[0]["data"]["endpoint_id"], endpoint_id.as_str());
    assert_eq!(opened[0]["data"]["tenant_id"], tenant.as_str());
    assert_eq!(opened[0]["data"]["last_error"], "HTTP 503");
    assert!(opened[0]["data"]["consecutive_failures"].as_i64().unwrap() >= 3);
    assert!(opened[0]["data"]["opened_at"].is_string());
    assert_eq!(closed[0]["data"]["endpoint_id"], endpoint_id.as_str());
    assert!(closed[0]["data"]["closed_at"].is_string());
    assert!(closed[0]["data"]["open_seconds"].is_i64());
    assert!(ops_events(&receiver, "delivery.exhausted").is_empty(), "the outage exhausted nothing");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for to in ["open", "half_open", "closed"] {
        let line = format!("herald_circuit_transitions_total{{to=\"{to}\"}}");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in {metrics}"));
        assert!(count >= 1.0, "{line} {count}");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_probe_does_not_count_toward_its_deliverys_run() {
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(500));
    // A run of three attempts; the circuit opens on the first failure.
    let app = spawn_stepped_app_with(short_breaker(1)).await;
    app.create_event_type("order.paid").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/down"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = id_of(&app.only_delivery(&tenant, &event).await);
    // Five failed attempts (one of the run, then probes): more than a run allows, still pending.
    app.received(&receiver, "/down", 5, Duration::from_secs(20)).await;
    receiver.respond("/down", Reply::ok());
    let delivered = app.settled(&tenant, &delivery, "delivered", Duration::from_secs(20)).await;
    let attempts = delivered["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 6, "{attempts:?}");
    assert_eq!(attempts[0]["probe"], false, "the first attempt opened the circuit");
    assert!(attempts[1..].iter().all(|a| a["probe"] == true), "then only probes: {attempts:?}");
    assert_eq!(attempts.last().unwrap()["status_code"], 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_test_event_is_a_manual_probe_and_its_2xx_closes_the_circuit() {
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(502));
    let app = spawn_stepped_app_with(|c| {
        short_breaker(1)(c);
        c.delivery.breaker_cooldown = Duration::from_secs(3600);
        c.delivery.breaker_cooldown_max = Duration::from_secs(3600);
    })
    .await;
    app.create_event_type("order.paid").await;
    let (tenant, created) = app.tenant_with_endpoint(&receiver.url("/down"), json!({})).await;
    let endpoint_id = id_of(&created);
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = id_of(&app.only_delivery(&tenant, &event).await);
    app.until(Duration::from_secs(20), "the circuit to open", || async {
        (endpoint(&app, &tenant, &endpoint_id).await["circuit"]["state"] == "open").then_some(())
    })
    .await;
    receiver.respond("/down", Reply::ok());
    // The probe is an hour away; the owner's test event goes now and closes the circuit.
    app.post(&format!("/v1/tenants/{tenant}/endpoints/{endpoint_id}/test"), &app.admin_token, &json!({}))
        .await
        .expect(202);
    app.settled(&tenant, &delivery, "delivered", Duration::from_secs(20)).await;
    assert_eq!(endpoint(&app, &tenant, &endpoint_id).await["circuit"]["state"], "closed");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_circuit_opened_on_one_replica_is_probed_and_closed_by_another() {
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(503));
    let first = spawn_stepped_app_with(short_breaker(2)).await;
    first.create_event_type("order.paid").await;
    let (tenant, created) = first.tenant_with_endpoint(&receiver.url("/down"), json!({})).await;
    let endpoint_id = id_of(&created);
    for n in 0..4 {
        first.emit(&tenant, "order.paid", &json!({"n": n})).await;
    }
    first
        .until(Duration::from_secs(20), "the circuit to open on the first replica", || async {
            (endpoint(&first, &tenant, &endpoint_id).await["circuit"]["state"] == "open").then_some(())
        })
        .await;
    let sent_by_first = receiver.requests("/down").len();
    let db = first.db.clone();
    first.stop().await.unwrap();

    // The second replica reads the same circuit: it sends only a probe, which closes it.
    receiver.respond("/down", Reply::ok());
    let second = spawn_stepped_app_on(db, short_breaker(2)).await;
    assert_eq!(endpoint(&second, &tenant, &endpoint_id).await["circuit"]["state"], "open");
    second
        .until(Duration::from_secs(20), "every delivery on the second replica", || async {
            let pending = second.deliveries(&tenant, "status=pending").await;
            pending.is_empty().then_some(())
        })
        .await;
    let delivered = second.deliveries(&tenant, "status=delivered").await;
    assert_eq!(delivered.len(), 4);
    let requests = receiver.requests("/down");
    assert_eq!(requests.len(), sent_by_first + 4, "one probe, then the rest of the backlog");
    let circuit = endpoint(&second, &tenant, &endpoint_id).await["circuit"].clone();
    assert_eq!(circuit["state"], "closed");
    second.stop().await.unwrap();
}

#[tokio::test]
async fn the_breaker_is_off_with_zero_failures() {
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(503));
    let app = spawn_stepped_app_with(short_breaker(0)).await;
    app.create_event_type("order.paid").await;
    let (tenant, created) = app.tenant_with_endpoint(&receiver.url("/down"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = id_of(&app.only_delivery(&tenant, &event).await);
    let failed = app.settled(&tenant, &delivery, "failed", Duration::from_secs(20)).await;
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 3, "the whole run, no probes");
    let shown = endpoint(&app, &tenant, &id_of(&created)).await;
    assert_eq!(shown["circuit"]["state"], "closed");
    assert_eq!(shown["circuit"]["consecutive_failures"], 3);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_window_grows_for_a_slow_healthy_endpoint_and_halves_when_it_fails() {
    let receiver = Receiver::start().await;
    receiver.respond("/slow", Reply::ok().delayed(ms(40)));
    let app = spawn_app_with(|c| c.delivery.breaker_failures = 0).await;
    app.create_event_type("order.paid").await;
    let (tenant, created) = app.tenant_with_endpoint(&receiver.url("/slow"), json!({})).await;
    let endpoint_id = id_of(&created);
    assert_eq!(created["effective_in_flight"], 10);
    let events: Vec<Value> = (0..400).map(|n| json!({"event": "order.paid", "data": {"n": n}})).collect();
    app.post(&format!("/v1/tenants/{tenant}/events/batch"), &app.admin_token, &json!({"events": events}))
        .await
        .expect(202);
    app.received(&receiver, "/slow", 400, Duration::from_secs(60)).await;
    assert!(
        receiver.max_in_flight("/slow") > 10,
        "the window grew past its start: at most {} in flight",
        receiver.max_in_flight("/slow")
    );
    let grown = eventually(Duration::from_secs(10), "a grown window on record", || async {
        let shown = endpoint(&app, &tenant, &endpoint_id).await;
        (shown["effective_in_flight"].as_i64().unwrap() > 10).then_some(shown)
    })
    .await;
    assert!(grown["effective_in_flight"].as_i64().unwrap() <= 100, "within the server's cap");

    // Failing answers halve it.
    receiver.respond("/slow", Reply::status(503));
    app.emit(&tenant, "order.paid", &json!({})).await;
    app.received(&receiver, "/slow", 401, Duration::from_secs(20)).await;
    let window = grown["effective_in_flight"].as_i64().unwrap();
    eventually(Duration::from_secs(10), "the window to halve", || async {
        let shown = endpoint(&app, &tenant, &endpoint_id).await;
        (shown["effective_in_flight"].as_i64().unwrap() <= window / 2).then_some(())
    })
    .await;

    // An owner's cap bounds it; `null` gives the server's back.
    let patched = app
        .patch(
            &format!("/v1/tenants/{tenant}/endpoints/{endpoint_id}"),
            &app.admin_token,
            &json!({"max_in_flight": 3}),
        )
        .await;
    patched.expect(200);
    assert_eq!(patched.body["max_in_flight"], 3);
    assert!(patched.body["effective_in_flight"].as_i64().unwrap() <= 3);
    let reset = app
        .patch(
            &format!("/v1/tenants/{tenant}/endpoints/{endpoint_id}"),
            &app.admin_token,
            &json!({"max_in_flight": null}),
        )
        .await;
    reset.expect(200);
    assert_eq!(reset.body["max_in_flight"], Value::Null);
    app.stop().await.unwrap();
}
