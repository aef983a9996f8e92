//! [`warm_template`]: makes a vz template's Saved State warm slots (macOS 14+). Per slot: clone
//! the template into a staging directory, boot it with the slot's own machine identifier and
//! MAC and a throwaway config disk, wait until SSH and the runner-agent answer, pause, save the
//! state, stop (forcefully: the disk must stay as it was when saved), publish. One VM at a
//! time (Apple's 2-VM limit: stop or drain the agent first, and restart it afterwards so it
//! loads the new slots).

use super::warm::{
    new_slot_mac, publish_slot, remove_slot_dir, saved_state_gate, staging_dir,
    throwaway_guest_config, warm_root, WarmRequest, WarmedSlot, WARMING_CONFIG_DISK,
};
use super::{
    check_template_on_host, host_error, host_reserve, runner_error, wait_for_lease, BACKEND,
    GUEST_SSH_PORT,
};
use crate::config::CloneMode;
use crate::hypervisor::HypervisorError;
use shoes_vz_model::RunnerId;
use shoes_vz_vz::devices::VmPurpose;
use shoes_vz_vz::ffi::{self, VzVm};
use shoes_vz_vz::identity;
use shoes_vz_vz::limits::Limits;
use shoes_vz_vz::plan::{
    self, DiskSync, PlanRequest, AUXILIARY_STORAGE_FILE, DISK_FILE, SAVED_STATE_FILE,
};
use shoes_vz_vz::slots::{self, SlotId, SlotIdentity, WarmSlot};
use shoes_vz_vz::template::CLONED_FILES;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Writing a guest's whole memory to disk takes a while.
const SAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Warms `request.slots` of the template one after another and publishes each.
pub async fn warm_template(request: &WarmRequest) -> Result<Vec<WarmedSlot>, HypervisorError> {
    let host = shoes_vz_vz::probe().map_err(host_error)?;
    host.check_macos_guests().map_err(host_error)?;
    saved_state_gate(host.macos)?;
    let unavailable = |reason: String| HypervisorError::Unavailable {
        backend: BACKEND,
        reason,
    };
    let templates = crate::template::load_all(&request.templates_dir, BACKEND)
        .map_err(|e| unavailable(crate::error_chain(&e)))?;
    let template = templates.get(&request.template).ok_or_else(|| {
        unavailable(format!(
            "no vz template named {:?} in {}",
            request.template,
            request.templates_dir.display()
        ))
    })?;
    let Some(guest_agent) = &template.metadata.guest_agent else {
        return Err(HypervisorError::Unsupported {
            backend: BACKEND,
            what: "warm slots for templates without guestAgent (a restored runner gets its \
                   identity from the runner-agent)",
        });
    };
    let checked = shoes_vz_vz::template::check(&template.dir)
        .map_err(|e| unavailable(crate::error_chain(&e)))?;
    check_template_on_host(&checked, host.macos)?;
    let limits = host.limits(host_reserve(&request.config));
    let root = warm_root(&request.templates_dir, &request.template);
    std::fs::create_dir_all(&root).map_err(|source| HypervisorError::Io {
        path: root.clone(),
        source,
    })?;
    // Slots not warmed now keep their identities: a new slot must not share them.
    let mut taken: Vec<SlotIdentity> = SlotId::all()
        .filter(|slot| !request.slots.contains(slot))
        .filter_map(|slot| slots::read_warm_slot(&root, slot).ok())
        .map(|warm| warm.identity())
        .collect();
    let mut warmed = Vec::new();
    for &slot in &request.slots {
        let staging = staging_dir(&root, slot);
        let job = Job {
            request,
            template,
            ssh_user: &template.metadata.ssh_user,
            runner_dir: &guest_agent.runner_dir,
            hardware_model: &checked.hardware_model,
            options: &checked.options,
            host_macos: host.macos,
            limits: &limits,
            root: &root,
            staging: &staging,
            slot,
            saved_on_host: host.macos.to_string(),
        };
        match job.run(&taken).await {
            Ok((done, identity)) => {
                taken.push(identity);
                warmed.push(done);
            }
            Err(error) => {
                let _ = remove_slot_dir(&staging);
                return Err(error);
            }
        }
    }
    Ok(warmed)
}

struct Job<'a> {
    request: &'a WarmRequest,
    template: &'a crate::template::Template,
    ssh_user: &'a str,
    runner_dir: &'a str,
    hardware_model: &'a shoes_vz_vz::hardware::HardwareModel,
    options: &'a shoes_vz_vz::template::VzOptions,
    host_macos: shoes_vz_vz::version::MacosVersion,
    limits: &'a Limits,
    root: &'a Path,
    staging: &'a Path,
    slot: SlotId,
    saved_on_host: String,
}

impl Job<'_> {
    async fn run(
        &self,
        taken: &[SlotIdentity],
    ) -> Result<(WarmedSlot, SlotIdentity), HypervisorError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HypervisorError::Io { path, source }
        };
        // Names the VM in logs and errors (not a runner of the agent).
        let vm_id = RunnerId::generate();
        remove_slot_dir(self.staging)?;
        std::fs::create_dir_all(self.staging).map_err(io(self.staging))?;
        for name in CLONED_FILES {
            crate::bundle::clone_file(
                &self.template.dir.join(name),
                &self.staging.join(name),
                CloneMode::Reflink,
            )
            .map_err(|e| HypervisorError::Io {
                path: self.staging.join(name),
                source: std::io::Error::other(crate::error_chain(&e)),
            })?;
        }
        shoes_vz_vz::template::make_bundle_writable(self.staging)
            .map_err(|e| runner_error(&vm_id, e.into()))?;
        let (config, token) = throwaway_guest_config(self.ssh_user, self.runner_dir)?;
        let config_disk = self.staging.join(WARMING_CONFIG_DISK);
        shoes_vz_guest_config::write_image(&config_disk, &config).map_err(|e| {
            HypervisorError::Io {
                path: config_disk.clone(),
                source: std::io::Error::other(crate::error_chain(&e)),
            }
        })?;
        // The template's identifier for every VM under `machineIdentity = "template"`.
        let machine_identifier = identity::choose(
            self.options.machine_identity,
            self.options.machine_identifier.as_ref(),
            ffi::new_machine_identifier,
        )
        .map_err(|e| HypervisorError::Failed {
            runner_id: vm_id.clone(),
            source: Box::new(e),
        })?;
        let mac = new_slot_mac(taken);
        let request = PlanRequest {
            vcpus: self.request.vcpus,
            memory_mib: self.request.memory_mib,
            disk: self.staging.join(DISK_FILE),
            auxiliary_storage: self.staging.join(AUXILIARY_STORAGE_FILE),
            hardware_model: self.hardware_model.clone(),
            machine_identifier,
            mac,
            // Same device layout as a runner: its config disk takes this one's place.
            config_disk: Some(config_disk),
            // The one save-compatible device list runners get too (shoes_vz_vz::devices).
            purpose: VmPurpose::WarmSlot,
            host_macos: self.host_macos,
            display: self.options.display,
            // The disk is kept: every guest flush must reach it.
            disk_sync: DiskSync::Full,
        };
        let plan = plan::build(request, self.limits)
            .map_err(|e| runner_error(&vm_id, shoes_vz_vz::VzError::Plan(e)))?;
        for change in &plan.adjustments {
            tracing::warn!(slot = %self.slot, resource = change.resource, requested = change.requested, granted = change.granted, "the warm VM gets another size than asked; runners must ask for what it got");
        }
        let failed = |e| runner_error(&vm_id, e);
        let vm = VzVm::create(&plan, vm_id.as_str()).await.map_err(failed)?;
        vm.check_save_restore_support().await.map_err(failed)?;
        let started = Instant::now();
        vm.start(self.request.config.start_timeout)
            .await
            .map_err(failed)?;
        tracing::info!(slot = %self.slot, vm = %vm_id, %mac, "warm VM booting");
        let ip = wait_for_lease(
            &vm_id,
            &self.request.config.dhcp_leases,
            mac,
            self.request.boot_timeout,
            self.request.config.lease_poll_interval,
            None,
            vm.subscribe(),
        )
        .await?;
        let ip = IpAddr::V4(ip);
        let ssh = SocketAddr::new(ip, GUEST_SSH_PORT);
        let api = SocketAddr::new(ip, shoes_vz_guest_config::default_http_listen().port());
        let remaining = self.request.boot_timeout.saturating_sub(started.elapsed());
        if !wait_ssh_banner(ssh, remaining).await {
            return Err(HypervisorError::Timeout {
                runner_id: vm_id,
                what: "answer SSH while warming a slot",
                after: self.request.boot_timeout,
            });
        }
        // Restored runners are refreshed through the runner-agent: it must be up in the state.
        let remaining = self.request.boot_timeout.saturating_sub(started.elapsed());
        if !wait_tcp(api, remaining).await {
            return Err(HypervisorError::Timeout {
                runner_id: vm_id,
                what: "serve the runner-agent API while warming a slot",
                after: self.request.boot_timeout,
            });
        }
        // Restored runners are refreshed over vsock: the guest's runner-agent must listen there
        // (`--vsock-port`) in the saved state, or every restore would fall back.
        let remaining = self.request.boot_timeout.saturating_sub(started.elapsed());
        vm.connect_vsock(shoes_vz_guest_config::VSOCK_PORT, remaining.max(Duration::from_secs(5)))
            .await
            .map_err(|e| {
                tracing::error!(slot = %self.slot, "the guest's runner-agent does not listen on vsock port {}; install its LaunchDaemon with --vsock-port (docs/runner-agent.md)", shoes_vz_guest_config::VSOCK_PORT);
                failed(e)
            })?;
        let boot_to_ssh = started.elapsed();
        let saving = Instant::now();
        vm.pause(ffi::vm::QUICK_TIMEOUT).await.map_err(failed)?;
        vm.save_state(&self.staging.join(SAVED_STATE_FILE), SAVE_TIMEOUT)
            .await
            .map_err(failed)?;
        let save = saving.elapsed();
        // Never a guest shutdown: the disk must stay exactly as the saved state knows it.
        vm.force_stop(ffi::vm::QUICK_TIMEOUT)
            .await
            .map_err(failed)?;
        drop(vm);
        let warm = WarmSlot {
            slot: self.slot,
            template: self.template.metadata.name.clone(),
            template_version: self.template.metadata.version.clone(),
            saved_on_host: self.saved_on_host.clone(),
            key: plan.saved_state_key(),
        };
        let root = self.root.to_path_buf();
        let staging = self.staging.to_path_buf();
        let published = warm.clone();
        let dir =
            tokio::task::spawn_blocking(move || publish_slot(&root, &staging, &published, &token))
                .await
                .map_err(|e| HypervisorError::Failed {
                    runner_id: vm_id.clone(),
                    source: Box::new(e),
                })??;
        tracing::info!(slot = %self.slot, dir = %dir.display(), ?boot_to_ssh, ?save, "warm slot published");
        Ok((
            WarmedSlot {
                slot: self.slot,
                dir,
                mac,
                boot_to_ssh,
                save,
            },
            warm.identity(),
        ))
    }
}

/// Until an SSH server sends its `SSH-` banner (the port may accept before sshd answers).
async fn wait_ssh_banner(addr: SocketAddr, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut banner = [0u8; 4];
            stream.read_exact(&mut banner).await.ok()?;
            (&banner == b"SSH-").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Until something accepts TCP connections at `addr`.
async fn wait_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
