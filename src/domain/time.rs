//! Time as Herald stores and shows it: microseconds since the Unix epoch in the database,
//! RFC 3339 UTC with milliseconds and `Z` on the wire.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Serializer;

/// Current time in Unix microseconds.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Converts Unix microseconds to a UTC time.
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}

/// Formats Unix microseconds as `2026-01-15T10:30:00.000Z`.
pub fn format_micros(micros: i64) -> String {
    from_micros(micros).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time with an explicit offset; naive times are refused.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .map_err(|_| format!("`{text}` is not an RFC 3339 time with an offset, such as 2026-01-15T10:30:00Z"))
}

/// Serde helper: Unix microseconds out as RFC 3339.
pub fn serialize<S: Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_micros(*micros))
}

/// Serde helper: optional Unix microseconds out as RFC 3339 or `null`.
pub fn serialize_opt<S: Serializer>(micros: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => serializer.serialize_str(&format_micros(*m)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(format_micros(1_614_265_330_123_456), "2021-02-25T15:02:10.123Z");
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets_and_refuses_naive_times() {
        assert_eq!(parse_rfc3339("2021-02-25T16:02:10+01:00"), Ok(1_614_265_330_000_000));
        assert!(parse_rfc3339("2021-02-25T15:02:10").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
