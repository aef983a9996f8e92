//! Facts → checks, per backend. Plain Rust: every rule here is unit-tested with fake probes.

use super::probes::{Keychain, Probes};
use super::Check;
use crate::config::{AgentConfig, CloneMode, QemuAccel};
use shoes_vz_vz::version::{self, HostFeature, MacosVersion};
use std::path::Path;

/// QEMU releases older than this lack what the qemu backend uses (microvm with PVH boot and
/// the QMP commands of its warm path).
pub const MIN_QEMU: (u32, u32) = (7, 2);
/// macOS's bootpd lease when none is configured.
pub const DEFAULT_LEASE_SECS: u64 = 86_400;
/// Addresses in the NAT's /24 (bootpd hands out .2-.254).
const NAT_ADDRESSES: u64 = 253;
/// Below this much free space on the runners' volume a runner may not even boot.
const MIN_FREE_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// The test backend needs nothing but writable directories.
pub fn test_backend(config: &AgentConfig, probes: &dyn Probes) -> Vec<Check> {
    vec![runners_dir_writable(config, probes)]
}

fn runners_dir_writable(config: &AgentConfig, probes: &dyn Probes) -> Check {
    match probes.reflink_works(&config.runners_dir) {
        Ok(_) => Check::ok(
            "runners directory",
            format!("{} is writable", config.runners_dir.display()),
        ),
        Err(problem) => Check::fail(
            "runners directory",
            problem,
            "create it and give it to the agent's user, or set runners_dir",
        ),
    }
}

/// Linux guests under QEMU: qemu and its version, KVM, reflink on the runners directory, a
/// qemu template (the test guest).
pub fn qemu(config: &AgentConfig, probes: &dyn Probes) -> Vec<Check> {
    let binary = &config.qemu.binary;
    let mut checks =
        vec![match probes.qemu_version(binary) {
        None => Check::fail(
            "qemu",
            format!("{} does not run", binary.display()),
            "apt-get install qemu-system-x86 qemu-utils (see .ci/qemu-deps.sh), or set qemu.binary",
        ),
        Some(line) => match parse_qemu_version(&line) {
            Some(found) if found >= MIN_QEMU => Check::ok("qemu", line),
            Some(found) => Check::fail(
                "qemu",
                format!("QEMU {}.{} is older than {}.{}", found.0, found.1, MIN_QEMU.0, MIN_QEMU.1),
                "install a newer qemu-system-x86 (Debian 12 or later ships one)",
            ),
            None => Check::warn(
                "qemu",
                format!("cannot read a version from {line:?}"),
                "check that qemu.binary is qemu-system-x86_64",
            ),
        },
    }];
    let kvm = probes.kvm_usable();
    checks.push(match (kvm, config.qemu.accel) {
        (true, QemuAccel::Tcg) => Check::ok("kvm", "usable, but qemu.accel = tcg uses software emulation"),
        (true, _) => Check::ok("kvm", "/dev/kvm opens read-write"),
        (false, QemuAccel::Kvm) => Check::fail(
            "kvm",
            "/dev/kvm cannot be opened read-write, and qemu.accel = kvm",
            "load kvm (modprobe kvm_intel or kvm_amd), add the agent's user to group kvm, or set qemu.accel = \"auto\"",
        ),
        (false, _) => Check::warn(
            "kvm",
            "/dev/kvm cannot be opened read-write: guests run under TCG (software, ~10x slower)",
            "load kvm (modprobe kvm_intel or kvm_amd) and add the agent's user to group kvm",
        ),
    });
    checks.push(reflink(config, probes));
    checks.push(qemu_template(config));
    checks
}

fn reflink(config: &AgentConfig, probes: &dyn Probes) -> Check {
    let dir = &config.runners_dir;
    match (probes.reflink_works(dir), config.clone_mode) {
        (Ok(true), _) => Check::ok("reflink", format!("{} clones copy-on-write", dir.display())),
        (Ok(false), CloneMode::Reflink) => Check::fail(
            "reflink",
            format!("{} cannot clone copy-on-write, and clone_mode = reflink", dir.display()),
            "put templates_dir and runners_dir on one XFS (mkfs.xfs -m reflink=1), btrfs or APFS volume, or set clone_mode = \"copy\" (slow)",
        ),
        (Ok(false), CloneMode::Copy) => Check::warn(
            "reflink",
            format!("{} cannot clone copy-on-write: every runner copies its template", dir.display()),
            "put templates_dir and runners_dir on one XFS (reflink=1), btrfs or APFS volume",
        ),
        (Err(problem), _) => Check::fail(
            "reflink",
            problem,
            "create runners_dir and give it to the agent's user, or set runners_dir",
        ),
    }
}

fn qemu_template(config: &AgentConfig) -> Check {
    match crate::template::load_all(&config.templates_dir, "qemu") {
        Ok(templates) if !templates.is_empty() => Check::ok(
            "test guest",
            format!(
                "qemu templates: {}",
                templates.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        _ => Check::fail(
            "test guest",
            format!("no qemu template in {}", config.templates_dir.display()),
            format!(
                "shoes-vz template build-test-guest --templates-dir {}",
                config.templates_dir.display()
            ),
        ),
    }
}

/// `QEMU emulator version 7.2.15 (Debian …)` → (7, 2).
pub fn parse_qemu_version(line: &str) -> Option<(u32, u32)> {
    let rest = line.split("version").nth(1)?.trim_start();
    let number = rest.split_whitespace().next()?;
    let mut parts = number.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `DHCPLeaseTimeSecs = 600;` in `defaults read …InternetSharing.default.plist bootpd`.
pub fn parse_lease_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "DHCPLeaseTimeSecs")
            .then(|| value.trim().trim_end_matches(';').trim().parse().ok())
            .flatten()
    })
}

/// macOS guests under Virtualization.framework.
pub async fn vz(config: &AgentConfig, probes: &dyn Probes) -> Vec<Check> {
    let mut checks = Vec::new();
    let macos = probes.macos_version();
    checks.push(macos_check(macos));
    checks.push(if probes.apple_silicon() {
        Check::ok("apple silicon", "arm64")
    } else {
        Check::fail(
            "apple silicon",
            "this is not a Mac with Apple silicon",
            "run the vz backend on an M-series Mac; use qemu or test elsewhere",
        )
    });
    checks.push(match probes.current_exe() {
        None => Check::warn(
            "entitlement",
            "cannot find this executable",
            "check with: codesign -d --entitlements - <binary>",
        ),
        Some(exe) => entitlement_check(&exe, probes.has_virtualization_entitlement(&exe)),
    });
    checks.push(if probes.running_as_root() {
        Check::fail(
            "user",
            "running as root: since macOS 15 VMs started as root fail (\"Failed to generate keypair\", VZ error -9; tart#921)",
            "run as the normal user that owns the VMs (shoes-vz-agent install --user NAME writes UserName into the LaunchDaemon)",
        )
    } else {
        Check::ok("user", "not root")
    });
    checks.push(keychain_check(probes.login_keychain()));
    checks.push(same_volume_check(
        &config.templates_dir,
        &config.runners_dir,
        probes.volume_id(&config.templates_dir),
        probes.volume_id(&config.runners_dir),
    ));
    checks.push(lease_check(probes.bootpd_lease_secs()));
    let templates = crate::hypervisor::vz::check_templates(&config.templates_dir);
    let templates = match templates {
        Ok(templates) => templates,
        Err(error) => {
            checks.push(Check::fail(
                "templates",
                crate::error_chain(&error),
                "fix or remove the template (docs/macos.md §3)",
            ));
            Vec::new()
        }
    };
    let largest_disk = templates
        .iter()
        .filter_map(|t| std::fs::metadata(t.dir.join(shoes_vz_vz::plan::DISK_FILE)).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    checks.push(disk_check(
        probes.free_bytes(&config.runners_dir),
        largest_disk.saturating_mul(u64::from(shoes_vz_vz::limits::cap_capacity(
            config.capacity.max_runners,
        ))),
    ));
    if templates.is_empty() {
        checks.push(Check::fail(
            "templates",
            format!("no vz template in {}", config.templates_dir.display()),
            "shoes-vz template create --ipsw latest --name macos, or shoes-vz template import-tart ~/.tart/vms/NAME --name macos",
        ));
    }
    for template in &templates {
        let name = format!("template {}", template.metadata.name);
        let supported = probes
            .hardware_model_supported(&template.hardware_model)
            .await;
        let format_ok = macos.map(|host| template.options.disk_format.check_host(host));
        checks.push(match (supported, format_ok) {
            (_, Some(Err(error))) => Check::fail(&name, error.to_string(), "see the message"),
            (Some(false), _) => Check::fail(
                &name,
                "this host's macOS does not support its hardware model",
                "update macOS on this host, or remove the template",
            ),
            (Some(true), _) => Check::ok(&name, "hardware model supported here"),
            (None, _) => Check::warn(
                &name,
                "cannot ask Virtualization.framework about its hardware model here",
                "run shoes-vz doctor on the Mac that serves it",
            ),
        });
    }
    checks.push(notify_check(config));
    checks
}

pub fn macos_check(macos: Option<MacosVersion>) -> Check {
    match macos {
        None => Check::fail(
            "macos",
            "this is not macOS",
            "run the vz backend on a Mac; use backend = \"qemu\" or \"test\" here",
        ),
        Some(v) if !version::supports(HostFeature::MacosGuests, v) => Check::fail(
            "macos",
            format!("macOS {v} cannot run macOS guests"),
            "upgrade to macOS 13 or later (26 recommended)",
        ),
        Some(v) if !version::supports(HostFeature::SavedState, v) => Check::warn(
            "macos",
            format!("macOS {v}: no Saved State warm slots (macOS 14+)"),
            "upgrade to macOS 26 (shoes-vz is tuned for it)",
        ),
        Some(v) if version::below_design_target(v) => Check::warn(
            "macos",
            format!("macOS {v} works; shoes-vz is tuned for macOS 26"),
            "upgrade to macOS 26 when convenient",
        ),
        Some(v) => Check::ok("macos", format!("macOS {v}")),
    }
}

pub fn entitlement_check(exe: &Path, found: Result<bool, String>) -> Check {
    let sign = "packaging/macos/sign-agent.sh (codesign -s - --entitlements packaging/macos/shoes-vz-agent.entitlements BINARY)";
    match found {
        Ok(true) => Check::ok(
            "entitlement",
            format!("{} has com.apple.security.virtualization", exe.display()),
        ),
        Ok(false) => Check::fail(
            "entitlement",
            format!(
                "{} is unsigned or lacks com.apple.security.virtualization",
                exe.display()
            ),
            sign,
        ),
        Err(problem) => Check::fail("entitlement", problem, sign),
    }
}

pub fn keychain_check(keychain: Keychain) -> Check {
    let how = "log this user in (System Settings → Users & Groups → Automatically log in as) or unlock it: security unlock-keychain ~/Library/Keychains/login.keychain-db (docs/macos.md §5)";
    match keychain {
        Keychain::Unlocked => Check::ok("login keychain", "present and unlocked"),
        Keychain::Locked => Check::fail(
            "login keychain",
            "locked: since macOS 15 Virtualization.framework needs it unlocked to start VMs (tart#921, #1075)",
            how,
        ),
        Keychain::Missing => Check::fail(
            "login keychain",
            "this user has no login keychain (never logged in graphically?)",
            how,
        ),
        Keychain::Unknown => Check::warn(
            "login keychain",
            "cannot tell whether it is unlocked",
            "check with: security show-keychain-info ~/Library/Keychains/login.keychain-db",
        ),
    }
}

pub fn same_volume_check(
    templates: &Path,
    runners: &Path,
    templates_volume: Option<u64>,
    runners_volume: Option<u64>,
) -> Check {
    match (templates_volume, runners_volume) {
        (Some(a), Some(b)) if a == b => Check::ok(
            "same volume",
            "templates_dir and runners_dir share a volume (clones are copy-on-write)",
        ),
        (Some(_), Some(_)) => Check::fail(
            "same volume",
            format!(
                "{} and {} are on different volumes: clonefile cannot share their blocks",
                templates.display(),
                runners.display()
            ),
            "put templates_dir and runners_dir on the same APFS volume",
        ),
        _ => Check::fail(
            "same volume",
            "templates_dir or runners_dir (or every parent) does not exist",
            "create both on the same APFS volume (default /opt/myshoes/vz)",
        ),
    }
}

/// bootpd's lease time: at the 86,400 s default about 253 VMs a day exhaust the NAT's /24
/// and bootpd hands out expired addresses again (orchard#162, tart#1097).
pub fn lease_check(configured: Option<u64>) -> Check {
    let secs = configured.unwrap_or(DEFAULT_LEASE_SECS);
    let fix = "sudo defaults write /Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist bootpd -dict DHCPLeaseTimeSecs -int 600 (docs/macos.md §2)";
    if secs >= DEFAULT_LEASE_SECS {
        Check::warn(
            "bootpd lease",
            format!(
                "{secs} s: about {} VMs a day exhaust the NAT's addresses",
                NAT_ADDRESSES * DEFAULT_LEASE_SECS / secs
            ),
            fix,
        )
    } else {
        Check::ok("bootpd lease", format!("{secs} s"))
    }
}

/// Free space on the runners' volume against what the runners may write (each may fill its
/// whole sparse disk).
pub fn disk_check(free: Option<u64>, worst_case: u64) -> Check {
    const GIB: u64 = 1024 * 1024 * 1024;
    let Some(free) = free else {
        return Check::fail(
            "free disk",
            "cannot read the runners volume's free space",
            "create runners_dir",
        );
    };
    if free < MIN_FREE_BYTES {
        Check::fail(
            "free disk",
            format!("{} GiB free on the runners' volume", free / GIB),
            "free at least 20 GiB (old runner bundles, caches) or move runners_dir",
        )
    } else if free < worst_case {
        Check::warn(
            "free disk",
            format!(
                "{} GiB free; the runners may write up to {} GiB",
                free / GIB,
                worst_case / GIB
            ),
            "free more space or lower capacity.max_runners",
        )
    } else {
        Check::ok("free disk", format!("{} GiB free", free / GIB))
    }
}

/// The notify listener must be reachable from the NAT bridge (192.168.64.1).
pub fn notify_check(config: &AgentConfig) -> Check {
    let listen = config.notify.listen;
    let ip = listen.ip();
    let bridge = crate::hypervisor::vz::HOST_ADDRESS_FOR_GUESTS;
    if ip.is_unspecified()
        || ip == std::net::IpAddr::V4(bridge)
        || config.notify.guest_url.is_some()
    {
        Check::ok(
            "notify",
            format!("listening on {listen}, reachable from guests"),
        )
    } else {
        Check::fail(
            "notify",
            format!("notify.listen = {listen} is not reachable from the NAT bridge ({bridge})"),
            "set notify.listen = \"0.0.0.0:8081\" and let only 192.168.64.0/24 in (docs/macos.md §5a)",
        )
    }
}
