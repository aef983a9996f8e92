//! Small file helpers: atomic JSON writes and read-only/writable permission changes.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` so readers see the old or the new content, never a mix: a temp file in the
/// same directory, fsync, then rename over.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Serializes `value` as pretty JSON (with a final newline) and writes it atomically.
pub(crate) fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Clears every write bit (templates are immutable; an accidental write fails loudly).
pub(crate) fn make_read_only(path: &Path) -> std::io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions)
}

/// Gives the owner write permission back (a clone of a read-only template file keeps its
/// mode under APFS clonefile, and the VM must write its own disk).
pub(crate) fn make_owner_writable(path: &Path) -> std::io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        permissions.set_mode(permissions.mode() | 0o200);
    }
    #[cfg(not(unix))]
    {
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
    }
    std::fs::set_permissions(path, permissions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_json_replaces_whole_and_permissions_flip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).expect("write");
        write_json_atomic(&path, &serde_json::json!({"a": 2})).expect("rewrite");
        let read: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read["a"], 2);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
        make_read_only(&path).expect("ro");
        assert!(std::fs::metadata(&path)
            .expect("meta")
            .permissions()
            .readonly());
        make_owner_writable(&path).expect("rw");
        assert!(!std::fs::metadata(&path)
            .expect("meta")
            .permissions()
            .readonly());
    }
}
