//! The store contract, run directly against each backend: SQLite always, PostgreSQL when
//! `HERALD_TEST_POSTGRES_URL` is set. Both must agree on results, errors and order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald::domain::endpoint::Endpoint;
use herald::domain::event_type::EventType;
use herald::domain::id::{IdKind, new_id};
use herald::domain::tenant::Tenant;
use herald::domain::time::now_micros;
use herald::domain::token::Token;
use herald::storage::{NewEvent, PageQuery, Store, StoreError, connect};
use serde_json::json;
use sqlx::Connection;

use crate::helpers::{POSTGRES_ENV, TestDatabase, test_config};

/// A migrated store on every backend available, each with the database that backs it.
async fn stores() -> Vec<(TestDatabase, Arc<Store>)> {
    let mut databases = vec![TestDatabase::sqlite()];
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.trim().is_empty() => databases.push(TestDatabase::postgres(&url).await),
        _ => eprintln!("storage: sqlite only ({POSTGRES_ENV} is unset: PostgreSQL variant skipped)"),
    }
    let mut out = Vec::new();
    for db in databases {
        eprintln!("storage backend: {}", db.backend.name());
        let store = connect(&test_config(&db)).await.expect("connect");
        store.migrate().await.expect("migrate");
        out.push((db, store));
    }
    out
}

fn tenant(external_id: Option<&str>) -> Tenant {
    let now = now_micros();
    let mut metadata = serde_json::Map::new();
    metadata.insert("plan".into(), json!("pro"));
    metadata.insert("nested".into(), json!({"a": [1, 2]}));
    Tenant {
        id: new_id(IdKind::Tenant),
        external_id: external_id.map(str::to_owned),
        name: "Acme".into(),
        metadata,
        created_at: now,
        updated_at: now,
    }
}

fn event_type(name: &str) -> EventType {
    let now = now_micros();
    EventType {
        name: name.into(),
        description: format!("{name} happened"),
        schema: Some(json!({"type": "object"})),
        archived: false,
        created_at: now,
        updated_at: now,
    }
}

fn endpoint(tenant_id: &str) -> Endpoint {
    let now = now_micros();
    Endpoint {
        id: new_id(IdKind::Endpoint),
        tenant_id: tenant_id.into(),
        url: "https://example.com/hook".into(),
        description: "orders".into(),
        event_types: vec!["order.created".into(), "billing.*".into()],
        headers: BTreeMap::from([("X-Api-Key".to_owned(), "k".to_owned())]),
        enabled: true,
        disabled_reason: None,
        disabled_at: None,
        fifo: false,
        max_in_flight: None,
        in_flight_window: None,
        circuit: Default::default(),
        batch: None,
        rate_limit_per_second: Some(100),
        delivery: Default::default(),
        filter: None,
        signature_scheme: herald::domain::signing::Scheme::HmacSha256,
        created_at: now,
        updated_at: now,
    }
}

fn token(tenant_id: Option<&str>) -> (Token, String) {
    let clear = herald::domain::token::generate_token();
    let token = Token {
        id: new_id(IdKind::Token),
        name: "ci".into(),
        tenant_id: tenant_id.map(str::to_owned),
        prefix: herald::domain::token::shown_prefix(&clear),
        created_at: now_micros(),
        last_used_at: None,
        expires_at: None,
    };
    (token, herald::domain::token::hash_token(&clear))
}

fn page(after: Option<&str>, limit: i64) -> PageQuery {
    PageQuery { after: after.map(str::to_owned), limit }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(matches!(result, Err(StoreError::NotFound)), "expected NotFound, got {result:?}");
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(matches!(result, Err(StoreError::Conflict(_))), "expected Conflict, got {result:?}");
}

#[tokio::test]
async fn migrating_twice_is_harmless_and_the_store_answers_pings() {
    for (_db, store) in stores().await {
        store.migrate().await.expect("second migrate");
        store.ping().await.expect("ping");
    }
}

#[tokio::test]
async fn tenants_round_trip_through_the_store() {
    for (_db, store) in stores().await {
        let mut acme = tenant(Some("acme"));
        store.insert_tenant(&acme).await.unwrap();
        assert_eq!(store.get_tenant(&acme.id).await.unwrap(), acme);
        assert_eq!(store.get_tenant("acme").await.unwrap(), acme);
        assert_not_found(store.get_tenant("nobody").await);

        acme.name = "Acme Inc".into();
        acme.external_id = Some("acme-2".into());
        acme.metadata.insert("seats".into(), json!(5));
        acme.updated_at += 1;
        store.update_tenant(&acme).await.unwrap();
        assert_eq!(store.get_tenant("acme-2").await.unwrap(), acme);
        assert_not_found(store.get_tenant("acme").await);

        store.delete_tenant(&acme.id, now_micros()).await.unwrap();
        assert_not_found(store.get_tenant(&acme.id).await);
        assert_not_found(store.get_tenant("acme-2").await);
        assert!(store.list_tenants(&page(None, 10)).await.unwrap().is_empty());
        assert_not_found(store.delete_tenant(&acme.id, now_micros()).await);
        assert_not_found(store.update_tenant(&acme).await);
    }
}

#[tokio::test]
async fn a_live_external_id_is_unique_and_reusable_after_deletion() {
    for (_db, store) in stores().await {
        let first = tenant(Some("acme"));
        store.insert_tenant(&first).await.unwrap();
        assert_conflict(store.insert_tenant(&tenant(Some("acme"))).await);
        let mut other = tenant(Some("other"));
        store.insert_tenant(&other).await.unwrap();
        other.external_id = Some("acme".into());
        assert_conflict(store.update_tenant(&other).await);
        // Tenants without an external id never collide.
        store.insert_tenant(&tenant(None)).await.unwrap();
        store.insert_tenant(&tenant(None)).await.unwrap();

        store.delete_tenant(&first.id, now_micros()).await.unwrap();
        let second = tenant(Some("acme"));
        store.insert_tenant(&second).await.unwrap();
        assert_eq!(store.get_tenant("acme").await.unwrap().id, second.id);
        assert_eq!(store.list_tenants(&page(None, 10)).await.unwrap().len(), 4);
    }
}

#[tokio::test]
async fn tenants_are_listed_newest_first_from_a_cursor() {
    for (_db, store) in stores().await {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let t = tenant(None);
            store.insert_tenant(&t).await.unwrap();
            ids.push(t.id);
        }
        ids.reverse();
        let all: Vec<String> =
            store.list_tenants(&page(None, 10)).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(all, ids);
        let first: Vec<String> =
            store.list_tenants(&page(None, 2)).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(first, ids[..2]);
        let next: Vec<String> =
            store.list_tenants(&page(Some(&ids[1]), 2)).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(next, ids[2..4]);
        let last: Vec<String> =
            store.list_tenants(&page(Some(&ids[3]), 2)).await.unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(last, ids[4..]);
        assert!(store.list_tenants(&page(Some(&ids[4]), 2)).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn event_types_round_trip_and_duplicate_names_conflict() {
    for (_db, store) in stores().await {
        let mut created = event_type("order.created");
        store.insert_event_type(&created).await.unwrap();
        assert_eq!(store.get_event_type("order.created").await.unwrap(), created);
        assert_conflict(store.insert_event_type(&event_type("order.created")).await);
        assert_not_found(store.get_event_type("no.such").await);

        created.description = "changed".into();
        created.schema = None;
        created.archived = true;
        created.updated_at += 1;
        store.update_event_type(&created).await.unwrap();
        assert_eq!(store.get_event_type("order.created").await.unwrap(), created);
        assert_not_found(store.update_event_type(&event_type("no.such")).await);
    }
}

#[tokio::test]
async fn event_types_are_listed_by_name_with_archived_ones_on_request() {
    for (_db, store) in stores().await {
        for name in ["d.x", "b.x", "a.x", "c.x", "e.x"] {
            store.insert_event_type(&event_type(name)).await.unwrap();
        }
        let mut archived = event_type("bb.x");
        archived.archived = true;
        store.insert_event_type(&archived).await.unwrap();
        let names = |list: Vec<EventType>| list.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(
            names(store.list_event_types(false, &page(None, 10)).await.unwrap()),
            ["a.x", "b.x", "c.x", "d.x", "e.x"]
        );
        assert_eq!(
            names(store.list_event_types(true, &page(None, 10)).await.unwrap()),
            ["a.x", "b.x", "bb.x", "c.x", "d.x", "e.x"]
        );
        assert_eq!(
            names(store.list_event_types(false, &page(Some("b.x"), 2)).await.unwrap()),
            ["c.x", "d.x"]
        );
        assert_eq!(
            names(store.list_event_types(true, &page(Some("b.x"), 2)).await.unwrap()),
            ["bb.x", "c.x"]
        );
    }
}

#[tokio::test]
async fn tokens_are_found_by_hash_until_revoked() {
    for (_db, store) in stores().await {
        let acme = tenant(None);
        store.insert_tenant(&acme).await.unwrap();
        let (admin, admin_hash) = token(None);
        let (scoped, scoped_hash) = token(Some(&acme.id));
        store.insert_token(&admin, &admin_hash).await.unwrap();
        store.insert_token(&scoped, &scoped_hash).await.unwrap();
        assert_eq!(store.find_token_by_hash(&admin_hash, now_micros()).await.unwrap(), Some(admin.clone()));
        assert_eq!(store.find_token_by_hash(&scoped_hash, now_micros()).await.unwrap(), Some(scoped.clone()));
        assert_eq!(store.find_token_by_hash(&"0".repeat(64), now_micros()).await.unwrap(), None);
        assert_eq!(store.count_admin_tokens().await.unwrap(), 1);

        let of_tenant = store.list_tokens(Some(&acme.id), now_micros(), &page(None, 10)).await.unwrap();
        assert_eq!(of_tenant, vec![scoped.clone()]);
        let all: Vec<String> = store
            .list_tokens(None, now_micros(), &page(None, 10))
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(all, vec![scoped.id.clone(), admin.id.clone()], "newest first");

        let at = now_micros();
        store.touch_token(&scoped.id, at).await.unwrap();
        assert_eq!(
            store.find_token_by_hash(&scoped_hash, now_micros()).await.unwrap().unwrap().last_used_at,
            Some(at)
        );

        store.revoke_token(&admin.id, now_micros()).await.unwrap();
        assert_eq!(store.find_token_by_hash(&admin_hash, now_micros()).await.unwrap(), None);
        assert_not_found(store.revoke_token(&admin.id, now_micros()).await);
        assert_not_found(store.revoke_token("tok_01ARZ3NDEKTSV4RRFFQ69G5FAV", now_micros()).await);
        assert_eq!(store.count_admin_tokens().await.unwrap(), 0);

        store.delete_tenant(&acme.id, now_micros()).await.unwrap();
        assert_eq!(
            store.find_token_by_hash(&scoped_hash, now_micros()).await.unwrap(),
            None,
            "a deleted tenant's token is dead"
        );
    }
}

#[tokio::test]
async fn a_duplicate_token_hash_conflicts() {
    for (_db, store) in stores().await {
        let (first, hash) = token(None);
        store.insert_token(&first, &hash).await.unwrap();
        let (second, _) = token(None);
        assert_conflict(store.insert_token(&second, &hash).await);
    }
}

#[tokio::test]
async fn endpoints_round_trip_within_their_tenant() {
    for (_db, store) in stores().await {
        let acme = tenant(None);
        let other = tenant(None);
        store.insert_tenant(&acme).await.unwrap();
        store.insert_tenant(&other).await.unwrap();
        let mut ep = endpoint(&acme.id);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert!(store.insert_endpoint(&ep, secret, 1000).await.unwrap());
        assert_eq!(store.get_endpoint(&acme.id, &ep.id).await.unwrap(), ep);
        assert_not_found(store.get_endpoint(&other.id, &ep.id).await);
        assert_not_found(store.get_secrets(&other.id, &ep.id).await);
        let secrets = store.get_secrets(&acme.id, &ep.id).await.unwrap();
        assert_eq!(secrets.current, secret);
        assert_eq!(secrets.previous, None);
        assert_eq!(secrets.previous_expires_at, None);
        assert!(store.list_endpoints(&other.id, &page(None, 10)).await.unwrap().is_empty());

        ep.url = "https://example.com/other".into();
        ep.event_types = vec![];
        ep.headers.clear();
        ep.enabled = false;
        ep.disabled_reason = Some("manual".into());
        ep.disabled_at = Some(now_micros());
        ep.fifo = true;
        ep.max_in_flight = Some(1);
        ep.rate_limit_per_second = None;
        ep.updated_at += 1;
        store.update_endpoint(&ep).await.unwrap();
        assert_eq!(store.get_endpoint(&acme.id, &ep.id).await.unwrap(), ep);
        let mut foreign = ep.clone();
        foreign.tenant_id = other.id.clone();
        assert_not_found(store.update_endpoint(&foreign).await);

        assert_not_found(store.delete_endpoint(&other.id, &ep.id, now_micros()).await);
        store.delete_endpoint(&acme.id, &ep.id, now_micros()).await.unwrap();
        assert_not_found(store.get_endpoint(&acme.id, &ep.id).await);
        assert_not_found(store.get_secrets(&acme.id, &ep.id).await);
        assert_not_found(store.update_endpoint(&ep).await);
        assert_not_found(store.delete_endpoint(&acme.id, &ep.id, now_micros()).await);
        assert!(store.list_endpoints(&acme.id, &page(None, 10)).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn endpoints_are_listed_newest_first_and_go_with_their_tenant() {
    for (_db, store) in stores().await {
        let acme = tenant(None);
        store.insert_tenant(&acme).await.unwrap();
        let mut ids = Vec::new();
        for _ in 0..4 {
            let ep = endpoint(&acme.id);
            assert!(
                store.insert_endpoint(&ep, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1000).await.unwrap()
            );
            ids.push(ep.id);
        }
        ids.reverse();
        let list = |after: Option<String>, limit| {
            let store = store.clone();
            let tenant = acme.id.clone();
            async move {
                store
                    .list_endpoints(&tenant, &PageQuery { after, limit })
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(None, 10).await, ids);
        assert_eq!(list(None, 3).await, ids[..3]);
        assert_eq!(list(Some(ids[2].clone()), 3).await, ids[3..]);

        store.delete_tenant(&acme.id, now_micros()).await.unwrap();
        assert!(list(None, 10).await.is_empty(), "a deleted tenant's endpoints are gone");
        assert_not_found(store.get_endpoint(&acme.id, &ids[0]).await);
    }
}

#[tokio::test]
async fn an_endpoint_needs_an_existing_tenant() {
    for (_db, store) in stores().await {
        let result =
            store.insert_endpoint(&endpoint("tnt_01ARZ3NDEKTSV4RRFFQ69G5FAV"), "whsec_x", 1000).await;
        assert!(result.is_err(), "the foreign key refuses an orphan endpoint");
    }
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_endpoint_cap() {
    for (_db, store) in stores().await {
        let acme = tenant(None);
        store.insert_tenant(&acme).await.unwrap();
        let creates: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                let ep = endpoint(&acme.id);
                tokio::spawn(async move {
                    store.insert_endpoint(&ep, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 5).await.unwrap()
                })
            })
            .collect();
        let mut created = 0;
        for create in creates {
            created += usize::from(create.await.unwrap());
        }
        assert_eq!(created, 5, "exactly the cap is created, however the creates interleave");
        assert_eq!(store.list_endpoints(&acme.id, &page(None, 100)).await.unwrap().len(), 5);
    }
}

/// On PostgreSQL, an ingest whose own claim took every delivery it wrote tells no dispatcher
/// (`NOTIFY herald_work`): nothing is left to claim, and each replica woken would run a
/// transaction that finds nothing. An ingest that leaves a delivery unclaimed tells them, also
/// when its rows were written early, before an idempotency key's lookup.
#[tokio::test]
#[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
async fn an_ingest_that_claims_all_it_wrote_wakes_no_dispatcher() {
    let url = std::env::var(POSTGRES_ENV).expect("this test needs HERALD_TEST_POSTGRES_URL");
    let db = TestDatabase::postgres(&url).await;
    let store = connect(&test_config(&db)).await.expect("connect");
    store.migrate().await.expect("migrate");
    let acme = tenant(None);
    store.insert_tenant(&acme).await.unwrap();
    let mut ep = endpoint(&acme.id);
    ep.event_types = vec![];
    ep.rate_limit_per_second = None;
    assert!(store.insert_endpoint(&ep, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1000).await.unwrap());
    let event = || NewEvent {
        id: new_id(IdKind::Event),
        tenant_id: acme.id.clone(),
        event_type: "order.created".into(),
        payload: json!({"type": "order.created", "data": {}}).to_string(),
        idempotency: None,
        created_at: now_micros(),
        only_endpoint: None,
        trace: None,
    };

    let keyed = NewEvent { idempotency: Some(("order-1".into(), "hash-1".into())), ..event() };
    store.ingest(std::slice::from_ref(&keyed), 0).await.expect("the keyed event");
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.expect("listener");
    listener.listen("herald_work").await.expect("listen");

    let (_, claimed) =
        store.ingest_and_claim(&[event()], 0, 10, Duration::from_secs(60), |_| {}).await.expect("ingested");
    assert_eq!(claimed.len(), 2, "the ingest's claim took its delivery and the keyed event's");
    // A new event, then the keyed one again: the new event's rows are written before the key
    // is looked up, and the replay adds none.
    let replay = NewEvent { id: new_id(IdKind::Event), ..keyed.clone() };
    store.ingest(&[event(), replay], 0).await.expect("ingested without a claim");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("select pg_notify('herald_work', 'marker')").execute(&mut conn).await.expect("marker");

    // Notifications arrive in commit order: count those before the marker.
    let mut before_marker = 0;
    loop {
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the marker arrives")
            .expect("a notification");
        if notification.payload() == "marker" {
            break;
        }
        before_marker += 1;
    }
    assert_eq!(before_marker, 1, "only the ingest that left its delivery unclaimed told the dispatchers");
}
