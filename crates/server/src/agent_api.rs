//! AgentService: registration and the Sync stream, handed straight to the fleet.

use crate::fleet::Fleet;
use futures::Stream;
use futures::StreamExt;
use shoes_vz_protocol::agent::v1 as pb;
use shoes_vz_protocol::agent::v1::agent_service_server::AgentService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct AgentApi {
    fleet: Arc<Fleet>,
}

impl AgentApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        Ok(Response::new(
            self.fleet.register_agent(request.into_inner())?,
        ))
    }

    type SyncStream = CommandStream;

    async fn sync(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let hello =
            match tokio::time::timeout(std::time::Duration::from_secs(10), inbound.next()).await {
                Ok(Some(Ok(pb::AgentMessage {
                    message: Some(pb::agent_message::Message::Hello(hello)),
                }))) => hello,
                Ok(Some(Err(status))) => return Err(status),
                Ok(_) => {
                    return Err(Status::invalid_argument(
                        "the first Sync message must be a Hello with the agent id",
                    ))
                }
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "no Hello within 10 s of opening Sync",
                    ))
                }
            };
        let session = self.fleet.open_session(&hello.agent_id)?;
        let fleet = Arc::clone(&self.fleet);
        let (agent_id, session_id, cancel) = (
            session.agent_id.clone(),
            session.session_id,
            session.cancel.clone(),
        );
        // Owned by the session: ends when the agent's stream ends or the session is replaced.
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break "session replaced or server stopping",
                    message = inbound.next() => match message {
                        Some(Ok(message)) => fleet.on_agent_message(&agent_id, session_id, message),
                        Some(Err(_)) => break "stream error",
                        None => break "stream closed by the agent",
                    },
                }
            };
            fleet.close_session(&agent_id, session_id, reason);
        });
        let cancel = session.cancel;
        let outbound = UnboundedReceiverStream::new(session.commands)
            .map(Ok)
            .take_until(async move { cancel.cancelled_owned().await });
        Ok(Response::new(Box::pin(outbound)))
    }
}
