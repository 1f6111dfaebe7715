//! A tenant's endpoints: `/v1/tenants/{tenant}/endpoints` and the secret routes.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Auth, PageParams, Pager};
use crate::domain::endpoint::{
    Endpoint, MAX_IN_FLIGHT_RANGE, RATE_LIMIT_RANGE, generate_secret, mask_header_value, parse_event_types,
    validate_headers, validate_secret, validate_url,
};
use crate::domain::event_type::Pattern;
use crate::domain::id::{IdKind, new_id};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::{Invalid, check_text};
use crate::storage::StoreError;

/// Default cap on attempts in flight per endpoint.
pub const DEFAULT_MAX_IN_FLIGHT: i32 = 10;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant}/endpoints", get(list_endpoints).post(create_endpoint))
        .route(
            "/v1/tenants/{tenant}/endpoints/{ep}",
            get(get_endpoint).patch(update_endpoint).delete(delete_endpoint),
        )
        .route("/v1/tenants/{tenant}/endpoints/{ep}/secret", get(get_endpoint_secret))
}

/// Body of `POST /v1/tenants/{tenant}/endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    /// `https://…` (`http://` in dev mode only); no credentials, no fragment, at most 2048 characters.
    #[schema(example = "https://example.com/webhooks")]
    pub url: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Exact names, `prefix.*` or `*`; empty or absent = every event type.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Extra headers sent with every attempt; cannot replace `webhook-*`, `content-type`,
    /// `user-agent` or `host`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whether deliveries are attempted (default true).
    pub enabled: Option<bool>,
    /// Deliver one at a time, in acceptance order.
    #[serde(default)]
    pub fifo: bool,
    /// Cap on attempts in flight, 1–1000 (default 10).
    pub max_in_flight: Option<i32>,
    /// Optional cap on requests per second, 1–100000.
    pub rate_limit_per_second: Option<i32>,
    /// Your own `whsec_…` secret (base64 of 24–64 bytes); generated when absent.
    pub secret: Option<String>,
}

/// Body of `PATCH …/endpoints/{ep}`; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// New URL.
    pub url: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New subscription; applies to events accepted afterwards.
    pub event_types: Option<Vec<String>>,
    /// Replaces every custom header.
    pub headers: Option<BTreeMap<String, String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Reason recorded when disabling.
    pub disabled_reason: Option<String>,
    /// FIFO delivery.
    pub fifo: Option<bool>,
    /// Cap on attempts in flight.
    pub max_in_flight: Option<i32>,
    /// Requests per second; `null` removes the limit.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<i32>)]
    pub rate_limit_per_second: Option<Option<i32>>,
}

/// An endpoint. Custom header values are masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointOut {
    /// `ep_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Where deliveries go.
    pub url: String,
    /// Free text.
    pub description: String,
    /// Subscription; empty = every event type.
    pub event_types: Vec<String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// When it was disabled (RFC 3339).
    pub disabled_at: Option<String>,
    /// Custom headers; values shown as `********`.
    pub headers: BTreeMap<String, String>,
    /// One at a time, in order.
    pub fifo: bool,
    /// Cap on attempts in flight.
    pub max_in_flight: i32,
    /// Requests per second, if limited.
    pub rate_limit_per_second: Option<i32>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<Endpoint> for EndpointOut {
    fn from(e: Endpoint) -> Self {
        EndpointOut {
            id: e.id,
            tenant_id: e.tenant_id,
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            disabled_at: e.disabled_at.map(format_micros),
            headers: e.headers.into_iter().map(|(k, v)| (k, mask_header_value(&v))).collect(),
            fifo: e.fifo,
            max_in_flight: e.max_in_flight,
            rate_limit_per_second: e.rate_limit_per_second,
            created_at: format_micros(e.created_at),
            updated_at: format_micros(e.updated_at),
        }
    }
}

/// A new endpoint: the only response besides `GET …/secret` that carries the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointCreatedOut {
    #[serde(flatten)]
    /// The endpoint.
    pub endpoint: EndpointOut,
    /// The signing secret, `whsec_…`.
    pub secret: String,
}

/// A page of endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    /// Newest first.
    pub data: Vec<EndpointOut>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// The endpoint's signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretOut {
    /// Current secret, `whsec_…`.
    pub secret: String,
    /// While a rotation's grace period lasts, when the previous secret stops signing.
    pub previous_secret_expires_at: Option<String>,
}

/// Checks every editable field of `endpoint`, including that exact event type names exist and
/// are not archived.
async fn validate(state: &AppState, invalid: &mut Invalid, endpoint: &mut Endpoint) -> Result<(), ApiError> {
    if let Err(why) = validate_url(&endpoint.url, state.config.dev) {
        invalid.push("url", why);
    }
    check_text(invalid, "description", &endpoint.description, 2000);
    let (normalised, _) = parse_event_types(invalid, &endpoint.event_types);
    for (i, entry) in endpoint.event_types.iter().enumerate() {
        if let Ok(Pattern::Exact(name)) = Pattern::parse(entry) {
            match state.store.get_event_type(&name).await {
                Ok(t) if t.archived => {
                    invalid.push(format!("event_types[{i}]"), format!("event type `{name}` is archived"))
                }
                Ok(_) => {}
                Err(StoreError::NotFound) => {
                    invalid.push(format!("event_types[{i}]"), format!("event type `{name}` does not exist"))
                }
                Err(other) => return Err(other.into()),
            }
        }
    }
    endpoint.event_types = normalised;
    validate_headers(invalid, &endpoint.headers, state.config.api.max_headers_per_endpoint);
    if !MAX_IN_FLIGHT_RANGE.contains(&endpoint.max_in_flight) {
        invalid.push("max_in_flight", "must be between 1 and 1000");
    }
    if let Some(rate) = endpoint.rate_limit_per_second
        && !RATE_LIMIT_RANGE.contains(&rate)
    {
        invalid.push("rate_limit_per_second", "must be between 1 and 100000, or null for no limit");
    }
    if let Some(reason) = &endpoint.disabled_reason {
        check_text(invalid, "disabled_reason", reason, 500);
    }
    Ok(())
}

async fn load(state: &AppState, tenant_id: &str, id: &str) -> Result<Endpoint, ApiError> {
    match state.store.get_endpoint(tenant_id, id).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("endpoint", id)),
        other => other.map_err(ApiError::from),
    }
}

/// Register an endpoint for a tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints", request_body = EndpointIn,
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id")), security(("bearer" = [])),
    responses((status = 201, body = EndpointCreatedOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    ApiJson(body): ApiJson<EndpointIn>,
) -> Result<(StatusCode, Json<EndpointCreatedOut>), ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    let now = now_micros();
    let enabled = body.enabled.unwrap_or(true);
    let mut endpoint = Endpoint {
        id: new_id(IdKind::Endpoint),
        tenant_id: tenant.id,
        url: body.url,
        description: body.description,
        event_types: body.event_types,
        headers: body.headers,
        enabled,
        disabled_reason: (!enabled).then(|| "disabled on creation".to_owned()),
        disabled_at: (!enabled).then_some(now),
        fifo: body.fifo,
        max_in_flight: body.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        rate_limit_per_second: body.rate_limit_per_second,
        created_at: now,
        updated_at: now,
    };
    let mut invalid = Invalid::default();
    validate(&state, &mut invalid, &mut endpoint).await?;
    if let Some(secret) = &body.secret
        && let Err(why) = validate_secret(secret)
    {
        invalid.push("secret", why);
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    let secret = body.secret.unwrap_or_else(generate_secret);
    state.store.insert_endpoint(&endpoint, &secret).await?;
    Ok((StatusCode::CREATED, Json(EndpointCreatedOut { endpoint: endpoint.into(), secret })))
}

/// List a tenant's endpoints, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints",
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id"), PageParams), security(("bearer" = [])),
    responses((status = 200, body = EndpointList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<EndpointList>, ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    let pager = Pager::new(&page, &format!("endpoints|{}", tenant.id))?;
    let rows = state.store.list_endpoints(&tenant.id, &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |e| &e.id);
    Ok(Json(EndpointList { data: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Get one endpoint.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints",
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id"), ("ep" = String, Path, description = "`ep_…`")),
    security(("bearer" = [])),
    responses((status = 200, body = EndpointOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, ep)): Path<(String, String)>,
) -> Result<Json<EndpointOut>, ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    Ok(Json(load(&state, &tenant.id, &ep).await?.into()))
}

/// Update an endpoint. Changes apply to the next attempt; `event_types` to events accepted afterwards.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints", request_body = EndpointPatch,
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id"), ("ep" = String, Path, description = "`ep_…`")),
    security(("bearer" = [])),
    responses((status = 200, body = EndpointOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, ep)): Path<(String, String)>,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> Result<Json<EndpointOut>, ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    let mut endpoint = load(&state, &tenant.id, &ep).await?;
    let now = now_micros();
    if let Some(url) = patch.url {
        endpoint.url = url;
    }
    if let Some(description) = patch.description {
        endpoint.description = description;
    }
    if let Some(event_types) = patch.event_types {
        endpoint.event_types = event_types;
    }
    if let Some(headers) = patch.headers {
        endpoint.headers = headers;
    }
    if let Some(fifo) = patch.fifo {
        endpoint.fifo = fifo;
    }
    if let Some(max) = patch.max_in_flight {
        endpoint.max_in_flight = max;
    }
    if let Some(rate) = patch.rate_limit_per_second {
        endpoint.rate_limit_per_second = rate;
    }
    match patch.enabled {
        Some(true) => {
            endpoint.enabled = true;
            endpoint.disabled_reason = None;
            endpoint.disabled_at = None;
        }
        Some(false) if endpoint.enabled => {
            endpoint.enabled = false;
            endpoint.disabled_reason =
                Some(patch.disabled_reason.unwrap_or_else(|| "disabled by request".to_owned()));
            endpoint.disabled_at = Some(now);
        }
        _ => {
            if let Some(reason) = patch.disabled_reason
                && !endpoint.enabled
            {
                endpoint.disabled_reason = Some(reason);
            }
        }
    }
    let mut invalid = Invalid::default();
    validate(&state, &mut invalid, &mut endpoint).await?;
    invalid.into_result().map_err(ApiError::Invalid)?;
    endpoint.updated_at = now;
    match state.store.update_endpoint(&endpoint).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("endpoint", &ep)),
        other => other.map_err(ApiError::from),
    }?;
    Ok(Json(endpoint.into()))
}

/// Delete an endpoint: 404 from then on; its pending deliveries fail with `endpoint_deleted`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints",
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id"), ("ep" = String, Path, description = "`ep_…`")),
    security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, ep)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    match state.store.delete_endpoint(&tenant.id, &ep, now_micros()).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("endpoint", &ep)),
        other => other.map_err(ApiError::from),
    }?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read the endpoint's signing secret.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}/secret", tag = "endpoints",
    params(("tenant" = String, Path, description = "`tnt_…` id or external_id"), ("ep" = String, Path, description = "`ep_…`")),
    security(("bearer" = [])),
    responses((status = 200, body = SecretOut), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get_endpoint_secret(
    State(state): State<AppState>,
    auth: Auth,
    Path((tenant, ep)): Path<(String, String)>,
) -> Result<Json<SecretOut>, ApiError> {
    let tenant = auth.tenant(&state, &tenant).await?;
    let secrets = match state.store.get_secrets(&tenant.id, &ep).await {
        Err(StoreError::NotFound) => Err(ApiError::not_found("endpoint", &ep)),
        other => other.map_err(ApiError::from),
    }?;
    let now = now_micros();
    Ok(Json(SecretOut {
        secret: secrets.current,
        previous_secret_expires_at: secrets.previous_expires_at.filter(|at| *at > now).map(format_micros),
    }))
}
