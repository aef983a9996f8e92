//! A `newc` cpio writer (the initramfs format the kernel unpacks). Entries carry no host
//! owners or times, so the same tree always gives the same bytes.

use std::io::{self, Write};

const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;

/// Writes entries in the order given; parents must come before their children.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

/// One archive member's header fields.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

impl Header {
    pub fn new(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            rdev_major: 0,
            rdev_minor: 0,
        }
    }
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds one member; `data` is the file content or a symlink's target (empty otherwise).
    /// `name` is relative to the archive root, without a leading `/`.
    pub fn entry(&mut self, name: &str, header: Header, data: &[u8]) -> io::Result<()> {
        let ino = self.new_ino();
        let nlink = if header.mode & S_IFDIR == S_IFDIR {
            2
        } else {
            1
        };
        self.write_header(name, header, ino, nlink, data.len())?;
        self.write_padded(data)
    }

    /// An inode number for the names of one hard-linked file ([`Self::linked_entry`]).
    pub fn new_ino(&mut self) -> u32 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// One of `nlink` names of a regular file sharing `ino`. The kernel creates the file at
    /// the first name it meets and links the others to it; so the content goes with the
    /// first name written, and the later ones carry none (GNU cpio accepts either order).
    pub fn linked_entry(
        &mut self,
        name: &str,
        header: Header,
        ino: u32,
        nlink: u32,
        data: &[u8],
    ) -> io::Result<()> {
        self.write_header(name, header, ino, nlink, data.len())?;
        self.write_padded(data)
    }

    /// Ends the archive and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header(TRAILER, Header::new(0), 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_header(
        &mut self,
        name: &str,
        h: Header,
        ino: u32,
        nlink: u32,
        size: usize,
    ) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio member over 4 GiB"))?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let fields = [
            ino,
            h.mode,
            h.uid,
            h.gid,
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            h.rdev_major,
            h.rdev_minor,
            name_size,
            0, // check
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.write_all(header.as_bytes())?;
        self.write_all(name.as_bytes())?;
        self.write_all(&[0])?;
        self.pad()
    }

    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)?;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write_all(&[0; 3][..4 - rem])?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(bytes: &[u8], offset: usize, index: usize) -> u32 {
        let start = offset + 6 + index * 8;
        let text = std::str::from_utf8(&bytes[start..start + 8]).expect("ascii");
        u32::from_str_radix(text, 16).expect("hex")
    }

    #[test]
    fn writes_aligned_newc_members_and_a_trailer() {
        let mut writer = CpioWriter::new(Vec::new());
        writer
            .entry("bin", Header::new(S_IFDIR | 0o755), b"")
            .expect("dir");
        writer
            .entry("bin/hello", Header::new(S_IFREG | 0o755), b"hi!")
            .expect("file");
        let dev = Header {
            rdev_major: 5,
            rdev_minor: 1,
            ..Header::new(S_IFCHR | 0o600)
        };
        writer.entry("dev/console", dev, b"").expect("dev");
        let bytes = writer.finish().expect("finish");

        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // "bin": header 110 + name 4 = 114 -> padded to 116.
        let second = 116;
        assert_eq!(&bytes[second..second + 6], b"070701");
        assert_eq!(field(&bytes, second, 1), S_IFREG | 0o755);
        assert_eq!(field(&bytes, second, 6), 3, "file size");
        assert_eq!(&bytes[second + 110..second + 120], b"bin/hello\0");
        // header 110 + name 10 = 120 (aligned), data 3 -> padded to 4.
        assert_eq!(&bytes[second + 120..second + 124], b"hi!\0");
        let third = second + 124;
        assert_eq!(field(&bytes, third, 9), 5, "rdev major");
        assert_eq!(field(&bytes, third, 10), 1, "rdev minor");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn cpio_command_reads_the_archive_when_installed() {
        let mut writer = CpioWriter::new(Vec::new());
        writer
            .entry("etc", Header::new(S_IFDIR | 0o755), b"")
            .expect("dir");
        writer
            .entry("etc/motd", Header::new(S_IFREG | 0o644), b"hello\n")
            .expect("file");
        writer
            .entry("etc/link", Header::new(S_IFLNK | 0o777), b"motd")
            .expect("link");
        let bytes = writer.finish().expect("finish");
        let child = std::process::Command::new("cpio")
            .args(["-i", "-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            shoes_vz_test_support::prerequisite_missing(
                "cpio is not installed",
                "install cpio to cross-check the writer",
            );
            return;
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&bytes)
            .expect("write");
        let output = child.wait_with_output().expect("wait");
        assert!(output.status.success());
        let listing = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            ["etc", "etc/motd", "etc/link"]
        );
    }

    #[test]
    fn hard_links_share_an_inode_and_the_first_name_carries_the_data() {
        let mut writer = CpioWriter::new(Vec::new());
        writer
            .entry("bin", Header::new(S_IFDIR | 0o755), b"")
            .expect("dir");
        let ino = writer.new_ino();
        let header = Header::new(S_IFREG | 0o755);
        writer
            .linked_entry("bin/a", header, ino, 2, b"program")
            .expect("a");
        writer
            .linked_entry("bin/b", header, ino, 2, b"")
            .expect("b");
        let bytes = writer.finish().expect("finish");
        let second = 116;
        assert_eq!(field(&bytes, second, 0), ino);
        assert_eq!(field(&bytes, second, 4), 2, "nlink");
        assert_eq!(field(&bytes, second, 6), 7, "size");
        // header 110 + "bin/a\0" 6 = 116, data 7 -> padded to 8.
        let third = second + 116 + 8;
        assert_eq!(&bytes[third + 110..third + 116], b"bin/b\0");
        assert_eq!(field(&bytes, third, 0), ino);
        assert_eq!(field(&bytes, third, 4), 2, "nlink");
        assert_eq!(field(&bytes, third, 6), 0, "size");

        // GNU cpio, when installed, extracts both names as one file.
        let dir = tempfile::tempdir().expect("tempdir");
        let child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("SKIPPED: cpio is not installed; install cpio to cross-check the writer");
            return;
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&bytes)
            .expect("write");
        assert!(child.wait().expect("wait").success());
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(dir.path().join("bin/a")).expect("a");
        let b = std::fs::metadata(dir.path().join("bin/b")).expect("b");
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            std::fs::read(dir.path().join("bin/b")).expect("read"),
            b"program"
        );
    }
}
