//! Operators' requests about a live runner, carried to its agent on the Sync stream and
//! answered there (the agent reaches the guest; the operator needs no network path to it).

use super::{Fleet, FleetError};
use shoes_vz_model::link::{AgentCommand, GuestAnswer, GuestCall, GuestReply, GuestRequest};
use shoes_vz_model::{RunnerId, RunnerState};
use std::time::Duration;
use tokio::sync::oneshot;

impl Fleet {
    /// Sends `request` to the agent of `runner_id` and waits (up to `timeout`) for its answer.
    pub async fn guest_call(
        &self,
        runner_id: &RunnerId,
        request: GuestRequest,
        timeout: Duration,
    ) -> Result<GuestReply, FleetError> {
        let (id, answer) = {
            let mut state = self.lock();
            let entry = state
                .runners
                .get(runner_id)
                .ok_or_else(|| FleetError::NotLive(runner_id.cloud_id()))?;
            if !entry.record.state.holds_slot() || entry.record.state == RunnerState::TearingDown {
                return Err(FleetError::NoVm {
                    cloud_id: runner_id.cloud_id(),
                    state: entry.record.state,
                });
            }
            let agent_id = entry.record.agent_id.clone();
            state.next_guest_request += 1;
            let id = state.next_guest_request;
            let (reply, answer) = oneshot::channel();
            let message = AgentCommand::Guest(GuestCall {
                request_id: id,
                runner_id: runner_id.clone(),
                request,
            });
            let pushed = state
                .agents
                .get(&agent_id)
                .filter(|a| a.ready())
                .and_then(|a| a.push(message));
            if pushed.is_none() {
                return Err(FleetError::AgentOffline(runner_id.cloud_id()));
            }
            state.guest_calls.insert(id, reply);
            (id, answer)
        };
        let answered = tokio::time::timeout(timeout, answer).await;
        self.lock().guest_calls.remove(&id);
        match answered {
            Ok(Ok(GuestReply::Error(error))) => Err(FleetError::OnAgent(error)),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(FleetError::AgentGone),
            Err(_) => Err(FleetError::AgentTimeout(timeout)),
        }
    }

    /// An agent's answer to a guest request.
    pub(super) fn guest_reply(&self, answer: GuestAnswer) {
        if let Some(waiter) = self.lock().guest_calls.remove(&answer.request_id) {
            let _ = waiter.send(answer.reply);
        }
    }
}
