//! The guest's files: busybox (init, shell, udhcpc, acpid), dropbear, the runner-agent, what
//! myshoes' setup script needs (bash, jq, sudo with PAM, a curl stub, `/etc/environment`, a
//! cached stand-in runner tree), the shared libraries they need, the chosen kernel modules
//! and the boot scripts and config files in `guest/`.

use crate::elf;
use crate::rootfs::Tree;
use shoes_vz_standin_runner::layout::{layout, BinaryInstall, LayoutOptions, BINARY_PATHS};
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
        "/etc/acpi/PWRF/00000080",
        0o755,
        include_str!("../guest/power-button"),
    ),
    // For myshoes' setup script (shared/notes/myshoes-setup-script.md, "Offline run").
    ("/usr/bin/curl", 0o755, include_str!("../guest/curl")),
    ("/etc/sudoers", 0o440, include_str!("../guest/sudoers")),
    ("/etc/pam.d/sudo", 0o644, include_str!("../guest/pam-sudo")),
    (
        "/etc/pam.d/other",
        0o644,
        include_str!("../guest/pam-other"),
    ),
    // Sourced by the script before config.sh and runsvc.sh; empty, as on a fresh Debian.
    ("/etc/environment", 0o644, ""),
];

/// Programs myshoes' setup script runs that busybox does not provide (guest path, where
/// the packages have it, mode). Real Debian builds: bash because the script is bash, jq
/// because the script insists on it, sudo because as root it runs the runner with
/// `sudo -E -u runner`.
const MYSHOES_PROGRAMS: &[(&str, &str, u32)] = &[
    ("/bin/bash", "bin/bash", 0o755),
    ("/usr/bin/jq", "usr/bin/jq", 0o755),
    ("/usr/bin/sudo", "usr/bin/sudo", 0o4755),
];

/// Loaded with `dlopen`, so no `DT_NEEDED` leads to them: sudo's policy plugin and the PAM
/// modules `guest/pam-*` name. Same path in the guest as in the packages.
const DLOPENED: &[&str] = &[
    "/usr/libexec/sudo/sudoers.so",
    "/lib/x86_64-linux-gnu/security/pam_rootok.so",
    "/lib/x86_64-linux-gnu/security/pam_permit.so",
    "/lib/x86_64-linux-gnu/security/pam_deny.so",
];

/// Where the runner-agent binary goes (the path `guest/runner-agent` starts).
pub const RUNNER_AGENT_PATH: &str = "/usr/local/bin/shoes-vz-runner-agent";
/// The unprivileged user setup scripts and jobs run as; its home is the runner's disk.
pub const RUNNER_USER: &str = "runner";
pub const RUNNER_UID: u32 = 1000;
/// The label `rcS` mounts at `/home/runner`.
pub const DATA_DISK_LABEL: &str = "shoesvz-data";
/// Where myshoes' setup script puts the runner: `RUNNER_BASE_DIRECTORY` (`/tmp`) + `/runner`.
pub const RUNNER_DIR: &str = "/tmp/runner";

/// The runner cache myshoes' setup script moves to [`RUNNER_DIR`] (main.sh:139-142):
/// `/usr/local/etc/runner-v<version>`, owned by the runner user since the script does not
/// chown it.
pub fn runner_cache_dir() -> String {
    format!(
        "/usr/local/etc/runner-v{}",
        shoes_vz_standin_runner::RUNNER_VERSION
    )
}

/// `usr/libexec/sudo`: sudo finds libsudo_util there through its RUNPATH.
const LIBRARY_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
    "usr/libexec/sudo",
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
    #[error("cannot lay out the stand-in runner tree from {binary}")]
    RunnerTree {
        binary: PathBuf,
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
    /// The stand-in runner binary, cached as a runner tree at [`runner_cache_dir`].
    pub standin_runner: Option<&'a Path>,
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
    for (guest, source, mode) in MYSHOES_PROGRAMS {
        let host = staged(staging, source)?;
        tree.host_file(guest, *mode, &host);
        programs.push(host);
    }
    for guest in DLOPENED {
        let host = staged(staging, guest.trim_start_matches('/'))?;
        tree.host_file(guest, 0o644, &host);
        programs.push(host);
    }
    if let Some(binary) = inputs.standin_runner {
        add_runner_tree(&mut tree, binary)?;
        programs.push(binary.to_path_buf());
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

/// The stand-in runner tree at [`runner_cache_dir`], as [`layout`] writes it, owned by the
/// runner user. Its three programs are one binary: in the image they are hard links of one
/// file, so the binary is stored and unpacked once.
fn add_runner_tree(tree: &mut Tree, binary: &Path) -> Result<(), GuestError> {
    let fail = |source| GuestError::RunnerTree {
        binary: binary.to_path_buf(),
        source,
    };
    let scratch = tempfile::tempdir().map_err(fail)?;
    let laid_out = scratch.path().join("runner");
    let options = LayoutOptions {
        binaries: BinaryInstall::Symlink,
        owner: None,
    };
    layout(&laid_out, binary, &options).map_err(fail)?;
    let cache = runner_cache_dir();
    tree.dir_owned(&cache, 0o755, RUNNER_UID);
    let mut first_binary: Option<String> = None;
    let mut pending = vec![laid_out.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(fail)? {
            let path = entry.map_err(fail)?.path();
            let relative = path
                .strip_prefix(&laid_out)
                .map_err(|e| fail(std::io::Error::other(e)))?
                .to_string_lossy()
                .into_owned();
            let guest = format!("{cache}/{relative}");
            let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            if meta.is_dir() {
                tree.dir_owned(&guest, mode, RUNNER_UID);
                pending.push(path);
            } else if BINARY_PATHS.contains(&relative.as_str()) {
                match &first_binary {
                    Some(first) => tree.hard_link(&guest, first),
                    None => {
                        tree.host_file_owned(&guest, 0o755, RUNNER_UID, binary);
                        first_binary = Some(guest);
                    }
                }
            } else {
                let bytes = std::fs::read(&path).map_err(fail)?;
                tree.file_owned(&guest, mode, RUNNER_UID, bytes);
            }
        }
    }
    Ok(())
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
    tree.file("/etc/shells", 0o644, "/bin/sh\n/bin/ash\n/bin/bash\n");
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
    fn the_runner_cache_is_the_laid_out_tree_owned_by_the_runner_with_one_binary() {
        use crate::rootfs::{Content, Node};
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = dir.path().join("shoes-vz-standin-runner");
        std::fs::write(&binary, b"\x7fELF").expect("write");
        let mut tree = Tree::default();
        add_runner_tree(&mut tree, &binary).expect("tree");
        let cache = runner_cache_dir();
        assert_eq!(cache, "/usr/local/etc/runner-v2.336.0");
        assert!(matches!(
            tree.get(&cache),
            Some(Node::Dir {
                owner: RUNNER_UID,
                ..
            })
        ));
        assert!(matches!(
            tree.get(&format!("{cache}/bin")),
            Some(Node::Dir {
                owner: RUNNER_UID,
                ..
            })
        ));
        for file in shoes_vz_standin_runner::layout::TREE_FILES {
            match tree.get(&format!("{cache}/{}", file.path)) {
                Some(Node::File {
                    mode,
                    owner,
                    content: Content::Bytes(bytes),
                }) => {
                    assert_eq!(*mode, file.mode, "{}", file.path);
                    assert_eq!(*owner, RUNNER_UID, "{}", file.path);
                    assert_eq!(bytes.as_slice(), file.content.as_bytes());
                }
                other => panic!("{}: {other:?}", file.path),
            }
        }
        let mut files = 0;
        let mut links = 0;
        for path in BINARY_PATHS {
            match tree.get(&format!("{cache}/{path}")) {
                Some(Node::File {
                    mode: 0o755,
                    owner: RUNNER_UID,
                    content: Content::Host(source),
                }) => {
                    assert_eq!(source, &binary);
                    files += 1;
                }
                Some(Node::HardLink { .. }) => links += 1,
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!((files, links), (1, 2), "one binary, two more names");
        for absent in [".runner", "_diag", "_work"] {
            assert!(!tree.contains(&format!("{cache}/{absent}")));
        }
    }

    #[test]
    fn myshoes_needs_are_there_and_debian_version_is_not() {
        let paths: Vec<&str> = SCRIPTS.iter().map(|(path, _, _)| *path).collect();
        for needed in [
            "/etc/environment",
            "/usr/bin/curl",
            "/etc/sudoers",
            "/etc/pam.d/sudo",
        ] {
            assert!(paths.contains(&needed), "{needed}");
        }
        assert!(!paths.iter().any(|p| p.starts_with("/etc/debian_")));
        let sudoers = SCRIPTS
            .iter()
            .find(|(path, _, _)| *path == "/etc/sudoers")
            .expect("sudoers");
        assert_eq!(
            sudoers.1, 0o440,
            "sudo refuses a sudoers file others can write"
        );
        assert!(sudoers.2.contains("\nroot\tALL=(ALL:ALL) ALL\n"));
        let pam = SCRIPTS
            .iter()
            .find(|(path, _, _)| *path == "/etc/pam.d/sudo")
            .expect("pam");
        for module in ["pam_rootok.so", "pam_permit.so", "pam_deny.so"] {
            assert!(pam.2.contains(module), "{module}");
            assert!(
                DLOPENED.iter().any(|d| d.ends_with(module)),
                "{module} is loaded by PAM, so it must be in the image"
            );
        }
        assert!(MYSHOES_PROGRAMS
            .iter()
            .any(|(p, _, m)| *p == "/usr/bin/sudo" && *m == 0o4755));
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
