//! Tenants: creation rules, `external_id` as an alias in paths, updates and deletion.

use serde_json::json;

use crate::helpers::{TestApp, assert_id, assert_time, id_of, spawn_app};

async fn tenant_count(app: &TestApp) -> usize {
    let list = app.admin_get("/v1/tenants?limit=250").await;
    list.expect(200);
    list.data().len()
}

#[tokio::test]
async fn creating_a_tenant_returns_it_with_its_fields() {
    let app = spawn_app().await;
    let body =
        json!({"name": "Acme Corp", "external_id": "acme-42", "metadata": {"plan": "pro", "seats": 10}});
    let response = app.post("/v1/tenants", &app.admin_token, &body).await;
    response.expect(201);
    let tenant = &response.body;
    assert_id("tnt", &tenant["id"]);
    assert_eq!(tenant["name"], json!("Acme Corp"));
    assert_eq!(tenant["external_id"], json!("acme-42"));
    assert_eq!(tenant["metadata"], json!({"plan": "pro", "seats": 10}));
    assert_time(&tenant["created_at"]);
    assert_time(&tenant["updated_at"]);
    let by_id = app.admin_get(&format!("/v1/tenants/{}", id_of(tenant))).await;
    by_id.expect(200);
    assert_eq!(&by_id.body, tenant);
    let by_external_id = app.admin_get("/v1/tenants/acme-42").await;
    by_external_id.expect(200);
    assert_eq!(&by_external_id.body, tenant);
}

#[tokio::test]
async fn external_id_and_metadata_are_optional() {
    let app = spawn_app().await;
    let response = app.post("/v1/tenants", &app.admin_token, &json!({"name": "Solo"})).await;
    response.expect(201);
    assert!(response.body["external_id"].is_null(), "{}", response.text);
    assert_eq!(response.body["metadata"], json!({}));
}

#[tokio::test]
async fn invalid_external_ids_are_refused() {
    let app = spawn_app().await;
    let too_long = "a".repeat(65);
    for external_id in ["", "tnt_fake", "a.b", "with space", "ünï", "a/b", too_long.as_str()] {
        let body = json!({"name": "Acme", "external_id": external_id});
        let response = app.post("/v1/tenants", &app.admin_token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{external_id:?}: {}", response.text);
        response.expect_invalid("external_id");
    }
    assert_eq!(tenant_count(&app).await, 0);
    let longest = "A-z_9".repeat(12) + "abcd";
    assert_eq!(longest.len(), 64);
    app.create_tenant_with(&json!({"name": "Acme", "external_id": longest})).await;
}

#[tokio::test]
async fn names_must_have_1_to_255_characters() {
    let app = spawn_app().await;
    for name in [String::new(), "n".repeat(256)] {
        let response = app.post("/v1/tenants", &app.admin_token, &json!({"name": name})).await;
        assert_eq!(response.status.as_u16(), 422, "{} chars: {}", name.len(), response.text);
        response.expect_invalid("name");
    }
    assert_eq!(tenant_count(&app).await, 0);
    app.create_tenant_with(&json!({"name": "é".repeat(255)})).await;
    app.create_tenant_with(&json!({"name": "x"})).await;
}

#[tokio::test]
async fn metadata_must_be_a_json_object() {
    let app = spawn_app().await;
    for metadata in [json!([1, 2]), json!("plan=pro"), json!(3)] {
        let body = json!({"name": "Acme", "metadata": metadata});
        let response = app.post("/v1/tenants", &app.admin_token, &body).await;
        assert_eq!(response.status.as_u16(), 422, "{metadata}: {}", response.text);
        response.expect_problem(422);
    }
    assert_eq!(tenant_count(&app).await, 0);
}

#[tokio::test]
async fn a_duplicate_external_id_is_refused_with_409() {
    let app = spawn_app().await;
    app.create_tenant_with(&json!({"name": "First", "external_id": "acme"})).await;
    let response =
        app.post("/v1/tenants", &app.admin_token, &json!({"name": "Second", "external_id": "acme"})).await;
    response.expect_problem(409);
    assert_eq!(tenant_count(&app).await, 1);
    assert_eq!(app.admin_get("/v1/tenants/acme").await.body["name"], json!("First"));
}

#[tokio::test]
async fn an_external_id_is_reusable_after_its_tenant_is_deleted() {
    let app = spawn_app().await;
    let first = app.create_tenant_with(&json!({"name": "First", "external_id": "acme"})).await;
    app.delete("/v1/tenants/acme", &app.admin_token).await.expect(204);
    let second = app.create_tenant_with(&json!({"name": "Second", "external_id": "acme"})).await;
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.admin_get("/v1/tenants/acme").await.body["id"], second["id"]);
}

#[tokio::test]
async fn patching_a_tenant_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let tenant = app
        .create_tenant_with(&json!({"name": "Acme", "external_id": "acme", "metadata": {"plan": "free"}}))
        .await;
    let id = id_of(&tenant);
    let response = app.patch("/v1/tenants/acme", &app.admin_token, &json!({"name": "Acme Inc"})).await;
    response.expect(200);
    assert_eq!(response.body["name"], json!("Acme Inc"));
    assert_eq!(response.body["external_id"], json!("acme"));
    assert_eq!(response.body["metadata"], json!({"plan": "free"}));
    assert_eq!(response.body["id"], tenant["id"]);
    assert_eq!(response.body["created_at"], tenant["created_at"]);

    let response = app
        .patch(
            &format!("/v1/tenants/{id}"),
            &app.admin_token,
            &json!({"metadata": {"plan": "pro"}, "external_id": "acme-2"}),
        )
        .await;
    response.expect(200);
    assert_eq!(response.body["metadata"], json!({"plan": "pro"}));
    assert_eq!(response.body["external_id"], json!("acme-2"));
    app.admin_get("/v1/tenants/acme").await.expect_problem(404);
    let fetched = app.admin_get("/v1/tenants/acme-2").await;
    fetched.expect(200);
    assert_eq!(fetched.body, response.body);
}

#[tokio::test]
async fn an_invalid_tenant_patch_changes_nothing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    app.create_tenant_with(&json!({"name": "Other", "external_id": "other"})).await;
    app.patch("/v1/tenants/acme", &app.admin_token, &json!({"external_id": "tnt_x"}))
        .await
        .expect_invalid("external_id");
    app.patch("/v1/tenants/acme", &app.admin_token, &json!({"name": ""})).await.expect_invalid("name");
    app.patch("/v1/tenants/acme", &app.admin_token, &json!({"metadata": [1]})).await.expect_problem(422);
    app.patch("/v1/tenants/acme", &app.admin_token, &json!({"id": "tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}))
        .await
        .expect_problem(422);
    app.patch("/v1/tenants/acme", &app.admin_token, &json!({"external_id": "other"}))
        .await
        .expect_problem(409);
    let fetched = app.admin_get(&format!("/v1/tenants/{}", id_of(&tenant))).await;
    assert_eq!(fetched.body, tenant);
}

#[tokio::test]
async fn an_unknown_tenant_answers_404() {
    let app = spawn_app().await;
    for key in ["tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV", "nobody", "tnt_garbage"] {
        app.admin_get(&format!("/v1/tenants/{key}")).await.expect_problem(404);
        app.patch(&format!("/v1/tenants/{key}"), &app.admin_token, &json!({"name": "x"}))
            .await
            .expect_problem(404);
        app.delete(&format!("/v1/tenants/{key}"), &app.admin_token).await.expect_problem(404);
        app.admin_get(&format!("/v1/tenants/{key}/endpoints")).await.expect_problem(404);
        app.post(&format!("/v1/tenants/{key}/tokens"), &app.admin_token, &json!({}))
            .await
            .expect_problem(404);
    }
    assert_eq!(tenant_count(&app).await, 0);
}

#[tokio::test]
async fn deleting_a_tenant_removes_it_and_revokes_its_tokens() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    let id = id_of(&tenant);
    let token = app.create_tenant_token(&id).await;
    let endpoint = app.create_endpoint(&id, &token, &json!({"url": "http://127.0.0.1:9/hook"})).await;
    let keep = app.create_tenant().await;

    app.get(&format!("/v1/tenants/{id}"), &token).await.expect(200);
    let response = app.delete("/v1/tenants/acme", &app.admin_token).await;
    response.expect(204);
    assert!(response.text.is_empty());

    app.admin_get(&format!("/v1/tenants/{id}")).await.expect_problem(404);
    app.admin_get("/v1/tenants/acme").await.expect_problem(404);
    app.delete(&format!("/v1/tenants/{id}"), &app.admin_token).await.expect_problem(404);
    app.admin_get(&format!("/v1/tenants/{id}/endpoints/{}", id_of(&endpoint))).await.expect_problem(404);
    app.get(&format!("/v1/tenants/{id}"), &token).await.expect_problem(401);
    app.get("/v1/event-types", &token).await.expect_problem(401);
    let list = app.admin_get("/v1/tenants").await;
    assert_eq!(list.data().iter().map(id_of).collect::<Vec<_>>(), vec![id_of(&keep)]);
}

#[tokio::test]
async fn a_tenant_token_may_read_its_own_tenant() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_with(&json!({"name": "Acme", "external_id": "acme"})).await;
    let token = app.create_tenant_token("acme").await;
    let by_id = app.get(&format!("/v1/tenants/{}", id_of(&tenant)), &token).await;
    by_id.expect(200);
    assert_eq!(by_id.body, tenant);
    let by_external_id = app.get("/v1/tenants/acme", &token).await;
    by_external_id.expect(200);
    assert_eq!(by_external_id.body, tenant);
}

#[tokio::test]
async fn concurrent_creates_with_one_external_id_store_one_tenant() {
    let app = spawn_app().await;
    let body = json!({"name": "Race", "external_id": "race"});
    let post = || app.post("/v1/tenants", &app.admin_token, &body);
    let (a, b, c, d, e) = tokio::join!(post(), post(), post(), post(), post());
    let statuses: Vec<u16> = [&a, &b, &c, &d, &e].iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 4, "{statuses:?}");
    for response in [&a, &b, &c, &d, &e] {
        if response.status.as_u16() == 409 {
            response.expect_problem(409);
        }
    }
    assert_eq!(tenant_count(&app).await, 1);
}

#[tokio::test]
async fn repeating_a_create_with_the_same_idempotency_key_creates_one_object() {
    let app = spawn_app().await;
    let tenant = id_of(&app.create_tenant().await);
    let routes = [
        ("/v1/tenants".to_owned(), json!({"name": "Once"})),
        (format!("/v1/tenants/{tenant}/endpoints"), json!({"url": "http://127.0.0.1:9/hook"})),
    ];
    for (path, body) in &routes {
        let post = || {
            app.client
                .post(app.url(path))
                .bearer_auth(&app.admin_token)
                .header("Idempotency-Key", format!("create-once-{path}"))
                .json(body)
                .send()
        };
        let first = post().await.unwrap();
        assert_eq!(first.status().as_u16(), 201);
        let first: serde_json::Value = first.json().await.unwrap();
        let second = post().await.unwrap();
        assert_eq!(second.status().as_u16(), 201, "POST {path}: a replay answers as the first time");
        let second: serde_json::Value = second.json().await.unwrap();
        assert_eq!(first["id"], second["id"], "POST {path} with one Idempotency-Key created two objects");
    }
    assert_eq!(tenant_count(&app).await, 2);
    let endpoints = app.admin_get(&format!("/v1/tenants/{tenant}/endpoints")).await;
    assert_eq!(endpoints.data().len(), 1, "{}", endpoints.text);
}
