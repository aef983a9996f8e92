//! [`VzError`]: what driving Virtualization.framework can fail with, and the mapping of the
//! framework's `VZErrorDomain` codes (plain numbers here, so it is unit-tested on Linux).

use std::path::PathBuf;
use std::time::Duration;

/// Apple's licence allows two macOS guests per host at once; the framework enforces it.
pub const MAX_MACOS_VMS_PER_HOST: u32 = 2;

/// `VZErrorCode` values from Virtualization.framework's `VZError.h` (mirrored from
/// objc2-virtualization 0.3.2; the FFI asserts at compile time that they still agree).
pub mod codes {
    pub const INTERNAL: i64 = 1;
    pub const INVALID_VIRTUAL_MACHINE_CONFIGURATION: i64 = 2;
    pub const INVALID_VIRTUAL_MACHINE_STATE: i64 = 3;
    pub const INVALID_VIRTUAL_MACHINE_STATE_TRANSITION: i64 = 4;
    pub const INVALID_DISK_IMAGE: i64 = 5;
    pub const VIRTUAL_MACHINE_LIMIT_EXCEEDED: i64 = 6;
    pub const NETWORK_ERROR: i64 = 7;
    pub const OUT_OF_DISK_SPACE: i64 = 8;
    pub const OPERATION_CANCELLED: i64 = 9;
    pub const NOT_SUPPORTED: i64 = 10;
    pub const SAVE: i64 = 11;
    pub const RESTORE: i64 = 12;
    pub const RESTORE_IMAGE_CATALOG_LOAD_FAILED: i64 = 10001;
    pub const INVALID_RESTORE_IMAGE_CATALOG: i64 = 10002;
    pub const NO_SUPPORTED_RESTORE_IMAGES_IN_CATALOG: i64 = 10003;
    pub const RESTORE_IMAGE_LOAD_FAILED: i64 = 10004;
    pub const INVALID_RESTORE_IMAGE: i64 = 10005;
    pub const INSTALLATION_REQUIRES_UPDATE: i64 = 10006;
    pub const INSTALLATION_FAILED: i64 = 10007;
}

/// The name of a `VZErrorDomain` code, for messages and logs.
pub fn code_name(code: i64) -> Option<&'static str> {
    Some(match code {
        codes::INTERNAL => "Internal",
        codes::INVALID_VIRTUAL_MACHINE_CONFIGURATION => "InvalidVirtualMachineConfiguration",
        codes::INVALID_VIRTUAL_MACHINE_STATE => "InvalidVirtualMachineState",
        codes::INVALID_VIRTUAL_MACHINE_STATE_TRANSITION => "InvalidVirtualMachineStateTransition",
        codes::INVALID_DISK_IMAGE => "InvalidDiskImage",
        codes::VIRTUAL_MACHINE_LIMIT_EXCEEDED => "VirtualMachineLimitExceeded",
        codes::NETWORK_ERROR => "NetworkError",
        codes::OUT_OF_DISK_SPACE => "OutOfDiskSpace",
        codes::OPERATION_CANCELLED => "OperationCancelled",
        codes::NOT_SUPPORTED => "NotSupported",
        codes::SAVE => "Save",
        codes::RESTORE => "Restore",
        codes::RESTORE_IMAGE_CATALOG_LOAD_FAILED => "RestoreImageCatalogLoadFailed",
        codes::INVALID_RESTORE_IMAGE_CATALOG => "InvalidRestoreImageCatalog",
        codes::NO_SUPPORTED_RESTORE_IMAGES_IN_CATALOG => "NoSupportedRestoreImagesInCatalog",
        codes::RESTORE_IMAGE_LOAD_FAILED => "RestoreImageLoadFailed",
        codes::INVALID_RESTORE_IMAGE => "InvalidRestoreImage",
        codes::INSTALLATION_REQUIRES_UPDATE => "InstallationRequiresUpdate",
        codes::INSTALLATION_FAILED => "InstallationFailed",
        _ => return None,
    })
}

/// An `NSError` copied into plain Rust while it was valid (inside a completion handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameworkError {
    /// Whether the domain is `VZErrorDomain` (decided by the FFI against the real constant).
    pub in_vz_domain: bool,
    pub domain: String,
    pub code: i64,
    pub description: String,
}

impl std::fmt::Display for FrameworkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.in_vz_domain {
            code_name(self.code)
        } else {
            None
        };
        match name {
            Some(name) => write!(f, "{} ({name}): {}", self.domain, self.description),
            None => write!(
                f,
                "{} code {}: {}",
                self.domain, self.code, self.description
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VzError {
    /// What this platform or build cannot do (every non-macOS host, for VMs).
    #[error("Virtualization.framework cannot {what} here: {reason}")]
    Unsupported { what: &'static str, reason: String },
    #[error(
        "cannot {operation}: at most {MAX_MACOS_VMS_PER_HOST} macOS VMs may run on one host \
         (Apple's limit, enforced by Virtualization.framework); stop another VM or lower \
         capacity.max_runners to {MAX_MACOS_VMS_PER_HOST}"
    )]
    VmLimitExceeded {
        operation: &'static str,
        detail: FrameworkError,
    },
    #[error("the VM configuration is invalid ({operation}): {detail}")]
    InvalidConfiguration {
        operation: &'static str,
        detail: FrameworkError,
    },
    #[error("Virtualization.framework failed to {operation}: {detail}")]
    Framework {
        operation: &'static str,
        detail: FrameworkError,
    },
    /// A framework initializer returned nil for bytes we handed it.
    #[error("{what} was refused by Virtualization.framework: {hint}")]
    InvalidData {
        what: &'static str,
        hint: &'static str,
    },
    #[error("the host's macOS is too old")]
    HostTooOld(#[from] crate::version::VersionError),
    #[error("the VM plan is invalid")]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Hardware(#[from] crate::hardware::HardwareError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("Virtualization.framework did not finish {operation} within {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    /// A completion handler was released without being called, or the VM is gone.
    #[error("{operation} was abandoned: {detail}")]
    Abandoned {
        operation: &'static str,
        detail: &'static str,
    },
    #[error("the VM is {state}, so it cannot {operation}")]
    WrongState {
        operation: &'static str,
        state: crate::state::VmState,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Maps an `NSError` from `operation` to a [`VzError`]. `VZErrorVirtualMachineLimitExceeded`
/// gets its own variant (the message says what to do); so does an invalid configuration.
pub fn framework_error(operation: &'static str, detail: FrameworkError) -> VzError {
    if !detail.in_vz_domain {
        return VzError::Framework { operation, detail };
    }
    match detail.code {
        codes::VIRTUAL_MACHINE_LIMIT_EXCEEDED => VzError::VmLimitExceeded { operation, detail },
        codes::INVALID_VIRTUAL_MACHINE_CONFIGURATION => {
            VzError::InvalidConfiguration { operation, detail }
        }
        _ => VzError::Framework { operation, detail },
    }
}

/// The typed error for everything VM-related on a host that is not macOS.
pub fn unsupported_off_macos(what: &'static str) -> VzError {
    VzError::Unsupported {
        what,
        reason: format!(
            "this is {}, and Virtualization.framework exists only on macOS (Apple silicon); \
             use the qemu or test backend here",
            std::env::consts::OS
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(in_vz_domain: bool, code: i64) -> FrameworkError {
        FrameworkError {
            in_vz_domain,
            domain: if in_vz_domain {
                "VZErrorDomain".into()
            } else {
                "NSPOSIXErrorDomain".into()
            },
            code,
            description: "The operation couldn’t be completed.".into(),
        }
    }

    #[test]
    fn limit_exceeded_maps_to_a_clear_two_vm_error() {
        let error = framework_error("start the VM", detail(true, 6));
        assert!(
            matches!(error, VzError::VmLimitExceeded { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("at most 2 macOS VMs"), "{message}");
        assert!(message.contains("max_runners"), "{message}");
    }

    #[test]
    fn the_same_number_in_another_domain_is_not_the_limit() {
        // POSIX error 6 is ENXIO: it must not be reported as the 2-VM limit.
        let error = framework_error("start the VM", detail(false, 6));
        assert!(matches!(error, VzError::Framework { .. }), "{error:?}");
        assert!(error.to_string().contains("NSPOSIXErrorDomain code 6"));
    }

    #[test]
    fn other_codes_are_generic_and_named() {
        let error = framework_error("start the VM", detail(true, codes::INVALID_DISK_IMAGE));
        assert!(matches!(error, VzError::Framework { .. }));
        assert!(error.to_string().contains("(InvalidDiskImage)"), "{error}");
        let config = framework_error("validate", detail(true, 2));
        assert!(matches!(config, VzError::InvalidConfiguration { .. }));
        let unknown = framework_error("start the VM", detail(true, 424242));
        assert!(unknown.to_string().contains("code 424242"), "{unknown}");
    }

    #[test]
    fn every_mirrored_code_has_a_distinct_name() {
        let all = [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 10001, 10002, 10003, 10004, 10005, 10006, 10007,
        ];
        let mut names: Vec<&str> = all.iter().map(|c| code_name(*c).expect("named")).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(code_name(0), None);
    }

    #[test]
    fn unsupported_names_the_platform() {
        let error = unsupported_off_macos("run macOS VMs");
        assert!(error.to_string().contains(std::env::consts::OS));
    }
}
