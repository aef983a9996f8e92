//! The server's live view of agents and runners, and every decision made on it.
//!
//! # Layout
//! - `mod.rs`: the state, its lock, loading from the store, views for the API and metrics.
//! - [`sessions`]: agent registration, Sync sessions, snapshots and reconciliation, liveness.
//! - [`instances`]: AddInstance / DeleteInstance: reserve, push, wait, clean up.
//! - [`error`]: errors and their gRPC codes.
//!
//! One `std::sync::Mutex` guards the state and is never held across an `.await`; store writes
//! leave through the ordered [`StoreWriter`], commands through each agent's unbounded channel.

pub mod error;
pub mod instances;
pub mod sessions;

use crate::config::ServerConfig;
use crate::metrics::{FleetGauges, Metrics, Phase};
use crate::store::{now_ms, AgentRecord, RunnerRecord, Store, StoreError, Timings};
use crate::writer::StoreWriter;
use shoes_vz_model::{AgentId, RunnerId, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use error::FleetError;

pub struct Fleet {
    state: Mutex<FleetState>,
    config: Arc<ServerConfig>,
    store: Store,
    writer: StoreWriter,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct FleetState {
    agents: HashMap<AgentId, AgentEntry>,
    /// Every runner not yet deleted.
    runners: HashMap<RunnerId, RunnerEntry>,
    /// Runner names in use, so a retried AddInstance never makes a twin.
    names: HashMap<String, RunnerId>,
    next_session: u64,
}

struct AgentEntry {
    record: AgentRecord,
    session: Option<Session>,
    last_seen: Instant,
}

struct Session {
    id: u64,
    commands: mpsc::UnboundedSender<pb::ServerMessage>,
    /// Set once the session's first snapshot was reconciled; only then is the agent scheduled.
    synced: bool,
    cancel: CancellationToken,
}

struct RunnerEntry {
    record: RunnerRecord,
    state_tx: watch::Sender<RunnerState>,
    /// The runner's warm-start fallback was counted (agents repeat it in every report).
    fallback_counted: bool,
}

impl AgentEntry {
    fn ready(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.synced)
    }

    /// Sends a command if the agent has a session; false when it cannot be delivered now.
    fn push(&self, message: pb::ServerMessage) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.commands.send(message).is_ok())
    }
}

impl Fleet {
    /// Loads agents (all offline until they reconnect) and live runners from the store.
    pub async fn load(
        config: Arc<ServerConfig>,
        store: Store,
        writer: StoreWriter,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Fleet, StoreError> {
        let mut state = FleetState::default();
        for mut record in store.list_agents().await? {
            record.online = false;
            state.agents.insert(
                record.agent_id.clone(),
                AgentEntry {
                    record,
                    session: None,
                    last_seen: Instant::now(),
                },
            );
        }
        for record in store.list_runners(false).await? {
            state
                .names
                .insert(record.runner_name.clone(), record.runner_id.clone());
            let (state_tx, _) = watch::channel(record.state);
            state.runners.insert(
                record.runner_id.clone(),
                RunnerEntry {
                    record,
                    state_tx,
                    fallback_counted: false,
                },
            );
        }
        tracing::info!(
            agents = state.agents.len(),
            runners = state.runners.len(),
            "loaded fleet state from the store"
        );
        Ok(Fleet {
            state: Mutex::new(state),
            config,
            store,
            writer,
            metrics,
            shutdown,
        })
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runners for operators: live ones from memory, deleted ones from the store.
    pub async fn list_runners(
        &self,
        include_deleted: bool,
    ) -> Result<Vec<(RunnerRecord, String)>, FleetError> {
        let mut records: Vec<RunnerRecord> = if include_deleted {
            // Deleted runners are read back from the store: let queued writes land first.
            self.writer.flush().await;
            let live: HashMap<RunnerId, RunnerRecord> = {
                let state = self.lock();
                state
                    .runners
                    .values()
                    .map(|e| (e.record.runner_id.clone(), e.record.clone()))
                    .collect()
            };
            self.store
                .list_runners(true)
                .await
                .map_err(|e| FleetError::Unavailable(format!("cannot read the state store: {e}")))?
                .into_iter()
                .map(|stored| live.get(&stored.runner_id).cloned().unwrap_or(stored))
                .collect()
        } else {
            self.lock()
                .runners
                .values()
                .map(|e| e.record.clone())
                .collect()
        };
        records.sort_by_key(|r| r.created_at_ms);
        let hostnames = self.hostnames();
        Ok(records
            .into_iter()
            .map(|r| {
                let host = hostnames.get(&r.agent_id).cloned().unwrap_or_default();
                (r, host)
            })
            .collect())
    }

    pub async fn get_runner(
        &self,
        id: &RunnerId,
    ) -> Result<Option<(RunnerRecord, String)>, FleetError> {
        let live = self.lock().runners.get(id).map(|e| e.record.clone());
        let record = match live {
            Some(record) => Some(record),
            None => {
                // Not live: read it back from the store once queued writes have landed.
                self.writer.flush().await;
                self.store.get_runner(id).await.map_err(|e| {
                    FleetError::Unavailable(format!("cannot read the state store: {e}"))
                })?
            }
        };
        let hostnames = self.hostnames();
        Ok(record.map(|r| {
            let host = hostnames.get(&r.agent_id).cloned().unwrap_or_default();
            (r, host)
        }))
    }

    fn hostnames(&self) -> HashMap<AgentId, String> {
        self.lock()
            .agents
            .iter()
            .map(|(id, a)| (id.clone(), a.record.hostname.clone()))
            .collect()
    }

    pub fn gauges(&self) -> FleetGauges {
        let state = self.lock();
        let mut gauges = FleetGauges::default();
        for agent in state.agents.values() {
            if agent.ready() {
                gauges.agents_online += 1;
                gauges.capacity_total_runners += i64::from(agent.record.max_runners);
            } else {
                gauges.agents_offline += 1;
            }
        }
        let mut by_state: HashMap<RunnerState, i64> = HashMap::new();
        for runner in state.runners.values() {
            *by_state.entry(runner.record.state).or_default() += 1;
        }
        gauges.runners_by_state = by_state.into_iter().collect();
        gauges
    }

    /// Waits until queued store writes are applied (used on shutdown and by tests).
    pub async fn flush(&self) {
        self.writer.flush().await;
    }

    /// Applies a state report to a runner the fleet knows. Returns false when the runner is
    /// unknown (the caller decides what to do with strays).
    fn apply_status(
        &self,
        state: &mut FleetState,
        agent_id: &AgentId,
        status: &pb::RunnerStatus,
    ) -> bool {
        let Ok(runner_id) = RunnerId::parse(&status.runner_id) else {
            tracing::warn!(agent = %agent_id, "agent reported a malformed runner id; ignored");
            return true;
        };
        let Some(entry) = state.runners.get_mut(&runner_id) else {
            return false;
        };
        if &entry.record.agent_id != agent_id {
            tracing::warn!(runner = %runner_id, agent = %agent_id, "agent reported a runner placed elsewhere; ignored");
            return true;
        }
        let Some(new_state) = state_from_pb(status.state) else {
            tracing::warn!(runner = %runner_id, "agent reported an unspecified state; ignored");
            return true;
        };
        let old_state = entry.record.state;
        if !old_state.can_become(new_state) {
            tracing::debug!(runner = %runner_id, from = %old_state, to = %new_state, "stale runner state ignored");
            return true;
        }
        let record = &mut entry.record;
        if !status.ip_address.is_empty() {
            record.ip_address.clone_from(&status.ip_address);
        }
        if !status.error.is_empty() {
            record.error.clone_from(&status.error);
        }
        if !status.guest_runner_state.is_empty() {
            record
                .guest_runner_state
                .clone_from(&status.guest_runner_state);
        }
        if let Some(timings) = &status.timings {
            self.merge_timings(&mut record.timings, timings);
        }
        if status.warm_start_fallback && !entry.fallback_counted {
            entry.fallback_counted = true;
            self.metrics.count_warm_fallback();
        }
        if new_state.is_ready() && record.timings.startup_ms.is_none() {
            let startup = u64::try_from(now_ms() - record.created_at_ms).unwrap_or(0);
            record.timings.startup_ms = Some(startup);
            self.metrics.observe_startup(startup);
        }
        record.state = new_state;
        record.updated_at_ms = now_ms();
        if old_state != new_state {
            tracing::info!(runner = %runner_id, from = %old_state, to = %new_state, "runner state changed");
        }
        self.writer.update_runner(record.clone());
        entry.state_tx.send_replace(new_state);
        if new_state == RunnerState::Deleted {
            self.forget(state, &runner_id);
        }
        true
    }

    fn merge_timings(&self, into: &mut Timings, from: &pb::PhaseTimings) {
        let fields = [
            (&mut into.clone_ms, from.clone_ms, Phase::Clone),
            (&mut into.boot_to_ip_ms, from.boot_to_ip_ms, Phase::BootToIp),
            (
                &mut into.boot_to_ssh_ms,
                from.boot_to_ssh_ms,
                Phase::BootToSsh,
            ),
            (&mut into.setup_ms, from.setup_ms, Phase::Setup),
        ];
        for (slot, value, phase) in fields {
            if value > 0 && slot.is_none() {
                *slot = Some(value);
                self.metrics.observe_phase(phase, value);
            }
        }
    }

    /// Marks a runner deleted without its agent (it never reached one, or the agent lost it).
    fn finish_without_agent(&self, state: &mut FleetState, runner_id: &RunnerId, reason: &str) {
        let Some(entry) = state.runners.get_mut(runner_id) else {
            return;
        };
        let record = &mut entry.record;
        if record.state != RunnerState::Error {
            record.state = RunnerState::Error;
            record.error = reason.to_string();
            record.updated_at_ms = now_ms();
            self.writer.update_runner(record.clone());
        }
        record.state = RunnerState::Deleted;
        record.updated_at_ms = now_ms();
        self.writer.update_runner(record.clone());
        entry.state_tx.send_replace(RunnerState::Deleted);
        tracing::warn!(runner = %runner_id, reason, "runner marked deleted without its agent");
        self.forget(state, runner_id);
    }

    fn forget(&self, state: &mut FleetState, runner_id: &RunnerId) {
        if let Some(entry) = state.runners.remove(runner_id) {
            if state.names.get(&entry.record.runner_name) == Some(runner_id) {
                state.names.remove(&entry.record.runner_name);
            }
        }
    }
}

pub(crate) fn state_from_pb(value: i32) -> Option<RunnerState> {
    use pb::RunnerState as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Creating => RunnerState::Creating,
        P::Booting => RunnerState::Booting,
        P::SshReady => RunnerState::SshReady,
        P::Running => RunnerState::Running,
        P::TearingDown => RunnerState::TearingDown,
        P::Error => RunnerState::Error,
        P::Deleted => RunnerState::Deleted,
    })
}

pub(crate) fn delete_command(runner_id: &RunnerId) -> pb::ServerMessage {
    pb::ServerMessage {
        message: Some(pb::server_message::Message::DeleteRunner(
            pb::DeleteRunner {
                runner_id: runner_id.to_string(),
            },
        )),
        sent_at_unix_us: unix_micros(),
    }
}

pub(crate) use shoes_vz_model::clock::unix_micros;
