//! The SQLite backend: one file in WAL mode with foreign keys on and a busy timeout; writes go
//! through a single-connection pool (SQLite has one writer), reads through a separate pool.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreError;
use super::db::{Db, Pools};
use super::rows::ClaimRow;
use super::sql::{Sql, Tx};
use crate::config::{Durability, StoreConfig};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// WAL pages after which a commit checkpoints them into the database file (SQLite's default is
/// 1,000, about 4 MiB). The hot path rewrites the same index pages over and over; checkpointing
/// them ten times less often writes each to the file (and waits for the disk) ten times less
/// often: ten endpoints +17 % deliveries/s and −11 % CPU per delivery (docs/benchmarks.md,
/// Round 4). The `-wal` file grows to about 40 MiB under a steady write load.
const WAL_AUTOCHECKPOINT: u32 = 10_000;

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
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT.to_string());
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

/// Most planned endpoints one due-rows statement reads (SQLite allows 500 terms in a compound
/// select).
const DUE_ROWS_CHUNK: usize = 200;

/// Due rows of the planned endpoints (see `Tx::due_rows`): one indexed read per endpoint, the
/// reads of up to [`DUE_ROWS_CHUNK`] endpoints in one statement (`union all`), in plan order.
/// Every statement is a hop to the database thread and back, so a read per endpoint was a
/// cycle's largest cost with ten endpoints. Each endpoint's read stops at its room before the
/// join with the events; what the plan's rooms add up to past `limit` is cut off here, in plan
/// order, as a read per endpoint would have stopped.
pub(crate) async fn due_rows(
    tx: &mut Tx,
    plan: &[(String, i64)],
    now: i64,
    limit: i64,
) -> Result<Vec<ClaimRow>, StoreError> {
    let mut rows: Vec<ClaimRow> = Vec::new();
    for chunk in plan.chunks(DUE_ROWS_CHUNK) {
        let room = limit - rows.len() as i64;
        if room <= 0 {
            break;
        }
        let mut read = Sql::build("");
        for (position, (endpoint_id, endpoint_room)) in chunk.iter().enumerate() {
            if position > 0 {
                read.push(" union all ");
            }
            read.push(&format!("select {position} as plan_position, "));
            read.push(
                r#"d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count,
                d.run_attempts, d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
            from (
                select id, event_id, tenant_id, endpoint_id, attempt_count, run_attempts,
                    max_attempts, next_attempt_at, lease_until
                from deliveries
                where endpoint_id = "#,
            );
            read.push_bind(endpoint_id.as_str());
            read.push(" and status = 'pending' and not bypass and next_attempt_at <= ").push_bind(now);
            read.push(" and lease_until is null order by next_attempt_at, id limit ");
            read.push_bind((*endpoint_room).min(room));
            read.push(") d join events ev on ev.id = d.event_id");
        }
        // By position (a compound select orders by its result columns): the plan position, then
        // `next_attempt_at` and `id`.
        read.push(" order by 1, 9, 2 limit ").push_bind(room);
        rows.extend(read.fetch_all::<ClaimRow>(&mut *tx).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One statement reads every planned endpoint's due rows: each endpoint's oldest first and
    /// at most its room, endpoints in plan order, cut off at the limit in that order; rows not
    /// due yet, leased or of an endpoint outside the plan are not read.
    #[tokio::test]
    async fn due_rows_of_many_endpoints_come_in_plan_order_within_each_room() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let db = connect(&url, &StoreConfig::default()).await.expect("opened");
        let Pools::Sqlite { writer, .. } = &db.pools else { unreachable!("SQLite") };
        MIGRATOR.run(writer).await.expect("migrated");
        let setup = [
            "insert into tenants (id, name, created_at, updated_at) values ('tnt_1', 't', 0, 0)",
            "insert into endpoints (id, tenant_id, url, secret, created_at, updated_at) values
                ('ep_a', 'tnt_1', 'https://a', 's', 0, 0), ('ep_b', 'tnt_1', 'https://b', 's', 0, 0),
                ('ep_c', 'tnt_1', 'https://c', 's', 0, 0), ('ep_d', 'tnt_1', 'https://d', 's', 0, 0)",
            "insert into events (id, tenant_id, event_type, payload, created_at) values ('evt_1', 'tnt_1', 'x', '{}', 0)",
            // (delivery, endpoint, due at, leased until)
            "insert into deliveries (id, event_id, tenant_id, endpoint_id, status, next_attempt_at, lease_until, created_at)
             select column1, 'evt_1', 'tnt_1', column2, 'pending', column3, column4, 0 from (values
                ('dlv_a3', 'ep_a', 30, null), ('dlv_a1', 'ep_a', 10, null), ('dlv_a2', 'ep_a', 20, null),
                ('dlv_a0', 'ep_a', 5, 999), ('dlv_a9', 'ep_a', 500, null),
                ('dlv_b2', 'ep_b', 20, null), ('dlv_b1', 'ep_b', 10, null), ('dlv_b3', 'ep_b', 30, null),
                ('dlv_c1', 'ep_c', 10, null), ('dlv_d1', 'ep_d', 10, null))",
        ];
        for statement in setup {
            sqlx::query(statement).execute(writer).await.expect(statement);
        }
        let plan = |rooms: &[(&str, i64)]| -> Vec<(String, i64)> {
            rooms.iter().map(|(id, room)| (id.to_string(), *room)).collect()
        };
        let ids = |rows: Vec<ClaimRow>| -> Vec<String> { rows.into_iter().map(|row| row.id).collect() };
        let mut tx = db.begin().await.expect("begun");
        let rows =
            due_rows(&mut tx, &plan(&[("ep_b", 2), ("ep_a", 5), ("ep_c", 1)]), 100, 10).await.expect("read");
        assert_eq!(ids(rows), ["dlv_b1", "dlv_b2", "dlv_a1", "dlv_a2", "dlv_a3", "dlv_c1"]);
        let rows =
            due_rows(&mut tx, &plan(&[("ep_b", 2), ("ep_a", 5), ("ep_c", 1)]), 100, 4).await.expect("read");
        assert_eq!(
            ids(rows),
            ["dlv_b1", "dlv_b2", "dlv_a1", "dlv_a2"],
            "cut off at the limit, in plan order"
        );
        let rows = due_rows(&mut tx, &plan(&[("ep_a", 1)]), 100, 10).await.expect("read");
        assert_eq!(ids(rows), ["dlv_a1"]);
        let rows = due_rows(&mut tx, &plan(&[]), 100, 10).await.expect("read");
        assert!(rows.is_empty());
    }
}
