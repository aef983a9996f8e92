//! Dropbear's own host key format, written directly so a dropbear guest needs no
//! `dropbearconvert` run (a process start that costs a restored VM ~0.1 s under emulation).
//!
//! An unencrypted OpenSSH ed25519 private key holds the 32-byte seed and the public key; dropbear
//! stores `string "ssh-ed25519"` then `string (seed || public)`, as dropbear's `ed25519.c` does.

use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum DropbearKeyError {
    #[error("the host key is not an unencrypted OpenSSH ed25519 private key ({0})")]
    Unsupported(&'static str),
}

/// Converts an OpenSSH private key (PEM text) to dropbear's format.
pub fn from_openssh(pem: &str) -> Result<Vec<u8>, DropbearKeyError> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| DropbearKeyError::Unsupported("not base64"))?;
    let mut reader = Reader(&blob);
    reader.magic(b"openssh-key-v1\0")?;
    if reader.string()? != b"none" || reader.string()? != b"none" {
        return Err(DropbearKeyError::Unsupported("encrypted"));
    }
    let _kdf_options = reader.string()?;
    if reader.u32()? != 1 {
        return Err(DropbearKeyError::Unsupported("not exactly one key"));
    }
    let _public_blob = reader.string()?;
    let mut private = Reader(reader.string()?);
    if private.u32()? != private.u32()? {
        return Err(DropbearKeyError::Unsupported("check integers differ"));
    }
    if private.string()? != b"ssh-ed25519" {
        return Err(DropbearKeyError::Unsupported("not ed25519"));
    }
    let public = private.string()?;
    let secret = private.string()?;
    if public.len() != 32 || secret.len() != 64 || &secret[32..] != public {
        return Err(DropbearKeyError::Unsupported("malformed ed25519 key"));
    }
    let mut out = Vec::with_capacity(4 + 11 + 4 + 64);
    put_string(&mut out, b"ssh-ed25519");
    put_string(&mut out, secret);
    Ok(out)
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys are tiny; the length always fits.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DropbearKeyError> {
        if self.0.len() < n {
            return Err(DropbearKeyError::Unsupported("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn magic(&mut self, magic: &[u8]) -> Result<(), DropbearKeyError> {
        if self.take(magic.len())? == magic {
            Ok(())
        } else {
            Err(DropbearKeyError::Unsupported("no openssh-key-v1 header"))
        }
    }

    fn u32(&mut self) -> Result<u32, DropbearKeyError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], DropbearKeyError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dropbear");

    #[test]
    fn matches_what_dropbearconvert_writes() {
        let pem = std::fs::read_to_string(format!("{FIXTURES}/openssh_ed25519")).expect("fixture");
        let expected = std::fs::read(format!("{FIXTURES}/dropbear_ed25519")).expect("fixture");
        assert_eq!(from_openssh(&pem).expect("converts"), expected);
    }

    #[test]
    fn refuses_what_it_cannot_convert() {
        assert!(from_openssh("not a key").is_err());
        let pem = std::fs::read_to_string(format!("{FIXTURES}/openssh_ed25519")).expect("fixture");
        let truncated: String = pem.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(from_openssh(&truncated).is_err());
    }
}
