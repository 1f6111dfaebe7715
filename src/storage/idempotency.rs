//! `Idempotency-Key` on the creating POST routes other than ingest: one row per key, its request
//! hash and, once the request succeeded, its answer (sealed like every secret).

use super::rows::*;
use super::sql::sql;
use super::*;

impl Store {
    /// Starts an idempotent request: records the key, or reports what an earlier request with the
    /// same key did. Keys older than `since` are forgotten first.
    pub async fn begin_idempotent(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        since: i64,
    ) -> Result<IdempotencyState, StoreError> {
        let mut tx = self.db.begin().await?;
        sql("delete from idempotency_keys where scope = $1 and key = $2 and created_at < $3")
            .bind(scope)
            .bind(key)
            .bind(since)
            .execute(&mut tx)
            .await?;
        let inserted = sql(r#"insert into idempotency_keys (scope, key, request_hash, created_at)
            values ($1, $2, $3, $4)
            on conflict do nothing"#)
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(crate::domain::time::now_micros())
        .execute(&mut tx)
        .await?;
        let state = if inserted == 1 {
            IdempotencyState::Started
        } else {
            let (hash, status, body): (String, Option<i32>, Option<String>) =
                sql(r#"select request_hash, response_status, response_body
                from idempotency_keys
                where scope = $1 and key = $2"#)
                .bind(scope)
                .bind(key)
                .fetch_one(&mut tx)
                .await?;
            match (hash == request_hash, status, body) {
                (false, _, _) => IdempotencyState::Mismatch,
                (true, Some(status), Some(body)) => {
                    let body = self.cipher.open(&body).map_err(corrupt)?;
                    IdempotencyState::Replay { status: status as u16, body }
                }
                _ => IdempotencyState::InProgress,
            }
        };
        tx.commit().await?;
        Ok(state)
    }

    /// Stores the answer of a successful idempotent request.
    pub async fn finish_idempotent(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sql(r#"update idempotency_keys set response_status = $3, response_body = $4
            where scope = $1 and key = $2"#)
        .bind(scope)
        .bind(key)
        .bind(i32::from(status))
        .bind(self.cipher.seal(body))
        .run(self.db.writer())
        .await
    }

    /// Forgets a key whose request failed, so it can be tried again.
    pub async fn abandon_idempotent(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        sql("delete from idempotency_keys where scope = $1 and key = $2 and response_status is null")
            .bind(scope)
            .bind(key)
            .run(self.db.writer())
            .await
    }
}
