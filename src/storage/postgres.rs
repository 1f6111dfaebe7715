//! The PostgreSQL backend: one pool per process; many processes may share one database, so due
//! and lease times compare against the database clock and other replicas are woken with
//! `LISTEN/NOTIFY`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use super::db::{Db, Pools};
use super::rows::ClaimRow;
use crate::config::{Durability, StoreConfig};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connects to the database named by `url`.
pub(crate) async fn connect(url: &str, config: &StoreConfig) -> anyhow::Result<Db> {
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
    Ok(Db::new(Pools::Postgres(pool), config.durability == Durability::Durable))
}

/// The database clock, in Unix microseconds: every replica compares due and lease times
/// against it, never against its own clock.
pub(crate) async fn now(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> Result<i64, StoreError> {
    let (now,): (i64,) = sqlx::query_as("select (extract(epoch from clock_timestamp()) * 1000000)::bigint")
        .fetch_one(&mut **tx)
        .await?;
    Ok(now)
}

/// Due rows of the planned endpoints (see `Tx::due_rows`) in one statement, whatever the number
/// of endpoints (a round trip each was most of a cycle with many endpoints). The nested loop
/// walks the plan in order and each lateral read stops at its room; with no outer sort, the
/// outer limit stops the whole read (sorting by plan position made every cycle read every
/// planned endpoint's rows, ~45 ms with 1,000 endpoints, even to claim one). Events are joined
/// per row.
pub(crate) async fn due_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    plan: &[(String, i64)],
    now: i64,
    limit: i64,
) -> Result<Vec<ClaimRow>, StoreError> {
    let (ids, rooms): (Vec<&str>, Vec<i64>) = plan.iter().map(|(id, room)| (id.as_str(), *room)).unzip();
    let rows = sqlx::query_as(
        r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
            d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
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
        cross join lateral (select payload, traceparent, tracestate from events where id = d.event_id) ev
        limit $4"#,
    )
    .bind(ids)
    .bind(rooms)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// `LISTEN herald_work` until `shutdown`, waking `wakeup` on each notification; reconnects when
/// the connection fails (and wakes once, since work may have been committed meanwhile).
pub(crate) async fn listen_for_work(
    pool: &PgPool,
    wakeup: Arc<Notify>,
    on_work: impl Fn(),
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
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
        on_work();
        wakeup.notify_one();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.recv() => match received {
                    Ok(_) => {
                        on_work();
                        wakeup.notify_one();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the LISTEN connection failed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}
