//! Operational routes: liveness, readiness, the OpenAPI document, and errors for unknown routes.

use reqwest::Method;

use std::time::Duration;

use crate::helpers::{eventually, spawn_app};

#[tokio::test]
async fn health_check_answers_200_without_a_token() {
    let app = spawn_app().await;
    let response = app.request(Method::GET, "/healthz", None, None).await;
    response.expect(200);
}

#[tokio::test]
async fn readiness_check_answers_200_when_the_database_is_reachable() {
    let app = spawn_app().await;
    let response = app.request(Method::GET, "/readyz", None, None).await;
    response.expect(200);
}

#[tokio::test]
async fn openapi_document_describes_every_management_route() {
    let app = spawn_app().await;
    let response = app.request(Method::GET, "/openapi.json", None, None).await;
    response.expect(200);
    assert!(response.content_type().starts_with("application/json"), "{}", response.content_type());
    let doc = &response.body;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "openapi version: {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths object");
    let expected: &[(&str, &[&str])] = &[
        ("/v1/event-types", &["get", "post"]),
        ("/v1/event-types/{name}", &["get", "patch", "delete"]),
        ("/v1/tenants", &["get", "post"]),
        ("/v1/tenants/{tenant}", &["get", "patch", "delete"]),
        ("/v1/tenants/{tenant}/tokens", &["post"]),
        ("/v1/tokens", &["get"]),
        ("/v1/tokens/{id}", &["delete"]),
        ("/v1/tenants/{tenant}/endpoints", &["get", "post"]),
        ("/v1/tenants/{tenant}/endpoints/{ep}", &["get", "patch", "delete"]),
        ("/v1/tenants/{tenant}/endpoints/{ep}/secret", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ];
    let mut missing = Vec::new();
    for (path, methods) in expected {
        match paths.get(*path) {
            None => missing.push(format!("{path} (whole path)")),
            Some(item) => {
                for method in *methods {
                    if item.get(*method).is_none() {
                        missing.push(format!("{} {path}", method.to_uppercase()));
                    }
                }
            }
        }
    }
    let listed: Vec<&String> = paths.keys().collect();
    assert!(missing.is_empty(), "missing from /openapi.json: {missing:?}; listed: {listed:?}");
}

#[tokio::test]
async fn an_unknown_route_answers_404_as_a_problem() {
    let app = spawn_app().await;
    let response = app.get("/v1/no-such-thing", &app.admin_token).await;
    response.expect_problem(404);
}

#[tokio::test]
async fn a_wrong_method_on_a_known_route_is_refused_as_a_problem() {
    let app = spawn_app().await;
    let response = app.request(Method::PUT, "/v1/tenants", Some(&app.admin_token), None).await;
    response.expect_problem(405);
}

#[tokio::test]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn when_the_database_is_gone_readiness_fails_and_errors_reveal_no_internals_on_postgres() {
    let url = std::env::var(crate::helpers::POSTGRES_ENV).expect("HERALD_TEST_POSTGRES_URL");
    let db = std::sync::Arc::new(crate::helpers::TestDatabase::postgres(&url).await);
    let app = crate::helpers::spawn_app_on(db, |_| {}).await;
    app.create_tenant().await;
    assert!(app.db.break_postgres().await, "a PostgreSQL database");
    let ready = eventually(Duration::from_secs(20), "/readyz to fail", || async {
        let response = app.request(Method::GET, "/readyz", None, None).await;
        (response.status.as_u16() == 503).then_some(response)
    })
    .await;
    assert!(!ready.text.contains("herald_test_"), "{}", ready.text);
    let response = app.admin_get("/v1/tenants").await;
    assert!(response.status.is_server_error(), "{}", response.text);
    response.expect_problem(response.status.as_u16());
    let lower = response.text.to_lowercase();
    for internal in
        ["herald_test_", "sqlx", "postgres", "database \"", "error returned from", "pool", "connection"]
    {
        assert!(!lower.contains(internal), "a 5xx leaks `{internal}`: {}", response.text);
    }
}

/// The sample catalogue of `docs/openapi.webhooks-sample.json`.
async fn sample_catalogue(app: &crate::helpers::TestApp) {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["workflow_id", "status"],
        "properties": {
            "workflow_id": {"type": "string"},
            "status": {"type": "string", "enum": ["succeeded", "failed"]},
            "duration_ms": {"type": "integer", "minimum": 0}
        }
    });
    let body = serde_json::json!({"name": "workflow.completed", "description": "A workflow run finished.", "schema": schema});
    app.post("/v1/event-types", &app.admin_token, &body).await.expect(201);
    app.post("/v1/event-types", &app.admin_token, &serde_json::json!({"name": "order.paid"}))
        .await
        .expect(201);
}

/// Compares `served` with the committed `docs/<file>`; `HERALD_UPDATE_OPENAPI=1` rewrites it.
fn matches_committed(file: &str, served: &serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(file);
    let text = serde_json::to_string_pretty(served).unwrap() + "\n";
    if std::env::var("HERALD_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/{file} differs from what Herald serves: rerun this test with HERALD_UPDATE_OPENAPI=1 and commit the change"
    );
}

#[tokio::test]
async fn the_served_openapi_documents_are_the_committed_ones() {
    let app = spawn_app().await;
    sample_catalogue(&app).await;
    let public = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    let public: serde_json::Value = public.json().await.unwrap();
    assert!(public.get("webhooks").is_none(), "the public document is the API alone");
    matches_committed("openapi.json", &public);

    assert_eq!(app.client.get(app.url("/v1/openapi.json")).send().await.unwrap().status(), 401);
    let token = app.create_tenant_token(&crate::helpers::id_of(&app.create_tenant().await)).await;
    let full = app.get("/v1/openapi.json", &token).await;
    full.expect(200);
    let webhooks = full.body["webhooks"].as_object().expect("webhooks");
    let names: Vec<&str> = webhooks.keys().map(String::as_str).collect();
    assert_eq!(names, ["batch", "order.paid", "workflow.completed"]);
    matches_committed("openapi.webhooks-sample.json", &full.body);
}
