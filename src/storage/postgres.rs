//! The PostgreSQL backend: one pool per process; many processes may share one database.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A store on a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    operations: std::sync::RwLock<Option<String>>,
    cipher: crate::crypto::Cipher,
    /// Where this process's next claim starts looking for endpoints (round robin).
    claim_cursor: std::sync::Mutex<Option<String>>,
}

impl PgStore {
    /// Connects to the database named by `url`.
    pub async fn connect(
        url: &str,
        config: &StoreConfig,
        cipher: crate::crypto::Cipher,
    ) -> anyhow::Result<PgStore> {
        let synchronous_commit = match config.durability {
            Durability::Durable => "on",
            Durability::Relaxed => "off",
        };
        let options = PgConnectOptions::from_str(url)
            .context("invalid `database_url`")?
            .options([("synchronous_commit", synchronous_commit)]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .with_context(|| {
                format!("could not connect to PostgreSQL at `{}`", crate::config::redact_url(url))
            })?;
        Ok(PgStore { pool, operations: Default::default(), cipher, claim_cursor: Default::default() })
    }

    /// Up to `limit` due deliveries over the planned endpoints, each endpoint's oldest first and
    /// at most its room: one statement, whatever the number of endpoints (a round trip each was
    /// most of a cycle with many endpoints). The nested loop walks the plan in order and each
    /// lateral read stops at its room; with no outer sort, the outer limit stops the whole read
    /// (sorting by plan position made every cycle read every planned endpoint's rows, ~45 ms
    /// with 1,000 endpoints, even to claim one). Events are joined per row.
    async fn due_rows(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        plan: &[(String, i64)],
        now: i64,
        limit: i64,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        let (ids, rooms): (Vec<&str>, Vec<i64>) = plan.iter().map(|(id, room)| (id.as_str(), *room)).unzip();
        sqlx::query_as(
            r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload
            from unnest($1::text[], $2::bigint[]) as p(endpoint_id, room)
            cross join lateral (
                select id, event_id, tenant_id, endpoint_id, attempt_count, run_attempts,
                    max_attempts, next_attempt_at, lease_until
                from deliveries
                where endpoint_id = p.endpoint_id and status = 'pending' and not bypass
                  and next_attempt_at <= $3 and lease_until is null
                order by next_attempt_at, id
                limit p.room
            ) d
            cross join lateral (select payload from events where id = d.event_id) ev
            limit $4"#,
        )
        .bind(ids)
        .bind(rooms)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)
    }

    /// The database clock, in Unix microseconds: every replica compares due and lease times
    /// against it, never against its own clock.
    async fn db_now(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<i64, StoreError> {
        let (now,): (i64,) =
            sqlx::query_as("select (extract(epoch from clock_timestamp()) * 1000000)::bigint")
                .fetch_one(&mut **tx)
                .await
                .map_err(map_err)?;
        Ok(now)
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

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

delivery_common!(
    PgStore,
    sqlx::Postgres,
    lock_d = " for update of d skip locked",
    lock_e = " for update of e skip locked",
    lock_row = " for update",
    notify = "select pg_notify('herald_work', '')"
);

maintenance_common!(PgStore, sqlx::Postgres);

store_common!(PgStore, {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Database(e.into()))
    }

    async fn listen_for_work(
        &self,
        wakeup: std::sync::Arc<tokio::sync::Notify>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "could not LISTEN for work; polling until it can");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(error) = listener.listen("herald_work").await {
                tracing::warn!(%error, "could not LISTEN for work; polling until it can");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Whatever was committed while not listening is found by the next claim.
            wakeup.notify_one();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.recv() => match received {
                        Ok(_) => wakeup.notify_one(),
                        Err(error) => {
                            tracing::warn!(%error, "the LISTEN connection failed; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }
});
