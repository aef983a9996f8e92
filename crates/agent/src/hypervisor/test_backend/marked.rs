//! Finding and ending every process a test "VM" started, including ones that left its process
//! group (a detached setup script, its runner) and ones an earlier agent process left behind
//! when it was killed.
//!
//! Each process the test backend starts for a runner carries `SHOESVZ_TEST_VM=<runner id>` in
//! its environment, and children inherit it. Linux lists any process's environment in
//! `/proc/<pid>/environ` (for processes of the same user), which is how they are found again.
//! Elsewhere (the test backend on a Mac, for demos) only the VM's own process groups end with
//! it, which the SSH server and the runner-agent already take care of.

use shoes_vz_model::RunnerId;
use std::time::Duration;

/// The environment variable that marks a test VM's processes.
pub const MARKER: &str = "SHOESVZ_TEST_VM";

/// `(name, value)` to add to every process started for `runner_id`.
pub fn marker(runner_id: &RunnerId) -> (String, String) {
    (MARKER.to_string(), runner_id.to_string())
}

/// Whether a `/proc/<pid>/environ` (NUL-separated) carries the marker of `runner_id`.
pub fn environ_is_marked(environ: &[u8], runner_id: &RunnerId) -> bool {
    let wanted = format!("{MARKER}={runner_id}");
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// Kills every process marked with `runner_id` and waits (bounded) until none is left.
/// Returns how many were killed.
pub async fn kill_all(runner_id: &RunnerId) -> usize {
    let runner_id = runner_id.clone();
    tokio::task::spawn_blocking(move || kill_all_blocking(&runner_id))
        .await
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
fn kill_all_blocking(runner_id: &RunnerId) -> usize {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut killed = 0;
    // A process may fork while we look: repeat until a scan finds nobody.
    for _ in 0..50 {
        let found = scan(runner_id);
        if found.is_empty() {
            return killed;
        }
        for pid in found {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(runner = %runner_id, "test VM processes kept appearing while being killed");
    killed
}

#[cfg(not(target_os = "linux"))]
fn kill_all_blocking(_runner_id: &RunnerId) -> usize {
    let _ = Duration::ZERO;
    0
}

/// Live (not zombie) processes marked with `runner_id`.
#[cfg(target_os = "linux")]
pub fn scan(runner_id: &RunnerId) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).is_ok_and(|pid| pid != own))
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            });
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|environ| environ_is_marked(&environ, runner_id))
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
pub fn scan(_runner_id: &RunnerId) -> Vec<i32> {
    Vec::new()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_marker_matches() {
        let id = RunnerId::generate();
        let other = RunnerId::generate();
        let environ = format!("PATH=/bin\0{MARKER}={id}\0HOME=/x\0");
        assert!(environ_is_marked(environ.as_bytes(), &id));
        assert!(!environ_is_marked(environ.as_bytes(), &other));
        assert!(!environ_is_marked(
            format!("X{MARKER}={id}").as_bytes(),
            &id
        ));
    }

    #[tokio::test]
    async fn detached_descendants_are_found_and_killed() {
        let id = RunnerId::generate();
        let (name, value) = marker(&id);
        // A shell that detaches a grandchild into its own session, then exits.
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo started")
            .env(&name, &value)
            .output()
            .await
            .expect("sh");
        assert!(status.status.success());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while scan(&id).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(scan(&id).len(), 1, "the detached sleep carries the marker");
        assert_eq!(kill_all(&id).await, 1);
        assert!(scan(&id).is_empty());
        assert!(scan(&RunnerId::generate()).is_empty());
    }
}
