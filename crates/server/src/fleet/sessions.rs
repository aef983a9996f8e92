//! Agents: registration, their Sync sessions, snapshots, reconciliation and liveness.

use super::error::RequestError;
use super::{delete_command, AgentEntry, Fleet, FleetError, FleetState, Session};
use crate::store::{now_ms, AgentRecord, TemplateRecord};
use shoes_vz_model::ids::validate_name;
use shoes_vz_model::{AgentId, RunnerId, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A session that ended because its link failed (not closed by the agent): counted with the
/// silent ones as a missed heartbeat.
/// The most templates an agent may announce.
const MAX_TEMPLATES: usize = 256;

pub const STREAM_BROKEN: &str = "the link failed (stream error or unanswered keepalive)";

/// What an agent's Sync stream handler needs to keep its half of a session.
pub struct SessionHandle {
    pub agent_id: AgentId,
    pub session_id: u64,
    pub commands: mpsc::UnboundedReceiver<pb::ServerMessage>,
    pub cancel: CancellationToken,
}

impl Fleet {
    /// Registers (or re-registers) an agent that proved who it is (see [`super::trust`]):
    /// enrollment with the shared token, or the agent's own credential. Returns the agent's new
    /// credential when this call enrolled it.
    pub fn register_agent(
        &self,
        request: pb::RegisterAgentRequest,
        presented: &str,
        peer: &str,
    ) -> Result<pb::RegisterAgentResponse, FleetError> {
        let agent_id =
            AgentId::parse(&request.agent_id).map_err(|e| FleetError::Request(e.into()))?;
        if request.hostname.is_empty() || request.hostname.len() > 253 {
            return Err(RequestError::BadHostname.into());
        }
        if request.templates.len() > MAX_TEMPLATES {
            return Err(RequestError::TooManyTemplates {
                count: request.templates.len(),
                max: MAX_TEMPLATES,
            }
            .into());
        }
        let capacity = request.capacity.unwrap_or_default();
        let mut templates = Vec::with_capacity(request.templates.len());
        for t in request.templates {
            validate_name("template name", &t.name, 64)
                .map_err(|e| FleetError::Request(e.into()))?;
            templates.push(TemplateRecord {
                name: t.name,
                version: t.version,
                backend: t.backend,
                labels: t.labels,
                os: t.os,
                arch: t.arch,
                max_vcpus: t.max_vcpus,
                max_memory_mib: t.max_memory_mib,
            });
        }
        let now = now_ms();
        let mut state = self.lock();
        let admitted = self.admit_agent(&state, &agent_id, presented, peer)?;
        let existing = state.agents.get(&agent_id).map(|a| a.record.clone());
        let online = state.agents.get(&agent_id).is_some_and(AgentEntry::ready);
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            hostname: request.hostname,
            backend: request.backend,
            max_runners: capacity.max_runners,
            cpu_cores: capacity.cpu_cores,
            memory_mib: capacity.memory_mib,
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
            version: request.version,
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
        let t = &self.config.timeouts;
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(pb::RegisterAgentResponse {
            snapshot_interval_ms: millis(t.snapshot_interval),
            credential: admitted.issued.unwrap_or_default(),
            heartbeat_interval_ms: millis(t.heartbeat_interval),
            heartbeat_timeout_ms: millis(t.agent_offline_after),
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

    pub fn on_agent_message(&self, agent_id: &AgentId, session_id: u64, message: pb::AgentMessage) {
        let mut state = self.lock();
        let Some(entry) = state.agents.get_mut(agent_id) else {
            return;
        };
        let Some(session) = entry.session.as_mut().filter(|s| s.id == session_id) else {
            return; // a replaced session still draining
        };
        entry.last_seen = Instant::now();
        match message.message {
            Some(pb::agent_message::Message::Snapshot(snapshot)) => {
                let first = !session.synced;
                session.synced = true;
                let session_id = session.id;
                if first {
                    entry.record.online = true;
                    self.writer.agent_online(agent_id.clone(), true, now_ms());
                    tracing::info!(agent = %agent_id, runners = snapshot.runners.len(), "agent online; reconciling");
                }
                if first {
                    state.reindex(agent_id);
                }
                self.reconcile(&mut state, agent_id, session_id, &snapshot, first);
                if first {
                    // Its free slots can serve queued calls now.
                    self.pump(&mut state);
                }
            }
            Some(pb::agent_message::Message::RunnerUpdate(status)) => {
                if !self.apply_status(&mut state, agent_id, &status) {
                    self.delete_stray(&state, agent_id, &status);
                }
            }
            Some(pb::agent_message::Message::GuestReply(reply)) => {
                drop(state);
                self.guest_reply(reply);
            }
            Some(pb::agent_message::Message::Hello(_))
            | Some(pb::agent_message::Message::Heartbeat(_))
            | None => {}
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
                    let _ = session.commands.send(pb::ServerMessage {
                        message: Some(pb::server_message::Message::Heartbeat(pb::Heartbeat {
                            sent_at_unix_us: super::unix_micros(),
                        })),
                        sent_at_unix_us: super::unix_micros(),
                    });
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
        snapshot: &pb::Snapshot,
        first: bool,
    ) {
        let mut reported = HashSet::new();
        for status in &snapshot.runners {
            if let Ok(id) = RunnerId::parse(&status.runner_id) {
                reported.insert(id);
            }
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
                let _ = agent.push(delete_command(&id));
            }
        }
    }

    fn delete_stray(&self, state: &FleetState, agent_id: &AgentId, status: &pb::RunnerStatus) {
        if status.state == pb::RunnerState::Deleted as i32 {
            return;
        }
        let Ok(id) = RunnerId::parse(&status.runner_id) else {
            return;
        };
        tracing::warn!(agent = %agent_id, runner = %id, "agent has a runner the server does not want; deleting it");
        if let Some(agent) = state.agents.get(agent_id) {
            let _ = agent.push(delete_command(&id));
        }
    }
}
