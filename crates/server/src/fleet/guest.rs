//! Operators' requests about a live runner, carried to its agent on the Sync stream and
//! answered there (the agent reaches the guest; the operator needs no network path to it).

use super::{Fleet, FleetError};
use shoes_vz_model::{RunnerId, RunnerState};
use shoes_vz_protocol::agent::v1 as pb;
use std::time::Duration;
use tokio::sync::oneshot;

impl Fleet {
    /// Sends `request` to the agent of `runner_id` and waits (up to `timeout`) for its answer.
    pub async fn guest_call(
        &self,
        runner_id: &RunnerId,
        request: pb::guest_request::Request,
        timeout: Duration,
    ) -> Result<pb::guest_reply::Reply, FleetError> {
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
            let message = pb::ServerMessage {
                message: Some(pb::server_message::Message::GuestRequest(
                    pb::GuestRequest {
                        request_id: id,
                        runner_id: runner_id.to_string(),
                        request: Some(request),
                    },
                )),
                sent_at_unix_us: super::unix_micros(),
            };
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
            Ok(Ok(pb::GuestReply {
                reply: Some(pb::guest_reply::Reply::Error(error)),
                ..
            })) => Err(FleetError::OnAgent(error)),
            Ok(Ok(pb::GuestReply {
                reply: Some(reply), ..
            })) => Ok(reply),
            Ok(Ok(_)) | Ok(Err(_)) => Err(FleetError::AgentGone),
            Err(_) => Err(FleetError::AgentTimeout(timeout)),
        }
    }

    /// An agent's answer to a guest request.
    pub(super) fn guest_reply(&self, reply: pb::GuestReply) {
        if let Some(waiter) = self.lock().guest_calls.remove(&reply.request_id) {
            let _ = waiter.send(reply);
        }
    }
}
