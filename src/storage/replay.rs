//! Reads of events, deliveries and attempts; manual replays (`retry`, `recover`); and the lease
//! reaper that closes attempts of a crashed or stopped process as `interrupted`.

use super::db::Commit;
use super::rows::*;
use super::sql::{Order, Sql, sql};
use super::*;
use crate::domain::delivery::{Attempt, Delivery, Event};
use crate::domain::delivery::{DeliveryStatus, Stopped, after_attempt_on, after_interruption, run_budget};
use crate::domain::policy::DeliveryPolicy;

impl Store {
    /// One event of a tenant.
    pub async fn get_event(&self, tenant_id: &str, id: &str) -> Result<Event, StoreError> {
        let row: EventRow = Sql::build(&format!(
            r#"select {EVENT_COLUMNS}
            from events
            where tenant_id = $1 and id = $2"#
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_one(self.db.reader())
        .await?;
        Ok(row.into())
    }

    /// A tenant's events, newest first.
    pub async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
        page: &PageQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let rows: Vec<EventRow> = Sql::tenant_list(EVENT_COLUMNS, "events", tenant_id)
            .and_if("event_type = ", filter.event_type.as_deref())
            .created(&filter.created)
            .page_on("id", Order::Descending, page)
            .fetch_all(self.db.reader())
            .await?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// The deliveries of one event.
    pub async fn list_event_deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StoreError> {
        self.read_deliveries(
            Sql::build(&format!(
                r#"select {DELIVERY_COLUMNS}
                from deliveries
                where event_id = $1
                order by id"#
            ))
            .bind(event_id),
        )
        .await
    }

    /// A tenant's deliveries, newest first.
    pub async fn list_deliveries(
        &self,
        tenant_id: &str,
        filter: &DeliveryFilter,
        page: &PageQuery,
    ) -> Result<Vec<Delivery>, StoreError> {
        let statement = Sql::tenant_list(DELIVERY_COLUMNS, "deliveries", tenant_id)
            .and_if("status = ", filter.status.map(DeliveryStatus::as_str))
            .and_if("endpoint_id = ", filter.endpoint_id.as_deref())
            .and_if("event_id = ", filter.event_id.as_deref())
            .created(&filter.created)
            .page_on("id", Order::Descending, page);
        self.read_deliveries(statement).await
    }

    /// One delivery of a tenant.
    pub async fn get_delivery(&self, tenant_id: &str, id: &str) -> Result<Delivery, StoreError> {
        let statement = Sql::build(&format!(
            r#"select {DELIVERY_COLUMNS}
            from deliveries
            where tenant_id = $1 and id = $2"#
        ))
        .bind(tenant_id)
        .bind(id);
        self.read_deliveries(statement).await?.pop().ok_or(StoreError::NotFound)
    }

    /// Runs a select of delivery rows; shows them as of now (in flight or not).
    async fn read_deliveries(&self, statement: Sql<'_>) -> Result<Vec<Delivery>, StoreError> {
        let rows: Vec<DeliveryRow> = statement.fetch_all(self.db.reader()).await?;
        let now = crate::domain::time::now_micros();
        rows.into_iter().map(|r| r.into_delivery(now)).collect()
    }

    /// Every attempt of a delivery, by number.
    pub async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let rows: Vec<AttemptRow> = sql(
            r#"select id, number, started_at, duration_ms, status_code, error_kind, error, response_body,
                timeout_ms, probe, batch_id
            from attempts
            where delivery_id = $1
            order by number"#,
        )
        .bind(delivery_id)
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows.into_iter().map(Attempt::from).collect())
    }

    /// Queues a delivery again now (manual replay).
    pub async fn retry_delivery(&self, tenant_id: &str, id: &str) -> Result<(), RetryError> {
        let mut tx = self.db.begin().await?;
        let now = tx.now().await?;
        let row: Option<ReplayRow> = sql(
            r#"select d.status, d.lease_until, e.enabled, e.deleted_at, ev.payload is null as payload_gone
            from deliveries d
            join endpoints e on e.id = d.endpoint_id
            join events ev on ev.id = d.event_id
            where d.tenant_id = $1 and d.id = $2"#,
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(&mut tx)
        .await?;
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
        if parse_status(&row.status)? == DeliveryStatus::Pending {
            sql("update deliveries set next_attempt_at = $2 where id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut tx)
                .await?;
        } else {
            sql(r#"update deliveries
                set status = 'pending', run_attempts = 0, next_attempt_at = $2, completed_at = null,
                    max_attempts = null, lease_until = null, lease_token = null
                where id = $1"#)
            .bind(id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        }
        tx.notify_work().await?;
        tx.commit().await?;
        // The delivery may be a test delivery.
        self.tests_added();
        Ok(())
    }

    /// Replays an endpoint's failed deliveries created in `[since, until)`; returns how many.
    pub async fn recover_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
        since: i64,
        until: i64,
    ) -> Result<u64, RetryError> {
        let state: Option<(bool,)> =
            sql("select enabled from endpoints where tenant_id = $1 and id = $2 and deleted_at is null")
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(self.db.reader())
                .await?;
        match state {
            None => return Err(RetryError::NotFound),
            Some((false,)) => return Err(RetryError::EndpointDisabled),
            Some((true,)) => {}
        }
        let mut requeued = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let now = tx.now().await?;
            let done = sql(r#"update deliveries
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
                )"#)
            .bind(id)
            .bind(since)
            .bind(until)
            .bind(now)
            .execute(&mut tx)
            .await?;
            if done > 0 {
                tx.notify_work().await?;
            }
            tx.commit().await?;
            self.tests_added();
            requeued += done;
            if done < 1000 {
                return Ok(requeued);
            }
        }
    }

    /// Closes attempts whose lease lapsed (a crashed or stopped process) as `interrupted`, and
    /// requeues or fails their deliveries (`after_interruption` within the run's budget, with
    /// the endpoint's own retry schedule, else the server's `retries`; the stop rule when the
    /// endpoint stopped meanwhile). Returns how many were closed. The lapsed leases are found
    /// through the open attempts (`attempts_open`): each lease is taken with its open attempt.
    pub async fn reap_expired_leases(&self, retries: usize) -> Result<u64, StoreError> {
        let operations = self.operations();
        let mut tx = self.db.begin_for(Commit::Bookkeeping).await?;
        let now = tx.now().await?;
        let statement = format!(
            r#"select d.id, d.status, d.run_attempts, d.max_attempts, d.bypass, e.enabled,
                e.deleted_at is not null as deleted, e.delivery_policy
            from deliveries d
            join endpoints e on e.id = d.endpoint_id
            where d.id in (select a.delivery_id from attempts a where a.finished_at is null)
              and d.lease_until < $1
            limit 500{}"#,
            tx.locking(" for update of d skip locked")
        );
        let expired: Vec<ExpiredRow> = Sql::build(&statement).bind(now).fetch_all(&mut tx).await?;
        for row in &expired {
            sql(r#"update attempts
                set finished_at = $2, duration_ms = ($2 - started_at) / 1000, error_kind = 'interrupted',
                    error = 'the attempt was interrupted before its outcome was recorded'
                where delivery_id = $1 and finished_at is null"#)
            .bind(&row.id)
            .bind(now)
            .execute(&mut tx)
            .await?;
            if parse_status(&row.status)? != DeliveryStatus::Pending {
                // Recorded meanwhile (or replayed): only the lease goes.
                sql("update deliveries set lease_until = null, lease_token = null where id = $1")
                    .bind(&row.id)
                    .execute(&mut tx)
                    .await?;
                continue;
            }
            let policy = DeliveryPolicy::from_stored(row.delivery_policy.as_deref()).map_err(corrupt)?;
            let outcome =
                after_interruption(row.run_attempts, run_budget(row.max_attempts, policy.retries(retries)));
            let (status, last_error) =
                match after_attempt_on(Stopped::of(row.enabled, row.deleted), row.bypass, &outcome) {
                    Some(reason) => (DeliveryStatus::Failed, reason),
                    None => (outcome.status(), "interrupted"),
                };
            let failed = status == DeliveryStatus::Failed;
            sql(r#"update deliveries
                set status = $2, completed_at = $3, next_attempt_at = $4, last_error = $5,
                    lease_until = null, lease_token = null
                where id = $1"#)
            .bind(&row.id)
            .bind(status.as_str())
            .bind(failed.then_some(now))
            .bind(now)
            .bind(last_error)
            .execute(&mut tx)
            .await?;
            if failed {
                Self::emit_exhausted(&mut tx, operations.as_deref(), &row.id, now).await?;
            }
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }
}
