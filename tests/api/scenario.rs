//! The delivery contract end to end at volume: a platform emits events for a tenant with three
//! endpoints — one healthy, one that fails twice for every event then succeeds, one that always
//! times out — and every delivery ends delivered or failed exactly as the rules say, with every
//! attempt on record and every signature valid. The breaker is off here (every run goes to its
//! end; the breaker has its own tests in `stress`), and the endpoint that times out filters the
//! events down to `HANG_EVENTS`: its adaptive window backs off to one attempt at a time, as it
//! should, so it gets few.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, id_of, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// Events emitted: 10,000 on SQLite (about a minute on a 2-core machine with a debug build);
/// 2,500 on PostgreSQL, where recording attempt by attempt takes about four times as long per
/// attempt (the same 10,000 ran there in 258 s).
fn events() -> usize {
    if crate::helpers::suite_postgres_url().is_some() { 2_500 } else { 10_000 }
}

/// Events the endpoint that always times out takes (its filter: `data.n` below this).
const HANG_EVENTS: usize = 10;

async fn all_deliveries(app: &TestApp, tenant: &str, endpoint: &str) -> Vec<Value> {
    let (items, _) = app
        .walk_pages(&format!("/v1/tenants/{tenant}/deliveries?endpoint_id={endpoint}"), &app.admin_token, 250)
        .await;
    items
}

#[tokio::test]
async fn every_delivery_ends_as_the_rules_say_with_every_attempt_on_record_and_every_signature_valid() {
    let receiver = Receiver::start().await;
    receiver.respond_per_event("/flaky", vec![Reply::status(500), Reply::status(500), Reply::ok()]);
    receiver.respond("/hang", Reply::hang());

    let app = spawn_app_with(|c| {
        c.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
        // Long enough that healthy answers on a loaded 2-core machine are never cut off (they take
        // milliseconds); the hanging endpoint sets its own 1 s.
        c.delivery.timeout = Duration::from_millis(1500);
        c.delivery.lease = Duration::from_secs(8);
        c.delivery.max_in_flight = 1200;
        c.delivery.poll_interval = Duration::from_millis(200);
        c.delivery.breaker_failures = 0;
        c.ingest.batch_body_limit = 64 * 1024 * 1024;
    })
    .await;
    app.create_event_type("order.paid").await;
    let tenant = id_of(&app.create_tenant().await);
    let mut endpoints = HashMap::new();
    let mut secrets = HashMap::new();
    let hang = json!({"filter": {"data.n": {"$lt": HANG_EVENTS}}, "delivery": {"timeout": "1s"}});
    for (path, options) in [("/healthy", json!({})), ("/flaky", json!({})), ("/hang", hang)] {
        let endpoint = app.add_endpoint(&tenant, &receiver.url(path), options).await;
        secrets.insert(path, endpoint["secret"].as_str().unwrap().to_owned());
        endpoints.insert(path, id_of(&endpoint));
    }

    let events_total = events();
    for chunk in 0..events_total.div_ceil(1000) {
        let size = (events_total - chunk * 1000).min(1000);
        let events: Vec<Value> =
            (0..size).map(|n| json!({"event": "order.paid", "data": {"n": chunk * 1000 + n}})).collect();
        let answer = app
            .post(&format!("/v1/tenants/{tenant}/events/batch"), &app.admin_token, &json!({"events": events}))
            .await;
        answer.expect(202);
        assert!(answer.body["data"].as_array().unwrap().iter().all(|item| item["status"] == 202));
    }

    eventually(Duration::from_secs(300), "every delivery to reach a final state", || async {
        let pending = app
            .get(&format!("/v1/tenants/{tenant}/deliveries?status=pending&limit=1"), &app.admin_token)
            .await;
        pending.data().is_empty().then_some(())
    })
    .await;

    let healthy = all_deliveries(&app, &tenant, &endpoints["/healthy"]).await;
    let flaky = all_deliveries(&app, &tenant, &endpoints["/flaky"]).await;
    let hang = all_deliveries(&app, &tenant, &endpoints["/hang"]).await;
    assert_eq!((healthy.len(), flaky.len(), hang.len()), (events_total, events_total, HANG_EVENTS));
    let odd = |ds: &[Value], status: &str, attempts: i64| {
        ds.iter().find(|d| d["status"] != status || d["attempt_count"] != attempts).cloned()
    };
    assert_eq!(odd(&healthy, "delivered", 1), None);
    assert_eq!(odd(&flaky, "delivered", 3), None);
    assert_eq!(odd(&hang, "failed", 4), None);

    // Every request the receiver saw has an attempt on record, and nothing was sent twice by
    // mistake: per event, exactly the attempts the rules allow.
    // Requests per event on each path, and how many of them carried a signature that does not
    // verify with the endpoint's secret.
    let mut bad_signatures = 0;
    let mut per_path = Vec::new();
    for path in ["/healthy", "/flaky", "/hang"] {
        let verifier = standardwebhooks::Webhook::new(&secrets[path]).unwrap();
        let mut per_event: HashMap<String, u32> = HashMap::new();
        for request in receiver.requests(path) {
            bad_signatures += usize::from(verifier.verify(&request.body, &request.headers).is_err());
            *per_event.entry(request.header("webhook-id").unwrap_or_default().to_owned()).or_default() += 1;
        }
        per_path.push(per_event.into_values().collect::<Vec<_>>());
    }
    assert_eq!(bad_signatures, 0, "every signature verifies");
    let [h, f, t] = <[Vec<u32>; 3]>::try_from(per_path).unwrap();
    assert_eq!((h.len(), f.len(), t.len()), (events_total, events_total, HANG_EVENTS));
    assert!(h.iter().all(|n| *n == 1));
    assert!(f.iter().all(|n| *n == 3));
    assert!(t.iter().all(|n| *n == 4));
    let recorded: i64 = [&healthy, &flaky, &hang]
        .iter()
        .flat_map(|ds| ds.iter())
        .map(|d| d["attempt_count"].as_i64().unwrap())
        .sum();
    assert_eq!(recorded, (events_total * (1 + 3) + HANG_EVENTS * 4) as i64);
    // A sample of deliveries carries each attempt with its outcome.
    let detail = app.delivery(&tenant, hang[0]["id"].as_str().unwrap()).await;
    let kinds: Vec<&str> =
        detail["attempts"].as_array().unwrap().iter().map(|a| a["error_kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["timeout"; 4]);
    let detail = app.delivery(&tenant, flaky[0]["id"].as_str().unwrap()).await;
    let codes: Vec<i64> =
        detail["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(codes, [500, 500, 200]);
}
