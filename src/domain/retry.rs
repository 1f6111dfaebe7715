//! What one attempt's result means for its delivery: delivered, retry after a backoff, or give
//! up; what counts as success; when a Retry-After pauses the endpoint. DESIGN §5 rules; pure, so
//! every branch is unit-tested.

use std::time::Duration;

use crate::domain::delivery::DeliveryStatus;

/// The one definition of success: the receiver answered 2xx.
pub fn is_success(status: Option<i32>) -> bool {
    status.is_some_and(|status| (200..300).contains(&status))
}

/// What a 410 Gone disables its endpoint with.
pub const GONE_REASON: &str = "the endpoint answered 410 Gone";

/// Why an attempt did not get a 2xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The endpoint answered with a non-2xx status.
    HttpStatus,
    /// No complete answer within the timeout.
    Timeout,
    /// TCP connect failed.
    Connect,
    /// TLS handshake or certificate failed.
    Tls,
    /// The host name did not resolve.
    Dns,
    /// The address is not allowed (SSRF guard).
    BlockedAddress,
    /// The attempt's process stopped before it finished.
    Interrupted,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Dns => "dns",
            ErrorKind::BlockedAddress => "blocked_address",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Other => "other",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<ErrorKind> {
        [
            ErrorKind::HttpStatus,
            ErrorKind::Timeout,
            ErrorKind::Connect,
            ErrorKind::Tls,
            ErrorKind::Dns,
            ErrorKind::BlockedAddress,
            ErrorKind::Interrupted,
            ErrorKind::Other,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// The metrics `outcome` label for a failure of this kind.
    pub fn outcome_label(self) -> &'static str {
        match self {
            ErrorKind::HttpStatus => "http_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Dns => "connect_error",
            _ => "other",
        }
    }
}

/// What happened on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptResult {
    /// Status code, when a response arrived.
    pub status: Option<u16>,
    /// Set when the attempt failed.
    pub error: Option<ErrorKind>,
    /// `Retry-After` in seconds, already parsed (429 and 503 only).
    pub retry_after: Option<Duration>,
}

/// What to do with the delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Try again after `after`; `pause_endpoint` when the receiver asked us to wait.
    Retry {
        /// Delay before the next attempt.
        after: Duration,
        /// Hold every delivery to this endpoint for `after` (Retry-After).
        pause_endpoint: bool,
    },
    /// Failed for good (dead letter, replayable).
    GiveUp {
        /// `disable` when the receiver answered 410 Gone.
        disable_endpoint: bool,
    },
}

impl Outcome {
    /// The delivery's status after this outcome.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Outcome::Delivered => DeliveryStatus::Delivered,
            Outcome::Retry { .. } => DeliveryStatus::Pending,
            Outcome::GiveUp { .. } => DeliveryStatus::Failed,
        }
    }

    /// How long the endpoint is paused (Retry-After), if it is.
    pub fn pause(&self) -> Option<Duration> {
        match self {
            Outcome::Retry { after, pause_endpoint: true } => Some(*after),
            _ => None,
        }
    }

    /// Why the endpoint is disabled (410 Gone), if it is.
    pub fn disables_endpoint(&self) -> Option<&'static str> {
        matches!(self, Outcome::GiveUp { disable_endpoint: true }).then_some(GONE_REASON)
    }
}

/// The retry rules.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Backoff after attempts 1, 2, 3…; its length is the number of retries.
    pub schedule: Vec<Duration>,
    /// Largest honoured Retry-After.
    pub retry_after_max: Duration,
    /// Retry 4xx (other than 410) instead of failing at once.
    pub retry_client_errors: bool,
}

impl RetryPolicy {
    /// Decides the delivery's fate after attempt number `run_attempt` (1-based, within the run)
    /// of a run that allows `budget` attempts (see `delivery::run_budget`). `jitter` is a factor
    /// in [0.8, 1.2].
    pub fn decide(&self, result: &AttemptResult, run_attempt: u32, budget: i32, jitter: f64) -> Outcome {
        if is_success(result.status.map(i32::from)) {
            return Outcome::Delivered;
        }
        let retryable = match (result.status, result.error) {
            (Some(410), _) => return Outcome::GiveUp { disable_endpoint: true },
            (_, Some(ErrorKind::BlockedAddress)) => false,
            (Some(status), _) => {
                matches!(status, 408 | 425 | 429)
                    || status >= 500
                    || (300..400).contains(&status)
                    || ((400..500).contains(&status) && self.retry_client_errors)
            }
            (None, _) => true,
        };
        let index = run_attempt.saturating_sub(1) as usize;
        if !retryable || index >= self.schedule.len() || i64::from(run_attempt) >= i64::from(budget) {
            return Outcome::GiveUp { disable_endpoint: false };
        }
        let backoff = self.schedule[index].mul_f64(jitter.clamp(0.8, 1.2));
        match self.retry_after_pause(result) {
            Some(wait) => Outcome::Retry { after: backoff.max(wait), pause_endpoint: true },
            None => Outcome::Retry { after: backoff, pause_endpoint: false },
        }
    }

    /// How long a Retry-After asks the whole endpoint to wait: only on 429 and 503, never zero,
    /// at most `retry_after_max`.
    pub fn retry_after_pause(&self, result: &AttemptResult) -> Option<Duration> {
        let wait = result.retry_after.filter(|wait| !wait.is_zero())?;
        matches!(result.status, Some(429 | 503)).then(|| wait.min(self.retry_after_max))
    }
}

/// A jitter factor in [0.8, 1.2].
pub fn jitter() -> f64 {
    0.8 + rand::random::<f64>() * 0.4
}

/// Parses `Retry-After`: delta seconds or an HTTP date; zero, past or unparseable → `None`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return (seconds > 0).then(|| Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&chrono::Utc);
    (when - now).to_std().ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(5), Duration::from_secs(300), Duration::from_secs(1800)],
            retry_after_max: Duration::from_secs(3600),
            retry_client_errors: false,
        }
    }

    fn status(code: u16) -> AttemptResult {
        AttemptResult { status: Some(code), error: Some(ErrorKind::HttpStatus), retry_after: None }
    }

    #[test]
    fn error_kinds_round_trip_through_their_names() {
        for name in
            ["http_status", "timeout", "connect", "tls", "dns", "blocked_address", "interrupted", "other"]
        {
            assert_eq!(ErrorKind::parse(name).map(ErrorKind::as_str), Some(name));
        }
        assert_eq!(ErrorKind::parse("nope"), None);
    }

    #[test]
    fn success_and_permanent_failures() {
        assert_eq!(policy().decide(&status(200), 1, 4, 1.0), Outcome::Delivered);
        assert_eq!(policy().decide(&status(204), 4, 4, 1.0), Outcome::Delivered);
        assert_eq!(policy().decide(&status(410), 1, 4, 1.0), Outcome::GiveUp { disable_endpoint: true });
        assert_eq!(policy().decide(&status(400), 1, 4, 1.0), Outcome::GiveUp { disable_endpoint: false });
        let blocked =
            AttemptResult { status: None, error: Some(ErrorKind::BlockedAddress), retry_after: None };
        assert_eq!(policy().decide(&blocked, 1, 4, 1.0), Outcome::GiveUp { disable_endpoint: false });
    }

    #[test]
    fn retryable_failures_follow_the_schedule_then_give_up() {
        for code in [408, 425, 429, 500, 503, 301] {
            assert!(matches!(policy().decide(&status(code), 1, 4, 1.0), Outcome::Retry { .. }), "{code}");
        }
        let timeout = AttemptResult { status: None, error: Some(ErrorKind::Timeout), retry_after: None };
        assert_eq!(
            policy().decide(&timeout, 1, 4, 1.0),
            Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false }
        );
        assert_eq!(
            policy().decide(&timeout, 2, 4, 1.0),
            Outcome::Retry { after: Duration::from_secs(300), pause_endpoint: false }
        );
        assert_eq!(
            policy().decide(&timeout, 3, 4, 1.2),
            Outcome::Retry { after: Duration::from_secs(2160), pause_endpoint: false }
        );
        assert_eq!(policy().decide(&timeout, 4, 4, 1.0), Outcome::GiveUp { disable_endpoint: false });
    }

    #[test]
    fn a_run_with_a_smaller_budget_gives_up_sooner() {
        let timeout = AttemptResult { status: None, error: Some(ErrorKind::Timeout), retry_after: None };
        assert_eq!(policy().decide(&timeout, 1, 1, 1.0), Outcome::GiveUp { disable_endpoint: false });
        assert!(matches!(policy().decide(&timeout, 1, 2, 1.0), Outcome::Retry { .. }));
    }

    #[test]
    fn success_is_a_2xx_and_nothing_else() {
        assert!(is_success(Some(200)) && is_success(Some(299)));
        assert!(!is_success(Some(199)) && !is_success(Some(300)) && !is_success(None));
    }

    #[test]
    fn an_outcome_names_the_next_status_and_what_it_does_to_the_endpoint() {
        assert_eq!(Outcome::Delivered.status(), DeliveryStatus::Delivered);
        let paused = Outcome::Retry { after: Duration::from_secs(60), pause_endpoint: true };
        assert_eq!(paused.status(), DeliveryStatus::Pending);
        assert_eq!(paused.pause(), Some(Duration::from_secs(60)));
        assert_eq!(Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false }.pause(), None);
        let gone = Outcome::GiveUp { disable_endpoint: true };
        assert_eq!(gone.status(), DeliveryStatus::Failed);
        assert_eq!(gone.disables_endpoint(), Some(GONE_REASON));
        assert_eq!(Outcome::GiveUp { disable_endpoint: false }.disables_endpoint(), None);
    }

    #[test]
    fn client_errors_retry_when_configured() {
        let mut policy = policy();
        policy.retry_client_errors = true;
        assert!(matches!(policy.decide(&status(404), 1, 4, 1.0), Outcome::Retry { .. }));
        assert_eq!(policy.decide(&status(410), 1, 4, 1.0), Outcome::GiveUp { disable_endpoint: true });
    }

    #[test]
    fn retry_after_is_honoured_capped_and_pauses_the_endpoint() {
        let mut result = status(429);
        result.retry_after = Some(Duration::from_secs(60));
        assert_eq!(
            policy().decide(&result, 1, 4, 1.0),
            Outcome::Retry { after: Duration::from_secs(60), pause_endpoint: true }
        );
        result.retry_after = Some(Duration::from_secs(86_400));
        assert_eq!(
            policy().decide(&result, 1, 4, 1.0),
            Outcome::Retry { after: Duration::from_secs(3600), pause_endpoint: true }
        );
        let mut ignored = status(500);
        ignored.retry_after = Some(Duration::from_secs(60));
        assert_eq!(
            policy().decide(&ignored, 1, 4, 1.0),
            Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false }
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("valid").to_utc();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now), None);
    }
}
