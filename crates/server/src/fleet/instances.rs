//! AddInstance and DeleteInstance: reserve a slot, push the command, wait for the agent's
//! report (event-driven, under a deadline), and never leave a runner behind on failure.

use super::{delete_command, unix_micros, Fleet, FleetError, RunnerEntry};
use crate::scheduler::{self, AgentView, PlacementError};
use crate::store::{now_ms, RunnerRecord, Timings};
use shoes_vz_model::{CloudId, ResourceType, RunnerId, RunnerName, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;
const MAX_SETUP_SCRIPT: usize = 1024 * 1024;

pub struct AddRequest {
    pub runner_name: String,
    /// Holds a GitHub registration token: never logged, never in an error.
    pub setup_script: String,
    pub resource_type: i32,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AddOutcome {
    pub cloud_id: CloudId,
    pub ip_address: String,
    pub resource_type: ResourceType,
}

/// Deletes the runner unless disarmed: runs when AddInstance fails, times out, or its caller
/// goes away mid-wait (the handler future is dropped).
struct AbandonGuard {
    fleet: Arc<Fleet>,
    runner_id: Option<RunnerId>,
}

impl AbandonGuard {
    fn disarm(&mut self) {
        self.runner_id = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(id) = self.runner_id.take() {
            self.fleet.request_delete(&id);
        }
    }
}

impl Fleet {
    pub async fn add_instance(
        self: &Arc<Self>,
        request: AddRequest,
    ) -> Result<AddOutcome, FleetError> {
        let name = RunnerName::parse(&request.runner_name)
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        validate_labels(&request.labels)?;
        if request.setup_script.len() > MAX_SETUP_SCRIPT {
            return Err(FleetError::Invalid(format!(
                "setup_script is {} bytes; at most {MAX_SETUP_SCRIPT} are accepted",
                request.setup_script.len()
            )));
        }
        let requested = ResourceType::from_i32(request.resource_type)
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        let (served, spec) = self
            .config
            .resources
            .resolve(requested)
            .map_err(|e| FleetError::Invalid(e.to_string()))?;

        let runner_id = RunnerId::generate();
        let (record, mut state_rx) = {
            let mut state = self.lock();
            if let Some(existing) = state.names.get(name.as_str()) {
                return Err(FleetError::AlreadyExists(format!(
                    "runner_name {name} is already in use by {}; delete it first",
                    existing.cloud_id()
                )));
            }
            let views = agent_views(&state);
            let placement = scheduler::place(&self.config.scheduler, &views, &request.labels, spec)
                .map_err(|e| match e {
                    PlacementError::NeverFits(_) => FleetError::Invalid(e.to_string()),
                    PlacementError::NoRoomNow(_) => FleetError::NoCapacity(e.to_string()),
                    PlacementError::NoAgents => FleetError::Unavailable(e.to_string()),
                })?;
            let now = now_ms();
            let record = RunnerRecord {
                runner_id: runner_id.clone(),
                runner_name: name.to_string(),
                agent_id: placement.agent_id,
                template: placement.template,
                resource_type: served,
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                labels: request.labels.clone(),
                state: RunnerState::Creating,
                delete_requested: false,
                ip_address: String::new(),
                guest_runner_state: String::new(),
                error: String::new(),
                created_at_ms: now,
                updated_at_ms: now,
                timings: Timings::default(),
            };
            let (state_tx, state_rx) = watch::channel(RunnerState::Creating);
            state.names.insert(name.to_string(), runner_id.clone());
            state.runners.insert(
                runner_id.clone(),
                RunnerEntry {
                    record: record.clone(),
                    state_tx,
                    fallback_counted: false,
                },
            );
            (record, state_rx)
        };
        let deadline = Instant::now() + self.config.timeouts.add_instance;
        let mut guard = AbandonGuard {
            fleet: Arc::clone(self),
            runner_id: Some(runner_id.clone()),
        };
        tracing::info!(runner = %runner_id, runner_name = %name, agent = %record.agent_id, template = %record.template, resource_type = %served, "runner placed");

        if let Err(error) = self.writer.insert_runner(record.clone()).await {
            guard.disarm();
            let mut state = self.lock();
            self.forget(&mut state, &runner_id);
            return Err(FleetError::Unavailable(format!(
                "cannot record the runner: {error}"
            )));
        }
        let create = pb::ServerMessage {
            message: Some(pb::server_message::Message::CreateRunner(
                pb::CreateRunner {
                    runner_id: runner_id.to_string(),
                    runner_name: name.to_string(),
                    setup_script: request.setup_script,
                    template: record.template.clone(),
                    vcpus: spec.vcpus,
                    memory_mib: spec.memory_mib,
                },
            )),
            sent_at_unix_us: unix_micros(),
        };
        let pushed = {
            let mut state = self.lock();
            let pushed = state
                .agents
                .get(&record.agent_id)
                .is_some_and(|a| a.push(create));
            if !pushed {
                self.finish_without_agent(
                    &mut state,
                    &runner_id,
                    "the agent disconnected before the create command reached it",
                );
            }
            pushed
        };
        if !pushed {
            guard.disarm();
            return Err(FleetError::Unavailable(
                "the chosen agent disconnected before the runner could be created; retry".into(),
            ));
        }

        let waited = tokio::time::timeout_at(
            deadline,
            wait_for(&mut state_rx, |s| {
                s.is_ready()
                    || !s.holds_slot()
                    || s == RunnerState::Error
                    || s == RunnerState::TearingDown
            }),
        )
        .await;
        match waited {
            Ok(state) if state.is_ready() => {
                guard.disarm();
                let ip_address = self
                    .lock()
                    .runners
                    .get(&runner_id)
                    .map(|e| e.record.ip_address.clone())
                    .unwrap_or_default();
                Ok(AddOutcome {
                    cloud_id: runner_id.cloud_id(),
                    ip_address,
                    resource_type: served,
                })
            }
            Ok(state) => {
                let detail = self
                    .runner_error(&runner_id)
                    .unwrap_or_else(|| format!("it became {state}"));
                Err(FleetError::RunnerFailed(format!(
                    "runner {} failed before SSH was ready and was destroyed: {detail}",
                    runner_id.cloud_id()
                )))
            }
            Err(_) => Err(FleetError::Deadline(format!(
                "runner {} was not ssh-ready within {:?}; it is being destroyed",
                runner_id.cloud_id(),
                self.config.timeouts.add_instance
            ))),
        }
    }

    pub async fn delete_instance(&self, cloud_id: &str) -> Result<(), FleetError> {
        let cloud_id = CloudId::parse(cloud_id).map_err(|e| FleetError::NotFound(e.to_string()))?;
        let runner_id = cloud_id.runner_id();
        let Some((mut state_rx, agent_ready)) = self.request_delete(&runner_id) else {
            self.writer.flush().await;
            return match self.store.get_runner(&runner_id).await {
                Ok(Some(_)) => Err(FleetError::NotFound(format!(
                    "runner {cloud_id} is already deleted"
                ))),
                Ok(None) => Err(FleetError::NotFound(format!(
                    "runner {cloud_id} was never issued by this server"
                ))),
                Err(e) => Err(FleetError::Unavailable(format!(
                    "cannot read the state store: {e}"
                ))),
            };
        };
        if !agent_ready {
            tracing::info!(runner = %runner_id, "agent offline; deletion recorded and sent when it reconnects");
            return Ok(());
        }
        let timeout = self.config.timeouts.delete_instance;
        match tokio::time::timeout(timeout, wait_for(&mut state_rx, |s| s == RunnerState::Deleted)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(FleetError::Deadline(format!(
                "runner {cloud_id} was not destroyed within {timeout:?}; its deletion stays recorded, retry to wait again"
            ))),
        }
    }

    /// Records that a runner must go and tells its agent. Returns a watch on its state and
    /// whether the agent can act now, or `None` when the runner is already gone.
    pub(crate) fn request_delete(
        &self,
        runner_id: &RunnerId,
    ) -> Option<(watch::Receiver<RunnerState>, bool)> {
        let mut state = self.lock();
        let entry = state.runners.get_mut(runner_id)?;
        if !entry.record.delete_requested {
            entry.record.delete_requested = true;
            entry.record.updated_at_ms = now_ms();
            self.writer.update_runner(entry.record.clone());
        }
        let receiver = entry.state_tx.subscribe();
        let agent_id = entry.record.agent_id.clone();
        let pushed = state
            .agents
            .get(&agent_id)
            .is_some_and(|a| a.ready() && a.push(delete_command(runner_id)));
        Some((receiver, pushed))
    }

    fn runner_error(&self, runner_id: &RunnerId) -> Option<String> {
        let state = self.lock();
        let error = state
            .runners
            .get(runner_id)
            .map(|e| e.record.error.clone())?;
        (!error.is_empty()).then_some(error)
    }
}

/// Waits until the watched state satisfies `done`; the last value counts when the runner is
/// forgotten (its sender dropped).
async fn wait_for(
    rx: &mut watch::Receiver<RunnerState>,
    done: impl Fn(RunnerState) -> bool,
) -> RunnerState {
    loop {
        let current = *rx.borrow_and_update();
        if done(current) {
            return current;
        }
        if rx.changed().await.is_err() {
            return *rx.borrow();
        }
    }
}

fn validate_labels(labels: &[String]) -> Result<(), FleetError> {
    if labels.len() > MAX_LABELS {
        return Err(FleetError::Invalid(format!(
            "{} labels given; at most {MAX_LABELS} are accepted",
            labels.len()
        )));
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.is_empty() || l.len() > MAX_LABEL_LEN || l.chars().any(char::is_control))
    {
        return Err(FleetError::Invalid(format!(
            "label {:?} is empty, longer than {MAX_LABEL_LEN} bytes or has control characters",
            bad.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

fn agent_views(state: &super::FleetState) -> Vec<AgentView> {
    let mut used: HashMap<&shoes_vz_model::AgentId, (u32, u32, u64)> = HashMap::new();
    for entry in state.runners.values() {
        let slot = used.entry(&entry.record.agent_id).or_default();
        slot.0 += 1;
        slot.1 += entry.record.vcpus;
        slot.2 += entry.record.memory_mib;
    }
    state
        .agents
        .values()
        .map(|agent| {
            let (runners, vcpus, memory) = used
                .get(&agent.record.agent_id)
                .copied()
                .unwrap_or_default();
            AgentView {
                agent_id: agent.record.agent_id.clone(),
                ready: agent.ready(),
                max_runners: agent.record.max_runners,
                cpu_cores: agent.record.cpu_cores,
                memory_mib: agent.record.memory_mib,
                templates: agent.record.templates.clone(),
                used_runners: runners,
                used_vcpus: vcpus,
                used_memory_mib: memory,
            }
        })
        .collect()
}
