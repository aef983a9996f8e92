//! Agent configuration: one TOML file, `SHOESVZ_*` environment overrides, flags on top.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The server's gRPC URL, `http://host:50051` or `https://…` with TLS.
    pub server_url: String,
    /// The fleet's enrollment token: presented once, to enroll; the agent then keeps its own
    /// credential in `data_dir` (`agent-credential`, 0600). Prefer `SHOESVZ_AGENT_TOKEN`.
    pub token: Option<String>,
    /// PEM CA certificate to verify the server's TLS certificate with.
    pub tls_ca: Option<PathBuf>,
    /// Where the agent keeps its identity.
    pub data_dir: PathBuf,
    /// Immutable templates, one directory each with a `TemplateMetadata.json`.
    pub templates_dir: PathBuf,
    /// Runner bundles; must be on the same copy-on-write volume as `templates_dir`.
    pub runners_dir: PathBuf,
    /// `runner-state.json` for external readers; defaults to `<data_dir>/runner-state.json`.
    pub state_file: Option<PathBuf>,
    pub backend: BackendKind,
    pub capacity: Capacity,
    pub clone_mode: CloneMode,
    pub timeouts: AgentTimeouts,
    /// Stop a runner's VM and free its slot the moment its job has finished (the guest's
    /// ephemeral runner exited after its job), instead of waiting for myshoes' DeleteInstance
    /// (which comes once a minute, one runner at a time). The server keeps the record, so
    /// the later DeleteInstance still answers OK.
    pub reclaim_finished: bool,
    /// End a runner whose job (from the setup script's start) runs longer than this. Off by
    /// default: no timeout ends a job.
    #[serde(default, with = "humantime_serde")]
    pub max_job_duration: Option<Duration>,
    pub test_backend: TestBackendConfig,
    pub qemu: QemuConfig,
    pub vz: VzConfig,
    pub notify: NotifyConfig,
    /// How often the agent asks a running guest how its job and setup script stand (a
    /// finished job frees its slot within about this long).
    #[serde(with = "humantime_serde")]
    pub guest_status_interval: Duration,
    pub reconnect: Reconnect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Loopback SSH servers that play VMs: isolates nothing, for tests, demos and scale runs.
    Test,
    /// Linux guests under QEMU (KVM or TCG), e.g. the test guest.
    Qemu,
    /// macOS guests under Virtualization.framework (macOS on Apple silicon only).
    Vz,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Test => "test",
            BackendKind::Qemu => "qemu",
            BackendKind::Vz => "vz",
        }
    }
}

/// The `[notify]` section: where guests tell the agent they are up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Listen only where guests reach the host: loopback suits `test` and `qemu` (user-mode
    /// networking forwards the guest's 10.0.2.2 to the host's 127.0.0.1); for `vz`, the NAT
    /// bridge address (e.g. `192.168.64.1:8081`). Port 0 lets the kernel choose.
    pub listen: std::net::SocketAddr,
    /// The URL guests POST to, when the backend's default (its host address as seen from the
    /// guest, the bound port, `/v1/notify`) is wrong for this network.
    pub guest_url: Option<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            guest_url: None,
        }
    }
}

/// The `[qemu]` section. vCPUs and memory come from each runner's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`, found on `PATH` unless a path is given.
    pub binary: PathBuf,
    pub accel: QemuAccel,
    /// Appended to the kernel command line of every guest.
    pub extra_kernel_args: String,
    /// How long QEMU may take to open its control socket and report its forwards.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: QemuAccel::Auto,
            extra_kernel_args: String::new(),
            start_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuAccel {
    /// KVM when `/dev/kvm` opens read-write and this host is not itself a VM, else TCG.
    Auto,
    Kvm,
    /// Software emulation: slow but works everywhere (nested KVM often does not).
    Tcg,
}

/// The `[vz]` section (macOS hosts). vCPUs and memory come from each runner's request,
/// clamped to the host minus the reserve and to the framework's limits (logged when changed);
/// the graceful stop uses `timeouts.stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VzConfig {
    /// CPU cores never given to guests, so the agent, SSH and APFS keep up under two guests.
    pub reserve_cpus: u32,
    /// Memory (MiB) never given to guests.
    pub reserve_memory_mib: u64,
    /// Saved State warm slots (macOS 14+; refused below): runners restore a slot made by
    /// `shoes-vz template warm-vz`, and boot cold when none is free or a restore fails.
    pub warm_slots: bool,
    /// bootpd's lease file, where a guest's address is found by its MAC.
    pub dhcp_leases: PathBuf,
    /// How often the lease file is read again while a guest boots.
    #[serde(with = "humantime_serde")]
    pub lease_poll_interval: Duration,
    /// How long Virtualization.framework may take to create and start a VM.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How the guest's disk flushes reach the host's storage.
    pub disk_sync: VzDiskSync,
}

impl Default for VzConfig {
    fn default() -> Self {
        Self {
            reserve_cpus: 1,
            reserve_memory_mib: 2048,
            warm_slots: false,
            dhcp_leases: PathBuf::from("/var/db/dhcpd_leases"),
            lease_poll_interval: Duration::from_secs(1),
            start_timeout: Duration::from_secs(60),
            disk_sync: VzDiskSync::Full,
        }
    }
}

/// `VZDiskImageSynchronizationMode` for a runner's boot disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VzDiskSync {
    /// Guest flushes reach the physical disk (the framework's default).
    Full,
    /// Guest flushes become `fsync` (cheaper; the drive's cache may still lose them).
    Fsync,
    /// Guest flushes are ignored: fastest; only a host crash loses data, and with it the
    /// runner, which is thrown away anyway.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMode {
    /// Copy-on-write clone (APFS clonefile, FICLONE on XFS/btrfs); fails where unsupported.
    Reflink,
    /// Full byte copy: slow and uses disk for every runner; logged loudly each time.
    Copy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Runners at once. Virtualization.framework allows at most 2 macOS guests per host.
    pub max_runners: u32,
    /// vCPUs the agent may hand out in total.
    pub cpu_cores: u32,
    /// Memory (MiB) the agent may hand out in total.
    pub memory_mib: u64,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_runners: 2,
            cpu_cores: 8,
            memory_mib: 16384,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTimeouts {
    #[serde(with = "humantime_serde")]
    pub clone: Duration,
    /// From VM start until the guest has an address.
    #[serde(with = "humantime_serde")]
    pub boot_to_ip: Duration,
    /// From VM start until SSH answers.
    #[serde(with = "humantime_serde")]
    pub boot_to_ssh: Duration,
    /// Starting the setup script (it then runs detached for the job's whole life).
    #[serde(with = "humantime_serde", alias = "setup_script")]
    pub setup_start: Duration,
    /// Graceful stop before the VM is killed.
    #[serde(with = "humantime_serde")]
    pub stop: Duration,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        Self {
            clone: Duration::from_secs(120),
            boot_to_ip: Duration::from_secs(180),
            boot_to_ssh: Duration::from_secs(200),
            setup_start: Duration::from_secs(60),
            stop: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestBackendConfig {
    /// How long a test "VM" takes before its SSH server answers.
    #[serde(with = "humantime_serde")]
    pub boot_delay: Duration,
    /// Never start the SSH server (to exercise boot timeouts).
    pub never_ready: bool,
    /// How long a graceful stop takes (a guest shutting down); a forced stop is immediate.
    #[serde(with = "humantime_serde")]
    pub stop_delay: Duration,
}

impl Default for TestBackendConfig {
    fn default() -> Self {
        Self {
            boot_delay: Duration::from_millis(500),
            never_ready: false,
            stop_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The longest the server may stay silent (heartbeats included) before the agent drops
    /// the link and reconnects; the server may ask for less.
    #[serde(with = "humantime_serde")]
    pub server_silence: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            server_silence: Duration::from_secs(10),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        let root = PathBuf::from("/opt/myshoes/vz");
        Self {
            server_url: "http://127.0.0.1:50051".to_string(),
            token: None,
            tls_ca: None,
            data_dir: root.clone(),
            templates_dir: root.join("templates"),
            runners_dir: root.join("runners"),
            state_file: None,
            backend: BackendKind::Test,
            capacity: Capacity::default(),
            clone_mode: CloneMode::Reflink,
            timeouts: AgentTimeouts::default(),
            reclaim_finished: true,
            max_job_duration: None,
            test_backend: TestBackendConfig::default(),
            qemu: QemuConfig::default(),
            vz: VzConfig::default(),
            notify: NotifyConfig::default(),
            guest_status_interval: Duration::from_secs(1),
            reconnect: Reconnect::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("no agent token is configured: set SHOESVZ_AGENT_TOKEN (or SHOESVZ_TOKEN) or `token` in the config file")]
    NoToken,
    #[error("capacity.max_runners is 0: the agent could never run anything")]
    NoCapacity,
    #[error("server_url {0:?} must start with http:// or https://")]
    BadServerUrl(String),
    #[error(
        "reconnect.max_backoff must be at least reconnect.initial_backoff, and both above zero"
    )]
    BadBackoff,
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.token.as_deref().is_none_or(str::is_empty) {
            return Err(AgentConfigError::NoToken);
        }
        if self.capacity.max_runners == 0 {
            return Err(AgentConfigError::NoCapacity);
        }
        if !(self.server_url.starts_with("http://") || self.server_url.starts_with("https://")) {
            return Err(AgentConfigError::BadServerUrl(self.server_url.clone()));
        }
        let r = &self.reconnect;
        if r.initial_backoff.is_zero() || r.max_backoff < r.initial_backoff {
            return Err(AgentConfigError::BadBackoff);
        }
        Ok(())
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("runner-state.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_sets_nested_values_and_keeps_defaults() {
        let config: AgentConfig = toml::from_str(
            r#"
            server_url = "https://server:50051"
            token = "t"
            clone_mode = "copy"
            [capacity]
            max_runners = 4
            [timeouts]
            boot_to_ssh = "90s"
            [qemu]
            accel = "tcg"
            "#,
        )
        .expect("valid");
        config.validate().expect("valid config");
        assert_eq!(config.capacity.max_runners, 4);
        assert_eq!(config.capacity.cpu_cores, 8);
        assert_eq!(config.clone_mode, CloneMode::Copy);
        assert_eq!(config.timeouts.boot_to_ssh, Duration::from_secs(90));
        assert_eq!(config.qemu.accel, QemuAccel::Tcg);
        assert_eq!(config.qemu.binary, PathBuf::from("qemu-system-x86_64"));
        assert_eq!(
            config.state_file(),
            PathBuf::from("/opt/myshoes/vz/runner-state.json")
        );
    }

    #[test]
    fn missing_token_and_bad_urls_are_refused() {
        let mut config = AgentConfig::default();
        assert!(matches!(config.validate(), Err(AgentConfigError::NoToken)));
        config.token = Some("t".into());
        config.server_url = "server:50051".into();
        assert!(matches!(
            config.validate(),
            Err(AgentConfigError::BadServerUrl(_))
        ));
        assert!(toml::from_str::<AgentConfig>("bakend = \"test\"").is_err());
    }
}
