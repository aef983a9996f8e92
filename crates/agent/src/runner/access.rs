//! Operators' access to a live runner, through the server and this agent (an operator needs no
//! network path to the guest): a command over SSH with the runner's own key and its pinned host
//! key, and reads of its logs (the VM's console, the setup script's log in the guest) with the
//! setup script's secrets masked. Every access is logged (what and when, never stdin or output).

use super::{Report, RunnerManager};
use crate::guest_api::GuestApi;
use crate::ssh::{self, SshTarget};
use shoes_vz_model::RunnerId;
use shoes_vz_protocol::agent::v1 as pb;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How operators reach a runner's guest once SSH is ready.
#[derive(Clone)]
pub struct Access {
    pub ssh: SshTarget,
    pub guest_api: Option<GuestApi>,
}

/// Output kept per stream of an operator's command.
const EXEC_OUTPUT_LIMIT: usize = 1024 * 1024;
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most a log read returns at once.
const MAX_LOG_CHUNK: u64 = 1024 * 1024;

impl RunnerManager {
    /// Records how operators reach the runner (called once SSH answered).
    pub(super) fn set_access(&self, runner_id: &RunnerId, access: Access) {
        if let Some(slot) = self.slots().get_mut(runner_id) {
            slot.access = Some(access);
        }
    }

    /// Answers an operator's request in the background; the reply goes out with the reports.
    pub(super) fn answer(self: &Arc<Self>, request: pb::GuestRequest) {
        let manager = Arc::clone(self);
        self.tasks.spawn(async move {
            let request_id = request.request_id;
            let reply = match manager.serve(request).await {
                Ok(reply) => reply,
                Err(error) => pb::guest_reply::Reply::Error(error),
            };
            let _ = manager.events.send(Report::Reply(pb::GuestReply {
                request_id,
                reply: Some(reply),
            }));
        });
    }

    async fn serve(&self, request: pb::GuestRequest) -> Result<pb::guest_reply::Reply, String> {
        let runner_id = RunnerId::parse(&request.runner_id)
            .map_err(|_| "the request names a malformed runner id".to_string())?;
        let (access, secrets) = {
            let slots = self.slots();
            let slot = slots
                .get(&runner_id)
                .ok_or_else(|| format!("runner {runner_id} is not on this agent (any more)"))?;
            (slot.access.clone(), Arc::clone(&slot.secrets))
        };
        match request.request {
            Some(pb::guest_request::Request::Exec(exec)) => {
                let access = access.ok_or_else(|| {
                    format!(
                        "runner {runner_id} is not reachable over SSH yet (it is still booting)"
                    )
                })?;
                tracing::info!(runner = %runner_id, args = exec.command.len(), "an operator runs a command in the runner");
                let result = run(&access.ssh, &exec).await?;
                Ok(pb::guest_reply::Reply::Exec(pb::GuestExecResult {
                    stdout: secrets.mask(&result.stdout),
                    stderr: secrets.mask(&result.stderr),
                    ..result
                }))
            }
            Some(pb::guest_request::Request::Logs(logs)) => {
                let max = logs.max_bytes.clamp(1, MAX_LOG_CHUNK);
                let (data, next_offset) = match pb::GuestLogKind::try_from(logs.kind) {
                    Ok(pb::GuestLogKind::Console) => {
                        let bundle =
                            crate::bundle::Bundle::path_for(&self.config.runners_dir, &runner_id);
                        let path = self.hypervisor.console_log(&bundle).ok_or_else(|| {
                            format!(
                                "the {} backend keeps no console log",
                                self.hypervisor.kind()
                            )
                        })?;
                        read_file(&path, logs.offset, max)?
                    }
                    Ok(pb::GuestLogKind::Setup) => {
                        let api = access.and_then(|a| a.guest_api).ok_or_else(|| {
                            "this runner has no runner-agent to read its setup log from (its template has no guestAgent; the log is in ~/.shoes-vz-setup/log, see `runners ssh`)".to_string()
                        })?;
                        api.setup_log(logs.offset, max)
                            .await
                            .map_err(|e| crate::error_chain(&e))?
                    }
                    _ => return Err("unknown log kind".into()),
                };
                Ok(pb::guest_reply::Reply::Logs(pb::GuestLogsResult {
                    data: secrets.mask(&data),
                    next_offset,
                }))
            }
            None => Err("an empty request".into()),
        }
    }
}

/// Runs the operator's command over a fresh SSH session.
async fn run(target: &SshTarget, exec: &pb::GuestExec) -> Result<pb::GuestExecResult, String> {
    if exec.command.is_empty() {
        return Err("no command given".into());
    }
    let timeout = match exec.timeout_secs {
        0 => DEFAULT_EXEC_TIMEOUT,
        secs => Duration::from_secs(u64::from(secs)).min(MAX_EXEC_TIMEOUT),
    };
    let session = ssh::wait_ready(target, Duration::from_secs(10))
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let command = shell_words(&exec.command);
    let output = session
        .run_script(&command, &exec.stdin, timeout, EXEC_OUTPUT_LIMIT)
        .await;
    session.close().await;
    match output {
        Ok(output) => Ok(pb::GuestExecResult {
            exit_status: output.exit_status.and_then(|s| i32::try_from(s).ok()),
            stdout: output.stdout,
            stderr: output.stderr,
            truncated: output.truncated,
        }),
        Err(ssh::SshError::ScriptTimeout { after }) => Err(format!(
            "the command did not finish within {after:?} and was stopped"
        )),
        Err(error) => Err(crate::error_chain(&error)),
    }
}

/// The command as one line for the guest's shell, each word single-quoted.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to `max` bytes of a file from `offset` (or its last `max` bytes), and the next offset.
fn read_file(path: &Path, offset: Option<u64>, max: u64) -> Result<(Vec<u8>, u64), String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let start = offset.map_or(len.saturating_sub(max), |o| o.min(len));
    file.seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut data = Vec::new();
    file.take(max)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let next = start + data.len() as u64;
    Ok((data, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_guest_shell() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_words(&words(&["uname", "-a"])), "uname -a");
        assert_eq!(
            shell_words(&words(&["sh", "-c", "echo $HOME; it's"])),
            r"sh -c 'echo $HOME; it'\''s'"
        );
        assert_eq!(shell_words(&words(&["printf", ""])), "printf ''");
    }

    #[test]
    fn a_file_is_read_from_an_offset_or_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"0123456789").expect("write");
        assert_eq!(
            read_file(&path, None, 4).expect("tail"),
            (b"6789".to_vec(), 10)
        );
        assert_eq!(
            read_file(&path, Some(2), 3).expect("from"),
            (b"234".to_vec(), 5)
        );
        assert_eq!(
            read_file(&path, Some(99), 3).expect("past"),
            (Vec::new(), 10)
        );
        assert_eq!(
            read_file(&dir.path().join("none"), None, 3).expect("missing"),
            (Vec::new(), 0)
        );
    }
}
