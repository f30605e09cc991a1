//! The one duration parser of the config and the watchlist: humantime's syntax (`"90s"`,
//! `"2m"`, `"1h 30m"`), bounded above, so no deadline computed from a setting can overflow the
//! clock.

use std::time::Duration;

/// The longest duration any setting takes: a year and a day. The API lists executions of the
/// last year, and nothing flowwatch waits for is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration; humantime's reason.
    Syntax(String),
    /// Longer than [`MAX_DURATION`].
    TooLong,
}

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let duration =
        humantime::parse_duration(text.trim()).map_err(|e| DurationError::Syntax(e.to_string()))?;
    if duration > MAX_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_the_humantime_way_and_absurd_ones_are_refused() {
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("366days"), Ok(MAX_DURATION));
        assert_eq!(parse("100000000y"), Err(DurationError::TooLong));
        assert!(matches!(parse("10"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse("5 parsecs"), Err(DurationError::Syntax(_))));
    }
}
