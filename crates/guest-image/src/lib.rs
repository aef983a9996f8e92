//! The test guest: a small Linux guest for the `qemu` backend, built from Debian packages
//! only (`apt-get download` + `dpkg-deb -x`, nothing installed on the host), published as
//! a versioned, immutable template directory; and a bare-QEMU boot benchmark of it.
//!
//! # The guest
//! - Kernel: Debian's `linux-image-cloud-amd64`, its bzImage unpacked to `vmlinux` (booted
//!   through the PVH entry: no in-guest decompression).
//! - `initrd.img` (cpio, uncompressed): busybox-static (init, sh, udhcpc, acpid), dropbear
//!   with the shared libraries it needs and the loader, the runner-agent at
//!   `/usr/local/bin/shoes-vz-runner-agent`, and the virtio-mmio, vfat/nls, evdev and ACPI
//!   button modules. Everything runs from RAM.
//! - For myshoes' setup script (`shared/notes/myshoes-setup-script.md`, "Offline run"),
//!   which runs as root and installs and runs the runner in `/tmp/runner`: Debian's bash,
//!   jq and sudo (PAM: `pam_rootok` for root, `pam_permit` for accounts and sessions; a
//!   sudoers that lets root run anything as anyone, `-E` included), busybox's `which`,
//!   `base64`, `gzip`, `id` and `tar`, an empty `/etc/environment`, and a **stub curl** that
//!   says the guest has no network and exits 7 (the script only runs `which curl` when the
//!   runner is cached). No `docker` and no `/etc/debian_version`, so the script does not try
//!   to install docker. With a stand-in runner binary ([`BuildOptions::standin_runner`]),
//!   the runner is cached as a tree at `/usr/local/etc/runner-v2.336.0/` owned by `runner`
//!   (the script moves it to `/tmp/runner`); its three programs are hard links of one file.
//!   Not there: node (Debian's nodejs does not fit a RAM-rooted guest; the stand-in plays it)
//!   and the real runner (it needs GitHub).
//! - `Disk.img`: the runner's disk (sparse ext4, label `shoesvz-data`), cloned per runner
//!   and mounted at `/home/runner` (user `runner`, uid 1000, shell `/bin/sh`).
//! - Boot (`guest/rcS`): modules, DHCP from QEMU's user network (fallback 10.0.2.15/24 via
//!   10.0.2.2), `SHOESVZ_GUEST_IP=<addr>` on the serial console, the disk. Then busybox init
//!   runs the runner-agent (`--dropbear-host-key-path /etc/dropbear/dropbear_ed25519_host_key`),
//!   which installs the authorized key (into `~/.ssh`, a tmpfs) and the host key (in dropbear's
//!   own format) from the config disk; dropbear starts on :22 once the host key exists. It
//!   re-executes itself per connection and reads the key file again, so a refresh's new key
//!   needs no restart.
//!   No host key is ever generated in the guest: the agent pins the one it made.
//! - The ACPI power button (QMP `system_powerdown`) powers the guest off through acpid.
//!
//! # Test-only images
//! [`DevKeys`] bakes an authorized key and a host key into the image (`rcS` installs them),
//! so tests and demos reach the guest without the runner-agent and a config disk. Every
//! runner of such an image shares those keys: never use one for real jobs.
//!
//! # Versions
//! The version is a hash of every input (package versions, runner-agent and stand-in runner
//! binaries, the stand-in tree's scripts, boot scripts and config files, keys, disk size):
//! an unchanged input set reuses the published directory, any
//! change builds a new one beside it (in a temporary directory, renamed into place) and
//! removes the older versions of the name, since an agent refuses duplicate names.
//!
//! # Layout
//! - [`builder`]: [`build_test_guest`], input hashing, caching, publishing.
//! - [`apt`]: package versions, downloads, extraction.
//! - [`kernel`]: `vmlinuz` → `vmlinux`.
//! - [`modules`]: kernel modules and their dependencies.
//! - [`guest`]: the guest's files; boot scripts and config files live in `guest/` beside
//!   `src/`; the runner tree comes from [`shoes_vz_standin_runner::layout()`].
//! - [`rootfs`], [`cpio`]: the initramfs. [`elf`]: ELF facts (libraries, module info).
//! - [`bench`](mod@bench): boot the same guest with a plain QEMU command line and time SSH readiness.

pub mod apt;
pub mod bench;
pub mod builder;
pub mod cpio;
pub mod elf;
pub mod guest;
pub mod kernel;
pub mod modules;
pub mod rootfs;

pub use builder::{build_test_guest, BuildError, BuildInputs, BuildOptions, DevKeys, TemplateDir};

/// The stand-in runner binary of this workspace, if built: `SHOESVZ_STANDIN_RUNNER`, else
/// next to the running program (or its parent), else `target/release` then `target/debug`.
pub fn find_standin_runner() -> Option<std::path::PathBuf> {
    shoes_vz_standin_runner::find_binary()
}

/// The runner-agent binary of this workspace, if built: `SHOESVZ_RUNNER_AGENT`, else next
/// to the running program (or its parent, for test binaries in `target/*/deps`), else
/// `target/release` then `target/debug` under the current directory.
pub fn find_runner_agent() -> Option<std::path::PathBuf> {
    const NAME: &str = "shoes-vz-runner-agent";
    if let Some(path) = std::env::var_os("SHOESVZ_RUNNER_AGENT") {
        return Some(path.into());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(NAME));
        }
    }
    for profile in ["release", "debug"] {
        candidates.push(std::path::Path::new("target").join(profile).join(NAME));
    }
    candidates.into_iter().find(|p| p.is_file())
}
