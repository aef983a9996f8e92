//! shoes-vz agent: runs runner VMs on one host for the server.
//!
//! # Layout
//! - [`config`]: configuration; [`identity`]: the agent's stable id.
//! - [`template`]: immutable templates; [`bundle`]: per-runner copy-on-write bundles.
//! - [`hypervisor`]: the backend trait and its backends; [`test_vm`]: the test backend's guest.
//! - [`runner`]: slots, the per-runner lifecycle, state reports and `runner-state.json`.
//! - [`ssh`]: readiness checks and setup scripts over SSH.
//! - [`sync`]: the link to the server (register, Sync stream, reconnect).
//! - [`service`]: `install`/`uninstall` as a macOS LaunchDaemon.
//! - [`doctor`]: the prerequisites of the configured backend (`shoes-vz doctor`, `--check`).

pub mod bundle;
pub mod config;
pub mod doctor;
pub mod fsutil;
pub mod guest_api;
pub mod hypervisor;
pub mod identity;
pub mod notify;
pub mod runner;
pub mod service;
pub mod ssh;
pub mod sync;
pub mod template;
pub mod test_vm;

use anyhow::Context;
use config::{AgentConfig, BackendKind};
use hypervisor::qemu::QemuBackend;
use hypervisor::test_backend::TestBackend;
use hypervisor::vz::VzBackend;
use hypervisor::Hypervisor;
use runner::view::StateFile;
use runner::RunnerManager;
use shoes_vz_model::AgentId;
use shoes_vz_protocol::agent::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running agent. [`RunningAgent::shutdown`] tears its runners down; dropping it without
/// that (or calling [`RunningAgent::abandon`]) behaves like a crash.
pub struct RunningAgent {
    pub agent_id: AgentId,
    pub manager: Arc<RunnerManager>,
    shutdown: CancellationToken,
    sync_task: tokio::task::JoinHandle<()>,
    notify_task: tokio::task::JoinHandle<()>,
}

impl RunningAgent {
    pub async fn start(mut config: AgentConfig) -> anyhow::Result<RunningAgent> {
        let backend: Arc<dyn Hypervisor> = match config.backend {
            BackendKind::Test => {
                tracing::warn!(
                    "test backend: runner \"VMs\" are loopback SSH servers that isolate nothing"
                );
                Arc::new(TestBackend::new(config.test_backend.clone()))
            }
            BackendKind::Qemu => Arc::new(QemuBackend::new(config.qemu.clone())?),
            BackendKind::Vz => {
                let backend = VzBackend::new(config.vz.clone(), &config.templates_dir)?;
                hypervisor::vz::cap_capacity(&mut config.capacity);
                Arc::new(backend)
            }
        };
        Self::start_with_backend(config, backend).await
    }

    pub async fn start_with_backend(
        config: AgentConfig,
        backend: Arc<dyn Hypervisor>,
    ) -> anyhow::Result<RunningAgent> {
        config.validate()?;
        let config = Arc::new(config);
        let agent_id = identity::load_or_create(&config.data_dir)?;
        let templates = template::load_all(&config.templates_dir, backend.kind())?;
        std::fs::create_dir_all(&config.runners_dir).with_context(|| {
            format!("cannot create runners_dir {}", config.runners_dir.display())
        })?;
        remove_leftover_bundles(&config, backend.as_ref()).await;

        let registration = pb::RegisterAgentRequest {
            agent_id: agent_id.to_string(),
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown-host".into()),
            capacity: Some(pb::AgentCapacity {
                max_runners: config.capacity.max_runners,
                cpu_cores: config.capacity.cpu_cores,
                memory_mib: config.capacity.memory_mib,
            }),
            templates: templates
                .values()
                .map(|t| pb::TemplateInfo {
                    name: t.metadata.name.clone(),
                    version: t.metadata.version.clone(),
                    backend: t.metadata.backend.clone(),
                    labels: t.metadata.labels.clone(),
                    max_vcpus: t.metadata.limits.max_vcpus,
                    max_memory_mib: t.metadata.limits.max_memory_mib,
                    os: t.metadata.os_label().to_string(),
                    arch: t.metadata.arch_label().to_string(),
                })
                .collect(),
            backend: backend.kind().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let tls_ca_pem = match &config.tls_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read tls_ca {}", path.display()))?,
            ),
            None => None,
        };
        let sync_config = sync::SyncConfig {
            server_url: config.server_url.clone(),
            enrollment_token: config.token.clone().unwrap_or_default(),
            data_dir: config.data_dir.clone(),
            tls_ca_pem,
            agent_id: agent_id.clone(),
            registration,
            initial_backoff: config.reconnect.initial_backoff,
            max_backoff: config.reconnect.max_backoff,
            server_silence: config.reconnect.server_silence,
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let state_file = StateFile::new(config.state_file(), agent_id.to_string());
        let shutdown = CancellationToken::new();
        let hub = Arc::new(notify::NotifyHub::default());
        if config.backend == BackendKind::Vz && config.notify.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.notify.listen,
                "notify.listen is loopback, which macOS guests cannot reach: set it to 0.0.0.0:8081 (with a firewall rule for 192.168.64.0/24); see docs/macos.md"
            );
        }
        let (notify_addr, notify_task) =
            notify::serve(config.notify.listen, Arc::clone(&hub), shutdown.clone()).await?;
        let notify_url = notify_url(&config, backend.as_ref(), notify_addr)?;
        tracing::info!(listen = %notify_addr, guest_url = %notify_url, "guest notify endpoint listening");
        let http =
            guest_api::http_client().context("cannot build the HTTP client for guest APIs")?;
        let guest_channel = runner::GuestChannel {
            hub,
            notify_url,
            http,
        };
        let manager = RunnerManager::new(
            Arc::clone(&config),
            backend,
            templates,
            events_tx,
            state_file,
            guest_channel,
        );
        let sync_task = tokio::spawn(sync::run(
            sync_config,
            Arc::clone(&manager),
            events_rx,
            shutdown.clone(),
        ));
        tracing::info!(agent = %agent_id, server = %config.server_url, templates = manager.templates().len(), "shoes-vz agent started");
        Ok(RunningAgent {
            agent_id,
            manager,
            shutdown,
            sync_task,
            notify_task,
        })
    }

    /// Tears every runner down (reporting it while the link is up), then disconnects.
    pub async fn shutdown(self, wait: Duration) {
        self.manager.shutdown(wait).await;
        // Let the last deletions reach the server before the stream closes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.shutdown.cancel();
        let _ = self.sync_task.await;
        let _ = self.notify_task.await;
    }

    /// Stops at once, leaving VMs' bundles behind, as a crash would. For tests of recovery.
    pub async fn abandon(self) {
        self.shutdown.cancel();
        let _ = self.sync_task.await;
        let _ = self.notify_task.await;
        self.manager.abandon();
    }
}

/// The URL guests POST their notify to: configured, or the backend's host address as guests
/// see it with the bound port, or the listen address itself when it is a specific one.
fn notify_url(
    config: &AgentConfig,
    backend: &dyn Hypervisor,
    bound: std::net::SocketAddr,
) -> anyhow::Result<String> {
    if let Some(url) = &config.notify.guest_url {
        return Ok(url.clone());
    }
    let host = match backend.host_address_for_guests() {
        Some(ip) => ip,
        None if !bound.ip().is_unspecified() => bound.ip(),
        None => anyhow::bail!(
            "cannot tell how guests reach the notify endpoint on {bound}: set notify.guest_url (e.g. http://192.168.64.1:{}/v1/notify)",
            bound.port()
        ),
    };
    Ok(format!(
        "http://{}{}",
        std::net::SocketAddr::new(host, bound.port()),
        notify::NOTIFY_PATH
    ))
}

/// A bundle on disk at start has no live VM under this process: end what an earlier process
/// left running for it, then remove it.
async fn remove_leftover_bundles(config: &AgentConfig, backend: &dyn Hypervisor) {
    for dir in bundle::list(&config.runners_dir) {
        tracing::warn!(bundle = %dir.display(), "removing a runner bundle left by an earlier agent process");
        if let Err(error) = backend.clean_leftover(&dir).await {
            tracing::error!(bundle = %dir.display(), error = %error, "cannot end the leftover VM");
        }
        if let Err(error) = bundle::remove(&dir) {
            tracing::error!(bundle = %dir.display(), error = %error, "cannot remove the leftover bundle");
        }
    }
}

pub(crate) use shoes_vz_model::clock::{now_ms, unix_micros};

/// `error: cause: cause…` on one line, for errors that travel as text.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
