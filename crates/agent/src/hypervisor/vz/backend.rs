//! [`VzBackend`]: the [`Hypervisor`] on `shoes_vz_vz::ffi`. Built on macOS; off Apple only
//! type-checked (feature `vz-typecheck`, `.ci/vz-typecheck.sh`), where `new` fails with the
//! same typed Unsupported as the stub because the host probe does.

use super::{
    check_config, check_templates, host_error, host_reserve, plan_for, prepare_bundle,
    runner_error, wait_for_lease, watch_exit, BACKEND, GUEST_SSH_PORT, HOST_ADDRESS_FOR_GUESTS,
};
use crate::config::VzConfig;
use crate::hypervisor::{GuestEndpoint, Hypervisor, HypervisorError, VmEvent, VmSpec};
use shoes_vz_model::RunnerId;
use shoes_vz_vz::ffi::{self, StopOutcome, VzVm};
use shoes_vz_vz::limits::Limits;
use shoes_vz_vz::mac_address::MacAddress;
use shoes_vz_vz::{version, VzError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub struct VzBackend {
    config: VzConfig,
    limits: Limits,
    vms: Mutex<HashMap<RunnerId, Arc<Vm>>>,
    events: broadcast::Sender<VmEvent>,
}

struct Vm {
    vm: VzVm,
    mac: MacAddress,
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
        let bounds = limits
            .guest_bounds()
            .map_err(|error| HypervisorError::Unavailable {
                backend: BACKEND,
                reason: error.to_string(),
            })?;
        if version::below_design_target(host.macos) {
            tracing::warn!(macos = %host.macos, target = %version::DESIGN_TARGET, "this host's macOS is older than the release shoes-vz is tuned for");
        }
        for template in check_templates(templates_dir)? {
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
        let (events, _) = broadcast::channel(256);
        Ok(VzBackend {
            config,
            limits,
            vms: Mutex::new(HashMap::new()),
            events,
        })
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
        let ecid = spec.machine_identifier.ecid;
        let prepared = tokio::task::spawn_blocking(move || {
            let hardware_model = prepare_bundle(&bundle_dir)?;
            // A framework-made identifier, fresh for this runner, kept beside the agent's ecid.
            let identity = ffi::assign_machine_identifier(&bundle_dir, ecid)?;
            Ok::<_, VzError>((hardware_model, identity))
        })
        .await
        .map_err(|error| HypervisorError::Failed {
            runner_id: runner_id.clone(),
            source: Box::new(error),
        })?;
        let (hardware_model, identity) = prepared.map_err(|e| runner_error(runner_id, e))?;
        let plan = plan_for(spec, &identity, hardware_model, &self.limits, &self.config)?;
        // On any error below, dropping `vm` stops and releases it.
        let vm = VzVm::create(&plan, runner_id.as_str())
            .await
            .map_err(|e| runner_error(runner_id, e))?;
        let status = vm.subscribe();
        vm.start(self.config.start_timeout)
            .await
            .map_err(|e| runner_error(runner_id, e))?;
        let watcher = tokio::spawn(watch_exit(runner_id.clone(), status, self.events.clone()));
        tracing::info!(runner = %runner_id, cpus = plan.cpu_count, memory_mib = plan.memory_bytes >> 20, mac = %plan.mac(), "VM started");
        self.vms().insert(
            runner_id.clone(),
            Arc::new(Vm {
                vm,
                mac: plan.mac(),
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
            restored: false,
            restore_fell_back: false,
        })
    }

    async fn stop(&self, runner_id: &RunnerId, timeout: Duration) -> Result<(), HypervisorError> {
        let vm = self.vms().remove(runner_id);
        let Some(vm) = vm else {
            return Ok(());
        };
        // A stop the agent asked for is not an exit to report.
        vm.watcher.abort();
        match vm.vm.stop(timeout).await {
            Ok(StopOutcome::Forced) => {
                tracing::warn!(runner = %runner_id, ?timeout, "the guest did not shut down in time; stopped it forcefully")
            }
            Ok(outcome) => tracing::info!(runner = %runner_id, ?outcome, "VM stopped"),
            Err(error) => {
                tracing::warn!(runner = %runner_id, error = %crate::error_chain(&error), "cannot stop the VM gracefully; stopping it forcefully");
                vm.vm
                    .force_stop(ffi::vm::QUICK_TIMEOUT)
                    .await
                    .map_err(|e| runner_error(runner_id, e))?;
            }
        }
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
}
