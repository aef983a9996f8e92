//! UTC timestamps in the two forms the runner writes: .NET's `{0:u}` (`2026-08-17 12:00:00Z`,
//! in console lines and trace headers) and `yyyyMMdd-HHmmss` (in `_diag` file names).

use std::time::SystemTime;

/// One instant, to the second, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtcStamp {
    /// RFC 3339 with seconds: `2026-08-17T12:00:00Z`.
    rfc3339: String,
}

impl UtcStamp {
    pub fn now() -> Self {
        Self::at(SystemTime::now())
    }

    pub fn at(time: SystemTime) -> Self {
        Self {
            rfc3339: humantime::format_rfc3339_seconds(time).to_string(),
        }
    }

    /// `2026-08-17 12:00:00Z` (.NET's universal sortable format, `{0:u}`).
    pub fn sortable(&self) -> String {
        self.rfc3339.replacen('T', " ", 1)
    }

    /// `20260817-120000`, as in `Runner_20260817-120000-utc.log`.
    pub fn file_part(&self) -> String {
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        let (date, time) = self.rfc3339.split_once('T').unwrap_or((&self.rfc3339, ""));
        format!("{}-{}", digits(date), digits(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_dotnet() {
        // 2026-08-17 12:00:05 UTC
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_786_968_005);
        let stamp = UtcStamp::at(at);
        assert_eq!(stamp.sortable(), "2026-08-17 12:00:05Z");
        assert_eq!(stamp.file_part(), "20260817-120005");
    }
}
