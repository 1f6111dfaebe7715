//! Scheduled jobs. Each job is a plain async function over the store, given the clock, so tests
//! call it directly; `start` maps the configured cron expressions (tokio-cron-scheduler, UTC) to
//! them. Every run takes a lock row first, so replicas running the same schedule do not act twice,
//! and a failure is logged and counted, never fatal: the next run tries again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::{Config, MaintenanceConfig};
use crate::domain::stats::{HOUR, MINUTE};
use crate::domain::time::now_micros;
use crate::storage::{Store, StoreError};

/// Job runs, by `job` and `result` (`ok`, `skipped`, `error`).
pub const JOB_RUNS: &str = "herald_job_runs_total";

/// A job's name and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Delete old events, deliveries and attempts.
    Retention,
    /// Forget idempotency keys past their window.
    Idempotency,
    /// Forget rotated secrets past their grace period.
    Secrets,
    /// Disable endpoints that keep failing.
    Health,
    /// Close lapsed leases.
    Leases,
    /// Delete old stats buckets.
    Stats,
}

impl JobKind {
    /// Every job.
    pub const ALL: [JobKind; 6] = [
        JobKind::Retention,
        JobKind::Idempotency,
        JobKind::Secrets,
        JobKind::Health,
        JobKind::Leases,
        JobKind::Stats,
    ];

    /// The lock and metrics name.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Retention => "retention",
            JobKind::Idempotency => "idempotency",
            JobKind::Secrets => "secrets",
            JobKind::Health => "health",
            JobKind::Leases => "leases",
            JobKind::Stats => "stats",
        }
    }

    fn cron(self, config: &MaintenanceConfig) -> &str {
        match self {
            JobKind::Retention => &config.retention_cron,
            JobKind::Idempotency => &config.idempotency_cron,
            JobKind::Secrets => &config.secrets_cron,
            JobKind::Health => &config.health_cron,
            JobKind::Leases => &config.leases_cron,
            JobKind::Stats => &config.stats_cron,
        }
    }
}

/// What the jobs need, bundled.
#[derive(Clone)]
pub struct Jobs {
    store: Arc<Store>,
    config: MaintenanceConfig,
    idempotency_window: Duration,
    /// Retries a run allows (the lease job closes interrupted attempts within that budget).
    retries: usize,
    holder: String,
}

impl Jobs {
    /// Jobs over `store` with the given configuration.
    pub fn new(config: &Config, store: Arc<Store>) -> Jobs {
        Jobs {
            store,
            config: config.maintenance.clone(),
            idempotency_window: config.ingest.idempotency_window,
            retries: config.delivery.retry_schedule.len(),
            holder: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Runs one job at `now` under its lock. Returns `None` when another holder runs it now,
    /// else how many rows it changed.
    pub async fn run_guarded(&self, job: JobKind, now: i64) -> Result<Option<u64>, StoreError> {
        let until = now + 10 * MINUTE;
        if !self.store.try_lock_job(job.name(), &self.holder, now, until).await? {
            return Ok(None);
        }
        let result = self.run(job, now).await;
        if let Err(error) = self.store.unlock_job(job.name(), &self.holder).await {
            tracing::warn!(job = job.name(), %error, "could not release a job lock; it lapses by itself");
        }
        result.map(Some)
    }

    /// Runs one job at `now`, without the lock.
    pub async fn run(&self, job: JobKind, now: i64) -> Result<u64, StoreError> {
        match job {
            JobKind::Retention => {
                retention(self.store.as_ref(), now, self.config.retention, self.config.batch_size).await
            }
            JobKind::Idempotency => {
                expire_idempotency_keys(
                    self.store.as_ref(),
                    now,
                    self.idempotency_window,
                    self.config.batch_size,
                )
                .await
            }
            JobKind::Secrets => self.store.expire_previous_secrets(now).await,
            JobKind::Health => {
                Ok(endpoint_health(self.store.as_ref(), now, self.config.disable_after).await?.len() as u64)
            }
            JobKind::Leases => self.store.reap_expired_leases(self.retries).await,
            JobKind::Stats => self.store.purge_stats(now - 2 * HOUR, now - 8 * 24 * HOUR).await,
        }
    }

    /// Starts the scheduler with every job on its cron expression.
    pub async fn start(self) -> anyhow::Result<JobScheduler> {
        let scheduler = JobScheduler::new().await.context("could not create the job scheduler")?;
        for job in JobKind::ALL {
            let jobs = self.clone();
            let cron = job.cron(&self.config).to_owned();
            let scheduled = Job::new_async(cron.as_str(), move |_, _| {
                let jobs = jobs.clone();
                Box::pin(async move {
                    match jobs.run_guarded(job, now_micros()).await {
                        Ok(Some(changed)) => {
                            metrics::counter!(JOB_RUNS, "job" => job.name(), "result" => "ok").increment(1);
                            tracing::debug!(job = job.name(), changed, "maintenance job ran");
                        }
                        Ok(None) => {
                            metrics::counter!(JOB_RUNS, "job" => job.name(), "result" => "skipped").increment(1);
                            tracing::debug!(job = job.name(), "maintenance job skipped: another replica runs it");
                        }
                        Err(error) => {
                            metrics::counter!(JOB_RUNS, "job" => job.name(), "result" => "error").increment(1);
                            tracing::error!(job = job.name(), %error, "maintenance job failed; the next run tries again");
                        }
                    }
                })
            })
            .with_context(|| format!("invalid cron expression `{cron}` for the {} job", job.name()))?;
            scheduler.add(scheduled).await.context("could not schedule a job")?;
        }
        scheduler.start().await.context("could not start the job scheduler")?;
        Ok(scheduler)
    }
}

/// Deletes events older than `retention` with their deliveries and attempts, in batches of
/// `batch`; events with pending deliveries stay. Returns the events deleted.
pub async fn retention(store: &Store, now: i64, retention: Duration, batch: i64) -> Result<u64, StoreError> {
    let cutoff = now - retention.as_micros() as i64;
    in_batches(batch, || store.purge_old_events(cutoff, batch)).await
}

/// Deletes idempotency keys older than `window`, in batches.
pub async fn expire_idempotency_keys(
    store: &Store,
    now: i64,
    window: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let cutoff = now - window.as_micros() as i64;
    in_batches(batch, || store.expire_idempotency_keys(cutoff, batch)).await
}

/// Runs `step` (which changes at most `batch` rows) until a step changes fewer, yielding between
/// steps so no transaction holds the database for long. Returns the rows changed in all.
async fn in_batches<F, Fut>(batch: i64, mut step: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let done = step().await?;
        total += done;
        if done < batch as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Disables endpoints failing since at least `disable_after` that failed within the last day;
/// each is reported as `endpoint.disabled`. Returns their ids.
pub async fn endpoint_health(
    store: &Store,
    now: i64,
    disable_after: Duration,
) -> Result<Vec<String>, StoreError> {
    let failing_before = now - disable_after.as_micros() as i64;
    let days = disable_after.as_secs_f64() / 86_400.0;
    let reason = format!("no successful delivery for {days:.1} days while deliveries kept failing");
    let disabled = store.disable_unhealthy_endpoints(now, failing_before, now - 24 * HOUR, &reason).await?;
    if !disabled.is_empty() {
        metrics::counter!(crate::metrics::ENDPOINTS_DISABLED_TOTAL).increment(disabled.len() as u64);
        tracing::warn!(count = disabled.len(), "disabled endpoints that kept failing");
    }
    Ok(disabled)
}
