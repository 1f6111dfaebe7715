//! The SQLite backend: one file in WAL mode with foreign keys on and a busy timeout; writes go
//! through a single-connection pool (SQLite has one writer), reads through a separate pool.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::common::*;
use super::delivery::*;
use super::{
    AttemptRecord, Backend, Claimed, DeliveryFilter, DeliveryGauges, EndpointHealth, EventFilter,
    IdempotencyState, IngestOutcome, NewEvent, NextState, PageQuery, RetryError, StoreError, WindowTotals,
    map_err,
};
use crate::config::{Durability, StoreConfig};
use crate::domain::delivery::{Attempt, Delivery, Event};
use crate::domain::endpoint::{Endpoint, Secrets};
use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::domain::token::Token;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store on an SQLite file.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    operations: std::sync::RwLock<Option<String>>,
    cipher: crate::crypto::Cipher,
    /// Where this process's next claim starts looking for endpoints (round robin).
    claim_cursor: std::sync::Mutex<Option<String>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url`.
    pub async fn connect(
        url: &str,
        config: &StoreConfig,
        cipher: crate::crypto::Cipher,
    ) -> anyhow::Result<SqliteStore> {
        let synchronous = match config.durability {
            Durability::Durable => SqliteSynchronous::Full,
            Durability::Relaxed => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid `database_url` `{url}`"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("could not open the SQLite database `{url}`"))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .connect_with(options.read_only(false))
            .await
            .with_context(|| format!("could not open the SQLite database `{url}`"))?;
        Ok(SqliteStore {
            writer,
            reader,
            operations: Default::default(),
            cipher,
            claim_cursor: Default::default(),
        })
    }

    /// Up to `limit` due deliveries over the planned endpoints, each endpoint's oldest first and
    /// at most its room, endpoints in plan order. One indexed read per endpoint: on SQLite a
    /// statement is a call into the same process, so one per endpoint costs little.
    async fn due_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        plan: &[(String, i64)],
        now: i64,
        limit: i64,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        let mut rows: Vec<ClaimRow> = Vec::new();
        for (endpoint_id, room) in plan {
            let room = (*room).min(limit - rows.len() as i64);
            if room <= 0 {
                break;
            }
            // The limit applies before the join, whatever the planner thinks of the table's size.
            let due: Vec<ClaimRow> = sqlx::query_as(
                r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                    d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload
                from (
                    select id, event_id, tenant_id, endpoint_id, attempt_count, run_attempts,
                        max_attempts, next_attempt_at, lease_until
                    from deliveries
                    where endpoint_id = $1 and status = 'pending' and not bypass
                      and next_attempt_at <= $2 and lease_until is null
                    order by next_attempt_at, id
                    limit $3
                ) d
                join events ev on ev.id = d.event_id
                order by d.next_attempt_at, d.id"#,
            )
            .bind(endpoint_id)
            .bind(now)
            .bind(room)
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
            rows.extend(due);
        }
        Ok(rows)
    }

    /// The clock due and lease times compare against: this process's (SQLite has one writer).
    async fn db_now(_tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<i64, StoreError> {
        Ok(crate::domain::time::now_micros())
    }

    /// Seals and opens secrets at rest.
    fn cipher(&self) -> &crate::crypto::Cipher {
        &self.cipher
    }

    /// Where this process's next claim starts looking for endpoints.
    fn claim_cursor(&self) -> &std::sync::Mutex<Option<String>> {
        &self.claim_cursor
    }

    /// The operations tenant (id or external id), if configured.
    fn operations(&self) -> Option<String> {
        self.operations.read().ok().and_then(|o| o.clone())
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

delivery_common!(SqliteStore, sqlx::Sqlite, lock_d = "", lock_e = "", lock_row = "", notify = "");

maintenance_common!(SqliteStore, sqlx::Sqlite);

store_common!(SqliteStore, {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await.map_err(|e| StoreError::Database(e.into()))
    }

    async fn listen_for_work(
        &self,
        _wakeup: std::sync::Arc<tokio::sync::Notify>,
        _shutdown: tokio_util::sync::CancellationToken,
    ) {
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
});
