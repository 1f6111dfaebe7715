//! The dispatcher: one loop whose every cycle is one transaction that records the attempts
//! finished since the last cycle and claims due deliveries for the slots they freed (each claim
//! opens the attempt row and takes a lease); the claims are sent concurrently under a global
//! bound and their results come back to the loop. No transaction is open while a request is on
//! the wire, and a freed slot is refilled in the very transaction that frees it.

pub mod net_guard;
pub mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::delivery::{after_interruption, run_budget};
use crate::domain::retry::{Outcome, RetryPolicy, jitter};
use crate::domain::time::now_micros;
use crate::storage::{AttemptRecord, Claimed, Store};
use send::{Sender, Sent};

/// Most deliveries claimed in one round trip.
const CLAIM_BATCH: usize = 256;
/// Most results written in one transaction.
const RECORD_BATCH: usize = 512;
/// What one dispatch cycle did.
struct Cycle {
    /// Attempts started.
    started: usize,
    /// Attempts it could have started (free slots, at most one claim batch).
    room: usize,
}

/// Longest a cycle waits for the rest of a burst of results.
const GATHER: Duration = Duration::from_millis(1);
/// Attempts younger than this are expected back within `GATHER`.
const RECENT: Duration = Duration::from_millis(20);
/// Times one batch of results is written again after a store error before it is given up (the
/// leases then lapse and the reaper closes the attempts as interrupted).
const RECORD_TRIES: u32 = 5;

/// Everything the dispatcher needs, bundled.
#[derive(Clone)]
pub struct Dispatcher {
    store: Arc<Store>,
    sender: Sender,
    /// For the operations tenant's endpoints: `[security] operations_allow_cidrs` opened too.
    operations_sender: Sender,
    operations: Option<String>,
    operations_id: Arc<Mutex<(Option<String>, Option<std::time::Instant>)>>,
    policy: RetryPolicy,
    lease: Duration,
    grace: Duration,
    poll_interval: Duration,
    permits: Arc<Semaphore>,
    wakeup: Arc<Notify>,
    results: mpsc::UnboundedSender<AttemptRecord>,
    recorder: Arc<Mutex<Option<mpsc::UnboundedReceiver<AttemptRecord>>>>,
    /// Attempts on the wire: attempt id → (claim, when it started).
    in_flight: Arc<Mutex<HashMap<String, (Claimed, std::time::Instant)>>>,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl Dispatcher {
    /// Builds a dispatcher over `store`; `wakeup` is notified when new work is committed.
    pub fn new(config: &Config, store: Arc<Store>, wakeup: Arc<Notify>) -> anyhow::Result<Dispatcher> {
        let (results, receiver) = mpsc::unbounded_channel();
        Ok(Dispatcher {
            store,
            sender: Sender::new(config, config.security.allow_cidrs.clone())?,
            operations_sender: Sender::new(
                config,
                config
                    .security
                    .allow_cidrs
                    .iter()
                    .chain(&config.security.operations_allow_cidrs)
                    .copied()
                    .collect(),
            )?,
            operations: config.operations.tenant.clone(),
            operations_id: Arc::new(Mutex::new((None, None))),
            policy: RetryPolicy {
                schedule: config.delivery.retry_schedule.clone(),
                retry_after_max: config.delivery.retry_after_max,
                retry_client_errors: config.delivery.retry_client_errors,
            },
            lease: config.delivery.lease,
            grace: config.delivery.grace(),
            poll_interval: config.delivery.poll_interval,
            permits: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            wakeup,
            results,
            recorder: Arc::new(Mutex::new(Some(receiver))),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            tasks: Arc::new(tokio::sync::Mutex::new(JoinSet::new())),
        })
    }

    /// Retries a run allows after its first attempt (unless a delivery sets its own budget).
    pub fn retries(&self) -> usize {
        self.policy.schedule.len()
    }

    /// Runs until `shutdown`: record and claim, send; then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut results) = self.recorder.lock().ok().and_then(|mut r| r.take()) else {
            tracing::error!("the dispatcher can run only once");
            return;
        };
        let listening = {
            let store = self.store.clone();
            let (wakeup, shutdown) = (self.wakeup.clone(), shutdown.clone());
            tokio::spawn(async move { store.listen_for_work(wakeup, shutdown).await })
        };
        let mut last_reap = tokio::time::Instant::now() - self.lease;
        let mut batch: Vec<AttemptRecord> = Vec::with_capacity(RECORD_BATCH);
        let mut tries = 0;
        metrics::gauge!(crate::metrics::DISPATCHER_UP).set(1.0);
        while !shutdown.is_cancelled() {
            metrics::gauge!(crate::metrics::DISPATCHER_LAST_CLAIM).set(chrono::Utc::now().timestamp() as f64);
            if last_reap.elapsed() >= self.lease / 4 {
                last_reap = tokio::time::Instant::now();
                match self.store.reap_expired_leases(self.retries()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(count = n, "closed attempts whose lease lapsed as interrupted"),
                    Err(error) => tracing::error!(%error, "could not reap expired leases"),
                }
            }
            while batch.len() < RECORD_BATCH
                && let Ok(record) = results.try_recv()
            {
                batch.push(record);
            }
            self.gather(&mut results, &mut batch).await;
            match self.cycle(&batch, true).await {
                Ok(Cycle { started, room }) => {
                    tries = 0;
                    batch.clear();
                    // Claimed less than there was room for: nothing more can start until a result
                    // comes back, work is committed, or a retry falls due.
                    if started < room || room == 0 {
                        self.idle(&shutdown, &mut results, &mut batch).await;
                    }
                }
                Err(error) => {
                    tries += 1;
                    tracing::error!(error = format!("{error:#}"), tries, "recording or claiming failed");
                    if tries > RECORD_TRIES && !batch.is_empty() {
                        // Their leases lapse and the reaper closes them as interrupted.
                        tracing::error!(count = batch.len(), "could not record attempts; giving them up");
                        batch.clear();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.poll_interval.min(Duration::from_millis(100 * u64::from(tries)))) => {}
                    }
                }
            }
        }
        let _ = listening.await;
        self.drain().await;
        // Record everything that finished, and what the drain closed as interrupted.
        batch.extend(std::iter::from_fn(|| results.try_recv().ok()));
        for chunk in batch.chunks(RECORD_BATCH) {
            for tries in 0..=RECORD_TRIES {
                match self.cycle(chunk, false).await {
                    Ok(_) => break,
                    Err(error) if tries < RECORD_TRIES => {
                        tracing::warn!(%error, tries, "recording attempts failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => tracing::error!(%error, count = chunk.len(), "could not record attempts"),
                }
            }
        }
        metrics::gauge!(crate::metrics::DISPATCHER_UP).set(0.0);
    }

    /// Attempts started together finish together: while attempts started in the last `RECENT`
    /// are still out, waits up to `GATHER` for them, so one cycle records (and refills) a whole
    /// burst instead of one cycle for the first result and another for the rest. Older attempts
    /// (a slow or hanging endpoint's) are not waited for.
    async fn gather(
        &self,
        results: &mut mpsc::UnboundedReceiver<AttemptRecord>,
        batch: &mut Vec<AttemptRecord>,
    ) {
        if batch.is_empty() {
            return;
        }
        let until = tokio::time::Instant::now() + GATHER;
        while batch.len() < RECORD_BATCH {
            let young = self
                .in_flight
                .lock()
                .map(|map| map.values().filter(|(_, started)| started.elapsed() < RECENT).count())
                .unwrap_or(0);
            if young == 0 {
                break;
            }
            match tokio::time::timeout_at(until, results.recv()).await {
                Ok(Some(record)) => batch.push(record),
                _ => break,
            }
        }
    }

    /// Waits for a finished attempt (kept in `batch`), a wake-up, the next due delivery (at most
    /// the poll interval) or shutdown.
    async fn idle(
        &self,
        shutdown: &CancellationToken,
        results: &mut mpsc::UnboundedReceiver<AttemptRecord>,
        batch: &mut Vec<AttemptRecord>,
    ) {
        let now = now_micros();
        let sleep = if self.permits.available_permits() == 0 {
            // Every slot is busy: a finished attempt is what can change anything.
            self.poll_interval
        } else {
            match self.store.next_due_after(now).await {
                Ok(Some(due)) => Duration::from_micros((due - now).max(0) as u64).min(self.poll_interval),
                _ => self.poll_interval,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.wakeup.notified() => {}
            Some(record) = results.recv() => batch.push(record),
            _ = tokio::time::sleep(sleep) => {}
        }
    }

    /// One cycle: records `records` and, when `claim`, claims what the free slots allow, in one
    /// transaction, then starts the claimed attempts.
    async fn cycle(&self, records: &[AttemptRecord], claim: bool) -> anyhow::Result<Cycle> {
        let mut tasks = self.tasks.lock().await;
        while tasks.try_join_next().is_some() {}
        let free = if claim { self.permits.available_permits().min(CLAIM_BATCH) } else { 0 };
        if free == 0 && records.is_empty() {
            return Ok(Cycle { started: 0, room: 0 });
        }
        let started = std::time::Instant::now();
        let (stale, claimed) = self.store.record_and_claim(records, free as i64, self.lease).await?;
        tracing::trace!(
            recorded = records.len(),
            claimed = claimed.len(),
            took_us = started.elapsed().as_micros() as u64,
            "dispatch cycle"
        );
        if stale > 0 {
            metrics::counter!(crate::metrics::STALE_RESULTS).increment(stale);
            tracing::warn!(count = stale, "dropped results whose lease was taken over");
        }
        let count = claimed.len();
        for claim in claimed {
            let permit = self.permits.clone().acquire_owned().await?;
            if let Ok(mut map) = self.in_flight.lock() {
                map.insert(claim.attempt_id.clone(), (claim.clone(), std::time::Instant::now()));
            }
            let this = self.clone();
            tasks.spawn(async move {
                let record = this.attempt(claim).await;
                if let Ok(mut map) = this.in_flight.lock() {
                    map.remove(&record.attempt_id);
                }
                drop(permit);
                let _ = this.results.send(record);
            });
        }
        Ok(Cycle { started: count, room: free })
    }

    /// Sends one claimed delivery and decides its next state.
    async fn attempt(&self, claim: Claimed) -> AttemptRecord {
        let Some(payload) = claim.payload.clone() else {
            return self.record(&claim, gone(), Outcome::GiveUp { disable_endpoint: false });
        };
        let sender = if self.is_operations_tenant(&claim.tenant_id).await {
            &self.operations_sender
        } else {
            &self.sender
        };
        let sent = sender.send(&claim, payload).await;
        let budget = run_budget(claim.max_attempts, self.retries());
        let outcome = self.policy.decide(&sent.result, claim.run_attempt as u32, budget, jitter());
        let label = match sent.result.error {
            None => "success",
            Some(kind) => kind.outcome_label(),
        };
        metrics::counter!(crate::metrics::ATTEMPTS, "outcome" => label).increment(1);
        metrics::histogram!(crate::metrics::ATTEMPT_DURATION).record(sent.duration.as_secs_f64());
        match &outcome {
            Outcome::Delivered => {
                metrics::counter!(crate::metrics::DELIVERIES_COMPLETED, "result" => "delivered").increment(1)
            }
            Outcome::GiveUp { disable_endpoint } => {
                metrics::counter!(crate::metrics::DELIVERIES_COMPLETED, "result" => "failed").increment(1);
                if *disable_endpoint {
                    metrics::counter!(crate::metrics::ENDPOINTS_DISABLED_TOTAL).increment(1);
                }
            }
            Outcome::Retry { .. } => {}
        }
        tracing::debug!(
            delivery.id = %claim.delivery_id,
            endpoint.id = %claim.endpoint_id,
            attempt.number = claim.attempt_number,
            status = sent.result.status,
            duration_ms = sent.duration.as_millis() as u64,
            "attempt finished"
        );
        self.record(&claim, sent, outcome)
    }

    /// Whether `tenant_id` is the operations tenant (its id is looked up at most once a minute).
    async fn is_operations_tenant(&self, tenant_id: &str) -> bool {
        let Some(key) = &self.operations else { return false };
        let cached = self.operations_id.lock().ok().and_then(|slot| match &*slot {
            (id, Some(at)) if at.elapsed() < Duration::from_secs(60) => Some(id.clone()),
            _ => None,
        });
        let id = match cached {
            Some(id) => id,
            None => {
                let id = self.store.get_tenant(key).await.ok().map(|t| t.id);
                if let Ok(mut slot) = self.operations_id.lock() {
                    *slot = (id.clone(), Some(std::time::Instant::now()));
                }
                id
            }
        };
        id.as_deref() == Some(tenant_id)
    }

    fn record(&self, claim: &Claimed, sent: Sent, outcome: Outcome) -> AttemptRecord {
        AttemptRecord {
            delivery_id: claim.delivery_id.clone(),
            attempt_id: claim.attempt_id.clone(),
            endpoint_id: claim.endpoint_id.clone(),
            tenant_id: claim.tenant_id.clone(),
            lease_token: claim.lease_token.clone(),
            finished_at: now_micros(),
            duration_ms: sent.duration.as_millis() as i64,
            status_code: sent.result.status.map(i32::from),
            error_kind: sent.result.error.map(|k| k.as_str()),
            last_error: sent.error.clone(),
            error: sent.error,
            response_body: sent.response_body,
            outcome,
        }
    }

    /// Stops: waits for attempts in flight up to the grace period, then records the rest as
    /// interrupted and releases their leases.
    async fn drain(&self) {
        let mut tasks = self.tasks.lock().await;
        let deadline = tokio::time::Instant::now() + self.grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let left: Vec<Claimed> =
            self.in_flight.lock().map(|mut m| m.drain().map(|(_, (c, _))| c).collect()).unwrap_or_default();
        for claim in left {
            let outcome =
                after_interruption(claim.run_attempt, run_budget(claim.max_attempts, self.retries()));
            let record = AttemptRecord {
                delivery_id: claim.delivery_id.clone(),
                attempt_id: claim.attempt_id.clone(),
                endpoint_id: claim.endpoint_id.clone(),
                tenant_id: claim.tenant_id.clone(),
                lease_token: claim.lease_token.clone(),
                finished_at: now_micros(),
                duration_ms: 0,
                status_code: None,
                error_kind: Some("interrupted"),
                error: Some("interrupted: the process stopped before the attempt finished".into()),
                last_error: Some("interrupted".into()),
                response_body: None,
                outcome,
            };
            let _ = self.results.send(record);
        }
    }
}

fn gone() -> Sent {
    Sent {
        result: crate::domain::retry::AttemptResult {
            status: None,
            error: Some(crate::domain::retry::ErrorKind::Other),
            retry_after: None,
        },
        duration: Duration::ZERO,
        response_body: None,
        error: Some("the event payload is no longer stored".into()),
    }
}
