//! myshoes' messages ↔ shoes-vz's, and the gRPC codes myshoes acts on: InvalidArgument drops
//! the job for good (only for requests that can never succeed), NotFound on delete means
//! "already gone", every other code is retried.

use crate::proto::myshoes as ms;
use shoes_vz_model::ResourceType;
use shoes_vz_protocol::client::ClientError;
use shoes_vz_protocol::shoes::v1 as vz;
use tonic::{Code, Status};

/// Resource type numbers are the same on both sides; one outside myshoes' enum can never be
/// served.
pub fn add_request(request: ms::AddInstanceRequest) -> Result<vz::AddInstanceRequest, Status> {
    let resource_type = ResourceType::from_i32(request.resource_type)
        .map_err(|error| Status::invalid_argument(error.to_string()))?;
    Ok(vz::AddInstanceRequest {
        runner_name: request.runner_name,
        setup_script: request.setup_script,
        resource_type: resource_type.as_i32(),
        labels: request.labels,
    })
}

/// Echoes what the server served, including the resource type it chose for Unknown.
pub fn add_response(response: vz::AddInstanceResponse) -> ms::AddInstanceResponse {
    ms::AddInstanceResponse {
        cloud_id: response.cloud_id,
        shoes_type: response.shoes_type,
        ip_address: response.ip_address,
        resource_type: response.resource_type,
    }
}

pub fn delete_request(request: ms::DeleteInstanceRequest) -> vz::DeleteInstanceRequest {
    vz::DeleteInstanceRequest {
        cloud_id: request.cloud_id,
        labels: request.labels,
    }
}

/// The server already answers with myshoes' codes; keep them, adding a hint where the fix is
/// on the plugin's side.
pub fn server_status(status: &Status) -> Status {
    let message = status.message();
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Status::new(
            status.code(),
            format!("shoes-vz server refused the plugin's token ({message}); check SHOESVZ_TOKEN"),
        ),
        code => Status::new(code, format!("shoes-vz server: {message}")),
    }
}

/// Not reaching the server is always retryable: Unavailable, never InvalidArgument.
pub fn connect_status(error: &ClientError) -> Status {
    match error {
        ClientError::Connect { .. } => Status::unavailable(error_chain(error)),
        // Validated before the handshake, so these mean the plugin itself is misconfigured:
        // retryable once an operator fixes it.
        ClientError::BadAddress(_) | ClientError::BadToken | ClientError::Tls(_) => {
            Status::failed_precondition(error_chain(error))
        }
    }
}

/// The error and its sources, one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(resource_type: i32) -> ms::AddInstanceRequest {
        ms::AddInstanceRequest {
            runner_name: "myshoes-0123".into(),
            setup_script: "#!/bin/sh\necho secret".into(),
            resource_type,
            labels: vec!["self-hosted".into(), "macos".into()],
        }
    }

    #[test]
    fn resource_types_map_one_to_one() {
        for number in 0..=9 {
            let mapped = add_request(request(number)).expect("in myshoes' enum");
            assert_eq!(mapped.resource_type, number);
            assert_eq!(mapped.runner_name, "myshoes-0123");
            assert_eq!(mapped.setup_script, "#!/bin/sh\necho secret");
            assert_eq!(mapped.labels, ["self-hosted", "macos"]);
        }
        assert_eq!(ms::ResourceType::XLarge4 as i32, 9);
        assert_eq!(
            vz::ResourceType::Xlarge4 as i32,
            ms::ResourceType::XLarge4 as i32
        );
    }

    #[test]
    fn resource_types_outside_myshoes_enum_are_invalid_argument() {
        for number in [-1, 10, 42] {
            let status = add_request(request(number)).expect_err("unmappable");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(!status.message().contains("secret"));
        }
    }

    #[test]
    fn the_served_type_is_echoed() {
        let response = add_response(vz::AddInstanceResponse {
            cloud_id: "shoes-vz-abc".into(),
            shoes_type: "shoes-vz".into(),
            ip_address: "10.0.0.2".into(),
            resource_type: vz::ResourceType::Medium as i32,
        });
        assert_eq!(response.resource_type, ms::ResourceType::Medium as i32);
        assert_eq!(response.cloud_id, "shoes-vz-abc");
        assert_eq!(response.shoes_type, "shoes-vz");
        assert_eq!(response.ip_address, "10.0.0.2");
    }

    #[test]
    fn server_codes_are_kept() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::AlreadyExists,
        ] {
            let status = server_status(&Status::new(code, "why"));
            assert_eq!(status.code(), code);
            assert!(status.message().contains("why"));
        }
        let auth = server_status(&Status::unauthenticated("bad token"));
        assert_eq!(auth.code(), Code::Unauthenticated);
        assert!(auth.message().contains("SHOESVZ_TOKEN"));
    }

    #[tokio::test]
    async fn unreachable_servers_are_unavailable() {
        // Port 1 on loopback refuses at once.
        let connected =
            shoes_vz_protocol::client::connect_shoes("127.0.0.1:1", "token", &Default::default())
                .await;
        let Err(error) = connected else {
            panic!("nothing listens on port 1")
        };
        let status = connect_status(&error);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("127.0.0.1:1"), "{status:?}");
        let status = connect_status(&ClientError::BadToken);
        assert_ne!(status.code(), Code::InvalidArgument);
    }
}
