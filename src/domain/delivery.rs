//! Events, deliveries and attempts as stored and shown.

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `evt_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Event type name.
    pub event_type: String,
    /// The envelope bytes; `None` once purged.
    pub payload: Option<String>,
    /// The producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// Delivery rows created at ingest.
    pub deliveries: i32,
    /// Unix µs (the envelope's `timestamp`).
    pub created_at: i64,
}

/// A delivery: one event bound for one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// `dlv_…`
    pub id: String,
    /// The event.
    pub event_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts ever made.
    pub attempt_count: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<i64>,
    /// Whether an attempt is under way now.
    pub in_flight: bool,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// Unix µs.
    pub created_at: i64,
    /// Unix µs, once delivered or failed.
    pub completed_at: Option<i64>,
}

/// One HTTP request of a delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// `att_…`
    pub id: String,
    /// 1, 2, 3… never reset.
    pub number: i32,
    /// Unix µs.
    pub started_at: i64,
    /// Milliseconds; `None` while under way.
    pub duration_ms: Option<i64>,
    /// The response status, if one came.
    pub status_code: Option<i32>,
    /// Why it failed (see `retry::ErrorKind`).
    pub error_kind: Option<String>,
    /// Failure detail.
    pub error: Option<String>,
    /// Up to 8 KiB of the response body, lossy UTF-8.
    pub response_body: Option<String>,
}
