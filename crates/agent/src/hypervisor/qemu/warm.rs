//! Warm templates: boot a template until its SSH server answers, save the VM's state, and
//! publish `<name>-warm-<version>/` beside it — the disks as they were at the save, the
//! guest's RAM as a file (`ram.bin`, the VM's memory from the start) and the state of its
//! devices, the kernel and initramfs, and metadata whose `savedState` makes runners of it
//! restore instead of boot (falling back to a cold boot when that fails). A restore maps the
//! RAM file copy-on-write rather than loading ~100 MB of RAM from a stream.
//!
//! The guest is paused by the save, so its disks and memory are captured at one instant and
//! need no sync. Every restored clone shares what the saved guest had (host key, clock,
//! runner-agent identity): the runner-agent's refresh must renew that per runner.

use super::cmdline::GuestMemory;
use super::state::{self, StateError};
use super::{Machine, MachineError, QemuBackend, CONSOLE_LOG, QEMU_LOG};
use crate::hypervisor::{HypervisorError, LinuxBootFiles, VmSpec};
use crate::template::{SavedState, Template, TemplateMetadata, METADATA_FILE};
use shoes_vz_model::RunnerId;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

pub const STATE_FILE: &str = "state.bin";
/// The saved guest's RAM (sparse: only what the guest touched takes space).
pub const RAM_FILE: &str = "ram.bin";
pub const GUEST_TOKEN_FILE: &str = "guest-token";
/// Appended to the base template's name.
pub const WARM_SUFFIX: &str = "-warm";
const QMP_START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// The VM shape runners of the warm template must ask for (a restore needs the same).
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Attached read-only after the disks while booting (the runner-agent needs one to
    /// start SSH); runners of the warm template then need a config disk too.
    pub config_disk: Option<PathBuf>,
    /// The runner-agent token on that config disk, kept (0600) in the warm template so the
    /// agent can authorize each restored clone's identity refresh.
    pub guest_token: Option<shoes_vz_guest_config::ApiToken>,
    pub boot_timeout: Duration,
    /// Make a new warm template even if a matching one exists.
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct WarmTemplate {
    pub dir: PathBuf,
    pub name: String,
    /// `false` when a matching warm template already existed.
    pub built: bool,
    pub boot_to_ssh: Duration,
    pub save: Duration,
    pub state_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("template {0} has no linuxBoot; only directly booted Linux templates can be warmed")]
    NotLinuxBoot(String),
    #[error("template {0} is already warm")]
    AlreadyWarm(String),
    #[error("cannot prepare the VM")]
    Hypervisor(#[from] HypervisorError),
    #[error("cannot prepare SSH keys for the VM spec")]
    Keys(#[source] crate::ssh::SshError),
    #[error("QEMU failed while warming")]
    Machine(#[from] MachineError),
    #[error("the guest's SSH server did not answer within {0:?}")]
    NoSsh(Duration),
    #[error("cannot save the VM state")]
    State(#[from] StateError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WarmError {
    let path = path.to_path_buf();
    move |source| WarmError::Io {
        action,
        path,
        source,
    }
}

/// Makes (or finds) the warm template of `base`, in the same templates directory.
pub async fn make_warm_template(
    backend: &QemuBackend,
    base: &Template,
    options: &WarmOptions,
) -> Result<WarmTemplate, WarmError> {
    let base_meta = &base.metadata;
    let boot = LinuxBootFiles::from_template(base)
        .ok_or_else(|| WarmError::NotLinuxBoot(base_meta.name.clone()))?;
    if base_meta.saved_state.is_some() {
        return Err(WarmError::AlreadyWarm(base_meta.name.clone()));
    }
    let templates_dir = base.dir.parent().unwrap_or(Path::new("."));
    let name = format!("{}{WARM_SUFFIX}", base_meta.name);
    // A template saved before RAM files is made again: its restores load the whole RAM.
    let wanted = |state: &SavedState| {
        (state.vcpus, state.memory_mib, state.config_disk)
            == (
                options.vcpus,
                options.memory_mib,
                options.config_disk.is_some(),
            )
            && state.ram_file.is_some()
    };
    let existing = warm_versions(templates_dir, &name);
    if !options.force {
        let found = existing.iter().find(|(_, meta)| {
            meta.version == base_meta.version && meta.saved_state.as_ref().is_some_and(wanted)
        });
        if let Some((dir, _)) = found {
            return Ok(WarmTemplate {
                dir: dir.clone(),
                name,
                built: false,
                boot_to_ssh: Duration::ZERO,
                save: Duration::ZERO,
                state_bytes: 0,
            });
        }
    }

    let work = tempfile::Builder::new()
        .prefix(".warm-")
        .tempdir_in(templates_dir)
        .map_err(io("create a work directory in", templates_dir))?;
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).map_err(io("create", &out))?;
    let mut disks = Vec::new();
    for (file, source) in base.disk_paths() {
        let target = out.join(file);
        // Copy-on-write where the filesystem can, else a full copy: once per warm template.
        reflink_copy::reflink_or_copy(&source, &target).map_err(io("copy", &source))?;
        disks.push(target);
    }
    // Only used to shape the command line: the warm VM is reached by its SSH banner.
    let throwaway = crate::ssh::generate_ed25519().map_err(WarmError::Keys)?;
    let spec = VmSpec {
        runner_id: RunnerId::generate(),
        bundle_dir: work.path().to_path_buf(),
        disk_files: disks,
        vcpus: options.vcpus,
        memory_mib: options.memory_mib,
        machine_identifier: crate::bundle::MachineIdentifier::generate(),
        ssh_user: base_meta.ssh_user.clone(),
        authorized_key: throwaway.public_key().clone(),
        guest_host_key: Arc::new(throwaway),
        linux_boot: Some(boot.clone()),
        config_disk: options.config_disk.clone(),
        restore: None,
    };
    let mut machine_spec = backend.machine_spec(&spec, None)?;
    // The RAM lives in the template from the start, so the save leaves it out of the state.
    let ram_file = out.join(RAM_FILE);
    machine_spec.memory = GuestMemory::SavedTo(ram_file.clone());
    let started = Instant::now();
    let machine = Machine::launch(
        &machine_spec,
        &work.path().join(QEMU_LOG),
        QMP_START_TIMEOUT,
        Box::new(|_| {}),
    )
    .await?;
    let warmed = warm_and_save(&machine, work.path(), &out, options).await;
    machine.shutdown(Duration::ZERO).await;
    if warmed.is_err() {
        let console = std::fs::read_to_string(work.path().join(CONSOLE_LOG)).unwrap_or_default();
        tracing::warn!(console = %console, "warming failed; the guest's console follows");
    }
    let (boot_to_ssh, save) = warmed?;
    // Every restore maps it: it must be whole on disk before the template is published.
    std::fs::File::open(&ram_file)
        .and_then(|file| file.sync_all())
        .map_err(io("sync", &ram_file))?;
    let guest_ip = super::machine::read_marker(&work.path().join(CONSOLE_LOG))
        .unwrap_or_else(|| "10.0.2.15".into());
    tracing::debug!(elapsed = ?started.elapsed(), "state saved");

    for source in std::iter::once(&boot.kernel).chain(boot.initrd.iter()) {
        let file = source.file_name().unwrap_or_default();
        let target = out.join(file);
        if std::fs::hard_link(source, &target).is_err() {
            std::fs::copy(source, &target).map_err(io("copy", source))?;
        }
    }
    let state_bytes = std::fs::metadata(out.join(STATE_FILE))
        .map_err(io("read", &out.join(STATE_FILE)))?
        .len();
    let guest_token_file = match &options.guest_token {
        Some(token) => {
            let path = out.join(GUEST_TOKEN_FILE);
            crate::fsutil::write_atomic(&path, token.expose().as_bytes())
                .map_err(io("write", &path))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io("set permissions on", &path))?;
            Some(GUEST_TOKEN_FILE.to_string())
        }
        None => None,
    };
    let mut labels = base_meta.labels.clone();
    labels.push("warm".into());
    let metadata = TemplateMetadata {
        name: name.clone(),
        labels,
        saved_state: Some(SavedState {
            file: STATE_FILE.to_string(),
            vcpus: options.vcpus,
            memory_mib: options.memory_mib,
            config_disk: options.config_disk.is_some(),
            guest_ip,
            guest_token_file,
            ram_file: Some(RAM_FILE.to_string()),
        }),
        ..base_meta.clone()
    };
    let metadata_path = out.join(METADATA_FILE);
    crate::fsutil::write_json_atomic(&metadata_path, &metadata)
        .map_err(io("write", &metadata_path))?;
    std::fs::set_permissions(&metadata_path, std::fs::Permissions::from_mode(0o644))
        .map_err(io("set permissions on", &metadata_path))?;

    let dir = free_dir(templates_dir, &name, &base_meta.version);
    std::fs::rename(&out, &dir).map_err(io("publish the warm template as", &dir))?;
    // One template per name: older warm versions go (runner bundles are clones).
    for (old, _) in existing {
        if let Err(error) = std::fs::remove_dir_all(&old) {
            tracing::warn!(template = %old.display(), error = %error, "cannot remove an older warm template");
        }
    }
    Ok(WarmTemplate {
        dir,
        name,
        built: true,
        boot_to_ssh,
        save,
        state_bytes,
    })
}

async fn warm_and_save(
    machine: &Machine,
    work: &Path,
    out: &Path,
    options: &WarmOptions,
) -> Result<(Duration, Duration), WarmError> {
    let started = Instant::now();
    if !wait_ssh_banner(machine.ports.ssh, options.boot_timeout).await {
        return Err(WarmError::NoSsh(options.boot_timeout));
    }
    let boot_to_ssh = started.elapsed();
    tracing::debug!(?boot_to_ssh, work = %work.display(), "warm guest's SSH answers");
    let saving = Instant::now();
    let mut qmp = machine.qmp().await;
    let qmp = qmp
        .as_mut()
        .ok_or(StateError::Qmp(super::qmp::QmpError::Closed))?;
    state::ignore_shared_memory(qmp).await?;
    state::save(qmp, &out.join(STATE_FILE), Duration::from_secs(120)).await?;
    Ok((boot_to_ssh, saving.elapsed()))
}

/// Until an SSH server sends its `SSH-` banner through the forward (QEMU's user-mode
/// network accepts connections even while nothing listens in the guest).
async fn wait_ssh_banner(port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let mut banner = [0u8; 4];
            stream.read_exact(&mut banner).await.ok()?;
            (&banner == b"SSH-").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Published warm templates named `name`, with their metadata.
fn warm_versions(templates_dir: &Path, name: &str) -> Vec<(PathBuf, TemplateMetadata)> {
    let Ok(entries) = std::fs::read_dir(templates_dir) else {
        return Vec::new();
    };
    let prefix = format!("{name}-");
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|dir| {
            let bytes = std::fs::read(dir.join(METADATA_FILE)).ok()?;
            let meta: TemplateMetadata = serde_json::from_slice(&bytes).ok()?;
            (meta.name == name).then_some((dir, meta))
        })
        .collect()
}

fn free_dir(templates_dir: &Path, name: &str, version: &str) -> PathBuf {
    let mut dir = templates_dir.join(format!("{name}-{version}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = templates_dir.join(format!("{name}-{version}-{n}"));
    }
    dir
}
