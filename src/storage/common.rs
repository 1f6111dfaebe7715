//! SQL shared by both backends. `store_common!` expands to the `Store` methods whose SQL is
//! portable; each backend passes in the methods it must write itself. Row structs derive
//! `FromRow` generically, so they decode from either driver.

use std::collections::BTreeMap;

use crate::domain::endpoint::{Endpoint, Secrets};
use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::domain::token::Token;

use super::StoreError;

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: String,
    name: String,
    tenant_id: Option<String>,
    prefix: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl From<TokenRow> for Token {
    fn from(row: TokenRow) -> Self {
        Token {
            id: row.id,
            name: row.name,
            tenant_id: row.tenant_id,
            prefix: row.prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventTypeRow {
    name: String,
    description: String,
    schema: Option<String>,
    archived: bool,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<EventTypeRow> for EventType {
    type Error = StoreError;
    fn try_from(row: EventTypeRow) -> Result<Self, StoreError> {
        let schema = row.schema.as_deref().map(serde_json::from_str).transpose().map_err(corrupt)?;
        Ok(EventType {
            name: row.name,
            description: row.description,
            schema,
            archived: row.archived,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: String,
    external_id: Option<String>,
    name: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: row.id,
            external_id: row.external_id,
            name: row.name,
            metadata: serde_json::from_str(&row.metadata).map_err(corrupt)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EndpointRow {
    id: String,
    tenant_id: String,
    url: String,
    description: String,
    event_types: String,
    headers: String,
    enabled: bool,
    disabled_reason: Option<String>,
    disabled_at: Option<i64>,
    fifo: bool,
    max_in_flight: i32,
    rate_limit_per_second: Option<i32>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = StoreError;
    fn try_from(row: EndpointRow) -> Result<Self, StoreError> {
        let event_types: Vec<String> = serde_json::from_str(&row.event_types).map_err(corrupt)?;
        let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers).map_err(corrupt)?;
        Ok(Endpoint {
            id: row.id,
            tenant_id: row.tenant_id,
            url: row.url,
            description: row.description,
            event_types,
            headers,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            disabled_at: row.disabled_at,
            fifo: row.fifo,
            max_in_flight: row.max_in_flight,
            rate_limit_per_second: row.rate_limit_per_second,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SecretsRow {
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_secret_expires_at: Option<i64>,
}

impl From<SecretsRow> for Secrets {
    fn from(row: SecretsRow) -> Self {
        Secrets {
            current: row.secret,
            previous: row.previous_secret,
            previous_expires_at: row.previous_secret_expires_at,
        }
    }
}

pub(crate) fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> String {
    // Serialising maps and vectors of strings cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Expands to `#[async_trait] impl Store for $store { <portable methods> $extra }`.
/// `$store` must have inherent `writer()` and `reader()` returning its pool.
macro_rules! store_common {
    ($store:ty, { $($extra:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::storage::Store for $store {
            $($extra)*

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("select 1").execute(self.reader()).await.map_err(map_err)?;
                Ok(())
            }

            async fn insert_token(&self, token: &Token, hash: &str) -> Result<(), StoreError> {
                sqlx::query(
                    r#"insert into tokens (id, name, tenant_id, token_hash, prefix, created_at)
                    values ($1, $2, $3, $4, $5, $6)"#,
                )
                .bind(&token.id)
                .bind(&token.name)
                .bind(&token.tenant_id)
                .bind(hash)
                .bind(&token.prefix)
                .bind(token.created_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn find_token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
                let row: Option<TokenRow> = sqlx::query_as(
                    r#"select t.id, t.name, t.tenant_id, t.prefix, t.created_at, t.last_used_at
                    from tokens t
                    left join tenants n on n.id = t.tenant_id
                    where t.token_hash = $1
                      and t.revoked_at is null
                      and (t.tenant_id is null or n.deleted_at is null)"#,
                )
                .bind(hash)
                .fetch_optional(self.reader())
                .await
                .map_err(map_err)?;
                Ok(row.map(Token::from))
            }

            async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
                sqlx::query("update tokens set last_used_at = $2 where id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(self.writer())
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn list_tokens(&self, tenant_id: Option<&str>, page: &PageQuery) -> Result<Vec<Token>, StoreError> {
                let rows: Vec<TokenRow> = sqlx::query_as(
                    r#"select id, name, tenant_id, prefix, created_at, last_used_at
                    from tokens
                    where revoked_at is null
                      and ($1 is null or tenant_id = $1)
                      and ($2 is null or id < $2)
                    order by id desc
                    limit $3"#,
                )
                .bind(tenant_id)
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                Ok(rows.into_iter().map(Token::from).collect())
            }

            async fn revoke_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
                let done = sqlx::query("update tokens set revoked_at = $2 where id = $1 and revoked_at is null")
                    .bind(id)
                    .bind(at)
                    .execute(self.writer())
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn count_admin_tokens(&self) -> Result<i64, StoreError> {
                let (count,): (i64,) =
                    sqlx::query_as("select count(*) from tokens where tenant_id is null and revoked_at is null")
                        .fetch_one(self.reader())
                        .await
                        .map_err(map_err)?;
                Ok(count)
            }

            async fn insert_event_type(&self, event_type: &EventType) -> Result<(), StoreError> {
                sqlx::query(
                    r#"insert into event_types (name, description, schema, archived, created_at, updated_at)
                    values ($1, $2, $3, $4, $5, $6)"#,
                )
                .bind(&event_type.name)
                .bind(&event_type.description)
                .bind(event_type.schema.as_ref().map(to_json))
                .bind(event_type.archived)
                .bind(event_type.created_at)
                .bind(event_type.updated_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn get_event_type(&self, name: &str) -> Result<EventType, StoreError> {
                let row: EventTypeRow = sqlx::query_as(
                    r#"select name, description, schema, archived, created_at, updated_at
                    from event_types
                    where name = $1"#,
                )
                .bind(name)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                row.try_into()
            }

            async fn list_event_types(&self, include_archived: bool, page: &PageQuery) -> Result<Vec<EventType>, StoreError> {
                let rows: Vec<EventTypeRow> = sqlx::query_as(
                    r#"select name, description, schema, archived, created_at, updated_at
                    from event_types
                    where ($1 or not archived)
                      and ($2 is null or name > $2)
                    order by name
                    limit $3"#,
                )
                .bind(include_archived)
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                rows.into_iter().map(EventType::try_from).collect()
            }

            async fn update_event_type(&self, event_type: &EventType) -> Result<(), StoreError> {
                let done = sqlx::query(
                    r#"update event_types
                    set description = $2, schema = $3, archived = $4, updated_at = $5
                    where name = $1"#,
                )
                .bind(&event_type.name)
                .bind(&event_type.description)
                .bind(event_type.schema.as_ref().map(to_json))
                .bind(event_type.archived)
                .bind(event_type.updated_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
                sqlx::query(
                    r#"insert into tenants (id, external_id, name, metadata, created_at, updated_at)
                    values ($1, $2, $3, $4, $5, $6)"#,
                )
                .bind(&tenant.id)
                .bind(&tenant.external_id)
                .bind(&tenant.name)
                .bind(to_json(&tenant.metadata))
                .bind(tenant.created_at)
                .bind(tenant.updated_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn get_tenant(&self, key: &str) -> Result<Tenant, StoreError> {
                let row: TenantRow = sqlx::query_as(
                    r#"select id, external_id, name, metadata, created_at, updated_at
                    from tenants
                    where (id = $1 or external_id = $1)
                      and deleted_at is null"#,
                )
                .bind(key)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                row.try_into()
            }

            async fn list_tenants(&self, page: &PageQuery) -> Result<Vec<Tenant>, StoreError> {
                let rows: Vec<TenantRow> = sqlx::query_as(
                    r#"select id, external_id, name, metadata, created_at, updated_at
                    from tenants
                    where deleted_at is null
                      and ($1 is null or id < $1)
                    order by id desc
                    limit $2"#,
                )
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                rows.into_iter().map(Tenant::try_from).collect()
            }

            async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
                let done = sqlx::query(
                    r#"update tenants
                    set external_id = $2, name = $3, metadata = $4, updated_at = $5
                    where id = $1 and deleted_at is null"#,
                )
                .bind(&tenant.id)
                .bind(&tenant.external_id)
                .bind(&tenant.name)
                .bind(to_json(&tenant.metadata))
                .bind(tenant.updated_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn delete_tenant(&self, id: &str, at: i64) -> Result<(), StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let done = sqlx::query("update tenants set deleted_at = $2 where id = $1 and deleted_at is null")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query(
                    r#"update deliveries
                    set status = 'failed', last_error = 'endpoint_deleted', completed_at = $2
                    where tenant_id = $1 and status = 'pending'"#,
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query("update endpoints set deleted_at = $2 where tenant_id = $1 and deleted_at is null")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("update tokens set revoked_at = $2 where tenant_id = $1 and revoked_at is null")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn insert_endpoint(
                &self,
                endpoint: &Endpoint,
                secret: &str,
                max_per_tenant: i64,
            ) -> Result<bool, StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                // Lock the tenant row first: concurrent creates for one tenant, on any replica,
                // then count and insert one at a time, so the cap holds exactly.
                sqlx::query("update tenants set updated_at = updated_at where id = $1")
                    .bind(&endpoint.tenant_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let inserted = sqlx::query(
                    r#"insert into endpoints (
                        id, tenant_id, url, description, event_types, headers, enabled,
                        disabled_reason, disabled_at, fifo, max_in_flight, rate_limit_per_second,
                        secret, created_at, updated_at
                    )
                    select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
                    where (select count(*) from endpoints where tenant_id = $2 and deleted_at is null) < $16"#,
                )
                .bind(&endpoint.id)
                .bind(&endpoint.tenant_id)
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
                .bind(self.cipher().seal(secret))
                .bind(endpoint.created_at)
                .bind(endpoint.updated_at)
                .bind(max_per_tenant)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
                tx.commit().await.map_err(map_err)?;
                Ok(inserted == 1)
            }

            async fn get_endpoint(&self, tenant_id: &str, id: &str) -> Result<Endpoint, StoreError> {
                let row: EndpointRow = sqlx::query_as(
                    r#"select id, tenant_id, url, description, event_types, headers, enabled,
                        disabled_reason, disabled_at, fifo, max_in_flight, rate_limit_per_second,
                        created_at, updated_at
                    from endpoints
                    where tenant_id = $1 and id = $2 and deleted_at is null"#,
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                self.open_endpoint(row.try_into()?)
            }

            async fn list_endpoints(&self, tenant_id: &str, page: &PageQuery) -> Result<Vec<Endpoint>, StoreError> {
                let rows: Vec<EndpointRow> = sqlx::query_as(
                    r#"select id, tenant_id, url, description, event_types, headers, enabled,
                        disabled_reason, disabled_at, fifo, max_in_flight, rate_limit_per_second,
                        created_at, updated_at
                    from endpoints
                    where tenant_id = $1
                      and deleted_at is null
                      and ($2 is null or id < $2)
                    order by id desc
                    limit $3"#,
                )
                .bind(tenant_id)
                .bind(&page.after)
                .bind(page.limit)
                .fetch_all(self.reader())
                .await
                .map_err(map_err)?;
                rows.into_iter().map(|row| self.open_endpoint(row.try_into()?)).collect()
            }

            async fn update_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
                let operations = self.operations();
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let before: Option<(bool,)> = sqlx::query_as(
                    "select enabled from endpoints where tenant_id = $1 and id = $2 and deleted_at is null",
                )
                .bind(&endpoint.tenant_id)
                .bind(&endpoint.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let Some((was_enabled,)) = before else {
                    return Err(StoreError::NotFound);
                };
                let done = sqlx::query(
                    r#"update endpoints
                    set url = $3, description = $4, event_types = $5, headers = $6, enabled = $7,
                        disabled_reason = $8, disabled_at = $9, fifo = $10, max_in_flight = $11,
                        rate_limit_per_second = $12, updated_at = $13,
                        failing_since = case when $7 and not enabled then null else failing_since end
                    where tenant_id = $1 and id = $2 and deleted_at is null"#,
                )
                .bind(&endpoint.tenant_id)
                .bind(&endpoint.id)
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
                .bind(endpoint.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                if !endpoint.enabled {
                    Self::fail_pending(&mut tx, &endpoint.id, "endpoint_disabled", endpoint.updated_at).await?;
                }
                if was_enabled != endpoint.enabled {
                    let (event_type, data) = if endpoint.enabled {
                        (
                            "endpoint.enabled",
                            serde_json::json!({"tenant_id": endpoint.tenant_id, "endpoint_id": endpoint.id}),
                        )
                    } else {
                        (
                            "endpoint.disabled",
                            serde_json::json!({
                                "tenant_id": endpoint.tenant_id,
                                "endpoint_id": endpoint.id,
                                "reason": endpoint.disabled_reason,
                                "disabled_at": endpoint.disabled_at.map($crate::domain::time::format_micros),
                            }),
                        )
                    };
                    Self::emit_operational(
                        &mut tx,
                        operations.as_deref(),
                        &endpoint.tenant_id,
                        event_type,
                        data,
                        endpoint.updated_at,
                    )
                    .await?;
                }
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn delete_endpoint(&self, tenant_id: &str, id: &str, at: i64) -> Result<(), StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                let done = sqlx::query(
                    "update endpoints set deleted_at = $3 where tenant_id = $1 and id = $2 and deleted_at is null",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query(
                    r#"update deliveries
                    set status = 'failed', last_error = 'endpoint_deleted', completed_at = $2
                    where endpoint_id = $1 and status = 'pending'"#,
                )
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(())
            }

            async fn rotate_secret(
                &self,
                tenant_id: &str,
                id: &str,
                secret: &str,
                previous_expires_at: i64,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(
                    r#"update endpoints
                    set previous_secret = secret, previous_secret_expires_at = $4, secret = $3
                    where tenant_id = $1 and id = $2 and deleted_at is null"#,
                )
                .bind(tenant_id)
                .bind(id)
                .bind(self.cipher().seal(secret))
                .bind(previous_expires_at)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn delete_previous_secret(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
                let done = sqlx::query(
                    r#"update endpoints
                    set previous_secret = null, previous_secret_expires_at = null
                    where tenant_id = $1 and id = $2 and deleted_at is null"#,
                )
                .bind(tenant_id)
                .bind(id)
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            async fn begin_idempotent(
                &self,
                scope: &str,
                key: &str,
                request_hash: &str,
                since: i64,
            ) -> Result<IdempotencyState, StoreError> {
                let mut tx = self.writer().begin().await.map_err(map_err)?;
                sqlx::query("delete from idempotency_keys where scope = $1 and key = $2 and created_at < $3")
                    .bind(scope)
                    .bind(key)
                    .bind(since)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let inserted = sqlx::query(
                    r#"insert into idempotency_keys (scope, key, request_hash, created_at)
                    values ($1, $2, $3, $4)
                    on conflict do nothing"#,
                )
                .bind(scope)
                .bind(key)
                .bind(request_hash)
                .bind($crate::domain::time::now_micros())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
                let state = if inserted == 1 {
                    IdempotencyState::Started
                } else {
                    let (hash, status, body): (String, Option<i32>, Option<String>) = sqlx::query_as(
                        r#"select request_hash, response_status, response_body
                        from idempotency_keys
                        where scope = $1 and key = $2"#,
                    )
                    .bind(scope)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    match (hash == request_hash, status, body) {
                        (false, _, _) => IdempotencyState::Mismatch,
                        (true, Some(status), Some(body)) => {
                            let body = self.cipher().open(&body).map_err(corrupt)?;
                            IdempotencyState::Replay { status: status as u16, body }
                        }
                        _ => IdempotencyState::InProgress,
                    }
                };
                tx.commit().await.map_err(map_err)?;
                Ok(state)
            }

            async fn finish_idempotent(&self, scope: &str, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
                sqlx::query(
                    r#"update idempotency_keys set response_status = $3, response_body = $4
                    where scope = $1 and key = $2"#,
                )
                .bind(scope)
                .bind(key)
                .bind(i32::from(status))
                .bind(self.cipher().seal(body))
                .execute(self.writer())
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn abandon_idempotent(&self, scope: &str, key: &str) -> Result<(), StoreError> {
                sqlx::query("delete from idempotency_keys where scope = $1 and key = $2 and response_status is null")
                    .bind(scope)
                    .bind(key)
                    .execute(self.writer())
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn ingest(&self, events: &[NewEvent], idempotency_since: i64) -> Result<Vec<IngestOutcome>, StoreError> {
                self.ingest_impl(events, idempotency_since).await
            }

            async fn get_event(&self, tenant_id: &str, id: &str) -> Result<Event, StoreError> {
                self.get_event_impl(tenant_id, id).await
            }

            async fn list_events(&self, tenant_id: &str, filter: &EventFilter, page: &PageQuery) -> Result<Vec<Event>, StoreError> {
                self.list_events_impl(tenant_id, filter, page).await
            }

            async fn list_event_deliveries(&self, event_id: &str) -> Result<Vec<Delivery>, StoreError> {
                self.list_event_deliveries_impl(event_id).await
            }

            async fn list_deliveries(
                &self,
                tenant_id: &str,
                filter: &DeliveryFilter,
                page: &PageQuery,
            ) -> Result<Vec<Delivery>, StoreError> {
                self.list_deliveries_impl(tenant_id, filter, page).await
            }

            async fn get_delivery(&self, tenant_id: &str, id: &str) -> Result<Delivery, StoreError> {
                self.get_delivery_impl(tenant_id, id).await
            }

            async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>, StoreError> {
                self.list_attempts_impl(delivery_id).await
            }

            async fn retry_delivery(&self, tenant_id: &str, id: &str) -> Result<(), RetryError> {
                self.retry_delivery_impl(tenant_id, id).await
            }

            async fn recover_endpoint(&self, tenant_id: &str, id: &str, since: i64, until: i64) -> Result<u64, RetryError> {
                self.recover_endpoint_impl(tenant_id, id, since, until).await
            }

            async fn reap_expired_leases(&self, max_run_attempts: i32) -> Result<u64, StoreError> {
                self.reap_expired_leases_impl(max_run_attempts).await
            }

            async fn record_and_claim(
                &self,
                records: &[AttemptRecord],
                limit: i64,
                lease: std::time::Duration,
            ) -> Result<(u64, Vec<Claimed>), StoreError> {
                self.record_and_claim_impl(records, limit, lease).await
            }

            async fn endpoint_window(&self, endpoint_id: &str, period: &str, since: i64) -> Result<WindowTotals, StoreError> {
                self.endpoint_window_impl(endpoint_id, period, since).await
            }

            async fn endpoints_overview(
                &self,
                tenant_id: Option<&str>,
                endpoint_id: Option<&str>,
                period: &str,
                since: i64,
            ) -> Result<Vec<EndpointHealth>, StoreError> {
                self.endpoints_overview_impl(tenant_id, endpoint_id, period, since).await
            }

            fn set_operations_tenant(&self, key: Option<String>) {
                if let Ok(mut slot) = self.operations.write() {
                    *slot = key;
                }
            }

            async fn try_lock_job(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool, StoreError> {
                self.try_lock_job_impl(name, holder, now, until).await
            }

            async fn unlock_job(&self, name: &str, holder: &str) -> Result<(), StoreError> {
                self.unlock_job_impl(name, holder).await
            }

            async fn purge_old_events(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError> {
                self.purge_old_events_impl(cutoff, batch).await
            }

            async fn expire_idempotency_keys(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError> {
                self.expire_idempotency_keys_impl(cutoff, batch).await
            }

            async fn expire_previous_secrets(&self, now: i64) -> Result<u64, StoreError> {
                self.expire_previous_secrets_impl(now).await
            }

            async fn purge_stats(&self, minute_cutoff: i64, hour_cutoff: i64) -> Result<u64, StoreError> {
                self.purge_stats_impl(minute_cutoff, hour_cutoff).await
            }

            async fn disable_unhealthy_endpoints(
                &self,
                now: i64,
                failing_before: i64,
                failed_since: i64,
                reason: &str,
            ) -> Result<Vec<String>, StoreError> {
                self.disable_unhealthy_endpoints_impl(now, failing_before, failed_since, reason).await
            }

            async fn sealed_key_ids(&self) -> Result<Vec<String>, StoreError> {
                self.sealed_key_ids_impl().await
            }

            async fn rekey_secrets(&self) -> Result<u64, StoreError> {
                self.rekey_secrets_impl().await
            }

            async fn delivery_gauges(&self) -> Result<DeliveryGauges, StoreError> {
                self.delivery_gauges_impl().await
            }

            async fn next_due_after(&self, now: i64) -> Result<Option<i64>, StoreError> {
                self.next_due_after_impl(now).await
            }

            async fn get_secrets(&self, tenant_id: &str, id: &str) -> Result<Secrets, StoreError> {
                let row: SecretsRow = sqlx::query_as(
                    r#"select secret, previous_secret, previous_secret_expires_at
                    from endpoints
                    where tenant_id = $1 and id = $2 and deleted_at is null"#,
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_one(self.reader())
                .await
                .map_err(map_err)?;
                self.open_secrets(row.into())
            }
        }
    };
}
