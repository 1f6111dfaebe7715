//! Ingest: events and their fan-out (one delivery per matching endpoint) in one transaction,
//! with the idempotency keys of the ingest routes.

use super::rows::*;
use super::sql::{Sql, Tx, sql};
use super::*;
use crate::domain::delivery::{DeliveryStatus, Stopped};

/// Most rows one multi-row insert carries at ingest (12 binds a delivery row: well under both
/// backends' bind limits).
const INSERT_CHUNK: usize = 1000;
/// Most events of a group whose inserts are held back for the next statement (`flush_ingest`).
const HELD_EVENTS: usize = 16;

/// What an endpoint subscribes to, parsed: its event type patterns and compiled filter.
struct Subscription {
    patterns: Vec<String>,
    filter: Option<crate::domain::filter::Filter>,
}

/// Subscriptions parsed once per endpoint version and shared by every ingest of this process:
/// keyed by endpoint id and `updated_at`, so an edit is never served stale, and emptied when it
/// grows past `SUBSCRIPTIONS_MAX` entries (old versions are never looked up again).
/// Parsed subscriptions by endpoint id, each with the `updated_at` it was parsed from.
type SubscriptionCache = std::sync::Mutex<std::collections::HashMap<String, (i64, Arc<Subscription>)>>;
static SUBSCRIPTIONS: std::sync::LazyLock<SubscriptionCache> = std::sync::LazyLock::new(Default::default);
const SUBSCRIPTIONS_MAX: usize = 100_000;

fn subscription(row: &FanoutRow) -> Result<Arc<Subscription>, StoreError> {
    if let Some((at, known)) =
        SUBSCRIPTIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&row.id)
        && *at == row.updated_at
    {
        return Ok(known.clone());
    }
    let patterns: Vec<String> = serde_json::from_str(&row.event_types).map_err(corrupt)?;
    let filter = match &row.filter {
        None => None,
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(corrupt)?;
            Some(crate::domain::filter::Filter::compile(&value).map_err(|e| corrupt(e.message))?)
        }
    };
    let parsed = Arc::new(Subscription { patterns, filter });
    let mut cache = SUBSCRIPTIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= SUBSCRIPTIONS_MAX {
        cache.clear();
    }
    cache.insert(row.id.clone(), (row.updated_at, parsed.clone()));
    Ok(parsed)
}

/// Whether the claim made in an ingest group's transaction took every delivery the group
/// created, so that no dispatcher has anything new to claim (and none is woken for it).
pub fn claimed_everything(events: &[NewEvent], outcomes: &[IngestOutcome], claimed: &[Claimed]) -> bool {
    let created: i64 = outcomes
        .iter()
        .map(|outcome| match outcome {
            IngestOutcome::Created { deliveries } => i64::from(*deliveries),
            _ => 0,
        })
        .sum();
    let ours: std::collections::HashSet<&str> = events.iter().map(|event| event.id.as_str()).collect();
    let handed = claimed.iter().filter(|claim| ours.contains(claim.event_id.as_str())).count() as i64;
    handed >= created
}

impl Store {
    /// Writes events and their fan-out (one delivery per matching endpoint) in one transaction.
    pub async fn ingest(
        &self,
        events: &[NewEvent],
        idempotency_since: i64,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        Ok(self.ingest_and_claim(events, idempotency_since, 0, std::time::Duration::ZERO, |_| {}).await?.0)
    }

    /// [`Store::ingest`], and in the same transaction claims up to `limit` requests that can start
    /// now (a dispatcher's claim: `record_and_claim` with nothing to record), for the dispatcher
    /// of this process to send at once (`dispatch::Handoff`). The claims are as durable as the
    /// events: their attempt rows are committed before any request goes out. `before_commit`
    /// sees the claims just before the commit (the hand-off counts them in transit from then).
    pub async fn ingest_and_claim(
        &self,
        events: &[NewEvent],
        idempotency_since: i64,
        limit: i64,
        lease: std::time::Duration,
        before_commit: impl FnOnce(&[Claimed]),
    ) -> Result<(Vec<IngestOutcome>, Vec<Claimed>), StoreError> {
        let mut tx = self.db.begin().await?;
        let (outcomes, pending) = Self::ingest_tx(&mut tx, events, idempotency_since).await?;
        let claimed = if limit > 0 {
            let now = tx.now().await?;
            self.claim_tx(&mut tx, now, limit, lease, None).await?
        } else {
            Vec::new()
        };
        // Work the claim took leaves nothing for any dispatcher to claim: no replica is woken
        // for it (each would run a transaction that finds nothing).
        if pending && !claimed_everything(events, &outcomes, &claimed) {
            tx.notify_work().await?;
        }
        before_commit(&claimed);
        tx.commit().await?;
        if events.iter().any(|event| event.only_endpoint.is_some()) {
            self.tests_added();
        }
        Ok((outcomes, claimed))
    }

    /// Writes events and their fan-out inside `tx` (ingest, and operational events written
    /// in the transaction of the change they report); with the outcomes, whether any delivery
    /// written is pending (the caller tells the dispatchers, [`Tx::notify_work`], unless it
    /// claimed them all itself).
    pub(super) async fn ingest_tx(
        tx: &mut Tx,
        events: &[NewEvent],
        idempotency_since: i64,
    ) -> Result<(Vec<IngestOutcome>, bool), StoreError> {
        let mut outcomes = Vec::with_capacity(events.len());
        // Rows written by multi-row inserts: at the end, or before an idempotency lookup
        // that may need to see them.
        let mut event_rows: Vec<(&NewEvent, i32)> = Vec::with_capacity(events.len());
        let mut delivery_rows: Vec<NewDeliveryRow<'_>> = Vec::with_capacity(events.len());
        // Whether any delivery written is pending, counted as they are made (rows may be
        // written, and `delivery_rows` emptied, before an idempotency lookup).
        let mut pending = false;
        // Each tenant's endpoints with their parsed subscriptions, read once per transaction.
        let mut fanout: std::collections::HashMap<String, Vec<(FanoutRow, Arc<Subscription>)>> =
            Default::default();
        for event in events {
            if let Some((key, hash)) = &event.idempotency {
                let scope = format!("events:{}", event.tenant_id);
                sql("delete from idempotency_keys where scope = $1 and key = $2 and created_at < $3")
                    .bind(&scope)
                    .bind(key)
                    .bind(idempotency_since)
                    .execute(&mut *tx)
                    .await?;
                let inserted =
                    sql(r#"insert into idempotency_keys (scope, key, request_hash, resource_id, created_at)
                    values ($1, $2, $3, $4, $5)
                    on conflict do nothing"#)
                    .bind(&scope)
                    .bind(key)
                    .bind(hash)
                    .bind(&event.id)
                    .bind(event.created_at)
                    .execute(&mut *tx)
                    .await?;
                if inserted == 0 {
                    Self::flush_ingest(tx, &mut event_rows, &mut delivery_rows).await?;
                    let (known_hash, resource_id): (String, Option<String>) = sql(
                        "select request_hash, resource_id from idempotency_keys where scope = $1 and key = $2",
                    )
                    .bind(&scope)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
                    if known_hash != *hash {
                        outcomes.push(IngestOutcome::KeyConflict);
                        continue;
                    }
                    let first: Option<EventRow> = Sql::build(&format!(
                        r#"select {EVENT_COLUMNS}
                        from events
                        where id = $1"#
                    ))
                    .bind(resource_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match first {
                        Some(first) => {
                            outcomes.push(IngestOutcome::Replayed(first.into()));
                            continue;
                        }
                        None => {
                            sql(r#"update idempotency_keys set resource_id = $3, created_at = $4
                                where scope = $1 and key = $2"#)
                            .bind(&scope)
                            .bind(key)
                            .bind(&event.id)
                            .bind(event.created_at)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
            }
            // (endpoint id, enabled, fifo lane, bypass)
            let targets: Vec<(String, bool, bool, bool)> = match &event.only_endpoint {
                Some(endpoint_id) => vec![(endpoint_id.clone(), true, false, true)],
                None => {
                    if !fanout.contains_key(&event.tenant_id) {
                        let rows: Vec<FanoutRow> =
                            sql(r#"select id, event_types, filter, enabled, fifo, updated_at
                            from endpoints
                            where tenant_id = $1 and deleted_at is null
                            order by id"#)
                            .bind(&event.tenant_id)
                            .fetch_all(&mut *tx)
                            .await?;
                        let parsed = rows
                            .into_iter()
                            .map(|row| subscription(&row).map(|parsed| (row, parsed)))
                            .collect::<Result<Vec<_>, StoreError>>()?;
                        fanout.insert(event.tenant_id.clone(), parsed);
                    }
                    let mut targets = Vec::new();
                    // The envelope, parsed once for this event when a filter needs it.
                    let mut envelope: Option<serde_json::Value> = None;
                    for (row, subscription) in
                        fanout.get(&event.tenant_id).map(Vec::as_slice).unwrap_or_default()
                    {
                        if !crate::domain::event_type::subscribed(&subscription.patterns, &event.event_type) {
                            continue;
                        }
                        if let Some(filter) = &subscription.filter {
                            let envelope = match &mut envelope {
                                Some(parsed) => parsed,
                                None => {
                                    envelope.insert(serde_json::from_str(&event.payload).map_err(corrupt)?)
                                }
                            };
                            if !filter.matches(envelope) {
                                metrics::counter!(crate::metrics::DELIVERIES_FILTERED).increment(1);
                                continue;
                            }
                        }
                        targets.push((row.id.clone(), row.enabled, row.fifo, false));
                    }
                    targets
                }
            };
            event_rows.push((event, targets.len() as i32));
            for (endpoint_id, enabled, fifo, bypass) in &targets {
                let fifo_seq: Option<i64> = if *fifo && *enabled {
                    let (seq,): (i64,) = sql(r#"update endpoints set next_fifo_seq = next_fifo_seq + 1
                        where id = $1
                        returning next_fifo_seq"#)
                    .bind(endpoint_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    Some(seq)
                } else {
                    None
                };
                // A disabled endpoint still gets its delivery, failed as if it had been pending
                // when the endpoint stopped, so that it can be replayed.
                let (status, last_error, completed_at) = if *enabled {
                    (DeliveryStatus::Pending, None, None)
                } else {
                    (DeliveryStatus::Failed, Some(Stopped::Disabled.reason()), Some(event.created_at))
                };
                pending |= status == DeliveryStatus::Pending;
                delivery_rows.push(NewDeliveryRow {
                    id: crate::domain::id::new_id(crate::domain::id::IdKind::Delivery),
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
        Self::flush_ingest(tx, &mut event_rows, &mut delivery_rows).await?;
        Ok((outcomes, pending))
    }

    /// Writes the pending event and delivery rows with multi-row inserts, and empties them. A
    /// small group's inserts are held back on SQLite (`Sql::defer`) and go with the
    /// transaction's next statement (the claim at ingest, an idempotency read) or its commit:
    /// nothing reads their counts, and an event alone saves two hops to the database thread. A
    /// large group's go at once: their hop is nothing next to their rows, and holding them
    /// would copy every payload.
    pub(super) async fn flush_ingest(
        tx: &mut Tx,
        events: &mut Vec<(&NewEvent, i32)>,
        deliveries: &mut Vec<NewDeliveryRow<'_>>,
    ) -> Result<(), StoreError> {
        let hold = events.len() <= HELD_EVENTS;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut insert = Sql::build(
                "insert into events (id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at, traceparent, tracestate) values ",
            );
            insert.push_tuples(chunk, |row, (event, count)| {
                row.bind(&event.id)
                    .bind(&event.tenant_id)
                    .bind(&event.event_type)
                    .bind(&event.payload)
                    .bind(event.idempotency.as_ref().map(|(key, _)| key.as_str()))
                    .bind(*count)
                    .bind(event.created_at)
                    .bind(event.trace.as_ref().map(|t| t.parent.to_header()))
                    .bind(event.trace.as_ref().and_then(|t| t.state.as_deref()));
            });
            Self::write_or_hold(tx, insert, hold).await?;
        }
        for chunk in deliveries.chunks(INSERT_CHUNK) {
            let mut insert = Sql::build(
                r#"insert into deliveries (
                    id, event_id, tenant_id, endpoint_id, status, next_attempt_at, fifo_seq,
                    last_error, completed_at, max_attempts, bypass, created_at
                ) values "#,
            );
            insert.push_tuples(chunk, |row, d| {
                row.bind(&d.id)
                    .bind(&d.event.id)
                    .bind(&d.event.tenant_id)
                    .bind(&d.endpoint_id)
                    .bind(d.status.as_str())
                    .bind(d.event.created_at)
                    .bind(d.fifo_seq)
                    .bind(d.last_error)
                    .bind(d.completed_at)
                    .bind(d.bypass.then_some(1i32))
                    .bind(d.bypass)
                    .bind(d.event.created_at);
            });
            Self::write_or_hold(tx, insert, hold).await?;
        }
        events.clear();
        deliveries.clear();
        Ok(())
    }

    /// Runs an insert of `flush_ingest` now, or holds it back when `hold`.
    async fn write_or_hold(tx: &mut Tx, insert: Sql<'_>, hold: bool) -> Result<(), StoreError> {
        if hold { insert.defer(tx).await } else { insert.run(&mut *tx).await }
    }
}
