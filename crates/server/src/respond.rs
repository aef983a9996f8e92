//! How every API handler ends: the result counted by method and gRPC code, a failure logged
//! with its whole cause, and the answer or the status sent.

use crate::fleet::FleetError;
use crate::metrics::Metrics;
use tonic::{Response, Status};

pub fn respond<T>(
    metrics: &Metrics,
    method: &'static str,
    result: Result<T, FleetError>,
) -> Result<Response<T>, Status> {
    let code = result
        .as_ref()
        .map_or_else(FleetError::code, |_| tonic::Code::Ok);
    metrics.count_request(method, code);
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(error) => {
            tracing::info!(method, ?code, error = %shoes_vz_telemetry::error_chain(&error), "request failed");
            Err(error.into())
        }
    }
}
