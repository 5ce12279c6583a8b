//! A UTC calendar date from seconds since the epoch, for the few places that print one
//! (version prefixes' `<date:...>`, OCI image labels) without a date crate.

/// A moment in UTC, split into calendar parts.
pub struct Utc {
    pub year: i64,
    /// 1..=12
    pub month: i64,
    /// 1..=31
    pub day: i64,
    /// Day of the year, 1..=366.
    pub yday: i64,
    /// Seconds since midnight.
    pub secs: u64,
}

impl Utc {
    pub fn at(epoch: u64) -> Utc {
        let days = (epoch / 86400) as i64;
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const BEFORE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = BEFORE[(month - 1) as usize] + day + i64::from(month > 2 && leap);
        Utc {
            year,
            month,
            day,
            yday,
            secs: epoch % 86400,
        }
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time (`2023-11-14T22:13:20Z`).
pub fn rfc3339(epoch: u64) -> String {
    let u = Utc::at(epoch);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        u.year,
        u.month,
        u.day,
        u.secs / 3600,
        u.secs / 60 % 60,
        u.secs % 60
    )
}
