//! The server's live view of agents and runners, and every decision made on it.
//!
//! # Layout
//! - `mod.rs`: the state, its lock, loading from the store, applying runner reports, views
//!   for the API and metrics.
//! - [`sessions`]: agent registration, Sync sessions, snapshots and reconciliation, liveness.
//! - [`trust`]: who an agent is (enrollment, its own credential), revocation, cordon.
//! - [`instances`]: AddInstance / DeleteInstance: admit (attach, place or queue), launch,
//!   wait, delete.
//! - [`queue`]: AddInstance calls waiting for a free slot, first come first served.
//! - `placement`: the scheduler's placement index kept in step with agents and runners.
//! - [`claims`]: who waits for which runner, and runners nobody claimed.
//! - [`guest`]: operators' requests about a live runner (commands, logs), through its agent.
//! - [`retention`]: deleted runners leave the store after `history.retention`.
//! - [`error`]: errors and their gRPC codes.
//!
//! One `std::sync::Mutex` guards the state and is never held across an `.await`; store writes
//! leave through the ordered [`StoreWriter`], commands through each agent's unbounded channel.
//!
//! A runner that ended on its own (its job finished, it failed) after myshoes got its
//! cloud_id stays in memory, in state `deleted`, until myshoes' DeleteInstance releases it:
//! that call then answers OK, as for any runner myshoes still holds.

pub mod claims;
pub mod error;
pub mod guest;
pub mod instances;
mod placement;
pub mod queue;
pub mod retention;
pub mod sessions;
pub mod trust;

use crate::config::ServerConfig;
use crate::metrics::{FailureReason, FleetGauges, Metrics, Phase};
use crate::store::{now_ms, AgentRecord, RunnerRecord, Store, StoreError, Timings};
use crate::writer::StoreWriter;
use shoes_vz_model::link::{AgentCommand, GuestReply, PhaseTimings, RunnerReport};
use shoes_vz_model::{AgentId, RunnerId, RunnerState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::FleetError;

pub struct Fleet {
    state: Mutex<FleetState>,
    config: Arc<ServerConfig>,
    store: Store,
    writer: StoreWriter,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Runner launches (store insert, then the create command) outlive the AddInstance call
    /// that caused them; the server waits for them on shutdown.
    tasks: TaskTracker,
    /// The fleet itself, for the tasks it starts from under its lock.
    me: std::sync::Weak<Fleet>,
}

#[derive(Default)]
struct FleetState {
    agents: HashMap<AgentId, AgentEntry>,
    /// Every runner not yet released: live ones, and ended ones myshoes has not deleted.
    runners: HashMap<RunnerId, RunnerEntry>,
    /// Runner names a retried AddInstance attaches to: live runners not being deleted.
    names: HashMap<String, RunnerId>,
    queue: queue::AddQueue,
    /// Where new runners can go, kept up to date as agents and runners change.
    index: crate::scheduler::index::PlacementIndex,
    next_session: u64,
    /// Operators' requests waiting for their agent's answer, by request id.
    guest_calls: HashMap<u64, tokio::sync::oneshot::Sender<GuestReply>>,
    next_guest_request: u64,
}

struct AgentEntry {
    record: AgentRecord,
    session: Option<Session>,
    last_seen: Instant,
    /// Its runners the fleet holds (live, and ended ones not yet released).
    runners: HashSet<RunnerId>,
}

impl AgentEntry {
    fn new(record: AgentRecord) -> AgentEntry {
        AgentEntry {
            record,
            session: None,
            last_seen: Instant::now(),
            runners: HashSet::new(),
        }
    }
}

struct Session {
    id: u64,
    commands: mpsc::UnboundedSender<AgentCommand>,
    /// Set once the session's first snapshot was reconciled; only then is the agent scheduled.
    synced: bool,
    cancel: CancellationToken,
    heartbeat_sent: Instant,
}

/// What an AddInstance call waiting on a runner needs to see, published on every change (so
/// the reason of a failure is read with the state that reports it, never after the runner is
/// gone).
#[derive(Debug, Clone)]
pub struct RunnerSignal {
    pub state: RunnerState,
    pub ip_address: String,
    /// The runner's first failure, without secrets.
    pub error: String,
}

impl RunnerSignal {
    fn of(record: &RunnerRecord) -> RunnerSignal {
        RunnerSignal {
            state: record.state,
            ip_address: record.ip_address.clone(),
            error: record.error.clone(),
        }
    }
}

struct RunnerEntry {
    record: RunnerRecord,
    signal: watch::Sender<RunnerSignal>,
    /// The runner's warm-start fallback was counted (agents repeat it in every report).
    fallback_counted: bool,
    /// AddInstance calls waiting for this runner now.
    waiters: usize,
    /// Since when nobody has waited for this never-answered runner; see [`claims`].
    unclaimed_since: Option<Instant>,
    /// The agent session its create command was pushed to; `None` until launched.
    pushed_to_session: Option<u64>,
}

impl RunnerEntry {
    fn new(record: RunnerRecord) -> RunnerEntry {
        let (signal, _) = watch::channel(RunnerSignal::of(&record));
        RunnerEntry {
            record,
            signal,
            fallback_counted: false,
            waiters: 0,
            unclaimed_since: None,
            pushed_to_session: None,
        }
    }

    /// A retry under the runner's name may wait for it.
    fn attachable(&self) -> bool {
        !self.record.delete_requested
            && matches!(
                self.record.state,
                RunnerState::Creating
                    | RunnerState::Booting
                    | RunnerState::SshReady
                    | RunnerState::Running
            )
    }

    fn publish(&self) {
        self.signal.send_replace(RunnerSignal::of(&self.record));
    }
}

impl AgentEntry {
    fn ready(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.synced)
    }

    /// Sends a command if the agent has a session; the session's id, or `None` when it
    /// cannot be delivered now.
    fn push(&self, message: AgentCommand) -> Option<u64> {
        let session = self.session.as_ref()?;
        session.commands.send(message).ok().map(|()| session.id)
    }
}

impl Fleet {
    /// Loads agents (all offline until they reconnect) and unreleased runners from the store.
    /// Live runners never answered have lost their caller with the old process: their claim
    /// grace starts now.
    pub async fn load(
        config: Arc<ServerConfig>,
        store: Store,
        writer: StoreWriter,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Fleet>, StoreError> {
        let mut state = FleetState::default();
        for mut record in store.list_agents().await? {
            record.online = false;
            state
                .agents
                .insert(record.agent_id.clone(), AgentEntry::new(record));
        }
        let now = Instant::now();
        for record in store.list_unreleased_runners().await? {
            let mut entry = RunnerEntry::new(record);
            if entry.attachable() {
                state.names.insert(
                    entry.record.runner_name.clone(),
                    entry.record.runner_id.clone(),
                );
                if !entry.record.answered {
                    entry.unclaimed_since = Some(now);
                }
            }
            state.add_runner(entry);
        }
        let agent_ids: Vec<AgentId> = state.agents.keys().cloned().collect();
        for agent_id in &agent_ids {
            state.reindex_templates(agent_id);
        }
        tracing::info!(
            agents = state.agents.len(),
            runners = state.runners.len(),
            "loaded fleet state from the store"
        );
        Ok(Arc::new_cyclic(|me| Fleet {
            state: Mutex::new(state),
            config,
            store,
            writer,
            metrics,
            shutdown,
            tasks: TaskTracker::new(),
            me: me.clone(),
        }))
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

    /// One page of runners for operators, oldest first: from memory for live ones, from the
    /// store (newest state from memory) with `include_deleted`. Returns the page and the key
    /// after its last runner when more may follow.
    pub async fn list_runners(
        &self,
        include_deleted: bool,
        after: Option<(i64, RunnerId)>,
        limit: u32,
    ) -> Result<(Vec<(RunnerRecord, String)>, Option<(i64, RunnerId)>), FleetError> {
        let limit = limit.clamp(1, 1000);
        let in_order = |r: &RunnerRecord| {
            after
                .as_ref()
                .is_none_or(|(at, id)| (r.created_at_ms, &r.runner_id) > (*at, id))
        };
        let mut records: Vec<RunnerRecord> = if include_deleted {
            // Ended runners are read back from the store: let queued writes land first.
            self.writer.flush().await;
            let stored = self
                .store
                .list_runners_page(after.as_ref().map(|(at, id)| (*at, id)), limit)
                .await
                .map_err(FleetError::StoreRead)?;
            let state = self.lock();
            stored
                .into_iter()
                .map(|r| {
                    state
                        .runners
                        .get(&r.runner_id)
                        .map_or(r, |live| live.record.clone())
                })
                .collect()
        } else {
            let state = self.lock();
            state
                .runners
                .values()
                .filter(|e| e.record.state.holds_slot() && in_order(&e.record))
                .map(|e| e.record.clone())
                .collect()
        };
        records
            .sort_by(|a, b| (a.created_at_ms, &a.runner_id).cmp(&(b.created_at_ms, &b.runner_id)));
        records.truncate(limit as usize);
        let next = (records.len() == limit as usize)
            .then(|| {
                records
                    .last()
                    .map(|r| (r.created_at_ms, r.runner_id.clone()))
            })
            .flatten();
        let hostnames = self.hostnames();
        Ok((
            records
                .into_iter()
                .map(|r| {
                    let host = hostnames.get(&r.agent_id).cloned().unwrap_or_default();
                    (r, host)
                })
                .collect(),
            next,
        ))
    }

    /// The runner's state history, oldest first (from the store, once queued writes landed).
    pub async fn runner_history(
        &self,
        id: &RunnerId,
    ) -> Result<Vec<crate::store::StateChange>, FleetError> {
        self.writer.flush().await;
        self.store.history(id).await.map_err(FleetError::StoreRead)
    }

    pub async fn get_runner(
        &self,
        id: &RunnerId,
    ) -> Result<Option<(RunnerRecord, String)>, FleetError> {
        let live = self.lock().runners.get(id).map(|e| e.record.clone());
        let record = match live {
            Some(record) => Some(record),
            None => {
                // Not in memory: read it back from the store once queued writes have landed.
                self.writer.flush().await;
                self.store
                    .get_runner(id)
                    .await
                    .map_err(FleetError::StoreRead)?
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
            if agent.record.cordoned && !agent.record.revoked {
                gauges.agents_cordoned += 1;
            }
            if agent.ready() {
                gauges.agents_online += 1;
                gauges.capacity_total_runners += i64::from(agent.record.max_runners);
            } else {
                gauges.agents_offline += 1;
            }
        }
        let mut by_state: HashMap<RunnerState, i64> = HashMap::new();
        for runner in state.runners.values() {
            if runner.record.state.holds_slot() {
                *by_state.entry(runner.record.state).or_default() += 1;
            }
        }
        gauges.runners_by_state = by_state.into_iter().collect();
        gauges.queue_length = i64::try_from(state.queue.waiting_calls()).unwrap_or(i64::MAX);
        drop(state);
        gauges.store_writer_queue = i64::try_from(self.writer.queued()).unwrap_or(i64::MAX);
        gauges.store_writer_lag_seconds = self.writer.lag().as_secs_f64();
        gauges
    }

    /// Waits until queued store writes are applied and launches have finished (used on
    /// shutdown and by tests).
    pub async fn flush(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
        self.writer.flush().await;
    }

    /// Applies a state report to a runner the fleet knows. Returns false when the runner is
    /// unknown (the caller decides what to do with strays).
    fn apply_status(
        &self,
        state: &mut FleetState,
        agent_id: &AgentId,
        status: &RunnerReport,
    ) -> bool {
        let runner_id = status.runner_id.clone();
        let Some(entry) = state.runners.get_mut(&runner_id) else {
            return false;
        };
        if &entry.record.agent_id != agent_id {
            tracing::warn!(runner = %runner_id, agent = %agent_id, "agent reported a runner placed elsewhere; ignored");
            return true;
        }
        let new_state = status.state;
        let old_state = entry.record.state;
        if !old_state.can_become(new_state) {
            tracing::debug!(runner = %runner_id, from = %old_state, to = %new_state, "stale runner state ignored");
            return true;
        }
        let record = &mut entry.record;
        let before = record.clone();
        if !status.ip_address.is_empty() {
            record.ip_address.clone_from(&status.ip_address);
        }
        // The first failure is the cause; later reports describe its consequences.
        if !status.error.is_empty() && record.error.is_empty() {
            record.error.clone_from(&status.error);
        }
        if !status.end_reason.is_empty() && record.end_reason.is_empty() {
            record.end_reason.clone_from(&status.end_reason);
        }
        if !status.guest_runner_state.is_empty() {
            record
                .guest_runner_state
                .clone_from(&status.guest_runner_state);
        }
        for (slot, value) in [
            (&mut record.job_started_at_ms, status.job_started_at_ms),
            (&mut record.job_finished_at_ms, status.job_finished_at_ms),
        ] {
            if slot.is_none() {
                *slot = value;
            }
        }
        self.merge_timings(&mut record.timings, &status.timings);
        if status.warm_start_fallback && !entry.fallback_counted {
            entry.fallback_counted = true;
            self.metrics.count_warm_fallback();
        }
        if new_state.is_ready() && record.timings.startup_ms.is_none() {
            let startup = u64::try_from(now_ms() - record.created_at_ms).unwrap_or(0);
            record.timings.startup_ms = Some(startup);
            self.metrics.observe_startup(startup);
        }
        if new_state == RunnerState::Error && old_state != RunnerState::Error {
            self.metrics
                .count_failure(failure_reason(&status.failure_step));
        }
        record.state = new_state;
        if *record == before {
            // Snapshots repeat what the server already has: nothing to write.
            return true;
        }
        record.updated_at_ms = now_ms();
        if old_state != new_state {
            tracing::info!(runner = %runner_id, from = %old_state, to = %new_state, "runner state changed");
        }
        self.writer.update_runner(record.clone());
        entry.publish();
        let attachable = entry.attachable();
        if old_state.holds_slot() != new_state.holds_slot() {
            state.reindex(agent_id);
        }
        if !attachable {
            release_name(state, &runner_id);
        }
        if new_state == RunnerState::Deleted {
            self.ended(state, &runner_id);
        }
        true
    }

    fn merge_timings(&self, into: &mut Timings, from: &PhaseTimings) {
        let fields = [
            (&mut into.clone_ms, from.clone_ms, Phase::Clone),
            (&mut into.boot_to_ip_ms, from.boot_to_ip_ms, Phase::BootToIp),
            (
                &mut into.boot_to_ssh_ms,
                from.boot_to_ssh_ms,
                Phase::BootToSsh,
            ),
            (&mut into.setup_ms, from.setup_ms, Phase::Setup),
            (&mut into.prepare_ms, from.prepare_ms, Phase::Prepare),
            (&mut into.vm_start_ms, from.vm_start_ms, Phase::VmStart),
            (&mut into.refresh_ms, from.refresh_ms, Phase::Refresh),
        ];
        for (slot, value, phase) in fields {
            if let (None, Some(value)) = (&slot, value) {
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
        if entry.record.state == RunnerState::Deleted {
            return;
        }
        let record = &mut entry.record;
        if record.state != RunnerState::Error {
            self.metrics.count_failure(FailureReason::Lost);
            record.state = RunnerState::Error;
            if record.error.is_empty() {
                record.error = reason.to_string();
            }
            record.updated_at_ms = now_ms();
            self.writer.update_runner(record.clone());
        }
        record.state = RunnerState::Deleted;
        record.updated_at_ms = now_ms();
        self.writer.update_runner(record.clone());
        let agent_id = record.agent_id.clone();
        entry.publish();
        state.reindex(&agent_id);
        tracing::warn!(runner = %runner_id, reason, "runner marked deleted without its agent");
        release_name(state, runner_id);
        self.ended(state, runner_id);
    }

    /// A runner's VM is gone. If myshoes holds its cloud_id and has not deleted it, it stays
    /// (in state `deleted`) until DeleteInstance releases it; otherwise it is forgotten. Its
    /// slot is free either way: queued AddInstance calls get their turn.
    fn ended(&self, state: &mut FleetState, runner_id: &RunnerId) {
        let keep = state
            .runners
            .get(runner_id)
            .is_some_and(|e| e.record.answered && !e.record.delete_requested);
        if keep {
            if let Some(entry) = state.runners.get(runner_id) {
                if !entry.record.end_reason.is_empty() && entry.record.error.is_empty() {
                    self.metrics.count_finished();
                }
            }
        } else {
            self.forget(state, runner_id);
        }
        self.pump(state);
    }

    fn forget(&self, state: &mut FleetState, runner_id: &RunnerId) {
        if state.remove_runner(runner_id).is_some() {
            release_name(state, runner_id);
        }
    }
}

/// Stops retries under the runner's name from attaching to it (it is failing, ending or
/// being deleted): a retry then gets a new runner.
fn release_name(state: &mut FleetState, runner_id: &RunnerId) {
    let name = state
        .runners
        .get(runner_id)
        .map(|e| e.record.runner_name.clone());
    match name {
        Some(name) => {
            if state.names.get(&name) == Some(runner_id) {
                state.names.remove(&name);
            }
        }
        None => state.names.retain(|_, id| id != runner_id),
    }
}

/// The agent's name for the step that failed, as a metrics label.
fn failure_reason(step: &str) -> FailureReason {
    match step {
        "clone" => FailureReason::Clone,
        "boot" => FailureReason::Boot,
        "ssh" => FailureReason::Ssh,
        "setup" => FailureReason::Setup,
        "job" => FailureReason::Job,
        _ => FailureReason::Other,
    }
}
