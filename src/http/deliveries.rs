//! Deliveries and their attempts: list, inspect, replay (`…/deliveries/{id}/retry`).

use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{ApiQuery, ItemPath, ItemScope, PageParams, Pager, TenantPath, TenantScope, TimeRange};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::delivery::{Attempt, Delivery};
use crate::domain::time::format_micros;
use crate::storage::{DeliveryFilter, RetryError};

/// A delivery: one event bound for one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// `dlv_…`
    pub id: String,
    /// `evt_…`
    pub event_id: String,
    /// `ep_…`
    pub endpoint_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Whether an attempt is under way (pending only).
    pub in_flight: bool,
    /// Attempts ever made.
    pub attempt_count: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// When it was delivered or failed.
    pub completed_at: Option<String>,
    /// Every attempt (single-delivery route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<Attempt>>,
}

impl From<Delivery> for DeliveryOut {
    fn from(d: Delivery) -> Self {
        DeliveryOut {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            status: d.status.as_str().to_owned(),
            in_flight: d.in_flight,
            attempt_count: d.attempt_count,
            next_attempt_at: d.next_attempt_at.map(format_micros),
            last_error: d.last_error,
            created_at: format_micros(d.created_at),
            completed_at: d.completed_at.map(format_micros),
            attempts: None,
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub data: Vec<DeliveryOut>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// Filters of the delivery list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `pending` (in-flight ones included), `delivered` or `failed`.
    #[param(pattern = "^(pending|delivered|failed)$")]
    pub status: Option<String>,
    /// Only this endpoint.
    pub endpoint_id: Option<String>,
    /// Only this event.
    pub event_id: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    range: TimeRange,
    #[serde(flatten)]
    #[param(ignore)]
    page: PageParams,
}

/// List a tenant's deliveries, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/deliveries", tag = "deliveries",
    params(TenantPath, DeliveryQuery, TimeRange, PageParams),
    responses((status = 200, description = "A page of deliveries, newest first", body = DeliveryList), ErrorResponses))]
pub async fn list_deliveries(
    TenantScope { state, tenant, .. }: TenantScope,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            DeliveryStatus::parse(text)
                .ok_or_else(|| ApiError::invalid("status", "must be `pending`, `delivered` or `failed`"))?,
        ),
    };
    let created = query.range.parse()?;
    let filter = DeliveryFilter {
        status,
        endpoint_id: query.endpoint_id.clone(),
        event_id: query.event_id.clone(),
        created,
    };
    let pager = Pager::new(&query.page, &format!("deliveries|{}|{:?}", tenant.id, filter))?;
    let rows = state.store.list_deliveries(&tenant.id, &filter, &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |d| &d.id);
    Ok(Json(DeliveryList { data: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

async fn load(state: &AppState, tenant_id: &str, id: &str) -> Result<DeliveryOut, ApiError> {
    let delivery = state.store.get_delivery(tenant_id, id).await.or_not_found("delivery", id)?;
    let attempts = state.store.list_attempts(&delivery.id).await?;
    let mut out = DeliveryOut::from(delivery);
    out.attempts = Some(attempts);
    Ok(out)
}

/// Get one delivery with every attempt.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/deliveries/{id}", tag = "deliveries",
    params(ItemPath),
    responses((status = 200, description = "The delivery with every attempt", body = DeliveryOut), ErrorResponses))]
pub async fn get_delivery(ItemScope(state, tenant, id): ItemScope) -> Result<Json<DeliveryOut>, ApiError> {
    Ok(Json(load(&state, &tenant.id, &id).await?))
}

/// Maps a refused replay to its answer.
pub(crate) fn retry_error(error: RetryError, what: &str, id: &str) -> ApiError {
    match error {
        RetryError::NotFound => ApiError::not_found(what, id),
        RetryError::InFlight => ApiError::Conflict(format!("delivery `{id}` has an attempt in flight")),
        RetryError::EndpointDisabled => {
            ApiError::Conflict("the endpoint is disabled; enable it first".into())
        }
        RetryError::EndpointDeleted => ApiError::Conflict("the endpoint was deleted".into()),
        RetryError::PayloadGone => {
            ApiError::Conflict("the event's payload is no longer stored (retention)".into())
        }
        RetryError::Store(error) => error.into(),
    }
}

/// Queue a delivery again now. A `failed` or `delivered` one starts a new run of attempts.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/deliveries/{id}/retry", tag = "deliveries",
    params(ItemPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 202, description = "Queued again: the delivery as it now is", body = DeliveryOut), ErrorResponses))]
pub async fn retry_delivery(
    ItemScope(state, tenant, id): ItemScope,
) -> Result<(StatusCode, Json<DeliveryOut>), ApiError> {
    state.store.retry_delivery(&tenant.id, &id).await.map_err(|e| retry_error(e, "delivery", &id))?;
    state.wakeup.notify_one();
    Ok((StatusCode::ACCEPTED, Json(load(&state, &tenant.id, &id).await?)))
}
