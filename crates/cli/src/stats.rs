//! Percentiles over measured durations (nearest-rank).

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
}
