//! Virtualization.framework through objc2: a [`crate::plan::VmPlan`] becomes VZ objects, and a
//! [`VzVm`] drives one VM on its own serial dispatch queue.
//!
//! Built on macOS; off Apple only type-checked (feature `typecheck`, GNUstep ABI, patched link
//! attribute: `.ci/vz-typecheck.sh`). Nothing here has run in CI: docs/macos.md lists what a Mac
//! must verify.
//!
//! Threading: every VZ method is `unsafe` and `Retained<VZ…>` is not `Send`. VM objects are
//! created, used and released only in closures on the VM's queue ([`vm`]); results travel back
//! as plain Rust through tokio oneshot channels, and every wait has a timeout.
//!
//! # Layout
//! - [`host`]: `probe()`, fresh machine identifiers, hardware model support.
//! - `config`: plan → `VZVirtualMachineConfiguration` (validated).
//! - [`vm`]: [`VzVm`]: create, start, stop, pause/resume, save/restore, state.
//! - `observer`: the `VZVirtualMachineDelegate` that reports guest stops and errors.
//! - `vsock`: [`VzVm::connect_vsock`], the host's end of the guest's virtio socket.
//! - [`install`]: `template create --ipsw` (restore image, auxiliary storage, installer,
//!   `fetchLatestSupported`).
//! - `foundation`: NSURL/NSData/NSError helpers and completion blocks.

mod config;
mod foundation;
pub mod host;
pub mod install;
mod observer;
pub mod vm;
mod vsock;

pub use host::{assign_machine_identifier, hardware_model_supported, new_machine_identifier};
pub use install::{
    fetch_latest_supported, install_from_ipsw, InstalledTemplate, IpswInstall, LatestRestoreImage,
    RestoreImageInfo,
};
pub use vm::{StopOutcome, VzVm};

use crate::errors::codes;
use crate::state::VmState;
use objc2_virtualization::{VZErrorCode, VZVirtualMachineState};

// The plain-Rust mirrors must match the framework's values; checked at compile time.
const _: () = {
    assert!(codes::INTERNAL == VZErrorCode::Internal.0 as i64);
    assert!(
        codes::INVALID_VIRTUAL_MACHINE_CONFIGURATION
            == VZErrorCode::InvalidVirtualMachineConfiguration.0 as i64
    );
    assert!(
        codes::INVALID_VIRTUAL_MACHINE_STATE == VZErrorCode::InvalidVirtualMachineState.0 as i64
    );
    assert!(
        codes::INVALID_VIRTUAL_MACHINE_STATE_TRANSITION
            == VZErrorCode::InvalidVirtualMachineStateTransition.0 as i64
    );
    assert!(codes::INVALID_DISK_IMAGE == VZErrorCode::InvalidDiskImage.0 as i64);
    assert!(
        codes::VIRTUAL_MACHINE_LIMIT_EXCEEDED == VZErrorCode::VirtualMachineLimitExceeded.0 as i64
    );
    assert!(codes::NETWORK_ERROR == VZErrorCode::NetworkError.0 as i64);
    assert!(codes::OUT_OF_DISK_SPACE == VZErrorCode::OutOfDiskSpace.0 as i64);
    assert!(codes::OPERATION_CANCELLED == VZErrorCode::OperationCancelled.0 as i64);
    assert!(codes::NOT_SUPPORTED == VZErrorCode::NotSupported.0 as i64);
    assert!(codes::SAVE == VZErrorCode::Save.0 as i64);
    assert!(codes::RESTORE == VZErrorCode::Restore.0 as i64);
    assert!(
        codes::RESTORE_IMAGE_CATALOG_LOAD_FAILED
            == VZErrorCode::RestoreImageCatalogLoadFailed.0 as i64
    );
    assert!(
        codes::INVALID_RESTORE_IMAGE_CATALOG == VZErrorCode::InvalidRestoreImageCatalog.0 as i64
    );
    assert!(
        codes::NO_SUPPORTED_RESTORE_IMAGES_IN_CATALOG
            == VZErrorCode::NoSupportedRestoreImagesInCatalog.0 as i64
    );
    assert!(codes::RESTORE_IMAGE_LOAD_FAILED == VZErrorCode::RestoreImageLoadFailed.0 as i64);
    assert!(codes::INVALID_RESTORE_IMAGE == VZErrorCode::InvalidRestoreImage.0 as i64);
    assert!(
        codes::INSTALLATION_REQUIRES_UPDATE == VZErrorCode::InstallationRequiresUpdate.0 as i64
    );
    assert!(codes::INSTALLATION_FAILED == VZErrorCode::InstallationFailed.0 as i64);
    assert!(VmState::Stopped.raw() == VZVirtualMachineState::Stopped.0 as i64);
    assert!(VmState::Running.raw() == VZVirtualMachineState::Running.0 as i64);
    assert!(VmState::Paused.raw() == VZVirtualMachineState::Paused.0 as i64);
    assert!(VmState::Error.raw() == VZVirtualMachineState::Error.0 as i64);
    assert!(VmState::Starting.raw() == VZVirtualMachineState::Starting.0 as i64);
    assert!(VmState::Pausing.raw() == VZVirtualMachineState::Pausing.0 as i64);
    assert!(VmState::Resuming.raw() == VZVirtualMachineState::Resuming.0 as i64);
    assert!(VmState::Stopping.raw() == VZVirtualMachineState::Stopping.0 as i64);
    assert!(VmState::Saving.raw() == VZVirtualMachineState::Saving.0 as i64);
    assert!(VmState::Restoring.raw() == VZVirtualMachineState::Restoring.0 as i64);
};
