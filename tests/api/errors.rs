//! Request-level errors shared by every JSON route: malformed JSON, wrong types, unknown fields,
//! content types and body limits, all as `application/problem+json`.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The JSON creation routes, each with a valid body.
async fn creation_routes(app: &TestApp) -> Vec<(String, serde_json::Value)> {
    let (tenant, _) = app.create_tenant_and_token().await;
    vec![
        ("/v1/event-types".to_owned(), json!({"name": "order.created"})),
        ("/v1/tenants".to_owned(), json!({"name": "Acme"})),
        (format!("/v1/tenants/{tenant}/endpoints"), json!({"url": "http://127.0.0.1:9/hook"})),
        (format!("/v1/tenants/{tenant}/tokens"), json!({"name": "ci"})),
    ]
}

/// Counts of what the creation routes would add, to show nothing was stored.
async fn stored_counts(app: &TestApp) -> (usize, usize, usize, usize) {
    let tenants = app.admin_get("/v1/tenants?limit=250").await;
    let tenant = tenants.data().last().map(|t| t["id"].as_str().unwrap().to_owned()).unwrap_or_default();
    (
        app.admin_get("/v1/event-types?include_archived=true&limit=250").await.data().len(),
        tenants.data().len(),
        app.admin_get(&format!("/v1/tenants/{tenant}/endpoints?limit=250")).await.data().len(),
        app.admin_get(&format!("/v1/tokens?tenant={tenant}&limit=250")).await.data().len(),
    )
}

#[tokio::test]
async fn malformed_json_is_refused_with_400() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    for (path, _) in &routes {
        for body in ["{", "not json", "{,}", "", "nul"] {
            let response = app
                .send_raw(
                    Method::POST,
                    path,
                    Some(&app.admin_token),
                    Some("application/json"),
                    body.to_owned(),
                )
                .await;
            assert_eq!(response.status.as_u16(), 400, "POST {path} {body:?}: {}", response.text);
            response.expect_problem(400);
        }
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn wrong_types_missing_fields_and_unknown_fields_are_refused_with_422() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    for (path, valid) in &routes {
        let mut unknown = valid.clone();
        unknown["surprise"] = json!(true);
        let mut bodies = vec![json!("text"), json!(42), json!(null), unknown];
        let required = valid.as_object().unwrap().keys().next().unwrap().clone();
        let mut wrong_type = valid.clone();
        wrong_type[&required] = json!(12);
        bodies.push(wrong_type);
        if !path.ends_with("/tokens") {
            // `name` is optional on tokens; everything else has a required field.
            bodies.push(json!({}));
        }
        for body in &bodies {
            let response = app.post(path, &app.admin_token, body).await;
            assert_eq!(response.status.as_u16(), 422, "POST {path} {body}: {}", response.text);
            response.expect_problem(422);
        }
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn malformed_json_is_refused_with_400_even_after_a_wrong_field_or_type() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    for (path, _) in &routes {
        for body in ["{\"surprise\": }", "{\"surprise\": 1,,}", "[1,", "{\"name\": 5,"] {
            let response = app
                .send_raw(
                    Method::POST,
                    path,
                    Some(&app.admin_token),
                    Some("application/json"),
                    body.to_owned(),
                )
                .await;
            assert_eq!(response.status.as_u16(), 400, "POST {path} {body:?}: {}", response.text);
            response.expect_problem(400);
        }
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn a_json_array_in_place_of_an_object_is_refused_with_422() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    for (path, valid) in &routes {
        // serde accepts a struct written as a sequence of its fields unless told otherwise.
        let values: Vec<serde_json::Value> = valid.as_object().unwrap().values().cloned().collect();
        for body in [json!([]), json!(values), json!(["Acme", null, {}]), json!(["order.created", "", null])]
        {
            let response = app.post(path, &app.admin_token, &body).await;
            assert_eq!(response.status.as_u16(), 422, "POST {path} {body}: {}", response.text);
            response.expect_problem(422);
        }
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn an_unknown_field_is_named_in_the_error() {
    let app = spawn_app().await;
    let response = app.post("/v1/tenants", &app.admin_token, &json!({"name": "Acme", "nmae": "typo"})).await;
    response.expect_problem(422);
    assert!(response.text.contains("nmae"), "the unknown field is named: {}", response.text);
    assert!(app.admin_get("/v1/tenants").await.data().is_empty());
}

#[tokio::test]
async fn a_non_json_content_type_is_refused_with_415() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    for (path, valid) in &routes {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
            let response = app
                .send_raw(Method::POST, path, Some(&app.admin_token), Some(content_type), valid.to_string())
                .await;
            assert_eq!(response.status.as_u16(), 415, "POST {path} as {content_type}: {}", response.text);
            response.expect_problem(415);
        }
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let app = spawn_app().await;
    let response = app
        .send_raw(
            Method::POST,
            "/v1/tenants",
            Some(&app.admin_token),
            Some("application/json; charset=utf-8"),
            json!({"name": "Acme"}).to_string(),
        )
        .await;
    response.expect(201);
}

#[tokio::test]
async fn a_body_over_the_default_256_kib_limit_is_refused_with_413() {
    let app = spawn_app().await;
    let routes = creation_routes(&app).await;
    let before = stored_counts(&app).await;
    let padding = "x".repeat(300 * 1024);
    for (path, valid) in &routes {
        let mut body = valid.clone();
        body["description"] = json!(padding);
        let response = app.post(path, &app.admin_token, &body).await;
        assert_eq!(
            response.status.as_u16(),
            413,
            "POST {path}: {}",
            &response.text[..response.text.len().min(300)]
        );
        response.expect_problem(413);
    }
    assert_eq!(stored_counts(&app).await, before);
}

#[tokio::test]
async fn the_body_limit_follows_the_configuration() {
    let app = spawn_app_with(|config| config.api.body_limit = 2048).await;
    let small = app.post("/v1/tenants", &app.admin_token, &json!({"name": "x".repeat(200)})).await;
    small.expect(201);
    let big = app
        .post(
            "/v1/tenants",
            &app.admin_token,
            &json!({"name": "Big", "metadata": {"blob": "y".repeat(3000)}}),
        )
        .await;
    big.expect_problem(413);
    assert_eq!(app.admin_get("/v1/tenants").await.data().len(), 1);
}

#[tokio::test]
async fn patch_routes_refuse_bad_bodies_and_change_nothing() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    let endpoint =
        app.create_endpoint("acme", &app.admin_token, &json!({"url": "http://127.0.0.1:9/hook"})).await;
    let paths = [
        "/v1/event-types/order.created".to_owned(),
        "/v1/tenants/acme".to_owned(),
        format!("/v1/tenants/acme/endpoints/{}", endpoint["id"].as_str().unwrap()),
    ];
    let snapshot = async || {
        let mut out = Vec::new();
        for path in &paths {
            out.push(app.admin_get(path).await.body);
        }
        out
    };
    let before = snapshot().await;
    for path in &paths {
        for (content_type, body, status) in [
            ("application/json", "{".to_owned(), 400),
            ("application/json", "{\"description\": 5}".to_owned(), 422),
            ("application/json", "{\"surprise\": true}".to_owned(), 422),
            ("application/json", "\"text\"".to_owned(), 422),
            ("text/plain", "{\"description\": \"x\"}".to_owned(), 415),
            ("application/json", format!("{{\"description\": \"{}\"}}", "x".repeat(300 * 1024)), 413),
        ] {
            let response = app
                .send_raw(Method::PATCH, path, Some(&app.admin_token), Some(content_type), body.clone())
                .await;
            assert_eq!(
                response.status.as_u16(),
                status,
                "PATCH {path} {content_type} {}: {}",
                &body[..body.len().min(40)],
                &response.text[..response.text.len().min(300)]
            );
            response.expect_problem(status);
        }
    }
    assert_eq!(snapshot().await, before);
    assert_eq!(before[1], tenant);
}

#[tokio::test]
async fn nul_characters_and_invalid_utf8_in_the_path_or_query_are_refused_with_400() {
    let app = crate::helpers::spawn_app().await;
    for path in
        ["/v1/tenants/a%00b", "/v1/tenants/%FF", "/v1/event-types?cursor=%00", "/v1/tenants?limit=%C3%28"]
    {
        let response = app.get(path, &app.admin_token).await;
        response.expect_problem(400);
    }
}

#[tokio::test]
async fn an_unknown_field_is_named_once() {
    let app = spawn_app().await;
    let response =
        app.post("/v1/tenants", &app.admin_token, &json!({"name": "Acme", "extrnal_id": "typo"})).await;
    response.expect_invalid("extrnal_id");
    let fields: Vec<&str> =
        response.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, vec!["extrnal_id"], "{}", response.text);
}

#[tokio::test]
async fn an_unknown_query_parameter_is_refused_with_422_naming_it() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let misspelt = app.get(&format!("/v1/tenants/{tenant}/deliveries?statuss=failed"), &token).await;
    misspelt.expect_invalid("statuss");
    assert!(misspelt.text.contains("`status`"), "the message lists what the route takes: {}", misspelt.text);
    // A route that takes no query parameters refuses any.
    app.get(&format!("/v1/tenants/{tenant}?verbose=1"), &token).await.expect_invalid("verbose");
    // Documented parameters still work, on every list.
    app.get(&format!("/v1/tenants/{tenant}/deliveries?status=failed&limit=5"), &token).await.expect(200);
    app.get(&format!("/v1/tenants/{tenant}/events?event_type=x&since=2026-01-01T00:00:00Z"), &token)
        .await
        .expect(200);
    app.admin_get("/v1/stats/endpoints?window=1h&sort=failure_rate").await.expect(200);
}

#[tokio::test]
async fn a_limit_that_is_not_a_number_says_so() {
    let app = spawn_app().await;
    let response = app.admin_get("/v1/tenants?limit=abc").await;
    response.expect_invalid("limit");
    assert!(response.text.contains("whole number"), "{}", response.text);
}

#[tokio::test]
async fn a_413_names_the_limit_it_hit() {
    let app = spawn_app_with(|config| config.api.body_limit = 2048).await;
    let response = app
        .post(
            "/v1/tenants",
            &app.admin_token,
            &json!({"name": "Big", "metadata": {"blob": "y".repeat(3000)}}),
        )
        .await;
    response.expect_problem(413);
    assert!(response.text.contains("2048 bytes"), "{}", response.text);
}

#[tokio::test]
async fn the_root_address_leads_to_the_dashboard() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(app.url("/")).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(response.headers()["location"], "/dashboard");
}
