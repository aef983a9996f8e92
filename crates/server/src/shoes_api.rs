//! ShoesService: turns wire messages into fleet calls and back, and counts results. It is
//! myshoes' API: AddInstance and DeleteInstance only. Names, labels, sizes, resource types
//! and cloud ids are checked here, at the edge; the fleet gets typed values.

use crate::fleet::error::RequestError;
use crate::fleet::instances::AddRequest;
use crate::fleet::{Fleet, FleetError};
use crate::respond::respond;
use crate::store::RunnerRecord;
use shoes_vz_model::{CloudId, ResourceType, RunnerName};
use shoes_vz_protocol::shoes::v1 as pb;
use shoes_vz_protocol::shoes::v1::shoes_service_server::ShoesService;
use shoes_vz_protocol::SHOES_TYPE;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ShoesApi {
    fleet: Arc<Fleet>,
}

impl ShoesApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }
}

#[tonic::async_trait]
impl ShoesService for ShoesApi {
    async fn add_instance(
        &self,
        request: Request<pb::AddInstanceRequest>,
    ) -> Result<Response<pb::AddInstanceResponse>, Status> {
        let result = match parse_add(request.into_inner()) {
            Ok(request) => self.fleet.add_instance(request).await,
            Err(error) => Err(error.into()),
        };
        let result = result.map(|outcome| pb::AddInstanceResponse {
            cloud_id: outcome.cloud_id.to_string(),
            shoes_type: SHOES_TYPE.to_string(),
            ip_address: outcome.ip_address,
            resource_type: outcome.resource_type.as_i32(),
        });
        respond(self.fleet.metrics(), "AddInstance", result)
    }

    async fn delete_instance(
        &self,
        request: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        let request = request.into_inner();
        let result = match parse_cloud_id(&request.cloud_id) {
            Ok(cloud_id) => self.fleet.delete_instance(&cloud_id).await,
            Err(error) => Err(error),
        };
        let result = result.map(|()| pb::DeleteInstanceResponse {});
        respond(self.fleet.metrics(), "DeleteInstance", result)
    }
}

const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;
const MAX_SETUP_SCRIPT: usize = 1024 * 1024;

/// AddInstance's fields, checked: a name fit for paths and logs, at most 64 labels of at most
/// 256 bytes without control characters, a script of at most 1 MiB, a resource type myshoes
/// defines.
pub(crate) fn parse_add(request: pb::AddInstanceRequest) -> Result<AddRequest, RequestError> {
    let runner_name = RunnerName::parse(&request.runner_name)?;
    if request.labels.len() > MAX_LABELS {
        return Err(RequestError::TooManyLabels {
            count: request.labels.len(),
            max: MAX_LABELS,
        });
    }
    if let Some(bad) = request
        .labels
        .iter()
        .find(|l| l.is_empty() || l.len() > MAX_LABEL_LEN || l.chars().any(char::is_control))
    {
        return Err(RequestError::BadLabel {
            shown: bad.chars().take(40).collect(),
            max: MAX_LABEL_LEN,
        });
    }
    if request.setup_script.len() > MAX_SETUP_SCRIPT {
        return Err(RequestError::ScriptTooLarge {
            size: request.setup_script.len(),
            max: MAX_SETUP_SCRIPT,
        });
    }
    Ok(AddRequest {
        runner_name,
        setup_script: request.setup_script,
        resource_type: ResourceType::from_i32(request.resource_type)?,
        labels: request.labels,
    })
}

/// A cloud id this server could have issued; anything else is NotFound (myshoes: "gone").
pub(crate) fn parse_cloud_id(cloud_id: &str) -> Result<CloudId, FleetError> {
    CloudId::parse(cloud_id).map_err(FleetError::MalformedCloudId)
}

pub(crate) fn runner_info(r: &RunnerRecord, agent_hostname: &str) -> pb::RunnerInfo {
    let t = &r.timings;
    pb::RunnerInfo {
        cloud_id: r.cloud_id().to_string(),
        runner_id: r.runner_id.to_string(),
        runner_name: r.runner_name.clone(),
        agent_id: r.agent_id.to_string(),
        agent_hostname: agent_hostname.to_string(),
        template: r.template.clone(),
        resource_type: r.resource_type.as_i32(),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        state: r.state.to_string(),
        ip_address: r.ip_address.clone(),
        guest_runner_state: r.guest_runner_state.clone(),
        error: r.error.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        timings: Some(pb::PhaseTimings {
            clone_ms: t.clone_ms.unwrap_or(0),
            boot_to_ip_ms: t.boot_to_ip_ms.unwrap_or(0),
            boot_to_ssh_ms: t.boot_to_ssh_ms.unwrap_or(0),
            setup_ms: t.setup_ms.unwrap_or(0),
            startup_ms: t.startup_ms.unwrap_or(0),
            queue_ms: t.queue_ms.unwrap_or(0),
            prepare_ms: t.prepare_ms.unwrap_or(0),
            vm_start_ms: t.vm_start_ms.unwrap_or(0),
            refresh_ms: t.refresh_ms.unwrap_or(0),
        }),
        labels: r.labels.clone(),
        end_reason: r.end_reason.clone(),
        job_started_at_ms: r.job_started_at_ms.unwrap_or(0),
        job_finished_at_ms: r.job_finished_at_ms.unwrap_or(0),
    }
}
