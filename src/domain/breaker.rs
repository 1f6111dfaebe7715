//! The circuit breaker of an endpoint (DESIGN §14): which attempt results count as the
//! endpoint's own failures, when the circuit opens, how the cool-down doubles, and what a probe's
//! result does. Pure; the store reads the stored circuit, asks [`Circuit::observe`] for every
//! recorded attempt in order and writes the result back. The claim sends a probe for an open
//! circuit whose `next_probe_at` has passed (a half-open one's too, once its probe's deadline
//! passed) and marks it half-open until that deadline (`storage/claim.rs`).
//!
//! The states: `closed` (deliveries flow), `open` (nothing is claimed for the endpoint; its
//! pending deliveries wait without using their run's attempts until `next_probe_at`) and
//! `half_open` (one probe is in flight; `next_probe_at` is then the probe's deadline, after
//! which a probe whose process died is replaced by another).

use std::time::Duration;

use crate::domain::retry::{ErrorKind, Outcome, is_success};

/// Where a circuit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Deliveries flow.
    Closed,
    /// Parked: nothing is claimed until the next probe is due.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

impl CircuitState {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<CircuitState> {
        match text {
            "closed" => Some(CircuitState::Closed),
            "open" => Some(CircuitState::Open),
            "half_open" => Some(CircuitState::HalfOpen),
            _ => None,
        }
    }
}

/// The breaker's settings (`[delivery] breaker_failures`, `breaker_cooldown`,
/// `breaker_cooldown_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures that open the circuit; 0 turns the breaker off.
    pub failures: u32,
    /// The first cool-down before a probe.
    pub cooldown: Duration,
    /// The longest cool-down (it doubles on each failed probe up to this).
    pub cooldown_max: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker { failures: 10, cooldown: Duration::from_secs(30), cooldown_max: Duration::from_secs(600) }
    }
}

impl Breaker {
    /// Whether the breaker is on.
    pub fn enabled(&self) -> bool {
        self.failures > 0
    }

    /// The cool-down after `failed_probes` failed probes: the first one, doubled each time, at
    /// most the longest.
    pub fn cooldown_after(&self, failed_probes: i32) -> Duration {
        let doublings = failed_probes.clamp(0, 30) as u32;
        self.cooldown.saturating_mul(1 << doublings).min(self.cooldown_max)
    }
}

/// What one attempt's result says about the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A failure on the endpoint's side: timeout, connect/TLS/DNS, 5xx, 3xx, 408, 425, 429.
    Failure,
    /// A 2xx.
    Success,
    /// Says nothing about the endpoint's health: other 4xx, `blocked_address`, an interrupted
    /// attempt (Herald's process stopped), anything else.
    Neutral,
}

/// Classifies an attempt's result for the breaker.
pub fn signal(status: Option<i32>, error: Option<ErrorKind>) -> Signal {
    if is_success(status) {
        return Signal::Success;
    }
    match (status, error) {
        (Some(status), _)
            if matches!(status, 408 | 425 | 429) || status >= 500 || (300..400).contains(&status) =>
        {
            Signal::Failure
        }
        (None, Some(ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Dns)) => {
            Signal::Failure
        }
        _ => Signal::Neutral,
    }
}

/// A change of state worth reporting (metrics, operational events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The circuit opened at `at` after `consecutive_failures` failures.
    Opened {
        /// When (Unix µs).
        at: i64,
        /// The consecutive failures that opened it.
        consecutive_failures: i32,
    },
    /// The circuit closed at `at`, having opened at `opened_at`.
    Closed {
        /// When (Unix µs).
        at: i64,
        /// When it had opened (Unix µs).
        opened_at: i64,
    },
}

/// An endpoint's circuit as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Circuit {
    /// Where it is.
    pub state: CircuitState,
    /// Consecutive failures since the last 2xx.
    pub consecutive_failures: i32,
    /// When it opened (Unix µs), while not closed.
    pub opened_at: Option<i64>,
    /// Open: when the next probe may go. Half-open: the probe's deadline.
    pub next_probe_at: Option<i64>,
    /// Failed probes since it opened (each doubles the cool-down).
    pub failed_probes: i32,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            next_probe_at: None,
            failed_probes: 0,
        }
    }
}

impl Circuit {
    /// The circuit with the breaker off: closed, its failures still counted (a circuit stored
    /// open before the breaker was turned off does not stay open).
    pub fn without_breaker(self) -> Circuit {
        Circuit { consecutive_failures: self.consecutive_failures, ..Circuit::default() }
    }

    /// Applies one recorded attempt's result at `now` (`probe`: the attempt was the circuit's
    /// probe). Returns the transition it caused, if any.
    pub fn observe(
        &mut self,
        signal: Signal,
        probe: bool,
        now: i64,
        breaker: &Breaker,
    ) -> Option<Transition> {
        match signal {
            Signal::Success => {
                let closed = match (self.state, self.opened_at) {
                    (CircuitState::Closed, _) | (_, None) => None,
                    (_, Some(opened_at)) => Some(Transition::Closed { at: now, opened_at }),
                };
                *self = Circuit::default();
                closed
            }
            Signal::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                match self.state {
                    CircuitState::Closed
                        if breaker.enabled() && self.consecutive_failures >= breaker.failures as i32 =>
                    {
                        self.reopen(now, breaker);
                        self.opened_at = Some(now);
                        Some(Transition::Opened { at: now, consecutive_failures: self.consecutive_failures })
                    }
                    CircuitState::HalfOpen if probe => {
                        self.failed_probes = self.failed_probes.saturating_add(1);
                        self.reopen(now, breaker);
                        None
                    }
                    _ => None,
                }
            }
            // A probe that got an answer saying nothing of the endpoint's health: wait the same
            // cool-down again.
            Signal::Neutral if probe && self.state == CircuitState::HalfOpen => {
                self.reopen(now, breaker);
                None
            }
            Signal::Neutral => None,
        }
    }

    fn reopen(&mut self, now: i64, breaker: &Breaker) {
        self.state = CircuitState::Open;
        self.next_probe_at = Some(now + breaker.cooldown_after(self.failed_probes).as_micros() as i64);
    }
}

/// Whether a probe's result is taken back from its delivery's run: a probe that failed for a
/// reason on the endpoint's side does not count toward the run (the delivery waits for the
/// circuit to close instead of exhausting).
pub fn refunds_attempt(probe: bool, signal: Signal) -> bool {
    probe && signal == Signal::Failure
}

/// What a probe's attempt means for its delivery: a probe that failed on the endpoint's side is
/// due again at once (the open circuit holds it back), its attempt taken back from the run;
/// any other result is decided as usual (`decided`).
pub fn after_probe(probe: bool, signal: Signal, decided: Outcome) -> Outcome {
    if refunds_attempt(probe, signal) {
        Outcome::Retry { after: Duration::ZERO, pause_endpoint: false }
    } else {
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn breaker() -> Breaker {
        Breaker { failures: 3, cooldown: Duration::from_secs(30), cooldown_max: Duration::from_secs(100) }
    }

    fn status(code: i32) -> Signal {
        signal(Some(code), Some(ErrorKind::HttpStatus))
    }

    #[test]
    fn failures_on_the_endpoints_side_count_and_2xx_resets() {
        for code in [500, 503, 301, 408, 425, 429] {
            assert_eq!(status(code), Signal::Failure, "{code}");
        }
        for kind in [ErrorKind::Timeout, ErrorKind::Connect, ErrorKind::Tls, ErrorKind::Dns] {
            assert_eq!(signal(None, Some(kind)), Signal::Failure, "{kind:?}");
        }
        assert_eq!(signal(Some(204), None), Signal::Success);
        for code in [400, 401, 404, 410, 422] {
            assert_eq!(status(code), Signal::Neutral, "{code}");
        }
        for kind in [ErrorKind::BlockedAddress, ErrorKind::Interrupted, ErrorKind::Other] {
            assert_eq!(signal(None, Some(kind)), Signal::Neutral, "{kind:?}");
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_neutral_result_neither_counts_nor_resets() {
        let mut circuit = Circuit::default();
        assert_eq!(circuit.observe(Signal::Failure, false, 0, &breaker()), None);
        assert_eq!(circuit.observe(Signal::Neutral, false, 0, &breaker()), None);
        assert_eq!(circuit.observe(Signal::Failure, false, 0, &breaker()), None);
        assert_eq!(circuit.consecutive_failures, 2);
        let opened = circuit.observe(Signal::Failure, false, 5 * SECOND, &breaker());
        assert_eq!(opened, Some(Transition::Opened { at: 5 * SECOND, consecutive_failures: 3 }));
        assert_eq!(circuit.state, CircuitState::Open);
        assert_eq!(circuit.next_probe_at, Some(35 * SECOND), "after the first cool-down");
        assert_eq!(
            circuit.observe(Signal::Failure, false, 6 * SECOND, &breaker()),
            None,
            "attempts still in flight"
        );
        assert_eq!(circuit.state, CircuitState::Open);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut circuit = Circuit::default();
        circuit.observe(Signal::Failure, false, 0, &breaker());
        circuit.observe(Signal::Failure, false, 0, &breaker());
        assert_eq!(circuit.observe(Signal::Success, false, 0, &breaker()), None);
        circuit.observe(Signal::Failure, false, 0, &breaker());
        assert_eq!(circuit.state, CircuitState::Closed);
        assert_eq!(circuit.consecutive_failures, 1);
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_longest_and_a_2xx_closes() {
        let mut circuit = Circuit::default();
        for _ in 0..3 {
            circuit.observe(Signal::Failure, false, 0, &breaker());
        }
        circuit.state = CircuitState::HalfOpen; // the claim sent a probe
        assert_eq!(circuit.observe(Signal::Failure, true, 35 * SECOND, &breaker()), None);
        assert_eq!((circuit.state, circuit.next_probe_at), (CircuitState::Open, Some(95 * SECOND)), "60 s");
        circuit.state = CircuitState::HalfOpen;
        circuit.observe(Signal::Failure, true, 100 * SECOND, &breaker());
        assert_eq!(circuit.next_probe_at, Some(200 * SECOND), "120 s capped at 100 s");
        circuit.state = CircuitState::HalfOpen;
        let closed = circuit.observe(Signal::Success, true, 210 * SECOND, &breaker());
        assert_eq!(closed, Some(Transition::Closed { at: 210 * SECOND, opened_at: 0 }));
        assert_eq!(circuit, Circuit::default());
    }

    #[test]
    fn a_probe_answered_with_a_client_error_waits_the_same_cooldown_again() {
        let mut circuit = Circuit {
            state: CircuitState::HalfOpen,
            failed_probes: 1,
            opened_at: Some(0),
            ..Circuit::default()
        };
        circuit.observe(Signal::Neutral, true, 10 * SECOND, &breaker());
        assert_eq!((circuit.state, circuit.next_probe_at), (CircuitState::Open, Some(70 * SECOND)));
        assert_eq!(circuit.failed_probes, 1);
    }

    #[test]
    fn a_test_event_that_succeeds_closes_an_open_circuit() {
        let mut circuit = Circuit {
            state: CircuitState::Open,
            opened_at: Some(SECOND),
            next_probe_at: Some(99 * SECOND),
            ..Circuit::default()
        };
        assert_eq!(
            circuit.observe(Signal::Success, false, 9 * SECOND, &breaker()),
            Some(Transition::Closed { at: 9 * SECOND, opened_at: SECOND })
        );
    }

    #[test]
    fn turning_the_breaker_off_closes_a_stored_open_circuit() {
        let open = Circuit {
            state: CircuitState::Open,
            consecutive_failures: 12,
            opened_at: Some(1),
            next_probe_at: Some(2),
            failed_probes: 3,
        };
        assert_eq!(open.without_breaker(), Circuit { consecutive_failures: 12, ..Circuit::default() });
    }

    #[test]
    fn an_off_breaker_never_opens() {
        let off = Breaker { failures: 0, ..breaker() };
        let mut circuit = Circuit::default();
        for _ in 0..100 {
            assert_eq!(circuit.observe(Signal::Failure, false, 0, &off), None);
        }
        assert_eq!(circuit.state, CircuitState::Closed);
    }

    #[test]
    fn only_a_probe_failed_on_the_endpoints_side_is_taken_back_from_its_run() {
        assert!(refunds_attempt(true, Signal::Failure));
        assert!(!refunds_attempt(true, Signal::Neutral));
        assert!(!refunds_attempt(false, Signal::Failure));
        let give_up = Outcome::GiveUp { disable_endpoint: false };
        assert_eq!(
            after_probe(true, Signal::Failure, give_up.clone()),
            Outcome::Retry { after: Duration::ZERO, pause_endpoint: false },
            "a failed probe never exhausts its delivery"
        );
        assert_eq!(after_probe(true, Signal::Neutral, give_up.clone()), give_up);
        assert_eq!(after_probe(false, Signal::Failure, give_up.clone()), give_up);
    }
}
