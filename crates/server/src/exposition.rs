//! Which text format `/metrics` answers in, chosen from the scraper's `Accept` header.
//!
//! Prometheus asks for OpenMetrics first and the classic text format 0.0.4 as a fallback;
//! `curl`, older scrapers and `promtool check metrics` ask for nothing in particular and get
//! the classic format. Each body is sent with its own `Content-Type`, so a scraper never reads
//! one format under the other's name (with OpenMetrics' `# EOF` and counter families typed
//! without `_total` under a 0.0.4 header, Prometheus took the counters for untyped series).
//! The rules follow Go's `expfmt.Negotiate`: the acceptable types in order of preference, the
//! first one we can produce wins, and the classic text format when none matches.

use std::str::FromStr;

/// A text format the endpoint can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// Prometheus text format 0.0.4: counters named and typed with `_total`, no `# EOF`.
    PrometheusText,
    /// OpenMetrics 1.0.0 text: counter families without `_total`, ends with `# EOF`.
    OpenMetrics,
}

/// The `Content-Type` of [`ExpositionFormat::PrometheusText`].
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of [`ExpositionFormat::OpenMetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl ExpositionFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
            ExpositionFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// The format to answer a request carrying `accept` (its `Accept` header, if any) with.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return ExpositionFormat::PrometheusText;
        };
        let mut ranges: Vec<(f32, mime::Mime)> = accept
            .split(',')
            .filter_map(|range| mime::Mime::from_str(range.trim()).ok())
            .filter_map(|range| {
                let quality = match range.get_param("q") {
                    // An unreadable weight makes the range unusable, not preferred.
                    Some(q) => q.as_str().parse::<f32>().ok()?,
                    None => 1.0,
                };
                (quality > 0.0).then_some((quality, range))
            })
            .collect();
        // Stable: equally weighted ranges keep the scraper's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges
            .iter()
            .find_map(|(_, range)| Self::producing(range))
            .unwrap_or(ExpositionFormat::PrometheusText)
    }

    /// The format that satisfies one media range, when we can produce it. Wildcards are left
    /// to the fallback, as Go's client does.
    fn producing(range: &mime::Mime) -> Option<Self> {
        let version = range.get_param("version").map(|v| v.as_str().to_owned());
        match (range.type_().as_str(), range.subtype().as_str()) {
            ("application", "openmetrics-text")
                if matches!(version.as_deref(), None | Some("1.0.0")) =>
            {
                Some(ExpositionFormat::OpenMetrics)
            }
            ("text", "plain") if matches!(version.as_deref(), None | Some("0.0.4")) => {
                Some(ExpositionFormat::PrometheusText)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExpositionFormat::{OpenMetrics, PrometheusText};
    use super::*;

    #[test]
    fn no_accept_header_gets_the_classic_text_format() {
        assert_eq!(ExpositionFormat::negotiate(None), PrometheusText);
        assert_eq!(ExpositionFormat::negotiate(Some("*/*")), PrometheusText);
        assert_eq!(ExpositionFormat::negotiate(Some("")), PrometheusText);
    }

    #[test]
    fn prometheus_2_scrape_accept_gets_openmetrics() {
        // What Prometheus 2.x sends by default.
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), OpenMetrics);
    }

    #[test]
    fn weights_decide_not_order() {
        let accept = "application/openmetrics-text;version=1.0.0;q=0.2, text/plain;version=0.0.4";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), PrometheusText);
        let accept = "text/plain;q=0.4, application/openmetrics-text";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), OpenMetrics);
    }

    #[test]
    fn versions_we_do_not_write_are_skipped() {
        // Text format 1.0.0 (Prometheus 3, UTF-8 names) is not ours: the next range is.
        let accept = "text/plain;version=1.0.0;escaping=allow-utf-8,application/openmetrics-text;version=1.0.0;q=0.9";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), OpenMetrics);
        let accept = "application/openmetrics-text;version=0.0.1";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), PrometheusText);
    }

    #[test]
    fn refused_and_malformed_ranges_are_ignored() {
        let accept = "application/openmetrics-text;q=0, text/plain;version=0.0.4;q=0.1";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), PrometheusText);
        let accept = "application/openmetrics-text;q=high, garbage";
        assert_eq!(ExpositionFormat::negotiate(Some(accept)), PrometheusText);
    }

    #[test]
    fn each_format_names_its_own_content_type() {
        assert_eq!(
            PrometheusText.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
    }
}
