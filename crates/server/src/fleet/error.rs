//! What can go wrong in the fleet, and the one place that says which gRPC code each error
//! means to myshoes, agents and operators.

use crate::scheduler::PlacementError;
use crate::store::StoreError;
use crate::writer::WriteError;
use shoes_vz_model::{AgentId, CloudId, IdError, ResourceError, RunnerState};
use std::time::Duration;
use tonic::{Code, Status};

/// A request that can never succeed as sent: myshoes drops the job (InvalidArgument).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("{count} labels given; at most {max} are accepted")]
    TooManyLabels { count: usize, max: usize },
    #[error("label {shown:?} is empty, longer than {max} bytes or has control characters")]
    BadLabel { shown: String, max: usize },
    #[error("setup_script is {size} bytes; at most {max} are accepted")]
    ScriptTooLarge { size: usize, max: usize },
    #[error("hostname must be 1-253 characters")]
    BadHostname,
    #[error("{count} templates announced; at most {max} are accepted")]
    TooManyTemplates { count: usize, max: usize },
    #[error("page_token is not one this server handed out")]
    BadPageToken,
    #[error("give a command to run")]
    NoCommand,
}

/// Who an agent is could not be established, or it may no longer connect.
#[derive(Debug, thiserror::Error)]
pub enum AgentRefusal {
    #[error("agent {0} is enrolled: it must present its own credential (kept in its data dir), not the enrollment token or another agent's")]
    NotItsCredential(AgentId),
    #[error("agent {0} presented neither the fleet's enrollment token (SHOESVZ_AGENT_TOKEN) nor its own credential")]
    NoValidToken(AgentId),
    #[error("Sync for agent {0} needs that agent's own credential")]
    SyncNeedsCredential(AgentId),
    #[error("agent {0} was revoked by an operator; give the host a new identity (delete agent-id and agent-credential in its data dir) and enroll it again")]
    Revoked(AgentId),
}

/// myshoes drops a job for good on InvalidArgument, and treats NotFound on delete as "already
/// gone"; every other code is retried. [`FleetError::code`] keeps that distinction in one place.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Nothing in the fleet could ever serve it (NeverFits), or no agent has registered yet.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("no slot for this request freed up within queue_wait ({waited:?}): {why}")]
    NoCapacity { waited: Duration, why: String },
    #[error("cloud_id is not one this server issues")]
    MalformedCloudId(#[source] IdError),
    #[error("runner {0} was never issued by this server")]
    UnknownRunner(CloudId),
    #[error("runner {0} is already deleted")]
    AlreadyDeleted(CloudId),
    #[error("runner {0} is not live")]
    NotLive(CloudId),
    #[error("runner {cloud_id} is {state}: there is no VM to reach")]
    NoVm {
        cloud_id: CloudId,
        state: RunnerState,
    },
    #[error("runner {cloud_id} failed before SSH was ready and is being destroyed: {reason}")]
    RunnerFailed { cloud_id: CloudId, reason: String },
    #[error("runner {cloud_id} was not ssh-ready within {waited:?}; it goes on booting, and a retry with the same runner_name waits for it")]
    NotReadyInTime { cloud_id: CloudId, waited: Duration },
    #[error("runner {0} was placed but is already gone; retry")]
    Vanished(CloudId),
    #[error("agent {0} is not known to this server")]
    UnknownAgent(AgentId),
    #[error("agent {0} is not registered: call RegisterAgent first")]
    NotRegistered(AgentId),
    #[error(transparent)]
    Refused(AgentRefusal),
    #[error("the agent of runner {0} is offline; retry when it is back")]
    AgentOffline(CloudId),
    #[error("the agent went away before answering; retry")]
    AgentGone,
    #[error("the agent did not answer within {0:?}")]
    AgentTimeout(Duration),
    /// The runner's agent tried and could not (its own words: SSH failed, no such log).
    #[error("{0}")]
    OnAgent(String),
    #[error("cannot read the state store")]
    StoreRead(#[source] StoreError),
    #[error("the state store did not record it; retry")]
    StoreWrite(#[source] WriteError),
    #[error("the server is shutting down; retry")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl FleetError {
    pub fn code(&self) -> Code {
        match self {
            FleetError::Request(_) => Code::InvalidArgument,
            FleetError::Placement(PlacementError::NeverFits(_)) => Code::InvalidArgument,
            FleetError::Placement(PlacementError::NoAgents) => Code::Unavailable,
            FleetError::Placement(PlacementError::NoRoomNow(_)) => Code::ResourceExhausted,
            FleetError::NoCapacity { .. } => Code::ResourceExhausted,
            // myshoes reads NotFound on DeleteInstance as "already gone".
            FleetError::MalformedCloudId(_)
            | FleetError::UnknownRunner(_)
            | FleetError::AlreadyDeleted(_)
            | FleetError::NotLive(_)
            | FleetError::UnknownAgent(_) => Code::NotFound,
            FleetError::NoVm { .. } | FleetError::NotRegistered(_) | FleetError::OnAgent(_) => {
                Code::FailedPrecondition
            }
            // The runner is destroyed; a retry gets a new one, so myshoes must retry.
            FleetError::RunnerFailed { .. } => Code::Unavailable,
            FleetError::NotReadyInTime { .. } | FleetError::AgentTimeout(_) => {
                Code::DeadlineExceeded
            }
            FleetError::Refused(AgentRefusal::Revoked(_)) => Code::PermissionDenied,
            FleetError::Refused(_) => Code::Unauthenticated,
            FleetError::Vanished(_)
            | FleetError::AgentOffline(_)
            | FleetError::AgentGone
            | FleetError::StoreRead(_)
            | FleetError::StoreWrite(_)
            | FleetError::ShuttingDown => Code::Unavailable,
            FleetError::Internal(_) => Code::Internal,
        }
    }
}

impl From<FleetError> for Status {
    /// The message carries the whole chain of causes: the caller sees why, not only what.
    fn from(error: FleetError) -> Status {
        Status::new(error.code(), shoes_vz_telemetry::error_chain(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_reach_the_caller_and_codes_follow_myshoes_rules() {
        let id = CloudId::parse("shoes-vz-0123456789abcdef0123456789abcdef").expect("id");
        let status = Status::from(FleetError::StoreWrite(WriteError::Behind {
            queued: 3000,
            waited: Duration::from_secs(1),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("the state store did not record it; retry: ")
                && status.message().contains("3000 writes behind"),
            "{}",
            status.message()
        );
        let never = FleetError::Placement(PlacementError::NeverFits("labels [\"gpu\"]".into()));
        assert_eq!(never.code(), Code::InvalidArgument);
        assert_eq!(
            FleetError::AlreadyDeleted(id.clone()).code(),
            Code::NotFound
        );
        let failed = FleetError::RunnerFailed {
            cloud_id: id,
            reason: "boot failed".into(),
        };
        assert_eq!(failed.code(), Code::Unavailable, "myshoes retries");
        assert_eq!(
            FleetError::Refused(AgentRefusal::Revoked(AgentId::generate())).code(),
            Code::PermissionDenied
        );
    }
}
