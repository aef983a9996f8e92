//! Small file helpers.

use std::io::Write;
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
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
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
}
