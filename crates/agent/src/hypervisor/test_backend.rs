//! The test backend: a "VM" is a real SSH server on a loopback port that starts after a
//! configurable delay, so readiness and setup scripts run against real SSH.
//!
//! It isolates nothing: commands "in the guest" run on the host as the agent's user, in
//! the bundle's `guest-home` directory. Use it for tests, demos and scale runs only.

use super::{GuestEndpoint, Hypervisor, HypervisorError, VmEvent, VmSpec};
use crate::config::TestBackendConfig;
use crate::test_vm::{TestSshConfig, TestSshServer};
use shoes_vz_model::RunnerId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub struct TestBackend {
    config: TestBackendConfig,
    vms: Mutex<HashMap<RunnerId, TestVm>>,
    events: broadcast::Sender<VmEvent>,
}

struct TestVm {
    /// `None` while "booting"; the SSH address once the server answers.
    ssh_addr: watch::Receiver<Option<SocketAddr>>,
    boot: JoinHandle<Option<TestSshServer>>,
}

impl TestBackend {
    pub fn new(config: TestBackendConfig) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            config,
            vms: Mutex::new(HashMap::new()),
            events,
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
            let _ = self.events.send(VmEvent::Exited {
                runner_id: runner_id.clone(),
                detail: "simulated crash".into(),
            });
        }
    }
}

async fn shut_down(vm: TestVm) {
    vm.boot.abort();
    if let Ok(Some(server)) = vm.boot.await {
        server.shutdown().await;
    }
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
        let workdir = spec.bundle_dir.join("guest-home");
        std::fs::create_dir_all(&workdir).map_err(|source| HypervisorError::Io {
            path: workdir.clone(),
            source,
        })?;
        let (addr_tx, addr_rx) = watch::channel(None);
        let server_config = TestSshConfig {
            host_key: (*spec.guest_host_key).clone(),
            authorized_key: spec.authorized_key.clone(),
            user: spec.ssh_user.clone(),
            workdir,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let delay = self.config.boot_delay;
        let never_ready = self.config.never_ready;
        let runner_id = spec.runner_id.clone();
        let boot = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if never_ready {
                std::future::pending::<()>().await;
            }
            match TestSshServer::start(server_config).await {
                Ok(server) => {
                    addr_tx.send_replace(Some(server.local_addr()));
                    Some(server)
                }
                Err(error) => {
                    tracing::error!(runner = %runner_id, error = %error, "test VM could not start its SSH server");
                    None
                }
            }
        });
        self.vms().insert(
            spec.runner_id.clone(),
            TestVm {
                ssh_addr: addr_rx,
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
        let mut addr = self
            .vms()
            .get(runner_id)
            .map(|vm| vm.ssh_addr.clone())
            .ok_or_else(|| HypervisorError::UnknownVm(runner_id.clone()))?;
        let waited = tokio::time::timeout(timeout, addr.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(found)) => match *found {
                Some(ssh_addr) => Ok(GuestEndpoint {
                    ip_address: ssh_addr.ip().to_string(),
                    ssh_addr,
                }),
                None => Err(HypervisorError::UnknownVm(runner_id.clone())),
            },
            Ok(Err(_)) => Err(HypervisorError::Exited {
                runner_id: runner_id.clone(),
                detail: "the test VM's SSH server failed to start".into(),
            }),
            Err(_) => Err(HypervisorError::Timeout {
                runner_id: runner_id.clone(),
                what: "get an address",
                after: timeout,
            }),
        }
    }

    async fn stop(&self, runner_id: &RunnerId, _timeout: Duration) -> Result<(), HypervisorError> {
        let vm = self.vms().remove(runner_id);
        if let Some(vm) = vm {
            shut_down(vm).await;
        }
        Ok(())
    }

    async fn clean_leftover(&self, _bundle_dir: &Path) -> Result<(), HypervisorError> {
        // Test VMs live inside the agent process: none can outlive it.
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }
}
