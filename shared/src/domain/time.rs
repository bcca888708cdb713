//! Event time: milliseconds since the Unix epoch, parsed from RFC 3339 or a number.

use chrono::{DateTime, SecondsFormat, Utc};

use super::ids::InvalidField;

/// How far in the future an event time may be: 5 minutes, for clocks that drift.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Parses `2026-11-20T12:00:00Z` (RFC 3339) or `1795176000000` (ms since the epoch).
pub fn parse_time_ms(field: &str, value: &str) -> Result<i64, InvalidField> {
    let value = value.trim();
    if let Ok(ms) = value.parse::<i64>() {
        if ms < 0 {
            return Err(InvalidField::new(field, format!("{ms} is before 1970")));
        }
        return Ok(ms);
    }
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            InvalidField::new(
                field,
                format!(
                    "{value:?} is not a time ({e}); use RFC 3339 like 2026-11-20T12:00:00Z or milliseconds since the epoch"
                ),
            )
        })
}

/// Refuses an event time more than [`MAX_FUTURE_MS`] after `now_ms`.
pub fn check_not_in_future(field: &str, at_ms: i64, now_ms: i64) -> Result<(), InvalidField> {
    if at_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(InvalidField::new(
            field,
            format!(
                "{} is in the future; an event time may be at most 5 minutes ahead of now ({})",
                format_ms(at_ms),
                format_ms(now_ms)
            ),
        ));
    }
    Ok(())
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-20T12:00:00.000Z`.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_millis() {
        assert_eq!(
            parse_time_ms("at", "2026-11-20T12:00:00Z").unwrap(),
            1_795_176_000_000
        );
        assert_eq!(
            parse_time_ms("at", "1795176000000").unwrap(),
            1_795_176_000_000
        );
        assert_eq!(
            parse_time_ms("at", "2026-11-20T13:00:00+01:00").unwrap(),
            1_795_176_000_000
        );
        assert_eq!(parse_time_ms("at", "yesterday").unwrap_err().field, "at");
        assert!(parse_time_ms("at", "-5").is_err());
        assert_eq!(format_ms(1_795_176_000_000), "2026-11-20T12:00:00.000Z");
    }

    #[test]
    fn the_future_is_bounded() {
        let now = 1_795_176_000_000;
        assert!(check_not_in_future("at", now + MAX_FUTURE_MS, now).is_ok());
        assert!(check_not_in_future("at", now + 86_400_000, now).is_err());
        assert!(check_not_in_future("at", 0, now).is_ok());
    }
}
