//! The QEMU command line of one runner VM: the microvm machine, direct boot of an
//! uncompressed kernel (PVH), virtio-mmio disk/network/entropy, user-mode networking with
//! kernel-chosen host ports, QMP, serial console to a file. No secrets ever go here.

use super::accel::Accel;
use super::identity::format_mac;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// microvm with an RTC (without it the guest waits ~2.5 s), PIT, no PIC, a serial port and
/// ACPI (the power button that `system_powerdown` presses).
pub const MACHINE: &str = "microvm,x-option-roms=off,rtc=on,pit=on,pic=off,isa-serial=on,acpi=on";

/// Kernel arguments that make a small guest boot fast; `tsc_early_khz` is added per host.
pub const BASE_KERNEL_ARGS: &str = "console=ttyS0 quiet loglevel=1 panic=-1 tsc=reliable \
    no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd mitigations=off \
    cryptomgr.notests random.trust_cpu=on rodata=off";

/// Guest TCP ports forwarded from 127.0.0.1: SSH and the runner-agent.
pub const GUEST_SSH_PORT: u16 = 22;
pub const GUEST_AGENT_PORT: u16 = 8080;

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("path {0} is not UTF-8; QEMU options need text")]
    NotUtf8(PathBuf),
    #[error("path {0} contains a quote, which cannot be passed to QEMU's exec: migration")]
    Quote(PathBuf),
    #[error("QMP socket path {0} is longer than a Unix socket allows (107 bytes); use a shorter runners_dir")]
    SocketPathTooLong(PathBuf),
}

/// Everything that shapes one QEMU command line.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub binary: PathBuf,
    pub accel: Accel,
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line (see [`kernel_cmdline`]).
    pub kernel_args: String,
    pub uuid: uuid::Uuid,
    pub mac: [u8; 6],
    /// Writable disks, attached in order.
    pub disks: Vec<PathBuf>,
    /// Attached read-only after the disks.
    pub config_disk: Option<PathBuf>,
    pub qmp_socket: PathBuf,
    pub pid_file: PathBuf,
    pub console_log: PathBuf,
    /// Restore from a saved state instead of booting (same devices and memory required).
    pub incoming: Option<PathBuf>,
    /// Where the guest's RAM lives.
    pub memory: GuestMemory,
}

/// The guest's RAM: QEMU's own, or a file that a warm template's saved state keeps it in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GuestMemory {
    #[default]
    Anonymous,
    /// Warming: the RAM is this file (mapped shared), so saving the state skips it
    /// (`x-ignore-shared`) and the template keeps it as a file.
    SavedTo(PathBuf),
    /// Restoring: a copy-on-write view of a warm template's RAM file. Nothing is loaded:
    /// pages come from the host's page cache, shared by every runner of the template, as the
    /// guest touches them, and the guest's writes stay in this process. The file is never
    /// written: the mapping is private, and this machine has no device that discards RAM
    /// (balloon, virtio-mem), the one way QEMU would punch holes into it.
    RestoredFrom(PathBuf),
}

impl GuestMemory {
    /// Whether migrations must skip the RAM (`x-ignore-shared`): it is in the file.
    pub fn in_file(&self) -> bool {
        !matches!(self, GuestMemory::Anonymous)
    }
}

/// The memory backend's id; the RAM block carries it, so a save and its restores must agree.
const MEMORY_BACKEND_ID: &str = "shoesvz-ram";

/// The kernel command line: fast-boot arguments, the host TSC, the machine id, the
/// template's and the operator's extras.
pub fn kernel_cmdline(tsc_khz: Option<u64>, uuid: uuid::Uuid, extras: &[&str]) -> String {
    let mut args = BASE_KERNEL_ARGS.to_string();
    if let Some(khz) = tsc_khz {
        args.push_str(&format!(" tsc_early_khz={khz}"));
    }
    args.push_str(&format!(" shoesvz.machine_id={uuid}"));
    for extra in extras.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        args.push(' ');
        args.push_str(extra);
    }
    args
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn text(path: &Path) -> Result<&str, CmdlineError> {
    path.to_str()
        .ok_or_else(|| CmdlineError::NotUtf8(path.to_path_buf()))
}

pub fn build_args(spec: &MachineSpec) -> Result<Vec<OsString>, CmdlineError> {
    if text(&spec.qmp_socket)?.len() > 107 {
        return Err(CmdlineError::SocketPathTooLong(spec.qmp_socket.clone()));
    }
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &escape(&format!("shoes-vz-{}", spec.name))]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    let machine = match &spec.memory {
        GuestMemory::Anonymous => MACHINE.to_string(),
        GuestMemory::SavedTo(_) | GuestMemory::RestoredFrom(_) => {
            format!("{MACHINE},memory-backend={MEMORY_BACKEND_ID}")
        }
    };
    push(&[
        "-M",
        &machine,
        "-accel",
        spec.accel.as_str(),
        "-cpu",
        spec.accel.cpu_model(),
    ]);
    push(&[
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &spec.memory_mib.to_string(),
    ]);
    let memory_file = match &spec.memory {
        GuestMemory::Anonymous => None,
        GuestMemory::SavedTo(file) => Some((file, "on")),
        GuestMemory::RestoredFrom(file) => Some((file, "off")),
    };
    if let Some((file, share)) = memory_file {
        let backend = format!(
            "memory-backend-file,id={MEMORY_BACKEND_ID},size={}M,mem-path={},share={share}",
            spec.memory_mib,
            escape(text(file)?)
        );
        push(&["-object", &backend]);
    }
    push(&["-uuid", &spec.uuid.to_string()]);
    push(&["-kernel", text(&spec.kernel)?]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", text(initrd)?]);
    }
    push(&["-append", &spec.kernel_args]);
    let console = format!("file,id=console,path={}", escape(text(&spec.console_log)?));
    push(&["-chardev", &console, "-serial", "chardev:console"]);
    let qmp = format!(
        "unix:{},server=on,wait=off",
        escape(text(&spec.qmp_socket)?)
    );
    push(&["-qmp", &qmp, "-pidfile", text(&spec.pid_file)?]);

    let forwards: String = [GUEST_SSH_PORT, GUEST_AGENT_PORT]
        .iter()
        .map(|port| format!(",hostfwd=tcp:127.0.0.1:0-:{port}"))
        .collect();
    push(&["-netdev", &format!("user,id=net0{forwards}")]);
    let mac = format_mac(spec.mac);
    push(&[
        "-device",
        &format!("virtio-net-device,netdev=net0,mac={mac}"),
    ]);
    let drives = spec
        .disks
        .iter()
        .map(|disk| (disk, false))
        .chain(spec.config_disk.iter().map(|disk| (disk, true)));
    for (index, (disk, readonly)) in drives.enumerate() {
        let mut drive = format!(
            "file={},if=none,id=disk{index},format=raw,cache=writeback",
            escape(text(disk)?)
        );
        if readonly {
            drive.push_str(",readonly=on");
        } else {
            drive.push_str(",discard=unmap");
        }
        push(&["-drive", &drive]);
        push(&["-device", &format!("virtio-blk-device,drive=disk{index}")]);
    }
    push(&["-device", "virtio-rng-device"]);
    if let Some(state) = &spec.incoming {
        // A RAM file's state loads only with `x-ignore-shared`, which QMP sets before
        // `migrate-incoming` (see `super::state::incoming_from_file`).
        let incoming = match &spec.memory {
            GuestMemory::RestoredFrom(_) => "defer".to_string(),
            _ => incoming_uri(state)?,
        };
        push(&["-incoming", &incoming]);
    }
    Ok(args.into_iter().map(OsString::from).collect())
}

/// `exec:cat 'STATE'`: QEMU runs it through `/bin/sh -c`, so the path is single-quoted.
pub fn incoming_uri(state: &Path) -> Result<String, CmdlineError> {
    Ok(format!("exec:cat {}", shell_quote(state)?))
}

/// `exec:cat > 'STATE'`, the target of a `migrate` that saves a VM's state.
pub fn outgoing_uri(state: &Path) -> Result<String, CmdlineError> {
    Ok(format!("exec:cat > {}", shell_quote(state)?))
}

fn shell_quote(path: &Path) -> Result<String, CmdlineError> {
    let path_text = text(path)?;
    if path_text.contains('\'') {
        return Err(CmdlineError::Quote(path.to_path_buf()));
    }
    Ok(format!("'{path_text}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bundle: &Path) -> MachineSpec {
        MachineSpec {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Tcg,
            name: "r1".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: PathBuf::from("/t/vmlinux"),
            initrd: Some(PathBuf::from("/t/initrd.img")),
            kernel_args: "console=ttyS0".into(),
            uuid: uuid::Uuid::nil(),
            mac: [0x02, 0, 0, 0, 0, 1],
            disks: vec![bundle.join("Disk.img")],
            config_disk: Some(bundle.join("config.img")),
            qmp_socket: bundle.join("qmp.sock"),
            pid_file: bundle.join("qemu.pid"),
            console_log: bundle.join("console.log"),
            incoming: None,
            memory: GuestMemory::Anonymous,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn builds_a_microvm_with_forwards_disks_and_a_read_only_config_disk() {
        let args = strings(build_args(&spec(Path::new("/r/x.bundle"))).expect("args"));
        assert_eq!(value_after(&args, "-M"), [MACHINE]);
        assert_eq!(value_after(&args, "-accel"), ["tcg"]);
        assert_eq!(value_after(&args, "-cpu"), ["max"]);
        assert_eq!(value_after(&args, "-smp"), ["2"]);
        assert_eq!(value_after(&args, "-m"), ["512"]);
        assert!(args.contains(&"-no-reboot".to_string()));
        assert_eq!(
            value_after(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=tcp:127.0.0.1:0-:8080"]
        );
        assert_eq!(
            value_after(&args, "-drive"),
            [
                "file=/r/x.bundle/Disk.img,if=none,id=disk0,format=raw,cache=writeback,discard=unmap",
                "file=/r/x.bundle/config.img,if=none,id=disk1,format=raw,cache=writeback,readonly=on",
            ]
        );
        assert!(value_after(&args, "-device")
            .contains(&"virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"));
        assert_eq!(value_after(&args, "-pidfile"), ["/r/x.bundle/qemu.pid"]);
        assert_eq!(
            value_after(&args, "-qmp"),
            ["unix:/r/x.bundle/qmp.sock,server=on,wait=off"]
        );
        assert!(value_after(&args, "-incoming").is_empty());
    }

    #[test]
    fn commas_are_escaped_and_unusable_paths_refused() {
        let mut s = spec(Path::new("/r/a,b.bundle"));
        s.incoming = Some(PathBuf::from("/w/state bin"));
        let args = strings(build_args(&s).expect("args"));
        assert!(value_after(&args, "-drive")[0].starts_with("file=/r/a,,b.bundle/Disk.img,"));
        assert_eq!(value_after(&args, "-incoming"), ["exec:cat '/w/state bin'"]);
        s.incoming = Some(PathBuf::from("/w/it's"));
        assert!(matches!(build_args(&s), Err(CmdlineError::Quote(_))));
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        let s = spec(&long);
        assert!(matches!(
            build_args(&s),
            Err(CmdlineError::SocketPathTooLong(_))
        ));
        assert_eq!(
            outgoing_uri(Path::new("/w/s")).expect("uri"),
            "exec:cat > '/w/s'"
        );
    }

    #[test]
    fn a_ram_file_is_shared_while_warming_and_private_when_restored() {
        let mut s = spec(Path::new("/r/x.bundle"));
        s.memory = GuestMemory::SavedTo(PathBuf::from("/w/out/ram.bin"));
        let args = strings(build_args(&s).expect("args"));
        assert_eq!(
            value_after(&args, "-M"),
            [format!("{MACHINE},memory-backend=shoesvz-ram")]
        );
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-file,id=shoesvz-ram,size=512M,mem-path=/w/out/ram.bin,share=on"]
        );
        assert_eq!(value_after(&args, "-m"), ["512"]);
        assert!(value_after(&args, "-incoming").is_empty());

        s.memory = GuestMemory::RestoredFrom(PathBuf::from("/t/warm,1/ram.bin"));
        s.incoming = Some(PathBuf::from("/t/warm,1/state.bin"));
        let args = strings(build_args(&s).expect("args"));
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-file,id=shoesvz-ram,size=512M,mem-path=/t/warm,,1/ram.bin,share=off"]
        );
        // The state is loaded over QMP once `x-ignore-shared` is on.
        assert_eq!(value_after(&args, "-incoming"), ["defer"]);
        assert!(s.memory.in_file() && !GuestMemory::Anonymous.in_file());
    }

    #[test]
    fn kernel_cmdline_carries_the_tsc_and_machine_id() {
        let uuid = uuid::Uuid::nil();
        let line = kernel_cmdline(Some(2_596_096), uuid, &["", " foo=1 "]);
        assert!(line.starts_with("console=ttyS0 "));
        assert!(line.contains(" tsc_early_khz=2596096 "));
        assert!(line.contains(&format!(" shoesvz.machine_id={uuid}")));
        assert!(line.ends_with(" foo=1"));
        assert!(!kernel_cmdline(None, uuid, &[]).contains("tsc_early_khz"));
    }
}
