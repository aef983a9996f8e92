//! Prometheus metrics, one registry per server (so several servers can run in one process),
//! rendered in either text format of [`crate::exposition`].

use crate::exposition::ExpositionFormat;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shoes_vz_model::RunnerState;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why a runner failed, in a few words fit for a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    Clone,
    Boot,
    Ssh,
    Setup,
    Job,
    /// Its agent lost it (restarted, revoked, went away).
    Lost,
    Unclaimed,
    Other,
}

impl FailureReason {
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Clone => "clone",
            FailureReason::Boot => "boot",
            FailureReason::Ssh => "ssh",
            FailureReason::Setup => "setup",
            FailureReason::Job => "job",
            FailureReason::Lost => "lost",
            FailureReason::Unclaimed => "unclaimed",
            FailureReason::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    method: &'static str,
    code: String,
}

/// The phases of a runner's start, each with its own histogram.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Clone,
    BootToIp,
    BootToSsh,
    Setup,
    Prepare,
    VmStart,
    Refresh,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Clone => "clone",
            Phase::BootToIp => "boot_to_ip",
            Phase::BootToSsh => "boot_to_ssh",
            Phase::Setup => "setup",
            Phase::Prepare => "prepare",
            Phase::VmStart => "vm_start",
            Phase::Refresh => "refresh",
        }
    }
}

/// Gauges computed from the fleet at scrape time.
#[derive(Debug, Default, Clone)]
pub struct FleetGauges {
    pub agents_online: i64,
    pub agents_offline: i64,
    pub capacity_total_runners: i64,
    pub runners_by_state: Vec<(RunnerState, i64)>,
    /// AddInstance calls waiting for a free slot.
    pub queue_length: i64,
    pub agents_cordoned: i64,
    /// Store writes queued and not yet committed.
    pub store_writer_queue: i64,
    /// How long the oldest of them has waited.
    pub store_writer_lag_seconds: f64,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    agents_online: Gauge,
    agents_total: Family<StatusLabel, Gauge>,
    runners_total: Family<StateLabel, Gauge>,
    capacity_total_runners: Gauge,
    startup: Histogram,
    phases: Family<PhaseLabel, Histogram>,
    requests: Family<RequestLabel, Counter>,
    fallbacks: Counter,
    queue_length: Gauge,
    queue_wait: Histogram,
    queue_timeouts: Counter,
    finished: Counter,
    unclaimed: Counter,
    auth_refused: Family<ServiceLabel, Counter>,
    heartbeat_misses: Counter,
    agents_cordoned: Gauge,
    failures: Family<ReasonLabel, Counter>,
    store_writer_queue: Gauge,
    store_writer_lag: Gauge<f64, AtomicU64>,
}

fn seconds_buckets() -> Histogram {
    // 50 ms .. ~7 min: covers warm restores on KVM up to cold macOS boots.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let agents_online = Gauge::default();
        let agents_total = Family::<StatusLabel, Gauge>::default();
        let runners_total = Family::<StateLabel, Gauge>::default();
        let capacity_total_runners = Gauge::default();
        let startup = seconds_buckets();
        let phases = Family::<PhaseLabel, Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        let requests = Family::<RequestLabel, Counter>::default();
        let fallbacks = Counter::default();
        let queue_length = Gauge::default();
        // 1 ms .. ~2 min: most placements wait nothing, a queued one up to queue_wait.
        let queue_wait = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let queue_timeouts = Counter::default();
        let finished = Counter::default();
        let unclaimed = Counter::default();
        let auth_refused = Family::<ServiceLabel, Counter>::default();
        let heartbeat_misses = Counter::default();
        let agents_cordoned = Gauge::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let store_writer_queue = Gauge::default();
        let store_writer_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "shoesvz_store_writer_queue",
            "State store writes queued and not yet committed",
            store_writer_queue.clone(),
        );
        registry.register(
            "shoesvz_store_writer_lag_seconds",
            "How long the oldest uncommitted state store write has waited (0 when none waits)",
            store_writer_lag.clone(),
        );
        registry.register(
            "shoesvz_auth_refused",
            "Refused authentications, by service (agent, shoes, operator)",
            auth_refused.clone(),
        );
        registry.register(
            "shoesvz_heartbeat_misses",
            "Agent links found dead: silent past the heartbeat timeout, or their connection failing (unanswered keepalive pings)",
            heartbeat_misses.clone(),
        );
        registry.register(
            "shoesvz_agents_cordoned",
            "Agents that take no new runners",
            agents_cordoned.clone(),
        );
        registry.register(
            "shoesvz_runner_failures",
            "Runners that failed, by the step that failed",
            failures.clone(),
        );
        registry.register(
            "shoesvz_queue_length",
            "AddInstance calls waiting for a free slot",
            queue_length.clone(),
        );
        registry.register(
            "shoesvz_queue_wait_seconds",
            "How long each placed AddInstance waited for a free slot",
            queue_wait.clone(),
        );
        registry.register(
            "shoesvz_queue_timeouts",
            "AddInstance calls answered ResourceExhausted after waiting queue_wait",
            queue_timeouts.clone(),
        );
        registry.register(
            "shoesvz_runners_finished",
            "Runners whose job finished and whose VM was reclaimed before DeleteInstance",
            finished.clone(),
        );
        registry.register(
            "shoesvz_runners_unclaimed",
            "Runners destroyed because no AddInstance call claimed them within claim_grace",
            unclaimed.clone(),
        );
        registry.register(
            "shoesvz_agents_online",
            "Agents with a live, synced stream",
            agents_online.clone(),
        );
        registry.register(
            "shoesvz_agents_total",
            "Registered agents by status",
            agents_total.clone(),
        );
        registry.register(
            "shoesvz_runners_total",
            "Runners by state (deleted ones excluded)",
            runners_total.clone(),
        );
        registry.register(
            "shoesvz_capacity_total_runners",
            "Runner slots on online agents",
            capacity_total_runners.clone(),
        );
        registry.register(
            "shoesvz_runner_startup_duration_seconds",
            "From AddInstance received to ssh-ready",
            startup.clone(),
        );
        registry.register(
            "shoesvz_runner_phase_duration_seconds",
            "Duration of each start phase (clone, boot_to_ip, boot_to_ssh, setup) and of the agent's steps within it (prepare, vm_start, refresh)",
            phases.clone(),
        );
        registry.register(
            "shoesvz_requests",
            "ShoesService requests by method and gRPC result code",
            requests.clone(),
        );
        registry.register(
            "shoesvz_warm_start_fallbacks",
            "Warm starts that fell back to a cold boot",
            fallbacks.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            agents_online,
            agents_total,
            runners_total,
            capacity_total_runners,
            startup,
            phases,
            requests,
            fallbacks,
            queue_length,
            queue_wait,
            queue_timeouts,
            finished,
            unclaimed,
            auth_refused,
            heartbeat_misses,
            agents_cordoned,
            failures,
            store_writer_queue,
            store_writer_lag,
        }
    }
}

impl Metrics {
    pub fn observe_startup(&self, millis: u64) {
        self.startup.observe(millis as f64 / 1000.0);
    }

    pub fn observe_phase(&self, phase: Phase, millis: u64) {
        self.phases
            .get_or_create(&PhaseLabel {
                phase: phase.label(),
            })
            .observe(millis as f64 / 1000.0);
    }

    pub fn count_request(&self, method: &'static str, code: tonic::Code) {
        let code = format!("{code:?}");
        self.requests
            .get_or_create(&RequestLabel { method, code })
            .inc();
    }

    pub fn count_warm_fallback(&self) {
        self.fallbacks.inc();
    }

    pub fn observe_queue_wait(&self, millis: u64) {
        self.queue_wait.observe(millis as f64 / 1000.0);
    }

    pub fn count_queue_timeout(&self) {
        self.queue_timeouts.inc();
    }

    pub fn count_finished(&self) {
        self.finished.inc();
    }

    pub fn count_unclaimed(&self) {
        self.unclaimed.inc();
    }

    pub fn count_auth_refused(&self, service: &'static str) {
        self.auth_refused
            .get_or_create(&ServiceLabel { service })
            .inc();
    }

    pub fn count_heartbeat_miss(&self) {
        self.heartbeat_misses.inc();
    }

    pub fn count_failure(&self, reason: FailureReason) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Renders the Prometheus text format 0.0.4 after setting the gauges from `gauges`.
    pub fn render(&self, gauges: &FleetGauges) -> String {
        self.render_as(gauges, ExpositionFormat::PrometheusText)
    }

    /// Renders `format` after setting the gauges from `gauges`.
    ///
    /// `promtool check metrics` flags exactly two families, on purpose: the gauges
    /// `shoesvz_agents_total` and `shoesvz_runners_total` ("non-counter metrics should not
    /// have _total suffix"). They are the seed's names and existing dashboards use them; every
    /// other family passes the linter (`.ci/ops-checks.sh` enforces both halves).
    pub fn render_as(&self, gauges: &FleetGauges, format: ExpositionFormat) -> String {
        self.agents_online.set(gauges.agents_online);
        self.agents_total
            .get_or_create(&StatusLabel { status: "online" })
            .set(gauges.agents_online);
        self.agents_total
            .get_or_create(&StatusLabel { status: "offline" })
            .set(gauges.agents_offline);
        self.capacity_total_runners
            .set(gauges.capacity_total_runners);
        self.queue_length.set(gauges.queue_length);
        self.agents_cordoned.set(gauges.agents_cordoned);
        self.store_writer_queue.set(gauges.store_writer_queue);
        self.store_writer_lag.set(gauges.store_writer_lag_seconds);
        for state in RunnerState::ALL {
            if state == RunnerState::Deleted {
                continue;
            }
            let count = gauges
                .runners_by_state
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.runners_total
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(count);
        }
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let encoded = match format {
            ExpositionFormat::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
            ExpositionFormat::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &registry)
            }
        };
        if let Err(error) = encoded {
            tracing::error!(error = %error, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_documented_metric_with_values() {
        let metrics = Metrics::default();
        metrics.observe_startup(1500);
        metrics.observe_phase(Phase::Clone, 3);
        metrics.count_request("AddInstance", tonic::Code::ResourceExhausted);
        let text = metrics.render(&FleetGauges {
            agents_online: 2,
            agents_offline: 1,
            capacity_total_runners: 4,
            runners_by_state: vec![(RunnerState::Running, 3)],
            queue_length: 2,
            agents_cordoned: 1,
            store_writer_queue: 7,
            store_writer_lag_seconds: 0.25,
        });
        for needle in [
            "shoesvz_agents_online 2",
            "shoesvz_agents_total{status=\"offline\"} 1",
            "shoesvz_capacity_total_runners 4",
            "shoesvz_runners_total{state=\"running\"} 3",
            "shoesvz_runners_total{state=\"booting\"} 0",
            "shoesvz_runner_startup_duration_seconds_count 1",
            "shoesvz_runner_startup_duration_seconds_sum 1.5",
            "shoesvz_runner_phase_duration_seconds_count{phase=\"clone\"} 1",
            "shoesvz_requests_total{method=\"AddInstance\",code=\"ResourceExhausted\"} 1",
            "shoesvz_queue_length 2",
            "shoesvz_agents_cordoned 1",
            "shoesvz_queue_wait_seconds_count 0",
            "shoesvz_store_writer_queue 7",
            "shoesvz_store_writer_lag_seconds 0.25",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    fn type_lines(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect()
    }

    #[test]
    fn prometheus_text_types_counters_with_total_and_has_no_eof() {
        let metrics = Metrics::default();
        metrics.count_request("AddInstance", tonic::Code::Ok);
        let text = metrics.render(&FleetGauges::default());
        assert!(!text.contains("# EOF"), "{text}");
        let types = type_lines(&text);
        for counter in [
            "shoesvz_requests_total",
            "shoesvz_warm_start_fallbacks_total",
            "shoesvz_queue_timeouts_total",
            "shoesvz_runners_finished_total",
            "shoesvz_runners_unclaimed_total",
        ] {
            assert!(
                types.contains(&(counter, "counter")),
                "{counter} not typed counter in\n{text}"
            );
        }
        assert!(types.contains(&("shoesvz_runner_startup_duration_seconds", "histogram")));
        assert!(text.contains("shoesvz_runner_startup_duration_seconds_bucket{le=\"+Inf\"} 0"));
        // promtool's "_total on a non-counter" lint: only the seed's two gauges, kept for
        // existing dashboards (README, Metrics).
        let gauges_named_total: Vec<&str> = types
            .iter()
            .filter(|(name, kind)| *kind != "counter" && name.ends_with("_total"))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            gauges_named_total,
            ["shoesvz_agents_total", "shoesvz_runners_total"]
        );
        for (name, kind) in &types {
            assert!(
                *kind != "counter" || name.ends_with("_total"),
                "counter {name} lacks _total"
            );
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let metrics = Metrics::default();
        metrics.count_request("AddInstance", tonic::Code::Ok);
        let text = metrics.render_as(&FleetGauges::default(), ExpositionFormat::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(type_lines(&text).contains(&("shoesvz_requests", "counter")));
        assert!(text.contains("shoesvz_requests_total{method=\"AddInstance\",code=\"Ok\"} 1"));
    }
}
