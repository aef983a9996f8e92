//! One simulated agent's runners: the reports a real agent sends for each (see
//! crates/agent/src/runner/lifecycle.rs), without a VM, a disk or SSH. A create reports
//! creating, then booting with its clone time; after the boot delay the guest's address (still
//! booting), ssh-ready and running, with phase timings. A delete reports tearing-down, then
//! deleted after the delete delay. There is no guest: no `guest_runner_state` or job times are
//! reported, so a runner never ends on its own.

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use shoes_vz_protocol::agent::v1 as pb;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a simulated VM takes to boot and to go away.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delays {
    pub boot: Duration,
    pub delete: Duration,
}

/// A transition waiting for its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Booted,
    Gone,
}

type Due = Pin<Box<dyn Future<Output = (String, Step)> + Send>>;

pub struct SimRunners {
    max_runners: usize,
    delays: Delays,
    runners: HashMap<String, pb::RunnerStatus>,
    due: FuturesUnordered<Due>,
    /// Runners holding a slot on every simulated agent together.
    live: Arc<AtomicI64>,
    next_address: u32,
}

impl SimRunners {
    pub fn new(max_runners: u32, delays: Delays, live: Arc<AtomicI64>) -> SimRunners {
        SimRunners {
            max_runners: max_runners as usize,
            delays,
            runners: HashMap::new(),
            due: FuturesUnordered::new(),
            live,
            next_address: 0,
        }
    }

    /// Every runner's current status: the agent's full snapshot.
    pub fn snapshot(&self) -> Vec<pb::RunnerStatus> {
        self.runners.values().cloned().collect()
    }

    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// The next transition whose delay is over (pending forever when none is waiting: guard
    /// with [`SimRunners::has_due`]).
    pub async fn next_due(&mut self) -> (String, Step) {
        match self.due.next().await {
            Some(due) => due,
            None => std::future::pending().await,
        }
    }

    /// The server's CreateRunner; returns the reports to send.
    pub fn create(&mut self, command: &pb::CreateRunner) -> Vec<pb::RunnerStatus> {
        let id = command.runner_id.clone();
        if self.runners.contains_key(&id) {
            return Vec::new(); // a repeated command
        }
        if self.runners.len() >= self.max_runners {
            // As the real agent: an error, then gone, so the server frees the slot.
            let refused = pb::RunnerStatus {
                runner_id: id.clone(),
                state: pb::RunnerState::Error as i32,
                error: format!(
                    "this agent already runs its maximum of {} runners",
                    self.max_runners
                ),
                ..Default::default()
            };
            return vec![refused, gone(&id)];
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        let mut status = pb::RunnerStatus {
            runner_id: id.clone(),
            state: pb::RunnerState::Creating as i32,
            timings: Some(pb::PhaseTimings::default()),
            ..Default::default()
        };
        let mut reports = vec![status.clone()];
        status.state = pb::RunnerState::Booting as i32;
        if let Some(timings) = status.timings.as_mut() {
            timings.clone_ms = 1;
        }
        reports.push(status.clone());
        self.runners.insert(id.clone(), status);
        if self.delays.boot.is_zero() {
            reports.extend(self.advance(&id, Step::Booted));
        } else {
            self.schedule(id, Step::Booted, self.delays.boot);
        }
        reports
    }

    /// The server's DeleteRunner; returns the reports to send.
    pub fn delete(&mut self, runner_id: &str) -> Vec<pb::RunnerStatus> {
        let Some(status) = self.runners.get_mut(runner_id) else {
            // Nothing here: tell the server it is gone so it can free the slot.
            return vec![gone(runner_id)];
        };
        if status.state == pb::RunnerState::TearingDown as i32 {
            return Vec::new(); // already going
        }
        status.state = pb::RunnerState::TearingDown as i32;
        let mut reports = vec![status.clone()];
        if self.delays.delete.is_zero() {
            reports.extend(self.advance(runner_id, Step::Gone));
        } else {
            self.schedule(runner_id.to_string(), Step::Gone, self.delays.delete);
        }
        reports
    }

    /// A transition whose delay is over; returns the reports to send.
    pub fn advance(&mut self, runner_id: &str, step: Step) -> Vec<pb::RunnerStatus> {
        match step {
            Step::Booted => {
                self.next_address = self.next_address.wrapping_add(1);
                let address = self.address();
                let boot_ms = u64::try_from(self.delays.boot.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let Some(status) = self.runners.get_mut(runner_id) else {
                    return Vec::new();
                };
                if status.state != pb::RunnerState::Booting as i32 {
                    return Vec::new(); // deleted while it booted
                }
                let mut reports = Vec::with_capacity(3);
                status.ip_address = address;
                if let Some(timings) = status.timings.as_mut() {
                    timings.boot_to_ip_ms = boot_ms;
                }
                reports.push(status.clone());
                status.state = pb::RunnerState::SshReady as i32;
                if let Some(timings) = status.timings.as_mut() {
                    timings.boot_to_ssh_ms = boot_ms;
                }
                reports.push(status.clone());
                status.state = pb::RunnerState::Running as i32;
                if let Some(timings) = status.timings.as_mut() {
                    timings.setup_ms = 1;
                }
                reports.push(status.clone());
                reports
            }
            Step::Gone => match self.runners.remove(runner_id) {
                Some(mut status) => {
                    self.live.fetch_sub(1, Ordering::Relaxed);
                    status.state = pb::RunnerState::Deleted as i32;
                    vec![status]
                }
                None => Vec::new(),
            },
        }
    }

    fn schedule(&mut self, runner_id: String, step: Step, delay: Duration) {
        self.due.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            (runner_id, step)
        }));
    }

    /// A made-up guest address (the server only stores and returns it).
    fn address(&self) -> String {
        let n = self.next_address;
        format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
    }
}

impl Drop for SimRunners {
    fn drop(&mut self) {
        self.live
            .fetch_sub(self.runners.len() as i64, Ordering::Relaxed);
    }
}

fn gone(runner_id: &str) -> pb::RunnerStatus {
    pb::RunnerStatus {
        runner_id: runner_id.to_string(),
        state: pb::RunnerState::Deleted as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: &str) -> pb::CreateRunner {
        pb::CreateRunner {
            runner_id: id.to_string(),
            runner_name: format!("myshoes-{id}"),
            setup_script: "true\n".into(),
            template: "bench".into(),
            vcpus: 1,
            memory_mib: 1024,
        }
    }

    fn states(reports: &[pb::RunnerStatus]) -> Vec<pb::RunnerState> {
        reports
            .iter()
            .map(|r| pb::RunnerState::try_from(r.state).expect("known state"))
            .collect()
    }

    #[test]
    fn without_delays_a_runner_reports_what_a_real_agent_does() {
        let live = Arc::new(AtomicI64::new(0));
        let mut runners = SimRunners::new(2, Delays::default(), Arc::clone(&live));
        let reports = runners.create(&create("a"));
        use pb::RunnerState::*;
        assert_eq!(
            states(&reports),
            [Creating, Booting, Booting, SshReady, Running]
        );
        let ready = &reports[3];
        assert!(!ready.ip_address.is_empty());
        let timings = ready.timings.expect("timings");
        assert!(timings.clone_ms > 0 && timings.boot_to_ip_ms > 0 && timings.boot_to_ssh_ms > 0);
        assert_eq!(live.load(Ordering::Relaxed), 1);
        assert!(
            runners.create(&create("a")).is_empty(),
            "a repeat is ignored"
        );
        assert_eq!(states(&runners.snapshot()), [Running]);

        assert_eq!(states(&runners.delete("a")), [TearingDown, Deleted]);
        assert_eq!(live.load(Ordering::Relaxed), 0);
        assert!(runners.snapshot().is_empty());
        assert_eq!(states(&runners.delete("a")), [Deleted], "unknown: gone");
    }

    #[test]
    fn a_full_agent_refuses_like_a_real_one() {
        let live = Arc::new(AtomicI64::new(0));
        let mut runners = SimRunners::new(1, Delays::default(), Arc::clone(&live));
        runners.create(&create("a"));
        let refused = runners.create(&create("b"));
        assert_eq!(
            states(&refused),
            [pb::RunnerState::Error, pb::RunnerState::Deleted]
        );
        assert!(refused[0].error.contains("maximum of 1"));
        assert_eq!(live.load(Ordering::Relaxed), 1);
        drop(runners);
        assert_eq!(
            live.load(Ordering::Relaxed),
            0,
            "a dropped agent frees its count"
        );
    }

    #[tokio::test]
    async fn delays_hold_the_boot_and_the_teardown() {
        let live = Arc::new(AtomicI64::new(0));
        let delays = Delays {
            boot: Duration::from_millis(50),
            delete: Duration::from_millis(20),
        };
        let mut runners = SimRunners::new(2, delays, Arc::clone(&live));
        use pb::RunnerState::*;
        assert_eq!(states(&runners.create(&create("a"))), [Creating, Booting]);
        assert!(runners.has_due());
        let (id, step) = runners.next_due().await;
        assert_eq!((id.as_str(), step), ("a", Step::Booted));
        let booted = runners.advance(&id, step);
        assert_eq!(states(&booted), [Booting, SshReady, Running]);
        assert_eq!(booted[1].timings.expect("timings").boot_to_ssh_ms, 50);

        assert_eq!(states(&runners.delete("a")), [TearingDown]);
        assert_eq!(live.load(Ordering::Relaxed), 1, "still holds its slot");
        let (id, step) = runners.next_due().await;
        assert_eq!(states(&runners.advance(&id, step)), [Deleted]);
        assert_eq!(live.load(Ordering::Relaxed), 0);

        // Deleted while booting: the boot never completes, whichever timer is seen first.
        runners.create(&create("b"));
        runners.delete("b");
        let mut seen = Vec::new();
        while runners.has_due() {
            let (id, step) = runners.next_due().await;
            seen.extend(states(&runners.advance(&id, step)));
        }
        assert_eq!(seen, [Deleted]);
    }
}
