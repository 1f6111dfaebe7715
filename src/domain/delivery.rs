//! Events, deliveries and attempts as stored and shown, and the rules of a delivery's life: its
//! states, how many attempts a run allows, what an interrupted attempt leads to, and what
//! stopping an endpoint (disabling or deleting it) does to its pending deliveries (DESIGN §3,
//! §5.1, §5.2).

use crate::domain::retry::Outcome;

/// Where a delivery is in its life. `pending` includes a delivery whose attempt is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt, or in flight.
    Pending,
    /// A 2xx came back.
    Delivered,
    /// Dead letter: the run's attempts are spent, the failure is permanent, or the endpoint
    /// stopped. Replayable.
    Failed,
}

impl DeliveryStatus {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// Attempts the current run of a delivery allows: its own limit when it has one (a test event
/// has 1), else the first attempt plus one per configured retry.
pub fn run_budget(own_limit: Option<i32>, retries: usize) -> i32 {
    own_limit.unwrap_or(retries as i32 + 1)
}

/// What follows an attempt that never finished (its process stopped or crashed): the delivery is
/// due again at once, unless that was the run's last allowed attempt. It counts as an attempt.
pub fn after_interruption(run_attempt: i32, budget: i32) -> Outcome {
    if run_attempt >= budget {
        Outcome::GiveUp { disable_endpoint: false }
    } else {
        Outcome::Retry { after: std::time::Duration::ZERO, pause_endpoint: false }
    }
}

/// Why an endpoint stopped taking deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Disabled: by its owner (PATCH, `…/disable`), by a 410 Gone, or by the health job.
    /// Replayable once enabled again (`recover`).
    Disabled,
    /// Soft-deleted (itself or its tenant). Not replayable.
    Deleted,
}

impl Stopped {
    /// The stopped endpoint, if it is: deleted wins over disabled.
    pub fn of(enabled: bool, deleted: bool) -> Option<Stopped> {
        match (enabled, deleted) {
            (_, true) => Some(Stopped::Deleted),
            (false, false) => Some(Stopped::Disabled),
            (true, false) => None,
        }
    }

    /// The `last_error` a delivery failed by this stop carries.
    pub fn reason(self) -> &'static str {
        match self {
            Stopped::Disabled => "endpoint_disabled",
            Stopped::Deleted => "endpoint_deleted",
        }
    }

    /// Whether a pending delivery of the stopped endpoint is failed now. The rule, the same for
    /// every path that stops an endpoint: a delivery in flight is left to finish and be
    /// recorded (a retry it asks for then fails with [`Stopped::reason`], see
    /// [`after_attempt_on`]); every other pending delivery fails now, except a test event on a
    /// disabled endpoint (`POST …/test` works on disabled endpoints).
    pub fn fails_now(self, in_flight: bool, test_event: bool) -> bool {
        !in_flight && (self == Stopped::Deleted || !test_event)
    }

    /// Whether stopping fails the endpoint's pending test events too.
    pub fn fails_test_events(self) -> bool {
        self.fails_now(false, true)
    }
}

/// What an attempt's outcome does to its delivery when the endpoint may have stopped while the
/// attempt ran: a retry becomes a failure carrying the stop's reason (nothing more will be
/// claimed for that endpoint); success and failure stand. Test events are exempt from a
/// disabling, as in [`Stopped::fails_now`].
pub fn after_attempt_on(
    stopped: Option<Stopped>,
    test_event: bool,
    outcome: &Outcome,
) -> Option<&'static str> {
    let stopped = stopped?;
    (matches!(outcome, Outcome::Retry { .. }) && stopped.fails_now(false, test_event))
        .then(|| stopped.reason())
}

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
    /// Where it is in its life.
    pub status: DeliveryStatus,
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
// Also the API's body (`AttemptOut`), so the field docs speak of the API: times are Unix µs here
// and RFC 3339 there.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = AttemptOut)]
pub struct Attempt {
    /// `att_…`
    pub id: String,
    /// 1, 2, 3… never reset by replays.
    pub number: i32,
    /// RFC 3339.
    #[serde(serialize_with = "super::time::serialize")]
    #[schema(value_type = String)]
    pub started_at: i64,
    /// `null` while under way.
    pub duration_ms: Option<i64>,
    /// The response status, if one came.
    pub status_code: Option<i32>,
    /// `http_status`, `timeout`, `connect`, `tls`, `dns`, `blocked_address`, `interrupted` or `other`.
    // The names of `retry::ErrorKind`.
    pub error_kind: Option<String>,
    /// Failure detail.
    pub error: Option<String>,
    /// Up to 8 KiB of the response body.
    // Lossy UTF-8.
    pub response_body: Option<String>,
    /// The timeout that applied to this attempt (the endpoint's own or the server's), ms.
    // `None` for attempts never sent, or recorded before it was kept.
    pub timeout_ms: Option<i64>,
    /// Whether it was the circuit breaker's probe of an endpoint that was down: a failed probe
    /// does not count toward its delivery's run.
    pub probe: bool,
    /// The batch request it was part of (`bat_…`, the request's `webhook-id`), for an endpoint
    /// that receives batches; `null` otherwise.
    pub batch_id: Option<String>,
}

impl Attempt {
    /// Whether this attempt counts toward its delivery's run: every attempt but a circuit probe
    /// that failed on the endpoint's side (`breaker::refunds_attempt`).
    pub fn counts_toward_run(&self) -> bool {
        use crate::domain::breaker::{refunds_attempt, signal};
        let kind = self.error_kind.as_deref().and_then(crate::domain::retry::ErrorKind::parse);
        !refunds_attempt(self.probe, signal(self.status_code, kind))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(DeliveryStatus::parse("in_flight"), None);
    }

    #[test]
    fn a_run_allows_one_attempt_plus_the_retries_unless_the_delivery_says_otherwise() {
        assert_eq!(run_budget(None, 3), 4);
        assert_eq!(run_budget(None, 0), 1);
        assert_eq!(run_budget(Some(1), 3), 1, "a test event");
    }

    #[test]
    fn an_interrupted_attempt_is_retried_at_once_unless_it_was_the_last() {
        assert_eq!(after_interruption(1, 4), Outcome::Retry { after: Duration::ZERO, pause_endpoint: false });
        assert_eq!(after_interruption(4, 4), Outcome::GiveUp { disable_endpoint: false });
        assert_eq!(after_interruption(1, 1), Outcome::GiveUp { disable_endpoint: false });
    }

    #[test]
    fn stopping_an_endpoint_fails_what_is_not_in_flight() {
        assert_eq!(Stopped::of(true, false), None);
        assert_eq!(Stopped::of(false, false), Some(Stopped::Disabled));
        assert_eq!(Stopped::of(false, true), Some(Stopped::Deleted));
        assert_eq!(Stopped::of(true, true), Some(Stopped::Deleted));
        for stopped in [Stopped::Disabled, Stopped::Deleted] {
            assert!(stopped.fails_now(false, false));
            assert!(!stopped.fails_now(true, false), "an attempt in flight finishes");
            assert!(!stopped.fails_now(true, true));
        }
        assert!(!Stopped::Disabled.fails_now(false, true), "a test event goes to a disabled endpoint");
        assert!(Stopped::Deleted.fails_now(false, true), "nothing goes to a deleted one");
        assert_eq!(Stopped::Disabled.reason(), "endpoint_disabled");
        assert_eq!(Stopped::Deleted.reason(), "endpoint_deleted");
    }

    #[test]
    fn a_retry_asked_for_by_an_attempt_on_a_stopped_endpoint_fails() {
        let retry = Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false };
        assert_eq!(after_attempt_on(Some(Stopped::Disabled), false, &retry), Some("endpoint_disabled"));
        assert_eq!(after_attempt_on(Some(Stopped::Deleted), true, &retry), Some("endpoint_deleted"));
        assert_eq!(after_attempt_on(Some(Stopped::Disabled), true, &retry), None);
        assert_eq!(after_attempt_on(None, false, &retry), None);
        assert_eq!(after_attempt_on(Some(Stopped::Deleted), false, &Outcome::Delivered), None);
    }
}
