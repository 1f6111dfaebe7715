//! The store: the only source of truth. One [`Store`] over SQLite (the embedded default) or
//! PostgreSQL (scale-out); the URL scheme of `database_url` picks the backend.
//!
//! Every statement is written once, with `$N` placeholders, TEXT ids, BIGINT Unix-microsecond
//! times and TEXT JSON, and runs on either backend through `sql.rs`; the few real differences
//! (the clock, due-row reads, row locks, `NOTIFY`) sit in `db.rs`, `sqlite.rs` and `postgres.rs`.
//! The methods are split by concern: `catalog.rs` (tokens, event types, tenants), `endpoints.rs`,
//! `idempotency.rs`, `ingest.rs` (fan-out), `operational.rs`, `claim.rs`, `record.rs`,
//! `replay.rs` (reads, retry, recover, lease reaping), `stats.rs` and `jobs.rs`. The rules they
//! apply live in `crate::domain`; the storage code asks them and writes what they decide.

mod catalog;
mod claim;
mod db;
mod endpoints;
mod idempotency;
mod ingest;
mod jobs;
mod operational;
mod postgres;
mod record;
mod replay;
mod rows;
mod sql;
mod sqlite;
mod stats;

pub use ingest::claimed_everything;

use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::domain::delivery::Event;
use crate::domain::endpoint::Secrets;

/// What can go wrong in the store, as callers need to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row (or not visible to the caller).
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is restarting: worth retrying shortly.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else from the database.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database refused a text value (PostgreSQL refuses NUL characters).
    #[error("invalid text value")]
    InvalidText,
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    /// Maps driver errors into the store's vocabulary, once for every statement.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.code().as_deref() == Some("22021") => StoreError::InvalidText,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique").to_owned())
            }
            other if is_unavailable(&other) => StoreError::Unavailable(other),
            other => StoreError::Database(other),
        }
    }
}

/// Whether a driver error means the database is briefly out of reach (no connection, a pool with
/// none free, a server shutting down or starting, SQLite busy past its timeout) rather than a
/// refused statement.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            true
        }
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL: connection exceptions (08…), admin/crash shutdown, cannot connect now.
            Some(code) if code.starts_with("08") => true,
            Some("57P01" | "57P02" | "57P03") => true,
            // SQLite: SQLITE_BUSY and SQLITE_LOCKED (and their extended codes).
            Some(code) => matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6)),
            None => false,
        },
        _ => false,
    }
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
pub struct Store {
    db: db::Db,
    cipher: crate::crypto::Cipher,
    /// The operations tenant (id or external id) that operational events go to.
    operations: RwLock<Option<String>>,
    /// Where this process's next claim starts looking for endpoints (round robin).
    claim_cursor: Mutex<Option<String>>,
    /// The endpoints' circuit breaker and in-flight windows (`[delivery]`).
    stress: Stress,
    /// The earliest time a batch the last claims left to fill must go (Unix µs): the
    /// dispatcher's wait ends then at the latest (`next_due_after`).
    batch_deadline: Mutex<Option<i64>>,
    /// When this process's claim last looked for circuits due a probe.
    probe_look: Mutex<Option<std::time::Instant>>,
    /// When this process's claim last looked for test deliveries.
    test_look: Mutex<Option<std::time::Instant>>,
    /// Whether this process may have made a test delivery pending since its claim last looked.
    tests_added: std::sync::atomic::AtomicBool,
    /// Endpoints and tenants (ids) this process changed or stopped since its dispatcher last
    /// looked, kept only while its dispatcher claims ahead: their claims made ahead go back
    /// ([`Store::take_changed`]).
    changed: Mutex<Option<std::collections::HashSet<String>>>,
}

/// The `[delivery]` settings the claim and the recorder apply to every endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stress {
    /// The circuit breaker.
    pub(crate) breaker: crate::domain::breaker::Breaker,
    /// Where a window starts.
    pub(crate) initial_in_flight: i32,
    /// The cap of an endpoint whose own is `null`.
    pub(crate) max_in_flight_per_endpoint: i32,
}

/// Opens the store named by `config.database_url`, without migrating.
pub async fn connect(config: &Config) -> anyhow::Result<Arc<Store>> {
    let url = config.database_url.as_str();
    let db = if url.starts_with("sqlite:") {
        sqlite::connect(url, &config.store).await?
    } else {
        postgres::connect(url, &config.store).await?
    };
    Ok(Arc::new(Store {
        db,
        cipher: config.cipher()?,
        operations: Default::default(),
        claim_cursor: Default::default(),
        batch_deadline: Default::default(),
        probe_look: Default::default(),
        test_look: Default::default(),
        tests_added: std::sync::atomic::AtomicBool::new(true),
        changed: Mutex::new(None),
        stress: Stress {
            breaker: config.delivery.breaker(),
            initial_in_flight: config.delivery.initial_in_flight,
            max_in_flight_per_endpoint: config.delivery.max_in_flight_per_endpoint,
        },
    }))
}

impl Store {
    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.db.migrate().await
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sql::sql("select 1").execute(self.db.reader()).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Wakes `wakeup` whenever any process commits new work, until `shutdown` (PostgreSQL:
    /// `LISTEN herald_work`; SQLite: returns at once, its only process wakes itself).
    pub async fn listen_for_work(
        &self,
        wakeup: Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        // Another process's work may hold a test delivery (`time_to_look_for_tests`).
        self.db.listen_for_work(wakeup, || self.tests_added(), shutdown).await;
    }

    /// Names the operations tenant (id or external id) that operational events go to.
    pub fn set_operations_tenant(&self, key: Option<String>) {
        if let Ok(mut slot) = self.operations.write() {
            *slot = key;
        }
    }

    /// The operations tenant (id or external id), if configured.
    fn operations(&self) -> Option<String> {
        self.operations.read().ok().and_then(|o| o.clone())
    }
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
    /// The W3C trace context the ingest request carried, if any.
    pub trace: Option<crate::domain::trace::TraceContext>,
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
    /// When the oldest due, unclaimed delivery fell due (Unix µs): the start of its lag.
    pub oldest_due_at: Option<i64>,
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
    /// Enabled endpoints whose circuit is open or half-open now.
    pub endpoints_circuit_open: i64,
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

/// When the listed rows were created: `[since, until)`, each end open when unset (Unix µs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Created {
    /// At or after.
    pub since: Option<i64>,
    /// Before.
    pub until: Option<i64>,
}

/// Filters of the event list.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Exact event type.
    pub event_type: Option<String>,
    /// Created within.
    pub created: Created,
}

/// Filters of the delivery list.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// One status.
    pub status: Option<crate::domain::delivery::DeliveryStatus>,
    /// One endpoint.
    pub endpoint_id: Option<String>,
    /// One event.
    pub event_id: Option<String>,
    /// Created within.
    pub created: Created,
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
    /// The endpoint's own delivery policy as of the claim: it decides this attempt's timeout and
    /// what follows it.
    pub policy: crate::domain::policy::DeliveryPolicy,
    /// The envelope; `None` if retention removed it.
    pub payload: Option<String>,
    /// Whether this attempt is its endpoint's circuit probe (DESIGN §14).
    pub probe: bool,
    /// The batch request it goes in (`bat_…`, its `webhook-id`), for a batching endpoint.
    pub batch_id: Option<String>,
    /// Claimed one window ahead of the endpoint's free slots (DESIGN §17): the window's size as
    /// claimed. The dispatcher starts it when one of its requests to the endpoint ends, while it
    /// has fewer than that many in flight there, or gives it back ([`Store::dispatch_cycle`]).
    pub ahead: Option<i32>,
    /// The producer's trace context, carried on the attempt with a fresh span id.
    pub trace: Option<crate::domain::trace::TraceContext>,
}

/// What one dispatch cycle asks of the store ([`Store::dispatch_cycle`]).
pub struct Cycle<'a> {
    /// Finished attempts to record.
    pub records: &'a [AttemptRecord],
    /// Claims made ahead ([`Claimed::ahead`]) that will not start: given back.
    pub released: &'a [Claimed],
    /// Most requests to claim to start now.
    pub limit: i64,
    /// How long the claims hold their deliveries.
    pub lease: std::time::Duration,
    /// Whether to claim one window ahead of each plain endpoint's free slots too, and how long
    /// such claims may wait.
    pub ahead: Option<crate::domain::claim::Ahead>,
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
    /// When the request left, when that is known (`None`: an attempt never sent); the attempt
    /// row keeps its claim's time otherwise. A claim made ahead leaves some time after it was
    /// made.
    pub started_at: Option<i64>,
    /// Unix µs.
    pub finished_at: i64,
    /// Milliseconds.
    pub duration_ms: i64,
    /// Response status.
    pub status_code: Option<i32>,
    /// Failure kind.
    pub error_kind: Option<crate::domain::retry::ErrorKind>,
    /// Failure detail.
    pub error: Option<String>,
    /// Kept response body.
    pub response_body: Option<String>,
    /// What the attempt means for its delivery (and endpoint).
    pub outcome: crate::domain::retry::Outcome,
    /// The timeout that applied to the attempt, ms (`None` when it was never sent).
    pub timeout_ms: Option<i64>,
    /// The delivery's `last_error` (none on success).
    pub last_error: Option<String>,
    /// Whether the attempt was its endpoint's circuit probe.
    pub probe: bool,
    /// The batch request it was part of, if any: a batch is one outcome for the endpoint's
    /// circuit and window.
    pub batch_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_and_a_refused_statement_is_not() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(matches!(StoreError::from(error), StoreError::Unavailable(_)));
        }
        assert!(matches!(StoreError::from(sqlx::Error::RowNotFound), StoreError::NotFound));
        assert!(matches!(StoreError::from(sqlx::Error::ColumnNotFound("x".into())), StoreError::Database(_)));
    }
}
