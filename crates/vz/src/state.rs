//! VM states and what an observer reports, mirrored from `VZVirtualMachineState` as plain Rust
//! so the agent can reason about them on every platform.

use std::fmt;

/// `VZVirtualMachineState` (raw values from the framework header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    Stopped,
    Running,
    Paused,
    Error,
    Starting,
    Pausing,
    Resuming,
    Stopping,
    Saving,
    Restoring,
    /// A value this build does not know (a newer macOS).
    Unknown(i64),
}

impl VmState {
    pub const fn from_raw(raw: i64) -> VmState {
        match raw {
            0 => VmState::Stopped,
            1 => VmState::Running,
            2 => VmState::Paused,
            3 => VmState::Error,
            4 => VmState::Starting,
            5 => VmState::Pausing,
            6 => VmState::Resuming,
            7 => VmState::Stopping,
            8 => VmState::Saving,
            9 => VmState::Restoring,
            other => VmState::Unknown(other),
        }
    }

    pub const fn raw(self) -> i64 {
        match self {
            VmState::Stopped => 0,
            VmState::Running => 1,
            VmState::Paused => 2,
            VmState::Error => 3,
            VmState::Starting => 4,
            VmState::Pausing => 5,
            VmState::Resuming => 6,
            VmState::Stopping => 7,
            VmState::Saving => 8,
            VmState::Restoring => 9,
            VmState::Unknown(raw) => raw,
        }
    }

    /// Stopped or failed: the VM will not run again without a new start.
    pub fn is_final(self) -> bool {
        matches!(self, VmState::Stopped | VmState::Error)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmState::Unknown(raw) => write!(f, "in unknown state {raw}"),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

/// What the FFI's observer publishes (a `tokio::sync::watch` value: the latest wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    /// Created, not started.
    Created,
    Running,
    /// The guest shut itself down (`guestDidStopVirtualMachine:`).
    GuestStopped,
    /// The framework stopped the VM on an error (`virtualMachine:didStopWithError:`).
    StoppedWithError(String),
    /// Stopped because the agent asked (`stop`/`requestStop` finished).
    StoppedByHost,
}

impl VmStatus {
    /// Whether the VM ended without the agent asking: the runner must error and be destroyed.
    pub fn is_unexpected_exit(&self) -> bool {
        matches!(self, VmStatus::GuestStopped | VmStatus::StoppedWithError(_))
    }

    pub fn is_stopped(&self) -> bool {
        matches!(
            self,
            VmStatus::GuestStopped | VmStatus::StoppedWithError(_) | VmStatus::StoppedByHost
        )
    }

    /// Text for the agent's `VmEvent::Exited { detail }`.
    pub fn exit_detail(&self) -> Option<String> {
        match self {
            VmStatus::GuestStopped => Some("the guest shut down".to_string()),
            VmStatus::StoppedWithError(error) => {
                Some(format!("the VM stopped on an error: {error}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_and_unknown_survives() {
        for raw in 0..=9 {
            assert_eq!(VmState::from_raw(raw).raw(), raw);
            assert!(!matches!(VmState::from_raw(raw), VmState::Unknown(_)));
        }
        assert_eq!(VmState::from_raw(42), VmState::Unknown(42));
        assert_eq!(VmState::Restoring.to_string(), "restoring");
        assert!(VmState::Stopped.is_final() && VmState::Error.is_final());
        assert!(!VmState::Paused.is_final());
    }

    #[test]
    fn only_guest_or_error_stops_are_unexpected() {
        assert!(VmStatus::GuestStopped.is_unexpected_exit());
        assert!(VmStatus::StoppedWithError("x".into()).is_unexpected_exit());
        assert!(!VmStatus::StoppedByHost.is_unexpected_exit());
        assert!(VmStatus::StoppedByHost.is_stopped());
        assert!(!VmStatus::Running.is_stopped());
        assert_eq!(VmStatus::Running.exit_detail(), None);
        assert!(VmStatus::StoppedWithError("disk".into())
            .exit_detail()
            .expect("detail")
            .contains("disk"));
    }
}
