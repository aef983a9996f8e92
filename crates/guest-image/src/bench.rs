//! The baseline for `shoes-vz bench startup`: the same guest booted by a plain QEMU command
//! line (same machine, kernel arguments and devices, no QMP, no agent), with an `ssh` loop
//! until a command runs. shoes-vz's boot-to-SSH divided by this is its overhead.

use shoes_vz_agent::hypervisor::qemu::accel::{host_tsc_khz, Accel};
use shoes_vz_agent::hypervisor::qemu::cmdline::{BASE_KERNEL_ARGS, MACHINE};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BareBoot {
    pub qemu_binary: PathBuf,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Writable disks (pass a copy: the guest mounts and writes it).
    pub disks: Vec<PathBuf>,
    /// Read-only disks after them (e.g. a config disk).
    pub readonly_disks: Vec<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// OpenSSH private key file the `ssh` client logs in with.
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    pub timeout: Duration,
}

/// When each stage was reached, from just before QEMU was spawned.
#[derive(Debug, Clone, Copy)]
pub struct BareTiming {
    pub spawned: Duration,
    pub ssh_ready: Duration,
    pub ssh_attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot run {program}; install it (qemu-system-x86, openssh-client)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pick a free local port")]
    Port(#[source] std::io::Error),
    #[error("QEMU exited before SSH was ready ({0})")]
    Exited(String),
    #[error("SSH was not ready within {0:?}")]
    Timeout(Duration),
}

/// Boots, waits for `ssh … true` to succeed, then kills QEMU.
pub async fn bare_boot_to_ssh(boot: &BareBoot) -> Result<BareTiming, BenchError> {
    // The baseline has no QMP to read a kernel-chosen port back, so it picks one first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BenchError::Port)?
        .port();
    let mut append = BASE_KERNEL_ARGS.to_string();
    if let Some(khz) = host_tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mut command = tokio::process::Command::new(&boot.qemu_binary);
    command
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-M",
            MACHINE,
            "-accel",
            boot.accel.as_str(),
            "-cpu",
            boot.accel.cpu_model(),
        ])
        .args([
            "-smp",
            &boot.vcpus.to_string(),
            "-m",
            &boot.memory_mib.to_string(),
        ])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .args(["-append", &append, "-serial", "null"])
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args(["-device", "virtio-net-device,netdev=n0"]);
    let drives = boot
        .disks
        .iter()
        .map(|d| (d, ""))
        .chain(boot.readonly_disks.iter().map(|d| (d, ",readonly=on")));
    for (index, (disk, extra)) in drives.enumerate() {
        command.args([
            "-drive",
            &format!(
                "file={},if=none,id=d{index},format=raw{extra}",
                disk.display().to_string().replace(',', ",,")
            ),
            "-device",
            &format!("virtio-blk-device,drive=d{index}"),
        ]);
    }
    command
        .args(["-device", "virtio-rng-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| BenchError::Spawn {
        program: boot.qemu_binary.display().to_string(),
        source,
    })?;
    let spawned = started.elapsed();
    let mut attempts = 0;
    let result = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(BenchError::Exited(status.to_string()));
        }
        if started.elapsed() >= boot.timeout {
            break Err(BenchError::Timeout(boot.timeout));
        }
        attempts += 1;
        if ssh_true(boot, port).await? {
            break Ok(BareTiming {
                spawned,
                ssh_ready: started.elapsed(),
                ssh_attempts: attempts,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill().await;
    result
}

async fn ssh_true(boot: &BareBoot, port: u16) -> Result<bool, BenchError> {
    let status = tokio::process::Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=1"])
        // The baseline measures boot, not host key verification (shoes-vz verifies).
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-p", &port.to_string(), "-i"])
        .arg(&boot.ssh_key)
        .arg(format!("{}@127.0.0.1", boot.ssh_user))
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(5), status).await {
        Ok(Ok(status)) => Ok(status.success()),
        Ok(Err(source)) => Err(BenchError::Spawn {
            program: "ssh".into(),
            source,
        }),
        Err(_) => Ok(false),
    }
}
