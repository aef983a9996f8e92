//! The simulated job: what "GitHub dispatching a job" means for the stand-in, and the
//! worker's result codes.
//!
//! A job is JSON like `{"name": "build", "seconds": 12, "result": "Succeeded"}`, dropped as
//! `<runner root>/_standin/job.json` (taken once, by renaming it) or given to the listener in
//! `SHOESVZ_STANDIN_AUTO_JOB`. With `"listener_exit": N` the listener exits with N instead of
//! running it (to exercise the service wrappers' restart rules).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a test or a benchmark drops the next job, relative to the runner root.
pub const JOB_FILE: &str = "_standin/job.json";
/// A job for the listener to run as soon as it listens (benchmarks that cannot drop files).
pub const AUTO_JOB_ENV: &str = "SHOESVZ_STANDIN_AUTO_JOB";
/// Longest job the stand-in accepts (a day), so a typo cannot park a runner for years.
const MAX_SECONDS: f64 = 86_400.0;

/// `TaskResult` (Sdk/DTWebApi/WebApi/TaskResult.cs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskResult {
    Succeeded = 0,
    SucceededWithIssues = 1,
    Failed = 2,
    Canceled = 3,
    Skipped = 4,
    Abandoned = 5,
}

impl TaskResult {
    const ALL: [TaskResult; 6] = [
        TaskResult::Succeeded,
        TaskResult::SucceededWithIssues,
        TaskResult::Failed,
        TaskResult::Canceled,
        TaskResult::Skipped,
        TaskResult::Abandoned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskResult::Succeeded => "Succeeded",
            TaskResult::SucceededWithIssues => "SucceededWithIssues",
            TaskResult::Failed => "Failed",
            TaskResult::Canceled => "Canceled",
            TaskResult::Skipped => "Skipped",
            TaskResult::Abandoned => "Abandoned",
        }
    }

    /// The worker's exit code: 100 + the result (TaskResultUtil.cs).
    pub fn return_code(self) -> u8 {
        100 + self as u8
    }

    /// A worker's exit code back to a result; anything else counts as Failed
    /// (TaskResultUtil.TranslateFromReturnCode).
    pub fn from_return_code(code: Option<i32>) -> TaskResult {
        code.and_then(|code| {
            Self::ALL
                .into_iter()
                .find(|r| i32::from(r.return_code()) == code)
        })
        .unwrap_or(TaskResult::Failed)
    }
}

impl std::fmt::Display for TaskResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's display name (`Running job: <name>`).
    pub name: String,
    /// How long the worker runs.
    #[serde(default)]
    pub seconds: f64,
    #[serde(default = "succeeded")]
    pub result: TaskResult,
    /// Exit the listener with this code instead of running the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_exit: Option<u8>,
}

fn succeeded() -> TaskResult {
    TaskResult::Succeeded
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the job is not valid JSON of the form {{\"name\": \"build\", \"seconds\": 12, \"result\": \"Succeeded\"}} (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("the job's name must be 1 to 256 characters on one line")]
    Name,
    #[error("the job's seconds must be between 0 and 86400")]
    Seconds,
}

impl JobSpec {
    pub fn parse(text: &str) -> Result<JobSpec, JobError> {
        let job: JobSpec = serde_json::from_str(text).map_err(|e| JobError::Json {
            line: e.line(),
            column: e.column(),
        })?;
        if job.name.is_empty() || job.name.chars().count() > 256 || job.name.contains(['\n', '\r'])
        {
            return Err(JobError::Name);
        }
        if !(0.0..=MAX_SECONDS).contains(&job.seconds) {
            return Err(JobError::Seconds);
        }
        Ok(job)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// Takes `<root>/_standin/job.json` if present: renames it to
/// `_standin/job.<pid>.<n>.taken.json` (so it runs once, even with two listeners) and reads
/// that. `Ok(None)`: no job waiting.
pub fn take_dropped_job(root: &Path, serial: u32) -> std::io::Result<Option<(PathBuf, String)>> {
    let dropped = root.join(JOB_FILE);
    let taken = root.join(format!(
        "_standin/job.{}.{serial}.taken.json",
        std::process::id()
    ));
    match std::fs::rename(&dropped, &taken) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let text = std::fs::read_to_string(&taken)?;
    Ok(Some((taken, text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jobs_with_defaults_and_rejects_nonsense() -> Result<(), JobError> {
        let job = JobSpec::parse(r#"{"name": "build", "seconds": 12, "result": "Succeeded"}"#)?;
        assert_eq!(job.name, "build");
        assert_eq!(job.duration(), Duration::from_secs(12));
        assert_eq!(job.result, TaskResult::Succeeded);
        assert_eq!(job.listener_exit, None);

        let short = JobSpec::parse(r#"{"name": "lint", "seconds": 0.25, "result": "Failed"}"#)?;
        assert_eq!(short.duration(), Duration::from_millis(250));
        assert_eq!(short.result, TaskResult::Failed);

        let exit = JobSpec::parse(r#"{"name": "x", "listener_exit": 2}"#)?;
        assert_eq!(exit.listener_exit, Some(2));
        assert_eq!(exit.result, TaskResult::Succeeded);

        for bad in [
            "",
            "{}",
            r#"{"name": "x", "result": "Great"}"#,
            r#"{"name": "x", "secs": 1}"#,
            r#"{"name": "", "seconds": 1}"#,
            r#"{"name": "x", "seconds": -1}"#,
            r#"{"name": "x", "listener_exit": 256}"#,
            r#"{"name": "a\nb"}"#,
        ] {
            assert!(JobSpec::parse(bad).is_err(), "accepted {bad}");
        }
        Ok(())
    }

    #[test]
    fn results_map_to_worker_exit_codes_and_back() {
        assert_eq!(TaskResult::Succeeded.return_code(), 100);
        assert_eq!(TaskResult::Failed.return_code(), 102);
        assert_eq!(TaskResult::Canceled.return_code(), 103);
        for result in TaskResult::ALL {
            assert_eq!(
                TaskResult::from_return_code(Some(i32::from(result.return_code()))),
                result
            );
        }
        assert_eq!(TaskResult::from_return_code(Some(0)), TaskResult::Failed);
        assert_eq!(TaskResult::from_return_code(Some(106)), TaskResult::Failed);
        assert_eq!(TaskResult::from_return_code(None), TaskResult::Failed);
    }

    #[test]
    fn a_dropped_job_is_taken_once() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        assert!(take_dropped_job(root.path(), 0)?.is_none());
        std::fs::create_dir_all(root.path().join("_standin"))?;
        std::fs::write(root.path().join(JOB_FILE), r#"{"name": "build"}"#)?;
        let (taken, text) = take_dropped_job(root.path(), 1)?.expect("taken");
        assert!(taken.is_file());
        assert_eq!(text, r#"{"name": "build"}"#);
        assert!(!root.path().join(JOB_FILE).exists());
        assert!(take_dropped_job(root.path(), 2)?.is_none());
        Ok(())
    }
}
