//! Stats windows, buckets and percentiles. Latencies are kept as exact histograms of whole
//! milliseconds, so percentiles from the rollup equal those computed from the attempts.

use std::collections::BTreeMap;

/// Microseconds in a minute.
pub const MINUTE: i64 = 60 * 1_000_000;
/// Microseconds in an hour.
pub const HOUR: i64 = 60 * MINUTE;

/// A stats window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last hour, in minute buckets.
    Hour,
    /// The last 24 hours, in hour buckets.
    Day,
    /// The last 7 days, in hour buckets.
    Week,
}

impl Window {
    /// Parses `1h`, `24h` or `7d`.
    pub fn parse(text: &str) -> Option<Window> {
        match text {
            "1h" => Some(Window::Hour),
            "24h" | "1d" => Some(Window::Day),
            "7d" => Some(Window::Week),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }

    /// The rollup period that answers this window (`m` or `h`).
    pub fn period(self) -> &'static str {
        match self {
            Window::Hour => "m",
            Window::Day | Window::Week => "h",
        }
    }

    /// The first bucket inside the window ending at `now`.
    pub fn since(self, now: i64) -> i64 {
        match self {
            Window::Hour => floor(now - HOUR + MINUTE, MINUTE),
            Window::Day => floor(now - 24 * HOUR + HOUR, HOUR),
            Window::Week => floor(now - 7 * 24 * HOUR + HOUR, HOUR),
        }
    }

    /// The width of this window's buckets (µs): a minute for the hour, an hour beyond.
    pub fn step(self) -> i64 {
        match self {
            Window::Hour => MINUTE,
            Window::Day | Window::Week => HOUR,
        }
    }
}

/// One bucket of a series.
// Also the API's body (`PointOut`), so the field docs speak of the API: `at` is Unix µs here and
// RFC 3339 there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = PointOut)]
pub struct Point {
    /// Start of the bucket (RFC 3339, UTC).
    #[serde(serialize_with = "super::time::serialize")]
    #[schema(value_type = String)]
    pub at: i64,
    /// Attempts finished in the bucket.
    pub attempts: i64,
    /// Those that failed.
    pub failures: i64,
    /// Median latency, ms (`null` without attempts).
    pub p50: Option<i64>,
    /// 95th percentile latency, ms (`null` without attempts).
    pub p95: Option<i64>,
}

/// A rollup row: bucket start, attempts, failures, and the latency histogram as stored.
pub type BucketRow = (i64, i64, i64, String);

/// The series of `window` ending at `now`: one point per bucket, oldest first, buckets without
/// attempts included (so a chart's gaps are real quiet, not missing data); rows of the same
/// bucket (several endpoints) are summed and their histograms merged.
pub fn series(window: Window, now: i64, rows: &[BucketRow]) -> Vec<Point> {
    let step = window.step();
    let since = window.since(now);
    let mut buckets: BTreeMap<i64, (i64, i64, BTreeMap<i64, i64>)> = (0..)
        .map(|i| since + i * step)
        .take_while(|at| *at <= now)
        .map(|at| (at, Default::default()))
        .collect();
    for (at, attempts, failures, latency) in rows {
        if let Some((a, f, histogram)) = buckets.get_mut(&floor(*at, step)) {
            *a += attempts;
            *f += failures;
            merge_histogram(histogram, latency);
        }
    }
    buckets
        .into_iter()
        .map(|(at, (attempts, failures, histogram))| Point {
            at,
            attempts,
            failures,
            p50: percentile(&histogram, 50.0),
            p95: percentile(&histogram, 95.0),
        })
        .collect()
}

/// The start of the bucket of length `size` holding `at`.
pub fn floor(at: i64, size: i64) -> i64 {
    at - at.rem_euclid(size)
}

/// Nearest-rank percentile: the smallest recorded value with at least `p` % of the samples at or
/// below it. `None` without samples.
pub fn percentile(histogram: &BTreeMap<i64, i64>, p: f64) -> Option<i64> {
    let total: i64 = histogram.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (value, count) in histogram {
        seen += count;
        if seen >= rank {
            return Some(*value);
        }
    }
    histogram.keys().next_back().copied()
}

/// Adds a stored histogram (`{"ms": count}`) into `into`.
pub fn merge_histogram(into: &mut BTreeMap<i64, i64>, stored: &str) {
    if let Ok(map) = serde_json::from_str::<BTreeMap<String, i64>>(stored) {
        for (ms, count) in map {
            if let Ok(ms) = ms.parse::<i64>() {
                *into.entry(ms).or_default() += count;
            }
        }
    }
}

/// Serialises a histogram for storage.
pub fn histogram_json(histogram: &BTreeMap<i64, i64>) -> String {
    let map: BTreeMap<String, i64> = histogram.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
}

/// One rollup bucket: an endpoint's attempts finished in one minute (`m`) or one hour (`h`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bucket {
    /// The endpoint.
    pub endpoint_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// `m` or `h`.
    pub period: &'static str,
    /// The bucket's start (Unix µs).
    pub start: i64,
}

/// What attempts add to one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Attempts finished.
    pub attempts: i64,
    /// 2xx answers.
    pub successes: i64,
    /// Everything else.
    pub failures: i64,
    /// Whole milliseconds → attempts.
    pub latency: BTreeMap<i64, i64>,
}

/// The stats rollup of a batch of finished attempts: each attempt counts once in its minute
/// bucket and once in its hour bucket, so every window is a sum of stored buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollup(pub BTreeMap<Bucket, Counts>);

impl Rollup {
    /// Counts one attempt of `endpoint_id` that finished at `finished_at` (Unix µs) after
    /// `duration_ms`.
    pub fn add(
        &mut self,
        endpoint_id: &str,
        tenant_id: &str,
        finished_at: i64,
        success: bool,
        duration_ms: i64,
    ) {
        for (period, size) in [("m", MINUTE), ("h", HOUR)] {
            let bucket = Bucket {
                endpoint_id: endpoint_id.to_owned(),
                tenant_id: tenant_id.to_owned(),
                period,
                start: floor(finished_at, size),
            };
            let counts = self.0.entry(bucket).or_default();
            counts.attempts += 1;
            if success {
                counts.successes += 1;
            } else {
                counts.failures += 1;
            }
            *counts.latency.entry(duration_ms.max(0)).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_has_every_bucket_of_its_window_and_sums_each_bucket() {
        let now = 10 * HOUR + 30 * MINUTE + 5_000_000;
        let rows = vec![
            (now - 2 * MINUTE - 1_000_000, 3, 1, r#"{"10":2,"30":1}"#.to_owned()),
            (floor(now, MINUTE) - 2 * MINUTE, 1, 1, r#"{"50":1}"#.to_owned()),
            (now - 2 * HOUR, 9, 9, "{}".to_owned()),
        ];
        let points = series(Window::Hour, now, &rows);
        assert_eq!(points.len(), 60, "a minute bucket for each minute of the hour");
        assert_eq!(points.first().map(|p| p.at), Some(Window::Hour.since(now)));
        assert_eq!(points.last().map(|p| p.at), Some(floor(now, MINUTE)));
        let busy: Vec<&Point> = points.iter().filter(|p| p.attempts > 0).collect();
        assert_eq!(busy.len(), 1, "two rows of one bucket, one row outside the window");
        assert_eq!(
            (busy[0].attempts, busy[0].failures, busy[0].p50, busy[0].p95),
            (4, 2, Some(10), Some(50))
        );
        assert!(points.iter().filter(|p| p.attempts == 0).all(|p| p.p50.is_none() && p.p95.is_none()));
        assert_eq!(series(Window::Week, now, &[]).len(), 7 * 24);
        assert_eq!(Window::Day.step(), HOUR);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut h = BTreeMap::new();
        for ms in 1..=100 {
            h.insert(ms, 1);
        }
        assert_eq!(percentile(&h, 50.0), Some(50));
        assert_eq!(percentile(&h, 95.0), Some(95));
        assert_eq!(percentile(&h, 99.0), Some(99));
        let skewed = BTreeMap::from([(5, 9), (1000, 1)]);
        assert_eq!(percentile(&skewed, 50.0), Some(5));
        assert_eq!(percentile(&skewed, 95.0), Some(1000));
        assert_eq!(percentile(&BTreeMap::new(), 50.0), None);
    }

    #[test]
    fn histograms_round_trip_and_merge() {
        let h = BTreeMap::from([(3, 2), (10, 1)]);
        let mut merged = BTreeMap::from([(3, 1)]);
        merge_histogram(&mut merged, &histogram_json(&h));
        assert_eq!(merged, BTreeMap::from([(3, 3), (10, 1)]));
    }

    #[test]
    fn an_attempt_counts_once_in_its_minute_and_once_in_its_hour() {
        let mut rollup = Rollup::default();
        rollup.add("ep_1", "tnt_1", 2 * HOUR + 5 * MINUTE + 7, true, 12);
        rollup.add("ep_1", "tnt_1", 2 * HOUR + 5 * MINUTE + 9, false, 30);
        rollup.add("ep_1", "tnt_1", 2 * HOUR + 6 * MINUTE, false, -1);
        assert_eq!(rollup.0.len(), 3, "two minutes and one hour");
        let hour = &rollup.0
            [&Bucket { endpoint_id: "ep_1".into(), tenant_id: "tnt_1".into(), period: "h", start: 2 * HOUR }];
        assert_eq!((hour.attempts, hour.successes, hour.failures), (3, 1, 2));
        assert_eq!(hour.latency, BTreeMap::from([(0, 1), (12, 1), (30, 1)]), "negative durations count as 0");
        let minute = &rollup.0[&Bucket {
            endpoint_id: "ep_1".into(),
            tenant_id: "tnt_1".into(),
            period: "m",
            start: 2 * HOUR + 5 * MINUTE,
        }];
        assert_eq!((minute.attempts, minute.successes, minute.failures), (2, 1, 1));
    }

    #[test]
    fn windows_parse_and_align() {
        assert_eq!(Window::parse("24h"), Some(Window::Day));
        assert_eq!(Window::parse("2h"), None);
        let now = 10 * HOUR + 30 * MINUTE + 5;
        assert_eq!(Window::Hour.since(now), 9 * HOUR + 31 * MINUTE);
        assert_eq!(Window::Day.since(now), -13 * HOUR);
    }
}
