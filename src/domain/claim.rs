//! Claim planning (DESIGN §5 isolation, FIFO, §5.1): how many deliveries one endpoint may start
//! now (its in-flight cap, its FIFO lane, its rate limit), and where the next claim starts so
//! that endpoints with due work are served round-robin. Pure; the store reads the figures and
//! writes what these functions decide.

use std::collections::HashSet;
use std::time::Duration;

/// What a claim made ahead must keep of its lease beyond its attempt's timeout: time to record
/// the answer (the margin `[delivery] lease` keeps over `timeout`).
const AHEAD_LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The least wait for a slot a claim made ahead must be able to afford: an endpoint whose
/// timeout leaves less of the lease is not claimed ahead (its claims would be given back).
pub const AHEAD_LEAST_WAIT: Duration = Duration::from_secs(1);

/// Claims made one window ahead (DESIGN §17): how long they may wait for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ahead {
    /// How long a claim holds its delivery (`[delivery] lease`).
    pub lease: Duration,
    /// `[delivery] timeout`, for endpoints without their own.
    pub server_timeout: Duration,
}

impl Ahead {
    /// Whether a claim made ahead for an endpoint whose attempts time out after `timeout` (its
    /// own, else the server's) may still start after waiting `waited`: its answer comes back,
    /// with time to record it, before its lease lapses.
    pub fn may_start(&self, timeout: Option<Duration>, waited: Duration) -> bool {
        self.start_within(timeout).is_some_and(|within| waited <= within)
    }

    /// How long after it was made such a claim may still start (`None`: not at all).
    pub fn start_within(&self, timeout: Option<Duration>) -> Option<Duration> {
        self.lease.checked_sub(timeout.unwrap_or(self.server_timeout) + AHEAD_LEASE_MARGIN)
    }
}

/// An endpoint with due work, as a claim sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// FIFO: at most one attempt in flight, in acceptance order.
    pub fifo: bool,
    /// Cap on attempts in flight.
    pub max_in_flight: i32,
    /// Attempts in flight now, across every process.
    pub in_flight: i64,
    /// Its rate limit, when it has one.
    pub rate: Option<Rate>,
}

/// A per-endpoint rate limit, enforced as a GCRA (generic cell rate algorithm) whose state is
/// one stored time: when the next request would conform (`next_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second.
    pub per_second: i32,
    /// The stored theoretical arrival time (Unix µs), if any request was charged yet.
    pub next_at: Option<i64>,
}

impl Rate {
    /// Microseconds between two requests.
    fn interval(self) -> i64 {
        1_000_000 / i64::from(self.per_second).max(1)
    }

    /// Requests allowed at `now`: a burst of a tenth of a second's worth (at least one) beyond
    /// the steady rate.
    pub fn allowed(self, now: i64) -> i64 {
        let interval = self.interval();
        let burst = (i64::from(self.per_second) / 10).max(1);
        let tat = self.next_at.unwrap_or(now).max(now);
        ((now + burst * interval - tat) / interval).max(0)
    }

    /// The stored time after charging `n` requests at `now`.
    pub fn charged(self, now: i64, n: i64) -> i64 {
        self.next_at.unwrap_or(now).max(now) + self.interval() * n
    }
}

impl Candidate {
    /// How many deliveries this endpoint may start now: its free slots (one lane for FIFO),
    /// within what its rate limit allows.
    pub fn room(&self, now: i64) -> i64 {
        let slots = if self.fifo {
            i64::from(self.in_flight == 0)
        } else {
            i64::from(self.max_in_flight) - self.in_flight
        };
        match self.rate {
            Some(rate) => slots.min(rate.allowed(now)),
            None => slots,
        }
    }

    /// How many deliveries this endpoint may be claimed for one window ahead of its free slots
    /// (DESIGN §17, §5.1 amended), beyond `now_room` claimed to start now: so that a slot freed
    /// by an answer is refilled at once instead of waiting for the next claim's commit. At most
    /// one window ahead, and never past two windows leased in all. Only where a claim is the
    /// whole story of the lane: not a FIFO lane (one at a time, in order) and not a rate-limited
    /// endpoint (its tokens are charged at claim).
    pub fn ahead(&self, now_room: i64) -> i64 {
        if self.fifo || self.rate.is_some() {
            return 0;
        }
        let window = i64::from(self.max_in_flight);
        (2 * window - self.in_flight - now_room.max(0)).clamp(0, window)
    }
}

/// Whether a FIFO lane's head can start now: it is due and not leased (a lapsed lease is closed
/// by the reaper first, so its attempt is recorded, before the lane moves).
pub fn fifo_head_ready(next_attempt_at: i64, leased: bool, now: i64) -> bool {
    next_attempt_at <= now && !leased
}

/// Where the next claim starts looking (endpoints are visited in id order after the cursor,
/// wrapping around): after the last endpoint served, or, when none was, after the last one
/// looked at. `order` is the order the endpoints were looked at. When the claim had room left
/// (`room_left`), every endpoint with work it could start was served: the next one starts from
/// the first endpoint again (`None`), which needs one read instead of two (one after the cursor,
/// one wrapping around).
pub fn next_cursor<'a>(order: &'a [String], served: &HashSet<&str>, room_left: bool) -> Option<&'a String> {
    if room_left {
        return None;
    }
    order.iter().rev().find(|id| served.contains(id.as_str())).or(order.last())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn candidate(fifo: bool, max_in_flight: i32, in_flight: i64) -> Candidate {
        Candidate { fifo, max_in_flight, in_flight, rate: None }
    }

    #[test]
    fn room_is_the_free_slots_under_the_cap() {
        assert_eq!(candidate(false, 10, 0).room(0), 10);
        assert_eq!(candidate(false, 10, 7).room(0), 3);
        assert_eq!(candidate(false, 10, 12).room(0), -2, "over the cap: nothing");
    }

    #[test]
    fn claims_go_at_most_one_window_ahead_of_the_free_slots() {
        assert_eq!(candidate(false, 10, 0).ahead(10), 10, "an idle endpoint: a window now, a window ahead");
        assert_eq!(candidate(false, 10, 10).ahead(0), 10, "a full window: one more ahead");
        assert_eq!(candidate(false, 10, 14).ahead(0), 6, "never two windows leased in all");
        assert_eq!(candidate(false, 10, 20).ahead(0), 0);
        assert_eq!(candidate(false, 10, 25).ahead(0), 0, "over the cap: nothing");
        assert_eq!(candidate(true, 10, 0).ahead(1), 0, "a FIFO lane: never ahead");
        let limited =
            Candidate { rate: Some(Rate { per_second: 100, next_at: None }), ..candidate(false, 10, 0) };
        assert_eq!(limited.ahead(10), 0, "a rate limit: never ahead");
    }

    #[test]
    fn a_claim_made_ahead_starts_only_while_its_answer_can_come_back_within_the_lease() {
        let ahead = Ahead { lease: Duration::from_secs(30), server_timeout: Duration::from_secs(10) };
        assert!(ahead.may_start(None, Duration::ZERO));
        assert!(ahead.may_start(None, Duration::from_secs(15)), "10s + 5s to record: 15s to wait");
        assert!(!ahead.may_start(None, Duration::from_millis(15_001)));
        assert!(ahead.may_start(Some(Duration::from_secs(24)), Duration::from_secs(1)));
        assert!(
            !ahead.may_start(Some(Duration::from_secs(25)), AHEAD_LEAST_WAIT),
            "the longest timeout: never ahead"
        );
    }

    #[test]
    fn a_fifo_lane_holds_one_at_a_time() {
        assert_eq!(candidate(true, 10, 0).room(0), 1);
        assert_eq!(candidate(true, 10, 1).room(0), 0);
    }

    #[test]
    fn the_rate_limit_allows_a_tenth_of_a_second_burst_then_the_steady_rate() {
        let now = 100 * SECOND;
        let fresh = Rate { per_second: 100, next_at: None };
        assert_eq!(fresh.allowed(now), 10);
        let spent = Rate { per_second: 100, next_at: Some(fresh.charged(now, 10)) };
        assert_eq!(spent.allowed(now), 0);
        assert_eq!(spent.allowed(now + SECOND / 100), 1, "one interval later, one more");
        let slow = Rate { per_second: 1, next_at: None };
        assert_eq!(slow.allowed(now), 1, "at least one");
        let stale = Rate { per_second: 100, next_at: Some(now - 60 * SECOND) };
        assert_eq!(stale.allowed(now), 10, "an old stored time gives no more than the burst");
        let mut limited = candidate(false, 10, 0);
        limited.rate = Some(Rate { per_second: 20, next_at: None });
        assert_eq!(limited.room(now), 2);
    }

    #[test]
    fn a_fifo_head_starts_when_due_and_not_leased() {
        assert!(fifo_head_ready(5, false, 5));
        assert!(!fifo_head_ready(6, false, 5), "a retry waiting holds the lane");
        assert!(!fifo_head_ready(5, true, 5), "in flight, or a lapsed lease the reaper closes first");
    }

    #[test]
    fn the_next_claim_starts_after_the_last_endpoint_served() {
        let order: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(next_cursor(&order, &HashSet::from(["a", "b"]), false).map(String::as_str), Some("b"));
        assert_eq!(next_cursor(&order, &HashSet::new(), false).map(String::as_str), Some("c"));
        assert_eq!(
            next_cursor(&order, &HashSet::from(["a", "b", "c"]), true),
            None,
            "all served: start over"
        );
        assert_eq!(next_cursor(&[], &HashSet::new(), true), None);
    }
}
