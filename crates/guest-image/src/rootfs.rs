//! The guest's root filesystem as an in-memory tree, written out as a cpio initramfs.

use crate::cpio::{CpioWriter, Header, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum Node {
    Dir { mode: u32, owner: u32 },
    File { mode: u32, content: Content },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    /// Read from the host when the archive is written.
    Host(PathBuf),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the initramfs from {path}")]
pub struct RootfsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Paths are absolute guest paths (`/bin/sh`); missing parent directories are added.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.dir_owned(path, mode, 0);
    }

    /// A directory owned by `owner` (uid and gid).
    pub fn dir_owned(&mut self, path: &str, mode: u32, owner: u32) {
        self.insert(path, Node::Dir { mode, owner });
    }

    pub fn file(&mut self, path: &str, mode: u32, bytes: impl Into<Vec<u8>>) {
        let content = Content::Bytes(bytes.into());
        self.insert(path, Node::File { mode, content });
    }

    pub fn host_file(&mut self, path: &str, mode: u32, source: &Path) {
        let content = Content::Host(source.to_path_buf());
        self.insert(path, Node::File { mode, content });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let target = target.to_string();
        self.insert(path, Node::Symlink { target });
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Node::CharDev { mode, major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(key(path))
    }

    fn insert(&mut self, path: &str, node: Node) {
        let path = key(path);
        for (end, _) in path.match_indices('/') {
            self.nodes
                .entry(path[..end].to_string())
                .or_insert(Node::Dir {
                    mode: 0o755,
                    owner: 0,
                });
        }
        self.nodes.insert(path.to_string(), node);
    }

    /// Writes the tree as a cpio archive (sorted, so parents precede children).
    pub fn write_cpio(&self, dest: &Path) -> Result<(), RootfsError> {
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RootfsError { path, source }
        };
        let file = std::fs::File::create(dest).map_err(at(dest))?;
        let mut writer = CpioWriter::new(BufWriter::new(file));
        for (path, node) in &self.nodes {
            let guest = Path::new(path);
            match node {
                Node::Dir { mode, owner } => {
                    let header = Header {
                        uid: *owner,
                        gid: *owner,
                        ..Header::new(S_IFDIR | mode)
                    };
                    writer.entry(path, header, b"").map_err(at(guest))?;
                }
                Node::File { mode, content } => {
                    let bytes = match content {
                        Content::Bytes(bytes) => std::borrow::Cow::Borrowed(bytes.as_slice()),
                        Content::Host(source) => {
                            std::borrow::Cow::Owned(std::fs::read(source).map_err(at(source))?)
                        }
                    };
                    writer
                        .entry(path, Header::new(S_IFREG | mode), &bytes)
                        .map_err(at(guest))?;
                }
                Node::Symlink { target } => writer
                    .entry(path, Header::new(S_IFLNK | 0o777), target.as_bytes())
                    .map_err(at(guest))?,
                Node::CharDev { mode, major, minor } => {
                    let header = Header {
                        rdev_major: *major,
                        rdev_minor: *minor,
                        ..Header::new(S_IFCHR | mode)
                    };
                    writer.entry(path, header, b"").map_err(at(guest))?;
                }
            }
        }
        let out = writer.finish().map_err(at(dest))?;
        out.into_inner()
            .map_err(|e| RootfsError {
                path: dest.to_path_buf(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(at(dest))
    }
}

fn key(path: &str) -> &str {
    path.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_implied_and_written_first() {
        let mut tree = Tree::default();
        tree.file("/usr/local/bin/tool", 0o755, b"#!/bin/sh\n".to_vec());
        tree.dir_owned("/home/runner", 0o755, 1000);
        tree.symlink("/bin/sh", "busybox");
        assert!(tree.contains("/usr/local") && tree.contains("usr/local/bin/tool"));
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("initrd.img");
        tree.write_cpio(&dest).expect("written");
        let bytes = std::fs::read(&dest).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        let usr = text.find("usr\0").expect("usr");
        let tool = text.find("usr/local/bin/tool\0").expect("tool");
        assert!(usr < tool);
        assert!(text.contains("home/runner\0"));
    }
}
