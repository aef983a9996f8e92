//! Reading the server's `/metrics`: the few gauges the bench reports, and a sampler of the
//! store writer's lag while a phase runs.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// Agents with a live, synced stream (crates/server/src/metrics.rs).
pub const AGENTS_ONLINE: &str = "shoesvz_agents_online";
/// Runners by state, deleted ones excluded (a family: summed over its states).
pub const RUNNERS: &str = "shoesvz_runners_total";
/// Age of the oldest queued store write not yet durable (the store writer's rewrite adds it).
pub const WRITER_LAG: &str = "shoesvz_store_writer_lag_seconds";
/// Store writes waiting.
pub const WRITER_QUEUE: &str = "shoesvz_store_writer_queue";

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot set up an HTTP client for /metrics")]
    Client(#[source] reqwest::Error),
    #[error("cannot read the server's /metrics at {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// One `/metrics` page: each metric's value, a family's samples summed over their labels.
#[derive(Debug, Default, Clone)]
pub struct Gauges(BTreeMap<String, f64>);

impl Gauges {
    pub fn parse(text: &str) -> Gauges {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *values.entry(name.to_string()).or_insert(0.0) += value;
        }
        Gauges(values)
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
}

/// A client for one server's `/metrics`.
#[derive(Clone)]
pub struct MetricsClient {
    http: reqwest::Client,
    url: String,
}

impl MetricsClient {
    pub fn new(metrics_addr: std::net::SocketAddr) -> Result<MetricsClient, ScrapeError> {
        Ok(MetricsClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(ScrapeError::Client)?,
            url: format!("http://{metrics_addr}/metrics"),
        })
    }

    pub async fn gauges(&self) -> Result<Gauges, ScrapeError> {
        let failed = |source| ScrapeError::Http {
            url: self.url.clone(),
            source,
        };
        let text = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .text()
            .await
            .map_err(failed)?;
        Ok(Gauges::parse(&text))
    }
}

/// The writer's lag and queue as sampled during one phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WriterLag {
    pub samples: usize,
    /// `None`: the server has no writer-lag gauge.
    pub lag_max_ms: Option<f64>,
    pub lag_p50_ms: Option<f64>,
    pub queue_max: Option<f64>,
}

impl WriterLag {
    pub fn describe(&self) -> String {
        match (self.lag_max_ms, self.lag_p50_ms) {
            (Some(max), Some(p50)) => {
                let queue = self
                    .queue_max
                    .map_or_else(|| "n/a".to_string(), |q| format!("{q:.0}"));
                format!(
                    "max {max:.1} ms, p50 {p50:.1} ms, queue max {queue} ({} samples)",
                    self.samples
                )
            }
            _ => "n/a (server has no writer-lag gauge)".to_string(),
        }
    }

    pub fn short(&self) -> String {
        self.lag_max_ms
            .map_or_else(|| "n/a".to_string(), |max| format!("{max:.1}"))
    }
}

/// Samples the writer's gauges every `every` until told to stop; owned by the phase that
/// starts it ([`LagSampler::finish`] stops the task and returns what it saw).
pub struct LagSampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<WriterLag>,
}

impl LagSampler {
    pub fn start(client: MetricsClient, every: Duration) -> LagSampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut queue_max: Option<f64> = None;
            let mut samples = 0;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                // A failed scrape is a missing sample, not a failed bench.
                let Ok(gauges) = client.gauges().await else {
                    continue;
                };
                samples += 1;
                if let Some(lag) = gauges.get(WRITER_LAG) {
                    lags.push(lag * 1000.0);
                }
                if let Some(queue) = gauges.get(WRITER_QUEUE) {
                    queue_max = Some(queue_max.map_or(queue, |m: f64| m.max(queue)));
                }
            }
            summarize(samples, lags, queue_max)
        });
        LagSampler { stop, task }
    }

    pub async fn finish(self) -> WriterLag {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

fn summarize(samples: usize, mut lags_ms: Vec<f64>, queue_max: Option<f64>) -> WriterLag {
    lags_ms.sort_by(f64::total_cmp);
    let p50 = (!lags_ms.is_empty()).then(|| lags_ms[(lags_ms.len() - 1) / 2]);
    WriterLag {
        samples,
        lag_max_ms: lags_ms.last().copied(),
        lag_p50_ms: p50,
        queue_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP shoesvz_agents_online Agents with a live, synced stream\n\
        # TYPE shoesvz_agents_online gauge\n\
        shoesvz_agents_online 1000\n\
        shoesvz_runners_total{state=\"running\"} 12\n\
        shoesvz_runners_total{state=\"creating\"} 3\n\
        shoesvz_store_writer_lag_seconds 0.042\n\
        # EOF\n";

    #[test]
    fn gauges_are_read_and_families_summed() {
        let gauges = Gauges::parse(PAGE);
        assert_eq!(gauges.get(AGENTS_ONLINE), Some(1000.0));
        assert_eq!(gauges.get(RUNNERS), Some(15.0));
        assert_eq!(gauges.get(WRITER_LAG), Some(0.042));
        assert_eq!(gauges.get(WRITER_QUEUE), None);
    }

    #[test]
    fn a_server_without_the_writer_gauges_says_so() {
        let lag = summarize(4, Vec::new(), None);
        assert_eq!(lag.describe(), "n/a (server has no writer-lag gauge)");
        assert_eq!(lag.short(), "n/a");
        let lag = summarize(3, vec![30.0, 10.0, 20.0], Some(7.0));
        assert_eq!(lag.lag_max_ms, Some(30.0));
        assert_eq!(lag.lag_p50_ms, Some(20.0));
        assert_eq!(
            lag.describe(),
            "max 30.0 ms, p50 20.0 ms, queue max 7 (3 samples)"
        );
    }
}
