//! What can go wrong in the fleet, and the gRPC code each error means to myshoes.

use tonic::{Code, Status};

/// myshoes drops a job for good on InvalidArgument, and treats NotFound on delete as "already
/// gone"; every other code is retried. The variants keep that distinction explicit.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request can never succeed as sent.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// No room now; myshoes retries.
    #[error("{0}")]
    NoCapacity(String),
    /// An agent or the store cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Deadline(String),
    /// The runner failed on its agent; it has been destroyed.
    #[error("{0}")]
    RunnerFailed(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller did not prove who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this (e.g. a revoked agent).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FleetError {
    pub fn code(&self) -> Code {
        match self {
            FleetError::Invalid(_) => Code::InvalidArgument,
            FleetError::NotFound(_) => Code::NotFound,
            FleetError::AlreadyExists(_) => Code::AlreadyExists,
            FleetError::NoCapacity(_) => Code::ResourceExhausted,
            FleetError::Unavailable(_) => Code::Unavailable,
            FleetError::Deadline(_) => Code::DeadlineExceeded,
            // The runner is destroyed; a retry gets a new one, so myshoes must retry.
            FleetError::RunnerFailed(_) => Code::Unavailable,
            FleetError::Internal(_) => Code::Internal,
            FleetError::FailedPrecondition(_) => Code::FailedPrecondition,
            FleetError::Unauthenticated(_) => Code::Unauthenticated,
            FleetError::PermissionDenied(_) => Code::PermissionDenied,
        }
    }
}

impl From<FleetError> for Status {
    fn from(error: FleetError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}
