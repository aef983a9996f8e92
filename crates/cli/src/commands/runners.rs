//! `shoes-vz runners list|show|ssh|logs|delete`: operators' view of the fleet's runners, and
//! their way into a live one (through the server and its agent: no network path to the guest
//! is needed).

use super::{Output, ServerArgs};
use anyhow::Context;
use shoes_vz_model::ResourceType;
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;
use std::io::Write;

#[derive(clap::Subcommand, Debug)]
pub enum RunnersCommand {
    /// List runners (live ones; --all adds deleted ones).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Include deleted runners.
        #[arg(long)]
        all: bool,
    },
    /// One runner: its record, state history, phase timings and first error.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run a command in a live runner (as its SSH user, over its own key and pinned host key,
    /// through the server and its agent) and exit with its status. Without a command, each line
    /// read from stdin runs as its own command (no terminal).
    Ssh {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
        /// Seconds a command may run.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
        /// The command and its arguments (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The runner's logs: the VM's console and the setup script's output (secrets masked).
    Logs {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
        /// Keep printing what comes, until the runner is gone.
        #[arg(long, short)]
        follow: bool,
        /// Only this log.
        #[arg(long, value_enum)]
        source: Option<LogSourceArg>,
        /// Bytes of each log's end to start with.
        #[arg(long, default_value_t = 64 * 1024)]
        tail_bytes: u64,
    },
    /// Delete a runner by its cloud id (shoes-vz-…); idempotent.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSourceArg {
    Console,
    Setup,
}

pub async fn run(command: RunnersCommand) -> anyhow::Result<()> {
    match command {
        RunnersCommand::List {
            server,
            output,
            all,
        } => {
            let mut client = server.connect().await?;
            let runners = crate::fleet_client::list_all(&mut client, all).await?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&runners.iter().map(to_json).collect::<Vec<_>>())?
                ),
                Output::Table => print_table(&runners),
            }
        }
        RunnersCommand::Show {
            server,
            cloud_id,
            output,
        } => {
            let shown = server
                .connect()
                .await?
                .get_runner(op::GetRunnerRequest { cloud_id })
                .await?
                .into_inner();
            let runner = shown.runner.context("the server returned no runner")?;
            match output {
                Output::Json => {
                    let mut value = to_json(&runner);
                    value["history"] = serde_json::Value::Array(
                        shown
                            .history
                            .iter()
                            .map(|h| serde_json::json!({"state": h.state, "at_ms": h.at_ms, "detail": h.detail}))
                            .collect(),
                    );
                    println!("{}", serde_json::to_string_pretty(&value)?);
                }
                Output::Table => print_show(&runner, &shown.history),
            }
        }
        RunnersCommand::Ssh {
            server,
            cloud_id,
            timeout,
            command,
        } => {
            let mut client = server.connect().await?;
            if command.is_empty() {
                line_shell(&mut client, &cloud_id, timeout).await?;
            } else {
                let status = exec(&mut client, &cloud_id, command, timeout).await?;
                std::process::exit(status);
            }
        }
        RunnersCommand::Logs {
            server,
            cloud_id,
            follow,
            source,
            tail_bytes,
        } => {
            let source = match source {
                None => op::LogSource::Unspecified,
                Some(LogSourceArg::Console) => op::LogSource::Console,
                Some(LogSourceArg::Setup) => op::LogSource::Setup,
            };
            let mut stream = server
                .connect()
                .await?
                .runner_logs(op::RunnerLogsRequest {
                    cloud_id,
                    source: source as i32,
                    follow,
                    tail_bytes,
                })
                .await?
                .into_inner();
            let mut last = None;
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.message().await? {
                if last != Some(chunk.source) && source == op::LogSource::Unspecified {
                    let name = op::LogSource::try_from(chunk.source).map_or("?", |s| {
                        if s == op::LogSource::Console {
                            "console"
                        } else {
                            "setup"
                        }
                    });
                    writeln!(out, "==> {name} <==")?;
                    last = Some(chunk.source);
                }
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
        }
        RunnersCommand::Delete { server, cloud_id } => {
            let mut client = server.connect().await?;
            client
                .delete_runner(op::DeleteRunnerRequest {
                    cloud_id: cloud_id.clone(),
                })
                .await?;
            println!("deleted {cloud_id}");
        }
    }
    Ok(())
}

/// Runs one command in the runner; prints its output; returns its exit status (or 255 when
/// it had none: killed, timed out).
async fn exec(
    client: &mut shoes_vz_protocol::client::OperatorClient,
    cloud_id: &str,
    command: Vec<String>,
    timeout: u32,
) -> anyhow::Result<i32> {
    let reply = client
        .runner_exec(op::RunnerExecRequest {
            cloud_id: cloud_id.to_string(),
            command,
            stdin: Vec::new(),
            timeout_secs: timeout,
        })
        .await?
        .into_inner();
    std::io::stdout().write_all(&reply.stdout)?;
    std::io::stderr().write_all(&reply.stderr)?;
    if reply.truncated {
        eprintln!("(output truncated)");
    }
    Ok(reply.exit_status.unwrap_or(255))
}

/// Without a command: each stdin line runs as `sh -c LINE` (no terminal, no state between lines).
async fn line_shell(
    client: &mut shoes_vz_protocol::client::OperatorClient,
    cloud_id: &str,
    timeout: u32,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    eprintln!("each line runs in {cloud_id} as its own `sh -c` (no terminal); Ctrl-D ends");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let status = exec(
            client,
            cloud_id,
            vec!["sh".into(), "-c".into(), line],
            timeout,
        )
        .await?;
        if status != 0 {
            eprintln!("(exit status {status})");
        }
    }
    Ok(())
}

fn print_show(r: &pb::RunnerInfo, history: &[op::StateChange]) {
    let t = r.timings.unwrap_or_default();
    let at = |ms: i64| {
        if ms <= 0 {
            "-".to_string()
        } else {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs()),
            )
            .to_string()
        }
    };
    println!("runner       {} ({})", r.cloud_id, r.runner_name);
    println!(
        "state        {}  (guest runner: {})",
        r.state,
        or_dash(&r.guest_runner_state)
    );
    println!("agent        {} ({})", r.agent_id, r.agent_hostname);
    println!(
        "template     {}  {}  {} vCPU  {} MiB",
        r.template,
        resource_name(r.resource_type),
        r.vcpus,
        r.memory_mib
    );
    println!("address      {}", or_dash(&r.ip_address));
    println!("labels       {}", r.labels.join(","));
    println!("created      {}", at(r.created_at_ms));
    if !r.error.is_empty() {
        println!("first error  {}", r.error);
    }
    if !r.end_reason.is_empty() {
        println!("ended        {}", r.end_reason);
    }
    println!("timings      queue {} ms, clone {} ms, boot→IP {} ms, boot→SSH {} ms, setup start {} ms, AddInstance→ssh-ready {} ms",
        t.queue_ms, t.clone_ms, t.boot_to_ip_ms, t.boot_to_ssh_ms, t.setup_ms, t.startup_ms);
    println!(
        "job          started {}, finished {}",
        at(r.job_started_at_ms),
        at(r.job_finished_at_ms)
    );
    println!("history");
    for change in history {
        if change.detail.is_empty() {
            println!("  {}  {}", at(change.at_ms), change.state);
        } else {
            println!(
                "  {}  {}  ({})",
                at(change.at_ms),
                change.state,
                change.detail
            );
        }
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

fn resource_name(value: i32) -> &'static str {
    ResourceType::from_i32(value).map_or("?", ResourceType::as_str)
}

pub(crate) fn to_json(r: &pb::RunnerInfo) -> serde_json::Value {
    let t = r.timings.unwrap_or_default();
    serde_json::json!({
        "cloud_id": r.cloud_id,
        "runner_name": r.runner_name,
        "state": r.state,
        "agent_id": r.agent_id,
        "agent_hostname": r.agent_hostname,
        "template": r.template,
        "resource_type": resource_name(r.resource_type),
        "vcpus": r.vcpus,
        "memory_mib": r.memory_mib,
        "ip_address": r.ip_address,
        "guest_runner_state": r.guest_runner_state,
        "error": r.error,
        "end_reason": r.end_reason,
        "job_started_at_ms": r.job_started_at_ms,
        "job_finished_at_ms": r.job_finished_at_ms,
        "labels": r.labels,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "timings_ms": {
            "clone": t.clone_ms, "boot_to_ip": t.boot_to_ip_ms, "boot_to_ssh": t.boot_to_ssh_ms,
            "setup": t.setup_ms, "startup": t.startup_ms, "queue": t.queue_ms,
        },
    })
}

pub(crate) fn print_table(runners: &[pb::RunnerInfo]) {
    println!(
        "{:<42} {:<13} {:<16} {:<9} {:<15} {:>9} {:>9}",
        "CLOUD ID", "STATE", "TEMPLATE", "TYPE", "IP", "CLONE ms", "SSH ms"
    );
    for r in runners {
        let t = r.timings.unwrap_or_default();
        println!(
            "{:<42} {:<13} {:<16} {:<9} {:<15} {:>9} {:>9}",
            r.cloud_id,
            r.state,
            r.template,
            resource_name(r.resource_type),
            r.ip_address,
            t.clone_ms,
            t.boot_to_ssh_ms
        );
    }
    if runners.is_empty() {
        println!("(no runners)");
    }
}
