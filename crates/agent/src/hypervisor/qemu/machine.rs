//! One supervised QEMU process: spawn, QMP, forwarded ports, the guest's address from its
//! console, and an orderly end (power button, then `quit`, then SIGKILL).

use super::cmdline::{build_args, CmdlineError, MachineSpec, GUEST_AGENT_PORT, GUEST_SSH_PORT};
use super::process;
use super::qmp::{Qmp, QmpError};
use super::usernet;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The guest prints `SHOESVZ_GUEST_IP=<address>` on its serial console once its network is
/// configured (the test guest's `rcS` does).
pub const GUEST_IP_MARKER: &str = "SHOESVZ_GUEST_IP=";

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    #[error("cannot start {binary}; install qemu-system-x86 or set qemu.binary")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU did not come up: {log}")]
    Qmp {
        log: String,
        #[source]
        source: QmpError,
    },
    #[error("QEMU reported no host forward for guest port {0}")]
    NoForward(u16),
    #[error("QEMU exited: {0}")]
    Exited(String),
    #[error("the guest printed no address within {0:?}")]
    NoAddress(Duration),
}

/// How [`Machine::shutdown`] ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// It had already exited.
    AlreadyExited,
    /// The guest powered off after the ACPI power button.
    PoweredOff,
    /// QMP `quit`.
    Quit,
    /// SIGKILL.
    Killed,
}

/// Host ports forwarded to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPorts {
    pub ssh: u16,
    pub agent: u16,
}

type ExitHook = Box<dyn FnOnce(String) + Send>;

pub struct Machine {
    pub pid: u32,
    pub ports: HostPorts,
    console_log: PathBuf,
    qmp: tokio::sync::Mutex<Option<Qmp>>,
    stopping: Arc<AtomicBool>,
    exited: watch::Receiver<Option<String>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Machine {
    /// Starts QEMU and returns once QMP answers and the forwarded ports are known.
    /// `qemu_log` receives QEMU's own stdout/stderr. `on_unexpected_exit` runs (once) if
    /// the process ends before [`Machine::shutdown`] was called.
    pub async fn launch(
        spec: &MachineSpec,
        qemu_log: &Path,
        timeout: Duration,
        on_unexpected_exit: ExitHook,
    ) -> Result<Machine, MachineError> {
        let args = build_args(spec)?;
        let log = std::fs::File::create(qemu_log).map_err(|source| MachineError::Io {
            path: qemu_log.to_path_buf(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| MachineError::Io {
            path: qemu_log.to_path_buf(),
            source,
        })?;
        let _ = std::fs::remove_file(&spec.qmp_socket);
        let mut child = tokio::process::Command::new(&spec.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C meant for the agent must not kill guests
            // behind the agent's back (the agent tears them down itself).
            .process_group(0)
            .spawn()
            .map_err(|source| MachineError::Spawn {
                binary: spec.binary.clone(),
                source,
            })?;
        let pid = child
            .id()
            .ok_or_else(|| MachineError::Exited("at once".into()))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (exited_tx, exited) = watch::channel(None);
        let supervisor = {
            let stopping = Arc::clone(&stopping);
            let qemu_log = qemu_log.to_path_buf();
            tokio::spawn(async move {
                let detail = match child.wait().await {
                    Ok(status) => describe_exit(status, &qemu_log),
                    Err(error) => format!("cannot wait for QEMU: {error}"),
                };
                exited_tx.send_replace(Some(detail.clone()));
                if !stopping.load(Ordering::SeqCst) {
                    on_unexpected_exit(detail);
                }
            })
        };
        let mut machine = Machine {
            pid,
            ports: HostPorts { ssh: 0, agent: 0 },
            console_log: spec.console_log.clone(),
            qmp: tokio::sync::Mutex::new(None),
            stopping,
            exited,
            supervisor: Mutex::new(Some(supervisor)),
        };
        match machine.connect(spec, qemu_log, timeout).await {
            Ok((qmp, ports)) => {
                *machine.qmp.lock().await = Some(qmp);
                machine.ports = ports;
                Ok(machine)
            }
            Err(error) => {
                machine.shutdown(Duration::ZERO).await;
                Err(error)
            }
        }
    }

    async fn connect(
        &self,
        spec: &MachineSpec,
        qemu_log: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, HostPorts), MachineError> {
        let mut exited = self.exited.clone();
        let connecting = Qmp::connect(&spec.qmp_socket, timeout);
        let mut qmp = tokio::select! {
            result = connecting => result.map_err(|source| MachineError::Qmp {
                log: log_tail(qemu_log),
                source,
            })?,
            _ = exited.wait_for(Option::is_some) => {
                return Err(MachineError::Exited(self.exit_detail().unwrap_or_default()));
            }
        };
        let info = qmp
            .human("info usernet")
            .await
            .map_err(|source| MachineError::Qmp {
                log: log_tail(qemu_log),
                source,
            })?;
        let forwards = usernet::host_forwards(&info);
        let port = |guest: u16| {
            forwards
                .get(&guest)
                .copied()
                .ok_or(MachineError::NoForward(guest))
        };
        let ports = HostPorts {
            ssh: port(GUEST_SSH_PORT)?,
            agent: port(GUEST_AGENT_PORT)?,
        };
        Ok((qmp, ports))
    }

    /// Why the process ended, once it has.
    pub fn exit_detail(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// The QMP connection, for warm-start saves and restores (`None` once shut down).
    pub async fn qmp(&self) -> tokio::sync::MutexGuard<'_, Option<Qmp>> {
        self.qmp.lock().await
    }

    /// Waits for the guest's address on its serial console.
    pub async fn wait_for_guest_ip(&self, timeout: Duration) -> Result<String, MachineError> {
        let started = Instant::now();
        loop {
            if let Some(ip) = read_marker(&self.console_log) {
                return Ok(ip);
            }
            if let Some(detail) = self.exit_detail() {
                return Err(MachineError::Exited(detail));
            }
            if started.elapsed() >= timeout {
                return Err(MachineError::NoAddress(timeout));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ends the VM: the ACPI power button and up to `graceful` for the guest to power off,
    /// then QMP `quit`, then SIGKILL. Returns which step ended it. Idempotent.
    pub async fn shutdown(&self, graceful: Duration) -> StopHow {
        self.stopping.store(true, Ordering::SeqCst);
        let mut exited = self.exited.clone();
        let mut how = StopHow::AlreadyExited;
        if !graceful.is_zero() && self.exit_detail().is_none() {
            how = StopHow::PoweredOff;
            self.qmp_quietly("system_powerdown").await;
            let _ = tokio::time::timeout(graceful, exited.wait_for(Option::is_some)).await;
        }
        if self.exit_detail().is_none() {
            how = StopHow::Quit;
            self.qmp_quietly("quit").await;
            let _ = tokio::time::timeout(Duration::from_secs(3), exited.wait_for(Option::is_some))
                .await;
        }
        if self.exit_detail().is_none() {
            how = StopHow::Killed;
            // Still our unreaped child, so the pid cannot have been reused.
            process::signal(self.pid, Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(Option::is_some))
                .await;
        }
        *self.qmp.lock().await = None;
        let supervisor = match self.supervisor.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = supervisor {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        if self.exit_detail().is_none() {
            tracing::error!(pid = self.pid, "QEMU did not exit after SIGKILL");
        }
        how
    }

    async fn qmp_quietly(&self, command: &str) {
        let mut guard = self.qmp.lock().await;
        if let Some(qmp) = guard.as_mut() {
            if let Err(error) = qmp.execute(command, None).await {
                tracing::debug!(pid = self.pid, command, error = %error, "QMP command failed while stopping");
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // A Machine dropped without shutdown (e.g. a panicking test) must not leak QEMU.
        if self.exit_detail().is_none() {
            self.stopping.store(true, Ordering::SeqCst);
            process::signal(self.pid, Signal::SIGKILL);
        }
    }
}

/// The guest address printed after [`GUEST_IP_MARKER`] on the console, if any yet.
pub(super) fn read_marker(console: &Path) -> Option<String> {
    let text = std::fs::read(console).ok()?;
    let text = String::from_utf8_lossy(&text[..text.len().min(1 << 20)]);
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(GUEST_IP_MARKER)?.trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

fn describe_exit(status: std::process::ExitStatus, qemu_log: &Path) -> String {
    let tail = log_tail(qemu_log);
    if tail.is_empty() {
        format!("QEMU exited ({status})")
    } else {
        format!("QEMU exited ({status}): {tail}")
    }
}

/// The last lines QEMU wrote about itself (errors are one line each).
fn log_tail(qemu_log: &Path) -> String {
    let text = std::fs::read_to_string(qemu_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_address_is_read_from_the_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        assert_eq!(read_marker(&console), None);
        std::fs::write(&console, "init started\r\nSHOESVZ_GUEST_IP=\r\n").expect("write");
        assert_eq!(
            read_marker(&console),
            None,
            "an empty address is no address"
        );
        std::fs::write(&console, "init\r\nSHOESVZ_GUEST_IP=10.0.2.15\r\nmore\n").expect("write");
        assert_eq!(read_marker(&console).as_deref(), Some("10.0.2.15"));
    }

    #[test]
    fn exit_details_carry_qemu_s_last_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("qemu.log");
        std::fs::write(&log, "a\nb\n\nqemu-system-x86_64: -drive x: No such file\n")
            .expect("write");
        assert_eq!(
            log_tail(&log),
            "a | b | qemu-system-x86_64: -drive x: No such file"
        );
        assert_eq!(log_tail(&dir.path().join("none")), "");
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = MachineSpec {
            binary: dir.path().join("no-such-qemu"),
            accel: super::super::accel::Accel::Tcg,
            name: "x".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel: dir.path().join("vmlinux"),
            initrd: None,
            kernel_args: String::new(),
            uuid: uuid::Uuid::nil(),
            mac: [2, 0, 0, 0, 0, 1],
            disks: vec![],
            config_disk: None,
            qmp_socket: dir.path().join("qmp.sock"),
            pid_file: dir.path().join("qemu.pid"),
            console_log: dir.path().join("console.log"),
            incoming: None,
            memory: Default::default(),
        };
        let result = Machine::launch(
            &spec,
            &dir.path().join("qemu.log"),
            Duration::from_secs(1),
            Box::new(|_| {}),
        )
        .await;
        assert!(matches!(result, Err(MachineError::Spawn { .. })));
    }
}
