//! Percentiles over measured durations (nearest-rank), as table cells or JSON.

use std::time::Duration;

/// The `p`-th percentile (0-100) by nearest rank; `None` for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Whole milliseconds, for JSON (saturating; no duration here comes near the limit).
pub fn millis(value: Duration) -> u64 {
    u64::try_from(value.as_millis()).unwrap_or(u64::MAX)
}

/// `{"p50": ms, "p95": ms, "samples": n}` for JSON, milliseconds with fractions; the
/// percentiles are null without samples.
pub fn p50_p95_json(samples: &[Duration]) -> serde_json::Value {
    let ms = |p: f64| percentile(samples, p).map(|d| d.as_secs_f64() * 1000.0);
    serde_json::json!({"p50": ms(50.0), "p95": ms(95.0), "samples": samples.len()})
}

/// Milliseconds with two decimals, or `-` when there is nothing to show.
pub fn ms(value: Option<Duration>) -> String {
    value.map_or_else(
        || "-".to_string(),
        |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 95.0), Some(Duration::from_millis(95)));
        assert_eq!(
            percentile(&samples, 100.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 95.0),
            Some(Duration::from_millis(7))
        );
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(ms(None), "-");
        assert_eq!(ms(Some(Duration::from_micros(1500))), "1.50");
    }

    #[test]
    fn json_percentiles_are_milliseconds_or_null() {
        let samples: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let json = p50_p95_json(&samples);
        assert_eq!(json["p50"], 10.0);
        assert_eq!(json["p95"], 19.0);
        assert_eq!(json["samples"], 20);
        let none = p50_p95_json(&[]);
        assert!(none["p50"].is_null() && none["p95"].is_null(), "{none}");
        assert_eq!(millis(Duration::from_micros(2500)), 2);
    }
}
