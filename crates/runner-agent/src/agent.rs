//! The daemon: boot (config → identity → HTTP → notify), `/refresh`, shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoes_vz_guest_config::{find_config_device, read_image, ApiToken, GuestConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::exec::ExecLimits;
use crate::identity::{self, IdentityError, IdentityOptions, InstallReport};
use crate::notify::{self, Accepted, NotifyFailure, NotifyOptions, NotifyTarget};
use crate::setup::{SetupOptions, Setups};

const CONFIG_RETRY_DELAY: Duration = Duration::from_millis(500);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the daemon is told from outside the config disk.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The config disk (device or image file); `None` searches the block devices.
    pub config_device: Option<PathBuf>,
    pub identity: IdentityOptions,
    /// Overrides the config's `http_listen`.
    pub listen: Option<SocketAddr>,
    /// How long boot waits for the config disk to appear and read cleanly.
    pub config_wait: Duration,
    pub notify: NotifyOptions,
    pub exec: ExecLimits,
    /// `/exec` requests running at once; more are refused with 429.
    pub max_concurrent_execs: usize,
    pub setup: SetupOptions,
    /// Also serve the API on this vsock port (macOS guests under vz: `crate::vsock`).
    pub vsock_port: Option<u32>,
    /// The HTTP client for notifies, when the caller has one to share (the test backend runs
    /// many runner-agents in one process); else one is built (it loads the TLS roots).
    pub notify_client: Option<reqwest::Client>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            config_device: None,
            identity: IdentityOptions::default(),
            listen: None,
            config_wait: Duration::from_secs(60),
            notify: NotifyOptions::default(),
            exec: ExecLimits::default(),
            max_concurrent_execs: 8,
            setup: SetupOptions::default(),
            vsock_port: None,
            notify_client: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no usable config disk after {waited:?}")]
    NotFound {
        waited: Duration,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the config reader stopped unexpectedly")]
    Join(#[source] tokio::task::JoinError),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not read the runner's config")]
    Load(#[from] LoadError),
    #[error("could not install the runner's identity")]
    Identity(#[from] IdentityError),
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Notify(#[from] NotifyFailure),
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the new config is invalid")]
    Invalid(#[source] shoes_vz_guest_config::ConfigError),
    #[error("could not read the new config")]
    Load(#[from] LoadError),
    #[error("could not install the new identity; the old token stays in force")]
    Identity(#[from] IdentityError),
    #[error("could not sign the new identity's notice; the old token stays in force")]
    Notice(#[source] shoes_vz_guest_config::NotifyError),
}

/// Reads the config from `device`, or from the first config disk found, retrying for up to
/// `wait` (disks can appear a little after the daemon starts).
pub async fn load_config(
    device: Option<&Path>,
    wait: Duration,
) -> Result<(GuestConfig, PathBuf), LoadError> {
    let started = Instant::now();
    loop {
        let device = device.map(Path::to_path_buf);
        let attempt = tokio::task::spawn_blocking(
            move || -> Result<(GuestConfig, PathBuf), Box<dyn std::error::Error + Send + Sync>> {
                let path = match device {
                    Some(path) => path,
                    None => find_config_device()?,
                };
                let config = read_image(&path)?;
                Ok((config, path))
            },
        )
        .await
        .map_err(LoadError::Join)?;
        match attempt {
            Ok(found) => return Ok(found),
            Err(source) if started.elapsed() >= wait => {
                return Err(LoadError::NotFound {
                    waited: started.elapsed(),
                    source,
                })
            }
            Err(err) => {
                debug!(error = %err, "config disk not readable yet; retrying");
                tokio::time::sleep(CONFIG_RETRY_DELAY).await;
            }
        }
    }
}

/// Where the host's notify stands, for `/status` and for callers of the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyState {
    Pending,
    Accepted,
    Failed,
    /// Handed to the host in the answer to its `/refresh` instead of sent (no notify runs).
    Replied,
}

/// State shared by the HTTP handlers and the notify task.
pub(crate) struct Shared {
    pub(crate) opts: AgentOptions,
    config: RwLock<Arc<GuestConfig>>,
    pub(crate) http_port: u16,
    pub(crate) exec_slots: Arc<Semaphore>,
    notifier: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    refresh_lock: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    shutdown: CancellationToken,
    pub(crate) notify_state: watch::Sender<NotifyState>,
    pub(crate) setups: Setups,
}

impl Shared {
    pub(crate) fn config(&self) -> Arc<GuestConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn token(&self) -> ApiToken {
        self.config().api_token.clone()
    }

    fn notify_target(&self, config: &GuestConfig) -> NotifyTarget {
        NotifyTarget {
            runner_id: config.runner_id.clone(),
            token: config.api_token.clone(),
            url: config.notify_url.clone(),
            http_port: self.http_port,
        }
    }

    /// Ends an earlier identity's notify, if one still runs.
    fn stop_notify(&self) {
        let previous = self
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((old_cancel, old_task)) = previous {
            old_cancel.cancel();
            old_task.abort();
        }
    }

    /// (Re)starts notifying the host as `config`'s runner, cancelling an earlier notify.
    fn start_notify(self: &Arc<Self>, config: &GuestConfig) {
        let cancel = self.shutdown.child_token();
        let target = self.notify_target(config);
        let shared = Arc::clone(self);
        let task_cancel = cancel.clone();
        self.notify_state.send_replace(NotifyState::Pending);
        let task = tokio::spawn(async move {
            let outcome = notify::notify_until_accepted(
                &shared.client,
                &target,
                &shared.opts.notify,
                &task_cancel,
            )
            .await;
            match outcome {
                Ok(_) => {
                    shared.notify_state.send_replace(NotifyState::Accepted);
                }
                Err(NotifyFailure::Cancelled) => {}
                Err(err) => {
                    error!(runner_id = %target.runner_id, error = %err, "giving up notifying the host");
                    shared.notify_state.send_replace(NotifyState::Failed);
                }
            }
        });
        let previous = self
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace((cancel, task));
        if let Some((old_cancel, old_task)) = previous {
            old_cancel.cancel();
            old_task.abort();
        }
    }

    /// Swaps in a new identity: the token changes only after everything is installed.
    /// With `reply_notice` the signed notice goes back in the answer (the caller is the host,
    /// on its private channel) and no notify is sent; without, the runner-agent notifies.
    pub(crate) async fn refresh(
        self: &Arc<Self>,
        source: RefreshSource,
        reply_notice: bool,
    ) -> Result<RefreshReport, RefreshError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let started = Instant::now();
        let config = match source {
            RefreshSource::Inline(config) => {
                config.validate().map_err(RefreshError::Invalid)?;
                *config
            }
            RefreshSource::Device(path) => load_config(Some(&path), Duration::ZERO).await?.0,
            RefreshSource::Default => {
                load_config(self.opts.config_device.as_deref(), Duration::ZERO)
                    .await?
                    .0
            }
        };
        let install = identity::install(&config, &self.opts.identity).await?;
        let signed = if reply_notice {
            Some(
                notify::signed_notice(&self.notify_target(&config))
                    .map_err(RefreshError::Notice)?,
            )
        } else {
            None
        };
        let old = self.config();
        if config.http_listen != old.http_listen && self.opts.listen.is_none() {
            warn!(old = %old.http_listen, new = %config.http_listen, "a refresh cannot move the HTTP listener; keeping the old address");
        }
        info!(old_runner_id = %old.runner_id, runner_id = %config.runner_id, "identity refreshed");
        self.setups.adopt(&config.runner_id);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config.clone());
        let notice = match signed {
            Some(signed) => {
                self.stop_notify();
                self.notify_state.send_replace(NotifyState::Replied);
                Some(ReplyNotice {
                    body: String::from_utf8_lossy(&signed.body).into_owned(),
                    signature: signed.signature,
                })
            }
            None => {
                self.start_notify(&config);
                None
            }
        };
        let took_us = identity::micros(started.elapsed());
        debug!(took_us, "refresh handled");
        Ok(RefreshReport {
            runner_id: config.runner_id,
            install,
            took_us,
            notice,
        })
    }
}

/// Where `/refresh` takes the new config from.
pub(crate) enum RefreshSource {
    Inline(Box<GuestConfig>),
    Device(PathBuf),
    Default,
}

/// What `/refresh` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshReport {
    pub runner_id: String,
    pub install: InstallReport,
    /// The whole refresh in the guest, in microseconds (0 from older runner-agents).
    #[serde(default)]
    pub took_us: u64,
    /// The signed notice, when the request asked for it in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<ReplyNotice>,
}

/// A notify's body and signature, handed back in an answer instead of sent: the host verifies
/// it exactly as a notify (`shoes_vz_guest_config::NotifyVerifier`).
#[derive(Clone, Serialize, Deserialize)]
pub struct ReplyNotice {
    /// The notify's JSON body, as signed.
    pub body: String,
    pub signature: String,
}

impl std::fmt::Debug for ReplyNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing secret, but a signature is no use in a log.
        f.debug_struct("ReplyNotice")
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// A running runner-agent: HTTP API served, notify under way. Stops on
/// [`shutdown`](Self::shutdown) or when dropped.
pub struct RunningAgent {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    config_device: PathBuf,
    server: Option<JoinHandle<()>>,
    /// The API on vsock (`vsock_port`); stops with `shared.shutdown`.
    vsock_server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("local_addr", &self.local_addr)
            .field("runner_id", &self.shared.config().runner_id)
            .finish_non_exhaustive()
    }
}

impl RunningAgent {
    /// Boots: reads the config disk, installs the identity, starts the HTTP API, then
    /// notifies the host in the background.
    pub async fn start(opts: AgentOptions) -> Result<RunningAgent, StartError> {
        let (config, config_device) =
            load_config(opts.config_device.as_deref(), opts.config_wait).await?;
        info!(runner_id = %config.runner_id, device = %config_device.display(), "read the config disk");
        identity::install(&config, &opts.identity).await?;

        let addr = opts.listen.unwrap_or(config.http_listen);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        info!(addr = %local_addr, "HTTP API listening");

        let (notify_state, _) = watch::channel(NotifyState::Pending);
        let shutdown = CancellationToken::new();
        let setups = Setups::new(&opts.identity.root, opts.setup.clone(), shutdown.clone());
        setups.adopt(&config.runner_id);
        let client = match opts.notify_client.clone() {
            Some(client) => client,
            None => notify::client()?,
        };
        let shared = Arc::new(Shared {
            exec_slots: Arc::new(Semaphore::new(opts.max_concurrent_execs.max(1))),
            opts,
            config: RwLock::new(Arc::new(config.clone())),
            http_port: local_addr.port(),
            notifier: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            client,
            shutdown,
            notify_state,
            setups,
        });
        let router = crate::http::router(Arc::clone(&shared));
        let vsock_server = shared
            .opts
            .vsock_port
            .and_then(|port| crate::vsock::start(port, router.clone(), shared.shutdown.clone()));
        let stop = shared.shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(err) = served {
                error!(error = %err, "HTTP server failed");
            }
        });
        shared.start_notify(&config);
        Ok(RunningAgent {
            shared,
            local_addr,
            config_device,
            server: Some(server),
            vsock_server,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The device or file the config was read from at boot.
    pub fn config_device(&self) -> &Path {
        &self.config_device
    }

    pub fn runner_id(&self) -> String {
        self.shared.config().runner_id.clone()
    }

    /// Follows the notify's progress.
    pub fn notify_state(&self) -> watch::Receiver<NotifyState> {
        self.shared.notify_state.subscribe()
    }

    /// Resolves when the server stops on its own (it should not) or `shutdown` is called.
    pub async fn wait(&mut self) {
        if let Some(server) = self.server.as_mut() {
            let _ = server.await;
            self.server = None;
        }
    }

    /// Stops the notify and the HTTP server, waiting briefly for requests in flight
    /// (running `/exec` commands are killed with their handlers).
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
                warn!("HTTP requests still running at shutdown; dropping them");
                abort.abort();
            }
        }
        if let Some(vsock) = self.vsock_server.take() {
            let abort = vsock.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, vsock).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(vsock) = self.vsock_server.take() {
            vsock.abort();
        }
    }
}

/// `--once`: boot as usual but, instead of serving, notify until accepted and return.
/// `http_port` in the notify is the configured (or `--listen`) port.
pub async fn run_once(opts: AgentOptions) -> Result<Accepted, StartError> {
    let (config, device) = load_config(opts.config_device.as_deref(), opts.config_wait).await?;
    info!(runner_id = %config.runner_id, device = %device.display(), "read the config disk");
    identity::install(&config, &opts.identity).await?;
    let target = NotifyTarget {
        runner_id: config.runner_id.clone(),
        token: config.api_token.clone(),
        url: config.notify_url.clone(),
        http_port: opts.listen.unwrap_or(config.http_listen).port(),
    };
    let client = notify::client()?;
    let never = CancellationToken::new();
    Ok(notify::notify_until_accepted(&client, &target, &opts.notify, &never).await?)
}
