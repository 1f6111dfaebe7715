//! Delivery end to end against a recording receiver: fan-out, the wire format and signatures,
//! retries and their outcomes, timeouts, Retry-After, FIFO, isolation, caps and rotation.

use std::collections::BTreeSet;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use standardwebhooks::Webhook;

use crate::helpers::{
    TestApp, assert_id, assert_time, fast_retries, id_of, ms, spawn_app, spawn_app_with,
    spawn_stepped_app_with,
};
use crate::receiver::{Receiver, Recorded, Reply};
use herald::config::Config;

/// Generous deadline for things that normally take milliseconds.
const SOON: Duration = Duration::from_secs(10);

fn secret_of(endpoint: &Value) -> String {
    endpoint["secret"].as_str().expect("secret on create").to_owned()
}

fn verify(secret: &str, request: &Recorded) -> Result<(), standardwebhooks::WebhookError> {
    Webhook::new(secret).expect("a valid secret").verify(&request.body, &request.headers)
}

fn ids(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(|r| r.header("webhook-id").expect("webhook-id").to_owned()).collect()
}

/// A time the API shows, in Unix microseconds.
fn micros(time: &Value) -> i64 {
    let text = time.as_str().unwrap_or_else(|| panic!("not a time: {time}"));
    chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339").timestamp_micros()
}

fn attempts(delivery: &Value) -> &Vec<Value> {
    delivery["attempts"].as_array().unwrap_or_else(|| panic!("no attempts in {delivery}"))
}

#[tokio::test]
async fn every_event_reaches_every_matching_endpoint_and_no_other() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    for name in ["order.created", "order.paid", "order.refund.issued", "user.created", "old.thing"] {
        app.create_event_type(name).await;
    }
    let tenant = id_of(&app.create_tenant().await);
    let subscriptions: [(&str, Value); 6] = [
        ("/exact", json!(["order.created"])),
        ("/prefix", json!(["order.*"])),
        ("/star", json!(["*"])),
        ("/empty", json!([])),
        ("/user", json!(["user.created"])),
        ("/old", json!(["old.thing"])),
    ];
    for (path, types) in &subscriptions {
        app.add_endpoint(&tenant, &receiver.url(path), json!({"event_types": types})).await;
    }
    let absent = app.add_endpoint(&tenant, &receiver.url("/absent"), json!({})).await;
    app.delete(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&absent)), &app.admin_token)
        .await
        .expect(204);
    let (other_tenant, _) = app.tenant_with_endpoint(&receiver.url("/other-tenant"), json!({})).await;
    app.delete("/v1/event-types/old.thing", &app.admin_token).await.expect(204);

    let mut emitted = Vec::new();
    for (event, expected) in
        [("order.created", 4), ("order.paid", 3), ("order.refund.issued", 3), ("user.created", 3)]
    {
        let answer = app.emit(&tenant, event, &json!({"n": 1})).await;
        assert_eq!(answer["deliveries"], json!(expected), "{event}: {answer}");
        emitted.push((event, id_of(&answer)));
    }
    let archived = app
        .post(
            &format!("/v1/tenants/{tenant}/events"),
            &app.admin_token,
            &json!({"event": "old.thing", "data": {}}),
        )
        .await;
    archived.expect_invalid("event");

    let total: usize = 4 + 3 + 3 + 3;
    app.all_delivered(&tenant, total, SOON).await;
    assert_eq!(app.deliveries(&tenant, "").await.len(), total, "no delivery beyond the matching ones");

    let expect = |path: &str| -> BTreeSet<String> {
        let wanted: &[&str] = match path {
            "/exact" => &["order.created"],
            "/prefix" => &["order.created", "order.paid", "order.refund.issued"],
            "/star" | "/empty" => &["order.created", "order.paid", "order.refund.issued", "user.created"],
            "/user" => &["user.created"],
            _ => &[],
        };
        emitted.iter().filter(|(e, _)| wanted.contains(e)).map(|(_, id)| id.clone()).collect()
    };
    for path in ["/exact", "/prefix", "/star", "/empty", "/user", "/old", "/absent", "/other-tenant"] {
        let seen = ids(&receiver.requests(path));
        assert_eq!(
            seen.len(),
            seen.iter().collect::<BTreeSet<_>>().len(),
            "{path} got a duplicate: {seen:?}"
        );
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expect(path), "events received at {path}");
    }
    assert!(app.deliveries(&other_tenant, "").await.is_empty(), "another tenant's endpoint got a delivery");
}

#[tokio::test]
async fn the_body_and_headers_are_exactly_as_specified_and_the_signature_verifies() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let options = json!({"headers": {"X-Api-Key": "k-123", "Authorization": "Bearer abc"}});
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), options).await;
    let secret = secret_of(&endpoint);

    let raw = "{\"event\": \"order.created\",\n \"data\": { \"b\": 1,  \"a\": [1, 2] ,\n\t\"big\": 123456789012345678901234567890, \"s\": \"x  y\" } }";
    let path = format!("/v1/tenants/{tenant}/events");
    let answer =
        app.send_raw(Method::POST, &path, Some(&app.admin_token), Some("application/json"), raw).await;
    answer.expect(202);
    let id = id_of(&answer.body);
    assert_id("evt", &answer.body["id"]);
    assert_time(&answer.body["timestamp"]);
    let timestamp = answer.body["timestamp"].as_str().unwrap();

    let request = app.received(&receiver, "/hook", 1, SOON).await.remove(0);
    let expected = format!(
        r#"{{"id":"{id}","event":"order.created","timestamp":"{timestamp}","data":{{"b":1,"a":[1,2],"big":123456789012345678901234567890,"s":"x  y"}}}}"#
    );
    assert_eq!(request.text(), expected, "the body is the minified envelope");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("user-agent"), Some("Herald/0.1.0"));
    assert_eq!(request.header("webhook-id"), Some(id.as_str()));
    let sent_at: i64 =
        request.header("webhook-timestamp").expect("webhook-timestamp").parse().expect("unix seconds");
    assert!((sent_at - chrono::Utc::now().timestamp()).abs() <= 10, "webhook-timestamp {sent_at} is not now");
    let signature = request.header("webhook-signature").expect("webhook-signature");
    assert!(signature.starts_with("v1,") && !signature.contains(' '), "one entry: {signature}");
    let expected_signature = Webhook::new(&secret).unwrap().sign(&id, sent_at, &request.body).unwrap();
    assert_eq!(signature, expected_signature);
    verify(&secret, &request).expect("the signature verifies with the standardwebhooks crate");
    assert_eq!(request.header("x-api-key"), Some("k-123"), "custom header");
    assert_eq!(request.header("authorization"), Some("Bearer abc"), "custom header");
    assert!(request.header("x-aetherflow-signature").is_none(), "no classic header unless configured");
    assert_eq!(request.headers.get_all("webhook-id").iter().count(), 1);

    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &id).await), "delivered", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(1));
    assert_eq!(delivery["endpoint_id"], endpoint["id"]);
    assert_time(&delivery["completed_at"]);
    let attempt = &attempts(&delivery)[0];
    assert_id("att", &attempt["id"]);
    assert_eq!(attempt["number"], json!(1));
    assert_eq!(attempt["status_code"], json!(200));
    assert!(attempt["error_kind"].is_null(), "{attempt}");
    assert!(attempt["duration_ms"].is_i64(), "{attempt}");
    assert_time(&attempt["started_at"]);
}

#[tokio::test]
async fn the_classic_hex_header_is_sent_when_configured() {
    let app = spawn_stepped_app_with(|config| {
        config.signing.hex_header = Some("X-AetherFlow-Signature".to_owned());
        config.signing.hex_prefix = "sha256=".to_owned();
    })
    .await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let secret = secret_of(&endpoint);
    app.emit(&tenant, "order.created", &json!({"order_id": "o-1"})).await;

    let request = app.received(&receiver, "/hook", 1, SOON).await.remove(0);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(request.header("x-aetherflow-signature"), Some(expected.as_str()));
    verify(&secret, &request).expect("the Standard Webhooks signature is still there");
}

#[tokio::test]
async fn a_receiver_that_always_fails_gets_four_attempts_then_the_delivery_fails() {
    let schedule = [ms(100), ms(200), ms(300)];
    let app = spawn_stepped_app_with(|config| config.delivery.retry_schedule = schedule.to_vec()).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(500).body("oops"));
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);

    let delivery_id = id_of(&app.only_delivery(&tenant, &event).await);
    let delivery = app.settled(&tenant, &delivery_id, "failed", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(4));
    assert_eq!(delivery["last_error"], json!("HTTP 500"));
    assert!(delivery["next_attempt_at"].is_null(), "{delivery}");
    assert_time(&delivery["completed_at"]);
    let attempts = attempts(&delivery);
    assert_eq!(
        attempts.iter().map(|a| a["number"].clone()).collect::<Vec<_>>(),
        [1, 2, 3, 4].map(|n| json!(n))
    );
    for attempt in attempts {
        assert_eq!(attempt["status_code"], json!(500), "{attempt}");
        assert_eq!(attempt["error_kind"], json!("http_status"), "{attempt}");
        assert_eq!(attempt["response_body"], json!("oops"), "{attempt}");
    }

    let requests = receiver.requests("/hook");
    assert_eq!(requests.len(), 4, "exactly four requests");
    assert!(ids(&requests).iter().all(|id| *id == event), "the same webhook-id on every retry");
    for (i, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= schedule[i].mul_f64(0.8),
            "gap {} was {gap:?}, schedule says {:?}",
            i + 1,
            schedule[i]
        );
    }
}

#[tokio::test]
async fn a_retried_delivery_succeeds_when_the_receiver_recovers() {
    let app = spawn_stepped_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond_statuses("/hook", &[500, 503, 200]);
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "delivered", SOON).await;
    let codes: Vec<Value> = attempts(&delivery).iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(503), json!(200)]);
    assert_eq!(delivery["attempt_count"], json!(3));
    assert!(delivery["last_error"].is_null() || delivery["last_error"] == json!("HTTP 503"), "{delivery}");
    let requests = receiver.requests("/hook");
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == requests[0].body), "every attempt sends the same bytes");
    for request in &requests {
        verify(&secret_of(&endpoint), request).expect("each attempt is signed afresh");
    }
}

#[tokio::test]
async fn gone_fails_the_delivery_and_disables_the_endpoint() {
    let app = spawn_stepped_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(410));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let endpoint_path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint));
    let first = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &first).await), "failed", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(1));
    assert_eq!(attempts(&delivery)[0]["status_code"], json!(410));

    let endpoint = app.admin_get(&endpoint_path).await;
    endpoint.expect(200);
    assert_eq!(endpoint.body["enabled"], json!(false), "{}", endpoint.text);
    assert!(endpoint.body["disabled_reason"].as_str().is_some_and(|r| !r.is_empty()), "{}", endpoint.text);

    let second = app.emit(&tenant, "order.created", &json!({})).await;
    assert_eq!(second["deliveries"], json!(1), "a disabled endpoint still gets a delivery row");
    let delivery = app.delivery(&tenant, &id_of(&app.only_delivery(&tenant, &id_of(&second)).await)).await;
    assert_eq!(delivery["status"], json!("failed"));
    assert_eq!(delivery["last_error"], json!("endpoint_disabled"));
    assert_eq!(delivery["attempt_count"], json!(0));
    assert_eq!(attempts(&delivery).len(), 0);
    assert_eq!(receiver.requests("/hook").len(), 1, "nothing is sent to a disabled endpoint");
}

#[tokio::test]
async fn a_client_error_fails_at_once() {
    let app = spawn_stepped_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(400));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "failed", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(1));
    assert_eq!(delivery["last_error"], json!("HTTP 400"));
    assert_eq!(attempts(&delivery)[0]["error_kind"], json!("http_status"));
    assert_eq!(receiver.requests("/hook").len(), 1);
    let endpoint = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint))).await;
    assert_eq!(endpoint.body["enabled"], json!(true), "only 410 disables: {}", endpoint.text);
}

#[tokio::test]
async fn client_errors_are_retried_when_configured() {
    let app = spawn_stepped_app_with(|config| {
        fast_retries(config);
        config.delivery.retry_client_errors = true;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.respond_statuses("/hook", &[400, 422, 200]);
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "delivered", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(3));
    assert_eq!(receiver.requests("/hook").len(), 3);
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_off_at_the_timeout() {
    let app = spawn_stepped_app_with(|config| {
        config.delivery.timeout = ms(300);
        config.delivery.lease = ms(300) + Duration::from_secs(5);
        config.delivery.retry_schedule = vec![ms(50)];
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::hang());
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "failed", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(2), "a timeout is retried: {delivery}");
    for attempt in attempts(&delivery) {
        assert_eq!(attempt["error_kind"], json!("timeout"), "{attempt}");
        assert!(attempt["status_code"].is_null(), "{attempt}");
        let took = attempt["duration_ms"].as_i64().expect("duration_ms");
        assert!(took >= 250, "an attempt cut off at the 300 ms timeout took only {took} ms");
    }
    assert!(delivery["last_error"].as_str().is_some_and(|e| e.contains("timeout")), "{delivery}");
    assert_eq!(receiver.requests("/hook").len(), 2);
}

#[test]
fn the_default_delivery_settings_are_the_documented_ones() {
    let delivery = Config::default().delivery;
    assert_eq!(delivery.timeout, Duration::from_secs(10));
    assert_eq!(
        delivery.retry_schedule,
        [Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(1800)]
    );
    assert_eq!(delivery.lease, Duration::from_secs(30));
    assert_eq!(delivery.max_in_flight_per_endpoint, 100);
    assert_eq!(delivery.initial_in_flight, 10);
    assert_eq!(delivery.breaker_failures, 10);
    assert_eq!(delivery.retry_after_max, Duration::from_secs(3600));
    assert!(!delivery.retry_client_errors);
    assert_eq!(delivery.timeout_max(), Duration::from_secs(25), "endpoints may ask for up to 25 s");
    assert_eq!(delivery.retry_min, Duration::from_secs(1));
    assert_eq!(delivery.grace(), Duration::from_secs(30), "the longest attempt + 5 s");
}

#[tokio::test]
async fn retry_after_on_429_delays_the_next_attempt_and_pauses_the_endpoint() {
    let app = spawn_stepped_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond_sequence("/hook", vec![Reply::status(429).retry_after("1"), Reply::ok()]);
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let first = id_of(&app.emit(&tenant, "order.created", &json!({"n": 1})).await);
    let delivery_id = id_of(&app.only_delivery(&tenant, &first).await);
    app.until(SOON, "the 429 to be recorded", || async {
        let delivery = app.delivery(&tenant, &delivery_id).await;
        (delivery["attempt_count"] == json!(1) && delivery["in_flight"] == json!(false)).then_some(())
    })
    .await;
    let throttled = app.delivery(&tenant, &delivery_id).await;
    let throttled_at = micros(&attempts(&throttled)[0]["started_at"]);
    assert!(
        micros(&throttled["next_attempt_at"]) >= throttled_at + 1_000_000,
        "the retry is due no sooner than Retry-After: 1 says: {throttled}"
    );
    let second = id_of(&app.emit(&tenant, "order.created", &json!({"n": 2})).await);

    let requests = app.received(&receiver, "/hook", 3, SOON).await;
    assert_eq!(requests[0].header("webhook-id"), Some(first.as_str()));
    assert!(ids(&requests[1..]).contains(&second));
    let paused =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &second).await), "delivered", SOON).await;
    assert!(
        micros(&attempts(&paused)[0]["started_at"]) >= throttled_at + 1_000_000,
        "another event went to the paused endpoint before Retry-After ended: {paused}"
    );
    app.settled(&tenant, &delivery_id, "delivered", SOON).await;
    let delivery = app.delivery(&tenant, &delivery_id).await;
    assert_eq!(delivery["attempt_count"], json!(2), "Retry-After still uses one attempt");
}

#[tokio::test]
async fn a_fifo_endpoint_delivers_in_acceptance_order_under_retries() {
    let app = spawn_stepped_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver.respond_statuses("/fifo", &[500, 500, 200]);
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/fifo"), json!({"fifo": true})).await;
    let mut events = Vec::new();
    for n in 0..5 {
        events.push(id_of(&app.emit(&tenant, "order.created", &json!({"n": n})).await));
    }
    let batch = json!({"events": (5..8).map(|n| json!({"event": "order.created", "data": {"n": n}})).collect::<Vec<_>>()});
    let answer = app.post(&format!("/v1/tenants/{tenant}/events/batch"), &app.admin_token, &batch).await;
    answer.expect(202);
    events.extend(answer.data().iter().map(id_of));

    let requests = app.received(&receiver, "/fifo", events.len() + 2, SOON).await;
    let mut expected = vec![events[0].clone(), events[0].clone()];
    expected.extend(events.iter().cloned());
    assert_eq!(ids(&requests), expected, "the head is retried before anything behind it");
    assert_eq!(receiver.max_in_flight("/fifo"), 1, "one request at a time");
    app.all_delivered(&tenant, events.len(), SOON).await;
    assert_eq!(receiver.requests("/fifo").len(), events.len() + 2);
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    // The hanging requests outlast the test: a healthy endpoint served while they hang was not
    // held up by them, however busy the machine is.
    let app = spawn_app_with(|config| {
        config.delivery.timeout = Duration::from_secs(60);
        config.delivery.lease = Duration::from_secs(65);
        config.delivery.max_in_flight = 12;
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.respond("/hang", Reply::hang());
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hang"), json!({})).await;
    app.add_endpoint(&tenant, &receiver.url("/healthy"), json!({})).await;

    for n in 0..30 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    receiver.wait_for("/healthy", 30, Duration::from_secs(30)).await;
    assert!(receiver.in_flight("/hang") > 0, "the other endpoint is still hanging");
    assert!(receiver.max_in_flight("/hang") <= 10, "the per-endpoint cap of 10 holds");
}

/// When an attempt's row says it started, in Unix milliseconds.
fn started_ms(attempt: &Value) -> i64 {
    let text = attempt["started_at"].as_str().unwrap_or_else(|| panic!("no started_at in {attempt}"));
    chrono::DateTime::parse_from_rfc3339(text).expect("an RFC 3339 time").timestamp_millis()
}

/// An endpoint's cap of two keeps two requests in flight at most, on both backends; and a
/// backlog bigger than the endpoint's window is claimed a window ahead on SQLite (DESIGN §17):
/// those claims wait for a free slot, so the cap still holds, each delivery has its one attempt
/// numbered 1, and an attempt's `started_at` is when its request left, not when it was claimed.
#[tokio::test]
async fn claims_made_ahead_wait_for_a_free_slot_and_say_when_they_left() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    receiver.respond("/slow", Reply::ok().delayed(ms(300)));
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/slow"), json!({"max_in_flight": 2})).await;
    for n in 0..8 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    receiver.wait_for("/slow", 8, SOON).await;
    let delivered = app.all_delivered(&tenant, 8, SOON).await;
    let most = receiver.max_in_flight("/slow");
    assert!((1..=2).contains(&most), "{most} requests were in flight at once with a cap of 2");
    let mut started = Vec::new();
    for delivery in delivered {
        let delivery = app.delivery(&tenant, delivery["id"].as_str().unwrap()).await;
        assert_eq!(delivery["attempt_count"], json!(1), "{delivery}");
        let attempts = attempts(&delivery);
        assert_eq!(attempts.len(), 1, "one attempt, none left open: {delivery}");
        assert_eq!(attempts[0]["number"], json!(1));
        assert_eq!(attempts[0]["status_code"], json!(200));
        started.push(started_ms(&attempts[0]));
    }
    started.sort();
    // Two at a time, 300 ms each: the third and fourth requests cannot leave before the first
    // two answered, the fifth and sixth before the next two, and so on.
    for (i, at) in started.iter().enumerate() {
        let earliest = (i as i64 / 2) * 300 - 50;
        assert!(
            at - started[0] >= earliest,
            "the attempts say they started at {started:?} (ms): request {i} within {earliest} ms of the first"
        );
    }
}

/// A request that fails gives back its endpoint's claims made ahead: they are claimed again,
/// and their attempts are numbered as if they had never been claimed.
#[tokio::test]
async fn a_failure_gives_back_the_claims_made_ahead() {
    let app = spawn_app_with(fast_retries).await;
    let receiver = Receiver::start().await;
    receiver
        .respond_sequence("/flaky", vec![Reply::status(500).delayed(ms(200)), Reply::ok().delayed(ms(20))]);
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/flaky"), json!({"max_in_flight": 1})).await;
    for n in 0..4 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    receiver.wait_for("/flaky", 5, SOON).await;
    let delivered = app.all_delivered(&tenant, 4, SOON).await;
    let mut numbers = Vec::new();
    for delivery in delivered {
        let delivery = app.delivery(&tenant, delivery["id"].as_str().unwrap()).await;
        let attempts = attempts(&delivery);
        assert_eq!(delivery["attempt_count"], json!(attempts.len()), "{delivery}");
        let codes: Vec<Value> = attempts.iter().map(|a| a["status_code"].clone()).collect();
        numbers.push(attempts.iter().map(|a| a["number"].as_i64().unwrap()).collect::<Vec<_>>());
        assert!(codes == [json!(200)] || codes == [json!(500), json!(200)], "{delivery}");
    }
    numbers.sort();
    assert_eq!(numbers, [vec![1], vec![1], vec![1], vec![1, 2]], "no attempt of a claim given back");
    assert_eq!(receiver.max_in_flight("/flaky"), 1);
}

/// Disabling an endpoint while claims are made ahead for it gives them back and fails their
/// deliveries as the stop rule says: nothing more is sent, and nothing is left pending.
#[tokio::test]
async fn disabling_an_endpoint_gives_back_its_claims_made_ahead_and_fails_them() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    // Long enough for the PATCH to land while the first request is still out, however busy
    // the machine is.
    receiver.respond("/slow", Reply::ok().delayed(ms(3_000)));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) =
        app.tenant_with_endpoint(&receiver.url("/slow"), json!({"max_in_flight": 1})).await;
    for n in 0..3 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    receiver.wait_for("/slow", 1, SOON).await;
    let path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint));
    app.patch(&path, &app.admin_token, &json!({"enabled": false})).await.expect(200);
    // The request in flight finishes and is recorded; the other two fail.
    let failed = crate::helpers::eventually(SOON, "the other deliveries to fail", || async {
        let failed = app.deliveries(&tenant, "status=failed").await;
        let delivered = app.deliveries(&tenant, "status=delivered").await;
        (failed.len() == 2 && delivered.len() == 1).then_some(failed)
    })
    .await;
    for delivery in failed {
        assert_eq!(delivery["last_error"], json!("endpoint_disabled"), "{delivery}");
    }
    assert_eq!(receiver.requests("/slow").len(), 1, "nothing claimed ahead went out after the disabling");
}

#[tokio::test]
async fn the_global_cap_bounds_requests_in_flight_across_endpoints() {
    let app = spawn_app_with(|config| config.delivery.max_in_flight = 2).await;
    let receiver = Receiver::start().await;
    receiver.respond("/a", Reply::ok().delayed(ms(150)));
    receiver.respond("/b", Reply::ok().delayed(ms(150)));
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/a"), json!({})).await;
    app.add_endpoint(&tenant, &receiver.url("/b"), json!({})).await;
    for n in 0..5 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    receiver.wait_for("/a", 5, SOON).await;
    receiver.wait_for("/b", 5, SOON).await;
    let most = receiver.max_in_flight_total();
    assert!((1..=2).contains(&most), "{most} requests were in flight at once with a global cap of 2");
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_until_the_previous_one_is_dropped() {
    let app = spawn_stepped_app_with(|_| {}).await;
    let receiver = Receiver::start().await;
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let old = secret_of(&endpoint);
    let secret_path = format!("/v1/tenants/{tenant}/endpoints/{}/secret", id_of(&endpoint));
    let rotated = app
        .post(&format!("{secret_path}/rotate"), &app.admin_token, &json!({"grace_period_seconds": 3600}))
        .await;
    rotated.expect(200);
    let new = rotated.body["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new, old);
    assert_time(&rotated.body["previous_secret_expires_at"]);

    app.emit(&tenant, "order.created", &json!({"n": 1})).await;
    let request = app.received(&receiver, "/hook", 1, SOON).await.remove(0);
    let signature = request.header("webhook-signature").unwrap();
    let entries: Vec<&str> = signature.split(' ').collect();
    assert_eq!(entries.len(), 2, "two entries one space apart: {signature:?}");
    let id = request.header("webhook-id").unwrap();
    let stamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    assert_eq!(entries[0], Webhook::new(&new).unwrap().sign(id, stamp, &request.body).unwrap(), "new first");
    assert_eq!(entries[1], Webhook::new(&old).unwrap().sign(id, stamp, &request.body).unwrap());
    verify(&new, &request).expect("verifies with the new secret");
    verify(&old, &request).expect("verifies with the old secret");

    app.delete(&format!("{secret_path}/previous"), &app.admin_token).await.expect(204);
    app.emit(&tenant, "order.created", &json!({"n": 2})).await;
    let request = app.received(&receiver, "/hook", 2, SOON).await.remove(1);
    let signature = request.header("webhook-signature").unwrap();
    assert!(!signature.contains(' '), "one entry after the grace ends: {signature:?}");
    verify(&new, &request).expect("verifies with the new secret");
    assert!(verify(&old, &request).is_err(), "the old secret no longer signs");
}

/// A stepped app with one endpoint that answers 500, retried a minute after each failure.
async fn failing_endpoint_retrying_in_a_minute() -> (TestApp, Receiver, String, Value) {
    let app =
        spawn_stepped_app_with(|config| config.delivery.retry_schedule = vec![Duration::from_secs(60)]).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(500));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    (app, receiver, tenant, endpoint)
}

/// Waits until the only delivery of `event` has made its first attempt and is waiting for the next.
async fn first_attempt_recorded(app: &TestApp, tenant: &str, event: &str) -> String {
    let id = id_of(&app.only_delivery(tenant, event).await);
    app.until(SOON, "the first attempt to be recorded", || async {
        let delivery = app.delivery(tenant, &id).await;
        (delivery["status"] == json!("pending")
            && delivery["attempt_count"] == json!(1)
            && delivery["in_flight"] == json!(false))
        .then_some(())
    })
    .await;
    id
}

#[tokio::test]
async fn deleting_an_endpoint_fails_its_pending_deliveries() {
    let (app, _receiver, tenant, endpoint) = failing_endpoint_retrying_in_a_minute().await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery_id = first_attempt_recorded(&app, &tenant, &event).await;

    app.delete(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint)), &app.admin_token)
        .await
        .expect(204);
    let delivery = app.settled(&tenant, &delivery_id, "failed", SOON).await;
    assert_eq!(delivery["last_error"], json!("endpoint_deleted"));
    assert_eq!(delivery["attempt_count"], json!(1), "the history stays");
    let retry = app
        .post(&format!("/v1/tenants/{tenant}/deliveries/{delivery_id}/retry"), &app.admin_token, &json!({}))
        .await;
    retry.expect_problem(409);
}

#[tokio::test]
async fn disabling_an_endpoint_fails_its_pending_deliveries() {
    let (app, receiver, tenant, endpoint) = failing_endpoint_retrying_in_a_minute().await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery_id = first_attempt_recorded(&app, &tenant, &event).await;

    let path = format!("/v1/tenants/{tenant}/endpoints/{}/disable", id_of(&endpoint));
    let disabled = app.post(&path, &app.admin_token, &json!({"reason": "maintenance"})).await;
    disabled.expect(200);
    assert_eq!(disabled.body["enabled"], json!(false));
    assert_eq!(disabled.body["disabled_reason"], json!("maintenance"));
    let delivery = app.settled(&tenant, &delivery_id, "failed", SOON).await;
    assert_eq!(delivery["last_error"], json!("endpoint_disabled"));
    assert_eq!(receiver.requests("/hook").len(), 1);
}

#[tokio::test]
async fn retry_after_is_capped_by_retry_after_max() {
    let app = spawn_stepped_app_with(|config| {
        fast_retries(config);
        config.delivery.retry_after_max = Duration::from_secs(1);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.respond_sequence("/hook", vec![Reply::status(503).retry_after("3600"), Reply::ok()]);
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery_id = id_of(&app.only_delivery(&tenant, &event).await);
    let throttled = app
        .until(SOON, "the 503 to be recorded", || async {
            let delivery = app.delivery(&tenant, &delivery_id).await;
            (delivery["attempt_count"] == json!(1) && delivery["in_flight"] == json!(false))
                .then_some(delivery)
        })
        .await;
    let wait = micros(&throttled["next_attempt_at"]) - micros(&attempts(&throttled)[0]["started_at"]);
    assert!(
        (1_000_000..60_000_000).contains(&wait),
        "Retry-After: 3600 capped at 1 s makes the retry due about 1 s later, not {wait} µs: {throttled}"
    );
    app.settled(&tenant, &delivery_id, "delivered", SOON).await;
    assert_eq!(receiver.requests("/hook").len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_recorded_as_connect() {
    let app = spawn_stepped_app_with(fast_retries).await;
    app.create_event_type("order.created").await;
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (tenant, _) = app.tenant_with_endpoint(&format!("http://{closed}/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "failed", SOON).await;
    assert_eq!(delivery["attempt_count"], json!(4), "{delivery}");
    for attempt in attempts(&delivery) {
        assert_eq!(attempt["error_kind"], json!("connect"), "{attempt}");
        assert!(attempt["status_code"].is_null(), "{attempt}");
        assert!(attempt["error"].as_str().is_some_and(|e| !e.is_empty()), "{attempt}");
    }
}

#[tokio::test]
async fn at_most_8_kib_of_the_response_body_is_kept() {
    let app = spawn_stepped_app_with(|config| config.delivery.retry_schedule = vec![]).await;
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::status(500).body(&"x".repeat(20 * 1024)));
    app.create_event_type("order.created").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery =
        app.settled(&tenant, &id_of(&app.only_delivery(&tenant, &event).await), "failed", SOON).await;
    let kept = attempts(&delivery)[0]["response_body"].as_str().expect("response_body").len();
    assert_eq!(kept, 8 * 1024, "response body kept");
    assert_eq!(attempts(&delivery)[0]["status_code"], json!(500));
}

#[tokio::test]
async fn an_edit_to_the_endpoint_applies_to_the_next_retry() {
    let app =
        spawn_stepped_app_with(|config| config.delivery.retry_schedule = vec![Duration::from_secs(1)]).await;
    let receiver = Receiver::start().await;
    receiver.respond("/old", Reply::status(500));
    app.create_event_type("order.created").await;
    let (tenant, endpoint) = app.tenant_with_endpoint(&receiver.url("/old"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);
    let delivery = first_attempt_recorded(&app, &tenant, &event).await;
    let patch = json!({"url": receiver.url("/new"), "headers": {"X-Version": "2"}});
    app.patch(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint)), &app.admin_token, &patch)
        .await
        .expect(200);
    let retried = app.received(&receiver, "/new", 1, SOON).await.remove(0);
    assert_eq!(retried.header("webhook-id"), Some(event.as_str()));
    assert_eq!(retried.header("x-version"), Some("2"));
    app.settled(&tenant, &delivery, "delivered", SOON).await;
    assert_eq!(receiver.requests("/old").len(), 1);
}

/// Claims go round the endpoints with due work: each claim starts after the endpoint the last
/// one served, so a cycle with one free slot serves every endpoint in turn, not the same one.
#[tokio::test]
async fn claims_serve_endpoints_in_turn() {
    let app = spawn_app_with(|c| c.dispatcher_enabled = false).await;
    app.create_event_type("order.paid").await;
    let tenant = id_of(&app.create_tenant().await);
    let mut endpoints = BTreeSet::new();
    for n in 0..3 {
        endpoints
            .insert(id_of(&app.add_endpoint(&tenant, &format!("http://127.0.0.1:9/{n}"), json!({})).await));
    }
    for n in 0..2 {
        app.emit(&tenant, "order.paid", &json!({"n": n})).await;
    }
    let config = Config { database_url: app.db.url.clone(), ..Config::default() };
    let store = herald::storage::connect(&config).await.unwrap();
    let mut served = Vec::new();
    for _ in 0..6 {
        let claimed = store.claim_due(1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        served.push(claimed[0].endpoint_id.clone());
    }
    for round in served.chunks(3) {
        assert_eq!(
            round.iter().cloned().collect::<BTreeSet<_>>(),
            endpoints,
            "each round serves all three: {served:?}"
        );
    }
    assert!(store.claim_due(1, Duration::from_secs(30)).await.unwrap().is_empty(), "all six are claimed");
}

/// `lag_seconds` measures how long a due delivery has waited to be sent (what
/// `herald_delivery_lag_seconds` reports); `oldest_pending_age_seconds` how long ago the oldest
/// pending one was accepted, retries included.
#[tokio::test]
async fn stats_tell_delivery_lag_from_the_age_of_the_oldest_pending_delivery() {
    let (app, _receiver, tenant, endpoint) = failing_endpoint_retrying_in_a_minute().await;
    let stats_path = format!("/v1/tenants/{tenant}/endpoints/{}/stats", id_of(&endpoint));
    let event = id_of(&app.emit(&tenant, "order.created", &json!({})).await);

    // Not yet sent: due and waiting, so it lags.
    let waiting = crate::helpers::eventually(SOON, "the due delivery to show lag", || async {
        let stats = app.get(&stats_path, &app.admin_token).await;
        (stats.body["lag_seconds"].as_f64().unwrap_or(0.0) > 0.0).then_some(stats)
    })
    .await;
    assert!(waiting.body["oldest_pending_age_seconds"].as_f64().unwrap() > 0.0, "{}", waiting.text);
    let ranked = app.get(&format!("/v1/tenants/{tenant}/stats/endpoints?sort=lag"), &app.admin_token).await;
    assert!(ranked.body["totals"]["lag_seconds"].as_f64().unwrap() > 0.0, "{}", ranked.text);

    // Failed once and waiting for its retry a minute away: pending, but not lagging.
    first_attempt_recorded(&app, &tenant, &event).await;
    let retrying = app.get(&stats_path, &app.admin_token).await;
    assert_eq!(retrying.body["pending"], json!(1), "{}", retrying.text);
    assert_eq!(retrying.body["lag_seconds"], json!(0.0), "{}", retrying.text);
    assert!(retrying.body["oldest_pending_age_seconds"].as_f64().unwrap() > 0.0, "{}", retrying.text);
}

/// The series routes chart what the rollup recorded: one point per minute of the hour, attempts
/// and failures in the bucket they happened in, per endpoint and across every endpoint.
#[tokio::test]
async fn stats_series_chart_attempts_and_failures_per_bucket() {
    let app = spawn_stepped_app_with(|config| config.delivery.retry_schedule = vec![]).await;
    let receiver = Receiver::start().await;
    receiver.respond("/down", Reply::status(500));
    app.create_event_type("order.created").await;
    let (tenant, up) = app.tenant_with_endpoint(&receiver.url("/up"), json!({})).await;
    let down = app.add_endpoint(&tenant, &receiver.url("/down"), json!({})).await;
    for n in 0..3 {
        app.emit(&tenant, "order.created", &json!({"n": n})).await;
    }
    app.received(&receiver, "/up", 3, SOON).await;
    app.until(SOON, "every failure recorded", || async {
        (app.deliveries(&tenant, "status=failed").await.len() == 3).then_some(())
    })
    .await;

    let sum = |series: &Value, field: &str| -> i64 {
        series["points"].as_array().unwrap().iter().map(|p| p[field].as_i64().unwrap()).sum()
    };
    let path = |ep: &Value| format!("/v1/tenants/{tenant}/endpoints/{}/stats/series?window=1h", id_of(ep));
    let failing = app.get(&path(&down), &app.admin_token).await;
    failing.expect(200);
    assert_eq!(failing.body["step"], json!("1m"));
    assert_eq!(failing.body["points"].as_array().unwrap().len(), 60, "{}", failing.text);
    assert_eq!((sum(&failing.body, "attempts"), sum(&failing.body, "failures")), (3, 3));
    let last =
        failing.body["points"].as_array().unwrap().iter().rev().find(|p| p["attempts"] != json!(0)).unwrap();
    assert!(last["p95"].is_i64(), "latency where there were attempts: {last}");
    let healthy = app.get(&path(&up), &app.admin_token).await;
    assert_eq!((sum(&healthy.body, "attempts"), sum(&healthy.body, "failures")), (3, 0));

    let everything = app.admin_get("/v1/stats/series?window=24h").await;
    everything.expect(200);
    assert_eq!(everything.body["step"], json!("1h"));
    assert_eq!(everything.body["points"].as_array().unwrap().len(), 24);
    assert_eq!((sum(&everything.body, "attempts"), sum(&everything.body, "failures")), (6, 3));
    let (_, tenant_token) = app.create_tenant_and_token().await;
    app.get("/v1/stats/series", &tenant_token).await.expect_problem(403);
    app.admin_get("/v1/stats/series?window=2h").await.expect_invalid("window");
}
