//! AgentService: registration and the Sync stream, handed straight to the fleet. Agents are
//! authenticated there (enrollment token or the agent's own credential; see `fleet::trust`).

use crate::auth::{bearer, peer};
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

    /// The bearer token of an agent call; a call without one is refused (and counted) here.
    fn presented<T>(&self, request: &Request<T>, peer: &str) -> Result<String, Status> {
        match bearer(request) {
            Some(token) => Ok(token.to_string()),
            None => {
                self.fleet.metrics().count_auth_refused("agent");
                tracing::warn!(%peer, "refused an agent call without a bearer token");
                Err(Status::unauthenticated(
                    "missing `authorization: Bearer <token>`: an agent presents its credential, or the enrollment token (SHOESVZ_AGENT_TOKEN) to enroll",
                ))
            }
        }
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let peer = peer(&request);
        let presented = self.presented(&request, &peer)?;
        Ok(Response::new(self.fleet.register_agent(
            request.into_inner(),
            &presented,
            &peer,
        )?))
    }

    type SyncStream = CommandStream;

    async fn sync(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = peer(&request);
        let presented = self.presented(&request, &peer)?;
        let mut inbound = request.into_inner();
        let hello =
            match tokio::time::timeout(std::time::Duration::from_secs(10), inbound.next()).await {
                Ok(Some(Ok(pb::AgentMessage {
                    message: Some(pb::agent_message::Message::Hello(hello)),
                }))) => hello,
                // A message tonic cannot decode (malformed, too large) can never succeed.
                Ok(Some(Err(status))) => {
                    return Err(crate::limits::invalid_request(&status).unwrap_or(status))
                }
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
        let session = self
            .fleet
            .open_session(&hello.agent_id, &presented, &peer)?;
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
                        // A transport failure, e.g. unanswered HTTP/2 keepalive pings.
                        Some(Err(_)) => break crate::fleet::sessions::STREAM_BROKEN,
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
