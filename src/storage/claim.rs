//! Claims: the dispatcher's one transaction per cycle records finished attempts and claims due
//! deliveries for the freed slots, each claim opening its attempt row and taking a lease.

use super::db::Commit;
use super::rows::*;
use super::sql::{Sql, Tx, sql};
use super::*;
use crate::domain::batch::Batching;
use crate::domain::breaker::CircuitState;
use crate::domain::claim::{AHEAD_LEAST_WAIT, Ahead, fifo_head_ready, next_cursor};
use crate::domain::delivery::Stopped;
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

/// How many requests endpoint `e` has in flight at `$1`: its deliveries leased until later, a
/// batch's members counted once. Read through the endpoint's open attempts (`attempts_open`,
/// named to SQLite, which would otherwise read all the endpoint's attempts): every lease is
/// taken with its open attempt and lifted when that attempt is finished, given back or closed by
/// the reaper, and `deliveries` keeps no index on its lease columns, so that a claim writes no
/// index entry there.
fn in_flight(tx: &Tx) -> String {
    format!(
        "(select count(distinct coalesce(l.lease_batch, l.id))
                from attempts a{}
                join deliveries l on l.id = a.delivery_id
                where a.endpoint_id = e.id and a.finished_at is null and l.lease_until > $1)",
        tx.sqlite_index(" indexed by attempts_open")
    )
}

/// Endpoint `e`'s adaptive window within its cap (`domain::concurrency::effective_in_flight`),
/// with `$5` the initial window and `$6` the cap of endpoints without their own.
const WINDOW: &str = "case when coalesce(e.in_flight_window, $5) < coalesce(e.in_flight_limit, $6)
                then coalesce(e.in_flight_window, $5) else coalesce(e.in_flight_limit, $6) end";

impl Store {
    /// The dispatcher's one transaction per cycle (`dispatch_cycle`), claiming nothing ahead
    /// and giving nothing back.
    pub async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<(u64, Vec<Claimed>), StoreError> {
        self.dispatch_cycle(&Cycle { records, released: &[], limit, lease, ahead: None }).await
    }

    /// The dispatcher's one transaction per cycle: records finished attempts and their
    /// deliveries' new states, gives back the claims made ahead that will not start, then claims
    /// up to `limit` deliveries that can start now (and, with `ahead`, up to a window ahead of
    /// each endpoint's free slots), opening an attempt for each. Returns how many records were
    /// stale (their lease had been taken over) and dropped, and the claims.
    pub async fn dispatch_cycle(&self, cycle: &Cycle<'_>) -> Result<(u64, Vec<Claimed>), StoreError> {
        let mut tx = self.db.begin_for(Commit::Bookkeeping).await?;
        let now = tx.now().await?;
        let stale =
            if cycle.records.is_empty() { 0 } else { self.record_tx(&mut tx, now, cycle.records).await? };
        Self::release_tx(&mut tx, cycle.released, now).await?;
        let claimed = if cycle.limit > 0 {
            self.claim_tx(&mut tx, now, cycle.limit, cycle.lease, cycle.ahead).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok((stale, claimed))
    }

    /// Gives back claims that never started: each delivery is as it was before the claim (its
    /// lease lifted, its attempt counts back, its open attempt row gone), so the next claim
    /// takes it up again. Only while the claim's lease is still this one. A delivery whose
    /// endpoint stopped meanwhile then fails as the stop rule says (`Stopped::fails_now`): the
    /// stop left it alone while it was claimed.
    async fn release_tx(tx: &mut Tx, released: &[Claimed], now: i64) -> Result<(), StoreError> {
        for chunk in released.chunks(CLAIM_CHUNK) {
            let mut update = Sql::build(
                r#"update deliveries
                set attempt_count = attempt_count - 1, run_attempts = run_attempts - 1,
                    lease_until = null, lease_token = null
                from (values "#,
            );
            update.push_tuples(chunk, |row, claim| {
                row.bind(&claim.delivery_id).bind(&claim.lease_token);
            });
            update.push(") as v where deliveries.id = v.column1 and deliveries.lease_token = v.column2");
            update.defer(tx).await?;
            let mut delete = Sql::build("delete from attempts where finished_at is null and id in (");
            delete.push_list(chunk.iter().map(|claim| claim.attempt_id.as_str())).push(")");
            delete.defer(tx).await?;
            let mut stopped = Sql::build(
                r#"select d.id, e.enabled, e.deleted_at is not null as deleted, d.bypass
                from deliveries d
                join endpoints e on e.id = d.endpoint_id
                where d.status = 'pending' and d.lease_until is null and (not e.enabled or e.deleted_at is not null)
                  and d.id in ("#,
            );
            stopped.push_list(chunk.iter().map(|claim| claim.delivery_id.as_str())).push(")");
            let stopped: Vec<(String, bool, bool, bool)> = stopped.fetch_all(&mut *tx).await?;
            for (id, enabled, deleted, test_event) in stopped {
                let Some(stop) = Stopped::of(enabled, deleted) else { continue };
                if stop.fails_now(false, test_event) {
                    sql("update deliveries set status = 'failed', last_error = $2, completed_at = $3 where id = $1")
                        .bind(&id)
                        .bind(stop.reason())
                        .bind(now)
                        .defer(tx)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Whether this process is the only one on its database (SQLite serves one process per
    /// file), so that every lease in it is this process's own: what lets its dispatcher claim
    /// ahead ([`Cycle::ahead`]) and start those claims on its own count of requests in flight.
    pub fn single_process(&self) -> bool {
        matches!(self.db.pools, super::db::Pools::Sqlite { .. })
    }

    /// Says that this process changed or stopped an endpoint, or every endpoint of a tenant
    /// (`id` either's): its dispatcher gives back what it claimed ahead for them, so that what
    /// starts next follows the change (a lower cap, a pause, a disabling, a deletion, a new
    /// secret). Kept only while a dispatcher of this process claims ahead
    /// ([`Store::watch_changes`]).
    pub(super) fn endpoint_changed(&self, id: &str) {
        if let Ok(mut changed) = self.changed.lock()
            && let Some(changed) = changed.as_mut()
        {
            changed.insert(id.to_owned());
        }
    }

    /// Starts (or stops) keeping the endpoints and tenants this process changes, for a
    /// dispatcher that claims ahead.
    pub fn watch_changes(&self, on: bool) {
        if let Ok(mut changed) = self.changed.lock() {
            *changed = on.then(Default::default);
        }
    }

    /// The endpoints and tenants changed since the last call ([`Store::endpoint_changed`]).
    pub fn take_changed(&self) -> std::collections::HashSet<String> {
        self.changed
            .lock()
            .ok()
            .and_then(|mut changed| changed.as_mut().map(std::mem::take))
            .unwrap_or_default()
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
    /// window (with `ahead`, in the window ahead of it, `Candidate::ahead`), whose circuit is
    /// closed (or the breaker off), with ids in (`after`, `up_to`], in id order, locked (PostgreSQL, skipping rows another process holds), with their attempts in
    /// flight.
    pub(super) async fn candidates(
        &self,
        tx: &mut Tx,
        now: i64,
        after: Option<&str>,
        up_to: Option<&str>,
        limit: i64,
        ahead: bool,
    ) -> Result<Vec<CandidateRow>, StoreError> {
        let in_flight = in_flight(tx);
        let statement = format!(
            r#"select {SEND_COLUMNS},
                {in_flight} as in_flight
            from endpoints e
            where e.enabled
              and e.deleted_at is null
              and (e.paused_until is null or e.paused_until <= $1)
              and (e.circuit_state = 'closed' or not $7)
              and ($2 is null or e.id > $2)
              and ($3 is null or e.id <= $3)
              and {HAS_DUE_WORK}
              and {in_flight}
                  < case when e.fifo then 1
                    when $8 and e.batch is null and e.rate_limit_per_second is null then 2 * ({WINDOW})
                    else {WINDOW} end
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
            .bind(ahead)
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
    /// delivery (a batch request carries several deliveries, DESIGN §14); with `ahead`, also up
    /// to one window ahead of each plain endpoint's free slots (`Candidate::ahead`), marked
    /// [`Claimed::ahead`], for the dispatcher to start as its requests to the endpoint end.
    pub(super) async fn claim_tx(
        &self,
        tx: &mut Tx,
        now: i64,
        limit: i64,
        lease: std::time::Duration,
        ahead: Option<Ahead>,
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
        let mut candidates =
            self.candidates(tx, now, cursor.as_deref(), None, limit, ahead.is_some()).await?;
        if let Some(cursor) = cursor.as_deref()
            && (candidates.len() as i64) < limit
        {
            let rest = limit - candidates.len() as i64;
            candidates.extend(self.candidates(tx, now, None, Some(cursor), rest, ahead.is_some()).await?);
        }
        let order: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();

        // FIFO heads and batches one endpoint at a time; every other endpoint's due rows in one
        // read (`due_rows`), its room now and the window ahead of it.
        let mut plan: Vec<(String, i64)> = Vec::new();
        let mut rooms: std::collections::HashMap<String, Rooms> = std::collections::HashMap::new();
        for endpoint in candidates {
            if picks.requests >= limit {
                break;
            }
            let candidate = endpoint.candidate(&self.stress);
            let room = candidate.room(now).min(limit - picks.requests).max(0);
            let batching = endpoint.batching()?;
            let endpoint = std::sync::Arc::new(endpoint);
            if let Some(batching) = batching {
                if room > 0 {
                    self.claim_batches(tx, &mut picks, &endpoint, batching, room, now).await?;
                }
            } else if endpoint.fifo {
                if room > 0
                    && let Some(head) = Self::fifo_head(tx, &endpoint.id, now).await?
                {
                    Self::charge_rate(tx, &endpoint, now, 1).await?;
                    picks.alone(head, endpoint, false)?;
                }
            } else {
                // Every endpoint's room is planned in full: the rows past the cycle's limit are
                // left (`Rooms::take`), and endpoints with fewer due rows than room leave the
                // rest to the others.
                let ahead = match ahead {
                    Some(rule) if rule.may_start(endpoint.policy()?.timeout, AHEAD_LEAST_WAIT) => {
                        candidate.ahead(room)
                    }
                    _ => 0,
                };
                if room == 0 {
                    // A candidate for claims ahead only (or, past its window, for none): looked
                    // at, so the next claim starts after it rather than reading it again first.
                    picks.deferred.insert(endpoint.id.clone());
                }
                if room + ahead > 0 {
                    plan.push((endpoint.id.clone(), room + ahead));
                    let window = candidate.max_in_flight;
                    rooms.insert(
                        endpoint.id.clone(),
                        Rooms { endpoint, now: room, ahead, window, taken_now: 0, taken_ahead: 0 },
                    );
                }
            }
        }
        if !plan.is_empty() && picks.requests < limit {
            let ahead_total: i64 = rooms.values().map(|rooms| rooms.ahead).sum();
            let rows = tx.due_rows(&plan, now, limit - picks.requests + ahead_total).await?;
            let mut taken: Vec<(ClaimRow, std::sync::Arc<CandidateRow>, Take)> = Vec::new();
            let mut now_left = limit - picks.requests;
            for row in rows {
                let Some(rooms) = rooms.get_mut(&row.endpoint_id) else { continue };
                if let Some(take) = rooms.take(now_left) {
                    now_left -= i64::from(take == Take::Now);
                    taken.push((row, rooms.endpoint.clone(), take));
                }
            }
            for rooms in rooms.values() {
                Self::charge_rate(tx, &rooms.endpoint, now, rooms.taken_now).await?;
            }
            for (row, endpoint, take) in taken {
                match take {
                    Take::Now => picks.alone(row, endpoint, false)?,
                    Take::Ahead(window) => picks.ahead(row, endpoint, window),
                }
            }
        }

        // Endpoints served, and those looked at that start nothing now (`Picks::deferred`), count as visited: the next
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
        for Pick { row, endpoint, probe, batch_id, ahead } in picks {
            let (headers, secrets, policy) = match opened.get(&endpoint.id) {
                Some(open) => open.clone(),
                None => {
                    let open = (
                        endpoint.headers(&self.cipher)?,
                        endpoint.secrets(&self.cipher)?,
                        endpoint.policy()?,
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
                ahead,
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

/// A plain endpoint's rooms in one claim: how many of its due rows start now (its free slots,
/// within the cycle's limit) and how many go one window ahead of them.
struct Rooms {
    endpoint: std::sync::Arc<CandidateRow>,
    now: i64,
    ahead: i64,
    window: i32,
    taken_now: i64,
    taken_ahead: i64,
}

/// What a claim does with one due row of a plain endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Take {
    /// Starts now.
    Now,
    /// Waits, claimed, for a slot of the endpoint's window (its size as claimed).
    Ahead(i32),
}

impl Rooms {
    /// The endpoint's next due row (they come oldest first): starts now while the endpoint
    /// has room and the cycle has `now_left`, else goes ahead while there is room ahead, else
    /// is left unclaimed.
    fn take(&mut self, now_left: i64) -> Option<Take> {
        if self.taken_now < self.now && now_left > 0 {
            self.taken_now += 1;
            Some(Take::Now)
        } else if self.taken_ahead < self.ahead {
            self.taken_ahead += 1;
            Some(Take::Ahead(self.window))
        } else {
            None
        }
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
    /// Claimed one window ahead (the window's size as claimed).
    ahead: Option<i32>,
}

/// What a claim picked, how many requests that makes (a batch is one request), and the
/// batching endpoints it left to fill.
#[derive(Default)]
struct Picks {
    rows: Vec<Pick>,
    requests: i64,
    /// Endpoints looked at that start nothing now: a batch left to fill, an endpoint with room
    /// only ahead. They count as visited for the round robin.
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
        self.rows.push(Pick { row, endpoint, probe, batch_id, ahead: None });
        self.requests += 1;
        Ok(())
    }

    /// One delivery claimed one window ahead of a plain endpoint's free slots (not a request
    /// of this claim's limit: it starts when one of the endpoint's requests ends).
    fn ahead(&mut self, row: ClaimRow, endpoint: std::sync::Arc<CandidateRow>, window: i32) {
        self.rows.push(Pick { row, endpoint, probe: false, batch_id: None, ahead: Some(window) });
    }

    /// A batch request of `members`.
    fn batch(&mut self, members: Vec<ClaimRow>, endpoint: &std::sync::Arc<CandidateRow>, batch_id: &str) {
        for row in members {
            self.rows.push(Pick {
                row,
                endpoint: endpoint.clone(),
                probe: false,
                batch_id: Some(batch_id.to_owned()),
                ahead: None,
            });
        }
        self.requests += 1;
    }
}
