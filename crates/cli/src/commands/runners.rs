//! `shoes-vz runners list|show|ssh|logs|delete`: operators' view of the fleet's runners, and
//! their way into a live one (through the server and its agent: no network path to the guest
//! is needed).

use super::{Output, ServerArgs};
use crate::output::{print_json, print_json_line};
use anyhow::Context;
use shoes_vz_model::ResourceType;
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;
use std::collections::HashMap;
use std::io::Write;

#[derive(clap::Subcommand, Debug)]
pub enum RunnersCommand {
    /// List runners (live ones; --all adds deleted ones).
    ///
    /// --output json: an array of runner records ({"cloud_id", "runner_name", "state",
    /// "agent_id", "template", "ip_address", "error", "timings_ms": {…}, …}).
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Include deleted runners.
        #[arg(long)]
        all: bool,
    },
    /// One runner: its record, state history, phase timings and first error.
    ///
    /// --output json: the runner's record (as in `runners list`) with "history":
    /// [{"state", "at_ms", "detail"}].
    Show {
        #[command(flatten)]
        server: ServerArgs,
        cloud_id: String,
    },
    /// Run a command in a live runner (as its SSH user, over its own key and pinned host key,
    /// through the server and its agent) and exit with its status. Without a command, each line
    /// read from stdin runs as its own command (no terminal).
    ///
    /// --output json: one line {"exit_status" (null when killed or timed out), "stdout",
    /// "stderr" (as UTF-8, invalid bytes replaced), "truncated"}; the exit status is still the
    /// command's. Without a command, one such line per command.
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
    ///
    /// --output json: one line per chunk read, {"source": "console"|"setup", "data"} (as UTF-8,
    /// invalid bytes replaced; a character split between chunks is kept whole), also with
    /// --follow.
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
    ///
    /// --output json: the runner's record (as in `runners list`) once the deletion is
    /// recorded; its VM may still be stopping then ("state" is its last live state or
    /// tearing-down, and deleted once the VM is gone).
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

pub async fn run(command: RunnersCommand, output: Output) -> anyhow::Result<()> {
    match command {
        RunnersCommand::List { server, all } => {
            let mut client = server.connect().await?;
            let runners = crate::fleet_client::list_all(&mut client, all).await?;
            match output {
                Output::Json => print_json(&runners.iter().map(to_json).collect::<Vec<_>>())?,
                Output::Table => print_table(&runners),
            }
        }
        RunnersCommand::Show { server, cloud_id } => {
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
                    print_json(&value)?;
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
                line_shell(&mut client, &cloud_id, timeout, output).await?;
            } else {
                let status = exec(&mut client, &cloud_id, command, timeout, output).await?;
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
            if output.is_json() {
                let mut text = Utf8Joiner::default();
                while let Some(chunk) = stream.message().await? {
                    let data = text.push(chunk.source, &chunk.data);
                    print_log_chunk(chunk.source, &data)?;
                }
                for (source, data) in text.finish() {
                    print_log_chunk(source, &data)?;
                }
                return Ok(());
            }
            let mut last = None;
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.message().await? {
                if last != Some(chunk.source) && source == op::LogSource::Unspecified {
                    writeln!(out, "==> {} <==", source_name(chunk.source))?;
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
            match output {
                Output::Table => println!("deleted {cloud_id}"),
                Output::Json => {
                    let shown = client
                        .get_runner(op::GetRunnerRequest { cloud_id })
                        .await?
                        .into_inner();
                    print_json(&to_json(
                        &shown.runner.context("the server returned no runner")?,
                    ))?;
                }
            }
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
    output: Output,
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
    match output {
        Output::Json => print_json_line(&exec_json(&reply))?,
        Output::Table => {
            std::io::stdout().write_all(&reply.stdout)?;
            std::io::stderr().write_all(&reply.stderr)?;
            if reply.truncated {
                eprintln!("(output truncated)");
            }
        }
    }
    Ok(reply.exit_status.unwrap_or(255))
}

fn exec_json(reply: &op::RunnerExecResponse) -> serde_json::Value {
    serde_json::json!({
        "exit_status": reply.exit_status,
        "stdout": String::from_utf8_lossy(&reply.stdout),
        "stderr": String::from_utf8_lossy(&reply.stderr),
        "truncated": reply.truncated,
    })
}

/// Without a command: each stdin line runs as `sh -c LINE` (no terminal, no state between lines).
async fn line_shell(
    client: &mut shoes_vz_protocol::client::OperatorClient,
    cloud_id: &str,
    timeout: u32,
    output: Output,
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
            output,
        )
        .await?;
        if status != 0 && !output.is_json() {
            eprintln!("(exit status {status})");
        }
    }
    Ok(())
}

fn source_name(source: i32) -> &'static str {
    match op::LogSource::try_from(source) {
        Ok(op::LogSource::Console) => "console",
        Ok(op::LogSource::Setup) => "setup",
        _ => "unknown",
    }
}

fn print_log_chunk(source: i32, data: &str) -> anyhow::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    print_json_line(&serde_json::json!({"source": source_name(source), "data": data}))
}

/// Decodes each log's chunks as UTF-8. Chunks end where the log was read, not between
/// characters, so a character cut at a chunk's end waits for the rest of it.
#[derive(Default)]
struct Utf8Joiner {
    pending: HashMap<i32, Vec<u8>>,
}

impl Utf8Joiner {
    /// The text of `data` (after what `source` held back), minus a cut character at its end.
    fn push(&mut self, source: i32, data: &[u8]) -> String {
        let mut bytes = self.pending.remove(&source).unwrap_or_default();
        bytes.extend_from_slice(data);
        let held = bytes.split_off(bytes.len() - unfinished_char_len(&bytes));
        if !held.is_empty() {
            self.pending.insert(source, held);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What is still held back when the stream ends (a character that never got finished).
    fn finish(self) -> Vec<(i32, String)> {
        let mut rest: Vec<(i32, String)> = self
            .pending
            .into_iter()
            .map(|(source, bytes)| (source, String::from_utf8_lossy(&bytes).into_owned()))
            .collect();
        rest.sort();
        rest
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character whose other bytes have not
/// come yet (0 when the end is complete, or invalid: that is replaced, not held).
fn unfinished_char_len(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes, so its lead byte is among the last 3 when unfinished.
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: the lead is further back
        }
        let needed = match byte {
            0b1100_0000..=0b1101_1111 => 2,
            0b1110_0000..=0b1110_1111 => 3,
            0b1111_0000..=0b1111_0111 => 4,
            _ => return 0,
        };
        return if back < needed { back } else { 0 };
    }
    0
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
        "agent steps  prepare {} ms, VM start {} ms, identity refresh {} ms",
        t.prepare_ms, t.vm_start_ms, t.refresh_ms
    );
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
            "prepare": t.prepare_ms, "vm_start": t.vm_start_ms, "refresh": t.refresh_ms,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_chunks_comes_out_whole() {
        // 1-, 2-, 3- and 4-byte characters, cut at every byte.
        let text = "aé€😀";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut joiner = Utf8Joiner::default();
            let first = joiner.push(1, &bytes[..cut]);
            let second = joiner.push(1, &bytes[cut..]);
            assert!(!first.contains('\u{FFFD}'), "cut at {cut}: {first:?}");
            assert_eq!(first + &second, text, "cut at {cut}");
            assert!(joiner.finish().is_empty(), "cut at {cut}");
        }
    }

    #[test]
    fn each_log_holds_back_its_own_bytes() {
        let euro = "€".as_bytes();
        let mut joiner = Utf8Joiner::default();
        assert_eq!(joiner.push(1, &euro[..1]), "");
        assert_eq!(joiner.push(2, b"setup line\n"), "setup line\n");
        assert_eq!(joiner.push(1, &euro[1..]), "€");
    }

    #[test]
    fn invalid_bytes_are_replaced_and_an_unfinished_end_is_not_lost() {
        let mut joiner = Utf8Joiner::default();
        assert_eq!(joiner.push(1, b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(joiner.push(1, b"c\xe2\x82"), "c");
        assert_eq!(joiner.finish(), vec![(1, "\u{FFFD}".to_string())]);
        assert_eq!(unfinished_char_len(b"\x80\x80\x80"), 0, "no lead byte");
    }
}
