//! Authentication and authorisation: bearer tokens, the admin scope and tenant confinement.

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app, spawn_app_with};

/// Routes that need a token, one of each kind.
const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/v1/event-types"),
    ("POST", "/v1/event-types"),
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tokens"),
];

async fn send_with_authorization(
    app: &TestApp,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> crate::helpers::ApiResponse {
    let mut request = app.client.request(method.parse::<Method>().unwrap(), app.url(path));
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    if method == "POST" {
        request = request.json(&json!({"name": "auth.probe"}));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    crate::helpers::ApiResponse { status, headers, body, text }
}

#[tokio::test]
async fn requests_without_a_token_are_refused_with_401() {
    let app = spawn_app().await;
    for (method, path) in PROTECTED {
        let response = send_with_authorization(&app, method, path, None).await;
        assert_eq!(response.status.as_u16(), 401, "{method} {path}: {}", response.text);
        response.expect_problem(401);
    }
    // Nothing was created by the refused POSTs.
    let types = app.admin_get("/v1/event-types?include_archived=true").await;
    assert!(types.expect(200).data().is_empty(), "{}", types.text);
    assert!(app.admin_get("/v1/tenants").await.data().is_empty());
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_with_401() {
    let app = spawn_app().await;
    let basic = format!("Basic {ADMIN_TOKEN}");
    let lowercase_missing_space = format!("Bearer{ADMIN_TOKEN}");
    let two_tokens = format!("Bearer {ADMIN_TOKEN} {ADMIN_TOKEN}");
    for value in [
        "Bearer",
        "Bearer ",
        "Token abc",
        basic.as_str(),
        lowercase_missing_space.as_str(),
        two_tokens.as_str(),
        ADMIN_TOKEN,
    ] {
        for (method, path) in PROTECTED {
            let response = send_with_authorization(&app, method, path, Some(value)).await;
            assert_eq!(response.status.as_u16(), 401, "{method} {path} with {value:?}: {}", response.text);
            response.expect_problem(401);
        }
    }
    assert!(app.admin_get("/v1/event-types?include_archived=true").await.data().is_empty());
    assert!(app.admin_get("/v1/tenants").await.data().is_empty());
}

#[tokio::test]
async fn unknown_tokens_are_refused_with_401() {
    let app = spawn_app().await;
    let almost_admin = format!("{ADMIN_TOKEN}x");
    let truncated = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    for token in ["hrld_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", almost_admin.as_str(), truncated] {
        for (method, path) in PROTECTED {
            let response =
                send_with_authorization(&app, method, path, Some(&format!("Bearer {token}"))).await;
            assert_eq!(response.status.as_u16(), 401, "{method} {path} with {token}: {}", response.text);
            response.expect_problem(401);
        }
    }
    assert!(app.admin_get("/v1/tenants").await.data().is_empty());
}

#[tokio::test]
async fn the_configured_admin_token_may_use_admin_routes() {
    let app = spawn_app().await;
    app.get("/v1/tenants", ADMIN_TOKEN).await.expect(200);
    app.get("/v1/tokens", ADMIN_TOKEN).await.expect(200);
    app.create_event_type("order.created").await;
    app.create_tenant().await;
}

#[tokio::test]
async fn without_a_configured_admin_token_a_bootstrap_admin_token_is_created_and_works() {
    let app = spawn_app_with(|config| config.admin_token = None).await;
    let token = app.bootstrap_token.clone().expect("a bootstrap token on first start");
    assert!(token.starts_with("hrld_"), "{token}");
    app.get("/v1/tenants", &token).await.expect(200);
    app.post("/v1/tenants", &token, &json!({"name": "Acme"})).await.expect(201);
    // The stored admin token is listed among the tokens, without its secret.
    let tokens = app.get("/v1/tokens", &token).await;
    tokens.expect(200);
    assert!(
        tokens
            .data()
            .iter()
            .any(|t| t["tenant_id"].is_null() && token.starts_with(t["prefix"].as_str().unwrap_or("-"))),
        "{}",
        tokens.text
    );
    assert!(!tokens.text.contains(&token), "the token itself is never listed");
    // The configured token was never set, so it is refused.
    app.get("/v1/tenants", ADMIN_TOKEN).await.expect_problem(401);
}

#[tokio::test]
async fn a_second_start_on_the_same_database_creates_no_new_bootstrap_token() {
    let first = spawn_app_with(|config| config.admin_token = None).await;
    let token = first.bootstrap_token.clone().expect("a bootstrap token on first start");
    let db = first.db.clone();
    first.stop().await.expect("clean stop");
    let second = crate::helpers::spawn_app_on(db, |config| config.admin_token = None).await;
    assert_eq!(second.bootstrap_token, None, "a token was already stored");
    second.get("/v1/tenants", &token).await.expect(200);
}

#[tokio::test]
async fn a_tenant_token_is_refused_with_403_on_admin_only_routes() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let own_token_id = {
        let tokens = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
        tokens.data()[0]["id"].as_str().unwrap().to_owned()
    };
    let calls: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::POST, "/v1/event-types".into(), Some(json!({"name": "order.shipped"}))),
        (Method::PATCH, "/v1/event-types/order.created".into(), Some(json!({"description": "changed"}))),
        (Method::DELETE, "/v1/event-types/order.created".into(), None),
        (Method::GET, "/v1/tenants".into(), None),
        (Method::POST, "/v1/tenants".into(), Some(json!({"name": "Intruder"}))),
        (Method::PATCH, format!("/v1/tenants/{tenant}"), Some(json!({"name": "Renamed"}))),
        (Method::DELETE, format!("/v1/tenants/{tenant}"), None),
        (Method::POST, format!("/v1/tenants/{tenant}/tokens"), Some(json!({"name": "more"}))),
        (Method::GET, "/v1/tokens".into(), None),
        (Method::GET, format!("/v1/tokens?tenant={tenant}"), None),
        (Method::DELETE, format!("/v1/tokens/{own_token_id}"), None),
    ];
    for (method, path, body) in &calls {
        let response = app.request(method.clone(), path, Some(&token), body.as_ref()).await;
        assert_eq!(response.status.as_u16(), 403, "{method} {path}: {}", response.text);
        response.expect_problem(403);
    }
    // Nothing changed.
    let event_type = app.admin_get("/v1/event-types/order.created").await;
    assert_eq!(event_type.body["archived"], json!(false));
    assert_eq!(event_type.body["description"], json!("order.created happened"));
    app.admin_get("/v1/event-types/order.shipped").await.expect_problem(404);
    let tenants = app.admin_get("/v1/tenants").await;
    assert_eq!(tenants.data().len(), 1, "{}", tenants.text);
    assert_ne!(tenants.data()[0]["name"], json!("Renamed"));
    let tokens = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
    assert_eq!(tokens.data().len(), 1, "{}", tokens.text);
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect(200);
}

#[tokio::test]
async fn a_tenant_token_may_read_the_event_type_catalogue() {
    let app = spawn_app().await;
    app.create_event_type("order.created").await;
    let (_, token) = app.create_tenant_and_token().await;
    let list = app.get("/v1/event-types", &token).await;
    list.expect(200);
    assert_eq!(list.data().len(), 1);
    app.get("/v1/event-types/order.created", &token).await.expect(200);
}

#[tokio::test]
async fn a_tenant_token_never_learns_that_another_tenant_exists() {
    let app = spawn_app().await;
    let (_, token) = app.create_tenant_and_token().await;
    let other = app.create_tenant_with(&json!({"name": "Other", "external_id": "other-co"})).await;
    let other_id = other["id"].as_str().unwrap();
    let missing = "tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for key in [other_id, "other-co"] {
        app.get(&format!("/v1/tenants/{key}"), &token).await.expect_problem(404);
        app.get(&format!("/v1/tenants/{missing}"), &token).await.expect_problem(404);
        app.get(&format!("/v1/tenants/{key}/endpoints"), &token).await.expect_problem(404);
        let create = app
            .post(&format!("/v1/tenants/{key}/endpoints"), &token, &json!({"url": "http://127.0.0.1:9/hook"}))
            .await;
        create.expect_problem(404);
        // Admin-only routes on another tenant answer exactly as they do on a missing tenant.
        for (method, suffix) in [(Method::PATCH, ""), (Method::DELETE, ""), (Method::POST, "/tokens")] {
            let body = (method != Method::DELETE).then(|| json!({"name": "x"}));
            let on_other = app
                .request(method.clone(), &format!("/v1/tenants/{key}{suffix}"), Some(&token), body.as_ref())
                .await;
            let on_missing = app
                .request(
                    method.clone(),
                    &format!("/v1/tenants/{missing}{suffix}"),
                    Some(&token),
                    body.as_ref(),
                )
                .await;
            assert_eq!(
                on_other.status, on_missing.status,
                "{method} …{suffix}: {} vs {}",
                on_other.text, on_missing.text
            );
            assert!(matches!(on_other.status.as_u16(), 403 | 404), "{method} …{suffix}: {}", on_other.text);
        }
    }
    let other_now = app.admin_get(&format!("/v1/tenants/{other_id}")).await;
    other_now.expect(200);
    assert_eq!(other_now.body["name"], json!("Other"));
    assert!(app.admin_get(&format!("/v1/tenants/{other_id}/endpoints")).await.data().is_empty());
    let other_tokens = app.admin_get(&format!("/v1/tokens?tenant={other_id}")).await;
    assert!(other_tokens.expect(200).data().is_empty(), "{}", other_tokens.text);
}
