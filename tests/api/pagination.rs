//! List pagination: `limit`, opaque cursors, order, and every item exactly once.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{TestApp, id_of, spawn_app};

const URL: &str = "http://127.0.0.1:9/hook";

/// Asserts that `items` hold each of `expected` exactly once, in that order.
#[track_caller]
fn assert_exactly_once_in_order(items: &[Value], key: &str, expected: &[String]) {
    let seen: Vec<String> = items.iter().map(|i| i[key].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an item was listed twice: {seen:?}");
    assert_eq!(seen, expected);
}

fn newest_first(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.reverse();
    ids
}

async fn create_tenants(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(id_of(&app.create_tenant().await));
    }
    ids
}

#[tokio::test]
async fn tenants_are_paged_newest_first_each_exactly_once() {
    let app = spawn_app().await;
    let ids = create_tenants(&app, 7).await;
    let expected = newest_first(ids.clone());
    assert_eq!(expected, ids.iter().rev().cloned().collect::<Vec<_>>(), "ids sort in creation order");
    for limit in [1, 3, 7, 250] {
        let (items, pages) = app.walk_pages("/v1/tenants", &app.admin_token, limit).await;
        assert_exactly_once_in_order(&items, "id", &expected);
        assert_eq!(pages, 7usize.div_ceil(limit as usize).max(1), "pages with limit {limit}");
    }
}

#[tokio::test]
async fn endpoints_are_paged_newest_first_each_exactly_once() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let (other, other_token) = app.create_tenant_and_token().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(id_of(&app.create_endpoint(&tenant, &token, &json!({"url": URL})).await));
        if i % 2 == 0 {
            app.create_endpoint(&other, &other_token, &json!({"url": URL})).await;
        }
    }
    let (items, pages) = app.walk_pages(&format!("/v1/tenants/{tenant}/endpoints"), &token, 2).await;
    assert_exactly_once_in_order(&items, "id", &newest_first(ids));
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn event_types_are_paged_by_name_each_exactly_once() {
    let app = spawn_app().await;
    let mut names = Vec::new();
    for name in ["d.one", "a.two", "c.three", "b.four", "e.five", "a.one"] {
        app.create_event_type(name).await;
        names.push(name.to_owned());
    }
    app.create_event_type("b.archived").await;
    app.delete("/v1/event-types/b.archived", &app.admin_token).await.expect(204);
    names.sort();
    let (items, _) = app.walk_pages("/v1/event-types", &app.admin_token, 4).await;
    assert_exactly_once_in_order(&items, "name", &names);
    let (items, pages) = app.walk_pages("/v1/event-types?include_archived=true", &app.admin_token, 2).await;
    names.push("b.archived".to_owned());
    names.sort();
    assert_exactly_once_in_order(&items, "name", &names);
    assert_eq!(pages, 4);
}

#[tokio::test]
async fn tokens_are_paged_newest_first_each_exactly_once() {
    let app = spawn_app().await;
    let tenant = id_of(&app.create_tenant().await);
    let mut ids = Vec::new();
    for _ in 0..5 {
        app.create_tenant_token(&tenant).await;
    }
    let all = app.admin_get(&format!("/v1/tokens?tenant={tenant}&limit=250")).await;
    ids.extend(all.data().iter().map(id_of));
    assert_eq!(ids.len(), 5);
    let (items, pages) = app.walk_pages(&format!("/v1/tokens?tenant={tenant}"), &app.admin_token, 2).await;
    assert_exactly_once_in_order(&items, "id", &newest_first(ids));
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn the_default_page_holds_50_items() {
    let app = spawn_app().await;
    create_tenants(&app, 52).await;
    let first = app.admin_get("/v1/tenants").await;
    first.expect(200);
    assert_eq!(first.data().len(), 50);
    let cursor = first.body["next_cursor"].as_str().expect("a next cursor").to_owned();
    let second =
        app.admin_get(&format!("/v1/tenants?cursor={}", crate::helpers::encode_query(&cursor))).await;
    second.expect(200);
    assert_eq!(second.data().len(), 2);
    assert!(second.body["next_cursor"].is_null());
}

#[tokio::test]
async fn an_exactly_full_last_page_ends_the_walk() {
    let app = spawn_app().await;
    let ids = create_tenants(&app, 4).await;
    let (items, pages) = app.walk_pages("/v1/tenants", &app.admin_token, 2).await;
    assert_exactly_once_in_order(&items, "id", &newest_first(ids));
    assert_eq!(pages, 2, "the second, full page is the last and says so");
}

#[tokio::test]
async fn a_limit_outside_1_to_250_is_refused() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    app.create_event_type("a.b").await;
    let lists = [
        ("/v1/tenants".to_owned(), app.admin_token.clone()),
        ("/v1/event-types".to_owned(), token.clone()),
        (format!("/v1/tenants/{tenant}/endpoints"), token.clone()),
        (format!("/v1/tokens?tenant={tenant}"), app.admin_token.clone()),
    ];
    for (path, token) in &lists {
        let separator = if path.contains('?') { '&' } else { '?' };
        for limit in ["0", "251", "-1", "abc", "1.5"] {
            let response = app.get(&format!("{path}{separator}limit={limit}"), token).await;
            assert_eq!(response.status.as_u16(), 422, "{path} limit={limit}: {}", response.text);
            response.expect_invalid("limit");
        }
        for limit in ["1", "250"] {
            app.get(&format!("{path}{separator}limit={limit}"), token).await.expect(200);
        }
    }
}

#[tokio::test]
async fn a_garbage_cursor_is_refused() {
    let app = spawn_app().await;
    let (tenant, token) = app.create_tenant_and_token().await;
    let lists = [
        ("/v1/tenants".to_owned(), app.admin_token.clone()),
        ("/v1/event-types".to_owned(), token.clone()),
        (format!("/v1/tenants/{tenant}/endpoints"), token.clone()),
        (format!("/v1/tokens?tenant={tenant}"), app.admin_token.clone()),
    ];
    for (path, token) in &lists {
        let separator = if path.contains('?') { '&' } else { '?' };
        for cursor in ["garbage", "%01%02", "eyJ9", "!!!"] {
            let response = app.get(&format!("{path}{separator}cursor={cursor}"), token).await;
            assert_eq!(response.status.as_u16(), 422, "{path} cursor={cursor}: {}", response.text);
            response.expect_invalid("cursor");
        }
    }
}

#[tokio::test]
async fn a_cursor_is_bound_to_its_list_and_filters() {
    let app = spawn_app().await;
    let (a, token_a) = app.create_tenant_and_token().await;
    let (b, _) = app.create_tenant_and_token().await;
    for _ in 0..3 {
        app.create_tenant_token(&a).await;
        app.create_tenant_token(&b).await;
        app.create_endpoint(&a, &token_a, &json!({"url": URL})).await;
    }
    let app = &app;
    let next = |path: String| async move {
        let response = app.admin_get(&path).await;
        response.expect(200);
        crate::helpers::encode_query(response.body["next_cursor"].as_str().expect("a next cursor"))
    };
    let tokens_of_a = next(format!("/v1/tokens?tenant={a}&limit=1")).await;
    let endpoints_of_a = next(format!("/v1/tenants/{a}/endpoints?limit=1")).await;
    let tenants = next("/v1/tenants?limit=1".to_owned()).await;
    for path in [
        format!("/v1/tokens?tenant={b}&cursor={tokens_of_a}"),
        format!("/v1/tokens?cursor={tokens_of_a}"),
        format!("/v1/tenants/{b}/endpoints?cursor={endpoints_of_a}"),
        format!("/v1/tenants?cursor={endpoints_of_a}"),
        format!("/v1/tenants/{a}/endpoints?cursor={tenants}"),
    ] {
        let response = app.admin_get(&path).await;
        assert_eq!(response.status.as_u16(), 422, "{path}: {}", response.text);
        response.expect_invalid("cursor");
    }
}
