//! [`VmPlan`]: everything one macOS guest is made of, built and validated in plain Rust. The FFI
//! only turns a plan into VZ objects; every decision (sizes, devices, identity) is made here.
//!
//! Devices, always in this order (a restored Saved State needs the same layout):
//! 1. virtio block: the runner's `Disk.img`, read-write;
//! 2. virtio block: the per-runner config disk, read-only (when planned);
//! 3. virtio network: NAT with the planned MAC;
//! 4. the [`Devices`] chosen by [`crate::devices`] for the VM's purpose: for every runner
//!    (cold or restored) and warm slot one save-compatible list (vsock, a 1920×1080 display,
//!    Mac keyboard and trackpad, no entropy); the install VM adds entropy.
//!
//! A saveable VM (a warm slot; a runner on a host with Saved State) with a device that cannot
//! be saved is refused here: it cannot be planned.

pub use crate::devices::Display;
use crate::devices::{Devices, NotSaveCompatible, VmPurpose};
use crate::hardware::{HardwareModel, MachineIdentifierFile, VzMachineIdentifier};
use crate::limits::{Limits, LimitsError, MIB};
use crate::mac_address::MacAddress;
use crate::version::{self, HostFeature, MacosVersion};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File names inside a template and a runner bundle.
pub const DISK_FILE: &str = "Disk.img";
pub const AUXILIARY_STORAGE_FILE: &str = "AuxiliaryStorage";
/// Saved State of a warm slot (design: `State.save`).
pub const SAVED_STATE_FILE: &str = "State.save";

/// How the boot disk's writes reach the host's storage
/// (`VZDiskImageSynchronizationMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskSync {
    /// Guest flushes reach the physical disk: needed for anything kept (templates, warm slots).
    #[default]
    Full,
    /// Guest flushes become `fsync` (cheaper; the drive's cache may still lose them).
    Fsync,
    /// Guest flushes are ignored. Fastest; fine for a runner disk that is thrown away anyway,
    /// since only a host crash loses data (and with it the runner).
    None,
}

/// What the caller wants; [`build`] turns it into a [`VmPlan`] or says what is wrong.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk: PathBuf,
    pub auxiliary_storage: PathBuf,
    pub hardware_model: HardwareModel,
    pub machine_identifier: VzMachineIdentifier,
    pub mac: MacAddress,
    /// The per-runner config disk from the agent, attached read-only.
    pub config_disk: Option<PathBuf>,
    /// Decides the devices ([`Devices::for_purpose`]).
    pub purpose: VmPurpose,
    /// The host's macOS: some devices need a newer one, and Saved State needs 14.
    pub host_macos: MacosVersion,
    /// The template's display; `None` only for a template that asks for headless guests.
    pub display: Option<Display>,
    pub disk_sync: DiskSync,
}

impl PlanRequest {
    /// The request for a runner bundle: `Disk.img` and `AuxiliaryStorage` in `bundle_dir`,
    /// identity from its `MachineIdentifier.json` (the MAC derived from `ecid`), the default
    /// display (callers apply the template's choice).
    pub fn for_runner(
        bundle_dir: &Path,
        vcpus: u32,
        memory_mib: u64,
        identity: &MachineIdentifierFile,
        hardware_model: HardwareModel,
        config_disk: Option<PathBuf>,
        host_macos: MacosVersion,
    ) -> Result<PlanRequest, PlanError> {
        let machine_identifier = identity
            .vz_machine_identifier
            .clone()
            .ok_or(PlanError::MissingVzIdentifier)?;
        Ok(PlanRequest {
            vcpus,
            memory_mib,
            disk: bundle_dir.join(DISK_FILE),
            auxiliary_storage: bundle_dir.join(AUXILIARY_STORAGE_FILE),
            hardware_model,
            machine_identifier,
            mac: MacAddress::derive(identity.ecid),
            config_disk,
            purpose: VmPurpose::Runner,
            host_macos,
            display: Some(Display::default()),
            disk_sync: DiskSync::Full,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// `VZNATNetworkDeviceAttachment`: the host's vmnet NAT with bootpd handing out leases.
    Nat { mac: MacAddress },
}

/// A size the plan changed, for the agent to log (the guest got something else than asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub resource: &'static str,
    pub requested: u64,
    pub granted: u64,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub boot_disk: PathBuf,
    pub config_disk: Option<PathBuf>,
    pub auxiliary_storage: PathBuf,
    pub hardware_model: HardwareModel,
    pub machine_identifier: VzMachineIdentifier,
    pub network: NetworkPlan,
    pub purpose: VmPurpose,
    /// Everything but disks and network ([`crate::devices`]).
    pub devices: Devices,
    /// Will be saved or restored: every device is save-compatible (checked by [`build`]).
    pub saveable: bool,
    pub disk_sync: DiskSync,
    pub adjustments: Vec<Adjustment>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{what} must be above zero")]
    Zero { what: &'static str },
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("{what} path {path} must be absolute")]
    RelativePath { what: &'static str, path: PathBuf },
    #[error("{first} and {second} are the same file {path}; each needs its own")]
    SamePath {
        first: &'static str,
        second: &'static str,
        path: PathBuf,
    },
    #[error("MAC address {mac} must be locally administered unicast (second-lowest bit of the first octet set, lowest clear)")]
    BadMac { mac: MacAddress },
    #[error("display {width}x{height} at {ppi} ppi is out of range (1-8192 pixels, 36-600 ppi)")]
    BadDisplay { width: u32, height: u32, ppi: u32 },
    #[error("the bundle's MachineIdentifier.json has no vzMachineIdentifier; create one with the framework first")]
    MissingVzIdentifier,
    #[error("{what} {path} is missing or not a regular file")]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("a {purpose:?} VM is saved or restored, but its devices include {device}, which cannot be saved; this is a bug in the device list")]
    NotSaveable {
        purpose: VmPurpose,
        device: NotSaveCompatible,
    },
    #[error("the saved state was taken with {field} = {saved}, but this VM plans {planned}; a restore needs the identical configuration, so boot cold")]
    RestoreMismatch {
        field: &'static str,
        saved: String,
        planned: String,
    },
}

/// Validates `request` and clamps its sizes into `limits` (see [`crate::limits`]).
pub fn build(request: PlanRequest, limits: &Limits) -> Result<VmPlan, PlanError> {
    if request.vcpus == 0 {
        return Err(PlanError::Zero { what: "vcpus" });
    }
    if request.memory_mib == 0 {
        return Err(PlanError::Zero { what: "memory_mib" });
    }
    let bounds = limits.guest_bounds()?;
    let mut adjustments = Vec::new();
    let cpu_count = clamp(
        "vCPUs",
        u64::from(request.vcpus),
        u64::from(bounds.min_cpus),
        u64::from(bounds.max_cpus),
        &mut adjustments,
    );
    let memory_mib = clamp(
        "memory MiB",
        request.memory_mib,
        bounds.min_memory_mib,
        bounds.max_memory_mib,
        &mut adjustments,
    );

    let mut files = vec![
        ("the boot disk", &request.disk),
        ("the auxiliary storage", &request.auxiliary_storage),
    ];
    if let Some(config) = &request.config_disk {
        files.push(("the config disk", config));
    }
    for (index, (what, path)) in files.iter().enumerate() {
        if !path.is_absolute() {
            return Err(PlanError::RelativePath {
                what,
                path: path.to_path_buf(),
            });
        }
        if let Some((other, _)) = files[..index].iter().find(|(_, p)| p == path) {
            return Err(PlanError::SamePath {
                first: other,
                second: what,
                path: path.to_path_buf(),
            });
        }
    }
    if !(request.mac.is_locally_administered() && request.mac.is_unicast()) {
        return Err(PlanError::BadMac { mac: request.mac });
    }
    if let Some(display) = request.display {
        if !display.is_valid() {
            return Err(PlanError::BadDisplay {
                width: display.width_px,
                height: display.height_px,
                ppi: display.pixels_per_inch,
            });
        }
    }
    let devices = Devices::for_purpose(request.purpose, request.host_macos, request.display);
    let saveable = is_saveable(request.purpose, request.host_macos);
    if saveable {
        devices
            .check_save_compatible()
            .map_err(|device| PlanError::NotSaveable {
                purpose: request.purpose,
                device,
            })?;
    }
    Ok(VmPlan {
        // Both fit: clamped into u32 CPU bounds and MiB bounds derived from u64 bytes.
        cpu_count: u32::try_from(cpu_count).unwrap_or(bounds.max_cpus),
        memory_bytes: memory_mib * MIB,
        boot_disk: request.disk,
        config_disk: request.config_disk,
        auxiliary_storage: request.auxiliary_storage,
        hardware_model: request.hardware_model,
        machine_identifier: request.machine_identifier,
        network: NetworkPlan::Nat { mac: request.mac },
        purpose: request.purpose,
        devices,
        saveable,
        disk_sync: request.disk_sync,
        adjustments,
    })
}

/// Warm slots are always saved; runners are restorable wherever the host has Saved State,
/// so a cold runner and a restored one are the same machine.
fn is_saveable(purpose: VmPurpose, host: MacosVersion) -> bool {
    match purpose {
        VmPurpose::WarmSlot => true,
        VmPurpose::Runner => version::supports(HostFeature::SavedState, host),
        VmPurpose::Install => false,
    }
}

fn clamp(
    resource: &'static str,
    requested: u64,
    min: u64,
    max: u64,
    adjustments: &mut Vec<Adjustment>,
) -> u64 {
    let (granted, reason) = if requested < min {
        (min, "raised to the framework's minimum")
    } else if requested > max {
        (
            max,
            "lowered to what the host and framework allow after the host's reserve",
        )
    } else {
        return requested;
    };
    adjustments.push(Adjustment {
        resource,
        requested,
        granted,
        reason,
    });
    granted
}

/// What a Saved State depends on: restoring into a VM whose key differs fails (or worse).
/// Kept next to a warm slot's state file and compared before every restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedStateKey {
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub hardware_model: HardwareModel,
    pub machine_identifier: VzMachineIdentifier,
    pub mac_address: MacAddress,
    pub config_disk: bool,
    /// The save-compatible device list the state was taken with.
    pub devices: Devices,
}

impl VmPlan {
    pub fn mac(&self) -> MacAddress {
        match self.network {
            NetworkPlan::Nat { mac } => mac,
        }
    }

    pub fn saved_state_key(&self) -> SavedStateKey {
        SavedStateKey {
            cpu_count: self.cpu_count,
            memory_bytes: self.memory_bytes,
            hardware_model: self.hardware_model.clone(),
            machine_identifier: self.machine_identifier.clone(),
            mac_address: self.mac(),
            config_disk: self.config_disk.is_some(),
            devices: self.devices,
        }
    }

    /// Refuses a restore whose saved configuration differs from this plan (the fast path must
    /// never change CPU, memory, devices or identity; fall back to a cold boot instead).
    pub fn check_restore_compatible(&self, saved: &SavedStateKey) -> Result<(), PlanError> {
        let planned = self.saved_state_key();
        let mismatch = |field: &'static str, saved: String, planned: String| {
            Err(PlanError::RestoreMismatch {
                field,
                saved,
                planned,
            })
        };
        if saved.cpu_count != planned.cpu_count {
            return mismatch(
                "cpuCount",
                saved.cpu_count.to_string(),
                planned.cpu_count.to_string(),
            );
        }
        if saved.memory_bytes != planned.memory_bytes {
            return mismatch(
                "memoryBytes",
                saved.memory_bytes.to_string(),
                planned.memory_bytes.to_string(),
            );
        }
        if saved.hardware_model != planned.hardware_model {
            return mismatch(
                "hardwareModel",
                "another model".into(),
                "this template's".into(),
            );
        }
        if saved.machine_identifier != planned.machine_identifier {
            return mismatch("machineIdentifier", "the slot's".into(), "another".into());
        }
        if saved.mac_address != planned.mac_address {
            return mismatch(
                "macAddress",
                saved.mac_address.to_string(),
                planned.mac_address.to_string(),
            );
        }
        if saved.config_disk != planned.config_disk {
            return mismatch(
                "configDisk",
                saved.config_disk.to_string(),
                planned.config_disk.to_string(),
            );
        }
        if saved.devices != planned.devices {
            return mismatch(
                "devices",
                format!("{:?}", saved.devices),
                format!("{:?}", planned.devices),
            );
        }
        if !self.saveable {
            return mismatch("saveable", "true".into(), "false".into());
        }
        Ok(())
    }

    /// Checks that the files the VM opens exist and are regular files (symlinks refused: a
    /// bundle never contains any, and following one could attach a disk from elsewhere).
    pub fn check_files(&self) -> Result<(), PlanError> {
        let mut files = vec![
            ("the boot disk", &self.boot_disk),
            ("the auxiliary storage", &self.auxiliary_storage),
        ];
        if let Some(config) = &self.config_disk {
            files.push(("the config disk", config));
        }
        for (what, path) in files {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_file() => {}
                Ok(_) => {
                    return Err(PlanError::MissingFile {
                        what,
                        path: path.clone(),
                        source: None,
                    })
                }
                Err(source) => {
                    return Err(PlanError::MissingFile {
                        what,
                        path: path.clone(),
                        source: Some(source),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::limits::tests::apple_silicon_like;

    pub(crate) fn request(dir: &Path) -> PlanRequest {
        PlanRequest {
            vcpus: 4,
            memory_mib: 8192,
            disk: dir.join(DISK_FILE),
            auxiliary_storage: dir.join(AUXILIARY_STORAGE_FILE),
            hardware_model: HardwareModel::from_bytes(b"model".to_vec()).expect("model"),
            machine_identifier: VzMachineIdentifier::from_bytes(b"ident".to_vec()).expect("id"),
            mac: MacAddress::derive(7),
            config_disk: Some(dir.join("config.img")),
            purpose: VmPurpose::Runner,
            host_macos: MacosVersion::new(26, 0, 0),
            display: Some(Display::default()),
            disk_sync: DiskSync::Full,
        }
    }

    #[test]
    fn a_request_that_fits_is_planned_unchanged_with_all_devices() {
        let plan = build(request(Path::new("/b")), &apple_silicon_like(10, 32)).expect("plan");
        assert_eq!(plan.cpu_count, 4);
        assert_eq!(plan.memory_bytes, 8192 * MIB);
        assert!(plan.adjustments.is_empty());
        assert_eq!(plan.boot_disk, Path::new("/b/Disk.img"));
        assert_eq!(
            plan.config_disk.as_deref(),
            Some(Path::new("/b/config.img"))
        );
        assert_eq!(plan.mac(), MacAddress::derive(7));
        assert_eq!(
            plan.devices,
            Devices::save_compatible(Some(Display::default()))
        );
        assert!(plan.saveable);
    }

    #[test]
    fn device_lists_per_purpose_and_warm_or_cold() {
        let limits = apple_silicon_like(10, 32);
        let cold = build(request(Path::new("/cold")), &limits).expect("cold runner");
        let mut slot_request = request(Path::new("/slot"));
        slot_request.purpose = VmPurpose::WarmSlot;
        let slot = build(slot_request, &limits).expect("warm slot");
        assert_eq!(cold.devices, slot.devices, "one list for warm and cold");
        assert!(!cold.devices.entropy && cold.devices.vsock);
        assert!(cold.saveable && slot.saveable);
        // The restore of the slot into a runner plans the same devices.
        cold.check_restore_compatible(&slot.saved_state_key())
            .expect("a cold runner's shape restores the slot");

        let mut install = request(Path::new("/install"));
        install.purpose = VmPurpose::Install;
        install.config_disk = None;
        let install = build(install, &limits).expect("install VM");
        assert!(install.devices.entropy && !install.saveable);

        // A macOS 13 host has no Saved State: its runners are not saveable (USB keyboard),
        // and a warm slot there is impossible to plan.
        let mut old = request(Path::new("/old"));
        old.host_macos = MacosVersion::new(13, 6, 0);
        let old_runner = build(old.clone(), &limits).expect("cold runner on 13");
        assert!(!old_runner.saveable);
        old.purpose = VmPurpose::WarmSlot;
        let error = build(old, &limits).expect_err("a warm VM with a USB keyboard");
        assert!(matches!(error, PlanError::NotSaveable { .. }), "{error}");
        // Nor can a plan that is not saveable be restored.
        let error = old_runner
            .check_restore_compatible(&slot.saved_state_key())
            .expect_err("not saveable");
        assert!(error.to_string().contains("devices"), "{error}");
    }

    #[test]
    fn a_save_incompatible_device_is_impossible_in_a_warm_plan() {
        // Every way a request can be made for a warm slot yields save-compatible devices, or
        // no plan at all.
        let limits = apple_silicon_like(10, 32);
        for major in [13, 14, 15, 26] {
            for display in [None, Some(Display::default())] {
                let mut r = request(Path::new("/s"));
                r.purpose = VmPurpose::WarmSlot;
                r.host_macos = MacosVersion::new(major, 0, 0);
                r.display = display;
                if let Ok(plan) = build(r, &limits) {
                    plan.devices
                        .check_save_compatible()
                        .expect("save-compatible");
                    assert!(plan.saveable);
                }
            }
        }
    }

    #[test]
    fn sizes_are_clamped_to_host_and_framework_and_reported() {
        let mut big = request(Path::new("/b"));
        big.vcpus = 64;
        big.memory_mib = 64 * 1024;
        let plan = build(big, &apple_silicon_like(8, 16)).expect("plan");
        assert_eq!(plan.cpu_count, 7, "one core stays with the host");
        assert_eq!(
            plan.memory_bytes,
            14 * 1024 * MIB,
            "2 GiB stay with the host"
        );
        assert_eq!(plan.adjustments.len(), 2);
        assert_eq!(plan.adjustments[0].requested, 64);
        assert_eq!(plan.adjustments[0].granted, 7);

        let mut tiny = request(Path::new("/b"));
        tiny.memory_mib = 16;
        let mut limits = apple_silicon_like(8, 16);
        limits.framework.min_cpus = 2;
        tiny.vcpus = 1;
        let plan = build(tiny, &limits).expect("plan");
        assert_eq!(plan.cpu_count, 2);
        assert_eq!(plan.memory_bytes, 128 * MIB);
        assert!(plan
            .adjustments
            .iter()
            .all(|a| a.reason.contains("minimum")));
    }

    #[test]
    fn invalid_requests_are_typed_errors() {
        let limits = apple_silicon_like(8, 16);
        let dir = Path::new("/b");
        type Change = Box<dyn Fn(&mut PlanRequest)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.vcpus = 0), "vcpus must be above zero"),
            (Box::new(|r| r.memory_mib = 0), "memory_mib"),
            (Box::new(|r| r.disk = "Disk.img".into()), "must be absolute"),
            (
                Box::new(|r| r.config_disk = Some(r.disk.clone())),
                "are the same file",
            ),
            (
                Box::new(|r| r.mac = "01:00:5e:00:00:01".parse().expect("mac")),
                "locally administered",
            ),
            (
                Box::new(|r| r.mac = "a8:20:66:00:00:01".parse().expect("mac")),
                "locally administered",
            ),
            (
                Box::new(|r| {
                    r.display = Some(Display {
                        width_px: 0,
                        ..Display::default()
                    })
                }),
                "out of range",
            ),
        ];
        for (change, needle) in cases {
            let mut r = request(dir);
            change(&mut r);
            let error = build(r, &limits).expect_err(needle).to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
        let too_small = apple_silicon_like(1, 16);
        assert!(matches!(
            build(request(dir), &too_small),
            Err(PlanError::Limits(_))
        ));
    }

    #[test]
    fn runner_requests_take_identity_from_the_bundle() {
        let identity = MachineIdentifierFile {
            ecid: 0xfeed,
            vz_machine_identifier: Some(
                VzMachineIdentifier::from_bytes(b"ident".to_vec()).expect("id"),
            ),
        };
        let model = HardwareModel::from_bytes(b"model".to_vec()).expect("model");
        let r = PlanRequest::for_runner(
            Path::new("/r/x.bundle"),
            2,
            4096,
            &identity,
            model.clone(),
            None,
            MacosVersion::new(26, 0, 0),
        )
        .expect("request");
        assert_eq!(r.disk, Path::new("/r/x.bundle/Disk.img"));
        assert_eq!(
            r.auxiliary_storage,
            Path::new("/r/x.bundle/AuxiliaryStorage")
        );
        assert_eq!(r.mac, MacAddress::derive(0xfeed));
        let agent_only = MachineIdentifierFile {
            ecid: 1,
            vz_machine_identifier: None,
        };
        assert!(matches!(
            PlanRequest::for_runner(
                Path::new("/r"),
                2,
                4096,
                &agent_only,
                model,
                None,
                MacosVersion::new(26, 0, 0)
            ),
            Err(PlanError::MissingVzIdentifier)
        ));
    }

    #[test]
    fn restore_needs_the_identical_configuration() {
        let limits = apple_silicon_like(10, 32);
        let plan = build(request(Path::new("/slot")), &limits).expect("plan");
        let key = plan.saved_state_key();
        // Another runner's clone of the same slot: other paths, same configuration.
        let clone = build(request(Path::new("/runner")), &limits).expect("plan");
        clone.check_restore_compatible(&key).expect("compatible");

        let mut bigger = request(Path::new("/runner"));
        bigger.memory_mib = 4096;
        let error = build(bigger, &limits)
            .expect("plan")
            .check_restore_compatible(&key)
            .expect_err("memory differs");
        assert!(error.to_string().contains("memoryBytes"), "{error}");

        let mut other_mac = request(Path::new("/runner"));
        other_mac.mac = MacAddress::derive(8);
        assert!(build(other_mac, &limits)
            .expect("plan")
            .check_restore_compatible(&key)
            .is_err());

        let mut no_config = request(Path::new("/runner"));
        no_config.config_disk = None;
        let error = build(no_config, &limits)
            .expect("plan")
            .check_restore_compatible(&key)
            .expect_err("device layout differs");
        assert!(error.to_string().contains("configDisk"), "{error}");

        let json = serde_json::to_string(&key).expect("json");
        let back: SavedStateKey = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, key);
    }

    #[test]
    fn check_files_wants_regular_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = build(request(dir.path()), &apple_silicon_like(8, 16)).expect("plan");
        let error = plan.check_files().expect_err("nothing there yet");
        assert!(error.to_string().contains("boot disk"), "{error}");
        for name in [DISK_FILE, AUXILIARY_STORAGE_FILE] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join("config.img")).expect("a directory");
        let error = plan.check_files().expect_err("config disk is a directory");
        assert!(error.to_string().contains("config disk"), "{error}");
        std::fs::remove_dir(dir.path().join("config.img")).expect("rmdir");
        std::fs::write(dir.path().join("config.img"), b"x").expect("write");
        plan.check_files().expect("all present");
    }
}
