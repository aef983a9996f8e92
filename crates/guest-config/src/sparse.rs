//! An in-memory disk that keeps only the blocks written with data. A config disk image is a
//! few KiB of FAT structures and JSON in a volume of zeros: built this way, making one costs
//! neither a zeroed buffer of the whole volume nor wiping it afterwards, and writing it out
//! writes only those blocks.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use zeroize::Zeroizing;

pub(crate) const BLOCK: usize = 4096;

/// A fixed-size disk; reads of blocks never written with data return zeros. The blocks are
/// wiped when dropped: they hold the runner's secrets.
pub(crate) struct SparseDisk {
    len: u64,
    pos: u64,
    blocks: BTreeMap<u64, Zeroizing<Vec<u8>>>,
}

impl SparseDisk {
    pub(crate) fn new(len: u64) -> SparseDisk {
        SparseDisk {
            len,
            pos: 0,
            blocks: BTreeMap::new(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The blocks holding data, with their byte offsets, in order.
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.blocks
            .iter()
            .map(|(index, block)| (index * BLOCK as u64, block.as_slice()))
    }

    /// The whole disk as one buffer, zeros included.
    pub(crate) fn to_bytes(&self) -> io::Result<Zeroizing<Vec<u8>>> {
        let len = usize::try_from(self.len).map_err(io::Error::other)?;
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        for (offset, block) in self.blocks() {
            // Every stored block lies inside the disk (writes past the end are refused).
            let start = offset as usize;
            let end = (start + block.len()).min(len);
            bytes[start..end].copy_from_slice(&block[..end - start]);
        }
        Ok(bytes)
    }

    /// Where the current position falls: block index, offset in it, bytes left in it.
    fn at(&self) -> (u64, usize, usize) {
        let index = self.pos / BLOCK as u64;
        let within = (self.pos % BLOCK as u64) as usize;
        (index, within, BLOCK - within)
    }

    fn remaining(&self) -> usize {
        usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX)
    }
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (index, within, left) = self.at();
        let n = buf.len().min(left).min(self.remaining());
        match self.blocks.get(&index) {
            Some(block) => buf[..n].copy_from_slice(&block[within..within + n]),
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() && self.remaining() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the disk",
            ));
        }
        let (index, within, left) = self.at();
        let n = buf.len().min(left).min(self.remaining());
        let data = &buf[..n];
        match self.blocks.get_mut(&index) {
            Some(block) => block[within..within + n].copy_from_slice(data),
            // Zeros into a block that reads as zeros change nothing.
            None if data.iter().all(|byte| *byte == 0) => {}
            None => {
                let mut block = Zeroizing::new(vec![0u8; BLOCK]);
                block[within..within + n].copy_from_slice(data);
                self.blocks.insert(index, block);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(pos) => {
                self.pos = pos;
                Ok(pos)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_zeros_elsewhere() -> io::Result<()> {
        let mut disk = SparseDisk::new(5 * BLOCK as u64);
        disk.seek(SeekFrom::Start(BLOCK as u64 - 3))?;
        disk.write_all(b"abcdef")?;
        disk.seek(SeekFrom::Start(3 * BLOCK as u64))?;
        disk.write_all(&[0u8; BLOCK])?;
        let mut all = Vec::new();
        disk.seek(SeekFrom::Start(0))?;
        disk.read_to_end(&mut all)?;
        let mut expected = vec![0u8; 5 * BLOCK];
        expected[BLOCK - 3..BLOCK + 3].copy_from_slice(b"abcdef");
        assert_eq!(all, expected);
        assert_eq!(disk.to_bytes()?.as_slice(), expected.as_slice());
        // Only the two blocks that got data are stored; the zeros cost nothing.
        let offsets: Vec<u64> = disk.blocks().map(|(offset, _)| offset).collect();
        assert_eq!(offsets, [0, BLOCK as u64]);
        Ok(())
    }

    #[test]
    fn a_fixed_size_disk_refuses_to_grow() -> io::Result<()> {
        let mut disk = SparseDisk::new(BLOCK as u64);
        disk.seek(SeekFrom::End(-2))?;
        assert!(disk.write_all(b"xyz").is_err());
        assert!(disk.seek(SeekFrom::Current(-(BLOCK as i64) * 2)).is_err());
        assert_eq!(disk.len(), BLOCK as u64);
        Ok(())
    }
}
