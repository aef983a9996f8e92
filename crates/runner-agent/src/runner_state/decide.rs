//! The decision table: what the GitHub Actions runner is doing, from four observations.

use serde::{Deserialize, Serialize};

/// The runner's state as reported by `/status` (and carried to the host's
/// `guest_runner_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Not running: not configured yet, stopped, or crashed before finishing a job.
    Offline,
    /// Starting up or configuring: the listener runs but has not said "Listening for Jobs".
    Preparing,
    /// Connected and waiting for a job.
    Idle,
    /// A job was dispatched and has not completed.
    Running,
    /// The ephemeral runner's job completed and its listener has exited (it removes its
    /// `.runner` on the way out): nothing of the runner is left to wait for.
    Finished,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Offline => "offline",
            RunnerState::Preparing => "preparing",
            RunnerState::Idle => "idle",
            RunnerState::Running => "running",
            RunnerState::Finished => "finished",
        }
    }
}

/// The kind of the newest runner event in the newest `_diag/Runner_*.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastEvent {
    None,
    Listening,
    JobStarted,
    JobCompleted,
}

/// The decision table.
///
/// | `Runner.Worker` | `Runner.Listener` | `.runner` | last `_diag` event | state |
/// |---|---|---|---|---|
/// | running | any | any | any | running |
/// | — | running | any | job completed | running (the listener is winding down) |
/// | — | running | missing | other | preparing (`config.sh` runs the listener as `configure`) |
/// | — | running | present | job started | running (worker starting or just exited) |
/// | — | running | present | listening | idle |
/// | — | running | present | none | preparing |
/// | — | — | any | job completed | finished |
/// | — | — | any | other | offline |
///
/// An ephemeral runner (what myshoes registers) logs "Job … completed", deletes its session
/// and `.runner`, and exits 0 (actions/runner Runner.cs:572-603): only then is it finished, so
/// a host that reclaims the VM on "finished" never cuts that cleanup short.
pub fn decide(configured: bool, listener: bool, worker: bool, last: LastEvent) -> RunnerState {
    if worker {
        return RunnerState::Running;
    }
    match (listener, configured, last) {
        (true, _, LastEvent::JobCompleted) => RunnerState::Running,
        (false, _, LastEvent::JobCompleted) => RunnerState::Finished,
        (true, false, _) => RunnerState::Preparing,
        (true, true, LastEvent::JobStarted) => RunnerState::Running,
        (true, true, LastEvent::Listening) => RunnerState::Idle,
        (true, true, LastEvent::None) => RunnerState::Preparing,
        (false, _, _) => RunnerState::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_matches_the_table() {
        use LastEvent::*;
        use RunnerState::*;
        // (configured, listener, worker, last) → state, written out in full.
        let table = [
            (false, false, false, None, Offline),
            (false, false, false, Listening, Offline),
            (false, false, false, JobStarted, Offline),
            (false, false, false, JobCompleted, Finished),
            (false, false, true, None, Running),
            (false, false, true, Listening, Running),
            (false, false, true, JobStarted, Running),
            (false, false, true, JobCompleted, Running),
            (false, true, false, None, Preparing),
            (false, true, false, Listening, Preparing),
            (false, true, false, JobStarted, Preparing),
            (false, true, false, JobCompleted, Running),
            (false, true, true, None, Running),
            (false, true, true, Listening, Running),
            (false, true, true, JobStarted, Running),
            (false, true, true, JobCompleted, Running),
            (true, false, false, None, Offline),
            (true, false, false, Listening, Offline),
            (true, false, false, JobStarted, Offline),
            (true, false, false, JobCompleted, Finished),
            (true, false, true, None, Running),
            (true, false, true, Listening, Running),
            (true, false, true, JobStarted, Running),
            (true, false, true, JobCompleted, Running),
            (true, true, false, None, Preparing),
            (true, true, false, Listening, Idle),
            (true, true, false, JobStarted, Running),
            (true, true, false, JobCompleted, Running),
            (true, true, true, None, Running),
            (true, true, true, Listening, Running),
            (true, true, true, JobStarted, Running),
            (true, true, true, JobCompleted, Running),
        ];
        assert_eq!(table.len(), 2 * 2 * 2 * 4);
        for (configured, listener, worker, last, expected) in table {
            assert_eq!(
                decide(configured, listener, worker, last),
                expected,
                "configured={configured} listener={listener} worker={worker} last={last:?}"
            );
        }
    }

    #[test]
    fn states_serialize_as_snake_case_names() -> Result<(), serde_json::Error> {
        for state in [
            RunnerState::Offline,
            RunnerState::Preparing,
            RunnerState::Idle,
            RunnerState::Running,
            RunnerState::Finished,
        ] {
            assert_eq!(
                serde_json::to_string(&state)?,
                format!("\"{}\"", state.as_str())
            );
        }
        Ok(())
    }
}
