//! The config disk: a small FAT volume labelled [`VOLUME_LABEL`] holding [`CONFIG_PATH`].
//!
//! FAT because every guest OS recognises it without drivers or prompts (macOS mounts it like a
//! USB stick instead of asking to initialise an "unreadable" disk), yet the runner-agent never
//! mounts it: it reads the raw device into memory and parses the volume there with `fatfs`,
//! so it works at boot, without a user session, and sees the disk's current contents.
//!
//! The volume starts at byte 0 (no partition table), so the boot sector tells how large it
//! is and whether it is ours before anything else is read.

use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::sparse::SparseDisk;

use crate::config::{ConfigError, GuestConfig, MAX_CONFIG_JSON_BYTES};

/// The FAT volume label (11 bytes, space padded). macOS mounts the volume under this name.
pub const VOLUME_LABEL: [u8; 11] = *b"SHOESVZCFG ";
/// The config file, in the volume's root directory. (Not in a subdirectory: fatfs 0.3
/// writes long-name entries for a new directory's `.` and `..`, which `fsck.fat` flags.)
pub const CONFIG_PATH: &str = "config.json";
/// Size of the images [`write_image`] makes.
pub const IMAGE_BYTES: usize = 2 * 1024 * 1024;
/// A volume claiming to be smaller or larger than this is not a config disk; this also
/// keeps a probe from reading a real disk into memory.
pub const MIN_IMAGE_BYTES: u64 = 64 * 1024;
pub const MAX_IMAGE_BYTES: u64 = 16 * 1024 * 1024;

/// Raw disk devices (macOS `/dev/rdisk*`) only accept whole-sector reads; 64 KiB is a
/// multiple of every sector size FAT allows.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("could not {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a shoes-vz config disk: {reason}")]
    NotAConfigDisk { path: PathBuf, reason: &'static str },
    #[error("the FAT volume on {path} could not be read; the config disk is damaged")]
    Fat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the config disk {path} has no {CONFIG_PATH}")]
    MissingConfig { path: PathBuf },
    #[error("the config on {path} was refused")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("could not build the config disk image in memory")]
    Build(#[source] io::Error),
    #[error("the guest config could not be encoded")]
    Encode(#[source] ConfigError),
}

/// Writes `config` as a fresh config disk image at `path` (mode 0600, [`IMAGE_BYTES`] long).
///
/// The image is built in memory and written beside `path`, then renamed over it, so the
/// hypervisor never attaches a half-written disk and an existing file is replaced whole.
pub fn write_image(path: &Path, config: &GuestConfig) -> Result<(), ImageError> {
    ConfigImage::encode(config)?.write(path)
}

/// [`write_image`] for a disk that lives no longer than the one VM it is attached to (a
/// runner's): see [`ConfigImage::write_ephemeral`].
pub fn write_ephemeral_image(path: &Path, config: &GuestConfig) -> Result<(), ImageError> {
    ConfigImage::encode(config)?.write_ephemeral(path)
}

/// A config disk image built in memory, ready to write; built apart from the write so a
/// caller can make it while other work (a runner's clone) runs. Only the blocks with data are
/// held (and written: the file is sparse), and they are wiped when dropped: they hold the
/// runner's secrets.
pub struct ConfigImage(SparseDisk);

impl ConfigImage {
    pub fn encode(config: &GuestConfig) -> Result<ConfigImage, ImageError> {
        let json = config.to_json().map_err(ImageError::Encode)?;
        Ok(ConfigImage(build_sparse(&json)?))
    }

    /// Writes the image at `path` (mode 0600), durably; see [`write_image`].
    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        write_atomically(path, &self.0, Durability::Synced)
    }

    /// Writes the image at `path` (mode 0600) for a disk that lives no longer than the one VM
    /// it is attached to (a runner's): renamed into place whole, but not fsynced. A host
    /// crash ends that VM too, so the sync would buy nothing, and it costs the runner's start
    /// milliseconds.
    pub fn write_ephemeral(&self, path: &Path) -> Result<(), ImageError> {
        write_atomically(path, &self.0, Durability::Unsynced)
    }
}

impl std::fmt::Debug for ConfigImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigImage(<{} bytes, redacted>)", self.0.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Unsynced,
}

/// The image bytes for `json` (held in wiped memory: they contain secrets).
pub fn build_image(json: &[u8]) -> Result<Zeroizing<Vec<u8>>, ImageError> {
    build_sparse(json)?.to_bytes().map_err(ImageError::Build)
}

fn build_sparse(json: &[u8]) -> Result<SparseDisk, ImageError> {
    let mut disk = SparseDisk::new(IMAGE_BYTES as u64);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(VOLUME_LABEL),
    )
    .map_err(ImageError::Build)?;
    {
        let options = fatfs::FsOptions::new().time_provider(&UTC_NOW);
        let fs = fatfs::FileSystem::new(&mut disk, options).map_err(ImageError::Build)?;
        {
            let mut file = fs
                .root_dir()
                .create_file(CONFIG_PATH)
                .map_err(ImageError::Build)?;
            file.write_all(json).map_err(ImageError::Build)?;
            file.flush().map_err(ImageError::Build)?;
        }
        fs.unmount().map_err(ImageError::Build)?;
    }
    Ok(disk)
}

/// File timestamps in UTC from the system clock (fatfs without its `chrono` feature would
/// write the invalid date 1980-00-00).
#[derive(Debug)]
struct UtcNow;

static UTC_NOW: UtcNow = UtcNow;

impl fatfs::TimeProvider for UtcNow {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        let secs = crate::notify::unix_ms_now() / 1000;
        dos_date_time(secs)
    }
}

/// Unix seconds → FAT date and time (UTC), clamped to FAT's 1980..=2107 range.
fn dos_date_time(unix_secs: u64) -> fatfs::DateTime {
    // 1980-01-01 and 2107-12-31 23:59:58.
    let secs = unix_secs.clamp(315_532_800, 4_354_819_198);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant), valid for the whole range above.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let small = |v: i64| u16::try_from(v).unwrap_or(0);
    let small_u = |v: u64| u16::try_from(v).unwrap_or(0);
    fatfs::DateTime {
        date: fatfs::Date {
            year: small(year),
            month: small(month),
            day: small(day),
        },
        time: fatfs::Time {
            hour: small_u(rem / 3600),
            min: small_u(rem % 3600 / 60),
            sec: small_u(rem % 60),
            millis: 0,
        },
    }
}

fn write_atomically(
    path: &Path,
    disk: &SparseDisk,
    durability: Durability,
) -> Result<(), ImageError> {
    let io_err = |op, source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(
            "name",
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // A crash may have left this name behind; `create_new` must not trip on it.
        let _ = std::fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write_sparse(&file, disk)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Synced {
            // Make the rename itself durable.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("write the config disk image", source));
    }
    Ok(())
}

/// Writes the blocks that hold data, then sets the length: the rest reads back as zeros
/// from the holes.
fn write_sparse(file: &File, disk: &SparseDisk) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    for (offset, block) in disk.blocks() {
        file.write_all_at(block, offset)?;
    }
    file.set_len(disk.len())
}

/// Reads the config from a config disk: an image file or a raw block device.
///
/// Only the volume the boot sector describes is read (at most [`MAX_IMAGE_BYTES`]), into
/// memory; nothing is ever written to `path`.
pub fn read_image(path: &Path) -> Result<GuestConfig, ImageError> {
    let mut file = open_device(path)?;
    let mut image = read_up_to(&mut file, path, READ_CHUNK)?;
    let not_ours = |reason| ImageError::NotAConfigDisk {
        path: path.to_path_buf(),
        reason,
    };
    let volume_bytes = probe_header(&image).map_err(not_ours)?;
    // Bounded by MAX_IMAGE_BYTES, so it fits.
    let volume_len =
        usize::try_from(volume_bytes).map_err(|_| not_ours("the volume is too large"))?;
    if image.len() < volume_len {
        let rest = read_up_to(&mut file, path, volume_len - image.len())?;
        image.extend_from_slice(&rest);
    }
    if image.len() < volume_len {
        return Err(not_ours(
            "it is shorter than the FAT volume its boot sector describes",
        ));
    }
    image.truncate(volume_len);
    parse_volume(&mut image, path)
}

/// Checks whether `path` starts with a config disk's boot sector, reading only that.
pub fn probe_image(path: &Path) -> Result<(), ImageError> {
    let mut file = open_device(path)?;
    let header = read_up_to(&mut file, path, READ_CHUNK)?;
    probe_header(&header)
        .map(|_| ())
        .map_err(|reason| ImageError::NotAConfigDisk {
            path: path.to_path_buf(),
            reason,
        })
}

fn open_device(path: &Path) -> Result<File, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Io {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    drop_cached_pages(&file);
    Ok(file)
}

/// A block device's page cache can hold an older disk's contents: a guest restored from a
/// saved state, given a new config disk in the old one's place, would otherwise read the
/// old config. macOS raw devices (`/dev/rdisk*`) are not cached.
#[cfg(target_os = "linux")]
fn drop_cached_pages(file: &File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::unix::fs::FileTypeExt;
    // A plain image file has nothing stale, and dropping its pages would only start writing
    // back a fresh, unsynced image and then read it from the disk again.
    let is_block_device = file
        .metadata()
        .is_ok_and(|meta| meta.file_type().is_block_device());
    if is_block_device {
        // Best effort: an error only means we read through the cache as usual.
        let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached_pages(_file: &File) {}

/// Reads until `limit` bytes or end of file, always asking for whole [`READ_CHUNK`]s (raw
/// devices refuse partial-sector reads); whatever the last read brings past `limit` is dropped.
fn read_up_to(
    file: &mut File,
    path: &Path,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ImageError> {
    let mut out = Zeroizing::new(Vec::with_capacity(limit));
    let mut chunk = Zeroizing::new(vec![0u8; READ_CHUNK]);
    while out.len() < limit {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let keep = n.min(limit - out.len());
        out.extend_from_slice(&chunk[..keep]);
    }
    Ok(out)
}

/// Validates the FAT boot sector and our volume label; returns the volume's size in bytes.
fn probe_header(header: &[u8]) -> Result<u64, &'static str> {
    let le16 = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let le32 = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if header.len() < 512 {
        return Err("it is smaller than one sector");
    }
    if header[510..512] != [0x55, 0xAA] {
        return Err("it has no boot sector signature");
    }
    let bytes_per_sector = le16(11);
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return Err("its boot sector has an invalid sector size");
    }
    // FAT32 has no 16-bit sectors-per-FAT; its extended boot record sits further in.
    let (signature_at, label_at) = if le16(22) == 0 { (66, 71) } else { (38, 43) };
    if header[signature_at] != 0x29 {
        return Err("its boot sector has no volume label");
    }
    if header[label_at..label_at + VOLUME_LABEL.len()] != VOLUME_LABEL {
        return Err("its volume label is not SHOESVZCFG");
    }
    let total_sectors = match le16(19) {
        0 => le32(32),
        n => u32::from(n),
    };
    let volume_bytes = u64::from(total_sectors) * u64::from(bytes_per_sector);
    if !(MIN_IMAGE_BYTES..=MAX_IMAGE_BYTES).contains(&volume_bytes) {
        return Err("its FAT volume is not between 64 KiB and 16 MiB");
    }
    Ok(volume_bytes)
}

fn parse_volume(image: &mut [u8], path: &Path) -> Result<GuestConfig, ImageError> {
    let fat_err = |source| ImageError::Fat {
        path: path.to_path_buf(),
        source,
    };
    // fatfs wants a writable disk; this is our private in-memory copy.
    let fs =
        fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).map_err(fat_err)?;
    let mut file = match fs.root_dir().open_file(CONFIG_PATH) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingConfig {
                path: path.to_path_buf(),
            })
        }
        Err(err) => return Err(fat_err(err)),
    };
    let mut json = Zeroizing::new(Vec::new());
    let limit = u64::try_from(MAX_CONFIG_JSON_BYTES + 1).unwrap_or(u64::MAX);
    Read::by_ref(&mut file)
        .take(limit)
        .read_to_end(&mut json)
        .map_err(fat_err)?;
    GuestConfig::from_json(&json).map_err(|source| ImageError::Config {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::tests::sample;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn host_written_image_is_read_back_by_the_guest_reader() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.img");
        let config = sample();
        write_image(&path, &config)?;

        let meta = std::fs::metadata(&path)?;
        assert_eq!(meta.len(), IMAGE_BYTES as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "temp file left");

        probe_image(&path)?;
        let back = read_image(&path)?;
        assert_eq!(back.runner_id, config.runner_id);
        assert_eq!(back.api_token.expose(), config.api_token.expose());
        assert_eq!(back.ssh_host_key.expose(), config.ssh_host_key.expose());
        Ok(())
    }

    #[test]
    fn dos_dates_are_civil_utc_dates() {
        let at = |secs| {
            let dt = dos_date_time(secs);
            (
                dt.date.year,
                dt.date.month,
                dt.date.day,
                dt.time.hour,
                dt.time.min,
                dt.time.sec,
            )
        };
        assert_eq!(at(0), (1980, 1, 1, 0, 0, 0));
        assert_eq!(at(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(at(1_795_737_600 + 3_723), (2026, 11, 27, 1, 2, 3));
        assert_eq!(at(u64::MAX), (2107, 12, 31, 23, 59, 58));
    }

    #[test]
    fn image_is_a_standard_fat_volume_with_our_label() -> TestResult {
        let image = build_image(b"{}")?;
        let fs = fatfs::FileSystem::new(Cursor::new(image.to_vec()), fatfs::FsOptions::new())?;
        assert_eq!(fs.volume_label(), "SHOESVZCFG");
        assert_eq!(
            fs.read_volume_label_from_root_dir()?.as_deref(),
            Some("SHOESVZCFG")
        );
        Ok(())
    }

    /// macOS checks a FAT volume before mounting it; a volume fsck complains about could get
    /// the "unreadable disk" prompt the FAT format is there to avoid.
    #[test]
    fn the_image_passes_fsck_fat() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.img");
        write_image(&path, &sample())?;
        let output = match std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&path)
            .output()
        {
            Ok(output) => output,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                shoes_vz_test_support::prerequisite_missing(
                    "fsck.fat not found",
                    "install dosfstools (`apt-get install dosfstools`)",
                );
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "fsck.fat failed: {report}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(report.contains("1/"), "expected one used cluster: {report}");
        Ok(())
    }

    #[test]
    fn rewriting_replaces_the_old_image_and_tightens_its_mode() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.img");
        std::fs::write(&path, b"old")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let first = sample();
        write_image(&path, &first)?;
        let second = sample();
        write_image(&path, &second)?;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            read_image(&path)?.api_token.expose(),
            second.api_token.expose()
        );
        Ok(())
    }

    #[test]
    fn an_ephemeral_image_replaces_the_old_one_whole_with_mode_0600() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.img");
        std::fs::write(&path, b"old")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let config = sample();
        write_ephemeral_image(&path, &config)?;
        let meta = std::fs::metadata(&path)?;
        assert_eq!(meta.len(), IMAGE_BYTES as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Only the FAT structures and the JSON were written; the rest is holes.
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 256 * 1024, "{} blocks", meta.blocks());
        assert_eq!(
            read_image(&path)?.api_token.expose(),
            config.api_token.expose()
        );
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "temp file left");
        Ok(())
    }

    #[test]
    fn a_larger_device_is_read_only_as_far_as_the_volume() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk");
        let config = sample();
        let mut bytes = build_image(&config.to_json()?)?.to_vec();
        // A device bigger than the image (e.g. rounded up by a hypervisor) with junk after.
        bytes.extend(std::iter::repeat_n(0xA5u8, 3 * 1024 * 1024 + 17));
        std::fs::write(&path, &bytes)?;
        assert_eq!(read_image(&path)?.runner_id, config.runner_id);
        Ok(())
    }

    fn expect_not_ours(path: &Path) {
        match read_image(path) {
            Err(ImageError::NotAConfigDisk { .. }) => {}
            other => panic!("expected NotAConfigDisk, got {other:?}"),
        }
        assert!(probe_image(path).is_err());
    }

    #[test]
    fn garbage_and_foreign_volumes_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.img");

        std::fs::write(&path, b"")?;
        expect_not_ours(&path);
        std::fs::write(&path, vec![0x5Au8; 1024 * 1024])?;
        expect_not_ours(&path);

        // A valid FAT volume with another label.
        let mut other = vec![0u8; IMAGE_BYTES];
        fatfs::format_volume(
            Cursor::new(other.as_mut_slice()),
            fatfs::FormatVolumeOptions::new().volume_label(*b"NO NAME    "),
        )?;
        std::fs::write(&path, &other)?;
        expect_not_ours(&path);

        // Ours, but cut short: the boot sector alone looks right.
        let image = build_image(&sample().to_json()?)?;
        std::fs::write(&path, &image[..IMAGE_BYTES / 2])?;
        assert!(probe_image(&path).is_ok());
        assert!(matches!(
            read_image(&path),
            Err(ImageError::NotAConfigDisk { .. })
        ));
        Ok(())
    }

    #[test]
    fn volume_size_bounds_are_enforced() -> TestResult {
        let image = build_image(&sample().to_json()?)?;
        let mut header = image[..4096].to_vec();
        assert_eq!(probe_header(&header), Ok(IMAGE_BYTES as u64));
        // Claim 32 MiB (65536 sectors of 512 bytes): too large to be ours.
        header[19..21].copy_from_slice(&0u16.to_le_bytes());
        header[32..36].copy_from_slice(&65_536u32.to_le_bytes());
        assert!(probe_header(&header).is_err());
        // Claim 32 KiB: too small.
        header[19..21].copy_from_slice(&64u16.to_le_bytes());
        assert!(probe_header(&header).is_err());
        Ok(())
    }

    #[test]
    fn an_image_without_the_config_file_or_with_a_bad_one_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.img");

        let mut image = vec![0u8; IMAGE_BYTES];
        fatfs::format_volume(
            Cursor::new(image.as_mut_slice()),
            fatfs::FormatVolumeOptions::new().volume_label(VOLUME_LABEL),
        )?;
        std::fs::write(&path, &image)?;
        assert!(matches!(
            read_image(&path),
            Err(ImageError::MissingConfig { .. })
        ));

        std::fs::write(&path, build_image(b"{\"version\": 1, \"runner_id\": 5}")?)?;
        assert!(matches!(read_image(&path), Err(ImageError::Config { .. })));

        let huge = vec![b' '; MAX_CONFIG_JSON_BYTES + 10];
        std::fs::write(&path, build_image(&huge)?)?;
        assert!(matches!(
            read_image(&path),
            Err(ImageError::Config {
                source: ConfigError::TooLarge { .. },
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn a_config_too_large_for_the_image_is_an_error_not_a_panic() {
        let huge = vec![b'x'; IMAGE_BYTES + 1];
        assert!(matches!(build_image(&huge), Err(ImageError::Build(_))));
    }
}
