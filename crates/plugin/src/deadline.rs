//! How long a call may take: the configured budget, capped by the caller's own deadline
//! (`grpc-timeout`, which myshoes sets from its context) minus a margin so our answer still
//! reaches it.

use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// Part of the caller's deadline kept for the answer to travel back.
const MARGIN_FRACTION: u32 = 20;
const MAX_MARGIN: Duration = Duration::from_secs(5);

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The time this call may use.
pub fn call_budget(metadata: &MetadataMap, configured: Duration) -> Duration {
    let caller = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    match caller {
        Some(caller) => {
            let margin = (caller / MARGIN_FRACTION).min(MAX_MARGIN);
            configured.min(caller.saturating_sub(margin))
        }
        None => configured,
    }
}

pub fn call_deadline(metadata: &MetadataMap, configured: Duration) -> Instant {
    Instant::now() + call_budget(metadata, configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("300S"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("299999m"),
            Some(Duration::from_millis(299_999))
        );
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S", "10"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_budget_is_capped_by_the_callers_deadline() {
        let configured = Duration::from_secs(290);
        let mut metadata = MetadataMap::new();
        assert_eq!(call_budget(&metadata, configured), configured);
        // myshoes' 5 minutes: our own budget is shorter already.
        metadata.insert("grpc-timeout", "300S".parse().expect("ascii"));
        assert_eq!(call_budget(&metadata, configured), configured);
        // A shorter caller deadline wins, minus a margin for the answer.
        metadata.insert("grpc-timeout", "10S".parse().expect("ascii"));
        assert_eq!(
            call_budget(&metadata, configured),
            Duration::from_millis(9500)
        );
        metadata.insert("grpc-timeout", "1H".parse().expect("ascii"));
        assert_eq!(call_budget(&metadata, configured), configured);
        metadata.insert("grpc-timeout", "garbage".parse().expect("ascii"));
        assert_eq!(call_budget(&metadata, configured), configured);
    }
}
