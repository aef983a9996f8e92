//! Installing a runner's identity from its [`GuestConfig`]: the key the agent logs in with,
//! the guest's SSH host key (and an optional command to hand it to another sshd, such as
//! dropbear), and the clock.

pub mod clock;
pub mod dropbear;
pub mod files;
pub mod users;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoes_vz_guest_config::GuestConfig;
use tracing::{debug, debug_span, info, Instrument};

use self::clock::{ClockChange, ClockError};
use self::files::{ensure_dir, under_root, write_atomic, FileError, Owner};
use self::users::UserError;

/// Where OpenSSH (Linux and macOS) keeps its Ed25519 host key.
pub const DEFAULT_HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key";
const POST_CMD_TIMEOUT: Duration = Duration::from_secs(60);
const POST_CMD_OUTPUT_IN_ERROR: usize = 1024;

/// Where and how to install.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    /// Prefix for every path written (`/` in a real guest).
    pub root: PathBuf,
    /// Absolute paths (inside `root`) that receive the host private key; each also gets
    /// `<path>.pub`.
    pub host_key_paths: Vec<PathBuf>,
    /// Absolute paths (inside `root`) that receive the host key in dropbear's own format, so
    /// a dropbear guest needs no conversion step.
    pub dropbear_host_key_paths: Vec<PathBuf>,
    /// Run with `/bin/sh -c` after the host key is written, with `SHOES_VZ_HOST_KEY` (the
    /// first written key's real path), `SHOES_VZ_HOST_PUBLIC_KEY` and `SHOES_VZ_ROOT` set.
    pub host_key_post_cmd: Option<String>,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            root: PathBuf::from("/"),
            host_key_paths: vec![PathBuf::from(DEFAULT_HOST_KEY_PATH)],
            dropbear_host_key_paths: Vec::new(),
            host_key_post_cmd: None,
        }
    }
}

/// What was installed, with real paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallReport {
    pub user: String,
    pub authorized_keys: PathBuf,
    pub host_keys: Vec<PathBuf>,
    pub post_cmd_ran: bool,
    pub clock: ClockChange,
    /// How long each step took (absent from older runner-agents' reports).
    #[serde(default)]
    pub timings: InstallTimings,
}

/// Per-step durations of an install, in microseconds: where a warm restore's refresh goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallTimings {
    /// Every file below, the user lookup included.
    pub files_us: u64,
    /// Looking the user up.
    pub user_us: u64,
    /// `~/.ssh` and `authorized_keys`.
    pub authorized_keys_us: u64,
    /// Every host key file.
    pub host_keys_us: u64,
    /// `--host-key-post-cmd` (0 when there is none).
    pub post_cmd_us: u64,
    /// Reading and, if behind, stepping the clock.
    pub clock_us: u64,
}

pub(crate) fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the home directory {path} of user {user} does not exist")]
    HomeMissing { user: String, path: PathBuf },
    #[error("could not start the host key command (--host-key-post-cmd)")]
    PostCmdSpawn(#[source] std::io::Error),
    #[error(
        "the host key command (--host-key-post-cmd) did not finish within {POST_CMD_TIMEOUT:?}"
    )]
    PostCmdTimeout,
    #[error("the host key command (--host-key-post-cmd) failed with {status}: {output}")]
    PostCmdFailed { status: String, output: String },
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error(transparent)]
    DropbearKey(#[from] dropbear::DropbearKeyError),
    #[error("the identity installer stopped unexpectedly")]
    Join(#[source] tokio::task::JoinError),
}

/// Installs everything in `config`; the first failure stops it.
pub async fn install(
    config: &GuestConfig,
    opts: &IdentityOptions,
) -> Result<InstallReport, IdentityError> {
    let mut timings = InstallTimings::default();
    let shared = Arc::new((config.clone(), opts.clone()));
    let step = Instant::now();
    let files = {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || install_files(&shared.0, &shared.1))
            .instrument(debug_span!("identity_step", step = "files"))
            .await
            .map_err(IdentityError::Join)??
    };
    timings.files_us = micros(step.elapsed());
    timings.user_us = files.user_us;
    timings.authorized_keys_us = files.authorized_keys_us;
    timings.host_keys_us = files.host_keys_us;
    let mut post_cmd_ran = false;
    if let (Some(cmd), Some(first)) = (&opts.host_key_post_cmd, files.host_keys.first()) {
        let step = Instant::now();
        run_post_cmd(cmd, first, &opts.root)
            .instrument(debug_span!("identity_step", step = "post_cmd"))
            .await?;
        timings.post_cmd_us = micros(step.elapsed());
        post_cmd_ran = true;
    }
    let step = Instant::now();
    let clock = debug_span!("identity_step", step = "clock")
        .in_scope(|| clock::adjust(&opts.root, config.host_time_ms))?;
    timings.clock_us = micros(step.elapsed());
    let report = InstallReport {
        user: config.ssh_user.clone(),
        authorized_keys: files.authorized_keys,
        host_keys: files.host_keys,
        post_cmd_ran,
        clock,
        timings,
    };
    info!(runner_id = %config.runner_id, user = %report.user, authorized_keys = %report.authorized_keys.display(), host_keys = ?report.host_keys, clock = ?report.clock, "installed the runner's identity");
    debug!(
        files_us = timings.files_us,
        user_us = timings.user_us,
        authorized_keys_us = timings.authorized_keys_us,
        host_keys_us = timings.host_keys_us,
        post_cmd_us = timings.post_cmd_us,
        clock_us = timings.clock_us,
        "identity install steps"
    );
    Ok(report)
}

struct InstalledFiles {
    authorized_keys: PathBuf,
    host_keys: Vec<PathBuf>,
    user_us: u64,
    authorized_keys_us: u64,
    host_keys_us: u64,
}

fn install_files(
    config: &GuestConfig,
    opts: &IdentityOptions,
) -> Result<InstalledFiles, IdentityError> {
    let mut step = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let took = micros(now.duration_since(step));
        step = now;
        took
    };
    let user = users::lookup(&opts.root, &config.ssh_user)?;
    let user_us = lap();
    let home = under_root(&opts.root, &user.home)?;
    if !home.is_dir() {
        return Err(IdentityError::HomeMissing {
            user: user.name,
            path: home,
        });
    }
    let owner = Owner {
        uid: user.uid,
        gid: user.gid,
    };
    let ssh_dir = home.join(".ssh");
    ensure_dir(&ssh_dir, 0o700, Some(owner))?;
    let authorized_keys = ssh_dir.join("authorized_keys");
    // Only this runner's key: whatever the template had is replaced.
    let line = format!("{}\n", config.ssh_authorized_key);
    write_atomic(&authorized_keys, line.as_bytes(), 0o600, Some(owner))?;
    let authorized_keys_us = lap();

    let mut host_keys = Vec::new();
    for path in &opts.host_key_paths {
        let path = under_root(&opts.root, path)?;
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(|source| FileError {
                    op: "create directory",
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        let private = config.ssh_host_key.to_file_contents();
        write_atomic(&path, private.as_bytes(), 0o600, None)?;
        let public = format!("{}\n", config.ssh_host_public_key);
        write_atomic(&public_key_path(&path), public.as_bytes(), 0o644, None)?;
        host_keys.push(path);
    }
    for path in &opts.dropbear_host_key_paths {
        let path = under_root(&opts.root, path)?;
        let key = dropbear::from_openssh(config.ssh_host_key.to_file_contents().as_str())?;
        write_atomic(&path, &key, 0o600, None)?;
        host_keys.push(path);
    }
    Ok(InstalledFiles {
        authorized_keys,
        host_keys,
        user_us,
        authorized_keys_us,
        host_keys_us: lap(),
    })
}

fn public_key_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

async fn run_post_cmd(cmd: &str, host_key: &Path, root: &Path) -> Result<(), IdentityError> {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("SHOES_VZ_HOST_KEY", host_key)
        .env("SHOES_VZ_HOST_PUBLIC_KEY", public_key_path(host_key))
        .env("SHOES_VZ_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(IdentityError::PostCmdSpawn)?;
    let output = tokio::time::timeout(POST_CMD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| IdentityError::PostCmdTimeout)?
        .map_err(IdentityError::PostCmdSpawn)?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    debug!(status = %output.status, output = %text.trim(), "host key command finished");
    if !output.status.success() {
        let start = text.len().saturating_sub(POST_CMD_OUTPUT_IN_ERROR);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        return Err(IdentityError::PostCmdFailed {
            status: output.status.to_string(),
            output: text[start..].trim().to_owned(),
        });
    }
    Ok(())
}
