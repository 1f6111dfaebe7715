//! Endpoints: URL, subscription, header, secret and option rules; masking; tenant confinement.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_id, assert_time, id_of, spawn_app, spawn_app_with};

const URL: &str = "http://127.0.0.1:9/hook";

/// A valid supplied secret of `n` random-looking bytes.
fn secret_of(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
    format!("whsec_{}", STANDARD.encode(bytes))
}

async fn endpoint_ids(app: &TestApp, tenant: &str) -> Vec<String> {
    let list = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints?limit=250")).await;
    list.expect(200);
    list.data().iter().map(id_of).collect()
}

/// Posts each body and expects 422 naming `field`, then checks nothing was stored.
async fn assert_all_refused(app: &TestApp, tenant: &str, token: &str, field: &str, bodies: &[Value]) {
    let before = endpoint_ids(app, tenant).await;
    for body in bodies {
        let response = app.post(&format!("/v1/tenants/{tenant}/endpoints"), token, body).await;
        assert_eq!(response.status.as_u16(), 422, "{body}: {}", response.text);
        response.expect_invalid(field);
    }
    assert_eq!(endpoint_ids(app, tenant).await, before, "a refused endpoint was stored");
}

#[tokio::test]
async fn creating_an_endpoint_returns_it_with_defaults_and_a_secret() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let response = app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &json!({"url": URL})).await;
    response.expect(201);
    let endpoint = &response.body;
    assert_id("ep", &endpoint["id"]);
    assert_eq!(endpoint["tenant_id"], json!(tenant));
    assert_eq!(endpoint["url"], json!(URL));
    assert_eq!(endpoint["event_types"], json!([]));
    assert_eq!(endpoint["enabled"], json!(true));
    assert!(endpoint["disabled_reason"].is_null());
    assert_eq!(endpoint["headers"], json!({}));
    assert_eq!(endpoint["fifo"], json!(false));
    assert_eq!(endpoint["max_in_flight"], Value::Null, "null: the server's cap");
    assert_eq!(endpoint["effective_in_flight"], json!(10), "the adaptive window starts at 10");
    assert_eq!(
        endpoint["circuit"],
        json!({"state": "closed", "opened_at": null, "next_probe_at": null, "consecutive_failures": 0})
    );
    assert!(endpoint["rate_limit_per_second"].is_null());
    assert!(endpoint["description"].is_string() || endpoint["description"].is_null());
    assert_time(&endpoint["created_at"]);
    assert_time(&endpoint["updated_at"]);
    let secret = endpoint["secret"].as_str().expect("secret on create");
    let raw = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).expect("base64");
    assert_eq!(raw.len(), 32);

    let id = id_of(endpoint);
    let fetched = app.get(&format!("/v1/tenants/{tenant}/endpoints/{id}"), &token).await;
    fetched.expect(200);
    assert!(fetched.body.get("secret").is_none(), "secret only on create: {}", fetched.text);
    let mut without_secret = endpoint.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    without_secret.as_object_mut().unwrap().remove("public_key");
    assert_eq!(fetched.body, without_secret);

    let secret_response = app.get(&format!("/v1/tenants/{tenant}/endpoints/{id}/secret"), &token).await;
    secret_response.expect(200);
    assert_eq!(secret_response.body["secret"], json!(secret));
    assert!(secret_response.body["previous_secret_expires_at"].is_null());

    let list = app.get(&format!("/v1/tenants/{tenant}/endpoints"), &token).await;
    list.expect(200);
    assert_eq!(list.data(), &vec![without_secret]);
    assert!(!list.text.contains(secret));
}

#[tokio::test]
async fn every_field_given_on_create_is_kept() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let secret = secret_of(32);
    let body = json!({
        "url": "https://example.com/hooks?src=herald",
        "description": "orders to the ERP",
        "event_types": ["order.created", "billing.*"],
        "headers": {"X-Api-Key": "k-123", "Authorization": "Bearer abc"},
        "enabled": false,
        "fifo": true,
        "max_in_flight": 3,
        "rate_limit_per_second": 50,
        "secret": secret,
    });
    let endpoint = app.create_endpoint(&tenant, &token, &body).await;
    assert_eq!(endpoint["url"], body["url"]);
    assert_eq!(endpoint["description"], body["description"]);
    assert_eq!(endpoint["event_types"], body["event_types"]);
    assert_eq!(endpoint["headers"], json!({"X-Api-Key": "********", "Authorization": "********"}));
    assert_eq!(endpoint["enabled"], json!(false));
    assert_eq!(endpoint["fifo"], json!(true));
    assert_eq!(endpoint["max_in_flight"], json!(3));
    assert_eq!(endpoint["rate_limit_per_second"], json!(50));
    assert_eq!(endpoint["secret"], json!(secret));
    let id = id_of(&endpoint);
    let stored = app.get(&format!("/v1/tenants/{tenant}/endpoints/{id}/secret"), &token).await;
    assert_eq!(stored.body["secret"], json!(secret));
}

#[tokio::test]
async fn custom_header_values_are_masked_in_every_response() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let value = "very-secret-credential-value";
    let body = json!({"url": URL, "headers": {"X-Api-Key": value}});
    let created = app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &body).await;
    created.expect(201);
    let id = id_of(&created.body);
    let path = format!("/v1/tenants/{tenant}/endpoints/{id}");
    let fetched = app.get(&path, &token).await;
    let listed = app.get(&format!("/v1/tenants/{tenant}/endpoints"), &token).await;
    let patched = app.patch(&path, &token, &json!({"description": "touched"})).await;
    patched.expect(200);
    let repatched =
        app.patch(&path, &token, &json!({"headers": {"X-Api-Key": "another-secret-value"}})).await;
    repatched.expect(200);
    for response in [&created, &fetched, &listed, &patched, &repatched] {
        assert!(!response.text.contains(value), "header value leaked: {}", response.text);
        assert!(!response.text.contains("another-secret-value"), "header value leaked: {}", response.text);
        assert!(response.text.contains("********"), "{}", response.text);
    }
    assert_eq!(repatched.body["headers"]["X-Api-Key"], json!("********"));
}

#[tokio::test]
async fn a_supplied_secret_must_be_whsec_and_base64_of_24_to_64_bytes() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let raw = STANDARD.encode([7u8; 32]);
    let bodies: Vec<Value> = [
        raw.clone(),
        format!("whsec_{}", "not base64!"),
        secret_of(16),
        secret_of(23),
        secret_of(65),
        "whsec_".to_owned(),
        format!("wh_{raw}"),
    ]
    .into_iter()
    .map(|secret| json!({"url": URL, "secret": secret}))
    .collect();
    assert_all_refused(&app, &tenant, &token, "secret", &bodies).await;
    for n in [24, 64] {
        let secret = secret_of(n);
        let endpoint = app.create_endpoint(&tenant, &token, &json!({"url": URL, "secret": secret})).await;
        assert_eq!(endpoint["secret"], json!(secret));
    }
}

#[tokio::test]
async fn invalid_urls_are_refused() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let too_long = format!("https://example.com/{}", "a".repeat(2049 - 20));
    assert_eq!(too_long.len(), 2049);
    let bodies: Vec<Value> = [
        "not a url",
        "/relative/path",
        "example.com/hook",
        "ftp://example.com/hook",
        "https://user:pw@example.com/hook",
        "https://user@example.com/hook",
        "https://example.com/hook#fragment",
        "https://",
        "",
        too_long.as_str(),
    ]
    .into_iter()
    .map(|url| json!({"url": url}))
    .collect();
    assert_all_refused(&app, &tenant, &token, "url", &bodies).await;
    let longest = format!("https://example.com/{}", "a".repeat(2048 - 20));
    app.create_endpoint(&tenant, &token, &json!({"url": longest})).await;
}

#[tokio::test]
async fn creating_an_endpoint_with_an_http_url_outside_dev_mode_is_refused() {
    let app = spawn_app_with(|config| config.dev = false).await;
    let (tenant, token) = app.create_tenant_and_token().await;
    assert_all_refused(&app, &tenant, &token, "url", &[json!({"url": "http://example.com/hook"})]).await;
    app.create_endpoint(&tenant, &token, &json!({"url": "https://example.com/hook"})).await;
}

#[tokio::test]
async fn creating_an_endpoint_at_a_private_address_outside_dev_mode_is_refused() {
    let app = spawn_app_with(|config| config.dev = false).await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let bodies: Vec<Value> = [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
    ]
    .into_iter()
    .map(|url| json!({"url": url}))
    .collect();
    assert_all_refused(&app, &tenant, &token, "url", &bodies).await;
}

#[tokio::test]
async fn subscriptions_accept_wildcards_and_existing_names_only() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    app.create_event_type("order.archived_one").await;
    app.delete("/v1/event-types/order.archived_one", &app.admin_token).await.expect(204);
    let (tenant, token) = app.create_tenant_and_token().await;

    let before = endpoint_ids(&app, &tenant).await;
    for (event_types, field) in [
        (json!(["order.created", "no.such_type"]), "event_types[1]"),
        (json!(["order.archived_one"]), "event_types[0]"),
        (json!(["Order.*"]), "event_types[0]"),
        (json!(["order*"]), "event_types[0]"),
        (json!(["*.created"]), "event_types[0]"),
        (json!(["order"]), "event_types[0]"),
    ] {
        let body = json!({"url": URL, "event_types": event_types});
        let response = app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{event_types}: {}", response.text);
        response.expect_invalid(field);
    }
    assert_eq!(endpoint_ids(&app, &tenant).await, before);

    for event_types in
        [json!(["*"]), json!(["nothing.yet.*"]), json!(["order.created", "order.*"]), json!([])]
    {
        let endpoint =
            app.create_endpoint(&tenant, &token, &json!({"url": URL, "event_types": event_types})).await;
        assert_eq!(endpoint["event_types"], event_types);
    }
}

#[tokio::test]
async fn reserved_and_malformed_custom_headers_are_refused() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let before = endpoint_ids(&app, &tenant).await;
    for (name, value) in [
        ("X-Ok", "line\r\nInjected: yes"),
        ("X-Ok", "line\nbreak"),
        ("bad header", "x"),
        ("X(bad)", "x"),
        ("webhook-id", "x"),
        ("Webhook-Signature", "x"),
        ("Content-Type", "text/plain"),
        ("user-agent", "evil"),
        ("Host", "evil.example"),
    ] {
        let body = json!({"url": URL, "headers": {name: value}});
        let response = app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{name}: {value:?}: {}", response.text);
        response.expect_invalid(&format!("headers.{name}"));
    }
    let body = json!({"url": URL, "headers": {"X-Key": "1", "x-key": "2"}});
    let response = app.post(&format!("/v1/tenants/{tenant}/endpoints"), &token, &body).await;
    response.expect_problem(422);
    let fields: Vec<&str> =
        response.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert!(
        fields.iter().any(|f| f.eq_ignore_ascii_case("headers.x-key")),
        "the same header twice: {}",
        response.text
    );
    assert_eq!(endpoint_ids(&app, &tenant).await, before);
}

#[tokio::test]
async fn at_most_20_custom_headers_are_accepted() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let headers = |n: usize| -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("X-H{i}"), format!("v{i}"))).collect()
    };
    assert_all_refused(&app, &tenant, &token, "headers", &[json!({"url": URL, "headers": headers(21)})])
        .await;
    let endpoint = app.create_endpoint(&tenant, &token, &json!({"url": URL, "headers": headers(20)})).await;
    assert_eq!(endpoint["headers"].as_object().unwrap().len(), 20);
}

#[tokio::test]
async fn max_in_flight_and_rate_limit_must_be_in_range() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let bodies: Vec<Value> = [json!(0), json!(1001), json!(-1)]
        .into_iter()
        .map(|n| json!({"url": URL, "max_in_flight": n}))
        .collect();
    assert_all_refused(&app, &tenant, &token, "max_in_flight", &bodies).await;
    let bodies: Vec<Value> = [json!(0), json!(100_001), json!(-5)]
        .into_iter()
        .map(|n| json!({"url": URL, "rate_limit_per_second": n}))
        .collect();
    assert_all_refused(&app, &tenant, &token, "rate_limit_per_second", &bodies).await;
    for (max_in_flight, rate) in [(1, json!(1)), (1000, json!(100_000)), (10, Value::Null)] {
        let body = json!({"url": URL, "max_in_flight": max_in_flight, "rate_limit_per_second": rate});
        let endpoint = app.create_endpoint(&tenant, &token, &body).await;
        assert_eq!(endpoint["max_in_flight"], json!(max_in_flight));
        assert_eq!(endpoint["rate_limit_per_second"], rate);
    }
}

#[tokio::test]
async fn patching_an_endpoint_changes_only_the_given_fields() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let created = app
        .create_endpoint(
            &tenant,
            &token,
            &json!({"url": URL, "description": "first", "rate_limit_per_second": 5}),
        )
        .await;
    let id = id_of(&created);
    let path = format!("/v1/tenants/{tenant}/endpoints/{id}");

    let response = app.patch(&path, &token, &json!({"description": "second"})).await;
    response.expect(200);
    assert_eq!(response.body["description"], json!("second"));
    for field in [
        "url",
        "event_types",
        "enabled",
        "headers",
        "fifo",
        "max_in_flight",
        "rate_limit_per_second",
        "created_at",
    ] {
        assert_eq!(response.body[field], created[field], "{field} changed");
    }
    assert!(response.body.get("secret").is_none());

    let changes = json!({
        "url": "https://example.com/new",
        "event_types": ["order.created"],
        "headers": {"X-Token": "t"},
        "enabled": false,
        "fifo": true,
        "max_in_flight": 1,
        "rate_limit_per_second": null,
    });
    let response = app.patch(&path, &token, &changes).await;
    response.expect(200);
    assert_eq!(response.body["url"], changes["url"]);
    assert_eq!(response.body["event_types"], changes["event_types"]);
    assert_eq!(response.body["headers"]["X-Token"], json!("********"));
    assert_eq!(response.body["enabled"], json!(false));
    assert_eq!(response.body["fifo"], json!(true));
    assert_eq!(response.body["max_in_flight"], json!(1));
    assert!(response.body["rate_limit_per_second"].is_null(), "null removes the limit: {}", response.text);
    assert_eq!(response.body["description"], json!("second"));
    assert!(response.body["updated_at"].as_str() >= created["updated_at"].as_str());
    let fetched = app.get(&path, &token).await;
    assert_eq!(fetched.body, response.body);

    let response = app.patch(&path, &token, &json!({"enabled": true})).await;
    response.expect(200);
    assert_eq!(response.body["enabled"], json!(true));
    assert!(response.body["disabled_reason"].is_null());
}

#[tokio::test]
async fn an_invalid_endpoint_patch_changes_nothing() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let created = app.create_endpoint(&tenant, &token, &json!({"url": URL})).await;
    let id = id_of(&created);
    let path = format!("/v1/tenants/{tenant}/endpoints/{id}");
    let secret_before = app.get(&format!("{path}/secret"), &token).await.body;
    for (patch, field) in [
        (json!({"url": "ftp://example.com"}), Some("url")),
        (json!({"event_types": ["no.such_type"]}), Some("event_types[0]")),
        (json!({"headers": {"Host": "x"}}), Some("headers.Host")),
        (json!({"max_in_flight": 0}), Some("max_in_flight")),
        (json!({"rate_limit_per_second": 0}), Some("rate_limit_per_second")),
        (json!({"secret": secret_of(32)}), None),
        (json!({"id": "ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"}), None),
        (json!({"enabled": "no"}), None),
    ] {
        let response = app.patch(&path, &token, &patch).await;
        assert_eq!(response.status.as_u16(), 422, "{patch}: {}", response.text);
        match field {
            Some(field) => response.expect_invalid(field),
            None => response.expect_problem(422),
        };
    }
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("secret");
    expected.as_object_mut().unwrap().remove("public_key");
    assert_eq!(app.get(&path, &token).await.body, expected);
    assert_eq!(app.get(&format!("{path}/secret"), &token).await.body, secret_before);
}

#[tokio::test]
async fn deleting_an_endpoint_removes_it() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let gone = app.create_endpoint(&tenant, &token, &json!({"url": URL})).await;
    let kept = app.create_endpoint(&tenant, &token, &json!({"url": URL})).await;
    let path = format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&gone));
    let response = app.delete(&path, &token).await;
    response.expect(204);
    assert!(response.text.is_empty());
    app.get(&path, &token).await.expect_problem(404);
    app.get(&format!("{path}/secret"), &token).await.expect_problem(404);
    app.patch(&path, &token, &json!({"description": "x"})).await.expect_problem(404);
    app.delete(&path, &token).await.expect_problem(404);
    assert_eq!(endpoint_ids(&app, &tenant).await, vec![id_of(&kept)]);
}

#[tokio::test]
async fn unknown_endpoints_answer_404() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    for id in ["ep_01ARZ3NDEKTSV4RRFFQ69G5FAV", "garbage", "tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
        let path = format!("/v1/tenants/{tenant}/endpoints/{id}");
        app.get(&path, &token).await.expect_problem(404);
        app.get(&format!("{path}/secret"), &token).await.expect_problem(404);
        app.patch(&path, &token, &json!({"description": "x"})).await.expect_problem(404);
        app.delete(&path, &token).await.expect_problem(404);
    }
}

#[tokio::test]
async fn a_tenant_token_cannot_see_or_touch_another_tenants_endpoints() {
    let app = spawn_app().await;
    let (a, token_a) = app.create_tenant_and_token().await;
    let (b, token_b) = app.create_tenant_and_token().await;
    let ep_a = app.create_endpoint(&a, &token_a, &json!({"url": URL, "description": "a"})).await;
    let ep_b = app.create_endpoint(&b, &token_b, &json!({"url": URL, "description": "b"})).await;
    let (id_a, id_b) = (id_of(&ep_a), id_of(&ep_b));

    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/tenants/{a}/endpoints"), None),
        (Method::POST, format!("/v1/tenants/{a}/endpoints"), Some(json!({"url": URL}))),
        (Method::GET, format!("/v1/tenants/{a}/endpoints/{id_a}"), None),
        (Method::GET, format!("/v1/tenants/{a}/endpoints/{id_a}/secret"), None),
        (Method::PATCH, format!("/v1/tenants/{a}/endpoints/{id_a}"), Some(json!({"description": "pwned"}))),
        (Method::DELETE, format!("/v1/tenants/{a}/endpoints/{id_a}"), None),
        // Its own tenant in the path, the other tenant's endpoint id.
        (Method::GET, format!("/v1/tenants/{b}/endpoints/{id_a}"), None),
        (Method::GET, format!("/v1/tenants/{b}/endpoints/{id_a}/secret"), None),
        (Method::PATCH, format!("/v1/tenants/{b}/endpoints/{id_a}"), Some(json!({"description": "pwned"}))),
        (Method::DELETE, format!("/v1/tenants/{b}/endpoints/{id_a}"), None),
    ];
    for (method, path, body) in &probes {
        let response = app.request(method.clone(), path, Some(&token_b), body.as_ref()).await;
        assert_eq!(response.status.as_u16(), 404, "{method} {path}: {}", response.text);
        response.expect_problem(404);
        assert!(!response.text.contains("whsec_"));
    }
    let mut expected = ep_a.clone();
    expected.as_object_mut().unwrap().remove("secret");
    expected.as_object_mut().unwrap().remove("public_key");
    let fetched = app.get(&format!("/v1/tenants/{a}/endpoints/{id_a}"), &token_a).await;
    assert_eq!(fetched.body, expected);
    assert_eq!(endpoint_ids(&app, &a).await, vec![id_a.clone()]);
    assert_eq!(endpoint_ids(&app, &b).await, vec![id_b.clone()]);

    // The admin token reaches both.
    app.admin_get(&format!("/v1/tenants/{a}/endpoints/{id_a}")).await.expect(200);
    app.admin_get(&format!("/v1/tenants/{b}/endpoints/{id_b}/secret")).await.expect(200);
}

#[tokio::test]
async fn endpoints_are_reachable_through_the_tenants_external_id() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    let token = app.create_tenant_token("acme").await;
    let endpoint = app.create_endpoint("acme", &token, &json!({"url": URL})).await;
    assert_eq!(endpoint["tenant_id"], tenant["id"]);
    let id = id_of(&endpoint);
    app.get(&format!("/v1/tenants/acme/endpoints/{id}"), &token).await.expect(200);
    app.get(&format!("/v1/tenants/{}/endpoints/{id}", id_of(&tenant)), &token).await.expect(200);
    app.get(&format!("/v1/tenants/acme/endpoints/{id}/secret"), &app.admin_token).await.expect(200);
    app.patch(&format!("/v1/tenants/acme/endpoints/{id}"), &token, &json!({"description": "x"}))
        .await
        .expect(200);
    app.delete(&format!("/v1/tenants/acme/endpoints/{id}"), &token).await.expect(204);
}

#[tokio::test]
async fn the_admin_token_may_create_endpoints_for_any_tenant() {
    let app = spawn_app().await;
    let tenant = id_of(&app.create_tenant().await);
    let endpoint = app.create_endpoint(&tenant, &app.admin_token, &json!({"url": URL})).await;
    assert_eq!(endpoint["tenant_id"], json!(tenant));
    let token = app.create_tenant_token(&tenant).await;
    app.get(&format!("/v1/tenants/{tenant}/endpoints/{}", id_of(&endpoint)), &token).await.expect(200);
}
