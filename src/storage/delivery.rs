//! Delivery SQL shared by both backends: ingest with fan-out, claims with leases, batched
//! recording, lease reaping, replays and the read routes. `delivery_common!` expands to inherent
//! `*_impl` methods; the `Store` impl delegates to them. Backends pass the row-locking suffix
//! their claim queries need (PostgreSQL: `for update … skip locked`; SQLite has one writer).

use std::collections::BTreeMap;

use crate::domain::delivery::{Attempt, Delivery, Event};
use crate::domain::endpoint::Secrets;

use super::StoreError;
use super::common::corrupt;

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: String,
    tenant_id: String,
    event_type: String,
    payload: Option<String>,
    idempotency_key: Option<String>,
    deliveries: i32,
    created_at: i64,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            id: row.id,
            tenant_id: row.tenant_id,
            event_type: row.event_type,
            payload: row.payload,
            idempotency_key: row.idempotency_key,
            deliveries: row.deliveries,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: String,
    event_id: String,
    endpoint_id: String,
    status: String,
    attempt_count: i32,
    next_attempt_at: i64,
    lease_until: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    completed_at: Option<i64>,
}

impl DeliveryRow {
    pub(crate) fn into_delivery(self, now: i64) -> Delivery {
        let pending = self.status == "pending";
        Delivery {
            id: self.id,
            event_id: self.event_id,
            endpoint_id: self.endpoint_id,
            in_flight: pending && self.lease_until.is_some_and(|l| l > now),
            next_attempt_at: pending.then_some(self.next_attempt_at),
            status: self.status,
            attempt_count: self.attempt_count,
            last_error: self.last_error,
            created_at: self.created_at,
            completed_at: self.completed_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    id: String,
    number: i32,
    started_at: i64,
    duration_ms: Option<i64>,
    status_code: Option<i32>,
    error_kind: Option<String>,
    error: Option<String>,
    response_body: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        Attempt {
            id: row.id,
            number: row.number,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            error_kind: row.error_kind,
            error: row.error,
            response_body: row.response_body,
        }
    }
}

/// The fan-out view of an endpoint.
#[derive(sqlx::FromRow)]
pub(crate) struct FanoutRow {
    pub(crate) id: String,
    pub(crate) event_types: String,
    pub(crate) enabled: bool,
    pub(crate) fifo: bool,
}

/// An endpoint with deliveries that may be claimable, and what sending to it needs.
#[derive(sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub(crate) id: String,
    pub(crate) max_in_flight: i32,
    pub(crate) fifo: bool,
    pub(crate) rate_limit_per_second: Option<i32>,
    pub(crate) rate_next_at: Option<i64>,
    pub(crate) url: String,
    pub(crate) headers: String,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_secret_expires_at: Option<i64>,
    /// Attempts in flight now (leases not lapsed), across every process.
    pub(crate) in_flight: i64,
}

impl CandidateRow {
    pub(crate) fn headers(
        &self,
        cipher: &crate::crypto::Cipher,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let sealed: BTreeMap<String, String> = serde_json::from_str(&self.headers).map_err(corrupt)?;
        sealed.into_iter().map(|(name, value)| Ok((name, cipher.open(&value).map_err(corrupt)?))).collect()
    }

    pub(crate) fn secrets(&self, cipher: &crate::crypto::Cipher) -> Result<Secrets, StoreError> {
        Ok(Secrets {
            current: cipher.open(&self.secret).map_err(corrupt)?,
            previous: self.previous_secret.as_deref().map(|p| cipher.open(p)).transpose().map_err(corrupt)?,
            previous_expires_at: self.previous_secret_expires_at,
        })
    }

    /// How many requests the endpoint's rate limit allows now, and the new theoretical arrival
    /// time after `n` of them (GCRA with a burst of a tenth of a second's worth).
    pub(crate) fn rate_room(&self, now: i64) -> Option<(i64, i64, i64)> {
        let rate = i64::from(self.rate_limit_per_second?).max(1);
        let interval = 1_000_000 / rate;
        let burst = (rate / 10).max(1);
        let tat = self.rate_next_at.unwrap_or(now).max(now);
        let allowed = ((now + burst * interval - tat) / interval).max(0);
        Some((allowed, tat, interval))
    }
}

/// A claimable delivery.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimRow {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) tenant_id: String,
    pub(crate) endpoint_id: String,
    pub(crate) attempt_count: i32,
    pub(crate) run_attempts: i32,
    pub(crate) max_attempts: Option<i32>,
    pub(crate) next_attempt_at: i64,
    pub(crate) lease_until: Option<i64>,
    pub(crate) payload: Option<String>,
}

/// Most rows one multi-row claim statement carries (well under both backends' bind limits).
pub(crate) const CLAIM_CHUNK: usize = 500;

/// Most rows one multi-row insert carries at ingest (12 binds a delivery row: well under both
/// backends' bind limits).
pub(crate) const INSERT_CHUNK: usize = 1000;

/// A delivery row ingest writes with a multi-row insert.
pub(crate) struct NewDeliveryRow<'a> {
    pub(crate) id: String,
    pub(crate) event: &'a super::NewEvent,
    pub(crate) endpoint_id: String,
    pub(crate) status: &'static str,
    pub(crate) fifo_seq: Option<i64>,
    pub(crate) last_error: Option<&'static str>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) bypass: bool,
}

/// What one recording batch did to an endpoint's health columns.
#[derive(Default)]
pub(crate) struct HealthChange<'a> {
    /// Some attempt succeeded.
    pub(crate) any_success: bool,
    /// The last attempt in the batch succeeded.
    pub(crate) last_succeeded: bool,
    /// The last failure's error, when some attempt failed.
    pub(crate) last_error: Option<Option<&'a str>>,
}

impl<'a> HealthChange<'a> {
    pub(crate) fn add(&mut self, record: &'a super::AttemptRecord) {
        let success = record.next == super::NextState::Delivered;
        self.last_succeeded = success;
        if success {
            self.any_success = true;
        } else {
            self.last_error = Some(record.error.as_deref());
        }
    }
}

/// An endpoint's health columns.
#[derive(sqlx::FromRow)]
pub(crate) struct HealthRow {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) url: String,
    pub(crate) enabled: bool,
    pub(crate) disabled_reason: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<i64>,
    pub(crate) last_success_at: Option<i64>,
}

/// A delivery whose lease lapsed.
#[derive(sqlx::FromRow)]
pub(crate) struct ExpiredRow {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) run_attempts: i32,
    pub(crate) max_attempts: Option<i32>,
}

/// What a replay needs to know about a delivery.
#[derive(sqlx::FromRow)]
pub(crate) struct ReplayRow {
    pub(crate) status: String,
    pub(crate) lease_until: Option<i64>,
    pub(crate) enabled: bool,
    pub(crate) deleted_at: Option<i64>,
    pub(crate) payload_gone: bool,
}

/// Expands to inherent `*_impl` methods on `$store`. `$lock` is appended to the claim and reap
/// selects (row locks on PostgreSQL, empty on SQLite); `$lock_e` locks candidate endpoints.
macro_rules! delivery_common {
    (
        $store:ty,
        $db:ty,
        lock_d = $lock:literal,
        lock_e = $lock_e:literal,
        lock_row = $lock_row:literal,
        notify = $notify:literal
    ) => {
        impl $store {
            /// Custom header values sealed for storage, as JSON.
            fn seal_headers(&self, headers: &std::collections::BTreeMap<String, String>) -> String {
                let sealed: std::collections::BTreeMap<&String, String> =
                    headers.iter().map(|(name, value)| (name, self.cipher().seal(value))).collect();
                to_json(&sealed)
            }

            /// An endpoint read from the store, its header values decrypted.
            fn open_endpoint(&self, mut endpoint: Endpoint) -> Result<Endpoint, StoreError> {
                for value in endpoint.headers.values_mut() {
                    *value = self.cipher().open(value).map_err(corrupt)?;
                }
                Ok(endpoint)
            }

            /// Secrets read from the store, decrypted.
            fn open_secrets(&self, secrets: Secrets) -> Result<Secrets, StoreError> {
                Ok(Secrets {
                    current: self.cipher().open(&secrets.current).map_err(corrupt)?,
                    previous: secrets.previous.as_deref().map(|p| self.cipher().open(p)).transpose().map_err(corrupt)?,
                    previous_expires_at: secrets.previous_expires_at,
                })
            }

            /// Tells every replica's dispatcher that work was committed (PostgreSQL `NOTIFY`, sent
            /// at commit); nothing on SQLite, whose one process wakes its dispatcher directly.
            async fn notify_work(tx: &mut sqlx::Transaction<'_, $db>) -> Result<(), StoreError> {
                if !$notify.is_empty() {
                    sqlx::query($notify).execute(&mut **tx).await.map_err(map_err)?;
                }
                Ok(())
            }

            /// Fails an endpoint's pending deliveries that are not in flight.
            async fn fail_pending(
                tx: &mut sqlx::Transaction<'_, $db>,
                endpoint_id: &str,
                reason: &str,
                now: i64,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query(
                    r#"update deliveries
                    set status = 'failed', last_error = $2, completed_at = $3
                    where endpoint_id = $1 and status = 'pending' and not bypass and lease_until is null"#,
                )
                .bind(endpoint_id)
                .bind(reason)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
                Ok(done.rows_affected())
            }

            /// Writes an operational event about `subject_tenant` for the operations tenant, in `tx`.
            /// Nothing is reported about the operations tenant's own endpoints (no loops).
            async fn emit_operational(
                tx: &mut sqlx::Transaction<'_, $db>,
                operations: Option<&str>,
                subject_tenant: &str,
                event_type: &str,
                data: serde_json::Value,
                // The reported change's own time is in `data`; the event is accepted now.
                _changed_at: i64,
            ) -> Result<bool, StoreError> {
                let Some(key) = operations else { return Ok(false) };
                let ops: Option<(String,)> = sqlx::query_as(
                    "select id from tenants where (id = $1 or external_id = $1) and deleted_at is null",
                )
                .bind(key)
                .fetch_optional(&mut **tx)
                .await
                .map_err(map_err)?;
                let Some((ops_id,)) = ops else { return Ok(false) };
                if ops_id == subject_tenant {
                    return Ok(false);
                }
                // Accepted now by the database clock, whatever clock the reported change used.
                let now = Self::db_now(tx).await?;
                let id = $crate::domain::id::new_id($crate::domain::id::IdKind::Event);
                let payload = $crate::domain::event::envelope(
                    &id,
                    event_type,
                    &$crate::domain::time::format_micros(now),
                    &data.to_string(),
                );
                let event = NewEvent {
                    id,
                    tenant_id: ops_id,
                    event_type: event_type.to_owned(),
                    payload,
                    idempotency: None,
                    created_at: now,
                    only_endpoint: None,
                };
                Self::ingest_tx(tx, std::slice::from_ref(&event), now).await?;
                Ok(true)
            }

            /// Reports a delivery left `failed`, at most 10 a minute per endpoint; the first one
            /// after a quiet spell carries how many were suppressed.
            async fn emit_exhausted(
                tx: &mut sqlx::Transaction<'_, $db>,
                operations: Option<&str>,
                delivery_id: &str,
                now: i64,
            ) -> Result<(), StoreError> {
                if operations.is_none() {
                    return Ok(());
                }
                let row: Option<(String, String, String, i32, Option<String>, Option<i64>, i32, i32)> =
                    sqlx::query_as(
                        r#"select d.tenant_id, d.endpoint_id, d.event_id, d.attempt_count, d.last_error,
                            e.exhausted_window_start, e.exhausted_sent, e.exhausted_suppressed
                        from deliveries d
                        join endpoints e on e.id = d.endpoint_id
                        where d.id = $1"#,
                    )
                    .bind(delivery_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(map_err)?;
                let Some((tenant_id, endpoint_id, event_id, attempts, last_error, window, sent, suppressed)) = row
                else {
                    return Ok(());
                };
                let (window, sent) = match window {
                    Some(start) if now - start < 60_000_000 => (start, sent),
                    _ => (now, 0),
                };
                if sent >= 10 {
                    sqlx::query("update endpoints set exhausted_suppressed = exhausted_suppressed + 1 where id = $1")
                        .bind(&endpoint_id)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?;
                    return Ok(());
                }
                let mut data = serde_json::json!({
                    "tenant_id": tenant_id,
                    "endpoint_id": endpoint_id,
                    "event_id": event_id,
                    "delivery_id": delivery_id,
                    "attempts": attempts,
                    "last_error": last_error,
                });
                if suppressed > 0 {
                    data["suppressed"] = suppressed.into();
                }
                if Self::emit_operational(tx, operations, &tenant_id, "delivery.exhausted", data, now).await? {
                    sqlx::query(
                        r#"update endpoints
                        set exhausted_window_start = $2, exhausted_sent = $3, exhausted_suppressed = 0
                        where id = $1"#,
                    )
                    .bind(&endpoint_id)
                    .bind(window)
                    .bind(sent + 1)
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
                }
                Ok(())
            }

            /// Writes events and their fan-out inside `tx` (ingest, and operational events written
            /// in the transaction of the change they report).
            async fn ingest_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[NewEvent],
                idempotency_since: i64,
            ) -> Result<Vec<IngestOutcome>, StoreError> {
                let mut outcomes = Vec::with_capacity(events.len());
                // Rows written by multi-row inserts: at the end, or before an idempotency lookup
                // that may need to see them.
                let mut event_rows: Vec<(&NewEvent, i32)> = Vec::with_capacity(events.len());
                let mut delivery_rows: Vec<NewDeliveryRow<'_>> = Vec::with_capacity(events.len());
                let mut fanout: std::collections::HashMap<String, Vec<FanoutRow>> = Default::default();
                for event in events {
                    if let Some((key, hash)) = &event.idempotency {
                        let scope = format!("events:{}", event.tenant_id);
                        sqlx::query(
                            "delete from idempotency_keys where scope = $1 and key = $2 and created_at < $3",
                        )
                        .bind(&scope)
                        .bind(key)
                        .bind(idempotency_since)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?;
                        let inserted = sqlx::query(
                            r#"insert into idempotency_keys (scope, key, request_hash, resource_id, created_at)
                            values ($1, $2, $3, $4, $5)
                            on conflict do nothing"#,
                        )
                        .bind(&scope)
                        .bind(key)
                        .bind(hash)
                        .bind(&event.id)
                        .bind(event.created_at)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                        if inserted == 0 {
                            Self::flush_ingest(tx, &mut event_rows, &mut delivery_rows).await?;
                            let (known_hash, resource_id): (String, Option<String>) = sqlx::query_as(
                                "select request_hash, resource_id from idempotency_keys where scope = $1 and key = $2",
                            )
                            .bind(&scope)
                            .bind(key)
                            .fetch_one(&mut **tx)
                            .await
                            .map_err(map_err)?;
                            if known_hash != *hash {
                                outcomes.push(IngestOutcome::KeyConflict);
                                continue;
                            }
                            let first: Option<EventRow> = sqlx::query_as(
                                r#"select id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at
                                from events
                                where id = $1"#,
                            )
                            .bind(resource_id)
                            .fetch_optional(&mut **tx)
                            .await
                            .map_err(map_err)?;
                            match first {
                                Some(first) => {
                                    outcomes.push(IngestOutcome::Replayed(first.into()));
                                    continue;
                                }
                                None => {
                                    sqlx::query(
                                        r#"update idempotency_keys set resource_id = $3, created_at = $4
                                        where scope = $1 and key = $2"#,
                                    )
                                    .bind(&scope)
                                    .bind(key)
                                    .bind(&event.id)
                                    .bind(event.created_at)
                                    .execute(&mut **tx)
                                    .await
                                    .map_err(map_err)?;
                                }
                            }
                        }
                    }
                    // (endpoint id, enabled, fifo lane, bypass)
                    let targets: Vec<(String, bool, bool, bool)> = match &event.only_endpoint {
                        Some(endpoint_id) => vec![(endpoint_id.clone(), true, false, true)],
                        None => {
                            if !fanout.contains_key(&event.tenant_id) {
                                let rows: Vec<FanoutRow> = sqlx::query_as(
                                    r#"select id, event_types, enabled, fifo
                                    from endpoints
                                    where tenant_id = $1 and deleted_at is null
                                    order by id"#,
                                )
                                .bind(&event.tenant_id)
                                .fetch_all(&mut **tx)
                                .await
                                .map_err(map_err)?;
                                fanout.insert(event.tenant_id.clone(), rows);
                            }
                            let mut targets = Vec::new();
                            for row in fanout.get(&event.tenant_id).map(Vec::as_slice).unwrap_or_default() {
                                let patterns: Vec<String> =
                                    serde_json::from_str(&row.event_types).map_err(corrupt)?;
                                if $crate::domain::event_type::subscribed(&patterns, &event.event_type) {
                                    targets.push((row.id.clone(), row.enabled, row.fifo, false));
                                }
                            }
                            targets
                        }
                    };
                    event_rows.push((event, targets.len() as i32));
                    for (endpoint_id, enabled, fifo, bypass) in &targets {
                        let fifo_seq: Option<i64> = if *fifo && *enabled {
                            let (seq,): (i64,) = sqlx::query_as(
                                r#"update endpoints set next_fifo_seq = next_fifo_seq + 1
                                where id = $1
                                returning next_fifo_seq"#,
                            )
                            .bind(endpoint_id)
                            .fetch_one(&mut **tx)
                            .await
                            .map_err(map_err)?;
                            Some(seq)
                        } else {
                            None
                        };
                        let (status, last_error, completed_at) = if *enabled {
                            ("pending", None, None)
                        } else {
                            ("failed", Some("endpoint_disabled"), Some(event.created_at))
                        };
                        delivery_rows.push(NewDeliveryRow {
                            id: $crate::domain::id::new_id($crate::domain::id::IdKind::Delivery),
                            event,
                            endpoint_id: endpoint_id.clone(),
                            status,
                            fifo_seq,
                            last_error,
                            completed_at,
                            bypass: *bypass,
                        });
                    }
                    outcomes.push(IngestOutcome::Created { deliveries: targets.len() as i32 });
                }
                let work = delivery_rows.iter().any(|row| row.status == "pending");
                Self::flush_ingest(tx, &mut event_rows, &mut delivery_rows).await?;
                if work {
                    Self::notify_work(tx).await?;
                }
                Ok(outcomes)
            }

            /// Writes the pending event and delivery rows with multi-row inserts, and empties them.
            async fn flush_ingest(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &mut Vec<(&NewEvent, i32)>,
                deliveries: &mut Vec<NewDeliveryRow<'_>>,
            ) -> Result<(), StoreError> {
                for chunk in events.chunks(INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "insert into events (id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at) ",
                    );
                    insert.push_values(chunk, |mut row, (event, count)| {
                        row.push_bind(&event.id)
                            .push_bind(&event.tenant_id)
                            .push_bind(&event.event_type)
                            .push_bind(&event.payload)
                            .push_bind(event.idempotency.as_ref().map(|(key, _)| key.as_str()))
                            .push_bind(*count)
                            .push_bind(event.created_at);
                    });
                    insert.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                for chunk in deliveries.chunks(INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        r#"insert into deliveries (
                            id, event_id, tenant_id, endpoint_id, status, next_attempt_at, fifo_seq,
                            last_error, completed_at, max_attempts, bypass, created_at
                        ) "#,
                    );
                    insert.push_values(chunk, |mut row, d| {
                        row.push_bind(&d.id)
                            .push_bind(&d.event.id)
                            .push_bind(&d.event.tenant_id)
                            .push_bind(&d.endpoint_id)
                            .push_bind(d.status)
                            .push_bind(d.event.created_at)
                            .push_bind(d.fifo_seq)
                            .push_bind(d.last_error)
                            .push_bind(d.completed_at)
                            .push_bind(d.bypass.then_some(1i32))
                            .push_bind(d.bypass)
                            .push_bind(d.event.created_at);
                    });
                    insert.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                events.clear();
                deliveries.clear();
                Ok(())
            }

            async fn ingest_impl(
                &self,
                events: &[NewEvent],
                idempotency_since: i64,
            ) -> Result<Vec<IngestOutcome>, StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let outcomes = Self::ingest_tx(&mut tx, events, idempotency_since).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(outcomes)
            }

            async fn get_event_impl(&self, tenant_id: &str, id: &str) -> Result<Event, StoreError> {
                let row: EventRow = sqlx::query_as(
                    r#"select id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at
                    from events
                    where tenant_id = $1 and id = $2"#,
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                Ok(row.into())
            }

            async fn list_events_impl(
                &self,
                tenant_id: &str,
                filter: &EventFilter,
                page: &PageQuery,
            ) -> Result<Vec<Event>, StoreError> {
                let rows: Vec<EventRow> = sqlx::query_as(
                    r#"select id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at
                    from events
                    where tenant_id = $1
                      and ($2 is null or event_type = $2)
                      and ($3 is null or created_at >= $3)
                      and ($4 is null or created_at < $4)
                      and ($5 is null or id < $5)
                    order by id desc
                    limit $6"#,
                )
                .bind(tenant_id)
                .bind(&filter.event_type)
                .bind(filter.since)
                .bind(filter.until)
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                Ok(rows.into_iter().map(Event::from).collect())
            }

            async fn list_event_deliveries_impl(&self, event_id: &str) -> Result<Vec<Delivery>, StoreError> {
                let rows: Vec<DeliveryRow> = sqlx::query_as(
                    r#"select id, event_id, endpoint_id, status, attempt_count, next_attempt_at, lease_until,
                        last_error, created_at, completed_at
                    from deliveries
                    where event_id = $1
                    order by id"#,
                )
                .bind(event_id)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let now = $crate::domain::time::now_micros();
                Ok(rows.into_iter().map(|r| r.into_delivery(now)).collect())
            }

            async fn list_deliveries_impl(
                &self,
                tenant_id: &str,
                filter: &DeliveryFilter,
                page: &PageQuery,
            ) -> Result<Vec<Delivery>, StoreError> {
                let rows: Vec<DeliveryRow> = sqlx::query_as(
                    r#"select id, event_id, endpoint_id, status, attempt_count, next_attempt_at, lease_until,
                        last_error, created_at, completed_at
                    from deliveries
                    where tenant_id = $1
                      and ($2 is null or status = $2)
                      and ($3 is null or endpoint_id = $3)
                      and ($4 is null or event_id = $4)
                      and ($5 is null or created_at >= $5)
                      and ($6 is null or created_at < $6)
                      and ($7 is null or id < $7)
                    order by id desc
                    limit $8"#,
                )
                .bind(tenant_id)
                .bind(&filter.status)
                .bind(&filter.endpoint_id)
                .bind(&filter.event_id)
                .bind(filter.since)
                .bind(filter.until)
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let now = $crate::domain::time::now_micros();
                Ok(rows.into_iter().map(|r| r.into_delivery(now)).collect())
            }

            async fn get_delivery_impl(&self, tenant_id: &str, id: &str) -> Result<Delivery, StoreError> {
                let row: DeliveryRow = sqlx::query_as(
                    r#"select id, event_id, endpoint_id, status, attempt_count, next_attempt_at, lease_until,
                        last_error, created_at, completed_at
                    from deliveries
                    where tenant_id = $1 and id = $2"#,
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                Ok(row.into_delivery($crate::domain::time::now_micros()))
            }

            async fn list_attempts_impl(&self, delivery_id: &str) -> Result<Vec<Attempt>, StoreError> {
                let rows: Vec<AttemptRow> = sqlx::query_as(
                    r#"select id, number, started_at, duration_ms, status_code, error_kind, error, response_body
                    from attempts
                    where delivery_id = $1
                    order by number"#,
                )
                .bind(delivery_id)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                Ok(rows.into_iter().map(Attempt::from).collect())
            }

            async fn retry_delivery_impl(&self, tenant_id: &str, id: &str) -> Result<(), RetryError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let now = Self::db_now(&mut tx).await?;
                let row: Option<ReplayRow> = sqlx::query_as(
                    r#"select d.status, d.lease_until, e.enabled, e.deleted_at, ev.payload is null as payload_gone
                    from deliveries d
                    join endpoints e on e.id = d.endpoint_id
                    join events ev on ev.id = d.event_id
                    where d.tenant_id = $1 and d.id = $2"#,
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let row = row.ok_or(RetryError::NotFound)?;
                if row.lease_until.is_some_and(|l| l > now) {
                    return Err(RetryError::InFlight);
                }
                if row.deleted_at.is_some() {
                    return Err(RetryError::EndpointDeleted);
                }
                if !row.enabled {
                    return Err(RetryError::EndpointDisabled);
                }
                if row.payload_gone {
                    return Err(RetryError::PayloadGone);
                }
                if row.status == "pending" {
                    sqlx::query("update deliveries set next_attempt_at = $2 where id = $1")
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                } else {
                    sqlx::query(
                        r#"update deliveries
                        set status = 'pending', run_attempts = 0, next_attempt_at = $2, completed_at = null,
                            max_attempts = null, lease_until = null, lease_token = null
                        where id = $1"#,
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                Self::notify_work(&mut tx).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn recover_endpoint_impl(
                &self,
                tenant_id: &str,
                id: &str,
                since: i64,
                until: i64,
            ) -> Result<u64, RetryError> {
                let state: Option<(bool,)> = sqlx::query_as(
                    "select enabled from endpoints where tenant_id = $1 and id = $2 and deleted_at is null",
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(self.reader())
                .await
                .map_err(map_err)?;
                match state {
                    None => return Err(RetryError::NotFound),
                    Some((false,)) => return Err(RetryError::EndpointDisabled),
                    Some((true,)) => {}
                }
                let mut requeued = 0;
                loop {
                    let mut tx = self.writer().begin().await.map_err(map_err)?;
                    let now = Self::db_now(&mut tx).await?;
                    let done = sqlx::query(
                        r#"update deliveries
                        set status = 'pending', run_attempts = 0, next_attempt_at = $4, completed_at = null,
                            max_attempts = null
                        where id in (
                            select d.id
                            from deliveries d
                            join events ev on ev.id = d.event_id
                            where d.endpoint_id = $1
                              and d.status = 'failed'
                              and d.created_at >= $2
                              and d.created_at < $3
                              and ev.payload is not null
                              and coalesce(d.last_error, '') <> 'endpoint_deleted'
                            limit 1000
                        )"#,
                    )
                    .bind(id)
                    .bind(since)
                    .bind(until)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
                    if done > 0 {
                        Self::notify_work(&mut tx).await?;
                    }
                    tx.commit().await.map_err(map_err)?;
                    requeued += done;
                    if done < 1000 {
                        return Ok(requeued);
                    }
                }
            }

            async fn reap_expired_leases_impl(&self, max_run_attempts: i32) -> Result<u64, StoreError> {
                let operations = self.operations();
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let now = Self::db_now(&mut tx).await?;
                let expired: Vec<ExpiredRow> = sqlx::query_as(concat!(
                    r#"select d.id, d.status, d.run_attempts, d.max_attempts
                    from deliveries d
                    where d.lease_until is not null and d.lease_until < $1
                    limit 500"#,
                    $lock
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                for row in &expired {
                    sqlx::query(
                        r#"update attempts
                        set finished_at = $2, duration_ms = ($2 - started_at) / 1000, error_kind = 'interrupted',
                            error = 'the attempt was interrupted before its outcome was recorded'
                        where delivery_id = $1 and finished_at is null"#,
                    )
                    .bind(&row.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    let allowed = row.max_attempts.unwrap_or(max_run_attempts);
                    let (status, completed_at) = match row.status.as_str() {
                        "pending" if row.run_attempts >= allowed => ("failed", Some(now)),
                        "pending" => ("pending", None),
                        _ => ("", None),
                    };
                    if status.is_empty() {
                        sqlx::query("update deliveries set lease_until = null, lease_token = null where id = $1")
                            .bind(&row.id)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    } else {
                        sqlx::query(
                            r#"update deliveries
                            set status = $2, completed_at = $3, next_attempt_at = $4, last_error = 'interrupted',
                                lease_until = null, lease_token = null
                            where id = $1"#,
                        )
                        .bind(&row.id)
                        .bind(status)
                        .bind(completed_at)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        if status == "failed" {
                            Self::emit_exhausted(&mut tx, operations.as_deref(), &row.id, now).await?;
                        }
                    }
                }
                tx.commit().await.map_err(map_err)?;
                Ok(expired.len() as u64)
            }

            /// Records `records`, then claims up to `limit` deliveries that can start now, in one
            /// transaction: the slots the records free are claimed again at once.
            async fn record_and_claim_impl(
                &self,
                records: &[AttemptRecord],
                limit: i64,
                lease: std::time::Duration,
            ) -> Result<(u64, Vec<Claimed>), StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let now = Self::db_now(&mut tx).await?;
                let stale = if records.is_empty() { 0 } else { self.record_tx(&mut tx, now, records).await? };
                let claimed = if limit > 0 { self.claim_tx(&mut tx, now, limit, lease).await? } else { Vec::new() };
                tx.commit().await.map_err(map_err)?;
                Ok((stale, claimed))
            }

            /// Up to `limit` enabled, unpaused endpoints with a due delivery and a free slot,
            /// with ids in (`after`, `up_to`], in id order, locked (PostgreSQL, skipping rows
            /// another process holds), with their attempts in flight.
            async fn candidates(
                tx: &mut sqlx::Transaction<'_, $db>,
                now: i64,
                after: Option<&str>,
                up_to: Option<&str>,
                limit: i64,
            ) -> Result<Vec<CandidateRow>, StoreError> {
                sqlx::query_as(concat!(
                    r#"select e.id, e.max_in_flight, e.fifo, e.rate_limit_per_second, e.rate_next_at, e.url,
                        e.headers, e.secret, e.previous_secret, e.previous_secret_expires_at,
                        (select count(*) from deliveries l where l.endpoint_id = e.id and l.lease_until > $1) as in_flight
                    from endpoints e
                    where e.enabled
                      and e.deleted_at is null
                      and (e.paused_until is null or e.paused_until <= $1)
                      and ($2 is null or e.id > $2)
                      and ($3 is null or e.id <= $3)
                      and exists (
                        select 1
                        from deliveries d
                        where d.endpoint_id = e.id
                          and d.status = 'pending'
                          and not d.bypass
                          and d.next_attempt_at <= $1
                          and d.lease_until is null
                      )
                      and (select count(*) from deliveries l where l.endpoint_id = e.id and l.lease_until > $1)
                          < case when e.fifo then 1 else e.max_in_flight end
                    order by e.id
                    limit $4"#,
                    $lock_e
                ))
                .bind(now)
                .bind(after)
                .bind(up_to)
                .bind(limit)
                .fetch_all(&mut **tx)
                .await
                .map_err(map_err)
            }

            /// Moves a rate-limited endpoint's next free time on by `n` claims.
            async fn charge_rate(
                tx: &mut sqlx::Transaction<'_, $db>,
                endpoint: &CandidateRow,
                now: i64,
                n: i64,
            ) -> Result<(), StoreError> {
                if let Some((_, tat, interval)) = endpoint.rate_room(now)
                    && n > 0
                {
                    sqlx::query("update endpoints set rate_next_at = $2 where id = $1")
                        .bind(&endpoint.id)
                        .bind(tat + interval * n)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?;
                }
                Ok(())
            }

            /// Claims up to `limit` deliveries inside `tx`, opening an attempt for each.
            async fn claim_tx(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                now: i64,
                limit: i64,
                lease: std::time::Duration,
            ) -> Result<Vec<Claimed>, StoreError> {
                let lease_until = now + lease.as_micros() as i64;
                let mut picked: Vec<(ClaimRow, std::sync::Arc<CandidateRow>)> = Vec::new();

                // Test deliveries skip the endpoint's enabled flag, FIFO lane and pause.
                let bypass: Vec<ClaimRow> = sqlx::query_as(concat!(
                    r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                        d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload
                    from deliveries d
                    join events ev on ev.id = d.event_id
                    where d.bypass and d.status = 'pending' and d.next_attempt_at <= $1
                      and d.lease_until is null
                    order by d.next_attempt_at
                    limit $2"#,
                    $lock
                ))
                .bind(now)
                .bind(limit)
                .fetch_all(&mut **tx)
                .await
                .map_err(map_err)?;
                for row in bypass {
                    let endpoint: Option<CandidateRow> = sqlx::query_as(
                        r#"select id, max_in_flight, fifo, rate_limit_per_second, rate_next_at, url, headers, secret,
                            previous_secret, previous_secret_expires_at, cast(0 as bigint) as in_flight
                        from endpoints
                        where id = $1 and deleted_at is null"#,
                    )
                    .bind(&row.endpoint_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(map_err)?;
                    if let Some(endpoint) = endpoint {
                        picked.push((row, std::sync::Arc::new(endpoint)));
                    }
                }

                // Candidate endpoints: due work and a free slot, in id order from where this
                // process's last claim stopped, wrapping around (round robin over every endpoint),
                // and only as many as there are free slots, since each gives at least one row. So
                // a cycle reads a few endpoints past the cursor, not every endpoint there is.
                let cursor = self.claim_cursor().lock().ok().and_then(|c| c.clone());
                let mut candidates = Self::candidates(tx, now, cursor.as_deref(), None, limit).await?;
                if let Some(cursor) = cursor.as_deref()
                    && (candidates.len() as i64) < limit
                {
                    let rest = limit - candidates.len() as i64;
                    candidates.extend(Self::candidates(tx, now, None, Some(cursor), rest).await?);
                }
                let order: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();

                // FIFO heads one by one; every other endpoint's due rows in one read (`due_rows`).
                let mut plan: Vec<(String, i64)> = Vec::new();
                let mut by_id: std::collections::HashMap<String, std::sync::Arc<CandidateRow>> =
                    std::collections::HashMap::new();
                for endpoint in candidates {
                    if picked.len() as i64 >= limit {
                        break;
                    }
                    let in_flight = endpoint.in_flight;
                    let mut room = if endpoint.fifo {
                        i64::from(in_flight == 0)
                    } else {
                        i64::from(endpoint.max_in_flight) - in_flight
                    };
                    if let Some((allowed, _, _)) = endpoint.rate_room(now) {
                        room = room.min(allowed);
                    }
                    if room <= 0 {
                        continue;
                    }
                    let endpoint = std::sync::Arc::new(endpoint);
                    if endpoint.fifo {
                        let head: Option<ClaimRow> = sqlx::query_as(
                            r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                                d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload
                            from deliveries d
                            join events ev on ev.id = d.event_id
                            where d.endpoint_id = $1 and d.status = 'pending' and not d.bypass
                            order by d.fifo_seq nulls first, d.id
                            limit 1"#,
                        )
                        .bind(&endpoint.id)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(map_err)?;
                        // A lapsed lease is closed by the reaper first, so its attempt is recorded.
                        if let Some(head) = head.filter(|h| h.next_attempt_at <= now && h.lease_until.is_none()) {
                            Self::charge_rate(tx, &endpoint, now, 1).await?;
                            picked.push((head, endpoint));
                        }
                    } else {
                        // Every endpoint's room is planned in full: `due_rows` stops at the
                        // cycle's limit, and endpoints with fewer due rows than room leave the
                        // rest to the others.
                        plan.push((endpoint.id.clone(), room.min(limit)));
                        by_id.insert(endpoint.id.clone(), endpoint);
                    }
                }
                let room = limit - picked.len() as i64;
                if !plan.is_empty() && room > 0 {
                    let rows = Self::due_rows(tx, &plan, now, room).await?;
                    let mut taken: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
                    for row in &rows {
                        *taken.entry(row.endpoint_id.as_str()).or_default() += 1;
                    }
                    for (id, n) in taken {
                        if let Some(endpoint) = by_id.get(id) {
                            Self::charge_rate(tx, endpoint, now, n).await?;
                        }
                    }
                    for row in rows {
                        if let Some(endpoint) = by_id.get(&row.endpoint_id) {
                            let endpoint = endpoint.clone();
                            picked.push((row, endpoint));
                        }
                    }
                }

                // The next cycle starts after the last endpoint served (or, when none was, after
                // the last one looked at).
                let served: std::collections::HashSet<&str> =
                    picked.iter().map(|(row, _)| row.endpoint_id.as_str()).collect();
                if let Some(last) = order.iter().rev().find(|id| served.contains(id.as_str())).or(order.last())
                    && let Ok(mut cursor) = self.claim_cursor().lock()
                {
                    *cursor = Some(last.clone());
                }
                if picked.is_empty() {
                    return Ok(Vec::new());
                }
                // One lease token per claim: a later claim of the same delivery has another, so a
                // result recorded under this one after a takeover is recognised as stale.
                let lease_token = uuid::Uuid::new_v4().simple().to_string();
                for chunk in picked.chunks(CLAIM_CHUNK) {
                    let mut update = sqlx::QueryBuilder::<$db>::new(
                        "update deliveries set attempt_count = attempt_count + 1, run_attempts = run_attempts + 1, lease_until = ",
                    );
                    update.push_bind(lease_until).push(", lease_token = ").push_bind(&lease_token);
                    update.push(" where id in (");
                    let mut ids = update.separated(", ");
                    for (row, _) in chunk {
                        ids.push_bind(&row.id);
                    }
                    update.push(")");
                    update.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                let mut claimed = Vec::with_capacity(picked.len());
                for (row, endpoint) in picked {
                    claimed.push(Claimed {
                        attempt_id: $crate::domain::id::new_id($crate::domain::id::IdKind::Attempt),
                        attempt_number: row.attempt_count + 1,
                        run_attempt: row.run_attempts + 1,
                        delivery_id: row.id,
                        event_id: row.event_id,
                        tenant_id: row.tenant_id,
                        endpoint_id: row.endpoint_id,
                        max_attempts: row.max_attempts,
                        lease_token: lease_token.clone(),
                        url: endpoint.url.clone(),
                        headers: endpoint.headers(self.cipher())?,
                        secrets: endpoint.secrets(self.cipher())?,
                        payload: row.payload,
                    });
                }
                for chunk in claimed.chunks(CLAIM_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "insert into attempts (id, delivery_id, endpoint_id, number, started_at) ",
                    );
                    insert.push_values(chunk, |mut row, claim| {
                        row.push_bind(&claim.attempt_id)
                            .push_bind(&claim.delivery_id)
                            .push_bind(&claim.endpoint_id)
                            .push_bind(claim.attempt_number)
                            .push_bind(now);
                    });
                    insert.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                Ok(claimed)
            }

            /// Records finished attempts inside `tx`; returns how many were stale.
            async fn record_tx(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                now: i64,
                records: &[AttemptRecord],
            ) -> Result<u64, StoreError> {
                let operations = self.operations();
                // endpoint → its health after this batch, written once per endpoint below
                let mut health: std::collections::BTreeMap<&str, HealthChange<'_>> = Default::default();
                // (endpoint, tenant, period, bucket) → (attempts, successes, failures, latency histogram)
                let mut rollup: std::collections::BTreeMap<
                    (String, String, &'static str, i64),
                    (i64, i64, i64, std::collections::BTreeMap<i64, i64>),
                > = Default::default();
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
                    let mut update = sqlx::QueryBuilder::<$db>::new(
                        r#"update deliveries
                        set status = case when status = 'pending' then v.column3 else status end,
                            next_attempt_at = coalesce(v.column4, next_attempt_at),
                            completed_at = case when status = 'pending' then v.column5 else completed_at end,
                            last_error = case when status = 'pending' then v.column6 else last_error end,
                            lease_until = null,
                            lease_token = null
                        from ("#,
                    );
                    update.push_values(chunk, |mut row, record| {
                        let (status, next_attempt_at, completed_at) = match record.next {
                            NextState::Delivered => ("delivered", None, Some(now)),
                            NextState::Retry(delay) => ("pending", Some(now + delay), None),
                            NextState::Failed => ("failed", None, Some(now)),
                        };
                        row.push_bind(&record.delivery_id)
                            .push_bind(&record.lease_token)
                            .push_bind(status)
                            .push("cast(")
                            .push_bind_unseparated(next_attempt_at)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(completed_at)
                            .push_unseparated(" as bigint)")
                            .push_bind(&record.last_error);
                    });
                    update.push(
                        ") as v where deliveries.id = v.column1 and deliveries.lease_token = v.column2 returning deliveries.id",
                    );
                    let ids: Vec<(String,)> =
                        update.build_query_as().fetch_all(&mut **tx).await.map_err(map_err)?;
                    fresh.extend(ids.into_iter().map(|(id,)| id));
                }
                ordered.retain(|record| fresh.contains(&record.delivery_id));
                let stale = (records.len() - ordered.len()) as u64;
                for chunk in ordered.chunks(CLAIM_CHUNK) {
                    let mut update = sqlx::QueryBuilder::<$db>::new(
                        r#"update attempts
                        set finished_at = v.column2, duration_ms = v.column3, status_code = v.column4,
                            error_kind = v.column5, error = v.column6, response_body = v.column7
                        from ("#,
                    );
                    update.push_values(chunk, |mut row, record| {
                        row.push_bind(&record.attempt_id)
                            .push("cast(")
                            .push_bind_unseparated(record.finished_at)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(record.duration_ms)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(record.status_code)
                            .push_unseparated(" as integer)")
                            .push_bind(record.error_kind)
                            .push_bind(&record.error)
                            .push_bind(&record.response_body);
                    });
                    update.push(") as v where attempts.id = v.column1 and attempts.finished_at is null");
                    update.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                for record in ordered {
                    if matches!(record.next, NextState::Retry(_)) {
                        // The endpoint may have been disabled or deleted while this attempt ran:
                        // its retry is then failed like the rest of its pending deliveries.
                        let (enabled, deleted_at): (bool, Option<i64>) =
                            sqlx::query_as("select enabled, deleted_at from endpoints where id = $1")
                                .bind(&record.endpoint_id)
                                .fetch_one(&mut **tx)
                                .await
                                .map_err(map_err)?;
                        if !enabled || deleted_at.is_some() {
                            let reason = if deleted_at.is_some() { "endpoint_deleted" } else { "endpoint_disabled" };
                            sqlx::query(
                                r#"update deliveries set status = 'failed', last_error = $2, completed_at = $3
                                where id = $1 and status = 'pending' and not bypass"#,
                            )
                            .bind(&record.delivery_id)
                            .bind(reason)
                            .bind(now)
                            .execute(&mut **tx)
                            .await
                            .map_err(map_err)?;
                        }
                    }
                    let success = record.status_code.is_some_and(|s| (200..300).contains(&s));
                    for (period, size) in [("m", $crate::domain::stats::MINUTE), ("h", $crate::domain::stats::HOUR)] {
                        let bucket = $crate::domain::stats::floor(record.finished_at, size);
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
                        sqlx::query(
                            r#"update endpoints set paused_until = $2
                            where id = $1 and (paused_until is null or paused_until < $2)"#,
                        )
                        .bind(&record.endpoint_id)
                        .bind(now + pause)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?;
                    }
                    if let Some(reason) = &record.disable_reason {
                        let disabled = sqlx::query(
                            r#"update endpoints set enabled = false, disabled_reason = $2, disabled_at = $3
                            where id = $1 and enabled"#,
                        )
                        .bind(&record.endpoint_id)
                        .bind(reason)
                        .bind(now)
                        .execute(&mut **tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                        if disabled > 0 {
                            Self::fail_pending(tx, &record.endpoint_id, "endpoint_disabled", now).await?;
                            let data = serde_json::json!({
                                "tenant_id": record.tenant_id,
                                "endpoint_id": record.endpoint_id,
                                "reason": reason,
                                "disabled_at": $crate::domain::time::format_micros(now),
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
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "insert into endpoint_stats (endpoint_id, tenant_id, period, bucket_start) ",
                    );
                    insert.push_values(&keys, |mut row, (endpoint_id, tenant_id, period, bucket)| {
                        row.push_bind(endpoint_id).push_bind(tenant_id).push_bind(*period).push_bind(*bucket);
                    });
                    insert.push(" on conflict do nothing");
                    insert.build().execute(&mut **tx).await.map_err(map_err)?;
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "select endpoint_id, period, bucket_start, latency_counts from endpoint_stats where (endpoint_id, period, bucket_start) in (",
                    );
                    select.push_values(&keys, |mut row, (endpoint_id, _, period, bucket)| {
                        row.push_bind(endpoint_id).push_bind(*period).push_bind(*bucket);
                    });
                    select.push(") order by endpoint_id, period, bucket_start");
                    select.push($lock_row);
                    let stored: Vec<(String, String, i64, String)> =
                        select.build_query_as().fetch_all(&mut **tx).await.map_err(map_err)?;
                    let stored: std::collections::HashMap<(String, String, i64), String> = stored
                        .into_iter()
                        .map(|(endpoint_id, period, bucket, counts)| ((endpoint_id, period, bucket), counts))
                        .collect();
                    let rows: Vec<_> = rollup
                        .iter()
                        .map(|((endpoint_id, _, period, bucket), (attempts, successes, failures, latency))| {
                            let mut merged = latency.clone();
                            if let Some(counts) = stored.get(&(endpoint_id.clone(), (*period).to_owned(), *bucket)) {
                                $crate::domain::stats::merge_histogram(&mut merged, counts);
                            }
                            (endpoint_id, *period, *bucket, *attempts, *successes, *failures,
                                $crate::domain::stats::histogram_json(&merged))
                        })
                        .collect();
                    let mut update = sqlx::QueryBuilder::<$db>::new(
                        r#"update endpoint_stats
                        set attempts = attempts + v.column4, successes = successes + v.column5,
                            failures = failures + v.column6, latency_counts = v.column7
                        from ("#,
                    );
                    update.push_values(&rows, |mut row, (endpoint_id, period, bucket, attempts, successes, failures, counts)| {
                        row.push_bind(*endpoint_id)
                            .push_bind(*period)
                            .push("cast(")
                            .push_bind_unseparated(*bucket)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(*attempts)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(*successes)
                            .push_unseparated(" as bigint)")
                            .push("cast(")
                            .push_bind_unseparated(*failures)
                            .push_unseparated(" as bigint)")
                            .push_bind(counts);
                    });
                    update.push(
                        r#") as v
                        where endpoint_stats.endpoint_id = v.column1 and endpoint_stats.period = v.column2
                          and endpoint_stats.bucket_start = v.column3"#,
                    );
                    update.build().execute(&mut **tx).await.map_err(map_err)?;
                }
                for (endpoint_id, health) in health {
                    let failing_since = match (health.last_succeeded, health.any_success) {
                        (true, _) => "clear",
                        (false, true) => "now",
                        (false, false) => "keep",
                    };
                    sqlx::query(
                        r#"update endpoints
                        set last_success_at = case when $2 then $5 else last_success_at end,
                            last_error = case when $3 then $4 else last_error end,
                            last_error_at = case when $3 then $5 else last_error_at end,
                            failing_since = case $6
                                when 'clear' then null
                                when 'now' then $5
                                else coalesce(failing_since, $5)
                            end
                        where id = $1"#,
                    )
                    .bind(endpoint_id)
                    .bind(health.any_success)
                    .bind(health.last_error.is_some())
                    .bind(health.last_error.flatten())
                    .bind(now)
                    .bind(failing_since)
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
                }
                Ok(stale)
            }

            async fn endpoint_window_impl(
                &self,
                endpoint_id: &str,
                period: &str,
                since: i64,
            ) -> Result<WindowTotals, StoreError> {
                let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
                    r#"select attempts, successes, failures, latency_counts
                    from endpoint_stats
                    where endpoint_id = $1 and period = $2 and bucket_start >= $3"#,
                )
                .bind(endpoint_id)
                .bind(period)
                .bind(since)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let mut totals = WindowTotals::default();
                for (attempts, successes, failures, latency) in rows {
                    totals.attempts += attempts;
                    totals.successes += successes;
                    totals.failures += failures;
                    $crate::domain::stats::merge_histogram(&mut totals.latency, &latency);
                }
                Ok(totals)
            }

            async fn endpoints_overview_impl(
                &self,
                tenant_id: Option<&str>,
                endpoint_id: Option<&str>,
                period: &str,
                since: i64,
            ) -> Result<Vec<EndpointHealth>, StoreError> {
                let endpoints: Vec<HealthRow> = sqlx::query_as(
                    r#"select id, tenant_id, url, enabled, disabled_reason, last_error, last_error_at, last_success_at
                    from endpoints
                    where deleted_at is null and ($1 is null or tenant_id = $1) and ($2 is null or id = $2)"#,
                )
                .bind(tenant_id)
                .bind(endpoint_id)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let sums: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                    r#"select endpoint_id, cast(sum(attempts) as bigint), cast(sum(successes) as bigint),
                        cast(sum(failures) as bigint)
                    from endpoint_stats
                    where period = $1 and bucket_start >= $2 and ($3 is null or tenant_id = $3)
                      and ($4 is null or endpoint_id = $4)
                    group by endpoint_id"#,
                )
                .bind(period)
                .bind(since)
                .bind(tenant_id)
                .bind(endpoint_id)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let backlog: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
                    r#"select endpoint_id, count(*), min(created_at)
                    from deliveries
                    where status = 'pending' and ($1 is null or tenant_id = $1) and ($2 is null or endpoint_id = $2)
                    group by endpoint_id"#,
                )
                .bind(tenant_id)
                .bind(endpoint_id)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                let sums: std::collections::HashMap<String, (i64, i64, i64)> =
                    sums.into_iter().map(|(id, a, s, f)| (id, (a, s, f))).collect();
                let backlog: std::collections::HashMap<String, (i64, Option<i64>)> =
                    backlog.into_iter().map(|(id, n, oldest)| (id, (n, oldest))).collect();
                Ok(endpoints
                    .into_iter()
                    .map(|row| {
                        let (attempts, successes, failures) = sums.get(&row.id).copied().unwrap_or_default();
                        let (pending, oldest_pending_at) = backlog.get(&row.id).copied().unwrap_or_default();
                        EndpointHealth {
                            totals: WindowTotals { attempts, successes, failures, latency: Default::default() },
                            pending,
                            oldest_pending_at,
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

            async fn delivery_gauges_impl(&self) -> Result<DeliveryGauges, StoreError> {
                let now = $crate::domain::time::now_micros();
                let (pending,): (i64,) =
                    sqlx::query_as("select count(*) from deliveries where status = 'pending'")
                        .fetch_one(self.reader())
                        .await
                        .map_err(map_err)?;
                let (oldest,): (Option<i64>,) = sqlx::query_as(
                    r#"select min(next_attempt_at)
                    from deliveries
                    where status = 'pending'
                      and next_attempt_at <= $1
                      and (lease_until is null or lease_until < $1)"#,
                )
                .bind(now)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                let (disabled,): (i64,) = sqlx::query_as(
                    "select count(*) from endpoints where not enabled and deleted_at is null",
                )
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                Ok(DeliveryGauges {
                    pending,
                    lag_seconds: oldest.map_or(0.0, |at| (now - at).max(0) as f64 / 1e6),
                    endpoints_disabled: disabled,
                })
            }

            async fn next_due_after_impl(&self, now: i64) -> Result<Option<i64>, StoreError> {
                let (next,): (Option<i64>,) = sqlx::query_as(
                    "select min(next_attempt_at) from deliveries where status = 'pending' and next_attempt_at > $1",
                )
                .bind(now)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                Ok(next)
            }
        }
    };
}
