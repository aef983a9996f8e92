//! The guest's files: busybox (init, shell, udhcpc, acpid), dropbear, the runner-agent with
//! the shared libraries they need, the chosen kernel modules and the boot scripts in
//! `guest/`.

use crate::elf;
use crate::rootfs::Tree;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's scripts, embedded so that they are part of the build's input hash.
pub const SCRIPTS: &[(&str, u32, &str)] = &[
    ("/etc/inittab", 0o644, include_str!("../guest/inittab")),
    ("/etc/init.d/rcS", 0o755, include_str!("../guest/rcS")),
    ("/etc/init.d/rcK", 0o755, include_str!("../guest/rcK")),
    (
        "/etc/init.d/dropbear",
        0o755,
        include_str!("../guest/dropbear"),
    ),
    (
        "/etc/init.d/runner-agent",
        0o755,
        include_str!("../guest/runner-agent"),
    ),
    (
        "/etc/shoesvz/udhcpc.script",
        0o755,
        include_str!("../guest/udhcpc.script"),
    ),
    (
        "/etc/shoesvz/install-host-key",
        0o755,
        include_str!("../guest/install-host-key"),
    ),
    (
        "/etc/shoesvz/restart-ssh",
        0o755,
        include_str!("../guest/restart-ssh"),
    ),
    (
        "/etc/acpi/PWRF/00000080",
        0o755,
        include_str!("../guest/power-button"),
    ),
];

/// Where the runner-agent binary goes (the path `guest/runner-agent` starts).
pub const RUNNER_AGENT_PATH: &str = "/usr/local/bin/shoes-vz-runner-agent";
/// The unprivileged user setup scripts and jobs run as; its home is the runner's disk.
pub const RUNNER_USER: &str = "runner";
pub const RUNNER_UID: u32 = 1000;
/// The label `rcS` mounts at `/home/runner`.
pub const DATA_DISK_LABEL: &str = "shoesvz-data";

const LIBRARY_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("the extracted packages lack {0}")]
    MissingFile(String),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable program")]
    Elf {
        path: PathBuf,
        #[source]
        source: elf::ElfError,
    },
    #[error("{program} needs the shared library {library}, which no extracted Debian package provides; link it statically or add its package")]
    MissingLibrary { program: String, library: String },
    #[error("cannot list busybox applets with {path} (the build runs the guest's static busybox on this x86-64 host)")]
    Busybox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Keys baked into a test-only image (see [`crate::DevKeys`]).
pub struct BakedKeys<'a> {
    pub authorized_keys: &'a str,
    pub host_key_openssh: &'a str,
}

/// Everything [`assemble`] needs.
pub struct GuestInputs<'a> {
    /// Where all packages were extracted.
    pub staging: &'a Path,
    /// `lib/modules/<release>` inside `staging`.
    pub module_dir: &'a Path,
    pub modules: &'a [String],
    pub runner_agent: Option<&'a Path>,
    pub dev_keys: Option<BakedKeys<'a>>,
}

pub fn assemble(inputs: &GuestInputs<'_>) -> Result<Tree, GuestError> {
    let staging = inputs.staging;
    let mut tree = Tree::default();
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/mnt",
        "/var/log",
        "/usr/local/bin",
    ] {
        tree.dir(dir, 0o755);
    }
    tree.dir("/tmp", 0o1777);
    tree.dir("/root", 0o700);
    tree.dir("/etc/dropbear", 0o700);
    tree.dir_owned(&format!("/home/{RUNNER_USER}"), 0o755, RUNNER_UID);
    tree.symlink("/var/run", "/run");
    tree.char_dev("/dev/console", 0o600, 5, 1);
    tree.char_dev("/dev/null", 0o666, 1, 3);

    let busybox = staged(staging, "bin/busybox")?;
    tree.host_file("/bin/busybox", 0o755, &busybox);
    for applet in busybox_applets(&busybox)? {
        let path = format!("/{applet}");
        if path != "/bin/busybox" {
            tree.symlink(&path, "/bin/busybox");
        }
    }
    // The kernel runs /init from an initramfs; busybox picks its applet from the name.
    tree.symlink("/init", "/bin/busybox");

    let mut programs = Vec::new();
    for (guest, source) in [
        ("/usr/sbin/dropbear", "usr/sbin/dropbear"),
        ("/usr/bin/dropbearconvert", "usr/bin/dropbearconvert"),
        ("/usr/bin/dropbearkey", "usr/bin/dropbearkey"),
    ] {
        let host = staged(staging, source)?;
        tree.host_file(guest, 0o755, &host);
        programs.push(host);
    }
    if let Some(agent) = inputs.runner_agent {
        tree.host_file(RUNNER_AGENT_PATH, 0o755, agent);
        programs.push(agent.to_path_buf());
    }
    add_libraries(&mut tree, staging, &programs)?;

    let release = inputs
        .module_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for module in inputs.modules {
        let host = inputs.module_dir.join(module);
        tree.host_file(&format!("/lib/modules/{release}/{module}"), 0o644, &host);
    }
    let mut list = inputs.modules.join("\n");
    list.push('\n');
    tree.file("/etc/shoesvz/modules", 0o644, list);

    for (path, mode, text) in SCRIPTS {
        tree.file(path, *mode, text.as_bytes().to_vec());
    }
    add_accounts(&mut tree);
    if let Some(keys) = &inputs.dev_keys {
        tree.file(
            "/etc/shoesvz/dev/authorized_keys",
            0o644,
            keys.authorized_keys.as_bytes().to_vec(),
        );
        tree.file(
            "/etc/shoesvz/dev/ssh_host_ed25519_key",
            0o600,
            keys.host_key_openssh.as_bytes().to_vec(),
        );
    }
    Ok(tree)
}

fn add_accounts(tree: &mut Tree) {
    let uid = RUNNER_UID;
    let user = RUNNER_USER;
    tree.file(
        "/etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}:{user}:/home/{user}:/bin/sh\n"
        ),
    );
    tree.file(
        "/etc/group",
        0o644,
        format!("root:x:0:\ntty:x:5:\n{user}:x:{uid}:\n"),
    );
    // `*`: no password login, but not "locked" (dropbear refuses keys for `!` accounts).
    tree.file(
        "/etc/shadow",
        0o600,
        format!("root:*:19000:0:99999:7:::\n{user}:*:19000:0:99999:7:::\n"),
    );
    tree.file("/etc/shells", 0o644, "/bin/sh\n/bin/ash\n");
    tree.file(
        "/etc/nsswitch.conf",
        0o644,
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    );
    tree.file("/etc/hosts", 0o644, "127.0.0.1 localhost shoes-vz-guest\n");
    tree.file("/etc/hostname", 0o644, "shoes-vz-guest\n");
}

/// Every shared library the programs need (transitively) plus the loader, at the paths
/// they have in the packages.
fn add_libraries(tree: &mut Tree, staging: &Path, programs: &[PathBuf]) -> Result<(), GuestError> {
    let mut pending: Vec<(String, PathBuf)> = programs
        .iter()
        .map(|p| (p.display().to_string(), p.clone()))
        .collect();
    let mut done = BTreeSet::new();
    while let Some((name, host)) = pending.pop() {
        let data = std::fs::read(&host).map_err(|source| GuestError::Io {
            path: host.clone(),
            source,
        })?;
        let info = elf::dynamic(&data).map_err(|source| GuestError::Elf {
            path: host.clone(),
            source,
        })?;
        if let Some(interp) = info.interpreter {
            if done.insert(interp.clone()) {
                let resolved = resolve_in(staging, &interp)
                    .ok_or_else(|| GuestError::MissingFile(interp.clone()))?;
                tree.host_file(&interp, 0o755, &resolved);
            }
        }
        for library in info.needed {
            if !done.insert(library.clone()) {
                continue;
            }
            let (guest, resolved) = LIBRARY_DIRS
                .iter()
                .map(|dir| format!("/{dir}/{library}"))
                .find_map(|guest| resolve_in(staging, &guest).map(|host| (guest, host)))
                .ok_or_else(|| GuestError::MissingLibrary {
                    program: name.clone(),
                    library: library.clone(),
                })?;
            tree.host_file(&guest, 0o755, &resolved);
            pending.push((library, resolved));
        }
    }
    Ok(())
}

/// Follows symlinks of a guest path inside `root` (absolute targets stay inside it).
fn resolve_in(root: &Path, guest: &str) -> Option<PathBuf> {
    let mut path = root.join(guest.trim_start_matches('/'));
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = std::fs::read_link(&path).ok()?;
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            path.parent()?.join(target)
        };
    }
    None
}

fn staged(staging: &Path, relative: &str) -> Result<PathBuf, GuestError> {
    resolve_in(staging, relative).ok_or_else(|| GuestError::MissingFile(relative.to_string()))
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, GuestError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| GuestError::Busybox {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(GuestError::Busybox {
            path: busybox.to_path_buf(),
            source: std::io::Error::other(format!("exited with {}", output.status)),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_staging_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let lib = root.path().join("lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).expect("mkdir");
        std::fs::create_dir_all(root.path().join("lib64")).expect("mkdir");
        std::fs::write(lib.join("ld-linux-x86-64.so.2"), b"loader").expect("write");
        std::fs::write(lib.join("libz.so.1.2.13"), b"z").expect("write");
        std::os::unix::fs::symlink("libz.so.1.2.13", lib.join("libz.so.1")).expect("link");
        // Absolute, as libc6 ships it: must not escape to the host's /lib.
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            root.path().join("lib64/ld-linux-x86-64.so.2"),
        )
        .expect("link");
        assert_eq!(
            resolve_in(root.path(), "/lib64/ld-linux-x86-64.so.2"),
            Some(lib.join("ld-linux-x86-64.so.2"))
        );
        assert_eq!(
            resolve_in(root.path(), "/lib/x86_64-linux-gnu/libz.so.1"),
            Some(lib.join("libz.so.1.2.13"))
        );
        assert_eq!(resolve_in(root.path(), "/lib/libmissing.so"), None);
    }

    #[test]
    fn scripts_are_posix_shell_and_reference_the_agent_path() {
        let runner_agent = SCRIPTS
            .iter()
            .find(|(path, _, _)| *path == "/etc/init.d/runner-agent")
            .expect("script");
        assert!(runner_agent.2.contains(RUNNER_AGENT_PATH));
        for (path, mode, text) in SCRIPTS {
            if mode & 0o111 != 0 {
                assert!(text.starts_with("#!/bin/sh\n"), "{path}");
            }
        }
        let rcs = SCRIPTS
            .iter()
            .find(|(path, _, _)| *path == "/etc/init.d/rcS")
            .expect("rcS");
        assert!(rcs.2.contains(DATA_DISK_LABEL));
        assert!(rcs.2.contains("SHOESVZ_GUEST_IP="));
    }
}
