//! Security: the send-time address guard (a name resolving to an internal address, an
//! allow-listed range, a redirect to an internal address), secrets encrypted at rest and rekeyed,
//! per-token rate limits, and the abuse caps.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::helpers::{TestApp, eventually, fast_retries, id_of, spawn_app_on, spawn_app_with};
use crate::receiver::{Receiver, Reply};

/// A host name (not `localhost`) that resolves only to addresses the guard refuses, such as the
/// machine's own name; `None` when this machine has none.
async fn internal_name() -> Option<String> {
    let mut candidates = vec!["runsc".to_owned(), "vm".to_owned()];
    if let Ok(output) = std::process::Command::new("hostname").output() {
        candidates.insert(0, String::from_utf8_lossy(&output.stdout).trim().to_owned());
    }
    for name in candidates.into_iter().filter(|n| !n.is_empty() && n != "localhost") {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), 443)).await {
            Ok(addrs) => addrs.collect(),
            Err(_) => continue,
        };
        if !addrs.is_empty() && addrs.iter().all(|a| herald::domain::net::is_blocked(a.ip())) {
            return Some(name);
        }
    }
    None
}

async fn first_attempt(app: &TestApp, tenant: &str, event: &str) -> serde_json::Value {
    let delivery = app.only_delivery(tenant, event).await;
    let id = delivery["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "the first attempt to be recorded", || async {
        let delivery = app.delivery(tenant, &id).await;
        delivery["attempts"][0]["duration_ms"].is_number().then_some(delivery)
    })
    .await
}

#[tokio::test]
async fn a_name_that_resolves_to_an_internal_address_is_refused_at_send_time() {
    let Some(name) = internal_name().await else {
        eprintln!("skipped: no host name on this machine resolves only to an internal address");
        return;
    };
    let app = spawn_app_with(|c| {
        c.dev = false;
        fast_retries(c);
    })
    .await;
    app.create_event_type("order.paid").await;
    // Registration cannot know where a name will point later: it is accepted…
    let (tenant, _) = app.tenant_with_endpoint(&format!("https://{name}:9/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    // …and refused when it resolves, with one attempt and no retry.
    let delivery = first_attempt(&app, &tenant, &event).await;
    let delivery =
        app.settled(&tenant, delivery["id"].as_str().unwrap(), "failed", Duration::from_secs(10)).await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{delivery}");
    assert_eq!(attempts[0]["error_kind"], "blocked_address", "{delivery}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("blocked address"));
}

#[tokio::test]
async fn literal_internal_addresses_are_refused_at_registration_outside_dev_mode_unless_allow_listed() {
    let closed = spawn_app_with(|c| c.dev = false).await;
    let (tenant, token) = closed.create_tenant_and_token().await;
    for url in
        ["https://169.254.169.254/latest/meta-data", "https://10.0.0.5/x", "https://[::ffff:127.0.0.1]/x"]
    {
        closed
            .post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &json!({"url": url}))
            .await
            .expect_invalid("url");
    }

    // Allow-listed: accepted, and at send time the guard lets the connection through (the plain
    // HTTP receiver cannot answer TLS, so the attempt fails for that reason, not as blocked).
    let receiver = Receiver::start().await;
    let port = receiver.base_url.rsplit(':').next().unwrap().to_owned();
    let open = spawn_app_with(|c| {
        c.dev = false;
        c.delivery.retry_schedule = vec![];
        c.security.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    open.create_event_type("order.paid").await;
    let (tenant, _) = open.tenant_with_endpoint(&format!("https://127.0.0.1:{port}/hook"), json!({})).await;
    let event = id_of(&open.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = first_attempt(&open, &tenant, &event).await;
    let kind = delivery["attempts"][0]["error_kind"].as_str().unwrap().to_owned();
    assert_ne!(kind, "blocked_address", "{delivery}");
    assert!(["tls", "connect", "other", "timeout"].contains(&kind.as_str()), "{delivery}");
}

#[tokio::test]
async fn a_redirect_to_an_internal_address_is_not_followed() {
    // A receiver whose /hook answers 302 to /internal; /internal must never be requested.
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::redirect(&receiver.url("/internal")));
    let app = spawn_app_with(|c| c.delivery.retry_schedule = vec![]).await;
    app.create_event_type("order.paid").await;
    let (tenant, _) = app.tenant_with_endpoint(&receiver.url("/hook"), json!({})).await;
    let event = id_of(&app.emit(&tenant, "order.paid", &json!({})).await);
    let delivery = first_attempt(&app, &tenant, &event).await;
    assert_eq!(delivery["attempts"][0]["status_code"], 302, "{delivery}");
    app.settled(&tenant, delivery["id"].as_str().unwrap(), "failed", Duration::from_secs(10)).await;
    assert_eq!(receiver.requests("/hook").len(), 1);
    assert!(receiver.requests("/internal").is_empty(), "the redirect was followed");
}

/// The stored secret and header column of one endpoint, as bytes on disk.
async fn stored_columns(app: &TestApp, endpoint: &str) -> (String, String) {
    let sql = "select secret, headers from endpoints where id = $1";
    if app.db.url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
        let row: (String, String) = sqlx::query_as(sql).bind(endpoint).fetch_one(&pool).await.unwrap();
        pool.close().await;
        row
    } else {
        let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
        let row: (String, String) = sqlx::query_as(sql).bind(endpoint).fetch_one(&pool).await.unwrap();
        pool.close().await;
        row
    }
}

fn key(byte: u8) -> herald::config::Redacted {
    herald::config::Redacted(STANDARD.encode([byte; 32]))
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_rekeying_keeps_deliveries_verifiable() {
    let receiver = Receiver::start().await;
    receiver.respond("/hook", Reply::ok());
    let app = spawn_app_with(|c| c.secret_key = Some(key(1))).await;
    app.create_event_type("order.paid").await;
    let (tenant, endpoint) = app
        .tenant_with_endpoint(&receiver.url("/hook"), json!({"headers": {"X-Api-Key": "very-private-value"}}))
        .await;
    let ep = id_of(&endpoint);
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let (stored_secret, stored_headers) = stored_columns(&app, &ep).await;
    assert!(stored_secret.starts_with("enc:v1:"), "{stored_secret}");
    assert!(!stored_secret.contains(secret.trim_start_matches("whsec_")));
    assert!(!stored_headers.contains("very-private-value"), "{stored_headers}");
    // The API and the wire still see the real values.
    let shown = app.get(&format!("/v1/tenants/{tenant}/endpoints/{ep}/secret"), &app.admin_token).await;
    assert_eq!(shown.body["secret"], secret.as_str());
    app.emit(&tenant, "order.paid", &json!({"n": 1})).await;
    let first = receiver.wait_for("/hook", 1, Duration::from_secs(10)).await;
    assert_eq!(first[0].header("x-api-key"), Some("very-private-value"));
    let webhook = standardwebhooks::Webhook::new(&secret).unwrap();
    webhook.verify(&first[0].body, &first[0].headers).expect("signed with the endpoint's secret");

    // Rekey to a new master key, then run with the new key alone.
    let db = app.db.clone();
    app.stop().await.unwrap();
    let mut config = herald::config::Config { database_url: db.url.clone(), ..Default::default() };
    config.secret_key = Some(key(2));
    config.previous_secret_keys = vec![key(1)];
    let store = herald::storage::connect(&config).await.unwrap();
    assert!(store.rekey_secrets().await.unwrap() >= 1);
    assert_eq!(store.rekey_secrets().await.unwrap(), 0, "a second rekey finds nothing to do");
    store.close().await;
    let restarted = spawn_app_on(db.clone(), |c| c.secret_key = Some(key(2))).await;
    restarted.emit(&tenant, "order.paid", &json!({"n": 2})).await;
    let both = receiver.wait_for("/hook", 2, Duration::from_secs(10)).await;
    webhook.verify(&both[1].body, &both[1].headers).expect("still signed with the same endpoint secret");
    assert_eq!(both[1].header("x-api-key"), Some("very-private-value"));
    restarted.stop().await.unwrap();

    // Starting with a key that cannot open the stored secrets is refused with a clear message.
    let mut wrong = crate::helpers::test_config(&db);
    wrong.secret_key = Some(key(3));
    let error = herald::app::App::build(wrong).await.err().expect("refused");
    assert!(format!("{error:#}").contains("not configured"), "{error:#}");
}

#[tokio::test]
async fn per_token_rate_limits_answer_429_with_retry_after_and_recover() {
    let app = spawn_app_with(|c| c.security.tenant_rate_limit = 2).await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let path = format!("/v1/tenants/{tenant}/endpoints");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let response = app.get(&path, &token).await;
        if response.status == 429 {
            response.expect_problem(429);
            retry_after =
                response.headers.get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        }
        statuses.push(response.status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let wait = retry_after.expect("Retry-After on 429");
    assert!((1..=2).contains(&wait), "{wait}");
    // The admin token is not limited by default, and is unaffected by the tenant's budget.
    for _ in 0..10 {
        app.get(&path, &app.admin_token).await.expect(200);
    }
    // It recovers once the budget refills, about `Retry-After` later.
    eventually(Duration::from_secs(wait + 10), "the tenant's budget to refill", || async {
        (app.get(&path, &token).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn abuse_caps_hold_for_endpoints_per_tenant_and_header_size() {
    let app = spawn_app_with(|c| c.api.max_endpoints_per_tenant = 2).await;
    let (tenant, token) = app.create_tenant_and_token().await;
    for n in 0..2 {
        app.create_endpoint(&tenant, &token, &json!({"url": format!("http://127.0.0.1:9/{n}")})).await;
    }
    app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &json!({"url": "http://127.0.0.1:9/3"}))
        .await
        .expect_problem(409);
    let huge = "x".repeat(20 * 1024);
    let response = app
        .client
        .get(app.url(&format!("/v1/tenants/{tenant}/endpoints")))
        .bearer_auth(&token)
        .header("x-padding", huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
}

#[tokio::test]
async fn revoking_a_token_from_the_command_line_stops_it_at_once() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = id_of(&app.create_tenant().await);
    let created =
        app.post(&format!("/v1/tenants/{tenant}/tokens"), &app.admin_token, &json!({"name": "cli"})).await;
    let (id, token) = (id_of(&created.body), created.body["token"].as_str().unwrap().to_owned());
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect(200);
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "revoke", &id])
        .current_dir(dir.path())
        .env("HERALD_DATABASE_URL", &app.db.url)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect_problem(401);
}
