//! The GitHub Actions runner's real state, from its directory and its processes.
//!
//! Observations: `.runner` exists (the runner is configured), the listener and worker
//! processes, and the newest event in the newest `_diag/Runner_*.log`. [`decide()`] turns
//! them into a [`RunnerState`]; see its table.

pub mod decide;
pub mod diag;
pub mod dotrunner;
pub mod procs;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use decide::{decide, LastEvent, RunnerState};
pub use diag::DiagEvent;
pub use dotrunner::DotRunner;
pub use procs::RunnerProcesses;

/// What `/status` reports about the runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerStatus {
    pub state: RunnerState,
    /// `.runner` exists.
    pub configured: bool,
    /// `.runner`'s contents, when it parses.
    pub runner: Option<DotRunner>,
    pub listener_pid: Option<u32>,
    pub worker_pid: Option<u32>,
    pub last_event: Option<DiagEvent>,
    /// File name of the newest `_diag/Runner_*.log`.
    pub diag_log: Option<String>,
    /// Things that could not be read; the state is decided without them.
    pub problems: Vec<String>,
}

/// What the runner directory says (everything but the processes).
#[derive(Debug, Clone, Default)]
pub struct RunnerFiles {
    pub configured: bool,
    pub runner: Option<DotRunner>,
    pub last_event: Option<DiagEvent>,
    pub diag_log: Option<String>,
    pub problems: Vec<String>,
}

/// Reads `.runner` and the newest diag log under `runner_dir`.
pub fn read_files(runner_dir: &Path) -> RunnerFiles {
    let mut files = RunnerFiles::default();
    let dot_runner = runner_dir.join(".runner");
    match std::fs::metadata(&dot_runner) {
        Ok(meta) if meta.len() > dotrunner::MAX_DOT_RUNNER_BYTES => {
            files.configured = true;
            files
                .problems
                .push(".runner is too large to be the runner's settings".to_owned());
        }
        Ok(_) => {
            files.configured = true;
            match std::fs::read(&dot_runner) {
                Ok(bytes) => match dotrunner::parse(&String::from_utf8_lossy(&bytes)) {
                    Ok(runner) => files.runner = Some(runner),
                    Err(err) => files.problems.push(err.to_string()),
                },
                Err(err) => files
                    .problems
                    .push(format!("could not read .runner: {err}")),
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => files
            .problems
            .push(format!("could not stat .runner: {err}")),
    }
    let diag_dir = runner_dir.join("_diag");
    match diag::runner_logs(&diag_dir) {
        Ok(logs) => {
            files.diag_log = logs
                .first()
                .and_then(|log| log.file_name())
                .map(|name| name.to_string_lossy().into_owned());
            match diag::newest_event(&logs) {
                Ok(event) => files.last_event = event,
                Err(err) => files
                    .problems
                    .push(format!("could not read {}: {err}", diag_dir.display())),
            }
        }
        Err(err) => files.problems.push(format!("could not list _diag: {err}")),
    }
    files
}

/// Combines the two halves of the observation.
pub fn assemble(files: RunnerFiles, processes: RunnerProcesses) -> RunnerStatus {
    let last = files
        .last_event
        .as_ref()
        .map_or(LastEvent::None, DiagEvent::kind);
    RunnerStatus {
        state: decide(
            files.configured,
            processes.listener_pid.is_some(),
            processes.worker_pid.is_some(),
            last,
        ),
        configured: files.configured,
        runner: files.runner,
        listener_pid: processes.listener_pid,
        worker_pid: processes.worker_pid,
        last_event: files.last_event,
        diag_log: files.diag_log,
        problems: files.problems,
    }
}

/// Observes the runner in `runner_dir` now.
pub async fn gather(runner_dir: &Path) -> RunnerStatus {
    let dir = runner_dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || read_files(&dir));
    let processes = procs::scan(runner_dir).await;
    let mut files = files.await.unwrap_or_else(|err| RunnerFiles {
        problems: vec![format!("reading the runner directory failed: {err}")],
        ..RunnerFiles::default()
    });
    let processes = processes.unwrap_or_else(|err| {
        files
            .problems
            .push(format!("could not list processes: {err}"));
        RunnerProcesses::default()
    });
    assemble(files, processes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runner_dir_that_does_not_exist_is_offline_without_problems() {
        let status = assemble(
            read_files(Path::new("/nonexistent/actions-runner")),
            RunnerProcesses::default(),
        );
        assert_eq!(status.state, RunnerState::Offline);
        assert!(!status.configured);
        assert!(status.problems.is_empty(), "{:?}", status.problems);
    }

    #[test]
    fn an_unparseable_dot_runner_still_counts_as_configured() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".runner"), "\u{feff}{ broken")?;
        let files = read_files(dir.path());
        assert!(files.configured);
        assert!(files.runner.is_none());
        assert_eq!(files.problems.len(), 1, "{:?}", files.problems);
        Ok(())
    }
}
