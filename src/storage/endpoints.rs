//! Endpoints and their secrets: sealed at rest, opened when read; what disabling and deleting do
//! to the endpoint's pending deliveries.

use super::rows::*;
use super::sql::{Order, Sql, Tx, sql};
use super::*;
use crate::domain::delivery::Stopped;
use crate::domain::endpoint::{Endpoint, Secrets};

impl Store {
    /// Adds an endpoint with its first secret.
    /// Inserts an endpoint unless its tenant already has `max_per_tenant` live ones (then
    /// `false`); the check and the insert are atomic across processes.
    pub async fn insert_endpoint(
        &self,
        endpoint: &Endpoint,
        secret: &str,
        max_per_tenant: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // Lock the tenant row first: concurrent creates for one tenant, on any replica,
        // then count and insert one at a time, so the cap holds exactly.
        sql("update tenants set updated_at = updated_at where id = $1")
            .bind(&endpoint.tenant_id)
            .execute(&mut tx)
            .await?;
        let inserted = sql(r#"insert into endpoints (
                id, tenant_id, url, description, event_types, headers, enabled,
                disabled_reason, disabled_at, fifo, in_flight_limit, rate_limit_per_second,
                delivery_policy, filter, batch, secret, created_at, updated_at, signature_scheme
            )
            select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $20
            where (select count(*) from endpoints where tenant_id = $2 and deleted_at is null) < $19"#)
        .bind(&endpoint.id)
        .bind(&endpoint.tenant_id);
        let inserted = self
            .bind_editable(inserted, endpoint)
            .bind(self.cipher.seal(secret))
            .bind(endpoint.created_at)
            .bind(endpoint.updated_at)
            .bind(max_per_tenant)
            .bind(crate::domain::signing::Scheme::of(secret).as_str())
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// A live endpoint of a tenant.
    pub async fn get_endpoint(&self, tenant_id: &str, id: &str) -> Result<Endpoint, StoreError> {
        let row: EndpointRow = Sql::build(&format!(
            r#"select {ENDPOINT_COLUMNS}
            from endpoints
            where tenant_id = $1 and id = $2 and deleted_at is null"#
        ))
        .bind(tenant_id)
        .bind(id)
        .fetch_one(self.db.reader())
        .await?;
        self.open_endpoint(row.try_into()?)
    }

    /// A tenant's live endpoints, newest first.
    pub async fn list_endpoints(
        &self,
        tenant_id: &str,
        page: &PageQuery,
    ) -> Result<Vec<Endpoint>, StoreError> {
        let rows: Vec<EndpointRow> = Sql::tenant_list(ENDPOINT_COLUMNS, "endpoints", tenant_id)
            .and("deleted_at is null")
            .page_on("id", Order::Descending, page)
            .fetch_all(self.db.reader())
            .await?;
        rows.into_iter().map(|row| self.open_endpoint(row.try_into()?)).collect()
    }

    /// Replaces the editable fields of an endpoint.
    pub async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let operations = self.operations();
        let mut tx = self.db.begin().await?;
        let before: Option<(bool,)> =
            sql("select enabled from endpoints where tenant_id = $1 and id = $2 and deleted_at is null")
                .bind(&endpoint.tenant_id)
                .bind(&endpoint.id)
                .fetch_optional(&mut tx)
                .await?;
        let Some((was_enabled,)) = before else {
            return Err(StoreError::NotFound);
        };
        let update = sql(r#"update endpoints
            set url = $3, description = $4, event_types = $5, headers = $6, enabled = $7,
                disabled_reason = $8, disabled_at = $9, fifo = $10, in_flight_limit = $11,
                rate_limit_per_second = $12, delivery_policy = $13, filter = $14, batch = $15, updated_at = $16,
                failing_since = case when $7 and not enabled then null else failing_since end,
                circuit_state = case when $7 and not enabled then 'closed' else circuit_state end,
                circuit_failures = case when $7 and not enabled then 0 else circuit_failures end,
                circuit_opened_at = case when $7 and not enabled then null else circuit_opened_at end,
                circuit_next_probe_at = case when $7 and not enabled then null else circuit_next_probe_at end,
                circuit_failed_probes = case when $7 and not enabled then 0 else circuit_failed_probes end
            where tenant_id = $1 and id = $2 and deleted_at is null"#)
        .bind(&endpoint.tenant_id)
        .bind(&endpoint.id);
        self.bind_editable(update, endpoint).bind(endpoint.updated_at).execute_found(&mut tx).await?;
        match (was_enabled, endpoint.enabled) {
            (true, false) => {
                let target = (endpoint.tenant_id.as_str(), endpoint.id.as_str());
                let reason = endpoint.disabled_reason.as_deref();
                Self::endpoint_disabled(&mut tx, operations.as_deref(), target, reason, endpoint.updated_at)
                    .await?;
            }
            (false, true) => {
                let data = serde_json::json!({"tenant_id": endpoint.tenant_id, "endpoint_id": endpoint.id});
                Self::emit_operational(
                    &mut tx,
                    operations.as_deref(),
                    &endpoint.tenant_id,
                    "endpoint.enabled",
                    data,
                )
                .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        self.endpoint_changed(&endpoint.id);
        Ok(())
    }

    /// Soft-deletes an endpoint; its pending deliveries stop (`Stopped::Deleted`).
    pub async fn delete_endpoint(&self, tenant_id: &str, id: &str, at: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sql("update endpoints set deleted_at = $3 where tenant_id = $1 and id = $2 and deleted_at is null")
            .bind(tenant_id)
            .bind(id)
            .bind(at)
            .execute_found(&mut tx)
            .await?;
        Self::stop_pending(&mut tx, Scope::Endpoint(id), Stopped::Deleted, at).await?;
        tx.commit().await?;
        self.endpoint_changed(id);
        Ok(())
    }

    /// The endpoint's signing secrets.
    pub async fn get_secrets(&self, tenant_id: &str, id: &str) -> Result<Secrets, StoreError> {
        let row: SecretsRow = sql(r#"select secret, previous_secret, previous_secret_expires_at
            from endpoints
            where tenant_id = $1 and id = $2 and deleted_at is null"#)
        .bind(tenant_id)
        .bind(id)
        .fetch_one(self.db.reader())
        .await?;
        self.open_secrets(row.into())
    }

    /// Makes `secret` current; the old one signs too until `previous_expires_at`.
    pub async fn rotate_secret(
        &self,
        tenant_id: &str,
        id: &str,
        secret: &str,
        previous_expires_at: i64,
    ) -> Result<(), StoreError> {
        sql(r#"update endpoints
            set previous_secret = secret, previous_secret_expires_at = $4, secret = $3,
                signature_scheme = $5
            where tenant_id = $1 and id = $2 and deleted_at is null"#)
        .bind(tenant_id)
        .bind(id)
        .bind(self.cipher.seal(secret))
        .bind(previous_expires_at)
        .bind(crate::domain::signing::Scheme::of(secret).as_str())
        .execute_found(self.db.writer())
        .await?;
        self.endpoint_changed(id);
        Ok(())
    }

    /// Ends a rotation's grace period now.
    pub async fn delete_previous_secret(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        sql(r#"update endpoints
            set previous_secret = null, previous_secret_expires_at = null
            where tenant_id = $1 and id = $2 and deleted_at is null"#)
        .bind(tenant_id)
        .bind(id)
        .execute_found(self.db.writer())
        .await?;
        self.endpoint_changed(id);
        Ok(())
    }

    /// Custom header values sealed for storage, as JSON.
    pub(super) fn seal_headers(&self, headers: &std::collections::BTreeMap<String, String>) -> String {
        let sealed: std::collections::BTreeMap<&String, String> =
            headers.iter().map(|(name, value)| (name, self.cipher.seal(value))).collect();
        to_json(&sealed)
    }

    /// An endpoint read from the store, its header values decrypted.
    pub(super) fn open_endpoint(&self, mut endpoint: Endpoint) -> Result<Endpoint, StoreError> {
        for value in endpoint.headers.values_mut() {
            *value = self.cipher.open(value).map_err(corrupt)?;
        }
        Ok(endpoint)
    }

    /// Secrets read from the store, decrypted.
    /// Binds `$3`…`$15`, the fields a create and an edit both write: url, description, event
    /// types, headers (sealed), enabled, disabled reason and time, FIFO, in-flight cap, rate
    /// limit, delivery policy, filter, batching.
    fn bind_editable<'a>(&self, statement: Sql<'a>, endpoint: &'a Endpoint) -> Sql<'a> {
        statement
            .bind(&endpoint.url)
            .bind(&endpoint.description)
            .bind(to_json(&endpoint.event_types))
            .bind(self.seal_headers(&endpoint.headers))
            .bind(endpoint.enabled)
            .bind(&endpoint.disabled_reason)
            .bind(endpoint.disabled_at)
            .bind(endpoint.fifo)
            .bind(endpoint.max_in_flight)
            .bind(endpoint.rate_limit_per_second)
            .bind(endpoint.delivery.to_stored())
            .bind(endpoint.filter.as_ref().map(serde_json::Value::to_string))
            .bind(endpoint.batch.as_ref().map(crate::domain::batch::Batching::to_stored))
    }

    pub(super) fn open_secrets(&self, secrets: Secrets) -> Result<Secrets, StoreError> {
        Ok(Secrets {
            current: self.cipher.open(&secrets.current).map_err(corrupt)?,
            previous: secrets
                .previous
                .as_deref()
                .map(|p| self.cipher.open(p))
                .transpose()
                .map_err(corrupt)?,
            previous_expires_at: secrets.previous_expires_at,
        })
    }

    /// Applies the stop rule (`Stopped::fails_now`) to the pending deliveries of `scope`: those
    /// not in flight fail with the stop's reason (test events too when it is a deletion).
    pub(super) async fn stop_pending(
        tx: &mut Tx,
        scope: Scope<'_>,
        stopped: Stopped,
        now: i64,
    ) -> Result<u64, StoreError> {
        let (statement, id) = match scope {
            Scope::Endpoint(id) => (
                sql(r#"update deliveries
                    set status = 'failed', last_error = $2, completed_at = $3
                    where endpoint_id = $1 and status = 'pending' and lease_until is null and ($4 or not bypass)"#),
                id,
            ),
            Scope::Tenant(id) => (
                sql(r#"update deliveries
                    set status = 'failed', last_error = $2, completed_at = $3
                    where tenant_id = $1 and status = 'pending' and lease_until is null and ($4 or not bypass)"#),
                id,
            ),
        };
        statement
            .bind(id)
            .bind(stopped.reason())
            .bind(now)
            .bind(stopped.fails_test_events())
            .execute(&mut *tx)
            .await
    }

    /// Disables an enabled endpoint for `reason` (a 410 Gone, the health job) and applies
    /// [`Store::endpoint_disabled`]; returns whether it was enabled.
    pub(super) async fn disable_endpoint_tx(
        tx: &mut Tx,
        operations: Option<&str>,
        (tenant_id, endpoint_id): (&str, &str),
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let disabled = sql(r#"update endpoints set enabled = false, disabled_reason = $2, disabled_at = $3
            where id = $1 and enabled"#)
        .bind(endpoint_id)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if disabled > 0 {
            Self::endpoint_disabled(tx, operations, (tenant_id, endpoint_id), Some(reason), now).await?;
        }
        Ok(disabled > 0)
    }

    /// What follows disabling an endpoint, whichever path disabled it (PATCH, `…/disable`, a 410,
    /// the health job): its pending deliveries stop, and the platform is told
    /// (`endpoint.disabled`).
    async fn endpoint_disabled(
        tx: &mut Tx,
        operations: Option<&str>,
        (tenant_id, endpoint_id): (&str, &str),
        reason: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        Self::stop_pending(tx, Scope::Endpoint(endpoint_id), Stopped::Disabled, at).await?;
        let data = serde_json::json!({
            "tenant_id": tenant_id,
            "endpoint_id": endpoint_id,
            "reason": reason,
            "disabled_at": crate::domain::time::format_micros(at),
        });
        Self::emit_operational(tx, operations, tenant_id, "endpoint.disabled", data).await?;
        Ok(())
    }
}

/// Whose pending deliveries a stop applies to.
pub(super) enum Scope<'a> {
    /// One endpoint's.
    Endpoint(&'a str),
    /// Every endpoint's of a tenant.
    Tenant(&'a str),
}
