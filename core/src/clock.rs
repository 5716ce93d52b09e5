//! Wall-clock helpers: Unix seconds and the contract's ISO 8601 timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time in ISO 8601 (UTC, milliseconds), as the contract's `timestamp`.
pub fn iso8601_now() -> String {
    format_iso(time::OffsetDateTime::now_utc())
}

/// A Unix time in seconds, in ISO 8601.
pub fn iso8601_secs(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format_iso(t)
}

/// A time, in ISO 8601 (UTC, milliseconds).
pub fn iso8601_at(at: SystemTime) -> String {
    format_iso(time::OffsetDateTime::from(at))
}

fn format_iso(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601_secs(0), "1970-01-01T00:00:00.000Z");
        assert!(iso8601_now().ends_with('Z'));
        assert!(unix_now() > 1_700_000_000);
    }
}
