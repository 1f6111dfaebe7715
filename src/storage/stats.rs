//! Stats: window totals from the rollup, the on-call overview of endpoints, and the backlog
//! gauges.

use super::rows::*;
use super::sql::sql;
use super::*;

impl Store {
    /// Rollup rows of one endpoint (`period` `m` or `h`, buckets from `since`), summed, with the
    /// merged latency histogram.
    pub async fn endpoint_window(
        &self,
        endpoint_id: &str,
        period: &str,
        since: i64,
    ) -> Result<WindowTotals, StoreError> {
        let rows: Vec<(i64, i64, i64, String)> = sql(r#"select attempts, successes, failures, latency_counts
            from endpoint_stats
            where endpoint_id = $1 and period = $2 and bucket_start >= $3"#)
        .bind(endpoint_id)
        .bind(period)
        .bind(since)
        .fetch_all(self.db.reader())
        .await?;
        let mut totals = WindowTotals::default();
        for (attempts, successes, failures, latency) in rows {
            totals.attempts += attempts;
            totals.successes += successes;
            totals.failures += failures;
            crate::domain::stats::merge_histogram(&mut totals.latency, &latency);
        }
        Ok(totals)
    }

    /// Rollup rows of one endpoint, or of every endpoint when `endpoint_id` is `None` (`period`
    /// `m` or `h`, buckets from `since`), for a time series.
    pub async fn stats_buckets(
        &self,
        endpoint_id: Option<&str>,
        period: &str,
        since: i64,
    ) -> Result<Vec<crate::domain::stats::BucketRow>, StoreError> {
        sql(r#"select bucket_start, attempts, failures, latency_counts
            from endpoint_stats
            where period = $1 and bucket_start >= $2 and ($3 is null or endpoint_id = $3)"#)
        .bind(period)
        .bind(since)
        .bind(endpoint_id)
        .fetch_all(self.db.reader())
        .await
    }

    /// Every live endpoint (of one tenant, or all) with its window totals and backlog; no
    /// latency histograms.
    pub async fn endpoints_overview(
        &self,
        tenant_id: Option<&str>,
        endpoint_id: Option<&str>,
        period: &str,
        since: i64,
    ) -> Result<Vec<EndpointHealth>, StoreError> {
        let endpoints: Vec<HealthRow> = sql(
            r#"select id, tenant_id, url, enabled, disabled_reason, last_error, last_error_at, last_success_at
            from endpoints
            where deleted_at is null and ($1 is null or tenant_id = $1) and ($2 is null or id = $2)"#,
        )
        .bind(tenant_id)
        .bind(endpoint_id)
        .fetch_all(self.db.reader())
        .await?;
        let sums: Vec<(String, i64, i64, i64)> =
            sql(r#"select endpoint_id, cast(sum(attempts) as bigint), cast(sum(successes) as bigint),
                cast(sum(failures) as bigint)
            from endpoint_stats
            where period = $1 and bucket_start >= $2 and ($3 is null or tenant_id = $3)
              and ($4 is null or endpoint_id = $4)
            group by endpoint_id"#)
            .bind(period)
            .bind(since)
            .bind(tenant_id)
            .bind(endpoint_id)
            .fetch_all(self.db.reader())
            .await?;
        // The oldest due, unclaimed delivery is what `herald_delivery_lag_seconds` measures.
        let now = crate::domain::time::now_micros();
        let backlog: Vec<(String, i64, Option<i64>, Option<i64>)> =
            sql(r#"select endpoint_id, count(*), min(created_at),
                min(case when next_attempt_at <= $3 and (lease_until is null or lease_until < $3)
                    then next_attempt_at end)
            from deliveries
            where status = 'pending' and ($1 is null or tenant_id = $1) and ($2 is null or endpoint_id = $2)
            group by endpoint_id"#)
            .bind(tenant_id)
            .bind(endpoint_id)
            .bind(now)
            .fetch_all(self.db.reader())
            .await?;
        let sums: std::collections::HashMap<String, (i64, i64, i64)> =
            sums.into_iter().map(|(id, a, s, f)| (id, (a, s, f))).collect();
        let backlog: std::collections::HashMap<String, (i64, Option<i64>, Option<i64>)> =
            backlog.into_iter().map(|(id, n, oldest, due)| (id, (n, oldest, due))).collect();
        Ok(endpoints
            .into_iter()
            .map(|row| {
                let (attempts, successes, failures) = sums.get(&row.id).copied().unwrap_or_default();
                let (pending, oldest_pending_at, oldest_due_at) =
                    backlog.get(&row.id).copied().unwrap_or_default();
                EndpointHealth {
                    totals: WindowTotals { attempts, successes, failures, latency: Default::default() },
                    pending,
                    oldest_pending_at,
                    oldest_due_at,
                    endpoint_id: row.id,
                    tenant_id: row.tenant_id,
                    url: row.url,
                    enabled: row.enabled,
                    disabled_reason: row.disabled_reason,
                    last_error: row.last_error,
                    last_error_at: row.last_error_at,
                    last_success_at: row.last_success_at,
                }
            })
            .collect())
    }

    /// Backlog figures for the metrics gauges.
    pub async fn delivery_gauges(&self) -> Result<DeliveryGauges, StoreError> {
        let now = crate::domain::time::now_micros();
        let (pending,): (i64,) = sql("select count(*) from deliveries where status = 'pending'")
            .fetch_one(self.db.reader())
            .await?;
        // A parked backlog (open circuit) is not the dispatcher falling behind.
        let (oldest,): (Option<i64>,) = sql(r#"select min(next_attempt_at)
            from deliveries
            where status = 'pending'
              and next_attempt_at <= $1
              and (lease_until is null or lease_until < $1)
              and endpoint_id not in (select id from endpoints where circuit_state <> 'closed')"#)
        .bind(now)
        .fetch_one(self.db.reader())
        .await?;
        let (disabled, circuit_open): (i64, i64) = sql(r#"select
                coalesce(sum(case when not enabled then 1 else 0 end), 0),
                coalesce(sum(case when enabled and circuit_state <> 'closed' then 1 else 0 end), 0)
            from endpoints
            where deleted_at is null"#)
        .fetch_one(self.db.reader())
        .await?;
        Ok(DeliveryGauges {
            pending,
            lag_seconds: oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1e6),
            endpoints_disabled: disabled,
            endpoints_circuit_open: circuit_open,
        })
    }

    /// When the earliest pending delivery due after `now` falls due (Unix µs), if any, or a batch
    /// left to fill must go, whichever is first.
    pub async fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let stored = self.next_stored_due_after(now).await?;
        Ok(stored.into_iter().chain(self.take_batch_deadline(now)).min())
    }

    /// The earliest `next_attempt_at` after `now` of a pending delivery (a retry, a delay): the
    /// stored half of [`Store::next_due_after`].
    pub async fn next_stored_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
        let (next,): (Option<i64>,) = sql(
            "select min(next_attempt_at) from deliveries where status = 'pending' and next_attempt_at > $1",
        )
        .bind(now)
        .fetch_one(self.db.reader())
        .await?;
        Ok(next)
    }

    /// The deadline a batch the last claims left to fill must go by, if it is after `now`
    /// (taken: each is reported once); the in-memory half of [`Store::next_due_after`].
    pub fn take_batch_deadline(&self, now: i64) -> Option<i64> {
        self.batch_deadline.lock().ok().and_then(|mut deadline| deadline.take()).filter(|at| *at > now)
    }

    /// Remembers that a batch left to fill must go at `at` (see `next_due_after`).
    pub(super) fn wake_at(&self, at: i64) {
        if let Ok(mut deadline) = self.batch_deadline.lock() {
            *deadline = Some(deadline.map_or(at, |earlier| earlier.min(at)));
        }
    }
}
