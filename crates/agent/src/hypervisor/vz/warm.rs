//! Saved State warm slots for the vz backend: where they live, which runner holds which, what
//! a restore boots from versus a cold fallback, and how a warmed slot is published. Plain Rust,
//! unit-tested everywhere; the framework calls are in `backend` (runners) and `warming`
//! (making slots).
//!
//! On disk, beside the template (`<templates_dir>/<name>-warm/`, no `TemplateMetadata.json`,
//! so template loaders skip it):
//!
//! ```text
//! <name>-warm/slot-<n>/        n = 0, 1 (Apple's two macOS VMs per host)
//!   Disk.img                   the disk as it was when the state was saved
//!   AuxiliaryStorage           the NVRAM as it was when the state was saved
//!   HardwareModel.json         the template's
//!   State.save                 the Saved State (paused VM, SSH up; mode 0400: it holds the
//!                              guest's memory, its token included)
//!   GuestToken                 the warm guest's runner-agent token (mode 0400, fresh at every
//!                              warming): authorizes
//!                              the /refresh that gives a restored VM its runner's identity
//!   WarmSlot.json              template, version, host macOS, the configuration key with the
//!                              slot's machine identifier and MAC
//! ```
//!
//! A restored runner clones the slot's `Disk.img` and `AuxiliaryStorage` copy-on-write into its
//! bundle as [`WARM_DISK_FILE`] and [`WARM_AUXILIARY_STORAGE_FILE`] and runs with the slot's
//! identity; the golden clones (`Disk.img`, `AuxiliaryStorage`) stay untouched for a cold
//! fallback with the runner's own identity.

use super::{HypervisorError, VmSpec, BACKEND};
use crate::config::CloneMode;
use shoes_vz_guest_config::{ApiToken, GuestConfig};
use shoes_vz_vz::devices::VmPurpose;
use shoes_vz_vz::hardware::{HardwareModel, HARDWARE_MODEL_FILE};
use shoes_vz_vz::identity::{self, MachineIdentityPolicy};
use shoes_vz_vz::mac_address::MacAddress;
use shoes_vz_vz::plan::{
    self, DiskSync, PlanRequest, VmPlan, AUXILIARY_STORAGE_FILE, DISK_FILE, SAVED_STATE_FILE,
};
use shoes_vz_vz::slots::{
    self, slot_dir, SlotError, SlotId, SlotIdentity, SlotPool, WarmSlot, WARM_SLOT_FILE,
};
use shoes_vz_vz::template::VzOptions;
use shoes_vz_vz::version::{self, HostFeature, MacosVersion};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub const WARM_DIR_SUFFIX: &str = "-warm";
pub const GUEST_TOKEN_FILE: &str = "GuestToken";
/// The slot's files in a restored runner's bundle (beside the untouched golden clones).
pub const WARM_DISK_FILE: &str = "Warm-Disk.img";
pub const WARM_AUXILIARY_STORAGE_FILE: &str = "Warm-AuxiliaryStorage";
/// The throwaway config disk of a VM being warmed (removed before the slot is published).
pub const WARMING_CONFIG_DISK: &str = "config.img";

/// What `shoes-vz template warm-vz` asks for.
#[derive(Debug, Clone)]
pub struct WarmRequest {
    pub templates_dir: PathBuf,
    /// The vz template's name (its metadata `name`).
    pub template: String,
    /// Runners must ask for the same sizes (after clamping) to restore.
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The slots to (re)warm, e.g. both.
    pub slots: Vec<SlotId>,
    /// VM start → SSH and the runner-agent answering.
    pub boot_timeout: std::time::Duration,
    pub config: crate::config::VzConfig,
}

/// One published slot.
#[derive(Debug, Clone)]
pub struct WarmedSlot {
    pub slot: SlotId,
    pub dir: PathBuf,
    pub mac: MacAddress,
    pub boot_to_ssh: std::time::Duration,
    pub save: std::time::Duration,
}

/// `<templates_dir>/<template name>-warm`: the warm slots of one template.
pub fn warm_root(templates_dir: &Path, template: &str) -> PathBuf {
    templates_dir.join(format!("{template}{WARM_DIR_SUFFIX}"))
}

/// Refuses Saved State on a host older than macOS 14 (typed Unsupported; the log has the
/// versions).
pub fn saved_state_gate(macos: MacosVersion) -> Result<(), HypervisorError> {
    version::require(HostFeature::SavedState, macos).map_err(|error| {
        tracing::error!(error = %error, "Saved State warm slots need macOS 14 or later");
        HypervisorError::Unsupported {
            backend: BACKEND,
            what: "Saved State warm slots on this macOS (they need macOS 14 or later); set \
                   vz.warm_slots = false or upgrade the host",
        }
    })
}

/// The files of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFiles {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub auxiliary_storage: PathBuf,
    pub hardware_model: PathBuf,
    pub state: PathBuf,
    pub guest_token: PathBuf,
    pub warm_slot: PathBuf,
}

impl SlotFiles {
    pub fn new(warm_root: &Path, slot: SlotId) -> SlotFiles {
        Self::in_dir(slot_dir(warm_root, slot))
    }

    fn in_dir(dir: PathBuf) -> SlotFiles {
        SlotFiles {
            disk: dir.join(DISK_FILE),
            auxiliary_storage: dir.join(AUXILIARY_STORAGE_FILE),
            hardware_model: dir.join(HARDWARE_MODEL_FILE),
            state: dir.join(SAVED_STATE_FILE),
            guest_token: dir.join(GUEST_TOKEN_FILE),
            warm_slot: dir.join(WARM_SLOT_FILE),
            dir,
        }
    }

    /// The first file a restore needs that is missing or not a regular file.
    pub fn missing(&self) -> Option<&Path> {
        [
            &self.disk,
            &self.auxiliary_storage,
            &self.hardware_model,
            &self.state,
            &self.guest_token,
            &self.warm_slot,
        ]
        .into_iter()
        .find(|path| !std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_file()))
        .map(PathBuf::as_path)
    }
}

/// A slot whose state a runner of its template may restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsableSlot {
    pub warm: WarmSlot,
    pub files: SlotFiles,
}

/// The slots under `warm_root`, by usability.
#[derive(Debug, Default)]
pub struct LoadedSlots {
    pub usable: Vec<UsableSlot>,
    /// Saved on another host macOS version (skipped: states can stop working after a host
    /// update); counted so the operator sees it.
    pub other_host: usize,
}

/// The slots under `warm_root` made from `template` `version` on this host's exact macOS
/// version, with all their files. Others are skipped with a log line (their runners boot
/// cold).
pub fn load_slots(
    warm_root: &Path,
    template: &str,
    template_version: &str,
    host: MacosVersion,
) -> LoadedSlots {
    let mut loaded = LoadedSlots::default();
    for slot in SlotId::all() {
        let files = SlotFiles::new(warm_root, slot);
        if !files.dir.exists() {
            continue;
        }
        let warm = match slots::read_warm_slot(warm_root, slot) {
            Ok(warm) => warm,
            Err(error) => {
                tracing::warn!(%slot, error = %crate::error_chain(&error), "warm slot unusable; its runners boot cold until it is warmed again");
                continue;
            }
        };
        if warm.template != template || warm.template_version != template_version {
            tracing::warn!(%slot, template, template_version, slot_template = %warm.template, slot_version = %warm.template_version, "warm slot was made from another template version; warm it again (shoes-vz template warm-vz)");
            continue;
        }
        if let Err(mismatch) = warm.check_host(host) {
            tracing::warn!(%slot, template, reason = %mismatch, "warm slot skipped");
            loaded.other_host += 1;
            continue;
        }
        if let Some(path) = files.missing() {
            tracing::warn!(%slot, path = %path.display(), "warm slot is missing a file; warm it again");
            continue;
        }
        loaded.usable.push(UsableSlot { warm, files });
    }
    loaded
}

struct TemplateSlots {
    version: String,
    pool: SlotPool,
    slots: Vec<UsableSlot>,
}

/// The warm slots of every template the agent serves, and which runner holds which.
#[derive(Default)]
pub struct WarmSlots {
    templates: BTreeMap<String, TemplateSlots>,
    other_host: usize,
}

impl WarmSlots {
    /// Loads the slots of each `(name, version, identity policy)` template from
    /// `<templates_dir>/<name>-warm`, skipping (and counting) those saved on another macOS.
    pub fn load<'a>(
        templates_dir: &Path,
        templates: impl IntoIterator<Item = (&'a str, &'a str, MachineIdentityPolicy)>,
        host: MacosVersion,
    ) -> Result<WarmSlots, SlotError> {
        let mut warm = WarmSlots::default();
        for (name, version, policy) in templates {
            let loaded = load_slots(&warm_root(templates_dir, name), name, version, host);
            warm.other_host += loaded.other_host;
            let slots = loaded.usable;
            if slots.is_empty() {
                continue;
            }
            let pool = SlotPool::new(
                slots.iter().map(|s| s.warm.identity()).collect(),
                identity::slots_may_share_identifier(policy),
            )?;
            warm.templates.insert(
                name.to_string(),
                TemplateSlots {
                    version: version.to_string(),
                    pool,
                    slots,
                },
            );
        }
        Ok(warm)
    }

    /// How many slots are usable, over all templates.
    pub fn count(&self) -> usize {
        self.templates.values().map(|t| t.slots.len()).sum()
    }

    /// How many slots were skipped because another host macOS version saved them.
    pub fn skipped_other_host(&self) -> usize {
        self.other_host
    }

    /// A free slot of `template` `version` for `runner`; `None` when it has none (not warmed,
    /// another version) or all are in use (the runner boots cold).
    pub fn allocate(&mut self, template: &str, version: &str, runner: &str) -> Option<UsableSlot> {
        let entry = self.templates.get_mut(template)?;
        if entry.version != version {
            return None;
        }
        let identity = match entry.pool.allocate(runner) {
            Ok(identity) => identity,
            Err(error) => {
                tracing::info!(runner, template, reason = %error, "no free warm slot; booting cold");
                return None;
            }
        };
        entry
            .slots
            .iter()
            .find(|s| s.warm.slot == identity.slot)
            .cloned()
    }

    /// Takes back whatever slot `runner` holds.
    pub fn release(&mut self, runner: &str) -> Option<SlotId> {
        self.templates
            .values_mut()
            .find_map(|t| t.pool.release_runner(runner))
    }

    pub fn holder(&self, template: &str, slot: SlotId) -> Option<&str> {
        self.templates.get(template)?.pool.holder(slot)
    }

    /// Refuses a cold runner's MAC when any slot owns it (two VMs must never share one).
    pub fn check_cold_mac(&self, mac: MacAddress) -> Result<(), SlotError> {
        self.templates
            .values()
            .try_for_each(|t| t.pool.check_cold_mac(mac))
    }

    /// Every slot's identity (for warming a new slot with an identity no other slot has).
    pub fn identities(&self) -> Vec<SlotIdentity> {
        self.templates
            .values()
            .flat_map(|t| t.slots.iter().map(|s| s.warm.identity()))
            .collect()
    }
}

pub fn lock(slots: &Mutex<WarmSlots>) -> MutexGuard<'_, WarmSlots> {
    match slots.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A slot held for one runner: released when dropped unless [`SlotLease::keep`] hands it to
/// the running VM (so every early return of a failed restore gives the slot back).
pub struct SlotLease {
    slots: Arc<Mutex<WarmSlots>>,
    runner: String,
    pub slot: UsableSlot,
    kept: bool,
}

impl SlotLease {
    pub fn allocate(
        slots: &Arc<Mutex<WarmSlots>>,
        template: &str,
        version: &str,
        runner: &str,
    ) -> Option<SlotLease> {
        let slot = lock(slots).allocate(template, version, runner)?;
        Some(SlotLease {
            slots: Arc::clone(slots),
            runner: runner.to_string(),
            slot,
            kept: false,
        })
    }

    /// The restore worked: the slot stays held until the runner's VM stops
    /// ([`WarmSlots::release`]).
    pub fn keep(mut self) -> SlotId {
        self.kept = true;
        self.slot.warm.slot
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.slots).release(&self.runner);
        }
    }
}

/// The template a runner's bundle was cloned from (`RuntimeMetadata.json`, written by the
/// agent before the VM starts): `(name, version)`.
pub fn runner_template(bundle_dir: &Path) -> Option<(String, String)> {
    let bytes = std::fs::read(bundle_dir.join(crate::bundle::RUNTIME_METADATA_FILE)).ok()?;
    let runtime: crate::bundle::RuntimeMetadata = serde_json::from_slice(&bytes).ok()?;
    Some((runtime.template, runtime.template_version))
}

/// The VM request of a restore from `slot`: the slot's disk clones in the bundle and the
/// slot's machine identifier and MAC (the saved configuration), the runner's sizes and config
/// disk, the template's display (the same device list as a cold runner's).
pub fn restore_request(
    spec: &VmSpec,
    slot: &UsableSlot,
    hardware_model: HardwareModel,
    disk_sync: DiskSync,
    host_macos: MacosVersion,
    options: &VzOptions,
) -> PlanRequest {
    PlanRequest {
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        disk: spec.bundle_dir.join(WARM_DISK_FILE),
        auxiliary_storage: spec.bundle_dir.join(WARM_AUXILIARY_STORAGE_FILE),
        hardware_model,
        machine_identifier: slot.warm.key.machine_identifier.clone(),
        mac: slot.warm.key.mac_address,
        config_disk: spec.config_disk.clone(),
        purpose: VmPurpose::Runner,
        host_macos,
        display: options.display,
        disk_sync,
    }
}

/// Why a runner holding a slot does not restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreSkip {
    /// The runner's VM differs from the saved one (sizes, devices, model): boot cold, not a
    /// failure (like the QEMU backend's shape check).
    #[error("the runner's VM differs from the slot's saved configuration")]
    Incompatible(#[source] plan::PlanError),
}

/// Plans the restore of `slot` and checks it against the saved configuration.
pub fn plan_restore(
    request: PlanRequest,
    slot: &UsableSlot,
    limits: &shoes_vz_vz::limits::Limits,
) -> Result<VmPlan, RestoreSkip> {
    let plan = plan::build(request, limits).map_err(RestoreSkip::Incompatible)?;
    plan.check_restore_compatible(&slot.warm.key)
        .map_err(RestoreSkip::Incompatible)?;
    Ok(plan)
}

/// Clones the slot's disk and NVRAM into the bundle under their warm names (copy-on-write
/// with `Reflink`) and makes them owner-writable (the slot's files are read-only). Blocking.
pub fn clone_slot_into_bundle(
    files: &SlotFiles,
    bundle_dir: &Path,
    mode: CloneMode,
) -> Result<(), HypervisorError> {
    for (source, name) in [
        (&files.disk, WARM_DISK_FILE),
        (&files.auxiliary_storage, WARM_AUXILIARY_STORAGE_FILE),
    ] {
        let target = bundle_dir.join(name);
        crate::bundle::clone_file(source, &target, mode).map_err(|error| HypervisorError::Io {
            path: target.clone(),
            source: std::io::Error::other(crate::error_chain(&error)),
        })?;
        set_mode(&target, 0o600)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HypervisorError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        HypervisorError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A MAC for a new slot: derived from a random id, never one another slot owns.
pub fn new_slot_mac(taken: &[SlotIdentity]) -> MacAddress {
    loop {
        let mac = MacAddress::derive(crate::bundle::MachineIdentifier::generate().ecid);
        if taken.iter().all(|identity| identity.mac != mac) {
            return mac;
        }
    }
}

/// `<warm_root>/.slot-<n>.staging`: where a slot is warmed before it is published.
pub fn staging_dir(warm_root: &Path, slot: SlotId) -> PathBuf {
    warm_root.join(format!(".{slot}.staging"))
}

/// A config disk for the VM being warmed, with keys nobody keeps: the warm guest only has to
/// start SSH. Its token (kept in the slot as [`GUEST_TOKEN_FILE`]) authorizes every restored
/// runner's `/refresh`.
pub fn throwaway_guest_config(
    ssh_user: &str,
    runner_dir: &str,
) -> Result<(GuestConfig, ApiToken), HypervisorError> {
    let broken = |what: &str, error: &dyn std::error::Error| HypervisorError::Unavailable {
        backend: BACKEND,
        reason: format!(
            "cannot make the warm guest's {what}: {}",
            crate::error_chain(error)
        ),
    };
    crate::runner::guest::throwaway_guest_config(
        &super::HOST_ADDRESS_FOR_GUESTS.to_string(),
        ssh_user,
        runner_dir,
    )
    .map_err(|e| broken("identity", &e))
}

/// Publishes a warmed slot: writes `WarmSlot.json` and the guest token (0400) into `staging`,
/// drops the throwaway config disk, makes the files read-only, then replaces
/// `<warm_root>/slot-<n>` with it. Blocking.
pub fn publish_slot(
    warm_root: &Path,
    staging: &Path,
    warm: &WarmSlot,
    guest_token: &ApiToken,
) -> Result<PathBuf, HypervisorError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HypervisorError::Io { path, source }
    };
    let token_path = staging.join(GUEST_TOKEN_FILE);
    std::fs::write(&token_path, guest_token.expose()).map_err(io(&token_path))?;
    set_mode(&token_path, 0o600)?;
    slots::write_warm_slot(staging, warm).map_err(|error| HypervisorError::Io {
        path: staging.join(WARM_SLOT_FILE),
        source: std::io::Error::other(crate::error_chain(&error)),
    })?;
    let config_disk = staging.join(WARMING_CONFIG_DISK);
    match std::fs::remove_file(&config_disk) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&config_disk)(e)),
    }
    let files = SlotFiles::in_dir(staging.to_path_buf());
    for (path, mode) in [
        (&files.disk, 0o444),
        (&files.auxiliary_storage, 0o444),
        (&files.hardware_model, 0o444),
        // The guest's memory, its token included: the agent's user alone reads it.
        (&files.state, 0o400),
        (&files.warm_slot, 0o444),
        (&files.guest_token, 0o400),
    ] {
        set_mode(path, mode)?;
    }
    let target = slot_dir(warm_root, warm.slot);
    let old = warm_root.join(format!(".{}.old", warm.slot));
    if old.exists() {
        remove_slot_dir(&old)?;
    }
    if target.exists() {
        std::fs::rename(&target, &old).map_err(io(&target))?;
    }
    std::fs::rename(staging, &target).map_err(io(staging))?;
    if old.exists() {
        remove_slot_dir(&old)?;
    }
    Ok(target)
}

/// Removes a slot or staging directory (read-only files inside a writable directory).
pub fn remove_slot_dir(dir: &Path) -> Result<(), HypervisorError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HypervisorError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
