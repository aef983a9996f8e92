//! Moving the guest clock forward to the host's time from the config.
//!
//! A guest restored from a saved state wakes up with the clock it had when it was saved. The
//! config's `host_time_ms` is a floor: the real time is at least that, so a guest clock
//! behind it is certainly wrong and is set to it; a clock ahead is left alone (the host's
//! stamp is older than now by however long the config took to arrive). Only root, and only
//! with the real root filesystem (not under `--root`), touches the clock.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "clock", rename_all = "snake_case")]
pub enum ClockChange {
    /// The config has no host time.
    NoHostTime,
    /// Running under `--root` (a test or the test backend): the clock is not ours.
    FakeRoot,
    /// Not running as root.
    NotRoot,
    /// The guest clock was not behind.
    Unchanged,
    Set {
        from_ms: u64,
        to_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("could not set the clock to the host's time")]
pub struct ClockError(#[source] std::io::Error);

/// Whether a guest clock reading `now_ms` must move to `host_ms`.
pub fn is_behind(now_ms: u64, host_ms: u64) -> bool {
    now_ms < host_ms
}

pub fn adjust(root: &Path, host_time_ms: Option<u64>) -> Result<ClockChange, ClockError> {
    let Some(host_ms) = host_time_ms else {
        return Ok(ClockChange::NoHostTime);
    };
    if root != Path::new("/") {
        return Ok(ClockChange::FakeRoot);
    }
    if !nix::unistd::geteuid().is_root() {
        return Ok(ClockChange::NotRoot);
    }
    let now_ms = shoes_vz_guest_config::unix_ms_now();
    if !is_behind(now_ms, host_ms) {
        return Ok(ClockChange::Unchanged);
    }
    let secs = i64::try_from(host_ms / 1000).map_err(|e| ClockError(std::io::Error::other(e)))?;
    let nanos = i64::try_from((host_ms % 1000) * 1_000_000)
        .map_err(|e| ClockError(std::io::Error::other(e)))?;
    let spec = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec)
        .map_err(|errno| ClockError(errno.into()))?;
    Ok(ClockChange::Set {
        from_ms: now_ms,
        to_ms: host_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clock_behind_the_host_moves() {
        assert!(is_behind(1_000, 2_000));
        assert!(!is_behind(2_000, 2_000));
        assert!(!is_behind(3_000, 2_000));
    }

    #[test]
    fn a_fake_root_or_missing_time_never_touches_the_clock() -> Result<(), ClockError> {
        assert_eq!(adjust(Path::new("/"), None)?, ClockChange::NoHostTime);
        // Far in the future: would be set if this were allowed.
        assert_eq!(
            adjust(Path::new("/tmp/fake-root"), Some(u64::MAX / 2))?,
            ClockChange::FakeRoot
        );
        Ok(())
    }
}
