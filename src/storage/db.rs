//! The two backends behind one small interface: the pools, and the few things SQLite and
//! PostgreSQL really do differently — the clock due times compare against, reading due rows for
//! many endpoints at once, row locks, and waking other processes (`NOTIFY`). Everything else is
//! shared SQL (see `sql.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use super::rows::ClaimRow;
use super::sql::{Ex, Tx};
use super::{postgres, sqlite};

/// How long a write transaction's commit must last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// What an answer to a client promises: with `[store] durability = "durable"` (the default),
    /// durable against power loss (SQLite `synchronous=FULL`, PostgreSQL
    /// `synchronous_commit=on`).
    Durable,
    /// The dispatcher's bookkeeping (claims, outcomes, lease reaping): it survives a crash of the
    /// Herald process, always, but does not wait for the disk (SQLite `synchronous=NORMAL`,
    /// PostgreSQL `synchronous_commit=off`). A power loss or an OS crash may lose its last
    /// moments; then the attempts of those moments are made again and their rows are missing.
    /// The next durable commit makes everything before it durable too.
    Bookkeeping,
}

/// The pools of one backend, and how commits are made durable.
pub(crate) struct Db {
    pub(crate) pools: Pools,
    /// `[store] durability = "durable"`.
    pub(crate) durable: bool,
    /// SQLite: whether the writer connection is set to `synchronous=NORMAL` now.
    pub(crate) sqlite_relaxed: AtomicBool,
}

/// The pools.
pub(crate) enum Pools {
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
    /// The pools, with commits as durable as `durable` says.
    pub(crate) fn new(pools: Pools, durable: bool) -> Db {
        Db { pools, durable, sqlite_relaxed: AtomicBool::new(false) }
    }

    /// Opens a write transaction whose commit is [`Commit::Durable`].
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        self.begin_for(Commit::Durable).await
    }

    /// Opens a write transaction whose commit lasts as `commit` says.
    pub(crate) async fn begin_for(&self, commit: Commit) -> Result<Tx, StoreError> {
        let relaxed = self.durable && commit == Commit::Bookkeeping;
        match &self.pools {
            Pools::Sqlite { writer, .. } => {
                let conn = writer.acquire().await?;
                // The setting may not change inside a transaction, so it is set just before one,
                // on the one writer connection, when it differs — in the same call as `BEGIN`
                // (one hop to the database thread, not two); the flag changes only once it did
                // (a connection the pool opens again starts at FULL: at worst a bookkeeping
                // commit waits for the disk).
                let begin = if self.durable && self.sqlite_relaxed.load(Ordering::Acquire) != relaxed {
                    Some(if relaxed {
                        "pragma synchronous = normal; begin"
                    } else {
                        "pragma synchronous = full; begin"
                    })
                } else {
                    None
                };
                let tx = sqlx::Transaction::begin(conn, begin.map(sqlx::SqlStr::from_static)).await;
                // After a failed call the connection may or may not have switched: remembered
                // as relaxed, the next durable transaction sets FULL again (never the reverse).
                if begin.is_some() && (relaxed || tx.is_ok()) {
                    self.sqlite_relaxed.store(relaxed, Ordering::Release);
                }
                Ok(Tx::Sqlite(tx?, Default::default()))
            }
            Pools::Postgres(pool) => {
                // The relaxed commit is set in the message that begins the transaction (one
                // round trip, not two: a dispatch cycle is a dozen of them).
                let tx = if relaxed {
                    pool.begin_with("begin; set local synchronous_commit = off").await?
                } else {
                    pool.begin().await?
                };
                Ok(Tx::Postgres(tx))
            }
        }
    }

    /// Where single-statement writes run.
    pub(crate) fn writer(&self) -> Ex<'_> {
        match &self.pools {
            Pools::Sqlite { writer, .. } => Ex::SqlitePool(writer),
            Pools::Postgres(pool) => Ex::PgPool(pool),
        }
    }

    /// Where reads run.
    pub(crate) fn reader(&self) -> Ex<'_> {
        match &self.pools {
            Pools::Sqlite { reader, .. } => Ex::SqlitePool(reader),
            Pools::Postgres(pool) => Ex::PgPool(pool),
        }
    }

    /// Applies pending migrations.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let done = match &self.pools {
            Pools::Sqlite { writer, .. } => sqlite::MIGRATOR.run(writer).await,
            Pools::Postgres(pool) => postgres::MIGRATOR.run(pool).await,
        };
        done.map_err(|error| StoreError::Database(error.into()))
    }

    /// Closes every connection.
    pub(crate) async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }

    /// Wakes `wakeup` whenever another process commits work, until `shutdown` (PostgreSQL
    /// `LISTEN`; on SQLite there is one process, which wakes its dispatcher directly).
    pub(crate) async fn listen_for_work(
        &self,
        wakeup: Arc<Notify>,
        on_work: impl Fn(),
        shutdown: CancellationToken,
    ) {
        if let Pools::Postgres(pool) = &self.pools {
            postgres::listen_for_work(pool, wakeup, on_work, shutdown).await;
        }
    }
}

impl Tx {
    /// The clock due and lease times compare against, in Unix microseconds: the database's on
    /// PostgreSQL (every replica agrees), this process's on SQLite (its only writer).
    pub(crate) async fn now(&mut self) -> Result<i64, StoreError> {
        match self {
            Tx::Sqlite(..) => Ok(crate::domain::time::now_micros()),
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
            Tx::Sqlite(..) => "",
            Tx::Postgres(_) => clause,
        }
    }

    /// `from <table> <alias><hint>`: on SQLite `indexed by <index>` as given, for a statement
    /// whose index its planner cannot tell from another without statistics (a fresh database
    /// has none) — a partial index over a handful of rows against one over the whole history;
    /// on PostgreSQL, whose planner knows the sizes, nothing.
    pub(crate) fn sqlite_index(&self, clause: &'static str) -> &'static str {
        match self {
            Tx::Sqlite(..) => clause,
            Tx::Postgres(_) => "",
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
            Tx::Sqlite(..) => sqlite::due_rows(self, plan, now, limit).await,
            Tx::Postgres(tx) => postgres::due_rows(tx, plan, now, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, StoreConfig};

    async fn synchronous(tx: &mut Tx) -> i64 {
        let Tx::Sqlite(tx, _) = tx else { unreachable!("an SQLite transaction") };
        let (level,): (i64,) = sqlx::query_as("pragma synchronous").fetch_one(&mut **tx).await.expect("read");
        level
    }

    /// Under `durable`, answers wait for the disk (FULL = 2) and bookkeeping does not
    /// (NORMAL = 1), switching back and forth on the one writer connection.
    #[tokio::test]
    async fn bookkeeping_commits_skip_the_disk_wait_and_answers_do_not() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let config = StoreConfig { durability: Durability::Durable, ..StoreConfig::default() };
        let db = sqlite::connect(&url, &config).await.expect("opened");
        for (commit, level) in [(Commit::Bookkeeping, 1), (Commit::Durable, 2), (Commit::Bookkeeping, 1)] {
            let mut tx = db.begin_for(commit).await.expect("begun");
            assert_eq!(synchronous(&mut tx).await, level, "{commit:?}");
            tx.commit().await.expect("committed");
        }
        let relaxed = StoreConfig { durability: Durability::Relaxed, ..StoreConfig::default() };
        let db = sqlite::connect(&url, &relaxed).await.expect("opened");
        let mut tx = db.begin_for(Commit::Durable).await.expect("begun");
        assert_eq!(synchronous(&mut tx).await, 1, "relaxed: everything is NORMAL");
    }

    /// The same on PostgreSQL: a bookkeeping transaction commits with `synchronous_commit`
    /// off (set with its `BEGIN`), an answer's with the connection's `on`.
    #[tokio::test]
    #[cfg_attr(not(herald_test_postgres), ignore = "needs PostgreSQL: set HERALD_TEST_POSTGRES_URL")]
    async fn bookkeeping_commits_skip_the_disk_wait_and_answers_do_not_on_postgres() {
        let url = std::env::var("HERALD_TEST_POSTGRES_URL").expect("a PostgreSQL server");
        let config = StoreConfig { durability: Durability::Durable, ..StoreConfig::default() };
        let db = postgres::connect(&url, &config).await.expect("connected");
        for (commit, setting) in
            [(Commit::Bookkeeping, "off"), (Commit::Durable, "on"), (Commit::Bookkeeping, "off")]
        {
            let mut tx = db.begin_for(commit).await.expect("begun");
            let Tx::Postgres(pg) = &mut tx else { unreachable!("a PostgreSQL transaction") };
            let (value,): (String,) =
                sqlx::query_as("show synchronous_commit").fetch_one(&mut **pg).await.expect("read");
            assert_eq!(value, setting, "{commit:?}");
            tx.commit().await.expect("committed");
        }
    }
}
