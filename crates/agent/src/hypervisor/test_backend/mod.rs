//! The test backend: a "VM" is a real SSH server on a loopback port that starts after a
//! configurable delay, so readiness and setup scripts run against real SSH. When the runner
//! has a config disk, the guest side is the real runner-agent (in-process, under a fake root
//! in the bundle): it reads the disk, installs the SSH keys the SSH server then uses, serves
//! its API and notifies the agent, so the whole host↔guest handshake runs in the fast tests.
//!
//! It isolates nothing: commands "in the guest" run on the host as the agent's user, in the
//! bundle's `guest-root/home/<user>` (`SHOESVZ_GUEST_ROOT` in their environment names the
//! fake root). Use it for tests, demos and scale runs only.
//!
//! Every process it starts for a runner is marked ([`marked`]), so stopping the "VM" ends
//! them all, even detached ones, and an agent restarted after `kill -9` ends what the dead
//! one left running.

pub mod marked;

use super::{GuestEndpoint, Hypervisor, HypervisorError, VmEvent, VmSpec};
use crate::config::TestBackendConfig;
use crate::test_vm::{TestSshConfig, TestSshServer};
use russh::keys::{PrivateKey, PublicKey};
use shoes_vz_model::RunnerId;
use shoes_vz_runner_agent::identity::IdentityOptions;
use shoes_vz_runner_agent::{AgentOptions, RunningAgent as GuestAgent, SetupOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub struct TestBackend {
    config: TestBackendConfig,
    vms: Mutex<HashMap<RunnerId, TestVm>>,
    events: broadcast::Sender<VmEvent>,
    /// One notify client for every guest's runner-agent (each would load the TLS roots).
    notify_client: OnceLock<Option<reqwest::Client>>,
}

#[derive(Debug, Clone, Copy)]
struct Endpoints {
    ssh: SocketAddr,
    http: Option<SocketAddr>,
}

/// What a booted test guest runs.
struct Guest {
    ssh: TestSshServer,
    agent: Option<GuestAgent>,
}

struct TestVm {
    /// `None` while "booting"; the addresses once the guest answers.
    endpoints: watch::Receiver<Option<Endpoints>>,
    boot: JoinHandle<Option<Guest>>,
}

impl TestBackend {
    pub fn new(config: TestBackendConfig) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            config,
            vms: Mutex::new(HashMap::new()),
            events,
            notify_client: OnceLock::new(),
        }
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, HashMap<RunnerId, TestVm>> {
        match self.vms.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Simulates a guest crash (for tests of the unexpected-exit path).
    pub async fn crash(&self, runner_id: &RunnerId) {
        let vm = self.vms().remove(runner_id);
        if let Some(vm) = vm {
            shut_down(vm).await;
            marked::kill_all(runner_id).await;
            let _ = self.events.send(VmEvent::Exited {
                runner_id: runner_id.clone(),
                detail: "simulated crash".into(),
            });
        }
    }
}

async fn shut_down(vm: TestVm) {
    vm.boot.abort();
    if let Ok(Some(guest)) = vm.boot.await {
        guest.ssh.shutdown().await;
        if let Some(agent) = guest.agent {
            agent.shutdown().await;
        }
    }
}

/// A fake root for the guest: `/etc/passwd` naming the runner user as the agent's own uid.
fn make_guest_root(root: &Path, user: &str) -> std::io::Result<PathBuf> {
    let home = root.join("home").join(user);
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(root.join("etc"))?;
    let owner = std::fs::metadata(&home)?;
    let passwd = format!(
        "{user}:x:{uid}:{gid}:{user}:/home/{user}:/bin/sh\n",
        uid = owner.uid(),
        gid = owner.gid()
    );
    std::fs::write(root.join("etc/passwd"), passwd)?;
    Ok(home)
}

/// Boots the guest side: the runner-agent (when there is a config disk) installs the keys the
/// SSH server then serves with, as sshd would read them in a real guest.
async fn boot_guest(
    mut ssh: TestSshConfig,
    root: PathBuf,
    config_disk: Option<PathBuf>,
    notify_client: Option<reqwest::Client>,
) -> Result<(Guest, Endpoints), String> {
    let env = ssh.env.clone();
    let mut agent = None;
    if let Some(disk) = config_disk {
        let options = AgentOptions {
            config_device: Some(disk),
            identity: IdentityOptions {
                root: root.clone(),
                ..IdentityOptions::default()
            },
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            config_wait: Duration::from_secs(5),
            setup: SetupOptions {
                extra_env: env,
                ..SetupOptions::default()
            },
            notify_client,
            ..AgentOptions::default()
        };
        let started = GuestAgent::start(options)
            .await
            .map_err(|e| format!("the runner-agent did not start: {}", crate::error_chain(&e)))?;
        let host_key = std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key"))
            .map_err(|e| format!("the runner-agent installed no host key: {e}"))?;
        ssh.host_key = PrivateKey::from_openssh(&host_key)
            .map_err(|e| format!("bad installed host key: {e}"))?;
        let authorized = std::fs::read_to_string(
            root.join("home")
                .join(&ssh.user)
                .join(".ssh/authorized_keys"),
        )
        .map_err(|e| format!("the runner-agent installed no authorized key: {e}"))?;
        let line = authorized.lines().next().unwrap_or_default();
        ssh.authorized_key = PublicKey::from_openssh(line)
            .map_err(|e| format!("bad installed authorized key: {e}"))?;
        agent = Some(started);
    }
    let server = TestSshServer::start(ssh)
        .await
        .map_err(|e| format!("the SSH server did not start: {e}"))?;
    let endpoints = Endpoints {
        ssh: server.local_addr(),
        http: agent.as_ref().map(GuestAgent::local_addr),
    };
    Ok((Guest { ssh: server, agent }, endpoints))
}

#[async_trait::async_trait]
impl Hypervisor for TestBackend {
    fn kind(&self) -> &'static str {
        "test"
    }

    async fn start(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        if self.vms().contains_key(&spec.runner_id) {
            return Err(HypervisorError::AlreadyRunning(spec.runner_id.clone()));
        }
        let root = spec.bundle_dir.join("guest-root");
        let workdir =
            make_guest_root(&root, &spec.ssh_user).map_err(|source| HypervisorError::Io {
                path: root.clone(),
                source,
            })?;
        let (endpoints_tx, endpoints_rx) = watch::channel(None);
        let ssh = TestSshConfig {
            host_key: (*spec.guest_host_key).clone(),
            authorized_key: spec.authorized_key.clone(),
            user: spec.ssh_user.clone(),
            workdir,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            env: vec![
                marked::marker(&spec.runner_id),
                (
                    "SHOESVZ_GUEST_ROOT".to_string(),
                    root.to_string_lossy().into_owned(),
                ),
            ],
        };
        let delay = self.config.boot_delay;
        let never_ready = self.config.never_ready;
        let runner_id = spec.runner_id.clone();
        let config_disk = spec.config_disk.clone();
        let notify_client = self
            .notify_client
            .get_or_init(|| shoes_vz_runner_agent::notify::client().ok())
            .clone();
        let boot = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if never_ready {
                std::future::pending::<()>().await;
            }
            match boot_guest(ssh, root, config_disk, notify_client).await {
                Ok((guest, endpoints)) => {
                    endpoints_tx.send_replace(Some(endpoints));
                    Some(guest)
                }
                Err(error) => {
                    tracing::error!(runner = %runner_id, error = %error, "test VM failed to boot");
                    None
                }
            }
        });
        self.vms().insert(
            spec.runner_id.clone(),
            TestVm {
                endpoints: endpoints_rx,
                boot,
            },
        );
        Ok(())
    }

    async fn guest_endpoint(
        &self,
        runner_id: &RunnerId,
        timeout: Duration,
    ) -> Result<GuestEndpoint, HypervisorError> {
        let mut endpoints = self
            .vms()
            .get(runner_id)
            .map(|vm| vm.endpoints.clone())
            .ok_or_else(|| HypervisorError::UnknownVm(runner_id.clone()))?;
        let waited = tokio::time::timeout(timeout, endpoints.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(found)) => match *found {
                Some(found) => Ok(GuestEndpoint {
                    ip_address: found.ssh.ip().to_string(),
                    ssh_addr: found.ssh,
                    http_addr: found.http,
                    restored: false,
                    restore_fell_back: false,
                }),
                None => Err(HypervisorError::UnknownVm(runner_id.clone())),
            },
            Ok(Err(_)) => Err(HypervisorError::Exited {
                runner_id: runner_id.clone(),
                detail: "the test VM failed to boot (see the agent's log)".into(),
            }),
            Err(_) => Err(HypervisorError::Timeout {
                runner_id: runner_id.clone(),
                what: "get an address",
                after: timeout,
            }),
        }
    }

    async fn stop(&self, runner_id: &RunnerId, timeout: Duration) -> Result<(), HypervisorError> {
        // A graceful stop takes as long as a guest's shutdown would.
        tokio::time::sleep(self.config.stop_delay.min(timeout)).await;
        let vm = self.vms().remove(runner_id);
        if let Some(vm) = vm {
            shut_down(vm).await;
        }
        // What left the VM's process groups (a detached setup script and its runner).
        marked::kill_all(runner_id).await;
        Ok(())
    }

    async fn clean_leftover(&self, bundle_dir: &Path) -> Result<(), HypervisorError> {
        // The SSH server and the runner-agent died with the old agent process; what they
        // started may not have.
        let runner_id = bundle_dir
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(crate::bundle::BUNDLE_SUFFIX))
            .and_then(|id| RunnerId::parse(id).ok());
        if let Some(runner_id) = runner_id {
            let killed = marked::kill_all(&runner_id).await;
            if killed > 0 {
                tracing::warn!(runner = %runner_id, killed, "ended processes an earlier agent left running");
            }
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }

    fn host_address_for_guests(&self) -> Option<std::net::IpAddr> {
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    }
}
