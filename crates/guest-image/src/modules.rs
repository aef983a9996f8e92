//! Picks the kernel modules the guest loads at boot, with their dependencies (read from each
//! module's `.modinfo`, since a package's tree has no `modules.dep` before `depmod` runs).

use crate::elf;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What the guest needs: virtio-mmio devices (disk, network, entropy), the FAT config disk,
/// and the ACPI power button (`system_powerdown`) read through evdev by busybox acpid.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "evdev",
    "button",
];

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("cannot read kernel modules under {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module {0} is neither built in nor shipped by the kernel package")]
    Missing(String),
    #[error("kernel module {path} is unreadable")]
    Elf {
        path: PathBuf,
        #[source]
        source: elf::ElfError,
    },
}

/// Module files (relative to `module_dir`, i.e. `lib/modules/<release>`) in load order.
pub fn select(module_dir: &Path, wanted: &[&str]) -> Result<Vec<String>, ModulesError> {
    let builtin = read_builtin(module_dir)?;
    let mut available = BTreeMap::new();
    index(module_dir, &module_dir.join("kernel"), &mut available)?;
    let mut ordered = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(
            module_dir,
            &normalize(name),
            &builtin,
            &available,
            &mut seen,
            &mut ordered,
        )?;
    }
    Ok(ordered)
}

/// Depth-first, dependencies before dependents.
fn visit(
    module_dir: &Path,
    name: &str,
    builtin: &BTreeSet<String>,
    available: &BTreeMap<String, String>,
    seen: &mut BTreeSet<String>,
    ordered: &mut Vec<String>,
) -> Result<(), ModulesError> {
    if builtin.contains(name) || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let relative = available
        .get(name)
        .ok_or_else(|| ModulesError::Missing(name.to_string()))?;
    let path = module_dir.join(relative);
    let data = std::fs::read(&path).map_err(|source| ModulesError::Io {
        path: path.clone(),
        source,
    })?;
    let info = elf::modinfo(&data).map_err(|source| ModulesError::Elf { path, source })?;
    for (key, value) in info {
        if key == "depends" {
            for dep in value.split(',').filter(|d| !d.is_empty()) {
                visit(
                    module_dir,
                    &normalize(dep),
                    builtin,
                    available,
                    seen,
                    ordered,
                )?;
            }
        }
    }
    ordered.push(relative.clone());
    Ok(())
}

/// Module names treat `-` and `_` alike (`virtio-rng.ko` is `virtio_rng`).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file_name: &str) -> Option<String> {
    file_name.strip_suffix(".ko").map(normalize)
}

fn read_builtin(module_dir: &Path) -> Result<BTreeSet<String>, ModulesError> {
    let path = module_dir.join("modules.builtin");
    let text =
        std::fs::read_to_string(&path).map_err(|source| ModulesError::Io { path, source })?;
    Ok(text
        .lines()
        .filter_map(|line| line.rsplit('/').next().and_then(module_name))
        .collect())
}

fn index(
    module_dir: &Path,
    dir: &Path,
    found: &mut BTreeMap<String, String>,
) -> Result<(), ModulesError> {
    let io = |source| ModulesError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            index(module_dir, &path, found)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(module_name)
        {
            if let Ok(relative) = path.strip_prefix(module_dir) {
                found.insert(name, relative.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_and_names_are_normalized() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/net/packet/af_packet.ko\n",
        )
        .expect("write");
        let builtin = read_builtin(dir.path()).expect("read");
        assert!(builtin.contains("ext4") && builtin.contains("af_packet"));
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("README"), None);
        std::fs::create_dir_all(dir.path().join("kernel/fs")).expect("mkdir");
        // Built-in modules need no file; a missing one is an error naming it.
        assert_eq!(
            select(dir.path(), &["ext4"]).expect("builtin"),
            Vec::<String>::new()
        );
        let error = select(dir.path(), &["vfat"]).expect_err("missing");
        assert!(matches!(error, ModulesError::Missing(name) if name == "vfat"));
    }
}
