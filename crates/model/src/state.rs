//! Runner states: creating → booting → ssh-ready → running → tearing-down → deleted, or error.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a runner is in its life. Kept on the host; never taken from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerState {
    Creating,
    Booting,
    SshReady,
    Running,
    TearingDown,
    Error,
    /// The VM and its bundle are gone; terminal.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runner state cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: RunnerState,
    pub to: RunnerState,
}

impl RunnerState {
    pub const ALL: [RunnerState; 7] = [
        RunnerState::Creating,
        RunnerState::Booting,
        RunnerState::SshReady,
        RunnerState::Running,
        RunnerState::TearingDown,
        RunnerState::Error,
        RunnerState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Creating => "creating",
            RunnerState::Booting => "booting",
            RunnerState::SshReady => "ssh-ready",
            RunnerState::Running => "running",
            RunnerState::TearingDown => "tearing-down",
            RunnerState::Error => "error",
            RunnerState::Deleted => "deleted",
        }
    }

    /// Whether the runner still holds (or may hold) a VM and a slot on its agent.
    pub fn holds_slot(self) -> bool {
        self != RunnerState::Deleted
    }

    /// Whether AddInstance may answer: SSH works in the guest.
    pub fn is_ready(self) -> bool {
        matches!(self, RunnerState::SshReady | RunnerState::Running)
    }

    /// Whether a transition to `to` is allowed. Moving forward may skip states (an agent
    /// reports the newest state it knows); any live state may fail or start tearing down;
    /// failure is never repaired, only destroyed.
    pub fn can_become(self, to: RunnerState) -> bool {
        use RunnerState::*;
        if self == to {
            return true;
        }
        match self {
            Deleted => false,
            TearingDown => matches!(to, Error | Deleted),
            Error => matches!(to, TearingDown | Deleted),
            Creating | Booting | SshReady | Running => {
                matches!(to, TearingDown | Error | Deleted) || self.rank() < to.rank()
            }
        }
    }

    /// Checks [`Self::can_become`] and returns the new state.
    pub fn transition(self, to: RunnerState) -> Result<RunnerState, TransitionError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    fn rank(self) -> u8 {
        match self {
            RunnerState::Creating => 0,
            RunnerState::Booting => 1,
            RunnerState::SshReady => 2,
            RunnerState::Running => 3,
            RunnerState::TearingDown => 4,
            RunnerState::Error => 5,
            RunnerState::Deleted => 6,
        }
    }
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runner state {0:?}: expected one of creating, booting, ssh-ready, running, tearing-down, error, deleted")]
pub struct UnknownState(pub String);

impl FromStr for RunnerState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunnerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::RunnerState::*;
    use super::*;

    #[test]
    fn happy_path_is_allowed_in_order() {
        let path = [Creating, Booting, SshReady, Running, TearingDown, Deleted];
        for pair in path.windows(2) {
            assert!(pair[0].can_become(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn never_goes_backwards_or_repairs() {
        assert!(!Running.can_become(Booting));
        assert!(!SshReady.can_become(Creating));
        assert!(!Error.can_become(Running));
        assert!(!Error.can_become(SshReady));
        assert!(!TearingDown.can_become(Running));
        for to in RunnerState::ALL {
            if to != Deleted {
                assert!(!Deleted.can_become(to), "deleted -> {to}");
            }
        }
        assert_eq!(
            Running.transition(Booting),
            Err(TransitionError {
                from: Running,
                to: Booting
            })
        );
    }

    #[test]
    fn any_live_state_can_fail_or_be_torn_down() {
        for from in [Creating, Booting, SshReady, Running] {
            assert!(from.can_become(Error));
            assert!(from.can_become(TearingDown));
        }
        assert!(Error.can_become(TearingDown));
    }

    #[test]
    fn names_round_trip_through_strings_and_serde() {
        for state in RunnerState::ALL {
            assert_eq!(state.as_str().parse::<RunnerState>(), Ok(state));
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("ready".parse::<RunnerState>().is_err());
    }
}
