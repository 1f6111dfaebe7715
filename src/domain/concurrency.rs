//! Adaptive concurrency of an endpoint (DESIGN §14): how many attempts it may have in flight,
//! adapted like TCP's window. It starts at `[delivery] initial_in_flight`; after each window's
//! worth of successes it doubles (slow start) until the first back-off, then grows by one; it
//! halves on a timeout, a connect error, a 429 or a 5xx, or when the median latency of what was
//! just recorded passes the latency bound; it never goes below 1 nor above the endpoint's cap.
//!
//! The window is stored on the endpoint and adapted once per recorded batch (the dispatcher
//! records many attempts in one transaction), so every replica claims under the same window
//! without a write per successful delivery. Pure; the store reads, adapts and writes.

use crate::domain::retry::{ErrorKind, is_success};

/// Latency may rise this much above the baseline before the window backs off, besides doubling:
/// a receiver that answers in a millisecond is not overloaded when a busy sender's own scheduling
/// makes it look like 20.
pub const LATENCY_SLACK_MS: i64 = 50;

/// Whether an attempt's result asks the window to back off: a timeout, a connect, TLS or DNS
/// error, a 429 or a 5xx.
pub fn backs_off(status: Option<i32>, error: Option<ErrorKind>) -> bool {
    match (status, error) {
        (Some(status), _) => status == 429 || status >= 500,
        (None, Some(kind)) => {
            matches!(kind, ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Dns)
        }
        (None, None) => false,
    }
}

/// What one recorded batch saw of an endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// 2xx answers.
    pub successes: i32,
    /// Results that ask for a back-off ([`backs_off`]).
    pub back_offs: i32,
    /// Durations of the 2xx answers, ms.
    pub latencies_ms: Vec<i64>,
}

impl Observed {
    /// Adds one attempt's result.
    pub fn add(&mut self, status: Option<i32>, error: Option<ErrorKind>, duration_ms: i64) {
        if is_success(status) {
            self.successes += 1;
            self.latencies_ms.push(duration_ms);
        } else if backs_off(status, error) {
            self.back_offs += 1;
        }
    }

    fn median_ms(&self) -> Option<i64> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// An endpoint's window as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Attempts in flight allowed now.
    pub size: i32,
    /// Successes counted toward the next growth.
    pub successes: i32,
    /// Whether it ever backed off (then it grows by one, not by doubling).
    pub backed_off: bool,
    /// The endpoint's recent latency, ms (a moving average of batch medians).
    pub baseline_ms: Option<i64>,
}

impl Window {
    /// A fresh window of `initial`.
    pub fn new(initial: i32) -> Window {
        Window { size: initial.max(1), successes: 0, backed_off: false, baseline_ms: None }
    }

    /// The bound latency may reach before the window backs off.
    pub fn latency_bound_ms(&self) -> Option<i64> {
        self.baseline_ms.map(|baseline| (2 * baseline).max(baseline + LATENCY_SLACK_MS))
    }

    /// Adapts to one recorded batch, within `1..=cap`: a back-off signal halves the window at
    /// once; latency is judged once per window's worth of successes, which then either grow the
    /// window or, when their median passed the latency bound, halve it.
    pub fn adapt(&mut self, observed: &Observed, cap: i32) {
        let cap = cap.max(1);
        let median = observed.median_ms();
        if observed.back_offs > 0 {
            self.back_off();
        } else {
            self.successes += observed.successes;
            if self.successes >= self.size {
                let slow = matches!((median, self.latency_bound_ms()), (Some(median), Some(bound)) if median > bound);
                if slow {
                    self.back_off();
                } else {
                    self.size = if self.backed_off { self.size + 1 } else { self.size.saturating_mul(2) };
                    self.successes = 0;
                }
            }
        }
        if let Some(median) = median {
            self.baseline_ms = Some(match self.baseline_ms {
                Some(baseline) => (7 * baseline + median) / 8,
                None => median,
            });
        }
        self.size = self.size.clamp(1, cap);
    }

    fn back_off(&mut self) {
        self.size /= 2;
        self.successes = 0;
        self.backed_off = true;
    }
}

/// The attempts an endpoint may have in flight now: one for a FIFO endpoint, else its window
/// within its cap.
pub fn effective_in_flight(fifo: bool, window: i32, cap: i32) -> i32 {
    if fifo { 1 } else { window.clamp(1, cap.max(1)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn successes(n: i32, ms: i64) -> Observed {
        Observed { successes: n, back_offs: 0, latencies_ms: vec![ms; n as usize] }
    }

    #[test]
    fn the_results_that_ask_for_a_back_off() {
        assert!(backs_off(Some(503), Some(ErrorKind::HttpStatus)));
        assert!(backs_off(Some(429), Some(ErrorKind::HttpStatus)));
        assert!(backs_off(None, Some(ErrorKind::Timeout)));
        assert!(backs_off(None, Some(ErrorKind::Connect)));
        assert!(!backs_off(Some(404), Some(ErrorKind::HttpStatus)));
        assert!(!backs_off(Some(200), None));
        assert!(!backs_off(None, Some(ErrorKind::BlockedAddress)));
    }

    #[test]
    fn doubles_after_each_window_of_successes_until_the_first_back_off_then_grows_by_one() {
        let mut window = Window::new(10);
        window.adapt(&successes(6, 100), 100);
        assert_eq!(window.size, 10, "not a full window yet");
        window.adapt(&successes(4, 100), 100);
        assert_eq!(window.size, 20);
        window.adapt(&successes(20, 100), 100);
        assert_eq!(window.size, 40);
        window.adapt(&Observed { back_offs: 1, ..successes(3, 100) }, 100);
        assert_eq!((window.size, window.backed_off), (20, true));
        window.adapt(&successes(20, 100), 100);
        assert_eq!(window.size, 21, "by one after the first back-off");
    }

    #[test]
    fn halves_when_a_windows_median_latency_passes_twice_the_baseline() {
        let mut window = Window::new(4);
        window.adapt(&successes(5, 100), 100);
        assert_eq!((window.size, window.baseline_ms), (8, Some(100)));
        window.adapt(&successes(8, 190), 100);
        assert_eq!(window.size, 16, "under the bound");
        let bound = window.latency_bound_ms().expect("a baseline");
        window.adapt(&successes(3, 2 * bound), 100);
        assert_eq!(window.size, 16, "judged once a window's worth is in");
        window.adapt(&successes(13, 2 * bound), 100);
        assert_eq!(window.size, 8);
    }

    #[test]
    fn a_fast_receiver_is_not_slowed_by_a_few_milliseconds_of_noise() {
        let mut window = Window::new(10);
        window.adapt(&successes(10, 1), 100);
        window.adapt(&successes(20, 30), 100);
        assert_eq!(window.size, 40);
    }

    #[test]
    fn stays_within_one_and_the_cap() {
        let mut window = Window::new(2);
        for _ in 0..5 {
            window.adapt(&Observed { back_offs: 1, ..Observed::default() }, 100);
        }
        assert_eq!(window.size, 1);
        let mut window = Window::new(10);
        for _ in 0..10 {
            window.adapt(&successes(1000, 5), 100);
        }
        assert_eq!(window.size, 100);
        window.adapt(&successes(0, 5), 30);
        assert_eq!(window.size, 30, "a lowered cap applies at once");
    }

    #[test]
    fn fifo_endpoints_stay_at_one() {
        assert_eq!(effective_in_flight(true, 50, 100), 1);
        assert_eq!(effective_in_flight(false, 50, 100), 50);
        assert_eq!(effective_in_flight(false, 150, 100), 100);
    }
}
