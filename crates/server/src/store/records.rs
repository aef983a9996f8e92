//! What the store keeps: agents, runners and each runner's state history.

use serde::{Deserialize, Serialize};
use shoes_vz_model::{AgentId, CloudId, ResourceSpec, ResourceType, RunnerId, RunnerState};

/// An agent as last registered, and whether it is connected now.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    pub hostname: String,
    pub backend: String,
    pub max_runners: u32,
    pub cpu_cores: u32,
    pub memory_mib: u64,
    pub templates: Vec<TemplateRecord>,
    pub online: bool,
    pub last_seen_ms: i64,
    pub registered_at_ms: i64,
    /// SHA-256 (hex) of the agent's own credential; empty until it enrolled.
    pub credential_hash: String,
    /// The agent opened a Sync with its credential: the enrollment token no longer works for it.
    pub credential_confirmed: bool,
    /// An operator ended the agent's access for good.
    pub revoked: bool,
    /// No new runners are placed on it; its live runners finish.
    pub cordoned: bool,
    /// The agent's own version, as it registered.
    pub version: String,
}

/// A VM template an agent offers; stored as JSON inside the agent's row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub name: String,
    pub version: String,
    pub backend: String,
    pub labels: Vec<String>,
    /// GitHub's OS label for the guest (`Linux`, `macOS`), which every runner of it registers
    /// with; empty from agents older than this field.
    #[serde(default)]
    pub os: String,
    /// GitHub's arch label (`X64`, `ARM64`).
    #[serde(default)]
    pub arch: String,
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

/// A runner: where it runs, what it got, and where it is in its life.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerRecord {
    pub runner_id: RunnerId,
    pub runner_name: String,
    pub agent_id: AgentId,
    pub template: String,
    pub resource_type: ResourceType,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub labels: Vec<String>,
    pub state: RunnerState,
    pub delete_requested: bool,
    /// An AddInstance call was answered with this runner: myshoes holds its cloud_id.
    pub answered: bool,
    pub ip_address: String,
    pub guest_runner_state: String,
    /// The first failure, without secrets; empty when none.
    pub error: String,
    /// Why it ended on its own (its job finished, a limit, nobody claimed it); empty otherwise.
    pub end_reason: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub timings: Timings,
    /// When the guest reported its job running, and its runner finished.
    pub job_started_at_ms: Option<i64>,
    pub job_finished_at_ms: Option<i64>,
}

/// Where a new runner goes and what it is: everything a runner record starts from.
#[derive(Debug, Clone)]
pub struct NewRunner {
    pub runner_name: String,
    pub agent_id: AgentId,
    pub template: String,
    pub resource_type: ResourceType,
    pub spec: ResourceSpec,
    pub labels: Vec<String>,
}

impl RunnerRecord {
    /// A runner just placed: creating, nothing measured, nothing answered yet.
    pub fn new(runner_id: RunnerId, placed: NewRunner, created_at_ms: i64) -> RunnerRecord {
        RunnerRecord {
            runner_id,
            runner_name: placed.runner_name,
            agent_id: placed.agent_id,
            template: placed.template,
            resource_type: placed.resource_type,
            vcpus: placed.spec.vcpus,
            memory_mib: placed.spec.memory_mib,
            labels: placed.labels,
            state: RunnerState::Creating,
            delete_requested: false,
            answered: false,
            ip_address: String::new(),
            guest_runner_state: String::new(),
            error: String::new(),
            end_reason: String::new(),
            created_at_ms,
            updated_at_ms: created_at_ms,
            timings: Timings::default(),
            job_started_at_ms: None,
            job_finished_at_ms: None,
        }
    }

    /// The id myshoes knows this runner by; also stored in its own unique column.
    pub fn cloud_id(&self) -> CloudId {
        self.runner_id.cloud_id()
    }
}

/// How long each step of bringing a runner up took; `None` until the step finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub clone_ms: Option<u64>,
    pub boot_to_ip_ms: Option<u64>,
    pub boot_to_ssh_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    pub startup_ms: Option<u64>,
    /// How long the AddInstance waited for a free slot.
    pub queue_ms: Option<u64>,
    /// The agent's start steps: host work before the VM, the VM starting or restoring, a
    /// restored guest taking the runner's identity.
    pub prepare_ms: Option<u64>,
    pub vm_start_ms: Option<u64>,
    pub refresh_ms: Option<u64>,
}

/// One entry of a runner's state history.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// 1 for the state the runner was inserted with, then +1 per change.
    pub seq: i64,
    pub state: RunnerState,
    /// The record's `updated_at_ms` (`created_at_ms` for the first entry).
    pub at_ms: i64,
    /// The record's `error` at the time, often empty.
    pub detail: String,
}
