//! An all-in-one local cluster: one server (embedded SQLite) and N agents in one process, on
//! loopback only. Used by `shoes-vz dev`, the benchmarks and the integration tests.

use crate::fleet_client::FleetClient;
use anyhow::Context;
use shoes_vz_agent::config::{AgentConfig, BackendKind, CloneMode};
use shoes_vz_agent::{bundle, template, RunningAgent};
use shoes_vz_model::{ResourceSpec, ResourceType};
use shoes_vz_protocol::client::ConnectOptions;
use shoes_vz_server::config::ServerConfig;
use shoes_vz_server::RunningServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The template every test-backend cluster serves.
pub const DEFAULT_TEST_TEMPLATE: &str = "test-default";
/// What a `nano` runner of a qemu cluster gets (and its warm template is saved with).
pub const QEMU_GUEST_VCPUS: u32 = 1;
pub const QEMU_GUEST_MEMORY_MIB: u64 = 256;
/// The shape of a vz dev runner (`nano`): what `shoes-vz template warm-vz` warms by default,
/// so a warm slot restores.
pub const VZ_GUEST_VCPUS: u32 = 4;
pub const VZ_GUEST_MEMORY_MIB: u64 = 8192;

/// Builds the test guest (first use) and, when asked, its warm template; returns the
/// cold template's name (the scheduler's default).
async fn prepare_qemu_templates(templates: &Path, warm: bool) -> anyhow::Result<String> {
    std::fs::create_dir_all(templates)?;
    let built = crate::qemu_templates::ensure_test_guest(templates).await?;
    if warm {
        let base = template::load(&built.dir)?;
        let made = crate::qemu_templates::ensure_warm(
            &base,
            QEMU_GUEST_VCPUS,
            QEMU_GUEST_MEMORY_MIB,
            shoes_vz_agent::config::QemuConfig::default(),
            Duration::from_secs(300),
            false,
        )
        .await?;
        tracing::info!(template = %made.name, dir = %made.dir.display(), "warm template ready");
    }
    Ok(built.name)
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// myshoes' token (ShoesService).
    pub token: String,
    /// The operator token (OperatorService).
    pub operator_token: String,
    /// The agents' enrollment token.
    pub agent_token: String,
    pub backend: BackendKind,
    pub agents: usize,
    pub max_runners_per_agent: u32,
    pub boot_delay: Duration,
    pub never_ready: bool,
    pub boot_to_ssh_timeout: Duration,
    pub add_instance_timeout: Duration,
    /// How long AddInstance queues for a slot (clamped to leave the boot its time).
    pub queue_wait: Duration,
    /// How long a runner whose caller went away waits for a retry (default: the add timeout).
    pub claim_grace: Option<Duration>,
    /// Reclaim a runner's VM as soon as its job finished.
    pub reclaim_finished: bool,
    /// How often agents ask guests how their job stands.
    pub guest_status_interval: Duration,
    /// test backend: how long a graceful VM stop takes.
    pub test_stop_delay: Duration,
    /// How long starting a runner's setup script may take (it then runs for the job's life).
    pub setup_start_timeout: Duration,
    /// qemu: also make the test guest's warm template (runners asking for label `warm`).
    pub warm: bool,
    /// vz: the operator's templates (made by `template create`/`import-tart`); runner bundles
    /// go beside them (`<parent>/dev-runners/`) so clones stay on the same APFS volume.
    pub templates_dir: Option<PathBuf>,
}

/// The name of the first vz template in `dir`.
fn first_vz_template(dir: &Path) -> Option<String> {
    template::load_all(dir, "vz").ok()?.into_keys().next()
}

impl ClusterOptions {
    /// Where agent `index`'s runner bundles go: beside the vz templates (same volume), else
    /// in its data dir.
    pub fn runners_dir(&self, index: usize) -> PathBuf {
        match (&self.templates_dir, self.backend) {
            (Some(templates), BackendKind::Vz) => templates
                .parent()
                .unwrap_or(templates)
                .join("dev-runners")
                .join(index.to_string()),
            _ => self
                .data_dir
                .join("agents")
                .join(index.to_string())
                .join("runners"),
        }
    }

    pub fn new(data_dir: &Path, token: &str) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            token: token.to_string(),
            operator_token: format!("{token}-operator"),
            agent_token: format!("{token}-enrollment"),
            backend: BackendKind::Test,
            agents: 1,
            max_runners_per_agent: 2,
            boot_delay: Duration::from_millis(500),
            never_ready: false,
            boot_to_ssh_timeout: Duration::from_secs(60),
            add_instance_timeout: Duration::from_secs(240),
            queue_wait: Duration::from_secs(90),
            claim_grace: None,
            reclaim_finished: true,
            guest_status_interval: Duration::from_millis(200),
            test_stop_delay: Duration::ZERO,
            setup_start_timeout: Duration::from_secs(60),
            warm: false,
            templates_dir: None,
        }
    }
}

pub struct LocalCluster {
    pub server: RunningServer,
    pub agents: Vec<RunningAgent>,
    pub options: ClusterOptions,
    clone_mode: CloneMode,
}

impl LocalCluster {
    pub async fn start(options: ClusterOptions) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("cannot create data dir {}", options.data_dir.display()))?;
        let templates = options
            .templates_dir
            .clone()
            .unwrap_or_else(|| options.data_dir.join("templates"));
        let default_template = match options.backend {
            BackendKind::Test => {
                template::ensure_test_template(&templates, DEFAULT_TEST_TEMPLATE).with_context(
                    || {
                        format!(
                            "cannot create the default test template in {}",
                            templates.display()
                        )
                    },
                )?;
                DEFAULT_TEST_TEMPLATE.to_string()
            }
            BackendKind::Qemu => prepare_qemu_templates(&templates, options.warm).await?,
            BackendKind::Vz => first_vz_template(&templates).with_context(|| {
                format!(
                    "no vz template in {}: shoes-vz template create --ipsw latest --name macos, or shoes-vz template import-tart ~/.tart/vms/NAME --name macos",
                    templates.display()
                )
            })?,
        };
        let runners_parent = options.runners_dir(0);
        let runners_parent = runners_parent.parent().unwrap_or(&options.data_dir);
        std::fs::create_dir_all(runners_parent)
            .with_context(|| format!("cannot create {}", runners_parent.display()))?;
        let clone_mode = if bundle::reflink_supported(runners_parent) {
            CloneMode::Reflink
        } else {
            tracing::warn!(
                data_dir = %options.data_dir.display(),
                "this filesystem has no reflink (copy-on-write) support: the local cluster copies template disks in full. \
                 Put --data-dir on XFS, btrfs or APFS for real clone times"
            );
            CloneMode::Copy
        };
        let mut server_config = Self::server_config(&options);
        server_config.scheduler.default_template = Some(default_template);
        let server = RunningServer::start(server_config).await?;
        let mut cluster = LocalCluster {
            server,
            agents: Vec::new(),
            options,
            clone_mode,
        };
        for index in 0..cluster.options.agents {
            let agent = RunningAgent::start(cluster.agent_config(index)).await?;
            cluster.agents.push(agent);
        }
        Ok(cluster)
    }

    pub fn server_config(options: &ClusterOptions) -> ServerConfig {
        let mut config = ServerConfig {
            listen: options.listen,
            metrics_listen: options.metrics_listen,
            database_url: format!(
                "sqlite://{}?mode=rwc",
                options.data_dir.join("state.db").display()
            ),
            ..ServerConfig::default()
        };
        config.auth.token = Some(options.token.clone());
        config.auth.operator_token = Some(options.operator_token.clone());
        config.auth.agent_token = Some(options.agent_token.clone());
        config.timeouts.add_instance = options.add_instance_timeout;
        config.timeouts.queue_wait = options.queue_wait.min(
            options
                .add_instance_timeout
                .saturating_sub(shoes_vz_server::config::MIN_BOOT_TIME),
        );
        config.timeouts.claim_grace = options.claim_grace;
        if options.backend == BackendKind::Vz {
            config.resources.types.insert(
                ResourceType::Nano,
                ResourceSpec {
                    vcpus: VZ_GUEST_VCPUS,
                    memory_mib: VZ_GUEST_MEMORY_MIB,
                },
            );
        }
        if options.backend == BackendKind::Qemu {
            // The test guest is tiny: nano is the shape its warm template is saved with.
            config.resources.types.insert(
                ResourceType::Nano,
                ResourceSpec {
                    vcpus: QEMU_GUEST_VCPUS,
                    memory_mib: QEMU_GUEST_MEMORY_MIB,
                },
            );
        }
        config
    }

    /// The config of agent `index`: its own data and runners dirs, the shared templates.
    pub fn agent_config(&self, index: usize) -> AgentConfig {
        let dir = self.options.data_dir.join("agents").join(index.to_string());
        let mut config = AgentConfig {
            server_url: format!("http://{}", self.server.grpc_addr),
            token: Some(self.options.agent_token.clone()),
            data_dir: dir.clone(),
            templates_dir: self
                .options
                .templates_dir
                .clone()
                .unwrap_or_else(|| self.options.data_dir.join("templates")),
            runners_dir: self.options.runners_dir(index),
            backend: self.options.backend,
            clone_mode: self.clone_mode,
            ..AgentConfig::default()
        };
        config.capacity.max_runners = self.options.max_runners_per_agent;
        config.capacity.cpu_cores = 64 * self.options.max_runners_per_agent;
        config.capacity.memory_mib = 64 * 1024 * u64::from(self.options.max_runners_per_agent);
        config.test_backend.boot_delay = self.options.boot_delay;
        config.test_backend.never_ready = self.options.never_ready;
        config.timeouts.boot_to_ip = self.options.boot_to_ssh_timeout;
        config.timeouts.boot_to_ssh = self.options.boot_to_ssh_timeout;
        config.reclaim_finished = self.options.reclaim_finished;
        config.guest_status_interval = self.options.guest_status_interval;
        config.test_backend.stop_delay = self.options.test_stop_delay;
        config.timeouts.setup_start = self.options.setup_start_timeout;
        config.reconnect.initial_backoff = Duration::from_millis(100);
        config.reconnect.max_backoff = Duration::from_secs(2);
        if self.options.backend == BackendKind::Vz {
            // Guests notify through the NAT bridge, not loopback (docs/macos.md §5a).
            config.notify.listen = SocketAddr::from(([0, 0, 0, 0], 0));
            // Saved State warm slots made by `shoes-vz template warm-vz` (macOS 14+).
            config.vz.warm_slots = self.options.warm;
            config.timeouts.boot_to_ip = Duration::from_secs(180);
            config.timeouts.boot_to_ssh = Duration::from_secs(240);
        }
        config
    }

    /// myshoes' API and the operators', with their tokens.
    pub async fn client(&self) -> anyhow::Result<FleetClient> {
        Ok(FleetClient::connect(
            &self.server.grpc_addr.to_string(),
            &self.options.token,
            &self.options.operator_token,
            &ConnectOptions::default(),
        )
        .await?)
    }

    /// Waits until `count` agents are online (registered and synced).
    pub async fn wait_agents_online(&self, count: i64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.server.fleet.gauges().agents_online >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "only {} of {count} agents came online within {timeout:?}",
                    self.server.fleet.gauges().agents_online
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn runners_dir(&self, index: usize) -> PathBuf {
        self.options.runners_dir(index)
    }

    /// Stops the server and starts a new one on the same address and database (agents
    /// reconnect by themselves).
    pub async fn restart_server(&mut self) -> anyhow::Result<()> {
        self.server.shutdown().await;
        let mut options = self.options.clone();
        options.listen = self.server.grpc_addr;
        options.metrics_listen = None;
        self.server = RunningServer::start(Self::server_config(&options)).await?;
        Ok(())
    }

    /// Tears down every runner, then stops the agents and the server.
    pub async fn shutdown(mut self) {
        for agent in self.agents {
            agent.shutdown(Duration::from_secs(30)).await;
        }
        self.server.shutdown().await;
    }
}
