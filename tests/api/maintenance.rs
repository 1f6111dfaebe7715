//! Scheduled jobs, called directly with clock values (no waiting for cron): retention keeps
//! pending work, expiry of idempotency keys and rotated secrets, endpoint health with its
//! `endpoint.disabled` operational webhook, job locks across schedulers, and one short-interval
//! run of the real scheduler.

use std::sync::Arc;
use std::time::Duration;

use herald::config::Config;
use herald::domain::retry::Outcome;
use herald::domain::time::now_micros;
use herald::maintenance::{JobKind, Jobs, endpoint_health, expire_idempotency_keys, retention};
use herald::storage::{AttemptRecord, Store};
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, fast_retries, id_of, spawn_app_with};
use crate::receiver::{Receiver, Reply};

const DAY: i64 = 86_400_000_000;

/// A second handle on the app's database, as a replica or a job runner would have.
async fn store_of(app: &TestApp) -> Arc<Store> {
    let config = Config { database_url: app.db.url.clone(), ..Config::default() };
    let store = herald::storage::connect(&config).await.unwrap();
    store.set_operations_tenant(Some("ops".into()));
    store
}

/// Claims every due delivery and records it as delivered.
async fn deliver_all(store: &Store) -> usize {
    let claimed = store.claim_due(100, Duration::from_secs(30)).await.unwrap();
    let records: Vec<AttemptRecord> = claimed
        .iter()
        .map(|c| AttemptRecord {
            delivery_id: c.delivery_id.clone(),
            attempt_id: c.attempt_id.clone(),
            endpoint_id: c.endpoint_id.clone(),
            tenant_id: c.tenant_id.clone(),
            lease_token: c.lease_token.clone(),
            started_at: None,
            finished_at: now_micros(),
            duration_ms: 1,
            status_code: Some(200),
            error_kind: None,
            error: None,
            response_body: None,
            outcome: Outcome::Delivered,
            timeout_ms: None,
            last_error: None,
            probe: false,
            batch_id: None,
        })
        .collect();
    store.record_attempts(&records).await.unwrap();
    claimed.len()
}

#[tokio::test]
async fn retention_deletes_exactly_what_is_old_and_keeps_what_is_pending() {
    let app = spawn_app_with(|c| c.dispatcher_enabled = false).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) = app.tenant_with_endpoint("http://127.0.0.1:9/x", json!({})).await;
    let store = store_of(&app).await;

    let old_done = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 1})).await);
    assert_eq!(deliver_all(store.as_ref()).await, 1);
    let old_pending = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 2})).await);
    // Nobody subscribes to this one: an event with no delivery at all.
    app.create_event_type("order.other").await;
    app.patch(
        &format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint)),
        &app.admin_token,
        &json!({"event_types": ["order.paid"]}),
    )
    .await
    .expect(200);
    let old_unrouted = id_of(&app.emit(&tenant, "order.other", &json!({"n": 3})).await);
    let boundary = now_micros();
    // The next event is accepted strictly after the boundary.
    eventually(Duration::from_secs(1), "the clock to pass the boundary", || async {
        (now_micros() > boundary).then_some(())
    })
    .await;
    let recent = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 4})).await);

    // 30 days after `boundary`: the first three are old, the last is not. Batches of one.
    let deleted =
        retention(store.as_ref(), boundary + 30 * DAY, Duration::from_secs(30 * 86_400), 1).await.unwrap();
    assert_eq!(deleted, 2);
    let event = |id: String| {
        let app = &app;
        let tenant = tenant.clone();
        async move {
            app.get(&format!("/v1/tenants/{tenant}/events/{id}"), &app.admin_token).await.status.as_u16()
        }
    };
    assert_eq!(event(old_done.clone()).await, 404);
    assert_eq!(event(old_unrouted).await, 404);
    assert_eq!(event(old_pending.clone()).await, 200, "an event with a pending delivery is kept");
    assert_eq!(event(recent).await, 200);
    let remaining = app.deliveries(&tenant, "").await;
    assert_eq!(remaining.len(), 2);
    assert!(remaining.iter().all(|d| d["event_id"] != old_done.as_str()));
    // Running it again changes nothing.
    assert_eq!(
        retention(store.as_ref(), boundary + 30 * DAY, Duration::from_secs(30 * 86_400), 1).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn expired_idempotency_keys_and_rotated_secrets_are_forgotten() {
    let app = spawn_app_with(|c| c.dispatcher_enabled = false).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) = app.tenant_with_endpoint("http://127.0.0.1:9/x", json!({})).await;
    let store = store_of(&app).await;
    let body = json!({"event": "order.paid", "data": {"n": 1}, "idempotency_key": "k-1"});
    let first = app.post(&format!("/v1/tenants/{tenant}/events"), &app.admin_token, &body).await;
    first.expect(202);
    let again = app.post(&format!("/v1/tenants/{tenant}/events"), &app.admin_token, &body).await;
    assert_eq!(again.body["id"], first.body["id"]);

    let window = Duration::from_secs(24 * 3600);
    assert_eq!(expire_idempotency_keys(store.as_ref(), now_micros(), window, 10).await.unwrap(), 0);
    assert_eq!(expire_idempotency_keys(store.as_ref(), now_micros() + DAY + 1, window, 10).await.unwrap(), 1);
    let fresh = app.post(&format!("/v1/tenants/{tenant}/events"), &app.admin_token, &body).await;
    fresh.expect(202);
    assert_ne!(fresh.body["id"], first.body["id"], "a forgotten key accepts a new event");

    let ep = id_of(&endpoint);
    app.post(
        &format!("/v1/tenants/{tenant}/endpoints/{ep}/secret/rotate"),
        &app.admin_token,
        &json!({"grace_period_seconds": 60}),
    )
    .await
    .expect(200);
    assert!(store.get_secrets(&tenant, &ep).await.unwrap().previous.is_some());
    assert_eq!(store.expire_previous_secrets(now_micros()).await.unwrap(), 0);
    assert_eq!(store.expire_previous_secrets(now_micros() + 61_000_000).await.unwrap(), 1);
    let secrets = store.get_secrets(&tenant, &ep).await.unwrap();
    assert!(secrets.previous.is_none() && secrets.previous_expires_at.is_none());
}

/// An app whose operations tenant (`ops`) has an endpoint on `receiver`'s `/ops`, and a customer
/// tenant whose endpoint always answers 500. Returns (app, customer tenant, failing endpoint id).
async fn failing_customer(receiver: &Receiver) -> (TestApp, String, String) {
    receiver.respond("/ops", Reply::ok());
    receiver.respond("/dead", Reply::status(500));
    let app = spawn_app_with(|c| {
        fast_retries(c);
        c.operations.tenant = Some("ops".into());
    })
    .await;
    app.create_event_type("order.paid").await;
    let ops = id_of(&app.create_tenant_with(&json!({"name": "Operations", "external_id": "ops"})).await);
    app.add_endpoint(&ops, &receiver.url("/ops"), json!({"event_types": ["endpoint.*", "delivery.*"]})).await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/dead"), json!({})).await;
    (app, tenant, id_of(&endpoint))
}

/// Waits until no delivery of `tenant` is pending: nothing more can reach its endpoints.
async fn nothing_pending(app: &TestApp, tenant: &str) {
    eventually(Duration::from_secs(10), "every delivery to settle", || async {
        app.deliveries(tenant, "status=pending").await.is_empty().then_some(())
    })
    .await;
}

fn ops_events(receiver: &Receiver, event: &str) -> Vec<Value> {
    receiver.requests("/ops").iter().map(|r| r.json()).filter(|b| b["event"] == event).collect()
}

#[tokio::test]
async fn a_dead_endpoint_is_disabled_by_the_health_job_and_the_platform_is_told() {
    let receiver = Receiver::start().await;
    let (app, tenant, endpoint) = failing_customer(&receiver).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 1})).await);
    let delivery = app.only_delivery(&tenant, &event).await;
    app.settled(&tenant, delivery["id"].as_str().unwrap(), "failed", Duration::from_secs(10)).await;
    // The exhausted delivery is reported.
    let exhausted = eventually(Duration::from_secs(10), "a delivery.exhausted webhook", || async {
        ops_events(&receiver, "delivery.exhausted").into_iter().next()
    })
    .await;
    assert_eq!(exhausted["data"]["endpoint_id"], endpoint.as_str());
    assert_eq!(exhausted["data"]["attempts"], 4);
    assert_eq!(exhausted["data"]["last_error"], "HTTP 500");

    // Something stays pending for the dead endpoint (its next attempt is an hour away).
    let store = store_of(&app).await;
    let now = now_micros();
    // Not failing for long enough yet: nothing happens.
    assert!(endpoint_health(store.as_ref(), now, Duration::from_secs(3600)).await.unwrap().is_empty());
    // Two minutes on, with disable_after = 1 minute, it is disabled and reported once.
    let disabled = endpoint_health(store.as_ref(), now + 120_000_000, Duration::from_secs(60)).await.unwrap();
    assert_eq!(disabled, vec![endpoint.clone()]);
    assert!(
        endpoint_health(store.as_ref(), now + 120_000_000, Duration::from_secs(60)).await.unwrap().is_empty()
    );
    let shown = app.get(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}"), &app.admin_token).await;
    assert_eq!(shown.body["enabled"], false);
    assert!(shown.body["disabled_reason"].as_str().unwrap().contains("no successful delivery"));
    let report = eventually(Duration::from_secs(10), "an endpoint.disabled webhook", || async {
        ops_events(&receiver, "endpoint.disabled").into_iter().next()
    })
    .await;
    assert_eq!(report["data"]["tenant_id"], tenant.as_str());
    assert_eq!(report["data"]["endpoint_id"], endpoint.as_str());
    assert!(report["data"]["reason"].as_str().unwrap().contains("no successful delivery"));

    // Missed events stay replayable: recorded as failed, delivered after enable + recover.
    let missed = id_of(&app.emit(&tenant, "order.paid", &json!({"n": 2})).await);
    let missed_delivery = app.only_delivery(&tenant, &missed).await;
    assert_eq!(missed_delivery["status"], "failed");
    assert_eq!(missed_delivery["last_error"], "endpoint_disabled");
    receiver.respond("/dead", Reply::ok());
    app.post(&format!("/v1/tenants/{tenant}/endpoints/{endpoint}/enable"), &app.admin_token, &json!({}))
        .await
        .expect(200);
    let since = herald::domain::time::format_micros(now - 60_000_000);
    let recovered = app
        .post(
            &format!("/v1/tenants/{tenant}/endpoints/{endpoint}/recover"),
            &app.admin_token,
            &json!({"since": since}),
        )
        .await;
    recovered.expect(202);
    assert_eq!(recovered.body["requeued"], 2);
    app.settled(&tenant, missed_delivery["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "an endpoint.enabled webhook", || async {
        ops_events(&receiver, "endpoint.enabled").into_iter().next()
    })
    .await;
}

#[tokio::test]
async fn the_operations_tenant_hears_nothing_about_its_own_endpoints() {
    let receiver = Receiver::start().await;
    receiver.respond("/ops", Reply::ok());
    receiver.respond("/ops-dead", Reply::status(500));
    let app = spawn_app_with(|c| {
        fast_retries(c);
        c.operations.tenant = Some("ops".into());
    })
    .await;
    let ops = id_of(&app.create_tenant_with(&json!({"name": "Operations", "external_id": "ops"})).await);
    app.add_endpoint(&ops, &receiver.url("/ops"), json!({"event_types": ["endpoint.*", "delivery.*"]})).await;
    let dead =
        app.add_endpoint(&ops, &receiver.url("/ops-dead"), json!({"event_types": ["delivery.*"]})).await;
    // A customer's endpoint fails for good: one report, to both ops endpoints; the dead ops
    // endpoint's own failure is not reported again.
    receiver.respond("/customer", Reply::status(500));
    app.create_event_type("order.paid").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/customer"), json!({})).await;
    app.emit(&tenant, "order.paid", &json!({})).await;
    eventually(Duration::from_secs(15), "the ops endpoint's report delivery to fail", || async {
        let failed = app.deliveries(&ops, &format!("endpoint_id={}&status=failed", id_of(&dead))).await;
        (!failed.is_empty()).then_some(())
    })
    .await;
    nothing_pending(&app, &ops).await;
    let reports = ops_events(&receiver, "delivery.exhausted");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["data"]["tenant_id"], tenant.as_str());
    let ops_events_stored = app.get(&format!("/v1/tenants/{ops}/events"), &app.admin_token).await;
    assert_eq!(ops_events_stored.data().len(), 1, "{}", ops_events_stored.text);
}

#[tokio::test]
async fn two_schedulers_running_the_same_job_at_once_act_once() {
    let receiver = Receiver::start().await;
    let (app, tenant, endpoint) = failing_customer(&receiver).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = app.only_delivery(&tenant, &event).await;
    app.settled(&tenant, delivery["id"].as_str().unwrap(), "failed", Duration::from_secs(10)).await;

    let mut config = Config { database_url: app.db.url.clone(), ..Config::default() };
    config.maintenance.disable_after = Duration::from_secs(60);
    let (a, b) = (store_of(&app).await, store_of(&app).await);
    let (first, second) = (Jobs::new(&config, a.clone()), Jobs::new(&config, b.clone()));
    let later = now_micros() + 120_000_000;
    let (x, y) =
        tokio::join!(first.run_guarded(JobKind::Health, later), second.run_guarded(JobKind::Health, later));
    let (x, y) = (x.unwrap(), y.unwrap());
    let changed: u64 = x.unwrap_or(0) + y.unwrap_or(0);
    assert_eq!(changed, 1, "exactly one endpoint disabled once: {x:?} {y:?}");
    // A held lock makes the other scheduler skip; a lapsed one does not block.
    assert!(a.try_lock_job("health", "replica-a", later, later + 1_000_000).await.unwrap());
    assert_eq!(second.run_guarded(JobKind::Health, later).await.unwrap(), None);
    assert!(b.try_lock_job("health", "replica-b", later + 2_000_000, later + 3_000_000).await.unwrap());
    let reports = eventually(Duration::from_secs(10), "the endpoint.disabled webhook", || async {
        let reports = ops_events(&receiver, "endpoint.disabled");
        (!reports.is_empty()).then_some(reports)
    })
    .await;
    nothing_pending(&app, "ops").await;
    assert_eq!(ops_events(&receiver, "endpoint.disabled").len(), 1, "{reports:?}");
    assert_eq!(reports[0]["data"]["endpoint_id"], endpoint.as_str());
}

#[tokio::test]
async fn the_scheduler_runs_jobs_on_their_cron_expressions() {
    let app = spawn_app_with(|c| {
        c.dispatcher_enabled = false;
        c.maintenance.secrets_cron = "* * * * * *".into();
    })
    .await;
    let (tenant, endpoint) = app.tenant_with_endpoint("http://127.0.0.1:9/x", json!({})).await;
    let ep = id_of(&endpoint);
    app.post(
        &format!("/v1/tenants/{tenant}/endpoints/{ep}/secret/rotate"),
        &app.admin_token,
        &json!({"grace_period_seconds": 1}),
    )
    .await
    .expect(200);
    let store = store_of(&app).await;
    assert!(store.get_secrets(&tenant, &ep).await.unwrap().previous.is_some());
    eventually(Duration::from_secs(10), "the secrets job to forget the rotated secret", || async {
        store.get_secrets(&tenant, &ep).await.unwrap().previous.is_none().then_some(())
    })
    .await;
}
