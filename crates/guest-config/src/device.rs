//! Finding the config disk among the guest's block devices, without mounting anything.
//!
//! Linux: every `/sys/block/<name>` whose size fits a config disk, as `/dev/<name>` (virtio
//! `vd*` first). macOS: every whole disk `/dev/diskN`, read through its raw twin
//! `/dev/rdiskN`. Each candidate's boot sector is probed; unreadable ones are skipped.

use std::path::{Path, PathBuf};

use crate::image::{probe_image, MAX_IMAGE_BYTES, MIN_IMAGE_BYTES};

/// Devices that are never a config disk and can be slow to probe (floppies, CD drives) or
/// are memory-backed.
const SKIPPED_PREFIXES: &[&str] = &["ram", "zram", "fd", "sr", "nbd"];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no shoes-vz config disk (FAT volume labelled SHOESVZCFG) among {tried} candidate device(s){details}; attach one or pass its path explicitly")]
    NotFound { tried: usize, details: String },
    #[error("could not list {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finding the config disk automatically is not supported on this platform; pass its path explicitly")]
    Unsupported,
}

/// The first device holding a config disk.
pub fn find_config_device() -> Result<PathBuf, DeviceError> {
    #[cfg(target_os = "linux")]
    {
        find_among(linux_candidates(
            Path::new("/sys/block"),
            Path::new("/dev"),
        )?)
    }
    #[cfg(target_os = "macos")]
    {
        find_among(macos_candidates(Path::new("/dev"))?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        Err(DeviceError::Unsupported)
    }
}

/// Probes `candidates` in order; the first config disk wins.
pub fn find_among(candidates: Vec<PathBuf>) -> Result<PathBuf, DeviceError> {
    let tried = candidates.len();
    let mut details = Vec::new();
    for path in candidates {
        match probe_image(&path) {
            Ok(()) => return Ok(path),
            Err(err) => details.push(format!("{}: {err}", path.display())),
        }
    }
    let details = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join("; "))
    };
    Err(DeviceError::NotFound { tried, details })
}

/// Block devices under `sys_block` small enough to be a config disk, as paths in `dev`.
pub fn linux_candidates(sys_block: &Path, dev: &Path) -> Result<Vec<PathBuf>, DeviceError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| DeviceError::List {
        path: sys_block.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)))
        .filter(|name| {
            // `size` counts 512-byte sectors whatever the device's sector size. Unknown
            // sizes are probed anyway.
            match std::fs::read_to_string(sys_block.join(name).join("size")) {
                Ok(text) => text.trim().parse::<u64>().is_ok_and(|sectors| {
                    (MIN_IMAGE_BYTES..=MAX_IMAGE_BYTES).contains(&sectors.saturating_mul(512))
                }),
                Err(_) => true,
            }
        })
        .collect();
    // Virtio disks first: that is where hypervisors put it.
    names.sort_by_key(|name| (!name.starts_with("vd"), name.clone()));
    Ok(names.into_iter().map(|name| dev.join(name)).collect())
}

/// Whole disks (`diskN`, not slices like `disk0s1`) in `dev`, as raw devices `rdiskN`.
pub fn macos_candidates(dev: &Path) -> Result<Vec<PathBuf>, DeviceError> {
    let entries = std::fs::read_dir(dev).map_err(|source| DeviceError::List {
        path: dev.to_path_buf(),
        source,
    })?;
    let mut numbers: Vec<u32> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("disk")?.parse::<u32>().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers
        .into_iter()
        .map(|n| dev.join(format!("rdisk{n}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;
    use crate::image::write_image;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn fake_block(sys: &Path, name: &str, sectors: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(sys.join(name))?;
        std::fs::write(sys.join(name).join("size"), format!("{sectors}\n"))
    }

    #[test]
    fn linux_scan_skips_big_and_memory_disks_and_finds_ours() -> TestResult {
        let root = tempfile::tempdir()?;
        let sys = root.path().join("sys/block");
        let dev = root.path().join("dev");
        std::fs::create_dir_all(&dev)?;
        fake_block(&sys, "vda", 20 * 1024 * 1024 * 2)?; // 20 GiB root disk
        fake_block(&sys, "ram0", 4096)?;
        fake_block(&sys, "sda", 4096)?; // small but not ours
        fake_block(&sys, "vdc", 4096)?; // listed, but no device node
        fake_block(&sys, "vdb", 4096)?;
        std::fs::write(dev.join("sda"), vec![0u8; 2 * 1024 * 1024])?;
        let config = sample();
        write_image(&dev.join("vdb"), &config)?;

        let candidates = linux_candidates(&sys, &dev)?;
        assert_eq!(
            candidates,
            vec![dev.join("vdb"), dev.join("vdc"), dev.join("sda")]
        );
        assert_eq!(find_among(candidates)?, dev.join("vdb"));
        Ok(())
    }

    #[test]
    fn not_found_says_what_was_tried() -> TestResult {
        let root = tempfile::tempdir()?;
        let junk = root.path().join("junk");
        std::fs::write(&junk, b"nothing")?;
        let err =
            find_among(vec![junk, root.path().join("missing")]).expect_err("no config disk here");
        let text = err.to_string();
        assert!(text.contains("2 candidate"), "{text}");
        assert!(text.contains("junk") && text.contains("missing"), "{text}");
        Ok(())
    }

    #[test]
    fn macos_scan_lists_whole_disks_as_raw_devices() -> TestResult {
        let dev = tempfile::tempdir()?;
        for name in ["disk0", "disk0s1", "disk10", "disk2", "rdisk2", "null"] {
            std::fs::write(dev.path().join(name), b"")?;
        }
        assert_eq!(
            macos_candidates(dev.path())?,
            vec![
                dev.path().join("rdisk0"),
                dev.path().join("rdisk2"),
                dev.path().join("rdisk10")
            ]
        );
        Ok(())
    }
}
