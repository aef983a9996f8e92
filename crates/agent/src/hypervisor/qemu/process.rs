//! QEMU processes the agent did not start in this life: found through a bundle's pidfile
//! (or `/proc` when QEMU died before writing it) and ended only when `/proc/PID/cmdline`
//! proves it is QEMU running that very bundle, so a recycled pid is never killed.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `cmdline` (NUL-separated, as in `/proc/PID/cmdline`) is a QEMU whose pidfile is
/// `pid_file`.
pub fn is_qemu_for(cmdline: &[u8], pid_file: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let Some(program) = args.first() else {
        return false;
    };
    let program = String::from_utf8_lossy(program);
    let is_qemu = Path::new(program.as_ref())
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("qemu-system"));
    let wanted = pid_file.as_os_str().as_encoded_bytes();
    is_qemu
        && args
            .windows(2)
            .any(|pair| pair[0] == b"-pidfile" && pair[1] == wanted)
}

pub fn read_pid_file(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

fn cmdline_of(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Pids of QEMU processes running the bundle whose pidfile is `pid_file`.
pub fn find(pid_file: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = read_pid_file(pid_file).into_iter().collect();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        pids.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|pid| cmdline_of(*pid).is_some_and(|cmd| is_qemu_for(&cmd, pid_file)));
    pids
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID but no cmdline.
    cmdline_of(pid).is_some_and(|cmd| !cmd.is_empty())
}

pub fn signal(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), signal).is_ok())
}

/// SIGTERM (QEMU exits at once), then SIGKILL after `grace`. Returns whether it is gone.
pub async fn terminate(pid: u32, grace: Duration) -> bool {
    signal(pid, Signal::SIGTERM);
    if wait_gone(pid, grace).await {
        return true;
    }
    signal(pid, Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(5)).await
}

async fn wait_gone(pid: u32, within: Duration) -> bool {
    let started = Instant::now();
    while alive(pid) {
        if started.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for arg in args {
            bytes.extend_from_slice(arg.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn only_qemu_for_this_exact_bundle_matches() {
        let pid_file = Path::new("/r/a.bundle/qemu.pid");
        let ours = cmdline(&[
            "/usr/bin/qemu-system-x86_64",
            "-M",
            "microvm",
            "-pidfile",
            "/r/a.bundle/qemu.pid",
        ]);
        assert!(is_qemu_for(&ours, pid_file));
        let other_bundle = cmdline(&["qemu-system-x86_64", "-pidfile", "/r/a.bundle2/qemu.pid"]);
        assert!(!is_qemu_for(&other_bundle, pid_file));
        let not_qemu = cmdline(&["/bin/sleep", "-pidfile", "/r/a.bundle/qemu.pid"]);
        assert!(!is_qemu_for(&not_qemu, pid_file));
        assert!(!is_qemu_for(b"", pid_file));
    }

    #[tokio::test]
    async fn a_recycled_pid_in_the_pidfile_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("qemu.pid");
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .expect("sleep");
        let pid = child.id().expect("pid");
        std::fs::write(&pid_file, format!("{pid}\n")).expect("pidfile");
        assert_eq!(read_pid_file(&pid_file), Some(pid));
        // What clean_leftover ends is exactly what find returns: nothing here.
        assert!(
            find(&pid_file).is_empty(),
            "sleep is not QEMU for this bundle"
        );
        let _ = child.kill().await;
    }

    #[tokio::test]
    async fn a_verified_leftover_is_found_and_terminated() {
        let Ok(python) = which_python() else {
            shoes_vz_test_support::prerequisite_missing(
                "python3 is not installed; it plays a leftover QEMU here",
                "install python3 (`apt-get install python3`)",
            );
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("qemu-system-x86_64");
        std::os::unix::fs::symlink(python, &fake).expect("symlink");
        let pid_file = dir.path().join("x.bundle").join("qemu.pid");
        let mut child = tokio::process::Command::new(&fake)
            .args(["-c", "import time; time.sleep(60)", "-pidfile"])
            .arg(&pid_file)
            .kill_on_drop(true)
            .spawn()
            .expect("fake qemu");
        let pid = child.id().expect("pid");
        // No pidfile (QEMU died before writing it, or it was lost): found through /proc.
        let started = Instant::now();
        while find(&pid_file).is_empty() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(find(&pid_file), vec![pid]);
        let waiter = tokio::spawn(async move { child.wait().await });
        assert!(terminate(pid, Duration::from_secs(5)).await);
        let status = waiter.await.expect("join").expect("wait");
        assert!(!status.success());
    }

    fn which_python() -> Result<std::path::PathBuf, ()> {
        ["/usr/bin/python3", "/bin/python3"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(())
    }
}
