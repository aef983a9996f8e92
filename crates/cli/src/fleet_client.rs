//! One client for both of a server's APIs as a test, a benchmark or `dev` uses them:
//! myshoes' (add, delete) with myshoes' token, and the operators' (list, show, …) with the
//! operator token. Lists follow every page.

use shoes_vz_protocol::client::{
    connect_operator, connect_shoes, ClientError, ConnectOptions, OperatorClient, ShoesClient,
};
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;
use tonic::{Response, Status};

#[derive(Clone)]
pub struct FleetClient {
    pub shoes: ShoesClient,
    pub operator: OperatorClient,
}

impl FleetClient {
    pub async fn connect(
        addr: &str,
        shoes_token: &str,
        operator_token: &str,
        options: &ConnectOptions,
    ) -> Result<FleetClient, ClientError> {
        Ok(FleetClient {
            shoes: connect_shoes(addr, shoes_token, options).await?,
            operator: connect_operator(addr, operator_token, options).await?,
        })
    }

    pub async fn add_instance(
        &mut self,
        request: pb::AddInstanceRequest,
    ) -> Result<Response<pb::AddInstanceResponse>, Status> {
        self.shoes.add_instance(request).await
    }

    pub async fn delete_instance(
        &mut self,
        request: pb::DeleteInstanceRequest,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        self.shoes.delete_instance(request).await
    }

    /// Every runner (live ones; with `include_deleted`, the whole history), page by page.
    pub async fn list_runners(
        &mut self,
        include_deleted: bool,
    ) -> Result<Vec<pb::RunnerInfo>, Status> {
        list_all(&mut self.operator, include_deleted).await
    }

    pub async fn get_runner(&mut self, cloud_id: &str) -> Result<pb::RunnerInfo, Status> {
        get_runner(&mut self.operator, cloud_id).await
    }
}

/// Follows ListRunners' pages to the end.
pub async fn list_all(
    client: &mut OperatorClient,
    include_deleted: bool,
) -> Result<Vec<pb::RunnerInfo>, Status> {
    let mut runners = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_runners(op::ListRunnersRequest {
                include_deleted,
                page_size: 0,
                page_token,
            })
            .await?
            .into_inner();
        runners.extend(page.runners);
        if page.next_page_token.is_empty() {
            return Ok(runners);
        }
        page_token = page.next_page_token;
    }
}

pub async fn get_runner(
    client: &mut OperatorClient,
    cloud_id: &str,
) -> Result<pb::RunnerInfo, Status> {
    client
        .get_runner(op::GetRunnerRequest {
            cloud_id: cloud_id.to_string(),
        })
        .await?
        .into_inner()
        .runner
        .ok_or_else(|| Status::internal("the server returned no runner"))
}
