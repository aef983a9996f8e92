//! Agents: registration, their Sync sessions, snapshots, reconciliation and liveness.

use super::{AgentEntry, Fleet, FleetError, FleetState, Session};
use crate::store::{now_ms, AgentRecord, TemplateRecord};
use shoes_vz_model::link::{AgentCommand, AgentReport, RunnerReport};
use shoes_vz_model::{AgentId, RunnerState};
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A session that ended because its link failed (not closed by the agent): counted with the
/// silent ones as a missed heartbeat.
pub const STREAM_BROKEN: &str = "the link failed (stream error or unanswered keepalive)";

/// An agent's announcement of itself, checked by the AgentService handler.
pub struct Registration {
    pub agent_id: AgentId,
    pub hostname: String,
    pub backend: String,
    pub version: String,
    pub max_runners: u32,
    pub cpu_cores: u32,
    pub memory_mib: u64,
    pub templates: Vec<TemplateRecord>,
}

/// The answer to a registration.
pub struct Registered {
    /// The agent's own credential, when this registration enrolled it (shown once).
    pub credential: Option<String>,
}

/// What an agent's Sync stream handler needs to keep its half of a session.
pub struct SessionHandle {
    pub agent_id: AgentId,
    pub session_id: u64,
    pub commands: mpsc::UnboundedReceiver<AgentCommand>,
    pub cancel: CancellationToken,
}

impl Fleet {
    /// Registers (or re-registers) an agent that proved who it is (see [`super::trust`]):
    /// enrollment with the shared token, or the agent's own credential. Returns the agent's new
    /// credential when this call enrolled it.
    pub fn register_agent(
        &self,
        registration: Registration,
        presented: &str,
        peer: &str,
    ) -> Result<Registered, FleetError> {
        let Registration {
            agent_id,
            hostname,
            backend,
            version,
            max_runners,
            cpu_cores,
            memory_mib,
            templates,
        } = registration;
        let now = now_ms();
        let mut state = self.lock();
        let admitted = self.admit_agent(&state, &agent_id, presented, peer)?;
        let existing = state.agents.get(&agent_id).map(|a| a.record.clone());
        let online = state.agents.get(&agent_id).is_some_and(AgentEntry::ready);
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            hostname,
            backend,
            max_runners,
            cpu_cores,
            memory_mib,
            templates,
            online,
            last_seen_ms: now,
            registered_at_ms: existing.as_ref().map_or(now, |a| a.registered_at_ms),
            credential_hash: admitted.credential_hash,
            credential_confirmed: existing
                .as_ref()
                .is_some_and(|a| a.credential_confirmed && admitted.issued.is_none()),
            revoked: false,
            cordoned: existing.as_ref().is_some_and(|a| a.cordoned),
            version,
        };
        tracing::info!(agent = %agent_id, hostname = %record.hostname, max_runners = record.max_runners, enrolled = admitted.issued.is_some(), %peer, "agent registered");
        self.writer.upsert_agent(record.clone());
        match state.agents.get_mut(&agent_id) {
            Some(entry) => {
                entry.record = record;
                entry.last_seen = Instant::now();
            }
            None => {
                let mut entry = AgentEntry::new(record);
                // Runners loaded for an agent this server had not seen register yet.
                entry.runners = state
                    .runners
                    .values()
                    .filter(|r| r.record.agent_id == agent_id)
                    .map(|r| r.record.runner_id.clone())
                    .collect();
                state.agents.insert(agent_id.clone(), entry);
            }
        }
        state.reindex_templates(&agent_id);
        Ok(Registered {
            credential: admitted.issued,
        })
    }

    /// Opens a session for a registered agent presenting its own credential, replacing (and
    /// so ending) any older one. Anything else is refused and leaves the live session alone.
    pub fn open_session(
        &self,
        agent_id: &str,
        presented: &str,
        peer: &str,
    ) -> Result<SessionHandle, FleetError> {
        let agent_id = AgentId::parse(agent_id).map_err(|e| FleetError::Request(e.into()))?;
        let mut state = self.lock();
        self.verify_agent(&state, &agent_id, presented, peer)?;
        state.next_session += 1;
        let session_id = state.next_session;
        let Some(entry) = state.agents.get_mut(&agent_id) else {
            return Err(FleetError::NotRegistered(agent_id));
        };
        if !entry.record.credential_confirmed {
            // Its first Sync with its credential: the enrollment token is spent for it.
            entry.record.credential_confirmed = true;
            self.writer.upsert_agent(entry.record.clone());
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        let cancel = self.shutdown.child_token();
        if let Some(old) = entry.session.replace(Session {
            id: session_id,
            commands,
            synced: false,
            cancel: cancel.clone(),
            heartbeat_sent: Instant::now(),
        }) {
            old.cancel.cancel();
            tracing::info!(agent = %agent_id, %peer, "agent reconnected; older session replaced");
        }
        entry.last_seen = Instant::now();
        // Not schedulable until this session's first snapshot.
        state.reindex(&agent_id);
        Ok(SessionHandle {
            agent_id,
            session_id,
            commands: receiver,
            cancel,
        })
    }

    pub fn on_agent_report(&self, agent_id: &AgentId, session_id: u64, report: AgentReport) {
        let mut state = self.lock();
        let Some(entry) = state.agents.get_mut(agent_id) else {
            return;
        };
        let Some(session) = entry.session.as_mut().filter(|s| s.id == session_id) else {
            return; // a replaced session still draining
        };
        entry.last_seen = Instant::now();
        match report {
            AgentReport::Snapshot(runners) => {
                let first = !session.synced;
                session.synced = true;
                let session_id = session.id;
                if first {
                    entry.record.online = true;
                    self.writer.agent_online(agent_id.clone(), true, now_ms());
                    tracing::info!(agent = %agent_id, runners = runners.len(), "agent online; reconciling");
                    state.reindex(agent_id);
                }
                self.reconcile(&mut state, agent_id, session_id, &runners, first);
                if first {
                    // Its free slots can serve queued calls now.
                    self.pump(&mut state);
                }
            }
            AgentReport::Update(runner) => {
                if !self.apply_status(&mut state, agent_id, &runner) {
                    self.delete_stray(&state, agent_id, &runner);
                }
            }
            AgentReport::Guest(answer) => {
                drop(state);
                self.guest_reply(answer);
            }
            AgentReport::Heartbeat => {}
        }
    }

    /// Ends a session if it is still the current one; the agent is offline until it returns.
    pub fn close_session(&self, agent_id: &AgentId, session_id: u64, reason: &str) {
        let mut state = self.lock();
        let Some(entry) = state.agents.get_mut(agent_id) else {
            return;
        };
        if entry.session.as_ref().is_some_and(|s| s.id == session_id) {
            if reason == STREAM_BROKEN {
                self.metrics.count_heartbeat_miss();
            }
            if let Some(session) = entry.session.take() {
                session.cancel.cancel();
            }
            entry.record.online = false;
            self.writer.agent_online(agent_id.clone(), false, now_ms());
            state.reindex(agent_id);
            tracing::warn!(agent = %agent_id, reason, "agent offline");
        }
    }

    /// The server's housekeeping, a few times a second: heartbeats out, silent agents offline,
    /// unclaimed runners gone, and queued calls get any room that appeared without an event.
    pub fn tick(&self) {
        self.send_heartbeats();
        self.expire_silent_agents();
        self.expire_unclaimed();
        let mut state = self.lock();
        if !state.queue.is_empty() {
            self.pump(&mut state);
        }
    }

    /// A heartbeat on every session due one, so agents can tell a live link from a dead one.
    fn send_heartbeats(&self) {
        let every = self.config.timeouts.heartbeat_interval;
        let mut state = self.lock();
        for agent in state.agents.values_mut() {
            if let Some(session) = agent.session.as_mut() {
                if session.heartbeat_sent.elapsed() >= every {
                    session.heartbeat_sent = Instant::now();
                    let _ = session.commands.send(AgentCommand::Heartbeat);
                }
            }
        }
    }

    /// Ends the sessions of agents silent for longer than `agent_offline_after`.
    pub fn expire_silent_agents(&self) {
        let limit = self.config.timeouts.agent_offline_after;
        let silent: Vec<(AgentId, u64)> = self
            .lock()
            .agents
            .iter()
            .filter(|(_, a)| a.last_seen.elapsed() > limit)
            .filter_map(|(id, a)| a.session.as_ref().map(|s| (id.clone(), s.id)))
            .collect();
        for (agent_id, session_id) in silent {
            self.metrics.count_heartbeat_miss();
            self.close_session(
                &agent_id,
                session_id,
                "silent for longer than agent_offline_after",
            );
        }
    }

    /// Brings the fleet and an agent's report together. Runners the server no longer wants
    /// are deleted on the agent; on a session's first snapshot, runners the agent no longer
    /// has are marked lost and deleted. A runner whose create went to this very session may
    /// cross its first snapshot, and one not launched yet is on no agent: neither is lost.
    fn reconcile(
        &self,
        state: &mut FleetState,
        agent_id: &AgentId,
        session_id: u64,
        runners: &[RunnerReport],
        first: bool,
    ) {
        let mut reported = HashSet::new();
        for status in runners {
            reported.insert(status.runner_id.clone());
            if !self.apply_status(state, agent_id, status) {
                self.delete_stray(state, agent_id, status);
            }
        }
        let mut lost = Vec::new();
        let mut redelete = Vec::new();
        for id in state.runners_of(agent_id) {
            let Some(entry) = state.runners.get(&id) else {
                continue;
            };
            if !entry.record.state.holds_slot() {
                continue;
            }
            let pushed_elsewhere = entry
                .pushed_to_session
                .is_some_and(|pushed| pushed != session_id);
            let recovered =
                entry.pushed_to_session.is_none() && entry.record.state != RunnerState::Creating;
            if first && !reported.contains(&id) && (pushed_elsewhere || recovered) {
                lost.push(id);
            } else if entry.record.delete_requested {
                redelete.push(id);
            }
        }
        for id in lost {
            self.finish_without_agent(
                state,
                &id,
                "the agent no longer has this runner (agent restarted or lost the VM)",
            );
        }
        if let Some(agent) = state.agents.get(agent_id) {
            for id in redelete {
                let _ = agent.push(AgentCommand::Delete(id));
            }
        }
    }

    fn delete_stray(&self, state: &FleetState, agent_id: &AgentId, status: &RunnerReport) {
        if status.state == RunnerState::Deleted {
            return;
        }
        tracing::warn!(agent = %agent_id, runner = %status.runner_id, "agent has a runner the server does not want; deleting it");
        if let Some(agent) = state.agents.get(agent_id) {
            let _ = agent.push(AgentCommand::Delete(status.runner_id.clone()));
        }
    }
}
