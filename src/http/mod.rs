//! The HTTP API: the route table, the shared state, and the OpenAPI document built from the
//! handlers' annotations; the handlers live in one module per resource.

pub mod dashboard;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod lookups;
pub mod ops;
pub mod schemas;
pub mod stats;
pub mod tenants;
pub mod webhooks_doc;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Deserializer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::Config;
use crate::storage::Store;
use error::ApiError;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// The configuration.
    pub config: Arc<Config>,
    /// SHA-256 (hex) of the configured bootstrap admin token, if any.
    pub admin_hash: Option<String>,
    /// Wakes the local dispatcher when deliveries are committed.
    pub wakeup: Arc<tokio::sync::Notify>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Per-token request rate limits.
    pub limits: Arc<extract::RateLimits>,
    /// Group commit for ingest.
    pub committer: crate::ingest::Committer,
    /// The event types' compiled JSON Schemas.
    pub validators: Arc<schemas::Validators>,
    /// Short-lived copies of tenants and event types.
    pub lookups: Arc<lookups::Lookups>,
    /// OpenTelemetry spans (none without an OTLP endpoint).
    pub traces: crate::telemetry::traces::Traces,
}

/// Builds the whole router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.api.body_limit;
    let mut router = ops_routes();
    if state.config.api_enabled {
        router = router.merge(api_routes(&state));
    }
    router
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::idempotency))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(known_query))
        .layer(axum::middleware::from_fn(cap_headers))
        .layer(axum::middleware::from_fn(track))
        .layer(extract::body_limit(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}

/// The probes and documents every role serves.
fn ops_routes() -> Router<AppState> {
    use ops::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/openapi.json", get(openapi_with_webhooks))
        .route("/metrics", get(metrics))
}

/// The API (not under `--role dispatcher`), one line a path; the handlers live by resource.
fn api_routes(state: &AppState) -> Router<AppState> {
    use deliveries::*;
    use endpoints::*;
    use event_types::*;
    use events::*;
    use stats::*;
    use tenants::*;
    let event_body = events::body_limit(state.config.ingest.payload_limit);
    let batch_body = extract::body_limit(state.config.ingest.batch_body_limit);
    let endpoint = "/v1/tenants/{tenant}/endpoints/{ep}";
    Router::new()
        .route("/", get(dashboard::root))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/v1/me", get(whoami))
        .route("/v1/event-types", get(list_event_types).post(create_event_type))
        .route(
            "/v1/event-types/{name}",
            get(get_event_type).patch(update_event_type).delete(archive_event_type),
        )
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant}", get(get_tenant).patch(update_tenant).delete(delete_tenant))
        .route("/v1/tenants/{tenant}/tokens", post(create_tenant_token))
        .route("/v1/tenants/{tenant}/portal-links", post(create_portal_link))
        .route("/v1/tokens", get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/tenants/{tenant}/endpoints", get(list_endpoints).post(create_endpoint))
        .route(endpoint, get(get_endpoint).patch(update_endpoint).delete(delete_endpoint))
        .route(&format!("{endpoint}/secret"), get(get_endpoint_secret))
        .route(&format!("{endpoint}/secret/rotate"), post(rotate_endpoint_secret))
        .route(&format!("{endpoint}/secret/previous"), delete(delete_previous_secret))
        .route(&format!("{endpoint}/enable"), post(enable_endpoint))
        .route(&format!("{endpoint}/disable"), post(disable_endpoint))
        .route(&format!("{endpoint}/test"), post(test_endpoint))
        .route(&format!("{endpoint}/recover"), post(recover_endpoint))
        .route(&format!("{endpoint}/filter/test"), post(test_filter))
        .route(&format!("{endpoint}/stats"), get(get_endpoint_stats))
        .route(&format!("{endpoint}/stats/series"), get(get_endpoint_series))
        .route("/v1/stats/series", get(get_series))
        .route("/v1/tenants/{tenant}/stats/endpoints", get(list_tenant_endpoint_stats))
        .route("/v1/stats/endpoints", get(list_endpoint_stats))
        .route("/v1/tenants/{tenant}/events", get(list_events).post(create_event).layer(event_body))
        .route("/v1/tenants/{tenant}/events/batch", post(create_events_batch).layer(batch_body))
        .route("/v1/tenants/{tenant}/events/{id}", get(get_event))
        .route("/v1/tenants/{tenant}/deliveries", get(list_deliveries))
        .route("/v1/tenants/{tenant}/deliveries/{id}", get(get_delivery))
        .route("/v1/tenants/{tenant}/deliveries/{id}/retry", post(retry_delivery))
}

/// Most bytes of request headers accepted (names and values).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses requests with oversized headers (431) before any handler runs.
async fn cap_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let size: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge.into_response();
    }
    // Every path and query parameter must decode to UTF-8 text without NUL characters (which no
    // stored name or id can contain, and PostgreSQL refuses in text).
    let uri = request.uri();
    for (part, text) in [("path", uri.path()), ("query", uri.query().unwrap_or(""))] {
        let decoded: Vec<u8> = percent_decode(text);
        if std::str::from_utf8(&decoded).is_err() || decoded.contains(&0) {
            return ApiError::BadRequest(format!(
                "the request {part} must be UTF-8 text without NUL characters"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// The query parameters each operation documents, by method and route template: the OpenAPI
/// document is the one list of what a route accepts.
static QUERY_PARAMETERS: std::sync::LazyLock<std::collections::HashMap<(String, String), Vec<String>>> =
    std::sync::LazyLock::new(|| {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::path::ParameterIn;
        let document = ApiDoc::openapi();
        let mut known = std::collections::HashMap::new();
        for (path, item) in document.paths.paths {
            let operations = [
                ("GET", item.get),
                ("POST", item.post),
                ("PUT", item.put),
                ("PATCH", item.patch),
                ("DELETE", item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let names = operation
                    .parameters
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|parameter| match parameter {
                        RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query) => Some(p.name),
                        _ => None,
                    })
                    .collect();
                known.insert((method.to_owned(), path.clone()), names);
            }
        }
        known
    });

/// Refuses a query parameter the route does not document (422 naming it), so a misspelt filter
/// (`?statuss=failed`) is an error instead of a silently unfiltered answer.
async fn known_query(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let (Some(query), Some(route)) =
        (request.uri().query(), request.extensions().get::<axum::extract::MatchedPath>())
    {
        let key = (request.method().as_str().to_owned(), route.as_str().to_owned());
        let allowed = QUERY_PARAMETERS.get(&key).map(Vec::as_slice).unwrap_or_default();
        if let Some((name, _)) =
            url::form_urlencoded::parse(query.as_bytes()).find(|(name, _)| !allowed.iter().any(|a| a == name))
        {
            let message = match allowed {
                [] => "is not a parameter of this route (it takes none)".to_owned(),
                _ => format!("is not a parameter of this route (it takes `{}`)", allowed.join("`, `")),
            };
            return ApiError::invalid(&name, message).into_response();
        }
    }
    next.run(request).await
}

/// Percent-decodes `text` (`+` stays as it is; it is only a space in form bodies).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) =
                ((bytes[i + 1] as char).to_digit(16), (bytes[i + 2] as char).to_digit(16))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Counts requests and their latency by route template, method and status class.
async fn track(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status_class" => class)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_DURATION, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> impl IntoResponse {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::MethodNotAllowed
}

/// Deserializes a field that distinguishes absent (`None`) from `null` (`Some(None)`).
pub(crate) fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Parses a boolean query parameter.
pub(crate) fn parse_bool(field: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(_) => Err(ApiError::invalid(field, "must be `true` or `false`")),
    }
}

/// Every `/v1/` route needs a bearer token; the operational routes and the dashboard page do not.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
        for (path, item) in openapi.paths.paths.iter_mut().filter(|(path, _)| path.starts_with("/v1/")) {
            let operations =
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                debug_assert!(operation.security.is_none(), "{path} declares its own security");
                operation.security = Some(vec![bearer.clone()]);
            }
        }
    }
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Outbound webhook delivery: signed, retried, recorded."),
    modifiers(&BearerAuth),
    paths(
        event_types::create_event_type,
        event_types::list_event_types,
        event_types::get_event_type,
        event_types::update_event_type,
        event_types::archive_event_type,
        tenants::create_tenant,
        tenants::list_tenants,
        tenants::get_tenant,
        tenants::update_tenant,
        tenants::delete_tenant,
        tenants::create_tenant_token,
        tenants::list_tokens,
        tenants::revoke_token,
        tenants::create_portal_link,
        endpoints::create_endpoint,
        endpoints::list_endpoints,
        endpoints::get_endpoint,
        endpoints::update_endpoint,
        endpoints::delete_endpoint,
        endpoints::get_endpoint_secret,
        endpoints::rotate_endpoint_secret,
        endpoints::delete_previous_secret,
        endpoints::enable_endpoint,
        endpoints::disable_endpoint,
        endpoints::test_endpoint,
        endpoints::recover_endpoint,
        endpoints::test_filter,
        events::create_event,
        events::create_events_batch,
        events::list_events,
        events::get_event,
        deliveries::list_deliveries,
        deliveries::get_delivery,
        deliveries::retry_delivery,
        ops::healthz,
        ops::readyz,
        ops::openapi,
        ops::openapi_with_webhooks,
        ops::metrics,
        stats::get_endpoint_stats,
        stats::get_endpoint_series,
        stats::get_series,
        stats::list_tenant_endpoint_stats,
        stats::list_endpoint_stats,
        stats::whoami,
        dashboard::dashboard,
    )
)]
pub struct ApiDoc;
