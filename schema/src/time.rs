//! Times as the seed shows them: `YYYY-MM-DD HH:MM:SS`, here always in UTC.
//! The seed's JSON messages carry them in `time`; the `chat` client prints
//! them the same way.

use std::fmt;

/// A time in milliseconds since the Unix epoch, written as UTC
/// `YYYY-MM-DD HH:MM:SS` (the seed's `time` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime(pub u64);

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

/// Year, month, day of the day `days` after 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_civil_dates() {
        let cases = [
            (0, "1970-01-01 00:00:00"),
            (951_782_400_000, "2000-02-29 00:00:00"),
            (1_709_251_199_999, "2024-02-29 23:59:59"),
            (1_700_000_000_000, "2023-11-14 22:13:20"),
            (4_102_444_800_000, "2100-01-01 00:00:00"),
            (253_402_300_799_000, "9999-12-31 23:59:59"),
        ];
        for (ms, text) in cases {
            assert_eq!(UtcTime(ms).to_string(), text);
        }
        // Never panics, even at the end of time.
        assert!(!UtcTime(u64::MAX).to_string().is_empty());
    }
}
