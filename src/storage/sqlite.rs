//! The SQLite backend: one file in WAL mode with foreign keys on and a busy timeout; writes go
//! through a single-connection pool (SQLite has one writer), reads through a separate pool.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;
use super::db::{Db, Pools};
use super::rows::ClaimRow;
use super::sql::{Tx, sql};
use crate::config::{Durability, StoreConfig};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Opens (creating if missing) the database file named by `url`.
pub(crate) async fn connect(url: &str, config: &StoreConfig) -> anyhow::Result<Db> {
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
    Ok(Db::new(Pools::Sqlite { writer, reader }, config.durability == Durability::Durable))
}

/// Due rows of the planned endpoints (see `Tx::due_rows`): one indexed read per endpoint. On
/// SQLite a statement is a call into the same process, so one per endpoint costs little.
pub(crate) async fn due_rows(
    tx: &mut Tx,
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
        let due: Vec<ClaimRow> =
            sql(r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count,
                d.run_attempts, d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
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
            order by d.next_attempt_at, d.id"#)
            .bind(endpoint_id)
            .bind(now)
            .bind(room)
            .fetch_all(&mut *tx)
            .await?;
        rows.extend(due);
    }
    Ok(rows)
}
