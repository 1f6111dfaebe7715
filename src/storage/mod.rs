//! The store: the only source of truth. A `Store` trait with a SQLite backend (the embedded
//! default) and a PostgreSQL backend (scale-out); the URL scheme of `database_url` picks one.
//!
//! Both backends share their portable SQL through the `store_common!` macro in `common.rs`
//! (`$N` placeholders, TEXT ids, BIGINT Unix-microsecond times, TEXT JSON), so a query is written
//! once and compiled against each driver's own types; what differs (connecting, pragmas,
//! migrations) lives in each backend's file.

#[macro_use]
mod common;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::endpoint::{Endpoint, Secrets};
use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::domain::token::Token;

/// What can go wrong in the store, as callers need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row (or not visible to the caller).
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else from the database.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// Which engine a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A page request: items strictly after `after` in the list's order, at most `limit` of them.
#[derive(Clone, Debug, Default)]
pub struct PageQuery {
    /// The sort key of the last item of the previous page.
    pub after: Option<String>,
    /// Rows to return; callers ask for one more than they show to learn whether more exist.
    pub limit: i64,
}

/// Every operation on stored state. Each method that must be atomic runs its own transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The engine behind this store.
    fn backend(&self) -> Backend;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes every connection.
    async fn close(&self);

    /// Stores a token by its hash.
    async fn insert_token(&self, token: &Token, hash: &str) -> Result<(), StoreError>;
    /// The live token with this hash (not revoked, tenant not deleted).
    async fn find_token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError>;
    /// Records that a token was used.
    async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError>;
    /// Live tokens, newest first, optionally of one tenant.
    async fn list_tokens(&self, tenant_id: Option<&str>, page: &PageQuery) -> Result<Vec<Token>, StoreError>;
    /// Revokes a live token.
    async fn revoke_token(&self, id: &str, at: i64) -> Result<(), StoreError>;
    /// Number of live admin tokens.
    async fn count_admin_tokens(&self) -> Result<i64, StoreError>;

    /// Adds an event type; `Conflict` when the name exists.
    async fn insert_event_type(&self, event_type: &EventType) -> Result<(), StoreError>;
    /// One event type, archived or not.
    async fn get_event_type(&self, name: &str) -> Result<EventType, StoreError>;
    /// Event types by name, ascending.
    async fn list_event_types(
        &self,
        include_archived: bool,
        page: &PageQuery,
    ) -> Result<Vec<EventType>, StoreError>;
    /// Replaces description, schema and archived flag.
    async fn update_event_type(&self, event_type: &EventType) -> Result<(), StoreError>;

    /// Adds a tenant; `Conflict` when the external id is taken.
    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    /// A live tenant by id or external id.
    async fn get_tenant(&self, key: &str) -> Result<Tenant, StoreError>;
    /// Live tenants, newest first.
    async fn list_tenants(&self, page: &PageQuery) -> Result<Vec<Tenant>, StoreError>;
    /// Replaces name, external id and metadata.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;
    /// Soft-deletes a tenant, its endpoints (failing their pending deliveries) and its tokens.
    async fn delete_tenant(&self, id: &str, at: i64) -> Result<(), StoreError>;

    /// Adds an endpoint with its first secret.
    async fn insert_endpoint(&self, endpoint: &Endpoint, secret: &str) -> Result<(), StoreError>;
    /// A live endpoint of a tenant.
    async fn get_endpoint(&self, tenant_id: &str, id: &str) -> Result<Endpoint, StoreError>;
    /// A tenant's live endpoints, newest first.
    async fn list_endpoints(&self, tenant_id: &str, page: &PageQuery) -> Result<Vec<Endpoint>, StoreError>;
    /// Replaces the editable fields of an endpoint.
    async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError>;
    /// Soft-deletes an endpoint and fails its pending deliveries with `endpoint_deleted`.
    async fn delete_endpoint(&self, tenant_id: &str, id: &str, at: i64) -> Result<(), StoreError>;
    /// The endpoint's signing secrets.
    async fn get_secrets(&self, tenant_id: &str, id: &str) -> Result<Secrets, StoreError>;
}

/// Opens the store named by `config.database_url`, without migrating.
pub async fn connect(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url.as_str();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, &config.store).await?))
    } else {
        Ok(Arc::new(postgres::PgStore::connect(url, &config.store).await?))
    }
}

/// Maps driver errors into the store's vocabulary.
pub(crate) fn map_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.constraint().unwrap_or("unique").to_owned())
        }
        other => StoreError::Database(other),
    }
}
