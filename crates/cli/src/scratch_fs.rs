//! A directory on a reflink (copy-on-write) filesystem for clone measurements: the given one,
//! the temp dir when it already supports reflink, or a loop-mounted XFS image (root only),
//! unmounted and removed when dropped.

use anyhow::{bail, Context};
use shoes_vz_agent::bundle::reflink_supported;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct ScratchFs {
    pub dir: PathBuf,
    loop_mount: Option<LoopMount>,
}

struct LoopMount {
    mountpoint: PathBuf,
    image: PathBuf,
}

impl ScratchFs {
    pub fn prepare(dir: Option<&Path>) -> anyhow::Result<ScratchFs> {
        if let Some(dir) = dir {
            if !reflink_supported(dir) {
                bail!(
                    "{} has no reflink support; pass a directory on APFS, XFS (reflink=1) or btrfs, or run as root without --dir to use a loop-mounted XFS image",
                    dir.display()
                );
            }
            return Ok(ScratchFs {
                dir: dir.to_path_buf(),
                loop_mount: None,
            });
        }
        let temp = std::env::temp_dir();
        if reflink_supported(&temp) {
            return Ok(ScratchFs {
                dir: temp,
                loop_mount: None,
            });
        }
        if !is_root() {
            bail!("{} has no reflink support and making a loop-mounted XFS needs root; pass --dir on a reflink filesystem", temp.display());
        }
        if crate::workspace_bin::which("mkfs.xfs").is_none() {
            bail!("mkfs.xfs is missing: install xfsprogs (apt-get install xfsprogs) or pass --dir on a reflink filesystem");
        }
        let base = temp.join(format!("shoes-vz-scratch-{}", std::process::id()));
        std::fs::create_dir_all(&base)?;
        let image = base.join("xfs.img");
        let mountpoint = base.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        // Sparse 80 GiB: room for a 64 GiB sparse template, no space used until written.
        std::fs::File::create(&image)?.set_len(80 * 1024 * 1024 * 1024)?;
        run(
            "mkfs.xfs",
            &["-q", "-m", "reflink=1", &image.to_string_lossy()],
        )?;
        run(
            "mount",
            &[
                "-o",
                "loop",
                &image.to_string_lossy(),
                &mountpoint.to_string_lossy(),
            ],
        )?;
        Ok(ScratchFs {
            dir: mountpoint.clone(),
            loop_mount: Some(LoopMount { mountpoint, image }),
        })
    }

    pub fn describe(&self) -> String {
        match &self.loop_mount {
            Some(_) => format!("{} (loop-mounted XFS, reflink=1)", self.dir.display()),
            None => format!("{} (reflink-capable)", self.dir.display()),
        }
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if let Some(mount) = &self.loop_mount {
            if let Err(error) = run("umount", &[&mount.mountpoint.to_string_lossy()]) {
                eprintln!(
                    "warning: cannot unmount {}: {error:#}",
                    mount.mountpoint.display()
                );
                return;
            }
            if let Some(base) = mount.image.parent() {
                let _ = std::fs::remove_dir_all(base);
            }
        }
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}
