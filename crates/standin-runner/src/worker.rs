//! `bin/Runner.Worker spawnclient <pipeOut> <pipeIn>`: runs one simulated job.
//!
//! It traces to its own `_diag/Worker_*.log` (page size `WORKER_LOGSIZE`), runs for the
//! job's `seconds`, and exits with 100 + the job's result (TaskResultUtil.cs). SIGINT or
//! SIGTERM cancels it: exit 103 (Canceled). Upstream's worker gets the job over the pipes
//! and runs its steps; the stand-in gets it from the listener in `SHOESVZ_STANDIN_WORKER_JOB`
//! and runs nothing.

use crate::diag::{self, DiagLog, Level};
use crate::job::{JobSpec, TaskResult};
use crate::record::{self, ProcessRecord};
use crate::signals::StopSignal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The job, as JSON, from the listener to its worker.
pub const WORKER_JOB_ENV: &str = "SHOESVZ_STANDIN_WORKER_JOB";
const SOURCE: &str = "Worker";

pub fn main(root: &Path, argv: &[String]) -> u8 {
    let args = argv.get(1..).unwrap_or_default();
    if args.len() != 3 || args[0] != "spawnclient" {
        eprintln!(
            "Runner.Worker (shoes-vz stand-in) runs as `Runner.Worker spawnclient <pipeOut> <pipeIn>`, started by Runner.Listener for a job"
        );
        return 1;
    }
    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(error) => {
            eprintln!("Runner.Worker: cannot handle signals: {error}");
            return 1;
        }
    };
    let page_bytes = diag::page_bytes_from_env("WORKER_LOGSIZE");
    let mut log = match DiagLog::open(&root.join("_diag"), "Worker", page_bytes) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("Runner.Worker: cannot write its trace: {error}");
            return 1;
        }
    };
    let mut trace = |level: Level, message: &str| {
        // Tracing is best effort, as upstream's is.
        let _ = log.trace(level, SOURCE, message);
    };
    let record = ProcessRecord::current("Runner.Worker", argv);
    trace(
        Level::Info,
        &format!(
            "Runner.Worker {} (shoes-vz stand-in), pid {}, uid {}",
            crate::RUNNER_VERSION,
            record.pid,
            record.uid
        ),
    );
    if let Err(error) = record::append(root, &record) {
        trace(
            Level::Warning,
            &format!("cannot record this process: {error}"),
        );
    }
    let job = match std::env::var(WORKER_JOB_ENV)
        .map_err(|e| e.to_string())
        .and_then(|text| JobSpec::parse(&text).map_err(|e| e.to_string()))
    {
        Ok(job) => job,
        Err(error) => {
            trace(Level::Error, &format!("no job message: {error}"));
            return 1;
        }
    };
    trace(
        Level::Info,
        &format!(
            "Job message received: '{}', runs {} s, ends {}",
            job.name, job.seconds, job.result
        ),
    );
    let deadline = Instant::now() + job.duration();
    loop {
        if stop.received().is_some() {
            trace(Level::Info, "Job cancelled by a signal");
            return TaskResult::Canceled.return_code();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    trace(
        Level::Info,
        &format!("Job '{}' completed with result: {}", job.name, job.result),
    );
    job.result.return_code()
}
