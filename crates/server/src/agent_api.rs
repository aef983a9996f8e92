//! AgentService: registration and the Sync stream, handed straight to the fleet. Agents are
//! authenticated there (enrollment token or the agent's own credential; see `fleet::trust`).

use crate::auth::{bearer, peer};
use crate::fleet::error::RequestError;
use crate::fleet::sessions::Registration;
use crate::fleet::{Fleet, FleetError};
use crate::store::TemplateRecord;
use futures::Stream;
use futures::StreamExt;
use shoes_vz_model::ids::validate_name;
use shoes_vz_model::link::AgentReport;
use shoes_vz_model::AgentId;
use shoes_vz_protocol::agent::v1 as pb;
use shoes_vz_protocol::agent::v1::agent_service_server::AgentService;
use shoes_vz_protocol::link;
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
        let registration = registration(request.into_inner()).map_err(FleetError::from)?;
        let registered = self.fleet.register_agent(registration, &presented, &peer)?;
        let t = &self.fleet.config().timeouts;
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::RegisterAgentResponse {
            snapshot_interval_ms: millis(t.snapshot_interval),
            credential: registered.credential.unwrap_or_default(),
            heartbeat_interval_ms: millis(t.heartbeat_interval),
            heartbeat_timeout_ms: millis(t.agent_offline_after),
        }))
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
                        Some(Ok(message)) => {
                            let report = link::report_from_pb(message).unwrap_or_else(|error| {
                                // Still a sign of life; what it said is lost.
                                tracing::warn!(agent = %agent_id, error = %error, "ignored a malformed message from an agent");
                                AgentReport::Heartbeat
                            });
                            fleet.on_agent_report(&agent_id, session_id, report);
                        }
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
            .map(|command| Ok(link::command_to_pb(command)))
            .take_until(async move { cancel.cancelled_owned().await });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The most templates an agent may announce.
const MAX_TEMPLATES: usize = 256;

/// RegisterAgent's fields, checked: an agent id, a hostname of 1-253 characters, at most 256
/// templates with names fit for paths.
fn registration(request: pb::RegisterAgentRequest) -> Result<Registration, RequestError> {
    let agent_id = AgentId::parse(&request.agent_id)?;
    if request.hostname.is_empty() || request.hostname.len() > 253 {
        return Err(RequestError::BadHostname);
    }
    if request.templates.len() > MAX_TEMPLATES {
        return Err(RequestError::TooManyTemplates {
            count: request.templates.len(),
            max: MAX_TEMPLATES,
        });
    }
    let capacity = request.capacity.unwrap_or_default();
    let templates = request
        .templates
        .into_iter()
        .map(|t| {
            validate_name("template name", &t.name, 64)?;
            Ok(TemplateRecord {
                name: t.name,
                version: t.version,
                backend: t.backend,
                labels: t.labels,
                os: t.os,
                arch: t.arch,
                max_vcpus: t.max_vcpus,
                max_memory_mib: t.max_memory_mib,
            })
        })
        .collect::<Result<_, RequestError>>()?;
    Ok(Registration {
        agent_id,
        hostname: request.hostname,
        backend: request.backend,
        version: request.version,
        max_runners: capacity.max_runners,
        cpu_cores: capacity.cpu_cores,
        memory_mib: capacity.memory_mib,
        templates,
    })
}
