//! Helpers for running a laid-out stand-in tree the way myshoes runs a runner: as an
//! unprivileged user (uid/gid 65534 through `setpriv` when the tests run as root, as the
//! tests' own user otherwise), with output captured to files outside the tree.
#![allow(dead_code)]

use shoes_vz_standin_runner::{layout, LayoutOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const UNPRIVILEGED: u32 = 65534;
pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const TOKEN: &str = "AREGISTRATIONTOKEN1234567890";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A prerequisite is missing: skip loudly, or fail when `CI` is set. (Written here in one
/// function: this branch has no shared test-support crate.)
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so this test must run)");
    }
    eprintln!("SKIPPED: {reason}");
}

pub fn setpriv_missing() -> bool {
    is_root()
        && !std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("setpriv").is_file())
        })
}

pub struct Tree {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Console output of started processes, outside the tree.
    pub logs: PathBuf,
}

impl Tree {
    pub fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        // The unprivileged user must reach the tree.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let root = dir.path().join("runner");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs");
        let options = LayoutOptions {
            owner: is_root().then_some((UNPRIVILEGED, UNPRIVILEGED)),
            ..LayoutOptions::default()
        };
        layout(
            &root,
            Path::new(env!("CARGO_BIN_EXE_shoes-vz-standin-runner")),
            &options,
        )
        .expect("layout");
        Tree {
            _dir: dir,
            root,
            logs,
        }
    }

    /// `program` with `args`, run in the root as the unprivileged user, with HOME set.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = if is_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={UNPRIVILEGED}"))
                .arg(format!("--regid={UNPRIVILEGED}"))
                .args(["--clear-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        // A clean environment, as a service would have (cargo's LD_LIBRARY_PATH would end up
        // in .env).
        command
            .args(args)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.root)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        command
    }

    /// Runs `./config.sh` with myshoes' arguments; returns (status, stdout, stderr).
    pub fn configure(&self) -> (ExitStatus, String, String) {
        let output = self
            .command(
                "./config.sh",
                &[
                    "--unattended",
                    "--url",
                    "https://github.com/example-org",
                    "--token",
                    TOKEN,
                    "--name",
                    "myshoes-test",
                    "--labels",
                    "myshoes,dependabot",
                    "--ephemeral",
                ],
            )
            .output()
            .expect("config.sh runs");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Starts `command` with stdout and stderr into `logs/<name>.out`.
    pub fn spawn(&self, mut command: Command, name: &str) -> Child {
        let out = std::fs::File::create(self.logs.join(format!("{name}.out"))).expect("log");
        let err = out.try_clone().expect("log");
        command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn")
    }

    pub fn output_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.out"))).unwrap_or_default()
    }

    /// Drops a job for the listener (as the tree's owner would).
    pub fn drop_job(&self, json: &str) {
        let dir = self.root.join("_standin");
        std::fs::create_dir_all(&dir).expect("_standin");
        let staged = dir.join(".job.json.new");
        std::fs::write(&staged, json).expect("job");
        if is_root() {
            for path in [&dir, &staged] {
                std::os::unix::fs::chown(path, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
                    .expect("chown");
            }
        }
        std::fs::rename(&staged, dir.join("job.json")).expect("drop");
    }

    /// All `_diag/Runner_*.log` text, oldest file first.
    pub fn runner_logs(&self) -> String {
        self.diag_logs("Runner_")
    }

    pub fn diag_logs(&self, prefix: &str) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.root.join("_diag"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Fails if `needle` is in any file under the tree.
    pub fn assert_nowhere(&self, needle: &str) {
        fn walk(dir: &Path, needle: &[u8]) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("stat");
                if meta.is_dir() {
                    walk(&path, needle);
                } else if meta.is_file() {
                    let bytes = std::fs::read(&path).expect("read");
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle),
                        "{} holds the secret",
                        path.display()
                    );
                }
            }
        }
        walk(&self.root, needle.as_bytes());
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit; kills it and fails after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        signal,
    )
    .expect("signal");
}

/// The position of each needle in `text`, in order; fails if one is missing or out of order.
pub fn assert_in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (or out of order) in:\n{text}"),
        }
    }
}
