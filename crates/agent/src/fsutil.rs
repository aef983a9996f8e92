//! Small file helpers.

use std::io::{Read, Write};
use std::path::Path;

/// Writes `bytes` to `path` so readers see the old or the new content, never a mix: a temp
/// file in the same directory, fsync, then rename over.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &pretty_json(value)?)
}

/// Like [`write_atomic`] (old or new content, never a mix) but not fsynced: for files that
/// live no longer than one runner, or that only report state to other readers. A host crash
/// loses the runner anyway, and the sync would be paid on every runner's start.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// [`replace_file`] with `value` as pretty JSON.
pub fn replace_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    replace_file(path, &pretty_json(value)?)
}

fn pretty_json<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Copies `src` to a new file `dst`, data only: the holes of a sparse disk image stay holes
/// (a plain copy writes them out as zeros, the whole size, for every runner). The copy gets
/// `src`'s length and permissions.
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::io::{Seek, SeekFrom};

    let mut from = std::fs::File::open(src)?;
    let meta = from.metadata()?;
    let len = i64::try_from(meta.len()).map_err(std::io::Error::other)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let mut at = 0i64;
    while at < len {
        let data = match lseek(&from, at, Whence::SeekData) {
            Ok(offset) => offset,
            // Nothing but a hole from here to the end.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(errno) => return Err(errno.into()),
        };
        let hole = lseek(&from, data, Whence::SeekHole).map_err(std::io::Error::from)?;
        let start = u64::try_from(data).map_err(std::io::Error::other)?;
        let count = u64::try_from(hole - data).map_err(std::io::Error::other)?;
        from.seek(SeekFrom::Start(start))?;
        to.seek(SeekFrom::Start(start))?;
        let copied = std::io::copy(&mut (&mut from).take(count), &mut to)?;
        if copied != count {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source file shrank while it was copied",
            ));
        }
        at = hole;
    }
    to.set_len(meta.len())?;
    to.set_permissions(meta.permissions())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_whole_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).expect("first write");
        write_json_atomic(&path, &serde_json::json!({"a": 2})).expect("second write");
        let read: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read["a"], 2);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn a_sparse_copy_keeps_the_data_and_the_holes() {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("Disk.img");
        let mut file = std::fs::File::create(&src).expect("create");
        file.set_len(64 << 20).expect("size");
        file.seek(SeekFrom::Start(8 << 20)).expect("seek");
        file.write_all(&[0xA5; 10_000]).expect("write");
        file.seek(SeekFrom::Start((64 << 20) - 3)).expect("seek");
        file.write_all(b"end").expect("write");
        drop(file);

        let dst = dir.path().join("copy.img");
        copy_sparse(&src, &dst).expect("copy");
        assert_eq!(
            std::fs::read(&dst).expect("read"),
            std::fs::read(&src).expect("read")
        );
        let copied = std::fs::metadata(&dst).expect("meta");
        assert_eq!(copied.len(), 64 << 20);
        // 512-byte blocks: the 64 MiB of holes were not written out.
        assert!(
            copied.blocks() * 512 < 4 << 20,
            "{} blocks",
            copied.blocks()
        );
        assert!(
            copy_sparse(&src, &dst).is_err(),
            "an existing file is not overwritten"
        );
    }

    #[test]
    fn an_unsynced_replace_is_whole_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("RuntimeMetadata.json");
        replace_json(&path, &serde_json::json!({"a": 1})).expect("first write");
        replace_json(&path, &serde_json::json!({"a": 2})).expect("second write");
        let read: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read["a"], 2);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}
