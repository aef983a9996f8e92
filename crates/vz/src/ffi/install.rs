//! `shoes-vz template create --ipsw PATH`: a macOS restore image installed into a new template
//! (`Disk.img`, `AuxiliaryStorage` created for the image's hardware model, `HardwareModel.json`,
//! `TemplateMetadata.json`, all read-only).
//!
//! This installs the OS only. The installed macOS starts in Setup Assistant, which needs a
//! display and clicks; docs/macos.md says how to finish a runner image.

use super::foundation::{done_channel, file_url, plain_error, send_once, wait};
use super::vm::{VzVm, QUICK_TIMEOUT};
use crate::devices::VmPurpose;
use crate::errors::{framework_error, VzError};
use crate::hardware::{self, HardwareModel};
use crate::limits::{HostReserve, MIB};
use crate::mac_address::MacAddress;
use crate::plan::{
    self, Adjustment, DiskSync, Display, PlanRequest, AUXILIARY_STORAGE_FILE, DISK_FILE,
};
use crate::template::{self, TemplateInfo, TemplateMetadata};
use crate::version::MacosVersion;
use block2::RcBlock;
use objc2::AnyThread;
use objc2_foundation::NSError;
use objc2_virtualization::{
    VZMacAuxiliaryStorage, VZMacAuxiliaryStorageInitializationOptions, VZMacOSInstaller,
    VZMacOSRestoreImage,
};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// macOS needs roughly 25-30 GB to install; a smaller disk fails late in the install.
pub const MIN_DISK_BYTES: u64 = 32 * 1024 * MIB;

/// What to install where.
#[derive(Debug, Clone)]
pub struct IpswInstall {
    pub ipsw: PathBuf,
    /// Must not exist yet.
    pub template_dir: PathBuf,
    pub info: TemplateInfo,
    /// Size of the sparse `Disk.img` (only written blocks use space).
    pub disk_size_bytes: u64,
    /// For the install VM; raised to the image's minimum when lower.
    pub vcpus: u32,
    pub memory_mib: u64,
    /// For the whole install (tens of minutes is normal).
    pub timeout: Duration,
}

/// What a restore image asks of its VM, read from `mostFeaturefulSupportedConfiguration`.
#[derive(Debug, Clone)]
pub struct RestoreImageInfo {
    pub build_version: String,
    pub os_version: MacosVersion,
    pub hardware_model: HardwareModel,
    pub min_cpus: u32,
    pub min_memory_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct InstalledTemplate {
    pub dir: PathBuf,
    pub metadata: TemplateMetadata,
    pub restore_image: RestoreImageInfo,
    /// Sizes of the install VM that differed from the request.
    pub adjustments: Vec<Adjustment>,
}

fn restore_image_info(
    image: Option<&VZMacOSRestoreImage>,
    error: Option<&NSError>,
) -> Result<RestoreImageInfo, VzError> {
    const OPERATION: &str = "load the restore image";
    if let Some(error) = error {
        return Err(framework_error(OPERATION, plain_error(error)));
    }
    let image = image.ok_or(VzError::Abandoned {
        operation: OPERATION,
        detail: "the framework returned neither an image nor an error",
    })?;
    let unsupported = |reason: &str| VzError::Unsupported {
        what: "install this restore image",
        reason: reason.to_string(),
    };
    // SAFETY: reading properties of a loaded restore image, inside its completion handler.
    let requirements =
        unsafe { image.mostFeaturefulSupportedConfiguration() }.ok_or_else(|| {
            unsupported("it needs a newer host: no configuration of it is supported by this macOS")
        })?;
    // SAFETY: as above.
    let (model, supported) = unsafe {
        let model = requirements.hardwareModel();
        let supported = model.isSupported() && image.isSupported();
        (model, supported)
    };
    if !supported {
        return Err(unsupported(
            "its hardware model is not supported by this host's macOS",
        ));
    }
    // SAFETY: as above.
    let (bytes, min_cpus, min_memory_bytes, build, version) = unsafe {
        (
            model.dataRepresentation().to_vec(),
            requirements.minimumSupportedCPUCount(),
            requirements.minimumSupportedMemorySize(),
            image.buildVersion().to_string(),
            image.operatingSystemVersion(),
        )
    };
    let clamp = |v: isize| u32::try_from(v).unwrap_or(0);
    Ok(RestoreImageInfo {
        build_version: build,
        os_version: MacosVersion::new(
            clamp(version.majorVersion),
            clamp(version.minorVersion),
            clamp(version.patchVersion),
        ),
        hardware_model: HardwareModel::from_bytes(bytes)?,
        min_cpus: u32::try_from(min_cpus).unwrap_or(u32::MAX),
        min_memory_bytes,
    })
}

/// Loads an `.ipsw` and reads what it needs (the handler runs on an arbitrary thread).
pub async fn load_restore_image(
    ipsw: &Path,
    timeout: Duration,
) -> Result<RestoreImageInfo, VzError> {
    let (done, receiver) = done_channel();
    {
        // Objective-C objects stay inside this block: the future remains `Send`.
        let url = file_url(ipsw)?;
        let block = RcBlock::new(
            move |image: *mut VZMacOSRestoreImage, error: *mut NSError| {
                // SAFETY: the framework passes null or valid objects for this call.
                let result = unsafe { restore_image_info(image.as_ref(), error.as_ref()) };
                send_once(&done, result);
            },
        );
        // SAFETY: `url` is a file URL (a non-file URL would raise); the block is copied.
        unsafe { VZMacOSRestoreImage::loadFileURL_completionHandler(&url, &block) };
    }
    wait("load the restore image", receiver, timeout).await
}

/// The newest restore image this host supports, as Apple's catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRestoreImage {
    /// An https URL of the `.ipsw` (download it, then install from the file).
    pub url: String,
    pub build_version: String,
    pub os_version: MacosVersion,
}

/// `VZMacOSRestoreImage fetchLatestSupportedWithCompletionHandler:` (asks Apple's catalog over
/// the network; the handler runs on an arbitrary thread).
pub async fn fetch_latest_supported(timeout: Duration) -> Result<LatestRestoreImage, VzError> {
    const OPERATION: &str = "fetch the latest supported restore image";
    let (done, receiver) = done_channel();
    {
        // Objective-C objects stay inside this block: the future remains `Send`.
        let block = RcBlock::new(
            move |image: *mut VZMacOSRestoreImage, error: *mut NSError| {
                // SAFETY: the framework passes null or valid objects for this call.
                let result = match unsafe { (image.as_ref(), error.as_ref()) } {
                    (_, Some(error)) => Err(framework_error(OPERATION, plain_error(error))),
                    (Some(image), None) => {
                        // SAFETY: reading properties of the fetched image inside its handler.
                        let (url, build, version) = unsafe {
                            (
                                image.URL().absoluteString().map(|s| s.to_string()),
                                image.buildVersion().to_string(),
                                image.operatingSystemVersion(),
                            )
                        };
                        let clamp = |v: isize| u32::try_from(v).unwrap_or(0);
                        url.ok_or(VzError::InvalidData {
                            what: "the latest restore image's URL",
                            hint: "the catalog gave no URL; download an IPSW yourself and pass --ipsw PATH",
                        })
                        .map(|url| LatestRestoreImage {
                            url,
                            build_version: build,
                            os_version: MacosVersion::new(
                                clamp(version.majorVersion),
                                clamp(version.minorVersion),
                                clamp(version.patchVersion),
                            ),
                        })
                    }
                    (None, None) => Err(VzError::Abandoned {
                        operation: OPERATION,
                        detail: "the framework returned neither an image nor an error",
                    }),
                };
                send_once(&done, result);
            },
        );
        // SAFETY: a class method with a block the framework copies.
        unsafe { VZMacOSRestoreImage::fetchLatestSupportedWithCompletionHandler(&block) };
    }
    wait(OPERATION, receiver, timeout).await
}

/// Creates `AuxiliaryStorage` for `model` at `path` (fails if it exists).
fn create_auxiliary_storage(path: &Path, model: &HardwareModel) -> Result<(), VzError> {
    let url = file_url(path)?;
    let model = super::config::hardware_model(model.as_bytes())?;
    // SAFETY: initialising a freshly allocated storage object; errors come back as NSError.
    unsafe {
        VZMacAuxiliaryStorage::initCreatingStorageAtURL_hardwareModel_options_error(
            VZMacAuxiliaryStorage::alloc(),
            &url,
            &model,
            VZMacAuxiliaryStorageInitializationOptions::empty(),
        )
    }
    .map(|_| ())
    .map_err(|error| framework_error("create the auxiliary storage", plain_error(&error)))
}

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Installs `request.ipsw` into a new template. `progress` gets the installer's fraction
/// (0.0-1.0) about once a second. On any failure the half-built template is removed.
pub async fn install_from_ipsw(
    request: &IpswInstall,
    reserve: HostReserve,
    mut progress: impl FnMut(f64) + Send,
) -> Result<InstalledTemplate, VzError> {
    let host = super::host::probe();
    host.check_macos_guests()?;
    request.info.validate()?;
    if request.disk_size_bytes < MIN_DISK_BYTES {
        return Err(VzError::InvalidData {
            what: "the disk size",
            hint: "macOS needs at least 32 GiB to install; pick a bigger disk (it is sparse)",
        });
    }
    std::fs::metadata(&request.ipsw)
        .and_then(|meta| {
            if meta.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|source| VzError::Io {
            action: "read the restore image",
            path: request.ipsw.clone(),
            source,
        })?;
    let image = load_restore_image(&request.ipsw, QUICK_TIMEOUT * 4).await?;
    template::create_dir(&request.template_dir)?;
    let built = fill(request, &image, &host, reserve, &mut progress).await;
    if built.is_err() {
        if let Err(error) = std::fs::remove_dir_all(&request.template_dir) {
            tracing::error!(template = %request.template_dir.display(), error = %error, "cannot remove a half-built template");
        }
    }
    built
}

async fn fill(
    request: &IpswInstall,
    image: &RestoreImageInfo,
    host: &crate::host::HostInfo,
    reserve: HostReserve,
    progress: &mut (impl FnMut(f64) + Send),
) -> Result<InstalledTemplate, VzError> {
    let dir = &request.template_dir;
    let disk = dir.join(DISK_FILE);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| VzError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::File::create_new(&disk)
        .and_then(|file| file.set_len(request.disk_size_bytes))
        .map_err(io("create the sparse disk", &disk))?;
    let auxiliary_storage = dir.join(AUXILIARY_STORAGE_FILE);
    create_auxiliary_storage(&auxiliary_storage, &image.hardware_model)?;
    hardware::write_hardware_model(dir, &image.hardware_model)?;

    // The install VM's identity is thrown away: runners get their own.
    let plan = plan::build(
        PlanRequest {
            vcpus: request.vcpus.max(image.min_cpus),
            memory_mib: request.memory_mib.max(image.min_memory_bytes.div_ceil(MIB)),
            disk,
            auxiliary_storage,
            hardware_model: image.hardware_model.clone(),
            machine_identifier: super::host::new_machine_identifier()?,
            mac: MacAddress::derive(random_u64()),
            config_disk: None,
            purpose: VmPurpose::Install,
            host_macos: host.macos,
            display: Some(Display::default()),
            disk_sync: DiskSync::Full,
        },
        &host.limits(reserve),
    )?;
    let vm = VzVm::create(&plan, "ipsw-install").await?;
    let ipsw = request.ipsw.clone();
    let install = vm.call("install macOS", request.timeout, move |objects, done| {
        let url = file_url(&ipsw)?;
        // SAFETY: on the VM's queue, as the installer requires; the installer is kept in
        // `objects` until the VM is released.
        let installer = unsafe {
            VZMacOSInstaller::initWithVirtualMachine_restoreImageURL(
                VZMacOSInstaller::alloc(),
                &objects.vm,
                &url,
            )
        };
        let block = super::foundation::completion("install macOS", done, || {});
        // SAFETY: on the VM's queue; the framework copies the block.
        unsafe { installer.installWithCompletionHandler(&block) };
        objects.installer = Some(installer);
        Ok(())
    });
    tokio::pin!(install);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let installed = loop {
        tokio::select! {
            result = &mut install => break result,
            _ = tick.tick() => {
                let fraction = vm
                    .exec_value("read the install progress", QUICK_TIMEOUT, |objects| {
                        // SAFETY: on the VM's queue; NSProgress is thread-safe.
                        Ok(objects
                            .installer
                            .as_ref()
                            .map(|installer| unsafe { installer.progress() }.fractionCompleted()))
                    })
                    .await;
                if let Ok(Some(fraction)) = fraction {
                    progress(fraction.clamp(0.0, 1.0));
                }
            }
        }
    };
    let stopped = vm.force_stop(QUICK_TIMEOUT).await;
    installed?;
    stopped?;
    progress(1.0);
    template::write_metadata(dir, &request.info)?;
    template::seal(dir)?;
    Ok(InstalledTemplate {
        dir: dir.clone(),
        metadata: request.info.metadata(),
        restore_image: image.clone(),
        adjustments: plan.adjustments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    // Type-checked only off Apple (nothing links there): the CLI may spawn these.
    #[allow(dead_code)]
    fn futures_are_send(request: &IpswInstall) {
        assert_send(&load_restore_image(Path::new("/x.ipsw"), QUICK_TIMEOUT));
        assert_send(&install_from_ipsw(request, HostReserve::default(), |_| {}));
    }
}
