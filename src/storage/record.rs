//! Recording finished attempts: the deliveries' new states (only while their lease token still
//! matches), the attempt rows, the stats rollup, endpoint health, pauses and 410 disabling.

use super::claim::CLAIM_CHUNK;
use super::rows::*;
use super::sql::{Sql, Tx, sql};
use super::*;

/// A rollup bucket: (endpoint, tenant, period, bucket start).
type RollupKey = (String, String, &'static str, i64);
/// What a batch adds to a bucket: (attempts, successes, failures, latency histogram).
type RollupCounts = (i64, i64, i64, std::collections::BTreeMap<i64, i64>);

impl Store {
    /// Records finished attempts inside `tx`; returns how many were stale.
    pub(super) async fn record_tx(
        &self,
        tx: &mut Tx,
        now: i64,
        records: &[AttemptRecord],
    ) -> Result<u64, StoreError> {
        let operations = self.operations();
        // endpoint → its health after this batch, written once per endpoint below
        let mut health: std::collections::BTreeMap<&str, HealthChange<'_>> = Default::default();
        // (endpoint, tenant, period, bucket) → (attempts, successes, failures, latency histogram)
        let mut rollup: std::collections::BTreeMap<RollupKey, RollupCounts> = Default::default();
        // One lock order for every writer (endpoint, then delivery) keeps concurrent
        // recorders on PostgreSQL free of deadlocks.
        let mut ordered: Vec<&AttemptRecord> = records.iter().collect();
        ordered.sort_by(|a, b| (&a.endpoint_id, &a.delivery_id).cmp(&(&b.endpoint_id, &b.delivery_id)));
        // A delivery twice in one batch: the first result wins, the second is stale.
        ordered.dedup_by(|later, first| later.delivery_id == first.delivery_id);
        // Multi-row updates: every delivery whose lease token still matches, then the
        // attempts of those.
        let mut fresh: std::collections::HashSet<String> = Default::default();
        for chunk in ordered.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                r#"update deliveries
                set status = case when status = 'pending' then v.column3 else status end,
                    next_attempt_at = coalesce(v.column4, next_attempt_at),
                    completed_at = case when status = 'pending' then v.column5 else completed_at end,
                    last_error = case when status = 'pending' then v.column6 else last_error end,
                    lease_until = null,
                    lease_token = null
                from (values "#,
            );
            update.push_tuples(chunk, |row, record| {
                let (status, next_attempt_at, completed_at) = match record.next {
                    NextState::Delivered => ("delivered", None, Some(now)),
                    NextState::Retry(delay) => ("pending", Some(now + delay), None),
                    NextState::Failed => ("failed", None, Some(now)),
                };
                row.bind(&record.delivery_id)
                    .bind(&record.lease_token)
                    .bind(status)
                    .cast(next_attempt_at, "bigint")
                    .cast(completed_at, "bigint")
                    .bind(&record.last_error);
            });
            update.push(
                ") as v where deliveries.id = v.column1 and deliveries.lease_token = v.column2 returning deliveries.id",
            );
            let ids: Vec<(String,)> = update.fetch_all(&mut *tx).await?;
            fresh.extend(ids.into_iter().map(|(id,)| id));
        }
        ordered.retain(|record| fresh.contains(&record.delivery_id));
        let stale = (records.len() - ordered.len()) as u64;
        for chunk in ordered.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                r#"update attempts
                set finished_at = v.column2, duration_ms = v.column3, status_code = v.column4,
                    error_kind = v.column5, error = v.column6, response_body = v.column7
                from (values "#,
            );
            update.push_tuples(chunk, |row, record| {
                row.bind(&record.attempt_id)
                    .cast(record.finished_at, "bigint")
                    .cast(record.duration_ms, "bigint")
                    .cast(record.status_code, "integer")
                    .bind(record.error_kind)
                    .bind(&record.error)
                    .bind(&record.response_body);
            });
            update.push(") as v where attempts.id = v.column1 and attempts.finished_at is null");
            update.execute(&mut *tx).await?;
        }
        for record in ordered {
            if matches!(record.next, NextState::Retry(_)) {
                // The endpoint may have been disabled or deleted while this attempt ran:
                // its retry is then failed like the rest of its pending deliveries.
                let (enabled, deleted_at): (bool, Option<i64>) =
                    sql("select enabled, deleted_at from endpoints where id = $1")
                        .bind(&record.endpoint_id)
                        .fetch_one(&mut *tx)
                        .await?;
                if !enabled || deleted_at.is_some() {
                    let reason = if deleted_at.is_some() { "endpoint_deleted" } else { "endpoint_disabled" };
                    sql(r#"update deliveries set status = 'failed', last_error = $2, completed_at = $3
                        where id = $1 and status = 'pending' and not bypass"#)
                    .bind(&record.delivery_id)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let success = record.status_code.is_some_and(|s| (200..300).contains(&s));
            for (period, size) in [("m", crate::domain::stats::MINUTE), ("h", crate::domain::stats::HOUR)] {
                let bucket = crate::domain::stats::floor(record.finished_at, size);
                let entry = rollup
                    .entry((record.endpoint_id.clone(), record.tenant_id.clone(), period, bucket))
                    .or_default();
                entry.0 += 1;
                if success {
                    entry.1 += 1;
                } else {
                    entry.2 += 1;
                }
                *entry.3.entry(record.duration_ms.max(0)).or_default() += 1;
            }
            health.entry(record.endpoint_id.as_str()).or_default().add(record);
            if let Some(pause) = record.pause_for {
                sql(r#"update endpoints set paused_until = $2
                    where id = $1 and (paused_until is null or paused_until < $2)"#)
                .bind(&record.endpoint_id)
                .bind(now + pause)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(reason) = &record.disable_reason {
                let disabled =
                    sql(r#"update endpoints set enabled = false, disabled_reason = $2, disabled_at = $3
                    where id = $1 and enabled"#)
                    .bind(&record.endpoint_id)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if disabled > 0 {
                    Self::fail_pending(tx, &record.endpoint_id, "endpoint_disabled", now).await?;
                    let data = serde_json::json!({
                        "tenant_id": record.tenant_id,
                        "endpoint_id": record.endpoint_id,
                        "reason": reason,
                        "disabled_at": crate::domain::time::format_micros(now),
                    });
                    Self::emit_operational(
                        tx,
                        operations.as_deref(),
                        &record.tenant_id,
                        "endpoint.disabled",
                        data,
                        now,
                    )
                    .await?;
                }
            }
            if record.next == NextState::Failed {
                Self::emit_exhausted(tx, operations.as_deref(), &record.delivery_id, now).await?;
            }
        }
        if !rollup.is_empty() {
            // The batch's buckets: created when missing, locked in one order, merged in
            // memory and written back, three statements for all of them.
            let keys: Vec<_> = rollup.keys().collect();
            let mut insert = Sql::build(
                "insert into endpoint_stats (endpoint_id, tenant_id, period, bucket_start) values ",
            );
            insert.push_tuples(&keys, |row, (endpoint_id, tenant_id, period, bucket)| {
                row.bind(endpoint_id.as_str()).bind(tenant_id.as_str()).bind(*period).bind(*bucket);
            });
            insert.push(" on conflict do nothing");
            insert.execute(&mut *tx).await?;
            let mut select = Sql::build(
                r#"select endpoint_id, period, bucket_start, latency_counts
                from endpoint_stats
                where (endpoint_id, period, bucket_start) in (values "#,
            );
            select.push_tuples(&keys, |row, (endpoint_id, _, period, bucket)| {
                row.bind(endpoint_id.as_str()).bind(*period).bind(*bucket);
            });
            select.push(") order by endpoint_id, period, bucket_start");
            select.push(tx.locking(" for update"));
            let stored: Vec<(String, String, i64, String)> = select.fetch_all(&mut *tx).await?;
            let stored: std::collections::HashMap<(String, String, i64), String> = stored
                .into_iter()
                .map(|(endpoint_id, period, bucket, counts)| ((endpoint_id, period, bucket), counts))
                .collect();
            let rows: Vec<_> = rollup
                .iter()
                .map(|((endpoint_id, _, period, bucket), (attempts, successes, failures, latency))| {
                    let mut merged = latency.clone();
                    if let Some(counts) = stored.get(&(endpoint_id.clone(), (*period).to_owned(), *bucket)) {
                        crate::domain::stats::merge_histogram(&mut merged, counts);
                    }
                    (
                        endpoint_id,
                        *period,
                        *bucket,
                        *attempts,
                        *successes,
                        *failures,
                        crate::domain::stats::histogram_json(&merged),
                    )
                })
                .collect();
            let mut update = Sql::build(
                r#"update endpoint_stats
                set attempts = attempts + v.column4, successes = successes + v.column5,
                    failures = failures + v.column6, latency_counts = v.column7
                from (values "#,
            );
            update.push_tuples(
                &rows,
                |row, (endpoint_id, period, bucket, attempts, successes, failures, counts)| {
                    row.bind(endpoint_id.as_str())
                        .bind(*period)
                        .cast(*bucket, "bigint")
                        .cast(*attempts, "bigint")
                        .cast(*successes, "bigint")
                        .cast(*failures, "bigint")
                        .bind(counts);
                },
            );
            update.push(
                r#") as v
                where endpoint_stats.endpoint_id = v.column1 and endpoint_stats.period = v.column2
                  and endpoint_stats.bucket_start = v.column3"#,
            );
            update.execute(&mut *tx).await?;
        }
        for (endpoint_id, health) in health {
            let failing_since = match (health.last_succeeded, health.any_success) {
                (true, _) => "clear",
                (false, true) => "now",
                (false, false) => "keep",
            };
            sql(r#"update endpoints
                set last_success_at = case when $2 then $5 else last_success_at end,
                    last_error = case when $3 then $4 else last_error end,
                    last_error_at = case when $3 then $5 else last_error_at end,
                    failing_since = case $6
                        when 'clear' then null
                        when 'now' then $5
                        else coalesce(failing_since, $5)
                    end
                where id = $1"#)
            .bind(endpoint_id)
            .bind(health.any_success)
            .bind(health.last_error.is_some())
            .bind(health.last_error.flatten())
            .bind(now)
            .bind(failing_since)
            .execute(&mut *tx)
            .await?;
        }
        Ok(stale)
    }
}
