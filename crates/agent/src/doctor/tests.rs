use super::decide::{self, parse_lease_time, parse_qemu_version};
use super::*;
use crate::config::QemuAccel;
use shoes_vz_vz::hardware::HardwareModel;
use shoes_vz_vz::version::MacosVersion;
use std::path::{Path, PathBuf};

/// Probes that report what a test says.
#[derive(Clone)]
struct Fake {
    qemu: Option<String>,
    kvm: bool,
    reflink: Result<bool, String>,
    macos: Option<MacosVersion>,
    apple_silicon: bool,
    entitlement: Result<bool, String>,
    root: bool,
    keychain: Keychain,
    volumes: (Option<u64>, Option<u64>),
    lease: Option<u64>,
    free: Option<u64>,
    model_supported: Option<bool>,
}

impl Fake {
    /// A Linux box where nothing is installed.
    fn bare_linux() -> Fake {
        Fake {
            qemu: None,
            kvm: false,
            reflink: Ok(false),
            macos: None,
            apple_silicon: false,
            entitlement: Ok(false),
            root: true,
            keychain: Keychain::Unknown,
            volumes: (None, None),
            lease: None,
            free: None,
            model_supported: None,
        }
    }

    fn ready_linux() -> Fake {
        Fake {
            qemu: Some("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u7)".into()),
            kvm: true,
            reflink: Ok(true),
            ..Fake::bare_linux()
        }
    }

    fn ready_mac() -> Fake {
        Fake {
            macos: Some(MacosVersion::new(26, 1, 0)),
            apple_silicon: true,
            entitlement: Ok(true),
            root: false,
            keychain: Keychain::Unlocked,
            volumes: (Some(7), Some(7)),
            lease: Some(600),
            free: Some(500 * 1024 * 1024 * 1024),
            model_supported: Some(true),
            ..Fake::bare_linux()
        }
    }
}

#[async_trait::async_trait]
impl Probes for Fake {
    fn qemu_version(&self, _binary: &Path) -> Option<String> {
        self.qemu.clone()
    }
    fn kvm_usable(&self) -> bool {
        self.kvm
    }
    fn reflink_works(&self, _dir: &Path) -> Result<bool, String> {
        self.reflink.clone()
    }
    fn macos_version(&self) -> Option<MacosVersion> {
        self.macos
    }
    fn apple_silicon(&self) -> bool {
        self.apple_silicon
    }
    fn has_virtualization_entitlement(&self, _binary: &Path) -> Result<bool, String> {
        self.entitlement.clone()
    }
    fn running_as_root(&self) -> bool {
        self.root
    }
    fn login_keychain(&self) -> Keychain {
        self.keychain
    }
    fn volume_id(&self, path: &Path) -> Option<u64> {
        if path.ends_with("templates") {
            self.volumes.0
        } else {
            self.volumes.1
        }
    }
    fn bootpd_lease_secs(&self) -> Option<u64> {
        self.lease
    }
    fn free_bytes(&self, _path: &Path) -> Option<u64> {
        self.free
    }
    async fn hardware_model_supported(&self, _model: &HardwareModel) -> Option<bool> {
        self.model_supported
    }
    fn current_exe(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/usr/local/bin/shoes-vz-agent"))
    }
}

fn config(root: &Path, backend: BackendKind) -> AgentConfig {
    AgentConfig {
        backend,
        templates_dir: root.join("templates"),
        runners_dir: root.join("runners"),
        ..AgentConfig::default()
    }
}

fn status_of<'a>(report: &'a Report, name: &str) -> &'a Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:?}"))
}

#[tokio::test]
async fn a_bare_linux_box_fails_each_qemu_prerequisite_with_its_fix() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = config(root.path(), BackendKind::Qemu);
    config.qemu.accel = QemuAccel::Kvm;
    let report = run(&config, &Fake::bare_linux()).await;
    assert!(!report.ok);
    assert_eq!(report.exit_code(), 1);
    for (name, fix) in [
        ("qemu", "apt-get install qemu-system-x86"),
        ("kvm", "modprobe kvm"),
        ("reflink", "reflink=1"),
        ("test guest", "shoes-vz template build-test-guest"),
    ] {
        let check = status_of(&report, name);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(
            check.fix.as_deref().unwrap_or("").contains(fix),
            "{check:?}"
        );
    }
    let text = report.to_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("qemu: FAIL: ") && l.contains(" — apt-get install")),
        "{text}"
    );
    assert!(text.contains("4 checks, 4 failed"), "{text}");
}

#[tokio::test]
async fn an_installed_linux_box_is_ok_and_exits_zero() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = config(root.path(), BackendKind::Qemu);
    crate::template::ensure_test_template(&config.templates_dir, "linux").expect("template");
    // ensure_test_template writes a `test` template; make it the qemu kind the check wants.
    let metadata = config
        .templates_dir
        .join("linux")
        .join("TemplateMetadata.json");
    let text = std::fs::read_to_string(&metadata).expect("metadata");
    std::fs::write(&metadata, text.replace("\"test\"", "\"qemu\"")).expect("rewrite");
    let report = run(&config, &Fake::ready_linux()).await;
    assert!(report.ok, "{}", report.to_text());
    assert_eq!(report.exit_code(), 0);
    for check in &report.checks {
        assert_eq!(check.status, Status::Ok, "{check:?}");
    }
    assert!(status_of(&report, "qemu").detail.contains("7.2.15"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["backend"], "qemu");
    assert_eq!(json["checks"][0]["status"], "ok");
}

#[tokio::test]
async fn without_kvm_auto_warns_and_copy_mode_warns_but_nothing_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = config(root.path(), BackendKind::Qemu);
    config.clone_mode = crate::config::CloneMode::Copy;
    let fake = Fake {
        kvm: false,
        reflink: Ok(false),
        ..Fake::ready_linux()
    };
    let report = run(&config, &fake).await;
    assert_eq!(status_of(&report, "kvm").status, Status::Warn);
    assert_eq!(status_of(&report, "reflink").status, Status::Warn);
    let old = Fake {
        qemu: Some("QEMU emulator version 6.2.0".into()),
        ..Fake::ready_linux()
    };
    let report = run(&config, &old).await;
    assert!(status_of(&report, "qemu").detail.contains("older than 7.2"));
}

#[tokio::test]
async fn on_linux_the_vz_backend_fails_with_what_to_do() {
    let root = tempfile::tempdir().expect("tempdir");
    let report = run(&config(root.path(), BackendKind::Vz), &Fake::bare_linux()).await;
    assert!(!report.ok);
    assert_eq!(status_of(&report, "macos").status, Status::Fail);
    assert!(status_of(&report, "macos")
        .fix
        .as_deref()
        .unwrap_or("")
        .contains("qemu"));
    assert_eq!(status_of(&report, "apple silicon").status, Status::Fail);
    assert_eq!(status_of(&report, "user").status, Status::Fail);
}

#[tokio::test]
async fn a_ready_mac_passes_and_each_mac_problem_is_named() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config = config(root.path(), BackendKind::Vz);
    config.notify.listen = "0.0.0.0:8081".parse().expect("addr");
    let report = run(&config, &Fake::ready_mac()).await;
    // No template yet: the one FAIL says how to get one.
    let templates = status_of(&report, "templates");
    assert_eq!(templates.status, Status::Fail);
    assert!(templates
        .fix
        .as_deref()
        .unwrap_or("")
        .contains("--ipsw latest"));
    let others: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name != "templates")
        .collect();
    assert!(others.iter().all(|c| c.status == Status::Ok), "{others:?}");

    let cases: Vec<(Fake, &str, Status)> = vec![
        (
            Fake {
                root: true,
                ..Fake::ready_mac()
            },
            "user",
            Status::Fail,
        ),
        (
            Fake {
                keychain: Keychain::Locked,
                ..Fake::ready_mac()
            },
            "login keychain",
            Status::Fail,
        ),
        (
            Fake {
                keychain: Keychain::Missing,
                ..Fake::ready_mac()
            },
            "login keychain",
            Status::Fail,
        ),
        (
            Fake {
                entitlement: Ok(false),
                ..Fake::ready_mac()
            },
            "entitlement",
            Status::Fail,
        ),
        (
            Fake {
                volumes: (Some(1), Some(2)),
                ..Fake::ready_mac()
            },
            "same volume",
            Status::Fail,
        ),
        (
            Fake {
                lease: None,
                ..Fake::ready_mac()
            },
            "bootpd lease",
            Status::Warn,
        ),
        (
            Fake {
                free: Some(1024),
                ..Fake::ready_mac()
            },
            "free disk",
            Status::Fail,
        ),
        (
            Fake {
                macos: Some(MacosVersion::new(12, 7, 0)),
                ..Fake::ready_mac()
            },
            "macos",
            Status::Fail,
        ),
        (
            Fake {
                apple_silicon: false,
                ..Fake::ready_mac()
            },
            "apple silicon",
            Status::Fail,
        ),
    ];
    for (fake, name, expected) in cases {
        let report = run(&config, &fake).await;
        let check = status_of(&report, name);
        assert_eq!(check.status, expected, "{check:?}");
        assert!(check.fix.is_some(), "{check:?} says what to do");
    }

    config.notify.listen = "127.0.0.1:0".parse().expect("addr");
    let report = run(&config, &Fake::ready_mac()).await;
    assert_eq!(status_of(&report, "notify").status, Status::Fail);
}

#[tokio::test]
async fn a_mac_template_is_checked_against_this_host() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = config(root.path(), BackendKind::Vz);
    let dir = config.templates_dir.join("macos-26");
    let info = shoes_vz_vz::template::TemplateInfo {
        name: "macos-26".into(),
        version: "1".into(),
        labels: vec![],
        ssh_user: "admin".into(),
        limits: shoes_vz_vz::template::TemplateLimits {
            max_vcpus: 4,
            max_memory_mib: 8192,
        },
        setup_shell: "bash -s".into(),
        guest_agent: None,
    };
    shoes_vz_vz::template::create_dir(&dir).expect("create");
    std::fs::write(dir.join("Disk.img"), b"disk").expect("disk");
    std::fs::write(dir.join("AuxiliaryStorage"), b"aux").expect("aux");
    let model = HardwareModel::from_bytes(b"model".to_vec()).expect("model");
    shoes_vz_vz::hardware::write_hardware_model(&dir, &model).expect("model");
    shoes_vz_vz::template::write_metadata(&dir, &info).expect("metadata");
    shoes_vz_vz::template::seal(&dir).expect("seal");

    let report = run(&config, &Fake::ready_mac()).await;
    assert_eq!(status_of(&report, "template macos-26").status, Status::Ok);
    let unsupported = Fake {
        model_supported: Some(false),
        ..Fake::ready_mac()
    };
    let report = run(&config, &unsupported).await;
    let check = status_of(&report, "template macos-26");
    assert_eq!(check.status, Status::Fail);
    assert!(check.fix.as_deref().unwrap_or("").contains("update macOS"));
}

#[test]
fn the_parsers_read_real_tool_output() {
    assert_eq!(
        parse_qemu_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u7)"),
        Some((7, 2))
    );
    assert_eq!(
        parse_qemu_version("QEMU emulator version 10.0.2"),
        Some((10, 0))
    );
    assert_eq!(parse_qemu_version("something else"), None);
    let defaults = "{\n    DHCPLeaseTimeSecs = 600;\n}\n";
    assert_eq!(parse_lease_time(defaults), Some(600));
    assert_eq!(parse_lease_time("{\n}\n"), None);
    let default = decide::lease_check(None);
    assert_eq!(default.status, Status::Warn);
    assert!(default.detail.contains("253 VMs a day"), "{default:?}");
}
