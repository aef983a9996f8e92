//! Runner bundles: `<runners_dir>/<runner id>.bundle/` holding the template's disk files
//! cloned copy-on-write, a fresh machine identifier, the runner's SSH keys and
//! `RuntimeMetadata.json`. A half-built bundle is removed before the error is returned.
//! Nothing in a bundle is fsynced: it lives no longer than its runner, and an agent restarted
//! after a crash removes what its predecessor left.

use crate::config::CloneMode;
use crate::fsutil::replace_json;
use crate::template::Template;
use serde::{Deserialize, Serialize};
use shoes_vz_model::RunnerId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const BUNDLE_SUFFIX: &str = ".bundle";
pub const MACHINE_IDENTIFIER_FILE: &str = "MachineIdentifier.json";
pub const RUNTIME_METADATA_FILE: &str = "RuntimeMetadata.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "bundle {0} already exists; runner ids are never reused, so this is a leftover: remove it"
    )]
    Exists(PathBuf),
    #[error("cannot clone {src} to {dst} copy-on-write: put the templates and runners directories on the same APFS/XFS/btrfs volume, or set clone_mode = \"copy\" (slow, uses disk per runner)")]
    ReflinkUnsupported {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A machine identifier that is fresh for every runner and never reused. Backends derive
/// what they need from it (a VZ ECID, a QEMU SMBIOS UUID and MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineIdentifier {
    /// 64 random bits, rendered as 16 hex digits in JSON.
    #[serde(with = "hex_u64")]
    pub ecid: u64,
}

impl MachineIdentifier {
    pub fn generate() -> Self {
        // Zero is reserved by nobody but reads like "unset"; draw again.
        loop {
            let ecid: u64 = rand::random();
            if ecid != 0 {
                return Self { ecid };
            }
        }
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// What is known about a running bundle, for operators and external tools.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeMetadata {
    pub runner_id: String,
    pub runner_name: String,
    pub template: String,
    pub template_version: String,
    pub backend: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub created_at_ms: i64,
    pub ip_address: Option<String>,
    pub ssh_address: Option<String>,
    pub ssh_user: String,
    pub clone_ms: Option<u64>,
    pub boot_to_ip_ms: Option<u64>,
    pub boot_to_ssh_ms: Option<u64>,
    pub setup_ms: Option<u64>,
    /// Host work before the VM started (keys, clone, bundle files, config disk).
    pub prepare_ms: Option<u64>,
    /// The hypervisor starting or restoring the VM.
    pub vm_start_ms: Option<u64>,
    /// A restored guest's identity refresh, its notice included.
    pub refresh_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub disk_files: Vec<PathBuf>,
    pub machine_identifier: MachineIdentifier,
    pub clone_time: Duration,
}

impl Bundle {
    pub fn path_for(runners_dir: &Path, runner_id: &RunnerId) -> PathBuf {
        runners_dir.join(format!("{runner_id}{BUNDLE_SUFFIX}"))
    }

    pub fn write_runtime_metadata(&self, metadata: &RuntimeMetadata) -> Result<(), BundleError> {
        let path = self.dir.join(RUNTIME_METADATA_FILE);
        replace_json(&path, metadata).map_err(|source| BundleError::Io {
            action: "write",
            path,
            source,
        })
    }
}

/// Builds a bundle; blocking (file clones), so call it from `spawn_blocking`.
pub fn create(
    template: &Template,
    runners_dir: &Path,
    runner_id: &RunnerId,
    mode: CloneMode,
    machine_identifier: MachineIdentifier,
) -> Result<Bundle, BundleError> {
    let dir = Bundle::path_for(runners_dir, runner_id);
    std::fs::create_dir_all(runners_dir).map_err(|source| BundleError::Io {
        action: "create",
        path: runners_dir.to_path_buf(),
        source,
    })?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BundleError::Exists(dir))
        }
        Err(source) => {
            return Err(BundleError::Io {
                action: "create",
                path: dir,
                source,
            })
        }
    }
    let built = fill(template, &dir, mode, machine_identifier);
    if built.is_err() {
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::error!(bundle = %dir.display(), error = %error, "cannot remove a half-built bundle");
        }
    }
    built
}

fn fill(
    template: &Template,
    dir: &Path,
    mode: CloneMode,
    machine_identifier: MachineIdentifier,
) -> Result<Bundle, BundleError> {
    let started = Instant::now();
    let mut disk_files = Vec::new();
    for (name, src) in template.disk_paths() {
        let dst = dir.join(name);
        clone_file(&src, &dst, mode)?;
        disk_files.push(dst);
    }
    let clone_time = started.elapsed();
    let path = dir.join(MACHINE_IDENTIFIER_FILE);
    replace_json(&path, &machine_identifier).map_err(|source| BundleError::Io {
        action: "write",
        path,
        source,
    })?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        disk_files,
        machine_identifier,
        clone_time,
    })
}

/// Clones one file. `Reflink` never falls back: a silent full copy of a 64 GiB disk is the
/// failure operators most need to see.
pub fn clone_file(src: &Path, dst: &Path, mode: CloneMode) -> Result<(), BundleError> {
    match mode {
        CloneMode::Reflink => {
            reflink_copy::reflink(src, dst).map_err(|source| BundleError::ReflinkUnsupported {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
                source,
            })
        }
        CloneMode::Copy => {
            tracing::warn!(src = %src.display(), "clone_mode = \"copy\": copying the file's data (slow, no copy-on-write)");
            crate::fsutil::copy_sparse(src, dst).map_err(|source| BundleError::Io {
                action: "copy to",
                path: dst.to_path_buf(),
                source,
            })
        }
    }
}

/// Removes a bundle directory; a missing one is fine (removal is idempotent).
pub fn remove(dir: &Path) -> Result<(), BundleError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BundleError::Io {
            action: "remove",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Bundles present under `runners_dir` (directories named `*.bundle`).
pub fn list(runners_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runners_dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.to_string_lossy().ends_with(BUNDLE_SUFFIX))
        .collect();
    found.sort();
    found
}

/// Whether `dir` (or a file in it) supports reflink clones: probed once, e.g. by `dev`.
pub fn reflink_supported(dir: &Path) -> bool {
    let Ok(probe_dir) = tempfile::tempdir_in(dir) else {
        return false;
    };
    let src = probe_dir.path().join("probe-src");
    if std::fs::write(&src, b"shoes-vz reflink probe").is_err() {
        return false;
    }
    reflink_copy::reflink(&src, probe_dir.path().join("probe-dst")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template;

    fn setup() -> (tempfile::TempDir, Template) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir =
            template::ensure_test_template(&root.path().join("templates"), "t").expect("template");
        (root, template::load(&dir).expect("load"))
    }

    #[test]
    fn copy_mode_builds_a_full_bundle_with_a_fresh_identifier() {
        let (root, template) = setup();
        let runners = root.path().join("runners");
        let id = RunnerId::generate();
        let bundle = create(
            &template,
            &runners,
            &id,
            CloneMode::Copy,
            MachineIdentifier::generate(),
        )
        .expect("bundle");
        assert_eq!(bundle.dir, Bundle::path_for(&runners, &id));
        assert_eq!(
            std::fs::metadata(&bundle.disk_files[0])
                .expect("disk")
                .len(),
            template::TEST_DISK_BYTES
        );
        let written: MachineIdentifier = serde_json::from_slice(
            &std::fs::read(bundle.dir.join(MACHINE_IDENTIFIER_FILE)).expect("read"),
        )
        .expect("json");
        assert_eq!(written, bundle.machine_identifier);
        assert_eq!(list(&runners), vec![bundle.dir.clone()]);
        assert!(matches!(
            create(
                &template,
                &runners,
                &id,
                CloneMode::Copy,
                MachineIdentifier::generate()
            ),
            Err(BundleError::Exists(_))
        ));
        remove(&bundle.dir).expect("removed");
        remove(&bundle.dir).expect("removing twice is fine");
        assert!(list(&runners).is_empty());
    }

    #[test]
    fn failed_clone_leaves_no_half_built_bundle() {
        let (root, template) = setup();
        std::fs::remove_file(template.dir.join("Disk.img")).expect("break the template");
        let runners = root.path().join("runners");
        let result = create(
            &template,
            &runners,
            &RunnerId::generate(),
            CloneMode::Copy,
            MachineIdentifier::generate(),
        );
        assert!(result.is_err());
        assert!(list(&runners).is_empty(), "half-built bundle left behind");
    }

    #[test]
    fn reflink_mode_never_falls_back_to_a_copy() {
        let (root, template) = setup();
        let runners = root.path().join("runners");
        let id = RunnerId::generate();
        let result = create(
            &template,
            &runners,
            &id,
            CloneMode::Reflink,
            MachineIdentifier::generate(),
        );
        if reflink_supported(root.path()) {
            result.expect("reflink works on this filesystem");
        } else {
            eprintln!(
                "NOTE: {} has no reflink support; checking the refusal path",
                root.path().display()
            );
            let error = result.expect_err("reflink must not fall back");
            assert!(
                matches!(error, BundleError::ReflinkUnsupported { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("clone_mode"));
            assert!(list(&runners).is_empty());
        }
    }

    /// Needs a real reflink filesystem: `.ci/reflink-fs.sh` mounts one and CI exports its path.
    #[test]
    fn reflink_clones_share_extents_on_a_real_reflink_filesystem() {
        let Some(root) = std::env::var_os("SHOESVZ_TEST_REFLINK_DIR") else {
            shoes_vz_test_support::prerequisite_missing(
                "reflink clone test",
                "set SHOESVZ_TEST_REFLINK_DIR to a dir on XFS/btrfs (run .ci/reflink-fs.sh as root)",
            );
            return;
        };
        let root = tempfile::tempdir_in(root).expect("tempdir on the reflink fs");
        let templates = root.path().join("templates");
        let dir = template::ensure_test_template(&templates, "t").expect("template");
        // Real data, so there are extents to share.
        std::fs::write(dir.join("Disk.img"), vec![7u8; 4 * 1024 * 1024]).expect("write disk");
        let template = template::load(&dir).expect("load");
        let runners = root.path().join("runners");
        let bundle = create(
            &template,
            &runners,
            &RunnerId::generate(),
            CloneMode::Reflink,
            MachineIdentifier::generate(),
        )
        .expect("reflink clone works here");
        let clone = &bundle.disk_files[0];
        assert_eq!(
            std::fs::read(clone).expect("read clone"),
            std::fs::read(dir.join("Disk.img")).expect("read template")
        );
        let frag = std::process::Command::new("filefrag")
            .arg("-v")
            .arg(clone)
            .output()
            .expect("filefrag (e2fsprogs)");
        let report = String::from_utf8_lossy(&frag.stdout);
        assert!(
            report.contains("shared"),
            "clone does not share extents with the template:\n{report}"
        );
        // Writing to the clone leaves the template untouched (copy-on-write).
        std::fs::write(clone, b"changed").expect("write clone");
        assert_eq!(
            std::fs::read(dir.join("Disk.img")).expect("read template")[0],
            7
        );
    }

    #[test]
    fn machine_identifiers_are_fresh_and_round_trip_as_hex() {
        let a = MachineIdentifier::generate();
        let b = MachineIdentifier::generate();
        assert_ne!(a, b);
        let json = serde_json::to_string(&MachineIdentifier { ecid: 0xab }).expect("json");
        assert_eq!(json, r#"{"ecid":"00000000000000ab"}"#);
        let back: MachineIdentifier = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.ecid, 0xab);
    }
}
