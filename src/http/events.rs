//! Ingest (`POST …/events`, `POST …/events/batch`) and the event read routes. `data` is kept as
//! the producer's raw JSON (whitespace removed), parsed only to validate it.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorResponses, OrNotFound};
use super::extract::{
    ApiJson, ApiQuery, ItemPath, ItemScope, PageParams, Pager, TenantPath, TenantScope, TimeRange,
};
use crate::domain::Invalid;
use crate::domain::delivery::{Delivery, Event};
use crate::domain::event::{data_of_envelope, envelope, minify, parse_data, validate_idempotency_key};
use crate::domain::id::{IdKind, new_id};
use crate::domain::time::{format_micros, now_micros};
use crate::domain::trace::TraceContext;
use crate::storage::{EventFilter, IngestOutcome, NewEvent, StoreError};

/// Most events in one batch request.
pub const MAX_BATCH: usize = 1000;
/// Room for the envelope fields around `data` in a single-event request body.
const REQUEST_OVERHEAD: usize = 16 * 1024;

/// The body limit of a single-event request: the payload limit and room for the fields around it.
pub(crate) fn body_limit(
    payload_limit: usize,
) -> (axum::extract::DefaultBodyLimit, axum::Extension<super::extract::BodyLimit>) {
    super::extract::body_limit(payload_limit + REQUEST_OVERHEAD)
}

/// One event to emit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// A catalogued, non-archived event type.
    #[schema(example = "workflow.completed")]
    pub event: String,
    /// A JSON object; sent exactly as given, whitespace removed.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// 1–255 printable ASCII characters; wins over the `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// The answer to an accepted event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventAccepted {
    /// `evt_…` (the `webhook-id` receivers see).
    pub id: String,
    /// Event type.
    pub event: String,
    /// When Herald accepted it (RFC 3339), as in the envelope.
    pub timestamp: String,
    /// Delivery rows created (disabled endpoints included).
    pub deliveries: i32,
}

/// Body of the batch route.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    /// Up to 1,000 events, each `{event, data, idempotency_key?}`.
    #[schema(value_type = Vec<EventIn>)]
    pub events: Vec<Box<RawValue>>,
}

/// One batch item's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemOut {
    /// Position in the request.
    pub index: usize,
    /// 202 accepted, 409 idempotency conflict, 422 invalid.
    pub status: u16,
    /// The event id (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Deliveries created (202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<i32>,
    /// True when an idempotency key returned an earlier event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<bool>,
    /// What was wrong (409, 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The batch answer, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOut {
    /// One result per input event.
    pub data: Vec<BatchItemOut>,
}

/// A stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    /// `evt_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Event type.
    pub event: String,
    /// RFC 3339.
    pub timestamp: String,
    /// The payload as sent; `null` once removed by retention.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
    /// The producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// Delivery rows created at ingest.
    pub deliveries: i32,
    /// Per-delivery state (single-event route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_summaries: Option<Vec<DeliverySummary>>,
}

/// One delivery of an event, in brief.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliverySummary {
    /// `dlv_…`
    pub id: String,
    /// Target.
    pub endpoint_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempt_count: i32,
    /// Next attempt (pending only).
    pub next_attempt_at: Option<String>,
}

impl From<Delivery> for DeliverySummary {
    fn from(d: Delivery) -> Self {
        DeliverySummary {
            id: d.id,
            endpoint_id: d.endpoint_id,
            status: d.status.as_str().to_owned(),
            attempt_count: d.attempt_count,
            next_attempt_at: d.next_attempt_at.map(format_micros),
        }
    }
}

impl From<Event> for EventOut {
    fn from(e: Event) -> Self {
        let data = e
            .payload
            .as_deref()
            .and_then(data_of_envelope)
            .and_then(|raw| RawValue::from_string(raw.to_owned()).ok());
        EventOut {
            id: e.id,
            tenant_id: e.tenant_id,
            event: e.event_type,
            timestamp: format_micros(e.created_at),
            data,
            idempotency_key: e.idempotency_key,
            deliveries: e.deliveries,
            delivery_summaries: None,
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Newest first.
    pub data: Vec<EventOut>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// Why one event cannot be accepted.
enum Refusal {
    TooLarge(String),
    Invalid(Invalid),
    Store(ApiError),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooLarge(detail) => ApiError::PayloadTooLarge(detail),
            Refusal::Invalid(invalid) => ApiError::Invalid(invalid),
            Refusal::Store(error) => error,
        }
    }
}

/// Validates one event and builds its envelope.
async fn prepare(
    state: &AppState,
    tenant_id: &str,
    input: EventIn,
    header_key: Option<&str>,
    trace: Option<&TraceContext>,
) -> Result<NewEvent, Refusal> {
    let mut invalid = Invalid::default();
    let raw = input.data.get();
    if raw.len() > state.config.ingest.payload_limit {
        return Err(Refusal::TooLarge(format!(
            "`data` is {} bytes; the limit is {} bytes",
            raw.len(),
            state.config.ingest.payload_limit
        )));
    }
    let schema = match state.lookups.event_type(&state.store, &input.event).await {
        Ok(t) if t.archived => {
            invalid.push("event", format!("event type `{}` is archived", input.event));
            None
        }
        Ok(t) => match state.validators.of(&t) {
            Ok(validator) => validator,
            Err(error) => {
                invalid.push("event", format!("the event type's schema cannot be used: {error}"));
                None
            }
        },
        Err(StoreError::NotFound) => {
            invalid.push("event", format!("event type `{}` does not exist", input.event));
            None
        }
        Err(other) => return Err(Refusal::Store(other.into())),
    };
    match parse_data(raw) {
        Ok(value) => {
            if let Some(validator) = &schema {
                for error in validator.iter_errors(&value).take(20) {
                    let path = error.instance_path().to_string();
                    invalid.push(format!("data{path}"), error.to_string());
                }
            }
        }
        Err(why) => invalid.push("data", why),
    }
    let key = input.idempotency_key.as_deref().or(header_key);
    if let Some(key) = key
        && let Err(why) = validate_idempotency_key(key)
    {
        invalid.push("idempotency_key", why);
    }
    invalid.into_result().map_err(Refusal::Invalid)?;
    let data = minify(raw);
    let id = new_id(IdKind::Event);
    let created_at = now_micros();
    let payload = envelope(&id, &input.event, &format_micros(created_at), &data);
    let idempotency = key.map(|key| {
        let hash = hex::encode(Sha256::digest(format!("{}\n{data}", input.event).as_bytes()));
        (key.to_owned(), hash)
    });
    Ok(NewEvent {
        id,
        tenant_id: tenant_id.to_owned(),
        event_type: input.event,
        payload,
        idempotency,
        created_at,
        only_endpoint: None,
        trace: trace.cloned(),
    })
}

/// The W3C trace context of an ingest request (`traceparent`, `tracestate`), if it has a valid one.
fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    TraceContext::from_headers(header("traceparent"), header("tracestate"))
}

fn commit_error(error: crate::ingest::CommitError) -> ApiError {
    match error {
        crate::ingest::CommitError::Closed => ApiError::Unavailable,
        crate::ingest::CommitError::Store(error) => match &*error {
            StoreError::InvalidText => {
                ApiError::invalid("body", "text values must not contain NUL characters")
            }
            // The whole group was rolled back: nothing of this request is stored; retry it.
            _ => ApiError::Unavailable,
        },
    }
}

fn count_ingested(event_type: &str, deliveries: i32) {
    metrics::counter!(crate::metrics::EVENTS_INGESTED, "event_type" => event_type.to_owned()).increment(1);
    metrics::counter!(crate::metrics::DELIVERIES_CREATED).increment(deliveries as u64);
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

fn accepted(event: &NewEvent, deliveries: i32) -> EventAccepted {
    EventAccepted {
        id: event.id.clone(),
        event: event.event_type.clone(),
        timestamp: format_micros(event.created_at),
        deliveries,
    }
}

fn replayed(first: &Event) -> EventAccepted {
    EventAccepted {
        id: first.id.clone(),
        event: first.event_type.clone(),
        timestamp: format_micros(first.created_at),
        deliveries: first.deliveries,
    }
}

fn idempotency_since(state: &AppState) -> i64 {
    now_micros() - state.config.ingest.idempotency_window.as_micros() as i64
}

/// Emit one event for a tenant. 202 means the event and its deliveries are committed.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events", tag = "events", request_body = EventIn,
    params(TenantPath, super::idempotency::IdempotencyKeyHeader),
    responses((status = 202, description = "Accepted: the event and its deliveries are committed", body = EventAccepted), ErrorResponses))]
pub async fn create_event(
    TenantScope { state, auth, tenant }: TenantScope,
    headers: HeaderMap,
    ApiJson(input): ApiJson<EventIn>,
) -> Result<Response, ApiError> {
    auth.require_admin()?;
    let header_key = idempotency_header(&headers)?;
    let (span, trace) = ingest_span(&state, &headers, &tenant.id, 1);
    let answer = match prepare(&state, &tenant.id, input, header_key, trace.as_ref()).await {
        Ok(event) => commit_one(&state, event).await,
        Err(refusal) => Err(refusal.into()),
    };
    if let Some(span) = span {
        span.end_ingest(answer.as_ref().map_or_else(|e| e.status(), |r| r.status()).as_u16());
    }
    answer
}

/// The span of an ingest request (when traces are exported) and the trace context its events
/// keep: the span's, under the producer's `traceparent`, or the producer's alone.
fn ingest_span(
    state: &AppState,
    headers: &HeaderMap,
    tenant_id: &str,
    events: usize,
) -> (Option<crate::telemetry::traces::Span>, Option<TraceContext>) {
    let producer = trace_context(headers);
    let span = state.traces.ingest(producer.as_ref(), tenant_id, events);
    let state_header = producer.as_ref().and_then(|t| t.state.clone());
    let kept = span.as_ref().and_then(|span| span.context(state_header.as_deref())).or(producer);
    (span, kept)
}

/// Commits one prepared event and answers for it.
async fn commit_one(state: &AppState, event: NewEvent) -> Result<Response, ApiError> {
    let outcome =
        state.committer.ingest(vec![event.clone()], idempotency_since(state)).await.map_err(commit_error)?;
    match outcome.into_iter().next() {
        Some(IngestOutcome::Created { deliveries }) => {
            count_ingested(&event.event_type, deliveries);
            Ok((StatusCode::ACCEPTED, Json(accepted(&event, deliveries))).into_response())
        }
        Some(IngestOutcome::Replayed(first)) => {
            let mut response = (StatusCode::ACCEPTED, Json(replayed(&first))).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Some(IngestOutcome::KeyConflict) => Err(ApiError::Conflict(
            "this idempotency key was already used with a different `event` or `data`".into(),
        )),
        None => Err(ApiError::Internal(anyhow::anyhow!("ingest returned no outcome"))),
    }
}

/// Emit up to 1,000 events. Not atomic: every accepted item is committed before the answer, and
/// each item has its own status.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/events/batch", tag = "events", request_body = BatchIn,
    params(TenantPath),
    responses((status = 202, description = "Processed: one result per event, in input order", body = BatchOut), ErrorResponses))]
pub async fn create_events_batch(
    TenantScope { state, auth, tenant }: TenantScope,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<BatchIn>,
) -> Result<(StatusCode, Json<BatchOut>), ApiError> {
    auth.require_admin()?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(ApiError::invalid("events", format!("must hold between 1 and {MAX_BATCH} events")));
    }
    let (span, trace) = ingest_span(&state, &headers, &tenant.id, batch.events.len());
    let answer = ingest_batch(&state, &tenant.id, batch, trace.as_ref()).await;
    if let Some(span) = span {
        span.end_ingest(answer.as_ref().map_or_else(|e| e.status(), |(status, _)| *status).as_u16());
    }
    answer
}

async fn ingest_batch(
    state: &AppState,
    tenant_id: &str,
    batch: BatchIn,
    trace: Option<&TraceContext>,
) -> Result<(StatusCode, Json<BatchOut>), ApiError> {
    let mut results: Vec<BatchItemOut> = Vec::with_capacity(batch.events.len());
    let mut ready: Vec<(usize, NewEvent)> = Vec::new();
    for (index, raw) in batch.events.into_iter().enumerate() {
        let refusal = match serde_json::from_str::<EventIn>(raw.get()) {
            Ok(input) => match prepare(state, tenant_id, input, None, trace).await {
                Ok(event) => {
                    ready.push((index, event));
                    None
                }
                Err(Refusal::Store(error)) => return Err(error),
                Err(Refusal::TooLarge(detail)) => Some(detail),
                Err(Refusal::Invalid(invalid)) => Some(invalid.to_string()),
            },
            Err(error) => Some(format!("not a valid event: {error}")),
        };
        results.push(BatchItemOut {
            index,
            status: if refusal.is_some() { 422 } else { 202 },
            id: None,
            deliveries: None,
            replayed: None,
            error: refusal,
        });
    }
    let events: Vec<NewEvent> = ready.iter().map(|(_, e)| e.clone()).collect();
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        state.committer.ingest(events, idempotency_since(state)).await.map_err(commit_error)?
    };
    for ((index, event), outcome) in ready.iter().zip(outcomes) {
        let item = &mut results[*index];
        match outcome {
            IngestOutcome::Created { deliveries } => {
                count_ingested(&event.event_type, deliveries);
                item.id = Some(event.id.clone());
                item.deliveries = Some(deliveries);
            }
            IngestOutcome::Replayed(first) => {
                item.id = Some(first.id);
                item.deliveries = Some(first.deliveries);
                item.replayed = Some(true);
            }
            IngestOutcome::KeyConflict => {
                item.status = 409;
                item.error =
                    Some("this idempotency key was already used with a different `event` or `data`".into());
            }
        }
    }
    Ok((StatusCode::ACCEPTED, Json(BatchOut { data: results })))
}

/// Filters of the event list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this event type.
    pub event_type: Option<String>,
    #[serde(flatten)]
    #[param(ignore)]
    range: TimeRange,
    #[serde(flatten)]
    #[param(ignore)]
    page: PageParams,
}

/// List a tenant's events, newest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(TenantPath, EventQuery, TimeRange, PageParams),
    responses((status = 200, description = "A page of events, newest first", body = EventList), ErrorResponses))]
pub async fn list_events(
    TenantScope { state, tenant, .. }: TenantScope,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Json<EventList>, ApiError> {
    let filter = EventFilter { event_type: query.event_type.clone(), created: query.range.parse()? };
    let pager = Pager::new(&query.page, &format!("events|{}|{:?}", tenant.id, filter))?;
    let rows = state.store.list_events(&tenant.id, &filter, &pager.query()).await?;
    let (rows, next_cursor) = pager.finish(rows, |e| &e.id);
    Ok(Json(EventList { data: rows.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Get one event with the state of each of its deliveries.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events/{id}", tag = "events",
    params(ItemPath),
    responses((status = 200, description = "The event with the state of each delivery", body = EventOut), ErrorResponses))]
pub async fn get_event(ItemScope(state, tenant, id): ItemScope) -> Result<Json<EventOut>, ApiError> {
    let event = state.store.get_event(&tenant.id, &id).await.or_not_found("event", &id)?;
    let deliveries = state.store.list_event_deliveries(&event.id).await?;
    let mut out = EventOut::from(event);
    out.delivery_summaries = Some(deliveries.into_iter().map(Into::into).collect());
    Ok(Json(out))
}
