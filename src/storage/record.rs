//! Recording finished attempts: the deliveries' new states (only while their lease token still
//! matches), the attempt rows, the stats rollup, endpoint health, Retry-After pauses and 410
//! disabling. What each outcome means is decided in `crate::domain`; this file writes it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::claim::CLAIM_CHUNK;
use super::rows::StressRow;
use super::sql::{Sql, Tx, sql};
use super::*;
use crate::domain::breaker::{self, Circuit, CircuitState, Transition};
use crate::domain::concurrency::{Observed, Window};
use crate::domain::delivery::{Stopped, after_attempt_on};
use crate::domain::endpoint::HealthChange;
use crate::domain::retry::{ErrorKind, Outcome, is_success};
use crate::domain::stats::{Rollup, histogram_json, merge_histogram};
use crate::domain::time::format_micros;

/// What one recorded batch does to one endpoint: its health, its circuit, its window.
struct EndpointChange<'a> {
    stored: StressRow,
    health: HealthChange<'a>,
    circuit: Circuit,
    window: Window,
    observed: Observed,
    transitions: Vec<Transition>,
    last_error: Option<&'a str>,
}

impl Store {
    /// Records finished attempts inside `tx`; returns how many were stale.
    pub(super) async fn record_tx(
        &self,
        tx: &mut Tx,
        now: i64,
        records: &[AttemptRecord],
    ) -> Result<u64, StoreError> {
        let operations = self.operations();
        // Recorders lock their own deliveries (leased to them, so no two recorders share one),
        // then the stats buckets, then the endpoints in id order, as late as they can: a claim
        // skips a locked endpoint rather than wait for it, so the shorter an endpoint stays
        // locked, the fairer the claims of every process.
        let mut ordered: Vec<&AttemptRecord> = records.iter().collect();
        ordered.sort_by(|a, b| (&a.endpoint_id, &a.delivery_id).cmp(&(&b.endpoint_id, &b.delivery_id)));
        // A delivery twice in one batch: the first result wins, the second is stale.
        ordered.dedup_by(|later, first| later.delivery_id == first.delivery_id);
        let fresh = Self::record_deliveries(tx, now, &ordered).await?;
        ordered.retain(|record| fresh.contains(&record.delivery_id));
        let stale = (records.len() - ordered.len()) as u64;
        Self::record_attempt_rows(tx, &ordered).await?;
        let mut rollup = Rollup::default();
        for record in &ordered {
            rollup.add(
                &record.endpoint_id,
                &record.tenant_id,
                record.finished_at,
                is_success(record.status_code),
                record.duration_ms,
            );
        }
        Self::write_rollup(tx, &rollup).await?;
        let stored = self.lock_endpoint_stress(tx, &ordered).await?;
        // Health and the circuit follow the attempts in the order they finished.
        ordered.sort_by_key(|record| (record.endpoint_id.as_str(), record.finished_at));
        let mut changes = self.endpoint_changes(stored, &ordered, now)?;
        for record in &ordered {
            if matches!(record.outcome, Outcome::Retry { .. }) {
                Self::fail_retry_if_stopped(tx, record, now).await?;
            }
            if let Some(pause) = record.outcome.pause() {
                sql(r#"update endpoints set paused_until = $2
                    where id = $1 and (paused_until is null or paused_until < $2)"#)
                .bind(&record.endpoint_id)
                .bind(now + pause.as_micros() as i64)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(reason) = record.outcome.disables_endpoint() {
                let target = (record.tenant_id.as_str(), record.endpoint_id.as_str());
                Self::disable_endpoint_tx(tx, operations.as_deref(), target, reason, now).await?;
            }
            // An open circuit has reported the outage (`endpoint.circuit_opened`): the
            // deliveries it leaves failed are not reported one by one.
            let parked = changes
                .get(record.endpoint_id.as_str())
                .is_some_and(|change| change.circuit.state != CircuitState::Closed);
            if record.outcome.status() == crate::domain::delivery::DeliveryStatus::Failed && !parked {
                Self::emit_exhausted(tx, operations.as_deref(), &record.delivery_id, now).await?;
            }
        }
        for (endpoint_id, change) in &mut changes {
            Self::write_endpoint_change(tx, endpoint_id, change, now).await?;
            for transition in std::mem::take(&mut change.transitions) {
                self.report_transition(
                    tx,
                    operations.as_deref(),
                    &change.stored,
                    change.last_error,
                    transition,
                )
                .await?;
            }
        }
        Ok(stale)
    }

    /// The stored circuit and window of every endpoint in `records`, locked, in id order.
    async fn lock_endpoint_stress(
        &self,
        tx: &mut Tx,
        records: &[&AttemptRecord],
    ) -> Result<Vec<StressRow>, StoreError> {
        let mut ids: Vec<&str> = records.iter().map(|record| record.endpoint_id.as_str()).collect();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut select = Sql::build(
            r#"select id, tenant_id, in_flight_limit, in_flight_window, window_successes, window_backed_off,
                latency_baseline_ms, circuit_state, circuit_failures, circuit_opened_at, circuit_next_probe_at,
                circuit_failed_probes
            from endpoints
            where id in ("#,
        );
        select.push_list(ids).push(") order by id").push(tx.locking(" for update"));
        select.fetch_all(&mut *tx).await
    }

    /// Applies `records` (sorted by endpoint, then as they finished) to their endpoints' health,
    /// circuit (`Circuit::observe`) and window (`Window::adapt`).
    fn endpoint_changes<'a>(
        &self,
        stored: Vec<StressRow>,
        records: &[&'a AttemptRecord],
        now: i64,
    ) -> Result<BTreeMap<String, EndpointChange<'a>>, StoreError> {
        let mut changes: BTreeMap<String, EndpointChange<'a>> = BTreeMap::new();
        for row in stored {
            let circuit = Circuit::try_from(&row.circuit)?;
            let circuit = if self.stress.breaker.enabled() { circuit } else { circuit.without_breaker() };
            let window = row.window(self.stress.initial_in_flight);
            changes.insert(
                row.id.clone(),
                EndpointChange {
                    stored: row,
                    health: HealthChange::default(),
                    circuit,
                    window,
                    observed: Observed::default(),
                    transitions: Vec::new(),
                    last_error: None,
                },
            );
        }
        // A batch request is one outcome for the circuit and the window.
        let mut batches: HashSet<&str> = HashSet::new();
        for record in records {
            let Some(change) = changes.get_mut(record.endpoint_id.as_str()) else { continue };
            let success = is_success(record.status_code);
            change.health.add(success, record.error.as_deref());
            if !success {
                change.last_error = record.error.as_deref();
            }
            if let Some(batch_id) = &record.batch_id
                && !batches.insert(batch_id)
            {
                continue;
            }
            let signal = breaker::signal(record.status_code, record.error_kind);
            if let Some(transition) = change.circuit.observe(signal, record.probe, now, &self.stress.breaker)
            {
                change.transitions.push(transition);
            }
            change.observed.add(record.status_code, record.error_kind, record.duration_ms);
        }
        for change in changes.values_mut() {
            let cap = change.stored.in_flight_limit.unwrap_or(self.stress.max_in_flight_per_endpoint);
            change.window.adapt(&change.observed, cap);
        }
        Ok(changes)
    }

    /// Writes one endpoint's health, circuit and window after a batch.
    async fn write_endpoint_change(
        tx: &mut Tx,
        endpoint_id: &str,
        change: &EndpointChange<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (health, circuit, window) = (&change.health, &change.circuit, &change.window);
        sql(r#"update endpoints
            set last_success_at = case when $2 then $5 else last_success_at end,
                last_error = case when $3 then $4 else last_error end,
                last_error_at = case when $3 then $5 else last_error_at end,
                failing_since = case $6
                    when 'clear' then null
                    when 'now' then $5
                    else coalesce(failing_since, $5)
                end,
                circuit_state = $7, circuit_failures = $8, circuit_opened_at = $9,
                circuit_next_probe_at = $10, circuit_failed_probes = $11,
                in_flight_window = $12, window_successes = $13, window_backed_off = $14,
                latency_baseline_ms = $15
            where id = $1"#)
        .bind(endpoint_id)
        .bind(health.any_success)
        .bind(health.last_failure.is_some())
        .bind(health.last_failure.flatten())
        .bind(now)
        .bind(health.failing_since().as_str())
        .bind(circuit.state.as_str())
        .bind(circuit.consecutive_failures)
        .bind(circuit.opened_at)
        .bind(circuit.next_probe_at)
        .bind(circuit.failed_probes)
        .bind(window.size)
        .bind(window.successes)
        .bind(window.backed_off)
        .bind(window.baseline_ms)
        .defer(tx)
        .await?;
        let before = CircuitState::parse(&change.stored.circuit.circuit_state);
        if before != Some(circuit.state) {
            metrics::counter!(crate::metrics::CIRCUIT_TRANSITIONS, "to" => circuit.state.as_str())
                .increment(1);
        }
        Ok(())
    }

    /// Reports a circuit that opened or closed (`endpoint.circuit_opened`,
    /// `endpoint.circuit_closed`, DESIGN §14).
    async fn report_transition(
        &self,
        tx: &mut Tx,
        operations: Option<&str>,
        endpoint: &StressRow,
        last_error: Option<&str>,
        transition: Transition,
    ) -> Result<(), StoreError> {
        let (event_type, data) = match transition {
            Transition::Opened { at, consecutive_failures } => {
                tracing::warn!(endpoint.id = %endpoint.id, consecutive_failures, "circuit opened");
                (
                    "endpoint.circuit_opened",
                    serde_json::json!({
                        "tenant_id": endpoint.tenant_id,
                        "endpoint_id": endpoint.id,
                        "opened_at": format_micros(at),
                        "consecutive_failures": consecutive_failures,
                        "last_error": last_error,
                    }),
                )
            }
            Transition::Closed { at, opened_at } => {
                tracing::info!(endpoint.id = %endpoint.id, "circuit closed");
                (
                    "endpoint.circuit_closed",
                    serde_json::json!({
                        "tenant_id": endpoint.tenant_id,
                        "endpoint_id": endpoint.id,
                        "closed_at": format_micros(at),
                        "open_seconds": (at - opened_at).max(0) / 1_000_000,
                    }),
                )
            }
        };
        Self::emit_operational(tx, operations, &endpoint.tenant_id, event_type, data).await?;
        Ok(())
    }

    /// Writes the deliveries' new states with multi-row updates, only where the lease token still
    /// matches; returns the ids written (the others' leases were taken over: stale).
    async fn record_deliveries(
        tx: &mut Tx,
        now: i64,
        ordered: &[&AttemptRecord],
    ) -> Result<HashSet<String>, StoreError> {
        let mut fresh = HashSet::new();
        for chunk in ordered.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                r#"update deliveries
                set status = case when status = 'pending' then v.column3 else status end,
                    run_attempts = run_attempts - v.column7,
                    next_attempt_at = coalesce(v.column4, next_attempt_at),
                    completed_at = case when status = 'pending' then v.column5 else completed_at end,
                    last_error = case when status = 'pending' then v.column6 else last_error end,
                    lease_until = null,
                    lease_token = null
                from (values "#,
            );
            update.push_tuples(chunk, |row, record| {
                let (next_attempt_at, completed_at) = match record.outcome {
                    Outcome::Retry { after, .. } => (Some(now + after.as_micros() as i64), None),
                    Outcome::Delivered | Outcome::GiveUp { .. } => (None, Some(now)),
                };
                row.bind(&record.delivery_id)
                    .bind(&record.lease_token)
                    .bind(record.outcome.status().as_str())
                    .cast(next_attempt_at, "bigint")
                    .cast(completed_at, "bigint")
                    .bind(&record.last_error)
                    .cast(i32::from(refunded(record)), "integer");
            });
            update.push(
                ") as v where deliveries.id = v.column1 and deliveries.lease_token = v.column2 returning deliveries.id",
            );
            let ids: Vec<(String,)> = update.fetch_all(&mut *tx).await?;
            fresh.extend(ids.into_iter().map(|(id,)| id));
        }
        Ok(fresh)
    }

    /// Writes the outcomes onto the open attempt rows.
    async fn record_attempt_rows(tx: &mut Tx, ordered: &[&AttemptRecord]) -> Result<(), StoreError> {
        for chunk in ordered.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                r#"update attempts
                set finished_at = v.column2, duration_ms = v.column3, status_code = v.column4,
                    error_kind = v.column5, error = v.column6, response_body = v.column7,
                    timeout_ms = v.column8, started_at = coalesce(v.column9, attempts.started_at)
                from (values "#,
            );
            update.push_tuples(chunk, |row, record| {
                row.bind(&record.attempt_id)
                    .cast(record.finished_at, "bigint")
                    .cast(record.duration_ms, "bigint")
                    .cast(record.status_code, "integer")
                    .bind(record.error_kind.map(ErrorKind::as_str))
                    .bind(&record.error)
                    .bind(&record.response_body)
                    .cast(record.timeout_ms, "bigint")
                    .cast(record.started_at, "bigint");
            });
            update.push(") as v where attempts.id = v.column1 and attempts.finished_at is null");
            update.defer(tx).await?;
        }
        Ok(())
    }

    /// The endpoint may have been disabled or deleted while this attempt ran: the retry it asked
    /// for then fails like the rest of the endpoint's pending deliveries (`after_attempt_on`).
    async fn fail_retry_if_stopped(tx: &mut Tx, record: &AttemptRecord, now: i64) -> Result<(), StoreError> {
        let (enabled, deleted, test_event): (bool, bool, bool) = sql(r#"select e.enabled,
                e.deleted_at is not null as deleted, d.bypass
            from deliveries d
            join endpoints e on e.id = d.endpoint_id
            where d.id = $1"#)
        .bind(&record.delivery_id)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(reason) = after_attempt_on(Stopped::of(enabled, deleted), test_event, &record.outcome) {
            sql(r#"update deliveries set status = 'failed', last_error = $2, completed_at = $3
                where id = $1 and status = 'pending'"#)
            .bind(&record.delivery_id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Adds a batch's rollup to the stored buckets: created when missing, locked in one order,
    /// merged in memory and written back, three statements for all of them.
    async fn write_rollup(tx: &mut Tx, rollup: &Rollup) -> Result<(), StoreError> {
        if rollup.0.is_empty() {
            return Ok(());
        }
        let mut insert =
            Sql::build("insert into endpoint_stats (endpoint_id, tenant_id, period, bucket_start) values ");
        insert.push_tuples(rollup.0.keys(), |row, bucket| {
            row.bind(&bucket.endpoint_id).bind(&bucket.tenant_id).bind(bucket.period).bind(bucket.start);
        });
        insert.push(" on conflict do nothing");
        insert.defer(tx).await?;
        let mut select = Sql::build(
            r#"select endpoint_id, period, bucket_start, latency_counts
            from endpoint_stats
            where (endpoint_id, period, bucket_start) in (values "#,
        );
        select.push_tuples(rollup.0.keys(), |row, bucket| {
            row.bind(&bucket.endpoint_id).bind(bucket.period).bind(bucket.start);
        });
        select.push(") order by endpoint_id, period, bucket_start");
        select.push(tx.locking(" for update"));
        let stored: Vec<(String, String, i64, String)> = select.fetch_all(&mut *tx).await?;
        let stored: HashMap<(String, String, i64), String> = stored
            .into_iter()
            .map(|(endpoint_id, period, bucket, counts)| ((endpoint_id, period, bucket), counts))
            .collect();
        let mut update = Sql::build(
            r#"update endpoint_stats
            set attempts = attempts + v.column4, successes = successes + v.column5,
                failures = failures + v.column6, latency_counts = v.column7
            from (values "#,
        );
        update.push_tuples(&rollup.0, |row, (bucket, counts)| {
            let mut latency = counts.latency.clone();
            if let Some(stored) =
                stored.get(&(bucket.endpoint_id.clone(), bucket.period.to_owned(), bucket.start))
            {
                merge_histogram(&mut latency, stored);
            }
            row.bind(&bucket.endpoint_id)
                .bind(bucket.period)
                .cast(bucket.start, "bigint")
                .cast(counts.attempts, "bigint")
                .cast(counts.successes, "bigint")
                .cast(counts.failures, "bigint")
                .bind(histogram_json(&latency));
        });
        update.push(
            r#") as v
            where endpoint_stats.endpoint_id = v.column1 and endpoint_stats.period = v.column2
              and endpoint_stats.bucket_start = v.column3"#,
        );
        update.defer(tx).await?;
        Ok(())
    }
}

/// Whether an attempt is taken back from its delivery's run (a failed probe,
/// `breaker::refunds_attempt`).
fn refunded(record: &AttemptRecord) -> bool {
    breaker::refunds_attempt(record.probe, breaker::signal(record.status_code, record.error_kind))
}
