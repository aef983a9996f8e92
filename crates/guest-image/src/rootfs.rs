//! The guest's root filesystem as an in-memory tree, written out as a cpio initramfs.

use crate::cpio::{CpioWriter, Header, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum Node {
    Dir {
        mode: u32,
        owner: u32,
    },
    File {
        mode: u32,
        owner: u32,
        content: Content,
    },
    /// Another name of the regular file at `target` (one inode in the guest).
    HardLink {
        target: String,
    },
    Symlink {
        target: String,
    },
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
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
        self.file_owned(path, mode, 0, bytes);
    }

    /// A file owned by `owner` (uid and gid).
    pub fn file_owned(&mut self, path: &str, mode: u32, owner: u32, bytes: impl Into<Vec<u8>>) {
        let content = Content::Bytes(bytes.into());
        self.insert(
            path,
            Node::File {
                mode,
                owner,
                content,
            },
        );
    }

    pub fn host_file(&mut self, path: &str, mode: u32, source: &Path) {
        self.host_file_owned(path, mode, 0, source);
    }

    /// A file read from the host, owned by `owner` (uid and gid).
    pub fn host_file_owned(&mut self, path: &str, mode: u32, owner: u32, source: &Path) {
        let content = Content::Host(source.to_path_buf());
        self.insert(
            path,
            Node::File {
                mode,
                owner,
                content,
            },
        );
    }

    /// `path` as another name of the file at `target` (added with [`Self::file`] or
    /// [`Self::host_file`]): a hard link, so the content is stored and unpacked once.
    pub fn hard_link(&mut self, path: &str, target: &str) {
        let target = key(target).to_string();
        self.insert(path, Node::HardLink { target });
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

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(key(path))
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
        let mut links = self.link_groups()?;
        let file = std::fs::File::create(dest).map_err(at(dest))?;
        let mut writer = CpioWriter::new(BufWriter::new(file));
        for (path, node) in &self.nodes {
            let guest = Path::new(path);
            // A file with other names: one inode; the first name written carries the data.
            let group = match node {
                Node::File { .. } => links.get_mut(path.as_str()),
                Node::HardLink { target } => links.get_mut(target.as_str()),
                _ => None,
            };
            if let Some(group) = group {
                let Some(Node::File {
                    mode,
                    owner,
                    content,
                }) = self.nodes.get(&group.target)
                else {
                    continue;
                };
                let ino = *group.ino.get_or_insert_with(|| writer.new_ino());
                let header = Header {
                    uid: *owner,
                    gid: *owner,
                    ..Header::new(S_IFREG | mode)
                };
                let bytes = if group.data_written {
                    std::borrow::Cow::Borrowed(&[][..])
                } else {
                    group.data_written = true;
                    read_content(content).map_err(at(guest))?
                };
                writer
                    .linked_entry(path, header, ino, group.names, &bytes)
                    .map_err(at(guest))?;
                continue;
            }
            match node {
                Node::Dir { mode, owner } => {
                    let header = Header {
                        uid: *owner,
                        gid: *owner,
                        ..Header::new(S_IFDIR | mode)
                    };
                    writer.entry(path, header, b"").map_err(at(guest))?;
                }
                Node::File {
                    mode,
                    owner,
                    content,
                } => {
                    let bytes = read_content(content).map_err(|source| RootfsError {
                        path: content_path(content, guest),
                        source,
                    })?;
                    let header = Header {
                        uid: *owner,
                        gid: *owner,
                        ..Header::new(S_IFREG | mode)
                    };
                    writer.entry(path, header, &bytes).map_err(at(guest))?;
                }
                // Written with its group above.
                Node::HardLink { .. } => {}
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

/// The names of one hard-linked file.
struct LinkGroup {
    target: String,
    names: u32,
    ino: Option<u32>,
    data_written: bool,
}

impl Tree {
    /// Hard-link targets with how many names each has; every target must be a regular file.
    fn link_groups(&self) -> Result<BTreeMap<String, LinkGroup>, RootfsError> {
        let mut groups: BTreeMap<String, LinkGroup> = BTreeMap::new();
        for (path, node) in &self.nodes {
            let Node::HardLink { target } = node else {
                continue;
            };
            if !matches!(self.nodes.get(target), Some(Node::File { .. })) {
                return Err(RootfsError {
                    path: PathBuf::from(format!("/{path}")),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("hard link to /{target}, which is not a regular file in the tree"),
                    ),
                });
            }
            groups
                .entry(target.clone())
                .or_insert_with(|| LinkGroup {
                    target: target.clone(),
                    names: 1,
                    ino: None,
                    data_written: false,
                })
                .names += 1;
        }
        Ok(groups)
    }
}

fn read_content(content: &Content) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
    Ok(match content {
        Content::Bytes(bytes) => std::borrow::Cow::Borrowed(bytes.as_slice()),
        Content::Host(source) => std::borrow::Cow::Owned(std::fs::read(source)?),
    })
}

/// Where an I/O error on a file's content happened: the host file, or the guest path.
fn content_path(content: &Content, guest: &Path) -> PathBuf {
    match content {
        Content::Host(source) => source.clone(),
        Content::Bytes(_) => guest.to_path_buf(),
    }
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

    #[test]
    fn hard_links_and_owners_reach_the_archive() {
        let mut tree = Tree::default();
        tree.file_owned("/opt/r/bin/a", 0o755, 1000, b"binary".to_vec());
        tree.hard_link("/opt/r/bin/b", "/opt/r/bin/a");
        tree.hard_link("/opt/r/node/bin/node", "/opt/r/bin/a");
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("initrd.img");
        tree.write_cpio(&dest).expect("written");
        let bytes = std::fs::read(&dest).expect("read");
        assert_eq!(
            bytes.windows(6).filter(|w| w == b"binary").count(),
            1,
            "the content is stored once"
        );
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-preserve-owner"])
            .current_dir(&out)
            .stdin(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("SKIPPED: cpio is not installed; install cpio to cross-check the writer");
            return;
        };
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&bytes)
            .expect("write");
        assert!(child.wait().expect("wait").success());
        let a = std::fs::metadata(out.join("opt/r/bin/a")).expect("a");
        let node = std::fs::metadata(out.join("opt/r/node/bin/node")).expect("node");
        assert_eq!(a.ino(), node.ino());
        assert_eq!(a.nlink(), 3);
        assert_eq!(
            std::fs::read(out.join("opt/r/bin/b")).expect("b"),
            b"binary"
        );

        let mut dangling = Tree::default();
        dangling.hard_link("/x", "/missing");
        assert!(dangling.write_cpio(&dir.path().join("bad.img")).is_err());
    }

    #[test]
    fn owners_are_written_in_headers() {
        let mut tree = Tree::default();
        tree.file_owned("/f", 0o644, 1000, b"x".to_vec());
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("initrd.img");
        tree.write_cpio(&dest).expect("written");
        let bytes = std::fs::read(&dest).expect("read");
        // First member "f": uid field is the third 8-hex-digit field after the magic.
        let uid = std::str::from_utf8(&bytes[6 + 16..6 + 24]).expect("ascii");
        assert_eq!(u32::from_str_radix(uid, 16).expect("hex"), 1000);
    }
}
