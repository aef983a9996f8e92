//! Keeps the scheduler's placement index in step with the fleet: each agent knows its runners,
//! and whatever changes an agent's session, cordon, templates or runners re-derives its entry
//! from them (a handful of runners, never the fleet). Debug builds check every decision
//! against a full scan, so every test exercises the index.

use super::{FleetState, RunnerEntry};
use crate::scheduler::index::Availability;
use crate::scheduler::Slots;
use shoes_vz_model::{AgentId, RunnerId};

impl FleetState {
    /// Re-derives the agent's entry in the placement index.
    pub(super) fn reindex(&mut self, agent_id: &AgentId) {
        let Some(agent) = self.agents.get(agent_id).filter(|a| !a.record.revoked) else {
            self.index.forget(agent_id);
            return;
        };
        let mut slots = Slots {
            max_runners: agent.record.max_runners,
            cpu_cores: agent.record.cpu_cores,
            memory_mib: agent.record.memory_mib,
            ..Slots::default()
        };
        for runner in agent.runners.iter().filter_map(|id| self.runners.get(id)) {
            if runner.record.state.holds_slot() {
                slots.used_runners += 1;
                slots.used_vcpus += runner.record.vcpus;
                slots.used_memory_mib += runner.record.memory_mib;
            }
        }
        let availability = if !agent.ready() {
            Availability::Offline
        } else if agent.record.cordoned {
            Availability::Cordoned
        } else {
            Availability::Schedulable
        };
        self.index.set_slots(agent_id, availability, slots);
    }

    /// Re-reads the agent's templates into the index (registration, load).
    pub(super) fn reindex_templates(&mut self, agent_id: &AgentId) {
        if let Some(agent) = self.agents.get(agent_id) {
            self.index.set_templates(agent_id, &agent.record.templates);
        }
        self.reindex(agent_id);
    }

    /// Adds a runner to the fleet and to its agent's runners.
    pub(super) fn add_runner(&mut self, entry: RunnerEntry) {
        let runner_id = entry.record.runner_id.clone();
        let agent_id = entry.record.agent_id.clone();
        self.runners.insert(runner_id.clone(), entry);
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.runners.insert(runner_id);
        }
        self.reindex(&agent_id);
    }

    /// Removes a runner from the fleet and from its agent's runners.
    pub(super) fn remove_runner(&mut self, runner_id: &RunnerId) -> Option<RunnerEntry> {
        let entry = self.runners.remove(runner_id)?;
        if let Some(agent) = self.agents.get_mut(&entry.record.agent_id) {
            agent.runners.remove(runner_id);
        }
        self.reindex(&entry.record.agent_id);
        Some(entry)
    }

    /// The agent's runners (live ones and ended ones not yet released).
    pub(super) fn runners_of(&self, agent_id: &AgentId) -> Vec<RunnerId> {
        self.agents
            .get(agent_id)
            .map(|a| a.runners.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Debug builds: the index's decision must be one a full scan of the fleet would make.
#[cfg(debug_assertions)]
pub(super) fn check_against_full_scan(
    state: &FleetState,
    config: &crate::config::SchedulerConfig,
    labels: &[String],
    spec: shoes_vz_model::ResourceSpec,
    decided: &Result<crate::scheduler::Placement, crate::scheduler::PlacementError>,
) {
    use crate::scheduler::{place, AgentView, PlacementError};
    let views: Vec<AgentView> = state
        .agents
        .values()
        .filter(|agent| !agent.record.revoked)
        .map(|agent| {
            let mut view = AgentView {
                agent_id: agent.record.agent_id.clone(),
                ready: agent.ready(),
                cordoned: agent.record.cordoned,
                max_runners: agent.record.max_runners,
                cpu_cores: agent.record.cpu_cores,
                memory_mib: agent.record.memory_mib,
                templates: agent.record.templates.clone(),
                used_runners: 0,
                used_vcpus: 0,
                used_memory_mib: 0,
            };
            for runner in state.runners.values() {
                if runner.record.agent_id == view.agent_id && runner.record.state.holds_slot() {
                    view.used_runners += 1;
                    view.used_vcpus += runner.record.vcpus;
                    view.used_memory_mib += runner.record.memory_mib;
                }
            }
            view
        })
        .collect();
    let expected = place(config, &views, labels, spec);
    let free = |id: &AgentId| {
        views
            .iter()
            .find(|v| &v.agent_id == id)
            .map(|v| v.slots().free())
    };
    let agrees = match (&expected, decided) {
        (Ok(e), Ok(d)) => free(&e.agent_id) == free(&d.agent_id),
        (Err(PlacementError::NoAgents), Err(PlacementError::NoAgents))
        | (Err(PlacementError::NoRoomNow(_)), Err(PlacementError::NoRoomNow(_)))
        | (Err(PlacementError::NeverFits(_)), Err(PlacementError::NeverFits(_))) => true,
        _ => false,
    };
    assert!(
        agrees,
        "the placement index decided {decided:?} where a full scan decides {expected:?}"
    );
}
