//! Who an agent is, and what an operator may do about it.
//!
//! The fleet's shared enrollment token only enrolls: a new agent id presenting it gets its own
//! credential (a random secret; only its hash is kept). From then on RegisterAgent and Sync
//! for that id accept only that credential; the enrollment token stops working for it once the
//! agent has opened a Sync with its credential (until then a retry, after an answer lost on the
//! way, may enroll again and gets a fresh credential). A refusal is logged with the peer's
//! address, counted, and never touches the live session. A revoked agent is refused for good
//! and its runners are destroyed.

use super::error::AgentRefusal;
use super::{AgentEntry, Fleet, FleetError, FleetState};
use crate::credentials;
use crate::store::{now_ms, AgentRecord};
use shoes_vz_model::link::AgentCommand;
use shoes_vz_model::{AgentId, RunnerId};

/// Slots, vCPUs and memory an agent's live runners hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub runners: u32,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// The outcome of an agent's proof of identity at registration.
pub(super) struct Admitted {
    /// The hash to keep: the existing credential's, or a new one's.
    pub credential_hash: String,
    /// The new credential's secret, when this registration enrolled the agent.
    pub issued: Option<String>,
}

impl Fleet {
    /// RegisterAgent: the agent's own credential, or the enrollment token for an agent that
    /// is new (or has not used its credential yet).
    pub(super) fn admit_agent(
        &self,
        state: &FleetState,
        agent_id: &AgentId,
        presented: &str,
        peer: &str,
    ) -> Result<Admitted, FleetError> {
        let existing = state.agents.get(agent_id).map(|a| &a.record);
        if let Some(record) = existing {
            self.not_revoked(record, peer)?;
            if credentials::matches(presented, &record.credential_hash) {
                return Ok(Admitted {
                    credential_hash: record.credential_hash.clone(),
                    issued: None,
                });
            }
        }
        let enrolled_for_good = existing.is_some_and(|r| r.credential_confirmed);
        let enrollment_token = self.config.agent_token().unwrap_or_default();
        if !enrolled_for_good
            && !enrollment_token.is_empty()
            && credentials::same_secret(presented, enrollment_token)
        {
            let issued = credentials::issue();
            return Ok(Admitted {
                credential_hash: issued.hash,
                issued: Some(issued.secret),
            });
        }
        let why = if enrolled_for_good {
            AgentRefusal::NotItsCredential(agent_id.clone())
        } else {
            AgentRefusal::NoValidToken(agent_id.clone())
        };
        Err(self.refuse(agent_id, peer, FleetError::Refused(why)))
    }

    /// Sync: only the agent's own credential.
    pub(super) fn verify_agent(
        &self,
        state: &FleetState,
        agent_id: &AgentId,
        presented: &str,
        peer: &str,
    ) -> Result<(), FleetError> {
        let Some(record) = state.agents.get(agent_id).map(|a| &a.record) else {
            return Err(self.refuse(agent_id, peer, FleetError::NotRegistered(agent_id.clone())));
        };
        self.not_revoked(record, peer)?;
        if credentials::matches(presented, &record.credential_hash) {
            return Ok(());
        }
        Err(self.refuse(
            agent_id,
            peer,
            FleetError::Refused(AgentRefusal::SyncNeedsCredential(agent_id.clone())),
        ))
    }

    /// A revoked agent is refused whatever it presents.
    fn not_revoked(&self, record: &AgentRecord, peer: &str) -> Result<(), FleetError> {
        if !record.revoked {
            return Ok(());
        }
        let revoked = AgentRefusal::Revoked(record.agent_id.clone());
        Err(self.refuse(&record.agent_id, peer, FleetError::Refused(revoked)))
    }

    fn refuse(&self, agent_id: &AgentId, peer: &str, error: FleetError) -> FleetError {
        self.metrics.count_auth_refused("agent");
        tracing::warn!(agent = %agent_id, %peer, error = %error, "refused an agent");
        error
    }

    /// Ends an agent's access for good: its session ends, its credential stops working, its
    /// runners are deleted on it while it can still hear and recorded as destroyed.
    pub fn revoke_agent(&self, agent_id: &AgentId) -> Result<AgentRecord, FleetError> {
        let mut state = self.lock();
        let Some(entry) = state.agents.get_mut(agent_id) else {
            return Err(FleetError::UnknownAgent(agent_id.clone()));
        };
        entry.record.revoked = true;
        entry.record.online = false;
        entry.record.credential_hash.clear();
        self.writer.upsert_agent(entry.record.clone());
        let record = entry.record.clone();
        state.reindex(agent_id);
        let runners: Vec<RunnerId> = state
            .runners_of(agent_id)
            .into_iter()
            .filter(|id| {
                state
                    .runners
                    .get(id)
                    .is_some_and(|r| r.record.state.holds_slot())
            })
            .collect();
        if let Some(agent) = state.agents.get(agent_id) {
            for runner_id in &runners {
                let _ = agent.push(AgentCommand::Delete(runner_id.clone()));
            }
        }
        for runner_id in &runners {
            self.finish_without_agent(
                &mut state,
                runner_id,
                "its agent was revoked by an operator",
            );
        }
        if let Some(session) = state
            .agents
            .get_mut(agent_id)
            .and_then(|a| a.session.take())
        {
            session.cancel.cancel();
        }
        tracing::warn!(agent = %agent_id, runners = runners.len(), "agent revoked");
        Ok(record)
    }

    /// Cordons (no new runners; live ones finish) or uncordons an agent; kept across restarts.
    pub fn set_cordon(
        &self,
        agent_id: &AgentId,
        cordoned: bool,
    ) -> Result<AgentRecord, FleetError> {
        let mut state = self.lock();
        let Some(entry) = state.agents.get_mut(agent_id) else {
            return Err(FleetError::UnknownAgent(agent_id.clone()));
        };
        if entry.record.cordoned != cordoned {
            entry.record.cordoned = cordoned;
            entry.record.last_seen_ms = entry.record.last_seen_ms.max(0);
            self.writer.upsert_agent(entry.record.clone());
            tracing::info!(agent = %agent_id, cordoned, at_ms = now_ms(), "agent cordon changed");
        }
        let record = entry.record.clone();
        state.reindex(agent_id);
        if !cordoned {
            self.pump(&mut state);
        }
        Ok(record)
    }

    /// What an agent's live runners hold.
    pub fn agent_usage(&self, agent_id: &AgentId) -> Usage {
        let state = self.lock();
        let mut usage = Usage::default();
        let runners = state.runners_of(agent_id);
        for runner in runners.iter().filter_map(|id| state.runners.get(id)) {
            if runner.record.state.holds_slot() {
                usage.runners += 1;
                usage.vcpus += runner.record.vcpus;
                usage.memory_mib += runner.record.memory_mib;
            }
        }
        usage
    }

    /// Whether the agent has a synced session now.
    pub fn agent_online(&self, agent_id: &AgentId) -> bool {
        self.lock()
            .agents
            .get(agent_id)
            .is_some_and(AgentEntry::ready)
    }

    /// Every agent's record, and whether it is connected.
    pub fn agents(&self) -> Vec<(AgentRecord, bool)> {
        self.lock()
            .agents
            .values()
            .map(|a: &AgentEntry| (a.record.clone(), a.ready()))
            .collect()
    }
}
