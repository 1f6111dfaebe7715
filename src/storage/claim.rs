//! Claims: the dispatcher's one transaction per cycle records finished attempts and claims due
//! deliveries for the freed slots, each claim opening its attempt row and taking a lease.

use super::db::Commit;
use super::rows::*;
use super::sql::{Sql, Tx, sql};
use super::*;
use crate::domain::batch::Batching;
use crate::domain::breaker::CircuitState;
use crate::domain::claim::{fifo_head_ready, next_cursor};
use crate::domain::trace::TraceContext;

/// Most rows one multi-row claim statement carries (well under both backends' bind limits).
pub(super) const CLAIM_CHUNK: usize = 500;

/// The endpoint columns a [`CandidateRow`] reads (the endpoint aliased `e`).
const SEND_COLUMNS: &str = "e.id, e.in_flight_limit, e.in_flight_window, e.fifo, e.rate_limit_per_second, \
    e.rate_next_at, e.url, e.headers, e.secret, e.previous_secret, e.previous_secret_expires_at, e.delivery_policy, \
    e.batch";

/// How often a claim looks for what is rarely there: circuits due a probe, test deliveries it
/// was not told of.
const OCCASIONAL_LOOK: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether `OCCASIONAL_LOOK` has passed since `last` (then it is now).
fn occasionally(last: &std::sync::Mutex<Option<std::time::Instant>>) -> bool {
    let Ok(mut last) = last.lock() else { return true };
    let now = std::time::Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < OCCASIONAL_LOOK) {
        return false;
    }
    *last = Some(now);
    true
}

/// Whether endpoint `e` has a delivery that is due now (`$1`) and not in flight.
const HAS_DUE_WORK: &str = "exists (
                select 1
                from deliveries d
                where d.endpoint_id = e.id
                  and d.status = 'pending'
                  and not d.bypass
                  and d.next_attempt_at <= $1
                  and d.lease_until is null
              )";

/// Endpoint `e`'s adaptive window within its cap (`domain::concurrency::effective_in_flight`),
/// with `$5` the initial window and `$6` the cap of endpoints without their own.
const WINDOW: &str = "case when coalesce(e.in_flight_window, $5) < coalesce(e.in_flight_limit, $6)
                then coalesce(e.in_flight_window, $5) else coalesce(e.in_flight_limit, $6) end";

impl Store {
    /// The dispatcher's one transaction per cycle: records finished attempts and their
    /// deliveries' new states, then claims up to `limit` deliveries that can start now, opening
    /// an attempt for each. Returns how many records were stale (their lease had been taken over)
    /// and dropped, and the claims.
    pub async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<(u64, Vec<Claimed>), StoreError> {
        let mut tx = self.db.begin_for(Commit::Bookkeeping).await?;
        let now = tx.now().await?;
        let stale = if records.is_empty() { 0 } else { self.record_tx(&mut tx, now, records).await? };
        let claimed = if limit > 0 { self.claim_tx(&mut tx, now, limit, lease).await? } else { Vec::new() };
        tx.commit().await?;
        Ok((stale, claimed))
    }

    /// Claims up to `limit` deliveries that can start now (`record_and_claim` with no records).
    pub async fn claim_due(
        &self,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(self.record_and_claim(&[], limit, lease).await?.1)
    }

    /// Records finished attempts (`record_and_claim` claiming nothing); returns how many were stale.
    pub async fn record_attempts(&self, records: &[AttemptRecord]) -> Result<u64, StoreError> {
        Ok(self.record_and_claim(records, 0, std::time::Duration::ZERO).await?.0)
    }

    /// Up to `limit` enabled, unpaused endpoints with a due delivery and a free slot in their
    /// window, whose circuit is closed (or the breaker off), with ids in (`after`, `up_to`], in id
    /// order, locked (PostgreSQL, skipping rows another process holds), with their attempts in
    /// flight.
    pub(super) async fn candidates(
        &self,
        tx: &mut Tx,
        now: i64,
        after: Option<&str>,
        up_to: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CandidateRow>, StoreError> {
        let statement = format!(
            r#"select {SEND_COLUMNS},
                (select count(distinct coalesce(l.lease_batch, l.id)) from deliveries l where l.endpoint_id = e.id and l.lease_until > $1) as in_flight
            from endpoints e
            where e.enabled
              and e.deleted_at is null
              and (e.paused_until is null or e.paused_until <= $1)
              and (e.circuit_state = 'closed' or not $7)
              and ($2 is null or e.id > $2)
              and ($3 is null or e.id <= $3)
              and {HAS_DUE_WORK}
              and (select count(distinct coalesce(l.lease_batch, l.id)) from deliveries l where l.endpoint_id = e.id and l.lease_until > $1)
                  < case when e.fifo then 1 else {WINDOW} end
            order by e.id
            limit $4{}"#,
            tx.locking(" for update of e skip locked")
        );
        Sql::build(&statement)
            .bind(now)
            .bind(after)
            .bind(up_to)
            .bind(limit)
            .bind(self.stress.initial_in_flight)
            .bind(self.stress.max_in_flight_per_endpoint)
            .bind(self.stress.breaker.enabled())
            .fetch_all(&mut *tx)
            .await
    }

    /// Up to `limit` enabled, unpaused endpoints with due work whose open circuit is due a probe
    /// (its `next_probe_at` passed: the cool-down of an open one, the deadline of a half-open one's lost probe), locked like [`Store::candidates`]; none when the breaker is off.
    async fn probe_candidates(
        &self,
        tx: &mut Tx,
        now: i64,
        limit: i64,
    ) -> Result<Vec<CandidateRow>, StoreError> {
        if !self.stress.breaker.enabled() || !self.time_to_look_for_probes() {
            return Ok(Vec::new());
        }
        let statement = format!(
            r#"select {SEND_COLUMNS}, cast(0 as bigint) as in_flight
            from endpoints e
            where e.enabled
              and e.deleted_at is null
              and (e.paused_until is null or e.paused_until <= $1)
              and e.circuit_state <> 'closed'
              and (e.circuit_next_probe_at is null or e.circuit_next_probe_at <= $1)
              and {HAS_DUE_WORK}
            order by e.id
            limit $2{}"#,
            tx.locking(" for update of e skip locked")
        );
        Sql::build(&statement).bind(now).bind(limit).fetch_all(&mut *tx).await
    }

    /// Whether this process's claim looks for circuits due a probe now: at most every
    /// [`OCCASIONAL_LOOK`], so a cycle of a busy dispatcher costs no extra statement (a probe
    /// goes at most that much after its cool-down).
    fn time_to_look_for_probes(&self) -> bool {
        occasionally(&self.probe_look)
    }

    /// Whether this process's claim looks for test deliveries now: when this process made one
    /// pending since the last look ([`Store::tests_added`]), and otherwise at most every
    /// [`OCCASIONAL_LOOK`] (another replica's, one left by a stopped process), so a cycle of a
    /// busy dispatcher costs no extra statement.
    fn time_to_look_for_tests(&self) -> bool {
        self.tests_added.swap(false, std::sync::atomic::Ordering::AcqRel) | occasionally(&self.test_look)
    }

    /// Says that this process made a test delivery pending (after its commit): the next claim
    /// looks for it.
    pub(super) fn tests_added(&self) {
        self.tests_added.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The delivery an endpoint's probe sends: its FIFO head when that can start, else its
    /// oldest due delivery.
    async fn probe_row(
        tx: &mut Tx,
        endpoint: &CandidateRow,
        now: i64,
    ) -> Result<Option<ClaimRow>, StoreError> {
        if endpoint.fifo {
            return Self::fifo_head(tx, &endpoint.id, now).await;
        }
        sql(r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
            from deliveries d
            join events ev on ev.id = d.event_id
            where d.endpoint_id = $1 and d.status = 'pending' and not d.bypass
              and d.next_attempt_at <= $2 and d.lease_until is null
            order by d.next_attempt_at, d.id
            limit 1"#)
        .bind(&endpoint.id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
    }

    /// A FIFO endpoint's head, when it can start now (`fifo_head_ready`).
    async fn fifo_head(tx: &mut Tx, endpoint_id: &str, now: i64) -> Result<Option<ClaimRow>, StoreError> {
        Ok(Self::fifo_run(tx, endpoint_id, now, 1).await?.into_iter().next())
    }

    /// Marks the circuits whose probes were just claimed half-open until `deadline`.
    async fn start_probes(tx: &mut Tx, endpoints: &[&str], deadline: i64) -> Result<(), StoreError> {
        if endpoints.is_empty() {
            return Ok(());
        }
        let mut update = Sql::build("update endpoints set circuit_state = ");
        update.push_bind(CircuitState::HalfOpen.as_str());
        update.push(", circuit_next_probe_at = ").push_bind(deadline);
        update.push(" where id in (").push_list(endpoints.iter().copied()).push(")");
        update.defer(tx).await?;
        metrics::counter!(crate::metrics::CIRCUIT_TRANSITIONS, "to" => CircuitState::HalfOpen.as_str())
            .increment(endpoints.len() as u64);
        Ok(())
    }

    /// Moves a rate-limited endpoint's next free time on by `n` claims.
    pub(super) async fn charge_rate(
        tx: &mut Tx,
        endpoint: &CandidateRow,
        now: i64,
        n: i64,
    ) -> Result<(), StoreError> {
        if let Some(rate) = endpoint.rate()
            && n > 0
        {
            sql("update endpoints set rate_next_at = $2 where id = $1")
                .bind(&endpoint.id)
                .bind(rate.charged(now, n))
                .defer(tx)
                .await?;
        }
        Ok(())
    }

    /// Due test deliveries (`webhook.test`), oldest first, locked like the due rows.
    async fn test_deliveries(&self, tx: &mut Tx, now: i64, limit: i64) -> Result<Vec<ClaimRow>, StoreError> {
        let statement = format!(
            r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
            from deliveries d
            join events ev on ev.id = d.event_id
            where d.bypass and d.status = 'pending' and d.next_attempt_at <= $1
              and d.lease_until is null
            order by d.next_attempt_at
            limit $2{}"#,
            tx.locking(" for update of d skip locked")
        );
        Sql::build(&statement).bind(now).bind(limit).fetch_all(&mut *tx).await
    }

    /// Claims deliveries for up to `limit` requests inside `tx`, opening an attempt for each
    /// delivery (a batch request carries several deliveries, DESIGN §14).
    pub(super) async fn claim_tx(
        &self,
        tx: &mut Tx,
        now: i64,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let lease_until = now + lease.as_micros() as i64;
        let mut picks = Picks::default();

        // Test deliveries skip the endpoint's enabled flag, FIFO lane, pause and circuit.
        let bypass = if self.time_to_look_for_tests() {
            self.test_deliveries(tx, now, limit).await?
        } else {
            Vec::new()
        };
        for row in bypass {
            let statement = format!(
                "select {SEND_COLUMNS}, cast(0 as bigint) as in_flight from endpoints e where e.id = $1 and e.deleted_at is null"
            );
            let endpoint: Option<CandidateRow> =
                Sql::build(&statement).bind(&row.endpoint_id).fetch_optional(&mut *tx).await?;
            if let Some(endpoint) = endpoint {
                picks.alone(row, std::sync::Arc::new(endpoint), false)?;
            }
        }

        // Open circuits due a probe: their oldest due delivery each, sent for real; the
        // circuit is half-open until the probe is recorded or its lease lapses (DESIGN §14).
        let room = limit - picks.requests;
        if room > 0 {
            let mut probing: Vec<String> = Vec::new();
            for endpoint in self.probe_candidates(tx, now, room).await? {
                if endpoint.candidate(&self.stress).room(now) <= 0 {
                    continue;
                }
                if let Some(row) = Self::probe_row(tx, &endpoint, now).await? {
                    Self::charge_rate(tx, &endpoint, now, 1).await?;
                    probing.push(endpoint.id.clone());
                    picks.alone(row, std::sync::Arc::new(endpoint), true)?;
                }
            }
            let probing: Vec<&str> = probing.iter().map(String::as_str).collect();
            Self::start_probes(tx, &probing, lease_until).await?;
        }

        // Candidate endpoints: due work and a free slot, in id order from where this
        // process's last claim stopped, wrapping around (round robin over every endpoint),
        // and only as many as there are free slots, since each gives at least one request.
        // So a cycle reads a few endpoints past the cursor, not every endpoint there is.
        let cursor = self.claim_cursor.lock().ok().and_then(|c| c.clone());
        let mut candidates = self.candidates(tx, now, cursor.as_deref(), None, limit).await?;
        if let Some(cursor) = cursor.as_deref()
            && (candidates.len() as i64) < limit
        {
            let rest = limit - candidates.len() as i64;
            candidates.extend(self.candidates(tx, now, None, Some(cursor), rest).await?);
        }
        let order: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();

        // FIFO heads and batches one endpoint at a time; every other endpoint's due rows in one
        // read (`due_rows`).
        let mut plan: Vec<(String, i64)> = Vec::new();
        let mut by_id: std::collections::HashMap<String, std::sync::Arc<CandidateRow>> =
            std::collections::HashMap::new();
        for endpoint in candidates {
            if picks.requests >= limit {
                break;
            }
            let room = endpoint.candidate(&self.stress).room(now).min(limit - picks.requests);
            if room <= 0 {
                continue;
            }
            let endpoint = std::sync::Arc::new(endpoint);
            if let Some(batching) = endpoint.batching()? {
                self.claim_batches(tx, &mut picks, &endpoint, batching, room, now).await?;
            } else if endpoint.fifo {
                if let Some(head) = Self::fifo_head(tx, &endpoint.id, now).await? {
                    Self::charge_rate(tx, &endpoint, now, 1).await?;
                    picks.alone(head, endpoint, false)?;
                }
            } else {
                // Every endpoint's room is planned in full: `due_rows` stops at the
                // cycle's limit, and endpoints with fewer due rows than room leave the
                // rest to the others.
                plan.push((endpoint.id.clone(), room));
                by_id.insert(endpoint.id.clone(), endpoint);
            }
        }
        let room = limit - picks.requests;
        if !plan.is_empty() && room > 0 {
            let rows = tx.due_rows(&plan, now, room).await?;
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
                    picks.alone(row, endpoint, false)?;
                }
            }
        }

        // Endpoints served, and batching endpoints left to fill, count as visited: the next
        // claim starts after them, so a batch that waits never holds the others back.
        let served: std::collections::HashSet<&str> = picks
            .rows
            .iter()
            .map(|pick| pick.row.endpoint_id.as_str())
            .chain(picks.deferred.iter().map(String::as_str))
            .collect();
        let room_left = picks.requests < limit && picks.deferred.is_empty();
        if let Ok(mut cursor) = self.claim_cursor.lock() {
            *cursor = next_cursor(&order, &served, room_left).cloned();
        }
        self.open_attempts(tx, picks.rows, now, lease_until).await
    }

    /// Claims up to `room` batch requests for a batching endpoint (DESIGN §14): its due
    /// deliveries in order (a FIFO endpoint's ready head and those after it), when a full batch
    /// is due or the oldest has waited `max_wait`, split by `Batching::split`. A batch not ready
    /// yet leaves its deadline for the dispatcher's wait (`next_due_after`).
    async fn claim_batches(
        &self,
        tx: &mut Tx,
        picks: &mut Picks,
        endpoint: &std::sync::Arc<CandidateRow>,
        batching: Batching,
        room: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let per_request = i64::from(batching.max_events);
        // Whether a batch goes at all, from a count and a time, before any payload is read.
        let (due, oldest): (i64, Option<i64>) = sql(r#"select count(*), min(next_attempt_at)
            from (
                select next_attempt_at
                from deliveries
                where endpoint_id = $1 and status = 'pending' and not bypass
                  and next_attempt_at <= $2 and lease_until is null
                limit $3
            ) d"#)
        .bind(&endpoint.id)
        .bind(now)
        .bind(per_request)
        .fetch_one(&mut *tx)
        .await?;
        let Some(oldest) = oldest else { return Ok(()) };
        if !batching.ready(due as usize, oldest, now) {
            // Looked at and left to fill: the next claim starts after it (round robin).
            picks.deferred.insert(endpoint.id.clone());
            self.wake_at(oldest + batching.max_wait().as_micros() as i64);
            return Ok(());
        }
        let (rows, requests) = if endpoint.fifo {
            (Self::fifo_run(tx, &endpoint.id, now, per_request).await?, 1)
        } else {
            let rows = room * per_request;
            (tx.due_rows(&[(endpoint.id.clone(), rows)], now, rows).await?, room as usize)
        };
        let sizes: Vec<usize> = rows.iter().map(|row| row.payload.as_ref().map_or(0, String::len)).collect();
        let batches = batching.split(&sizes, requests);
        Self::charge_rate(tx, endpoint, now, batches.len() as i64).await?;
        let mut rows = rows.into_iter();
        for range in batches {
            let batch_id = crate::domain::id::new_id(crate::domain::id::IdKind::Batch);
            let members: Vec<ClaimRow> = rows.by_ref().take(range.len()).collect();
            picks.batch(members, endpoint, &batch_id);
        }
        Ok(())
    }

    /// A FIFO endpoint's head and the deliveries after it, in acceptance order, up to `limit`,
    /// as long as each can start now: the next batch of its lane.
    async fn fifo_run(
        tx: &mut Tx,
        endpoint_id: &str,
        now: i64,
        limit: i64,
    ) -> Result<Vec<ClaimRow>, StoreError> {
        let lane: Vec<ClaimRow> =
            sql(r#"select d.id, d.event_id, d.tenant_id, d.endpoint_id, d.attempt_count, d.run_attempts,
                d.max_attempts, d.next_attempt_at, d.lease_until, ev.payload, ev.traceparent, ev.tracestate
            from deliveries d
            join events ev on ev.id = d.event_id
            where d.endpoint_id = $1 and d.status = 'pending' and not d.bypass
            order by d.fifo_seq nulls first, d.id
            limit $2"#)
            .bind(endpoint_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        Ok(lane
            .into_iter()
            .take_while(|row| fifo_head_ready(row.next_attempt_at, row.lease_until.is_some(), now))
            .collect())
    }

    /// Leases the picked deliveries and opens an attempt for each.
    async fn open_attempts(
        &self,
        tx: &mut Tx,
        picks: Vec<Pick>,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        // One lease token per claim: a later claim of the same delivery has another, so a
        // result recorded under this one after a takeover is recognised as stale.
        let lease_token = uuid::Uuid::new_v4().simple().to_string();
        for chunk in picks.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                "update deliveries set attempt_count = attempt_count + 1, run_attempts = run_attempts + 1, lease_until = ",
            );
            update.push_bind(lease_until).push(", lease_token = ").push_bind(&lease_token);
            update.push(", lease_batch = null where id in (");
            update.push_list(chunk.iter().map(|pick| &pick.row.id)).push(")");
            update.defer(tx).await?;
        }
        let mut batches: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for pick in &picks {
            if let Some(batch_id) = &pick.batch_id {
                batches.entry(batch_id).or_default().push(&pick.row.id);
            }
        }
        for (batch_id, members) in batches {
            let mut update = Sql::build("update deliveries set lease_batch = ");
            update.push_bind(batch_id).push(" where id in (").push_list(members).push(")");
            update.defer(tx).await?;
        }
        let mut claimed = Vec::with_capacity(picks.len());
        // Each endpoint's headers and secrets are opened once per claim, however many of its
        // deliveries (a batch's members) it holds.
        let mut opened: std::collections::HashMap<String, Opened> = std::collections::HashMap::new();
        for Pick { row, endpoint, probe, batch_id } in picks {
            let (headers, secrets, policy) = match opened.get(&endpoint.id) {
                Some(open) => open.clone(),
                None => {
                    let open = (
                        endpoint.headers(&self.cipher)?,
                        endpoint.secrets(&self.cipher)?,
                        crate::domain::policy::DeliveryPolicy::from_stored(
                            endpoint.delivery_policy.as_deref(),
                        )
                        .map_err(corrupt)?,
                    );
                    opened.insert(endpoint.id.clone(), open.clone());
                    open
                }
            };
            claimed.push(Claimed {
                attempt_id: crate::domain::id::new_id(crate::domain::id::IdKind::Attempt),
                attempt_number: row.attempt_count + 1,
                run_attempt: row.run_attempts + 1,
                delivery_id: row.id,
                event_id: row.event_id,
                tenant_id: row.tenant_id,
                endpoint_id: row.endpoint_id,
                max_attempts: row.max_attempts,
                lease_token: lease_token.clone(),
                url: endpoint.url.clone(),
                headers,
                secrets,
                policy,
                probe,
                batch_id,
                trace: row
                    .traceparent
                    .as_deref()
                    .and_then(|parent| TraceContext::from_headers(Some(parent), row.tracestate.as_deref())),
                payload: row.payload,
            });
        }
        for chunk in claimed.chunks(CLAIM_CHUNK) {
            let mut insert = Sql::build(
                "insert into attempts (id, delivery_id, endpoint_id, number, started_at, probe, batch_id) values ",
            );
            insert.push_tuples(chunk, |row, claim| {
                row.bind(&claim.attempt_id)
                    .bind(&claim.delivery_id)
                    .bind(&claim.endpoint_id)
                    .bind(claim.attempt_number)
                    .bind(now)
                    .bind(claim.probe)
                    .bind(&claim.batch_id);
            });
            insert.defer(tx).await?;
        }
        Ok(claimed)
    }
}

/// An endpoint's opened custom headers, secrets and delivery policy, as a claim sends them.
type Opened = (
    std::collections::BTreeMap<String, String>,
    crate::domain::endpoint::Secrets,
    crate::domain::policy::DeliveryPolicy,
);

/// One delivery a claim picked: the endpoint as it is now, whether it is the circuit's probe,
/// and the batch request it goes in, if any.
struct Pick {
    row: ClaimRow,
    endpoint: std::sync::Arc<CandidateRow>,
    probe: bool,
    batch_id: Option<String>,
}

/// What a claim picked, how many requests that makes (a batch is one request), and the
/// batching endpoints it left to fill.
#[derive(Default)]
struct Picks {
    rows: Vec<Pick>,
    requests: i64,
    deferred: std::collections::HashSet<String>,
}

impl Picks {
    /// One delivery in a request of its own; a batching endpoint gets it as a batch of one, so
    /// that it always receives arrays.
    fn alone(
        &mut self,
        row: ClaimRow,
        endpoint: std::sync::Arc<CandidateRow>,
        probe: bool,
    ) -> Result<(), StoreError> {
        let batch_id =
            endpoint.batching()?.map(|_| crate::domain::id::new_id(crate::domain::id::IdKind::Batch));
        self.rows.push(Pick { row, endpoint, probe, batch_id });
        self.requests += 1;
        Ok(())
    }

    /// A batch request of `members`.
    fn batch(&mut self, members: Vec<ClaimRow>, endpoint: &std::sync::Arc<CandidateRow>, batch_id: &str) {
        for row in members {
            self.rows.push(Pick {
                row,
                endpoint: endpoint.clone(),
                probe: false,
                batch_id: Some(batch_id.to_owned()),
            });
        }
        self.requests += 1;
    }
}
