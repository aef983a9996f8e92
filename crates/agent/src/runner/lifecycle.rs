//! One task per runner: clone → boot → guest address → SSH ready → setup script started
//! (detached: it runs the GitHub runner for the job's whole life) → running → follow the job
//! until it finishes (then reclaim the VM at once) or the server deletes it. Every stage up to
//! running has a timeout; no timeout ends a job but the optional `max_job_duration`. Any
//! failure destroys the runner.

use super::guest::{wait_notice, GuestError, CONFIG_DISK_FILE};
use super::job::Verdict;
use super::steps::{Step, StepTimes};
use super::RunnerManager;
use crate::bundle::{self, Bundle, MachineIdentifier, RuntimeMetadata};
use crate::hypervisor::{HypervisorError, LinuxBootFiles, RestoreFrom, VmSpec};
use crate::ssh::{self, SshError, SshTarget};
use crate::template::Template;
use shoes_vz_guest_config::ConfigImage;
use shoes_vz_model::{RunnerId, RunnerName, RunnerState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the server asked for.
pub struct Work {
    pub runner_id: RunnerId,
    pub runner_name: RunnerName,
    pub template: Template,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Holds a GitHub registration token: handed to the guest over its private channel (or
    /// SSH stdin), never logged, never in argv.
    pub setup_script: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("deleted on request")]
    Cancelled,
    #[error("the VM stopped on its own: {0}")]
    VmExited(String),
    #[error("cloning the template did not finish within {0:?}")]
    CloneTimeout(Duration),
    #[error("cannot build the runner bundle")]
    Bundle(#[from] bundle::BundleError),
    #[error("cannot prepare SSH keys")]
    Keys(#[source] SshError),
    #[error("the hypervisor failed")]
    Hypervisor(#[from] HypervisorError),
    #[error("SSH never became ready")]
    SshNotReady(#[source] SshError),
    #[error("the setup script could not be started over SSH")]
    SetupTransport(#[source] SshError),
    #[error("the setup script could not be started within {0:?}")]
    SetupTimeout(Duration),
    #[error("{0}")]
    JobFailed(String),
    #[error("{0}")]
    SetupFailed(String),
    #[error("an internal task failed: {0}")]
    Internal(String),
    #[error("the host-guest channel failed")]
    Guest(#[from] GuestError),
}

impl LifecycleError {
    /// The step that failed, as the server counts failures (`running`: the runner had
    /// reached running, so a stopped VM is the job's failure).
    pub fn step(&self, running: bool) -> &'static str {
        match self {
            LifecycleError::CloneTimeout(_) | LifecycleError::Bundle(_) => "clone",
            LifecycleError::Hypervisor(_) | LifecycleError::Guest(GuestError::NoNotify(_)) => {
                "boot"
            }
            LifecycleError::Keys(_) | LifecycleError::SshNotReady(_) => "ssh",
            LifecycleError::SetupTransport(_)
            | LifecycleError::SetupTimeout(_)
            | LifecycleError::SetupFailed(_)
            | LifecycleError::Guest(GuestError::Setup(_)) => "setup",
            LifecycleError::JobFailed(_) => "job",
            LifecycleError::VmExited(_) if running => "job",
            LifecycleError::VmExited(_) => "boot",
            LifecycleError::Cancelled | LifecycleError::Internal(_) | LifecycleError::Guest(_) => {
                "other"
            }
        }
    }
}

impl RunnerManager {
    pub(super) async fn run_lifecycle(
        self: Arc<Self>,
        work: Work,
        cancel: CancellationToken,
        vm_exit: CancellationToken,
    ) {
        let runner_id = work.runner_id.clone();
        let bundle_dir = Bundle::path_for(&self.config.runners_dir, &runner_id);
        let outcome = tokio::select! {
            result = self.bring_up(&work) => result,
            _ = cancel.cancelled() => Err(LifecycleError::Cancelled),
            _ = vm_exit.cancelled() => Err(LifecycleError::VmExited(self.exit_detail(&runner_id))),
        };
        // Only a runner the server deleted while it was live gets a polite stop; a finished or
        // failed one is thrown away at once (its disks are discarded anyway).
        let mut graceful = false;
        match outcome {
            Ok(job) => {
                let end = tokio::select! {
                    _ = cancel.cancelled() => None,
                    _ = vm_exit.cancelled() => Some(Verdict::Failed(
                        LifecycleError::VmExited(self.exit_detail(&runner_id)).to_string(),
                    )),
                    verdict = self.follow_job(&runner_id, job) => Some(verdict),
                };
                match end {
                    None => graceful = true,
                    Some(Verdict::Finished(reason)) => {
                        tracing::info!(runner = %runner_id, reason = %reason, "runner finished; reclaiming its VM");
                        self.update(&runner_id, |view| view.end_reason = Some(reason));
                    }
                    Some(Verdict::Failed(reason)) => {
                        self.update(&runner_id, |view| view.end_reason = Some(reason.clone()));
                        self.fail(&runner_id, &LifecycleError::JobFailed(reason));
                    }
                    Some(Verdict::SetupFailed(reason)) => {
                        self.fail(&runner_id, &LifecycleError::SetupFailed(reason));
                    }
                    Some(Verdict::Continue) => graceful = true,
                }
            }
            Err(LifecycleError::Cancelled) => {}
            Err(error) => self.fail(&runner_id, &error),
        }
        self.tear_down(&runner_id, bundle_dir, graceful).await;
    }

    fn fail(&self, runner_id: &RunnerId, error: &LifecycleError) {
        let message = crate::error_chain(error);
        tracing::warn!(runner = %runner_id, error = %message, "runner failed; destroying it");
        self.update(runner_id, |view| {
            let running = view.state == RunnerState::Running;
            view.state = RunnerState::Error;
            view.error = Some(message);
            view.failure_step = Some(error.step(running));
        });
    }

    /// Brings the runner to running: its setup script started. Returns how to follow its job.
    async fn bring_up(&self, work: &Work) -> Result<super::guest::JobChannel, LifecycleError> {
        let id = &work.runner_id;
        let timeouts = &self.config.timeouts;
        let mut steps = StepTimes::new(id.clone());
        let (client_key, host_key) = steps
            .time_sync(Step::Keys, || -> Result<_, SshError> {
                Ok((
                    Arc::new(ssh::generate_ed25519()?),
                    Arc::new(ssh::generate_ed25519()?),
                ))
            })
            .map_err(LifecycleError::Keys)?;

        let identity = match &work.template.metadata.guest_agent {
            Some(agent) => {
                Some(self.guest_identity(id, &work.template, agent, &client_key, &host_key)?)
            }
            None => None,
        };
        // The config disk image is encoded while the template is cloned.
        let encoding = identity
            .clone()
            .map(|config| tokio::task::spawn_blocking(move || ConfigImage::encode(&config)));
        let bundle = steps.time(Step::Clone, self.clone_bundle(work)).await?;
        let image = match encoding {
            Some(task) => Some(
                steps
                    .time(Step::ConfigDisk, task)
                    .await
                    .map_err(|e| LifecycleError::Internal(e.to_string()))?
                    .map_err(GuestError::Disk)?,
            ),
            None => None,
        };
        let clone_ms = millis(bundle.clone_time);
        let mut runtime = RuntimeMetadata {
            runner_id: id.to_string(),
            runner_name: work.runner_name.to_string(),
            template: work.template.metadata.name.clone(),
            template_version: work.template.metadata.version.clone(),
            backend: self.hypervisor.kind().to_string(),
            vcpus: work.vcpus,
            memory_mib: work.memory_mib,
            created_at_ms: crate::now_ms(),
            ssh_user: work.template.metadata.ssh_user.clone(),
            clone_ms: Some(clone_ms),
            ..RuntimeMetadata::default()
        };
        let config_disk = bundle.dir.join(CONFIG_DISK_FILE);
        steps
            .time(Step::BundleFiles, {
                let bundle = bundle.clone();
                let runtime = runtime.clone();
                let client_key = Arc::clone(&client_key);
                let config_disk = config_disk.clone();
                blocking(move || {
                    if let Some(image) = image {
                        image
                            .write_ephemeral(&config_disk)
                            .map_err(GuestError::Disk)?;
                    }
                    // Kept so an operator can `ssh -i` into a live runner while debugging.
                    ssh::write_private_key_openssh(&client_key, &bundle.dir.join("id_ed25519"))
                        .map_err(LifecycleError::Keys)?;
                    bundle.write_runtime_metadata(&runtime)?;
                    Ok(())
                })
            })
            .await?;
        self.update(id, |view| {
            view.state = RunnerState::Booting;
            view.timings.clone_ms = Some(clone_ms);
        });
        let guest = identity.map(|config| self.expect_guest(id, config, config_disk));
        let prepare_ms = millis(steps.sum(&Step::PREPARE));
        let spec = VmSpec {
            runner_id: id.clone(),
            bundle_dir: bundle.dir.clone(),
            disk_files: bundle.disk_files.clone(),
            vcpus: work.vcpus,
            memory_mib: work.memory_mib,
            machine_identifier: bundle.machine_identifier,
            ssh_user: work.template.metadata.ssh_user.clone(),
            authorized_key: client_key.public_key().clone(),
            guest_host_key: Arc::clone(&host_key),
            linux_boot: LinuxBootFiles::from_template(&work.template),
            config_disk: guest.as_ref().map(|g| g.disk.clone()),
            restore: RestoreFrom::from_template(&work.template),
        };
        let boot_started = Instant::now();
        steps
            .time(Step::VmStart, self.hypervisor.start(&spec))
            .await?;
        let vm_start_ms = millis(steps.sum(&[Step::VmStart]));
        let endpoint = steps
            .time(
                Step::GuestEndpoint,
                self.hypervisor.guest_endpoint(id, timeouts.boot_to_ip),
            )
            .await?;
        if endpoint.restore_fell_back {
            self.update(id, |view| view.warm_start_fallback = true);
        }
        // The guest's address comes from its verified notify when it has a runner-agent; a
        // restored guest first gets this runner's identity, then notifies as this runner.
        let mut ip_address = endpoint.ip_address.clone();
        let mut guest_api: Option<crate::guest_api::GuestApi> = None;
        let mut refresh_ms = None;
        if let Some(mut guest) = guest {
            let remaining = timeouts.boot_to_ip.saturating_sub(boot_started.elapsed());
            if endpoint.restored {
                steps
                    .time(
                        Step::Refresh,
                        self.refresh_restored(
                            id,
                            &work.template,
                            endpoint.http_addr,
                            &guest.config,
                            remaining,
                        ),
                    )
                    .await?;
            }
            let remaining = timeouts.boot_to_ip.saturating_sub(boot_started.elapsed());
            let notice = steps
                .time(Step::Notice, wait_notice(&mut guest.notices, remaining))
                .await?;
            if endpoint.restored {
                refresh_ms = Some(millis(steps.sum(&[Step::Refresh, Step::Notice])));
                tracing::info!(runner = %id, after_boot = ?boot_started.elapsed(), "restored guest has the runner's identity");
            }
            if let Some(address) = notice.addresses.first() {
                ip_address.clone_from(address);
            }
            let http_addr = endpoint.http_addr.ok_or(GuestError::NoGuestApi)?;
            guest_api = Some(self.guest_api(http_addr, guest.config.api_token.clone()));
        }
        let boot_to_ip_ms = millis(boot_started.elapsed());
        runtime.ip_address = Some(ip_address.clone());
        runtime.ssh_address = Some(endpoint.ssh_addr.to_string());
        runtime.boot_to_ip_ms = Some(boot_to_ip_ms);
        runtime.prepare_ms = Some(prepare_ms);
        runtime.vm_start_ms = Some(vm_start_ms);
        runtime.refresh_ms = refresh_ms;
        save_runtime(&bundle, &runtime).await?;
        self.update(id, |view| {
            view.ip_address = Some(ip_address.clone());
            view.ssh_address = Some(endpoint.ssh_addr.to_string());
            view.timings.boot_to_ip_ms = Some(boot_to_ip_ms);
            view.timings.prepare_ms = Some(prepare_ms);
            view.timings.vm_start_ms = Some(vm_start_ms);
            view.timings.refresh_ms = refresh_ms;
        });

        let target = SshTarget {
            addr: endpoint.ssh_addr,
            user: work.template.metadata.ssh_user.clone(),
            client_key,
            expected_host_key: host_key.public_key().clone(),
        };
        let remaining = timeouts.boot_to_ssh.saturating_sub(boot_started.elapsed());
        let session = steps
            .time(Step::SshReady, ssh::wait_ready(&target, remaining))
            .await
            .map_err(LifecycleError::SshNotReady)?;
        let boot_to_ssh_ms = millis(boot_started.elapsed());
        tracing::debug!(runner = %id, steps = %steps.summary(), "runner start steps");
        runtime.boot_to_ssh_ms = Some(boot_to_ssh_ms);
        save_runtime(&bundle, &runtime).await?;
        self.set_access(
            id,
            super::access::Access {
                ssh: target.clone(),
                guest_api: guest_api.clone(),
            },
        );
        self.update(id, |view| {
            view.state = RunnerState::SshReady;
            view.timings.boot_to_ssh_ms = Some(boot_to_ssh_ms);
        });

        let setup_started = Instant::now();
        let job = self
            .start_setup(work, session, guest_api, target, timeouts.setup_start)
            .await?;
        let setup_ms = millis(setup_started.elapsed());
        runtime.setup_ms = Some(setup_ms);
        save_runtime(&bundle, &runtime).await?;
        self.update(id, |view| {
            view.state = RunnerState::Running;
            view.timings.setup_ms = Some(setup_ms);
        });
        Ok(job)
    }

    /// Clones the template into the runner's bundle, within the clone timeout.
    async fn clone_bundle(&self, work: &Work) -> Result<Bundle, LifecycleError> {
        let timeout = self.config.timeouts.clone;
        let template = work.template.clone();
        let runners_dir = self.config.runners_dir.clone();
        let runner_id = work.runner_id.clone();
        let mode = self.config.clone_mode;
        let building = tokio::task::spawn_blocking(move || {
            bundle::create(
                &template,
                &runners_dir,
                &runner_id,
                mode,
                MachineIdentifier::generate(),
            )
        });
        Ok(tokio::time::timeout(timeout, building)
            .await
            .map_err(|_| LifecycleError::CloneTimeout(timeout))?
            .map_err(|e| LifecycleError::Internal(e.to_string()))??)
    }

    async fn tear_down(
        &self,
        runner_id: &RunnerId,
        bundle_dir: std::path::PathBuf,
        graceful: bool,
    ) {
        self.update(runner_id, |view| view.state = RunnerState::TearingDown);
        self.forget_guest(runner_id);
        if let Err(error) = self
            .hypervisor
            .stop(
                runner_id,
                if graceful {
                    self.config.timeouts.stop
                } else {
                    Duration::ZERO
                },
            )
            .await
        {
            tracing::error!(runner = %runner_id, error = %error, "cannot stop the VM");
        }
        let removed = tokio::task::spawn_blocking(move || bundle::remove(&bundle_dir)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(runner = %runner_id, error = %error, "cannot remove the bundle")
            }
            Err(error) => {
                tracing::error!(runner = %runner_id, error = %error, "bundle removal task failed")
            }
        }
        self.finish(runner_id);
    }
}

/// Runs file work off the async workers, which every runner and the agent's connection share.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LifecycleError> + Send + 'static,
) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LifecycleError::Internal(e.to_string()))?
}

async fn save_runtime(bundle: &Bundle, runtime: &RuntimeMetadata) -> Result<(), LifecycleError> {
    let (bundle, runtime) = (bundle.clone(), runtime.clone());
    blocking(move || Ok(bundle.write_runtime_metadata(&runtime)?)).await
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
