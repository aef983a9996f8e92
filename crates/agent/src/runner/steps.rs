//! Where a runner's start goes: one `tracing` span per step (`RUST_LOG=debug` prints each
//! step's duration as it ends, and a summary once the runner is ready), and the sums the
//! agent reports in its phase timings.

use shoes_vz_model::RunnerId;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// One step of a runner's start, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The runner's two fresh SSH key pairs (the agent's client key, the guest's host key).
    Keys,
    /// The template's disks cloned into the bundle, the machine identifier written.
    Clone,
    /// Encoding the config disk image (identity and token). It runs beside the clone; this is
    /// what is left to wait for once the clone is done.
    ConfigDisk,
    /// The bundle's files: the config disk, the operator's copy of the client key, runtime
    /// metadata.
    BundleFiles,
    /// The hypervisor starting the VM, or restoring a saved one until it runs.
    VmStart,
    /// The guest's addresses as the backend knows them (a cold guest's console, DHCP).
    GuestEndpoint,
    /// A restored guest taking this runner's identity.
    Refresh,
    /// The guest's signed notice (after a refresh: often already there).
    Notice,
    /// The SSH handshake, authentication and readiness probe.
    SshReady,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Keys => "keys",
            Step::Clone => "clone",
            Step::ConfigDisk => "config_disk",
            Step::BundleFiles => "bundle_files",
            Step::VmStart => "vm_start",
            Step::GuestEndpoint => "guest_endpoint",
            Step::Refresh => "refresh",
            Step::Notice => "notice",
            Step::SshReady => "ssh_ready",
        }
    }

    /// Host work before the hypervisor is asked for the VM.
    pub const PREPARE: [Step; 4] = [Step::Keys, Step::Clone, Step::ConfigDisk, Step::BundleFiles];
}

/// The steps of one runner's start, as they finish.
#[derive(Debug)]
pub struct StepTimes {
    runner_id: RunnerId,
    steps: Vec<(Step, Duration)>,
}

impl StepTimes {
    pub fn new(runner_id: RunnerId) -> Self {
        Self {
            runner_id,
            steps: Vec::new(),
        }
    }

    /// Runs `step` in its own span and records how long it took, also when it failed.
    pub async fn time<T>(&mut self, step: Step, work: impl Future<Output = T>) -> T {
        let span =
            tracing::debug_span!("start_step", runner = %self.runner_id, step = step.as_str());
        let started = Instant::now();
        let out = work.instrument(span.clone()).await;
        self.record(&span, step, started.elapsed());
        out
    }

    /// [`time`](Self::time) for work that does not wait.
    pub fn time_sync<T>(&mut self, step: Step, work: impl FnOnce() -> T) -> T {
        let span =
            tracing::debug_span!("start_step", runner = %self.runner_id, step = step.as_str());
        let started = Instant::now();
        let out = span.in_scope(work);
        self.record(&span, step, started.elapsed());
        out
    }

    fn record(&mut self, span: &tracing::Span, step: Step, took: Duration) {
        span.in_scope(|| tracing::debug!(took_us = micros(took), "start step done"));
        self.steps.push((step, took));
    }

    /// The total of `steps` (each may have run more than once, or not at all).
    pub fn sum(&self, steps: &[Step]) -> Duration {
        self.steps
            .iter()
            .filter(|(step, _)| steps.contains(step))
            .map(|(_, took)| *took)
            .sum()
    }

    /// `keys=0.1ms clone=3.2ms …` in the order the steps ran.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (step, took) in &self.steps {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{}={:.1}ms", step.as_str(), took.as_secs_f64() * 1e3);
        }
        out
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn steps_are_summed_and_listed_in_order() {
        let mut times = StepTimes::new(RunnerId::generate());
        times
            .time(Step::Keys, tokio::time::sleep(Duration::from_millis(2)))
            .await;
        times.time_sync(Step::Clone, || ());
        times
            .time(Step::Keys, tokio::time::sleep(Duration::from_millis(3)))
            .await;
        let keys = times.sum(&[Step::Keys]);
        assert!(keys >= Duration::from_millis(5), "{keys:?}");
        assert_eq!(times.sum(&[Step::Refresh]), Duration::ZERO);
        let summary = times.summary();
        assert!(summary.starts_with("keys="), "{summary}");
        assert_eq!(summary.matches(' ').count(), 2, "{summary}");
        assert!(summary.contains(" clone="), "{summary}");
    }
}
