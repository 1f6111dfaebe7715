//! The store: the only source of truth. A `Store` trait with a SQLite backend (the embedded
//! default) and a PostgreSQL backend (scale-out); the URL scheme of `database_url` picks one.
//!
//! Both backends share their portable SQL through the `store_common!` macro in `common.rs`
//! (`$N` placeholders, TEXT ids, BIGINT Unix-microsecond times, TEXT JSON), so a query is written
//! once and compiled against each driver's own types; what differs (connecting, pragmas,
//! migrations) lives in each backend's file.

#[macro_use]
mod common;
#[macro_use]
mod delivery;
#[macro_use]
mod maintenance;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::delivery::{Attempt, Delivery, Event};
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
    /// The database refused a text value (PostgreSQL refuses NUL characters).
    #[error("invalid text value")]
    InvalidText,
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
    /// Wakes `wakeup` whenever any process commits new work, until `shutdown` (PostgreSQL:
    /// `LISTEN herald_work`; SQLite: returns at once, its only process wakes itself).
    async fn listen_for_work(
        &self,
        wakeup: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    );
    /// Names the operations tenant (id or external id) that operational events go to.
    fn set_operations_tenant(&self, key: Option<String>);

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
    /// Inserts an endpoint unless its tenant already has `max_per_tenant` live ones (then
    /// `false`); the check and the insert are atomic across processes.
    async fn insert_endpoint(
        &self,
        endpoint: &Endpoint,
        secret: &str,
        max_per_tenant: i64,
    ) -> Result<bool, StoreError>;
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
    /// Makes `secret` current; the old one signs too until `previous_expires_at`.
    async fn rotate_secret(
        &self,
        tenant_id: &str,
        id: &str,
        secret: &str,
        previous_expires_at: i64,
    ) -> Result<(), StoreError>;
    /// Ends a rotation's grace period now.
    async fn delete_previous_secret(&self, tenant_id: &str, id: &str) -> Result<(), StoreError>;

    /// Writes events and their fan-out (one delivery per matching endpoint) in one transaction.
    async fn ingest(
        &self,
        events: &[NewEvent],
        idempotency_since: i64,
    ) -> Result<Vec<IngestOutcome>, StoreError>;
    /// One event of a tenant.
    async fn get_event(&self, tenant_id: &str, id: &str) -> Result<Event, StoreError>;
    /// A tenant's events, newest first.
    async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        page: &PageQuery,
    ) -> Result<Vec<Event>, StoreError>;
    /// The deliveries of one event.
    async fn list_event_deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StoreError>;
    /// A tenant's deliveries, newest first.
    async fn list_deliveries(
        &self,
        tenant_id: &str,
        filter: &DeliveryFilter,
        page: &PageQuery,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// One delivery of a tenant.
    async fn get_delivery(&self, tenant_id: &str, id: &str) -> Result<Delivery, StoreError>;
    /// Every attempt of a delivery, by number.
    async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>, StoreError>;
    /// Queues a delivery again now (manual replay).
    async fn retry_delivery(&self, tenant_id: &str, id: &str) -> Result<(), RetryError>;
    /// Replays an endpoint's failed deliveries created in `[since, until)`; returns how many.
    async fn recover_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
        since: i64,
        until: i64,
    ) -> Result<u64, RetryError>;

    /// Closes attempts whose lease lapsed (a crashed or stopped process) as `interrupted`, and
    /// requeues or fails their deliveries. Returns how many were closed.
    async fn reap_expired_leases(&self, max_run_attempts: i32) -> Result<u64, StoreError>;
    /// The dispatcher's one transaction per cycle: records finished attempts and their
    /// deliveries' new states, then claims up to `limit` deliveries that can start now, opening
    /// an attempt for each. Returns how many records were stale (their lease had been taken over)
    /// and dropped, and the claims.
    async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<(u64, Vec<Claimed>), StoreError>;
    /// Claims up to `limit` deliveries that can start now (`record_and_claim` with no records).
    async fn claim_due(&self, limit: i64, lease: std::time::Duration) -> Result<Vec<Claimed>, StoreError> {
        Ok(self.record_and_claim(&[], limit, lease).await?.1)
    }
    /// Records finished attempts (`record_and_claim` claiming nothing); returns how many were stale.
    async fn record_attempts(&self, records: &[AttemptRecord]) -> Result<u64, StoreError> {
        Ok(self.record_and_claim(records, 0, std::time::Duration::ZERO).await?.0)
    }
    /// Starts an idempotent request: records the key, or reports what an earlier request with the
    /// same key did. Keys older than `since` are forgotten first.
    async fn begin_idempotent(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        since: i64,
    ) -> Result<IdempotencyState, StoreError>;
    /// Stores the answer of a successful idempotent request.
    async fn finish_idempotent(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;
    /// Forgets a key whose request failed, so it can be tried again.
    async fn abandon_idempotent(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Rollup rows of one endpoint (`period` `m` or `h`, buckets from `since`), summed, with the
    /// merged latency histogram.
    async fn endpoint_window(
        &self,
        endpoint_id: &str,
        period: &str,
        since: i64,
    ) -> Result<WindowTotals, StoreError>;
    /// Every live endpoint (of one tenant, or all) with its window totals and backlog; no
    /// latency histograms.
    async fn endpoints_overview(
        &self,
        tenant_id: Option<&str>,
        endpoint_id: Option<&str>,
        period: &str,
        since: i64,
    ) -> Result<Vec<EndpointHealth>, StoreError>;
    /// Takes the lock of job `name` until `until` unless another holder has it now.
    async fn try_lock_job(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool, StoreError>;
    /// Releases a job lock held by `holder`.
    async fn unlock_job(&self, name: &str, holder: &str) -> Result<(), StoreError>;
    /// Deletes up to `batch` events created before `cutoff` (with their deliveries and attempts),
    /// never one with a pending delivery. Returns how many.
    async fn purge_old_events(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError>;
    /// Deletes up to `batch` idempotency keys created before `cutoff`.
    async fn expire_idempotency_keys(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError>;
    /// Forgets rotated secrets whose grace period ended by `now`.
    async fn expire_previous_secrets(&self, now: i64) -> Result<u64, StoreError>;
    /// Deletes rollup buckets older than the windows need.
    async fn purge_stats(&self, minute_cutoff: i64, hour_cutoff: i64) -> Result<u64, StoreError>;
    /// Disables endpoints failing since `failing_before` with a failed attempt since
    /// `failed_since`, fails their pending deliveries and reports each; returns their ids.
    async fn disable_unhealthy_endpoints(
        &self,
        now: i64,
        failing_before: i64,
        failed_since: i64,
        reason: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// Ids of the master keys that sealed stored secrets.
    async fn sealed_key_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Re-seals every stored secret, header value and idempotent answer with the current key
    /// (in batches); returns how many rows changed.
    async fn rekey_secrets(&self) -> Result<u64, StoreError>;
    /// Backlog figures for the metrics gauges.
    async fn delivery_gauges(&self) -> Result<DeliveryGauges, StoreError>;

    /// When the earliest pending delivery due after `now` falls due (Unix µs), if any.
    async fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError>;
}

/// An event to write, with what the fan-out needs.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// `evt_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Event type name.
    pub event_type: String,
    /// The envelope.
    pub payload: String,
    /// Idempotency key and a hash of `(event, data)`.
    pub idempotency: Option<(String, String)>,
    /// Unix µs.
    pub created_at: i64,
    /// Deliver to this endpoint alone, bypassing its enabled flag and FIFO lane, one attempt
    /// (`webhook.test`).
    pub only_endpoint: Option<String>,
}

/// Summed rollup rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowTotals {
    /// Attempts finished in the window.
    pub attempts: i64,
    /// 2xx answers.
    pub successes: i64,
    /// Everything else.
    pub failures: i64,
    /// Whole milliseconds → attempts.
    pub latency: std::collections::BTreeMap<i64, i64>,
}

/// One endpoint as the on-call view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointHealth {
    /// `ep_…`
    pub endpoint_id: String,
    /// Owner.
    pub tenant_id: String,
    /// Target URL.
    pub url: String,
    /// Enabled flag.
    pub enabled: bool,
    /// Why disabled.
    pub disabled_reason: Option<String>,
    /// Last failure in words.
    pub last_error: Option<String>,
    /// When it happened (Unix µs).
    pub last_error_at: Option<i64>,
    /// Last 2xx (Unix µs).
    pub last_success_at: Option<i64>,
    /// Window totals (no histogram).
    pub totals: WindowTotals,
    /// Pending deliveries, in flight included.
    pub pending: i64,
    /// Creation time of the oldest pending delivery (Unix µs).
    pub oldest_pending_at: Option<i64>,
}

/// Backlog figures, read from the store so every replica reports the same.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryGauges {
    /// Pending deliveries, in flight included.
    pub pending: i64,
    /// Age of the oldest due, unclaimed delivery, in seconds (0 when none).
    pub lag_seconds: f64,
    /// Endpoints disabled now.
    pub endpoints_disabled: i64,
}

/// What an idempotency key says about a request.
#[derive(Clone, Debug, PartialEq)]
pub enum IdempotencyState {
    /// New key: go ahead.
    Started,
    /// Seen with the same request; this was the answer.
    Replay {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// Seen with a different request.
    Mismatch,
    /// Seen, and that request has not finished.
    InProgress,
}

/// What ingest did with one event.
#[derive(Clone, Debug, PartialEq)]
pub enum IngestOutcome {
    /// Written, with this many deliveries.
    Created {
        /// Delivery rows created.
        deliveries: i32,
    },
    /// The idempotency key was known within the window, for the same request: the first event.
    Replayed(Event),
    /// The idempotency key was known within the window, for a different request.
    KeyConflict,
}

/// Filters of the event list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Exact event type.
    pub event_type: Option<String>,
    /// Created at or after (Unix µs).
    pub since: Option<i64>,
    /// Created before (Unix µs).
    pub until: Option<i64>,
}

/// Filters of the delivery list.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// One endpoint.
    pub endpoint_id: Option<String>,
    /// One event.
    pub event_id: Option<String>,
    /// Created at or after (Unix µs).
    pub since: Option<i64>,
    /// Created before (Unix µs).
    pub until: Option<i64>,
}

/// Why a replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such delivery or endpoint.
    #[error("not found")]
    NotFound,
    /// An attempt is under way.
    #[error("an attempt is in flight")]
    InFlight,
    /// The endpoint is disabled.
    #[error("the endpoint is disabled")]
    EndpointDisabled,
    /// The endpoint was deleted.
    #[error("the endpoint was deleted")]
    EndpointDeleted,
    /// The event's payload was removed by retention.
    #[error("the event payload is no longer stored")]
    PayloadGone,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A delivery claimed for one attempt, with everything needed to send it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// `dlv_…`
    pub delivery_id: String,
    /// `evt_…` (the `webhook-id`).
    pub event_id: String,
    /// Owner.
    pub tenant_id: String,
    /// Target.
    pub endpoint_id: String,
    /// The open attempt row.
    pub attempt_id: String,
    /// Its number (1, 2, … never reset).
    pub attempt_number: i32,
    /// Its place in the current run (1-based).
    pub run_attempt: i32,
    /// Attempts this run allows, when the delivery sets its own (test events: 1).
    pub max_attempts: Option<i32>,
    /// Written by this claim; recording only happens while it still matches.
    pub lease_token: String,
    /// Endpoint URL as of the claim.
    pub url: String,
    /// Custom headers as of the claim.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Secrets as of the claim.
    pub secrets: Secrets,
    /// The envelope; `None` if retention removed it.
    pub payload: Option<String>,
}

/// A delivery's next state after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum NextState {
    /// Done.
    Delivered,
    /// Due again after this many microseconds (added to the database clock).
    Retry(i64),
    /// Dead letter.
    Failed,
}

/// One finished attempt to record.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: String,
    /// The open attempt row.
    pub attempt_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The endpoint's tenant.
    pub tenant_id: String,
    /// The claim's lease token.
    pub lease_token: String,
    /// Unix µs.
    pub finished_at: i64,
    /// Milliseconds.
    pub duration_ms: i64,
    /// Response status.
    pub status_code: Option<i32>,
    /// Failure kind.
    pub error_kind: Option<&'static str>,
    /// Failure detail.
    pub error: Option<String>,
    /// Kept response body.
    pub response_body: Option<String>,
    /// The delivery's next state.
    pub next: NextState,
    /// The delivery's `last_error` (none on success).
    pub last_error: Option<String>,
    /// Pause the endpoint for this many microseconds (Retry-After).
    pub pause_for: Option<i64>,
    /// Disable the endpoint with this reason (410 Gone).
    pub disable_reason: Option<String>,
}

/// Opens the store named by `config.database_url`, without migrating.
pub async fn connect(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url.as_str();
    let cipher = config.cipher()?;
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, &config.store, cipher).await?))
    } else {
        Ok(Arc::new(postgres::PgStore::connect(url, &config.store, cipher).await?))
    }
}

/// Maps driver errors into the store's vocabulary.
pub(crate) fn map_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22021") => StoreError::InvalidText,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.constraint().unwrap_or("unique").to_owned())
        }
        other => StoreError::Database(other),
    }
}
