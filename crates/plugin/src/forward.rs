//! The shoes-vz server, as seen from one plugin process: connect when a call arrives (after
//! the handshake), retry refused connections with a short backoff, and make the call under the
//! call's deadline.

use crate::config::PluginConfig;
use crate::mapping;
use shoes_vz_protocol::client::{connect_shoes, ClientError, ShoesClient};
use shoes_vz_protocol::shoes::v1 as vz;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Status};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A server that stays unreachable this long is reported to myshoes (which retries the job)
/// rather than waited on for the whole call budget.
const CONNECT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// One connection per call: myshoes starts a fresh plugin process for every call, so there is
/// nothing to reuse.
pub struct Forwarder {
    config: PluginConfig,
}

impl Forwarder {
    pub fn new(config: PluginConfig) -> Self {
        Self { config }
    }

    pub async fn add_instance(
        &self,
        request: vz::AddInstanceRequest,
        deadline: Instant,
    ) -> Result<vz::AddInstanceResponse, Status> {
        let mut client = self.connect(deadline).await?;
        let request = with_timeout(request, deadline);
        match tokio::time::timeout_at(deadline, client.add_instance(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(mapping::server_status(&status)),
            Err(_) => Err(Status::deadline_exceeded(
                "the shoes-vz server did not answer AddInstance within the plugin's budget \
                 (SHOESVZ_PLUGIN_ADD_TIMEOUT); the server destroys the runner",
            )),
        }
    }

    pub async fn delete_instance(
        &self,
        request: vz::DeleteInstanceRequest,
        deadline: Instant,
    ) -> Result<(), Status> {
        let mut client = self.connect(deadline).await?;
        let request = with_timeout(request, deadline);
        match tokio::time::timeout_at(deadline, client.delete_instance(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(mapping::server_status(&status)),
            Err(_) => Err(Status::deadline_exceeded(
                "the shoes-vz server did not confirm DeleteInstance within the plugin's budget \
                 (SHOESVZ_PLUGIN_DELETE_TIMEOUT); the deletion stays recorded, retry to wait again",
            )),
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<ShoesClient, Status> {
        let give_up = deadline.min(Instant::now() + CONNECT_RETRY_WINDOW);
        let options = self.config.connect_options();
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = connect_shoes(
                &self.config.server_addr,
                self.config.token.expose(),
                &options,
            );
            let error = match tokio::time::timeout_at(give_up, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(error @ ClientError::Connect { .. })) => error,
                Ok(Err(other)) => return Err(mapping::connect_status(&other)),
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "cannot connect to the shoes-vz server at {} ({attempts} attempts); \
                         check SHOESVZ_SERVER_ADDR and that the server runs",
                        self.config.server_addr
                    )))
                }
            };
            if Instant::now() + backoff >= give_up {
                let status = mapping::connect_status(&error);
                return Err(Status::new(
                    status.code(),
                    format!("{} ({attempts} attempts)", status.message()),
                ));
            }
            tracing::debug!(
                attempts,
                error = %mapping::error_chain(&error),
                "shoes-vz server not reachable yet; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Passes the remaining time on as `grpc-timeout`, so the server stops waiting when we do.
fn with_timeout<T>(message: T, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}
