//! AddInstance and DeleteInstance.
//!
//! AddInstance is idempotent per runner_name: a call naming a live runner attaches to it and
//! gets the same answer as the first call; a call naming a queued request joins it. A new
//! request is placed at once if there is room (and nobody queues before it), else it queues
//! (see [`super::queue`]). A placed runner is recorded durably, then its create command is
//! pushed to its agent by a launch task the fleet owns, so a caller that goes away never
//! leaves a half-launched runner; the caller waits, event-driven, for ssh-ready.
//!
//! DeleteInstance answers as soon as the deletion is durably recorded; the agent tears the VM
//! down meanwhile, and a restarted server carries the deletion out.

use super::claims::{QueueWaiter, RunnerWaiter};
use super::queue::Placed;
use super::{Fleet, FleetError, FleetState, RunnerEntry, RunnerSignal};
use crate::scheduler::{self, PlacementError};
use crate::store::{now_ms, NewRunner, RunnerRecord};
use crate::writer::WriteError;
use shoes_vz_model::link::{AgentCommand, CreateRunner};
use shoes_vz_model::{CloudId, ResourceSpec, ResourceType, RunnerId, RunnerName, RunnerState};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// An AddInstance request whose name, labels and size were checked at the API's edge
/// (`shoes_api`).
pub struct AddRequest {
    pub runner_name: RunnerName,
    /// Holds a GitHub registration token: never logged, never in an error.
    pub setup_script: String,
    pub resource_type: ResourceType,
    pub labels: Vec<String>,
}

/// A validated AddInstance request.
pub struct AddPlan {
    pub name: RunnerName,
    /// Holds a GitHub registration token: never logged, never in an error.
    pub setup_script: String,
    pub labels: Vec<String>,
    pub served: ResourceType,
    pub spec: ResourceSpec,
}

#[derive(Debug, Clone)]
pub struct AddOutcome {
    pub cloud_id: CloudId,
    pub ip_address: String,
    pub resource_type: ResourceType,
}

/// Where an admitted call goes on waiting.
enum Admission {
    Runner(RunnerWaiter, watch::Receiver<RunnerSignal>),
    Queued(QueueWaiter),
}

impl Fleet {
    pub async fn add_instance(
        self: &Arc<Self>,
        request: AddRequest,
    ) -> Result<AddOutcome, FleetError> {
        let plan = Arc::new(self.plan_add(request)?);
        let arrived = Instant::now();
        // A store that cannot keep up slows new runners down rather than queueing writes
        // without end.
        self.writer
            .wait_for_room(self.config.timeouts.queue_wait)
            .await
            .map_err(FleetError::StoreWrite)?;
        let deadline = tokio::time::Instant::now() + self.config.timeouts.add_instance;
        let (waiter, mut signal) = match self.admit(&plan, arrived)? {
            Admission::Runner(waiter, signal) => (waiter, signal),
            Admission::Queued(queued) => self.wait_in_queue(&plan, queued).await?,
        };
        let cloud_id = waiter.runner_id().cloud_id();
        let waited = tokio::time::timeout_at(
            deadline,
            wait_for(&mut signal, |s| {
                s.state.is_ready()
                    || matches!(
                        s.state,
                        RunnerState::Error | RunnerState::TearingDown | RunnerState::Deleted
                    )
            }),
        )
        .await;
        match waited {
            Ok(seen) if seen.state.is_ready() => Ok(self.answer(waiter.runner_id())),
            Ok(seen) => Err(FleetError::RunnerFailed {
                cloud_id,
                reason: if seen.error.is_empty() {
                    format!("it became {}", seen.state)
                } else {
                    seen.error
                },
            }),
            Err(_) => Err(FleetError::NotReadyInTime {
                cloud_id,
                waited: self.config.timeouts.add_instance,
            }),
        }
    }

    fn plan_add(&self, request: AddRequest) -> Result<AddPlan, FleetError> {
        let (served, spec) = self
            .config
            .resources
            .resolve(request.resource_type)
            .map_err(|e| FleetError::Request(e.into()))?;
        Ok(AddPlan {
            name: request.runner_name,
            setup_script: request.setup_script,
            labels: request.labels,
            served,
            spec,
        })
    }

    /// Attaches to the live runner or queued call of the same name, places the request, or
    /// queues it.
    fn admit(
        self: &Arc<Self>,
        plan: &Arc<AddPlan>,
        arrived: Instant,
    ) -> Result<Admission, FleetError> {
        let mut state = self.lock();
        let attach_to = state.names.get(plan.name.as_str()).cloned();
        if let Some(runner_id) = attach_to {
            if let Some(entry) = state.runners.get_mut(&runner_id) {
                entry.waiters += 1;
                entry.unclaimed_since = None;
                tracing::info!(runner = %runner_id, runner_name = %plan.name, "AddInstance retried: attached to the runner of the same name");
                let signal = entry.signal.subscribe();
                return Ok(Admission::Runner(
                    RunnerWaiter::counted(self, runner_id),
                    signal,
                ));
            }
        }
        if let Some((queue_id, placed)) = state.queue.join(plan.name.as_str()) {
            tracing::info!(runner_name = %plan.name, "AddInstance retried: joined the queued request of the same name");
            return Ok(Admission::Queued(QueueWaiter::new(self, queue_id, placed)));
        }
        if state.queue.is_empty() {
            match self.try_place(&state, plan) {
                Ok(placement) => {
                    let runner_id = self.create_runner(&mut state, plan, placement, 1, arrived);
                    let signal = state
                        .runners
                        .get(&runner_id)
                        .map(|e| e.signal.subscribe())
                        .ok_or(FleetError::Internal("a placed runner vanished"))?;
                    return Ok(Admission::Runner(
                        RunnerWaiter::counted(self, runner_id),
                        signal,
                    ));
                }
                Err(error @ (PlacementError::NeverFits(_) | PlacementError::NoAgents)) => {
                    return Err(error.into())
                }
                Err(PlacementError::NoRoomNow(_)) => {}
            }
        } else if let Err(error @ PlacementError::NeverFits(_)) = self.try_place(&state, plan) {
            return Err(error.into());
        }
        let (queue_id, placed) = state.queue.push(Arc::clone(plan), arrived);
        tracing::info!(runner_name = %plan.name, queued = state.queue.waiting_calls(), "no room now; AddInstance queued");
        // Room the earlier calls cannot use may still fit this one.
        self.pump(&mut state);
        Ok(Admission::Queued(QueueWaiter::new(self, queue_id, placed)))
    }

    /// Waits in the queue until the call is placed, up to `queue_wait`.
    async fn wait_in_queue(
        self: &Arc<Self>,
        plan: &AddPlan,
        mut queued: QueueWaiter,
    ) -> Result<(RunnerWaiter, watch::Receiver<RunnerSignal>), FleetError> {
        let limit = self.config.timeouts.queue_wait;
        let placed = tokio::time::timeout(limit, async {
            queued
                .placed()
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|placed| placed.clone())
        })
        .await;
        let placed = match placed {
            Ok(placed) => placed,
            Err(_) => {
                self.metrics.count_queue_timeout();
                // Why, as of now: full, offline or cordoned agents (an operator's drain
                // looks different from a fleet that is too small).
                let why = match self.try_place(&self.lock(), plan) {
                    Err(PlacementError::NoRoomNow(why)) => why,
                    _ => "every matching agent is full, offline or cordoned".into(),
                };
                return Err(FleetError::NoCapacity { waited: limit, why });
            }
        };
        match placed {
            Some(Placed::Runner(runner_id)) => {
                let signal = self
                    .lock()
                    .runners
                    .get(&runner_id)
                    .map(|e| e.signal.subscribe());
                let waiter = queued.into_runner_waiter(runner_id.clone());
                let signal = signal.ok_or_else(|| FleetError::Vanished(runner_id.cloud_id()))?;
                Ok((waiter, signal))
            }
            Some(Placed::Refused(never)) => Err(never.into()),
            None => Err(FleetError::ShuttingDown),
        }
    }

    pub(super) fn try_place(
        &self,
        state: &FleetState,
        plan: &AddPlan,
    ) -> Result<scheduler::Placement, PlacementError> {
        let decided = state
            .index
            .place(&self.config.scheduler, &plan.labels, plan.spec);
        #[cfg(debug_assertions)]
        super::placement::check_against_full_scan(
            state,
            &self.config.scheduler,
            &plan.labels,
            plan.spec,
            &decided,
        );
        decided
    }

    /// Records a placed runner (counting `waiters` callers on it) and launches it: the store
    /// insert is queued now, in order before any later write of it, and a fleet-owned task
    /// pushes the create command once the insert is durable.
    pub(super) fn create_runner(
        &self,
        state: &mut FleetState,
        plan: &AddPlan,
        placement: scheduler::Placement,
        waiters: usize,
        arrived: Instant,
    ) -> RunnerId {
        let runner_id = RunnerId::generate();
        let queue_ms = u64::try_from(arrived.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.metrics.observe_queue_wait(queue_ms);
        let mut record = RunnerRecord::new(
            runner_id.clone(),
            NewRunner {
                runner_name: plan.name.to_string(),
                agent_id: placement.agent_id,
                template: placement.template,
                resource_type: plan.served,
                spec: plan.spec,
                labels: plan.labels.clone(),
            },
            now_ms(),
        );
        record.timings.queue_ms = Some(queue_ms);
        tracing::info!(runner = %runner_id, runner_name = %plan.name, agent = %record.agent_id, template = %record.template, resource_type = %plan.served, "runner placed");
        let create = CreateRunner {
            runner_id: runner_id.clone(),
            runner_name: plan.name.clone(),
            template: record.template.clone(),
            spec: plan.spec,
            setup_script: plan.setup_script.clone(),
        };
        let inserted = self.writer.insert_runner(record.clone());
        let mut entry = RunnerEntry::new(record);
        entry.waiters = waiters;
        state.names.insert(plan.name.to_string(), runner_id.clone());
        state.add_runner(entry);
        match self.me.upgrade() {
            Some(fleet) => {
                let id = runner_id.clone();
                self.tasks
                    .spawn(async move { fleet.launch(id, inserted, create).await });
            }
            None => {
                tracing::error!(runner = %runner_id, "the fleet is shutting down; the runner is not launched")
            }
        }
        runner_id
    }

    async fn launch(
        self: Arc<Self>,
        runner_id: RunnerId,
        inserted: impl Future<Output = Result<(), WriteError>>,
        create: CreateRunner,
    ) {
        if let Err(error) = inserted.await {
            let mut state = self.lock();
            tracing::error!(runner = %runner_id, error = %error, "cannot record a placed runner");
            if let Some(entry) = state.runners.get_mut(&runner_id) {
                entry.record.state = RunnerState::Deleted;
                entry.record.error = format!(
                    "the server could not record the runner in its state store ({error}); retry"
                );
                entry.publish();
            }
            self.forget(&mut state, &runner_id);
            self.pump(&mut state);
            return;
        }
        let message = AgentCommand::Create(create);
        let mut state = self.lock();
        let Some(entry) = state.runners.get(&runner_id) else {
            return;
        };
        if entry.record.delete_requested {
            self.finish_without_agent(
                &mut state,
                &runner_id,
                "deleted before its create command was sent",
            );
            return;
        }
        let agent_id = entry.record.agent_id.clone();
        let pushed = state.agents.get(&agent_id).and_then(|a| a.push(message));
        match pushed {
            Some(session) => {
                if let Some(entry) = state.runners.get_mut(&runner_id) {
                    entry.pushed_to_session = Some(session);
                }
            }
            None => self.finish_without_agent(
                &mut state,
                &runner_id,
                "the agent disconnected before the create command reached it; retry",
            ),
        }
    }

    /// Marks the runner answered (myshoes now holds its cloud_id) and returns the answer.
    fn answer(&self, runner_id: &RunnerId) -> AddOutcome {
        let mut state = self.lock();
        let (ip_address, resource_type) = match state.runners.get_mut(runner_id) {
            Some(entry) => {
                if !entry.record.answered {
                    entry.record.answered = true;
                    entry.unclaimed_since = None;
                    entry.record.updated_at_ms = now_ms();
                    self.writer.update_runner(entry.record.clone());
                }
                (entry.record.ip_address.clone(), entry.record.resource_type)
            }
            None => (String::new(), ResourceType::Unknown),
        };
        AddOutcome {
            cloud_id: runner_id.cloud_id(),
            ip_address,
            resource_type,
        }
    }

    /// Answers once the deletion is durably recorded; the VM goes meanwhile. A runner that
    /// ended on its own is released. Unknown or already deleted runners are NotFound.
    pub async fn delete_instance(&self, cloud_id: &CloudId) -> Result<(), FleetError> {
        let runner_id = cloud_id.runner_id();
        let recorded = {
            let mut state = self.lock();
            self.request_delete(&mut state, &runner_id)
        };
        if let Some(recorded) = recorded {
            return recorded.await.map_err(FleetError::StoreWrite);
        }
        self.writer.flush().await;
        match self.store.get_runner(&runner_id).await {
            Ok(Some(_)) => Err(FleetError::AlreadyDeleted(cloud_id.clone())),
            Ok(None) => Err(FleetError::UnknownRunner(cloud_id.clone())),
            Err(e) => Err(FleetError::StoreRead(e)),
        }
    }

    /// Records that a runner must go and tells its agent (now, or when it reconnects).
    /// Returns a future that resolves once the record is durable, or `None` when the fleet
    /// does not hold the runner. A runner that already ended is released.
    pub(super) fn request_delete(
        &self,
        state: &mut FleetState,
        runner_id: &RunnerId,
    ) -> Option<impl Future<Output = Result<(), WriteError>> + Send + 'static> {
        let entry = state.runners.get_mut(runner_id)?;
        entry.record.delete_requested = true;
        entry.record.updated_at_ms = now_ms();
        let recorded = self.writer.update_runner_durably(entry.record.clone());
        if entry.record.state == RunnerState::Deleted {
            self.forget(state, runner_id);
            return Some(recorded);
        }
        entry.publish();
        let agent_id = entry.record.agent_id.clone();
        super::release_name(state, runner_id);
        let pushed = state
            .agents
            .get(&agent_id)
            .filter(|a| a.ready())
            .and_then(|a| a.push(AgentCommand::Delete(runner_id.clone())));
        if pushed.is_none() {
            tracing::info!(runner = %runner_id, "agent offline; deletion recorded and sent when it reconnects");
        }
        Some(recorded)
    }
}

/// Waits until the watched value satisfies `done`; the last value counts when the sender is
/// dropped (the runner was forgotten).
async fn wait_for(
    rx: &mut watch::Receiver<RunnerSignal>,
    done: impl Fn(&RunnerSignal) -> bool,
) -> RunnerSignal {
    loop {
        let current = rx.borrow_and_update().clone();
        if done(&current) {
            return current;
        }
        if rx.changed().await.is_err() {
            return rx.borrow().clone();
        }
    }
}
