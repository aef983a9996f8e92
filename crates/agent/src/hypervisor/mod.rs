//! The seam between the agent and a hypervisor. Backends speak only these neutral types;
//! what a backend cannot do is a typed [`HypervisorError::Unsupported`], never a panic.
//!
//! # Layout
//! - `mod.rs`: the [`Hypervisor`] trait, [`VmSpec`], [`VmEvent`], errors.
//! - [`test_backend`]: loopback SSH servers that play VMs (isolates nothing).
//! - [`qemu`]: Linux guests under QEMU (microvm, KVM or TCG).
//! - [`vz`]: macOS guests under Virtualization.framework (macOS only; Unsupported elsewhere).

pub mod qemu;
pub mod test_backend;
pub mod vz;

use crate::bundle::MachineIdentifier;
use russh::keys::{PrivateKey, PublicKey};
use shoes_vz_model::RunnerId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Everything a backend needs to run one runner's VM.
#[derive(Clone)]
pub struct VmSpec {
    pub runner_id: RunnerId,
    pub bundle_dir: PathBuf,
    pub disk_files: Vec<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub machine_identifier: MachineIdentifier,
    pub ssh_user: String,
    /// The per-runner key the agent logs in with.
    pub authorized_key: PublicKey,
    /// The guest's SSH host key, made by the agent so it can verify the guest.
    pub guest_host_key: Arc<PrivateKey>,
    /// Kernel and initramfs for direct kernel boot, shared read-only from the template.
    pub linux_boot: Option<LinuxBootFiles>,
    /// The runner's read-only config disk (its secrets), attached to this VM alone.
    pub config_disk: Option<PathBuf>,
    /// Restore this saved state instead of booting (a warm template), where the backend can.
    pub restore: Option<RestoreFrom>,
}

/// A warm template's saved state, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFrom {
    pub state_file: PathBuf,
    /// The saved RAM, when the template keeps it as a file (mapped, not loaded).
    pub ram_file: Option<PathBuf>,
    pub saved: crate::template::SavedState,
}

impl RestoreFrom {
    pub fn from_template(template: &crate::template::Template) -> Option<Self> {
        let saved = template.metadata.saved_state.clone()?;
        Some(Self {
            state_file: template.dir.join(&saved.file),
            ram_file: saved.ram_file.as_ref().map(|file| template.dir.join(file)),
            saved,
        })
    }
}

/// Resolved [`crate::template::LinuxBoot`] paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBootFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub kernel_args: String,
}

impl LinuxBootFiles {
    pub fn from_template(template: &crate::template::Template) -> Option<Self> {
        let boot = template.metadata.linux_boot.as_ref()?;
        Some(Self {
            kernel: template.dir.join(&boot.kernel),
            initrd: boot.initrd.as_ref().map(|initrd| template.dir.join(initrd)),
            kernel_args: boot.kernel_args.clone(),
        })
    }
}

/// Where the agent reaches a booted guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEndpoint {
    /// The guest's own address (reported to myshoes).
    pub ip_address: String,
    /// Where the agent connects for SSH (a host forward for user-mode networking).
    pub ssh_addr: SocketAddr,
    /// Where the agent reaches the guest's runner-agent HTTP API, when the backend knows.
    pub http_addr: Option<SocketAddr>,
    /// The VM was restored from a warm template's saved state (its guest still has the saved
    /// identity until refreshed).
    pub restored: bool,
    /// A restore was tried and failed; the VM booted cold instead.
    pub restore_fell_back: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The VM stopped without the agent asking (guest shutdown, crash, killed process).
    Exited { runner_id: RunnerId, detail: String },
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    #[error("no VM for runner {0} on this backend")]
    UnknownVm(RunnerId),
    #[error("a VM for runner {0} is already running")]
    AlreadyRunning(RunnerId),
    #[error("the VM of runner {runner_id} did not {what} within {after:?}")]
    Timeout {
        runner_id: RunnerId,
        what: &'static str,
        after: Duration,
    },
    #[error("the VM of runner {runner_id} stopped: {detail}")]
    Exited { runner_id: RunnerId, detail: String },
    #[error("the VM of runner {runner_id} failed to start")]
    Start {
        runner_id: RunnerId,
        #[source]
        source: std::io::Error,
    },
    #[error("the {backend} backend cannot run here: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("the VM of runner {runner_id} failed")]
    Failed {
        runner_id: RunnerId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("hypervisor I/O failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// Short name (`test`, `qemu`, `vz`), as in templates' `backend`.
    fn kind(&self) -> &'static str;

    /// Boots the VM described by `spec`; returns once it is starting.
    async fn start(&self, spec: &VmSpec) -> Result<(), HypervisorError>;

    /// Waits until the guest has an address and SSH can be tried.
    async fn guest_endpoint(
        &self,
        runner_id: &RunnerId,
        timeout: Duration,
    ) -> Result<GuestEndpoint, HypervisorError>;

    /// Asks the guest to stop, then forces it after `timeout`. Unknown VMs are fine.
    async fn stop(&self, runner_id: &RunnerId, timeout: Duration) -> Result<(), HypervisorError>;

    /// Ends whatever an earlier agent process left running for a bundle (found at start).
    async fn clean_leftover(&self, bundle_dir: &Path) -> Result<(), HypervisorError>;

    /// VM events for every runner on this backend.
    fn subscribe(&self) -> broadcast::Receiver<VmEvent>;

    /// The VM's serial console log in its bundle, when the backend keeps one.
    fn console_log(&self, _bundle_dir: &Path) -> Option<PathBuf> {
        None
    }

    /// The host's address as guests see it (for the notify URL), when the backend knows it.
    fn host_address_for_guests(&self) -> Option<std::net::IpAddr> {
        None
    }

    /// For a VM restored from a saved state the backend chose itself (vz warm slots, one
    /// token per slot): the file holding the restored runner-agent's token, which authorizes
    /// its `/refresh`. `None`: use the template's `savedState.guestTokenFile`.
    fn restored_guest_token_file(&self, _runner_id: &RunnerId) -> Option<PathBuf> {
        None
    }

    /// The backend's private channel to the guest's runner-agent API, when it has one (vz:
    /// vsock through `VZVirtioSocketDevice`, which only the host reaches). The agent sends
    /// the restored guest's identity refresh (new token, SSH host key) through it instead of
    /// to a network address that may, by then, belong to another guest.
    fn guest_channel(
        &self,
        _runner_id: &RunnerId,
    ) -> Option<Arc<dyn crate::guest_api::GuestChannel>> {
        None
    }
}
