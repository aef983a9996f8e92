//! The facts the doctor decides on, behind [`Probes`]: each probe only looks (runs a
//! read-only command, stats a file, asks the framework) and never decides.

use crate::hypervisor::qemu::accel;
use shoes_vz_vz::version::MacosVersion;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The login keychain of the user running the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keychain {
    Missing,
    Locked,
    Unlocked,
    /// `security` could not tell.
    Unknown,
}

/// Read-only facts about this machine.
#[async_trait::async_trait]
pub trait Probes: Send + Sync {
    /// `<binary> --version`'s first line, `None` when it cannot run.
    fn qemu_version(&self, binary: &Path) -> Option<String>;
    /// `/dev/kvm` opens read-write.
    fn kvm_usable(&self) -> bool;
    /// A copy-on-write clone works inside `dir` (`Err`: the directory cannot be used).
    fn reflink_works(&self, dir: &Path) -> Result<bool, String>;
    /// The host's macOS version (`None` off macOS).
    fn macos_version(&self) -> Option<MacosVersion>;
    /// Apple silicon, where macOS guests run.
    fn apple_silicon(&self) -> bool;
    /// Whether `binary` is signed and carries `com.apple.security.virtualization`.
    fn has_virtualization_entitlement(&self, binary: &Path) -> Result<bool, String>;
    fn running_as_root(&self) -> bool;
    fn login_keychain(&self) -> Keychain;
    /// The filesystem device id of `path` (same id: same volume).
    fn volume_id(&self, path: &Path) -> Option<u64>;
    /// bootpd's `DHCPLeaseTimeSecs`; `None` when unset (macOS's default 86,400 s applies).
    fn bootpd_lease_secs(&self) -> Option<u64>;
    /// Bytes free for unprivileged users on `path`'s volume.
    fn free_bytes(&self, path: &Path) -> Option<u64>;
    /// Whether this host's macOS supports `model` (`None`: cannot ask here).
    async fn hardware_model_supported(
        &self,
        model: &shoes_vz_vz::hardware::HardwareModel,
    ) -> Option<bool>;
    /// The running executable (its signature is what Virtualization.framework checks).
    fn current_exe(&self) -> Option<PathBuf>;
}

/// The probes of the real machine.
pub struct SystemProbes;

fn command_stdout(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait::async_trait]
impl Probes for SystemProbes {
    fn qemu_version(&self, binary: &Path) -> Option<String> {
        let output = Command::new(binary).arg("--version").output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .map(str::to_string)
    }

    fn kvm_usable(&self) -> bool {
        accel::kvm_usable(Path::new("/dev/kvm"))
    }

    fn reflink_works(&self, dir: &Path) -> Result<bool, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let probe = tempfile::tempdir_in(dir)
            .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        let source = probe.path().join("source");
        std::fs::write(&source, vec![1u8; 64 * 1024])
            .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        Ok(reflink_copy::reflink(&source, probe.path().join("clone")).is_ok())
    }

    fn macos_version(&self) -> Option<MacosVersion> {
        if !cfg!(target_os = "macos") {
            return None;
        }
        command_stdout("/usr/bin/sw_vers", &["-productVersion"])?
            .parse()
            .ok()
    }

    fn apple_silicon(&self) -> bool {
        cfg!(all(target_os = "macos", target_arch = "aarch64"))
    }

    fn has_virtualization_entitlement(&self, binary: &Path) -> Result<bool, String> {
        let path = binary.to_string_lossy();
        let output = Command::new("/usr/bin/codesign")
            .args(["-d", "--entitlements", "-", "--xml", path.as_ref()])
            .output()
            .map_err(|e| format!("cannot run codesign: {e}"))?;
        if !output.status.success() {
            return Ok(false);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.contains("com.apple.security.virtualization"))
    }

    fn running_as_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn login_keychain(&self) -> Keychain {
        let Some(home) = std::env::var_os("HOME") else {
            return Keychain::Unknown;
        };
        let keychain = Path::new(&home).join("Library/Keychains/login.keychain-db");
        if !keychain.exists() {
            return Keychain::Missing;
        }
        // `show-keychain-info` fails on a locked keychain without asking for a password
        // (stdin is not a terminal).
        match Command::new("/usr/bin/security")
            .arg("show-keychain-info")
            .arg(&keychain)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(output) if output.status.success() => Keychain::Unlocked,
            Ok(_) => Keychain::Locked,
            Err(_) => Keychain::Unknown,
        }
    }

    fn volume_id(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut probe = path;
        // The directory may not exist yet: its nearest existing parent decides the volume.
        loop {
            if let Ok(meta) = std::fs::metadata(probe) {
                return Some(meta.dev());
            }
            probe = probe.parent()?;
        }
    }

    fn bootpd_lease_secs(&self) -> Option<u64> {
        let text = command_stdout(
            "/usr/bin/defaults",
            &[
                "read",
                "/Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist",
                "bootpd",
            ],
        )?;
        super::decide::parse_lease_time(&text)
    }

    fn free_bytes(&self, path: &Path) -> Option<u64> {
        let mut probe = path;
        loop {
            if let Ok(stat) = nix::sys::statvfs::statvfs(probe) {
                #[allow(clippy::unnecessary_cast)] // the field types differ per platform
                return Some(stat.blocks_available() as u64 * stat.fragment_size() as u64);
            }
            probe = probe.parent()?;
        }
    }

    async fn hardware_model_supported(
        &self,
        model: &shoes_vz_vz::hardware::HardwareModel,
    ) -> Option<bool> {
        #[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
        {
            shoes_vz_vz::ffi::hardware_model_supported(model).ok()
        }
        #[cfg(not(any(target_os = "macos", feature = "vz-typecheck")))]
        {
            let _ = model;
            None
        }
    }

    fn current_exe(&self) -> Option<PathBuf> {
        std::env::current_exe().ok()
    }
}
