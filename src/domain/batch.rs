//! Batched delivery (DESIGN §14): an endpoint that asks for batches receives a JSON array of
//! envelopes in one signed request. These rules decide when a batch goes (full, or its oldest
//! member has waited `max_wait`), how due deliveries split into requests (at most `max_events`
//! and `max_bytes` each; an event larger than `max_bytes` goes alone), the request body, and the
//! one next due time a failed batch's members share. Pure; the claim and the dispatcher apply
//! them.

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;
use crate::domain::retry::Outcome;

/// Bounds of `max_events`.
pub const MAX_EVENTS_RANGE: std::ops::RangeInclusive<u32> = 2..=1000;
/// The longest `max_wait`.
pub const MAX_WAIT_LIMIT: Duration = Duration::from_secs(10);
/// `max_bytes` when not given: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Bounds of `max_bytes`: 1 KiB to 16 MiB.
pub const MAX_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

/// An endpoint's batching, as stored (`endpoints.batch`, JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// Most events in one request.
    pub max_events: u32,
    /// Longest a due delivery waits for its batch to fill, ms.
    pub max_wait_ms: u64,
    /// Most body bytes in one request (an event alone may exceed it).
    pub max_bytes: u64,
}

impl Batching {
    /// Checks the bounds, naming the field under `batch.` in `invalid`.
    pub fn check(&self, invalid: &mut Invalid) {
        if !MAX_EVENTS_RANGE.contains(&self.max_events) {
            invalid.push("batch.max_events", "must be between 2 and 1000");
        }
        if self.max_wait_ms > MAX_WAIT_LIMIT.as_millis() as u64 {
            invalid.push("batch.max_wait", "must be between 0ms and 10s");
        }
        if !MAX_BYTES_RANGE.contains(&self.max_bytes) {
            invalid.push("batch.max_bytes", "must be between 1024 and 16777216 bytes (16 MiB)");
        }
    }

    /// The longest wait.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// The stored form.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn from_stored(stored: &str) -> Result<Batching, serde_json::Error> {
        serde_json::from_str(stored)
    }

    /// Whether the due deliveries go now: a full batch is due, or the oldest has waited
    /// `max_wait` (`oldest_due_at`, Unix µs).
    pub fn ready(&self, due: usize, oldest_due_at: i64, now: i64) -> bool {
        due >= self.max_events as usize || now - oldest_due_at >= self.max_wait().as_micros() as i64
    }

    /// Splits due deliveries (their envelopes' sizes, in order) into requests: consecutive runs
    /// of at most `max_events` whose body stays within `max_bytes`; an envelope larger than
    /// `max_bytes` goes alone. At most `requests` of them.
    pub fn split(&self, sizes: &[usize], requests: usize) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let mut start = 0;
        while start < sizes.len() && batches.len() < requests {
            let mut end = start;
            // `[` and `]`, and a comma between envelopes.
            let mut bytes = 2;
            while end < sizes.len() && end - start < self.max_events as usize {
                let added = sizes[end] + usize::from(end > start);
                if end > start && (bytes + added) as u64 > self.max_bytes {
                    break;
                }
                bytes += added;
                end += 1;
            }
            batches.push(start..end);
            start = end;
        }
        batches
    }
}

/// The body of a batch request: a JSON array of the members' envelopes, in order.
pub fn body<'a>(envelopes: impl IntoIterator<Item = &'a str>) -> String {
    let mut body = String::from("[");
    for (index, envelope) in envelopes.into_iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(envelope);
    }
    body.push(']');
    body
}

/// The members of a failed batch retry together: every member that retries is due again after
/// the same wait, the first retrying member's (its jitter is the batch's).
pub fn retry_together(outcomes: &mut [Outcome]) {
    let shared = outcomes.iter().find_map(|outcome| match outcome {
        Outcome::Retry { after, .. } => Some(*after),
        _ => None,
    });
    if let Some(shared) = shared {
        for outcome in outcomes {
            if let Outcome::Retry { after, .. } = outcome {
                *after = shared;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(max_events: u32, max_wait_ms: u64, max_bytes: u64) -> Batching {
        Batching { max_events, max_wait_ms, max_bytes }
    }

    #[test]
    fn bounds_are_checked_by_field() {
        let mut invalid = Invalid::default();
        batching(1, 10_001, 10).check(&mut invalid);
        let fields: Vec<String> = invalid.0.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["batch.max_events", "batch.max_wait", "batch.max_bytes"]);
        let mut invalid = Invalid::default();
        batching(1000, 10_000, DEFAULT_MAX_BYTES).check(&mut invalid);
        assert!(invalid.0.is_empty());
    }

    #[test]
    fn a_batch_goes_when_full_or_when_its_oldest_member_has_waited() {
        let b = batching(50, 100, DEFAULT_MAX_BYTES);
        assert!(b.ready(50, 1_000_000, 1_000_000), "full");
        assert!(!b.ready(49, 1_000_000, 1_050_000), "50 ms of 100");
        assert!(b.ready(1, 1_000_000, 1_100_000), "waited max_wait");
        assert!(batching(50, 0, DEFAULT_MAX_BYTES).ready(1, 5, 5), "max_wait 0: at once");
    }

    #[test]
    fn splits_by_count_and_bytes_and_a_large_event_goes_alone() {
        let b = batching(3, 0, 100);
        assert_eq!(b.split(&[10; 7], 10), [0..3, 3..6, 6..7]);
        assert_eq!(b.split(&[10; 7], 2), [0..3, 3..6], "at most the free slots");
        // 2 + 40 + 1 + 40 = 83; a third would pass 100.
        assert_eq!(b.split(&[40, 40, 40], 10), [0..2, 2..3]);
        assert_eq!(b.split(&[10, 500, 10], 10), [0..1, 1..2, 2..3], "too large: alone");
        assert!(b.split(&[], 10).is_empty());
    }

    #[test]
    fn the_body_is_the_envelopes_in_an_array() {
        assert_eq!(body(["{\"a\":1}", "{\"b\":2}"]), "[{\"a\":1},{\"b\":2}]");
        let parsed: serde_json::Value = serde_json::from_str(&body(["{}"])).expect("JSON");
        assert_eq!(parsed, serde_json::json!([{}]));
    }

    #[test]
    fn failed_members_share_one_next_due_time() {
        let mut outcomes = vec![
            Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false },
            Outcome::GiveUp { disable_endpoint: false },
            Outcome::Retry { after: Duration::from_secs(300), pause_endpoint: false },
        ];
        retry_together(&mut outcomes);
        assert_eq!(outcomes[2], Outcome::Retry { after: Duration::from_secs(5), pause_endpoint: false });
        assert_eq!(outcomes[1], Outcome::GiveUp { disable_endpoint: false }, "its run is spent");
    }
}
