//! Failure rates for on-call: one endpoint's stats, a tenant's endpoints ranked, and the admin's
//! cross-tenant view, all from the rollup maintained as attempts are recorded; and `GET /v1/me`.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{Admin, ApiQuery, Auth, EndpointPath, ItemScope, TenantPath, TenantScope};
use crate::domain::stats::{Point, Window, percentile};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::token::Scope;
use crate::storage::EndpointHealth;

/// Attempt latency percentiles, milliseconds (nearest rank; `null` without attempts).
#[derive(Debug, Serialize, ToSchema)]
pub struct Latency {
    /// Median.
    pub p50: Option<i64>,
    /// 95th percentile.
    pub p95: Option<i64>,
    /// 99th percentile.
    pub p99: Option<i64>,
}

/// One endpoint's delivery health over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOut {
    /// `ep_…`
    pub endpoint_id: String,
    /// Owner.
    pub tenant_id: String,
    /// Target URL.
    pub url: String,
    /// `1h`, `24h` or `7d`.
    pub window: String,
    /// Attempts finished in the window.
    pub attempts: i64,
    /// 2xx answers.
    pub successes: i64,
    /// Every other outcome.
    pub failures: i64,
    /// `failures / attempts` (0 without attempts).
    pub failure_rate: f64,
    /// Latency percentiles (omitted in ranked lists' `latency_ms` only when no attempts).
    pub latency_ms: Latency,
    /// Pending deliveries, in flight included.
    pub pending: i64,
    /// Age of the oldest pending delivery (retrying ones included), seconds since it was created.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Delivery lag: how long the oldest due, unclaimed delivery has waited since it fell due,
    /// seconds (0 when none waits) — what `herald_delivery_lag_seconds` reports.
    pub lag_seconds: f64,
    /// The last failure in words.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<String>,
    /// The last 2xx.
    pub last_success_at: Option<String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
}

/// Backlog across the listed scope.
#[derive(Debug, Serialize, ToSchema)]
pub struct Totals {
    /// Endpoints considered.
    pub endpoints: usize,
    /// Disabled endpoints among them.
    pub disabled: usize,
    /// Attempts in the window.
    pub attempts: i64,
    /// Failed attempts in the window.
    pub failures: i64,
    /// Pending deliveries.
    pub pending: i64,
    /// Age of the oldest pending delivery, seconds since it was created.
    pub oldest_pending_age_seconds: Option<f64>,
    /// The largest delivery lag among them, seconds (0 when none waits).
    pub lag_seconds: f64,
}

/// Endpoints ranked for on-call.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsList {
    /// The window.
    pub window: String,
    /// The ranking: `failure_rate`, `failures` or `lag`.
    pub sort: String,
    /// Backlog and totals over every endpoint in scope.
    pub totals: Totals,
    /// The worst endpoints first.
    pub data: Vec<StatsOut>,
}

/// `?window=`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WindowQuery {
    /// `1h` (default), `24h` or `7d`.
    #[param(pattern = "^(1h|24h|7d)$")]
    pub window: Option<String>,
}

/// `?window=&sort=&limit=`
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RankQuery {
    /// `1h` (default), `24h` or `7d`.
    #[param(pattern = "^(1h|24h|7d)$")]
    pub window: Option<String>,
    /// `failure_rate` (default), `failures` or `lag`.
    #[param(pattern = "^(failure_rate|failures|lag)$")]
    pub sort: Option<String>,
    /// Endpoints to return, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

fn parse_window(text: Option<&str>) -> Result<Window, ApiError> {
    Window::parse(text.unwrap_or("1h"))
        .ok_or_else(|| ApiError::invalid("window", "must be `1h`, `24h` or `7d`"))
}

/// `?window=` parsed (422 naming `window` when it is not one of the three).
pub struct Windowed(pub Window);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Windowed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let ApiQuery(query) = ApiQuery::<WindowQuery>::from_request_parts(parts, state).await?;
        Ok(Windowed(parse_window(query.window.as_deref())?))
    }
}

fn age(now: i64, at: Option<i64>) -> Option<f64> {
    at.map(|at| ((now - at).max(0) as f64 / 1e6 * 1000.0).round() / 1000.0)
}

fn stats_out(health: EndpointHealth, window: Window, now: i64) -> StatsOut {
    let totals = &health.totals;
    let failure_rate =
        if totals.attempts == 0 { 0.0 } else { totals.failures as f64 / totals.attempts as f64 };
    StatsOut {
        latency_ms: Latency {
            p50: percentile(&totals.latency, 50.0),
            p95: percentile(&totals.latency, 95.0),
            p99: percentile(&totals.latency, 99.0),
        },
        window: window.as_str().to_owned(),
        attempts: totals.attempts,
        successes: totals.successes,
        failures: totals.failures,
        failure_rate,
        pending: health.pending,
        oldest_pending_age_seconds: age(now, health.oldest_pending_at),
        lag_seconds: age(now, health.oldest_due_at).unwrap_or(0.0),
        last_error: health.last_error,
        last_error_at: health.last_error_at.map(format_micros),
        last_success_at: health.last_success_at.map(format_micros),
        enabled: health.enabled,
        disabled_reason: health.disabled_reason,
        endpoint_id: health.endpoint_id,
        tenant_id: health.tenant_id,
        url: health.url,
    }
}

/// One endpoint's stats.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}/stats", tag = "stats",
    params(EndpointPath, WindowQuery),
    responses((status = 200, description = "The endpoint's delivery health", body = StatsOut), ErrorResponses))]
pub async fn get_endpoint_stats(
    ItemScope(state, tenant, ep): ItemScope,
    Windowed(window): Windowed,
) -> Result<Json<StatsOut>, ApiError> {
    let now = now_micros();
    let since = window.since(now);
    let mut health = state
        .store
        .endpoints_overview(Some(&tenant.id), Some(&ep), window.period(), since)
        .await?
        .into_iter()
        .find(|h| h.endpoint_id == ep)
        .ok_or_else(|| ApiError::not_found("endpoint", &ep))?;
    health.totals = state.store.endpoint_window(&ep, window.period(), since).await?;
    Ok(Json(stats_out(health, window, now)))
}

/// Attempts, failures and latency per rollup bucket over a window.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesOut {
    /// `1h`, `24h` or `7d`.
    pub window: String,
    /// Bucket width: `1m` up to the 1-hour window, `1h` beyond.
    pub step: String,
    /// One point per bucket, oldest first, quiet buckets included.
    pub points: Vec<Point>,
}

async fn series_out(
    state: &AppState,
    endpoint_id: Option<&str>,
    window: Window,
) -> Result<SeriesOut, ApiError> {
    let now = now_micros();
    let rows = state.store.stats_buckets(endpoint_id, window.period(), window.since(now)).await?;
    let points = crate::domain::stats::series(window, now, &rows);
    let step = if window.step() == crate::domain::stats::MINUTE { "1m" } else { "1h" };
    Ok(SeriesOut { window: window.as_str().to_owned(), step: step.to_owned(), points })
}

/// One endpoint's attempts, failures and latency over time, for a chart.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}/stats/series", tag = "stats",
    params(EndpointPath, WindowQuery),
    responses((status = 200, description = "The endpoint's series", body = SeriesOut), ErrorResponses))]
pub async fn get_endpoint_series(
    ItemScope(state, tenant, ep): ItemScope,
    Windowed(window): Windowed,
) -> Result<Json<SeriesOut>, ApiError> {
    state.store.get_endpoint(&tenant.id, &ep).await.or_not_found("endpoint", &ep)?;
    Ok(Json(series_out(&state, Some(&ep), window).await?))
}

/// Every endpoint's attempts, failures and latency over time, across tenants (admin): when a
/// failure rate started.
#[utoipa::path(get, path = "/v1/stats/series", tag = "stats", params(WindowQuery),
    responses((status = 200, description = "The series over every endpoint", body = SeriesOut), ErrorResponses))]
pub async fn get_series(
    Admin(state): Admin,
    Windowed(window): Windowed,
) -> Result<Json<SeriesOut>, ApiError> {
    Ok(Json(series_out(&state, None, window).await?))
}

/// `?window=&sort=&limit=` of the ranked lists, checked (422 naming the parameter).
pub struct Ranking {
    window: Window,
    sort: &'static str,
    limit: usize,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ranking {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let ApiQuery(query) = ApiQuery::<RankQuery>::from_request_parts(parts, state).await?;
        let window = parse_window(query.window.as_deref())?;
        let sort = match query.sort.as_deref().unwrap_or("failure_rate") {
            "failure_rate" => "failure_rate",
            "failures" => "failures",
            "lag" => "lag",
            _ => return Err(ApiError::invalid("sort", "must be `failure_rate`, `failures` or `lag`")),
        };
        let limit = match &query.limit {
            None => 20,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| ApiError::invalid("limit", "must be between 1 and 100"))?,
        };
        Ok(Ranking { window, sort, limit })
    }
}

async fn ranked(state: &AppState, tenant_id: Option<&str>, ranking: &Ranking) -> Result<StatsList, ApiError> {
    let Ranking { window, sort, limit } = *ranking;
    let now = now_micros();
    let since = window.since(now);
    let mut all = state.store.endpoints_overview(tenant_id, None, window.period(), since).await?;
    let totals = Totals {
        endpoints: all.len(),
        disabled: all.iter().filter(|h| !h.enabled).count(),
        attempts: all.iter().map(|h| h.totals.attempts).sum(),
        failures: all.iter().map(|h| h.totals.failures).sum(),
        pending: all.iter().map(|h| h.pending).sum(),
        oldest_pending_age_seconds: age(now, all.iter().filter_map(|h| h.oldest_pending_at).min()),
        lag_seconds: age(now, all.iter().filter_map(|h| h.oldest_due_at).min()).unwrap_or(0.0),
    };
    let rate = |h: &EndpointHealth| {
        if h.totals.attempts == 0 { 0.0 } else { h.totals.failures as f64 / h.totals.attempts as f64 }
    };
    match sort {
        "failures" => all.sort_by_key(|h| std::cmp::Reverse(h.totals.failures)),
        "lag" => all.sort_by_key(|h| h.oldest_due_at.unwrap_or(i64::MAX)),
        _ => all.sort_by(|a, b| rate(b).total_cmp(&rate(a)).then(b.totals.failures.cmp(&a.totals.failures))),
    }
    all.truncate(limit);
    let mut data = Vec::with_capacity(all.len());
    for mut health in all {
        health.totals = state.store.endpoint_window(&health.endpoint_id, window.period(), since).await?;
        data.push(stats_out(health, window, now));
    }
    Ok(StatsList { window: window.as_str().to_owned(), sort: sort.to_owned(), totals, data })
}

/// A tenant's endpoints, the worst first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/stats/endpoints", tag = "stats",
    params(TenantPath, RankQuery),
    responses((status = 200, description = "Endpoints, the worst first", body = StatsList), ErrorResponses))]
pub async fn list_tenant_endpoint_stats(
    TenantScope { state, tenant, .. }: TenantScope,
    ranking: Ranking,
) -> Result<Json<StatsList>, ApiError> {
    Ok(Json(ranked(&state, Some(&tenant.id), &ranking).await?))
}

/// Every tenant's endpoints, the worst first (admin).
#[utoipa::path(get, path = "/v1/stats/endpoints", tag = "stats", params(RankQuery),
    responses((status = 200, description = "Endpoints, the worst first", body = StatsList), ErrorResponses))]
pub async fn list_endpoint_stats(Admin(state): Admin, ranking: Ranking) -> Result<Json<StatsList>, ApiError> {
    Ok(Json(ranked(&state, None, &ranking).await?))
}

/// Who the token speaks for.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeOut {
    /// `admin` or `tenant`.
    pub scope: String,
    /// The tenant of a tenant token.
    pub tenant_id: Option<String>,
    /// Its name.
    pub tenant_name: Option<String>,
}

/// Describe the calling token (the dashboard uses it to choose its view).
#[utoipa::path(get, path = "/v1/me", tag = "tokens",
    responses((status = 200, description = "Who the token speaks for", body = MeOut), ErrorResponses))]
pub async fn whoami(State(state): State<AppState>, auth: Auth) -> Result<Json<MeOut>, ApiError> {
    match &auth.scope {
        Scope::Admin => Ok(Json(MeOut { scope: "admin".into(), tenant_id: None, tenant_name: None })),
        Scope::Tenant(id) => {
            let tenant = auth.tenant(&state, id).await?;
            Ok(Json(MeOut {
                scope: "tenant".into(),
                tenant_id: Some(tenant.id),
                tenant_name: Some(tenant.name),
            }))
        }
    }
}
