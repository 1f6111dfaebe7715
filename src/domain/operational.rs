//! Operational events (DESIGN §5.3): what Herald reports about itself to the operations tenant,
//! and the rate limit on `delivery.exhausted` reports (at most 10 a minute per endpoint; the
//! first one after a quiet spell carries how many were suppressed).

/// Most `delivery.exhausted` reports per endpoint in one window.
pub const EXHAUSTED_PER_WINDOW: i32 = 10;
/// The window of that limit, in microseconds.
pub const EXHAUSTED_WINDOW: i64 = 60_000_000;

/// Whether a delivery left `failed` is reported, given the endpoint's report window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExhaustedReport {
    /// Report it; the window then starts at `window_start` and holds `sent` reports.
    Send {
        /// The window's start (Unix µs).
        window_start: i64,
        /// Reports in the window, this one included.
        sent: i32,
    },
    /// Count it as suppressed.
    Suppress,
}

/// Decides the report of a delivery left `failed` at `now`, given the endpoint's current window
/// (its start, and the reports sent in it).
pub fn exhausted_report(window_start: Option<i64>, sent: i32, now: i64) -> ExhaustedReport {
    let (window_start, sent) = match window_start {
        Some(start) if now - start < EXHAUSTED_WINDOW => (start, sent),
        _ => (now, 0),
    };
    if sent >= EXHAUSTED_PER_WINDOW {
        ExhaustedReport::Suppress
    } else {
        ExhaustedReport::Send { window_start, sent: sent + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_reports_a_minute_then_suppressed_until_the_window_ends() {
        assert_eq!(exhausted_report(None, 0, 5), ExhaustedReport::Send { window_start: 5, sent: 1 });
        assert_eq!(exhausted_report(Some(5), 9, 6), ExhaustedReport::Send { window_start: 5, sent: 10 });
        assert_eq!(exhausted_report(Some(5), 10, 6), ExhaustedReport::Suppress);
        let later = 5 + EXHAUSTED_WINDOW;
        assert_eq!(
            exhausted_report(Some(5), 10, later),
            ExhaustedReport::Send { window_start: later, sent: 1 }
        );
    }
}
