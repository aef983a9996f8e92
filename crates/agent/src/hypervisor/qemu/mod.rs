//! The `qemu` backend: Linux guests (e.g. the test guest) on QEMU's microvm machine, under
//! KVM where `/dev/kvm` works, else TCG.
//!
//! Per runner: the bundle's cloned disks as virtio-blk, the config disk read-only after
//! them, a MAC and UUID derived from the machine identifier, user-mode networking with
//! 127.0.0.1 forwards to guest ports 22 and 8080 (ports chosen by the kernel, read back over
//! QMP), QMP at `<bundle>/qmp.sock`, the serial console in `<bundle>/console.log`, QEMU's
//! own messages in `<bundle>/qemu.log`, and `<bundle>/qemu.pid` for leftover cleanup.
//!
//! # Layout
//! - `mod.rs`: [`QemuBackend`], the [`Hypervisor`] implementation.
//! - [`machine`]: one supervised QEMU process. [`cmdline`]: its command line.
//! - [`accel`]: KVM/TCG and the host TSC. [`identity`]: MAC and UUID.
//! - [`qmp`]: the control-socket client. [`usernet`]: forwarded ports.
//! - [`process`]: leftover processes (pidfile + verified command line).
//! - [`state`]: Saved State (warm start) save and restore primitives; [`warm`]: warm
//!   templates. A runner of a warm template restores its state, or boots cold (logged,
//!   counted in [`QemuBackend::restore_fallbacks`]) when the restore fails.

pub mod accel;
pub mod cmdline;
pub mod identity;
pub mod machine;
pub mod process;
pub mod qmp;
pub mod state;
pub mod usernet;
pub mod warm;

pub use machine::{HostPorts, Machine, MachineError, StopHow, GUEST_IP_MARKER};

use super::{GuestEndpoint, Hypervisor, HypervisorError, RestoreFrom, VmEvent, VmSpec};
use crate::config::QemuConfig;
use accel::Accel;
use cmdline::{GuestMemory, MachineSpec};
use shoes_vz_model::RunnerId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tracing::Instrument;

pub const QMP_SOCKET: &str = "qmp.sock";
pub const PID_FILE: &str = "qemu.pid";
pub const CONSOLE_LOG: &str = "console.log";
pub const QEMU_LOG: &str = "qemu.log";

pub struct QemuBackend {
    config: QemuConfig,
    accel: Accel,
    tsc_khz: Option<u64>,
    vms: Mutex<HashMap<RunnerId, Arc<Vm>>>,
    events: broadcast::Sender<VmEvent>,
    restore_fallbacks: AtomicU64,
}

struct Vm {
    machine: Machine,
    /// Known without waiting for the console: a restored guest prints nothing at start.
    known_ip: Option<String>,
    /// A restore was tried and failed; this VM booted cold.
    fell_back: bool,
}

impl QemuBackend {
    /// Resolves the accelerator and checks that the QEMU binary exists.
    pub fn new(config: QemuConfig) -> Result<Self, HypervisorError> {
        if find_binary(&config.binary).is_none() {
            return Err(HypervisorError::Unavailable {
                backend: "qemu",
                reason: format!(
                    "{} was not found; install qemu-system-x86 or set qemu.binary",
                    config.binary.display()
                ),
            });
        }
        let accel = accel::resolve(config.accel);
        let tsc_khz = accel::host_tsc_khz();
        if tsc_khz.is_none() {
            tracing::warn!("cannot read the host TSC frequency; microvm guests may hang calibrating their clock");
        }
        tracing::info!(accel = accel.as_str(), binary = %config.binary.display(), "qemu backend ready");
        let (events, _) = broadcast::channel(256);
        Ok(Self {
            config,
            accel,
            tsc_khz,
            vms: Mutex::new(HashMap::new()),
            events,
            restore_fallbacks: AtomicU64::new(0),
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// How many restores of a saved state failed and fell back to a cold boot.
    pub fn restore_fallbacks(&self) -> u64 {
        self.restore_fallbacks.load(Ordering::Relaxed)
    }

    /// Starts QEMU for `spec`. Exits before `armed` is set are start failures (returned),
    /// not events.
    async fn launch(
        &self,
        spec: &VmSpec,
        restore: Option<&RestoreFrom>,
        armed: &Arc<AtomicBool>,
    ) -> Result<Machine, HypervisorError> {
        let mut machine_spec =
            self.machine_spec(spec, restore.map(|restore| restore.state_file.clone()))?;
        if let Some(ram) = restore.and_then(|restore| restore.ram_file.clone()) {
            machine_spec.memory = GuestMemory::RestoredFrom(ram);
        }
        let events = self.events.clone();
        let runner_id = spec.runner_id.clone();
        let armed = Arc::clone(armed);
        let on_exit = Box::new(move |detail: String| {
            if armed.load(Ordering::SeqCst) {
                tracing::warn!(runner = %runner_id, detail = %detail, "QEMU exited on its own");
                let _ = events.send(VmEvent::Exited { runner_id, detail });
            }
        });
        Machine::launch(
            &machine_spec,
            &spec.bundle_dir.join(QEMU_LOG),
            self.config.start_timeout,
            on_exit,
        )
        .await
        .map_err(|e| failed(&spec.runner_id, e))
    }

    /// Restores `restore` (of the same VM shape) for `spec`.
    async fn restore(
        &self,
        spec: &VmSpec,
        restore: &RestoreFrom,
        armed: &Arc<AtomicBool>,
    ) -> Result<Machine, HypervisorError> {
        let launching = std::time::Instant::now();
        let machine = self
            .launch(spec, Some(restore), armed)
            .instrument(tracing::debug_span!("qemu_launch", runner = %spec.runner_id))
            .await?;
        let launched = launching.elapsed();
        let resuming = std::time::Instant::now();
        let resumed = {
            let mut qmp = machine.qmp().await;
            match qmp.as_mut() {
                Some(qmp) => {
                    async {
                        if restore.ram_file.is_some() {
                            state::incoming_from_file(qmp, &restore.state_file).await?;
                        }
                        state::resume_incoming(qmp, self.config.start_timeout).await
                    }
                    .instrument(tracing::debug_span!("qemu_resume", runner = %spec.runner_id))
                    .await
                }
                None => Err(state::StateError::Qmp(qmp::QmpError::Closed)),
            }
        };
        tracing::debug!(runner = %spec.runner_id, ?launched, resumed = ?resuming.elapsed(), "restore steps");
        match resumed {
            Ok(()) => Ok(machine),
            Err(error) => {
                machine.shutdown(Duration::ZERO).await;
                Err(HypervisorError::Failed {
                    runner_id: spec.runner_id.clone(),
                    source: Box::new(error),
                })
            }
        }
    }

    /// The command line facts of `spec`'s VM; `incoming` restores a saved state.
    pub fn machine_spec(
        &self,
        spec: &VmSpec,
        incoming: Option<PathBuf>,
    ) -> Result<MachineSpec, HypervisorError> {
        let boot = spec
            .linux_boot
            .as_ref()
            .ok_or(HypervisorError::Unsupported {
                backend: "qemu",
                what: "templates without linuxBoot (a kernel to boot directly)",
            })?;
        let uuid = identity::machine_uuid(spec.machine_identifier);
        let kernel_args = cmdline::kernel_cmdline(
            self.tsc_khz,
            uuid,
            &[&boot.kernel_args, &self.config.extra_kernel_args],
        );
        let bundle = &spec.bundle_dir;
        Ok(MachineSpec {
            binary: self.config.binary.clone(),
            accel: self.accel,
            name: spec.runner_id.to_string(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            kernel_args,
            uuid,
            mac: identity::mac_address(spec.machine_identifier),
            disks: spec.disk_files.clone(),
            config_disk: spec.config_disk.clone(),
            qmp_socket: bundle.join(QMP_SOCKET),
            pid_file: bundle.join(PID_FILE),
            console_log: bundle.join(CONSOLE_LOG),
            incoming,
            memory: GuestMemory::Anonymous,
        })
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerId, Arc<Vm>>> {
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

fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn failed(runner_id: &RunnerId, error: MachineError) -> HypervisorError {
    match error {
        MachineError::Spawn { source, .. } => HypervisorError::Start {
            runner_id: runner_id.clone(),
            source,
        },
        MachineError::Exited(detail) => HypervisorError::Exited {
            runner_id: runner_id.clone(),
            detail,
        },
        other => HypervisorError::Failed {
            runner_id: runner_id.clone(),
            source: Box::new(other),
        },
    }
}

#[async_trait::async_trait]
impl Hypervisor for QemuBackend {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn console_log(&self, bundle_dir: &Path) -> Option<PathBuf> {
        Some(bundle_dir.join(CONSOLE_LOG))
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        if self.vms().contains_key(&spec.runner_id) {
            return Err(HypervisorError::AlreadyRunning(spec.runner_id.clone()));
        }
        let armed = Arc::new(AtomicBool::new(false));
        let mut restored = None;
        let mut fell_back = false;
        let restorable = spec.restore.as_ref().filter(|restore| {
            let saved = &restore.saved;
            let fits = (saved.vcpus, saved.memory_mib, saved.config_disk)
                == (spec.vcpus, spec.memory_mib, spec.config_disk.is_some());
            if !fits {
                tracing::info!(runner = %spec.runner_id, saved_vcpus = saved.vcpus, saved_memory_mib = saved.memory_mib, saved_config_disk = saved.config_disk, "the saved state is for another VM shape; booting cold");
            }
            fits
        });
        if let Some(restore) = restorable {
            match self.restore(spec, restore, &armed).await {
                Ok(machine) => restored = Some((machine, restore.saved.guest_ip.clone())),
                Err(error) => {
                    self.restore_fallbacks.fetch_add(1, Ordering::Relaxed);
                    fell_back = true;
                    tracing::warn!(runner = %spec.runner_id, error = %crate::error_chain(&error), "cannot restore the saved state; booting cold");
                    // Keep what QEMU said about the failed restore beside the cold boot's log.
                    let log = spec.bundle_dir.join(QEMU_LOG);
                    let _ = std::fs::rename(&log, log.with_extension("restore.log"));
                }
            }
        }
        let vm = match restored {
            Some((machine, ip)) => Vm {
                machine,
                known_ip: Some(ip),
                fell_back,
            },
            None => Vm {
                machine: self.launch(spec, None, &armed).await?,
                known_ip: None,
                fell_back,
            },
        };
        armed.store(true, Ordering::SeqCst);
        let machine = &vm.machine;
        tracing::info!(runner = %spec.runner_id, pid = machine.pid, restored = vm.known_ip.is_some(), ssh_port = machine.ports.ssh, agent_port = machine.ports.agent, "QEMU started");
        // An exit between launch and arming was not reported: report it now.
        if let Some(detail) = machine.exit_detail() {
            let _ = self.events.send(VmEvent::Exited {
                runner_id: spec.runner_id.clone(),
                detail,
            });
        }
        self.vms().insert(spec.runner_id.clone(), Arc::new(vm));
        Ok(())
    }

    async fn guest_endpoint(
        &self,
        runner_id: &RunnerId,
        timeout: Duration,
    ) -> Result<GuestEndpoint, HypervisorError> {
        let vm = self.vm(runner_id)?;
        let ip_address = match &vm.known_ip {
            Some(ip) => ip.clone(),
            None => vm
                .machine
                .wait_for_guest_ip(timeout)
                .await
                .map_err(|error| match error {
                    MachineError::NoAddress(after) => HypervisorError::Timeout {
                        runner_id: runner_id.clone(),
                        what: "get an address",
                        after,
                    },
                    other => failed(runner_id, other),
                })?,
        };
        Ok(GuestEndpoint {
            ip_address,
            ssh_addr: SocketAddr::from(([127, 0, 0, 1], vm.machine.ports.ssh)),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], vm.machine.ports.agent))),
            restored: vm.known_ip.is_some(),
            restore_fell_back: vm.fell_back,
        })
    }

    async fn stop(&self, runner_id: &RunnerId, timeout: Duration) -> Result<(), HypervisorError> {
        let vm = self.vms().remove(runner_id);
        if let Some(vm) = vm {
            let how = vm.machine.shutdown(timeout).await;
            // Without a grace period, `quit` is the plan, not a guest that failed to stop.
            if how == StopHow::PoweredOff || how == StopHow::AlreadyExited || timeout.is_zero() {
                tracing::info!(runner = %runner_id, how = ?how, "QEMU stopped");
            } else {
                tracing::warn!(runner = %runner_id, how = ?how, "the guest did not power off in time");
            }
        }
        Ok(())
    }

    /// User-mode networking: the guest reaches the host's loopback at 10.0.2.2.
    fn host_address_for_guests(&self) -> Option<std::net::IpAddr> {
        Some(std::net::IpAddr::from([10, 0, 2, 2]))
    }

    async fn clean_leftover(&self, bundle_dir: &Path) -> Result<(), HypervisorError> {
        let pid_file = bundle_dir.join(PID_FILE);
        for pid in process::find(&pid_file) {
            tracing::warn!(pid, bundle = %bundle_dir.display(), "ending a QEMU process left by an earlier agent");
            if !process::terminate(pid, Duration::from_secs(5)).await {
                return Err(HypervisorError::Io {
                    path: pid_file,
                    source: std::io::Error::other(format!("QEMU process {pid} did not end")),
                });
            }
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }
}
