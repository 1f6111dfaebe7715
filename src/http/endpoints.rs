//! A tenant's endpoints: `/v1/tenants/{tenant}/endpoints` and the secret routes.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{
    ApiJson, ApiQuery, EndpointPath, ItemScope, PageParams, Pager, RawBody, TenantPath, TenantScope,
};
use crate::config::parse_duration;
use crate::domain::batch::{Batching, DEFAULT_MAX_BYTES};
use crate::domain::breaker::Circuit;
use crate::domain::concurrency::effective_in_flight;
use crate::domain::endpoint::{
    Endpoint, MAX_IN_FLIGHT_RANGE, RATE_LIMIT_RANGE, generate_secret, mask_header_value, parse_event_types,
    validate_headers, validate_secret, validate_url,
};
use crate::domain::event_type::Pattern;
use crate::domain::filter::Filter;
use crate::domain::id::{IdKind, new_id};
use crate::domain::policy::{DeliveryPolicy, text as duration_text};
use crate::domain::signing::{Scheme, generate_signing_key, parse_signing_key, public_key};
use crate::domain::tenant::Tenant;
use crate::domain::time::{format_micros, now_micros};
use crate::domain::{Invalid, check_text};
use crate::storage::StoreError;

/// Body of `POST /v1/tenants/{tenant}/endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    /// `https://…` (`http://` in dev mode only); no credentials, no fragment, at most 2048 characters.
    #[schema(example = "https://example.com/webhooks", max_length = 2048)]
    pub url: String,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    /// Exact names, `prefix.*` or `*`; empty or absent = every event type.
    #[serde(default)]
    #[schema(max_items = 100)]
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
    /// Cap on attempts in flight, 1–1000; absent or `null`: the server's
    /// `[delivery] max_in_flight_per_endpoint` (100). The adaptive window grows up to it.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<i32>,
    /// Optional cap on requests per second, 1–100000.
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<i32>,
    /// Your own secret, generated when absent: a `whsec_…` secret (base64 of 24–64 bytes) for
    /// `hmac-sha256`, a `whsk_…` ed25519 key (base64 of the 32-byte seed, or of seed ‖ public key)
    /// for `ed25519`.
    pub secret: Option<String>,
    /// `hmac-sha256` (default: `v1` signatures with a shared `whsec_` secret) or `ed25519` (`v1a`
    /// signatures; receivers verify with the `public_key`, the signing key is never shown).
    #[schema(pattern = "^(hmac-sha256|ed25519)$")]
    pub signature_scheme: Option<String>,
    /// This endpoint's own timeout and retry rules; absent or `null` = the server's.
    pub delivery: Option<DeliveryPolicyIn>,
    /// Payload filter: only events whose envelope matches get a delivery; absent or `null` = all
    /// events of its types. See the filter dialect in the delivery docs.
    #[schema(value_type = Option<Object>, example = json!({"data.customer.tier": {"$in": ["gold", "platinum"]}}))]
    pub filter: Option<Value>,
    /// Batched delivery: JSON arrays of envelopes in one signed request; absent or `null` = one
    /// event per request.
    pub batch: Option<BatchingIn>,
}

/// `batch` on an endpoint (DESIGN §14).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchingIn {
    /// Most events in one request, 2–1000.
    #[schema(minimum = 2, maximum = 1000)]
    pub max_events: u32,
    /// Longest a due event waits for its batch to fill, `"0ms"`–`"10s"` (default `"0ms"`: a
    /// batch goes with whatever is due).
    #[schema(example = "100ms")]
    pub max_wait: Option<String>,
    /// Most body bytes in one request, 1024–16777216 (default 1 MiB); a larger event goes alone.
    #[schema(minimum = 1024, maximum = 16777216)]
    pub max_bytes: Option<u64>,
}

impl BatchingIn {
    /// The batching asked for, its problems recorded under `batch.…`.
    fn read(self, invalid: &mut Invalid) -> Option<Batching> {
        let max_wait = match parse_duration(self.max_wait.as_deref().unwrap_or("0ms")) {
            Ok(wait) => wait,
            Err(why) => {
                invalid.push("batch.max_wait", why);
                return None;
            }
        };
        let batching = Batching {
            max_events: self.max_events,
            max_wait_ms: u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX),
            max_bytes: self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        };
        batching.check(invalid);
        Some(batching)
    }
}

/// An endpoint's batching.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchingOut {
    /// Most events in one request.
    pub max_events: u32,
    /// Longest a due event waits for its batch to fill.
    pub max_wait: String,
    /// Most body bytes in one request.
    pub max_bytes: u64,
}

impl From<Batching> for BatchingOut {
    fn from(batching: Batching) -> Self {
        BatchingOut {
            max_events: batching.max_events,
            max_wait: duration_text(batching.max_wait()),
            max_bytes: batching.max_bytes,
        }
    }
}

/// `delivery` on an endpoint: each member absent or `null` inherits the server's `[delivery]`
/// value (on PATCH: absent = unchanged, `null` = inherit).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryPolicyIn {
    /// Time allowed for one attempt, such as `"5s"`: 1s to `[delivery] timeout_max` (25s).
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<String>, example = "5s")]
    pub timeout: Option<Option<String>>,
    /// Delays before the retries of a run, such as `["10s", "1m", "10m"]`: at most 10, each
    /// `[delivery] retry_min` (1s) to 24h; `[]` = no retries.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<Vec<String>>, max_items = 10)]
    pub retry_schedule: Option<Option<Vec<String>>>,
    /// Retry 4xx answers (other than 410) instead of failing at once.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<bool>)]
    pub retry_client_errors: Option<Option<bool>>,
}

impl DeliveryPolicyIn {
    /// Applies the members that are present onto `policy` (`null` = inherit), recording
    /// unreadable durations under `delivery.…`.
    fn apply(self, policy: &mut DeliveryPolicy, invalid: &mut Invalid) {
        let parse = |field: String, text: &str, invalid: &mut Invalid| match parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(why) => {
                invalid.push(field, why);
                None
            }
        };
        if let Some(timeout) = self.timeout {
            policy.timeout = timeout.and_then(|text| parse("delivery.timeout".into(), &text, invalid));
        }
        if let Some(schedule) = self.retry_schedule {
            policy.retry_schedule = schedule.map(|delays| {
                delays
                    .iter()
                    .enumerate()
                    .filter_map(|(i, text)| parse(format!("delivery.retry_schedule[{i}]"), text, invalid))
                    .collect()
            });
        }
        if let Some(retry) = self.retry_client_errors {
            policy.retry_client_errors = retry;
        }
    }
}

/// An endpoint's delivery policy: what it set, and what is in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPolicyOut {
    /// Its own attempt timeout; `null` = the server's.
    pub timeout: Option<String>,
    /// Its own retry delays; `null` = the server's.
    pub retry_schedule: Option<Vec<String>>,
    /// Its own choice on retrying 4xx; `null` = the server's.
    pub retry_client_errors: Option<bool>,
    /// The values in force now (its own over the server's).
    pub effective: EffectivePolicyOut,
}

/// The delivery policy in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectivePolicyOut {
    /// Time allowed for one attempt.
    pub timeout: String,
    /// Delays before the retries of a run; a run allows 1 + this many attempts.
    pub retry_schedule: Vec<String>,
    /// Whether 4xx answers (other than 410) are retried.
    pub retry_client_errors: bool,
}

impl DeliveryPolicyOut {
    fn new(policy: &DeliveryPolicy, server: &crate::domain::policy::Server) -> DeliveryPolicyOut {
        let effective = policy.effective(server);
        let texts = |delays: &[std::time::Duration]| delays.iter().map(|d| duration_text(*d)).collect();
        DeliveryPolicyOut {
            timeout: policy.timeout.map(duration_text),
            retry_schedule: policy.retry_schedule.as_deref().map(texts),
            retry_client_errors: policy.retry_client_errors,
            effective: EffectivePolicyOut {
                timeout: duration_text(effective.timeout),
                retry_schedule: texts(&effective.retry.schedule),
                retry_client_errors: effective.retry.retry_client_errors,
            },
        }
    }
}

/// Body of `PATCH …/endpoints/{ep}`; absent fields are left as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// New URL.
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// New description.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// New subscription; applies to events accepted afterwards.
    #[schema(max_items = 100)]
    pub event_types: Option<Vec<String>>,
    /// Replaces every custom header.
    pub headers: Option<BTreeMap<String, String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Reason recorded when disabling.
    #[schema(max_length = 500)]
    pub disabled_reason: Option<String>,
    /// FIFO delivery.
    pub fifo: Option<bool>,
    /// Cap on attempts in flight; `null`: the server's default.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    pub max_in_flight: Option<Option<i32>>,
    /// Requests per second; `null` removes the limit.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 100000)]
    pub rate_limit_per_second: Option<Option<i32>>,
    /// Merged member by member (absent = unchanged, `null` = inherit); `null` for the whole
    /// object = inherit everything.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<DeliveryPolicyIn>)]
    pub delivery: Option<Option<DeliveryPolicyIn>>,
    /// New payload filter, for events accepted afterwards; `null` removes it.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Option<Value>>,
    /// New batching, from the next claim on; `null` = one event per request.
    #[serde(default, deserialize_with = "super::double_option")]
    #[schema(value_type = Option<BatchingIn>)]
    pub batch: Option<Option<BatchingIn>>,
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
    /// Its own cap on attempts in flight; `null`: the server's `[delivery]
    /// max_in_flight_per_endpoint`.
    pub max_in_flight: Option<i32>,
    /// Attempts it may have in flight now: its adaptive window within its cap (1 for FIFO).
    pub effective_in_flight: i32,
    /// Its circuit breaker.
    pub circuit: CircuitOut,
    /// Requests per second, if limited.
    pub rate_limit_per_second: Option<i32>,
    /// Its own timeout and retry rules, and those in force.
    pub delivery: DeliveryPolicyOut,
    /// Payload filter; `null` = every event of its types.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Batched delivery; `null` = one event per request.
    pub batch: Option<BatchingOut>,
    /// `hmac-sha256` or `ed25519`.
    pub signature_scheme: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl EndpointOut {
    /// The endpoint as shown, its policy resolved against the server's `[delivery]` values.
    pub(crate) fn new(e: Endpoint, state: &AppState) -> Self {
        EndpointOut {
            delivery: DeliveryPolicyOut::new(&e.delivery, &state.config.delivery.policy_server()),
            signature_scheme: e.signature_scheme.as_str().to_owned(),
            filter: e.filter,
            batch: e.batch.map(BatchingOut::from),
            id: e.id,
            tenant_id: e.tenant_id,
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            disabled_at: e.disabled_at.map(format_micros),
            headers: e.headers.into_iter().map(|(k, v)| (k, mask_header_value(&v))).collect(),
            effective_in_flight: effective_in_flight(
                e.fifo,
                e.in_flight_window.unwrap_or(state.config.delivery.initial_in_flight),
                e.max_in_flight.unwrap_or(state.config.delivery.max_in_flight_per_endpoint),
            ),
            circuit: CircuitOut {
                state: e.circuit.state.as_str(),
                opened_at: e.circuit.opened_at.map(format_micros),
                next_probe_at: e.circuit.next_probe_at.map(format_micros),
                consecutive_failures: e.circuit.consecutive_failures,
            },
            fifo: e.fifo,
            max_in_flight: e.max_in_flight,
            rate_limit_per_second: e.rate_limit_per_second,
            created_at: format_micros(e.created_at),
            updated_at: format_micros(e.updated_at),
        }
    }
}

/// An endpoint's circuit breaker (DESIGN §14).
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitOut {
    /// `closed` (deliveries flow), `open` (the backlog waits for a probe) or `half_open` (a probe
    /// is in flight).
    #[schema(value_type = String, pattern = "^(closed|open|half_open)$")]
    pub state: &'static str,
    /// When it opened (RFC 3339), while not closed.
    pub opened_at: Option<String>,
    /// Open: when the next probe may go; half-open: the probe's deadline (RFC 3339).
    pub next_probe_at: Option<String>,
    /// Failures on the endpoint's side since its last 2xx.
    pub consecutive_failures: i32,
}

/// A new endpoint: the only response besides `GET …/secret` that carries the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointCreatedOut {
    #[serde(flatten)]
    /// The endpoint.
    pub endpoint: EndpointOut,
    /// The signing secret, `whsec_…`; `null` for `ed25519` (Herald keeps the signing key).
    pub secret: Option<String>,
    /// For `ed25519`: the `whpk_…` public key receivers verify with; `null` for `hmac-sha256`.
    pub public_key: Option<String>,
}

/// What a receiver needs to verify: the HMAC secret, or the ed25519 public key (never the
/// signing key).
fn shown_keys(secret: &str) -> (Option<String>, Option<String>) {
    match Scheme::of(secret) {
        Scheme::HmacSha256 => (Some(secret.to_owned()), None),
        Scheme::Ed25519 => (None, public_key(secret)),
    }
}

/// Checks an imported secret against the scheme it is for.
fn check_imported(scheme: Scheme, secret: &str, invalid: &mut Invalid) {
    let checked = match scheme {
        Scheme::HmacSha256 => validate_secret(secret),
        Scheme::Ed25519 => parse_signing_key(secret).map(|_| ()),
    };
    if let Err(why) = checked {
        invalid.push("secret", why);
    }
}

/// A new key for `scheme`.
fn generate_key(scheme: Scheme) -> String {
    match scheme {
        Scheme::HmacSha256 => generate_secret(),
        Scheme::Ed25519 => generate_signing_key(),
    }
}

/// Reads `signature_scheme` (absent = `default`).
fn scheme_field(text: Option<&str>, default: Scheme, invalid: &mut Invalid) -> Scheme {
    match text {
        None => default,
        Some(text) => Scheme::parse(text).unwrap_or_else(|| {
            invalid.push("signature_scheme", "must be `hmac-sha256` or `ed25519`");
            default
        }),
    }
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
    /// Current secret, `whsec_…`; `null` for `ed25519` (the signing key is never shown).
    pub secret: Option<String>,
    /// For `ed25519`: the current `whpk_…` public key.
    pub public_key: Option<String>,
    /// `hmac-sha256` or `ed25519`.
    pub signature_scheme: String,
    /// While a rotation's grace period lasts, when the previous secret stops signing.
    pub previous_secret_expires_at: Option<String>,
}

/// Checks every editable field of `endpoint`, including that exact event type names exist and
/// are not archived.
/// `check_catalogue` is false when a PATCH leaves `event_types` alone: a subscription to a type
/// archived since stays valid until it is rewritten.
async fn validate(
    state: &AppState,
    invalid: &mut Invalid,
    endpoint: &mut Endpoint,
    check_catalogue: bool,
) -> Result<(), ApiError> {
    let security = &state.config.security;
    let operations = match state.config.operations.tenant.as_deref() {
        Some(key) => state.store.get_tenant(key).await.is_ok_and(|t| t.id == endpoint.tenant_id),
        None => false,
    };
    let allow: Vec<ipnet::IpNet> = if operations {
        security.allow_cidrs.iter().chain(&security.operations_allow_cidrs).copied().collect()
    } else {
        security.allow_cidrs.clone()
    };
    if let Err(why) = validate_url(&endpoint.url, state.config.dev, &allow) {
        invalid.push("url", why);
    }
    check_text(invalid, "description", &endpoint.description, 2000);
    let (normalised, _) = parse_event_types(invalid, &endpoint.event_types);
    for (i, entry) in endpoint.event_types.iter().enumerate() {
        if let Ok(Pattern::Exact(name)) = Pattern::parse(entry)
            && check_catalogue
        {
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
    if let Some(max) = endpoint.max_in_flight
        && !MAX_IN_FLIGHT_RANGE.contains(&max)
    {
        invalid.push("max_in_flight", "must be between 1 and 1000, or null for the server's default");
    }
    if let Some(rate) = endpoint.rate_limit_per_second
        && !RATE_LIMIT_RANGE.contains(&rate)
    {
        invalid.push("rate_limit_per_second", "must be between 1 and 100000, or null for no limit");
    }
    if let Some(reason) = &endpoint.disabled_reason {
        check_text(invalid, "disabled_reason", reason, 500);
    }
    endpoint.delivery.check(&state.config.delivery.policy_server(), "delivery", invalid);
    if let Some(filter) = &endpoint.filter
        && let Err(error) = Filter::compile(filter)
    {
        invalid.push(format!("filter{}", error.pointer), error.message);
    }
    Ok(())
}

async fn load(state: &AppState, tenant_id: &str, id: &str) -> Result<Endpoint, ApiError> {
    state.store.get_endpoint(tenant_id, id).await.or_not_found("endpoint", id)
}

/// Register an endpoint for a tenant.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints", request_body = EndpointIn,
    params(TenantPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 201, description = "Created, with its signing secret", body = EndpointCreatedOut), ErrorResponses))]
pub async fn create_endpoint(
    TenantScope { state, tenant, .. }: TenantScope,
    ApiJson(body): ApiJson<EndpointIn>,
) -> Result<(StatusCode, Json<EndpointCreatedOut>), ApiError> {
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
        max_in_flight: body.max_in_flight,
        in_flight_window: None,
        circuit: Circuit::default(),
        batch: None,
        rate_limit_per_second: body.rate_limit_per_second,
        delivery: DeliveryPolicy::default(),
        filter: body.filter.filter(|f| !f.is_null()),
        signature_scheme: Scheme::HmacSha256,
        created_at: now,
        updated_at: now,
    };
    let mut invalid = Invalid::default();
    endpoint.signature_scheme =
        scheme_field(body.signature_scheme.as_deref(), Scheme::HmacSha256, &mut invalid);
    if let Some(delivery) = body.delivery {
        delivery.apply(&mut endpoint.delivery, &mut invalid);
    }
    endpoint.batch = body.batch.and_then(|batch| batch.read(&mut invalid));
    validate(&state, &mut invalid, &mut endpoint, true).await?;
    if let Some(secret) = &body.secret {
        check_imported(endpoint.signature_scheme, secret, &mut invalid);
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    let limit = state.config.api.max_endpoints_per_tenant;
    let secret = body.secret.unwrap_or_else(|| generate_key(endpoint.signature_scheme));
    if !state.store.insert_endpoint(&endpoint, &secret, limit).await? {
        return Err(ApiError::Conflict(format!("this tenant already has the maximum of {limit} endpoints")));
    }
    let (secret, public_key) = shown_keys(&secret);
    let endpoint = EndpointOut::new(endpoint, &state);
    Ok((StatusCode::CREATED, Json(EndpointCreatedOut { endpoint, secret, public_key })))
}

/// List a tenant's endpoints, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints", tag = "endpoints",
    params(TenantPath, PageParams),
    responses((status = 200, description = "A page of endpoints, newest first", body = EndpointList), ErrorResponses))]
pub async fn list_endpoints(
    TenantScope { state, tenant, .. }: TenantScope,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<EndpointList>, ApiError> {
    let pager = Pager::new(&page, &format!("endpoints|{}", tenant.id))?;
    let rows = state.store.list_endpoints(&tenant.id, &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |e| &e.id);
    Ok(Json(EndpointList {
        data: rows.into_iter().map(|e| EndpointOut::new(e, &state)).collect(),
        next_cursor,
    }))
}

/// Get one endpoint.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints",
    params(EndpointPath),
    responses((status = 200, description = "The endpoint", body = EndpointOut), ErrorResponses))]
pub async fn get_endpoint(ItemScope(state, tenant, ep): ItemScope) -> Result<Json<EndpointOut>, ApiError> {
    Ok(Json(EndpointOut::new(load(&state, &tenant.id, &ep).await?, &state)))
}

/// Update an endpoint. Changes apply to the next attempt; `event_types` to events accepted afterwards.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints", request_body = EndpointPatch,
    params(EndpointPath),
    responses((status = 200, description = "The endpoint", body = EndpointOut), ErrorResponses))]
pub async fn update_endpoint(
    ItemScope(state, tenant, ep): ItemScope,
    ApiJson(patch): ApiJson<EndpointPatch>,
) -> Result<Json<EndpointOut>, ApiError> {
    let mut endpoint = load(&state, &tenant.id, &ep).await?;
    let now = now_micros();
    if let Some(url) = patch.url {
        endpoint.url = url;
    }
    if let Some(description) = patch.description {
        endpoint.description = description;
    }
    let check_catalogue = patch.event_types.is_some();
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
    let mut invalid = Invalid::default();
    match patch.delivery {
        Some(Some(delivery)) => delivery.apply(&mut endpoint.delivery, &mut invalid),
        Some(None) => endpoint.delivery = DeliveryPolicy::default(),
        None => {}
    }
    if let Some(filter) = patch.filter {
        endpoint.filter = filter.filter(|f| !f.is_null());
    }
    if let Some(batch) = patch.batch {
        endpoint.batch = batch.and_then(|batch| batch.read(&mut invalid));
    }
    match patch.enabled {
        Some(true) => {
            endpoint.enabled = true;
            endpoint.disabled_reason = None;
            endpoint.disabled_at = None;
        }
        Some(false) if endpoint.enabled => {
            metrics::counter!(crate::metrics::ENDPOINTS_DISABLED_TOTAL).increment(1);
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
    validate(&state, &mut invalid, &mut endpoint, check_catalogue).await?;
    invalid.into_result().map_err(ApiError::Invalid)?;
    endpoint.updated_at = now;
    state.store.update_endpoint(&endpoint).await.or_not_found("endpoint", &ep)?;
    state.wakeup.notify_one();
    Ok(Json(EndpointOut::new(endpoint, &state)))
}

/// Delete an endpoint: 404 from then on; its pending deliveries fail with `endpoint_deleted`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/endpoints/{ep}", tag = "endpoints",
    params(EndpointPath),
    responses((status = 204, description = "deleted"), ErrorResponses))]
pub async fn delete_endpoint(ItemScope(state, tenant, ep): ItemScope) -> Result<StatusCode, ApiError> {
    state.store.delete_endpoint(&tenant.id, &ep, now_micros()).await.or_not_found("endpoint", &ep)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read the endpoint's signing secret.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{ep}/secret", tag = "endpoints",
    params(EndpointPath),
    responses((status = 200, description = "The current secret", body = SecretOut), ErrorResponses))]
pub async fn get_endpoint_secret(
    ItemScope(state, tenant, ep): ItemScope,
) -> Result<Json<SecretOut>, ApiError> {
    let secrets = state.store.get_secrets(&tenant.id, &ep).await.or_not_found("endpoint", &ep)?;
    let now = now_micros();
    let (secret, public_key) = shown_keys(&secrets.current);
    Ok(Json(SecretOut {
        secret,
        public_key,
        signature_scheme: Scheme::of(&secrets.current).as_str().to_owned(),
        previous_secret_expires_at: secrets.previous_expires_at.filter(|at| *at > now).map(format_micros),
    }))
}

/// Body of `POST …/secret/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// How long the old secret keeps signing, 0–604800 seconds (default 86400).
    #[schema(minimum = 0, maximum = 604800)]
    pub grace_period_seconds: Option<i64>,
    /// Your own new secret (`whsec_…`, or `whsk_…` for ed25519); generated when absent.
    pub secret: Option<String>,
    /// Switch scheme with the rotation (`hmac-sha256` or `ed25519`; default: keep the current
    /// one). During the grace both keys sign, each entry with its own prefix.
    #[schema(pattern = "^(hmac-sha256|ed25519)$")]
    pub signature_scheme: Option<String>,
}

/// The new secret after a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedOut {
    /// The new current secret; `null` for `ed25519`.
    pub secret: Option<String>,
    /// For `ed25519`: the new `whpk_…` public key.
    pub public_key: Option<String>,
    /// When the previous secret stops signing (`null` with a grace period of 0).
    pub previous_secret_expires_at: Option<String>,
}

/// Parses an optional JSON body: an empty body means the defaults.
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    super::extract::parse_json_object(body)
}

/// Rotate the signing secret. Until the grace period ends, attempts carry two signatures, the
/// new secret's first.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/secret/rotate", tag = "endpoints", request_body(content = Option<RotateIn>, description = "Optional: an empty body means the defaults"),
    params(EndpointPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 200, description = "Rotated: the new secret", body = RotatedOut), ErrorResponses))]
pub async fn rotate_endpoint_secret(
    ItemScope(state, tenant, ep): ItemScope,
    RawBody(body): RawBody,
) -> Result<Json<RotatedOut>, ApiError> {
    let input: RotateIn = optional_body(&body)?;
    let mut invalid = Invalid::default();
    let grace = input.grace_period_seconds.unwrap_or(86_400);
    if !(0..=604_800).contains(&grace) {
        invalid.push("grace_period_seconds", "must be between 0 and 604800");
    }
    let endpoint = load(&state, &tenant.id, &ep).await?;
    let scheme = scheme_field(input.signature_scheme.as_deref(), endpoint.signature_scheme, &mut invalid);
    if let Some(secret) = &input.secret {
        check_imported(scheme, secret, &mut invalid);
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    let secret = input.secret.unwrap_or_else(|| generate_key(scheme));
    let expires = now_micros() + grace * 1_000_000;
    state.store.rotate_secret(&tenant.id, &ep, &secret, expires).await.or_not_found("endpoint", &ep)?;
    let (secret, public_key) = shown_keys(&secret);
    Ok(Json(RotatedOut {
        secret,
        public_key,
        previous_secret_expires_at: (grace > 0).then(|| format_micros(expires)),
    }))
}

/// End a rotation's grace period now: only the current secret signs from the next attempt on.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/endpoints/{ep}/secret/previous", tag = "endpoints",
    params(EndpointPath),
    responses((status = 204, description = "the previous secret no longer signs"), ErrorResponses))]
pub async fn delete_previous_secret(ItemScope(state, tenant, ep): ItemScope) -> Result<StatusCode, ApiError> {
    state.store.delete_previous_secret(&tenant.id, &ep).await.or_not_found("endpoint", &ep)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST …/disable`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableIn {
    /// Recorded as `disabled_reason`.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

async fn set_enabled(
    state: &AppState,
    tenant: &Tenant,
    ep: &str,
    enabled: bool,
    reason: Option<String>,
) -> Result<Json<EndpointOut>, ApiError> {
    let mut endpoint = load(state, &tenant.id, ep).await?;
    let now = now_micros();
    if enabled {
        endpoint.enabled = true;
        endpoint.disabled_reason = None;
        endpoint.disabled_at = None;
    } else {
        let mut invalid = Invalid::default();
        if let Some(reason) = &reason {
            check_text(&mut invalid, "reason", reason, 500);
        }
        invalid.into_result().map_err(ApiError::Invalid)?;
        if endpoint.enabled {
            endpoint.disabled_at = Some(now);
            metrics::counter!(crate::metrics::ENDPOINTS_DISABLED_TOTAL).increment(1);
        }
        endpoint.enabled = false;
        endpoint.disabled_reason = Some(reason.unwrap_or_else(|| "disabled by request".to_owned()));
    }
    endpoint.updated_at = now;
    state.store.update_endpoint(&endpoint).await.or_not_found("endpoint", ep)?;
    // An operational event may have been written with the change.
    state.wakeup.notify_one();
    Ok(Json(EndpointOut::new(endpoint, state)))
}

/// Enable an endpoint (clears the disabled reason). Nothing is re-queued: use `recover`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/enable", tag = "endpoints",
    params(EndpointPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 200, description = "The endpoint", body = EndpointOut), ErrorResponses))]
pub async fn enable_endpoint(ItemScope(state, tenant, ep): ItemScope) -> Result<Json<EndpointOut>, ApiError> {
    set_enabled(&state, &tenant, &ep, true, None).await
}

/// Disable an endpoint: no more claims; its pending deliveries fail with `endpoint_disabled`
/// and can be replayed with `recover` after enabling.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/disable", tag = "endpoints", request_body(content = Option<DisableIn>, description = "Optional: an empty body means no reason"),
    params(EndpointPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 200, description = "The endpoint", body = EndpointOut), ErrorResponses))]
pub async fn disable_endpoint(
    ItemScope(state, tenant, ep): ItemScope,
    RawBody(body): RawBody,
) -> Result<Json<EndpointOut>, ApiError> {
    let input: DisableIn = optional_body(&body)?;
    set_enabled(&state, &tenant, &ep, false, input.reason).await
}

/// Send a real `webhook.test` event `{endpoint_id}` to this endpoint alone, even when it is
/// disabled: one attempt, no retries, no re-enabling.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/test", tag = "endpoints",
    params(EndpointPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 202, description = "Accepted: the test event and its one delivery are committed", body = super::events::EventAccepted), ErrorResponses))]
pub async fn test_endpoint(
    ItemScope(state, tenant, ep): ItemScope,
) -> Result<(StatusCode, Json<super::events::EventAccepted>), ApiError> {
    use crate::domain::event::envelope;
    use crate::domain::event_type::WEBHOOK_TEST;
    let endpoint = load(&state, &tenant.id, &ep).await?;
    let id = new_id(IdKind::Event);
    let created_at = now_micros();
    let timestamp = format_micros(created_at);
    let data = serde_json::json!({ "endpoint_id": endpoint.id }).to_string();
    let event = crate::storage::NewEvent {
        payload: envelope(&id, WEBHOOK_TEST, &timestamp, &data),
        id: id.clone(),
        tenant_id: tenant.id,
        event_type: WEBHOOK_TEST.to_owned(),
        idempotency: None,
        created_at,
        only_endpoint: Some(endpoint.id),
        trace: None,
    };
    state.store.ingest(std::slice::from_ref(&event), created_at).await?;
    state.wakeup.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(super::events::EventAccepted { id, event: WEBHOOK_TEST.to_owned(), timestamp, deliveries: 1 }),
    ))
}

/// Body of `POST …/recover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverIn {
    /// Replay failed deliveries created at or after this time (RFC 3339 with offset).
    #[schema(format = DateTime)]
    pub since: String,
    /// … and before this time (default now); the window is at most 14 days.
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// How many deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverOut {
    /// Deliveries made pending.
    pub requeued: u64,
}

/// Replay this endpoint's failed deliveries created in `[since, until)`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/recover", tag = "endpoints", request_body = RecoverIn,
    params(EndpointPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 202, description = "The failed deliveries made pending again", body = RecoverOut), ErrorResponses))]
pub async fn recover_endpoint(
    ItemScope(state, tenant, ep): ItemScope,
    ApiJson(input): ApiJson<RecoverIn>,
) -> Result<(StatusCode, Json<RecoverOut>), ApiError> {
    use crate::domain::time::parse_rfc3339;
    let now = now_micros();
    let mut invalid = Invalid::default();
    let since = parse_rfc3339(&input.since).map_err(|why| invalid.push("since", why)).ok();
    let until = match &input.until {
        Some(text) => parse_rfc3339(text).map_err(|why| invalid.push("until", why)).ok(),
        None => Some(now),
    };
    if let (Some(since), Some(until)) = (since, until) {
        if since >= until {
            invalid.push("since", "must be before `until`");
        } else if until - since > 14 * 86_400 * 1_000_000 {
            invalid.push("since", "the window may span at most 14 days");
        }
    }
    invalid.into_result().map_err(ApiError::Invalid)?;
    let (since, until) = (since.unwrap_or_default(), until.unwrap_or(now));
    let requeued = state
        .store
        .recover_endpoint(&tenant.id, &ep, since, until)
        .await
        .map_err(|e| super::deliveries::retry_error(e, "endpoint", &ep))?;
    if requeued > 0 {
        state.wakeup.notify_one();
    }
    Ok((StatusCode::ACCEPTED, Json(RecoverOut { requeued })))
}

/// Body of `POST …/filter/test`: a filter (absent = the endpoint's own) and either an event
/// type with its `data`, or a stored event's id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterTestIn {
    /// The filter to try; absent = the endpoint's own (no filter matches everything).
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Event type of a trial event (with `data`).
    pub event: Option<String>,
    /// `data` of a trial event (with `event`).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// A stored event (`evt_…`) to try instead.
    pub event_id: Option<String>,
}

/// Whether a filter matches an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilterTestOut {
    /// The event would get a delivery (as far as the filter decides).
    pub matched: bool,
}

/// Try a payload filter against an event, before or after setting it.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/endpoints/{ep}/filter/test", tag = "endpoints", request_body = FilterTestIn,
    params(EndpointPath),
    responses((status = 200, description = "Whether the filter matches the event", body = FilterTestOut), ErrorResponses))]
pub async fn test_filter(
    ItemScope(state, tenant, ep): ItemScope,
    ApiJson(body): ApiJson<FilterTestIn>,
) -> Result<Json<FilterTestOut>, ApiError> {
    let endpoint = load(&state, &tenant.id, &ep).await?;
    let filter = match body.filter.or(endpoint.filter).filter(|f| !f.is_null()) {
        None => return Ok(Json(FilterTestOut { matched: true })),
        Some(filter) => Filter::compile(&filter)
            .map_err(|error| ApiError::invalid(&format!("filter{}", error.pointer), error.message))?,
    };
    let envelope: Value = match (body.event, body.data, body.event_id) {
        (Some(event), Some(data), None) => serde_json::json!({
            "id": "evt_test",
            "event": event,
            "timestamp": format_micros(now_micros()),
            "data": data,
        }),
        (None, None, Some(id)) => {
            let stored = state.store.get_event(&tenant.id, &id).await.or_not_found("event", &id)?;
            let Some(payload) = stored.payload else {
                return Err(ApiError::Conflict(format!("event `{id}`'s payload was removed by retention")));
            };
            serde_json::from_str(&payload).map_err(|e| ApiError::Internal(e.into()))?
        }
        _ => return Err(ApiError::invalid("body", "give either `event` and `data`, or `event_id`")),
    };
    Ok(Json(FilterTestOut { matched: filter.matches(&envelope) }))
}
