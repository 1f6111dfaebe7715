//! Tenant tokens: issued once, listed without their secret, revoked for good.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{assert_id, assert_time, eventually, id_of, spawn_app};

#[tokio::test]
async fn issuing_a_tenant_token_shows_it_once() {
    let app = spawn_app().await;
    let tenant = app.create_tenant().await;
    let tenant_id = id_of(&tenant);
    let response =
        app.post(&format!("/v1/tenants/{tenant_id}/tokens"), &app.admin_token, &json!({"name": "ci"})).await;
    response.expect(201);
    let issued = &response.body;
    assert_id("tok", &issued["id"]);
    assert_eq!(issued["name"], json!("ci"));
    assert_eq!(issued["tenant_id"], json!(tenant_id));
    assert_time(&issued["created_at"]);
    assert!(issued["last_used_at"].is_null(), "{}", response.text);
    let token = issued["token"].as_str().expect("token");
    assert!(token.starts_with("hrld_") && token.len() >= 40, "{token}");
    let prefix = issued["prefix"].as_str().expect("prefix");
    assert!(
        prefix.starts_with("hrld_") && token.starts_with(prefix) && prefix.len() < token.len(),
        "{prefix}"
    );

    app.get(&format!("/v1/tenants/{tenant_id}"), token).await.expect(200);

    let list = app.admin_get(&format!("/v1/tokens?tenant={tenant_id}")).await;
    list.expect(200);
    assert_eq!(list.data().len(), 1, "{}", list.text);
    let listed = &list.data()[0];
    assert_eq!(listed["id"], issued["id"]);
    assert_eq!(listed["prefix"], issued["prefix"]);
    assert_eq!(listed["tenant_id"], json!(tenant_id));
    assert!(listed.get("token").is_none(), "the token is shown only once: {}", list.text);
    assert!(!list.text.contains(token));
}

#[tokio::test]
async fn a_token_may_be_issued_without_a_name_and_by_external_id() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    let response = app.post("/v1/tenants/acme/tokens", &app.admin_token, &json!({})).await;
    response.expect(201);
    assert_eq!(response.body["tenant_id"], tenant["id"]);
    assert!(response.body["name"].is_string(), "{}", response.text);
    let by_external_id = app.admin_get("/v1/tokens?tenant=acme").await;
    by_external_id.expect(200);
    assert_eq!(by_external_id.data().len(), 1, "{}", by_external_id.text);
}

#[tokio::test]
async fn tokens_are_listed_per_tenant() {
    let app = spawn_app().await;
    let (a, _) = app.create_tenant_and_token().await;
    app.create_tenant_token(&a).await;
    let (b, _) = app.create_tenant_and_token().await;
    let of_a = app.admin_get(&format!("/v1/tokens?tenant={a}")).await;
    assert_eq!(of_a.expect(200).data().len(), 2);
    assert!(of_a.data().iter().all(|t| t["tenant_id"] == json!(a)));
    let of_b = app.admin_get(&format!("/v1/tokens?tenant={b}")).await;
    assert_eq!(of_b.data().len(), 1);
    let all = app.admin_get("/v1/tokens").await;
    assert!(all.expect(200).data().len() >= 3, "{}", all.text);
    app.admin_get("/v1/tokens?tenant=nobody").await.expect_problem(404);
}

#[tokio::test]
async fn a_revoked_token_is_refused_with_401() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let other = app.create_tenant_token(&tenant).await;
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect(200);
    let list = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
    let id = list
        .data()
        .iter()
        .find(|t| token.starts_with(t["prefix"].as_str().unwrap()))
        .map(id_of)
        .expect("the token is listed");

    let response = app.delete(&format!("/v1/tokens/{id}"), &app.admin_token).await;
    response.expect(204);
    assert!(response.text.is_empty());
    // A short cache is allowed (DESIGN §6): revocation must take effect within a few seconds.
    eventually(Duration::from_secs(10), "the revoked token to be refused", || async {
        (app.get(&format!("/v1/tenants/{tenant}"), &token).await.status.as_u16() == 401).then_some(())
    })
    .await;
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect_problem(401);
    app.get(&format!("/v1/tenants/{tenant}"), &other).await.expect(200);
    let list = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
    assert_eq!(list.data().len(), 1, "{}", list.text);
    assert_ne!(list.data()[0]["id"], json!(id));
    app.delete(&format!("/v1/tokens/{id}"), &app.admin_token).await.expect_problem(404);
}

#[tokio::test]
async fn revoking_an_unknown_token_answers_404() {
    let app = spawn_app().await;
    app.delete("/v1/tokens/tok_01ARZ3NDEKTSV4RRFFQ69G5FAV", &app.admin_token).await.expect_problem(404);
    app.delete("/v1/tokens/garbage", &app.admin_token).await.expect_problem(404);
}

#[tokio::test]
async fn using_a_token_records_when_it_was_last_used() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect(200);
    let last_used = eventually(Duration::from_secs(10), "last_used_at to be set", || async {
        let list = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
        let value = list.data()[0]["last_used_at"].clone();
        (!value.is_null()).then_some(value)
    })
    .await;
    assert_time(&last_used);
}

#[tokio::test]
async fn an_invalid_token_request_issues_nothing() {
    let app = spawn_app().await;
    let tenant = id_of(&app.create_tenant().await);
    for body in [json!({"name": 5}), json!({"name": "ci", "scope": "admin"})] {
        let response = app.post(&format!("/v1/tenants/{tenant}/tokens"), &app.admin_token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{body}: {}", response.text);
        response.expect_problem(422);
    }
    let list = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
    assert_eq!(list.data(), &Vec::<Value>::new());
}

#[tokio::test]
async fn a_token_with_expires_in_is_refused_with_401_once_it_expires() {
    let app = spawn_app().await;
    let tenant = id_of(&app.create_tenant().await);
    let path = format!("/v1/tenants/{tenant}/tokens");
    for bad in [json!("soon"), json!("0s"), json!("4000d"), json!(60)] {
        let response = app.post(&path, &app.admin_token, &json!({"name": "ci", "expires_in": bad})).await;
        response.expect_invalid("expires_in");
    }
    let response = app.post(&path, &app.admin_token, &json!({"name": "short", "expires_in": "2s"})).await;
    response.expect(201);
    assert_time(&response.body["expires_at"]);
    let token = response.body["token"].as_str().unwrap().to_owned();
    app.get(&format!("/v1/tenants/{tenant}"), &token).await.expect(200);
    let listed = app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await;
    assert_eq!(listed.data()[0]["expires_at"], response.body["expires_at"]);
    eventually(Duration::from_secs(10), "the token to expire", || async {
        (app.get(&format!("/v1/tenants/{tenant}"), &token).await.status.as_u16() == 401).then_some(())
    })
    .await;
    assert!(
        app.admin_get(&format!("/v1/tokens?tenant={tenant}")).await.data().is_empty(),
        "expired tokens are not live"
    );
}

#[tokio::test]
async fn a_portal_link_opens_the_tenants_portal_until_it_expires() {
    let app = spawn_app().await;
    let acme = id_of(&app.create_tenant().await);
    let other = id_of(&app.create_tenant().await);
    let path = format!("/v1/tenants/{acme}/portal-links");

    let default = app.post(&path, &app.admin_token, &json!({})).await;
    default.expect(201);
    let url = default.body["url"].as_str().unwrap();
    assert!(url.starts_with(&app.url("/dashboard#token=hrld_")), "{url}");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(default.body["expires_at"].as_str().unwrap()).unwrap();
    let hour = expires_at.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((3500..=3600).contains(&hour), "one hour by default, got {hour} s");

    app.post(&path, &app.admin_token, &json!({"expires_in": "25h"})).await.expect_invalid("expires_in");
    let (_, tenant_token) = app.create_tenant_and_token().await;
    app.post(&path, &tenant_token, &json!({})).await.expect_problem(404);

    let short = app.post(&path, &app.admin_token, &json!({"expires_in": "2s"})).await;
    short.expect(201);
    let token = short.body["url"].as_str().unwrap().rsplit_once("#token=").unwrap().1.to_owned();
    let me = app.get("/v1/me", &token).await;
    me.expect(200);
    assert_eq!(me.body["tenant_id"], json!(acme), "{}", me.text);
    app.get(&format!("/v1/tenants/{other}"), &token).await.expect_problem(404);
    eventually(Duration::from_secs(10), "the link to expire", || async {
        (app.get("/v1/me", &token).await.status.as_u16() == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn portal_links_use_the_configured_public_url_and_frame_ancestors_allow_embedding() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.api.public_url = Some("https://webhooks.example.com/".into());
        config.api.frame_ancestors = vec!["https://app.example.com".into()];
    })
    .await;
    let acme = id_of(&app.create_tenant().await);
    let link = app.post(&format!("/v1/tenants/{acme}/portal-links"), &app.admin_token, &json!({})).await;
    link.expect(201);
    assert!(
        link.body["url"].as_str().unwrap().starts_with("https://webhooks.example.com/dashboard#token=hrld_")
    );
    let page = app.client.get(app.url("/dashboard")).send().await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.ends_with("frame-ancestors https://app.example.com"), "{policy}");
}
