//! What the server and an agent tell each other over their link, as the cores see it: commands
//! to an agent, reports from it. The wire format (protobuf) is converted at the link's two ends
//! only (`shoes_vz_protocol::link`): the fleet and the runner manager never see it.

use crate::{ResourceSpec, RunnerId, RunnerName, RunnerState};
use std::fmt;

/// What the server asks of an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    Create(CreateRunner),
    Delete(RunnerId),
    /// An operator's request about one of the agent's runners.
    Guest(GuestCall),
    /// Proof the link is alive (both sides send one every heartbeat interval).
    Heartbeat,
}

/// Start a runner: clone `template`, boot it at `spec`'s size, run `setup_script`.
#[derive(Clone, PartialEq)]
pub struct CreateRunner {
    pub runner_id: RunnerId,
    pub runner_name: RunnerName,
    pub template: String,
    pub spec: ResourceSpec,
    /// Holds a GitHub registration token: never logged ([`fmt::Debug`] leaves it out).
    pub setup_script: String,
}

impl fmt::Debug for CreateRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateRunner")
            .field("runner_id", &self.runner_id)
            .field("runner_name", &self.runner_name)
            .field("template", &self.template)
            .field("spec", &self.spec)
            .field(
                "setup_script",
                &format_args!("<{} bytes>", self.setup_script.len()),
            )
            .finish()
    }
}

/// An operator's request about a live runner, answered by a [`GuestAnswer`] with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestCall {
    pub request_id: u64,
    pub runner_id: RunnerId,
    pub request: GuestRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GuestRequest {
    /// A command run by the guest's shell as the runner's SSH user (each word quoted).
    Exec {
        command: Vec<String>,
        stdin: Vec<u8>,
        timeout_secs: u32,
    },
    /// A piece of a log: from `offset`, or its last `max_bytes` when `None`.
    Logs {
        kind: LogKind,
        offset: Option<u64>,
        max_bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// The VM's serial console, kept by the agent.
    Console,
    /// The setup script's output in the guest.
    Setup,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuestAnswer {
    pub request_id: u64,
    pub reply: GuestReply,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GuestReply {
    Exec(ExecResult),
    Logs {
        data: Vec<u8>,
        next_offset: u64,
    },
    /// What went wrong, in words (never a secret).
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecResult {
    /// `None` when the command had none (killed, timed out).
    pub exit_status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

/// What an agent tells the server.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentReport {
    /// Everything it runs (on connect, then every snapshot interval).
    Snapshot(Vec<RunnerReport>),
    /// One runner changed.
    Update(Box<RunnerReport>),
    Guest(GuestAnswer),
    Heartbeat,
}

/// One runner as its agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerReport {
    pub runner_id: RunnerId,
    pub state: RunnerState,
    pub ip_address: String,
    /// The runner's failure, without secrets; empty while it is fine.
    pub error: String,
    pub timings: PhaseTimings,
    /// The GitHub Actions runner's state as the guest reports it (offline, idle, preparing,
    /// running, finished); empty when unknown.
    pub guest_runner_state: String,
    /// A warm restore failed and the VM booted cold instead.
    pub warm_start_fallback: bool,
    /// Why it ended on its own (its job finished, the setup script stopped, a limit).
    pub end_reason: String,
    /// When the guest first reported a job running, and the runner finished (Unix ms).
    pub job_started_at_ms: Option<i64>,
    pub job_finished_at_ms: Option<i64>,
    /// With state Error: the step that failed (clone, boot, ssh, setup, job, other).
    pub failure_step: String,
}

/// How long each start phase took, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhaseTimings {
    pub clone_ms: Option<u64>,
    pub boot_to_ip_ms: Option<u64>,
    pub boot_to_ssh_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    /// Host work before the VM starts: keys, the clone, the bundle's files, the config disk.
    pub prepare_ms: Option<u64>,
    /// The hypervisor starting the VM, or restoring a saved state until the guest runs.
    pub vm_start_ms: Option<u64>,
    /// A restored guest taking this runner's identity (`None` for a cold boot).
    pub refresh_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_command_never_shows_its_script() {
        let create = CreateRunner {
            runner_id: RunnerId::generate(),
            runner_name: RunnerName::parse("myshoes-1").expect("name"),
            template: "linux".into(),
            spec: ResourceSpec {
                vcpus: 2,
                memory_mib: 4096,
            },
            setup_script: "RUNNER_TOKEN=AABBCCDDEEFF00112233445566778\n".into(),
        };
        let shown = format!("{:?}", AgentCommand::Create(create));
        assert!(!shown.contains("AABBCC"), "{shown}");
        assert!(shown.contains("<43 bytes>"), "{shown}");
    }
}
