//! Lays out a runner tree like the `actions-runner-<os>-<arch>-2.336.0.tar.gz` tarball
//! (actions-runner.md "Tarball layout"): the scripts of the root and `bin/` (the stand-in's
//! own versions, in `tree/` beside `src/`), and the stand-in binary as `bin/Runner.Listener`,
//! `bin/Runner.Worker` and `externals/node20/bin/node`. No `.runner`, `_diag` or `_work`:
//! configuring and running create those.

use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A script of the tree: its path from the runner root, mode and content.
#[derive(Debug, Clone, Copy)]
pub struct TreeFile {
    pub path: &'static str,
    pub mode: u32,
    pub content: &'static str,
}

/// The scripts, with the tarball's modes. `bin/runsvc.sh` must be executable before
/// myshoes overwrites it (truncation keeps the mode); myshoes overwrites
/// `bin/RunnerService.js` too.
pub const TREE_FILES: &[TreeFile] = &[
    TreeFile {
        path: "config.sh",
        mode: 0o755,
        content: include_str!("../tree/config.sh"),
    },
    TreeFile {
        path: "env.sh",
        mode: 0o755,
        content: include_str!("../tree/env.sh"),
    },
    TreeFile {
        path: "run.sh",
        mode: 0o755,
        content: include_str!("../tree/run.sh"),
    },
    TreeFile {
        path: "run-helper.sh.template",
        mode: 0o755,
        content: include_str!("../tree/run-helper.sh.template"),
    },
    TreeFile {
        path: "bin/runsvc.sh",
        mode: 0o755,
        content: include_str!("../tree/bin/runsvc.sh"),
    },
    TreeFile {
        path: "bin/RunnerService.js",
        mode: 0o644,
        content: include_str!("../tree/bin/RunnerService.js"),
    },
];

/// Where the stand-in binary goes; it tells which program to be from its name.
pub const BINARY_PATHS: &[&str] = &[
    "bin/Runner.Listener",
    "bin/Runner.Worker",
    "externals/node20/bin/node",
];

/// How the binary is put at [`BINARY_PATHS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BinaryInstall {
    /// Three copies, like the tarball's separate programs.
    #[default]
    Copy,
    /// Hard links to `binary` (same filesystem): no extra space.
    HardLink,
    /// Symbolic links to `binary` (absolute). The runner's process names and root stay those
    /// of the tree: the stand-in goes by the path it was started as.
    Symlink,
}

#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    pub binaries: BinaryInstall,
    /// `chown -R` the tree to this `(uid, gid)` (needs the privilege to).
    pub owner: Option<(u32, u32)>,
}

/// Writes the tree into `dest` (created if missing; existing files are replaced).
pub fn layout(dest: &Path, binary: &Path, options: &LayoutOptions) -> io::Result<()> {
    if !binary.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the stand-in runner binary {} does not exist; build it with `cargo build -p shoes-vz-standin-runner`",
                binary.display()
            ),
        ));
    }
    std::fs::create_dir_all(dest)?;
    for file in TREE_FILES {
        let path = dest.join(file.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        replace(&path)?;
        std::fs::write(&path, file.content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
    }
    let binary = std::fs::canonicalize(binary)?;
    for relative in BINARY_PATHS {
        let path = dest.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        replace(&path)?;
        match options.binaries {
            BinaryInstall::Copy => {
                std::fs::copy(&binary, &path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            BinaryInstall::HardLink => std::fs::hard_link(&binary, &path)?,
            BinaryInstall::Symlink => std::os::unix::fs::symlink(&binary, &path)?,
        }
    }
    if let Some((uid, gid)) = options.owner {
        chown_tree(dest, uid, gid)?;
    }
    Ok(())
}

/// A hash of the tree's scripts and modes (for image versions that include a tree).
pub fn scripts_fingerprint() -> String {
    let mut hash = Sha256::new();
    hash.update(crate::RUNNER_VERSION);
    for file in TREE_FILES {
        hash.update(format!(
            "\0{}\0{:o}\0{}\0",
            file.path,
            file.mode,
            file.content.len()
        ));
        hash.update(file.content);
    }
    for path in BINARY_PATHS {
        hash.update(format!("\0{path}"));
    }
    hex::encode(hash.finalize())
}

fn replace(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn lays_out_the_tarball_files_with_their_modes() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let binary = dir.path().join("standin");
        std::fs::write(&binary, b"\x7fELF stand-in")?;
        let dest = dir.path().join("runner");
        layout(&dest, &binary, &LayoutOptions::default())?;
        for file in TREE_FILES {
            let meta = std::fs::metadata(dest.join(file.path))?;
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                file.mode,
                "{}",
                file.path
            );
            assert_eq!(std::fs::read_to_string(dest.join(file.path))?, file.content);
        }
        for path in BINARY_PATHS {
            let meta = std::fs::symlink_metadata(dest.join(path))?;
            assert!(meta.is_file(), "{path}: a copy");
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{path}");
            assert_eq!(std::fs::read(dest.join(path))?, b"\x7fELF stand-in");
        }
        for absent in [".runner", "_diag", "_work", ".credentials"] {
            assert!(!dest.join(absent).exists(), "{absent}");
        }
        // Laying out again replaces, and links work too.
        let options = LayoutOptions {
            binaries: BinaryInstall::HardLink,
            owner: None,
        };
        layout(&dest, &binary, &options)?;
        let listener = std::fs::metadata(dest.join("bin/Runner.Listener"))?;
        assert_eq!(listener.ino(), std::fs::metadata(&binary)?.ino());
        let options = LayoutOptions {
            binaries: BinaryInstall::Symlink,
            owner: None,
        };
        layout(&dest, &binary, &options)?;
        assert!(
            std::fs::symlink_metadata(dest.join("externals/node20/bin/node"))?
                .file_type()
                .is_symlink()
        );
        Ok(())
    }

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = layout(
            &dir.path().join("runner"),
            &dir.path().join("nope"),
            &LayoutOptions::default(),
        )
        .expect_err("no binary");
        assert!(error
            .to_string()
            .contains("cargo build -p shoes-vz-standin-runner"));
    }

    #[test]
    fn scripts_are_bash_and_the_fingerprint_is_stable() {
        for file in TREE_FILES {
            if file.path.ends_with(".js") {
                assert!(file.content.starts_with("#!/usr/bin/env node\n"));
            } else {
                assert!(file.content.starts_with("#!/bin/bash\n"), "{}", file.path);
            }
        }
        assert_eq!(scripts_fingerprint(), scripts_fingerprint());
        assert_eq!(scripts_fingerprint().len(), 64);
    }
}
