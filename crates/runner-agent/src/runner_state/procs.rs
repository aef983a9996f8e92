//! Finding the runner's `Runner.Listener` and `Runner.Worker` processes.
//!
//! Linux reads `/proc/<pid>/cmdline`; macOS parses `ps -axo pid=,command=`. A process counts
//! when its program is named `Runner.Listener`/`Runner.Worker` and, if given as an absolute
//! path (the runner always starts them that way), lies inside the runner directory. Paths are
//! compared as written and resolved (realpath), since the same directory has several names:
//! on macOS `/tmp` is a symlink to `/private/tmp`, and node's `__dirname` (from which myshoes'
//! RunnerService.js starts the listener) is the resolved one.

use std::path::{Path, PathBuf};
#[cfg(target_os = "macos")]
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerProcess {
    Listener,
    Worker,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerProcesses {
    pub listener_pid: Option<u32>,
    pub worker_pid: Option<u32>,
}

/// The runner directory as configured and as resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerDir {
    pub given: PathBuf,
    /// `given` with symlinks resolved; `given` itself when it does not exist (yet).
    pub resolved: PathBuf,
}

impl RunnerDir {
    pub fn new(given: &Path) -> RunnerDir {
        RunnerDir {
            given: given.to_path_buf(),
            resolved: std::fs::canonicalize(given).unwrap_or_else(|_| given.to_path_buf()),
        }
    }

    /// Whether `program` (absolute) lies inside the directory under either of its names, or
    /// does once resolved.
    fn contains(&self, program: &Path) -> bool {
        let inside =
            |path: &Path| path.starts_with(&self.given) || path.starts_with(&self.resolved);
        inside(program) || std::fs::canonicalize(program).is_ok_and(|real| inside(&real))
    }
}

impl RunnerProcesses {
    /// Adds what one process is; `(pid, argv0)` pairs may come in any order, the lowest pid
    /// of each kind wins so the answer does not flicker.
    pub fn record(&mut self, pid: u32, argv0: &str, runner_dir: &RunnerDir) {
        let slot = match classify(argv0, runner_dir) {
            Some(RunnerProcess::Listener) => &mut self.listener_pid,
            Some(RunnerProcess::Worker) => &mut self.worker_pid,
            None => return,
        };
        if slot.is_none_or(|old| pid < old) {
            *slot = Some(pid);
        }
    }
}

/// What program `argv0` is, if it is one of the runner's.
pub fn classify(argv0: &str, runner_dir: &RunnerDir) -> Option<RunnerProcess> {
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    let kind = match name {
        "Runner.Listener" => RunnerProcess::Listener,
        "Runner.Worker" => RunnerProcess::Worker,
        _ => return None,
    };
    if argv0.starts_with('/') && !runner_dir.contains(Path::new(argv0)) {
        return None;
    }
    Some(kind)
}

/// `argv[0]` from a `/proc/<pid>/cmdline` (NUL-separated arguments).
pub fn argv0_from_cmdline(cmdline: &[u8]) -> Option<String> {
    let first = cmdline.split(|b| *b == 0).next()?;
    if first.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(first).into_owned())
}

/// `(pid, command)` rows of `ps -axo pid=,command=`.
pub fn parse_ps(output: &str) -> Vec<(u32, String)> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let (pid, command) = line.split_once(char::is_whitespace)?;
            Some((pid.parse().ok()?, command.trim().to_owned()))
        })
        .collect()
}

/// The program part of a `ps` command line, which joins arguments with spaces: a path inside
/// `runner_dir` may itself contain spaces.
pub fn argv0_from_ps_command<'a>(command: &'a str, runner_dir: &Path) -> &'a str {
    let dir = runner_dir.to_string_lossy();
    let skip = match command.strip_prefix(dir.as_ref()) {
        Some(rest) if rest.starts_with('/') => dir.len(),
        _ => 0,
    };
    match command[skip..].find(' ') {
        Some(end) => &command[..skip + end],
        None => command,
    }
}

/// Scans a Linux `/proc`-style directory.
pub fn scan_proc(proc_dir: &Path, runner_dir: &Path) -> std::io::Result<RunnerProcesses> {
    let runner_dir = RunnerDir::new(runner_dir);
    let mut found = RunnerProcesses::default();
    for entry in std::fs::read_dir(proc_dir)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look; a vanished one is simply not running.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if let Some(argv0) = argv0_from_cmdline(&cmdline) {
            found.record(pid, &argv0, &runner_dir);
        }
    }
    Ok(found)
}

#[cfg(target_os = "macos")]
const PS_TIMEOUT: Duration = Duration::from_secs(10);

/// The runner's processes on this machine.
pub async fn scan(runner_dir: &Path) -> std::io::Result<RunnerProcesses> {
    #[cfg(target_os = "linux")]
    {
        let runner_dir = runner_dir.to_path_buf();
        tokio::task::spawn_blocking(move || scan_proc(Path::new("/proc"), &runner_dir))
            .await
            .map_err(std::io::Error::other)?
    }
    #[cfg(target_os = "macos")]
    {
        let output = tokio::time::timeout(
            PS_TIMEOUT,
            tokio::process::Command::new("/bin/ps")
                .args(["-axo", "pid=,command="])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "ps did not answer"))??;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "ps failed with {}",
                output.status
            )));
        }
        let dir = RunnerDir::new(runner_dir);
        let mut found = RunnerProcesses::default();
        for (pid, command) in parse_ps(&String::from_utf8_lossy(&output.stdout)) {
            // ps shows the path the program was started with: either name of the directory.
            let argv0 = match argv0_from_ps_command(&command, &dir.resolved) {
                full if full != command => full,
                _ => argv0_from_ps_command(&command, &dir.given),
            };
            found.record(pid, argv0, &dir);
        }
        Ok(found)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = runner_dir;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "process scanning is implemented for Linux and macOS only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/Users/runner/actions-runner";

    fn dir() -> RunnerDir {
        RunnerDir::new(Path::new(DIR))
    }

    #[test]
    fn classify_matches_names_inside_the_runner_dir() {
        let dir = &dir();
        let cases = [
            (
                "/Users/runner/actions-runner/bin/Runner.Listener",
                Some(RunnerProcess::Listener),
            ),
            (
                "/Users/runner/actions-runner/bin/Runner.Worker",
                Some(RunnerProcess::Worker),
            ),
            ("./bin/Runner.Listener", Some(RunnerProcess::Listener)),
            ("Runner.Worker", Some(RunnerProcess::Worker)),
            ("/opt/other-runner/bin/Runner.Listener", None),
            ("/Users/runner/actions-runner-2/bin/Runner.Listener", None),
            ("/Users/runner/actions-runner/bin/Runner.PluginHost", None),
            ("/bin/sh", None),
            ("", None),
        ];
        for (argv0, expected) in cases {
            assert_eq!(classify(argv0, dir), expected, "{argv0}");
        }
    }

    #[test]
    fn cmdline_argv0_is_the_first_nul_separated_field() {
        assert_eq!(
            argv0_from_cmdline(b"/a/bin/Runner.Listener\0run\0--startuptype\0service\0").as_deref(),
            Some("/a/bin/Runner.Listener")
        );
        assert_eq!(argv0_from_cmdline(b""), None);
        assert_eq!(argv0_from_cmdline(b"\0"), None);
    }

    #[test]
    fn ps_output_is_parsed_and_paths_with_spaces_survive() {
        let output = "\
    1 /sbin/launchd
  312 /usr/libexec/sshd-keygen-wrapper
 4242 /Users/runner/actions-runner/bin/Runner.Listener run --startuptype service
 4250 /Users/runner/actions-runner/bin/Runner.Worker spawnclient 120 123
 5000 /Users/other user/actions-runner/bin/Runner.Listener run
garbage line
";
        let rows = parse_ps(output);
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[2],
            (
                4242,
                "/Users/runner/actions-runner/bin/Runner.Listener run --startuptype service"
                    .to_owned()
            )
        );

        let mut found = RunnerProcesses::default();
        for (pid, command) in &rows {
            found.record(*pid, argv0_from_ps_command(command, Path::new(DIR)), &dir());
        }
        assert_eq!(
            found,
            RunnerProcesses {
                listener_pid: Some(4242),
                worker_pid: Some(4250)
            }
        );

        let spaced = Path::new("/Users/other user/actions-runner");
        assert_eq!(
            argv0_from_ps_command(
                "/Users/other user/actions-runner/bin/Runner.Listener run",
                spaced
            ),
            "/Users/other user/actions-runner/bin/Runner.Listener"
        );
        assert_eq!(
            argv0_from_ps_command("/sbin/launchd", spaced),
            "/sbin/launchd"
        );
    }

    #[test]
    fn a_runner_dir_reached_through_a_symlink_matches_either_name() -> std::io::Result<()> {
        // macOS: /tmp -> /private/tmp, and node starts the listener from the resolved path.
        let base = tempfile::tempdir()?;
        let real = base.path().join("private-tmp");
        std::fs::create_dir_all(real.join("runner/bin"))?;
        std::fs::write(real.join("runner/bin/Runner.Listener"), b"")?;
        let link = base.path().join("tmp");
        std::os::unix::fs::symlink(&real, &link)?;
        let resolved_program = std::fs::canonicalize(real.join("runner/bin/Runner.Listener"))?;
        let linked_program = link.join("runner/bin/Runner.Listener");
        for configured in [link.join("runner"), real.join("runner")] {
            let dir = RunnerDir::new(&configured);
            for program in [&resolved_program, &linked_program] {
                assert_eq!(
                    classify(&program.to_string_lossy(), &dir),
                    Some(RunnerProcess::Listener),
                    "{} in {}",
                    program.display(),
                    configured.display()
                );
            }
        }
        let elsewhere = base.path().join("other/bin/Runner.Listener");
        assert_eq!(
            classify(
                &elsewhere.to_string_lossy(),
                &RunnerDir::new(&link.join("runner"))
            ),
            None
        );
        Ok(())
    }

    #[test]
    fn fake_proc_dir_is_scanned() -> std::io::Result<()> {
        let proc_dir = tempfile::tempdir()?;
        let add = |pid: &str, cmdline: &[u8]| -> std::io::Result<()> {
            std::fs::create_dir_all(proc_dir.path().join(pid))?;
            std::fs::write(proc_dir.path().join(pid).join("cmdline"), cmdline)
        };
        add("1", b"/sbin/init\0")?;
        add(
            "900",
            b"/Users/runner/actions-runner/bin/Runner.Listener\0run\0",
        )?;
        add(
            "77",
            b"/Users/runner/actions-runner/bin/Runner.Listener\0run\0",
        )?;
        add("901", b"")?; // a zombie
        std::fs::create_dir_all(proc_dir.path().join("self"))?;
        let found = scan_proc(proc_dir.path(), Path::new(DIR))?;
        assert_eq!(
            found,
            RunnerProcesses {
                listener_pid: Some(77),
                worker_pid: None
            }
        );
        Ok(())
    }
}
