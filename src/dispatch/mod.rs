//! The dispatcher. [`Dispatcher::run`] loops around [`Dispatcher::dispatch_once`]: one cycle is
//! one transaction that records the attempts finished since the last cycle and claims due
//! deliveries for the slots they freed (each claim opens the attempt row and takes a lease);
//! the claims are sent concurrently, each in a task of the dispatcher's own `JoinSet`, under a
//! global bound. No transaction is open while a request is on the wire, and a freed slot is
//! refilled in the very transaction that frees it.
//!
//! The loop owns its state (the tasks, the attempts in flight, the results not yet recorded), so
//! tests can step it: `dispatch_once` claims and starts what is due, `finish_in_flight` waits for
//! the attempts it started and records them.

pub mod handoff;
pub mod net_guard;
pub mod send;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::batch;
use crate::domain::breaker::{after_probe, signal};
use crate::domain::claim::Ahead;
use crate::domain::delivery::{after_interruption, run_budget};
use crate::domain::retry::{ErrorKind, Outcome, jitter};
use crate::domain::time::now_micros;
use crate::domain::trace::TraceContext;
use crate::storage::{AttemptRecord, Claimed, Cycle, Store};
use crate::telemetry::traces::attempt_traceparent;
use handoff::Handed;
pub use handoff::Handoff;
use send::{Sender, Sent};

/// Most deliveries claimed in one round trip.
const CLAIM_BATCH: usize = 256;
/// Most results written in one transaction.
const RECORD_BATCH: usize = 512;
/// Longest a cycle waits for the rest of a burst of results.
const GATHER: Duration = Duration::from_millis(1);
/// Attempts younger than this are expected back within `GATHER`.
const RECENT: Duration = Duration::from_millis(20);
/// Times one batch of results is written again after a store error before it is given up (the
/// leases then lapse and the reaper closes the attempts as interrupted).
const RECORD_TRIES: u32 = 5;

/// What one cycle did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Finished attempts recorded.
    pub recorded: usize,
    /// Attempts started.
    pub started: usize,
    /// Attempts it could have started (free slots, at most one claim batch).
    pub room: usize,
}

/// A request whose task ended: its endpoint (unknown only for a task not in flight) and
/// whether every delivery it carried was delivered.
struct Ended {
    endpoint: Option<String>,
    delivered: bool,
}

/// What every attempt task needs, shared.
struct Attempts {
    sender: Sender,
    /// For the operations tenant's endpoints: `[security] operations_allow_cidrs` opened too.
    operations_sender: Sender,
    /// The server's `[delivery]` values, which endpoints' own policies override member by member.
    server: crate::domain::policy::Server,
    /// A span per attempt, when traces are exported.
    traces: crate::telemetry::traces::Traces,
}

/// The operations tenant's id, looked up at most once a minute.
struct OperationsTenant {
    key: Option<String>,
    cached: Option<(Option<String>, Instant)>,
}

impl OperationsTenant {
    /// Whether `tenant_id` is the operations tenant.
    async fn is(&mut self, store: &Store, tenant_id: &str) -> bool {
        let Some(key) = &self.key else { return false };
        let id = match &self.cached {
            Some((id, at)) if at.elapsed() < Duration::from_secs(60) => id.clone(),
            _ => {
                let id = store.get_tenant(key).await.ok().map(|t| t.id);
                self.cached = Some((id.clone(), Instant::now()));
                id
            }
        };
        id.as_deref() == Some(tenant_id)
    }
}

/// The dispatcher of one process, with the state its loop owns.
pub struct Dispatcher {
    store: Arc<Store>,
    attempts: Arc<Attempts>,
    operations: OperationsTenant,
    lease: Duration,
    grace: Duration,
    poll_interval: Duration,
    max_in_flight: usize,
    wakeup: Arc<Notify>,
    /// The bound on requests in flight (`[delivery] max_in_flight`): each request's task holds
    /// one slot until it ends, whether the dispatcher claimed it or ingest did (`Handoff`).
    slots: Arc<Semaphore>,
    /// Whether ingest hands claims over: while `run` runs.
    handoff_open: Arc<AtomicBool>,
    handoff: Handoff,
    /// Claims made at ingest, to start.
    handed: mpsc::UnboundedReceiver<Handed>,
    /// One task per attempt on the wire; each returns its record.
    tasks: JoinSet<Vec<AttemptRecord>>,
    /// Attempts on the wire: task → (claim, when it started).
    in_flight: HashMap<Id, (Vec<Claimed>, Instant)>,
    /// Finished attempts not yet recorded.
    finished: Vec<AttemptRecord>,
    /// The stored next due time as last read (inside, `None`: nothing pending later), and when:
    /// what an idle dispatcher waits for. Forgotten when this process changes what is pending
    /// later (a result recorded as a retry, a lapsed lease closed), on a wake-up (work committed,
    /// a replay), and after the poll interval (another replica's retries).
    stored_due: Option<(Option<i64>, Instant)>,
    last_reap: Option<Instant>,
    /// Whether cycles claim one window ahead (DESIGN §17), and how long those claims may wait:
    /// while `run` runs, on a database this process has to itself (`Store::single_process`).
    claim_ahead: Option<Ahead>,
    /// Claims made ahead, per endpoint, oldest first, with when they were made: each starts
    /// when the endpoint has fewer requests in flight than its window as claimed.
    ahead: HashMap<String, VecDeque<(Instant, Claimed)>>,
    /// Requests in flight per endpoint.
    endpoint_in_flight: HashMap<String, usize>,
    /// Claims made ahead that will not start, to give back in the next cycle.
    released: Vec<Claimed>,
}

impl Dispatcher {
    /// Builds a dispatcher over `store`; `wakeup` is notified when new work is committed.
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        wakeup: Arc<Notify>,
        traces: crate::telemetry::traces::Traces,
    ) -> anyhow::Result<Dispatcher> {
        let operations_allow = config
            .security
            .allow_cidrs
            .iter()
            .chain(&config.security.operations_allow_cidrs)
            .copied()
            .collect();
        let slots = Arc::new(Semaphore::new(config.delivery.max_in_flight));
        let handoff_open = Arc::new(AtomicBool::new(false));
        let (handoff, handed) =
            Handoff::new(slots.clone(), handoff_open.clone(), config.delivery.lease, wakeup.clone());
        Ok(Dispatcher {
            store,
            attempts: Arc::new(Attempts {
                sender: Sender::new(config, config.security.allow_cidrs.clone())?,
                operations_sender: Sender::new(config, operations_allow)?,
                server: config.delivery.policy_server(),
                traces,
            }),
            operations: OperationsTenant { key: config.operations.tenant.clone(), cached: None },
            lease: config.delivery.lease,
            grace: config.delivery.grace(),
            poll_interval: config.delivery.poll_interval,
            max_in_flight: config.delivery.max_in_flight,
            wakeup,
            slots,
            handoff_open,
            handoff,
            handed,
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            finished: Vec::new(),
            stored_due: None,
            last_reap: None,
            claim_ahead: None,
            ahead: HashMap::new(),
            endpoint_in_flight: HashMap::new(),
            released: Vec::new(),
        })
    }

    /// Ingest's side of the hand-off (see [`handoff`]): claims made in the group commit, started
    /// by this dispatcher while its loop runs.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Retries a run allows after its first attempt (unless a delivery sets its own budget).
    pub fn retries(&self) -> usize {
        self.attempts.server.retry.schedule.len()
    }

    /// Runs until `shutdown`: cycle after cycle, idling when nothing more can start; then drains
    /// within the grace period.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let listening = {
            let store = self.store.clone();
            let (wakeup, shutdown) = (self.wakeup.clone(), shutdown.clone());
            tokio::spawn(async move { store.listen_for_work(wakeup, shutdown).await })
        };
        metrics::gauge!(crate::metrics::DISPATCHER_UP).set(1.0);
        self.handoff_open.store(true, Ordering::Release);
        self.claim_ahead = self
            .store
            .single_process()
            .then_some(Ahead { lease: self.lease, server_timeout: self.attempts.server.timeout });
        self.store.watch_changes(self.claim_ahead.is_some());
        let mut tries = 0;
        while !shutdown.is_cancelled() {
            metrics::gauge!(crate::metrics::DISPATCHER_LAST_CLAIM).set(chrono::Utc::now().timestamp() as f64);
            match self.dispatch_once().await {
                Ok(Dispatched { started, room, .. }) => {
                    tries = 0;
                    // Claimed less than there was room for: nothing more can start until a
                    // result comes back, work is committed, or a retry falls due — unless
                    // results (or claims to give back) came in while the cycle ran: they are
                    // recorded at once.
                    let waiting = !(self.finished.is_empty() && self.released.is_empty());
                    if (started < room || room == 0) && !waiting {
                        self.idle(&shutdown).await;
                    }
                }
                Err(error) => {
                    tries += 1;
                    tracing::error!(error = format!("{error:#}"), tries, "recording or claiming failed");
                    if tries > RECORD_TRIES && !(self.finished.is_empty() && self.released.is_empty()) {
                        // Their leases lapse and the reaper closes them as interrupted.
                        tracing::error!(
                            count = self.finished.len() + self.released.len(),
                            "could not record attempts; giving them up"
                        );
                        self.finished.clear();
                        self.released.clear();
                    }
                    let backoff = self.poll_interval.min(Duration::from_millis(100 * u64::from(tries)));
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        self.handoff_open.store(false, Ordering::Release);
        self.store.watch_changes(false);
        let _ = listening.await;
        self.drain().await;
        metrics::gauge!(crate::metrics::DISPATCHER_UP).set(0.0);
    }

    /// One cycle: closes lapsed leases when due, records the attempts finished so far and claims
    /// what the free slots allow, in one transaction, then starts the claimed attempts. On an
    /// error the finished attempts are kept for the next cycle.
    pub async fn dispatch_once(&mut self) -> anyhow::Result<Dispatched> {
        self.reap_when_due().await;
        self.start_handed().await;
        self.collect_finished();
        self.gather().await;
        self.start_ahead().await;
        let free = self.slots.available_permits().min(CLAIM_BATCH);
        let slots = self.slots.clone().try_acquire_many_owned(free as u32).ok();
        self.cycle(slots).await
    }

    /// Starts the claims ingest handed over, without waiting for more.
    async fn start_handed(&mut self) {
        while let Ok(handed) = self.handed.try_recv() {
            self.start_handed_claims(handed).await;
        }
    }

    /// Starts claims ingest handed over: in flight now, no longer in transit.
    async fn start_handed_claims(&mut self, handed: Handed) {
        self.start_all(handed.claims, handed.slots).await;
        drop(handed.in_transit);
    }

    /// Waits for every attempt on the wire to finish and records them (claiming nothing).
    /// Returns how many were recorded.
    pub async fn finish_in_flight(&mut self) -> anyhow::Result<usize> {
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let ended = self.finished_task(joined);
            self.give_back_after(&ended);
        }
        Ok(self.cycle(None).await?.recorded)
    }

    /// One deterministic step, for tests and tools that drive the dispatcher themselves: a cycle,
    /// then waits for the attempts it started to finish and records them.
    pub async fn step(&mut self) -> anyhow::Result<Dispatched> {
        let mut done = self.dispatch_once().await?;
        done.recorded += self.finish_in_flight().await?;
        Ok(done)
    }

    /// Sleeps until the next pending delivery falls due, at most `max` (at once when one is due
    /// now): what a stepping caller does when a step found nothing to do.
    pub async fn until_due(&self, max: Duration) {
        let now = now_micros();
        let wait = match self.store.next_due_after(now).await {
            Ok(Some(due)) => Duration::from_micros((due - now).max(0) as u64).min(max),
            _ => max,
        };
        tokio::time::sleep(wait).await;
    }

    /// Records `self.finished` (up to one batch), gives back `self.released` and claims
    /// deliveries for up to as many requests as `slots` holds in one transaction, then starts
    /// them (the slots they do not use are freed) and queues the claims made ahead. While the
    /// transaction runs, requests that end are replaced by claims made ahead at once: a freed
    /// slot does not wait for the commit.
    async fn cycle(&mut self, slots: Option<OwnedSemaphorePermit>) -> anyhow::Result<Dispatched> {
        let free = slots.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if free == 0 && self.finished.is_empty() && self.released.is_empty() {
            return Ok(Dispatched::default());
        }
        let records = whole_requests(&self.finished, RECORD_BATCH);
        let batch: Vec<AttemptRecord> = self.finished.drain(..records).collect();
        let released = std::mem::take(&mut self.released);
        let started = Instant::now();
        let store = self.store.clone();
        // Endpoints whose requests ended in anything but a delivery while the transaction ran:
        // what it claims ahead for them goes back, as their queued claims did.
        let mut failed: Vec<String> = Vec::new();
        let done = {
            let cycle = Cycle {
                records: &batch,
                released: &released,
                limit: free as i64,
                lease: self.lease,
                ahead: self.claim_ahead,
            };
            let work = store.dispatch_cycle(&cycle);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    biased;
                    done = &mut work => break done,
                    Some(joined) = self.tasks.join_next_with_id() => {
                        let ended = self.finished_task(joined);
                        failed.extend(self.request_ended(ended).await);
                    }
                }
            }
        };
        let (stale, claimed) = match done {
            Ok(done) => done,
            Err(error) => {
                // Kept for the next cycle, first.
                self.finished.splice(0..0, batch);
                self.released.extend(released);
                return Err(error.into());
            }
        };
        if batch.iter().any(|record| matches!(record.outcome, Outcome::Retry { .. })) {
            self.stored_due = None;
        }
        tracing::trace!(
            recorded = records,
            released = released.len(),
            claimed = claimed.len(),
            took_us = started.elapsed().as_micros() as u64,
            "dispatch cycle"
        );
        if stale > 0 {
            metrics::counter!(crate::metrics::STALE_RESULTS).increment(stale);
            tracing::warn!(count = stale, "dropped results whose lease was taken over");
        }
        let (ahead, now): (Vec<Claimed>, Vec<Claimed>) = claimed.into_iter().partition(|c| c.ahead.is_some());
        let count = match slots {
            Some(slots) => self.start_all(now, slots).await,
            None => 0,
        };
        for claim in ahead {
            if failed.contains(&claim.endpoint_id) {
                self.released.push(claim);
            } else {
                // Waiting since the transaction began: its leases run from then.
                self.ahead.entry(claim.endpoint_id.clone()).or_default().push_back((started, claim));
            }
        }
        self.start_ahead().await;
        Ok(Dispatched { recorded: records, started: count, room: free })
    }

    /// Starts the claims made ahead that may start, every endpoint's ([`Dispatcher::start_ahead_of`]),
    /// after giving back every claim of an endpoint or tenant this process changed since
    /// (`Store::take_changed`). For what changes many endpoints at once: a cycle's new claims,
    /// slots freed by ingest, a deadline passing.
    async fn start_ahead(&mut self) {
        self.release_changed();
        let endpoints: Vec<String> = self.ahead.keys().cloned().collect();
        for endpoint in endpoints {
            self.start_ahead_of(&endpoint).await;
        }
    }

    /// A request to `endpoint` ended: gives back its claims made ahead if it ended in anything
    /// but a delivery (and returns the endpoint then), else refills its slot from them. Only
    /// this endpoint's queue is looked at (its window is what freed); a slot of the bound it
    /// leaves free goes to the others at the next cycle.
    async fn request_ended(&mut self, ended: Ended) -> Option<String> {
        if let Some(endpoint) = self.give_back_after(&ended) {
            return Some(endpoint);
        }
        if let Some(endpoint) = ended.endpoint
            && self.ahead.contains_key(&endpoint)
        {
            self.release_changed();
            self.start_ahead_of(&endpoint).await;
        }
        None
    }

    /// Gives back the endpoint's claims made ahead when its request ended in anything but a
    /// delivery: the endpoint's circuit, window, pause or state may change with this result,
    /// and the next claim decides again. Returns that endpoint.
    fn give_back_after(&mut self, ended: &Ended) -> Option<String> {
        let endpoint = ended.endpoint.as_ref().filter(|_| !ended.delivered)?;
        self.release_ahead(endpoint);
        Some(endpoint.clone())
    }

    /// Gives back the claims made ahead for endpoints and tenants this process changed since the
    /// last look (`Store::take_changed`).
    fn release_changed(&mut self) {
        let changed = self.store.take_changed();
        if changed.is_empty() || self.ahead.is_empty() {
            return;
        }
        let endpoints: Vec<String> = self
            .ahead
            .iter()
            .filter(|(endpoint, queue)| {
                changed.contains(*endpoint)
                    || queue.front().is_some_and(|(_, claim)| changed.contains(&claim.tenant_id))
            })
            .map(|(endpoint, _)| endpoint.clone())
            .collect();
        for endpoint in endpoints {
            self.release_ahead(&endpoint);
        }
    }

    /// Starts `endpoint`'s claims made ahead, oldest first, while its requests in flight and in
    /// transit from ingest are fewer than its window as claimed and a slot of the process's
    /// bound is free; gives them all back once the oldest can no longer start in time
    /// (`Ahead::may_start`).
    async fn start_ahead_of(&mut self, endpoint: &str) {
        let Some(rule) = self.claim_ahead else { return };
        loop {
            let busy = self.endpoint_in_flight.get(endpoint).copied().unwrap_or(0)
                + self.handoff.in_transit().to(endpoint);
            let Some(queue) = self.ahead.get_mut(endpoint) else { return };
            let Some((claimed_at, claim)) = queue.front() else {
                self.ahead.remove(endpoint);
                return;
            };
            if !rule.may_start(claim.policy.timeout, claimed_at.elapsed()) {
                self.release_ahead(endpoint);
                return;
            }
            if busy >= claim.ahead.map_or(0, |window| window.max(0) as usize) {
                return;
            }
            let Ok(slot) = self.slots.clone().try_acquire_owned() else { return };
            let Some((_, claim)) = queue.pop_front() else { return };
            self.start(vec![claim], slot).await;
        }
    }

    /// Gives back an endpoint's claims made ahead (in the next cycle).
    fn release_ahead(&mut self, endpoint: &str) {
        if let Some(queue) = self.ahead.remove(endpoint) {
            self.released.extend(queue.into_iter().map(|(_, claim)| claim));
        }
    }

    /// Starts the requests of `claimed`, each holding one of `slots`; returns how many.
    async fn start_all(&mut self, claimed: Vec<Claimed>, mut slots: OwnedSemaphorePermit) -> usize {
        let mut started = 0;
        for request in requests(claimed) {
            let Some(slot) = slots.split(1) else {
                // Never: a claim takes no more requests than it has slots for. Were it to, the
                // lease lapses and the reaper closes the attempt as interrupted.
                tracing::error!("a claimed request had no slot; it is left to its lease");
                continue;
            };
            self.start(request, slot).await;
            started += 1;
        }
        started
    }

    /// Starts one request (a claimed delivery, or a batch's members) in a task of its own, which
    /// holds its slot until it ends.
    async fn start(&mut self, claims: Vec<Claimed>, slot: OwnedSemaphorePermit) {
        let Some(first) = claims.first() else { return };
        let operations = self.operations.is(&self.store, &first.tenant_id).await;
        let attempts = self.attempts.clone();
        let task = claims.clone();
        *self.endpoint_in_flight.entry(first.endpoint_id.clone()).or_default() += 1;
        let handle = self.tasks.spawn(async move {
            let records = attempts.attempt(task, operations).await;
            drop(slot);
            records
        });
        self.in_flight.insert(handle.id(), (claims, Instant::now()));
    }

    /// Moves the results of finished tasks into `self.finished`, without waiting.
    fn collect_finished(&mut self) {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            let ended = self.finished_task(joined);
            self.give_back_after(&ended);
        }
    }

    /// Takes a finished task's records; says which endpoint's request ended and whether it was
    /// delivered (what [`Dispatcher::request_ended`] acts on).
    fn finished_task(&mut self, joined: Result<(Id, Vec<AttemptRecord>), tokio::task::JoinError>) -> Ended {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let endpoint = self
            .in_flight
            .remove(&id)
            .and_then(|(claims, _)| claims.into_iter().next())
            .map(|c| c.endpoint_id);
        if let Some(endpoint) = &endpoint
            && let Some(count) = self.endpoint_in_flight.get_mut(endpoint)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.endpoint_in_flight.remove(endpoint);
            }
        }
        let delivered = match joined {
            Ok((_, records)) => {
                let delivered = records.iter().all(|record| matches!(record.outcome, Outcome::Delivered));
                self.finished.extend(records);
                delivered
            }
            Err(error) => {
                // Its lease lapses and the reaper closes the attempt as interrupted.
                if error.is_panic() {
                    tracing::error!(%error, "an attempt task panicked");
                }
                false
            }
        };
        Ended { endpoint, delivered }
    }

    /// Attempts started together finish together: while attempts started in the last `RECENT`
    /// are still out, waits up to `GATHER` for them, so one cycle records (and refills) a whole
    /// burst instead of one cycle for the first result and another for the rest. Older attempts
    /// (a slow or hanging endpoint's) are not waited for.
    async fn gather(&mut self) {
        if self.finished.is_empty() {
            return;
        }
        let until = tokio::time::Instant::now() + GATHER;
        while self.finished.len() < RECORD_BATCH
            && self.in_flight.values().any(|(_, started)| started.elapsed() < RECENT)
        {
            match tokio::time::timeout_at(until, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    let ended = self.finished_task(joined);
                    self.request_ended(ended).await;
                }
                _ => break,
            }
        }
    }

    /// Closes attempts whose lease lapsed, every quarter of a lease.
    async fn reap_when_due(&mut self) {
        if self.last_reap.is_some_and(|at| at.elapsed() < self.lease / 4) {
            return;
        }
        self.last_reap = Some(Instant::now());
        match self.store.reap_expired_leases(self.retries()).await {
            Ok(0) => {}
            Ok(n) => {
                self.stored_due = None;
                tracing::warn!(count = n, "closed attempts whose lease lapsed as interrupted");
            }
            Err(error) => tracing::error!(%error, "could not reap expired leases"),
        }
    }

    /// Waits for a finished attempt, a wake-up, the next due delivery (at most the poll
    /// interval) or shutdown, starting the claims ingest hands over meanwhile.
    async fn idle(&mut self, shutdown: &CancellationToken) {
        let now = now_micros();
        // A claim made ahead that can no longer start in time goes back at its deadline.
        let ahead_deadline = self.claim_ahead.and_then(|rule| {
            self.ahead
                .values()
                .filter_map(|queue| queue.front())
                .filter_map(|(claimed_at, claim)| {
                    Some(*claimed_at + rule.start_within(claim.policy.timeout)?)
                })
                .min()
        });
        let sleep = if self.tasks.len() >= self.max_in_flight {
            // Every slot is busy: a finished attempt is what can change anything (slots an
            // ingest group holds come back with a hand-off or a wake-up).
            self.poll_interval
        } else {
            let batch = self.store.take_batch_deadline(now);
            match self.stored_due(now).await.into_iter().chain(batch).min() {
                Some(due) => Duration::from_micros((due - now).max(0) as u64).min(self.poll_interval),
                None => self.poll_interval,
            }
        };
        let sleep = match ahead_deadline {
            Some(deadline) => sleep.min(deadline.saturating_duration_since(Instant::now())),
            None => sleep,
        };
        let wakeup = self.wakeup.clone();
        let until = tokio::time::Instant::now() + sleep;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = wakeup.notified() => self.stored_due = None,
                Some(joined) = self.tasks.join_next_with_id() => {
                    let ended = self.finished_task(joined);
                    self.request_ended(ended).await;
                }
                // Claims handed over bring nothing to claim (a group that leaves deliveries
                // unclaimed wakes the dispatcher): they start, and the wait goes on. A cycle
                // here found nothing and cost a transaction per event at a light load.
                Some(handed) = self.handed.recv() => {
                    self.start_handed_claims(handed).await;
                    continue;
                }
                _ = tokio::time::sleep_until(until) => self.start_ahead().await,
            }
            return;
        }
    }

    /// The stored next due time after `now`: as last read while that is still known (younger
    /// than the poll interval, not passed, not forgotten since), else read again (one statement
    /// per idle was two of the sixteen an event cost at a steady, light load).
    async fn stored_due(&mut self, now: i64) -> Option<i64> {
        if let Some((due, at)) = self.stored_due
            && at.elapsed() < self.poll_interval
            && due.is_none_or(|due| due > now)
        {
            return due;
        }
        match self.store.next_stored_due_after(now).await {
            Ok(due) => {
                self.stored_due = Some((due, Instant::now()));
                due
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the next due time");
                self.stored_due = None;
                None
            }
        }
    }

    /// Stops: waits for attempts in flight up to the grace period, closes the rest as
    /// interrupted, and records everything.
    async fn drain(&mut self) {
        // Claims made ahead that never started go back.
        for (_, queue) in self.ahead.drain() {
            self.released.extend(queue.into_iter().map(|(_, claim)| claim));
        }
        // Claims ingest handed over are as good as started: they go out within the grace period.
        self.start_handed().await;
        let deadline = tokio::time::Instant::now() + self.grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    self.finished_task(joined);
                }
                Ok(None) => break,
                Err(_) => {
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let retries = self.retries();
        for (_, (claims, _)) in self.in_flight.drain() {
            self.finished.extend(claims.iter().map(|claim| interrupted(claim, retries)));
        }
        // Claims handed over after the grace period began, never started.
        while let Ok(handed) = self.handed.try_recv() {
            self.finished.extend(handed.claims.iter().map(|claim| interrupted(claim, retries)));
        }
        while !(self.finished.is_empty() && self.released.is_empty()) {
            let mut tries = 0;
            loop {
                match self.cycle(None).await {
                    Ok(_) => break,
                    Err(error) if tries < RECORD_TRIES => {
                        tries += 1;
                        tracing::warn!(
                            error = format!("{error:#}"),
                            tries,
                            "recording attempts failed; retrying"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            count = self.finished.len(),
                            "could not record attempts"
                        );
                        self.finished.clear();
                        self.released.clear();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Dispatcher {
    /// However the loop ends (a panic included), ingest stops handing claims to it.
    fn drop(&mut self) {
        self.handoff_open.store(false, Ordering::Release);
    }
}

impl Attempts {
    /// Sends one request — one claimed delivery, or the members of a batch in one array body
    /// (DESIGN §14) — and decides each delivery's next state: the members of a batch share its
    /// outcome and, when they retry, one next due time.
    async fn attempt(&self, claims: Vec<Claimed>, operations: bool) -> Vec<AttemptRecord> {
        let (sendable, removed): (Vec<Claimed>, Vec<Claimed>) =
            claims.into_iter().partition(|claim| claim.payload.is_some());
        // A member whose payload retention removed was never sent: it is not part of the
        // request's outcome.
        let mut records: Vec<AttemptRecord> = removed
            .iter()
            .map(|claim| AttemptRecord {
                batch_id: None,
                ..record(claim, gone(), Outcome::GiveUp { disable_endpoint: false })
            })
            .collect();
        let Some(first) = sendable.first() else { return records };
        let sender = if operations { &self.operations_sender } else { &self.sender };
        // The endpoint's policy as claimed decides this attempt's timeout and what follows it.
        let policy = first.policy.effective(&self.server);
        let (webhook_id, body) = match &first.batch_id {
            Some(batch_id) => {
                (batch_id.as_str(), batch::body(sendable.iter().filter_map(|c| c.payload.as_deref())))
            }
            None => (first.event_id.as_str(), first.payload.clone().unwrap_or_default()),
        };
        // A batch goes in its first member's trace (DESIGN §16).
        let others: Vec<&TraceContext> = sendable.iter().skip(1).filter_map(|c| c.trace.as_ref()).collect();
        let span = first.trace.as_ref().and_then(|trace| {
            self.traces.attempt(trace, &others, &first.event_id, &first.endpoint_id, first.attempt_number)
        });
        let traceparent = first.trace.as_ref().map(|trace| attempt_traceparent(trace, span.as_ref()));
        let started_at = now_micros();
        let sent = sender.send(first, webhook_id, traceparent.as_deref(), body, policy.timeout).await;
        let label = match sent.result.error {
            None => "success",
            Some(kind) => kind.outcome_label(),
        };
        metrics::counter!(crate::metrics::ATTEMPTS, "outcome" => label).increment(sendable.len() as u64);
        metrics::histogram!(crate::metrics::ATTEMPT_DURATION).record(sent.duration.as_secs_f64());
        if let Some(span) = span {
            span.end_attempt(sent.result.status, label, sent.error.as_deref());
        }
        let said = signal(sent.result.status.map(i32::from), sent.result.error);
        let jitter = jitter();
        let mut outcomes: Vec<Outcome> = sendable
            .iter()
            .map(|claim| {
                let budget = run_budget(claim.max_attempts, policy.retry.schedule.len());
                let decided = policy.retry.decide(&sent.result, claim.run_attempt as u32, budget, jitter);
                after_probe(claim.probe, said, decided)
            })
            .collect();
        batch::retry_together(&mut outcomes);
        if outcomes.iter().any(|outcome| outcome.disables_endpoint().is_some()) {
            metrics::counter!(crate::metrics::ENDPOINTS_DISABLED_TOTAL).increment(1);
        }
        tracing::debug!(
            webhook.id = webhook_id,
            endpoint.id = %first.endpoint_id,
            deliveries = sendable.len(),
            attempt.number = first.attempt_number,
            status = sent.result.status,
            duration_ms = sent.duration.as_millis() as u64,
            "attempt finished"
        );
        for (claim, outcome) in sendable.iter().zip(outcomes) {
            match &outcome {
                Outcome::Delivered => {
                    metrics::counter!(crate::metrics::DELIVERIES_COMPLETED, "result" => "delivered")
                        .increment(1)
                }
                Outcome::GiveUp { .. } => {
                    metrics::counter!(crate::metrics::DELIVERIES_COMPLETED, "result" => "failed").increment(1)
                }
                Outcome::Retry { .. } => {}
            }
            let timeout_ms = Some(policy.timeout.as_millis() as i64);
            records.push(AttemptRecord {
                timeout_ms,
                started_at: Some(started_at),
                ..record(claim, sent.clone(), outcome)
            });
        }
        records
    }
}

/// How many of `finished` one cycle records: up to `most`, never splitting a batch request's
/// members between two cycles (a batch is one outcome for its endpoint's circuit and window).
fn whole_requests(finished: &[AttemptRecord], most: usize) -> usize {
    let mut end = finished.len().min(most);
    while let (Some(last), Some(next)) = (end.checked_sub(1).map(|i| &finished[i]), finished.get(end))
        && last.batch_id.is_some()
        && last.batch_id == next.batch_id
    {
        end += 1;
    }
    end
}

/// Whether `next` goes in the same request as `previous`, claimed just before it: both are
/// members of one batch.
fn same_request(previous: &Claimed, next: &Claimed) -> bool {
    next.batch_id.is_some() && previous.batch_id == next.batch_id
}

/// The first claim of each request `claimed` makes (see [`requests`]).
fn requests_of(claimed: &[Claimed]) -> impl Iterator<Item = &Claimed> {
    claimed
        .iter()
        .enumerate()
        .filter(|(i, claim)| *i == 0 || !same_request(&claimed[i - 1], claim))
        .map(|(_, claim)| claim)
}

/// How many requests `claimed` makes (see [`requests`]).
fn requests_in(claimed: &[Claimed]) -> usize {
    requests_of(claimed).count()
}

/// Groups claimed deliveries into requests: a batch's members together (they were claimed
/// one after another), every other delivery alone.
fn requests(claimed: Vec<Claimed>) -> Vec<Vec<Claimed>> {
    let mut requests: Vec<Vec<Claimed>> = Vec::new();
    for claim in claimed {
        match requests.last_mut() {
            Some(last) if last.last().is_some_and(|previous| same_request(previous, &claim)) => {
                last.push(claim)
            }
            _ => requests.push(vec![claim]),
        }
    }
    requests
}

/// The record of a finished attempt.
fn record(claim: &Claimed, sent: Sent, outcome: Outcome) -> AttemptRecord {
    AttemptRecord {
        delivery_id: claim.delivery_id.clone(),
        attempt_id: claim.attempt_id.clone(),
        endpoint_id: claim.endpoint_id.clone(),
        tenant_id: claim.tenant_id.clone(),
        lease_token: claim.lease_token.clone(),
        started_at: None,
        finished_at: now_micros(),
        duration_ms: sent.duration.as_millis() as i64,
        status_code: sent.result.status.map(i32::from),
        error_kind: sent.result.error,
        last_error: sent.error.clone(),
        error: sent.error,
        response_body: sent.response_body,
        outcome,
        timeout_ms: None,
        probe: claim.probe,
        batch_id: claim.batch_id.clone(),
    }
}

/// The record of an attempt still running when the grace period ended.
fn interrupted(claim: &Claimed, retries: usize) -> AttemptRecord {
    let sent = Sent {
        result: crate::domain::retry::AttemptResult {
            status: None,
            error: Some(ErrorKind::Interrupted),
            retry_after: None,
        },
        duration: Duration::ZERO,
        response_body: None,
        error: Some("interrupted: the process stopped before the attempt finished".into()),
    };
    let budget = run_budget(claim.max_attempts, claim.policy.retries(retries));
    let outcome = after_interruption(claim.run_attempt, budget);
    AttemptRecord { last_error: Some("interrupted".into()), ..record(claim, sent, outcome) }
}

/// An attempt whose payload retention removed.
fn gone() -> Sent {
    Sent {
        result: crate::domain::retry::AttemptResult {
            status: None,
            error: Some(ErrorKind::Other),
            retry_after: None,
        },
        duration: Duration::ZERO,
        response_body: None,
        error: Some("the event payload is no longer stored".into()),
    }
}
