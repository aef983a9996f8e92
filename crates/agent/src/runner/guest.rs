//! The runner's private channel to its guest: the config disk (identity and secrets for this
//! VM alone), the notify that tells the agent the guest is up, the identity refresh of a
//! restored warm VM, the detached setup script, and following the job to its end.

use super::job::{GuestRunner, JobTracker, Observation, SetupProgress, Verdict};
use super::lifecycle::{LifecycleError, Work};
use super::RunnerManager;
use crate::guest_api::{GuestApi, GuestApiError};
use crate::notify::GuestNotice;
use crate::ssh::{self, detached, SshSession, SshTarget};
use crate::template::{GuestAgent, Template};
use russh::keys::PrivateKey;
use shoes_vz_guest_config::{
    unix_ms_now, ApiToken, GuestConfig, OpenSshPrivateKey, FORMAT_VERSION,
};
use shoes_vz_model::RunnerId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const CONFIG_DISK_FILE: &str = "config.img";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot make the runner's API token")]
    Token(#[source] shoes_vz_guest_config::SecretError),
    #[error("cannot make the guest's SSH keys")]
    Keys(#[source] crate::ssh::SshError),
    #[error("cannot encode the guest's SSH host key")]
    HostKey(#[source] russh::keys::ssh_key::Error),
    #[error("cannot write the config disk")]
    Disk(#[source] shoes_vz_guest_config::ImageError),
    #[error("the guest did not notify within {0:?}; check that its runner-agent starts and reaches the notify URL")]
    NoNotify(Duration),
    #[error("the backend gives no address for the guest's runner-agent API")]
    NoGuestApi,
    #[error("cannot read the warm template's guest token {path}")]
    WarmToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the restored guest refused or missed its identity refresh")]
    Refresh(#[source] GuestApiError),
    #[error("the restored guest answered its refresh with a notice that does not verify")]
    ReplyNotice(#[source] shoes_vz_guest_config::NotifyError),
    #[error("the guest's runner-agent did not start the setup script")]
    Setup(#[source] GuestApiError),
}

/// How the agent follows a runner's job once its setup script runs.
pub enum JobChannel {
    /// The guest's runner-agent: the GitHub runner's state and the script's.
    Guest(GuestApi),
    /// No runner-agent: only the detached script's exit, asked over SSH.
    Ssh(Box<SshJob>),
}

pub struct SshJob {
    target: SshTarget,
    /// Reopened when the connection is lost.
    session: Option<SshSession>,
}

/// A runner's guest-side identity, written to its config disk.
pub struct GuestSetup {
    pub config: GuestConfig,
    pub disk: PathBuf,
    pub notices: watch::Receiver<Option<GuestNotice>>,
}

impl RunnerManager {
    /// The runner's guest identity (a fresh token; its SSH keys) as its config disk carries it.
    pub(super) fn guest_identity(
        &self,
        runner_id: &RunnerId,
        template: &Template,
        agent: &GuestAgent,
        client_key: &PrivateKey,
        host_key: &PrivateKey,
    ) -> Result<GuestConfig, GuestError> {
        let token = ApiToken::generate().map_err(GuestError::Token)?;
        let config = guest_config(
            runner_id.as_str(),
            token,
            &self.guest_channel.notify_url,
            &template.metadata.ssh_user,
            &agent.runner_dir,
            client_key.public_key(),
            host_key,
        )?;
        Ok(GuestConfig {
            host_time_ms: Some(unix_ms_now()),
            ..config
        })
    }

    /// Registers the runner for exactly one signed notice from the guest holding `config`,
    /// whose config disk is `disk`.
    pub(super) fn expect_guest(
        &self,
        runner_id: &RunnerId,
        config: GuestConfig,
        disk: PathBuf,
    ) -> GuestSetup {
        let notices = self
            .guest_channel
            .hub
            .register(runner_id, config.api_token.clone());
        GuestSetup {
            config,
            disk,
            notices,
        }
    }

    pub(super) fn forget_guest(&self, runner_id: &RunnerId) {
        self.guest_channel.hub.unregister(runner_id);
    }

    /// A restored guest still has the warm template's identity: hand it this runner's, with
    /// the warm token (kept in the template) as the authority. It then notifies as this runner.
    pub(super) async fn refresh_restored(
        &self,
        runner_id: &RunnerId,
        template: &Template,
        http_addr: Option<SocketAddr>,
        config: &GuestConfig,
        within: Duration,
    ) -> Result<(), GuestError> {
        // The backend knows which saved guest it restored (a vz warm slot has its own token);
        // otherwise the warm template holds it.
        let token_file = self
            .hypervisor
            .restored_guest_token_file(runner_id)
            .or_else(|| {
                template
                    .metadata
                    .saved_state
                    .as_ref()
                    .and_then(|s| s.guest_token_file.as_ref())
                    .map(|file| template.dir.join(file))
            });
        let Some(path) = token_file else {
            return Err(GuestError::WarmToken {
                path: template.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the warm template has no guestTokenFile",
                ),
            });
        };
        let text = std::fs::read_to_string(&path).map_err(|source| GuestError::WarmToken {
            path: path.clone(),
            source,
        })?;
        let warm_token = ApiToken::new(text.trim().to_string()).map_err(GuestError::Token)?;
        let api = match self.hypervisor.guest_channel(runner_id) {
            // The backend's private channel (vz: vsock): the secrets never cross a network.
            Some(channel) => GuestApi::over_channel(channel, warm_token),
            None => {
                let http_addr = http_addr.ok_or(GuestError::NoGuestApi)?;
                GuestApi::new(self.guest_channel.http.clone(), http_addr, warm_token)
            }
        };
        // The restored runner-agent answers at once, but its forwarded port may need a moment.
        let deadline = tokio::time::Instant::now() + within;
        let mut attempts = 0u32;
        // The notice in the answer spares the guest a notify while the host connects to it.
        let mut reply_notice = true;
        loop {
            attempts += 1;
            match api.refresh(config.clone(), reply_notice).await {
                Ok(report) => {
                    let guest = &report.install.timings;
                    tracing::debug!(runner = %runner_id, attempts, guest_took_us = report.took_us, files_us = guest.files_us, user_us = guest.user_us, authorized_keys_us = guest.authorized_keys_us, host_keys_us = guest.host_keys_us, post_cmd_us = guest.post_cmd_us, clock_us = guest.clock_us, notice_in_reply = report.notice.is_some(), "the guest took the runner's identity");
                    if let Some(notice) = report.notice {
                        // Verified exactly as a notify: signed with this runner's new token.
                        self.guest_channel
                            .hub
                            .accept(notice.body.as_bytes(), Some(&notice.signature))
                            .map_err(GuestError::ReplyNotice)?;
                    }
                    return Ok(());
                }
                Err(error) if reply_notice && error.is_bad_request() => {
                    tracing::debug!(runner = %runner_id, "the guest's runner-agent predates notices in the refresh answer; it will notify");
                    reply_notice = false;
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(GuestError::Refresh(error))
                }
                Err(error) => {
                    tracing::debug!(error = %crate::error_chain(&error), "refresh not accepted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub(super) fn guest_api(&self, addr: SocketAddr, token: ApiToken) -> GuestApi {
        GuestApi::new(self.guest_channel.http.clone(), addr, token)
    }

    /// Starts the setup script so that it outlives this connection: through the runner-agent
    /// (as root, its output in a bounded log in the guest) or, without one, detached over SSH.
    pub(super) async fn start_setup(
        &self,
        work: &Work,
        session: SshSession,
        guest_api: Option<GuestApi>,
        target: SshTarget,
        within: Duration,
    ) -> Result<JobChannel, LifecycleError> {
        let shell = work.template.metadata.setup_program().to_string();
        match guest_api {
            Some(api) => {
                session.close().await;
                let request = shoes_vz_runner_agent::SetupRequest {
                    script: work.setup_script.clone(),
                    shell: Some(shell),
                    user: None,
                };
                // Idempotent in the guest: an answer lost on the way is safe to ask again.
                let deadline = tokio::time::Instant::now() + within;
                let started = loop {
                    match api.start_setup(&request).await {
                        Ok(started) => break started,
                        Err(error) if tokio::time::Instant::now() >= deadline => {
                            return Err(GuestError::Setup(error).into())
                        }
                        Err(error) => {
                            tracing::debug!(runner = %work.runner_id, error = %crate::error_chain(&error), "setup not started yet; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                tracing::info!(runner = %work.runner_id, pid = started.status.pid, "setup script started in the guest");
                Ok(JobChannel::Guest(api))
            }
            None => {
                tokio::time::timeout(
                    within,
                    detached::start(&session, &shell, work.setup_script.as_bytes()),
                )
                .await
                .map_err(|_| LifecycleError::SetupTimeout(within))?
                .map_err(LifecycleError::SetupTransport)?;
                tracing::info!(runner = %work.runner_id, "setup script started over SSH");
                Ok(JobChannel::Ssh(Box::new(SshJob {
                    target,
                    session: Some(session),
                })))
            }
        }
    }

    /// Follows the job: reports the GitHub runner's state as it changes, and returns once the
    /// runner has done its work (when reclaiming finished runners) or failed. Never returns
    /// while the job runs, however long.
    pub(super) async fn follow_job(
        self: &Arc<Self>,
        runner_id: &RunnerId,
        mut job: JobChannel,
    ) -> Verdict {
        let mut tick = tokio::time::interval(self.config.guest_status_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker = JobTracker::new(std::time::Instant::now(), self.config.max_job_duration);
        let mut last_state: Option<GuestRunner> = None;
        let mut finished_reported = false;
        loop {
            tick.tick().await;
            let Some(seen) = observe(&mut job).await else {
                continue;
            };
            let verdict = tracker.observe(seen, std::time::Instant::now());
            if seen.runner.is_some() && seen.runner != last_state {
                last_state = seen.runner;
                let state = seen.runner.map(GuestRunner::as_str).unwrap_or_default();
                tracing::info!(runner = %runner_id, guest_runner_state = state, "guest runner state");
                let job_started = tracker.job_started.map(|_| crate::now_ms());
                let job_finished = tracker.job_finished.map(|_| crate::now_ms());
                self.update(runner_id, |view| {
                    view.guest_runner_state = Some(state.to_string());
                    if view.job_started_at_ms.is_none() {
                        view.job_started_at_ms = job_started;
                    }
                    if view.job_finished_at_ms.is_none() {
                        view.job_finished_at_ms = job_finished;
                    }
                });
            }
            match verdict {
                Verdict::Continue => {}
                Verdict::Finished(reason) if !self.config.reclaim_finished => {
                    if !finished_reported {
                        finished_reported = true;
                        tracing::info!(runner = %runner_id, reason = %reason, "runner finished; kept until deleted (reclaim_finished = false)");
                    }
                }
                verdict => return verdict,
            }
        }
    }
}

/// One look at the guest; `None` when it cannot be asked right now (it is tried again).
async fn observe(job: &mut JobChannel) -> Option<Observation> {
    match job {
        JobChannel::Guest(api) => match api.status().await {
            Ok(status) => Some(Observation {
                runner: GuestRunner::parse(status.runner.state.as_str()),
                configured: status.runner.configured,
                setup: match status.setup {
                    Some(setup) if setup.state == shoes_vz_runner_agent::SetupState::Exited => {
                        SetupProgress::Exited {
                            code: setup.exit_code,
                            signal: setup.signal,
                        }
                    }
                    _ => SetupProgress::Running,
                },
            }),
            Err(error) => {
                tracing::debug!(error = %crate::error_chain(&error), "guest status unavailable");
                None
            }
        },
        JobChannel::Ssh(job) => {
            let SshJob { target, session } = job.as_mut();
            if session.is_none() {
                *session = ssh::wait_ready(target, Duration::from_secs(10)).await.ok();
            }
            let polled = match session.as_ref() {
                Some(open) => detached::poll(open).await,
                None => return None,
            };
            match polled {
                Ok(state) => Some(Observation {
                    runner: None,
                    configured: false,
                    setup: match state {
                        detached::DetachedState::Running => SetupProgress::Running,
                        detached::DetachedState::Exited(code) => {
                            SetupProgress::Exited { code, signal: None }
                        }
                    },
                }),
                Err(error) => {
                    tracing::debug!(error = %crate::error_chain(&error), "cannot ask the guest over SSH; reconnecting");
                    *session = None;
                    None
                }
            }
        }
    }
}

/// A guest's config: its identity, the key to authorize, its host key, where to notify.
pub fn guest_config(
    runner_id: &str,
    token: ApiToken,
    notify_url: &str,
    ssh_user: &str,
    runner_dir: &str,
    authorized_key: &russh::keys::PublicKey,
    host_key: &PrivateKey,
) -> Result<GuestConfig, GuestError> {
    let host_pem = host_key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(GuestError::HostKey)?;
    Ok(GuestConfig {
        version: FORMAT_VERSION,
        runner_id: runner_id.to_string(),
        api_token: token,
        notify_url: notify_url.to_string(),
        ssh_user: ssh_user.to_string(),
        ssh_authorized_key: ssh::authorized_key_line(authorized_key),
        ssh_host_key: OpenSshPrivateKey::new(host_pem.to_string()).map_err(GuestError::Token)?,
        ssh_host_public_key: ssh::authorized_key_line(host_key.public_key()),
        http_listen: shoes_vz_guest_config::default_http_listen(),
        runner_dir: PathBuf::from(runner_dir),
        host_time_ms: None,
    })
}

/// A config for a guest whose keys nobody keeps (warming a template): only its token matters,
/// to authorize the `/refresh` that gives each restored clone its own identity. Its notify URL
/// (`http://HOST:9/…`) reaches nothing, on purpose.
pub fn throwaway_guest_config(
    notify_host: &str,
    ssh_user: &str,
    runner_dir: &str,
) -> Result<(GuestConfig, ApiToken), GuestError> {
    let token = ApiToken::generate().map_err(GuestError::Token)?;
    let client = ssh::generate_ed25519().map_err(GuestError::Keys)?;
    let host = ssh::generate_ed25519().map_err(GuestError::Keys)?;
    let config = guest_config(
        &format!("warm-{}", uuid::Uuid::new_v4().simple()),
        token.clone(),
        &format!("http://{notify_host}:9/v1/notify"),
        ssh_user,
        runner_dir,
        client.public_key(),
        &host,
    )?;
    Ok((config, token))
}

/// Waits for the runner's verified notify.
pub(super) async fn wait_notice(
    notices: &mut watch::Receiver<Option<GuestNotice>>,
    timeout: Duration,
) -> Result<GuestNotice, GuestError> {
    let waited = tokio::time::timeout(timeout, notices.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(notice)) => notice.clone().ok_or(GuestError::NoNotify(timeout)),
        _ => Err(GuestError::NoNotify(timeout)),
    }
}
