//! Prometheus metrics: the recorder (installed once per process), metric names as constants,
//! and the store-derived gauges, recomputed at most every few seconds so every replica reports
//! the same backlog.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::storage::Store;

/// Events accepted, by `event_type`.
pub const EVENTS_INGESTED: &str = "herald_events_ingested_total";
/// Delivery rows created at ingest.
pub const DELIVERIES_CREATED: &str = "herald_deliveries_created_total";
/// Deliveries not made because the endpoint's payload filter did not match the event.
pub const DELIVERIES_FILTERED: &str = "herald_deliveries_filtered_total";
/// Attempts, by `outcome` (`success`, `http_error`, `timeout`, `connect_error`, `other`).
pub const ATTEMPTS: &str = "herald_delivery_attempts_total";
/// Attempt duration histogram, seconds.
pub const ATTEMPT_DURATION: &str = "herald_delivery_attempt_duration_seconds";
/// Deliveries that reached a final state, by `result` (`delivered`, `failed`).
pub const DELIVERIES_COMPLETED: &str = "herald_deliveries_completed_total";
/// Pending deliveries in the store (in flight included).
pub const DELIVERIES_PENDING: &str = "herald_deliveries_pending";
/// Age of the oldest due, unclaimed delivery, seconds.
pub const DELIVERY_LAG: &str = "herald_delivery_lag_seconds";
/// Endpoints disabled (410, health, by request).
pub const ENDPOINTS_DISABLED_TOTAL: &str = "herald_endpoints_disabled_total";
/// Endpoints disabled now, from the store.
pub const ENDPOINTS_DISABLED: &str = "herald_endpoints_disabled";
/// Endpoints whose circuit is open or half-open now, from the store.
pub const ENDPOINTS_CIRCUIT_OPEN: &str = "herald_endpoints_circuit_open";
/// Circuit state changes, by `to` (`open`, `half_open`, `closed`).
pub const CIRCUIT_TRANSITIONS: &str = "herald_circuit_transitions_total";
/// 1 while this process's dispatcher runs.
pub const DISPATCHER_UP: &str = "herald_dispatcher_up";
/// Unix time of the dispatcher's last loop iteration.
pub const DISPATCHER_LAST_CLAIM: &str = "herald_dispatcher_last_claim_timestamp_seconds";
/// Results dropped because their lease had been taken over.
pub const STALE_RESULTS: &str = "herald_stale_results_total";
/// Requests claimed by ingest's group commit and handed to the dispatcher.
pub const HANDED_OFF: &str = "herald_handoff_requests_total";
/// HTTP requests, by `route`, `method`, `status_class`.
pub const HTTP_REQUESTS: &str = "herald_http_requests_total";
/// HTTP request duration histogram, seconds, by `route`, `method`.
pub const HTTP_DURATION: &str = "herald_http_request_duration_seconds";
/// Failed authentications.
pub const AUTH_FAILURES: &str = "herald_auth_failures_total";

/// Histogram buckets from 5 ms to 10 s.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// How long store-derived gauges are reused.
const GAUGE_TTL: Duration = Duration::from_secs(2);

static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
static GAUGES_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// Installs the process-wide recorder (once; later calls reuse it) and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Installing and publishing the handle happen under one lock, so concurrent callers (tests
    // start many apps in one process) all get the same handle.
    let mut slot = HANDLE.lock().map_err(|_| anyhow::anyhow!("the metrics lock is poisoned"))?;
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ATTEMPT_DURATION.to_owned()), BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("another metrics recorder is already installed in this process"))?;
    describe();
    *slot = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(EVENTS_INGESTED, "Events accepted, by event type.");
    metrics::describe_counter!(DELIVERIES_CREATED, "Delivery rows created at ingest.");
    metrics::describe_counter!(
        DELIVERIES_FILTERED,
        "Deliveries not made at ingest because the endpoint's payload filter did not match."
    );
    metrics::describe_counter!(ATTEMPTS, "Delivery attempts, by outcome.");
    metrics::describe_histogram!(ATTEMPT_DURATION, metrics::Unit::Seconds, "Delivery attempt duration.");
    metrics::describe_counter!(DELIVERIES_COMPLETED, "Deliveries that reached a final state, by result.");
    metrics::describe_gauge!(DELIVERIES_PENDING, "Pending deliveries in the store, in flight included.");
    metrics::describe_gauge!(
        DELIVERY_LAG,
        metrics::Unit::Seconds,
        "Age of the oldest due, unclaimed delivery."
    );
    metrics::describe_counter!(
        ENDPOINTS_DISABLED_TOTAL,
        "Endpoints disabled (410 Gone, the health job, or by request)."
    );
    metrics::describe_counter!(
        crate::maintenance::JOB_RUNS,
        "Scheduled job runs, by job and result (ok, skipped, error)."
    );
    for job in crate::maintenance::JobKind::ALL {
        for result in ["ok", "skipped", "error"] {
            metrics::counter!(crate::maintenance::JOB_RUNS, "job" => job.name(), "result" => result)
                .absolute(0);
        }
    }
    metrics::describe_gauge!(ENDPOINTS_DISABLED, "Endpoints disabled now.");
    metrics::describe_gauge!(ENDPOINTS_CIRCUIT_OPEN, "Endpoints whose circuit is open or half-open now.");
    metrics::describe_counter!(CIRCUIT_TRANSITIONS, "Circuit state changes, by the state entered.");
    for to in ["open", "half_open", "closed"] {
        metrics::counter!(CIRCUIT_TRANSITIONS, "to" => to).absolute(0);
    }
    metrics::describe_gauge!(DISPATCHER_UP, "1 while this process's dispatcher runs.");
    metrics::describe_gauge!(
        DISPATCHER_LAST_CLAIM,
        metrics::Unit::Seconds,
        "Unix time of the last dispatcher loop."
    );
    metrics::describe_counter!(STALE_RESULTS, "Attempt results dropped because their lease was taken over.");
    metrics::describe_counter!(
        HANDED_OFF,
        "Requests claimed in ingest's group commit and handed to the dispatcher, with no claim of their own."
    );
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route template, method and status class."
    );
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request duration.");
    metrics::describe_counter!(AUTH_FAILURES, "Requests refused for a missing or unknown token.");
    // Every counter exists from the start, so `rate` and `increase` see its first step.
    for outcome in ["success", "http_error", "timeout", "connect_error", "other"] {
        metrics::counter!(ATTEMPTS, "outcome" => outcome).absolute(0);
    }
    for result in ["delivered", "failed"] {
        metrics::counter!(DELIVERIES_COMPLETED, "result" => result).absolute(0);
    }
    for counter in [
        DELIVERIES_CREATED,
        DELIVERIES_FILTERED,
        ENDPOINTS_DISABLED_TOTAL,
        STALE_RESULTS,
        HANDED_OFF,
        AUTH_FAILURES,
    ] {
        metrics::counter!(counter).absolute(0);
    }
}

/// Refreshes the store-derived gauges unless they are fresh enough.
pub async fn refresh_store_gauges(store: &Store) {
    {
        let Ok(mut at) = GAUGES_AT.lock() else { return };
        if at.is_some_and(|t| t.elapsed() < GAUGE_TTL) {
            return;
        }
        *at = Some(Instant::now());
    }
    match store.delivery_gauges().await {
        Ok(gauges) => {
            metrics::gauge!(DELIVERIES_PENDING).set(gauges.pending as f64);
            metrics::gauge!(DELIVERY_LAG).set(gauges.lag_seconds);
            metrics::gauge!(ENDPOINTS_DISABLED).set(gauges.endpoints_disabled as f64);
            metrics::gauge!(ENDPOINTS_CIRCUIT_OPEN).set(gauges.endpoints_circuit_open as f64);
        }
        Err(error) => tracing::warn!(%error, "could not read delivery gauges"),
    }
}
