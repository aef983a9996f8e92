//! Host facts and identity blobs from the framework.

use super::config;
use crate::errors::VzError;
use crate::hardware::{self, HardwareModel, MachineIdentifierFile, VzMachineIdentifier};
use crate::host::HostInfo;
use crate::limits::{FrameworkLimits, HostResources};
use crate::version::MacosVersion;
use objc2_foundation::NSProcessInfo;
use objc2_virtualization::{
    VZMacMachineIdentifier, VZVirtualMachine, VZVirtualMachineConfiguration,
};
use std::path::Path;

fn clamp_u32(value: impl TryInto<u32>) -> u32 {
    value.try_into().unwrap_or(u32::MAX)
}

/// The host's macOS version, size, the framework's limits and whether VMs can run at all.
pub fn probe() -> HostInfo {
    let process = NSProcessInfo::processInfo();
    let version = process.operatingSystemVersion();
    // SAFETY: class properties with no preconditions, callable from any thread.
    let framework = unsafe {
        FrameworkLimits {
            min_cpus: clamp_u32(VZVirtualMachineConfiguration::minimumAllowedCPUCount()),
            max_cpus: clamp_u32(VZVirtualMachineConfiguration::maximumAllowedCPUCount()),
            min_memory_bytes: VZVirtualMachineConfiguration::minimumAllowedMemorySize(),
            max_memory_bytes: VZVirtualMachineConfiguration::maximumAllowedMemorySize(),
        }
    };
    // SAFETY: as above.
    let virtualization_supported = unsafe { VZVirtualMachine::isSupported() };
    HostInfo {
        macos: MacosVersion::new(
            clamp_u32(version.majorVersion),
            clamp_u32(version.minorVersion),
            clamp_u32(version.patchVersion),
        ),
        resources: HostResources {
            cpus: clamp_u32(process.processorCount()),
            memory_bytes: process.physicalMemory(),
        },
        framework,
        virtualization_supported,
    }
}

/// A fresh `VZMacMachineIdentifier` (unique per call), as its data representation.
pub fn new_machine_identifier() -> Result<VzMachineIdentifier, VzError> {
    // SAFETY: creating a new identifier has no preconditions.
    let identifier = unsafe { VZMacMachineIdentifier::new() };
    // SAFETY: reading a property of an object we own.
    let bytes = unsafe { identifier.dataRepresentation() }.to_vec();
    VzMachineIdentifier::from_bytes(bytes).map_err(|_| VzError::InvalidData {
        what: "a new machine identifier",
        hint: "the framework returned an empty or oversized data representation",
    })
}

/// Gives a runner bundle its VZ machine identifier: generates a fresh one and rewrites the
/// agent's `MachineIdentifier.json` with it (keeping `ecid`).
pub fn assign_machine_identifier(
    bundle_dir: &Path,
    ecid: u64,
) -> Result<MachineIdentifierFile, VzError> {
    let file = MachineIdentifierFile {
        ecid,
        vz_machine_identifier: Some(new_machine_identifier()?),
    };
    hardware::write_machine_identifier(bundle_dir, &file)?;
    Ok(file)
}

/// Whether this host's macOS can run guests of `model` (a template check).
pub fn hardware_model_supported(model: &HardwareModel) -> Result<bool, VzError> {
    let model = config::hardware_model(model.as_bytes())?;
    // SAFETY: reading a property of an object we own.
    Ok(unsafe { model.isSupported() })
}
