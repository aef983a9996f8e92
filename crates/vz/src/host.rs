//! What the host offers: its macOS version, size and the framework's limits. [`probe`] asks
//! the framework on macOS and is a typed [`VzError::Unsupported`] everywhere else.

use crate::errors::VzError;
use crate::limits::{FrameworkLimits, HostReserve, HostResources, Limits};
use crate::version::{self, HostFeature, MacosVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    pub macos: MacosVersion,
    pub resources: HostResources,
    pub framework: FrameworkLimits,
    /// `VZVirtualMachine.isSupported`: false on Intel Macs and inside most VMs.
    pub virtualization_supported: bool,
}

impl HostInfo {
    pub fn limits(&self, reserve: HostReserve) -> Limits {
        Limits {
            framework: self.framework,
            host: self.resources,
            reserve,
        }
    }

    /// Whether this host can run macOS guests at all (hardware, and macOS 13 or later).
    pub fn check_macos_guests(&self) -> Result<(), VzError> {
        if !self.virtualization_supported {
            return Err(VzError::Unsupported {
                what: "run VMs",
                reason: "VZVirtualMachine.isSupported is false (an Intel Mac, or a VM without nested virtualization)".into(),
            });
        }
        version::require(HostFeature::MacosGuests, self.macos)?;
        Ok(())
    }

    pub fn saved_state_available(&self) -> bool {
        version::supports(HostFeature::SavedState, self.macos)
    }
}

/// Reads the host's facts from the framework (macOS only).
pub fn probe() -> Result<HostInfo, VzError> {
    #[cfg(target_os = "macos")]
    {
        Ok(crate::ffi::host::probe())
    }
    #[cfg(not(target_os = "macos"))]
    {
        Err(crate::errors::unsupported_off_macos("probe the host"))
    }
}

/// Whether macOS guests can run here; never panics, false off macOS.
pub fn is_supported() -> bool {
    probe().is_ok_and(|host| host.check_macos_guests().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(macos: &str, supported: bool) -> HostInfo {
        let limits = crate::limits::tests::apple_silicon_like(10, 32);
        HostInfo {
            macos: macos.parse().expect("version"),
            resources: limits.host,
            framework: limits.framework,
            virtualization_supported: supported,
        }
    }

    #[test]
    fn gates_follow_version_and_hardware() {
        host("26.0", true).check_macos_guests().expect("fine");
        assert!(host("26.0", false).check_macos_guests().is_err());
        assert!(matches!(
            host("12.7", true).check_macos_guests(),
            Err(VzError::HostTooOld(_))
        ));
        assert!(host("14.0", true).saved_state_available());
        assert!(!host("13.6", true).saved_state_available());
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn off_macos_probe_is_a_typed_unsupported() {
        assert!(matches!(probe(), Err(VzError::Unsupported { .. })));
        assert!(!is_supported());
    }
}
