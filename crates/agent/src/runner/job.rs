//! What a running runner's job is doing, and when its VM has done its work: pure decisions
//! over what the guest reports, so every rule is unit-tested.
//!
//! myshoes' setup script runs the GitHub runner in the foreground and returns only after the
//! ephemeral runner's one job (shared notes: myshoes-setup-script.md), so neither its exit nor
//! its duration says the runner failed; the runner's own state does:
//! offline → idle (configured, listening) → running (a job) → finished (the ephemeral listener
//! exited after its job and removed `.runner`).

use std::time::{Duration, Instant};

/// The GitHub runner's state as the guest's runner-agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRunner {
    Offline,
    Preparing,
    Idle,
    Running,
    Finished,
}

impl GuestRunner {
    pub fn parse(text: &str) -> Option<GuestRunner> {
        Some(match text {
            "offline" => GuestRunner::Offline,
            "preparing" => GuestRunner::Preparing,
            "idle" => GuestRunner::Idle,
            "running" => GuestRunner::Running,
            "finished" => GuestRunner::Finished,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuestRunner::Offline => "offline",
            GuestRunner::Preparing => "preparing",
            GuestRunner::Idle => "idle",
            GuestRunner::Running => "running",
            GuestRunner::Finished => "finished",
        }
    }
}

/// How the setup script stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupProgress {
    Running,
    /// `code` and `signal` both `None`: it exited, but its status could not be collected.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// One look at the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// `None` when the template has no runner-agent (nothing reports the runner's state).
    pub runner: Option<GuestRunner>,
    /// `.runner` exists: the runner was registered.
    pub configured: bool,
    pub setup: SetupProgress,
}

/// What to do with the runner after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// The runner did its work: the VM may go (the reason is recorded).
    Finished(String),
    /// The setup script failed before the runner was registered; it is destroyed (the reason
    /// is recorded).
    SetupFailed(String),
    /// The job was stopped (a limit); it is destroyed (the reason is recorded).
    Failed(String),
}

/// Follows one runner's job. The clock is passed in, so tests need no waiting.
#[derive(Debug)]
pub struct JobTracker {
    started: Instant,
    max_duration: Option<Duration>,
    ever_configured: bool,
    /// Transitions worth recording: (state, when).
    pub job_started: Option<Instant>,
    pub job_finished: Option<Instant>,
}

impl JobTracker {
    /// `started`: when the setup script started; `max_duration`: the optional hard limit.
    pub fn new(started: Instant, max_duration: Option<Duration>) -> JobTracker {
        JobTracker {
            started,
            max_duration,
            ever_configured: false,
            job_started: None,
            job_finished: None,
        }
    }

    pub fn observe(&mut self, seen: Observation, now: Instant) -> Verdict {
        let runner = seen.runner;
        if seen.configured
            || matches!(
                runner,
                Some(GuestRunner::Idle | GuestRunner::Running | GuestRunner::Finished)
            )
        {
            self.ever_configured = true;
        }
        if runner == Some(GuestRunner::Running) && self.job_started.is_none() {
            self.job_started = Some(now);
        }
        if runner == Some(GuestRunner::Finished) {
            self.job_finished.get_or_insert(now);
            return Verdict::Finished("the runner finished its job".into());
        }
        if let SetupProgress::Exited { code, signal } = seen.setup {
            let how = describe_exit(code, signal);
            if self.ever_configured {
                return Verdict::Finished(format!(
                    "the runner stopped: the setup script exited ({how}) after the runner was registered"
                ));
            }
            match (runner, code) {
                // Nothing reports the runner: the script's end is the runner's end, as with
                // myshoes' script, which returns after the job.
                (None, Some(0)) => {
                    return Verdict::Finished(format!(
                        "the setup script exited ({how}); without a runner-agent its end is the runner's"
                    ))
                }
                (None, _) | (Some(_), Some(1..) | None) => {
                    return Verdict::SetupFailed(format!(
                        "the setup script exited ({how}) before the GitHub runner was registered"
                    ))
                }
                // Exited 0 without registering: the script may have left the runner to start
                // in the background. Keep watching; DeleteInstance ends it otherwise.
                (Some(_), Some(_)) => {}
            }
        }
        if let Some(limit) = self.max_duration {
            if now.saturating_duration_since(self.started) >= limit {
                return Verdict::Failed(format!(
                    "the job ran longer than max_job_duration ({limit:?}) and was stopped"
                ));
            }
        }
        Verdict::Continue
    }
}

/// `status 0`, `signal 9` or `status unknown`.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "status unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(runner: Option<GuestRunner>, configured: bool, setup: SetupProgress) -> Observation {
        Observation {
            runner,
            configured,
            setup,
        }
    }

    const RUNNING: SetupProgress = SetupProgress::Running;

    fn exited(code: i32) -> SetupProgress {
        SetupProgress::Exited {
            code: Some(code),
            signal: None,
        }
    }

    #[test]
    fn a_whole_job_is_watched_until_the_runner_finishes() {
        let t0 = Instant::now();
        let mut job = JobTracker::new(t0, None);
        let steps = [
            (
                seen(Some(GuestRunner::Offline), false, RUNNING),
                Verdict::Continue,
            ),
            (
                seen(Some(GuestRunner::Preparing), false, RUNNING),
                Verdict::Continue,
            ),
            (
                seen(Some(GuestRunner::Idle), true, RUNNING),
                Verdict::Continue,
            ),
            (
                seen(Some(GuestRunner::Running), true, RUNNING),
                Verdict::Continue,
            ),
        ];
        for (i, (observation, verdict)) in steps.into_iter().enumerate() {
            let now = t0 + Duration::from_secs(60 * i as u64);
            assert_eq!(job.observe(observation, now), verdict, "step {i}");
        }
        assert_eq!(job.job_started, Some(t0 + Duration::from_secs(180)));
        // Longer than any setup timeout: a job is never cut short by the script's duration.
        let late = t0 + Duration::from_secs(6 * 3600);
        assert_eq!(
            job.observe(seen(Some(GuestRunner::Running), true, RUNNING), late),
            Verdict::Continue
        );
        let done = job.observe(seen(Some(GuestRunner::Finished), false, exited(0)), late);
        assert!(matches!(done, Verdict::Finished(_)), "{done:?}");
        assert_eq!(job.job_finished, Some(late));
    }

    #[test]
    fn a_script_that_fails_before_registering_is_a_failed_runner() {
        let t0 = Instant::now();
        let mut job = JobTracker::new(t0, None);
        assert_eq!(
            job.observe(seen(Some(GuestRunner::Offline), false, RUNNING), t0),
            Verdict::Continue
        );
        let verdict = job.observe(seen(Some(GuestRunner::Offline), false, exited(1)), t0);
        let Verdict::SetupFailed(reason) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            reason.contains("status 1") && reason.contains("before"),
            "{reason}"
        );
        let killed = JobTracker::new(t0, None).observe(
            seen(
                None,
                false,
                SetupProgress::Exited {
                    code: None,
                    signal: Some(9),
                },
            ),
            t0,
        );
        assert!(matches!(killed, Verdict::SetupFailed(reason) if reason.contains("signal 9")));
    }

    #[test]
    fn the_script_ending_after_registration_finishes_the_runner_whatever_its_status() {
        // myshoes' script exits 0 even when the listener exited 1; a removed registration
        // also ends it ("The runner no longer exists on the server").
        for code in [0, 1, 2] {
            let t0 = Instant::now();
            let mut job = JobTracker::new(t0, None);
            job.observe(seen(Some(GuestRunner::Idle), true, RUNNING), t0);
            let verdict = job.observe(seen(Some(GuestRunner::Offline), false, exited(code)), t0);
            assert!(
                matches!(verdict, Verdict::Finished(_)),
                "{code}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_script_that_exits_0_without_a_runner_keeps_the_vm_when_a_runner_agent_watches() {
        let t0 = Instant::now();
        let mut job = JobTracker::new(t0, None);
        assert_eq!(
            job.observe(seen(Some(GuestRunner::Offline), false, exited(0)), t0),
            Verdict::Continue
        );
        // Without a runner-agent there is nothing else to go by.
        let mut blind = JobTracker::new(t0, None);
        assert!(matches!(
            blind.observe(seen(None, false, exited(0)), t0),
            Verdict::Finished(_)
        ));
        assert!(matches!(
            blind.observe(seen(None, false, exited(3)), t0),
            Verdict::SetupFailed(_)
        ));
        assert_eq!(
            JobTracker::new(t0, None).observe(seen(None, false, RUNNING), t0),
            Verdict::Continue
        );
    }

    #[test]
    fn max_job_duration_ends_a_job_only_when_set() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(3600);
        let mut job = JobTracker::new(t0, Some(limit));
        let running = seen(Some(GuestRunner::Running), true, RUNNING);
        assert_eq!(job.observe(running, t0 + limit / 2), Verdict::Continue);
        assert!(
            matches!(job.observe(running, t0 + limit), Verdict::Failed(r) if r.contains("max_job_duration"))
        );
    }

    #[test]
    fn guest_states_round_trip() {
        for state in [
            GuestRunner::Offline,
            GuestRunner::Preparing,
            GuestRunner::Idle,
            GuestRunner::Running,
            GuestRunner::Finished,
        ] {
            assert_eq!(GuestRunner::parse(state.as_str()), Some(state));
        }
        assert_eq!(GuestRunner::parse("busy"), None);
    }
}
