//! Running one `/exec` command: argv, or a script fed to a shell on stdin (so its text never
//! shows in a process list), in its own process group, with a timeout that kills the whole
//! group and a bound on the output kept.
//!
//! When the command exits in time, processes it left in the background keep running (a
//! setup script may start the runner that way); their output after [`OUTPUT_GRACE`] is not
//! collected. When it times out, or the caller goes away, every process still in its group
//! is killed. Processes that leave the group (`setsid`, daemons) are beyond reach.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::identity::files::under_root;
use crate::identity::users::{self, UserError, UserInfo};

/// How long output is still collected after the command itself has exited.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL, how long to wait for the command to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ARGS: usize = 1024;
const MAX_ARGV_BYTES: usize = 1024 * 1024;
pub(crate) const PATH: &str = if cfg!(target_os = "macos") {
    "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
} else {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
};

#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_output_bytes: usize,
    pub max_output_bytes: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(3600),
            default_output_bytes: 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The `/exec` request body. Exactly one of `argv` and `script`.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments, run directly (no shell). Visible in process lists: put
    /// secrets in `script` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Fed on stdin to `shell -s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// `sh` (default), `bash`, `zsh`… or an absolute path. Only with `script`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Bound for stdout and for stderr, each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<usize>,
    /// Run as this user (uid, gid, `HOME`) instead of the runner-agent's own (root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory; default the user's home, or `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

impl fmt::Debug for ExecRequest {
    // argv and script may carry secrets: show only their shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecRequest")
            .field("argv_len", &self.argv.as_ref().map(Vec::len))
            .field("script_bytes", &self.script.as_ref().map(String::len))
            .field("shell", &self.shell)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("user", &self.user)
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// The `/exec` response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResponse {
    /// The command's pid, which is also its process group id.
    pub pid: u32,
    /// `None` when killed by a signal (on timeout: SIGKILL, `signal` 9).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// UTF-8, invalid sequences replaced.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid exec request: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("invalid exec request: the working directory must be an absolute path without `..`")]
    Cwd,
    #[error("could not start the command")]
    Spawn(#[source] std::io::Error),
    #[error("lost track of the command")]
    Wait(#[source] std::io::Error),
}

impl ExecError {
    /// Whether the caller (not the guest) is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ExecError::Invalid(_) | ExecError::User(_) | ExecError::Cwd | ExecError::Spawn(_)
        )
    }
}

/// A validated request.
struct Plan {
    program: String,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    output_limit: usize,
    run_as: Option<UserInfo>,
    cwd: PathBuf,
    home: PathBuf,
}

fn plan(request: ExecRequest, root: &Path, limits: &ExecLimits) -> Result<Plan, ExecError> {
    let (program, args, stdin) = match (request.argv, request.script) {
        (Some(mut argv), None) => {
            if request.shell.is_some() {
                return Err(ExecError::Invalid("shell goes with script, not argv"));
            }
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ExecError::Invalid("argv needs at least a program"));
            }
            if argv.len() > MAX_ARGS || argv.iter().map(String::len).sum::<usize>() > MAX_ARGV_BYTES
            {
                return Err(ExecError::Invalid("argv is too long"));
            }
            if argv.iter().any(|arg| arg.contains('\0')) {
                return Err(ExecError::Invalid("argv must not contain NUL bytes"));
            }
            let program = argv.remove(0);
            (program, argv, None)
        }
        (None, Some(script)) => {
            let shell = request.shell.unwrap_or_else(|| "sh".to_owned());
            validate_shell(&shell)?;
            (shell, vec!["-s".to_owned()], Some(script.into_bytes()))
        }
        _ => return Err(ExecError::Invalid("give exactly one of argv and script")),
    };
    let timeout = match request.timeout_secs {
        None => limits.default_timeout,
        Some(0) => return Err(ExecError::Invalid("timeout_secs must be at least 1")),
        Some(secs) if Duration::from_secs(secs) > limits.max_timeout => {
            return Err(ExecError::Invalid("timeout_secs is above the maximum"))
        }
        Some(secs) => Duration::from_secs(secs),
    };
    let output_limit = match request.max_output_bytes {
        None => limits.default_output_bytes,
        Some(n) if n > limits.max_output_bytes => {
            return Err(ExecError::Invalid("max_output_bytes is above the maximum"))
        }
        Some(n) => n,
    };
    let run_as = match &request.user {
        Some(name) => {
            if !shoes_vz_guest_config::is_valid_name(name, 32) {
                return Err(ExecError::Invalid("user is not a valid user name"));
            }
            Some(users::lookup(root, name)?)
        }
        None => None,
    };
    let home = match &run_as {
        Some(user) => under_root(root, &user.home).map_err(|_| ExecError::Cwd)?,
        None => root.to_path_buf(),
    };
    let cwd = match &request.cwd {
        Some(cwd) => under_root(root, cwd).map_err(|_| ExecError::Cwd)?,
        None => home.clone(),
    };
    Ok(Plan {
        program,
        args,
        stdin,
        timeout,
        output_limit,
        run_as,
        cwd,
        home,
    })
}

/// A shell is a bare program name (`sh`, `bash`, found on PATH) or an absolute path.
/// `program` as the path [`PATH`] finds it (a name without `/`), else unchanged. A child
/// spawned by path can be started with `posix_spawn`; by bare name with its own `PATH`, Rust's
/// `Command` has to `fork` the whole daemon to search that `PATH` in the child, which costs a
/// process holding many threads and much memory (the test backend runs many runner-agents in
/// one) a copy of its page tables per start.
pub(crate) fn resolve_program(program: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if !program.contains('/') {
        let found = PATH
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|path| {
                std::fs::metadata(path)
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            });
        if let Some(path) = found {
            return path;
        }
    }
    PathBuf::from(program)
}

pub(crate) fn validate_shell(shell: &str) -> Result<(), ExecError> {
    let bare_name = !shell.is_empty()
        && shell
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !shell.starts_with(['-', '.']);
    let absolute = shell.starts_with('/')
        && shell.bytes().all(|b| b.is_ascii_graphic())
        && !shell.contains("/../");
    if bare_name || absolute {
        Ok(())
    } else {
        Err(ExecError::Invalid(
            "shell must be a program name like sh or bash, or an absolute path",
        ))
    }
}

/// Kills the command's whole process group when dropped, unless disarmed.
struct GroupKiller {
    pgid: Option<nix::unistd::Pid>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (nobody left) is fine. The group id cannot have been reused: a pid is
            // not handed out again while it still names a live process group.
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Capture {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    fn new(limit: usize) -> Arc<Mutex<Capture>> {
        Arc::new(Mutex::new(Capture {
            data: Vec::new(),
            limit,
            truncated: false,
        }))
    }

    fn push(&mut self, chunk: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// Keeps reading after the limit so the command never blocks on a full pipe.
async fn pump(mut reader: impl AsyncRead + Unpin, capture: Arc<Mutex<Capture>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => capture
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(&buf[..n]),
        }
    }
}

fn take(capture: &Mutex<Capture>) -> (String, bool) {
    let capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
    (
        String::from_utf8_lossy(&capture.data).into_owned(),
        capture.truncated,
    )
}

/// Validates and runs `request`. `root` prefixes user homes and `cwd` (see `--root`).
pub async fn run(
    request: ExecRequest,
    root: &Path,
    limits: &ExecLimits,
) -> Result<ExecResponse, ExecError> {
    let plan = plan(request, root, limits)?;
    let mut command = tokio::process::Command::new(&plan.program);
    command
        .args(&plan.args)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", &plan.home)
        .current_dir(&plan.cwd)
        .stdin(if plan.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = &plan.run_as {
        command
            .uid(user.uid)
            .gid(user.gid)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("SHELL", &user.shell);
    }

    let started = Instant::now();
    let mut child = command.spawn().map_err(ExecError::Spawn)?;
    let pid = child.id().ok_or_else(|| {
        ExecError::Wait(std::io::Error::other(
            "the command exited before it was tracked",
        ))
    })?;
    let mut killer = GroupKiller {
        pgid: i32::try_from(pid).ok().map(nix::unistd::Pid::from_raw),
    };

    let stdout = Capture::new(plan.output_limit);
    let stderr = Capture::new(plan.output_limit);
    let mut readers = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(pump(out, Arc::clone(&stdout)));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(pump(err, Arc::clone(&stderr)));
    }
    // Separate from the readers: a command that never reads its stdin must not hold up
    // collecting the output. Dropped (and so aborted) with this function.
    let mut feeder = JoinSet::new();
    if let (Some(mut pipe), Some(script)) = (child.stdin.take(), plan.stdin) {
        feeder.spawn(async move {
            // EPIPE just means the shell stopped reading.
            let _ = pipe.write_all(&script).await;
            let _ = pipe.shutdown().await;
        });
    }

    let (status, timed_out) = match tokio::time::timeout(plan.timeout, child.wait()).await {
        Ok(Ok(status)) => {
            killer.disarm();
            (Some(status), false)
        }
        Ok(Err(err)) => return Err(ExecError::Wait(err)),
        Err(_) => {
            killer.kill();
            let _ = child.start_kill();
            let reaped = tokio::time::timeout(REAP_TIMEOUT, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            (reaped, true)
        }
    };
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();

    let (stdout, stdout_truncated) = take(&stdout);
    let (stderr, stderr_truncated) = take(&stderr);
    Ok(ExecResponse {
        pid,
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_name_resolves_to_its_path_and_others_stay() {
        let sh = resolve_program("sh");
        assert!(sh.is_absolute(), "{}", sh.display());
        assert_eq!(sh.file_name().and_then(|n| n.to_str()), Some("sh"));
        assert_eq!(resolve_program("/bin/sh"), PathBuf::from("/bin/sh"));
        assert_eq!(
            resolve_program("no-such-program-shoes-vz"),
            PathBuf::from("no-such-program-shoes-vz")
        );
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn argv(args: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: Some(args.iter().map(|s| (*s).to_owned()).collect()),
            ..ExecRequest::default()
        }
    }

    async fn run_here(request: ExecRequest) -> Result<ExecResponse, ExecError> {
        run(request, Path::new("/"), &ExecLimits::default()).await
    }

    #[tokio::test]
    async fn argv_runs_directly_and_reports_exit_code_and_streams() -> TestResult {
        let out = run_here(argv(&["sh", "-c", "echo out; echo err >&2; exit 3"])).await?;
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.signal, None);
        assert!(!out.timed_out);
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        Ok(())
    }

    #[tokio::test]
    async fn script_goes_to_the_shell_on_stdin() -> TestResult {
        let request = ExecRequest {
            script: Some("x=41\necho $((x + 1))\n".to_owned()),
            ..ExecRequest::default()
        };
        let out = run_here(request).await?;
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.stdout, "42\n");
        Ok(())
    }

    #[tokio::test]
    async fn output_is_bounded_per_stream_and_flagged() -> TestResult {
        let mut request = argv(&[
            "sh",
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x; echo small >&2",
        ]);
        request.max_output_bytes = Some(1000);
        let out = run_here(request).await?;
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        assert_eq!(out.stdout.len(), 1000);
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, "small\n");
        assert!(!out.stderr_truncated);
        Ok(())
    }

    #[tokio::test]
    async fn a_signal_is_reported() -> TestResult {
        let out = run_here(argv(&["sh", "-c", "kill -TERM $$"])).await?;
        assert_eq!(out.exit_code, None);
        assert_eq!(out.signal, Some(15));
        Ok(())
    }

    #[tokio::test]
    async fn the_environment_is_not_inherited() -> TestResult {
        let out = run_here(argv(&["env"])).await?;
        let mut names: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["HOME", "PATH"], "{}", out.stdout);
        Ok(())
    }

    #[test]
    fn requests_are_validated() {
        let limits = ExecLimits::default();
        let root = Path::new("/");
        let bad = [
            ExecRequest::default(),
            ExecRequest {
                argv: Some(vec!["true".into()]),
                script: Some("true".into()),
                ..ExecRequest::default()
            },
            argv(&[]),
            argv(&[""]),
            argv(&["a\0b"]),
            ExecRequest {
                argv: Some(vec!["true".into()]),
                shell: Some("bash".into()),
                ..ExecRequest::default()
            },
            ExecRequest {
                script: Some("true".into()),
                shell: Some("sh -c evil".into()),
                ..ExecRequest::default()
            },
            ExecRequest {
                timeout_secs: Some(0),
                ..argv(&["true"])
            },
            ExecRequest {
                timeout_secs: Some(limits.max_timeout.as_secs() + 1),
                ..argv(&["true"])
            },
            ExecRequest {
                max_output_bytes: Some(limits.max_output_bytes + 1),
                ..argv(&["true"])
            },
            ExecRequest {
                user: Some("../root".into()),
                ..argv(&["true"])
            },
            ExecRequest {
                cwd: Some("relative".into()),
                ..argv(&["true"])
            },
        ];
        for request in bad {
            let shown = format!("{request:?}");
            match plan(request, root, &limits) {
                Err(err) => assert!(err.is_client_error(), "{shown}: {err}"),
                Ok(_) => panic!("accepted {shown}"),
            }
        }
    }

    #[test]
    fn debug_does_not_show_the_script() {
        let request = ExecRequest {
            script: Some("export GITHUB_TOKEN=ghs_secret".into()),
            ..ExecRequest::default()
        };
        assert!(!format!("{request:?}").contains("ghs_secret"));
    }
}
