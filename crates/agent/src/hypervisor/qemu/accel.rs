//! Host facts the command line needs: the accelerator and the TSC frequency.

use crate::config::QemuAccel;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `-cpu`: the host's CPU under KVM; every feature TCG can emulate otherwise.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// `auto` is KVM when `/dev/kvm` opens read-write (what QEMU needs) and this host is not
/// itself a VM, else TCG. Nested KVM is left to an explicit `accel = "kvm"`: where it was
/// tried (Debian 12, QEMU 7.2) the device opened but guests hung or QEMU aborted setting MSRs.
pub fn resolve(setting: QemuAccel) -> Accel {
    match setting {
        QemuAccel::Kvm => Accel::Kvm,
        QemuAccel::Tcg => Accel::Tcg,
        QemuAccel::Auto => {
            let nested = std::fs::read_to_string("/proc/cpuinfo")
                .map(|cpuinfo| runs_under_hypervisor(&cpuinfo))
                .unwrap_or(false);
            if kvm_usable(Path::new("/dev/kvm")) && !nested {
                Accel::Kvm
            } else {
                if nested {
                    tracing::info!(
                        "this host is a VM: using TCG (set qemu.accel = \"kvm\" to try nested KVM)"
                    );
                }
                Accel::Tcg
            }
        }
    }
}

/// The CPUID "hypervisor" bit, as `/proc/cpuinfo` shows it.
fn runs_under_hypervisor(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == "hypervisor"))
}

pub fn kvm_usable(device: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .is_ok()
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo`'s `cpu MHz` (the guest's TSC is the
/// host's). microvm guests need it as `tsc_early_khz=` or clock calibration hangs.
pub fn host_tsc_khz() -> Option<u64> {
    parse_cpu_mhz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    let khz = (mhz * 1000.0).round();
    (1.0..1e9).contains(&khz).then_some(khz as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_khz_comes_from_cpu_mhz() {
        let cpuinfo =
            "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.096\ncache size\t: 1 KB\n";
        assert_eq!(parse_cpu_mhz(cpuinfo), Some(2_596_096));
        assert_eq!(parse_cpu_mhz("processor\t: 0\n"), None);
        assert_eq!(parse_cpu_mhz("cpu MHz\t: fast\n"), None);
    }

    #[test]
    fn a_guest_cpu_is_recognized() {
        assert!(runs_under_hypervisor(
            "flags\t\t: fpu tsc hypervisor lahf_lm\n"
        ));
        assert!(!runs_under_hypervisor("flags\t\t: fpu tsc vmx lahf_lm\n"));
        assert!(!runs_under_hypervisor("processor\t: 0\n"));
    }

    #[test]
    fn explicit_settings_win_and_a_missing_device_is_not_usable() {
        assert_eq!(resolve(QemuAccel::Tcg), Accel::Tcg);
        assert_eq!(resolve(QemuAccel::Kvm), Accel::Kvm);
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!kvm_usable(&dir.path().join("kvm")));
    }
}
