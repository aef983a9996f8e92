//! What the agent knows of each runner, and how it is reported: to the server (protobuf) and
//! to external readers (`runner-state.json`).

use serde::Serialize;
use shoes_vz_model::{RunnerId, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTimes {
    pub clone_ms: Option<u64>,
    pub boot_to_ip_ms: Option<u64>,
    pub boot_to_ssh_ms: Option<u64>,
    pub setup_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    pub runner_id: RunnerId,
    pub runner_name: String,
    pub template: String,
    pub state: RunnerState,
    pub ip_address: Option<String>,
    pub ssh_address: Option<String>,
    pub error: Option<String>,
    pub guest_runner_state: Option<String>,
    pub created_at_ms: i64,
    pub timings: PhaseTimes,
    /// A warm restore failed and the VM booted cold.
    pub warm_start_fallback: bool,
    /// Why the runner ended on its own (its job finished, its setup script failed…).
    pub end_reason: Option<String>,
    pub job_started_at_ms: Option<i64>,
    pub job_finished_at_ms: Option<i64>,
    /// The step that failed, for the server's failure counts.
    pub failure_step: Option<&'static str>,
}

impl RunnerView {
    pub fn to_status(&self) -> pb::RunnerStatus {
        pb::RunnerStatus {
            runner_id: self.runner_id.to_string(),
            state: state_to_pb(self.state) as i32,
            ip_address: self.ip_address.clone().unwrap_or_default(),
            error: self.error.clone().unwrap_or_default(),
            timings: Some(pb::PhaseTimings {
                clone_ms: self.timings.clone_ms.unwrap_or(0),
                boot_to_ip_ms: self.timings.boot_to_ip_ms.unwrap_or(0),
                boot_to_ssh_ms: self.timings.boot_to_ssh_ms.unwrap_or(0),
                setup_ms: self.timings.setup_ms.unwrap_or(0),
            }),
            guest_runner_state: self.guest_runner_state.clone().unwrap_or_default(),
            warm_start_fallback: self.warm_start_fallback,
            end_reason: self.end_reason.clone().unwrap_or_default(),
            job_started_at_ms: unix_ms(self.job_started_at_ms),
            job_finished_at_ms: unix_ms(self.job_finished_at_ms),
            failure_step: self.failure_step.unwrap_or_default().to_string(),
        }
    }
}

fn unix_ms(at: Option<i64>) -> u64 {
    at.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0)
}

pub fn state_to_pb(state: RunnerState) -> pb::RunnerState {
    match state {
        RunnerState::Creating => pb::RunnerState::Creating,
        RunnerState::Booting => pb::RunnerState::Booting,
        RunnerState::SshReady => pb::RunnerState::SshReady,
        RunnerState::Running => pb::RunnerState::Running,
        RunnerState::TearingDown => pb::RunnerState::TearingDown,
        RunnerState::Error => pb::RunnerState::Error,
        RunnerState::Deleted => pb::RunnerState::Deleted,
    }
}

/// A status for a runner the agent does not have (so the server can let it go).
pub fn gone_status(runner_id: &str) -> pb::RunnerStatus {
    pb::RunnerStatus {
        runner_id: runner_id.to_string(),
        state: pb::RunnerState::Deleted as i32,
        ..Default::default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateFileBody<'a> {
    agent_id: &'a str,
    updated_at_ms: i64,
    server: ServerLink,
    runners: Vec<&'a RunnerView>,
}

/// Whether the agent's link to the server is up, and since when (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerLink {
    pub connected: bool,
    pub since_ms: i64,
}

/// `runner-state.json`: the agent's runners and its server link for external readers,
/// rewritten atomically.
pub struct StateFile {
    path: PathBuf,
    agent_id: String,
    link: std::sync::Mutex<ServerLink>,
}

impl StateFile {
    pub fn new(path: PathBuf, agent_id: String) -> Self {
        Self {
            path,
            agent_id,
            link: std::sync::Mutex::new(ServerLink {
                connected: false,
                since_ms: crate::now_ms(),
            }),
        }
    }

    /// Returns whether the link's state changed.
    pub fn set_server_link(&self, connected: bool) -> bool {
        let mut link = self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if link.connected == connected {
            return false;
        }
        *link = ServerLink {
            connected,
            since_ms: crate::now_ms(),
        };
        true
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write<'a>(&self, runners: impl Iterator<Item = &'a RunnerView>) {
        let mut runners: Vec<&RunnerView> = runners.collect();
        runners.sort_by_key(|r| r.created_at_ms);
        let server = *self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let body = StateFileBody {
            agent_id: &self.agent_id,
            updated_at_ms: crate::now_ms(),
            server,
            runners,
        };
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(error) = crate::fsutil::write_json_atomic(&self.path, &body) {
            tracing::warn!(path = %self.path.display(), error = %error, "cannot write the runner state file");
        }
    }
}
