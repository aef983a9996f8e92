//! `whywaita.myshoes.Shoes`: what myshoes calls. Checks what it can locally, forwards to the
//! shoes-vz server and logs the outcome (never the setup script).

use crate::config::PluginConfig;
use crate::deadline::call_deadline;
use crate::forward::Forwarder;
use crate::mapping;
use crate::proto::myshoes as ms;
use crate::proto::myshoes::shoes_server::Shoes;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

pub struct ShoesPlugin {
    forwarder: Forwarder,
    add_timeout: Duration,
    delete_timeout: Duration,
}

impl ShoesPlugin {
    pub fn new(config: PluginConfig) -> Self {
        Self {
            add_timeout: config.add_timeout,
            delete_timeout: config.delete_timeout,
            forwarder: Forwarder::new(config),
        }
    }
}

#[tonic::async_trait]
impl Shoes for ShoesPlugin {
    async fn add_instance(
        &self,
        request: Request<ms::AddInstanceRequest>,
    ) -> Result<Response<ms::AddInstanceResponse>, Status> {
        let started = Instant::now();
        let deadline = call_deadline(request.metadata(), self.add_timeout);
        let request = request.into_inner();
        let runner_name = request.runner_name.clone();
        let resource_type = request.resource_type;
        let labels = request.labels.join(",");
        tracing::info!(runner_name, resource_type, labels, "AddInstance");
        let result = match mapping::add_request(request) {
            Ok(upstream) => self.forwarder.add_instance(upstream, deadline).await,
            Err(status) => Err(status),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(response) => {
                tracing::info!(
                    runner_name,
                    cloud_id = response.cloud_id,
                    ip_address = response.ip_address,
                    resource_type = response.resource_type,
                    elapsed_ms,
                    "AddInstance done"
                );
                Ok(Response::new(mapping::add_response(response)))
            }
            Err(status) => {
                tracing::warn!(
                    runner_name,
                    code = ?status.code(),
                    error = status.message(),
                    elapsed_ms,
                    "AddInstance failed"
                );
                Err(status)
            }
        }
    }

    async fn delete_instance(
        &self,
        request: Request<ms::DeleteInstanceRequest>,
    ) -> Result<Response<ms::DeleteInstanceResponse>, Status> {
        let started = Instant::now();
        let deadline = call_deadline(request.metadata(), self.delete_timeout);
        let request = mapping::delete_request(request.into_inner());
        let cloud_id = request.cloud_id.clone();
        tracing::info!(cloud_id, "DeleteInstance");
        let result = self.forwarder.delete_instance(request, deadline).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::info!(cloud_id, elapsed_ms, "DeleteInstance done");
                Ok(Response::new(ms::DeleteInstanceResponse {}))
            }
            Err(status) => {
                tracing::warn!(
                    cloud_id,
                    code = ?status.code(),
                    error = status.message(),
                    elapsed_ms,
                    "DeleteInstance failed"
                );
                Err(status)
            }
        }
    }
}
