//! Row structs: how stored rows decode (on either backend) and become domain values. They stay
//! private to the storage module.

use std::collections::BTreeMap;

use super::StoreError;
use crate::crypto::Cipher;
use crate::domain::batch::Batching;
use crate::domain::breaker::{Circuit, CircuitState};
use crate::domain::claim::{Candidate, Rate};
use crate::domain::concurrency::{Window, effective_in_flight};
use crate::domain::delivery::{Attempt, Delivery, DeliveryStatus, Event};
use crate::domain::endpoint::{Endpoint, Secrets};
use crate::domain::event_type::EventType;
use crate::domain::tenant::Tenant;
use crate::domain::token::Token;

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: String,
    name: String,
    tenant_id: Option<String>,
    prefix: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
}

impl From<TokenRow> for Token {
    fn from(row: TokenRow) -> Self {
        Token {
            id: row.id,
            name: row.name,
            tenant_id: row.tenant_id,
            prefix: row.prefix,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventTypeRow {
    name: String,
    description: String,
    schema: Option<String>,
    archived: bool,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<EventTypeRow> for EventType {
    type Error = StoreError;
    fn try_from(row: EventTypeRow) -> Result<Self, StoreError> {
        let schema = row.schema.as_deref().map(serde_json::from_str).transpose().map_err(corrupt)?;
        Ok(EventType {
            name: row.name,
            description: row.description,
            schema,
            archived: row.archived,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: String,
    external_id: Option<String>,
    name: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        Ok(Tenant {
            id: row.id,
            external_id: row.external_id,
            name: row.name,
            metadata: serde_json::from_str(&row.metadata).map_err(corrupt)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// The columns an [`EndpointRow`] reads (`select {ENDPOINT_COLUMNS} from endpoints …`).
pub(crate) const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, headers, enabled,
    disabled_reason, disabled_at, fifo, in_flight_limit, in_flight_window, rate_limit_per_second,
    delivery_policy, filter, signature_scheme, circuit_state, circuit_failures, circuit_opened_at,
    circuit_next_probe_at, circuit_failed_probes, batch, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct EndpointRow {
    id: String,
    tenant_id: String,
    url: String,
    description: String,
    event_types: String,
    headers: String,
    enabled: bool,
    disabled_reason: Option<String>,
    disabled_at: Option<i64>,
    fifo: bool,
    in_flight_limit: Option<i32>,
    in_flight_window: Option<i32>,
    rate_limit_per_second: Option<i32>,
    delivery_policy: Option<String>,
    filter: Option<String>,
    signature_scheme: String,
    #[sqlx(flatten)]
    circuit: CircuitRow,
    batch: Option<String>,
    created_at: i64,
    updated_at: i64,
}

/// An endpoint's stored circuit.
#[derive(sqlx::FromRow)]
pub(crate) struct CircuitRow {
    pub(crate) circuit_state: String,
    circuit_failures: i32,
    circuit_opened_at: Option<i64>,
    circuit_next_probe_at: Option<i64>,
    circuit_failed_probes: i32,
}

impl TryFrom<&CircuitRow> for Circuit {
    type Error = StoreError;
    fn try_from(row: &CircuitRow) -> Result<Self, StoreError> {
        Ok(Circuit {
            state: CircuitState::parse(&row.circuit_state)
                .ok_or_else(|| corrupt(format!("circuit state `{}`", row.circuit_state)))?,
            consecutive_failures: row.circuit_failures,
            opened_at: row.circuit_opened_at,
            next_probe_at: row.circuit_next_probe_at,
            failed_probes: row.circuit_failed_probes,
        })
    }
}

/// An endpoint's stored circuit and window, as the recorder reads them (locked).
#[derive(sqlx::FromRow)]
pub(crate) struct StressRow {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) in_flight_limit: Option<i32>,
    pub(crate) in_flight_window: Option<i32>,
    pub(crate) window_successes: i32,
    pub(crate) window_backed_off: bool,
    pub(crate) latency_baseline_ms: Option<i64>,
    #[sqlx(flatten)]
    pub(crate) circuit: CircuitRow,
}

impl StressRow {
    /// The stored window, or a fresh one of `initial`.
    pub(crate) fn window(&self, initial: i32) -> Window {
        match self.in_flight_window {
            Some(size) => Window {
                size,
                successes: self.window_successes,
                backed_off: self.window_backed_off,
                baseline_ms: self.latency_baseline_ms,
            },
            None => Window::new(initial),
        }
    }
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = StoreError;
    fn try_from(row: EndpointRow) -> Result<Self, StoreError> {
        let event_types: Vec<String> = serde_json::from_str(&row.event_types).map_err(corrupt)?;
        let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers).map_err(corrupt)?;
        Ok(Endpoint {
            id: row.id,
            tenant_id: row.tenant_id,
            url: row.url,
            description: row.description,
            event_types,
            headers,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            disabled_at: row.disabled_at,
            fifo: row.fifo,
            max_in_flight: row.in_flight_limit,
            in_flight_window: row.in_flight_window,
            circuit: (&row.circuit).try_into()?,
            batch: row.batch.as_deref().map(Batching::from_stored).transpose().map_err(corrupt)?,
            rate_limit_per_second: row.rate_limit_per_second,
            delivery: crate::domain::policy::DeliveryPolicy::from_stored(row.delivery_policy.as_deref())
                .map_err(corrupt)?,
            filter: row.filter.as_deref().map(serde_json::from_str).transpose().map_err(corrupt)?,
            signature_scheme: crate::domain::signing::Scheme::parse(&row.signature_scheme)
                .ok_or_else(|| corrupt(format!("signature scheme `{}`", row.signature_scheme)))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SecretsRow {
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_secret_expires_at: Option<i64>,
}

impl From<SecretsRow> for Secrets {
    fn from(row: SecretsRow) -> Self {
        Secrets {
            current: row.secret,
            previous: row.previous_secret,
            previous_expires_at: row.previous_secret_expires_at,
        }
    }
}

/// The columns an [`EventRow`] reads (`select {EVENT_COLUMNS} from events …`).
pub(crate) const EVENT_COLUMNS: &str =
    "id, tenant_id, event_type, payload, idempotency_key, deliveries, created_at";

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: String,
    tenant_id: String,
    event_type: String,
    payload: Option<String>,
    idempotency_key: Option<String>,
    deliveries: i32,
    created_at: i64,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            id: row.id,
            tenant_id: row.tenant_id,
            event_type: row.event_type,
            payload: row.payload,
            idempotency_key: row.idempotency_key,
            deliveries: row.deliveries,
            created_at: row.created_at,
        }
    }
}

/// The columns a [`DeliveryRow`] reads (`select {DELIVERY_COLUMNS} from deliveries …`).
pub(crate) const DELIVERY_COLUMNS: &str = "id, event_id, endpoint_id, status, attempt_count, next_attempt_at,
    lease_until, last_error, created_at, completed_at";

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: String,
    event_id: String,
    endpoint_id: String,
    status: String,
    attempt_count: i32,
    next_attempt_at: i64,
    lease_until: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    completed_at: Option<i64>,
}

impl DeliveryRow {
    pub(crate) fn into_delivery(self, now: i64) -> Result<Delivery, StoreError> {
        let status = parse_status(&self.status)?;
        let pending = status == DeliveryStatus::Pending;
        Ok(Delivery {
            id: self.id,
            event_id: self.event_id,
            endpoint_id: self.endpoint_id,
            in_flight: pending && self.lease_until.is_some_and(|l| l > now),
            next_attempt_at: pending.then_some(self.next_attempt_at),
            status,
            attempt_count: self.attempt_count,
            last_error: self.last_error,
            created_at: self.created_at,
            completed_at: self.completed_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    id: String,
    number: i32,
    started_at: i64,
    duration_ms: Option<i64>,
    status_code: Option<i32>,
    error_kind: Option<String>,
    error: Option<String>,
    response_body: Option<String>,
    timeout_ms: Option<i64>,
    probe: bool,
    batch_id: Option<String>,
}

impl From<AttemptRow> for Attempt {
    fn from(row: AttemptRow) -> Self {
        Attempt {
            id: row.id,
            number: row.number,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            error_kind: row.error_kind,
            error: row.error,
            response_body: row.response_body,
            timeout_ms: row.timeout_ms,
            probe: row.probe,
            batch_id: row.batch_id,
        }
    }
}

/// The fan-out view of an endpoint.
#[derive(sqlx::FromRow)]
pub(crate) struct FanoutRow {
    pub(crate) id: String,
    pub(crate) event_types: String,
    pub(crate) filter: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) fifo: bool,
    pub(crate) updated_at: i64,
}

/// An endpoint with deliveries that may be claimable, and what sending to it needs.
#[derive(sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub(crate) id: String,
    /// Its owner's cap, if any.
    pub(crate) in_flight_limit: Option<i32>,
    /// Its adaptive window, once adapted.
    pub(crate) in_flight_window: Option<i32>,
    pub(crate) fifo: bool,
    pub(crate) rate_limit_per_second: Option<i32>,
    pub(crate) rate_next_at: Option<i64>,
    pub(crate) url: String,
    pub(crate) headers: String,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_secret_expires_at: Option<i64>,
    /// The endpoint's own delivery policy, stored form.
    pub(crate) delivery_policy: Option<String>,
    /// Attempts in flight now (leases not lapsed; a batch counts once), across every process.
    pub(crate) in_flight: i64,
    /// Its batching, stored form (`domain::batch`); `None`: one event per request.
    pub(crate) batch: Option<String>,
}

impl CandidateRow {
    pub(crate) fn headers(&self, cipher: &Cipher) -> Result<BTreeMap<String, String>, StoreError> {
        let sealed: BTreeMap<String, String> = serde_json::from_str(&self.headers).map_err(corrupt)?;
        sealed.into_iter().map(|(name, value)| Ok((name, cipher.open(&value).map_err(corrupt)?))).collect()
    }

    pub(crate) fn secrets(&self, cipher: &Cipher) -> Result<Secrets, StoreError> {
        Ok(Secrets {
            current: cipher.open(&self.secret).map_err(corrupt)?,
            previous: self.previous_secret.as_deref().map(|p| cipher.open(p)).transpose().map_err(corrupt)?,
            previous_expires_at: self.previous_secret_expires_at,
        })
    }

    /// The claim's view of this endpoint (`domain::claim`), its window and cap defaulting to
    /// `stress`'s.
    pub(crate) fn candidate(&self, stress: &super::Stress) -> Candidate {
        Candidate {
            fifo: self.fifo,
            max_in_flight: effective_in_flight(
                self.fifo,
                self.in_flight_window.unwrap_or(stress.initial_in_flight),
                self.in_flight_limit.unwrap_or(stress.max_in_flight_per_endpoint),
            ),
            in_flight: self.in_flight,
            rate: self.rate(),
        }
    }

    /// Its batching, if it asked for batches.
    pub(crate) fn batching(&self) -> Result<Option<Batching>, StoreError> {
        self.batch.as_deref().map(Batching::from_stored).transpose().map_err(corrupt)
    }

    /// Its own delivery policy (what it sets; the server's values fill the rest).
    pub(crate) fn policy(&self) -> Result<crate::domain::policy::DeliveryPolicy, StoreError> {
        crate::domain::policy::DeliveryPolicy::from_stored(self.delivery_policy.as_deref()).map_err(corrupt)
    }

    /// Its rate limit, if it has one.
    pub(crate) fn rate(&self) -> Option<Rate> {
        self.rate_limit_per_second.map(|per_second| Rate { per_second, next_at: self.rate_next_at })
    }
}

/// A claimable delivery.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimRow {
    pub(crate) id: String,
    pub(crate) event_id: String,
    pub(crate) tenant_id: String,
    pub(crate) endpoint_id: String,
    pub(crate) attempt_count: i32,
    pub(crate) run_attempts: i32,
    pub(crate) max_attempts: Option<i32>,
    pub(crate) next_attempt_at: i64,
    pub(crate) lease_until: Option<i64>,
    pub(crate) payload: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
}

/// A delivery row ingest writes with a multi-row insert.
pub(crate) struct NewDeliveryRow<'a> {
    pub(crate) id: String,
    pub(crate) event: &'a super::NewEvent,
    pub(crate) endpoint_id: String,
    pub(crate) status: DeliveryStatus,
    pub(crate) fifo_seq: Option<i64>,
    pub(crate) last_error: Option<&'static str>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) bypass: bool,
}

/// An endpoint's health columns.
#[derive(sqlx::FromRow)]
pub(crate) struct HealthRow {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) url: String,
    pub(crate) enabled: bool,
    pub(crate) disabled_reason: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<i64>,
    pub(crate) last_success_at: Option<i64>,
}

/// A failed delivery and its endpoint's `delivery.exhausted` report window.
#[derive(sqlx::FromRow)]
pub(crate) struct ExhaustedRow {
    pub(crate) tenant_id: String,
    pub(crate) endpoint_id: String,
    pub(crate) event_id: String,
    pub(crate) attempt_count: i32,
    pub(crate) last_error: Option<String>,
    pub(crate) exhausted_window_start: Option<i64>,
    pub(crate) exhausted_sent: i32,
    pub(crate) exhausted_suppressed: i32,
}

/// A delivery whose lease lapsed.
#[derive(sqlx::FromRow)]
pub(crate) struct ExpiredRow {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) run_attempts: i32,
    pub(crate) max_attempts: Option<i32>,
    pub(crate) bypass: bool,
    pub(crate) enabled: bool,
    pub(crate) deleted: bool,
    pub(crate) delivery_policy: Option<String>,
}

/// What a replay needs to know about a delivery.
#[derive(sqlx::FromRow)]
pub(crate) struct ReplayRow {
    pub(crate) status: String,
    pub(crate) lease_until: Option<i64>,
    pub(crate) enabled: bool,
    pub(crate) deleted_at: Option<i64>,
    pub(crate) payload_gone: bool,
}

/// A stored delivery status.
pub(crate) fn parse_status(text: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(text).ok_or_else(|| corrupt(format!("unknown delivery status `{text}`")))
}

/// A stored value that does not decode.
pub(crate) fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// A value as stored JSON text.
pub(crate) fn to_json(value: &impl serde::Serialize) -> String {
    // Serialising maps and vectors of strings cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}
