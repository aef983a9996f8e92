//! Builds the test guest template: resolve package versions, hash every input, reuse a
//! published version with the same hash, or build into a temporary directory and rename it
//! into place. A published version is never written again.

use crate::apt::{self, AptError, Package};
use crate::guest::{self, BakedKeys, GuestError, GuestInputs, DATA_DISK_LABEL, RUNNER_UID};
use crate::kernel::{self, KernelError};
use crate::modules::{self, ModulesError, GUEST_MODULES};
use crate::rootfs::RootfsError;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoes_vz_agent::fsutil::write_json_atomic;
use shoes_vz_agent::template::{LinuxBoot, TemplateLimits, TemplateMetadata, METADATA_FILE};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bump when the build's logic changes in a way the other inputs do not capture.
const BUILDER_REVISION: u32 = 2;
pub const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
pub const BUILD_INPUTS_FILE: &str = "BuildInputs.json";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initrd.img";
pub const DISK_FILE: &str = "Disk.img";
pub const DEFAULT_NAME: &str = "test-guest";
pub const DEFAULT_DISK_BYTES: u64 = 256 * 1024 * 1024;

/// Keys baked into a **test-only** image, so the guest can be reached over SSH without the
/// runner-agent and a config disk. Every runner of such an image shares them.
#[derive(Debug, Clone)]
pub struct DevKeys {
    /// An `authorized_keys` line for the runner user.
    pub authorized_key: String,
    /// The guest's host key, OpenSSH private key format (converted for dropbear at boot).
    pub host_key_openssh: String,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub templates_dir: PathBuf,
    /// Template name (`TemplateMetadata.name`); the directory is `<name>-<version>`.
    pub name: String,
    /// Downloaded `.deb` files, kept between builds.
    pub cache_dir: PathBuf,
    /// The guest daemon; `None` builds an image that never starts one (with `dev_keys`).
    pub runner_agent: Option<PathBuf>,
    /// The stand-in GitHub Actions runner binary (`shoes-vz-standin-runner`), cached as a
    /// runner tree where myshoes' setup script looks for one; `None`: no runner cached.
    pub standin_runner: Option<PathBuf>,
    pub dev_keys: Option<DevKeys>,
    /// Size of the runner's (sparse, ext4) disk.
    pub disk_bytes: u64,
    /// Build a new version even when one with the same inputs exists.
    pub force: bool,
    /// Keep older versions of the same name (an agent refuses two templates with one name).
    pub keep_old_versions: bool,
}

impl BuildOptions {
    pub fn new(templates_dir: &Path) -> Self {
        Self {
            templates_dir: templates_dir.to_path_buf(),
            name: DEFAULT_NAME.to_string(),
            cache_dir: templates_dir.join(".cache").join("debs"),
            runner_agent: None,
            standin_runner: None,
            dev_keys: None,
            disk_bytes: DEFAULT_DISK_BYTES,
            force: false,
            keep_old_versions: false,
        }
    }
}

/// What went into a build; its hash names the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildInputs {
    pub builder_revision: u32,
    /// Package name → version.
    pub packages: BTreeMap<String, String>,
    pub runner_agent_sha256: Option<String>,
    /// The stand-in runner binary, and its tree's scripts.
    #[serde(default)]
    pub standin_runner_sha256: Option<String>,
    #[serde(default)]
    pub standin_tree_sha256: Option<String>,
    pub scripts_sha256: String,
    pub dev_keys_sha256: Option<String>,
    pub disk_bytes: u64,
    pub hash: String,
}

/// A published template version.
#[derive(Debug, Clone)]
pub struct TemplateDir {
    pub dir: PathBuf,
    pub name: String,
    pub version: String,
    /// `false` when an existing version with the same inputs was reused.
    pub built: bool,
    pub inputs: BuildInputs,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid build options: {0}")]
    Options(String),
    #[error(transparent)]
    Apt(#[from] AptError),
    #[error("cannot extract the kernel")]
    Kernel(#[from] KernelError),
    #[error("cannot pick kernel modules")]
    Modules(#[from] ModulesError),
    #[error("cannot assemble the guest files")]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("the kernel package {0} has no vmlinuz or no lib/modules directory")]
    KernelLayout(String),
    #[error("mkfs.ext4 failed to make the runner disk ({0}); install e2fsprogs")]
    Mkfs(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// Builds (or reuses) the test guest template. Blocking: downloads, file I/O, subprocesses.
pub fn build_test_guest(options: &BuildOptions) -> Result<TemplateDir, BuildError> {
    let started = Instant::now();
    shoes_vz_model::ids::validate_name("template name", &options.name, 40)
        .map_err(|e| BuildError::Options(e.to_string()))?;
    if options.disk_bytes < 16 * 1024 * 1024 {
        return Err(BuildError::Options(
            "the disk must be at least 16 MiB".into(),
        ));
    }
    let packages = resolve_packages()?;
    let inputs = hash_inputs(options, &packages)?;
    std::fs::create_dir_all(&options.templates_dir)
        .map_err(io("create", &options.templates_dir))?;
    // One builder per templates directory and name: a second waits, then reuses the result.
    let _lock = lock(options)?;

    let base_version = inputs.hash[..12].to_string();
    if !options.force {
        if let Some(existing) = find_published(options, &inputs) {
            tracing::info!(template = %existing.display(), "test guest is up to date");
            let version = read_version(&existing).unwrap_or(base_version);
            prune(options, &existing);
            return Ok(TemplateDir {
                dir: existing,
                name: options.name.clone(),
                version,
                built: false,
                inputs,
                elapsed: started.elapsed(),
            });
        }
    }

    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&options.templates_dir)
        .map_err(io("create a build directory in", &options.templates_dir))?;
    let staging = work.path().join("staging");
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).map_err(io("create", &out))?;
    let all: Vec<Package> = packages.values().cloned().collect();
    for deb in apt::fetch(&all, &options.cache_dir)? {
        apt::extract(&deb, &staging)?;
    }
    tracing::debug!(elapsed = ?started.elapsed(), "packages fetched and extracted");
    let kernel_package = &packages[KERNEL_KEY];
    let (vmlinuz, module_dir) = kernel_files(&staging)
        .ok_or_else(|| BuildError::KernelLayout(kernel_package.name.clone()))?;
    let bzimage = std::fs::read(&vmlinuz).map_err(io("read", &vmlinuz))?;
    let vmlinux = kernel::extract_vmlinux(&bzimage)?;
    let kernel_path = out.join(KERNEL_FILE);
    std::fs::write(&kernel_path, vmlinux).map_err(io("write", &kernel_path))?;
    tracing::debug!(elapsed = ?started.elapsed(), "kernel extracted");

    let modules = modules::select(&module_dir, GUEST_MODULES)?;
    let dev_keys = options.dev_keys.as_ref().map(|keys| BakedKeys {
        authorized_keys: &keys.authorized_key,
        host_key_openssh: &keys.host_key_openssh,
    });
    let tree = guest::assemble(&GuestInputs {
        staging: &staging,
        module_dir: &module_dir,
        modules: &modules,
        runner_agent: options.runner_agent.as_deref(),
        standin_runner: options.standin_runner.as_deref(),
        dev_keys,
    })?;
    tree.write_cpio(&out.join(INITRD_FILE))?;
    tracing::debug!(elapsed = ?started.elapsed(), "initramfs written");
    make_disk(&out.join(DISK_FILE), options.disk_bytes)?;
    tracing::debug!(elapsed = ?started.elapsed(), "disk made");

    let (dir, version) = publish_target(options, &base_version);
    let metadata = TemplateMetadata {
        name: options.name.clone(),
        os: None,
        arch: None,
        version: version.clone(),
        backend: "qemu".to_string(),
        labels: vec!["linux".to_string(), "test-guest".to_string()],
        ssh_user: guest::RUNNER_USER.to_string(),
        disk_files: vec![DISK_FILE.to_string()],
        limits: TemplateLimits {
            max_vcpus: 8,
            max_memory_mib: 8192,
        },
        setup_shell: "sh -s".to_string(),
        linux_boot: Some(LinuxBoot {
            kernel: KERNEL_FILE.to_string(),
            initrd: Some(INITRD_FILE.to_string()),
            kernel_args: String::new(),
        }),
        saved_state: None,
        guest_agent: options
            .runner_agent
            .as_ref()
            .map(|_| shoes_vz_agent::template::GuestAgent {
                // Where myshoes' setup script installs and runs the runner.
                runner_dir: guest::RUNNER_DIR.to_string(),
            }),
    };
    for (file, value) in [
        (BUILD_INPUTS_FILE, serde_json::to_value(&inputs)),
        (METADATA_FILE, serde_json::to_value(&metadata)),
    ] {
        let path = out.join(file);
        let value = value.map_err(|e| BuildError::Options(e.to_string()))?;
        write_json_atomic(&path, &value).map_err(io("write", &path))?;
        // Templates are read by agents that may run as another user; nothing here is secret
        // (dev keys live only in test-only images).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(io("set permissions on", &path))?;
    }
    std::fs::rename(&out, &dir).map_err(io("publish the template as", &dir))?;
    tracing::info!(template = %dir.display(), elapsed = ?started.elapsed(), "test guest built");
    prune(options, &dir);
    Ok(TemplateDir {
        dir,
        name: options.name.clone(),
        version,
        built: true,
        inputs,
        elapsed: started.elapsed(),
    })
}

/// Key of the versioned kernel package in the resolved set.
const KERNEL_KEY: &str = "kernel";

/// The packages of one build, keyed by role (`kernel`) or name. Resolved level by level,
/// one `apt-cache` run per level.
fn resolve_packages() -> Result<BTreeMap<String, Package>, BuildError> {
    let mut resolved = BTreeMap::new();
    // libgcc-s1: Rust programs (the runner-agent) link libgcc_s. bash, jq and sudo (which
    // brings libpam-modules): for myshoes' setup script.
    let mut level: Vec<String> = [
        KERNEL_PACKAGE,
        "busybox-static",
        "dropbear-bin",
        "libgcc-s1",
        "bash",
        "jq",
        "sudo",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    while !level.is_empty() {
        let mut next = Vec::new();
        for package in apt::show(&level)? {
            if package.name == KERNEL_PACKAGE {
                // The metapackage only points at the versioned kernel package.
                let kernel = package
                    .depends
                    .iter()
                    .find(|d| d.starts_with("linux-image-"))
                    .ok_or_else(|| BuildError::KernelLayout(KERNEL_PACKAGE.to_string()))?;
                next.push(kernel.clone());
                continue;
            }
            if package.name.starts_with("linux-image-") {
                resolved.insert(KERNEL_KEY.to_string(), package);
                continue;
            }
            // Only shared-library packages are followed (Debian names them lib*, plus zlib1g).
            next.extend(
                package
                    .depends
                    .iter()
                    .filter(|d| d.starts_with("lib") || d.starts_with("zlib"))
                    .cloned(),
            );
            resolved.insert(package.name.clone(), package);
        }
        next.sort();
        next.dedup();
        next.retain(|name| !resolved.contains_key(name));
        level = next;
    }
    if !resolved.contains_key(KERNEL_KEY) {
        return Err(BuildError::KernelLayout(KERNEL_PACKAGE.to_string()));
    }
    Ok(resolved)
}

fn hash_inputs(
    options: &BuildOptions,
    packages: &BTreeMap<String, Package>,
) -> Result<BuildInputs, BuildError> {
    let runner_agent_sha256 = match &options.runner_agent {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(io("read the runner-agent binary", path))?;
            Some(hex::encode(Sha256::digest(&bytes)))
        }
        None => None,
    };
    let standin_runner_sha256 = match &options.standin_runner {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(io("read the stand-in runner binary", path))?;
            Some(hex::encode(Sha256::digest(&bytes)))
        }
        None => None,
    };
    let standin_tree_sha256 = options
        .standin_runner
        .as_ref()
        .map(|_| shoes_vz_standin_runner::layout::scripts_fingerprint());
    let mut scripts = Sha256::new();
    for (path, mode, text) in guest::SCRIPTS {
        scripts.update(format!("{path}\0{mode:o}\0{}\0", text.len()));
        scripts.update(text.as_bytes());
    }
    scripts.update(guest::RUNNER_AGENT_PATH);
    scripts.update(guest::runner_cache_dir());
    scripts.update(GUEST_MODULES.join(","));
    let dev_keys_sha256 = options.dev_keys.as_ref().map(|keys| {
        let mut h = Sha256::new();
        h.update(keys.authorized_key.as_bytes());
        h.update([0]);
        h.update(keys.host_key_openssh.as_bytes());
        hex::encode(h.finalize())
    });
    let mut inputs = BuildInputs {
        builder_revision: BUILDER_REVISION,
        packages: packages
            .values()
            .map(|p| (p.name.clone(), p.version.clone()))
            .collect(),
        runner_agent_sha256,
        standin_runner_sha256,
        standin_tree_sha256,
        scripts_sha256: hex::encode(scripts.finalize()),
        dev_keys_sha256,
        disk_bytes: options.disk_bytes,
        hash: String::new(),
    };
    let canonical = serde_json::to_vec(&inputs).map_err(|e| BuildError::Options(e.to_string()))?;
    inputs.hash = hex::encode(Sha256::digest(&canonical));
    Ok(inputs)
}

/// How long a build waits for another build of the same template to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

fn lock(options: &BuildOptions) -> Result<Flock<std::fs::File>, BuildError> {
    let path = options
        .templates_dir
        .join(format!(".{}.build-lock", options.name));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    let started = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((returned, Errno::EWOULDBLOCK)) if started.elapsed() < LOCK_WAIT => {
                file = returned;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, errno)) => {
                return Err(BuildError::Io {
                    action: "lock (another build may be stuck)",
                    path,
                    source: errno.into(),
                })
            }
        }
    }
}

/// A published `<name>-*` directory built from the same inputs.
fn find_published(options: &BuildOptions, inputs: &BuildInputs) -> Option<PathBuf> {
    versions_of(options).into_iter().find(|dir| {
        std::fs::read(dir.join(BUILD_INPUTS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<BuildInputs>(&bytes).ok())
            .is_some_and(|found| found.hash == inputs.hash)
            && dir.join(METADATA_FILE).is_file()
    })
}

/// Published directories of this template name, found by their metadata.
fn versions_of(options: &BuildOptions) -> Vec<PathBuf> {
    let prefix = format!("{}-", options.name);
    let Ok(entries) = std::fs::read_dir(&options.templates_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
                && p.join(BUILD_INPUTS_FILE).is_file()
        })
        .filter(|p| read_metadata(p).is_some_and(|m| m.name == options.name))
        .collect();
    dirs.sort();
    dirs
}

fn read_metadata(dir: &Path) -> Option<TemplateMetadata> {
    let bytes = std::fs::read(dir.join(METADATA_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_version(dir: &Path) -> Option<String> {
    read_metadata(dir).map(|m| m.version)
}

/// `<name>-<hash12>`, or `-2`, `-3`… when forced over an existing one.
fn publish_target(options: &BuildOptions, base: &str) -> (PathBuf, String) {
    let mut version = base.to_string();
    let mut n = 1;
    loop {
        let dir = options
            .templates_dir
            .join(format!("{}-{version}", options.name));
        if !dir.exists() {
            return (dir, version);
        }
        n += 1;
        version = format!("{base}-{n}");
    }
}

/// Removes other versions of this name: an agent refuses two templates with one name.
/// Runner bundles are clones, so removing a template never breaks a running runner.
fn prune(options: &BuildOptions, keep: &Path) {
    if options.keep_old_versions {
        return;
    }
    for dir in versions_of(options) {
        if dir != keep {
            tracing::info!(template = %dir.display(), "removing an older test guest version");
            if let Err(error) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(template = %dir.display(), error = %error, "cannot remove an older test guest version");
            }
        }
    }
}

fn kernel_files(staging: &Path) -> Option<(PathBuf, PathBuf)> {
    let boot = std::fs::read_dir(staging.join("boot")).ok()?;
    let vmlinuz = boot.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
    })?;
    let release = vmlinuz
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_string();
    let module_dir = staging.join("lib/modules").join(release);
    module_dir.is_dir().then_some((vmlinuz, module_dir))
}

/// A sparse ext4 image owned by the runner user, labelled for `rcS` to mount.
fn make_disk(path: &Path, bytes: u64) -> Result<(), BuildError> {
    let file = std::fs::File::create(path).map_err(io("create", path))?;
    file.set_len(bytes).map_err(io("size", path))?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", DATA_DISK_LABEL, "-E"])
        .arg(format!("root_owner={RUNNER_UID}:{RUNNER_UID}"))
        .arg(path)
        .output()
        .map_err(|e| BuildError::Mkfs(e.to_string()))?;
    if !output.status.success() {
        return Err(BuildError::Mkfs(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(root: &Path) -> BuildOptions {
        BuildOptions::new(&root.join("templates"))
    }

    fn packages() -> BTreeMap<String, Package> {
        let p = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            depends: vec![],
        };
        BTreeMap::from([
            (
                "kernel".to_string(),
                p("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1"),
            ),
            (
                "busybox-static".to_string(),
                p("busybox-static", "1:1.35.0-4"),
            ),
        ])
    }

    #[test]
    fn the_hash_changes_with_every_input() {
        let root = tempfile::tempdir().expect("tempdir");
        let base = options(root.path());
        let first = hash_inputs(&base, &packages()).expect("hash");
        assert_eq!(first, hash_inputs(&base, &packages()).expect("hash"));

        let mut newer = packages();
        if let Some(kernel) = newer.get_mut("kernel") {
            kernel.version = "6.1.2-1".into();
        }
        assert_ne!(first.hash, hash_inputs(&base, &newer).expect("hash").hash);

        let agent = root.path().join("agent");
        std::fs::write(&agent, b"v1").expect("write");
        let with_agent = BuildOptions {
            runner_agent: Some(agent.clone()),
            ..base.clone()
        };
        let v1 = hash_inputs(&with_agent, &packages()).expect("hash");
        std::fs::write(&agent, b"v2").expect("write");
        let v2 = hash_inputs(&with_agent, &packages()).expect("hash");
        assert_ne!(first.hash, v1.hash);
        assert_ne!(v1.hash, v2.hash);

        let standin = root.path().join("standin");
        std::fs::write(&standin, b"s1").expect("write");
        let with_standin = BuildOptions {
            standin_runner: Some(standin.clone()),
            ..base.clone()
        };
        let s1 = hash_inputs(&with_standin, &packages()).expect("hash");
        assert!(s1.standin_tree_sha256.is_some());
        std::fs::write(&standin, b"s2").expect("write");
        let s2 = hash_inputs(&with_standin, &packages()).expect("hash");
        assert_ne!(first.hash, s1.hash);
        assert_ne!(s1.hash, s2.hash);

        let keys = BuildOptions {
            dev_keys: Some(DevKeys {
                authorized_key: "ssh-ed25519 AAAA test".into(),
                host_key_openssh: "key".into(),
            }),
            ..base.clone()
        };
        assert_ne!(
            first.hash,
            hash_inputs(&keys, &packages()).expect("hash").hash
        );
        let bigger = BuildOptions {
            disk_bytes: base.disk_bytes * 2,
            ..base
        };
        assert_ne!(
            first.hash,
            hash_inputs(&bigger, &packages()).expect("hash").hash
        );
    }

    #[test]
    fn published_versions_are_found_by_hash_never_reused_by_force_and_pruned() {
        let root = tempfile::tempdir().expect("tempdir");
        let opts = options(root.path());
        let inputs = hash_inputs(&opts, &packages()).expect("hash");
        let base = inputs.hash[..12].to_string();
        let publish = |version: &str, inputs: &BuildInputs| {
            let dir = opts.templates_dir.join(format!("test-guest-{version}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let metadata = serde_json::json!({
                "name": "test-guest", "version": version, "backend": "qemu", "sshUser": "runner",
                "diskFiles": ["Disk.img"], "limits": {"maxVcpus": 1, "maxMemoryMib": 256}
            });
            write_json_atomic(&dir.join(METADATA_FILE), &metadata).expect("metadata");
            write_json_atomic(&dir.join(BUILD_INPUTS_FILE), inputs).expect("inputs");
            dir
        };
        assert!(find_published(&opts, &inputs).is_none());
        let old = publish(
            "0123456789ab",
            &BuildInputs {
                hash: "0".repeat(64),
                ..inputs.clone()
            },
        );
        let current = publish(&base, &inputs);
        assert_eq!(find_published(&opts, &inputs), Some(current.clone()));
        let (forced, version) = publish_target(&opts, &base);
        assert_eq!(version, format!("{base}-2"));
        assert_ne!(forced, current);
        prune(&opts, &current);
        assert!(!old.exists());
        assert!(current.exists());
    }
}
