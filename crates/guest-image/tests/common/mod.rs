//! Shared helpers of the real-VM tests: the test guest (built once per test binary and
//! cached under the target directory), runners on the qemu backend, SSH.
#![allow(dead_code)]

use russh::keys::PrivateKey;
use shoes_vz_agent::bundle::{self, Bundle, MachineIdentifier};
use shoes_vz_agent::config::{CloneMode, QemuAccel, QemuConfig};
use shoes_vz_agent::hypervisor::qemu::{process, QemuBackend, PID_FILE};
use shoes_vz_agent::hypervisor::{LinuxBootFiles, RestoreFrom, VmSpec};
use shoes_vz_agent::ssh::{self, SshSession, SshTarget};
use shoes_vz_agent::template::{self, Template};
use shoes_vz_guest_image::{build_test_guest, BuildOptions, DevKeys};
use shoes_vz_model::RunnerId;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Guest {
    pub template: Template,
    pub client_key: Arc<PrivateKey>,
    pub host_key: Arc<PrivateKey>,
    pub client_key_file: PathBuf,
}

pub fn tools_missing() -> Option<String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    };
    for tool in ["qemu-system-x86_64", "apt-get", "dpkg-deb", "mkfs.ext4"] {
        if !on_path(tool) {
            return Some(format!(
                "{tool} is not installed; run .ci/qemu-deps.sh (qemu-system-x86, apt, e2fsprogs)"
            ));
        }
    }
    None
}

/// Builds the guest once per test binary (cached across runs under the target dir).
pub fn guest() -> Option<&'static Guest> {
    static GUEST: OnceLock<Option<Guest>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            if let Some(reason) = tools_missing() {
                shoes_vz_test_support::prerequisite_missing_because(&reason);
                return None;
            }
            Some(build_guest())
        })
        .as_ref()
}

pub fn build_guest() -> Guest {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoes-vz-test-guest");
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let client_key_file = keys.join("client_ed25519");
    let client_key = load_or_make_key(&client_key_file);
    let host_key = load_or_make_key(&keys.join("host_ed25519"));
    let options = BuildOptions {
        dev_keys: Some(DevKeys {
            authorized_key: ssh::authorized_key_line(client_key.public_key()) + "\n",
            host_key_openssh: host_key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .expect("encode host key")
                .to_string(),
        }),
        ..BuildOptions::new(&root.join("templates"))
    };
    let started = Instant::now();
    let built = build_test_guest(&options).expect("the test guest builds");
    eprintln!(
        "test guest {} {} in {:?} ({})",
        built.name,
        built.version,
        started.elapsed(),
        if built.built { "built" } else { "cached" }
    );
    let template = template::load(&built.dir).expect("the built template is valid");
    assert_eq!(template.metadata.backend, "qemu");
    Guest {
        template,
        client_key: Arc::new(client_key),
        host_key: Arc::new(host_key),
        client_key_file,
    }
}

pub fn load_or_make_key(path: &Path) -> PrivateKey {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(key) = PrivateKey::from_openssh(&text) {
            return key;
        }
    }
    let key = ssh::generate_ed25519().expect("key");
    ssh::write_private_key_openssh(&key, path).expect("write key");
    key
}

pub fn backend() -> QemuBackend {
    // `auto`: TCG on this project's machines (VMs themselves), KVM on bare metal.
    QemuBackend::new(QemuConfig {
        accel: QemuAccel::Auto,
        ..QemuConfig::default()
    })
    .expect("qemu backend")
}

/// VMs boot one at a time: two cores emulating several guests would only slow each down.
/// (Each test has its own runtime; tokio's Mutex works across them.)
pub async fn one_vm_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub struct Runner {
    pub id: RunnerId,
    pub bundle: Bundle,
    pub spec: VmSpec,
    _runners: tempfile::TempDir,
}

pub fn runner(guest: &Guest) -> Runner {
    // Short path: QMP's Unix socket path must fit in 107 bytes.
    let runners = tempfile::Builder::new()
        .prefix("svz")
        .tempdir_in("/tmp")
        .expect("runners dir");
    let id = RunnerId::generate();
    let bundle = bundle::create(
        &guest.template,
        runners.path(),
        &id,
        CloneMode::Copy,
        MachineIdentifier::generate(),
    )
    .expect("bundle");
    let spec = VmSpec {
        runner_id: id.clone(),
        bundle_dir: bundle.dir.clone(),
        disk_files: bundle.disk_files.clone(),
        vcpus: 1,
        memory_mib: 256,
        machine_identifier: bundle.machine_identifier,
        ssh_user: guest.template.metadata.ssh_user.clone(),
        authorized_key: guest.client_key.public_key().clone(),
        guest_host_key: Arc::clone(&guest.host_key),
        linux_boot: LinuxBootFiles::from_template(&guest.template),
        config_disk: None,
        restore: RestoreFrom::from_template(&guest.template),
    };
    Runner {
        id,
        bundle,
        spec,
        _runners: runners,
    }
}

pub fn target(guest: &Guest, addr: std::net::SocketAddr) -> SshTarget {
    SshTarget {
        addr,
        user: "runner".into(),
        client_key: Arc::clone(&guest.client_key),
        expected_host_key: guest.host_key.public_key().clone(),
    }
}

pub async fn run(session: &SshSession, script: &str) -> String {
    let output = session
        .run_script(
            "sh -s",
            script.as_bytes(),
            Duration::from_secs(30),
            64 * 1024,
        )
        .await
        .expect("script ran");
    assert_eq!(
        output.exit_status,
        Some(0),
        "script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn console(bundle: &Path) -> String {
    std::fs::read_to_string(bundle.join("console.log")).unwrap_or_default()
}

pub fn pid_of(bundle: &Path) -> u32 {
    process::read_pid_file(&bundle.join(PID_FILE)).expect("QEMU wrote its pidfile")
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}
