//! OperatorService: what the `shoes-vz` CLI asks of the fleet, with the operator token.

use crate::auth::peer;
use crate::fleet::error::RequestError;
use crate::fleet::{Fleet, FleetError};
use crate::respond::respond;
use crate::shoes_api::runner_info;
use crate::store::AgentRecord;
use futures::Stream;
use shoes_vz_model::link::{GuestReply, GuestRequest, LogKind};
use shoes_vz_model::{AgentId, CloudId, RunnerId};
use shoes_vz_protocol::operator::v1 as pb;
use shoes_vz_protocol::operator::v1::operator_service_server::OperatorService;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct OperatorApi {
    fleet: Arc<Fleet>,
}

impl OperatorApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }
}

const DEFAULT_PAGE: u32 = 500;
/// The most runner bytes one ListRunners page carries.
const PAGE_BYTES: usize = 512 * 1024;

/// The key of a page's last runner, where the next page starts.
fn page_key(page: &[shoes_vz_protocol::shoes::v1::RunnerInfo]) -> Option<(i64, RunnerId)> {
    let last = page.last()?;
    let id = RunnerId::parse(&last.runner_id).ok()?;
    Some((last.created_at_ms, id))
}

/// `<created_at_ms>.<runner id>`: where the next page starts.
fn page_token(key: &(i64, RunnerId)) -> String {
    format!("{}.{}", key.0, key.1)
}

fn parse_page_token(token: &str) -> Result<Option<(i64, RunnerId)>, FleetError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FleetError::Request(RequestError::BadPageToken);
    let (at, id) = token.split_once('.').ok_or_else(invalid)?;
    let at = at.parse::<i64>().map_err(|_| invalid())?;
    let id = RunnerId::parse(id).map_err(|_| invalid())?;
    Ok(Some((at, id)))
}

fn parse_agent(id: &str) -> Result<AgentId, FleetError> {
    AgentId::parse(id).map_err(|e| FleetError::Request(e.into()))
}

fn parse_cloud(id: &str) -> Result<RunnerId, FleetError> {
    CloudId::parse(id)
        .map(|c| c.runner_id())
        .map_err(FleetError::MalformedCloudId)
}

/// An agent as operators see it, with what it has free.
pub(crate) fn agent_info(fleet: &Fleet, record: &AgentRecord, online: bool) -> pb::AgentInfo {
    let usage = fleet.agent_usage(&record.agent_id);
    let status = if record.revoked {
        "revoked"
    } else if online {
        "online"
    } else {
        "offline"
    };
    pb::AgentInfo {
        agent_id: record.agent_id.to_string(),
        hostname: record.hostname.clone(),
        status: status.to_string(),
        cordoned: record.cordoned,
        last_seen_ms: record.last_seen_ms,
        slots_used: usage.runners,
        slots_total: record.max_runners,
        cpu_cores_free: record.cpu_cores.saturating_sub(usage.vcpus),
        cpu_cores_total: record.cpu_cores,
        memory_mib_free: record.memory_mib.saturating_sub(usage.memory_mib),
        memory_mib_total: record.memory_mib,
        templates: record
            .templates
            .iter()
            .map(|t| pb::TemplateSummary {
                name: t.name.clone(),
                version: t.version.clone(),
                labels: t.labels.clone(),
                os: t.os.clone(),
                arch: t.arch.clone(),
                warm: t.labels.iter().any(|l| l == "warm"),
            })
            .collect(),
        version: record.version.clone(),
        backend: record.backend.clone(),
        registered_at_ms: record.registered_at_ms,
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn list_runners(
        &self,
        request: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let after = parse_page_token(&request.page_token)?;
            let size = if request.page_size == 0 {
                DEFAULT_PAGE
            } else {
                request.page_size
            };
            let (runners, mut next) = self
                .fleet
                .list_runners(request.include_deleted, after, size)
                .await?;
            // Whatever the runners carry (64 labels of 256 bytes, long errors), a page stays
            // far below any client's message limit: it ends early and the next one goes on.
            let mut page = Vec::with_capacity(runners.len());
            let mut bytes = 0;
            for (record, host) in &runners {
                let info = runner_info(record, host);
                bytes += prost::Message::encoded_len(&info) + 8;
                if bytes > PAGE_BYTES && !page.is_empty() {
                    next = page_key(&page);
                    break;
                }
                page.push(info);
            }
            Ok(pb::ListRunnersResponse {
                runners: page,
                next_page_token: next.as_ref().map(page_token).unwrap_or_default(),
            })
        }
        .await;
        respond(self.fleet.metrics(), "ListRunners", result)
    }

    async fn get_runner(
        &self,
        request: Request<pb::GetRunnerRequest>,
    ) -> Result<Response<pb::GetRunnerResponse>, Status> {
        let cloud_id = request.into_inner().cloud_id;
        let result = async {
            let id = parse_cloud(&cloud_id)?;
            let (record, host) = self
                .fleet
                .get_runner(&id)
                .await?
                .ok_or_else(|| FleetError::UnknownRunner(id.cloud_id()))?;
            let history = self.fleet.runner_history(&id).await?;
            Ok(pb::GetRunnerResponse {
                runner: Some(runner_info(&record, &host)),
                history: history
                    .into_iter()
                    .map(|change| pb::StateChange {
                        state: change.state.to_string(),
                        at_ms: change.at_ms,
                        detail: change.detail,
                    })
                    .collect(),
            })
        }
        .await;
        respond(self.fleet.metrics(), "GetRunner", result)
    }

    async fn delete_runner(
        &self,
        request: Request<pb::DeleteRunnerRequest>,
    ) -> Result<Response<pb::DeleteRunnerResponse>, Status> {
        let cloud_id = request.into_inner().cloud_id;
        tracing::info!(cloud_id = %cloud_id, "an operator deletes a runner");
        let result = match crate::shoes_api::parse_cloud_id(&cloud_id) {
            Ok(cloud_id) => self.fleet.delete_instance(&cloud_id).await,
            Err(error) => Err(error),
        };
        let result = result.map(|()| pb::DeleteRunnerResponse {});
        respond(self.fleet.metrics(), "DeleteRunner", result)
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let mut agents = self.fleet.agents();
        agents.sort_by(|a, b| {
            a.0.hostname
                .cmp(&b.0.hostname)
                .then(a.0.agent_id.cmp(&b.0.agent_id))
        });
        let result = Ok(pb::ListAgentsResponse {
            agents: agents
                .iter()
                .map(|(record, online)| agent_info(&self.fleet, record, *online))
                .collect(),
        });
        respond(self.fleet.metrics(), "ListAgents", result)
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        let result = async {
            let id = parse_agent(&agent_id)?;
            let (record, online) = self
                .fleet
                .agents()
                .into_iter()
                .find(|(r, _)| r.agent_id == id)
                .ok_or_else(|| FleetError::UnknownAgent(id.clone()))?;
            let (runners, _) = self.fleet.list_runners(false, None, 1000).await?;
            Ok(pb::GetAgentResponse {
                agent: Some(agent_info(&self.fleet, &record, online)),
                runners: runners
                    .iter()
                    .filter(|(r, _)| r.agent_id == id)
                    .map(|(r, host)| runner_info(r, host))
                    .collect(),
            })
        }
        .await;
        respond(self.fleet.metrics(), "GetAgent", result)
    }

    async fn set_agent_cordon(
        &self,
        request: Request<pb::SetAgentCordonRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let request = request.into_inner();
        let result = parse_agent(&request.agent_id).and_then(|id| {
            let record = self.fleet.set_cordon(&id, request.cordoned)?;
            let online = self.fleet.agent_online(&id);
            Ok(agent_info(&self.fleet, &record, online))
        });
        respond(self.fleet.metrics(), "SetAgentCordon", result)
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let request = request.into_inner();
        let result = parse_agent(&request.agent_id).and_then(|id| {
            let record = self.fleet.revoke_agent(&id)?;
            Ok(agent_info(&self.fleet, &record, false))
        });
        respond(self.fleet.metrics(), "RevokeAgent", result)
    }

    async fn runner_exec(
        &self,
        request: Request<pb::RunnerExecRequest>,
    ) -> Result<Response<pb::RunnerExecResponse>, Status> {
        let peer = peer(&request);
        let request = request.into_inner();
        let result = async {
            let id = parse_cloud(&request.cloud_id)?;
            if request.command.is_empty() {
                return Err(RequestError::NoCommand.into());
            }
            let timeout_secs = request.timeout_secs.clamp(1, 3600);
            let timeout_secs = if request.timeout_secs == 0 { 60 } else { timeout_secs };
            tracing::info!(cloud_id = %request.cloud_id, %peer, args = request.command.len(), "operator access: a command in the runner");
            let reply = self
                .fleet
                .guest_call(
                    &id,
                    GuestRequest::Exec {
                        command: request.command,
                        stdin: request.stdin,
                        timeout_secs,
                    },
                    Duration::from_secs(u64::from(timeout_secs) + 20),
                )
                .await?;
            match reply {
                GuestReply::Exec(result) => Ok(pb::RunnerExecResponse {
                    exit_status: result.exit_status,
                    stdout: result.stdout,
                    stderr: result.stderr,
                    truncated: result.truncated,
                }),
                _ => Err(FleetError::Internal("the agent answered something else")),
            }
        }
        .await;
        respond(self.fleet.metrics(), "RunnerExec", result)
    }

    type RunnerLogsStream = LogStream;

    async fn runner_logs(
        &self,
        request: Request<pb::RunnerLogsRequest>,
    ) -> Result<Response<Self::RunnerLogsStream>, Status> {
        let peer = peer(&request);
        let request = request.into_inner();
        let id = parse_cloud(&request.cloud_id).map_err(Status::from)?;
        let sources = match pb::LogSource::try_from(request.source) {
            Ok(pb::LogSource::Console) => vec![pb::LogSource::Console],
            Ok(pb::LogSource::Setup) => vec![pb::LogSource::Setup],
            _ => vec![pb::LogSource::Console, pb::LogSource::Setup],
        };
        tracing::info!(cloud_id = %request.cloud_id, %peer, follow = request.follow, "operator access: the runner's logs");
        let tail = if request.tail_bytes == 0 {
            64 * 1024
        } else {
            request.tail_bytes.min(4 * 1024 * 1024)
        };
        let fleet = Arc::clone(&self.fleet);
        let follow = request.follow;
        let stream = async_stream(fleet, id, sources, tail, follow);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The logs as a stream: each source's end first, then (following) what comes after, until
/// the runner is gone or the caller leaves.
fn async_stream(
    fleet: Arc<Fleet>,
    id: RunnerId,
    sources: Vec<pb::LogSource>,
    tail: u64,
    follow: bool,
) -> impl Stream<Item = Result<pb::LogChunk, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        // Per source: None until its tail was read, then the next offset; a source the
        // runner does not have (no console on this backend) is said once, then skipped.
        let mut offsets: Vec<Option<u64>> = vec![None; sources.len()];
        let mut unavailable = vec![false; sources.len()];
        loop {
            for ((source, offset), unavailable) in sources
                .iter()
                .zip(offsets.iter_mut())
                .zip(unavailable.iter_mut())
            {
                if *unavailable {
                    continue;
                }
                let kind = match source {
                    pb::LogSource::Console => LogKind::Console,
                    _ => LogKind::Setup,
                };
                let read = GuestRequest::Logs {
                    kind,
                    offset: *offset,
                    max_bytes: if offset.is_none() { tail } else { 1024 * 1024 },
                };
                let reply = fleet.guest_call(&id, read, Duration::from_secs(30)).await;
                let chunk = match reply {
                    Ok(GuestReply::Logs { data, next_offset }) => {
                        *offset = Some(next_offset);
                        data
                    }
                    Ok(_) => Vec::new(),
                    // One source may be missing (no console on this backend); say so once.
                    Err(error) if offset.is_none() => {
                        *unavailable = true;
                        format!("({error})\n").into_bytes()
                    }
                    Err(error) => {
                        let _ = tx.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                if !chunk.is_empty()
                    && tx
                        .send(Ok(pb::LogChunk {
                            source: *source as i32,
                            data: chunk,
                        }))
                        .await
                        .is_err()
                {
                    return; // the caller left
                }
            }
            if !follow || unavailable.iter().all(|u| *u) {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let live = fleet
                .get_runner(&id)
                .await
                .ok()
                .flatten()
                .is_some_and(|(r, _)| {
                    r.state.holds_slot() && r.state != shoes_vz_model::RunnerState::TearingDown
                });
            if !live {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        let key = (1_795_805_170_213, RunnerId::generate());
        assert_eq!(
            parse_page_token(&page_token(&key)).expect("ours"),
            Some(key)
        );
        assert_eq!(parse_page_token("").expect("first page"), None);
        for bad in ["x", "1.2", "abc.0123456789abcdef0123456789abcdef", "1:0123"] {
            assert!(parse_page_token(bad).is_err(), "{bad}");
        }
    }
}
