//! `/setup`: the runner's setup script, started detached and watched.
//!
//! myshoes' setup script ends by running the GitHub Actions runner in the foreground: it
//! returns only after the ephemeral runner's one job (shared notes: myshoes-setup-script.md,
//! "It runs for the whole job"). So nothing may wait for it inside a request, and it must not
//! depend on the connection that started it. It is written to a root-only file, run as
//! `<shell> <file>` in its own process group with stdin from `/dev/null` and stdout and stderr
//! appended to a log that is kept bounded, and its exit is recorded on disk. A daemon that
//! restarts finds a setup it started by its `started.json`, so the script never runs twice.
//!
//! Files, in `<state dir>/setup/<runner id>/` (mode 0700): `script` (0600, removed once the
//! script exits), `log` and `log.1` (the log is copied to `log.1` and emptied each time it
//! passes the limit, so at most twice the limit is kept), `rotated` (how many bytes were
//! rotated away: readers address the log by its position in everything ever written),
//! `started.json`, `exited.json`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::exec::{resolve_program, validate_shell, ExecError, PATH};
use crate::identity::files::under_root;
use crate::identity::users::{self, UserError};

/// Where a real guest keeps the daemon's state (under `--root`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shoes-vz-runner-agent";
const SETUP_DIR: &str = "setup";
const SCRIPT_FILE: &str = "script";
const LOG_FILE: &str = "log";
const OLD_LOG_FILE: &str = "log.1";
const STARTED_FILE: &str = "started.json";
const EXITED_FILE: &str = "exited.json";
/// How many bytes of the log have been rotated away, so positions stay valid across rotations.
const ROTATED_FILE: &str = "rotated";
/// Setup scripts are a few KiB (myshoes' is ~4 KiB); anything far larger is a mistake.
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The daemon's state directory, inside `--root`.
    pub state_dir: PathBuf,
    /// The log is rotated once it passes this many bytes.
    pub log_max_bytes: u64,
    /// How often a running script's log size (and an adopted script's liveness) is checked.
    pub check_interval: Duration,
    /// Added to the script's otherwise cleared environment (the test backend marks its
    /// processes this way, so a restarted host agent can find them).
    pub extra_env: Vec<(String, String)>,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_max_bytes: 4 * 1024 * 1024,
            check_interval: Duration::from_secs(1),
            extra_env: Vec::new(),
        }
    }
}

/// The `/setup` request body.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// Holds a GitHub registration token: never logged, never in argv.
    pub script: String,
    /// `sh` (default), `bash`… or an absolute path: run as `<shell> <script file>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Run as this user instead of the daemon's own (root). myshoes' script expects root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl fmt::Debug for SetupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetupRequest")
            .field("script_bytes", &self.script.len())
            .field("shell", &self.shell)
            .field("user", &self.user)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupState {
    Running,
    /// Exited; `exit_code` and `signal` both `None` when the daemon restarted meanwhile and
    /// so could not collect the status.
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupStatus {
    pub state: SetupState,
    /// Also the script's process group id.
    pub pid: u32,
    pub started_at_ms: u64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub exited_at_ms: Option<u64>,
}

/// The `/setup` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupStarted {
    /// `false` when this runner's setup had already been started (the request is idempotent).
    pub started: bool,
    pub status: SetupStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid setup request: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("the setup of runner {other} is still running; a guest runs one runner's setup")]
    Busy { other: String },
    #[error("could not {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the setup script")]
    Spawn(#[source] std::io::Error),
}

impl SetupError {
    pub fn is_client_error(&self) -> bool {
        matches!(self, SetupError::Invalid(_) | SetupError::User(_))
    }
}

impl From<ExecError> for SetupError {
    fn from(error: ExecError) -> Self {
        match error {
            ExecError::Invalid(message) => SetupError::Invalid(message),
            ExecError::User(error) => SetupError::User(error),
            other => SetupError::Spawn(std::io::Error::other(other.to_string())),
        }
    }
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SetupError + 'a {
    move |source| SetupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// This guest's setup: at most one, keyed by the runner it was started for.
pub(crate) struct Setups {
    root: PathBuf,
    options: SetupOptions,
    current: Mutex<Option<(String, Arc<Mutex<SetupStatus>>)>>,
    /// Stops the watcher tasks (not the scripts) when the daemon stops.
    stop: CancellationToken,
}

impl Setups {
    pub(crate) fn new(root: &Path, options: SetupOptions, stop: CancellationToken) -> Setups {
        Setups {
            root: root.to_path_buf(),
            options,
            current: Mutex::new(None),
            stop,
        }
    }

    fn dir(&self, runner_id: &str) -> Result<PathBuf, SetupError> {
        if !shoes_vz_guest_config::is_valid_name(runner_id, 64) {
            return Err(SetupError::Invalid("the runner id cannot name a directory"));
        }
        let state =
            under_root(&self.root, &self.options.state_dir).map_err(|error| SetupError::Io {
                op: "use the state directory",
                path: error.path,
                source: error.source,
            })?;
        Ok(state.join(SETUP_DIR).join(runner_id))
    }

    /// The setup of `runner_id`, if one was started (by this process or an earlier one).
    pub(crate) fn status(&self, runner_id: &str) -> Option<SetupStatus> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match current.as_ref() {
            Some((id, status)) if id == runner_id => Some(
                status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
            _ => None,
        }
    }

    /// Finds a setup an earlier daemon process started for `runner_id`, and watches it.
    pub(crate) fn adopt(&self, runner_id: &str) {
        let Ok(dir) = self.dir(runner_id) else { return };
        let Some(mut status) = read_json::<SetupStatus>(&dir.join(STARTED_FILE)) else {
            return;
        };
        let exited = read_json::<SetupStatus>(&dir.join(EXITED_FILE));
        let alive = exited.is_none() && process_alive(status.pid);
        if let Some(exited) = exited {
            status = exited;
        } else if !alive {
            status.state = SetupState::Exited;
        }
        info!(runner_id, pid = status.pid, state = ?status.state, "found the setup an earlier runner-agent started");
        let shared = Arc::new(Mutex::new(status));
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((runner_id.to_owned(), Arc::clone(&shared)));
        if alive {
            tokio::spawn(watch_adopted(
                dir,
                shared,
                self.options.clone(),
                self.stop.clone(),
            ));
        }
    }

    /// Starts `request` for `runner_id`, or reports the setup already started for it.
    pub(crate) fn start(
        &self,
        runner_id: &str,
        request: SetupRequest,
    ) -> Result<SetupStarted, SetupError> {
        if request.script.is_empty() {
            return Err(SetupError::Invalid("script is empty"));
        }
        if request.script.len() > MAX_SCRIPT_BYTES {
            return Err(SetupError::Invalid("script is larger than 1 MiB"));
        }
        let shell = request.shell.clone().unwrap_or_else(|| "sh".to_owned());
        validate_shell(&shell)?;
        let run_as = match &request.user {
            Some(name) if !shoes_vz_guest_config::is_valid_name(name, 32) => {
                return Err(SetupError::Invalid("user is not a valid user name"))
            }
            Some(name) => Some(users::lookup(&self.root, name)?),
            None => None,
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, status)) = current.as_ref() {
            let status = status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if id == runner_id {
                return Ok(SetupStarted {
                    started: false,
                    status,
                });
            }
            if status.state == SetupState::Running {
                return Err(SetupError::Busy { other: id.clone() });
            }
        }
        let dir = self.dir(runner_id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error("create", &dir))?;
        let script_path = dir.join(SCRIPT_FILE);
        write_private(&script_path, request.script.as_bytes())?;
        let log_path = dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        let log_err = log.try_clone().map_err(io_error("open", &log_path))?;

        let home = match &run_as {
            Some(user) => under_root(&self.root, &user.home).ok(),
            None => under_root(&self.root, Path::new("/root"))
                .ok()
                .filter(|home| home.is_dir()),
        }
        .unwrap_or_else(|| self.root.clone());
        let mut command = tokio::process::Command::new(resolve_program(&shell));
        command
            .arg(&script_path)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", &home)
            .envs(self.options.extra_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own group: the host can end the whole tree, and it does not die with a
            // request or a daemon restart.
            .process_group(0);
        match &run_as {
            Some(user) => {
                command
                    .uid(user.uid)
                    .gid(user.gid)
                    .env("USER", &user.name)
                    .env("LOGNAME", &user.name);
            }
            None => {
                if let Ok(Some(me)) = nix::unistd::User::from_uid(nix::unistd::geteuid()) {
                    command.env("USER", &me.name).env("LOGNAME", &me.name);
                }
            }
        }
        let child = command.spawn().map_err(SetupError::Spawn)?;
        let status = SetupStatus {
            state: SetupState::Running,
            pid: child.id().unwrap_or_default(),
            started_at_ms: shoes_vz_guest_config::unix_ms_now(),
            exit_code: None,
            signal: None,
            exited_at_ms: None,
        };
        if let Err(error) = write_json(&dir.join(STARTED_FILE), &status) {
            warn!(error = %error, "could not record the setup's start; a restarted runner-agent will not find it");
        }
        info!(runner_id, pid = status.pid, "setup script started");
        let shared = Arc::new(Mutex::new(status.clone()));
        *current = Some((runner_id.to_owned(), Arc::clone(&shared)));
        tokio::spawn(watch_child(
            child,
            dir,
            shared,
            self.options.clone(),
            self.stop.clone(),
        ));
        Ok(SetupStarted {
            started: true,
            status,
        })
    }

    /// Up to `max_bytes` of the log from position `offset` of everything the script ever wrote
    /// (the oldest still kept when `offset` was rotated away), or its last `max_bytes` without
    /// an offset; and the position after what is returned.
    pub(crate) fn log_from(
        &self,
        runner_id: &str,
        offset: Option<u64>,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, u64), SetupError> {
        let dir = self.dir(runner_id)?;
        let read = |file: &str| -> Result<Vec<u8>, SetupError> {
            let path = dir.join(file);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(error) => Err(io_error("read", &path)(error)),
            }
        };
        let rotated = rotated_bytes(&dir);
        let old = read(OLD_LOG_FILE)?;
        let current = read(LOG_FILE)?;
        // log.1 holds the positions just before `rotated`; log those from it on.
        let kept_from = rotated.saturating_sub(old.len() as u64);
        let mut kept = old;
        kept.extend_from_slice(&current);
        let end = rotated + current.len() as u64;
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let start = match offset {
            Some(offset) => offset.clamp(kept_from, end),
            None => end.saturating_sub(max as u64).max(kept_from),
        };
        let skip = usize::try_from(start - kept_from).unwrap_or(usize::MAX);
        let data: Vec<u8> = kept.into_iter().skip(skip).take(max).collect();
        let next = start + data.len() as u64;
        Ok((data, next))
    }
}

/// Waits for the script, keeping its log bounded, and records how it ended.
async fn watch_child(
    mut child: tokio::process::Child,
    dir: PathBuf,
    status: Arc<Mutex<SetupStatus>>,
    options: SetupOptions,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(options.check_interval);
    let exit = loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            exit = child.wait() => break exit,
            _ = tick.tick() => cap_log(&dir, options.log_max_bytes),
        }
    };
    let (exit_code, signal) = match exit {
        Ok(exit) => (exit.code(), exit.signal()),
        Err(error) => {
            warn!(error = %error, "lost track of the setup script");
            (None, None)
        }
    };
    finish(&dir, &status, exit_code, signal);
}

/// Watches a script an earlier daemon process started: only its liveness can be seen.
async fn watch_adopted(
    dir: PathBuf,
    status: Arc<Mutex<SetupStatus>>,
    options: SetupOptions,
    stop: CancellationToken,
) {
    let pid = status.lock().unwrap_or_else(PoisonError::into_inner).pid;
    let mut tick = tokio::time::interval(options.check_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        cap_log(&dir, options.log_max_bytes);
        if !process_alive(pid) {
            finish(&dir, &status, None, None);
            return;
        }
    }
}

fn finish(dir: &Path, status: &Mutex<SetupStatus>, exit_code: Option<i32>, signal: Option<i32>) {
    let ended = {
        let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
        status.state = SetupState::Exited;
        status.exit_code = exit_code;
        status.signal = signal;
        status.exited_at_ms = Some(shoes_vz_guest_config::unix_ms_now());
        status.clone()
    };
    info!(pid = ended.pid, exit_code = ?exit_code, signal = ?signal, "setup script exited");
    if let Err(error) = write_json(&dir.join(EXITED_FILE), &ended) {
        warn!(error = %error, "could not record the setup's exit");
    }
    // The script holds a registration token; nothing needs it any more.
    let _ = std::fs::remove_file(dir.join(SCRIPT_FILE));
}

/// Copies the log to `log.1` and empties it once it passes `max_bytes`. The script appends
/// (O_APPEND), so its next write lands at the start of the emptied file; a line written
/// between the copy and the truncation may be lost, as with logrotate's copytruncate.
fn cap_log(dir: &Path, max_bytes: u64) {
    let log = dir.join(LOG_FILE);
    let Ok(meta) = std::fs::metadata(&log) else {
        return;
    };
    if meta.len() <= max_bytes {
        return;
    }
    let old = dir.join(OLD_LOG_FILE);
    let rotated = std::fs::copy(&log, &old).and_then(|copied| {
        OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|file| file.set_len(0))?;
        let total = rotated_bytes(dir) + copied;
        std::fs::write(dir.join(ROTATED_FILE), total.to_string())
    });
    if let Err(error) = rotated {
        warn!(error = %error, "could not rotate the setup log");
    }
}

/// Bytes of the log rotated away so far (0 before the first rotation).
fn rotated_bytes(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(ROTATED_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM still means it exists.
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    };
    exists && !is_zombie(pid)
}

/// A zombie has exited and only waits to be reaped by its parent.
#[cfg(target_os = "linux")]
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S ...`: comm may contain spaces and parentheses, the state follows the last `)`.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: u32) -> bool {
    false
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SetupError> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("write", path))?;
    file.write_all(bytes).map_err(io_error("write", path))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SetupError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|error| io_error("encode", path)(std::io::Error::other(error)))?;
    let temp = path.with_extension("tmp");
    write_private(&temp, &bytes)?;
    std::fs::rename(&temp, path).map_err(io_error("write", path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn setups(root: &Path, stop: &CancellationToken) -> Setups {
        Setups::new(
            root,
            SetupOptions {
                log_max_bytes: 1024,
                check_interval: Duration::from_millis(20),
                ..SetupOptions::default()
            },
            stop.clone(),
        )
    }

    fn request(script: &str) -> SetupRequest {
        SetupRequest {
            script: script.to_owned(),
            ..SetupRequest::default()
        }
    }

    async fn wait_exited(setups: &Setups, id: &str) -> Result<SetupStatus, String> {
        for _ in 0..500 {
            if let Some(status) = setups.status(id) {
                if status.state == SetupState::Exited {
                    return Ok(status);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!(
            "setup of {id} did not exit: {:?}",
            setups.status(id)
        ))
    }

    #[tokio::test]
    async fn a_script_runs_detached_once_and_its_exit_is_recorded() -> TestResult {
        let root = tempfile::tempdir()?;
        let stop = CancellationToken::new();
        let setups = setups(root.path(), &stop);
        let first = setups.start("runner-1", request("echo hello; exit 3"))?;
        assert!(first.started);
        // The same runner again: nothing runs twice.
        let again = setups.start("runner-1", request("echo twice"))?;
        assert!(!again.started);
        assert_eq!(again.status.pid, first.status.pid);
        let exited = wait_exited(&setups, "runner-1").await?;
        assert_eq!(exited.exit_code, Some(3));
        let dir = setups.dir("runner-1")?;
        assert_eq!(std::fs::read_to_string(dir.join(LOG_FILE))?, "hello\n");
        assert!(
            !dir.join(SCRIPT_FILE).exists(),
            "the script (token) stays behind"
        );
        let recorded: SetupStatus = read_json(&dir.join(EXITED_FILE)).ok_or("no exited.json")?;
        assert_eq!(recorded.exit_code, Some(3));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir)?.permissions());
        assert_eq!(mode & 0o777, 0o700);
        Ok(())
    }

    #[tokio::test]
    async fn the_log_stays_bounded_and_its_tail_is_readable() -> TestResult {
        let root = tempfile::tempdir()?;
        let stop = CancellationToken::new();
        let setups = setups(root.path(), &stop);
        // ~20 KiB in bursts, slower than the 20 ms size check.
        let script = "i=0; while [ $i -lt 40 ]; do head -c 512 /dev/zero | tr '\\0' x; echo; i=$((i+1)); sleep 0.01; done; echo last-line";
        setups.start("runner-2", request(script))?;
        wait_exited(&setups, "runner-2").await?;
        let dir = setups.dir("runner-2")?;
        let kept = std::fs::metadata(dir.join(LOG_FILE))?.len()
            + std::fs::metadata(dir.join(OLD_LOG_FILE)).map_or(0, |m| m.len());
        assert!(kept < 20 * 1024, "kept {kept} bytes");
        let (tail, _) = setups.log_from("runner-2", None, 64)?;
        assert!(String::from_utf8_lossy(&tail).ends_with("last-line\n"));
        assert!(tail.len() <= 64);
        // Reading by position: everything still kept, then only what comes after.
        let (all, end) = setups.log_from("runner-2", Some(0), 1 << 20)?;
        assert!(String::from_utf8_lossy(&all).ends_with("last-line\n"));
        assert!(
            end >= 20 * 1024,
            "positions count what was rotated away: {end}"
        );
        let (more, same_end) = setups.log_from("runner-2", Some(end), 1 << 20)?;
        assert!(more.is_empty());
        assert_eq!(same_end, end);
        let (last, _) = setups.log_from("runner-2", Some(end - 10), 4)?;
        assert_eq!(last.len(), 4);
        Ok(())
    }

    #[tokio::test]
    async fn a_restarted_daemon_finds_the_running_setup() -> TestResult {
        let root = tempfile::tempdir()?;
        let stop = CancellationToken::new();
        let first = setups(root.path(), &stop);
        let started = first.start("runner-3", request("sleep 0.3"))?;
        stop.cancel(); // the first daemon stops watching; the script goes on
        let stop = CancellationToken::new();
        let second = setups(root.path(), &stop);
        second.adopt("runner-3");
        let status = second.status("runner-3").ok_or("not adopted")?;
        assert_eq!(status.pid, started.status.pid);
        assert_eq!(status.state, SetupState::Running);
        assert!(!second.start("runner-3", request("echo again"))?.started);
        // The first daemon's child is a zombie until reaped: tokio reaps it in the background.
        let exited = wait_exited(&second, "runner-3").await?;
        assert_eq!(
            exited.exit_code, None,
            "an adopted script's status is unknown"
        );
        Ok(())
    }

    #[tokio::test]
    async fn bad_requests_are_refused_and_another_runner_waits_for_the_first() -> TestResult {
        let root = tempfile::tempdir()?;
        let stop = CancellationToken::new();
        let setups = setups(root.path(), &stop);
        for (bad, shell) in [
            ("", None),
            ("true", Some("bash -c")),
            ("true", Some("../sh")),
        ] {
            let mut req = request(bad);
            req.shell = shell.map(str::to_owned);
            assert!(matches!(
                setups.start("r", req),
                Err(SetupError::Invalid(_))
            ));
        }
        assert!(matches!(
            setups.start("../x", request("true")),
            Err(SetupError::Invalid(_))
        ));
        setups.start("runner-4", request("sleep 5"))?;
        assert!(matches!(
            setups.start("runner-5", request("true")),
            Err(SetupError::Busy { .. })
        ));
        if let Some(status) = setups.status("runner-4") {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(i32::try_from(status.pid)?),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let killed = wait_exited(&setups, "runner-4").await?;
        assert_eq!(killed.signal, Some(9));
        Ok(())
    }
}
