//! `_diag/<Prefix>_<yyyyMMdd-HHmmss>-utc.log`: the runner's trace files.
//!
//! Facts reproduced (actions-runner.md "_diag, console markers, processes"):
//! - `_diag/` is in the runner root; the listener writes `Runner_*.log`, each worker
//!   `Worker_*.log` (HostTraceListener.cs:12).
//! - A line is `[<{0:u}> <TYPE> <source>] <message>`, TYPE one of `INFO`, `WARN`, `ERR `,
//!   `VERB`; console lines are traced by source `Terminal` as `WRITE LINE: <text>`, errors as
//!   `WRITE ERROR: <text>` (HostTraceListener.cs:112-138, Terminal.cs:119-124).
//! - A new file starts once the current one has taken more than `RUNNER_LOGSIZE` /
//!   `WORKER_LOGSIZE` MB (default 8) of messages; a name already taken in the same second is
//!   appended to (HostTraceListener.cs:70-92,163-199).
//!
//! Not reproduced: deleting logs older than 30 days, step logs in `_diag/pages/`.

use crate::clock::UtcStamp;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default page size of a trace file, in MB (`RUNNER_LOGSIZE`, `WORKER_LOGSIZE`).
pub const DEFAULT_PAGE_MB: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warning => "WARN",
            Level::Error => "ERR ",
        }
    }
}

/// One trace line, without its newline.
pub fn trace_line(at: &UtcStamp, level: Level, source: &str, message: &str) -> String {
    format!("[{} {} {source}] {message}", at.sortable(), level.tag())
}

/// The file name a trace file started at `at` gets.
pub fn file_name(prefix: &str, at: &UtcStamp) -> String {
    format!("{prefix}_{}-utc.log", at.file_part())
}

/// The page size from `variable` (whole MB, as the runner reads it), else the default.
pub fn page_bytes_from_env(variable: &str) -> u64 {
    let mb = std::env::var(variable)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|mb| *mb > 0)
        .unwrap_or(DEFAULT_PAGE_MB);
    mb.saturating_mul(1024 * 1024)
}

type Clock = Box<dyn FnMut() -> UtcStamp + Send>;

/// An open trace file that moves to a new page past its size limit.
pub struct DiagLog {
    dir: PathBuf,
    prefix: String,
    page_bytes: u64,
    written: u64,
    file: File,
    path: PathBuf,
    clock: Clock,
}

impl std::fmt::Debug for DiagLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiagLog")
            .field("path", &self.path)
            .field("page_bytes", &self.page_bytes)
            .field("written", &self.written)
            .finish()
    }
}

impl DiagLog {
    /// Creates `dir` if needed and opens the first page.
    pub fn open(dir: &Path, prefix: &str, page_bytes: u64) -> io::Result<Self> {
        Self::open_with_clock(dir, prefix, page_bytes, Box::new(UtcStamp::now))
    }

    fn open_with_clock(
        dir: &Path,
        prefix: &str,
        page_bytes: u64,
        mut clock: Clock,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (file, path) = open_page(dir, prefix, &clock())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            page_bytes,
            written: 0,
            file,
            path,
            clock,
        })
    }

    /// The page being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. Like the runner's trace, a failure to write is not fatal; it is
    /// returned so a caller can say so once.
    pub fn trace(&mut self, level: Level, source: &str, message: &str) -> io::Result<()> {
        let mut line = trace_line(&(self.clock)(), level, source, message);
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        // The runner counts the message bytes only.
        self.written += message.len() as u64;
        if self.written > self.page_bytes {
            let (file, path) = open_page(&self.dir, &self.prefix, &(self.clock)())?;
            self.file = file;
            self.path = path;
            self.written = 0;
        }
        Ok(())
    }
}

fn open_page(dir: &Path, prefix: &str, at: &UtcStamp) -> io::Result<(File, PathBuf)> {
    let path = dir.join(file_name(prefix, at));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn lines_and_names_have_the_runner_format() {
        let at = UtcStamp::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_786_968_000));
        assert_eq!(
            trace_line(&at, Level::Info, "Terminal", "WRITE LINE: hello"),
            "[2026-08-17 12:00:00Z INFO Terminal] WRITE LINE: hello"
        );
        assert_eq!(
            trace_line(&at, Level::Error, "Terminal", "WRITE ERROR: x"),
            "[2026-08-17 12:00:00Z ERR  Terminal] WRITE ERROR: x"
        );
        assert_eq!(file_name("Runner", &at), "Runner_20260817-120000-utc.log");
    }

    #[test]
    fn a_full_page_starts_a_new_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let diag = dir.path().join("_diag");
        let mut second = 1_786_968_000;
        let clock = Box::new(move || {
            second += 1;
            UtcStamp::at(SystemTime::UNIX_EPOCH + Duration::from_secs(second))
        });
        let mut log = DiagLog::open_with_clock(&diag, "Runner", 100, clock)?;
        let first = log.path().to_path_buf();
        log.trace(Level::Info, "Terminal", &"x".repeat(60))?;
        assert_eq!(log.path(), first, "60 of 100 bytes: same page");
        log.trace(Level::Info, "Terminal", &"y".repeat(60))?;
        assert_ne!(log.path(), first, "past 100 bytes: a new page");
        log.trace(Level::Info, "Terminal", "WRITE LINE: after the rollover")?;
        let first_text = std::fs::read_to_string(&first)?;
        assert_eq!(first_text.lines().count(), 2, "{first_text}");
        let second_text = std::fs::read_to_string(log.path())?;
        assert_eq!(
            second_text,
            "[2026-08-17 12:00:05Z INFO Terminal] WRITE LINE: after the rollover\n"
        );
        assert_eq!(
            log.path().file_name().and_then(|n| n.to_str()),
            Some("Runner_20260817-120004-utc.log")
        );
        Ok(())
    }

    #[test]
    fn a_page_name_taken_in_the_same_second_is_appended_to() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let at = || UtcStamp::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_786_968_000));
        let mut log = DiagLog::open_with_clock(dir.path(), "Runner", 10, Box::new(at))?;
        log.trace(Level::Info, "Terminal", "first, over the limit")?;
        log.trace(Level::Info, "Terminal", "second")?;
        let text = std::fs::read_to_string(log.path())?;
        assert_eq!(text.lines().count(), 2, "{text}");
        Ok(())
    }

    #[test]
    fn the_page_size_comes_from_the_environment_in_mb() {
        assert_eq!(
            page_bytes_from_env("SHOESVZ_STANDIN_TEST_UNSET_LOGSIZE"),
            8 * 1024 * 1024
        );
    }
}
