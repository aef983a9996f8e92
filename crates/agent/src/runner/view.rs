//! What the agent knows of each runner, and how it is reported: to the server (protobuf) and
//! to external readers (`runner-state.json`).

use serde::Serialize;
use shoes_vz_model::{RunnerId, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTimes {
    pub clone_ms: Option<u64>,
    pub boot_to_ip_ms: Option<u64>,
    pub boot_to_ssh_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub prepare_ms: Option<u64>,
    pub vm_start_ms: Option<u64>,
    pub refresh_ms: Option<u64>,
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
                prepare_ms: self.timings.prepare_ms.unwrap_or(0),
                vm_start_ms: self.timings.vm_start_ms.unwrap_or(0),
                refresh_ms: self.timings.refresh_ms.unwrap_or(0),
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

/// What the file says next, numbered so a flush knows when it is on disk.
#[derive(Clone)]
struct Snapshot {
    seq: u64,
    runners: Vec<RunnerView>,
    server: ServerLink,
}

/// `runner-state.json`: the agent's runners and its server link for external readers,
/// rewritten atomically by a background writer. Runners change state several times during a
/// start, under the manager's lock; the writer takes the newest snapshot each time it is free,
/// so a burst of changes costs one write and no runner waits on the disk.
pub struct StateFile {
    path: PathBuf,
    /// The newest snapshot. The writer ends when this is dropped.
    latest: watch::Sender<Snapshot>,
    /// The number of the last snapshot on disk.
    written: watch::Receiver<u64>,
}

impl StateFile {
    /// Starts the writer; call from within the agent's runtime.
    pub fn new(path: PathBuf, agent_id: String) -> Self {
        let (latest, mut snapshots) = watch::channel(Snapshot {
            seq: 0,
            runners: Vec::new(),
            server: ServerLink {
                connected: false,
                since_ms: crate::now_ms(),
            },
        });
        let (written_tx, written) = watch::channel(0u64);
        let file = path.clone();
        tokio::spawn(async move {
            // Ends once the StateFile is gone and its last snapshot is written.
            while snapshots.changed().await.is_ok() {
                let snapshot = snapshots.borrow_and_update().clone();
                let (file, agent_id) = (file.clone(), agent_id.clone());
                let seq = snapshot.seq;
                let _ = tokio::task::spawn_blocking(move || write_now(&file, &agent_id, snapshot))
                    .await;
                written_tx.send_replace(seq);
            }
        });
        Self {
            path,
            latest,
            written,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records whether the server link is up (written with the next snapshot); returns
    /// whether it changed.
    pub fn set_server_link(&self, connected: bool) -> bool {
        self.latest.send_if_modified(|snapshot| {
            if snapshot.server.connected == connected {
                return false;
            }
            snapshot.server = ServerLink {
                connected,
                since_ms: crate::now_ms(),
            };
            snapshot.seq += 1;
            true
        })
    }

    /// Hands the writer a new snapshot; returns at once.
    pub fn write<'a>(&self, runners: impl Iterator<Item = &'a RunnerView>) {
        let runners: Vec<RunnerView> = runners.cloned().collect();
        self.latest.send_modify(|snapshot| {
            snapshot.seq += 1;
            snapshot.runners = runners;
        });
    }

    /// Waits (at most `within`) until the newest snapshot is on disk.
    pub async fn flush(&self, within: Duration) {
        let target = self.latest.borrow().seq;
        let mut written = self.written.clone();
        let _ = tokio::time::timeout(within, written.wait_for(|seq| *seq >= target)).await;
    }
}

fn write_now(path: &Path, agent_id: &str, mut snapshot: Snapshot) {
    snapshot.runners.sort_by_key(|r| r.created_at_ms);
    let body = StateFileBody {
        agent_id,
        updated_at_ms: crate::now_ms(),
        server: snapshot.server,
        runners: snapshot.runners.iter().collect(),
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Not fsynced: it only reports, and the agent never reads it back.
    if let Err(error) = crate::fsutil::replace_json(path, &body) {
        tracing::warn!(path = %path.display(), error = %error, "cannot write the runner state file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, created_at_ms: i64) -> RunnerView {
        RunnerView {
            runner_id: RunnerId::generate(),
            runner_name: name.to_string(),
            template: "t".into(),
            state: RunnerState::Booting,
            ip_address: None,
            ssh_address: None,
            error: None,
            guest_runner_state: None,
            created_at_ms,
            timings: PhaseTimes::default(),
            warm_start_fallback: false,
            end_reason: None,
            job_started_at_ms: None,
            job_finished_at_ms: None,
            failure_step: None,
        }
    }

    #[tokio::test]
    async fn the_file_ends_up_with_the_newest_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("runner-state.json");
        let file = StateFile::new(path.clone(), "agent-1".into());
        let (a, b) = (view("a", 2), view("b", 1));
        file.write(std::iter::once(&a));
        file.write([&a, &b].into_iter());
        file.flush(Duration::from_secs(10)).await;
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(body["agentId"], "agent-1");
        let names: Vec<&str> = body["runners"]
            .as_array()
            .expect("runners")
            .iter()
            .map(|r| r["runnerName"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["b", "a"], "sorted by creation");
        file.write(std::iter::empty());
        file.flush(Duration::from_secs(10)).await;
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(body["runners"].as_array().map(Vec::len), Some(0));
        assert_eq!(body["server"]["connected"], false);

        // The link's changes are written too, once each.
        assert!(file.set_server_link(true));
        assert!(!file.set_server_link(true), "no change, nothing to write");
        file.flush(Duration::from_secs(10)).await;
        let body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(body["server"]["connected"], true);
    }
}
