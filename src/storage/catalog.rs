//! Tokens, event types and tenants: the catalogue a platform manages with its admin token.

use super::endpoints::Scope;
use super::rows::*;
use super::sql::{Order, sql};
use super::*;
use crate::domain::delivery::Stopped;
use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::domain::token::Token;

impl Store {
    /// Stores a token by its hash.
    pub async fn insert_token(&self, token: &Token, hash: &str) -> Result<(), StoreError> {
        sql(r#"insert into tokens (id, name, tenant_id, token_hash, prefix, created_at, expires_at)
            values ($1, $2, $3, $4, $5, $6, $7)"#)
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.tenant_id)
        .bind(hash)
        .bind(&token.prefix)
        .bind(token.created_at)
        .bind(token.expires_at)
        .run(self.db.writer())
        .await
    }

    /// The live token with this hash at `now` (not revoked, not expired, tenant not deleted).
    pub async fn find_token_by_hash(&self, hash: &str, now: i64) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> =
            sql(r#"select t.id, t.name, t.tenant_id, t.prefix, t.created_at, t.last_used_at, t.expires_at
            from tokens t
            left join tenants n on n.id = t.tenant_id
            where t.token_hash = $1
              and t.revoked_at is null
              and (t.expires_at is null or t.expires_at > $2)
              and (t.tenant_id is null or n.deleted_at is null)"#)
            .bind(hash)
            .bind(now)
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.map(Token::from))
    }

    /// Records that a token was used.
    pub async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sql("update tokens set last_used_at = $2 where id = $1").bind(id).bind(at).run(self.db.writer()).await
    }

    /// Live tokens at `now` (neither revoked nor expired), newest first, optionally of one tenant.
    pub async fn list_tokens(
        &self,
        tenant_id: Option<&str>,
        now: i64,
        page: &PageQuery,
    ) -> Result<Vec<Token>, StoreError> {
        let rows: Vec<TokenRow> =
            sql(r#"select id, name, tenant_id, prefix, created_at, last_used_at, expires_at
            from tokens
            where revoked_at is null and (expires_at is null or expires_at > $1)"#)
            .bind(now)
            .and_if("tenant_id = ", tenant_id)
            .page_on("id", Order::Descending, page)
            .fetch_all(self.db.reader())
            .await?;
        Ok(rows.into_iter().map(Token::from).collect())
    }

    /// Revokes a live token.
    pub async fn revoke_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sql("update tokens set revoked_at = $2 where id = $1 and revoked_at is null")
            .bind(id)
            .bind(at)
            .execute_found(self.db.writer())
            .await?;
        Ok(())
    }

    /// Number of live admin tokens.
    pub async fn count_admin_tokens(&self) -> Result<i64, StoreError> {
        let (count,): (i64,) =
            sql("select count(*) from tokens where tenant_id is null and revoked_at is null")
                .fetch_one(self.db.reader())
                .await?;
        Ok(count)
    }

    /// Adds an event type; `Conflict` when the name exists.
    pub async fn insert_event_type(&self, event_type: &EventType) -> Result<(), StoreError> {
        sql(r#"insert into event_types (name, description, schema, archived, created_at, updated_at)
            values ($1, $2, $3, $4, $5, $6)"#)
        .bind(&event_type.name)
        .bind(&event_type.description)
        .bind(event_type.schema.as_ref().map(to_json))
        .bind(event_type.archived)
        .bind(event_type.created_at)
        .bind(event_type.updated_at)
        .run(self.db.writer())
        .await
    }

    /// One event type, archived or not.
    pub async fn get_event_type(&self, name: &str) -> Result<EventType, StoreError> {
        let row: EventTypeRow = sql(r#"select name, description, schema, archived, created_at, updated_at
            from event_types
            where name = $1"#)
        .bind(name)
        .fetch_one(self.db.reader())
        .await?;
        row.try_into()
    }

    /// Event types by name, ascending.
    pub async fn list_event_types(
        &self,
        include_archived: bool,
        page: &PageQuery,
    ) -> Result<Vec<EventType>, StoreError> {
        let rows: Vec<EventTypeRow> =
            sql(r#"select name, description, schema, archived, created_at, updated_at
            from event_types
            where ($1 or not archived)"#)
            .bind(include_archived)
            .page_on("name", Order::Ascending, page)
            .fetch_all(self.db.reader())
            .await?;
        rows.into_iter().map(EventType::try_from).collect()
    }

    /// Replaces description, schema and archived flag.
    pub async fn update_event_type(&self, event_type: &EventType) -> Result<(), StoreError> {
        sql(r#"update event_types
            set description = $2, schema = $3, archived = $4, updated_at = $5
            where name = $1"#)
        .bind(&event_type.name)
        .bind(&event_type.description)
        .bind(event_type.schema.as_ref().map(to_json))
        .bind(event_type.archived)
        .bind(event_type.updated_at)
        .execute_found(self.db.writer())
        .await?;
        Ok(())
    }

    /// Adds a tenant; `Conflict` when the external id is taken.
    pub async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        sql(r#"insert into tenants (id, external_id, name, metadata, created_at, updated_at)
            values ($1, $2, $3, $4, $5, $6)"#)
        .bind(&tenant.id)
        .bind(&tenant.external_id)
        .bind(&tenant.name)
        .bind(to_json(&tenant.metadata))
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .run(self.db.writer())
        .await
    }

    /// A live tenant by id or external id.
    pub async fn get_tenant(&self, key: &str) -> Result<Tenant, StoreError> {
        let row: TenantRow = sql(r#"select id, external_id, name, metadata, created_at, updated_at
            from tenants
            where (id = $1 or external_id = $1)
              and deleted_at is null"#)
        .bind(key)
        .fetch_one(self.db.reader())
        .await?;
        row.try_into()
    }

    /// Live tenants, newest first.
    pub async fn list_tenants(&self, page: &PageQuery) -> Result<Vec<Tenant>, StoreError> {
        let rows: Vec<TenantRow> = sql(r#"select id, external_id, name, metadata, created_at, updated_at
            from tenants
            where deleted_at is null"#)
        .page_on("id", Order::Descending, page)
        .fetch_all(self.db.reader())
        .await?;
        rows.into_iter().map(Tenant::try_from).collect()
    }

    /// Replaces name, external id and metadata.
    pub async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        sql(r#"update tenants
            set external_id = $2, name = $3, metadata = $4, updated_at = $5
            where id = $1 and deleted_at is null"#)
        .bind(&tenant.id)
        .bind(&tenant.external_id)
        .bind(&tenant.name)
        .bind(to_json(&tenant.metadata))
        .bind(tenant.updated_at)
        .execute_found(self.db.writer())
        .await?;
        Ok(())
    }

    /// Soft-deletes a tenant, its endpoints (failing their pending deliveries) and its tokens.
    pub async fn delete_tenant(&self, id: &str, at: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        sql("update tenants set deleted_at = $2 where id = $1 and deleted_at is null")
            .bind(id)
            .bind(at)
            .execute_found(&mut tx)
            .await?;
        Self::stop_pending(&mut tx, Scope::Tenant(id), Stopped::Deleted, at).await?;
        sql("update endpoints set deleted_at = $2 where tenant_id = $1 and deleted_at is null")
            .bind(id)
            .bind(at)
            .execute(&mut tx)
            .await?;
        sql("update tokens set revoked_at = $2 where tenant_id = $1 and revoked_at is null")
            .bind(id)
            .bind(at)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        self.endpoint_changed(id);
        Ok(())
    }
}
