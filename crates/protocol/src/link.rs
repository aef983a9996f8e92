//! The agent link's wire format and the model's commands and reports, converted both ways.
//! Only the link's two ends call these (the server's AgentService handler, the agent's Sync
//! loop); everything behind them speaks `shoes_vz_model::link`.

use crate::agent::v1 as pb;
use shoes_vz_model::clock::unix_micros;
use shoes_vz_model::link::{
    AgentCommand, AgentReport, CreateRunner, ExecResult, GuestAnswer, GuestCall, GuestReply,
    GuestRequest, LogKind, PhaseTimings, RunnerReport,
};
use shoes_vz_model::{IdError, ResourceSpec, RunnerId, RunnerName, RunnerState};

/// A message from the other end that means nothing as sent.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the message names a malformed runner id or name")]
    Id(#[source] IdError),
    #[error("the message carries an unspecified runner state")]
    UnspecifiedState,
    #[error("the message carries an unknown log kind")]
    UnknownLogKind,
    #[error("the message is empty")]
    Empty,
}

fn runner_id(text: &str) -> Result<RunnerId, LinkError> {
    RunnerId::parse(text).map_err(LinkError::Id)
}

pub fn state_to_pb(state: RunnerState) -> pb::RunnerState {
    match state {
        RunnerState::Creating => pb::RunnerState::Creating,
        RunnerState::Booting => pb::RunnerState::Booting,
        RunnerState::SshReady => pb::RunnerState::SshReady,
        RunnerState::Running => pb::RunnerState::Running,
        RunnerState::TearingDown => pb::RunnerState::TearingDown,
        RunnerState::Error => pb::RunnerState::Error,
        RunnerState::Deleted => pb::RunnerState::Deleted,
    }
}

pub fn state_from_pb(value: i32) -> Result<RunnerState, LinkError> {
    use pb::RunnerState as P;
    Ok(
        match P::try_from(value).map_err(|_| LinkError::UnspecifiedState)? {
            P::Unspecified => return Err(LinkError::UnspecifiedState),
            P::Creating => RunnerState::Creating,
            P::Booting => RunnerState::Booting,
            P::SshReady => RunnerState::SshReady,
            P::Running => RunnerState::Running,
            P::TearingDown => RunnerState::TearingDown,
            P::Error => RunnerState::Error,
            P::Deleted => RunnerState::Deleted,
        },
    )
}

/// Protobuf's 0 is "not measured yet".
fn measured(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

fn unix_ms(ms: u64) -> Option<i64> {
    i64::try_from(ms).ok().filter(|ms| *ms > 0)
}

pub fn runner_report_to_pb(report: RunnerReport) -> pb::RunnerStatus {
    let t = report.timings;
    let ms = |at: Option<i64>| at.and_then(|at| u64::try_from(at).ok()).unwrap_or(0);
    pb::RunnerStatus {
        runner_id: report.runner_id.to_string(),
        state: state_to_pb(report.state) as i32,
        ip_address: report.ip_address,
        error: report.error,
        timings: Some(pb::PhaseTimings {
            clone_ms: t.clone_ms.unwrap_or(0),
            boot_to_ip_ms: t.boot_to_ip_ms.unwrap_or(0),
            boot_to_ssh_ms: t.boot_to_ssh_ms.unwrap_or(0),
            setup_ms: t.setup_ms.unwrap_or(0),
            prepare_ms: t.prepare_ms.unwrap_or(0),
            vm_start_ms: t.vm_start_ms.unwrap_or(0),
            refresh_ms: t.refresh_ms.unwrap_or(0),
        }),
        guest_runner_state: report.guest_runner_state,
        warm_start_fallback: report.warm_start_fallback,
        end_reason: report.end_reason,
        job_started_at_ms: ms(report.job_started_at_ms),
        job_finished_at_ms: ms(report.job_finished_at_ms),
        failure_step: report.failure_step,
    }
}

pub fn runner_report_from_pb(status: pb::RunnerStatus) -> Result<RunnerReport, LinkError> {
    let t = status.timings.unwrap_or_default();
    Ok(RunnerReport {
        runner_id: runner_id(&status.runner_id)?,
        state: state_from_pb(status.state)?,
        ip_address: status.ip_address,
        error: status.error,
        timings: PhaseTimings {
            clone_ms: measured(t.clone_ms),
            boot_to_ip_ms: measured(t.boot_to_ip_ms),
            boot_to_ssh_ms: measured(t.boot_to_ssh_ms),
            setup_ms: measured(t.setup_ms),
            prepare_ms: measured(t.prepare_ms),
            vm_start_ms: measured(t.vm_start_ms),
            refresh_ms: measured(t.refresh_ms),
        },
        guest_runner_state: status.guest_runner_state,
        warm_start_fallback: status.warm_start_fallback,
        end_reason: status.end_reason,
        job_started_at_ms: unix_ms(status.job_started_at_ms),
        job_finished_at_ms: unix_ms(status.job_finished_at_ms),
        failure_step: status.failure_step,
    })
}

pub fn command_to_pb(command: AgentCommand) -> pb::ServerMessage {
    use pb::server_message::Message;
    let message = match command {
        AgentCommand::Create(create) => Message::CreateRunner(pb::CreateRunner {
            runner_id: create.runner_id.to_string(),
            runner_name: create.runner_name.to_string(),
            setup_script: create.setup_script,
            template: create.template,
            vcpus: create.spec.vcpus,
            memory_mib: create.spec.memory_mib,
        }),
        AgentCommand::Delete(runner_id) => Message::DeleteRunner(pb::DeleteRunner {
            runner_id: runner_id.to_string(),
        }),
        AgentCommand::Guest(call) => Message::GuestRequest(guest_call_to_pb(call)),
        AgentCommand::Heartbeat => Message::Heartbeat(pb::Heartbeat {
            sent_at_unix_us: unix_micros(),
        }),
    };
    pb::ServerMessage {
        message: Some(message),
        sent_at_unix_us: unix_micros(),
    }
}

pub fn command_from_pb(message: pb::ServerMessage) -> Result<AgentCommand, LinkError> {
    use pb::server_message::Message;
    Ok(match message.message.ok_or(LinkError::Empty)? {
        Message::CreateRunner(create) => AgentCommand::Create(CreateRunner {
            runner_id: runner_id(&create.runner_id)?,
            runner_name: RunnerName::parse(&create.runner_name).map_err(LinkError::Id)?,
            template: create.template,
            spec: ResourceSpec {
                vcpus: create.vcpus,
                memory_mib: create.memory_mib,
            },
            setup_script: create.setup_script,
        }),
        Message::DeleteRunner(delete) => AgentCommand::Delete(runner_id(&delete.runner_id)?),
        Message::GuestRequest(request) => AgentCommand::Guest(guest_call_from_pb(request)?),
        Message::Heartbeat(_) => AgentCommand::Heartbeat,
    })
}

fn guest_call_to_pb(call: GuestCall) -> pb::GuestRequest {
    use pb::guest_request::Request;
    let request = match call.request {
        GuestRequest::Exec {
            command,
            stdin,
            timeout_secs,
        } => Request::Exec(pb::GuestExec {
            command,
            stdin,
            timeout_secs,
        }),
        GuestRequest::Logs {
            kind,
            offset,
            max_bytes,
        } => Request::Logs(pb::GuestLogs {
            kind: match kind {
                LogKind::Console => pb::GuestLogKind::Console,
                LogKind::Setup => pb::GuestLogKind::Setup,
            } as i32,
            offset,
            max_bytes,
        }),
    };
    pb::GuestRequest {
        request_id: call.request_id,
        runner_id: call.runner_id.to_string(),
        request: Some(request),
    }
}

fn guest_call_from_pb(request: pb::GuestRequest) -> Result<GuestCall, LinkError> {
    use pb::guest_request::Request;
    let runner_id = runner_id(&request.runner_id)?;
    let guest = match request.request.ok_or(LinkError::Empty)? {
        Request::Exec(exec) => GuestRequest::Exec {
            command: exec.command,
            stdin: exec.stdin,
            timeout_secs: exec.timeout_secs,
        },
        Request::Logs(logs) => GuestRequest::Logs {
            kind: match pb::GuestLogKind::try_from(logs.kind) {
                Ok(pb::GuestLogKind::Console) => LogKind::Console,
                Ok(pb::GuestLogKind::Setup) => LogKind::Setup,
                _ => return Err(LinkError::UnknownLogKind),
            },
            offset: logs.offset,
            max_bytes: logs.max_bytes,
        },
    };
    Ok(GuestCall {
        request_id: request.request_id,
        runner_id,
        request: guest,
    })
}

pub fn report_to_pb(report: AgentReport) -> pb::AgentMessage {
    use pb::agent_message::Message;
    let message = match report {
        AgentReport::Snapshot(runners) => Message::Snapshot(pb::Snapshot {
            runners: runners.into_iter().map(runner_report_to_pb).collect(),
        }),
        AgentReport::Update(runner) => Message::RunnerUpdate(runner_report_to_pb(*runner)),
        AgentReport::Guest(answer) => Message::GuestReply(guest_answer_to_pb(answer)),
        AgentReport::Heartbeat => Message::Heartbeat(pb::Heartbeat {
            sent_at_unix_us: unix_micros(),
        }),
    };
    pb::AgentMessage {
        message: Some(message),
    }
}

/// An agent's message as a report; a Hello (the session's first message) counts as a
/// heartbeat afterwards.
pub fn report_from_pb(message: pb::AgentMessage) -> Result<AgentReport, LinkError> {
    use pb::agent_message::Message;
    Ok(match message.message.ok_or(LinkError::Empty)? {
        Message::Snapshot(snapshot) => AgentReport::Snapshot(
            snapshot
                .runners
                .into_iter()
                .map(runner_report_from_pb)
                .collect::<Result<_, _>>()?,
        ),
        Message::RunnerUpdate(status) => {
            AgentReport::Update(Box::new(runner_report_from_pb(status)?))
        }
        Message::GuestReply(reply) => AgentReport::Guest(guest_answer_from_pb(reply)),
        Message::Hello(_) | Message::Heartbeat(_) => AgentReport::Heartbeat,
    })
}

fn guest_answer_to_pb(answer: GuestAnswer) -> pb::GuestReply {
    use pb::guest_reply::Reply;
    pb::GuestReply {
        request_id: answer.request_id,
        reply: Some(match answer.reply {
            GuestReply::Exec(result) => Reply::Exec(pb::GuestExecResult {
                exit_status: result.exit_status,
                stdout: result.stdout,
                stderr: result.stderr,
                truncated: result.truncated,
            }),
            GuestReply::Logs { data, next_offset } => {
                Reply::Logs(pb::GuestLogsResult { data, next_offset })
            }
            GuestReply::Error(error) => Reply::Error(error),
        }),
    }
}

fn guest_answer_from_pb(reply: pb::GuestReply) -> GuestAnswer {
    use pb::guest_reply::Reply;
    GuestAnswer {
        request_id: reply.request_id,
        reply: match reply.reply {
            Some(Reply::Exec(result)) => GuestReply::Exec(ExecResult {
                exit_status: result.exit_status,
                stdout: result.stdout,
                stderr: result.stderr,
                truncated: result.truncated,
            }),
            Some(Reply::Logs(logs)) => GuestReply::Logs {
                data: logs.data,
                next_offset: logs.next_offset,
            },
            Some(Reply::Error(error)) => GuestReply::Error(error),
            None => GuestReply::Error("the agent sent an empty answer".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: RunnerState) -> RunnerReport {
        RunnerReport {
            runner_id: RunnerId::generate(),
            state,
            ip_address: "10.0.2.15".into(),
            error: String::new(),
            timings: PhaseTimings {
                clone_ms: Some(3),
                boot_to_ip_ms: None,
                boot_to_ssh_ms: Some(900),
                setup_ms: None,
                prepare_ms: Some(40),
                vm_start_ms: Some(12),
                refresh_ms: None,
            },
            guest_runner_state: "idle".into(),
            warm_start_fallback: true,
            end_reason: String::new(),
            job_started_at_ms: Some(1_795_000_000_000),
            job_finished_at_ms: None,
            failure_step: String::new(),
        }
    }

    #[test]
    fn commands_and_reports_survive_the_wire() {
        let create = AgentCommand::Create(CreateRunner {
            runner_id: RunnerId::generate(),
            runner_name: RunnerName::parse("myshoes-abc").expect("name"),
            template: "linux".into(),
            spec: ResourceSpec {
                vcpus: 2,
                memory_mib: 4096,
            },
            setup_script: "#!/bin/bash\n".into(),
        });
        let logs = AgentCommand::Guest(GuestCall {
            request_id: 7,
            runner_id: RunnerId::generate(),
            request: GuestRequest::Logs {
                kind: LogKind::Setup,
                offset: None,
                max_bytes: 4096,
            },
        });
        for command in [create, logs, AgentCommand::Delete(RunnerId::generate())] {
            let back = command_from_pb(command_to_pb(command.clone())).expect("converts back");
            assert_eq!(back, command);
        }
        for state in RunnerState::ALL {
            let sent = AgentReport::Update(Box::new(report(state)));
            assert_eq!(
                report_from_pb(report_to_pb(sent.clone())).expect("back"),
                sent
            );
        }
        let answer = AgentReport::Guest(GuestAnswer {
            request_id: 9,
            reply: GuestReply::Exec(ExecResult {
                exit_status: None,
                stdout: b"out".to_vec(),
                stderr: Vec::new(),
                truncated: true,
            }),
        });
        assert_eq!(
            report_from_pb(report_to_pb(answer.clone())).expect("back"),
            answer
        );
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let mut status = runner_report_to_pb(report(RunnerState::Running));
        status.state = 0;
        assert!(matches!(
            runner_report_from_pb(status.clone()),
            Err(LinkError::UnspecifiedState)
        ));
        status.state = pb::RunnerState::Running as i32;
        status.runner_id = "../etc".into();
        assert!(matches!(
            runner_report_from_pb(status),
            Err(LinkError::Id(_))
        ));
        assert!(matches!(
            command_from_pb(pb::ServerMessage::default()),
            Err(LinkError::Empty)
        ));
    }
}
