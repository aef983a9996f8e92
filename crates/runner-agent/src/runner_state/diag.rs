//! The runner's `_diag/Runner_*.log`: which file is newest, and its newest job event.
//!
//! The listener copies every console line into its trace as
//! `[2026-11-27 08:00:00Z INFO Terminal] WRITE LINE: 2026-11-27 08:00:00Z: Listening for Jobs`;
//! the three console lines that matter are `Listening for Jobs`, `Running job: <name>` and
//! `Job <name> completed with result: <result>`. Each listener process writes a new file
//! named `Runner_<yyyyMMdd-HHmmss>-utc.log`, so names sort by start time.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::decide::LastEvent;

/// Only the end of a long log is read: the newest event is what matters.
const TAIL_BYTES: u64 = 4 * 1024 * 1024;
/// The listener starts a new `Runner_*.log` once one passes RUNNER_LOGSIZE, 8 MB by default
/// (actions/runner HostContext.cs:57-58, HostTraceListener.cs:163-199): its newest event may
/// then sit at the end of the previous file.
pub const ROLLOVER_BYTES: u64 = 8 * 1024 * 1024;
const TERMINAL_WRITE: &str = " Terminal] WRITE LINE: ";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiagEvent {
    Listening {
        at: String,
    },
    JobStarted {
        at: String,
        job: String,
    },
    JobCompleted {
        at: String,
        job: String,
        result: String,
    },
}

impl DiagEvent {
    pub fn kind(&self) -> LastEvent {
        match self {
            DiagEvent::Listening { .. } => LastEvent::Listening,
            DiagEvent::JobStarted { .. } => LastEvent::JobStarted,
            DiagEvent::JobCompleted { .. } => LastEvent::JobCompleted,
        }
    }
}

/// One log line → the runner event it records, if any.
pub fn parse_line(line: &str) -> Option<DiagEvent> {
    let line = line.trim_end_matches(['\r', '\n']);
    if !line.starts_with('[') {
        return None;
    }
    let (_, console) = line.split_once(TERMINAL_WRITE)?;
    // The console line starts with its own `{DateTime.UtcNow:u}: ` stamp.
    let (at, message) = console.split_once("Z: ")?;
    // `yyyy-MM-dd HH:mm:ss`
    let looks_like_time = at.len() == 19
        && at.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    if !looks_like_time {
        return None;
    }
    let at = format!("{at}Z");
    if message == "Listening for Jobs" {
        return Some(DiagEvent::Listening { at });
    }
    if let Some(job) = message.strip_prefix("Running job: ") {
        return Some(DiagEvent::JobStarted {
            at,
            job: job.to_owned(),
        });
    }
    if let Some(rest) = message.strip_prefix("Job ") {
        // A job's name may itself contain the phrase; the result is after the last one.
        let (job, result) = rest.rsplit_once(" completed with result: ")?;
        return Some(DiagEvent::JobCompleted {
            at,
            job: job.to_owned(),
            result: result.to_owned(),
        });
    }
    None
}

/// The newest event in `text` (a whole log, or its tail).
pub fn last_event(text: &str) -> Option<DiagEvent> {
    text.lines().rev().find_map(parse_line)
}

/// The `Runner_*.log` files in `diag_dir`, newest first (names sort by start time).
pub fn runner_logs(diag_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(diag_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("Runner_") && name.ends_with(".log"))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names.into_iter().map(|name| diag_dir.join(name)).collect())
}

/// The newest `Runner_*.log` in `diag_dir`, by name.
pub fn newest_runner_log(diag_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    Ok(runner_logs(diag_dir)?.into_iter().next())
}

/// The newest runner event in `logs` (newest first): the newest file's, or, when it has none
/// yet and the file before it was rolled over (reached [`ROLLOVER_BYTES`]), that file's. A
/// small previous file belongs to an earlier listener process, whose events say nothing about
/// the one now starting.
pub fn newest_event(logs: &[PathBuf]) -> std::io::Result<Option<DiagEvent>> {
    let Some(newest) = logs.first() else {
        return Ok(None);
    };
    if let Some(event) = last_event(&read_tail(newest)?) {
        return Ok(Some(event));
    }
    match logs.get(1) {
        Some(previous) if std::fs::metadata(previous)?.len() >= ROLLOVER_BYTES => {
            Ok(last_event(&read_tail(previous)?))
        }
        _ => Ok(None),
    }
}

/// The last 4 MiB of `path`, lossily decoded.
pub fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > TAIL_BYTES {
        file.seek(SeekFrom::Start(len - TAIL_BYTES))?;
    }
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_console_lines_are_recognised() {
        assert_eq!(
            parse_line("[2026-11-27 08:00:03Z INFO Terminal] WRITE LINE: 2026-11-27 08:00:03Z: Listening for Jobs"),
            Some(DiagEvent::Listening { at: "2026-11-27 08:00:03Z".into() })
        );
        assert_eq!(
            parse_line("[2026-11-27 08:01:10Z INFO Terminal] WRITE LINE: 2026-11-27 08:01:10Z: Running job: build (ubuntu, 1.2)\r\n"),
            Some(DiagEvent::JobStarted {
                at: "2026-11-27 08:01:10Z".into(),
                job: "build (ubuntu, 1.2)".into()
            })
        );
        assert_eq!(
            parse_line("[2026-11-27 08:05:42Z INFO Terminal] WRITE LINE: 2026-11-27 08:05:42Z: Job Job completed with result: x completed with result: Failed"),
            Some(DiagEvent::JobCompleted {
                at: "2026-11-27 08:05:42Z".into(),
                job: "Job completed with result: x".into(),
                result: "Failed".into()
            })
        );
    }

    #[test]
    fn other_lines_are_ignored() {
        for line in [
            "",
            "Listening for Jobs",
            "[2026-11-27 08:00:03Z INFO Runner] Listening for Jobs",
            "[2026-11-27 08:00:02Z INFO Terminal] WRITE LINE: Current runner version: '2.330.0'",
            "[2026-11-27 08:00:02Z INFO Terminal] WRITE LINE: 2026-11-27 08:00:02Z: Runner reconnected.",
            "[2026-11-27 08:01:10Z INFO JobDispatcher] Job request 42 for plan abc job def received.",
            "[2026-11-27 08:00:02Z INFO Terminal] WRITE LINE: Runner XYZ: Listening for Jobs",
            "[2026-11-27 08:05:42Z INFO JobDispatcher] finish job request for job def with result: Succeeded",
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
    }

    #[test]
    fn last_event_is_the_newest_in_the_text() {
        let log = "\
[2026-11-27 08:00:03Z INFO Terminal] WRITE LINE: 2026-11-27 08:00:03Z: Listening for Jobs
[2026-11-27 08:01:10Z INFO Terminal] WRITE LINE: 2026-11-27 08:01:10Z: Running job: test
[2026-11-27 08:01:11Z INFO JobDispatcher] Start renew job request 42 for job def.
";
        assert!(
            matches!(last_event(log), Some(DiagEvent::JobStarted { job, .. }) if job == "test")
        );
        assert_eq!(last_event("no events\n"), None);
    }

    #[test]
    fn newest_log_is_chosen_by_name_and_worker_logs_are_ignored() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert_eq!(newest_runner_log(&dir.path().join("missing"))?, None);
        for name in [
            "Runner_20261127-080000-utc.log",
            "Runner_20261127-090000-utc.log",
            "Worker_20261127-100000-utc.log",
            "Runner_20261127-095959-utc.txt",
        ] {
            std::fs::write(dir.path().join(name), "")?;
        }
        assert_eq!(
            newest_runner_log(dir.path())?,
            Some(dir.path().join("Runner_20261127-090000-utc.log"))
        );
        Ok(())
    }

    #[test]
    fn an_event_before_a_rollover_counts_until_the_new_file_has_one() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let listening = "[2026-11-27 08:00:03Z INFO Terminal] WRITE LINE: 2026-11-27 08:00:03Z: Listening for Jobs\n";
        let mut rolled = "x".repeat(usize::try_from(ROLLOVER_BYTES).unwrap_or(usize::MAX));
        rolled.push('\n');
        rolled.push_str(listening);
        std::fs::write(dir.path().join("Runner_20261127-080000-utc.log"), &rolled)?;
        std::fs::write(
            dir.path().join("Runner_20261127-090000-utc.log"),
            "[2026-11-27 09:00:00Z INFO HostContext] Well known directory 'Bin'\n",
        )?;
        let logs = runner_logs(dir.path())?;
        assert!(logs[0].ends_with("Runner_20261127-090000-utc.log"));
        assert!(matches!(
            newest_event(&logs)?,
            Some(DiagEvent::Listening { .. })
        ));

        // A small earlier file is an earlier listener's: the new one is still starting.
        std::fs::write(dir.path().join("Runner_20261127-080000-utc.log"), listening)?;
        assert_eq!(newest_event(&runner_logs(dir.path())?)?, None);

        // Once the new file has an event, it wins.
        std::fs::write(
            dir.path().join("Runner_20261127-090000-utc.log"),
            "[2026-11-27 09:00:05Z INFO Terminal] WRITE LINE: 2026-11-27 09:00:05Z: Running job: build\n",
        )?;
        assert!(matches!(
            newest_event(&runner_logs(dir.path())?)?,
            Some(DiagEvent::JobStarted { .. })
        ));
        Ok(())
    }

    #[test]
    fn read_tail_keeps_the_end_of_a_long_log() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("Runner_1.log");
        let mut text = "x".repeat(usize::try_from(TAIL_BYTES).unwrap_or(usize::MAX) + 100);
        text.push_str("\nthe end\n");
        std::fs::write(&path, &text)?;
        let tail = read_tail(&path)?;
        assert_eq!(tail.len() as u64, TAIL_BYTES);
        assert!(tail.ends_with("the end\n"));
        Ok(())
    }
}
