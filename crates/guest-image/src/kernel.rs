//! `vmlinuz` (bzImage) → `vmlinux`: the uncompressed ELF kernel QEMU boots through its PVH
//! entry, which skips the in-guest decompression (about 3 s under TCG).

use std::io::Write;
use std::process::{Command, Stdio};

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("not a bzImage kernel: {0}")]
    NotBzImage(&'static str),
    #[error("the kernel payload is compressed with {0}, which is not supported; use a Debian kernel flavour compressed with LZ4 (cloud-amd64) or xz")]
    UnsupportedCompression(String),
    #[error("the LZ4 kernel payload is corrupt")]
    Lz4(#[source] lz4_flex::block::DecompressError),
    #[error("the xz kernel payload cannot be decompressed with the xz command; install xz-utils")]
    Xz(#[source] std::io::Error),
    #[error("the decompressed kernel is not an ELF file")]
    NotElf,
    #[error("the decompressed kernel is {actual} bytes but the bzImage says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
}

/// Extracts the ELF kernel from a bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KernelError> {
    let payload = payload(bzimage)?;
    let vmlinux = if payload.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        lz4_legacy(payload)?
    } else if payload.starts_with(XZ_MAGIC) {
        xz(payload)?
    } else {
        return Err(KernelError::UnsupportedCompression(describe(payload)));
    };
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(KernelError::NotElf);
    }
    // The build appends the uncompressed size to the compressed stream.
    if let Some(tail) = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
    {
        let expected = u64::from(read_u32(tail, 0).unwrap_or(0));
        if expected != vmlinux.len() as u64 {
            return Err(KernelError::SizeMismatch {
                expected,
                actual: vmlinux.len() as u64,
            });
        }
    }
    Ok(vmlinux)
}

/// The compressed kernel inside a bzImage, from the setup header's payload fields.
fn payload(image: &[u8]) -> Result<&[u8], KernelError> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(KernelError::NotBzImage("no HdrS setup header"));
    }
    let setup_sects = match image.get(0x1F1) {
        Some(0) => 4,
        Some(n) => usize::from(*n),
        None => return Err(KernelError::NotBzImage("truncated header")),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = read_u32(image, 0x248).ok_or(KernelError::NotBzImage("truncated header"))?;
    let length = read_u32(image, 0x24C).ok_or(KernelError::NotBzImage("truncated header"))?;
    let start = protected_mode + offset as usize;
    image
        .get(start..start + length as usize)
        .filter(|p| !p.is_empty())
        .ok_or(KernelError::NotBzImage(
            "payload offset/length outside the file (kernel older than 2.6.35?)",
        ))
}

/// The kernel's LZ4 "legacy" stream: a magic, then blocks of (u32 LE size, data), each
/// decompressing to at most 8 MiB.
fn lz4_legacy(payload: &[u8]) -> Result<Vec<u8>, KernelError> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(size) = read_u32(payload, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        let Some(compressed) = payload.get(pos + 4..pos + 4 + size) else {
            break; // the trailing size field, not a block
        };
        let n =
            lz4_flex::block::decompress_into(compressed, &mut block).map_err(KernelError::Lz4)?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    Ok(out)
}

fn xz(payload: &[u8]) -> Result<Vec<u8>, KernelError> {
    let mut child = Command::new("xz")
        .args(["-d", "-c", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(KernelError::Xz)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| KernelError::Xz(std::io::Error::other("no stdin")))?;
    let input = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(KernelError::Xz)?;
    // A write error after xz finished its single stream is expected (it stops reading).
    let _ = writer.join();
    if !output.status.success() {
        return Err(KernelError::Xz(std::io::Error::other(format!(
            "xz exited with {}",
            output.status
        ))));
    }
    Ok(output.stdout)
}

fn describe(payload: &[u8]) -> String {
    let known: [(&[u8], &str); 4] = [
        (&[0x1F, 0x8B], "gzip"),
        (&[0x28, 0xB5, 0x2F, 0xFD], "zstd"),
        (b"BZh", "bzip2"),
        (&[0x5D, 0x00, 0x00], "lzma"),
    ];
    known
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map_or_else(
            || {
                format!(
                    "an unknown format (magic {:02x?})",
                    &payload[..payload.len().min(4)]
                )
            },
            |(_, name)| (*name).to_string(),
        )
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage around `payload`: one setup sector plus the boot sector.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[0x1F1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24C].copy_from_slice(&16u32.to_le_bytes());
        image[0x24C..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0u8; 16]);
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing setup data");
        image
    }

    fn fake_elf(len: usize) -> Vec<u8> {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..len).map(|i| (i % 251) as u8));
        elf
    }

    fn lz4_payload(plain: &[u8]) -> Vec<u8> {
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in plain.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
            payload.extend_from_slice(&block);
        }
        payload.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        payload
    }

    #[test]
    fn lz4_legacy_payload_round_trips_across_blocks() {
        let plain = fake_elf(LZ4_LEGACY_BLOCK + 12345);
        let image = bzimage(&lz4_payload(&plain));
        assert_eq!(extract_vmlinux(&image).expect("extracted"), plain);
    }

    #[test]
    fn a_wrong_size_trailer_or_foreign_data_is_refused() {
        let plain = fake_elf(1000);
        let mut payload = lz4_payload(&plain);
        let at = payload.len() - 4;
        payload[at..].copy_from_slice(&999u32.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&bzimage(&payload)),
            Err(KernelError::SizeMismatch { .. })
        ));
        let error = extract_vmlinux(&bzimage(&[0x28, 0xB5, 0x2F, 0xFD, 1, 2])).expect_err("zstd");
        assert!(error.to_string().contains("zstd"), "{error}");
        assert!(matches!(
            extract_vmlinux(b"plain text, not a kernel"),
            Err(KernelError::NotBzImage(_))
        ));
    }
}
