//! The `vz` backend: macOS guests under Virtualization.framework, on macOS hosts with Apple
//! silicon. Everywhere else [`VzBackend::new`] is a typed [`HypervisorError::Unsupported`].
//!
//! Per runner: the bundle's cloned `Disk.img`, `AuxiliaryStorage` and `HardwareModel.json`
//! (a vz template lists all three in `diskFiles`), a machine identifier by the template's
//! `machineIdentity` policy (fresh from the framework by default, or the template's own)
//! written into the bundle's `MachineIdentifier.json`, the MAC derived from the agent's
//! `ecid`, NAT networking, the config disk read-only, and the one save-compatible device list
//! (vsock, display, Mac keyboard and trackpad, no entropy: `shoes_vz_vz::devices`). The
//! guest's address comes from bootpd's lease file (by MAC, never an expired lease); SSH goes to
//! port 22 of that address. VMs live inside the agent process (the framework's XPC service ends
//! with its client), so nothing can outlive the agent.
//!
//! Teardown: a macOS guest answers `requestStop` with a "shut down?" dialog (tart PR #842,
//! tart#582), so the backend stops the VM at once (`stop`); a runner's disk is thrown away.
//!
//! The host's private channel to the guest's runner-agent is vsock ([`vsock`]): the identity
//! refresh of a restored VM goes there, never to a network address.
//!
//! Saved State warm slots (`vz.warm_slots = true`, macOS 14+, see [`warm`]): a runner of a
//! warmed template takes a free slot, restores the slot's state with the slot's disk clone and
//! identity, and is refreshed to its own identity by the agent (`GuestEndpoint.restored`); a
//! failed restore boots cold (counted in `restore_fell_back`). `shoes-vz template warm-vz`
//! makes the slots ([`warm_template`]).
//!
//! # Layout
//! - `mod.rs`: the plain-Rust parts, compiled and unit-tested everywhere: configuration checks,
//!   capacity cap, error mapping, the plan of a runner's VM, bundle preparation, the lease wait,
//!   the exit watcher, template checks.
//! - [`warm`]: warm slots in plain Rust: their directory, allocation, restore plans, publishing.
//! - [`vsock`]: HTTP to the guest's runner-agent over a vsock stream (the guest API channel).
//! - `backend`: [`VzBackend`] on `shoes_vz_vz::ffi` (macOS, or type-checked with the
//!   `vz-typecheck` feature); `warming`: [`warm_template`] (boot, pause, save per slot).
//!   `stub`: an uninhabited [`VzBackend`] and a typed Unsupported [`warm_template`] elsewhere.

pub mod vsock;
pub mod warm;

#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
mod backend;
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
mod warming;
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
pub use backend::VzBackend;
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
pub use warming::warm_template;

#[cfg(not(any(target_os = "macos", feature = "vz-typecheck")))]
mod stub;
#[cfg(not(any(target_os = "macos", feature = "vz-typecheck")))]
pub use stub::{warm_template, VzBackend};

use super::{HypervisorError, VmEvent, VmSpec};
use crate::config::{Capacity, VzConfig, VzDiskSync};
use shoes_vz_model::RunnerId;
use shoes_vz_vz::hardware::{HardwareModel, MachineIdentifierFile};
use shoes_vz_vz::leases::LeaseFilter;
use shoes_vz_vz::limits::{HostReserve, Limits, MIB};
use shoes_vz_vz::mac_address::MacAddress;
use shoes_vz_vz::plan::{self, DiskSync, PlanRequest, VmPlan};
use shoes_vz_vz::state::VmStatus;
use shoes_vz_vz::template::{CheckedTemplate, VzOptions};
use shoes_vz_vz::version::MacosVersion;
use shoes_vz_vz::VzError;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

pub const BACKEND: &str = "vz";

/// The host's address on vmnet's NAT bridge as guests see it (macOS's default
/// `Shared_Net_Address`). Set `notify.guest_url` when the host's vmnet uses another subnet.
pub const HOST_ADDRESS_FOR_GUESTS: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);

/// The SSH port of a guest on the NAT network (no forwards: the host reaches guests directly).
pub const GUEST_SSH_PORT: u16 = 22;

/// Lease-file reads are cheap, but never spin.
const MIN_LEASE_POLL: Duration = Duration::from_millis(100);

/// The error for every host that is not macOS on Apple silicon.
pub fn unsupported_here() -> HypervisorError {
    HypervisorError::Unsupported {
        backend: BACKEND,
        what: "this host: the vz backend needs macOS on Apple Silicon; use qemu or test here",
    }
}

/// Refuses settings the backend cannot honour, before anything starts.
pub fn check_config(config: &VzConfig) -> Result<(), HypervisorError> {
    if config.start_timeout.is_zero() {
        return Err(HypervisorError::Unavailable {
            backend: BACKEND,
            reason:
                "vz.start_timeout is zero; give the framework time to start a VM (e.g. \"60s\")"
                    .into(),
        });
    }
    Ok(())
}

/// Caps `max_runners` at Apple's two macOS guests per host, with a warning when lowered.
pub fn cap_capacity(capacity: &mut Capacity) {
    let capped = shoes_vz_vz::limits::cap_capacity(capacity.max_runners);
    if capped < capacity.max_runners {
        tracing::warn!(
            requested = capacity.max_runners,
            capped,
            "capacity.max_runners lowered: Virtualization.framework runs at most 2 macOS guests per host"
        );
        capacity.max_runners = capped;
    }
}

pub fn host_reserve(config: &VzConfig) -> HostReserve {
    HostReserve {
        cpus: config.reserve_cpus,
        memory_bytes: config.reserve_memory_mib.saturating_mul(MIB),
    }
}

pub fn disk_sync(sync: VzDiskSync) -> DiskSync {
    match sync {
        VzDiskSync::Full => DiskSync::Full,
        VzDiskSync::Fsync => DiskSync::Fsync,
        VzDiskSync::None => DiskSync::None,
    }
}

/// A framework error while setting up the host (probe, version, templates).
pub fn host_error(error: VzError) -> HypervisorError {
    match error {
        VzError::Unsupported { .. } => {
            tracing::error!(error = %crate::error_chain(&error), "Virtualization.framework cannot run VMs here");
            unsupported_here()
        }
        other => HypervisorError::Unavailable {
            backend: BACKEND,
            reason: crate::error_chain(&other),
        },
    }
}

/// A framework error for one runner's VM. The message of the 2-VM limit says what to do.
pub fn runner_error(runner_id: &RunnerId, error: VzError) -> HypervisorError {
    if matches!(error, VzError::VmLimitExceeded { .. }) {
        tracing::error!(runner = %runner_id, "Virtualization.framework refused another macOS VM; if fewer than two run, its count is stale: reboot the host");
    }
    HypervisorError::Failed {
        runner_id: runner_id.clone(),
        source: Box::new(error),
    }
}

/// Readies a runner bundle's cloned files for the VM and reads the hardware model cloned with
/// them. Blocking (small file operations).
pub fn prepare_bundle(bundle_dir: &Path) -> Result<HardwareModel, VzError> {
    // APFS clones keep the template's read-only mode, and the VM writes both disks.
    shoes_vz_vz::template::make_bundle_writable(bundle_dir)?;
    Ok(shoes_vz_vz::hardware::read_hardware_model(bundle_dir)?)
}

/// What the backend knows of its host: the clamping limits and the macOS version (devices
/// and Saved State depend on it).
#[derive(Debug, Clone, Copy)]
pub struct HostContext {
    pub limits: Limits,
    pub macos: MacosVersion,
}

/// The plan of `spec`'s VM: bundle files, the runner's identity, the template's display, sizes
/// clamped into the host's limits (changes are logged).
pub fn plan_for(
    spec: &VmSpec,
    identity: &MachineIdentifierFile,
    hardware_model: HardwareModel,
    host: &HostContext,
    config: &VzConfig,
    options: &VzOptions,
) -> Result<VmPlan, HypervisorError> {
    let failed = |error: plan::PlanError| runner_error(&spec.runner_id, VzError::Plan(error));
    let mut request = PlanRequest::for_runner(
        &spec.bundle_dir,
        spec.vcpus,
        spec.memory_mib,
        identity,
        hardware_model,
        spec.config_disk.clone(),
        host.macos,
    )
    .map_err(failed)?;
    request.disk_sync = disk_sync(config.disk_sync);
    request.display = options.display;
    let plan = plan::build(request, &host.limits).map_err(failed)?;
    for change in &plan.adjustments {
        tracing::warn!(runner = %spec.runner_id, resource = change.resource, requested = change.requested, granted = change.granted, reason = change.reason, "the VM gets another size than requested");
    }
    Ok(plan)
}

/// Refuses a template this host cannot serve: an ASIF disk below macOS 26.
pub fn check_template_on_host(
    template: &CheckedTemplate,
    host: MacosVersion,
) -> Result<(), HypervisorError> {
    template
        .options
        .disk_format
        .check_host(host)
        .map_err(|error| HypervisorError::Unavailable {
            backend: BACKEND,
            reason: format!(
                "template {} ({}): {error}",
                template.metadata.name,
                template.dir.display()
            ),
        })
}

/// Waits until bootpd has leased an address to `mac`: reads `leases` every `interval` until
/// `timeout`, and gives up early when the VM stops. Expired leases never count; for a restored
/// VM (`renewed_after`: the MAC's latest expiry before the restore) only a lease granted or
/// renewed after the restore does (`shoes_vz_vz::leases`).
pub async fn wait_for_lease(
    runner_id: &RunnerId,
    leases: &Path,
    mac: MacAddress,
    timeout: Duration,
    interval: Duration,
    renewed_after: Option<u64>,
    mut status: watch::Receiver<VmStatus>,
) -> Result<Ipv4Addr, HypervisorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let interval = interval.max(MIN_LEASE_POLL);
    loop {
        let stopped = stopped_detail(&status.borrow_and_update());
        if let Some(detail) = stopped {
            return Err(HypervisorError::Exited {
                runner_id: runner_id.clone(),
                detail,
            });
        }
        let filter = LeaseFilter {
            now: shoes_vz_vz::leases::unix_now(),
            renewed_after,
        };
        match shoes_vz_vz::leases::lookup(leases, mac, filter) {
            Ok(Some(ip)) => return Ok(ip),
            Ok(None) => {}
            Err(source) => {
                return Err(HypervisorError::Io {
                    path: leases.to_path_buf(),
                    source,
                })
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(HypervisorError::Timeout {
                runner_id: runner_id.clone(),
                what: "get a DHCP lease for its MAC (vz.dhcp_leases)",
                after: timeout,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(now + interval)) => {}
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(HypervisorError::Exited {
                        runner_id: runner_id.clone(),
                        detail: "the VM is gone".into(),
                    });
                }
            }
        }
    }
}

fn stopped_detail(status: &VmStatus) -> Option<String> {
    if !status.is_stopped() {
        return None;
    }
    Some(
        status
            .exit_detail()
            .unwrap_or_else(|| "the VM was stopped".to_string()),
    )
}

/// Reports the VM's end as [`VmEvent::Exited`] when the agent did not ask for it (guest
/// shutdown, framework error). Ends when the VM stops or its handle is dropped; the backend
/// aborts it on `stop`.
pub async fn watch_exit(
    runner_id: RunnerId,
    mut status: watch::Receiver<VmStatus>,
    events: broadcast::Sender<VmEvent>,
) {
    let stopped = status
        .wait_for(VmStatus::is_stopped)
        .await
        .map(|status| status.clone());
    // Err: the handle was dropped, so the agent ended the VM itself.
    if let Ok(status) = stopped {
        if let Some(detail) = status.exit_detail() {
            tracing::warn!(runner = %runner_id, detail = %detail, "the VM stopped on its own");
            let _ = events.send(VmEvent::Exited { runner_id, detail });
        }
    }
}

/// Checks every `vz` template under `templates_dir` with the framework-independent rules
/// (files present, regular, read-only, `diskFiles`, `HardwareModel.json`). Templates the
/// agent's own loader refuses are left to it (it stops the agent with its own message).
pub fn check_templates(templates_dir: &Path) -> Result<Vec<CheckedTemplate>, HypervisorError> {
    let Ok(entries) = std::fs::read_dir(templates_dir) else {
        return Ok(Vec::new());
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| dir.join(crate::template::METADATA_FILE).is_file())
        .collect();
    dirs.sort();
    let mut checked = Vec::new();
    for dir in dirs {
        let Ok(template) = crate::template::load(&dir) else {
            continue;
        };
        if template.metadata.backend != BACKEND {
            continue;
        }
        let template =
            shoes_vz_vz::template::check(&dir).map_err(|error| HypervisorError::Unavailable {
                backend: BACKEND,
                reason: crate::error_chain(&error),
            })?;
        checked.push(template);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests;
