//! Key material for agent → guest SSH.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::TryRngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};

use super::SshError;

/// A fresh Ed25519 key pair drawn from the OS random source.
pub fn generate_ed25519() -> Result<PrivateKey, SshError> {
    // Seeded by hand because ssh-key 0.7 wants rand_core 0.10 while the workspace is on
    // rand 0.9; the seed is exactly what `Ed25519Keypair::random` would draw.
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(SshError::KeyGeneration)?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    Ok(key)
}

/// The key as one `authorized_keys` line (`ssh-ed25519 AAAA…`), without a comment so that
/// nothing in the key's comment can smuggle options or extra lines into the file.
pub fn authorized_key_line(key: &PublicKey) -> String {
    let bare = PublicKey::new(key.key_data().clone(), "");
    // Encoding an in-memory key into a String has no failure mode besides exceeding
    // u32 lengths, which no real key does.
    bare.to_openssh()
        .expect("encoding an in-memory SSH public key cannot fail")
}

/// Writes `key` in OpenSSH format with mode 0600, so an operator can `ssh -i` into the VM.
///
/// The file is written beside `path` and renamed over it, so a reader never sees a partial
/// key and an existing file with looser permissions is replaced rather than reused. It is not
/// fsynced: the key lives no longer than its runner.
pub fn write_private_key_openssh(key: &PrivateKey, path: &Path) -> Result<(), SshError> {
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(SshError::KeyEncoding)?;
    let file_err = |source| SshError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            file_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path has no file name",
            ))
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| {
        // A crash may have left this name behind; `create_new` below must not trip on it.
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(pem.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        // Best effort: the temp file may not exist if `open` failed.
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_keys_differ_and_are_ed25519() -> Result<(), SshError> {
        let a = generate_ed25519()?;
        let b = generate_ed25519()?;
        assert_eq!(a.algorithm(), russh::keys::Algorithm::Ed25519);
        assert_ne!(a.public_key().key_data(), b.public_key().key_data());
        Ok(())
    }

    #[test]
    fn authorized_key_line_round_trips_without_comment() -> Result<(), SshError> {
        let mut key = generate_ed25519()?.public_key().clone();
        key.set_comment("evil\ncommand=\"rm -rf /\"");
        let line = authorized_key_line(&key);
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        assert!(!line.contains('\n') && !line.contains("evil"), "{line}");
        let parsed = PublicKey::from_openssh(&line).map_err(SshError::KeyEncoding)?;
        assert_eq!(parsed.key_data(), key.key_data());
        Ok(())
    }

    #[test]
    fn private_key_file_is_0600_and_loads_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("id_ed25519");
        // A pre-existing world-readable file must end up 0600 too.
        std::fs::write(&path, "old")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let key = generate_ed25519()?;
        write_private_key_openssh(&key, &path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = PrivateKey::from_openssh(std::fs::read(&path)?)?;
        assert_eq!(loaded.public_key().key_data(), key.public_key().key_data());
        let leftovers = std::fs::read_dir(dir.path())?.count();
        assert_eq!(leftovers, 1, "temp file left behind");
        Ok(())
    }
}
