//! SQL of the scheduled jobs: retention in bounded batches, expiry of idempotency keys and rotated
//! secrets, endpoint health, rollup clean-up, the job locks that keep replicas from running one
//! job twice at once, and re-sealing secrets under a new master key.

use super::rows::*;
use super::sql::sql;
use super::*;
use crate::domain::endpoint::is_dead;

impl Store {
    /// Takes the lock of job `name` until `until` unless another holder has it now.
    pub async fn try_lock_job(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sql(r#"insert into job_locks (name, holder, locked_until)
            values ($1, $2, $4)
            on conflict (name) do update set holder = excluded.holder, locked_until = excluded.locked_until
            where job_locks.locked_until < $3 or job_locks.holder = excluded.holder"#)
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(until)
        .execute(self.db.writer())
        .await?;
        Ok(done == 1)
    }

    /// Releases a job lock held by `holder`.
    pub async fn unlock_job(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sql("delete from job_locks where name = $1 and holder = $2")
            .bind(name)
            .bind(holder)
            .run(self.db.writer())
            .await
    }

    /// Deletes up to `batch` events created before `cutoff` (with their deliveries and attempts),
    /// never one with a pending delivery. Returns how many.
    pub async fn purge_old_events(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError> {
        // Deliveries and attempts go with their event (on delete cascade). An event with a
        // pending delivery is kept whatever its age.
        sql(r#"delete from events
            where id in (
                select e.id
                from events e
                where e.created_at < $1
                  and not exists (
                    select 1 from deliveries d where d.event_id = e.id and d.status = 'pending'
                  )
                limit $2
            )"#)
        .bind(cutoff)
        .bind(batch)
        .execute(self.db.writer())
        .await
    }

    /// Deletes up to `batch` idempotency keys created before `cutoff`.
    pub async fn expire_idempotency_keys(&self, cutoff: i64, batch: i64) -> Result<u64, StoreError> {
        sql(r#"delete from idempotency_keys
            where (scope, key) in (
                select scope, key from idempotency_keys where created_at < $1 limit $2
            )"#)
        .bind(cutoff)
        .bind(batch)
        .execute(self.db.writer())
        .await
    }

    /// Forgets rotated secrets whose grace period ended by `now`.
    pub async fn expire_previous_secrets(&self, now: i64) -> Result<u64, StoreError> {
        sql(r#"update endpoints
            set previous_secret = null, previous_secret_expires_at = null
            where previous_secret_expires_at is not null and previous_secret_expires_at <= $1"#)
        .bind(now)
        .execute(self.db.writer())
        .await
    }

    /// Deletes rollup buckets older than the windows need.
    pub async fn purge_stats(&self, minute_cutoff: i64, hour_cutoff: i64) -> Result<u64, StoreError> {
        sql(r#"delete from endpoint_stats
            where (period = 'm' and bucket_start < $1) or (period = 'h' and bucket_start < $2)"#)
        .bind(minute_cutoff)
        .bind(hour_cutoff)
        .execute(self.db.writer())
        .await
    }

    /// Disables the endpoints the health rule (`endpoint::is_dead`) finds dead: failing since
    /// `failing_before` with a failed attempt since `failed_since`. Each is disabled the one way
    /// (its pending deliveries stop, `endpoint.disabled` is reported); returns their ids.
    pub async fn disable_unhealthy_endpoints(
        &self,
        now: i64,
        failing_before: i64,
        failed_since: i64,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        let operations = self.operations();
        let mut tx = self.db.begin().await?;
        // The longest failing first, so that a bounded pass takes those most likely dead.
        let failing: Vec<(String, String, Option<i64>, Option<i64>)> =
            sql(r#"select id, tenant_id, failing_since, last_error_at
            from endpoints
            where enabled and deleted_at is null and failing_since is not null
            order by failing_since
            limit 500"#)
            .fetch_all(&mut tx)
            .await?;
        let mut disabled = Vec::new();
        for (id, tenant_id, failing_since, last_failure_at) in failing {
            if !is_dead(failing_since, last_failure_at, failing_before, failed_since) {
                continue;
            }
            let target = (tenant_id.as_str(), id.as_str());
            if Self::disable_endpoint_tx(&mut tx, operations.as_deref(), target, reason, now).await? {
                disabled.push(id);
            }
        }
        tx.commit().await?;
        for id in &disabled {
            self.endpoint_changed(id);
        }
        Ok(disabled)
    }

    /// Ids of the master keys that sealed stored secrets.
    pub async fn sealed_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sql(
            r#"select distinct substr(secret, 8, 8) from endpoints where secret like 'enc:v1:%'
            union
            select distinct substr(previous_secret, 8, 8) from endpoints where previous_secret like 'enc:v1:%'"#,
        )
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Re-seals every stored secret, header value and idempotent answer with the current key
    /// (in batches); returns how many rows changed.
    pub async fn rekey_secrets(&self) -> Result<u64, StoreError> {
        let cipher = self.cipher.clone();
        let reseal = |value: &str| -> Result<Option<String>, StoreError> {
            if cipher.is_current(value) {
                return Ok(None);
            }
            let plain = cipher.open(value).map_err(corrupt)?;
            Ok(Some(cipher.seal(&plain)))
        };
        let mut changed = 0;
        let mut after = String::new();
        loop {
            let rows: Vec<(String, String, Option<String>, String)> =
                sql(r#"select id, secret, previous_secret, headers
                from endpoints
                where id > $1
                order by id
                limit 500"#)
                .bind(&after)
                .fetch_all(self.db.reader())
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.0.clone();
            let mut tx = self.db.begin().await?;
            for (id, secret, previous, headers) in &rows {
                let new_secret = reseal(secret)?;
                let new_previous = match previous {
                    Some(p) => reseal(p)?,
                    None => None,
                };
                let stored: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(headers).map_err(corrupt)?;
                let mut headers_changed = false;
                let mut resealed = std::collections::BTreeMap::new();
                for (name, value) in stored {
                    match reseal(&value)? {
                        Some(v) => {
                            headers_changed = true;
                            resealed.insert(name, v);
                        }
                        None => {
                            resealed.insert(name, value);
                        }
                    }
                }
                if new_secret.is_none() && new_previous.is_none() && !headers_changed {
                    continue;
                }
                // Only if nothing changed since it was read: a concurrent rotation or edit
                // is kept, and a second run re-seals it.
                let done = sql(r#"update endpoints
                    set secret = coalesce($2, secret), previous_secret = coalesce($3, previous_secret),
                        headers = $4
                    where id = $1 and secret = $5 and coalesce(previous_secret, '') = $6 and headers = $7"#)
                .bind(id)
                .bind(new_secret)
                .bind(new_previous)
                .bind(to_json(&resealed))
                .bind(secret)
                .bind(previous.as_deref().unwrap_or(""))
                .bind(headers)
                .execute(&mut tx)
                .await?;
                changed += done;
            }
            tx.commit().await?;
        }
        let answers: Vec<(String, String, String)> =
            sql("select scope, key, response_body from idempotency_keys where response_body is not null")
                .fetch_all(self.db.reader())
                .await?;
        for (scope, key, body) in answers {
            if let Some(resealed) = reseal(&body)? {
                sql(
                    "update idempotency_keys set response_body = $3 where scope = $1 and key = $2 and response_body = $4",
                )
                .bind(scope)
                .bind(key)
                .bind(resealed)
                .bind(body)
                    .execute(self.db.writer())
                    .await?;
                changed += 1;
            }
        }
        Ok(changed)
    }
}
