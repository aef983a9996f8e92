//! What `shoes-vz dev` keeps in its data dir from one run to the next: the server's database
//! and the agents' identities and runner bundles are state (an earlier run's runners and
//! agents show up again); the built templates are a cache (rebuilt only when their inputs
//! change), so starting clean (`--fresh`) keeps them. Also the run's tokens file.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The file with this run's server address and tokens, in the data dir (mode 0600).
pub const TOKENS_FILE: &str = "tokens.env";

/// What shows an earlier run was here: its database, its agents' identities and bundles.
const MARKERS: [&str; 2] = ["state.db", "agents"];

/// An earlier run's state: what `--fresh` removes. Templates (`templates/`) stay.
const STATE: [&str; 5] = [
    "state.db",
    "state.db-wal",
    "state.db-shm",
    "agents",
    TOKENS_FILE,
];

/// `<temp dir>/shoes-vz-dev` (`$TMPDIR` on Unix).
pub fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join("shoes-vz-dev")
}

/// Which signs of an earlier run are in `dir` (empty: nothing to reuse).
pub fn earlier_state(dir: &Path) -> Vec<&'static str> {
    present(dir, &MARKERS)
}

fn present(dir: &Path, entries: &[&'static str]) -> Vec<&'static str> {
    entries
        .iter()
        .copied()
        .filter(|entry| dir.join(entry).symlink_metadata().is_ok())
        .collect()
}

/// What the operator reads when a run continues an earlier one in the default data dir.
pub fn reuse_warning(dir: &Path, found: &[&str]) -> String {
    format!(
        "WARNING: {} holds the state of an earlier `shoes-vz dev` run ({}), and this run \
         continues it: that run's agents and runners show up again. To start clean, run \
         `shoes-vz dev --fresh` (forgets that state, keeps the built templates) or pass \
         `--data-dir DIR` for a directory of its own.",
        dir.display(),
        found.join(", ")
    )
}

/// Removes an earlier run's state from `dir` (never the templates); returns what it removed.
pub fn forget_state(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let found = present(dir, &STATE);
    for entry in &found {
        let path = dir.join(entry);
        let removed = if path.symlink_metadata()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| {
            format!(
                "cannot remove {} to start clean; remove it yourself or pass --data-dir",
                path.display()
            )
        })?;
    }
    Ok(found)
}

/// Writes `<dir>/tokens.env` (mode 0600, replaced every run) for `set -a; . FILE; set +a`;
/// returns its path. The tokens go to this file, never to stdout's JSON.
pub fn write_tokens(
    dir: &Path,
    server_addr: &str,
    token: &str,
    operator_token: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(TOKENS_FILE);
    let text = format!(
        "# shoes-vz dev: this run's server and tokens. Use: set -a; . {}; set +a\n\
         SHOESVZ_SERVER_ADDR={}\nSHOESVZ_TOKEN={}\nSHOESVZ_OPERATOR_TOKEN={}\n",
        path.display(),
        shell_quote(server_addr),
        shell_quote(token),
        shell_quote(operator_token)
    );
    // A new file each run, so an old one's wider mode never carries over.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot replace {}", path.display()))
        }
    }
    write_private(&path, text.as_bytes())
        .with_context(|| format!("cannot write the tokens file {}", path.display()))?;
    Ok(path)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `value` in single quotes for a POSIX shell (a token given with --token may hold anything).
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_start_forgets_the_state_and_keeps_the_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(earlier_state(dir.path()).is_empty(), "an empty dir");
        std::fs::write(dir.path().join("state.db"), b"db").expect("db");
        std::fs::write(dir.path().join("state.db-wal"), b"wal").expect("wal");
        std::fs::create_dir_all(dir.path().join("agents/0/runners")).expect("agents");
        std::fs::create_dir_all(dir.path().join("templates/linux")).expect("templates");
        assert_eq!(earlier_state(dir.path()), ["state.db", "agents"]);
        let warning = reuse_warning(dir.path(), &earlier_state(dir.path()));
        assert!(
            warning.contains("--fresh") && warning.contains("--data-dir"),
            "{warning}"
        );

        assert_eq!(
            forget_state(dir.path()).expect("forget"),
            ["state.db", "state.db-wal", "agents"]
        );
        assert!(!dir.path().join("state.db-wal").exists());
        assert!(earlier_state(dir.path()).is_empty());
        assert!(
            dir.path().join("templates/linux").is_dir(),
            "the cache stays"
        );
    }

    #[test]
    fn the_tokens_file_is_private_and_sourceable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_tokens(dir.path(), "127.0.0.1:1", "it's", "op").expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("SHOESVZ_TOKEN='it'\\''s'\n"), "{text}");
        assert!(text.contains("SHOESVZ_OPERATOR_TOKEN='op'\n"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Replaced, not appended to, on the next run.
        write_tokens(dir.path(), "127.0.0.1:2", "t2", "op2").expect("again");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("127.0.0.1:2") && !text.contains("it'"),
            "{text}"
        );
    }
}
