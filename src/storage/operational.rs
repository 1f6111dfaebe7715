//! Operational events (DESIGN §5.3): Herald's reports about itself, written as ordinary events
//! for the operations tenant in the transaction of the change they report.

use super::rows::*;
use super::sql::{Tx, sql};
use super::*;
use crate::domain::operational::{ExhaustedReport, exhausted_report};

impl Store {
    /// Writes an operational event about `subject_tenant` for the operations tenant, in `tx`.
    /// Nothing is reported about the operations tenant's own endpoints (no loops).
    pub(super) async fn emit_operational(
        tx: &mut Tx,
        operations: Option<&str>,
        subject_tenant: &str,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let Some(key) = operations else { return Ok(false) };
        let ops: Option<(String,)> =
            sql("select id from tenants where (id = $1 or external_id = $1) and deleted_at is null")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((ops_id,)) = ops else { return Ok(false) };
        if ops_id == subject_tenant {
            return Ok(false);
        }
        // Accepted now by the database clock, whatever clock the reported change used.
        let now = tx.now().await?;
        let id = crate::domain::id::new_id(crate::domain::id::IdKind::Event);
        let payload = crate::domain::event::envelope(
            &id,
            event_type,
            &crate::domain::time::format_micros(now),
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
            trace: None,
        };
        let (_, pending) = Self::ingest_tx(tx, std::slice::from_ref(&event), now).await?;
        if pending {
            tx.notify_work().await?;
        }
        Ok(true)
    }

    /// Reports a delivery left `failed` (`delivery.exhausted`), within the rate limit of
    /// `exhausted_report`; the first report after a quiet spell carries how many were suppressed.
    pub(super) async fn emit_exhausted(
        tx: &mut Tx,
        operations: Option<&str>,
        delivery_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        if operations.is_none() {
            return Ok(());
        }
        let row: Option<ExhaustedRow> =
            sql(r#"select d.tenant_id, d.endpoint_id, d.event_id, d.attempt_count, d.last_error,
                    e.exhausted_window_start, e.exhausted_sent, e.exhausted_suppressed
                from deliveries d
                join endpoints e on e.id = d.endpoint_id
                where d.id = $1"#)
            .bind(delivery_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(ExhaustedRow {
            tenant_id,
            endpoint_id,
            event_id,
            attempt_count: attempts,
            last_error,
            exhausted_window_start: window,
            exhausted_sent: sent,
            exhausted_suppressed: suppressed,
        }) = row
        else {
            return Ok(());
        };
        let ExhaustedReport::Send { window_start, sent } = exhausted_report(window, sent, now) else {
            sql("update endpoints set exhausted_suppressed = exhausted_suppressed + 1 where id = $1")
                .bind(&endpoint_id)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        };
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
        if Self::emit_operational(tx, operations, &tenant_id, "delivery.exhausted", data).await? {
            sql(r#"update endpoints
                set exhausted_window_start = $2, exhausted_sent = $3, exhausted_suppressed = 0
                where id = $1"#)
            .bind(&endpoint_id)
            .bind(window_start)
            .bind(sent)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
