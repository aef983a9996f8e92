//! Starting a script over SSH so that it outlives the connection, and asking later how it
//! ended: the setup path for templates without a runner-agent.
//!
//! The script arrives on stdin (never in argv), is saved in `~/.shoes-vz-setup/script`
//! (umask 077), and runs under `nohup` with stdin from `/dev/null`; its first 4 MiB of output
//! go to `log` and its exit status to `exit` (written by rename, so a reader never sees half
//! of it). Nothing here needs `setsid` or a terminal: macOS has no `setsid` command, and an
//! exec channel without a pty sends no SIGHUP when it closes.

use super::{SshError, SshSession};
use std::time::Duration;

const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const OUTPUT_LIMIT: usize = 4096;

/// How a detached script stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachedState {
    Running,
    Exited(Option<i32>),
}

/// The launcher: `shell` has been validated as a program name or absolute path (no quotes or
/// spaces), so it can stand in the command text.
pub fn launcher_command(shell: &str) -> String {
    format!(
        r#"umask 077
d="$HOME/.shoes-vz-setup"
mkdir -p "$d" && rm -f "$d/exit" && cat > "$d/script" || exit 97
nohup sh -c '{{ "$1" "$0/script" < /dev/null 2>&1; echo $? > "$0/exit.tmp"; rm -f "$0/script"; mv "$0/exit.tmp" "$0/exit"; }} | {{ head -c 4194304 > "$0/log"; cat > /dev/null; }}' "$d" '{shell}' > /dev/null 2>&1 < /dev/null &
echo started"#
    )
}

pub const POLL_COMMAND: &str = r#"cat "$HOME/.shoes-vz-setup/exit" 2>/dev/null || echo running"#;

/// Starts `script` detached; returns once it runs.
pub async fn start(session: &SshSession, shell: &str, script: &[u8]) -> Result<(), SshError> {
    let output = session
        .run_script(&launcher_command(shell), script, STEP_TIMEOUT, OUTPUT_LIMIT)
        .await?;
    if output.exit_status == Some(0) && output.stdout.starts_with(b"started") {
        Ok(())
    } else {
        Err(SshError::LaunchFailed {
            addr: session.addr(),
            exit_status: output.exit_status,
        })
    }
}

/// Asks how the detached script stands.
pub async fn poll(session: &SshSession) -> Result<DetachedState, SshError> {
    let output = session
        .run_script(POLL_COMMAND, b"", STEP_TIMEOUT, OUTPUT_LIMIT)
        .await?;
    Ok(parse_poll(&String::from_utf8_lossy(&output.stdout)))
}

pub fn parse_poll(text: &str) -> DetachedState {
    match text.trim() {
        "running" => DetachedState::Running,
        other => DetachedState::Exited(other.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_answers_are_read() {
        assert_eq!(parse_poll("running\n"), DetachedState::Running);
        assert_eq!(parse_poll("0\n"), DetachedState::Exited(Some(0)));
        assert_eq!(parse_poll("127"), DetachedState::Exited(Some(127)));
        assert_eq!(parse_poll("garbage"), DetachedState::Exited(None));
    }

    #[tokio::test]
    async fn the_launcher_detaches_records_the_status_and_keeps_the_output() {
        // The launcher's shell text, run by a local sh as sshd would.
        let home = tempfile::tempdir().expect("tempdir");
        let run = |command: String, stdin: &'static [u8]| {
            let home = home.path().to_path_buf();
            async move {
                let mut child = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .env("HOME", &home)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("sh");
                use tokio::io::AsyncWriteExt;
                let mut pipe = child.stdin.take().expect("stdin");
                pipe.write_all(stdin).await.expect("write");
                drop(pipe);
                let out = child.wait_with_output().await.expect("wait");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let started = tokio::time::Instant::now();
        let out = run(launcher_command("sh"), b"echo out-line; sleep 1; exit 5\n").await;
        assert_eq!(out.trim(), "started");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "the launcher waited for the script"
        );
        assert_eq!(
            parse_poll(&run(POLL_COMMAND.into(), b"").await),
            DetachedState::Running
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let state = loop {
            let state = parse_poll(&run(POLL_COMMAND.into(), b"").await);
            if state != DetachedState::Running || tokio::time::Instant::now() > deadline {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(state, DetachedState::Exited(Some(5)));
        let dir = home.path().join(".shoes-vz-setup");
        assert_eq!(
            std::fs::read_to_string(dir.join("log")).expect("log"),
            "out-line\n"
        );
        assert!(!dir.join("script").exists());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).expect("dir").permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }
}
