//! How many vCPUs and how much memory a guest may get: the framework's limits
//! (`VZVirtualMachineConfiguration.minimumAllowedCPUCount` etc., read by the FFI and passed in
//! as values), the host's size, and what is left for the host itself.
//!
//! Policy: a guest never gets more than the host minus [`HostReserve`] (one core and 2 GiB by
//! default, so the agent, SSH and APFS keep breathing under two busy guests), never more than
//! the framework's maximum, and never less than its minimum. Memory is handed out in whole MiB
//! (the framework requires a multiple of 1 MiB).

pub const MIB: u64 = 1024 * 1024;

/// The framework's bounds for one VM, as reported on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameworkLimits {
    pub min_cpus: u32,
    pub max_cpus: u32,
    pub min_memory_bytes: u64,
    pub max_memory_bytes: u64,
}

/// What the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// What is kept back for the host itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostReserve {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl Default for HostReserve {
    fn default() -> Self {
        Self {
            cpus: 1,
            memory_bytes: 2048 * MIB,
        }
    }
}

/// Everything clamping needs, bundled so callers pass one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub framework: FrameworkLimits,
    pub host: HostResources,
    pub reserve: HostReserve,
}

/// The range a guest's size is clamped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBounds {
    pub min_cpus: u32,
    pub max_cpus: u32,
    pub min_memory_mib: u64,
    pub max_memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("the framework reported impossible limits ({framework:?}); this is a bug or an unsupported macOS")]
    Framework { framework: FrameworkLimits },
    #[error("this host cannot fit even the smallest VM: {what} is {available} after the host's reserve, the framework needs at least {needed}; use a bigger host or lower the reserve")]
    HostTooSmall {
        what: &'static str,
        available: u64,
        needed: u64,
    },
}

impl Limits {
    /// The bounds a guest is clamped into on this host.
    pub fn guest_bounds(&self) -> Result<GuestBounds, LimitsError> {
        let fw = self.framework;
        if fw.min_cpus == 0
            || fw.min_cpus > fw.max_cpus
            || fw.min_memory_bytes > fw.max_memory_bytes
        {
            return Err(LimitsError::Framework { framework: fw });
        }
        let host_cpus = self.host.cpus.saturating_sub(self.reserve.cpus);
        let max_cpus = fw.max_cpus.min(host_cpus);
        if max_cpus < fw.min_cpus {
            return Err(LimitsError::HostTooSmall {
                what: "the CPU count",
                available: u64::from(host_cpus),
                needed: u64::from(fw.min_cpus),
            });
        }
        let host_memory = self
            .host
            .memory_bytes
            .saturating_sub(self.reserve.memory_bytes);
        // Whole MiB inside the framework's byte bounds: round the minimum up, the maximum down.
        let min_memory_mib = fw.min_memory_bytes.div_ceil(MIB).max(1);
        let max_memory_mib = fw.max_memory_bytes.min(host_memory) / MIB;
        if max_memory_mib < min_memory_mib {
            return Err(LimitsError::HostTooSmall {
                what: "memory (MiB)",
                available: host_memory / MIB,
                needed: min_memory_mib,
            });
        }
        Ok(GuestBounds {
            min_cpus: fw.min_cpus,
            max_cpus,
            min_memory_mib,
            max_memory_mib,
        })
    }
}

/// Runner capacity for this backend: never above Apple's two macOS guests per host.
pub fn cap_capacity(requested: u32) -> u32 {
    requested.min(crate::errors::MAX_MACOS_VMS_PER_HOST)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Values of the kind an Apple-silicon host reports (min 1 CPU / 128 MiB).
    pub(crate) fn apple_silicon_like(cpus: u32, memory_gib: u64) -> Limits {
        Limits {
            framework: FrameworkLimits {
                min_cpus: 1,
                max_cpus: 64,
                min_memory_bytes: 128 * MIB,
                max_memory_bytes: 1024 * 1024 * MIB,
            },
            host: HostResources {
                cpus,
                memory_bytes: memory_gib * 1024 * MIB,
            },
            reserve: HostReserve::default(),
        }
    }

    #[test]
    fn bounds_leave_the_reserve_to_the_host() {
        let bounds = apple_silicon_like(10, 32).guest_bounds().expect("bounds");
        assert_eq!(bounds.max_cpus, 9);
        assert_eq!(bounds.max_memory_mib, 30 * 1024);
        assert_eq!(bounds.min_cpus, 1);
        assert_eq!(bounds.min_memory_mib, 128);
    }

    #[test]
    fn framework_maximum_wins_over_a_huge_host() {
        let mut limits = apple_silicon_like(256, 4096);
        limits.framework.max_cpus = 32;
        limits.framework.max_memory_bytes = 1000 * MIB + 5; // not a whole MiB
        let bounds = limits.guest_bounds().expect("bounds");
        assert_eq!(bounds.max_cpus, 32);
        assert_eq!(bounds.max_memory_mib, 1000);
    }

    #[test]
    fn a_host_smaller_than_the_minimum_is_an_error() {
        let mut limits = apple_silicon_like(1, 32);
        let error = limits.guest_bounds().expect_err("no CPU left");
        assert!(matches!(
            error,
            LimitsError::HostTooSmall {
                what: "the CPU count",
                ..
            }
        ));
        limits = apple_silicon_like(8, 2);
        let error = limits.guest_bounds().expect_err("no memory left");
        assert!(error.to_string().contains("memory"), "{error}");
        limits = apple_silicon_like(8, 16);
        limits.framework.min_cpus = 0;
        assert!(matches!(
            limits.guest_bounds(),
            Err(LimitsError::Framework { .. })
        ));
    }

    #[test]
    fn capacity_is_capped_at_two() {
        assert_eq!(cap_capacity(0), 0);
        assert_eq!(cap_capacity(1), 1);
        assert_eq!(cap_capacity(2), 2);
        assert_eq!(cap_capacity(8), 2);
    }
}
