//! Writing key files as root into places other users may control, without following their
//! symlinks: files are created new beside the target and renamed over it (a rename replaces a
//! symlink instead of writing through it), and directories must be real directories.
//!
//! Nothing here is fsynced: the identity lives exactly as long as its VM, and every boot
//! installs it again from the config disk, so a write lost to a crash is rewritten anyway.
//! Under emulation an fsync of the runner's disk costs a restored guest milliseconds it
//! spends on nothing.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("could not {op} {path}")]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn file_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(message: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// `path` (absolute, no `..`) inside `root`.
pub fn under_root(root: &Path, path: &Path) -> Result<PathBuf, FileError> {
    let relative = path
        .strip_prefix("/")
        .map_err(|_| invalid("the path must be absolute"))
        .and_then(|relative| {
            if relative
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            {
                Err(invalid("the path must not contain `..`"))
            } else {
                Ok(relative)
            }
        })
        .map_err(file_error("use the path", path))?;
    Ok(root.join(relative))
}

/// Makes `path` a directory with `mode` and `owner`, creating it if missing. An existing
/// symlink or non-directory is refused rather than followed or replaced.
pub fn ensure_dir(path: &Path, mode: u32, owner: Option<Owner>) -> Result<(), FileError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(file_error("set the mode of", path))?;
        }
        Ok(_) => {
            return Err(FileError {
                op: "use",
                path: path.to_path_buf(),
                source: invalid("it exists but is not a directory (a symlink or a file)"),
            })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(file_error("create directory", path))?;
        }
        Err(source) => return Err(file_error("inspect", path)(source)),
    }
    if let Some(owner) = owner {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
            .map_err(file_error("change the owner of", path))?;
    }
    Ok(())
}

/// Replaces `path` with `contents`, created with `mode` and owned by `owner` before it
/// appears under its name. Readers see the old file or the new one, never a mix; the new
/// one is not made durable (see the module doc).
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), FileError> {
    let name = path
        .file_name()
        .ok_or_else(|| invalid("the path has no file name"))
        .map_err(file_error("write", path))?;
    let tmp = path.with_file_name(format!(
        ".{}.shoes-vz-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        // A crash may have left this name behind; `create_new` must not trip on it.
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
        }
        // The umask may have narrowed `mode`; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_error("write", path)(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn under_root_prefixes_absolute_paths_only() -> TestResult {
        let root = Path::new("/tmp/fake");
        assert_eq!(
            under_root(root, Path::new("/etc/ssh/key"))?,
            Path::new("/tmp/fake/etc/ssh/key")
        );
        assert_eq!(
            under_root(Path::new("/"), Path::new("/etc/x"))?,
            Path::new("/etc/x")
        );
        assert!(under_root(root, Path::new("etc/x")).is_err());
        assert!(under_root(root, Path::new("/etc/../../x")).is_err());
        Ok(())
    }

    #[test]
    fn write_atomic_sets_mode_and_owner_and_replaces_a_symlink() -> TestResult {
        let dir = tempfile::tempdir()?;
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious")?;
        let target = dir.path().join("authorized_keys");
        std::os::unix::fs::symlink(&victim, &target)?;

        write_atomic(&target, b"key\n", 0o600, Some(me()))?;

        assert_eq!(std::fs::read_to_string(&victim)?, "precious");
        let meta = std::fs::symlink_metadata(&target)?;
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), me().uid);
        assert_eq!(std::fs::read_to_string(&target)?, "key\n");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 2, "temp file left");
        Ok(())
    }

    #[test]
    fn ensure_dir_creates_fixes_mode_and_refuses_symlinks() -> TestResult {
        let dir = tempfile::tempdir()?;
        let ssh = dir.path().join(".ssh");
        ensure_dir(&ssh, 0o700, Some(me()))?;
        assert_eq!(std::fs::metadata(&ssh)?.mode() & 0o777, 0o700);
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o777))?;
        ensure_dir(&ssh, 0o700, None)?;
        assert_eq!(std::fs::metadata(&ssh)?.mode() & 0o777, 0o700);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ssh, &link)?;
        assert!(ensure_dir(&link, 0o700, None).is_err());
        Ok(())
    }
}
