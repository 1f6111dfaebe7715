//! Operational routes: `/healthz`, `/readyz`, `/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorResponses, Problem};
use super::extract::AnyCaller;
use crate::storage::PageQuery;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthOut {
    /// `ok`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Healthy", body = HealthOut), (status = "4XX", description = "Client error: 431 headers too large", body = Problem, content_type = "application/problem+json")))]
pub async fn healthz() -> Json<HealthOut> {
    Json(HealthOut { status: "ok" })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "Ready", body = HealthOut), (status = "4XX", description = "Client error: 431 headers too large", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthOut>, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(HealthOut { status: "ok" })),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check failed");
            Err(ApiError::Unavailable)
        }
        Err(_) => Err(ApiError::Unavailable),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"), (status = "4XX", description = "Client error: 431 headers too large", body = Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    crate::metrics::refresh_store_gauges(state.store.as_ref()).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json"), (status = "4XX", description = "Client error: 431 headers too large", body = Problem, content_type = "application/problem+json")))]
pub async fn openapi() -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::OK, Json(super::webhooks_doc::api_document()))
}

/// The OpenAPI document with `webhooks`: what each event type of the catalogue delivers (the
/// envelope with the type's schema as `data`, the signature headers) and the batch body, for
/// generating typed handlers. Any valid token.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document with a webhook per event type", body = Object, content_type = "application/json"), ErrorResponses))]
pub async fn openapi_with_webhooks(AnyCaller(state): AnyCaller) -> Result<Json<serde_json::Value>, ApiError> {
    let mut catalogue = Vec::new();
    let mut page = PageQuery { after: None, limit: 1000 };
    loop {
        let rows = state.store.list_event_types(true, &page).await?;
        let done = (rows.len() as i64) < page.limit;
        page.after = rows.last().map(|t| t.name.clone());
        catalogue.extend(rows);
        if done {
            break;
        }
    }
    Ok(Json(super::webhooks_doc::with_webhooks(super::webhooks_doc::api_document(), &catalogue)))
}
