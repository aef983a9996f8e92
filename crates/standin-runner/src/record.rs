//! `_standin/processes.jsonl`: one JSON line per stand-in process start (program, pid,
//! parent, user, working directory, argv with secrets masked), so tests can check who ran
//! what where. The runner itself keeps no such file; it lives in `_standin/`, beside the
//! job drop box, and holds no secrets.

use crate::args::masked;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub const RECORD_FILE: &str = "_standin/processes.jsonl";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// `Runner.Listener`, `Runner.Worker` or `node`.
    pub program: String,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// `argv[0]` as given, then the arguments; values of secret arguments are `***`.
    pub argv: Vec<String>,
}

impl ProcessRecord {
    pub fn current(program: &str, argv: &[String]) -> ProcessRecord {
        ProcessRecord {
            program: program.to_string(),
            pid: std::process::id(),
            ppid: std::os::unix::process::parent_id(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cwd: std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            argv: masked(argv),
        }
    }
}

/// Appends `record` under `root` (one `write`, so concurrent appends do not interleave).
pub fn append(root: &Path, record: &ProcessRecord) -> std::io::Result<()> {
    let path = root.join(RECORD_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// Every record under `root`, oldest first (for tests).
pub fn read_all(root: &Path) -> std::io::Result<Vec<ProcessRecord>> {
    let text = match std::fs::read_to_string(root.join(RECORD_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_secrets_masked() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let argv: Vec<String> = ["./bin/Runner.Listener", "configure", "--token", "SECRET"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        append(
            root.path(),
            &ProcessRecord::current("Runner.Listener", &argv),
        )?;
        append(root.path(), &ProcessRecord::current("node", &argv[..1]))?;
        let records = read_all(root.path())?;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].argv[3], "***");
        assert_eq!(records[0].pid, std::process::id());
        assert_eq!(records[1].program, "node");
        let text = std::fs::read_to_string(root.path().join(RECORD_FILE))?;
        assert!(!text.contains("SECRET"));
        Ok(())
    }
}
