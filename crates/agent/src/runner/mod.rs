//! Runners on this host: slots, commands from the server, state reports.
//!
//! # Layout
//! - `mod.rs`: [`RunnerManager`]: slots, commands, reports, snapshots, shutdown.
//! - [`lifecycle`]: one task per runner: clone → boot → SSH → setup → follow the job → tear
//!   down; [`job`]: when a runner's job is done (pure rules); [`guest`]: the host↔guest channel;
//!   [`steps`]: where a start goes (a span and a duration per step).
//! - [`access`]: operators' commands and log reads in a live runner; [`secrets`]: what they
//!   never see.
//! - [`view`]: the per-runner record and how it is reported.

pub mod access;
pub mod guest;
pub mod job;
pub mod lifecycle;
pub mod secrets;
pub mod steps;
pub mod view;

use crate::config::AgentConfig;
use crate::hypervisor::{Hypervisor, VmEvent};
use crate::template::Template;
use shoes_vz_model::{RunnerId, RunnerName, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use view::{gone_status, PhaseTimes, RunnerView, StateFile};

/// How guests reach the agent's notify endpoint.
pub struct GuestChannel {
    pub hub: Arc<crate::notify::NotifyHub>,
    /// The URL put on every config disk.
    pub notify_url: String,
    /// Shared by every runner's guest API calls.
    pub http: reqwest::Client,
}

pub struct RunnerManager {
    config: Arc<AgentConfig>,
    hypervisor: Arc<dyn Hypervisor>,
    guest_channel: GuestChannel,
    templates: BTreeMap<String, Template>,
    slots: Mutex<HashMap<RunnerId, Slot>>,
    events: mpsc::UnboundedSender<Report>,
    state_file: StateFile,
    tasks: TaskTracker,
    /// Stops the VM-event listener.
    stop: CancellationToken,
    latencies: Mutex<Vec<Duration>>,
}

/// What the agent sends the server about its runners.
#[derive(Debug)]
pub enum Report {
    Status(pb::RunnerStatus),
    /// The answer to an operator's request about a runner.
    Reply(pb::GuestReply),
}

struct Slot {
    view: RunnerView,
    /// Masks the setup script's secrets in what operators see.
    secrets: Arc<secrets::SecretMask>,
    /// How operators reach the guest, once SSH is ready.
    access: Option<access::Access>,
    /// Cancelled when the server asks for deletion or the agent stops.
    cancel: CancellationToken,
    /// Cancelled when the VM stops on its own; the detail says why.
    vm_exit: CancellationToken,
    exit_detail: Option<String>,
    /// Aborts the lifecycle task without teardown (crash simulation only).
    task: Option<tokio::task::AbortHandle>,
}

impl RunnerManager {
    pub fn new(
        config: Arc<AgentConfig>,
        hypervisor: Arc<dyn Hypervisor>,
        templates: BTreeMap<String, Template>,
        events: mpsc::UnboundedSender<Report>,
        state_file: StateFile,
        guest_channel: GuestChannel,
    ) -> Arc<Self> {
        let manager = Arc::new(Self {
            config,
            hypervisor,
            guest_channel,
            templates,
            slots: Mutex::new(HashMap::new()),
            events,
            state_file,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            latencies: Mutex::new(Vec::new()),
        });
        let mut vm_events = manager.hypervisor.subscribe();
        let weak = Arc::downgrade(&manager);
        let stop = manager.stop.clone();
        // Ends on shutdown, when the backend's event channel closes, or with the manager.
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    event = vm_events.recv() => event,
                };
                match event {
                    Ok(VmEvent::Exited { runner_id, detail }) => {
                        let Some(manager) = weak.upgrade() else { break };
                        manager.vm_exited(&runner_id, detail);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::error!(
                            missed,
                            "VM events were lost; affected runners are caught by their timeouts"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        manager.state_file.write(std::iter::empty());
        manager
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<RunnerId, Slot>> {
        match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn templates(&self) -> &BTreeMap<String, Template> {
        &self.templates
    }

    /// Every runner's current status: the agent's full report.
    pub fn snapshot(&self) -> Vec<pb::RunnerStatus> {
        self.slots().values().map(|s| s.view.to_status()).collect()
    }

    pub fn runner_count(&self) -> usize {
        self.slots().len()
    }

    /// How long server commands took to arrive (server push → agent receipt).
    pub fn command_latencies(&self) -> Vec<Duration> {
        match self.latencies.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn handle_command(self: &Arc<Self>, message: pb::ServerMessage) {
        // Heartbeats only prove the link is alive; they are not commands.
        if let Some(pb::server_message::Message::Heartbeat(_)) = message.message {
            return;
        }
        if message.sent_at_unix_us > 0 {
            let now = crate::unix_micros();
            let latency = Duration::from_micros(now.saturating_sub(message.sent_at_unix_us));
            if let Ok(mut latencies) = self.latencies.lock() {
                latencies.push(latency);
            }
        }
        match message.message {
            Some(pb::server_message::Message::GuestRequest(request)) => self.answer(request),
            Some(pb::server_message::Message::CreateRunner(create)) => self.create(create),
            Some(pb::server_message::Message::DeleteRunner(delete)) => {
                self.delete(&delete.runner_id)
            }
            Some(pb::server_message::Message::Heartbeat(_)) | None => {}
        }
    }

    fn create(self: &Arc<Self>, command: pb::CreateRunner) {
        let Ok(runner_id) = RunnerId::parse(&command.runner_id) else {
            tracing::warn!("server sent a create with a malformed runner id; ignored");
            return;
        };
        let refuse = |reason: String| {
            tracing::warn!(runner = %runner_id, reason = %reason, "create refused");
            let mut status = gone_status(runner_id.as_str());
            status.state = pb::RunnerState::Error as i32;
            status.error = reason;
            let _ = self.events.send(Report::Status(status));
            let _ = self
                .events
                .send(Report::Status(gone_status(runner_id.as_str())));
        };
        let name = match RunnerName::parse(&command.runner_name) {
            Ok(name) => name,
            Err(e) => return refuse(e.to_string()),
        };
        let Some(template) = self.templates.get(&command.template).cloned() else {
            return refuse(format!("this agent has no template {:?}", command.template));
        };
        let (cancel, vm_exit) = {
            let mut slots = self.slots();
            if slots.contains_key(&runner_id) {
                return; // a repeated command
            }
            if slots.len() >= self.config.capacity.max_runners as usize {
                drop(slots);
                return refuse(format!(
                    "this agent already runs its maximum of {} runners",
                    self.config.capacity.max_runners
                ));
            }
            let slot = Slot {
                secrets: Arc::new(secrets::SecretMask::from_script(&command.setup_script)),
                access: None,
                view: RunnerView {
                    runner_id: runner_id.clone(),
                    runner_name: name.to_string(),
                    template: template.metadata.name.clone(),
                    state: RunnerState::Creating,
                    ip_address: None,
                    ssh_address: None,
                    error: None,
                    guest_runner_state: None,
                    created_at_ms: crate::now_ms(),
                    timings: PhaseTimes::default(),
                    warm_start_fallback: false,
                    end_reason: None,
                    job_started_at_ms: None,
                    job_finished_at_ms: None,
                    failure_step: None,
                },
                cancel: CancellationToken::new(),
                vm_exit: CancellationToken::new(),
                exit_detail: None,
                task: None,
            };
            let tokens = (slot.cancel.clone(), slot.vm_exit.clone());
            let _ = self.events.send(Report::Status(slot.view.to_status()));
            slots.insert(runner_id.clone(), slot);
            self.state_file.write(slots.values().map(|s| &s.view));
            tokens
        };
        tracing::info!(runner = %runner_id, runner_name = %name, template = %template.metadata.name, "creating runner");
        let work = lifecycle::Work {
            runner_id,
            runner_name: name,
            template,
            vcpus: command.vcpus,
            memory_mib: command.memory_mib,
            setup_script: command.setup_script,
        };
        let manager = Arc::clone(self);
        let runner_id = work.runner_id.clone();
        let task = self
            .tasks
            .spawn(async move { manager.run_lifecycle(work, cancel, vm_exit).await });
        if let Some(slot) = self.slots().get_mut(&runner_id) {
            slot.task = Some(task.abort_handle());
        }
    }

    /// Stops every lifecycle task without tearing anything down, as a crash would.
    pub fn abandon(&self) {
        self.stop.cancel();
        for slot in self.slots().values() {
            if let Some(task) = &slot.task {
                task.abort();
            }
        }
    }

    /// Destroys every runner (the server refused this agent for good).
    pub fn destroy_all(&self) {
        for slot in self.slots().values() {
            slot.cancel.cancel();
        }
    }

    /// Records whether the server link is up, for `runner-state.json`'s readers.
    pub fn server_link(&self, connected: bool) {
        if self.state_file.set_server_link(connected) {
            let slots = self.slots();
            self.state_file.write(slots.values().map(|s| &s.view));
        }
    }

    fn delete(&self, runner_id: &str) {
        let known = RunnerId::parse(runner_id)
            .ok()
            .and_then(|id| self.slots().get(&id).map(|s| s.cancel.clone()));
        match known {
            Some(cancel) => cancel.cancel(),
            None => {
                // Nothing here: tell the server it is gone so it can free the slot.
                let _ = self.events.send(Report::Status(gone_status(runner_id)));
            }
        }
    }

    fn vm_exited(&self, runner_id: &RunnerId, detail: String) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(runner_id) {
            tracing::warn!(runner = %runner_id, detail = %detail, "VM stopped on its own");
            slot.exit_detail = Some(detail);
            slot.vm_exit.cancel();
        }
    }

    fn exit_detail(&self, runner_id: &RunnerId) -> String {
        self.slots()
            .get(runner_id)
            .and_then(|s| s.exit_detail.clone())
            .unwrap_or_else(|| "unknown reason".into())
    }

    /// Changes a runner's record and reports it at once.
    fn update(&self, runner_id: &RunnerId, change: impl FnOnce(&mut RunnerView)) {
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(runner_id) else {
            return;
        };
        let before = slot.view.state;
        change(&mut slot.view);
        if slot.view.state != before {
            tracing::info!(runner = %runner_id, from = %before, to = %slot.view.state, "runner state changed");
        }
        let _ = self.events.send(Report::Status(slot.view.to_status()));
        self.state_file.write(slots.values().map(|s| &s.view));
    }

    /// Drops a runner whose VM and bundle are gone, and reports it deleted.
    fn finish(&self, runner_id: &RunnerId) {
        let mut slots = self.slots();
        if let Some(mut slot) = slots.remove(runner_id) {
            slot.view.state = RunnerState::Deleted;
            let _ = self.events.send(Report::Status(slot.view.to_status()));
            tracing::info!(runner = %runner_id, "runner deleted");
        }
        self.state_file.write(slots.values().map(|s| &s.view));
    }

    /// Tears every runner down and waits (bounded) for it; used when the agent stops.
    pub async fn shutdown(&self, wait: Duration) {
        for slot in self.slots().values() {
            slot.cancel.cancel();
        }
        self.tasks.close();
        if tokio::time::timeout(wait, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                ?wait,
                "some runners were still tearing down when the agent stopped"
            );
        }
        // External readers should see what the agent left, not a snapshot from before.
        self.state_file.flush(Duration::from_secs(2)).await;
    }
}
