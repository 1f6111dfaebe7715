//! The two backends behind one small interface: the pools, and the few things SQLite and
//! PostgreSQL really do differently — the clock due times compare against, reading due rows for
//! many endpoints at once, row locks, and waking other processes (`NOTIFY`). Everything else is
//! shared SQL (see `sql.rs`).

use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use super::rows::ClaimRow;
use super::sql::{Ex, Tx};
use super::{postgres, sqlite};

/// The pools of one backend.
pub(crate) enum Db {
    /// One writer connection (SQLite has one writer) and a pool of readers.
    Sqlite {
        /// The single write connection.
        writer: SqlitePool,
        /// Read connections.
        reader: SqlitePool,
    },
    /// One pool for everything; many processes may share the database.
    Postgres(PgPool),
}

impl Db {
    /// Opens a write transaction.
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite { writer, .. } => Tx::Sqlite(writer.begin().await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Where single-statement writes run.
    pub(crate) fn writer(&self) -> Ex<'_> {
        match self {
            Db::Sqlite { writer, .. } => Ex::SqlitePool(writer),
            Db::Postgres(pool) => Ex::PgPool(pool),
        }
    }

    /// Where reads run.
    pub(crate) fn reader(&self) -> Ex<'_> {
        match self {
            Db::Sqlite { reader, .. } => Ex::SqlitePool(reader),
            Db::Postgres(pool) => Ex::PgPool(pool),
        }
    }

    /// Applies pending migrations.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let done = match self {
            Db::Sqlite { writer, .. } => sqlite::MIGRATOR.run(writer).await,
            Db::Postgres(pool) => postgres::MIGRATOR.run(pool).await,
        };
        done.map_err(|error| StoreError::Database(error.into()))
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Wakes `wakeup` whenever another process commits work, until `shutdown` (PostgreSQL
    /// `LISTEN`; on SQLite there is one process, which wakes its dispatcher directly).
    pub(crate) async fn listen_for_work(&self, wakeup: Arc<Notify>, shutdown: CancellationToken) {
        if let Db::Postgres(pool) = self {
            postgres::listen_for_work(pool, wakeup, shutdown).await;
        }
    }
}

impl Tx {
    /// The clock due and lease times compare against, in Unix microseconds: the database's on
    /// PostgreSQL (every replica agrees), this process's on SQLite (its only writer).
    pub(crate) async fn now(&mut self) -> Result<i64, StoreError> {
        match self {
            Tx::Sqlite(_) => Ok(crate::domain::time::now_micros()),
            Tx::Postgres(tx) => postgres::now(tx).await,
        }
    }

    /// Tells every replica's dispatcher that work was committed (PostgreSQL `NOTIFY`, sent at
    /// commit).
    pub(crate) async fn notify_work(&mut self) -> Result<(), StoreError> {
        if let Tx::Postgres(tx) = self {
            sqlx::query("select pg_notify('herald_work', '')").execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// `select … <locking>`: on PostgreSQL the clause as given (`for update of d skip locked`),
    /// so that concurrent claims and reapers on several replicas never take the same rows; on
    /// SQLite nothing (one writer).
    pub(crate) fn locking(&self, clause: &'static str) -> &'static str {
        match self {
            Tx::Sqlite(_) => "",
            Tx::Postgres(_) => clause,
        }
    }

    /// Up to `limit` due deliveries over the planned `(endpoint, room)` pairs, each endpoint's
    /// oldest first and at most its room, endpoints in plan order.
    pub(crate) async fn due_rows(
        &mut self,
        plan: &[(String, i64)],
        now: i64,
        limit: i64,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        match self {
            Tx::Sqlite(tx) => sqlite::due_rows(tx, plan, now, limit).await,
            Tx::Postgres(tx) => postgres::due_rows(tx, plan, now, limit).await,
        }
    }
}
