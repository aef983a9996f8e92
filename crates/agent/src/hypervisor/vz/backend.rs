//! [`VzBackend`]: the [`Hypervisor`] on `shoes_vz_vz::ffi`. Built on macOS; off Apple only
//! type-checked (feature `vz-typecheck`, `.ci/vz-typecheck.sh`), where `new` fails with the
//! same typed Unsupported as the stub because the host probe does.

use super::warm::{
    self, clone_slot_into_bundle, plan_restore, restore_request, runner_template, saved_state_gate,
    RestoreSkip, SlotLease, UsableSlot, WarmSlots,
};
use super::{
    check_config, check_template_on_host, check_templates, disk_sync, host_error, host_reserve,
    plan_for, prepare_bundle, runner_error, vsock, wait_for_lease, watch_exit, HostContext,
    BACKEND, GUEST_SSH_PORT, HOST_ADDRESS_FOR_GUESTS,
};
use crate::config::{CloneMode, VzConfig};
use crate::guest_api::{ChannelError, ChannelRequest, ChannelResponse, GuestChannel};
use crate::hypervisor::{GuestEndpoint, Hypervisor, HypervisorError, VmEvent, VmSpec};
use shoes_vz_model::RunnerId;
use shoes_vz_vz::ffi::{self, VzVm};
use shoes_vz_vz::hardware::{self, HardwareModel, MachineIdentifierFile};
use shoes_vz_vz::identity;
use shoes_vz_vz::mac_address::MacAddress;
use shoes_vz_vz::plan::VmPlan;
use shoes_vz_vz::template::{CheckedTemplate, VzOptions};
use shoes_vz_vz::version;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub struct VzBackend {
    config: VzConfig,
    host: HostContext,
    /// The vz templates by name, for their `VzOptions.json` (display, identity policy).
    templates: HashMap<String, CheckedTemplate>,
    vms: Mutex<HashMap<RunnerId, Arc<Vm>>>,
    events: broadcast::Sender<VmEvent>,
    /// Saved State warm slots (`vz.warm_slots = true`, macOS 14+).
    warm: Option<Arc<Mutex<WarmSlots>>>,
    restore_fallbacks: AtomicU64,
}

struct Vm {
    vm: VzVm,
    mac: MacAddress,
    /// Restored: the slot MAC's latest lease expiry before the restore. Only a lease renewed
    /// after it gives the guest's address (the slot's old one may be another guest's by now).
    lease_baseline: Option<u64>,
    /// The plan has a vsock device: the guest API channel.
    vsock: bool,
    /// Restored from a warm slot: the slot's runner-agent token authorizes its `/refresh`.
    restored_token: Option<PathBuf>,
    /// A restore was tried and failed; this VM booted cold.
    fell_back: bool,
    /// Reports an unexpected stop; aborted when the agent stops the VM.
    watcher: JoinHandle<()>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl VzBackend {
    /// Probes the host (macOS version, Apple silicon, limits) and checks the vz templates under
    /// `templates_dir`, including that this host's macOS supports their hardware models.
    pub fn new(config: VzConfig, templates_dir: &Path) -> Result<VzBackend, HypervisorError> {
        let host = shoes_vz_vz::probe().map_err(host_error)?;
        host.check_macos_guests().map_err(host_error)?;
        check_config(&config)?;
        let limits = host.limits(host_reserve(&config));
        let host_context = HostContext {
            limits,
            macos: host.macos,
        };
        let bounds = limits
            .guest_bounds()
            .map_err(|error| HypervisorError::Unavailable {
                backend: BACKEND,
                reason: error.to_string(),
            })?;
        if version::below_design_target(host.macos) {
            tracing::warn!(macos = %host.macos, target = %version::DESIGN_TARGET, "this host's macOS is older than the release shoes-vz is tuned for");
        }
        let templates = check_templates(templates_dir)?;
        for template in &templates {
            check_template_on_host(template, host.macos)?;
            let supported =
                ffi::hardware_model_supported(&template.hardware_model).map_err(host_error)?;
            if !supported {
                return Err(HypervisorError::Unavailable {
                    backend: BACKEND,
                    reason: format!(
                        "template {} ({}) needs a newer macOS: this host's macOS {} does not support its hardware model; update the host or remove the template",
                        template.metadata.name,
                        template.dir.display(),
                        host.macos
                    ),
                });
            }
        }
        tracing::info!(
            macos = %host.macos,
            host_cpus = host.resources.cpus,
            host_memory_mib = host.resources.memory_bytes >> 20,
            guest_max_cpus = bounds.max_cpus,
            guest_max_memory_mib = bounds.max_memory_mib,
            "vz backend ready"
        );
        let warm = if config.warm_slots {
            saved_state_gate(host.macos)?;
            let slots = WarmSlots::load(
                templates_dir,
                templates.iter().map(|t| {
                    (
                        t.metadata.name.as_str(),
                        t.metadata.version.as_str(),
                        t.options.machine_identity,
                    )
                }),
                host.macos,
            )
            .map_err(|error| HypervisorError::Unavailable {
                backend: BACKEND,
                reason: crate::error_chain(&error),
            })?;
            tracing::info!(
                slots = slots.count(),
                skipped_other_host = slots.skipped_other_host(),
                "warm slots loaded; runners of warmed templates restore their Saved State"
            );
            if slots.skipped_other_host() > 0 {
                tracing::warn!(
                    skipped = slots.skipped_other_host(),
                    macos = %host.macos,
                    "warm slots saved on another macOS version are skipped; warm them again (shoes-vz template warm-vz)"
                );
            }
            Some(Arc::new(Mutex::new(slots)))
        } else {
            None
        };
        let (events, _) = broadcast::channel(256);
        let templates = templates
            .into_iter()
            .map(|t| (t.metadata.name.clone(), t))
            .collect();
        Ok(VzBackend {
            config,
            host: host_context,
            templates,
            vms: Mutex::new(HashMap::new()),
            events,
            warm,
            restore_fallbacks: AtomicU64::new(0),
        })
    }

    /// How many restores failed and fell back to a cold boot.
    pub fn restore_fallbacks(&self) -> u64 {
        self.restore_fallbacks.load(Ordering::Relaxed)
    }

    /// The `VzOptions.json` of the runner's template (the defaults if unknown).
    fn options_for(&self, spec: &VmSpec) -> VzOptions {
        runner_template(&spec.bundle_dir)
            .and_then(|(name, _)| self.templates.get(&name))
            .map(|t| t.options.clone())
            .unwrap_or_default()
    }

    /// A free warm slot of the runner's template, when warm slots are on.
    fn lease_slot(&self, spec: &VmSpec) -> Option<SlotLease> {
        let slots = self.warm.as_ref()?;
        let (template, version) = runner_template(&spec.bundle_dir)?;
        SlotLease::allocate(slots, &template, &version, spec.runner_id.as_str())
    }

    /// Restores `slot` into a new VM for `spec`: the slot's disk clones and identity. Returns
    /// the slot MAC's lease baseline too (read just before the restore).
    async fn restore(
        &self,
        spec: &VmSpec,
        slot: &UsableSlot,
        hardware_model: HardwareModel,
        options: &VzOptions,
    ) -> Result<(VzVm, VmPlan, u64), RestoreAttempt> {
        let runner_id = &spec.runner_id;
        let request = restore_request(
            spec,
            slot,
            hardware_model,
            disk_sync(self.config.disk_sync),
            self.host.macos,
            options,
        );
        let plan =
            plan_restore(request, slot, &self.host.limits).map_err(RestoreAttempt::Skipped)?;
        let files = slot.files.clone();
        let bundle_dir = spec.bundle_dir.clone();
        tokio::task::spawn_blocking(move || {
            clone_slot_into_bundle(&files, &bundle_dir, CloneMode::Reflink)
        })
        .await
        .map_err(|error| {
            RestoreAttempt::Failed(HypervisorError::Failed {
                runner_id: runner_id.clone(),
                source: Box::new(error),
            })
        })?
        .map_err(RestoreAttempt::Failed)?;
        let failed = |e| RestoreAttempt::Failed(runner_error(runner_id, e));
        let baseline = shoes_vz_vz::leases::read(&self.config.dhcp_leases)
            .map(|leases| shoes_vz_vz::leases::baseline(&leases, plan.mac()))
            .map_err(|source| {
                RestoreAttempt::Failed(HypervisorError::Io {
                    path: self.config.dhcp_leases.clone(),
                    source,
                })
            })?;
        let vm = VzVm::create(&plan, runner_id.as_str())
            .await
            .map_err(failed)?;
        if let Err(error) = vm
            .restore_state(&slot.files.state, self.config.start_timeout)
            .await
        {
            // The cold fallback must not start before this VM is off the framework's 2-VM
            // count: stop and release it, and wait for both.
            if let Err(release) = vm.release(ffi::vm::QUICK_TIMEOUT).await {
                tracing::warn!(runner = %runner_id, error = %crate::error_chain(&release), "the failed restore's VM did not release cleanly");
            }
            return Err(failed(error));
        }
        Ok((vm, plan, baseline))
    }

    /// Boots `spec`'s VM from its golden disk clones with the runner's own MAC and the
    /// identifier the template's `machineIdentity` policy gives it.
    async fn boot_cold(
        &self,
        spec: &VmSpec,
        hardware_model: HardwareModel,
        options: &VzOptions,
    ) -> Result<(VzVm, VmPlan), HypervisorError> {
        let runner_id = &spec.runner_id;
        let ecid = spec.machine_identifier.ecid;
        if let Some(slots) = &self.warm {
            warm::lock(slots)
                .check_cold_mac(MacAddress::derive(ecid))
                .map_err(|error| HypervisorError::Failed {
                    runner_id: runner_id.clone(),
                    source: Box::new(error),
                })?;
        }
        let bundle_dir = spec.bundle_dir.clone();
        let policy = options.machine_identity;
        let template_identifier = options.machine_identifier.clone();
        let id = runner_id.clone();
        // Fresh from the framework (per-runner) or the template's, kept beside the agent's ecid.
        let identity = tokio::task::spawn_blocking(move || {
            let chosen = identity::choose(
                policy,
                template_identifier.as_ref(),
                ffi::new_machine_identifier,
            )
            .map_err(|e| HypervisorError::Failed {
                runner_id: id,
                source: Box::new(e),
            })?;
            let file = MachineIdentifierFile {
                ecid,
                vz_machine_identifier: Some(chosen),
            };
            hardware::write_machine_identifier(&bundle_dir, &file).map_err(|source| {
                HypervisorError::Io {
                    path: bundle_dir.join(hardware::MACHINE_IDENTIFIER_FILE),
                    source: std::io::Error::other(crate::error_chain(&source)),
                }
            })?;
            Ok::<_, HypervisorError>(file)
        })
        .await
        .map_err(|error| HypervisorError::Failed {
            runner_id: runner_id.clone(),
            source: Box::new(error),
        })??;
        let plan = plan_for(
            spec,
            &identity,
            hardware_model,
            &self.host,
            &self.config,
            options,
        )?;
        // On any error below, dropping `vm` stops and releases it.
        let vm = VzVm::create(&plan, runner_id.as_str())
            .await
            .map_err(|e| runner_error(runner_id, e))?;
        vm.start(self.config.start_timeout)
            .await
            .map_err(|e| runner_error(runner_id, e))?;
        Ok((vm, plan))
    }

    fn vms(&self) -> MutexGuard<'_, HashMap<RunnerId, Arc<Vm>>> {
        match self.vms.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn vm(&self, runner_id: &RunnerId) -> Result<Arc<Vm>, HypervisorError> {
        self.vms()
            .get(runner_id)
            .cloned()
            .ok_or_else(|| HypervisorError::UnknownVm(runner_id.clone()))
    }
}

#[async_trait::async_trait]
impl Hypervisor for VzBackend {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        let runner_id = &spec.runner_id;
        if self.vms().contains_key(runner_id) {
            return Err(HypervisorError::AlreadyRunning(runner_id.clone()));
        }
        if spec.linux_boot.is_some() {
            return Err(HypervisorError::Unsupported {
                backend: BACKEND,
                what: "templates with linuxBoot (macOS guests boot from their own disk)",
            });
        }
        let bundle_dir = spec.bundle_dir.clone();
        let hardware_model = tokio::task::spawn_blocking(move || prepare_bundle(&bundle_dir))
            .await
            .map_err(|error| HypervisorError::Failed {
                runner_id: runner_id.clone(),
                source: Box::new(error),
            })?
            .map_err(|e| runner_error(runner_id, e))?;

        let options = self.options_for(spec);
        let mut fell_back = false;
        let mut restored = None;
        if let Some(lease) = self.lease_slot(spec) {
            let slot = lease.slot.warm.slot;
            match self
                .restore(spec, &lease.slot, hardware_model.clone(), &options)
                .await
            {
                Ok((vm, plan, baseline)) => {
                    let token = lease.slot.files.guest_token.clone();
                    lease.keep();
                    tracing::info!(runner = %runner_id, %slot, "restored from a warm slot");
                    restored = Some((vm, plan, token, baseline));
                }
                Err(RestoreAttempt::Skipped(reason)) => {
                    tracing::info!(runner = %runner_id, %slot, reason = %crate::error_chain(&reason), "not restoring the warm slot; booting cold");
                }
                Err(RestoreAttempt::Failed(error)) => {
                    self.restore_fallbacks.fetch_add(1, Ordering::Relaxed);
                    fell_back = true;
                    tracing::warn!(runner = %runner_id, %slot, error = %crate::error_chain(&error), "cannot restore the warm slot; booting cold");
                }
            }
            // `lease` is dropped here unless kept: a skipped or failed restore frees the slot.
        }
        let (vm, plan, restored_token, lease_baseline) = match restored {
            Some((vm, plan, token, baseline)) => (vm, plan, Some(token), Some(baseline)),
            None => {
                let (vm, plan) = self.boot_cold(spec, hardware_model, &options).await?;
                (vm, plan, None, None)
            }
        };
        let status = vm.subscribe();
        let watcher = tokio::spawn(watch_exit(runner_id.clone(), status, self.events.clone()));
        tracing::info!(runner = %runner_id, cpus = plan.cpu_count, memory_mib = plan.memory_bytes >> 20, mac = %plan.mac(), restored = restored_token.is_some(), fell_back, "VM started");
        self.vms().insert(
            runner_id.clone(),
            Arc::new(Vm {
                vm,
                mac: plan.mac(),
                lease_baseline,
                vsock: plan.devices.vsock,
                restored_token,
                fell_back,
                watcher,
            }),
        );
        Ok(())
    }

    async fn guest_endpoint(
        &self,
        runner_id: &RunnerId,
        timeout: Duration,
    ) -> Result<GuestEndpoint, HypervisorError> {
        let vm = self.vm(runner_id)?;
        let ip = wait_for_lease(
            runner_id,
            &self.config.dhcp_leases,
            vm.mac,
            timeout,
            self.config.lease_poll_interval,
            vm.lease_baseline,
            vm.vm.subscribe(),
        )
        .await?;
        let ip = IpAddr::V4(ip);
        Ok(GuestEndpoint {
            ip_address: ip.to_string(),
            ssh_addr: SocketAddr::new(ip, GUEST_SSH_PORT),
            http_addr: Some(SocketAddr::new(
                ip,
                shoes_vz_guest_config::default_http_listen().port(),
            )),
            restored: vm.restored_token.is_some(),
            restore_fell_back: vm.fell_back,
        })
    }

    /// Stops the VM at once (`stop`, not `requestStop`): a macOS guest answers `requestStop`
    /// with a "shut down?" dialog (tart PR #842, tart#582; tart calls `stop` on SIGINT), so a
    /// graceful request would only hold one of the host's two VM slots for the whole grace
    /// period. The runner's disk is thrown away, so nothing is lost.
    async fn stop(&self, runner_id: &RunnerId, _graceful: Duration) -> Result<(), HypervisorError> {
        let vm = self.vms().remove(runner_id);
        let Some(vm) = vm else {
            self.release_slot(runner_id);
            return Ok(());
        };
        // A stop the agent asked for is not an exit to report.
        vm.watcher.abort();
        let stopping = std::time::Instant::now();
        // On an error it may still run with the slot's MAC: the slot stays held.
        vm.vm
            .force_stop(ffi::vm::QUICK_TIMEOUT)
            .await
            .map_err(|e| runner_error(runner_id, e))?;
        tracing::info!(runner = %runner_id, took = ?stopping.elapsed(), "VM stopped");
        self.release_slot(runner_id);
        Ok(())
    }

    async fn clean_leftover(&self, _bundle_dir: &Path) -> Result<(), HypervisorError> {
        // A VZ VM runs in the framework's XPC service of this process and ends with it: an
        // earlier agent's VMs died with that agent, so only the bundle (removed by the caller)
        // is left.
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }

    fn host_address_for_guests(&self) -> Option<IpAddr> {
        Some(IpAddr::V4(HOST_ADDRESS_FOR_GUESTS))
    }

    fn restored_guest_token_file(&self, runner_id: &RunnerId) -> Option<PathBuf> {
        self.vms().get(runner_id)?.restored_token.clone()
    }

    fn guest_channel(&self, runner_id: &RunnerId) -> Option<Arc<dyn GuestChannel>> {
        let vm = self.vms().get(runner_id)?.clone();
        vm.vsock
            .then(|| Arc::new(VsockChannel { vm }) as Arc<dyn GuestChannel>)
    }
}

/// The guest's runner-agent over vsock (port `shoes_vz_guest_config::VSOCK_PORT`): one
/// connection per request, opened through the VM's `VZVirtioSocketDevice`.
struct VsockChannel {
    vm: Arc<Vm>,
}

#[async_trait::async_trait]
impl GuestChannel for VsockChannel {
    async fn send(
        &self,
        request: ChannelRequest,
        timeout: Duration,
    ) -> Result<ChannelResponse, ChannelError> {
        let fd = self
            .vm
            .vm
            .connect_vsock(shoes_vz_guest_config::VSOCK_PORT, timeout)
            .await
            .map_err(|e| ChannelError::Connect(Box::new(e)))?;
        let stream = vsock::stream_from_fd(fd).map_err(|e| ChannelError::Connect(Box::new(e)))?;
        vsock::send(stream, request, timeout).await
    }
}

/// Why a runner that held a warm slot did not restore.
enum RestoreAttempt {
    /// Not restorable (another VM shape): a cold boot, not counted.
    Skipped(RestoreSkip),
    /// The restore failed: a cold boot, logged and counted as a fallback.
    Failed(HypervisorError),
}

impl VzBackend {
    /// Frees the warm slot `runner_id` held, once its VM has stopped.
    fn release_slot(&self, runner_id: &RunnerId) {
        if let Some(slots) = &self.warm {
            if let Some(slot) = warm::lock(slots).release(runner_id.as_str()) {
                tracing::info!(runner = %runner_id, %slot, "warm slot free again");
            }
        }
    }
}
