//! An endpoint's own delivery policy (DESIGN §13): its attempt timeout, its retry schedule and
//! whether it wants 4xx answers retried. Each member left unset inherits the server's
//! `[delivery]` value, so an endpoint follows a changed server default unless it chose otherwise.
//! The policy in force when an attempt is claimed decides that attempt's timeout and what follows
//! it (the run's attempt budget included).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Invalid;
use super::retry::RetryPolicy;

/// Most retries a schedule may list (a run allows 1 + this many attempts).
pub const MAX_RETRIES: usize = 10;
/// Shortest attempt timeout an endpoint may ask for.
pub const TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest single retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(24 * 3600);

/// What an endpoint chose; `None` members inherit the server's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Time allowed for one attempt.
    pub timeout: Option<Duration>,
    /// Backoff after attempts 1, 2, 3… of a run; its length is the number of retries.
    pub retry_schedule: Option<Vec<Duration>>,
    /// Retry 4xx answers (other than 410) instead of failing at once.
    pub retry_client_errors: Option<bool>,
}

/// The server's `[delivery]` values and bounds a policy is checked against and falls back to.
#[derive(Clone, Debug)]
pub struct Server {
    /// `[delivery] timeout`.
    pub timeout: Duration,
    /// `[delivery]` retry schedule, Retry-After cap and `retry_client_errors`.
    pub retry: RetryPolicy,
    /// `[delivery] timeout_max`: the longest timeout an endpoint may ask for.
    pub timeout_max: Duration,
    /// `[delivery] retry_min`: the shortest retry delay an endpoint may ask for.
    pub retry_min: Duration,
}

/// The values in force for one attempt.
#[derive(Clone, Debug)]
pub struct Effective {
    /// The attempt's timeout.
    pub timeout: Duration,
    /// What decides the delivery's next state.
    pub retry: RetryPolicy,
}

impl DeliveryPolicy {
    /// Whether every member inherits.
    pub fn is_empty(&self) -> bool {
        self == &DeliveryPolicy::default()
    }

    /// The policy in force: the endpoint's members over the server's.
    pub fn effective(&self, server: &Server) -> Effective {
        Effective {
            timeout: self.timeout.unwrap_or(server.timeout),
            retry: RetryPolicy {
                schedule: self.retry_schedule.clone().unwrap_or_else(|| server.retry.schedule.clone()),
                retry_after_max: server.retry.retry_after_max,
                retry_client_errors: self.retry_client_errors.unwrap_or(server.retry.retry_client_errors),
            },
        }
    }

    /// Retries a run allows: the endpoint's own schedule's, or the server's `server_retries`.
    pub fn retries(&self, server_retries: usize) -> usize {
        self.retry_schedule.as_ref().map_or(server_retries, Vec::len)
    }

    /// Records every member outside the server's bounds, naming it under `field`
    /// (`delivery.timeout`, `delivery.retry_schedule[2]`).
    pub fn check(&self, server: &Server, field: &str, invalid: &mut Invalid) {
        if let Some(timeout) = self.timeout
            && !(TIMEOUT_MIN..=server.timeout_max).contains(&timeout)
        {
            invalid.push(
                format!("{field}.timeout"),
                format!("must be between 1s and {} (`[delivery] timeout_max`)", text(server.timeout_max)),
            );
        }
        if let Some(schedule) = &self.retry_schedule {
            if schedule.len() > MAX_RETRIES {
                invalid.push(
                    format!("{field}.retry_schedule"),
                    format!("must list at most {MAX_RETRIES} retries"),
                );
            }
            for (i, delay) in schedule.iter().enumerate() {
                if !(server.retry_min..=RETRY_MAX).contains(delay) {
                    invalid.push(
                        format!("{field}.retry_schedule[{i}]"),
                        format!(
                            "must be between {} (`[delivery] retry_min`) and 24h",
                            text(server.retry_min)
                        ),
                    );
                }
            }
        }
    }

    /// The stored form: JSON with milliseconds, `None` when every member inherits.
    pub fn to_stored(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let stored = Stored {
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
            retry_schedule_ms: self
                .retry_schedule
                .as_ref()
                .map(|s| s.iter().map(|d| d.as_millis() as u64).collect()),
            retry_client_errors: self.retry_client_errors,
        };
        serde_json::to_string(&stored).ok()
    }

    /// Reads the stored form back.
    pub fn from_stored(text: Option<&str>) -> Result<DeliveryPolicy, String> {
        let Some(text) = text else { return Ok(DeliveryPolicy::default()) };
        let stored: Stored = serde_json::from_str(text).map_err(|e| format!("delivery policy: {e}"))?;
        Ok(DeliveryPolicy {
            timeout: stored.timeout_ms.map(Duration::from_millis),
            retry_schedule: stored
                .retry_schedule_ms
                .map(|s| s.into_iter().map(Duration::from_millis).collect()),
            retry_client_errors: stored.retry_client_errors,
        })
    }
}

/// A duration as the API writes it (`10s`, `5m`, `1h 30m`, `250ms`).
pub fn text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_schedule_ms: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_client_errors: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server {
            timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                schedule: vec![Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(1800)],
                retry_after_max: Duration::from_secs(3600),
                retry_client_errors: false,
            },
            timeout_max: Duration::from_secs(25),
            retry_min: Duration::from_secs(1),
        }
    }

    #[test]
    fn unset_members_inherit_the_server_and_set_ones_win() {
        let inherited = DeliveryPolicy::default().effective(&server());
        assert_eq!(inherited.timeout, Duration::from_secs(10));
        assert_eq!(inherited.retry.schedule.len(), 3);
        assert!(!inherited.retry.retry_client_errors);
        let own = DeliveryPolicy {
            timeout: Some(Duration::from_secs(2)),
            retry_schedule: Some(vec![]),
            retry_client_errors: Some(true),
        }
        .effective(&server());
        assert_eq!(own.timeout, Duration::from_secs(2));
        assert!(own.retry.schedule.is_empty(), "no retries: a run of one attempt");
        assert!(own.retry.retry_client_errors);
        assert_eq!(own.retry.retry_after_max, Duration::from_secs(3600), "always the server's");
    }

    #[test]
    fn bounds_name_the_offending_member() {
        let mut invalid = Invalid::default();
        DeliveryPolicy {
            timeout: Some(Duration::from_secs(26)),
            retry_schedule: Some(vec![Duration::from_millis(500), Duration::from_secs(90_000)]),
            retry_client_errors: None,
        }
        .check(&server(), "delivery", &mut invalid);
        let fields: Vec<String> = invalid.0.iter().map(|e| e.field.clone()).collect();
        assert_eq!(fields, ["delivery.timeout", "delivery.retry_schedule[0]", "delivery.retry_schedule[1]"]);
        let mut invalid = Invalid::default();
        DeliveryPolicy { retry_schedule: Some(vec![Duration::from_secs(1); 11]), ..Default::default() }
            .check(&server(), "delivery", &mut invalid);
        assert_eq!(invalid.0[0].field, "delivery.retry_schedule");
        let mut invalid = Invalid::default();
        DeliveryPolicy { timeout: Some(Duration::from_secs(1)), ..Default::default() }.check(
            &server(),
            "delivery",
            &mut invalid,
        );
        assert!(invalid.0.is_empty());
    }

    #[test]
    fn the_stored_form_round_trips_and_an_empty_policy_stores_nothing() {
        assert_eq!(DeliveryPolicy::default().to_stored(), None);
        assert_eq!(DeliveryPolicy::from_stored(None), Ok(DeliveryPolicy::default()));
        let policy = DeliveryPolicy {
            timeout: Some(Duration::from_millis(1500)),
            retry_schedule: Some(vec![Duration::from_secs(1), Duration::from_secs(60)]),
            retry_client_errors: None,
        };
        let stored = policy.to_stored().expect("stored");
        assert_eq!(DeliveryPolicy::from_stored(Some(&stored)), Ok(policy));
        assert!(DeliveryPolicy::from_stored(Some("not json")).is_err());
    }
}
