//! A [`VmPlan`] as a validated `VZVirtualMachineConfiguration`. Device order follows the
//! plan's documented order (a Saved State restore needs the same layout every time).

use super::foundation::{data, file_url, plain_error};
use crate::devices::{Keyboard, Pointer};
use crate::errors::{framework_error, VzError};
use crate::plan::{DiskSync, Display, VmPlan};
use objc2::rc::Retained;
use objc2::AnyThread;
use objc2_foundation::{NSArray, NSInteger, NSString, NSUInteger};
use objc2_virtualization::{
    VZDiskImageCachingMode, VZDiskImageStorageDeviceAttachment, VZDiskImageSynchronizationMode,
    VZEntropyDeviceConfiguration, VZGraphicsDeviceConfiguration, VZKeyboardConfiguration,
    VZMACAddress, VZMacAuxiliaryStorage, VZMacGraphicsDeviceConfiguration,
    VZMacGraphicsDisplayConfiguration, VZMacHardwareModel, VZMacKeyboardConfiguration,
    VZMacMachineIdentifier, VZMacOSBootLoader, VZMacPlatformConfiguration,
    VZMacTrackpadConfiguration, VZNATNetworkDeviceAttachment, VZNetworkDeviceConfiguration,
    VZPointingDeviceConfiguration, VZSocketDeviceConfiguration, VZStorageDeviceConfiguration,
    VZUSBKeyboardConfiguration, VZUSBScreenCoordinatePointingDeviceConfiguration,
    VZVirtioBlockDeviceConfiguration, VZVirtioEntropyDeviceConfiguration,
    VZVirtioNetworkDeviceConfiguration, VZVirtioSocketDeviceConfiguration,
    VZVirtualMachineConfiguration,
};
use std::path::Path;

/// Builds and validates the configuration for `plan`. Checks the plan's files first, so a
/// missing disk is our clear error rather than the framework's.
pub(crate) fn build(plan: &VmPlan) -> Result<Retained<VZVirtualMachineConfiguration>, VzError> {
    plan.check_files()?;
    let platform = platform(plan)?;

    // SAFETY: `new` has no preconditions; the configuration is ours alone until handed to a VM.
    let config = unsafe { VZVirtualMachineConfiguration::new() };
    // SAFETY: a macOS boot loader needs no arguments.
    let boot_loader = unsafe { VZMacOSBootLoader::new() };
    let cpu_count = NSUInteger::try_from(plan.cpu_count).map_err(|_| VzError::InvalidData {
        what: "the CPU count",
        hint: "it does not fit the platform's integer size",
    })?;
    // SAFETY: setters on an unshared configuration with retained, fully initialised values.
    unsafe {
        config.setCPUCount(cpu_count);
        config.setMemorySize(plan.memory_bytes);
        config.setPlatform(&platform);
        config.setBootLoader(Some(&boot_loader));
    }

    let mut disks = vec![block_device(&plan.boot_disk, false, plan.disk_sync)?];
    if let Some(config_disk) = &plan.config_disk {
        disks.push(block_device(config_disk, true, DiskSync::Full)?);
    }
    let network = nat_network(plan)?;
    // SAFETY: a virtio entropy device needs no arguments.
    let entropy: Retained<VZEntropyDeviceConfiguration> =
        Retained::into_super(unsafe { VZVirtioEntropyDeviceConfiguration::new() });
    // SAFETY: as above, setters on an unshared configuration.
    unsafe {
        config.setStorageDevices(&NSArray::from_retained_slice(&disks));
        config.setNetworkDevices(&NSArray::from_retained_slice(&[network]));
        if plan.devices.entropy {
            config.setEntropyDevices(&NSArray::from_retained_slice(&[entropy]));
        }
    }
    if plan.devices.vsock {
        // SAFETY: a virtio socket device needs no arguments.
        let socket: Retained<VZSocketDeviceConfiguration> =
            Retained::into_super(unsafe { VZVirtioSocketDeviceConfiguration::new() });
        // SAFETY: setter on an unshared configuration.
        unsafe { config.setSocketDevices(&NSArray::from_retained_slice(&[socket])) };
    }
    if let Some(display) = plan.devices.display {
        let graphics = graphics(display)?;
        // SAFETY: setter on an unshared configuration.
        unsafe { config.setGraphicsDevices(&NSArray::from_retained_slice(&[graphics])) };
    }
    if let Some(keyboard) = plan.devices.keyboard {
        let keyboard: Retained<VZKeyboardConfiguration> = match keyboard {
            // SAFETY: keyboard configurations need no arguments (the Mac keyboard needs a
            // macOS 14 host; the plan picks USB below that).
            Keyboard::Mac => Retained::into_super(unsafe { VZMacKeyboardConfiguration::new() }),
            // SAFETY: as above.
            Keyboard::Usb => Retained::into_super(unsafe { VZUSBKeyboardConfiguration::new() }),
        };
        // SAFETY: setter on an unshared configuration.
        unsafe { config.setKeyboards(&NSArray::from_retained_slice(&[keyboard])) };
    }
    if let Some(pointer) = plan.devices.pointer {
        let pointer: Retained<VZPointingDeviceConfiguration> = match pointer {
            Pointer::MacTrackpad => {
                // SAFETY: pointing device configurations need no arguments.
                Retained::into_super(unsafe { VZMacTrackpadConfiguration::new() })
            }
            // SAFETY: as above.
            Pointer::UsbScreenCoordinate => Retained::into_super(unsafe {
                VZUSBScreenCoordinatePointingDeviceConfiguration::new()
            }),
        };
        // SAFETY: setter on an unshared configuration.
        unsafe { config.setPointingDevices(&NSArray::from_retained_slice(&[pointer])) };
    }

    // SAFETY: validation only reads the configuration.
    unsafe { config.validateWithError() }
        .map_err(|error| framework_error("validate the VM configuration", plain_error(&error)))?;
    Ok(config)
}

/// The identity half of the configuration: hardware model, machine identifier, NVRAM.
fn platform(plan: &VmPlan) -> Result<Retained<VZMacPlatformConfiguration>, VzError> {
    let hardware_model = hardware_model(plan.hardware_model.as_bytes())?;
    // SAFETY: `isSupported` only reads the model.
    if !unsafe { hardware_model.isSupported() } {
        return Err(VzError::Unsupported {
            what: "boot this template",
            reason: "its hardware model is newer than this host's macOS supports; update the host"
                .into(),
        });
    }
    // SAFETY: initialising a freshly allocated object from bytes; nil (refusal) is handled.
    let machine_identifier = unsafe {
        VZMacMachineIdentifier::initWithDataRepresentation(
            VZMacMachineIdentifier::alloc(),
            &data(plan.machine_identifier.as_bytes()),
        )
    }
    .ok_or(VzError::InvalidData {
        what: "the machine identifier",
        hint: "MachineIdentifier.json's vzMachineIdentifier is not one the framework made",
    })?;
    let url = file_url(&plan.auxiliary_storage)?;
    // SAFETY: opens existing auxiliary storage (macOS 13+, checked by the caller's host gate);
    // the file's presence was checked by `check_files`.
    let auxiliary_storage =
        unsafe { VZMacAuxiliaryStorage::initWithURL(VZMacAuxiliaryStorage::alloc(), &url) };
    // SAFETY: `new` has no preconditions; setters on an unshared object.
    let platform = unsafe { VZMacPlatformConfiguration::new() };
    // SAFETY: as above.
    unsafe {
        platform.setHardwareModel(&hardware_model);
        platform.setMachineIdentifier(&machine_identifier);
        platform.setAuxiliaryStorage(Some(&auxiliary_storage));
    }
    Ok(platform)
}

pub(crate) fn hardware_model(bytes: &[u8]) -> Result<Retained<VZMacHardwareModel>, VzError> {
    // SAFETY: initialising a freshly allocated object from bytes; nil (refusal) is handled.
    unsafe {
        VZMacHardwareModel::initWithDataRepresentation(VZMacHardwareModel::alloc(), &data(bytes))
    }
    .ok_or(VzError::InvalidData {
        what: "the hardware model",
        hint: "HardwareModel.json holds bytes this macOS does not understand; recreate or re-import the template",
    })
}

fn block_device(
    path: &Path,
    read_only: bool,
    sync: DiskSync,
) -> Result<Retained<VZStorageDeviceConfiguration>, VzError> {
    let url = file_url(path)?;
    let sync = match sync {
        DiskSync::Full => VZDiskImageSynchronizationMode::Full,
        DiskSync::Fsync => VZDiskImageSynchronizationMode::Fsync,
        DiskSync::None => VZDiskImageSynchronizationMode::None,
    };
    // SAFETY: initialising a freshly allocated attachment; errors come back as NSError.
    let attachment = unsafe {
        VZDiskImageStorageDeviceAttachment::initWithURL_readOnly_cachingMode_synchronizationMode_error(
            VZDiskImageStorageDeviceAttachment::alloc(),
            &url,
            read_only,
            VZDiskImageCachingMode::Automatic,
            sync,
        )
    }
    .map_err(|error| framework_error("open a disk image", plain_error(&error)))?;
    // SAFETY: initialising a freshly allocated device with a valid attachment.
    let device = unsafe {
        VZVirtioBlockDeviceConfiguration::initWithAttachment(
            VZVirtioBlockDeviceConfiguration::alloc(),
            &attachment,
        )
    };
    Ok(Retained::into_super(device))
}

fn nat_network(plan: &VmPlan) -> Result<Retained<VZNetworkDeviceConfiguration>, VzError> {
    let mac_text = NSString::from_str(&plan.mac().to_string());
    // SAFETY: initialising a freshly allocated address from a string; nil is handled.
    let mac = unsafe { VZMACAddress::initWithString(VZMACAddress::alloc(), &mac_text) }.ok_or(
        VzError::InvalidData {
            what: "the MAC address",
            hint: "VZMACAddress refused it",
        },
    )?;
    // SAFETY: NAT attachment and virtio network device need no arguments; setters on
    // unshared objects.
    let (attachment, device) = unsafe {
        (
            VZNATNetworkDeviceAttachment::new(),
            VZVirtioNetworkDeviceConfiguration::new(),
        )
    };
    // SAFETY: as above.
    unsafe {
        device.setMACAddress(&mac);
        device.setAttachment(Some(&attachment));
    }
    Ok(Retained::into_super(device))
}

fn graphics(display: Display) -> Result<Retained<VZGraphicsDeviceConfiguration>, VzError> {
    let px = |value: u32| {
        NSInteger::try_from(value).map_err(|_| VzError::InvalidData {
            what: "the display size",
            hint: "it does not fit the platform's integer size",
        })
    };
    // SAFETY: initialising a freshly allocated display with in-range sizes (plan-validated).
    let screen = unsafe {
        VZMacGraphicsDisplayConfiguration::initWithWidthInPixels_heightInPixels_pixelsPerInch(
            VZMacGraphicsDisplayConfiguration::alloc(),
            px(display.width_px)?,
            px(display.height_px)?,
            px(display.pixels_per_inch)?,
        )
    };
    // SAFETY: `new` has no preconditions; setter on an unshared object.
    let device = unsafe { VZMacGraphicsDeviceConfiguration::new() };
    // SAFETY: as above.
    unsafe { device.setDisplays(&NSArray::from_retained_slice(&[screen])) };
    Ok(Retained::into_super(device))
}
